/* Image operations for dataset import (datasets/image_ops.h): decoding through
 * libspng (host/png.c) and libjpeg, PIL's resampling in its 8-bit fixed point,
 * torchvision's crop arithmetic and kohya's bucket list. */
#include "image_ops.h"

#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
/* jpeglib.h needs FILE declared first */
#include <jpeglib.h>
#include <stdlib.h>
#include <string.h>

#include "png.h"

/* ---- Decoding ---- */

typedef struct jerr {
    struct jpeg_error_mgr mgr;
    jmp_buf jmp;
    char msg[JMSG_LENGTH_MAX];
} jerr;

static void jpeg_fail(j_common_ptr c) {
    jerr *e = (jerr *)c->err;
    (*c->err->format_message)(c, e->msg);
    longjmp(e->jmp, 1);
}
static void jpeg_quiet(j_common_ptr c, int level) { (void)c, (void)level; }

static lh_status load_jpeg(const char *path, FILE *fp, uint8_t **rgb, int64_t *w, int64_t *h,
                           lh_error *err) {
    struct jpeg_decompress_struct cinfo;
    jerr je;
    /* volatile: assigned between setjmp and a possible longjmp */
    uint8_t *volatile buf = NULL;
    memset(&cinfo, 0, sizeof cinfo);
    cinfo.err = jpeg_std_error(&je.mgr);
    je.mgr.error_exit = jpeg_fail;
    je.mgr.emit_message = jpeg_quiet;
    je.msg[0] = '\0';
    if (setjmp(je.jmp)) {
        jpeg_destroy_decompress(&cinfo);
        free(buf);
        return lh_error_set(err, LH_ERR_FORMAT, "%s: corrupt JPEG: %s", path, je.msg);
    }
    jpeg_create_decompress(&cinfo);
    jpeg_stdio_src(&cinfo, fp);
    jpeg_read_header(&cinfo, TRUE);
    if (cinfo.image_width > LH_DATASET_MAX_SIDE || cinfo.image_height > LH_DATASET_MAX_SIDE ||
        cinfo.image_width == 0 || cinfo.image_height == 0) {
        lh_status st = lh_error_set(err, LH_ERR_UNSUPPORTED, "%s: JPEG is %ux%u, sides must be 1 to %d",
                                    path, cinfo.image_width, cinfo.image_height, LH_DATASET_MAX_SIDE);
        jpeg_destroy_decompress(&cinfo);
        return st;
    }
    if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
        jpeg_destroy_decompress(&cinfo);
        return lh_error_set(err, LH_ERR_UNSUPPORTED, "%s: CMYK JPEGs are not supported", path);
    }
    cinfo.out_color_space = JCS_RGB;
    jpeg_start_decompress(&cinfo);
    size_t stride = (size_t)cinfo.output_width * 3;
    buf = malloc(stride * cinfo.output_height);
    if (!buf) {
        jpeg_destroy_decompress(&cinfo);
        return lh_error_set(err, LH_ERR_NOMEM, "%s: out of memory decoding", path);
    }
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW row = buf + stride * cinfo.output_scanline;
        jpeg_read_scanlines(&cinfo, &row, 1);
    }
    jpeg_finish_decompress(&cinfo);
    *w = cinfo.output_width, *h = cinfo.output_height;
    jpeg_destroy_decompress(&cinfo);
    *rgb = buf;
    return LH_OK;
}

lh_status lh_image_load(const char *path, uint8_t **rgb, int64_t *w, int64_t *h, lh_error *err) {
    *rgb = NULL;
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return lh_error_set(err, errno == ENOENT ? LH_ERR_NOT_FOUND : LH_ERR_IO, "%s: %s", path,
                            strerror(errno));
    unsigned char magic[8] = {0};
    size_t n = fread(magic, 1, sizeof magic, fp);
    lh_status st;
    if (n >= 3 && magic[0] == 0xFF && magic[1] == 0xD8 && magic[2] == 0xFF) {
        rewind(fp);
        st = load_jpeg(path, fp, rgb, w, h, err);
        fclose(fp);
        return st;
    }
    fclose(fp);
    if (n == 8 && !memcmp(magic, "\x89PNG\r\n\x1a\n", 8)) {
        st = lh_png_read(path, rgb, w, h, err);
        if (st == LH_OK && (*w > LH_DATASET_MAX_SIDE || *h > LH_DATASET_MAX_SIDE)) {
            free(*rgb), *rgb = NULL;
            return lh_error_set(err, LH_ERR_UNSUPPORTED, "%s: image is too large", path);
        }
        return st;
    }
    return lh_error_set(err, LH_ERR_FORMAT, "%s: neither a PNG nor a JPEG file", path);
}

