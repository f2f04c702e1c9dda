/* worker/sync/sync_modern: the tree from department/simplelist named by the
 * app's department/list, roster pages of user/list_id as array literals, which
 * restricted fields an answer carries, and the message for an errcode no retry
 * fixes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "worker/sync/sync_modern.h"

static json_object *parse(const char *s)
{
    json_object *o = json_tokener_parse(s);
    assert_non_null(o);
    return o;
}

static void test_tree_named_from_the_app(void **state)
{
    json_object *tree = parse("{\"errcode\":0,\"department_id\":[{\"id\":1,\"parentid\":0,"
                              "\"order\":100},{\"id\":3,\"parentid\":1,\"order\":7},{\"id\":2,"
                              "\"parentid\":1,\"order\":5}]}");
    json_object *list = parse("{\"errcode\":0,\"department\":[{\"id\":3,\"name\":\"Three\","
                              "\"parentid\":1,\"order\":7},{\"id\":2,\"name\":\"Two\"}]}");
    char *json = NULL, why[200];
    long long *vis = NULL;
    int n = -1;
    (void)state;

    assert_int_equal(sync_modern_departments(tree, list, &json, &vis, &n, why, sizeof(why)), 0);
    /* every department of the tree; names where the app has them, "" elsewhere */
    assert_string_equal(json, "{\"department\":[{\"id\":1,\"name\":\"\",\"parentid\":0,\"order\":"
                              "100},{\"id\":3,\"name\":\"Three\",\"parentid\":1,\"order\":7},{\"id"
                              "\":2,\"name\":\"Two\",\"parentid\":1,\"order\":5}]}");
    /* members are fetched for the app's range only, sorted */
    assert_int_equal(n, 2);
    assert_true(vis[0] == 2 && vis[1] == 3);
    free(json);
    free(vis);

    /* no app list: every department is visible */
    assert_int_equal(sync_modern_departments(tree, NULL, &json, &vis, &n, why, sizeof(why)), 0);
    assert_int_equal(n, 3);
    assert_true(vis[0] == 1 && vis[1] == 2 && vis[2] == 3);
    free(json);
    free(vis);
    json_object_put(tree);
    json_object_put(list);
}

static void test_tree_malformed(void **state)
{
    json_object *bad = parse("{\"department_id\":[{\"id\":\"x\"}]}");
    json_object *none = parse("{\"errcode\":0}");
    char *json = NULL, why[200];
    long long *vis = NULL;
    int n = 0;
    (void)state;

    assert_int_equal(sync_modern_departments(bad, NULL, &json, &vis, &n, why, sizeof(why)), -1);
    assert_non_null(strstr(why, "entry 0 is malformed"));
    assert_null(json);
    assert_null(vis);
    assert_int_equal(sync_modern_departments(none, NULL, &json, &vis, &n, why, sizeof(why)), -1);
    assert_non_null(strstr(why, "no department_id"));
    assert_int_equal(sync_modern_departments(bad, none, &json, &vis, &n, why, sizeof(why)), -1);
    json_object_put(bad);
    json_object_put(none);
}

static void test_roster_page(void **state)
{
    json_object *p = parse("{\"errcode\":0,\"next_cursor\":\"abc\",\"dept_user\":[{\"userid\":"
                           "\"u1\",\"department\":1},{\"userid\":\"q\\\"x\",\"department\":2},"
                           "{\"userid\":\"u1\",\"department\":3}]}");
    json_object *last = parse("{\"errcode\":0,\"next_cursor\":\"\",\"dept_user\":[]}");
    json_object *bad = parse("{\"errcode\":0,\"dept_user\":[{\"userid\":\"\",\"department\":1}]}");
    char *u = NULL, *d = NULL, why[200];
    const char *next = NULL;
    int rows = -1;
    (void)state;

    assert_int_equal(sync_modern_roster_page(p, &u, &d, &rows, &next, why, sizeof(why)), 0);
    assert_string_equal(u, "{\"u1\",\"q\\\"x\",\"u1\"}");
    assert_string_equal(d, "{1,2,3}");
    assert_int_equal(rows, 3);
    assert_string_equal(next, "abc");
    free(u);
    free(d);
    assert_int_equal(sync_modern_roster_page(last, &u, &d, &rows, &next, why, sizeof(why)), 0);
    assert_string_equal(u, "{}");
    assert_int_equal(rows, 0);
    assert_string_equal(next, "");
    free(u);
    free(d);
    assert_int_equal(sync_modern_roster_page(bad, &u, &d, &rows, &next, why, sizeof(why)), -1);
    assert_non_null(strstr(why, "row 0"));
    assert_null(u);
    json_object_put(p);
    json_object_put(last);
    json_object_put(bad);
}

static void test_fields(void **state)
{
    const char full[] = "{\"userlist\":[{\"userid\":\"a\",\"mobile\":\"13800000000\",\"email\":"
                        "\"\",\"gender\":\"1\",\"avatar\":\"x\"}]}";
    const char restricted[] = "{\"userlist\":[{\"userid\":\"a\",\"name\":\"mobile\"}]}";
    char lit[128];
    unsigned f = sync_fields_present(full, strlen(full));
    (void)state;

    assert_true(f & 1u);        /* mobile */
    assert_true(f & (1u << 1)); /* email, even empty: it was sent */
    sync_fields_missing_literal(f, lit, sizeof(lit));
    assert_string_equal(lit, "{biz_mail,thumb_avatar,qr_code,address}");
    /* "mobile" as a value is not the key */
    f = sync_fields_present(restricted, strlen(restricted));
    assert_int_equal(f, 0);
    sync_fields_missing_literal(f, lit, sizeof(lit));
    assert_string_equal(lit, "{mobile,email,biz_mail,avatar,thumb_avatar,gender,qr_code,address}");
    sync_fields_missing_literal(0xff, lit, sizeof(lit));
    assert_string_equal(lit, "{}");
}

static void test_forbidden(void **state)
{
    char ip[64], msg[512];
    (void)state;

    assert_true(sync_forbidden(48009) && sync_forbidden(60020) && sync_forbidden(60011));
    assert_false(sync_forbidden(60003) || sync_forbidden(45009) || sync_forbidden(0));
    sync_forbidden_ip("not allow to access from your ip, hint: [1], from ip: 127.0.0.2, more info",
                      ip, sizeof(ip));
    assert_string_equal(ip, "127.0.0.2");
    sync_forbidden_ip("api forbidden", ip, sizeof(ip));
    assert_string_equal(ip, "");
    sync_forbidden_message("user/list", "app secret", 60020,
                           "not allow to access from your ip, hint: [1], from ip: 10.1.2.3, more",
                           msg, sizeof(msg));
    assert_non_null(strstr(msg, "user/list with the app secret: errcode 60020"));
    assert_non_null(strstr(msg, "add 10.1.2.3 to the app's trusted IPs"));
    sync_forbidden_message("department/list", "contact-sync secret", 48009, "api forbidden", msg,
                           sizeof(msg));
    assert_non_null(strstr(msg, "contact-sync secret: errcode 48009"));
    assert_non_null(strstr(msg, "--api-mode auto or modern"));
    sync_forbidden_message("user/list", "app secret", 60011, "no privilege", msg, sizeof(msg));
    assert_non_null(strstr(msg, "visible range"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tree_named_from_the_app),
        cmocka_unit_test(test_tree_malformed),
        cmocka_unit_test(test_roster_page),
        cmocka_unit_test(test_fields),
        cmocka_unit_test(test_forbidden),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
