/* Unit tests for the simulator's core logic: the arrival-time windows (per enterprise
 * and per source IP), the token table of both credentials, the generated directory
 * and its mutations, user/list_id paging, the visible range, the fields a new app is
 * not given, policy settings, faults and stats. No I/O.
 *
 * The simulator is a program, not a library, so its core files are compiled in
 * here directly (sim_routes.c and sim_main.c, which need a server, are not). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <json-c/json.h>

#include "tests/sim/sim_directory.c"
#include "tests/sim/sim_faults.c"
#include "tests/sim/sim_limits.c"
#include "tests/sim/sim_listid.c"
#include "tests/sim/sim_policy.c"
#include "tests/sim/sim_stats.c"
#include "tests/sim/sim_util.c"

#define MS 1000ULL
#define SEC 1000000ULL

/* ---- window ---- */

static int arrive(sim_window *w, uint64_t t, int count_rejected)
{
    return sim_window_arrive(w, t, 10, count_rejected, NULL);
}

static void test_window_burst_of_11(void **state)
{
    (void)state;
    sim_window w;
    int refused = 0;
    sim_window_init(&w);
    for (int i = 0; i < 11; i++)
        refused += !arrive(&w, 5 * SEC + (uint64_t)i * MS, 1);
    assert_int_equal(refused, 1);
    sim_window_free(&w);
}

static void test_window_spread_over_1100ms(void **state)
{
    (void)state;
    sim_window w;
    sim_window_init(&w);
    for (int i = 0; i < 10; i++)
        assert_true(arrive(&w, 5 * SEC + (uint64_t)i * 110 * MS, 1));
    sim_window_free(&w);
}

static void test_window_exact_pacing(void **state)
{
    (void)state;
    sim_window w;
    int refused = 0;
    sim_window_init(&w);
    /* Exactly 100 ms apart for 10 s: arrivals 1 s apart are in different windows. */
    for (int i = 0; i < 100; i++)
        refused += !arrive(&w, SEC + (uint64_t)i * 100 * MS, 1);
    assert_int_equal(refused, 0);
    /* 1 us too fast: the 11th arrival lands inside the first one's second. */
    sim_window_clear(&w);
    for (int i = 0; i < 11; i++)
        refused += !arrive(&w, 100 * SEC + (uint64_t)i * (100 * MS - 1), 1);
    assert_int_equal(refused, 1);
    sim_window_free(&w);
}

static void test_window_counting_rejected(void **state)
{
    (void)state;
    sim_window a, b;
    uint32_t n = 0;
    sim_window_init(&a);
    sim_window_init(&b);
    /* 10 admitted at 0..90 ms, then 5 refused at 500..540 ms. */
    for (int i = 0; i < 10; i++) {
        assert_true(arrive(&a, SEC + (uint64_t)i * 10 * MS, 1));
        assert_true(arrive(&b, SEC + (uint64_t)i * 10 * MS, 0));
    }
    for (int i = 0; i < 5; i++) {
        assert_false(arrive(&a, SEC + 500 * MS + (uint64_t)i * 10 * MS, 1));
        assert_false(arrive(&b, SEC + 500 * MS + (uint64_t)i * 10 * MS, 0));
    }
    /* Just after the first arrival left: 9 admitted + 5 refused remain. */
    uint64_t t = 2 * SEC + 1;
    assert_false(sim_window_arrive(&a, t, 10, 1, &n)); /* refused ones count */
    assert_int_equal(n, 15);
    assert_true(sim_window_arrive(&b, t, 10, 0, &n)); /* only admitted ones count */
    assert_int_equal(n, 15);
    sim_window_free(&a);
    sim_window_free(&b);
}

static void test_window_grows_and_wraps(void **state)
{
    (void)state;
    sim_window w;
    uint32_t n = 0, maxn = 0;
    sim_window_init(&w);
    /* 1000 per second for 3 s: the ring grows past its first size and wraps. */
    for (int i = 0; i < 3000; i++) {
        sim_window_arrive(&w, SEC + (uint64_t)i * MS, UINT32_MAX, 1, &n);
        if (n > maxn)
            maxn = n;
    }
    assert_int_equal(maxn, 1000);
    assert_int_equal(n, 1000);
    sim_window_free(&w);
}

/* ---- map ---- */

static void test_map(void **state)
{
    (void)state;
    sim_map m;
    char k[32];
    int64_t v;
    sim_map_init(&m);
    assert_int_equal(sim_map_get(&m, "x", &v), 0);
    for (int i = 0; i < 5000; i++) {
        snprintf(k, sizeof(k), "key%d", i);
        assert_int_equal(sim_map_put(&m, k, i), 0);
    }
    for (int i = 0; i < 5000; i += 2) {
        snprintf(k, sizeof(k), "key%d", i);
        assert_int_equal(sim_map_del(&m, k), 1);
        assert_int_equal(sim_map_del(&m, k), 0);
    }
    assert_int_equal(m.len, 2500);
    for (int i = 0; i < 5000; i++) {
        snprintf(k, sizeof(k), "key%d", i);
        int found = sim_map_get(&m, k, &v);
        assert_int_equal(found, i % 2);
        if (found)
            assert_int_equal(v, i);
    }
    assert_int_equal(sim_map_put(&m, "key1", 77), 0);
    assert_true(sim_map_get(&m, "key1", &v));
    assert_int_equal(v, 77);
    sim_map_free(&m);
}

/* ---- tokens and limits ---- */

static void test_tokens(void **state)
{
    (void)state;
    sim_limits l;
    const char *t1, *t2;
    uint32_t exp;
    int fresh, corp = -1;
    char saved[64];
    assert_int_equal(sim_limits_init(&l, 2, 7), 0);
    l.token_ttl_s = 10;
    assert_int_equal(sim_limits_token(&l, 0, SEC, &t1, &exp, &fresh), 0);
    assert_true(fresh);
    assert_int_equal(exp, 10);
    snprintf(saved, sizeof(saved), "%s", t1);
    /* The same token while valid, with the seconds left. */
    assert_int_equal(sim_limits_token(&l, 0, 4 * SEC + 1, &t2, &exp, &fresh), 0);
    assert_false(fresh);
    assert_string_equal(t2, saved);
    assert_int_equal(exp, 7);
    assert_int_equal(sim_limits_check_token(&l, saved, 2 * SEC, &corp), SIM_TOK_OK);
    assert_int_equal(corp, 0);
    assert_int_equal(sim_limits_check_token(&l, saved, 11 * SEC, &corp), SIM_TOK_EXPIRED);
    assert_int_equal(sim_limits_check_token(&l, "nope", 2 * SEC, &corp), SIM_TOK_UNKNOWN);
    /* After expiry a new token; the old one still answers expired. */
    assert_int_equal(sim_limits_token(&l, 0, 12 * SEC, &t2, &exp, &fresh), 0);
    assert_true(fresh);
    assert_string_not_equal(t2, saved);
    /* Forced expiry of one enterprise, then forgetting. */
    assert_int_equal(sim_limits_token(&l, 1, 12 * SEC, &t1, &exp, &fresh), 0);
    assert_int_equal(sim_limits_expire_tokens(&l, 0, 13 * SEC, 0), 1);
    assert_int_equal(sim_limits_check_token(&l, t2, 13 * SEC, &corp), SIM_TOK_EXPIRED);
    assert_int_equal(sim_limits_check_token(&l, t1, 13 * SEC, &corp), SIM_TOK_OK);
    assert_int_equal(corp, 1);
    sim_limits_expire_tokens(&l, -1, 13 * SEC, 1);
    assert_int_equal(sim_limits_check_token(&l, t1, 13 * SEC, &corp), SIM_TOK_UNKNOWN);
    assert_int_equal(sim_limits_check_token(&l, saved, 13 * SEC, &corp), SIM_TOK_UNKNOWN);
    sim_limits_free(&l);
}

static void test_limits_ban(void **state)
{
    (void)state;
    sim_limits l;
    assert_int_equal(sim_limits_init(&l, 1, 1), 0);
    l.rate = 2;
    l.ban_ms = 5000;
    assert_true(sim_limits_arrive(&l, 0, SEC));
    assert_true(sim_limits_arrive(&l, 0, SEC + 1));
    assert_false(sim_limits_arrive(&l, 0, SEC + 2));
    /* Well outside the window, but banned. */
    assert_false(sim_limits_arrive(&l, 0, 4 * SEC));
    assert_true(sim_limits_arrive(&l, 0, 7 * SEC));
    sim_limits_free(&l);
}

/* ---- directory ---- */

static char *org_json(sim_dir *d)
{
    buf b;
    buf_init(&b);
    assert_int_equal(sim_dir_org_json(d, NULL, &b), 0);
    return buf_detach(&b, NULL);
}

