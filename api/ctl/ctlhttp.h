/* SPDX-License-Identifier: MIT */
/* ctlhttp.h: statemirrorctl's side of the HTTP API: GETs, the intent POST and the /v1/watch event stream, over libcurl. */
#ifndef SM_CTLHTTP_H
#define SM_CTLHTTP_H

#include <stdbool.h>
#include <stddef.h>

#include "common/buf.h"

/* Largest answer body kept (a /v1/keys page of 10000 big records is less). */
#define CTL_MAX_BODY (256u << 20)
/* Longest SSE line kept: one record of the largest payload the daemon takes,
 * base64-encoded, with its metadata. A longer line ends the stream. */
#define CTL_MAX_LINE (4u << 20)

struct ctl_conn_opts {
	const char *url;        /* "http://HOST:PORT" (a trailing '/' is fine); NULL: 127.0.0.1:8080 */
	const char *socket;     /* unix socket path, or NULL for TCP */
	const char *token;      /* bearer token, or NULL */
	long timeout_ms;        /* for a whole GET, and to connect; 0: 10 s */
};

/* One connection context (keeps the TCP connection alive between GETs).
 * Not thread-safe: one thread uses one ctl_conn. */
struct ctl_conn;

/* What a transport-level failure was. */
enum ctl_fail {
	CTL_FAIL_NONE = 0,
	CTL_FAIL_UNREACHABLE,   /* cannot connect, refused, reset, nothing answered */
	CTL_FAIL_PROTOCOL,      /* an answer that is not HTTP, or too big */
	CTL_FAIL_MAX
};

struct ctl_reply {
	long status;            /* HTTP status */
	int synced;             /* Statemirror-Synced: 1 true, 0 false, -1 absent */
	struct buf body;        /* owned; NUL-terminated */
};

/* Returns 0, -ENOMEM, or -EINVAL (the options are unusable: err says why).
 * The strings in o are copied. */
int ctl_conn_new(const struct ctl_conn_opts *o, struct ctl_conn **ret_conn, char *err, size_t errlen);
void ctl_conn_free(struct ctl_conn *c);  /* accepts NULL */

/* The reason of the last failure of this connection (never NULL). */
const char *ctl_conn_error(const struct ctl_conn *c);
enum ctl_fail ctl_conn_fail(const struct ctl_conn *c);

/*
** GET path (which starts with '/', already percent-encoded). On 0 *ret
** holds the answer, whatever its status; free it with ctl_reply_free().
** Returns -EIO on a transport failure (ctl_conn_fail/_error say which),
** -ENOMEM.
*/
int ctl_get(struct ctl_conn *c, const char *path, struct ctl_reply *ret);
void ctl_reply_free(struct ctl_reply *r);

/*
** POST json (NUL-terminated, sent as Content-Type: application/json, with
** the bearer token when there is one) to path. Returns as ctl_get does.
*/
int ctl_post_json(struct ctl_conn *c, const char *path, const char *json, struct ctl_reply *ret);

/* One server-sent event. data is NUL-terminated (data_len bytes; several
 * data: lines are joined with '\n'); event is "message" when absent; id is
 * NULL when the event had no id: line. */
struct ctl_sse_event {
	const char *event;
	const char *id;
	const char *data;
	size_t data_len;
};

/* Called for each event; a non-zero return stops the stream and is returned
 * by ctl_stream. */
typedef int (*ctl_sse_fn)(const struct ctl_sse_event *ev, void *ctx);

/*
** GET path as an event stream, without a time limit (the daemon's 15 s
** heartbeats keep it alive; a stream silent for idle_ms is taken as dead).
** last_event_id, when not NULL, is sent as Last-Event-ID. Returns:
**  - the callback's non-zero value when it stopped the stream;
**  - 0 when the stream ended (the daemon closed it) after a 200;
**  - -EPROTO when the answer was not 200: *ret_status and body (owned by
**    the caller, ctl_reply_free) hold it;
**  - -EIO on a transport failure (ctl_conn_fail says which), -ENOMEM.
** *ret_status is written for every answer that had a status line, else 0.
*/
int ctl_stream(struct ctl_conn *c, const char *path, const char *last_event_id, long idle_ms,
	       ctl_sse_fn fn, void *ctx, struct ctl_reply *ret_err);

/* Appends s percent-encoded for a URL path or query value: every byte but
 * A-Z a-z 0-9 - . _ ~ (and '/' when keep_slash) becomes %XX, so '+', '#',
 * '?', '%', space and non-ASCII bytes travel as the README says. Returns 0,
 * -ENOMEM or -E2BIG. */
int ctl_pct_encode(struct buf *b, const char *s, bool keep_slash);

#endif
