/* A WeCom change-callback message, parsed (pure, no I/O): the outer envelope a
 * POST carries (<xml><ToUserName/><Encrypt/><AgentID/></xml>) and the decrypted
 * event inside it. Used by worker/api/api_callbacks.c.
 *
 * The messages are flat XML: each field one element directly under <xml>, its
 * value CDATA (<![CDATA[...]]>) or plain text without markup. Nothing else of
 * XML is read: no attributes, entities or nesting (a field holding '<' or '&'
 * outside CDATA is refused, not guessed at). */
#ifndef ORGSYNC_CALLBACK_EVENT_H
#define ORGSYNC_CALLBACK_EVENT_H

#include <stddef.h>

/* The value of the first <tag> element: 1 and out filled (NUL-terminated), 0
 * when there is no such element, -1 when it is malformed or does not fit. */
int callback_xml_get(const char *xml, const char *tag, char *out, size_t outlen);

typedef struct callback_event {
    char to_user[72];   /* ToUserName: the corp id */
    char from_user[72]; /* FromUserName ("sys" for contact changes) */
    long long create_time;
    char change_type[24]; /* create_user, update_user, delete_user, create_party, ... */
    const char *kind;     /* "user", "department" or "tag" */
    char target[72];      /* UserID, Id (department) or TagId */
    char new_target[72];  /* update_user's NewUserID, "" if none */
} callback_event;

/* Parses a decrypted message: MsgType "event", Event "change_contact", a known
 * ChangeType and its id (UserID 1-64 bytes of [A-Za-z0-9_.@-]; Id or TagId a
 * positive integer), CreateTime a positive integer, ToUserName present. Other
 * fields (Department, ParentId, Name, ... of pre-2022 payloads) are allowed and
 * not read: the applier fetches the member or department again. 0, or -1 with
 * why (a sentence naming the field). */
int callback_event_parse(const char *xml, callback_event *ev, char *why, size_t whylen);

#endif
