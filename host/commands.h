/* The `lorahost` subcommands. Each takes argv after the command name
 * (argv[0] is the command) and returns the process exit status:
 * 0 success, 1 failure (message on stderr), 2 usage error. */
#ifndef LH_HOST_COMMANDS_H
#define LH_HOST_COMMANDS_H

#include <stddef.h>

int lh_cmd_inspect(int argc, char **argv);
int lh_cmd_plugins(int argc, char **argv);
int lh_cmd_config(int argc, char **argv);
int lh_cmd_schedulers(int argc, char **argv);
int lh_cmd_generate(int argc, char **argv);
int lh_cmd_adapters(int argc, char **argv);
int lh_cmd_dataset(int argc, char **argv);
int lh_cmd_train(int argc, char **argv);
int lh_cmd_demo(int argc, char **argv);
int lh_cmd_model(int argc, char **argv);
int lh_cmd_serve(int argc, char **argv);

/* Take every `--set KEY=VALUE` whose KEY has no '.' (a scheduler config key,
 * e.g. use_karras_sigmas=true) out of argv, into overrides (at most cap);
 * `--set section.key=value` and all other arguments stay. Returns the count. */
size_t lh_take_scheduler_sets(int *argc, char **argv, const char **overrides, size_t cap);

#endif
