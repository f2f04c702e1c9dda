/* worker/sync_batch: a user/list answer checked and kept as its members' text,
 * and the arrays one write statement takes (each member once). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <json-c/json.h>

#include "worker/wecom/json_scan.h"
#include "worker/sync/sync_batch.h"

static ds_batch *parse(long long dept, const char *answer, int want)
{
    ds_batch *b = calloc(1, sizeof(*b));
    char why[200] = "";
    char chk[96];

    assert_non_null(b);
    assert_int_equal(js_check(answer, strlen(answer), chk, sizeof(chk)), 0);
    b->dept_id = dept;
    int n = sync_batch_parse(b, answer, strlen(answer), why, sizeof(why));
    if (n != want)
        fail_msg("parse gave %d (%s), expected %d", n, why, want);
    return b;
}

/* The userids of a members array, joined by spaces. */
static void userids(const char *members, char *out, size_t n)
{
    json_object *a = json_tokener_parse(members);
    size_t o = 0;

    assert_non_null(a);
    assert_true(json_object_is_type(a, json_type_array));
    out[0] = '\0';
    for (size_t i = 0; i < json_object_array_length(a); i++) {
        json_object *u;
        assert_true(json_object_object_get_ex(json_object_array_get_idx(a, i), "userid", &u));
        o += (size_t)snprintf(out + o, n - o, "%s%s", i ? " " : "", json_object_get_string(u));
    }
    json_object_put(a);
}

static void test_parse_keeps_members(void **state)
{
    const char *answer =
        "{\"errcode\":0,\"errmsg\":\"ok\",\"userlist\":["
        " {\"userid\":\"a\",\"name\":\"A \\\"x\\\"\",\"department\":[7,9],\"main_department\":7},"
        " {\"userid\":\"b\",\"department\":[9],\"extattr\":{\"attrs\":[{\"n\":\"]}\"}]}},"
        " {\"userid\":\"c\",\"department\":[9,7]}]}";
    char ids[256];
    (void)state;

    ds_batch *b = parse(7, answer, 3);
    assert_int_equal(b->members, 3);
    /* a: main 7; b: first 9; c: first 9. */
    assert_int_equal(b->primary, 1);
    /* Each member's text is the upstream's fields with the keys in jsonb's
     * order (shorter first, then bytewise), and its userid is found. */
    assert_int_equal(b->m[1].uid_len, 1);
    assert_memory_equal(b->body + b->m[1].uid_off, "b", 1);
    const char *want_b = "{\"userid\":\"b\",\"extattr\":{\"attrs\":[{\"n\":\"]}\"}]},"
                         "\"department\":[9]}";
    assert_int_equal(b->m[1].len, strlen(want_b));
    assert_memory_equal(b->body + b->m[1].off, want_b, strlen(want_b));
    const char *want_a = "{\"name\":\"A \\\"x\\\"\",\"userid\":\"a\",\"department\":[7,9],"
                         "\"main_department\":7}";
    assert_int_equal(b->m[0].len, strlen(want_a));
    assert_memory_equal(b->body + b->m[0].off, want_a, strlen(want_a));
    assert_memory_equal(b->body + b->m[0].uid_off, "a\"", 2);
    assert_true(sync_batch_bytes(b) >= b->len);

    sync_params sp;
    assert_int_equal(sync_batch_params(&b, 1, NULL, NULL, &sp), 0);
    userids(sp.members, ids, sizeof(ids));
    assert_string_equal(ids, "a b c");
    assert_null(sp.fresh);
    /* b does not name department 7: no digest is kept for this answer. */
    assert_int_equal(b->record, 0);
    assert_string_equal(sp.depts, "[{\"d\":7,\"h\":null,\"m\":null,\"n\":3,\"p\":1,\"s\":false,"
                                  "\"u\":[\"a\",\"b\",\"c\"],\"x\":false}]");
    sync_params_free(&sp);
    sync_batch_free(b);
}

/* The member at index i of b, as a string. */
static char *member_text(const ds_batch *b, int i)
{
    char *t = malloc(b->m[i].len + 1);
    assert_non_null(t);
    memcpy(t, b->body + b->m[i].off, b->m[i].len);
    t[b->m[i].len] = '\0';
    return t;
}

