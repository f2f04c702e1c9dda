/* The simulated directory: deterministic generation from --seed, pre-rendered
 * answers, and the mutations tests use to make a directory change between syncs.
 *
 * Layout per enterprise: departments 1..D form a tree under 1 (a random recursive
 * tree: each department's parent is a uniformly chosen earlier one, so a child's id
 * is always above its parent's, which keeps subtree walks to one pass). Each
 * department gets U members whose main department it is; about one member in ten
 * also belongs to a second department. Mobiles are 11 digits, unique across the
 * whole simulator (a bijection of a global counter), so getuserid is unambiguous. */
#include "tests/sim/sim.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#define MOBILE_SPACE 3000000000ULL /* three prefixes x 10^9 */

static const char *const surnames[] = {"王", "李", "张", "刘", "陈", "杨",  "黄",
                                       "赵", "吴", "周", "徐", "孙", "马",  "朱",
                                       "胡", "郭", "何", "高", "林", "欧阳"};
static const char *const given[] = {"伟", "芳",   "娜",   "秀英", "敏",   "静", "丽",   "强",
                                    "磊", "军",   "洋",   "勇",   "艳",   "杰", "娟",   "涛",
                                    "明", "超",   "秀兰", "霞",   "平",   "刚", "桂英", "文",
                                    "华", "建国", "晓",   "一",   "子涵", "浩"};
static const char *const dept_names[] = {"研发部", "产品部",     "设计部", "市场部", "销售部",
                                         "财务部", "人力资源部", "法务部", "运营部", "客服部",
                                         "测试组", "基础架构组", "数据组", "华东区", "华南区"};
static const char *const positions[] = {"工程师",   "高级工程师", "产品经理", "设计师", "销售",
                                        "财务专员", "HRBP",       "运营",     "经理",   "总监"};

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

uint64_t sim_dir_mobile(const sim_dir *d, uint64_t i)
{
    static const uint64_t prefix[3] = {13, 15, 18};
    uint64_t v = ((i % MOBILE_SPACE) * d->mob_mul + d->mob_add) % MOBILE_SPACE;
    return prefix[v / 1000000000ULL] * 1000000000ULL + v % 1000000000ULL;
}

static void gen_name(uint64_t *rng, char *out, size_t outlen)
{
    const char *s = surnames[sim_rng_below(rng, NELEM(surnames))];
    const char *g = given[sim_rng_below(rng, NELEM(given))];
    snprintf(out, outlen, "%s%s", s, g);
}

static int valid_userid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n >= sizeof(((sim_user *)0)->userid))
        return 0;
    for (; *s; s++) {
        char ch = *s;
        int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                 ch == '_' || ch == '-' || ch == '.' || ch == '@';
        if (!ok)
            return 0;
    }
    return 1;
}

static int parse_mobile(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    size_t n = 0;
    for (; s[n]; n++) {
        if (s[n] < '0' || s[n] > '9' || n >= 11)
            return -EINVAL;
        v = v * 10 + (uint64_t)(s[n] - '0');
    }
    if (n != 11 || s[0] != '1')
        return -EINVAL;
    *out = v;
    return 0;
}

static int dept_alive(const sim_corp *c, int id)
{
    return id >= 1 && id <= c->max_dept && c->depts[id].alive;
}

/* ---- the answer cache ---- */

static sim_body **body_owner(sim_body *e)
{
    sim_dept *dp = &e->corp->depts[e->dept];
    if (!e->dept)
        return &e->corp->dept_list;
    return e->lite ? &dp->user_list_lite : &dp->user_list;
}

static void cache_unlink(sim_cache *k, sim_body *e)
{
    if (e->newer)
        e->newer->older = e->older;
    else
        k->newest = e->older;
    if (e->older)
        e->older->newer = e->newer;
    else
        k->oldest = e->newer;
    e->newer = e->older = NULL;
}

static void cache_link_newest(sim_cache *k, sim_body *e)
{
    e->newer = NULL;
    e->older = k->newest;
    if (k->newest)
        k->newest->newer = e;
    else
        k->oldest = e;
    k->newest = e;
}

/* Frees a kept answer and clears its owner's pointer. */
static void cache_drop(sim_cache *k, sim_body *e)
{
    *body_owner(e) = NULL;
    cache_unlink(k, e);
    k->bytes -= e->len;
    free(e);
}

/* Keeps the answer rendered in k->scratch for (c, dept, lite), evicting the least
 * recently used ones to stay within the budget. NULL if it does not fit or memory is
 * short: the caller then answers from scratch, and the next request renders it again. */
static sim_body *cache_keep(sim_cache *k, sim_corp *c, int dept, int lite)
{
    size_t len = k->scratch.len;
    if (len > k->budget)
        return NULL;
    while (k->oldest && k->bytes + len > k->budget)
        cache_drop(k, k->oldest);
    sim_body *e = malloc(sizeof(*e) + len + 1);
    if (!e)
        return NULL;
    e->corp = c;
    e->dept = dept;
    e->lite = lite;
    e->len = len;
    memcpy(e->data, k->scratch.data, len);
    e->data[len] = '\0';
    cache_link_newest(k, e);
    k->bytes += len;
    *body_owner(e) = e;
    return e;
}

static void cache_free(sim_cache *k)
{
    while (k->oldest)
        cache_drop(k, k->oldest);
    buf_free(&k->scratch);
}

static void dept_list_stale(sim_corp *c)
{
    if (c->dept_list)
        cache_drop(c->cache, c->dept_list);
}

static void dept_stale(sim_corp *c, int id)
{
    if (id < 1 || id > c->max_dept)
        return;
    if (c->depts[id].user_list)
        cache_drop(c->cache, c->depts[id].user_list);
    if (c->depts[id].user_list_lite)
        cache_drop(c->cache, c->depts[id].user_list_lite);
}

static int dept_join(sim_corp *c, int id, int uidx)
{
    sim_dept *dp = &c->depts[id];
    if (dp->nmembers == dp->mcap) {
        size_t ncap = dp->mcap ? dp->mcap * 2 : 8;
        int *m = realloc(dp->members, ncap * sizeof(*m));
        if (!m)
            return -ENOMEM;
        dp->members = m;
        dp->mcap = ncap;
    }
    dp->members[dp->nmembers++] = uidx;
    dept_stale(c, id);
    dept_list_stale(c); /* department_leader lists members */
    return 0;
}

