/* The plugin registry: finds .so files, dlopens them (RTLD_NOW|RTLD_LOCAL),
 * validates every descriptor against the host's ABI and keeps the ones that
 * pass. A refused file is dlclosed, logged and recorded; the host carries on. */
#include <ctype.h>
#include <dirent.h>
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "host_api.h"
#include "log.h"
#include "nearest.h"
#include "plugin_config.h"
#include "lorahost/lorahost.h"

#define MAX_DESCRIPTORS 256

typedef struct lh_lib {
    char *path;
    void *handle;
    int refs;     /* live instances */
    int unloaded; /* removed from lookups; dlclose when refs reach 0 */
} lh_lib;

typedef struct lh_entry {
    const lh_plugin_info *info;
    lh_lib *lib;
} lh_entry;

struct lh_registry {
    lh_lib **libs;
    size_t n_libs, cap_libs;
    lh_entry *entries;
    size_t n_entries, cap_entries;
    char **diags;
    size_t n_diags, cap_diags;
};

struct lh_instance {
    lh_registry *reg;
    lh_lib *lib;
    const lh_plugin_info *info;
    void *state;
};

const char *lh_plugin_kind_name(lh_plugin_kind kind) {
    switch (kind) {
    case LH_PLUGIN_SCHEDULER: return "scheduler";
    case LH_PLUGIN_ADAPTER: return "adapter";
    case LH_PLUGIN_SAFETY: return "safety";
    }
    return "unknown";
}

/* ---- Small growable arrays ---- */

static int grow(void **items, size_t *cap, size_t n, size_t item_size) {
    if (n < *cap) return 0;
    size_t cap2 = *cap ? *cap * 2 : 8;
    void *p = realloc(*items, cap2 * item_size);
    if (!p) return -1;
    *items = p;
    *cap = cap2;
    return 0;
}

static lh_status add_diag(lh_registry *r, const char *msg, lh_error *err) {
    if (grow((void **)&r->diags, &r->cap_diags, r->n_diags, sizeof *r->diags))
        return lh_error_set(err, LH_ERR_NOMEM, "out of memory for a plugin diagnostic");
    r->diags[r->n_diags] = strdup(msg);
    if (!r->diags[r->n_diags])
        return lh_error_set(err, LH_ERR_NOMEM, "out of memory for a plugin diagnostic");
    r->n_diags++;
    return LH_OK;
}

/* ---- Lifetime ---- */

lh_status lh_registry_create(lh_registry **out, lh_error *err) {
    *out = calloc(1, sizeof **out);
    return *out ? LH_OK : lh_error_set(err, LH_ERR_NOMEM, "out of memory for the registry");
}

static void lib_close(lh_lib *lib) {
    if (lib->handle) dlclose(lib->handle);
    lib->handle = NULL;
}

void lh_registry_destroy(lh_registry *r) {
    if (!r) return;
    for (size_t i = 0; i < r->n_libs; i++) {
        lib_close(r->libs[i]);
        free(r->libs[i]->path);
        free(r->libs[i]);
    }
    for (size_t i = 0; i < r->n_diags; i++) free(r->diags[i]);
    free(r->libs);
    free(r->entries);
    free(r->diags);
    free(r);
}

/* Drop a library's descriptors from lookups; close it once unused. */
static void lib_unload(lh_registry *r, lh_lib *lib) {
    size_t k = 0;
    for (size_t i = 0; i < r->n_entries; i++)
        if (r->entries[i].lib != lib) r->entries[k++] = r->entries[i];
    r->n_entries = k;
    lib->unloaded = 1;
    if (lib->refs == 0) lib_close(lib);
}

/* ---- Descriptor validation ---- */

static int valid_id(const char *id) {
    if (!id || !*id || strlen(id) > 63) return 0;
    for (const char *p = id; *p; p++)
        if (!(islower((unsigned char)*p) || isdigit((unsigned char)*p) || *p == '_')) return 0;
    return 1;
}

/* Bytes of a version-1 descriptor up to its reserved slots: the least a
 * plugin's `size` may say. */
