/* Growable buffer and JSON writer. Out-of-memory is sticky (b->oom) so a
 * caller can build a whole document and check once at the end. */
#include "common/buf.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void buf_init(buf *b)
{
    b->data = NULL;
    b->len = b->cap = 0;
    b->oom = 0;
}

void buf_free(buf *b)
{
    free(b->data);
    buf_init(b);
}

void buf_reset(buf *b)
{
    b->len = 0;
    b->oom = 0;
    if (b->data)
        b->data[0] = '\0';
}

/* Makes room for n more bytes plus the terminating NUL. */
static int buf_reserve(buf *b, size_t n)
{
    size_t need, cap;
    char *p;

    if (b->oom)
        return -1;
    if (n > SIZE_MAX - b->len - 1)
        goto oom;
    need = b->len + n + 1;
    if (need <= b->cap)
        return 0;
    cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    p = realloc(b->data, cap);
    if (!p)
        goto oom;
    b->data = p;
    b->cap = cap;
    return 0;
oom:
    b->oom = 1;
    return -1;
}

int buf_append(buf *b, const char *s, size_t n)
{
    if (buf_reserve(b, n))
        return -1;
    if (n)
        memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int buf_puts(buf *b, const char *s)
{
    return buf_append(b, s, strlen(s));
}

int buf_printf(buf *b, const char *fmt, ...)
{
    va_list ap, ap2;
    int n;

    va_start(ap, fmt);
    va_copy(ap2, ap);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || buf_reserve(b, (size_t)n)) {
        va_end(ap2);
        if (n < 0)
            b->oom = 1;
        return -1;
    }
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    b->len += (size_t)n;
    return 0;
}

char *buf_detach(buf *b, size_t *len)
{
    char *p;

    if (b->oom) {
        buf_free(b);
        if (len)
            *len = 0;
        return NULL;
    }
    if (!b->data && buf_reserve(b, 0)) {
        buf_free(b);
        if (len)
            *len = 0;
        return NULL;
    }
    b->data[b->len] = '\0';
    p = b->data;
    if (len)
        *len = b->len;
    buf_init(b);
    return p;
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), or 0 if invalid;
 * *bad gets the length of the maximal invalid prefix to replace (>= 1). */
static size_t utf8_seq(const unsigned char *s, size_t n, size_t *bad)
{
    unsigned char c = s[0];
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;

    *bad = 1;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF)
        len = 3;
    else if (c >= 0xF0 && c <= 0xF4)
        len = 4;
    else
        return 0;
    /* Second-byte limits exclude overlongs, surrogates and > U+10FFFF. */
    if (c == 0xE0)
        lo = 0xA0;
    else if (c == 0xED)
        hi = 0x9F;
    else if (c == 0xF0)
        lo = 0x90;
    else if (c == 0xF4)
        hi = 0x8F;
    for (size_t i = 1; i < len; i++) {
        if (i >= n || s[i] < (i == 1 ? lo : 0x80) || s[i] > (i == 1 ? hi : 0xBF)) {
            *bad = i;
            return 0;
        }
    }
    return len;
}

int buf_json_str(buf *b, const char *str, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0, run = 0;

    buf_append(b, "\"", 1);
    while (i < n) {
        unsigned char c = s[i];
        size_t len, bad;
        char esc[7];
        const char *rep = NULL;
        size_t replen = 0;

        if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
            run++;
            i++;
            continue;
        }
        if (c >= 0x80) {
            len = utf8_seq(s + i, n - i, &bad);
            if (len) {
                run += len;
                i += len;
                continue;
            }
            rep = "\xEF\xBF\xBD"; /* U+FFFD */
            replen = 3;
            len = bad;
        } else {
            len = 1;
            switch (c) {
            case '"':
                rep = "\\\"";
                break;
            case '\\':
                rep = "\\\\";
                break;
            case '\b':
                rep = "\\b";
                break;
            case '\f':
                rep = "\\f";
                break;
            case '\n':
                rep = "\\n";
                break;
            case '\r':
                rep = "\\r";
                break;
            case '\t':
                rep = "\\t";
                break;
            default:
                memcpy(esc, "\\u00", 4);
                esc[4] = hex[c >> 4];
                esc[5] = hex[c & 15];
                esc[6] = '\0';
                rep = esc;
            }
            replen = strlen(rep);
        }
        buf_append(b, str + i - run, run);
        run = 0;
        buf_append(b, rep, replen);
        i += len;
    }
    buf_append(b, str + i - run, run);
    return buf_append(b, "\"", 1);
}

