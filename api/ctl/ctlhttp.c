/* SPDX-License-Identifier: MIT */
/* ctlhttp.c: statemirrorctl's HTTP client: libcurl easy handles, answers into bounded buffers, an SSE line parser. */
#include "api/ctl/ctlhttp.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

struct ctl_conn {
	CURL *h;
	char *base;             /* without a trailing '/' */
	char *socket;
	struct curl_slist *auth; /* the Authorization header, or NULL */
	long timeout_ms;
	enum ctl_fail fail;
	char err[CURL_ERROR_SIZE + 128];
	char curl_err[CURL_ERROR_SIZE];
};

/* ---- connection ------------------------------------------------------- */

int ctl_conn_new(const struct ctl_conn_opts *o, struct ctl_conn **ret_conn, char *err, size_t errlen)
{
	const char *url = o->url ? o->url : "http://127.0.0.1:8080";
	struct ctl_conn *c;
	size_t n;
	static bool inited;

	if (o->socket && o->url) {
		snprintf(err, errlen, "--url and --socket exclude each other");
		return -EINVAL;
	}
	if (o->socket)
		url = "http://localhost";
	if (strncasecmp(url, "http://", 7) != 0 && strncasecmp(url, "https://", 8) != 0) {
		snprintf(err, errlen, "the URL must start with http:// or https://: %s", url);
		return -EINVAL;
	}
	if (o->token && (strchr(o->token, '\r') || strchr(o->token, '\n'))) {
		snprintf(err, errlen, "the token contains a line break");
		return -EINVAL;
	}
	if (!inited) {
		if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
			snprintf(err, errlen, "cannot initialise libcurl");
			return -ENOMEM;
		}
		inited = true;
	}
	if (!(c = calloc(1, sizeof(*c))))
		goto oom;
	if (!(c->h = curl_easy_init()) || !(c->base = strdup(url)) ||
	    (o->socket && !(c->socket = strdup(o->socket))))
		goto oom;
	n = strlen(c->base);
	while (n > 0 && c->base[n - 1] == '/')
		c->base[--n] = '\0';
	if (o->token) {
		struct buf hb;

		buf_init(&hb, 0);
		if (buf_printf(&hb, "Authorization: Bearer %s", o->token) < 0) {
			buf_free(&hb);
			goto oom;
		}
		c->auth = curl_slist_append(NULL, hb.data);
		buf_free(&hb);
		if (!c->auth)
			goto oom;
	}
	c->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : 10000;
	*ret_conn = c;
	return 0;
oom:
	ctl_conn_free(c);
	snprintf(err, errlen, "out of memory");
	return -ENOMEM;
}

void ctl_conn_free(struct ctl_conn *c)
{
	if (!c)
		return;
	if (c->h)
		curl_easy_cleanup(c->h);
	curl_slist_free_all(c->auth);
	free(c->base);
	free(c->socket);
	free(c);
}

const char *ctl_conn_error(const struct ctl_conn *c)
{
	return c->err;
}

enum ctl_fail ctl_conn_fail(const struct ctl_conn *c)
{
	return c->fail;
}

/* The handle set up for one request; stream: no overall time limit. */
static int setup(struct ctl_conn *c, const char *path, bool stream, long idle_ms,
		 struct curl_slist *extra)
{
	struct buf u;
	CURL *h = c->h;
	int r;

	curl_easy_reset(h);
	buf_init(&u, 0);
	if ((r = buf_puts(&u, c->base)) < 0 || (r = buf_puts(&u, path)) < 0) {
		buf_free(&u);
		return r;
	}
	c->curl_err[0] = '\0';
	curl_easy_setopt(h, CURLOPT_URL, u.data);
	buf_free(&u);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, c->curl_err);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_USERAGENT, "statemirrorctl/" SM_VERSION);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, c->timeout_ms);
	/* A proxy from the environment has no business between us and a local daemon. */
	curl_easy_setopt(h, CURLOPT_NOPROXY, "*");
	if (c->socket)
		curl_easy_setopt(h, CURLOPT_UNIX_SOCKET_PATH, c->socket);
	if (stream) {
		curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
		curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, (idle_ms + 999) / 1000);
	} else {
		curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, c->timeout_ms);
	}
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, extra ? extra : c->auth);
	return 0;
}

