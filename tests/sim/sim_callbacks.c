/* Change callbacks: when the directory of an enterprise with a callback URL is
 * mutated (POST /sim/mutate), the simulator POSTs one encrypted change_contact
 * event per change to that URL, as WeCom does (common/msgcrypt.h), with the
 * short payloads of callback URLs set up after 2022-08-15: member events carry
 * only UserID and Department, department events only Id and ParentId.
 *
 *   POST /sim/callbacks {"corp_id"?, "url", "token", "aeskey", "duplicate"?,
 *                        "reorder"?, "retries"?, "retry_delay_ms"?, "timeout_ms"?}
 *   GET  /sim/callbacks  -> {"corps":[{"corp_id","url","duplicate","reorder",...}],
 *                            "stats":{"events","posts","delivered","retried","failed",
 *                                     "refused"}}
 *
 * Without corp_id it configures every enterprise; "url": null turns callbacks
 * off. duplicate (0..1): the share of events also sent a second time (a new
 * nonce, the same event); reorder: each mutation's events are sent in a random
 * order; a POST not answered 200 within timeout_ms (default 5000) is tried
 * again after retry_delay_ms (default 1000), up to retries (default 3) more
 * times, like WeCom. */
#include "tests/sim/sim.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "common/http_client.h"
#include "common/http_server.h"
#include "common/log.h"
#include "common/msgcrypt.h"
#include "common/timeutil.h"

typedef struct cb_conf {
    char url[512];
    char token[130];
    unsigned char key[MSGCRYPT_KEY_LEN];
    char aeskey[48];
    double duplicate;
    int reorder, retries, retry_delay_ms, timeout_ms;
} cb_conf;

typedef struct cb_send {
    struct sim_callbacks *cbs;
    char *url; /* with the query */
    char *body;
    int tries_left;
    int delay_ms, timeout_ms;
    uv_timer_t timer;
} cb_send;

struct sim_callbacks {
    sim *s;
    http_client *http;
    cb_conf *conf; /* [ncorps]; url "" = off */
    uint64_t rng;
    unsigned long events, posts, delivered, retried, failed, refused;
    int inflight; /* sends alive (posting or waiting to retry) */
    int closing;
};

static sim_callbacks *get(sim *s)
{
    if (!s->callbacks) {
        sim_callbacks *c = calloc(1, sizeof(*c));
        if (!c)
            return NULL;
        c->s = s;
        c->conf = calloc((size_t)s->dir.ncorps, sizeof(*c->conf));
        c->http = http_client_new(s->loop, NULL);
        if (!c->conf || !c->http) {
            free(c->conf);
            if (c->http)
                http_client_close(c->http, NULL, NULL);
            free(c);
            return NULL;
        }
        c->rng = s->dir.seed ^ 0x5eed;
        s->callbacks = c;
    }
    return s->callbacks;
}

/* ---- sending ---- */

static void send_closed(uv_handle_t *h)
{
    cb_send *q = h->data;
    free(q->url);
    free(q->body);
    q->cbs->inflight--;
    free(q);
}

static void send_done(cb_send *q)
{
    uv_close((uv_handle_t *)&q->timer, send_closed);
}

static void post_now(cb_send *q);

static void on_retry_timer(uv_timer_t *t)
{
    cb_send *q = t->data;
    if (q->cbs->closing) {
        send_done(q);
        return;
    }
    q->cbs->retried++;
    post_now(q);
}

static void on_posted(void *arg, const http_response *r)
{
    cb_send *q = arg;
    sim_callbacks *c = q->cbs;

    if (!r->error && r->status == 200) {
        c->delivered++;
        send_done(q);
        return;
    }
    if (!r->error)
        c->refused++;
    if (c->closing || q->tries_left-- <= 0) {
        c->failed++;
        log_warn("sim callback: given up", LF_I("status", r->status),
                 LF_S("error", r->error ? r->error : ""));
        send_done(q);
        return;
    }
    uv_timer_start(&q->timer, on_retry_timer, (uint64_t)q->delay_ms, 0);
}

static void post_now(cb_send *q)
{
    q->cbs->posts++;
    if (http_client_post(q->cbs->http, q->url, "application/xml", q->body, strlen(q->body),
                         q->timeout_ms, on_posted, q) != 0) {
        q->cbs->failed++;
        send_done(q);
    }
}

