/* Cron expressions: parsing into bit masks, and a field-jumping search for the
 * next fire in an IANA time zone.
 *
 * The search runs on local wall-clock fields (year, month, day, hour, minute,
 * second) with plain calendar arithmetic, so it never depends on the zone
 * until a candidate is found. Only then is the candidate mapped to a time_t:
 * a wall time that maps to nothing (a DST gap) is skipped, one that maps to
 * two instants (a DST overlap) counts at the earlier one only. */
#include "common/cron.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

enum { F_SEC, F_MIN, F_HOUR, F_DOM, F_MON, F_DOW, F_COUNT };

typedef struct field_spec {
    const char *name;
    int lo, hi;
} field_spec;

static const field_spec specs[F_COUNT] = {
    {"second", 0, 59},       {"minute", 0, 59}, {"hour", 0, 23},
    {"day-of-month", 1, 31}, {"month", 1, 12},  {"day-of-week", 0, 7},
};

static const char *const mon_names[] = {"JAN", "FEB", "MAR", "APR", "MAY", "JUN",
                                        "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"};
static const char *const dow_names[] = {"SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"};

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (!err || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Reads a number or (for month and dow) a three-letter name at *p. */
static int parse_value(int field, const char **p, int *out, char *err, size_t errlen)
{
    const char *s = *p;
    const field_spec *fs = &specs[field];

    if (isdigit((unsigned char)*s)) {
        long v = 0;
        while (isdigit((unsigned char)*s)) {
            v = v * 10 + (*s - '0');
            if (v > 1000) {
                set_err(err, errlen, "%s: number too large", fs->name);
                return -1;
            }
            s++;
        }
        if (v < fs->lo || v > fs->hi) {
            set_err(err, errlen, "%s: value %ld out of range %d-%d", fs->name, v, fs->lo, fs->hi);
            return -1;
        }
        *out = (int)v;
        *p = s;
        return 0;
    }
    if (isalpha((unsigned char)*s) && (field == F_MON || field == F_DOW)) {
        const char *const *names = field == F_MON ? mon_names : dow_names;
        int n = field == F_MON ? 12 : 7;
        int base = field == F_MON ? 1 : 0;
        size_t len = 0;

        while (isalpha((unsigned char)s[len]))
            len++;
        for (int i = 0; i < n && len == 3; i++) {
            if (strncasecmp(s, names[i], 3) == 0) {
                *out = i + base;
                *p = s + 3;
                return 0;
            }
        }
        set_err(err, errlen, "%s: unknown name '%.*s'", fs->name, (int)(len > 16 ? 16 : len), s);
        return -1;
    }
    if (*s == '\0')
        set_err(err, errlen, "%s: missing value", fs->name);
    else
        set_err(err, errlen, "%s: unexpected character '%c'", fs->name, *s);
    return -1;
}

/* One list item: "*", "v", "a-b", each optionally followed by "/step";
 * "v/step" means v through the field's maximum. Sets bits in *mask. */
static int parse_item(int field, const char **p, uint64_t *mask, char *err, size_t errlen)
{
    const field_spec *fs = &specs[field];
    const char *s = *p;
    int lo, hi, step = 1, is_range = 0;

    if (*s == '*') {
        lo = fs->lo;
        hi = field == F_DOW ? 6 : fs->hi;
        is_range = 1;
        s++;
    } else {
        if (parse_value(field, &s, &lo, err, errlen))
            return -1;
        hi = lo;
        if (*s == '-') {
            s++;
            if (parse_value(field, &s, &hi, err, errlen))
                return -1;
            if (hi < lo) {
                set_err(err, errlen, "%s: range %d-%d is backwards", fs->name, lo, hi);
                return -1;
            }
            is_range = 1;
        }
    }
    if (*s == '/') {
        long v = 0;
        s++;
        if (!isdigit((unsigned char)*s)) {
            set_err(err, errlen, "%s: step needs a number", fs->name);
            return -1;
        }
        while (isdigit((unsigned char)*s)) {
            v = v * 10 + (*s - '0');
            if (v > 1000)
                break;
            s++;
        }
        if (v == 0 || v > fs->hi) {
            set_err(err, errlen, "%s: step %ld out of range 1-%d", fs->name, v, fs->hi);
            return -1;
        }
        step = (int)v;
        if (!is_range)
            hi = field == F_DOW ? 6 : fs->hi;
    }
    for (int v = lo; v <= hi; v += step)
        *mask |= (uint64_t)1 << (field == F_DOW && v == 7 ? 0 : v);
    *p = s;
    return 0;
}

static int parse_field(int field, const char *s, size_t len, uint64_t *mask, int *starts_star,
                       char *err, size_t errlen)
{
    char tmp[128];
    const char *p = tmp;

    if (len >= sizeof(tmp)) {
        set_err(err, errlen, "%s: field too long", specs[field].name);
        return -1;
    }
    memcpy(tmp, s, len);
    tmp[len] = '\0';
    *mask = 0;
    *starts_star = tmp[0] == '*';
    for (;;) {
        if (parse_item(field, &p, mask, err, errlen))
            return -1;
        if (*p == '\0')
            return 0;
        if (*p != ',') {
            set_err(err, errlen, "%s: unexpected character '%c'", specs[field].name, *p);
            return -1;
        }
        p++;
    }
}

static int days_in_month(int y, int m)
{
    static const int d[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;

    return m == 2 && leap ? 29 : d[m - 1];
}

/* A restricted day-of-month that no selected month has (e.g. "30 2") would
 * silently never fire; better to refuse it at configuration time. Only when
 * day-of-week cannot rescue it (either field starts with '*': AND rule). */
static int check_dom_reachable(const cron_expr *c, char *err, size_t errlen)
{
    int maxd = 0;

    if (!(c->dom_any || c->dow_any))
        return 0;
    for (int m = 1; m <= 12; m++)
        if (c->mon & (1u << m) && days_in_month(2000, m) > maxd)
            maxd = days_in_month(2000, m);
    for (int d = 1; d <= maxd; d++)
        if (c->dom & (1u << d))
            return 0;
    set_err(err, errlen, "day-of-month: no selected day occurs in the selected months");
    return -1;
}

int cron_parse(cron_expr *c, const char *expr, char *err, size_t errlen)
{
    const char *start[F_COUNT + 1];
    size_t len[F_COUNT + 1];
    int n = 0, first;
    uint64_t masks[F_COUNT];
    int star[F_COUNT];
    const char *p = expr;

    if (!expr) {
        set_err(err, errlen, "empty expression");
        return -1;
    }
    while (*p) {
        while (isspace((unsigned char)*p))
            p++;
        if (!*p)
            break;
        if (n == F_COUNT) {
            n++;
            break;
        }
        start[n] = p;
        while (*p && !isspace((unsigned char)*p))
            p++;
        len[n] = (size_t)(p - start[n]);
        n++;
    }
    if (n != 5 && n != 6) {
        if (n > F_COUNT)
            set_err(err, errlen, "expected 5 or 6 fields, got more than 6");
        else
            set_err(err, errlen, "expected 5 or 6 fields, got %d", n);
        return -1;
    }
    /* With 5 fields the seconds field is implicitly "0". */
    first = n == 5 ? F_MIN : F_SEC;
    masks[F_SEC] = 1;
    star[F_SEC] = 0;
    for (int f = first; f < F_COUNT; f++) {
        int i = f - first;
        if (parse_field(f, start[i], len[i], &masks[f], &star[f], err, errlen))
            return -1;
    }
    c->sec = masks[F_SEC];
    c->min = masks[F_MIN];
    c->hour = (uint32_t)masks[F_HOUR];
    c->dom = (uint32_t)masks[F_DOM];
    c->mon = (uint16_t)masks[F_MON];
    c->dow = (uint8_t)masks[F_DOW];
    /* Vixie cron: a field that starts with '*' (including "* /n") counts as
     * unrestricted for the "either dom or dow" rule. */
    c->dom_any = star[F_DOM];
    c->dow_any = star[F_DOW];
    return check_dom_reachable(c, err, errlen);
}

/* ---- calendar arithmetic (proleptic Gregorian, no time zone) ---- */

/* Days since 1970-01-01 (H. Hinnant's days_from_civil). */
static long long days_from_civil(long long y, int m, int d)
{
    long long era, yoe, doy, doe;

    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

typedef struct wall {
    int y, mon, d, h, min, s;
} wall;

static long long wall_as_utc(const wall *w)
{
    return days_from_civil(w->y, w->mon, w->d) * 86400LL + w->h * 3600LL + w->min * 60LL + w->s;
}

static int day_matches(const cron_expr *c, const wall *w)
{
    int dow = (int)((days_from_civil(w->y, w->mon, w->d) % 7 + 11) % 7); /* 1970-01-01: Thu */
    int dom_ok = (c->dom >> w->d) & 1;
    int dow_ok = (c->dow >> dow) & 1;

    if (c->dom_any || c->dow_any)
        return dom_ok && dow_ok;
    return dom_ok || dow_ok;
}

/* Smallest set bit >= from in mask, or -1. */
static int next_bit(uint64_t mask, int from, int hi)
{
    for (int v = from; v <= hi; v++)
        if ((mask >> v) & 1)
            return v;
    return -1;
}

static void next_day(wall *w)
{
    w->h = w->min = w->s = 0;
    if (++w->d > days_in_month(w->y, w->mon)) {
        w->d = 1;
        if (++w->mon > 12) {
            w->mon = 1;
            w->y++;
        }
    }
}

static void add_second(wall *w)
{
    if (++w->s < 60)
        return;
    w->s = 0;
    if (++w->min < 60)
        return;
    w->min = 0;
    if (++w->h < 24)
        return;
    next_day(w);
}

/* Moves w forward to the first matching wall time >= w. -1 past max_year. */
static int wall_next_match(const cron_expr *c, wall *w, int max_year)
{
    int v;

    while (w->y <= max_year) {
        if (!((c->mon >> w->mon) & 1)) {
            v = next_bit(c->mon, w->mon + 1, 12);
            if (v < 0) {
                w->y++;
                v = next_bit(c->mon, 1, 12);
            }
            w->mon = v;
            w->d = 1;
            w->h = w->min = w->s = 0;
            continue;
        }
        if (!day_matches(c, w)) {
            next_day(w);
            continue;
        }
        v = next_bit(c->hour, w->h, 23);
        if (v < 0) {
            next_day(w);
            continue;
        }
        if (v != w->h) {
            w->h = v;
            w->min = w->s = 0;
        }
        v = next_bit(c->min, w->min, 59);
        if (v < 0) {
            w->min = 59;
            w->s = 59;
            add_second(w); /* to the next hour */
            continue;
        }
        if (v != w->min) {
            w->min = v;
            w->s = 0;
        }
        v = next_bit(c->sec, w->s, 59);
        if (v < 0) {
            w->s = 59;
            add_second(w); /* to the next minute */
            continue;
        }
        w->s = v;
        return 0;
    }
    return -1;
}

/* ---- time zone ---- */

/* Zone conversion uses the C library under a temporarily set TZ (restored
 * afterwards): the daemon is one thread per process, and glibc's own tz
 * parser is better tested than one we would write. */
typedef struct tz_saved {
    char *old;
    int had;
} tz_saved;

static int tz_push(const char *tz, tz_saved *sv)
{
    const char *old = getenv("TZ");
    char val[256];

    sv->had = old != NULL;
    sv->old = old ? strdup(old) : NULL;
    if (old && !sv->old)
        return -1;
    /* A leading ':' makes glibc read the name as a zone file only, never as a
     * POSIX rule string. */
    snprintf(val, sizeof(val), ":%s", tz && *tz ? tz : "UTC");
    if (setenv("TZ", val, 1)) {
        free(sv->old);
        return -1;
    }
    tzset();
    return 0;
}

static void tz_pop(tz_saved *sv)
{
    if (sv->had)
        setenv("TZ", sv->old, 1);
    else
        unsetenv("TZ");
    tzset();
    free(sv->old);
}

static int tm_equals_wall(const struct tm *tm, const wall *w)
{
    return tm->tm_year + 1900 == w->y && tm->tm_mon + 1 == w->mon && tm->tm_mday == w->d &&
           tm->tm_hour == w->h && tm->tm_min == w->min && tm->tm_sec == w->s;
}

/* The earliest instant whose local wall time is w, or -1 if w falls in a gap.
 * The offsets in force a day before and a day after cover every real zone
 * (no zone changes its offset twice within two days). */
static int wall_to_time(const wall *w, time_t *out)
{
    long long base = wall_as_utc(w);
    long long offs[3];
    int found = 0;
    struct tm tm;

    for (int i = 0; i < 3; i++) {
        time_t probe = (time_t)(base + (i - 1) * 86400LL);
        if (!localtime_r(&probe, &tm))
            return -1;
        offs[i] = tm.tm_gmtoff;
    }
    for (int i = 0; i < 3; i++) {
        time_t t = (time_t)(base - offs[i]);
        if (!localtime_r(&t, &tm) || !tm_equals_wall(&tm, w))
            continue;
        if (!found || t < *out)
            *out = t;
        found = 1;
    }
    return found ? 0 : -1;
}

int cron_tz_valid(const char *tz)
{
    const char *dir = getenv("TZDIR");
    char path[512];
    char magic[4];
    struct stat st;
    FILE *f;
    int ok;

    if (!tz || !*tz || tz[0] == '/' || strlen(tz) > 200)
        return 0;
    /* glibc falls back to UTC for a missing zone file, so "UTC" works even
     * on a machine without tzdata. */
    if (strcmp(tz, "UTC") == 0)
        return 1;
    for (const char *p = tz; *p; p++) {
        if (!(isalnum((unsigned char)*p) || *p == '/' || *p == '_' || *p == '-' || *p == '+'))
            return 0;
        if (p[0] == '/' && p[1] == '/')
            return 0;
    }
    if (strstr(tz, "..") || tz[strlen(tz) - 1] == '/')
        return 0;
    snprintf(path, sizeof(path), "%s/%s", dir && *dir ? dir : "/usr/share/zoneinfo", tz);
    if (stat(path, &st) || !S_ISREG(st.st_mode))
        return 0;
    f = fopen(path, "rb");
    if (!f)
        return 0;
    ok = fread(magic, 1, 4, f) == 4 && memcmp(magic, "TZif", 4) == 0;
    fclose(f);
    return ok;
}

/* Bounds the work in pathological cases (e.g. an every-second job across a
 * repeated hour, where each wall second is examined and skipped). */
#define CRON_MAX_CANDIDATES 100000

int cron_next(const cron_expr *c, const char *tz, time_t after, time_t *next)
{
    tz_saved sv;
    struct tm tm;
    wall w;
    time_t start = after + 1, t = 0;
    int rc = -1, max_year;

    if (tz && *tz && !cron_tz_valid(tz))
        return -1;
    if (tz_push(tz, &sv))
        return -1;
    if (!localtime_r(&start, &tm))
        goto done;
    w = (wall){tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec};
    max_year = w.y + 5;
    for (int n = 0; n < CRON_MAX_CANDIDATES; n++) {
        if (wall_next_match(c, &w, max_year))
            goto done;
        /* Skipped: inside a DST gap, or (in a repeated hour) its first
         * occurrence is already past, so it has fired once. */
        if (wall_to_time(&w, &t) == 0 && t > after) {
            if (t - after > 5LL * 366 * 86400)
                goto done;
            *next = t;
            rc = 0;
            goto done;
        }
        add_second(&w);
    }
done:
    tz_pop(&sv);
    return rc;
}
