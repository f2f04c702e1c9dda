/* systemd notifications by hand (common/sd_notify.h): the NOTIFY_SOCKET
 * address forms, one datagram per message to a real socket, the watchdog
 * variables, and no-ops outside systemd. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "common/sd_notify.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static void test_addr_forms(void **state)
{
    struct sockaddr_un sa;
    size_t len;
    char longname[200];
    (void)state;
    assert_int_equal(sd_notify_addr("/run/systemd/notify", &sa, &len), 0);
    assert_string_equal(sa.sun_path, "/run/systemd/notify");
    assert_int_equal(len,
                     offsetof(struct sockaddr_un, sun_path) + strlen("/run/systemd/notify") + 1);
    /* abstract: a leading NUL, no terminator counted */
    assert_int_equal(sd_notify_addr("@x/y", &sa, &len), 0);
    assert_int_equal(sa.sun_path[0], '\0');
    assert_memory_equal(sa.sun_path + 1, "x/y", 3);
    assert_int_equal(len, offsetof(struct sockaddr_un, sun_path) + 4);
    /* relative, empty, a bare '@', too long */
    assert_int_equal(sd_notify_addr("run/notify", &sa, &len), -EINVAL);
    assert_int_equal(sd_notify_addr("", &sa, &len), -EINVAL);
    assert_int_equal(sd_notify_addr("@", &sa, &len), -EINVAL);
    assert_int_equal(sd_notify_addr(NULL, &sa, &len), -EINVAL);
    memset(longname, 'a', sizeof(longname) - 1);
    longname[0] = '/';
    longname[sizeof(longname) - 1] = '\0';
    assert_int_equal(sd_notify_addr(longname, &sa, &len), -EINVAL);
}

static void test_send_abstract(void **state)
{
    struct sockaddr_un sa;
    size_t len;
    char name[64], buf[256];
    ssize_t n;
    int fd;
    (void)state;
    snprintf(name, sizeof(name), "@orgsync-unit-%d", (int)getpid());
    assert_int_equal(sd_notify_addr(name, &sa, &len), 0);
    fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, (socklen_t)len), 0);
    setenv("NOTIFY_SOCKET", name, 1);
    assert_int_equal(sd_notify_send("READY=1\nSTATUS=all good"), 1);
    assert_int_equal(sd_notify_sendf("STATUS=%d/%d", 2, 3), 1);
    n = recv(fd, buf, sizeof(buf) - 1, 0);
    assert_int_equal(n, strlen("READY=1\nSTATUS=all good"));
    buf[n] = '\0';
    assert_string_equal(buf, "READY=1\nSTATUS=all good");
    n = recv(fd, buf, sizeof(buf) - 1, 0);
    buf[n > 0 ? n : 0] = '\0';
    assert_string_equal(buf, "STATUS=2/3");
    close(fd);
    /* nobody listening any more: an error, not a crash or a block */
    assert_true(sd_notify_send("WATCHDOG=1") < 0);
    unsetenv("NOTIFY_SOCKET");
    assert_int_equal(sd_notify_send("READY=1"), 0); /* outside systemd: nothing */
    setenv("NOTIFY_SOCKET", "relative", 1);
    assert_int_equal(sd_notify_send("READY=1"), -EINVAL);
    unsetenv("NOTIFY_SOCKET");
}

static void test_watchdog_usec(void **state)
{
    char pid[32];
    (void)state;
    unsetenv("WATCHDOG_PID");
    unsetenv("WATCHDOG_USEC");
    assert_int_equal(sd_watchdog_usec(), 0);
    setenv("WATCHDOG_USEC", "30000000", 1);
    assert_int_equal(sd_watchdog_usec(), 30000000);
    snprintf(pid, sizeof(pid), "%d", (int)getpid());
    setenv("WATCHDOG_PID", pid, 1);
    assert_int_equal(sd_watchdog_usec(), 30000000);
    setenv("WATCHDOG_PID", "1", 1); /* for another process */
    assert_int_equal(sd_watchdog_usec(), 0);
    unsetenv("WATCHDOG_PID");
    setenv("WATCHDOG_USEC", "30s", 1);
    assert_int_equal(sd_watchdog_usec(), 0);
    setenv("WATCHDOG_USEC", "0", 1);
    assert_int_equal(sd_watchdog_usec(), 0);
    setenv("WATCHDOG_USEC", "-5", 1);
    assert_int_equal(sd_watchdog_usec(), 0);
    setenv("NOTIFY_SOCKET", "@x", 1);
    setenv("WATCHDOG_USEC", "1000", 1);
    sd_notify_forget();
    assert_null(getenv("NOTIFY_SOCKET"));
    assert_null(getenv("WATCHDOG_USEC"));
    assert_int_equal(sd_watchdog_usec(), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_addr_forms),
        cmocka_unit_test(test_send_abstract),
        cmocka_unit_test(test_watchdog_usec),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
