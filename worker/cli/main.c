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
    void (*usage)(FILE *f);
    const char *help;
} command;

static const command commands[] = {
    {"serve", cmd_serve, cmd_serve_usage,
     "the per-host daemon: supervisor, workers, API, scheduler"},
    {"migrate", cmd_migrate, cmd_migrate_usage, "apply sql/ migrations in order, idempotently"},
    {"sync", cmd_sync, cmd_sync_usage, "one directory sync in the foreground, with live progress"},
    {"status", cmd_status, cmd_status_usage, "runs and per-enterprise progress from PostgreSQL"},
    {"enterprise", cmd_enterprise, cmd_enterprise_usage, "add|set|list|disable|enable enterprises"},
    {"version", cmd_version, cmd_version_usage,
     "print the version and the schema version it needs"},
    {NULL, NULL, NULL, NULL},
};

static const command *find_command(const char *name)
{
    for (const command *c = commands; c->name; c++)
        if (strcmp(c->name, name) == 0)
            return c;
    return NULL;
}

static int is_help(const char *a)
{
    return !strcmp(a, "--help") || !strcmp(a, "-h");
}

static void usage(FILE *f)
{
    fprintf(f, "usage: orgsync [--config FILE] <command> [options]\n"
               "       orgsync <command> --help | orgsync help [<command>] | orgsync --version\n\n"
               "commands:\n");
    for (const command *c = commands; c->name; c++)
        fprintf(f, "  %-11s %s\n", c->name, c->help);
    fprintf(f, "\nsettings come from ORGSYNC_* environment variables (see docs/CONFIGURATION.md);\n"
               "--config FILE reads KEY=VALUE lines, and the environment overrides them.\n"
               "A secret setting NAME may instead be read from the file NAME_FILE names, or\n"
               "from $CREDENTIALS_DIRECTORY/NAME (systemd LoadCredential=).\n");
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
    /* Help and --version come before the settings are read: they work whatever
     * the environment holds, and connect nowhere. */
    if (!strcmp(argv[1], "help") || is_help(argv[1])) {
        if (argc > 2 && !strcmp(argv[1], "help")) {
            if (!(cmd = find_command(argv[2]))) {
                fprintf(stderr, "orgsync help: unknown command '%s' (try orgsync --help)\n",
                        argv[2]);
                return EXIT_USAGE;
            }
            cmd->usage(stdout);
            return 0;
        }
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V")) {
        if (argc > 2) {
            fprintf(stderr, "orgsync: --version: unexpected argument '%s'\n", argv[2]);
            return EXIT_USAGE;
        }
        return cmd_version(NULL, 1, argv + 1);
    }
    cmd = find_command(argv[1]);
    if (!cmd) {
        fprintf(stderr, "orgsync: unknown %s '%s' (try orgsync --help)\n",
                argv[1][0] == '-' ? "option" : "command", argv[1]);
        return EXIT_USAGE;
    }
    /* CMD --help (or -h) anywhere among its arguments */
    for (i = 2; i < argc; i++) {
        if (is_help(argv[i])) {
            cmd->usage(stdout);
            return 0;
        }
    }
    if (settings_load(&s, config, err, sizeof(err))) {
        fprintf(stderr, "orgsync: %s\n", err);
        return EXIT_USAGE;
    }
    log_init((log_level)s.log_level, s.log_json, s.instance, s.worker_id);
    return cmd->run(&s, argc - 1, argv + 1);
}
