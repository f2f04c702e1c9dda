/* Cron expressions evaluated in an IANA time zone.
 *
 * Time zone choice: cron_next searches local wall-clock fields with plain
 * calendar arithmetic, then maps a match to an instant with localtime_r under
 * a temporarily set TZ environment variable (trying the UTC offsets in force a
 * day before and after, keeping those that round-trip: none = DST gap, two =
 * DST overlap, the earlier wins), and restores the previous TZ before
 * returning. That is safe only because the daemon is single-threaded per
 * process (one uv loop); do not call cron_next from a second thread. Each
 * call reads the zone file (page cache; about 30 us per call at -O2), which
 * is fine once per fire but not in a hot path. */
#ifndef ORGSYNC_CRON_H
#define ORGSYNC_CRON_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* Bit i set = value i allowed. dow uses 0..6 (Sunday = 0; 7 folds into 0).
 * dom_any / dow_any are 1 when that field was written as "*" (or "?"),
 * which decides the Vixie dom/dow rule. */
typedef struct cron_expr {
    uint64_t sec, min;
    uint32_t hour, dom;
    uint16_t mon;
    uint8_t dow;
    int dom_any, dow_any;
} cron_expr;

/* 5 fields (min hour dom mon dow; seconds = 0) or 6 (sec first). Ranges a-b,
 * lists a,b, steps * /n and a-b/n, names JAN-DEC and SUN-SAT
 * (case-insensitive), dow 0-7 (7 = Sunday). dom and dow both restricted =
 * either matches (Vixie cron). Returns 0, or -1 with a one-line reason in
 * err (err may be NULL). */
int cron_parse(cron_expr *c, const char *expr, char *err, size_t errlen);

/* The first fire strictly after `after`, with fields read in time zone tz
 * (IANA name, e.g. "Asia/Shanghai"; NULL or "" = UTC). Times skipped by a
 * DST jump never fire; times repeated fire once (at the first occurrence).
 * Returns 0, or -1 (no fire within 5 years, unknown tz). */
int cron_next(const cron_expr *c, const char *tz, time_t after, time_t *next);

/* 1 if the zone exists in the tz database (also accepts "UTC"), else 0. */
int cron_tz_valid(const char *tz);

#endif
