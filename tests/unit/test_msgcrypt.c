/* WeCom callback crypto (common/msgcrypt.h): a known vector computed outside
 * this code, round trips, and every refusal.
 *
 * The vector was derived once with python3 and the openssl CLI (not with
 * msgcrypt.c):
 *   key = base64.b64decode(AESKEY + "=")
 *   pt  = b"0123456789abcdef" + struct.pack(">I", len(MSG)) + MSG + b"wwcorp"
 *   pt += bytes([32 - len(pt) % 32]) * (32 - len(pt) % 32)
 *   openssl enc -aes-256-cbc -nopad -K <key hex> -iv <key[:16] hex>  < pt  | base64
 *   sha1("".join(sorted(["tok", "1700000000", "nonce42", ENCRYPTED])))       */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/msgcrypt.h"

#define AESKEY "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
#define MSG "<xml><ToUserName><![CDATA[wwcorp]]></ToUserName></xml>"
#define KEY_HEX "69b71d79f8218a39259a7a29aabb2dbafc31cb3d35db7e39ebbf3d0010831051"
#define ENCRYPTED                                                                                  \
    "Q3stYC6hdFzMh9T8HCvyDFG6MzaiOXQtrDCewC0jdxDv/AdJI1CqmnTuH1dQoe36dQnrbgUuzcawjaGzWi4bPAz0d5Rd" \
    "caxwUlCzUmIHyShVn5clOwZw7eaoxWcHYS2s"
#define SIG "cebf884d898da988a14863d199a8d1dfdc94fa26"

static void test_key(void **state)
{
    unsigned char key[32];
    char hex[65];
    (void)state;
    assert_int_equal(msgcrypt_key(AESKEY, key), 0);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", key[i]);
    assert_string_equal(hex, KEY_HEX);
    assert_true(msgcrypt_aeskey_valid(AESKEY));
    assert_false(msgcrypt_aeskey_valid(NULL));
    assert_false(msgcrypt_aeskey_valid(""));
    assert_false(msgcrypt_aeskey_valid(AESKEY "A"));                                   /* 44 */
    assert_false(msgcrypt_aeskey_valid("abcdefghijklmnopqrstuvwxyz0123456789ABCDEF")); /* 42 */
    assert_false(msgcrypt_aeskey_valid("abcdefghijklmnopqrstuvwxyz0123456789ABCDE+"
                                       "G")); /* not [A-Za-z0-9] */
}

static void test_signature_vector(void **state)
{
    char sig[41];
    (void)state;
    assert_int_equal(msgcrypt_signature("tok", "1700000000", "nonce42", ENCRYPTED, sig), 0);
    assert_string_equal(sig, SIG);
    /* the order of the arguments does not matter: they are sorted */
    assert_int_equal(msgcrypt_signature("nonce42", ENCRYPTED, "tok", "1700000000", sig), 0);
    assert_string_equal(sig, SIG);
    assert_true(msgcrypt_verify("tok", "1700000000", "nonce42", ENCRYPTED, SIG));
    assert_false(msgcrypt_verify("tok", "1700000001", "nonce42", ENCRYPTED, SIG));
    assert_false(msgcrypt_verify("tok2", "1700000000", "nonce42", ENCRYPTED, SIG));
    assert_false(msgcrypt_verify("tok", "1700000000", "nonce42", ENCRYPTED,
                                 "cebf884d898da988a14863d199a8d1dfdc94fa27"));
    assert_false(msgcrypt_verify("tok", "1700000000", "nonce42", ENCRYPTED, SIG "0"));
    assert_false(msgcrypt_verify("tok", "1700000000", "nonce42", ENCRYPTED, NULL));
    assert_int_equal(msgcrypt_signature(NULL, "1", "2", "3", sig), -1);
}

