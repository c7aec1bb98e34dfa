/* Writing datasets (datasets/dataset.h, layout in docs/datasets.md): import a
 * folder of images + captions, and add cached latents / text embeddings made
 * with a model. Both write a temporary file next to the target, fsync it,
 * rename it over the target and fsync the directory. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dataset.h"
#include "dataset_h5.h"
#include "image_ops.h"
#include "log.h"
#include "model.h"

#define FAIL(code, ...) lh_error_set(err, code, __VA_ARGS__)

/* ---- HDF5 writing helpers ---- */

/* An extendible dataset: dims[0] grows from 0, chunks of chunk[]. */
static hid_t create_ext(hid_t f, const char *path, hid_t type, int rank, const hsize_t *dims,
                        const hsize_t *chunk) {
    hsize_t max[3] = {H5S_UNLIMITED, rank > 1 ? dims[1] : 0, rank > 2 ? dims[2] : 0};
    hid_t s = H5Screate_simple(rank, dims, max), p = H5Pcreate(H5P_DATASET_CREATE), d = -1;
    if (s >= 0 && p >= 0 && H5Pset_chunk(p, rank, chunk) >= 0)
        d = H5Dcreate2(f, path, type, s, H5P_DEFAULT, p, H5P_DEFAULT);
    if (s >= 0) H5Sclose(s);
    if (p >= 0) H5Pclose(p);
    return d;
}

/* Append rows [n0, n0 + count) (each of dims[1..] elements) to ds. */
static herr_t append(hid_t ds, hid_t mt, int rank, hsize_t n0, hsize_t count, const hsize_t *rest,
                     const void *buf) {
    hsize_t dims[3] = {n0 + count, rank > 1 ? rest[0] : 0, rank > 2 ? rest[1] : 0};
    hsize_t start[3] = {n0, 0, 0}, cnt[3] = {count, dims[1], dims[2]};
    if (H5Dset_extent(ds, dims) < 0) return -1;
    hid_t fs = H5Dget_space(ds), ms = H5Screate_simple(rank, cnt, NULL);
    herr_t r = -1;
    if (fs >= 0 && ms >= 0 && H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, cnt, NULL) >= 0)
        r = H5Dwrite(ds, mt, ms, fs, H5P_DEFAULT, buf);
    if (fs >= 0) H5Sclose(fs);
    if (ms >= 0) H5Sclose(ms);
    return r;
}

static herr_t attr_write(hid_t o, const char *name, hid_t type, const void *v) {
    if (H5Aexists(o, name) > 0) H5Adelete(o, name);
    hid_t s = H5Screate(H5S_SCALAR), a = -1;
    herr_t r = -1;
    if (s >= 0) a = H5Acreate2(o, name, type, s, H5P_DEFAULT, H5P_DEFAULT);
    if (a >= 0) r = H5Awrite(a, type, v);
    if (a >= 0) H5Aclose(a);
    if (s >= 0) H5Sclose(s);
    return r;
}

/* A fixed-length, NUL-terminated UTF-8 string (the reader refuses
 * variable-length ones: see docs/datasets.md). */
static herr_t attr_str(hid_t o, const char *name, const char *v) {
    hid_t t = H5Tcopy(H5T_C_S1);
    if (t < 0) return -1;
    herr_t r = -1;
    if (H5Tset_size(t, strlen(v) + 1) >= 0 && H5Tset_cset(t, H5T_CSET_UTF8) >= 0 &&
        H5Tset_strpad(t, H5T_STR_NULLTERM) >= 0)
        r = attr_write(o, name, t, v);
    H5Tclose(t);
    return r;
}

/* fsync path, rename it to dst, fsync dst's directory. */
static lh_status commit_file(const char *tmp, const char *dst, lh_error *err) {
    int fd = open(tmp, O_RDONLY);
    if (fd < 0 || fsync(fd) != 0) {
        if (fd >= 0) close(fd);
        return FAIL(LH_ERR_IO, "%s: fsync failed: %s", tmp, strerror(errno));
    }
    close(fd);
    if (rename(tmp, dst) != 0) return FAIL(LH_ERR_IO, "%s: rename failed: %s", dst, strerror(errno));
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", dst);
    int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) {
        fsync(dfd); /* best effort */
        close(dfd);
    }
    return LH_OK;
}