/* Members are kept with their keys in jsonb's order (what PostgreSQL would sort
 * them into), the same fields and values; a member whose order matters or cannot
 * be known here is kept exactly as sent. */
static void test_parse_key_order(void **state)
{
    const char *answer =
        "{\"userlist\":["
        /* 0: the upstream's shape, reordered */
        "{\"userid\":\"u1\", \"name\":\"\u9648\u79c0\u82f1\",\"department\":[1, 2],"
        "\"order\":[0,0],\"mobile\":\"1380\",\"gender\":\"1\",\"extattr\":{\"b\":1,\"a\":2},"
        "\"status\":1,\"main_department\":2,\"alias\":\"\",\"is_leader_in_dept\":[0,1]},"
        /* 1: a repeated key: jsonb keeps the last, so the order stays */
        "{\"userid\":\"u2\",\"name\":\"old\",\"alias\":\"x\",\"name\":\"new\"},"
        /* 2: an escaped key */
        "{\"userid\":\"u3\",\"n\\u0061me\":\"x\",\"a\":1},"
        /* 3: already in order, whitespace and all */
        "{ \"a\" : 1 , \"userid\" : \"u4\" }"
        "]}";
    const char *want0 = "{\"name\":\"\u9648\u79c0\u82f1\",\"alias\":\"\",\"order\":[0,0],"
                        "\"gender\":\"1\",\"mobile\":\"1380\",\"status\":1,\"userid\":\"u1\","
                        "\"extattr\":{\"b\":1,\"a\":2},\"department\":[1, 2],"
                        "\"main_department\":2,\"is_leader_in_dept\":[0,1]}";
    (void)state;

    ds_batch *b = parse(1, answer, 4);
    char *t = member_text(b, 0);
    assert_string_equal(t, want0);
    assert_memory_equal(b->body + b->m[0].uid_off, "u1\"", 3);
    /* The same object as the upstream's member. */
    json_object *got = json_tokener_parse(t), *all = json_tokener_parse(answer), *orig;
    assert_non_null(got);
    assert_non_null(all);
    assert_true(json_object_object_get_ex(all, "userlist", &orig));
    assert_true(json_object_equal(got, json_object_array_get_idx(orig, 0)));
    json_object_put(got);
    json_object_put(all);
    free(t);

    t = member_text(b, 1);
    assert_string_equal(t, "{\"userid\":\"u2\",\"name\":\"old\",\"alias\":\"x\",\"name\":\"new\"}");
    assert_memory_equal(b->body + b->m[1].uid_off, "u2\"", 3);
    free(t);
    t = member_text(b, 2);
    assert_string_equal(t, "{\"userid\":\"u3\",\"n\\u0061me\":\"x\",\"a\":1}");
    free(t);
    t = member_text(b, 3);
    assert_string_equal(t, "{ \"a\" : 1 , \"userid\" : \"u4\" }");
    assert_memory_equal(b->body + b->m[3].uid_off, "u4\"", 3);
    free(t);
    sync_batch_free(b);
}

/* More fields than the reorder keeps track of: the member is kept as sent. */
static void test_parse_many_fields(void **state)
{
    char answer[4200], want[4096];
    size_t o = 0, w = 0;
    (void)state;

    o += (size_t)snprintf(answer + o, sizeof(answer) - o, "{\"userlist\":[");
    w += (size_t)snprintf(want + w, sizeof(want) - w, "{\"zz\":0");
    for (int i = 0; i < 70; i++)
        w += (size_t)snprintf(want + w, sizeof(want) - w, ",\"k%02d\":%d", 69 - i, i);
    w += (size_t)snprintf(want + w, sizeof(want) - w, ",\"userid\":\"u\"}");
    snprintf(answer + o, sizeof(answer) - o, "%s]}", want);

    ds_batch *b = parse(1, answer, 1);
    char *t = member_text(b, 0);
    assert_string_equal(t, want);
    assert_memory_equal(b->body + b->m[0].uid_off, "u\"", 2);
    free(t);
    sync_batch_free(b);
}