static void dept_leave(sim_corp *c, int id, int uidx)
{
    sim_dept *dp = &c->depts[id];
    for (size_t i = 0; i < dp->nmembers; i++) {
        if (dp->members[i] != uidx)
            continue;
        memmove(&dp->members[i], &dp->members[i + 1], (dp->nmembers - i - 1) * sizeof(int));
        dp->nmembers--;
        break;
    }
    dept_stale(c, id);
    dept_list_stale(c); /* a leader may have left */
}

static void mobile_str(uint64_t m, char out[24])
{
    snprintf(out, 24, "%llu", (unsigned long long)m);
}

/* Parameters of a new member; NULL / 0 fields are generated. */
typedef struct user_spec {
    const char *userid;
    const char *name;
    uint64_t mobile;
    const int *depts;
    int ndept;
    int leader_first; /* leader of depts[0] */
} user_spec;

static int corp_add_user(sim_dir *d, sim_corp *c, const user_spec *sp, uint64_t *rng, int *out_idx)
{
    char mob[24];
    int err;
    if (c->nusers == c->ucap) {
        size_t ncap = c->ucap ? c->ucap * 2 : 64;
        sim_user *nu = realloc(c->users, ncap * sizeof(*nu));
        if (!nu)
            return -ENOMEM;
        c->users = nu;
        c->ucap = ncap;
    }
    int idx = (int)c->nusers;
    sim_user *u = &c->users[idx];
    memset(u, 0, sizeof(*u));
    if (sp->userid) {
        snprintf(u->userid, sizeof(u->userid), "%s", sp->userid);
    } else {
        /* Skip numbers an explicit add may already have taken. */
        do {
            snprintf(u->userid, sizeof(u->userid), "u%06llu", (unsigned long long)c->next_user++);
        } while (sim_map_get(&c->by_userid, u->userid, NULL));
    }
    if (sp->name)
        snprintf(u->name, sizeof(u->name), "%s", sp->name);
    else
        gen_name(rng, u->name, sizeof(u->name));
    u->mobile = sp->mobile ? sp->mobile : sim_dir_mobile(d, d->next_mobile++);
    uint64_t r = sim_rng_below(rng, 100);
    u->status = r < 90 ? 1 : r < 95 ? 2 : 4;
    u->gender = 1 + (int)sim_rng_below(rng, 2);
    u->position = (int)sim_rng_below(rng, NELEM(positions));
    u->ndept = sp->ndept;
    for (int i = 0; i < sp->ndept; i++) {
        u->dept[i] = sp->depts[i];
        u->order[i] = (int)sim_rng_below(rng, 1000);
        u->leader[i] = i == 0 && sp->leader_first;
    }
    u->alive = 1;

    mobile_str(u->mobile, mob);
    int joined = 0;
    err = sim_map_put(&c->by_userid, u->userid, idx);
    if (!err)
        err = sim_map_put(&c->by_mobile, mob, idx);
    while (!err && joined < u->ndept) {
        err = dept_join(c, u->dept[joined], idx);
        joined += !err;
    }
    if (err) {
        /* Undo, so that no index refers to the slot the next add will reuse. */
        while (joined-- > 0)
            dept_leave(c, u->dept[joined], idx);
        sim_map_del(&c->by_userid, u->userid);
        sim_map_del(&c->by_mobile, mob);
        return err;
    }
    c->nusers++;
    if (out_idx)
        *out_idx = idx;
    return 0;
}

static int corp_generate(sim_dir *d, sim_corp *c, int index, int ndepts, int upd)
{
    uint64_t rng = sim_mix(d->seed, (uint64_t)index);
    int err;
    c->index = index;
    c->cache = &d->cache;
    snprintf(c->corp_id, sizeof(c->corp_id), "wwsim%04d", index);
    snprintf(c->secret, sizeof(c->secret), "secret-wwsim%04d", index);
    snprintf(c->contact_secret, sizeof(c->contact_secret), "contact-wwsim%04d", index);
    snprintf(c->name, sizeof(c->name), "模拟企业%04d", index);
    c->next_user = 1;
    sim_map_init(&c->by_userid);
    sim_map_init(&c->by_mobile);
    c->depts = calloc((size_t)ndepts + 1, sizeof(*c->depts));
    if (!c->depts)
        return -ENOMEM;
    c->max_dept = ndepts;
    for (int k = 1; k <= ndepts; k++) {
        sim_dept *dp = &c->depts[k];
        dp->id = k;
        dp->alive = 1;
        if (k == 1) {
            dp->parentid = 0;
            dp->order = 100000000;
            snprintf(dp->name, sizeof(dp->name), "%s", c->name);
        } else {
            dp->parentid = 1 + (int)sim_rng_below(&rng, (uint64_t)k - 1);
            dp->order = (int)sim_rng_below(&rng, 100000000);
            snprintf(dp->name, sizeof(dp->name), "%s %d",
                     dept_names[sim_rng_below(&rng, NELEM(dept_names))], k);
        }
    }
    for (int k = 1; k <= ndepts; k++) {
        for (int j = 0; j < upd; j++) {
            int depts[2] = {k, 0};
            user_spec sp = {NULL, NULL, 0, depts, 1, j == 0};
            /* About one member in ten also belongs to a second department. */
            if (ndepts > 1 && sim_rng_below(&rng, 10) == 0) {
                int other = 1 + (int)sim_rng_below(&rng, (uint64_t)ndepts - 1);
                depts[1] = other >= k ? other + 1 : other;
                sp.ndept = 2;
            }
            err = corp_add_user(d, c, &sp, &rng, NULL);
            if (err)
                return err;
        }
    }
    return 0;
}

/* The corp's kept answers are freed with the cache (sim_dir_free, first). */
static void corp_free(sim_corp *c)
{
    if (c->depts) {
        for (int k = 1; k <= c->max_dept; k++)
            free(c->depts[k].members);
    }
    free(c->depts);
    free(c->users);
    sim_map_free(&c->by_userid);
    sim_map_free(&c->by_mobile);
}

