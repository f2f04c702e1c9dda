/* What a corp id may be: 1-64 characters of A-Z, a-z, 0-9, '_' and '-' (the
 * enterprises table's CHECK says the same). One rule for the command line, the
 * API and the lookups. */
#ifndef ORGSYNC_CORP_ID_H
#define ORGSYNC_CORP_ID_H

int corp_id_valid(const char *s);

#endif
