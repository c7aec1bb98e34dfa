/* The generation server: libmicrohttpd (its own thread pool) in front of
 * the model worker (server_worker.c). This file: start and graceful stop,
 * the request handler (API keys, rate limits, body limit, routing) and the
 * small routes; /generate's parsing and work are in server_generate.c.
 * docs/server.md describes the API. */
#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <microhttpd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "backend_load.h"
#include "log.h"
#include "safety.h"
#include "server_internal.h"

#define JSON_TYPE "application/json"

void lh_server_opts_init(lh_server_opts *o) {
    memset(o, 0, sizeof *o);
    o->host = "127.0.0.1";
    o->port = 8501;
    o->http_threads = 4;
    o->qps = 50;
    o->queue_size = 64;
    o->max_body_bytes = (size_t)16 << 20;
    o->max_pixels = 2048 * 2048;
    o->connection_timeout_s = 30;
    o->queue_timeout_s = 300;
    o->batch_max = 1;
    o->breaker_p95_ms = 500;
    o->breaker_window_s = 10;
    o->log_keep_days = 7;
}

/* ---- Replies ---- */

void lh__reply_json(lh__reply *r, int status, void *value) {
    json_t *j = value;
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    free(r->body);
    r->body = NULL;
    if (!text) {
        static const char OOM[] = "{\"error\":\"out of memory\",\"field\":null}";
        r->status = 500;
        r->ctype = JSON_TYPE;
        r->body = strdup(OOM);
        r->len = r->body ? strlen(r->body) : 0;
        return;
    }
    r->status = status;
    r->ctype = JSON_TYPE;
    r->body = text;
    r->len = strlen(text);
}

void lh__reply_error(lh__reply *r, int status, const char *field, const char *fmt, ...) {
    char msg[LH_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    lh__reply_json(r, status, json_pack("{s:s, s:s?}", "error", msg, "field", field));
}

/* ---- Routes ---- */

typedef struct req {
    double t0;
    lh__route route;
    char method[8];
    int status, responded, key_index;
    char *body;
    size_t len, cap;
    int too_large;
    lh__job *job; /* queued for the worker; the connection is suspended meanwhile */
    size_t bytes_out;
    char path[200], remote[48], seed[24];
} req;

static lh__route route_of(const char *url) {
    static const struct {
        const char *path;
        lh__route r;
    } T[] = {{"/healthz", LH__ROUTE_HEALTHZ},       {"/generate", LH__ROUTE_GENERATE},
             {"/adapters", LH__ROUTE_ADAPTERS},     {"/schedulers", LH__ROUTE_SCHEDULERS},
             {"/plugins", LH__ROUTE_PLUGINS},       {"/metrics", LH__ROUTE_METRICS},
             {"/", LH__ROUTE_PAGE},                 {"/index.html", LH__ROUTE_PAGE},
             {"/sdapi/v1/txt2img", LH__ROUTE_SDAPI_TXT2IMG},
             {"/sdapi/v1/img2img", LH__ROUTE_SDAPI_IMG2IMG},
             {"/sdapi/v1/samplers", LH__ROUTE_SDAPI_SAMPLERS}};
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++)
        if (!strcmp(url, T[i].path)) return T[i].r;
    if (!strncmp(url, "/adapters/", 10)) return LH__ROUTE_ADAPTER;
    return LH__ROUTE_OTHER;
}

static int method_ok(lh__route r, const char *m) {
    switch (r) {
    case LH__ROUTE_GENERATE:
    case LH__ROUTE_SDAPI_TXT2IMG:
    case LH__ROUTE_SDAPI_IMG2IMG: return !strcmp(m, "POST");
    case LH__ROUTE_ADAPTERS: return !strcmp(m, "GET") || !strcmp(m, "POST");
    case LH__ROUTE_ADAPTER: return !strcmp(m, "DELETE");
    default: return !strcmp(m, "GET") || !strcmp(m, "HEAD");
    }
}

static void healthz(lh_server *s, lh__reply *rep) {
    pthread_mutex_lock(&s->mu);
    size_t depth = s->depth, n = s->n_adapters;
    pthread_mutex_unlock(&s->mu);
    lh__reply_json(rep, 200,
                   json_pack("{s:s, s:s, s:s, s:I, s:I}", "status", "ok", "version",
                             lh_version(), "model", s->model->info.name, "queue_depth",
                             (json_int_t)depth, "adapters_loaded", (json_int_t)n));
}

