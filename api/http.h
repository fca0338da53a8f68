/* SPDX-License-Identifier: MIT */
/* http.h: the local HTTP/JSON API on libmicrohttpd. */
#ifndef SM_HTTP_H
#define SM_HTTP_H

#include <stddef.h>

#include "common/conf.h"
#include "mirror/mirror.h"
#include "mirror/state/index.h"
#include "mirror/state/rejects.h"
#include "mirror/liveness/stale.h"
#include "mirror/state/intents.h"

struct api;

/*
** What the API reads; it owns none of it and everything must outlive
** api_stop(). core, rejects and stale may be NULL (unit and integration
** harnesses): the endpoints that need them then answer as if not ready /
** empty.
*/
struct api_deps {
	const struct conf *conf;
	struct index *ix;
	struct mirror *core;
	struct rejects *rejects;
	struct stale *stale;
	struct watch *watch;      /* /v1/watch streams; NULL: answered 503 */
	struct intents *intents;  /* the intent engine; NULL: intents are off (403) */
	/* Set: the API starts "loading" (api_start while rows_load fills ix):
	 * until api_attach() it reads no dependency but conf and, for point
	 * reads, this store (rows_get); the rest answers 503 with Retry-After. */
	struct store *loading_from;
};

/*
** Listen on conf->http_listen (TCP HOST:PORT, "[v6addr]:PORT", port 0 = any
** free port, or unix:/path) and serve on conf->http_threads threads.
** Logs "http listening on HOST:PORT" with the real port (or
** "http listening on unix:/path"). A stale unix socket file is replaced; a
** socket a live process answers on is not (-EADDRINUSE). When
** conf->token_file is set the token is read once, here.
**
** Limits (see http.c and fair.h): conf->http_max_conns regular
** connections, the oldest waiting one reclaimed to admit a new one;
** http_per_ip_conns per remote address (loopback and unix sockets are
** exempt); a first request head within 5 s (or http_timeout_ms when
** shorter), a keep-alive connection's next one within http_timeout_ms;
** watch streams apart, bounded by watch.c. Bounds derived from
** store.max_topic_len: a request-target longer than max(8 KiB,
** 6 x max_topic_len + 1 KiB) gets 414 with a JSON body; request line +
** headers beyond the per-connection memory (twice that + 16 KiB,
** 32 KiB..1 MiB) get libmicrohttpd's own 414 or 431. Request bodies: per
** route (the route table in http.c); a route without one answers 413 to
** a body. Raises RLIMIT_NOFILE's soft limit when the connection limits
** need more descriptors.
**
** Returns 0 and *ret, or -errno with the reason in err (errlen bytes,
** without an "http:" prefix: the caller adds its context).
** Call from one thread; the handlers run on libmicrohttpd's threads.
*/
int api_start(const struct api_deps *d, struct api **ret, char *err, size_t errlen);
/*
** End the loading phase of an API started with d->loading_from: ix is
** loaded and the others in d (core, rejects, stale, watch, intents) are
** running; from here every endpoint serves from them. Call once, from the
** thread that called api_start.
*/
void api_attach(struct api *a, const struct api_deps *d);
/* Stop serving, close connections, remove a unix socket. Accepts NULL. */
void api_stop(struct api *a);

#endif
