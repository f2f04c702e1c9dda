/* SHA-256 and HMAC-SHA256 (OpenSSL libcrypto) and constant-time comparison. */
#ifndef ORGSYNC_HASH_H
#define ORGSYNC_HASH_H

#include <stddef.h>
#include <stdint.h>

/* Lowercase hex digest, NUL-terminated. */
void hash_sha256_hex(const void *data, size_t len, char out[65]);
/* The first 8 bytes of SHA-256, big-endian: a fingerprint of data for
 * comparing it with a stored one (a member's text, worker/sync/sync_batch.c);
 * 0 only if the digest could not be computed (out of memory). Many in a row
 * share one hasher (a third of the time of one-shot calls: OpenSSL fetches the
 * algorithm and allocates its state once): hash_fp_new, then hash_fp_free. */
typedef struct hash_fp hash_fp;
hash_fp *hash_fp_new(void);
uint64_t hash_sha256_u64(hash_fp *h, const void *data, size_t len);
void hash_fp_free(hash_fp *h);
/* HMAC-SHA256 of data under key (RFC 2104), lowercase hex, NUL-terminated. */
void hash_hmac_sha256_hex(const void *key, size_t klen, const void *data, size_t len, char out[65]);
/* 1 if equal. Time depends only on the lengths, not on where the strings
 * differ (for bearer tokens). NULL equals only NULL. */
int hash_ct_equal(const char *a, const char *b);

#endif
