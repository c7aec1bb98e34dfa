/* The server's model worker: one thread owns the model and runs queued jobs
 * (generations, adapter loads and deletes) one at a time. A request handler
 * queues a job and suspends its connection; the worker puts the reply in the
 * job and resumes the connection, whose handler then sends it. A full
 * queue, or a job that waited past queue_timeout_s, is answered 503. */
#include <errno.h>
#include <jansson.h>
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "log.h"
#include "server_internal.h"

/* ---- The adapter sets ---- */

size_t lh__default_set(lh_server *s, lh__srv_adapter **set, lh_adapter_weights *w) {
    size_t n = 0;
    for (size_t i = 0; i < s->n_adapters; i++)
        if (s->adapters[i].active) {
            set[n] = &s->adapters[i];
            lh_adapter_weights_init(&w[n++], s->adapters[i].scale);
        }
    return n;
}

/* Make the server's default set (the adapters loaded with "active": true,
 * at their scales) the model's. */
static lh_status apply_default_set(lh_server *s, lh_error *err) {
    lh__srv_adapter *set[LH__SRV_MAX_ADAPTERS];
    lh_adapter *as[LH__SRV_MAX_ADAPTERS];
    lh_adapter_weights w[LH__SRV_MAX_ADAPTERS];
    size_t n = lh__default_set(s, set, w);
    for (size_t i = 0; i < n; i++) as[i] = set[i]->a;
    return lh_adapter_set_ex(s->model, as, w, n, LH_ADAPTER_RUNTIME, err);
}

/* ---- Adapter jobs ---- */

static json_t *adapter_json(const lh__srv_adapter *a) {
    const lh_adapter_report *r = lh_adapter_get_report(a->a);
    return json_pack("{s:s, s:s, s:f, s:b, s:s, s:i, s:i}", "name", a->name, "file", a->file,
                     "scale", a->scale, "active", a->active, "format", r->format, "layers_unet",
                     (json_int_t)r->layers_unet, "layers_text_encoder", (json_int_t)r->layers_te);
}

lh__srv_adapter *lh__adapter_add(lh_server *s, const char *name, const char *path,
                                 const char *file, double scale, int active, lh__reply *rep) {
    if (s->n_adapters == LH__SRV_MAX_ADAPTERS) {
        lh__reply_error(rep, 409, "name", "at most %d adapters may be loaded",
                        LH__SRV_MAX_ADAPTERS);
        return NULL;
    }
    lh_error err = {0};
    lh_adapter *a = NULL;
    lh_adapter_load_opts lo = {.policy = s->o.adapter_strict ? LH_ADAPTER_STRICT : LH_ADAPTER_WARN,
                               .name = name};
    if (lh_adapter_load(&a, s->model, s->reg, path, &lo, &err) != LH_OK) {
        lh__reply_error(rep, 400, "file", "%s", err.msg);
        return NULL;
    }
    lh__srv_adapter e = {.a = a, .scale = scale, .active = active};
    snprintf(e.name, sizeof e.name, "%s", name);
    snprintf(e.file, sizeof e.file, "%s", file);
    pthread_mutex_lock(&s->mu);
    s->adapters[s->n_adapters++] = e;
    pthread_mutex_unlock(&s->mu);
    if (e.active && apply_default_set(s, &err) != LH_OK) {
        pthread_mutex_lock(&s->mu);
        s->n_adapters--;
        pthread_mutex_unlock(&s->mu);
        lh_adapter_unload(a);
        lh__reply_error(rep, 400, "file", "%s", err.msg);
        return NULL;
    }
    return &s->adapters[s->n_adapters - 1];
}

static void load_adapter(lh_server *s, lh__job *j) {
    for (size_t i = 0; i < s->n_adapters; i++)
        if (!strcmp(s->adapters[i].name, j->name)) {
            lh__reply_error(&j->reply, 409, "name",
                            "an adapter named '%s' is loaded already (DELETE /adapters/%s first)",
                            j->name, j->name);
            return;
        }
    char path[4096] = "";
    for (size_t i = 0; i < s->o.n_adapter_dirs; i++) {
        struct stat sb;
        int n = snprintf(path, sizeof path, "%s/%s", s->o.adapter_dirs[i], j->file);
        if (n > 0 && (size_t)n < sizeof path && stat(path, &sb) == 0 && S_ISREG(sb.st_mode))
            break;
        path[0] = 0;
    }
    if (!path[0]) {
        lh__reply_error(&j->reply, 404, "file", "no adapter file '%s' in the adapter directories",
                        j->file);
        return;
    }
    lh__srv_adapter *e = lh__adapter_add(s, j->name, path, j->file, j->scale, j->active, &j->reply);
    if (!e) return;
    json_t *body = adapter_json(e);
    if (!body) {
        lh__reply_error(&j->reply, 500, NULL, "out of memory");
        return;
    }
    lh__reply_json(&j->reply, 201, body);
}

