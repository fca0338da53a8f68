/* SPDX-License-Identifier: MIT */
/* http.c: the HTTP server: listeners, connection fairness, bearer auth, the route table and the JSON endpoints. */
#include "api/http.h"
#include "api/intents.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/un.h>
#include <unistd.h>

#include <microhttpd.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/stats.h"
#include "common/topic.h"
#include "api/body.h"
#include "api/fair.h"
#include "api/metrics.h"
#include "api/pathdec.h"
#include "api/render.h"
#include "api/status/status.h"
#include "mirror/state/rows.h"
#include "api/watch.h"

/*
** Limits.
**
** A request line longer than max_uri (at least API_MIN_URI, more when
** store.max_topic_len allows longer topics: a fully percent-encoded topic
** plus an `after` of the same size must fit) is answered 414 by us. The
** libmicrohttpd connection pool (twice that plus room for headers, at most
** API_MAX_CONN_MEMORY) bounds request line and headers together; what does
** not fit is answered by libmicrohttpd itself: 414 while the request line
** is still being read, 431 for headers (plain HTML bodies, not JSON, and
** not counted in /metrics: our handler never sees those requests).
**
** A response body stops growing at API_SOFT_BODY: /v1/keys and /v1/stale
** then end the page early and `next` continues from there, so a limit of
** 10000 big payloads costs pages, not memory.
*/
#define API_MIN_URI 8192
#define API_CONN_MEMORY_HEADERS (16u << 10)
#define API_MAX_CONN_MEMORY (1u << 20)
#define API_SOFT_BODY (8u << 20)
#define API_MAX_GET_BODY 4096
/* A body route's upload without Content-Length (chunked) that passes the
 * row's limit cannot be answered before it ends (libmicrohttpd 0.9.75
 * queues no response while a body is being read): up to this much more is
 * read and dropped so the client still gets its 413; beyond, the
 * connection is closed. */
#define API_BODY_DRAIN (64u << 10)
#define API_LIST_DEFAULT 100
#define API_LIST_MAX 10000
/* Records (or bytes) rendered per hold of the index read lock: a writer
 * (ingest, the keeper thread) never waits behind a whole 10000-record page,
 * nor behind a few big payloads read back from the file. */
#define API_CHUNK_RECORDS 64
#define API_CHUNK_BYTES (64u << 10)
#define API_CHUNK_VISITS 4096

/*
** Fairness (api/fair.h). A connection's first request head must be
** complete within API_HEAD_TIMEOUT_MS (or [http] timeout when shorter);
** the deadline thread looks every API_REAP_TICK_MS at most. libmicrohttpd's
** own limit leaves room above max_connections for the watch streams
** (counted apart) and for connections killed but not yet closed.
*/
#define API_HEAD_TIMEOUT_MS 5000
#define API_REAP_TICK_MS 250
#define API_FD_RESERVE 128      /* descriptors for everything but HTTP */
/* A watch stream's kernel send buffer (Linux doubles it): what a listener
 * that stopped reading holds in the kernel, beyond watch_buffer. */
#define API_WATCH_SNDBUF (64 * 1024)

#define CT_JSON "application/json"
#define CT_METRICS "text/plain; version=0.0.4; charset=utf-8"

struct api {
	struct MHD_Daemon *mhd;
	struct api_deps d;      /* all but conf, ix and loading_from: api_attach */
	atomic_bool loading;    /* until api_attach: d holds conf, ix, loading_from */
	char *token;            /* NULL: no auth */
	size_t token_len;
	char *unix_path;        /* unlinked at stop */
	char *write_token;      /* AUTH_WRITE routes; NULL: none configured */
	size_t write_token_len;
	char *intent_token;     /* [intents] intent_token_file, owned; NULL: none */
	struct api_intents ai;  /* the intent endpoints' settings */
	size_t intent_body_max;
	pthread_mutex_t waits_mu;
	size_t nwaits;          /* requests suspended in ?wait= (waits_mu) */
	size_t max_uri;
	size_t body_max;        /* hard limit of one response body */
	struct log_ratelimit rl;
	struct log_ratelimit rl_body;
	struct log_ratelimit rl_fair;   /* under fair's mutex */

	struct fair *fair;
	pthread_t reaper;               /* closes connections past their head deadline */
	bool reaper_started;
	pthread_mutex_t reap_mu;
	pthread_cond_t reap_cv;         /* CLOCK_MONOTONIC */
	bool reap_stop;                 /* reap_mu */
};

/* The fairness record of connection c (its socket context), or NULL. */
static struct fair_conn *conn_of(struct MHD_Connection *c)
{
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);

	return ci ? ci->socket_context : NULL;
}

/* Per request: a copy of the raw request-target, taken before
 * libmicrohttpd unescapes it (it turns '+' into ' ' in query values,
 * which would break the filter "a/+/b"). We decode it ourselves, once.
 * The rest is filled in at the first handler call, when the head is in. */
struct iwait;

struct req {
	struct iwait *wait;     /* a POST /v1/intents/ waiting for its outcome */
	const struct route *rt; /* NULL: no such path (404) */
	struct body body;       /* the upload of a route that takes a body */
	size_t dropped;         /* bytes of a body nobody asked for, dropped */
	bool headers_done;      /* the first handler call happened */
	size_t len;             /* SIZE_MAX: longer than max_uri */
	char uri[];
};

/* What a handler needs to answer. */
struct call {
	struct api *a;
	struct MHD_Connection *c;
	bool loading;           /* the index is loading: api_deps.loading_from */
	bool v1;                /* add Statemirror-Synced */
	bool synced;
	char *tail;             /* a prefix route: the path after the prefix, */
	size_t tail_len;        /* still percent-encoded, writable */
	char *query;            /* after '?', NUL-terminated, writable; NULL: none */
	size_t query_len;
	json_t *body;           /* a body route: the parsed body (borrowed) */
	struct req *q;          /* a body route: the request (for ?wait=) */
};

static const char oom_body[] = "{\"error\":\"out of memory\"}";

/* ---- answers ---------------------------------------------------------- */

static void count_code(unsigned code)
{
	STAT_INC(http_requests[metrics_http_bucket(code)]);
}

static enum MHD_Result queue(struct call *k, unsigned code, struct MHD_Response *resp,
			     const char *ctype, const char *hname, const char *hval)
{
	enum MHD_Result ret;

	if (!resp)
		return MHD_NO;
	if (MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype) != MHD_YES ||
	    (k->v1 && MHD_add_response_header(resp, "Statemirror-Synced",
					      k->synced ? "true" : "false") != MHD_YES) ||
	    (hname && MHD_add_response_header(resp, hname, hval) != MHD_YES)) {
		MHD_destroy_response(resp);
		return MHD_NO;
	}
	ret = MHD_queue_response(k->c, code, resp);
	MHD_destroy_response(resp);
	if (ret == MHD_YES)
		count_code(code);
	return ret;
}

static enum MHD_Result send_oom(struct call *k)
{
	struct MHD_Response *resp = MHD_create_response_from_buffer(
		sizeof(oom_body) - 1, (void *)oom_body, MHD_RESPMEM_PERSISTENT);

	return queue(k, MHD_HTTP_INTERNAL_SERVER_ERROR, resp, CT_JSON, NULL, NULL);
}

/* Hands b's memory to libmicrohttpd (freed when the response is). */
static enum MHD_Result send_buf_hdr(struct call *k, unsigned code, struct buf *b, const char *ctype,
				    const char *hname, const char *hval)
{
	struct MHD_Response *resp;
	size_t len;
	char *data = buf_steal(b, &len);

	if (!data)
		return send_oom(k);
	resp = MHD_create_response_from_buffer(len, data, MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(data);
		return MHD_NO;
	}
	return queue(k, code, resp, ctype, hname, hval);
}

static enum MHD_Result send_buf(struct call *k, unsigned code, struct buf *b, const char *ctype)
{
	return send_buf_hdr(k, code, b, ctype, NULL, NULL);
}

static enum MHD_Result send_error_hdr(struct call *k, unsigned code, const char *reason,
				      const char *hname, const char *hval)
{
	struct buf b;

	buf_init(&b, 4096);
	if (render_error(&b, reason) < 0) {
		buf_free(&b);
		return send_oom(k);
	}
	return send_buf_hdr(k, code, &b, CT_JSON, hname, hval);
}

static enum MHD_Result send_error(struct call *k, unsigned code, const char *reason)
{
	return send_error_hdr(k, code, reason, NULL, NULL);
}

/* A failed render: out of memory, a body over the hard limit, or a payload
 * the database would not give back. */
static enum MHD_Result send_render_error(struct call *k, struct buf *b, int err)
{
	buf_free(b);
	if (err == -E2BIG)
		return send_error(k, MHD_HTTP_INTERNAL_SERVER_ERROR, "response too large");
	if (err != -ENOMEM)
		return send_error(k, MHD_HTTP_SERVICE_UNAVAILABLE, "cannot read the payload from the database");
	return send_oom(k);
}

static enum MHD_Result send_literal(struct call *k, unsigned code, const char *body)
{
	struct buf b;

	buf_init(&b, 0);
	if (buf_puts(&b, body) < 0) {
		buf_free(&b);
		return send_oom(k);
	}
	return send_buf(k, code, &b, CT_JSON);
}

