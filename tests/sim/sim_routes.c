/* The simulator's HTTP face: the WeCom API subset and the /sim/ control routes.
 *
 * One API request is judged in this order, all at its arrival time:
 *   1. who: gettoken by ?corpid, the others by their token's enterprise (an expired
 *      token still names it; an unknown token names none), and which credential the
 *      token belongs to (the app's or the contact-sync one);
 *   2. rate: the arrival joins the enterprise's window; over --rate in the trailing
 *      second answers 45009 (refused arrivals count too, like the real upstream,
 *      unless --count-rejected 0);
 *   3. concurrency: more than --max-inflight requests in flight on this path answer
 *      45009 (or --inflight-errcode, e.g. 45033);
 *   4. per source IP: every API arrival joins its address's minute and hour windows;
 *      over --ip-per-min / --ip-per-hour answers 45009;
 *   5. token: missing 41001, unknown 40014, expired 42001;
 *   6. policy: an app token from an address outside trusted_ips 60020; a contact token
 *      on a legacy API from outside contact_legacy_ips 48009; an app token outside its
 *      visible range 60011;
 *   7. faults (hang, HTTP 500, errcode -1, malformed body), then the answer itself,
 *      where a failing department's user/list answers --fail-dept-errcode;
 *   8. latency: every API answer waits latency + jitter on a uv timer.
 * A hung request is never answered and leaves the in-flight count at once. */
#include "tests/sim/sim.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "common/http_server.h"
#include "common/log.h"
#include "common/timeutil.h"

static const char JSON_CT[] = "application/json; charset=UTF-8";
static const char HTML_CT[] = "text/html";
static const char BODY_500[] = "<html><body><h1>500 Internal Server Error</h1></body></html>";

struct sim_delayed {
    uv_timer_t timer;
    sim *s;
    http_req *req;
    sim_delayed *prev, *next;
    int status, port, corp;
    sim_path path;
    char ip[48];
    const char *ctype;
    size_t len;
    char body[];
};

static void reply_buf(http_req *r, buf *b);

/* ---- answering ---- */

static const char *errmsg_for(int code)
{
    switch (code) {
    case 0:
        return "ok";
    case -1:
        return "system busy";
    case 40001:
        return "invalid credential";
    case 40013:
        return "invalid corpid";
    case 40014:
        return "invalid access_token";
    case 40058:
        return "invalid parameter";
    case 41001:
        return "access_token missing";
    case 41002:
        return "corpid missing";
    case 41004:
        return "corpsecret missing";
    case 41009:
        return "missing userid";
    case 42001:
        return "access_token expired";
    case 45009:
        return "api freq out of limit";
    case 45033:
        return "api concurrent out of limit";
    case 46004:
        return "user no exist";
    case 48002:
        return "api forbidden (no permission for this api)";
    case 48009:
        return "api forbidden";
    case 60003:
        return "department not found";
    case 60011:
        return "no privilege to access/modify contact/party/agent ";
    case 60020:
        return "not allow to access from your ip";
    case 60111:
        return "userid not found";
    default:
        return "error";
    }
}

static void inflight_leave(sim *s, sim_path path, int port, int corp, const char *ip)
{
    if (s->lim.inflight[path] > 0)
        s->lim.inflight[path]--;
    sim_stats_inflight_ip(&s->stats, port, corp, ip, -1);
}

static void delayed_closed(uv_handle_t *h)
{
    free(h->data);
}

static void delayed_unlink(sim_delayed *d)
{
    if (d->prev)
        d->prev->next = d->next;
    else
        d->s->pending = d->next;
    if (d->next)
        d->next->prev = d->prev;
}

static void delayed_fire(uv_timer_t *t)
{
    sim_delayed *d = t->data;
    delayed_unlink(d);
    http_reply(d->req, d->status, d->ctype, d->body, d->len);
    inflight_leave(d->s, d->path, d->port, d->corp, d->ip);
    uv_close((uv_handle_t *)&d->timer, delayed_closed);
}

/* Answers now, or after the configured latency (the body is copied either way). */
static void api_send(sim *s, http_req *r, const sim_hit *h, int status, const char *ctype,
                     const char *body, size_t len)
{
    uint32_t delay = sim_faults_delay_ms(&s->faults, &s->fault_rng);
    sim_delayed *d;
    if (delay == 0 || s->closing)
        goto now;
    d = malloc(sizeof(*d) + len);
    if (!d)
        goto now; /* no memory for a delay: answer at once rather than never */
    if (uv_timer_init(s->loop, &d->timer) != 0) {
        free(d);
        goto now;
    }
    d->timer.data = d;
    d->s = s;
    d->req = r;
    d->status = status;
    d->port = h->port;
    d->corp = h->corp;
    d->path = h->path;
    snprintf(d->ip, sizeof(d->ip), "%s", h->ip ? h->ip : "");
    d->ctype = ctype;
    d->len = len;
    memcpy(d->body, body, len);
    d->prev = NULL;
    d->next = s->pending;
    if (s->pending)
        s->pending->prev = d;
    s->pending = d;
    uv_timer_start(&d->timer, delayed_fire, delay, 0);
    return;
now:
    http_reply(r, status, ctype, body, len);
    inflight_leave(s, h->path, h->port, h->corp, h->ip);
}

void sim_routes_shutdown(sim *s)
{
    sim_callbacks_close(s);
    while (s->pending) {
        sim_delayed *d = s->pending;
        delayed_unlink(d);
        uv_timer_stop(&d->timer);
        uv_close((uv_handle_t *)&d->timer, delayed_closed);
    }
}

/* Writes {"errcode":N,"errmsg":"..."} into scratch. */
static void error_body(sim *s, int code)
{
    buf_reset(&s->scratch);
    buf_printf(&s->scratch,
               "{\"errcode\":%d,\"errmsg\":\"%s, more info at "
               "https://open.work.weixin.qq.com/devtool/query?e=%d\"}",
               code, errmsg_for(code), code);
}

/* Today's upstream shape: {"errcode":N,"errmsg":"<msg>, hint: [<request id>], from ip:
 * <ip>, more info at https://open.work.weixin.qq.com/devtool/query?e=N"}, into scratch.
 * msg and ip need no escaping (fixed text, an address). */
