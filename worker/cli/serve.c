/* `orgsync serve` (SPEC §1): the supervisor in the parent
 * (coordinator/supervisor.h), and in each worker process one libuv loop with
 * the PostgreSQL pool, the Redis client, the HTTP client, the HTTP API on
 * ORGSYNC_HTTP_ADDR (SO_REUSEPORT: every worker shares the port), and, when the
 * gate allows (coordinator/gate.h), the scheduler (coordinator/schedule.h).
 *
 * A worker shuts down on SIGTERM/SIGINT in stages, each waiting for the last:
 * the scheduler (a leader stops its job, leaves the run resumable and releases
 * the lock) and, at the same time, the drain window (ORGSYNC_DRAIN_MS: the API
 * keeps serving but GET /readyz answers 503, so that a load balancer stops
 * sending here before the port closes), then the API, HTTP server, upstream
 * client and alert sender, then the HTTP client, Redis and PostgreSQL, then the
 * loop ends.
 *
 * SIGHUP reloads (docs/OPERATIONS.md "Reload"): the supervisor reads the
 * settings again from the same sources as at start (the --config file, then
 * its environment), logs which changed settings need a restart, and sends the
 * result to every worker on its control socket; a worker applies the log level
 * and format, the schedule (cron, zone) and the alert webhook without
 * restarting (common/settings_reload.h).
 *
 * Two diagnostic environment variables, outside the ORGSYNC_ settings because no
 * deployment should set them: ORGSYNC_FAIRNESS=off makes the scheduler race with
 * plain SET NX (the fairness test's baseline), ORGSYNC_FAIR_GRACE_MS sets the
 * grace per rank (default 200). */
#include "common/alert.h"
#include "common/http_client.h"
#include "common/http_server.h"
#include "common/log.h"
#include "common/metrics_host.h"
#include "common/pg.h"
#include "common/redis.h"
#include "common/settings_reload.h"
#include "coordinator/gate.h"
#include "coordinator/runs.h"
#include "coordinator/schedule.h"
#include "coordinator/supervisor.h"
#include "worker/api/api.h"
#include "worker/cli/commands.h"
#include "worker/sync/callback_apply.h"
#include "worker/sync/directory_sync.h"
#include "worker/api/page.h"
#include "worker/wecom/wecom.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define PG_POOL_SIZE 4
#define PROBE_RETRY_MS 2000
/* How long the API waits for the read-only answer before it serves anyway
 * (write endpoints then rely on the role's privileges until it comes). */
#define API_WAIT_FOR_PROBE_MS 2000
/* How often a worker publishes its metrics for the host's /metrics (what a
 * crashed worker can lose at most). */
#define METRICS_PUBLISH_MS 1000
/* How often a worker looks whether it leads, for the supervisor's STATUS=. */
#define LEADING_CHECK_MS 1000

typedef struct worker {
    uv_loop_t loop;
    settings st;
    gate g;
    pg_pool *pg;
    redis_client *redis;
    http_client *http;
    wecom *wc;
    http_server *srv;
    api *api;
    schedule *sched;
    schedule *sched_cb; /* the callback-apply job's (continuous) */
    uv_signal_t sig_term, sig_int;
    uv_timer_t probe_timer;
    uv_timer_t api_timer;
    uv_timer_t drain_timer;
    uv_timer_t metrics_timer;
    uv_timer_t leading_timer;
    uv_poll_t ctl_poll; /* reloads from the supervisor */
    int ctl_open;
    int last_leading;
    settings reload_buf;
    int api_up;
    int listening; /* the API serves on its port */
    int stopping;  /* also the API's "draining": /readyz answers 503 from now on */
    int stage1;    /* scheduler close and drain window still to end */
    int waits;     /* stage-2 closes still to come back */
    int exit_code;
    int fair, grace_ms;
} worker;

static void begin_shutdown(worker *w, const char *why);

