/* The realtime lookup: a small state machine per request, one step per async
 * answer (see lookup.h for the order and why it is that order). */
#include "worker/api/lookup.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <json-c/json.h>

#include "common/buf.h"
#include "common/digests_sql.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/metrics.h"
#include "worker/api/api_shared.h"
#include "worker/wecom/wecom.h"

struct lookup {
    uv_loop_t *loop;
    const settings *s;
    pg_pool *pg;
    redis_client *redis;
    wecom *wc;
    /* The negative cache's HMAC key: ORGSYNC_CACHE_KEY, or the environment's
     * shared key from Redis (fetched on first use, again every
     * LOOKUP_KEY_REFRESH_MS in case Redis lost it and a new one was made). */
    char key[256];
    int key_fixed;        /* from the setting: never fetched */
    uint64_t key_read_ms; /* uv_now when fetched from Redis; 0 never */
};

#define LOOKUP_KEY_REFRESH_MS (10 * 60 * 1000)

typedef struct lk_req {
    lookup *lk;
    lookup_cb cb;
    void *arg;
    char corp[72];
    char mobile[24];
    char userid[72];
    char neg_key[256];
    int registered; /* the corp's secret was loaded from PostgreSQL once already */
} lk_req;

/* INCR the hour's counter, giving it a lifetime on first use, in one round trip
 * (a separate EXPIRE could be lost and leave a counter that never resets). */
static redis_script budget_script = {
    .src = "local n = redis.call('INCR', KEYS[1]) "
           "if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end return n",
    .sha = {0}};

/* The environment's key: made once by whoever asks first (SET NX), read by all. */
static redis_script key_script = {.src = "redis.call('SET', KEYS[1], ARGV[1], 'NX') "
                                         "return redis.call('GET', KEYS[1])",
                                  .sha = {0}};

static void step_key(lk_req *q);
static void step_neg_check(lk_req *q);
static void step_budget(lk_req *q);
static void step_getuserid(lk_req *q);

lookup *lookup_new(uv_loop_t *loop, const settings *s, pg_pool *pg, redis_client *redis,
                   struct wecom *wc)
{
    lookup *lk = calloc(1, sizeof(*lk));
    if (!lk)
        return NULL;
    lk->loop = loop;
    lk->s = s;
    lk->pg = pg;
    lk->redis = redis;
    lk->wc = wc;
    if (s->cache_key[0]) {
        snprintf(lk->key, sizeof lk->key, "%s", s->cache_key);
        lk->key_fixed = 1;
    }
    return lk;
}

void lookup_free(lookup *lk)
{
    if (lk)
        explicit_bzero(lk->key, sizeof lk->key);
    free(lk);
}

int lookup_neg_key(const char *env, const char *corp_id, const char *mobile, const char *key,
                   char *out, size_t outlen)
{
    char h[65];
    if (!key || !*key)
        return -1;
    hash_hmac_sha256_hex(key, strlen(key), mobile, strlen(mobile), h);
    if (!h[0])
        return -1;
    int n = snprintf(out, outlen, "orgsync:%s:neg:%s:%s", env, corp_id, h);
    return n < 0 || (size_t)n >= outlen ? -1 : 0;
}

int lookup_cache_key_name(const char *env, char *out, size_t outlen)
{
    int n = snprintf(out, outlen, "orgsync:%s:cache_key", env);
    return n < 0 || (size_t)n >= outlen ? -1 : 0;
}

static void outcome(const char *what)
{
    char labels[64];
    snprintf(labels, sizeof labels, "outcome=\"%s\"", what);
    metrics_counter_add(M_LOOKUPS, labels, 1);
}

/* Answers and frees q. */
static void finish(lk_req *q, int status, const char *code, const char *message, const char *json,
                   int retry_after)
{
    lookup_result r = {status, code, message, json, retry_after};
    outcome(status == 200 ? "found" : code);
    q->cb(q->arg, &r);
    free(q);
}

/* ---- 2. the enterprise ---- */

static void on_enterprise(void *arg, PGresult *res, const char *err)
{
    lk_req *q = arg;
    if (err) {
        api_pg_failed(NULL, "lookup enterprise", err);
        finish(q, 503, "database_unavailable", "could not query PostgreSQL", NULL, 0);
        return;
    }
    if (PQntuples(res) == 0 || strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
        finish(q, 404, "unknown_enterprise", "no enabled enterprise with that corp_id", NULL, 0);
        return;
    }
    step_key(q);
}

/* ---- 3a. the negative cache's key ---- */

