/* A fetched department between the upstream's answer and the write: see
 * sync_batch.h. */
#include "worker/sync/sync_batch.h"

#include "common/buf.h"
#include "common/hash.h"
#include "worker/wecom/json_scan.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* An integer PostgreSQL's int columns take, so the write cannot fail on a
 * value the upstream sent (a batch of departments would fail with it). */
static int js_is_int(const js_val *v)
{
    long long x;
    return js_int(v, &x) && x >= INT32_MIN && x <= INT32_MAX;
}

static int js_int_array_ok(const js_val *v)
{
    js_val e;
    js_iter it;

    if (!js_iter_begin(&it, v) || v->type != JS_ARRAY)
        return 0;
    while (js_next(&it, NULL, &e))
        if (!js_is_int(&e))
            return 0;
    return 1;
}

/* The member fields PostgreSQL reads into columns (->> in sql_users);
 * escaped: the key has a backslash, so it is compared decoded. */
enum { F_OTHER, F_USERID, F_STRING, F_INT, F_MAIN, F_DEPARTMENT };

static int member_field(const js_val *k, int escaped)
{
    static const struct {
        const char *name;
        size_t n;
        int field;
    } fields[] = {
        {"userid", 6, F_USERID},         {"name", 4, F_STRING},
        {"mobile", 6, F_STRING},         {"email", 5, F_STRING},
        {"position", 8, F_STRING},       {"status", 6, F_INT},
        {"main_department", 15, F_MAIN}, {"department", 10, F_DEPARTMENT},
    };
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
        if (escaped ? js_key_is(k, fields[i].name)
                    : k->n == fields[i].n && memcmp(k->p, fields[i].name, k->n) == 0)
            return fields[i].field;
    return F_OTHER;
}

/* A member's fields as check_member found them, for writing the member with its
 * keys in jsonb's order (write_member). */
enum { MEMBER_FIELDS_MAX = 64 };

typedef struct mfield {
    const char *s; /* the field's text: its key's opening quote ... its value's end */
    uint32_t n;
    uint32_t kn;   /* the key's length (no escapes in it: see as_is) */
    uint32_t voff; /* where the value starts in s */
    uint64_t pre;  /* the key's first 8 bytes, big-endian, zero-padded */
} mfield;

typedef struct mfields {
    mfield f[MEMBER_FIELDS_MAX];
    int n;
    int uid;   /* the userid's field */
    int as_is; /* write the member as it came: a key with an escape, or too many fields */
} mfields;

static uint64_t key_prefix(const char *k, size_t n)
{
    unsigned char b[8] = {0};

    memcpy(b, k, n < 8 ? n : 8);
    return (uint64_t)b[0] << 56 | (uint64_t)b[1] << 48 | (uint64_t)b[2] << 40 |
           (uint64_t)b[3] << 32 | (uint64_t)b[4] << 24 | (uint64_t)b[5] << 16 |
           (uint64_t)b[6] << 8 | b[7];
}

/* Checks one member (m: its opening brace, in checked text ending at end) in a
 * single pass over its fields: each field PostgreSQL reads is absent, null or of
 * its column's type (every occurrence of a repeated key, since jsonb keeps the
 * last). Sets *after (just past the member), *uid (the last userid), *primary
 * (the department the member is counted in: its main one, else its first, else
 * fallback) and *mf. 0, or -1 for no usable userid, -2 for a field of the wrong
 * type. */
