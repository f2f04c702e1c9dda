/* The process supervisor (see supervisor.h): fork, watch, restart, stop. */
#include "coordinator/supervisor.h"

#include "common/backoff.h"
#include "common/log.h"
#include "common/metrics_host.h"
#include "common/sd_notify.h"
#include "common/settings.h"
#include "common/timeutil.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct slot {
    pid_t pid;          /* 0: not running */
    int ready;          /* reported ready since its last start */
    int leading;        /* reported leading since its last start */
    int ctl;            /* our end of its control socket, -1 none */
    uint64_t start_us;  /* monotonic */
    uint64_t due_us;    /* restart time when pid == 0; 0: none scheduled */
    unsigned crashes;   /* in a row */
    int start_failures; /* exits before ready, in a row */
    int last_status;    /* wait status of its last exit */
} slot;

typedef struct sup {
    supervisor_opts o;
    slot s[SETTINGS_MAX_WORKERS + 1];
    int sigfd;
    int ready_rd;
    sigset_t mask;
    int stopping;
    uint64_t stop_deadline_us;
    int killed; /* SIGKILL was needed */
    int fatal;  /* exit status decided by a worker that cannot start, 0 none */
    uint64_t rng;
    /* systemd (common/sd_notify.h) */
    int notified_ready;  /* READY=1 sent */
    uint64_t wd_half_us; /* watchdog ping period, 0: none */
    uint64_t wd_next_us;
    int notify_failed; /* logged once */
    char status[256];  /* last STATUS= sent */
} sup;

/* What a worker tells the supervisor on the event pipe. */
enum { EV_READY = 1, EV_LEADING = 2, EV_FOLLOWING = 3 };

typedef struct worker_event {
    int32_t id, ev;
} worker_event;

/* The write end of the event pipe, kept in every child (and the parent, to
 * hand on to children it starts later). -1 outside a supervised worker. */
static int ready_wr = -1;
/* In a worker: its end of the control socket. -1 elsewhere. */
static int control_fd = -1;

static void send_event(int worker_id, int ev)
{
    worker_event e = {worker_id, ev};
    ssize_t n;

    if (ready_wr < 0)
        return;
    /* 8 bytes are far below PIPE_BUF: the write is atomic, never interleaved
     * with another worker's. */
    do {
        n = write(ready_wr, &e, sizeof(e));
    } while (n < 0 && errno == EINTR);
}

void supervisor_worker_ready(int worker_id)
{
    send_event(worker_id, EV_READY);
}

void supervisor_worker_leading(int worker_id, int leading)
{
    send_event(worker_id, leading ? EV_LEADING : EV_FOLLOWING);
}

int supervisor_control_fd(void)
{
    return control_fd;
}

/* ---- systemd ---------------------------------------------------------- */

static void notify(sup *p, const char *msg)
{
    int rc = sd_notify_send(msg);

    if (rc < 0 && !p->notify_failed) {
        p->notify_failed = 1;
        log_warn("supervisor: cannot notify the service manager (NOTIFY_SOCKET)",
                 LF_S("error", strerror(-rc)));
    }
}

static int count_ready(const sup *p)
{
    int id, n = 0;

    for (id = 1; id <= p->o.workers; id++)
        n += p->s[id].pid > 0 && p->s[id].ready;
    return n;
}

static int running(const sup *p);

/* The one-line state `systemctl status` shows. */
static void status_text(const sup *p, char *out, size_t cap)
{
    int id, leader = 0;

    if (p->stopping) {
        snprintf(out, cap, "stopping: %d of %d workers still running", running(p), p->o.workers);
        return;
    }
    for (id = 1; id <= p->o.workers && !leader; id++)
        if (p->s[id].pid > 0 && p->s[id].leading)
            leader = id;
    if (leader)
        snprintf(out, cap, "%s: %d/%d workers ready; leading: worker %d (pid %d)",
                 p->notified_ready ? "serving" : "starting", count_ready(p), p->o.workers, leader,
                 (int)p->s[leader].pid);
    else
        snprintf(out, cap, "%s: %d/%d workers ready; not leading",
                 p->notified_ready ? "serving" : "starting", count_ready(p), p->o.workers);
}