static void list_adapters(lh_server *s, lh__reply *rep) {
    json_t *list = json_array();
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; list && i < s->n_adapters; i++)
        json_array_append_new(list, json_pack("{s:s, s:s, s:f, s:b}", "name",
                                              s->adapters[i].name, "file", s->adapters[i].file,
                                              "scale", s->adapters[i].scale, "active",
                                              s->adapters[i].active));
    pthread_mutex_unlock(&s->mu);
    lh__reply_json(rep, 200, json_pack("{s:o}", "adapters", list));
}

/* A file name only: no directory part, no "..", not hidden. */
static int file_name_ok(const char *f) {
    size_t n = strlen(f);
    return n && n < 256 && f[0] != '.' && !strchr(f, '/') && !strchr(f, '\\') &&
           !strstr(f, "..");
}

/* Queue the job and suspend the connection until the worker is done with
 * it (the handler is called again then); or, refused, its 503 in rep. */
static void submit(lh_server *s, struct MHD_Connection *c, req *q, lh__job *job,
                   lh__reply *rep) {
    if (lh__job_submit(s, job, c) == 0) {
        q->job = job;
        return;
    }
    *rep = job->reply;
    job->reply.body = NULL;
    lh__job_free(job);
}

static void post_adapter(lh_server *s, struct MHD_Connection *c, req *q, lh__reply *rep) {
    json_error_t je;
    json_t *root = json_loadb(q->body ? q->body : "", q->len, JSON_REJECT_DUPLICATES, &je);
    if (!root || !json_is_object(root)) {
        lh__reply_error(rep, 400, NULL, "the body must be a JSON object {name, file, scale, "
                                        "active}%s%s", root ? "" : ": ", root ? "" : je.text);
        json_decref(root);
        return;
    }
    lh__job *job = calloc(1, sizeof *job);
    if (!job) {
        json_decref(root);
        lh__reply_error(rep, 500, NULL, "out of memory");
        return;
    }
    job->kind = LH__JOB_ADAPTER_LOAD;
    job->scale = 1.0;
    const char *key;
    json_t *v;
    int bad = 0;
    json_object_foreach(root, key, v) {
        if (!strcmp(key, "file")) {
            if (!json_is_string(v) || !file_name_ok(json_string_value(v))) {
                lh__reply_error(rep, 400, "file",
                                "file: a file name in one of the server's adapter directories, "
                                "without any directory part or '..'");
                bad = 1;
                break;
            }
            snprintf(job->file, sizeof job->file, "%s", json_string_value(v));
        } else if (!strcmp(key, "name")) {
            if (!json_is_string(v) || !lh__name_ok(json_string_value(v))) {
                lh__reply_error(rep, 400, "name",
                                "name: letters, digits, '.', '_', '-' (at most %d), not "
                                "starting with '.'", LH__SRV_NAME_MAX);
                bad = 1;
                break;
            }
            snprintf(job->name, sizeof job->name, "%s", json_string_value(v));
        } else if (!strcmp(key, "scale")) {
            double x = json_is_number(v) ? json_number_value(v) : NAN;
            if (!isfinite(x) || x < -100 || x > 100) {
                lh__reply_error(rep, 400, "scale", "scale: a finite number in -100..100");
                bad = 1;
                break;
            }
            job->scale = x;
        } else if (!strcmp(key, "active")) {
            if (!json_is_boolean(v)) {
                lh__reply_error(rep, 400, "active", "active: expected true or false");
                bad = 1;
                break;
            }
            job->active = json_is_true(v);
        } else {
            char field[80];
            snprintf(field, sizeof field, "%.64s", key);
            lh__reply_error(rep, 400, field, "%s: unknown field", field);
            bad = 1;
            break;
        }
    }
    json_decref(root);
    if (!bad && !job->file[0]) {
        lh__reply_error(rep, 400, "file", "file: missing");
        bad = 1;
    }
    if (!bad && !job->name[0]) { /* the file name without its extension */
        snprintf(job->name, sizeof job->name, "%.*s", LH__SRV_NAME_MAX, job->file);
        char *dot = strrchr(job->name, '.');
        if (dot && dot != job->name) *dot = 0;
        if (!lh__name_ok(job->name)) {
            lh__reply_error(rep, 400, "name", "name: the file name does not make a valid name; "
                                              "give one");
            bad = 1;
        }
    }
    if (bad) {
        lh__job_free(job);
        return;
    }
    submit(s, c, q, job, rep);
}

