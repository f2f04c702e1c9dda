/* orgsync sync [--corp ID]... [--no-wait]: one directory sync in the foreground,
 * under the same leader lock as the fleet (SPEC §1).
 *
 * It is a leader session with the directory sync job, in two steps: first
 * without creating a run, which resumes an interrupted run (or picks up a
 * pending one) if there is one; then, unless that run already covered what was
 * asked, with a new run of trigger 'cli'. So a sync killed mid-run and started
 * again finishes the interrupted run from its checkpoints instead of starting
 * over, and does not then fetch everything a second time.
 *
 * Progress is read from PostgreSQL with the query and the percent and ETA rules
 * of the API and `orgsync status` (worker/api/run_view.c), so that all three say
 * the same for the same rows: redrawn in place on a terminal, a plain line every
 * few seconds otherwise, and a summary per run at the end. Exit 0 only if every
 * run it worked on ended 'succeeded', that is every enterprise succeeded. */
#include "common/alert.h"
#include "common/http_client.h"
#include "common/log.h"
#include "common/pg.h"
#include "common/redis.h"
#include "common/timeutil.h"
#include "coordinator/leader.h"
#include "worker/cli/commands.h"
#include "worker/wecom/corp_id.h"
#include "worker/sync/directory_sync.h"
#include "worker/api/run_view.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define SYNC_MAX_CORPS 1024
#define TTY_REFRESH_MS 500
#define PLAIN_REFRESH_MS 5000
#define PG_POOL_SIZE 4
#define CONNECT_POLL_MS 5
#define CONNECT_WAIT_US 5000000ULL

typedef struct corp_row {
    char corp_id[72];
    char state[16];
    long long total, done, users, deleted, requests, retries, errors;
    double percent; /* run_view's */
    long long eta;  /* run_view's, seconds; -1: no rate yet */
    char last_error[200];
} corp_row;

typedef struct sync_cli {
    uv_loop_t loop;
    const settings *s;
    pg_pool *pg;
    redis_client *redis;
    http_client *http;
    leader_session *sess;
    uv_signal_t sigint, sigterm;
    uv_timer_t timer;
    const char **corps;
    int ncorps;
    int no_wait;
    int tty;
    int step; /* 1: resume or pick up; 2: a new run */
    int interrupted;

    long long run_id; /* the run shown */
    int attempt;
    uint64_t run_started_us;
    int query_inflight; /* progress or summary query */
    int baseline;       /* the progress query in flight is the run's first sample: not shown */
    int summary_pending;
    int lines_drawn;
    /* for the request rate */
    uint64_t prev_us;
    long long prev_requests;
    double rate; /* requests per second, smoothed */

    /* Per enterprise, the first sample of this run: rates are measured from it. */
    struct {
        char corp_id[72];
        long long requests;
        uint64_t at_us;
    } * base;
    int nbase;

    int runs_finished, runs_succeeded;
    int result_status;
    int done; /* on_done of the last step came */
    int exit_code;
    int closing, closed;
    uint64_t connect_deadline_us;
} sync_cli;

/* ---- arguments ---------------------------------------------------------------------- */

void cmd_sync_usage(FILE *f)
{
    fprintf(f, "usage: orgsync [--config FILE] sync [--corp ID]... [--no-wait]\n\n"
               "Runs one directory sync in the foreground under the leader lock: resumes an\n"
               "interrupted run if there is one, else starts a new one.\n\n"
               "  --corp ID    only this enterprise (repeatable); default: every enabled one\n"
               "  --no-wait    fail at once (exit 1) if another process holds the lock\n\n"
               "Exit status: 0 every enterprise succeeded, 1 otherwise, 2 usage error.\n");
}