/* ---- the record walk behind /v1/keys and /v1/stale -------------------- */

struct walk {
	struct buf *b;
	const struct index *ix; /* the walked index (payloads in the file, walk_run) */
	const char *filter;
	size_t plen;            /* the filter's literal prefix (topic_filter_prefix_len) */
	bool subtree;           /* filter is prefix + "/#": see walk_visit */
	int stale;              /* -1 any, 0 fresh only, 1 stale only */
	size_t limit, n;
	size_t chunk_left;      /* records still to render under this lock hold */
	size_t chunk_end;       /* ... and the body length that ends the hold */
	size_t visit_left;      /* records still to look at under this lock hold */
	int64_t now_ms;
	int err;
	bool more;              /* a further match exists: `next` is set */
	bool paused;            /* budget spent: drop the lock, resume after `resume` */
	const struct rec *prev; /* the last record fully dealt with (lock held) */
	const struct rec *last; /* the last record rendered in this hold (lock held) */
	struct buf cursor;      /* its topic, copied before the lock is dropped */
	struct buf resume;      /* topic to resume after */
};

static int walk_visit(struct rec *r, void *ctx)
{
	struct walk *w = ctx;
	size_t mark;
	int ret;

	if (w->chunk_left == 0 || w->visit_left == 0 || w->b->len >= w->chunk_end) {
		/* prev is set: both budgets are positive when a hold starts. */
		buf_reset(&w->resume);
		if ((ret = buf_append(&w->resume, rec_topic(w->prev), w->prev->topic_len)) < 0)
			w->err = ret;
		w->paused = true;
		return 1;
	}
	w->visit_left--;
	w->prev = r;
	if (r->flags & REC_DELETED)
		return 0;
	if (w->stale >= 0 && ((r->flags & REC_STALE) != 0) != (w->stale != 0))
		return 0;
	/* The walk gives topics that start with the prefix: under "P/#" such a
	 * topic matches when it is P or goes on with a '/' (not "Px/..."). */
	if (w->subtree ? r->topic_len != w->plen && rec_topic(r)[w->plen] != '/'
		       : !topic_matches(w->filter, rec_topic(r), r->topic_len))
		return 0;
	if (w->n == w->limit || (w->n && w->b->len >= API_SOFT_BODY)) {
		w->more = true;
		return 1;
	}
	mark = w->b->len;
	ret = w->n ? buf_putc(w->b, ',') : 0;
	if (ret == 0)
		ret = render_record_cached(w->b, w->ix, r, w->now_ms);
	if (ret < 0) {
		w->b->len = mark;
		w->b->data[mark] = '\0';
		if (ret == -E2BIG && w->n)
			w->more = true; /* the next page starts with it */
		else
			w->err = ret;
		return 1;
	}
	w->last = r;
	w->n++;
	w->chunk_left--;
	return 0;
}

/*
** Render the items array's contents (no brackets) and decide `next`. The
** read lock is dropped every API_CHUNK_RECORDS records or API_CHUNK_BYTES
** rendered, or API_CHUNK_VISITS records looked at (a sparse filter such as "+/x" over a
** million keys), so a writer (ingest, the keeper thread) never waits long; the
** page then reflects the index as it was at each hold, like any paging.
*/
static int walk_run(struct api *a, struct walk *w, const char *after, size_t after_len)
{
	size_t plen = topic_filter_prefix_len(w->filter);
	const char *cur = after;
	size_t cur_len = after_len;
	int r;

	w->ix = a->d.ix;
	w->plen = plen;
	/* "#" alone is no subtree: it leaves out the topics that start with '$'. */
	w->subtree = plen > 0 && w->filter[plen] == '/' && w->filter[plen + 1] == '#' &&
		     w->filter[plen + 2] == '\0';
	do {
		w->paused = false;
		w->chunk_left = API_CHUNK_RECORDS;
		w->chunk_end = w->b->len + API_CHUNK_BYTES;
		w->visit_left = API_CHUNK_VISITS;
		w->prev = NULL;
		index_rdlock(a->d.ix);
		/* Payloads in the file come from one range scan per hold. */
		rec_payload_scan(a->d.ix, cur ? cur : w->filter, cur ? cur_len : plen);
		w->last = NULL;
		index_walk(a->d.ix, w->filter, plen, cur, cur_len, walk_visit, w);
		if (w->last && !w->err) {
			buf_reset(&w->cursor);
			if ((r = buf_append(&w->cursor, rec_topic(w->last), w->last->topic_len)) < 0)
				w->err = r;
		}
		rec_payload_scan_end(a->d.ix);
		index_unlock(a->d.ix);
		cur = w->resume.data;
		cur_len = w->resume.len;
	} while (w->paused && !w->err);
	return w->err;
}

static int put_next(struct walk *w)
{
	int r;

	if ((r = buf_puts(w->b, "],\"next\":")) < 0)
		return r;
	if (w->more && w->n)
		r = buf_json_str(w->b, w->cursor.data, w->cursor.len);
	else
		r = buf_puts(w->b, "null");
	return r;
}

struct list_args {
	const char *filter;
	const char *after;
	size_t after_len;
	size_t limit;
	int stale;
};

/* Parse the query of /v1/keys and /v1/stale. Answers 400 itself. */
static int list_args_parse(struct call *k, bool with_stale, struct list_args *la,
			   enum MHD_Result *ret_mhd)
{
	struct pathdec_param params[PATHDEC_MAX_PARAMS];
	const struct pathdec_param *f = NULL, *af = NULL;
	uint64_t limit = API_LIST_DEFAULT;
	size_t np = 0;
	int r;

	la->filter = "#";
	la->after = NULL;
	la->after_len = 0;
	la->stale = -1;
	if (k->query && (r = pathdec_query(k->query, k->query_len, params, PATHDEC_MAX_PARAMS, &np)) < 0) {
		*ret_mhd = send_error(k, MHD_HTTP_BAD_REQUEST, pathdec_query_reason(r));
		return r;
	}
	if ((r = pathdec_str(params, np, "filter", &f)) < 0 || (f && topic_filter_check(f->val) < 0)) {
		*ret_mhd = send_error(k, MHD_HTTP_BAD_REQUEST, "invalid filter");
		return r < 0 ? r : -EINVAL;
	}
	if (f)
		la->filter = f->val;
	if ((r = pathdec_str(params, np, "after", &af)) < 0) {
		*ret_mhd = send_error(k, MHD_HTTP_BAD_REQUEST, "invalid after");
		return r;
	}
	if (af) {
		la->after = af->val;
		la->after_len = af->val_len;
	}
	if ((r = pathdec_uint(params, np, "limit", 1, API_LIST_MAX, &limit)) < 0) {
		*ret_mhd = send_error(k, MHD_HTTP_BAD_REQUEST, "invalid limit (1..10000)");
		return r;
	}
	la->limit = (size_t)limit;
	if (with_stale && (r = pathdec_bool(params, np, "stale", &la->stale)) < 0) {
		*ret_mhd = send_error(k, MHD_HTTP_BAD_REQUEST, "invalid stale (true or false)");
		return r;
	}
	return 0;
}

static void walk_init(struct walk *w, struct buf *b, const struct list_args *la)
{
	memset(w, 0, sizeof(*w));
	w->b = b;
	w->filter = la->filter;
	w->stale = la->stale;
	w->limit = la->limit;
	w->now_ms = clock_wall_ms();
	buf_init(&w->cursor, 0);
	buf_init(&w->resume, 0);
}

static void walk_done(struct walk *w)
{
	buf_free(&w->cursor);
	buf_free(&w->resume);
}

/* ---- endpoints -------------------------------------------------------- */

/*
** A point read while the index loads: the stored row, as rows_get gives it
** (the value and state written at the last stop; keys whose deadline passed
** meanwhile are judged once loaded). Synced is false: nothing is.
*/
static enum MHD_Result key_from_file(struct call *k, const char *t, size_t n, struct buf *b,
				     int64_t now_ms)
{
	struct rec *r;
	int ret = rows_get(k->a->d.loading_from, t, n, &r);

	if (ret == 0 && (r->flags & REC_DELETED))
		ret = -ENOENT;
	if (ret == 0)
		ret = render_record(b, NULL, r, now_ms);
	rec_free(r);
	if (ret == -ENOENT) {
		buf_free(b);
		return send_error(k, MHD_HTTP_NOT_FOUND, "no such key");
	}
	if (ret < 0)
		return send_render_error(k, b, ret);
	return send_buf(k, MHD_HTTP_OK, b, CT_JSON);
}

static enum MHD_Result ep_key(struct call *k)
{
	char *t = k->tail;
	size_t tlen = k->tail_len;
	struct api *a = k->a;
	const struct rec *cr;
	struct rec snap, *r;
	const void *pv;
	size_t n, plen;
	int64_t now_ms;
	bool found = false;
	int ret = 0, rc;
	struct buf b;

