/* The server's request limits: token buckets (global and per API key QPS,
 * answered with 429 + Retry-After) and the constant-time API key compare. */
#include <string.h>
#include <time.h>

#include "server_internal.h"

double lh__now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* A burst of one second's worth (at least one request). */
void lh__bucket_init(lh__bucket *b, double rate) {
    b->rate = rate;
    b->burst = rate < 1 ? 1 : rate;
    b->tokens = b->burst;
    b->last = lh__now();
}

double lh__bucket_wait(lh__bucket *b, double now) {
    if (b->rate <= 0) return 0;
    if (now > b->last) {
        b->tokens += (now - b->last) * b->rate;
        if (b->tokens > b->burst) b->tokens = b->burst;
        b->last = now;
    }
    return b->tokens >= 1 ? 0 : (1 - b->tokens) / b->rate;
}

void lh__bucket_take(lh__bucket *b) {
    if (b->rate > 0) b->tokens -= 1;
}

/* Every byte of the key is looked at whatever the given text is, and no
 * branch depends on the bytes: the time tells at most the key's length. */
int lh__key_equal(const char *given, size_t n_given, const char *key) {
    size_t n = strlen(key);
    volatile unsigned char diff = (unsigned char)(n != n_given);
    for (size_t i = 0; i < n; i++) {
        unsigned char g = i < n_given ? (unsigned char)given[i] : 0;
        diff |= (unsigned char)(g ^ (unsigned char)key[i]);
    }
    return diff == 0;
}