static void neg_key_ready(lk_req *q)
{
    if (lookup_neg_key(q->lk->s->env, q->corp, q->mobile, q->lk->key, q->neg_key,
                       sizeof q->neg_key)) {
        finish(q, 503, "unavailable", "could not make the negative cache key", NULL, 0);
        return;
    }
    step_neg_check(q);
}

static void on_key(void *arg, redisReply *reply, const char *err)
{
    lk_req *q = arg;
    lookup *lk = q->lk;
    if (err || !reply || reply->type != REDIS_REPLY_STRING || reply->len < 16 ||
        reply->len >= sizeof lk->key || memchr(reply->str, '\0', reply->len)) {
        metrics_counter_add(M_REDIS_ERRORS, "source=\"api\"", 1);
        log_warn("lookup: cannot read the negative cache key",
                 LF_S("err", err ? err : "missing, or not 16 to 255 bytes"));
        finish(q, 503, "redis_unavailable", "could not query Redis", NULL, 0);
        return;
    }
    memcpy(lk->key, reply->str, reply->len);
    lk->key[reply->len] = '\0';
    lk->key_read_ms = uv_now(lk->loop) ? uv_now(lk->loop) : 1;
    neg_key_ready(q);
}

static void step_key(lk_req *q)
{
    lookup *lk = q->lk;
    unsigned char raw[32];
    char name[128], fresh[65];
    static const char hex[] = "0123456789abcdef";

    if (lk->key_fixed ||
        (lk->key_read_ms && uv_now(lk->loop) - lk->key_read_ms < LOOKUP_KEY_REFRESH_MS)) {
        neg_key_ready(q);
        return;
    }
    if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw ||
        lookup_cache_key_name(lk->s->env, name, sizeof name)) {
        finish(q, 503, "unavailable", "could not make the negative cache key", NULL, 0);
        return;
    }
    for (size_t i = 0; i < sizeof raw; i++) {
        fresh[2 * i] = hex[raw[i] >> 4];
        fresh[2 * i + 1] = hex[raw[i] & 15];
    }
    fresh[64] = '\0';
    const char *argv[] = {name, fresh};
    int rc = redis_eval(lk->redis, &key_script, 1, 2, argv, on_key, q);
    explicit_bzero(raw, sizeof raw);
    explicit_bzero(fresh, sizeof fresh);
    if (rc)
        finish(q, 503, "redis_unavailable", "could not query Redis", NULL, 0);
}

/* ---- 3. the negative cache ---- */

static void on_neg(void *arg, redisReply *reply, const char *err)
{
    lk_req *q = arg;
    if (err || !reply || reply->type != REDIS_REPLY_INTEGER) {
        metrics_counter_add(M_REDIS_ERRORS, "source=\"api\"", 1);
        log_warn("lookup: negative cache check failed", LF_S("err", err ? err : "bad reply"));
        finish(q, 503, "redis_unavailable", "could not query Redis", NULL, 0);
        return;
    }
    if (reply->integer > 0) {
        finish(q, 404, "unknown_mobile", "the upstream does not know this mobile (cached)", NULL,
               0);
        return;
    }
    step_budget(q);
}

static void step_neg_check(lk_req *q)
{
    if (redis_cmd(q->lk->redis, on_neg, q, "EXISTS %s", q->neg_key))
        finish(q, 503, "redis_unavailable", "could not query Redis", NULL, 0);
}

/* ---- 4. the budget ---- */

static void on_budget(void *arg, redisReply *reply, const char *err)
{
    lk_req *q = arg;
    if (err || !reply || reply->type != REDIS_REPLY_INTEGER) {
        metrics_counter_add(M_REDIS_ERRORS, "source=\"api\"", 1);
        log_warn("lookup: budget check failed", LF_S("err", err ? err : "bad reply"));
        finish(q, 503, "redis_unavailable", "could not query Redis", NULL, 0);
        return;
    }
    if (reply->integer > q->lk->s->lookup_budget) {
        time_t now = time(NULL);
        finish(q, 429, "budget_exhausted",
               "this enterprise's realtime lookup budget for the hour is used up", NULL,
               (int)(3600 - now % 3600));
        return;
    }
    step_getuserid(q);
}

static void step_budget(lk_req *q)
{
    char key[192], hour[16];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(hour, sizeof hour, "%Y%m%d%H", &tm);
    snprintf(key, sizeof key, "orgsync:%s:lookup_budget:%s:%s", q->lk->s->env, q->corp, hour);
    const char *argv[] = {key, "3600"};
    if (redis_eval(q->lk->redis, &budget_script, 1, 2, argv, on_budget, q))
        finish(q, 503, "redis_unavailable", "could not query Redis", NULL, 0);
}

