/* A strict JSON checker and a zero-copy reader over text already checked.
 *
 * The sync receives about 2,000 user/list answers a second and hands each to
 * PostgreSQL as text; it only needs to know that the text is JSON and to read a
 * few fields. Building a json-c tree for that (an allocation per value, a hash
 * table per object) was most of the process's CPU; this reads the text in place.
 *
 *   char why[96];
 *   if (js_check(body, len, why, sizeof(why)))   // RFC 8259, UTF-8, depth <= 64
 *       ...malformed...
 *   js_val root, k, v;
 *   js_root(body, len, &root);
 *   js_iter it;
 *   js_iter_begin(&it, &root);                  // an object or an array
 *   while (js_next(&it, &k, &v))                // k is unset for arrays
 *       if (js_key_is(&k, "errcode")) js_int(&v, &errcode);
 *
 * The reader assumes js_check accepted the text; it never reads past the end. */
#ifndef ORGSYNC_JSON_SCAN_H
#define ORGSYNC_JSON_SCAN_H

#include <stddef.h>

typedef enum {
    JS_NONE = 0,
    JS_OBJECT,
    JS_ARRAY,
    JS_STRING, /* p, n: the contents between the quotes, still escaped */
    JS_NUMBER,
    JS_TRUE,
    JS_FALSE,
    JS_NULL
} js_type;

typedef struct js_val {
    js_type type;
    const char *p; /* the value's text (strings: without the quotes) */
    size_t n;
} js_val;

typedef struct js_iter {
    const char *p, *end;
    const char *pending; /* a container js_next_shallow returned, not yet walked */
    int is_object;
    int started;
} js_iter;

/* 0 when s[0..len) is exactly one JSON value (surrounding whitespace allowed),
 * strings valid UTF-8 without \u0000 (PostgreSQL's jsonb refuses it), nesting
 * at most 64 deep; else -1 and why ("truncated at byte 812", ...). */
int js_check(const char *s, size_t len, char *why, size_t whylen);

/* The top-level value of checked text. */
void js_root(const char *s, size_t len, js_val *out);

/* Iterates an object's members or an array's elements. 0 if v is neither. */
int js_iter_begin(js_iter *it, const js_val *v);
/* 1 and the next member (key set for objects) or element, 0 at the end. */
int js_next(js_iter *it, js_val *key, js_val *val);

/* Streaming, for reading a large answer in one pass: a container whose end is
 * not known yet (n == 0, from js_root_shallow or js_next_shallow) is iterated
 * with js_iter_begin_in, given the end of the text; the iteration stops at its
 * closing bracket. Reading an answer this way touches each byte once, where
 * js_root/js_next find the end of every container before it is walked.
 *
 *   js_root_shallow(body, len, &root);
 *   js_iter_begin_in(&it, &root, body + len);
 *   while (js_next_shallow(&it, &k, &v))          // v.n == 0 for a container
 *       if (is the one to walk) {
 *           js_iter_begin_in(&in, &v, body + len);
 *           while (js_next(&in, ...)) ...           // to its end
 *           js_iter_resume(&it, js_iter_after(&in));
 *       }                                           // else js_next_shallow skips it
 */
void js_root_shallow(const char *s, size_t len, js_val *out);
int js_iter_begin_in(js_iter *it, const js_val *v, const char *end);
int js_next_shallow(js_iter *it, js_val *key, js_val *val);
/* After js_next or js_next_shallow returned 0: just past the closing bracket. */
const char *js_iter_after(const js_iter *it);
/* Continues an iteration after the container its last js_next_shallow returned,
 * which the caller walked to `after` (js_iter_after of the inner iteration). */
void js_iter_resume(js_iter *it, const char *after);

/* A string key or value equal to lit (escapes decoded). */
int js_str_is(const js_val *v, const char *lit);
#define js_key_is js_str_is
/* Integers only (no fraction or exponent), as json-c's json_type_int: 1 and
 * *out, or 0 (not an integer, or out of range). */
int js_int(const js_val *v, long long *out);
/* Member of an object by key (first match): 1 and *out, else 0. */
int js_get(const js_val *obj, const char *key, js_val *out);
/* Copies a string's decoded contents (truncated, NUL-terminated); returns the
 * decoded length, or -1 if v is not a string. */
int js_str_copy(const js_val *v, char *out, size_t outlen);

#endif