/* READY=1 once every worker serves; STATUS= whenever the text changes. */
static void notify_state(sup *p)
{
    char st[256], msg[320];

    if (!p->notified_ready && !p->stopping && count_ready(p) == p->o.workers) {
        p->notified_ready = 1;
        status_text(p, st, sizeof(st));
        snprintf(p->status, sizeof(p->status), "%s", st);
        snprintf(msg, sizeof(msg), "READY=1\nSTATUS=%s", st);
        notify(p, msg);
        log_info("supervisor: every worker serves; told the service manager READY",
                 LF_I("workers", p->o.workers));
        return;
    }
    status_text(p, st, sizeof(st));
    if (strcmp(st, p->status) != 0) {
        snprintf(p->status, sizeof(p->status), "%s", st);
        snprintf(msg, sizeof(msg), "STATUS=%s", st);
        notify(p, msg);
    }
}

/* The watchdog is pinged from this loop only: a supervisor that stops
 * turning (stuck, deadlocked) stops pinging and systemd restarts it. */
static void watchdog_tick(sup *p)
{
    uint64_t now;

    if (!p->wd_half_us)
        return;
    now = time_mono_us();
    if (now < p->wd_next_us)
        return;
    notify(p, "WATCHDOG=1");
    p->wd_next_us = now + p->wd_half_us;
}

/* ---- children --------------------------------------------------------- */

static void child_main(sup *p, int id, pid_t parent, int ctl)
{
    char idtext[16];
    sigset_t none;
    int rc, i;

    /* Parent's descriptors and signal state are not the worker's business. */
    close(p->sigfd);
    close(p->ready_rd);
    for (i = 1; i <= p->o.workers; i++)
        if (p->s[i].ctl >= 0)
            close(p->s[i].ctl);
    control_fd = ctl;
    signal(SIGCHLD, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    /* A reload reaches a worker from the supervisor (the control socket), not
     * by signal: a SIGHUP sent to the whole group must not kill it. */
    signal(SIGHUP, SIG_IGN);
    /* Only the main process speaks to systemd (NotifyAccess=main). */
    sd_notify_forget();
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    /* Die with the supervisor; the check after it closes the race with a
     * supervisor that died before prctl. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent)
        _exit(1);
    snprintf(idtext, sizeof(idtext), "%d", id);
    setenv("ORGSYNC_WORKER_ID", idtext, 1);
    rc = p->o.run(p->o.arg, id);
    exit(rc);
}

static int start_worker(sup *p, int id)
{
    slot *w = &p->s[id];
    pid_t parent = getpid(), pid;
    int sv[2], err;

    /* The control socket: one message per reload, whole or not at all. */
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
        err = errno;
        log_error("supervisor: socketpair failed", LF_I("worker_id", id),
                  LF_S("error", strerror(err)));
        return -err;
    }
    fflush(NULL); /* nothing buffered may be written twice */
    pid = fork();
    if (pid < 0) {
        err = errno;
        log_error("supervisor: fork failed", LF_I("worker_id", id), LF_S("error", strerror(err)));
        close(sv[0]);
        close(sv[1]);
        return -err;
    }
    if (pid == 0) {
        close(sv[0]);
        child_main(p, id, parent, sv[1]);
    }
    close(sv[1]);
    if (w->ctl >= 0)
        close(w->ctl);
    w->ctl = sv[0];
    fcntl(w->ctl, F_SETFL, O_NONBLOCK);
    w->pid = pid;
    w->ready = 0;
    w->leading = 0;
    w->due_us = 0;
    w->start_us = time_mono_us();
    log_info("supervisor: worker started", LF_I("worker_id", id), LF_I("pid", pid));
    return 0;
}