static void test_directory_deterministic(void **state)
{
    (void)state;
    sim_dir a, b, c;
    assert_int_equal(sim_dir_generate(&a, 3, 20, 5, 42), 0);
    assert_int_equal(sim_dir_generate(&b, 3, 20, 5, 42), 0);
    assert_int_equal(sim_dir_generate(&c, 3, 20, 5, 43), 0);
    char *ja = org_json(&a), *jb = org_json(&b), *jc = org_json(&c);
    assert_string_equal(ja, jb);
    assert_string_not_equal(ja, jc);
    free(ja);
    free(jb);
    free(jc);
    sim_dir_free(&a);
    sim_dir_free(&b);
    sim_dir_free(&c);
}

static void test_directory_shape(void **state)
{
    (void)state;
    sim_dir d;
    sim_map mobiles;
    int multi = 0;
    sim_map_init(&mobiles);
    assert_int_equal(sim_dir_generate(&d, 4, 30, 6, 9), 0);
    assert_non_null(sim_dir_corp(&d, "wwsim0004"));
    assert_null(sim_dir_corp(&d, "wwsim0005"));
    assert_null(sim_dir_corp(&d, "wwsim04"));
    assert_null(sim_dir_corp(&d, "wwsim0001x"));
    for (int i = 0; i < d.ncorps; i++) {
        sim_corp *c = &d.corps[i];
        char want[32];
        snprintf(want, sizeof(want), "secret-wwsim%04d", i + 1);
        assert_string_equal(c->secret, want);
        assert_int_equal(c->nusers, 30 * 6);
        assert_int_equal(c->depts[1].parentid, 0);
        for (int k = 2; k <= c->max_dept; k++) {
            assert_true(c->depts[k].parentid >= 1);
            assert_true(c->depts[k].parentid < k);
        }
        for (size_t u = 0; u < c->nusers; u++) {
            char mob[24];
            snprintf(mob, sizeof(mob), "%llu", (unsigned long long)c->users[u].mobile);
            assert_int_equal(strlen(mob), 11);
            assert_true(mob[0] == '1');
            assert_int_equal(sim_map_get(&mobiles, mob, NULL), 0); /* unique everywhere */
            assert_int_equal(sim_map_put(&mobiles, mob, 1), 0);
            assert_ptr_equal(sim_corp_find_mobile(c, mob), &c->users[u]);
            multi += c->users[u].ndept > 1;
        }
        /* Every member listed by each of its departments, and only there. */
        size_t listed = 0;
        for (int k = 1; k <= c->max_dept; k++) {
            const char *body = NULL;
            size_t len = 0;
            assert_int_equal(sim_corp_user_list(c, k, &body, &len), 0);
            json_object *o = json_tokener_parse(body), *ul, *e, *v;
            assert_non_null(o);
            assert_true(json_object_object_get_ex(o, "userlist", &ul));
            listed += json_object_array_length(ul);
            for (size_t j = 0; j < json_object_array_length(ul); j++) {
                e = json_object_array_get_idx(ul, j);
                assert_true(json_object_object_get_ex(e, "userid", &v));
                sim_user *u = sim_corp_find_user(c, json_object_get_string(v));
                assert_non_null(u);
                int has = 0;
                for (int x = 0; x < u->ndept; x++)
                    has |= u->dept[x] == k;
                assert_true(has);
            }
            json_object_put(o);
        }
        size_t memberships = 0;
        for (size_t u = 0; u < c->nusers; u++)
            memberships += (size_t)c->users[u].ndept;
        assert_int_equal(listed, memberships);
    }
    assert_true(multi > 0);
    sim_map_free(&mobiles);
    sim_dir_free(&d);
}

static void test_directory_dept_subtree(void **state)
{
    (void)state;
    sim_dir d;
    buf scratch;
    const char *body = NULL;
    size_t len = 0;
    buf_init(&scratch);
    assert_int_equal(sim_dir_generate(&d, 1, 50, 1, 3), 0);
    sim_corp *c = &d.corps[0];
    assert_int_equal(sim_corp_dept_list(c, 0, &scratch, &body, &len), 0);
    json_object *all = json_tokener_parse(body), *arr;
    assert_true(json_object_object_get_ex(all, "department", &arr));
    assert_int_equal(json_object_array_length(arr), 50);
    json_object_put(all);
    /* The subtree of 2: 2 and every department whose parent chain reaches 2. */
    int expect = 0;
    for (int k = 2; k <= 50; k++) {
        int p = k;
        while (p > 2)
            p = c->depts[p].parentid;
        expect += p == 2;
    }
    assert_int_equal(sim_corp_dept_list(c, 2, &scratch, &body, &len), 0);
    json_object *sub = json_tokener_parse(body);
    assert_true(json_object_object_get_ex(sub, "department", &arr));
    assert_int_equal((int)json_object_array_length(arr), expect);
    json_object_put(sub);
    assert_int_equal(sim_corp_dept_list(c, 51, &scratch, &body, &len), -ENOENT);
    assert_int_equal(sim_corp_user_list(c, 51, &body, &len), -ENOENT);
    buf_free(&scratch);
    sim_dir_free(&d);
}

static int mutate(sim_dir *d, const char *json, buf *out, char *err)
{
    return sim_dir_mutate(d, json, strlen(json), out, err, 256);
}

static void test_mutations(void **state)
{
    (void)state;
    sim_dir d;
    buf out;
    char err[256];
    const char *body = NULL;
    size_t len = 0;
    buf_init(&out);
    assert_int_equal(sim_dir_generate(&d, 2, 5, 4, 11), 0);
    sim_corp *c = &d.corps[1];
    /* Prime the pre-rendered answers, then check that each op makes them stale. */
    assert_int_equal(sim_corp_user_list(c, 3, &body, &len), 0);
    assert_non_null(c->depts[3].user_list);
    assert_int_equal(mutate(&d,
                            "{\"corp_id\":\"wwsim0002\",\"ops\":["
                            "{\"op\":\"add\",\"userid\":\"new.one\",\"name\":\"新人\","
                            "\"mobile\":\"19900000001\",\"department\":[3,4]}]}",
                            &out, err),
                     0);
    assert_null(c->depts[3].user_list);
    assert_non_null(strstr(out.data, "\"added\":[\"new.one\"]"));
    sim_user *u = sim_corp_find_user(c, "new.one");
    assert_non_null(u);
    assert_int_equal(u->ndept, 2);
    assert_ptr_equal(sim_corp_find_mobile(c, "19900000001"), u);
    assert_int_equal(sim_corp_user_list(c, 4, &body, &len), 0);
    assert_non_null(strstr(body, "\"userid\":\"new.one\""));

    assert_int_equal(mutate(&d,
                            "{\"corp_id\":\"wwsim0002\",\"ops\":["
                            "{\"op\":\"rename\",\"userid\":\"new.one\",\"name\":\"改名\"},"
                            "{\"op\":\"move\",\"userid\":\"new.one\",\"department\":[5]}]}",
                            &out, err),
                     0);
    assert_string_equal(u->name, "改名");
    assert_int_equal(u->ndept, 1);
    assert_int_equal(u->dept[0], 5);
    assert_int_equal(sim_corp_user_list(c, 4, &body, &len), 0);
    assert_null(strstr(body, "new.one"));
    assert_int_equal(sim_corp_user_list(c, 5, &body, &len), 0);
    assert_non_null(strstr(body, "改名"));

    assert_int_equal(
        mutate(&d,
               "{\"corp_id\":\"wwsim0002\",\"ops\":[{\"op\":\"remove\",\"userid\":\"new.one\"}]}",
               &out, err),
        0);
    assert_null(sim_corp_find_user(c, "new.one"));
    assert_null(sim_corp_find_mobile(c, "19900000001"));
    assert_int_equal(sim_corp_user_list(c, 5, &body, &len), 0);
    assert_null(strstr(body, "new.one"));

    /* Errors name the op; earlier ops stay applied. */
    assert_int_equal(mutate(&d,
                            "{\"corp_id\":\"wwsim0002\",\"ops\":[{\"op\":\"rename\",\"userid\":"
                            "\"u000001\",\"name\":\"x\"},{\"op\":\"remove\",\"userid\":\"zz\"}]}",
                            &out, err),
                     -ENOENT);
    assert_non_null(strstr(err, "ops[1]"));
    assert_string_equal(c->users[0].name, "x");
    assert_int_equal(
        mutate(&d, "{\"corp_id\":\"wwsim0002\",\"ops\":[{\"op\":\"explode\"}]}", &out, err),
        -EINVAL);
    assert_int_equal(mutate(&d, "{\"ops\":[]}", &out, err), -EINVAL); /* two corps */
    assert_int_equal(mutate(&d, "{\"corp_id\":\"wwsim0009\"}", &out, err), -ENOENT);
    assert_int_equal(mutate(&d, "not json", &out, err), -EINVAL);
    assert_int_equal(
        mutate(&d, "{\"corp_id\":\"wwsim0002\",\"ops\":[{\"op\":\"remove_dept\",\"id\":2}]}", &out,
               err),
        -EEXIST);

    /* Departments: add, rename, remove an empty leaf. */
    assert_int_equal(mutate(&d,
                            "{\"corp_id\":\"wwsim0002\",\"ops\":["
                            "{\"op\":\"add_dept\",\"parentid\":2,\"name\":\"新部门\"},"
                            "{\"op\":\"rename_dept\",\"id\":6,\"name\":\"新部门2\"}]}",
                            &out, err),
                     0);
    assert_int_equal(c->max_dept, 6);
    assert_string_equal(c->depts[6].name, "新部门2");
    assert_int_equal(
        mutate(&d, "{\"corp_id\":\"wwsim0002\",\"ops\":[{\"op\":\"remove_dept\",\"id\":6}]}", &out,
               err),
        0);
    assert_int_equal(sim_corp_user_list(c, 6, &body, &len), -ENOENT);
    buf_free(&out);
    sim_dir_free(&d);
}

