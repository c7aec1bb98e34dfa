/* CLIP BPE tokenizer: loads vocab.json/merges.txt, encodes text exactly as
 * transformers' CLIPTokenizer (tokenizers backend) and packs ids into SD's
 * 77-token windows. The pipeline and file rules are described in tokenizer.h. */
#include "tokenizer.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BOS_TEXT "<|startoftext|>"
#define EOS_TEXT "<|endoftext|>"
#define EOW "</w>"
#define EOW_LEN 4

#define CACHE_KEY_MAX 256 /* tokenizers caches words shorter than this (bytes) */
#define CACHE_ENTRIES 8192
#define CACHE_SLOTS (2 * CACHE_ENTRIES)
#define CACHE_KEY_BYTES (CACHE_ENTRIES * 24)
#define CACHE_IDS (CACHE_ENTRIES * 8)

/* lh_error_set, but control characters (from tokens in the files) become '?',
 * so every message is one line. */
__attribute__((format(printf, 3, 4))) static lh_status fail(lh_error *err, lh_status code,
                                                            const char *fmt, ...) {
    if (!err) return code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    for (char *p = err->msg; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f) *p = '?';
    err->code = code;
    return code;
}

/* ---- Hashing and tables ---- */

static uint64_t hash_bytes(const void *p, size_t n) {
    const uint8_t *b = p;
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a, then a final mix */
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

static uint64_t hash_u64(uint64_t x) { /* splitmix64 finalizer */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static size_t pow2_at_least(size_t n) {
    size_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

/* u64 -> u64 map, open addressing; UINT64_MAX is never a key. */
typedef struct u64map {
    uint64_t *keys, *vals;
    size_t mask;
} u64map;

static int u64map_init(u64map *m, size_t n) {
    size_t cap = pow2_at_least(2 * n + 1);
    m->keys = malloc(cap * sizeof *m->keys);
    m->vals = malloc(cap * sizeof *m->vals);
    if (!m->keys || !m->vals) return -1;
    memset(m->keys, 0xff, cap * sizeof *m->keys);
    m->mask = cap - 1;
    return 0;
}

static void u64map_free(u64map *m) {
    free(m->keys);
    free(m->vals);
}

/* Slot of key: holds it or is the empty slot where it goes. */
static size_t u64map_slot(const u64map *m, uint64_t key) {
    size_t i = hash_u64(key) & m->mask;
    while (m->keys[i] != UINT64_MAX && m->keys[i] != key) i = (i + 1) & m->mask;
    return i;
}

static int u64map_get(const u64map *m, uint64_t key, uint64_t *val) {
    size_t i = u64map_slot(m, key);
    if (m->keys[i] == UINT64_MAX) return 0;
    *val = m->vals[i];
    return 1;
}

/* ---- The tokenizer ---- */

typedef struct vtoken {
    uint32_t off, len; /* text in lh_tokenizer.blob */
    int32_t id;
} vtoken;

typedef struct special {
    char *text;
    size_t len;
    uint32_t *cps; /* normalized form (normalized specials only) */
    size_t ncps;
    int32_t id;
    int normalized;
} special;

typedef struct cache_entry {
    uint64_t hash;
    uint32_t key_off, key_len, ids_off, ids_n;
} cache_entry;

typedef struct bpe_cache {
    pthread_mutex_t mu;
    uint32_t *slots; /* entry index + 1, 0 = empty */
    cache_entry *ent;
    size_t n_ent;
    uint8_t *keys;
    size_t keys_n;
    int32_t *ids;
    size_t ids_n;
} bpe_cache;

struct lh_tokenizer {
    char *blob; /* all token texts, NUL-terminated */
    vtoken *tokens;
    size_t n_tokens;
    uint32_t *str_slots; /* token index + 1, 0 = empty */
    size_t str_mask;
    u64map by_id;  /* id -> token index */
    u64map merges; /* (a << 32 | b) -> (rank << 32 | merged id) */
    int32_t byte_id[256], byte_eow_id[256];
    uint8_t byte_char[256][3]; /* bytes_to_unicode as UTF-8 */
    uint8_t byte_char_len[256];
    int32_t bos_id, eos_id, unk_id, comma_id;
    special *specials;
    size_t n_specials;
    bpe_cache cache;
};

static int32_t str_find(const lh_tokenizer *t, const char *s, size_t n) {
    size_t i = hash_bytes(s, n) & t->str_mask;
    for (;;) {
        uint32_t k = t->str_slots[i];
        if (!k) return -1;
        const vtoken *tk = &t->tokens[k - 1];
        if (tk->len == n && memcmp(t->blob + tk->off, s, n) == 0) return tk->id;
        i = (i + 1) & t->str_mask;
    }
}

/* ---- Small growable arrays ---- */

typedef struct u32vec {
    uint32_t *v;
    size_t n, cap;
} u32vec;

typedef struct bytevec {
    uint8_t *v;
    size_t n, cap;
} bytevec;

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 64, bytes;
    while (c < need) {
        if (lh_mul_size(c, 2, &c)) return -1;
    }
    if (lh_mul_size(c, elem, &bytes)) return -1;
    void *q = realloc(*p, bytes);
    if (!q) return -1;
    *p = q;
    *cap = c;
    return 0;
}

static int u32_push(u32vec *a, uint32_t x) {
    if (a->n == a->cap && grow((void **)&a->v, &a->cap, a->n + 1, sizeof *a->v)) return -1;
    a->v[a->n++] = x;
    return 0;
}

static int bytes_push(bytevec *a, const void *p, size_t n) {
    size_t need;
    if (lh_add_size(a->n, n, &need) || grow((void **)&a->v, &a->cap, need, 1)) return -1;
    memcpy(a->v + a->n, p, n);
    a->n += n;
    return 0;
}

/* ---- UTF-8 ---- */

/* Length of the valid UTF-8 sequence at s[0..n), or 0 if invalid. */
static size_t utf8_seq(const uint8_t *s, size_t n) {
    uint8_t c = s[0];
    if (c < 0x80) return 1;
    size_t len;
    uint8_t lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf)
        len = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        if (c == 0xe0) lo = 0xa0;
        if (c == 0xed) hi = 0x9f; /* no surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        if (c == 0xf0) lo = 0x90;
        if (c == 0xf4) hi = 0x8f;
    } else
        return 0;
    if (n < len || s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if ((s[i] & 0xc0) != 0x80) return 0;
    return len;
}

static uint32_t utf8_decode(const uint8_t *s, size_t len) {
    if (len == 1) return s[0];
    uint32_t c = s[0] & (0xff >> (len + 1));
    for (size_t i = 1; i < len; i++) c = (c << 6) | (s[i] & 0x3f);
    return c;
}

static size_t utf8_encode(uint32_t c, uint8_t *out) {
    if (c < 0x80) {
        out[0] = (uint8_t)c;
        return 1;
    }
    if (c < 0x800) {
        out[0] = (uint8_t)(0xc0 | (c >> 6));
        out[1] = (uint8_t)(0x80 | (c & 0x3f));
        return 2;
    }
    if (c < 0x10000) {
        out[0] = (uint8_t)(0xe0 | (c >> 12));
        out[1] = (uint8_t)(0x80 | ((c >> 6) & 0x3f));
        out[2] = (uint8_t)(0x80 | (c & 0x3f));
        return 3;
    }
    out[0] = (uint8_t)(0xf0 | (c >> 18));
    out[1] = (uint8_t)(0x80 | ((c >> 12) & 0x3f));
    out[2] = (uint8_t)(0x80 | ((c >> 6) & 0x3f));
    out[3] = (uint8_t)(0x80 | (c & 0x3f));
    return 4;
}

/* Offset of the first invalid byte, or SIZE_MAX if s[0..n) is valid. */
static size_t utf8_check(const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n;) {
        size_t l = utf8_seq(s + i, n - i);
        if (!l) return i;
        i += l;
    }
    return SIZE_MAX;
}

/* ---- Unicode lookups (tables in unicode_tables.c) ---- */

static const lh__uni_range *range_find(const lh__uni_range *r, size_t n, uint32_t c) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c < r[mid].first)
            hi = mid;
        else if (c > r[mid].last)
            lo = mid + 1;
        else
            return &r[mid];
    }
    return NULL;
}