/* ---- GET /v1/leader: what only this worker knows ---------------------- */

static void leader_local(void *arg, api_leader_local *out)
{
    worker *w = arg;
    schedule_stats ss;

    out->eligible = w->sched != NULL && gate_eligible(&w->g);
    gate_why_not(&w->g, out->why_not, sizeof(out->why_not));
    if (!out->eligible && !out->why_not[0])
        snprintf(out->why_not, sizeof(out->why_not), "%s",
                 w->stopping ? "shutting down" : "scheduler not running");
    if (w->sched) {
        schedule_stats_get(w->sched, &ss);
        out->is_leader = ss.leading;
    }
}

/* ---- the scheduler ---------------------------------------------------- */

static void on_notify(void *arg, const char *channel, const char *payload)
{
    worker *w = arg;

    (void)channel;
    if (w->sched)
        schedule_notify(w->sched, payload);
}

static void start_scheduler(worker *w)
{
    char channel[64];
    int rc;

    if (!gate_may_schedule(&w->g) || w->sched || w->stopping)
        return;
    rc = schedule_start(&(schedule_opts){.loop = &w->loop,
                                         .settings = &w->st,
                                         .pg = w->pg,
                                         .redis = w->redis,
                                         .http = w->http,
                                         .ops = &directory_sync_ops,
                                         .gate = &w->g,
                                         .fair = w->fair,
                                         .grace_ms = w->grace_ms},
                        &w->sched);
    if (rc) {
        log_error("serve: the scheduler did not start", LF_I("error", rc));
        w->sched = NULL;
        return;
    }
    /* The change callbacks' applier: its own lock and fence, the same gate. */
    rc = schedule_start(&(schedule_opts){.loop = &w->loop,
                                         .settings = &w->st,
                                         .pg = w->pg,
                                         .redis = w->redis,
                                         .http = w->http,
                                         .ops = &callback_apply_ops,
                                         .gate = &w->g,
                                         .fair = w->fair,
                                         .grace_ms = w->grace_ms,
                                         .continuous = 1,
                                         .wanted_sql = CALLBACK_APPLY_WANTED_SQL},
                        &w->sched_cb);
    if (rc) {
        log_error("serve: the callback applier did not start", LF_I("error", rc));
        w->sched_cb = NULL;
    }
    if (runs_channel(w->st.env, channel, sizeof(channel)) == 0 &&
        pg_listen(w->pg, channel, on_notify, w) != 0)
        log_warn("serve: cannot LISTEN for run requests; relying on polling",
                 LF_S("channel", channel));
}

/* ---- read-only probe and the API -------------------------------------- */

static void bring_up_api(worker *w)
{
    char err[256];
    int rc;

    if (w->api_up || w->stopping)
        return;
    w->api_up = 1;
    uv_timer_stop(&w->api_timer);
    w->srv = http_server_new(&w->loop, NULL);
    if (!w->srv) {
        log_error("serve: out of memory creating the HTTP server");
        w->exit_code = 1;
        begin_shutdown(w, "startup failed");
        return;
    }
    rc = api_register(w->srv,
                      &(api_deps){.loop = &w->loop,
                                  .settings = &w->st,
                                  .pg = w->pg,
                                  .redis = w->redis,
                                  .wecom = w->wc,
                                  .leader_local = leader_local,
                                  .leader_local_arg = w,
                                  .read_only = gate_read_only(&w->g) == GATE_YES,
                                  .draining = &w->stopping},
                      &w->api);
    if (rc == 0)
        rc = page_register(w->srv);
    if (rc == 0)
        rc = http_server_listen(w->srv, w->st.http_addr, err, sizeof(err));
    else
        snprintf(err, sizeof(err), "could not register the API routes (%d)", rc);
    if (rc) {
        log_error("serve: cannot serve HTTP", LF_S("addr", w->st.http_addr), LF_S("error", err));
        w->exit_code = 1;
        begin_shutdown(w, "cannot listen");
        return;
    }
    w->listening = 1;
    log_info("serve: worker serving", LF_S("addr", w->st.http_addr),
             LF_I("port", http_server_port(w->srv, 0)), LF_S("env", w->st.env),
             LF_I("read_only", gate_read_only(&w->g)));
    supervisor_worker_ready(w->st.worker_id);
    start_scheduler(w);
}

