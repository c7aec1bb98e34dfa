/* Server suite: `lorahost serve`'s server started in-process on an
 * ephemeral loopback port with the tiny SD 1.x model, spoken to by the small
 * HTTP/1.1 client below. Every route's happy path (a /generate image equals
 * lh_pipeline_txt2img's for the same parameters byte for byte), the bad
 * input of docs/server.md (400 naming the field), 401, 429 + Retry-After,
 * 413, 503 on a full queue, adapters loaded, listed, used per request
 * without leaking into the next one, and deleted; graceful stop; the
 * `lorahost serve` program under SIGTERM. */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lorahost/lorahost.h"
#include "model.h"
#include "pipeline.h"
#include "png.h"
#include "server.h"

static char g_src[4096], g_model[4200], g_adapters[4200];

/* ---- A small HTTP/1.1 client (one request per connection) ---- */

typedef struct resp {
    int status;
    char *raw;          /* the whole response, NUL-terminated */
    const char *body;   /* into raw */
    size_t len, body_len;
} resp;

static void resp_free(resp *r) {
    free(r->raw);
    memset(r, 0, sizeof *r);
}

static int connect_to(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa)) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Send raw bytes, read to EOF, split status / headers / body. */
static void http_raw(int port, const char *req, size_t n, resp *r) {
    memset(r, 0, sizeof *r);
    int fd = connect_to(port);
    ck_assert_msg(fd >= 0, "connect to port %d: %s", port, strerror(errno));
    for (size_t off = 0; off < n;) {
        ssize_t k = send(fd, req + off, n - off, MSG_NOSIGNAL);
        if (k <= 0) break; /* the server may answer early and close */
        off += (size_t)k;
    }
    size_t cap = 65536;
    r->raw = malloc(cap);
    ck_assert_ptr_nonnull(r->raw);
    for (;;) {
        if (r->len + 1 >= cap) {
            cap *= 2;
            r->raw = realloc(r->raw, cap);
            ck_assert_ptr_nonnull(r->raw);
        }
        ssize_t k = recv(fd, r->raw + r->len, cap - r->len - 1, 0);
        if (k <= 0) break;
        r->len += (size_t)k;
    }
    close(fd);
    r->raw[r->len] = 0;
    ck_assert_msg(sscanf(r->raw, "HTTP/1.%*d %d", &r->status) == 1, "no status line in '%.80s'",
                  r->raw);
    char *end = strstr(r->raw, "\r\n\r\n");
    ck_assert_ptr_nonnull(end);
    r->body = end + 4;
    r->body_len = r->len - (size_t)(r->body - r->raw);
}

static void http(int port, const char *method, const char *path, const char *headers,
                 const char *body, resp *r) {
    size_t blen = body ? strlen(body) : 0;
    size_t n = blen + 1024 + (headers ? strlen(headers) : 0);
    char *req = malloc(n);
    ck_assert_ptr_nonnull(req);
    int h = snprintf(req, n, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s", method,
                     path, headers ? headers : "");
    if (body) h += snprintf(req + h, n - (size_t)h, "Content-Type: application/json\r\n"
                                                    "Content-Length: %zu\r\n", blen);
    h += snprintf(req + h, n - (size_t)h, "\r\n");
    if (body) memcpy(req + h, body, blen);
    http_raw(port, req, (size_t)h + blen, r);
    free(req);
}

/* A header's value (copied into buf), or NULL. */
static const char *header(const resp *r, const char *name, char *buf, size_t size) {
    size_t n = strlen(name);
    for (const char *p = strstr(r->raw, "\r\n"); p && p < r->body; p = strstr(p + 2, "\r\n")) {
        if (!strncasecmp(p + 2, name, n) && p[2 + n] == ':') {
            const char *v = p + 3 + n, *e = strstr(v, "\r\n");
            while (*v == ' ') v++;
            snprintf(buf, size, "%.*s", (int)(e - v), v);
            return buf;
        }
    }
    return NULL;
}

static json_t *body_json(const resp *r) {
    json_error_t je;
    json_t *j = json_loadb(r->body, r->body_len, 0, &je);
    ck_assert_msg(j != NULL, "body is not JSON (%s): %.200s", je.text, r->body);
    return j;
}

/* The reply is `status` with a JSON error naming `field` (NULL: no field). */
static void expect_error(const resp *r, int status, const char *field, const char *what) {
    ck_assert_msg(r->status == status, "%s: status %d, expected %d: %.300s", what, r->status,
                  status, r->body);
    char ct[128];
    ck_assert_msg(header(r, "Content-Type", ct, sizeof ct) && !strcmp(ct, "application/json"),
                  "%s: not JSON", what);
    json_t *j = body_json(r);
    ck_assert_msg(json_is_string(json_object_get(j, "error")) &&
                      json_string_length(json_object_get(j, "error")) > 0,
                  "%s: no error message", what);
    json_t *f = json_object_get(j, "field");
    if (field)
        ck_assert_msg(json_is_string(f) && !strcmp(json_string_value(f), field),
                      "%s: field %s, expected %s (%s)", what,
                      json_is_string(f) ? json_string_value(f) : "null", field,
                      json_string_value(json_object_get(j, "error")));
    else
        ck_assert_msg(!f || json_is_null(f), "%s: unexpected field", what);
    json_decref(j);
}

/* A gauge's value in a /metrics reply. */
static long gauge(const resp *r, const char *name) {
    char pat[128];
    snprintf(pat, sizeof pat, "\n%s ", name);
    const char *p = strstr(r->body, pat);
    ck_assert_msg(p != NULL, "no %s in %s", name, r->body);
    return atol(p + strlen(pat));
}

/* ---- Fixture ---- */

static void paths(void) {
    const char *src = getenv("LH_SOURCE_DIR");
    snprintf(g_src, sizeof g_src, "%s", src ? src : "../..");
    snprintf(g_model, sizeof g_model, "%s/tests/fixtures/models/sd1_tiny", g_src);
    snprintf(g_adapters, sizeof g_adapters, "%s/tests/fixtures/adapters", g_src);
}

static const char *g_dirs[1];

static void opts_for_test(lh_server_opts *o) {
    paths();
    lh_server_opts_init(o);
    o->model = g_model;
    o->port = 0;
    o->compute_threads = 1;
    o->qps = 0;
    o->http_threads = 8;
    g_dirs[0] = g_adapters;
    o->adapter_dirs = g_dirs;
    o->n_adapter_dirs = 1;
    o->batch_max = 1;        /* test_batching turns these on */
    o->breaker_p95_ms = 0;
}

static lh_server *start(const lh_server_opts *o) {
    lh_server *s = NULL;
    lh_error err = {0};
    ck_assert_msg(lh_server_start(&s, o, &err) == LH_OK, "%s", err.msg);
    ck_assert_int_gt(lh_server_port(s), 0);
    return s;
}

/* ---- Images ---- */

static uint8_t *decode_png(const char *data, size_t n, int64_t *w, int64_t *h) {
    uint8_t *rgb = NULL;
    lh_error err = {0};
    ck_assert_msg(lh_png_decode(data, n, "reply", &rgb, w, h, &err) == LH_OK, "%s", err.msg);
    return rgb;
}

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static uint8_t *unbase64(const char *s, size_t *out_len) {
    size_t n = strlen(s), k = 0;
    uint8_t *out = malloc(n / 4 * 3 + 3);
    ck_assert_ptr_nonnull(out);
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n && s[i] != '='; i++) {
        const char *p = strchr(B64, s[i]);
        ck_assert_ptr_nonnull(p);
        acc = acc << 6 | (uint32_t)(p - B64);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[k++] = (uint8_t)(acc >> bits);
        }
    }
    *out_len = k;
    return out;
}

static char *base64(const uint8_t *d, size_t n) {
    char *o = malloc((n + 2) / 3 * 4 + 1), *p = o;
    ck_assert_ptr_nonnull(o);
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)d[i] << 16 | (i + 1 < n ? (uint32_t)d[i + 1] << 8 : 0) |
                     (i + 2 < n ? d[i + 2] : 0);
        *p++ = B64[v >> 18];
        *p++ = B64[(v >> 12) & 63];
        *p++ = i + 1 < n ? B64[(v >> 6) & 63] : '=';
        *p++ = i + 2 < n ? B64[v & 63] : '=';
    }
    *p = 0;
    return o;
}

