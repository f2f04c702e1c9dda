/* orgsync-sim: flags, the loop and signals. See usage() for the contract. */
#include "tests/sim/sim.h"

#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/http_server.h"
#include "common/log.h"
#include "common/timeutil.h"

typedef struct sim_opts {
    int ncorps, ndepts, upd;
    uint32_t cache_mb;
    uint64_t seed;
    const char *host;
    const char *ports[SIM_MAX_PORTS];
    int nports;
    uint32_t rate, max_inflight, token_ttl_s, ban_ms, ip_per_min, ip_per_hour;
    int inflight_errcode, count_rejected;
    int log_level, log_json;
    sim_faults faults;
    sim_policy policy; /* every enterprise's at start */
} sim_opts;

static void usage(FILE *out)
{
    fputs(
        "usage: orgsync-sim [options]\n"
        "\n"
        "A WeCom contacts API simulator: gettoken, department/list, user/list, user/get,\n"
        "user/getuserid, user/list_id, department/simplelist, department/get, export/user,\n"
        "export/simple_user and export/get_result under /cgi-bin/, with the real answer\n"
        "shapes and error codes (export jobs: POST/GET /sim/export, see README.md).\n"
        "\n"
        "Directory (deterministic for the same flags):\n"
        "  --enterprises N       enterprises (default 1). Enterprise i (1-based) has corp id\n"
        "                        wwsim%04d, the app secret secret-wwsim%04d and the\n"
        "                        contact-sync secret contact-wwsim%04d, e.g. wwsim0001 with\n"
        "                        corpsecret secret-wwsim0001 or contact-wwsim0001.\n"
        "  --departments D       departments per enterprise (default 10): ids 1..D, a tree\n"
        "                        under 1 (the enterprise itself); a parent's id is below its\n"
        "                        children's.\n"
        "  --users-per-dept U    members whose main department is each department (default\n"
        "                        20); about 1 in 10 also belongs to a second department, so\n"
        "                        a user/list has U or a few more members. Userids are u000001,\n"
        "                        u000002, ... per enterprise; mobiles are 11 digits, unique\n"
        "                        across the simulator.\n"
        "  --seed S              seed for names, tree shape, mobiles and random mutations\n"
        "                        (default 1).\n"
        "  --cache-mb M          rendered user/list and department/list answers kept for\n"
        "                        reuse, least recently used dropped first (default 32; 0\n"
        "                        renders every answer). A mutation drops what it changes.\n"
        "\n"
        "Listening:\n"
        "  --port [HOST:]PORT    may be given up to 8 times; 0 picks a free port. The first\n"
        "                        line on stdout is \"listening P1 [P2 ...]\" (the actual ports).\n"
        "                        Stats are kept per port too, to tell clients apart.\n"
        "  --host H              host for ports given without one (default 127.0.0.1).\n"
        "\n"
        "Limits (by arrival time):\n"
        "  --rate R              requests per enterprise in any trailing 1000 ms (default 10;\n"
        "                        gettoken counts, by its corpid; others by their token's\n"
        "                        enterprise). The request over it answers errcode 45009.\n"
        "  --count-rejected 0|1  refused requests count as arrivals (default 1, as upstream).\n"
        "  --ban-ms MS           after a violation refuse that enterprise for MS (default 0).\n"
        "  --max-inflight M      concurrent requests per API path (default 60); above it\n"
        "                        errcode --inflight-errcode (default 45009; 45033 is upstream's\n"
        "                        concurrency code).\n"
        "  --token-ttl-s T       access_token lifetime (default 7200). gettoken returns the\n"
        "                        current token (of that secret) while valid. Unknown token\n"
        "                        40014, expired 42001.\n"
        "  --ip-per-min N        API requests per source IP in any trailing 60,000 ms\n"
        "                        (default 20000); over it errcode 45009. gettoken counts.\n"
        "  --ip-per-hour N       the same in the trailing hour, counted in whole seconds\n"
        "                        (default 600000).\n"
        "\n"
        "Policy (every enterprise; at runtime per enterprise: POST /sim/policy, '_' for '-'):\n"
        "  --contact-legacy-ips LIST  addresses (comma-separated; none = no address) from\n"
        "                        which the contact-sync token may call department/list,\n"
        "                        user/list and user/get; from any other errcode 48009\n"
        "                        (default: from anywhere).\n"
        "  --app-new 0|1         1: app tokens get user/list and user/get members without\n"
        "                        mobile, email, biz_mail, avatar, thumb_avatar, gender,\n"
        "                        qr_code, address (default 0).\n"
        "  --visible-depts LIST  department ids (comma-separated): the app's visible range\n"
        "                        is them and their subtrees; outside it errcode 60011\n"
        "                        (default: everything).\n"
        "  --trusted-ips LIST    addresses from which app tokens may call (every API but\n"
        "                        gettoken); from any other errcode 60020 (default: any).\n"
        "\n"
        "Faults (also at runtime: POST /sim/faults with the same names, '_' for '-'):\n"
        "  --latency-ms MS --jitter-ms MS   every API answer waits MS + uniform[0, jitter]\n"
        "  --http500 P --busy P --malformed P --hang P\n"
        "                        shares (0..1) of API requests answered HTTP 500, errcode -1,\n"
        "                        a truncated JSON body, or never\n"
        "  --http500-next N --busy-next N --malformed-next N --hang-next N\n"
        "                        the next N API requests get that fault (checked first)\n"
        "  --fail-dept ID        user/list of department ID always fails ...\n"
        "  --fail-dept-corp C    ... in enterprise C only (default: all)\n"
        "  --fail-dept-errcode E ... with errcode E (default -1; 500 = HTTP 500)\n"
        "  --fault-paths LIST    paths the shares and counters apply to, e.g.\n"
        "                        user/list,gettoken (default all)\n"
        "\n"
        "Other:\n"
        "  --quiet               log warnings and errors only\n"
        "  --log-level L         debug|info|warn|error (default info)\n"
        "  --log-format F        json|text (default json); logs go to stderr\n"
        "  --help\n"
        "\n"
        "Control and evidence routes: GET /healthz, GET /sim/stats[?corp_id=], GET /sim/org\n"
        "[?corp_id=], POST /sim/mutate, POST /sim/expire-tokens[?corp_id=&mode=expire|invalid],\n"
        "POST /sim/reset-stats, GET|POST /sim/faults, GET|POST /sim/limits,\n"
        "GET|POST /sim/policy[?corp_id=]. See tests/sim/README.md.\n",
        out);
}

