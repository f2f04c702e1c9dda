/* The HTTP client's source address (http_client_opts.bind_addr) against the HTTP
 * server's view of its peer (http_req_peer), on one loop: a client bound to
 * 127.0.0.2 is seen as 127.0.0.2 by a server on 127.0.0.1, on every request; an
 * address that is not this host's fails the request instead of leaving from
 * another; names and interface names are refused when the client is made. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/http_client.h"
#include "common/http_server.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct fix {
    uv_loop_t loop;
    uv_timer_t tick; /* wakes UV_RUN_ONCE: a failed bind ends a request in a timer
                        callback, with no socket event to come */
    http_server *s;
    int port;
} fix;

typedef struct fetch {
    int done;
    long status;
    char body[256];
    char err[256];
    int has_err;
} fetch;

/* Answers "<peer>|<rc with a 4-byte buffer>". */
static void h_peer(http_req *r, void *arg)
{
    char peer[64] = "", tiny[4], out[128];
    int rc = http_req_peer(r, peer, sizeof(peer));
    int small = http_req_peer(r, tiny, sizeof(tiny));
    (void)arg;
    if (rc < 0)
        snprintf(peer, sizeof(peer), "error %d", rc);
    snprintf(out, sizeof(out), "%s|%d", peer, small);
    http_reply(r, 200, "text/plain", out, strlen(out));
}

static void fetch_cb(void *arg, const http_response *res)
{
    fetch *f = arg;
    f->done = 1;
    f->status = res->status;
    if (res->error) {
        f->has_err = 1;
        snprintf(f->err, sizeof(f->err), "%s", res->error);
    }
    snprintf(f->body, sizeof(f->body), "%.*s", (int)res->body_len, res->body);
}

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

static fetch get(fix *f, http_client *c, const char *url)
{
    fetch r;
    memset(&r, 0, sizeof(r));
    assert_int_equal(http_client_get(c, url, 3000, fetch_cb, &r), 0);
    uv_timer_start(&f->tick, on_tick, 10, 10);
    while (!r.done)
        uv_run(&f->loop, UV_RUN_ONCE);
    uv_timer_stop(&f->tick);
    return r;
}

static void on_closed(void *arg)
{
    *(int *)arg = 1;
}

static void client_close(fix *f, http_client *c)
{
    int closed = 0;
    http_client_close(c, on_closed, &closed);
    while (!closed)
        uv_run(&f->loop, UV_RUN_ONCE);
}