static void delete_adapter(lh_server *s, struct MHD_Connection *c, req *q, const char *url,
                           lh__reply *rep) {
    const char *name = url + strlen("/adapters/");
    if (!lh__name_ok(name)) {
        lh__reply_error(rep, 400, "name", "name: not a valid adapter name");
        return;
    }
    lh__job *job = calloc(1, sizeof *job);
    if (!job) {
        lh__reply_error(rep, 500, NULL, "out of memory");
        return;
    }
    job->kind = LH__JOB_ADAPTER_DELETE;
    snprintf(job->name, sizeof job->name, "%s", name);
    submit(s, c, q, job, rep);
}

static void generate(lh_server *s, struct MHD_Connection *c, req *q, lh__reply *rep) {
    lh__job *job = calloc(1, sizeof *job);
    if (!job) {
        lh__reply_error(rep, 500, NULL, "out of memory");
        return;
    }
    job->kind = LH__JOB_GENERATE;
    const char *fmt = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "format");
    const char *accept = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Accept");
    if (fmt && strcmp(fmt, "png") && strcmp(fmt, "json")) {
        lh__reply_error(rep, 400, "format", "format: png or json");
        lh__job_free(job);
        return;
    }
    job->gen.want_png = fmt ? !strcmp(fmt, "png") : accept && strstr(accept, "image/png") != NULL;
    if (lh__gen_req_parse(&job->gen, s, q->body ? q->body : "", q->len, rep)) {
        lh__job_free(job);
        return;
    }
    submit(s, c, q, job, rep);
}

/* A1111's POST /sdapi/v1/txt2img and img2img (server_sdapi.c). */
static void sdapi(lh_server *s, struct MHD_Connection *c, req *q, int img2img, lh__reply *rep) {
    lh__job *job = calloc(1, sizeof *job);
    if (!job) {
        lh__reply_error(rep, 500, NULL, "out of memory");
        return;
    }
    job->kind = LH__JOB_GENERATE;
    if (lh__sdapi_parse(&job->gen, s, q->body ? q->body : "", q->len, img2img, rep)) {
        lh__job_free(job);
        return;
    }
    submit(s, c, q, job, rep);
}

static void copy_reply(lh__reply *rep, const char *text, size_t len, const char *ctype) {
    rep->body = malloc(len ? len : 1);
    if (!rep->body) {
        lh__reply_error(rep, 500, NULL, "out of memory");
        return;
    }
    memcpy(rep->body, text, len);
    rep->len = len;
    rep->status = 200;
    rep->ctype = ctype;
}

static void dispatch(lh_server *s, struct MHD_Connection *c, const char *url, req *q,
                     lh__reply *rep) {
    switch (q->route) {
    case LH__ROUTE_HEALTHZ: healthz(s, rep); break;
    case LH__ROUTE_GENERATE: generate(s, c, q, rep); break;
    case LH__ROUTE_ADAPTERS:
        if (!strcmp(q->method, "POST")) post_adapter(s, c, q, rep);
        else list_adapters(s, rep);
        break;
    case LH__ROUTE_ADAPTER: delete_adapter(s, c, q, url, rep); break;
    case LH__ROUTE_SCHEDULERS:
        copy_reply(rep, s->schedulers_json, s->schedulers_len, JSON_TYPE);
        break;
    case LH__ROUTE_PLUGINS: copy_reply(rep, s->plugins_json, s->plugins_len, JSON_TYPE); break;
    case LH__ROUTE_PAGE: lh__page(rep); break;
    case LH__ROUTE_SDAPI_TXT2IMG: sdapi(s, c, q, 0, rep); break;
    case LH__ROUTE_SDAPI_IMG2IMG: sdapi(s, c, q, 1, rep); break;
    case LH__ROUTE_SDAPI_SAMPLERS: lh__sdapi_samplers(s, rep); break;
    case LH__ROUTE_METRICS: {
        lh__gauges g;
        pthread_mutex_lock(&s->mu);
        g.depth = s->depth;
        g.adapters = s->n_adapters;
        g.in_flight = s->in_flight;
        g.busy_s = s->busy_s;
        g.batches = s->batches;
        g.batched = s->batched;
        g.wait_p95_s = s->breaker.p95;
        g.breaker_open = s->breaker.open;
        g.breaker_opened = s->breaker.opened;
        pthread_mutex_unlock(&s->mu);
        size_t len = 0;
        char *text = lh__metrics_text(&s->metrics, &g, &len);
        if (!text) {
            lh__reply_error(rep, 500, NULL, "out of memory");
            break;
        }
        rep->status = 200;
        rep->ctype = "text/plain; version=0.0.4";
        rep->body = text;
        rep->len = len;
        break;
    }
    default: lh__reply_error(rep, 404, NULL, "no such route"); break;
    }
}

