/* Blocking PostgreSQL access for one-shot commands (migrate, enterprise,
 * status). These run no event loop, so a blocking connection is right here;
 * the daemon uses common/pg.h instead. */
#ifndef ORGSYNC_CLI_DB_H
#define ORGSYNC_CLI_DB_H

#include "common/settings.h"

#include <libpq-fe.h>

/* Connects with a 10 s timeout; NULL after printing why on stderr. */
PGconn *cli_db_connect(const settings *s, const char *cmd);
/* Runs one parameterised statement; NULL after printing the error (the caller
 * frees a non-NULL result). */
PGresult *cli_db_exec(PGconn *c, const char *cmd, const char *sql, int n, const char *const *p);

#endif
