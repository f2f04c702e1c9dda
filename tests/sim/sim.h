/* orgsync-sim: a WeCom contacts API simulator for tests, benchmarks and the demo.
 *
 * One header of types for a handful of flat files, each named for its role:
 *
 *   sim_util.c       deterministic RNG and a string -> int64 hash map
 *   sim_directory.c  the generated directory, pre-rendered answers, mutations
 *   sim_listid.c     user/list_id: its opaque cursor and pages of memberships
 *   sim_policy.c     per-enterprise policy: legacy-API IPs, new app, visible range,
 *                    trusted IPs
 *   sim_limits.c     arrival-time rate windows (per enterprise, per source IP),
 *                    in-flight counts, access tokens of both credentials
 *   sim_faults.c     injected faults (latency, HTTP 500, errcode -1, malformed, hang)
 *   sim_stats.c      evidence: per enterprise, per listening port, per source IP,
 *                    per department
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
    SIM_P_USER_LIST_ID,
    SIM_P_DEPT_SIMPLELIST,
    SIM_P_DEPT_GET,
    SIM_P_EXPORT_USER,
    SIM_P_EXPORT_SIMPLE_USER,
    SIM_P_EXPORT_GET_RESULT,
    SIM_P_COUNT
} sim_path;

/* "gettoken", "department/list", "user/list", "user/get", "user/getuserid",
 * "user/list_id", "department/simplelist", "department/get", "export/user",
 * "export/simple_user", "export/get_result" */
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

/* A rendered answer kept for reuse: the user/list of one department (whole, or lite:
 * without the fields a new app is not given), or an enterprise's department/list of
 * the root. Owned by the directory's cache, on its LRU list; the owner's pointer
 * (sim_dept.user_list, sim_dept.user_list_lite or sim_corp.dept_list) is cleared when
 * it goes. */
typedef struct sim_body {
    struct sim_body *newer, *older;
    struct sim_corp *corp;
    int dept; /* user/list of this department; 0: the corp's department/list */
    int lite; /* user/list without mobile, email, biz_mail, avatar, ... (app_new) */
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
    sim_body *user_list_lite; /* the same without the fields app_new hides */
} sim_dept;