	if (pathdec_decode(t, tlen, t, &n) < 0)
		return send_error(k, MHD_HTTP_BAD_REQUEST, "bad percent-encoding in the topic");
	if (n == 0)
		return send_error(k, MHD_HTTP_BAD_REQUEST, "empty topic");
	if (memchr(t, '\0', n))
		return send_error(k, MHD_HTTP_BAD_REQUEST, "topic contains a NUL byte");
	buf_init(&b, a->body_max);
	buf_reserve(&b, 1024); /* a record with a small payload; it grows if need be */
	now_ms = clock_wall_ms();
	if (k->loading)
		return key_from_file(k, t, n, &b, now_ms);
	/* Without the lock when this thread has the value's revision at hand
	 * (index.h: point reads without the lock), else under it. */
	if ((rc = index_peek(a->d.ix, t, n, &snap, &cr)) == 1 && (snap.flags & REC_DELETED))
		rc = 0;
	/* The record as rendered last, else its payload, from this thread's
	 * caches; else the lock. */
	if (rc == 1 && (ret = render_cached(&b, a->d.ix, cr, &snap, now_ms)) != -EAGAIN) {
		found = true;
	} else if (rc == 1 && rec_payload_peek(a->d.ix, cr, &snap, &pv, &plen) == 0) {
		found = true;
		ret = render_record_keep(&b, a->d.ix, cr, &snap, t, pv, plen, now_ms);
	} else if (rc != 0) {
		index_rdlock(a->d.ix);
		r = index_get(a->d.ix, t, n);
		if (r && !(r->flags & REC_DELETED)) {
			found = true;
			if ((ret = rec_payload_keep(a->d.ix, r, &pv, &plen)) == 0)
				ret = render_record_keep(&b, a->d.ix, r, r, rec_topic(r), pv, plen,
							 now_ms);
		}
		index_unlock(a->d.ix);
	}
	if (!found) {
		buf_free(&b);
		return send_error(k, MHD_HTTP_NOT_FOUND, "no such key");
	}
	if (ret < 0)
		return send_render_error(k, &b, ret);
	return send_buf(k, MHD_HTTP_OK, &b, CT_JSON);
}

static enum MHD_Result ep_keys(struct call *k)
{
	struct list_args la;
	struct walk w;
	struct buf b;
	enum MHD_Result mr;
	int r;

	if (list_args_parse(k, true, &la, &mr) < 0)
		return mr;
	buf_init(&b, k->a->body_max);
	/* Some 400 bytes a record of a small payload: room at once, not by doublings. */
	buf_reserve(&b, la.limit < (1u << 20) / 400 ? la.limit * 400 + 256 : 1u << 20);
	walk_init(&w, &b, &la);
	if ((r = buf_puts(&b, "{\"items\":[")) < 0 ||
	    (r = walk_run(k->a, &w, la.after, la.after_len)) < 0 ||
	    (r = put_next(&w)) < 0 || (r = buf_putc(&b, '}')) < 0) {
		walk_done(&w);
		return send_render_error(k, &b, r);
	}
	walk_done(&w);
	return send_buf(k, MHD_HTTP_OK, &b, CT_JSON);
}

struct groups_ctx {
	struct buf *b;
	uint64_t count;
	size_t ngroups;
	bool truncated;
	int err;
};

static void group_visit(const char *prefix, enum stale_reason why, uint64_t count, void *ctx)
{
	const char *rn = stale_reason_name(why);
	struct groups_ctx *g = ctx;
	size_t mark = g->b->len;
	int r;

	g->count += count;
	if (g->err || g->truncated)
		return;
	if (g->b->len >= API_SOFT_BODY / 2) {
		g->truncated = true;
		return;
	}
	/* "prefix" for the clients of before; "producer" says what it is. */
	if ((r = buf_puts(g->b, g->ngroups ? ",{\"prefix\":" : "{\"prefix\":")) < 0 ||
	    (r = buf_json_str(g->b, prefix, strlen(prefix))) < 0 ||
	    (r = buf_puts(g->b, ",\"producer\":")) < 0 ||
	    (r = buf_json_str(g->b, prefix, strlen(prefix))) < 0 ||
	    (r = buf_puts(g->b, ",\"reason\":")) < 0 ||
	    (r = rn ? buf_json_str(g->b, rn, strlen(rn)) : buf_puts(g->b, "null")) < 0 ||
	    (r = buf_printf(g->b, ",\"count\":%llu}", (unsigned long long)count)) < 0) {
		g->b->len = mark;
		g->b->data[mark] = '\0';
		g->err = r;
		return;
	}
	g->ngroups++;
}

static enum MHD_Result ep_stale(struct call *k)
{
	struct api *a = k->a;
	struct groups_ctx g = { 0 };
	struct list_args la;
	struct walk w;
	struct buf b, gb;
	enum MHD_Result mr;
	int r;

	if (list_args_parse(k, false, &la, &mr) < 0)
		return mr;
	la.stale = 1;
	buf_init(&gb, a->body_max);
	g.b = &gb;
	if (a->d.stale) {
		index_rdlock(a->d.ix);
		stale_groups(a->d.stale, a->d.ix, group_visit, &g);
		index_unlock(a->d.ix);
	}
	buf_init(&b, a->body_max);
	walk_init(&w, &b, &la);
	if ((r = g.err) < 0 ||
	    (r = buf_printf(&b, "{\"count\":%llu,\"groups\":[", (unsigned long long)g.count)) < 0 ||
	    (gb.len && (r = buf_append(&b, gb.data, gb.len)) < 0) ||
	    (r = buf_puts(&b, g.truncated ? "],\"groups_truncated\":true,\"items\":["
					  : "],\"items\":[")) < 0 ||
	    (r = walk_run(a, &w, la.after, la.after_len)) < 0 ||
	    (r = put_next(&w)) < 0 || (r = buf_putc(&b, '}')) < 0) {
		buf_free(&gb);
		walk_done(&w);
		return send_render_error(k, &b, r);
	}
	buf_free(&gb);
	walk_done(&w);
	return send_buf(k, MHD_HTTP_OK, &b, CT_JSON);
}

static enum MHD_Result ep_rejects(struct call *k)
{
	struct buf b;
	int r;

	buf_init(&b, k->a->body_max);
	if (k->a->d.rejects)
		r = render_rejects(&b, k->a->d.rejects);
	else
		r = buf_puts(&b, "{\"items\":[]}");
	if (r < 0)
		return send_render_error(k, &b, r);
	return send_buf(k, MHD_HTTP_OK, &b, CT_JSON);
}

static enum MHD_Result ep_readyz(struct call *k)
{
	char reason[256] = "starting";
	struct buf b;
	bool ready = false;
	int r;

	if (k->loading)
		snprintf(reason, sizeof(reason), "loading the stored keys");
	else if (k->a->d.core)
		ready = mirror_ready(k->a->d.core, reason, sizeof(reason));
	buf_init(&b, 4096);
	if (ready) {
		/* Which bootstrap the broker gave, and the version spoken. */
		char st[512];

		mirror_broker_status(k->a->d.core, st, sizeof(st));
		if ((r = buf_puts(&b, "{\"ready\":true,\"status\":")) < 0 ||
		    (r = buf_json_str(&b, st, strlen(st))) < 0 || (r = buf_putc(&b, '}')) < 0)
			return send_render_error(k, &b, r);
		return send_buf(k, MHD_HTTP_OK, &b, CT_JSON);
	}
	reason[sizeof(reason) - 1] = '\0';
	if ((r = buf_puts(&b, "{\"ready\":false,\"reason\":")) < 0 ||
	    (r = buf_json_str(&b, reason, strlen(reason))) < 0 || (r = buf_putc(&b, '}')) < 0)
		return send_render_error(k, &b, r);
	return send_buf(k, MHD_HTTP_SERVICE_UNAVAILABLE, &b, CT_JSON);
}

static enum MHD_Result ep_metrics(struct call *k)
{
	struct api *a = k->a;
	struct metrics_extra x = { 0 };
	struct intents_stats ist;
	char reason[64];
	struct buf b;
	int r;

	/* While loading: the counters only (not ready, no intents yet). */
	if (!k->loading && a->d.core)
		x.ready = mirror_ready(a->d.core, reason, sizeof(reason));
	if (!k->loading && a->d.intents) {
		intents_stats(a->d.intents, &ist);
		x.intents = &ist;
		x.now_ms = clock_wall_ms();
	}
	buf_init(&b, a->body_max);
	if ((r = metrics_render(&b, &x)) < 0)
		return send_render_error(k, &b, r);
	return send_buf(k, MHD_HTTP_OK, &b, CT_METRICS);
}

static enum MHD_Result ep_watch(struct call *k)
{
	const union MHD_ConnectionInfo *fdi;
	int sndbuf = API_WATCH_SNDBUF;
	struct MHD_Response *resp = NULL;
	const char *why = "watch streams are off";
	int r = -EBUSY;

	if (k->a->d.watch)
		r = watch_open(k->a->d.watch, k->c, k->query, k->query_len,
			       MHD_lookup_connection_value(k->c, MHD_HEADER_KIND, "Last-Event-ID"),
			       &resp, &why);
	if (r == -EINVAL)
		return send_error(k, MHD_HTTP_BAD_REQUEST, why);
	if (r == -EBUSY)
		return send_error(k, MHD_HTTP_SERVICE_UNAVAILABLE, why);
	if (r < 0)
		return send_oom(k);
	fair_watch(k->a->fair, conn_of(k->c));
	/* A listener that never reads would otherwise park up to the
	 * kernel's autotuned send buffer (tcp_wmem, 4 MiB) with us, and a
	 * connection thread would render all of it: past API_WATCH_SNDBUF
	 * it reads back from the change log at its own pace instead. */
	if ((fdi = MHD_get_connection_info(k->c, MHD_CONNECTION_INFO_CONNECTION_FD)) &&
	    setsockopt(fdi->connect_fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)) < 0)
		log_debug("http: watch stream SO_SNDBUF: %s", strerror(errno));
	return queue(k, MHD_HTTP_OK, resp, "text/event-stream", NULL, NULL);
}

