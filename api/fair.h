/* SPDX-License-Identifier: MIT */
/* fair.h: who may hold an HTTP connection: head deadlines, idle reclaim, per-address limits, watch streams apart. */
#ifndef SM_FAIR_H
#define SM_FAIR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/*
** The rules, for a sidecar whose clients mostly share one address
** (loopback or a unix socket):
**
** - A new connection must deliver a complete request head within
**   head_ms; a keep-alive connection its next head within idle_ms of its
**   last answer. Trickling bytes does not extend either (unlike an
**   inactivity timeout, which a slow-loris client resets byte by byte).
** - Regular connections (everything but watch streams) are at most
**   max_conns. When a new one would pass that, the oldest connection that
**   is not being answered (waiting for its first head, or idle between
**   keep-alive requests, and with no unread input: a request sent but
**   not read yet is not lost) is closed to make room: a leaking pool's
**   idle sockets make way for a new request. Only when every slot is busy
**   answering is the new connection refused: it is kept (outside the
**   count, under the same head deadline) just long enough for its request
**   to get a 503 (fair_busy returns false).
** - A remote address (neither loopback nor a unix socket) holds at most
**   per_ip regular connections; beyond, its own oldest waiting one is
**   reclaimed, or the new one refused. Local clients share one address,
**   so for them the reclaim above is the protection instead.
** - A watch stream leaves the regular count (fair_watch): watch.c
**   bounds streams by watch_max_clients with its own 503.
**
** Closing means calling ops.kill(fd) (shutdown(2) in the daemon: the
** HTTP library sees the end of the stream and closes the connection
** itself, then calls fair_close). Every function takes the module's
** mutex; kill runs under it, so a record's fd is valid until fair_close.
** Thread-safe.
*/
struct fair;
struct fair_conn;

enum fair_reason {
	FAIR_RECLAIMED,         /* waiting connection closed to make room */
	FAIR_HEAD_TIMEOUT,      /* no complete head in time */
	FAIR_REFUSED,           /* no slot (counted by the caller; never a kill reason) */
	FAIR_REASON_MAX
};

struct fair_limits {
	size_t max_conns;       /* regular connections, >= 1 */
	size_t per_ip;          /* per remote address, >= 1 */
	int64_t head_ms;        /* a new connection's first head */
	int64_t idle_ms;        /* a keep-alive connection's next head */
	/* Close fd (called with the mutex held; must not call back). */
	void (*kill)(void *ctx, int fd, enum fair_reason why);
	/* Whether fd has bytes the HTTP library has not read yet: a request
	 * on its way in, not to be reclaimed. NULL: never. Mutex held. */
	bool (*has_input)(void *ctx, int fd);
	void *ctx;
};

/* Returns 0 and *ret, or -ENOMEM. The limits are copied. */
int fair_new(const struct fair_limits *l, struct fair **ret);
/* Every record must have been closed (fair_close) before. Accepts NULL. */
void fair_free(struct fair *f);

/*
** A connection was accepted on fd from sa (salen bytes; AF_UNIX, or a
** loopback address, is local). May reclaim another connection, or refuse
** this one (*ret_refused: its request is to be answered 503, see
** fair_busy; the caller counts and logs it). Returns 0 with *ret (freed
** by fair_close, refused or not), or -ENOMEM (the caller closes the
** connection).
*/
int fair_open(struct fair *f, int fd, const struct sockaddr *sa, socklen_t salen, int64_t now_ms,
	      struct fair_conn **ret, bool *ret_refused);
/* The connection is gone (its fd is about to be closed): forget it. NULL is ignored. */
void fair_close(struct fair *f, struct fair_conn *c);
/* A complete request head arrived: it is being answered, not reclaimable.
 * Returns false for a refused connection: answer 503 and close it. NULL
 * (an untracked connection) is admitted. */
bool fair_busy(struct fair *f, struct fair_conn *c);
/* The answer is done: idle until its next head (idle_ms), reclaimable. */
void fair_idle(struct fair *f, struct fair_conn *c, int64_t now_ms);
/* The answer became a watch stream: out of the regular count. */
void fair_watch(struct fair *f, struct fair_conn *c);

/*
** Close the connections whose head deadline has passed. Returns the
** earliest deadline left (INT64_MAX: none).
*/
int64_t fair_expire(struct fair *f, int64_t now_ms);

/* Snapshot of the counts, for /metrics and tests. */
struct fair_counts {
	size_t regular;         /* waiting, busy or idle */
	size_t waiting;         /* of which not yet answered (first head) */
	size_t idle;            /* of which idle keep-alive */
	size_t watch;           /* watch streams */
	size_t refused;         /* waiting for their 503 */
	size_t closing;         /* killed, not closed yet */
};
void fair_counts(struct fair *f, struct fair_counts *ret);

/* Whether sa is a loopback address or a unix socket. Pure. */
bool fair_is_local(const struct sockaddr *sa, socklen_t salen);

#endif
