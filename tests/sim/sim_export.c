/* Asynchronous export jobs, as WeCom serves them (export/user, export/simple_user,
 * export/get_result, and the files behind data_list's URLs).
 *
 * A job is not started (status 0) for queue_ms after its creation, running
 * (1) for run_ms more, then done (2) or, if created while `fail` was set,
 * failed (3). The first poll that finds it done makes its files from the
 * directory as it is then: the alive members in index order, block_size of
 * them (or part_max, if lower) per file, each file the plaintext
 * {"userlist":[...]} with every member the bytes user/list answers
 * (simple_user: userid, name, department, open_userid), encrypted with
 * AES-256-CBC, key = base64decode(encoding_aeskey + "="), IV = the key's first
 * 16 bytes, PKCS#7 padding to a multiple of 32 bytes; size and md5 are the
 * ciphertext's. The URLs expire url_ttl_s after the job is done. */
#include "tests/sim/sim.h"

#include <errno.h>
#include <json-c/json.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void sim_exports_init(sim_exports *e, uint64_t seed)
{
    memset(e, 0, sizeof(*e));
    e->queue_ms = 200;
    e->run_ms = 300;
    e->url_ttl_s = 7200;
    e->rng = sim_mix(seed, 0x6578706f7274ULL);
}

static void job_free_parts(sim_export_job *j)
{
    for (int i = 0; i < j->nparts; i++)
        free(j->parts[i].data);
    free(j->parts);
    j->parts = NULL;
    j->nparts = 0;
}

void sim_exports_free(sim_exports *e)
{
    for (int i = 0; i < e->njobs; i++)
        job_free_parts(&e->jobs[i]);
    free(e->jobs);
    e->jobs = NULL;
    e->njobs = e->cap = 0;
}

int sim_export_key_ok(const char *key)
{
    size_t n = 0;
    if (!key)
        return 0;
    for (; key[n]; n++) {
        char ch = key[n];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9')))
            return 0;
    }
    return n == 43;
}

int sim_export_encrypt(const char *aeskey, const unsigned char *plain, size_t len,
                       unsigned char **out, size_t *outlen)
{
    unsigned char b64[45], key[48];
    size_t pad = 32 - len % 32, total = len + pad;
    unsigned char *o;
    int n1 = 0, n2 = 0, ok;
    EVP_CIPHER_CTX *ctx;

    if (!sim_export_key_ok(aeskey) || total > (size_t)INT32_MAX)
        return -EINVAL;
    memcpy(b64, aeskey, 43);
    b64[43] = '=';
    b64[44] = '\0';
    if (EVP_DecodeBlock(key, b64, 44) != 33) /* 32 bytes and the padding's zero */
        return -EINVAL;
    o = malloc(total);
    if (!o)
        return -ENOMEM;
    /* Padding first, in place at the end of the output, then one pass. */
    memcpy(o, plain, len);
    memset(o + len, (int)pad, pad);
    ctx = EVP_CIPHER_CTX_new();
    if (!ctx) {
        free(o);
        return -ENOMEM;
    }
    ok = EVP_EncryptInit_ex(ctx, EVP_aes_256_cbc(), NULL, key, key) == 1 &&
         EVP_CIPHER_CTX_set_padding(ctx, 0) == 1 &&
         EVP_EncryptUpdate(ctx, o, &n1, o, (int)total) == 1 &&
         EVP_EncryptFinal_ex(ctx, o + n1, &n2) == 1 && (size_t)(n1 + n2) == total;
    EVP_CIPHER_CTX_free(ctx);
    if (!ok) {
        free(o);
        return -EINVAL;
    }
    *out = o;
    *outlen = total;
    return 0;
}

static void hex32(uint64_t a, uint64_t b, char out[33])
{
    snprintf(out, 33, "%016llx%016llx", (unsigned long long)a, (unsigned long long)b);
}

