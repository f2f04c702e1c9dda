/* Retry delays with "full jitter": uniform in [0, min(cap, base * 2^attempt)]. */
#ifndef ORGSYNC_BACKOFF_H
#define ORGSYNC_BACKOFF_H

#include <stdint.h>

/* rng_state is a xorshift64* state seeded by the caller (backoff_seed());
 * a zero state is replaced by a fixed non-zero constant. */
uint32_t backoff_full_jitter_ms(unsigned attempt, uint32_t base_ms, uint32_t cap_ms,
                                uint64_t *rng_state);
/* Non-zero seed from the realtime clock, the monotonic clock and the pid. */
uint64_t backoff_seed(void);
/* Next raw value of the same generator (tests, other jitter uses). */
uint64_t backoff_rand(uint64_t *rng_state);

#endif
