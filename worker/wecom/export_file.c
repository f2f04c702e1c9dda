/* An export job's file: md5 and size, AES-256-CBC decryption with our own
 * PKCS#7 (32-byte) unpadding, and a cutter that takes the members out of the
 * plaintext as they complete (see export_file.h). */
#include "worker/wecom/export_file.h"

#include "worker/wecom/json_scan.h"

#include <errno.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>

#define OUT_HEAD "{\"errcode\":0,\"errmsg\":\"ok\",\"userlist\":["

enum { ST_START = 0, ST_KEY_WAIT, ST_KEY, ST_COLON, ST_VALUE, ST_ARR, ST_MEMBER, ST_AFTER, ST_END };

static int is_alnum(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9');
}

int export_key_ok(const char *key)
{
    size_t n = 0;
    if (!key)
        return 0;
    while (key[n] && is_alnum(key[n]))
        n++;
    return key[n] == '\0' && n == EXPORT_KEY_LEN;
}

int export_key_new(char out[EXPORT_KEY_LEN + 1])
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    unsigned char r[EXPORT_KEY_LEN * 2];
    int n = 0;
    /* 62 letters: bytes from 248 up are dropped so that every letter is as likely. */
    while (n < EXPORT_KEY_LEN) {
        if (RAND_bytes(r, sizeof(r)) != 1)
            return -EIO;
        for (size_t i = 0; i < sizeof(r) && n < EXPORT_KEY_LEN; i++)
            if (r[i] < 248)
                out[n++] = abc[r[i] % 62];
    }
    out[EXPORT_KEY_LEN] = '\0';
    return 0;
}

static int fail(export_file *f, char *err, size_t errlen, const char *fmt, const char *what)
{
    f->failed = 1;
    snprintf(err, errlen, fmt, what);
    return -EINVAL;
}

static int md5_ok(const char *s)
{
    size_t n = 0;
    for (; s && s[n]; n++)
        if (!((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'a' && s[n] <= 'f') ||
              (s[n] >= 'A' && s[n] <= 'F')))
            return 0;
    return n == 32;
}

int export_file_init(export_file *f, const char *aeskey, uint64_t size, const char *md5,
                     export_file_mode mode, char *err, size_t errlen)
{
    unsigned char b64[EXPORT_KEY_LEN + 2], key[48];

    memset(f, 0, sizeof(*f));
    f->mode = mode;
    f->size = size;
    if (!export_key_ok(aeskey)) {
        snprintf(err, errlen, "encoding_aeskey is not 43 characters of [A-Za-z0-9]");
        return -EINVAL;
    }
    if (!md5_ok(md5)) {
        snprintf(err, errlen, "md5 is not 32 hex digits");
        return -EINVAL;
    }
    for (int i = 0; i < 32; i++)
        f->md5[i] = (char)(md5[i] >= 'A' && md5[i] <= 'F' ? md5[i] - 'A' + 'a' : md5[i]);
    f->md = EVP_MD_CTX_new();
    if (!f->md || EVP_DigestInit_ex(f->md, EVP_md5(), NULL) != 1)
        goto oom;
    if (mode == EXPORT_FILE_DECODE) {
        memcpy(b64, aeskey, EXPORT_KEY_LEN);
        b64[EXPORT_KEY_LEN] = '=';
        b64[EXPORT_KEY_LEN + 1] = '\0';
        /* 44 base64 characters: 33 bytes, the last the padding's zero. */
        if (EVP_DecodeBlock(key, b64, EXPORT_KEY_LEN + 1) != 33) {
            export_file_free(f);
            snprintf(err, errlen, "encoding_aeskey does not decode to 32 bytes");
            return -EINVAL;
        }
        f->cipher = EVP_CIPHER_CTX_new();
        if (!f->cipher || EVP_DecryptInit_ex(f->cipher, EVP_aes_256_cbc(), NULL, key, key) != 1 ||
            EVP_CIPHER_CTX_set_padding(f->cipher, 0) != 1)
            goto oom;
    }
    buf_init(&f->key);
    buf_init(&f->member);
    buf_init(&f->out);
    buf_puts(&f->out, OUT_HEAD);
    return 0;
oom:
    export_file_free(f);
    snprintf(err, errlen, "out of memory (OpenSSL contexts)");
    return -ENOMEM;
}

void export_file_free(export_file *f)
{
    EVP_MD_CTX_free(f->md);
    EVP_CIPHER_CTX_free(f->cipher);
    f->md = NULL;
    f->cipher = NULL;
    buf_free(&f->key);
    buf_free(&f->member);
    buf_free(&f->out);
}

static int is_ws(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r';
}