/* ---- Resampling (PIL's Resample.c, bilinear, 8 bits per channel) ---- */

#define PRECISION_BITS (32 - 8 - 2)

static double bilinear(double x) {
    if (x < 0) x = -x;
    return x < 1 ? 1 - x : 0;
}

/* Per output pixel: first input index, tap count, taps at k[out * ksize]. */
static int precompute(int64_t in, int64_t out, int **bounds, int32_t **kk, int *ksize_out) {
    double scale = (double)in / (double)out, filterscale = scale < 1 ? 1 : scale;
    double support = 1.0 * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    double *pre = malloc(sizeof(double) * (size_t)ksize);
    *bounds = malloc(sizeof(int) * 2 * (size_t)out);
    *kk = malloc(sizeof(int32_t) * (size_t)out * (size_t)ksize);
    if (!pre || !*bounds || !*kk) {
        free(pre), free(*bounds), free(*kk);
        return -1;
    }
    for (int64_t xx = 0; xx < out; xx++) {
        double center = ((double)xx + 0.5) * scale, ww = 0, ss = 1.0 / filterscale;
        int64_t xmin = (int64_t)(center - support + 0.5), xmax = (int64_t)(center + support + 0.5);
        if (xmin < 0) xmin = 0;
        if (xmax > in) xmax = in;
        xmax -= xmin;
        int x;
        for (x = 0; x < xmax; x++) {
            double wv = bilinear(((double)x + (double)xmin - center + 0.5) * ss);
            pre[x] = wv, ww += wv;
        }
        for (x = 0; x < xmax; x++)
            if (ww != 0) pre[x] /= ww;
        for (x = 0; x < ksize; x++) {
            double v = x < xmax ? pre[x] : 0;
            (*kk)[xx * ksize + x] =
                (int32_t)(v < 0 ? v * (1 << PRECISION_BITS) - 0.5 : v * (1 << PRECISION_BITS) + 0.5);
        }
        (*bounds)[xx * 2] = (int)xmin, (*bounds)[xx * 2 + 1] = (int)xmax;
    }
    free(pre);
    return ksize;
}

static uint8_t clip8(int64_t v) {
    v >>= PRECISION_BITS;
    return v < 0 ? 0 : v > 255 ? 255 : (uint8_t)v;
}

lh_status lh_image_resize(uint8_t *dst, int64_t dw, int64_t dh, const uint8_t *src, int64_t sw,
                          int64_t sh, lh_error *err) {
    if (dw <= 0 || dh <= 0 || sw <= 0 || sh <= 0 || dw > LH_DATASET_MAX_SIDE ||
        dh > LH_DATASET_MAX_SIDE || sw > LH_DATASET_MAX_SIDE || sh > LH_DATASET_MAX_SIDE)
        return lh_error_set(err, LH_ERR_INVALID, "resize %lldx%lld -> %lldx%lld: bad size",
                            (long long)sw, (long long)sh, (long long)dw, (long long)dh);
    int *bx = NULL, *by = NULL;
    int32_t *kx = NULL, *ky = NULL;
    uint8_t *tmp = NULL;
    lh_status st = LH_OK;
    int kxs = precompute(sw, dw, &bx, &kx, &(int){0});
    int kys = kxs < 0 ? -1 : precompute(sh, dh, &by, &ky, &(int){0});
    if (kys >= 0) tmp = malloc((size_t)dw * (size_t)sh * 3);
    if (kxs < 0 || kys < 0 || !tmp) {
        st = lh_error_set(err, LH_ERR_NOMEM, "out of memory resizing an image");
        goto done;
    }
    /* PIL resizes only along the axes that change; an unchanged axis keeps
     * its pixels exactly (its taps are then a single 1.0). */
    for (int64_t y = 0; y < sh; y++)
        for (int64_t x = 0; x < dw; x++) {
            const int32_t *k = kx + x * kxs;
            int64_t x0 = bx[x * 2], n = bx[x * 2 + 1];
            for (int c = 0; c < 3; c++) {
                int64_t ss = (int64_t)1 << (PRECISION_BITS - 1);
                for (int64_t t = 0; t < n; t++) ss += (int64_t)src[(y * sw + x0 + t) * 3 + c] * k[t];
                tmp[(y * dw + x) * 3 + c] = dw == sw ? src[(y * sw + x) * 3 + c] : clip8(ss);
            }
        }
    for (int64_t y = 0; y < dh; y++) {
        const int32_t *k = ky + y * kys;
        int64_t y0 = by[y * 2], n = by[y * 2 + 1];
        for (int64_t x = 0; x < dw; x++)
            for (int c = 0; c < 3; c++) {
                int64_t ss = (int64_t)1 << (PRECISION_BITS - 1);
                for (int64_t t = 0; t < n; t++) ss += (int64_t)tmp[((y0 + t) * dw + x) * 3 + c] * k[t];
                dst[(y * dw + x) * 3 + c] = dh == sh ? tmp[(y * dw + x) * 3 + c] : clip8(ss);
            }
    }
done:
    free(bx), free(by), free(kx), free(ky), free(tmp);
    return st;
}