static char *answer(sim_corp *c, int dept)
{
    const char *body = NULL;
    size_t len = 0;
    if (dept)
        assert_int_equal(sim_corp_user_list(c, dept, &body, &len), 0);
    else
        assert_int_equal(sim_corp_dept_list(c, 0, NULL, &body, &len), 0);
    assert_int_equal(strlen(body), len);
    char *copy = strdup(body);
    assert_non_null(copy);
    return copy;
}

static void test_answer_cache(void **state)
{
    (void)state;
    enum { D = 12 };
    sim_dir d;
    buf out;
    char err[256], *want[D + 1], *got;
    size_t total = 0;
    buf_init(&out);
    assert_int_equal(sim_dir_generate(&d, 2, D, 6, 21), 0);
    sim_corp *c = &d.corps[0];

    /* The reference: every answer rendered afresh, nothing kept. */
    d.cache.budget = 0;
    for (int k = 0; k <= D; k++) {
        want[k] = answer(c, k);
        total += strlen(want[k]);
    }
    assert_null(c->depts[1].user_list);
    assert_null(c->dept_list);
    assert_int_equal(d.cache.bytes, 0);

    /* A budget for about a third of them: the same bytes every time, the budget held,
     * the least recently used dropped first. */
    d.cache.budget = total / 3;
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i <= D; i++) {
            int k = round == 1 ? D - i : i;
            got = answer(c, k);
            assert_string_equal(got, want[k]);
            free(got);
            assert_true(d.cache.bytes <= d.cache.budget);
        }
    }
    free(answer(c, 1));
    free(answer(c, 2));
    free(answer(c, 1)); /* 1 is now the most recent, 2 the one before */
    for (int k = 3; c->depts[2].user_list; k++)
        free(answer(c, k));
    assert_non_null(c->depts[1].user_list);

    /* Everything kept, then mutations drop exactly what they change. */
    d.cache.budget = SIM_CACHE_DEFAULT_BYTES;
    for (int k = 0; k <= D; k++)
        free(answer(c, k));
    sim_user *u = sim_corp_find_user(c, "u000001"); /* the leader of department 1 */
    assert_non_null(u);
    assert_int_equal(u->ndept, 1);
    assert_int_equal(u->dept[0], 1);
    assert_non_null(strstr(want[0], "\"department_leader\":[\"u000001\"]"));
    assert_int_equal(
        mutate(&d,
               "{\"corp_id\":\"wwsim0001\",\"ops\":[{\"op\":\"rename\",\"userid\":\"u000001\","
               "\"name\":\"换了名字\"}]}",
               &out, err),
        0);
    got = answer(c, 1);
    assert_non_null(strstr(got, "\"name\":\"换了名字\""));
    free(got);
    for (int k = 2; k <= D; k++) {
        int member = 0;
        for (size_t i = 0; i < c->depts[k].nmembers; i++)
            member |= c->depts[k].members[i] == 0;
        if (!member)
            assert_non_null(c->depts[k].user_list); /* untouched: still kept */
    }
    /* Moving the leader away changes both departments' user/list and the
     * department_leader of department/list. */
    assert_int_equal(mutate(&d,
                            "{\"corp_id\":\"wwsim0001\",\"ops\":[{\"op\":\"move\",\"userid\":"
                            "\"u000001\",\"department\":[2]}]}",
                            &out, err),
                     0);
    got = answer(c, 1);
    assert_null(strstr(got, "u000001"));
    free(got);
    got = answer(c, 2);
    assert_non_null(strstr(got, "\"userid\":\"u000001\""));
    free(got);
    got = answer(c, 0);
    assert_null(strstr(got, "\"department_leader\":[\"u000001\"]"));
    free(got);
    /* Removing a leader (u000007 leads department 2) changes department/list too. */
    got = answer(c, 0);
    assert_non_null(strstr(got, "\"department_leader\":[\"u000007\"]"));
    free(got);
    assert_int_equal(
        mutate(&d,
               "{\"corp_id\":\"wwsim0001\",\"ops\":[{\"op\":\"remove\",\"userid\":\"u000007\"}]}",
               &out, err),
        0);
    got = answer(c, 0);
    assert_null(strstr(got, "u000007"));
    free(got);
    assert_int_equal(mutate(&d,
                            "{\"corp_id\":\"wwsim0001\",\"ops\":[{\"op\":\"rename_dept\",\"id\":"
                            "3,\"name\":\"改名部\"}]}",
                            &out, err),
                     0);
    got = answer(c, 0);
    assert_non_null(strstr(got, "\"id\":3,\"name\":\"改名部\""));
    free(got);
    /* The other enterprise shares the cache but none of its answers. */
    got = answer(&d.corps[1], 1);
    assert_string_not_equal(got, want[1]);
    free(got);

    for (int k = 0; k <= D; k++)
        free(want[k]);
    buf_free(&out);
    sim_dir_free(&d);
}

static void test_random_mutations_deterministic(void **state)
{
    (void)state;
    sim_dir a, b;
    buf oa, ob;
    char err[256];
    const char *req = "{\"corp_id\":\"wwsim0001\",\"random\":{\"add\":3,\"remove\":2,"
                      "\"rename\":2,\"move\":2}}";
    buf_init(&oa);
    buf_init(&ob);
    assert_int_equal(sim_dir_generate(&a, 1, 8, 5, 5), 0);
    assert_int_equal(sim_dir_generate(&b, 1, 8, 5, 5), 0);
    assert_int_equal(mutate(&a, req, &oa, err), 0);
    assert_int_equal(mutate(&b, req, &ob, err), 0);
    assert_string_equal(oa.data, ob.data);
    assert_non_null(strstr(oa.data, "\"users_total\":41"));
    char *ja = org_json(&a), *jb = org_json(&b);
    assert_string_equal(ja, jb);
    free(ja);
    free(jb);
    buf_free(&oa);
    buf_free(&ob);
    sim_dir_free(&a);
    sim_dir_free(&b);
}

/* ---- faults ---- */

static void test_faults(void **state)
{
    (void)state;
    sim_faults f;
    uint64_t rng = 1;
    char err[256];
    int counts[SIM_F_COUNT] = {0};
    sim_faults_init(&f);
    for (int i = 0; i < 100; i++)
        assert_int_equal(sim_faults_pick(&f, SIM_P_USER_LIST, &rng), SIM_F_NONE);
    const char *j = "{\"busy_next\":2,\"hang_next\":1,\"http500\":0.25,\"malformed\":0.25,"
                    "\"paths\":[\"user/list\"]}";
    assert_int_equal(sim_faults_apply_json(&f, j, strlen(j), err, sizeof(err)), 0);
    assert_int_equal(sim_faults_pick(&f, SIM_P_GETTOKEN, &rng), SIM_F_NONE); /* not a fault path */
    assert_int_equal(sim_faults_pick(&f, SIM_P_USER_LIST, &rng), SIM_F_HANG);
    assert_int_equal(sim_faults_pick(&f, SIM_P_USER_LIST, &rng), SIM_F_BUSY);
    assert_int_equal(sim_faults_pick(&f, SIM_P_USER_LIST, &rng), SIM_F_BUSY);
    for (int i = 0; i < 10000; i++)
        counts[sim_faults_pick(&f, SIM_P_USER_LIST, &rng)]++;
    assert_in_range(counts[SIM_F_HTTP500], 2200, 2800);
    assert_in_range(counts[SIM_F_MALFORMED], 2200, 2800);
    assert_in_range(counts[SIM_F_NONE], 4700, 5300);
    assert_int_equal(counts[SIM_F_BUSY] + counts[SIM_F_HANG], 0);

    /* All or nothing: a bad key leaves the settings as they were. */
    const char *bad = "{\"latency_ms\":5,\"busy\":1.5}";
    assert_int_equal(sim_faults_apply_json(&f, bad, strlen(bad), err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "busy"));
    assert_int_equal(f.latency_ms, 0);
    const char *typo = "{\"latency\":5}";
    assert_int_equal(sim_faults_apply_json(&f, typo, strlen(typo), err, sizeof(err)), -EINVAL);
    const char *reset = "{\"reset\":true,\"latency_ms\":7,\"jitter_ms\":3}";
    assert_int_equal(sim_faults_apply_json(&f, reset, strlen(reset), err, sizeof(err)), 0);
    assert_true(f.http500 == 0 && f.malformed == 0);
    assert_int_equal(f.paths, (1u << SIM_P_COUNT) - 1);
    for (int i = 0; i < 200; i++) {
        uint32_t dl = sim_faults_delay_ms(&f, &rng);
        assert_in_range(dl, 7, 10);
    }

    assert_int_equal(sim_faults_apply_flag(&f, "fail-dept", "3", err, sizeof(err)), 1);
    assert_int_equal(f.fail_dept, 3);
    assert_int_equal(
        sim_faults_apply_flag(&f, "fault-paths", "gettoken,user/get", err, sizeof(err)), 1);
    assert_int_equal(f.paths, (1u << SIM_P_GETTOKEN) | (1u << SIM_P_USER_GET));
    assert_int_equal(sim_faults_apply_flag(&f, "hang", "2", err, sizeof(err)), -EINVAL);
    assert_int_equal(sim_faults_apply_flag(&f, "fault-paths", "user/nope", err, sizeof(err)),
                     -EINVAL);
    assert_int_equal(sim_faults_apply_flag(&f, "rate", "5", err, sizeof(err)), 0);
}