/* ---- 5. upstream ---- */

static void on_stored(void *arg, PGresult *res, const char *err)
{
    lk_req *q = arg;
    if (err || PQntuples(res) != 1) {
        api_pg_failed(NULL, "lookup store", err ? err : "no row");
        finish(q, 503, "database_unavailable", "could not store the member in PostgreSQL", NULL, 0);
        return;
    }
    log_info("lookup: member found upstream", LF_S("corp_id", q->corp), LF_S("userid", q->userid),
             LF_MOBILE("mobile", q->mobile));
    finish(q, 200, NULL, NULL, PQgetvalue(res, 0, 0), 0);
}

static const char *jstr(json_object *o, const char *key)
{
    json_object *v;
    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    return json_object_get_string(v);
}

static int jint(json_object *o, const char *key, char *out, size_t outlen)
{
    json_object *v;
    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int))
        return 0;
    snprintf(out, outlen, "%lld", (long long)json_object_get_int64(v));
    return 1;
}

#define STORE_SQL                                                                                  \
    "WITH u AS (INSERT INTO users AS t (corp_id, userid, name, mobile, email, position, status, "  \
    "department, main_department, raw, synced_at, deleted_at) VALUES ($1, $2, $3, $4, $5, $6, "    \
    "$7::int, $8::int[], $9::int, $10::jsonb, now(), NULL) ON CONFLICT (corp_id, userid) DO "      \
    "UPDATE SET name = EXCLUDED.name, mobile = EXCLUDED.mobile, email = EXCLUDED.email, position " \
    "= EXCLUDED.position, status = EXCLUDED.status, department = EXCLUDED.department, "            \
    "main_department = EXCLUDED.main_department, raw = EXCLUDED.raw, synced_at = now(), "          \
    "sync_run_id = NULL, deleted_at = NULL RETURNING *), " DIGESTS_INVALIDATE(                     \
        "SELECT $1, unnest(department), userid FROM u UNION SELECT $1, unnest(o.department), "     \
        "o.userid FROM users o WHERE o.corp_id = $1 AND o.userid = $2",                            \
        "true") " SELECT " API_SQL_USER_JSON " FROM u"

static int store_member(lk_req *q, const wecom_result *r)
{
    json_object *o = r->json, *dep;
    char status[24], main_dep[24];
    buf deps;
    int rc = -ENOMEM;

    buf_init(&deps);
    buf_puts(&deps, "{");
    if (json_object_object_get_ex(o, "department", &dep) &&
        json_object_is_type(dep, json_type_array)) {
        size_t n = json_object_array_length(dep);
        for (size_t i = 0; i < n; i++) {
            json_object *d = json_object_array_get_idx(dep, i);
            if (!json_object_is_type(d, json_type_int))
                continue;
            buf_printf(&deps, "%s%lld", deps.len > 1 ? "," : "",
                       (long long)json_object_get_int64(d));
        }
    }
    buf_puts(&deps, "}");
    if (deps.oom)
        goto cleanup;
    const char *mobile = jstr(o, "mobile");
    const char *params[10] = {
        q->corp,
        q->userid,
        jstr(o, "name"),
        mobile && *mobile ? mobile : q->mobile,
        jstr(o, "email"),
        jstr(o, "position"),
        jint(o, "status", status, sizeof status) ? status : NULL,
        deps.data,
        jint(o, "main_department", main_dep, sizeof main_dep) ? main_dep : NULL,
        json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN),
    };
    rc = pg_query(q->lk->pg, STORE_SQL, 10, params, on_stored, q);
cleanup:
    buf_free(&deps);
    return rc;
}

static void upstream_failed(lk_req *q, const wecom_result *r, const char *api)
{
    log_warn("lookup: upstream failed", LF_S("corp_id", q->corp), LF_S("api", api),
             LF_S("status", wecom_status_name(r->status)), LF_I("errcode", r->errcode),
             LF_S("error", r->error ? r->error : ""));
    switch (r->status) {
    case WECOM_E_QUOTA:
        finish(q, 429, "quota_exhausted", "the enterprise's daily upstream quota is used up", NULL,
               0);
        return;
    case WECOM_E_BANNED:
    case WECOM_E_STOPPED:
    case WECOM_E_REDIS:
        finish(q, 503, "upstream_unavailable", "the upstream cannot be asked now", NULL, 0);
        return;
    default:
        finish(q, 502, "upstream_error", r->error ? r->error : "upstream error", NULL, 0);
        return;
    }
}

static int unknown_member(const wecom_result *r)
{
    return r->status == WECOM_E_ERRCODE && (r->errcode == 46004 || r->errcode == 60111);
}

