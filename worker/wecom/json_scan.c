/* Strict JSON checking (RFC 8259) and an in-place reader. The checker is a
 * recursive descent with a depth bound; the reader skips values by scanning
 * brackets and strings, which is only safe on text the checker accepted. */
#include "worker/wecom/json_scan.h"

#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define JS_MAX_DEPTH 64

typedef struct chk {
    const char *s, *p, *end;
    char *why;
    size_t whylen;
} chk;

static int fail(chk *c, const char *what)
{
    if (c->why && c->whylen)
        snprintf(c->why, c->whylen, "%s at byte %zu of %zu", what, (size_t)(c->p - c->s),
                 (size_t)(c->end - c->s));
    return -1;
}

static int truncated(chk *c)
{
    return fail(c, "truncated JSON");
}

static void ws(chk *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

static int hexval(unsigned char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Four hex digits at p (p + 4 <= end checked by the caller). */
static int hex4(const char *p)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval((unsigned char)p[i]);
        if (h < 0)
            return -1;
        v = v * 16 + h;
    }
    return v;
}

/* One UTF-8 sequence starting at a byte >= 0x80: well-formed, shortest form,
 * no surrogates, at most U+10FFFF. */
static int utf8(chk *c)
{
    const unsigned char *p = (const unsigned char *)c->p;
    size_t left = (size_t)(c->end - c->p);
    unsigned char b = p[0];
    int n;
    uint32_t cp;

    if (b >= 0xC2 && b <= 0xDF) {
        n = 2;
        cp = b & 0x1F;
    } else if (b >= 0xE0 && b <= 0xEF) {
        n = 3;
        cp = b & 0x0F;
    } else if (b >= 0xF0 && b <= 0xF4) {
        n = 4;
        cp = b & 0x07;
    } else {
        return fail(c, "invalid UTF-8");
    }
    if (left < (size_t)n)
        return truncated(c);
    for (int i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return fail(c, "invalid UTF-8");
        cp = (cp << 6) | (p[i] & 0x3F);
    }
    if ((n == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
        (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
        return fail(c, "invalid UTF-8");
    c->p += n;
    return 0;
}

/* The bytes a run of plain string contents ends at: control characters, the
 * quote, the backslash and the bytes of UTF-8 sequences (0x80 and up). An
 * answer is mostly plain ASCII string contents (ids, URLs, addresses), so the
 * checker skips those runs with one table lookup a byte. */
#define X16(a) a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a
/* clang-format off */
static const unsigned char string_stop[256] = {
    X16(1), X16(1),                                 /* 0x00-0x1F */
    0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x20-0x2F: '"' */
    X16(0), X16(0),                                 /* 0x30-0x4F */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, /* 0x50-0x5F: '\\' */
    X16(0), X16(0),                                 /* 0x60-0x7F */
    X16(1), X16(1), X16(1), X16(1), X16(1), X16(1), X16(1), X16(1), /* 0x80-0xFF */
};
/* clang-format on */
#undef X16

static int string(chk *c)
{
    c->p++; /* the opening quote */
    while (c->p < c->end) {
        const unsigned char *q = (const unsigned char *)c->p, *e = (const unsigned char *)c->end;
        while (q < e && !string_stop[*q])
            q++;
        c->p = (const char *)q;
        if (q == e)
            break;
        unsigned char ch = *q;
        if (ch == '"') {
            c->p++;
            return 0;
        }
        if (ch < 0x20)
            return fail(c, "control character in a string");
        if (ch == '\\') {
            if (c->end - c->p < 2)
                return truncated(c);
            switch (c->p[1]) {
            case '"':
            case '\\':
            case '/':
            case 'b':
            case 'f':
            case 'n':
            case 'r':
            case 't':
                c->p += 2;
                continue;
            case 'u': {
                int v;
                if (c->end - c->p < 6)
                    return truncated(c);
                v = hex4(c->p + 2);
                if (v < 0)
                    return fail(c, "bad \\u escape");
                if (v == 0)
                    return fail(c, "\\u0000 in a string");
                c->p += 6;
                if (v >= 0xD800 && v <= 0xDBFF) {
                    /* A high surrogate needs its low half. */
                    if (c->end - c->p < 6)
                        return truncated(c);
                    if (c->p[0] != '\\' || c->p[1] != 'u')
                        return fail(c, "unpaired surrogate");
                    v = hex4(c->p + 2);
                    if (v < 0xDC00 || v > 0xDFFF)
                        return fail(c, "unpaired surrogate");
                    c->p += 6;
                } else if (v >= 0xDC00 && v <= 0xDFFF) {
                    return fail(c, "unpaired surrogate");
                }
                continue;
            }
            default:
                return fail(c, "bad escape");
            }
        }
        if (ch >= 0x80) {
            if (utf8(c))
                return -1;
            continue;
        }
        c->p++;
    }
    return truncated(c);
}

static int digits(chk *c)
{
    const char *start = c->p;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9')
        c->p++;
    if (c->p == start)
        return c->p >= c->end ? truncated(c) : fail(c, "bad number");
    return 0;
}

static int number(chk *c)
{
    if (*c->p == '-')
        c->p++;
    if (c->p >= c->end)
        return truncated(c);
    if (*c->p == '0') {
        c->p++;
    } else if (*c->p >= '1' && *c->p <= '9') {
        digits(c);
    } else {
        return fail(c, "bad number");
    }
    if (c->p < c->end && *c->p == '.') {
        c->p++;
        if (digits(c))
            return -1;
    }
    if (c->p < c->end && (*c->p == 'e' || *c->p == 'E')) {
        c->p++;
        if (c->p < c->end && (*c->p == '+' || *c->p == '-'))
            c->p++;
        if (digits(c))
            return -1;
    }
    return 0;
}

static int literal(chk *c, const char *lit)
{
    size_t n = strlen(lit), left = (size_t)(c->end - c->p);
    if (memcmp(c->p, lit, left < n ? left : n) != 0)
        return fail(c, "unexpected character");
    if (left < n)
        return truncated(c);
    c->p += n;
    return 0;
}

static int value(chk *c, int depth);

static int container(chk *c, int depth, char close)
{
    int first = 1;

    if (depth >= JS_MAX_DEPTH)
        return fail(c, "nested too deep");
    c->p++;
    for (;;) {
        ws(c);
        if (c->p >= c->end)
            return truncated(c);
        if (*c->p == close && first) {
            c->p++;
            return 0;
        }
        if (close == '}') {
            if (*c->p != '"')
                return fail(c, "expected a member name");
            if (string(c))
                return -1;
            ws(c);
            if (c->p >= c->end)
                return truncated(c);
            if (*c->p != ':')
                return fail(c, "expected ':'");
            c->p++;
        }
        if (value(c, depth + 1))
            return -1;
        ws(c);
        if (c->p >= c->end)
            return truncated(c);
        if (*c->p == close) {
            c->p++;
            return 0;
        }
        if (*c->p != ',')
            return fail(c, close == '}' ? "expected ',' or '}'" : "expected ',' or ']'");
        c->p++;
        first = 0;
    }
}

static int value(chk *c, int depth)
{
    ws(c);
    if (c->p >= c->end)
        return truncated(c);
    switch (*c->p) {
    case '{':
        return container(c, depth, '}');
    case '[':
        return container(c, depth, ']');
    case '"':
        return string(c);
    case 't':
        return literal(c, "true");
    case 'f':
        return literal(c, "false");
    case 'n':
        return literal(c, "null");
    default:
        if (*c->p == '-' || (*c->p >= '0' && *c->p <= '9'))
            return number(c);
        return fail(c, "unexpected character");
    }
}

int js_check(const char *s, size_t len, char *why, size_t whylen)
{
    chk c = {s, s, s + len, why, whylen};

    if (!s)
        return fail(&c, "no text");
    if (value(&c, 0))
        return -1;
    ws(&c);
    if (c.p != c.end)
        return fail(&c, "trailing data");
    return 0;
}

/* ---- the reader (checked text only) ------------------------------------------------- */

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

/* Past the closing quote of the string whose opening quote is at p. */
static const char *skip_string(const char *p, const char *end)
{
    for (p++; p < end; p++) {
        if (*p == '\\')
            p++;
        else if (*p == '"')
            return p + 1;
    }
    return end;
}

/* Reads the value at p (no leading whitespace) into v; returns the end of it. */
static const char *read_value(const char *p, const char *end, js_val *v)
{
    const char *q;
    int depth;

    v->p = p;
    switch (*p) {
    case '"':
        q = skip_string(p, end);
        v->type = JS_STRING;
        v->p = p + 1;
        v->n = (size_t)(q - p) - 2;
        return q;
    case '{':
    case '[':
        v->type = *p == '{' ? JS_OBJECT : JS_ARRAY;
        depth = 0;
        for (q = p; q < end; q++) {
            if (*q == '"') {
                q = skip_string(q, end) - 1;
            } else if (*q == '{' || *q == '[') {
                depth++;
            } else if (*q == '}' || *q == ']') {
                if (--depth == 0) {
                    q++;
                    break;
                }
            }
        }
        v->n = (size_t)(q - p);
        return q;
    case 't':
        v->type = JS_TRUE;
        v->n = 4;
        return p + 4;
    case 'f':
        v->type = JS_FALSE;
        v->n = 5;
        return p + 5;
    case 'n':
        v->type = JS_NULL;
        v->n = 4;
        return p + 4;
    default:
        q = p;
        while (q < end && (*q == '-' || *q == '+' || *q == '.' || *q == 'e' || *q == 'E' ||
                           (*q >= '0' && *q <= '9')))
            q++;
        v->type = JS_NUMBER;
        v->n = (size_t)(q - p);
        return q;
    }
}

void js_root(const char *s, size_t len, js_val *out)
{
    const char *end = s + len, *p = skip_ws(s, end);

    memset(out, 0, sizeof(*out));
    if (p >= end)
        return;
    if (*p == '{' || *p == '[') {
        /* Checked text is one value and whitespace: a container ends at the last
         * byte that is not whitespace, so there is no need to read it through. */
        const char *q = end;
        while (q > p && (q[-1] == ' ' || q[-1] == '\t' || q[-1] == '\n' || q[-1] == '\r'))
            q--;
        out->type = *p == '{' ? JS_OBJECT : JS_ARRAY;
        out->p = p;
        out->n = (size_t)(q - p);
        return;
    }
    read_value(p, end, out);
}

void js_root_shallow(const char *s, size_t len, js_val *out)
{
    const char *end = s + len, *p = skip_ws(s, end);

    memset(out, 0, sizeof(*out));
    if (p >= end)
        return;
    if (*p == '{' || *p == '[') {
        out->type = *p == '{' ? JS_OBJECT : JS_ARRAY;
        out->p = p;
        return;
    }
    read_value(p, end, out);
}

int js_iter_begin(js_iter *it, const js_val *v)
{
    /* A container whose end is known (n == 0: unknown, js_iter_begin_in). */
    return v && v->n ? js_iter_begin_in(it, v, v->p + v->n) : 0;
}

int js_iter_begin_in(js_iter *it, const js_val *v, const char *end)
{
    if (!v || (v->type != JS_OBJECT && v->type != JS_ARRAY) || !end || v->p >= end)
        return 0;
    it->p = v->p + 1;
    it->end = v->n ? v->p + v->n - 1 : end;
    it->pending = NULL;
    it->is_object = v->type == JS_OBJECT;
    it->started = 0;
    return 1;
}

/* The next member or element; containers are read to their end unless shallow. */
static int next(js_iter *it, js_val *key, js_val *val, int shallow)
{
    const char *p;

    if (it->pending) { /* a container the caller did not walk: skip it */
        js_val skip;
        it->p = read_value(it->pending, it->end, &skip);
        it->pending = NULL;
    }
    p = skip_ws(it->p, it->end);
    if (it->started) {
        if (p >= it->end || *p != ',') {
            it->p = p;
            return 0;
        }
        p = skip_ws(p + 1, it->end);
    } else if (p < it->end && (*p == '}' || *p == ']')) {
        it->p = p; /* an empty container */
        return 0;
    }
    if (p >= it->end) {
        it->p = p;
        return 0;
    }
    it->started = 1;
    if (it->is_object) {
        js_val k;
        p = read_value(p, it->end, &k);
        if (key)
            *key = k;
        p = skip_ws(p, it->end);
        if (p < it->end && *p == ':')
            p = skip_ws(p + 1, it->end);
    } else if (key) {
        memset(key, 0, sizeof(*key));
    }
    if (shallow && p < it->end && (*p == '{' || *p == '[')) {
        val->type = *p == '{' ? JS_OBJECT : JS_ARRAY;
        val->p = p;
        val->n = 0;
        it->pending = p;
        it->p = p;
        return 1;
    }
    p = read_value(p, it->end, val);
    it->p = p;
    return 1;
}

int js_next(js_iter *it, js_val *key, js_val *val)
{
    return next(it, key, val, 0);
}

int js_next_shallow(js_iter *it, js_val *key, js_val *val)
{
    return next(it, key, val, 1);
}

const char *js_iter_after(const js_iter *it)
{
    return it->p + 1; /* it->p is at the closing bracket (checked text) */
}

void js_iter_resume(js_iter *it, const char *after)
{
    it->pending = NULL;
    it->p = after;
}

/* Decodes one character of a string's contents at *p into buf (UTF-8);
 * returns its length. */
static size_t decode_one(const char **pp, const char *end, char buf[4])
{
    const char *p = *pp;
    unsigned v;

    if (*p != '\\' || p + 1 >= end) {
        buf[0] = *p;
        *pp = p + 1;
        return 1;
    }
    switch (p[1]) {
    case 'b':
        buf[0] = '\b';
        break;
    case 'f':
        buf[0] = '\f';
        break;
    case 'n':
        buf[0] = '\n';
        break;
    case 'r':
        buf[0] = '\r';
        break;
    case 't':
        buf[0] = '\t';
        break;
    case 'u':
        if (end - p < 6)
            break;
        v = (unsigned)hex4(p + 2);
        *pp = p + 6;
        if (v >= 0xD800 && v <= 0xDBFF && end - *pp >= 6) {
            unsigned lo = (unsigned)hex4(*pp + 2);
            v = 0x10000 + ((v - 0xD800) << 10) + (lo - 0xDC00);
            *pp += 6;
        }
        if (v < 0x80) {
            buf[0] = (char)v;
            return 1;
        }
        if (v < 0x800) {
            buf[0] = (char)(0xC0 | (v >> 6));
            buf[1] = (char)(0x80 | (v & 0x3F));
            return 2;
        }
        if (v < 0x10000) {
            buf[0] = (char)(0xE0 | (v >> 12));
            buf[1] = (char)(0x80 | ((v >> 6) & 0x3F));
            buf[2] = (char)(0x80 | (v & 0x3F));
            return 3;
        }
        buf[0] = (char)(0xF0 | (v >> 18));
        buf[1] = (char)(0x80 | ((v >> 12) & 0x3F));
        buf[2] = (char)(0x80 | ((v >> 6) & 0x3F));
        buf[3] = (char)(0x80 | (v & 0x3F));
        return 4;
    default:
        buf[0] = p[1]; /* " \ / */
        break;
    }
    *pp = p + 2;
    return 1;
}

int js_str_is(const js_val *v, const char *lit)
{
    const char *p, *end;
    size_t n = strlen(lit), k = 0;

    if (!v || v->type != JS_STRING)
        return 0;
    if (!memchr(v->p, '\\', v->n))
        return v->n == n && memcmp(v->p, lit, n) == 0;
    for (p = v->p, end = v->p + v->n; p < end;) {
        char buf[4];
        size_t m = decode_one(&p, end, buf);
        if (k + m > n || memcmp(lit + k, buf, m) != 0)
            return 0;
        k += m;
    }
    return k == n;
}

int js_int(const js_val *v, long long *out)
{
    long long x = 0;
    size_t i = 0;
    int neg = 0;

    if (!v || v->type != JS_NUMBER || v->n == 0)
        return 0;
    if (v->p[0] == '-') {
        neg = 1;
        i = 1;
    }
    if (i >= v->n)
        return 0;
    for (; i < v->n; i++) {
        int d = v->p[i] - '0';
        if (d < 0 || d > 9)
            return 0; /* fraction or exponent */
        if (x > (LLONG_MAX - d) / 10)
            return 0;
        x = x * 10 + d;
    }
    *out = neg ? -x : x;
    return 1;
}

int js_get(const js_val *obj, const char *key, js_val *out)
{
    js_iter it;
    js_val k, v;

    if (!obj || obj->type != JS_OBJECT || !js_iter_begin(&it, obj))
        return 0;
    while (js_next(&it, &k, &v)) {
        if (js_str_is(&k, key)) {
            *out = v;
            return 1;
        }
    }
    return 0;
}

int js_str_copy(const js_val *v, char *out, size_t outlen)
{
    const char *p, *end;
    size_t k = 0;
    int total = 0;

    if (!v || v->type != JS_STRING)
        return -1;
    for (p = v->p, end = v->p + v->n; p < end;) {
        char buf[4];
        size_t m = decode_one(&p, end, buf);
        if (outlen && k + m < outlen) {
            memcpy(out + k, buf, m);
            k += m;
        }
        total += (int)m;
    }
    if (outlen)
        out[k] = '\0';
    return total;
}
