/* lorahost: command-line front end over liblorahost.
 * Usage: lorahost <command> [options]; `lorahost help` lists the commands. */
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "lorahost/lorahost.h"

typedef struct lh_command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} lh_command;

static const lh_command COMMANDS[] = {
    {"inspect", lh_cmd_inspect, "show what a .safetensors file holds (--json for JSON)"},
    {"plugins", lh_cmd_plugins, "list the plugins found, with id, kind, version and path"},
    {"config", lh_cmd_config, "check a config file and print the settings in effect"},
    {"schedulers", lh_cmd_schedulers, "list schedulers, or print one's timesteps and sigmas"},
    {"generate", lh_cmd_generate, "txt2img / img2img from a diffusers model directory to PNG"},
    {"adapters", lh_cmd_adapters, "load adapter files against a model and report what matched"},
    {"dataset", lh_cmd_dataset, "import images and captions into an HDF5 dataset; info; cache"},
    {"demo", lh_cmd_demo, "the tour: the embedded model with and without its style adapter"},
    {"train", lh_cmd_train, "train an adapter from a train.ini (lorahost train --config FILE)"},
    {"model", lh_cmd_model, "make a new model with random weights (model init); model info"},
    {"serve", lh_cmd_serve, "the REST API: /generate, adapters hot-loaded, /metrics (docs/server.md)"},
};
#define N_COMMANDS (sizeof COMMANDS / sizeof COMMANDS[0])

static void usage(FILE *out) {
    fprintf(out, "lorahost %s: Stable-Diffusion-class text-to-image host\n\n", lh_version());
    fprintf(out, "usage: lorahost <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(out, "  %-10s %s\n", COMMANDS[i].name, COMMANDS[i].summary);
    fprintf(out, "\n`lorahost <command> --help` describes one command.\n");
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "help") || !strcmp(argv[1], "--help") ||
        !strcmp(argv[1], "-h")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
        printf("lorahost %s\n", lh_version());
        return 0;
    }
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (!strcmp(argv[1], COMMANDS[i].name)) return COMMANDS[i].run(argc - 1, argv + 1);
    fprintf(stderr, "lorahost: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