/* A member is complete: checked strictly, then appended to out. */
static int member_done(export_file *f, char *err, size_t errlen)
{
    char why[96];
    if (js_check(f->member.data, f->member.len, why, sizeof(why)) != 0)
        return fail(f, err, errlen, "a member of the export is not valid JSON: %s", why);
    if (f->nout)
        buf_puts(&f->out, ",");
    buf_append(&f->out, f->member.data, f->member.len);
    if (f->out.oom)
        return fail(f, err, errlen, "%s", "out of memory");
    f->nout++;
    f->members++;
    buf_reset(&f->member);
    return 0;
}

/* The cutter, over plaintext. */
static int scan(export_file *f, const char *p, size_t n, char *err, size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        char ch = p[i];
        switch (f->st) {
        case ST_START:
            if (is_ws(ch))
                continue;
            if (ch != '{')
                return fail(f, err, errlen, "%s", "the plaintext is not a JSON object");
            f->st = ST_KEY_WAIT;
            break;
        case ST_KEY_WAIT:
            if (is_ws(ch) || ch == ',')
                continue;
            if (ch == '}') {
                f->st = ST_END;
                continue;
            }
            if (ch != '"')
                return fail(f, err, errlen, "%s", "the plaintext's object is malformed");
            buf_reset(&f->key);
            f->esc = 0;
            f->st = ST_KEY;
            break;
        case ST_KEY:
            if (!f->esc && ch == '"') {
                f->key_userlist = f->key.len == 8 && memcmp(f->key.data, "userlist", 8) == 0;
                f->st = ST_COLON;
                continue;
            }
            f->esc = !f->esc && ch == '\\';
            if (f->key.len > 64)
                return fail(f, err, errlen, "%s", "the plaintext has a key over 64 bytes");
            buf_append(&f->key, &ch, 1);
            break;
        case ST_COLON:
            if (is_ws(ch))
                continue;
            if (ch != ':')
                return fail(f, err, errlen, "%s", "the plaintext's object is malformed");
            f->st = ST_VALUE;
            break;
        case ST_VALUE:
            if (is_ws(ch))
                continue;
            if (!f->key_userlist || ch != '[')
                return fail(f, err, errlen, "%s",
                            "the plaintext is not {\"userlist\":[...]} (another key, or not "
                            "an array)");
            f->st = ST_ARR;
            break;
        case ST_ARR:
            if (is_ws(ch) || ch == ',')
                continue;
            if (ch == ']') {
                f->st = ST_AFTER;
                continue;
            }
            if (ch != '{')
                return fail(f, err, errlen, "%s", "a userlist element is not an object");
            buf_reset(&f->member);
            buf_append(&f->member, &ch, 1);
            f->depth = 1;
            f->in_str = f->esc = 0;
            f->st = ST_MEMBER;
            break;
        case ST_MEMBER: {
            /* Copy the run of bytes up to the next one that matters at once. */
            size_t j = i;
            while (j < n) {
                char c = p[j];
                if (f->in_str) {
                    if (f->esc)
                        f->esc = 0;
                    else if (c == '\\')
                        f->esc = 1;
                    else if (c == '"')
                        f->in_str = 0;
                } else if (c == '"')
                    f->in_str = 1;
                else if (c == '{' || c == '[')
                    f->depth++;
                else if (c == '}' || c == ']') {
                    if (--f->depth == 0)
                        break;
                }
                j++;
            }
            size_t take = j < n ? j - i + 1 : j - i;
            if (f->member.len + take > EXPORT_MEMBER_MAX)
                return fail(f, err, errlen, "%s", "a member of the export is over 256 KiB");
            buf_append(&f->member, p + i, take);
            i += take - 1;
            if (j < n) {
                if (member_done(f, err, errlen))
                    return -EINVAL;
                f->st = ST_ARR;
            }
            break;
        }
        case ST_AFTER:
            if (is_ws(ch))
                continue;
            if (ch == ',') {
                f->st = ST_KEY_WAIT;
                continue;
            }
            if (ch != '}')
                return fail(f, err, errlen, "%s", "the plaintext's object is malformed");
            f->st = ST_END;
            break;
        default: /* ST_END */
            if (!is_ws(ch))
                return fail(f, err, errlen, "%s", "bytes after the plaintext's object");
            break;
        }
    }
    if (f->member.oom || f->key.oom)
        return fail(f, err, errlen, "%s", "out of memory");
    return 0;
}

