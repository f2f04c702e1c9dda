/* Paces requests at n per second, one at a time. Pure state machine: callers
 * pass the current monotonic time and drive their own timers.
 *
 * Sends keep to a schedule of one per interval: a send may start at its due
 * moment, and the next is due one interval after that moment, not after the
 * send. A send that started late (its timer fired late, or it waited for
 * something else) so lets the next start sooner, by up to catch-up (half the
 * interval): lateness does not add up from send to send, and the rate holds
 * while the process competes for a CPU. A send later than that starts the
 * schedule again from (its start - catch-up). The pacer spreads the sends; it
 * does not by itself bound the count in every one-second window (two sends may
 * be interval - catch-up apart): a caller that must (the upstream's limit)
 * also keeps a window over its answers, as worker/wecom/wecom.c does. */
#ifndef ORGSYNC_PACER_H
#define ORGSYNC_PACER_H

#include <stdint.h>

typedef struct pacer {
    uint64_t interval_us;
    uint64_t catchup_us; /* how late a send may be and the next keep its due moment */
    uint64_t due_us;     /* the next send's due moment */
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
