/* Reading the WeCom contacts API as it is today (sync_modern.h). */
#include "worker/sync/sync_modern.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"

const char *const sync_fields_restricted[SYNC_FIELDS_RESTRICTED] = {
    "mobile", "email", "biz_mail", "avatar", "thumb_avatar", "gender", "qr_code", "address",
};

static int cmp_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? -1 : x > y;
}

/* The positive integer id of a department entry, or 0. */
static long long entry_id(json_object *d)
{
    json_object *id;
    if (!d || !json_object_is_type(d, json_type_object) ||
        !json_object_object_get_ex(d, "id", &id) || !json_object_is_type(id, json_type_int))
        return 0;
    long long v = json_object_get_int64(id);
    return v > 0 ? v : 0;
}

static json_object *array_of(json_object *root, const char *key)
{
    json_object *a;
    if (!root || !json_object_object_get_ex(root, key, &a) ||
        !json_object_is_type(a, json_type_array))
        return NULL;
    return a;
}

/* A name from list for id, or NULL (list's entries are few enough to scan:
 * this runs once per enterprise per run, over sorted ids). */
static const char *name_in(long long *ids, const char **names, int n, long long id)
{
    long long *p = bsearch(&id, ids, (size_t)n, sizeof(*ids), cmp_ll);
    return p ? names[p - ids] : NULL;
}

typedef struct named {
    long long id;
    const char *name;
} named;

static int cmp_named(const void *a, const void *b)
{
    return cmp_ll(&((const named *)a)->id, &((const named *)b)->id);
}

