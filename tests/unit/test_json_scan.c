/* worker/json_scan: the strict checker (every prefix of a valid document is
 * refused, RFC 8259 corner cases, UTF-8), and the in-place reader against
 * json-c on the same text. */
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

static int ok(const char *s)
{
    char why[96];
    return js_check(s, strlen(s), why, sizeof(why)) == 0;
}

static void test_accepts(void **state)
{
    static const char *const good[] = {"{}",
                                       "[]",
                                       " { } ",
                                       "0",
                                       "-0",
                                       "12",
                                       "-1.5e10",
                                       "1E-2",
                                       "0.25",
                                       "true",
                                       "false",
                                       "null",
                                       "\"\"",
                                       "\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\"",
                                       "\"\\u00e9\\u4e2d\"",
                                       "\"\\ud83d\\ude00\"",
                                       "\"王秀英\"",
                                       "\"\xf0\x9f\x98\x80\"",
                                       "{\"a\":[1,{\"b\":null}],\"c\":\"d\"}",
                                       "[[[[[[[[[[1]]]]]]]]]]",
                                       "\n\t{\"errcode\":0}\r\n"};
    (void)state;
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        if (!ok(good[i]))
            fail_msg("refused valid JSON: %s", good[i]);
}

static void test_refuses(void **state)
{
    static const char *const bad[] = {"",
                                      " ",
                                      "{",
                                      "}",
                                      "[1,]",
                                      "{\"a\":1,}",
                                      "{'a':1}",
                                      "01",
                                      "1.",
                                      ".5",
                                      "+1",
                                      "-",
                                      "1e",
                                      "1e+",
                                      "nul",
                                      "tru",
                                      "True",
                                      "NaN",
                                      "[1 2]",
                                      "{\"a\" 1}",
                                      "{1:2}",
                                      "\"a",
                                      "\"\\x\"",
                                      "\"\\u12\"",
                                      "\"\\u12g4\"",
                                      "\"\\ud800\"",
                                      "\"\\udc00\"",
                                      "\"\\u0000\"",
                                      "\"\x01\"",
                                      "{} {}",
                                      "[1]x",
                                      "\"\xc0\x80\"",
                                      "\"\xed\xa0\x80\"",
                                      "\"\xff\"",
                                      "\"\xe4\xb8\"",
                                      "\"\xf5\x80\x80\x80\""};
    char why[96];
    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        why[0] = '\0';
        if (js_check(bad[i], strlen(bad[i]), why, sizeof(why)) == 0)
            fail_msg("accepted invalid JSON: %s", bad[i]);
        assert_true(strstr(why, "at byte") != NULL);
    }
    /* NUL inside the text is not JSON either. */
    assert_int_equal(js_check("[1]\0", 4, why, sizeof(why)), -1);
}

/* Every byte value, alone in the middle of a run of plain string contents, is
 * judged on its own: the checker skips plain runs by a table (string_stop). */
static void test_string_bytes(void **state)
{
    char s[40], why[96];
    (void)state;

    for (int b = 1; b < 256; b++) {
        for (int at = 1; at < 20; at += 6) {
            memset(s, 'a', sizeof(s));
            s[0] = '"';
            s[at] = (char)b;
            s[30] = '"';
            int want = b >= 0x20 && b < 0x80 && b != '"' && b != '\\';
            int got = js_check(s, 31, why, sizeof(why)) == 0;
            if (got != want)
                fail_msg("byte 0x%02x at %d: %s", b, at, got ? "accepted" : why);
        }
    }
}

static void test_depth(void **state)
{
    char deep[200];
    (void)state;
    memset(deep, '[', 64);
    memset(deep + 64, ']', 64);
    deep[128] = '\0';
    assert_true(ok(deep));
    memset(deep, '[', 65);
    memset(deep + 65, ']', 65);
    deep[130] = '\0';
    assert_false(ok(deep));
}

static const char doc[] =
    "{\"errcode\":0,\"errmsg\":\"ok\",\"userlist\":[{\"userid\":\"u1\",\"name\":\"\\u738b\","
    "\"department\":[1,2],\"status\":1,\"main_department\":1,\"extattr\":{\"attrs\":[]}},"
    "{\"userid\":\"u\\\"2\",\"name\":\"李\",\"department\":[3],\"order\":[0],\"mobile\":"
    "\"13800000000\",\"x\":[true,false,null,-1.5e3]}]}";