static void on_api_timer(uv_timer_t *t)
{
    worker *w = t->data;

    log_warn("serve: read-only check has not answered; serving anyway",
             LF_S("why", w->g.probe_error[0] ? w->g.probe_error : "no answer yet"));
    bring_up_api(w);
}

static void probe_tick(uv_timer_t *t);

static void on_probe(void *arg, int can_write, const char *err)
{
    worker *w = arg;

    if (w->stopping)
        return;
    if (err) {
        snprintf(w->g.probe_error, sizeof(w->g.probe_error), "%s", err);
        uv_timer_start(&w->probe_timer, probe_tick, PROBE_RETRY_MS, 0);
        return;
    }
    w->g.probe_error[0] = '\0';
    w->g.role_can_write = can_write;
    log_info("serve: read-only check", LF_I("role_can_write", can_write == GATE_YES),
             LF_I("read_only", gate_read_only(&w->g) == GATE_YES));
    if (w->api_up && can_write != GATE_YES)
        log_warn("serve: the API started before the read-only answer; write endpoints are "
                 "refused by the database role");
    bring_up_api(w);
}

static void probe_tick(uv_timer_t *t)
{
    worker *w = t->data;

    if (w->stopping)
        return;
    if (gate_probe_read_only(w->pg, on_probe, w) != 0)
        uv_timer_start(&w->probe_timer, probe_tick, PROBE_RETRY_MS, 0);
}

/* ---- metrics: this worker's share of the host's /metrics -------------- */

static void on_metrics_timer(uv_timer_t *t)
{
    worker *w = t->data;

    api_metrics_refresh(w->api);
    metrics_host_publish();
}

/* ---- shutdown --------------------------------------------------------- */

