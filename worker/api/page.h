/* The progress page served at GET / (worker/api/page/index.html, compiled in). */
#ifndef ORGSYNC_PAGE_H
#define ORGSYNC_PAGE_H

#include <stddef.h>

extern const char page_index_html[];
extern const size_t page_index_html_len;

#include "common/http_server.h"

/* Registers GET / (the progress page) on srv. 0 or a negative errno. */
int page_register(http_server *srv);

#endif