int sim_dir_generate(sim_dir *d, int ncorps, int ndepts, int users_per_dept, uint64_t seed)
{
    memset(d, 0, sizeof(*d));
    if (ncorps < 1 || ncorps > 9999 || ndepts < 1 || users_per_dept < 0)
        return -EINVAL;
    d->seed = seed;
    d->cache.budget = SIM_CACHE_DEFAULT_BYTES;
    buf_init(&d->cache.scratch);
    /* index -> mobile is i * mul + add modulo 3e9, a bijection because mul shares no
     * factor (2, 3, 5) with 3e9. */
    d->mob_mul = sim_mix(seed, 0x6d6f62) % MOBILE_SPACE;
    while (d->mob_mul < 7 || d->mob_mul % 2 == 0 || d->mob_mul % 3 == 0 || d->mob_mul % 5 == 0)
        d->mob_mul = (d->mob_mul + 1) % MOBILE_SPACE;
    d->mob_add = sim_mix(seed, 0x616464) % MOBILE_SPACE;
    d->mut_rng = sim_mix(seed, 0x6d7574);
    d->corps = calloc((size_t)ncorps, sizeof(*d->corps));
    if (!d->corps)
        return -ENOMEM;
    d->ncorps = ncorps;
    for (int i = 0; i < ncorps; i++) {
        int err = corp_generate(d, &d->corps[i], i + 1, ndepts, users_per_dept);
        if (err) {
            sim_dir_free(d);
            return err;
        }
    }
    return 0;
}

void sim_dir_free(sim_dir *d)
{
    cache_free(&d->cache);
    for (int i = 0; i < d->ncorps; i++)
        corp_free(&d->corps[i]);
    free(d->corps);
    memset(d, 0, sizeof(*d));
}

sim_corp *sim_dir_corp(sim_dir *d, const char *corp_id)
{
    int n = 0;
    char tail;
    if (!corp_id || strncmp(corp_id, "wwsim", 5) != 0)
        return NULL;
    if (sscanf(corp_id + 5, "%d%c", &n, &tail) != 1 || n < 1 || n > d->ncorps)
        return NULL;
    sim_corp *c = &d->corps[n - 1];
    return strcmp(c->corp_id, corp_id) == 0 ? c : NULL;
}

sim_user *sim_corp_find_user(sim_corp *c, const char *userid)
{
    int64_t idx;
    if (!userid || !sim_map_get(&c->by_userid, userid, &idx))
        return NULL;
    sim_user *u = &c->users[idx];
    return u->alive ? u : NULL;
}

sim_user *sim_corp_find_mobile(sim_corp *c, const char *mobile)
{
    int64_t idx;
    if (!mobile || !sim_map_get(&c->by_mobile, mobile, &idx))
        return NULL;
    sim_user *u = &c->users[idx];
    return u->alive ? u : NULL;
}

/* ---- rendering ----
 * The API answers are written with literal fragments rather than the generic JSON
 * writer: they are the simulator's hot path (a user/list answer is ~500 bytes per
 * member). The bytes are the same as jw would write. Only names go through
 * buf_json_str: userids (generated, or checked by valid_userid), corp ids, the
 * position table and numbers never need escaping. */

#define PUT(b, lit) buf_append((b), "" lit, sizeof(lit) - 1) /* lit: a string literal */

static void jw_int_array(jw *w, const char *key, const int *v, int n)
{
    jw_key(w, key);
    jw_arr_begin(w);
    for (int i = 0; i < n; i++)
        jw_int(w, v[i]);
    jw_arr_end(w);
}

/* Members are written piecewise into a stack buffer first, then appended in one go.
 * Fixed text under 400 bytes, userid (< 24) five times, corp id (< 16) three times,
 * the position (< 32), three int arrays of at most SIM_MAX_USER_DEPTS ints (< 12
 * chars each) and four more numbers (< 21 chars each): under 900 bytes besides the
 * name, which is appended on its own. */
#define MEMBER_PIECE 1024

static char *w_mem(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}

#define W(p, lit) w_mem((p), "" lit, sizeof(lit) - 1)

static char *w_int(char *p, long long v)
{
    char tmp[24], *t = tmp + sizeof(tmp);
    unsigned long long x = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        *--t = (char)('0' + x % 10);
        x /= 10;
    } while (x);
    if (v < 0)
        *--t = '-';
    return w_mem(p, t, (size_t)(tmp + sizeof(tmp) - t));
}

static char *w_int_array(char *p, const int *v, int n)
{
    *p++ = '[';
    for (int i = 0; i < n; i++) {
        if (i)
            *p++ = ',';
        p = w_int(p, v[i]);
    }
    *p++ = ']';
    return p;
}

/* "https://wework.qpic.cn/sim/CORP/USERID/0" */
static char *w_avatar(char *p, const char *corp, size_t clen, const char *uid, size_t ulen)
{
    p = W(p, "https://wework.qpic.cn/sim/");
    p = w_mem(p, corp, clen);
    *p++ = '/';
    p = w_mem(p, uid, ulen);
    return W(p, "/0");
}

static void put_str(buf *b, const char *s)
{
    buf_append(b, s, strlen(s));
}

static void put_int(buf *b, long long v)
{
    char tmp[24];
    buf_append(b, tmp, (size_t)(w_int(tmp, v) - tmp));
}

/* The member fields of user/list and user/get, without the braces; lite leaves out
 * what a new app is not given (mobile, gender, email, biz_mail, avatar, thumb_avatar,
 * address, qr_code), keys and all. */