/* The status page's files (api/status/). Served without the token: they
 * hold no data, and the page asks for the token when the API answers 401. */
static enum MHD_Result status_asset(struct call *k, const char *path)
{
	struct MHD_Response *resp;
	const char *type;
	const void *body;
	size_t len;

	if (api_status_asset(path, &body, &len, &type) < 0)
		return send_error(k, MHD_HTTP_NOT_FOUND, "no such path");
	resp = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_PERSISTENT);
	if (!resp)
		return MHD_NO;
	if (MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff") != MHD_YES ||
	    MHD_add_response_header(resp, "Referrer-Policy", "no-referrer") != MHD_YES ||
	    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache") != MHD_YES) {
		MHD_destroy_response(resp);
		return MHD_NO;
	}
	return queue(k, MHD_HTTP_OK, resp, type, "Content-Security-Policy", API_STATUS_CSP);
}

static enum MHD_Result ep_status_page(struct call *k)
{
	return status_asset(k, "/");
}

static enum MHD_Result ep_status_js(struct call *k)
{
	return status_asset(k, "/status.js");
}

static enum MHD_Result ep_status_css(struct call *k)
{
	return status_asset(k, "/status.css");
}

/* ---- intents ---------------------------------------------------------- */

/*
** A POST /v1/intents/...?wait=D suspends its connection until the intent
** is decided or D passes (the sync-over-async proxy of the articles). The
** engine calls iwait_done under its mutex: it only flips `state` and, if
** the connection is already suspended, resumes it; libmicrohttpd then
** calls on_request again, which answers (ep_intent_resumed).
*/
enum { IW_REGISTERED, IW_SUSPENDED, IW_FIRED };

static enum MHD_Result ep_intent_resumed(struct call *k, struct req *q);

struct iwait {
	struct intent_waiter w;
	struct MHD_Connection *c;
	_Atomic int state;
	bool registered;        /* on the engine's list until fired or unwaited */
};

static void iwait_done(void *ctx)
{
	struct iwait *iw = ctx;

	if (atomic_exchange(&iw->state, IW_FIRED) == IW_SUSPENDED)
		MHD_resume_connection(iw->c);
}

/* The request is over (answered, or the connection closed): off the
 * engine's list, and counted out. */
static void iwait_end(struct api *a, struct req *q)
{
	if (q->wait->registered)
		intents_unwait(a->d.intents, &q->wait->w);
	free(q->wait);
	q->wait = NULL;
	pthread_mutex_lock(&a->waits_mu);
	a->nwaits--;
	pthread_mutex_unlock(&a->waits_mu);
}

/* api_stop: answer every waiting request before libmicrohttpd stops
 * (it must not be stopped with suspended connections). */
static void iwait_release_all(struct api *a)
{
	if (!a->d.intents)
		return;
	for (int i = 0; i < 200; i++) {
		size_t n;

		intents_release_waiters(a->d.intents);
		pthread_mutex_lock(&a->waits_mu);
		n = a->nwaits;
		pthread_mutex_unlock(&a->waits_mu);
		if (n == 0)
			return;
		usleep(10000); /* their threads answer: a bounded wait at shutdown */
	}
}

static int64_t intent_id_of(const char *t, size_t n)
{
	uint64_t v;

	if (pathdec_parse_uint(t, n, INT64_MAX, &v) < 0 || v == 0)
		return -1;
	return (int64_t)v;
}

static enum MHD_Result send_intent(struct call *k, unsigned code, struct buf *b, int64_t id)
{
	char loc[64];

	if (code == 202) {
		snprintf(loc, sizeof(loc), "/v1/intents/%lld", (long long)id);
		return send_buf_hdr(k, code, b, CT_JSON, MHD_HTTP_HEADER_LOCATION, loc);
	}
	return send_buf(k, code, b, CT_JSON);
}

static enum MHD_Result ep_intent_post(struct call *k)
{
	struct api *a = k->a;
	struct pathdec_param params[8];
	const struct pathdec_param *p;
	size_t np = 0, n;
	int64_t id = 0, wait_ms = 0;
	unsigned code;
	struct buf b;
	int r;

	if (pathdec_decode(k->tail, k->tail_len, k->tail, &n) < 0)
		return send_error(k, MHD_HTTP_BAD_REQUEST, "bad percent-encoding in the topic");
	if (k->query && (r = pathdec_query(k->query, k->query_len, params, 8, &np)) < 0)
		return send_error(k, MHD_HTTP_BAD_REQUEST, pathdec_query_reason(r));
	p = NULL;
	if (pathdec_str(params, np, "wait", &p) < 0 ||
	    (p && (conf_parse_duration(p->val, &wait_ms) < 0 || wait_ms < 0)))
		return send_error(k, MHD_HTTP_BAD_REQUEST, "invalid wait (a duration: 10s)");
	if (wait_ms > API_INTENT_WAIT_MAX_MS)
		wait_ms = API_INTENT_WAIT_MAX_MS;
	buf_init(&b, a->body_max);
	code = api_intent_post(&a->ai, k->tail, n, k->body, clock_wall_ms(), &b, &id);
	if (code != 202 || wait_ms == 0 || !k->q)
		return send_intent(k, code, &b, id);
	buf_free(&b);
	/* ?wait=: suspend until decided or wait_ms (iwait_done resumes). */
	struct iwait *iw = calloc(1, sizeof(*iw));

	if (!iw)
		return send_oom(k);
	iw->c = k->c;
	iw->w = (struct intent_waiter){ .id = id, .deadline_ms = clock_wall_ms() + wait_ms,
					.done = iwait_done, .ctx = iw };
	atomic_init(&iw->state, IW_REGISTERED);
	k->q->wait = iw;
	pthread_mutex_lock(&a->waits_mu);
	a->nwaits++;
	pthread_mutex_unlock(&a->waits_mu);
	if (intents_wait(a->d.intents, &iw->w) != 0)
		return ep_intent_resumed(k, k->q); /* decided already: answer now */
	iw->registered = true;
	MHD_suspend_connection(k->c);
	if (atomic_exchange(&iw->state, IW_SUSPENDED) == IW_FIRED) {
		atomic_store(&iw->state, IW_FIRED);
		MHD_resume_connection(k->c); /* decided while we were suspending */
	}
	return MHD_YES;
}

/* The waiting request again, after its resume: the decided record (200),
 * or the pending one (202) when the wait ran out first. */
static enum MHD_Result ep_intent_resumed(struct call *k, struct req *q)
{
	struct api *a = k->a;
	int64_t id = q->wait->w.id;
	bool decided = false;
	unsigned code;
	struct buf b;

	iwait_end(a, q);
	buf_init(&b, a->body_max);
	code = api_intent_get(&a->ai, id, &b, &decided);
	if (code == 200 && !decided)
		code = 202;
	return send_intent(k, code, &b, id);
}

static enum MHD_Result ep_intent_get(struct call *k)
{
	int64_t id = intent_id_of(k->tail, k->tail_len);
	bool decided;
	unsigned code;
	struct buf b;

	if (id < 0)
		return send_error(k, MHD_HTTP_NOT_FOUND, "no such intent (ids are positive integers)");
	buf_init(&b, k->a->body_max);
	code = api_intent_get(&k->a->ai, id, &b, &decided);
	return send_buf(k, code, &b, CT_JSON);
}

static enum MHD_Result ep_intents(struct call *k)
{
	struct pathdec_param params[8];
	const struct pathdec_param *p;
	enum intent_state only = INTENT_STATE_MAX;
	uint64_t limit = 100;
	size_t np = 0;
	struct buf b;
	int r;

	if (k->query && (r = pathdec_query(k->query, k->query_len, params, 8, &np)) < 0)
		return send_error(k, MHD_HTTP_BAD_REQUEST, pathdec_query_reason(r));
	p = NULL;
	if (pathdec_str(params, np, "state", &p) < 0 || (p && intent_state_parse(p->val, &only) < 0))
		return send_error(k, MHD_HTTP_BAD_REQUEST,
				  "invalid state (pending, published, confirmed, overridden, "
				  "timed_out, expired)");
	if (pathdec_uint(params, np, "limit", 1, API_INTENTS_LIST_MAX, &limit) < 0)
		return send_error(k, MHD_HTTP_BAD_REQUEST, "invalid limit (1 to 1000)");
	buf_init(&b, k->a->body_max);
	return send_buf(k, api_intent_list(&k->a->ai, only, (size_t)limit, &b), &b, CT_JSON);
}

static enum MHD_Result ep_healthz(struct call *k)
{
	return send_literal(k, MHD_HTTP_OK, "{\"ok\":true}");
}

/* ---- the route table -------------------------------------------------- */

