/* HTTP/1.1 server on one libuv loop.
 *
 * A connection runs one request at a time: parse until a message is complete (the
 * parser is paused there), dispatch it, and parse the next pipelined one only after
 * the previous answer has been written. Bytes that arrive meanwhile wait in a per
 * connection pending buffer; past a cap we stop reading, so a client cannot make us
 * buffer without bound. The request object and the output buffer belong to the
 * connection and are reused, so a keep-alive request costs no allocation once the
 * buffers have grown to its size, and each answer is one uv_write of one buffer.
 * A prebuilt answer (http_reply_answer) is not copied: its block is sent right away
 * when the socket takes it (the answer is then done within the call), by tee(2) from
 * the answer's pipe into the server's and splice(2) to the socket, or with
 * sendfile(2) from its memfd when it has no pipe; else written by reference with
 * uv_write, the connection holding the answer until the write is done.
 *
 * A request whose connection dies while its handler works is detached: it stays
 * valid until the handler answers (the answer is dropped) or the server closes. */
#include "common/http_server.h"

#include "common/log.h"
#include "common/router.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

#define HS_MAX_LISTENERS 8
#define HS_MAX_HEADERS 64
#define HS_MAX_QUERY 32
#define HS_READ_BUF (64 * 1024)
/* Pipelined bytes we accept while a request is in flight before we stop reading. */
#define HS_PENDING_CAP (64 * 1024)
/* After a closing answer we discard what the client still sends, for at most this long,
 * so its pending upload does not turn our close into a reset that eats the answer. */
#define HS_LINGER_MS 1000
/* Output buffers above this are released after the write instead of kept. */
#define HS_OUT_KEEP (256 * 1024)

typedef struct hs_conn hs_conn;

enum { REQ_IDLE = 0, REQ_ACTIVE, REQ_DETACHED };

typedef struct hs_listener {
    uv_tcp_t tcp;
    http_server *srv;
    int port;
} hs_listener;

typedef struct hs_hdr {
    uint32_t name, name_len, val, val_len;
} hs_hdr;

typedef struct hs_kv {
    uint32_t key, val;
} hs_kv;

struct http_req {
    hs_conn *conn; /* NULL once detached */
    http_server *srv;
    http_req *next_detached, *prev_detached;
    const char *method;
    int port;
    char peer[INET6_ADDRSTRLEN]; /* the client's address, "" if unknown */
    int keep_alive;
    int head;
    int state; /* REQ_IDLE, REQ_ACTIVE (handler owns it), REQ_DETACHED */
    /* url, header names and values, path and decoded query, NUL-separated; offsets */
    char *buf;
    size_t len, cap;
    uint32_t url, url_len;
    int hstate; /* 0 url, 1 header field, 2 header value, 3 trailers (not stored) */
    hs_hdr hdrs[HS_MAX_HEADERS];
    int nhdrs;
    hs_kv query[HS_MAX_QUERY];
    int nquery;
    const char *path;
    size_t header_bytes;
    char *body;
    size_t body_len, body_cap;
    char *xh; /* extra response headers, "Name: value\r\n"... */
    size_t xh_len, xh_cap;
    uint64_t t0;
    struct router_match m;
};

struct hs_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t wr;
    uv_write_t wr_cont;
    uv_shutdown_t sd;
    http_server *srv;
    hs_conn *prev, *next;
    http_parser parser;
    http_req *req;
    int port;
    int handles;           /* open uv handles; freed at 0 */
    int counted;           /* counts toward max_conns */
    unsigned busy : 1;     /* a dispatched request awaits its answer */
    unsigned writing : 1;  /* an answer is being written */
    unsigned msg_done : 1; /* the parser paused on a complete message */
    unsigned in_msg : 1;   /* the parser is inside a message */
    unsigned eof : 1;
    unsigned dead : 1; /* no more parsing: an error answer or close is under way */
    unsigned closing : 1;
    unsigned lingering : 1;
    unsigned reading : 1;
    unsigned close_after : 1; /* close once the current write completes */
    unsigned feeding : 1;     /* inside conn_feed: an answer sent at once does not pump */
    int err_status;           /* set by parser callbacks: 413, 431, 500 */
    char *pend;
    size_t pend_off, pend_len, pend_cap;
    char *out;
    size_t out_cap;
    http_answer *ans;            /* the cached answer being written, held until on_written */
    char peer[INET6_ADDRSTRLEN]; /* the client's address, "" if unknown */
};

struct http_server {
    uv_loop_t *loop;
    http_server_opts o;
    router *rt;
    http_parser_settings settings;
    hs_listener *ls[HS_MAX_LISTENERS];
    int nls;
    hs_conn *conns;
    int nconns; /* counted toward max_conns */
    long accepted;
    int handles;
    http_req *detached;
    http_observer obs;
    void *obs_arg;
    int closing;
    uv_timer_t closer;
    void (*done)(void *);
    void *done_arg;
    int tee_pipe[2]; /* empty between calls: an answer's pipe is tee'd in, spliced out */
    size_t tee_cap;  /* its size; 0: not made yet (or given up after a failure) */
    char rbuf[HS_READ_BUF];
};

static void conn_close(hs_conn *c);
static void conn_pump(hs_conn *c);
static void conn_start_reading(hs_conn *c);
static void on_conn_timer(uv_timer_t *t);

/* ---- small buffers ---------------------------------------------------------------- */

static int grow(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t ncap = *cap ? *cap : 256;
    while (ncap < need)
        ncap *= 2;
    char *nb = realloc(*buf, ncap);
    if (!nb)
        return -ENOMEM;
    *buf = nb;
    *cap = ncap;
    return 0;
}