static int uni_class(uint32_t c) {
    if (c < 0x80) {
        if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return LH__UNI_L;
        if (c >= '0' && c <= '9') return LH__UNI_N;
        if (c == ' ' || (c >= 0x09 && c <= 0x0d)) return LH__UNI_S;
        return LH__UNI_OTHER;
    }
    const lh__uni_range *r = range_find(lh__uni_classes, lh__uni_classes_n, c);
    return r ? (int)r->value : LH__UNI_OTHER;
}

static uint32_t uni_ccc(uint32_t c) {
    if (c < lh__uni_nfc_quick_below) return 0;
    const lh__uni_range *r = range_find(lh__uni_ccc, lh__uni_ccc_n, c);
    return r ? r->value : 0;
}

/* Lowercase of c into out (1 to 3 code points); returns the count. */
static size_t uni_lower(uint32_t c, uint32_t out[3]) {
    out[0] = c;
    if (c < 0x80) {
        if (c >= 'A' && c <= 'Z') out[0] = c + 32;
        return 1;
    }
    size_t lo = 0, hi = lh__uni_lower_n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const lh__uni_lower_run *r = &lh__uni_lower[mid];
        if (c < r->first)
            hi = mid;
        else if (c > r->last)
            lo = mid + 1;
        else {
            if ((c - r->first) % (uint32_t)r->stride == 0)
                out[0] = (uint32_t)((int64_t)c + r->delta);
            return 1;
        }
    }
    for (size_t i = 0; i < lh__uni_lower_multi_n; i++) {
        if (lh__uni_lower_multi_tab[i].cp != c) continue;
        size_t k = 0;
        while (k < 3 && lh__uni_lower_multi_tab[i].to[k]) {
            out[k] = lh__uni_lower_multi_tab[i].to[k];
            k++;
        }
        return k;
    }
    return 1;
}

enum { S_BASE = 0xac00, L_BASE = 0x1100, V_BASE = 0x1161, T_BASE = 0x11a7 };
enum { L_COUNT = 19, V_COUNT = 21, T_COUNT = 28, N_COUNT = 588, S_COUNT = 11172 };

static int uni_decompose(uint32_t c, u32vec *out) {
    if (c >= S_BASE && c < S_BASE + S_COUNT) {
        uint32_t s = c - S_BASE;
        if (u32_push(out, L_BASE + s / N_COUNT) || u32_push(out, V_BASE + (s % N_COUNT) / T_COUNT))
            return -1;
        return s % T_COUNT ? u32_push(out, T_BASE + s % T_COUNT) : 0;
    }
    if (c >= lh__uni_decomp[0].cp) {
        size_t lo = 0, hi = lh__uni_decomp_n;
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            const lh__uni_decomp_entry *e = &lh__uni_decomp[mid];
            if (c < e->cp)
                hi = mid;
            else if (c > e->cp)
                lo = mid + 1;
            else {
                for (size_t k = 0; k < e->len; k++)
                    if (u32_push(out, lh__uni_decomp_data[e->off + k])) return -1;
                return 0;
            }
        }
    }
    return u32_push(out, c);
}

/* Primary composite of a + b, or 0. */
static uint32_t uni_compose(uint32_t a, uint32_t b) {
    if (a >= L_BASE && a < L_BASE + L_COUNT && b >= V_BASE && b < V_BASE + V_COUNT)
        return S_BASE + ((a - L_BASE) * V_COUNT + (b - V_BASE)) * T_COUNT;
    if (a >= S_BASE && a < S_BASE + S_COUNT && (a - S_BASE) % T_COUNT == 0 && b > T_BASE &&
        b < T_BASE + T_COUNT)
        return a + (b - T_BASE);
    if (b < lh__uni_nfc_quick_below) return 0;
    size_t lo = 0, hi = lh__uni_comp_n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const lh__uni_comp_entry *e = &lh__uni_comp[mid];
        if (a < e->first || (a == e->first && b < e->second))
            hi = mid;
        else if (a > e->first || b > e->second)
            lo = mid + 1;
        else
            return e->composite;
    }
    return 0;
}