/* ---- The request handler ---- */

static enum MHD_Result send_reply(lh_server *s, struct MHD_Connection *c, req *q,
                                   lh__reply *rep) {
    struct MHD_Response *r = MHD_create_response_from_buffer(rep->len, rep->body,
                                                             MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(rep->body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, rep->ctype);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (rep->retry_after) {
        char ra[16];
        snprintf(ra, sizeof ra, "%u", rep->retry_after);
        MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, ra);
    }
    if (rep->seed[0]) MHD_add_response_header(r, "X-Seed", rep->seed);
    if (rep->status == 401) MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)rep->status, r);
    MHD_destroy_response(r);
    q->bytes_out = rep->len;
    snprintf(q->seed, sizeof q->seed, "%s", rep->seed);
    q->status = rep->status;
    q->responded = 1;
    /* counted when the reply is ready, so a client that has it sees it counted */
    lh__metrics_observe(&s->metrics, q->route, q->status, lh__now() - q->t0);
    return ret;
}

/* API key, rate limits, body size: answered before any body is read.
 * Returns 1 with rep filled to refuse. */
static int early_checks(lh_server *s, struct MHD_Connection *c, req *q, lh__reply *rep) {
    if (q->route == LH__ROUTE_OTHER) {
        lh__reply_error(rep, 404, NULL, "no such route");
        return 1;
    }
    if (!method_ok(q->route, q->method)) {
        lh__reply_error(rep, 405, NULL, "method %s not allowed here", q->method);
        return 1;
    }
    q->key_index = -1;
    if (q->route != LH__ROUTE_HEALTHZ && q->route != LH__ROUTE_PAGE && s->o.n_api_keys) {
        const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
        const char *tok = auth && !strncasecmp(auth, "Bearer ", 7) ? auth + 7 : NULL;
        size_t n = tok ? strlen(tok) : 0;
        for (size_t i = 0; tok && i < s->o.n_api_keys; i++) /* no early exit */
            if (lh__key_equal(tok, n, s->o.api_keys[i]) && q->key_index < 0)
                q->key_index = (int)i;
        if (q->key_index < 0) {
            lh__reply_error(rep, 401, "Authorization",
                            "%s API key: send 'Authorization: Bearer KEY'",
                            tok ? "wrong" : "missing");
            return 1;
        }
    }
    if (q->route != LH__ROUTE_HEALTHZ && q->route != LH__ROUTE_METRICS) {
        pthread_mutex_lock(&s->limit_mu);
        double now = lh__now(), wait = lh__bucket_wait(&s->global, now);
        lh__bucket *kb = s->per_key && q->key_index >= 0 ? &s->per_key[q->key_index] : NULL;
        double wk = kb ? lh__bucket_wait(kb, now) : 0;
        if (wk > wait) wait = wk;
        if (wait <= 0) {
            lh__bucket_take(&s->global);
            if (kb) lh__bucket_take(kb);
        }
        pthread_mutex_unlock(&s->limit_mu);
        if (wait > 0) {
            lh__reply_error(rep, 429, NULL, "too many requests (%s limit); retry later",
                            wk > 0 ? "per-key" : "global");
            rep->retry_after = (unsigned)ceil(wait);
            if (!rep->retry_after) rep->retry_after = 1;
            return 1;
        }
    }
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
    if (cl) {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(cl, &end, 10);
        if (errno || end == cl || n > s->o.max_body_bytes) {
            lh__reply_error(rep, 413, NULL, "request body larger than %zu bytes",
                            s->o.max_body_bytes);
            return 1;
        }
    }
    return 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
    (void)version;
    lh_server *s = cls;
    req *q = *con_cls;
    lh__reply rep = {0};
    if (!q) {
        if (!(q = calloc(1, sizeof *q))) return MHD_NO;
        q->t0 = lh__now();
        q->route = route_of(url);
        q->key_index = -1;
        snprintf(q->method, sizeof q->method, "%s", method);
        snprintf(q->path, sizeof q->path, "%s", url);
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        if (ci && ci->client_addr && ci->client_addr->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)ci->client_addr)->sin_addr, q->remote,
                      sizeof q->remote);
        *con_cls = q;
        pthread_mutex_lock(&s->mu);
        s->in_flight++;
        pthread_mutex_unlock(&s->mu);
        if (early_checks(s, c, q, &rep)) return send_reply(s, c, q, &rep);
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size, need;
        *upload_data_size = 0;
        if (q->responded || q->too_large) return MHD_YES;
        if (lh_add_size(q->len, n, &need) || need > s->o.max_body_bytes) {
            q->too_large = 1; /* no Content-Length (chunked): found while reading */
            return MHD_YES;
        }
        if (need + 1 > q->cap) {
            size_t cap = q->cap ? q->cap : 4096;
            while (cap < need + 1) cap *= 2;
            char *b = realloc(q->body, cap);
            if (!b) return MHD_NO;
            q->body = b;
            q->cap = cap;
        }
        memcpy(q->body + q->len, upload_data, n);
        q->len = need;
        q->body[q->len] = 0;
        return MHD_YES;
    }
    if (q->responded) return MHD_YES;
    if (q->job) { /* resumed: the worker is done */
        if (!lh__job_done(s, q->job)) return MHD_YES;
        rep = q->job->reply;
        q->job->reply.body = NULL;
        lh__job_free(q->job);
        q->job = NULL;
        return send_reply(s, c, q, &rep);
    }
    if (q->too_large)
        lh__reply_error(&rep, 413, NULL, "request body larger than %zu bytes", s->o.max_body_bytes);
    else
        dispatch(s, c, url, q, &rep);
    if (q->job) return MHD_YES; /* suspended until the worker replies */
    return send_reply(s, c, q, &rep);
}