/*
** Who may call a route: anyone; holders of the read token (when
** [http] token_file is set); holders of the write token. There is one
** token today, so the write token is the read token; on a TCP listener a
** write route needs one (the configuration sets none: 403), a unix
** socket is guarded by its mode instead.
*/
/* AUTH_INTENT: the read token or the write token (a client given only the
 * intent token can still follow its intents). */
enum api_auth { AUTH_NONE, AUTH_READ, AUTH_WRITE, AUTH_INTENT, AUTH_MAX };
/* A body limit read from the configuration ([intents] max_body). */
#define BODY_MAX_INTENTS SIZE_MAX

#define M_GET 0x1u      /* GET and HEAD (libmicrohttpd sends no body for HEAD) */
#define M_POST 0x2u

/*
** One row per route. The table, not the handlers, answers what is about
** the request's shape: 404 (no row for the path), 405 with Allow (a row
** for the path, none for the method), 401/403 (auth), 413 (a body on a
** route that takes none, or beyond body_max), 415 (a body whose
** Content-Type is not body_type) and 400 (a body that is not JSON). A
** handler is called with the request settled: k->tail for a prefix row,
** k->query, and for a body row k->body, the parsed JSON (borrowed: freed
** after the handler returns).
**
** Rows are tried in order; the first whose path and method match wins.
** Adding a route is one row plus its handler, e.g. intents:
**   { "/v1/intents/", true, M_POST, AUTH_WRITE, 64 << 10, CT_JSON, ep_intent_post },
**
** A body row is checked at the first call (head complete, body unread),
** so a stranger's or an oversized upload is refused before it is read
** (libmicrohttpd then closes the connection); rows without a body answer
** after the (empty) body, keeping the connection alive.
*/
struct route {
	const char *path;
	bool prefix;            /* path is a prefix: the rest is k->tail */
	unsigned methods;       /* M_GET | M_POST */
	enum api_auth auth;
	size_t body_max;        /* 0: the request takes no body */
	const char *body_type;  /* the Content-Type a body must have */
	enum MHD_Result (*fn)(struct call *k);
	bool while_loading;     /* served before api_attach (point reads from the file) */
};

static const struct route routes[] = {
	{ "/healthz", false, M_GET, AUTH_NONE, 0, NULL, ep_healthz, true },
	/* The status page's files hold no data: served without the token (the
	 * page asks for it when the API answers 401). */
	{ "/", false, M_GET, AUTH_NONE, 0, NULL, ep_status_page, true },
	{ "/status.js", false, M_GET, AUTH_NONE, 0, NULL, ep_status_js, true },
	{ "/status.css", false, M_GET, AUTH_NONE, 0, NULL, ep_status_css, true },
	{ "/readyz", false, M_GET, AUTH_READ, 0, NULL, ep_readyz, true },
	{ "/metrics", false, M_GET, AUTH_READ, 0, NULL, ep_metrics, true },
	{ "/v1/keys", false, M_GET, AUTH_READ, 0, NULL, ep_keys, false },
	{ "/v1/keys/", true, M_GET, AUTH_READ, 0, NULL, ep_key, true },
	{ "/v1/stale", false, M_GET, AUTH_READ, 0, NULL, ep_stale, false },
	{ "/v1/watch", false, M_GET, AUTH_READ, 0, NULL, ep_watch, false },
	{ "/v1/rejects", false, M_GET, AUTH_READ, 0, NULL, ep_rejects, false },
	{ "/v1/intents", false, M_GET, AUTH_INTENT, 0, NULL, ep_intents, false },
	{ "/v1/intents/", true, M_POST, AUTH_WRITE, BODY_MAX_INTENTS, CT_JSON, ep_intent_post, false },
	{ "/v1/intents/", true, M_GET, AUTH_INTENT, 0, NULL, ep_intent_get, false },
};

static size_t route_body_max(const struct api *a, const struct route *rt)
{
	return rt->body_max == BODY_MAX_INTENTS ? a->intent_body_max : rt->body_max;
}

static unsigned method_bit(const char *method)
{
	if (strcmp(method, MHD_HTTP_METHOD_GET) == 0 || strcmp(method, MHD_HTTP_METHOD_HEAD) == 0)
		return M_GET;
	if (strcmp(method, MHD_HTTP_METHOD_POST) == 0)
		return M_POST;
	return 0;
}

static const char *allow_header(unsigned methods)
{
	switch (methods & (M_GET | M_POST)) {
	case M_GET | M_POST:
		return "GET, HEAD, POST";
	case M_POST:
		return "POST";
	default:
		return "GET, HEAD";
	}
}

/* The row for path and method. NULL when there is none, with the methods
 * the path's rows take in *ret_allow (0: no such path). */
static const struct route *route_find(const char *path, size_t len, const char *method,
				      unsigned *ret_allow)
{
	unsigned m = method_bit(method), allow = 0;

	for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
		const struct route *r = &routes[i];
		size_t plen = strlen(r->path);

		if (r->prefix ? len < plen : len != plen)
			continue;
		if (memcmp(path, r->path, plen) != 0)
			continue;
		if (r->methods & m)
			return r;
		allow |= r->methods;
	}
	*ret_allow = allow;
	return NULL;
}

/* Compares every byte of the configured token whatever the input, so the
 * time taken says nothing about how much of a guess was right. */
static bool token_ok(const char *token, size_t token_len, const char *h)
{
	unsigned char diff;
	size_t n;

	if (!h || strncasecmp(h, "Bearer ", 7) != 0)
		return false;
	h += 7;
	while (*h == ' ')
		h++;
	n = strlen(h);
	while (n && (h[n - 1] == ' ' || h[n - 1] == '\t'))
		n--;
	diff = n != token_len;
	for (size_t i = 0; i < token_len; i++)
		diff |= (unsigned char)token[i] ^ (unsigned char)(i < n ? h[i] : 0);
	return diff == 0;
}

/* Returns true when the request may go on; else it has been answered
 * (401 or 403) and *ret_mhd is the result. */
static bool auth_ok(struct call *k, enum api_auth auth, enum MHD_Result *ret_mhd)
{
	struct api *a = k->a;
	const char *tok = a->token;
	size_t tok_len = a->token_len;

	if (auth == AUTH_NONE)
		return true;
	if (auth == AUTH_INTENT && a->intent_token &&
	    token_ok(a->intent_token, strlen(a->intent_token),
		     MHD_lookup_connection_value(k->c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION)))
		return true;
	if (auth == AUTH_WRITE) {
		tok = a->write_token;
		tok_len = a->write_token_len;
		if (!tok && !a->unix_path) {
			*ret_mhd = send_error(k, MHD_HTTP_FORBIDDEN,
					      a->ai.nallow == 0
						      ? "intents are off: set [intents] allow (the topics "
							"they may go to) and, since writes over TCP need "
							"a bearer token, [http] token_file"
						      : "writes over TCP need a bearer token: set [http] "
							"token_file");
			return false;
		}
	}
	if (!tok || token_ok(tok, tok_len, MHD_lookup_connection_value(k->c, MHD_HEADER_KIND,
									 MHD_HTTP_HEADER_AUTHORIZATION)))
		return true;
	*ret_mhd = send_error_hdr(k, MHD_HTTP_UNAUTHORIZED, "missing or invalid bearer token",
				  MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"statemirror\"");
	return false;
}

/*
** The first call: the head is in, the body (if any) not yet read. Answers
** what the table can tell from the head; else returns MHD_YES with
** q->headers_done set. A response queued here makes libmicrohttpd 0.9.75
** close the connection after it instead of reading a body.
*/
static enum MHD_Result on_head(struct call *k, struct req *q, const char *method,
			       const char *path, size_t path_len)
{
	struct MHD_Connection *c = k->c;
	const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
	bool chunked = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
						   MHD_HTTP_HEADER_TRANSFER_ENCODING) != NULL;
	const struct route *rt;
	enum MHD_Result mr;
	unsigned allow = 0;
	uint64_t announced = 0;

	rt = route_find(path, path_len, method, &allow);
	if (!rt && allow)
		return send_error_hdr(k, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed",
				      MHD_HTTP_HEADER_ALLOW, allow_header(allow));
	if (cl && pathdec_parse_uint(cl, strlen(cl), UINT64_MAX, &announced) < 0)
		return send_error(k, MHD_HTTP_BAD_REQUEST, "invalid Content-Length");
	if (!rt || rt->body_max == 0) {
		if ((announced || chunked) && !rt)
			return send_error(k, MHD_HTTP_NOT_FOUND, "no such path");
		if (announced || chunked)
			return send_error(k, MHD_HTTP_CONTENT_TOO_LARGE, "this request takes no body");
		q->rt = rt;
		q->headers_done = true;
		return MHD_YES;
	}
	if (!auth_ok(k, rt->auth, &mr))
		return mr;
	if (!body_type_is(MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE),
			  rt->body_type)) {
		char why[128];

		snprintf(why, sizeof(why), "the request body must be %s", rt->body_type);
		return send_error(k, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE, why);
	}
	if (announced > route_body_max(k->a, rt)) {
		char why[128];

		snprintf(why, sizeof(why), "request body larger than %zu bytes",
			 route_body_max(k->a, rt));
		return send_error(k, MHD_HTTP_CONTENT_TOO_LARGE, why);
	}
	body_init(&q->body, route_body_max(k->a, rt));
	q->rt = rt;
	q->headers_done = true;
	return MHD_YES;
}

