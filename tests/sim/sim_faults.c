/* Injected faults: settable by flags at start and by POST /sim/faults at runtime,
 * with the same names (JSON key "http500_next" is flag "--http500-next"). One table
 * drives both parsers and the JSON view, so they cannot drift apart. */
#include "tests/sim/sim.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

const char *const sim_fault_names[SIM_F_COUNT] = {"none",      "http500", "busy",
                                                  "malformed", "hang",    "fail_dept"};

typedef enum { FT_U32, FT_SHARE, FT_INT, FT_CORP, FT_PATHS } field_type;

typedef struct fault_field {
    const char *key; /* JSON key; the flag is the same with '-' for '_' */
    const char *flag;
    field_type type;
    size_t off;
} fault_field;

#define FF(key, flag, type, member)                                                                \
    {                                                                                              \
        key, flag, type, offsetof(sim_faults, member)                                              \
    }
static const fault_field fields[] = {
    FF("latency_ms", "latency-ms", FT_U32, latency_ms),
    FF("jitter_ms", "jitter-ms", FT_U32, jitter_ms),
    FF("http500", "http500", FT_SHARE, http500),
    FF("busy", "busy", FT_SHARE, busy),
    FF("malformed", "malformed", FT_SHARE, malformed),
    FF("hang", "hang", FT_SHARE, hang),
    FF("http500_next", "http500-next", FT_U32, http500_next),
    FF("busy_next", "busy-next", FT_U32, busy_next),
    FF("malformed_next", "malformed-next", FT_U32, malformed_next),
    FF("hang_next", "hang-next", FT_U32, hang_next),
    FF("fail_dept", "fail-dept", FT_INT, fail_dept),
    FF("fail_dept_corp", "fail-dept-corp", FT_CORP, fail_dept_corp),
    FF("fail_dept_errcode", "fail-dept-errcode", FT_INT, fail_dept_errcode),
    FF("paths", "fault-paths", FT_PATHS, paths),
};
#define NFIELDS (sizeof(fields) / sizeof(fields[0]))

#define ALL_PATHS ((1u << SIM_P_COUNT) - 1)

void sim_faults_init(sim_faults *f)
{
    memset(f, 0, sizeof(*f));
    f->fail_dept_errcode = -1;
    f->paths = ALL_PATHS;
}

sim_fault sim_faults_pick(sim_faults *f, sim_path path, uint64_t *rng)
{
    if (!(f->paths & (1u << path)))
        return SIM_F_NONE;
    if (f->hang_next) {
        f->hang_next--;
        return SIM_F_HANG;
    }
    if (f->http500_next) {
        f->http500_next--;
        return SIM_F_HTTP500;
    }
    if (f->busy_next) {
        f->busy_next--;
        return SIM_F_BUSY;
    }
    if (f->malformed_next) {
        f->malformed_next--;
        return SIM_F_MALFORMED;
    }
    if (f->hang + f->http500 + f->busy + f->malformed <= 0)
        return SIM_F_NONE;
    double u = sim_rng_unit(rng), acc = f->hang;
    if (u < acc)
        return SIM_F_HANG;
    if (u < (acc += f->http500))
        return SIM_F_HTTP500;
    if (u < (acc += f->busy))
        return SIM_F_BUSY;
    if (u < acc + f->malformed)
        return SIM_F_MALFORMED;
    return SIM_F_NONE;
}

uint32_t sim_faults_delay_ms(const sim_faults *f, uint64_t *rng)
{
    uint32_t d = f->latency_ms;
    if (f->jitter_ms)
        d += (uint32_t)sim_rng_below(rng, (uint64_t)f->jitter_ms + 1);
    return d;
}

/* "user/list,gettoken", "all" or "" (all). */
static int parse_paths(const char *s, unsigned *out)
{
    unsigned mask = 0;
    if (*s == '\0' || strcmp(s, "all") == 0) {
        *out = ALL_PATHS;
        return 0;
    }
    while (*s) {
        const char *end = strchr(s, ',');
        size_t n = end ? (size_t)(end - s) : strlen(s);
        int p = sim_path_parse(s, n);
        if (p < 0)
            return -EINVAL;
        mask |= 1u << p;
        s += n + (end ? 1 : 0);
    }
    *out = mask;
    return 0;
}

static int set_from_string(sim_faults *f, const fault_field *fd, const char *v)
{
    char *end = NULL;
    void *dst = (char *)f + fd->off;
    errno = 0;
    switch (fd->type) {
    case FT_U32: {
        unsigned long x = strtoul(v, &end, 10);
        if (*v == '-' || end == v || *end || errno || x > 86400000UL)
            return -EINVAL;
        *(uint32_t *)dst = (uint32_t)x;
        return 0;
    }
    case FT_SHARE: {
        double x = strtod(v, &end);
        if (end == v || *end || errno || !(x >= 0 && x <= 1))
            return -EINVAL;
        *(double *)dst = x;
        return 0;
    }
    case FT_INT: {
        long x = strtol(v, &end, 10);
        if (end == v || *end || errno || x < -1000000 || x > 1000000)
            return -EINVAL;
        *(int *)dst = (int)x;
        return 0;
    }
    case FT_CORP:
        if (strlen(v) >= sizeof(f->fail_dept_corp))
            return -EINVAL;
        snprintf((char *)dst, sizeof(f->fail_dept_corp), "%s", v);
        return 0;
    case FT_PATHS:
        return parse_paths(v, (unsigned *)dst);
    }
    return -EINVAL;
}