/* The access log's line for a finished request (never a key: its number). */
static void access_log(lh_server *s, const req *q, double dt,
                       enum MHD_RequestTerminationCode toe) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    char when[40] = "";
    if (gmtime_r(&now.tv_sec, &tm)) {
        size_t n = strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(when + n, sizeof when - n, ".%03ldZ", now.tv_nsec / 1000000);
    }
    json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:s, s:i, s:f, s:I, s:I, s:b}", "time", when,
                          "remote", q->remote, "method", q->method, "route",
                          lh__route_name(q->route), "path", q->path, "status", q->status,
                          "seconds", dt, "bytes_in", (json_int_t)q->len, "bytes_out",
                          (json_int_t)q->bytes_out, "completed",
                          toe == MHD_REQUEST_TERMINATED_COMPLETED_OK);
    if (j && s->o.n_api_keys)
        json_object_set_new(j, "key", q->key_index >= 0 ? json_integer(q->key_index + 1)
                                                         : json_null());
    if (j && q->seed[0]) json_object_set_new(j, "seed", json_string(q->seed));
    char *line = j ? json_dumps(j, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
    json_decref(j);
    if (line) lh__access_log_write(s, line);
    free(line);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    (void)c;
    (void)toe;
    lh_server *s = cls;
    req *q = *con_cls;
    if (!q) return;
    double dt = lh__now() - q->t0;
    if (s->o.log_requests)
        fprintf(stderr, "lorahost serve: %s %s %d %.3fs\n", q->method, lh__route_name(q->route),
                q->status, dt);
    if (s->o.log_dir) access_log(s, q, dt, toe);
    lh__job_free(q->job); /* only when the worker has stopped (lh_server_stop) */
    free(q->body);
    free(q);
    *con_cls = NULL;
    pthread_mutex_lock(&s->mu);
    if (--s->in_flight == 0) pthread_cond_broadcast(&s->idle);
    pthread_mutex_unlock(&s->mu);
}

