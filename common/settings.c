/* Settings: defaults, then --config FILE, then the environment (SPEC §2). */
#include "common/settings.h"

#include "common/cron.h"
#include "common/egress_cap.h"
#include "common/log.h"
#include "common/redis.h"
#include "common/secret.h"
#include "version.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <libpq-fe.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

const char *const settings_names[] = {"ORGSYNC_ENV",
                                      "ORGSYNC_SCHEDULE",
                                      "ORGSYNC_SCHEDULER_WORKERS",
                                      "ORGSYNC_WORKERS",
                                      "ORGSYNC_INSTANCE",
                                      "ORGSYNC_PG_DSN",
                                      "ORGSYNC_REDIS_URL",
                                      "ORGSYNC_READ_ONLY",
                                      "ORGSYNC_HTTP_ADDR",
                                      "ORGSYNC_CRON",
                                      "ORGSYNC_TZ",
                                      "ORGSYNC_LOCK_TTL_MS",
                                      "ORGSYNC_DEPT_RATE",
                                      "ORGSYNC_UPSTREAM_MAX_INFLIGHT",
                                      "ORGSYNC_UPSTREAM_URL",
                                      "ORGSYNC_DAILY_QUOTA",
                                      "ORGSYNC_LOOKUP_BUDGET",
                                      "ORGSYNC_ADMIN_TOKEN",
                                      "ORGSYNC_ALERT_WEBHOOK",
                                      "ORGSYNC_LOG_LEVEL",
                                      "ORGSYNC_LOG_FORMAT",
                                      "ORGSYNC_CODE_VERSION",
                                      "ORGSYNC_WORKER_ID",
                                      "ORGSYNC_EGRESS_ID",
                                      "ORGSYNC_EGRESS_MAX_PER_MIN",
                                      "ORGSYNC_EGRESS_MAX_PER_HOUR",
                                      "ORGSYNC_UPSTREAM_BIND",
                                      "ORGSYNC_EGRESS_REFUSED_TTL",
                                      "ORGSYNC_DRAIN_MS",
                                      "ORGSYNC_CALLBACK_LAG_ALERT_S",
                                      "ORGSYNC_READ_TOKEN",
                                      "ORGSYNC_PUBLIC_READS",
                                      "ORGSYNC_PG_PASSWORD",
                                      "ORGSYNC_REDIS_PASSWORD",
                                      "ORGSYNC_CACHE_KEY",
                                      "ORGSYNC_EXPORT_RANGE_KB",
                                      "ORGSYNC_EXPORT_AUTO_DEPTS",
                                      NULL};

const char *const settings_secret_names[] = {"ORGSYNC_ADMIN_TOKEN",
                                             "ORGSYNC_READ_TOKEN",
                                             "ORGSYNC_PG_PASSWORD",
                                             "ORGSYNC_REDIS_PASSWORD",
                                             "ORGSYNC_ALERT_WEBHOOK",
                                             "ORGSYNC_CACHE_KEY",
                                             NULL};

#define MAX_FILE_ENTRIES 64

/* KEY=VALUE pairs read from the config file. */
typedef struct file_kv {
    int n;
    char key[MAX_FILE_ENTRIES][64];
    char val[MAX_FILE_ENTRIES][1024];
} file_kv;

typedef struct source {
    file_kv *file;
    settings_getenv_fn get;
    void *arg;
} source;

static int is_known(const char *name)
{
    size_t n = strlen(name);
    for (int i = 0; settings_names[i]; i++)
        if (strcmp(settings_names[i], name) == 0)
            return 1;
    /* NAME_FILE of a secret */
    for (int i = 0; settings_secret_names[i]; i++) {
        size_t k = strlen(settings_secret_names[i]);
        if (n == k + 5 && strncmp(name, settings_secret_names[i], k) == 0 &&
            strcmp(name + k, "_FILE") == 0)
            return 1;
    }
    return 0;
}

static const char *lookup(const source *src, const char *name)
{
    const char *v = src->get ? src->get(name, src->arg) : NULL;
    if (v)
        return v;
    for (int i = 0; src->file && i < src->file->n; i++)
        if (strcmp(src->file->key[i], name) == 0)
            return src->file->val[i];
    return NULL;
}

static const char *source_get(const char *name, void *arg)
{
    return lookup(arg, name);
}

/* A secret setting from NAME, NAME_FILE or $CREDENTIALS_DIRECTORY/NAME
 * (common/secret.h): 1 with the value in out, 0 unset, -1 with err filled. from
 * says where a file-based value came from, for the setting's own checks. */
static int secret(const source *src, const char *name, char *out, size_t cap, char *from,
                  size_t fromlen, char *err, size_t errlen)
{
    /* CREDENTIALS_DIRECTORY comes from the environment only (systemd sets it). */
    const char *dir = src->get ? src->get("CREDENTIALS_DIRECTORY", src->arg) : NULL;
    return secret_lookup(name, source_get, (void *)src, dir, out, cap, from, fromlen, err, errlen);
}

