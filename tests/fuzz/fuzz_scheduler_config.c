/* libFuzzer target for what a scheduler does with a hostile
 * scheduler_config.json: lh_config_set_json on the input, every typed getter
 * on every key, then the shared create-time code of the scheduler plugins
 * (sched_base_init's beta schedules and the sched_read_* checks) through the
 * host-services table, with the schedule it builds checked.
 * Build and run: see tests/fuzz/CMakeLists.txt. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "host_api.h"
#include "plugin_config.h"
#include "sched_common.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) __builtin_trap();                                                             \
    } while (0)

enum { CAP = 8 }; /* room for config_doubles */

static const double FALLBACK = 42.5;

/* A getter's failure: LH_ERR_CONFIG with a message naming the key (unless
 * the key is too long for a message). */
static void check_bad_value(lh_status st, const char *msg, const char *key) {
    CHECK(st == LH_ERR_CONFIG && msg[0] && (strlen(key) > 256 || strstr(msg, key)));
}

/* Every typed getter on one key, and how their answers relate. */
static void read_key(const lh_config *cfg, const char *key) {
    char msg[LH_ERROR_MAX];
    const char *text = lh_config_string(cfg, key);
    CHECK(text != NULL);

    double d = 0;
    msg[0] = '\0';
    lh_status st_d = lh_config_double(cfg, key, FALLBACK, &d, msg, sizeof msg);
    if (st_d == LH_OK) {
        CHECK(isfinite(d));
    } else {
        check_bad_value(st_d, msg, key);
        CHECK(d == FALLBACK);
    }

    int64_t i = 0;
    msg[0] = '\0';
    lh_status st = lh_config_int(cfg, key, -7, &i, msg, sizeof msg);
    if (st == LH_OK) {
        CHECK(st_d == LH_OK && d == (double)i); /* a decimal integer is a number too */
    } else {
        check_bad_value(st, msg, key);
        CHECK(i == -7);
    }

    int b = -1;
    msg[0] = '\0';
    st = lh_config_bool(cfg, key, 5, &b, msg, sizeof msg);
    if (st == LH_OK) {
        CHECK(b == 0 || b == 1);
        CHECK(!strcasecmp(text, b ? "true" : "false") || !strcasecmp(text, b ? "yes" : "no") ||
              !strcasecmp(text, b ? "on" : "off") || !strcmp(text, b ? "1" : "0"));
    } else {
        check_bad_value(st, msg, key);
        CHECK(b == 5);
    }

    double list[CAP];
    size_t n = 99;
    msg[0] = '\0';
    st = lh_config_doubles(cfg, key, list, CAP, &n, msg, sizeof msg);
    if (st == LH_OK) {
        CHECK(n <= CAP);
        for (size_t k = 0; k < n; k++) CHECK(isfinite(list[k]));
    } else {
        CHECK(st == LH_ERR_CONFIG && msg[0] && (n == 0 || n > CAP));
    }
    if (st_d == LH_OK) CHECK(st == LH_OK && n == 1 && list[0] == d);
    /* counting only, as sched_base_init does for trained_betas */
    size_t count = 99;
    lh_status st_count = lh_config_doubles(cfg, key, NULL, 0, &count, msg, sizeof msg);
    CHECK(count == n && (st_count == LH_OK) == (st == LH_OK && n == 0));
}

/* The schedule sched_base_init built: what every scheduler indexes. */
static void check_base(const sched_base *b) {
    int64_t n = b->num_train_timesteps;
    CHECK(n >= 2 && n <= 100000 && b->betas && b->alphas_cumprod);
    CHECK(b->steps_offset >= 0 && b->steps_offset < n);
    CHECK(b->prediction_type >= 0 && b->prediction_type < SCHED_PRED_COUNT);
    CHECK(b->spacing >= 0 && b->spacing < SCHED_SPACING_COUNT);
    for (int64_t i = 0; i < n; i++) {
        CHECK(isfinite(b->betas[i]) && b->betas[i] >= 0.0f && b->betas[i] <= 1.0f);
        float a = b->alphas_cumprod[i];
        CHECK(isfinite(a) && a >= 0.0f && a <= 1.0f);
        CHECK(i == 0 || a <= b->alphas_cumprod[i - 1]);
    }
}

/* The create-time code a scheduler plugin runs on cfg. */
static void create(const lh_config *cfg, const sched_defaults *defaults) {
    const lh_host_api *host = lh_host_api_get();
    sched_base b;
    char msg[LH_ERROR_MAX] = "";
    lh_status st = sched_base_init(&b, host, "fuzz", cfg, defaults, msg, sizeof msg);
    if (st != LH_OK) {
        CHECK(st < 0 && msg[0] && !b.betas && !b.alphas_cumprod);
        return;
    }
    check_base(&b);
    int karras = -1, exponential = -1, on = -1;
    msg[0] = '\0';
    st = sched_read_sigma_kind(&b, cfg, &karras, &exponential, msg, sizeof msg);
    CHECK(st == LH_OK ? !(karras && exponential) : msg[0] != '\0');
    st = sched_read_zero_snr(&b, cfg, 0, &on, msg, sizeof msg);
    CHECK(st == LH_OK ? on == 0 : msg[0] != '\0');
    st = sched_refuse_sample_prediction(&b, msg, sizeof msg);
    CHECK((st == LH_OK) == (b.prediction_type != SCHED_PRED_SAMPLE));
    sched_base_free(&b);
    CHECK(!b.betas && !b.alphas_cumprod);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    CHECK(text != NULL);
    memcpy(text, data, size);
    text[size] = '\0';
    lh_error err = {0};
    lh_config *cfg = lh_config_create("fuzz", &err);
    CHECK(cfg != NULL);
    lh_status st = lh_config_set_json(cfg, text, "scheduler_config.json", &err);
    if (st != LH_OK) {
        CHECK(st < 0 && err.code == st && err.msg[0] && !strchr(err.msg, '\n'));
        CHECK(st == LH_ERR_FORMAT || st == LH_ERR_INVALID);
        lh_config_destroy(cfg);
        free(text);
        return 0;
    }

    size_t n = lh_config_count(cfg);
    const char *first_free = NULL; /* the first key not starting with '_' */
    for (size_t i = 0; i < n; i++) {
        const char *key = lh_config_key_at(cfg, i);
        CHECK(key && key[0]);
        for (size_t j = 0; j < i; j++) CHECK(strcmp(key, lh_config_key_at(cfg, j)) != 0);
        if (!first_free && key[0] != '_') first_free = key;
    }
    CHECK(lh_config_key_at(cfg, n) == NULL);
    CHECK(lh_config_first_unused(cfg) == first_free);
    CHECK((lh_config_check_used(cfg, &err) == LH_OK) == !first_free);
    for (size_t i = 0; i < n; i++) read_key(cfg, lh_config_key_at(cfg, i));
    CHECK(lh_config_first_unused(cfg) == NULL && lh_config_check_used(cfg, &err) == LH_OK);

    /* DDPMScheduler's defaults, then LCMScheduler's */
    static const sched_defaults DDPM = {0.0001, 0.02, "linear", SCHED_SPACING_LEADING};
    static const sched_defaults LCM = {0.00085, 0.012, "scaled_linear", SCHED_SPACING_TRAILING};
    create(cfg, &DDPM);
    create(cfg, &LCM);
    lh_config_destroy(cfg);
    free(text);
    return 0;
}
