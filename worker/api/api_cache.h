/* The per-worker progress cache (worker/api/api.h): answers of the progress
 * routes kept for at most cache_ms, concurrent misses for one answer sharing one
 * query, hot answers refreshed ahead of expiry. */
#ifndef ORGSYNC_API_CACHE_H
#define ORGSYNC_API_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "worker/api/api_shared.h"

#define API_CACHE_KEY 96

/* Fills one cache entry: starts the query and later calls api_cache_done. 0, or a
 * negative error (the entry is then answered 503). */
typedef int (*api_fill_fn)(api *a, api_centry *e);

/* A cached answer, or one being computed for the requests waiting on it. */
struct api_centry {
    api *a;
    char key[API_CACHE_KEY];
    int status;
    char *body;
    size_t len;
    uint64_t expires_us; /* started_us + cache_ms: never older than that */
    uint64_t started_us; /* when the query that made (or will make) the body was sent */
    int loading;
    int transient; /* not in the table: freed once answered */
    http_req **waiters;
    size_t nwait, capwait;
    /* the query's arguments, set by the route before filling */
    long long run_id; /* 0: latest */
    int limit;
    char corp[72];
};

/* Answers req from the cache entry `key`, filling it with fill when stale. The
 * route sets the entry's arguments through init (called only when a fill starts). */
typedef void (*api_centry_init)(api_centry *e, const void *arg);
void api_cached(api *a, http_req *req, const char *key, api_centry_init init, const void *arg,
                api_fill_fn fill);
/* Completes a fill: stores (status, body) for cache_ms unless status is 5xx, and
 * answers every waiter. Takes ownership of body (malloc'ed, may be NULL for an
 * error reply built from code/message). */
void api_cache_done(api_centry *e, int status, char *body, size_t len);
/* Same with an error body {"error":{"code","message"}}. */
void api_cache_error(api_centry *e, int status, const char *code, const char *message);

/* Frees every entry (none may be loading: each load holds a reference). */
void api_cache_free(api *a);

#endif