int sync_modern_departments(json_object *simplelist, json_object *list, char **json,
                            long long **visible, int *nvisible, char *why, size_t n)
{
    json_object *tree = array_of(simplelist, "department_id"), *named_arr = NULL;
    size_t nt, nl = 0;
    named *nm = NULL;
    long long *ids = NULL, *vis = NULL;
    const char **names = NULL;
    int nv = 0, rc = -1;
    buf b;
    jw w;

    *json = NULL;
    *visible = NULL;
    *nvisible = 0;
    if (!tree) {
        snprintf(why, n, "department/simplelist: no department_id array");
        return -1;
    }
    if (list && !(named_arr = array_of(list, "department"))) {
        snprintf(why, n, "department/list: no department array");
        return -1;
    }
    nt = json_object_array_length(tree);
    nl = named_arr ? json_object_array_length(named_arr) : 0;
    nm = malloc((nl ? nl : 1) * sizeof(*nm));
    ids = malloc((nl ? nl : 1) * sizeof(*ids));
    names = malloc((nl ? nl : 1) * sizeof(*names));
    vis = malloc(((named_arr ? nl : nt) + 1) * sizeof(*vis));
    buf_init(&b);
    if (!nm || !ids || !names || !vis) {
        snprintf(why, n, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < nl; i++) {
        json_object *d = json_object_array_get_idx(named_arr, i), *name;
        nm[i].id = entry_id(d);
        if (!nm[i].id) {
            snprintf(why, n, "department/list: entry %zu is malformed", i);
            goto out;
        }
        nm[i].name = json_object_object_get_ex(d, "name", &name) &&
                             json_object_is_type(name, json_type_string)
                         ? json_object_get_string(name)
                         : NULL;
    }
    qsort(nm, nl, sizeof(*nm), cmp_named);
    for (size_t i = 0; i < nl; i++) {
        ids[i] = nm[i].id;
        names[i] = nm[i].name;
    }
    jw_init(&w, &b);
    jw_obj_begin(&w);
    jw_key(&w, "department");
    jw_arr_begin(&w);
    for (size_t i = 0; i < nt; i++) {
        json_object *d = json_object_array_get_idx(tree, i), *v;
        long long id = entry_id(d);
        const char *name;
        if (!id) {
            snprintf(why, n, "department/simplelist: entry %zu is malformed", i);
            goto out;
        }
        jw_obj_begin(&w);
        jw_kint(&w, "id", id);
        name = name_in(ids, names, (int)nl, id);
        jw_kstr(&w, "name", name ? name : "");
        if (json_object_object_get_ex(d, "parentid", &v) && json_object_is_type(v, json_type_int))
            jw_kint(&w, "parentid", json_object_get_int64(v));
        if (json_object_object_get_ex(d, "order", &v) && json_object_is_type(v, json_type_int))
            jw_kint(&w, "order", json_object_get_int64(v));
        jw_obj_end(&w);
        if (!named_arr)
            vis[nv++] = id;
    }
    jw_arr_end(&w);
    jw_obj_end(&w);
    if (named_arr)
        for (size_t i = 0; i < nl; i++)
            vis[nv++] = ids[i];
    qsort(vis, (size_t)nv, sizeof(*vis), cmp_ll);
    {
        int u = 0;
        for (int i = 0; i < nv; i++)
            if (u == 0 || vis[u - 1] != vis[i])
                vis[u++] = vis[i];
        nv = u;
    }
    if (b.oom) {
        snprintf(why, n, "out of memory");
        goto out;
    }
    *json = buf_detach(&b, NULL);
    if (!*json) {
        snprintf(why, n, "out of memory");
        goto out;
    }
    *visible = vis;
    *nvisible = nv;
    vis = NULL;
    rc = 0;
out:
    buf_free(&b);
    free(nm);
    free(ids);
    free(names);
    free(vis);
    return rc;
}

static void putch(buf *b, char c)
{
    buf_append(b, &c, 1);
}

/* Appends s as a quoted element of a PostgreSQL array literal. */
static void pg_array_str(buf *b, const char *s)
{
    putch(b, '"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            putch(b, '\\');
        putch(b, *s);
    }
    putch(b, '"');
}

int sync_modern_roster_page(json_object *root, char **userids, char **depts, int *rows,
                            const char **next_cursor, char *why, size_t n)
{
    json_object *arr = array_of(root, "dept_user"), *cur;
    buf u, d;
    size_t len;
    int rc = -1;

    *userids = *depts = NULL;
    *rows = 0;
    if (!arr) {
        snprintf(why, n, "user/list_id: no dept_user array");
        return -1;
    }
    if (!json_object_object_get_ex(root, "next_cursor", &cur) || !cur) {
        *next_cursor = "";
    } else if (!json_object_is_type(cur, json_type_string)) {
        snprintf(why, n, "user/list_id: next_cursor is not a string");
        return -1;
    } else {
        *next_cursor = json_object_get_string(cur);
    }
    buf_init(&u);
    buf_init(&d);
    putch(&u, '{');
    putch(&d, '{');
    len = json_object_array_length(arr);
    for (size_t i = 0; i < len; i++) {
        json_object *e = json_object_array_get_idx(arr, i), *uid, *dep;
        const char *s;
        if (!e || !json_object_is_type(e, json_type_object) ||
            !json_object_object_get_ex(e, "userid", &uid) ||
            !json_object_is_type(uid, json_type_string) ||
            !json_object_object_get_ex(e, "department", &dep) ||
            !json_object_is_type(dep, json_type_int)) {
            snprintf(why, n, "user/list_id: row %zu is malformed", i);
            goto out;
        }
        s = json_object_get_string(uid);
        if (!*s || strlen(s) > 64 || json_object_get_int64(dep) <= 0 ||
            json_object_get_int64(dep) > 2147483647) {
            snprintf(why, n, "user/list_id: row %zu is malformed", i);
            goto out;
        }
        if (i) {
            putch(&u, ',');
            putch(&d, ',');
        }
        pg_array_str(&u, s);
        buf_printf(&d, "%lld", (long long)json_object_get_int64(dep));
    }
    putch(&u, '}');
    putch(&d, '}');
    if (u.oom || d.oom) {
        snprintf(why, n, "out of memory");
        goto out;
    }
    *userids = buf_detach(&u, NULL);
    *depts = buf_detach(&d, NULL);
    if (!*userids || !*depts) {
        free(*userids);
        free(*depts);
        *userids = *depts = NULL;
        snprintf(why, n, "out of memory");
        goto out;
    }
    *rows = (int)len;
    rc = 0;
out:
    buf_free(&u);
    buf_free(&d);
    return rc;
}

unsigned sync_fields_present(const char *body, size_t len)
{
    unsigned present = 0;
    char key[32];

    for (int i = 0; i < SYNC_FIELDS_RESTRICTED; i++) {
        int k = snprintf(key, sizeof(key), "\"%s\":", sync_fields_restricted[i]);
        if (body && k > 0 && memmem(body, len, key, (size_t)k))
            present |= 1u << i;
    }
    return present;
}

void sync_fields_missing_literal(unsigned present, char *out, size_t n)
{
    size_t o = 0;
    int first = 1;

    o += (size_t)snprintf(out + o, n - o, "{");
    for (int i = 0; i < SYNC_FIELDS_RESTRICTED && o < n; i++) {
        if (present & (1u << i))
            continue;
        o += (size_t)snprintf(out + o, n - o, "%s%s", first ? "" : ",", sync_fields_restricted[i]);
        first = 0;
    }
    if (o < n)
        snprintf(out + o, n - o, "}");
}

int sync_forbidden(int errcode)
{
    return errcode == 48009 || errcode == 60020 || errcode == 60011;
}

void sync_forbidden_ip(const char *errmsg, char *out, size_t n)
{
    const char *p = errmsg ? strstr(errmsg, "from ip: ") : NULL;
    size_t k = 0;

    if (n)
        out[0] = '\0';
    if (!p || !n)
        return;
    p += strlen("from ip: ");
    while (p[k] && k + 1 < n && (strchr("0123456789abcdefABCDEF.:", p[k]) != NULL))
        k++;
    memcpy(out, p, k);
    out[k] = '\0';
}

void sync_forbidden_message(const char *api, const char *cred, int errcode, const char *errmsg,
                            char *out, size_t n)
{
    char ip[64], at[96] = "";

    sync_forbidden_ip(errmsg, ip, sizeof(ip));
    if (ip[0])
        snprintf(at, sizeof(at), " from egress IP %s", ip);
    switch (errcode) {
    case 48009:
        snprintf(out, n,
                 "%s with the %s: errcode 48009 (api forbidden)%s: since 2022-08-15 the "
                 "contact-sync secret may not call the legacy contacts API from an IP added "
                 "after that date; use --api-mode auto or modern (department/simplelist and "
                 "user/list_id), or call from an IP the upstream still allows",
                 api, cred, at);
        break;
    case 60020:
        snprintf(out, n,
                 "%s with the %s: errcode 60020 (IP not trusted)%s: add %s to the app's "
                 "trusted IPs (企业可信IP) in the admin console, on every host that may lead",
                 api, cred, at, ip[0] ? ip : "this host's egress IP");
        break;
    case 60011:
        snprintf(out, n,
                 "%s with the %s: errcode 60011 (no privilege)%s: the call is outside the "
                 "app's visible range; widen the range to the whole directory, or give the "
                 "enterprise its contact-sync secret (--contact-secret-env)",
                 api, cred, at);
        break;
    default:
        snprintf(out, n, "%s with the %s: errcode %d (%.160s)", api, cred, errcode,
                 errmsg ? errmsg : "");
    }
}