static int parse_args(sync_cli *c, int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        if (!strcmp(a, "--no-wait")) {
            c->no_wait = 1;
            continue;
        }
        if (!strcmp(a, "--corp")) {
            if (i + 1 >= argc)
                return cmd_usage_error("sync", "--corp needs an enterprise id");
            v = argv[++i];
        } else if (!strncmp(a, "--corp=", 7)) {
            v = a + 7;
        } else {
            return cmd_usage_error("sync", "unknown option '%s' (try orgsync sync --help)", a);
        }
        if (!corp_id_valid(v))
            return cmd_usage_error("sync",
                                   "--corp: expected 1-64 characters of A-Z, a-z, 0-9, '_' or "
                                   "'-', got '%.80s'",
                                   v);
        if (c->ncorps >= SYNC_MAX_CORPS)
            return cmd_usage_error("sync", "--corp: at most %d enterprises", SYNC_MAX_CORPS);
        c->corps[c->ncorps++] = v;
    }
    return 0;
}

/* ---- progress ----------------------------------------------------------------------- */

/* The summary's rows: progress columns from 0. The live display reads
 * run_view_sql (run columns, then progress columns from RC_N). */
static const char sql_summary[] =
    "SELECT " PROGRESS_COLS " FROM sync_progress p WHERE p.run_id = $1::bigint "
    "ORDER BY p.corp_id";

typedef struct totals {
    int n, succeeded, failed, running, pending;
    long long total, done, users, deleted, requests, retries, errors;
    double percent; /* the run's, run_view's */
    long long eta;  /* the run's, run_view's, seconds; -1: no rate yet */
} totals;

/* The progress rows of res (columns from c0), with run_view's percent and ETA
 * of each enterprise at `now` (PostgreSQL's clock; NAN: no ETA). */
static int read_rows(PGresult *res, int c0, double now, corp_row **out, totals *t)
{
    int n = PQntuples(res);
    corp_row *rows = calloc((size_t)(n ? n : 1), sizeof(*rows));

    memset(t, 0, sizeof(*t));
    t->eta = -1;
    if (!rows)
        return -ENOMEM;
    for (int i = 0; i < n; i++) {
        corp_row *r = &rows[t->n];
        if (PQgetisnull(res, i, c0 + PC_CORP))
            continue; /* run_view_sql: a run with no progress rows yet */
        snprintf(r->corp_id, sizeof(r->corp_id), "%s", PQgetvalue(res, i, c0 + PC_CORP));
        snprintf(r->state, sizeof(r->state), "%s", PQgetvalue(res, i, c0 + PC_STATE));
        r->total = atoll(PQgetvalue(res, i, c0 + PC_TOTAL));
        r->done = atoll(PQgetvalue(res, i, c0 + PC_DONE));
        r->users = atoll(PQgetvalue(res, i, c0 + PC_UPSERTED));
        r->deleted = atoll(PQgetvalue(res, i, c0 + PC_DELETED));
        r->requests = atoll(PQgetvalue(res, i, c0 + PC_REQUESTS));
        r->retries = atoll(PQgetvalue(res, i, c0 + PC_RETRIES));
        r->errors = atoll(PQgetvalue(res, i, c0 + PC_ERRORS));
        snprintf(r->last_error, sizeof(r->last_error), "%s",
                 PQgetvalue(res, i, c0 + PC_LAST_ERROR));
        r->percent = run_view_ent_percent(res, i, c0);
        r->eta = run_view_ent_eta(res, i, c0, now);
        t->n++;
        t->succeeded += !strcmp(r->state, "succeeded");
        t->failed += !strcmp(r->state, "failed");
        t->running += !strcmp(r->state, "running");
        t->pending += !strcmp(r->state, "pending");
        t->total += r->total;
        t->done += r->done;
        t->users += r->users;
        t->deleted += r->deleted;
        t->requests += r->requests;
        t->retries += r->retries;
        t->errors += r->errors;
    }
    *out = rows;
    return t->n;
}

static void fmt_eta(double s, char *out, size_t n)
{
    if (s < 0 || s > 1e7)
        snprintf(out, n, "--");
    else if (s < 60)
        snprintf(out, n, "%.0fs", s);
    else if (s < 3600)
        snprintf(out, n, "%dm%02ds", (int)s / 60, (int)s % 60);
    else
        snprintf(out, n, "%dh%02dm", (int)s / 3600, ((int)s % 3600) / 60);
}

