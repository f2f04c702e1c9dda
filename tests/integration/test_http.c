/* HTTP server and client against each other on 127.0.0.1.
 *
 * Each server runs its own loop on its own thread; the test thread talks to it either
 * with the project's http_client (on a loop of its own) or with raw blocking sockets,
 * which is how the limits (413, 431, idle, max_conns, malformed input, pipelining)
 * are exercised byte by byte. No database or Redis is needed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/http_client.h"
#include "common/http_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

/* ---- a server on its own thread ------------------------------------------------------ */

typedef struct pending_timer pending_timer;
typedef struct senv senv;

struct pending_timer {
    uv_timer_t t;
    http_req *req;
    senv *env;
    pending_timer *prev, *next;
};

struct senv {
    uv_loop_t loop;
    uv_thread_t th;
    uv_async_t stop;
    http_server *s;
    const char *id;
    pending_timer *timers;
    int closed;
    /* observer figures, read only after the thread is joined */
    int observed;
    int observed_404;
    int observed_echo_pattern;
};

static double now_s(void)
{
    return (double)uv_hrtime() / 1e9;
}

static void timer_unlink(pending_timer *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else
        p->env->timers = p->next;
    if (p->next)
        p->next->prev = p->prev;
}

static void on_timer_closed(uv_handle_t *h)
{
    free(h->data);
}

static void on_async_timer(uv_timer_t *t)
{
    pending_timer *p = t->data;
    timer_unlink(p);
    http_reply(p->req, 200, "text/plain", "later", 5);
    uv_close((uv_handle_t *)&p->t, on_timer_closed);
}

static void h_hello(http_req *r, void *arg)
{
    (void)arg;
    http_reply(r, 200, "text/plain", "hello", 5);
}

static void h_id(http_req *r, void *arg)
{
    senv *e = arg;
    http_reply(r, 200, "text/plain", e->id, strlen(e->id));
}

static void h_echo_params(http_req *r, void *arg)
{
    (void)arg;
    char out[2048];
    const char *q = http_req_query(r, "q");
    const char *h = http_req_header(r, "x-TEST");
    snprintf(out, sizeof out, "a=%s|b=%s|q=%s|h=%s|m=%s|p=%s|port=%d", http_req_param(r, "a"),
             http_req_param(r, "b"), q ? q : "(null)", h ? h : "(null)", http_req_method(r),
             http_req_path(r), http_req_local_port(r));
    http_req_add_header(r, "X-Reply", "yes");
    http_req_add_header(r, "X-Bad", "a\r\nInjected: 1"); /* must be refused */
    http_reply(r, 200, "text/plain", out, strlen(out));
}

static void h_echo_body(http_req *r, void *arg)
{
    (void)arg;
    size_t len;
    const char *b = http_req_body(r, &len);
    const char *ct = http_req_header(r, "content-type");
    http_reply(r, 200, ct ? ct : "application/octet-stream", b, len);
}

static void h_async(http_req *r, void *arg)
{
    senv *e = arg;
    pending_timer *p = calloc(1, sizeof(*p));
    assert_non_null(p);
    p->req = r;
    p->env = e;
    uv_timer_init(&e->loop, &p->t);
    p->t.data = p;
    p->next = e->timers;
    if (e->timers)
        e->timers->prev = p;
    e->timers = p;
    uv_timer_start(&p->t, on_async_timer, 60, 0);
}

static void h_never(http_req *r, void *arg)
{
    (void)r;
    (void)arg; /* never answered: freed when the server closes */
}

static void h_big(http_req *r, void *arg)
{
    (void)arg;
    const char *n = http_req_query(r, "n");
    size_t len = n ? (size_t)atol(n) : 0;
    char *b = malloc(len + 1);
    assert_non_null(b);
    memset(b, 'z', len);
    http_reply(r, 200, "text/plain", b, len);
    free(b);
}

/* Byte i of a prebuilt answer's body. */
static char answer_byte(size_t i)
{
    return (char)('a' + i % 26);
}

/* A prebuilt answer of n bytes (?n=), made for this request and dropped by the
 * handler at once: the server must hold it for as long as it writes it. ?x=1
 * adds a header, which the answer's own head does not have. */
static void h_answer(http_req *r, void *arg)
{
    (void)arg;
    const char *n = http_req_query(r, "n");
    size_t len = n ? (size_t)atol(n) : 0;
    char *b = malloc(len + 1);
    assert_non_null(b);
    for (size_t i = 0; i < len; i++)
        b[i] = answer_byte(i);
    http_answer *a = http_answer_new(200, "text/plain", b, len);
    free(b);
    assert_non_null(a);
    assert_int_equal(http_answer_fd(a) >= 0, len >= HTTP_ANSWER_FILE_MIN);
    /* a file answer up to the cap also lives in a pipe (tee'd per request) */
    assert_int_equal(http_answer_pipe(a) >= 0,
                     len >= HTTP_ANSWER_FILE_MIN && len + 128 <= HTTP_ANSWER_PIPE_MAX);
    if (http_req_query(r, "x"))
        http_req_add_header(r, "X-Extra", "yes");
    http_reply_answer(r, a);
    http_answer_unref(a);
}

static void h_twice(http_req *r, void *arg)
{
    (void)arg;
    http_reply(r, 200, "text/plain", "one", 3);
    /* The request is no longer ours: a second answer must be refused, not sent. The
     * object is still the connection's (reused), so this call is safe to make here. */
    http_reply(r, 500, "text/plain", "two", 3);
}

static void h_stats(http_req *r, void *arg)
{
    senv *e = arg;
    char out[128];
    snprintf(out, sizeof out, "{\"accepted\":%ld,\"conns\":%d}", http_server_accepted_total(e->s),
             http_server_conn_count(e->s));
    http_reply_json(r, 200, out);
}

static void h_error(http_req *r, void *arg)
{
    (void)arg;
    http_reply_error(r, 409, "conflict", "it \"clashes\"");
}

static void observer(void *arg, const char *method, const char *pattern, int status, double secs)
{
    senv *e = arg;
    assert_non_null(method);
    assert_true(secs >= 0);
    e->observed++;
    if (status == 404 && pattern == NULL)
        e->observed_404++;
    if (pattern && strcmp(pattern, "/echo/{a}/{b}") == 0)
        e->observed_echo_pattern++;
}

static void on_server_closed(void *arg)
{
    senv *e = arg;
    e->closed = 1;
}

static void on_stop(uv_async_t *a)
{
    senv *e = a->data;
    /* Async replies still pending would answer a freed request: cancel them. */
    while (e->timers) {
        pending_timer *p = e->timers;
        timer_unlink(p);
        uv_close((uv_handle_t *)&p->t, on_timer_closed);
    }
    http_server_close(e->s, on_server_closed, e);
    uv_close((uv_handle_t *)a, NULL);
}