static int req_append(http_req *r, const char *p, size_t n)
{
    if (grow(&r->buf, &r->cap, r->len + n + 1))
        return -ENOMEM;
    memcpy(r->buf + r->len, p, n);
    r->len += n;
    return 0;
}

static int req_terminate(http_req *r)
{
    return req_append(r, "", 1);
}

/* ---- request accessors ------------------------------------------------------------ */

const char *http_req_method(const http_req *r)
{
    return r->method;
}

const char *http_req_path(const http_req *r)
{
    return r->path;
}

int http_req_local_port(const http_req *r)
{
    return r->port;
}

int http_req_peer(const http_req *r, char *buf, size_t len)
{
    size_t n = strlen(r->peer);
    if (buf && len)
        buf[0] = '\0';
    if (n == 0)
        return -ENOTCONN;
    if (!buf || n >= len)
        return -ENOSPC;
    memcpy(buf, r->peer, n + 1);
    return 0;
}

const char *http_req_param(const http_req *r, const char *name)
{
    for (int i = 0; i < r->m.nparams; i++)
        if (r->m.names[i] && strcmp(r->m.names[i], name) == 0)
            return r->m.values[i];
    return NULL;
}

const char *http_req_query(const http_req *r, const char *name)
{
    for (int i = 0; i < r->nquery; i++)
        if (strcmp(r->buf + r->query[i].key, name) == 0)
            return r->buf + r->query[i].val;
    return NULL;
}

const char *http_req_header(const http_req *r, const char *name)
{
    for (int i = 0; i < r->nhdrs; i++)
        if (strcasecmp(r->buf + r->hdrs[i].name, name) == 0)
            return r->buf + r->hdrs[i].val;
    return NULL;
}

const char *http_req_body(const http_req *r, size_t *len)
{
    if (len)
        *len = r->body_len;
    return r->body ? r->body : "";
}

static int header_text_ok(const char *s)
{
    for (; *s; s++)
        if (*s == '\r' || *s == '\n')
            return 0;
    return 1;
}

void http_req_add_header(http_req *r, const char *name, const char *value)
{
    /* CR or LF would let a caller-supplied value split the response. */
    if (!name || !value || !name[0] || !header_text_ok(name) || !header_text_ok(value))
        return;
    size_t nl = strlen(name), vl = strlen(value);
    if (grow(&r->xh, &r->xh_cap, r->xh_len + nl + vl + 5))
        return;
    char *w = r->xh + r->xh_len;
    memcpy(w, name, nl);
    w += nl;
    *w++ = ':';
    *w++ = ' ';
    memcpy(w, value, vl);
    w += vl;
    *w++ = '\r';
    *w++ = '\n';
    r->xh_len = (size_t)(w - r->xh);
}

/* ---- parser callbacks -------------------------------------------------------------- */

static void req_reset(http_req *r)
{
    r->len = 0;
    r->url = r->url_len = 0;
    r->hstate = 0;
    r->nhdrs = 0;
    r->nquery = 0;
    r->path = "/";
    r->header_bytes = 0;
    r->body_len = 0;
    r->xh_len = 0;
    r->keep_alive = 0;
    r->head = 0;
    r->method = "-";
    r->m.nparams = 0;
    r->m.pattern = NULL;
}

static int on_message_begin(http_parser *p)
{
    hs_conn *c = p->data;
    if (!c->req) {
        c->req = calloc(1, sizeof(http_req));
        if (!c->req) {
            c->err_status = 500;
            return -1;
        }
        c->req->srv = c->srv;
        memcpy(c->req->peer, c->peer, sizeof(c->peer)); /* the req is this conn's for life */
    }
    req_reset(c->req);
    c->req->port = c->port;
    c->in_msg = 1;
    if (c->srv->obs)
        c->req->t0 = uv_hrtime();
    return 0;
}

/* Header bytes are counted as they arrive, so an endless header is cut at the limit
 * instead of being buffered. The 4 covers ": " and CRLF of each line. */
static int count_header(hs_conn *c, size_t n)
{
    c->req->header_bytes += n;
    if (c->req->header_bytes > c->srv->o.max_header) {
        c->err_status = 431;
        return -1;
    }
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t n)
{
    hs_conn *c = p->data;
    http_req *r = c->req;
    if (count_header(c, n) || req_append(r, at, n))
        return -1;
    r->url_len += (uint32_t)n;
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t n)
{
    hs_conn *c = p->data;
    http_req *r = c->req;
    if (count_header(c, n))
        return -1;
    if (r->hstate == 3)
        return 0;
    if (r->hstate != 1) {
        /* A new header line: close the previous string (url or value). */
        if (req_terminate(r))
            return -1;
        if (r->hstate == 2)
            r->hdrs[r->nhdrs - 1].val_len = (uint32_t)(r->len - 1 - r->hdrs[r->nhdrs - 1].val);
        if (r->nhdrs == HS_MAX_HEADERS) {
            c->err_status = 431;
            return -1;
        }
        if (count_header(c, 4))
            return -1;
        r->hdrs[r->nhdrs].name = (uint32_t)r->len;
        r->nhdrs++;
        r->hstate = 1;
    }
    return req_append(r, at, n);
}