static int check_member(const js_val *m, const char *end, const char **after, js_val *uid,
                        long long *primary, long long fallback, int *names, mfields *mf)
{
    js_val k, v, first, e;
    js_iter it;
    long long x, main_dept = 0, first_dept = 0;
    int has_uid = 0, has_main = 0, has_first = 0, bad = 0;

    mf->n = 0;
    mf->uid = -1;
    mf->as_is = 0;
    js_iter_begin_in(&it, m, end);
    while (js_next(&it, &k, &v)) {
        int escaped = memchr(k.p, '\\', k.n) != NULL, f = member_field(&k, escaped);
        if (mf->n == MEMBER_FIELDS_MAX || escaped) {
            mf->as_is = 1;
        } else if (!mf->as_is) {
            mfield *d = &mf->f[mf->n++];
            const char *vs = v.type == JS_STRING ? v.p - 1 : v.p;
            d->s = k.p - 1;
            d->n = (uint32_t)(it.p - d->s); /* it.p: just past the value */
            d->kn = (uint32_t)k.n;
            d->voff = (uint32_t)(vs - d->s);
            d->pre = key_prefix(k.p, k.n);
            if (f == F_USERID)
                mf->uid = mf->n - 1;
        }
        if (f == F_OTHER)
            continue;
        if (f == F_USERID) {
            has_uid = v.type == JS_STRING && v.n > 0 && v.n <= 64;
            *uid = v;
            continue;
        }
        if (f == F_DEPARTMENT)
            *names = 0; /* the last "department" key counts, as in jsonb */
        if (v.type == JS_NULL) {
            if (f == F_MAIN)
                has_main = 0;
            else if (f == F_DEPARTMENT)
                has_first = 0;
            continue;
        }
        switch (f) {
        case F_STRING:
            bad |= v.type != JS_STRING;
            break;
        case F_INT:
            bad |= !js_is_int(&v);
            break;
        case F_MAIN:
            bad |= !js_is_int(&v);
            has_main = js_int(&v, &main_dept);
            break;
        case F_DEPARTMENT: {
            js_iter di;
            bad |= !js_int_array_ok(&v);
            has_first = js_iter_begin(&di, &v) && js_next(&di, NULL, &first) && js_int(&first, &x);
            if (has_first)
                first_dept = x;
            *names = has_first && x == fallback;
            while (!*names && has_first && js_next(&di, NULL, &e))
                *names = js_int(&e, &x) && x == fallback;
            break;
        }
        }
    }
    *after = js_iter_after(&it);
    if (mf->uid < 0)
        mf->as_is = 1;
    if (!has_uid)
        return -1;
    if (bad)
        return -2;
    *primary = has_main ? main_dept : has_first ? first_dept : fallback;
    return 0;
}

/* jsonb's order of an object's keys: shorter first, then bytewise. */
static int key_cmp(const mfield *a, const mfield *b)
{
    if (a->kn != b->kn)
        return a->kn < b->kn ? -1 : 1;
    if (a->pre != b->pre)
        return a->pre < b->pre ? -1 : 1;
    return a->kn > 8 ? memcmp(a->s + 9, b->s + 9, a->kn - 8) : 0;
}

/* The key order of the last member written in jsonb's order: an upstream sends
 * its members' keys in one order, so most members need no sort of their own. */
typedef struct key_shape {
    mfield k[MEMBER_FIELDS_MAX]; /* the keys (kn, pre, and s for longer keys) */
    int ord[MEMBER_FIELDS_MAX];
    int n;
} key_shape;

static int same_keys(const key_shape *sh, const mfields *mf)
{
    if (sh->n != mf->n)
        return 0;
    for (int i = 0; i < mf->n; i++)
        if (key_cmp(&sh->k[i], &mf->f[i]) != 0)
            return 0;
    return 1;
}

/* Writes member m (its text, mlen bytes, fields mf) to out, with its keys in
 * jsonb's order, and returns the length written (at most mlen: the same fields,
 * less any whitespace between them); *uid_at is where the userid's contents went.
 *
 * jsonb stores an object's keys sorted (shorter first, then bytewise) and sorts
 * each object it reads; its sort returns at once on keys already in order. The
 * upstream's order is not that one, and sorting ~24 keys of each of 400,000
 * members was ~5% of PostgreSQL's CPU in a full sync (perf, tests/bench/README.md).
 * The stored jsonb is the same either way. A member with a repeated key is
 * written as it came (jsonb keeps the last value, so the order matters then), and
 * so is one with an escaped key or more than MEMBER_FIELDS_MAX fields. */
static size_t write_member(char *out, const char *m, size_t mlen, const mfields *mf,
                           const char *uid, size_t *uid_at, key_shape *sh)
{
    int sorted = !mf->as_is;

    for (int i = 1; i < mf->n && sorted; i++)
        sorted = key_cmp(&mf->f[i - 1], &mf->f[i]) < 0;
    if (mf->as_is || sorted)
        goto as_is;
    if (!same_keys(sh, mf)) {
        int *ord = sh->ord;
        sh->n = 0;
        for (int i = 0; i < mf->n; i++) { /* insertion sort: few keys, stable */
            int j = i;
            while (j > 0 && key_cmp(&mf->f[ord[j - 1]], &mf->f[i]) > 0) {
                ord[j] = ord[j - 1];
                j--;
            }
            ord[j] = i;
        }
        for (int i = 1; i < mf->n; i++)
            if (key_cmp(&mf->f[ord[i - 1]], &mf->f[ord[i]]) == 0)
                goto as_is; /* a repeated key */
        memcpy(sh->k, mf->f, (size_t)mf->n * sizeof(mf->f[0]));
        sh->n = mf->n;
    }
    char *o = out;
    *o++ = '{';
    for (int i = 0; i < mf->n; i++) {
        const mfield *f = &mf->f[sh->ord[i]];
        if (i)
            *o++ = ',';
        if (sh->ord[i] == mf->uid)
            *uid_at = (size_t)(o - out) + f->voff + 1;
        memcpy(o, f->s, f->n);
        o += f->n;
    }
    *o++ = '}';
    return (size_t)(o - out);
as_is:
    memcpy(out, m, mlen);
    *uid_at = (size_t)(uid - m);
    return mlen;
}

