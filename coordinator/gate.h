/* The gate (SPEC §2, DESIGN §3 "An explainable gate"): may this worker compete
 * for the leader lock, and if not, every reason why, in words an operator can
 * act on. Logged when it changes and answered by GET /v1/leader.
 *
 * A worker competes only when ALL hold:
 *   - ORGSYNC_SCHEDULE=on;
 *   - its ORGSYNC_WORKER_ID is listed in ORGSYNC_SCHEDULER_WORKERS;
 *   - it is not read-only: ORGSYNC_READ_ONLY=on never competes; with auto, the
 *     database role must be able to write every table a leader writes (and read
 *     enterprises.corp_secret), on a primary, which gate_probe_read_only() asks
 *     PostgreSQL; until the answer comes the worker does not compete;
 *   - its code version is not older than the newest among live candidates of
 *     its environment (coordinator/candidacy.h fills that in);
 *   - the upstream did not refuse its egress (ORGSYNC_EGRESS_ID) at its last
 *     attempt: an IP that is not trusted (60020), or that may not use the
 *     contact-sync secret's legacy calls (48009), cannot sync, so leadership
 *     must not move to it (candidacy.h fills that in too).
 * The environment is not a condition (every environment has its own lock) but
 * it is part of every answer, so nobody wonders which lock a worker is after. */
#ifndef ORGSYNC_GATE_H
#define ORGSYNC_GATE_H

#include "common/pg.h"
#include "common/settings.h"

#include <stddef.h>

enum { GATE_UNKNOWN = -1, GATE_NO = 0, GATE_YES = 1 };

typedef struct gate {
    char env[64];
    int schedule_on;   /* ORGSYNC_SCHEDULE */
    int worker_listed; /* worker id in ORGSYNC_SCHEDULER_WORKERS */
    int worker_id;
    int read_only_setting;    /* settings_read_only */
    int role_can_write;       /* GATE_UNKNOWN until probed (auto only) */
    char probe_error[128];    /* why the probe has not answered, "" if none */
    int version_older;        /* GATE_YES when a newer live candidate exists */
    char version[64];         /* ours */
    char newest_version[64];  /* newest among live candidates, "" unknown */
    char egress_id[65];       /* ORGSYNC_EGRESS_ID */
    char egress_refused[256]; /* the upstream's refusal at the egress's last attempt, "" none */
} gate;

/* The static parts, from the settings; role and version unknown. */
void gate_init(gate *g, const settings *s);

/* 1 when the settings alone allow competing (schedule on, worker listed, not
 * ORGSYNC_READ_ONLY=on): only then is a scheduler started at all. */
int gate_may_schedule(const gate *g);

/* 1 when read-only: ORGSYNC_READ_ONLY=on, or auto and the role cannot write.
 * GATE_UNKNOWN while auto has not been probed. */
int gate_read_only(const gate *g);

/* 1 when the worker competes now. */
int gate_eligible(const gate *g);

/* Every reason it does not compete, "; "-separated ("" when eligible), e.g.
 * "schedule off (ORGSYNC_SCHEDULE=off); read-only (the database role cannot
 * write the directory tables)". Always NUL-terminated; returns the length it
 * wanted (like snprintf). */
size_t gate_why_not(const gate *g, char *out, size_t outlen);

/* Compares code versions "1.2.3", "1.10.0", "1.2.3-rc1" (numeric parts as
 * numbers; a pre-release suffix sorts before the plain version; anything else
 * byte-wise). <0, 0, >0 like strcmp. */
int gate_version_cmp(const char *a, const char *b);

/* Asks PostgreSQL whether the connected role may do what a leader does: write
 * departments, users, sync_runs, sync_progress, sync_checkpoints and
 * leader_fence, read enterprises.corp_secret, on a server that is not a hot
 * standby. can_write is GATE_YES or GATE_NO when err is NULL. Returns 0 (cb is
 * called once, from the loop) or a negative PG_E* code. */
typedef void (*gate_probe_cb)(void *arg, int can_write, const char *err);
int gate_probe_read_only(pg_pool *pg, gate_probe_cb cb, void *arg);

#endif