typedef struct sim_corp {
    int index; /* 1-based */
    char corp_id[16], name[SIM_NAME_MAX];
    char secret[32];         /* the app's: secret-wwsimNNNN */
    char contact_secret[32]; /* the contact-sync one: contact-wwsimNNNN */
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

/* One member's user/list object (braces included) into b: the same bytes as in
 * a user/list answer (the export files carry these). simple: only userid, name,
 * department, open_userid (export/simple_user). */
void sim_corp_user_object(buf *b, const sim_corp *c, const sim_user *u, int simple);

/* The answers a self-built app created after 2022-06-20 gets (policy app_new): the
 * member objects without the keys mobile, email, biz_mail, avatar, thumb_avatar,
 * gender, qr_code, address. Kept in the cache like the whole ones. */
int sim_corp_user_list_lite(sim_corp *c, int dept_id, const char **body, size_t *len);
int sim_corp_user_get_lite(sim_corp *c, const char *userid, buf *out);

/* A set of department ids: an app's visible range is these and their whole subtrees. */
#define SIM_MAX_VISIBLE 64
typedef struct sim_deptset {
    int n;
    int ids[SIM_MAX_VISIBLE];
} sim_deptset;

/* 1 if vis is NULL (everything visible) or id or one of its ancestors is in vis. */
int sim_corp_dept_in(const sim_corp *c, const sim_deptset *vis, int id);
/* 1 if vis is NULL or any department of u is in range. */
int sim_corp_user_in(const sim_corp *c, const sim_deptset *vis, const sim_user *u);
/* department/list of the departments in range (vis NULL: like sim_corp_dept_list of
 * the root), into scratch unless it is the cached root answer. 0 or -ENOMEM. */
int sim_corp_dept_list_visible(sim_corp *c, const sim_deptset *vis, buf *scratch, const char **body,
                               size_t *len);
/* department/simplelist: {"id","parentid","order"} of id and its subtree (id <= 0:
 * every department in range of vis, all if vis is NULL). 0, -ENOENT, -ENOMEM. */
int sim_corp_dept_simplelist(sim_corp *c, int id, const sim_deptset *vis, buf *out);
/* department/get of one department. 0, -ENOENT, -ENOMEM. */
int sim_corp_dept_get(sim_corp *c, int id, buf *out);
/* Alive member with that mobile (11 digits) in this enterprise, or NULL. */
sim_user *sim_corp_find_mobile(sim_corp *c, const char *mobile);
sim_user *sim_corp_find_user(sim_corp *c, const char *userid);
/* The directory a correct sync must produce: {"corps":[...]} for one (c) or all (NULL). */
int sim_dir_org_json(sim_dir *d, sim_corp *c, buf *out);

/* Mutations (POST /sim/mutate): body as documented in sim_routes.c. Writes the
 * answer to out. 0, or -EINVAL / -ENOENT / -EEXIST / -ENOMEM with a message in err. */
int sim_dir_mutate(sim_dir *d, const char *json, size_t len, buf *out, char *err, size_t errlen);

/* ---- sim_listid.c ---- */

/* A user/list_id position: the next member index of an enterprise and the next entry
 * of that member's department list. Members are never renumbered (a removed one keeps
 * its slot, dead), so a position stays meaningful across mutations. */
typedef struct sim_cursor {
    uint32_t corp; /* 1-based enterprise index */
    uint32_t user; /* index into sim_corp.users */
    uint32_t slot; /* 0..SIM_MAX_USER_DEPTS */
} sim_cursor;

/* 20 lowercase hex digits: a magic byte, the three fields, and a 16-bit check. */
#define SIM_CURSOR_LEN 20
#define SIM_LIST_ID_MAX 10000
/* Members a page looks at besides its rows' own, at most (removed members and, for a
 * narrow visible range, hidden ones): a page may then stop short of limit rows. */
#define SIM_LIST_ID_SCAN 4096

void sim_cursor_encode(const sim_cursor *cur, char out[SIM_CURSOR_LEN + 1]);
/* 0, or -EINVAL for anything sim_cursor_encode did not write. */
int sim_cursor_decode(const char *s, sim_cursor *cur);
/* One user/list_id answer into out: from cursor (NULL or "" = the start) up to limit
 * rows {"userid","department"}, one per membership in range of vis (NULL = all),
 * by member index then the member's department order; next_cursor "" on the last
 * page. 0, -EINVAL (a cursor not issued for this enterprise), -ENOMEM. */
int sim_corp_list_id(const sim_corp *c, const char *cursor, uint32_t limit, const sim_deptset *vis,
                     buf *out);

/* ---- sim_limits.c ---- */

/* Arrival times within the trailing second, oldest first, in a growable ring. Each
 * entry remembers whether it was admitted, so the limit can count either all arrivals
 * (like the real upstream) or only the admitted ones. */
typedef struct sim_window {
    uint64_t *t; /* (time_us << 1) | admitted */
    size_t cap, head, len, admitted;
    uint64_t span_us; /* the window's length; 0 = 1 s */
} sim_window;

void sim_window_init(sim_window *w);
/* A window of another length (the per-IP minute: 60 s). */
void sim_window_init_span(sim_window *w, uint64_t span_us);
void sim_window_free(sim_window *w);
void sim_window_clear(sim_window *w);
/* Records an arrival at now_us (non-decreasing across calls). Admitted (returns 1)
 * if, counting it, at most `limit` arrivals (admitted ones only unless count_rejected)
 * fall in (now - 1 s, now]; else 0. *in_window (may be NULL) gets all arrivals in that
 * window including this one. A failed allocation admits and forgets the arrival. */
int sim_window_arrive(sim_window *w, uint64_t now_us, uint32_t limit, int count_rejected,
                      uint32_t *in_window);
/* The two halves of sim_window_arrive, for a verdict that depends on several windows:
 * arrivals (admitted ones only unless count_rejected) in (now - span, now] before this
 * one; then record it. Push: 0 or -ENOMEM (the arrival is then forgotten). */
size_t sim_window_count(sim_window *w, uint64_t now_us, int count_rejected);
int sim_window_push(sim_window *w, uint64_t now_us, int admitted);

/* The per-IP hour: arrivals per second in 3600 buckets, counted whole seconds: at an
 * arrival in second S the count covers the seconds S-3599..S (exact to the second). */
#define SIM_HOUR_BUCKETS 3600
typedef struct sim_buckets {
    uint32_t *all, *admitted; /* [SIM_HOUR_BUCKETS], by second modulo; NULL until used */
    uint64_t sec;             /* the second of the newest arrival */
    uint64_t n_all, n_admitted;
} sim_buckets;

void sim_buckets_free(sim_buckets *b);
void sim_buckets_clear(sim_buckets *b);
/* Arrivals in the seconds before now's and now's own, 3600 in all, before this one. */
uint64_t sim_buckets_count(sim_buckets *b, uint64_t now_us, int count_rejected);
/* Records one arrival (after sim_buckets_count at the same time). 0 or -ENOMEM. */
int sim_buckets_push(sim_buckets *b, uint64_t now_us, int admitted);

/* The two credentials of an enterprise: the self-built app's secret and the contact-sync
 * secret (通讯录同步). Each has its own tokens. */
typedef enum sim_cred { SIM_CRED_APP = 0, SIM_CRED_CONTACT, SIM_CRED_COUNT } sim_cred;
extern const char *const sim_cred_names[SIM_CRED_COUNT]; /* "app", "contact" */

/* What one source address has sent, for its limits. */
typedef struct sim_ipwin {
    sim_window minute; /* span 60 s, exact */
    sim_buckets hour;
} sim_ipwin;

/* sim_limits_ip_arrive's verdicts. */
enum { SIM_IP_OK = 0, SIM_IP_OVER_MIN, SIM_IP_OVER_HOUR };

typedef enum sim_tok_state { SIM_TOK_OK = 0, SIM_TOK_UNKNOWN, SIM_TOK_EXPIRED } sim_tok_state;

typedef struct sim_token {
    char value[64];
    int corp; /* 0-based enterprise index */
    sim_cred cred;
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
    uint32_t list_id_page_max; /* rows of a user/list_id page at most, whatever the limit
                                  asked (0: the limit asked); a test knob for many pages */
    uint32_t ip_per_min;       /* requests per source IP in any trailing 60 s */
    uint32_t ip_per_hour;      /* ... in the trailing 3600 s (whole seconds) */
    int64_t *cur_token;        /* [ncorps * SIM_CRED_COUNT] index into tokens, -1 none */
    sim_token *tokens;
    size_t ntokens, tcap;
    sim_map by_token;
    uint64_t token_rng;
    uint32_t inflight[SIM_P_COUNT];
    sim_map ip_index; /* source address -> index into ipw */
    sim_ipwin *ipw;
    size_t nip, ipcap;
} sim_limits;

int sim_limits_init(sim_limits *l, int ncorps, uint64_t seed);
void sim_limits_free(sim_limits *l);
/* Rate check for one arrival of enterprise corp (0-based): 1 admitted, 0 over the
 * limit (or banned). */
int sim_limits_arrive(sim_limits *l, int corp, uint64_t now_us);
/* One arrival from a source address (gettoken included): joins its minute and hour
 * windows, and is judged against ip_per_min and ip_per_hour (refused arrivals count
 * unless count_rejected is 0). SIM_IP_OK, SIM_IP_OVER_MIN or SIM_IP_OVER_HOUR. An
 * empty ip, or no memory for a new address, is not limited. */
int sim_limits_ip_arrive(sim_limits *l, const char *ip, uint64_t now_us);
/* gettoken: the enterprise's current token of that credential while it is valid
 * (expires_in = seconds left), else a new one (*fresh = 1). 0 or -ENOMEM. */
int sim_limits_cred_token(sim_limits *l, int corp, sim_cred cred, uint64_t now_us,
                          const char **value, uint32_t *expires_in, int *fresh);
/* The app credential's token (sim_limits_cred_token with SIM_CRED_APP). */
int sim_limits_token(sim_limits *l, int corp, uint64_t now_us, const char **value,
                     uint32_t *expires_in, int *fresh);
/* *corp (and *cred, if not NULL) are set for SIM_TOK_OK and SIM_TOK_EXPIRED. */
sim_tok_state sim_limits_check_cred_token(const sim_limits *l, const char *value, uint64_t now_us,
                                          int *corp, sim_cred *cred);
sim_tok_state sim_limits_check_token(const sim_limits *l, const char *value, uint64_t now_us,
                                     int *corp);
/* corp < 0: all. Both credentials' tokens. invalidate = 0: tokens answer 42001 from
 * now on; 1: they are forgotten and answer 40014. Returns how many live tokens were
 * touched. */
int sim_limits_expire_tokens(sim_limits *l, int corp, uint64_t now_us, int invalidate);

/* ---- sim_policy.c ---- */

/* Source addresses, kept as 16 bytes (IPv4 as ::ffff:a.b.c.d, so "127.0.0.1" and a
 * dual-stack peer ::ffff:127.0.0.1 are the same). */
#define SIM_MAX_IPS 32
typedef struct sim_ipset {
    int n;
    unsigned char addr[SIM_MAX_IPS][16];
} sim_ipset;

/* 0 and the address, or -EINVAL. */
int sim_ip_parse(const char *text, unsigned char out[16]);
/* Dotted IPv4 for a mapped address, else IPv6 text; out has 46 bytes. */
void sim_ip_format(const unsigned char a[16], char out[46]);
int sim_ipset_has(const sim_ipset *s, const unsigned char a[16]);

/* One enterprise's switches (POST /sim/policy, --contact-legacy-ips, ...). A list
 * that is not set is null: no restriction. */
typedef struct sim_policy {
    int legacy_set;        /* contact_legacy_ips is a list (else null) */
    sim_ipset legacy_ips;  /* where the contact token may call the legacy APIs */
    int app_new;           /* the app gets no mobile, email, avatar, ... */
    int visible_set;       /* visible_depts is a list (else null: all) */
    sim_deptset visible;   /* the app's visible range */
    int trusted_set;       /* trusted_ips is a list (else null: no check) */
    sim_ipset trusted_ips; /* where app tokens may call from */
} sim_policy;

void sim_policy_init(sim_policy *p);
/* POST /sim/policy: {"corp_id"?, "reset"?, keys...} merged into pols[ncorps] (one
 * enterprise, or all without corp_id), all or nothing. *only: the enterprise's index,
 * or -1 for all. 0, -EINVAL (400) or -ENOENT (unknown corp_id, 404), message in err. */
int sim_policy_apply_json(sim_policy *pols, sim_dir *d, const char *json, size_t len, int *only,
                          char *err, size_t errlen);
/* A flag without "--" ("trusted-ips", ...): 1 applied, 0 not a policy flag, -EINVAL. */
int sim_policy_apply_flag(sim_policy *p, const char *name, const char *value, char *err,
                          size_t errlen);
/* The settings' keys, into an open object. */
void sim_policy_json(const sim_policy *p, jw *w);
/* The checks, each 1 when the call may go on. ip may be "" (unknown: not listed). */
int sim_policy_trusted(const sim_policy *p, const char *ip);
int sim_policy_legacy_allowed(const sim_policy *p, const char *ip);

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
    uint64_t ip_violations, forbidden, no_privilege, untrusted_ip; /* 45009 by IP, 48009, ... */
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
    int ip_violation; /* refused by the per-IP limit (45009) */
    int forbidden;    /* 48009: contact token, legacy API, address not allowed */
    int no_privilege; /* 60011: outside the app's visible range */
    int untrusted_ip; /* 60020: app token from an address not trusted */
    const char *ip;   /* the source address; NULL or "" unknown */
} sim_hit;

