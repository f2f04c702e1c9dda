/* Structured logging to stderr: JSON lines for machines, text for people. */
#include "common/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>

static log_level log_min = LOG_INFO;
static int log_json = 1;
static char log_instance[128] = "";
static int log_worker_id = 0;
static FILE *log_stream = NULL;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_init(log_level min, int json, const char *instance, int worker_id)
{
    log_min = min;
    log_json = json;
    snprintf(log_instance, sizeof(log_instance), "%s", instance ? instance : "");
    log_worker_id = worker_id;
}

int log_level_parse(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (s && strcasecmp(s, level_names[i]) == 0)
            return i;
    return -1;
}

int log_enabled(log_level lvl)
{
    return lvl >= log_min;
}

void log_set_stream(void *file)
{
    log_stream = file;
}

void log_mask_mobile(const char *mobile, char *out, size_t outlen)
{
    size_t n = mobile ? strlen(mobile) : 0;
    size_t i;
    if (outlen == 0)
        return;
    if (n + 1 > outlen)
        n = outlen - 1;
    for (i = 0; i < n; i++) {
        int keep = n >= 6 && (i < 3 || i >= n - 2);
        out[i] = keep ? mobile[i] : '*';
    }
    out[i] = '\0';
}

size_t log_json_escape(const char *s, char *out, size_t outlen)
{
    size_t o = 0;
    if (outlen == 0)
        return 0;
    for (; s && *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        size_t n;
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            n = 2;
        } else if (c == '\n') {
            memcpy(esc, "\\n", 2);
            n = 2;
        } else if (c == '\r') {
            memcpy(esc, "\\r", 2);
            n = 2;
        } else if (c == '\t') {
            memcpy(esc, "\\t", 2);
            n = 2;
        } else if (c < 0x20) {
            n = (size_t)snprintf(esc, sizeof(esc), "\\u%04x", c);
        } else {
            esc[0] = (char)c;
            n = 1;
        }
        if (o + n >= outlen)
            break;
        memcpy(out + o, esc, n);
        o += n;
    }
    out[o] = '\0';
    return o;
}

/* Appends to a fixed line buffer; a line longer than the buffer is cut, never overrun. */
typedef struct line {
    char buf[8192];
    size_t len;
} line;

static void line_add(line *l, const char *fmt, ...)
{
    va_list ap;
    int n;
    if (l->len >= sizeof(l->buf) - 1)
        return;
    va_start(ap, fmt);
    n = vsnprintf(l->buf + l->len, sizeof(l->buf) - l->len, fmt, ap);
    va_end(ap);
    if (n > 0)
        l->len += (size_t)n < sizeof(l->buf) - l->len ? (size_t)n : sizeof(l->buf) - l->len - 1;
}

static void line_str(line *l, const char *s)
{
    char esc[2048];
    if (!log_json) {
        line_add(l, "%s", s ? s : "");
        return;
    }
    log_json_escape(s ? s : "", esc, sizeof(esc));
    line_add(l, "\"%s\"", esc);
}

static void line_field(line *l, const log_field *f)
{
    char masked[32];
    line_add(l, log_json ? ",\"%s\":" : " %s=", f->key);
    switch (f->type) {
    case LOG_F_STR:
        if (!f->s && log_json)
            line_add(l, "null");
        else
            line_str(l, f->s);
        break;
    case LOG_F_INT:
        line_add(l, "%lld", f->i);
        break;
    case LOG_F_DBL:
        line_add(l, "%.6g", f->d);
        break;
    case LOG_F_MOBILE:
        log_mask_mobile(f->s ? f->s : "", masked, sizeof(masked));
        line_str(l, masked);
        break;
    default:
        break;
    }
}

void log_emit(log_level lvl, const char *msg, const log_field *fields)
{
    line l;
    struct timeval tv;
    struct tm tm;
    char ts[96];
    if (lvl < log_min)
        return;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    snprintf(ts, sizeof(ts), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(tv.tv_usec / 1000));
    l.len = 0;
    if (log_json) {
        line_add(&l, "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":", ts, level_names[lvl]);
        line_str(&l, msg);
        line_add(&l, ",\"instance\":");
        line_str(&l, log_instance);
        line_add(&l, ",\"worker_id\":%d", log_worker_id);
    } else {
        line_add(&l, "%s %-5s [%s w%d] %s", ts, level_names[lvl], log_instance, log_worker_id, msg);
    }
    for (const log_field *f = fields; f && f->type != LOG_F_END; f++)
        if (f->type != LOG_F_SKIP)
            line_field(&l, f);
    if (log_json)
        line_add(&l, "}");
    /* One write per line keeps lines whole when several processes share stderr. */
    if (l.len >= sizeof(l.buf) - 2)
        l.len = sizeof(l.buf) - 2;
    l.buf[l.len++] = '\n';
    fwrite(l.buf, 1, l.len, log_stream ? log_stream : stderr);
    fflush(log_stream ? log_stream : stderr);
}