static uint64_t restart_delay_ms(sup *p, unsigned crashes)
{
    uint64_t d = (uint64_t)p->o.restart_base_ms;
    unsigned i;

    for (i = 1; i < crashes && d < (uint64_t)p->o.restart_cap_ms; i++)
        d *= 2;
    if (d > (uint64_t)p->o.restart_cap_ms)
        d = (uint64_t)p->o.restart_cap_ms;
    /* Jitter in [d/2, d]: workers that crashed together do not restart in
     * lockstep. */
    return d / 2 + backoff_rand(&p->rng) % (d / 2 + 1);
}

static void begin_stop(sup *p, const char *why)
{
    int id;

    char st[256], msg[320];

    if (p->stopping)
        return;
    p->stopping = 1;
    p->stop_deadline_us = time_mono_us() + (uint64_t)p->o.stop_timeout_ms * 1000;
    status_text(p, st, sizeof(st));
    snprintf(p->status, sizeof(p->status), "%s", st);
    snprintf(msg, sizeof(msg), "STOPPING=1\nSTATUS=%s", st);
    notify(p, msg);
    log_info("supervisor: stopping workers", LF_S("why", why),
             LF_I("stop_timeout_ms", p->o.stop_timeout_ms));
    for (id = 1; id <= p->o.workers; id++) {
        p->s[id].due_us = 0;
        if (p->s[id].pid > 0)
            kill(p->s[id].pid, SIGTERM);
    }
}

static void on_exit_status(sup *p, int id, int status)
{
    slot *w = &p->s[id];
    uint64_t up_ms = (time_mono_us() - w->start_us) / 1000, delay;
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;

    w->pid = 0;
    w->leading = 0;
    w->last_status = status;
    metrics_host_exited(id); /* its gauges leave the host's /metrics; counters stay */
    if (w->ctl >= 0) {
        close(w->ctl);
        w->ctl = -1;
    }
    if (p->stopping) {
        log_info("supervisor: worker ended", LF_I("worker_id", id), LF_I("exit_code", code),
                 LF_I("signal", sig));
        return;
    }
    if (code == 2) {
        log_error("supervisor: worker has a configuration error; stopping", LF_I("worker_id", id));
        p->fatal = 2;
        begin_stop(p, "worker configuration error");
        return;
    }
    if (!w->ready) {
        w->start_failures++;
        if (w->start_failures >= p->o.start_failures_max) {
            log_error("supervisor: worker cannot start; stopping", LF_I("worker_id", id),
                      LF_I("attempts", w->start_failures), LF_I("exit_code", code),
                      LF_I("signal", sig));
            p->fatal = 1;
            begin_stop(p, "a worker cannot start");
            return;
        }
    } else {
        w->start_failures = 0;
    }
    if (up_ms >= (uint64_t)p->o.stable_ms)
        w->crashes = 0;
    w->crashes++;
    delay = restart_delay_ms(p, w->crashes);
    w->due_us = time_mono_us() + delay * 1000;
    log_warn("supervisor: worker exited; restarting after backoff", LF_I("worker_id", id),
             LF_I("exit_code", code), LF_I("signal", sig), LF_I("uptime_ms", (long long)up_ms),
             LF_I("crashes_in_a_row", w->crashes), LF_I("restart_in_ms", (long long)delay));
}

static void reap(sup *p)
{
    int status, id;
    pid_t pid;

    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (id = 1; id <= p->o.workers; id++)
            if (p->s[id].pid == pid)
                break;
        if (id <= p->o.workers)
            on_exit_status(p, id, status);
    }
}

/* ---- the parent's wait ------------------------------------------------- */

static int running(const sup *p)
{
    int id, n = 0;

    for (id = 1; id <= p->o.workers; id++)
        n += p->s[id].pid > 0;
    return n;
}

/* SIGHUP: the caller's reload decides what changes (and logs it); each
 * running worker then gets its message on the control socket. A worker started
 * later is forked from the reloaded supervisor and needs none. */