/* ---- Start and stop ---- */

static lh_status build_lists(lh_server *s, lh_error *err) {
    json_t *sch = json_array(), *names = json_array(), *plugins = json_array();
    for (size_t i = 0; sch && plugins && i < lh_registry_count(s->reg); i++) {
        const char *path;
        const lh_plugin_info *info = lh_registry_get(s->reg, i, &path);
        json_t *aliases = json_array();
        for (const char *const *a = info->aliases; aliases && a && *a; a++)
            json_array_append_new(aliases, json_string(*a));
        json_array_append_new(plugins,
                              json_pack("{s:s, s:s, s:s, s:s}", "kind",
                                        lh_plugin_kind_name((lh_plugin_kind)info->kind), "id",
                                        info->id, "version", info->version ? info->version : "",
                                        "summary", info->summary ? info->summary : ""));
        if (info->kind != LH_PLUGIN_SCHEDULER) {
            json_decref(aliases);
            continue;
        }
        const lh_scheduler_desc *d = (const lh_scheduler_desc *)info;
        json_t *keys = json_array();
        for (const char *const *k = d->config_keys; keys && k && *k; k++)
            json_array_append_new(keys, json_string(*k));
        json_array_append_new(sch, json_pack("{s:s, s:s, s:o*, s:o*}", "id", info->id, "version",
                                             info->version ? info->version : "", "aliases",
                                             aliases, "config_keys", keys));
    }
    const lh_sampler_name *sn;
    for (size_t i = 0; names && (sn = lh_sampler_name_at(i)); i++)
        if (lh_registry_find(s->reg, LH_PLUGIN_SCHEDULER, sn->plugin))
            json_array_append_new(names, json_pack("{s:s, s:s}", "name", sn->name, "plugin",
                                                   sn->plugin));
    json_t *a = json_pack("{s:o*, s:o*, s:s}", "schedulers", sch, "sampler_names", names,
                          "model_default", s->model->info.scheduler_class);
    json_t *b = json_pack("{s:o*}", "plugins", plugins);
    s->schedulers_json = a ? json_dumps(a, JSON_COMPACT) : NULL;
    s->plugins_json = b ? json_dumps(b, JSON_COMPACT) : NULL;
    json_decref(a);
    json_decref(b);
    if (!s->schedulers_json || !s->plugins_json)
        return lh_error_set(err, LH_ERR_NOMEM, "out of memory");
    s->schedulers_len = strlen(s->schedulers_json);
    s->plugins_len = strlen(s->plugins_json);
    return LH_OK;
}

/* [generate] defaults and the chosen scheduler from the settings. */
static lh_status read_defaults(lh_server *s, lh_error *err) {
    lh_gen_params *p = &s->defaults;
    lh_gen_params_init(p);
    const lh_settings *st = s->o.settings;
    if (!st) return LH_OK;
    int64_t steps;
    const lh_setting *sched;
    if (lh_settings_get_string(&p->prompt, st, "generate.prompt", err) != LH_OK ||
        lh_settings_get_string(&p->negative_prompt, st, "generate.negative_prompt", err) ||
        lh_settings_get_int(&steps, st, "generate.steps", err) ||
        lh_settings_get_double(&p->cfg_scale, st, "generate.cfg_scale", err) ||
        lh_settings_get_int(&p->width, st, "generate.width", err) ||
        lh_settings_get_int(&p->height, st, "generate.height", err) ||
        lh_settings_get_int(&p->batch_size, st, "generate.batch_size", err) ||
        lh_settings_get_double(&p->strength, st, "generate.strength", err) ||
        lh_settings_get(&sched, st, "plugins.scheduler", err))
        return err->code;
    p->steps = (int32_t)steps;
    if (sched->origin != LH_ORIGIN_DEFAULT) p->scheduler = sched->text;
    p->settings = st;
    return LH_OK;
}

