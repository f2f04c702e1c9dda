/* Structured logging: one JSON object per line on stderr (or text for people).
 *
 *   log_info("lock acquired", LF_I("fencing_token", tok), LF_S("corp_id", corp));
 *   log_warn("mobile unknown", LF_MOBILE("mobile", m));   // masked: 138******12
 *
 * Every line carries ts, level, msg, instance and worker_id. Secrets are never
 * passed to the logger; mobiles only through LF_MOBILE, which masks them. */
#ifndef ORGSYNC_LOG_H
#define ORGSYNC_LOG_H

#include <stddef.h>

typedef enum { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR } log_level;

typedef enum { LOG_F_END = 0, LOG_F_STR, LOG_F_INT, LOG_F_DBL, LOG_F_MOBILE, LOG_F_SKIP } log_ftype;

typedef struct log_field {
    log_ftype type;
    const char *key;
    const char *s;
    long long i;
    double d;
} log_field;

#define LF_S(k, v) ((log_field){LOG_F_STR, (k), (v), 0, 0})
#define LF_I(k, v) ((log_field){LOG_F_INT, (k), NULL, (long long)(v), 0})
#define LF_D(k, v) ((log_field){LOG_F_DBL, (k), NULL, 0, (double)(v)})
#define LF_MOBILE(k, v) ((log_field){LOG_F_MOBILE, (k), (v), 0, 0})

/* Set once at start; instance and worker_id appear on every line. */
void log_init(log_level min, int json, const char *instance, int worker_id);
/* Parses "debug|info|warn|error"; -1 if unknown. */
int log_level_parse(const char *s);
int log_enabled(log_level lvl);
/* Redirect output (tests); NULL means stderr. */
void log_set_stream(void *file);

void log_emit(log_level lvl, const char *msg, const log_field *fields);

#define log_debug(msg, ...)                                                                        \
    log_emit(                                                                                      \
        LOG_DEBUG, (msg),                                                                          \
        (const log_field[]){{LOG_F_SKIP, 0, 0, 0, 0}, ##__VA_ARGS__, {LOG_F_END, 0, 0, 0, 0}})
#define log_info(msg, ...)                                                                         \
    log_emit(                                                                                      \
        LOG_INFO, (msg),                                                                           \
        (const log_field[]){{LOG_F_SKIP, 0, 0, 0, 0}, ##__VA_ARGS__, {LOG_F_END, 0, 0, 0, 0}})
#define log_warn(msg, ...)                                                                         \
    log_emit(                                                                                      \
        LOG_WARN, (msg),                                                                           \
        (const log_field[]){{LOG_F_SKIP, 0, 0, 0, 0}, ##__VA_ARGS__, {LOG_F_END, 0, 0, 0, 0}})
#define log_error(msg, ...)                                                                        \
    log_emit(                                                                                      \
        LOG_ERROR, (msg),                                                                          \
        (const log_field[]){{LOG_F_SKIP, 0, 0, 0, 0}, ##__VA_ARGS__, {LOG_F_END, 0, 0, 0, 0}})

/* Masks a mobile to its first 3 and last 2 digits ("138******12"); anything
 * shorter than 6 characters becomes all stars. out needs len(mobile)+1 bytes,
 * at most 32 are written. */
void log_mask_mobile(const char *mobile, char *out, size_t outlen);

/* JSON-escapes s into out (without quotes); returns bytes written, truncating
 * safely. Shared by the logger and small hand-built JSON writers. */
size_t log_json_escape(const char *s, char *out, size_t outlen);

#endif
