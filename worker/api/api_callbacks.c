/* WeCom change callbacks: GET|POST /v1/callbacks/wecom/{corp_id} (docs/API.md),
 * and GET /v1/callbacks, their freshness per enterprise (the progress page).
 *
 * GET (the URL check WeCom makes when the callback is set up): verify
 * msg_signature over echostr, decrypt it, check the receive id, answer the
 * plain text. POST (a change): the body's <Encrypt> is verified, decrypted and
 * parsed (worker/api/callback_event.h), and the event stored in callback_inbox
 * BEFORE the 200, so that a worker dying right after answering loses nothing;
 * the "callback-apply" job applies it (worker/sync/callback_apply.h).
 *
 * Refused, with the API's error shape and nothing stored: an unknown or
 * unconfigured enterprise (404), missing or malformed parameters or message
 * (400), a timestamp more than CALLBACK_WINDOW_S from our clock (403 stale), a
 * bad signature (403), a receive id or ToUserName other than the corp id in the
 * path (403 wrong_corp), and a request already stored (same msg_signature: 409
 * replayed). The same event delivered again in another request (a retry with a
 * new nonce) is stored once (the inbox's unique key) and answered 200.
 *
 * Secrets (the Token, the EncodingAESKey) are read from PostgreSQL per request
 * and never logged; a reader-role deployment cannot read them (503). */
#include "worker/api/api_routes.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "common/log.h"
#include "common/metrics.h"
#include "common/msgcrypt.h"
#include "common/timeutil.h"
#include "worker/api/callback_event.h"

/* How far a request's timestamp may be from our clock, either way: WeCom
 * retries within seconds, so five minutes absorbs clock skew and retries while
 * bounding how long a captured request stays worth replaying (and the inbox
 * remembers every stored request's signature for longer than that). */
#define CALLBACK_WINDOW_S 300
#define M_CALLBACKS "orgsync_callbacks_total"

typedef struct cb_op {
    api *a;
    http_req *req;
    int post;
    char corp[72];
    char sig[48], ts[24], nonce[72];
    char *encrypt; /* POST: the body's Encrypt; GET: echostr */
    callback_event ev;
} cb_op;

static void count(const char *outcome)
{
    char labels[64];
    snprintf(labels, sizeof labels, "outcome=\"%s\"", outcome);
    metrics_counter_add(M_CALLBACKS, labels, 1);
}

static void refuse(http_req *req, int status, const char *code, const char *msg)
{
    count(code);
    http_reply_error(req, status, code, msg);
}

static void op_free(cb_op *op)
{
    if (op->encrypt) {
        OPENSSL_cleanse(op->encrypt, strlen(op->encrypt));
        free(op->encrypt);
    }
    free(op);
}

/* ---- storing the event ---- */

/* One statement: a request whose signature is stored already is a replay
 * (nothing written); else the event is inserted, or, when the same event is
 * stored already (a duplicate delivery), stored once: if that copy was applied
 * already it is made pending again, so a change that came within the same
 * second as an applied one (the same key) is fetched again, not lost. Answers
 * (event_id or NULL, inserted, replay). */
static const char store_sql[] =
    "WITH rep AS (SELECT 1 FROM callback_inbox WHERE corp_id = $1 AND msg_signature = $8), "
    "ins AS (INSERT INTO callback_inbox AS c (corp_id, from_user, create_time, change_type, kind, "
    "target, new_target, msg_signature, received_by) SELECT $1, $2, $3::bigint, $4, $5, $6, "
    "nullif($7, ''), $8, $9 WHERE NOT EXISTS (SELECT 1 FROM rep) "
    "ON CONFLICT (corp_id, from_user, create_time, change_type, target) DO UPDATE SET "
    "applied_at = NULL, outcome = 'redelivered', attempts = 0, received_at = clock_timestamp() "
    "WHERE c.applied_at IS NOT NULL RETURNING event_id, (xmax = 0) AS fresh) "
    "SELECT (SELECT event_id FROM ins), coalesce((SELECT fresh FROM ins), false), "
    "EXISTS (SELECT 1 FROM rep)";