/* ---- Normalization: NFC then lowercase ---- */

typedef struct symbol {
    int32_t c, prev, next; /* token id, neighbours (-1: none) */
    uint32_t len;          /* bytes covered; 0 once merged into its left neighbour */
} symbol;

/* Per-call working memory, so a tokenizer can be shared between threads. */
typedef struct scratch {
    u32vec a, b, norm, sortbuf;
    bytevec piece;
    symbol *sym;
    size_t sym_cap;
    struct heap_item *heap;
    size_t heap_cap;
    int32_t *ids; /* output: ids[0..cap), n counts all */
    size_t cap, n;
} scratch;

/* Stable sort of a run of combining marks by combining class. */
static int sort_marks(scratch *s, uint32_t *v, size_t n) {
    if (n <= 32) {
        for (size_t i = 1; i < n; i++) {
            uint32_t x = v[i], cx = uni_ccc(x);
            size_t j = i;
            while (j > 0 && uni_ccc(v[j - 1]) > cx) {
                v[j] = v[j - 1];
                j--;
            }
            v[j] = x;
        }
        return 0;
    }
    size_t count[257] = {0};
    s->sortbuf.n = 0;
    if (grow((void **)&s->sortbuf.v, &s->sortbuf.cap, n, sizeof(uint32_t))) return -1;
    for (size_t i = 0; i < n; i++) count[uni_ccc(v[i]) + 1]++;
    for (size_t k = 1; k < 257; k++) count[k] += count[k - 1];
    for (size_t i = 0; i < n; i++) s->sortbuf.v[count[uni_ccc(v[i])]++] = v[i];
    memcpy(v, s->sortbuf.v, n * sizeof *v);
    return 0;
}

/* out = lowercase(NFC(in)). Whitespace is left as it is: CLIPTokenizer turns
 * runs of \s into one space, but the pre-tokenizer drops \s anyway. */
static int normalize(scratch *s, const uint32_t *in, size_t n, u32vec *out) {
    int quick = 1; /* already NFC: nothing at or above lh__uni_nfc_quick_below */
    for (size_t i = 0; i < n && quick; i++) quick = in[i] < lh__uni_nfc_quick_below;
    const uint32_t *src = in;
    size_t len = n;
    if (!quick) {
        u32vec *d = &s->b;
        d->n = 0;
        for (size_t i = 0; i < n; i++)
            if (uni_decompose(in[i], d)) return -1;
        for (size_t i = 0; i < d->n;) { /* canonical ordering */
            if (!uni_ccc(d->v[i])) {
                i++;
                continue;
            }
            size_t j = i;
            while (j < d->n && uni_ccc(d->v[j])) j++;
            if (j - i > 1 && sort_marks(s, d->v + i, j - i)) return -1;
            i = j;
        }
        /* canonical composition (UAX #15): a character joins the last starter
         * unless a character in between has class 0 or >= its own */
        size_t w = 0, starter = 0;
        int have_starter = 0;
        uint32_t last = 0;
        for (size_t i = 0; i < d->n; i++) {
            uint32_t c = d->v[i], cc = uni_ccc(c);
            if (have_starter && (last < cc || last == 0)) {
                uint32_t comp = uni_compose(d->v[starter], c);
                if (comp) {
                    d->v[starter] = comp;
                    continue;
                }
            }
            if (cc == 0) {
                starter = w;
                have_starter = 1;
            }
            last = cc;
            d->v[w++] = c;
        }
        src = d->v;
        len = w;
    }
    out->n = 0;
    for (size_t i = 0; i < len; i++) {
        uint32_t l[3];
        size_t k = uni_lower(src[i], l);
        for (size_t j = 0; j < k; j++)
            if (u32_push(out, l[j])) return -1;
    }
    return 0;
}

/* ---- BPE ---- */

typedef struct heap_item {
    uint32_t rank, pos;
    int32_t new_id;
} heap_item;

static int heap_less(const heap_item *x, const heap_item *y) {
    return x->rank < y->rank || (x->rank == y->rank && x->pos < y->pos);
}

static void heap_push(heap_item *h, size_t *n, heap_item it) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(&it, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = it;
}

