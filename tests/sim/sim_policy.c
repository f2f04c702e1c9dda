/* Per-enterprise policy: what today's upstream refuses that the 2019 one did not.
 *
 *   contact_legacy_ips  since 2022-08-15 the contact-sync secret may call
 *                       department/list, user/list and user/get only from addresses
 *                       it used before (48009 from any other);
 *   app_new             a self-built app created after 2022-06-20 gets no mobile,
 *                       email, biz_mail, avatar, thumb_avatar, gender, qr_code, address;
 *   visible_depts       the app's visible range (60011 outside it);
 *   trusted_ips         the app's trusted egress addresses (60020 from any other).
 *
 * Set by flags at start (every enterprise) and by POST /sim/policy at runtime, with
 * the merge, all-or-nothing and reset rules of /sim/faults. A list that is not set is
 * null: no restriction. */
#include "tests/sim/sim.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

/* ---- addresses ---- */

int sim_ip_parse(const char *text, unsigned char out[16])
{
    unsigned char v4[4];
    if (!text)
        return -EINVAL;
    if (inet_pton(AF_INET, text, v4) == 1) {
        memset(out, 0, 10);
        out[10] = out[11] = 0xff;
        memcpy(out + 12, v4, 4);
        return 0;
    }
    return inet_pton(AF_INET6, text, out) == 1 ? 0 : -EINVAL;
}

static int ip_is_v4(const unsigned char a[16])
{
    static const unsigned char prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return memcmp(a, prefix, sizeof(prefix)) == 0;
}

void sim_ip_format(const unsigned char a[16], char out[46])
{
    int v4 = ip_is_v4(a);
    if (!inet_ntop(v4 ? AF_INET : AF_INET6, v4 ? a + 12 : a, out, 46))
        out[0] = '\0';
}

int sim_ipset_has(const sim_ipset *s, const unsigned char a[16])
{
    for (int i = 0; i < s->n; i++)
        if (memcmp(s->addr[i], a, 16) == 0)
            return 1;
    return 0;
}

/* Whether ip (text) is in the set; an unknown or unparsable address is in none. */
static int ipset_has_text(const sim_ipset *s, const char *ip)
{
    unsigned char a[16];
    return ip && sim_ip_parse(ip, a) == 0 && sim_ipset_has(s, a);
}

static int ipset_add(sim_ipset *s, const char *text)
{
    unsigned char a[16];
    if (sim_ip_parse(text, a) != 0 || s->n == SIM_MAX_IPS)
        return -EINVAL;
    if (!sim_ipset_has(s, a))
        memcpy(s->addr[s->n++], a, 16);
    return 0;
}

static int deptset_add(sim_deptset *s, long id)
{
    if (id < 1 || id > 2000000000L || s->n == SIM_MAX_VISIBLE)
        return -EINVAL;
    for (int i = 0; i < s->n; i++)
        if (s->ids[i] == id)
            return 0;
    s->ids[s->n++] = (int)id;
    return 0;
}

/* ---- the checks ---- */

void sim_policy_init(sim_policy *p)
{
    memset(p, 0, sizeof(*p));
}

int sim_policy_trusted(const sim_policy *p, const char *ip)
{
    return !p->trusted_set || ipset_has_text(&p->trusted_ips, ip);
}

int sim_policy_legacy_allowed(const sim_policy *p, const char *ip)
{
    return !p->legacy_set || ipset_has_text(&p->legacy_ips, ip);
}

/* ---- settings: one table for the JSON keys, the flags and the view ---- */

typedef enum { PK_IPS, PK_BOOL, PK_DEPTS } pkind;

typedef struct pkey {
    const char *key, *flag;
    pkind kind;
    const char *hint; /* what a value must be */
} pkey;

enum { K_LEGACY, K_APP_NEW, K_VISIBLE, K_TRUSTED, NKEYS };

static const pkey keys[NKEYS] = {
    {"contact_legacy_ips", "contact-legacy-ips", PK_IPS,
     "null or an array of at most 32 IP address strings"},
    {"app_new", "app-new", PK_BOOL, "true or false"},
    {"visible_depts", "visible-depts", PK_DEPTS,
     "null or an array of at most 64 department ids (integers >= 1)"},
    {"trusted_ips", "trusted-ips", PK_IPS, "null or an array of at most 32 IP address strings"},
};

