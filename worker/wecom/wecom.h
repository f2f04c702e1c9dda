/* worker/wecom/: the WeCom upstream client: pacing, tokens, retries, answer checking.
 *
 * The WeCom contacts API client (SPEC §4, §6; DESIGN §3 "Pacing", "Tokens",
 * "Retries"), on one libuv loop.
 *
 *   wecom *w = wecom_new(loop, http, redis, &(wecom_opts){.base_url = s->upstream_url,
 *                        .env = s->env, .instance = s->instance, .rate = s->dept_rate,
 *                        .max_inflight = s->upstream_max_inflight, .daily_quota = s->daily_quota});
 *   wecom_corp_set(w, "wwcorp", secret);
 *   wecom_user_list(w, "wwcorp", 7, on_list, arg);
 *   ...
 *   wecom_close(w, on_closed, arg);
 *
 * What every request gets, whoever sends it (the sync, the realtime lookup):
 * - per enterprise, upstream calls go one at a time, on a schedule of one per
 *   1/rate (common/pacer.h: a call that went late lets the next catch up, so
 *   lateness does not add up), and never more than floor(rate) calls in a
 *   window that starts when the answer to an earlier call ARRIVED (an upper
 *   bound of when the upstream counted it), so the upstream's arrival count
 *   stays within the rate whatever the network jitter and the catching up;
 * - the same window is kept in Redis (orgsync:<env>:rate:<corp>, scored on
 *   Redis's clock), so calls for one enterprise from every process, and from
 *   the previous run, count together;
 * - across enterprises at most max_inflight calls are in flight per process:
 *   every client on the same loop shares one cap (the first client's
 *   max_inflight sets it);
 * - the access token comes from Redis (orgsync:<env>:token:<corp>), shared by
 *   every process; a miss is refreshed by one process at a time (a short NX
 *   key), the others wait for it; an invalid or expired token errcode drops the
 *   cached token only if it is still the one used, fetches a new one, retries
 *   once and raises an alert;
 * - every upstream call is counted in Redis (orgsync:<env>:quota:<corp>:<api>:
 *   <yyyymmdd>, the upstream's day, UTC+8) before it is sent; with a daily
 *   quota set, a call that would exceed it is not sent (WECOM_E_QUOTA);
 * - HTTP errors, timeouts, malformed bodies and errcode -1 are retried with
 *   full-jitter exponential backoff, a bounded number of times; 45009/45033
 *   pause that enterprise (doubling pauses) and alert.
 *
 * Callbacks are never called from inside the call that queued the request. */
#ifndef ORGSYNC_WECOM_H
#define ORGSYNC_WECOM_H

#include "common/http_client.h"
#include "common/redis.h"

#include <json-c/json.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct wecom wecom;

typedef enum wecom_api {
    WECOM_API_GETTOKEN = 0,
    WECOM_API_DEPT_LIST,
    WECOM_API_USER_LIST,
    WECOM_API_USER_GET,
    WECOM_API_GETUSERID,
    WECOM_API_DEPT_SIMPLELIST, /* the roster-era department tree (ids, parents, order) */
    WECOM_API_USER_LIST_ID,    /* the roster: every membership, paged by cursor */
    WECOM_API_DEPT_GET,
    WECOM_API_EXPORT_USER,       /* an asynchronous export of every member's details */
    WECOM_API_EXPORT_GET_RESULT, /* its state and, when done, its files */
    WECOM_API_COUNT
} wecom_api;

/* "gettoken", "department/list", "user/list", "user/get", "user/getuserid",
 * "department/simplelist", "user/list_id", "department/get", "export/user",
 * "export/get_result": the <api> part of the quota keys. */
extern const char *const wecom_api_names[WECOM_API_COUNT];

/* Which of an enterprise's secrets a call uses, each with its own token
 * (token:<corp> and token:<corp>:contact in Redis). The app secret (a
 * self-built app's) is always there: member details within the app's visible
 * range. The contact-sync secret (通讯录同步) is optional: the complete roster;
 * since 2022-08-15, from an IP added after that date, it gets 48009 on the
 * legacy department/list, user/list and user/get. */
typedef enum wecom_cred { WECOM_CRED_APP = 0, WECOM_CRED_CONTACT, WECOM_CRED_COUNT } wecom_cred;

