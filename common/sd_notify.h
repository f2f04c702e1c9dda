/* The systemd notification protocol, written by hand (no libsystemd): one
 * datagram of newline-separated KEY=VALUE lines to the AF_UNIX socket named by
 * $NOTIFY_SOCKET (an abstract socket when the name starts with '@').
 *
 *   sd_notify_send("READY=1\nSTATUS=2/2 workers ready");
 *   uint64_t us = sd_watchdog_usec();   // 0: no watchdog asked for
 *
 * Outside systemd (no NOTIFY_SOCKET) every call is a no-op that returns 0, so
 * `orgsync serve` behaves the same under any other supervisor. The service
 * manager only listens to the main process (NotifyAccess=main), so only the
 * supervisor calls these; workers drop the variables (sd_notify_forget). */
#ifndef ORGSYNC_SD_NOTIFY_H
#define ORGSYNC_SD_NOTIFY_H

#include <stddef.h>
#include <stdint.h>

/* Sends msg as one datagram (non-blocking). 1 sent, 0 no NOTIFY_SOCKET, or a
 * negative errno (bad socket name, send failure: the caller logs it once). */
int sd_notify_send(const char *msg);

/* printf-style sd_notify_send; the message is cut at 1024 bytes. */
int sd_notify_sendf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The watchdog interval systemd asked for ($WATCHDOG_USEC, for this pid when
 * $WATCHDOG_PID is set), in microseconds; 0 when none or malformed. Ping at
 * half of it. */
uint64_t sd_watchdog_usec(void);

/* Parses a NOTIFY_SOCKET value into a sockaddr_un (sun_path; '@' becomes the
 * leading NUL of an abstract name). Writes the address length to *len.
 * 0, or -EINVAL (empty, relative path, too long). For tests too. */
struct sockaddr_un;
int sd_notify_addr(const char *name, struct sockaddr_un *sa, size_t *len);

/* Unsets NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID (in a forked worker:
 * only the main process speaks to the service manager). */
void sd_notify_forget(void);

#endif