static void reload(sup *p)
{
    const void *msg = NULL;
    size_t len = 0;
    char st[256], note[400];
    int id, sent = 0;

    if (p->stopping)
        return;
    if (!p->o.reload) {
        log_warn("supervisor: SIGHUP ignored (nothing to reload)");
        return;
    }
    if (p->notified_ready) {
        snprintf(note, sizeof(note), "RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading",
                 (unsigned long long)time_mono_us());
        notify(p, note);
    }
    log_info("supervisor: SIGHUP: reloading");
    if (p->o.reload(p->o.arg, &msg, &len) == 0 && msg && len) {
        for (id = 1; id <= p->o.workers; id++) {
            ssize_t n;
            if (p->s[id].pid <= 0 || p->s[id].ctl < 0)
                continue;
            do {
                n = send(p->s[id].ctl, msg, len, MSG_NOSIGNAL | MSG_DONTWAIT);
            } while (n < 0 && errno == EINTR);
            if (n == (ssize_t)len)
                sent++;
            else
                log_warn("supervisor: a worker did not take the reload (it keeps its settings "
                         "until restarted)",
                         LF_I("worker_id", id), LF_S("error", n < 0 ? strerror(errno) : "short"));
        }
        log_info("supervisor: reload sent to the workers", LF_I("workers", sent));
    }
    if (p->notified_ready) {
        status_text(p, st, sizeof(st));
        snprintf(p->status, sizeof(p->status), "%s", st);
        snprintf(note, sizeof(note), "READY=1\nSTATUS=%s", st);
        notify(p, note);
    }
}

static void read_signals(sup *p)
{
    struct signalfd_siginfo si;

    while (read(p->sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        if (si.ssi_signo == SIGCHLD)
            reap(p);
        else if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)
            begin_stop(p, si.ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT");
        else if (si.ssi_signo == SIGHUP)
            reload(p);
    }
}

static void read_ready(sup *p)
{
    worker_event evs[64];
    ssize_t n, i;

    while ((n = read(p->ready_rd, evs, sizeof(evs))) > 0) {
        for (i = 0; i < n / (ssize_t)sizeof(evs[0]); i++) {
            int id = evs[i].id;
            if (id < 1 || id > p->o.workers || p->s[id].pid <= 0)
                continue;
            if (evs[i].ev == EV_LEADING || evs[i].ev == EV_FOLLOWING) {
                p->s[id].leading = evs[i].ev == EV_LEADING;
                continue;
            }
            if (evs[i].ev != EV_READY || p->s[id].ready)
                continue;
            p->s[id].ready = 1;
            p->s[id].start_failures = 0;
            log_info("supervisor: worker ready", LF_I("worker_id", id), LF_I("pid", p->s[id].pid));
        }
    }
}

/* Milliseconds until the next thing to do by the clock (a restart, the stop
 * deadline); -1 when only an event can move things on. */
static int next_timeout_ms(const sup *p)
{
    uint64_t now = time_mono_us(), due = 0;
    int id;

    if (p->stopping)
        due = p->stop_deadline_us;
    else
        for (id = 1; id <= p->o.workers; id++)
            if (p->s[id].pid == 0 && p->s[id].due_us && (!due || p->s[id].due_us < due))
                due = p->s[id].due_us;
    if (p->wd_half_us && (!due || p->wd_next_us < due))
        due = p->wd_next_us;
    if (!due)
        return -1;
    return due > now ? (int)((due - now) / 1000) + 1 : 0;
}

static void do_due(sup *p)
{
    uint64_t now = time_mono_us();
    int id;

    if (p->stopping) {
        if (now >= p->stop_deadline_us && !p->killed && running(p)) {
            log_error("supervisor: workers did not stop in time; killing them",
                      LF_I("still_running", running(p)));
            p->killed = 1;
            for (id = 1; id <= p->o.workers; id++)
                if (p->s[id].pid > 0)
                    kill(p->s[id].pid, SIGKILL);
        }
        return;
    }
    for (id = 1; id <= p->o.workers; id++)
        if (p->s[id].pid == 0 && p->s[id].due_us && now >= p->s[id].due_us &&
            start_worker(p, id) != 0)
            p->s[id].due_us = now + (uint64_t)p->o.restart_cap_ms * 1000;
}

static int exit_status(const sup *p)
{
    int id;

    if (p->fatal)
        return p->fatal;
    if (p->killed)
        return 1;
    for (id = 1; id <= p->o.workers; id++) {
        int st = p->s[id].last_status;
        if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0))
            return 1;
    }
    return 0;
}