static int on_header_value(http_parser *p, const char *at, size_t n)
{
    hs_conn *c = p->data;
    http_req *r = c->req;
    if (count_header(c, n))
        return -1;
    if (r->hstate == 3)
        return 0;
    if (r->hstate != 2) {
        if (req_terminate(r))
            return -1;
        hs_hdr *h = &r->hdrs[r->nhdrs - 1];
        h->name_len = (uint32_t)(r->len - 1 - h->name);
        h->val = (uint32_t)r->len;
        r->hstate = 2;
    }
    return req_append(r, at, n);
}

/* Decodes the query string into key/value pairs stored after the headers. A pair with
 * a bad escape is dropped: to the handler it is simply absent. */
static int parse_query(http_req *r, size_t q, size_t qlen)
{
    size_t i = 0;
    while (i < qlen && r->nquery < HS_MAX_QUERY) {
        size_t start = i;
        while (i < qlen && r->buf[q + i] != '&')
            i++;
        size_t plen = i - start;
        i++;
        if (plen == 0)
            continue;
        const char *pair = r->buf + q + start;
        const char *eq = memchr(pair, '=', plen);
        size_t klen = eq ? (size_t)(eq - pair) : plen;
        size_t vlen = eq ? plen - klen - 1 : 0;
        if (klen == 0)
            continue;
        if (grow(&r->buf, &r->cap, r->len + plen + 2))
            return -ENOMEM;
        pair = r->buf + q + start; /* grow may have moved it */
        size_t koff = r->len;
        int kl = router_percent_decode(pair, klen, 1, r->buf + koff, klen + 1);
        if (kl < 0)
            continue;
        size_t voff = koff + (size_t)kl + 1;
        int vl = router_percent_decode(eq ? pair + klen + 1 : "", vlen, 1, r->buf + voff, vlen + 1);
        if (vl < 0)
            continue;
        r->query[r->nquery].key = (uint32_t)koff;
        r->query[r->nquery].val = (uint32_t)voff;
        r->nquery++;
        r->len = voff + (size_t)vl + 1;
    }
    return 0;
}

static int split_url(hs_conn *c, http_req *r)
{
    struct http_parser_url u;
    http_parser_url_init(&u);
    if (r->url_len == 0 || http_parser_parse_url(r->buf + r->url, r->url_len, 0, &u) != 0)
        return -1;
    size_t path_off, path_len;
    if (u.field_set & (1 << UF_PATH)) {
        path_off = r->url + u.field_data[UF_PATH].off;
        path_len = u.field_data[UF_PATH].len;
    } else {
        path_off = 0;
        path_len = 0;
    }
    /* The path is copied so it is NUL-terminated on its own. */
    size_t pcopy = r->len;
    if (path_len == 0) {
        if (req_append(r, "/", 1) || req_terminate(r))
            return -1;
    } else {
        if (grow(&r->buf, &r->cap, r->len + path_len + 1))
            return -1;
        memcpy(r->buf + r->len, r->buf + path_off, path_len);
        r->len += path_len;
        if (req_terminate(r))
            return -1;
    }
    if (u.field_set & (1 << UF_QUERY)) {
        if (parse_query(r, r->url + u.field_data[UF_QUERY].off, u.field_data[UF_QUERY].len))
            return -1;
    }
    r->path = r->buf + pcopy;
    (void)c;
    return 0;
}

static const char CONTINUE_100[] = "HTTP/1.1 100 Continue\r\n\r\n";

static void on_continue_written(uv_write_t *wr, int status)
{
    (void)wr;
    (void)status;
}