static void error_body_ip(sim *s, int code, const char *msg, const char *ip)
{
    uint64_t seq = ++s->hint_seq;
    buf_reset(&s->scratch);
    buf_printf(&s->scratch,
               "{\"errcode\":%d,\"errmsg\":\"%s, hint: [%llu_%llu_%08llx], from ip: %s, more "
               "info at https://open.work.weixin.qq.com/devtool/query?e=%d\"}",
               code, msg, (unsigned long long)(time_wall_ms() / 1000), (unsigned long long)seq,
               (unsigned long long)(sim_mix(seq, 0x68696e74) & 0xffffffffULL),
               ip && *ip ? ip : "unknown", code);
}

/* ---- the API answers proper (after limits, tokens and faults) ---- */

typedef struct answer {
    int status;
    const char *ctype;
    const char *body;
    size_t len;
} answer;

static void answer_code(sim *s, sim_hit *h, answer *a, int code)
{
    error_body(s, code);
    h->errcode = code;
    a->body = s->scratch.data;
    a->len = s->scratch.len;
}

/* An error in today's shape, with a hint and the source address. */
static void answer_code_ip(sim *s, sim_hit *h, answer *a, int code, const char *msg)
{
    error_body_ip(s, code, msg ? msg : errmsg_for(code), h->ip);
    h->errcode = code;
    a->body = s->scratch.data;
    a->len = s->scratch.len;
}

static void answer_oom(sim *s, sim_hit *h, answer *a)
{
    /* The real upstream's answer to trouble on its side. */
    answer_code(s, h, a, -1);
}

/* A decimal id, or -1. */
static long parse_id(const char *v)
{
    char *end = NULL;
    if (!v || *v < '0' || *v > '9')
        return -1;
    errno = 0;
    long x = strtol(v, &end, 10);
    return (*end || errno || x > 2000000000L) ? -1 : x;
}

static void do_gettoken(sim *s, http_req *r, sim_corp *c, sim_hit *h, answer *a, uint64_t now)
{
    const char *secret = http_req_query(r, "corpsecret"), *tok;
    uint32_t expires_in;
    int fresh;
    if (!secret || !*secret) {
        answer_code(s, h, a, 41004);
        return;
    }
    sim_cred cred = strcmp(secret, c->secret) == 0           ? SIM_CRED_APP
                    : strcmp(secret, c->contact_secret) == 0 ? SIM_CRED_CONTACT
                                                             : SIM_CRED_COUNT;
    if (cred == SIM_CRED_COUNT) {
        answer_code(s, h, a, 40001);
        return;
    }
    if (sim_limits_cred_token(&s->lim, c->index - 1, cred, now, &tok, &expires_in, &fresh) != 0) {
        answer_oom(s, h, a);
        return;
    }
    h->token_issued = fresh;
    h->errcode = 0;
    buf_reset(&s->scratch);
    buf_printf(&s->scratch,
               "{\"errcode\":0,\"errmsg\":\"ok\",\"access_token\":\"%s\",\"expires_in\":%u}", tok,
               expires_in);
    a->body = s->scratch.data;
    a->len = s->scratch.len;
}

/* The optional ?id= of the department APIs: 0 when absent, -1 when not a number. */
static long query_id(http_req *r)
{
    const char *idv = http_req_query(r, "id");
    return idv && *idv ? parse_id(idv) : 0;
}

/* vis: the app token's visible range (NULL: everything). Without an id, only the
 * departments in range; an id was checked against the range before. */
static void do_dept_list(sim *s, http_req *r, sim_corp *c, sim_hit *h, answer *a,
                         const sim_deptset *vis)
{
    long id = query_id(r);
    int err;
    if (id < 0) {
        answer_code(s, h, a, 40058);
        return;
    }
    if (id == 0 && vis)
        err = sim_corp_dept_list_visible(c, vis, &s->scratch, &a->body, &a->len);
    else
        err = sim_corp_dept_list(c, (int)id, &s->scratch, &a->body, &a->len);
    if (err == -ENOENT) {
        answer_code(s, h, a, 60003);
        return;
    }
    if (err) {
        answer_oom(s, h, a);
        return;
    }
    h->errcode = 0;
}

static int fails_dept(const sim *s, const sim_corp *c, int dept)
{
    const sim_faults *f = &s->faults;
    return f->fail_dept > 0 && f->fail_dept == dept &&
           (!f->fail_dept_corp[0] || strcmp(f->fail_dept_corp, c->corp_id) == 0);
}

/* lite: the app is new (policy app_new): members without mobile, email, ... */
static void do_user_list(sim *s, sim_corp *c, sim_hit *h, answer *a, int lite)
{
    /* fetch_child (sent by SDKs) is accepted and ignored: one department's members. */
    if (h->dept <= 0) {
        answer_code(s, h, a, h->dept == 0 ? 40058 : 60003);
        return;
    }
    if (fails_dept(s, c, h->dept)) {
        h->fault = SIM_F_FAIL_DEPT;
        if (s->faults.fail_dept_errcode == 500) {
            a->status = 500;
            a->ctype = HTML_CT;
            a->body = BODY_500;
            a->len = sizeof(BODY_500) - 1;
            return;
        }
        {
            answer_code(s, h, a, s->faults.fail_dept_errcode);
            return;
        }
    }
    int err = lite ? sim_corp_user_list_lite(c, h->dept, &a->body, &a->len)
                   : sim_corp_user_list(c, h->dept, &a->body, &a->len);
    if (err == -ENOENT) {
        answer_code(s, h, a, 60003);
        return;
    }
    if (err) {
        answer_oom(s, h, a);
        return;
    }
    h->errcode = 0;
}

static void do_user_get(sim *s, http_req *r, sim_corp *c, sim_hit *h, answer *a, int lite)
{
    const char *userid = http_req_query(r, "userid");
    if (!userid || !*userid) {
        answer_code(s, h, a, 41009);
        return;
    }
    int err = lite ? sim_corp_user_get_lite(c, userid, &s->scratch)
                   : sim_corp_user_get(c, userid, &s->scratch);
    if (err == -ENOENT) {
        answer_code(s, h, a, 60111);
        return;
    }
    if (err) {
        answer_oom(s, h, a);
        return;
    }
    h->errcode = 0;
    a->body = s->scratch.data;
    a->len = s->scratch.len;
}