static void on_signal(uv_signal_t *h, int signum)
{
    begin_shutdown(h->data, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

static void final_close(worker *w)
{
    if (w->http)
        http_client_close(w->http, NULL, NULL);
    if (w->redis)
        redis_close(w->redis, NULL, NULL);
    if (w->pg)
        pg_pool_close(w->pg, NULL, NULL);
    w->http = NULL;
    w->redis = NULL;
    w->pg = NULL;
    uv_close((uv_handle_t *)&w->sig_term, NULL);
    uv_close((uv_handle_t *)&w->sig_int, NULL);
    /* Closing the last uv_signal restores the default action: a second
     * SIGTERM (the supervisor's and a process-group kill both arrive) must
     * not cut the last closes short. */
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    uv_close((uv_handle_t *)&w->probe_timer, NULL);
    uv_close((uv_handle_t *)&w->api_timer, NULL);
    uv_close((uv_handle_t *)&w->drain_timer, NULL);
    uv_close((uv_handle_t *)&w->metrics_timer, NULL);
    uv_close((uv_handle_t *)&w->leading_timer, NULL);
    if (w->ctl_open)
        uv_close((uv_handle_t *)&w->ctl_poll, NULL);
    w->ctl_open = 0;
}

static void on_stage2_closed(void *arg)
{
    worker *w = arg;

    if (--w->waits == 0)
        final_close(w);
}

static void close_services(worker *w)
{
    w->waits = 1; /* held until every close below is started */
    /* the last figures of this worker's clients, before they go */
    api_metrics_refresh(w->api);
    metrics_host_publish();
    uv_timer_stop(&w->metrics_timer);
    api_close(w->api);
    w->api = NULL;
    if (w->srv) {
        w->waits++;
        http_server_close(w->srv, on_stage2_closed, w);
        w->srv = NULL;
    }
    if (w->wc) {
        w->waits++;
        wecom_close(w->wc, on_stage2_closed, w);
        w->wc = NULL;
    }
    w->waits++;
    alert_close(1000, on_stage2_closed, w);
    on_stage2_closed(w);
}

static void stage1_done(worker *w)
{
    if (--w->stage1 == 0)
        close_services(w);
}

static void on_sched_closed(void *arg)
{
    worker *w = arg;

    w->sched = NULL;
    stage1_done(w);
}

static void on_sched_cb_closed(void *arg)
{
    worker *w = arg;

    w->sched_cb = NULL;
    stage1_done(w);
}

static void on_drain_timer(uv_timer_t *t)
{
    worker *w = t->data;

    log_info("serve: drain window over; closing the API");
    stage1_done(w);
}

static void begin_shutdown(worker *w, const char *why)
{
    if (w->stopping)
        return;
    w->stopping = 1;
    log_info("serve: worker shutting down", LF_S("why", why));
    uv_timer_stop(&w->probe_timer);
    uv_timer_stop(&w->api_timer);
    uv_timer_stop(&w->leading_timer);
    w->stage1 = 1;
    if (w->listening && w->st.drain_ms > 0) {
        w->stage1++;
        log_info("serve: draining: /readyz answers 503, the API serves until the window ends",
                 LF_I("drain_ms", w->st.drain_ms));
        uv_timer_start(&w->drain_timer, on_drain_timer, (uint64_t)w->st.drain_ms, 0);
    }
    if (w->sched_cb) {
        w->stage1++;
        schedule_close(w->sched_cb, on_sched_cb_closed, w);
    }
    if (w->sched)
        schedule_close(w->sched, on_sched_closed, w);
    else
        stage1_done(w);
}

/* ---- reload and status ------------------------------------------------ */

static void apply_reload(worker *w, const settings *fresh)
{
    settings_changes ch;
    char err[200];

    /* needs_restart is the supervisor's to report (once, not per worker): here
     * it also lists what is per worker by design (the instance name). */
    settings_reload_apply(&w->st, fresh, &ch);
    if (!ch.reloaded[0]) {
        log_debug("serve: reload: nothing this worker can change did");
        return;
    }
    if (strstr(ch.reloaded, "ORGSYNC_LOG_"))
        log_init((log_level)w->st.log_level, w->st.log_json, w->st.instance, w->st.worker_id);
    if ((strstr(ch.reloaded, "ORGSYNC_CRON") || strstr(ch.reloaded, "ORGSYNC_TZ")) && w->sched &&
        schedule_set_cron(w->sched, w->st.cron, w->st.tz, err, sizeof(err)) != 0)
        log_error("serve: reload: the scheduler kept its schedule", LF_S("error", err));
    if (strstr(ch.reloaded, "ORGSYNC_ALERT_WEBHOOK") &&
        alert_set_webhook(w->st.alert_webhook[0] ? w->st.alert_webhook : NULL) != 0)
        log_error("serve: reload: the alert webhook could not be changed");
    log_info("serve: reload applied", LF_S("settings", ch.reloaded));
}

static void on_control(uv_poll_t *h, int status, int events)
{
    worker *w = h->data;
    ssize_t n;

    (void)events;
    if (status < 0)
        return;
    for (;;) {
        n = recv(h->io_watcher.fd, &w->reload_buf, sizeof(w->reload_buf), MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return; /* EAGAIN: all read */
        if (n == 0) {
            /* The supervisor is gone; PR_SET_PDEATHSIG ends us. */
            uv_poll_stop(h);
            return;
        }
        if (n != (ssize_t)sizeof(w->reload_buf)) {
            log_warn("serve: reload message of the wrong size ignored", LF_I("bytes", n));
            continue;
        }
        if (!w->stopping)
            apply_reload(w, &w->reload_buf);
    }
}

static void on_leading_timer(uv_timer_t *t)
{
    worker *w = t->data;
    schedule_stats ss;
    int leading = 0;

    if (w->sched) {
        schedule_stats_get(w->sched, &ss);
        leading = ss.leading;
    }
    if (leading != w->last_leading) {
        w->last_leading = leading;
        supervisor_worker_leading(w->st.worker_id, leading);
    }
}

/* ---- the worker process ----------------------------------------------- */

/* ORGSYNC_INSTANCE names a worker. Left to its default (<host>:<pid>, made in
 * the supervisor), each worker takes its own pid; set explicitly on a host of
 * several workers, each worker appends "/w<id>", so no two share a name. */
static void worker_identity(settings *st, int id)
{
    char host[64] = "localhost", def[160];
    char base[sizeof(st->instance)];

    gethostname(host, sizeof(host) - 1);
    host[sizeof(host) - 1] = '\0';
    snprintf(def, sizeof(def), "%s:%d", host, (int)getppid());
    st->worker_id = id;
    if (!strcmp(st->instance, def)) {
        snprintf(st->instance, sizeof(st->instance), "%s:%d", host, (int)getpid());
    } else if (st->workers > 1) {
        snprintf(base, sizeof(base), "%s", st->instance);
        snprintf(st->instance, sizeof(st->instance), "%.118s/w%d", base, id);
    }
}

static int env_int(const char *name, int def, int lo, int hi)
{
    const char *v = getenv(name);
    char *end;
    long n;

    if (!v || !*v)
        return def;
    n = strtol(v, &end, 10);
    return (*end || n < lo || n > hi) ? def : (int)n;
}

static int open_clients(worker *w)
{
    w->pg = pg_pool_new(
        &w->loop,
        &(pg_pool_opts){.dsn = w->st.pg_dsn, .password = w->st.pg_password, .size = PG_POOL_SIZE});
    w->redis = redis_new(&w->loop, &(redis_opts){.url = w->st.redis_url});
    /* One client for the upstream and the alert webhook, bound to the egress
     * address when ORGSYNC_UPSTREAM_BIND names one. */
    w->http = http_client_new(
        &w->loop,
        &(http_client_opts){.bind_addr = w->st.upstream_bind[0] ? w->st.upstream_bind : NULL});
    if (!w->pg || !w->redis || !w->http)
        return -1;
    if (alert_init(&w->loop, w->http, w->st.alert_webhook[0] ? w->st.alert_webhook : NULL,
                   w->st.env, w->st.instance) != 0)
        return -1;
    /* The realtime lookup's upstream client (the sync makes its own per run). */
    w->wc = wecom_new(&w->loop, w->http, w->redis,
                      &(wecom_opts){.base_url = w->st.upstream_url,
                                    .env = w->st.env,
                                    .instance = w->st.instance,
                                    .rate = w->st.dept_rate,
                                    .max_inflight = w->st.upstream_max_inflight,
                                    .daily_quota = w->st.daily_quota,
                                    .egress_id = w->st.egress_id,
                                    .egress_per_min = w->st.egress_max_per_min,
                                    .egress_per_hour = w->st.egress_max_per_hour});
    return w->wc ? 0 : -1;
}

/* How GET /v1/users and the enterprise member and department routes are
 * guarded (worker/api/api_shared.h api_read_ok), for the start-up log. */
static const char *directory_reads(const settings *st)
{
    if (st->public_reads)
        return "public (ORGSYNC_PUBLIC_READS=on)";
    if (st->read_token[0])
        return "read or admin token";
    if (st->admin_token[0])
        return "admin token only (ORGSYNC_READ_TOKEN unset)";
    return "refused (no token configured)";
}

static int worker_run(void *arg, int id)
{
    const settings *s = arg;
    worker *w = calloc(1, sizeof(*w));
    const char *fair;
    int rc;

    if (!w)
        return 1;
    w->st = *s;
    worker_identity(&w->st, id);
    log_init((log_level)w->st.log_level, w->st.log_json, w->st.instance, id);
    /* before anything counts: continue from this slot's last published counts */
    metrics_host_attach(id);
    signal(SIGPIPE, SIG_IGN);
    fair = getenv("ORGSYNC_FAIRNESS");
    w->fair = !(fair && !strcmp(fair, "off"));
    w->grace_ms = env_int("ORGSYNC_FAIR_GRACE_MS", 0, 1, 60000);
    gate_init(&w->g, &w->st);
    uv_loop_init(&w->loop);
    uv_signal_init(&w->loop, &w->sig_term);
    uv_signal_init(&w->loop, &w->sig_int);
    uv_timer_init(&w->loop, &w->probe_timer);
    uv_timer_init(&w->loop, &w->api_timer);
    uv_timer_init(&w->loop, &w->drain_timer);
    uv_timer_init(&w->loop, &w->metrics_timer);
    w->metrics_timer.data = w;
    uv_timer_start(&w->metrics_timer, on_metrics_timer, METRICS_PUBLISH_MS, METRICS_PUBLISH_MS);
    uv_timer_init(&w->loop, &w->leading_timer);
    w->sig_term.data = w->sig_int.data = w->probe_timer.data = w->api_timer.data = w;
    w->drain_timer.data = w->leading_timer.data = w;
    uv_timer_start(&w->leading_timer, on_leading_timer, LEADING_CHECK_MS, LEADING_CHECK_MS);
    if (supervisor_control_fd() >= 0 &&
        uv_poll_init(&w->loop, &w->ctl_poll, supervisor_control_fd()) == 0) {
        w->ctl_open = 1;
        w->ctl_poll.data = w;
        uv_poll_start(&w->ctl_poll, UV_READABLE, on_control);
    }
    uv_signal_start(&w->sig_term, on_signal, SIGTERM);
    uv_signal_start(&w->sig_int, on_signal, SIGINT);
    if (open_clients(w) != 0) {
        log_error("serve: cannot create the clients (bad URL or out of memory)");
        w->exit_code = 1;
        w->api_up = 1; /* nothing to bring up */
        begin_shutdown(w, "startup failed");
    } else if (w->st.read_only == READ_ONLY_AUTO) {
        probe_tick(&w->probe_timer);
        uv_timer_start(&w->api_timer, on_api_timer, API_WAIT_FOR_PROBE_MS, 0);
    } else {
        bring_up_api(w);
    }
    log_info("serve: worker started", LF_I("pid", getpid()), LF_S("env", w->st.env),
             LF_I("schedule", w->st.schedule), LF_I("may_schedule", gate_may_schedule(&w->g)),
             LF_S("code_version", w->st.code_version),
             LF_S("directory_reads", directory_reads(&w->st)));
    if (!w->st.public_reads && !w->st.read_token[0] && !w->st.admin_token[0])
        log_warn("serve: directory reads (members, departments) answer 401 to everyone: set "
                 "ORGSYNC_READ_TOKEN, or ORGSYNC_PUBLIC_READS=on to leave them open");
    uv_run(&w->loop, UV_RUN_DEFAULT);
    rc = uv_loop_close(&w->loop);
    if (rc)
        log_warn("serve: loop closed with handles still open", LF_S("error", uv_strerror(rc)));
    metrics_host_publish(); /* what counted during the last closes */
    log_info("serve: worker stopped", LF_I("exit_code", w->exit_code));
    rc = w->exit_code;
    free(w);
    return rc;
}

void cmd_serve_usage(FILE *f)
{
    fprintf(f, "usage: orgsync [--config FILE] serve\n\n"
               "The per-host daemon: a supervisor that runs ORGSYNC_WORKERS worker processes,\n"
               "each serving the HTTP API on ORGSYNC_HTTP_ADDR and, when ORGSYNC_SCHEDULE=on,\n"
               "competing for the leader lock to run the scheduled sync. Takes no options:\n"
               "settings come from ORGSYNC_* variables (docs/CONFIGURATION.md).\n\n"
               "SIGTERM or SIGINT stops it gracefully: GET /readyz answers 503 at once, the\n"
               "API keeps serving for ORGSYNC_DRAIN_MS, a leader leaves its run resumable\n"
               "and releases the lock.\n\n"
               "SIGHUP reloads: the --config file and the environment are read again;\n"
               "ORGSYNC_LOG_LEVEL, ORGSYNC_LOG_FORMAT, ORGSYNC_CRON, ORGSYNC_TZ and\n"
               "ORGSYNC_ALERT_WEBHOOK take effect at once, other changed settings are\n"
               "logged as needing a restart. Under systemd (Type=notify) it reports\n"
               "READY, STATUS and watchdog pings on $NOTIFY_SOCKET.\n\n"
               "Exit status: 0 stopped cleanly, 1 runtime failure, 2 usage or configuration\n"
               "error.\n");
}

/* The supervisor's settings: those it started with, plus what reloads changed
 * (reloadable settings only, so that a worker restarted later agrees with the
 * others). Workers are forked with a copy. */
static settings serve_settings;

static int supervisor_reload(void *arg, const void **msg, size_t *len)
{
    settings *cur = arg;
    settings *fresh = malloc(sizeof(*fresh));
    settings_changes ch;
    char err[512];

    if (!fresh) {
        log_error("reload: out of memory");
        return -1;
    }
    /* The same sources as at start: the --config file, then the environment
     * (which systemd fixed at start; it wins over the file, as always). */
    if (settings_load(fresh, cur->config_file[0] ? cur->config_file : NULL, err, sizeof(err))) {
        log_error("reload: the settings are not valid; nothing changed", LF_S("error", err));
        free(fresh);
        return -1;
    }
    settings_reload_apply(cur, fresh, &ch);
    free(fresh);
    if (ch.needs_restart[0])
        log_warn("reload: changed settings need a restart to take effect; kept as they were",
                 LF_S("settings", ch.needs_restart));
    if (ch.reloaded[0]) {
        log_init((log_level)cur->log_level, cur->log_json, cur->instance, 0);
        log_info("reload: settings changed", LF_S("settings", ch.reloaded),
                 LF_S("log_level", cur->log_level == LOG_DEBUG  ? "debug"
                                   : cur->log_level == LOG_INFO ? "info"
                                   : cur->log_level == LOG_WARN ? "warn"
                                                                : "error"),
                 LF_S("cron", cur->cron), LF_S("tz", cur->tz),
                 LF_I("alert_webhook", cur->alert_webhook[0] != '\0'));
    } else {
        log_info(
            "reload: no reloadable setting changed",
            LF_S("config", cur->config_file[0] ? cur->config_file : "(none: environment only)"));
    }
    *msg = cur;
    *len = sizeof(*cur);
    return 0;
}

int cmd_serve(const settings *s, int argc, char **argv)
{
    int rc;

    if (argc > 1)
        return cmd_usage_error("serve",
                               "unknown argument '%s' (serve takes none; settings come from "
                               "ORGSYNC_* variables)",
                               argv[1]);
    /* one /metrics per host: every worker's registry in memory the supervisor
     * maps before it forks (common/metrics_host.h) */
    rc = metrics_host_init(s->workers);
    if (rc) {
        fprintf(stderr, "orgsync serve: cannot map the metrics segment: %s\n", strerror(-rc));
        return 1;
    }
    serve_settings = *s;
    rc = supervisor_run(&(supervisor_opts){
        .workers = s->workers,
        .run = worker_run,
        .arg = &serve_settings,
        .reload = supervisor_reload,
        /* Room for a leader to stop its job (leader.c waits up to 10 s) and
         * release the lock. */
        .stop_timeout_ms = 20000,
    });
    metrics_host_shutdown();
    return rc;
}