static void set_fail(struct ctl_conn *c, CURLcode cc)
{
	const char *detail = c->curl_err[0] ? c->curl_err : curl_easy_strerror(cc);

	switch (cc) {
	case CURLE_COULDNT_CONNECT:
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_OPERATION_TIMEDOUT:
	case CURLE_SEND_ERROR:
	case CURLE_RECV_ERROR:
	case CURLE_GOT_NOTHING:
	case CURLE_PARTIAL_FILE:
		c->fail = CTL_FAIL_UNREACHABLE;
		break;
	default:
		c->fail = CTL_FAIL_PROTOCOL;
		break;
	}
	if (c->socket)
		snprintf(c->err, sizeof(c->err), "%s (unix socket %s)", detail, c->socket);
	else
		snprintf(c->err, sizeof(c->err), "%s (%s)", detail, c->base);
}

/* ---- one GET ---------------------------------------------------------- */

struct collect {
	struct ctl_reply *rep;
	int err;
};

static size_t on_body(char *p, size_t size, size_t n, void *ctx)
{
	struct collect *k = ctx;
	int r = buf_append(&k->rep->body, p, size * n);

	if (r < 0) {
		k->err = r;
		return 0;
	}
	return size * n;
}

static size_t on_header(char *p, size_t size, size_t n, void *ctx)
{
	static const char name[] = "Statemirror-Synced:";
	struct ctl_reply *rep = ctx;
	size_t len = size * n, nl = sizeof(name) - 1;

	if (len > 5 && strncmp(p, "HTTP/", 5) == 0)
		rep->synced = -1; /* a new response (after a redirect or 100) */
	if (len > nl && strncasecmp(p, name, nl) == 0) {
		const char *v = p + nl;

		while (v < p + len && *v == ' ')
			v++;
		rep->synced = (size_t)(p + len - v) >= 4 && strncmp(v, "true", 4) == 0;
	}
	return len;
}

