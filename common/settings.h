/* Settings (SPEC §2): every ORGSYNC_* variable, parsed and validated at start.
 *
 * Sources, later wins: built-in defaults, then `--config FILE` (KEY=VALUE lines,
 * '#' comments), then the environment. A bad value fails with one line naming
 * the setting and what it accepts, before anything connects anywhere. */
#ifndef ORGSYNC_SETTINGS_H
#define ORGSYNC_SETTINGS_H

#include <stddef.h>
#include <stdint.h>

#define SETTINGS_MAX_WORKERS 256

typedef enum { READ_ONLY_AUTO = 0, READ_ONLY_ON, READ_ONLY_OFF } settings_read_only;

typedef struct settings {
    char env[64];                                        /* ORGSYNC_ENV */
    int schedule;                                        /* ORGSYNC_SCHEDULE on/off */
    uint8_t scheduler_workers[SETTINGS_MAX_WORKERS + 1]; /* [id] = 1 if id may compete */
    char scheduler_workers_text[256];
    int workers;                  /* ORGSYNC_WORKERS */
    char instance[128];           /* ORGSYNC_INSTANCE */
    char pg_dsn[1024];            /* ORGSYNC_PG_DSN */
    char redis_url[512];          /* ORGSYNC_REDIS_URL */
    settings_read_only read_only; /* ORGSYNC_READ_ONLY */
    char http_addr[128];          /* ORGSYNC_HTTP_ADDR host:port */
    char cron[128];               /* ORGSYNC_CRON */
    char tz[64];                  /* ORGSYNC_TZ */
    int lock_ttl_ms;              /* ORGSYNC_LOCK_TTL_MS */
    int drain_ms;                 /* ORGSYNC_DRAIN_MS: serve's drain window after SIGTERM */
    double dept_rate;             /* ORGSYNC_DEPT_RATE */
    int upstream_max_inflight;    /* ORGSYNC_UPSTREAM_MAX_INFLIGHT */
    char upstream_url[512];       /* ORGSYNC_UPSTREAM_URL, no trailing slash */
    long daily_quota;             /* ORGSYNC_DAILY_QUOTA, 0 = unset */
    int lookup_budget;            /* ORGSYNC_LOOKUP_BUDGET per enterprise per hour */
    int callback_lag_alert_s;     /* ORGSYNC_CALLBACK_LAG_ALERT_S: alert callback_lag past it */
    char admin_token[256];        /* ORGSYNC_ADMIN_TOKEN, "" = write endpoints refused */
    char read_token[256];         /* ORGSYNC_READ_TOKEN, "" = none (directory reads) */
    int public_reads;             /* ORGSYNC_PUBLIC_READS: directory reads need no token */
    char pg_password[256];        /* ORGSYNC_PG_PASSWORD, "" = libpq's own (DSN, passfile) */
    char cache_key[256];          /* ORGSYNC_CACHE_KEY, "" = a per-environment key in Redis */
    char alert_webhook[512];      /* ORGSYNC_ALERT_WEBHOOK, "" = none */
    int log_level;                /* ORGSYNC_LOG_LEVEL (log_level) */
    int log_json;                 /* ORGSYNC_LOG_FORMAT json|text */
    char code_version[64];        /* ORGSYNC_CODE_VERSION: defaults to the build's version */
    int worker_id;                /* ORGSYNC_WORKER_ID, set by the supervisor; 0 outside */
    char egress_id[65];           /* ORGSYNC_EGRESS_ID: which egress (public IP) calls leave from */
    int egress_max_per_min;       /* ORGSYNC_EGRESS_MAX_PER_MIN, 1..20000 */
    int egress_max_per_hour;      /* ORGSYNC_EGRESS_MAX_PER_HOUR, 1..600000 */
    int egress_refused_ttl_s; /* ORGSYNC_EGRESS_REFUSED_TTL: how long a refused egress sits out */
    int export_range_kb;    /* ORGSYNC_EXPORT_RANGE_KB: an export file is read in ranges of this */
    int export_auto_depts;  /* ORGSYNC_EXPORT_AUTO_DEPTS: member source auto exports above this */
    char upstream_bind[64]; /* ORGSYNC_UPSTREAM_BIND: local IP literal, "" = any */
    /* The --config FILE these came from, "" = none: a reload (SIGHUP) reads it again. */
    char config_file[512];
} settings;

/* Fills s from defaults, the optional config file and the environment.
 * 0 on success; -1 with a one-line message in err, e.g.
 * "ORGSYNC_DEPT_RATE: expected a number from 0.1 to 1000, got 'abc'". */
int settings_load(settings *s, const char *config_file, char *err, size_t errlen);

/* Same, reading variables through a lookup function (tests). */
typedef const char *(*settings_getenv_fn)(const char *name, void *arg);
int settings_load_from(settings *s, const char *config_file, settings_getenv_fn get, void *arg,
                       char *err, size_t errlen);

int settings_may_schedule_worker(const settings *s, int worker_id);

/* The names of every setting, NULL-terminated (for docs and `--help`). */
extern const char *const settings_names[];
/* The settings that are secrets (each also NAME_FILE or a credential), NULL-terminated. */
extern const char *const settings_secret_names[];

#endif