static void on_neg_stored(void *arg, redisReply *reply, const char *err)
{
    lk_req *q = arg;
    (void)reply;
    if (err) /* the answer stands; the next lookup just asks upstream again */
        metrics_counter_add(M_REDIS_ERRORS, "source=\"api\"", 1);
    finish(q, 404, "unknown_mobile", "the upstream does not know this mobile", NULL, 0);
}

static void remember_unknown(lk_req *q)
{
    if (redis_cmd(q->lk->redis, on_neg_stored, q, "SET %s 1 EX %d", q->neg_key, LOOKUP_NEG_TTL_S))
        finish(q, 404, "unknown_mobile", "the upstream does not know this mobile", NULL, 0);
}

static void on_user_get(void *arg, const wecom_result *r)
{
    lk_req *q = arg;
    if (unknown_member(r)) { /* left between the two calls */
        remember_unknown(q);
        return;
    }
    if (r->status != WECOM_OK) {
        upstream_failed(q, r, "user/get");
        return;
    }
    if (store_member(q, r))
        finish(q, 503, "database_unavailable", "could not store the member in PostgreSQL", NULL, 0);
}

static void on_getuserid(void *arg, const wecom_result *r)
{
    lk_req *q = arg;
    const char *uid;
    if (unknown_member(r)) {
        remember_unknown(q);
        return;
    }
    if (r->status != WECOM_OK) {
        upstream_failed(q, r, "user/getuserid");
        return;
    }
    uid = jstr(r->json, "userid");
    if (!uid || !*uid || strlen(uid) >= sizeof q->userid) {
        finish(q, 502, "upstream_error", "getuserid answered no usable userid", NULL, 0);
        return;
    }
    strcpy(q->userid, uid);
    if (wecom_user_get(q->lk->wc, q->corp, q->userid, on_user_get, q))
        finish(q, 503, "upstream_unavailable", "could not queue user/get", NULL, 0);
}

/* The upstream client only knows enterprises someone registered; a worker that
 * never led may not have this one yet, so its secret is read once from
 * PostgreSQL (a reader role without SELECT on corp_secret gets 503). */
static void on_secret(void *arg, PGresult *res, const char *err)
{
    lk_req *q = arg;
    if (err || PQntuples(res) != 1) {
        log_warn("lookup: no credentials for the enterprise", LF_S("corp_id", q->corp),
                 LF_S("err", err ? err : "no row"));
        finish(q, 503, "no_credentials", "this worker cannot read the enterprise's secret", NULL,
               0);
        return;
    }
    if (wecom_corp_set(q->lk->wc, q->corp, PQgetvalue(res, 0, 0))) {
        finish(q, 503, "upstream_unavailable", "could not register the enterprise", NULL, 0);
        return;
    }
    q->registered = 1;
    step_getuserid(q);
}

static void step_getuserid(lk_req *q)
{
    if (!q->lk->wc) {
        finish(q, 503, "upstream_unavailable", "no upstream client on this worker", NULL, 0);
        return;
    }
    int rc = wecom_getuserid(q->lk->wc, q->corp, q->mobile, on_getuserid, q);
    if (rc == 0)
        return;
    if (rc == -ENOENT && !q->registered) {
        const char *p[] = {q->corp};
        if (pg_query(q->lk->pg, "SELECT corp_secret FROM enterprises WHERE corp_id = $1", 1, p,
                     on_secret, q) == 0)
            return;
    }
    finish(q, 503, "upstream_unavailable", "could not queue getuserid", NULL, 0);
}

int lookup_realtime(lookup *lk, const char *corp_id, const char *mobile, lookup_cb cb, void *arg)
{
    if (!lk || !cb || !corp_id_valid(corp_id) || !api_valid_mobile(mobile))
        return -EINVAL;
    lk_req *q = calloc(1, sizeof(*q));
    if (!q)
        return -ENOMEM;
    q->lk = lk;
    q->cb = cb;
    q->arg = arg;
    snprintf(q->corp, sizeof q->corp, "%s", corp_id);
    snprintf(q->mobile, sizeof q->mobile, "%s", mobile);
    const char *p[] = {corp_id};
    /* no database: answer now rather than after the pool's query timeout */
    int rc = pg_pool_ready(lk->pg) ? 0 : -EAGAIN;
    if (!rc)
        rc = pg_query(lk->pg, "SELECT enabled FROM enterprises WHERE corp_id = $1", 1, p,
                      on_enterprise, q);
    if (rc) {
        free(q);
        return rc;
    }
    return 0;
}