static heap_item heap_pop(heap_item *h, size_t *n) {
    heap_item top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && heap_less(&h[c + 1], &h[c])) c++;
        if (!heap_less(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = last;
    return top;
}

static void emit(scratch *s, int32_t id) {
    if (s->n < s->cap) s->ids[s->n] = id;
    s->n++;
}

static int merge_get(const lh_tokenizer *t, int32_t a, int32_t b, uint32_t *rank, int32_t *id) {
    uint64_t v;
    if (!u64map_get(&t->merges, ((uint64_t)(uint32_t)a << 32) | (uint32_t)b, &v)) return 0;
    *rank = (uint32_t)(v >> 32);
    *id = (int32_t)(uint32_t)v;
    return 1;
}

static int cache_get(const lh_tokenizer *t, const uint8_t *key, size_t n, uint64_t h, scratch *s) {
    bpe_cache *c = (bpe_cache *)&t->cache;
    int hit = 0;
    pthread_mutex_lock(&c->mu);
    for (size_t i = h & (CACHE_SLOTS - 1);; i = (i + 1) & (CACHE_SLOTS - 1)) {
        uint32_t k = c->slots[i];
        if (!k) break;
        const cache_entry *e = &c->ent[k - 1];
        if (e->hash == h && e->key_len == n && memcmp(c->keys + e->key_off, key, n) == 0) {
            for (uint32_t j = 0; j < e->ids_n; j++) emit(s, c->ids[e->ids_off + j]);
            hit = 1;
            break;
        }
    }
    pthread_mutex_unlock(&c->mu);
    return hit;
}

static void cache_put(const lh_tokenizer *t, const uint8_t *key, size_t n, uint64_t h,
                      const int32_t *ids, size_t n_ids) {
    bpe_cache *c = (bpe_cache *)&t->cache;
    pthread_mutex_lock(&c->mu);
    if (c->n_ent == CACHE_ENTRIES || c->keys_n + n > CACHE_KEY_BYTES ||
        c->ids_n + n_ids > CACHE_IDS) {
        memset(c->slots, 0, CACHE_SLOTS * sizeof *c->slots); /* full: start over */
        c->n_ent = c->keys_n = c->ids_n = 0;
    }
    size_t i = h & (CACHE_SLOTS - 1);
    for (;; i = (i + 1) & (CACHE_SLOTS - 1)) {
        uint32_t k = c->slots[i];
        if (!k) break;
        const cache_entry *e = &c->ent[k - 1];
        if (e->hash == h && e->key_len == n && memcmp(c->keys + e->key_off, key, n) == 0) {
            pthread_mutex_unlock(&c->mu); /* another thread got there first */
            return;
        }
    }
    cache_entry *e = &c->ent[c->n_ent];
    e->hash = h;
    e->key_off = (uint32_t)c->keys_n;
    e->key_len = (uint32_t)n;
    e->ids_off = (uint32_t)c->ids_n;
    e->ids_n = (uint32_t)n_ids;
    memcpy(c->keys + c->keys_n, key, n);
    memcpy(c->ids + c->ids_n, ids, n_ids * sizeof *ids);
    c->keys_n += n;
    c->ids_n += n_ids;
    c->slots[i] = (uint32_t)++c->n_ent;
    pthread_mutex_unlock(&c->mu);
}

/* BPE of one pre-token (bytes p[0..n)), as tokenizers' Word::merge_all: a
 * min-heap of (rank, position), stale entries skipped. */
static int bpe_word(const lh_tokenizer *t, scratch *s, const uint8_t *p, size_t n) {
    uint64_t h = 0;
    int cacheable = n < CACHE_KEY_MAX;
    if (cacheable) {
        h = hash_bytes(p, n);
        if (cache_get(t, p, n, h, s)) return 0;
    }
    size_t heap_need;
    if (lh_mul_size(n, 3, &heap_need) ||
        grow((void **)&s->heap, &s->heap_cap, heap_need, sizeof *s->heap))
        return -1;
    if (grow((void **)&s->sym, &s->sym_cap, n, sizeof *s->sym)) return -1;
    symbol *y = s->sym;
    for (size_t k = 0; k < n; k++) {
        int32_t id = (k + 1 == n ? t->byte_eow_id : t->byte_id)[p[k]];
        y[k].c = id >= 0 ? id : t->unk_id; /* fuse_unk=False: one unk per byte */
        y[k].prev = (int32_t)k - 1;
        y[k].next = k + 1 < n ? (int32_t)k + 1 : -1;
        y[k].len = 1;
    }
    heap_item *heap = s->heap;
    size_t hn = 0;
    for (size_t k = 0; k + 1 < n; k++) {
        heap_item it = {0, (uint32_t)k, 0};
        if (merge_get(t, y[k].c, y[k + 1].c, &it.rank, &it.new_id)) heap_push(heap, &hn, it);
    }
    while (hn) {
        heap_item top = heap_pop(heap, &hn);
        symbol *cur = &y[top.pos];
        if (cur->len == 0 || cur->next == -1) continue;
        symbol *right = &y[cur->next];
        uint32_t rank;
        int32_t id;
        if (!merge_get(t, cur->c, right->c, &rank, &id) || id != top.new_id) continue; /* stale */
        cur->c = top.new_id;
        cur->len += right->len;
        cur->next = right->next;
        right->len = 0;
        if (cur->next >= 0) y[cur->next].prev = (int32_t)top.pos;
        heap_item it = {0, 0, 0};
        if (cur->prev >= 0 && merge_get(t, y[cur->prev].c, cur->c, &it.rank, &it.new_id)) {
            it.pos = (uint32_t)cur->prev;
            heap_push(heap, &hn, it);
        }
        if (cur->next >= 0 && merge_get(t, cur->c, y[cur->next].c, &it.rank, &it.new_id)) {
            it.pos = top.pos;
            heap_push(heap, &hn, it);
        }
    }
    size_t w = 0;
    for (size_t k = 0; k < n; k++) {
        if (!y[k].len) continue;
        emit(s, y[k].c);
        y[w++].c = y[k].c; /* compact, for the cache */
    }
    if (cacheable) {
        int32_t *ids = (int32_t *)s->heap; /* free now; holds >= n ids */
        for (size_t k = 0; k < w; k++) ids[k] = y[k].c;
        cache_put(t, p, n, h, ids, w);
    }
    return 0;
}

/* ---- Pre-tokenization ---- */

static int cps_equal(const uint32_t *a, const char *ascii, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (a[i] != (uint8_t)ascii[i]) return 0;
    return 1;
}

/* Length of a contraction 's 't 're 've 'm 'll 'd at v[0..n), or 0. */
static size_t contraction(const uint32_t *v, size_t n) {
    if (n < 2 || v[0] != '\'') return 0;
    uint32_t a = v[1];
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if (n >= 3) {
        uint32_t b = v[2];
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    }
    return 0;
}

/* End of the run of class cls starting at v[i]. */
static size_t run_end(const uint32_t *v, size_t i, size_t n, int cls) {
    while (i < n && uni_class(v[i]) == cls) i++;
    return i;
}

static int bpe_cps(const lh_tokenizer *t, scratch *s, const uint32_t *v, size_t n) {
    s->piece.n = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t b[4];
        if (bytes_push(&s->piece, b, utf8_encode(v[i], b))) return -1;
    }
    return bpe_word(t, s, s->piece.v, s->piece.n);
}

/* ByteLevel's GPT-2 pattern 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+|
 * ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ over one CLIP piece (which holds no \s). */
static int gpt2_split(const lh_tokenizer *t, scratch *s, const uint32_t *v, size_t n) {
    for (size_t i = 0; i < n;) {
        size_t e = i + contraction(v + i, n - i);
        if (e == i) e = run_end(v, i, n, uni_class(v[i]));
        if (bpe_cps(t, s, v + i, e - i)) return -1;
        i = e;
    }
    return 0;
}