/* Encrypts one event and posts it (and maybe a duplicate). */
static void send_event(sim_callbacks *c, int corp, const char *xml)
{
    cb_conf *cf = &c->conf[corp];
    const char *corp_id = c->s->dir.corps[corp].corp_id;
    char ts[24], nonce[24], sig[41];
    char *enc = NULL;
    int copies = 1 + (cf->duplicate > 0 && sim_rng_unit(&c->rng) < cf->duplicate);

    c->events++;
    if (msgcrypt_encrypt(cf->key, xml, strlen(xml), corp_id, NULL, &enc) != 0)
        return;
    for (int k = 0; k < copies; k++) {
        cb_send *q = calloc(1, sizeof(*q));
        size_t ul, bl;
        if (!q)
            break;
        snprintf(ts, sizeof ts, "%lld", (long long)(time_wall_ms() / 1000));
        snprintf(nonce, sizeof nonce, "%llu",
                 (unsigned long long)(sim_rng_next(&c->rng) % 10000000000ULL));
        msgcrypt_signature(cf->token, ts, nonce, enc, sig);
        ul = strlen(cf->url) + 128;
        bl = strlen(enc) + strlen(corp_id) + 128;
        q->url = malloc(ul);
        q->body = malloc(bl);
        if (!q->url || !q->body) {
            free(q->url);
            free(q->body);
            free(q);
            break;
        }
        snprintf(q->url, ul, "%s%smsg_signature=%s&timestamp=%s&nonce=%s", cf->url,
                 strchr(cf->url, '?') ? "&" : "?", sig, ts, nonce);
        snprintf(q->body, bl,
                 "<xml><ToUserName><![CDATA[%s]]></ToUserName><Encrypt><![CDATA[%s]]></Encrypt>"
                 "<AgentID><![CDATA[]]></AgentID></xml>",
                 corp_id, enc);
        q->cbs = c;
        q->tries_left = cf->retries;
        q->delay_ms = cf->retry_delay_ms;
        q->timeout_ms = cf->timeout_ms;
        uv_timer_init(c->s->loop, &q->timer);
        q->timer.data = q;
        c->inflight++;
        post_now(q);
    }
    free(enc);
}

static char *event_xml(const sim_corp *corp, const char *change, const char *id_xml)
{
    char *x = malloc(1024);
    if (!x)
        return NULL;
    snprintf(x, 1024,
             "<xml><ToUserName><![CDATA[%s]]></ToUserName><FromUserName><![CDATA[sys]]>"
             "</FromUserName><CreateTime>%lld</CreateTime><MsgType><![CDATA[event]]></MsgType>"
             "<Event><![CDATA[change_contact]]></Event><ChangeType><![CDATA[%s]]></ChangeType>"
             "%s</xml>",
             corp->corp_id, (long long)(time_wall_ms() / 1000), change, id_xml);
    return x;
}

static char *user_event(sim_corp *corp, const char *change, const char *userid)
{
    char ids[512], deps[128] = "";
    sim_user *u = sim_corp_find_user(corp, userid);
    size_t n = 0;

    for (int i = 0; u && u->alive && i < u->ndept; i++)
        n += (size_t)snprintf(deps + n, sizeof deps - n, "%s%d", i ? "," : "", u->dept[i]);
    snprintf(ids, sizeof ids,
             "<UserID><![CDATA[%.64s]]></UserID><Department><![CDATA[%s]]></Department>", userid,
             deps);
    return event_xml(corp, change, ids);
}

static char *dept_event(sim_corp *corp, const char *change, int id)
{
    char ids[160];
    int parent = id > 0 && id <= corp->max_dept ? corp->depts[id].parentid : 0;
    snprintf(ids, sizeof ids, "<Id>%d</Id><ParentId><![CDATA[%d]]></ParentId>", id, parent);
    return event_xml(corp, change, ids);
}