/* POST /generate?format=png: the decoded RGB (64x64 checked). */
static uint8_t *generate_png(int port, const char *body) {
    resp r;
    http(port, "POST", "/generate?format=png", NULL, body, &r);
    ck_assert_msg(r.status == 200, "status %d: %.300s", r.status, r.body);
    char ct[64];
    ck_assert_str_eq(header(&r, "Content-Type", ct, sizeof ct), "image/png");
    int64_t w = 0, h = 0;
    uint8_t *rgb = decode_png(r.body, r.body_len, &w, &h);
    ck_assert_int_eq(w, 64);
    ck_assert_int_eq(h, 64);
    resp_free(&r);
    return rgb;
}

#define IMG_BYTES (64 * 64 * 3)
#define BASE_BODY "{\"prompt\": \"a red cube\", \"steps\": 2, \"width\": 64, \"height\": 64, " \
                  "\"seed\": 42, \"cfg_scale\": 7.5"

/* What lh_pipeline_txt2img gives for BASE_BODY on its own model. */
static uint8_t *direct_txt2img(const uint8_t *init_image, double strength) {
    lh_backend *be = NULL;
    lh_registry *reg = NULL;
    lh_model *m = NULL;
    char msg[512] = "";
    lh_error err = {0};
    ck_assert_msg(lh_backend_cpu_create(&be, 1, msg, sizeof msg) == LH_OK, "%s", msg);
    ck_assert_msg(lh_registry_create(&reg, &err) == LH_OK &&
                      lh_registry_scan(reg, NULL, 0, 1, 1, &err) == LH_OK,
                  "%s", err.msg);
    ck_assert_msg(lh_model_open(&m, be, g_model, &err) == LH_OK, "%s", err.msg);
    lh_gen_params p;
    lh_gen_params_init(&p);
    p.prompt = "a red cube";
    p.steps = 2;
    p.width = p.height = 64;
    p.seed = 42;
    p.cfg_scale = 7.5;
    p.init_image = init_image;
    p.strength = strength;
    lh_gen_result res = {0};
    lh_status st = init_image ? lh_pipeline_img2img(m, reg, &p, &res, &err)
                              : lh_pipeline_txt2img(m, reg, &p, &res, &err);
    ck_assert_msg(st == LH_OK, "%s", err.msg);
    uint8_t *out = malloc(IMG_BYTES);
    ck_assert_ptr_nonnull(out);
    memcpy(out, res.images, IMG_BYTES);
    lh_gen_result_free(&res);
    lh_model_close(m);
    lh_registry_destroy(reg);
    lh_backend_destroy(be);
    return out;
}

/* ---- Tests ---- */

START_TEST(test_routes) {
    lh_server_opts o;
    opts_for_test(&o);
    lh_server *s = start(&o);
    int port = lh_server_port(s);
    resp r;
    http(port, "GET", "/healthz", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 200);
    json_t *j = body_json(&r);
    ck_assert_str_eq(json_string_value(json_object_get(j, "status")), "ok");
    ck_assert_str_eq(json_string_value(json_object_get(j, "model")), "sd1_tiny");
    json_decref(j);
    resp_free(&r);

    http(port, "GET", "/schedulers", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 200);
    j = body_json(&r);
    json_t *list = json_object_get(j, "schedulers"), *e;
    size_t i;
    int ddim = 0;
    json_array_foreach(list, i, e) ddim |= !strcmp(json_string_value(json_object_get(e, "id")), "ddim");
    ck_assert_msg(ddim, "GET /schedulers lacks ddim");
    ck_assert_uint_gt(json_array_size(json_object_get(j, "sampler_names")), 0);
    json_decref(j);
    resp_free(&r);

    http(port, "GET", "/plugins", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 200);
    j = body_json(&r);
    int lora = 0;
    json_array_foreach(json_object_get(j, "plugins"), i, e) lora |=
        !strcmp(json_string_value(json_object_get(e, "id")), "lora");
    ck_assert_msg(lora, "GET /plugins lacks the lora adapter kind");
    json_decref(j);
    resp_free(&r);

    http(port, "GET", "/adapters", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 200);
    j = body_json(&r);
    ck_assert_uint_eq(json_array_size(json_object_get(j, "adapters")), 0);
    json_decref(j);
    resp_free(&r);

    http(port, "GET", "/nowhere", NULL, NULL, &r);
    expect_error(&r, 404, NULL, "unknown route");
    resp_free(&r);
    http(port, "GET", "/generate", NULL, NULL, &r);
    expect_error(&r, 405, NULL, "GET /generate");
    resp_free(&r);

    http(port, "GET", "/metrics", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_msg(strstr(r.body, "lorahost_http_requests_total{route=\"/healthz\",status=\"200\"} 1\n"),
                  "%s", r.body);
    ck_assert_msg(strstr(r.body, "lorahost_http_requests_total{route=\"other\",status=\"404\"} 1\n"),
                  "%s", r.body);
    ck_assert_msg(strstr(r.body, "lorahost_http_request_duration_seconds_count{route=\"/plugins\"} 1\n"),
                  "%s", r.body);
    ck_assert_msg(strstr(r.body, "lorahost_http_request_duration_seconds_bucket{route=\"/healthz\","
                                 "le=\"+Inf\"} 1\n"), "%s", r.body);
    ck_assert_msg(strstr(r.body, "\nlorahost_queue_depth 0\n"), "%s", r.body);
    ck_assert_int_ge(gauge(&r, "lorahost_in_flight_requests"), 1); /* this one */
    ck_assert_msg(strstr(r.body, "\nlorahost_adapters_loaded 0\n"), "%s", r.body);
    resp_free(&r);
    lh_server_stop(s);
}
END_TEST

START_TEST(test_generate_equals_pipeline) {
    lh_server_opts o;
    opts_for_test(&o);
    lh_server *s = start(&o);
    int port = lh_server_port(s);
    uint8_t *want = direct_txt2img(NULL, 0);

    /* ?format=png */
    uint8_t *got = generate_png(port, BASE_BODY "}");
    ck_assert_msg(!memcmp(got, want, IMG_BYTES), "server image differs from lh_pipeline_txt2img");
    free(got);

    /* Accept: image/png, with the seed in X-Seed */
    resp r;
    http(port, "POST", "/generate", "Accept: image/png\r\n", BASE_BODY "}", &r);
    ck_assert_int_eq(r.status, 200);
    char buf[64];
    ck_assert_str_eq(header(&r, "Content-Type", buf, sizeof buf), "image/png");
    ck_assert_str_eq(header(&r, "X-Seed", buf, sizeof buf), "42");
    resp_free(&r);

    /* JSON: images as base64 PNGs, the parameters used */
    http(port, "POST", "/generate", NULL, BASE_BODY ", \"batch_size\": 1}", &r);
    ck_assert_msg(r.status == 200, "%.300s", r.body);
    json_t *j = body_json(&r);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "seed")), 42);
    json_t *images = json_object_get(j, "images"), *params = json_object_get(j, "parameters");
    ck_assert_uint_eq(json_array_size(images), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(params, "steps")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(params, "width")), 64);
    ck_assert_str_eq(json_string_value(json_object_get(params, "prompt")), "a red cube");
    ck_assert_double_eq(json_real_value(json_object_get(params, "cfg_scale")), 7.5);
    size_t n = 0;
    uint8_t *png = unbase64(json_string_value(json_array_get(images, 0)), &n);
    int64_t w, h;
    got = decode_png((const char *)png, n, &w, &h);
    ck_assert_int_eq(w, 64);
    ck_assert_int_eq(h, 64);
    ck_assert_msg(!memcmp(got, want, IMG_BYTES), "JSON image differs from lh_pipeline_txt2img");
    free(got);
    json_decref(j);
    resp_free(&r);

    /* img2img: the image back in as a base64 PNG, against lh_pipeline_img2img */
    char *b64 = base64(png, n);
    size_t blen = strlen(b64) + 256;
    char *body = malloc(blen);
    ck_assert_ptr_nonnull(body);
    snprintf(body, blen, "{\"prompt\": \"a red cube\", \"steps\": 2, \"seed\": 42, "
                         "\"cfg_scale\": 7.5, \"strength\": 0.5, \"init_image\": \"%s\"}", b64);
    uint8_t *want2 = direct_txt2img(want, 0.5);
    got = generate_png(port, body);
    ck_assert_msg(!memcmp(got, want2, IMG_BYTES), "img2img differs from lh_pipeline_img2img");
    free(got);
    free(want2);
    free(body);
    free(b64);
    free(png);
    free(want);
    lh_server_stop(s);
}
END_TEST