static void do_getuserid(sim *s, http_req *r, sim_corp *c, sim_hit *h, answer *a)
{
    size_t len = 0;
    const char *body = http_req_body(r, &len);
    json_object *root = body && len ? json_tokener_parse(body) : NULL, *v;
    const char *mobile = NULL;
    if (root && json_object_object_get_ex(root, "mobile", &v) &&
        json_object_is_type(v, json_type_string))
        mobile = json_object_get_string(v);
    if (!mobile || !*mobile) {
        json_object_put(root);
        {
            answer_code(s, h, a, 40058);
            return;
        }
    }
    sim_user *u = sim_corp_find_mobile(c, mobile);
    json_object_put(root);
    if (!u) {
        answer_code(s, h, a, 46004);
        return;
    }
    h->errcode = 0;
    buf_reset(&s->scratch);
    buf_printf(&s->scratch, "{\"errcode\":0,\"errmsg\":\"ok\",\"userid\":");
    buf_json_str(&s->scratch, u->userid, strlen(u->userid));
    buf_puts(&s->scratch, "}");
    a->body = s->scratch.data;
    a->len = s->scratch.len;
}

/* The {"cursor","limit"} body of user/list_id: 0, or a message for 40058. */
static const char *list_id_params(json_object *root, const char **cursor, long long *limit)
{
    json_object *v;
    *cursor = NULL;
    *limit = SIM_LIST_ID_MAX;
    if (!root)
        return NULL;
    if (json_object_object_get_ex(root, "limit", &v) && v) {
        *limit = json_object_is_type(v, json_type_int) ? json_object_get_int64(v) : 0;
        if (*limit < 1 || *limit > SIM_LIST_ID_MAX)
            return "invalid parameter (limit must be an integer 1..10000)";
    }
    if (json_object_object_get_ex(root, "cursor", &v) && v) {
        if (!json_object_is_type(v, json_type_string))
            return "invalid parameter (cursor must be a string)";
        *cursor = json_object_get_string(v);
    }
    return NULL;
}

static void do_list_id(sim *s, http_req *r, sim_corp *c, sim_hit *h, answer *a,
                       const sim_deptset *vis)
{
    size_t len = 0;
    const char *body = http_req_body(r, &len), *cursor = NULL, *bad = NULL;
    json_object *root = body && len ? json_tokener_parse(body) : NULL;
    long long limit = SIM_LIST_ID_MAX;
    int err = 0;
    if (body && len && (!root || !json_object_is_type(root, json_type_object)))
        bad = "invalid parameter (the body must be a JSON object)";
    if (!bad)
        bad = list_id_params(root, &cursor, &limit);
    if (!bad) {
        if (s->lim.list_id_page_max && limit > s->lim.list_id_page_max)
            limit = s->lim.list_id_page_max;
        err = sim_corp_list_id(c, cursor, (uint32_t)limit, vis, &s->scratch);
        if (err == -EINVAL)
            bad = "invalid parameter (cursor was not issued for this enterprise)";
    }
    json_object_put(root);
    if (bad) {
        answer_code_ip(s, h, a, 40058, bad);
        return;
    }
    if (err) {
        answer_oom(s, h, a);
        return;
    }
    h->errcode = 0;
    a->body = s->scratch.data;
    a->len = s->scratch.len;
}

static void do_simplelist(sim *s, http_req *r, sim_corp *c, sim_hit *h, answer *a,
                          const sim_deptset *vis)
{
    long id = query_id(r);
    if (id < 0) {
        answer_code(s, h, a, 40058);
        return;
    }
    int err = sim_corp_dept_simplelist(c, (int)id, id ? NULL : vis, &s->scratch);
    if (err) {
        if (err == -ENOENT)
            answer_code(s, h, a, 60003);
        else
            answer_oom(s, h, a);
        return;
    }
    h->errcode = 0;
    a->body = s->scratch.data;
    a->len = s->scratch.len;
}

static void do_dept_get(sim *s, http_req *r, sim_corp *c, sim_hit *h, answer *a)
{
    long id = query_id(r);
    if (id <= 0) {
        answer_code(s, h, a, 40058);
        return;
    }
    int err = sim_corp_dept_get(c, (int)id, &s->scratch);
    if (err) {
        if (err == -ENOENT)
            answer_code(s, h, a, 60003);
        else
            answer_oom(s, h, a);
        return;
    }
    h->errcode = 0;
    a->body = s->scratch.data;
    a->len = s->scratch.len;
}

/* ---- export jobs (sim_export.c) ---- */

/* export/user and export/simple_user: POST {"encoding_aeskey", "block_size"}. */
static void do_export(sim *s, http_req *r, sim_corp *c, sim_cred cred, sim_hit *h, answer *a,
                      uint64_t now)
{
    size_t len = 0;
    const char *body = http_req_body(r, &len), *key = NULL, *bad = NULL;
    json_object *root = body && len ? json_tokener_parse(body) : NULL, *v;
    long long block = 1000000;
    sim_export_job *job = NULL;

    if (s->exp.refuse) {
        json_object_put(root);
        s->exp.refused++;
        answer_code_ip(s, h, a, s->exp.refuse, NULL);
        return;
    }
    if (!root || !json_object_is_type(root, json_type_object))
        bad = "invalid parameter (the body must be a JSON object)";
    if (!bad && json_object_object_get_ex(root, "encoding_aeskey", &v) &&
        json_object_is_type(v, json_type_string))
        key = json_object_get_string(v);
    if (!bad && !sim_export_key_ok(key))
        bad = "invalid parameter (encoding_aeskey must be 43 characters of [A-Za-z0-9])";
    if (!bad && json_object_object_get_ex(root, "block_size", &v)) {
        block = json_object_is_type(v, json_type_int) ? json_object_get_int64(v) : -1;
        if (block < 10000 || block > 1000000)
            bad = "invalid parameter (block_size must be an integer 10000..1000000)";
    }
    if (!bad && sim_exports_create(&s->exp, c->index - 1, cred, h->path == SIM_P_EXPORT_SIMPLE_USER,
                                   (uint32_t)block, key, now, &job) != 0) {
        json_object_put(root);
        answer_oom(s, h, a);
        return;
    }
    json_object_put(root);
    if (bad) {
        answer_code_ip(s, h, a, 40058, bad);
        return;
    }
    log_info("export job created", LF_S("corp_id", c->corp_id), LF_S("jobid", job->jobid),
             LF_S("credential", sim_cred_names[cred]), LF_I("block_size", (long long)block));
    h->errcode = 0;
    buf_reset(&s->scratch);
    buf_printf(&s->scratch, "{\"errcode\":0,\"errmsg\":\"ok\",\"jobid\":\"%s\"}", job->jobid);
    a->body = s->scratch.data;
    a->len = s->scratch.len;
}

