/* PNG writing (RGB8 + a text chunk, atomic) and reading (any PNG as RGB8)
 * with libspng. */
#include "png.h"

#include "file_atomic.h"

#include <errno.h>
#include <fcntl.h>
#include <spng.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_FILE_BYTES ((size_t)1 << 30)

/* ---- Writing ---- */

static int is_ascii(const char *s) {
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80) return 0;
    return 1;
}

lh_status lh_png_write(const char *path, const uint8_t *rgb, int64_t width, int64_t height,
                       const char *key, const char *text, lh_error *err) {
    lh_png_text t = {key, text};
    return lh_png_write_texts(path, rgb, width, height, &t, key && text ? 1 : 0, err);
}

lh_status lh_png_write_texts(const char *path, const uint8_t *rgb, int64_t width, int64_t height,
                             const lh_png_text *texts, size_t n_texts, lh_error *err) {
    void *buf = NULL;
    size_t len = 0;
    lh_status st = lh_png_encode(&buf, &len, path, rgb, width, height, texts, n_texts, err);
    if (st == LH_OK) st = lh_write_file_atomic(path, buf, len, err);
    free(buf);
    return st;
}

lh_status lh_png_encode(void **out, size_t *out_len, const char *name, const uint8_t *rgb,
                        int64_t width, int64_t height, const lh_png_text *texts, size_t n_texts,
                        lh_error *err) {
    *out = NULL;
    *out_len = 0;
    if (width < 1 || height < 1 || width > LH_PNG_MAX_SIDE || height > LH_PNG_MAX_SIDE)
        return lh_error_set(err, LH_ERR_INVALID, "%s: image size %lldx%lld out of range", name,
                            (long long)width, (long long)height);
    if (n_texts > LH_PNG_MAX_TEXTS)
        return lh_error_set(err, LH_ERR_INVALID, "%s: at most %d PNG text chunks", name,
                            LH_PNG_MAX_TEXTS);
    for (size_t i = 0; i < n_texts; i++)
        if (!texts[i].key || !texts[i].text || strlen(texts[i].key) < 1 ||
            strlen(texts[i].key) > 79)
            return lh_error_set(err, LH_ERR_INVALID, "%s: PNG text key must be 1..79 bytes", name);
    spng_ctx *ctx = spng_ctx_new(SPNG_CTX_ENCODER);
    if (!ctx) return lh_error_set(err, LH_ERR_NOMEM, "%s: out of memory", name);
    lh_status st = LH_OK;
    int rc = spng_set_option(ctx, SPNG_ENCODE_TO_BUFFER, 1);
    struct spng_ihdr ihdr = {(uint32_t)width, (uint32_t)height, 8, SPNG_COLOR_TYPE_TRUECOLOR, 0, 0, 0};
    if (!rc) rc = spng_set_ihdr(ctx, &ihdr);
    if (!rc && n_texts) {
        struct spng_text t[LH_PNG_MAX_TEXTS];
        memset(t, 0, sizeof t);
        for (size_t i = 0; i < n_texts; i++) {
            snprintf(t[i].keyword, sizeof t[i].keyword, "%s", texts[i].key);
            t[i].type = is_ascii(texts[i].text) ? SPNG_TEXT : SPNG_ITXT;
            t[i].length = strlen(texts[i].text);
            t[i].text = (char *)texts[i].text;
            t[i].language_tag = (char *)"";
            t[i].translated_keyword = (char *)"";
        }
        rc = spng_set_text(ctx, t, (uint32_t)n_texts);
    }
    size_t n = (size_t)width * (size_t)height * 3;
    if (!rc) rc = spng_encode_image(ctx, rgb, n, SPNG_FMT_PNG, SPNG_ENCODE_FINALIZE);
    if (rc) {
        st = lh_error_set(err, LH_ERR_FORMAT, "%s: PNG encoding failed: %s", name,
                          spng_strerror(rc));
    } else {
        *out = spng_get_png_buffer(ctx, out_len, &rc);
        if (!*out)
            st = lh_error_set(err, LH_ERR_FORMAT, "%s: PNG encoding failed: %s", name,
                              spng_strerror(rc));
    }
    spng_ctx_free(ctx);
    return st;
}

/* ---- Reading ---- */

static lh_status slurp(const char *path, void **buf, size_t *n, lh_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return lh_error_set(err, errno == ENOENT ? LH_ERR_NOT_FOUND : LH_ERR_IO,
                            "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(f);
        return lh_error_set(err, LH_ERR_IO, "%s: not a regular file", path);
    }
    if ((size_t)sb.st_size > MAX_FILE_BYTES) {
        fclose(f);
        return lh_error_set(err, LH_ERR_UNSUPPORTED, "%s: file too large (%lld bytes)", path,
                            (long long)sb.st_size);
    }
    *n = (size_t)sb.st_size;
    *buf = malloc(*n ? *n : 1);
    if (!*buf) {
        fclose(f);
        return lh_error_set(err, LH_ERR_NOMEM, "%s: out of memory", path);
    }
    size_t got = fread(*buf, 1, *n, f);
    fclose(f);
    if (got != *n) {
        free(*buf);
        *buf = NULL;
        return lh_error_set(err, LH_ERR_IO, "%s: read failed", path);
    }
    return LH_OK;
}

