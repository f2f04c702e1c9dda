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

/* 0 = 8 MiB, 64; bind_addr NULL or "" = the system's choice of source address.
 *
 * bind_addr: a local IPv4 or IPv6 address literal that every connection of the
 * client is bound to (its source address: which egress a multi-homed host uses, or
 * 127.0.0.x per simulated host in tests). It is given to curl as "host!<addr>", so
 * it is never taken for an interface name, and being a literal it is never
 * resolved. Names resolve to that address's family only. A request whose bind
 * fails (the address is not this host's) fails; it never leaves from another. */
typedef struct http_client_opts {
    size_t max_response;
    int max_host_connections;
    const char *bind_addr;
} http_client_opts;

/* NULL on out of memory, or when bind_addr is not an IP address literal (logged).
 * bind_addr is copied. */
http_client *http_client_new(uv_loop_t *loop, const http_client_opts *opts);

/* 0 (cb will be called) or a negative errno (cb will not be called). */
int http_client_get(http_client *c, const char *url, int timeout_ms, http_client_cb cb, void *arg);
/* GET of bytes from..to (inclusive) with a Range header: a server that honours
 * it answers 206 with those bytes (the caller checks the status and length; a
 * 200 is the whole resource). The answer is bounded by max_response like any. */
int http_client_get_range(http_client *c, const char *url, unsigned long long from,
                          unsigned long long to, int timeout_ms, http_client_cb cb, void *arg);
/* body is copied. */
int http_client_post(http_client *c, const char *url, const char *content_type, const char *body,
                     size_t len, int timeout_ms, http_client_cb cb, void *arg);

/* Pending requests complete with error "closed"; then done(arg) is called (from a
 * close callback) and the client is freed. */
void http_client_close(http_client *c, void (*done)(void *arg), void *arg);

#endif
