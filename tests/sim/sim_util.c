/* Deterministic randomness and a small hash map for the simulator. */
#include "tests/sim/sim.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

const char *const sim_path_names[SIM_P_COUNT] = {
    "gettoken",
    "department/list",
    "user/list",
    "user/get",
    "user/getuserid",
    "user/list_id",
    "department/simplelist",
    "department/get",
    "export/user",
    "export/simple_user",
    "export/get_result",
};

int sim_path_parse(const char *name, size_t len)
{
    static const char prefix[] = "/cgi-bin/";
    if (len >= sizeof(prefix) - 1 && memcmp(name, prefix, sizeof(prefix) - 1) == 0) {
        name += sizeof(prefix) - 1;
        len -= sizeof(prefix) - 1;
    }
    for (int i = 0; i < SIM_P_COUNT; i++)
        if (strlen(sim_path_names[i]) == len && memcmp(sim_path_names[i], name, len) == 0)
            return i;
    return -1;
}

uint64_t sim_rng_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

double sim_rng_unit(uint64_t *state)
{
    return (double)(sim_rng_next(state) >> 11) * (1.0 / 9007199254740992.0);
}

uint64_t sim_rng_below(uint64_t *state, uint64_t n)
{
    /* The modulo bias is below 2^-40 for the sizes used here: irrelevant. */
    return sim_rng_next(state) % n;
}

uint64_t sim_mix(uint64_t a, uint64_t b)
{
    uint64_t s = a ^ (b * 0xd6e8feb86659fd93ULL);
    return sim_rng_next(&s);
}

/* FNV-1a: keys are short (tokens, userids, mobiles). */
static uint64_t map_hash(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
    return h;
}

void sim_map_init(sim_map *m)
{
    memset(m, 0, sizeof(*m));
}

void sim_map_free(sim_map *m)
{
    for (size_t i = 0; i < m->cap; i++)
        free(m->keys[i]);
    free(m->keys);
    free(m->vals);
    sim_map_init(m);
}

static size_t map_slot(const sim_map *m, const char *key)
{
    size_t mask = m->cap - 1;
    size_t i = (size_t)map_hash(key) & mask;
    while (m->keys[i] && strcmp(m->keys[i], key) != 0)
        i = (i + 1) & mask;
    return i;
}

static int map_grow(sim_map *m)
{
    size_t ncap = m->cap ? m->cap * 2 : 64;
    char **keys = calloc(ncap, sizeof(*keys));
    int64_t *vals = calloc(ncap, sizeof(*vals));
    sim_map n = {keys, vals, ncap, 0};
    if (!keys || !vals) {
        free(keys);
        free(vals);
        return -ENOMEM;
    }
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->keys[i])
            continue;
        size_t j = map_slot(&n, m->keys[i]);
        n.keys[j] = m->keys[i];
        n.vals[j] = m->vals[i];
        n.len++;
    }
    free(m->keys);
    free(m->vals);
    *m = n;
    return 0;
}

int sim_map_put(sim_map *m, const char *key, int64_t val)
{
    /* Keep the load under 1/2 so probes stay short. */
    if ((m->len + 1) * 2 > m->cap) {
        int err = map_grow(m);
        if (err)
            return err;
    }
    size_t i = map_slot(m, key);
    if (!m->keys[i]) {
        m->keys[i] = strdup(key);
        if (!m->keys[i])
            return -ENOMEM;
        m->len++;
    }
    m->vals[i] = val;
    return 0;
}

int sim_map_get(const sim_map *m, const char *key, int64_t *val)
{
    if (m->cap == 0)
        return 0;
    size_t i = map_slot(m, key);
    if (!m->keys[i])
        return 0;
    if (val)
        *val = m->vals[i];
    return 1;
}

int sim_map_del(sim_map *m, const char *key)
{
    if (m->cap == 0)
        return 0;
    size_t mask = m->cap - 1;
    size_t i = map_slot(m, key);
    if (!m->keys[i])
        return 0;
    free(m->keys[i]);
    m->keys[i] = NULL;
    m->len--;
    /* Backward-shift deletion: re-place the rest of the probe run so that lookups
     * never stop early at the hole (no tombstones to accumulate). */
    for (size_t j = (i + 1) & mask; m->keys[j]; j = (j + 1) & mask) {
        char *k = m->keys[j];
        int64_t v = m->vals[j];
        m->keys[j] = NULL;
        size_t t = map_slot(m, k);
        m->keys[t] = k;
        m->vals[t] = v;
    }
    return 1;
}