static int *key_set_flag(sim_policy *p, int k)
{
    return k == K_LEGACY ? &p->legacy_set : k == K_VISIBLE ? &p->visible_set : &p->trusted_set;
}

static sim_ipset *key_ips(sim_policy *p, int k)
{
    return k == K_LEGACY ? &p->legacy_ips : &p->trusted_ips;
}

/* A JSON value for key k into p. 0 or -EINVAL. */
static int set_json(sim_policy *p, int k, json_object *v)
{
    if (keys[k].kind == PK_BOOL) {
        if (!json_object_is_type(v, json_type_boolean))
            return -EINVAL;
        p->app_new = json_object_get_boolean(v);
        return 0;
    }
    if (v == NULL) { /* JSON null */
        *key_set_flag(p, k) = 0;
        return 0;
    }
    if (!json_object_is_type(v, json_type_array))
        return -EINVAL;
    sim_ipset ips = {0};
    sim_deptset depts = {0};
    for (size_t i = 0; i < json_object_array_length(v); i++) {
        json_object *e = json_object_array_get_idx(v, i);
        int bad = keys[k].kind == PK_IPS
                      ? !json_object_is_type(e, json_type_string) ||
                            ipset_add(&ips, json_object_get_string(e)) != 0
                      : !json_object_is_type(e, json_type_int) ||
                            deptset_add(&depts, (long)json_object_get_int64(e)) != 0;
        if (bad)
            return -EINVAL;
    }
    *key_set_flag(p, k) = 1;
    if (keys[k].kind == PK_IPS)
        *key_ips(p, k) = ips;
    else
        p->visible = depts;
    return 0;
}

/* The patch a POST carries: which keys, with what values (in a scratch policy). */
typedef struct patch {
    int reset;
    int given[NKEYS];
    sim_policy v;
} patch;

static int find_key(const char *name)
{
    for (int k = 0; k < NKEYS; k++)
        if (strcmp(keys[k].key, name) == 0)
            return k;
    return -1;
}

static int patch_parse(patch *pt, json_object *root, char *err, size_t errlen)
{
    memset(pt, 0, sizeof(*pt));
    json_object_object_foreach(root, key, val)
    {
        if (strcmp(key, "corp_id") == 0)
            continue;
        if (strcmp(key, "reset") == 0) {
            if (!json_object_is_type(val, json_type_boolean)) {
                snprintf(err, errlen, "reset must be true or false");
                return -EINVAL;
            }
            pt->reset = json_object_get_boolean(val);
            continue;
        }
        int k = find_key(key);
        if (k < 0) {
            snprintf(err, errlen,
                     "unknown policy setting \"%.40s\" (contact_legacy_ips, app_new, "
                     "visible_depts, trusted_ips)",
                     key);
            return -EINVAL;
        }
        if (set_json(&pt->v, k, val) != 0) {
            snprintf(err, errlen, "%s must be %s", keys[k].key, keys[k].hint);
            return -EINVAL;
        }
        pt->given[k] = 1;
    }
    return 0;
}

static void patch_apply(const patch *pt, sim_policy *p)
{
    if (pt->reset)
        sim_policy_init(p);
    if (pt->given[K_LEGACY]) {
        p->legacy_set = pt->v.legacy_set;
        p->legacy_ips = pt->v.legacy_ips;
    }
    if (pt->given[K_APP_NEW])
        p->app_new = pt->v.app_new;
    if (pt->given[K_VISIBLE]) {
        p->visible_set = pt->v.visible_set;
        p->visible = pt->v.visible;
    }
    if (pt->given[K_TRUSTED]) {
        p->trusted_set = pt->v.trusted_set;
        p->trusted_ips = pt->v.trusted_ips;
    }
}

/* corp_id: absent (every enterprise) or a known one. */
static int patch_target(sim_dir *d, json_object *root, int *only, char *err, size_t errlen)
{
    json_object *v;
    *only = -1;
    if (!json_object_object_get_ex(root, "corp_id", &v))
        return 0;
    if (!json_object_is_type(v, json_type_string)) {
        snprintf(err, errlen, "corp_id must be a string");
        return -EINVAL;
    }
    sim_corp *c = sim_dir_corp(d, json_object_get_string(v));
    if (!c) {
        snprintf(err, errlen, "unknown corp_id");
        return -ENOENT;
    }
    *only = c->index - 1;
    return 0;
}