static void test_parse_refuses(void **state)
{
    static const struct {
        const char *answer, *why;
    } bad[] = {
        {"{\"errcode\":0}", "no userlist array"},
        {"{\"userlist\":{}}", "no userlist array"},
        {"[1]", "no userlist array"},
        {"{\"userlist\":[1]}", "member 0 is not an object"},
        {"{\"userlist\":[{\"name\":\"x\"}]}", "member 0 has no usable userid"},
        {"{\"userlist\":[{\"userid\":\"\"}]}", "member 0 has no usable userid"},
        {"{\"userlist\":[{\"userid\":7}]}", "member 0 has no usable userid"},
        {"{\"userlist\":[{\"userid\":\"u\",\"mobile\":1}]}",
         "member u has a field of the wrong type"},
        {"{\"userlist\":[{\"userid\":\"u\",\"status\":\"1\"}]}",
         "member u has a field of the wrong type"},
        {"{\"userlist\":[{\"userid\":\"u\",\"department\":[1,\"2\"]}]}",
         "member u has a field of the wrong type"},
        {"{\"userlist\":[{\"userid\":\"u\",\"main_department\":3000000000}]}",
         "member u has a field of the wrong type"},
        /* every occurrence of a repeated key is checked (jsonb keeps the last) */
        {"{\"userlist\":[{\"userid\":\"u\",\"name\":\"n\",\"name\":5}]}",
         "member u has a field of the wrong type"},
        /* which userlist is meant is not known (json-c and jsonb keep the last) */
        {"{\"userlist\":[],\"userlist\":[]}", "userlist given twice"},
        {"{\"userlist\":[{\"userid\":\"a\"}],\"errcode\":0,\"userlist\":[{\"userid\":\"b\"}]}",
         "userlist given twice"},
    };
    (void)state;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ds_batch b = {.dept_id = 1};
        char why[200] = "";
        char chk[96];
        assert_int_equal(js_check(bad[i].answer, strlen(bad[i].answer), chk, sizeof(chk)), 0);
        assert_int_equal(
            sync_batch_parse(&b, bad[i].answer, strlen(bad[i].answer), why, sizeof(why)), -1);
        if (strcmp(why, bad[i].why) != 0)
            fail_msg("answer %zu: why '%s', expected '%s'", i, why, bad[i].why);
        assert_null(b.body);
        assert_null(b.m);
    }
}

/* Two departments of one statement list the same members, once spelled with an
 * escape; one answer lists a member twice; a department the upstream does not
 * know has no answer. Each member is written once, by the first to list it. */
static void test_params_each_member_once(void **state)
{
    ds_batch *b[3];
    sync_params sp;
    char ids[256];
    (void)state;

    b[0] = parse(1,
                 "{\"userlist\":[{\"userid\":\"x\",\"name\":\"first\"},"
                 "{\"userid\":\"y\"},{\"userid\":\"x\",\"name\":\"again\"}]}",
                 3);
    b[1] = calloc(1, sizeof(*b[1])); /* 60003: no answer */
    assert_non_null(b[1]);
    b[1]->dept_id = 2;
    b[2] = parse(3,
                 "{\"userlist\":[{\"userid\":\"z\"},{\"userid\":\"\\u0078\",\"name\":\"third\"},"
                 "{\"userid\":\"y\"}]}",
                 3);

    assert_int_equal(sync_batch_params(b, 3, NULL, NULL, &sp), 0);
    userids(sp.members, ids, sizeof(ids));
    assert_string_equal(ids, "x y z");
    /* The kept x is the first department's first. */
    assert_non_null(strstr(sp.members, "\"name\":\"first\""));
    assert_null(strstr(sp.members, "again"));
    assert_null(strstr(sp.members, "third"));
    assert_string_equal(
        sp.depts, "[{\"d\":1,\"h\":null,\"m\":null,\"n\":3,\"p\":3,\"s\":false,"
                  "\"u\":[\"x\",\"y\",\"x\"],\"x\":false},"
                  "{\"d\":2,\"h\":null,\"m\":null,\"n\":0,\"p\":0,\"s\":true,\"u\":[],\"x\":false},"
                  "{\"d\":3,\"h\":null,\"m\":null,\"n\":3,\"p\":3,\"s\":false,"
                  "\"u\":[\"z\",\"\\u0078\",\"y\"],\"x\":false}]");
    sync_params_free(&sp);

    /* Only the unknown department: nothing to write but its row. */
    assert_int_equal(sync_batch_params(&b[1], 1, NULL, NULL, &sp), 0);
    assert_null(sp.members);
    assert_null(sp.fresh);
    assert_string_equal(
        sp.depts,
        "[{\"d\":2,\"h\":null,\"m\":null,\"n\":0,\"p\":0,\"s\":true,\"u\":[],\"x\":false}]");
    sync_params_free(&sp);
    for (int i = 0; i < 3; i++)
        sync_batch_free(b[i]);
}

