/* Secrets from the environment, from files, or from systemd credentials.
 *
 * A secret named NAME (ORGSYNC_ADMIN_TOKEN, or the variable an `orgsync
 * enterprise --secret-env VAR` names) is taken from exactly one of:
 *
 *   1. NAME         the value itself (an empty value counts as unset);
 *   2. NAME_FILE    the path of a file holding the value;
 *   3. $CREDENTIALS_DIRECTORY/NAME   a file that systemd's LoadCredential= (or
 *                   SetCredential=, LoadCredentialEncrypted=) put there.
 *
 * A file's trailing line breaks (\n or \r\n) are dropped; what is left must be
 * non-empty, on one line, without NUL bytes, and fit the setting. Two sources at
 * once (NAME and NAME_FILE, or either and a credential file) is an error rather
 * than a silent choice, so a stale value cannot hide. Errors name the setting
 * and the path and never contain the value. Reading is blocking: call this at
 * start-up (settings, one-shot commands), never on a loop. */
#ifndef ORGSYNC_SECRET_H
#define ORGSYNC_SECRET_H

#include <stddef.h>

typedef const char *(*secret_get_fn)(const char *name, void *arg);

/* Looks NAME and NAME_FILE up through get(arg), and the credential file in
 * creds_dir (NULL or "": none). 1 and the value in out (cap bytes with the NUL)
 * when found; 0 when no source sets it (out is ""); -1 with err filled. from
 * (may be NULL) receives where the value came from, for later error messages:
 * "" for NAME itself, else " (from NAME_FILE /path)" or " (from the credential
 * /path)". */
int secret_lookup(const char *name, secret_get_fn get, void *arg, const char *creds_dir, char *out,
                  size_t cap, char *from, size_t fromlen, char *err, size_t errlen);

/* Reads one secret file as described above. what names the source in errors
 * ("ORGSYNC_ADMIN_TOKEN_FILE"). 0, or -1 with err filled. */
int secret_read_file(const char *what, const char *path, char *out, size_t cap, char *err,
                     size_t errlen);

/* 1 if name can name a secret: 1-100 of A-Z a-z 0-9 _, not starting with a digit
 * (an environment variable name that is also a safe credential file name). */
int secret_name_valid(const char *name);

#endif