/* export/get_result?jobid=: only the credential that created the job may poll it. */
static void do_export_result(sim *s, http_req *r, sim_corp *c, sim_cred cred, sim_hit *h, answer *a,
                             uint64_t now)
{
    sim_export_job *j = sim_exports_find(&s->exp, http_req_query(r, "jobid"));
    const char *host = http_req_header(r, "Host");
    int st;

    s->exp.polls++;
    if (!j || j->corp != c->index - 1) {
        answer_code_ip(s, h, a, 40058, "invalid parameter (unknown jobid)");
        return;
    }
    if (j->cred != cred) {
        s->exp.polls_wrong_cred++;
        answer_code_ip(s, h, a, 40058,
                       "invalid parameter (the job must be polled with the credential that "
                       "created it)");
        return;
    }
    st = sim_export_status(&s->exp, j, now);
    if (st == 2 && sim_export_build(&s->exp, &s->dir, j, now) != 0) {
        answer_oom(s, h, a);
        return;
    }
    h->errcode = 0;
    buf_reset(&s->scratch);
    buf_printf(&s->scratch, "{\"errcode\":0,\"errmsg\":\"ok\",\"status\":%d", st);
    if (st == 2) {
        buf_puts(&s->scratch, ",\"data_list\":[");
        for (int i = 0; i < j->nparts; i++)
            buf_printf(&s->scratch,
                       "%s{\"url\":\"http://%s/sim/export-file/%s\",\"size\":%zu,"
                       "\"md5\":\"%s\"}",
                       i ? "," : "", host && *host ? host : "127.0.0.1", j->parts[i].token,
                       j->parts[i].len,
                       s->exp.bad_md5 ? "0123456789abcdef0123456789abcdef" : j->parts[i].md5);
        buf_puts(&s->scratch, "]");
    }
    buf_puts(&s->scratch, "}");
    a->body = s->scratch.data;
    a->len = s->scratch.len;
}

/* ---- policy: trusted IPs (60020), legacy APIs (48009), visible range (60011) ---- */

static int legacy_path(sim_path p)
{
    return p == SIM_P_DEPT_LIST || p == SIM_P_USER_LIST || p == SIM_P_USER_GET;
}

static int known_dept(const sim_corp *c, long id)
{
    return id >= 1 && id <= c->max_dept && c->depts[id].alive;
}

/* Whether what an app-token request names is in its visible range. Only existing
 * departments and members are judged: a malformed or unknown one gets its usual
 * answer (40058, 60003, 60111). */
static int in_range(http_req *r, sim_corp *c, const sim_deptset *vis, const sim_hit *h)
{
    long id;
    switch (h->path) {
    case SIM_P_USER_LIST:
        return !known_dept(c, h->dept) || sim_corp_dept_in(c, vis, h->dept);
    case SIM_P_DEPT_LIST:
    case SIM_P_DEPT_SIMPLELIST:
    case SIM_P_DEPT_GET:
        id = query_id(r);
        return !known_dept(c, id) || sim_corp_dept_in(c, vis, (int)id);
    case SIM_P_USER_GET: {
        sim_user *u = sim_corp_find_user(c, http_req_query(r, "userid"));
        return !u || sim_corp_user_in(c, vis, u);
    }
    default:
        return 1;
    }
}

/* 60020, then 48009, then 60011: 1 if the request may go on, else the answer is set. */
static int policy_admits(sim *s, http_req *r, sim_corp *c, sim_cred cred, sim_hit *h, answer *a)
{
    const sim_policy *p = &s->policy[c->index - 1];
    if (h->path == SIM_P_GETTOKEN)
        return 1;
    if (cred == SIM_CRED_APP && !sim_policy_trusted(p, h->ip)) {
        h->untrusted_ip = 1;
        answer_code_ip(s, h, a, 60020, NULL);
    } else if (cred == SIM_CRED_CONTACT && legacy_path(h->path) &&
               !sim_policy_legacy_allowed(p, h->ip)) {
        h->forbidden = 1;
        answer_code_ip(s, h, a, 48009, NULL);
    } else if (cred == SIM_CRED_APP && p->visible_set && !in_range(r, c, &p->visible, h)) {
        h->no_privilege = 1;
        answer_code_ip(s, h, a, 60011, NULL);
    } else {
        return 1;
    }
    if (log_enabled(LOG_DEBUG))
        log_debug("refused by policy", LF_S("corp_id", c->corp_id),
                  LF_S("path", sim_path_names[h->path]), LF_S("credential", sim_cred_names[cred]),
                  LF_S("ip", h->ip), LF_I("errcode", h->errcode));
    return 0;
}

/* ---- the API request pipeline ---- */

static sim_corp *identify(sim *s, http_req *r, sim_path path, uint64_t now, sim_tok_state *ts,
                          const char **tok, sim_cred *cred)
{
    int ci = -1;
    if (path == SIM_P_GETTOKEN)
        return sim_dir_corp(&s->dir, http_req_query(r, "corpid"));
    *tok = http_req_query(r, "access_token");
    *ts = *tok && **tok ? sim_limits_check_cred_token(&s->lim, *tok, now, &ci, cred)
                        : SIM_TOK_UNKNOWN;
    return *ts == SIM_TOK_UNKNOWN ? NULL : &s->dir.corps[ci];
}

