/* The scheduler of one competing worker (see schedule.h). One leader session at
 * a time; one armed attempt at a time; everything on the caller's loop. */
#include "coordinator/schedule.h"

#include "common/cron.h"
#include "common/log.h"
#include "common/timeutil.h"
#include "coordinator/leader.h"
#include "coordinator/lock.h"
#include "coordinator/runs.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A fire timer never sleeps longer than this: the wall clock may be stepped,
 * and a fire is computed on the wall clock while uv timers run on the
 * monotonic one. */
#define FIRE_RECHECK_MS 1000
#define LATEST_FIRE_MAX_STEPS 100000

enum { K_FIRE, K_CATCHUP, K_ORPHAN, K_MANUAL };
static const char *const kind_names[] = {"fire", "catch-up", "orphan", "manual"};

struct schedule {
    schedule_opts o;
    settings st;
    cron_expr cron;
    candidacy *cand;

    uv_timer_t fire_timer, poll_timer, attempt_timer;
    int handles_open;
    int handles_closing;
    int pending; /* our own Redis/PostgreSQL calls in flight */
    int closing;
    int cand_open;
    void (*done)(void *arg);
    void *done_arg;

    leader_session *sess;
    int sess_kind;
    int sess_ran; /* the session started a run */

    int armed; /* attempt_timer or a rank query is pending */
    int armed_kind;
    long long armed_sched_ms;

    long long next_fire_ms;
    long long owed_fire_ms; /* a fire reached while busy: compete for it afterwards */
    int watching;           /* a lock-holder or PostgreSQL look in flight */
    int lock_seen_held;
    int notified;
    uint64_t last_pg_look_us;
    uint64_t wanted_at_us; /* continuous: when wanted_sql last answered */
    int wanted;
    int last_eligible; /* -1 unknown: for logging changes */
    char last_why[256];

    schedule_stats stats;
};

static void compete(schedule *s, int kind, long long sched_ms);
static void poll_tick(uv_timer_t *t);
static void ensure_candidacy(schedule *s);
static void maybe_free(schedule *s);

/* ---- the latest fire -------------------------------------------------- */

time_t schedule_latest_fire(const char *cron_text, const char *tz, time_t after_s, time_t now_s)
{
    cron_expr c;
    time_t w, start, f, nx;
    int steps = 0;

    if (after_s <= 0 || after_s >= now_s || cron_parse(&c, cron_text, NULL, 0))
        return 0;
    /* Widening windows back from now, so a frequent cron after a long outage
     * does not walk every fire since the last run. */
    for (w = 2;; w *= 2) {
        start = now_s - w > after_s ? now_s - w : after_s;
        if (cron_next(&c, tz, start, &f))
            return 0;
        if (f <= now_s)
            break;
        if (start == after_s)
            return 0;
    }
    while (steps++ < LATEST_FIRE_MAX_STEPS && !cron_next(&c, tz, f, &nx) && nx <= now_s)
        f = nx;
    return f;
}

/* ---- gate ------------------------------------------------------------- */

/* Logs when eligibility or its reasons change; 1 when we may compete. */
static int eligible_now(schedule *s)
{
    char why[256];
    int ok = gate_eligible(s->o.gate);

    gate_why_not(s->o.gate, why, sizeof(why));
    if (ok != s->last_eligible || strcmp(why, s->last_why) != 0) {
        s->last_eligible = ok;
        snprintf(s->last_why, sizeof(s->last_why), "%s", why);
        if (ok)
            log_info("scheduler: competing for the lock", LF_S("env", s->st.env),
                     LF_S("job", s->o.ops->name), LF_S("cron", s->st.cron), LF_S("tz", s->st.tz));
        else
            log_warn("scheduler: not competing for the lock", LF_S("why", why));
    }
    return ok;
}

static void note_view(schedule *s, const candidacy_view *v)
{
    gate *g = s->o.gate;

    g->version_older = v->version_ok ? GATE_NO : GATE_YES;
    snprintf(g->newest_version, sizeof(g->newest_version), "%s", v->newest_version);
    snprintf(g->egress_refused, sizeof(g->egress_refused), "%s", v->egress_refused);
}

/* ---- the leader session ------------------------------------------------ */

static void on_event(void *arg, const leader_event *ev)
{
    schedule *s = arg;

    if (ev->kind == LEADER_EV_RUN_STARTED) {
        if (!s->sess_ran) {
            s->sess_ran = 1;
            s->stats.led++;
            if (s->sess_kind == K_ORPHAN)
                s->stats.takeovers++;
        }
        /* The next fire goes to someone who led less recently. */
        if (s->cand)
            candidacy_mark_led(s->cand);
    }
}

