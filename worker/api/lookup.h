/* The realtime lookup (SPEC §5 POST /v1/users/realtime-lookup, DESIGN §3
 * "Lookups"): a mobile is checked in this order, and each step can answer
 * without the next:
 *
 *   1. format (api_valid_mobile)                         -> 400, no I/O at all
 *   2. the enterprise exists and is enabled (PostgreSQL) -> 404
 *   3. negative cache orgsync:<env>:neg:<corp>:<hmac-sha256(key, mobile)> (Redis) -> 404;
 *      the key is ORGSYNC_CACHE_KEY, or else one random key per environment kept in
 *      Redis at orgsync:<env>:cache_key (made with SET NX by the first process that
 *      needs it, so every host shares it; re-read every 10 minutes). A plain hash of
 *      an 11-digit mobile would be reversed by trying every number.
 *   4. per-enterprise hourly budget shared by every process,
 *      orgsync:<env>:lookup_budget:<corp>:<yyyymmddhh UTC> (Redis INCR) -> 429
 *   5. upstream user/getuserid, then user/get (worker/wecom/wecom.h: paced, counted
 *      in the quota keys); an unknown mobile (46004, 60111) is negative-cached
 *      for LOOKUP_NEG_TTL_S -> 404
 *   6. the member is upserted into users and answered -> 200
 *
 * Raw mobiles never reach Redis or the logs (keyed hash or LF_MOBILE only). */
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

/* Redis key of the negative cache entry for (corp, mobile) under the HMAC key
 * key. 0, or -1 if too long or key is empty. */
int lookup_neg_key(const char *env, const char *corp_id, const char *mobile, const char *key,
                   char *out, size_t outlen);

/* The Redis key holding the environment's negative cache key when
 * ORGSYNC_CACHE_KEY is unset: orgsync:<env>:cache_key. 0, or -1 if too long. */
int lookup_cache_key_name(const char *env, char *out, size_t outlen);

#endif