/* ---- Import ---- */

typedef struct writer {
    hid_t f, data, shape, cap, cap_len, src, str;
    hsize_t n, bytes, cap_bytes;
} writer;

static int is_image(const char *name) {
    const char *dot = strrchr(name, '.');
    return dot && dot != name && (!strcasecmp(dot, ".png") || !strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg"));
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void free_list(char **v, size_t n) {
    for (size_t i = 0; i < n; i++) free(v[i]);
    free(v);
}

static lh_status list_images(const char *dir, char ***out, size_t *n_out, lh_error *err) {
    DIR *dp = opendir(dir);
    if (!dp) return FAIL(errno == ENOENT ? LH_ERR_NOT_FOUND : LH_ERR_IO, "%s: %s", dir, strerror(errno));
    char **v = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(dp))) {
        if (e->d_name[0] == '.' || !is_image(e->d_name)) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            char **nv = cap <= LH_DATASET_MAX_ITEMS ? realloc(v, cap * sizeof *v) : NULL;
            if (!nv) {
                closedir(dp), free_list(v, n);
                return FAIL(LH_ERR_NOMEM, "%s: too many images", dir);
            }
            v = nv;
        }
        if (!(v[n] = strdup(e->d_name))) {
            closedir(dp), free_list(v, n);
            return FAIL(LH_ERR_NOMEM, "out of memory");
        }
        n++;
    }
    closedir(dp);
    if (n == 0) {
        free(v);
        return FAIL(LH_ERR_NOT_FOUND, "%s: no .png, .jpg or .jpeg images", dir);
    }
    qsort(v, n, sizeof *v, cmp_str);
    *out = v, *n_out = n;
    return LH_OK;
}

/* The caption next to image `name`: <stem>.txt, whitespace trimmed.
 * *missing = 1 (and an empty caption) when there is none. */
static lh_status read_caption(const char *dir, const char *name, char **out, int *missing,
                              lh_error *err) {
    char path[4096];
    const char *dot = strrchr(name, '.');
    snprintf(path, sizeof path, "%s/%.*s.txt", dir, (int)(dot - name), name);
    *missing = 0;
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        if (errno != ENOENT) return FAIL(LH_ERR_IO, "%s: %s", path, strerror(errno));
        *missing = 1;
        return (*out = strdup("")) ? LH_OK : FAIL(LH_ERR_NOMEM, "out of memory");
    }
    char *buf = malloc(LH_DATASET_MAX_CAPTION + 1);
    if (!buf) {
        fclose(fp);
        return FAIL(LH_ERR_NOMEM, "out of memory");
    }
    size_t n = fread(buf, 1, LH_DATASET_MAX_CAPTION + 1, fp);
    int bad = ferror(fp);
    fclose(fp);
    if (bad) {
        free(buf);
        return FAIL(LH_ERR_IO, "%s: read failed", path);
    }
    if (n > LH_DATASET_MAX_CAPTION) {
        free(buf);
        return FAIL(LH_ERR_INVALID, "%s: caption longer than %d bytes", path, LH_DATASET_MAX_CAPTION);
    }
    size_t a = 0;
    if (n >= 3 && !memcmp(buf, "\xEF\xBB\xBF", 3)) a = 3; /* BOM */
    while (a < n && strchr(" \t\r\n", buf[a])) a++;
    while (n > a && strchr(" \t\r\n", buf[n - 1])) n--;
    if (memchr(buf + a, '\0', n - a) || !lh__utf8_valid(buf + a, n - a)) {
        free(buf);
        return FAIL(LH_ERR_FORMAT, "%s: caption is not valid UTF-8 text", path);
    }
    memmove(buf, buf + a, n - a);
    buf[n - a] = '\0';
    *out = buf;
    return LH_OK;
}