/* A truncated answer (the simulator's malformed fault) is refused at every cut. */
static void test_every_prefix_refused(void **state)
{
    char why[96];
    size_t n = strlen(doc);
    (void)state;
    assert_int_equal(js_check(doc, n, why, sizeof(why)), 0);
    for (size_t k = 0; k < n; k++)
        if (js_check(doc, k, why, sizeof(why)) == 0)
            fail_msg("accepted a prefix of %zu bytes", k);
}

static void test_reader_matches_json_c(void **state)
{
    js_val root, ul, m, v, k;
    js_iter it, mi;
    json_object *j = json_tokener_parse(doc), *jul;
    long long x;
    char buf[64];
    int i = 0;
    (void)state;

    assert_non_null(j);
    js_root(doc, strlen(doc), &root);
    assert_int_equal(root.type, JS_OBJECT);
    assert_true(js_get(&root, "errcode", &v) && js_int(&v, &x) && x == 0);
    assert_true(js_get(&root, "errmsg", &v) && js_str_is(&v, "ok"));
    assert_false(js_get(&root, "nope", &v));
    assert_true(js_get(&root, "userlist", &ul) && ul.type == JS_ARRAY);
    json_object_object_get_ex(j, "userlist", &jul);
    assert_true(js_iter_begin(&it, &ul));
    while (js_next(&it, NULL, &m)) {
        json_object *jm = json_object_array_get_idx(jul, (size_t)i++), *ju, *jd;
        json_object_object_get_ex(jm, "userid", &ju);
        assert_int_equal(m.type, JS_OBJECT);
        assert_true(js_get(&m, "userid", &v));
        assert_true(js_str_is(&v, json_object_get_string(ju)));
        assert_int_equal(js_str_copy(&v, buf, sizeof(buf)),
                         (int)strlen(json_object_get_string(ju)));
        assert_string_equal(buf, json_object_get_string(ju));
        assert_true(js_get(&m, "name", &v));
        json_object_object_get_ex(jm, "name", &ju);
        js_str_copy(&v, buf, sizeof(buf));
        assert_string_equal(buf, json_object_get_string(ju));
        assert_true(js_get(&m, "department", &v) && v.type == JS_ARRAY);
        json_object_object_get_ex(jm, "department", &jd);
        js_iter di;
        js_val d;
        size_t nd = 0;
        js_iter_begin(&di, &v);
        while (js_next(&di, NULL, &d)) {
            assert_true(js_int(&d, &x));
            assert_int_equal(x, json_object_get_int(json_object_array_get_idx(jd, nd++)));
        }
        assert_int_equal(nd, json_object_array_length(jd));
        /* Every member's keys, in order, as json-c sees them. */
        size_t nk = 0;
        js_iter_begin(&mi, &m);
        while (js_next(&mi, &k, &v))
            nk++;
        assert_int_equal(nk, (size_t)json_object_object_length(jm));
    }
    assert_int_equal(i, 2);
    json_object_put(j);
}

/* Writes a value's structure (keys, scalars' text, brackets) with the sized
 * reader (js_next). */
static void dump_sized(const js_val *v, char *out, size_t *o)
{
    js_iter it;
    js_val k, e;
    int first = 1;

    if (v->type != JS_OBJECT && v->type != JS_ARRAY) {
        *o += (size_t)sprintf(out + *o, "%.*s", (int)v->n, v->p);
        return;
    }
    out[(*o)++] = v->type == JS_OBJECT ? '{' : '[';
    js_iter_begin(&it, v);
    while (js_next(&it, &k, &e)) {
        if (!first)
            out[(*o)++] = ',';
        first = 0;
        if (v->type == JS_OBJECT)
            *o += (size_t)sprintf(out + *o, "%.*s:", (int)k.n, k.p);
        dump_sized(&e, out, o);
    }
    out[(*o)++] = v->type == JS_OBJECT ? '}' : ']';
    out[*o] = '\0';
}

/* The same with the streaming reader; containers at odd positions (counted
 * across the document) are left to js_next_shallow to skip, and written as "~".
 * Returns the end of v. */
