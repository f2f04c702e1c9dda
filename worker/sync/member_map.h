/* What the directory sync last wrote for each member of an enterprise, as far
 * as it may be trusted: a fingerprint of the member's text (sync_batch.h's
 * ds_member.th) by its userid's hash (uid_hash). A changed department's answer
 * sends only the members whose text is not the one users holds (sql/009).
 *
 * Loaded at the enterprise's start from the department digests that still hold
 * (sql_departments: a digest holds only while nothing but the sync's own write
 * is what users holds for the department's members, common/digests_sql.h), and
 * kept true during the run: each member the sync sends takes its new text's
 * fingerprint. A member the map does not know is sent; two departments that
 * disagree on a member make it unknown. So a lookup can only ever answer "send
 * it" wrongly, never "skip it" (but for a collision of 64-bit SHA-256 prefixes
 * of two texts of one userid). */
#ifndef ORGSYNC_MEMBER_MAP_H
#define ORGSYNC_MEMBER_MAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct member_pair {
    uint64_t uh; /* uid_hash of the userid, as PostgreSQL stores it (decoded) */
    uint64_t th; /* the text's fingerprint; 0: unknown */
} member_pair;

typedef struct member_map {
    member_pair *p; /* by uh */
    size_t n;
} member_map;

/* Fills m from hex text: 32 digits per member (uh then th, big-endian), any
 * number of members. 0; -1 on text that is not that (m is then empty: every
 * member is sent, which is only slower); -ENOMEM. */
int member_map_load_hex(member_map *m, const char *hex);
void member_map_free(member_map *m);

/* 1 when the member's stored text has fingerprint th (nothing to write). */
int member_map_holds(const member_map *m, uint64_t uh, uint64_t th);
/* The member's text is now th (the sync writes it): for a member the map
 * knows; one it does not know stays unknown. */
void member_map_set(member_map *m, uint64_t uh, uint64_t th);

#endif