static void render_user_fields(buf *b, const sim_corp *c, const sim_user *u, int lite)
{
    char piece[MEMBER_PIECE], *p = piece;
    const char *uid = u->userid, *corp = c->corp_id;
    size_t ulen = strlen(uid), clen = strlen(corp);
    p = W(p, "\"userid\":\"");
    p = w_mem(p, uid, ulen);
    p = W(p, "\",\"name\":");
    buf_append(b, piece, (size_t)(p - piece));
    buf_json_str(b, u->name, strlen(u->name));
    p = piece;
    p = W(p, ",\"department\":");
    p = w_int_array(p, u->dept, u->ndept);
    p = W(p, ",\"order\":");
    p = w_int_array(p, u->order, u->ndept);
    p = W(p, ",\"position\":\"");
    p = w_mem(p, positions[u->position], strlen(positions[u->position]));
    if (!lite) {
        p = W(p, "\",\"mobile\":\"");
        p = w_int(p, (long long)u->mobile);
        p = W(p, "\",\"gender\":\"");
        p = w_int(p, u->gender);
        p = W(p, "\",\"email\":\"");
        p = w_mem(p, uid, ulen);
        *p++ = '@';
        p = w_mem(p, corp, clen);
        p = W(p, ".example.com\",\"biz_mail\":\"");
    }
    p = W(p, "\",\"is_leader_in_dept\":");
    p = w_int_array(p, u->leader, u->ndept);
    p = W(p, ",\"direct_leader\":[]");
    if (!lite) {
        p = W(p, ",\"avatar\":\"");
        p = w_avatar(p, corp, clen, uid, ulen);
        p = W(p, "\",\"thumb_avatar\":\"");
        p = w_avatar(p, corp, clen, uid, ulen);
        *p++ = '"';
    }
    p = W(p, ",\"telephone\":\"\",\"alias\":\"\",\"status\":");
    p = w_int(p, u->status);
    if (!lite)
        p = W(p, ",\"address\":\"\"");
    /* open_userid "wo%04d%s": the corp index is 1..9999 (sim_dir_generate). */
    p = W(p, ",\"open_userid\":\"wo");
    for (int div = 1000; div; div /= 10)
        *p++ = (char)('0' + c->index / div % 10);
    p = w_mem(p, uid, ulen);
    p = W(p, "\",\"main_department\":");
    p = w_int(p, u->dept[0]);
    p = W(p, ",\"extattr\":{\"attrs\":[]}");
    if (!lite)
        p = W(p, ",\"qr_code\":\"\"");
    p = W(p, ",\"external_position\":\"\"");
    buf_append(b, piece, (size_t)(p - piece));
}

void sim_corp_user_object(buf *b, const sim_corp *c, const sim_user *u, int simple)
{
    char piece[MEMBER_PIECE], *p = piece;
    size_t ulen = strlen(u->userid);
    if (!simple) {
        buf_puts(b, "{");
        render_user_fields(b, c, u, 0);
        buf_puts(b, "}");
        return;
    }
    p = W(p, "{\"userid\":\"");
    p = w_mem(p, u->userid, ulen);
    p = W(p, "\",\"name\":");
    buf_append(b, piece, (size_t)(p - piece));
    buf_json_str(b, u->name, strlen(u->name));
    p = piece;
    p = W(p, ",\"department\":");
    p = w_int_array(p, u->dept, u->ndept);
    p = W(p, ",\"open_userid\":\"wo");
    for (int div = 1000; div; div /= 10)
        *p++ = (char)('0' + c->index / div % 10);
    p = w_mem(p, u->userid, ulen);
    p = W(p, "\"}");
    buf_append(b, piece, (size_t)(p - piece));
}

#define OK_HEAD "{\"errcode\":0,\"errmsg\":\"ok\""

/* Writes the user/list answer of a department. */
static int render_user_list(const sim_corp *c, int id, int lite, buf *b)
{
    const sim_dept *dp = &c->depts[id];
    PUT(b, OK_HEAD ",\"userlist\":[");
    for (size_t i = 0; i < dp->nmembers; i++) {
        if (i)
            PUT(b, ",");
        PUT(b, "{");
        render_user_fields(b, c, &c->users[dp->members[i]], lite);
        PUT(b, "}");
    }
    PUT(b, "]}");
    return b->oom ? -ENOMEM : 0;
}

static int render_dept_list(const sim_corp *c, const int *roots, int nroots, buf *b);

/* The kept answer for key (user/list of department key, lite or not; 0: department/list
 * of the root), else renders it into the cache's scratch and keeps it if it fits. */
static int cached_answer(sim_corp *c, int key, int lite, const char **body, size_t *len)
{
    static const int root = 1;
    sim_cache *k = c->cache;
    sim_body *e = !key   ? c->dept_list
                  : lite ? c->depts[key].user_list_lite
                         : c->depts[key].user_list;
    int err;
    if (e) {
        cache_unlink(k, e);
        cache_link_newest(k, e);
        *body = e->data;
        *len = e->len;
        return 0;
    }
    buf_reset(&k->scratch);
    err = key ? render_user_list(c, key, lite, &k->scratch)
              : render_dept_list(c, &root, 1, &k->scratch);
    if (err)
        return err;
    e = cache_keep(k, c, key, key ? lite : 0);
    *body = e ? e->data : k->scratch.data;
    *len = e ? e->len : k->scratch.len;
    return 0;
}

int sim_corp_user_list(sim_corp *c, int dept_id, const char **body, size_t *len)
{
    if (!dept_alive(c, dept_id))
        return -ENOENT;
    return cached_answer(c, dept_id, 0, body, len);
}

int sim_corp_user_list_lite(sim_corp *c, int dept_id, const char **body, size_t *len)
{
    if (!dept_alive(c, dept_id))
        return -ENOENT;
    return cached_answer(c, dept_id, 1, body, len);
}

static void render_dept(buf *b, const sim_corp *c, const sim_dept *dp)
{
    int nleaders = 0;
    PUT(b, "{\"id\":");
    put_int(b, dp->id);
    PUT(b, ",\"name\":");
    buf_json_str(b, dp->name, strlen(dp->name));
    PUT(b, ",\"name_en\":\"\",\"department_leader\":[");
    for (size_t i = 0; i < dp->nmembers; i++) {
        const sim_user *u = &c->users[dp->members[i]];
        for (int j = 0; j < u->ndept; j++) {
            if (u->dept[j] == dp->id && u->leader[j]) {
                if (nleaders++)
                    PUT(b, ",");
                PUT(b, "\"");
                put_str(b, u->userid);
                PUT(b, "\"");
            }
        }
    }
    PUT(b, "],\"parentid\":");
    put_int(b, dp->parentid);
    PUT(b, ",\"order\":");
    put_int(b, dp->order);
    PUT(b, "}");
}

/* in[k] = 1 for the roots and every department under one of them; ids grow from
 * parent to child, so one pass in id order decides. NULL without memory. */