/* Members go out in userid order (bytes), whatever order the answers had. */
static void test_params_userid_order(void **state)
{
    ds_batch *b[2];
    sync_params sp;
    char ids[256];
    (void)state;

    b[0] = parse(1, "{\"userlist\":[{\"userid\":\"u3\"},{\"userid\":\"u10\"},{\"userid\":\"u1\"}]}",
                 3);
    b[1] = parse(2, "{\"userlist\":[{\"userid\":\"u2\"},{\"userid\":\"u1\"}]}", 2);
    assert_int_equal(sync_batch_params(b, 2, NULL, NULL, &sp), 0);
    userids(sp.members, ids, sizeof(ids));
    assert_string_equal(ids, "u1 u10 u2 u3");
    sync_params_free(&sp);
    sync_batch_free(b[0]);
    sync_batch_free(b[1]);
}

static void test_empty_department(void **state)
{
    sync_params sp;
    (void)state;

    ds_batch *b = parse(4, "{\"errcode\":0,\"userlist\":[]}", 0);
    assert_non_null(b->body); /* known upstream, no members */
    assert_int_equal(sync_batch_params(&b, 1, NULL, NULL, &sp), 0);
    assert_null(sp.members);
    assert_null(sp.fresh);
    /* No member fails to name the department: the digest (SHA-256 of no text)
     * is kept. */
    assert_string_equal(sp.depts,
                        "[{\"d\":4,\"h\":\"e3b0c44298fc1c149afbf4c8996fb924\",\"m\":\"\",\"n\":0,"
                        "\"p\":0,\"s\":false,\"u\":[],\"x\":false}]");
    sync_params_free(&sp);
    sync_batch_free(b);
}

/* The digest of an answer: equal for the same members (whitespace and key order
 * aside), different when a field changes; kept only when every member names
 * the department. An unchanged batch sends no member and no userid; two
 * departments of one statement that disagree on a member: the one whose copy is
 * not written keeps no digest. */
