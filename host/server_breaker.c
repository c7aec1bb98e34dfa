/* The server's circuit breaker on queue wait: 503 for new generations
 * while the rolling 95th percentile of the time jobs wait for the model is
 * above server.breaker_p95_ms. Its samples are the waits of the jobs
 * started within server.breaker_window_s and the waits so far of the jobs
 * still queued, so it opens as soon as the queue backs up and closes by
 * itself once the queue has drained and the slow samples have aged out. */
#include <stdlib.h>

#include "log.h"
#include "server_internal.h"

void lh__breaker_sample(lh__breaker *b, double wait, double now) {
    b->at[b->next] = now;
    b->wait[b->next] = wait;
    b->next = (b->next + 1) % LH__BREAKER_SAMPLES;
    if (b->n < LH__BREAKER_SAMPLES) b->n++;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int lh__breaker_check(lh__breaker *b, const double *queued, size_t n_queued, double now) {
    if (b->threshold_s <= 0) return 0;
    double v[LH__BREAKER_SAMPLES + 256];
    size_t n = 0;
    for (size_t i = 0; i < b->n; i++)
        if (now - b->at[i] <= b->window_s) v[n++] = b->wait[i];
    for (size_t i = 0; i < n_queued && n < sizeof v / sizeof v[0]; i++) v[n++] = queued[i];
    double p95 = 0;
    if (n) {
        qsort(v, n, sizeof v[0], cmp_double);
        /* nearest rank: the smallest value with at least 95% of them at or below it */
        size_t k = (size_t)((95 * n + 99) / 100);
        p95 = v[k ? k - 1 : 0];
    }
    b->p95 = p95;
    int open = p95 > b->threshold_s;
    if (open != b->open) {
        if (open) b->opened++;
        lh_log(open ? LH_LOG_WARN : LH_LOG_INFO, "serve",
               "circuit breaker %s: p95 queue wait %.0f ms (threshold %.0f ms, %zu samples)",
               open ? "open" : "closed", p95 * 1e3, b->threshold_s * 1e3, n);
    }
    b->open = open;
    return open;
}
