/* SPDX-License-Identifier: MIT */
/* http.h: the local HTTP/JSON API on libmicrohttpd. */
#ifndef SM_HTTP_H
#define SM_HTTP_H

#include <stddef.h>

#include "../common/conf.h"
#include "../mirror/core.h"
#include "../mirror/index.h"
#include "../mirror/rejects.h"

struct api;

struct api_deps {
	const struct conf *conf;
	struct index *ix;
	struct core *core;
	struct rejects *rejects;
	struct stale *stale;
};

/*
** Listen on conf->http_listen (TCP HOST:PORT, port 0 = any free port, or
** unix:/path) and serve. Logs "http listening on HOST:PORT" (or the
** socket path). Returns 0 or -errno with the reason in err.
*/
int api_start(const struct api_deps *d, struct api **ret, char *err, size_t errlen);
void api_stop(struct api *a);   /* accepts NULL */

#endif
