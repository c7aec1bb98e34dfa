/* The dataset reader (datasets/dataset.h; layout in docs/datasets.md).
 * lh_dataset_open checks everything the reads will rely on first: the layout
 * version, every object a hard link to a plain (not external, not virtual)
 * dataset of the expected class, size and rank, every per-item size within
 * limits and their sums equal to the data lengths, all with overflow checks.
 * HDF5's own error printing is off; its errors become messages naming the
 * file and the object path. The checks run first in a forked child, so a
 * libhdf5 crash on a hostile file is an error here ("Open, guarded"). */
#include "dataset.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dataset_h5.h"
#include "image_ops.h"

struct lh_dataset {
    char path[4096];
    hid_t file;
    int64_t n, resolution, version;
    char crop[16];
    int64_t *img_shape; /* [n][2]: height, width */
    uint64_t *img_off;  /* [n + 1] byte offsets into /images/data */
    int64_t *cap_len;   /* [n] caption lengths in bytes */
    uint64_t *cap_off;  /* [n + 1] byte offsets into /captions/data */
    hid_t d_img, d_cap, d_weight;
    int has_lat, has_text;
    hid_t d_lat, d_text;
    int64_t *lat_shape; /* [n][3] */
    uint64_t *lat_off;  /* [n + 1] float offsets into /latents/data */
    char lat_model[4096], lat_crop[16], text_model[4096];
    float scale;
    int64_t text_t, text_d;
};

/* ---- HDF5 plumbing shared with the writer ---- */

/* "outermost: innermost" description of HDF5's error stack */
static herr_t walk_error(unsigned n, const H5E_error2_t *e, void *user) {
    char *buf = user;
    if (!e->desc) return 0;
    if (n == 0) snprintf(buf, 256, "%s", e->desc);
    else snprintf(buf + 256, 256, "%s", e->desc);
    return 0;
}

const char *lh__h5_reason(char *buf) {
    char both[512] = {0};
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, walk_error, both);
    H5Eclear2(H5E_DEFAULT);
    if (!both[0]) snprintf(buf, 256, "HDF5 call failed");
    else if (!both[256] || !strcmp(both, both + 256)) snprintf(buf, 256, "%s", both);
    else snprintf(buf, 256, "%s: %s", both, both + 256);
    return buf;
}

void lh__h5_quiet(void) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    H5PLset_loading_state(0); /* no filter plugins: only HDF5's built-in filters */
}

hid_t lh__h5_str_type(void) {
    hid_t t = H5Tcopy(H5T_C_S1);
    if (t >= 0 && (H5Tset_size(t, H5T_VARIABLE) < 0 || H5Tset_cset(t, H5T_CSET_UTF8) < 0)) {
        H5Tclose(t);
        return -1;
    }
    return t;
}

/* ---- Validation helpers ---- */

#define FAIL(code, ...) lh_error_set(err, code, __VA_ARGS__)

/* Every component of `path` must be a hard link (no soft or external links). */
static lh_status hard_links(const char *file, hid_t f, const char *path, int *exists,
                            lh_error *err) {
    char part[512];
    size_t n = strlen(path);
    if (n >= sizeof part) return FAIL(LH_ERR_INTERNAL, "%s: path too long", path);
    *exists = 0;
    for (size_t i = 1; i <= n; i++) {
        if (path[i] != '/' && path[i] != '\0') continue;
        memcpy(part, path, i), part[i] = '\0';
        htri_t e = H5Lexists(f, part, H5P_DEFAULT);
        if (e <= 0) {
            H5Eclear2(H5E_DEFAULT);
            return LH_OK;
        }
        H5L_info_t li;
        if (H5Lget_info(f, part, &li, H5P_DEFAULT) < 0) {
            char r[256];
            return FAIL(LH_ERR_FORMAT, "%s: %s: cannot read the link (%s)", file, part, lh__h5_reason(r));
        }
        if (li.type != H5L_TYPE_HARD)
            return FAIL(LH_ERR_UNSUPPORTED, "%s: %s: is %s link; datasets must hold their data "
                        "(external and soft links are refused)", file, part,
                        li.type == H5L_TYPE_EXTERNAL ? "an external" : li.type == H5L_TYPE_SOFT ? "a soft" : "a user-defined");
    }
    *exists = 1;
    return LH_OK;
}

typedef enum { K_U8, K_I64, K_F32, K_STR } kind;
static const char *kind_name[] = {"uint8", "int64", "float32", "variable-length UTF-8 string"};

/* Open dataset `path` of kind k and rank `rank`, dims into dims[rank].
 * *out = -1 and LH_OK when absent and !required. */
