/* Request router: a flat list of routes, each a pattern split into segments once at
 * registration. Matching splits the path once and compares segment by segment; the
 * route tables here are a few dozen entries, so a list beats a trie on simplicity at no
 * measurable cost. */
#include "common/router.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define ROUTER_MAX_SEGS 32
#define ROUTER_MAX_METHOD 16

typedef struct route_seg {
    const char *lit; /* literal text, or NULL for a {param} */
    size_t len;
    int param; /* index into names when lit is NULL */
} route_seg;

typedef struct route {
    char method[ROUTER_MAX_METHOD];
    char *pattern;
    char *names_buf; /* param names, NUL-separated; names[] point into it */
    const char *names[ROUTER_MAX_PARAMS];
    int nparams;
    route_seg segs[ROUTER_MAX_SEGS];
    int nsegs;
    void *handler;
    void *arg;
} route;

struct router {
    route *routes;
    int n;
    int cap;
};

/* One path segment as found in the request: raw bounds into the path. */
typedef struct path_seg {
    const char *p;
    size_t len;
} path_seg;

router *router_new(void)
{
    return calloc(1, sizeof(router));
}

void router_free(router *r)
{
    if (!r)
        return;
    for (int i = 0; i < r->n; i++) {
        free(r->routes[i].pattern);
        free(r->routes[i].names_buf);
    }
    free(r->routes);
    free(r);
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int router_percent_decode(const char *src, size_t len, int plus_space, char *out, size_t outlen)
{
    size_t o = 0;
    if (outlen == 0)
        return -1;
    for (size_t i = 0; i < len; i++) {
        int c = (unsigned char)src[i];
        if (c == '%') {
            if (i + 2 >= len)
                return -1;
            int hi = hexval((unsigned char)src[i + 1]);
            int lo = hexval((unsigned char)src[i + 2]);
            if (hi < 0 || lo < 0)
                return -1;
            c = hi * 16 + lo;
            i += 2;
        } else if (c == '+' && plus_space) {
            c = ' ';
        }
        if (c == 0)
            return -1;
        if (o + 1 >= outlen)
            return -1;
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return (int)o;
}

/* Splits "/a/b/c" into segments. A path must start with '/'; "/" has zero segments.
 * Empty segments ("//", a trailing '/') are kept as empty so they match nothing. */
static int split_path(const char *path, size_t plen, path_seg *segs, int max)
{
    int n = 0;
    if (plen == 0 || path[0] != '/')
        return -1;
    if (plen == 1)
        return 0;
    size_t start = 1;
    for (size_t i = 1; i <= plen; i++) {
        if (i == plen || path[i] == '/') {
            if (n == max)
                return -1;
            segs[n].p = path + start;
            segs[n].len = i - start;
            n++;
            start = i + 1;
        }
    }
    return n;
}

static int valid_name(const char *s, size_t len)
{
    if (len == 0)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_'))
            return 0;
    }
    return 1;
}

static int parse_pattern(route *rt)
{
    path_seg ps[ROUTER_MAX_SEGS];
    int n = split_path(rt->pattern, strlen(rt->pattern), ps, ROUTER_MAX_SEGS);
    if (n < 0)
        return -EINVAL;
    size_t names_len = 0;
    for (int i = 0; i < n; i++)
        names_len += ps[i].len + 1;
    rt->names_buf = malloc(names_len + 1);
    if (!rt->names_buf)
        return -ENOMEM;
    char *w = rt->names_buf;
    rt->nsegs = n;
    for (int i = 0; i < n; i++) {
        const char *p = ps[i].p;
        size_t len = ps[i].len;
        if (len == 0)
            return -EINVAL;
        if (p[0] == '{') {
            if (len < 3 || p[len - 1] != '}' || !valid_name(p + 1, len - 2))
                return -EINVAL;
            if (rt->nparams == ROUTER_MAX_PARAMS)
                return -EINVAL;
            memcpy(w, p + 1, len - 2);
            w[len - 2] = '\0';
            for (int k = 0; k < rt->nparams; k++)
                if (strcmp(rt->names[k], w) == 0)
                    return -EINVAL;
            rt->names[rt->nparams] = w;
            rt->segs[i].lit = NULL;
            rt->segs[i].param = rt->nparams++;
            w += len - 1;
        } else {
            if (memchr(p, '{', len) || memchr(p, '}', len) || memchr(p, '%', len))
                return -EINVAL;
            rt->segs[i].lit = p;
            rt->segs[i].len = len;
        }
    }
    return 0;
}

int router_add(router *r, const char *method, const char *pattern, void *handler, void *arg)
{
    if (!r || !method || !pattern || !method[0] || strlen(method) >= ROUTER_MAX_METHOD)
        return -EINVAL;
    for (int i = 0; i < r->n; i++)
        if (strcmp(r->routes[i].method, method) == 0 && strcmp(r->routes[i].pattern, pattern) == 0)
            return -EEXIST;
    if (r->n == r->cap) {
        int ncap = r->cap ? r->cap * 2 : 16;
        route *nr = realloc(r->routes, (size_t)ncap * sizeof(route));
        if (!nr)
            return -ENOMEM;
        r->routes = nr;
        r->cap = ncap;
    }
    route *rt = &r->routes[r->n];
    memset(rt, 0, sizeof(*rt));
    strcpy(rt->method, method);
    rt->pattern = strdup(pattern);
    if (!rt->pattern)
        return -ENOMEM;
    int err = parse_pattern(rt);
    if (err) {
        free(rt->pattern);
        free(rt->names_buf);
        return err;
    }
    rt->handler = handler;
    rt->arg = arg;
    r->n++;
    return 0;
}

/* A segment a client may not smuggle through a parameter: "." and "..", raw or
 * encoded, and anything that decodes to '/' (which would change the path shape). */
static int seg_forbidden(const char *dec, int dlen)
{
    if ((dlen == 1 && dec[0] == '.') || (dlen == 2 && dec[0] == '.' && dec[1] == '.'))
        return 1;
    return memchr(dec, '/', (size_t)dlen) != NULL;
}

/* Specificity: literal segments earlier in the path weigh more, so "/runs/latest"
 * beats "/runs/{id}" and "/a/{x}/c" beats "/a/{x}/{y}". */
static unsigned route_score(const route *rt)
{
    unsigned s = 0;
    for (int i = 0; i < rt->nsegs; i++)
        s = (s << 1) | (rt->segs[i].lit != NULL);
    return s;
}

static int seg_matches(const route_seg *rs, const char *dec, int dlen)
{
    if (rs->lit)
        return (size_t)dlen == rs->len && memcmp(rs->lit, dec, rs->len) == 0;
    return dlen > 0;
}

static void allow_add(char *allow, size_t cap, const char *method)
{
    /* De-duplicate: "GET" registered for two patterns appears once. */
    size_t ml = strlen(method);
    const char *p = allow;
    while ((p = strstr(p, method)) != NULL) {
        if ((p == allow || p[-1] == ' ') && (p[ml] == ',' || p[ml] == '\0'))
            return;
        p += ml;
    }
    size_t len = strlen(allow);
    size_t need = (len ? 2 : 0) + ml;
    if (len + need + 1 > cap)
        return;
    if (len) {
        memcpy(allow + len, ", ", 2);
        len += 2;
    }
    memcpy(allow + len, method, ml + 1);
}

int router_match(const router *r, const char *method, const char *path, struct router_match *m)
{
    path_seg ps[ROUTER_MAX_SEGS];
    /* Decoded segments, shared across routes: each decoded once. */
    char dec[ROUTER_MAX_SEGS][ROUTER_MAX_PARAM_LEN + 1];
    int dlen[ROUTER_MAX_SEGS];

    m->handler = NULL;
    m->arg = NULL;
    m->pattern = NULL;
    m->nparams = 0;
    m->allow[0] = '\0';
    if (!r || !method || !path)
        return 404;
    size_t plen = strcspn(path, "?#");
    int n = split_path(path, plen, ps, ROUTER_MAX_SEGS);
    if (n < 0)
        return 404;
    for (int i = 0; i < n; i++) {
        dlen[i] = router_percent_decode(ps[i].p, ps[i].len, 0, dec[i], sizeof(dec[i]));
        if (dlen[i] < 0 || seg_forbidden(dec[i], dlen[i]))
            return 404;
    }
    /* HEAD is answered by GET routes (the server drops the body). */
    int is_head = strcmp(method, "HEAD") == 0;
    const route *best = NULL;
    unsigned best_score = 0;
    int path_known = 0;
    for (int k = 0; k < r->n; k++) {
        const route *rt = &r->routes[k];
        if (rt->nsegs != n)
            continue;
        int ok = 1;
        for (int i = 0; i < n && ok; i++)
            ok = seg_matches(&rt->segs[i], dec[i], dlen[i]);
        if (!ok)
            continue;
        path_known = 1;
        int meth_ok = strcmp(rt->method, method) == 0 || (is_head && !strcmp(rt->method, "GET"));
        if (!meth_ok)
            continue;
        unsigned sc = route_score(rt);
        /* An exact method beats HEAD-via-GET at equal specificity. */
        if (!best || sc > best_score ||
            (sc == best_score && is_head && strcmp(rt->method, "HEAD") == 0)) {
            best = rt;
            best_score = sc;
        }
    }
    if (!best && !path_known)
        return 404;
    if (!best) {
        /* 405: the methods of every route of this path (only now: a match, the
         * common case, has no use for them) */
        for (int k = 0; k < r->n; k++) {
            const route *rt = &r->routes[k];
            int ok = rt->nsegs == n;
            for (int i = 0; i < n && ok; i++)
                ok = seg_matches(&rt->segs[i], dec[i], dlen[i]);
            if (ok)
                allow_add(m->allow, sizeof(m->allow), rt->method);
        }
        return 405;
    }
    m->handler = best->handler;
    m->arg = best->arg;
    m->pattern = best->pattern;
    m->nparams = best->nparams;
    for (int i = 0; i < n; i++) {
        const route_seg *rs = &best->segs[i];
        if (rs->lit)
            continue;
        m->names[rs->param] = best->names[rs->param];
        memcpy(m->values[rs->param], dec[i], (size_t)dlen[i] + 1);
    }
    return 0;
}
