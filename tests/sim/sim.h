/* orgsync-sim: a WeCom contacts API simulator for tests, benchmarks and the demo.
 *
 * One header of types for a handful of flat files, each named for its role:
 *
 *   sim_util.c       deterministic RNG and a string -> int64 hash map
 *   sim_directory.c  the generated directory, pre-rendered answers, mutations
 *   sim_limits.c     arrival-time rate window, in-flight counts, access tokens
 *   sim_faults.c     injected faults (latency, HTTP 500, errcode -1, malformed, hang)
 *   sim_stats.c      evidence: per enterprise, per listening port, per department
 *   sim_routes.c     the HTTP handlers (upstream API and /sim/ control)
 *   sim_main.c       flags, the loop, signals
 *
 * Everything runs on one uv loop in one thread; nothing here is thread-safe. */
#ifndef ORGSYNC_SIM_H
#define ORGSYNC_SIM_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "common/buf.h"

/* ---- upstream API paths (for limits, faults and stats) ---- */

typedef enum sim_path {
    SIM_P_GETTOKEN = 0,
    SIM_P_DEPT_LIST,
    SIM_P_USER_LIST,
    SIM_P_USER_GET,
    SIM_P_GETUSERID,
    SIM_P_COUNT
} sim_path;

/* "gettoken", "department/list", "user/list", "user/get", "user/getuserid" */
extern const char *const sim_path_names[SIM_P_COUNT];
/* Index of a name above (a leading "/cgi-bin/" is accepted), or -1. */
int sim_path_parse(const char *name, size_t len);

/* ---- sim_util.c ---- */

/* splitmix64: tiny, fast, and the same sequence for the same seed everywhere. */
uint64_t sim_rng_next(uint64_t *state);
/* Uniform in [0, 1). */
double sim_rng_unit(uint64_t *state);
/* Uniform in [0, n); n > 0. */
uint64_t sim_rng_below(uint64_t *state, uint64_t n);
/* A well-mixed hash of two words (derives per-enterprise seeds from --seed). */
uint64_t sim_mix(uint64_t a, uint64_t b);

/* Open-addressing map from owned string keys to int64 values. */
typedef struct sim_map {
    char **keys;
    int64_t *vals;
    size_t cap, len;
} sim_map;

void sim_map_init(sim_map *m);
void sim_map_free(sim_map *m);
/* Inserts or overwrites. 0 or -ENOMEM. */
int sim_map_put(sim_map *m, const char *key, int64_t val);
/* 1 and *val if present, else 0. */
int sim_map_get(const sim_map *m, const char *key, int64_t *val);
/* 1 if removed, 0 if absent. */
int sim_map_del(sim_map *m, const char *key);

/* ---- sim_directory.c ---- */

#define SIM_MAX_USER_DEPTS 4
#define SIM_NAME_MAX 64

typedef struct sim_user {
    char userid[24];
    char name[SIM_NAME_MAX];
    uint64_t mobile; /* 11 digits */
    int status;      /* 1 active, 2 disabled, 4 not activated */
    int gender;      /* 0 unknown, 1 male, 2 female (rendered as a string) */
    int position;    /* index into the position table */
    int ndept;
    int dept[SIM_MAX_USER_DEPTS]; /* dept[0] is the main department */
    int order[SIM_MAX_USER_DEPTS];
    int leader[SIM_MAX_USER_DEPTS];
    int alive;
} sim_user;

/* A rendered answer kept for reuse: the user/list of one department, or an enterprise's
 * department/list of the root. Owned by the directory's cache, on its LRU list; the
 * owner's pointer (sim_dept.user_list or sim_corp.dept_list) is cleared when it goes. */
typedef struct sim_body {
    struct sim_body *newer, *older;
    struct sim_corp *corp;
    int dept; /* user/list of this department; 0: the corp's department/list */
    size_t len;
    char data[]; /* len bytes and a NUL */
} sim_body;

#define SIM_CACHE_DEFAULT_BYTES (32u << 20)

/* Rendered answers, least recently used dropped first once they hold more than
 * budget bytes; an answer larger than the budget is rendered into scratch instead
 * (valid until the next rendering). */
