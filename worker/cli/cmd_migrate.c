/* orgsync migrate: applies the compiled-in sql/ migrations in order, each in
 * its own transaction, under an advisory lock so that hosts rolling out at
 * the same time apply each file once. */
#include "common/log.h"
#include "common/migrations.h"
#include "version.h"
#include "worker/cli/cli_db.h"
#include "worker/cli/commands.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MIGRATE_LOCK_KEY "7015920241" /* pg_advisory_lock key, constant across versions */

static int current_version(PGconn *c, int *version)
{
    PGresult *r = cli_db_exec(c, "migrate",
                              "CREATE TABLE IF NOT EXISTS schema_migrations ("
                              " version integer PRIMARY KEY, name text NOT NULL,"
                              " applied_at timestamptz NOT NULL DEFAULT now())",
                              0, NULL);
    if (!r)
        return -1;
    PQclear(r);
    r = cli_db_exec(c, "migrate", "SELECT coalesce(max(version), 0) FROM schema_migrations", 0,
                    NULL);
    if (!r)
        return -1;
    *version = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    return 0;
}

static int apply_one(PGconn *c, const migration *m)
{
    char v[16];
    const char *p[2] = {v, m->name};
    PGresult *r;
    snprintf(v, sizeof(v), "%d", m->version);
    /* PQexec runs the whole file (several statements) in the transaction we opened. */
    r = PQexec(c, "BEGIN");
    PQclear(r);
    r = PQexec(c, m->sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
        const char *e = PQresultErrorMessage(r);
        fprintf(stderr, "orgsync migrate: %s failed: %.*s\n", m->name, (int)strcspn(e, "\n"), e);
        PQclear(r);
        PQclear(PQexec(c, "ROLLBACK"));
        return -1;
    }
    PQclear(r);
    r = cli_db_exec(c, "migrate", "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    2, p);
    if (!r) {
        PQclear(PQexec(c, "ROLLBACK"));
        return -1;
    }
    PQclear(r);
    r = cli_db_exec(c, "migrate", "COMMIT", 0, NULL);
    if (!r)
        return -1;
    PQclear(r);
    log_info("migration applied", LF_I("version", m->version), LF_S("file", m->name));
    return 0;
}

void cmd_migrate_usage(FILE *f)
{
    fprintf(f, "usage: orgsync [--config FILE] migrate\n\n"
               "Applies the compiled-in sql/ migrations to ORGSYNC_PG_DSN in order, each in its\n"
               "own transaction, recording them in schema_migrations; a second run changes\n"
               "nothing. Refuses a database newer than this binary. Takes no options.\n\n"
               "Exit status: 0 up to date, 1 failed, 2 usage error.\n");
}

int cmd_migrate(const settings *s, int argc, char **argv)
{
    PGconn *c;
    PGresult *r;
    int version = 0, applied = 0, rc = 1;
    const migration *m;
    const char *lockp[1] = {MIGRATE_LOCK_KEY};

    if (argc > 1)
        return cmd_usage_error("migrate", "unexpected argument '%s' (migrate takes no options)",
                               argv[1]);
    c = cli_db_connect(s, "migrate");
    if (!c)
        return 1;
    PQclear(PQexec(c, "SET client_min_messages = warning"));
    r = cli_db_exec(c, "migrate", "SELECT pg_advisory_lock($1::bigint)", 1, lockp);
    if (!r)
        goto done;
    PQclear(r);
    if (current_version(c, &version))
        goto done;
    if (version > ORGSYNC_SCHEMA_VERSION) {
        fprintf(stderr,
                "orgsync migrate: the database is at schema version %d, newer than this binary "
                "knows (%d); upgrade orgsync before migrating\n",
                version, ORGSYNC_SCHEMA_VERSION);
        goto done;
    }
    for (m = migrations; m->version; m++) {
        if (m->version <= version)
            continue;
        if (apply_one(c, m))
            goto done;
        applied++;
    }
    if (applied)
        printf("migrated to schema version %d (%d file%s applied)\n", ORGSYNC_SCHEMA_VERSION,
               applied, applied == 1 ? "" : "s");
    else
        printf("schema is up to date (version %d); nothing to do\n", version);
    rc = 0;
done:
    PQfinish(c); /* ends the session, which releases the advisory lock */
    return rc;
}

void cmd_version_usage(FILE *f)
{
    fprintf(f, "usage: orgsync version    (or orgsync --version)\n\n"
               "Prints the version and the schema version it needs. Takes no options.\n");
}

int cmd_version(const settings *s, int argc, char **argv)
{
    (void)s;
    if (argc > 1)
        return cmd_usage_error("version", "unexpected argument '%s'", argv[1]);
    printf("orgsync %s (schema version %d)\n", ORGSYNC_VERSION, ORGSYNC_SCHEMA_VERSION);
    return 0;
}