/* ---- stats ---- */

static void test_stats(void **state)
{
    (void)state;
    sim_stats st;
    sim_dir d;
    int ports[2] = {1001, 1002};
    buf b;
    jw w;
    assert_int_equal(sim_dir_generate(&d, 2, 3, 1, 1), 0);
    assert_int_equal(sim_stats_init(&st, 2, ports, 2, SEC), 0);
    assert_int_equal(sim_stats_port_index(&st, 1002), 1);
    assert_int_equal(sim_stats_port_index(&st, 1003), -1);
    sim_hit h = {.port = 0, .corp = 1, .path = SIM_P_USER_LIST, .dept = 2, .errcode = 0};
    for (int i = 0; i < 3; i++)
        sim_stats_record(&st, &h, 2 * SEC + (uint64_t)i * MS);
    h.port = 1;
    h.errcode = 45009;
    h.violation = 1;
    sim_stats_record(&st, &h, 2 * SEC + 500 * MS);
    sim_hit g = {.port = 1, .corp = -1, .path = SIM_P_USER_GET, .errcode = 40014};
    sim_stats_record(&st, &g, 4 * SEC);
    sim_stats_inflight(&st, 0, 1, +1);
    sim_stats_inflight(&st, 0, 1, +1);
    sim_stats_inflight(&st, 0, 1, -1);

    assert_int_equal(st.total.requests, 5);
    assert_int_equal(st.corp[1].requests, 4);
    assert_int_equal(st.corp[1].max_1s, 4);
    assert_int_equal(st.corp[1].violations, 1);
    assert_int_equal(st.corp[0].requests, 0);
    assert_int_equal(st.port[0].requests, 3);
    assert_int_equal(st.port[1].requests, 2);
    assert_int_equal(st.port_corp[1 * 2 + 1].requests, 1);
    assert_int_equal(st.corp[1].ul_calls[2], 4);
    assert_int_equal(st.corp[1].ul_ok[2], 3);
    assert_int_equal(st.corp[1].max_inflight, 2);
    uint64_t calls_gt1, ok_gt1;
    sim_counters_refetches(&st.corp[1], &calls_gt1, &ok_gt1);
    assert_int_equal(calls_gt1, 1);
    assert_int_equal(ok_gt1, 1);

    buf_init(&b);
    jw_init(&w, &b);
    jw_obj_begin(&w);
    assert_int_equal(sim_stats_json(&st, &d, "wwsim0002", &w), 0);
    jw_obj_end(&w);
    json_object *o = json_tokener_parse(b.data), *corps, *c0, *v;
    assert_non_null(o);
    assert_true(json_object_object_get_ex(o, "corps", &corps));
    assert_int_equal(json_object_array_length(corps), 1);
    c0 = json_object_array_get_idx(corps, 0);
    assert_true(json_object_object_get_ex(c0, "max_1s", &v));
    assert_int_equal(json_object_get_int(v), 4);
    assert_true(json_object_object_get_ex(c0, "refetched_departments", &v));
    assert_int_equal(json_object_get_int(v), 1);
    assert_true(json_object_object_get_ex(c0, "first_request", &v));
    assert_true(json_object_is_type(v, json_type_string));
    assert_true(json_object_object_get_ex(c0, "first_request_ms", &v));
    assert_true(json_object_get_double(v) > 999.0 && json_object_get_double(v) < 1001.0);
    json_object_put(o);
    buf_reset(&b);
    assert_int_equal(sim_stats_json(&st, &d, "wwsim0003", &w), -ENOENT);

    sim_stats_reset(&st);
    assert_int_equal(st.total.requests, 0);
    assert_int_equal(st.corp[1].ul_calls[2], 0);
    assert_int_equal(st.corp[1].inflight, 1); /* still in flight */
    assert_int_equal(st.corp[1].max_inflight, 1);
    assert_int_equal(st.corp[1].first_us, 0);
    buf_free(&b);
    sim_stats_free(&st);
    sim_dir_free(&d);
}

/* ---- both credentials ---- */

static void test_tokens_per_credential(void **state)
{
    (void)state;
    sim_limits l;
    const char *t;
    uint32_t exp;
    int fresh, corp = -1;
    sim_cred cred = SIM_CRED_COUNT;
    char app[64], contact[64];
    assert_int_equal(sim_limits_init(&l, 2, 7), 0);
    assert_int_equal(sim_limits_cred_token(&l, 1, SIM_CRED_APP, SEC, &t, &exp, &fresh), 0);
    assert_true(fresh);
    snprintf(app, sizeof(app), "%s", t);
    assert_int_equal(sim_limits_cred_token(&l, 1, SIM_CRED_CONTACT, SEC, &t, &exp, &fresh), 0);
    assert_true(fresh); /* its own token, not the app's */
    snprintf(contact, sizeof(contact), "%s", t);
    assert_string_not_equal(app, contact);
    /* The same token again while valid, per credential. */
    assert_int_equal(sim_limits_cred_token(&l, 1, SIM_CRED_CONTACT, 2 * SEC, &t, &exp, &fresh), 0);
    assert_false(fresh);
    assert_string_equal(t, contact);
    assert_int_equal(sim_limits_token(&l, 1, 2 * SEC, &t, &exp, &fresh), 0);
    assert_false(fresh);
    assert_string_equal(t, app);
    assert_int_equal(sim_limits_check_cred_token(&l, contact, 2 * SEC, &corp, &cred), SIM_TOK_OK);
    assert_int_equal(corp, 1);
    assert_int_equal(cred, SIM_CRED_CONTACT);
    assert_int_equal(sim_limits_check_cred_token(&l, app, 2 * SEC, &corp, &cred), SIM_TOK_OK);
    assert_int_equal(cred, SIM_CRED_APP);
    /* Forced expiry touches both kinds; the next gettoken of each is new. */
    assert_int_equal(sim_limits_expire_tokens(&l, 1, 3 * SEC, 0), 2);
    assert_int_equal(sim_limits_check_cred_token(&l, contact, 3 * SEC, &corp, &cred),
                     SIM_TOK_EXPIRED);
    assert_int_equal(cred, SIM_CRED_CONTACT);
    assert_int_equal(sim_limits_cred_token(&l, 1, SIM_CRED_CONTACT, 3 * SEC, &t, &exp, &fresh), 0);
    assert_true(fresh);
    assert_string_not_equal(t, contact);
    sim_limits_free(&l);
}

/* ---- per-IP windows ---- */