/* A piece of upload. Returns MHD_NO to close the connection when the
 * request cannot be answered any more (logged). */
static enum MHD_Result on_upload(struct api *a, struct req *q, const char *data, size_t n)
{
	const char *why;
	uint32_t suppressed = 0;
	int r;

	if (!q->rt || q->rt->body_max == 0) {
		/* A body nobody announced (see on_request): drop a little. */
		q->dropped += n;
		if (q->dropped <= API_MAX_GET_BODY)
			return MHD_YES;
		why = "an unannounced request body";
	} else {
		r = body_feed(&q->body, data, n);
		if (r == 0 || (r == -E2BIG && q->body.seen <= q->body.limit + API_BODY_DRAIN))
			return MHD_YES;
		why = r == -ENOMEM ? "out of memory for a request body"
				   : "a request body far beyond the route's limit";
	}
	if (log_ratelimit_ok(&a->rl_body, clock_mono_ms(), &suppressed))
		log_warnx("http: %s, connection closed%s", why,
			  suppressed ? " (similar lines suppressed)" : "");
	return MHD_NO;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
				  const char *method, const char *version,
				  const char *upload_data, size_t *upload_data_size, void **con_cls)
{
	struct api *a = cls;
	struct req *q = *con_cls;
	/* Acquire: once it reads false, everything api_attach set is seen. */
	struct call k = { .a = a, .c = c,
			  .loading = atomic_load_explicit(&a->loading, memory_order_acquire) };
	char *path, *qm, err[256];
	size_t path_len;
	enum MHD_Result mr;
	int r;

	if (!q)
		return send_oom(&k); /* the URI copy failed */
	if (q->len == SIZE_MAX) {
		k.v1 = memcmp(q->uri, "/v1", 3) == 0 && (q->uri[3] == '/' || q->uri[3] == '?');
		if (k.v1)
			k.synced = !k.loading && a->d.core ? mirror_synced(a->d.core) : false;
		return send_error(&k, MHD_HTTP_URI_TOO_LONG, "request URI too long");
	}
	path = q->uri;
	path_len = q->len;
	if ((qm = memchr(path, '?', path_len))) {
		k.query = qm + 1;
		k.query_len = path_len - (size_t)(k.query - path);
		path_len = (size_t)(qm - path);
	}
	k.v1 = path_len >= 3 && memcmp(path, "/v1", 3) == 0 && (path_len == 3 || path[3] == '/');
	if (k.v1)
		k.synced = !k.loading && a->d.core ? mirror_synced(a->d.core) : false;

	/*
	** libmicrohttpd 0.9.75 closes the connection after a response queued
	** on the first call (before it knows the request has no body), which
	** would cost every keep-alive client a TCP handshake per request: so
	** a route without a body answers on the last call, after the (empty)
	** body. 0.9.75 cannot queue a response while a body is being read, so
	** a body that arrives unannounced is dropped up to API_MAX_GET_BODY,
	** then the connection is closed.
	*/
	if (q->wait)
		return ep_intent_resumed(&k, q);
	if (!q->headers_done) {
		if (!fair_busy(a->fair, conn_of(c)))
			return send_error_hdr(&k, MHD_HTTP_SERVICE_UNAVAILABLE,
					      "too many connections, every one busy answering a request",
					      MHD_HTTP_HEADER_CONNECTION, "close");
		return on_head(&k, q, method, path, path_len);
	}
	if (*upload_data_size) {
		size_t n = *upload_data_size;

		*upload_data_size = 0;
		return on_upload(a, q, upload_data, n);
	}
	if (!q->rt)
		return send_error(&k, q->dropped ? MHD_HTTP_CONTENT_TOO_LARGE : MHD_HTTP_NOT_FOUND,
				  "no such path");
	if (q->rt->prefix) {
		k.tail = path + strlen(q->rt->path);
		k.tail_len = path_len - strlen(q->rt->path);
	}
	if (k.loading && !q->rt->while_loading)
		return send_error_hdr(&k, MHD_HTTP_SERVICE_UNAVAILABLE,
				      "loading the stored keys: only point reads are served yet",
				      MHD_HTTP_HEADER_RETRY_AFTER, "1");
	if (q->rt->body_max == 0) {
		if (q->dropped)
			return send_error(&k, MHD_HTTP_CONTENT_TOO_LARGE, "this request takes no body");
		if (!auth_ok(&k, q->rt->auth, &mr))
			return mr;
		return q->rt->fn(&k);
	}
	if ((r = body_json(&q->body, &k.body, err, sizeof(err))) < 0)
		return send_error(&k, r == -E2BIG ? MHD_HTTP_CONTENT_TOO_LARGE : MHD_HTTP_BAD_REQUEST, err);
	body_free(&q->body);
	k.q = q;
	mr = q->rt->fn(&k);
	json_decref(k.body);
	return mr;
}

/* ---- libmicrohttpd callbacks ------------------------------------------ */

static void *on_uri(void *cls, const char *uri, struct MHD_Connection *c)
{
	struct api *a = cls;
	size_t n = uri ? strlen(uri) : 0;
	struct req *q;

	if (n > a->max_uri) {
		/* Keep the first bytes, enough to tell a /v1 answer (which
		 * carries Statemirror-Synced, even as a 414). */
		if ((q = calloc(1, sizeof(*q) + 5))) {
			q->len = SIZE_MAX;
			memcpy(q->uri, uri, 4);
			q->uri[4] = '\0';
		}
		return q;
	}
	if (!(q = calloc(1, sizeof(*q) + n + 1)))
		return NULL;
	q->len = n;
	if (n)
		memcpy(q->uri, uri, n);
	q->uri[n] = '\0';
	return q;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	struct api *a = cls;
	struct req *q = *con_cls;

	if (q) {
		body_free(&q->body);
		if (q->wait)
			iwait_end(a, q);
	}
	free(q);
	*con_cls = NULL;
	/* Idle until the next head (or closed, if this one ended it). */
	fair_idle(a->fair, conn_of(c), clock_mono_ms());
}

static void log_fair(struct api *a, enum fair_reason why)
{
	static const char *const what[FAIR_REASON_MAX] = {
		[FAIR_RECLAIMED] = "a connection waiting for a request closed to make room",
		[FAIR_HEAD_TIMEOUT] = "a connection closed: no complete request head in time",
		[FAIR_REFUSED] = "a connection refused (503): every slot is busy answering",
	};
	uint32_t suppressed = 0;

	if (why == FAIR_HEAD_TIMEOUT) {
		log_debug("http: %s", what[why]);
		return;
	}
	if (!log_ratelimit_ok(&a->rl_fair, clock_mono_ms(), &suppressed))
		return;
	if (suppressed)
		log_warnx("http: %s (%u similar lines suppressed)", what[why], suppressed);
	else
		log_warnx("http: %s", what[why]);
}

/* fair's kill: end a connection libmicrohttpd holds. shutdown() only, not
 * close(): libmicrohttpd sees the end of the stream on its next poll and
 * closes the connection itself (NOTIFY_CLOSED, before the fd is closed:
 * fair's mutex keeps the fd ours until then). Runs under fair's mutex. */
static void fair_kill(void *ctx, int fd, enum fair_reason why)
{
	struct api *a = ctx;

	shutdown(fd, SHUT_RDWR);
	STAT_INC(http_conns_closed[why]);
	log_fair(a, why);
}

static bool fair_has_input(void *ctx, int fd)
{
	int n = 0;

	return ioctl(fd, FIONREAD, &n) == 0 && n > 0;
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
			  enum MHD_ConnectionNotificationCode code)
{
	struct api *a = cls;
	const union MHD_ConnectionInfo *fdi, *sai;
	const struct sockaddr *sa;
	socklen_t salen = 0;
	struct fair_conn *fc;
	bool refused;

	if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
		fair_close(a->fair, *socket_context);
		*socket_context = NULL;
		return;
	}
	fdi = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
	sai = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	sa = sai ? sai->client_addr : NULL;
	if (sa)
		salen = sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
			: sa->sa_family == AF_INET ? sizeof(struct sockaddr_in)
						    : sizeof(sa_family_t);
	if (!fdi || fair_open(a->fair, fdi->connect_fd, sa, salen, clock_mono_ms(), &fc, &refused) < 0) {
		/* Untracked: it only has libmicrohttpd's own limits. */
		*socket_context = NULL;
		return;
	}
	if (refused) {
		STAT_INC(http_conns_closed[FAIR_REFUSED]);
		log_fair(a, FAIR_REFUSED);
	}
	*socket_context = fc;
}

static void *reaper_main(void *arg)
{
	struct api *a = arg;

	pthread_mutex_lock(&a->reap_mu);
	while (!a->reap_stop) {
		int64_t now = clock_mono_ms(), next = fair_expire(a->fair, now);
		int64_t wait = next - now;
		struct timespec ts;

		if (wait > API_REAP_TICK_MS)
			wait = API_REAP_TICK_MS;
		if (wait < 1)
			wait = 1;
		clock_deadline(CLOCK_MONOTONIC, wait, &ts);
		pthread_cond_timedwait(&a->reap_cv, &a->reap_mu, &ts);
	}
	pthread_mutex_unlock(&a->reap_mu);
	return NULL;
}