static void on_stored(void *arg, PGresult *res, const char *err)
{
    cb_op *op = arg;

    if (!api_unref(op->a))
        goto done;
    if (err || PQntuples(res) != 1) {
        count("database_unavailable");
        http_reply_error(op->req, api_pg_failed(op->a, "callback store", err ? err : "no row"),
                         "database_unavailable", "could not store the event in PostgreSQL");
        goto done;
    }
    if (PQgetvalue(res, 0, 2)[0] == 't') {
        refuse(op->req, 409, "replayed", "this request (its msg_signature) was received already");
        goto done;
    } else if (PQgetvalue(res, 0, 1)[0] == 't') {
        count("stored");
        log_info("callback: event stored", LF_S("corp_id", op->corp),
                 LF_S("change_type", op->ev.change_type), LF_S("target", op->ev.target),
                 LF_S("event_id", PQgetvalue(res, 0, 0)));
    } else {
        count("duplicate");
        log_info("callback: duplicate event", LF_S("corp_id", op->corp),
                 LF_S("rearmed", PQgetisnull(res, 0, 0) ? "no" : "yes"),
                 LF_S("change_type", op->ev.change_type), LF_S("target", op->ev.target));
    }
    http_reply(op->req, 200, "text/plain; charset=utf-8", "success", 7);
done:
    op_free(op);
}

static void store(cb_op *op)
{
    char ct[24];
    const char *p[9];
    int rc;

    snprintf(ct, sizeof ct, "%lld", op->ev.create_time);
    p[0] = op->corp;
    p[1] = op->ev.from_user;
    p[2] = ct;
    p[3] = op->ev.change_type;
    p[4] = op->ev.kind;
    p[5] = op->ev.target;
    p[6] = op->ev.new_target;
    p[7] = op->sig;
    p[8] = op->a->d.settings->instance;
    api_ref(op->a);
    rc = api_pg_query(op->a, store_sql, 9, p, on_stored, op);
    if (rc) {
        api_unref(op->a);
        refuse(op->req, 503, "database_unavailable", "could not query PostgreSQL");
        op_free(op);
    }
}

/* ---- checking the request against the enterprise's keys ---- */

static void on_keys(void *arg, PGresult *res, const char *err)
{
    cb_op *op = arg;
    unsigned char key[MSGCRYPT_KEY_LEN];
    char rid[80], why[160];
    char *msg = NULL;
    size_t mlen = 0;
    const char *token, *aeskey, *dwhy = NULL;
    int ok;

    if (!api_unref(op->a)) {
        op_free(op);
        return;
    }
    if (err) {
        count("database_unavailable");
        http_reply_error(op->req, api_pg_failed(op->a, "callback keys", err),
                         "database_unavailable", "could not read the enterprise's callback keys");
        op_free(op);
        return;
    }
    if (PQntuples(res) != 1) {
        refuse(op->req, 404, "not_found", "no enterprise with that corp_id");
        op_free(op);
        return;
    }
    token = api_col(res, 0, 0);
    aeskey = api_col(res, 0, 1);
    if (!token || !aeskey || msgcrypt_key(aeskey, key) != 0) {
        refuse(op->req, 404, "callback_not_configured",
               "the enterprise has no callback token and EncodingAESKey (orgsync enterprise set "
               "--callback-token-env VAR --callback-aeskey-env VAR)");
        op_free(op);
        return;
    }
    ok = msgcrypt_verify(token, op->ts, op->nonce, op->encrypt, op->sig);
    if (!ok) {
        OPENSSL_cleanse(key, sizeof key);
        log_warn("callback: bad signature", LF_S("corp_id", op->corp));
        refuse(op->req, 403, "bad_signature", "msg_signature does not match");
        op_free(op);
        return;
    }
    ok = msgcrypt_decrypt(key, op->encrypt, &msg, &mlen, rid, sizeof rid, &dwhy) == 0;
    OPENSSL_cleanse(key, sizeof key);
    if (!ok) {
        snprintf(why, sizeof why, "cannot decrypt the message: %s", dwhy ? dwhy : "?");
        refuse(op->req, 400, "bad_request", why);
        op_free(op);
        return;
    }
    if (strcmp(rid, op->corp) != 0) {
        free(msg);
        refuse(op->req, 403, "wrong_corp", "the message's receive id is not this corp_id");
        op_free(op);
        return;
    }
    if (!op->post) {
        count("verified");
        http_reply(op->req, 200, "text/plain; charset=utf-8", msg, mlen);
        free(msg);
        op_free(op);
        return;
    }
    if (strlen(msg) != mlen || callback_event_parse(msg, &op->ev, why, sizeof why) != 0) {
        free(msg);
        if (strlen(why) == 0)
            snprintf(why, sizeof why, "the message holds a NUL byte");
        refuse(op->req, 400, "bad_request", why);
        op_free(op);
        return;
    }
    free(msg);
    if (strcmp(op->ev.to_user, op->corp) != 0) {
        refuse(op->req, 403, "wrong_corp", "ToUserName is not this corp_id");
        op_free(op);
        return;
    }
    store(op);
}