static void test_digests(void **state)
{
    ds_batch *b[4];
    sync_params sp;
    char ids[256];
    (void)state;

    b[0] = parse(5,
                 "{\"userlist\":[{\"userid\":\"m\",\"name\":\"M\",\"department\":[3,5]},"
                 "{\"userid\":\"n\",\"department\":[5]}]}",
                 2);
    b[1] = parse(5,
                 "{\"userlist\": [ {\"department\":[3,5], \"name\":\"M\", \"userid\":\"m\"},"
                 "{\"department\":[5],\"userid\":\"n\"}]}",
                 2);
    b[2] = parse(5,
                 "{\"userlist\":[{\"userid\":\"m\",\"name\":\"M2\",\"department\":[3,5]},"
                 "{\"userid\":\"n\",\"department\":[5]}]}",
                 2);
    b[3] = parse(3, "{\"userlist\":[{\"userid\":\"m\",\"name\":\"M\",\"department\":[3,5]}]}", 1);
    for (int i = 0; i < 4; i++)
        assert_int_equal(b[i]->record, 1);
    assert_string_equal(b[0]->digest, b[1]->digest);
    assert_string_not_equal(b[0]->digest, b[2]->digest);

    const char *hex = b[0]->digest;
    assert_int_equal(strlen(hex), SYNC_DIGEST_HEX);
    assert_int_equal(strspn(hex, "0123456789abcdef"), SYNC_DIGEST_HEX);

    /* Department 5 unchanged, department 3 not: only 3's member goes out. */
    b[0]->unchanged = 1;
    assert_int_equal(sync_batch_params((ds_batch *[]){b[0], b[3]}, 2, NULL, NULL, &sp), 0);
    userids(sp.members, ids, sizeof(ids));
    assert_string_equal(ids, "m");
    assert_non_null(strstr(sp.depts,
                           "{\"d\":5,\"h\":null,\"m\":null,\"n\":2,\"p\":1,\"s\":false,\"u\":[],"
                           "\"x\":true}"));
    char want[200];
    snprintf(want, sizeof(want),
             "{\"d\":3,\"h\":\"%s\",\"m\":\"%016llx%016llx\",\"n\":1,\"p\":1,\"s\":false,"
             "\"u\":[\"m\"],\"x\":false}",
             b[3]->digest, (unsigned long long)uid_hash("m", 1), (unsigned long long)b[3]->m[0].th);
    assert_non_null(strstr(sp.depts, want));
    sync_params_free(&sp);
    b[0]->unchanged = 0;

    /* 5 (M2) and 3 (M) disagree on m: 5's copy is written (first), so 3 keeps
     * no digest; 5 keeps its own. */
    assert_int_equal(sync_batch_params((ds_batch *[]){b[2], b[3]}, 2, NULL, NULL, &sp), 0);
    assert_non_null(strstr(sp.members, "\"M2\""));
    assert_non_null(strstr(sp.depts, "{\"d\":3,\"h\":null,"));
    assert_null(strstr(sp.depts, "{\"d\":5,\"h\":null,"));
    sync_params_free(&sp);

    /* 5 and 3 agree on m: both keep their digests. */
    assert_int_equal(sync_batch_params((ds_batch *[]){b[0], b[3]}, 2, NULL, NULL, &sp), 0);
    assert_null(strstr(sp.depts, "\"h\":null"));
    sync_params_free(&sp);
    for (int i = 0; i < 4; i++)
        sync_batch_free(b[i]);
}

/* During a first sync (a set given), a member goes to fresh the first time any
 * statement sends it, and to members (ON CONFLICT) every later time; the
 * statement's own duplicates are still written once. */
static void test_params_fresh_split(void **state)
{
    ds_batch *b[2];
    sync_params sp;
    uid_set written;
    char ids[256];
    (void)state;

    uid_set_init(&written);
    b[0] = parse(1,
                 "{\"userlist\":[{\"userid\":\"u2\"},{\"userid\":\"u1\"},"
                 "{\"userid\":\"u\\u0032\"}]}",
                 3);
    b[1] = parse(2, "{\"userlist\":[{\"userid\":\"u3\"},{\"userid\":\"u1\"}]}", 2);
    assert_int_equal(sync_batch_params(&b[0], 1, &written, NULL, &sp), 0);
    assert_null(sp.members);
    userids(sp.fresh, ids, sizeof(ids));
    assert_string_equal(ids, "u1 u2");
    assert_int_equal(written.n, 2);
    sync_params_free(&sp);

    /* u1 went out before: it may be in users now. */
    assert_int_equal(sync_batch_params(&b[1], 1, &written, NULL, &sp), 0);
    userids(sp.members, ids, sizeof(ids));
    assert_string_equal(ids, "u1");
    userids(sp.fresh, ids, sizeof(ids));
    assert_string_equal(ids, "u3");
    sync_params_free(&sp);

    /* Both again: nothing is surely new any more. */
    assert_int_equal(sync_batch_params(b, 2, &written, NULL, &sp), 0);
    userids(sp.members, ids, sizeof(ids));
    assert_string_equal(ids, "u1 u2 u3");
    assert_null(sp.fresh);
    sync_params_free(&sp);
    uid_set_free(&written);
    sync_batch_free(b[0]);
    sync_batch_free(b[1]);
}

/* Loads a map of two members (userid, text fingerprint) as sql_departments
 * would hand it over. */