/* Room for conns HTTP connections: raise the soft descriptor limit up to
 * the hard one if needed (systemd's default soft limit is 1024). */
static void ensure_fds(size_t conns)
{
	struct rlimit rl;
	rlim_t want = (rlim_t)conns + API_FD_RESERVE;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= want)
		return;
	if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want) {
		log_warnx("http: %llu file descriptors allowed, %llu wanted for the connection limits; "
			  "connections beyond wait in the listen queue",
			  (unsigned long long)rl.rlim_max, (unsigned long long)want);
		want = rl.rlim_max;
	}
	rl.rlim_cur = want;
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
		log_warn("http: setrlimit(RLIMIT_NOFILE, %llu)", (unsigned long long)want);
}

/* We never use libmicrohttpd's decoded URL or arguments: spare it the work. */
static size_t unescape_none(void *cls, struct MHD_Connection *c, char *s)
{
	return strlen(s);
}

__attribute__((format(printf, 2, 0)))
static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
	struct api *a = cls;
	char line[512];
	uint32_t suppressed = 0;
	size_t n;

	vsnprintf(line, sizeof(line), fmt, ap);
	n = strlen(line);
	while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
		line[--n] = '\0';
	/* A client that hangs up (a watcher closing its stream) is routine. */
	if (strstr(line, "closed by remote peer") || strstr(line, "Connection reset by peer")) {
		log_debug("http: %s", line);
		return;
	}
	/* What libmicrohttpd answers itself, before any handler of ours sees
	 * the request (431 headers too large, 414 while the request line is
	 * read, 400 for a malformed head): counted with the other answers,
	 * and logged by code and reason, without the HTML body it sent. */
	{
		const char *at = strstr(line, "HTTP response code is ");
		unsigned code;

		if (at && sscanf(at + 22, "%3u", &code) == 1 && code >= 400 && code <= 599) {
			count_code(code);
			snprintf(line, sizeof(line), "libmicrohttpd answered %u itself (%s); "
				 "connection closed", code,
				 code == 431 ? "headers too large" : code == 414 ? "request line too long"
				 : code == 505 ? "HTTP version not supported" : "malformed");
			n = strlen(line);
		}
	}
	if (!log_ratelimit_ok(&a->rl, clock_mono_ms(), &suppressed))
		return;
	if (suppressed)
		log_warnx("http: %s (%u similar lines suppressed)", line, suppressed);
	else
		log_warnx("http: %s", line);
}

/* ---- listeners -------------------------------------------------------- */

/* Parse "HOST:PORT" / "[V6]:PORT" ("" or "*" host = all IPv4 interfaces). */
static int parse_tcp(const char *spec, struct sockaddr_storage *ret_ss, char *err, size_t errlen)
{
	char host[256], port[8];
	const char *h, *p, *colon;
	size_t hlen;
	unsigned portnum = 0;
	struct addrinfo hints = { 0 }, *res = NULL;
	int r;

	if (spec[0] == '[') {
		const char *close = strchr(spec, ']');

		if (!close || close[1] != ':')
			goto fail_syntax;
		h = spec + 1;
		hlen = (size_t)(close - h);
		p = close + 2;
	} else {
		if (!(colon = strrchr(spec, ':')))
			goto fail_syntax;
		if (memchr(spec, ':', (size_t)(colon - spec))) {
			snprintf(err, errlen, "listen %s: put IPv6 addresses in brackets", spec);
			return -EINVAL;
		}
		h = spec;
		hlen = (size_t)(colon - spec);
		p = colon + 1;
	}
	if (hlen >= sizeof(host) || p[0] == '\0' || strlen(p) > 5 || strspn(p, "0123456789") != strlen(p))
		goto fail_syntax;
	for (const char *s = p; *s; s++)
		portnum = portnum * 10 + (unsigned)(*s - '0');
	if (portnum > 65535)
		goto fail_syntax;
	memcpy(host, h, hlen);
	host[hlen] = '\0';
	if (hlen == 0 || strcmp(host, "*") == 0)
		snprintf(host, sizeof(host), "0.0.0.0");
	snprintf(port, sizeof(port), "%s", p);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	if ((r = getaddrinfo(host, port, &hints, &res)) != 0) {
		snprintf(err, errlen, "listen %s: %s", spec, gai_strerror(r));
		return -EADDRNOTAVAIL;
	}
	memset(ret_ss, 0, sizeof(*ret_ss));
	memcpy(ret_ss, res->ai_addr, res->ai_addrlen);
	freeaddrinfo(res);
	return 0;

fail_syntax:
	snprintf(err, errlen, "listen %s: expected HOST:PORT, [V6ADDR]:PORT or unix:/path", spec);
	return -EINVAL;
}

/*
** Bind a unix socket: a leftover socket file from a dead process is
** replaced, a live one (something answers connect) or a non-socket file is
** not. Mode is applied before listen(), so no client connects earlier.
*/
static int listen_unix(const char *path, int mode, int *ret_fd, char *err, size_t errlen)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct stat st;
	int fd = -1, r;

	if (path[0] == '\0' || strlen(path) >= sizeof(sun.sun_path)) {
		snprintf(err, errlen, "listen unix:%s: path empty or too long", path);
		return -ENAMETOOLONG;
	}
	memcpy(sun.sun_path, path, strlen(path) + 1);
	if (lstat(path, &st) == 0) {
		int probe;

		if (!S_ISSOCK(st.st_mode)) {
			snprintf(err, errlen, "listen unix:%s: exists and is not a socket", path);
			return -EEXIST;
		}
		if ((probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
			goto fail_errno;
		if (connect(probe, (struct sockaddr *)&sun, sizeof(sun)) == 0) {
			close(probe);
			snprintf(err, errlen, "listen unix:%s: another process is listening", path);
			return -EADDRINUSE;
		}
		close(probe);
		if (unlink(path) < 0 && errno != ENOENT)
			goto fail_errno;
	}
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) < 0)
		goto fail_errno;
	if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0)
		goto fail_errno;
	if (chmod(path, (mode_t)mode) < 0 || listen(fd, SOMAXCONN) < 0) {
		r = -errno;
		unlink(path);
		errno = -r;
		goto fail_errno;
	}
	*ret_fd = fd;
	return 0;

fail_errno:
	r = -errno;
	snprintf(err, errlen, "listen unix:%s: %s", path, strerror(errno));
	if (fd >= 0)
		close(fd);
	return r;
}

static void format_addr(const struct sockaddr_storage *ss, unsigned port, char *out, size_t n)
{
	char host[INET6_ADDRSTRLEN] = "?";

	if (ss->ss_family == AF_INET6) {
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, host, sizeof(host));
		snprintf(out, n, "[%s]:%u", host, port);
	} else {
		inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, host, sizeof(host));
		snprintf(out, n, "%s:%u", host, port);
	}
}

/* ---- start / stop ----------------------------------------------------- */

static size_t clamp_sz(int64_t v, size_t lo, size_t hi)
{
	if (v < (int64_t)lo)
		return lo;
	if ((uint64_t)v > hi)
		return hi;
	return (size_t)v;
}

