/* libFuzzer: raw bytes on a TCP connection to the real HTTP server with every
 * API route registered (the request parser, the router, query and body
 * handling, auth and input validation of each route). PostgreSQL and Redis
 * point at a port nothing listens on, so a request that passes validation is
 * answered 503 at once, without I/O: the target stays fast and deterministic.
 *
 * Each input is written on a fresh connection, the write side is shut, and the
 * loop runs until the server has closed the connection. A server that neither
 * answers nor closes within 5 s is a hang and aborts. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <uv.h>

#include "common/http_server.h"
#include "common/log.h"
#include "common/pg.h"
#include "common/redis.h"
#include "common/settings.h"
#include "common/timeutil.h"
#include "worker/api/api.h"

static uv_loop_t loop;
static uv_timer_t tick;
static settings st;
static int port;

static const char *fz_getenv(const char *name, void *arg)
{
    (void)arg;
    if (!strcmp(name, "ORGSYNC_ADMIN_TOKEN"))
        return "fuzz-admin-token-0123456789";
    if (!strcmp(name, "ORGSYNC_PG_DSN"))
        return "host=127.0.0.1 port=9 dbname=none connect_timeout=1";
    if (!strcmp(name, "ORGSYNC_REDIS_URL"))
        return "redis://127.0.0.1:9/0";
    if (!strcmp(name, "ORGSYNC_LOG_LEVEL"))
        return "error";
    if (!strcmp(name, "ORGSYNC_PUBLIC_READS"))
        return "on"; /* the read routes' parsing stays reachable without a token */
    return NULL;
}

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

static void setup(void)
{
    char err[256];
    http_server *srv;
    api *a;

    log_init(LOG_ERROR + 1, 1, "fuzz", 0); /* silence: the 503s are expected */
    if (settings_load_from(&st, NULL, fz_getenv, NULL, err, sizeof err)) {
        fprintf(stderr, "fuzz_request: %s\n", err);
        abort();
    }
    uv_loop_init(&loop);
    pg_pool *pg = pg_pool_new(&loop, &(pg_pool_opts){.dsn = st.pg_dsn, .size = 1});
    redis_client *rc = redis_new(&loop, &(redis_opts){.url = st.redis_url});
    srv = http_server_new(&loop, &(http_server_opts){.idle_timeout_ms = 2000});
    if (!pg || !rc || !srv)
        abort();
    api_deps d = {.loop = &loop, .settings = &st, .pg = pg, .redis = rc, .cache_ms = -1};
    if (api_register(srv, &d, &a))
        abort();
    if (http_server_listen(srv, "127.0.0.1:0", err, sizeof err)) {
        fprintf(stderr, "fuzz_request: %s\n", err);
        abort();
    }
    port = http_server_port(srv, 0);
    uv_timer_init(&loop, &tick);
    uv_timer_start(&tick, on_tick, 1, 1); /* keeps UV_RUN_ONCE from sleeping */
    /* Everything lives for the whole process: libFuzzer never returns. */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    char rbuf[65536];
    size_t off = 0, got = 0;
    int fd, shut = 0;

    if (!port)
        setup();
    if (size > 256 * 1024)
        return 0;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* Hundreds of thousands of connections: a failed connect is the machine
     * running out of ephemeral ports, not a finding; let the loop close what it
     * can and try again. */
    for (int attempt = 0;; attempt++) {
        fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0)
            abort();
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0)
            break;
        int e = errno;
        close(fd);
        if (attempt == 200) {
            fprintf(stderr, "fuzz_request: connect: %s\n", strerror(e));
            abort();
        }
        uv_run(&loop, UV_RUN_NOWAIT);
        usleep(10000);
    }
    fcntl(fd, F_SETFL, O_NONBLOCK);
    uint64_t end = time_mono_us() + 5000000;
    for (;;) {
        if (!shut) {
            while (off < size) {
                ssize_t w = send(fd, data + off, size - off, MSG_NOSIGNAL);
                if (w <= 0)
                    break;
                off += (size_t)w;
            }
            if (off == size || (errno != EAGAIN && errno != EWOULDBLOCK)) {
                shutdown(fd, SHUT_WR);
                shut = 1;
            }
        }
        uv_run(&loop, UV_RUN_ONCE);
        ssize_t n = recv(fd, rbuf, sizeof rbuf, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK))
            break; /* closed by the server: done */
        if (n > 0 && got == 0 && (n < 9 || memcmp(rbuf, "HTTP/1.1 ", 9) != 0))
            abort(); /* an answer that is not HTTP */
        if (n > 0)
            got += (size_t)n;
        if (time_mono_us() > end) {
            fprintf(stderr, "fuzz_request: connection neither answered nor closed in 5 s\n");
            abort();
        }
    }
    /* RST instead of FIN: no TIME_WAIT left behind on our side */
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
    return 0;
}
