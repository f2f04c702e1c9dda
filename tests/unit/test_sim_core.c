/* Unit tests for the simulator's core logic: the arrival-time window, the token
 * table, the generated directory and its mutations, faults and stats. No I/O.
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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