/* Resize/crop one decoded image per the import options into *out (malloc'd). */
static lh_status transform(const lh_dataset_import_opts *o, const int64_t *bw, const int64_t *bh,
                           int nb, uint8_t *rgb, int64_t w, int64_t h, uint8_t **out, int64_t *ow,
                           int64_t *oh, lh_error *err) {
    int64_t rw, rh, cw, ch;
    if (o->crop == LH_DATASET_CROP_BUCKET) {
        int k = lh_image_bucket_for(bw, bh, nb, w, h);
        cw = bw[k], ch = bh[k];
        /* cover the bucket, keeping the aspect ratio (kohya) */
        if ((double)cw / (double)ch > (double)w / (double)h)
            rw = cw, rh = (int64_t)((double)cw * (double)h / (double)w + 0.5);
        else
            rh = ch, rw = (int64_t)((double)ch * (double)w / (double)h + 0.5);
        if (rw < cw) rw = cw;
        if (rh < ch) rh = ch;
    } else {
        lh_image_resize_shape(w, h, o->resolution, &rw, &rh);
        cw = ch = o->resolution;
        if (o->crop == LH_DATASET_CROP_RANDOM) cw = rw, ch = rh;
    }
    if (rw > LH_DATASET_MAX_SIDE || rh > LH_DATASET_MAX_SIDE)
        return FAIL(LH_ERR_UNSUPPORTED, "resized image would be %lldx%lld, over %d", (long long)rw,
                    (long long)rh, LH_DATASET_MAX_SIDE);
    uint8_t *rs = malloc((size_t)rw * (size_t)rh * 3), *c = malloc((size_t)cw * (size_t)ch * 3);
    lh_status st = rs && c ? lh_image_resize(rs, rw, rh, rgb, w, h, err) : FAIL(LH_ERR_NOMEM, "out of memory");
    if (st == LH_OK)
        lh_image_crop(c, rs, rw, lh_image_center_offset(rw, cw), lh_image_center_offset(rh, ch), cw, ch);
    free(rs);
    if (st != LH_OK) {
        free(c);
        return st;
    }
    *out = c, *ow = cw, *oh = ch;
    return LH_OK;
}