/* The answer proper, for a request that passed every check and drew no fault that
 * replaces it. */
static void dispatch(sim *s, http_req *r, sim_corp *c, sim_cred cred, sim_hit *h, answer *a,
                     uint64_t now)
{
    const sim_policy *p = &s->policy[c->index - 1];
    const sim_deptset *vis = cred == SIM_CRED_APP && p->visible_set ? &p->visible : NULL;
    int lite = cred == SIM_CRED_APP && p->app_new;
    switch (h->path) {
    case SIM_P_GETTOKEN:
        do_gettoken(s, r, c, h, a, now);
        break;
    case SIM_P_DEPT_LIST:
        do_dept_list(s, r, c, h, a, vis);
        break;
    case SIM_P_USER_LIST:
        do_user_list(s, c, h, a, lite);
        break;
    case SIM_P_USER_GET:
        do_user_get(s, r, c, h, a, lite);
        break;
    case SIM_P_GETUSERID:
        do_getuserid(s, r, c, h, a);
        break;
    case SIM_P_USER_LIST_ID:
        do_list_id(s, r, c, h, a, vis);
        break;
    case SIM_P_DEPT_SIMPLELIST:
        do_simplelist(s, r, c, h, a, vis);
        break;
    case SIM_P_EXPORT_USER:
    case SIM_P_EXPORT_SIMPLE_USER:
        do_export(s, r, c, cred, h, a, now);
        break;
    case SIM_P_EXPORT_GET_RESULT:
        do_export_result(s, r, c, cred, h, a, now);
        break;
    default:
        do_dept_get(s, r, c, h, a);
        break;
    }
}

static void answer_ip_limit(sim *s, sim_hit *h, answer *a, int verdict)
{
    char msg[128];
    int hour = verdict == SIM_IP_OVER_HOUR;
    snprintf(msg, sizeof(msg), "api freq out of limit (more than %s=%u calls from one ip in %s)",
             hour ? "ip_per_hour" : "ip_per_min", hour ? s->lim.ip_per_hour : s->lim.ip_per_min,
             hour ? "3600 s" : "60 s");
    h->ip_violation = 1;
    answer_code_ip(s, h, a, 45009, msg);
    if (log_enabled(LOG_INFO))
        log_info("per-ip limit violated", LF_S("ip", h->ip), LF_S("path", sim_path_names[h->path]),
                 LF_S("window", hour ? "3600s" : "60s"),
                 LF_I("limit", hour ? s->lim.ip_per_hour : s->lim.ip_per_min));
}

static void api(sim *s, http_req *r, sim_path path)
{
    uint64_t now = time_mono_us();
    sim_tok_state ts = SIM_TOK_OK;
    sim_cred cred = SIM_CRED_APP;
    const char *tok = NULL;
    char ip[48];
    answer a = {200, JSON_CT, NULL, 0};
    sim_hit h = {.port = sim_stats_port_index(&s->stats, http_req_local_port(r)),
                 .corp = -1,
                 .path = path,
                 .errcode = SIM_NO_CODE,
                 .ip = ip};
    if (http_req_peer(r, ip, sizeof(ip)) != 0)
        ip[0] = '\0';
    sim_corp *c = identify(s, r, path, now, &ts, &tok, &cred);
    if (c)
        h.corp = c->index - 1;
    if (path == SIM_P_USER_LIST) {
        const char *dv = http_req_query(r, "department_id");
        h.dept = dv ? (int)parse_id(dv) : 0;
    }
    s->lim.inflight[path]++;
    sim_stats_inflight_ip(&s->stats, h.port, h.corp, ip, +1);
    /* Every API arrival joins its address's windows, whatever else refuses it. */
    int ipv = sim_limits_ip_arrive(&s->lim, ip, now);

    if (c && !sim_limits_arrive(&s->lim, h.corp, now)) {
        h.violation = 1;
        answer_code(s, &h, &a, 45009);
        if (log_enabled(LOG_INFO))
            log_info("rate limit violated", LF_S("corp_id", c->corp_id),
                     LF_S("path", sim_path_names[path]), LF_I("rate", s->lim.rate));
    } else if (s->lim.inflight[path] > s->lim.max_inflight) {
        h.inflight_violation = 1;
        answer_code(s, &h, &a, s->lim.inflight_errcode);
        if (log_enabled(LOG_INFO))
            log_info("concurrency limit violated", LF_S("path", sim_path_names[path]),
                     LF_I("in_flight", s->lim.inflight[path]));
    } else if (ipv != SIM_IP_OK) {
        answer_ip_limit(s, &h, &a, ipv);
    } else if (path != SIM_P_GETTOKEN && (!tok || !*tok)) {
        answer_code(s, &h, &a, 41001);
    } else if (path != SIM_P_GETTOKEN && ts != SIM_TOK_OK) {
        answer_code(s, &h, &a, ts == SIM_TOK_EXPIRED ? 42001 : 40014);
    } else if (!c) {
        const char *corpid = http_req_query(r, "corpid");
        answer_code(s, &h, &a, corpid && *corpid ? 40013 : 41002);
    } else if (policy_admits(s, r, c, cred, &h, &a)) {
        h.fault = sim_faults_pick(&s->faults, path, &s->fault_rng);
        switch (h.fault) {
        case SIM_F_HANG:
            /* Never answered: the request leaves the books now, the server frees it
             * when the client gives up and closes. */
            sim_stats_record(&s->stats, &h, now);
            inflight_leave(s, path, h.port, h.corp, ip);
            return;
        case SIM_F_HTTP500:
            a.status = 500;
            a.ctype = HTML_CT;
            a.body = BODY_500;
            a.len = sizeof(BODY_500) - 1;
            break;
        case SIM_F_BUSY:
            answer_code(s, &h, &a, -1);
            break;
        default:
            dispatch(s, r, c, cred, &h, &a, now);
            if (h.fault == SIM_F_MALFORMED) {
                /* Half of the real answer: a body that stops mid-JSON. */
                a.len = a.len > 1 ? a.len / 2 : a.len;
                h.errcode = SIM_NO_CODE;
            }
            break;
        }
    }
    if (!a.body) {
        /* Only an allocation failure while writing an error leaves no body. */
        a.body = "{\"errcode\":-1,\"errmsg\":\"system busy\"}";
        a.len = strlen(a.body);
    }
    sim_stats_record(&s->stats, &h, now);
    api_send(s, r, &h, a.status, a.ctype, a.body, a.len);
}

