/* The message crypto of WeCom callbacks (the "WXBizMsgCrypt" format), pure and
 * without I/O, used by the callback route (worker/api/api_callbacks.c) and by
 * the simulator that sends callbacks (tests/sim).
 *
 *   key       = base64decode(EncodingAESKey + "=")      (43 chars -> 32 bytes)
 *   encrypted = base64(AES-256-CBC(key, iv = key[0..16), no EVP padding,
 *               PKCS#7 to a 32-byte block of:
 *                 16 random bytes | 4-byte big-endian msg length | msg | receive id))
 *   msg_signature = lowercase hex SHA1 of the concatenation of token, timestamp,
 *               nonce and encrypted, sorted bytewise (strcmp order)
 *
 * The receive id is the corp id for a self-built application's callbacks. */
#ifndef ORGSYNC_MSGCRYPT_H
#define ORGSYNC_MSGCRYPT_H

#include <stddef.h>

#define MSGCRYPT_AESKEY_LEN 43
#define MSGCRYPT_KEY_LEN 32

/* 1 if s is a well-formed EncodingAESKey: exactly 43 characters of [A-Za-z0-9]
 * whose base64 decoding (with "=" appended) is 32 bytes. */
int msgcrypt_aeskey_valid(const char *s);

/* The AES key of an EncodingAESKey. 0, or -1 if it is not valid. */
int msgcrypt_key(const char *aeskey, unsigned char key[MSGCRYPT_KEY_LEN]);

/* msg_signature of (token, timestamp, nonce, encrypted), 40 hex digits. 0, or
 * -1 on a NULL argument or out of memory. */
int msgcrypt_signature(const char *token, const char *timestamp, const char *nonce,
                       const char *encrypted, char out[41]);

/* 1 when sig is the signature of the others; compared in constant time
 * (CRYPTO_memcmp) over the 40 digits. A NULL or mis-sized sig is 0. */
int msgcrypt_verify(const char *token, const char *timestamp, const char *nonce,
                    const char *encrypted, const char *sig);

/* Decrypts a base64 text. 0 with *msg (malloc'd, NUL-terminated, owned by the
 * caller) and *msg_len set and the receive id copied into recv_id (NUL-
 * terminated); or -1 and why names what is wrong (bad base64, not a whole number
 * of blocks, bad padding, length past the end, receive id too long), nothing
 * allocated. */
int msgcrypt_decrypt(const unsigned char key[MSGCRYPT_KEY_LEN], const char *b64, char **msg,
                     size_t *msg_len, char *recv_id, size_t recv_len, const char **why);

/* Encrypts msg for recv_id. random16: the 16 leading bytes, or NULL to draw
 * them from RAND_bytes. 0 with *b64 (malloc'd, NUL-terminated), or -1. */
int msgcrypt_encrypt(const unsigned char key[MSGCRYPT_KEY_LEN], const char *msg, size_t msg_len,
                     const char *recv_id, const unsigned char *random16, char **b64);

#endif
