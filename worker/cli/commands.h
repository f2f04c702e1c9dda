/* worker/cli/: the orgsync command line: main(), one cmd_*.c per subcommand, serve.
 *
 * The subcommands of the orgsync binary (SPEC §1). Each returns the process
 * exit code: 0 success, 1 runtime failure, 2 usage or configuration error. */
#ifndef ORGSYNC_COMMANDS_H
#define ORGSYNC_COMMANDS_H

#include "common/settings.h"

#include <stdio.h>

#define EXIT_USAGE 2

int cmd_serve(const settings *s, int argc, char **argv);
int cmd_migrate(const settings *s, int argc, char **argv);
int cmd_sync(const settings *s, int argc, char **argv);
int cmd_enterprise(const settings *s, int argc, char **argv);
int cmd_status(const settings *s, int argc, char **argv);
int cmd_version(const settings *s, int argc, char **argv);

/* Each subcommand's usage, for `orgsync CMD --help` and `orgsync help CMD`
 * (printed before settings are read or anything connects). */
void cmd_serve_usage(FILE *f);
void cmd_migrate_usage(FILE *f);
void cmd_sync_usage(FILE *f);
void cmd_enterprise_usage(FILE *f);
void cmd_status_usage(FILE *f);
void cmd_version_usage(FILE *f);

/* Prints "orgsync <cmd>: <message>" on stderr and returns EXIT_USAGE. */
int cmd_usage_error(const char *cmd, const char *fmt, ...);

#endif
