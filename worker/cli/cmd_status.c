/* orgsync status [--run ID] [--json]: a run and its per-enterprise progress,
 * read from PostgreSQL. --json prints exactly what GET /v1/runs/{id} answers
 * (the same builder, worker/api/run_view.c); the table is drawn from that JSON, so
 * the command and the API can never disagree about percent or ETA. */
#include "worker/cli/cli_db.h"
#include "worker/cli/commands.h"
#include "worker/api/run_view.h"

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STATUS_JOB "directory-sync"

static const char *jstr(json_object *o, const char *k)
{
    json_object *v;
    if (!json_object_object_get_ex(o, k, &v) || json_object_is_type(v, json_type_null))
        return NULL;
    return json_object_get_string(v);
}

static const char *jstr_or(json_object *o, const char *k, const char *dflt)
{
    const char *s = jstr(o, k);
    return s ? s : dflt;
}

static void print_run(json_object *run)
{
    json_object *ents;
    const char *eta = jstr(run, "eta_seconds");
    printf("run %s (%s, attempt %s): %s, %s%% done, ETA %s%s\n", jstr_or(run, "run_id", "?"),
           jstr_or(run, "trigger", "?"), jstr_or(run, "attempt", "?"), jstr_or(run, "state", "?"),
           jstr_or(run, "percent", "0"), eta ? eta : "-", eta ? " s" : "");
    printf("  leader %s (fencing token %s)\n", jstr_or(run, "leader_instance", "-"),
           jstr_or(run, "fencing_token", "-"));
    printf("  scheduled %s, started %s, finished %s\n", jstr_or(run, "scheduled_for", "-"),
           jstr_or(run, "started_at", "-"), jstr_or(run, "finished_at", "-"));
    if (jstr(run, "error"))
        printf("  error: %s\n", jstr(run, "error"));
    if (!json_object_object_get_ex(run, "enterprises", &ents) || !json_object_array_length(ents))
        return;
    printf("\n%-20s %-10s %7s %13s %9s %8s %9s %7s %6s %6s  %s\n", "CORP_ID", "STATE", "PERCENT",
           "DEPARTMENTS", "MEMBERS", "DELETED", "REQUESTS", "RETRIES", "ERRORS", "ETA",
           "LAST ERROR");
    for (size_t i = 0; i < json_object_array_length(ents); i++) {
        json_object *e = json_object_array_get_idx(ents, i);
        char depts[32];
        snprintf(depts, sizeof(depts), "%s/%s", jstr_or(e, "departments_done", "0"),
                 jstr_or(e, "departments_total", "0"));
        printf("%-20s %-10s %7s %13s %9s %8s %9s %7s %6s %6s  %s\n", jstr_or(e, "corp_id", "?"),
               jstr_or(e, "state", "?"), jstr_or(e, "percent", "0"), depts,
               jstr_or(e, "users_upserted", "0"), jstr_or(e, "users_deleted", "0"),
               jstr_or(e, "requests", "0"), jstr_or(e, "retries", "0"), jstr_or(e, "errors", "0"),
               jstr_or(e, "eta_seconds", "-"), jstr_or(e, "last_error", ""));
    }
    /* How each enterprise reads the upstream, and what its credential leaves out
     * (mobile lookups cover only members whose mobile is known). */
    for (size_t i = 0; i < json_object_array_length(ents); i++) {
        json_object *e = json_object_array_get_idx(ents, i), *fm;
        const char *mode = jstr(e, "api_mode");
        if (!mode)
            continue;
        printf("  %s: %s API", jstr_or(e, "corp_id", "?"), mode);
        if (!strcmp(mode, "modern"))
            printf(", roster %s memberships%s", jstr_or(e, "roster_members", "0"),
                   json_object_get_boolean(json_object_object_get(e, "roster_done")) ? ""
                                                                                     : " so far");
        if (json_object_object_get_ex(e, "fields_missing", &fm) &&
            json_object_is_type(fm, json_type_array) && json_object_array_length(fm) > 0) {
            printf(", fields not provided:");
            for (size_t k = 0; k < json_object_array_length(fm); k++)
                printf("%s%s", k ? "," : " ",
                       json_object_get_string(json_object_array_get_idx(fm, k)));
        }
        if (jstr(e, "api_mode_reason"))
            printf(" (%s)", jstr(e, "api_mode_reason"));
        printf("\n");
    }
    /* Members from an export job: where the job is. */
    for (size_t i = 0; i < json_object_array_length(ents); i++) {
        json_object *e = json_object_array_get_idx(ents, i), *x;
        if (!json_object_object_get_ex(e, "export", &x) ||
            !json_object_is_type(x, json_type_object))
            continue;
        printf("  %s: %s", jstr_or(e, "corp_id", "?"), jstr_or(x, "phase", "export"));
        if (json_object_get_int(json_object_object_get(x, "files")) > 0)
            printf(", files %s/%s, %s members", jstr_or(x, "files_done", "0"),
                   jstr_or(x, "files", "0"), jstr_or(x, "members", "0"));
        if (jstr(x, "error"))
            printf(" (%s)", jstr(x, "error"));
        printf("\n");
    }
}