static int on_headers_complete(http_parser *p)
{
    hs_conn *c = p->data;
    http_req *r = c->req;
    if (req_terminate(r))
        return -1;
    if (r->hstate == 2)
        r->hdrs[r->nhdrs - 1].val_len = (uint32_t)(r->len - 1 - r->hdrs[r->nhdrs - 1].val);
    else if (r->hstate == 1) /* a field with no value cannot happen in valid input */
        return -1;
    if (p->http_major != 1)
        return -1; /* http-parser takes "HTTP/9.9"; we speak 1.0 and 1.1 only */
    r->method = http_method_str((enum http_method)p->method);
    r->head = p->method == HTTP_HEAD;
    r->keep_alive = http_should_keep_alive(p);
    /* A declared body over the limit is refused before a byte of it is read. */
    if ((p->flags & F_CONTENTLENGTH) && p->content_length > c->srv->o.max_body) {
        c->err_status = 413;
        return -1;
    }
    if (split_url(c, r))
        return -1;
    /* Trailers of a chunked body come through the header callbacks after this:
     * storing them would grow r->buf and move it from under r->path and the
     * header and query offsets already handed out (found by fuzz_request). They
     * still count toward max_header. */
    r->hstate = 3;
    const char *expect = http_req_header(r, "Expect");
    if (expect && strcasecmp(expect, "100-continue") == 0 && p->http_minor >= 1) {
        uv_buf_t b = uv_buf_init((char *)CONTINUE_100, sizeof(CONTINUE_100) - 1);
        if (uv_write(&c->wr_cont, (uv_stream_t *)&c->tcp, &b, 1, on_continue_written))
            return -1;
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t n)
{
    hs_conn *c = p->data;
    http_req *r = c->req;
    if (r->body_len + n > c->srv->o.max_body) {
        c->err_status = 413;
        return -1;
    }
    if (grow(&r->body, &r->body_cap, r->body_len + n + 1))
        return -1;
    memcpy(r->body + r->body_len, at, n);
    r->body_len += n;
    r->body[r->body_len] = '\0';
    return 0;
}

static int on_message_complete(http_parser *p)
{
    hs_conn *c = p->data;
    if (c->req->body)
        c->req->body[c->req->body_len] = '\0';
    c->msg_done = 1;
    c->in_msg = 0;
    http_parser_pause(p, 1);
    return 0;
}

/* ---- writing answers ---------------------------------------------------------------- */

static void notify(http_server *s, const char *method, const char *pattern, int status, uint64_t t0)
{
    if (!s->obs)
        return;
    double secs = t0 ? (double)(uv_hrtime() - t0) / 1e9 : 0.0;
    s->obs(s->obs_arg, method, pattern, status, secs);
}

static void on_shutdown(uv_shutdown_t *sd, int status)
{
    hs_conn *c = sd->data;
    if (status < 0)
        conn_close(c);
}

/* Half-close, then drain: see HS_LINGER_MS. */
static void conn_linger(hs_conn *c)
{
    if (c->closing || c->lingering)
        return;
    c->lingering = 1;
    c->dead = 1;
    if (c->eof) {
        conn_close(c);
        return;
    }
    c->sd.data = c;
    if (uv_shutdown(&c->sd, (uv_stream_t *)&c->tcp, on_shutdown)) {
        conn_close(c);
        return;
    }
    int ms = c->srv->o.idle_timeout_ms < HS_LINGER_MS ? c->srv->o.idle_timeout_ms : HS_LINGER_MS;
    uv_timer_start(&c->timer, on_conn_timer, (uint64_t)ms, 0);
    conn_start_reading(c);
}

static void on_written(uv_write_t *wr, int status)
{
    hs_conn *c = wr->data;
    c->writing = 0;
    http_answer_unref(c->ans);
    c->ans = NULL;
    if (c->closing)
        return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    if (c->close_after) {
        conn_linger(c);
        return;
    }
    if (c->out_cap > HS_OUT_KEEP) {
        /* One huge answer should not pin its buffer for the connection's life. */
        free(c->out);
        c->out = NULL;
        c->out_cap = 0;
    }
    uv_timer_again(&c->timer);
    conn_pump(c);
}

static void conn_idle_clock(hs_conn *c)
{
    uv_timer_start(&c->timer, on_conn_timer, (uint64_t)c->srv->o.idle_timeout_ms,
                   (uint64_t)c->srv->o.idle_timeout_ms);
}

/* Writes bufs with one uv_write; the connection holds ans (NULL: the bytes are its
 * own output buffer) until the write is done. */
static int conn_send(hs_conn *c, const uv_buf_t *bufs, unsigned n, http_answer *ans, int keep_alive)
{
    c->close_after = !keep_alive;
    c->writing = 1;
    c->wr.data = c;
    int err = uv_write(&c->wr, (uv_stream_t *)&c->tcp, bufs, n, on_written);
    if (err) {
        c->writing = 0;
        return err;
    }
    c->ans = ans ? http_answer_ref(ans) : NULL;
    /* The idle clock also bounds a client that never reads our answer. */
    conn_idle_clock(c);
    return 0;
}

/* Formats status line, headers and body into the connection's output buffer and
 * writes it with one uv_write. */
static int conn_write(hs_conn *c, int status, const char *ctype, const char *xh, size_t xh_len,
                      const char *body, size_t len, int head, int keep_alive, int http10)
{
    if (!ctype)
        ctype = "application/octet-stream";
    if (grow(&c->out, &c->out_cap, HTTP_HEAD_MAX(strlen(ctype), xh_len) + len))
        return -ENOMEM;
    size_t off = http_head(c->out, c->out_cap, status, ctype, len, xh, xh_len, keep_alive, http10);
    if (!off)
        return -ENOMEM;
    if (len && !head) {
        memcpy(c->out + off, body, len);
        off += len;
    }
    uv_buf_t b = uv_buf_init(c->out, (unsigned)off);
    return conn_send(c, &b, 1, NULL, keep_alive);
}

static void tee_pipe_close(http_server *s)
{
    if (s->tee_cap) {
        close(s->tee_pipe[0]);
        close(s->tee_pipe[1]);
    }
    s->tee_cap = 0;
}

/* The server's pipe, empty and able to take len bytes; 0 or -1. */
static int tee_pipe_ready(http_server *s, size_t len)
{
    if (!s->tee_cap) {
        if (pipe2(s->tee_pipe, O_CLOEXEC | O_NONBLOCK))
            return -1;
        s->tee_cap = 1;
    }
    if (s->tee_cap < len) {
        int cap = fcntl(s->tee_pipe[1], F_SETPIPE_SZ, (int)len);
        if (cap < 0 || (size_t)cap < len) {
            tee_pipe_close(s);
            return -1;
        }
        s->tee_cap = (size_t)cap;
    }
    return 0;
}

/* Sends the first len bytes of ans's pipe to the socket fd: tee(2) into the
 * server's pipe (page references, no copy, no page lookup), then splice(2) out.
 * Returns how many went out, -1 on a socket error, -2 when the pipes could not
 * be used (the caller sends otherwise). Whatever the socket did not take is
 * dropped from the server's pipe (by closing it: rare, the socket was full). */
static ssize_t conn_tee(http_server *s, int fd, int in, size_t len)
{
    if (tee_pipe_ready(s, len))
        return -2;
    ssize_t n = tee(in, s->tee_pipe[1], len, SPLICE_F_NONBLOCK);
    if (n != (ssize_t)len) {
        tee_pipe_close(s);
        return -2;
    }
    size_t off = 0;
    ssize_t rc = 0;
    while (off < len) {
        ssize_t m = splice(s->tee_pipe[0], NULL, fd, NULL, len - off, SPLICE_F_NONBLOCK);
        if (m > 0) {
            off += (size_t)m;
            continue;
        }
        if (m < 0 && errno == EINTR)
            continue;
        if (m < 0 && errno != EAGAIN)
            rc = -1;
        break; /* the socket buffer is full: the rest is queued */
    }
    if (off < len)
        tee_pipe_close(s);
    return rc ? rc : (ssize_t)off;
}

/* Sends the first len bytes of ans's memfd now, with tee and splice, else
 * sendfile(2), when nothing is queued on the socket before them. Returns how
 * many went out (0 too when the answer has no file), or -1 on a socket error. */
static ssize_t conn_sendfile(hs_conn *c, const http_answer *ans, size_t len)
{
    uv_os_fd_t fd;
    int in = http_answer_fd(ans);
    if (in < 0 || uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) > 0 ||
        uv_fileno((const uv_handle_t *)&c->tcp, &fd))
        return 0;
    if (http_answer_pipe(ans) >= 0) {
        ssize_t sent = conn_tee(c->srv, fd, http_answer_pipe(ans), len);
        if (sent != -2)
            return sent;
    }
    off_t off = 0;
    while ((size_t)off < len) {
        ssize_t n = sendfile(fd, in, &off, len - (size_t)off);
        if (n > 0)
            continue;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno != EAGAIN)
            return -1;
        break; /* the socket buffer is full: the rest is queued */
    }
    return (ssize_t)off;
}