static void bar(char *out, int width, double frac)
{
    int fill = (int)(frac * width + 0.5);
    if (fill < 0)
        fill = 0;
    if (fill > width)
        fill = width;
    out[0] = '[';
    for (int i = 0; i < width; i++)
        out[1 + i] = i < fill ? '#' : '-';
    out[width + 1] = ']';
    out[width + 2] = '\0';
}

static void term_size(int *rows, int *cols)
{
    struct winsize ws;
    *rows = 24;
    *cols = 100;
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 0 && ws.ws_col > 0) {
        *rows = ws.ws_row;
        *cols = ws.ws_col;
    }
}

/* The overall request rate from the change since the last sample, smoothed. */
static void sample(sync_cli *c, const totals *t)
{
    uint64_t now = time_mono_us();
    if (c->prev_us && now > c->prev_us) {
        double dt = (double)(now - c->prev_us) / 1e6;
        double r = (double)(t->requests - c->prev_requests) / dt;
        c->rate = c->rate > 0 ? 0.6 * c->rate + 0.4 * r : r;
    }
    c->prev_us = now;
    c->prev_requests = t->requests;
}

static double run_seconds(const sync_cli *c)
{
    return c->run_started_us ? (double)(time_mono_us() - c->run_started_us) / 1e6 : 0;
}

/* Requests per second of one enterprise since the run's first sample (its own
 * counters include the work of earlier attempts). */
static double corp_rate(sync_cli *c, int i, const corp_row *r)
{
    uint64_t now = time_mono_us();

    if (i >= c->nbase || strcmp(c->base[i].corp_id, r->corp_id) != 0)
        return 0;
    double dt = (double)(now - c->base[i].at_us) / 1e6;
    if (dt < 0.9)
        return 0;
    return (double)(r->requests - c->base[i].requests) / dt;
}

static void take_base(sync_cli *c, const corp_row *rows, int n)
{
    uint64_t now = time_mono_us();

    if (c->base && c->nbase == n)
        return;
    free(c->base);
    c->base = calloc((size_t)(n ? n : 1), sizeof(*c->base));
    c->nbase = c->base ? n : 0;
    for (int i = 0; i < c->nbase; i++) {
        snprintf(c->base[i].corp_id, sizeof(c->base[i].corp_id), "%s", rows[i].corp_id);
        c->base[i].requests = rows[i].requests;
        c->base[i].at_us = now;
    }
}

static void draw_tty(sync_cli *c, const corp_row *rows, const totals *t)
{
    int trows, tcols, shown = 0, budget;
    char b[64], eta[32], line[512];

    term_size(&trows, &tcols);
    if (tcols > (int)sizeof(line) - 1)
        tcols = (int)sizeof(line) - 1;
    for (int i = 0; i < c->lines_drawn; i++)
        fputs("\033[1A\033[2K", stdout);
    c->lines_drawn = 0;
    bar(b, 30, t->percent / 100);
    fmt_eta((double)t->eta, eta, sizeof(eta));
    snprintf(line, sizeof(line), "run %lld (attempt %d)  %s %5.1f%%  %lld/%lld departments  ETA %s",
             c->run_id, c->attempt, b, t->percent, t->done, t->total, eta);
    printf("%.*s\n", tcols, line);
    snprintf(line, sizeof(line),
             "  %lld members  %lld requests (%.0f/s)  enterprises: %d succeeded, %d failed, %d "
             "running, %d pending  %.0fs",
             t->users, t->requests, c->rate, t->succeeded, t->failed, t->running, t->pending,
             run_seconds(c));
    printf("%.*s\n", tcols, line);
    c->lines_drawn = 2;
    budget = trows - 4;
    /* Running enterprises first, then failed ones: what an operator watches. */
    for (int pass = 0; pass < 2 && shown < budget; pass++) {
        for (int i = 0; i < t->n && shown < budget; i++) {
            const corp_row *r = &rows[i];
            if (strcmp(r->state, pass == 0 ? "running" : "failed") != 0)
                continue;
            bar(b, 12, r->percent / 100);
            fmt_eta((double)r->eta, eta, sizeof(eta));
            if (pass == 0)
                snprintf(line, sizeof(line),
                         "  %-20s running %s %5.1f%% %4lld/%-4lld %7lld members %5.1f req/s ETA %s",
                         r->corp_id, b, r->percent, r->done, r->total, r->users, corp_rate(c, i, r),
                         eta);
            else
                snprintf(line, sizeof(line), "  %-20s FAILED  %s", r->corp_id, r->last_error);
            printf("%.*s\n", tcols, line);
            shown++;
            c->lines_drawn++;
        }
    }
    fflush(stdout);
}