START_TEST(test_bad_input) {
    lh_server_opts o;
    opts_for_test(&o);
    o.max_pixels = 512 * 512;
    lh_server *s = start(&o);
    int port = lh_server_port(s);
    static const struct {
        const char *body, *field;
    } CASES[] = {
        {"{\"steps\": 0}", "steps"},
        {"{\"steps\": 100000}", "steps"},
        {"{\"steps\": \"2\"}", "steps"},
        {"{\"steps\": 2.5}", "steps"},
        {"{\"width\": 63, \"height\": 64}", "width"},
        {"{\"width\": 64, \"height\": 60}", "height"},
        {"{\"width\": 8192, \"height\": 8192}", "width"},
        {"{\"width\": 512, \"height\": 512, \"batch_size\": 4}", "batch_size"},
        {"{\"cfg_scale\": NaN}", "cfg_scale"},
        {"{\"cfg_scale\": \"nan\"}", "cfg_scale"},
        {"{\"cfg_scale\": 1e999}", "cfg_scale"},
        {"{\"prompt\": 5}", "prompt"},
        {"{\"negative_prompt\": [\"x\"]}", "negative_prompt"},
        {"{\"seed\": -2}", "seed"},
        {"{\"batch_size\": 0}", "batch_size"},
        {"{\"strength\": 2}", "strength"},
        {"{\"sampler\": \"ddim\"}", "sampler"},
        {"{\"adapters\": {\"name\": \"x\"}}", "adapters"},
        {"{\"adapters\": [{\"name\": \"../x\"}]}", "adapters[0].name"},
        {"{\"adapters\": [{\"name\": \"a/b\"}]}", "adapters[0].name"},
        {"{\"adapters\": [{\"name\": \"a\", \"scale\": \"big\"}]}", "adapters[0].scale"},
        {"{\"init_image\": \"!!!!\"}", "init_image"},
        {"{\"init_image\": \"aGVsbG8=\"}", "init_image"},
        /* checked on the worker, against the registry and loaded adapters */
        {"{\"steps\": 1, \"width\": 64, \"height\": 64, \"scheduler\": \"no_such\"}", "scheduler"},
        {"{\"steps\": 1, \"width\": 64, \"height\": 64, \"adapters\": [{\"name\": \"nope\"}]}",
         "adapters[0].name"},
    };
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) {
        resp r;
        http(port, "POST", "/generate", NULL, CASES[i].body, &r);
        expect_error(&r, 400, CASES[i].field, CASES[i].body);
        resp_free(&r);
    }
    static const char *const NOT_OBJECTS[] = {"not json", "[1, 2]", ""};
    for (size_t i = 0; i < 3; i++) {
        resp r;
        http(port, "POST", "/generate", NULL, NOT_OBJECTS[i], &r);
        expect_error(&r, 400, NULL, NOT_OBJECTS[i]);
        resp_free(&r);
    }
    resp r;
    http(port, "POST", "/generate?format=gif", NULL, "{}", &r);
    expect_error(&r, 400, "format", "format=gif");
    resp_free(&r);

    /* adapter files: a name in an adapter directory, nothing else */
    static const struct {
        const char *body, *field;
        int status;
    } AD[] = {
        {"{\"file\": \"../adapters/sd1_A_kohya.safetensors\"}", "file", 400},
        {"{\"file\": \"/etc/passwd\"}", "file", 400},
        {"{\"file\": \"sub/x.safetensors\"}", "file", 400},
        {"{\"file\": \"..\"}", "file", 400},
        {"{\"file\": 7}", "file", 400},
        {"{\"name\": \"x\"}", "file", 400},
        {"{\"file\": \"sd1_A_kohya.safetensors\", \"name\": \"../a\"}", "name", 400},
        {"{\"file\": \"sd1_A_kohya.safetensors\", \"scale\": \"1\"}", "scale", 400},
        {"{\"file\": \"sd1_A_kohya.safetensors\", \"active\": 1}", "active", 400},
        {"{\"file\": \"no_such.safetensors\"}", "file", 404},
        {"{\"file\": \"sd2_C_kohya.safetensors\"}", "file", 400}, /* another model's */
    };
    for (size_t i = 0; i < sizeof AD / sizeof AD[0]; i++) {
        http(port, "POST", "/adapters", NULL, AD[i].body, &r);
        expect_error(&r, AD[i].status, AD[i].field, AD[i].body);
        resp_free(&r);
    }
    http(port, "DELETE", "/adapters/nope", NULL, NULL, &r);
    expect_error(&r, 404, "name", "DELETE /adapters/nope");
    resp_free(&r);
    http(port, "DELETE", "/adapters/..%2Fx", NULL, NULL, &r);
    expect_error(&r, 400, "name", "DELETE /adapters/..%2Fx");
    resp_free(&r);
    lh_server_stop(s);
}
END_TEST

START_TEST(test_api_keys) {
    lh_server_opts o;
    opts_for_test(&o);
    static const char *const KEYS[] = {"k1-first", "secret-two"};
    o.api_keys = KEYS;
    o.n_api_keys = 2;
    lh_server *s = start(&o);
    int port = lh_server_port(s);
    resp r;
    char buf[64];
    http(port, "GET", "/adapters", NULL, NULL, &r);
    expect_error(&r, 401, "Authorization", "no key");
    ck_assert_str_eq(header(&r, "WWW-Authenticate", buf, sizeof buf), "Bearer");
    resp_free(&r);
    static const char *const WRONG[] = {"Authorization: Bearer secret-tw\r\n",
                                        "Authorization: Bearer secret-two2\r\n",
                                        "Authorization: Bearer \r\n",
                                        "Authorization: secret-two\r\n",
                                        "Authorization: Basic c2VjcmV0LXR3bw==\r\n"};
    for (size_t i = 0; i < sizeof WRONG / sizeof WRONG[0]; i++) {
        http(port, "GET", "/adapters", WRONG[i], NULL, &r);
        expect_error(&r, 401, "Authorization", WRONG[i]);
        ck_assert_ptr_null(strstr(r.body, "secret"));
        resp_free(&r);
    }
    http(port, "POST", "/generate", "Authorization: Bearer bad\r\n", BASE_BODY "}", &r);
    expect_error(&r, 401, "Authorization", "generate, wrong key");
    resp_free(&r);
    http(port, "GET", "/adapters", "Authorization: Bearer secret-two\r\n", NULL, &r);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    http(port, "GET", "/metrics", "Authorization: Bearer k1-first\r\n", NULL, &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_msg(strstr(r.body, "route=\"/adapters\",status=\"401\"} 6\n"), "%s", r.body);
    resp_free(&r);
    http(port, "GET", "/healthz", NULL, NULL, &r); /* no key needed */
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    /* nor for the web page, which is host/web/index.html byte for byte */
    char path[4300];
    snprintf(path, sizeof path, "%s/host/web/index.html", g_src);
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "%s", path);
    static char page[1 << 20];
    size_t n = fread(page, 1, sizeof page, f);
    fclose(f);
    ck_assert(n > 0 && n < sizeof page);
    static const char *const PAGES[] = {"/", "/index.html"};
    for (size_t i = 0; i < 2; i++) {
        http(port, "GET", PAGES[i], NULL, NULL, &r);
        ck_assert_int_eq(r.status, 200);
        ck_assert_str_eq(header(&r, "Content-Type", buf, sizeof buf), "text/html; charset=utf-8");
        ck_assert_uint_eq(r.body_len, n);
        ck_assert_msg(!memcmp(r.body, page, n), "%s is not host/web/index.html", PAGES[i]);
        resp_free(&r);
    }
    lh_server_stop(s);
}
END_TEST

START_TEST(test_rate_limits) {
    lh_server_opts o;
    opts_for_test(&o);
    o.qps = 2;
    lh_server *s = start(&o);
    int port = lh_server_port(s);
    resp r;
    char buf[32];
    int ok = 0, limited = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < 50 && !limited; i++) {
        http(port, "GET", "/adapters", NULL, NULL, &r);
        if (r.status == 200) {
            ok++;
        } else {
            expect_error(&r, 429, NULL, "over qps");
            ck_assert_ptr_nonnull(header(&r, "Retry-After", buf, sizeof buf));
            ck_assert_int_ge(atoi(buf), 1);
            limited++;
        }
        resp_free(&r);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double dt = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    ck_assert_int_eq(limited, 1);
    /* a burst of 2, then 2 per second (however slow the machine is) */
    ck_assert_int_ge(ok, 2);
    ck_assert_msg(ok <= 2 + (int)(2 * dt) + 1, "%d requests passed in %.2f s at qps 2", ok, dt);
    http(port, "GET", "/healthz", NULL, NULL, &r); /* not limited */
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    lh_server_stop(s);

    /* per key: one key's burst does not spend another's */
    opts_for_test(&o);
    static const char *const KEYS[] = {"key-a", "key-b"};
    o.api_keys = KEYS;
    o.n_api_keys = 2;
    o.qps = 1000;
    o.qps_per_key = 0.2; /* a burst of one, then one per 5 s */
    s = start(&o);
    port = lh_server_port(s);
    http(port, "GET", "/adapters", "Authorization: Bearer key-a\r\n", NULL, &r);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    http(port, "GET", "/adapters", "Authorization: Bearer key-a\r\n", NULL, &r);
    expect_error(&r, 429, NULL, "key-a over its qps");
    ck_assert_ptr_nonnull(header(&r, "Retry-After", buf, sizeof buf));
    ck_assert_int_ge(atoi(buf), 2); /* about 5, less on a slow machine */
    ck_assert_int_le(atoi(buf), 5);
    resp_free(&r);
    http(port, "GET", "/adapters", "Authorization: Bearer key-b\r\n", NULL, &r);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    lh_server_stop(s);
}
END_TEST