static void test_ip_minute_window_edges(void **state)
{
    (void)state;
    sim_limits l;
    assert_int_equal(sim_limits_init(&l, 1, 1), 0);
    l.ip_per_min = 3;
    uint64_t t = 10 * SEC;
    for (int i = 0; i < 3; i++)
        assert_int_equal(sim_limits_ip_arrive(&l, "127.0.0.1", t + (uint64_t)i), SIM_IP_OK);
    assert_int_equal(sim_limits_ip_arrive(&l, "127.0.0.1", t + 3), SIM_IP_OVER_MIN);
    /* Another address has windows of its own; "" (unknown) is never limited. */
    assert_int_equal(sim_limits_ip_arrive(&l, "127.0.0.2", t + 4), SIM_IP_OK);
    for (int i = 0; i < 10; i++)
        assert_int_equal(sim_limits_ip_arrive(&l, "", t + 5), SIM_IP_OK);
    /* 1 us before t + 60 s everything is still in (now - 60 s, now]. */
    assert_int_equal(sim_limits_ip_arrive(&l, "127.0.0.1", t + 60 * SEC - 1), SIM_IP_OVER_MIN);
    /* Exactly 60 s after the first: it left; the refused ones at t+3 and t+60s-1 count
     * (count_rejected), so t+1, t+2, t+3, t+60s-1 make 4 >= 3: refused. */
    assert_int_equal(sim_limits_ip_arrive(&l, "127.0.0.1", t + 60 * SEC), SIM_IP_OVER_MIN);
    /* Once t+1..t+3 have left: t+60s-1 and t+60s (both refused) remain: admitted. */
    assert_int_equal(sim_limits_ip_arrive(&l, "127.0.0.1", t + 60 * SEC + 3), SIM_IP_OK);

    /* count_rejected 0: only admitted arrivals count. */
    sim_limits_free(&l);
    assert_int_equal(sim_limits_init(&l, 1, 1), 0);
    l.ip_per_min = 3;
    l.count_rejected = 0;
    for (int i = 0; i < 3; i++)
        assert_int_equal(sim_limits_ip_arrive(&l, "::1", t + (uint64_t)i), SIM_IP_OK);
    for (int i = 0; i < 5; i++)
        assert_int_equal(sim_limits_ip_arrive(&l, "::1", t + 30 * SEC), SIM_IP_OVER_MIN);
    assert_int_equal(sim_limits_ip_arrive(&l, "::1", t + 60 * SEC), SIM_IP_OK);
    sim_limits_free(&l);
}

static void test_ip_hour_buckets(void **state)
{
    (void)state;
    sim_limits l;
    for (int counting = 1; counting >= 0; counting--) {
        assert_int_equal(sim_limits_init(&l, 1, 1), 0);
        l.ip_per_hour = 5;
        l.count_rejected = counting;
        uint64_t t0 = 7200 * SEC;   /* second 7200 */
        for (int i = 0; i < 5; i++) /* seconds 7200..7204 */
            assert_int_equal(sim_limits_ip_arrive(&l, "10.0.0.1", t0 + (uint64_t)i * SEC),
                             SIM_IP_OK);
        assert_int_equal(sim_limits_ip_arrive(&l, "10.0.0.1", t0 + 100 * SEC), SIM_IP_OVER_HOUR);
        /* Second 10799 still covers 7200: full. */
        assert_int_equal(sim_limits_ip_arrive(&l, "10.0.0.1", t0 + 3599 * SEC + 999999),
                         SIM_IP_OVER_HOUR);
        /* Second 10800 covers 7201..10800: 4 admitted (+ 2 refused when they count). */
        assert_int_equal(sim_limits_ip_arrive(&l, "10.0.0.1", t0 + 3600 * SEC),
                         counting ? SIM_IP_OVER_HOUR : SIM_IP_OK);
        /* After more than an hour of silence everything is gone. */
        assert_int_equal(sim_limits_ip_arrive(&l, "10.0.0.1", t0 + 9000 * SEC), SIM_IP_OK);
        sim_limits_free(&l);
    }
    /* The buckets alone: counts exactly the 3600 seconds up to now's. */
    sim_buckets b = {0};
    for (uint64_t sec = 0; sec < 5000; sec++)
        assert_int_equal(sim_buckets_push(&b, sec * SEC + 123, 1), 0);
    assert_int_equal(sim_buckets_count(&b, 4999 * SEC, 1), 3600);
    assert_int_equal(sim_buckets_count(&b, 5000 * SEC, 1), 3599);
    assert_int_equal(sim_buckets_count(&b, 8598 * SEC, 1), 1);
    assert_int_equal(sim_buckets_count(&b, 8599 * SEC, 1), 0);
    sim_buckets_free(&b);
}

/* ---- user/list_id ---- */

static void test_cursor(void **state)
{
    (void)state;
    char text[SIM_CURSOR_LEN + 1], bad[SIM_CURSOR_LEN + 1];
    sim_cursor in = {.corp = 9999, .user = 123456789, .slot = 3}, out;
    sim_cursor_encode(&in, text);
    assert_int_equal(strlen(text), SIM_CURSOR_LEN);
    assert_true(strspn(text, "0123456789") < SIM_CURSOR_LEN); /* never a plain number */
    assert_int_equal(sim_cursor_decode(text, &out), 0);
    assert_int_equal(out.corp, 9999);
    assert_int_equal(out.user, 123456789);
    assert_int_equal(out.slot, 3);
    /* Any single changed digit is refused. */
    for (int i = 0; i < SIM_CURSOR_LEN; i++) {
        for (const char *h = "0123456789abcdef"; *h; h++) {
            if (*h == text[i])
                continue;
            memcpy(bad, text, sizeof(bad));
            bad[i] = *h;
            assert_int_equal(sim_cursor_decode(bad, &out), -EINVAL);
        }
    }
    assert_int_equal(sim_cursor_decode("", &out), -EINVAL);
    assert_int_equal(sim_cursor_decode("12", &out), -EINVAL);
    assert_int_equal(sim_cursor_decode("A501000400000000667F", &out), -EINVAL);
}

typedef struct pair_set {
    char (*userid)[24];
    int *dept, *count;
    size_t n, cap;
} pair_set;

static void pairs_add(pair_set *p, const char *userid, int dept)
{
    for (size_t i = 0; i < p->n; i++) {
        if (p->dept[i] == dept && strcmp(p->userid[i], userid) == 0) {
            p->count[i]++;
            return;
        }
    }
    if (p->n == p->cap) {
        p->cap = p->cap ? p->cap * 2 : 64;
        p->userid = realloc(p->userid, p->cap * sizeof(*p->userid));
        p->dept = realloc(p->dept, p->cap * sizeof(*p->dept));
        p->count = realloc(p->count, p->cap * sizeof(*p->count));
        assert_non_null(p->userid);
        assert_non_null(p->dept);
        assert_non_null(p->count);
    }
    snprintf(p->userid[p->n], sizeof(p->userid[p->n]), "%s", userid);
    p->dept[p->n] = dept;
    p->count[p->n++] = 1;
}

static int pairs_count(const pair_set *p, const char *userid, int dept)
{
    for (size_t i = 0; i < p->n; i++)
        if (p->dept[i] == dept && strcmp(p->userid[i], userid) == 0)
            return p->count[i];
    return 0;
}

static void pairs_free(pair_set *p)
{
    free(p->userid);
    free(p->dept);
    free(p->count);
    memset(p, 0, sizeof(*p));
}

/* One page: its rows into p, its next_cursor into next ("" at the end). */
static int list_id_page(sim_corp *c, const char *cursor, uint32_t limit, const sim_deptset *vis,
                        pair_set *p, char *next)
{
    buf out;
    json_object *o, *rows, *v;
    buf_init(&out);
    int rc = sim_corp_list_id(c, cursor, limit, vis, &out);
    if (rc) {
        buf_free(&out);
        return rc;
    }
    o = json_tokener_parse(out.data);
    assert_non_null(o);
    assert_true(json_object_object_get_ex(o, "errcode", &v));
    assert_int_equal(json_object_get_int(v), 0);
    assert_true(json_object_object_get_ex(o, "next_cursor", &v));
    snprintf(next, SIM_CURSOR_LEN + 1, "%s", json_object_get_string(v));
    assert_true(json_object_object_get_ex(o, "dept_user", &rows));
    assert_true(json_object_array_length(rows) <= limit);
    for (size_t i = 0; i < json_object_array_length(rows); i++) {
        json_object *row = json_object_array_get_idx(rows, i), *u, *d;
        assert_true(json_object_object_get_ex(row, "userid", &u));
        assert_true(json_object_object_get_ex(row, "department", &d));
        pairs_add(p, json_object_get_string(u), json_object_get_int(d));
    }
    json_object_put(o);
    buf_free(&out);
    return 0;
}

/* All pages from the start; returns the number of pages. */
static int list_id_all(sim_corp *c, uint32_t limit, const sim_deptset *vis, pair_set *p)
{
    char cur[SIM_CURSOR_LEN + 1] = "", next[SIM_CURSOR_LEN + 1];
    int pages = 0;
    do {
        assert_int_equal(list_id_page(c, cur, limit, vis, p, next), 0);
        memcpy(cur, next, sizeof(cur));
        pages++;
        assert_true(pages < 100000);
    } while (cur[0]);
    return pages;
}

/* Every membership of the directory (in range of vis) exactly once in p, and nothing
 * else. */
