/* buf and the JSON writer: growth, detach, commas, nesting, escaping, UTF-8.
 * Output is compared byte for byte and also parsed back with json-c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <math.h>
#include <cmocka.h>
#include <json-c/json.h>

#include "common/buf.h"

static void test_buf_basics(void **state)
{
    buf b;
    size_t len = 99;
    char *s;

    (void)state;
    buf_init(&b);
    s = buf_detach(&b, &len); /* empty buffer gives "" */
    assert_non_null(s);
    assert_string_equal(s, "");
    assert_int_equal(len, 0);
    free(s);

    assert_int_equal(buf_puts(&b, "hello"), 0);
    assert_int_equal(buf_append(&b, ", world", 7), 0);
    assert_int_equal(buf_printf(&b, " %d-%s", 42, "x"), 0);
    assert_string_equal(b.data, "hello, world 42-x");
    assert_int_equal(b.len, 17);
    buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_string_equal(b.data, "");

    /* Growth well past the initial capacity, via every append path. */
    for (int i = 0; i < 1000; i++)
        assert_int_equal(buf_printf(&b, "%04d", i), 0);
    char big[5000];
    memset(big, 'z', sizeof(big));
    assert_int_equal(buf_append(&b, big, sizeof(big)), 0);
    assert_int_equal(buf_printf(&b, "%s", "!"), 0);
    assert_int_equal(b.len, 4000 + 5000 + 1);
    assert_true(b.cap > b.len);
    assert_int_equal(b.data[b.len], '\0');
    assert_memory_equal(b.data, "000000010002", 12);
    assert_memory_equal(b.data + 3996, "0999zz", 6);
    s = buf_detach(&b, &len);
    assert_int_equal(len, 9001);
    assert_int_equal(strlen(s), 9001);
    assert_null(b.data); /* detached: b is empty and reusable */
    assert_int_equal(b.len, 0);
    free(s);
    assert_int_equal(buf_append(&b, "x", 1), 0);
    buf_free(&b);
    buf_free(&b); /* idempotent */
}

static char *render(void (*fn)(jw *))
{
    buf b;
    jw w;

    buf_init(&b);
    jw_init(&w, &b);
    fn(&w);
    return buf_detach(&b, NULL);
}

static void doc_nested(jw *w)
{
    jw_obj_begin(w);
    jw_kint(w, "a", 1);
    jw_key(w, "b");
    jw_arr_begin(w);
    jw_int(w, 1);
    jw_int(w, -2);
    jw_obj_begin(w);
    jw_knull(w, "c");
    jw_obj_end(w);
    jw_arr_begin(w);
    jw_arr_end(w);
    jw_str(w, NULL);
    jw_arr_end(w);
    jw_key(w, "d");
    jw_obj_begin(w);
    jw_obj_end(w);
    jw_key(w, "e");
    jw_arr_begin(w);
    jw_arr_end(w);
    jw_kbool(w, "f", 1);
    jw_kbool(w, "g", 0);
    jw_kdbl(w, "h", 1.5);
    jw_kstr(w, "s", "x");
    jw_kstr(w, "n", NULL);
    jw_key(w, "r");
    jw_raw(w, "{\"pre\":[1,2]}");
    jw_key(w, "o");
    jw_obj_begin(w);
    jw_key(w, "deep");
    jw_arr_begin(w);
    jw_arr_begin(w);
    jw_bool(w, 1);
    jw_null(w);
    jw_arr_end(w);
    jw_raw(w, "3");
    jw_arr_end(w);
    jw_obj_end(w);
    jw_obj_end(w);
}

static void test_json_nesting_and_commas(void **state)
{
    char *s = render(doc_nested);

    (void)state;
    assert_string_equal(s,
                        "{\"a\":1,\"b\":[1,-2,{\"c\":null},[],null],\"d\":{},\"e\":[],\"f\":true,"
                        "\"g\":false,\"h\":1.5,\"s\":\"x\",\"n\":null,\"r\":{\"pre\":[1,2]},"
                        "\"o\":{\"deep\":[[true,null],3]}}");
    json_object *o = json_tokener_parse(s);
    assert_non_null(o);
    json_object_put(o);
    free(s);
}

static void doc_top_array(jw *w)
{
    jw_arr_begin(w);
    for (int i = 0; i < 3; i++) {
        jw_obj_begin(w);
        jw_kint(w, "i", i);
        jw_obj_end(w);
    }
    jw_arr_end(w);
}

static void doc_deep(jw *w)
{
    for (int i = 0; i < 31; i++)
        jw_arr_begin(w);
    jw_int(w, 1);
    jw_int(w, 2);
    for (int i = 0; i < 31; i++) {
        jw_arr_end(w);
        if (i == 15)
            jw_int(w, 3);
    }
}