static lh_status open_ds(const char *file, hid_t f, const char *path, kind k, int rank,
                         hsize_t *dims, int required, hid_t *out, lh_error *err) {
    *out = -1;
    int exists;
    lh_status st = hard_links(file, f, path, &exists, err);
    if (st != LH_OK) return st;
    if (!exists) {
        if (!required) return LH_OK;
        return FAIL(LH_ERR_FORMAT, "%s: %s: missing (not a lorahost dataset file?)", file, path);
    }
    char r[256];
    H5O_info_t oi;
    if (H5Oget_info_by_name(f, path, &oi, H5P_DEFAULT) < 0)
        return FAIL(LH_ERR_FORMAT, "%s: %s: unreadable (%s)", file, path, lh__h5_reason(r));
    if (oi.type != H5O_TYPE_DATASET) return FAIL(LH_ERR_FORMAT, "%s: %s: not a dataset", file, path);
    hid_t d = H5Dopen2(f, path, H5P_DEFAULT);
    if (d < 0) return FAIL(LH_ERR_FORMAT, "%s: %s: cannot open (%s)", file, path, lh__h5_reason(r));
    hid_t t = H5Dget_type(d), s = H5Dget_space(d), p = H5Dget_create_plist(d);
    st = LH_OK;
    if (t < 0 || s < 0 || p < 0) {
        st = FAIL(LH_ERR_FORMAT, "%s: %s: unreadable header (%s)", file, path, lh__h5_reason(r));
        goto done;
    }
    H5D_layout_t lay = H5Pget_layout(p);
    if (lay == H5D_VIRTUAL || H5Pget_external_count(p) != 0) {
        st = FAIL(LH_ERR_UNSUPPORTED, "%s: %s: %s storage is refused (the data must be in the file)",
                  file, path, lay == H5D_VIRTUAL ? "virtual" : "external");
        goto done;
    }
    H5T_class_t c = H5Tget_class(t);
    size_t sz = H5Tget_size(t);
    int ok;
    switch (k) {
    case K_U8: ok = c == H5T_INTEGER && sz == 1 && H5Tget_sign(t) == H5T_SGN_NONE; break;
    case K_I64: ok = c == H5T_INTEGER && sz == 8 && H5Tget_sign(t) == H5T_SGN_2; break;
    case K_F32: ok = c == H5T_FLOAT && sz == 4; break;
    default: ok = c == H5T_STRING && H5Tis_variable_str(t) > 0; break;
    }
    if (!ok) {
        st = FAIL(LH_ERR_FORMAT, "%s: %s: wrong type: want %s (class %d, %zu bytes found)", file,
                  path, kind_name[k], (int)c, sz);
        goto done;
    }
    int nd = H5Sget_simple_extent_ndims(s);
    if (H5Sget_simple_extent_type(s) != H5S_SIMPLE || nd != rank) {
        st = FAIL(LH_ERR_FORMAT, "%s: %s: wrong rank: want %d dimensions, found %d", file, path,
                  rank, nd);
        goto done;
    }
    if (H5Sget_simple_extent_dims(s, dims, NULL) < 0) {
        st = FAIL(LH_ERR_FORMAT, "%s: %s: unreadable shape (%s)", file, path, lh__h5_reason(r));
        goto done;
    }
    for (int i = 0; i < rank; i++)
        if (dims[i] > (hsize_t)INT64_MAX / 16) {
            st = FAIL(LH_ERR_OVERFLOW, "%s: %s: dimension %d is %llu, too large", file, path, i,
                      (unsigned long long)dims[i]);
            goto done;
        }
done:
    if (t >= 0) H5Tclose(t);
    if (s >= 0) H5Sclose(s);
    if (p >= 0) H5Pclose(p);
    if (st != LH_OK) H5Dclose(d);
    else *out = d;
    return st;
}

/* Attribute `name` of object `o`: an integer, float or string, one value. */
static lh_status attr_open(const char *file, hid_t o, const char *opath, const char *name,
                           H5T_class_t want, int required, hid_t *out, lh_error *err) {
    *out = -1;
    htri_t e = H5Aexists(o, name);
    if (e <= 0) {
        H5Eclear2(H5E_DEFAULT);
        if (!required) return LH_OK;
        return FAIL(LH_ERR_FORMAT, "%s: %s attribute %s: missing", file, opath, name);
    }
    hid_t a = H5Aopen(o, name, H5P_DEFAULT);
    char r[256];
    if (a < 0) return FAIL(LH_ERR_FORMAT, "%s: %s attribute %s: %s", file, opath, name, lh__h5_reason(r));
    hid_t t = H5Aget_type(a), s = H5Aget_space(a);
    hssize_t np = s >= 0 ? H5Sget_simple_extent_npoints(s) : -1;
    int ok = t >= 0 && H5Tget_class(t) == want && np == 1;
    /* fixed-length strings only: HDF5 1.10 reads variable-length ones from
     * the global heap, which overruns buffers on corrupt files (fuzzing) */
    if (ok && want == H5T_STRING && (H5Tis_variable_str(t) != 0 || H5Tget_size(t) > 4096)) ok = 0;
    if (t >= 0) H5Tclose(t);
    if (s >= 0) H5Sclose(s);
    if (!ok) {
        H5Aclose(a);
        return FAIL(LH_ERR_FORMAT, "%s: %s attribute %s: want one %s", file, opath, name,
                    want == H5T_INTEGER ? "integer" : want == H5T_FLOAT ? "float" : "fixed-length string of at most 4096 bytes");
    }
    *out = a;
    return LH_OK;
}

static lh_status attr_i64(const char *file, hid_t o, const char *opath, const char *name,
                          int required, int64_t *v, lh_error *err) {
    hid_t a;
    lh_status st = attr_open(file, o, opath, name, H5T_INTEGER, required, &a, err);
    if (st != LH_OK || a < 0) return st;
    char r[256];
    if (H5Aread(a, H5T_NATIVE_INT64, v) < 0)
        st = FAIL(LH_ERR_FORMAT, "%s: %s attribute %s: %s", file, opath, name, lh__h5_reason(r));
    H5Aclose(a);
    return st;
}

