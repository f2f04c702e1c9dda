/* The schema migrations compiled into the binary from sql/NNN_*.sql. */
#ifndef ORGSYNC_MIGRATIONS_H
#define ORGSYNC_MIGRATIONS_H

typedef struct migration {
    int version;
    const char *name;
    const char *sql;
} migration;

/* In version order, ended by an entry with version 0. */
extern const migration migrations[];

#endif
