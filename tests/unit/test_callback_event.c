/* Parsing WeCom change callbacks (worker/api/callback_event.h): the post-2022
 * short payloads, the older long ones, and every refusal. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "worker/api/callback_event.h"

#define HEAD                                                                                       \
    "<xml><ToUserName><![CDATA[wwcorp]]></ToUserName><FromUserName><![CDATA[sys]]></"              \
    "FromUserName><CreateTime>1700000000</CreateTime><MsgType><![CDATA[event]]></MsgType>"         \
    "<Event><![CDATA[change_contact]]></Event>"

static void test_short_payloads(void **state)
{
    callback_event ev;
    char why[200] = "";
    (void)state;
    assert_int_equal(callback_event_parse(HEAD "<ChangeType><![CDATA[create_user]]></ChangeType>"
                                               "<UserID><![CDATA[u000123]]></UserID><Department>"
                                               "<![CDATA[1,2]]></Department></xml>",
                                          &ev, why, sizeof why),
                     0);
    assert_string_equal(ev.to_user, "wwcorp");
    assert_string_equal(ev.from_user, "sys");
    assert_int_equal(ev.create_time, 1700000000);
    assert_string_equal(ev.change_type, "create_user");
    assert_string_equal(ev.kind, "user");
    assert_string_equal(ev.target, "u000123");
    assert_string_equal(ev.new_target, "");
    assert_int_equal(callback_event_parse(HEAD "<ChangeType><![CDATA[create_party]]></ChangeType>"
                                               "<Id>42</Id><ParentId>1</ParentId></xml>",
                                          &ev, why, sizeof why),
                     0);
    assert_string_equal(ev.kind, "department");
    assert_string_equal(ev.target, "42");
    assert_int_equal(callback_event_parse(HEAD "<ChangeType>update_user</ChangeType><UserID>a.b"
                                               "</UserID><NewUserID>c@d</NewUserID></xml>",
                                          &ev, why, sizeof why),
                     0);
    assert_string_equal(ev.new_target, "c@d");
    assert_int_equal(callback_event_parse(HEAD "<ChangeType>update_tag</ChangeType><TagId>7"
                                               "</TagId></xml>",
                                          &ev, why, sizeof why),
                     0);
    assert_string_equal(ev.kind, "tag");
}

static void expect_refused(const char *xml, const char *why_has)
{
    callback_event ev;
    char why[200] = "";
    assert_int_equal(callback_event_parse(xml, &ev, why, sizeof why), -1);
    if (!strstr(why, why_has))
        fail_msg("why '%s' does not name '%s'", why, why_has);
}

static void test_refusals(void **state)
{
    (void)state;
    expect_refused("hello", "<xml>");
    expect_refused("<xml><CreateTime>1</CreateTime></xml>", "ToUserName");
    expect_refused("<xml><ToUserName>w</ToUserName><CreateTime>x</CreateTime></xml>", "CreateTime");
    expect_refused("<xml><ToUserName>w</ToUserName><CreateTime>1</CreateTime><MsgType>text"
                   "</MsgType></xml>",
                   "MsgType");
    expect_refused("<xml><ToUserName>w</ToUserName><CreateTime>1</CreateTime><MsgType>event"
                   "</MsgType><Event>subscribe</Event></xml>",
                   "Event");
    expect_refused(HEAD "<ChangeType>drop_table</ChangeType></xml>", "ChangeType");
    expect_refused(HEAD "<ChangeType>delete_user</ChangeType></xml>", "UserID");
    expect_refused(HEAD "<ChangeType>delete_user</ChangeType><UserID>a b</UserID></xml>", "UserID");
    expect_refused(HEAD "<ChangeType>delete_party</ChangeType><Id>-3</Id></xml>", "Id");
    expect_refused(HEAD "<ChangeType>delete_party</ChangeType><Id><![CDATA[3]]</Id></xml>", "Id");
    expect_refused(HEAD "<ChangeType>update_user</ChangeType><UserID>a</UserID><NewUserID>a&amp;"
                        "</NewUserID></xml>",
                   "NewUserID");
}

static void test_xml_get(void **state)
{
    char out[8];
    (void)state;
    assert_int_equal(callback_xml_get("<xml><A>1</A></xml>", "A", out, sizeof out), 1);
    assert_string_equal(out, "1");
    assert_int_equal(callback_xml_get("<xml><A>1</A></xml>", "B", out, sizeof out), 0);
    assert_int_equal(callback_xml_get("<xml><A>123456789</A></xml>", "A", out, sizeof out), -1);
    assert_int_equal(callback_xml_get("<xml><A>1", "A", out, sizeof out), -1);
    assert_int_equal(callback_xml_get("<xml><A><![CDATA[<&>]]></A>", "A", out, sizeof out), 1);
    assert_string_equal(out, "<&>");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_short_payloads),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_xml_get),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
