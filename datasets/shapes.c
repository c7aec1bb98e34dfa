/* Synthetic shapes (shapes.h): scene drawing from a splitmix64 stream, integer
 * rasterisation on a 4x4 supersampling grid, captions, the directory writer,
 * and the image statistics tests use. No floating point reaches a pixel. */
#include "shapes.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "file_atomic.h"
#include "png.h"

/* ---- Tables ---- */

static const char *const k_shape_names[LH_SHAPE_COUNT] = {
    "circle", "square", "triangle", "star", "heart", "diamond",
};

static const char *const k_color_names[LH_SHAPES_COLOR_COUNT] = {
    "red", "green", "blue", "yellow", "orange", "purple", "white", "black",
};

static const uint8_t k_color_rgb[LH_SHAPES_COLOR_COUNT][3] = {
    {230, 25, 25},   /* red */
    {30, 170, 40},   /* green */
    {30, 60, 220},   /* blue */
    {250, 220, 30},  /* yellow */
    {250, 130, 20},  /* orange */
    {140, 40, 180},  /* purple */
    {250, 250, 250}, /* white */
    {15, 15, 15},    /* black */
};

static const char *const k_style_names[LH_SHAPES_STYLE_COUNT] = {"plain", "striped"};

/* Unit directions (x, y) * 4096 of a five-pointed star's ten vertices,
 * clockwise from the top (y grows downwards): 36 degrees apart. */
static const int32_t k_star_dir[10][2] = {
    {0, -4096},    {2408, -3314}, {3896, -1266}, {3896, 1266},   {2408, 3314},
    {0, 4096},     {-2408, 3314}, {-3896, 1266}, {-3896, -1266}, {-2408, -3314},
};

const char *lh_shapes_shape_name(lh_shape s) {
    return (unsigned)s < LH_SHAPE_COUNT ? k_shape_names[s] : "?";
}
const char *lh_shapes_color_name(lh_shapes_color c) {
    return (unsigned)c < LH_SHAPES_COLOR_COUNT ? k_color_names[c] : "?";
}
const char *lh_shapes_style_name(lh_shapes_style s) {
    return (unsigned)s < LH_SHAPES_STYLE_COUNT ? k_style_names[s] : "?";
}
const uint8_t *lh_shapes_color_rgb(lh_shapes_color c) {
    return (unsigned)c < LH_SHAPES_COLOR_COUNT ? k_color_rgb[c] : NULL;
}
int lh_shapes_style_parse(const char *name) {
    for (int i = 0; i < LH_SHAPES_STYLE_COUNT; i++)
        if (name && !strcmp(name, k_style_names[i])) return i;
    return -1;
}

/* ---- Scenes ---- */

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* uniform in [0, n) by multiply-shift of the top 32 bits */
static uint32_t draw(uint64_t *s, uint32_t n) {
    return (uint32_t)(((splitmix64(s) >> 32) * (uint64_t)n) >> 32);
}

void lh_shapes_scene_at(lh_shapes_scene *scene, uint64_t seed, int64_t index) {
    uint64_t s = seed;
    uint64_t mixed = splitmix64(&s) ^ (uint64_t)index;
    s = splitmix64(&mixed); /* state for this (seed, index) */
    scene->shape = (lh_shape)draw(&s, LH_SHAPE_COUNT);
    scene->color = (lh_shapes_color)draw(&s, LH_SHAPES_COLOR_COUNT);
    uint32_t bg = draw(&s, LH_SHAPES_COLOR_COUNT - 1); /* skip the shape's colour */
    scene->background = (lh_shapes_color)(bg >= (uint32_t)scene->color ? bg + 1 : bg);
    const int32_t lo = LH_SHAPES_UNIT * 2 / 5, hi = LH_SHAPES_UNIT * 4 / 5; /* 40% .. 80% */
    scene->extent = lo + (int32_t)draw(&s, (uint32_t)(hi - lo + 1));
    int32_t jmax = (LH_SHAPES_UNIT - scene->extent) / 6;
    scene->cx = LH_SHAPES_UNIT / 2 - jmax + (int32_t)draw(&s, (uint32_t)(2 * jmax + 1));
    scene->cy = LH_SHAPES_UNIT / 2 - jmax + (int32_t)draw(&s, (uint32_t)(2 * jmax + 1));
}