static int parse_u64(const char *v, uint64_t max, uint64_t *out)
{
    char *end = NULL;
    if (!v || *v < '0' || *v > '9')
        return -EINVAL;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (*end || errno || x > max)
        return -EINVAL;
    *out = x;
    return 0;
}

/* One flag: 0 consumed, -EINVAL with a message in err. */
static int apply_flag(sim_opts *o, const char *name, const char *val, char *err, size_t errlen)
{
    static const struct {
        const char *name;
        uint64_t min, max;
        size_t off;
        int size; /* 4 = int/uint32_t, 8 = uint64_t */
    } nums[] = {
        {"enterprises", 1, 9999, offsetof(sim_opts, ncorps), 4},
        {"departments", 1, 1000000, offsetof(sim_opts, ndepts), 4},
        {"users-per-dept", 0, 100000, offsetof(sim_opts, upd), 4},
        {"cache-mb", 0, 1000000, offsetof(sim_opts, cache_mb), 4},
        {"seed", 0, UINT64_MAX, offsetof(sim_opts, seed), 8},
        {"rate", 1, 100000000, offsetof(sim_opts, rate), 4},
        {"max-inflight", 1, 100000000, offsetof(sim_opts, max_inflight), 4},
        {"token-ttl-s", 1, 100000000, offsetof(sim_opts, token_ttl_s), 4},
        {"ban-ms", 0, 100000000, offsetof(sim_opts, ban_ms), 4},
        {"count-rejected", 0, 1, offsetof(sim_opts, count_rejected), 4},
        {"ip-per-min", 1, 100000000, offsetof(sim_opts, ip_per_min), 4},
        {"ip-per-hour", 1, 100000000, offsetof(sim_opts, ip_per_hour), 4},
    };
    uint64_t x;
    for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
        if (strcmp(name, nums[i].name) != 0)
            continue;
        if (parse_u64(val, nums[i].max, &x) || x < nums[i].min) {
            snprintf(err, errlen, "--%s must be an integer %llu..%llu", name,
                     (unsigned long long)nums[i].min, (unsigned long long)nums[i].max);
            return -EINVAL;
        }
        if (nums[i].size == 8)
            *(uint64_t *)((char *)o + nums[i].off) = x;
        else
            *(uint32_t *)((char *)o + nums[i].off) = (uint32_t)x;
        return 0;
    }
    if (strcmp(name, "port") == 0) {
        if (o->nports == SIM_MAX_PORTS) {
            snprintf(err, errlen, "--port may be given at most %d times", SIM_MAX_PORTS);
            return -EINVAL;
        }
        o->ports[o->nports++] = val;
        return 0;
    }
    if (strcmp(name, "host") == 0) {
        o->host = val;
        return 0;
    }
    if (strcmp(name, "inflight-errcode") == 0) {
        if (!parse_u64(val, 99999, &x) && (x == 45009 || x == 45033)) {
            o->inflight_errcode = (int)x;
            return 0;
        }
        snprintf(err, errlen, "--inflight-errcode must be 45009 or 45033");
        return -EINVAL;
    }
    if (strcmp(name, "log-level") == 0) {
        o->log_level = log_level_parse(val);
        if (o->log_level >= 0)
            return 0;
        snprintf(err, errlen, "--log-level must be debug, info, warn or error");
        return -EINVAL;
    }
    if (strcmp(name, "log-format") == 0) {
        if (strcmp(val, "json") == 0 || strcmp(val, "text") == 0) {
            o->log_json = strcmp(val, "json") == 0;
            return 0;
        }
        snprintf(err, errlen, "--log-format must be json or text");
        return -EINVAL;
    }
    int rc = sim_policy_apply_flag(&o->policy, name, val, err, errlen);
    if (rc == 1)
        return 0;
    if (rc < 0)
        return rc;
    rc = sim_faults_apply_flag(&o->faults, name, val, err, errlen);
    if (rc == 1)
        return 0;
    if (rc == 0)
        snprintf(err, errlen, "unknown option --%s (see --help)", name);
    return -EINVAL;
}

