/* Full-jitter exponential backoff (see the AWS architecture note on jitter):
 * spreading retries uniformly over the whole window avoids synchronized
 * retry storms from many workers that failed at the same moment. */
#include "common/backoff.h"

#include <time.h>
#include <unistd.h>

uint64_t backoff_rand(uint64_t *rng_state)
{
    uint64_t x = *rng_state;

    if (x == 0)
        x = 0x9E3779B97F4A7C15ULL;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *rng_state = x;
    return x * 0x2545F4914F6CDD1DULL; /* xorshift64* */
}

uint32_t backoff_full_jitter_ms(unsigned attempt, uint32_t base_ms, uint32_t cap_ms,
                                uint64_t *rng_state)
{
    uint64_t ceil_ms, r;

    /* base * 2^attempt, saturating: from attempt 32 on it exceeds any uint32 cap. */
    if (base_ms == 0)
        ceil_ms = 0;
    else if (attempt >= 32)
        ceil_ms = cap_ms;
    else
        ceil_ms = (uint64_t)base_ms << attempt;
    if (ceil_ms > cap_ms)
        ceil_ms = cap_ms;
    r = backoff_rand(rng_state) >> 32;
    /* Multiply-shift maps 32 random bits onto [0, ceil] without a modulo. */
    return (uint32_t)((r * (ceil_ms + 1)) >> 32);
}

/* splitmix64 finalizer: spreads the few varying bits of the inputs. */
static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

uint64_t backoff_seed(void)
{
    struct timespec rt = {0, 0}, mt = {0, 0};
    uint64_t s;

    clock_gettime(CLOCK_REALTIME, &rt);
    clock_gettime(CLOCK_MONOTONIC, &mt);
    s = mix64((uint64_t)rt.tv_sec * 1000000000ULL + (uint64_t)rt.tv_nsec);
    s ^= mix64((uint64_t)mt.tv_nsec + ((uint64_t)getpid() << 32));
    return s ? s : 0x9E3779B97F4A7C15ULL;
}