static char *trim(char *s)
{
    char *e;
    while (isspace((unsigned char)*s))
        s++;
    e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

static int read_config_file(const char *path, file_kv *kv, char *err, size_t errlen)
{
    char line[1200];
    int lineno = 0;
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "--config: cannot read %s: %s", path, strerror(errno));
        return -1;
    }
    kv->n = 0;
    while (fgets(line, sizeof(line), f)) {
        char *s = trim(line), *eq, *key, *val;
        size_t vlen;
        lineno++;
        if (*s == '\0' || *s == '#')
            continue;
        if (strncmp(s, "export ", 7) == 0)
            s = trim(s + 7);
        eq = strchr(s, '=');
        if (!eq) {
            snprintf(err, errlen, "--config %s:%d: expected KEY=VALUE", path, lineno);
            goto fail;
        }
        *eq = '\0';
        key = trim(s);
        val = trim(eq + 1);
        vlen = strlen(val);
        if (vlen >= 2 && (val[0] == '"' || val[0] == '\'') && val[vlen - 1] == val[0]) {
            val[vlen - 1] = '\0';
            val++;
        }
        if (!is_known(key)) {
            snprintf(err, errlen, "--config %s:%d: unknown setting '%.64s'", path, lineno, key);
            goto fail;
        }
        if (kv->n == MAX_FILE_ENTRIES || strlen(val) >= sizeof(kv->val[0])) {
            snprintf(err, errlen, "--config %s:%d: too many settings or value too long", path,
                     lineno);
            goto fail;
        }
        snprintf(kv->key[kv->n], sizeof(kv->key[0]), "%s", key);
        snprintf(kv->val[kv->n], sizeof(kv->val[0]), "%s", val);
        kv->n++;
    }
    fclose(f);
    return 0;
fail:
    fclose(f);
    return -1;
}

static int bad(char *err, size_t errlen, const char *name, const char *accepts, const char *got)
{
    snprintf(err, errlen, "%s: expected %s, got '%.80s'", name, accepts, got);
    return -1;
}

static int parse_bool(const char *v, int *out)
{
    if (!strcasecmp(v, "on") || !strcasecmp(v, "true") || !strcmp(v, "1") || !strcasecmp(v, "yes"))
        *out = 1;
    else if (!strcasecmp(v, "off") || !strcasecmp(v, "false") || !strcmp(v, "0") ||
             !strcasecmp(v, "no"))
        *out = 0;
    else
        return -1;
    return 0;
}

static int parse_long(const char *v, long lo, long hi, long *out)
{
    char *end;
    long x;
    errno = 0;
    if (!*v || isspace((unsigned char)*v))
        return -1;
    x = strtol(v, &end, 10);
    if (errno || *end || x < lo || x > hi)
        return -1;
    *out = x;
    return 0;
}

static int set_str(char *dst, size_t cap, const char *name, const char *v, char *err, size_t errlen)
{
    if (strlen(v) >= cap) {
        snprintf(err, errlen, "%s: longer than %zu characters", name, cap - 1);
        return -1;
    }
    memcpy(dst, v, strlen(v) + 1);
    return 0;
}

static int valid_env_name(const char *v)
{
    size_t n = strlen(v);
    if (n == 0 || n > 63)
        return 0;
    for (; *v; v++)
        if (!(islower((unsigned char)*v) || isdigit((unsigned char)*v) || *v == '-' || *v == '_'))
            return 0;
    return 1;
}

static int valid_instance(const char *v)
{
    size_t n = strlen(v);
    if (n == 0 || n > 127)
        return 0;
    for (; *v; v++)
        if (*v == '|' || !isgraph((unsigned char)*v))
            return 0;
    return 1;
}