static void destroy(lh_server *s) {
    for (size_t i = 0; i < s->n_adapters; i++) lh_adapter_unload(s->adapters[i].a);
    lh_model_close(s->model);
    lh_safety_chain_destroy(s->safety);
    lh_registry_destroy(s->reg);
    if (s->be) lh_backend_destroy(s->be);
    free(s->per_key);
    free(s->schedulers_json);
    free(s->plugins_json);
    lh__access_log_close(s);
    pthread_mutex_destroy(&s->log_mu);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->limit_mu);
    pthread_mutex_destroy(&s->metrics.mu);
    pthread_cond_destroy(&s->work);
    pthread_cond_destroy(&s->idle);
    free(s);
}

/* libmicrohttpd's own messages go to the host log. */
static void mhd_log(void *cls, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
static void mhd_log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = 0;
    lh_log(LH_LOG_WARN, "libmicrohttpd", "%s", msg);
}

/* The listening socket, bound here so that a failure says why. */
static lh_status listen_on(int *fd_out, const struct sockaddr_in *sa, const char *host,
                           lh_error *err) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    if (fd < 0) return lh_error_set(err, LH_ERR_IO, "socket: %s", strerror(errno));
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (const struct sockaddr *)sa, sizeof *sa) || listen(fd, 128)) {
        int e = errno;
        close(fd);
        return lh_error_set(err, LH_ERR_IO, "cannot listen on %s:%d: %s", host,
                            (int)ntohs(sa->sin_port), strerror(e));
    }
    *fd_out = fd;
    return LH_OK;
}