static lh_status attr_f32(const char *file, hid_t o, const char *opath, const char *name,
                          int required, float *v, lh_error *err) {
    hid_t a;
    lh_status st = attr_open(file, o, opath, name, H5T_FLOAT, required, &a, err);
    if (st != LH_OK || a < 0) return st;
    char r[256];
    if (H5Aread(a, H5T_NATIVE_FLOAT, v) < 0)
        st = FAIL(LH_ERR_FORMAT, "%s: %s attribute %s: %s", file, opath, name, lh__h5_reason(r));
    H5Aclose(a);
    return st;
}

static lh_status attr_str(const char *file, hid_t o, const char *opath, const char *name,
                          int required, char *buf, size_t cap, lh_error *err) {
    hid_t a;
    lh_status st = attr_open(file, o, opath, name, H5T_STRING, required, &a, err);
    if (st != LH_OK || a < 0) return st;
    hid_t mt = H5Aget_type(a);
    size_t n = mt >= 0 ? H5Tget_size(mt) : 0;
    char *s = calloc(n + 1, 1), r[256];
    if (mt < 0 || !s || H5Aread(a, mt, s) < 0) {
        st = FAIL(LH_ERR_FORMAT, "%s: %s attribute %s: %s", file, opath, name, lh__h5_reason(r));
    } else if (strlen(s) >= cap || !lh__utf8_valid(s, strlen(s))) {
        st = FAIL(LH_ERR_FORMAT, "%s: %s attribute %s: longer than %zu bytes or not UTF-8", file,
                  opath, name, cap - 1);
    } else {
        snprintf(buf, cap, "%s", s);
    }
    free(s);
    if (mt >= 0) H5Tclose(mt);
    H5Aclose(a);
    return st;
}

/* Read a whole int64 [n, k] shape table after checking its size. */
static lh_status read_shapes(const char *file, hid_t d, const char *path, int64_t n, int k,
                             int64_t **out, lh_error *err) {
    size_t bytes;
    if (lh_mul_size((size_t)n, (size_t)k * sizeof(int64_t), &bytes))
        return FAIL(LH_ERR_OVERFLOW, "%s: %s: too large", file, path);
    *out = malloc(bytes ? bytes : 1);
    if (!*out) return FAIL(LH_ERR_NOMEM, "%s: %s: out of memory", file, path);
    char r[256];
    if (n > 0 && H5Dread(d, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, *out) < 0)
        return FAIL(LH_ERR_FORMAT, "%s: %s: cannot read (%s)", file, path, lh__h5_reason(r));
    return LH_OK;
}

/* Offsets off[n + 1] of items whose sizes are the products of their shape
 * rows times `per`; every factor in [1, max[j]]; the total must equal total. */
static lh_status offsets(const char *file, const char *path, const int64_t *shape, int64_t n, int k,
                         const int64_t *max, size_t per, uint64_t total, uint64_t **off,
                         lh_error *err) {
    size_t bytes;
    if (lh_mul_size((size_t)n + 1, sizeof(uint64_t), &bytes))
        return FAIL(LH_ERR_OVERFLOW, "%s: %s: too large", file, path);
    *off = malloc(bytes);
    if (!*off) return FAIL(LH_ERR_NOMEM, "%s: %s: out of memory", file, path);
    size_t acc = 0;
    (*off)[0] = 0;
    for (int64_t i = 0; i < n; i++) {
        size_t sz = per;
        for (int j = 0; j < k; j++) {
            int64_t v = shape[i * k + j];
            if (v < 1 || v > max[j])
                return FAIL(LH_ERR_FORMAT, "%s: %s: item %lld: dimension %d is %lld, want 1 to %lld",
                            file, path, (long long)i, j, (long long)v, (long long)max[j]);
            if (lh_mul_size(sz, (size_t)v, &sz))
                return FAIL(LH_ERR_OVERFLOW, "%s: %s: item %lld: size overflows", file, path, (long long)i);
        }
        if (lh_add_size(acc, sz, &acc))
            return FAIL(LH_ERR_OVERFLOW, "%s: %s: total size overflows", file, path);
        (*off)[i + 1] = acc;
    }
    if (acc != total)
        return FAIL(LH_ERR_FORMAT, "%s: %s: shapes add up to %zu values, the data holds %llu", file,
                    path, acc, (unsigned long long)total);
    return LH_OK;
}

/* ---- Open ---- */