int sync_batch_parse(ds_batch *b, const char *body, size_t len, char *why, size_t n)
{
    js_val root, ul = {0}, k, v, m, uid = {0};
    js_iter rit, it;
    long long primary;
    int names, all_name = 1;
    size_t count = 0, cap = 0, used = 0, uid_at = 0;
    mfields mf;
    key_shape shape;
    const char *end = body + len, *after;
    ds_member *ms = NULL;
    hash_fp *fp_hasher;
    char *text;

    /* The answer's keys without reading their values' insides, then the
     * members of its userlist, then the keys after it: an answer with two
     * userlist keys is refused (json-c and jsonb would keep the last one, a
     * reader that stops at the first the other: which one is meant is not
     * known). */
    js_root_shallow(body, len, &root);
    if (!js_iter_begin_in(&rit, &root, end) || root.type != JS_OBJECT) {
        snprintf(why, n, "no userlist array");
        return -1;
    }
    while (js_next_shallow(&rit, &k, &v))
        if (js_key_is(&k, "userlist")) {
            ul = v;
            break;
        }
    if (ul.type != JS_ARRAY || !js_iter_begin_in(&it, &ul, end)) {
        snprintf(why, n, "no userlist array");
        return -1;
    }
    text = malloc(len + 1); /* the members' text is at most the answer's */
    fp_hasher = hash_fp_new();
    shape.n = 0;
    if (!text || !fp_hasher) {
        snprintf(why, n, "out of memory");
        goto bad;
    }
    b->primary = 0;
    while (js_next_shallow(&it, NULL, &m)) {
        if (m.type != JS_OBJECT) {
            snprintf(why, n, "member %zu is not an object", count);
            goto bad;
        }
        names = 0;
        int rc = check_member(&m, end, &after, &uid, &primary, b->dept_id, &names, &mf);
        js_iter_resume(&it, after);
        switch (rc) {
        case -1:
            snprintf(why, n, "member %zu has no usable userid", count);
            goto bad;
        case -2:
            snprintf(why, n, "member %.*s has a field of the wrong type", (int)uid.n, uid.p);
            goto bad;
        }
        if (count == cap) {
            size_t nc = cap ? cap * 2 : 64;
            ds_member *nm = realloc(ms, nc * sizeof(*ms));
            if (!nm) {
                snprintf(why, n, "out of memory");
                goto bad;
            }
            ms = nm;
            cap = nc;
        }
        size_t mlen =
            write_member(text + used, m.p, (size_t)(after - m.p), &mf, uid.p, &uid_at, &shape);
        ms[count].off = (uint32_t)used;
        ms[count].len = (uint32_t)mlen;
        ms[count].uid_off = (uint32_t)(used + uid_at);
        ms[count].uid_len = (uint32_t)uid.n;
        ms[count].th = hash_sha256_u64(fp_hasher, text + used, mlen);
        ms[count].skip = 0;
        if (!ms[count].th) {
            snprintf(why, n, "cannot compute the members' digest");
            goto bad;
        }
        used += mlen;
        count++;
        b->primary += primary == b->dept_id;
        all_name &= names;
    }
    js_iter_resume(&rit, js_iter_after(&it));
    while (js_next_shallow(&rit, &k, &v))
        if (js_key_is(&k, "userlist")) {
            snprintf(why, n, "userlist given twice");
            goto bad;
        }
    text[used] = '\0';
    char md[65] = "";
    unsigned char *fp = malloc(count * 8 + 1); /* the fingerprints, big-endian */
    if (fp) {
        for (size_t i = 0; i < count; i++)
            for (int byte = 0; byte < 8; byte++)
                fp[8 * i + byte] = (unsigned char)(ms[i].th >> (56 - 8 * byte));
        hash_sha256_hex(fp, count * 8, md);
        free(fp);
    }
    if (strlen(md) != 64) {
        snprintf(why, n, "cannot compute the members' digest");
        goto bad;
    }
    memcpy(b->digest, md, SYNC_DIGEST_HEX);
    b->digest[SYNC_DIGEST_HEX] = '\0';
    /* A digest is kept only when each member names the department: a write that
     * changes a member then finds the department in its department array
     * (DIGESTS_INVALIDATE, sql/008). */
    b->record = all_name;
    b->unchanged = 0;
    b->body = text;
    b->len = used;
    b->m = ms;
    b->members = (int)count;
    hash_fp_free(fp_hasher);
    return (int)count;
bad:
    hash_fp_free(fp_hasher);
    free(ms);
    free(text);
    return -1;
}