void lh_image_resize_shape(int64_t w, int64_t h, int64_t size, int64_t *ow, int64_t *oh) {
    int64_t s = w < h ? w : h, l = w < h ? h : w;
    int64_t nl = (int64_t)((double)size * (double)l / (double)s);
    if (w <= h) *ow = size, *oh = nl;
    else *ow = nl, *oh = size;
}

int64_t lh_image_center_offset(int64_t in, int64_t out) {
    int64_t d = in - out; /* round(d / 2) with ties to even */
    if (d % 2 == 0) return d / 2;
    int64_t lo = (d - 1) / 2;
    return lo % 2 == 0 ? lo : lo + 1;
}

void lh_image_crop(uint8_t *dst, const uint8_t *src, int64_t sw, int64_t x0, int64_t y0, int64_t cw,
                   int64_t ch) {
    for (int64_t y = 0; y < ch; y++)
        memcpy(dst + (size_t)(y * cw * 3), src + (size_t)(((y0 + y) * sw + x0) * 3), (size_t)cw * 3);
}

/* ---- Buckets ---- */

int lh_image_buckets(int64_t res, int64_t *bw, int64_t *bh, int cap) {
    const int64_t div = 64;
    int64_t min_size = (res / 2 / div) * div, max_size = (2 * res / div) * div;
    if (min_size < div) min_size = div;
    int64_t area = res * res;
    int n = 0;
#define ADD(W, H)                                                                                  \
    do {                                                                                           \
        int dup = 0;                                                                               \
        for (int j = 0; j < n; j++) dup |= bw[j] == (W) && bh[j] == (H);                           \
        if (!dup && n < cap) bw[n] = (W), bh[n] = (H), n++;                                        \
    } while (0)
    int64_t side = ((int64_t)sqrt((double)area) / div) * div;
    if (side > 0) ADD(side, side);
    for (int64_t w = min_size; w <= max_size; w += div) {
        int64_t h = ((area / w) / div) * div;
        if (h > max_size) h = max_size;
        if (h >= min_size) {
            ADD(w, h);
            ADD(h, w);
        }
    }
#undef ADD
    /* sort by aspect ratio, then width (kohya sorts the set of (w, h)) */
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0; j--) {
            double a = (double)bw[j - 1] / (double)bh[j - 1], b = (double)bw[j] / (double)bh[j];
            if (a < b || (a == b && bw[j - 1] <= bw[j])) break;
            int64_t t = bw[j];
            bw[j] = bw[j - 1], bw[j - 1] = t;
            t = bh[j], bh[j] = bh[j - 1], bh[j - 1] = t;
        }
    return n;
}

int lh_image_bucket_for(const int64_t *bw, const int64_t *bh, int n, int64_t w, int64_t h) {
    double ar = (double)w / (double)h, best = INFINITY;
    int k = 0;
    for (int i = 0; i < n; i++) {
        double e = fabs((double)bw[i] / (double)bh[i] - ar);
        if (e < best) best = e, k = i;
    }
    return k;
}
