/* Logging: JSON lines with the fixed fields, escaping, masking, levels. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "common/log.h"

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *capture(void (*emit)(void))
{
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    log_set_stream(f);
    emit();
    log_set_stream(NULL);
    fclose(f);
    return out;
}

static void emit_one(void)
{
    log_info("run \"started\"\n", LF_I("run_id", 42), LF_S("corp_id", "ww1"),
             LF_MOBILE("mobile", "13800001234"), LF_D("rate", 9.5), LF_S("none", NULL));
}

static void test_json_line(void **state)
{
    char *out;
    json_object *o, *v;
    (void)state;
    log_init(LOG_INFO, 1, "host-a:12", 3);
    out = capture(emit_one);
    assert_non_null(out);
    assert_int_equal(out[strlen(out) - 1], '\n');
    assert_ptr_equal(strchr(out, '\n'), out + strlen(out) - 1); /* exactly one line */
    o = json_tokener_parse(out);
    assert_non_null(o);
    assert_true(json_object_object_get_ex(o, "ts", &v));
    assert_int_equal(strlen(json_object_get_string(v)), 24);
    assert_true(json_object_object_get_ex(o, "level", &v));
    assert_string_equal(json_object_get_string(v), "info");
    assert_true(json_object_object_get_ex(o, "msg", &v));
    assert_string_equal(json_object_get_string(v), "run \"started\"\n");
    assert_true(json_object_object_get_ex(o, "instance", &v));
    assert_string_equal(json_object_get_string(v), "host-a:12");
    assert_true(json_object_object_get_ex(o, "worker_id", &v));
    assert_int_equal(json_object_get_int(v), 3);
    assert_true(json_object_object_get_ex(o, "run_id", &v));
    assert_int_equal(json_object_get_int64(v), 42);
    assert_true(json_object_object_get_ex(o, "mobile", &v));
    assert_string_equal(json_object_get_string(v), "138******34");
    assert_true(json_object_object_get_ex(o, "none", &v));
    assert_null(v);
    assert_null(strstr(out, "13800001234"));
    json_object_put(o);
    free(out);
}

static void emit_debug(void)
{
    log_debug("hidden");
    log_warn("shown");
}

static void test_levels_and_text(void **state)
{
    char *out;
    (void)state;
    log_init(LOG_INFO, 0, "h", 1);
    out = capture(emit_debug);
    assert_null(strstr(out, "hidden"));
    assert_non_null(strstr(out, "warn  [h w1] shown"));
    free(out);
    assert_int_equal(log_level_parse("WARN"), LOG_WARN);
    assert_int_equal(log_level_parse("verbose"), -1);
}

static void test_mask(void **state)
{
    char out[32];
    (void)state;
    log_mask_mobile("13800001234", out, sizeof(out));
    assert_string_equal(out, "138******34");
    log_mask_mobile("+8613800001234", out, sizeof(out));
    assert_string_equal(out, "+86*********34");
    log_mask_mobile("12345", out, sizeof(out));
    assert_string_equal(out, "*****");
    log_mask_mobile("", out, sizeof(out));
    assert_string_equal(out, "");
}

static void test_escape(void **state)
{
    char out[64];
    (void)state;
    log_json_escape("a\"b\\c\x01\t", out, sizeof(out));
    assert_string_equal(out, "a\\\"b\\\\c\\u0001\\t");
    /* Truncation never splits an escape or overruns. */
    log_json_escape("\"\"\"\"", out, 4);
    assert_string_equal(out, "\\\"");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_line),
        cmocka_unit_test(test_levels_and_text),
        cmocka_unit_test(test_mask),
        cmocka_unit_test(test_escape),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
