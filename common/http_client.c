/* Asynchronous HTTP client: curl's multi-socket interface driven by a libuv loop.
 *
 * curl tells us which sockets to watch (socket callback -> one uv_poll each) and when
 * to call it back (timer callback -> one uv_timer); we hand events back with
 * curl_multi_socket_action and collect finished transfers from curl_multi_info_read.
 * Easy handles are pooled with their buffers, so a steady stream of requests reuses
 * them, and the multi's connection cache keeps connections alive between requests. */
#include "common/http_client.h"

#include "common/log.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HC_POOL_MAX 64

typedef struct hc_req hc_req;

struct hc_req {
    http_client *c;
    hc_req *prev, *next; /* in flight, or the free pool */
    CURL *easy;
    struct curl_slist *hdrs;
    http_client_cb cb;
    void *arg;
    char *body;
    size_t body_len, body_cap;
    char *post;
    size_t post_cap;
    int too_large;
    char errbuf[CURL_ERROR_SIZE];
};

typedef struct hc_sock hc_sock;
struct hc_sock {
    uv_poll_t poll;
    http_client *c;
    hc_sock *prev, *next;
    curl_socket_t fd;
};

struct http_client {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer;
    http_client_opts o;
    char bind[8 + INET6_ADDRSTRLEN]; /* "host!<addr>" for CURLOPT_INTERFACE, "" = none */
    long ipresolve;                  /* the bound address's family, or whatever */
    hc_req *active;
    hc_req *pool;
    int npool;
    hc_sock *socks; /* polls we opened and have not closed yet */
    int handles;    /* open uv handles: the timer and every poll */
    int closing;
    void (*done)(void *);
    void *done_arg;
};

static void check_done(http_client *c);

/* ---- curl -> uv: sockets and timer ------------------------------------------------- */

/* Every uv handle of the client ends here; the last one frees the client. */
static void client_handle_closed(http_client *c)
{
    if (--c->handles > 0 || !c->closing)
        return;
    void (*done)(void *) = c->done;
    void *arg = c->done_arg;
    free(c);
    if (done)
        done(arg);
}

static void on_poll_closed(uv_handle_t *h)
{
    hc_sock *s = h->data;
    http_client *c = s->c;
    free(s);
    client_handle_closed(c);
}

static void sock_close(http_client *c, hc_sock *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        c->socks = s->next;
    if (s->next)
        s->next->prev = s->prev;
    uv_close((uv_handle_t *)&s->poll, on_poll_closed);
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    hc_sock *s = p->data;
    http_client *c = s->c;
    int flags = 0;
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    int running = 0;
    if (c->closing)
        return;
    curl_multi_socket_action(c->multi, s->fd, flags, &running);
    check_done(c);
}

static int on_curl_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *sockp)
{
    http_client *c = userp;
    hc_sock *s = sockp;
    (void)easy;
    if (c->closing && what != CURL_POLL_REMOVE)
        return 0;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            sock_close(c, s);
            curl_multi_assign(c->multi, fd, NULL);
        }
        return 0;
    }
    if (!s) {
        s = calloc(1, sizeof(*s));
        if (!s)
            return -1;
        s->c = c;
        s->fd = fd;
        if (uv_poll_init_socket(c->loop, &s->poll, fd)) {
            free(s);
            return -1;
        }
        s->poll.data = s;
        c->handles++;
        s->next = c->socks;
        if (c->socks)
            c->socks->prev = s;
        c->socks = s;
        curl_multi_assign(c->multi, fd, s);
    }
    int ev = 0;
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
        ev |= UV_READABLE;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
        ev |= UV_WRITABLE;
    uv_poll_start(&s->poll, ev, on_poll);
    return 0;
}

static void on_timer(uv_timer_t *t)
{
    http_client *c = t->data;
    int running = 0;
    if (c->closing)
        return;
    curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(c);
}

static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
    http_client *c = userp;
    (void)multi;
    if (timeout_ms < 0)
        uv_timer_stop(&c->timer);
    else
        uv_timer_start(&c->timer, on_timer, (uint64_t)timeout_ms, 0);
    return 0;
}

/* ---- requests ---------------------------------------------------------------------- */

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userp)
{
    hc_req *r = userp;
    size_t n = size * nmemb;
    size_t max = r->c->o.max_response;
    if (r->body_len + n > max) {
        r->too_large = 1;
        return 0; /* curl aborts the transfer with CURLE_WRITE_ERROR */
    }
    size_t need = r->body_len + n + 1;
    if (need > r->body_cap) {
        size_t ncap = r->body_cap ? r->body_cap : 4096;
        while (ncap < need)
            ncap *= 2;
        char *nb = realloc(r->body, ncap);
        if (!nb)
            return 0;
        r->body = nb;
        r->body_cap = ncap;
    }
    memcpy(r->body + r->body_len, ptr, n);
    r->body_len += n;
    return n;
}

