/* Async Redis client on one libuv loop (hiredis 0.14.1 + its libuv adapter).
 *
 *   redis_client *rc = redis_new(loop, &(redis_opts){.url = "redis://127.0.0.1:6379/0"});
 *   redis_cmd(rc, on_reply, arg, "SET %s %b", key, val, vlen);
 *   ...
 *   redis_close(rc, on_closed, arg);   // every pending callback runs once, then on_closed
 *
 * The client owns one connection at a time (a hiredis context is one connection);
 * when it drops, a new context is made after a full-jitter exponential backoff
 * (100 ms base, 5 s cap). Connect and command timeouts are our own uv timers. A
 * command that times out gets "timeout" at once; the connection it was sent on is
 * then dropped and replaced (commands queued behind it get "disconnected"), since
 * replies come in order and a connection with a stuck reply ahead of every later
 * one is useless; a half-open connection would never recover at all. A late reply
 * is never delivered to anyone. Host names are resolved on libuv's thread pool;
 * nothing here blocks the loop. Not supported: pub/sub, MONITOR, TLS.
 *
 * Handshake on every connection: AUTH [user] password (when a password is set),
 * SELECT db; the connection counts as up when SELECT answers. With a
 * redis-sentinel:// URL each connection is preceded by a question to one sentinel
 * (SENTINEL get-master-addr-by-name; on failure the next sentinel is asked on the
 * next attempt), and the handshake ends with ROLE, which must answer "master".
 * A lost connection, a READONLY error reply or a ROLE that is not "master" sends
 * the next connection back to the sentinels. */
#ifndef ORGSYNC_REDIS_H
#define ORGSYNC_REDIS_H

#include <stddef.h>
#include <hiredis/hiredis.h>
#include <uv.h>

typedef struct redis_client redis_client;

/* err is NULL on success. On a transport failure (timeout, disconnected, not
 * connected, closing) reply is NULL and err says which. A Redis error reply
 * (REDIS_REPLY_ERROR) comes with reply set AND err = reply->str. The reply is
 * valid only during the callback. Every callback is called exactly once. */
typedef void (*redis_cb)(void *arg, redisReply *reply, const char *err);

/* The transport error strings handed to callbacks (compare with strcmp). */
#define REDIS_ERR_TIMEOUT "timeout"
#define REDIS_ERR_DISCONNECTED "disconnected"
#define REDIS_ERR_NOT_CONNECTED "not connected"
#define REDIS_ERR_CLOSING "closing"

typedef struct redis_opts {
    const char *url;
    int connect_timeout_ms;
    int command_timeout_ms;
} redis_opts; /* defaults if 0: 2000, 2000 */

/* A parsed ORGSYNC_REDIS_URL. Two shapes:
 *
 *   redis://[[user]:password@]host[:port][/db]
 *       one server (port 6379, db 0 by default).
 *   redis-sentinel://[[user]:password@]host[:port][,host[:port]...]/master[?query]
 *       Sentinel discovery: the hosts are sentinels (port 26379 by default); the
 *       path is the master's name. Query keys (values %-escaped):
 *         db=N                    database on the master (default 0)
 *         sentinel_user=NAME      user for the sentinels (default: none)
 *         sentinel_password=PW    password for the sentinels (default: none; the
 *                                 user:password before '@' is for the master)
 *
 * With a user, AUTH user password is sent (Redis 6 ACLs); with a password only,
 * AUTH password (the "default" user). TLS (rediss://) is not supported. */
#define REDIS_MAX_SENTINELS 8
typedef struct redis_addr {
    char host[256];
    int port;
} redis_addr;

typedef struct redis_url_info {
    int sentinel; /* 1 for redis-sentinel:// */
    char user[128], password[256];
    int db;
    int naddrs;                            /* 1 for redis:// */
    redis_addr addrs[REDIS_MAX_SENTINELS]; /* the server, or the sentinels */
    char master[128];                      /* sentinel: the master's name */
    char sentinel_user[128], sentinel_password[256];
} redis_url_info;

/* Pure; 0, or -1 with err filled ("ORGSYNC_REDIS_URL: ..."-ready text without the
 * variable name, never quoting a password). */
int redis_url_parse_full(const char *url, redis_url_info *out, char *err, size_t errlen);

/* The older one-server form of the above: redis:// only (a redis-sentinel:// URL
 * is an error here), and the user name, if any, is not returned. */
int redis_url_parse(const char *url, char *host, size_t hostlen, int *port, char *password,
                    size_t pwlen, int *db, char *err, size_t errlen);

/* Starts connecting (AUTH, SELECT), never blocks. NULL on a bad URL (logged) or
 * out of memory. The URL string is copied. */
redis_client *redis_new(uv_loop_t *loop, const redis_opts *opts);

/* Queue one command (hiredis format string, %b for binary). Returns 0 when cb will
 * be called, exactly once; a negative errno (-EINVAL bad arguments or format,
 * -ENOMEM) when it will not. cb is never called from inside this call: when not
 * connected (or closing) it fails on the next loop turn with "not connected" (or
 * "closing"), without waiting for the network, so a caller that retries at once
 * cannot recurse. Pub/sub commands are not supported. */
int redis_cmd(redis_client *c, redis_cb cb, void *arg, const char *fmt, ...);
int redis_cmdv(redis_client *c, redis_cb cb, void *arg, int argc, const char **argv,
               const size_t *argvlen);

typedef struct redis_script {
    const char *src;
    char sha[41];
} redis_script; /* sha computed lazily (SHA-1, OpenSSL libcrypto is linked) */

/* EVALSHA; on a NOSCRIPT error, EVAL the source once and deliver that reply.
 * argc counts ALL of argv: nkeys keys first, then argc - nkeys args (NUL-terminated
 * strings; copied, so argv may go away after the call). -EINVAL when argc < nkeys.
 * Same return and callback rules as redis_cmd. */
int redis_eval(redis_client *c, redis_script *s, int nkeys, int argc, const char **argv,
               redis_cb cb, void *arg);

/* 1 once AUTH and SELECT succeeded on the current connection, else 0. */
int redis_connected(const redis_client *c);

typedef struct redis_stats {
    unsigned long commands, errors, timeouts, reconnects;
    unsigned long connect_failures;
} redis_stats;
/* commands: sent to the server (an EVALSHA that falls back to EVAL counts 2);
 * errors: callbacks that got an err (error replies and transport failures);
 * timeouts: command timeouts; reconnects: connections made ready after the first
 * one; connect_failures: attempts that failed or timed out before being ready. */
void redis_get_stats(const redis_client *c, redis_stats *out);

/* Fails every pending command with "closing" (each callback once), frees the
 * context, closes every timer, then calls done(arg) from a close callback and
 * frees the client. c must not be used after this call. done may be NULL. */
void redis_close(redis_client *c, void (*done)(void *arg), void *arg);

#endif