static char *mark_subtrees(const sim_corp *c, const int *roots, int nroots)
{
    char *in = calloc((size_t)c->max_dept + 1, 1);
    if (!in)
        return NULL;
    for (int i = 0; i < nroots; i++)
        if (roots[i] >= 1 && roots[i] <= c->max_dept)
            in[roots[i]] = 1;
    for (int k = 2; k <= c->max_dept; k++)
        if (!in[k] && c->depts[k].parentid >= 1)
            in[k] = in[c->depts[k].parentid];
    return in;
}

/* Writes department/list of the roots' subtrees (one root: id and its subtree), alive
 * departments in id order. */
static int render_dept_list(const sim_corp *c, const int *roots, int nroots, buf *b)
{
    char *in = mark_subtrees(c, roots, nroots);
    int n = 0;
    if (!in)
        return -ENOMEM;
    PUT(b, OK_HEAD ",\"department\":[");
    for (int k = 1; k <= c->max_dept; k++) {
        const sim_dept *dp = &c->depts[k];
        if (in[k] && dp->alive) {
            if (n++)
                PUT(b, ",");
            render_dept(b, c, dp);
        }
    }
    PUT(b, "]}");
    free(in);
    return b->oom ? -ENOMEM : 0;
}

int sim_corp_dept_list(sim_corp *c, int id, buf *scratch, const char **body, size_t *len)
{
    int err;
    if (id <= 0)
        id = 1;
    if (!dept_alive(c, id))
        return -ENOENT;
    if (id != 1) {
        buf_reset(scratch);
        err = render_dept_list(c, &id, 1, scratch);
        if (err)
            return err;
        *body = scratch->data;
        *len = scratch->len;
        return 0;
    }
    return cached_answer(c, 0, 0, body, len);
}

int sim_corp_dept_list_visible(sim_corp *c, const sim_deptset *vis, buf *scratch, const char **body,
                               size_t *len)
{
    int err;
    if (!vis)
        return sim_corp_dept_list(c, 1, scratch, body, len);
    buf_reset(scratch);
    err = render_dept_list(c, vis->ids, vis->n, scratch);
    if (err)
        return err;
    *body = scratch->data;
    *len = scratch->len;
    return 0;
}

int sim_corp_dept_in(const sim_corp *c, const sim_deptset *vis, int id)
{
    if (!vis)
        return 1;
    /* Up the parent chain: parents have lower ids, the root's parent is 0. */
    for (int k = id; k >= 1 && k <= c->max_dept; k = c->depts[k].parentid)
        for (int i = 0; i < vis->n; i++)
            if (vis->ids[i] == k)
                return 1;
    return 0;
}

int sim_corp_user_in(const sim_corp *c, const sim_deptset *vis, const sim_user *u)
{
    for (int i = 0; i < u->ndept; i++)
        if (sim_corp_dept_in(c, vis, u->dept[i]))
            return 1;
    return 0;
}

int sim_corp_dept_simplelist(sim_corp *c, int id, const sim_deptset *vis, buf *out)
{
    static const int root = 1;
    char *in;
    int n = 0;
    if (id > 0 && !dept_alive(c, id))
        return -ENOENT;
    if (id > 0)
        in = mark_subtrees(c, &id, 1);
    else
        in = vis ? mark_subtrees(c, vis->ids, vis->n) : mark_subtrees(c, &root, 1);
    if (!in)
        return -ENOMEM;
    buf_reset(out);
    PUT(out, OK_HEAD ",\"department_id\":[");
    for (int k = 1; k <= c->max_dept; k++) {
        const sim_dept *dp = &c->depts[k];
        if (!in[k] || !dp->alive)
            continue;
        if (n++)
            PUT(out, ",");
        PUT(out, "{\"id\":");
        put_int(out, dp->id);
        PUT(out, ",\"parentid\":");
        put_int(out, dp->parentid);
        PUT(out, ",\"order\":");
        put_int(out, dp->order);
        PUT(out, "}");
    }
    PUT(out, "]}");
    free(in);
    return out->oom ? -ENOMEM : 0;
}

int sim_corp_dept_get(sim_corp *c, int id, buf *out)
{
    if (!dept_alive(c, id))
        return -ENOENT;
    buf_reset(out);
    PUT(out, OK_HEAD ",\"department\":");
    render_dept(out, c, &c->depts[id]);
    PUT(out, "}");
    return out->oom ? -ENOMEM : 0;
}

static int user_get(sim_corp *c, const char *userid, int lite, buf *out)
{
    sim_user *u = sim_corp_find_user(c, userid);
    if (!u)
        return -ENOENT;
    buf_reset(out);
    PUT(out, OK_HEAD ",");
    render_user_fields(out, c, u, lite);
    PUT(out, "}");
    return out->oom ? -ENOMEM : 0;
}

int sim_corp_user_get(sim_corp *c, const char *userid, buf *out)
{
    return user_get(c, userid, 0, out);
}

int sim_corp_user_get_lite(sim_corp *c, const char *userid, buf *out)
{
    return user_get(c, userid, 1, out);
}