/* A keep-alive answer went out whole within the call: what on_written does then.
 * A pipelined request waiting is parsed now, unless we are inside the parse loop
 * (conn_feed), which goes on by itself once the handler returns. */
static void conn_sent(hs_conn *c)
{
    conn_idle_clock(c);
    if (!c->feeding)
        conn_pump(c);
}

static size_t error_json(char *out, size_t cap, const char *code, const char *message)
{
    char ec[128], em[512];
    log_json_escape(code ? code : "error", ec, sizeof ec);
    log_json_escape(message ? message : "", em, sizeof em);
    int n = snprintf(out, cap, "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}", ec, em);
    if (n < 0)
        return 0;
    return (size_t)n < cap ? (size_t)n : cap - 1;
}

/* An answer the server makes itself for a request it could not parse; the connection
 * closes after it. */
static void conn_fail(hs_conn *c, int status, const char *code, const char *message)
{
    char body[768];
    size_t len = error_json(body, sizeof body, code, message);
    c->dead = 1;
    notify(c->srv, c->req ? c->req->method : "-", NULL, status, c->req ? c->req->t0 : 0);
    if (conn_write(c, status, "application/json", NULL, 0, body, len, 0, 0, 0))
        conn_close(c);
}

static void req_free(http_req *r)
{
    if (!r)
        return;
    free(r->buf);
    free(r->body);
    free(r->xh);
    free(r);
}

static void detached_remove(http_req *r)
{
    http_server *s = r->srv;
    if (r->prev_detached)
        r->prev_detached->next_detached = r->next_detached;
    else
        s->detached = r->next_detached;
    if (r->next_detached)
        r->next_detached->prev_detached = r->prev_detached;
}

/* The connection to answer r on, once r is answered with status (metrics); NULL
 * when there is none: a second answer (refused), or the client went away (r is
 * freed). */
static hs_conn *reply_take(http_req *r, int status)
{
    if (!r)
        return NULL;
    if (r->state == REQ_IDLE) {
        /* A second answer to one request: a handler bug, refused loudly. */
        log_error("http_reply on a request already answered", LF_I("status", status));
        return NULL;
    }
    hs_conn *c = r->conn;
    notify(r->srv, r->method, r->m.pattern, status, r->t0);
    if (r->state == REQ_DETACHED) {
        /* The client went away while the handler worked: nobody to answer. */
        detached_remove(r);
        req_free(r);
        return NULL;
    }
    r->conn = NULL;
    r->state = REQ_IDLE;
    c->busy = 0;
    /* After a client's half-close we still answer what it sent; the pump closes
     * once nothing is left. */
    return c;
}

static int is_http10(const hs_conn *c)
{
    return c->parser.http_major == 1 && c->parser.http_minor == 0;
}

void http_reply(http_req *r, int status, const char *content_type, const char *body, size_t len)
{
    hs_conn *c = reply_take(r, status);
    if (!c)
        return;
    if (conn_write(c, status, content_type, r->xh, r->xh_len, body ? body : "", body ? len : 0,
                   r->head, r->keep_alive, is_http10(c)))
        conn_close(c);
}

void http_reply_answer(http_req *r, http_answer *ans)
{
    hs_conn *c = reply_take(r, http_answer_status(ans));
    if (!c)
        return;
    int keep = r->keep_alive, http10 = is_http10(c);
    size_t total, hl = http_answer_head_len(ans), blen = http_answer_body_len(ans);
    const char *bytes = http_answer_bytes(ans, &total);
    uv_buf_t b[2];
    unsigned nb = 0;
    if (keep && !http10 && !r->head && r->xh_len == 0) {
        /* The answer's own block fits this request: sent by reference. */
        ssize_t sent = conn_sendfile(c, ans, total);
        if (sent < 0) {
            conn_close(c);
            return;
        }
        if ((size_t)sent == total) {
            conn_sent(c);
            return;
        }
        b[nb++] = uv_buf_init((char *)bytes + sent, (unsigned)(total - (size_t)sent));
    } else {
        /* Another head (extra headers, HEAD, HTTP/1.0, closing), the same body. */
        const char *ct = http_answer_content_type(ans);
        size_t n = 0;
        if (grow(&c->out, &c->out_cap, HTTP_HEAD_MAX(strlen(ct), r->xh_len)) == 0)
            n = http_head(c->out, c->out_cap, http_answer_status(ans), ct, blen, r->xh, r->xh_len,
                          keep, http10);
        if (!n) {
            conn_close(c);
            return;
        }
        b[nb++] = uv_buf_init(c->out, (unsigned)n);
        if (!r->head && blen)
            b[nb++] = uv_buf_init((char *)bytes + hl, (unsigned)blen);
    }
    if (conn_send(c, b, nb, ans, keep))
        conn_close(c);
}