static lh_status open_all(lh_dataset *d, lh_error *err) {
    const char *file = d->path;
    char r[256];
    int64_t version = 0;
    lh_status st = attr_i64(file, d->file, "/", LH_DATASET_VERSION_ATTR, 1, &version, err);
    d->version = version;
    if (st != LH_OK) return st;
    if (version > LH_DATASET_VERSION)
        return FAIL(LH_ERR_UNSUPPORTED, "%s: dataset layout version %lld is newer than this "
                    "lorahost reads (%d): upgrade lorahost", file, (long long)version, LH_DATASET_VERSION);
    if (version < 1) return FAIL(LH_ERR_FORMAT, "%s: bad dataset layout version %lld", file, (long long)version);
    if ((st = attr_i64(file, d->file, "/", "resolution", 1, &d->resolution, err)) != LH_OK) return st;
    if (d->resolution < 1 || d->resolution > LH_DATASET_MAX_SIDE)
        return FAIL(LH_ERR_FORMAT, "%s: / attribute resolution: %lld out of range", file, (long long)d->resolution);
    if ((st = attr_str(file, d->file, "/", "crop", 1, d->crop, sizeof d->crop, err)) != LH_OK) return st;
    if (strcmp(d->crop, "center") && strcmp(d->crop, "random") && strcmp(d->crop, "bucket"))
        return FAIL(LH_ERR_FORMAT, "%s: / attribute crop: \"%s\", want center, random or bucket", file, d->crop);

    hsize_t dims[3];
    hid_t ds;
    if ((st = open_ds(file, d->file, "/images/shape", K_I64, 2, dims, 1, &ds, err)) != LH_OK) return st;
    H5Dclose(ds);
    if (dims[1] != 2) return FAIL(LH_ERR_FORMAT, "%s: /images/shape: want [count, 2], found [%llu, %llu]",
                                  file, (unsigned long long)dims[0], (unsigned long long)dims[1]);
    if (dims[0] > LH_DATASET_MAX_ITEMS)
        return FAIL(LH_ERR_UNSUPPORTED, "%s: /images/shape: %llu items, at most %d", file,
                    (unsigned long long)dims[0], LH_DATASET_MAX_ITEMS);
    d->n = (int64_t)dims[0];
    if ((st = open_ds(file, d->file, "/images/shape", K_I64, 2, dims, 1, &ds, err)) != LH_OK) return st;
    st = read_shapes(file, ds, "/images/shape", d->n, 2, &d->img_shape, err);
    H5Dclose(ds);
    if (st != LH_OK) return st;
    if ((st = open_ds(file, d->file, "/images/data", K_U8, 1, dims, 1, &d->d_img, err)) != LH_OK) return st;
    static const int64_t img_max[2] = {LH_DATASET_MAX_SIDE, LH_DATASET_MAX_SIDE};
    if ((st = offsets(file, "/images/shape", d->img_shape, d->n, 2, img_max, 3, dims[0], &d->img_off, err)) != LH_OK)
        return st;
    if ((st = open_ds(file, d->file, "/captions/length", K_I64, 1, dims, 1, &ds, err)) != LH_OK) return st;
    if ((int64_t)dims[0] != d->n) {
        H5Dclose(ds);
        return FAIL(LH_ERR_FORMAT, "%s: /captions/length: %llu entries for %lld images", file, (unsigned long long)dims[0], (long long)d->n);
    }
    st = read_shapes(file, ds, "/captions/length", d->n, 1, &d->cap_len, err);
    H5Dclose(ds);
    if (st != LH_OK) return st;
    if ((st = open_ds(file, d->file, "/captions/data", K_U8, 1, dims, 1, &d->d_cap, err)) != LH_OK) return st;
    {
        size_t bytes, acc = 0;
        if (lh_mul_size((size_t)d->n + 1, sizeof(uint64_t), &bytes) || !(d->cap_off = malloc(bytes)))
            return FAIL(LH_ERR_NOMEM, "%s: /captions/length: out of memory", file);
        d->cap_off[0] = 0;
        for (int64_t i = 0; i < d->n; i++) {
            if (d->cap_len[i] < 0 || d->cap_len[i] > LH_DATASET_MAX_CAPTION)
                return FAIL(LH_ERR_FORMAT, "%s: /captions/length: item %lld: %lld bytes, want 0 to %d", file,
                            (long long)i, (long long)d->cap_len[i], LH_DATASET_MAX_CAPTION);
            acc += (size_t)d->cap_len[i]; /* <= 1e7 * 2^20: no overflow */
            d->cap_off[i + 1] = acc;
        }
        if (acc != dims[0])
            return FAIL(LH_ERR_FORMAT, "%s: /captions/length: lengths add up to %zu bytes, /captions/data holds %llu",
                        file, acc, (unsigned long long)dims[0]);
    }
    if ((st = open_ds(file, d->file, "/source_names", K_STR, 1, dims, 1, &ds, err)) != LH_OK) return st;
    H5Dclose(ds);
    if ((int64_t)dims[0] != d->n)
        return FAIL(LH_ERR_FORMAT, "%s: /source_names: %llu entries for %lld images", file, (unsigned long long)dims[0], (long long)d->n);
    if ((st = open_ds(file, d->file, "/weights", K_F32, 1, dims, 0, &d->d_weight, err)) != LH_OK) return st;
    if (d->d_weight >= 0 && (int64_t)dims[0] != d->n)
        return FAIL(LH_ERR_FORMAT, "%s: /weights: %llu entries for %lld images", file, (unsigned long long)dims[0], (long long)d->n);

    /* cached latents */
    hid_t sh;
    if ((st = open_ds(file, d->file, "/latents/shape", K_I64, 2, dims, 0, &sh, err)) != LH_OK) return st;
    if (sh >= 0) {
        d->has_lat = 1;
        if ((int64_t)dims[0] != d->n || dims[1] != 3) {
            H5Dclose(sh);
            return FAIL(LH_ERR_FORMAT, "%s: /latents/shape: want [%lld, 3], found [%llu, %llu]", file,
                        (long long)d->n, (unsigned long long)dims[0], (unsigned long long)dims[1]);
        }
        st = read_shapes(file, sh, "/latents/shape", d->n, 3, &d->lat_shape, err);
        H5Dclose(sh);
        if (st != LH_OK) return st;
        if ((st = open_ds(file, d->file, "/latents/data", K_F32, 1, dims, 1, &d->d_lat, err)) != LH_OK) return st;
        static const int64_t lat_max[3] = {64, LH_DATASET_MAX_SIDE, LH_DATASET_MAX_SIDE};
        if ((st = offsets(file, "/latents/shape", d->lat_shape, d->n, 3, lat_max, 1, dims[0], &d->lat_off, err)) != LH_OK)
            return st;
        hid_t g = H5Gopen2(d->file, "/latents", H5P_DEFAULT);
        if (g < 0) return FAIL(LH_ERR_FORMAT, "%s: /latents: %s", file, lh__h5_reason(r));
        st = attr_str(file, g, "/latents", "model", 1, d->lat_model, sizeof d->lat_model, err);
        if (st == LH_OK) st = attr_f32(file, g, "/latents", "scaling_factor", 1, &d->scale, err);
        if (st == LH_OK) st = attr_str(file, g, "/latents", "crop", 1, d->lat_crop, sizeof d->lat_crop, err);
        H5Gclose(g);
        if (st != LH_OK) return st;
    }
    /* cached text embeddings */
    if ((st = open_ds(file, d->file, "/text/embeddings", K_F32, 3, dims, 0, &d->d_text, err)) != LH_OK) return st;
    if (d->d_text >= 0) {
        d->has_text = 1;
        if ((int64_t)dims[0] != d->n || dims[1] < 1 || dims[1] > 1024 || dims[2] < 1 || dims[2] > 65536)
            return FAIL(LH_ERR_FORMAT, "%s: /text/embeddings: want [%lld, tokens <= 1024, dim <= 65536], "
                        "found [%llu, %llu, %llu]", file, (long long)d->n, (unsigned long long)dims[0],
                        (unsigned long long)dims[1], (unsigned long long)dims[2]);
        d->text_t = (int64_t)dims[1], d->text_d = (int64_t)dims[2];
        hid_t g = H5Gopen2(d->file, "/text", H5P_DEFAULT);
        if (g < 0) return FAIL(LH_ERR_FORMAT, "%s: /text: %s", file, lh__h5_reason(r));
        st = attr_str(file, g, "/text", "model", 1, d->text_model, sizeof d->text_model, err);
        H5Gclose(g);
        if (st != LH_OK) return st;
    }
    return LH_OK;
}