int sim_exports_create(sim_exports *e, int corp, sim_cred cred, int simple, uint32_t block,
                       const char *aeskey, uint64_t now_us, sim_export_job **job)
{
    sim_export_job *j;
    if (e->njobs == e->cap) {
        int ncap = e->cap ? e->cap * 2 : 8;
        sim_export_job *nj = realloc(e->jobs, (size_t)ncap * sizeof(*nj));
        if (!nj)
            return -ENOMEM;
        e->jobs = nj;
        e->cap = ncap;
    }
    j = &e->jobs[e->njobs++];
    memset(j, 0, sizeof(*j));
    /* Upstream job ids are opaque strings of letters and digits. */
    snprintf(j->jobid, sizeof(j->jobid), "jobid_%016llx",
             (unsigned long long)sim_rng_next(&e->rng));
    j->corp = corp;
    j->cred = cred;
    j->simple = simple;
    j->block = block;
    memcpy(j->aeskey, aeskey, 43);
    j->aeskey[43] = '\0';
    j->created_us = now_us;
    j->failed = e->fail;
    e->created++;
    *job = j;
    return 0;
}

sim_export_job *sim_exports_find(sim_exports *e, const char *jobid)
{
    for (int i = 0; jobid && i < e->njobs; i++)
        if (strcmp(e->jobs[i].jobid, jobid) == 0)
            return &e->jobs[i];
    return NULL;
}

int sim_export_status(const sim_exports *e, const sim_export_job *j, uint64_t now_us)
{
    uint64_t age_ms = (now_us - j->created_us) / 1000;
    if (age_ms < e->queue_ms)
        return 0;
    if (age_ms < (uint64_t)e->queue_ms + e->run_ms)
        return 1;
    return j->failed ? 3 : 2;
}

static int add_part(sim_exports *e, sim_export_job *j, buf *plain, uint32_t members)
{
    sim_export_part *np = realloc(j->parts, (size_t)(j->nparts + 1) * sizeof(*np)), *p;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    int rc;
    if (!np)
        return -ENOMEM;
    j->parts = np;
    p = &j->parts[j->nparts];
    memset(p, 0, sizeof(*p));
    rc = sim_export_encrypt(j->aeskey, (const unsigned char *)plain->data, plain->len, &p->data,
                            &p->len);
    if (rc)
        return rc;
    if (EVP_Digest(p->data, p->len, md, &mdlen, EVP_md5(), NULL) != 1 || mdlen != 16) {
        free(p->data);
        return -EINVAL;
    }
    for (unsigned i = 0; i < 16; i++)
        snprintf(p->md5 + 2 * i, 3, "%02x", md[i]);
    hex32(sim_rng_next(&e->rng), sim_rng_next(&e->rng), p->token);
    p->members = members;
    j->nparts++;
    return 0;
}

int sim_export_build(sim_exports *e, sim_dir *d, sim_export_job *j, uint64_t now_us)
{
    sim_corp *c = &d->corps[j->corp];
    uint32_t per = j->block, n = 0;
    buf plain;
    int rc = 0;

    if (j->built)
        return 0;
    if (e->part_max && e->part_max < per)
        per = e->part_max;
    buf_init(&plain);
    buf_puts(&plain, "{\"userlist\":[");
    for (size_t i = 0; i < c->nusers && !rc; i++) {
        const sim_user *u = &c->users[i];
        if (!u->alive)
            continue;
        if (n)
            buf_puts(&plain, ",");
        sim_corp_user_object(&plain, c, u, j->simple);
        if (++n == per) {
            buf_puts(&plain, "]}");
            rc = plain.oom ? -ENOMEM : add_part(e, j, &plain, n);
            buf_reset(&plain);
            buf_puts(&plain, "{\"userlist\":[");
            n = 0;
        }
    }
    if (!rc && (n || j->nparts == 0)) {
        buf_puts(&plain, "]}");
        rc = plain.oom ? -ENOMEM : add_part(e, j, &plain, n);
    }
    buf_free(&plain);
    if (rc) {
        job_free_parts(j);
        return rc;
    }
    j->built = 1;
    j->done_us = now_us;
    j->expires_us = now_us + (uint64_t)e->url_ttl_s * 1000000ULL;
    return 0;
}

sim_export_part *sim_exports_file(sim_exports *e, const char *token, sim_export_job **job)
{
    for (int i = 0; token && i < e->njobs; i++)
        for (int k = 0; k < e->jobs[i].nparts; k++)
            if (strcmp(e->jobs[i].parts[k].token, token) == 0) {
                *job = &e->jobs[i];
                return &e->jobs[i].parts[k];
            }
    return NULL;
}

