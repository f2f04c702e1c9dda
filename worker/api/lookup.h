/* The realtime lookup (SPEC §5 POST /v1/users/realtime-lookup, DESIGN §3
 * "Lookups"): a mobile is checked in this order, and each step can answer
 * without the next:
 *
 *   1. format (api_valid_mobile)                         -> 400, no I/O at all
 *   2. the enterprise exists and is enabled (PostgreSQL) -> 404
 *   3. negative cache orgsync:<env>:neg:<corp>:<sha256(mobile)> (Redis) -> 404
 *   4. per-enterprise hourly budget shared by every process,
 *      orgsync:<env>:lookup_budget:<corp>:<yyyymmddhh UTC> (Redis INCR) -> 429
 *   5. upstream user/getuserid, then user/get (worker/wecom/wecom.h: paced, counted
 *      in the quota keys); an unknown mobile (46004, 60111) is negative-cached
 *      for LOOKUP_NEG_TTL_S -> 404
 *   6. the member is upserted into users and answered -> 200
 *
 * Raw mobiles never reach Redis or the logs (hash or LF_MOBILE only). */
#ifndef ORGSYNC_LOOKUP_H
#define ORGSYNC_LOOKUP_H

#include <uv.h>

#include "common/pg.h"
#include "common/redis.h"
#include "common/settings.h"

typedef struct lookup lookup;
struct wecom;

#define LOOKUP_NEG_TTL_S 86400

typedef struct lookup_result {
    int status;          /* HTTP status to answer */
    const char *code;    /* error code when status != 200 */
    const char *message; /* error message when status != 200 */
    const char *json;    /* the member object when status == 200 */
    int retry_after_s;   /* > 0 with 429: seconds until the budget window ends */
} lookup_result;

typedef void (*lookup_cb)(void *arg, const lookup_result *res);

/* wecom may be NULL: lookups then answer 503 after the local checks. */
lookup *lookup_new(uv_loop_t *loop, const settings *s, pg_pool *pg, redis_client *redis,
                   struct wecom *wecom);
/* Must not be called while a lookup is under way. NULL is a no-op. */
void lookup_free(lookup *lk);

/* 0 when cb will be called once (never from inside this call), or a negative
 * errno (-EINVAL: bad corp or mobile format, -EAGAIN: PostgreSQL not connected,
 * -ENOMEM, or the pool's PG_E*). */
int lookup_realtime(lookup *lk, const char *corp_id, const char *mobile, lookup_cb cb, void *arg);

/* Redis key of the negative cache entry for (corp, mobile). 0, or -1 if too long. */
int lookup_neg_key(const char *env, const char *corp_id, const char *mobile, char *out,
                   size_t outlen);

#endif