static int print_recent(PGconn *c, const settings *s)
{
    const char *p[2] = {s->env, STATUS_JOB};
    PGresult *r = cli_db_exec(
        c, "status",
        "SELECT run_id, trigger, state, attempt, coalesce(leader_instance, '-'),"
        " coalesce(to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), '-'),"
        " coalesce(to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), '-')"
        " FROM sync_runs WHERE env = $1 AND job = $2 ORDER BY run_id DESC LIMIT 10",
        2, p);
    if (!r)
        return -1;
    printf("\nrecent runs (env %s):\n%-8s %-9s %-10s %7s %-24s %-21s %s\n", s->env, "RUN",
           "TRIGGER", "STATE", "ATTEMPT", "LEADER", "STARTED", "FINISHED");
    for (int i = 0; i < PQntuples(r); i++)
        printf("%-8s %-9s %-10s %7s %-24s %-21s %s\n", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
               PQgetvalue(r, i, 2), PQgetvalue(r, i, 3), PQgetvalue(r, i, 4), PQgetvalue(r, i, 5),
               PQgetvalue(r, i, 6));
    PQclear(r);
    return 0;
}

void cmd_status_usage(FILE *f)
{
    fprintf(f, "usage: orgsync [--config FILE] status [--run ID] [--json]\n\n"
               "Prints a run and its per-enterprise progress (percent, ETA, counts, last\n"
               "error) from PostgreSQL (ORGSYNC_PG_DSN), in environment ORGSYNC_ENV.\n\n"
               "  --run ID    that run (a positive integer); default: the latest run, followed\n"
               "              by the 10 most recent runs\n"
               "  --json      print exactly what GET /v1/runs/{run_id} answers\n\n"
               "Exit status: 0 printed, 1 no such run or PostgreSQL failed, 2 usage error.\n");
}

int cmd_status(const settings *s, int argc, char **argv)
{
    const char *run_arg = NULL;
    int as_json = 0, rc = 1;
    char *json = NULL, *end;
    size_t len = 0;
    PGconn *c;
    PGresult *r = NULL;

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) {
            as_json = 1;
        } else if (!strcmp(argv[i], "--run")) {
            if (i + 1 >= argc)
                return cmd_usage_error("status", "--run needs a run id");
            run_arg = argv[++i];
            if (strtoll(run_arg, &end, 10) <= 0 || *end || *run_arg == '+' || *run_arg == ' ')
                return cmd_usage_error("status", "--run: expected a positive integer, got '%s'",
                                       run_arg);
        } else {
            return cmd_usage_error("status", "unknown option '%s' (status [--run ID] [--json])",
                                   argv[i]);
        }
    }
    c = cli_db_connect(s, "status");
    if (!c)
        return 1;
    {
        const char *p[3] = {s->env, STATUS_JOB, run_arg};
        r = cli_db_exec(c, "status", run_view_sql, 3, p);
    }
    if (!r)
        goto done;
    if (PQntuples(r) == 0) {
        if (run_arg)
            fprintf(stderr, "orgsync status: no run %s in environment %s\n", run_arg, s->env);
        else
            fprintf(stderr, "orgsync status: no run yet in environment %s\n", s->env);
        goto done;
    }
    json = run_view_json(r, &len);
    if (!json) {
        fprintf(stderr, "orgsync status: out of memory\n");
        goto done;
    }
    if (as_json) {
        fwrite(json, 1, len, stdout);
        fputc('\n', stdout);
    } else {
        json_object *run = json_tokener_parse(json);
        if (!run) {
            fprintf(stderr, "orgsync status: could not read the run\n");
            goto done;
        }
        print_run(run);
        json_object_put(run);
        if (!run_arg && print_recent(c, s))
            goto done;
    }
    rc = 0;
done:
    free(json);
    PQclear(r);
    PQfinish(c);
    return rc;
}