static void delete_adapter(lh_server *s, lh__job *j) {
    size_t i = 0;
    while (i < s->n_adapters && strcmp(s->adapters[i].name, j->name)) i++;
    if (i == s->n_adapters) {
        lh__reply_error(&j->reply, 404, "name", "no adapter named '%s' is loaded", j->name);
        return;
    }
    lh_error err = {0};
    lh_adapter *a = s->adapters[i].a;
    pthread_mutex_lock(&s->mu);
    memmove(&s->adapters[i], &s->adapters[i + 1], (s->n_adapters - i - 1) * sizeof s->adapters[0]);
    s->n_adapters--;
    pthread_mutex_unlock(&s->mu);
    if (apply_default_set(s, &err) != LH_OK)
        lh_log(LH_LOG_ERROR, "serve", "restoring the default adapters: %s", err.msg);
    lh_adapter_unload(a);
    lh__reply_json(&j->reply, 200, json_pack("{s:s}", "deleted", j->name));
}

/* ---- The worker ---- */

static void run_job(lh_server *s, lh__job *j) {
    switch (j->kind) {
    case LH__JOB_ADAPTER_LOAD: load_adapter(s, j); break;
    case LH__JOB_ADAPTER_DELETE: delete_adapter(s, j); break;
    default: lh__reply_error(&j->reply, 500, NULL, "unknown job"); break;
    }
}

/* Done: the reply is in j; resume its connection once it is suspended
 * (whichever of the handler and the worker comes second does it). */
static void finish(lh_server *s, lh__job *j) {
    pthread_mutex_lock(&s->mu);
    j->state = LH__JOB_DONE;
    struct MHD_Connection *c = j->suspended && !j->resumed ? j->conn : NULL;
    if (c) j->resumed = 1;
    pthread_mutex_unlock(&s->mu);
    if (c) MHD_resume_connection(c);
}

/* Called with s->mu held: j leaves the queue and starts; its wait is a
 * sample for the circuit breaker. */
static void start_job(lh_server *s, lh__job *j, lh__job *prev) {
    if (prev) prev->next = j->next;
    else s->head = j->next;
    if (s->tail == j) s->tail = prev;
    s->depth--;
    j->state = LH__JOB_RUNNING;
    j->next = NULL;
    lh__breaker_sample(&s->breaker, lh__now() - j->queued_at, lh__now());
}

/* Called with s->mu held: queued generations that may share j's batch,
 * taken off the queue in order, up to server.batch images in all. The scan
 * stops at the first adapter job, which must see the queue's order. */
static size_t take_batch(lh_server *s, lh__job *j, lh__job **batch) {
    size_t n = 1;
    batch[0] = j;
    if (s->o.batch_max <= 1 || j->kind != LH__JOB_GENERATE) return n;
    for (lh__job *prev = NULL, *q = s->head; q && n < s->o.batch_max;) {
        lh__job *next = q->next;
        if (q->kind != LH__JOB_GENERATE) break;
        if (lh__gen_batchable(&j->gen, &q->gen)) {
            start_job(s, q, prev);
            batch[n++] = q;
        } else {
            prev = q;
        }
        q = next;
    }
    return n;
}

static int too_late(lh_server *s, lh__job *j) {
    double waited = lh__now() - j->queued_at;
    if (!s->o.queue_timeout_s || waited <= (double)s->o.queue_timeout_s) return 0;
    lh__reply_error(&j->reply, 503, NULL,
                    "waited %.0f s for the model, more than the server's %u s; try again later",
                    waited, s->o.queue_timeout_s);
    j->reply.retry_after = 1;
    return 1;
}

