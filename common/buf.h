/* Growable string buffer and a small JSON writer on it.
 *
 * Allocation failure is sticky: b->oom is set, later appends are ignored, and
 * the append functions return -1. data is always NUL-terminated when non-NULL. */
#ifndef ORGSYNC_BUF_H
#define ORGSYNC_BUF_H

#include <stddef.h>

typedef struct buf {
    char *data;
    size_t len, cap;
    int oom;
} buf;

void buf_init(buf *b);
void buf_free(buf *b);
/* len = 0, keeps the memory, clears oom. */
void buf_reset(buf *b);
int buf_append(buf *b, const char *s, size_t n);
int buf_puts(buf *b, const char *s);
int buf_printf(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Returns the NUL-terminated string (never NULL unless out of memory: an
 * empty buffer gives ""), caller frees; b is left empty. */
char *buf_detach(buf *b, size_t *len);

/* JSON writer: commas are handled by tracking, per nesting level, whether the
 * next element is the first. Nesting deeper than 32 is not supported
 * (further levels share the last slot and may misplace commas). */
typedef struct jw {
    buf *b;
    int depth;
    unsigned char first[32];
} jw;

void jw_init(jw *w, buf *b);
void jw_obj_begin(jw *w);
void jw_obj_end(jw *w);
void jw_arr_begin(jw *w);
void jw_arr_end(jw *w);
void jw_key(jw *w, const char *k);
/* NULL writes null; escapes per RFC 8259, invalid UTF-8 replaced by U+FFFD. */
void jw_str(jw *w, const char *s);
/* Same with an explicit length (may contain NUL, written as \u0000). */
void jw_strn(jw *w, const char *s, size_t n);
void jw_int(jw *w, long long v);
/* NaN and infinities write null (JSON has no such numbers). */
void jw_dbl(jw *w, double v);
void jw_bool(jw *w, int v);
void jw_null(jw *w);
/* An already-valid JSON value. */
void jw_raw(jw *w, const char *json);
void jw_kstr(jw *w, const char *k, const char *s);
void jw_kint(jw *w, const char *k, long long v);
void jw_kdbl(jw *w, const char *k, double v);
void jw_kbool(jw *w, const char *k, int v);
void jw_knull(jw *w, const char *k);

/* Appends s as a JSON string literal (with quotes) to b. */
int buf_json_str(buf *b, const char *s, size_t n);

#endif