/* 0 run, 1 --help printed, -EINVAL usage error (message in err). */
static int parse_args(sim_opts *o, int argc, char **argv, char *err, size_t errlen)
{
    for (int i = 1; i < argc; i++) {
        char name[64];
        const char *a = argv[i], *val, *eq;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)
            return 1;
        if (strcmp(a, "--quiet") == 0) {
            o->log_level = LOG_WARN;
            continue;
        }
        if (strncmp(a, "--", 2) != 0 || strlen(a) - 2 >= sizeof(name)) {
            snprintf(err, errlen, "unexpected argument \"%.60s\" (see --help)", a);
            return -EINVAL;
        }
        eq = strchr(a, '=');
        if (eq) {
            snprintf(name, sizeof(name), "%.*s", (int)(eq - a - 2), a + 2);
            val = eq + 1;
        } else {
            snprintf(name, sizeof(name), "%s", a + 2);
            if (i + 1 >= argc) {
                snprintf(err, errlen, "--%s needs a value", name);
                return -EINVAL;
            }
            val = argv[++i];
        }
        if (apply_flag(o, name, val, err, errlen))
            return -EINVAL;
    }
    return 0;
}

static void on_signal(uv_signal_t *h, int signum);

typedef struct sim_proc {
    sim s;
    uv_signal_t sigint, sigterm;
} sim_proc;

static void on_server_closed(void *arg)
{
    (void)arg;
    log_info("simulator stopped");
}

static void on_signal(uv_signal_t *h, int signum)
{
    sim_proc *p = h->data;
    if (p->s.closing)
        return;
    p->s.closing = 1;
    log_info("shutting down", LF_I("signal", signum));
    sim_routes_shutdown(&p->s);
    uv_close((uv_handle_t *)&p->sigint, NULL);
    uv_close((uv_handle_t *)&p->sigterm, NULL);
    http_server_close(p->s.srv, on_server_closed, NULL);
}