static void draw_plain(sync_cli *c, const totals *t)
{
    char eta[32];
    fmt_eta((double)t->eta, eta, sizeof(eta));
    /* percent as the API writes it (one decimal at most, "62.5", "40"). */
    printf("progress run=%lld attempt=%d percent=%g departments=%lld/%lld members=%lld "
           "requests=%lld rate=%.1f/s enterprises=%d succeeded=%d failed=%d running=%d "
           "pending=%d eta=%s elapsed=%.0fs\n",
           c->run_id, c->attempt, t->percent, t->done, t->total, t->users, t->requests, c->rate,
           t->n, t->succeeded, t->failed, t->running, t->pending, eta, run_seconds(c));
    fflush(stdout);
}

static void maybe_close(sync_cli *c);

static void on_progress(void *arg, PGresult *res, const char *err)
{
    sync_cli *c = arg;
    corp_row *rows = NULL;
    totals t;

    c->query_inflight--;
    /* No row: the run is not this environment's (cannot happen; shows nothing). */
    if (!err && c->run_id && !c->closing && PQntuples(res) > 0 &&
        read_rows(res, RC_N, run_view_col_d(res, 0, RC_NOW), &rows, &t) >= 0) {
        run_view_run_progress(res, &t.percent, &t.eta);
        sample(c, &t);
        take_base(c, rows, t.n);
        if (!c->baseline && c->tty)
            draw_tty(c, rows, &t);
        else if (!c->baseline)
            draw_plain(c, &t);
    }
    c->baseline = 0;
    free(rows);
    maybe_close(c);
}

/* 1 if the query went out. */
static int query_progress(sync_cli *c)
{
    char id[24];
    const char *p[3] = {c->s->env, DIRECTORY_SYNC_JOB, id};

    if (!c->run_id || c->query_inflight || c->closing)
        return 0;
    snprintf(id, sizeof(id), "%lld", c->run_id);
    if (pg_query(c->pg, run_view_sql, 3, p, on_progress, c) != 0)
        return 0;
    c->query_inflight++;
    return 1;
}

static void on_timer(uv_timer_t *t)
{
    query_progress(t->data);
}

/* ---- the summary of a finished run -------------------------------------------------- */

typedef struct summary_req {
    sync_cli *c;
    long long run_id;
    char state[16];
    char error[512];
    double seconds;
} summary_req;

static void print_summary(summary_req *q, PGresult *res)
{
    corp_row *rows = NULL;
    totals t;

    if (read_rows(res, 0, NAN, &rows, &t) < 0)
        return;
    printf("run %lld %s in %.1f s: %d enterprises (%d succeeded, %d failed), %lld/%lld "
           "departments, %lld members upserted, %lld deleted, %lld upstream requests, %lld "
           "retries, %lld errors\n",
           q->run_id, q->state, q->seconds, t.n, t.succeeded, t.failed, t.done, t.total, t.users,
           t.deleted, t.requests, t.retries, t.errors);
    for (int i = 0; i < t.n; i++) {
        corp_row *r = &rows[i];
        int failed = strcmp(r->state, "succeeded") != 0;
        if (t.n > 20 && !failed)
            continue;
        printf(
            "  %-20s %-9s %lld/%lld departments, %lld members, %lld deleted, %lld requests%s%s\n",
            r->corp_id, r->state, r->done, r->total, r->users, r->deleted, r->requests,
            r->last_error[0] ? ": " : "", r->last_error);
    }
    if (q->error[0] && strcmp(q->state, "succeeded") != 0)
        printf("  error: %s\n", q->error);
    fflush(stdout);
    free(rows);
}

