/* SHA-256 known answers (FIPS 180-2 examples), HMAC-SHA256 known answers (RFC 4231)
 * and constant-time compare. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/hash.h"

static void expect_sha(const void *data, size_t len, const char *want)
{
    char out[65];

    memset(out, 'X', sizeof(out));
    hash_sha256_hex(data, len, out);
    assert_string_equal(out, want);
}

static void test_sha256_known_answers(void **state)
{
    const char *m448 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    char *million;

    (void)state;
    expect_sha("", 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    expect_sha("abc", 3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    expect_sha(m448, strlen(m448),
               "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    expect_sha("The quick brown fox jumps over the lazy dog", 43,
               "d7a8fbb307d7809469ca9abcb0082e4f8d5651e46d3cdb762d02d0bf37c9e592");
    million = malloc(1000000);
    assert_non_null(million);
    memset(million, 'a', 1000000);
    expect_sha(million, 1000000,
               "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    free(million);
}

static void expect_hmac(const void *key, size_t klen, const char *data, const char *want)
{
    char out[65];

    memset(out, 'X', sizeof(out));
    hash_hmac_sha256_hex(key, klen, data, strlen(data), out);
    assert_string_equal(out, want);
}

static void test_hmac_sha256_known_answers(void **state)
{
    unsigned char k1[20], k6[131];

    (void)state;
    memset(k1, 0x0b, sizeof k1);
    memset(k6, 0xaa, sizeof k6);
    expect_hmac(k1, sizeof k1, "Hi There",
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
    expect_hmac("Jefe", 4, "what do ya want for nothing?",
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    expect_hmac(k6, sizeof k6, "Test Using Larger Than Block-Size Key - Hash Key First",
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
}

static void test_ct_equal(void **state)
{
    (void)state;
    assert_int_equal(hash_ct_equal("secret-token", "secret-token"), 1);
    assert_int_equal(hash_ct_equal("", ""), 1);
    assert_int_equal(hash_ct_equal("secret-token", "secret-tokeN"), 0);
    assert_int_equal(hash_ct_equal("Secret-token", "secret-token"), 0);
    assert_int_equal(hash_ct_equal("secret", "secret-token"), 0); /* prefix */
    assert_int_equal(hash_ct_equal("secret-token", "secret"), 0);
    assert_int_equal(hash_ct_equal("", "x"), 0);
    assert_int_equal(hash_ct_equal(NULL, "x"), 0);
    assert_int_equal(hash_ct_equal("x", NULL), 0);
    assert_int_equal(hash_ct_equal(NULL, NULL), 1);
    /* Bytes above 0x7f compare correctly too. */
    assert_int_equal(hash_ct_equal("\xe4\xb8\xad", "\xe4\xb8\xad"), 1);
    assert_int_equal(hash_ct_equal("\xe4\xb8\xad", "\xe4\xb8\xae"), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha256_known_answers),
        cmocka_unit_test(test_hmac_sha256_known_answers),
        cmocka_unit_test(test_ct_equal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