/* CLIP's pattern <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|
 * [\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+ over normalized text; \s is dropped. */
static int clip_split(const lh_tokenizer *t, scratch *s, const uint32_t *v, size_t n) {
    static const char *lit[2] = {BOS_TEXT, EOS_TEXT};
    for (size_t i = 0; i < n;) {
        size_t e = i;
        for (int k = 0; k < 2 && e == i; k++) {
            size_t l = strlen(lit[k]);
            if (n - i >= l && cps_equal(v + i, lit[k], l)) e = i + l;
        }
        if (e == i) e = i + contraction(v + i, n - i);
        if (e == i) {
            int cls = uni_class(v[i]);
            if (cls == LH__UNI_S) {
                i++;
                continue;
            }
            e = cls == LH__UNI_N ? i + 1 : run_end(v, i, n, cls);
        }
        if (gpt2_split(t, s, v + i, e - i)) return -1;
        i = e;
    }
    return 0;
}

/* ---- Encoding ---- */

/* Longest raw-text special token at p[0..n), or NULL. */
static const special *special_at_bytes(const lh_tokenizer *t, const uint8_t *p, size_t n) {
    const special *best = NULL;
    for (size_t k = 0; k < t->n_specials; k++) {
        const special *sp = &t->specials[k];
        if (sp->normalized || sp->len > n || (best && sp->len <= best->len)) continue;
        if (memcmp(p, sp->text, sp->len) == 0) best = sp;
    }
    return best;
}

/* Longest normalized special token at v[0..n), or NULL. */
static const special *special_at_cps(const lh_tokenizer *t, const uint32_t *v, size_t n) {
    const special *best = NULL;
    for (size_t k = 0; k < t->n_specials; k++) {
        const special *sp = &t->specials[k];
        if (!sp->normalized || sp->ncps > n || (best && sp->ncps <= best->ncps)) continue;
        if (memcmp(v, sp->cps, sp->ncps * sizeof *v) == 0) best = sp;
    }
    return best;
}

static int has_normalized_specials(const lh_tokenizer *t) {
    for (size_t k = 0; k < t->n_specials; k++)
        if (t->specials[k].normalized) return 1;
    return 0;
}

/* A raw segment (valid UTF-8, no raw special token): normalize, split out
 * normalized special tokens, pre-tokenize and BPE the rest. */
static int encode_segment(const lh_tokenizer *t, scratch *s, const uint8_t *p, size_t n) {
    s->a.n = 0;
    for (size_t i = 0; i < n;) {
        size_t l = utf8_seq(p + i, n - i);
        if (u32_push(&s->a, utf8_decode(p + i, l))) return -1;
        i += l;
    }
    const u32vec *norm = &s->norm;
    if (normalize(s, s->a.v, s->a.n, &s->norm)) return -1;
    if (!has_normalized_specials(t)) return clip_split(t, s, norm->v, norm->n);
    size_t start = 0;
    for (size_t i = 0; i < norm->n;) {
        const special *sp = special_at_cps(t, norm->v + i, norm->n - i);
        if (!sp) {
            i++;
            continue;
        }
        if (clip_split(t, s, norm->v + start, i - start)) return -1;
        emit(s, sp->id);
        i += sp->ncps;
        start = i;
    }
    return clip_split(t, s, norm->v + start, norm->n - start);
}

static void scratch_free(scratch *s) {
    free(s->a.v);
    free(s->b.v);
    free(s->norm.v);
    free(s->sortbuf.v);
    free(s->piece.v);
    free(s->sym);
    free(s->heap);
}

lh_status lh_tokenizer_encode(const lh_tokenizer *t, const char *utf8, int32_t *ids, size_t cap,
                              size_t *n, lh_error *err) {
    if (!t || !utf8 || !n || (!ids && cap))
        return fail(err, LH_ERR_INVALID, "tokenizer encode: NULL argument");
    const uint8_t *p = (const uint8_t *)utf8;
    size_t len = strlen(utf8), bad = utf8_check(p, len);
    if (bad != SIZE_MAX)
        return fail(err, LH_ERR_INVALID,
                    "tokenizer encode: invalid UTF-8 at byte offset %zu (byte 0x%02x)", bad,
                    p[bad]);
    scratch s = {0};
    s.ids = ids;
    s.cap = cap;
    int rc = 0;
    size_t start = 0;
    for (size_t i = 0; i < len && !rc;) {
        const special *sp = special_at_bytes(t, p + i, len - i);
        if (!sp) {
            i++;
            continue;
        }
        if (i > start) rc = encode_segment(t, &s, p + start, i - start);
        emit(&s, sp->id);
        i += sp->len;
        start = i;
    }
    if (!rc && len > start) rc = encode_segment(t, &s, p + start, len - start);
    scratch_free(&s);
    if (rc) return fail(err, LH_ERR_NOMEM, "tokenizer encode: out of memory");
    *n = s.n;
    if (s.n > cap)
        return fail(err, LH_ERR_OVERFLOW, "tokenizer encode: %zu ids do not fit in a buffer of %zu",
                    s.n, cap);
    return LH_OK;
}

/* ---- Windows ---- */

static void put_window(const lh_tokenizer *t, int32_t *out, size_t cap, size_t k,
                       const int32_t *ids, size_t n, int32_t pad) {
    if (k >= cap) return;
    int32_t *w = out + k * LH_TOKENIZER_WINDOW;
    w[0] = t->bos_id;
    if (n) memcpy(w + 1, ids, n * sizeof *ids);
    w[1 + n] = t->eos_id;
    for (size_t i = n + 2; i < LH_TOKENIZER_WINDOW; i++) w[i] = pad;
}

