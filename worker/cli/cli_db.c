/* Blocking PostgreSQL helpers for one-shot commands. */
#include "worker/cli/cli_db.h"

#include <stdio.h>
#include <string.h>

PGconn *cli_db_connect(const settings *s, const char *cmd)
{
    /* The DSN is expanded first; the keywords after it override it. An empty
     * password (ORGSYNC_PG_PASSWORD unset) is ignored by libpq, so the DSN's own
     * or the passfile's applies. */
    const char *keys[] = {"dbname", "connect_timeout", "application_name", "password", NULL};
    const char *vals[] = {s->pg_dsn, "10", "orgsync-cli", s->pg_password, NULL};
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    if (!c || PQstatus(c) != CONNECTION_OK) {
        const char *m = c ? PQerrorMessage(c) : "out of memory";
        fprintf(stderr, "orgsync %s: cannot connect to PostgreSQL (ORGSYNC_PG_DSN): %.*s\n", cmd,
                (int)strcspn(m, "\n"), m);
        PQfinish(c);
        return NULL;
    }
    return c;
}

PGresult *cli_db_exec(PGconn *c, const char *cmd, const char *sql, int n, const char *const *p)
{
    PGresult *r = PQexecParams(c, sql, n, NULL, p, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        const char *m = PQresultErrorMessage(r);
        fprintf(stderr, "orgsync %s: %.*s\n", cmd, (int)strcspn(m, "\n"), m);
        PQclear(r);
        return NULL;
    }
    return r;
}
