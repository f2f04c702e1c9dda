/* WeCom callback message crypto (see msgcrypt.h): OpenSSL EVP for AES-256-CBC
 * and SHA1, our own PKCS#7 to 32-byte blocks (EVP's padding is to 16). */
#include "common/msgcrypt.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#define PAD_BLOCK 32
#define RANDOM_LEN 16

int msgcrypt_aeskey_valid(const char *s)
{
    unsigned char key[MSGCRYPT_KEY_LEN];
    return msgcrypt_key(s, key) == 0;
}

int msgcrypt_key(const char *aeskey, unsigned char key[MSGCRYPT_KEY_LEN])
{
    char in[MSGCRYPT_AESKEY_LEN + 2];
    unsigned char out[36];
    int n;

    if (!aeskey || strlen(aeskey) != MSGCRYPT_AESKEY_LEN)
        return -1;
    for (int i = 0; i < MSGCRYPT_AESKEY_LEN; i++) {
        char c = aeskey[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')))
            return -1;
    }
    memcpy(in, aeskey, MSGCRYPT_AESKEY_LEN);
    in[MSGCRYPT_AESKEY_LEN] = '=';
    in[MSGCRYPT_AESKEY_LEN + 1] = '\0';
    /* EVP_DecodeBlock counts the padding as zero bytes: 44 chars -> 33. */
    n = EVP_DecodeBlock(out, (const unsigned char *)in, MSGCRYPT_AESKEY_LEN + 1);
    if (n != 33)
        return -1;
    memcpy(key, out, MSGCRYPT_KEY_LEN);
    OPENSSL_cleanse(out, sizeof(out));
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int msgcrypt_signature(const char *token, const char *timestamp, const char *nonce,
                       const char *encrypted, char out[41])
{
    const char *parts[4] = {token, timestamp, nonce, encrypted};
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_MD_CTX *ctx;
    int ok;

    for (int i = 0; i < 4; i++)
        if (!parts[i])
            return -1;
    qsort(parts, 4, sizeof(parts[0]), cmp_str);
    ctx = EVP_MD_CTX_new();
    if (!ctx)
        return -1;
    ok = EVP_DigestInit_ex(ctx, EVP_sha1(), NULL) == 1;
    for (int i = 0; ok && i < 4; i++)
        ok = EVP_DigestUpdate(ctx, parts[i], strlen(parts[i])) == 1;
    ok = ok && EVP_DigestFinal_ex(ctx, md, &mdlen) == 1 && mdlen == 20;
    EVP_MD_CTX_free(ctx);
    if (!ok)
        return -1;
    for (unsigned i = 0; i < 20; i++) {
        static const char hex[] = "0123456789abcdef";
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[40] = '\0';
    return 0;
}

int msgcrypt_verify(const char *token, const char *timestamp, const char *nonce,
                    const char *encrypted, const char *sig)
{
    char want[41];

    if (!sig || strlen(sig) != 40)
        return 0;
    if (msgcrypt_signature(token, timestamp, nonce, encrypted, want))
        return 0;
    return CRYPTO_memcmp(want, sig, 40) == 0;
}

/* AES-256-CBC without EVP padding over len bytes (a multiple of 16). */
static int aes_cbc(const unsigned char *key, int enc, const unsigned char *in, int len,
                   unsigned char *out)
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int n1 = 0, n2 = 0, ok;

    if (!c)
        return -1;
    ok = EVP_CipherInit_ex(c, EVP_aes_256_cbc(), NULL, key, key, enc) == 1 &&
         EVP_CIPHER_CTX_set_padding(c, 0) == 1 && EVP_CipherUpdate(c, out, &n1, in, len) == 1 &&
         EVP_CipherFinal_ex(c, out + n1, &n2) == 1 && n1 + n2 == len;
    EVP_CIPHER_CTX_free(c);
    return ok ? 0 : -1;
}

int msgcrypt_decrypt(const unsigned char key[MSGCRYPT_KEY_LEN], const char *b64, char **msg,
                     size_t *msg_len, char *recv_id, size_t recv_len, const char **why)
{
    size_t blen, clen, plen, idlen;
    unsigned char *cipher = NULL, *plain = NULL;
    uint32_t mlen;
    int n, pad, rc = -1;
    const char *w = "out of memory";

    *msg = NULL;
    blen = b64 ? strlen(b64) : 0;
    if (blen == 0 || blen % 4 != 0 || blen > 1 << 24) {
        w = "Encrypt is not base64 of a whole number of blocks";
        goto out;
    }
    cipher = malloc(blen / 4 * 3 + 1);
    if (!cipher)
        goto out;
    n = EVP_DecodeBlock(cipher, (const unsigned char *)b64, (int)blen);
    if (n < 0) {
        w = "Encrypt is not valid base64";
        goto out;
    }
    clen = (size_t)n;
    if (b64[blen - 1] == '=')
        clen--;
    if (b64[blen - 2] == '=')
        clen--;
    if (clen == 0 || clen % 16 != 0) {
        w = "Encrypt is not a whole number of AES blocks";
        goto out;
    }
    plain = malloc(clen + 1);
    if (!plain)
        goto out;
    if (aes_cbc(key, 0, cipher, (int)clen, plain)) {
        w = "decryption failed";
        goto out;
    }
    pad = plain[clen - 1];
    if (pad < 1 || pad > PAD_BLOCK || (size_t)pad > clen) {
        w = "bad padding (wrong key?)";
        goto out;
    }
    for (int i = 1; i <= pad; i++)
        if (plain[clen - (size_t)i] != pad) {
            w = "bad padding (wrong key?)";
            goto out;
        }
    plen = clen - (size_t)pad;
    if (plen < RANDOM_LEN + 4) {
        w = "plaintext too short";
        goto out;
    }
    mlen = (uint32_t)plain[16] << 24 | (uint32_t)plain[17] << 16 | (uint32_t)plain[18] << 8 |
           (uint32_t)plain[19];
    if (mlen > plen - RANDOM_LEN - 4) {
        w = "message length past the end (wrong key?)";
        goto out;
    }
    idlen = plen - RANDOM_LEN - 4 - mlen;
    if (idlen >= recv_len) {
        w = "receive id too long";
        goto out;
    }
    memcpy(recv_id, plain + RANDOM_LEN + 4 + mlen, idlen);
    recv_id[idlen] = '\0';
    *msg = malloc(mlen + 1);
    if (!*msg)
        goto out;
    memcpy(*msg, plain + RANDOM_LEN + 4, mlen);
    (*msg)[mlen] = '\0';
    *msg_len = mlen;
    rc = 0;
    w = NULL;
out:
    if (plain) {
        OPENSSL_cleanse(plain, clen);
        free(plain);
    }
    free(cipher);
    if (why)
        *why = w;
    return rc;
}

int msgcrypt_encrypt(const unsigned char key[MSGCRYPT_KEY_LEN], const char *msg, size_t msg_len,
                     const char *recv_id, const unsigned char *random16, char **b64)
{
    size_t idlen = recv_id ? strlen(recv_id) : 0, plen, clen;
    unsigned char *plain = NULL, *cipher = NULL;
    int pad, rc = -1;

    *b64 = NULL;
    if (!msg || msg_len > 1 << 24 || idlen > 1024)
        return -1;
    plen = RANDOM_LEN + 4 + msg_len + idlen;
    pad = PAD_BLOCK - (int)(plen % PAD_BLOCK);
    clen = plen + (size_t)pad;
    plain = malloc(clen);
    cipher = malloc(clen);
    if (!plain || !cipher)
        goto out;
    if (random16)
        memcpy(plain, random16, RANDOM_LEN);
    else if (RAND_bytes(plain, RANDOM_LEN) != 1)
        goto out;
    plain[16] = (unsigned char)(msg_len >> 24);
    plain[17] = (unsigned char)(msg_len >> 16);
    plain[18] = (unsigned char)(msg_len >> 8);
    plain[19] = (unsigned char)msg_len;
    memcpy(plain + 20, msg, msg_len);
    memcpy(plain + 20 + msg_len, recv_id, idlen);
    memset(plain + plen, pad, (size_t)pad);
    if (aes_cbc(key, 1, plain, (int)clen, cipher))
        goto out;
    *b64 = malloc(4 * ((clen + 2) / 3) + 1);
    if (!*b64)
        goto out;
    EVP_EncodeBlock((unsigned char *)*b64, cipher, (int)clen);
    rc = 0;
out:
    if (plain) {
        OPENSSL_cleanse(plain, clen);
        free(plain);
    }
    free(cipher);
    return rc;
}
