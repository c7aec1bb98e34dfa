/* Suggestions for misspelled names: Levenshtein distance over short names. */
#include "nearest.h"

#include <stdint.h>
#include <string.h>

#define NAME_MAX_LEN 64

/* Levenshtein distance; SIZE_MAX for names too long to be worth it. */
static size_t edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b), row[NAME_MAX_LEN + 1];
    if (la > NAME_MAX_LEN || lb > NAME_MAX_LEN) return SIZE_MAX;
    for (size_t j = 0; j <= lb; j++) row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j], best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

void lh_nearest_consider(lh_nearest *n, const char *word, const char *cand) {
    size_t d = edit_distance(word, cand), limit = strlen(cand) / 3;
    if (limit < 2) limit = 2;
    if (d <= limit && (!n->name || d < n->dist)) {
        n->name = cand;
        n->dist = d;
    }
}
