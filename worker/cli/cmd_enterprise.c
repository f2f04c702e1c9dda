/* orgsync enterprise add|list|disable|enable: manages the enterprises table.
 * The corp secret is read from a named environment variable, never from argv
 * (argv is visible to every user through ps). */
#include "worker/cli/cli_db.h"
#include "worker/cli/commands.h"
#include "worker/wecom/corp_id.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct ent_args {
    const char *corp_id;
    const char *secret_env;
    const char *name;
} ent_args;

static int parse_args(const char *sub, int argc, char **argv, ent_args *a)
{
    for (int i = 2; i < argc; i++) {
        const char **dst = NULL;
        if (!strcmp(argv[i], "--corp-id"))
            dst = &a->corp_id;
        else if (!strcmp(argv[i], "--secret-env"))
            dst = &a->secret_env;
        else if (!strcmp(argv[i], "--name"))
            dst = &a->name;
        else
            return cmd_usage_error("enterprise", "%s: unknown option '%s'", sub, argv[i]);
        if (i + 1 >= argc)
            return cmd_usage_error("enterprise", "%s: %s needs a value", sub, argv[i]);
        *dst = argv[++i];
    }
    if (a->corp_id && !corp_id_valid(a->corp_id))
        return cmd_usage_error("enterprise",
                               "--corp-id: expected 1-64 characters of A-Z, a-z, 0-9, '_' or '-'");
    return 0;
}

static int ent_add(const settings *s, const ent_args *a)
{
    const char *secret, *p[3];
    PGconn *c;
    PGresult *r;
    if (!a->corp_id || !a->secret_env || !a->name)
        return cmd_usage_error("enterprise", "add needs --corp-id ID --secret-env VAR --name NAME");
    secret = getenv(a->secret_env);
    if (!secret || !*secret)
        return cmd_usage_error("enterprise",
                               "--secret-env: environment variable %s is not set or empty",
                               a->secret_env);
    if (strlen(a->name) == 0 || strlen(a->name) > 200)
        return cmd_usage_error("enterprise", "--name: expected 1 to 200 characters");
    c = cli_db_connect(s, "enterprise");
    if (!c)
        return 1;
    p[0] = a->corp_id;
    p[1] = a->name;
    p[2] = secret;
    r = cli_db_exec(c, "enterprise",
                    "INSERT INTO enterprises (corp_id, name, corp_secret) VALUES ($1, $2, $3)"
                    " ON CONFLICT (corp_id) DO UPDATE SET name = EXCLUDED.name,"
                    " corp_secret = EXCLUDED.corp_secret RETURNING (xmax = 0)",
                    3, p);
    if (r) {
        printf("%s enterprise %s\n", PQgetvalue(r, 0, 0)[0] == 't' ? "added" : "updated",
               a->corp_id);
        PQclear(r);
    }
    PQfinish(c);
    return r ? 0 : 1;
}

static int ent_set_enabled(const settings *s, const ent_args *a, int enabled)
{
    const char *p[2] = {a->corp_id, enabled ? "true" : "false"};
    PGconn *c;
    PGresult *r;
    int rc = 1;
    if (!a->corp_id)
        return cmd_usage_error("enterprise", "%s needs --corp-id ID",
                               enabled ? "enable" : "disable");
    c = cli_db_connect(s, "enterprise");
    if (!c)
        return 1;
    r = cli_db_exec(c, "enterprise", "UPDATE enterprises SET enabled = $2 WHERE corp_id = $1", 2,
                    p);
    if (r) {
        if (atoi(PQcmdTuples(r)) == 0) {
            fprintf(stderr, "orgsync enterprise: no enterprise %s\n", a->corp_id);
        } else {
            printf("%s %s\n", enabled ? "enabled" : "disabled", a->corp_id);
            rc = 0;
        }
        PQclear(r);
    }
    PQfinish(c);
    return rc;
}

static int ent_list(const settings *s)
{
    PGconn *c = cli_db_connect(s, "enterprise");
    PGresult *r;
    if (!c)
        return 1;
    /* Never selects corp_secret: the listing is safe to paste anywhere. */
    r = cli_db_exec(c, "enterprise",
                    "SELECT corp_id, name, enabled, to_char(created_at AT TIME ZONE 'UTC',"
                    " 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM enterprises ORDER BY corp_id",
                    0, NULL);
    if (r) {
        printf("%-24s %-8s %-21s %s\n", "CORP_ID", "ENABLED", "CREATED", "NAME");
        for (int i = 0; i < PQntuples(r); i++)
            printf("%-24s %-8s %-21s %s\n", PQgetvalue(r, i, 0),
                   PQgetvalue(r, i, 2)[0] == 't' ? "yes" : "no", PQgetvalue(r, i, 3),
                   PQgetvalue(r, i, 1));
        PQclear(r);
    }
    PQfinish(c);
    return r ? 0 : 1;
}

int cmd_enterprise(const settings *s, int argc, char **argv)
{
    ent_args a = {0};
    const char *sub = argc > 1 ? argv[1] : "";
    int rc;
    if (strcmp(sub, "add") && strcmp(sub, "list") && strcmp(sub, "disable") &&
        strcmp(sub, "enable"))
        return cmd_usage_error("enterprise", "expected add, list, disable or enable, got '%s'",
                               sub);
    rc = parse_args(sub, argc, argv, &a);
    if (rc)
        return rc;
    if (!strcmp(sub, "add"))
        return ent_add(s, &a);
    if (!strcmp(sub, "list"))
        return a.corp_id || a.name || a.secret_env
                   ? cmd_usage_error("enterprise", "list takes no options")
                   : ent_list(s);
    return ent_set_enabled(s, &a, !strcmp(sub, "enable"));
}
