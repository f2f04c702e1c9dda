/* worker/wecom/export_file: an export file's size, md5, decryption, unpadding
 * and member cutting, fed in pieces of every size. The files are encrypted
 * here with OpenSSL directly (the documented scheme), not by the simulator. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <openssl/evp.h>

#include "worker/wecom/export_file.h"
#include "worker/wecom/json_scan.h"

static const char KEY[] = "abcdefghijABCDEFGHIJ0123456789abcdefghijXYZ";

/* AES-256-CBC, key = base64decode(KEY + "="), IV = key[0..16), padding pad
 * (the PKCS#7 value to use, 0: the right one) to 32 bytes. */
static unsigned char *encrypt(const char *plain, size_t len, size_t *outlen, int bad_pad)
{
    unsigned char b64[45], key[48];
    size_t pad = 32 - len % 32, total = len + pad;
    unsigned char *o = malloc(total);
    int n1 = 0, n2 = 0;
    memcpy(b64, KEY, 43);
    b64[43] = '=';
    b64[44] = 0;
    assert_int_equal(EVP_DecodeBlock(key, b64, 44), 33);
    memcpy(o, plain, len);
    memset(o + len, bad_pad ? bad_pad : (int)pad, pad);
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    assert_int_equal(EVP_EncryptInit_ex(c, EVP_aes_256_cbc(), NULL, key, key), 1);
    EVP_CIPHER_CTX_set_padding(c, 0);
    assert_int_equal(EVP_EncryptUpdate(c, o, &n1, o, (int)total), 1);
    assert_int_equal(EVP_EncryptFinal_ex(c, o + n1, &n2), 1);
    EVP_CIPHER_CTX_free(c);
    *outlen = total;
    return o;
}