static void test_json_arrays_and_depth(void **state)
{
    char *s;

    (void)state;
    s = render(doc_top_array);
    assert_string_equal(s, "[{\"i\":0},{\"i\":1},{\"i\":2}]");
    free(s);

    s = render(doc_deep);
    json_object *o = json_tokener_parse(s);
    assert_non_null(o);
    json_object_put(o);
    assert_non_null(strstr(s, "[1,2]]"));
    assert_non_null(strstr(s, "],3]"));
    free(s);
}

static char *json_of(const char *str, size_t n)
{
    buf b;

    buf_init(&b);
    buf_json_str(&b, str, n);
    return buf_detach(&b, NULL);
}

static void expect_json_str(const char *in, size_t n, const char *want)
{
    char *got = json_of(in, n);

    if (strcmp(got, want) != 0)
        fail_msg("escaped to %s, want %s", got, want);
    json_object *o = json_tokener_parse(got);
    if (!o)
        fail_msg("json-c rejects %s", got);
    json_object_put(o);
    free(got);
}

#define EXPECT(lit, want) expect_json_str((lit), sizeof(lit) - 1, (want))

static void test_json_escaping(void **state)
{
    (void)state;
    EXPECT("", "\"\"");
    EXPECT("plain", "\"plain\"");
    EXPECT("q\"b\\s/", "\"q\\\"b\\\\s/\"");
    EXPECT("\b\f\n\r\t", "\"\\b\\f\\n\\r\\t\"");
    EXPECT("\x01\x1f\x7f", "\"\\u0001\\u001f\x7f\"");
    EXPECT("a\0b", "\"a\\u0000b\"");
    /* Valid UTF-8 passes through unchanged: 2, 3 and 4 byte sequences. */
    EXPECT("\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80",
           "\"\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80\"");
    EXPECT("\xef\xbf\xbf\xf4\x8f\xbf\xbf", "\"\xef\xbf\xbf\xf4\x8f\xbf\xbf\"");
    /* Invalid UTF-8 becomes U+FFFD (one per maximal invalid subpart). */
#define R "\xef\xbf\xbd"
    EXPECT("\xff", "\"" R "\"");
    EXPECT("a\xc3", "\"a" R "\""); /* truncated at the end */
    EXPECT("\xe2\x82"
           "A",
           "\"" R "A\"");                          /* truncated mid-string */
    EXPECT("\x80x", "\"" R "x\"");                 /* lone continuation byte */
    EXPECT("\xc0\xaf", "\"" R R "\"");             /* overlong '/' */
    EXPECT("\xe0\x80\xaf", "\"" R R R "\"");       /* overlong 3-byte */
    EXPECT("\xed\xa0\x80", "\"" R R R "\"");       /* UTF-16 surrogate */
    EXPECT("\xf4\x90\x80\x80", "\"" R R R R "\""); /* above U+10FFFF */
    EXPECT("\xf0\x9f\x98", "\"" R "\"");           /* truncated emoji */
    EXPECT("ok\xfe\"", "\"ok" R "\\\"\"");
#undef R

    /* Decoding the output gives the input back for valid text. */
    const char *orig = "line1\nline2\t\"quoted\" \\ \x01 \xe4\xb8\xad";
    char *j = json_of(orig, strlen(orig));
    json_object *o = json_tokener_parse(j);
    assert_non_null(o);
    assert_string_equal(json_object_get_string(o), orig);
    json_object_put(o);
    free(j);
}

static void doc_scalars(jw *w)
{
    jw_arr_begin(w);
    jw_int(w, LLONG_MIN);
    jw_int(w, LLONG_MAX);
    jw_dbl(w, 0.1);
    jw_dbl(w, -2.5e-300);
    jw_dbl(w, 1e21);
    jw_dbl(w, NAN);
    jw_dbl(w, INFINITY);
    jw_dbl(w, 3);
    jw_strn(w, "ab\0c", 4);
    jw_str(w, "k\"ey");
    jw_arr_end(w);
    jw_obj_begin(w);
    jw_kstr(w, "we\"ird\n", "v");
    jw_kdbl(w, "pi", 3.141592653589793);
    jw_obj_end(w);
}

static void test_json_scalars(void **state)
{
    char *s = render(doc_scalars);

    (void)state;
    assert_string_equal(s, "[-9223372036854775808,9223372036854775807,0.1,-2.5e-300,1e+21,null,"
                           "null,3,\"ab\\u0000c\",\"k\\\"ey\"]"
                           "{\"we\\\"ird\\n\":\"v\",\"pi\":3.141592653589793}");
    free(s);
    /* A value that needs 17 digits reads back exactly. */
    buf b;
    jw w;
    buf_init(&b);
    jw_init(&w, &b);
    jw_dbl(&w, 0.1 + 0.2);
    assert_true(strtod(b.data, NULL) == 0.1 + 0.2);
    buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buf_basics),
        cmocka_unit_test(test_json_nesting_and_commas),
        cmocka_unit_test(test_json_arrays_and_depth),
        cmocka_unit_test(test_json_escaping),
        cmocka_unit_test(test_json_scalars),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
