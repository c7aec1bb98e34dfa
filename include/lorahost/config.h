/* lorahost settings: every key of the INI config with its type, default and
 * range (the schema), loaded from a file and `--set section.key=value`
 * overrides, validated at load time and remembered with where each came from. */
#ifndef LORAHOST_CONFIG_H
#define LORAHOST_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "lorahost/plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

struct lh_error; /* lorahost.h */

/* ---- The schema (static data, one row per key) ---- */

typedef enum lh_setting_type {
    LH_SETTING_STRING = 0, /* any UTF-8 text */
    LH_SETTING_INT,        /* decimal integer in [min, max], a multiple of `step` if set */
    LH_SETTING_DOUBLE,     /* finite number in [dmin, dmax] */
    LH_SETTING_BOOL,       /* true/false, yes/no, on/off, 1/0 */
    LH_SETTING_ENUM,       /* one of `choices` */
    LH_SETTING_LIST,       /* comma-separated strings, blanks trimmed */
    LH_SETTING_TYPE_COUNT
} lh_setting_type;

/* lh_setting_def.flags */
#define LH_SETTING_SECRET 1u /* never printed by `lorahost config` */

typedef struct lh_setting_def {
    const char *section;         /* "generate" */
    const char *key;             /* "steps" */
    lh_setting_type type;
    const char *def;             /* the default, as text ("" for none) */
    int64_t min, max;            /* LH_SETTING_INT: inclusive range */
    int64_t step;                /* LH_SETTING_INT: values are multiples of it (0: any) */
    double dmin, dmax;           /* LH_SETTING_DOUBLE: inclusive range */
    const char *const *choices;  /* LH_SETTING_ENUM: NULL-terminated, in a fixed order */
    unsigned flags;              /* LH_SETTING_SECRET */
    const char *used_by;         /* the commands that read it, e.g. "generate serve" */
    const char *doc;             /* one line for docs and `lorahost config` */
} lh_setting_def;

/* Number of keys, and key `index` in schema order (NULL past the end). */
LH_API size_t lh_settings_schema_size(void);
LH_API const lh_setting_def *lh_settings_schema(size_t index);
/* The key named "section.key", or NULL. */
LH_API const lh_setting_def *lh_settings_find(const char *name);

/* ---- Settings in effect ---- */

typedef struct lh_settings lh_settings;

typedef enum lh_setting_origin {
    LH_ORIGIN_DEFAULT = 0, /* the schema default */
    LH_ORIGIN_FILE,        /* a config file, at `file`:`line` */
    LH_ORIGIN_SET,         /* a --set override */
    LH_ORIGIN_COUNT
} lh_setting_origin;

/* One key's value in effect; valid until the key is next changed. */
typedef struct lh_setting {
    const lh_setting_def *def;
    const char *text;         /* the value as written, blanks trimmed */
    lh_setting_origin origin;
    const char *file;         /* LH_ORIGIN_FILE: the path given to load, else NULL */
    int line;                 /* LH_ORIGIN_FILE: 1-based line, else 0 */
} lh_setting;

/* Every key at its default. */
LH_API lh_status lh_settings_create(lh_settings **out, struct lh_error *err);
LH_API void lh_settings_destroy(lh_settings *s);

/* Read an INI file ([section] headers, key = value lines, ';' or '#' comment
 * lines; see docs/config.md). Keys it sets replace earlier values. Fails with
 * LH_ERR_IO if the file cannot be read, LH_ERR_CONFIG with "path:line: ..."
 * for anything wrong in it; then s may hold part of the file and should be
 * destroyed. */
LH_API lh_status lh_settings_load(lh_settings *s, const char *path, struct lh_error *err);

/* Apply one "section.key=value" override (what `--set` passes). */
LH_API lh_status lh_settings_set_override(lh_settings *s, const char *assignment,
                                          struct lh_error *err);

/* Consume `--config FILE`, `--config=FILE`, `--set K=V` and `--set=K=V` from
 * argv[1..*argc-1] (scanning stops at "--"), remove them from argv and lower
 * *argc. The file is loaded first, then the overrides in order, whatever the
 * order on the command line. A missing argument or a second --config fails
 * with LH_ERR_INVALID (a usage error); a bad file or override as above. */
LH_API lh_status lh_settings_apply_args(lh_settings *s, int *argc, char **argv,
                                        struct lh_error *err);

/* ---- Typed getters; `name` is "section.key" ----
 * Values were validated when set, so these fail only for an unknown name
 * (LH_ERR_CONFIG) or a getter that does not match the key's type
 * (LH_ERR_INVALID). Pointers stay valid until the key is next changed. */
LH_API lh_status lh_settings_get_string(const char **out, const lh_settings *s, const char *name,
                                        struct lh_error *err); /* any type: the text */
LH_API lh_status lh_settings_get_int(int64_t *out, const lh_settings *s, const char *name,
                                     struct lh_error *err);
LH_API lh_status lh_settings_get_double(double *out, const lh_settings *s, const char *name,
                                        struct lh_error *err);
LH_API lh_status lh_settings_get_bool(int *out, const lh_settings *s, const char *name,
                                      struct lh_error *err);
/* The index of the value in the key's `choices`. */
LH_API lh_status lh_settings_get_enum(int *out, const lh_settings *s, const char *name,
                                      struct lh_error *err);
LH_API lh_status lh_settings_get_list(const char *const **items, size_t *count,
                                      const lh_settings *s, const char *name, struct lh_error *err);

/* ---- Open sections ----
 * [scheduler] takes any key of the chosen scheduler plugin (diffusers config
 * names such as beta_schedule or use_karras_sigmas); the plugin checks them
 * when it is created. These are its keys in the order first set. */
LH_API size_t lh_settings_open_count(const lh_settings *s);
/* Key `index` of an open section (NULL past the end); def is NULL. */
LH_API const lh_setting *lh_settings_open_at(const lh_settings *s, size_t index,
                                             const char **section, const char **key);

/* ---- Where values came from ---- */

/* The value of key `name`, or of key `index` in schema order (NULL past the end). */
LH_API lh_status lh_settings_get(const lh_setting **out, const lh_settings *s, const char *name,
                                 struct lh_error *err);
LH_API const lh_setting *lh_settings_at(const lh_settings *s, size_t index);
/* "default", "path:line" or "--set", for messages; returns out. */
LH_API char *lh_setting_origin_text(char *out, size_t size, const lh_setting *v);

#ifdef __cplusplus
}
#endif

#endif