int lh_shapes_caption(char *buf, size_t cap, const lh_shapes_scene *scene, lh_shapes_style style) {
    const char *color = lh_shapes_color_name(scene->color);
    const char *article = strchr("aeiou", color[0]) ? "an" : "a";
    return snprintf(buf, cap, "%s %s %s on a %s background%s", article, color,
                    lh_shapes_shape_name(scene->shape), lh_shapes_color_name(scene->background),
                    style == LH_SHAPES_STYLE_STRIPED ? ", striped style" : "");
}

/* ---- Rasterisation ----
 * Coordinates are integers in eighths of a pixel: pixel x's 4x4 samples sit
 * at 8x + 1, 8x + 3, 8x + 5, 8x + 7. Inside tests take the offset (dx, dy)
 * from the shape's centre and r, half the bounding square's side. */

/* even-odd rule; vertices [n][2] */
static int in_polygon(int64_t px, int64_t py, const int64_t (*v)[2], int n) {
    int c = 0;
    for (int i = 0, j = n - 1; i < n; j = i++) {
        if ((v[i][1] > py) != (v[j][1] > py)) {
            int64_t den = v[i][1] - v[j][1];
            int64_t num = (py - v[j][1]) * (v[i][0] - v[j][0]);
            int64_t lhs = (px - v[j][0]) * den;
            if (den > 0 ? lhs < num : lhs > num) c = !c;
        }
    }
    return c;
}

static int inside(lh_shape shape, int64_t dx, int64_t dy, int64_t r) {
    switch (shape) {
    case LH_SHAPE_CIRCLE:
        return dx * dx + dy * dy <= r * r;
    case LH_SHAPE_SQUARE: {
        int64_t h = r * 7 / 8;
        return dx >= -h && dx <= h && dy >= -h && dy <= h;
    }
    case LH_SHAPE_DIAMOND: { /* |dx| / (3r/4) + |dy| / r <= 1 */
        int64_t ax = dx < 0 ? -dx : dx, ay = dy < 0 ? -dy : dy;
        return 4 * ax * r + 3 * ay * r <= 3 * r * r;
    }
    case LH_SHAPE_TRIANGLE: {
        const int64_t v[3][2] = {{0, -r}, {r * 15 / 16, r * 13 / 16}, {-r * 15 / 16, r * 13 / 16}};
        return in_polygon(dx, dy, v, 3);
    }
    case LH_SHAPE_STAR: {
        int64_t v[10][2];
        for (int k = 0; k < 10; k++) {
            int64_t rad = k & 1 ? r / 2 : r;
            v[k][0] = rad * k_star_dir[k][0] / 4096;
            v[k][1] = rad * k_star_dir[k][1] / 4096;
        }
        return in_polygon(dx, dy, (const int64_t(*)[2])v, 10);
    }
    case LH_SHAPE_HEART: { /* two lobes over a triangle pointing down */
        int64_t lr = r / 2, ly = -r * 3 / 10;
        int64_t ex = dx - lr, wx = dx + lr, ey = dy - ly;
        if (ex * ex + ey * ey <= lr * lr || wx * wx + ey * ey <= lr * lr) return 1;
        const int64_t v[3][2] = {{-r, ly}, {r, ly}, {0, r * 9 / 10}};
        return in_polygon(dx, dy, v, 3);
    }
    default:
        return 0;
    }
}

/* Inside the shape but within t of its edge: one of the eight points at
 * distance t (diagonals at t / sqrt 2) falls outside. */
static int on_outline(lh_shape shape, int64_t dx, int64_t dy, int64_t r, int64_t t) {
    int64_t d = t * 181 / 256;
    const int64_t off[8][2] = {{t, 0}, {-t, 0}, {0, t}, {0, -t}, {d, d}, {d, -d}, {-d, d}, {-d, -d}};
    for (int k = 0; k < 8; k++)
        if (!inside(shape, dx + off[k][0], dy + off[k][1], r)) return 1;
    return 0;
}

