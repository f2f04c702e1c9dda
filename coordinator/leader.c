/* A leader session (see leader.h): a small state machine on the caller's loop.
 *
 * Job callbacks (finished, fenced_out) may come from deep inside the job, even
 * from inside our own call to ops->stop(), so they only record what happened
 * and kick a zero-delay timer; the session acts on it from that timer. Redis
 * and PostgreSQL callbacks act directly. The session is freed only when its
 * handles are closed, its lock object is closed, no query of its own is in
 * flight and the job no longer holds the job_run. */
#include "coordinator/leader.h"
#include "coordinator/candidacy.h"

#include "common/alert.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/timeutil.h"
#include "coordinator/lock.h"
#include "coordinator/runs.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_RUNS_PER_SESSION 3
#define RETRY_ERROR_MS 500
#define RETRY_BUSY_MAX_MS 500

enum {
    P_ACQUIRE,  /* lock attempt in flight */
    P_WAIT,     /* lock busy, retry timer armed */
    P_FENCE,    /* fence claim in flight */
    P_CLAIM,    /* run claim in flight */
    P_CREATE,   /* run create in flight */
    P_RUNNING,  /* job started */
    P_STOPPING, /* stop() sent, waiting for finished() */
    P_WRITE,    /* finish/abandon of the run row in flight */
    P_RELEASE,  /* compare-and-delete in flight */
    P_REPAIR,   /* raising the Redis fencing counter above the fence row */
    P_CLOSING,  /* handles closing */
};

struct leader_session {
    leader_opts o;
    settings st;
    char *trigger;
    char **req_corps;
    int nreq_corps;

    lock *lk;
    runs_leader ld;
    job_run run;
    int phase;

    /* the run being worked on */
    long long run_id;
    int attempt;
    long long run_sched_ms;
    char **run_corps;
    int nrun_corps;
    int runs_started;
    int ran_request; /* the requested run (or its fire) has been worked on */

    /* what happened */
    int shutdown_req;
    char shutdown_reason[128];
    const char *lost_why; /* static string from lock.c, or "fenced out" */
    int fenced;
    int fence_repaired; /* the one counter repair of this session was tried */
    int stop_sent;
    int job_active;  /* start() succeeded and finished() not yet called */
    int job_done;    /* finished() arrived, not yet handled */
    char *fin_state; /* from finished(); NULL = stopped early */
    char *fin_error;
    int job_orphaned; /* shutdown gave up waiting: free when finished() comes */

    /* result */
    int result_set;
    leader_status status;
    char error[256];
    char final_state[16];
    long long result_run_id;
    int result_attempt;
    int runs_done;
    int already_done;
    long long token;

    char last_holder[160];
    uint64_t wait_start_us;
    uint64_t run_start_us; /* when this attempt's job started (run duration metric) */

    uv_timer_t timer;    /* lock retry, stop timeout */
    uv_timer_t hb_timer; /* heartbeats */
    uv_timer_t kick;     /* acts on job callbacks */
    int handles_open;
    int lock_open;
    int pending; /* our own queries in flight */
    int hb_inflight;
    int done_called;
};

static void end_session(leader_session *s);
static void on_stop_timeout(uv_timer_t *t);
static void close_all(leader_session *s);
static void claim_next(leader_session *s, long long run_id);
static void create_requested(leader_session *s);
static void try_acquire(leader_session *s);

/* ---- small helpers ---------------------------------------------------- */

static void set_result(leader_session *s, leader_status st, const char *err)
{
    if (s->result_set)
        return;
    s->result_set = 1;
    s->status = st;
    snprintf(s->error, sizeof(s->error), "%s", err ? err : "");
}

static void emit(leader_session *s, leader_event_kind kind, const char *holder, const char *state,
                 const char *error)
{
    leader_event ev;

    if (!s->o.on_event)
        return;
    memset(&ev, 0, sizeof(ev));
    ev.kind = kind;
    ev.token = s->token;
    ev.run_id = s->run_id;
    ev.attempt = s->attempt;
    ev.holder = holder;
    ev.state = state;
    ev.error = error;
    s->o.on_event(s->o.arg, &ev);
}

