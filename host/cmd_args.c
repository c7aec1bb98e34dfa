/* Command-line helpers shared by the `lorahost` subcommands. */
#include <string.h>

#include "commands.h"

size_t lh_take_scheduler_sets(int *argc, char **argv, const char **overrides, size_t cap) {
    size_t n = 0;
    int k = 1;
    for (int i = 1; i < *argc; i++) {
        const char *kv = NULL;
        if (!strcmp(argv[i], "--set") && i + 1 < *argc) kv = argv[i + 1];
        else if (!strncmp(argv[i], "--set=", 6)) kv = argv[i] + 6;
        const char *eq = kv ? strchr(kv, '=') : NULL;
        if (kv && eq && !memchr(kv, '.', (size_t)(eq - kv)) && n < cap) {
            overrides[n++] = kv;
            if (argv[i][5] != '=') i++;
            continue;
        }
        argv[k++] = argv[i];
    }
    *argc = k;
    return n;
}
