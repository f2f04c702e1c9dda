/* orgsync enterprise add|set|list|disable|enable: manages the enterprises table.
 * Secrets (the app secret, and optionally the contact-sync secret) are read from
 * named environment variables, never from argv (argv is visible to every user
 * through ps). */
#include "common/msgcrypt.h"
#include "common/secret.h"
#include "worker/cli/cli_db.h"
#include "worker/cli/commands.h"
#include "worker/wecom/corp_id.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Longest secret accepted (WeCom secrets are 43 characters). */
#define ENT_SECRET_MAX 512

typedef struct ent_args {
    const char *corp_id;
    const char *secret_env;
    const char *contact_env;
    const char *api_mode;
    const char *member_source;
    const char *name;
    const char *cb_token_env;
    const char *cb_aeskey_env;
    int no_contact;
    int no_callback;
} ent_args;

static int parse_args(const char *sub, int argc, char **argv, ent_args *a)
{
    for (int i = 2; i < argc; i++) {
        const char **dst = NULL;
        if (!strcmp(argv[i], "--corp-id"))
            dst = &a->corp_id;
        else if (!strcmp(argv[i], "--secret-env"))
            dst = &a->secret_env;
        else if (!strcmp(argv[i], "--contact-secret-env"))
            dst = &a->contact_env;
        else if (!strcmp(argv[i], "--api-mode"))
            dst = &a->api_mode;
        else if (!strcmp(argv[i], "--member-source"))
            dst = &a->member_source;
        else if (!strcmp(argv[i], "--name"))
            dst = &a->name;
        else if (!strcmp(argv[i], "--callback-token-env"))
            dst = &a->cb_token_env;
        else if (!strcmp(argv[i], "--callback-aeskey-env"))
            dst = &a->cb_aeskey_env;
        else if (!strcmp(argv[i], "--no-callback")) {
            a->no_callback = 1;
            continue;
        } else if (!strcmp(argv[i], "--no-contact-secret")) {
            a->no_contact = 1;
            continue;
        } else
            return cmd_usage_error("enterprise", "%s: unknown option '%s'", sub, argv[i]);
        if (i + 1 >= argc)
            return cmd_usage_error("enterprise", "%s: %s needs a value", sub, argv[i]);
        *dst = argv[++i];
    }
    if (a->corp_id && !corp_id_valid(a->corp_id))
        return cmd_usage_error("enterprise",
                               "--corp-id: expected 1-64 characters of A-Z, a-z, 0-9, '_' or '-'");
    if (a->api_mode && strcmp(a->api_mode, "auto") && strcmp(a->api_mode, "legacy") &&
        strcmp(a->api_mode, "modern"))
        return cmd_usage_error(
            "enterprise", "--api-mode: expected auto, legacy or modern, got '%s'", a->api_mode);
    if (a->member_source && strcmp(a->member_source, "user_list") &&
        strcmp(a->member_source, "export") && strcmp(a->member_source, "auto"))
        return cmd_usage_error("enterprise",
                               "--member-source: expected user_list, export or auto, got '%s'",
                               a->member_source);
    if (a->no_contact && a->contact_env)
        return cmd_usage_error("enterprise",
                               "--no-contact-secret and --contact-secret-env exclude each other");
    if (!a->cb_token_env != !a->cb_aeskey_env)
        return cmd_usage_error("enterprise", "--callback-token-env and --callback-aeskey-env go "
                                             "together (a callback needs both)");
    if (a->no_callback && a->cb_token_env)
        return cmd_usage_error("enterprise",
                               "--no-callback and --callback-token-env exclude each other");
    if (a->name && (strlen(a->name) == 0 || strlen(a->name) > 200))
        return cmd_usage_error("enterprise", "--name: expected 1 to 200 characters");
    return 0;
}

static const char *env_get(const char *name, void *arg)
{
    (void)arg;
    return getenv(name);
}

/* The secret the variable VAR that option names holds: VAR itself, the file
 * VAR_FILE names, or the credential $CREDENTIALS_DIRECTORY/VAR (common/secret.h).
 * 0 with out filled; else a usage error was printed (the value never is). */
