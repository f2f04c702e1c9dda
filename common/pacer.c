/* Spacing is measured between send starts because the upstream counts
 * arrivals; the margin absorbs network jitter that could squeeze two sends
 * together on arrival. */
#include "common/pacer.h"

void pacer_init(pacer *p, double rate_per_s, uint64_t extra_margin_us)
{
    uint64_t base = 0;

    if (rate_per_s > 0) {
        double exact = 1e6 / rate_per_s;
        base = (uint64_t)exact;
        /* Round up: rounding down would let the rate creep above the limit. */
        if ((double)base < exact)
            base++;
    }
    p->interval_us = base + extra_margin_us;
    p->last_send_us = 0;
    p->in_flight = 0;
    p->has_sent = 0;
}

uint64_t pacer_wait_us(const pacer *p, uint64_t now_us)
{
    uint64_t next;

    if (p->in_flight)
        return UINT64_MAX;
    if (!p->has_sent)
        return 0;
    next = p->last_send_us + p->interval_us;
    return now_us >= next ? 0 : next - now_us;
}

int pacer_start(pacer *p, uint64_t now_us)
{
    if (pacer_wait_us(p, now_us) != 0)
        return -1;
    p->last_send_us = now_us;
    p->has_sent = 1;
    p->in_flight = 1;
    return 0;
}

void pacer_done(pacer *p)
{
    p->in_flight = 0;
}
