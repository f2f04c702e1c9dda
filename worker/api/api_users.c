/* Directory reads and lookups: GET /v1/enterprises/{corp_id}/users,
 * /v1/enterprises/{corp_id}/departments, /v1/users?mobile= (PostgreSQL only; these
 * three need the read token, api_read_ok) and POST /v1/users/realtime-lookup
 * (admin; worker/api/lookup.c). Members and departments are
 * rendered to JSON by PostgreSQL (API_SQL_*_JSON) so every route shows one shape. */
#include "worker/api/api_routes.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "common/log.h"
#include "worker/api/lookup.h"

#define PAGE_SIZE_MAX 1000
#define PAGE_MAX 1000000
#define MOBILE_MATCH_MAX 100

typedef struct read_op {
    api *a;
    http_req *req;
    char corp[72];
    long long page, page_size;
    char mobile[24];
} read_op;

static read_op *op_new(api *a, http_req *req)
{
    read_op *op = calloc(1, sizeof(*op));
    if (!op) {
        http_reply_error(req, 503, "out_of_memory", "out of memory");
        return NULL;
    }
    op->a = a;
    op->req = req;
    api_ref(a);
    return op;
}

static void op_query_failed(read_op *op)
{
    api_unref(op->a);
    http_reply_error(op->req, 503, "database_unavailable", "could not query PostgreSQL");
    free(op);
}

/* The common start of a read callback: 1 when the route may build its answer;
 * 0 when the api is closing or the request has been answered (database error:
 * 503; with corp_col0, an unknown enterprise: 404). The caller frees op. */
static int op_result_ok(read_op *op, PGresult *res, const char *err, const char *what,
                        int corp_col0)
{
    if (!api_unref(op->a))
        return 0;
    if (err) {
        http_reply_error(op->req, api_pg_failed(op->a, what, err), "database_unavailable",
                         "could not query PostgreSQL");
        return 0;
    }
    if (corp_col0 && (PQntuples(res) < 1 || strcmp(PQgetvalue(res, 0, 0), "t") != 0)) {
        http_reply_error(op->req, 404, "not_found", "no enterprise with that corp_id");
        return 0;
    }
    return 1;
}

static void reply_buf(http_req *req, buf *b)
{
    if (b->oom)
        http_reply_error(req, 503, "out_of_memory", "out of memory");
    else
        http_reply(req, 200, "application/json", b->data, b->len);
    buf_free(b);
}

/* ---- members of an enterprise, paged ---- */

static const char users_sql[] =
    "SELECT EXISTS (SELECT 1 FROM enterprises WHERE corp_id = $1), (SELECT count(*) FROM users "
    "WHERE corp_id = $1 AND deleted_at IS NULL), x.j FROM (SELECT 1) AS one LEFT JOIN LATERAL "
    "(SELECT " API_SQL_USER_JSON " AS j FROM users u WHERE u.corp_id = $1 AND u.deleted_at IS NULL "
    "ORDER BY u.userid LIMIT $2::int OFFSET $3::bigint) x ON true";

static void on_users(void *arg, PGresult *res, const char *err)
{
    read_op *op = arg;
    buf b;
    jw w;

    if (!op_result_ok(op, res, err, "users", 1))
        goto done;
    buf_init(&b);
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_kstr(&w, "corp_id", op->corp);
    jw_kint(&w, "page", op->page);
    jw_kint(&w, "page_size", op->page_size);
    jw_kint(&w, "total", api_col_ll(res, 0, 1));
    jw_key(&w, "users");
    jw_arr_begin(&w);
    for (int i = 0; i < PQntuples(res); i++)
        if (!PQgetisnull(res, i, 2))
            jw_raw(&w, PQgetvalue(res, i, 2));
    jw_arr_end(&w);
    jw_obj_end(&w);
    reply_buf(op->req, &b);
done:
    free(op);
}

static int parse_opt(http_req *req, const char *name, long long def, long long max, long long *out)
{
    const char *v = http_req_query(req, name);
    *out = def;
    if (!v)
        return 0;
    return api_parse_pos_ll(v, max, out);
}