static void render_org_corp(jw *w, const sim_corp *c)
{
    size_t nusers = 0;
    int ndepts = 0;
    char mob[24], email[96], gender[4];
    for (size_t i = 0; i < c->nusers; i++)
        nusers += c->users[i].alive != 0;
    for (int k = 1; k <= c->max_dept; k++)
        ndepts += c->depts[k].alive != 0;
    jw_obj_begin(w);
    jw_kstr(w, "corp_id", c->corp_id);
    jw_kstr(w, "name", c->name);
    jw_kint(w, "departments_total", ndepts);
    jw_kint(w, "users_total", (long long)nusers);
    jw_key(w, "departments");
    jw_arr_begin(w);
    for (int k = 1; k <= c->max_dept; k++) {
        const sim_dept *dp = &c->depts[k];
        if (!dp->alive)
            continue;
        jw_obj_begin(w);
        jw_kint(w, "id", dp->id);
        jw_kstr(w, "name", dp->name);
        jw_kint(w, "parentid", dp->parentid);
        jw_kint(w, "order", dp->order);
        jw_kint(w, "members", (long long)dp->nmembers);
        jw_obj_end(w);
    }
    jw_arr_end(w);
    jw_key(w, "users");
    jw_arr_begin(w);
    for (size_t i = 0; i < c->nusers; i++) {
        const sim_user *u = &c->users[i];
        if (!u->alive)
            continue;
        mobile_str(u->mobile, mob);
        snprintf(email, sizeof(email), "%s@%s.example.com", u->userid, c->corp_id);
        snprintf(gender, sizeof(gender), "%d", u->gender);
        jw_obj_begin(w);
        jw_kstr(w, "userid", u->userid);
        jw_kstr(w, "name", u->name);
        jw_kstr(w, "mobile", mob);
        jw_kstr(w, "email", email);
        jw_kstr(w, "position", positions[u->position]);
        jw_kint(w, "status", u->status);
        jw_kstr(w, "gender", gender);
        jw_int_array(w, "department", u->dept, u->ndept);
        jw_int_array(w, "order", u->order, u->ndept);
        jw_int_array(w, "is_leader_in_dept", u->leader, u->ndept);
        jw_kint(w, "main_department", u->dept[0]);
        jw_obj_end(w);
    }
    jw_arr_end(w);
    jw_obj_end(w);
}

int sim_dir_org_json(sim_dir *d, sim_corp *c, buf *out)
{
    jw w;
    jw_init(&w, out);
    jw_obj_begin(&w);
    jw_key(&w, "corps");
    jw_arr_begin(&w);
    for (int i = 0; i < d->ncorps; i++)
        if (!c || c == &d->corps[i])
            render_org_corp(&w, &d->corps[i]);
    jw_arr_end(&w);
    jw_obj_end(&w);
    return out->oom ? -ENOMEM : 0;
}

/* ---- mutations ---- */

enum {
    MUT_ADDED,
    MUT_REMOVED,
    MUT_RENAMED,
    MUT_MOVED,
    MUT_DADDED,
    MUT_DRENAMED,
    MUT_DREMOVED,
    MUT_N
};
static const char *const mut_keys[MUT_N] = {"added",
                                            "removed",
                                            "renamed",
                                            "moved",
                                            "departments_added",
                                            "departments_renamed",
                                            "departments_removed"};

typedef struct mut_ctx {
    sim_dir *d;
    sim_corp *c;
    buf lists[MUT_N]; /* JSON array elements, comma-separated */
    char *err;
    size_t errlen;
    const char *where;
} mut_ctx;

