/* Clocks and timestamp formatting. */
#ifndef ORGSYNC_TIMEUTIL_H
#define ORGSYNC_TIMEUTIL_H

#include <stdint.h>
#include <time.h>

/* CLOCK_MONOTONIC in microseconds. */
uint64_t time_mono_us(void);
/* CLOCK_REALTIME in milliseconds since the epoch. */
uint64_t time_wall_ms(void);
/* UTC, "2026-11-24T12:00:00Z"; millis 0..999 adds ".123", -1 = none. */
void time_rfc3339(time_t t, int millis, char out[32]);

#endif
