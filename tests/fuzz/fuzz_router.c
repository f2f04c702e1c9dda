/* libFuzzer: the router and percent-decoding with every API route registered.
 * Input: "<method>\n<path>". Checks what router.h promises: a match never
 * yields a value containing '/' or NUL, nor a ".."/"." segment, and a 405
 * always names the allowed methods. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/router.h"

static const char *const routes[][2] = {
    {"GET", "/healthz"},
    {"GET", "/readyz"},
    {"GET", "/metrics"},
    {"GET", "/v1/leader"},
    {"GET", "/v1/runs"},
    {"POST", "/v1/runs"},
    {"GET", "/v1/runs/latest"},
    {"GET", "/v1/runs/{run_id}"},
    {"GET", "/v1/enterprises/{corp_id}/progress"},
    {"GET", "/v1/enterprises/{corp_id}/users"},
    {"GET", "/v1/enterprises/{corp_id}/departments"},
    {"GET", "/v1/users"},
    {"POST", "/v1/users/realtime-lookup"},
};

static router *rt;
static int marker;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char method[32], *path;
    const uint8_t *nl;
    struct router_match m;

    if (!rt) {
        rt = router_new();
        for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++)
            if (router_add(rt, routes[i][0], routes[i][1], &marker, &marker))
                abort();
    }
    nl = memchr(data, '\n', size);
    if (!nl || (size_t)(nl - data) >= sizeof method)
        return 0;
    memcpy(method, data, (size_t)(nl - data));
    method[nl - data] = '\0';
    path = malloc(size - (size_t)(nl - data));
    memcpy(path, nl + 1, size - (size_t)(nl - data) - 1);
    path[size - (size_t)(nl - data) - 1] = '\0';

    int rc = router_match(rt, method, path, &m);
    if (rc == 0) {
        if (m.handler != &marker)
            abort();
        for (int i = 0; i < m.nparams; i++) {
            const char *v = m.values[i];
            if (!*v || strchr(v, '/') || !strcmp(v, "..") || !strcmp(v, ".") ||
                strlen(v) > ROUTER_MAX_PARAM_LEN)
                abort();
        }
    } else if (rc == 405) {
        if (!m.allow[0])
            abort();
    } else if (rc != 404) {
        abort();
    }

    /* decoding: never longer than the input, never a NUL inside */
    char out[512];
    size_t plen = strlen(path);
    int n = router_percent_decode(path, plen, 1, out, sizeof out);
    if (n >= 0 && ((size_t)n > plen || strlen(out) != (size_t)n))
        abort();
    free(path);
    return 0;
}