static void list_remove(hc_req **head, hc_req *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        *head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
}

static void list_push(hc_req **head, hc_req *r)
{
    r->prev = NULL;
    r->next = *head;
    if (*head)
        (*head)->prev = r;
    *head = r;
}

static void req_destroy(hc_req *r)
{
    if (r->easy)
        curl_easy_cleanup(r->easy);
    curl_slist_free_all(r->hdrs);
    free(r->body);
    free(r->post);
    free(r);
}

/* Returns a finished request to the pool (keeping its buffers), or frees it. */
static void req_release(http_client *c, hc_req *r)
{
    curl_slist_free_all(r->hdrs);
    r->hdrs = NULL;
    if (c->closing || c->npool >= HC_POOL_MAX) {
        req_destroy(r);
        return;
    }
    if (r->body_cap > 1024 * 1024) {
        /* A huge response should not pin its buffer in the pool forever. */
        free(r->body);
        r->body = NULL;
        r->body_cap = 0;
    }
    list_push(&c->pool, r);
    c->npool++;
}

static hc_req *req_get(http_client *c)
{
    hc_req *r = c->pool;
    if (r) {
        list_remove(&c->pool, r);
        c->npool--;
        curl_easy_reset(r->easy);
    } else {
        r = calloc(1, sizeof(*r));
        if (!r)
            return NULL;
        r->easy = curl_easy_init();
        if (!r->easy) {
            free(r);
            return NULL;
        }
    }
    r->c = c;
    r->body_len = 0;
    r->too_large = 0;
    r->errbuf[0] = '\0';
    return r;
}

static void finish(http_client *c, hc_req *r, CURLcode rc)
{
    http_response res;
    memset(&res, 0, sizeof res);
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &res.status);
    curl_easy_getinfo(r->easy, CURLINFO_TOTAL_TIME, &res.seconds);
    if (rc != CURLE_OK) {
        if (r->too_large || rc == CURLE_FILESIZE_EXCEEDED)
            res.error = "response too large";
        else if (rc == CURLE_OPERATION_TIMEDOUT) {
            res.error = "timeout";
            res.timed_out = 1;
        } else
            res.error = r->errbuf[0] ? r->errbuf : curl_easy_strerror(rc);
    }
    res.body = r->body ? r->body : "";
    if (r->body)
        r->body[r->body_len] = '\0';
    res.body_len = rc == CURLE_OK ? r->body_len : 0;
    curl_multi_remove_handle(c->multi, r->easy);
    list_remove(&c->active, r);
    http_client_cb cb = r->cb;
    void *arg = r->arg;
    /* The callback may start new requests: it must not get this one from the pool
     * while res.body still points into it, so release after the call. */
    cb(arg, &res);
    req_release(c, r);
}

static void check_done(http_client *c)
{
    CURLMsg *msg;
    int left;
    /* A callback may close the client: stop reading curl's queue then. */
    while (!c->closing && (msg = curl_multi_info_read(c->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        char *priv = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
        CURLcode rc = msg->data.result;
        if (priv)
            finish(c, (hc_req *)priv, rc);
    }
}

static int start(http_client *c, const char *url, const char *ctype, const char *body, size_t len,
                 int is_post, const char *range, int timeout_ms, http_client_cb cb, void *arg)
{
    if (!c || !url || !cb || timeout_ms < 0)
        return -EINVAL;
    if (c->closing)
        return -ECANCELED;
    hc_req *r = req_get(c);
    if (!r)
        return -ENOMEM;
    int err = -EINVAL;
    CURL *e = r->easy;
    r->cb = cb;
    r->arg = arg;
    curl_easy_setopt(e, CURLOPT_PRIVATE, r);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)c->o.max_response);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    if (c->bind[0]) {
        if (curl_easy_setopt(e, CURLOPT_INTERFACE, c->bind) != CURLE_OK) {
            err = -ENOMEM;
            goto fail;
        }
        curl_easy_setopt(e, CURLOPT_IPRESOLVE, c->ipresolve);
    }
    if (curl_easy_setopt(e, CURLOPT_URL, url) != CURLE_OK)
        goto fail;
    if (range && curl_easy_setopt(e, CURLOPT_RANGE, range) != CURLE_OK)
        goto fail;
    if (is_post) {
        if (len + 1 > r->post_cap) {
            char *np = realloc(r->post, len + 1);
            if (!np) {
                err = -ENOMEM;
                goto fail;
            }
            r->post = np;
            r->post_cap = len + 1;
        }
        if (len)
            memcpy(r->post, body, len);
        r->post[len] = '\0';
        curl_easy_setopt(e, CURLOPT_POST, 1L);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->post);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
        char ct[256];
        snprintf(ct, sizeof ct, "Content-Type: %s", ctype ? ctype : "application/json");
        r->hdrs = curl_slist_append(NULL, ct);
        if (!r->hdrs) {
            err = -ENOMEM;
            goto fail;
        }
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->hdrs);
    }
    if (curl_multi_add_handle(c->multi, e) != CURLM_OK) {
        err = -EIO;
        goto fail;
    }
    list_push(&c->active, r);
    return 0;
