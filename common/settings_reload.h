/* What a reload (SIGHUP to `orgsync serve`) may change while running, and what
 * needs a restart.
 *
 * Reloadable: ORGSYNC_LOG_LEVEL, ORGSYNC_LOG_FORMAT, ORGSYNC_CRON, ORGSYNC_TZ and
 * ORGSYNC_ALERT_WEBHOOK. Everything else (the port, the DSN, the number of
 * workers, the environment name ...) is fixed for the life of the processes
 * that use it: a changed value is reported by name (never by value: some are
 * secrets) and left as it was, so the running workers and any worker the
 * supervisor restarts later keep agreeing with each other. */
#ifndef ORGSYNC_SETTINGS_RELOAD_H
#define ORGSYNC_SETTINGS_RELOAD_H

#include "common/settings.h"

typedef struct settings_changes {
    char reloaded[256];      /* comma-separated names taken from fresh, "" none */
    char needs_restart[768]; /* comma-separated names that differ but were kept */
} settings_changes;

/* 1 if the setting NAME (e.g. "ORGSYNC_CRON") can change without a restart. */
int settings_reloadable(const char *name);

/* Copies the reloadable settings that differ from fresh into cur, and lists in
 * out which were taken and which others differ. A difference in a field this
 * module does not know by name (a setting added later) is reported as
 * "(other settings)" in needs_restart. cur and fresh must both come from
 * settings_load (fields are compared whole). */
void settings_reload_apply(settings *cur, const settings *fresh, settings_changes *out);

#endif