/* One source address: its counters, and its busiest minute and hour. */
typedef struct sim_ipstats {
    char ip[48];
    sim_counters c;
    sim_window minute; /* span 60 s, all arrivals: max_60s (exact) */
    sim_buckets hour;  /* max_3600s, in whole seconds */
    uint32_t max_60s;
    uint64_t max_3600s;
} sim_ipstats;

typedef struct sim_stats {
    int ncorps, nports;
    int ports[SIM_MAX_PORTS];
    sim_counters total;
    sim_counters *corp;      /* [ncorps] */
    sim_counters *port;      /* [nports] */
    sim_counters *port_corp; /* [nports * ncorps] */
    sim_map ip_index;        /* source address -> index into ips */
    sim_ipstats *ips;
    int nips, ipcap;
    sim_counters **corp_ip; /* [ncorps][ncorp_ip[corp]], by the index in ips */
    int *ncorp_ip;
    uint64_t start_mono_us, start_wall_ms;
} sim_stats;

int sim_stats_init(sim_stats *st, int ncorps, const int *ports, int nports, uint64_t now_us);
void sim_stats_free(sim_stats *st);
/* Index of a listening port, -1 if unknown. */
int sim_stats_port_index(const sim_stats *st, int port);
void sim_stats_record(sim_stats *st, const sim_hit *h, uint64_t now_us);
/* A request entered (+1) or left (-1) the in-flight set. */
void sim_stats_inflight(sim_stats *st, int port, int corp, int delta);
/* The same, also for its source address (NULL or "": none). */
void sim_stats_inflight_ip(sim_stats *st, int port, int corp, const char *ip, int delta);
/* Zeroes everything but the requests still in flight (the addresses seen stay listed,
 * with zeroes). */