static lh_status decoder_on(spng_ctx **out, const char *name, const void *buf, size_t n,
                            lh_error *err) {
    static const unsigned char SIG[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (n < 8 || memcmp(buf, SIG, 8))
        return lh_error_set(err, LH_ERR_FORMAT, "%s: not a PNG file", name);
    spng_ctx *ctx = spng_ctx_new(0);
    if (!ctx) return lh_error_set(err, LH_ERR_NOMEM, "%s: out of memory", name);
    spng_set_image_limits(ctx, LH_PNG_MAX_SIDE, LH_PNG_MAX_SIDE);
    spng_set_chunk_limits(ctx, 64u << 20, 64u << 20);
    spng_set_png_buffer(ctx, buf, n);
    *out = ctx;
    return LH_OK;
}

static lh_status open_decoder(spng_ctx **out, const char *path, void **buf, lh_error *err) {
    size_t n = 0;
    lh_status st = slurp(path, buf, &n, err);
    if (st != LH_OK) return st;
    st = decoder_on(out, path, *buf, n, err);
    if (st != LH_OK) {
        free(*buf);
        *buf = NULL;
    }
    return st;
}

static lh_status decode_rgb(spng_ctx *ctx, const char *name, uint8_t **rgb, int64_t *width,
                            int64_t *height, lh_error *err) {
    lh_status st = LH_OK;
    struct spng_ihdr ihdr;
    size_t size = 0;
    int rc = spng_get_ihdr(ctx, &ihdr);
    if (rc == SPNG_EWIDTH || rc == SPNG_EHEIGHT || rc == SPNG_EUSER_WIDTH ||
        rc == SPNG_EUSER_HEIGHT)
        return lh_error_set(err, LH_ERR_UNSUPPORTED, "%s: image larger than %dx%d", name,
                            LH_PNG_MAX_SIDE, LH_PNG_MAX_SIDE);
    if (!rc) rc = spng_decoded_image_size(ctx, SPNG_FMT_RGB8, &size);
    if (!rc) {
        *rgb = malloc(size);
        if (!*rgb)
            return lh_error_set(err, LH_ERR_NOMEM, "%s: out of memory for %zu bytes", name, size);
        rc = spng_decode_image(ctx, *rgb, size, SPNG_FMT_RGB8, 0);
    }
    if (rc) {
        st = lh_error_set(err, LH_ERR_FORMAT, "%s: unreadable PNG: %s", name, spng_strerror(rc));
        free(*rgb);
        *rgb = NULL;
        return st;
    }
    *width = ihdr.width;
    *height = ihdr.height;
    return LH_OK;
}

lh_status lh_png_read(const char *path, uint8_t **rgb, int64_t *width, int64_t *height,
                      lh_error *err) {
    *rgb = NULL;
    void *buf = NULL;
    spng_ctx *ctx = NULL;
    lh_status st = open_decoder(&ctx, path, &buf, err);
    if (st != LH_OK) return st;
    st = decode_rgb(ctx, path, rgb, width, height, err);
    spng_ctx_free(ctx);
    free(buf);
    return st;
}

lh_status lh_png_decode(const void *buf, size_t n, const char *name, uint8_t **rgb,
                        int64_t *width, int64_t *height, lh_error *err) {
    *rgb = NULL;
    spng_ctx *ctx = NULL;
    lh_status st = decoder_on(&ctx, name, buf, n, err);
    if (st != LH_OK) return st;
    st = decode_rgb(ctx, name, rgb, width, height, err);
    spng_ctx_free(ctx);
    return st;
}

lh_status lh_png_read_text(const char *path, const char *key, char **text, lh_error *err) {
    *text = NULL;
    void *buf = NULL;
    spng_ctx *ctx = NULL;
    lh_status st = open_decoder(&ctx, path, &buf, err);
    if (st != LH_OK) return st;
    uint32_t n = 0;
    int rc = spng_get_text(ctx, NULL, &n);
    struct spng_text *t = NULL;
    if (rc == SPNG_ECHUNKAVAIL) {
        rc = 0;
        n = 0;
    }
    if (!rc && n) {
        t = calloc(n, sizeof *t);
        if (!t) rc = SPNG_EMEM;
        else rc = spng_get_text(ctx, t, &n);
    }
    if (rc) {
        st = lh_error_set(err, LH_ERR_FORMAT, "%s: unreadable PNG: %s", path, spng_strerror(rc));
    } else {
        st = lh_error_set(err, LH_ERR_NOT_FOUND, "%s: no text chunk '%s'", path, key);
        for (uint32_t i = 0; i < n; i++)
            if (!strcmp(t[i].keyword, key)) {
                *text = malloc(t[i].length + 1);
                if (!*text) {
                    st = lh_error_set(err, LH_ERR_NOMEM, "%s: out of memory", path);
                    break;
                }
                memcpy(*text, t[i].text, t[i].length);
                (*text)[t[i].length] = 0;
                lh_error_clear(err);
                st = LH_OK;
                break;
            }
    }
    free(t);
    spng_ctx_free(ctx);
    free(buf);
    return st;
}
