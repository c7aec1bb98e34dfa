/* lorahost: command-line front end over liblorahost.
 * Usage: lorahost <command> [options]; `lorahost help` lists the commands. */
#include <stdio.h>
#include <string.h>

#include "lorahost/lorahost.h"

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "help") || !strcmp(argv[1], "--help")) {
        printf("lorahost %s\n", lh_version());
        return 0;
    }
    fprintf(stderr, "lorahost: unknown command '%s'\n", argv[1]);
    return 2;
}
