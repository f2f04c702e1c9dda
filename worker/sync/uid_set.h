/* The userids an enterprise's sync has sent to PostgreSQL, when the enterprise
 * had no users row at the start (its first sync): a member not in the set is
 * surely not in users yet, so it can be written with a plain INSERT, which
 * costs PostgreSQL much less than INSERT ... ON CONFLICT (no arbiter probe, no
 * speculative insertion: tests/bench/README.md).
 *
 * The set keeps a 32-bit hash of each userid, not the userid: 4 bytes a member
 * at most twice over, freed when the enterprise ends. Two userids with one hash
 * make uid_set_add answer "maybe written" for a userid never added; that is
 * always safe (the member takes ON CONFLICT), while the answer "added" is exact:
 * it is given only for a userid never added before. */
#ifndef ORGSYNC_UID_SET_H
#define ORGSYNC_UID_SET_H

#include <stddef.h>
#include <stdint.h>

typedef struct uid_set {
    uint32_t *slot; /* 0: empty; a userid's hash is never 0 (see uid_set.c) */
    size_t cap;     /* a power of two, or 0 before the first add */
    size_t n;
} uid_set;

void uid_set_init(uid_set *s);
void uid_set_free(uid_set *s);

/* The userid's bytes (decoded, as PostgreSQL stores it). 1: it was not in the
 * set, and now is. 0: it may have been added before (or memory ran out: the
 * caller treats that as maybe, too). */
int uid_set_add(uid_set *s, const char *uid, size_t n);

/* FNV-1a over a userid's bytes (never 0): the key uid_set keeps, folded to
 * 32 bits, and worker/sync/member_map.h's. */
uint64_t uid_hash(const char *uid, size_t n);

#endif
