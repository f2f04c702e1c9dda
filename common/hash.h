/* SHA-256 (OpenSSL libcrypto EVP) and constant-time comparison. */
#ifndef ORGSYNC_HASH_H
#define ORGSYNC_HASH_H

#include <stddef.h>

/* Lowercase hex digest, NUL-terminated. */
void hash_sha256_hex(const void *data, size_t len, char out[65]);
/* 1 if equal. Time depends only on the lengths, not on where the strings
 * differ (for bearer tokens). NULL equals only NULL. */
int hash_ct_equal(const char *a, const char *b);

#endif
