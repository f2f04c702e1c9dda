/* What the sync needs to read the WeCom contacts API as it is today (docs:
 * 2022-06-20 and 2022-08-15 changes), apart from the state machine: the
 * department tree from department/simplelist merged with names and the app's
 * visible range from department/list, roster pages from user/list_id, which
 * member fields a credential provides, and an actionable message for the
 * errcodes that no retry can fix. Pure functions: no loop, no I/O. */
#ifndef ORGSYNC_SYNC_MODERN_H
#define ORGSYNC_SYNC_MODERN_H

#include <json-c/json.h>
#include <stddef.h>

/* The department tree for sql_departments, {"department": [{"id", "name",
 * "parentid", "order"}]}: every department of simplelist (the whole tree), named
 * from list (department/list with the app secret: its visible range) where it
 * names it, else "" (the stored name is kept). *visible: the ids of list, sorted
 * and unique (the departments whose members the app can read); with list NULL,
 * every id. 0, or -1 with why. The caller frees *json and *visible. */
int sync_modern_departments(json_object *simplelist, json_object *list, char **json,
                            long long **visible, int *nvisible, char *why, size_t n);

/* One user/list_id answer: its rows as two PostgreSQL array literals,
 * {"u1","u2"} and {1,2} (one row per membership), its row count, and its
 * next_cursor ("" on the last page; points into root). 0, or -1 with why. The
 * caller frees *userids and *depts. */
int sync_modern_roster_page(json_object *root, char **userids, char **depts, int *rows,
                            const char **next_cursor, char *why, size_t n);

/* The member fields a new app (created after 2022-06-20) no longer receives. */
#define SYNC_FIELDS_RESTRICTED 8
extern const char *const sync_fields_restricted[SYNC_FIELDS_RESTRICTED];

/* Bit i set when the key sync_fields_restricted[i] appears in the text of a
 * user/list answer (as a key: "mobile":). */
unsigned sync_fields_present(const char *body, size_t len);

/* "{mobile,email}": the restricted fields whose bit is not in present; "{}" if
 * none. out needs 128 bytes. */
void sync_fields_missing_literal(unsigned present, char *out, size_t n);

/* 1 for the errcodes that mean this credential, egress or visible range cannot
 * do the call, whatever the retries: 48009 (api forbidden: the contact-sync
 * secret from an IP added after 2022-08-15), 60020 (the egress IP is not a
 * trusted IP of the app), 60011 (outside the app's visible range). */
int sync_forbidden(int errcode);

/* The IP the upstream named in errmsg ("... from ip: 1.2.3.4, ..."), or "" if
 * none. out needs 64 bytes. */
void sync_forbidden_ip(const char *errmsg, char *out, size_t n);

/* What to tell the operator: which API, which credential, the errcode and the
 * IP the upstream named, and what to do about it. */
void sync_forbidden_message(const char *api, const char *cred, int errcode, const char *errmsg,
                            char *out, size_t n);

#endif
