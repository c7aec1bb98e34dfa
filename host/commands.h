/* The `lorahost` subcommands. Each takes argv after the command name
 * (argv[0] is the command) and returns the process exit status:
 * 0 success, 1 failure (message on stderr), 2 usage error. */
#ifndef LH_HOST_COMMANDS_H
#define LH_HOST_COMMANDS_H

int lh_cmd_inspect(int argc, char **argv);
int lh_cmd_plugins(int argc, char **argv);
int lh_cmd_config(int argc, char **argv);
int lh_cmd_schedulers(int argc, char **argv);
int lh_cmd_generate(int argc, char **argv);

#endif