/* "app secret", "contact-sync secret". */
const char *wecom_cred_name(wecom_cred cred);

typedef enum wecom_status {
    WECOM_OK = 0,      /* errcode 0; json is the parsed body */
    WECOM_E_ERRCODE,   /* a non-zero errcode that is not retried (60003, 46004, ...) */
    WECOM_E_HTTP,      /* HTTP error status or transport failure, retries exhausted */
    WECOM_E_TIMEOUT,   /* timed out, retries exhausted */
    WECOM_E_MALFORMED, /* body not a JSON object with an integer errcode, retries exhausted */
    WECOM_E_BUSY,      /* errcode -1 after 3 retries */
    WECOM_E_TOKEN,     /* gettoken failed, or the token was refused again after a refresh */
    WECOM_E_BANNED,    /* 45009/45033 persisted through every pause */
    WECOM_E_QUOTA,     /* ORGSYNC_DAILY_QUOTA reached: the call was not sent */
    WECOM_E_REDIS,     /* the token cache or the quota counter did not answer */
    WECOM_E_STOPPED    /* the gate refused (lease lost) or the client is closing */
} wecom_status;

/* "ok", "errcode", "http", "timeout", "malformed", ... */
const char *wecom_status_name(wecom_status s);

typedef struct wecom_result {
    wecom_status status;
    int errcode;       /* errcode of the last answer that had one, else 0 */
    const char *error; /* NULL when OK; else one line, e.g. "user/list: errcode 60003 (...)" */
    json_object *json; /* the parsed body when OK or E_ERRCODE (NULL for *_text requests);
                          valid during the callback */
    const char *body; /* the raw body of the last answer (may be NULL); valid during the callback */
    const char *errmsg; /* errmsg of the last answer that had an errcode ("" if none) */
    size_t body_len;
    int requests; /* upstream calls made for this request (gettoken included) */
    int retries;  /* of those, repeats after an error */
} wecom_result;

typedef void (*wecom_cb)(void *arg, const wecom_result *res);

typedef struct wecom_opts {
    const char *base_url; /* e.g. "https://qyapi.weixin.qq.com" (no trailing slash needed) */
    const char *env;      /* Redis key namespace: orgsync:<env>: */
    const char *instance; /* owner value of the token refresh key */
    double rate;          /* calls per enterprise per second; <= 0 means 10 */
    int max_inflight;     /* calls in flight across enterprises; <= 0 means 50 */
    long daily_quota;     /* calls per enterprise per day (all APIs); 0 = unlimited */
    int timeout_ms;       /* per upstream call; 0 = 10000 */
    int max_retries;      /* HTTP errors, timeouts, malformed bodies; 0 = 4, < 0 = none */
    int busy_retries;     /* errcode -1; 0 = 3, < 0 = none */
    uint32_t backoff_base_ms, backoff_cap_ms; /* 0 = 200, 10000 */
    uint32_t ban_pause_ms;                    /* first pause after 45009/45033; 0 = 1000 */
    uint32_t ban_pause_cap_ms;                /* 0 = 60000 */
    int ban_retries;                          /* pauses before giving up; 0 = 5 */
    /* The per-egress caps (common/egress_cap.h): calls leaving from this egress
     * id, counted in Redis by every process and client that shares it. NULL or
     * "": none. 0 caps: the upstream's limits (20,000/min, 600,000/h). */
    const char *egress_id;
    int egress_per_min, egress_per_hour;
    /* Called before every upstream call; 0 refuses it (WECOM_E_STOPPED). NULL = always. */
    int (*gate)(void *arg);
    void *gate_arg;
    /* kind: "token_invalid" or "ban". Called on the loop; may be NULL. */
    void (*alert)(void *arg, const char *kind, const char *corp_id, const char *message);
    void *alert_arg;
} wecom_opts;

/* Strings in opts are copied. NULL on out of memory or a bad option (logged). */
wecom *wecom_new(uv_loop_t *loop, http_client *http, redis_client *redis, const wecom_opts *opts);

/* Registers an enterprise (or updates its app secret). 0, -EINVAL, -ENOMEM. */
int wecom_corp_set(wecom *w, const char *corp_id, const char *secret);
/* Sets (secret NULL: clears) a registered enterprise's contact-sync secret. 0,
 * -ENOENT (not registered), -EINVAL, -ENOMEM. */
