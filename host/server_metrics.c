/* The server's /metrics: requests by route and status, a latency histogram
 * per route, queue depth, requests in flight and adapters loaded, in the
 * Prometheus text format (version 0.0.4). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server_internal.h"

static const char *const ROUTES[LH__ROUTE_COUNT] = {
    "/healthz", "/generate", "/adapters", "/adapters/{name}",
    "/schedulers", "/plugins", "/metrics", "/", "/sdapi/v1/txt2img", "/sdapi/v1/img2img",
    "/sdapi/v1/samplers", "other"};
static const double BOUNDS[LH__N_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                             0.5,   1,    2.5,   5,    10,  30};

const char *lh__route_name(lh__route r) { return ROUTES[r]; }

void lh__metrics_observe(lh__metrics *m, lh__route r, int status, double seconds) {
    pthread_mutex_lock(&m->mu);
    for (int i = 0; i < LH__N_STATUS; i++) {
        if (m->route[r].status[i] == status || m->route[r].status[i] == 0) {
            m->route[r].status[i] = status;
            m->route[r].count[i]++;
            break;
        }
    }
    int b = 0;
    while (b < LH__N_BUCKETS && seconds > BOUNDS[b]) b++;
    m->route[r].hist[b]++;
    m->route[r].sum += seconds;
    m->route[r].n++;
    pthread_mutex_unlock(&m->mu);
}

typedef struct text {
    char *p;
    size_t len, cap;
    int failed;
} text;

static void put(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(text *t, const char *fmt, ...) {
    if (t->failed) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->p + t->len, t->cap - t->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->failed = 1;
            return;
        }
        if ((size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap * 2 + (size_t)n;
        char *p = realloc(t->p, cap);
        if (!p) {
            t->failed = 1;
            return;
        }
        t->p = p;
        t->cap = cap;
    }
}

char *lh__metrics_text(lh__metrics *m, const lh__gauges *g, size_t *len) {
    text t = {malloc(4096), 0, 4096, 0};
    if (!t.p) return NULL;
    t.p[0] = 0;
    pthread_mutex_lock(&m->mu);
    put(&t, "# HELP lorahost_http_requests_total HTTP requests answered, by route and status.\n"
            "# TYPE lorahost_http_requests_total counter\n");
    for (int r = 0; r < LH__ROUTE_COUNT; r++)
        for (int i = 0; i < LH__N_STATUS && m->route[r].status[i]; i++)
            put(&t, "lorahost_http_requests_total{route=\"%s\",status=\"%d\"} %llu\n", ROUTES[r],
                m->route[r].status[i], (unsigned long long)m->route[r].count[i]);
    put(&t, "# HELP lorahost_http_request_duration_seconds Time from a request's headers to "
            "its response, by route.\n"
            "# TYPE lorahost_http_request_duration_seconds histogram\n");
    for (int r = 0; r < LH__ROUTE_COUNT; r++) {
        if (!m->route[r].n) continue;
        uint64_t cum = 0;
        for (int b = 0; b <= LH__N_BUCKETS; b++) {
            cum += m->route[r].hist[b];
            if (b < LH__N_BUCKETS)
                put(&t, "lorahost_http_request_duration_seconds_bucket{route=\"%s\",le=\"%g\"} "
                        "%llu\n", ROUTES[r], BOUNDS[b], (unsigned long long)cum);
            else
                put(&t, "lorahost_http_request_duration_seconds_bucket{route=\"%s\",le=\"+Inf\"} "
                        "%llu\n", ROUTES[r], (unsigned long long)cum);
        }
        put(&t, "lorahost_http_request_duration_seconds_sum{route=\"%s\"} %.6f\n", ROUTES[r],
            m->route[r].sum);
        put(&t, "lorahost_http_request_duration_seconds_count{route=\"%s\"} %llu\n", ROUTES[r],
            (unsigned long long)m->route[r].n);
    }
    pthread_mutex_unlock(&m->mu);
    put(&t, "# HELP lorahost_queue_depth Jobs waiting for the model worker.\n"
            "# TYPE lorahost_queue_depth gauge\nlorahost_queue_depth %zu\n", g->depth);
    put(&t, "# HELP lorahost_in_flight_requests Requests being handled.\n"
            "# TYPE lorahost_in_flight_requests gauge\nlorahost_in_flight_requests %ld\n",
        g->in_flight);
    put(&t, "# HELP lorahost_adapters_loaded Adapters loaded on the model.\n"
            "# TYPE lorahost_adapters_loaded gauge\nlorahost_adapters_loaded %zu\n", g->adapters);
    put(&t, "# HELP lorahost_backend_busy_seconds_total Time the model worker spent running jobs.\n"
            "# TYPE lorahost_backend_busy_seconds_total counter\n"
            "lorahost_backend_busy_seconds_total %.6f\n", g->busy_s);
    put(&t, "# HELP lorahost_batches_total Pipeline runs that served more than one request.\n"
            "# TYPE lorahost_batches_total counter\nlorahost_batches_total %llu\n",
        (unsigned long long)g->batches);
    put(&t, "# HELP lorahost_batched_requests_total Requests served in those runs.\n"
            "# TYPE lorahost_batched_requests_total counter\nlorahost_batched_requests_total "
            "%llu\n", (unsigned long long)g->batched);
    put(&t, "# HELP lorahost_queue_wait_p95_seconds The circuit breaker's p95 of queue wait at its "
            "last check.\n# TYPE lorahost_queue_wait_p95_seconds gauge\n"
            "lorahost_queue_wait_p95_seconds %.6f\n", g->wait_p95_s);
    put(&t, "# HELP lorahost_breaker_open 1 while the circuit breaker refuses generations.\n"
            "# TYPE lorahost_breaker_open gauge\nlorahost_breaker_open %d\n", g->breaker_open);
    put(&t, "# HELP lorahost_breaker_opened_total Times the circuit breaker opened.\n"
            "# TYPE lorahost_breaker_opened_total counter\nlorahost_breaker_opened_total %llu\n",
        (unsigned long long)g->breaker_opened);
    if (t.failed) {
        free(t.p);
        return NULL;
    }
    *len = t.len;
    return t.p;
}
