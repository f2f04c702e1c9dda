/* The leader lock (SPEC §4, DESIGN §3 "Leader lock and fencing").
 *
 * Key `orgsync:<env>:lock:<job>` holds `<instance>|<token>`, where the token comes
 * from `INCR orgsync:<env>:fence:<job>`. Acquiring is one Lua script (EVALSHA,
 * EVAL on NOSCRIPT): if the key is absent, INCR the fence counter and
 * `SET key value NX PX ttl`; if it is present, nothing is incremented, so waiting
 * contenders do not burn tokens. Renewal (every ttl/3) is compare-and-pexpire and
 * release is compare-and-delete: neither ever touches a successor's lock.
 *
 *   lock *l = lock_new(loop, redis, &(lock_opts){.env = "prod", .job = "directory-sync",
 *                                                .instance = "h1:42", .ttl_ms = 15000});
 *   lock_acquire(l, on_acquired, arg);   // one attempt; retry yourself if busy
 *   ... lock_lease_valid(l) before every upstream request and every write ...
 *   lock_release(l, on_released, arg);
 *   lock_close(l, on_closed, arg);
 *
 * The lease. Redis keeps the key for ttl from when it ran the SET (or PEXPIRE);
 * we cannot know when that was, only that it was after we sent the command. So
 * a holder trusts its lock until (monotonic time when it SENT the acquire, or
 * the last renewal that was confirmed) + ttl - margin, margin = max(ttl/10,
 * 500 ms) by default, and lock_lease_valid() answers from the monotonic clock
 * alone, with no I/O. When that deadline passes without a confirmed renewal, or
 * a renewal's reply says the value is no longer ours, the lock is lost: renewal
 * stops and the owner's on_lost callback runs at once (from a loop callback).
 * Safety does not rest on this alone: every write is also fenced in PostgreSQL
 * (coordinator/fence.h).
 *
 * Everything runs on the caller's loop; nothing blocks. All callbacks are called
 * from loop callbacks, never from inside the call that started them. */
#ifndef ORGSYNC_LOCK_H
#define ORGSYNC_LOCK_H

#include "common/redis.h"

#include <stdint.h>
#include <uv.h>

typedef struct lock lock;

/* Negative status codes (0 is success). */
#define LOCK_EBUSY (-16)  /* another instance holds the lock */
#define LOCK_EREDIS (-5)  /* Redis failed (transport or error reply): try again later */
#define LOCK_ESTATE (-22) /* wrong state for the call (already held, not held, closing) */
#define LOCK_ENOMEM (-12)

typedef struct lock_opts {
    const char *env;      /* ORGSYNC_ENV */
    const char *job;      /* "directory-sync" */
    const char *instance; /* ORGSYNC_INSTANCE; must not contain '|' */
    int ttl_ms;           /* ORGSYNC_LOCK_TTL_MS; 0 = 15000 */
    int margin_ms;        /* 0 = max(ttl/10, 500); must stay below ttl/3 for renewals to help */
    /* Called once when a held lock is lost (why: "lease expired" or "lock taken
     * over"); not called after lock_release or lock_close. May be NULL. */
    void (*on_lost)(void *arg, lock *l, const char *why);
    void *arg;
} lock_opts;

/* Strings are copied. NULL on bad options or out of memory. */
lock *lock_new(uv_loop_t *loop, redis_client *redis, const lock_opts *opts);

/* status 0: acquired, token is ours (lease starts when the attempt was sent).
 * LOCK_EBUSY: someone holds it; holder is "<instance>|<token>" (or "" if the
 * holder vanished meanwhile) and holder_pttl_ms its remaining ttl (-1 unknown),
 * so a waiter can sleep about that long. LOCK_EREDIS: try again later. */
typedef void (*lock_acquire_cb)(void *arg, lock *l, int status, long long token, const char *holder,
                                long long holder_pttl_ms);