lh_status lh_server_start(lh_server **out, const lh_server_opts *opts, lh_error *err) {
    *out = NULL;
    if (!opts->model || !*opts->model)
        return lh_error_set(err, LH_ERR_INVALID, "no model: give --model PATH or [model] path");
    if (opts->port < 0 || opts->port > 65535 || opts->http_threads < 1 ||
        opts->http_threads > 1024 || !opts->queue_size || opts->qps < 0 ||
        opts->qps_per_key < 0 || opts->max_pixels < 64 || opts->batch_max < 1 ||
        opts->batch_max > LH_PIPELINE_MAX_BATCH || !(opts->breaker_p95_ms >= 0) ||
        !(opts->breaker_window_s > 0))
        return lh_error_set(err, LH_ERR_INVALID,
                            "server options out of range (port, threads, queue_size, qps, "
                            "max_pixels, batch, breaker_p95_ms, breaker_window_s)");
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)opts->port);
    if (inet_pton(AF_INET, opts->host ? opts->host : "127.0.0.1", &sa.sin_addr) != 1)
        return lh_error_set(err, LH_ERR_INVALID, "server.host: '%s' is not an IPv4 address",
                            opts->host);
    lh_server *s = calloc(1, sizeof *s);
    if (!s) return lh_error_set(err, LH_ERR_NOMEM, "out of memory");
    s->o = *opts;
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->limit_mu, NULL);
    pthread_mutex_init(&s->log_mu, NULL);
    pthread_mutex_init(&s->metrics.mu, NULL);
    pthread_cond_init(&s->work, NULL);
    pthread_cond_init(&s->idle, NULL);
    lh__bucket_init(&s->global, opts->qps);
    s->breaker.threshold_s = opts->breaker_p95_ms / 1e3;
    s->breaker.window_s = opts->breaker_window_s;
    if (opts->n_api_keys && opts->qps_per_key > 0) {
        if (!(s->per_key = calloc(opts->n_api_keys, sizeof *s->per_key))) {
            destroy(s);
            return lh_error_set(err, LH_ERR_NOMEM, "out of memory");
        }
        for (size_t i = 0; i < opts->n_api_keys; i++)
            lh__bucket_init(&s->per_key[i], opts->qps_per_key);
    }
    for (size_t i = 0; i < opts->n_api_keys; i++)
        if (!opts->api_keys[i] || !*opts->api_keys[i]) {
            destroy(s);
            return lh_error_set(err, LH_ERR_INVALID, "server.api_keys: key %zu is empty", i + 1);
        }
    lh_status st = read_defaults(s, err);
    if (st == LH_OK) st = lh__access_log_open(s, err);
    int fd = -1; /* bound first: a port in use fails before the model loads */
    if (st == LH_OK) st = listen_on(&fd, &sa, opts->host, err);
    char msg[LH_ERROR_MAX] = "";
    if (st == LH_OK &&
        lh_backend_create(&s->be, opts->device, opts->compute_threads, msg, sizeof msg))
        st = lh_error_set(err, LH_ERR_BACKEND, "backend.device %s: %s",
                          opts->device ? opts->device : "cpu", msg);
    if (st == LH_OK) st = lh_registry_create(&s->reg, err);
    if (st == LH_OK)
        st = lh_registry_scan(s->reg, opts->plugin_dirs, opts->n_plugin_dirs, 1, 1, err);
    /* safety checkers are created (or start-up fails naming them) before the model loads */
    if (st == LH_OK && opts->settings)
        st = lh_safety_chain_create(&s->safety, s->reg, opts->settings, err);
    if (st == LH_OK) {
        struct stat sb;
        if (stat(opts->model, &sb) == 0 && S_ISREG(sb.st_mode)) {
            lh_model_opts mo = {0};
            st = lh_model_open_single_file(&s->model, s->be, opts->model, &mo, err);
        } else {
            st = lh_model_open(&s->model, s->be, opts->model, err);
        }
    }
    if (st == LH_OK)
        st = lh_model_set_weight_storage(s->model,
                                         opts->weight_storage ? opts->weight_storage : "auto", err);
    if (st == LH_OK) st = lh_model_set_dtype(s->model, opts->dtype ? opts->dtype : "auto", err);
    if (st == LH_OK)
        st = lh_model_set_vae_dtype(s->model, opts->vae_dtype ? opts->vae_dtype : "auto", err);
    if (st == LH_OK) st = build_lists(s, err);
    if (st == LH_OK) st = lh__worker_start(s, err);
    if (st != LH_OK) {
        if (fd >= 0) close(fd);
        lh__worker_stop(s);
        destroy(s);
        return st;
    }
    /* the pool only when it has more than one thread (libmicrohttpd warns otherwise) */
    struct MHD_OptionItem pool[] = {
        {opts->http_threads > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END,
         (intptr_t)opts->http_threads, NULL},
        {MHD_OPTION_END, 0, NULL}};
    s->daemon = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC | MHD_ALLOW_SUSPEND_RESUME |
            MHD_USE_ERROR_LOG,
        0, NULL, NULL, on_request, s, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
        MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd, MHD_OPTION_ARRAY, pool,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)opts->connection_timeout_s,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_END);
    if (!s->daemon) {
        close(fd);
        lh__worker_stop(s);
        destroy(s);
        return lh_error_set(err, LH_ERR_INTERNAL, "libmicrohttpd did not start (%s:%d)",
                            opts->host, opts->port);
    }
    struct sockaddr_in bound = {0};
    socklen_t blen = sizeof bound;
    s->port = getsockname(fd, (struct sockaddr *)&bound, &blen) ? opts->port
                                                                 : (int)ntohs(bound.sin_port);
    *out = s;
    return LH_OK;
}

int lh_server_port(const lh_server *s) { return s->port; }

/* Wait until no request is in flight, or the deadline. */
static void wait_idle(lh_server *s, const struct timespec *deadline) {
    pthread_mutex_lock(&s->mu);
    while (s->in_flight > 0)
        if (pthread_cond_timedwait(&s->idle, &s->mu, deadline) == ETIMEDOUT) break;
    pthread_mutex_unlock(&s->mu);
}

void lh_server_stop(lh_server *s) {
    if (!s) return;
    MHD_socket fd = MHD_quiesce_daemon(s->daemon); /* no new connections */
    if (fd != MHD_INVALID_SOCKET) close(fd);
    /* requests in flight finish (a stalled upload ends at the connection timeout) */
    unsigned limit = s->o.connection_timeout_s ? s->o.connection_timeout_s + 5 : 60;
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += (time_t)limit;
    wait_idle(s, &deadline);
    /* whatever is still queued runs and its connection is resumed, so no
     * suspended connection is left when the daemon stops */
    lh__worker_stop(s);
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 5;
    wait_idle(s, &deadline);
    MHD_stop_daemon(s->daemon);
    destroy(s);
}