typedef struct sim_cache {
    sim_body *newest, *oldest;
    size_t bytes, budget;
    buf scratch;
} sim_cache;

typedef struct sim_dept {
    int id, parentid, order, alive;
    char name[SIM_NAME_MAX];
    int *members; /* user indices, in join order */
    size_t nmembers, mcap;
    sim_body *user_list; /* the whole user/list answer; NULL = not rendered, evicted or stale */
} sim_dept;

typedef struct sim_corp {
    int index; /* 1-based */
    char corp_id[16], secret[32], name[SIM_NAME_MAX];
    sim_dept *depts; /* indexed by id; depts[0] unused; a child's id is always above its parent's */
    int max_dept;
    sim_user *users;
    size_t nusers, ucap;
    sim_map by_userid, by_mobile;
    sim_body *dept_list; /* department/list for the root, NULL = not rendered or stale */
    sim_cache *cache;    /* the directory's */
    uint64_t next_user;  /* sequence number of the next generated userid */
} sim_corp;

typedef struct sim_dir {
    sim_corp *corps;
    int ncorps;
    uint64_t seed;
    uint64_t next_mobile;      /* global index of the next generated mobile */
    uint64_t mob_mul, mob_add; /* the index -> mobile bijection */
    uint64_t mut_rng;          /* random mutations: same calls, same result */
    sim_cache cache;           /* budget SIM_CACHE_DEFAULT_BYTES; may be changed any time */
} sim_dir;

/* The corps keep a pointer to d->cache: d must not move while the directory lives. */
int sim_dir_generate(sim_dir *d, int ncorps, int ndepts, int users_per_dept, uint64_t seed);
void sim_dir_free(sim_dir *d);
/* NULL if unknown. */
sim_corp *sim_dir_corp(sim_dir *d, const char *corp_id);
/* The mobile for global index i: 11 digits starting 13, 15 or 18, unique per index. */
uint64_t sim_dir_mobile(const sim_dir *d, uint64_t i);

/* The user/list answer of a department, rendered on first use and kept in the cache
 * until a mutation touches the department or it is evicted; *body is valid until the
 * next call into the directory. 0, -ENOENT (no such department), -ENOMEM. */
int sim_corp_user_list(sim_corp *c, int dept_id, const char **body, size_t *len);
/* department/list of id and its whole subtree (id <= 0: the root). The root's answer
 * is cached like user/list; others are written to scratch. 0, -ENOENT, -ENOMEM. */
int sim_corp_dept_list(sim_corp *c, int id, buf *scratch, const char **body, size_t *len);
/* user/get answer into out. 0, -ENOENT, -ENOMEM. */
int sim_corp_user_get(sim_corp *c, const char *userid, buf *out);
/* Alive member with that mobile (11 digits) in this enterprise, or NULL. */
sim_user *sim_corp_find_mobile(sim_corp *c, const char *mobile);
sim_user *sim_corp_find_user(sim_corp *c, const char *userid);
/* The directory a correct sync must produce: {"corps":[...]} for one (c) or all (NULL). */
int sim_dir_org_json(sim_dir *d, sim_corp *c, buf *out);

/* Mutations (POST /sim/mutate): body as documented in sim_routes.c. Writes the
 * answer to out. 0, or -EINVAL / -ENOENT / -EEXIST / -ENOMEM with a message in err. */
int sim_dir_mutate(sim_dir *d, const char *json, size_t len, buf *out, char *err, size_t errlen);

/* ---- sim_limits.c ---- */

/* Arrival times within the trailing second, oldest first, in a growable ring. Each
 * entry remembers whether it was admitted, so the limit can count either all arrivals
 * (like the real upstream) or only the admitted ones. */
typedef struct sim_window {
    uint64_t *t; /* (time_us << 1) | admitted */
    size_t cap, head, len, admitted;
} sim_window;

void sim_window_init(sim_window *w);
void sim_window_free(sim_window *w);
void sim_window_clear(sim_window *w);
/* Records an arrival at now_us (non-decreasing across calls). Admitted (returns 1)
 * if, counting it, at most `limit` arrivals (admitted ones only unless count_rejected)
 * fall in (now - 1 s, now]; else 0. *in_window (may be NULL) gets all arrivals in that
 * window including this one. A failed allocation admits and forgets the arrival. */
