/* `lorahost serve`: the generation server (host/server.c) from the
 * [server], [model], [backend], [plugins], [adapters] and [generate] keys
 * of --config FILE and --set overrides; runs until SIGTERM or SIGINT, then
 * finishes the requests in flight and exits 0. docs/server.md. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "lorahost/lorahost.h"
#include "server.h"

#define NAME "lorahost serve"
#define MAX_KEYS 1024

static void usage(FILE *out) {
    fprintf(out,
            "usage: lorahost serve [--config FILE.ini] [--set SECTION.KEY=VALUE]...\n"
            "                      [--model PATH] [--host ADDR] [--port N] [--quiet]\n"
            "\n"
            "  --model PATH   the model to serve                   [model] path\n"
            "  --host ADDR    IPv4 address to listen on            [server] host\n"
            "  --port N       TCP port; 0 picks a free one         [server] port\n"
            "  --quiet        no line per request on stderr\n"
            "Every [server] key is in docs/config.md; the API in docs/server.md.\n");
}

/* Keys from key_file: one per line, blanks trimmed, '#' lines and blank
 * lines skipped. Appends to keys (owned strings go to owned[]). */
static int read_key_file(const char *path, const char **keys, char **owned, size_t *n) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, NAME ": server.key_file %s: %s\n", path, strerror(errno));
        return -1;
    }
    char line[4096];
    int rc = 0;
    while (fgets(line, sizeof line, f)) {
        char *s = line, *e = line + strlen(line);
        while (*s == ' ' || *s == '\t') s++;
        while (e > s && (e[-1] == '\n' || e[-1] == '\r' || e[-1] == ' ' || e[-1] == '\t')) e--;
        *e = 0;
        if (!*s || *s == '#') continue;
        if (*n == MAX_KEYS) {
            fprintf(stderr, NAME ": server.key_file %s: more than %d keys\n", path, MAX_KEYS);
            rc = -1;
            break;
        }
        if (!(owned[*n] = strdup(s))) {
            fprintf(stderr, NAME ": out of memory\n");
            rc = -1;
            break;
        }
        keys[*n] = owned[*n];
        ++*n;
    }
    fclose(f);
    return rc;
}

static int get_settings(lh_server_opts *o, const lh_settings *st, const char **keys,
                        char **owned, size_t *n_keys) {
    lh_error err = {0};
    int64_t port, threads, compute, qps, qps_key, queue, body_mb, pixels, conn_to, queue_to,
        batch, keep_days;
    const char *device, *policy, *key_file;
    const char *const *list;
    size_t n_list;
    if (lh_settings_get_string(&o->model, st, "model.path", &err) != LH_OK ||
        lh_settings_get_string(&o->dtype, st, "model.dtype", &err) ||
        lh_settings_get_string(&o->vae_dtype, st, "model.vae_dtype", &err) ||
        lh_settings_get_string(&o->weight_storage, st, "model.weight_storage", &err) ||
        lh_settings_get_string(&device, st, "backend.device", &err) ||
        lh_settings_get_int(&compute, st, "backend.threads", &err) ||
        lh_settings_get_list(&o->plugin_dirs, &o->n_plugin_dirs, st, "plugins.dirs", &err) ||
        lh_settings_get_list(&o->adapter_dirs, &o->n_adapter_dirs, st, "adapters.dirs", &err) ||
        lh_settings_get_string(&policy, st, "adapters.policy", &err) ||
        lh_settings_get_string(&o->host, st, "server.host", &err) ||
        lh_settings_get_int(&port, st, "server.port", &err) ||
        lh_settings_get_int(&threads, st, "server.threads", &err) ||
        lh_settings_get_list(&list, &n_list, st, "server.api_keys", &err) ||
        lh_settings_get_string(&key_file, st, "server.key_file", &err) ||
        lh_settings_get_int(&qps, st, "server.qps", &err) ||
        lh_settings_get_int(&qps_key, st, "server.qps_per_key", &err) ||
        lh_settings_get_int(&queue, st, "server.queue", &err) ||
        lh_settings_get_int(&body_mb, st, "server.body_limit_mb", &err) ||
        lh_settings_get_int(&pixels, st, "server.max_pixels", &err) ||
        lh_settings_get_int(&conn_to, st, "server.connection_timeout_s", &err) ||
        lh_settings_get_int(&queue_to, st, "server.queue_timeout_s", &err) ||
        lh_settings_get_int(&batch, st, "server.batch", &err) ||
        lh_settings_get_double(&o->breaker_p95_ms, st, "server.breaker_p95_ms", &err) ||
        lh_settings_get_double(&o->breaker_window_s, st, "server.breaker_window_s", &err) ||
        lh_settings_get_string(&o->log_dir, st, "server.log_dir", &err) ||
        lh_settings_get_int(&keep_days, st, "server.log_keep_days", &err)) {
        fprintf(stderr, NAME ": %s\n", err.msg);
        return 1;
    }
    o->device = device;
    o->port = (int)port;
    o->http_threads = (int)threads;
    o->compute_threads = (int)compute;
    o->adapter_strict = !strcmp(policy, "strict");
    o->qps = (double)qps;
    o->qps_per_key = (double)qps_key;
    o->queue_size = (size_t)queue;
    o->max_body_bytes = (size_t)body_mb << 20;
    o->max_pixels = pixels;
    o->connection_timeout_s = (unsigned)conn_to;
    o->queue_timeout_s = (unsigned)queue_to;
    o->batch_max = (size_t)batch;
    o->log_keep_days = (unsigned)keep_days;
    if (!*o->log_dir) o->log_dir = NULL;
    o->settings = st;
    for (size_t i = 0; i < n_list && *n_keys < MAX_KEYS; i++) keys[(*n_keys)++] = list[i];
    if (*key_file && read_key_file(key_file, keys, owned, n_keys)) return 1;
    o->api_keys = keys;
    o->n_api_keys = *n_keys;
    return 0;
}