/* Open and validate `path` in this process; HDF5 reads `h5path`, the same
 * file (an inode pinned by the guard, see below). */
static lh_status open_here(lh_dataset **out, const char *path, const char *h5path, lh_error *err) {
    *out = NULL;
    lh__h5_quiet();
    lh_dataset *d = calloc(1, sizeof *d);
    if (!d) return FAIL(LH_ERR_NOMEM, "%s: out of memory", path);
    d->file = d->d_img = d->d_cap = d->d_weight = d->d_lat = d->d_text = -1;
    snprintf(d->path, sizeof d->path, "%s", path);
    char r[256];
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        free(d);
        return FAIL(LH_ERR_NOT_FOUND, "%s: cannot open", path);
    }
    fclose(fp);
    htri_t is = H5Fis_hdf5(h5path);
    if (is <= 0) {
        free(d);
        return FAIL(LH_ERR_FORMAT, "%s: not an HDF5 file (%s)", path, is < 0 ? lh__h5_reason(r) : "no HDF5 signature");
    }
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl >= 0) H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG);
    d->file = H5Fopen(h5path, H5F_ACC_RDONLY, fapl >= 0 ? fapl : H5P_DEFAULT);
    if (d->file < 0) lh__h5_reason(r); /* before the next call clears the stack */
    if (fapl >= 0) H5Pclose(fapl);
    if (d->file < 0) {
        free(d);
        return FAIL(LH_ERR_FORMAT, "%s: cannot open as HDF5 (%s)", path, r);
    }
    lh_status st = open_all(d, err);
    if (st != LH_OK) {
        lh_dataset_close(d);
        return st;
    }
    *out = d;
    return LH_OK;
}

