/* worker/cli/: the orgsync command line: main(), one cmd_*.c per subcommand, serve.
 *
 * The subcommands of the orgsync binary (SPEC §1). Each returns the process
 * exit code: 0 success, 1 runtime failure, 2 usage or configuration error. */
#ifndef ORGSYNC_COMMANDS_H
#define ORGSYNC_COMMANDS_H

#include "common/settings.h"

#define EXIT_USAGE 2

int cmd_serve(const settings *s, int argc, char **argv);
int cmd_migrate(const settings *s, int argc, char **argv);
int cmd_sync(const settings *s, int argc, char **argv);
int cmd_enterprise(const settings *s, int argc, char **argv);
int cmd_status(const settings *s, int argc, char **argv);
int cmd_version(const settings *s, int argc, char **argv);

/* Prints "orgsync <cmd>: <message>" on stderr and returns EXIT_USAGE. */
int cmd_usage_error(const char *cmd, const char *fmt, ...);

#endif
