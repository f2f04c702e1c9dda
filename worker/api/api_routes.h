/* The route modules of worker/api/: each registers its routes on the api's
 * server. Only api.c calls these. 0 or a negative errno. */
#ifndef ORGSYNC_API_ROUTES_H
#define ORGSYNC_API_ROUTES_H

#include "worker/api/api_shared.h"

int api_callbacks_register(api *a);
int api_health_register(api *a);
int api_hosts_register(api *a);
int api_runs_register(api *a);
int api_users_register(api *a);

#endif
