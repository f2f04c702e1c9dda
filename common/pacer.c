/* The schedule is of send starts because the upstream counts arrivals; the
 * margin absorbs network jitter that could squeeze two sends together on
 * arrival. Catch-up is half an interval: enough for a timer that fires late on
 * a busy CPU (4 ms on average in the full sync benchmark, tests/bench/README.md),
 * and two sends stay at least half an interval apart. */
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
    p->catchup_us = p->interval_us / 2;
    p->due_us = 0;
    p->in_flight = 0;
    p->has_sent = 0;
}

uint64_t pacer_wait_us(const pacer *p, uint64_t now_us)
{
    if (p->in_flight)
        return UINT64_MAX;
    if (!p->has_sent)
        return 0;
    return now_us >= p->due_us ? 0 : p->due_us - now_us;
}

int pacer_start(pacer *p, uint64_t now_us)
{
    uint64_t from;

    if (pacer_wait_us(p, now_us) != 0)
        return -1;
    /* The first send, or one later than catch-up allows, starts the schedule
     * over: the first from its own start, a late one from catch-up before it. */
    if (!p->has_sent)
        from = now_us;
    else if (now_us - p->due_us > p->catchup_us)
        from = now_us - p->catchup_us;
    else
        from = p->due_us;
    p->due_us = from + p->interval_us;
    p->has_sent = 1;
    p->in_flight = 1;
    return 0;
}

void pacer_done(pacer *p)
{
    p->in_flight = 0;
}