/* One attempt. 0 when cb will be called once; LOCK_ESTATE if held, an attempt is
 * under way or closing; LOCK_ENOMEM. */
int lock_acquire(lock *l, lock_acquire_cb cb, void *arg);

/* 1 while the lock is held and the lease deadline has not passed. Pure clock
 * read: call it as often as you like. */
int lock_lease_valid(const lock *l);
/* Milliseconds of lease left (0 when not held or expired). */
long long lock_lease_left_ms(const lock *l);
/* The held token, or 0 when not held. */
long long lock_token(const lock *l);
int lock_held(const lock *l);

/* Compare-and-delete: deletes the key only if it still holds our value (the
 * one of the current holding, or of the last one if the lock was lost since:
 * after a lease expiry the key may still be ours, and deleting it lets a
 * successor in without waiting for the ttl). Stops renewal at once (the lease
 * is no longer trusted after this call). cb status: 1 deleted, 0 it was no
 * longer ours (expired or a successor's: left alone), LOCK_EREDIS (it will
 * expire by itself). Returns 0 (cb will be called) or LOCK_ESTATE when there is
 * no value to release (never held, already released or forgotten, an attempt
 * under way) or LOCK_ENOMEM; then cb is not called. */
typedef void (*lock_release_cb)(void *arg, lock *l, int status);
int lock_release(lock *l, lock_release_cb cb, void *arg);

/* Gives up the lock locally without touching Redis (after loss, or when the
 * caller knows the key is gone): renewal stops, the lease is no longer trusted. */
void lock_forget(lock *l);

/* Stops everything (does NOT release: call lock_release first if you hold it
 * and want the key gone), detaches the Redis operations still in flight (their
 * callbacks are NOT called, and their late replies are ignored: closing never
 * waits on a stalled Redis), closes the timers, then calls done(arg) from a
 * close callback and frees l. done may be NULL. The redis_client must outlive
 * the replies it still owes (redis_close fails them first). */
void lock_close(lock *l, void (*done)(void *arg), void *arg);

/* Statistics for GET /v1/leader and /metrics. */
typedef struct lock_stats {
    int held;                     /* 1 while a lease is trusted */
    long long token;              /* held token, 0 if none */
    long long lease_left_ms;      /* 0 if not held */
    double last_renew_latency_ms; /* round trip of the last confirmed renewal (or
                                     acquisition), -1 if none yet */
    unsigned long changes;        /* leadership changes seen: acquisitions + ends
                                     (release, loss) */
    unsigned long acquisitions, attempts, renewals, renew_failures, losses;
} lock_stats;
void lock_stats_get(const lock *l, lock_stats *out);
/* The same summed over every lock object this process has had (held, token,
 * lease and latency are those of the lock that acted last): what a worker
 * answers for itself, whoever created its locks. */
void lock_process_stats(lock_stats *out);

/* Key names: "orgsync:<env>:lock:<job>" and "orgsync:<env>:fence:<job>".
 * 0, or -1 if it does not fit. */
int lock_key(const char *env, const char *job, char *out, size_t outlen);
int lock_fence_key(const char *env, const char *job, char *out, size_t outlen);

/* Parses "<instance>|<token>" (the instance may itself contain anything but '|'
 * at the end: the LAST '|' separates). 0, or -1 if malformed. */
int lock_value_parse(const char *value, char *instance, size_t instlen, long long *token);

/* Reads who holds the lock now (GET + PTTL, one script): for GET /v1/leader.
 * err NULL on success; instance NULL when nobody holds it. pttl_ms is the key's
 * remaining time (-1 if none). See leader_lookup() for the full answer with
 * "since". Returns 0 (cb called once) or a negative errno. */
typedef void (*lock_holder_cb)(void *arg, const char *instance, long long token, long long pttl_ms,
                               const char *err);
int lock_holder_get(redis_client *redis, const char *env, const char *job, lock_holder_cb cb,
                    void *arg);

#endif
