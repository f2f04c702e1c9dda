#include "common/hash.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdlib.h>
#include <string.h>

static void to_hex(const unsigned char *md, unsigned int mdlen, char out[65])
{
    static const char hex[] = "0123456789abcdef";
    /* Both functions fail only on allocation failure; an empty digest string
     * then never equals a real one. */
    if (mdlen != 32) {
        out[0] = '\0';
        return;
    }
    for (unsigned int i = 0; i < mdlen; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[64] = '\0';
}

void hash_sha256_hex(const void *data, size_t len, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;

    if (!EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL))
        mdlen = 0;
    to_hex(md, mdlen, out);
}

struct hash_fp {
    EVP_MD *md;
    EVP_MD_CTX *ctx;
};

hash_fp *hash_fp_new(void)
{
    hash_fp *h = calloc(1, sizeof(*h));

    if (!h)
        return NULL;
    h->md = EVP_MD_fetch(NULL, "SHA256", NULL);
    h->ctx = EVP_MD_CTX_new();
    if (!h->md || !h->ctx) {
        hash_fp_free(h);
        return NULL;
    }
    return h;
}

void hash_fp_free(hash_fp *h)
{
    if (!h)
        return;
    EVP_MD_CTX_free(h->ctx);
    EVP_MD_free(h->md);
    free(h);
}

uint64_t hash_sha256_u64(hash_fp *h, const void *data, size_t len)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    uint64_t v = 0;
    if (!EVP_DigestInit_ex2(h->ctx, h->md, NULL) || !EVP_DigestUpdate(h->ctx, data, len) ||
        !EVP_DigestFinal_ex(h->ctx, md, &mdlen) || mdlen < 8)
        return 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | md[i];
    return v;
}

void hash_hmac_sha256_hex(const void *key, size_t klen, const void *data, size_t len, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;

    if (klen > 0x7fffffff || !HMAC(EVP_sha256(), key, (int)klen, data, len, md, &mdlen))
        mdlen = 0;
    to_hex(md, mdlen, out);
}

int hash_ct_equal(const char *a, const char *b)
{
    size_t la, lb, n;
    volatile unsigned char diff;

    if (!a || !b)
        return a == b;
    la = strlen(a);
    lb = strlen(b);
    n = la > lb ? la : lb;
    diff = la != lb;
    /* Touch every byte of both strings whatever they hold, so the time taken
     * reveals no prefix of a secret. */
    for (size_t i = 0; i < n; i++) {
        unsigned char ca = i < la ? (unsigned char)a[i] : 0;
        unsigned char cb = i < lb ? (unsigned char)b[i] : 0;
        diff |= ca ^ cb;
    }
    return diff == 0;
}