static void md5hex(const unsigned char *p, size_t n, char out[33])
{
    unsigned char md[16];
    unsigned int l = 0;
    EVP_Digest(p, n, md, &l, EVP_md5(), NULL);
    for (int i = 0; i < 16; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static const char PLAIN[] =
    "{\"userlist\": [{\"userid\":\"u1\",\"name\":\"A \\\"}{\\\" b\",\"department\":[1,2]},\n"
    " {\"userid\":\"u2\",\"name\":\"\xe5\xbc\xa0\",\"department\":[3],\"extattr\":{\"attrs\":[]}},"
    "{\"userid\":\"u3\",\"department\":[]}]}";

/* Feeds the file in pieces of `piece` bytes, taking after each; returns the
 * members seen and the error of finish (0 if none). */
static int run(const unsigned char *ct, size_t n, const char *md5, size_t size, size_t piece,
               uint64_t *members, char *err, size_t errlen)
{
    export_file f;
    const char *text;
    size_t len;
    uint32_t m;
    int rc = export_file_init(&f, KEY, size, md5, EXPORT_FILE_DECODE, err, errlen);
    assert_int_equal(rc, 0);
    *members = 0;
    for (size_t off = 0; off < n && rc == 0; off += piece) {
        size_t k = n - off < piece ? n - off : piece;
        rc = export_file_feed(&f, ct + off, k, err, errlen);
        export_file_take(&f, &text, &len, &m);
        if (m) {
            char why[96];
            /* Each take is a user/list answer's text, strict JSON. */
            assert_int_equal(js_check(text, len, why, sizeof(why)), 0);
            assert_non_null(strstr(text, "\"userlist\":["));
        }
        *members += m;
    }
    if (rc == 0)
        rc = export_file_finish(&f, err, errlen);
    if (rc == 0) {
        export_file_take(&f, &text, &len, &m);
        *members += m;
    }
    export_file_free(&f);
    return rc;
}

static void test_roundtrip_every_piece_size(void **state)
{
    size_t n;
    char md5[33], err[200];
    uint64_t members;
    (void)state;
    unsigned char *ct = encrypt(PLAIN, strlen(PLAIN), &n, 0);
    md5hex(ct, n, md5);
    for (size_t piece = 1; piece <= n + 1; piece += (piece < 40 ? 1 : 37)) {
        int rc = run(ct, n, md5, n, piece, &members, err, sizeof(err));
        if (rc)
            fail_msg("piece %zu: %s", piece, err);
        assert_int_equal(members, 3);
    }
    free(ct);
}

static void test_md5_mismatch(void **state)
{
    size_t n;
    char md5[33], err[200];
    uint64_t members;
    (void)state;
    unsigned char *ct = encrypt(PLAIN, strlen(PLAIN), &n, 0);
    md5hex(ct, n, md5);
    md5[0] = md5[0] == '0' ? '1' : '0';
    assert_int_not_equal(run(ct, n, md5, n, 64, &members, err, sizeof(err)), 0);
    assert_non_null(strstr(err, "md5 mismatch"));
    free(ct);
}

static void test_size_mismatch(void **state)
{
    size_t n;
    char md5[33], err[200];
    uint64_t members;
    (void)state;
    unsigned char *ct = encrypt(PLAIN, strlen(PLAIN), &n, 0);
    md5hex(ct, n - 32, md5);
    /* Truncated by a block: data_list's size is not reached. */
    assert_int_not_equal(run(ct, n - 32, md5, n, 64, &members, err, sizeof(err)), 0);
    assert_non_null(strstr(err, "size mismatch"));
    /* More bytes than said. */
    md5hex(ct, n, md5);
    assert_int_not_equal(run(ct, n, md5, n - 32, 64, &members, err, sizeof(err)), 0);
    assert_non_null(strstr(err, "more bytes"));
    free(ct);
}

static void test_bad_padding(void **state)
{
    size_t n;
    char md5[33], err[200];
    uint64_t members;
    (void)state;
    /* Padding bytes of 33 (over the block) or 0 are refused. */
    unsigned char *ct = encrypt(PLAIN, strlen(PLAIN), &n, 33);
    md5hex(ct, n, md5);
    assert_int_not_equal(run(ct, n, md5, n, 100, &members, err, sizeof(err)), 0);
    assert_non_null(strstr(err, "padding"));
    free(ct);
}

static void test_wrong_key_fails(void **state)
{
    size_t n;
    char md5[33], err[200];
    export_file f;
    (void)state;
    unsigned char *ct = encrypt(PLAIN, strlen(PLAIN), &n, 0);
    md5hex(ct, n, md5);
    /* Another key: the plaintext is garbage, caught by the padding or the JSON. */
    assert_int_equal(export_file_init(&f, "ZZZZZZZZZZABCDEFGHIJ0123456789abcdefghijXYZ", n, md5,
                                      EXPORT_FILE_DECODE, err, sizeof(err)),
                     0);
    int rc = export_file_feed(&f, ct, n, err, sizeof(err));
    if (rc == 0)
        rc = export_file_finish(&f, err, sizeof(err));
    assert_int_not_equal(rc, 0);
    export_file_free(&f);
    /* Malformed key and md5 are refused before anything. */
    assert_int_not_equal(
        export_file_init(&f, "short", n, md5, EXPORT_FILE_DECODE, err, sizeof(err)), 0);
    assert_non_null(strstr(err, "encoding_aeskey"));
    assert_int_not_equal(export_file_init(&f, KEY, n, "xyz", EXPORT_FILE_DECODE, err, sizeof(err)),
                         0);
    assert_non_null(strstr(err, "md5"));
    free(ct);
}

static void test_not_userlist(void **state)
{
    static const char *bad[] = {"{\"other\":[]}", "[1,2]", "{\"userlist\":[1]}",
                                "{\"userlist\":[{\"userid\":\"u1\",}]}",
                                "{\"userlist\":[{\"userid\":\"u1\"}]"};
    char md5[33], err[200];
    uint64_t members;
    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        size_t n;
        unsigned char *ct = encrypt(bad[i], strlen(bad[i]), &n, 0);
        md5hex(ct, n, md5);
        if (run(ct, n, md5, n, 7, &members, err, sizeof(err)) == 0)
            fail_msg("accepted %s", bad[i]);
        free(ct);
    }
}

static void test_verify_mode_and_keys(void **state)
{
    size_t n;
    char md5[33], err[200], key[EXPORT_KEY_LEN + 1];
    export_file f;
    (void)state;
    unsigned char *ct = encrypt(PLAIN, strlen(PLAIN), &n, 0);
    md5hex(ct, n, md5);
    assert_int_equal(export_file_init(&f, KEY, n, md5, EXPORT_FILE_VERIFY, err, sizeof(err)), 0);
    assert_int_equal(export_file_feed(&f, ct, n, err, sizeof(err)), 0);
    assert_int_equal(export_file_finish(&f, err, sizeof(err)), 0);
    export_file_free(&f);
    for (int i = 0; i < 50; i++) {
        assert_int_equal(export_key_new(key), 0);
        assert_true(export_key_ok(key));
    }
    assert_false(export_key_ok("abc"));
    assert_false(export_key_ok("abcdefghijABCDEFGHIJ0123456789abcdefghijXY-"));
    free(ct);
}

static void test_member_too_large(void **state)
{
    size_t big = EXPORT_MEMBER_MAX + 100, n;
    char *plain = malloc(big + 64), md5[33], err[200];
    uint64_t members;
    (void)state;
    int k = sprintf(plain, "{\"userlist\":[{\"userid\":\"u1\",\"name\":\"");
    memset(plain + k, 'x', big);
    strcpy(plain + k + big, "\"}]}");
    unsigned char *ct = encrypt(plain, strlen(plain), &n, 0);
    md5hex(ct, n, md5);
    assert_int_not_equal(run(ct, n, md5, n, 65536, &members, err, sizeof(err)), 0);
    assert_non_null(strstr(err, "256 KiB"));
    free(ct);
    free(plain);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_every_piece_size),
        cmocka_unit_test(test_md5_mismatch),
        cmocka_unit_test(test_size_mismatch),
        cmocka_unit_test(test_bad_padding),
        cmocka_unit_test(test_wrong_key_fails),
        cmocka_unit_test(test_not_userlist),
        cmocka_unit_test(test_verify_mode_and_keys),
        cmocka_unit_test(test_member_too_large),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