static size_t min_size(uint32_t kind) {
    switch (kind) {
    case LH_PLUGIN_SCHEDULER: return offsetof(lh_scheduler_desc, reserved);
    case LH_PLUGIN_ADAPTER: return offsetof(lh_adapter_desc, update); /* update: optional */
    case LH_PLUGIN_SAFETY: return offsetof(lh_safety_desc, reserved);
    }
    return 0;
}

/* The name of the first required function a descriptor lacks, or NULL. */
static const char *missing_function(const lh_plugin_info *info) {
    if (info->kind == LH_PLUGIN_SCHEDULER) {
        const lh_scheduler_desc *d = (const lh_scheduler_desc *)info;
        if (!d->create) return "create";
        if (!d->destroy) return "destroy";
        if (!d->set_timesteps) return "set_timesteps";
        if (!d->set_begin_index) return "set_begin_index";
        if (!d->timesteps) return "timesteps";
        if (!d->init_noise_sigma) return "init_noise_sigma";
        if (!d->scale_model_input) return "scale_model_input";
        if (!d->step) return "step";
        if (!d->add_noise) return "add_noise";
    } else if (info->kind == LH_PLUGIN_ADAPTER) {
        const lh_adapter_desc *d = (const lh_adapter_desc *)info;
        if (!d->recognise) return "recognise";
        if (!d->create) return "create";
        if (!d->destroy) return "destroy";
        if (!d->weight_delta) return "weight_delta";
        if (!d->forward) return "forward";
    } else if (info->kind == LH_PLUGIN_SAFETY) {
        const lh_safety_desc *d = (const lh_safety_desc *)info;
        if (!d->create) return "create";
        if (!d->destroy) return "destroy";
        if (!d->check_prompt && !d->check_images) return "check_prompt or check_images";
    }
    return NULL;
}

static const lh_entry *find_entry(const lh_registry *r, uint32_t kind, const char *id) {
    for (size_t i = 0; i < r->n_entries; i++)
        if (r->entries[i].info->kind == kind && !strcmp(r->entries[i].info->id, id))
            return &r->entries[i];
    return NULL;
}

static lh_status check_descriptor(const lh_registry *r, const char *path, uint32_t index,
                                  const lh_plugin_info *info, lh_error *err) {
    if (info->abi_version != LH_PLUGIN_ABI_VERSION)
        return lh_error_set(err, LH_ERR_ABI,
                            "plugin %s: descriptor %u has ABI version %u, host has %u", path,
                            index, info->abi_version, LH_PLUGIN_ABI_VERSION);
    size_t need = min_size(info->kind);
    if (!need)
        return lh_error_set(err, LH_ERR_ABI, "plugin %s: descriptor %u has unknown kind %u",
                            path, index, info->kind);
    if (info->size < need)
        return lh_error_set(err, LH_ERR_ABI,
                            "plugin %s: %s descriptor %u has size %u, host needs at least %zu",
                            path, lh_plugin_kind_name(info->kind), index, info->size, need);
    if (!valid_id(info->id))
        return lh_error_set(err, LH_ERR_PLUGIN,
                            "plugin %s: descriptor %u has invalid id '%s' (want [a-z0-9_]+, "
                            "at most 63 characters)",
                            path, index, info->id ? info->id : "(null)");
    const char *fn = missing_function(info);
    if (fn)
        return lh_error_set(err, LH_ERR_PLUGIN, "plugin %s: %s '%s' has no %s function", path,
                            lh_plugin_kind_name(info->kind), info->id, fn);
    const lh_entry *dup = find_entry(r, info->kind, info->id);
    if (dup)
        return lh_error_set(err, LH_ERR_PLUGIN,
                            "plugin %s: duplicate %s id '%s', already loaded from %s; the "
                            "first one found wins and this file is skipped",
                            path, lh_plugin_kind_name(info->kind), info->id, dup->lib->path);
    return LH_OK;
}

/* ---- Loading ---- */

