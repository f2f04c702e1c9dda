/* Every input in tests/fuzz/regressions/<target>/ (inputs that once crashed or
 * hung a fuzz target) and the seed corpus tests/fuzz/corpus/<target>/, replayed
 * through the same fuzz target code with gcc in every test run, so a fixed bug
 * stays fixed without clang. A target aborts on a broken property, which fails
 * this test. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LLVMFuzzerTestOneInput fuzz_router_one
#include "../fuzz/fuzz_router.c"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput fuzz_json_one
#include "../fuzz/fuzz_json.c"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput fuzz_request_one
#include "../fuzz/fuzz_request.c"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput fuzz_answer_one
#include "../fuzz/fuzz_answer.c"
#undef LLVMFuzzerTestOneInput

/* tests/ of the source tree, from this file's own path. */
static void tests_dir(char *out, size_t len)
{
    snprintf(out, len, "%s", __FILE__);
    char *p = strstr(out, "/unit/test_fuzz_regressions.c");
    assert_non_null(p);
    *p = '\0';
}

/* Replays every regular file of dir; returns how many. */
static int replay_dir(const char *dir, int (*one)(const uint8_t *, size_t))
{
    DIR *d = opendir(dir);
    struct dirent *de;
    int n = 0;
    if (!d)
        return 0;
    while ((de = readdir(d))) {
        char path[1024];
        if (de->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        FILE *f = fopen(path, "rb");
        assert_non_null(f);
        fseek(f, 0, SEEK_END);
        long len = ftell(f);
        fseek(f, 0, SEEK_SET);
        uint8_t *buf = malloc(len > 0 ? (size_t)len : 1);
        assert_int_equal(fread(buf, 1, (size_t)len, f), (size_t)len);
        fclose(f);
        one(buf, (size_t)len);
        free(buf);
        n++;
    }
    closedir(d);
    return n;
}

static int replay(const char *target, int (*one)(const uint8_t *, size_t))
{
    char root[1024], dir[1200];
    int n;
    tests_dir(root, sizeof root);
    snprintf(dir, sizeof dir, "%s/fuzz/regressions/%s", root, target);
    n = replay_dir(dir, one);
    snprintf(dir, sizeof dir, "%s/fuzz/corpus/%s", root, target);
    n += replay_dir(dir, one);
    return n;
}

static void test_router(void **state)
{
    (void)state;
    assert_true(replay("router", fuzz_router_one) > 0);
}

static void test_json(void **state)
{
    (void)state;
    assert_true(replay("json", fuzz_json_one) > 0);
}

static void test_request(void **state)
{
    (void)state;
    /* includes post-runs-database-down-hang: it aborted after 5 s before the fix */
    assert_true(replay("request", fuzz_request_one) > 0);
}

static void test_answer(void **state)
{
    (void)state;
    assert_true(replay("answer", fuzz_answer_one) > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_router),
        cmocka_unit_test(test_json),
        cmocka_unit_test(test_request),
        cmocka_unit_test(test_answer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
