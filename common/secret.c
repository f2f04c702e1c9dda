/* Secrets from NAME, NAME_FILE or $CREDENTIALS_DIRECTORY/NAME (see secret.h). */
#include "common/secret.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int secret_name_valid(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > 100 || (name[0] >= '0' && name[0] <= '9'))
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '_'))
            return 0;
    }
    return 1;
}

int secret_read_file(const char *what, const char *path, char *out, size_t cap, char *err,
                     size_t errlen)
{
    /* Room for the longest value, a "\r\n" after it, and one byte more to tell
     * a file that is too long. */
    size_t room = cap + 3, len = 0;
    char *buf;
    struct stat st;
    int fd, rc = -1;

    out[0] = '\0';
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot read %s: %s", what, path, strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "%s: cannot read %s: it is a directory", what, path);
        close(fd);
        return -1;
    }
    buf = malloc(room);
    if (!buf) {
        snprintf(err, errlen, "%s: out of memory reading %s", what, path);
        close(fd);
        return -1;
    }
    while (len < room) {
        ssize_t n = read(fd, buf + len, room - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(err, errlen, "%s: cannot read %s: %s", what, path, strerror(errno));
            goto done;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
        len--;
    if (len == 0) {
        snprintf(err, errlen, "%s: %s is empty", what, path);
        goto done;
    }
    if (len >= cap) {
        snprintf(err, errlen, "%s: %s holds more than %zu characters", what, path, cap - 1);
        goto done;
    }
    if (memchr(buf, '\0', len) || memchr(buf, '\n', len) || memchr(buf, '\r', len)) {
        snprintf(err, errlen, "%s: %s holds a NUL byte or more than one line", what, path);
        goto done;
    }
    memcpy(out, buf, len);
    out[len] = '\0';
    rc = 0;
done:
    explicit_bzero(buf, room);
    free(buf);
    close(fd);
    return rc;
}

static void set_from(char *from, size_t fromlen, const char *fmt, const char *a, const char *b)
{
    if (from && fromlen)
        snprintf(from, fromlen, fmt, a, b);
}

int secret_lookup(const char *name, secret_get_fn get, void *arg, const char *creds_dir, char *out,
                  size_t cap, char *from, size_t fromlen, char *err, size_t errlen)
{
    char file_name[128], cred[4200];
    const char *v, *path;
    int have_cred = 0;
    struct stat st;

    out[0] = '\0';
    set_from(from, fromlen, "%s%s", "", "");
    if (!secret_name_valid(name)) {
        snprintf(err, errlen, "%.100s: not a valid variable name", name ? name : "(null)");
        return -1;
    }
    snprintf(file_name, sizeof file_name, "%s_FILE", name);
    v = get(name, arg);
    if (v && !*v)
        v = NULL;
    path = get(file_name, arg);
    if (path && !*path)
        path = NULL;
    if (creds_dir && *creds_dir) {
        int n = snprintf(cred, sizeof cred, "%s/%s", creds_dir, name);
        if (n < 0 || (size_t)n >= sizeof cred) {
            snprintf(err, errlen, "%s: CREDENTIALS_DIRECTORY is too long", name);
            return -1;
        }
        if (stat(cred, &st) == 0) {
            have_cred = 1;
        } else if (errno != ENOENT && errno != ENOTDIR) {
            snprintf(err, errlen, "%s: cannot read the credential %s: %s", name, cred,
                     strerror(errno));
            return -1;
        }
    }
    if (v && path) {
        snprintf(err, errlen, "%s: both %s and %s are set; give only one", name, name, file_name);
        return -1;
    }
    if ((v || path) && have_cred) {
        snprintf(err, errlen, "%s: set by %s and by the credential %s; give only one", name,
                 v ? name : file_name, cred);
        return -1;
    }
    if (v) {
        if (strlen(v) >= cap) {
            snprintf(err, errlen, "%s: longer than %zu characters (the value is not shown)", name,
                     cap - 1);
            return -1;
        }
        memcpy(out, v, strlen(v) + 1);
        return 1;
    }
    if (path) {
        if (secret_read_file(file_name, path, out, cap, err, errlen))
            return -1;
        set_from(from, fromlen, " (from %s %.200s)", file_name, path);
        return 1;
    }
    if (have_cred) {
        char what[160];
        snprintf(what, sizeof what, "%s (credential)", name);
        if (secret_read_file(what, cred, out, cap, err, errlen))
            return -1;
        set_from(from, fromlen, " (from the credential %.200s%s)", cred, "");
        return 1;
    }
    return 0;
}
