/* The host list of a libpq connection string, resolved off the loop.
 *
 * libpq resolves host names itself with a blocking getaddrinfo() inside
 * PQconnectStart/PQconnectPoll, for every host of a comma-separated list. The
 * pool (common/pg.c) resolves each name on libuv's thread pool instead and hands
 * libpq host= (kept: TLS verification and authentication use it), hostaddr= and,
 * when the DSN gives one port per host, port=, one entry per address:
 *
 *   host=db1,db2 port=5432,5433  (db1 -> 10.0.0.1, 10.0.0.2; db2 -> 10.0.0.3)
 *   => host=db1,db1,db2 hostaddr=10.0.0.1,10.0.0.2,10.0.0.3 port=5432,5432,5433
 *
 * libpq then tries them in order, as it would have (target_session_attrs=
 * read-write makes it skip a server that is in recovery or read-only). A name
 * that does not resolve is left out (libpq would skip it too); a socket
 * directory or an IP address needs no lookup. Pure code, no I/O. */
#ifndef ORGSYNC_PG_HOSTS_H
#define ORGSYNC_PG_HOSTS_H

#include <stddef.h>
#include <sys/socket.h>

#define PG_HOSTS_MAX 16 /* hosts in one list */
#define PG_ADDRS_MAX 8  /* addresses kept per name */
#define PG_ADDR_LEN 46  /* INET6_ADDRSTRLEN */

typedef enum { PGH_NAME, PGH_NUMERIC, PGH_SOCKET } pg_host_kind;

typedef struct pg_host_entry {
    char name[256]; /* as written; "" = libpq's default (a socket) */
    char port[16];  /* this entry's port when the DSN lists one per host, else "" */
    pg_host_kind kind;
    int naddrs; /* PGH_NAME: addresses found so far */
    char addrs[PG_ADDRS_MAX][PG_ADDR_LEN];
} pg_host_entry;

typedef struct pg_hosts {
    int n;
    int nnames;    /* entries of kind PGH_NAME */
    int port_list; /* the DSN gave one port per host (so port= must be rebuilt) */
    pg_host_entry e[PG_HOSTS_MAX];
} pg_hosts;

/* host, port: the DSN's values (NULL or "" when absent). 0, or -1 with err
 * (the count of ports does not match the hosts, a list too long, ...). */
int pg_hosts_parse(const char *host, const char *port, pg_hosts *out, char *err, size_t errlen);

/* Adds one resolved address to a PGH_NAME entry (duplicates and non-IP families
 * ignored; past PG_ADDRS_MAX dropped). 1 when added, 0 when not. */
int pg_hosts_add_addr(pg_host_entry *e, const struct sockaddr *sa);

/* The lists for libpq (malloc'd, the caller frees each). *port is NULL when the
 * DSN's own port value is to be kept. 0, or -1 with err when no entry is left
 * (every name failed to resolve) or out of memory. */
int pg_hosts_build(const pg_hosts *h, char **host, char **hostaddr, char **port, char *err,
                   size_t errlen);

#endif