static const char *dump_streamed(const js_val *v, const char *end, char *out, size_t *o, int *nth,
                                 int skip_odd)
{
    js_iter it;
    js_val k, e;
    int first = 1;

    if (v->type != JS_OBJECT && v->type != JS_ARRAY) {
        *o += (size_t)sprintf(out + *o, "%.*s", (int)v->n, v->p);
        return v->p + v->n;
    }
    out[(*o)++] = v->type == JS_OBJECT ? '{' : '[';
    assert_true(js_iter_begin_in(&it, v, end));
    while (js_next_shallow(&it, &k, &e)) {
        if (!first)
            out[(*o)++] = ',';
        first = 0;
        if (v->type == JS_OBJECT)
            *o += (size_t)sprintf(out + *o, "%.*s:", (int)k.n, k.p);
        if (e.type == JS_OBJECT || e.type == JS_ARRAY) {
            assert_int_equal(e.n, 0);
            if (skip_odd && (*nth)++ % 2) {
                out[(*o)++] = '~';
                continue;
            }
            js_iter_resume(&it, dump_streamed(&e, end, out, o, nth, skip_odd));
        } else {
            dump_streamed(&e, end, out, o, nth, skip_odd);
        }
    }
    out[(*o)++] = v->type == JS_OBJECT ? '}' : ']';
    out[*o] = '\0';
    return js_iter_after(&it);
}

static void test_streaming_reader(void **state)
{
    static const char *const docs[] = {
        "{}",
        "[]",
        " { \"a\" : [ ] , \"b\" : { } } ",
        "[1,[2,[3,[]]],{\"x\":{\"y\":[{}]}},\"s]}\\\"\"]",
        "{\"errcode\":0,\"userlist\":[{\"userid\":\"u1\",\"department\":[1,2],"
        "\"extattr\":{\"attrs\":[]}},{\"userid\":\"u2\",\"department\":[]}],\"z\":null}",
        "[ [ ] , [ [ ] ] , { \"k\" : [ 1 , 2 ] } ]",
    };
    char a[512], b[512], c[512];
    (void)state;

    for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++) {
        const char *d = docs[i], *end = d + strlen(d), *stop;
        js_val root, sroot;
        size_t oa = 0, ob = 0, oc = 0;
        int nth = 0;

        assert_true(ok(d));
        js_root(d, strlen(d), &root);
        dump_sized(&root, a, &oa);
        js_root_shallow(d, strlen(d), &sroot);
        assert_int_equal(sroot.n, 0);
        stop = dump_streamed(&sroot, end, b, &ob, &nth, 0);
        assert_string_equal(a, b);
        /* The end it reports is the root's own end. */
        assert_ptr_equal(stop, root.p + root.n);
        /* Containers not walked are skipped, and what follows them is read right. */
        nth = 0;
        dump_streamed(&sroot, end, c, &oc, &nth, 1);
        for (size_t x = 0, y = 0; c[y]; y++) {
            if (c[y] == '~') { /* a skipped container: a[x..] holds it, brackets balanced */
                int depth = 0;
                do {
                    depth += a[x] == '{' || a[x] == '[';
                    depth -= a[x] == '}' || a[x] == ']';
                    x++;
                } while (depth > 0);
                continue;
            }
            if (a[x] != c[y])
                fail_msg("doc %zu: skipping gave %s, walking %s", i, c, a);
            x++;
        }
    }
}

static void test_ints(void **state)
{
    js_val v;
    long long x;
    (void)state;
    js_root("-42", 3, &v);
    assert_true(js_int(&v, &x) && x == -42);
    js_root("1.0", 3, &v);
    assert_false(js_int(&v, &x)); /* a double, as json-c says */
    js_root("1e3", 3, &v);
    assert_false(js_int(&v, &x));
    js_root("99999999999999999999", 20, &v);
    assert_false(js_int(&v, &x)); /* out of range */
    js_root("\"1\"", 3, &v);
    assert_false(js_int(&v, &x));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accepts),
        cmocka_unit_test(test_refuses),
        cmocka_unit_test(test_string_bytes),
        cmocka_unit_test(test_depth),
        cmocka_unit_test(test_every_prefix_refused),
        cmocka_unit_test(test_reader_matches_json_c),
        cmocka_unit_test(test_streaming_reader),
        cmocka_unit_test(test_ints),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