size_t sync_batch_bytes(const ds_batch *b)
{
    return b->body ? b->len + (size_t)b->members * sizeof(ds_member) : 0;
}

void sync_batch_free(ds_batch *b)
{
    if (!b)
        return;
    free(b->body);
    free(b->m);
    free(b);
}

/* A member of the statement being built, to find the ones two of its
 * departments list. */
typedef struct uid_ref {
    const char *uid; /* decoded */
    size_t n;
    const char *text; /* the member's object */
    uint32_t len;
    int seq;   /* its place among the statement's members */
    int batch; /* its department's place among the batches */
    ds_member *mem;
} uid_ref;

static int cmp_uid(const void *a, const void *b)
{
    const uid_ref *x = a, *y = b;
    int d = memcmp(x->uid, y->uid, x->n < y->n ? x->n : y->n);

    /* Bytes: the users primary key's order under the C collation (tests/servers.sh). */
    if (d)
        return d;
    if (x->n != y->n)
        return x->n < y->n ? -1 : 1;
    return (x->seq > y->seq) - (x->seq < y->seq);
}

/* Closes an array built by sync_batch_params: NULL if nothing went in. */
static char *close_array(buf *b, int empty)
{
    if (empty) {
        buf_free(b);
        return NULL;
    }
    buf_puts(b, "]");
    return buf_detach(b, NULL);
}

/* A batch's "m" (sync_batch.h): uh holds its members' uid_hash, in order. */
static void put_hashes(buf *db, const ds_batch *x, const uint64_t *uh)
{
    char hex[33];

    buf_puts(db, "\"");
    for (int m = 0; m < x->members; m++) {
        snprintf(hex, sizeof(hex), "%016llx%016llx", (unsigned long long)uh[m],
                 (unsigned long long)x->m[m].th);
        buf_append(db, hex, 32);
    }
    buf_puts(db, "\"");
}

