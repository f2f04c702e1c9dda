/* libFuzzer: user/list answers, the way the sync reads them. Whatever bytes
 * arrive: the checker either refuses them with a reason, or they are JSON that
 * json-c reads too; then sync_batch_parse either refuses the answer with a
 * reason, or each member it keeps (written with its keys in jsonb's order) is
 * the same JSON object as the answer's member, its userid where the batch says,
 * and the statement's arrays are JSON. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "worker/wecom/json_scan.h"
#include "worker/sync/sync_batch.h"

/* 1 and *out (NULL for JSON null), or 0 if json-c refuses the text. */
static int parse_json(const char *s, size_t n, json_object **out)
{
    json_tokener *t = json_tokener_new_ex(70); /* the checker allows 64 levels */
    json_object *o;

    if (!t)
        abort();
    /* With its NUL, so that json-c knows the text ends there (a number at the
     * end would otherwise wait for more); checked text holds no NUL. */
    char *z = malloc(n + 1);
    if (!z)
        abort();
    memcpy(z, s, n);
    z[n] = '\0';
    json_tokener_set_flags(t, JSON_TOKENER_STRICT);
    o = json_tokener_parse_ex(t, z, (int)n + 1);
    int ok = json_tokener_get_error(t) == json_tokener_success && t->char_offset == (int)n;
    if (!ok) {
        json_object_put(o);
        o = NULL;
    }
    json_tokener_free(t);
    free(z);
    *out = o;
    return ok;
}

/* Repeated keys: json-c keeps one of them, so such a member is compared only by
 * text (sync_batch writes it as it came). */
static int has_repeated_key(const char *s, size_t n)
{
    js_val m, k, v;
    js_iter it;
    js_root(s, n, &m);
    if (!js_iter_begin(&it, &m))
        return 0;
    const char *seen[64];
    size_t len[64], count = 0;
    while (js_next(&it, &k, &v)) {
        for (size_t i = 0; i < count; i++)
            if (len[i] == k.n && memcmp(seen[i], k.p, k.n) == 0)
                return 1;
        if (count == 64 || memchr(k.p, '\\', k.n))
            return 1; /* written as it came too */
        seen[count] = k.p;
        len[count++] = k.n;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    char why[160] = "";

    if (size > 1 << 16)
        return 0;
    if (js_check(s, size, why, sizeof(why))) {
        if (!why[0])
            abort();
        return 0;
    }
    json_object *all, *list = NULL;
    if (!parse_json(s, size, &all))
        abort(); /* the checker accepted what a strict parser refuses */

    ds_batch b = {.dept_id = 1};
    char pwhy[160] = "";
    int n = sync_batch_parse(&b, s, size, pwhy, sizeof(pwhy));
    if (n < 0) {
        if (!pwhy[0] || b.body || b.m)
            abort();
        json_object_put(all);
        return 0;
    }
    if (!json_object_object_get_ex(all, "userlist", &list) ||
        json_object_array_length(list) != (size_t)n)
        abort();
    for (int i = 0; i < n; i++) {
        const ds_member *m = &b.m[i];
        const char *t = b.body + m->off;
        json_object *got, *want = json_object_array_get_idx(list, (size_t)i);
        if (!parse_json(t, m->len, &got) || !got)
            abort(); /* a kept member is not a JSON object */
        if (!has_repeated_key(t, m->len) && !json_object_equal(got, want))
            abort(); /* the reordered member is another object */
        json_object_put(got);
        if (m->uid_off < m->off || m->uid_off + m->uid_len > m->off + m->len ||
            b.body[m->uid_off + m->uid_len] != '"')
            abort(); /* the userid is not where the batch says */
    }
    /* The statement's arrays, as a first sync builds them: every kept member is
     * in exactly one of the two, and each is JSON. */
    sync_params sp;
    uid_set written;
    ds_batch *bp = &b;
    uid_set_init(&written);
    if (n > 0)
        uid_set_add(&written, b.body + b.m[0].uid_off, b.m[0].uid_len);
    if (sync_batch_params(&bp, 1, &written, NULL, &sp) == 0) {
        json_object *mo = NULL, *fo = NULL, *dob;
        if ((sp.members && !parse_json(sp.members, strlen(sp.members), &mo)) ||
            (sp.fresh && !parse_json(sp.fresh, strlen(sp.fresh), &fo)) ||
            !parse_json(sp.depts, strlen(sp.depts), &dob))
            abort();
        if (n > 0 && !sp.members && !sp.fresh)
            abort(); /* members lost */
        json_object_put(mo);
        json_object_put(fo);
        json_object_put(dob);
        sync_params_free(&sp);
    }
    uid_set_free(&written);
    free(b.body);
    free(b.m);
    json_object_put(all);
    return 0;
}