void sim_callbacks_mutated(sim *s, const char *answer, size_t len)
{
    static const struct {
        const char *key, *change;
        int dept;
    } kinds[] = {
        {"added", "create_user", 0},
        {"removed", "delete_user", 0},
        {"renamed", "update_user", 0},
        {"moved", "update_user", 0},
        {"departments_added", "create_party", 1},
        {"departments_renamed", "update_party", 1},
        {"departments_removed", "delete_party", 1},
    };
    sim_callbacks *c = s->callbacks;
    json_object *o, *v, *arr;
    sim_corp *corp;
    char **ev = NULL;
    size_t nev = 0, cap = 0;
    int ci;

    if (!c || c->closing)
        return;
    o = json_tokener_parse(answer);
    (void)len;
    if (!o)
        return;
    if (!json_object_object_get_ex(o, "corp_id", &v) ||
        !(corp = sim_dir_corp(&s->dir, json_object_get_string(v))))
        goto out;
    ci = corp->index - 1;
    if (!c->conf[ci].url[0])
        goto out;
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        if (!json_object_object_get_ex(o, kinds[k].key, &arr) ||
            !json_object_is_type(arr, json_type_array))
            continue;
        for (size_t i = 0; i < json_object_array_length(arr); i++) {
            json_object *e = json_object_array_get_idx(arr, i);
            char *x = kinds[k].dept ? dept_event(corp, kinds[k].change, json_object_get_int(e))
                                    : user_event(corp, kinds[k].change, json_object_get_string(e));
            if (!x)
                continue;
            if (nev == cap) {
                char **nn = realloc(ev, (cap = cap ? cap * 2 : 16) * sizeof(*ev));
                if (!nn) {
                    free(x);
                    break;
                }
                ev = nn;
            }
            ev[nev++] = x;
        }
    }
    if (c->conf[ci].reorder)
        for (size_t i = nev; i > 1; i--) {
            size_t r = (size_t)sim_rng_below(&c->rng, i);
            char *t = ev[i - 1];
            ev[i - 1] = ev[r];
            ev[r] = t;
        }
    for (size_t i = 0; i < nev; i++) {
        send_event(c, ci, ev[i]);
        free(ev[i]);
    }
out:
    free(ev);
    json_object_put(o);
}

/* ---- configuration ---- */

static void reply_conf(sim *s, http_req *r)
{
    sim_callbacks *c = s->callbacks;
    buf b;
    jw w;

    buf_init(&b);
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_key(&w, "corps");
    jw_arr_begin(&w);
    for (int i = 0; c && i < s->dir.ncorps; i++) {
        cb_conf *cf = &c->conf[i];
        if (!cf->url[0])
            continue;
        jw_obj_begin(&w);
        jw_kstr(&w, "corp_id", s->dir.corps[i].corp_id);
        jw_kstr(&w, "url", cf->url);
        jw_kdbl(&w, "duplicate", cf->duplicate);
        jw_kbool(&w, "reorder", cf->reorder);
        jw_kint(&w, "retries", cf->retries);
        jw_kint(&w, "retry_delay_ms", cf->retry_delay_ms);
        jw_kint(&w, "timeout_ms", cf->timeout_ms);
        jw_obj_end(&w);
    }
    jw_arr_end(&w);
    jw_key(&w, "stats");
    jw_obj_begin(&w);
    jw_kint(&w, "events", c ? (long long)c->events : 0);
    jw_kint(&w, "posts", c ? (long long)c->posts : 0);
    jw_kint(&w, "delivered", c ? (long long)c->delivered : 0);
    jw_kint(&w, "retried", c ? (long long)c->retried : 0);
    jw_kint(&w, "refused", c ? (long long)c->refused : 0);
    jw_kint(&w, "failed", c ? (long long)c->failed : 0);
    jw_kint(&w, "pending", c ? (long long)c->inflight : 0);
    jw_obj_end(&w);
    jw_obj_end(&w);
    if (b.oom)
        http_reply_error(r, 500, "out_of_memory", "out of memory");
    else
        http_reply(r, 200, "application/json", b.data, b.len);
    buf_free(&b);
}

void sim_callbacks_on_get(http_req *r, void *arg)
{
    reply_conf(arg, r);
}

static int num(json_object *o, const char *key, double lo, double hi, double *out)
{
    json_object *v;
    if (!json_object_object_get_ex(o, key, &v))
        return 0;
    if (!json_object_is_type(v, json_type_int) && !json_object_is_type(v, json_type_double))
        return -1;
    *out = json_object_get_double(v);
    return *out < lo || *out > hi ? -1 : 0;
}