static int setup(void **state)
{
    fix *f = calloc(1, sizeof(*f));
    char err[256] = "";
    assert_non_null(f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    uv_timer_init(&f->loop, &f->tick);
    f->s = http_server_new(&f->loop, NULL);
    assert_non_null(f->s);
    assert_int_equal(http_server_route(f->s, "GET", "/peer", h_peer, NULL), 0);
    if (http_server_listen(f->s, "127.0.0.1:0", err, sizeof(err)))
        fail_msg("listen: %s", err);
    f->port = http_server_port(f->s, 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fix *f = *state;
    int closed = 0;
    http_server_close(f->s, on_closed, &closed);
    while (!closed)
        uv_run(&f->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&f->tick, NULL);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    free(f);
    return 0;
}

static void peer_url(fix *f, char *out, size_t n, const char *host)
{
    snprintf(out, n, "http://%s:%d/peer", host, f->port);
}

/* Without bind_addr the system picks 127.0.0.1; with it, every request (a new
 * connection or a reused one) leaves from the bound address. */
static void test_bound_source_address(void **state)
{
    fix *f = *state;
    char u[128], want[64];
    http_client *plain = http_client_new(&f->loop, NULL);
    http_client *two = http_client_new(&f->loop, &(http_client_opts){.bind_addr = "127.0.0.2"});
    http_client *three;
    char addr[16] = "127.0.0.3";
    fetch r;

    assert_non_null(plain);
    assert_non_null(two);
    /* The option's string is copied: it may change after the call. */
    three = http_client_new(&f->loop, &(http_client_opts){.bind_addr = addr});
    assert_non_null(three);
    snprintf(addr, sizeof(addr), "127.0.0.9");
    peer_url(f, u, sizeof(u), "127.0.0.1");

    r = get(f, plain, u);
    assert_false(r.has_err);
    assert_int_equal(r.status, 200);
    snprintf(want, sizeof(want), "127.0.0.1|%d", -ENOSPC);
    assert_string_equal(r.body, want);
    for (int i = 0; i < 3; i++) { /* keep-alive: the reused connection too */
        r = get(f, two, u);
        assert_false(r.has_err);
        snprintf(want, sizeof(want), "127.0.0.2|%d", -ENOSPC);
        assert_string_equal(r.body, want);
    }
    r = get(f, three, u);
    snprintf(want, sizeof(want), "127.0.0.3|%d", -ENOSPC);
    assert_string_equal(r.body, want);
    /* A name resolves to the bound address's family (localhost -> 127.0.0.1). */
    peer_url(f, u, sizeof(u), "localhost");
    r = get(f, two, u);
    assert_false(r.has_err);
    snprintf(want, sizeof(want), "127.0.0.2|%d", -ENOSPC);
    assert_string_equal(r.body, want);
    client_close(f, plain);
    client_close(f, two);
    client_close(f, three);
}

/* An address this host does not have: the request fails, it does not leave from
 * some other address. */
static void test_foreign_address_fails(void **state)
{
    fix *f = *state;
    char u[128];
    http_client *c = http_client_new(&f->loop, &(http_client_opts){.bind_addr = "192.0.2.1"});
    fetch r;

    assert_non_null(c);
    peer_url(f, u, sizeof(u), "127.0.0.1");
    r = get(f, c, u);
    assert_true(r.has_err);
    assert_int_equal(r.status, 0);
    client_close(f, c);
}

/* IPv6 when the host has ::1: the server on [::1] sees the bound ::1. */
static void test_ipv6(void **state)
{
    fix *f = *state;
    char err[256] = "", u[128];
    http_server *s6 = http_server_new(&f->loop, NULL);
    http_client *c;
    fetch r;
    int closed = 0;

    assert_non_null(s6);
    assert_int_equal(http_server_route(s6, "GET", "/peer", h_peer, NULL), 0);
    if (http_server_listen(s6, "[::1]:0", err, sizeof(err))) {
        print_message("no IPv6 loopback (%s): skipped\n", err);
        http_server_close(s6, on_closed, &closed);
        while (!closed)
            uv_run(&f->loop, UV_RUN_ONCE);
        skip();
    }
    c = http_client_new(&f->loop, &(http_client_opts){.bind_addr = "::1"});
    assert_non_null(c);
    snprintf(u, sizeof(u), "http://[::1]:%d/peer", http_server_port(s6, 0));
    r = get(f, c, u);
    assert_false(r.has_err);
    assert_int_equal(strncmp(r.body, "::1|", 4), 0);
    client_close(f, c);
    http_server_close(s6, on_closed, &closed);
    while (!closed)
        uv_run(&f->loop, UV_RUN_ONCE);
}

/* Only IP literals: never an interface name, a host name, a port or curl's own
 * prefixes. */
static void test_bad_bind_addr(void **state)
{
    fix *f = *state;
    static const char *const bad[] = {"localhost",    "eth0",         "lo",
                                      "127.0.0.1:80", "host!1.2.3.4", "if!lo",
                                      "[::1]",        "127.0.0.256",  " 127.0.0.1"};
    http_client *c;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        c = http_client_new(&f->loop, &(http_client_opts){.bind_addr = bad[i]});
        if (c) {
            client_close(f, c);
            fail_msg("bind_addr '%s' accepted", bad[i]);
        }
    }
    /* Empty is the same as none. */
    c = http_client_new(&f->loop, &(http_client_opts){.bind_addr = ""});
    assert_non_null(c);
    client_close(f, c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_bound_source_address, setup, teardown),
        cmocka_unit_test_setup_teardown(test_foreign_address_fails, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ipv6, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_bind_addr, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