int api_start(const struct api_deps *d, struct api **ret, char *err, size_t errlen)
{
	const struct conf *conf = d->conf;
	const char *listen_spec = conf->http_listen ? conf->http_listen : "127.0.0.1:8080";
	struct MHD_OptionItem ops[12];
	struct sockaddr_storage ss;
	/* poll(), not epoll: libmicrohttpd 0.9.75 (Debian 12) waits on its
	 * epoll set again, with the full timeout, whenever one wait returned
	 * exactly 128 events, leaving those 128 unprocessed until the next
	 * event or connection timeout (up to 30 s). 256 clients closing at
	 * once stalled a worker that way. poll() costs O(connections) per
	 * wake-up, small at the default max_connections of 512; suspended
	 * watchers are left out of its set. */
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ERROR_LOG |
			 MHD_ALLOW_SUSPEND_RESUME;
	unsigned threads = (unsigned)clamp_sz(conf->http_threads, 1, 64);
	unsigned conns = (unsigned)clamp_sz(conf->http_max_conns, 1, 1u << 20);
	size_t nops = 0, mem, hard;
	size_t watch_max = conf->watch_max_clients > 0 ? (size_t)conf->watch_max_clients : 0;
	struct fair_limits fl = { 0 };
	pthread_condattr_t ca;
	uint16_t port = 0;
	int64_t topic_max = conf->max_topic_len > 0 ? conf->max_topic_len : 1024;
	int64_t payload_max = conf->max_payload > 0 ? conf->max_payload : 256 * 1024;
	char where[300];
	struct api *a;
	int fd = -1, r;

	if (!(a = calloc(1, sizeof(*a)))) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	a->d = *d;
	atomic_init(&a->loading, d->loading_from != NULL);
	a->rl = (struct log_ratelimit)LOG_RATELIMIT_INIT(10000, 20);
	a->rl_body = (struct log_ratelimit)LOG_RATELIMIT_INIT(10000, 5);
	a->rl_fair = (struct log_ratelimit)LOG_RATELIMIT_INIT(10000, 5);
	pthread_mutex_init(&a->reap_mu, NULL);
	pthread_mutex_init(&a->waits_mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&a->reap_cv, &ca);
	pthread_condattr_destroy(&ca);
	fl.max_conns = conns;
	fl.per_ip = clamp_sz(conf->http_per_ip_conns, 1, conns);
	fl.idle_ms = conf->http_timeout_ms > 0 ? conf->http_timeout_ms : 30000;
	fl.head_ms = fl.idle_ms < API_HEAD_TIMEOUT_MS ? fl.idle_ms : API_HEAD_TIMEOUT_MS;
	fl.kill = fair_kill;
	fl.has_input = fair_has_input;
	fl.ctx = a;
	if ((r = fair_new(&fl, &a->fair)) < 0) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	/* 3 bytes per percent-encoded byte, filter and after both as long as a topic. */
	a->max_uri = clamp_sz(6 * topic_max + 1024, API_MIN_URI, API_MAX_CONN_MEMORY / 2);
	mem = clamp_sz((int64_t)(2 * a->max_uri + API_CONN_MEMORY_HEADERS), 32u << 10, API_MAX_CONN_MEMORY);
	/* One record: a payload escaped at worst 6 bytes per byte, plus topic. */
	a->body_max = API_SOFT_BODY + 6 * (size_t)payload_max + 6 * (size_t)topic_max + 65536;

	if (conf->token_file && conf->token_file[0]) {
		if ((r = conf_read_secret(conf->token_file, &a->token)) < 0) {
			snprintf(err, errlen, "token_file %s: %s", conf->token_file, strerror(-r));
			goto fail;
		}
		a->token_len = strlen(a->token);
		if (a->token_len == 0) {
			snprintf(err, errlen, "token_file %s: empty token", conf->token_file);
			r = -EINVAL;
			goto fail;
		}
		/* Without an intent token, it also grants writes. */
		a->write_token = a->token;
		a->write_token_len = a->token_len;
	}
	if (conf->intent_token_file && conf->intent_token_file[0]) {
		if ((r = conf_read_secret(conf->intent_token_file, &a->intent_token)) < 0) {
			snprintf(err, errlen, "intent_token_file %s: %s", conf->intent_token_file,
				 strerror(-r));
			goto fail;
		}
		if (!a->intent_token[0]) {
			snprintf(err, errlen, "intent_token_file %s: empty token", conf->intent_token_file);
			r = -EINVAL;
			goto fail;
		}
		a->write_token = a->intent_token;
		a->write_token_len = strlen(a->intent_token);
	}
	a->intent_body_max = (size_t)conf->intent_max_body;
	a->ai = (struct api_intents){
		.in = d->intents, .ix = d->ix, .allow = conf->intent_allow,
		.nallow = conf->nintent_allow, .expire_ms = conf->intent_expire_ms,
		.timeout_ms = conf->intent_timeout_ms, .max_topic_len = (size_t)conf->max_topic_len,
	};

	if (strncmp(listen_spec, "unix:", 5) == 0) {
		if (!(a->unix_path = strdup(listen_spec + 5))) {
			r = -ENOMEM;
			snprintf(err, errlen, "out of memory");
			goto fail;
		}
		if ((r = listen_unix(a->unix_path, conf->socket_mode, &fd, err, errlen)) < 0) {
			free(a->unix_path);
			a->unix_path = NULL;
			goto fail;
		}
		ops[nops++] = (struct MHD_OptionItem){ MHD_OPTION_LISTEN_SOCKET, fd, NULL };
	} else {
		if ((r = parse_tcp(listen_spec, &ss, err, errlen)) < 0)
			goto fail;
		if (ss.ss_family == AF_INET6) {
			flags |= MHD_USE_IPv6;
			port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
		} else {
			port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
		}
		/* MHD_OPTION_LISTENING_ADDRESS_REUSE is left out on purpose: its
		 * default sets SO_REUSEADDR only, so a restart binds over the
		 * TIME_WAIT sockets of the connections it closed, while a second
		 * daemon on the same port still fails. Passing it with 1 would add
		 * SO_REUSEPORT (two daemons silently sharing the port); passing 0
		 * means "no reuse at all" in libmicrohttpd 0.9.75, which made a
		 * restart with watchers connected fail with EADDRINUSE. */
		ops[nops++] = (struct MHD_OptionItem){ MHD_OPTION_SOCK_ADDR, 0, &ss };
		/* No MHD_OPTION_PER_IP_CONNECTION_LIMIT: it would count loopback
		 * too, where every client of a sidecar shares one address; fair.c
		 * applies per_ip_connections to remote addresses only. */
	}
	if (threads > conns)
		threads = conns;
	if (threads > 1)
		ops[nops++] = (struct MHD_OptionItem){ MHD_OPTION_THREAD_POOL_SIZE, threads, NULL };
	/* fair.c keeps regular connections at `conns` by reclaiming waiting
	 * ones; libmicrohttpd's own limit (shared out among its threads) adds
	 * the watch streams and room for connections killed but not closed
	 * yet, so that it keeps accepting while it closes them. */
	hard = (size_t)conns + watch_max + conns / 4 + 64;
	ensure_fds(hard);
	ops[nops++] = (struct MHD_OptionItem){ MHD_OPTION_CONNECTION_LIMIT, (intptr_t)hard, NULL };
	ops[nops++] = (struct MHD_OptionItem){ MHD_OPTION_CONNECTION_TIMEOUT,
					       (intptr_t)clamp_sz((conf->http_timeout_ms + 999) / 1000, 1, 86400), NULL };
	ops[nops++] = (struct MHD_OptionItem){ MHD_OPTION_CONNECTION_MEMORY_LIMIT, (intptr_t)mem, NULL };
	ops[nops++] = (struct MHD_OptionItem){ MHD_OPTION_END, 0, NULL };

	errno = 0;
	/* The port argument only shows in libmicrohttpd's own messages. */
	a->mhd = MHD_start_daemon(flags, port, NULL, NULL, on_request, a,
				  MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, a,
				  MHD_OPTION_URI_LOG_CALLBACK, on_uri, a,
				  MHD_OPTION_NOTIFY_COMPLETED, on_completed, a,
				  MHD_OPTION_NOTIFY_CONNECTION, on_connection, a,
				  MHD_OPTION_UNESCAPE_CALLBACK, unescape_none, a,
				  MHD_OPTION_ARRAY, ops,
				  MHD_OPTION_END);
	if (!a->mhd) {
		r = errno ? -errno : -EIO;
		snprintf(err, errlen, "listen %s: cannot start the server: %s", listen_spec,
			 strerror(-r));
		goto fail;
	}
	fd = -1; /* libmicrohttpd owns and closes the listen socket now */

	if (a->unix_path) {
		snprintf(where, sizeof(where), "unix:%s", a->unix_path);
	} else {
		const union MHD_DaemonInfo *info = MHD_get_daemon_info(a->mhd, MHD_DAEMON_INFO_BIND_PORT);

		if (!info || info->port == 0) {
			r = -EIO;
			snprintf(err, errlen, "listen %s: cannot tell the bound port", listen_spec);
			goto fail;
		}
		format_addr(&ss, info->port, where, sizeof(where));
	}
	if ((r = pthread_create(&a->reaper, NULL, reaper_main, a)) != 0) {
		r = -r;
		snprintf(err, errlen, "cannot start the connection deadline thread: %s", strerror(-r));
		goto fail;
	}
	a->reaper_started = true;
	log_info("http listening on %s", where);
	*ret = a;
	return 0;

fail:
	if (fd >= 0) {
		close(fd);
		unlink(a->unix_path);
	}
	api_stop(a);
	return r;
}

void api_attach(struct api *a, const struct api_deps *d)
{
	a->d.ix = d->ix;
	a->ai.ix = d->ix;
	a->d.core = d->core;
	a->d.rejects = d->rejects;
	a->d.stale = d->stale;
	a->d.watch = d->watch;
	a->d.intents = d->intents;
	a->ai.in = d->intents;
	/* Release: a handler that reads false sees the fields above. */
	atomic_store_explicit(&a->loading, false, memory_order_release);
	log_info("http: serving from the loaded index");
}

void api_stop(struct api *a)
{
	if (!a)
		return;
	if (a->reaper_started) {
		pthread_mutex_lock(&a->reap_mu);
		a->reap_stop = true;
		pthread_cond_signal(&a->reap_cv);
		pthread_mutex_unlock(&a->reap_mu);
		pthread_join(a->reaper, NULL);
	}
	/* libmicrohttpd must not be stopped with suspended connections. */
	watch_shutdown(a->d.watch);
	iwait_release_all(a);
	if (a->mhd)
		MHD_stop_daemon(a->mhd);
	/* Every connection is closed now (NOTIFY_CLOSED for each). */
	fair_free(a->fair);
	pthread_cond_destroy(&a->reap_cv);
	pthread_mutex_destroy(&a->reap_mu);
	if (a->unix_path) {
		if (a->mhd)
			unlink(a->unix_path);
		free(a->unix_path);
	}
	if (a->token) {
		explicit_bzero(a->token, a->token_len);
		free(a->token);
	}
	if (a->intent_token) {
		explicit_bzero(a->intent_token, strlen(a->intent_token));
		free(a->intent_token);
	}
	pthread_mutex_destroy(&a->waits_mu);
	free(a);
}