START_TEST(test_body_limit) {
    lh_server_opts o;
    opts_for_test(&o);
    o.max_body_bytes = 1024;
    lh_server *s = start(&o);
    int port = lh_server_port(s);
    resp r;
    /* announced by Content-Length: refused before any body is read */
    static const char BIG[] = "POST /generate HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                              "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n";
    http_raw(port, BIG, sizeof BIG - 1, &r);
    expect_error(&r, 413, NULL, "Content-Length 100000");
    resp_free(&r);
    /* chunked, found while reading */
    char req[4096];
    int n = snprintf(req, sizeof req, "POST /adapters HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                      "Transfer-Encoding: chunked\r\n\r\n");
    for (int c = 0; c < 3; c++) {
        n += snprintf(req + n, sizeof req - (size_t)n, "258\r\n");
        memset(req + n, ' ', 600);
        n += 600;
        n += snprintf(req + n, sizeof req - (size_t)n, "\r\n");
    }
    n += snprintf(req + n, sizeof req - (size_t)n, "0\r\n\r\n");
    http_raw(port, req, (size_t)n, &r);
    expect_error(&r, 413, NULL, "chunked 1800 bytes");
    resp_free(&r);
    /* at the limit is fine (a 400 for the content, not a 413) */
    char body[1025];
    memset(body, ' ', 1024);
    memcpy(body, "{\"bogus\": 1", 11);
    body[1023] = '}';
    body[1024] = 0;
    http(port, "POST", "/generate", NULL, body, &r);
    expect_error(&r, 400, "bogus", "a body of exactly the limit");
    resp_free(&r);
    lh_server_stop(s);
}
END_TEST

typedef struct bg {
    int port;
    const char *body;
    resp r;
    pthread_t t;
} bg;

static void *bg_post(void *arg) {
    bg *b = arg;
    http(b->port, "POST", "/generate?format=png", NULL, b->body, &b->r);
    return NULL;
}

static void sleep_ms(long ms) {
    struct timespec d = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&d, NULL);
}

/* Poll /metrics until at least `others` requests besides the poll itself
 * are in flight and `depth` jobs wait (10 s at most). */
static void wait_state(int port, long others, long depth) {
    for (int i = 0; i < 1000; i++) {
        resp r;
        http(port, "GET", "/metrics", NULL, NULL, &r);
        long f = gauge(&r, "lorahost_in_flight_requests"), d = gauge(&r, "lorahost_queue_depth");
        resp_free(&r);
        if (f >= others + 1 && d == depth) return;
        sleep_ms(10);
    }
    ck_abort_msg("the server never reached %ld requests in flight, %ld queued", others, depth);
}

#define SMALL "{\"steps\": 1, \"width\": 64, \"height\": 64, \"seed\": 1}"

START_TEST(test_queue_full) {
    lh_server_opts o;
    opts_for_test(&o);
    o.queue_size = 1;
    o.http_threads = 1; /* waiting requests do not hold it: the polls below get through */
    o.test_job_delay_ms = 3000;
    lh_server *s = start(&o);
    int port = lh_server_port(s);
    bg a = {port, SMALL, {0}, 0}, b = {port, SMALL, {0}, 0};
    ck_assert_int_eq(pthread_create(&a.t, NULL, bg_post, &a), 0);
    wait_state(port, 1, 0); /* a runs (in the worker's delay) */
    ck_assert_int_eq(pthread_create(&b.t, NULL, bg_post, &b), 0);
    wait_state(port, 2, 1); /* b waits */
    resp r;
    http(port, "POST", "/generate", NULL, SMALL, &r); /* no room */
    expect_error(&r, 503, NULL, "queue full");
    char buf[16];
    ck_assert_ptr_nonnull(header(&r, "Retry-After", buf, sizeof buf));
    resp_free(&r);
    http(port, "GET", "/metrics", NULL, NULL, &r);
    ck_assert_msg(strstr(r.body, "\nlorahost_queue_depth 1\n"), "%s", r.body);
    ck_assert_int_ge(gauge(&r, "lorahost_in_flight_requests"), 3); /* a, b, this one */
    resp_free(&r);
    pthread_join(a.t, NULL);
    pthread_join(b.t, NULL);
    ck_assert_int_eq(a.r.status, 200);
    ck_assert_int_eq(b.r.status, 200);
    resp_free(&a.r);
    resp_free(&b.r);
    lh_server_stop(s);

    /* a job not started within queue_timeout_s */
    opts_for_test(&o);
    o.queue_timeout_s = 1;
    o.test_job_delay_ms = 2500;
    s = start(&o);
    port = lh_server_port(s);
    a.port = port;
    ck_assert_int_eq(pthread_create(&a.t, NULL, bg_post, &a), 0);
    wait_state(port, 1, 0);
    http(port, "POST", "/generate", NULL, SMALL, &r);
    expect_error(&r, 503, NULL, "queue timeout");
    resp_free(&r);
    pthread_join(a.t, NULL);
    ck_assert_int_eq(a.r.status, 200);
    resp_free(&a.r);
    lh_server_stop(s);
}
END_TEST