/* One GET, or a POST of json when it is not NULL. */
static int request(struct ctl_conn *c, const char *path, const char *json, struct ctl_reply *ret)
{
	struct ctl_reply rep = { .synced = -1 };
	struct collect k = { .rep = &rep };
	struct curl_slist *hdrs = NULL, *more;
	CURLcode cc;
	int r;

	buf_init(&rep.body, CTL_MAX_BODY);
	c->fail = CTL_FAIL_NONE;
	if (json) {
		/* "Expect:" keeps curl from waiting for a 100 Continue the daemon need not send. */
		if (!(hdrs = curl_slist_append(NULL, "Content-Type: application/json")) ||
		    !(more = curl_slist_append(hdrs, "Expect:")) ||
		    (c->auth && !(more = curl_slist_append(hdrs, c->auth->data)))) {
			r = -ENOMEM;
			goto fail;
		}
	}
	if ((r = setup(c, path, false, 0, hdrs)) < 0)
		goto fail;
	if (json) {
		curl_easy_setopt(c->h, CURLOPT_POSTFIELDS, json);
		curl_easy_setopt(c->h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(json));
	}
	curl_easy_setopt(c->h, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c->h, CURLOPT_WRITEDATA, &k);
	curl_easy_setopt(c->h, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(c->h, CURLOPT_HEADERDATA, &rep);
	cc = curl_easy_perform(c->h);
	if (cc == CURLE_WRITE_ERROR && k.err == -E2BIG) {
		c->fail = CTL_FAIL_PROTOCOL;
		snprintf(c->err, sizeof(c->err), "answer larger than %u MiB", CTL_MAX_BODY >> 20);
		r = -EIO;
		goto fail;
	}
	if (cc == CURLE_WRITE_ERROR && k.err < 0) {
		r = k.err;
		goto fail;
	}
	if (cc != CURLE_OK) {
		set_fail(c, cc);
		r = -EIO;
		goto fail;
	}
	if (buf_append(&rep.body, "", 0) < 0) { /* a NUL-terminated body, even when empty */
		r = -ENOMEM;
		goto fail;
	}
	curl_easy_getinfo(c->h, CURLINFO_RESPONSE_CODE, &rep.status);
	curl_slist_free_all(hdrs);
	*ret = rep;
	return 0;
fail:
	curl_slist_free_all(hdrs);
	buf_free(&rep.body);
	return r;
}

int ctl_get(struct ctl_conn *c, const char *path, struct ctl_reply *ret)
{
	return request(c, path, NULL, ret);
}

int ctl_post_json(struct ctl_conn *c, const char *path, const char *json, struct ctl_reply *ret)
{
	return request(c, path, json, ret);
}

void ctl_reply_free(struct ctl_reply *r)
{
	if (r)
		buf_free(&r->body);
}

/* ---- the event stream ------------------------------------------------- */

struct sse {
	struct ctl_conn *c;
	ctl_sse_fn fn;
	void *ctx;
	int stopped;            /* the callback's value */
	int err;
	long status;            /* 0 until the first body byte */
	struct ctl_reply *errrep;
	struct buf line;
	struct buf event, id, data;
	bool has_id, has_data;
};

static void sse_reset_event(struct sse *s)
{
	buf_reset(&s->event);
	buf_reset(&s->data);
	s->has_data = false;
	s->has_id = false;
}

/* One complete line, without its end of line. Returns 0 or the callback's stop value / -errno. */
static int sse_line(struct sse *s, const char *l, size_t n)
{
	const char *colon, *v;
	size_t fl, vl;
	int r;

	if (n == 0) { /* dispatch */
		struct ctl_sse_event ev;

		if (!s->has_data) {
			sse_reset_event(s);
			return 0;
		}
		if ((r = buf_append(&s->data, "", 0)) < 0 || (r = buf_append(&s->event, "", 0)) < 0 ||
		    (r = buf_append(&s->id, "", 0)) < 0)
			return r;
		ev.event = s->event.len ? s->event.data : "message";
		ev.id = s->has_id ? s->id.data : NULL;
		ev.data = s->data.data;
		ev.data_len = s->data.len;
		r = s->fn(&ev, s->ctx);
		sse_reset_event(s);
		return r;
	}
	if (l[0] == ':')
		return 0; /* a comment: the heartbeat */
	colon = memchr(l, ':', n);
	fl = colon ? (size_t)(colon - l) : n;
	v = colon ? colon + 1 : l + n;
	if (v < l + n && *v == ' ')
		v++;
	vl = (size_t)(l + n - v);
	if (fl == 5 && memcmp(l, "event", 5) == 0) {
		buf_reset(&s->event);
		return buf_append(&s->event, v, vl);
	}
	if (fl == 4 && memcmp(l, "data", 4) == 0) {
		if (s->has_data && (r = buf_putc(&s->data, '\n')) < 0)
			return r;
		s->has_data = true;
		return buf_append(&s->data, v, vl);
	}
	if (fl == 2 && memcmp(l, "id", 2) == 0 && !memchr(v, '\0', vl)) {
		buf_reset(&s->id);
		s->has_id = true;
		return buf_append(&s->id, v, vl);
	}
	return 0; /* retry: and unknown fields */
}

static size_t on_stream(char *p, size_t size, size_t n, void *ctx)
{
	struct sse *s = ctx;
	size_t len = size * n, i = 0;
	int r;

	if (!s->status)
		curl_easy_getinfo(s->c->h, CURLINFO_RESPONSE_CODE, &s->status);
	if (s->status != 200) {
		if ((r = buf_append(&s->errrep->body, p, len)) < 0) {
			s->err = r;
			return 0;
		}
		return len;
	}
	while (i < len) {
		char *nl = memchr(p + i, '\n', len - i);
		size_t chunk = nl ? (size_t)(nl - (p + i)) : len - i;

		if ((r = buf_append(&s->line, p + i, chunk)) < 0) {
			s->err = r;
			return 0;
		}
		i += chunk;
		if (!nl)
			break;
		i++; /* the '\n' */
		if (s->line.len && s->line.data[s->line.len - 1] == '\r')
			s->line.len--;
		r = sse_line(s, s->line.data ? s->line.data : "", s->line.len);
		buf_reset(&s->line);
		if (r < 0) {
			s->err = r;
			return 0;
		}
		if (r > 0) {
			s->stopped = r;
			return 0;
		}
	}
	return len;
}

int ctl_stream(struct ctl_conn *c, const char *path, const char *last_event_id, long idle_ms,
	       ctl_sse_fn fn, void *ctx, struct ctl_reply *ret_err)
{
	struct ctl_reply rep = { .synced = -1 };
	struct sse s = { .c = c, .fn = fn, .ctx = ctx, .errrep = &rep };
	struct curl_slist *hdrs = NULL;
	struct buf hb;
	CURLcode cc;
	int r;

	buf_init(&rep.body, 1u << 20);
	buf_init(&s.line, CTL_MAX_LINE);
	buf_init(&s.event, 256);
	buf_init(&s.id, 256);
	buf_init(&s.data, CTL_MAX_LINE);
	buf_init(&hb, 0);
	c->fail = CTL_FAIL_NONE;
	if (buf_puts(&hb, "Accept: text/event-stream") < 0 ||
	    !(hdrs = curl_slist_append(NULL, hb.data)))
		goto oom;
	if (c->auth && !curl_slist_append(hdrs, c->auth->data))
		goto oom;
	if (last_event_id) {
		buf_reset(&hb);
		if (buf_printf(&hb, "Last-Event-ID: %s", last_event_id) < 0 ||
		    !curl_slist_append(hdrs, hb.data))
			goto oom;
	}
	if ((r = setup(c, path, true, idle_ms, hdrs)) < 0)
		goto out;
	curl_easy_setopt(c->h, CURLOPT_WRITEFUNCTION, on_stream);
	curl_easy_setopt(c->h, CURLOPT_WRITEDATA, &s);
	curl_easy_setopt(c->h, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(c->h, CURLOPT_HEADERDATA, &rep);
	cc = curl_easy_perform(c->h);
	if (!s.status)
		curl_easy_getinfo(c->h, CURLINFO_RESPONSE_CODE, &s.status);
	rep.status = s.status;
	if (s.stopped) {
		r = s.stopped;
	} else if (s.err == -E2BIG) {
		c->fail = CTL_FAIL_PROTOCOL;
		snprintf(c->err, sizeof(c->err), "an event longer than %u MiB", CTL_MAX_LINE >> 20);
		r = -EIO;
	} else if (s.err < 0) {
		r = s.err;
	} else if (s.status && s.status != 200 && (cc == CURLE_OK || cc == CURLE_PARTIAL_FILE)) {
		r = buf_append(&rep.body, "", 0) < 0 ? -ENOMEM : -EPROTO;
		if (r == -EPROTO && ret_err) {
			*ret_err = rep;
			rep.body.data = NULL; /* moved */
			buf_init(&rep.body, 0);
		}
	} else if (cc != CURLE_OK) {
		set_fail(c, cc);
		r = -EIO;
	} else {
		c->fail = CTL_FAIL_UNREACHABLE;
		snprintf(c->err, sizeof(c->err), "the daemon closed the stream");
		r = 0;
	}
	goto out;
oom:
	r = -ENOMEM;
out:
	curl_slist_free_all(hdrs);
	buf_free(&hb);
	buf_free(&s.line);
	buf_free(&s.event);
	buf_free(&s.id);
	buf_free(&s.data);
	buf_free(&rep.body);
	return r;
}

/* ---- URLs ------------------------------------------------------------- */

int ctl_pct_encode(struct buf *b, const char *s, bool keep_slash)
{
	static const char hex[] = "0123456789ABCDEF";
	int r;

	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		unsigned char ch = *p;
		bool plain = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
			     (ch >= '0' && ch <= '9') || ch == '-' || ch == '.' || ch == '_' ||
			     ch == '~' || (keep_slash && ch == '/');
		char esc[3] = { '%', hex[ch >> 4], hex[ch & 15] };

		if ((r = plain ? buf_putc(b, (char)ch) : buf_append(b, esc, 3)) < 0)
			return r;
	}
	return 0;
}