void sim_exports_json(const sim_exports *e, const sim_dir *d, jw *w)
{
    jw_kint(w, "queue_ms", e->queue_ms);
    jw_kint(w, "run_ms", e->run_ms);
    jw_kint(w, "url_ttl_s", e->url_ttl_s);
    jw_kint(w, "part_max", e->part_max);
    jw_kint(w, "refuse", e->refuse);
    jw_kbool(w, "fail", e->fail);
    jw_kint(w, "file_fail_next", e->file_fail_next);
    jw_kint(w, "file_fail_after", e->file_fail_after);
    jw_kbool(w, "bad_md5", e->bad_md5);
    jw_kint(w, "jobs_created", (long long)e->created);
    jw_kint(w, "refused", (long long)e->refused);
    jw_kint(w, "polls", (long long)e->polls);
    jw_kint(w, "polls_wrong_credential", (long long)e->polls_wrong_cred);
    jw_kint(w, "file_requests", (long long)e->file_requests);
    jw_kint(w, "file_range_requests", (long long)e->file_ranges);
    jw_kint(w, "file_faults", (long long)e->file_faults);
    jw_kint(w, "file_expired", (long long)e->file_expired);
    jw_kint(w, "file_bytes", (long long)e->file_bytes);
    jw_key(w, "jobs");
    jw_arr_begin(w);
    for (int i = 0; i < e->njobs; i++) {
        const sim_export_job *j = &e->jobs[i];
        jw_obj_begin(w);
        jw_kstr(w, "jobid", j->jobid);
        jw_kstr(w, "corp_id", d->corps[j->corp].corp_id);
        jw_kstr(w, "credential", sim_cred_names[j->cred]);
        jw_kint(w, "block_size", j->block);
        jw_kint(w, "parts", j->nparts);
        jw_obj_end(w);
    }
    jw_arr_end(w);
}

int sim_exports_apply_json(sim_exports *e, const char *json, size_t len, char *err, size_t errlen)
{
    json_object *root = len ? json_tokener_parse(json) : NULL;
    sim_exports next = *e;
    int reset_stats = 0;

    if (!root || !json_object_is_type(root, json_type_object)) {
        json_object_put(root);
        snprintf(err, errlen, "a JSON object is required");
        return -EINVAL;
    }
    json_object_object_foreach(root, key, v)
    {
        int is_bool = json_object_is_type(v, json_type_boolean);
        long long x = json_object_is_type(v, json_type_int) ? json_object_get_int64(v) : -1;
        if (!strcmp(key, "fail") && is_bool) {
            next.fail = json_object_get_boolean(v);
            continue;
        }
        if (!strcmp(key, "bad_md5") && is_bool) {
            next.bad_md5 = json_object_get_boolean(v);
            continue;
        }
        if (!strcmp(key, "reset_stats") && is_bool) {
            reset_stats = json_object_get_boolean(v);
            continue;
        }
        if (x < 0 || x > 100000000) {
            snprintf(err, errlen, "%.40s must be an integer 0..100000000", key);
            json_object_put(root);
            return -EINVAL;
        }
        if (!strcmp(key, "queue_ms"))
            next.queue_ms = (uint32_t)x;
        else if (!strcmp(key, "run_ms"))
            next.run_ms = (uint32_t)x;
        else if (!strcmp(key, "url_ttl_s") && x > 0)
            next.url_ttl_s = (uint32_t)x;
        else if (!strcmp(key, "part_max"))
            next.part_max = (uint32_t)x;
        else if (!strcmp(key, "refuse") && (x == 0 || x == 48009 || x == 60011 || x == 48002))
            next.refuse = (int)x;
        else if (!strcmp(key, "file_fail_next"))
            next.file_fail_next = (uint32_t)x;
        else if (!strcmp(key, "file_fail_after"))
            next.file_fail_after = (uint32_t)x;
        else {
            snprintf(err, errlen,
                     "unknown or out-of-range export setting \"%.40s\" (refuse: 0, 48002, 48009 "
                     "or 60011; url_ttl_s > 0)",
                     key);
            json_object_put(root);
            return -EINVAL;
        }
    }
    json_object_put(root);
    if (reset_stats)
        next.created = next.refused = next.polls = next.polls_wrong_cred = next.file_requests =
            next.file_ranges = next.file_faults = next.file_expired = next.file_bytes = 0;
    *e = next;
    return 0;
}