void http_reply_json(http_req *r, int status, const char *json)
{
    http_reply(r, status, "application/json", json, json ? strlen(json) : 0);
}

void http_reply_error(http_req *r, int status, const char *code, const char *message)
{
    char body[768];
    size_t len = error_json(body, sizeof body, code, message);
    http_reply(r, status, "application/json", body, len);
}

/* ---- parsing and dispatch ---------------------------------------------------------- */

static void dispatch(hs_conn *c)
{
    http_req *r = c->req;
    c->busy = 1;
    r->conn = c;
    r->state = REQ_ACTIVE;
    uv_timer_stop(&c->timer);
    int rc = router_match(c->srv->rt, r->method, r->path, &r->m);
    if (rc == 404) {
        http_reply_error(r, 404, "not_found", "no such route");
        return;
    }
    if (rc == 405) {
        http_req_add_header(r, "Allow", r->m.allow);
        http_reply_error(r, 405, "method_not_allowed", "method not allowed on this route");
        return;
    }
    ((http_handler)r->m.handler)(r, r->m.arg);
}

static void parse_failed(hs_conn *c)
{
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
    switch (c->err_status) {
    case 413:
        conn_fail(c, 413, "body_too_large", "request body too large");
        break;
    case 431:
        conn_fail(c, 431, "headers_too_large", "request headers too large");
        break;
    case 500:
        conn_fail(c, 500, "internal", "out of memory");
        break;
    default:
        conn_fail(c, 400, "bad_request", http_errno_description(e));
        break;
    }
}

/* Feeds bytes to the parser. Returns how many were consumed; on a complete message it
 * dispatches it and stops there (the rest waits until the answer is written). */
static size_t conn_feed(hs_conn *c, const char *data, size_t len)
{
    size_t n = http_parser_execute(&c->parser, &c->srv->settings, data, len);
    if (c->msg_done) {
        c->msg_done = 0;
        http_parser_pause(&c->parser, 0);
        if (c->parser.upgrade)
            c->req->keep_alive = 0; /* we speak nothing else; answer, then close */
        c->feeding = 1;
        dispatch(c);
        c->feeding = 0;
        return n;
    }
    if (HTTP_PARSER_ERRNO(&c->parser) != HPE_OK) {
        parse_failed(c);
        return len;
    }
    return n;
}

static int pend_append(hs_conn *c, const char *data, size_t len)
{
    if (c->pend_off > 0 && c->pend_off == c->pend_len)
        c->pend_off = c->pend_len = 0;
    if (c->pend_len + len > c->pend_cap && c->pend_off > 0) {
        memmove(c->pend, c->pend + c->pend_off, c->pend_len - c->pend_off);
        c->pend_len -= c->pend_off;
        c->pend_off = 0;
    }
    if (grow(&c->pend, &c->pend_cap, c->pend_len + len))
        return -ENOMEM;
    memcpy(c->pend + c->pend_len, data, len);
    c->pend_len += len;
    return 0;
}

static int conn_blocked(const hs_conn *c)
{
    return c->busy || c->writing || c->dead || c->closing;
}

/* Parses what waited while a request was in flight. */
static void conn_pump(hs_conn *c)
{
    while (!conn_blocked(c) && c->pend_off < c->pend_len) {
        size_t n = conn_feed(c, c->pend + c->pend_off, c->pend_len - c->pend_off);
        c->pend_off += n;
    }
    if (c->closing || c->dead)
        return;
    if (c->pend_off == c->pend_len)
        c->pend_off = c->pend_len = 0;
    if (conn_blocked(c))
        return;
    if (c->eof) {
        conn_close(c);
        return;
    }
    conn_start_reading(c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    hs_conn *c = h->data;
    (void)suggested;
    /* Reads are handed out one at a time per loop, so one buffer serves every
     * connection: parse happens in the read callback, leftovers are copied. */
    *buf = uv_buf_init(c->srv->rbuf, sizeof(c->srv->rbuf));
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    hs_conn *c = st->data;
    if (nread == 0 || c->closing)
        return;
    if (nread < 0) {
        c->eof = 1;
        uv_read_stop(st);
        c->reading = 0;
        /* A reset or EOF while idle ends the connection; while a request is in
         * flight we still answer it if the socket lets us. */
        if (nread != UV_EOF || c->lingering || !(c->busy || c->writing) || c->dead)
            conn_close(c);
        return;
    }
    if (c->lingering || c->dead)
        return; /* discarded on purpose */
    size_t len = (size_t)nread;
    if (conn_blocked(c) || c->pend_len > c->pend_off) {
        if (pend_append(c, buf->base, len)) {
            conn_close(c);
            return;
        }
        if (c->pend_len - c->pend_off > HS_PENDING_CAP) {
            uv_read_stop(st);
            c->reading = 0;
        }
        conn_pump(c);
        return;
    }
    size_t n = conn_feed(c, buf->base, len);
    if (n < len && !c->closing && !c->dead) {
        if (pend_append(c, buf->base + n, len - n)) {
            conn_close(c);
            return;
        }
        conn_pump(c); /* parses on if the request was answered at once (conn_sent) */
    }
}

static void conn_start_reading(hs_conn *c)
{
    if (c->reading || c->closing || c->eof)
        return;
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read)) {
        conn_close(c);
        return;
    }
    c->reading = 1;
}