static int parse_workers_list(settings *s, const char *v)
{
    char tmp[256], *save = NULL, *tok;
    int any = 0;
    if (strlen(v) >= sizeof(tmp))
        return -1;
    memcpy(tmp, v, strlen(v) + 1);
    memset(s->scheduler_workers, 0, sizeof(s->scheduler_workers));
    for (tok = strtok_r(tmp, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        long id;
        if (parse_long(trim(tok), 1, SETTINGS_MAX_WORKERS, &id))
            return -1;
        s->scheduler_workers[id] = 1;
        any = 1;
    }
    if (!any)
        return -1;
    snprintf(s->scheduler_workers_text, sizeof(s->scheduler_workers_text), "%s", v);
    return 0;
}

/* host:port with a numeric IPv4 host (no DNS at start-up), or [v6]:port. */
static int valid_listen_addr(const char *v)
{
    const char *colon = strrchr(v, ':');
    long port;
    char host[64];
    size_t hl;
    unsigned char b[16];
    if (!colon)
        return 0;
    hl = (size_t)(colon - v);
    if (hl == 0 || hl >= sizeof(host))
        return 0;
    memcpy(host, v, hl);
    host[hl] = '\0';
    if (parse_long(colon + 1, 0, 65535, &port))
        return 0;
    if (host[0] == '[' && host[hl - 1] == ']') {
        host[hl - 1] = '\0';
        return inet_pton(AF_INET6, host + 1, b) == 1;
    }
    return inet_pton(AF_INET, host, b) == 1;
}

/* An IPv4 or IPv6 address literal (no name, no port, no zone). */
static int valid_ip_literal(const char *v)
{
    unsigned char b[16];
    return inet_pton(AF_INET, v, b) == 1 || inet_pton(AF_INET6, v, b) == 1;
}

static int valid_http_url(const char *v)
{
    return (strncmp(v, "http://", 7) == 0 && v[7]) || (strncmp(v, "https://", 8) == 0 && v[8]);
}

/* The value of a conninfo keyword, NULL when unset. */
static const char *conninfo_val(const PQconninfoOption *opts, const char *kw)
{
    for (const PQconninfoOption *o = opts; o->keyword; o++)
        if (strcmp(o->keyword, kw) == 0)
            return o->val && *o->val ? o->val : NULL;
    return NULL;
}

/* 1 when every connection of the DSN goes to a Unix-domain socket: no host and
 * no hostaddr (libpq's default socket), or one host that is a socket directory
 * ("/...") or an abstract socket ("@..."). */
static int unix_socket_only(const PQconninfoOption *opts, const source *src)
{
    const char *host = conninfo_val(opts, "host"), *hostaddr = conninfo_val(opts, "hostaddr");
    if (!host && src->get)
        host = src->get("PGHOST", src->arg);
    if (!hostaddr && src->get)
        hostaddr = src->get("PGHOSTADDR", src->arg);
    if (hostaddr && *hostaddr)
        return 0;
    if (!host || !*host)
        return 1;
    return (host[0] == '/' || host[0] == '@') && !strchr(host, ',');
}

/* Files the DSN names must be readable by this process: under the systemd unit
 * (ProtectHome=yes, ProtectSystem=strict) a path that works from an operator's
 * shell may not, and libpq's own message comes only at the first connection.
 * sslmode=verify-ca|verify-full without sslrootcert= makes libpq read
 * ~/.postgresql/root.crt, which ProtectHome hides. */
static int check_pg_dsn_files(const PQconninfoOption *opts, const source *src, char *err,
                              size_t errlen)
{
    const char *mode = conninfo_val(opts, "sslmode"), *root = conninfo_val(opts, "sslrootcert");
    const char *passfile = conninfo_val(opts, "passfile");
    char home_root[1100];

    if (passfile && access(passfile, R_OK) != 0) {
        snprintf(err, errlen, "ORGSYNC_PG_DSN: passfile %.400s: cannot read it: %s", passfile,
                 strerror(errno));
        return -1;
    }
    if (!mode && src->get)
        mode = src->get("PGSSLMODE", src->arg);
    if (!mode || (strcmp(mode, "verify-ca") != 0 && strcmp(mode, "verify-full") != 0))
        return 0;
    if (unix_socket_only(opts, src))
        return 0; /* libpq uses no TLS on a Unix-domain socket */
    if (!root && src->get)
        root = src->get("PGSSLROOTCERT", src->arg);
    if (root && strcmp(root, "system") == 0) {
        if (PQlibVersion() >= 160000)
            return 0;
        snprintf(err, errlen,
                 "ORGSYNC_PG_DSN: sslrootcert=system needs libpq 16 or later (this is libpq "
                 "%d.%d); give a file, e.g. sslrootcert=/etc/ssl/certs/ca-certificates.crt",
                 PQlibVersion() / 10000, PQlibVersion() % 100);
        return -1;
    }
    if (root) {
        if (access(root, R_OK) == 0)
            return 0;
        snprintf(err, errlen, "ORGSYNC_PG_DSN: sslrootcert %.400s: cannot read it: %s", root,
                 strerror(errno));
        return -1;
    }
    {
        struct passwd *pw = getpwuid(getuid());
        snprintf(home_root, sizeof home_root, "%s/.postgresql/root.crt",
                 pw && pw->pw_dir ? pw->pw_dir : "~");
    }
    if (access(home_root, R_OK) == 0)
        return 0;
    snprintf(err, errlen,
             "ORGSYNC_PG_DSN: sslmode=%s needs the server's root certificate: libpq would read "
             "%.300s, which is missing or hidden (the systemd unit has ProtectHome=yes); add "
             "sslrootcert=PATH, e.g. sslrootcert=/etc/ssl/certs/ca-certificates.crt or your CA "
             "under /etc/orgsync",
             mode, home_root);
    return -1;
}

/* Writes the password into a redis:// URL's credentials, %-escaped:
 * redis://host -> redis://:PW@host, redis://user:@host -> redis://user:PW@host
 * (and redis://user@host alike, where the URL parser accepts a bare user). */
static int redis_url_add_password(char *url, size_t cap, const char *pw, const char *from,
                                  char *err, size_t errlen)
{
    static const char hex[] = "0123456789ABCDEF";
    char out[sizeof(((settings *)0)->redis_url)];
    const char *auth = strstr(url, "://"), *at = NULL, *colon, *end;
    size_t n = 0;

    if (!auth) {
        snprintf(err, errlen, "ORGSYNC_REDIS_PASSWORD: ORGSYNC_REDIS_URL is not a URL");
        return -1;
    }
    auth += 3;
    end = auth + strcspn(auth, "/?");
    for (const char *p = auth; p < end; p++)
        if (*p == '@')
            at = p;
    colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
    if (colon && colon + 1 != at) {
        snprintf(err, errlen,
                 "ORGSYNC_REDIS_PASSWORD%s: ORGSYNC_REDIS_URL already holds a password; give it "
                 "once",
                 from);
        return -1;
    }
#define PUT(c)                                                                                     \
    do {                                                                                           \
        if (n + 1 >= sizeof out)                                                                   \
            goto too_long;                                                                         \
        out[n++] = (c);                                                                            \
    } while (0)
    /* everything before the password: the scheme and a user name if any */
    for (const char *p = url; p < (colon ? colon : at ? at : auth); p++)
        PUT(*p);
    PUT(':');
    for (const unsigned char *p = (const unsigned char *)pw; *p; p++) {
        if (isalnum(*p) || *p == '-' || *p == '.' || *p == '_' || *p == '~') {
            PUT((char)*p);
        } else {
            PUT('%');
            PUT(hex[*p >> 4]);
            PUT(hex[*p & 15]);
        }
    }
    PUT('@');
    for (const char *p = at ? at + 1 : auth; *p; p++)
        PUT(*p);
#undef PUT
    out[n] = '\0';
    if (n >= cap)
        goto too_long;
    memcpy(url, out, n + 1);
    explicit_bzero(out, sizeof out);
    return 0;
too_long:
    explicit_bzero(out, sizeof out);
    snprintf(err, errlen,
             "ORGSYNC_REDIS_PASSWORD: the URL with the password is longer than %zu "
             "characters",
             cap - 1);
    return -1;
}

/* A bearer token: 16 to 255 characters, printable, no spaces (it travels in an
 * HTTP header). The value is never shown. */
static int set_token(char *dst, size_t cap, const char *name, const char *v, const char *from,
                     char *err, size_t errlen)
{
    size_t n = strlen(v);
    if (n < 16 || n >= cap) {
        snprintf(err, errlen, "%s: expected 16 to %zu characters%s (the value is not shown)", name,
                 cap - 1, from);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        if (!isgraph((unsigned char)v[i])) {
            snprintf(err, errlen,
                     "%s: expected printable characters without spaces%s (the value is not shown)",
                     name, from);
            return -1;
        }
    memcpy(dst, v, n + 1);
    return 0;
}

static int apply(settings *s, const source *src, char *err, size_t errlen)
{
    const char *v;
    long n;
    int r;
    char cerr[200], sv[1024], from[300];

    if ((v = lookup(src, "ORGSYNC_ENV")) && !valid_env_name(v))
        return bad(err, errlen, "ORGSYNC_ENV", "1-63 characters of a-z, 0-9, '-' or '_'", v);
    if (v)
        snprintf(s->env, sizeof(s->env), "%s", v);

    if ((v = lookup(src, "ORGSYNC_SCHEDULE")) && parse_bool(v, &s->schedule))
        return bad(err, errlen, "ORGSYNC_SCHEDULE", "on or off", v);

    if ((v = lookup(src, "ORGSYNC_SCHEDULER_WORKERS")) && parse_workers_list(s, v))
        return bad(err, errlen, "ORGSYNC_SCHEDULER_WORKERS",
                   "a comma-separated list of worker ids from 1 to 256, e.g. 1 or 1,2", v);

    if ((v = lookup(src, "ORGSYNC_WORKERS"))) {
        if (parse_long(v, 1, SETTINGS_MAX_WORKERS, &n))
            return bad(err, errlen, "ORGSYNC_WORKERS", "an integer from 1 to 256", v);
        s->workers = (int)n;
    }

    if ((v = lookup(src, "ORGSYNC_INSTANCE")) && !valid_instance(v))
        return bad(err, errlen, "ORGSYNC_INSTANCE",
                   "1-127 printable characters without spaces or '|'", v);
    if (v)
        snprintf(s->instance, sizeof(s->instance), "%s", v);

    if ((v = lookup(src, "ORGSYNC_PG_DSN"))) {
        char *perr = NULL;
        PQconninfoOption *opts = PQconninfoParse(v, &perr);
        if (!opts) {
            /* libpq's message may quote the string, and with it a password. */
            int quiet = strcasestr(v, "password") || strchr(v, '@');
            snprintf(err, errlen, "ORGSYNC_PG_DSN: not a valid libpq connection string: %s",
                     quiet  ? "(libpq's message is not shown: it may quote the password)"
                     : perr ? trim(perr)
                            : "out of memory");
            PQfreemem(perr);
            return -1;
        }
        PQconninfoFree(opts);
        if (set_str(s->pg_dsn, sizeof(s->pg_dsn), "ORGSYNC_PG_DSN", v, err, errlen))
            return -1;
    }

    {
        PQconninfoOption *opts = PQconninfoParse(s->pg_dsn, NULL);
        int found =
            secret(src, "ORGSYNC_PG_PASSWORD", sv, sizeof sv, from, sizeof from, err, errlen);
        int rc = found < 0 ? -1 : 0;
        if (!opts) {
            snprintf(err, errlen, "ORGSYNC_PG_DSN: out of memory");
            rc = -1;
        } else if (rc == 0 && found > 0 && conninfo_val(opts, "password")) {
            snprintf(err, errlen,
                     "ORGSYNC_PG_PASSWORD%s: ORGSYNC_PG_DSN already holds a password; give it "
                     "once",
                     from);
            rc = -1;
        } else if (rc == 0 && found > 0 && strlen(sv) >= sizeof(s->pg_password)) {
            snprintf(err, errlen, "ORGSYNC_PG_PASSWORD%s: longer than %zu characters", from,
                     sizeof(s->pg_password) - 1);
            rc = -1;
        } else if (rc == 0) {
            rc = check_pg_dsn_files(opts, src, err, errlen);
        }
        if (rc == 0 && found > 0)
            memcpy(s->pg_password, sv, strlen(sv) + 1);
        if (opts)
            PQconninfoFree(opts);
        explicit_bzero(sv, sizeof sv);
        if (rc)
            return -1;
    }

    if ((v = lookup(src, "ORGSYNC_REDIS_URL")) &&
        set_str(s->redis_url, sizeof(s->redis_url), "ORGSYNC_REDIS_URL", v, err, errlen))
        return -1;

    if ((r = secret(src, "ORGSYNC_REDIS_PASSWORD", sv, sizeof sv, from, sizeof from, err, errlen)) <
        0)
        return -1;
    if (r > 0) {
        r = redis_url_add_password(s->redis_url, sizeof(s->redis_url), sv, from, err, errlen);
        explicit_bzero(sv, sizeof sv);
        if (r)
            return -1;
    }

    /* Checked with ORGSYNC_REDIS_PASSWORD in it: "redis://user:@host" is whole
     * only once the password is added. The parser's messages name no value. */
    {
        redis_url_info *u = malloc(sizeof(*u));
        int nomem = !u,
            bad = nomem || redis_url_parse_full(s->redis_url, u, cerr, sizeof(cerr)) < 0;

        if (u)
            explicit_bzero(u, sizeof(*u));
        free(u);
        if (bad) {
            snprintf(err, errlen,
                     "ORGSYNC_REDIS_URL: %s (expected redis://[[user]:password@]host:port/db or "
                     "redis-sentinel://[[user]:password@]host:port,host:port/master?db=N)",
                     nomem ? "out of memory" : cerr);
            return -1;
        }
    }

    if ((v = lookup(src, "ORGSYNC_READ_ONLY"))) {
        if (!strcasecmp(v, "auto"))
            s->read_only = READ_ONLY_AUTO;
        else if (!strcasecmp(v, "on"))
            s->read_only = READ_ONLY_ON;
        else if (!strcasecmp(v, "off"))
            s->read_only = READ_ONLY_OFF;
        else
            return bad(err, errlen, "ORGSYNC_READ_ONLY", "on, off or auto", v);
    }

    if ((v = lookup(src, "ORGSYNC_HTTP_ADDR"))) {
        if (!valid_listen_addr(v))
            return bad(err, errlen, "ORGSYNC_HTTP_ADDR",
                       "an IP address and port, e.g. 127.0.0.1:8080 or 0.0.0.0:8080", v);
        snprintf(s->http_addr, sizeof(s->http_addr), "%s", v);
    }

    if ((v = lookup(src, "ORGSYNC_CRON"))) {
        cron_expr c;
        if (cron_parse(&c, v, cerr, sizeof(cerr))) {
            snprintf(err, errlen,
                     "ORGSYNC_CRON: %s (expected 5 or 6 cron fields, e.g. '0 0 2 * * *')", cerr);
            return -1;
        }
        if (set_str(s->cron, sizeof(s->cron), "ORGSYNC_CRON", v, err, errlen))
            return -1;
    }

    if ((v = lookup(src, "ORGSYNC_TZ"))) {
        if (strlen(v) >= sizeof(s->tz) || !cron_tz_valid(v))
            return bad(err, errlen, "ORGSYNC_TZ", "a time zone name such as Asia/Shanghai or UTC",
                       v);
        snprintf(s->tz, sizeof(s->tz), "%s", v);
    }

    if ((v = lookup(src, "ORGSYNC_LOCK_TTL_MS"))) {
        if (parse_long(v, 1000, 600000, &n))
            return bad(err, errlen, "ORGSYNC_LOCK_TTL_MS", "milliseconds from 1000 to 600000", v);
        s->lock_ttl_ms = (int)n;
    }

    if ((v = lookup(src, "ORGSYNC_DRAIN_MS"))) {
        if (parse_long(v, 0, 15000, &n))
            return bad(err, errlen, "ORGSYNC_DRAIN_MS", "milliseconds from 0 to 15000", v);
        s->drain_ms = (int)n;
    }

    if ((v = lookup(src, "ORGSYNC_EXPORT_RANGE_KB"))) {
        if (parse_long(v, 4, 8192, &n))
            return bad(err, errlen, "ORGSYNC_EXPORT_RANGE_KB",
                       "KiB from 4 to 8192 (an export file is downloaded in ranges of this "
                       "size; it bounds the memory one enterprise's download holds)",
                       v);
        s->export_range_kb = (int)n;
    }

    if ((v = lookup(src, "ORGSYNC_EXPORT_AUTO_DEPTS"))) {
        if (parse_long(v, 0, 10000000, &n))
            return bad(err, errlen, "ORGSYNC_EXPORT_AUTO_DEPTS",
                       "a department count from 0 to 10000000 (member source auto uses the "
                       "export job above it)",
                       v);
        s->export_auto_depts = (int)n;
    }

    if ((v = lookup(src, "ORGSYNC_DEPT_RATE"))) {
        char *end;
        double d;
        errno = 0;
        d = strtod(v, &end);
        if (!*v || errno || *end || !(d >= 0.1 && d <= 1000))
            return bad(err, errlen, "ORGSYNC_DEPT_RATE",
                       "requests per second per enterprise, a number from 0.1 to 1000", v);
        s->dept_rate = d;
    }

    if ((v = lookup(src, "ORGSYNC_UPSTREAM_MAX_INFLIGHT"))) {
        if (parse_long(v, 1, 60, &n))
            return bad(err, errlen, "ORGSYNC_UPSTREAM_MAX_INFLIGHT",
                       "an integer from 1 to 60 (the upstream bans above 60)", v);
        s->upstream_max_inflight = (int)n;
    }

    if ((v = lookup(src, "ORGSYNC_UPSTREAM_URL"))) {
        size_t len;
        if (!valid_http_url(v) || set_str(s->upstream_url, sizeof(s->upstream_url),
                                          "ORGSYNC_UPSTREAM_URL", v, err, errlen))
            return bad(err, errlen, "ORGSYNC_UPSTREAM_URL", "an http:// or https:// URL", v);
        len = strlen(s->upstream_url);
        while (len > 0 && s->upstream_url[len - 1] == '/')
            s->upstream_url[--len] = '\0';
    }

    if ((v = lookup(src, "ORGSYNC_DAILY_QUOTA")) && *v) {
        if (parse_long(v, 1, 1000000000L, &n))
            return bad(err, errlen, "ORGSYNC_DAILY_QUOTA",
                       "a positive integer (calls per enterprise per day), or unset", v);
        s->daily_quota = n;
    }

    if ((v = lookup(src, "ORGSYNC_LOOKUP_BUDGET"))) {
        if (parse_long(v, 0, 1000000, &n))
            return bad(err, errlen, "ORGSYNC_LOOKUP_BUDGET",
                       "an integer from 0 to 1000000 (lookups per enterprise per hour)", v);
        s->lookup_budget = (int)n;
    }

    if ((v = lookup(src, "ORGSYNC_CALLBACK_LAG_ALERT_S"))) {
        if (parse_long(v, 1, 86400, &n))
            return bad(err, errlen, "ORGSYNC_CALLBACK_LAG_ALERT_S",
                       "seconds from 1 to 86400 (age of the oldest waiting change callback)", v);
        s->callback_lag_alert_s = (int)n;
    }

    if ((r = secret(src, "ORGSYNC_ADMIN_TOKEN", sv, sizeof sv, from, sizeof from, err, errlen)) <
            0 ||
        (r > 0 && set_token(s->admin_token, sizeof(s->admin_token), "ORGSYNC_ADMIN_TOKEN", sv, from,
                            err, errlen)))
        return -1;

    if ((r = secret(src, "ORGSYNC_READ_TOKEN", sv, sizeof sv, from, sizeof from, err, errlen)) <
            0 ||
        (r > 0 && set_token(s->read_token, sizeof(s->read_token), "ORGSYNC_READ_TOKEN", sv, from,
                            err, errlen)))
        return -1;
    if (s->read_token[0] && !strcmp(s->read_token, s->admin_token)) {
        snprintf(err, errlen,
                 "ORGSYNC_READ_TOKEN: must differ from ORGSYNC_ADMIN_TOKEN (the admin token is "
                 "accepted for reads anyway)");
        return -1;
    }

    if ((v = lookup(src, "ORGSYNC_PUBLIC_READS")) && parse_bool(v, &s->public_reads))
        return bad(err, errlen, "ORGSYNC_PUBLIC_READS", "on or off", v);
    if (s->public_reads && s->read_token[0]) {
        snprintf(err, errlen,
                 "ORGSYNC_PUBLIC_READS: on leaves directory reads open, so ORGSYNC_READ_TOKEN "
                 "would be ignored; set one or the other");
        return -1;
    }

    if ((r = secret(src, "ORGSYNC_CACHE_KEY", sv, sizeof sv, from, sizeof from, err, errlen)) < 0 ||
        (r > 0 &&
         set_token(s->cache_key, sizeof(s->cache_key), "ORGSYNC_CACHE_KEY", sv, from, err, errlen)))
        return -1;

    if ((r = secret(src, "ORGSYNC_ALERT_WEBHOOK", sv, sizeof sv, from, sizeof from, err, errlen)) <
        0)
        return -1;
    if (r > 0) {
        /* Not echoed: a webhook URL often carries its key. */
        if (!valid_http_url(sv) || strlen(sv) >= sizeof(s->alert_webhook)) {
            snprintf(err, errlen,
                     "ORGSYNC_ALERT_WEBHOOK: expected an http:// or https:// URL of at most %zu "
                     "characters%s (the value is not shown)",
                     sizeof(s->alert_webhook) - 1, from);
            return -1;
        }
        memcpy(s->alert_webhook, sv, strlen(sv) + 1);
    }
    explicit_bzero(sv, sizeof sv);

    if ((v = lookup(src, "ORGSYNC_LOG_LEVEL"))) {
        int lvl = log_level_parse(v);
        if (lvl < 0)
            return bad(err, errlen, "ORGSYNC_LOG_LEVEL", "debug, info, warn or error", v);
        s->log_level = lvl;
    }

    if ((v = lookup(src, "ORGSYNC_LOG_FORMAT"))) {
        if (!strcasecmp(v, "json"))
            s->log_json = 1;
        else if (!strcasecmp(v, "text"))
            s->log_json = 0;
        else
            return bad(err, errlen, "ORGSYNC_LOG_FORMAT", "json or text", v);
    }

    if ((v = lookup(src, "ORGSYNC_CODE_VERSION"))) {
        if (!*v || strlen(v) >= sizeof(s->code_version) || !valid_instance(v))
            return bad(err, errlen, "ORGSYNC_CODE_VERSION", "a version such as 1.2.3", v);
        snprintf(s->code_version, sizeof(s->code_version), "%s", v);
    }

    if ((v = lookup(src, "ORGSYNC_WORKER_ID"))) {
        if (parse_long(v, 0, SETTINGS_MAX_WORKERS, &n))
            return bad(err, errlen, "ORGSYNC_WORKER_ID", "an integer from 0 to 256", v);
        s->worker_id = (int)n;
    }

    if ((v = lookup(src, "ORGSYNC_EGRESS_ID"))) {
        if (!egress_cap_id_valid(v))
            return bad(err, errlen, "ORGSYNC_EGRESS_ID",
                       "1-64 characters of A-Z, a-z, 0-9, '.', '_', ':' or '-' (one id per "
                       "public IP)",
                       v);
        snprintf(s->egress_id, sizeof(s->egress_id), "%s", v);
    }

    if ((v = lookup(src, "ORGSYNC_EGRESS_MAX_PER_MIN"))) {
        if (parse_long(v, 1, EGRESS_UPSTREAM_PER_MIN, &n))
            return bad(err, errlen, "ORGSYNC_EGRESS_MAX_PER_MIN",
                       "an integer from 1 to 20000 (the upstream's per-IP limit cannot be "
                       "raised, only lowered)",
                       v);
        s->egress_max_per_min = (int)n;
    }

    if ((v = lookup(src, "ORGSYNC_EGRESS_MAX_PER_HOUR"))) {
        if (parse_long(v, 1, EGRESS_UPSTREAM_PER_HOUR, &n))
            return bad(err, errlen, "ORGSYNC_EGRESS_MAX_PER_HOUR",
                       "an integer from 1 to 600000 (the upstream's per-IP limit cannot be "
                       "raised, only lowered)",
                       v);
        s->egress_max_per_hour = (int)n;
    }

    if ((v = lookup(src, "ORGSYNC_EGRESS_REFUSED_TTL"))) {
        if (parse_long(v, 1, 604800, &n))
            return bad(err, errlen, "ORGSYNC_EGRESS_REFUSED_TTL",
                       "seconds from 1 to 604800 (a week)", v);
        s->egress_refused_ttl_s = (int)n;
    }

    if ((v = lookup(src, "ORGSYNC_UPSTREAM_BIND")) && *v) {
        if (strlen(v) >= sizeof(s->upstream_bind) || !valid_ip_literal(v))
            return bad(err, errlen, "ORGSYNC_UPSTREAM_BIND",
                       "a local IP address such as 10.0.0.5 or 2001:db8::5 (not a name or an "
                       "interface), or empty",
                       v);
        snprintf(s->upstream_bind, sizeof(s->upstream_bind), "%s", v);
    } else if (v) {
        s->upstream_bind[0] = '\0';
    }
    return 0;
}

static void defaults(settings *s)
{
    char host[65] = "localhost";
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    memset(s, 0, sizeof(*s));
    snprintf(s->env, sizeof(s->env), "dev");
    s->schedule = 0;
    s->scheduler_workers[1] = 1;
    snprintf(s->scheduler_workers_text, sizeof(s->scheduler_workers_text), "1");
    s->workers = ncpu > 0 ? (ncpu > SETTINGS_MAX_WORKERS ? SETTINGS_MAX_WORKERS : (int)ncpu) : 1;
    gethostname(host, sizeof(host) - 1);
    host[sizeof(host) - 1] = '\0';
    snprintf(s->instance, sizeof(s->instance), "%s:%d", host, (int)getpid());
    snprintf(s->pg_dsn, sizeof(s->pg_dsn), "postgresql:///orgsync");
    snprintf(s->redis_url, sizeof(s->redis_url), "redis://127.0.0.1:6379/0");
    s->read_only = READ_ONLY_AUTO;
    snprintf(s->http_addr, sizeof(s->http_addr), "127.0.0.1:8080");
    snprintf(s->cron, sizeof(s->cron), "0 0 2 * * *");
    snprintf(s->tz, sizeof(s->tz), "Asia/Shanghai");
    s->lock_ttl_ms = 15000;
    s->dept_rate = 10;
    s->upstream_max_inflight = 50;
    snprintf(s->upstream_url, sizeof(s->upstream_url), "https://qyapi.weixin.qq.com");
    s->daily_quota = 0;
    s->lookup_budget = 60;
    s->callback_lag_alert_s = 60;
    s->log_level = LOG_INFO;
    s->log_json = 1;
    snprintf(s->code_version, sizeof(s->code_version), "%s", ORGSYNC_VERSION);
    egress_cap_id_from_host(host, s->egress_id, sizeof(s->egress_id));
    s->egress_max_per_min = EGRESS_UPSTREAM_PER_MIN;
    s->egress_max_per_hour = EGRESS_UPSTREAM_PER_HOUR;
    s->egress_refused_ttl_s = 3600;
    s->export_range_kb = 1024;
    s->export_auto_depts = 100;
}

int settings_load_from(settings *s, const char *config_file, settings_getenv_fn get, void *arg,
                       char *err, size_t errlen)
{
    file_kv *kv = NULL;
    source src = {NULL, get, arg};
    int rc;
    defaults(s);
    if (config_file) {
        kv = calloc(1, sizeof(*kv));
        if (!kv) {
            snprintf(err, errlen, "--config: out of memory");
            return -1;
        }
        if (read_config_file(config_file, kv, err, errlen)) {
            free(kv);
            return -1;
        }
        src.file = kv;
    }
    rc = apply(s, &src, err, errlen);
    free(kv);
    if (rc == 0 && config_file &&
        set_str(s->config_file, sizeof(s->config_file), "--config", config_file, err, errlen))
        return -1;
    return rc;
}

static const char *env_get(const char *name, void *arg)
{
    (void)arg;
    return getenv(name);
}

int settings_load(settings *s, const char *config_file, char *err, size_t errlen)
{
    return settings_load_from(s, config_file, env_get, NULL, err, errlen);
}

int settings_may_schedule_worker(const settings *s, int worker_id)
{
    return worker_id >= 1 && worker_id <= SETTINGS_MAX_WORKERS && s->scheduler_workers[worker_id];
}
