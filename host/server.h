/* The generation server behind `lorahost serve`: libmicrohttpd with its own
 * thread pool answers HTTP; one worker thread owns the model and runs the
 * jobs (generations, adapter loads and deletes) the handlers queue, one at a
 * time. docs/server.md describes the API. The calls here start and stop it
 * in-process (the CLI and tests/test_server.c). */
#ifndef LH_HOST_SERVER_H
#define LH_HOST_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "lorahost/lorahost.h"

typedef struct lh_server lh_server;

/* Every string and array here must stay valid until lh_server_stop. */
typedef struct lh_server_opts {
    const char *model;             /* diffusers directory or single-file checkpoint */
    const char *host;              /* listen address (IPv4 dotted quad), "127.0.0.1" */
    int port;                      /* 0: an ephemeral port (lh_server_port tells it) */
    int http_threads;              /* libmicrohttpd's pool */
    const char *device;            /* "cpu" (NULL), "cuda" or "cuda:N" (lh_backend_create) */
    const char *dtype;             /* [model] dtype (lh_model_set_dtype); NULL: auto */
    const char *vae_dtype;         /* [model] vae_dtype (lh_model_set_vae_dtype); NULL: auto */
    const char *weight_storage;    /* [model] weight_storage (lh_model_set_weight_storage); NULL: auto */
    int compute_threads;           /* CPU backend threads, 0 = all */
    const char *const *api_keys;   /* accepted keys; none: no authentication */
    size_t n_api_keys;
    double qps, qps_per_key;       /* token-bucket rates; 0 = no limit */
    size_t queue_size;             /* jobs that may wait; more get 503 */
    size_t max_body_bytes;         /* larger bodies get 413 */
    int64_t max_pixels;            /* width * height * batch_size bound per request */
    const char *const *adapter_dirs; /* POST /adapters looks for files here */
    size_t n_adapter_dirs;
    const char *const *plugin_dirs;  /* scanned before $LORAHOST_PLUGIN_PATH and the built-ins */
    size_t n_plugin_dirs;
    int adapter_strict;            /* adapters.policy = strict */
    unsigned connection_timeout_s; /* idle connections are closed after this; 0 = never */
    unsigned queue_timeout_s;      /* a job not started after this gets 503; 0 = wait */
    /* [generate] defaults for fields a request leaves out and the [scheduler]
     * keys; NULL: lh_gen_params_init's defaults. */
    const lh_settings *settings;
    size_t batch_max;              /* images per pipeline batch of queued requests; 1 = no batching */
    double breaker_p95_ms;         /* 503 while the p95 of queue wait is above this; 0 = off */
    double breaker_window_s;       /* the waits of jobs started this long ago count */
    const char *log_dir;           /* access log: one JSON-lines file per day here; NULL = none */
    unsigned log_keep_days;        /* older access-*.jsonl files are deleted; 0 = keep all */
    int log_requests;              /* one stderr line per request (never a key) */
    unsigned test_job_delay_ms;    /* tests: the worker sleeps this long before each job */
} lh_server_opts;

/* Defaults: 127.0.0.1:8501, 4 HTTP threads, qps 50, queue 64, 16 MiB bodies,
 * 2048 x 2048 pixels, 30 s connection timeout, 300 s queue timeout, no
 * batching, breaker at a p95 queue wait of 500 ms over 10 s, no
 * access log (7 days kept when there is one). */
LH_API void lh_server_opts_init(lh_server_opts *o);

/* Open the model, scan plugins, start the worker and listen. Fails (nothing
 * left running) naming what went wrong: the model, the address, ... */
LH_API lh_status lh_server_start(lh_server **out, const lh_server_opts *opts, lh_error *err);
/* The port listened on (the chosen one when opts->port was 0). */
LH_API int lh_server_port(const lh_server *s);
/* Graceful: stop accepting, let requests in flight finish (queued jobs
 * run), join every thread, free everything. NULL is a no-op. */
LH_API void lh_server_stop(lh_server *s);

#endif