static void free_strv(char **v, int n)
{
    int i;

    for (i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static char **dup_strv(const char *const *v, int n)
{
    char **out;
    int i;

    if (!v || n <= 0)
        return NULL;
    out = calloc((size_t)n, sizeof(*out));
    if (!out)
        return NULL;
    for (i = 0; i < n; i++) {
        if (!(out[i] = strdup(v[i] ? v[i] : ""))) {
            free_strv(out, i);
            return NULL;
        }
    }
    return out;
}

static void session_free(leader_session *s)
{
    free(s->trigger);
    free_strv(s->req_corps, s->nreq_corps);
    free_strv(s->run_corps, s->nrun_corps);
    free(s->fin_state);
    free(s->fin_error);
    free(s);
}

static void maybe_done(leader_session *s)
{
    leader_result r;

    if (s->phase != P_CLOSING || s->handles_open > 0 || s->lock_open || s->pending > 0)
        return;
    if (!s->done_called) {
        s->done_called = 1;
        memset(&r, 0, sizeof(r));
        r.status = s->status;
        r.run_id = s->result_run_id;
        r.attempt = s->result_attempt;
        r.state = s->final_state[0] ? s->final_state : NULL;
        r.error = s->error[0] ? s->error : NULL;
        r.fencing_token = s->token;
        r.runs_done = s->runs_done;
        r.already_done = s->already_done;
        log_info("leader session ended", LF_S("job", s->o.ops->name), LF_I("status", r.status),
                 LF_I("run_id", r.run_id), LF_S("state", r.state ? r.state : ""),
                 LF_S("error", r.error ? r.error : ""));
        s->o.on_done(s->o.arg, &r);
    }
    if (s->job_active) {
        s->job_orphaned = 1; /* the job still holds s->run: free when it finishes */
        return;
    }
    session_free(s);
}

/* ---- job_run callbacks ------------------------------------------------ */

static int job_lease_valid(job_run *run)
{
    leader_session *s = run->coord;

    return !s->fenced && !s->lost_why && lock_lease_valid(s->lk);
}

static void kick_cb(uv_timer_t *t);

static void kick_now(leader_session *s)
{
    if (s->phase != P_CLOSING)
        uv_timer_start(&s->kick, kick_cb, 0, 0);
}

static void job_fenced_out(job_run *run)
{
    leader_session *s = run->coord;

    if (s->fenced)
        return;
    s->fenced = 1;
    kick_now(s);
}

static void on_refusal_stored(void *arg, redisReply *reply, const char *err)
{
    (void)arg;
    (void)reply;
    if (err)
        log_warn("could not record the egress refusal", LF_S("error", err));
}

/* The upstream refused this host's egress: every worker on it stops competing
 * (candidacy.h reads the key) until the key expires, so leadership does not
 * come back to a host that cannot sync. Best effort: without Redis the gate
 * simply does not learn it. */
static void job_egress_refused(job_run *run, const char *why)
{
    leader_session *s = run->coord;
    char key[256], ttl[24];

    if (candidacy_egress_key(s->st.env, s->st.egress_id, key, sizeof(key)))
        return;
    snprintf(ttl, sizeof(ttl), "%d", s->st.egress_refused_ttl_s);
    log_warn("the upstream refused this egress: it stops competing for the lock",
             LF_S("egress_id", s->st.egress_id), LF_I("for_seconds", s->st.egress_refused_ttl_s),
             LF_S("why", why));
    redis_cmd(s->o.redis, on_refusal_stored, NULL, "SET %s %s EX %s", key, why, ttl);
}

static void job_finished(job_run *run, const char *state, const char *error)
{
    leader_session *s = run->coord;

    if (!s->job_active)
        return; /* a second call: the contract says once; ignore */
    s->job_active = 0;
    if (s->job_orphaned) {
        /* The session ended while we waited past the stop timeout. */
        log_warn("job finished after its session ended", LF_I("run_id", run->run_id),
                 LF_S("state", state ? state : ""));
        session_free(s);
        return;
    }
    s->job_done = 1;
    s->fin_state = state ? strdup(state) : NULL;
    s->fin_error = error ? strdup(error) : NULL;
    kick_now(s);
}

/* ---- ending ----------------------------------------------------------- */

static void on_handle_closed(uv_handle_t *h)
{
    leader_session *s = h->data;

    s->handles_open--;
    maybe_done(s);
}

static void on_lock_closed(void *arg)
{
    leader_session *s = arg;

    s->lock_open = 0;
    s->lk = NULL; /* lock_lease_valid(NULL) is 0 for a job that outlives us */
    maybe_done(s);
}

static void close_all(leader_session *s)
{
    if (s->phase == P_CLOSING)
        return;
    s->phase = P_CLOSING;
    uv_timer_stop(&s->timer);
    uv_timer_stop(&s->hb_timer);
    uv_timer_stop(&s->kick);
    uv_close((uv_handle_t *)&s->timer, on_handle_closed);
    uv_close((uv_handle_t *)&s->hb_timer, on_handle_closed);
    uv_close((uv_handle_t *)&s->kick, on_handle_closed);
    lock_close(s->lk, on_lock_closed, s);
}

static void on_released(void *arg, lock *l, int status)
{
    leader_session *s = arg;

    (void)l;
    (void)status;
    close_all(s);
}

/* Gives the lock back (compare-and-delete: it can only delete our own value),
 * except after a lease loss (see below). */
static void end_session(leader_session *s)
{
    uv_timer_stop(&s->hb_timer);
    uv_timer_stop(&s->timer);
    set_result(s, s->shutdown_req ? LEADER_SHUTDOWN : LEADER_DONE, NULL);
    if (s->lost_why && strcmp(s->lost_why, "fenced out") != 0) {
        /* "lock taken over": the key is someone else's. "lease expired": the
         * key has at most about a margin left, and Redis may be the very thing
         * that is stuck; it expires by itself, so waiting on it gains nothing. */
        lock_forget(s->lk);
        close_all(s);
        return;
    }
    s->phase = P_RELEASE;
    if (lock_release(s->lk, on_released, s) != 0)
        close_all(s);
}

/* Lease gone or fence taken: stop the job now, write nothing more. */
static void step_down(leader_session *s, const char *why)
{
    log_error("leader stepping down", LF_S("job", s->o.ops->name), LF_S("why", why),
              LF_I("fencing_token", s->token), LF_I("run_id", s->run_id));
    alert_raise(ALERT_LOCK_LOST, why, NULL, s->run_id);
    emit(s, LEADER_EV_LOST, NULL, NULL, why);
    set_result(s, s->fenced ? LEADER_FENCED : LEADER_LOST, why);
    if (s->job_active && !s->stop_sent) {
        s->stop_sent = 1;
        s->phase = P_STOPPING;
        uv_timer_stop(&s->hb_timer);
        /* Bounded like a shutdown: a job that never finishes must not keep
         * the session (and its caller) waiting forever. */
        uv_timer_start(&s->timer, on_stop_timeout, (uint64_t)s->o.stop_timeout_ms, 0);
        s->o.ops->stop(&s->run, why);
    }
}

static void on_lock_lost(void *arg, lock *l, const char *why)
{
    leader_session *s = arg;

    (void)l;
    if (s->lost_why)
        return;
    s->lost_why = why;
    if (s->phase == P_RUNNING || s->phase == P_STOPPING)
        step_down(s, why);
    else if (s->phase != P_CLOSING && s->phase != P_RELEASE)
        set_result(s, LEADER_LOST, why); /* acted on when the query in flight returns */
}

/* 1 when the session must not go on to its next step. */
static int interrupted(leader_session *s)
{
    return s->shutdown_req || s->lost_why || s->fenced || !lock_lease_valid(s->lk);
}

/* ---- writes of the run row after the job stopped ---------------------- */

static void after_run(leader_session *s);

static void on_abandoned(void *arg, int held, const char *err)
{
    leader_session *s = arg;

    s->pending--;
    if (err)
        log_warn("could not mark the run abandoned (it stays resumable)", LF_I("run_id", s->run_id),
                 LF_S("error", err));
    else if (!held)
        s->fenced = 1;
    end_session(s);
}

static void abandon_run(leader_session *s, const char *reason)
{
    if (!s->fenced && !s->lost_why && lock_lease_valid(s->lk) &&
        runs_abandon(s->o.pg, &s->ld, s->run_id, reason, on_abandoned, s) == 0) {
        s->pending++;
        s->phase = P_WRITE;
        return;
    }
    end_session(s);
}

static void on_finished_written(void *arg, int held, const char *err)
{
    leader_session *s = arg;

    s->pending--;
    if (err || !held) {
        if (!held && !err) {
            s->fenced = 1;
            s->lost_why = "fenced out";
            set_result(s, LEADER_FENCED, "fenced out when finishing the run");
        } else {
            set_result(s, LEADER_ERROR, err);
        }
        log_error("run could not be finished", LF_I("run_id", s->run_id),
                  LF_S("error", err ? err : "fenced out"));
        end_session(s);
        return;
    }
    s->runs_done++;
    snprintf(s->final_state, sizeof(s->final_state), "%s", s->fin_state);
    {
        char labels[64];
        snprintf(labels, sizeof(labels), "state=\"%s\"", s->fin_state);
        metrics_observe(M_RUN_DURATION, labels, (double)(time_mono_us() - s->run_start_us) / 1e6);
    }
    log_info("run finished", LF_I("run_id", s->run_id), LF_I("attempt", s->attempt),
             LF_S("state", s->fin_state), LF_S("error", s->fin_error ? s->fin_error : ""));
    if (strcmp(s->fin_state, "succeeded") != 0) {
        char msg[300];
        snprintf(msg, sizeof(msg), "run %lld ended %s%s%s", s->run_id, s->fin_state,
                 s->fin_error ? ": " : "", s->fin_error ? s->fin_error : "");
        alert_raise(ALERT_RUN_FAILED, msg, NULL, s->run_id);
    }
    emit(s, LEADER_EV_RUN_FINISHED, NULL, s->fin_state, s->fin_error);
    after_run(s);
}

/* The job has stopped: record it, then go on with the next run or end. */
static void handle_job_done(leader_session *s)
{
    s->job_done = 0;
    uv_timer_stop(&s->hb_timer);
    uv_timer_stop(&s->timer);
    if (s->fin_state && !s->fenced && !s->lost_why && lock_lease_valid(s->lk)) {
        if (runs_finish(s->o.pg, &s->ld, s->run_id, s->fin_state, s->fin_error, on_finished_written,
                        s) == 0) {
            s->pending++;
            s->phase = P_WRITE;
            return;
        }
        set_result(s, LEADER_ERROR, "could not send the run's finish");
        end_session(s);
        return;
    }
    if (s->fenced || s->lost_why) {
        /* No write: the run stays 'running' under our token, and the next leader
         * marks it abandoned and resumes it. */
        set_result(s, s->fenced ? LEADER_FENCED : LEADER_LOST, s->lost_why);
        end_session(s);
        return;
    }
    /* Stopped early on request (or the lease ran out between checks). */
    set_result(s, s->shutdown_req ? LEADER_SHUTDOWN : LEADER_LOST,
               s->shutdown_req ? s->shutdown_reason : "lease expired");
    abandon_run(s, s->shutdown_req ? s->shutdown_reason : "leader stopped");
}

static void after_run(leader_session *s)
{
    free(s->fin_state);
    free(s->fin_error);
    s->fin_state = s->fin_error = NULL;
    if (interrupted(s)) {
        end_session(s);
        return;
    }
    if (s->o.create && !s->ran_request && s->runs_started < MAX_RUNS_PER_SESSION) {
        create_requested(s);
        return;
    }
    end_session(s);
}

/* ---- running the job -------------------------------------------------- */

static void on_heartbeat(void *arg, int held, const char *err)
{
    leader_session *s = arg;

    s->pending--;
    s->hb_inflight = 0;
    if (err) {
        log_warn("run heartbeat failed", LF_I("run_id", s->run_id), LF_S("error", err));
    } else if (!held && !s->fenced) {
        s->fenced = 1;
        if (s->phase == P_RUNNING && !s->lost_why) {
            s->lost_why = "fenced out";
            step_down(s, "fenced out");
        }
    }
    maybe_done(s);
}

static void hb_tick(uv_timer_t *t)
{
    leader_session *s = t->data;

    if (s->phase != P_RUNNING || s->hb_inflight || !lock_lease_valid(s->lk))
        return;
    if (runs_heartbeat(s->o.pg, &s->ld, s->run_id, on_heartbeat, s) == 0) {
        s->pending++;
        s->hb_inflight = 1;
    }
}

static void on_stop_timeout(uv_timer_t *t)
{
    leader_session *s = t->data;

    if (s->phase != P_STOPPING || !s->job_active)
        return;
    log_error("job did not stop in time; ending the session without it", LF_I("run_id", s->run_id),
              LF_I("stop_timeout_ms", s->o.stop_timeout_ms));
    set_result(s, s->shutdown_req ? LEADER_SHUTDOWN : LEADER_LOST, NULL);
    snprintf(s->error, sizeof(s->error), "%s", "job did not stop in time");
    abandon_run(s, "leader shut down; job did not stop in time");
}

static void kick_cb(uv_timer_t *t)
{
    leader_session *s = t->data;

    if (s->fenced && s->phase == P_RUNNING && !s->lost_why) {
        s->lost_why = "fenced out";
        step_down(s, "fenced out");
    }
    if (s->job_done && (s->phase == P_RUNNING || s->phase == P_STOPPING))
        handle_job_done(s);
}

static void start_job(leader_session *s, const runs_claimed *c)
{
    int rc;

    free_strv(s->run_corps, s->nrun_corps);
    s->run_corps = NULL;
    s->nrun_corps = 0;
    if (c->ncorp_ids > 0 && !(s->run_corps = dup_strv(c->corp_ids, c->ncorp_ids))) {
        set_result(s, LEADER_ERROR, "out of memory");
        abandon_run(s, "leader out of memory");
        return;
    }
    s->nrun_corps = s->run_corps ? c->ncorp_ids : 0;
    s->run_id = s->result_run_id = c->run_id;
    s->attempt = s->result_attempt = c->attempt;
    s->run_sched_ms = c->scheduled_for_ms;
    s->runs_started++;
    if (s->o.create && s->o.scheduled_for_ms > 0 && c->scheduled_for_ms == s->o.scheduled_for_ms)
        s->ran_request = 1;
    s->final_state[0] = '\0';

    memset(&s->run, 0, sizeof(s->run));
    s->run.loop = s->o.loop;
    s->run.settings = &s->st;
    s->run.pg = s->o.pg;
    s->run.redis = s->o.redis;
    s->run.http = s->o.http;
    s->run.env = s->st.env;
    s->run.job = s->o.ops->name;
    s->run.fencing_token = s->token;
    s->run.run_id = c->run_id;
    s->run.attempt = c->attempt;
    s->run.corp_ids = (const char *const *)s->run_corps;
    s->run.ncorp_ids = s->nrun_corps;
    s->run.lease_valid = job_lease_valid;
    s->run.fenced_out = job_fenced_out;
    s->run.egress_refused = job_egress_refused;
    s->run.finished = job_finished;
    s->run.coord = s;

    s->phase = P_RUNNING;
    s->stop_sent = 0;
    s->job_active = 1;
    s->job_done = 0;
    log_info("run starting", LF_S("job", s->o.ops->name), LF_I("run_id", c->run_id),
             LF_I("attempt", c->attempt), LF_S("trigger", c->trigger),
             LF_S("prev_state", c->prev_state), LF_I("fencing_token", s->token));
    s->run_start_us = time_mono_us();
    rc = s->o.ops->start(&s->run);
    if (rc) {
        s->job_active = 0;
        log_error("job failed to start", LF_I("run_id", c->run_id), LF_I("error", rc));
        /* A job that cannot start will not start for the next leader either:
         * end the run as failed instead of leaving it to be retried forever. */
        s->fin_state = strdup("failed");
        s->fin_error = strdup("job failed to start");
        if (!s->fin_state) {
            set_result(s, LEADER_ERROR, "job failed to start");
            abandon_run(s, "job failed to start");
            return;
        }
        s->job_done = 1;
        kick_now(s);
        return;
    }
    uv_timer_start(&s->hb_timer, hb_tick, (uint64_t)s->o.heartbeat_ms, (uint64_t)s->o.heartbeat_ms);
    /* Last: the caller may react to the event (even shut the session down). */
    emit(s, LEADER_EV_RUN_STARTED, NULL, NULL, NULL);
}

/* ---- claiming and creating runs --------------------------------------- */

static void on_claimed(void *arg, int held, const runs_claimed *c, const char *err)
{
    leader_session *s = arg;

    s->pending--;
    if (err) {
        set_result(s, LEADER_ERROR, err);
        end_session(s);
        return;
    }
    if (!held) {
        s->fenced = 1;
        s->lost_why = "fenced out";
        set_result(s, LEADER_FENCED, "a newer token holds the fence");
        end_session(s);
        return;
    }
    if (!c) {
        if (s->o.create && !s->ran_request && !interrupted(s) &&
            s->runs_started < MAX_RUNS_PER_SESSION) {
            create_requested(s);
            return;
        }
        set_result(s, s->runs_started ? LEADER_DONE : LEADER_NOTHING, NULL);
        end_session(s);
        return;
    }
    if (interrupted(s)) {
        s->run_id = s->result_run_id = c->run_id;
        s->attempt = s->result_attempt = c->attempt;
        set_result(s, s->shutdown_req ? LEADER_SHUTDOWN : LEADER_LOST,
                   s->shutdown_req ? s->shutdown_reason : s->lost_why);
        abandon_run(s, s->shutdown_req ? s->shutdown_reason : "leader stopped");
        return;
    }
    start_job(s, c);
}

static void claim_next(leader_session *s, long long run_id)
{
    int rc = runs_claim(s->o.pg, &s->ld, run_id, on_claimed, s);

    if (rc) {
        set_result(s, LEADER_ERROR, "could not send the run claim");
        end_session(s);
        return;
    }
    s->pending++;
    s->phase = P_CLAIM;
}

static void on_created(void *arg, const runs_created *r, const char *err)
{
    leader_session *s = arg;

    s->pending--;
    if (err) {
        set_result(s, LEADER_ERROR, err);
        end_session(s);
        return;
    }
    if (interrupted(s)) {
        end_session(s);
        return;
    }
    if (r->created) {
        s->ran_request = 1;
        claim_next(s, r->run_id);
        return;
    }
    if (!strcmp(r->state, "pending") || !strcmp(r->state, "running") ||
        !strcmp(r->state, "abandoned")) {
        /* Someone requested a run meanwhile (or this very fire is unfinished):
         * that one is the run to do. */
        claim_next(s, r->run_id);
        return;
    }
    /* This fire already ran to the end under some leader. */
    s->ran_request = 1;
    s->already_done = 1;
    s->result_run_id = r->run_id;
    snprintf(s->final_state, sizeof(s->final_state), "%s", r->state);
    log_info("requested run already done", LF_I("run_id", r->run_id), LF_S("state", r->state));
    end_session(s);
}

static void create_requested(leader_session *s)
{
    runs_new rq = {
        .env = s->st.env,
        .job = s->o.ops->name,
        .trigger = s->trigger,
        .scheduled_for_ms = s->o.scheduled_for_ms,
        .corp_ids = (const char *const *)s->req_corps,
        .ncorp_ids = s->nreq_corps,
    };

    if (runs_create(s->o.pg, &rq, on_created, s) != 0) {
        set_result(s, LEADER_ERROR, "could not send the run creation");
        end_session(s);
        return;
    }
    s->pending++;
    s->phase = P_CREATE;
}

/* ---- fencing counter repair ------------------------------------------- */

/* If Redis lost its data (a restart without persistence, a failover to an
 * empty replica), INCR starts again from 1 and every new token is below the
 * fence row in PostgreSQL: nobody could ever lead again. So when our claim is
 * refused, raise the counter to the fence row's token (it only ever goes up),
 * give our lock back and try once more. If a successor really holds the fence,
 * the counter is already above it and the retry just finds its lock. */
static redis_script raise_script = {
    .src = "local c = tonumber(redis.call('GET', KEYS[1]) or '0')\n"
           "local f = tonumber(ARGV[1])\n"
           "if c < f then redis.call('SET', KEYS[1], ARGV[1]) end\n"
           "return c\n",
};

static void on_repair_released(void *arg, lock *l, int status)
{
    leader_session *s = arg;

    (void)l;
    (void)status;
    if (s->shutdown_req) {
        set_result(s, LEADER_SHUTDOWN, s->shutdown_reason);
        close_all(s);
        return;
    }
    s->token = 0;
    s->ld.token = 0;
    try_acquire(s);
}

static void repair_done(leader_session *s)
{
    if (lock_release(s->lk, on_repair_released, s) != 0)
        on_repair_released(s, s->lk, LOCK_ESTATE);
}

static void on_raised(void *arg, redisReply *reply, const char *err)
{
    leader_session *s = arg;

    s->pending--;
    if (err)
        log_warn("could not raise the fencing counter", LF_S("error", err));
    else if (reply && reply->type == REDIS_REPLY_INTEGER)
        log_warn("fencing counter was behind the fence row (Redis lost its data?): raised",
                 LF_I("counter_was", reply->integer), LF_I("our_token", s->token));
    repair_done(s);
}

static void on_fence_token(void *arg, PGresult *res, const char *err)
{
    leader_session *s = arg;
    char key[256];
    const char *argv[2];

    s->pending--;
    if (err || PQntuples(res) != 1 || lock_fence_key(s->st.env, s->o.ops->name, key, sizeof(key))) {
        repair_done(s);
        return;
    }
    argv[0] = key;
    argv[1] = PQgetvalue(res, 0, 0);
    if (redis_eval(s->o.redis, &raise_script, 1, 2, argv, on_raised, s) == 0)
        s->pending++;
    else
        repair_done(s);
}

static int start_fence_repair(leader_session *s)
{
    const char *p[2] = {s->st.env, s->o.ops->name};

    if (pg_query(s->o.pg, "SELECT token FROM leader_fence WHERE env = $1 AND job = $2", 2, p,
                 on_fence_token, s) != 0)
        return -1;
    s->fence_repaired = 1;
    s->pending++;
    s->phase = P_REPAIR;
    return 0;
}

static void on_fence(void *arg, int held, const char *err)
{
    leader_session *s = arg;

    s->pending--;
    if (err) {
        set_result(s, LEADER_ERROR, err);
        end_session(s);
        return;
    }
    if (!held && !s->fence_repaired && !interrupted(s) && start_fence_repair(s) == 0)
        return;
    if (!held) {
        s->fenced = 1;
        s->lost_why = "fenced out";
        set_result(s, LEADER_FENCED, "a newer token holds the fence");
        end_session(s);
        return;
    }
    if (interrupted(s)) {
        end_session(s);
        return;
    }
    claim_next(s, 0);
}

/* ---- acquiring -------------------------------------------------------- */

static void retry_tick(uv_timer_t *t)
{
    try_acquire(t->data);
}

static void on_acquired(void *arg, lock *l, int status, long long token, const char *holder,
                        long long pttl)
{
    leader_session *s = arg;
    uint64_t delay;

    (void)l;
    if (status == 0) {
        s->token = token;
        s->ld.token = token;
        emit(s, LEADER_EV_ACQUIRED, NULL, NULL, NULL);
        if (s->shutdown_req) {
            end_session(s);
            return;
        }
        if (runs_fence_claim(s->o.pg, &s->ld, on_fence, s) != 0) {
            set_result(s, LEADER_ERROR, "could not send the fence claim");
            end_session(s);
            return;
        }
        s->pending++;
        s->phase = P_FENCE;
        return;
    }
    if (s->shutdown_req) {
        set_result(s, LEADER_SHUTDOWN, s->shutdown_reason);
        close_all(s);
        return;
    }
    if (status == LOCK_EBUSY) {
        if (holder && strcmp(holder, s->last_holder) != 0) {
            snprintf(s->last_holder, sizeof(s->last_holder), "%s", holder);
            log_info("leader lock busy", LF_S("job", s->o.ops->name), LF_S("holder", holder),
                     LF_I("pttl_ms", pttl));
            emit(s, LEADER_EV_WAITING, holder, NULL, NULL);
        }
        if (!s->o.wait) {
            set_result(s, LEADER_BUSY, holder && *holder ? holder : "lock busy");
            close_all(s);
            return;
        }
        /* Try again right after the holder's ttl would run out: a standby takes
         * over as soon as the lock expires, not a period later. */
        delay = pttl > 0 ? (uint64_t)pttl + 5 : 50;
        if (delay > RETRY_BUSY_MAX_MS)
            delay = RETRY_BUSY_MAX_MS;
    } else {
        if (!s->o.wait) {
            set_result(s, LEADER_ERROR, "redis unavailable");
            close_all(s);
            return;
        }
        delay = RETRY_ERROR_MS;
    }
    if (s->o.wait_timeout_ms > 0 &&
        time_mono_us() - s->wait_start_us + delay * 1000 > (uint64_t)s->o.wait_timeout_ms * 1000) {
        set_result(s, status == LOCK_EBUSY ? LEADER_BUSY : LEADER_ERROR,
                   status == LOCK_EBUSY ? "timed out waiting for the lock" : "redis unavailable");
        close_all(s);
        return;
    }
    s->phase = P_WAIT;
    uv_timer_start(&s->timer, retry_tick, delay, 0);
}

static void try_acquire(leader_session *s)
{
    int rc = lock_acquire(s->lk, on_acquired, s);

    if (rc) {
        set_result(s, LEADER_ERROR, "could not send the lock attempt");
        close_all(s);
        return;
    }
    s->phase = P_ACQUIRE;
}

static void start_cb(uv_timer_t *t)
{
    try_acquire(t->data);
}

/* ---- public API ------------------------------------------------------- */

int leader_session_start(const leader_opts *o, leader_session **out)
{
    leader_session *s;
    int margin;

    if (!o || !o->loop || !o->settings || !o->pg || !o->redis || !o->ops || !o->ops->name ||
        !o->ops->start || !o->ops->stop || !o->on_done || !out)
        return -EINVAL;
    if (o->create && (!o->trigger || (strcmp(o->trigger, "schedule") &&
                                      strcmp(o->trigger, "manual") && strcmp(o->trigger, "cli"))))
        return -EINVAL;
    s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->o = *o;
    s->st = *o->settings;
    if (!s->o.heartbeat_ms)
        s->o.heartbeat_ms = 2000;
    if (!s->o.stop_timeout_ms)
        s->o.stop_timeout_ms = 10000;
    if (o->create && !(s->trigger = strdup(o->trigger)))
        goto fail;
    if (o->create && o->corp_ids && o->ncorp_ids > 0) {
        if (!(s->req_corps = dup_strv(o->corp_ids, o->ncorp_ids)))
            goto fail;
        s->nreq_corps = o->ncorp_ids;
    }
    s->o.trigger = NULL;
    s->o.corp_ids = NULL;
    margin = o->lock_margin_ms;
    s->lk = lock_new(o->loop, o->redis,
                     &(lock_opts){.env = s->st.env,
                                  .job = o->ops->name,
                                  .instance = s->st.instance,
                                  .ttl_ms = s->st.lock_ttl_ms,
                                  .margin_ms = margin,
                                  .on_lost = on_lock_lost,
                                  .arg = s});
    if (!s->lk)
        goto fail;
    s->lock_open = 1;
    s->ld.env = s->st.env;
    s->ld.job = o->ops->name;
    s->ld.instance = s->st.instance;
    s->ld.code_version = s->st.code_version[0] ? s->st.code_version : NULL;
    uv_timer_init(o->loop, &s->timer);
    uv_timer_init(o->loop, &s->hb_timer);
    uv_timer_init(o->loop, &s->kick);
    s->timer.data = s->hb_timer.data = s->kick.data = s;
    s->handles_open = 3;
    s->wait_start_us = time_mono_us();
    s->phase = P_ACQUIRE;
    /* First attempt from a loop callback, so nothing is reported from inside
     * this call. */
    uv_timer_start(&s->timer, start_cb, 0, 0);
    *out = s;
    return 0;
fail:
    if (s->lk)
        lock_close(s->lk, NULL, NULL);
    free(s->trigger);
    free_strv(s->req_corps, s->nreq_corps);
    free(s);
    return -ENOMEM;
}

void leader_session_shutdown(leader_session *s, const char *reason)
{
    if (!s || s->phase == P_CLOSING || s->done_called)
        return;
    if (!s->shutdown_req) {
        s->shutdown_req = 1;
        snprintf(s->shutdown_reason, sizeof(s->shutdown_reason), "%s",
                 reason ? reason : "shutdown");
        log_info("leader session shutting down", LF_S("job", s->o.ops->name),
                 LF_S("reason", s->shutdown_reason), LF_I("run_id", s->run_id));
    }
    switch (s->phase) {
    case P_WAIT:
        set_result(s, LEADER_SHUTDOWN, s->shutdown_reason);
        close_all(s);
        break;
    case P_RUNNING:
        set_result(s, LEADER_SHUTDOWN, s->shutdown_reason);
        s->phase = P_STOPPING;
        uv_timer_stop(&s->hb_timer);
        uv_timer_start(&s->timer, on_stop_timeout, (uint64_t)s->o.stop_timeout_ms, 0);
        if (!s->stop_sent) {
            s->stop_sent = 1;
            s->o.ops->stop(&s->run, s->shutdown_reason);
        }
        break;
    case P_STOPPING:
        if (!uv_is_active((uv_handle_t *)&s->timer))
            uv_timer_start(&s->timer, on_stop_timeout, (uint64_t)s->o.stop_timeout_ms, 0);
        break;
    default:
        /* A query or Redis call is in flight: its callback sees shutdown_req. */
        break;
    }
}

int leader_session_is_leader(const leader_session *s)
{
    return s && !s->fenced && !s->lost_why && s->phase != P_CLOSING && lock_lease_valid(s->lk);
}

long long leader_session_run_id(const leader_session *s)
{
    return s && (s->phase == P_RUNNING || s->phase == P_STOPPING) ? s->run_id : 0;
}

/* ---- GET /v1/leader --------------------------------------------------- */

typedef struct lookup_ctx {
    pg_pool *pg;
    char env[64], job[64], instance[160];
    long long token, pttl;
    leader_info_cb cb;
    void *arg;
} lookup_ctx;

static void lookup_answer(lookup_ctx *c, long long since_ms, const char *err)
{
    leader_info info = {
        .instance = c->instance[0] ? c->instance : NULL,
        .fencing_token = c->token,
        .since_ms = since_ms,
        .pttl_ms = c->pttl,
    };

    c->cb(c->arg, err ? NULL : &info, err);
    free(c);
}

static void on_fence_row(void *arg, PGresult *res, const char *err)
{
    lookup_ctx *c = arg;
    long long since = 0;

    if (!err && PQntuples(res) == 1 && !PQgetisnull(res, 0, 0))
        since = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    /* A PostgreSQL failure only costs "since": the holder is still known. */
    lookup_answer(c, since, NULL);
}

static void on_holder(void *arg, const char *instance, long long token, long long pttl,
                      const char *err)
{
    lookup_ctx *c = arg;
    char tok[24];
    const char *params[3];

    if (err || !instance) {
        lookup_answer(c, 0, err);
        return;
    }
    snprintf(c->instance, sizeof(c->instance), "%s", instance);
    c->token = token;
    c->pttl = pttl;
    if (!c->pg) {
        lookup_answer(c, 0, NULL);
        return;
    }
    snprintf(tok, sizeof(tok), "%lld", token);
    params[0] = c->env;
    params[1] = c->job;
    params[2] = tok;
    if (pg_query(c->pg,
                 "SELECT (extract(epoch FROM acquired_at) * 1000)::bigint FROM leader_fence"
                 " WHERE env = $1 AND job = $2 AND token = $3::bigint",
                 3, params, on_fence_row, c) != 0)
        lookup_answer(c, 0, NULL);
}

int leader_lookup(redis_client *redis, pg_pool *pg, const char *env, const char *job,
                  leader_info_cb cb, void *arg)
{
    lookup_ctx *c;
    int rc;

    if (!redis || !env || !job || !cb || strlen(env) >= sizeof(c->env) ||
        strlen(job) >= sizeof(c->job))
        return -EINVAL;
    c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->pg = pg;
    snprintf(c->env, sizeof(c->env), "%s", env);
    snprintf(c->job, sizeof(c->job), "%s", job);
    c->pttl = -1;
    c->cb = cb;
    c->arg = arg;
    rc = lock_holder_get(redis, env, job, on_holder, c);
    if (rc)
        free(c);
    return rc;
}
