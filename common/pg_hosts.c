/* Host lists of libpq connection strings: parsing and rebuilding with the
 * addresses resolved off the loop (see pg_hosts.h). */
#include "common/pg_hosts.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(char *err, size_t errlen, const char *msg)
{
    if (err && errlen)
        snprintf(err, errlen, "%s", msg);
    return -1;
}

static int is_numeric(const char *h)
{
    unsigned char buf[sizeof(struct in6_addr)];

    return inet_pton(AF_INET, h, buf) == 1 || inet_pton(AF_INET6, h, buf) == 1;
}

/* Splits s at commas into up to max items of itemlen bytes each; the count, or
 * -1 when too many or one is too long. */
static int split(const char *s, char *items, size_t itemlen, int max)
{
    int n = 0;

    for (;;) {
        const char *c = strchr(s, ',');
        size_t len = c ? (size_t)(c - s) : strlen(s);
        if (n == max || len >= itemlen)
            return -1;
        memcpy(items + (size_t)n * itemlen, s, len);
        items[(size_t)n * itemlen + len] = '\0';
        n++;
        if (!c)
            return n;
        s = c + 1;
    }
}

int pg_hosts_parse(const char *host, const char *port, pg_hosts *h, char *err, size_t errlen)
{
    char ports[PG_HOSTS_MAX][16];
    char names[PG_HOSTS_MAX][256];
    int n, np = 0, i;

    if (!h)
        return fail(err, errlen, "no place to store the result");
    memset(h, 0, sizeof(*h));
    n = split(host ? host : "", &names[0][0], sizeof(names[0]), PG_HOSTS_MAX);
    if (n < 0)
        return fail(err, errlen, "host: more than 16 hosts, or a host name longer than 255");
    if (port && *port) {
        np = split(port, &ports[0][0], sizeof(ports[0]), PG_HOSTS_MAX);
        if (np < 0)
            return fail(err, errlen, "port: more than 16 ports, or one too long");
        if (np != 1 && np != n)
            return fail(err, errlen, "port: give one port, or one per host");
    }
    h->n = n;
    h->port_list = np > 1;
    for (i = 0; i < n; i++) {
        pg_host_entry *e = &h->e[i];
        memcpy(e->name, names[i], sizeof(e->name));
        if (h->port_list)
            memcpy(e->port, ports[i], sizeof(e->port));
        if (!e->name[0] || e->name[0] == '/' || e->name[0] == '@')
            e->kind = PGH_SOCKET;
        else if (is_numeric(e->name))
            e->kind = PGH_NUMERIC;
        else {
            e->kind = PGH_NAME;
            h->nnames++;
        }
    }
    return 0;
}

int pg_hosts_add_addr(pg_host_entry *e, const struct sockaddr *sa)
{
    char a[PG_ADDR_LEN];
    int i;

    if (!e || !sa || e->kind != PGH_NAME || e->naddrs >= PG_ADDRS_MAX)
        return 0;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, a, sizeof(a));
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, a,
                  sizeof(a));
    else
        return 0;
    for (i = 0; i < e->naddrs; i++)
        if (strcmp(e->addrs[i], a) == 0)
            return 0;
    memcpy(e->addrs[e->naddrs++], a, sizeof(a));
    return 1;
}

/* Appends ",item" (or "item" first) to *buf. */
static int append(char **buf, size_t *len, size_t *cap, const char *item, int first)
{
    size_t need = strlen(item) + 2;

    if (*len + need > *cap) {
        size_t ncap = (*cap + need) * 2;
        char *nb = realloc(*buf, ncap);
        if (!nb)
            return -1;
        *buf = nb;
        *cap = ncap;
    }
    if (!first)
        (*buf)[(*len)++] = ',';
    memcpy(*buf + *len, item, strlen(item));
    *len += strlen(item);
    (*buf)[*len] = '\0';
    return 0;
}

int pg_hosts_build(const pg_hosts *h, char **host, char **hostaddr, char **port, char *err,
                   size_t errlen)
{
    char *b[3] = {NULL, NULL, NULL};
    size_t len[3] = {0, 0, 0}, cap[3] = {0, 0, 0};
    int i, j, k, count = 0;

    if (!h || !host || !hostaddr || !port)
        return fail(err, errlen, "no place to store the result");
    *host = *hostaddr = *port = NULL;
    for (i = 0; i < h->n; i++) {
        const pg_host_entry *e = &h->e[i];
        int naddr = e->kind == PGH_NAME ? e->naddrs : 1;
        for (j = 0; j < naddr; j++) {
            const char *v[3];
            v[0] = e->name;
            v[1] = e->kind == PGH_NAME ? e->addrs[j] : e->kind == PGH_NUMERIC ? e->name : "";
            v[2] = e->port;
            for (k = 0; k < 3; k++)
                if (append(&b[k], &len[k], &cap[k], v[k], count == 0) < 0)
                    goto nomem;
            count++;
        }
    }
    if (count == 0) {
        for (k = 0; k < 3; k++)
            free(b[k]);
        return fail(err, errlen, "no host of the list resolved to an address");
    }
    *host = b[0];
    *hostaddr = b[1];
    if (h->port_list)
        *port = b[2];
    else
        free(b[2]);
    return 0;
nomem:
    for (k = 0; k < 3; k++)
        free(b[k]);
    return fail(err, errlen, "out of memory");
}