static void on_session_done(void *arg, const leader_result *r)
{
    schedule *s = arg;
    int kind = s->sess_kind;

    s->sess = NULL;
    if (r->status != LEADER_BUSY && r->status != LEADER_NOTHING)
        log_info("scheduler: session ended", LF_S("kind", kind_names[kind]),
                 LF_I("status", r->status), LF_I("run_id", r->run_id),
                 LF_S("state", r->state ? r->state : ""), LF_S("error", r->error ? r->error : ""));
    if (s->closing) {
        maybe_free(s);
        return;
    }
    /* Whatever happened, look again at once: a run may be waiting (a manual
     * request that came meanwhile, a fire owed, a run we had to give up). */
    s->lock_seen_held = 1;
    if (s->owed_fire_ms) {
        long long f = s->owed_fire_ms;
        s->owed_fire_ms = 0;
        compete(s, K_CATCHUP, f);
        return;
    }
    uv_timer_start(&s->poll_timer, poll_tick, 0, (uint64_t)s->o.poll_ms);
}

static void start_session(schedule *s, int kind, long long sched_ms)
{
    leader_opts lo = {
        .loop = s->o.loop,
        .settings = &s->st,
        .pg = s->o.pg,
        .redis = s->o.redis,
        .http = s->o.http,
        .ops = s->o.ops,
        .wait = 0,
        .create = kind == K_FIRE || kind == K_CATCHUP,
        .trigger = "schedule",
        .scheduled_for_ms = sched_ms,
        .heartbeat_ms = s->o.heartbeat_ms,
        .stop_timeout_ms = s->o.stop_timeout_ms,
        .on_event = on_event,
        .on_done = on_session_done,
        .arg = s,
    };
    int rc;

    if (!eligible_now(s))
        return;
    rc = leader_session_start(&lo, &s->sess);
    if (rc) {
        s->sess = NULL;
        log_error("scheduler: could not start a leader session", LF_I("error", rc));
        return;
    }
    s->sess_kind = kind;
    s->sess_ran = 0;
    s->stats.attempts++;
    log_debug("scheduler: trying for the lock", LF_S("kind", kind_names[kind]),
              LF_I("scheduled_for_ms", sched_ms));
}

/* ---- competing -------------------------------------------------------- */

static void on_attempt_timer(uv_timer_t *t)
{
    schedule *s = t->data;

    s->armed = 0;
    if (s->closing || s->sess)
        return;
    start_session(s, s->armed_kind, s->armed_sched_ms);
}

static void arm(schedule *s, long long delay_ms)
{
    s->armed = 1;
    uv_timer_start(&s->attempt_timer, on_attempt_timer, (uint64_t)(delay_ms > 0 ? delay_ms : 0), 0);
}

static void on_rank(void *arg, const candidacy_view *v, const char *err)
{
    schedule *s = arg;

    s->pending--;
    if (s->closing) {
        s->armed = 0;
        maybe_free(s);
        return;
    }
    if (err) {
        /* Redis is what the lock needs too: without it nobody can lead, so
         * trying without a rank loses nothing. */
        log_warn("scheduler: candidates unavailable, trying unranked", LF_S("error", err));
        arm(s, 0);
        return;
    }
    note_view(s, v);
    if (!v->version_ok) {
        s->armed = 0;
        eligible_now(s); /* logs the version reason once */
        return;
    }
    eligible_now(s);
    log_debug("scheduler: ranked", LF_S("kind", kind_names[s->armed_kind]), LF_I("rank", v->rank),
              LF_I("competitors", v->competitors), LF_I("delay_ms", v->delay_ms));
    arm(s, v->delay_ms);
}

/* One lock attempt for kind, after the rank's grace (fair) or at once. */
static void compete(schedule *s, int kind, long long sched_ms)
{
    if (s->closing)
        return;
    if (s->sess || s->armed) {
        /* Busy: a fire is owed and run once we are free (catch-up). */
        if ((kind == K_FIRE || kind == K_CATCHUP) && sched_ms > s->owed_fire_ms &&
            !(s->armed && s->armed_sched_ms == sched_ms))
            s->owed_fire_ms = sched_ms;
        return;
    }
    if (!eligible_now(s))
        return;
    s->armed = 1;
    s->armed_kind = kind;
    s->armed_sched_ms = sched_ms;
    ensure_candidacy(s);
    /* A manual request is the operator waiting: no rank grace. */
    if (!s->cand || kind == K_MANUAL) {
        arm(s, 0);
        return;
    }
    if (candidacy_rank(s->cand, on_rank, s) != 0) {
        arm(s, 0);
        return;
    }
    s->pending++;
}