static lh_status writer_open(writer *w, const char *path, lh_error *err) {
    char r[256];
    memset(w, 0, sizeof *w);
    w->f = w->data = w->shape = w->cap = w->cap_len = w->src = w->str = -1;
    w->f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (w->f < 0) return FAIL(LH_ERR_IO, "%s: cannot create (%s)", path, lh__h5_reason(r));
    hid_t g = H5Gcreate2(w->f, "/images", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (g >= 0) H5Gclose(g);
    hid_t g2 = H5Gcreate2(w->f, "/captions", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (g2 >= 0) H5Gclose(g2);
    hsize_t z[2] = {0, 2}, c2[2] = {256, 2}, cs = 256;
    w->str = lh__h5_str_type();
    w->shape = create_ext(w->f, "/images/shape", H5T_STD_I64LE, 2, z, c2);
    hsize_t cc = 4096;
    w->cap = create_ext(w->f, "/captions/data", H5T_STD_U8LE, 1, z, &cc);
    w->cap_len = create_ext(w->f, "/captions/length", H5T_STD_I64LE, 1, z, &cs);
    if (w->str >= 0) w->src = create_ext(w->f, "/source_names", w->str, 1, z, &cs);
    if (g < 0 || g2 < 0 || w->shape < 0 || w->cap < 0 || w->cap_len < 0 || w->src < 0)
        return FAIL(LH_ERR_IO, "%s: cannot create the layout (%s)", path, lh__h5_reason(r));
    return LH_OK;
}

static void writer_close(writer *w) {
    hid_t ds[] = {w->data, w->shape, w->cap, w->cap_len, w->src};
    for (int i = 0; i < 5; i++)
        if (ds[i] >= 0) H5Dclose(ds[i]);
    if (w->str >= 0) H5Tclose(w->str);
    if (w->f >= 0) H5Fclose(w->f);
    w->f = -1;
}

static lh_status writer_add(writer *w, const char *path, const uint8_t *rgb, int64_t iw, int64_t ih,
                            const char *caption, const char *src, lh_error *err) {
    char r[256];
    hsize_t n = (hsize_t)iw * (hsize_t)ih * 3, two = 2;
    int64_t shape[2] = {ih, iw}, len = (int64_t)strlen(caption);
    hsize_t cl = (hsize_t)len;
    if (w->data < 0) { /* chunks of about one image, 4 KiB to 256 KiB */
        hsize_t z = 0, c1 = n < 4096 ? 4096 : n > (1 << 18) ? (1 << 18) : n;
        w->data = create_ext(w->f, "/images/data", H5T_STD_U8LE, 1, &z, &c1);
        if (w->data < 0) return FAIL(LH_ERR_IO, "%s: cannot create /images/data (%s)", path, lh__h5_reason(r));
    }
    if (append(w->data, H5T_NATIVE_UINT8, 1, w->bytes, n, NULL, rgb) < 0 ||
        append(w->shape, H5T_NATIVE_INT64, 2, w->n, 1, &two, shape) < 0 ||
        (cl && append(w->cap, H5T_NATIVE_UINT8, 1, w->cap_bytes, cl, NULL, caption) < 0) ||
        append(w->cap_len, H5T_NATIVE_INT64, 1, w->n, 1, NULL, &len) < 0 ||
        append(w->src, w->str, 1, w->n, 1, NULL, &src) < 0)
        return FAIL(LH_ERR_IO, "%s: write failed (%s)", path, lh__h5_reason(r));
    w->bytes += n, w->cap_bytes += cl, w->n++;
    return LH_OK;
}

static const char *crop_names[LH_DATASET_CROP_COUNT] = {"center", "random", "bucket"};

lh_status lh_dataset_import(const char *dir, const char *out, const lh_dataset_import_opts *o,
                            int64_t *n_items, int64_t *n_skipped, int64_t *n_no_caption,
                            lh_error *err) {
    lh__h5_quiet();
    int64_t res = o->resolution;
    if ((unsigned)o->crop >= LH_DATASET_CROP_COUNT) return FAIL(LH_ERR_INVALID, "bad crop mode");
    int64_t mult = o->crop == LH_DATASET_CROP_BUCKET ? 64 : 8;
    if (res < mult || res > 8192 || res % mult)
        return FAIL(LH_ERR_INVALID, "--resolution %lld: want a multiple of %lld from %lld to 8192%s",
                    (long long)res, (long long)mult, (long long)mult,
                    mult == 64 ? " with --buckets" : " (the VAE downsamples by 8)");
    int64_t bw[64], bh[64];
    int nb = o->crop == LH_DATASET_CROP_BUCKET ? lh_image_buckets(res, bw, bh, 64) : 0;
    char **names = NULL;
    size_t n = 0;
    lh_status st = list_images(dir, &names, &n, err);
    if (st != LH_OK) return st;
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", out, (int)getpid());
    writer w;
    st = writer_open(&w, tmp, err);
    int64_t skipped = 0, nocap = 0;
    for (size_t i = 0; i < n && st == LH_OK; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        uint8_t *rgb = NULL, *img = NULL;
        int64_t iw = 0, ih = 0, ow = 0, oh = 0;
        lh_error e = {0};
        st = lh_image_load(path, &rgb, &iw, &ih, &e);
        if (st == LH_OK) st = transform(o, bw, bh, nb, rgb, iw, ih, &img, &ow, &oh, &e);
        free(rgb);
        if (st != LH_OK) {
            if (o->skip_bad && st != LH_ERR_NOMEM) {
                lh_log(LH_LOG_WARN, "dataset", "skipping %s", e.msg);
                skipped++, st = LH_OK;
            } else {
                lh_error_set(err, st, "%s (--skip-bad skips images that fail to decode)", e.msg);
            }
            if (o->progress) o->progress(o->user, (int64_t)i + 1, (int64_t)n, names[i]);
            continue;
        }
        char *caption = NULL;
        int missing = 0;
        st = read_caption(dir, names[i], &caption, &missing, err);
        if (st == LH_OK && missing) {
            lh_log(LH_LOG_WARN, "dataset", "%s: no caption file, using an empty caption", path);
            nocap++;
        }
        if (st == LH_OK) st = writer_add(&w, tmp, img, ow, oh, caption, names[i], err);
        free(img), free(caption);
        if (o->progress) o->progress(o->user, (int64_t)i + 1, (int64_t)n, names[i]);
    }
    if (st == LH_OK && w.n == 0) st = FAIL(LH_ERR_INVALID, "%s: every image was skipped", dir);
    if (st == LH_OK) {
        int32_t version = LH_DATASET_VERSION, buckets = o->crop == LH_DATASET_CROP_BUCKET;
        char r[256];
        if (attr_write(w.f, LH_DATASET_VERSION_ATTR, H5T_STD_I32LE, &version) < 0 ||
            attr_write(w.f, "resolution", H5T_STD_I64LE, &res) < 0 ||
            attr_str(w.f, "crop", crop_names[o->crop]) < 0 ||
            attr_write(w.f, "buckets", H5T_STD_I32LE, &buckets) < 0 ||
            attr_str(w.f, "resize", "bilinear (PIL antialiased), short side to resolution") < 0 ||
            attr_str(w.f, "created_by", "lorahost " LH_VERSION_STRING) < 0)
            st = FAIL(LH_ERR_IO, "%s: cannot write attributes (%s)", tmp, lh__h5_reason(r));
        if (st == LH_OK && H5Fflush(w.f, H5F_SCOPE_GLOBAL) < 0)
            st = FAIL(LH_ERR_IO, "%s: flush failed (%s)", tmp, lh__h5_reason(r));
    }
    int64_t count = (int64_t)w.n;
    writer_close(&w);
    if (st == LH_OK) st = commit_file(tmp, out, err);
    if (st != LH_OK) unlink(tmp);
    free_list(names, n);
    if (n_items) *n_items = count;
    if (n_skipped) *n_skipped = skipped;
    if (n_no_caption) *n_no_caption = nocap;
    return st;
}

/* ---- Cache ---- */

static lh_status copy_file(const char *src, const char *dst, lh_error *err) {
    int in = open(src, O_RDONLY), out = in < 0 ? -1 : open(dst, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    lh_status st = LH_OK;
    if (in < 0 || out < 0) {
        st = FAIL(LH_ERR_IO, "%s: %s", in < 0 ? src : dst, strerror(errno));
    } else {
        static char buf[1 << 16];
        ssize_t k;
        while ((k = read(in, buf, sizeof buf)) > 0)
            if (write(out, buf, (size_t)k) != k) {
                st = FAIL(LH_ERR_IO, "%s: write failed: %s", dst, strerror(errno));
                break;
            }
        if (k < 0) st = FAIL(LH_ERR_IO, "%s: read failed: %s", src, strerror(errno));
    }
    if (in >= 0) close(in);
    if (out >= 0 && close(out) != 0 && st == LH_OK) st = FAIL(LH_ERR_IO, "%s: close failed", dst);
    return st;
}

lh_status lh_dataset_cache(const char *path, struct lh_model *m, const char *model_path,
                           void (*progress)(void *user, int64_t done, int64_t total, const char *name),
                           void *user, lh_error *err) {
    if (!m->vae)
        return lh_error_set(err, LH_ERR_UNSUPPORTED,
                            "dataset %s: model %s is pixel-space (no VAE): there are no latents "
                            "to cache; train on the dataset as it is (images are read directly)",
                            path, model_path ? model_path : m->info.path);
    lh_dataset *d = NULL;
    lh_status st = lh_dataset_open(&d, path, err);
    if (st != LH_OK) return st;
    lh_backend *be = m->be;
    int64_t n = lh_dataset_count(d), res = lh_dataset_resolution(d), ds = lh_vae_downscale(m->vae);
    int64_t lc = lh_vae_get_config(m->vae)->latent_channels, dim = lh_clip_hidden_size(m->clip);
    int random = !strcmp(lh_dataset_crop(d), "random");
    char tmp[4096], r[256];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    hid_t f = -1, str = -1, dlat = -1, dshape = -1, dtext = -1;
    float *img_be = NULL, *mean_be = NULL, *emb_be = NULL, *img = NULL, *lat = NULL, *emb = NULL;
    size_t cap_px = 0;
    if ((st = copy_file(path, tmp, err)) != LH_OK) goto done;
    f = H5Fopen(tmp, H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0) {
        st = FAIL(LH_ERR_IO, "%s: cannot open for writing (%s)", tmp, lh__h5_reason(r));
        goto done;
    }
    if (H5Lexists(f, "/latents", H5P_DEFAULT) > 0) H5Ldelete(f, "/latents", H5P_DEFAULT);
    if (H5Lexists(f, "/text", H5P_DEFAULT) > 0) H5Ldelete(f, "/text", H5P_DEFAULT);
    H5Eclear2(H5E_DEFAULT);
    hid_t g1 = H5Gcreate2(f, "/latents", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    hid_t g2 = H5Gcreate2(f, "/text", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    int64_t w0 = res, h0 = res;
    if (!random && n > 0) lh_dataset_item_size(d, 0, &w0, &h0);
    hsize_t c1 = (hsize_t)(lc * (w0 / ds) * (h0 / ds)), z[3] = {0, 3, 0}, c3[2] = {256, 3};
    c1 = c1 < 1024 ? 1024 : c1 > (1 << 16) ? (1 << 16) : c1; /* about one latent */
    dlat = create_ext(f, "/latents/data", H5T_IEEE_F32LE, 1, z, &c1);
    dshape = create_ext(f, "/latents/shape", H5T_STD_I64LE, 2, z, c3);
    hsize_t tz[3] = {0, LH_TOKENIZER_WINDOW, (hsize_t)dim}, tc[3] = {1, LH_TOKENIZER_WINDOW, (hsize_t)dim};
    dtext = create_ext(f, "/text/embeddings", H5T_IEEE_F32LE, 3, tz, tc);
    float sf = lh_vae_scaling_factor(m->vae);
    int ok = g1 >= 0 && g2 >= 0 && dlat >= 0 && dshape >= 0 && dtext >= 0 &&
             attr_str(g1, "model", model_path) >= 0 && attr_write(g1, "scaling_factor", H5T_IEEE_F32LE, &sf) >= 0 &&
             attr_str(g1, "crop", random ? "center" : "none") >= 0 &&
             attr_str(g1, "posterior", "mode (scaling_factor * mean)") >= 0 &&
             attr_str(g2, "model", model_path) >= 0 &&
             attr_write(g2, "clip_skip", H5T_STD_I32LE, &(int32_t){0}) >= 0;
    if (g1 >= 0) H5Gclose(g1);
    if (g2 >= 0) H5Gclose(g2);
    if (!ok) {
        st = FAIL(LH_ERR_IO, "%s: cannot create the cache layout (%s)", tmp, lh__h5_reason(r));
        goto done;
    }
    size_t emb_n = (size_t)LH_TOKENIZER_WINDOW * (size_t)dim;
    emb_be = be->ops->alloc(be, emb_n * sizeof(float));
    emb = malloc(emb_n * sizeof(float));
    if (!emb_be || !emb) {
        st = FAIL(LH_ERR_NOMEM, "out of memory for text embeddings");
        goto done;
    }
    hsize_t lat_len = 0;
    for (int64_t i = 0; i < n && st == LH_OK; i++) {
        lh_dataset_item it;
        if ((st = lh_dataset_read(d, i, LH_DATASET_IMAGE, &it, err)) != LH_OK) break;
        int64_t w = it.width, h = it.height, x0 = 0, y0 = 0;
        if (random) {
            x0 = lh_image_center_offset(w, res), y0 = lh_image_center_offset(h, res);
            w = h = res;
        }
        if (w % ds || h % ds || w > it.width || h > it.height) {
            st = FAIL(LH_ERR_SHAPE, "%s: item %lld: %lldx%lld is not a multiple of the VAE's %lld",
                      path, (long long)i, (long long)w, (long long)h, (long long)ds);
            lh_dataset_item_free(&it);
            break;
        }
        size_t px = (size_t)w * (size_t)h, lpx = px / (size_t)(ds * ds);
        if (px > cap_px) {
            if (img_be) be->ops->free(be, img_be);
            if (mean_be) be->ops->free(be, mean_be);
            free(img), free(lat);
            img_be = be->ops->alloc(be, px * 3 * sizeof(float));
            mean_be = be->ops->alloc(be, lpx * (size_t)lc * sizeof(float));
            img = malloc(px * 3 * sizeof(float));
            lat = malloc(lpx * (size_t)lc * sizeof(float));
            cap_px = px;
            if (!img_be || !mean_be || !img || !lat) {
                st = FAIL(LH_ERR_NOMEM, "out of memory for a %lldx%lld image", (long long)w, (long long)h);
                lh_dataset_item_free(&it);
                break;
            }
        }
        /* ToTensor + Normalize([0.5], [0.5]), [3, h, w] */
        for (int64_t y = 0; y < h; y++)
            for (int64_t x = 0; x < w; x++)
                for (int c = 0; c < 3; c++)
                    img[(size_t)c * px + (size_t)(y * w + x)] =
                        ((float)it.rgb[((size_t)(y0 + y) * (size_t)it.width + (size_t)(x0 + x)) * 3 + (size_t)c] / 255.0f - 0.5f) / 0.5f;
        int32_t ids[LH_TOKENIZER_WINDOW];
        size_t nw = 0;
        st = be->ops->upload(be, img_be, img, px * 3 * sizeof(float));
        if (st == LH_OK) st = lh_vae_encode(m->vae, mean_be, NULL, img_be, 1, h, w, err);
        if (st == LH_OK) st = lh_vae_sample_latents(m->vae, mean_be, mean_be, NULL, NULL, (int64_t)lpx * lc, err);
        if (st == LH_OK) st = be->ops->download(be, lat, mean_be, lpx * (size_t)lc * sizeof(float));
        if (st == LH_OK)
            st = lh_tokenizer_window(m->tok, it.caption, m->pad_id, LH_TOKENIZER_TRUNCATE, ids, 1, &nw, err);
        if (st == LH_OK) st = lh_clip_encode(m->clip, emb_be, ids, 1, LH_TOKENIZER_WINDOW, 0, err);
        if (st == LH_OK) st = be->ops->download(be, emb, emb_be, emb_n * sizeof(float));
        if (st != LH_OK) {
            lh_error_prefix(err, "%s: item %lld", path, (long long)i);
        } else {
            int64_t shape[3] = {lc, h / ds, w / ds};
            hsize_t three = 3, rest[2] = {LH_TOKENIZER_WINDOW, (hsize_t)dim};
            if (append(dlat, H5T_NATIVE_FLOAT, 1, lat_len, lpx * (size_t)lc, NULL, lat) < 0 ||
                append(dshape, H5T_NATIVE_INT64, 2, (hsize_t)i, 1, &three, shape) < 0 ||
                append(dtext, H5T_NATIVE_FLOAT, 3, (hsize_t)i, 1, rest, emb) < 0)
                st = FAIL(LH_ERR_IO, "%s: write failed (%s)", tmp, lh__h5_reason(r));
            lat_len += lpx * (size_t)lc;
        }
        if (progress) progress(user, i + 1, n, "");
        lh_dataset_item_free(&it);
    }
done:
    if (dlat >= 0) H5Dclose(dlat);
    if (dshape >= 0) H5Dclose(dshape);
    if (dtext >= 0) H5Dclose(dtext);
    if (str >= 0) H5Tclose(str);
    if (f >= 0 && H5Fclose(f) < 0 && st == LH_OK) st = FAIL(LH_ERR_IO, "%s: close failed (%s)", tmp, lh__h5_reason(r));
    lh_dataset_close(d);
    if (img_be) be->ops->free(be, img_be);
    if (mean_be) be->ops->free(be, mean_be);
    if (emb_be) be->ops->free(be, emb_be);
    free(img), free(lat), free(emb);
    if (st == LH_OK) st = commit_file(tmp, path, err);
    if (st != LH_OK) unlink(tmp);
    return st;
}
