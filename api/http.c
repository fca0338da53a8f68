/* SPDX-License-Identifier: MIT */
/* http.c: the HTTP server: listeners, limits, bearer auth, routing and the JSON endpoints. */
#include "api/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <microhttpd.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/stats.h"
#include "common/topic.h"
#include "api/metrics.h"
#include "api/pathdec.h"
#include "api/render.h"
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
#define API_LIST_DEFAULT 100
#define API_LIST_MAX 10000
/* Records (or bytes) rendered per hold of the index read lock: a writer
 * (ingest, the keeper thread) never waits behind a whole 10000-record page,
 * nor behind a few big payloads read back from the file. */
#define API_CHUNK_RECORDS 64
#define API_CHUNK_BYTES (64u << 10)
#define API_CHUNK_VISITS 4096

#define CT_JSON "application/json"
#define CT_METRICS "text/plain; version=0.0.4; charset=utf-8"

struct api {
	struct MHD_Daemon *mhd;
	struct api_deps d;
	char *token;            /* NULL: no auth */
	size_t token_len;
	char *unix_path;        /* unlinked at stop */
	size_t max_uri;
	size_t body_max;        /* hard limit of one response body */
	struct log_ratelimit rl;
};

/* Per request: a copy of the raw request-target, taken before
 * libmicrohttpd unescapes it (it turns '+' into ' ' in query values,
 * which would break the filter "a/+/b"). We decode it ourselves, once. */
struct req {
	size_t len;             /* SIZE_MAX: longer than max_uri */
	size_t body;            /* request body bytes seen (and dropped) */
	bool headers_done;      /* the first handler call happened */
	char uri[];
};

/* What a handler needs to answer. */
struct call {
	struct api *a;
	struct MHD_Connection *c;
	bool v1;                /* add Statemirror-Synced */
	bool synced;
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

/* ---- query parameters ------------------------------------------------- */

/* "true" / "false"; absent leaves *ret alone. Returns 0 or -EINVAL. */
static int param_bool(const struct pathdec_param *p, size_t n, const char *key, int *ret)
{
	const struct pathdec_param *v;
	int r = pathdec_get(p, n, key, &v);

	if (r == -ENOENT)
		return 0;
	if (r < 0)
		return r;
	if (v->val_len == 4 && memcmp(v->val, "true", 4) == 0)
		*ret = 1;
	else if (v->val_len == 5 && memcmp(v->val, "false", 5) == 0)
		*ret = 0;
	else
		return -EINVAL;
	return 0;
}

/* A decimal in 1..max; absent leaves *ret alone. Returns 0 or -EINVAL. */
static int param_limit(const struct pathdec_param *p, size_t n, const char *key, size_t max,
		       size_t *ret)
{
	const struct pathdec_param *v;
	int r = pathdec_get(p, n, key, &v);
	size_t x = 0;

	if (r == -ENOENT)
		return 0;
	if (r < 0)
		return r;
	if (v->val_len == 0 || v->val_len > 6)
		return -EINVAL;
	for (size_t i = 0; i < v->val_len; i++) {
		if (v->val[i] < '0' || v->val[i] > '9')
			return -EINVAL;
		x = x * 10 + (size_t)(v->val[i] - '0');
	}
	if (x < 1 || x > max)
		return -EINVAL;
	*ret = x;
	return 0;
}

/* A string without NUL bytes; absent leaves *ret alone. */
static int param_str(const struct pathdec_param *p, size_t n, const char *key,
		     const struct pathdec_param **ret)
{
	const struct pathdec_param *v;
	int r = pathdec_get(p, n, key, &v);

	if (r == -ENOENT)
		return 0;
	if (r < 0)
		return r;
	if (memchr(v->val, '\0', v->val_len))
		return -EINVAL;
	*ret = v;
	return 0;
}

/* ---- the record walk behind /v1/keys and /v1/stale -------------------- */

struct walk {
	struct buf *b;
	const struct index *ix; /* the walked index (payloads in the file, walk_run) */
	const char *filter;
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
	struct buf cursor;      /* topic of the last record rendered */
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
	if (!topic_matches(w->filter, rec_topic(r), r->topic_len))
		return 0;
	if (w->n == w->limit || (w->n && w->b->len >= API_SOFT_BODY)) {
		w->more = true;
		return 1;
	}
	mark = w->b->len;
	ret = w->n ? buf_putc(w->b, ',') : 0;
	if (ret == 0)
		ret = render_record(w->b, w->ix, r, w->now_ms);
	if (ret < 0) {
		w->b->len = mark;
		w->b->data[mark] = '\0';
		if (ret == -E2BIG && w->n)
			w->more = true; /* the next page starts with it */
		else
			w->err = ret;
		return 1;
	}
	buf_reset(&w->cursor);
	if ((ret = buf_append(&w->cursor, rec_topic(r), r->topic_len)) < 0) {
		w->err = ret;
		return 1;
	}
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