START_TEST(test_adapters) {
    lh_server_opts o;
    opts_for_test(&o);
    lh_server *s = start(&o);
    int port = lh_server_port(s);
    uint8_t *base = generate_png(port, BASE_BODY "}");
    resp r;
    http(port, "POST", "/adapters", NULL,
         "{\"file\": \"sd1_A_kohya.safetensors\", \"name\": \"style\", \"scale\": 1.0}", &r);
    ck_assert_msg(r.status == 201, "%d %.300s", r.status, r.body);
    json_t *j = body_json(&r);
    ck_assert_str_eq(json_string_value(json_object_get(j, "name")), "style");
    ck_assert_int_gt(json_integer_value(json_object_get(j, "layers_unet")), 0);
    json_decref(j);
    resp_free(&r);
    http(port, "POST", "/adapters", NULL, "{\"file\": \"sd1_A_kohya.safetensors\", \"name\": \"style\"}",
         &r);
    expect_error(&r, 409, "name", "the same name twice");
    resp_free(&r);
    http(port, "GET", "/adapters", NULL, NULL, &r);
    j = body_json(&r);
    json_t *list = json_object_get(j, "adapters");
    ck_assert_uint_eq(json_array_size(list), 1);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(list, 0), "name")), "style");
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(list, 0), "file")),
                     "sd1_A_kohya.safetensors");
    ck_assert_double_eq(json_real_value(json_object_get(json_array_get(list, 0), "scale")), 1.0);
    ck_assert(json_is_false(json_object_get(json_array_get(list, 0), "active")));
    json_decref(j);
    resp_free(&r);

    /* loaded but not active: the default image is unchanged */
    uint8_t *img = generate_png(port, BASE_BODY "}");
    ck_assert_msg(!memcmp(img, base, IMG_BYTES), "a loaded, inactive adapter changed the image");
    free(img);
    /* per request: changes the image, and only that request's */
    uint8_t *styled = generate_png(port, BASE_BODY ", \"adapters\": [{\"name\": \"style\", "
                                                   "\"scale\": 1.0}]}");
    ck_assert_msg(memcmp(styled, base, IMG_BYTES), "the adapter did not change the image");
    img = generate_png(port, BASE_BODY "}");
    ck_assert_msg(!memcmp(img, base, IMG_BYTES), "the request's adapter leaked into the next");
    free(img);
    /* the adapter's default scale when the request gives none */
    img = generate_png(port, BASE_BODY ", \"adapters\": [{\"name\": \"style\"}]}");
    ck_assert_msg(!memcmp(img, styled, IMG_BYTES), "default scale 1 differs from scale 1");
    free(img);

    http(port, "GET", "/metrics", NULL, NULL, &r);
    ck_assert_msg(strstr(r.body, "\nlorahost_adapters_loaded 1\n"), "%s", r.body);
    ck_assert_msg(strstr(r.body, "lorahost_http_requests_total{route=\"/generate\",status=\"200\"} 5\n"),
                  "%s", r.body);
    resp_free(&r);

    http(port, "DELETE", "/adapters/style", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    http(port, "GET", "/adapters", NULL, NULL, &r);
    j = body_json(&r);
    ck_assert_uint_eq(json_array_size(json_object_get(j, "adapters")), 0);
    json_decref(j);
    resp_free(&r);
    http(port, "POST", "/generate", NULL,
         BASE_BODY ", \"adapters\": [{\"name\": \"style\", \"scale\": 1.0}]}", &r);
    expect_error(&r, 400, "adapters[0].name", "a deleted adapter");
    resp_free(&r);

    /* active: in the default set; "adapters": [] asks for none */
    http(port, "POST", "/adapters", NULL,
         "{\"file\": \"sd1_A_kohya.safetensors\", \"active\": true}", &r);
    ck_assert_msg(r.status == 201, "%d %.300s", r.status, r.body);
    j = body_json(&r);
    ck_assert_str_eq(json_string_value(json_object_get(j, "name")), "sd1_A_kohya");
    json_decref(j);
    resp_free(&r);
    img = generate_png(port, BASE_BODY "}");
    ck_assert_msg(!memcmp(img, styled, IMG_BYTES), "the active adapter is not in the default set");
    free(img);
    img = generate_png(port, BASE_BODY ", \"adapters\": []}");
    ck_assert_msg(!memcmp(img, base, IMG_BYTES), "\"adapters\": [] still applied one");
    free(img);
    img = generate_png(port, BASE_BODY "}");
    ck_assert_msg(!memcmp(img, styled, IMG_BYTES), "the default set was not restored");
    free(img);
    http(port, "DELETE", "/adapters/sd1_A_kohya", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    img = generate_png(port, BASE_BODY "}");
    ck_assert_msg(!memcmp(img, base, IMG_BYTES), "a deleted adapter still applies");
    free(img);
    free(styled);
    free(base);
    lh_server_stop(s);
}
END_TEST

START_TEST(test_graceful_stop) {
    lh_server_opts o;
    opts_for_test(&o);
    o.test_job_delay_ms = 800;
    lh_server *s = start(&o);
    int port = lh_server_port(s);
    bg a = {port, SMALL, {0}, 0};
    ck_assert_int_eq(pthread_create(&a.t, NULL, bg_post, &a), 0);
    wait_state(port, 1, 0);
    lh_server_stop(s); /* returns after the request in flight is answered */
    pthread_join(a.t, NULL);
    ck_assert_int_eq(a.r.status, 200);
    resp_free(&a.r);
    int fd = connect_to(port);
    ck_assert_int_lt(fd, 0); /* nothing listens any more */
}
END_TEST

/* The in-memory PNG codec the server uses is the file one's: the same
 * bytes as lh_png_write_texts writes, read back as lh_png_read does. */
START_TEST(test_png_memory) {
    enum { W = 24, H = 16 };
    uint8_t rgb[W * H * 3];
    for (size_t i = 0; i < sizeof rgb; i++) rgb[i] = (uint8_t)(i * 7 + i / 5);
    lh_png_text t[2] = {{"parameters", "a cat\nSteps: 2"}, {"lorahost_safety", "{}"}};
    lh_error err = {0};
    void *png = NULL;
    size_t n = 0;
    ck_assert_msg(lh_png_encode(&png, &n, "mem", rgb, W, H, t, 2, &err) == LH_OK, "%s", err.msg);
    char path[] = "/tmp/lh_test_server_png_XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    ck_assert_msg(lh_png_write_texts(path, rgb, W, H, t, 2, &err) == LH_OK, "%s", err.msg);
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    char *file = malloc(n + 16);
    ck_assert_ptr_nonnull(file);
    size_t got = fread(file, 1, n + 16, f);
    fclose(f);
    ck_assert_uint_eq(got, n);
    ck_assert(!memcmp(file, png, n));
    uint8_t *a = NULL, *b = NULL;
    int64_t w = 0, h = 0;
    ck_assert_int_eq(lh_png_decode(png, n, "mem", &a, &w, &h, &err), LH_OK);
    ck_assert_int_eq(w, W);
    ck_assert_int_eq(h, H);
    ck_assert_int_eq(lh_png_read(path, &b, &w, &h, &err), LH_OK);
    ck_assert(!memcmp(a, rgb, sizeof rgb));
    ck_assert(!memcmp(b, rgb, sizeof rgb));
    free(b);
    char *text = NULL;
    ck_assert_int_eq(lh_png_read_text(path, "parameters", &text, &err), LH_OK);
    ck_assert_str_eq(text, "a cat\nSteps: 2");
    free(text);
    /* not a PNG, and a truncated one: errors naming the source */
    ck_assert_int_eq(lh_png_decode("hello", 5, "init_image", &b, &w, &h, &err),
                     LH_ERR_FORMAT);
    ck_assert_ptr_null(b);
    ck_assert_msg(strstr(err.msg, "init_image: not a PNG"), "%s", err.msg);
    ck_assert_int_eq(lh_png_decode(png, n / 2, "half", &b, &w, &h, &err), LH_ERR_FORMAT);
    ck_assert_ptr_null(b);
    ck_assert_msg(strstr(err.msg, "half"), "%s", err.msg);
    free(a);
    free(file);
    free(png);
    unlink(path);
}
END_TEST

/* Idle connections are closed after connection_timeout_s. */
START_TEST(test_connection_timeout) {
    lh_server_opts o;
    opts_for_test(&o);
    o.connection_timeout_s = 1;
    lh_server *s = start(&o);
    int fd = connect_to(lh_server_port(s));
    ck_assert_int_ge(fd, 0);
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    char c;
    ssize_t k = recv(fd, &c, 1, 0); /* nothing sent: the server hangs up */
    clock_gettime(CLOCK_MONOTONIC, &t1);
    close(fd);
    double dt = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    ck_assert_int_le(k, 0);
    ck_assert_msg(dt > 0.5 && dt < 8, "closed after %.2f s", dt);
    lh_server_stop(s);
}
END_TEST

/* The base64 PNG at images[i] of a JSON reply, decoded (64x64). */
static uint8_t *json_image(json_t *j, size_t i) {
    json_t *images = json_object_get(j, "images");
    ck_assert_msg(json_is_string(json_array_get(images, i)), "no image %zu", i);
    size_t n = 0;
    uint8_t *png = unbase64(json_string_value(json_array_get(images, i)), &n);
    int64_t w, h;
    uint8_t *rgb = decode_png((const char *)png, n, &w, &h);
    ck_assert_int_eq(w, 64);
    ck_assert_int_eq(h, 64);
    free(png);
    return rgb;
}

/* A1111's /sdapi/v1/txt2img and img2img give what the pipeline gives, in
 * A1111's reply format; its fields map, its "off" values pass, the rest is
 * refused naming the field. */
START_TEST(test_sdapi) {
    lh_server_opts o;
    opts_for_test(&o);
    lh_server *s = start(&o);
    int port = lh_server_port(s);
    uint8_t *want = direct_txt2img(NULL, 0);
    resp r;
    http(port, "POST", "/sdapi/v1/txt2img", NULL,
         "{\"prompt\": \"a red cube\", \"negative_prompt\": \"\", \"steps\": 2, \"width\": 64, "
         "\"height\": 64, \"seed\": 42, \"cfg_scale\": 7.5, \"batch_size\": 1, \"n_iter\": 1, "
         "\"sampler_name\": null, \"restore_faces\": false, \"tiling\": false, \"styles\": [], "
         "\"subseed\": -1, \"subseed_strength\": 0, \"enable_hr\": false, \"save_images\": false, "
         "\"send_images\": true, \"override_settings\": {}, \"alwayson_scripts\": {}, "
         "\"s_churn\": 0, \"s_noise\": 1, \"eta\": null, \"do_not_save_grid\": true}", &r);
    ck_assert_msg(r.status == 200, "%d %.300s", r.status, r.body);
    json_t *j = body_json(&r);
    uint8_t *got = json_image(j, 0);
    ck_assert_msg(!memcmp(got, want, IMG_BYTES), "txt2img differs from lh_pipeline_txt2img");
    free(got);
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(j, "parameters"), "seed")),
                     42);
    json_t *info = json_loads(json_string_value(json_object_get(j, "info")), 0, NULL);
    ck_assert_msg(info != NULL, "info is not JSON text");
    ck_assert_int_eq(json_integer_value(json_object_get(info, "seed")), 42);
    ck_assert_int_eq(json_integer_value(json_array_get(json_object_get(info, "all_seeds"), 0)), 42);
    ck_assert_str_eq(json_string_value(json_object_get(info, "prompt")), "a red cube");
    ck_assert_msg(strstr(json_string_value(json_array_get(json_object_get(info, "infotexts"), 0)),
                         "Seed: 42"), "infotext without the seed");
    ck_assert_str_eq(json_string_value(json_object_get(info, "sd_model_name")), "sd1_tiny");
    json_decref(info);
    /* img2img with that image, against lh_pipeline_img2img */
    size_t n = 0;
    uint8_t *png = unbase64(json_string_value(json_array_get(json_object_get(j, "images"), 0)), &n);
    json_decref(j);
    resp_free(&r);
    char *b64 = base64(png, n);
    size_t blen = strlen(b64) + 512;
    char *body = malloc(blen);
    ck_assert_ptr_nonnull(body);
    snprintf(body, blen, "{\"prompt\": \"a red cube\", \"steps\": 2, \"seed\": 42, \"cfg_scale\": "
                         "7.5, \"denoising_strength\": 0.5, \"resize_mode\": 0, \"mask\": null, "
                         "\"init_images\": [\"data:image/png;base64,%s\"]}", b64);
    uint8_t *want2 = direct_txt2img(want, 0.5);
    http(port, "POST", "/sdapi/v1/img2img", NULL, body, &r);
    ck_assert_msg(r.status == 200, "%d %.300s", r.status, r.body);
    j = body_json(&r);
    got = json_image(j, 0);
    ck_assert_msg(!memcmp(got, want2, IMG_BYTES), "img2img differs from lh_pipeline_img2img");
    free(got);
    info = json_loads(json_string_value(json_object_get(j, "info")), 0, NULL);
    ck_assert_double_eq_tol(json_real_value(json_object_get(info, "denoising_strength")), 0.5,
                            1e-12);
    json_decref(info);
    json_decref(j);
    resp_free(&r);
    /* two init images: one image for the batch */
    snprintf(body, blen, "{\"init_images\": [\"%s\", \"%s\"]}", "AAAA", "AAAA");
    http(port, "POST", "/sdapi/v1/img2img", NULL, body, &r);
    expect_error(&r, 400, "init_images", "two init images");
    resp_free(&r);
    free(body);
    free(b64);
    free(png);
    free(want2);

    /* n_iter: batches seeded seed, seed + 1; the first is the image above */
    http(port, "POST", "/sdapi/v1/txt2img", NULL,
         "{\"prompt\": \"a red cube\", \"steps\": 2, \"width\": 64, \"height\": 64, \"seed\": 42, "
         "\"cfg_scale\": 7.5, \"n_iter\": 2}", &r);
    ck_assert_msg(r.status == 200, "%d %.300s", r.status, r.body);
    j = body_json(&r);
    ck_assert_uint_eq(json_array_size(json_object_get(j, "images")), 2);
    got = json_image(j, 0);
    ck_assert_msg(!memcmp(got, want, IMG_BYTES), "n_iter: first image differs");
    free(got);
    got = json_image(j, 1);
    ck_assert_msg(memcmp(got, want, IMG_BYTES), "n_iter: second image is the first");
    free(got);
    info = json_loads(json_string_value(json_object_get(j, "info")), 0, NULL);
    ck_assert_int_eq(json_integer_value(json_array_get(json_object_get(info, "all_seeds"), 1)), 43);
    json_decref(info);
    json_decref(j);
    resp_free(&r);

    /* <lora:NAME:W>: loaded from the adapter directory on first use; the
     * same image as /generate with that adapter at that scale */
    http(port, "POST", "/sdapi/v1/txt2img", NULL,
         "{\"prompt\": \"a red <lora:sd1_A_kohya:0.8>cube\", \"steps\": 2, \"width\": 64, "
         "\"height\": 64, \"seed\": 42, \"cfg_scale\": 7.5}", &r);
    ck_assert_msg(r.status == 200, "%d %.300s", r.status, r.body);
    j = body_json(&r);
    uint8_t *styled = json_image(j, 0);
    ck_assert_msg(memcmp(styled, want, IMG_BYTES), "the lora tag did not change the image");
    json_decref(j);
    resp_free(&r);
    got = generate_png(port, BASE_BODY ", \"adapters\": [{\"name\": \"sd1_A_kohya\", \"scale\": 0.8}]}");
    ck_assert_msg(!memcmp(got, styled, IMG_BYTES), "<lora:...:0.8> differs from scale 0.8");
    free(got);
    free(styled);
    got = generate_png(port, BASE_BODY "}");
    ck_assert_msg(!memcmp(got, want, IMG_BYTES), "the tag's adapter stayed active");
    free(got);

    http(port, "GET", "/sdapi/v1/samplers", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_msg(strstr(r.body, "\"name\":\"Euler a\""), "%.300s", r.body);
    ck_assert_msg(strstr(r.body, "\"name\":\"DPM++ 2M Karras\""), "%.300s", r.body);
    resp_free(&r);

    static const struct {
        const char *body, *field;
    } BAD[] = {
        {"{\"enable_hr\": true}", "enable_hr"},
        {"{\"restore_faces\": true}", "restore_faces"},
        {"{\"mask\": \"iVBORw0KGgo=\"}", "mask"},
        {"{\"script_name\": \"x/y/z plot\"}", "script_name"},
        {"{\"sampler_name\": \"DPM++ 2M\", \"scheduler\": \"Beta\"}", "scheduler"},
        {"{\"sampler_name\": \"Nope\", \"steps\": 1, \"width\": 64, \"height\": 64}", "sampler_name"},
        {"{\"steps\": 0}", "steps"},
        {"{\"width\": 65}", "width"},
        {"{\"n_iter\": 17}", "n_iter"},
        {"{\"cfg_scale\": \"7\"}", "cfg_scale"},
        {"{\"bogus\": 1}", "bogus"},
        {"{\"send_images\": false}", "send_images"},
        {"{\"override_settings\": {\"sd_vae\": \"x\", \"CLIP_stop_at_last_layers\": 0}}",
         "override_settings.CLIP_stop_at_last_layers"},
        {"{\"override_settings\": {\"samples_format\": \"jpg\"}}", "override_settings.samples_format"},
        {"{\"prompt\": \"<lora:../etc/passwd:1>\"}", "prompt"},
        {"{\"prompt\": \"<lora:missing:1>\", \"steps\": 1, \"width\": 64, \"height\": 64}", "prompt"},
        {"{\"prompt\": \"x\", \"steps\":", "steps"},
    };
    for (size_t i = 0; i < sizeof BAD / sizeof BAD[0]; i++) {
        http(port, "POST", "/sdapi/v1/txt2img", NULL, BAD[i].body, &r);
        expect_error(&r, 400, BAD[i].field, BAD[i].body);
        resp_free(&r);
    }
    http(port, "POST", "/sdapi/v1/img2img", NULL, "{\"prompt\": \"x\"}", &r);
    expect_error(&r, 400, "init_images", "img2img without init_images");
    resp_free(&r);
    http(port, "GET", "/sdapi/v1/txt2img", NULL, NULL, &r);
    expect_error(&r, 405, NULL, "GET txt2img");
    resp_free(&r);
    free(want);
    lh_server_stop(s);
}
END_TEST

