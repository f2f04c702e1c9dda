/* orgsync: the process entry. Parses the command line and settings, then runs
 * one subcommand. Settings are validated before anything connects anywhere. */
#include "common/log.h"
#include "common/settings.h"
#include "worker/cli/commands.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

typedef struct command {
    const char *name;
    int (*run)(const settings *s, int argc, char **argv);
    const char *help;
} command;

static const command commands[] = {
    {"serve", cmd_serve, "the per-host daemon: supervisor, workers, API, scheduler"},
    {"migrate", cmd_migrate, "apply sql/ migrations in order, idempotently"},
    {"sync", cmd_sync, "one directory sync in the foreground, with live progress"},
    {"status", cmd_status, "runs and per-enterprise progress from PostgreSQL"},
    {"enterprise", cmd_enterprise, "add|list|disable|enable enterprises"},
    {"version", cmd_version, "print the version and the schema version it needs"},
    {NULL, NULL, NULL},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: orgsync [--config FILE] <command> [options]\n\ncommands:\n");
    for (const command *c = commands; c->name; c++)
        fprintf(f, "  %-11s %s\n", c->name, c->help);
    fprintf(f, "\nsettings come from ORGSYNC_* environment variables (see docs/CONFIGURATION.md);\n"
               "--config FILE reads KEY=VALUE lines, and the environment overrides them.\n");
}

int cmd_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "orgsync %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return EXIT_USAGE;
}

int main(int argc, char **argv)
{
    const char *config = NULL;
    const command *cmd = NULL;
    char err[512];
    settings s;
    int i, n = 0;

    /* --config may stand anywhere; it is taken out before the command sees argv. */
    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "orgsync: --config needs a FILE\n");
                return EXIT_USAGE;
            }
            config = argv[++i];
        } else if (strncmp(argv[i], "--config=", 9) == 0) {
            config = argv[i] + 9;
        } else {
            argv[++n] = argv[i];
        }
    }
    argc = n + 1;
    if (argc < 2) {
        usage(stderr);
        return EXIT_USAGE;
    }
    if (!strcmp(argv[1], "help") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(stdout);
        return 0;
    }
    for (const command *c = commands; c->name; c++)
        if (strcmp(c->name, argv[1]) == 0)
            cmd = c;
    if (!cmd) {
        fprintf(stderr, "orgsync: unknown command '%s' (try orgsync --help)\n", argv[1]);
        return EXIT_USAGE;
    }
    if (settings_load(&s, config, err, sizeof(err))) {
        fprintf(stderr, "orgsync: %s\n", err);
        return EXIT_USAGE;
    }
    log_init((log_level)s.log_level, s.log_json, s.instance, s.worker_id);
    return cmd->run(&s, argc - 1, argv + 1);
}