static const char *type_hint(field_type t)
{
    switch (t) {
    case FT_U32:
        return "an integer >= 0";
    case FT_SHARE:
        return "a share between 0 and 1";
    case FT_INT:
        return "an integer";
    case FT_CORP:
        return "a corp id";
    case FT_PATHS:
        return "a list of API paths (gettoken, department/list, user/list, user/get, "
               "user/getuserid) or \"all\"";
    }
    return "?";
}

int sim_faults_apply_flag(sim_faults *f, const char *name, const char *value, char *err,
                          size_t errlen)
{
    for (size_t i = 0; i < NFIELDS; i++) {
        if (strcmp(fields[i].flag, name) != 0)
            continue;
        if (!value || set_from_string(f, &fields[i], value) != 0) {
            snprintf(err, errlen, "--%s must be %s", name, type_hint(fields[i].type));
            return -EINVAL;
        }
        return 1;
    }
    return 0;
}

static int set_from_json(sim_faults *f, const fault_field *fd, json_object *v)
{
    char tmp[64];
    switch (json_object_get_type(v)) {
    case json_type_int:
        snprintf(tmp, sizeof(tmp), "%lld", (long long)json_object_get_int64(v));
        break;
    case json_type_double:
        if (fd->type != FT_SHARE)
            return -EINVAL;
        snprintf(tmp, sizeof(tmp), "%.17g", json_object_get_double(v));
        break;
    case json_type_string:
        if (fd->type != FT_CORP && fd->type != FT_PATHS)
            return -EINVAL;
        return set_from_string(f, fd, json_object_get_string(v));
    case json_type_array: {
        unsigned mask = 0;
        if (fd->type != FT_PATHS)
            return -EINVAL;
        for (size_t i = 0; i < json_object_array_length(v); i++) {
            json_object *e = json_object_array_get_idx(v, i);
            const char *s = json_object_get_string(e);
            int p = json_object_is_type(e, json_type_string) ? sim_path_parse(s, strlen(s)) : -1;
            if (p < 0)
                return -EINVAL;
            mask |= 1u << p;
        }
        *(unsigned *)((char *)f + fd->off) = mask;
        return 0;
    }
    default:
        return -EINVAL;
    }
    if (fd->type == FT_CORP || fd->type == FT_PATHS)
        return -EINVAL;
    return set_from_string(f, fd, tmp);
}

int sim_faults_apply_json(sim_faults *f, const char *json, size_t len, char *err, size_t errlen)
{
    json_tokener *tok = json_tokener_new();
    json_object *root = NULL, *v;
    sim_faults next = *f; /* all or nothing */
    int rc = -EINVAL;
    if (!tok) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    root = json_tokener_parse_ex(tok, json, (int)len);
    if (!root || json_tokener_get_error(tok) != json_tokener_success ||
        !json_object_is_type(root, json_type_object)) {
        snprintf(err, errlen, "a JSON object is required");
        goto out;
    }
    if (json_object_object_get_ex(root, "reset", &v)) {
        if (!json_object_is_type(v, json_type_boolean)) {
            snprintf(err, errlen, "reset must be true or false");
            goto out;
        }
        if (json_object_get_boolean(v))
            sim_faults_init(&next);
    }
    json_object_object_foreach(root, key, val)
    {
        size_t i;
        if (strcmp(key, "reset") == 0)
            continue;
        for (i = 0; i < NFIELDS && strcmp(fields[i].key, key) != 0; i++)
            ;
        if (i == NFIELDS) {
            snprintf(err, errlen, "unknown fault setting \"%.40s\"", key);
            goto out;
        }
        if (set_from_json(&next, &fields[i], val) != 0) {
            snprintf(err, errlen, "%s must be %s", key, type_hint(fields[i].type));
            goto out;
        }
    }
    *f = next;
    rc = 0;
out:
    json_object_put(root);
    json_tokener_free(tok);
    return rc;
}

void sim_faults_json(const sim_faults *f, jw *w)
{
    jw_obj_begin(w);
    for (size_t i = 0; i < NFIELDS; i++) {
        const fault_field *fd = &fields[i];
        const void *src = (const char *)f + fd->off;
        switch (fd->type) {
        case FT_U32:
            jw_kint(w, fd->key, *(const uint32_t *)src);
            break;
        case FT_SHARE:
            jw_kdbl(w, fd->key, *(const double *)src);
            break;
        case FT_INT:
            jw_kint(w, fd->key, *(const int *)src);
            break;
        case FT_CORP:
            jw_kstr(w, fd->key, (const char *)src);
            break;
        case FT_PATHS:
            jw_key(w, fd->key);
            jw_arr_begin(w);
            for (int p = 0; p < SIM_P_COUNT; p++)
                if (*(const unsigned *)src & (1u << p))
                    jw_str(w, sim_path_names[p]);
            jw_arr_end(w);
            break;
        }
    }
    jw_obj_end(w);
}
