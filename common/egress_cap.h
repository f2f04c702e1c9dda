/* The per-egress cap: upstream calls leaving from one public IP, counted in Redis
 * across every process and host that shares it.
 *
 *   egress_cap *e = egress_cap_new(redis, "host-a", 20000, 600000);
 *   egress_cap_admit(e, on_admit, req);     // on_admit(req, EGRESS_ADMITTED, 0, n60, n3600)
 *   ...
 *   egress_cap_free(e);                     // pending callbacks get -ECANCELED now
 *
 * WeCom limits every source IP to 20,000 calls a minute and 600,000 an hour (over
 * them it answers errcode 45009 and blocks the IP for 60 s or 60 min), whatever
 * enterprise or process the calls are for. Every process with the same egress id
 * shares one budget, kept under keys that no ORGSYNC_ENV namespaces (staging and
 * production on one host share its IP):
 *
 *   orgsync:egress:<id>:s   hash: second (unix s) -> calls admitted in it, PEXPIRE 62 s
 *   orgsync:egress:<id>:m   hash: minute (unix s / 60) -> calls admitted in it, 62 min
 *
 * One admission is one script call (EVALSHA, EVAL after a NOSCRIPT) timed by Redis's
 * clock (TIME), so hosts' clocks do not matter. A window of 60,000 ms ending now
 * overlaps at most the 61 seconds cur-60..cur; the script sums them (and any bucket
 * stamped later than now, should Redis's clock ever step back), drops older fields,
 * and admits and counts the call only if that sum is below per_min and the same sum
 * over the minutes cur-60..cur is below per_hour. Whatever the admission times, no
 * window of 60,000 ms (Redis's clock) then holds more than per_min admitted calls and
 * no window of 3,600,000 ms more than per_hour: the last admission in any window saw
 * every earlier one of that window in the buckets it summed.
 *
 * The wait: second bucket b stops being counted at (b + 61) * 1000 ms, minute bucket
 * b at (b + 61) * 60000 ms. A refused call waits until enough of the oldest buckets
 * have left that the sum is below the cap (normally the oldest bucket alone), the
 * later of the two windows' answers: >= 1 ms. It is a time after which a call would
 * be admitted if nobody else took the room first; the caller then asks again.
 *
 * What is counted is the admission (Redis's clock), not the upstream's arrival: a
 * caller should send at once after being admitted. Every call admitted is counted,
 * whether or not it is then sent. */
#ifndef ORGSYNC_EGRESS_CAP_H
#define ORGSYNC_EGRESS_CAP_H

#include <stddef.h>

#include "common/redis.h"

/* The upstream's published per-IP limits: settings may lower them, never raise. */
#define EGRESS_UPSTREAM_PER_MIN 20000
#define EGRESS_UPSTREAM_PER_HOUR 600000
#define EGRESS_ID_MAX 64

/* Callback statuses (errors are negative errno values). */
#define EGRESS_ADMITTED 0
#define EGRESS_WAIT 1

typedef struct egress_cap egress_cap;

/* status: EGRESS_ADMITTED (counted; send now), EGRESS_WAIT (not counted; ask again
 * after wait_ms >= 1), or a negative errno: -ETIMEDOUT (Redis did not answer in
 * time), -ENOTCONN (Redis not connected or the connection dropped), -ECANCELED (the
 * cap or the Redis client is closing), -EIO (an error reply or an unexpected
 * answer). On an error nothing is known to be counted and wait_ms is 0; what to do
 * then (wait, or send uncounted) is the caller's policy. in_minute and in_hour are
 * the calls counted in the windows ending now, this one included when admitted (0 on
 * an error). Called exactly once per accepted admission, never from inside
 * egress_cap_admit. */
typedef void (*egress_cap_cb)(void *arg, int status, long long wait_ms, long long in_minute,
                              long long in_hour);

/* 1 if id is 1-64 characters of [A-Za-z0-9._:-], else 0. */
int egress_cap_id_valid(const char *id);

/* The default egress id from a host name: characters outside the id's set become
 * '_', cut at 64; "localhost" if host is empty or NULL. Pure. */
void egress_cap_id_from_host(const char *host, char *out, size_t outlen);

/* The two keys of an egress id (out at least sizeof "orgsync:egress:" + 64 + 3). 0, or
 * -EINVAL on an invalid id or a short buffer. */
int egress_cap_keys(const char *id, char *sec_key, char *min_key, size_t keylen);

/* rc is borrowed and must outlive the cap (admissions still pending when the cap is
 * freed need nothing more: see egress_cap_free). id is copied. Sets the
 * orgsync_egress_limit gauges. NULL on an invalid id, a cap below 1, or out of
 * memory. */
egress_cap *egress_cap_new(redis_client *rc, const char *egress_id, int per_min, int per_hour);

/* Asks for one call. 0 when cb will be called (exactly once, later), or a negative
 * errno when it will not (-EINVAL, -ENOMEM, -ECANCELED while the cap is being
 * freed). */
int egress_cap_admit(egress_cap *e, egress_cap_cb cb, void *arg);

/* Tests only: the same with now_ms in place of Redis's clock, so the bucket
 * arithmetic can be checked at chosen instants. Production code never calls it. */
int egress_cap_admit_at(egress_cap *e, long long now_ms, egress_cap_cb cb, void *arg);

/* Every admission still pending gets its callback now, with -ECANCELED (it must not
 * use e); its Redis reply, when it comes, is dropped (a call admitted meanwhile
 * stays counted). Then e is freed. The Redis client may be closed afterwards; NULL
 * is a no-op. */
void egress_cap_free(egress_cap *e);

/* The script's answer read into numbers (exposed for tests): {status, wait_ms,
 * in_minute, in_hour}, four integers, status 0 or 1, a wait >= 1 only with status
 * 1. 0, or -EIO for anything else. */
typedef struct egress_answer {
    int status;
    long long wait_ms, in_minute, in_hour;
} egress_answer;
int egress_cap_parse(const redisReply *reply, egress_answer *out);

#endif