/* ---- JSON writer ----
 * first[level]: 1 = nothing written at this level yet, 0 = an element was
 * written (next needs a comma), 2 = a key was just written (value follows). */

static int jw_level(const jw *w)
{
    return w->depth < 32 ? w->depth : 31;
}

static void jw_pre_value(jw *w)
{
    int l = jw_level(w);

    if (w->depth > 0 && w->first[l] == 0)
        buf_append(w->b, ",", 1);
    w->first[l] = 0;
}

void jw_init(jw *w, buf *b)
{
    w->b = b;
    w->depth = 0;
    memset(w->first, 1, sizeof(w->first));
}

/* After a key the value takes the key's place: no comma. */
static void jw_value_start(jw *w)
{
    int l = jw_level(w);

    if (w->first[l] == 2)
        w->first[l] = 0;
    else
        jw_pre_value(w);
}

static void jw_open(jw *w, char ch)
{
    jw_value_start(w);
    buf_append(w->b, &ch, 1);
    w->depth++;
    w->first[jw_level(w)] = 1;
}

static void jw_close(jw *w, char ch)
{
    if (w->depth > 0)
        w->depth--;
    buf_append(w->b, &ch, 1);
}

void jw_obj_begin(jw *w)
{
    jw_open(w, '{');
}

void jw_obj_end(jw *w)
{
    jw_close(w, '}');
}

void jw_arr_begin(jw *w)
{
    jw_open(w, '[');
}

void jw_arr_end(jw *w)
{
    jw_close(w, ']');
}

void jw_key(jw *w, const char *k)
{
    jw_pre_value(w);
    buf_json_str(w->b, k ? k : "", k ? strlen(k) : 0);
    buf_append(w->b, ":", 1);
    w->first[jw_level(w)] = 2;
}

void jw_strn(jw *w, const char *s, size_t n)
{
    jw_value_start(w);
    if (!s)
        buf_append(w->b, "null", 4);
    else
        buf_json_str(w->b, s, n);
}

void jw_str(jw *w, const char *s)
{
    jw_strn(w, s, s ? strlen(s) : 0);
}

void jw_int(jw *w, long long v)
{
    jw_value_start(w);
    buf_printf(w->b, "%lld", v);
}

void jw_dbl(jw *w, double v)
{
    char tmp[40];

    jw_value_start(w);
    if (!isfinite(v)) {
        buf_append(w->b, "null", 4);
        return;
    }
    /* The shortest of 15, 16 or 17 significant digits that reads back
     * exactly (17 always does). */
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(tmp, sizeof(tmp), "%.*g", prec, v);
        if (strtod(tmp, NULL) == v)
            break;
    }
    buf_puts(w->b, tmp);
}

void jw_bool(jw *w, int v)
{
    jw_value_start(w);
    buf_puts(w->b, v ? "true" : "false");
}

void jw_null(jw *w)
{
    jw_value_start(w);
    buf_append(w->b, "null", 4);
}

void jw_raw(jw *w, const char *json)
{
    jw_value_start(w);
    buf_puts(w->b, json ? json : "null");
}

void jw_kstr(jw *w, const char *k, const char *s)
{
    jw_key(w, k);
    jw_str(w, s);
}

void jw_kint(jw *w, const char *k, long long v)
{
    jw_key(w, k);
    jw_int(w, v);
}

void jw_kdbl(jw *w, const char *k, double v)
{
    jw_key(w, k);
    jw_dbl(w, v);
}

void jw_kbool(jw *w, const char *k, int v)
{
    jw_key(w, k);
    jw_bool(w, v);
}

void jw_knull(jw *w, const char *k)
{
    jw_key(w, k);
    jw_null(w);
}