/* ---- the handlers ---- */

static int copy_query(http_req *req, const char *name, char *out, size_t outlen)
{
    const char *v = http_req_query(req, name);
    if (!v || !*v || strlen(v) >= outlen)
        return -1;
    memcpy(out, v, strlen(v) + 1);
    return 0;
}

static void on_callback(http_req *req, void *arg)
{
    api *a = arg;
    const char *corp = http_req_param(req, "corp_id");
    int post = strcmp(http_req_method(req), "POST") == 0;
    const char *p[1];
    long long ts, now;
    char enc[8192];
    cb_op *op;

    if (!corp_id_valid(corp)) {
        refuse(req, 400, "bad_request", "corp_id must be 1-64 of [A-Za-z0-9_-]");
        return;
    }
    if (post && a->d.read_only) {
        refuse(req, 403, "read_only", "this deployment is read-only: it stores no callbacks");
        return;
    }
    op = calloc(1, sizeof(*op));
    if (!op) {
        http_reply_error(req, 503, "out_of_memory", "out of memory");
        return;
    }
    op->a = a;
    op->req = req;
    op->post = post;
    snprintf(op->corp, sizeof op->corp, "%s", corp);
    if (copy_query(req, "msg_signature", op->sig, sizeof op->sig) ||
        copy_query(req, "timestamp", op->ts, sizeof op->ts) ||
        copy_query(req, "nonce", op->nonce, sizeof op->nonce)) {
        refuse(req, 400, "bad_request",
               "msg_signature, timestamp and nonce are required query parameters");
        op_free(op);
        return;
    }
    if (api_parse_nonneg_ll(op->ts, &ts)) {
        refuse(req, 400, "bad_request", "timestamp must be unix seconds");
        op_free(op);
        return;
    }
    now = (long long)(time_wall_ms() / 1000);
    if (ts < now - CALLBACK_WINDOW_S || ts > now + CALLBACK_WINDOW_S) {
        refuse(req, 403, "stale", "timestamp is more than 300 s from this server's clock");
        op_free(op);
        return;
    }
    if (post) {
        size_t len = 0;
        const char *body = http_req_body(req, &len);
        int rc =
            body && strlen(body) == len ? callback_xml_get(body, "Encrypt", enc, sizeof enc) : -1;
        if (rc != 1 || !enc[0]) {
            refuse(req, 400, "bad_request", "the body must be <xml> with an <Encrypt> element");
            op_free(op);
            return;
        }
        op->encrypt = strdup(enc);
    } else {
        const char *echo = http_req_query(req, "echostr");
        if (!echo || !*echo || strlen(echo) >= sizeof enc) {
            refuse(req, 400, "bad_request", "echostr is required");
            op_free(op);
            return;
        }
        op->encrypt = strdup(echo);
    }
    if (!op->encrypt) {
        http_reply_error(req, 503, "out_of_memory", "out of memory");
        op_free(op);
        return;
    }
    p[0] = op->corp;
    api_ref(a);
    if (api_pg_query(a,
                     "SELECT callback_token, callback_aeskey FROM enterprises WHERE corp_id = $1",
                     1, p, on_keys, op) != 0) {
        api_unref(a);
        refuse(req, 503, "database_unavailable", "could not query PostgreSQL");
        op_free(op);
    }
}