int sim_window_arrive(sim_window *w, uint64_t now_us, uint32_t limit, int count_rejected,
                      uint32_t *in_window);

typedef enum sim_tok_state { SIM_TOK_OK = 0, SIM_TOK_UNKNOWN, SIM_TOK_EXPIRED } sim_tok_state;

typedef struct sim_token {
    char value[64];
    int corp; /* 0-based enterprise index */
    uint64_t expires_us;
} sim_token;

typedef struct sim_limits {
    int ncorps;
    uint32_t rate;         /* requests per enterprise per trailing second */
    uint32_t max_inflight; /* concurrent requests per path */
    int inflight_errcode;  /* 45009 by default (45033 is the real concurrency code) */
    uint32_t token_ttl_s;
    int count_rejected; /* rejected arrivals count toward the window */
    uint32_t ban_ms;    /* after a violation, refuse the enterprise this long */
    sim_window *win;    /* [ncorps] */
    uint64_t *banned_until_us;
    int64_t *cur_token; /* [ncorps] index into tokens, -1 none */
    sim_token *tokens;
    size_t ntokens, tcap;
    sim_map by_token;
    uint64_t token_rng;
    uint32_t inflight[SIM_P_COUNT];
} sim_limits;

int sim_limits_init(sim_limits *l, int ncorps, uint64_t seed);
void sim_limits_free(sim_limits *l);
/* Rate check for one arrival of enterprise corp (0-based): 1 admitted, 0 over the
 * limit (or banned). */
int sim_limits_arrive(sim_limits *l, int corp, uint64_t now_us);
/* gettoken: the enterprise's current token while it is valid (expires_in = seconds
 * left), else a new one (*fresh = 1). 0 or -ENOMEM. */
int sim_limits_token(sim_limits *l, int corp, uint64_t now_us, const char **value,
                     uint32_t *expires_in, int *fresh);
/* *corp is set for SIM_TOK_OK and SIM_TOK_EXPIRED. */
sim_tok_state sim_limits_check_token(const sim_limits *l, const char *value, uint64_t now_us,
                                     int *corp);
/* corp < 0: all. invalidate = 0: tokens answer 42001 from now on; 1: they are
 * forgotten and answer 40014. Returns how many live tokens were touched. */
int sim_limits_expire_tokens(sim_limits *l, int corp, uint64_t now_us, int invalidate);

/* ---- sim_faults.c ---- */

typedef enum sim_fault {
    SIM_F_NONE = 0,
    SIM_F_HTTP500,
    SIM_F_BUSY,      /* errcode -1 */
    SIM_F_MALFORMED, /* 200 with a truncated JSON body */
    SIM_F_HANG,      /* never answered */
    SIM_F_FAIL_DEPT, /* user/list of the failing department */
    SIM_F_COUNT
} sim_fault;

extern const char *const sim_fault_names[SIM_F_COUNT];

typedef struct sim_faults {
    uint32_t latency_ms, jitter_ms;        /* every API answer waits latency + U[0, jitter] */
    double http500, busy, malformed, hang; /* shares of API requests, 0..1 */
    uint32_t http500_next, busy_next, malformed_next, hang_next; /* the next N requests */
    int fail_dept;                                               /* 0 = none */
    char fail_dept_corp[16];                                     /* "" = every enterprise */
    int fail_dept_errcode; /* -1 by default; 500 means an HTTP 500 instead */
    unsigned paths;        /* bit per sim_path the faults apply to */
} sim_faults;

void sim_faults_init(sim_faults *f);
/* The fault for one API request that passed the limits and token checks: the *_next
 * counters first (hang, http500, busy, malformed), then one draw against the shares
 * in that order. The failing department is decided by the caller. */