/* ---- fires ------------------------------------------------------------ */

static void fire_tick(uv_timer_t *t);

static void arm_fire(schedule *s)
{
    time_t now = (time_t)(time_wall_ms() / 1000), next;
    long long delay;

    if (s->next_fire_ms <= 0) {
        if (cron_next(&s->cron, s->st.tz, now, &next) != 0) {
            log_error("scheduler: the cron expression has no next fire", LF_S("cron", s->st.cron),
                      LF_S("tz", s->st.tz));
            return;
        }
        s->next_fire_ms = (long long)next * 1000;
        log_debug("scheduler: next fire", LF_I("at_ms", s->next_fire_ms));
    }
    delay = s->next_fire_ms - (long long)time_wall_ms();
    if (delay < 0)
        delay = 0;
    if (delay > FIRE_RECHECK_MS)
        delay = FIRE_RECHECK_MS;
    uv_timer_start(&s->fire_timer, fire_tick, (uint64_t)delay, 0);
}

static void fire_tick(uv_timer_t *t)
{
    schedule *s = t->data;
    long long f = s->next_fire_ms;

    if (s->closing)
        return;
    if (f > 0 && (long long)time_wall_ms() >= f) {
        s->next_fire_ms = 0;
        s->stats.fires++;
        log_debug("scheduler: fire", LF_I("scheduled_for_ms", f));
        compete(s, K_FIRE, f);
    }
    arm_fire(s);
}

/* ---- watching the lock and the runs ----------------------------------- */

typedef struct look {
    schedule *s;
    long long resumable_id;
} look;

static void look_done(schedule *s)
{
    s->watching = 0;
    s->pending--;
    if (s->closing)
        maybe_free(s);
}

static void on_last_fire(void *arg, PGresult *res, const char *err)
{
    look *lk = arg;
    schedule *s = lk->s;
    long long last_ms = 0;
    time_t f;

    free(lk);
    look_done(s);
    if (s->closing)
        return;
    if (err) {
        log_warn("scheduler: could not read the latest scheduled run", LF_S("error", err));
        return;
    }
    if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 0))
        last_ms = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    if (last_ms <= 0)
        return; /* a new deployment: its first run is the next fire */
    f = schedule_latest_fire(s->st.cron, s->st.tz, (time_t)(last_ms / 1000),
                             (time_t)(time_wall_ms() / 1000));
    if (f > 0 && (long long)f * 1000 > last_ms) {
        log_info("scheduler: a fire has no run; catching up",
                 LF_I("scheduled_for_ms", (long long)f * 1000), LF_I("last_scheduled_ms", last_ms));
        compete(s, K_CATCHUP, (long long)f * 1000);
    }
}

static const char last_fire_sql[] =
    "SELECT (extract(epoch FROM max(scheduled_for)) * 1000)::bigint FROM sync_runs"
    " WHERE env = $1 AND job = $2 AND trigger = 'schedule'";

static void on_resumable(void *arg, const runs_resumable *r, const char *err)
{
    look *lk = arg;
    schedule *s = lk->s;
    const char *p[2] = {s->st.env, s->o.ops->name};

    if (s->closing) {
        free(lk);
        look_done(s);
        return;
    }
    if (err) {
        log_warn("scheduler: could not look for an unfinished run", LF_S("error", err));
        free(lk);
        look_done(s);
        return;
    }
    if (r->run_id) {
        log_info("scheduler: unfinished run and a free lock; taking over",
                 LF_I("run_id", r->run_id), LF_S("state", r->state),
                 LF_S("leader", r->leader_instance ? r->leader_instance : ""),
                 LF_D("heartbeat_age_s", r->heartbeat_age_s));
        free(lk);
        look_done(s);
        compete(s, K_ORPHAN, 0);
        return;
    }
    if (pg_query(s->o.pg, last_fire_sql, 2, p, on_last_fire, lk) != 0) {
        free(lk);
        look_done(s);
    }
}

static void look_in_pg(schedule *s)
{
    look *lk = calloc(1, sizeof(*lk));

    if (!lk)
        return;
    lk->s = s;
    s->last_pg_look_us = time_mono_us();
    if (runs_find_resumable(s->o.pg, s->st.env, s->o.ops->name, on_resumable, lk) != 0) {
        free(lk);
        return;
    }
    s->watching = 1;
    s->pending++;
}