static lh_status check_file(const char *path, lh_error *err) {
    struct stat st;
    if (stat(path, &st) != 0)
        return lh_error_set(err, LH_ERR_NOT_FOUND, "plugin %s: cannot stat: %m", path);
    if (!S_ISREG(st.st_mode))
        return lh_error_set(err, LH_ERR_PLUGIN, "plugin %s: not a regular file", path);
    if (st.st_mode & S_IWOTH)
        return lh_error_set(err, LH_ERR_PLUGIN,
                            "plugin %s: refused, the file is world-writable (mode %03o); "
                            "chmod o-w it",
                            path, (unsigned)(st.st_mode & 0777));
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) {
        *(slash == dir ? slash + 1 : slash) = '\0';
        if (stat(dir, &st) == 0 && (st.st_mode & S_IWOTH) && !(st.st_mode & S_ISVTX))
            return lh_error_set(err, LH_ERR_PLUGIN,
                                "plugin %s: refused, its directory %s is world-writable", path,
                                dir);
    }
    return LH_OK;
}

lh_status lh_registry_load_file(lh_registry *r, const char *path, lh_error *err) {
    lh_status st = check_file(path, err);
    if (st != LH_OK) return st;
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *why = dlerror();
        return lh_error_set(err, LH_ERR_PLUGIN, "plugin %s: dlopen failed: %s", path,
                            why ? why : "unknown error");
    }
    lh_plugin_entry_fn entry;
    *(void **)&entry = dlsym(h, LH_PLUGIN_ENTRY);
    if (!entry) {
        dlclose(h);
        return lh_error_set(err, LH_ERR_PLUGIN, "plugin %s: missing entry symbol %s", path,
                            LH_PLUGIN_ENTRY);
    }
    /* Validate everything before registering anything. */
    const lh_plugin_info *infos[MAX_DESCRIPTORS];
    uint32_t n = 0;
    for (;; n++) {
        const lh_plugin_info *info = entry(n);
        if (!info) break;
        if (n == MAX_DESCRIPTORS) {
            dlclose(h);
            return lh_error_set(err, LH_ERR_PLUGIN, "plugin %s: more than %d descriptors",
                                path, MAX_DESCRIPTORS);
        }
        st = check_descriptor(r, path, n, info, err);
        for (uint32_t k = 0; st == LH_OK && k < n; k++)
            if (infos[k]->kind == info->kind && !strcmp(infos[k]->id, info->id))
                st = lh_error_set(err, LH_ERR_PLUGIN, "plugin %s: declares %s '%s' twice", path,
                                  lh_plugin_kind_name(info->kind), info->id);
        if (st != LH_OK) {
            dlclose(h);
            return st;
        }
        infos[n] = info;
    }
    if (n == 0) {
        dlclose(h);
        return lh_error_set(err, LH_ERR_PLUGIN, "plugin %s: %s returned no descriptors", path,
                            LH_PLUGIN_ENTRY);
    }
    lh_lib *lib = calloc(1, sizeof *lib);
    if (!lib || !(lib->path = strdup(path)) ||
        grow((void **)&r->libs, &r->cap_libs, r->n_libs, sizeof *r->libs)) {
        if (lib) free(lib->path);
        free(lib);
        dlclose(h);
        return lh_error_set(err, LH_ERR_NOMEM, "plugin %s: out of memory", path);
    }
    lib->handle = h;
    r->libs[r->n_libs++] = lib;
    for (uint32_t k = 0; k < n; k++) {
        if (grow((void **)&r->entries, &r->cap_entries, r->n_entries, sizeof *r->entries)) {
            lib_unload(r, lib);
            return lh_error_set(err, LH_ERR_NOMEM, "plugin %s: out of memory", path);
        }
        r->entries[r->n_entries++] = (lh_entry){infos[k], lib};
    }
    lh_log(LH_LOG_DEBUG, "registry", "loaded %s (%u descriptors)", path, n);
    return LH_OK;
}