static int start(sim_proc *p, const sim_opts *o)
{
    sim *s = &p->s;
    char err[256], hp[300];
    int ports[SIM_MAX_PORTS];
    int rc;
    http_server_opts hso = {0, 0, 0, 4096};
    if ((rc = sim_dir_generate(&s->dir, o->ncorps, o->ndepts, o->upd, o->seed))) {
        fprintf(stderr, "orgsync-sim: cannot generate the directory: %s\n", strerror(-rc));
        return rc;
    }
    s->dir.cache.budget = (size_t)o->cache_mb << 20;
    if ((rc = sim_limits_init(&s->lim, o->ncorps, o->seed)))
        return rc;
    s->lim.rate = o->rate;
    s->lim.max_inflight = o->max_inflight;
    s->lim.inflight_errcode = o->inflight_errcode;
    s->lim.token_ttl_s = o->token_ttl_s;
    s->lim.count_rejected = o->count_rejected;
    s->lim.ban_ms = o->ban_ms;
    s->lim.ip_per_min = o->ip_per_min;
    s->lim.ip_per_hour = o->ip_per_hour;
    s->policy = calloc((size_t)o->ncorps, sizeof(*s->policy));
    if (!s->policy)
        return -ENOMEM;
    for (int i = 0; i < o->ncorps; i++)
        s->policy[i] = o->policy;
    sim_exports_init(&s->exp, o->seed);
    s->faults = o->faults;
    s->fault_rng = sim_mix(o->seed, 0x6661756c74);
    s->srv = http_server_new(s->loop, &hso);
    if (!s->srv)
        return -ENOMEM;
    if ((rc = sim_routes_install(s)))
        return rc;
    for (int i = 0; i < o->nports; i++) {
        const char *spec = o->ports[i];
        if (strchr(spec, ':'))
            snprintf(hp, sizeof(hp), "%s", spec);
        else
            snprintf(hp, sizeof(hp), "%s:%s", o->host, spec);
        if ((rc = http_server_listen(s->srv, hp, err, sizeof(err)))) {
            fprintf(stderr, "orgsync-sim: cannot listen on %s: %s\n", hp, err);
            return rc;
        }
        ports[i] = http_server_port(s->srv, i);
    }
    if ((rc = sim_stats_init(&s->stats, o->ncorps, ports, o->nports, time_mono_us())))
        return rc;
    printf("listening");
    for (int i = 0; i < o->nports; i++)
        printf(" %d", ports[i]);
    printf("\n");
    fflush(stdout);
    log_info("simulator ready", LF_I("port", ports[0]), LF_I("ports", o->nports),
             LF_I("enterprises", o->ncorps), LF_I("departments", o->ndepts),
             LF_I("users_per_dept", o->upd), LF_I("rate", o->rate),
             LF_I("max_inflight", o->max_inflight));
    uv_signal_init(s->loop, &p->sigint);
    uv_signal_init(s->loop, &p->sigterm);
    p->sigint.data = p->sigterm.data = p;
    uv_signal_start(&p->sigint, on_signal, SIGINT);
    uv_signal_start(&p->sigterm, on_signal, SIGTERM);
    return 0;
}

static void close_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

int main(int argc, char **argv)
{
    sim_opts o = {.ncorps = 1,
                  .ndepts = 10,
                  .upd = 20,
                  .cache_mb = SIM_CACHE_DEFAULT_BYTES >> 20,
                  .seed = 1,
                  .host = "127.0.0.1",
                  .rate = 10,
                  .max_inflight = 60,
                  .token_ttl_s = 7200,
                  .inflight_errcode = 45009,
                  .count_rejected = 1,
                  .ip_per_min = 20000,
                  .ip_per_hour = 600000,
                  .log_level = LOG_INFO,
                  .log_json = 1};
    char err[256] = "";
    sim_proc p;
    uv_loop_t loop;
    int rc;

    sim_faults_init(&o.faults);
    sim_policy_init(&o.policy);
    rc = parse_args(&o, argc, argv, err, sizeof(err));
    if (rc == 1) {
        usage(stdout);
        return 0;
    }
    if (rc) {
        fprintf(stderr, "orgsync-sim: %s\n", err);
        return 2;
    }
    if (o.nports == 0)
        o.ports[o.nports++] = "0";
    /* A client that hangs up mid-answer must cost an EPIPE, not the process. */
    signal(SIGPIPE, SIG_IGN);
    log_init((log_level)o.log_level, o.log_json, "orgsync-sim", 0);

    memset(&p, 0, sizeof(p));
    buf_init(&p.s.scratch);
    if (uv_loop_init(&loop) != 0) {
        fprintf(stderr, "orgsync-sim: cannot create the event loop\n");
        return 1;
    }
    p.s.loop = &loop;
    rc = start(&p, &o);
    if (rc == 0) {
        uv_run(&loop, UV_RUN_DEFAULT);
    } else if (p.s.srv) {
        http_server_close(p.s.srv, NULL, NULL);
        uv_run(&loop, UV_RUN_DEFAULT);
    }
    /* Anything still open (nothing, normally) is closed so the loop can be freed. */
    if (uv_loop_close(&loop) == UV_EBUSY) {
        uv_walk(&loop, close_walk, NULL);
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_loop_close(&loop);
    }
    sim_stats_free(&p.s.stats);
    sim_limits_free(&p.s.lim);
    free(p.s.policy);
    sim_callbacks_free(&p.s);
    sim_exports_free(&p.s.exp);
    sim_dir_free(&p.s.dir);
    buf_free(&p.s.scratch);
    return rc ? 1 : 0;
}
