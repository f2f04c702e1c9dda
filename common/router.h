/* Request router: maps (method, path) to a handler. Pure, no I/O.
 *
 *   router_add(r, "GET", "/v1/runs/{run_id}", h, arg);
 *   router_match(r, "GET", "/v1/runs/42", &m);   // 0, m.values[0] = "42"
 *
 * Patterns are literal segments and {name} segments; a {name} matches exactly one
 * non-empty segment. Literal segments win over parameters ("/v1/runs/latest" beats
 * "/v1/runs/{run_id}") whatever the order of registration. */
#ifndef ORGSYNC_ROUTER_H
#define ORGSYNC_ROUTER_H

#include <stddef.h>

typedef struct router router;

#define ROUTER_MAX_PARAMS 8
#define ROUTER_MAX_PARAM_LEN 255

/* The brief's typedef of the same name would clash with the function router_match()
 * (one C namespace for both), so the type is used as `struct router_match`. */
struct router_match {
    void *handler;
    void *arg;
    const char *pattern; /* the registered pattern, owned by the router */
    int nparams;
    const char *names[ROUTER_MAX_PARAMS]; /* owned by the router */
    char values[ROUTER_MAX_PARAMS][256];  /* percent-decoded, NUL-terminated */
    char allow[64];                       /* on 405: "GET, POST" */
};

router *router_new(void);
void router_free(router *r);

/* 0, or -EINVAL for a malformed pattern (must start with '/', {name} whole segments,
 * at most ROUTER_MAX_PARAMS of them), -EEXIST for a duplicate method+pattern, -ENOMEM. */
int router_add(router *r, const char *method, const char *pattern, void *handler, void *arg);

/* 0 on a match; 404 no route for the path; 405 path known, method not (m->allow is
 * set, e.g. "GET, POST"). path is the path only (no query string). Values are
 * percent-decoded; "..", "." segments, an encoded '/' or NUL, bad escapes or
 * over-long params never match (404). A HEAD request matches GET routes. */
int router_match(const router *r, const char *method, const char *path, struct router_match *m);

/* Decodes %XX escapes (and '+' as space when plus_space) of src[0..len) into out
 * (NUL-terminated). Returns the decoded length, or -1 on a bad escape, a decoded NUL,
 * or when it does not fit in outlen-1 bytes. */
int router_percent_decode(const char *src, size_t len, int plus_space, char *out, size_t outlen);

#endif
