/* Asynchronous HTTP client: one curl multi per client, driven by the caller's libuv
 * loop (curl_multi_socket_action + uv_poll + uv_timer). Connections are reused
 * (keep-alive); every request has its own timeout and a response size cap. Host names
 * resolve on curl's threaded resolver (never on the loop); IP URLs need none. */
#ifndef ORGSYNC_HTTP_CLIENT_H
#define ORGSYNC_HTTP_CLIENT_H

#include <stddef.h>
#include <uv.h>

typedef struct http_client http_client;

typedef struct http_response {
    long status;      /* HTTP status, 0 if none arrived */
    const char *body; /* NUL-terminated; valid only during the callback */
    size_t body_len;
    const char *error; /* NULL when a full HTTP response arrived (any status); else
                          "timeout", "response too large", "closed", or curl's text */
    int timed_out;
    double seconds; /* total time of the request */
} http_response;

/* error NULL when a full HTTP response arrived (any status). Called exactly once per
 * accepted request, never from inside http_client_get/post. */
typedef void (*http_client_cb)(void *arg, const http_response *res);

/* 0 = 8 MiB, 64 */
typedef struct http_client_opts {
    size_t max_response;
    int max_host_connections;
} http_client_opts;

http_client *http_client_new(uv_loop_t *loop, const http_client_opts *opts);

/* 0 (cb will be called) or a negative errno (cb will not be called). */
int http_client_get(http_client *c, const char *url, int timeout_ms, http_client_cb cb, void *arg);
/* body is copied. */
int http_client_post(http_client *c, const char *url, const char *content_type, const char *body,
                     size_t len, int timeout_ms, http_client_cb cb, void *arg);

/* Pending requests complete with error "closed"; then done(arg) is called (from a
 * close callback) and the client is freed. */
void http_client_close(http_client *c, void (*done)(void *arg), void *arg);

#endif
