/* The per-worker progress cache (api_cache.h). */
#include "worker/api/api_cache.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/timeutil.h"

static void centry_free(api_centry *e)
{
    http_answer_unref(e->ans);
    free(e->waiters);
    free(e);
}

static int add_waiter(api_centry *e, http_req *req, long long min_rev, uint64_t need)
{
    if (e->nwait == e->capwait) {
        size_t cap = e->capwait ? e->capwait * 2 : 4;
        api_waiter *w = realloc(e->waiters, cap * sizeof(*w));
        if (!w)
            return -ENOMEM;
        e->waiters = w;
        e->capwait = cap;
    }
    e->waiters[e->nwait++] = (api_waiter){.req = req, .min_rev = min_rev, .need = need};
    return 0;
}

/* The slot for key: its entry, else an empty slot, else the least recently
 * expired entry that is not loading; -1 when every slot is loading. */
static int cache_slot(api *a, const char *key)
{
    int empty = -1, oldest = -1;
    for (int i = 0; i < API_CACHE_SLOTS; i++) {
        api_centry *e = a->cache[i];
        if (!e) {
            if (empty < 0)
                empty = i;
            continue;
        }
        if (strcmp(e->key, key) == 0)
            return i;
        if (!e->loading && (oldest < 0 || e->expires_us < a->cache[oldest]->expires_us))
            oldest = i;
    }
    return empty >= 0 ? empty : oldest;
}

static void reply_entry(api_centry *e, http_req *req)
{
    if (e->ans)
        http_reply_answer(req, e->ans);
    else
        http_reply_error(req, 503, "unavailable", "answer not available");
}

/* Starts fill number e->fills + 1 (the query is sent now). 0, or the fill's
 * error (then nothing is loading). */
static int start_fill(api *a, api_centry *e, uint64_t now)
{
    e->loading = 1;
    e->started_us = now;
    e->fills++;
    api_ref(a);
    int err = e->fill(a, e);
    if (err) {
        api_unref(a);
        e->loading = 0;
    }
    return err;
}

static void drop_entry(api *a, api_centry *e)
{
    if (!e->transient)
        for (int i = 0; i < API_CACHE_SLOTS; i++)
            if (a->cache[i] == e)
                a->cache[i] = NULL;
    centry_free(e);
}

void api_cached(api *a, http_req *req, const char *key, long long min_rev, api_centry_init init,
                const void *arg, api_fill_fn fill)
{
    uint64_t now = time_mono_us();
    api_centry *e = NULL;
    int slot = a->cache_ms > 0 ? cache_slot(a, key) : -1;

    if (slot >= 0 && a->cache[slot] && strcmp(a->cache[slot]->key, key) == 0) {
        e = a->cache[slot];
        if (e->ans && e->expires_us > now && e->revision >= min_rev) {
            reply_entry(e, req);
            /* A hot answer is refreshed in the background during the last
             * fifth of its life, so polls keep being answered from memory and
             * never queue behind the query; an answer is still never older
             * than cache_ms (counted from when its query was sent). A refresh
             * that cannot start keeps the answer we have until it expires. */
            if (!e->loading && now + (uint64_t)a->cache_ms * 200 > e->expires_us)
                start_fill(a, e, now);
            return;
        }
        if (e->loading) {
            /* The fill under way may have been sent before the revision the
             * client saw committed: unless it brings min_rev, the next one. */
            if (add_waiter(e, req, min_rev, min_rev > 0 ? e->fills + 1 : e->fills))
                http_reply_error(req, 503, "out_of_memory", "out of memory");
            return;
        }
        /* Expired, or older than the client has seen. The answer stays until
         * the fill replaces it (api_cache_done keeps it if the fill brings an
         * older revision), but is not served: it is not fresh enough. */
    } else {
        e = calloc(1, sizeof(*e));
        if (!e) {
            http_reply_error(req, 503, "out_of_memory", "out of memory");
            return;
        }
        snprintf(e->key, sizeof e->key, "%s", key);
        e->a = a;
        if (slot >= 0) {
            if (a->cache[slot])
                centry_free(a->cache[slot]);
            a->cache[slot] = e;
        } else {
            e->transient = 1; /* caching off, or every slot busy loading */
        }
    }
    e->fill = fill;
    e->nwait = 0;
    e->run_id = 0;
    e->limit = 0;
    e->corp[0] = '\0';
    if (init)
        init(e, arg);
    if (add_waiter(e, req, min_rev, e->fills + 1)) {
        http_reply_error(req, 503, "out_of_memory", "out of memory");
        drop_entry(a, e);
        return;
    }
    if (start_fill(a, e, now) == 0)
        return;
    http_reply_error(req, 503, "database_unavailable", "could not query PostgreSQL");
    e->nwait = 0;
    drop_entry(a, e);
}

void api_cache_done(api_centry *e, int status, char *body, size_t len, long long revision)
{
    api *a = e->a;
    uint64_t fill = e->fills;

    if (a->closing) { /* nobody to answer: the entry goes with this callback */
        for (int i = 0; i < API_CACHE_SLOTS; i++)
            if (a->cache[i] == e)
                a->cache[i] = NULL;
        e->transient = 1;
    }
    int live = api_unref(a); /* may free a: not used below unless live */
    e->loading = 0;
    http_answer *ans = body ? http_answer_new(status, "application/json", body, len) : NULL;
    free(body);
    if (!ans)
        status = 503; /* out of memory: answered so, and not kept */
    if (status == 200 && e->status == 200 && e->ans && revision < e->revision) {
        /* Older than what this entry answered before (a lagging replica
         * behind the pool): this worker never goes back, so the answer it
         * had stays, with its own expiry. */
        http_answer_unref(ans);
    } else {
        http_answer_unref(e->ans);
        e->ans = ans;
        e->status = status;
        e->revision = status >= 500 ? 0 : revision;
        /* a dependency failure is not remembered: the next poll tries again */
        e->expires_us = status >= 500 ? 0 : e->started_us + (uint64_t)a->cache_ms * 1000;
    }
    /* Each waiter is answered by this fill if it was the one the waiter
     * needed or brings the revision it asked for; the others need the next. */
    size_t keep = 0;
    for (size_t i = 0; i < e->nwait; i++) {
        api_waiter w = e->waiters[i];
        if (live && status < 500 && !e->transient && w.need > fill && e->revision < w.min_rev)
            e->waiters[keep++] = w;
        else if (live)
            reply_entry(e, w.req);
    }
    e->nwait = keep;
    if (keep) {
        if (start_fill(a, e, time_mono_us()) == 0)
            return;
        for (size_t i = 0; i < keep; i++)
            http_reply_error(e->waiters[i].req, 503, "database_unavailable",
                             "could not query PostgreSQL");
        e->nwait = 0;
    }
    if (e->transient || status >= 500)
        drop_entry(a, e);
}

void api_cache_error(api_centry *e, int status, const char *code, const char *message)
{
    buf b;
    jw w;
    size_t len = 0;

    buf_init(&b);
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_key(&w, "error");
    jw_obj_begin(&w);
    jw_kstr(&w, "code", code);
    jw_kstr(&w, "message", message);
    jw_obj_end(&w);
    jw_obj_end(&w);
    char *body = b.oom ? NULL : buf_detach(&b, &len);
    buf_free(&b);
    api_cache_done(e, status, body, len, 0);
}

void api_cache_free(api *a)
{
    for (int i = 0; i < API_CACHE_SLOTS; i++) {
        if (a->cache[i])
            centry_free(a->cache[i]);
        a->cache[i] = NULL;
    }
}
