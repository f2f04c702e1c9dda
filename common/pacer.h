/* Paces requests at n per second, one at a time. Pure state machine: callers
 * pass the current monotonic time and drive their own timers. The interval is
 * measured between send starts, so a request that outlasts the interval lets
 * the next one start as soon as pacer_done() is called. */
#ifndef ORGSYNC_PACER_H
#define ORGSYNC_PACER_H

#include <stdint.h>

typedef struct pacer {
    uint64_t interval_us;
    uint64_t last_send_us;
    int in_flight;
    int has_sent;
} pacer;

/* interval = 1e6/rate + margin (rate <= 0 means no rate limit, margin only). */
void pacer_init(pacer *p, double rate_per_s, uint64_t extra_margin_us);
/* 0 if a send may start now; UINT64_MAX while one is in flight; else the
 * microseconds to wait. */
uint64_t pacer_wait_us(const pacer *p, uint64_t now_us);
/* Records a send at now; -1 if not allowed yet or one is in flight. */
int pacer_start(pacer *p, uint64_t now_us);
/* The request finished (success or not). */
void pacer_done(pacer *p);

#endif