/* Queued requests with the same settings run as one pipeline batch; each
 * image is within rounding of the same request run alone. */
START_TEST(test_batching) {
    lh_server_opts o;
    opts_for_test(&o);
    o.batch_max = 4;
    o.http_threads = 2;
    o.test_job_delay_ms = 1500; /* the first job waits here while the others queue */
    lh_server *s = start(&o);
    int port = lh_server_port(s);
    static const char *const BODIES[4] = {
        "{\"prompt\": \"a red cube\", \"steps\": 2, \"width\": 64, \"height\": 64, \"seed\": 1}",
        "{\"prompt\": \"a red cube\", \"steps\": 2, \"width\": 64, \"height\": 64, \"seed\": 7}",
        "{\"prompt\": \"a blue ball\", \"steps\": 2, \"width\": 64, \"height\": 64, \"seed\": 8}",
        ("{\"prompt\": \"a green cone\", \"negative_prompt\": \"red\", \"steps\": 2, \"width\": 64, "
         "\"height\": 64, \"seed\": 9}")};
    bg b[4];
    b[0] = (bg){port, BODIES[0], {0}, 0};
    ck_assert_int_eq(pthread_create(&b[0].t, NULL, bg_post, &b[0]), 0);
    wait_state(port, 1, 0);
    for (int i = 1; i < 4; i++) {
        b[i] = (bg){port, BODIES[i], {0}, 0};
        ck_assert_int_eq(pthread_create(&b[i].t, NULL, bg_post, &b[i]), 0);
        wait_state(port, i + 1, i);
    }
    uint8_t *imgs[4];
    for (int i = 0; i < 4; i++) {
        pthread_join(b[i].t, NULL);
        ck_assert_msg(b[i].r.status == 200, "request %d: %d %.200s", i, b[i].r.status, b[i].r.body);
        int64_t w, h;
        imgs[i] = decode_png(b[i].r.body, b[i].r.body_len, &w, &h);
        resp_free(&b[i].r);
    }
    resp r;
    http(port, "GET", "/metrics", NULL, NULL, &r);
    ck_assert_msg(strstr(r.body, "\nlorahost_batches_total 1\n"), "%s", r.body);
    ck_assert_msg(strstr(r.body, "\nlorahost_batched_requests_total 3\n"), "%s", r.body);
    resp_free(&r);
    lh_server_stop(s);
    /* alone: one request at a time */
    opts_for_test(&o);
    s = start(&o);
    port = lh_server_port(s);
    for (int i = 0; i < 4; i++) {
        uint8_t *alone = generate_png(port, BODIES[i]);
        int worst = 0;
        for (int k = 0; k < IMG_BYTES; k++) {
            int d = abs((int)alone[k] - (int)imgs[i][k]);
            if (d > worst) worst = d;
        }
        /* the first ran alone both times; the batched rows round differently (<= 1/255) */
        ck_assert_msg(i ? worst <= 1 : worst == 0, "request %d: batched image differs by %d", i,
                      worst);
        free(alone);
        free(imgs[i]);
    }
    lh_server_stop(s);
}
END_TEST