lh_status lh_shapes_render(uint8_t *rgb, int64_t size, const lh_shapes_scene *scene,
                           lh_shapes_style style, lh_error *err) {
    if (size < LH_SHAPES_MIN_SIZE || size > LH_SHAPES_MAX_SIZE)
        return lh_error_set(err, LH_ERR_INVALID, "shapes: size %lld outside [%d, %d]",
                            (long long)size, LH_SHAPES_MIN_SIZE, LH_SHAPES_MAX_SIZE);
    if ((unsigned)scene->shape >= LH_SHAPE_COUNT ||
        (unsigned)scene->color >= LH_SHAPES_COLOR_COUNT ||
        (unsigned)scene->background >= LH_SHAPES_COLOR_COUNT ||
        (unsigned)style >= LH_SHAPES_STYLE_COUNT)
        return lh_error_set(err, LH_ERR_INVALID, "shapes: scene or style out of range");
    if (scene->extent <= 0 || scene->extent > LH_SHAPES_UNIT || scene->cx < 0 ||
        scene->cx > LH_SHAPES_UNIT || scene->cy < 0 || scene->cy > LH_SHAPES_UNIT)
        return lh_error_set(err, LH_ERR_INVALID, "shapes: scene geometry out of range");

    const int striped = style == LH_SHAPES_STYLE_STRIPED;
    const int64_t r = (int64_t)scene->extent * size / 1024; /* extent * 8 * size / (2 * UNIT) */
    const int64_t cx = (int64_t)scene->cx * size / 512, cy = (int64_t)scene->cy * size / 512;
    const int64_t period = size * 2;         /* 8/32 of the side, along x, in eighths */
    const int64_t line = (size + 2) / 4;     /* outline 1/32 of the side, in eighths */
    const uint8_t *fg = k_color_rgb[scene->color], *bg = k_color_rgb[scene->background];
    const uint8_t *alt = k_color_rgb[scene->color == LH_SHAPES_WHITE ? LH_SHAPES_BLACK : LH_SHAPES_WHITE];
    const uint8_t *ink = k_color_rgb[LH_SHAPES_BLACK];

    for (int64_t y = 0; y < size; y++) {
        for (int64_t x = 0; x < size; x++) {
            uint32_t acc[3] = {0, 0, 0};
            for (int sy = 0; sy < 4; sy++) {
                for (int sx = 0; sx < 4; sx++) {
                    int64_t px = 8 * x + 2 * sx + 1, py = 8 * y + 2 * sy + 1;
                    int64_t dx = px - cx, dy = py - cy;
                    const uint8_t *c = bg;
                    if (inside(scene->shape, dx, dy, r)) {
                        if (!striped) c = fg;
                        else if (on_outline(scene->shape, dx, dy, r, line)) c = ink;
                        else c = (px + py) % period < period / 2 ? fg : alt;
                    }
                    acc[0] += c[0], acc[1] += c[1], acc[2] += c[2];
                }
            }
            uint8_t *o = rgb + 3 * (y * size + x);
            for (int k = 0; k < 3; k++) o[k] = (uint8_t)((acc[k] + 8) / 16);
        }
    }
    return LH_OK;
}

/* ---- Writing a set ---- */

