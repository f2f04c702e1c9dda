/* The gate: may this worker compete for the lock, and why not (see gate.h). */
#include "coordinator/gate.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void gate_init(gate *g, const settings *s)
{
    memset(g, 0, sizeof(*g));
    snprintf(g->env, sizeof(g->env), "%s", s->env);
    g->schedule_on = s->schedule != 0;
    g->worker_id = s->worker_id;
    g->worker_listed = settings_may_schedule_worker(s, s->worker_id);
    g->read_only_setting = (int)s->read_only;
    g->role_can_write = GATE_UNKNOWN;
    g->version_older = GATE_UNKNOWN;
    snprintf(g->version, sizeof(g->version), "%s", s->code_version);
    snprintf(g->egress_id, sizeof(g->egress_id), "%s", s->egress_id);
}

int gate_may_schedule(const gate *g)
{
    return g->schedule_on && g->worker_listed && g->read_only_setting != READ_ONLY_ON;
}

int gate_read_only(const gate *g)
{
    if (g->read_only_setting == READ_ONLY_ON)
        return GATE_YES;
    if (g->read_only_setting == READ_ONLY_OFF)
        return GATE_NO;
    if (g->role_can_write == GATE_UNKNOWN)
        return GATE_UNKNOWN;
    return g->role_can_write == GATE_YES ? GATE_NO : GATE_YES;
}

int gate_eligible(const gate *g)
{
    /* An unknown version verdict (no candidate list read yet) does not block:
     * the candidacy check runs again right before every attempt. */
    return gate_may_schedule(g) && gate_read_only(g) == GATE_NO && g->version_older != GATE_YES &&
           !g->egress_refused[0];
}

typedef struct why_buf {
    char *out;
    size_t len, n;
} why_buf;

static void why_add(why_buf *w, const char *fmt, const char *a, const char *b)
{
    size_t room = w->n < w->len ? w->len - w->n : 0;
    int k;

    if (w->n) {
        k = snprintf(w->out + w->n, room, "; ");
        w->n += (size_t)(k > 0 ? k : 0);
        room = w->n < w->len ? w->len - w->n : 0;
    }
    k = snprintf(w->out + w->n, room, fmt, a ? a : "", b ? b : "");
    w->n += (size_t)(k > 0 ? k : 0);
}

size_t gate_why_not(const gate *g, char *out, size_t outlen)
{
    why_buf w = {out, outlen, 0};
    char id[16];
    int ro = gate_read_only(g);

    if (outlen)
        out[0] = '\0';
    if (!g->schedule_on)
        why_add(&w, "schedule off (ORGSYNC_SCHEDULE=off)%s%s", NULL, NULL);
    if (!g->worker_listed) {
        snprintf(id, sizeof(id), "%d", g->worker_id);
        why_add(&w, "worker id %s not in ORGSYNC_SCHEDULER_WORKERS%s", id, NULL);
    }
    if (g->read_only_setting == READ_ONLY_ON)
        why_add(&w, "read-only (ORGSYNC_READ_ONLY=on)%s%s", NULL, NULL);
    else if (ro == GATE_YES)
        why_add(&w,
                "read-only (ORGSYNC_READ_ONLY=auto and the database role cannot write the "
                "directory tables)%s%s",
                NULL, NULL);
    else if (ro == GATE_UNKNOWN && gate_may_schedule(g))
        why_add(&w, "read-only check pending (ORGSYNC_READ_ONLY=auto)%s%s",
                g->probe_error[0] ? ": " : "", g->probe_error);
    if (g->version_older == GATE_YES)
        why_add(&w, "code version %s is older than %s, the newest among live candidates",
                g->version, g->newest_version);
    if (g->egress_refused[0])
        why_add(&w, "the upstream refused egress %s at its last attempt: %s", g->egress_id,
                g->egress_refused);
    if (w.n)
        why_add(&w, "environment %s%s", g->env, NULL);
    return w.n;
}