static int secret_from(const char *option, const char *var, char *out, size_t cap)
{
    char err[600];
    int r;
    if (!secret_name_valid(var)) {
        cmd_usage_error("enterprise", "%s: expected a variable name (A-Z, a-z, 0-9, _), got '%s'",
                        option, var);
        return -1;
    }
    r = secret_lookup(var, env_get, NULL, getenv("CREDENTIALS_DIRECTORY"), out, cap, NULL, 0, err,
                      sizeof err);
    if (r < 0) {
        cmd_usage_error("enterprise", "%s: %s", option, err);
        return -1;
    }
    if (r == 0) {
        cmd_usage_error(
            "enterprise",
            "%s: %s is not set or empty (give the secret in %s, or a file holding it in "
            "%s_FILE, or as the credential %s)",
            option, var, var, var, var);
        return -1;
    }
    return 0;
}

/* add creates or replaces; set changes only the options given. NULL parameters
 * keep the stored value (coalesce); the contact secret is cleared by
 * --no-contact-secret. */
static int ent_write(const settings *s, const ent_args *a, int add)
{
    const char *secret = NULL, *contact = NULL, *cb_token = NULL, *cb_aeskey = NULL, *p[10];
    char secret_buf[ENT_SECRET_MAX], contact_buf[ENT_SECRET_MAX];
    char token_buf[ENT_SECRET_MAX], aeskey_buf[ENT_SECRET_MAX];
    PGconn *c;
    PGresult *r;
    int rc = 1;

    if (add && (!a->corp_id || !a->secret_env || !a->name))
        return cmd_usage_error("enterprise",
                               "add needs --corp-id ID --secret-env VAR --name NAME "
                               "[--contact-secret-env VAR] [--api-mode auto|legacy|modern] "
                               "[--member-source user_list|export|auto]");
    if (!add && !a->corp_id)
        return cmd_usage_error("enterprise", "set needs --corp-id ID");
    if (!add && !a->secret_env && !a->contact_env && !a->api_mode && !a->member_source &&
        !a->name && !a->no_contact && !a->cb_token_env && !a->no_callback)
        return cmd_usage_error("enterprise",
                               "set: nothing to change (give --secret-env, --contact-secret-env, "
                               "--no-contact-secret, --api-mode, --member-source, --name, "
                               "--callback-token-env "
                               "with --callback-aeskey-env, or --no-callback)");
    secret_buf[0] = contact_buf[0] = token_buf[0] = aeskey_buf[0] = '\0';
    if (a->secret_env) {
        if (secret_from("--secret-env", a->secret_env, secret_buf, sizeof secret_buf))
            goto usage;
        secret = secret_buf;
    }
    if (a->contact_env) {
        if (secret_from("--contact-secret-env", a->contact_env, contact_buf, sizeof contact_buf))
            goto usage;
        contact = contact_buf;
    }
    if (a->cb_token_env) {
        if (secret_from("--callback-token-env", a->cb_token_env, token_buf, sizeof token_buf) ||
            secret_from("--callback-aeskey-env", a->cb_aeskey_env, aeskey_buf, sizeof aeskey_buf))
            goto usage;
        cb_token = token_buf;
        cb_aeskey = aeskey_buf;
        /* The values are never printed: only which variable is wrong, and why. */
        if (strlen(cb_token) > 128 ||
            strspn(cb_token, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnop"
                             "qrstuvwxyz0123456789") != strlen(cb_token)) {
            cmd_usage_error("enterprise",
                            "--callback-token-env: %s must hold 1 to 128 of A-Z, a-z, 0-9",
                            a->cb_token_env);
            goto usage;
        }
        if (!msgcrypt_aeskey_valid(cb_aeskey)) {
            cmd_usage_error("enterprise",
                            "--callback-aeskey-env: %s must hold an EncodingAESKey: "
                            "exactly 43 of A-Z, a-z, 0-9",
                            a->cb_aeskey_env);
            goto usage;
        }
    }
    c = cli_db_connect(s, "enterprise");
    if (!c) {
        rc = 1;
        goto done;
    }
    p[0] = a->corp_id;
    p[1] = a->name;
    p[2] = secret;
    p[3] = contact;
    p[4] = a->api_mode;
    p[5] = a->no_contact ? "t" : "f";
    p[6] = cb_token;
    p[7] = cb_aeskey;
    p[8] = a->no_callback ? "t" : "f";
    p[9] = a->member_source;
    if (add)
        r = cli_db_exec(c, "enterprise",
                        "INSERT INTO enterprises (corp_id, name, corp_secret, contact_secret, "
                        " api_mode, callback_token, callback_aeskey, member_source) VALUES ($1,"
                        " $2, $3, $4, coalesce($5, 'auto'), $7, $8, coalesce($10, 'user_list'))"
                        " ON CONFLICT (corp_id) DO UPDATE SET name = EXCLUDED.name,"
                        " corp_secret = EXCLUDED.corp_secret,"
                        " contact_secret = CASE WHEN $6::boolean THEN NULL"
                        "   ELSE coalesce($4, enterprises.contact_secret) END,"
                        " api_mode = coalesce($5, enterprises.api_mode),"
                        " callback_token = CASE WHEN $9::boolean THEN NULL"
                        "   ELSE coalesce($7, enterprises.callback_token) END,"
                        " callback_aeskey = CASE WHEN $9::boolean THEN NULL"
                        "   ELSE coalesce($8, enterprises.callback_aeskey) END,"
                        " member_source = coalesce($10, enterprises.member_source)"
                        " RETURNING (xmax = 0)",
                        10, p);
    else
        r = cli_db_exec(c, "enterprise",
                        "UPDATE enterprises SET name = coalesce($2, name),"
                        " corp_secret = coalesce($3, corp_secret),"
                        " contact_secret = CASE WHEN $6::boolean THEN NULL"
                        "   ELSE coalesce($4, contact_secret) END,"
                        " api_mode = coalesce($5, api_mode),"
                        " callback_token = CASE WHEN $9::boolean THEN NULL"
                        "   ELSE coalesce($7, callback_token) END,"
                        " callback_aeskey = CASE WHEN $9::boolean THEN NULL"
                        "   ELSE coalesce($8, callback_aeskey) END,"
                        " member_source = coalesce($10, member_source)"
                        " WHERE corp_id = $1 RETURNING false",
                        10, p);
    if (r) {
        if (PQntuples(r) == 0) {
            fprintf(stderr, "orgsync enterprise: no enterprise %s\n", a->corp_id);
        } else {
            printf("%s enterprise %s\n", PQgetvalue(r, 0, 0)[0] == 't' ? "added" : "updated",
                   a->corp_id);
            rc = 0;
        }
        PQclear(r);
    }
    PQfinish(c);
    goto done;
usage:
    rc = EXIT_USAGE;
done:
    explicit_bzero(secret_buf, sizeof secret_buf);
    explicit_bzero(contact_buf, sizeof contact_buf);
    explicit_bzero(token_buf, sizeof token_buf);
    explicit_bzero(aeskey_buf, sizeof aeskey_buf);
    return rc;
}