static void on_wanted(void *arg, PGresult *res, const char *err)
{
    schedule *s = arg;

    s->watching = 0;
    s->pending--;
    if (s->closing) {
        maybe_free(s);
        return;
    }
    if (err) {
        log_warn("scheduler: could not ask whether the job is wanted", LF_S("job", s->o.ops->name),
                 LF_S("error", err));
        return;
    }
    s->wanted_at_us = time_mono_us();
    s->wanted = PQntuples(res) == 1 && PQgetvalue(res, 0, 0)[0] == 't';
    if (s->wanted && !s->sess && !s->armed)
        compete(s, K_CATCHUP, 0);
}

static void on_holder(void *arg, const char *instance, long long token, long long pttl,
                      const char *err)
{
    schedule *s = arg;
    int need;

    (void)token;
    (void)pttl;
    s->watching = 0;
    s->pending--;
    if (s->closing) {
        maybe_free(s);
        return;
    }
    if (err || s->sess || s->armed)
        return;
    if (instance) {
        s->lock_seen_held = 1;
        return;
    }
    if (s->o.continuous) {
        /* Always something to run (resume the unfinished run, or start one),
         * while the job is wanted. */
        if (!s->o.wanted_sql || (s->wanted_at_us && time_mono_us() - s->wanted_at_us <
                                                        (uint64_t)s->o.catchup_check_ms * 1000)) {
            if (!s->o.wanted_sql || s->wanted)
                compete(s, K_CATCHUP, 0);
            return;
        }
        if (pg_query(s->o.pg, s->o.wanted_sql, 0, NULL, on_wanted, s) == 0) {
            s->watching = 1;
            s->pending++;
        }
        return;
    }
    need = s->lock_seen_held || s->notified || !s->last_pg_look_us ||
           time_mono_us() - s->last_pg_look_us >= (uint64_t)s->o.catchup_check_ms * 1000;
    s->lock_seen_held = 0;
    s->notified = 0;
    if (need)
        look_in_pg(s);
}

/* A candidate heartbeats only while it could lead (so a read-only or
 * unprobed worker never takes a rank ahead of the real candidates); an older
 * version still heartbeats, which is how it learns when the newer ones are
 * gone. */
static void ensure_candidacy(schedule *s)
{
    candidacy_view v;

    if (s->cand && candidacy_last_view(s->cand, &v) == 0)
        note_view(s, &v);
    if (!s->o.fair || s->cand || s->cand_open || !gate_may_schedule(s->o.gate) ||
        gate_read_only(s->o.gate) != GATE_NO)
        return;
    s->cand = candidacy_new(s->o.loop, s->o.redis,
                            &(candidacy_opts){.env = s->st.env,
                                              .job = s->o.ops->name,
                                              .instance = s->st.instance,
                                              .code_version = s->st.code_version,
                                              .egress_id = s->o.gate->egress_id,
                                              .heartbeat_ms = s->o.cand_heartbeat_ms,
                                              .grace_ms = s->o.grace_ms});
    if (s->cand)
        s->cand_open = 1;
    else
        log_error("scheduler: cannot create the candidacy");
}

static void poll_tick(uv_timer_t *t)
{
    schedule *s = t->data;

    if (s->closing)
        return;
    ensure_candidacy(s);
    if (s->sess || s->armed || s->watching)
        return;
    if (!eligible_now(s))
        return;
    if (lock_holder_get(s->o.redis, s->st.env, s->o.ops->name, on_holder, s) != 0)
        return;
    s->watching = 1;
    s->pending++;
}

void schedule_notify(schedule *s, const char *payload)
{
    if (!s || s->closing)
        return;
    log_debug("scheduler: run requested", LF_S("run_id", payload ? payload : ""));
    if (s->sess || s->armed || s->watching) {
        s->notified = 1; /* looked at as soon as we are free */
        return;
    }
    compete(s, K_MANUAL, 0);
}

/* ---- lifetime --------------------------------------------------------- */

static void on_handle_closed(uv_handle_t *h)
{
    schedule *s = h->data;

    s->handles_open--;
    maybe_free(s);
}

static void on_cand_closed(void *arg)
{
    schedule *s = arg;

    s->cand_open = 0;
    s->cand = NULL;
    maybe_free(s);
}

