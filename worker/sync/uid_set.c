/* Open addressing with linear probing over 32-bit userid hashes, grown to keep
 * the table at most half full. */
#include "worker/sync/uid_set.h"

#include <stdlib.h>

#define UID_SET_MIN 256

void uid_set_init(uid_set *s)
{
    s->slot = NULL;
    s->cap = s->n = 0;
}

void uid_set_free(uid_set *s)
{
    free(s->slot);
    uid_set_init(s);
}

uint64_t uid_hash(const char *p, size_t n)
{
    uint64_t h = 14695981039346656037ull;

    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 1099511628211ull;
    }
    return h ? h : 1;
}

/* uid_hash folded to the 32 bits the set keeps; never 0, which marks an empty
 * slot. */
static uint32_t uid_key(const char *p, size_t n)
{
    uint64_t h = uid_hash(p, n);
    uint32_t k = (uint32_t)(h ^ (h >> 32));

    return k ? k : 1;
}

/* The slot holding k, or the empty slot where it goes. The first slot tried is
 * derived from k alone (Fibonacci hashing), so growing needs only the keys. */
static size_t find(const uint32_t *slot, size_t cap, uint32_t k)
{
    size_t i = (size_t)(((uint64_t)k * 0x9E3779B97F4A7C15ull) >> 32) & (cap - 1);

    while (slot[i] && slot[i] != k)
        i = (i + 1) & (cap - 1);
    return i;
}

static int grow(uid_set *s)
{
    size_t cap = s->cap ? s->cap * 2 : UID_SET_MIN;
    uint32_t *slot = calloc(cap, sizeof(*slot));

    if (!slot)
        return -1;
    for (size_t i = 0; i < s->cap; i++)
        if (s->slot[i])
            slot[find(slot, cap, s->slot[i])] = s->slot[i];
    free(s->slot);
    s->slot = slot;
    s->cap = cap;
    return 0;
}

int uid_set_add(uid_set *s, const char *uid, size_t n)
{
    uint32_t k = uid_key(uid, n);
    size_t i = 0;

    if (s->cap) {
        i = find(s->slot, s->cap, k);
        if (s->slot[i])
            return 0;
    }
    /* Not there: grow first if this one would fill the table past half. */
    if ((s->n + 1) * 2 > s->cap) {
        if (grow(s))
            return 0;
        i = find(s->slot, s->cap, k);
    }
    s->slot[i] = k;
    s->n++;
    return 1;
}