lh_status lh_tokenizer_pack(const lh_tokenizer *t, const int32_t *ids, size_t n, int32_t pad_id,
                            int comma_backtrack, int32_t *out, size_t cap, size_t *n_windows,
                            lh_error *err) {
    if (!t || !n_windows || (!ids && n) || (!out && cap))
        return fail(err, LH_ERR_INVALID, "tokenizer pack: NULL argument");
    if (comma_backtrack < 0 && comma_backtrack != LH_TOKENIZER_TRUNCATE)
        return fail(err, LH_ERR_INVALID, "tokenizer pack: comma_backtrack %d < 0", comma_backtrack);
    size_t k = 0;
    if (comma_backtrack == LH_TOKENIZER_TRUNCATE) {
        put_window(t, out, cap, k++, ids, n < LH_TOKENIZER_CHUNK ? n : LH_TOKENIZER_CHUNK, pad_id);
    } else {
        /* A1111's tokenize_line, embeddings and emphasis aside */
        int32_t chunk[LH_TOKENIZER_CHUNK];
        size_t len = 0;
        long last_comma = -1;
        for (size_t i = 0; i < n; i++) {
            int32_t tok = ids[i];
            if (tok == t->comma_id) {
                last_comma = (long)len;
            } else if (comma_backtrack != 0 && len == LH_TOKENIZER_CHUNK && last_comma != -1 &&
                       (long)len - last_comma <= comma_backtrack) {
                size_t brk = (size_t)last_comma + 1;
                put_window(t, out, cap, k++, chunk, brk, pad_id);
                memmove(chunk, chunk + brk, (len - brk) * sizeof *chunk);
                len -= brk;
                last_comma = -1;
            }
            if (len == LH_TOKENIZER_CHUNK) {
                put_window(t, out, cap, k++, chunk, len, pad_id);
                len = 0;
                last_comma = -1;
            }
            chunk[len++] = tok;
        }
        if (len || k == 0) put_window(t, out, cap, k++, chunk, len, pad_id);
    }
    *n_windows = k;
    if (k > cap)
        return fail(err, LH_ERR_OVERFLOW,
                    "tokenizer pack: %zu windows do not fit in a buffer of %zu", k, cap);
    return LH_OK;
}

lh_status lh_tokenizer_window(const lh_tokenizer *t, const char *utf8, int32_t pad_id,
                              int comma_backtrack, int32_t *out, size_t cap, size_t *n_windows,
                              lh_error *err) {
    size_t n = 0;
    lh_status st = lh_tokenizer_encode(t, utf8, NULL, 0, &n, err);
    if (st != LH_OK && st != LH_ERR_OVERFLOW) return st;
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    if (!ids) return fail(err, LH_ERR_NOMEM, "tokenizer window: out of memory");
    st = lh_tokenizer_encode(t, utf8, ids, n, &n, err);
    if (st == LH_OK)
        st = lh_tokenizer_pack(t, ids, n, pad_id, comma_backtrack, out, cap, n_windows, err);
    free(ids);
    return st;
}

/* ---- Decoding ---- */

lh_status lh_tokenizer_decode(const lh_tokenizer *t, const int32_t *ids, size_t n, char *out,
                              size_t cap, size_t *len, lh_error *err) {
    if (!t || !len || (!ids && n) || (!out && cap))
        return fail(err, LH_ERR_INVALID, "tokenizer decode: NULL argument");
    int16_t unbyte[0x144]; /* bytes_to_unicode inverse; all its chars are < U+0144 */
    for (size_t i = 0; i < 0x144; i++) unbyte[i] = -1;
    for (int b = 0; b < 256; b++)
        unbyte[utf8_decode(t->byte_char[b], t->byte_char_len[b])] = (int16_t)b;
    bytevec v = {0};
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        uint64_t k;
        if (ids[i] < 0 || !u64map_get(&t->by_id, (uint64_t)ids[i], &k)) {
            free(v.v);
            return fail(err, LH_ERR_INVALID, "tokenizer decode: unknown id %d at index %zu",
                        (int)ids[i], i);
        }
        const vtoken *tk = &t->tokens[k];
        const uint8_t *s = (const uint8_t *)t->blob + tk->off;
        for (size_t j = 0; j < tk->len && !rc;) {
            if (tk->len - j >= EOW_LEN && memcmp(s + j, EOW, EOW_LEN) == 0) {
                rc = bytes_push(&v, " ", 1);
                j += EOW_LEN;
                continue;
            }
            size_t l = utf8_seq(s + j, tk->len - j); /* vocabulary text is valid UTF-8 */
            uint32_t c = utf8_decode(s + j, l);
            if (c < 0x144 && unbyte[c] >= 0) {
                uint8_t b = (uint8_t)unbyte[c];
                rc = bytes_push(&v, &b, 1);
            } else {
                rc = bytes_push(&v, s + j, l);
            }
            j += l;
        }
    }
    if (rc) {
        free(v.v);
        return fail(err, LH_ERR_NOMEM, "tokenizer decode: out of memory");
    }
    size_t a = 0, b = v.n;
    while (a < b && (v.v[a] == ' ' || (v.v[a] >= 0x09 && v.v[a] <= 0x0d))) a++;
    while (b > a && (v.v[b - 1] == ' ' || (v.v[b - 1] >= 0x09 && v.v[b - 1] <= 0x0d))) b--;
    *len = b - a;
    lh_status st = LH_OK;
    if (b - a + 1 > cap) {
        st = fail(err, LH_ERR_OVERFLOW, "tokenizer decode: %zu bytes do not fit in %zu", b - a + 1,
                  cap);
    } else {
        if (b > a) memcpy(out, v.v + a, b - a);
        out[b - a] = '\0';
    }
    free(v.v);
    return st;
}

/* ---- Loading ---- */

static lh_status read_file(const char *path, char **out, size_t *len, lh_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return fail(err, errno == ENOENT ? LH_ERR_NOT_FOUND : LH_ERR_IO, "%s: %s", path,
                    strerror(errno));
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 1 >= cap && grow((void **)&buf, &cap, n + 65536, 1)) {
            fclose(f);
            free(buf);
            return fail(err, LH_ERR_NOMEM, "%s: out of memory", path);
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return fail(err, LH_ERR_IO, "%s: read failed", path);
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return LH_OK;
}

