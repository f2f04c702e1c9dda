/* The per-worker progress cache (api_cache.h). */
#include "worker/api/api_cache.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/timeutil.h"

static void centry_free(api_centry *e)
{
    free(e->body);
    free(e->waiters);
    free(e);
}

static int add_waiter(api_centry *e, http_req *req)
{
    if (e->nwait == e->capwait) {
        size_t cap = e->capwait ? e->capwait * 2 : 4;
        http_req **w = realloc(e->waiters, cap * sizeof(*w));
        if (!w)
            return -ENOMEM;
        e->waiters = w;
        e->capwait = cap;
    }
    e->waiters[e->nwait++] = req;
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
    if (e->body)
        http_reply(req, e->status, "application/json", e->body, e->len);
    else
        http_reply_error(req, 503, "unavailable", "answer not available");
}

/* A hot answer is refreshed in the background during the last fifth of its
 * life, so polls keep being answered from memory and never queue behind the
 * query; an answer is still never older than cache_ms (counted from when its
 * query was sent). */
static void refresh_ahead(api *a, api_centry *e, api_fill_fn fill, uint64_t now)
{
    e->loading = 1;
    e->started_us = now;
    api_ref(a);
    if (fill(a, e) == 0)
        return;
    api_unref(a);
    e->loading = 0; /* keep the answer we have until it expires */
}

void api_cached(api *a, http_req *req, const char *key, api_centry_init init, const void *arg,
                api_fill_fn fill)
{
    uint64_t now = time_mono_us();
    api_centry *e = NULL;
    int slot = a->cache_ms > 0 ? cache_slot(a, key) : -1;

    if (slot >= 0 && a->cache[slot] && strcmp(a->cache[slot]->key, key) == 0) {
        e = a->cache[slot];
        if (e->body && e->expires_us > now) {
            reply_entry(e, req);
            if (!e->loading && now + (uint64_t)a->cache_ms * 200 > e->expires_us)
                refresh_ahead(a, e, fill, now);
            return;
        }
        if (e->loading) {
            if (add_waiter(e, req))
                http_reply_error(req, 503, "out_of_memory", "out of memory");
            return;
        }
        free(e->body);
        e->body = NULL;
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
    e->nwait = 0;
    e->run_id = 0;
    e->limit = 0;
    e->corp[0] = '\0';
    if (init)
        init(e, arg);
    if (add_waiter(e, req)) {
        http_reply_error(req, 503, "out_of_memory", "out of memory");
        goto drop;
    }
    e->loading = 1;
    e->started_us = now;
    api_ref(a);
    if (fill(a, e) == 0)
        return;
    api_unref(a);
    e->loading = 0;
    http_reply_error(req, 503, "database_unavailable", "could not query PostgreSQL");
    e->nwait = 0;
drop:
    if (!e->transient)
        for (int i = 0; i < API_CACHE_SLOTS; i++)
            if (a->cache[i] == e)
                a->cache[i] = NULL;
    centry_free(e);
}

void api_cache_done(api_centry *e, int status, char *body, size_t len)
{
    api *a = e->a;
    /* a dependency failure is not remembered: the next poll tries again */
    uint64_t expires = status >= 500 ? 0 : e->started_us + (uint64_t)a->cache_ms * 1000;

    if (a->closing) { /* nobody to answer: the entry goes with this callback */
        for (int i = 0; i < API_CACHE_SLOTS; i++)
            if (a->cache[i] == e)
                a->cache[i] = NULL;
        e->transient = 1;
    }
    int live = api_unref(a); /* may free a: not used below unless live */
    e->loading = 0;
    free(e->body);
    e->body = body;
    e->len = body ? len : 0;
    e->status = status;
    e->expires_us = expires;
    if (live)
        for (size_t i = 0; i < e->nwait; i++)
            reply_entry(e, e->waiters[i]);
    e->nwait = 0;
    if (e->transient) {
        centry_free(e);
    } else if (status >= 500) {
        for (int i = 0; i < API_CACHE_SLOTS; i++)
            if (a->cache[i] == e)
                a->cache[i] = NULL;
        centry_free(e);
    }
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
    api_cache_done(e, status, body, len);
}

void api_cache_free(api *a)
{
    for (int i = 0; i < API_CACHE_SLOTS; i++) {
        if (a->cache[i])
            centry_free(a->cache[i]);
        a->cache[i] = NULL;
    }
}