static int serve(lh_settings *st, int argc, char **argv) {
    lh_server_opts o;
    lh_server_opts_init(&o);
    o.log_requests = 1;
    static const char *keys[MAX_KEYS];
    char **owned = calloc(MAX_KEYS, sizeof *owned);
    size_t n_keys = 0;
    if (!owned) {
        fprintf(stderr, NAME ": out of memory\n");
        return 1;
    }
    int rc = get_settings(&o, st, keys, owned, &n_keys);
    for (int i = 1; !rc && i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            rc = -1;
        } else if (!strcmp(a, "--quiet")) {
            o.log_requests = 0;
        } else if (v && !strcmp(a, "--model")) {
            o.model = v;
            i++;
        } else if (v && !strcmp(a, "--host")) {
            o.host = v;
            i++;
        } else if (v && !strcmp(a, "--port")) {
            char *end;
            long p = strtol(v, &end, 10);
            if (*end || end == v || p < 0 || p > 65535) {
                fprintf(stderr, NAME ": --port: expected 0..65535, got '%s'\n", v);
                rc = 2;
            }
            o.port = (int)p;
            i++;
        } else {
            fprintf(stderr, NAME ": unknown or incomplete option '%s'\n", a);
            usage(stderr);
            rc = 2;
        }
    }
    if (!rc && (!o.model || !*o.model)) {
        fprintf(stderr, NAME ": no model: give --model PATH (or [model] path in --config)\n");
        rc = 2;
    }
    /* SIGTERM and SIGINT go to sigwait below, not to any server thread */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    lh_server *srv = NULL;
    if (!rc && pthread_sigmask(SIG_BLOCK, &set, NULL)) {
        fprintf(stderr, NAME ": cannot block signals\n");
        rc = 1;
    }
    if (!rc) {
        lh_error err = {0};
        if (lh_server_start(&srv, &o, &err) != LH_OK) {
            fprintf(stderr, NAME ": %s\n", err.msg);
            rc = 1;
        }
    }
    if (!rc) {
        printf(NAME ": listening on http://%s:%d (model %s, %zu API key%s)\n", o.host,
               lh_server_port(srv), o.model, n_keys, n_keys == 1 ? "" : "s");
        fflush(stdout);
        int sig = 0;
        sigwait(&set, &sig);
        fprintf(stderr, NAME ": %s: finishing the requests in flight\n",
                sig == SIGINT ? "SIGINT" : "SIGTERM");
        lh_server_stop(srv);
        fprintf(stderr, NAME ": stopped\n");
    }
    for (size_t i = 0; i < MAX_KEYS; i++) free(owned[i]);
    free(owned);
    return rc < 0 ? 0 : rc;
}

int lh_cmd_serve(int argc, char **argv) {
    lh_error err = {0};
    lh_settings *st = NULL;
    if (lh_settings_create(&st, &err) != LH_OK) {
        fprintf(stderr, NAME ": %s\n", err.msg);
        return 1;
    }
    lh_status s = lh_settings_apply_args(st, &argc, argv, &err);
    if (s != LH_OK) {
        fprintf(stderr, NAME ": %s\n", err.msg);
        lh_settings_destroy(st);
        return s == LH_ERR_INVALID ? 2 : 1;
    }
    int rc = serve(st, argc, argv);
    lh_settings_destroy(st);
    return rc;
}
