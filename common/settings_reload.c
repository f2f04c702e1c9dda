/* Reload: which settings change at run time (see settings_reload.h). */
#include "common/settings_reload.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>

typedef struct field {
    const char *name;
    size_t off, size;
    int is_str;
    int reloadable;
} field;

#define STR(n, f, r)                                                                               \
    {                                                                                              \
        n, offsetof(settings, f), sizeof(((settings *)0)->f), 1, r                                 \
    }
#define MEM(n, f, r)                                                                               \
    {                                                                                              \
        n, offsetof(settings, f), sizeof(((settings *)0)->f), 0, r                                 \
    }

/* ORGSYNC_WORKER_ID and config_file are per process and not compared. */
static const field fields[] = {
    STR("ORGSYNC_ENV", env, 0),
    MEM("ORGSYNC_SCHEDULE", schedule, 0),
    MEM("ORGSYNC_SCHEDULER_WORKERS", scheduler_workers, 0),
    MEM("ORGSYNC_WORKERS", workers, 0),
    STR("ORGSYNC_INSTANCE", instance, 0),
    STR("ORGSYNC_PG_DSN", pg_dsn, 0),
    STR("ORGSYNC_REDIS_URL", redis_url, 0),
    MEM("ORGSYNC_READ_ONLY", read_only, 0),
    STR("ORGSYNC_HTTP_ADDR", http_addr, 0),
    STR("ORGSYNC_CRON", cron, 1),
    STR("ORGSYNC_TZ", tz, 1),
    MEM("ORGSYNC_LOCK_TTL_MS", lock_ttl_ms, 0),
    MEM("ORGSYNC_DRAIN_MS", drain_ms, 0),
    MEM("ORGSYNC_DEPT_RATE", dept_rate, 0),
    MEM("ORGSYNC_UPSTREAM_MAX_INFLIGHT", upstream_max_inflight, 0),
    STR("ORGSYNC_UPSTREAM_URL", upstream_url, 0),
    MEM("ORGSYNC_DAILY_QUOTA", daily_quota, 0),
    MEM("ORGSYNC_LOOKUP_BUDGET", lookup_budget, 0),
    STR("ORGSYNC_ADMIN_TOKEN", admin_token, 0),
    STR("ORGSYNC_ALERT_WEBHOOK", alert_webhook, 1),
    MEM("ORGSYNC_LOG_LEVEL", log_level, 1),
    MEM("ORGSYNC_LOG_FORMAT", log_json, 1),
    STR("ORGSYNC_CODE_VERSION", code_version, 0),
    STR("ORGSYNC_EGRESS_ID", egress_id, 0),
    MEM("ORGSYNC_EGRESS_MAX_PER_MIN", egress_max_per_min, 0),
    MEM("ORGSYNC_EGRESS_MAX_PER_HOUR", egress_max_per_hour, 0),
    MEM("ORGSYNC_EGRESS_REFUSED_TTL", egress_refused_ttl_s, 0),
    STR("ORGSYNC_UPSTREAM_BIND", upstream_bind, 0),
};

#define NFIELDS (sizeof(fields) / sizeof(fields[0]))

int settings_reloadable(const char *name)
{
    for (size_t i = 0; i < NFIELDS; i++)
        if (!strcmp(fields[i].name, name))
            return fields[i].reloadable;
    return 0;
}

static void add(char *list, size_t cap, const char *name)
{
    size_t n = strlen(list);

    snprintf(list + n, cap - n, "%s%s", n ? "," : "", name);
}

static int differs(const field *f, const settings *a, const settings *b)
{
    const char *pa = (const char *)a + f->off, *pb = (const char *)b + f->off;

    return f->is_str ? strncmp(pa, pb, f->size) != 0 : memcmp(pa, pb, f->size) != 0;
}

void settings_reload_apply(settings *cur, const settings *fresh, settings_changes *out)
{
    settings probe;
    size_t i;

    out->reloaded[0] = out->needs_restart[0] = '\0';
    for (i = 0; i < NFIELDS; i++) {
        const field *f = &fields[i];
        if (!differs(f, cur, fresh))
            continue;
        if (f->reloadable) {
            /* Whole field, so that the struct compares equal byte for byte below. */
            memcpy((char *)cur + f->off, (const char *)fresh + f->off, f->size);
            add(out->reloaded, sizeof(out->reloaded), f->name);
        } else {
            add(out->needs_restart, sizeof(out->needs_restart), f->name);
        }
    }
    if (out->needs_restart[0])
        return;
    /* A setting added to settings.h but not to the table above: still said. */
    probe = *fresh;
    for (i = 0; i < NFIELDS; i++)
        if (!differs(&fields[i], cur, &probe))
            memcpy((char *)&probe + fields[i].off, (const char *)cur + fields[i].off,
                   fields[i].size);
    probe.worker_id = cur->worker_id;
    memcpy(probe.scheduler_workers_text, cur->scheduler_workers_text,
           sizeof(probe.scheduler_workers_text));
    memcpy(probe.config_file, cur->config_file, sizeof(probe.config_file));
    if (memcmp(&probe, cur, sizeof(probe)) != 0)
        add(out->needs_restart, sizeof(out->needs_restart), "(other settings)");
}
