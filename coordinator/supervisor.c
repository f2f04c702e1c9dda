/* The process supervisor (see supervisor.h): fork, watch, restart, stop. */
#include "coordinator/supervisor.h"

#include "common/backoff.h"
#include "common/log.h"
#include "common/metrics_host.h"
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
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct slot {
    pid_t pid;          /* 0: not running */
    int ready;          /* reported ready since its last start */
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
} sup;

/* The write end of the ready pipe, kept in every child (and the parent, to
 * hand on to children it starts later). -1 outside a supervised worker. */
static int ready_wr = -1;

void supervisor_worker_ready(int worker_id)
{
    int32_t id = worker_id;
    ssize_t n;

    if (ready_wr < 0)
        return;
    /* 4 bytes are far below PIPE_BUF: the write is atomic, never interleaved
     * with another worker's. */
    do {
        n = write(ready_wr, &id, sizeof(id));
    } while (n < 0 && errno == EINTR);
}

/* ---- children --------------------------------------------------------- */

static void child_main(sup *p, int id, pid_t parent)
{
    char idtext[16];
    sigset_t none;
    int rc;

    /* Parent's descriptors and signal state are not the worker's business. */
    close(p->sigfd);
    close(p->ready_rd);
    signal(SIGCHLD, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
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

    fflush(NULL); /* nothing buffered may be written twice */
    pid = fork();
    if (pid < 0) {
        log_error("supervisor: fork failed", LF_I("worker_id", id), LF_S("error", strerror(errno)));
        return -errno;
    }
    if (pid == 0)
        child_main(p, id, parent);
    w->pid = pid;
    w->ready = 0;
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

    if (p->stopping)
        return;
    p->stopping = 1;
    p->stop_deadline_us = time_mono_us() + (uint64_t)p->o.stop_timeout_ms * 1000;
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
    w->last_status = status;
    metrics_host_exited(id); /* its gauges leave the host's /metrics; counters stay */
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

static void read_signals(sup *p)
{
    struct signalfd_siginfo si;

    while (read(p->sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        if (si.ssi_signo == SIGCHLD)
            reap(p);
        else if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)
            begin_stop(p, si.ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT");
    }
}

static void read_ready(sup *p)
{
    int32_t ids[64];
    ssize_t n, i;

    while ((n = read(p->ready_rd, ids, sizeof(ids))) > 0) {
        for (i = 0; i < n / (ssize_t)sizeof(ids[0]); i++) {
            int id = ids[i];
            if (id < 1 || id > p->o.workers || p->s[id].pid <= 0 || p->s[id].ready)
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
    rc = setup(p);
    if (rc) {
        log_error("supervisor: cannot set up signals", LF_S("error", strerror(-rc)));
        free(p);
        return 1;
    }
    log_info("supervisor: starting workers", LF_I("workers", o->workers), LF_I("pid", getpid()));
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
    }
    rc = exit_status(p);
    log_info("supervisor: exiting", LF_I("exit_code", rc));
    teardown(p);
    free(p);
    return rc;
}