static int setup(sup *p)
{
    int fds[2];

    sigemptyset(&p->mask);
    sigaddset(&p->mask, SIGCHLD);
    sigaddset(&p->mask, SIGTERM);
    sigaddset(&p->mask, SIGINT);
    sigaddset(&p->mask, SIGHUP);
    if (sigprocmask(SIG_BLOCK, &p->mask, NULL) != 0)
        return -errno;
    p->sigfd = signalfd(-1, &p->mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (p->sigfd < 0)
        return -errno;
    if (pipe2(fds, O_CLOEXEC) != 0) {
        close(p->sigfd);
        return -errno;
    }
    p->ready_rd = fds[0];
    ready_wr = fds[1];
    fcntl(p->ready_rd, F_SETFL, O_NONBLOCK);
    return 0;
}

static void teardown(sup *p)
{
    int id;

    for (id = 1; id <= p->o.workers; id++)
        if (p->s[id].ctl >= 0)
            close(p->s[id].ctl);
    close(p->sigfd);
    close(p->ready_rd);
    close(ready_wr);
    ready_wr = -1;
    sigprocmask(SIG_UNBLOCK, &p->mask, NULL);
}

int supervisor_run(const supervisor_opts *o)
{
    struct pollfd pfd[2];
    sup *p;
    int id, rc;

    if (!o || !o->run || o->workers < 1 || o->workers > SETTINGS_MAX_WORKERS)
        return 2;
    p = calloc(1, sizeof(*p));
    if (!p)
        return 1;
    p->o = *o;
    if (!p->o.restart_base_ms)
        p->o.restart_base_ms = 500;
    if (!p->o.restart_cap_ms)
        p->o.restart_cap_ms = 30000;
    if (!p->o.stable_ms)
        p->o.stable_ms = 10000;
    if (!p->o.start_failures_max)
        p->o.start_failures_max = 3;
    if (!p->o.stop_timeout_ms)
        p->o.stop_timeout_ms = 30000;
    p->rng = backoff_seed();
    for (id = 0; id <= SETTINGS_MAX_WORKERS; id++)
        p->s[id].ctl = -1;
    p->wd_half_us = sd_watchdog_usec() / 2;
    p->wd_next_us = time_mono_us();
    rc = setup(p);
    if (rc) {
        log_error("supervisor: cannot set up signals", LF_S("error", strerror(-rc)));
        free(p);
        return 1;
    }
    log_info("supervisor: starting workers", LF_I("workers", o->workers), LF_I("pid", getpid()),
             LF_I("watchdog_ping_ms", (long long)(p->wd_half_us / 1000)));
    watchdog_tick(p);
    for (id = 1; id <= o->workers && !p->stopping; id++)
        if (start_worker(p, id) != 0) {
            p->fatal = 1;
            begin_stop(p, "fork failed");
        }
    while (!p->stopping || running(p) > 0) {
        pfd[0] = (struct pollfd){.fd = p->sigfd, .events = POLLIN};
        pfd[1] = (struct pollfd){.fd = p->ready_rd, .events = POLLIN};
        rc = poll(pfd, 2, next_timeout_ms(p));
        if (rc < 0 && errno != EINTR)
            break;
        if (rc > 0 && (pfd[1].revents & POLLIN))
            read_ready(p);
        if (rc > 0 && (pfd[0].revents & POLLIN))
            read_signals(p);
        do_due(p);
        notify_state(p);
        watchdog_tick(p);
    }
    rc = exit_status(p);
    log_info("supervisor: exiting", LF_I("exit_code", rc));
    teardown(p);
    free(p);
    return rc;
}