/* Plaintext out of the cipher: all but the last 32 bytes go to the cutter. */
static int plain_in(export_file *f, const unsigned char *p, size_t n, char *err, size_t errlen)
{
    size_t keep = sizeof(f->tail);
    if (f->ntail + n <= keep) {
        memcpy(f->tail + f->ntail, p, n);
        f->ntail += n;
        return 0;
    }
    /* Release what the tail and p hold beyond the last 32 bytes. */
    size_t total = f->ntail + n, release = total - keep;
    size_t from_tail = release < f->ntail ? release : f->ntail;
    if (from_tail && scan(f, (const char *)f->tail, from_tail, err, errlen))
        return -EINVAL;
    memmove(f->tail, f->tail + from_tail, f->ntail - from_tail);
    f->ntail -= from_tail;
    size_t from_p = release - from_tail;
    if (from_p && scan(f, (const char *)p, from_p, err, errlen))
        return -EINVAL;
    memcpy(f->tail + f->ntail, p + from_p, n - from_p);
    f->ntail += n - from_p;
    return 0;
}

static void out_reset_if_taken(export_file *f)
{
    if (f->nout == 0 && f->out.len != sizeof(OUT_HEAD) - 1) {
        buf_reset(&f->out);
        buf_puts(&f->out, OUT_HEAD);
    }
}

int export_file_feed(export_file *f, const void *data, size_t len, char *err, size_t errlen)
{
    unsigned char buf_[16384 + 32];
    const unsigned char *p = data;

    if (f->failed)
        return fail(f, err, errlen, "%s", "the file failed before");
    if (len > f->size - f->seen)
        return fail(f, err, errlen, "%s", "more bytes than data_list's size");
    f->seen += len;
    if (EVP_DigestUpdate(f->md, data, len) != 1)
        return fail(f, err, errlen, "%s", "md5 failed");
    if (f->mode != EXPORT_FILE_DECODE)
        return 0;
    out_reset_if_taken(f);
    while (len) {
        int chunk = len > 16384 ? 16384 : (int)len, outl = 0;
        if (EVP_DecryptUpdate(f->cipher, buf_, &outl, p, chunk) != 1)
            return fail(f, err, errlen, "%s", "decryption failed");
        if (outl && plain_in(f, buf_, (size_t)outl, err, errlen))
            return -EINVAL;
        p += chunk;
        len -= (size_t)chunk;
    }
    return 0;
}

void export_file_take(export_file *f, const char **text, size_t *len, uint32_t *members)
{
    out_reset_if_taken(f);
    *members = f->nout;
    if (!f->nout) {
        *text = NULL;
        *len = 0;
        return;
    }
    buf_puts(&f->out, "]}");
    *text = f->out.data;
    *len = f->out.len;
    f->nout = 0; /* the next call starts out again */
}

int export_file_finish(export_file *f, char *err, size_t errlen)
{
    unsigned char md[EVP_MAX_MD_SIZE], last[32];
    unsigned int mdlen = 0;
    char hex[33];
    int outl = 0;

    if (f->failed)
        return fail(f, err, errlen, "%s", "the file failed before");
    if (f->seen != f->size) {
        f->failed = 1;
        snprintf(err, errlen, "size mismatch: %llu bytes received, data_list says %llu",
                 (unsigned long long)f->seen, (unsigned long long)f->size);
        return -EINVAL;
    }
    if (EVP_DigestFinal_ex(f->md, md, &mdlen) != 1 || mdlen != 16)
        return fail(f, err, errlen, "%s", "md5 failed");
    for (int i = 0; i < 16; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    if (memcmp(hex, f->md5, 32) != 0) {
        f->failed = 1;
        snprintf(err, errlen, "md5 mismatch: the file's is %s, data_list says %s", hex, f->md5);
        return -EINVAL;
    }
    if (f->mode != EXPORT_FILE_DECODE)
        return 0;
    if (f->size % 32 != 0)
        return fail(f, err, errlen, "%s", "the ciphertext is not whole 32-byte blocks");
    if (EVP_DecryptFinal_ex(f->cipher, last, &outl) != 1 || outl != 0)
        return fail(f, err, errlen, "%s", "decryption failed at the end");
    out_reset_if_taken(f);
    /* PKCS#7 to 32 bytes: the last byte says how many (1..32), all of that value. */
    unsigned pad = f->ntail ? f->tail[f->ntail - 1] : 0;
    if (f->ntail != 32 || pad < 1 || pad > 32)
        return fail(f, err, errlen, "%s", "bad padding");
    for (unsigned i = 0; i < pad; i++)
        if (f->tail[f->ntail - 1 - i] != pad)
            return fail(f, err, errlen, "%s", "bad padding");
    if (scan(f, (const char *)f->tail, f->ntail - pad, err, errlen))
        return -EINVAL;
    f->ntail = 0;
    if (f->st != ST_END)
        return fail(f, err, errlen, "%s", "the plaintext ends before its JSON does");
    return 0;
}