static void assert_all_memberships(sim_corp *c, const sim_deptset *vis, const pair_set *p)
{
    size_t want = 0;
    for (size_t i = 0; i < c->nusers; i++) {
        const sim_user *u = &c->users[i];
        for (int k = 0; u->alive && k < u->ndept; k++) {
            if (!sim_corp_dept_in(c, vis, u->dept[k]))
                continue;
            assert_int_equal(pairs_count(p, u->userid, u->dept[k]), 1);
            want++;
        }
    }
    assert_int_equal(p->n, want);
}

static void test_list_id_pages(void **state)
{
    (void)state;
    sim_dir d;
    pair_set p = {0};
    char next[SIM_CURSOR_LEN + 1];
    buf out;
    buf_init(&out);
    assert_int_equal(sim_dir_generate(&d, 2, 9, 4, 17), 0);
    sim_corp *c = &d.corps[0];
    /* Every page size from 1 (pages split members in two departments) to all in one. */
    for (uint32_t limit = 1; limit <= 50; limit += (limit < 8 ? 1 : 21)) {
        int pages = list_id_all(c, limit, NULL, &p);
        assert_all_memberships(c, NULL, &p);
        assert_int_equal(pages, (int)((p.n + limit - 1) / limit));
        pairs_free(&p);
    }
    assert_int_equal(list_id_all(c, SIM_LIST_ID_MAX, NULL, &p), 1);
    assert_all_memberships(c, NULL, &p);
    pairs_free(&p);
    /* Rows by member index, then the member's departments (main first). */
    assert_int_equal(sim_corp_list_id(c, "", 3, NULL, &out), 0);
    assert_non_null(strstr(out.data, "\"dept_user\":[{\"userid\":\"u000001\",\"department\":1},"
                                     "{\"userid\":\"u000002\",\"department\":1}"));
    /* A cursor of another enterprise, or garbage, is refused. */
    char other[SIM_CURSOR_LEN + 1];
    sim_cursor oc = {.corp = 2, .user = 1, .slot = 0};
    sim_cursor_encode(&oc, other);
    assert_int_equal(sim_corp_list_id(c, other, 3, NULL, &out), -EINVAL);
    assert_int_equal(sim_corp_list_id(&d.corps[1], other, 3, NULL, &out), 0);
    assert_int_equal(sim_corp_list_id(c, "12", 3, NULL, &out), -EINVAL);
    sim_cursor far = {.corp = 1, .user = (uint32_t)c->nusers + 1, .slot = 0};
    sim_cursor_encode(&far, other);
    assert_int_equal(sim_corp_list_id(c, other, 3, NULL, &out), -EINVAL);
    /* The visible range: only memberships in departments under 2. */
    sim_deptset vis = {.n = 1, .ids = {2}};
    list_id_all(c, 4, &vis, &p);
    assert_true(p.n > 0);
    assert_all_memberships(c, &vis, &p);
    pairs_free(&p);
    (void)next;
    buf_free(&out);
    sim_dir_free(&d);
}

static void test_list_id_across_mutations(void **state)
{
    (void)state;
    sim_dir d;
    buf out;
    char err[256], cur[SIM_CURSOR_LEN + 1] = "", next[SIM_CURSOR_LEN + 1];
    pair_set p = {0};
    buf_init(&out);
    assert_int_equal(sim_dir_generate(&d, 1, 8, 5, 23), 0);
    sim_corp *c = &d.corps[0];
    size_t start_users = c->nusers;
    /* Page 1 (10 rows), then changes before and after the cursor. */
    assert_int_equal(list_id_page(c, cur, 10, NULL, &p, next), 0);
    memcpy(cur, next, sizeof(cur));
    sim_cursor pos;
    assert_int_equal(sim_cursor_decode(cur, &pos), 0);
    assert_true(pos.user >= 5 && pos.user < 12);
    assert_int_equal(mutate(&d,
                            "{\"ops\":[{\"op\":\"remove\",\"userid\":\"u000002\"},"
                            "{\"op\":\"remove\",\"userid\":\"u000030\"},"
                            "{\"op\":\"add\",\"userid\":\"late.one\",\"department\":[3,4]},"
                            "{\"op\":\"move\",\"userid\":\"u000025\",\"department\":[7,8]}],"
                            "\"random\":{\"add\":3,\"rename\":4}}",
                            &out, err),
                     0);
    while (cur[0]) {
        assert_int_equal(list_id_page(c, cur, 10, NULL, &p, next), 0);
        memcpy(cur, next, sizeof(cur));
        /* And more changes between later pages. */
        if (cur[0])
            assert_int_equal(mutate(&d, "{\"random\":{\"add\":1}}", &out, err), 0);
    }
    /* Nothing twice; every member listed where it was when its turn came: members
     * before the cursor with what they had then (u000002 removed after it was listed),
     * members after it with what they have now. */
    for (size_t i = 0; i < p.n; i++)
        assert_int_equal(p.count[i], 1);
    assert_int_equal(pairs_count(&p, "u000002", c->users[1].dept[0]), 1);
    assert_int_equal(pairs_count(&p, "u000030", c->users[29].dept[0]), 0);
    assert_int_equal(pairs_count(&p, "u000025", 7), 1);
    assert_int_equal(pairs_count(&p, "u000025", 8), 1);
    assert_int_equal(pairs_count(&p, "late.one", 3), 1);
    assert_int_equal(pairs_count(&p, "late.one", 4), 1);
    for (size_t i = 0; i < c->nusers; i++) {
        const sim_user *u = &c->users[i];
        if (!u->alive || i < pos.user)
            continue;
        for (int k = 0; k < u->ndept; k++)
            assert_int_equal(pairs_count(&p, u->userid, u->dept[k]), 1);
    }
    assert_true(c->nusers > start_users + 4);
    pairs_free(&p);
    buf_free(&out);
    sim_dir_free(&d);
}

/* A page looks at no more than limit + SIM_LIST_ID_SCAN members, however few rows it
 * finds: with a narrow range it stops short and hands on a cursor. */
static void test_list_id_page_is_bounded(void **state)
{
    (void)state;
    sim_dir d;
    pair_set p = {0};
    char next[SIM_CURSOR_LEN + 1];
    sim_cursor pos;
    assert_int_equal(sim_dir_generate(&d, 1, 400, 30, 5), 0);
    sim_corp *c = &d.corps[0];
    int leaf = c->max_dept; /* a leaf: nothing has a higher id */
    sim_deptset vis = {.n = 1, .ids = {leaf}};
    assert_int_equal(list_id_page(c, "", 2, &vis, &p, next), 0);
    assert_int_equal(sim_cursor_decode(next, &pos), 0);
    assert_true(pos.user <= 2 + SIM_LIST_ID_SCAN);
    pairs_free(&p);
    list_id_all(c, 2, &vis, &p);
    assert_all_memberships(c, &vis, &p);
    pairs_free(&p);
    sim_dir_free(&d);
}

/* ---- visible range ---- */

static int has_ancestor_in(const sim_corp *c, int id, const int *set, int n)
{
    for (int k = id; k >= 1; k = c->depts[k].parentid)
        for (int i = 0; i < n; i++)
            if (set[i] == k)
                return 1;
    return 0;
}

static int json_ids(const char *body, const char *key, int *ids, int max)
{
    json_object *o = json_tokener_parse(body), *arr, *v;
    int n = 0;
    assert_non_null(o);
    assert_true(json_object_object_get_ex(o, key, &arr));
    for (size_t i = 0; i < json_object_array_length(arr) && n < max; i++) {
        assert_true(json_object_object_get_ex(json_object_array_get_idx(arr, i), "id", &v));
        ids[n++] = json_object_get_int(v);
    }
    json_object_put(o);
    return n;
}

/* A copy of the first n bytes, valid until the next call. */
static const char *strndup_tmp(const char *s, size_t n)
{
    static char tmp[1024];
    assert_true(n < sizeof(tmp));
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    return tmp;
}

