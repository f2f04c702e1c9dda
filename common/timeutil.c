#include "common/timeutil.h"

#include <stdio.h>

uint64_t time_mono_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000ULL + (uint64_t)ts.tv_nsec / 1000ULL;
}

uint64_t time_wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000ULL + (uint64_t)ts.tv_nsec / 1000000ULL;
}

void time_rfc3339(time_t t, int millis, char out[32])
{
    struct tm tm;
    size_t n;

    if (!gmtime_r(&t, &tm)) {
        snprintf(out, 32, "1970-01-01T00:00:00Z");
        return;
    }
    /* strftime bounds the output by itself; 26 bytes is the longest we write. */
    n = strftime(out, 27, "%Y-%m-%dT%H:%M:%S", &tm);
    if (millis >= 0 && millis <= 999 && n > 0) {
        out[n++] = '.';
        out[n++] = (char)('0' + millis / 100);
        out[n++] = (char)('0' + millis / 10 % 10);
        out[n++] = (char)('0' + millis % 10);
    }
    out[n++] = 'Z';
    out[n] = '\0';
}