int wecom_corp_set_contact(wecom *w, const char *corp_id, const char *secret);
/* 1 if the enterprise has a contact-sync secret. */
int wecom_corp_has_contact(const wecom *w, const char *corp_id);

/* Each queues one request for a registered enterprise and returns 0 (cb will
 * be called exactly once), or a negative errno (-ENOENT: unknown corp,
 * -EINVAL, -ENOMEM, -ESHUTDOWN: closing) and cb will not be called. */
/* Unless named _as, a call uses the app secret; -ENOENT also when the
 * credential asked for is not configured. */
/* dept_id <= 0: the whole directory (no id parameter). */
int wecom_department_list(wecom *w, const char *corp_id, long long dept_id, wecom_cb cb, void *arg);
int wecom_department_list_as(wecom *w, const char *corp_id, wecom_cred cred, long long dept_id,
                             wecom_cb cb, void *arg);
/* The whole tree as {"department_id": [{"id", "parentid", "order"}]}. */
int wecom_department_simplelist(wecom *w, const char *corp_id, wecom_cred cred, wecom_cb cb,
                                void *arg);
/* One roster page: POST {"cursor", "limit"} (cursor NULL or "" for the first;
 * limit 1..10000), answering {"next_cursor", "dept_user": [{"userid",
 * "department"}]}, one row per membership; next_cursor "" on the last page. */
int wecom_user_list_id(wecom *w, const char *corp_id, wecom_cred cred, const char *cursor,
                       int limit, wecom_cb cb, void *arg);
int wecom_user_list(wecom *w, const char *corp_id, long long dept_id, wecom_cb cb, void *arg);
/* The same, but res->json is NULL: the body was checked to be JSON (strict,
 * worker/wecom/json_scan.h) with an integer errcode, and is handed over as text only,
 * for a caller that reads it in place (no json-c tree built). */
int wecom_user_list_text(wecom *w, const char *corp_id, long long dept_id, wecom_cb cb, void *arg);
int wecom_user_list_text_as(wecom *w, const char *corp_id, wecom_cred cred, long long dept_id,
                            wecom_cb cb, void *arg);
/* export/user: POST {"encoding_aeskey", "block_size"} (43 characters of
 * [A-Za-z0-9]; 10,000..1,000,000 members per file), answering {"jobid"}. */
int wecom_export_user(wecom *w, const char *corp_id, wecom_cred cred, const char *aeskey,
                      long block_size, wecom_cb cb, void *arg);
/* export/get_result?jobid=: {"status": 0 not started, 1 running, 2 done, 3
 * failed, "data_list": [{"url", "size", "md5"}] when done}. Only the credential
 * that created the job may ask. */
int wecom_export_get_result(wecom *w, const char *corp_id, wecom_cred cred, const char *jobid,
                            wecom_cb cb, void *arg);
int wecom_user_get(wecom *w, const char *corp_id, const char *userid, wecom_cb cb, void *arg);
/* mobile is sent in the POST body only; it is never logged. */
int wecom_getuserid(wecom *w, const char *corp_id, const char *mobile, wecom_cb cb, void *arg);

typedef struct wecom_stats {
    unsigned long requests, retries, token_refreshes, token_invalidations, bans, inflight,
        max_inflight;
    unsigned long shared_waits; /* admissions the shared window deferred */
    /* Calls the full shared window admitted for a later moment, and of those,
     * the ones whose window held only this client's calls (held by its own
     * pacing, see wecom.c's admit_script). */
    unsigned long shared_booked, shared_booked_own;
    unsigned long egress_waits; /* calls the egress caps held back */
} wecom_stats;
void wecom_get_stats(const wecom *w, wecom_stats *out);

/* Every request not yet answered gets WECOM_E_STOPPED (its callback runs before
 * this returns); answers of calls in flight are ignored. done(arg) runs once
 * every timer is closed and every HTTP and Redis callback has come back; then
 * w is freed. Closing the http or redis client first is fine (their pending
 * callbacks come back with an error). done may be NULL. */
void wecom_close(wecom *w, void (*done)(void *arg), void *arg);

/* Day key of the quota counters for a wall-clock time: "yyyymmdd" in UTC+8
 * (the upstream's day). out needs 9 bytes. */
void wecom_quota_day(time_t t, char out[9]);

#endif
