/* The per-worker progress cache (worker/api/api.h): answers of the progress
 * routes kept for at most cache_ms, concurrent misses for one answer sharing one
 * query, hot answers refreshed ahead of expiry. Each answer has the revision of
 * the runs it shows (sql/005_progress_revision.sql): a request can ask for at
 * least a revision it saw elsewhere, and an entry never goes back to a lower one. */
#ifndef ORGSYNC_API_CACHE_H
#define ORGSYNC_API_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "worker/api/api_shared.h"

#define API_CACHE_KEY 96

/* Fills one cache entry: starts the query and later calls api_cache_done. 0, or a
 * negative error (the entry is then answered 503). */
typedef int (*api_fill_fn)(api *a, api_centry *e);

/* A request waiting for a fill: answered by fill number `need`, or by an
 * earlier one whose revision is at least min_rev. */
typedef struct api_waiter {
    http_req *req;
    long long min_rev;
    uint64_t need;
} api_waiter;

/* A cached answer, or one being computed for the requests waiting on it. */
struct api_centry {
    api *a;
    char key[API_CACHE_KEY];
    int status;
    http_answer *ans;    /* the answer (head and body), sent by reference; NULL: none */
    long long revision;  /* of ans (docs/API.md "Caching"); 0: none (an error) */
    uint64_t expires_us; /* started_us + cache_ms: never older than that */
    uint64_t started_us; /* when the query that made (or will make) the body was sent */
    uint64_t fills;      /* fills started; while loading, the running one's number */
    int loading;
    int transient; /* not in the table: freed once answered */
    api_fill_fn fill;
    api_waiter *waiters;
    size_t nwait, capwait;
    /* the query's arguments, set by the route before filling */
    long long run_id; /* 0: latest */
    int limit;
    char corp[72];
};

/* Answers req from the cache entry `key`, filling it with fill when stale. The
 * route sets the entry's arguments through init (called when a request starts a
 * fill; the background refresh and a second fill reuse them).
 *
 * min_rev > 0 (the request's ?min_revision=): a cached answer of a lower
 * revision is not good enough. The request waits for the fill under way if
 * that one brings min_rev or more, else for a fill sent after it arrived (the
 * next one), and is answered with that whatever its revision: a revision the
 * client saw had committed before it asked, so a query sent after the request
 * arrived sees it; a higher one does not exist yet. So an answer never has a
 * lower revision than any the client has seen from any instance, and each
 * such request costs at most one query, shared with every request waiting. */
typedef void (*api_centry_init)(api_centry *e, const void *arg);
void api_cached(api *a, http_req *req, const char *key, long long min_rev, api_centry_init init,
                const void *arg, api_fill_fn fill);
/* Completes a fill: stores (status, body, revision) for cache_ms unless status
 * is 5xx, as one prebuilt answer every request is sent by reference
 * (common/http_answer.h), and answers every waiter it satisfies; starts the next
 * fill for the others. Takes ownership of body (malloc'ed, may be NULL for an
 * error reply built from code/message). */
void api_cache_done(api_centry *e, int status, char *body, size_t len, long long revision);
/* Same with an error body {"error":{"code","message"}} (revision 0). */
void api_cache_error(api_centry *e, int status, const char *code, const char *message);

/* Frees every entry (none may be loading: each load holds a reference). */
void api_cache_free(api *a);

#endif