fail:
    req_release(c, r);
    return err;
}

int http_client_get(http_client *c, const char *url, int timeout_ms, http_client_cb cb, void *arg)
{
    return start(c, url, NULL, NULL, 0, 0, NULL, timeout_ms, cb, arg);
}

int http_client_get_range(http_client *c, const char *url, unsigned long long from,
                          unsigned long long to, int timeout_ms, http_client_cb cb, void *arg)
{
    char range[48];
    if (from > to)
        return -EINVAL;
    snprintf(range, sizeof(range), "%llu-%llu", from, to);
    return start(c, url, NULL, NULL, 0, 0, range, timeout_ms, cb, arg);
}

int http_client_post(http_client *c, const char *url, const char *content_type, const char *body,
                     size_t len, int timeout_ms, http_client_cb cb, void *arg)
{
    if (len && !body)
        return -EINVAL;
    return start(c, url, content_type, body, len, 1, NULL, timeout_ms, cb, arg);
}

/* ---- lifecycle ----------------------------------------------------------------------- */

static uv_once_t global_once = UV_ONCE_INIT;

static void global_init(void)
{
    /* Once per process, whichever thread's loop makes the first client; never
     * cleaned up, as other parts of the process may use curl too. */
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

http_client *http_client_new(uv_loop_t *loop, const http_client_opts *opts)
{
    uv_once(&global_once, global_init);
    http_client *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->loop = loop;
    if (opts)
        c->o = *opts;
    c->ipresolve = CURL_IPRESOLVE_WHATEVER;
    if (c->o.bind_addr && c->o.bind_addr[0]) {
        unsigned char a[16];
        if (inet_pton(AF_INET, c->o.bind_addr, a) == 1) {
            c->ipresolve = CURL_IPRESOLVE_V4;
        } else if (inet_pton(AF_INET6, c->o.bind_addr, a) == 1) {
            c->ipresolve = CURL_IPRESOLVE_V6;
        } else {
            log_error("http client: bind address is not an IP address literal",
                      LF_S("bind_addr", c->o.bind_addr));
            free(c);
            return NULL;
        }
        snprintf(c->bind, sizeof(c->bind), "host!%s", c->o.bind_addr);
    }
    c->o.bind_addr = NULL; /* copied: the caller's string may go */
    if (!c->o.max_response)
        c->o.max_response = 8 * 1024 * 1024;
    if (c->o.max_host_connections <= 0)
        c->o.max_host_connections = 64;
    c->multi = curl_multi_init();
    if (!c->multi) {
        free(c);
        return NULL;
    }
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    c->handles = 1;
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)c->o.max_host_connections);
    /* Keep as many idle connections as we may open, so bursts reuse them. */
    curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, (long)c->o.max_host_connections * 4);
    return c;
}

static void on_client_timer_closed(uv_handle_t *h)
{
    client_handle_closed(h->data);
}

void http_client_close(http_client *c, void (*done)(void *arg), void *arg)
{
    if (!c || c->closing)
        return;
    c->closing = 1;
    c->done = done;
    c->done_arg = arg;
    /* Complete what is pending first: callbacks run while the client is still whole
     * (new requests are refused with -ECANCELED). */
    while (c->active) {
        hc_req *r = c->active;
        http_response res;
        memset(&res, 0, sizeof res);
        res.error = "closed";
        res.body = "";
        curl_multi_remove_handle(c->multi, r->easy);
        list_remove(&c->active, r);
        r->cb(r->arg, &res);
        req_destroy(r);
    }
    while (c->pool) {
        hc_req *r = c->pool;
        list_remove(&c->pool, r);
        req_destroy(r);
    }
    c->npool = 0;
    /* Our polls go first, detached from curl, so that whatever curl does with its
     * cached connections during cleanup cannot reach a closing handle. */
    while (c->socks) {
        hc_sock *s = c->socks;
        curl_multi_assign(c->multi, s->fd, NULL);
        sock_close(c, s);
    }
    curl_multi_cleanup(c->multi);
    c->multi = NULL;
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, on_client_timer_closed);
}
