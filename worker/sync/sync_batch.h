/* A fetched department of the directory sync, between the upstream's answer
 * and the write (worker/sync/directory_sync.c):
 *
 *   - sync_batch_parse checks a user/list answer, in one pass over its text, so
 *     that the write cannot fail on its shape, and keeps only its members' text;
 *   - sync_batch_params builds, for the departments one statement writes, the
 *     JSON arrays sql_users takes: every member once (a member that two of the
 *     departments list is written once, by the first), split into those that may
 *     be in users already and those surely not, and the departments with their
 *     counts.
 *
 * Nothing here touches the network, the loop or PostgreSQL. */
#ifndef ORGSYNC_SYNC_BATCH_H
#define ORGSYNC_SYNC_BATCH_H

#include <stddef.h>
#include <stdint.h>

#include "worker/sync/member_map.h"
#include "worker/sync/uid_set.h"

/* A digest in hex: the first 32 digits of SHA-256 (common/hash.h), 16 bytes. */
#define SYNC_DIGEST_HEX 32

/* One member of a fetched department: where its object and its userid are in
 * the batch's text. */
typedef struct ds_member {
    uint32_t off, len;         /* the member's object */
    uint32_t uid_off, uid_len; /* its userid string's contents, still escaped */
    uint64_t th;               /* its object's fingerprint (hash_sha256_u64) */
    int skip;                  /* users holds this text already: not sent (sync_batch_params) */
} ds_member;

typedef struct ds_batch {
    long long dept_id;
    /* The answer's members' objects one after another (the answer around them
     * is not kept). Each member's fields are the upstream's bytes, written in
     * jsonb's key order (shorter first, then bytewise) without the whitespace
     * between fields; a member whose keys are in that order already, or that
     * has a repeated or escaped key or more than 64 fields, is kept exactly as
     * sent. NULL for a department the upstream does not know. */
    char *body;
    size_t len;
    ds_member *m;
    int members;
    int primary; /* members whose main department this is: counted once, here */
    /* SHA-256 (its first SYNC_DIGEST_HEX hex digits) of the members'
     * fingerprints (ds_member.th, 8 bytes each, big-endian) in the answer's
     * order. Equal digests, equal members: what the department's last answer
     * wrote is what this one would write (sql/008). */
    char digest[SYNC_DIGEST_HEX + 1];
    int record;    /* a department's answer: its digest and userids are kept */
    int unchanged; /* set by the sync: the stored digest is this one, so only the
                      checkpoint is written (no member is sent); the sync may then
                      free body and m (members and primary stay) */
    int decided;   /* sync_batch_params has set m[].skip: the same again on a retry */
} ds_batch;

/* Checks a user/list answer (text the client already found to be JSON: the
 * reader trusts it) and fills b (whose dept_id is set): each member is an object
 * with a userid string of 1 to 64 bytes, and each field PostgreSQL reads into a
 * column is absent, null or of that column's type. Returns the member count,
 * or -1 with why (then b holds no members). b->primary counts the members whose main
 * department (else first department) is b->dept_id; b->digest is set and
 * b->record is 1. */
int sync_batch_parse(ds_batch *b, const char *body, size_t len, char *why, size_t n);

/* The memory a batch holds (for the job's buffer bound). */
size_t sync_batch_bytes(const ds_batch *b);

void sync_batch_free(ds_batch *b);

/* What one statement writing these departments takes (sql_users): */
typedef struct sync_params {
    /* [<member>,...] each member once, the first department listing it keeping
     * it (userids compared decoded, so two spellings of one id are one member),
     * in userid order, so PostgreSQL inserts into the users primary key in key
     * order (it measured faster than the departments' order in 3 of 4 pairs:
     * tests/bench/README.md); the members' text is the batch's (see
     * ds_batch.body). With `written` given (below), only the members it may
     * hold; NULL if there are none. */
    char *members;
    /* The same for the members `written` did not hold (each is added to it):
     * surely not in users, they are inserted without ON CONFLICT. NULL if none. */
    char *fresh;
    /* [{"d":dept,"h":digest,"m":members' hashes,"n":members,"p":primary,
     *   "s":unknown upstream,"u":[userid,...],"x":unchanged},...]:
     * "u" the userids the department listed, as the upstream wrote them (what
     * the run saw, for its deletions: kept with the digest, and in the
     * checkpoint when the batch is not recorded); "h" the digest in hex when the
     * batch is recorded, else null, and "m" then its members' uid_hash and
     * fingerprint (32 hex digits each, in the answer's order: member_map.h),
     * else null. An unchanged batch ("x" true) has no "h" and an empty "u", and
     * none of its members is in the member arrays. */
    char *depts;
} sync_params;

/* Fills p for these batches. written: NULL, or the userids the enterprise's
 * sync has sent since it had no users row (worker/sync/uid_set.h). map: NULL,
 * or what users holds for the enterprise's members (member_map.h). The first
 * time a batch is in p, each of its members whose text is the map's is marked
 * skip, and the map takes the text of each member put in; later calls (the
 * statement written again) keep those marks. A skipped member is left out of
 * the member arrays. The map then says what users holds once the statement is
 * written: if it never is, the caller must drop the map. 0, or -ENOMEM
 * (nothing allocated, nothing marked, the map unchanged). sync_params_free
 * frees p's arrays. */
int sync_batch_params(ds_batch *const *batches, int nbatches, uid_set *written, member_map *map,
                      sync_params *p);
void sync_params_free(sync_params *p);

#endif
