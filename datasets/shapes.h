/* Synthetic shapes: a deterministic generator of small captioned images (a
 * filled shape in a named colour over a background of another colour, "a red
 * circle on a blue background"), plain or in a striped style, and the
 * measurements tests use to check what a model drew (docs/datasets.md). */
#ifndef LH_DATASETS_SHAPES_H
#define LH_DATASETS_SHAPES_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "lorahost/lorahost.h"

typedef enum lh_shape {
    LH_SHAPE_CIRCLE,
    LH_SHAPE_SQUARE,
    LH_SHAPE_TRIANGLE,
    LH_SHAPE_STAR,
    LH_SHAPE_HEART,
    LH_SHAPE_DIAMOND,
    LH_SHAPE_COUNT
} lh_shape;

/* Shape and background colours: one palette, the background never the
 * shape's colour. */
typedef enum lh_shapes_color {
    LH_SHAPES_RED,
    LH_SHAPES_GREEN,
    LH_SHAPES_BLUE,
    LH_SHAPES_YELLOW,
    LH_SHAPES_ORANGE,
    LH_SHAPES_PURPLE,
    LH_SHAPES_WHITE,
    LH_SHAPES_BLACK,
    LH_SHAPES_COLOR_COUNT
} lh_shapes_color;

/* PLAIN: flat fill. STRIPED: the same scene with the shape filled by
 * diagonal stripes (shape colour and white; black for a white shape, period
 * 8/32 of the side along x) and a dark outline (1/32 of the side), and
 * ", striped style" after the caption. */
typedef enum lh_shapes_style {
    LH_SHAPES_STYLE_PLAIN,
    LH_SHAPES_STYLE_STRIPED,
    LH_SHAPES_STYLE_COUNT
} lh_shapes_style;

#define LH_SHAPES_UNIT 4096      /* scene geometry is in 1/4096 of the image side */
#define LH_SHAPES_MIN_SIZE 8
#define LH_SHAPES_MAX_SIZE 2048
#define LH_SHAPES_MAX_COUNT 1000000 /* file names are six digits */

/* One image's content, independent of resolution and style. extent is the
 * side of the shape's bounding square (40% to 80% of the image); (cx, cy) its
 * centre, within (1 - extent) / 6 of the image centre on each axis, so the
 * whole shape is inside the image. */
typedef struct lh_shapes_scene {
    lh_shape shape;
    lh_shapes_color color, background;
    int32_t extent, cx, cy; /* in 1/LH_SHAPES_UNIT of the image side */
} lh_shapes_scene;

LH_API const char *lh_shapes_shape_name(lh_shape s);
LH_API const char *lh_shapes_color_name(lh_shapes_color c);
LH_API const char *lh_shapes_style_name(lh_shapes_style s);
/* The colour's RGB [3]; NULL for a value out of range. */
LH_API const uint8_t *lh_shapes_color_rgb(lh_shapes_color c);
/* "plain" or "striped" to the style, or -1. */
LH_API int lh_shapes_style_parse(const char *name);

/* Scene number `index` of the set `seed`: a splitmix64 stream seeded by
 * (seed, index) draws shape, colour, background, extent and position, in
 * that order. The same on every machine; the style does not enter. */
LH_API void lh_shapes_scene_at(lh_shapes_scene *scene, uint64_t seed, int64_t index);

/* Render scene into rgb [size][size][3]: integer geometry on a 4x4
 * supersampling grid per pixel, averaged with rounding, so the bytes are the
 * same on every machine. size in [LH_SHAPES_MIN_SIZE, LH_SHAPES_MAX_SIZE]. */
LH_API lh_status lh_shapes_render(uint8_t *rgb, int64_t size, const lh_shapes_scene *scene,
                                  lh_shapes_style style, lh_error *err);

/* "a red circle on a blue background" ("an orange ..."; plain), the same with
 * ", striped style" appended (striped). Returns the length snprintf would. */
LH_API int lh_shapes_caption(char *buf, size_t cap, const lh_shapes_scene *scene,
                             lh_shapes_style style);

/* Write scenes 0 .. count-1 of the set `seed` to out_dir/NNNNNN.png (RGB8,
 * size x size, no text chunks) and out_dir/NNNNNN.txt (the caption, no
 * newline), each file atomically; out_dir is created if missing (its parent
 * must exist). The result is a directory `lorahost dataset import` reads. */
LH_API lh_status lh_shapes_generate(const char *out_dir, int64_t count, int64_t size,
                                    lh_shapes_style style, uint64_t seed, lh_error *err);

/* ---- Measurements ---- */

/* Statistics of an RGB8 image [h][w][3] (any size >= 8x8):
 * center_rgb  mean colour (0..255) of the central box, x in [3w/8, 5w/8),
 *             y in [3h/8, 5h/8);
 * border_rgb  mean colour of the ring of width w/8 (x) and h/8 (y) along the
 *             edges;
 * stripe_energy  diagonal-stripe score: the mean over 2x2 neighbourhoods of
 *             |p(x,y) - p(x+1,y+1)| - |p(x+1,y) - p(x,y+1)|, each |.| the mean
 *             absolute difference of the three channels divided by 255. The
 *             first term crosses stripes along x+y = const, the second runs
 *             along them; edges of a flat shape add about equally to both, so a
 *             plain image scores near 0 and a striped one clearly above. */
typedef struct lh_shapes_stats {
    double center_rgb[3];
    double border_rgb[3];
    double stripe_energy;
    double stripe_ratio;
} lh_shapes_stats;

LH_API lh_status lh_shapes_measure(lh_shapes_stats *out, const uint8_t *rgb, int64_t w, int64_t h,
                                   lh_error *err);

/* The palette colour nearest (squared RGB distance) to rgb [3]. */
LH_API lh_shapes_color lh_shapes_nearest_color(const double rgb[3]);

#endif
