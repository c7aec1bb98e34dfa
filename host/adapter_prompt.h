/* Choosing adapters by name: AUTOMATIC1111's prompt syntax
 * <lora:NAME[:TE[:UNET]]> (also <lyco:...>): one multiplier sets both the
 * text encoder's and the U-Net's, a second the U-Net's alone; named forms
 * te=X and unet=X work in any order; the default is 1. Then the
 * CLI's --lora PATH[:SCALE], and finding NAME in the configured adapter
 * directories ([adapters] dirs). The tags are taken out of the prompt, as
 * A1111 does, before it is encoded. */
#ifndef LH_HOST_ADAPTER_PROMPT_H
#define LH_HOST_ADAPTER_PROMPT_H

#include <stddef.h>

#include "error.h"
#include "lorahost/lorahost.h"

#define LH_ADAPTER_NAME_MAX 256

typedef struct lh_adapter_ref {
    char name[LH_ADAPTER_NAME_MAX]; /* as written: a name or a path */
    double te, unet;                /* multipliers for the text encoder and the U-Net */
} lh_adapter_ref;

/* Split `prompt` into the text without tags (*clean, malloc'd) and the tags
 * (*refs, malloc'd, *n of them; NULL when none). A malformed tag (no name,
 * a multiplier that is not a finite number, a named argument other than te
 * and unet, more than two positional ones) is LH_ERR_INVALID quoting it. */
LH_API lh_status lh_prompt_adapters(char **clean, lh_adapter_ref **refs, size_t *n,
                                    const char *prompt, lh_error *err);

/* "PATH[:SCALE]" (the last ':' starts the scale only if what follows is a
 * number); SCALE sets both multipliers. */
LH_API lh_status lh_adapter_ref_parse(lh_adapter_ref *out, const char *arg, lh_error *err);

/* The file `name` refers to: a path that exists as given, else
 * <dir>/<name>, <dir>/<name>.safetensors for each dir in order, else (a
 * name without '/', as A1111 finds them) the one file called <name> or
 * <name>.safetensors anywhere below a dir (8 levels). Names with ".." are
 * not looked up in dirs. LH_ERR_NOT_FOUND lists where it looked;
 * LH_ERR_INVALID names two of several files a bare name matches. */
LH_API lh_status lh_adapter_resolve(char *out, size_t size, const char *name,
                                    const char *const *dirs, size_t n_dirs, lh_error *err);

#endif