/* ---- Open, guarded against libhdf5 crashes ----
 *
 * libhdf5 1.10 crashes (SIGFPE, SIGSEGV) or reads out of bounds on some
 * crafted headers inside H5Dopen2 and H5Aexists, before any check of ours
 * sees them (docs/datasets.md, "Limits"). So lh_dataset_open first runs
 * open_here -- the whole metadata walk: the file, its groups, attributes,
 * dataset headers and the shape and length tables -- in a forked child that
 * reports through a pipe and _exits. Only when the child succeeded does this
 * process open the file itself, parsing the same bytes with the same code.
 * Both name the file /proc/self/fd/N of one descriptor opened here, so a
 * rename over `path` in between (the atomic writer) cannot swap the checked
 * file for an unchecked one.
 *
 * What runs in this process afterwards, lh_dataset_read (read_range), is
 * H5Dget_space, H5Screate_simple, H5Sselect_hyperslab and H5Dread of a
 * fixed-size hyperslab inside the validated extent of an already open
 * dataset whose header (layout, type, dataspace, filter pipeline) the child
 * decoded without fault. It decodes no object header or attribute again
 * (where the crashes are). It does run code the child did not: the chunk
 * index lookup of the chunks it reads and the built-in filters (deflate,
 * shuffle, fletcher32, ...) on their bytes. The child walks every chunk
 * index once (H5Dget_storage_size) so index nodes that crash are caught
 * here; filter input is left to zlib's and HDF5's own checks, and
 * tests/fuzz/fuzz_dataset.c reads every item of what opens.
 *
 * fork in a multi-threaded process: the child has only the forking thread.
 * It calls open_here (HDF5, malloc, stdio: glibc makes malloc and stdio
 * usable after fork, though POSIX promises only async-signal-safe calls),
 * write() and _exit() -- never exit(), so no atexit handler runs (H5close
 * would flush the parent's open HDF5 files) and no stdio buffer is written
 * twice. If another thread was inside HDF5 at the fork (or held the lock of
 * a thread-safe libhdf5), the child may deadlock or see half-updated state:
 * callers must serialize HDF5 use (the server does), and the timeout turns
 * a deadlock into an error instead of a hang.
 *
 * Environment: LH_DATASET_NO_FORK=1 opens unguarded in this process (for
 * debuggers, and to fuzz libhdf5 itself with coverage). LH_DATASET_OPEN_TIMEOUT
 * (seconds, default 30) bounds the child. LH_DATASET_GUARD_TEST=segv|fpe|
 * hang|exit is a test hook: the child faults before it does anything. */

#define GUARD_TIMEOUT_S 30

typedef struct guard_msg {
    int32_t code;
    char msg[LH_ERROR_MAX];
} guard_msg;

static void guard_child(const char *path, const char *h5path, int wfd) {
    const char *t = getenv("LH_DATASET_GUARD_TEST");
    if (t && !strcmp(t, "segv")) raise(SIGSEGV);
    if (t && !strcmp(t, "fpe")) raise(SIGFPE);
    if (t && !strcmp(t, "hang")) for (;;) pause();
    if (t && !strcmp(t, "exit")) _exit(3);
    guard_msg m;
    memset(&m, 0, sizeof m);
    lh_error e = {0};
    lh_dataset *d = NULL;
    lh_status st = open_here(&d, path, h5path, &e);
    if (st == LH_OK) { /* walk every chunk index (see above) */
        hid_t ids[] = {d->d_img, d->d_cap, d->d_weight, d->d_lat, d->d_text};
        for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++)
            if (ids[i] >= 0) H5Dget_storage_size(ids[i]);
    }
    m.code = st;
    memcpy(m.msg, e.msg, sizeof m.msg);
    m.msg[sizeof m.msg - 1] = '\0';
    const char *p = (const char *)&m;
    size_t left = sizeof m; /* < PIPE_BUF * 16: the pipe buffer takes it all */
    while (left) {
        ssize_t w = write(wfd, p, left);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) _exit(2);
        p += w, left -= (size_t)w;
    }
    _exit(st == LH_OK ? 0 : 1); /* no handle closed: nothing of ours outlives _exit */
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static const char *signal_name(int sig) {
    switch (sig) {
    case SIGSEGV: return "SIGSEGV";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGILL: return "SIGILL";
    case SIGABRT: return "SIGABRT";
    case SIGTRAP: return "SIGTRAP";
    case SIGKILL: return "SIGKILL, out of memory?";
    case SIGSYS: return "SIGSYS";
    default: return "signal";
    }
}