static void on_gettoken(http_req *r, void *arg)
{
    api(arg, r, SIM_P_GETTOKEN);
}

static void on_dept_list(http_req *r, void *arg)
{
    api(arg, r, SIM_P_DEPT_LIST);
}

static void on_user_list(http_req *r, void *arg)
{
    api(arg, r, SIM_P_USER_LIST);
}

static void on_user_get(http_req *r, void *arg)
{
    api(arg, r, SIM_P_USER_GET);
}

static void on_getuserid(http_req *r, void *arg)
{
    api(arg, r, SIM_P_GETUSERID);
}

static void on_list_id(http_req *r, void *arg)
{
    api(arg, r, SIM_P_USER_LIST_ID);
}

static void on_simplelist(http_req *r, void *arg)
{
    api(arg, r, SIM_P_DEPT_SIMPLELIST);
}

static void on_dept_get(http_req *r, void *arg)
{
    api(arg, r, SIM_P_DEPT_GET);
}

static void on_export_user(http_req *r, void *arg)
{
    api(arg, r, SIM_P_EXPORT_USER);
}

static void on_export_simple_user(http_req *r, void *arg)
{
    api(arg, r, SIM_P_EXPORT_SIMPLE_USER);
}

static void on_export_result(http_req *r, void *arg)
{
    api(arg, r, SIM_P_EXPORT_GET_RESULT);
}

/* "bytes=a-b" or "bytes=a-" within total: 0 and [*from, *to], else -1. */
static int parse_range(const char *h, size_t total, size_t *from, size_t *to)
{
    char *end;
    unsigned long long a, b;
    if (strncmp(h, "bytes=", 6) != 0 || h[6] < '0' || h[6] > '9')
        return -1;
    a = strtoull(h + 6, &end, 10);
    if (*end++ != '-')
        return -1;
    if (*end == '\0')
        b = total ? total - 1 : 0;
    else {
        if (*end < '0' || *end > '9')
            return -1;
        b = strtoull(end, &end, 10);
        if (*end)
            return -1;
        if (b >= total)
            b = total - 1;
    }
    if (a >= total || a > b)
        return -1;
    *from = (size_t)a;
    *to = (size_t)b;
    return 0;
}

/* A file of a finished export: whole, or the Range asked for (206). Expired
 * URLs answer 403, like a storage service's signed URL past its time. */
static void on_export_file(http_req *r, void *arg)
{
    sim *s = arg;
    sim_export_job *j = NULL;
    sim_export_part *p = sim_exports_file(&s->exp, http_req_param(r, "token"), &j);
    const char *range = http_req_header(r, "Range");
    size_t from = 0, to = 0;
    char cr[96];

    s->exp.file_requests++;
    if (!p) {
        http_reply_error(r, 404, "not_found", "no such file");
        return;
    }
    if (time_mono_us() >= j->expires_us) {
        s->exp.file_expired++;
        http_reply_error(r, 403, "forbidden", "the URL has expired");
        return;
    }
    if (s->exp.file_fail_next && s->exp.file_fail_after)
        s->exp.file_fail_after--;
    else if (s->exp.file_fail_next) {
        s->exp.file_fail_next--;
        s->exp.file_faults++;
        http_reply(r, 500, HTML_CT, BODY_500, sizeof(BODY_500) - 1);
        return;
    }
    if (!range) {
        s->exp.file_bytes += p->len;
        http_reply(r, 200, "application/octet-stream", (const char *)p->data, p->len);
        return;
    }
    s->exp.file_ranges++;
    if (parse_range(range, p->len, &from, &to) != 0) {
        snprintf(cr, sizeof(cr), "bytes */%zu", p->len);
        http_req_add_header(r, "Content-Range", cr);
        http_reply_error(r, 416, "range_not_satisfiable", "bad or unsatisfiable Range");
        return;
    }
    snprintf(cr, sizeof(cr), "bytes %zu-%zu/%zu", from, to, p->len);
    http_req_add_header(r, "Content-Range", cr);
    s->exp.file_bytes += to - from + 1;
    http_reply(r, 206, "application/octet-stream", (const char *)p->data + from, to - from + 1);
}

static void reply_export(sim *s, http_req *r)
{
    jw w;
    buf_reset(&s->scratch);
    jw_init(&w, &s->scratch);
    jw_obj_begin(&w);
    sim_exports_json(&s->exp, &s->dir, &w);
    jw_obj_end(&w);
    reply_buf(r, &s->scratch);
}

static void on_export_get(http_req *r, void *arg)
{
    reply_export(arg, r);
}

static void on_export_post(http_req *r, void *arg)
{
    sim *s = arg;
    char err[256];
    size_t len = 0;
    const char *body = http_req_body(r, &len);
    if (sim_exports_apply_json(&s->exp, body ? body : "", len, err, sizeof(err)) != 0) {
        http_reply_error(r, 400, "bad_request", err);
        return;
    }
    log_info("export settings set", LF_I("queue_ms", s->exp.queue_ms),
             LF_I("run_ms", s->exp.run_ms), LF_I("url_ttl_s", s->exp.url_ttl_s),
             LF_I("part_max", s->exp.part_max), LF_I("refuse", s->exp.refuse));
    reply_export(s, r);
}

/* ---- control routes ---- */