sim_fault sim_faults_pick(sim_faults *f, sim_path path, uint64_t *rng);
/* Delay before an API answer, in ms. */
uint32_t sim_faults_delay_ms(const sim_faults *f, uint64_t *rng);
/* Merges a JSON object of settings ({"reset":true} first clears). 0 or -EINVAL, err. */
int sim_faults_apply_json(sim_faults *f, const char *json, size_t len, char *err, size_t errlen);
/* Same keys from a flag name without "--" ("latency-ms", "http500", ...): 1 if the
 * flag is a fault flag and was applied, 0 if it is not one, -EINVAL on a bad value. */
int sim_faults_apply_flag(sim_faults *f, const char *name, const char *value, char *err,
                          size_t errlen);
void sim_faults_json(const sim_faults *f, jw *w);

/* ---- sim_stats.c ---- */

#define SIM_MAX_PORTS 8
#define SIM_MAX_CODES 24

typedef struct sim_counters {
    uint64_t requests, by_path[SIM_P_COUNT];
    uint64_t violations, inflight_violations, tokens_issued;
    uint64_t faults[SIM_F_COUNT];
    int ncodes;
    struct {
        int code;
        uint64_t n;
    } codes[SIM_MAX_CODES]; /* answers by errcode (HTTP 500 and hangs are faults) */
    sim_window win;         /* arrivals, for max_1s */
    uint32_t max_1s;
    uint32_t inflight, max_inflight;
    uint64_t first_us, last_us; /* monotonic; 0 = none yet */
    uint32_t *ul_calls, *ul_ok; /* user/list per department id */
    int ul_cap;
} sim_counters;

#define SIM_NO_CODE (-2147483647 - 1) /* no errcode was answered (HTTP 500, hang, garbage) */

/* One API request as the stats see it, recorded once when it is decided. */
typedef struct sim_hit {
    int port; /* index of the listener, -1 unknown */
    int corp; /* 0-based, -1 when the request names no known enterprise */
    sim_path path;
    int dept;        /* user/list: the department asked for, else 0 */
    int errcode;     /* the errcode answered, or SIM_NO_CODE */
    sim_fault fault; /* SIM_F_NONE unless injected */
    int violation, inflight_violation, token_issued;
} sim_hit;

typedef struct sim_stats {
    int ncorps, nports;
    int ports[SIM_MAX_PORTS];
    sim_counters total;
    sim_counters *corp;      /* [ncorps] */
    sim_counters *port;      /* [nports] */
    sim_counters *port_corp; /* [nports * ncorps] */
    uint64_t start_mono_us, start_wall_ms;
} sim_stats;

int sim_stats_init(sim_stats *st, int ncorps, const int *ports, int nports, uint64_t now_us);
void sim_stats_free(sim_stats *st);
/* Index of a listening port, -1 if unknown. */
int sim_stats_port_index(const sim_stats *st, int port);
void sim_stats_record(sim_stats *st, const sim_hit *h, uint64_t now_us);
/* A request entered (+1) or left (-1) the in-flight set. */
void sim_stats_inflight(sim_stats *st, int port, int corp, int delta);
/* Zeroes everything but the requests still in flight. */
void sim_stats_reset(sim_stats *st);
/* Writes the stats' keys into the open object w; corp_filter NULL: every enterprise.
 * 0 or -ENOENT (unknown corp, nothing written). */
int sim_stats_json(const sim_stats *st, const sim_dir *d, const char *corp_filter, jw *w);
/* Departments asked for with user/list more than once (calls > 1) and answered
 * successfully more than once (ok > 1). */
void sim_counters_refetches(const sim_counters *c, uint64_t *calls_gt1, uint64_t *ok_gt1);

/* ---- sim_routes.c: the server state and its handlers ---- */

typedef struct sim_delayed sim_delayed;

typedef struct sim {
    uv_loop_t *loop;
    struct http_server *srv;
    sim_dir dir;
    sim_limits lim;
    sim_faults faults;
    sim_stats stats;
    uint64_t fault_rng;
    sim_delayed *pending; /* answers waiting on a latency timer */
    buf scratch;
    int closing;
} sim;

/* Registers every route on s->srv. 0 or negative errno. */
int sim_routes_install(sim *s);
/* Drops answers still waiting on latency timers (their requests die with the
 * server); the timers are closed, freed in their close callbacks. */
void sim_routes_shutdown(sim *s);

#endif
