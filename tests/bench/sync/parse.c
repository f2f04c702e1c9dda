/* The sync's reading of user/list answers, alone: what orgsync does with each
 * answer before PostgreSQL sees it (worker/wecom/wecom.c's js_check and js_root, then
 * worker/sync/sync_batch.c's parse and, per 8 departments, the statement's arrays).
 *
 *   bench_sync_parse ROUNDS ANSWER.json...
 *
 * Reads the answers once, then runs them through that path ROUNDS times and
 * prints the departments, members and bytes it read. tests/bench/sync/parse.sh
 * runs it under callgrind, whose instruction count repeats where time on a
 * shared machine does not. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/wecom/json_scan.h"
#include "worker/sync/sync_batch.h"

enum { BATCH = 8 }; /* DS_BATCH_MAX in worker/sync/directory_sync.c */

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *s = NULL;
    long n;

    if (!f)
        return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) > 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (s = malloc((size_t)n)) && fread(s, 1, (size_t)n, f) != (size_t)n) {
        free(s);
        s = NULL;
    }
    if (s)
        *len = (size_t)n;
    fclose(f);
    return s;
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 0, n = argc - 2, rc = 0;
    char **body = calloc((size_t)(n > 0 ? n : 1), sizeof(*body));
    size_t *len = calloc((size_t)(n > 0 ? n : 1), sizeof(*len));
    long long members = 0, bytes = 0, depts = 0;

    if (rounds <= 0 || n <= 0 || !body || !len) {
        fprintf(stderr, "usage: bench_sync_parse ROUNDS ANSWER.json...\n");
        return 2;
    }
    for (int i = 0; i < n; i++)
        if (!(body[i] = slurp(argv[i + 2], &len[i]))) {
            fprintf(stderr, "bench_sync_parse: cannot read %s\n", argv[i + 2]);
            return 2;
        }
    for (int r = 0; r < rounds && !rc; r++) {
        for (int i = 0; i < n && !rc; i += BATCH) {
            ds_batch *b[BATCH] = {0};
            int k = 0;
            for (int j = i; j < n && j < i + BATCH; j++, k++) {
                char why[128];
                js_val root, v;
                b[k] = calloc(1, sizeof(**b));
                if (!b[k] || js_check(body[j], len[j], why, sizeof(why))) {
                    fprintf(stderr, "answer %d: %s\n", j, b[k] ? why : "out of memory");
                    rc = 1;
                    k++;
                    break;
                }
                js_root(body[j], len[j], &root); /* wecom.c: errcode and errmsg */
                if (!js_get(&root, "errcode", &v) || !js_get(&root, "errmsg", &v)) {
                    fprintf(stderr, "answer %d: no errcode and errmsg\n", j);
                    rc = 1;
                    k++;
                    break;
                }
                b[k]->dept_id = j + 1;
                int m = sync_batch_parse(b[k], body[j], len[j], why, sizeof(why));
                if (m < 0) {
                    fprintf(stderr, "answer %d: %s\n", j, why);
                    rc = 1;
                    k++;
                    break;
                }
                members += m;
                bytes += (long long)len[j];
                depts++;
            }
            sync_params sp;
            if (!rc && sync_batch_params(b, k, NULL, NULL, &sp) != 0)
                rc = 1;
            else if (!rc)
                sync_params_free(&sp);
            for (int j = 0; j < k; j++)
                sync_batch_free(b[j]);
        }
    }
    if (!rc)
        printf("%lld departments, %lld members, %lld bytes read\n", depts, members, bytes);
    for (int i = 0; i < n; i++)
        free(body[i]);
    free(body);
    free(len);
    return rc;
}
