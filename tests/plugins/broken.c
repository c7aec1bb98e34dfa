/* Deliberately broken plugins, one per compile definition (see
 * CMakeLists.txt); the registry must refuse each with the right message. */
#include <lorahost/plugin.h>
#include <stdio.h>

static lh_status create(void **out, const lh_host_api *host, const lh_config *cfg, char *err,
                        size_t err_size) {
#ifdef BROKEN_CREATE
    snprintf(err, err_size, "model file weights.bin is missing");
    return LH_ERR_NOT_FOUND;
#else
    *out = NULL;
    return LH_OK;
#endif
}
static void destroy(void *p) {}
static lh_status set_timesteps(void *p, int32_t n, char *e, size_t es) { return LH_OK; }
static lh_status set_begin_index(void *p, int32_t k, char *e, size_t es) { return LH_OK; }
static int32_t timesteps(void *p, const double **out) { return 0; }
static double init_noise_sigma(void *p) { return 1.0; }
static lh_status scale_model_input(void *p, lh_tensor *o, const lh_tensor *s, int32_t i, char *e,
                                   size_t es) {
    return LH_OK;
}
#ifndef BROKEN_MISSING_FN
static lh_status step(void *p, lh_tensor *o, const lh_tensor *m, int32_t i, const lh_tensor *s,
                      lh_rng *r, char *e, size_t es) {
    return LH_OK;
}
#endif
static lh_status add_noise(void *p, lh_tensor *o, const lh_tensor *x, const lh_tensor *n,
                           double t, char *e, size_t es) {
    return LH_OK;
}

#if defined(BROKEN_ID)
#define ID "Bad-Id"
#else
#define ID "broken"
#endif

static lh_scheduler_desc DESC = {
    .info = LH_PLUGIN_INFO(LH_PLUGIN_SCHEDULER, lh_scheduler_desc, ID, "0.0", "broken", NULL),
    .create = create,
    .destroy = destroy,
    .set_timesteps = set_timesteps,
    .set_begin_index = set_begin_index,
    .timesteps = timesteps,
    .init_noise_sigma = init_noise_sigma,
    .scale_model_input = scale_model_input,
#ifndef BROKEN_MISSING_FN
    .step = step,
#endif
    .add_noise = add_noise,
};

#ifdef BROKEN_UNDEFINED
extern int lh_symbol_that_does_not_exist(void);
#endif

#ifndef BROKEN_NO_ENTRY
LH_API const lh_plugin_info *lorahost_plugin_entry(uint32_t index) {
#ifdef BROKEN_ABI
    DESC.info.abi_version = 999;
#endif
#ifdef BROKEN_SIZE
    DESC.info.size = 40;
#endif
#ifdef BROKEN_UNDEFINED
    if (lh_symbol_that_does_not_exist()) return NULL;
#endif
#ifdef BROKEN_EMPTY
    return NULL;
#endif
    return index == 0 ? &DESC.info : NULL;
}
#else
LH_API const lh_plugin_info *lorahost_plugin_entry_misspelt(uint32_t index) {
    return index == 0 ? &DESC.info : NULL;
}
#endif
