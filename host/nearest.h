/* "Did you mean ...?": the closest of a set of valid names to a misspelled
 * one, by edit distance. */
#ifndef LH_HOST_NEAREST_H
#define LH_HOST_NEAREST_H

#include <stddef.h>

typedef struct lh_nearest {
    const char *name; /* closest candidate so far, or NULL */
    size_t dist;
} lh_nearest;

/* Keep cand if it is close to word (at most max(2, len/3) edits) and closer
 * than the best so far. Start with lh_nearest n = {0}. */
void lh_nearest_consider(lh_nearest *n, const char *word, const char *cand);

#endif