static void on_enterprise_users(http_req *req, void *arg)
{
    api *a = arg;
    const char *corp = http_req_param(req, "corp_id");
    long long page, size;
    char lim[24], off[24];

    if (!api_read_ok(a, req))
        return;
    if (!corp_id_valid(corp)) {
        http_reply_error(req, 400, "bad_request", "corp_id must be 1-64 of [A-Za-z0-9_-]");
        return;
    }
    if (parse_opt(req, "page", 1, PAGE_MAX, &page)) {
        http_reply_error(req, 400, "bad_request", "page must be an integer from 1 to 1000000");
        return;
    }
    if (parse_opt(req, "page_size", 100, PAGE_SIZE_MAX, &size)) {
        http_reply_error(req, 400, "bad_request", "page_size must be an integer from 1 to 1000");
        return;
    }
    read_op *op = op_new(a, req);
    if (!op)
        return;
    snprintf(op->corp, sizeof op->corp, "%s", corp);
    op->page = page;
    op->page_size = size;
    snprintf(lim, sizeof lim, "%lld", size);
    snprintf(off, sizeof off, "%lld", (page - 1) * size);
    const char *p[] = {corp, lim, off};
    if (api_pg_query(a, users_sql, 3, p, on_users, op))
        op_query_failed(op);
}

/* ---- departments of an enterprise ---- */

static const char depts_sql[] =
    "SELECT EXISTS (SELECT 1 FROM enterprises WHERE corp_id = $1), x.j FROM (SELECT 1) AS one "
    "LEFT JOIN LATERAL (SELECT " API_SQL_DEPT_JSON " AS j FROM departments d WHERE d.corp_id = $1 "
    "AND d.deleted_at IS NULL ORDER BY d.dept_id) x ON true";

static void on_depts(void *arg, PGresult *res, const char *err)
{
    read_op *op = arg;
    buf b;
    jw w;
    int n = 0;

    if (!op_result_ok(op, res, err, "departments", 1))
        goto done;
    buf_init(&b);
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_kstr(&w, "corp_id", op->corp);
    jw_key(&w, "departments");
    jw_arr_begin(&w);
    for (int i = 0; i < PQntuples(res); i++) {
        if (!PQgetisnull(res, i, 1)) {
            jw_raw(&w, PQgetvalue(res, i, 1));
            n++;
        }
    }
    jw_arr_end(&w);
    jw_kint(&w, "total", n);
    jw_obj_end(&w);
    reply_buf(op->req, &b);
done:
    free(op);
}

static void on_enterprise_depts(http_req *req, void *arg)
{
    api *a = arg;
    const char *corp = http_req_param(req, "corp_id");
    if (!api_read_ok(a, req))
        return;
    if (!corp_id_valid(corp)) {
        http_reply_error(req, 400, "bad_request", "corp_id must be 1-64 of [A-Za-z0-9_-]");
        return;
    }
    read_op *op = op_new(a, req);
    if (!op)
        return;
    snprintf(op->corp, sizeof op->corp, "%s", corp);
    const char *p[] = {corp};
    if (api_pg_query(a, depts_sql, 1, p, on_depts, op))
        op_query_failed(op);
}

/* ---- members by mobile (never the upstream) ---- */

static const char mobile_sql[] = "SELECT " API_SQL_USER_JSON " FROM users u WHERE u.mobile = $1 "
                                 "AND u.deleted_at IS NULL ORDER BY u.corp_id, u.userid LIMIT 100";

static void on_mobile(void *arg, PGresult *res, const char *err)
{
    read_op *op = arg;
    buf b;
    jw w;

    if (!op_result_ok(op, res, err, "users by mobile", 0))
        goto done;
    buf_init(&b);
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_kstr(&w, "mobile", op->mobile);
    jw_key(&w, "users");
    jw_arr_begin(&w);
    for (int i = 0; i < PQntuples(res); i++)
        jw_raw(&w, PQgetvalue(res, i, 0));
    jw_arr_end(&w);
    jw_kint(&w, "total", PQntuples(res));
    jw_obj_end(&w);
    reply_buf(op->req, &b);
done:
    free(op);
}

static void on_users_by_mobile(http_req *req, void *arg)
{
    api *a = arg;
    const char *m = http_req_query(req, "mobile");
    if (!api_read_ok(a, req))
        return;
    if (!m) {
        http_reply_error(req, 400, "bad_request", "the mobile query parameter is required");
        return;
    }
    if (!api_valid_mobile(m)) {
        http_reply_error(req, 400, "bad_mobile",
                         "mobile must be 11 digits starting with 1, or + and 6 to 15 digits");
        return;
    }
    read_op *op = op_new(a, req);
    if (!op)
        return;
    snprintf(op->mobile, sizeof op->mobile, "%s", m);
    const char *p[] = {m};
    if (api_pg_query(a, mobile_sql, 1, p, on_mobile, op))
        op_query_failed(op);
}