/* The circuit breaker opens while the p95 of queue wait is above its
 * threshold and closes once the slow waits have aged out. */
START_TEST(test_breaker) {
    lh_server_opts o;
    opts_for_test(&o);
    o.breaker_p95_ms = 200;
    o.breaker_window_s = 1;
    o.test_job_delay_ms = 900;
    o.http_threads = 2;
    lh_server *s = start(&o);
    int port = lh_server_port(s);
    bg a = {port, SMALL, {0}, 0}, b = {port, SMALL, {0}, 0};
    ck_assert_int_eq(pthread_create(&a.t, NULL, bg_post, &a), 0);
    wait_state(port, 1, 0);
    ck_assert_int_eq(pthread_create(&b.t, NULL, bg_post, &b), 0);
    wait_state(port, 2, 1);
    sleep_ms(400); /* b has waited > 200 ms */
    resp r;
    http(port, "POST", "/generate", NULL, SMALL, &r);
    expect_error(&r, 503, NULL, "breaker open");
    ck_assert_msg(strstr(r.body, "circuit breaker"), "%s", r.body);
    char buf[16];
    ck_assert_ptr_nonnull(header(&r, "Retry-After", buf, sizeof buf));
    resp_free(&r);
    http(port, "GET", "/metrics", NULL, NULL, &r);
    ck_assert_int_eq(gauge(&r, "lorahost_breaker_open"), 1);
    ck_assert_int_eq(gauge(&r, "lorahost_breaker_opened_total"), 1);
    resp_free(&r);
    /* healthz and lists are not refused */
    http(port, "GET", "/healthz", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    pthread_join(a.t, NULL);
    pthread_join(b.t, NULL);
    ck_assert_int_eq(a.r.status, 200);
    ck_assert_int_eq(b.r.status, 200);
    resp_free(&a.r);
    resp_free(&b.r);
    sleep_ms(1200); /* the window passes */
    http(port, "POST", "/generate", NULL, SMALL, &r);
    ck_assert_msg(r.status == 200, "after recovery: %d %.200s", r.status, r.body);
    resp_free(&r);
    http(port, "GET", "/metrics", NULL, NULL, &r);
    ck_assert_int_eq(gauge(&r, "lorahost_breaker_open"), 0);
    resp_free(&r);
    lh_server_stop(s);
}
END_TEST

/* The access log: one JSON line per request in today's file, no API key in
 * it, and files older than log_keep_days deleted at start. */
START_TEST(test_access_log) {
    char dir[] = "/tmp/lh_access_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char path[512], today[16], recent[16];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(today, sizeof today, "%Y-%m-%d", &tm);
    time_t then = now - 2 * 86400;
    gmtime_r(&then, &tm);
    strftime(recent, sizeof recent, "%Y-%m-%d", &tm);
    static const char *const FILES[] = {"access-2001-01-01.jsonl", "access-2001-01-02.jsonl",
                                        "notes.txt", "access-2001-01-03.jsonl.bak"};
    for (int i = 0; i < 5; i++) {
        if (i < 4) snprintf(path, sizeof path, "%s/%s", dir, FILES[i]);
        else snprintf(path, sizeof path, "%s/access-%s.jsonl", dir, recent);
        FILE *f = fopen(path, "w");
        ck_assert_ptr_nonnull(f);
        fputs("{}\n", f);
        fclose(f);
    }
    static const char *const KEYS[] = {"k-one-secret", "k-two-secret"};
    lh_server_opts o;
    opts_for_test(&o);
    o.log_dir = dir;
    o.log_keep_days = 7;
    o.api_keys = KEYS;
    o.n_api_keys = 2;
    lh_server *s = start(&o);
    int port = lh_server_port(s);
    resp r;
    http(port, "GET", "/healthz", NULL, NULL, &r);
    resp_free(&r);
    http(port, "GET", "/adapters", "Authorization: Bearer k-two-secret\r\n", NULL, &r);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    http(port, "GET", "/adapters", "Authorization: Bearer wrong-secret\r\n", NULL, &r);
    ck_assert_int_eq(r.status, 401);
    resp_free(&r);
    lh_server_stop(s);
    for (int i = 0; i < 5; i++) {
        struct stat sb;
        if (i < 4) snprintf(path, sizeof path, "%s/%s", dir, FILES[i]);
        else snprintf(path, sizeof path, "%s/access-%s.jsonl", dir, recent);
        int kept = stat(path, &sb) == 0;
        ck_assert_msg(kept == (i >= 2), "%s: %s", path, kept ? "kept" : "deleted");
        unlink(path);
    }
    snprintf(path, sizeof path, "%s/access-%s.jsonl", dir, today);
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "no %s", path);
    char line[2048];
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        ck_assert_msg(!strstr(line, "secret"), "a key in the log: %s", line);
        json_t *j = json_loads(line, 0, NULL);
        ck_assert_msg(j != NULL, "not JSON: %s", line);
        int status = (int)json_integer_value(json_object_get(j, "status"));
        ck_assert_int_eq(status, n == 0 ? 200 : n == 1 ? 200 : 401);
        ck_assert_str_eq(json_string_value(json_object_get(j, "remote")), "127.0.0.1");
        ck_assert_msg(json_is_string(json_object_get(j, "time")), "no time");
        if (n == 1) ck_assert_int_eq(json_integer_value(json_object_get(j, "key")), 2);
        if (n == 2) ck_assert(json_is_null(json_object_get(j, "key")));
        json_decref(j);
        n++;
    }
    fclose(f);
    ck_assert_int_eq(n, 3);
    unlink(path);
    ck_assert_int_eq(rmdir(dir), 0);
    /* a log directory that is not there: the start fails naming it */
    opts_for_test(&o);
    o.log_dir = dir;
    lh_error err = {0};
    ck_assert_int_ne(lh_server_start(&s, &o, &err), LH_OK);
    ck_assert_msg(strstr(err.msg, "server.log_dir") && strstr(err.msg, dir), "%s", err.msg);
    /* out-of-range batch and breaker settings */
    opts_for_test(&o);
    o.batch_max = 0;
    ck_assert_int_eq(lh_server_start(&s, &o, &err), LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "batch"), "%s", err.msg);
    opts_for_test(&o);
    o.breaker_p95_ms = -1;
    ck_assert_int_eq(lh_server_start(&s, &o, &err), LH_ERR_INVALID);
    ck_assert_msg(strstr(err.msg, "breaker_p95_ms"), "%s", err.msg);
}
END_TEST