static void server_thread(void *arg)
{
    senv *e = arg;
    uv_run(&e->loop, UV_RUN_DEFAULT);
}

static senv *senv_start(const char *id, const http_server_opts *o, const char *addr)
{
    senv *e = calloc(1, sizeof(*e));
    assert_non_null(e);
    e->id = id;
    assert_int_equal(uv_loop_init(&e->loop), 0);
    e->s = http_server_new(&e->loop, o);
    assert_non_null(e->s);
    http_server_set_observer(e->s, observer, e);
    assert_int_equal(http_server_route(e->s, "GET", "/hello", h_hello, e), 0);
    assert_int_equal(http_server_route(e->s, "GET", "/id", h_id, e), 0);
    assert_int_equal(http_server_route(e->s, "GET", "/echo/{a}/{b}", h_echo_params, e), 0);
    assert_int_equal(http_server_route(e->s, "POST", "/echo", h_echo_body, e), 0);
    assert_int_equal(http_server_route(e->s, "GET", "/async", h_async, e), 0);
    assert_int_equal(http_server_route(e->s, "GET", "/never", h_never, e), 0);
    assert_int_equal(http_server_route(e->s, "GET", "/big", h_big, e), 0);
    assert_int_equal(http_server_route(e->s, "GET", "/answer", h_answer, e), 0);
    assert_int_equal(http_server_route(e->s, "GET", "/stats", h_stats, e), 0);
    assert_int_equal(http_server_route(e->s, "GET", "/error", h_error, e), 0);
    assert_int_equal(http_server_route(e->s, "GET", "/twice", h_twice, e), 0);
    char err[256] = "";
    int rc = http_server_listen(e->s, addr, err, sizeof err);
    if (rc)
        fail_msg("listen %s: %s", addr, err);
    assert_true(http_server_port(e->s, 0) > 0);
    assert_int_equal(http_server_port(e->s, 1), -1);
    assert_int_equal(uv_async_init(&e->loop, &e->stop, on_stop), 0);
    e->stop.data = e;
    assert_int_equal(uv_thread_create(&e->th, server_thread, e), 0);
    return e;
}

static int senv_port(senv *e)
{
    return http_server_port(e->s, 0);
}

static void senv_stop(senv *e)
{
    uv_async_send(&e->stop);
    assert_int_equal(uv_thread_join(&e->th), 0);
    assert_true(e->closed);
    /* Every handle closed: the loop closes cleanly. */
    assert_int_equal(uv_loop_close(&e->loop), 0);
    free(e);
}

/* ---- raw blocking sockets ----------------------------------------------------------- */

typedef struct raw {
    int fd;
    char buf[1 << 16];
    size_t len;
} raw;

typedef struct resp {
    int status;
    char headers[4096];
    char body[8192];
    size_t body_len;
} resp;