/* ---- GET /v1/callbacks: freshness of every enterprise with callbacks ---- */

typedef struct sum_op {
    api *a;
    http_req *req;
} sum_op;

static const char summary_sql[] =
    "SELECT corp_id, count(*) FILTER (WHERE applied_at IS NULL), count(*) FILTER (WHERE "
    "applied_at IS NOT NULL), coalesce(extract(epoch FROM now() - min(received_at) FILTER (WHERE "
    "applied_at IS NULL)), 0), extract(epoch FROM max(applied_at)) FROM callback_inbox GROUP BY "
    "corp_id ORDER BY corp_id";

static void on_summary(void *arg, PGresult *res, const char *err)
{
    sum_op *op = arg;
    long long waiting = 0, applied = 0;
    double lag = 0;
    buf b;
    jw w;

    if (!api_unref(op->a))
        goto done;
    if (err) {
        http_reply_error(op->req, api_pg_failed(op->a, "callbacks summary", err),
                         "database_unavailable", "could not query PostgreSQL");
        goto done;
    }
    buf_init(&b);
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_key(&w, "enterprises");
    jw_arr_begin(&w);
    for (int i = 0; i < PQntuples(res); i++) {
        double l = strtod(PQgetvalue(res, i, 3), NULL);
        waiting += api_col_ll(res, i, 1);
        applied += api_col_ll(res, i, 2);
        if (l > lag)
            lag = l;
        jw_obj_begin(&w);
        jw_kstr(&w, "corp_id", PQgetvalue(res, i, 0));
        jw_kint(&w, "waiting", api_col_ll(res, i, 1));
        jw_kint(&w, "applied", api_col_ll(res, i, 2));
        jw_kdbl(&w, "lag_seconds", l);
        api_kepoch(&w, "last_applied_at", res, i, 4);
        jw_obj_end(&w);
    }
    jw_arr_end(&w);
    jw_kint(&w, "waiting", waiting);
    jw_kint(&w, "applied", applied);
    jw_kdbl(&w, "lag_seconds", lag);
    jw_obj_end(&w);
    api_reply_json(op->req, 200, &b);
done:
    free(op);
}

static void on_callbacks_summary(http_req *req, void *arg)
{
    api *a = arg;
    sum_op *op = calloc(1, sizeof(*op));

    if (!op) {
        http_reply_error(req, 503, "out_of_memory", "out of memory");
        return;
    }
    op->a = a;
    op->req = req;
    api_ref(a);
    if (api_pg_query(a, summary_sql, 0, NULL, on_summary, op) != 0) {
        api_unref(a);
        http_reply_error(req, 503, "database_unavailable", "could not query PostgreSQL");
        free(op);
    }
}

int api_callbacks_register(api *a)
{
    int err;

    metrics_describe(M_CALLBACKS, METRIC_COUNTER,
                     "WeCom change callbacks answered, by outcome (stored, duplicate, verified, "
                     "or the error code)");
    err = http_server_route(a->srv, "GET", "/v1/callbacks/wecom/{corp_id}", on_callback, a);
    if (!err)
        err = http_server_route(a->srv, "POST", "/v1/callbacks/wecom/{corp_id}", on_callback, a);
    if (!err)
        err = http_server_route(a->srv, "GET", "/v1/callbacks", on_callbacks_summary, a);
    return err;
}