/* Run open_here(path, h5path) in a child; LH_OK when it succeeded. */
static lh_status guard_check(const char *path, const char *h5path, lh_error *err) {
    int timeout = GUARD_TIMEOUT_S;
    const char *te = getenv("LH_DATASET_OPEN_TIMEOUT");
    if (te && atoi(te) > 0) timeout = atoi(te);
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0)
        return FAIL(LH_ERR_IO, "%s: cannot check the file in a separate process (pipe: %s)", path, strerror(errno));
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(fds[0]), close(fds[1]);
        return FAIL(LH_ERR_IO, "%s: cannot check the file in a separate process (fork: %s)", path, strerror(e));
    }
    if (pid == 0) {
        close(fds[0]);
        guard_child(path, h5path, fds[1]); /* does not return */
    }
    close(fds[1]);
    guard_msg m;
    size_t got = 0;
    int status = 0, reaped = 0, eof = 0, timed_out = 0;
    double deadline = now_s() + timeout;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) {
            reaped = 1;
            break;
        }
        if (r < 0 && errno != EINTR) break; /* ECHILD: SIGCHLD ignored, or reaped elsewhere */
        double left = deadline - now_s();
        if (left <= 0) {
            kill(pid, SIGKILL);
            while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
            timed_out = 1;
            break;
        }
        int ms = left > 0.05 ? 50 : (int)(left * 1000) + 1;
        if (eof) {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
            continue;
        }
        struct pollfd pf = {fds[0], POLLIN, 0};
        if (poll(&pf, 1, ms) > 0) {
            ssize_t n = got < sizeof m ? read(fds[0], (char *)&m + got, sizeof m - got) : 0;
            if (n > 0) got += (size_t)n;
            else if (n == 0 || errno != EINTR) eof = 1;
        }
    }
    if (!timed_out) /* whatever is still in the pipe */
        for (;;) {
            if (got >= sizeof m) break;
            ssize_t n = read(fds[0], (char *)&m + got, sizeof m - got);
            if (n > 0) got += (size_t)n;
            else if (n < 0 && errno == EINTR) continue;
            else break;
        }
    close(fds[0]);
    if (timed_out)
        return FAIL(LH_ERR_FORMAT, "%s: reading its structure did not finish within %d s (the HDF5 "
                    "library hangs on it?): the file is corrupt or hostile (LH_DATASET_OPEN_TIMEOUT "
                    "raises the limit for very large files on slow storage)", path, timeout);
    if (reaped && WIFSIGNALED(status))
        return FAIL(LH_ERR_FORMAT, "%s: the HDF5 library crashed (signal %d, %s) reading its "
                    "structure: the file is corrupt or hostile", path, WTERMSIG(status),
                    signal_name(WTERMSIG(status)));
    int full = got == sizeof m && m.code <= 0 && memchr(m.msg, '\0', sizeof m.msg);
    if (full && (!reaped || (WIFEXITED(status) && WEXITSTATUS(status) == (m.code == LH_OK ? 0 : 1)))) {
        if (m.code == LH_OK) return LH_OK;
        return lh_error_set(err, m.code, "%s", m.msg[0] ? m.msg : "cannot open (no message)");
    }
    if (reaped && WIFEXITED(status))
        return FAIL(LH_ERR_FORMAT, "%s: the HDF5 library failed (exit status %d) reading its "
                    "structure: the file is corrupt or hostile", path, WEXITSTATUS(status));
    return FAIL(LH_ERR_FORMAT, "%s: the check of its structure ended without a result (the HDF5 "
                "library crashed?): the file is corrupt or hostile", path);
}

static lh_status open_guarded(lh_dataset **out, const char *path, lh_error *err) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return FAIL(LH_ERR_NOT_FOUND, "%s: cannot open", path);
    struct stat sb;
    if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return FAIL(LH_ERR_FORMAT, "%s: not an HDF5 file (not a regular file)", path);
    }
    char h5path[64];
    snprintf(h5path, sizeof h5path, "/proc/self/fd/%d", fd);
    const char *via = access(h5path, R_OK) == 0 ? h5path : path; /* no /proc: by name */
    lh_status st = guard_check(path, via, err);
    if (st == LH_OK) st = open_here(out, path, via, err);
    close(fd); /* HDF5 holds its own descriptor */
    return st;
}

lh_status lh_dataset_open(lh_dataset **out, const char *path, lh_error *err) {
    const char *nf = getenv("LH_DATASET_NO_FORK");
    if (nf && !strcmp(nf, "1")) return open_here(out, path, path, err);
    return open_guarded(out, path, err);
}

void lh_dataset_close(lh_dataset *d) {
    if (!d) return;
    hid_t ids[] = {d->d_img, d->d_cap, d->d_weight, d->d_lat, d->d_text};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++)
        if (ids[i] >= 0) H5Dclose(ids[i]);
    if (d->file >= 0) H5Fclose(d->file);
    H5Eclear2(H5E_DEFAULT);
    free(d->img_shape), free(d->img_off), free(d->lat_shape), free(d->lat_off);
    free(d->cap_len), free(d->cap_off);
    free(d);
}

int64_t lh_dataset_count(const lh_dataset *d) { return d->n; }
int64_t lh_dataset_version(const lh_dataset *d) { return d->version; }
int64_t lh_dataset_resolution(const lh_dataset *d) { return d->resolution; }
int lh_dataset_has_latents(const lh_dataset *d) { return d->has_lat; }
int lh_dataset_has_text(const lh_dataset *d) { return d->has_text; }
const char *lh_dataset_cache_model(const lh_dataset *d) {
    return d->has_lat ? d->lat_model : d->has_text ? d->text_model : "";
}
const char *lh_dataset_crop(const lh_dataset *d) { return d->crop; }
const char *lh_dataset_path(const lh_dataset *d) { return d->path; }
void lh_dataset_item_size(const lh_dataset *d, int64_t i, int64_t *width, int64_t *height) {
    *height = d->img_shape[i * 2], *width = d->img_shape[i * 2 + 1];
}
float lh_dataset_cache_scaling_factor(const lh_dataset *d) { return d->has_lat ? d->scale : 0; }
const char *lh_dataset_latent_crop(const lh_dataset *d) { return d->has_lat ? d->lat_crop : ""; }
void lh_dataset_text_shape(const lh_dataset *d, int64_t *tokens, int64_t *dim) {
    *tokens = d->text_t, *dim = d->text_d;
}
const char *lh_dataset_text_model(const lh_dataset *d) { return d->has_text ? d->text_model : ""; }

/* ---- Reading ---- */

/* Read elements [start, start + count) of the 1-D dataset ds (or the
 * [start, 0, 0] block of rank `rank` with row size row) into buf. */
