/* HTTP/1.1 server on a libuv loop, parsing with http-parser 2.9.
 *
 *   http_server *s = http_server_new(loop, NULL);
 *   http_server_route(s, "GET", "/v1/runs/{run_id}", on_run, ctx);
 *   http_server_listen(s, "127.0.0.1:8080", err, sizeof err);
 *
 * Keep-alive (HTTP/1.1 default, "Connection: close" honoured), pipelined requests are
 * answered in order, one request at a time per connection. Limits: a body over
 * max_body is answered 413 and the connection closed without reading the rest,
 * headers over max_header 431 and close, a malformed request 400 and close, a
 * connection idle (or trickling a request) past idle_timeout_ms is closed, and beyond
 * max_conns new connections are closed at once. Unknown routes are 404, wrong methods
 * 405 with Allow; every error body is {"error":{"code":..,"message":..}}. HEAD is
 * served by GET routes without the body.
 *
 * The idle clock runs while the server waits for a request to arrive in full and for
 * the client to take an answer; it stops while a handler works, so a slow handler is
 * never cut off. A client that half-closes after sending still gets its answers. After
 * a closing answer (error, "Connection: close") the server shuts down its side and
 * discards what the client still sends for at most a second, so a client in the middle
 * of an upload reads the answer instead of a reset. The request object, its buffers and
 * the output buffer are reused per connection: no allocation per keep-alive request.
 * An answer built once for many requests (common/http_answer.h) is sent by reference:
 * no copy of its body, and when it is large from kernel pages (tee(2) and splice(2)
 * from a pipe holding it, else sendfile(2) from its memfd). */
#ifndef ORGSYNC_HTTP_SERVER_H
#define ORGSYNC_HTTP_SERVER_H

#include <stddef.h>
#include <uv.h>

#include "common/http_answer.h"

typedef struct http_server http_server;
typedef struct http_req http_req;
typedef void (*http_handler)(http_req *req, void *arg);

/* 0 = defaults 64 KiB, 16 KiB, 30000 ms, 1024 */
typedef struct http_server_opts {
    size_t max_body;
    size_t max_header;
    int idle_timeout_ms;
    int max_conns;
} http_server_opts;

http_server *http_server_new(uv_loop_t *loop, const http_server_opts *opts);

/* Routes may be added before or after listen. 0 or negative errno (see router_add). */
int http_server_route(http_server *s, const char *method, const char *pattern, http_handler h,
                      void *arg);

/* "host:port" ("127.0.0.1:0" picks a free port; "[::1]:0" for IPv6). The socket is
 * created by hand with SO_REUSEPORT (and SO_REUSEADDR), bound, listened, then
 * uv_tcp_open'ed (libuv 1.44 has no reuseport flag). May be called several times to
 * listen on several ports. 0 or negative errno, err filled. */
int http_server_listen(http_server *s, const char *host_port, char *err, size_t errlen);

/* Actual port of the index-th listener, or -1. */
int http_server_port(const http_server *s, int index);

/* Called once per answered request (route_pattern NULL if none matched), for metrics. */
typedef void (*http_observer)(void *arg, const char *method, const char *route_pattern, int status,
                              double seconds);
void http_server_set_observer(http_server *s, http_observer fn, void *arg);

/* Number of open client connections, and of connections accepted since start
 * (tests, metrics). */
int http_server_conn_count(const http_server *s);
long http_server_accepted_total(const http_server *s);

/* Stops listening, closes every connection (unanswered requests are freed), then
 * calls done(arg) (may be NULL) from a close callback and frees the server. */
void http_server_close(http_server *s, void (*done)(void *arg), void *arg);

/* Request accessors: the strings live as long as the request (until http_reply). */
const char *http_req_method(const http_req *r);
const char *http_req_path(const http_req *r);                     /* raw path, no query */
const char *http_req_param(const http_req *r, const char *name);  /* from the route pattern */
const char *http_req_query(const http_req *r, const char *name);  /* decoded, NULL if absent */
const char *http_req_header(const http_req *r, const char *name); /* case-insensitive */
const char *http_req_body(const http_req *r, size_t *len);        /* NUL-terminated too */
int http_req_local_port(const http_req *r);                       /* which listener it came in on */
/* The client's IP address (the TCP peer, without port) as its socket reported it
 * when accepted: dotted IPv4 (also for an IPv4 client of a dual-stack listener)
 * or IPv6 text. 0, -ENOTCONN if it could not be read, -ENOSPC if buf is too small
 * (INET6_ADDRSTRLEN always fits); buf is "" on an error. */
int http_req_peer(const http_req *r, char *buf, size_t len);
/* Extra response header for the coming reply (name and value are copied). */
void http_req_add_header(http_req *r, const char *name, const char *value);

/* Answer exactly once, at any later time (handlers are async); the body is copied.
 * After it the req is gone. If the client went away meanwhile the answer is dropped
 * and the req still freed. A req never answered is freed when its connection or the
 * server closes (a handler that keeps a req across async work must therefore not use
 * it after the server is closed). */
void http_reply(http_req *r, int status, const char *content_type, const char *body, size_t len);
void http_reply_json(http_req *r, int status, const char *json);
/* {"error":{"code":..,"message":..}} */
void http_reply_error(http_req *r, int status, const char *code, const char *message);
/* Answers with a prebuilt answer (its status, type and body; the request's extra
 * headers, HEAD and keep-alive apply as with http_reply), without copying it: the
 * server takes a reference for as long as the write lasts. */
void http_reply_answer(http_req *r, http_answer *ans);

#endif
