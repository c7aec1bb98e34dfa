/* CUDA graphs: the ops queued between graph_begin and graph_end are
 * recorded by stream capture (relaxed mode: the allocator may still call
 * cudaMalloc) and instantiated once; graph_launch replays them with one
 * launch instead of one per kernel. The recording keeps every pointer and
 * size its ops were given, so what the recorded kernels use must outlive
 * the graph: blocks allocated or freed while recording stay held (no other
 * allocation takes them; a count, as graphs may share one) until
 * graph_free, and the scratch workspace it was recorded on, if outgrown
 * meanwhile, is retired, not freed, until its last graph goes. Ops that wait for the device
 * or read host memory (upload, download, sync, a growing scratch) refuse
 * while recording; the recording then fails and the caller runs the ops
 * directly. LORAHOST_CUDA_GRAPHS=0 refuses every recording. */
#include <stdlib.h>

#include "cuda.h"

typedef struct lh_cuda_graph {
    cudaGraphExec_t exec;
    void **blocks; /* held allocations */
    size_t n_blocks;
    void *workspace; /* the scratch workspace it was recorded on */
} lh_cuda_graph;

extern "C" lh_status lh__cuda_graph_begin(lh_backend *be) {
    lh_cuda *cu = lh__cuda(be);
    if (cu->graphs_off) {
        lh__cuda_fail(be, "graph", cu->prof ? "off while profiling (LH_CUDA_PROFILE=1)"
                                            : "off (LORAHOST_CUDA_GRAPHS=0)");
        return LH_ERR_UNSUPPORTED;
    }
    if (cu->recording) return lh__cuda_fail(be, "graph", "already recording one");
    cudaError_t e = cudaStreamBeginCapture(cu->stream, cudaStreamCaptureModeRelaxed);
    if (e != cudaSuccess) {
        cudaGetLastError(); /* not sticky: the next op's check must not see it */
        return lh__cuda_check(be, e, "graph: begin");
    }
    cu->recording = 1;
    cu->n_rec = 0;
    cu->rec_serial++;
    return LH_OK;
}

/* The recording's held blocks back to the allocator. */
static void drop_recording(lh_cuda *cu) {
    lh__cuda_unhold(cu, cu->rec_blocks, cu->n_rec);
    cu->n_rec = 0;
}

extern "C" lh_status lh__cuda_graph_end(lh_backend *be, void **graph) {
    lh_cuda *cu = lh__cuda(be);
    if (graph) *graph = NULL;
    if (!cu->recording) return lh__cuda_fail(be, "graph", "not recording");
    cudaGraph_t g = NULL;
    cudaError_t e = cudaStreamEndCapture(cu->stream, &g);
    cu->recording = 0;
    lh_status st = e == cudaSuccess && g ? LH_OK : lh__cuda_check(be, e, "graph: recording");
    if (st == LH_OK && e == cudaSuccess && !g) st = lh__cuda_fail(be, "graph", "nothing recorded");
    if (!graph && st == LH_OK) st = LH_ERR_INVALID;
    lh_cuda_graph *h = st == LH_OK ? (lh_cuda_graph *)calloc(1, sizeof *h) : NULL;
    if (st == LH_OK && !h) st = LH_ERR_NOMEM;
    if (st == LH_OK)
        st = lh__cuda_check(be, cudaGraphInstantiate(&h->exec, g, 0), "graph: instantiate");
    if (g) cudaGraphDestroy(g);
    if (st != LH_OK) {
        cudaGetLastError(); /* a failed capture's error is not sticky: clear it */
        free(h);
        drop_recording(cu);
        return st;
    }
    h->blocks = (void **)malloc((cu->n_rec ? cu->n_rec : 1) * sizeof *h->blocks);
    if (!h->blocks) {
        cudaGraphExecDestroy(h->exec);
        free(h);
        drop_recording(cu);
        return LH_ERR_NOMEM;
    }
    for (size_t i = 0; i < cu->n_rec; i++) h->blocks[i] = cu->rec_blocks[i];
    h->n_blocks = cu->n_rec;
    cu->n_rec = 0;
    h->workspace = cu->workspace;
    if (h->workspace) cu->workspace_refs++;
    *graph = h;
    return LH_OK;
}

extern "C" lh_status lh__cuda_graph_launch(lh_backend *be, void *graph) {
    lh_cuda *cu = lh__cuda(be);
    if (!graph) return LH_ERR_INVALID;
    lh_status st = lh__cuda_not_recording(be, "graph launch");
    if (st != LH_OK) return st;
    return lh__cuda_check(be, cudaGraphLaunch(((lh_cuda_graph *)graph)->exec, cu->stream),
                          "graph: launch");
}

extern "C" void lh__cuda_graph_free(lh_backend *be, void *graph) {
    if (!graph) return;
    lh_cuda *cu = lh__cuda(be);
    lh_cuda_graph *h = (lh_cuda_graph *)graph;
    if (cudaStreamSynchronize(cu->stream) != cudaSuccess) /* a launch may still run */
        cudaGetLastError();
    cudaGraphExecDestroy(h->exec);
    lh__cuda_unhold(cu, h->blocks, h->n_blocks);
    lh__cuda_workspace_unref(cu, h->workspace);
    free(h->blocks);
    free(h);
}
