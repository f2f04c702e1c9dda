/* Fair candidacy (DESIGN §3 "Fair candidacy", SPEC §4 candidates:<job>).
 *
 * The seed incident: the host nearest to Redis always won SET NX, so leadership
 * never moved. Here every competing worker heartbeats into the hash
 * `orgsync:<env>:candidates:<job>`: field = instance, value =
 * "<code version>|<last seen ms>|<last led ms>", times from Redis's own clock
 * (TIME inside the script), so hosts with skewed clocks still agree. At a fire,
 * each candidate reads the live entries (seen within live_ms) and ranks itself:
 *
 *   - only candidates with the newest code version among the live ones compete
 *     (an older one refuses, and says so: candidacy_view.version_ok 0);
 *   - the competitors are ordered by when they last led, least recent first
 *     (never = 0), ties by instance name; rank = our place in that order;
 *   - rank r waits r * grace_ms before its one lock attempt.
 *
 * So the least-recently-led live candidate tries first and wins unless it is
 * gone; a dead candidate costs one grace delay until it drops out of the live
 * window. Whoever actually starts a run calls candidacy_mark_led(), which moves
 * it to the back of the order for the next fire. Entries unseen for prune_ms are
 * deleted; a worker that shuts down cleanly removes its own entry at once.
 *
 * Everything runs on the caller's loop; callbacks come from loop callbacks. */
#ifndef ORGSYNC_CANDIDACY_H
#define ORGSYNC_CANDIDACY_H

#include "common/redis.h"

#include <stddef.h>
#include <uv.h>

typedef struct candidacy candidacy;

#define CANDIDACY_MAX 256

/* The defaults of heartbeat_ms and live_ms below, which `orgsync serve` uses:
 * also the window in which GET /v1/candidates calls an entry live. */
#define CANDIDACY_HEARTBEAT_MS 1000
#define CANDIDACY_LIVE_MS (3 * CANDIDACY_HEARTBEAT_MS + 500)

typedef struct candidacy_opts {
    const char *env;
    const char *job;
    const char *instance;
    const char *code_version;
    const char *egress_id; /* ORGSYNC_EGRESS_ID: whose refusal (egress_refused) to read */
    int heartbeat_ms;      /* 0: 1000 */
    int live_ms;           /* 0: 3 * heartbeat + 500 */
    int grace_ms;          /* per rank; 0: 200 */
    int prune_ms;          /* 0: 600000 (10 min) */
} candidacy_opts;

/* One live candidate as read from Redis. */
typedef struct candidacy_entry {
    char instance[128];
    char version[64];
    long long led_ms; /* 0: never led */
} candidacy_entry;

/* What a candidate concluded about itself. */
typedef struct candidacy_view {
    int version_ok;          /* 0: a live candidate runs newer code: do not compete */
    char newest_version[64]; /* newest among the live candidates */
    int rank;                /* 0-based among the competitors (-1 if not competing) */
    int competitors;         /* live candidates with the newest version */
    int live;                /* live candidates of any version */
    long long delay_ms;      /* rank * grace_ms */
    /* Why the upstream refused our egress at its last attempt (60020, 48009),
     * "" if it did not: orgsync:<env>:egress_refused:<egress id>, set by a
     * leader that met the refusal, for ORGSYNC_EGRESS_REFUSED_TTL. */
    char egress_refused[256];
} candidacy_view;

/* Pure: ranks self among entries (which must include self). 0, or -1 when self
 * is not among them (then view->rank is -1). */
int candidacy_rank_compute(const candidacy_entry *e, int n, const char *self,
                           const char *self_version, int grace_ms, candidacy_view *view);

/* Strings are copied. Starts heartbeating at once. NULL on bad options. */
candidacy *candidacy_new(uv_loop_t *loop, redis_client *redis, const candidacy_opts *opts);

/* Heartbeats now and ranks us among the live candidates. err NULL on success
 * (view valid during the callback). 0 (cb called once) or a negative errno. */
typedef void (*candidacy_rank_cb)(void *arg, const candidacy_view *view, const char *err);
int candidacy_rank(candidacy *c, candidacy_rank_cb cb, void *arg);

/* Records that we lead now (best effort, no callback). */
void candidacy_mark_led(candidacy *c);

/* The last view any heartbeat or rank produced (version verdict for the gate).
 * 0 and *out filled, or -1 before the first answer. */
int candidacy_last_view(const candidacy *c, candidacy_view *out);

/* Stops heartbeating, removes our entry (best effort, unless leave is 0), and
 * frees c once its Redis calls have come back; done(arg) (may be NULL) runs
 * then, from a loop callback. No rank callback is called after this. The
 * redis_client must stay open until done (redis_close fails what is pending). */
void candidacy_close(candidacy *c, int leave, void (*done)(void *arg), void *arg);

/* "orgsync:<env>:egress_refused:<egress id>". 0, or -1 if it does not fit. */
int candidacy_egress_key(const char *env, const char *egress_id, char *out, size_t outlen);

/* "orgsync:<env>:candidates:<job>". 0, or -1 if it does not fit. */
int candidacy_key(const char *env, const char *job, char *out, size_t outlen);

#endif
