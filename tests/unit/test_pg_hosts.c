/* pg_hosts: a libpq host list split, and rebuilt with the addresses resolved off
 * the loop (host kept, hostaddr added, port expanded per address). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include "common/pg_hosts.h"

static void add4(pg_host_entry *e, const char *ip, int want)
{
    struct sockaddr_in sa;

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    assert_int_equal(inet_pton(AF_INET, ip, &sa.sin_addr), 1);
    assert_int_equal(pg_hosts_add_addr(e, (struct sockaddr *)&sa), want);
}

static void add6(pg_host_entry *e, const char *ip)
{
    struct sockaddr_in6 sa;

    memset(&sa, 0, sizeof(sa));
    sa.sin6_family = AF_INET6;
    assert_int_equal(inet_pton(AF_INET6, ip, &sa.sin6_addr), 1);
    assert_int_equal(pg_hosts_add_addr(e, (struct sockaddr *)&sa), 1);
}

static void build(const pg_hosts *h, const char *host, const char *hostaddr, const char *port)
{
    char *bh, *ba, *bp, err[128];

    if (pg_hosts_build(h, &bh, &ba, &bp, err, sizeof(err)) != 0)
        fail_msg("build failed: %s", err);
    assert_string_equal(bh, host);
    assert_string_equal(ba, hostaddr);
    if (port)
        assert_string_equal(bp ? bp : "(null)", port);
    else
        assert_null(bp);
    free(bh);
    free(ba);
    free(bp);
}

static void test_parse_kinds(void **state)
{
    pg_hosts h;
    char err[128];

    (void)state;
    assert_int_equal(pg_hosts_parse("db1.example,10.0.0.9,/run/postgresql,::1,db2", "5432", &h, err,
                                    sizeof(err)),
                     0);
    assert_int_equal(h.n, 5);
    assert_int_equal(h.nnames, 2);
    assert_int_equal(h.port_list, 0);
    assert_int_equal(h.e[0].kind, PGH_NAME);
    assert_string_equal(h.e[0].name, "db1.example");
    assert_int_equal(h.e[1].kind, PGH_NUMERIC);
    assert_int_equal(h.e[2].kind, PGH_SOCKET);
    assert_int_equal(h.e[3].kind, PGH_NUMERIC);
    assert_int_equal(h.e[4].kind, PGH_NAME);
    assert_string_equal(h.e[0].port, "");
    /* One port for the whole list: the DSN's port is kept (port NULL). */
    add4(&h.e[0], "10.0.0.1", 1);
    add4(&h.e[4], "10.0.0.2", 1);
    build(&h, "db1.example,10.0.0.9,/run/postgresql,::1,db2", "10.0.0.1,10.0.0.9,,::1,10.0.0.2",
          NULL);
}

/* A name with several addresses is repeated once per address, its port with it. */
static void test_expand_ports(void **state)
{
    pg_hosts h;
    char err[128];

    (void)state;
    assert_int_equal(pg_hosts_parse("a,b", "5432,5433", &h, err, sizeof(err)), 0);
    assert_int_equal(h.port_list, 1);
    add4(&h.e[0], "10.0.0.1", 1);
    add4(&h.e[0], "10.0.0.1", 0); /* a duplicate (one per socket type) */
    add6(&h.e[0], "fd00::1");
    add4(&h.e[1], "10.0.0.3", 1);
    build(&h, "a,a,b", "10.0.0.1,fd00::1,10.0.0.3", "5432,5432,5433");
}

/* A name that did not resolve is left out; none left is an error. */
static void test_unresolved(void **state)
{
    pg_hosts h;
    char err[128], *bh = NULL, *ba = NULL, *bp = NULL;

    (void)state;
    assert_int_equal(pg_hosts_parse("gone,b", "1,2", &h, err, sizeof(err)), 0);
    add4(&h.e[1], "10.0.0.3", 1);
    build(&h, "b", "10.0.0.3", "2");
    assert_int_equal(pg_hosts_parse("gone,gone2", NULL, &h, err, sizeof(err)), 0);
    assert_int_equal(pg_hosts_build(&h, &bh, &ba, &bp, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "no host of the list resolved"));
    assert_null(bh);
    assert_null(ba);
    assert_null(bp);
}

static void test_addr_limits(void **state)
{
    pg_hosts h;
    char err[128], ip[32];
    int i;

    (void)state;
    assert_int_equal(pg_hosts_parse("many", "", &h, err, sizeof(err)), 0);
    for (i = 0; i < PG_ADDRS_MAX; i++) {
        snprintf(ip, sizeof(ip), "10.1.0.%d", i + 1);
        add4(&h.e[0], ip, 1);
    }
    add4(&h.e[0], "10.1.1.1", 0);
    assert_int_equal(h.e[0].naddrs, PG_ADDRS_MAX);
    /* Addresses are only added to names. */
    assert_int_equal(pg_hosts_parse("10.0.0.1", "", &h, err, sizeof(err)), 0);
    add4(&h.e[0], "10.0.0.2", 0);
}

static void test_parse_errors(void **state)
{
    pg_hosts h;
    char err[128];

    (void)state;
    assert_int_equal(pg_hosts_parse("a,b,c", "1,2", &h, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "one per host"));
    assert_int_equal(
        pg_hosts_parse("a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q", NULL, &h, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "more than 16 hosts"));
    assert_int_equal(pg_hosts_parse("a", "123456789012345678", &h, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "port"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_kinds),  cmocka_unit_test(test_expand_ports),
        cmocka_unit_test(test_unresolved),   cmocka_unit_test(test_addr_limits),
        cmocka_unit_test(test_parse_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