static void *worker_main(void *arg) {
    lh_server *s = arg;
    lh__job *batch[LH_PIPELINE_MAX_BATCH];
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->head && !s->stopping) pthread_cond_wait(&s->work, &s->mu);
        if (!s->head) break; /* stopping, and everything queued has run */
        lh__job *j = s->head;
        start_job(s, j, NULL);
        size_t n = take_batch(s, j, batch);
        if (n > 1) {
            s->batches++;
            s->batched += n;
        }
        pthread_mutex_unlock(&s->mu);
        double t0 = lh__now();
        int late[LH_PIPELINE_MAX_BATCH];
        for (size_t i = 0; i < n; i++) late[i] = too_late(s, batch[i]);
        if (s->o.test_job_delay_ms) {
            struct timespec d = {s->o.test_job_delay_ms / 1000,
                                 (long)(s->o.test_job_delay_ms % 1000) * 1000000L};
            while (nanosleep(&d, &d) && errno == EINTR) {
            }
        }
        lh__gen_req *rs[LH_PIPELINE_MAX_BATCH];
        lh__reply *reps[LH_PIPELINE_MAX_BATCH];
        size_t m = 0;
        for (size_t i = 0; i < n; i++) {
            if (late[i]) continue;
            if (batch[i]->kind != LH__JOB_GENERATE) {
                run_job(s, batch[i]);
                continue;
            }
            rs[m] = &batch[i]->gen;
            reps[m++] = &batch[i]->reply;
        }
        if (m) {
            lh__generate(s, rs, reps, m);
            lh_error err = {0};
            if (apply_default_set(s, &err) != LH_OK)
                lh_log(LH_LOG_ERROR, "serve", "restoring the default adapters: %s", err.msg);
        }
        double busy = lh__now() - t0;
        for (size_t i = 0; i < n; i++) finish(s, batch[i]);
        pthread_mutex_lock(&s->mu);
        s->busy_s += busy;
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

lh_status lh__worker_start(lh_server *s, lh_error *err) {
    if (pthread_create(&s->worker, NULL, worker_main, s))
        return lh_error_set(err, LH_ERR_INTERNAL, "cannot start the model worker thread");
    s->worker_started = 1;
    return LH_OK;
}

void lh__worker_stop(lh_server *s) {
    if (!s->worker_started) return;
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    pthread_cond_broadcast(&s->work);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->worker, NULL);
    s->worker_started = 0;
}

/* ---- Jobs ---- */

int lh__job_submit(lh_server *s, lh__job *job, struct MHD_Connection *conn) {
    pthread_mutex_lock(&s->mu);
    if (s->stopping || s->depth >= s->o.queue_size) {
        int stopping = s->stopping;
        pthread_mutex_unlock(&s->mu);
        if (stopping)
            lh__reply_error(&job->reply, 503, NULL, "the server is shutting down");
        else
            lh__reply_error(&job->reply, 503, NULL,
                            "the queue is full (%zu jobs waiting); try again later",
                            s->o.queue_size);
        job->reply.retry_after = 1;
        return -1;
    }
    if (job->kind == LH__JOB_GENERATE && s->breaker.threshold_s > 0) {
        double now = lh__now(), queued[256];
        size_t nq = 0;
        for (lh__job *q = s->head; q && nq < 256; q = q->next) queued[nq++] = now - q->queued_at;
        if (lh__breaker_check(&s->breaker, queued, nq, now)) {
            double p95 = s->breaker.p95, thr = s->breaker.threshold_s;
            pthread_mutex_unlock(&s->mu);
            lh__reply_error(&job->reply, 503, NULL,
                            "overloaded: the 95th percentile of queue wait is %.0f ms, above "
                            "the server's %.0f ms (circuit breaker open); try again later",
                            p95 * 1e3, thr * 1e3);
            job->reply.retry_after = p95 < 1 ? 1 : (unsigned)(p95 + 0.5);
            return -1;
        }
    }
    job->state = LH__JOB_QUEUED;
    job->conn = conn;
    job->queued_at = lh__now();
    job->next = NULL;
    if (s->tail) s->tail->next = job;
    else s->head = job;
    s->tail = job;
    s->depth++;
    pthread_cond_signal(&s->work);
    pthread_mutex_unlock(&s->mu);
    /* the worker resumes conn only after this (see finish) */
    MHD_suspend_connection(conn);
    pthread_mutex_lock(&s->mu);
    job->suspended = 1;
    int resume = job->state == LH__JOB_DONE && !job->resumed;
    if (resume) job->resumed = 1;
    pthread_mutex_unlock(&s->mu);
    if (resume) MHD_resume_connection(conn);
    return 0;
}

int lh__job_done(lh_server *s, lh__job *job) {
    pthread_mutex_lock(&s->mu);
    int done = job->state == LH__JOB_DONE;
    pthread_mutex_unlock(&s->mu);
    return done;
}

void lh__job_free(lh__job *job) {
    if (!job) return;
    lh__gen_req_free(&job->gen);
    free(job->reply.body);
    free(job);
}