static int ent_set_enabled(const settings *s, const ent_args *a, int enabled)
{
    const char *p[2] = {a->corp_id, enabled ? "true" : "false"};
    PGconn *c;
    PGresult *r;
    int rc = 1;
    if (!a->corp_id)
        return cmd_usage_error("enterprise", "%s needs --corp-id ID",
                               enabled ? "enable" : "disable");
    c = cli_db_connect(s, "enterprise");
    if (!c)
        return 1;
    r = cli_db_exec(c, "enterprise", "UPDATE enterprises SET enabled = $2 WHERE corp_id = $1", 2,
                    p);
    if (r) {
        if (atoi(PQcmdTuples(r)) == 0) {
            fprintf(stderr, "orgsync enterprise: no enterprise %s\n", a->corp_id);
        } else {
            printf("%s %s\n", enabled ? "enabled" : "disabled", a->corp_id);
            rc = 0;
        }
        PQclear(r);
    }
    PQfinish(c);
    return rc;
}

static int ent_list(const settings *s)
{
    PGconn *c = cli_db_connect(s, "enterprise");
    PGresult *r;
    if (!c)
        return 1;
    /* Never selects a secret, only whether a contact-sync secret is set: the
     * listing is safe to paste anywhere. */
    r = cli_db_exec(c, "enterprise",
                    "SELECT corp_id, name, enabled, to_char(created_at AT TIME ZONE 'UTC',"
                    " 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), contact_secret IS NOT NULL, api_mode,"
                    " coalesce(api_mode_used, '-'), coalesce(array_to_string(fields_missing, ','),"
                    " '-'), coalesce(api_mode_reason, ''), callback_token IS NOT NULL,"
                    " member_source, coalesce(member_source_used, '-'),"
                    " coalesce(member_source_reason, '') FROM enterprises ORDER BY corp_id",
                    0, NULL);
    if (r) {
        printf("%-24s %-8s %-21s %-8s %-9s %-8s %-7s %-16s %-10s %-10s %s\n", "CORP_ID", "ENABLED",
               "CREATED", "CONTACT", "CALLBACK", "MODE", "USED", "FIELDS_MISSING", "MEMBERS",
               "MEM_USED", "NAME");
        for (int i = 0; i < PQntuples(r); i++) {
            printf("%-24s %-8s %-21s %-8s %-9s %-8s %-7s %-16s %-10s %-10s %s\n",
                   PQgetvalue(r, i, 0), PQgetvalue(r, i, 2)[0] == 't' ? "yes" : "no",
                   PQgetvalue(r, i, 3), PQgetvalue(r, i, 4)[0] == 't' ? "yes" : "no",
                   PQgetvalue(r, i, 9)[0] == 't' ? "yes" : "no", PQgetvalue(r, i, 5),
                   PQgetvalue(r, i, 6), PQgetvalue(r, i, 7), PQgetvalue(r, i, 10),
                   PQgetvalue(r, i, 11), PQgetvalue(r, i, 1));
            if (PQgetvalue(r, i, 8)[0])
                printf("  %s: %s\n", PQgetvalue(r, i, 0), PQgetvalue(r, i, 8));
            if (PQgetvalue(r, i, 12)[0])
                printf("  %s: members: %s\n", PQgetvalue(r, i, 0), PQgetvalue(r, i, 12));
        }
        PQclear(r);
    }
    PQfinish(c);
    return r ? 0 : 1;
}

