/* lh_loss_smooth and lh_loss_plot_svg: see loss_plot.h. */
#include "loss_plot.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "file_atomic.h"

void lh_loss_smooth(float *out, const float *loss, int64_t n, double beta) {
    double ema = 0.0, w = 0.0;
    for (int64_t i = 0; i < n; i++) {
        ema = beta * ema + (1.0 - beta) * loss[i];
        w = beta * w + (1.0 - beta);
        out[i] = (float)(ema / w);
    }
}

/* A growing text buffer. */
typedef struct sbuf {
    char *p;
    size_t len, cap;
    int oom;
} sbuf;

__attribute__((format(printf, 2, 3))) static void put(sbuf *b, const char *fmt, ...) {
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (k < 0) {
            b->oom = 1;
            return;
        }
        if (b->p && b->len + (size_t)k < b->cap) {
            b->len += (size_t)k;
            return;
        }
        size_t cap = (b->cap ? 2 * b->cap : 4096) + (size_t)k;
        char *q = realloc(b->p, cap);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
}

static void polyline(sbuf *b, const float *y, int64_t n, double x0, double y0, double w,
                     double h, double lo, double hi, const char *style) {
    int64_t stride = n > 2000 ? n / 2000 : 1; /* at most ~2000 points */
    put(b, "<polyline fill=\"none\" %s points=\"", style);
    for (int64_t i = 0; i < n; i += stride) {
        double px = x0 + (n > 1 ? w * (double)i / (double)(n - 1) : 0.0);
        double v = isfinite(y[i]) ? y[i] : hi;
        double py = y0 + h - h * (v - lo) / (hi - lo);
        put(b, "%.1f,%.1f ", px, py);
    }
    put(b, "\"/>\n");
}

lh_status lh_loss_plot_svg(const char *path, const float *loss, int64_t n, const char *title,
                           lh_error *err) {
    if (n < 1) return lh_error_set(err, LH_ERR_INVALID, "loss plot %s: no steps", path);
    float *ema = malloc((size_t)n * sizeof *ema);
    if (!ema) return lh_error_set(err, LH_ERR_NOMEM, "loss plot %s: out of memory", path);
    lh_loss_smooth(ema, loss, n, 0.9);
    double lo = INFINITY, hi = -INFINITY;
    for (int64_t i = 0; i < n; i++)
        if (isfinite(loss[i])) {
            lo = fmin(lo, loss[i]);
            hi = fmax(hi, loss[i]);
        }
    if (!isfinite(lo)) lo = 0.0, hi = 1.0;
    if (hi - lo < 1e-12) hi = lo + 1.0;
    const double W = 800, H = 400, x0 = 70, y0 = 40, w = W - x0 - 20, h = H - y0 - 50;
    sbuf b = {0};
    put(&b, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
            "font-family=\"sans-serif\" font-size=\"12\">\n", W, H);
    put(&b, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    put(&b, "<text x=\"%.0f\" y=\"22\" font-size=\"15\">", x0);
    for (const char *c = title ? title : ""; *c; c++) /* XML-escape the title */
        put(&b, *c == '<' ? "&lt;" : *c == '&' ? "&amp;" : *c == '>' ? "&gt;" : "%c", *c);
    put(&b, "</text>\n");
    put(&b, "<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" "
            "stroke=\"#888\"/>\n", x0, y0, w, h);
    for (int k = 0; k <= 4; k++) { /* loss ticks */
        double v = lo + (hi - lo) * k / 4.0, py = y0 + h - h * k / 4.0;
        put(&b, "<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\">%.4g</text>\n", x0 - 6, py + 4,
            v);
    }
    for (int k = 0; k <= 4; k++) { /* step ticks */
        double s = 1 + (double)(n - 1) * k / 4.0, px = x0 + w * k / 4.0;
        put(&b, "<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%.0f</text>\n", px,
            y0 + h + 18, s);
    }
    put(&b, "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">step</text>\n", x0 + w / 2,
        H - 8);
    polyline(&b, loss, n, x0, y0, w, h, lo, hi, "stroke=\"#9ecae1\" stroke-width=\"1\"");
    polyline(&b, ema, n, x0, y0, w, h, lo, hi, "stroke=\"#08519c\" stroke-width=\"2\"");
    put(&b, "<text x=\"%.0f\" y=\"%.0f\" fill=\"#08519c\">loss (EMA 0.9)</text>\n", x0 + w - 120,
        y0 + 16);
    put(&b, "</svg>\n");
    free(ema);
    lh_status st = b.oom ? lh_error_set(err, LH_ERR_NOMEM, "loss plot %s: out of memory", path)
                         : lh_write_file_atomic(path, b.p, b.len, err);
    free(b.p);
    return st;
}
