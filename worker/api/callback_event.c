/* Parsing a change callback's flat XML (see callback_event.h). */
#include "worker/api/callback_event.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int callback_xml_get(const char *xml, const char *tag, char *out, size_t outlen)
{
    char open[48], close[48];
    const char *p, *v, *end;
    size_t n;

    if (!xml || !tag || strlen(tag) > 40 || outlen == 0)
        return -1;
    snprintf(open, sizeof open, "<%s>", tag);
    snprintf(close, sizeof close, "</%s>", tag);
    p = strstr(xml, open);
    if (!p)
        return 0;
    v = p + strlen(open);
    if (!strncmp(v, "<![CDATA[", 9)) {
        v += 9;
        end = strstr(v, "]]>");
        if (!end || strncmp(end + 3, close, strlen(close)) != 0)
            return -1;
    } else {
        end = strstr(v, close);
        if (!end)
            return -1;
        for (const char *q = v; q < end; q++)
            if (*q == '<' || *q == '&')
                return -1;
    }
    n = (size_t)(end - v);
    if (n >= outlen)
        return -1;
    memcpy(out, v, n);
    out[n] = '\0';
    return 1;
}

static const struct {
    const char *type, *kind, *id_tag;
} types[] = {
    {"create_user", "user", "UserID"},    {"update_user", "user", "UserID"},
    {"delete_user", "user", "UserID"},    {"create_party", "department", "Id"},
    {"update_party", "department", "Id"}, {"delete_party", "department", "Id"},
    {"update_tag", "tag", "TagId"},
};

static int valid_userid(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 64)
        return 0;
    return strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.@-") == n;
}

static int positive_int(const char *s, long long *out)
{
    char *end;
    long long v;
    if (!*s || strspn(s, "0123456789") != strlen(s) || strlen(s) > 18)
        return 0;
    v = strtoll(s, &end, 10);
    if (v <= 0)
        return 0;
    if (out)
        *out = v;
    return 1;
}

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        snprintf(why, whylen, __VA_ARGS__);                                                        \
        return -1;                                                                                 \
    } while (0)

int callback_event_parse(const char *xml, callback_event *ev, char *why, size_t whylen)
{
    char v[80];
    int rc, t = -1;

    memset(ev, 0, sizeof *ev);
    if (!xml || !strstr(xml, "<xml>"))
        FAIL("the message is not an <xml> document");
    if (callback_xml_get(xml, "ToUserName", ev->to_user, sizeof ev->to_user) != 1)
        FAIL("ToUserName is missing or malformed");
    if (callback_xml_get(xml, "FromUserName", ev->from_user, sizeof ev->from_user) < 0)
        FAIL("FromUserName is malformed");
    if (callback_xml_get(xml, "CreateTime", v, sizeof v) != 1 || !positive_int(v, &ev->create_time))
        FAIL("CreateTime must be a positive integer");
    if (callback_xml_get(xml, "MsgType", v, sizeof v) != 1 || strcmp(v, "event") != 0)
        FAIL("MsgType must be event");
    if (callback_xml_get(xml, "Event", v, sizeof v) != 1 || strcmp(v, "change_contact") != 0)
        FAIL("Event must be change_contact");
    if (callback_xml_get(xml, "ChangeType", ev->change_type, sizeof ev->change_type) != 1)
        FAIL("ChangeType is missing or malformed");
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (!strcmp(types[i].type, ev->change_type))
            t = (int)i;
    if (t < 0)
        FAIL("ChangeType '%.23s' is not one of create_user, update_user, delete_user, "
             "create_party, update_party, delete_party, update_tag",
             ev->change_type);
    ev->kind = types[t].kind;
    rc = callback_xml_get(xml, types[t].id_tag, ev->target, sizeof ev->target);
    if (rc != 1)
        FAIL("%s is missing or malformed", types[t].id_tag);
    if (t <= 2 ? !valid_userid(ev->target) : !positive_int(ev->target, NULL))
        FAIL("%s is not a valid %s", types[t].id_tag,
             t <= 2 ? "userid (1-64 of A-Z a-z 0-9 _ . @ -)" : "positive integer");
    if (!strcmp(ev->change_type, "update_user")) {
        rc = callback_xml_get(xml, "NewUserID", ev->new_target, sizeof ev->new_target);
        if (rc < 0 || (rc == 1 && !valid_userid(ev->new_target)))
            FAIL("NewUserID is not a valid userid");
    }
    return 0;
}