	w->ix = a->d.ix;
	do {
		w->paused = false;
		w->chunk_left = API_CHUNK_RECORDS;
		w->chunk_end = w->b->len + API_CHUNK_BYTES;
		w->visit_left = API_CHUNK_VISITS;
		w->prev = NULL;
		index_rdlock(a->d.ix);
		/* Payloads in the file come from one range scan per hold. */
		rec_payload_scan(a->d.ix, cur ? cur : w->filter, cur ? cur_len : plen);
		index_walk(a->d.ix, w->filter, plen, cur, cur_len, walk_visit, w);
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
static int list_args_parse(struct call *k, char *query, size_t query_len, bool with_stale,
			   struct list_args *la, enum MHD_Result *ret_mhd)
{
	struct pathdec_param params[PATHDEC_MAX_PARAMS];
	const struct pathdec_param *f = NULL, *af = NULL;
	size_t np = 0;
	int r;

	la->filter = "#";
	la->after = NULL;
	la->after_len = 0;
	la->limit = API_LIST_DEFAULT;
	la->stale = -1;
	if (query && (r = pathdec_query(query, query_len, params, PATHDEC_MAX_PARAMS, &np)) < 0) {
		*ret_mhd = send_error(k, MHD_HTTP_BAD_REQUEST,
				      r == -E2BIG ? "too many query parameters"
						  : "bad percent-encoding in the query");
		return r;
	}
	if ((r = param_str(params, np, "filter", &f)) < 0 || (f && topic_filter_check(f->val) < 0)) {
		*ret_mhd = send_error(k, MHD_HTTP_BAD_REQUEST, "invalid filter");
		return r < 0 ? r : -EINVAL;
	}
	if (f)
		la->filter = f->val;
	if ((r = param_str(params, np, "after", &af)) < 0) {
		*ret_mhd = send_error(k, MHD_HTTP_BAD_REQUEST, "invalid after");
		return r;
	}
	if (af) {
		la->after = af->val;
		la->after_len = af->val_len;
	}
	if ((r = param_limit(params, np, "limit", API_LIST_MAX, &la->limit)) < 0) {
		*ret_mhd = send_error(k, MHD_HTTP_BAD_REQUEST, "invalid limit (1..10000)");
		return r;
	}
	if (with_stale && (r = param_bool(params, np, "stale", &la->stale)) < 0) {
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

static enum MHD_Result ep_key(struct call *k, char *t, size_t tlen)
{
	struct api *a = k->a;
	struct buf b;
	struct rec *r;
	size_t n;
	int64_t now_ms;
	bool found = false;
	int ret = 0;

	if (pathdec_decode(t, tlen, t, &n) < 0)
		return send_error(k, MHD_HTTP_BAD_REQUEST, "bad percent-encoding in the topic");
	if (n == 0)
		return send_error(k, MHD_HTTP_BAD_REQUEST, "empty topic");
	if (memchr(t, '\0', n))
		return send_error(k, MHD_HTTP_BAD_REQUEST, "topic contains a NUL byte");
	buf_init(&b, a->body_max);
	now_ms = clock_wall_ms();
	index_rdlock(a->d.ix);
	r = index_get(a->d.ix, t, n);
	if (r && !(r->flags & REC_DELETED)) {
		found = true;
		ret = render_record(&b, a->d.ix, r, now_ms);
	}
	index_unlock(a->d.ix);
	if (!found) {
		buf_free(&b);
		return send_error(k, MHD_HTTP_NOT_FOUND, "no such key");
	}
	if (ret < 0)
		return send_render_error(k, &b, ret);
	return send_buf(k, MHD_HTTP_OK, &b, CT_JSON);
}

static enum MHD_Result ep_keys(struct call *k, char *query, size_t query_len)
{
	struct list_args la;
	struct walk w;
	struct buf b;
	enum MHD_Result mr;
	int r;

	if (list_args_parse(k, query, query_len, true, &la, &mr) < 0)
		return mr;
	buf_init(&b, k->a->body_max);
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

static void group_visit(const char *prefix, uint64_t count, void *ctx)
{
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
	if ((r = buf_puts(g->b, g->ngroups ? ",{\"prefix\":" : "{\"prefix\":")) < 0 ||
	    (r = buf_json_str(g->b, prefix, strlen(prefix))) < 0 ||
	    (r = buf_printf(g->b, ",\"count\":%llu}", (unsigned long long)count)) < 0) {
		g->b->len = mark;
		g->b->data[mark] = '\0';
		g->err = r;
		return;
	}
	g->ngroups++;
}

static enum MHD_Result ep_stale(struct call *k, char *query, size_t query_len)
{
	struct api *a = k->a;
	struct groups_ctx g = { 0 };
	struct list_args la;
	struct walk w;
	struct buf b, gb;
	enum MHD_Result mr;
	int r;

	if (list_args_parse(k, query, query_len, false, &la, &mr) < 0)
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

	if (k->a->d.core)
		ready = mirror_ready(k->a->d.core, reason, sizeof(reason));
	if (ready)
		return send_literal(k, MHD_HTTP_OK, "{\"ready\":true}");
	reason[sizeof(reason) - 1] = '\0';
	buf_init(&b, 4096);
	if ((r = buf_puts(&b, "{\"ready\":false,\"reason\":")) < 0 ||
	    (r = buf_json_str(&b, reason, strlen(reason))) < 0 || (r = buf_putc(&b, '}')) < 0)
		return send_render_error(k, &b, r);
	return send_buf(k, MHD_HTTP_SERVICE_UNAVAILABLE, &b, CT_JSON);
}

static enum MHD_Result ep_metrics(struct call *k)
{
	struct api *a = k->a;
	struct metrics_extra x = { 0 };
	char reason[64];
	struct buf b;
	int r;

	if (a->d.core)
		x.ready = mirror_ready(a->d.core, reason, sizeof(reason));
	buf_init(&b, a->body_max);
	if ((r = metrics_render(&b, &x)) < 0)
		return send_render_error(k, &b, r);
	return send_buf(k, MHD_HTTP_OK, &b, CT_METRICS);
}

static enum MHD_Result ep_watch(struct call *k, char *query, size_t query_len)
{
	struct MHD_Response *resp = NULL;
	const char *why = "watch streams are off";
	int r = -EBUSY;

	if (k->a->d.watch)
		r = watch_open(k->a->d.watch, k->c, query, query_len,
			       MHD_lookup_connection_value(k->c, MHD_HEADER_KIND, "Last-Event-ID"),
			       &resp, &why);
	if (r == -EINVAL)
		return send_error(k, MHD_HTTP_BAD_REQUEST, why);
	if (r == -EBUSY)
		return send_error(k, MHD_HTTP_SERVICE_UNAVAILABLE, why);
	if (r < 0)
		return send_oom(k);
	return queue(k, MHD_HTTP_OK, resp, "text/event-stream", NULL, NULL);
}

/* ---- routing ---------------------------------------------------------- */

static bool path_is(const char *p, size_t n, const char *lit)
{
	size_t l = strlen(lit);

	return n == l && memcmp(p, lit, l) == 0;
}

/* Compares every byte of the configured token whatever the input, so the
 * time taken says nothing about how much of a guess was right. */
static bool token_ok(const struct api *a, const char *h)
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
	diff = n != a->token_len;
	for (size_t i = 0; i < a->token_len; i++)
		diff |= (unsigned char)a->token[i] ^ (unsigned char)(i < n ? h[i] : 0);
	return diff == 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
				  const char *method, const char *version,
				  const char *upload_data, size_t *upload_data_size, void **con_cls)
{
	struct api *a = cls;
	struct req *q = *con_cls;
	struct call k = { .a = a, .c = c };
	char *path, *query = NULL, *qm;
	size_t path_len, query_len = 0;

	if (!q)
		return send_oom(&k); /* the URI copy failed */
	if (q->len == SIZE_MAX) {
		k.v1 = memcmp(q->uri, "/v1", 3) == 0 && (q->uri[3] == '/' || q->uri[3] == '?');
		if (k.v1)
			k.synced = a->d.core ? mirror_synced(a->d.core) : false;
		return send_error(&k, MHD_HTTP_URI_TOO_LONG, "request URI too long");
	}
	path = q->uri;
	path_len = q->len;
	if ((qm = memchr(path, '?', path_len))) {
		query = qm + 1;
		query_len = path_len - (size_t)(query - path);
		path_len = (size_t)(qm - path);
	}
	k.v1 = path_len >= 3 && memcmp(path, "/v1", 3) == 0 && (path_len == 3 || path[3] == '/');
	if (k.v1)
		k.synced = a->d.core ? mirror_synced(a->d.core) : false;

	if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
		return send_error_hdr(&k, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed",
				      MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
	/*
	** libmicrohttpd 0.9.75 closes the connection after a response queued
	** on the first call (before it knows the request has no body), which
	** would cost every keep-alive client a TCP handshake per request: so
	** answer on the second call, after the (empty) body. A request that
	** announces a body is refused at once with 413 (libmicrohttpd then
	** closes the connection instead of reading the body); 0.9.75 cannot
	** queue a response while a body is being read, so a body that arrives
	** unannounced is dropped up to API_MAX_GET_BODY, then the connection
	** is closed.
	*/
	if (!q->headers_done) {
		const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
							     MHD_HTTP_HEADER_CONTENT_LENGTH);

		if ((cl && strcmp(cl, "0") != 0) ||
		    MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING))
			return send_error(&k, MHD_HTTP_CONTENT_TOO_LARGE, "GET requests take no body");
		q->headers_done = true;
		return MHD_YES;
	}
	if (*upload_data_size) {
		q->body += *upload_data_size;
		*upload_data_size = 0;
		return q->body > API_MAX_GET_BODY ? MHD_NO : MHD_YES;
	}
	if (q->body)
		return send_error(&k, MHD_HTTP_CONTENT_TOO_LARGE, "GET requests take no body");
	if (path_is(path, path_len, "/healthz"))
		return send_literal(&k, MHD_HTTP_OK, "{\"ok\":true}");
	if (a->token &&
	    !token_ok(a, MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION)))
		return send_error_hdr(&k, MHD_HTTP_UNAUTHORIZED, "missing or invalid bearer token",
				      MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"statemirror\"");

	if (path_len > 9 && memcmp(path, "/v1/keys/", 9) == 0)
		return ep_key(&k, path + 9, path_len - 9);
	if (path_is(path, path_len, "/v1/keys"))
		return ep_keys(&k, query, query_len);
	if (path_is(path, path_len, "/v1/stale"))
		return ep_stale(&k, query, query_len);
	if (path_is(path, path_len, "/v1/watch"))
		return ep_watch(&k, query, query_len);
	if (path_is(path, path_len, "/v1/rejects"))
		return ep_rejects(&k);
	if (path_is(path, path_len, "/readyz"))
		return ep_readyz(&k);
	if (path_is(path, path_len, "/metrics"))
		return ep_metrics(&k);
	if (path_is(path, path_len, "/v1/keys/"))
		return send_error(&k, MHD_HTTP_BAD_REQUEST, "empty topic");
	return send_error(&k, MHD_HTTP_NOT_FOUND, "no such path");
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
		if ((q = malloc(sizeof(*q) + 5))) {
			q->len = SIZE_MAX;
			q->body = 0;
			q->headers_done = false;
			memcpy(q->uri, uri, 4);
			q->uri[4] = '\0';
		}
		return q;
	}
	if (!(q = malloc(sizeof(*q) + n + 1)))
		return NULL;
	q->len = n;
	q->body = 0;
	q->headers_done = false;
	if (n)
		memcpy(q->uri, uri, n);
	q->uri[n] = '\0';
	return q;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	free(*con_cls);
	*con_cls = NULL;
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
	size_t nops = 0, mem;
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
	a->rl = (struct log_ratelimit)LOG_RATELIMIT_INIT(10000, 20);
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
	}

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
		ops[nops++] = (struct MHD_OptionItem){ MHD_OPTION_PER_IP_CONNECTION_LIMIT,
						       (intptr_t)clamp_sz(conf->http_per_ip_conns, 1, conns), NULL };
	}
	if (threads > conns)
		threads = conns;
	if (threads > 1)
		ops[nops++] = (struct MHD_OptionItem){ MHD_OPTION_THREAD_POOL_SIZE, threads, NULL };
	ops[nops++] = (struct MHD_OptionItem){ MHD_OPTION_CONNECTION_LIMIT, conns, NULL };
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

void api_stop(struct api *a)
{
	if (!a)
		return;
	/* libmicrohttpd must not be stopped with suspended connections. */
	watch_shutdown(a->d.watch);
	if (a->mhd)
		MHD_stop_daemon(a->mhd);
	if (a->unix_path) {
		if (a->mhd)
			unlink(a->unix_path);
		free(a->unix_path);
	}
	if (a->token) {
		explicit_bzero(a->token, a->token_len);
		free(a->token);
	}
	free(a);
}