static void reply_buf(http_req *r, buf *b)
{
    if (b->oom) {
        http_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    http_reply(r, 200, JSON_CT, b->data ? b->data : "{}", b->data ? b->len : 2);
}

static void on_healthz(http_req *r, void *arg)
{
    (void)arg;
    http_reply_json(r, 200, "{\"status\":\"ok\"}");
}

static sim_corp *corp_param(sim *s, http_req *r, int *bad)
{
    const char *id = http_req_query(r, "corp_id");
    sim_corp *c = id ? sim_dir_corp(&s->dir, id) : NULL;
    *bad = id && !c;
    if (*bad)
        http_reply_error(r, 404, "not_found", "unknown corp_id");
    return c;
}

static void write_limits(jw *w, const sim_limits *l)
{
    jw_obj_begin(w);
    jw_kint(w, "rate", l->rate);
    jw_kint(w, "max_inflight", l->max_inflight);
    jw_kint(w, "inflight_errcode", l->inflight_errcode);
    jw_kint(w, "token_ttl_s", l->token_ttl_s);
    jw_kbool(w, "count_rejected", l->count_rejected);
    jw_kint(w, "ban_ms", l->ban_ms);
    jw_kint(w, "ip_per_min", l->ip_per_min);
    jw_kint(w, "ip_per_hour", l->ip_per_hour);
    jw_kint(w, "list_id_page_max", l->list_id_page_max);
    jw_obj_end(w);
}

static void on_stats(http_req *r, void *arg)
{
    sim *s = arg;
    jw w;
    buf b;
    const char *only = http_req_query(r, "corp_id");
    buf_init(&b);
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_kdbl(&w, "uptime_ms", (double)(time_mono_us() - s->stats.start_mono_us) / 1000.0);
    jw_kint(&w, "enterprises", s->dir.ncorps);
    jw_key(&w, "limits");
    write_limits(&w, &s->lim);
    jw_key(&w, "faults");
    sim_faults_json(&s->faults, &w);
    jw_key(&w, "export");
    jw_obj_begin(&w);
    sim_exports_json(&s->exp, &s->dir, &w);
    jw_obj_end(&w);
    if (sim_stats_json(&s->stats, &s->dir, only, &w) == -ENOENT) {
        http_reply_error(r, 404, "not_found", "unknown corp_id");
        buf_free(&b);
        return;
    }
    jw_obj_end(&w);
    reply_buf(r, &b);
    buf_free(&b);
}

static void on_org(http_req *r, void *arg)
{
    sim *s = arg;
    int bad;
    buf b;
    sim_corp *c = corp_param(s, r, &bad);
    if (bad)
        return;
    buf_init(&b);
    sim_dir_org_json(&s->dir, c, &b);
    reply_buf(r, &b);
    buf_free(&b);
}

static void on_mutate(http_req *r, void *arg)
{
    sim *s = arg;
    char err[256];
    size_t len = 0;
    const char *body = http_req_body(r, &len);
    int rc = sim_dir_mutate(&s->dir, body ? body : "", len, &s->scratch, err, sizeof(err));
    if (rc) {
        int status = rc == -ENOENT ? 404 : rc == -EEXIST ? 409 : rc == -ENOMEM ? 500 : 400;
        http_reply_error(r, status, status == 404 ? "not_found" : "bad_request", err);
        return;
    }
    log_info("directory mutated", LF_I("bytes", (long long)s->scratch.len));
    sim_callbacks_mutated(s, s->scratch.data ? s->scratch.data : "{}", s->scratch.len);
    reply_buf(r, &s->scratch);
}

static void on_expire_tokens(http_req *r, void *arg)
{
    sim *s = arg;
    int bad;
    sim_corp *c = corp_param(s, r, &bad);
    const char *mode = http_req_query(r, "mode");
    if (bad)
        return;
    if (mode && strcmp(mode, "expire") != 0 && strcmp(mode, "invalid") != 0) {
        http_reply_error(r, 400, "bad_request", "mode must be expire (42001) or invalid (40014)");
        return;
    }
    int invalidate = mode && strcmp(mode, "invalid") == 0;
    int n = sim_limits_expire_tokens(&s->lim, c ? c->index - 1 : -1, time_mono_us(), invalidate);
    log_info("tokens expired", LF_S("corp_id", c ? c->corp_id : "*"), LF_I("tokens", n),
             LF_S("mode", invalidate ? "invalid" : "expire"));
    buf_reset(&s->scratch);
    buf_printf(&s->scratch, "{\"errcode\":0,\"errmsg\":\"ok\",\"expired\":%d,\"mode\":\"%s\"}", n,
               invalidate ? "invalid" : "expire");
    reply_buf(r, &s->scratch);
}

static void on_reset_stats(http_req *r, void *arg)
{
    sim *s = arg;
    sim_stats_reset(&s->stats);
    http_reply_json(r, 200, "{\"errcode\":0,\"errmsg\":\"ok\"}");
}

static void reply_faults(sim *s, http_req *r)
{
    jw w;
    buf_reset(&s->scratch);
    jw_init(&w, &s->scratch);
    sim_faults_json(&s->faults, &w);
    reply_buf(r, &s->scratch);
}

static void on_faults_get(http_req *r, void *arg)
{
    reply_faults(arg, r);
}

static void on_faults_post(http_req *r, void *arg)
{
    sim *s = arg;
    char err[256];
    size_t len = 0;
    const char *body = http_req_body(r, &len);
    if (sim_faults_apply_json(&s->faults, body ? body : "", len, err, sizeof(err)) != 0) {
        http_reply_error(r, 400, "bad_request", err);
        return;
    }
    log_info("faults set", LF_I("latency_ms", s->faults.latency_ms),
             LF_D("http500", s->faults.http500), LF_D("busy", s->faults.busy),
             LF_D("malformed", s->faults.malformed), LF_D("hang", s->faults.hang),
             LF_I("fail_dept", s->faults.fail_dept));
    reply_faults(s, r);
}

static void on_limits_get(http_req *r, void *arg)
{
    sim *s = arg;
    jw w;
    buf_reset(&s->scratch);
    jw_init(&w, &s->scratch);
    write_limits(&w, &s->lim);
    reply_buf(r, &s->scratch);
}

/* {"rate":n,"max_inflight":n,"inflight_errcode":n,"token_ttl_s":n,"count_rejected":b,
 * "ban_ms":n,"ip_per_min":n,"ip_per_hour":n,"list_id_page_max":n}, any subset; applies to
 * arrivals from now on. */
static int limits_apply(sim_limits *l, json_object *root, char *err, size_t errlen)
{
    sim_limits next = *l;
    json_object_object_foreach(root, key, v)
    {
        int is_int = json_object_is_type(v, json_type_int);
        long long x = is_int ? json_object_get_int64(v) : -1;
        if (strcmp(key, "count_rejected") == 0 && json_object_is_type(v, json_type_boolean)) {
            next.count_rejected = json_object_get_boolean(v);
            continue;
        }
        if (x < 0 || x > 100000000) {
            snprintf(err, errlen, "%.40s must be an integer 0..100000000", key);
            return -EINVAL;
        }
        if (strcmp(key, "rate") == 0 && x > 0)
            next.rate = (uint32_t)x;
        else if (strcmp(key, "max_inflight") == 0 && x > 0)
            next.max_inflight = (uint32_t)x;
        else if (strcmp(key, "inflight_errcode") == 0 && (x == 45009 || x == 45033))
            next.inflight_errcode = (int)x;
        else if (strcmp(key, "token_ttl_s") == 0 && x > 0)
            next.token_ttl_s = (uint32_t)x;
        else if (strcmp(key, "ban_ms") == 0)
            next.ban_ms = (uint32_t)x;
        else if (strcmp(key, "ip_per_min") == 0 && x > 0)
            next.ip_per_min = (uint32_t)x;
        else if (strcmp(key, "ip_per_hour") == 0 && x > 0)
            next.ip_per_hour = (uint32_t)x;
        else if (strcmp(key, "list_id_page_max") == 0 && x <= 10000)
            next.list_id_page_max = (uint32_t)x;
        else {
            snprintf(err, errlen, "unknown or out-of-range limit \"%.40s\"", key);
            return -EINVAL;
        }
    }
    *l = next;
    return 0;
}

static void on_limits_post(http_req *r, void *arg)
{
    sim *s = arg;
    char err[160] = "a JSON object is required";
    size_t len = 0;
    const char *body = http_req_body(r, &len);
    json_object *root = body && len ? json_tokener_parse(body) : NULL;
    if (!root || !json_object_is_type(root, json_type_object) ||
        limits_apply(&s->lim, root, err, sizeof(err)) != 0) {
        json_object_put(root);
        http_reply_error(r, 400, "bad_request", err);
        return;
    }
    json_object_put(root);
    log_info("limits set", LF_I("rate", s->lim.rate), LF_I("max_inflight", s->lim.max_inflight),
             LF_I("token_ttl_s", s->lim.token_ttl_s), LF_I("ip_per_min", s->lim.ip_per_min),
             LF_I("ip_per_hour", s->lim.ip_per_hour));
    on_limits_get(r, s);
}

/* {"corps":[{"corp_id", ...policy keys}]} for one enterprise (only >= 0) or all. */
static void reply_policy(sim *s, http_req *r, int only)
{
    jw w;
    buf_reset(&s->scratch);
    jw_init(&w, &s->scratch);
    jw_obj_begin(&w);
    jw_key(&w, "corps");
    jw_arr_begin(&w);
    for (int i = 0; i < s->dir.ncorps; i++) {
        if (only >= 0 && i != only)
            continue;
        jw_obj_begin(&w);
        jw_kstr(&w, "corp_id", s->dir.corps[i].corp_id);
        sim_policy_json(&s->policy[i], &w);
        jw_obj_end(&w);
    }
    jw_arr_end(&w);
    jw_obj_end(&w);
    reply_buf(r, &s->scratch);
}

static void on_policy_get(http_req *r, void *arg)
{
    sim *s = arg;
    int bad;
    sim_corp *c = corp_param(s, r, &bad);
    if (!bad)
        reply_policy(s, r, c ? c->index - 1 : -1);
}

static void on_policy_post(http_req *r, void *arg)
{
    sim *s = arg;
    char err[256];
    size_t len = 0;
    int only = -1;
    const char *body = http_req_body(r, &len);
    int rc =
        sim_policy_apply_json(s->policy, &s->dir, body ? body : "", len, &only, err, sizeof(err));
    if (rc) {
        int status = rc == -ENOENT ? 404 : rc == -ENOMEM ? 500 : 400;
        http_reply_error(r, status, status == 404 ? "not_found" : "bad_request", err);
        return;
    }
    log_info("policy set", LF_S("corp_id", only >= 0 ? s->dir.corps[only].corp_id : "*"));
    reply_policy(s, r, only);
}

int sim_routes_install(sim *s)
{
    static const struct {
        const char *method, *pattern;
        http_handler h;
    } routes[] = {
        {"GET", "/cgi-bin/gettoken", on_gettoken},
        {"GET", "/cgi-bin/department/list", on_dept_list},
        {"GET", "/cgi-bin/user/list", on_user_list},
        {"GET", "/cgi-bin/user/get", on_user_get},
        {"POST", "/cgi-bin/user/getuserid", on_getuserid},
        {"POST", "/cgi-bin/user/list_id", on_list_id},
        {"GET", "/cgi-bin/department/simplelist", on_simplelist},
        {"GET", "/cgi-bin/department/get", on_dept_get},
        {"POST", "/cgi-bin/export/user", on_export_user},
        {"POST", "/cgi-bin/export/simple_user", on_export_simple_user},
        {"GET", "/cgi-bin/export/get_result", on_export_result},
        {"GET", "/sim/export-file/{token}", on_export_file},
        {"GET", "/sim/export", on_export_get},
        {"POST", "/sim/export", on_export_post},
        {"GET", "/healthz", on_healthz},
        {"GET", "/sim/stats", on_stats},
        {"GET", "/sim/org", on_org},
        {"POST", "/sim/mutate", on_mutate},
        {"POST", "/sim/expire-tokens", on_expire_tokens},
        {"POST", "/sim/reset-stats", on_reset_stats},
        {"GET", "/sim/faults", on_faults_get},
        {"POST", "/sim/faults", on_faults_post},
        {"GET", "/sim/limits", on_limits_get},
        {"POST", "/sim/limits", on_limits_post},
        {"GET", "/sim/policy", on_policy_get},
        {"POST", "/sim/policy", on_policy_post},
        {"GET", "/sim/callbacks", sim_callbacks_on_get},
        {"POST", "/sim/callbacks", sim_callbacks_on_post},
    };
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        int err = http_server_route(s->srv, routes[i].method, routes[i].pattern, routes[i].h, s);
        if (err)
            return err;
    }
    return 0;
}