/* ---- connection lifecycle ------------------------------------------------------------ */

static void server_maybe_done(http_server *s)
{
    if (!s->closing || s->handles > 0)
        return;
    while (s->detached) {
        http_req *r = s->detached;
        detached_remove(r);
        req_free(r);
    }
    router_free(s->rt);
    tee_pipe_close(s);
    void (*done)(void *) = s->done;
    void *arg = s->done_arg;
    free(s);
    if (done)
        done(arg);
}

static void on_conn_handle_closed(uv_handle_t *h)
{
    hs_conn *c = h->data;
    if (--c->handles > 0)
        return;
    http_server *s = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else if (s->conns == c)
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (c->counted)
        s->nconns--;
    req_free(c->req);
    http_answer_unref(c->ans);
    free(c->pend);
    free(c->out);
    free(c);
    s->handles--;
    server_maybe_done(s);
}

static void conn_close(hs_conn *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    c->dead = 1;
    if (c->busy && c->req) {
        /* The handler still holds the request: hand it to the server's list. */
        http_req *r = c->req;
        r->conn = NULL;
        r->state = REQ_DETACHED;
        r->prev_detached = NULL;
        r->next_detached = c->srv->detached;
        if (c->srv->detached)
            c->srv->detached->prev_detached = r;
        c->srv->detached = r;
        c->req = NULL;
        c->busy = 0;
    }
    uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
}

static void on_conn_timer(uv_timer_t *t)
{
    /* Idle past the timeout, a request trickling in too slowly, an answer nobody
     * reads, or the end of a linger: all end the connection. */
    conn_close(t->data);
}

static void conn_read_peer(hs_conn *c)
{
    struct sockaddr_storage ss;
    int sl = sizeof(ss);
    c->peer[0] = '\0';
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl))
        return;
    if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)&ss;
        /* An IPv4 client of a dual-stack listener: its dotted address. */
        if (IN6_IS_ADDR_V4MAPPED(&a6->sin6_addr))
            inet_ntop(AF_INET, &a6->sin6_addr.s6_addr[12], c->peer, sizeof(c->peer));
        else
            uv_ip6_name(a6, c->peer, sizeof(c->peer));
    } else if (ss.ss_family == AF_INET)
        uv_ip4_name((struct sockaddr_in *)&ss, c->peer, sizeof(c->peer));
}

static void on_connection(uv_stream_t *ls, int status)
{
    hs_listener *l = ls->data;
    http_server *s = l->srv;
    if (status < 0) {
        log_warn("http accept failed", LF_S("error", uv_strerror(status)));
        return;
    }
    hs_conn *c = calloc(1, sizeof(*c));
    if (!c) {
        log_error("http accept: out of memory");
        return;
    }
    c->srv = s;
    c->port = l->port;
    uv_tcp_init(s->loop, &c->tcp);
    c->tcp.data = c;
    c->handles = 1;
    s->handles++;
    uv_timer_init(s->loop, &c->timer);
    c->timer.data = c;
    c->handles++;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    if (uv_accept(ls, (uv_stream_t *)&c->tcp)) {
        conn_close(c);
        return;
    }
    if (s->closing || s->nconns >= s->o.max_conns) {
        /* Over the limit: closed at once, before any byte is read. */
        conn_close(c);
        return;
    }
    c->counted = 1;
    s->nconns++;
    s->accepted++;
    conn_read_peer(c);
    uv_tcp_nodelay(&c->tcp, 1);
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    uv_timer_start(&c->timer, on_conn_timer, (uint64_t)s->o.idle_timeout_ms,
                   (uint64_t)s->o.idle_timeout_ms);
    conn_start_reading(c);
}

/* ---- server ------------------------------------------------------------------------- */

http_server *http_server_new(uv_loop_t *loop, const http_server_opts *opts)
{
    http_server *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->loop = loop;
    if (opts)
        s->o = *opts;
    if (!s->o.max_body)
        s->o.max_body = 64 * 1024;
    if (!s->o.max_header)
        s->o.max_header = 16 * 1024;
    if (s->o.idle_timeout_ms <= 0)
        s->o.idle_timeout_ms = 30000;
    if (s->o.max_conns <= 0)
        s->o.max_conns = 1024;
    s->rt = router_new();
    if (!s->rt) {
        free(s);
        return NULL;
    }
    uv_timer_init(loop, &s->closer);
    s->closer.data = s;
    s->handles = 1;
    http_parser_settings_init(&s->settings);
    s->settings.on_message_begin = on_message_begin;
    s->settings.on_url = on_url;
    s->settings.on_header_field = on_header_field;
    s->settings.on_header_value = on_header_value;
    s->settings.on_headers_complete = on_headers_complete;
    s->settings.on_body = on_body;
    s->settings.on_message_complete = on_message_complete;
    return s;
}

int http_server_route(http_server *s, const char *method, const char *pattern, http_handler h,
                      void *arg)
{
    if (!s || !h)
        return -EINVAL;
    return router_add(s->rt, method, pattern, (void *)h, arg);
}