int sync_batch_params(ds_batch *const *batches, int nbatches, uid_set *written, member_map *map,
                      sync_params *p)
{
    int total = 0, k = 0, rc = -ENOMEM, nm = 0, nf = 0, first = 0;
    size_t arena_len = 1, ao = 0;
    uid_ref *refs = NULL;
    uint64_t *uh = NULL;
    char *keep = NULL, *arena = NULL, *differs = NULL;
    int *base = NULL, marked = 0;
    buf mb, fb, db;

    p->members = p->fresh = p->depts = NULL;
    for (int i = 0; i < nbatches; i++) {
        const ds_batch *x = batches[i];
        if (!x->body || x->unchanged)
            continue;
        total += x->members;
        for (int m = 0; m < x->members; m++)
            arena_len += x->m[m].uid_len + 1;
    }
    refs = malloc((size_t)(total ? total : 1) * sizeof(*refs));
    uh = malloc((size_t)(total ? total : 1) * sizeof(*uh));
    keep = calloc((size_t)total + 1, 1);
    arena = malloc(arena_len);
    differs = calloc((size_t)nbatches + 1, 1);
    base = calloc((size_t)nbatches + 1, sizeof(*base));
    buf_init(&mb);
    buf_init(&fb);
    buf_init(&db);
    if (!refs || !uh || !keep || !arena || !differs || !base)
        goto out;
    for (int i = 0; i < nbatches; i++) {
        ds_batch *x = batches[i];
        base[i] = k;
        for (int m = 0; x->body && !x->unchanged && m < x->members; m++, k++) {
            js_val v = {JS_STRING, x->body + x->m[m].uid_off, x->m[m].uid_len};
            refs[k].seq = k;
            refs[k].batch = i;
            refs[k].text = x->body + x->m[m].off;
            refs[k].len = x->m[m].len;
            refs[k].mem = &x->m[m];
            if (memchr(v.p, '\\', v.n)) {
                int dl = js_str_copy(&v, arena + ao, v.n + 1);
                refs[k].uid = arena + ao;
                refs[k].n = dl < 0 ? 0 : (size_t)dl;
                ao += v.n + 1;
            } else {
                refs[k].uid = v.p;
                refs[k].n = v.n;
            }
            uh[k] = uid_hash(refs[k].uid, refs[k].n);
        }
    }
    if (total > 1)
        qsort(refs, (size_t)total, sizeof(*refs), cmp_uid);
    for (int i = 0; i < total; i++) { /* sorted by userid, then place: keep each first */
        keep[refs[i].seq] = i == 0 || refs[i].n != refs[i - 1].n ||
                            memcmp(refs[i].uid, refs[i - 1].uid, refs[i].n) != 0;
        if (keep[refs[i].seq])
            first = i;
        else if (refs[i].len != refs[first].len ||
                 memcmp(refs[i].text, refs[first].text, refs[i].len) != 0)
            /* Two departments fetched a moment apart disagree on a member: the
             * one not written keeps no digest, which would not be what users holds. */
            differs[refs[i].batch] = 1;
    }
    buf_puts(&mb, "[");
    buf_puts(&fb, "[");
    marked = 1;
    for (int i = 0; i < total; i++) {
        ds_member *mem = refs[i].mem;
        if (!keep[refs[i].seq])
            continue;
        if (!batches[refs[i].batch]->decided)
            mem->skip = map && member_map_holds(map, uh[refs[i].seq], mem->th);
        if (mem->skip)
            continue;
        if (written && uid_set_add(written, refs[i].uid, refs[i].n) == 1) {
            if (nf++)
                buf_puts(&fb, ",");
            buf_append(&fb, refs[i].text, refs[i].len);
        } else {
            if (nm++)
                buf_puts(&mb, ",");
            buf_append(&mb, refs[i].text, refs[i].len);
        }
    }
    buf_puts(&db, "[");
    for (int i = 0; i < nbatches; i++) {
        const ds_batch *x = batches[i];
        char hex[SYNC_DIGEST_HEX + 3] = "null";
        int listed = x->body && !x->unchanged, recorded = listed && x->record && !differs[i];

        if (recorded)
            snprintf(hex, sizeof(hex), "\"%s\"", x->digest);
        /* Keys in jsonb's order (see write_member). */
        buf_printf(&db, "%s{\"d\":%lld,\"h\":%s,\"m\":", i ? "," : "", x->dept_id, hex);
        if (recorded)
            put_hashes(&db, x, uh + base[i]);
        else
            buf_puts(&db, "null");
        buf_printf(&db, ",\"n\":%d,\"p\":%d,\"s\":%s,\"u\":[", x->members, x->primary,
                   x->body || x->unchanged ? "false" : "true");
        for (int m = 0; listed && m < x->members; m++) {
            /* The userid's JSON string, quotes included: checked text. */
            if (m)
                buf_puts(&db, ",");
            buf_append(&db, x->body + x->m[m].uid_off - 1, x->m[m].uid_len + 2);
        }
        buf_printf(&db, "],\"x\":%s}", x->unchanged ? "true" : "false");
    }
    if (mb.oom || fb.oom || db.oom)
        goto out;
    p->members = close_array(&mb, !nm);
    p->fresh = close_array(&fb, !nf);
    p->depts = close_array(&db, 0);
    if ((nm && !p->members) || (nf && !p->fresh) || !p->depts) {
        sync_params_free(p);
        goto out;
    }
    /* Decided: the map takes what this statement writes. */
    for (int i = 0; i < total; i++) {
        const uid_ref *r = &refs[i];
        if (keep[r->seq] && !batches[r->batch]->decided && !r->mem->skip && map)
            member_map_set(map, uh[r->seq], r->mem->th);
    }
    for (int i = 0; i < nbatches; i++)
        batches[i]->decided = 1;
    rc = 0;
out:
    if (rc) {
        buf_free(&mb);
        buf_free(&fb);
        buf_free(&db);
        /* Nothing decided: the marks set above are set again next time. */
        for (int i = 0; i < total && marked; i++)
            if (!batches[refs[i].batch]->decided)
                refs[i].mem->skip = 0;
    }
    free(refs);
    free(uh);
    free(keep);
    free(arena);
    free(differs);
    free(base);
    return rc;
}

void sync_params_free(sync_params *p)
{
    free(p->members);
    free(p->fresh);
    free(p->depts);
    p->members = p->fresh = p->depts = NULL;
}