static lh_status load_vocab(lh_tokenizer *t, const char *path, lh_error *err) {
    char *buf;
    size_t len;
    lh_status st = read_file(path, &buf, &len, err);
    if (st) return st;
    json_error_t je;
    json_t *root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
    free(buf);
    if (!root) return fail(err, LH_ERR_FORMAT, "%s:%d:%d: %s", path, je.line, je.column, je.text);
    if (!json_is_object(root)) {
        json_decref(root);
        return fail(err, LH_ERR_FORMAT, "%s:1: top level is not an object {token: id}", path);
    }
    size_t n = json_object_size(root), blob_len = 0;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (!json_is_integer(val) || json_integer_value(val) < 0 ||
            json_integer_value(val) > INT32_MAX) {
            lh_status r = fail(err, LH_ERR_FORMAT,
                               "%s: token \"%s\": id is not an integer in [0, 2^31)", path, key);
            json_decref(root); /* after the message: it owns key */
            return r;
        }
        blob_len += strlen(key) + 1;
    }
    if (blob_len > UINT32_MAX || n > UINT32_MAX / 2) {
        json_decref(root);
        return fail(err, LH_ERR_OVERFLOW, "%s: vocabulary too large", path);
    }
    t->blob = malloc(blob_len ? blob_len : 1);
    t->tokens = malloc((n ? n : 1) * sizeof *t->tokens);
    t->str_mask = pow2_at_least(2 * n + 1) - 1;
    t->str_slots = calloc(t->str_mask + 1, sizeof *t->str_slots);
    if (!t->blob || !t->tokens || !t->str_slots || u64map_init(&t->by_id, n)) {
        json_decref(root);
        return fail(err, LH_ERR_NOMEM, "%s: out of memory", path);
    }
    size_t off = 0;
    json_object_foreach(root, key, val) {
        size_t kl = strlen(key);
        int32_t id = (int32_t)json_integer_value(val);
        size_t slot = u64map_slot(&t->by_id, (uint64_t)id);
        if (t->by_id.keys[slot] != UINT64_MAX) {
            const vtoken *o = &t->tokens[t->by_id.vals[slot]];
            lh_status r =
                fail(err, LH_ERR_FORMAT, "%s: tokens \"%s\" and \"%s\" have the same id %d", path,
                     t->blob + o->off, key, (int)id);
            json_decref(root);
            return r;
        }
        memcpy(t->blob + off, key, kl + 1);
        vtoken *tk = &t->tokens[t->n_tokens];
        tk->off = (uint32_t)off;
        tk->len = (uint32_t)kl;
        tk->id = id;
        t->by_id.keys[slot] = (uint64_t)id;
        t->by_id.vals[slot] = t->n_tokens;
        size_t i = hash_bytes(key, kl) & t->str_mask;
        while (t->str_slots[i]) i = (i + 1) & t->str_mask; /* keys are unique */
        t->str_slots[i] = (uint32_t)++t->n_tokens;
        off += kl + 1;
    }
    json_decref(root);
    return LH_OK;
}

static lh_status load_merges(lh_tokenizer *t, const char *path, lh_error *err) {
    char *buf;
    size_t len;
    lh_status st = read_file(path, &buf, &len, err);
    if (st) return st;
    size_t lines = 1;
    for (size_t i = 0; i < len; i++) lines += buf[i] == '\n';
    char *joined = NULL;
    size_t joined_cap = 0;
    if (u64map_init(&t->merges, lines)) {
        free(buf);
        return fail(err, LH_ERR_NOMEM, "%s: out of memory", path);
    }
    uint32_t rank = 0;
    size_t line_no = 0;
    for (size_t pos = 0; pos < len;) {
        /* lines as Rust's BufRead::lines: split at \n, drop a \r before it */
        const char *nl = memchr(buf + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - buf) : len, next = nl ? end + 1 : len;
        if (nl && end > pos && buf[end - 1] == '\r') end--;
        const char *line = buf + pos;
        size_t ll = end - pos;
        pos = next;
        line_no++;
        if (utf8_check((const uint8_t *)line, ll) != SIZE_MAX) {
            st = fail(err, LH_ERR_FORMAT, "%s:%zu: invalid UTF-8", path, line_no);
            break;
        }
        if (ll >= 8 && memcmp(line, "#version", 8) == 0) continue;
        const char *sp = memchr(line, ' ', ll);
        if (!sp || memchr(sp + 1, ' ', (size_t)(line + ll - sp - 1))) {
            st = fail(err, LH_ERR_FORMAT,
                      "%s:%zu: expected a merge \"a b\" (two tokens, one space)%s", path, line_no,
                      ll == 0 ? ", got an empty line" : "");
            break;
        }
        size_t la = (size_t)(sp - line), lb = ll - la - 1;
        int32_t a = str_find(t, line, la), b = str_find(t, sp + 1, lb);
        if (a < 0 || b < 0) {
            st = fail(err, LH_ERR_FORMAT, "%s:%zu: token \"%.*s\" is not in the vocabulary", path,
                      line_no, a < 0 ? (int)la : (int)lb, a < 0 ? line : sp + 1);
            break;
        }
        if (grow((void **)&joined, &joined_cap, la + lb + 1, 1)) {
            st = fail(err, LH_ERR_NOMEM, "%s: out of memory", path);
            break;
        }
        memcpy(joined, line, la);
        memcpy(joined + la, sp + 1, lb);
        int32_t m = str_find(t, joined, la + lb);
        if (m < 0) {
            st = fail(err, LH_ERR_FORMAT, "%s:%zu: merged token \"%.*s\" is not in the vocabulary",
                      path, line_no, (int)(la + lb), joined);
            break;
        }
        uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
        size_t slot = u64map_slot(&t->merges, key); /* a pair listed again: later rank wins */
        t->merges.keys[slot] = key;
        t->merges.vals[slot] = ((uint64_t)rank << 32) | (uint32_t)m;
        rank++;
    }
    free(joined);
    free(buf);
    return st;
}