static void on_summary(void *arg, PGresult *res, const char *err)
{
    summary_req *q = arg;
    sync_cli *c = q->c;

    c->query_inflight--;
    c->summary_pending--;
    if (err)
        fprintf(stderr, "orgsync sync: cannot read the progress of run %lld: %s\n", q->run_id, err);
    else
        print_summary(q, res);
    free(q);
    maybe_close(c);
}

static void query_summary(sync_cli *c, long long run_id, const char *state, const char *error)
{
    summary_req *q = calloc(1, sizeof(*q));
    char id[24];
    const char *p[1] = {id};

    if (!q)
        return;
    q->c = c;
    q->run_id = run_id;
    q->seconds = run_seconds(c);
    snprintf(q->state, sizeof(q->state), "%s", state ? state : "stopped");
    snprintf(q->error, sizeof(q->error), "%s", error ? error : "");
    snprintf(id, sizeof(id), "%lld", run_id);
    if (pg_query(c->pg, sql_summary, 1, p, on_summary, q) != 0) {
        free(q);
        return;
    }
    c->query_inflight++;
    c->summary_pending++;
}

/* ---- the leader session ------------------------------------------------------------- */

static void clear_display(sync_cli *c)
{
    if (c->tty && c->lines_drawn) {
        for (int i = 0; i < c->lines_drawn; i++)
            fputs("\033[1A\033[2K", stdout);
        fflush(stdout);
    }
    c->lines_drawn = 0;
}

static void on_event(void *arg, const leader_event *ev)
{
    sync_cli *c = arg;

    switch (ev->kind) {
    case LEADER_EV_WAITING:
        if (!c->run_id)
            fprintf(stderr, "orgsync sync: waiting for the lock, held by %s\n",
                    ev->holder ? ev->holder : "another process");
        break;
    case LEADER_EV_ACQUIRED:
        break;
    case LEADER_EV_RUN_STARTED:
        c->run_id = ev->run_id;
        c->attempt = ev->attempt;
        c->run_started_us = time_mono_us();
        c->prev_us = 0;
        c->rate = 0;
        free(c->base);
        c->base = NULL;
        c->nbase = 0;
        printf("%s run %lld (attempt %d)\n", ev->attempt > 1 ? "resuming" : "started", ev->run_id,
               ev->attempt);
        fflush(stdout);
        uv_timer_start(&c->timer, on_timer, c->tty ? TTY_REFRESH_MS : PLAIN_REFRESH_MS,
                       c->tty ? TTY_REFRESH_MS : PLAIN_REFRESH_MS);
        /* A first sample now, so that the first line shown has a request rate
         * (the plain lines come every 5 s: a short run shows only one). */
        c->baseline = query_progress(c);
        break;
    case LEADER_EV_RUN_FINISHED:
        uv_timer_stop(&c->timer);
        clear_display(c);
        c->runs_finished++;
        if (ev->state && !strcmp(ev->state, "succeeded"))
            c->runs_succeeded++;
        query_summary(c, ev->run_id, ev->state, ev->error);
        c->run_id = 0;
        break;
    case LEADER_EV_LOST:
        fprintf(stderr, "orgsync sync: leadership lost: %s\n", ev->error ? ev->error : "");
        break;
    }
}

static int start_step(sync_cli *c, int step);

static void finish(sync_cli *c, int code)
{
    c->exit_code = code;
    c->done = 1;
    maybe_close(c);
}