static void test_visible_range(void **state)
{
    (void)state;
    sim_dir d;
    buf scratch, out;
    const char *body = NULL;
    size_t len;
    int ids[128], n;
    buf_init(&scratch);
    buf_init(&out);
    assert_int_equal(sim_dir_generate(&d, 1, 60, 2, 4), 0);
    sim_corp *c = &d.corps[0];
    /* Two subtrees (one may lie inside the other: still listed once). */
    sim_deptset vis = {.n = 2, .ids = {3, 7}};
    int want = 0;
    for (int k = 1; k <= c->max_dept; k++) {
        int in = has_ancestor_in(c, k, vis.ids, vis.n);
        assert_int_equal(sim_corp_dept_in(c, &vis, k), in);
        assert_true(sim_corp_dept_in(c, NULL, k));
        want += in;
    }
    assert_true(want >= 2 && want < 60);
    assert_false(sim_corp_dept_in(c, &vis, 1));
    assert_int_equal(sim_corp_dept_list_visible(c, &vis, &scratch, &body, &len), 0);
    n = json_ids(body, "department", ids, 128);
    assert_int_equal(n, want);
    for (int i = 0; i < n; i++)
        assert_true(has_ancestor_in(c, ids[i], vis.ids, vis.n));
    assert_int_equal(sim_corp_dept_simplelist(c, 0, &vis, &out), 0);
    assert_int_equal(json_ids(out.data, "department_id", ids, 128), want);
    assert_int_equal(sim_corp_dept_simplelist(c, 0, NULL, &out), 0);
    assert_int_equal(json_ids(out.data, "department_id", ids, 128), 60);
    /* simplelist of one id: its subtree, the same set as department/list. */
    assert_int_equal(sim_corp_dept_simplelist(c, 3, NULL, &out), 0);
    n = json_ids(out.data, "department_id", ids, 128);
    assert_int_equal(sim_corp_dept_list(c, 3, &scratch, &body, &len), 0);
    int ids2[128];
    assert_int_equal(json_ids(body, "department", ids2, 128), n);
    assert_memory_equal(ids, ids2, (size_t)n * sizeof(int));
    assert_int_equal(sim_corp_dept_simplelist(c, 61, NULL, &out), -ENOENT);
    /* department/get: one department, the department/list object. */
    assert_int_equal(sim_corp_dept_get(c, 3, &out), 0);
    assert_non_null(strstr(out.data, "\"department\":{\"id\":3,"));
    /* ... the same object as in department/list (without the closing brace of the
     * answer). */
    const char *obj = strstr(out.data, "{\"id\":3,");
    assert_non_null(obj);
    assert_non_null(strstr(body, strndup_tmp(obj, strlen(obj) - 1)));
    assert_int_equal(sim_corp_dept_get(c, 61, &out), -ENOENT);
    /* A member is in range when any of its departments is. */
    for (size_t i = 0; i < c->nusers; i++) {
        const sim_user *u = &c->users[i];
        int in = 0;
        for (int k = 0; k < u->ndept; k++)
            in |= has_ancestor_in(c, u->dept[k], vis.ids, vis.n);
        assert_int_equal(sim_corp_user_in(c, &vis, u), in);
    }
    buf_free(&scratch);
    buf_free(&out);
    sim_dir_free(&d);
}

/* ---- app_new: the fields a new app is not given ---- */

static const char *const hidden_keys[] = {"mobile",       "email",  "biz_mail", "avatar",
                                          "thumb_avatar", "gender", "qr_code",  "address"};

static int is_hidden(const char *key)
{
    for (size_t i = 0; i < NELEM(hidden_keys); i++)
        if (strcmp(hidden_keys[i], key) == 0)
            return 1;
    return 0;
}

/* lite is full without exactly the hidden keys, every other key equal. */
static void assert_stripped(json_object *full, json_object *lite)
{
    int nfull = 0, nlite = 0, hidden = 0;
    json_object_object_foreach(full, key, val)
    {
        json_object *lv;
        nfull++;
        if (is_hidden(key)) {
            hidden++;
            assert_false(json_object_object_get_ex(lite, key, &lv));
            continue;
        }
        assert_true(json_object_object_get_ex(lite, key, &lv));
        assert_string_equal(json_object_to_json_string(val), json_object_to_json_string(lv));
    }
    json_object_object_foreach(lite, lkey, lval)
    {
        (void)lkey;
        (void)lval;
        nlite++;
    }
    assert_int_equal(hidden, (int)NELEM(hidden_keys));
    assert_int_equal(nlite, nfull - hidden);
}

static void test_app_new_fields(void **state)
{
    (void)state;
    sim_dir d;
    buf a, b, out;
    char err[256];
    const char *body = NULL;
    size_t len;
    buf_init(&a);
    buf_init(&b);
    buf_init(&out);
    assert_int_equal(sim_dir_generate(&d, 1, 5, 3, 8), 0);
    sim_corp *c = &d.corps[0];
    for (int k = 1; k <= 5; k++) {
        assert_int_equal(sim_corp_user_list(c, k, &body, &len), 0);
        json_object *fo = json_tokener_parse(body), *fl, *lo, *ll;
        assert_int_equal(sim_corp_user_list_lite(c, k, &body, &len), 0);
        lo = json_tokener_parse(body);
        assert_true(json_object_object_get_ex(fo, "userlist", &fl));
        assert_true(json_object_object_get_ex(lo, "userlist", &ll));
        assert_int_equal(json_object_array_length(fl), json_object_array_length(ll));
        for (size_t i = 0; i < json_object_array_length(fl); i++)
            assert_stripped(json_object_array_get_idx(fl, i), json_object_array_get_idx(ll, i));
        json_object_put(fo);
        json_object_put(lo);
    }
    assert_int_equal(sim_corp_user_get(c, "u000004", &a), 0);
    assert_int_equal(sim_corp_user_get_lite(c, "u000004", &b), 0);
    json_object *ga = json_tokener_parse(a.data), *gb = json_tokener_parse(b.data);
    assert_stripped(ga, gb);
    json_object_put(ga);
    json_object_put(gb);
    /* Both answers are kept, and a mutation drops both. */
    assert_non_null(c->depts[2].user_list);
    assert_non_null(c->depts[2].user_list_lite);
    assert_int_equal(sim_corp_user_list_lite(c, 2, &body, &len), 0);
    assert_null(strstr(body, "\"mobile\""));
    assert_int_equal(mutate(&d,
                            "{\"ops\":[{\"op\":\"add\",\"name\":\"新来的\",\"department\":[2]}]}",
                            &out, err),
                     0);
    assert_null(c->depts[2].user_list);
    assert_null(c->depts[2].user_list_lite);
    assert_int_equal(sim_corp_user_list_lite(c, 2, &body, &len), 0);
    assert_non_null(strstr(body, "新来的"));
    buf_free(&a);
    buf_free(&b);
    buf_free(&out);
    sim_dir_free(&d);
}

/* ---- policy settings ---- */

static int policy_post(sim_policy *pols, sim_dir *d, const char *json, int *only, char *err)
{
    return sim_policy_apply_json(pols, d, json, strlen(json), only, err, 256);
}