static int load_pairs(member_map *map, const char *u1, uint64_t th1, const char *u2, uint64_t th2)
{
    char hex[80];

    snprintf(hex, sizeof(hex), "%016llx%016llx%016llx%016llx",
             (unsigned long long)uid_hash(u1, strlen(u1)), (unsigned long long)th1,
             (unsigned long long)uid_hash(u2, strlen(u2)), (unsigned long long)th2);
    return member_map_load_hex(map, hex);
}

/* The member map (member_map.h): a changed department sends only the members
 * whose text is not the one users holds; the map then holds what was sent, and
 * a statement written again sends the same members as the first time. */
static void test_member_map(void **state)
{
    const char *answer = "{\"userlist\":[{\"userid\":\"a\",\"name\":\"A\",\"department\":[7]},"
                         "{\"userid\":\"b\",\"name\":\"B2\",\"department\":[7]},"
                         "{\"userid\":\"c\",\"department\":[7]}]}";
    ds_batch *b = parse(7, answer, 3), *again;
    member_map map = {0};
    sync_params sp;
    char ids[256];
    (void)state;

    /* users holds a's text; b's is an older one; c is not known. */
    assert_int_equal(load_pairs(&map, "a", b->m[0].th, "b", b->m[1].th ^ 1), 0);
    assert_int_equal(map.n, 2);
    assert_true(member_map_holds(&map, uid_hash("a", 1), b->m[0].th));
    assert_false(member_map_holds(&map, uid_hash("b", 1), b->m[1].th));

    assert_int_equal(sync_batch_params(&b, 1, NULL, &map, &sp), 0);
    userids(sp.members, ids, sizeof(ids));
    assert_string_equal(ids, "b c");
    /* The lists and hashes still name every member (deletions, the digest). */
    assert_non_null(strstr(sp.depts, "\"u\":[\"a\",\"b\",\"c\"]"));
    assert_non_null(strstr(sp.depts, "\"h\":\""));
    sync_params_free(&sp);
    /* b's new text is what users will hold; c stays unknown. */
    assert_true(member_map_holds(&map, uid_hash("b", 1), b->m[1].th));
    assert_false(member_map_holds(&map, uid_hash("c", 1), b->m[2].th));

    /* The same statement again (a retry): the same members, whatever the map
     * says now. */
    assert_int_equal(sync_batch_params(&b, 1, NULL, &map, &sp), 0);
    userids(sp.members, ids, sizeof(ids));
    assert_string_equal(ids, "b c");
    sync_params_free(&sp);

    /* The next answer of the department, the same: only c, still unknown. */
    again = parse(7, answer, 3);
    assert_int_equal(sync_batch_params(&again, 1, NULL, &map, &sp), 0);
    userids(sp.members, ids, sizeof(ids));
    assert_string_equal(ids, "c");
    sync_params_free(&sp);

    /* Two departments that disagree on a member: it is unknown, so sent. */
    assert_int_equal(load_pairs(&map, "a", b->m[0].th, "a", b->m[0].th ^ 2), 0);
    assert_int_equal(map.n, 1);
    assert_false(member_map_holds(&map, uid_hash("a", 1), b->m[0].th));
    /* Text that is not hex pairs: no map, every member sent. */
    assert_int_equal(member_map_load_hex(&map, "0123"), -1);
    assert_int_equal(map.n, 0);
    assert_int_equal(member_map_load_hex(&map, "zz23456789abcdef0123456789abcdef"), -1);
    assert_int_equal(member_map_load_hex(&map, ""), 0);
    member_map_free(&map);
    sync_batch_free(again);
    sync_batch_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_keeps_members),
        cmocka_unit_test(test_parse_refuses),
        cmocka_unit_test(test_params_each_member_once),
        cmocka_unit_test(test_params_userid_order),
        cmocka_unit_test(test_empty_department),
        cmocka_unit_test(test_parse_key_order),
        cmocka_unit_test(test_parse_many_fields),
        cmocka_unit_test(test_params_fresh_split),
        cmocka_unit_test(test_digests),
        cmocka_unit_test(test_member_map),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