/* rcvbuf > 0: that receive buffer, set before connecting so the window is small. */
static raw *raw_connect_rcvbuf(int port, int rcvbuf)
{
    raw *r = calloc(1, sizeof(*r));
    assert_non_null(r);
    r->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(r->fd >= 0);
    if (rcvbuf > 0)
        setsockopt(r->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct timeval tv = {3, 0};
    setsockopt(r->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(r->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(r->fd, (struct sockaddr *)&sa, sizeof sa), 0);
    return r;
}

static raw *raw_connect(int port)
{
    return raw_connect_rcvbuf(port, 0);
}

static void raw_free(raw *r)
{
    close(r->fd);
    free(r);
}

/* Sends everything; returns 0, or -1 if the peer stopped taking it. */
static int raw_send(raw *r, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(r->fd, data, len, MSG_NOSIGNAL);
        if (n <= 0)
            return -1;
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

static void raw_sends(raw *r, const char *s)
{
    assert_int_equal(raw_send(r, s, strlen(s)), 0);
}

/* Reads more bytes; 0 on EOF or reset, -1 on timeout. */
static ssize_t raw_fill(raw *r)
{
    if (r->len == sizeof(r->buf) - 1)
        return -1;
    ssize_t n = recv(r->fd, r->buf + r->len, sizeof(r->buf) - 1 - r->len, 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return -1;
    if (n <= 0)
        return 0;
    r->len += (size_t)n;
    r->buf[r->len] = '\0';
    return n;
}

/* Reads one full response (Content-Length framed). 0, or -1 if the connection ended
 * or timed out before it was complete. */
static int raw_response(raw *r, resp *out)
{
    memset(out, 0, sizeof *out);
    char *end;
    for (;;) {
        end = r->len ? strstr(r->buf, "\r\n\r\n") : NULL;
        if (end)
            break;
        if (raw_fill(r) <= 0)
            return -1;
    }
    size_t hlen = (size_t)(end - r->buf) + 4;
    assert_true(hlen < sizeof out->headers);
    memcpy(out->headers, r->buf, hlen);
    out->headers[hlen] = '\0';
    if (sscanf(out->headers, "HTTP/1.%*d %d", &out->status) != 1)
        return -1;
    const char *cl = strcasestr(out->headers, "\r\nContent-Length:");
    size_t blen = cl ? (size_t)atol(cl + 17) : 0;
    while (r->len < hlen + blen)
        if (raw_fill(r) <= 0)
            return -1;
    size_t copy = blen < sizeof out->body - 1 ? blen : sizeof out->body - 1;
    memcpy(out->body, r->buf + hlen, copy);
    out->body[copy] = '\0';
    out->body_len = blen;
    memmove(r->buf, r->buf + hlen + blen, r->len - hlen - blen);
    r->len -= hlen + blen;
    r->buf[r->len] = '\0';
    return 0;
}

/* 1 if the server closed the connection within ms (EOF or reset), 0 if not. */
static int raw_closed_within(raw *r, int ms)
{
    double deadline = now_s() + ms / 1000.0;
    while (now_s() < deadline) {
        struct pollfd p = {r->fd, POLLIN, 0};
        int left = (int)((deadline - now_s()) * 1000) + 1;
        if (poll(&p, 1, left) <= 0)
            continue;
        char tmp[4096];
        ssize_t n = recv(r->fd, tmp, sizeof tmp, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno == ECONNRESET))
            return 1;
    }
    return 0;
}

/* ---- the client on the test thread -------------------------------------------------- */

typedef struct fetch {
    int done;
    long status;
    char *body;
    size_t len;
    char err[256];
    int has_err;
    int timed_out;
    double seconds;
} fetch;

static void fetch_cb(void *arg, const http_response *res)
{
    fetch *f = arg;
    f->done = 1;
    f->status = res->status;
    f->timed_out = res->timed_out;
    f->seconds = res->seconds;
    if (res->error) {
        f->has_err = 1;
        snprintf(f->err, sizeof f->err, "%s", res->error);
    }
    f->body = malloc(res->body_len + 1);
    assert_non_null(f->body);
    memcpy(f->body, res->body, res->body_len);
    f->body[res->body_len] = '\0';
    f->len = res->body_len;
}

static void fetch_wait(uv_loop_t *loop, fetch *f)
{
    while (!f->done)
        uv_run(loop, UV_RUN_ONCE);
}

static fetch get(uv_loop_t *loop, http_client *c, const char *url, int timeout_ms)
{
    fetch f;
    memset(&f, 0, sizeof f);
    assert_int_equal(http_client_get(c, url, timeout_ms, fetch_cb, &f), 0);
    fetch_wait(loop, &f);
    return f;
}

static void on_client_closed(void *arg)
{
    *(int *)arg = 1;
}

static void client_close(uv_loop_t *loop, http_client *c)
{
    int closed = 0;
    http_client_close(c, on_client_closed, &closed);
    while (!closed)
        uv_run(loop, UV_RUN_ONCE);
    uv_run(loop, UV_RUN_NOWAIT);
}

/* ---- fixtures ----------------------------------------------------------------------- */

typedef struct fix {
    senv *main;
    uv_loop_t loop;
    http_client *c;
    int port;
    char base[64];
} fix;

static int setup(void **state)
{
    fix *f = calloc(1, sizeof(*f));
    f->main = senv_start("main", NULL, "127.0.0.1:0");
    f->port = senv_port(f->main);
    snprintf(f->base, sizeof f->base, "http://127.0.0.1:%d", f->port);
    uv_loop_init(&f->loop);
    f->c = http_client_new(&f->loop, NULL);
    assert_non_null(f->c);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fix *f = *state;
    client_close(&f->loop, f->c);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    senv_stop(f->main);
    free(f);
    return 0;
}

static void url(fix *f, char *out, size_t n, const char *path)
{
    snprintf(out, n, "%s%s", f->base, path);
}

/* ---- tests -------------------------------------------------------------------------- */

static void test_routes_params_query_headers(void **state)
{
    fix *f = *state;
    char u[256];
    url(f, u, sizeof u, "/hello");
    fetch r = get(&f->loop, f->c, u, 2000);
    assert_false(r.has_err);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "hello");
    free(r.body);

    /* Params and query are decoded; headers are case-insensitive. */
    raw *w = raw_connect(f->port);
    raw_sends(w, "GET /echo/ab%20c/%E4%B8%AD?x=1&q=a+b%26c&z HTTP/1.1\r\nHost: t\r\n"
                 "X-Test: hdr-value\r\n\r\n");
    resp rs;
    assert_int_equal(raw_response(w, &rs), 0);
    assert_int_equal(rs.status, 200);
    char want[512];
    snprintf(want, sizeof want,
             "a=ab c|b=\xe4\xb8\xad|q=a b&c|h=hdr-value|m=GET|p=/echo/ab%%20c/%%E4%%B8%%AD|port=%d",
             f->port);
    assert_string_equal(rs.body, want);
    assert_non_null(strstr(rs.headers, "\r\nX-Reply: yes\r\n"));
    assert_null(strstr(rs.headers, "Injected"));
    assert_non_null(strstr(rs.headers, "Content-Type: text/plain\r\n"));
    raw_free(w);

    /* POST body round trip through the client. */
    url(f, u, sizeof u, "/echo");
    fetch p;
    memset(&p, 0, sizeof p);
    const char *json = "{\"k\":\"v\"}";
    assert_int_equal(
        http_client_post(f->c, u, "application/json", json, strlen(json), 2000, fetch_cb, &p), 0);
    fetch_wait(&f->loop, &p);
    assert_false(p.has_err);
    assert_int_equal(p.status, 200);
    assert_string_equal(p.body, json);
    free(p.body);
}

static void test_errors_404_405(void **state)
{
    fix *f = *state;
    raw *w = raw_connect(f->port);
    resp rs;
    raw_sends(w, "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_int_equal(raw_response(w, &rs), 0);
    assert_int_equal(rs.status, 404);
    assert_non_null(strstr(rs.headers, "application/json"));
    assert_string_equal(rs.body,
                        "{\"error\":{\"code\":\"not_found\",\"message\":\"no such route\"}}");
    /* The connection survives a 404. */
    raw_sends(w, "DELETE /echo HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_int_equal(raw_response(w, &rs), 0);
    assert_int_equal(rs.status, 405);
    assert_non_null(strstr(rs.headers, "\r\nAllow: POST\r\n"));
    assert_non_null(strstr(rs.body, "\"code\":\"method_not_allowed\""));
    /* Handler-made errors are escaped JSON. */
    raw_sends(w, "GET /error HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_int_equal(raw_response(w, &rs), 0);
    assert_int_equal(rs.status, 409);
    assert_string_equal(rs.body,
                        "{\"error\":{\"code\":\"conflict\",\"message\":\"it \\\"clashes\\\"\"}}");
    /* HEAD: headers with the length, no body. */
    raw_sends(w, "HEAD /hello HTTP/1.1\r\nHost: t\r\n\r\nGET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    char *end = NULL;
    while (!(end = strstr(w->buf, "\r\n\r\n")))
        assert_true(raw_fill(w) > 0);
    assert_int_equal(strncmp(w->buf, "HTTP/1.1 200 OK\r\n", 17), 0);
    assert_non_null(strstr(w->buf, "Content-Length: 5\r\n"));
    size_t hl = (size_t)(end - w->buf) + 4;
    memmove(w->buf, w->buf + hl, w->len - hl);
    w->len -= hl;
    w->buf[w->len] = '\0';
    assert_int_equal(raw_response(w, &rs), 0); /* the next response starts right away */
    assert_string_equal(rs.body, "hello");
    raw_free(w);
}

static void test_async_reply(void **state)
{
    fix *f = *state;
    char u[256];
    url(f, u, sizeof u, "/async");
    double t0 = now_s();
    fetch r = get(&f->loop, f->c, u, 2000);
    double dt = now_s() - t0;
    assert_false(r.has_err);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "later");
    assert_true(dt >= 0.05);
    free(r.body);

    /* The client leaves before the timer answers: the answer is dropped, the request
     * freed (ASan/LSan would object otherwise), the server carries on. */
    raw *w = raw_connect(f->port);
    raw_sends(w, "GET /async HTTP/1.1\r\nHost: t\r\n\r\n");
    raw_free(w);
    /* Same with a reset: the request is detached from its dead connection. */
    w = raw_connect(f->port);
    raw_sends(w, "GET /async HTTP/1.1\r\nHost: t\r\n\r\n");
    usleep(10 * 1000);
    struct linger lg = {1, 0};
    setsockopt(w->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    raw_free(w);
    usleep(150 * 1000);
    url(f, u, sizeof u, "/hello");
    r = get(&f->loop, f->c, u, 2000);
    assert_int_equal(r.status, 200);
    free(r.body);
}

static long stat_field(fix *f, const char *name)
{
    char u[256];
    url(f, u, sizeof u, "/stats");
    fetch r = get(&f->loop, f->c, u, 2000);
    assert_int_equal(r.status, 200);
    char key[64];
    snprintf(key, sizeof key, "\"%s\":", name);
    const char *p = strstr(r.body, key);
    assert_non_null(p);
    long v = atol(p + strlen(key));
    free(r.body);
    return v;
}

static void test_keep_alive_reuse(void **state)
{
    fix *f = *state;
    char u[256];
    /* Whatever the client had open before, 20 sequential requests through it open
     * at most one new connection. */
    long before = stat_field(f, "accepted");
    url(f, u, sizeof u, "/hello");
    for (int i = 0; i < 20; i++) {
        fetch r = get(&f->loop, f->c, u, 2000);
        assert_int_equal(r.status, 200);
        free(r.body);
    }
    long after = stat_field(f, "accepted");
    assert_true(after - before <= 1);

    /* Server side: several requests on one raw connection, then Connection: close. */
    raw *w = raw_connect(f->port);
    resp rs;
    for (int i = 0; i < 3; i++) {
        raw_sends(w, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_int_equal(raw_response(w, &rs), 0);
        assert_int_equal(rs.status, 200);
        assert_null(strstr(rs.headers, "Connection: close"));
    }
    raw_sends(w, "GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_int_equal(raw_response(w, &rs), 0);
    assert_non_null(strstr(rs.headers, "Connection: close\r\n"));
    assert_true(raw_closed_within(w, 2000));
    raw_free(w);

    /* HTTP/1.0 closes unless asked to keep alive. */
    w = raw_connect(f->port);
    raw_sends(w, "GET /hello HTTP/1.0\r\n\r\n");
    assert_int_equal(raw_response(w, &rs), 0);
    assert_int_equal(rs.status, 200);
    assert_true(raw_closed_within(w, 2000));
    raw_free(w);
    w = raw_connect(f->port);
    raw_sends(w, "GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_int_equal(raw_response(w, &rs), 0);
    assert_non_null(strstr(rs.headers, "Connection: keep-alive\r\n"));
    raw_sends(w, "GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_int_equal(raw_response(w, &rs), 0);
    assert_int_equal(rs.status, 200);
    raw_free(w);
}

static void test_pipelining(void **state)
{
    fix *f = *state;
    raw *w = raw_connect(f->port);
    /* The slow one first: the quick ones behind it must wait their turn. */
    raw_sends(w, "GET /async HTTP/1.1\r\nHost: t\r\n\r\n"
                 "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n"
                 "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nxyz"
                 "GET /echo/1/2?q=3 HTTP/1.1\r\nHost: t\r\n\r\n"
                 "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n");
    resp rs;
    assert_int_equal(raw_response(w, &rs), 0);
    assert_string_equal(rs.body, "later");
    assert_int_equal(raw_response(w, &rs), 0);
    assert_string_equal(rs.body, "hello");
    assert_int_equal(raw_response(w, &rs), 0);
    assert_string_equal(rs.body, "xyz");
    assert_int_equal(raw_response(w, &rs), 0);
    assert_int_equal(strncmp(rs.body, "a=1|b=2|q=3|", 12), 0);
    assert_int_equal(raw_response(w, &rs), 0);
    assert_int_equal(rs.status, 404);

    /* A client that half-closes after pipelining still gets every answer. */
    raw *h = raw_connect(f->port);
    raw_sends(h, "GET /async HTTP/1.1\r\nHost: t\r\n\r\nGET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    shutdown(h->fd, SHUT_WR);
    assert_int_equal(raw_response(h, &rs), 0);
    assert_string_equal(rs.body, "later");
    assert_int_equal(raw_response(h, &rs), 0);
    assert_string_equal(rs.body, "hello");
    assert_true(raw_closed_within(h, 2000));
    raw_free(h);

    /* 200 pipelined requests in one write, byte-split across reads by the kernel. */
    char *many = malloc(200 * 40);
    size_t n = 0;
    for (int i = 0; i < 200; i++)
        n += (size_t)sprintf(many + n, "GET /echo/%d/x HTTP/1.1\r\nHost: t\r\n\r\n", i);
    assert_int_equal(raw_send(w, many, n), 0);
    free(many);
    for (int i = 0; i < 200; i++) {
        assert_int_equal(raw_response(w, &rs), 0);
        char want[32];
        snprintf(want, sizeof want, "a=%d|b=x|", i);
        assert_int_equal(strncmp(rs.body, want, strlen(want)), 0);
    }
    raw_free(w);
}

static void test_expect_continue_and_busy_arrivals(void **state)
{
    fix *f = *state;
    resp rs;
    raw *w = raw_connect(f->port);
    raw_sends(w, "POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                 "Content-Length: 5\r\n\r\n");
    /* The interim answer comes before we send the body. */
    const char *cont = "HTTP/1.1 100 Continue\r\n\r\n";
    while (w->len < strlen(cont))
        assert_true(raw_fill(w) > 0);
    assert_int_equal(strncmp(w->buf, cont, strlen(cont)), 0);
    memmove(w->buf, w->buf + strlen(cont), w->len - strlen(cont) + 1);
    w->len -= strlen(cont);
    raw_sends(w, "hello");
    assert_int_equal(raw_response(w, &rs), 0);
    assert_int_equal(rs.status, 200);
    assert_string_equal(rs.body, "hello");

    /* Requests that arrive while one is in flight wait, in order; past the pending
     * cap the server stops reading and resumes once it has caught up. */
    raw_sends(w, "GET /async HTTP/1.1\r\nHost: t\r\n\r\n");
    usleep(20 * 1000);
    enum { N = 3000 };
    size_t cap = (size_t)N * 40, n = 0;
    char *many = malloc(cap);
    for (int i = 0; i < N; i++)
        n += (size_t)snprintf(many + n, cap - n, "GET /echo/%d/y HTTP/1.1\r\nHost: t\r\n\r\n", i);
    assert_int_equal(raw_send(w, many, n), 0);
    free(many);
    assert_int_equal(raw_response(w, &rs), 0);
    assert_string_equal(rs.body, "later");
    for (int i = 0; i < N; i++) {
        assert_int_equal(raw_response(w, &rs), 0);
        char want[32];
        snprintf(want, sizeof want, "a=%d|b=y|", i);
        assert_int_equal(strncmp(rs.body, want, strlen(want)), 0);
    }

    /* A handler answering twice: the first answer goes out, the second is refused. */
    raw_sends(w, "GET /twice HTTP/1.1\r\nHost: t\r\n\r\nGET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_int_equal(raw_response(w, &rs), 0);
    assert_string_equal(rs.body, "one");
    assert_int_equal(raw_response(w, &rs), 0);
    assert_string_equal(rs.body, "hello");
    raw_free(w);
}

static void test_body_too_large(void **state)
{
    fix *f = *state;
    char u[256];
    size_t big = 10 * 1024 * 1024;
    char *body = malloc(big);
    assert_non_null(body);
    memset(body, 'b', big);

    /* Through the client (curl sends Expect: 100-continue for this size). */
    url(f, u, sizeof u, "/echo");
    fetch p;
    memset(&p, 0, sizeof p);
    double t0 = now_s();
    assert_int_equal(http_client_post(f->c, u, "text/plain", body, big, 5000, fetch_cb, &p), 0);
    fetch_wait(&f->loop, &p);
    assert_false(p.has_err);
    assert_int_equal(p.status, 413);
    assert_non_null(strstr(p.body, "\"code\":\"body_too_large\""));
    assert_true(now_s() - t0 < 2.0);
    free(p.body);

    /* A declared length over the limit is refused before any of the body is sent. */
    raw *d = raw_connect(f->port);
    raw_sends(d, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10485760\r\n\r\n");
    resp ds;
    assert_int_equal(raw_response(d, &ds), 0);
    assert_int_equal(ds.status, 413);
    raw_free(d);

    /* Raw, no Expect: headers then the body pushed as fast as the socket takes it. */
    raw *w = raw_connect(f->port);
    raw_sends(w, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10485760\r\n\r\n");
    (void)raw_send(w, body, big); /* the server may stop taking it: that's the point */
    resp rs;
    assert_int_equal(raw_response(w, &rs), 0);
    assert_int_equal(rs.status, 413);
    assert_non_null(strstr(rs.headers, "Connection: close"));
    raw_free(w);

    /* Chunked, no length up front: cut when the running total passes the limit. */
    w = raw_connect(f->port);
    raw_sends(w, "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    char chunk_hdr[32];
    snprintf(chunk_hdr, sizeof chunk_hdr, "%x\r\n", 32 * 1024);
    int sent_ok = 1;
    for (int i = 0; i < 4 && sent_ok; i++) {
        sent_ok = raw_send(w, chunk_hdr, strlen(chunk_hdr)) == 0 &&
                  raw_send(w, body, 32 * 1024) == 0 && raw_send(w, "\r\n", 2) == 0;
    }
    assert_int_equal(raw_response(w, &rs), 0);
    assert_int_equal(rs.status, 413);
    raw_free(w);
    free(body);

    /* A body just under the limit is fine, and the server still serves. */
    size_t ok = 64 * 1024;
    char *ob = malloc(ok);
    memset(ob, 'o', ok);
    memset(&p, 0, sizeof p);
    assert_int_equal(http_client_post(f->c, u, "text/plain", ob, ok, 5000, fetch_cb, &p), 0);
    fetch_wait(&f->loop, &p);
    assert_int_equal(p.status, 200);
    assert_int_equal(p.len, ok);
    assert_memory_equal(p.body, ob, ok);
    free(p.body);
    free(ob);
}

static void test_headers_too_large(void **state)
{
    fix *f = *state;
    raw *w = raw_connect(f->port);
    size_t n = 20 * 1024;
    char *req = malloc(n + 128);
    int off = sprintf(req, "GET /hello HTTP/1.1\r\nHost: t\r\nX-Big: ");
    memset(req + off, 'h', n);
    strcpy(req + off + n, "\r\n\r\n");
    (void)raw_send(w, req, strlen(req));
    resp rs;
    assert_int_equal(raw_response(w, &rs), 0);
    assert_int_equal(rs.status, 431);
    assert_non_null(strstr(rs.body, "\"code\":\"headers_too_large\""));
    assert_true(raw_closed_within(w, 2000));
    raw_free(w);

    /* Many small headers count too. */
    w = raw_connect(f->port);
    off = sprintf(req, "GET /hello HTTP/1.1\r\n");
    for (int i = 0; i < 100; i++)
        off += sprintf(req + off, "X-%d: v\r\n", i);
    strcpy(req + off, "\r\n");
    (void)raw_send(w, req, strlen(req));
    assert_int_equal(raw_response(w, &rs), 0);
    assert_int_equal(rs.status, 431);
    raw_free(w);
    free(req);

    /* A 10 KiB header is within the 16 KiB default. */
    w = raw_connect(f->port);
    char *ok = malloc(12 * 1024);
    off = sprintf(ok, "GET /hello HTTP/1.1\r\nX-Ok: ");
    memset(ok + off, 'k', 10 * 1024);
    strcpy(ok + off + 10 * 1024, "\r\n\r\n");
    raw_sends(w, ok);
    assert_int_equal(raw_response(w, &rs), 0);
    assert_int_equal(rs.status, 200);
    free(ok);
    raw_free(w);
}

static void test_malformed(void **state)
{
    fix *f = *state;
    const char *bad[] = {
        "GARBAGE\r\n\r\n",
        "GET /hello HTTP/9.9\r\n\r\n",
        "GET /hello HTTP/1.1\r\nBad Header\r\n\r\n",
        "POST /echo HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "GET hello HTTP/1.1\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        raw *w = raw_connect(f->port);
        raw_sends(w, bad[i]);
        resp rs;
        if (raw_response(w, &rs) != 0)
            fail_msg("no answer to malformed request %zu", i);
        assert_int_equal(rs.status, 400);
        assert_non_null(strstr(rs.body, "{\"error\":{\"code\":\"bad_request\""));
        assert_true(raw_closed_within(w, 2000));
        raw_free(w);
    }
    char u[256];
    url(f, u, sizeof u, "/hello");
    fetch r = get(&f->loop, f->c, u, 2000);
    assert_int_equal(r.status, 200);
    free(r.body);
}

static void test_client_timeout(void **state)
{
    fix *f = *state;
    char u[256];
    url(f, u, sizeof u, "/never");
    double t0 = now_s();
    fetch r = get(&f->loop, f->c, u, 200);
    double dt = now_s() - t0;
    assert_true(r.has_err);
    assert_string_equal(r.err, "timeout");
    assert_true(r.timed_out);
    assert_true(dt >= 0.19 && dt < 1.5);
    free(r.body);
    /* The client is fine afterwards. */
    url(f, u, sizeof u, "/hello");
    r = get(&f->loop, f->c, u, 2000);
    assert_false(r.has_err);
    assert_int_equal(r.status, 200);
    free(r.body);
}

/* A bare server thread that answers one request with a chunked body of `size` bytes
 * (no Content-Length), so only the running total can catch an oversized answer. */
typedef struct chunky {
    int lfd;
    int port;
    size_t size;
    uv_thread_t th;
} chunky;

static void chunky_thread(void *arg)
{
    chunky *k = arg;
    int fd = accept(k->lfd, NULL, NULL);
    if (fd < 0)
        return;
    char req[4096];
    size_t got = 0;
    while (got < sizeof req - 1) {
        ssize_t n = recv(fd, req + got, sizeof req - 1 - got, 0);
        if (n <= 0)
            break;
        got += (size_t)n;
        req[got] = '\0';
        if (strstr(req, "\r\n\r\n"))
            break;
    }
    const char *h = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    ssize_t ignored = send(fd, h, strlen(h), MSG_NOSIGNAL);
    char chunk[1024 + 16];
    size_t left = k->size;
    while (left > 0) {
        size_t c = left < 1024 ? left : 1024;
        int hl = sprintf(chunk, "%zx\r\n", c);
        memset(chunk + hl, 'c', c);
        memcpy(chunk + hl + c, "\r\n", 2);
        if (send(fd, chunk, (size_t)hl + c + 2, MSG_NOSIGNAL) < 0)
            break;
        left -= c;
    }
    ignored = send(fd, "0\r\n\r\n", 5, MSG_NOSIGNAL);
    (void)ignored;
    usleep(100 * 1000);
    close(fd);
}

static void chunky_start(chunky *k, size_t size)
{
    k->size = size;
    k->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    assert_int_equal(bind(k->lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(k->lfd, 4), 0);
    getsockname(k->lfd, (struct sockaddr *)&sa, &sl);
    k->port = ntohs(sa.sin_port);
    assert_int_equal(uv_thread_create(&k->th, chunky_thread, k), 0);
}

static void chunky_stop(chunky *k)
{
    uv_thread_join(&k->th);
    close(k->lfd);
}

static void test_response_cap(void **state)
{
    fix *f = *state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    http_client_opts o = {.max_response = 1000};
    http_client *c = http_client_new(&loop, &o);
    char u[256];
    url(f, u, sizeof u, "/big?n=5000");
    fetch r = get(&loop, c, u, 2000);
    assert_true(r.has_err);
    assert_string_equal(r.err, "response too large");
    assert_int_equal(r.len, 0);
    free(r.body);
    url(f, u, sizeof u, "/big?n=1000");
    r = get(&loop, c, u, 2000);
    assert_false(r.has_err);
    assert_int_equal(r.len, 1000);
    free(r.body);
    /* Default cap (8 MiB) lets a 2 MiB answer through. */
    url(f, u, sizeof u, "/big?n=2097152");
    r = get(&f->loop, f->c, u, 5000);
    assert_false(r.has_err);
    assert_int_equal(r.len, 2097152);
    free(r.body);
    /* Chunked answers have no length up front: the running total cuts them. */
    chunky k;
    chunky_start(&k, 5000);
    snprintf(u, sizeof u, "http://127.0.0.1:%d/chunks", k.port);
    r = get(&loop, c, u, 2000);
    assert_true(r.has_err);
    assert_string_equal(r.err, "response too large");
    free(r.body);
    chunky_stop(&k);
    chunky_start(&k, 900);
    snprintf(u, sizeof u, "http://127.0.0.1:%d/chunks", k.port);
    r = get(&loop, c, u, 2000);
    assert_false(r.has_err);
    assert_int_equal(r.len, 900);
    free(r.body);
    chunky_stop(&k);
    client_close(&loop, c);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_client_errors_and_close(void **state)
{
    fix *f = *state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    http_client *c = http_client_new(&loop, NULL);
    /* Nobody listens on a port we just freed. */
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    assert_int_equal(bind(s, (struct sockaddr *)&sa, sizeof sa), 0);
    getsockname(s, (struct sockaddr *)&sa, &sl);
    close(s);
    char u[256];
    snprintf(u, sizeof u, "http://127.0.0.1:%d/x", ntohs(sa.sin_port));
    fetch r = get(&loop, c, u, 2000);
    assert_true(r.has_err);
    assert_false(r.timed_out);
    assert_int_equal(r.status, 0);
    free(r.body);

    /* Pending requests complete with "closed" when the client closes; new ones are
     * refused once it is closing. */
    fetch p1, p2;
    memset(&p1, 0, sizeof p1);
    memset(&p2, 0, sizeof p2);
    url(f, u, sizeof u, "/never");
    assert_int_equal(http_client_get(c, u, 5000, fetch_cb, &p1), 0);
    assert_int_equal(http_client_get(c, u, 5000, fetch_cb, &p2), 0);
    for (int i = 0; i < 5; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    usleep(50 * 1000);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_false(p1.done);
    client_close(&loop, c);
    assert_true(p1.done && p2.done);
    assert_string_equal(p1.err, "closed");
    assert_string_equal(p2.err, "closed");
    free(p1.body);
    free(p2.body);
    assert_int_equal(uv_loop_close(&loop), 0);
}

typedef struct closer_ctx {
    http_client *c;
    int calls;
    int closed;
    int second_rc;
    char second_err[64];
} closer_ctx;

static void on_closer_done(void *arg)
{
    ((closer_ctx *)arg)->closed = 1;
}

static void closer_second_cb(void *arg, const http_response *res)
{
    closer_ctx *k = arg;
    snprintf(k->second_err, sizeof k->second_err, "%s", res->error ? res->error : "(none)");
}

/* The first answer's callback closes the client: the still-pending second request
 * completes with "closed", new requests are refused, and everything is freed. */
static void closer_cb(void *arg, const http_response *res)
{
    closer_ctx *k = arg;
    k->calls++;
    assert_null(res->error);
    http_client_close(k->c, on_closer_done, k);
    k->second_rc = http_client_get(k->c, "http://127.0.0.1:1/", 100, closer_second_cb, k);
}

static void test_client_close_from_callback(void **state)
{
    fix *f = *state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    closer_ctx k;
    memset(&k, 0, sizeof k);
    k.c = http_client_new(&loop, NULL);
    char u[256], u2[256];
    url(f, u, sizeof u, "/hello");
    url(f, u2, sizeof u2, "/never");
    assert_int_equal(http_client_get(k.c, u2, 5000, closer_second_cb, &k), 0);
    assert_int_equal(http_client_get(k.c, u, 5000, closer_cb, &k), 0);
    while (!k.closed)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(k.calls, 1);
    assert_int_equal(k.second_rc, -ECANCELED);
    assert_string_equal(k.second_err, "closed");
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_parallel_requests(void **state)
{
    fix *f = *state;
    enum { N = 50 };
    fetch fs[N];
    memset(fs, 0, sizeof fs);
    char u[256];
    for (int i = 0; i < N; i++) {
        snprintf(u, sizeof u, "%s%s", f->base, i % 2 ? "/async" : "/hello");
        assert_int_equal(http_client_get(f->c, u, 5000, fetch_cb, &fs[i]), 0);
    }
    for (int i = 0; i < N; i++) {
        fetch_wait(&f->loop, &fs[i]);
        assert_false(fs[i].has_err);
        assert_int_equal(fs[i].status, 200);
        assert_string_equal(fs[i].body, i % 2 ? "later" : "hello");
        free(fs[i].body);
    }
}

/* Limits: a server with short idle timeout and few connections. */
static void test_idle_timeout(void **state)
{
    (void)state;
    http_server_opts o = {.idle_timeout_ms = 300};
    senv *e = senv_start("idle", &o, "127.0.0.1:0");
    int port = senv_port(e);

    /* Silent client. */
    raw *w = raw_connect(port);
    double t0 = now_s();
    assert_true(raw_closed_within(w, 2000));
    double dt = now_s() - t0;
    assert_true(dt >= 0.25 && dt < 1.5);
    raw_free(w);

    /* Trickling client: a byte every 50 ms never completes a request in time. */
    w = raw_connect(port);
    const char *req =
        "GET /hello HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    t0 = now_s();
    int closed = 0;
    for (size_t i = 0; req[i] && !closed; i++) {
        if (raw_send(w, req + i, 1))
            closed = 1;
        else
            closed = raw_closed_within(w, 50);
    }
    dt = now_s() - t0;
    assert_true(closed || raw_closed_within(w, 1000));
    assert_true(dt < 1.5);
    raw_free(w);

    /* Keep-alive connection idle after an answer is closed too. */
    w = raw_connect(port);
    raw_sends(w, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    resp rs;
    assert_int_equal(raw_response(w, &rs), 0);
    assert_true(raw_closed_within(w, 2000));
    raw_free(w);

    /* A handler that takes longer than the idle timeout is not cut off. */
    w = raw_connect(port);
    raw_sends(w, "GET /async HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_int_equal(raw_response(w, &rs), 0);
    assert_string_equal(rs.body, "later");
    raw_free(w);
    senv_stop(e);
}

static void test_max_conns(void **state)
{
    (void)state;
    http_server_opts o = {.max_conns = 4};
    senv *e = senv_start("max", &o, "127.0.0.1:0");
    int port = senv_port(e);
    raw *w[4];
    resp rs;
    for (int i = 0; i < 4; i++) {
        w[i] = raw_connect(port);
        raw_sends(w[i], "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_int_equal(raw_response(w[i], &rs), 0);
    }
    /* The fifth is accepted by the kernel, then closed by us without an answer. */
    raw *x = raw_connect(port);
    const char *req = "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n";
    (void)raw_send(x, req, strlen(req));
    assert_int_equal(raw_response(x, &rs), -1);
    assert_int_equal(x->len, 0); /* not a byte came back */
    assert_true(raw_closed_within(x, 100));
    raw_free(x);
    /* Freeing a slot lets the next one in. */
    raw_free(w[0]);
    usleep(100 * 1000);
    w[0] = raw_connect(port);
    raw_sends(w[0], "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_int_equal(raw_response(w[0], &rs), 0);
    assert_int_equal(rs.status, 200);
    for (int i = 0; i < 4; i++)
        raw_free(w[i]);
    senv_stop(e);
}

static void test_reuseport(void **state)
{
    (void)state;
    senv *a = senv_start("A", NULL, "127.0.0.1:0");
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", senv_port(a));
    senv *b = senv_start("B", NULL, addr);
    assert_int_equal(senv_port(a), senv_port(b));
    int na = 0, nb = 0;
    for (int i = 0; i < 64; i++) {
        raw *w = raw_connect(senv_port(a));
        raw_sends(w, "GET /id HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        resp rs;
        assert_int_equal(raw_response(w, &rs), 0);
        if (strcmp(rs.body, "A") == 0)
            na++;
        else if (strcmp(rs.body, "B") == 0)
            nb++;
        raw_free(w);
    }
    print_message("reuseport: A answered %d, B answered %d\n", na, nb);
    assert_int_equal(na + nb, 64);
    assert_true(na > 0 && nb > 0);
    senv_stop(a);
    senv_stop(b);
}

static void test_listen_errors_and_multi(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    http_server *s = http_server_new(&loop, NULL);
    char err[256] = "";
    assert_true(http_server_listen(s, "nonsense", err, sizeof err) < 0);
    assert_true(err[0] != '\0');
    assert_true(http_server_listen(s, "256.1.1.1:80", err, sizeof err) < 0);
    assert_int_equal(http_server_listen(s, "127.0.0.1:0", err, sizeof err), 0);
    assert_int_equal(http_server_listen(s, "[::1]:0", err, sizeof err) == 0 ||
                         strstr(err, "Cannot assign") != NULL,
                     1);
    assert_true(http_server_port(s, 0) > 0);
    int closed = 0;
    http_server_close(s, on_client_closed, &closed);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_true(closed);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* A server closed with requests in flight and connections open frees everything. */
static void test_close_with_pending(void **state)
{
    (void)state;
    senv *e = senv_start("pending", NULL, "127.0.0.1:0");
    raw *w1 = raw_connect(senv_port(e));
    raw *w2 = raw_connect(senv_port(e));
    raw_sends(w1, "GET /never HTTP/1.1\r\nHost: t\r\n\r\n");
    raw_sends(w2, "GET /async HTTP/1.1\r\nHost: t\r\n\r\nGET /hello HTTP/1.1\r\n");
    raw *w3 = raw_connect(senv_port(e));
    raw_sends(w3, "GET /never HTTP/1.1\r\nHost: t\r\n\r\n");
    raw_free(w3); /* its request is detached, never answered */
    usleep(50 * 1000);
    senv_stop(e);
    assert_true(raw_closed_within(w1, 1000));
    raw_free(w1);
    raw_free(w2);
}

/* Reads one answer of /answer: its head into head, then Content-Length body bytes
 * (none for HEAD), each checked against answer_byte. Returns the status, or -1 if
 * the connection ended or timed out first or a byte was wrong. */
static int raw_answer(raw *r, int head_only, char *head, size_t hcap, size_t *blen)
{
    char *end;
    while (!(end = r->len ? strstr(r->buf, "\r\n\r\n") : NULL))
        if (raw_fill(r) <= 0)
            return -1;
    size_t hl = (size_t)(end - r->buf) + 4;
    assert_true(hl < hcap);
    memcpy(head, r->buf, hl);
    head[hl] = '\0';
    memmove(r->buf, r->buf + hl, r->len - hl + 1);
    r->len -= hl;
    int status;
    if (sscanf(head, "HTTP/1.1 %d", &status) != 1)
        return -1;
    const char *cl = strcasestr(head, "\r\nContent-Length:");
    *blen = cl ? (size_t)atol(cl + 17) : 0;
    for (size_t got = 0; !head_only && got < *blen;) {
        if (r->len == 0 && raw_fill(r) <= 0)
            return -1;
        size_t k = *blen - got < r->len ? *blen - got : r->len;
        for (size_t i = 0; i < k; i++)
            if (r->buf[i] != answer_byte(got + i))
                return -1;
        memmove(r->buf, r->buf + k, r->len - k + 1);
        r->len -= k;
        got += k;
    }
    return status;
}

static void test_prebuilt_answer(void **state)
{
    fix *f = *state;
    char head[1024];
    size_t blen;
    const size_t big = 300 * 1000; /* a memfd, and more than one socket buffer */

    /* Keep-alive: the answer's own block, sent from its memfd, three times over. */
    raw *w = raw_connect(f->port);
    for (int i = 0; i < 3; i++) {
        raw_sends(w, "GET /answer?n=300000 HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_int_equal(raw_answer(w, 0, head, sizeof head, &blen), 200);
        assert_int_equal(blen, big);
        assert_non_null(strstr(head, "Content-Type: text/plain\r\n"));
        assert_null(strcasestr(head, "Connection:"));
    }
    /* A small one (heap), HEAD, and an extra header: other heads, same body. */
    raw_sends(w, "GET /answer?n=100 HTTP/1.1\r\nHost: t\r\n\r\n"
                 "HEAD /answer?n=300000 HTTP/1.1\r\nHost: t\r\n\r\n"
                 "GET /answer?n=300000&x=1 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_int_equal(raw_answer(w, 0, head, sizeof head, &blen), 200);
    assert_int_equal(blen, 100);
    assert_int_equal(raw_answer(w, 1, head, sizeof head, &blen), 200);
    assert_int_equal(blen, big);
    assert_int_equal(raw_answer(w, 0, head, sizeof head, &blen), 200);
    assert_int_equal(blen, big);
    assert_non_null(strstr(head, "\r\nX-Extra: yes\r\n"));
    raw_free(w);

    /* 50 pipelined in one write: each answered at once inside the parse loop. */
    w = raw_connect(f->port);
    char many[50 * 48];
    size_t n = 0;
    for (int i = 0; i < 50; i++)
        n += (size_t)sprintf(many + n, "GET /answer?n=20000 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_int_equal(raw_send(w, many, n), 0);
    for (int i = 0; i < 50; i++) {
        assert_int_equal(raw_answer(w, 0, head, sizeof head, &blen), 200);
        assert_int_equal(blen, 20000);
    }
    raw_free(w);

    /* A client that reads late through a small window: an answer larger than the
     * socket's send buffer can grow to (4 MiB here), so the sendfile stops short,
     * the rest is queued by reference (the handler dropped the answer long ago),
     * and the requests behind wait for it. */
    const size_t huge = 12 * 1000 * 1000;
    w = raw_connect_rcvbuf(f->port, 4096);
    raw_sends(w, "GET /answer?n=12000000 HTTP/1.1\r\nHost: t\r\n\r\n"
                 "GET /answer?n=300000 HTTP/1.1\r\nHost: t\r\n\r\n"
                 "GET /answer?n=12000000 HTTP/1.0\r\n\r\n");
    usleep(300 * 1000);
    assert_int_equal(raw_answer(w, 0, head, sizeof head, &blen), 200);
    assert_int_equal(blen, huge);
    assert_int_equal(raw_answer(w, 0, head, sizeof head, &blen), 200);
    assert_int_equal(blen, big);
    /* HTTP/1.0 without keep-alive: closed after the answer. */
    assert_int_equal(raw_answer(w, 0, head, sizeof head, &blen), 200);
    assert_int_equal(blen, huge);
    assert_non_null(strstr(head, "\r\nConnection: close\r\n"));
    assert_true(raw_closed_within(w, 2000));
    raw_free(w);

    /* The same through the pipes (answers under HTTP_ANSWER_PIPE_MAX): pipelined
     * until the send buffer (up to 4 MiB) is full, so that a tee'd copy stops
     * short; what the socket did not take is dropped from the server's pipe and
     * written from the mapping, and the answers behind, and another
     * connection's meanwhile, come whole. */
    const size_t pipe_big = 900 * 1000;
    w = raw_connect_rcvbuf(f->port, 4096);
    for (int i = 0; i < 7; i++)
        raw_sends(w, "GET /answer?n=900000 HTTP/1.1\r\nHost: t\r\n\r\n");
    raw_sends(w, "GET /answer?n=20000 HTTP/1.1\r\nHost: t\r\n\r\n");
    usleep(300 * 1000);
    raw *w2 = raw_connect(f->port);
    raw_sends(w2, "GET /answer?n=900000 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_int_equal(raw_answer(w2, 0, head, sizeof head, &blen), 200);
    assert_int_equal(blen, pipe_big);
    for (int i = 0; i < 7; i++) {
        assert_int_equal(raw_answer(w, 0, head, sizeof head, &blen), 200);
        assert_int_equal(blen, pipe_big);
    }
    assert_int_equal(raw_answer(w, 0, head, sizeof head, &blen), 200);
    assert_int_equal(blen, 20000);
    raw_sends(w2, "GET /answer?n=900000 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_int_equal(raw_answer(w2, 0, head, sizeof head, &blen), 200);
    assert_int_equal(blen, pipe_big);
    raw_free(w2);
    raw_free(w);

    /* A client gone before its answer is taken: nothing leaks (ASan). */
    w = raw_connect_rcvbuf(f->port, 4096);
    raw_sends(w, "GET /answer?n=12000000 HTTP/1.1\r\nHost: t\r\n\r\n");
    usleep(100 * 1000);
    raw_free(w);
}

static void test_observer(void **state)
{
    (void)state;
    senv *e = senv_start("obs", NULL, "127.0.0.1:0");
    raw *w = raw_connect(senv_port(e));
    raw_sends(w, "GET /echo/1/2 HTTP/1.1\r\nHost: t\r\n\r\nGET /nope HTTP/1.1\r\nHost: t\r\n\r\n"
                 "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    resp rs;
    for (int i = 0; i < 3; i++)
        assert_int_equal(raw_response(w, &rs), 0);
    raw_free(w);
    uv_async_send(&e->stop);
    assert_int_equal(uv_thread_join(&e->th), 0);
    assert_int_equal(e->observed, 3);
    assert_int_equal(e->observed_404, 1);
    assert_int_equal(e->observed_echo_pattern, 1);
    assert_int_equal(uv_loop_close(&e->loop), 0);
    free(e);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_routes_params_query_headers),
        cmocka_unit_test(test_errors_404_405),
        cmocka_unit_test(test_async_reply),
        cmocka_unit_test(test_keep_alive_reuse),
        cmocka_unit_test(test_pipelining),
        cmocka_unit_test(test_prebuilt_answer),
        cmocka_unit_test(test_expect_continue_and_busy_arrivals),
        cmocka_unit_test(test_body_too_large),
        cmocka_unit_test(test_headers_too_large),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_client_timeout),
        cmocka_unit_test(test_response_cap),
        cmocka_unit_test(test_client_errors_and_close),
        cmocka_unit_test(test_client_close_from_callback),
        cmocka_unit_test(test_parallel_requests),
        cmocka_unit_test(test_idle_timeout),
        cmocka_unit_test(test_max_conns),
        cmocka_unit_test(test_reuseport),
        cmocka_unit_test(test_listen_errors_and_multi),
        cmocka_unit_test(test_close_with_pending),
        cmocka_unit_test(test_observer),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
