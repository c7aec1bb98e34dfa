/* lorahost dataset: placeholder until the command lands (being written now). */
#include <stdio.h>

#include "commands.h"

int lh_cmd_dataset(int argc, char **argv) {
    (void)argc, (void)argv;
    fprintf(stderr, "lorahost dataset: not built yet\n");
    return 1;
}