void sim_stats_reset(sim_stats *st);
/* Writes the stats' keys into the open object w; corp_filter NULL: every enterprise.
 * 0 or -ENOENT (unknown corp, nothing written). */
int sim_stats_json(const sim_stats *st, const sim_dir *d, const char *corp_filter, jw *w);
/* Departments asked for with user/list more than once (calls > 1) and answered
 * successfully more than once (ok > 1). */
void sim_counters_refetches(const sim_counters *c, uint64_t *calls_gt1, uint64_t *ok_gt1);

/* ---- sim_export.c: asynchronous export jobs (export/user, get_result, files) ---- */

/* One encrypted file of a finished job. */
typedef struct sim_export_part {
    char token[33]; /* the file's URL is <base>/sim/export-file/<token> */
    unsigned char *data;
    size_t len;
    char md5[33];
    uint32_t members;
} sim_export_part;

typedef struct sim_export_job {
    char jobid[40];
    int corp; /* 0-based */
    sim_cred cred;
    int simple; /* export/simple_user */
    uint32_t block;
    char aeskey[44];
    uint64_t created_us;
    int failed; /* ends in status 3 */
    int built;  /* parts made (at the first poll that finds it done) */
    uint64_t done_us;
    uint64_t expires_us; /* the URLs' */
    sim_export_part *parts;
    int nparts;
} sim_export_job;