static void test_policy(void **state)
{
    (void)state;
    sim_dir d;
    sim_policy pols[3];
    char err[256];
    int only;
    assert_int_equal(sim_dir_generate(&d, 3, 4, 1, 1), 0);
    for (int i = 0; i < 3; i++)
        sim_policy_init(&pols[i]);
    /* Defaults: no restriction. */
    assert_true(sim_policy_trusted(&pols[0], "203.0.113.9"));
    assert_true(sim_policy_legacy_allowed(&pols[0], ""));
    assert_false(pols[0].app_new || pols[0].visible_set);

    assert_int_equal(policy_post(pols, &d,
                                 "{\"corp_id\":\"wwsim0002\",\"trusted_ips\":[\"127.0.0.1\","
                                 "\"::1\"],\"contact_legacy_ips\":[],\"visible_depts\":[2,3]}",
                                 &only, err),
                     0);
    assert_int_equal(only, 1);
    assert_true(sim_policy_trusted(&pols[0], "127.0.0.2")); /* other enterprises untouched */
    assert_true(sim_policy_trusted(&pols[1], "127.0.0.1"));
    assert_true(sim_policy_trusted(&pols[1], "::ffff:127.0.0.1")); /* the same address */
    assert_true(sim_policy_trusted(&pols[1], "::1"));
    assert_false(sim_policy_trusted(&pols[1], "127.0.0.2"));
    assert_false(sim_policy_trusted(&pols[1], ""));
    assert_false(sim_policy_legacy_allowed(&pols[1], "127.0.0.1")); /* [] = nowhere */
    assert_int_equal(pols[1].visible.n, 2);

    /* Merge: only the given keys change; without corp_id every enterprise. */
    assert_int_equal(policy_post(pols, &d, "{\"app_new\":true}", &only, err), 0);
    assert_int_equal(only, -1);
    for (int i = 0; i < 3; i++)
        assert_true(pols[i].app_new);
    assert_true(pols[1].trusted_set && pols[1].visible_set);

    /* All or nothing, the bad key named. */
    static const char *const bad[] = {
        "{\"corp_id\":\"wwsim0002\",\"app_new\":false,\"trusted_ips\":[\"300.1.1.1\"]}",
        "{\"corp_id\":\"wwsim0002\",\"app_new\":false,\"visible_depts\":[0]}",
        "{\"corp_id\":\"wwsim0002\",\"app_new\":false,\"contact_legacy_ips\":\"127.0.0.1\"}",
        "{\"corp_id\":\"wwsim0002\",\"app_new\":false,\"trusted\":[]}",
        "{\"corp_id\":\"wwsim0002\",\"app_new\":0}",
    };
    static const char *const named[] = {"trusted_ips", "visible_depts", "contact_legacy_ips",
                                        "trusted", "app_new"};
    for (size_t i = 0; i < NELEM(bad); i++) {
        assert_int_equal(policy_post(pols, &d, bad[i], &only, err), -EINVAL);
        assert_non_null(strstr(err, named[i]));
        assert_true(pols[1].app_new);
    }
    assert_int_equal(policy_post(pols, &d, "{\"corp_id\":\"wwsim0009\"}", &only, err), -ENOENT);
    assert_int_equal(policy_post(pols, &d, "[]", &only, err), -EINVAL);

    /* null lifts a restriction; reset clears everything first. */
    assert_int_equal(
        policy_post(pols, &d, "{\"corp_id\":\"wwsim0002\",\"trusted_ips\":null}", &only, err), 0);
    assert_true(sim_policy_trusted(&pols[1], "198.51.100.1"));
    assert_true(pols[1].visible_set);
    assert_int_equal(policy_post(pols, &d,
                                 "{\"corp_id\":\"wwsim0002\",\"reset\":true,"
                                 "\"contact_legacy_ips\":[\"127.0.0.3\"]}",
                                 &only, err),
                     0);
    assert_false(pols[1].app_new || pols[1].visible_set || pols[1].trusted_set);
    assert_true(sim_policy_legacy_allowed(&pols[1], "127.0.0.3"));
    assert_false(sim_policy_legacy_allowed(&pols[1], "127.0.0.1"));

    /* The view. */
    buf b;
    jw w;
    buf_init(&b);
    jw_init(&w, &b);
    jw_obj_begin(&w);
    sim_policy_json(&pols[1], &w);
    jw_obj_end(&w);
    assert_string_equal(b.data, "{\"contact_legacy_ips\":[\"127.0.0.3\"],\"app_new\":false,"
                                "\"visible_depts\":null,\"trusted_ips\":null}");
    buf_free(&b);

    /* Flags. */
    sim_policy f;
    sim_policy_init(&f);
    assert_int_equal(sim_policy_apply_flag(&f, "trusted-ips", "127.0.0.1,10.1.2.3", err, 256), 1);
    assert_int_equal(f.trusted_ips.n, 2);
    assert_int_equal(sim_policy_apply_flag(&f, "contact-legacy-ips", "none", err, 256), 1);
    assert_true(f.legacy_set);
    assert_int_equal(f.legacy_ips.n, 0);
    assert_int_equal(sim_policy_apply_flag(&f, "visible-depts", "2,5", err, 256), 1);
    assert_int_equal(f.visible.ids[1], 5);
    assert_int_equal(sim_policy_apply_flag(&f, "app-new", "1", err, 256), 1);
    assert_true(f.app_new);
    assert_int_equal(sim_policy_apply_flag(&f, "app-new", "yes", err, 256), -EINVAL);
    assert_non_null(strstr(err, "--app-new"));
    assert_int_equal(sim_policy_apply_flag(&f, "visible-depts", "2,x", err, 256), -EINVAL);
    assert_int_equal(sim_policy_apply_flag(&f, "trusted-ips", "127.0.0.1,", err, 256), -EINVAL);
    assert_int_equal(sim_policy_apply_flag(&f, "rate", "5", err, 256), 0);
    sim_dir_free(&d);
}

/* ---- stats per source address ---- */

static void test_stats_per_ip(void **state)
{
    (void)state;
    sim_stats st;
    sim_dir d;
    buf b;
    jw w;
    assert_int_equal(sim_dir_generate(&d, 2, 3, 1, 1), 0);
    int noports[1] = {0};
    assert_int_equal(sim_stats_init(&st, 2, noports, 0, SEC), 0);
    sim_hit h = {
        .port = -1, .corp = 0, .path = SIM_P_USER_LIST_ID, .errcode = 0, .ip = "127.0.0.2"};
    /* 5 in the first minute, 3 more 59.999999 s after the first: max_60s 8; then 2 after
     * the first minute has gone. */
    for (int i = 0; i < 5; i++)
        sim_stats_record(&st, &h, 10 * SEC + (uint64_t)i * MS);
    for (int i = 0; i < 3; i++)
        sim_stats_record(&st, &h, 70 * SEC - 1);
    for (int i = 0; i < 2; i++)
        sim_stats_record(&st, &h, 71 * SEC);
    h.ip = "127.0.0.3";
    h.corp = 1;
    h.errcode = 60020;
    h.untrusted_ip = 1;
    sim_stats_record(&st, &h, 72 * SEC);
    h.ip = NULL; /* unknown address: in no ips[] entry */
    h.untrusted_ip = 0;
    h.errcode = 48009;
    h.forbidden = 1;
    sim_stats_record(&st, &h, 72 * SEC);
    assert_int_equal(st.nips, 2);
    assert_int_equal(st.ips[0].c.requests, 10);
    assert_int_equal(st.ips[0].max_60s, 8);
    assert_int_equal(st.ips[0].max_3600s, 10);
    assert_int_equal(st.ips[0].c.by_path[SIM_P_USER_LIST_ID], 10);
    assert_int_equal(st.ips[1].c.untrusted_ip, 1);
    assert_int_equal(st.corp[1].forbidden, 1);
    assert_int_equal(st.total.untrusted_ip, 1);

    buf_init(&b);
    jw_init(&w, &b);
    jw_obj_begin(&w);
    assert_int_equal(sim_stats_json(&st, &d, NULL, &w), 0);
    jw_obj_end(&w);
    json_object *o = json_tokener_parse(b.data), *v, *c0, *c1, *e;
    assert_non_null(o);
    assert_true(json_object_object_get_ex(o, "ips", &v));
    assert_int_equal(json_object_array_length(v), 2);
    e = json_object_array_get_idx(v, 0);
    assert_true(json_object_object_get_ex(e, "ip", &v));
    assert_string_equal(json_object_get_string(v), "127.0.0.2");
    assert_true(json_object_object_get_ex(e, "max_60s", &v));
    assert_int_equal(json_object_get_int(v), 8);
    json_object_object_get_ex(o, "corps", &v);
    c0 = json_object_array_get_idx(v, 0);
    c1 = json_object_array_get_idx(v, 1);
    /* by_ip: only the addresses that called for that enterprise. */
    assert_true(json_object_object_get_ex(c0, "by_ip", &v));
    assert_int_equal(json_object_array_length(v), 1);
    assert_true(json_object_object_get_ex(json_object_array_get_idx(v, 0), "requests", &e));
    assert_int_equal(json_object_get_int(e), 10);
    assert_true(json_object_object_get_ex(c1, "by_ip", &v));
    assert_int_equal(json_object_array_length(v), 1);
    e = json_object_array_get_idx(v, 0);
    assert_true(json_object_object_get_ex(e, "ip", &v));
    assert_string_equal(json_object_get_string(v), "127.0.0.3");
    assert_true(json_object_object_get_ex(c1, "forbidden", &v));
    assert_int_equal(json_object_get_int(v), 1);
    json_object_put(o);

    sim_stats_reset(&st);
    assert_int_equal(st.nips, 2); /* still listed, zeroed */
    assert_int_equal(st.ips[0].c.requests, 0);
    assert_int_equal(st.ips[0].max_60s, 0);
    assert_int_equal(st.corp_ip[0][0].requests, 0);
    sim_stats_record(&st, &h, 80 * SEC);
    buf_free(&b);
    sim_stats_free(&st);
    sim_dir_free(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_window_burst_of_11),
        cmocka_unit_test(test_window_spread_over_1100ms),
        cmocka_unit_test(test_window_exact_pacing),
        cmocka_unit_test(test_window_counting_rejected),
        cmocka_unit_test(test_window_grows_and_wraps),
        cmocka_unit_test(test_map),
        cmocka_unit_test(test_tokens),
        cmocka_unit_test(test_limits_ban),
        cmocka_unit_test(test_directory_deterministic),
        cmocka_unit_test(test_directory_shape),
        cmocka_unit_test(test_directory_dept_subtree),
        cmocka_unit_test(test_mutations),
        cmocka_unit_test(test_answer_cache),
        cmocka_unit_test(test_random_mutations_deterministic),
        cmocka_unit_test(test_faults),
        cmocka_unit_test(test_stats),
        cmocka_unit_test(test_tokens_per_credential),
        cmocka_unit_test(test_ip_minute_window_edges),
        cmocka_unit_test(test_ip_hour_buckets),
        cmocka_unit_test(test_cursor),
        cmocka_unit_test(test_list_id_pages),
        cmocka_unit_test(test_list_id_across_mutations),
        cmocka_unit_test(test_list_id_page_is_bounded),
        cmocka_unit_test(test_visible_range),
        cmocka_unit_test(test_app_new_fields),
        cmocka_unit_test(test_policy),
        cmocka_unit_test(test_stats_per_ip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