/* ---- POST /v1/users/realtime-lookup ---- */

static void on_looked_up(void *arg, const lookup_result *r)
{
    read_op *op = arg;
    if (!api_unref(op->a))
        goto done;
    if (r->status == 200) {
        buf b;
        jw w;
        buf_init(&b);
        jw_init(&w, &b);
        jw_obj_begin(&w);
        jw_kstr(&w, "source", "upstream");
        jw_key(&w, "user");
        jw_raw(&w, r->json);
        jw_obj_end(&w);
        reply_buf(op->req, &b);
        goto done;
    }
    if (r->retry_after_s > 0) {
        char ra[16];
        snprintf(ra, sizeof ra, "%d", r->retry_after_s);
        http_req_add_header(op->req, "Retry-After", ra);
    }
    http_reply_error(op->req, r->status, r->code, r->message);
done:
    free(op);
}

/* "\u0000" inside a JSON string would cut it short in C: refuse it. */
static int has_nul(json_object *s)
{
    return (size_t)json_object_get_string_len(s) != strlen(json_object_get_string(s));
}

int api_lookup_body_parse(const char *body, size_t len, char *corp, size_t clen, char *mobile,
                          size_t mlen, const char **why)
{
    json_tokener *tok = NULL;
    json_object *o = NULL, *c, *m;
    int rc = -1;

    *why = "body must be a JSON object {\"corp_id\", \"mobile\"}";
    if (!body || len == 0 || len > (1u << 20))
        goto cleanup;
    tok = json_tokener_new_ex(16); /* shallow: the object has two strings */
    if (!tok)
        goto cleanup;
    o = json_tokener_parse_ex(tok, body, (int)len);
    if (!o || json_tokener_get_error(tok) != json_tokener_success ||
        json_tokener_get_parse_end(tok) != len || !json_object_is_type(o, json_type_object))
        goto cleanup;
    if (!json_object_object_get_ex(o, "corp_id", &c) || !json_object_is_type(c, json_type_string) ||
        !corp_id_valid(json_object_get_string(c)) || has_nul(c)) {
        *why = "corp_id must be a string of 1-64 [A-Za-z0-9_-]";
        goto cleanup;
    }
    if (!json_object_object_get_ex(o, "mobile", &m) || !json_object_is_type(m, json_type_string) ||
        !api_valid_mobile(json_object_get_string(m)) || has_nul(m)) {
        *why = "mobile must be 11 digits starting with 1, or + and 6 to 15 digits";
        goto cleanup;
    }
    snprintf(corp, clen, "%s", json_object_get_string(c));
    snprintf(mobile, mlen, "%s", json_object_get_string(m));
    rc = 0;
cleanup:
    json_object_put(o);
    if (tok)
        json_tokener_free(tok);
    return rc;
}

static void on_realtime_lookup(http_req *req, void *arg)
{
    api *a = arg;
    char corp[72], mobile[24];
    const char *why;

    if (!api_admin_ok(a, req))
        return;
    size_t len = 0;
    const char *body = http_req_body(req, &len);
    if (api_lookup_body_parse(body, len, corp, sizeof corp, mobile, sizeof mobile, &why)) {
        http_reply_error(req, 400, "bad_request", why);
        return;
    }
    read_op *op = op_new(a, req);
    if (!op)
        return;
    int rc = lookup_realtime(a->lk, corp, mobile, on_looked_up, op);
    if (rc) {
        api_unref(a);
        free(op);
        http_reply_error(req, rc == -EINVAL ? 400 : 503,
                         rc == -EINVAL ? "bad_request" : "unavailable",
                         rc == -EINVAL ? "bad corp_id or mobile" : "could not start the lookup");
    }
}

int api_users_register(api *a)
{
    int err =
        http_server_route(a->srv, "GET", "/v1/enterprises/{corp_id}/users", on_enterprise_users, a);
    if (!err)
        err = http_server_route(a->srv, "GET", "/v1/enterprises/{corp_id}/departments",
                                on_enterprise_depts, a);
    if (!err)
        err = http_server_route(a->srv, "GET", "/v1/users", on_users_by_mobile, a);
    if (!err)
        err = http_server_route(a->srv, "POST", "/v1/users/realtime-lookup", on_realtime_lookup, a);
    return err;
}