static void on_covered(void *arg, PGresult *res, const char *err)
{
    sync_cli *c = arg;
    int covered = !err && PQntuples(res) == 1 && PQgetvalue(res, 0, 0)[0] == 't';

    c->query_inflight--;
    if (covered || c->interrupted) {
        finish(c, c->runs_finished > 0 && c->runs_finished == c->runs_succeeded ? 0 : 1);
        return;
    }
    if (start_step(c, 2))
        finish(c, 1);
}

/* Did the resumed run cover what was asked (every enterprise, or a superset)? */
static void check_covered(sync_cli *c, long long run_id)
{
    char id[24], *lit = NULL;
    const char *p[2] = {id, NULL};
    size_t cap = 3;

    snprintf(id, sizeof(id), "%lld", run_id);
    if (c->ncorps > 0) {
        for (int i = 0; i < c->ncorps; i++)
            cap += strlen(c->corps[i]) + 3;
        lit = malloc(cap);
        if (!lit) {
            finish(c, 1);
            return;
        }
        char *q = lit;
        *q++ = '{';
        for (int i = 0; i < c->ncorps; i++)
            q += snprintf(q, cap - (size_t)(q - lit), "%s\"%s\"", i ? "," : "", c->corps[i]);
        *q++ = '}';
        *q = '\0';
        p[1] = lit;
    }
    if (pg_query(c->pg,
                 "SELECT corp_ids IS NULL OR ($2::text[] IS NOT NULL AND $2::text[] <@ corp_ids) "
                 "FROM sync_runs WHERE run_id = $1::bigint",
                 2, p, on_covered, c) == 0)
        c->query_inflight++;
    else
        finish(c, 1);
    free(lit);
}

static void on_done(void *arg, const leader_result *r)
{
    sync_cli *c = arg;

    c->sess = NULL;
    c->result_status = r->status;
    switch (r->status) {
    case LEADER_DONE:
        if (c->step == 1 && !c->interrupted) {
            check_covered(c, r->run_id);
            return;
        }
        finish(c, c->runs_finished > 0 && c->runs_finished == c->runs_succeeded ? 0 : 1);
        return;
    case LEADER_NOTHING:
        if (c->step == 1 && !c->interrupted && start_step(c, 2) == 0)
            return;
        if (c->step == 2)
            fprintf(stderr, "orgsync sync: the run was not started\n");
        finish(c, 1);
        return;
    case LEADER_BUSY:
        fprintf(stderr, "orgsync sync: another process holds the lock (%s); not waiting\n",
                r->error ? r->error : "busy");
        break;
    case LEADER_SHUTDOWN:
        fprintf(stderr, "orgsync sync: interrupted; run %lld stays resumable\n", r->run_id);
        break;
    default:
        fprintf(stderr, "orgsync sync: %s\n", r->error ? r->error : "failed");
        break;
    }
    finish(c, 1);
}

static int start_step(sync_cli *c, int step)
{
    int rc;

    c->step = step;
    rc = leader_session_start(&(leader_opts){.loop = &c->loop,
                                             .settings = c->s,
                                             .pg = c->pg,
                                             .redis = c->redis,
                                             .http = c->http,
                                             .ops = &directory_sync_ops,
                                             .wait = !c->no_wait,
                                             .create = step == 2,
                                             .trigger = "cli",
                                             .corp_ids = c->ncorps ? c->corps : NULL,
                                             .ncorp_ids = c->ncorps,
                                             .on_event = on_event,
                                             .on_done = on_done,
                                             .arg = c},
                              &c->sess);
    if (rc) {
        fprintf(stderr, "orgsync sync: cannot start the leader session (%s)\n", strerror(-rc));
        c->sess = NULL;
    }
    return rc;
}

/* The session's first lock attempt fails (and retries half a second later) if
 * Redis is not connected yet; connecting takes a few milliseconds, so wait for
 * it, bounded: past the deadline the session reports what is wrong itself. */
static void on_connect_poll(uv_timer_t *t)
{
    sync_cli *c = t->data;

    if (c->interrupted) {
        uv_timer_stop(t);
        finish(c, 1);
        return;
    }
    if (!(redis_connected(c->redis) && pg_pool_ready(c->pg)) &&
        time_mono_us() < c->connect_deadline_us)
        return;
    uv_timer_stop(t);
    if (start_step(c, 1))
        finish(c, 1);
}