static int is_plugin_name(const char *name) {
    size_t len = strlen(name);
    return name[0] != '.' && len > 3 && !strcmp(name + len - 3, ".so");
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Load every plugin in dir, in name order so results do not depend on the
 * file system. */
static lh_status scan_dir(lh_registry *r, const char *dir, int explicit_dir, lh_error *err) {
    DIR *d = opendir(dir);
    char msg[LH_ERROR_MAX];
    if (!d) {
        if (!explicit_dir) return LH_OK;
        snprintf(msg, sizeof msg, "plugin directory %s: cannot open: %m", dir);
        lh_log(LH_LOG_WARN, "registry", "%s", msg);
        return add_diag(r, msg, err);
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    lh_status st = LH_OK;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!is_plugin_name(de->d_name)) continue;
        if (grow((void **)&names, &cap, n, sizeof *names) || !(names[n] = strdup(de->d_name))) {
            st = lh_error_set(err, LH_ERR_NOMEM, "out of memory scanning %s", dir);
            break;
        }
        n++;
    }
    closedir(d);
    if (st == LH_OK) qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; st == LH_OK && i < n; i++) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        lh_error e = {0};
        if (lh_registry_load_file(r, path, &e) != LH_OK) {
            lh_log(LH_LOG_WARN, "registry", "%s", e.msg);
            st = add_diag(r, e.msg, err);
        }
    }
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    return st;
}

const char *lh_registry_builtin_dir(void) {
    static char dir[PATH_MAX];
    if (dir[0]) return dir;
    /* <prefix>/lib/lorahost/plugins relative to the library itself */
    Dl_info info;
    if (dladdr((void *)lh_registry_builtin_dir, &info) && info.dli_fname) {
        char lib[PATH_MAX];
        if (realpath(info.dli_fname, lib)) {
            char *slash = strrchr(lib, '/');
            if (slash) {
                *slash = '\0';
                snprintf(dir, sizeof dir, "%s/lorahost/plugins", lib);
                return dir;
            }
        }
    }
    snprintf(dir, sizeof dir, "%s", LH_PLUGIN_INSTALL_DIR);
    return dir;
}

lh_status lh_registry_scan(lh_registry *r, const char *const *dirs, size_t n_dirs, int use_env,
                           int use_builtin, lh_error *err) {
    for (size_t i = 0; i < n_dirs; i++) {
        lh_status st = scan_dir(r, dirs[i], 1, err);
        if (st != LH_OK) return st;
    }
    const char *env = use_env ? getenv(LH_PLUGIN_PATH_ENV) : NULL;
    if (env && *env) {
        char *copy = strdup(env), *save = NULL;
        if (!copy) return lh_error_set(err, LH_ERR_NOMEM, "out of memory");
        lh_status st = LH_OK;
        for (char *tok = strtok_r(copy, ":", &save); tok && st == LH_OK;
             tok = strtok_r(NULL, ":", &save))
            st = scan_dir(r, tok, 1, err);
        free(copy);
        if (st != LH_OK) return st;
    }
    if (use_builtin) return scan_dir(r, lh_registry_builtin_dir(), 0, err);
    return LH_OK;
}

/* ---- Queries ---- */

size_t lh_registry_count(const lh_registry *r) { return r->n_entries; }

const lh_plugin_info *lh_registry_get(const lh_registry *r, size_t i, const char **path) {
    if (i >= r->n_entries) return NULL;
    if (path) *path = r->entries[i].lib->path;
    return r->entries[i].info;
}

static const lh_entry *lookup(const lh_registry *r, lh_plugin_kind kind, const char *name) {
    if (!name) return NULL;
    const lh_entry *e = find_entry(r, (uint32_t)kind, name);
    if (e) return e;
    for (size_t i = 0; i < r->n_entries; i++) {
        const lh_plugin_info *info = r->entries[i].info;
        if (info->kind != (uint32_t)kind || !info->aliases) continue;
        for (const char *const *a = info->aliases; *a; a++)
            if (!strcasecmp(*a, name)) return &r->entries[i];
    }
    return NULL;
}

const lh_plugin_info *lh_registry_find(const lh_registry *r, lh_plugin_kind kind,
                                       const char *name) {
    const lh_entry *e = lookup(r, kind, name);
    return e ? e->info : NULL;
}

size_t lh_registry_diagnostic_count(const lh_registry *r) { return r->n_diags; }

const char *lh_registry_diagnostic(const lh_registry *r, size_t i) {
    return i < r->n_diags ? r->diags[i] : NULL;
}

/* ---- Instances ---- */