/* Settings (POST /sim/export) and evidence (GET /sim/export, /sim/stats). */
typedef struct sim_exports {
    uint32_t queue_ms;        /* status 0 (not started) this long after creation (default 200) */
    uint32_t run_ms;          /* then status 1 (running) this long (default 300) */
    uint32_t url_ttl_s;       /* the files' URLs stay valid this long (default 7200) */
    uint32_t part_max;        /* members per file at most whatever block_size says (0: none) */
    int refuse;               /* errcode export/user answers (0: none; e.g. 48009, 60011) */
    int fail;                 /* jobs created from now end in status 3 */
    uint32_t file_fail_next;  /* N file requests answer HTTP 500 ... */
    uint32_t file_fail_after; /* ... after this many more have been served */
    int bad_md5;              /* data_list states a wrong md5 for every file */
    sim_export_job *jobs;
    int njobs, cap;
    uint64_t rng;
    /* evidence */
    uint64_t created, refused, polls, polls_wrong_cred, file_requests, file_ranges, file_faults,
        file_expired, file_bytes;
} sim_exports;

void sim_exports_init(sim_exports *e, uint64_t seed);
void sim_exports_free(sim_exports *e);
/* Settings' keys and the evidence into an open object. */
void sim_exports_json(const sim_exports *e, const sim_dir *d, jw *w);
/* POST /sim/export: {"queue_ms","run_ms","url_ttl_s","part_max","refuse","fail",
 * "file_fail_next","file_fail_after","bad_md5","reset_stats"}, any subset, all or nothing. 0 or
 * -EINVAL, err. */