void http_server_set_observer(http_server *s, http_observer fn, void *arg)
{
    s->obs = fn;
    s->obs_arg = arg;
}

int http_server_conn_count(const http_server *s)
{
    return s->nconns;
}

long http_server_accepted_total(const http_server *s)
{
    return s->accepted;
}

int http_server_port(const http_server *s, int index)
{
    if (!s || index < 0 || index >= s->nls)
        return -1;
    return s->ls[index]->port;
}

static void seterr(char *err, size_t errlen, const char *what, const char *hp, int code)
{
    if (err && errlen)
        snprintf(err, errlen, "%s %s: %s", what, hp, strerror(code));
}

/* "host:port", "[v6]:port", ":port" or "*:port". Numeric hosts only (plus
 * "localhost"): listening must never wait on DNS. */
static int parse_host_port(const char *hp, struct sockaddr_storage *ss)
{
    char host[64];
    const char *colon = strrchr(hp, ':');
    if (!colon)
        return -EINVAL;
    size_t hl = (size_t)(colon - hp);
    const char *h = hp;
    if (hl >= 2 && hp[0] == '[' && hp[hl - 1] == ']') {
        h = hp + 1;
        hl -= 2;
    }
    if (hl >= sizeof host)
        return -EINVAL;
    memcpy(host, h, hl);
    host[hl] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end || port < 0 || port > 65535)
        return -EINVAL;
    if (hl == 0 || strcmp(host, "*") == 0)
        strcpy(host, "0.0.0.0");
    else if (strcmp(host, "localhost") == 0)
        strcpy(host, "127.0.0.1");
    memset(ss, 0, sizeof *ss);
    if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) == 0)
        return 0;
    if (uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss) == 0)
        return 0;
    return -EINVAL;
}

static void on_closer_closed(uv_handle_t *h)
{
    http_server *s = h->data;
    s->handles--;
    server_maybe_done(s);
}

static void on_listener_closed(uv_handle_t *h)
{
    hs_listener *l = h->data;
    http_server *s = l->srv;
    free(l);
    s->handles--;
    server_maybe_done(s);
}

int http_server_listen(http_server *s, const char *host_port, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    int fd = -1, rc, one = 1;
    hs_listener *l = NULL;
    if (!s || !host_port || s->closing)
        return -EINVAL;
    if (s->nls == HS_MAX_LISTENERS) {
        seterr(err, errlen, "listen", host_port, EMFILE);
        return -EMFILE;
    }
    rc = parse_host_port(host_port, &ss);
    if (rc) {
        if (err && errlen)
            snprintf(err, errlen, "listen %s: expected numeric host:port", host_port);
        return rc;
    }
    socklen_t sl =
        ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    /* libuv 1.44 cannot set SO_REUSEPORT, so the socket is made here and adopted:
     * several worker processes then share one port and the kernel spreads
     * connections over them. */
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        rc = -errno;
        seterr(err, errlen, "socket", host_port, errno);
        goto fail;
    }
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one)) {
        rc = -errno;
        seterr(err, errlen, "setsockopt", host_port, errno);
        goto fail;
    }
    if (bind(fd, (struct sockaddr *)&ss, sl)) {
        rc = -errno;
        seterr(err, errlen, "bind", host_port, errno);
        goto fail;
    }
    if (listen(fd, 511)) {
        rc = -errno;
        seterr(err, errlen, "listen", host_port, errno);
        goto fail;
    }
    struct sockaddr_storage bound;
    socklen_t bl = sizeof bound;
    if (getsockname(fd, (struct sockaddr *)&bound, &bl)) {
        rc = -errno;
        seterr(err, errlen, "getsockname", host_port, errno);
        goto fail;
    }
    l = calloc(1, sizeof(*l));
    if (!l) {
        rc = -ENOMEM;
        seterr(err, errlen, "listen", host_port, ENOMEM);
        goto fail;
    }
    l->srv = s;
    l->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                : ((struct sockaddr_in *)&bound)->sin_port);
    uv_tcp_init(s->loop, &l->tcp);
    l->tcp.data = l;
    s->handles++;
    rc = uv_tcp_open(&l->tcp, fd);
    if (rc == 0) {
        fd = -1; /* the handle owns it now */
        rc = uv_listen((uv_stream_t *)&l->tcp, 511, on_connection);
    }
    if (rc) {
        if (err && errlen)
            snprintf(err, errlen, "listen %s: %s", host_port, uv_strerror(rc));
        uv_close((uv_handle_t *)&l->tcp, on_listener_closed);
        if (fd >= 0)
            close(fd);
        return rc;
    }
    s->ls[s->nls++] = l;
    return 0;
fail:
    if (fd >= 0)
        close(fd);
    return rc;
}

void http_server_close(http_server *s, void (*done)(void *arg), void *arg)
{
    if (!s || s->closing)
        return;
    s->closing = 1;
    s->done = done;
    s->done_arg = arg;
    for (int i = 0; i < s->nls; i++)
        uv_close((uv_handle_t *)&s->ls[i]->tcp, on_listener_closed);
    s->nls = 0;
    for (hs_conn *c = s->conns; c; c = c->next)
        conn_close(c);
    /* Unanswered requests die with the server; their handlers must not answer now. */
    while (s->detached) {
        http_req *r = s->detached;
        detached_remove(r);
        req_free(r);
    }
    /* The server's own handle: done always comes from a close callback, even with
     * no listener or connection left. */
    uv_close((uv_handle_t *)&s->closer, on_closer_closed);
}