lh_status lh_shapes_generate(const char *out_dir, int64_t count, int64_t size,
                             lh_shapes_style style, uint64_t seed, lh_error *err) {
    if (count < 1 || count > LH_SHAPES_MAX_COUNT)
        return lh_error_set(err, LH_ERR_INVALID, "shapes: count %lld outside [1, %d]",
                            (long long)count, LH_SHAPES_MAX_COUNT);
    if (size < LH_SHAPES_MIN_SIZE || size > LH_SHAPES_MAX_SIZE)
        return lh_error_set(err, LH_ERR_INVALID, "shapes: size %lld outside [%d, %d]",
                            (long long)size, LH_SHAPES_MIN_SIZE, LH_SHAPES_MAX_SIZE);
    if ((unsigned)style >= LH_SHAPES_STYLE_COUNT)
        return lh_error_set(err, LH_ERR_INVALID, "shapes: unknown style %d", (int)style);
    if (mkdir(out_dir, 0777) != 0 && errno != EEXIST)
        return lh_error_set(err, errno == ENOENT ? LH_ERR_NOT_FOUND : LH_ERR_IO,
                            "%s: cannot create directory: %s", out_dir, strerror(errno));
    struct stat st;
    if (stat(out_dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return lh_error_set(err, LH_ERR_IO, "%s: not a directory", out_dir);

    uint8_t *rgb = malloc((size_t)(size * size * 3)); /* size <= 2048: no overflow */
    size_t plen = strlen(out_dir) + 32;
    char *path = malloc(plen);
    if (!rgb || !path) {
        free(rgb);
        free(path);
        return lh_error_set(err, LH_ERR_NOMEM, "shapes: out of memory for a %lldx%lld image",
                            (long long)size, (long long)size);
    }
    lh_status st_ = LH_OK;
    char caption[128];
    for (int64_t i = 0; i < count && st_ == LH_OK; i++) {
        lh_shapes_scene sc;
        lh_shapes_scene_at(&sc, seed, i);
        st_ = lh_shapes_render(rgb, size, &sc, style, err);
        if (st_ != LH_OK) break;
        snprintf(path, plen, "%s/%06lld.png", out_dir, (long long)i);
        st_ = lh_png_write(path, rgb, size, size, NULL, NULL, err);
        if (st_ != LH_OK) break;
        int n = lh_shapes_caption(caption, sizeof caption, &sc, style);
        snprintf(path, plen, "%s/%06lld.txt", out_dir, (long long)i);
        st_ = lh_write_file_atomic(path, caption, (size_t)n, err);
    }
    free(rgb);
    free(path);
    return st_;
}

/* ---- Measurements ---- */

lh_status lh_shapes_measure(lh_shapes_stats *out, const uint8_t *rgb, int64_t w, int64_t h,
                            lh_error *err) {
    if (w < 8 || h < 8 || w > LH_PNG_MAX_SIDE || h > LH_PNG_MAX_SIDE)
        return lh_error_set(err, LH_ERR_INVALID, "shapes: cannot measure a %lldx%lld image",
                            (long long)w, (long long)h);
    memset(out, 0, sizeof *out);
    double csum[3] = {0}, bsum[3] = {0};
    int64_t cn = 0, bn = 0;
    const int64_t bw = w / 8, bh = h / 8;
    for (int64_t y = 0; y < h; y++) {
        for (int64_t x = 0; x < w; x++) {
            const uint8_t *p = rgb + 3 * (y * w + x);
            if (x >= 3 * w / 8 && x < 5 * w / 8 && y >= 3 * h / 8 && y < 5 * h / 8) {
                for (int k = 0; k < 3; k++) csum[k] += p[k];
                cn++;
            }
            if (x < bw || x >= w - bw || y < bh || y >= h - bh) {
                for (int k = 0; k < 3; k++) bsum[k] += p[k];
                bn++;
            }
        }
    }
    for (int k = 0; k < 3; k++) {
        out->center_rgb[k] = csum[k] / (double)cn;
        out->border_rgb[k] = bsum[k] / (double)bn;
    }
    /* steps of k = side/16 pixels: across the stripes (k, k) moves x + y by
     * half the generator's period (8/32 of the side), so its stripes flip */
    const int64_t k = (w < h ? w : h) / 16 > 1 ? (w < h ? w : h) / 16 : 1;
    double across = 0, along = 0;
    for (int64_t y = 0; y + k < h; y++) {
        for (int64_t x = 0; x + k < w; x++) {
            const uint8_t *a = rgb + 3 * (y * w + x), *b = a + 3 * k, *c = a + 3 * k * w,
                          *d = c + 3 * k;
            for (int j = 0; j < 3; j++) {
                across += abs((int)a[j] - (int)d[j]);
                along += abs((int)b[j] - (int)c[j]);
            }
        }
    }
    out->stripe_energy = (across - along) / (3.0 * 255.0 * (double)((w - k) * (h - k)));
    out->stripe_ratio = across + along > 0 ? (across - along) / (across + along) : 0.0;
    return LH_OK;
}

lh_shapes_color lh_shapes_nearest_color(const double rgb[3]) {
    int best = 0;
    double bd = 0;
    for (int c = 0; c < LH_SHAPES_COLOR_COUNT; c++) {
        double d = 0;
        for (int k = 0; k < 3; k++) {
            double t = rgb[k] - k_color_rgb[c][k];
            d += t * t;
        }
        if (c == 0 || d < bd) best = c, bd = d;
    }
    return (lh_shapes_color)best;
}