/* Concurrent clients: every one answered, the same seed the same image. */
#define N_CONCURRENT 6
START_TEST(test_concurrent) {
    lh_server_opts o;
    opts_for_test(&o);
    o.http_threads = 2;
    lh_server *s = start(&o);
    int port = lh_server_port(s);
    bg b[N_CONCURRENT];
    for (int i = 0; i < N_CONCURRENT; i++) {
        b[i] = (bg){port, SMALL, {0}, 0};
        ck_assert_int_eq(pthread_create(&b[i].t, NULL, bg_post, &b[i]), 0);
    }
    for (int i = 0; i < 20; i++) { /* small requests get through meanwhile */
        resp r;
        http(port, "GET", i % 2 ? "/healthz" : "/adapters", NULL, NULL, &r);
        ck_assert_int_eq(r.status, 200);
        resp_free(&r);
    }
    uint8_t *first = NULL;
    for (int i = 0; i < N_CONCURRENT; i++) {
        pthread_join(b[i].t, NULL);
        ck_assert_int_eq(b[i].r.status, 200);
        int64_t w, h;
        uint8_t *img = decode_png(b[i].r.body, b[i].r.body_len, &w, &h);
        if (!first) first = img;
        else {
            ck_assert_msg(!memcmp(img, first, IMG_BYTES), "request %d differs", i);
            free(img);
        }
        resp_free(&b[i].r);
    }
    free(first);
    resp r;
    http(port, "GET", "/metrics", NULL, NULL, &r);
    ck_assert_msg(strstr(r.body, "lorahost_http_requests_total{route=\"/generate\",status=\"200\"} 6\n"),
                  "%s", r.body);
    ck_assert_int_eq(gauge(&r, "lorahost_queue_depth"), 0);
    resp_free(&r);
    lh_server_stop(s);
}
END_TEST

/* [plugins] safety: a refused prompt is a 400 naming it before any compute;
 * an image checker's action is applied and reported; a rejected image is
 * not sent. */
static lh_server *start_safety(lh_settings **st, const char *action) {
    paths();
    lh_error err = {0};
    ck_assert_int_eq(lh_settings_create(st, &err), LH_OK);
    char set[4400];
    snprintf(set, sizeof set, "safety_prompt_filter.lists=%s/examples/safety/en.txt:reject:en",
             g_src);
    ck_assert_msg(lh_settings_set_override(*st, set, &err) == LH_OK, "%s", err.msg);
    ck_assert_int_eq(lh_settings_set_override(*st, "plugins.safety=prompt_filter,test_flag_all",
                                              &err), LH_OK);
    snprintf(set, sizeof set, "safety_test_flag_all.action=%s", action);
    ck_assert_msg(lh_settings_set_override(*st, set, &err) == LH_OK, "%s", err.msg);
    static char flagdir[4300];
    static const char *dirs[1];
    const char *build = getenv("LH_BUILD_DIR");
    snprintf(flagdir, sizeof flagdir, "%s/tests/plugins/safety", build ? build : "..");
    dirs[0] = flagdir;
    lh_server_opts o;
    opts_for_test(&o);
    o.settings = *st;
    o.plugin_dirs = dirs;
    o.n_plugin_dirs = 1;
    return start(&o);
}

START_TEST(test_safety) {
    lh_settings *st;
    lh_server *s = start_safety(&st, "blur");
    int port = lh_server_port(s);
    resp r;
    http(port, "POST", "/generate", NULL,
         "{\"prompt\": \"a FORBIDDEN example house\", \"steps\": 2, \"width\": 64, "
         "\"height\": 64}", &r);
    expect_error(&r, 400, "prompt", "a refused prompt");
    ck_assert_msg(strstr(r.body, "safety_prompt_filter"), "%s", r.body);
    resp_free(&r);
    http(port, "POST", "/generate", NULL, BASE_BODY "}", &r);
    ck_assert_msg(r.status == 200, "%.300s", r.body);
    json_t *j = body_json(&r);
    json_t *rep = json_array_get(json_object_get(j, "safety"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(rep, "action")), "blur");
    size_t n = 0;
    uint8_t *png = unbase64(json_string_value(json_array_get(json_object_get(j, "images"), 0)), &n);
    int64_t w, h;
    uint8_t *got = decode_png((const char *)png, n, &w, &h), *want = direct_txt2img(NULL, 0);
    ck_assert_msg(memcmp(got, want, IMG_BYTES), "the flagged image was not blurred");
    free(got);
    free(want);
    free(png);
    json_decref(j);
    resp_free(&r);
    lh_server_stop(s);
    lh_settings_destroy(st);

    s = start_safety(&st, "reject");
    port = lh_server_port(s);
    http(port, "POST", "/generate?format=png", NULL, BASE_BODY "}", &r);
    expect_error(&r, 422, NULL, "a rejected image as PNG");
    resp_free(&r);
    http(port, "POST", "/generate", NULL, BASE_BODY "}", &r);
    ck_assert_msg(r.status == 200, "%.300s", r.body);
    j = body_json(&r);
    ck_assert(json_is_null(json_array_get(json_object_get(j, "images"), 0)));
    rep = json_array_get(json_object_get(j, "safety"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(rep, "action")), "reject");
    json_decref(j);
    resp_free(&r);
    lh_server_stop(s);
    lh_settings_destroy(st);
}
END_TEST

/* `lorahost serve` itself: the listening line with the chosen port,
 * requests with a right and a wrong API key (neither ever in the log),
 * SIGTERM, exit status 0. */
START_TEST(test_cli_sigterm) {
    paths();
    const char *build = getenv("LH_BUILD_DIR");
    char exe[4300];
    snprintf(exe, sizeof exe, "%s/bin/lorahost", build ? build : "..");
    ck_assert_msg(!access(exe, X_OK), "no lorahost program at %s", exe);
    int out[2], errp[2];
    ck_assert_int_eq(pipe(out), 0);
    ck_assert_int_eq(pipe(errp), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        dup2(out[1], 1);
        dup2(errp[1], 2);
        close(out[0]);
        close(out[1]);
        close(errp[0]);
        close(errp[1]);
        execl(exe, exe, "serve", "--model", g_model, "--port", "0", "--set",
              "backend.threads=1", "--set", "server.api_keys=sekrit-one,sekrit-two",
              (char *)NULL);
        _exit(127);
    }
    close(out[1]);
    close(errp[1]);
    char line[512] = "";
    size_t n = 0;
    while (n + 1 < sizeof line) {
        ssize_t k = read(out[0], line + n, 1);
        if (k <= 0 || line[n] == '\n') break;
        n++;
    }
    line[n] = 0;
    const char *colon = strstr(line, "http://127.0.0.1:");
    ck_assert_msg(colon != NULL, "no listening line: '%s'", line);
    ck_assert_ptr_null(strstr(line, "sekrit"));
    int port = atoi(colon + strlen("http://127.0.0.1:"));
    ck_assert_int_gt(port, 0);
    resp r;
    http(port, "GET", "/healthz", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    http(port, "GET", "/adapters", "Authorization: Bearer sekrit-two\r\n", NULL, &r);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    http(port, "GET", "/adapters", "Authorization: Bearer sekrit-wrong\r\n", NULL, &r);
    ck_assert_int_eq(r.status, 401);
    resp_free(&r);
    ck_assert_int_eq(kill(pid, SIGTERM), 0);
    char log[16384];
    size_t len = 0;
    for (ssize_t k; len + 1 < sizeof log && (k = read(errp[0], log + len, sizeof log - 1 - len)) > 0;)
        len += (size_t)k;
    log[len] = 0;
    int status = 0;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    close(out[0]);
    close(errp[0]);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exit status %d: %s", status,
                  log);
    ck_assert_msg(strstr(log, "GET /adapters 401"), "no request lines in the log: %s", log);
    ck_assert_msg(strstr(log, "lorahost serve: stopped"), "%s", log);
    ck_assert_msg(!strstr(log, "sekrit"), "an API key in the log: %s", log);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("server");
    TCase *tc = tcase_create("server");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_png_memory);
    tcase_add_test(tc, test_routes);
    tcase_add_test(tc, test_generate_equals_pipeline);
    tcase_add_test(tc, test_bad_input);
    tcase_add_test(tc, test_api_keys);
    tcase_add_test(tc, test_rate_limits);
    tcase_add_test(tc, test_body_limit);
    tcase_add_test(tc, test_queue_full);
    tcase_add_test(tc, test_adapters);
    tcase_add_test(tc, test_connection_timeout);
    tcase_add_test(tc, test_concurrent);
    tcase_add_test(tc, test_safety);
    tcase_add_test(tc, test_graceful_stop);
    tcase_add_test(tc, test_cli_sigterm);
    tcase_add_test(tc, test_sdapi);
    tcase_add_test(tc, test_batching);
    tcase_add_test(tc, test_breaker);
    tcase_add_test(tc, test_access_log);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
