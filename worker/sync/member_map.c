/* A sorted array of (userid hash, text fingerprint), searched by bisection: see
 * member_map.h. */
#include "worker/sync/member_map.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* 16 lowercase hex digits (looking at those 16 only: the text goes on). */
static int read_u64(const char *s, uint64_t *out)
{
    char t[17];

    memcpy(t, s, 16);
    t[16] = '\0';
    if (strspn(t, "0123456789abcdef") != 16)
        return -1;
    *out = strtoull(t, NULL, 16);
    return 0;
}

static int cmp_pair(const void *a, const void *b)
{
    const member_pair *x = a, *y = b;

    if (x->uh != y->uh)
        return x->uh < y->uh ? -1 : 1;
    return (x->th > y->th) - (x->th < y->th);
}

int member_map_load_hex(member_map *m, const char *hex)
{
    size_t len = strlen(hex), n = len / 32, w = 0;

    member_map_free(m);
    if (len % 32)
        return -1;
    if (!n)
        return 0;
    m->p = malloc(n * sizeof(*m->p));
    if (!m->p)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        if (read_u64(hex + 32 * i, &m->p[i].uh) || read_u64(hex + 32 * i + 16, &m->p[i].th)) {
            member_map_free(m);
            return -1;
        }
    qsort(m->p, n, sizeof(*m->p), cmp_pair);
    /* One entry per member: a member two departments listed with one text
     * keeps it; with two texts, it is unknown (sent). */
    for (size_t i = 0; i < n; i++) {
        if (w && m->p[w - 1].uh == m->p[i].uh) {
            if (m->p[w - 1].th != m->p[i].th)
                m->p[w - 1].th = 0;
            continue;
        }
        m->p[w++] = m->p[i];
    }
    m->n = w;
    return 0;
}

void member_map_free(member_map *m)
{
    free(m->p);
    m->p = NULL;
    m->n = 0;
}

static member_pair *find(const member_map *m, uint64_t uh)
{
    size_t lo = 0, hi = m->n;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (m->p[mid].uh < uh)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < m->n && m->p[lo].uh == uh ? &m->p[lo] : NULL;
}

int member_map_holds(const member_map *m, uint64_t uh, uint64_t th)
{
    const member_pair *e = th ? find(m, uh) : NULL;

    return e && e->th == th;
}

void member_map_set(member_map *m, uint64_t uh, uint64_t th)
{
    member_pair *e = find(m, uh);

    if (e)
        e->th = th;
}