/* ---- signals and shutdown ----------------------------------------------------------- */

static void on_signal(uv_signal_t *h, int signum)
{
    sync_cli *c = h->data;

    (void)signum;
    if (c->interrupted)
        return;
    c->interrupted = 1;
    fprintf(stderr, "orgsync sync: stopping (the run stays resumable)\n");
    if (c->sess)
        leader_session_shutdown(c->sess, "interrupted");
}

static void on_client_closed(void *arg)
{
    ((sync_cli *)arg)->closed++;
}

static void on_handle_closed(uv_handle_t *h)
{
    ((sync_cli *)h->data)->closed++;
}

static void on_alerts_closed(void *arg)
{
    sync_cli *c = arg;
    pg_pool_close(c->pg, on_client_closed, c);
    redis_close(c->redis, on_client_closed, c);
    http_client_close(c->http, on_client_closed, c);
    c->closed++;
}

/* Once the last step is done and no query of ours is in flight. */
static void maybe_close(sync_cli *c)
{
    if (!c->done || c->query_inflight > 0 || c->closing)
        return;
    c->closing = 1;
    uv_timer_stop(&c->timer);
    clear_display(c);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->sigint, on_handle_closed);
    uv_close((uv_handle_t *)&c->sigterm, on_handle_closed);
    /* Queued alerts get a moment to reach the webhook before the client goes. */
    alert_close(2000, on_alerts_closed, c);
}

int cmd_sync(const settings *s, int argc, char **argv)
{
    sync_cli c;
    const char *corps[SYNC_MAX_CORPS];
    int rc;

    memset(&c, 0, sizeof(c));
    c.s = s;
    c.corps = corps;
    rc = parse_args(&c, argc, argv); /* --help: main.c answers it before this */
    if (rc)
        return rc;
    c.tty = isatty(STDOUT_FILENO);
    /* Info lines would scroll the live display away; warnings still show. */
    if (c.tty && isatty(STDERR_FILENO) && !getenv("ORGSYNC_LOG_LEVEL") && s->log_level < LOG_WARN)
        log_init(LOG_WARN, s->log_json, s->instance, s->worker_id);
    if (uv_loop_init(&c.loop)) {
        fprintf(stderr, "orgsync sync: cannot create the event loop\n");
        return 1;
    }
    c.pg = pg_pool_new(
        &c.loop,
        &(pg_pool_opts){.dsn = s->pg_dsn, .password = s->pg_password, .size = PG_POOL_SIZE});
    c.redis = redis_new(&c.loop, &(redis_opts){.url = s->redis_url});
    c.http = http_client_new(
        &c.loop, &(http_client_opts){.bind_addr = s->upstream_bind[0] ? s->upstream_bind : NULL});
    if (!c.pg || !c.redis || !c.http) {
        fprintf(stderr, "orgsync sync: out of memory\n");
        return 1; /* the process ends here: nothing to hand back */
    }
    alert_init(&c.loop, c.http, s->alert_webhook[0] ? s->alert_webhook : NULL, s->env, s->instance);
    uv_timer_init(&c.loop, &c.timer);
    c.timer.data = &c;
    uv_signal_init(&c.loop, &c.sigint);
    uv_signal_init(&c.loop, &c.sigterm);
    c.sigint.data = c.sigterm.data = &c;
    uv_signal_start(&c.sigint, on_signal, SIGINT);
    uv_signal_start(&c.sigterm, on_signal, SIGTERM);
    c.connect_deadline_us = time_mono_us() + CONNECT_WAIT_US;
    uv_timer_start(&c.timer, on_connect_poll, 0, CONNECT_POLL_MS);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    free(c.base);
    if (uv_loop_close(&c.loop) != 0)
        log_warn("sync: event loop closed with handles still open");
    return c.exit_code;
}