lh_status lh_instance_create(lh_instance **out, lh_registry *r, lh_plugin_kind kind,
                             const char *name, lh_config *cfg, lh_error *err) {
    *out = NULL;
    if (kind != LH_PLUGIN_SCHEDULER && kind != LH_PLUGIN_SAFETY)
        return lh_error_set(err, LH_ERR_INVALID,
                            "%s plugins are instantiated per layer, not by name",
                            lh_plugin_kind_name(kind));
    const lh_entry *e = lookup(r, kind, name);
    if (!e)
        return lh_error_set(err, LH_ERR_NOT_FOUND, "no %s plugin named '%s'",
                            lh_plugin_kind_name(kind), name ? name : "(null)");
    lh_instance *inst = calloc(1, sizeof *inst);
    if (!inst) return lh_error_set(err, LH_ERR_NOMEM, "out of memory for a plugin instance");
    lh_lib *lib = e->lib;
    const lh_plugin_info *info = e->info;
    *inst = (lh_instance){r, lib, info, NULL};

    lh_config *owned = NULL;
    if (!cfg) {
        owned = lh_config_create(info->id, err);
        if (!owned) {
            free(inst);
            return LH_ERR_NOMEM;
        }
        cfg = owned;
    }
    char msg[LH_ERROR_MAX] = "";
    lh_status st;
    void (*destroy)(void *);
    if (kind == LH_PLUGIN_SCHEDULER) {
        const lh_scheduler_desc *d = (const lh_scheduler_desc *)info;
        st = d->create(&inst->state, lh_host_api_get(), cfg, msg, sizeof msg);
        destroy = d->destroy;
    } else {
        const lh_safety_desc *d = (const lh_safety_desc *)info;
        st = d->create(&inst->state, lh_host_api_get(), cfg, msg, sizeof msg);
        destroy = d->destroy;
    }
    if (st == LH_ERR_CONFIG) {
        /* the user's settings are at fault, not the plugin: keep it loaded */
        lh_error_set(err, st, "%s", msg[0] ? msg : "invalid configuration");
        lh_config_destroy(owned);
        free(inst);
        return st;
    }
    if (st != LH_OK) {
        if (st > 0 || st < LH_ERR_INTERNAL) st = LH_ERR_PLUGIN;
        lh_error_set(err, st, "%s '%s' (%s): create failed: %s; plugin unloaded",
                     lh_plugin_kind_name(kind), info->id, lib->path,
                     msg[0] ? msg : lh_strerror(st));
        lh_log(LH_LOG_ERROR, "registry", "%s", err ? err->msg : "create failed");
        lh_config_destroy(owned);
        free(inst);
        lib_unload(r, lib);
        return st;
    }
    st = lh_config_check_used(cfg, err);
    if (st != LH_OK) {
        /* suggest the nearest key the plugin lists */
        const char *const *keys = kind == LH_PLUGIN_SCHEDULER
                                      ? ((const lh_scheduler_desc *)info)->config_keys
                                      : ((const lh_safety_desc *)info)->config_keys;
        lh_nearest n = {0};
        const char *bad = lh_config_first_unused(cfg);
        for (const char *const *k = keys; bad && k && *k; k++) lh_nearest_consider(&n, bad, *k);
        if (n.name && err) {
            size_t len = strlen(err->msg);
            snprintf(err->msg + len, sizeof err->msg - len, "; did you mean '%s'?", n.name);
        }
    }
    lh_config_destroy(owned);
    if (st != LH_OK) {
        destroy(inst->state);
        free(inst);
        return st;
    }
    lib->refs++;
    *out = inst;
    return LH_OK;
}

void lh_instance_destroy(lh_instance *inst) {
    if (!inst) return;
    if (inst->info->kind == LH_PLUGIN_SCHEDULER)
        ((const lh_scheduler_desc *)inst->info)->destroy(inst->state);
    else
        ((const lh_safety_desc *)inst->info)->destroy(inst->state);
    if (--inst->lib->refs == 0 && inst->lib->unloaded) lib_close(inst->lib);
    free(inst);
}

const lh_plugin_info *lh_instance_info(const lh_instance *inst) { return inst->info; }
void *lh_instance_state(const lh_instance *inst) { return inst->state; }
