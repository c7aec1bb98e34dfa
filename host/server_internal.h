/* What the server's files share: the server object, jobs, the queue, rate
 * limits and metrics (host/server*.c). Private to host/. */
#ifndef LH_HOST_SERVER_INTERNAL_H
#define LH_HOST_SERVER_INTERNAL_H

#include <jansson.h>
#include <pthread.h>
#include <stdint.h>

#include "lorahost/adapters.h"
#include "lorahost/lorahost.h"
#include "model.h"
#include "pipeline.h"
#include "server.h"

struct MHD_Connection;
struct MHD_Daemon;

#define LH__SRV_MAX_ADAPTERS 64
#define LH__SRV_MAX_REQ_ADAPTERS 16
#define LH__SRV_NAME_MAX 64

/* ---- Responses ---- */

typedef struct lh__reply {
    int status;
    const char *ctype;   /* static string */
    char *body;          /* malloc'd */
    size_t len;
    unsigned retry_after; /* seconds; 0: no Retry-After header */
    char seed[24];        /* X-Seed header when not empty */
} lh__reply;

/* {"error": msg, "field": field (null when NULL)} as the reply. */
void lh__reply_error(lh__reply *r, int status, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* A JSON value as the reply (steals j). */
void lh__reply_json(lh__reply *r, int status, void *json_t_value);

/* ---- Token buckets (server_limits.c) ---- */

typedef struct lh__bucket {
    double tokens, rate, burst;
    double last; /* monotonic seconds */
} lh__bucket;

void lh__bucket_init(lh__bucket *b, double rate);
/* Seconds until a token is there, 0 if one is. */
double lh__bucket_wait(lh__bucket *b, double now);
void lh__bucket_take(lh__bucket *b);
/* Constant-time for a given key length: 1 if given equals key. */
int lh__key_equal(const char *given, size_t n_given, const char *key);
double lh__now(void);

/* ---- The circuit breaker (server_breaker.c) ---- */

#define LH__BREAKER_SAMPLES 512

/* Open (new generations get 503) while the 95th percentile of queue waits
 * is above the threshold: the waits of jobs started within the window,
 * and the waits so far of the jobs still queued. It closes by itself as
 * the queue drains and the slow samples age out. Guarded by s->mu. */
typedef struct lh__breaker {
    double threshold_s, window_s; /* threshold 0: off */
    double at[LH__BREAKER_SAMPLES], wait[LH__BREAKER_SAMPLES]; /* a ring */
    size_t next, n;
    int open;
    uint64_t opened; /* times it opened */
    double p95;      /* at the last check */
} lh__breaker;

void lh__breaker_sample(lh__breaker *b, double wait, double now);
/* Update the state given the waits so far of the queued jobs; 1 if open. */
int lh__breaker_check(lh__breaker *b, const double *queued, size_t n_queued, double now);

/* ---- Metrics (server_metrics.c) ---- */

typedef enum lh__route {
    LH__ROUTE_HEALTHZ = 0,
    LH__ROUTE_GENERATE,
    LH__ROUTE_ADAPTERS,
    LH__ROUTE_ADAPTER,
    LH__ROUTE_SCHEDULERS,
    LH__ROUTE_PLUGINS,
    LH__ROUTE_METRICS,
    LH__ROUTE_PAGE,          /* GET / : the web page */
    LH__ROUTE_SDAPI_TXT2IMG, /* A1111's POST /sdapi/v1/txt2img */
    LH__ROUTE_SDAPI_IMG2IMG, /* A1111's POST /sdapi/v1/img2img */
    LH__ROUTE_SDAPI_SAMPLERS,
    LH__ROUTE_OTHER,
    LH__ROUTE_COUNT
} lh__route;

#define LH__N_BUCKETS 12
#define LH__N_STATUS 16

typedef struct lh__metrics {
    pthread_mutex_t mu;
    struct {
        int status[LH__N_STATUS];
        uint64_t count[LH__N_STATUS];
        uint64_t hist[LH__N_BUCKETS + 1]; /* last: +Inf */
        double sum;
        uint64_t n;
    } route[LH__ROUTE_COUNT];
} lh__metrics;

const char *lh__route_name(lh__route r);
void lh__metrics_observe(lh__metrics *m, lh__route r, int status, double seconds);
typedef struct lh__gauges {
    size_t depth, adapters;
    long in_flight;
    double busy_s, wait_p95_s;
    uint64_t batches, batched, breaker_opened;
    int breaker_open;
} lh__gauges;

/* Prometheus text, malloc'd. */
char *lh__metrics_text(lh__metrics *m, const lh__gauges *g, size_t *len);

/* ---- Jobs and the worker (server_worker.c, server_generate.c) ---- */

typedef struct lh__req_adapter {
    char name[LH__SRV_NAME_MAX + 1];
    double scale;
    int has_scale;
    double te, unet; /* per-component multipliers (A1111's <lora:NAME:TE:UNET>), 1 */
} lh__req_adapter;

typedef struct lh__srv_adapter lh__srv_adapter;

typedef struct lh__gen_req {
    lh_gen_params p;
    char *prompt, *negative_prompt, *scheduler;
    uint8_t *init_rgb; /* img2img */
    int has_adapters;  /* the request named its set (maybe empty) */
    size_t n_adapters;
    lh__req_adapter adapters[LH__SRV_MAX_REQ_ADAPTERS];
    int want_png;
    /* A1111 (/sdapi/v1/txt2img, img2img): its reply format, n_iter batches (seeds seed,
     * seed + 1, ...), adapters named by <lora:...> tags may be loaded from
     * the adapter directories on first use, and the request's fields echoed
     * as "parameters" (a json_t *). */
    int a1111;
    int n_iter;
    json_t *echo;
    /* On the worker (lh__gen_prepare): the adapter set and its weights. */
    size_t n_set;
    lh__srv_adapter *set[LH__SRV_MAX_ADAPTERS];
    lh_adapter_weights w[LH__SRV_MAX_ADAPTERS];
} lh__gen_req;

typedef enum lh__job_kind {
    LH__JOB_GENERATE = 0,
    LH__JOB_ADAPTER_LOAD,
    LH__JOB_ADAPTER_DELETE,
    LH__JOB_KIND_COUNT
} lh__job_kind;

typedef enum lh__job_state { LH__JOB_QUEUED = 0, LH__JOB_RUNNING, LH__JOB_DONE } lh__job_state;

typedef struct lh__job {
    struct lh__job *next;
    lh__job_kind kind;
    lh__job_state state;
    lh__gen_req gen;
    char name[LH__SRV_NAME_MAX + 1], file[256];
    double scale;
    int active;
    lh__reply reply;
    struct MHD_Connection *conn; /* suspended while the job waits and runs */
    int suspended, resumed;
    double queued_at;
} lh__job;

struct lh__srv_adapter {
    char name[LH__SRV_NAME_MAX + 1], file[256];
    lh_adapter *a;
    double scale;
    int active; /* in the default set */
};

struct lh_server {
    lh_server_opts o;
    struct MHD_Daemon *daemon;
    int port;
    lh_backend *be;
    lh_registry *reg;
    lh_model *model;
    struct lh_safety_chain *safety; /* [plugins] safety; NULL without settings */
    lh_gen_params defaults;
    char *schedulers_json, *plugins_json; /* built at start */
    size_t schedulers_len, plugins_len;

    pthread_mutex_t mu; /* the queue, in_flight, the adapter list */
    pthread_cond_t work, idle;
    lh__job *head, *tail;
    size_t depth;
    long in_flight;
    int stopping, worker_started;
    pthread_t worker;
    lh__srv_adapter adapters[LH__SRV_MAX_ADAPTERS]; /* changed by the worker only */
    size_t n_adapters;

    pthread_mutex_t limit_mu;
    lh__bucket global, *per_key;
    lh__breaker breaker; /* guarded by mu */
    double busy_s;       /* worker time in jobs; guarded by mu */
    uint64_t batches, batched;

    pthread_mutex_t log_mu; /* the access log */
    void *log_file;         /* FILE * of log_day's file, or NULL */
    char log_day[16];       /* YYYY-MM-DD (UTC) */

    lh__metrics metrics;
};

lh_status lh__worker_start(lh_server *s, lh_error *err);
/* Run what is queued, then join the worker. */
void lh__worker_stop(lh_server *s);
/* Queue job and suspend conn (libmicrohttpd) until the worker has put its
 * reply in job->reply and resumed conn: 0. A full queue or a stopping
 * server: -1 with the 503 in job->reply, conn not suspended. A job that
 * waited past queue_timeout_s is answered 503 by the worker, not run. */
int lh__job_submit(lh_server *s, lh__job *job, struct MHD_Connection *conn);
/* Whether the worker is done with job (its reply is there). */
int lh__job_done(lh_server *s, lh__job *job);
void lh__job_free(lh__job *job);

/* Parse and range-check a /generate body into r; on failure r->... is
 * freed and reply holds the 400. Returns 0 or -1. */
int lh__gen_req_parse(lh__gen_req *r, const lh_server *s, const char *body, size_t len,
                      lh__reply *reply);
/* Field readers: 0, or -1 with a 400 naming `field` in the reply. */
int lh__get_int(lh__reply *rep, const json_t *v, const char *field, int64_t lo, int64_t hi,
                int64_t *out);
int lh__get_num(lh__reply *rep, const json_t *v, const char *field, double lo, double hi,
                double *out);
int lh__get_str(lh__reply *rep, const json_t *v, const char *field, size_t max, char **out);
/* A base64 PNG (a data: URL prefix allowed) decoded to RGB8. */
int lh__get_png(lh__reply *rep, const json_t *v, const char *field, uint8_t **rgb, int64_t *w,
                int64_t *h);
/* The body as a JSON object (json_t *), or NULL with a 400 naming where it broke. */
json_t *lh__json_body(const char *body, size_t len, lh__reply *rep);
/* After the fields: the init image's size, the pixel bound, the seed (-1:
 * random) and the strings into r->p. 0, or -1 with the reply. */
int lh__gen_req_finish(lh__gen_req *r, const lh_server *s, int64_t w, int64_t h, int size_given,
                       int64_t iw, int64_t ih, int64_t seed, lh__reply *rep);
/* The same for A1111's txt2img / img2img bodies (server_sdapi.c). */
int lh__sdapi_parse(lh__gen_req *r, const lh_server *s, const char *body, size_t len, int img2img,
                    lh__reply *reply);
void lh__gen_req_free(lh__gen_req *r);
/* Adapter names: letters, digits, '.', '_', '-', not starting with '.'. */
int lh__name_ok(const char *s);
/* Whether two parsed requests may share one pipeline batch: one image each,
 * txt2img, the same adapter set, size, steps, guidance and scheduler. */
int lh__gen_batchable(const lh__gen_req *a, const lh__gen_req *b);
/* Worker side: run the requests (n > 1: batchable ones, in one pipeline
 * batch when the prompts allow) and put each reply in reps[i]. */
void lh__generate(lh_server *s, lh__gen_req *const *rs, lh__reply *const *reps, size_t n);
/* Worker side: load `path` as adapter `name` into the server's list
 * (not in the default set unless active). NULL with reply filled. */
lh__srv_adapter *lh__adapter_add(lh_server *s, const char *name, const char *path,
                                 const char *file, double scale, int active, lh__reply *reply);
/* The server's default set with its weights; returns its size. */
size_t lh__default_set(lh_server *s, lh__srv_adapter **set, lh_adapter_weights *w);
/* A1111's reply: {"images", "parameters", "info"} (server_sdapi.c). */
json_t *lh__sdapi_reply(const lh__gen_req *r, json_t *images, const uint64_t *seeds,
                        char *const *infotexts, size_t n_images, const char *sampler,
                        const char *model_name);
/* GET /sdapi/v1/samplers. */
void lh__sdapi_samplers(const lh_server *s, lh__reply *reply);

/* ---- The access log (server_access_log.c) ---- */

/* Open today's file (server.log_dir; nothing without one) and prune. */
lh_status lh__access_log_open(lh_server *s, lh_error *err);
/* One line (no newline in it), starting a new file when the day changed. */
void lh__access_log_write(lh_server *s, const char *line);
void lh__access_log_close(lh_server *s);

/* ---- The web page (server_page.c) ---- */

/* The page (text/html) as the reply. */
void lh__page(lh__reply *rep);

/* ---- base64 (server_base64.c) ---- */
char *lh__base64_encode(const void *data, size_t n, size_t *out_len);
/* NULL on bad input or no memory (*bad set for bad input). */
uint8_t *lh__base64_decode(const char *s, size_t n, size_t *out_len, int *bad);

#endif