int sim_exports_apply_json(sim_exports *e, const char *json, size_t len, char *err, size_t errlen);
/* 1 if key is a valid encoding_aeskey: 43 characters of [A-Za-z0-9]. */
int sim_export_key_ok(const char *key);
/* AES-256-CBC of plain with key = base64(aeskey + "="), IV its first 16 bytes,
 * PKCS#7 padding to 32 bytes. *out malloc'ed. 0 or -EINVAL/-ENOMEM. */
int sim_export_encrypt(const char *aeskey, const unsigned char *plain, size_t len,
                       unsigned char **out, size_t *outlen);
/* A new job; *job valid until the next call that adds one. 0 or -ENOMEM. */
int sim_exports_create(sim_exports *e, int corp, sim_cred cred, int simple, uint32_t block,
                       const char *aeskey, uint64_t now_us, sim_export_job **job);
sim_export_job *sim_exports_find(sim_exports *e, const char *jobid);
/* 0 not started, 1 running, 2 done, 3 failed, at now_us. */
int sim_export_status(const sim_exports *e, const sim_export_job *j, uint64_t now_us);
/* Makes the files of a done job from the directory as it is now (once). 0 or -ENOMEM. */
int sim_export_build(sim_exports *e, sim_dir *d, sim_export_job *j, uint64_t now_us);
/* The part with that URL token, and its job, or NULL. */
sim_export_part *sim_exports_file(sim_exports *e, const char *token, sim_export_job **job);

/* ---- sim_routes.c: the server state and its handlers ---- */

typedef struct sim_delayed sim_delayed;
typedef struct sim_callbacks sim_callbacks;

typedef struct sim {
    uv_loop_t *loop;
    struct http_server *srv;
    sim_dir dir;
    sim_limits lim;
    sim_faults faults;
    sim_policy *policy; /* [dir.ncorps] */
    sim_exports exp;
    sim_stats stats;
    uint64_t fault_rng;
    uint64_t hint_seq;    /* the request number in errmsg hints */
    sim_delayed *pending; /* answers waiting on a latency timer */
    buf scratch;
    sim_callbacks *callbacks; /* change callbacks (sim_callbacks.c); NULL until configured */
    int closing;
} sim;

/* ---- sim_callbacks.c: change callbacks sent to a configured URL ---- */

struct http_req;
/* GET|POST /sim/callbacks */
void sim_callbacks_on_get(struct http_req *r, void *arg);
void sim_callbacks_on_post(struct http_req *r, void *arg);
/* After a successful POST /sim/mutate: answer is its JSON answer. */
void sim_callbacks_mutated(sim *s, const char *answer, size_t len);
/* Shutdown: posts in flight fail without retry (close before the loop ends);
 * free after the loop has run out. */
void sim_callbacks_close(sim *s);
void sim_callbacks_free(sim *s);

/* Registers every route on s->srv. 0 or negative errno. */
int sim_routes_install(sim *s);
/* Drops answers still waiting on latency timers (their requests die with the
 * server); the timers are closed, freed in their close callbacks. */
void sim_routes_shutdown(sim *s);

#endif