void cmd_enterprise_usage(FILE *f)
{
    fprintf(
        f,
        "usage: orgsync [--config FILE] enterprise add --corp-id ID --secret-env VAR --name NAME\n"
        "                    [--contact-secret-env VAR] [--api-mode auto|legacy|modern]\n"
        "                    [--member-source user_list|export|auto]\n"
        "       orgsync enterprise set --corp-id ID [--secret-env VAR] [--name NAME]\n"
        "                    [--contact-secret-env VAR | --no-contact-secret]\n"
        "                    [--api-mode auto|legacy|modern]\n"
        "                    [--member-source user_list|export|auto]\n"
        "                    [--callback-token-env VAR --callback-aeskey-env VAR |\n"
        "                     --no-callback]\n"
        "       orgsync enterprise list\n"
        "       orgsync enterprise disable|enable --corp-id ID\n\n"
        "Manages the enterprises table. Secrets are read from the named environment\n"
        "variables, never from the command line: VAR holds the secret, or VAR_FILE\n"
        "names a file holding it, or $CREDENTIALS_DIRECTORY/VAR is one (systemd\n"
        "credentials); only one of the three may be set.\n\n"
        "  --corp-id ID               the enterprise (1-64 of A-Z a-z 0-9 _ -)\n"
        "  --secret-env VAR           variable holding the app secret\n"
        "  --contact-secret-env VAR   variable holding the contact-sync secret\n"
        "  --no-contact-secret        forget the contact-sync secret\n"
        "  --api-mode MODE            auto (default), legacy or modern\n"
        "  --callback-token-env VAR   variable holding the change callback's Token\n"
        "                             (1-128 of A-Z a-z 0-9)\n"
        "  --callback-aeskey-env VAR  variable holding its EncodingAESKey (43 of A-Z a-z 0-9)\n"
        "  --no-callback              forget both (callbacks are then refused)\n"
        "  --member-source SRC        where members come from: user_list (default: a\n"
        "                             user/list per department), export (one export/user\n"
        "                             job, its encrypted files downloaded), or auto (export\n"
        "                             above 100 departments)\n"
        "  --name NAME                display name (1-200 characters)\n\n"
        "Exit status: 0 done, 1 unknown enterprise or PostgreSQL failed, 2 usage error.\n");
}

int cmd_enterprise(const settings *s, int argc, char **argv)
{
    ent_args a = {0};
    const char *sub = argc > 1 ? argv[1] : "";
    int rc;
    if (strcmp(sub, "add") && strcmp(sub, "set") && strcmp(sub, "list") && strcmp(sub, "disable") &&
        strcmp(sub, "enable"))
        return cmd_usage_error("enterprise", "expected add, set, list, disable or enable, got '%s'",
                               sub);
    rc = parse_args(sub, argc, argv, &a);
    if (rc)
        return rc;
    if (!strcmp(sub, "add") || !strcmp(sub, "set"))
        return ent_write(s, &a, !strcmp(sub, "add"));
    if (!strcmp(sub, "list"))
        return a.corp_id || a.name || a.secret_env || a.contact_env || a.api_mode ||
                       a.member_source || a.no_contact || a.cb_token_env || a.no_callback
                   ? cmd_usage_error("enterprise", "list takes no options")
                   : ent_list(s);
    return ent_set_enabled(s, &a, !strcmp(sub, "enable"));
}