void sim_callbacks_on_post(http_req *r, void *arg)
{
    sim *s = arg;
    sim_callbacks *c = get(s);
    size_t len = 0;
    const char *body = http_req_body(r, &len);
    json_object *o = body ? json_tokener_parse(body) : NULL, *v;
    cb_conf cf = {.retries = 3, .retry_delay_ms = 1000, .timeout_ms = 5000};
    double d;
    int only = -1, off = 0;
    const char *bad = NULL;

    if (!c) {
        http_reply_error(r, 500, "out_of_memory", "out of memory");
        json_object_put(o);
        return;
    }
    if (!o || !json_object_is_type(o, json_type_object)) {
        http_reply_error(r, 400, "bad_request", "the body must be a JSON object");
        json_object_put(o);
        return;
    }
    if (json_object_object_get_ex(o, "corp_id", &v)) {
        sim_corp *corp = sim_dir_corp(&s->dir, json_object_get_string(v));
        if (!corp) {
            http_reply_error(r, 404, "not_found", "corp_id: unknown enterprise");
            json_object_put(o);
            return;
        }
        only = corp->index - 1;
    }
    if (!json_object_object_get_ex(o, "url", &v))
        bad = "url is required (null turns callbacks off)";
    else if (json_object_is_type(v, json_type_null))
        off = 1;
    else if (!json_object_is_type(v, json_type_string) ||
             strlen(json_object_get_string(v)) >= sizeof cf.url ||
             strncmp(json_object_get_string(v), "http", 4) != 0)
        bad = "url must be an http(s) URL";
    else
        snprintf(cf.url, sizeof cf.url, "%s", json_object_get_string(v));
    if (!bad && !off) {
        if (!json_object_object_get_ex(o, "token", &v) ||
            !json_object_is_type(v, json_type_string) ||
            strlen(json_object_get_string(v)) >= sizeof cf.token || !json_object_get_string(v)[0])
            bad = "token must be a non-empty string";
        else
            snprintf(cf.token, sizeof cf.token, "%s", json_object_get_string(v));
    }
    if (!bad && !off) {
        if (!json_object_object_get_ex(o, "aeskey", &v) ||
            !json_object_is_type(v, json_type_string) ||
            msgcrypt_key(json_object_get_string(v), cf.key) != 0)
            bad = "aeskey must be an EncodingAESKey (43 of A-Z a-z 0-9)";
        else
            snprintf(cf.aeskey, sizeof cf.aeskey, "%s", json_object_get_string(v));
    }
    if (!bad && num(o, "duplicate", 0, 1, &cf.duplicate))
        bad = "duplicate must be a number from 0 to 1";
    if (!bad && json_object_object_get_ex(o, "reorder", &v))
        cf.reorder = json_object_get_boolean(v);
    if (!bad && num(o, "retries", 0, 10, &d) == 0)
        cf.retries = json_object_object_get_ex(o, "retries", NULL) ? (int)d : cf.retries;
    else if (!bad)
        bad = "retries must be 0..10";
    if (!bad && num(o, "retry_delay_ms", 0, 60000, &d) == 0)
        cf.retry_delay_ms =
            json_object_object_get_ex(o, "retry_delay_ms", NULL) ? (int)d : cf.retry_delay_ms;
    else if (!bad)
        bad = "retry_delay_ms must be 0..60000";
    if (!bad && num(o, "timeout_ms", 1, 60000, &d) == 0)
        cf.timeout_ms = json_object_object_get_ex(o, "timeout_ms", NULL) ? (int)d : cf.timeout_ms;
    else if (!bad)
        bad = "timeout_ms must be 1..60000";
    json_object_put(o);
    if (bad) {
        http_reply_error(r, 400, "bad_request", bad);
        return;
    }
    if (off)
        memset(&cf, 0, sizeof cf);
    for (int i = 0; i < s->dir.ncorps; i++)
        if (only < 0 || i == only)
            c->conf[i] = cf;
    log_info("callbacks set", LF_S("corp_id", only >= 0 ? s->dir.corps[only].corp_id : "*"),
             LF_S("url", cf.url));
    reply_conf(s, r);
}

void sim_callbacks_close(sim *s)
{
    sim_callbacks *c = s->callbacks;
    if (!c)
        return;
    c->closing = 1;
    /* Posts in flight come back with an error (and are not retried); sends
     * waiting on a retry timer are closed now. */
    http_client_close(c->http, NULL, NULL);
    c->http = NULL;
}

void sim_callbacks_free(sim *s)
{
    sim_callbacks *c = s->callbacks;
    if (!c)
        return;
    free(c->conf);
    free(c);
    s->callbacks = NULL;
}
