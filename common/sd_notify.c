/* systemd notifications over $NOTIFY_SOCKET, by hand (see sd_notify.h). */
#include "common/sd_notify.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

int sd_notify_addr(const char *name, struct sockaddr_un *sa, size_t *len)
{
    size_t n = name ? strlen(name) : 0;

    if (n < 2 || (name[0] != '/' && name[0] != '@') || n > sizeof(sa->sun_path))
        return -EINVAL;
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    memcpy(sa->sun_path, name, n);
    if (name[0] == '@') {
        /* Abstract: the name is the bytes after a leading NUL, no terminator. */
        sa->sun_path[0] = '\0';
        *len = offsetof(struct sockaddr_un, sun_path) + n;
    } else {
        if (n == sizeof(sa->sun_path))
            return -EINVAL; /* no room for the terminating NUL */
        *len = offsetof(struct sockaddr_un, sun_path) + n + 1;
    }
    return 0;
}

int sd_notify_send(const char *msg)
{
    const char *name = getenv("NOTIFY_SOCKET");
    struct sockaddr_un sa;
    size_t salen;
    ssize_t n;
    int fd, rc;

    if (!name || !*name)
        return 0;
    rc = sd_notify_addr(name, &sa, &salen);
    if (rc)
        return rc;
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    /* One datagram per message: the manager reads it whole or not at all. */
    do {
        n = sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sa, (socklen_t)salen);
    } while (n < 0 && errno == EINTR);
    rc = n < 0 ? -errno : 1;
    close(fd);
    return rc;
}

int sd_notify_sendf(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    return sd_notify_send(buf);
}

static int parse_u64(const char *v, uint64_t *out)
{
    char *end;
    unsigned long long x;

    if (!v || *v < '0' || *v > '9')
        return -1;
    errno = 0;
    x = strtoull(v, &end, 10);
    if (errno || *end)
        return -1;
    *out = x;
    return 0;
}

uint64_t sd_watchdog_usec(void)
{
    uint64_t us = 0, pid;
    const char *p = getenv("WATCHDOG_PID");

    if (parse_u64(getenv("WATCHDOG_USEC"), &us) || us == 0)
        return 0;
    /* Set for another process (we were exec'ed by a wrapper that got it). */
    if (p && *p && (parse_u64(p, &pid) || pid != (uint64_t)getpid()))
        return 0;
    return us;
}

void sd_notify_forget(void)
{
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
}