static void test_decrypt_vector(void **state)
{
    unsigned char key[32];
    char *msg = NULL, rid[64];
    size_t len = 0;
    const char *why = NULL;
    (void)state;
    assert_int_equal(msgcrypt_key(AESKEY, key), 0);
    assert_int_equal(msgcrypt_decrypt(key, ENCRYPTED, &msg, &len, rid, sizeof rid, &why), 0);
    assert_null(why);
    assert_string_equal(msg, MSG);
    assert_int_equal(len, strlen(MSG));
    assert_string_equal(rid, "wwcorp");
    free(msg);
}

static void test_encrypt_vector(void **state)
{
    unsigned char key[32];
    char *b64 = NULL;
    (void)state;
    assert_int_equal(msgcrypt_key(AESKEY, key), 0);
    assert_int_equal(msgcrypt_encrypt(key, MSG, strlen(MSG), "wwcorp",
                                      (const unsigned char *)"0123456789abcdef", &b64),
                     0);
    assert_string_equal(b64, ENCRYPTED);
    free(b64);
}

static void test_round_trip_sizes(void **state)
{
    unsigned char key[32];
    char buf[200], rid[64];
    (void)state;
    assert_int_equal(msgcrypt_key(AESKEY, key), 0);
    memset(buf, 'x', sizeof buf);
    /* every length around the 32-byte block edge, padding 1..32 */
    for (size_t n = 0; n < 80; n++) {
        char *b64 = NULL, *msg = NULL;
        size_t len;
        const char *why;
        assert_int_equal(msgcrypt_encrypt(key, buf, n, "wwsim0001", NULL, &b64), 0);
        assert_int_equal(msgcrypt_decrypt(key, b64, &msg, &len, rid, sizeof rid, &why), 0);
        assert_int_equal(len, n);
        assert_memory_equal(msg, buf, n);
        assert_string_equal(rid, "wwsim0001");
        free(b64);
        free(msg);
    }
}

static void test_refusals(void **state)
{
    unsigned char key[32], other[32];
    char *msg = (char *)1, rid[8], *b64 = NULL;
    size_t len;
    const char *why = NULL;
    (void)state;
    assert_int_equal(msgcrypt_key(AESKEY, key), 0);
    assert_int_equal(msgcrypt_key("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefg", other), 0);
    /* wrong key: the padding or the length does not hold */
    assert_int_equal(msgcrypt_decrypt(other, ENCRYPTED, &msg, &len, rid, sizeof rid, &why), -1);
    assert_null(msg);
    assert_non_null(why);
    assert_int_equal(msgcrypt_decrypt(key, "", &msg, &len, rid, sizeof rid, &why), -1);
    assert_int_equal(msgcrypt_decrypt(key, "abc", &msg, &len, rid, sizeof rid, &why), -1);
    assert_int_equal(msgcrypt_decrypt(key, "!!!!", &msg, &len, rid, sizeof rid, &why), -1);
    assert_int_equal(msgcrypt_decrypt(key, "QUJD", &msg, &len, rid, sizeof rid, &why), -1);
    /* receive id longer than the caller's buffer */
    assert_int_equal(msgcrypt_encrypt(key, "m", 1, "a-very-long-receive-id", NULL, &b64), 0);
    assert_int_equal(msgcrypt_decrypt(key, b64, &msg, &len, rid, sizeof rid, &why), -1);
    assert_string_equal(why, "receive id too long");
    free(b64);
    /* a flipped bit in the last block breaks the padding */
    char bad[] = ENCRYPTED;
    bad[strlen(bad) - 3] = bad[strlen(bad) - 3] == 'A' ? 'B' : 'A';
    assert_int_equal(msgcrypt_decrypt(key, bad, &msg, &len, rid, sizeof rid, &why), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key),
        cmocka_unit_test(test_signature_vector),
        cmocka_unit_test(test_decrypt_vector),
        cmocka_unit_test(test_encrypt_vector),
        cmocka_unit_test(test_round_trip_sizes),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