static lh_status read_range(const lh_dataset *d, hid_t ds, const char *path, hid_t mt, int rank,
                            const hsize_t *start, const hsize_t *count, void *buf, lh_error *err) {
    char r[256];
    hid_t fs = H5Dget_space(ds), ms = H5Screate_simple(rank, count, NULL);
    lh_status st = LH_OK;
    if (fs < 0 || ms < 0 || H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL) < 0 ||
        H5Dread(ds, mt, ms, fs, H5P_DEFAULT, buf) < 0)
        st = FAIL(LH_ERR_IO, "%s: %s: read failed (%s)", d->path, path, lh__h5_reason(r));
    if (fs >= 0) H5Sclose(fs);
    if (ms >= 0) H5Sclose(ms);
    return st;
}

int lh__utf8_valid(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t k;
        uint32_t min;
        if ((c & 0xE0) == 0xC0) k = 1, min = 0x80;
        else if ((c & 0xF0) == 0xE0) k = 2, min = 0x800;
        else if ((c & 0xF8) == 0xF0) k = 3, min = 0x10000;
        else return 0;
        if (n - i <= k) return 0;
        uint32_t cp = c & (0x3Fu >> k);
        for (size_t j = 1; j <= k; j++) {
            if ((p[i + j] & 0xC0) != 0x80) return 0;
            cp = cp << 6 | (p[i + j] & 0x3Fu);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += k + 1;
    }
    return 1;
}

static lh_status read_caption(lh_dataset *d, int64_t i, char **out, lh_error *err) {
    hsize_t start = d->cap_off[i], count = d->cap_off[i + 1] - d->cap_off[i];
    char *s = malloc(count + 1);
    if (!s) return FAIL(LH_ERR_NOMEM, "%s: out of memory", d->path);
    lh_status st = count ? read_range(d, d->d_cap, "/captions/data", H5T_NATIVE_UINT8, 1, &start, &count, s, err) : LH_OK;
    s[count] = '\0';
    if (st == LH_OK && (memchr(s, '\0', count) || !lh__utf8_valid(s, count)))
        st = FAIL(LH_ERR_FORMAT, "%s: /captions/data: item %lld is not valid UTF-8 text", d->path, (long long)i);
    if (st != LH_OK) free(s);
    else *out = s;
    return st;
}

lh_status lh_dataset_read(lh_dataset *d, int64_t i, int what, lh_dataset_item *item, lh_error *err) {
    memset(item, 0, sizeof *item);
    if (i < 0 || i >= d->n)
        return FAIL(LH_ERR_INVALID, "%s: item %lld out of range (%lld items)", d->path, (long long)i, (long long)d->n);
    if ((what & LH_DATASET_LATENT) && !d->has_lat)
        return FAIL(LH_ERR_NOT_FOUND, "%s: no cached latents (run `lorahost dataset cache`)", d->path);
    if ((what & LH_DATASET_TEXT) && !d->has_text)
        return FAIL(LH_ERR_NOT_FOUND, "%s: no cached text embeddings (run `lorahost dataset cache`)", d->path);
    item->height = d->img_shape[i * 2], item->width = d->img_shape[i * 2 + 1];
    item->weight = 1;
    lh_status st = read_caption(d, i, &item->caption, err);
    if (st == LH_OK && d->d_weight >= 0) {
        hsize_t start = (hsize_t)i, count = 1;
        st = read_range(d, d->d_weight, "/weights", H5T_NATIVE_FLOAT, 1, &start, &count, &item->weight, err);
    }
    if (st == LH_OK && (what & LH_DATASET_IMAGE)) {
        hsize_t start = d->img_off[i], count = d->img_off[i + 1] - d->img_off[i];
        if (!(item->rgb = malloc(count))) st = FAIL(LH_ERR_NOMEM, "%s: out of memory", d->path);
        else st = read_range(d, d->d_img, "/images/data", H5T_NATIVE_UINT8, 1, &start, &count, item->rgb, err);
    }
    if (st == LH_OK && (what & LH_DATASET_LATENT)) {
        hsize_t start = d->lat_off[i], count = d->lat_off[i + 1] - d->lat_off[i];
        memcpy(item->latent_shape, d->lat_shape + i * 3, sizeof item->latent_shape);
        if (!(item->latent = malloc(count * sizeof(float)))) st = FAIL(LH_ERR_NOMEM, "%s: out of memory", d->path);
        else st = read_range(d, d->d_lat, "/latents/data", H5T_NATIVE_FLOAT, 1, &start, &count, item->latent, err);
    }
    if (st == LH_OK && (what & LH_DATASET_TEXT)) {
        hsize_t start[3] = {(hsize_t)i, 0, 0}, count[3] = {1, (hsize_t)d->text_t, (hsize_t)d->text_d};
        item->text_shape[0] = d->text_t, item->text_shape[1] = d->text_d;
        if (!(item->text = malloc((size_t)d->text_t * (size_t)d->text_d * sizeof(float))))
            st = FAIL(LH_ERR_NOMEM, "%s: out of memory", d->path);
        else st = read_range(d, d->d_text, "/text/embeddings", H5T_NATIVE_FLOAT, 3, start, count, item->text, err);
    }
    if (st != LH_OK) lh_dataset_item_free(item);
    return st;
}

void lh_dataset_item_free(lh_dataset_item *item) {
    if (!item) return;
    free(item->rgb), free(item->caption), free(item->latent), free(item->text);
    item->rgb = NULL, item->caption = NULL, item->latent = NULL, item->text = NULL;
}