static void maybe_free(schedule *s)
{
    void (*done)(void *arg);
    void *arg;

    if (!s->closing || s->sess)
        return; /* a session's on_done comes back to us */
    if (s->cand_open == 1) {
        s->cand_open = 2;
        candidacy_close(s->cand, 1, on_cand_closed, s);
    }
    if (!s->handles_closing) {
        s->handles_closing = 1;
        uv_close((uv_handle_t *)&s->fire_timer, on_handle_closed);
        uv_close((uv_handle_t *)&s->poll_timer, on_handle_closed);
        uv_close((uv_handle_t *)&s->attempt_timer, on_handle_closed);
    }
    if (s->handles_open > 0 || s->pending > 0 || s->cand_open)
        return;
    done = s->done;
    arg = s->done_arg;
    free(s);
    if (done)
        done(arg);
}

static void close_kick(uv_timer_t *t)
{
    maybe_free(t->data);
}

int schedule_start(const schedule_opts *o, schedule **out)
{
    schedule *s;
    char err[160];

    if (!o || !o->loop || !o->settings || !o->pg || !o->redis || !o->ops || !o->gate || !out)
        return -EINVAL;
    s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->o = *o;
    s->st = *o->settings;
    if (cron_parse(&s->cron, s->st.cron, err, sizeof(err))) {
        log_error("scheduler: bad cron", LF_S("cron", s->st.cron), LF_S("error", err));
        free(s);
        return -EINVAL;
    }
    if (!s->o.poll_ms)
        s->o.poll_ms = 250;
    if (!s->o.catchup_check_ms)
        s->o.catchup_check_ms = 5000;
    s->last_eligible = -1;
    uv_timer_init(o->loop, &s->fire_timer);
    uv_timer_init(o->loop, &s->poll_timer);
    uv_timer_init(o->loop, &s->attempt_timer);
    s->fire_timer.data = s->poll_timer.data = s->attempt_timer.data = s;
    s->handles_open = 3;
    if (!s->o.continuous)
        arm_fire(s);
    uv_timer_start(&s->poll_timer, poll_tick, 0, (uint64_t)s->o.poll_ms);
    log_info("scheduler started", LF_S("env", s->st.env), LF_S("job", o->ops->name),
             LF_S("cron", s->st.cron), LF_S("tz", s->st.tz), LF_I("fair", o->fair),
             LF_I("lock_ttl_ms", s->st.lock_ttl_ms));
    *out = s;
    return 0;
}

int schedule_set_cron(schedule *s, const char *cron, const char *tz, char *err, size_t errlen)
{
    cron_expr c;
    char when[32];

    if (!s || s->closing || !cron || !tz) {
        snprintf(err, errlen, "the scheduler is closing");
        return -EINVAL;
    }
    if (cron_parse(&c, cron, err, errlen))
        return -EINVAL;
    if (strlen(cron) >= sizeof(s->st.cron) || strlen(tz) >= sizeof(s->st.tz) ||
        !cron_tz_valid(tz)) {
        snprintf(err, errlen, "unknown time zone '%.64s'", tz);
        return -EINVAL;
    }
    s->cron = c;
    snprintf(s->st.cron, sizeof(s->st.cron), "%s", cron);
    snprintf(s->st.tz, sizeof(s->st.tz), "%s", tz);
    s->next_fire_ms = 0;
    arm_fire(s);
    time_rfc3339((time_t)(s->next_fire_ms / 1000), -1, when);
    log_info("scheduler: schedule changed", LF_S("cron", s->st.cron), LF_S("tz", s->st.tz),
             LF_S("next_fire", s->next_fire_ms > 0 ? when : ""));
    return 0;
}

void schedule_close(schedule *s, void (*done)(void *arg), void *arg)
{
    if (!s || s->closing)
        return;
    s->closing = 1;
    s->done = done;
    s->done_arg = arg;
    s->armed = 0;
    uv_timer_stop(&s->fire_timer);
    uv_timer_stop(&s->poll_timer);
    uv_timer_stop(&s->attempt_timer);
    if (s->sess)
        leader_session_shutdown(s->sess, "worker shutting down");
    /* Done from a loop callback, never from inside this call. */
    uv_timer_start(&s->poll_timer, close_kick, 0, 0);
}

void schedule_stats_get(const schedule *s, schedule_stats *out)
{
    *out = s->stats;
    out->leading = leader_session_is_leader(s->sess);
    out->run_id = leader_session_run_id(s->sess);
    out->next_fire_ms = s->next_fire_ms;
}