/* ---- versions --------------------------------------------------------- */

/* Splits "1.2.3-rc1" into its numeric core and the suffix after '-' or '+'. */
static const char *version_core_end(const char *v)
{
    while (*v && *v != '-' && *v != '+')
        v++;
    return v;
}

static int cmp_core(const char *a, const char *ae, const char *b, const char *be)
{
    while (a < ae || b < be) {
        unsigned long long x = 0, y = 0;
        int xd = 0, yd = 0;

        while (a < ae && isdigit((unsigned char)*a)) {
            x = x * 10 + (unsigned long long)(*a++ - '0');
            xd = 1;
        }
        while (b < be && isdigit((unsigned char)*b)) {
            y = y * 10 + (unsigned long long)(*b++ - '0');
            yd = 1;
        }
        if (xd != yd)
            return xd - yd; /* "1.2" vs "1.2.0": a missing part is lower */
        if (x != y)
            return x < y ? -1 : 1;
        /* skip the separator (or compare non-digit runs byte-wise) */
        if (a < ae && b < be && !isdigit((unsigned char)*a) && !isdigit((unsigned char)*b)) {
            if (*a != *b)
                return (unsigned char)*a < (unsigned char)*b ? -1 : 1;
            a++;
            b++;
        } else if (a < ae && !isdigit((unsigned char)*a)) {
            a++;
        } else if (b < be && !isdigit((unsigned char)*b)) {
            b++;
        }
    }
    return 0;
}

int gate_version_cmp(const char *a, const char *b)
{
    const char *ae = version_core_end(a), *be = version_core_end(b);
    int c = cmp_core(a, ae, b, be);

    if (c)
        return c;
    /* Same core: "1.2.3" > "1.2.3-rc1"; two suffixes compare byte-wise. */
    if (!*ae || !*be)
        return *ae ? -1 : (*be ? 1 : 0);
    c = strcmp(ae, be);
    return c < 0 ? -1 : (c > 0 ? 1 : 0);
}

/* ---- the read-only probe ---------------------------------------------- */

typedef struct probe {
    gate_probe_cb cb;
    void *arg;
} probe;

/* Everything a leader writes, and the secret it reads to get tokens. A hot
 * standby answers the privileges as granted but refuses writes. */
static const char probe_sql[] = "SELECT NOT pg_is_in_recovery()"
                                " AND has_table_privilege('departments', 'INSERT, UPDATE')"
                                " AND has_table_privilege('users', 'INSERT, UPDATE')"
                                " AND has_table_privilege('sync_runs', 'INSERT, UPDATE')"
                                " AND has_table_privilege('sync_progress', 'INSERT, UPDATE')"
                                " AND has_table_privilege('sync_checkpoints', 'INSERT')"
                                " AND has_table_privilege('leader_fence', 'INSERT, UPDATE')"
                                " AND has_column_privilege('enterprises', 'corp_secret', 'SELECT')";

static void on_probe(void *arg, PGresult *res, const char *err)
{
    probe *p = arg;

    if (err)
        p->cb(p->arg, GATE_UNKNOWN, err);
    else if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0))
        p->cb(p->arg, GATE_UNKNOWN, "unexpected answer to the privilege check");
    else
        p->cb(p->arg, PQgetvalue(res, 0, 0)[0] == 't' ? GATE_YES : GATE_NO, NULL);
    free(p);
}

int gate_probe_read_only(pg_pool *pg, gate_probe_cb cb, void *arg)
{
    probe *p;
    int rc;

    if (!pg || !cb)
        return PG_EINVAL;
    p = malloc(sizeof(*p));
    if (!p)
        return PG_ENOMEM;
    p->cb = cb;
    p->arg = arg;
    rc = pg_query(pg, probe_sql, 0, NULL, on_probe, p);
    if (rc)
        free(p);
    return rc;
}