__attribute__((format(printf, 3, 4))) static int mut_fail(mut_ctx *m, int code, const char *fmt,
                                                          ...)
{
    char msg[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(m->err, m->errlen, "%s: %s", m->where, msg);
    return code;
}

static void mut_note_str(mut_ctx *m, int list, const char *s)
{
    buf *b = &m->lists[list];
    if (b->len)
        buf_puts(b, ",");
    buf_json_str(b, s, strlen(s));
}

static void mut_note_int(mut_ctx *m, int list, int v)
{
    buf *b = &m->lists[list];
    buf_printf(b, "%s%d", b->len ? "," : "", v);
}

static int pick_alive_user(mut_ctx *m)
{
    sim_corp *c = m->c;
    if (c->nusers == 0)
        return -1;
    size_t start = sim_rng_below(&m->d->mut_rng, c->nusers);
    for (size_t i = 0; i < c->nusers; i++) {
        size_t j = (start + i) % c->nusers;
        if (c->users[j].alive)
            return (int)j;
    }
    return -1;
}

/* A random alive department other than `except` (0 = none), or -1. */
static int pick_alive_dept(mut_ctx *m, int except)
{
    sim_corp *c = m->c;
    int start = 1 + (int)sim_rng_below(&m->d->mut_rng, (uint64_t)c->max_dept);
    for (int i = 0; i < c->max_dept; i++) {
        int k = 1 + (start - 1 + i) % c->max_dept;
        if (c->depts[k].alive && k != except)
            return k;
    }
    return -1;
}

static int json_depts(mut_ctx *m, json_object *arr, int *out, int *n)
{
    if (!json_object_is_type(arr, json_type_array))
        return mut_fail(m, -EINVAL, "department must be an array of ids");
    size_t len = json_object_array_length(arr);
    if (len < 1 || len > SIM_MAX_USER_DEPTS)
        return mut_fail(m, -EINVAL, "department needs 1..%d ids", SIM_MAX_USER_DEPTS);
    for (size_t i = 0; i < len; i++) {
        json_object *e = json_object_array_get_idx(arr, i);
        int id = json_object_is_type(e, json_type_int) ? json_object_get_int(e) : -1;
        if (!dept_alive(m->c, id))
            return mut_fail(m, -ENOENT, "unknown department %d", id);
        for (size_t j = 0; j < i; j++)
            if (out[j] == id)
                return mut_fail(m, -EINVAL, "department %d listed twice", id);
        out[i] = id;
    }
    *n = (int)len;
    return 0;
}

static const char *json_str_field(json_object *o, const char *key)
{
    json_object *v;
    if (!o || !json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    return json_object_get_string(v);
}

static int check_name(mut_ctx *m, const char *name)
{
    if (name && (name[0] == '\0' || strlen(name) >= SIM_NAME_MAX))
        return mut_fail(m, -EINVAL, "name must have 1..%d bytes", SIM_NAME_MAX - 1);
    return 0;
}

static sim_user *op_user(mut_ctx *m, json_object *op, int random_pick, int *err)
{
    const char *userid = json_str_field(op, "userid");
    sim_user *u;
    *err = 0;
    if (!userid && random_pick) {
        int idx = pick_alive_user(m);
        if (idx < 0) {
            *err = mut_fail(m, -ENOENT, "no member left to pick");
            return NULL;
        }
        return &m->c->users[idx];
    }
    if (!userid) {
        *err = mut_fail(m, -EINVAL, "userid missing");
        return NULL;
    }
    u = sim_corp_find_user(m->c, userid);
    if (!u)
        *err = mut_fail(m, -ENOENT, "unknown userid %s", userid);
    return u;
}

static int op_add(mut_ctx *m, json_object *op)
{
    sim_corp *c = m->c;
    int depts[SIM_MAX_USER_DEPTS], ndept = 1, idx, err;
    json_object *darr;
    const char *userid = op ? json_str_field(op, "userid") : NULL;
    const char *name = op ? json_str_field(op, "name") : NULL;
    const char *mobile = op ? json_str_field(op, "mobile") : NULL;
    user_spec sp = {userid, name, 0, depts, 1, 0};
    if (userid && (!valid_userid(userid) || sim_map_get(&c->by_userid, userid, NULL)))
        return mut_fail(m, -EEXIST, "userid %s is invalid or taken", userid);
    if ((err = check_name(m, name)))
        return err;
    if (mobile) {
        char canon[24];
        if (parse_mobile(mobile, &sp.mobile))
            return mut_fail(m, -EINVAL, "mobile must be 11 digits starting with 1");
        mobile_str(sp.mobile, canon);
        if (sim_map_get(&c->by_mobile, canon, NULL))
            return mut_fail(m, -EEXIST, "mobile already used in %s", c->corp_id);
    }
    if (op && json_object_object_get_ex(op, "department", &darr)) {
        if ((err = json_depts(m, darr, depts, &ndept)))
            return err;
    } else {
        depts[0] = pick_alive_dept(m, 0);
        if (depts[0] < 0)
            return mut_fail(m, -ENOENT, "no department left");
    }
    sp.ndept = ndept;
    err = corp_add_user(m->d, c, &sp, &m->d->mut_rng, &idx);
    if (err)
        return mut_fail(m, err, "out of memory");
    mut_note_str(m, MUT_ADDED, c->users[idx].userid);
    return 0;
}

static int op_remove(mut_ctx *m, json_object *op)
{
    char mob[24];
    int err;
    sim_user *u = op_user(m, op, op == NULL, &err);
    if (!u)
        return err;
    int idx = (int)(u - m->c->users);
    for (int i = 0; i < u->ndept; i++)
        dept_leave(m->c, u->dept[i], idx);
    /* Unmapped so that an explicit add may reuse the userid or mobile later. */
    mobile_str(u->mobile, mob);
    sim_map_del(&m->c->by_userid, u->userid);
    sim_map_del(&m->c->by_mobile, mob);
    u->alive = 0;
    mut_note_str(m, MUT_REMOVED, u->userid);
    return 0;
}

static int op_rename(mut_ctx *m, json_object *op)
{
    int err;
    sim_user *u = op_user(m, op, op == NULL, &err);
    if (!u)
        return err;
    const char *name = op ? json_str_field(op, "name") : NULL;
    if ((err = check_name(m, name)))
        return err;
    if (name) {
        snprintf(u->name, sizeof(u->name), "%s", name);
    } else {
        char old[SIM_NAME_MAX];
        memcpy(old, u->name, sizeof(old));
        gen_name(&m->d->mut_rng, u->name, sizeof(u->name));
        /* A rename must change something, or a test could not see it. */
        if (strcmp(old, u->name) == 0 && strlen(u->name) + 4 < sizeof(u->name))
            strcat(u->name, "二");
    }
    for (int i = 0; i < u->ndept; i++)
        dept_stale(m->c, u->dept[i]);
    mut_note_str(m, MUT_RENAMED, u->userid);
    return 0;
}

static int op_move(mut_ctx *m, json_object *op)
{
    int depts[SIM_MAX_USER_DEPTS], ndept = 1, err;
    json_object *darr;
    sim_user *u = op_user(m, op, op == NULL, &err);
    if (!u)
        return err;
    int idx = (int)(u - m->c->users);
    if (op && json_object_object_get_ex(op, "department", &darr)) {
        if ((err = json_depts(m, darr, depts, &ndept)))
            return err;
    } else {
        depts[0] = pick_alive_dept(m, u->dept[0]);
        if (depts[0] < 0)
            return mut_fail(m, -ENOENT, "no other department to move to");
    }
    for (int i = 0; i < u->ndept; i++)
        dept_leave(m->c, u->dept[i], idx);
    u->ndept = ndept;
    for (int i = 0; i < ndept; i++) {
        u->dept[i] = depts[i];
        u->order[i] = (int)sim_rng_below(&m->d->mut_rng, 1000);
        u->leader[i] = 0;
        if (dept_join(m->c, depts[i], idx))
            return mut_fail(m, -ENOMEM, "out of memory");
    }
    mut_note_str(m, MUT_MOVED, u->userid);
    return 0;
}

static int op_add_dept(mut_ctx *m, json_object *op)
{
    sim_corp *c = m->c;
    json_object *pv;
    int parent = 1, err;
    const char *name = json_str_field(op, "name");
    if (json_object_object_get_ex(op, "parentid", &pv))
        parent = json_object_is_type(pv, json_type_int) ? json_object_get_int(pv) : -1;
    if (!dept_alive(c, parent))
        return mut_fail(m, -ENOENT, "unknown parent department %d", parent);
    if ((err = check_name(m, name)))
        return err;
    sim_dept *nd = realloc(c->depts, ((size_t)c->max_dept + 2) * sizeof(*nd));
    if (!nd)
        return mut_fail(m, -ENOMEM, "out of memory");
    c->depts = nd;
    int id = ++c->max_dept;
    sim_dept *dp = &c->depts[id];
    memset(dp, 0, sizeof(*dp));
    dp->id = id;
    dp->parentid = parent;
    dp->alive = 1;
    dp->order = (int)sim_rng_below(&m->d->mut_rng, 100000000);
    if (name)
        snprintf(dp->name, sizeof(dp->name), "%s", name);
    else
        snprintf(dp->name, sizeof(dp->name), "%s %d",
                 dept_names[sim_rng_below(&m->d->mut_rng, NELEM(dept_names))], id);
    dept_list_stale(c);
    mut_note_int(m, MUT_DADDED, id);
    return 0;
}

static int op_dept_id(mut_ctx *m, json_object *op, int *id)
{
    json_object *v;
    if (!json_object_object_get_ex(op, "id", &v) || !json_object_is_type(v, json_type_int))
        return mut_fail(m, -EINVAL, "id missing");
    *id = json_object_get_int(v);
    if (!dept_alive(m->c, *id))
        return mut_fail(m, -ENOENT, "unknown department %d", *id);
    return 0;
}

static int op_rename_dept(mut_ctx *m, json_object *op)
{
    int id = 0, err;
    const char *name = json_str_field(op, "name");
    if ((err = op_dept_id(m, op, &id)))
        return err;
    if (!name)
        return mut_fail(m, -EINVAL, "name missing");
    if ((err = check_name(m, name)))
        return err;
    snprintf(m->c->depts[id].name, sizeof(m->c->depts[id].name), "%s", name);
    dept_list_stale(m->c);
    mut_note_int(m, MUT_DRENAMED, id);
    return 0;
}

static int op_remove_dept(mut_ctx *m, json_object *op)
{
    sim_corp *c = m->c;
    int id = 0, err;
    if ((err = op_dept_id(m, op, &id)))
        return err;
    if (id == 1)
        return mut_fail(m, -EINVAL, "the root department cannot be removed");
    if (c->depts[id].nmembers)
        return mut_fail(m, -EEXIST, "department %d still has members", id);
    for (int k = id + 1; k <= c->max_dept; k++)
        if (c->depts[k].alive && c->depts[k].parentid == id)
            return mut_fail(m, -EEXIST, "department %d still has sub-departments", id);
    c->depts[id].alive = 0;
    dept_stale(c, id);
    dept_list_stale(c);
    mut_note_int(m, MUT_DREMOVED, id);
    return 0;
}

static int apply_op(mut_ctx *m, json_object *op)
{
    static const struct {
        const char *name;
        int (*fn)(mut_ctx *, json_object *);
    } ops[] = {{"add", op_add},
               {"remove", op_remove},
               {"rename", op_rename},
               {"move", op_move},
               {"add_dept", op_add_dept},
               {"rename_dept", op_rename_dept},
               {"remove_dept", op_remove_dept}};
    const char *name;
    if (!json_object_is_type(op, json_type_object))
        return mut_fail(m, -EINVAL, "an op must be an object");
    name = json_str_field(op, "op");
    for (size_t i = 0; name && i < NELEM(ops); i++)
        if (strcmp(name, ops[i].name) == 0)
            return ops[i].fn(m, op);
    return mut_fail(m, -EINVAL,
                    "op must be one of add, remove, rename, move, add_dept, "
                    "rename_dept, remove_dept");
}

/* "random": {"add":n,"remove":n,"rename":n,"move":n}, applied in that order. */
static int apply_random(mut_ctx *m, json_object *r)
{
    static const char *const kinds[] = {"add", "remove", "rename", "move"};
    int (*const fns[])(mut_ctx *, json_object *) = {op_add, op_remove, op_rename, op_move};
    if (!json_object_is_type(r, json_type_object))
        return mut_fail(m, -EINVAL, "random must be an object");
    for (size_t k = 0; k < NELEM(kinds); k++) {
        json_object *v;
        if (!json_object_object_get_ex(r, kinds[k], &v))
            continue;
        int n = json_object_is_type(v, json_type_int) ? json_object_get_int(v) : -1;
        if (n < 0 || n > 1000000)
            return mut_fail(m, -EINVAL, "random.%s must be an integer 0..1000000", kinds[k]);
        for (int i = 0; i < n; i++) {
            int err = fns[k](m, NULL);
            if (err)
                return err;
        }
    }
    return 0;
}

static int mut_answer(mut_ctx *m, buf *out)
{
    sim_corp *c = m->c;
    size_t nusers = 0;
    buf_reset(out);
    for (size_t i = 0; i < c->nusers; i++)
        nusers += c->users[i].alive != 0;
    buf_printf(out, "{\"errcode\":0,\"errmsg\":\"ok\",\"corp_id\":\"%s\"", c->corp_id);
    for (int k = 0; k < MUT_N; k++)
        buf_printf(out, ",\"%s\":[%s]", mut_keys[k], m->lists[k].data ? m->lists[k].data : "");
    buf_printf(out, ",\"users_total\":%zu}", nusers);
    return out->oom ? -ENOMEM : 0;
}

int sim_dir_mutate(sim_dir *d, const char *json, size_t len, buf *out, char *err, size_t errlen)
{
    mut_ctx m = {.d = d, .err = err, .errlen = errlen, .where = "body"};
    json_tokener *tok = json_tokener_new();
    json_object *root = NULL, *v;
    int rc = -ENOMEM;
    char where[32];
    if (errlen)
        err[0] = '\0';
    for (int k = 0; k < MUT_N; k++)
        buf_init(&m.lists[k]);
    if (!tok)
        goto out;
    root = json_tokener_parse_ex(tok, json, (int)len);
    if (!root || json_tokener_get_error(tok) != json_tokener_success ||
        !json_object_is_type(root, json_type_object)) {
        rc = mut_fail(&m, -EINVAL, "a JSON object is required");
        goto out;
    }
    const char *corp_id = json_str_field(root, "corp_id");
    m.c = corp_id ? sim_dir_corp(d, corp_id) : d->ncorps == 1 ? &d->corps[0] : NULL;
    if (!m.c) {
        rc = mut_fail(&m, corp_id ? -ENOENT : -EINVAL, "%s",
                      corp_id ? "unknown corp_id" : "corp_id missing");
        goto out;
    }
    rc = 0;
    if (json_object_object_get_ex(root, "ops", &v)) {
        if (!json_object_is_type(v, json_type_array)) {
            rc = mut_fail(&m, -EINVAL, "ops must be an array");
            goto out;
        }
        for (size_t i = 0; i < json_object_array_length(v) && !rc; i++) {
            snprintf(where, sizeof(where), "ops[%zu]", i);
            m.where = where;
            rc = apply_op(&m, json_object_array_get_idx(v, i));
        }
    }
    if (!rc && json_object_object_get_ex(root, "random", &v)) {
        m.where = "random";
        rc = apply_random(&m, v);
    }
    if (!rc)
        rc = mut_answer(&m, out);
out:
    for (int k = 0; k < MUT_N; k++)
        buf_free(&m.lists[k]);
    json_object_put(root);
    if (tok)
        json_tokener_free(tok);
    if (rc == -ENOMEM && err[0] == '\0')
        snprintf(err, errlen, "out of memory");
    return rc;
}