static lh_status add_special(lh_tokenizer *t, const char *text, int normalized, lh_error *err) {
    size_t len = strlen(text);
    int32_t id = str_find(t, text, len);
    if (id < 0)
        return fail(err, LH_ERR_NOT_FOUND, "special token \"%s\" is not in the vocabulary", text);
    if (len == 0 || utf8_check((const uint8_t *)text, len) != SIZE_MAX)
        return fail(err, LH_ERR_INVALID, "special token \"%s\": empty or invalid UTF-8", text);
    special *sp = NULL;
    for (size_t k = 0; k < t->n_specials; k++)
        if (strcmp(t->specials[k].text, text) == 0) sp = &t->specials[k];
    if (!sp) {
        special *v = realloc(t->specials, (t->n_specials + 1) * sizeof *v);
        if (!v) return fail(err, LH_ERR_NOMEM, "special token: out of memory");
        t->specials = v;
        sp = &v[t->n_specials];
        memset(sp, 0, sizeof *sp);
        sp->text = strdup(text);
        if (!sp->text) return fail(err, LH_ERR_NOMEM, "special token: out of memory");
        sp->len = len;
        sp->id = id;
        t->n_specials++;
    }
    sp->normalized = normalized != 0;
    free(sp->cps);
    sp->cps = NULL;
    sp->ncps = 0;
    if (sp->normalized) { /* transformers matches the normalized form of the token */
        scratch s = {0};
        u32vec norm = {0};
        const uint8_t *p = (const uint8_t *)text;
        int rc = 0;
        for (size_t i = 0; i < len && !rc;) {
            size_t l = utf8_seq(p + i, len - i);
            rc = u32_push(&s.a, utf8_decode(p + i, l));
            i += l;
        }
        if (!rc) rc = normalize(&s, s.a.v, s.a.n, &norm);
        scratch_free(&s);
        if (rc || norm.n == 0) {
            free(norm.v);
            sp->normalized = 0;
            return fail(err, LH_ERR_NOMEM, "special token: out of memory");
        }
        sp->cps = norm.v;
        sp->ncps = norm.n;
    }
    return LH_OK;
}

lh_status lh_tokenizer_add_special(lh_tokenizer *t, const char *token, int normalized,
                                   lh_error *err) {
    if (!t || !token) return fail(err, LH_ERR_INVALID, "tokenizer add_special: NULL argument");
    return add_special(t, token, normalized, err);
}

static void bytes_to_unicode(lh_tokenizer *t) {
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae);
        uint32_t c = printable ? (uint32_t)b : (uint32_t)(256 + n++);
        t->byte_char_len[b] = (uint8_t)utf8_encode(c, t->byte_char[b]);
    }
}

lh_status lh_tokenizer_open(lh_tokenizer **out, const char *vocab_json, const char *merges_txt,
                            lh_error *err) {
    if (!out || !vocab_json || !merges_txt)
        return fail(err, LH_ERR_INVALID, "tokenizer open: NULL argument");
    *out = NULL;
    lh_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return fail(err, LH_ERR_NOMEM, "tokenizer open: out of memory");
    if (pthread_mutex_init(&t->cache.mu, NULL)) {
        free(t);
        return fail(err, LH_ERR_INTERNAL, "tokenizer open: mutex init failed");
    }
    lh_status st = load_vocab(t, vocab_json, err);
    if (!st) {
        t->bos_id = str_find(t, BOS_TEXT, strlen(BOS_TEXT));
        t->eos_id = str_find(t, EOS_TEXT, strlen(EOS_TEXT));
        if (t->bos_id < 0 || t->eos_id < 0)
            st = fail(err, LH_ERR_FORMAT, "%s: special token %s is missing", vocab_json,
                      t->bos_id < 0 ? BOS_TEXT : EOS_TEXT);
    }
    if (!st) st = load_merges(t, merges_txt, err);
    if (!st) {
        t->unk_id = t->eos_id; /* CLIPTokenizer's unk_token is <|endoftext|> */
        t->comma_id = str_find(t, "," EOW, 1 + EOW_LEN);
        bytes_to_unicode(t);
        for (int b = 0; b < 256; b++) {
            char s[8];
            size_t l = t->byte_char_len[b];
            memcpy(s, t->byte_char[b], l);
            t->byte_id[b] = str_find(t, s, l);
            memcpy(s + l, EOW, EOW_LEN);
            t->byte_eow_id[b] = str_find(t, s, l + EOW_LEN);
        }
        st = add_special(t, BOS_TEXT, 0, err);
        if (!st) st = add_special(t, EOS_TEXT, 0, err);
    }
    if (!st) {
        bpe_cache *c = &t->cache;
        c->slots = calloc(CACHE_SLOTS, sizeof *c->slots);
        c->ent = malloc(CACHE_ENTRIES * sizeof *c->ent);
        c->keys = malloc(CACHE_KEY_BYTES);
        c->ids = malloc(CACHE_IDS * sizeof *c->ids);
        if (!c->slots || !c->ent || !c->keys || !c->ids)
            st = fail(err, LH_ERR_NOMEM, "tokenizer open: out of memory");
    }
    if (st) {
        lh_tokenizer_close(t);
        return st;
    }
    *out = t;
    return LH_OK;
}

void lh_tokenizer_close(lh_tokenizer *t) {
    if (!t) return;
    for (size_t k = 0; k < t->n_specials; k++) {
        free(t->specials[k].text);
        free(t->specials[k].cps);
    }
    free(t->specials);
    free(t->cache.slots);
    free(t->cache.ent);
    free(t->cache.keys);
    free(t->cache.ids);
    pthread_mutex_destroy(&t->cache.mu);
    u64map_free(&t->merges);
    u64map_free(&t->by_id);
    free(t->str_slots);
    free(t->tokens);
    free(t->blob);
    free(t);
}

int32_t lh_tokenizer_token_id(const lh_tokenizer *t, const char *token) {
    return t && token ? str_find(t, token, strlen(token)) : -1;
}

int32_t lh_tokenizer_bos_id(const lh_tokenizer *t) { return t ? t->bos_id : -1; }
int32_t lh_tokenizer_eos_id(const lh_tokenizer *t) { return t ? t->eos_id : -1; }
size_t lh_tokenizer_vocab_size(const lh_tokenizer *t) { return t ? t->n_tokens : 0; }