int sim_policy_apply_json(sim_policy *pols, sim_dir *d, const char *json, size_t len, int *only,
                          char *err, size_t errlen)
{
    json_tokener *tok = json_tokener_new();
    json_object *root = NULL;
    patch pt;
    int rc = -EINVAL;
    *only = -1;
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
    if ((rc = patch_target(d, root, only, err, errlen)) != 0)
        goto out;
    if ((rc = patch_parse(&pt, root, err, errlen)) != 0)
        goto out;
    for (int i = 0; i < d->ncorps; i++)
        if (*only < 0 || i == *only)
            patch_apply(&pt, &pols[i]);
out:
    json_object_put(root);
    json_tokener_free(tok);
    return rc;
}

/* "127.0.0.1,::1", or "none" / "" for the empty list. */
static int flag_ips(sim_ipset *s, const char *v)
{
    char item[64];
    memset(s, 0, sizeof(*s));
    if (strcmp(v, "none") == 0)
        return 0;
    while (*v) {
        size_t n = strcspn(v, ",");
        if (n == 0 || n >= sizeof(item) || (v[n] == ',' && v[n + 1] == '\0'))
            return -EINVAL;
        memcpy(item, v, n);
        item[n] = '\0';
        if (ipset_add(s, item) != 0)
            return -EINVAL;
        v += n + (v[n] == ',');
    }
    return 0;
}

/* "2,5,9" */
static int flag_depts(sim_deptset *s, const char *v)
{
    memset(s, 0, sizeof(*s));
    if (strcmp(v, "none") == 0)
        return 0;
    while (*v) {
        char *end = NULL;
        if (*v < '0' || *v > '9')
            return -EINVAL;
        long id = strtol(v, &end, 10);
        if ((*end && *end != ',') || (*end == ',' && end[1] == '\0') || deptset_add(s, id) != 0)
            return -EINVAL;
        v = end + (*end == ',');
    }
    return 0;
}

int sim_policy_apply_flag(sim_policy *p, const char *name, const char *value, char *err,
                          size_t errlen)
{
    int k;
    for (k = 0; k < NKEYS && strcmp(keys[k].flag, name) != 0; k++)
        ;
    if (k == NKEYS)
        return 0;
    int rc = -EINVAL;
    if (value && keys[k].kind == PK_BOOL && (strcmp(value, "0") == 0 || strcmp(value, "1") == 0)) {
        p->app_new = value[0] == '1';
        rc = 0;
    } else if (value && keys[k].kind == PK_IPS) {
        rc = flag_ips(key_ips(p, k), value);
    } else if (value && keys[k].kind == PK_DEPTS) {
        rc = flag_depts(&p->visible, value);
    }
    if (rc == 0 && keys[k].kind != PK_BOOL)
        *key_set_flag(p, k) = 1;
    if (rc != 0) {
        snprintf(err, errlen, "--%s must be %s", name,
                 keys[k].kind == PK_BOOL  ? "0 or 1"
                 : keys[k].kind == PK_IPS ? "a comma-separated list of IP addresses (at most "
                                            "32), or none"
                                          : "a comma-separated list of department ids (at most "
                                            "64), or none");
        return -EINVAL;
    }
    return 1;
}

static void json_ips(jw *w, const char *key, int set, const sim_ipset *s)
{
    char text[46];
    if (!set) {
        jw_knull(w, key);
        return;
    }
    jw_key(w, key);
    jw_arr_begin(w);
    for (int i = 0; i < s->n; i++) {
        sim_ip_format(s->addr[i], text);
        jw_str(w, text);
    }
    jw_arr_end(w);
}

void sim_policy_json(const sim_policy *p, jw *w)
{
    json_ips(w, "contact_legacy_ips", p->legacy_set, &p->legacy_ips);
    jw_kbool(w, "app_new", p->app_new);
    if (!p->visible_set) {
        jw_knull(w, "visible_depts");
    } else {
        jw_key(w, "visible_depts");
        jw_arr_begin(w);
        for (int i = 0; i < p->visible.n; i++)
            jw_int(w, p->visible.ids[i]);
        jw_arr_end(w);
    }
    json_ips(w, "trusted_ips", p->trusted_set, &p->trusted_ips);
}
