/* SPDX-License-Identifier: MIT */
/* test_watch.c: the watch hub through a real libmicrohttpd daemon: snapshot then synced, resume, gaps, slow listeners, filters. */
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include "common/conf.h"
#include "common/log.h"
#include "common/stats.h"
#include "api/watch.h"
#include "mirror/state/apply.h"
#include "mirror/state/changes.h"
#include "mirror/state/index.h"
#include "clock_fake.h"

/*
** The hub is tied to libmicrohttpd (it suspends and resumes connections,
** shuts sockets of listeners it cuts off), so it is tested the way it
** runs: a libmicrohttpd daemon on a free loopback port, configured as
** api/http.c configures it, whose only route opens a stream with
** watch_open(); clients are plain sockets that read the Server-Sent
** Events. Changes are applied to the index and appended to the change log
** as the mirror does it (apply_message, changes_append, watch_wake).
** Waits are on sockets (poll with a deadline), never on a timer.
*/

#define WAIT_MS 10000

static struct conf conf;
static struct index *ix;
static struct changes *cl;
static struct watch *hub;
static struct MHD_Daemon *mhd;
static int port;
static int64_t rev;     /* the mirror's revision counter */
static int64_t seq;     /* makes each message's ts newer than the last */

/* ---- the one route: a watch stream ---- */

/* The query comes in an X-Query header: the raw query string is
 * api/http.c's business (pathdec has its own tests). */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
				  const char *method, const char *version, const char *data,
				  size_t *size, void **con_cls)
{
	static int started;
	const char *q = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Query");
	const char *why = "";
	struct MHD_Response *resp = NULL;
	enum MHD_Result ret;
	char query[512];
	int r;

	(void)cls;
	(void)url;
	(void)method;
	(void)version;
	(void)data;
	(void)size;
	if (!*con_cls) {
		*con_cls = &started;
		return MHD_YES;
	}
	snprintf(query, sizeof(query), "%s", q ? q : "");
	r = watch_open(hub, c, query, strlen(query),
		       MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Last-Event-ID"), &resp, &why);
	if (r < 0) {
		resp = MHD_create_response_from_buffer(strlen(why), (void *)why, MHD_RESPMEM_PERSISTENT);
		ret = MHD_queue_response(c, r == -EINVAL ? MHD_HTTP_BAD_REQUEST
							 : MHD_HTTP_SERVICE_UNAVAILABLE, resp);
		MHD_destroy_response(resp);
		return ret;
	}
	ret = MHD_queue_response(c, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp);
	return ret;
}

/* Start the hub over a change log of log_cap changes after base_rev, and
 * the daemon. conf's watch settings may be set before. */
static void start(size_t log_cap, int64_t base_rev)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t alen = sizeof(a);
	int sndbuf = 16384, fd;

	rev = base_rev;
	cl = changes_new(log_cap, base_rev);
	ck_assert_ptr_nonnull(cl);
	ck_assert_int_eq(watch_new(&conf, ix, cl, &hub), 0);
	/* Our own listening socket: its small send buffer (the accepted
	 * sockets inherit it, and it turns autotuning off) makes "the client
	 * stopped reading" reach the hub after a few hundred KiB, on any
	 * machine's TCP settings. */
	fd = socket(AF_INET, SOCK_STREAM, 0);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)), 0);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
	ck_assert_int_eq(listen(fd, 64), 0);
	port = ntohs(a.sin_port);
	/* As api/http.c starts it. */
	mhd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL |
			       MHD_ALLOW_SUSPEND_RESUME, 0, NULL, NULL, on_request, NULL,
			       MHD_OPTION_THREAD_POOL_SIZE, 2,
			       MHD_OPTION_LISTEN_SOCKET, fd,
			       MHD_OPTION_END);
	ck_assert_ptr_nonnull(mhd);
}

static void setup(void)
{
	ck_assert_int_eq(conf_defaults(&conf), 0);
	memset(&g_stats, 0, sizeof(g_stats));
	log_set_level(LOG_LEVEL_ERROR);
	ix = index_new();
	ck_assert_ptr_nonnull(ix);
	seq = 0;
	hub = NULL;
	mhd = NULL;
	cl = NULL;
}

static void teardown(void)
{
	watch_shutdown(hub);
	if (mhd)
		MHD_stop_daemon(mhd);
	watch_free(hub);
	changes_free(cl);
	index_free(ix);
	conf_free(&conf);
}

/* ---- changes, as the mirror makes them ---- */

static void put_n(const char *topic, const void *payload, size_t len)
{
	int64_t now = fake_now_ms;
	struct apply_limits lim = { conf.future_skew_ms, conf.max_keys };
	struct msg m = {
		.topic = topic, .topic_len = strlen(topic), .payload = len ? payload : "",
		.payload_len = len, .ts_ns = now * 1000000 + ++seq, .recv_ms = now,
		.is_json = true,
	};
	enum reject_reason why = REJECT_NONE;
	enum apply_result res;
	struct rec *r = NULL;
	bool live = false;

	index_wrlock(ix);
	res = apply_message(ix, &m, now, &lim, &rev, &r, &live, &why, NULL);
	ck_assert(res == APPLY_APPLIED || res == APPLY_DELETED);
	changes_append(cl, r, res == APPLY_DELETED ? CHANGE_DELETE : CHANGE_UPDATE);
	index_unlock(ix);
	watch_wake(hub);
}

static void put(const char *topic, const char *payload)
{
	put_n(topic, payload, strlen(payload));
}

/* ---- a client: a socket that reads Server-Sent Events ---- */

struct cli {
	int fd;
	char *buf;
	size_t len, cap, off; /* bytes [off, len) not parsed yet */
	bool body;            /* past the response's headers */
	bool eof;
};

struct ev {
	char type[16];
	int64_t id;           /* -1: no id: line */
	char topic[64];       /* the data's "topic", if any */
	char data[256];       /* its start */
	size_t data_len;
};

/* rcvbuf > 0: a small receive buffer, for a client that stops reading. */
static struct cli *cli_open(const char *query, const char *last_id, int rcvbuf)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	struct cli *c = calloc(1, sizeof(*c));
	char req[1024];
	int n;

	ck_assert_ptr_nonnull(c);
	c->fd = socket(AF_INET, SOCK_STREAM, 0);
	ck_assert_int_ge(c->fd, 0);
	if (rcvbuf > 0)
		ck_assert_int_eq(setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)), 0);
	ck_assert_int_eq(connect(c->fd, (struct sockaddr *)&a, sizeof(a)), 0);
	/* HTTP/1.0: the stream is the body as it is, no chunked coding. */
	n = snprintf(req, sizeof(req), "GET /v1/watch HTTP/1.0\r\nX-Query: %s\r\n%s%s%s\r\n",
		     query, last_id ? "Last-Event-ID: " : "", last_id ? last_id : "",
		     last_id ? "\r\n" : "");
	ck_assert_int_eq(send(c->fd, req, (size_t)n, MSG_NOSIGNAL), n);
	return c;
}

static void cli_close(struct cli *c)
{
	if (!c)
		return;
	close(c->fd);
	free(c->buf);
	free(c);
}

/* Read what the socket has, waiting until the deadline (mono ms) for something. */
static int cli_fill(struct cli *c, int64_t deadline)
{
	struct pollfd p = { .fd = c->fd, .events = POLLIN };
	struct timespec ts;
	int64_t now;
	ssize_t n;

	if (c->eof)
		return -EPIPE;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
	if (now >= deadline || poll(&p, 1, (int)(deadline - now)) <= 0)
		return -ETIMEDOUT;
	if (c->cap - c->len < 65536) {
		c->cap = c->cap ? c->cap * 2 : 262144;
		c->buf = realloc(c->buf, c->cap + 1);
		ck_assert_ptr_nonnull(c->buf);
	}
	n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
	if (n <= 0) {
		c->eof = true; /* closed, or reset by a hub that cut us off */
		return -EPIPE;
	}
	c->len += (size_t)n;
	c->buf[c->len] = '\0';
	return 0;
}

static int64_t deadline_in(int ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + ms;
}

/* The HTTP status of the response. */
static int cli_status(struct cli *c)
{
	int64_t dl = deadline_in(WAIT_MS);
	char *end;
	int status = 0;

	while (!(end = c->buf ? strstr(c->buf, "\r\n\r\n") : NULL))
		if (cli_fill(c, dl) < 0)
			return -1;
	ck_assert_int_eq(sscanf(c->buf, "HTTP/1.%*d %d", &status), 1);
	c->off = (size_t)(end + 4 - c->buf);
	c->body = true;
	return status;
}

/* A stream that exists once this returns: it gets every change made after. */
static struct cli *cli_stream(const char *query, const char *last_id, int rcvbuf)
{
	struct cli *c = cli_open(query, last_id, rcvbuf);

	ck_assert_int_eq(cli_status(c), 200);
	return c;
}

/*
** The next event (comments skipped): 0, -ETIMEDOUT when none came within
** ms, -EPIPE when the stream ended.
*/
static int cli_next(struct cli *c, struct ev *e, int ms)
{
	int64_t dl = deadline_in(ms);

	if (!c->body)
		ck_assert_int_eq(cli_status(c), 200);
	if (c->off > (1u << 20)) { /* keep the buffer to what is not parsed yet */
		memmove(c->buf, c->buf + c->off, c->len - c->off + 1);
		c->len -= c->off;
		c->off = 0;
	}
	for (;;) {
		char *blk = c->buf + c->off, *end = strstr(blk, "\n\n");
		int r;

		if (!end) {
			if ((r = cli_fill(c, dl)) < 0)
				return r;
			continue;
		}
		c->off = (size_t)(end + 2 - c->buf);
		if (blk[0] == ':')
			continue; /* a comment: hello, heartbeat */
		memset(e, 0, sizeof(*e));
		e->id = -1;
		for (char *line = blk; line < end;) {
			char *nl = memchr(line, '\n', (size_t)(end - line));
			size_t n = (size_t)((nl ? nl : end) - line);

			if (n > 7 && memcmp(line, "event: ", 7) == 0)
				snprintf(e->type, sizeof(e->type), "%.*s", (int)(n - 7), line + 7);
			else if (n > 4 && memcmp(line, "id: ", 4) == 0)
				e->id = strtoll(line + 4, NULL, 10);
			else if (n > 6 && memcmp(line, "data: ", 6) == 0) {
				const char *t = memmem(line, n, "\"topic\":\"", 9);

				e->data_len = n - 6;
				snprintf(e->data, sizeof(e->data), "%.*s", (int)(n - 6), line + 6);
				if (t) {
					const char *q = memchr(t + 9, '"', n - (size_t)(t + 9 - line));

					if (q)
						snprintf(e->topic, sizeof(e->topic), "%.*s",
							 (int)(q - t - 9), t + 9);
				}
			}
			line += n + 1;
		}
		return 0;
	}
}

static struct ev expect(struct cli *c, const char *type, const char *topic, int64_t id)
{
	struct ev e;
	int r = cli_next(c, &e, WAIT_MS);

	ck_assert_msg(r == 0, "no %s event for %s (%d)", type, topic ? topic : "-", r);
	ck_assert_str_eq(e.type, type);
	if (topic)
		ck_assert_str_eq(e.topic, topic);
	ck_assert_int_eq(e.id, id);
	return e;
}

static int64_t head(void)
{
	int64_t h;

	index_rdlock(ix);
	h = changes_head(cl);
	index_unlock(ix);
	return h;
}

/* ---- snapshot, resume, gaps ---- */

START_TEST(snapshot_then_synced_then_live)
{
	struct cli *c;
	struct ev e;
	char data[128];

	start(1024, 0);
	put("a/2", "{\"v\":2}");
	put("a/1", "{\"v\":1}");
	put("b/1", "{}");
	put("a/3", "{}");
	put("a/3", "");       /* deleted: not in a snapshot */
	put("a/1", "{\"v\":11}"); /* the current value is sent, once */
	c = cli_stream("filter=a/%23&snapshot=true", NULL, 0);
	/* The matching live records in topic order, without ids... */
	e = expect(c, "update", "a/1", -1);
	ck_assert_ptr_nonnull(strstr(e.data, "\"v\":11"));
	expect(c, "update", "a/2", -1);
	/* ...then synced, with the head as its id. */
	e = expect(c, "synced", NULL, 6);
	snprintf(data, sizeof(data), "{\"rev\":%lld,\"count\":2}", (long long)head());
	ck_assert_str_eq(e.data, data);
	/* Live from there: matching changes only, with their revisions. */
	put("b/2", "{}");
	put("a/4", "{}");
	expect(c, "update", "a/4", 8);
	put("a/4", "");
	expect(c, "delete", "a/4", 9); /* in order, so b/2 (rev 7) was never sent */
	cli_close(c);
}
END_TEST

START_TEST(resume_from_last_event_id_within_the_log)
{
	struct cli *c;
	struct ev e;
	char name[16];

	start(1024, 0);
	for (int i = 1; i <= 5; i++) {
		snprintf(name, sizeof(name), "x/%d", i);
		put(name, "{}");
	}
	put("x/3", "{\"again\":1}"); /* rev 6: x/3's rev 3 is superseded */
	/* Last-Event-ID wins over since=, as EventSource reconnects. */
	c = cli_open("filter=x/%23&since=0&snapshot=true", "2", 0);
	expect(c, "update", "x/4", 4);
	expect(c, "update", "x/5", 5);
	e = expect(c, "update", "x/3", 6);
	ck_assert_ptr_nonnull(strstr(e.data, "again"));
	put("x/7", "{}");
	expect(c, "update", "x/7", 7); /* no snapshot, no synced: straight on */
	cli_close(c);

	/* since= alone, and from the head itself: nothing to replay. */
	c = cli_stream("filter=x/%23&since=7", NULL, 0);
	put("x/8", "{}");
	expect(c, "update", "x/8", 8);
	cli_close(c);
}
END_TEST

START_TEST(gap_gets_a_snapshot)
{
	struct cli *c;
	char id[32];

	/* A log of 8 changes after revision 100 (a restart's base). */
	start(8, 100);
	for (int i = 0; i < 20; i++)
		put(i % 2 ? "g/b" : "g/a", "{}");
	ck_assert_int_eq(head(), 120);
	/* From before this log's base: a snapshot, then synced at the head. */
	c = cli_open("filter=g/%23", "50", 0);
	expect(c, "update", "g/a", -1);
	expect(c, "update", "g/b", -1);
	expect(c, "synced", NULL, 120);
	put("g/c", "{}");
	expect(c, "update", "g/c", 121);
	cli_close(c);
	/* From beyond the head (another database's revision): a snapshot too. */
	snprintf(id, sizeof(id), "%lld", (long long)head() + 1000);
	c = cli_open("filter=g/%23", id, 0);
	expect(c, "update", "g/a", -1);
	expect(c, "update", "g/b", -1);
	expect(c, "update", "g/c", -1);
	expect(c, "synced", NULL, 121);
	cli_close(c);
}
END_TEST

/* ---- slow listeners ---- */

/* 64 KiB payloads: a few of them fill the sockets' buffers. */
static char big[65536];

static void fill_big(void)
{
	memset(big, 'p', sizeof(big));
	big[0] = '"';
	big[sizeof(big) - 1] = '"';
}

START_TEST(slow_listener_goes_back_to_the_log)
{
	struct cli *slow, *fast;
	struct ev e;
	char name[32];
	int nbig = 40;    /* 2.5 MiB: more than the sockets and watch_buffer hold */
	int64_t last_hot = 0;

	conf.watch_buffer = 128 * 1024;
	start(4096, 0);
	fill_big();
	/* Both live before anything happens; the slow one then stops reading. */
	slow = cli_stream("filter=s/%23", NULL, 4096);
	fast = cli_stream("filter=s/%23", NULL, 0);
	put("s/start", "{}");
	expect(slow, "update", "s/start", 1);
	expect(fast, "update", "s/start", 1);

	for (int i = 0; i < nbig; i++) {
		snprintf(name, sizeof(name), "s/big/%03d", i);
		put_n(name, big, sizeof(big));
	}
	/* The healthy one gets each change as it comes, whatever the slow one does. */
	for (int i = 0; i < nbig; i++) {
		snprintf(name, sizeof(name), "s/big/%03d", i);
		e = expect(fast, "update", name, 2 + i);
		ck_assert_uint_gt(e.data_len, sizeof(big));
	}
	/* A hot key, each change seen live by the healthy listener before the next. */
	for (int i = 0; i < 10; i++) {
		char p[32];

		snprintf(p, sizeof(p), "{\"hot\":%d}", i);
		put("s/hot", p);
		last_hot = head();
		expect(fast, "update", "s/hot", last_hot);
	}
	ck_assert_uint_eq(STAT_GET(watchers_dropped), 0);

	/* The slow one reads now: every big change in order, once... */
	for (int i = 0; i < nbig; i++) {
		snprintf(name, sizeof(name), "s/big/%03d", i);
		expect(slow, "update", name, 2 + i);
	}
	/* ...and the hot key as it is now, once: the superseded changes were
	 * skipped, as only a listener reading the change log skips them (the
	 * hub had handed each to every live listener). */
	e = expect(slow, "update", "s/hot", last_hot);
	ck_assert_ptr_nonnull(strstr(e.data, "\"hot\":9"));
	/* Live again. */
	put("s/end", "{}");
	expect(slow, "update", "s/end", last_hot + 1);
	expect(fast, "update", "s/end", last_hot + 1);
	ck_assert_uint_eq(STAT_GET(watchers_dropped), 0);
	cli_close(slow);
	cli_close(fast);
}
END_TEST

START_TEST(listener_that_falls_out_of_the_log_is_cut_off)
{
	struct cli *slow, *fast;
	struct ev e;
	char name[32];
	int nbig = 80, got = 0, r;

	conf.watch_buffer = 128 * 1024;
	start(32, 0); /* the log holds 32 changes */
	fill_big();
	slow = cli_stream("filter=c/%23", NULL, 4096);
	fast = cli_stream("filter=c/%23", NULL, 0);
	put("c/start", "{}");
	expect(slow, "update", "c/start", 1);
	expect(fast, "update", "c/start", 1);
	for (int i = 0; i < nbig; i++) {
		snprintf(name, sizeof(name), "c/big/%03d", i);
		put_n(name, big, sizeof(big));
		/* Paced by the healthy listener, so the log never outruns the hub. */
		expect(fast, "update", name, 2 + i);
	}
	/* Cut off by the hub although its client never read again (one more
	 * change through the hub: the batch that cut it is done). */
	put("c/after", "{}");
	expect(fast, "update", "c/after", nbig + 2);
	ck_assert_uint_eq(STAT_GET(watchers_dropped), 1);
	/* What it had buffered, then the end, before the last change. */
	while ((r = cli_next(slow, &e, WAIT_MS)) == 0) {
		ck_assert_str_eq(e.type, "update");
		got++;
	}
	ck_assert_int_eq(r, -EPIPE);
	ck_assert_int_lt(got, nbig);
	ck_assert_uint_eq(STAT_GET(watchers_dropped), 1);
	/* The healthy one is untouched. */
	put("c/end", "{}");
	expect(fast, "update", "c/end", nbig + 3);
	cli_close(slow);
	cli_close(fast);
}
END_TEST

/* ---- filters ---- */

START_TEST(each_listener_gets_what_its_filter_matches)
{
	static const char *topics[] = {
		"f", "f/a", "f/a/t", "f/a/tt", "f/b/t", "f/a/t/x", "g/a/t", "fa/a/t", "/a",
	};
	static const struct {
		const char *query;
		const char *want; /* the topics it gets, in order */
	} cases[] = {
		{ "filter=f/a/t", "f/a/t" },
		{ "filter=f/%2B/t", "f/a/t f/b/t" },
		{ "filter=f/%23", "f f/a f/a/t f/a/tt f/b/t f/a/t/x" },
		{ "filter=%2B/a/%23", "f/a f/a/t f/a/tt f/a/t/x g/a/t fa/a/t /a" },
		{ "filter=%2B/%2B", "f/a /a" },
		{ "", "f f/a f/a/t f/a/tt f/b/t f/a/t/x g/a/t fa/a/t /a" },
	};
	struct cli *c[sizeof(cases) / sizeof(cases[0])];
	size_t nc = sizeof(cases) / sizeof(cases[0]);

	start(1024, 0);
	for (size_t i = 0; i < nc; i++) {
		c[i] = cli_stream(cases[i].query, NULL, 0);
	}
	for (size_t i = 0; i < sizeof(topics) / sizeof(topics[0]); i++)
		put(topics[i], "{\"i\":1}");
	/* Each topic once, so that no change is superseded before the hub
	 * reads it (it would skip it: listeners converge on current state). */
	put("z/z", "{}"); /* matched by "+/+" and "#" only */
	for (size_t i = 0; i < nc; i++) {
		bool ends_zz = strcmp(cases[i].query, "filter=%2B/%2B") == 0 || !cases[i].query[0];
		char got[512] = "", want[512];
		struct ev e;

		snprintf(want, sizeof(want), "%s%s", cases[i].want, ends_zz ? " z/z" : "");
		while (strlen(got) < strlen(want)) {
			ck_assert_msg(cli_next(c[i], &e, WAIT_MS) == 0, "%s: got only \"%s\"",
				      cases[i].query, got);
			snprintf(got + strlen(got), sizeof(got) - strlen(got), "%s%s", got[0] ? " " : "",
				 e.topic);
		}
		ck_assert_msg(strcmp(got, want) == 0, "%s: got \"%s\", want \"%s\"", cases[i].query,
			      got, want);
	}
	/* Nothing more: the next event of each is the next change it matches. */
	put("f/a/t", "{\"i\":2}");
	put("q/q", "{}");
	for (size_t i = 0; i < nc; i++) {
		if (strcmp(cases[i].query, "filter=%2B/%2B") != 0)
			expect(c[i], "update", "f/a/t", head() - 1);
		if (strcmp(cases[i].query, "filter=%2B/%2B") == 0 || !cases[i].query[0])
			expect(c[i], "update", "q/q", head());
	}
	for (size_t i = 0; i < nc; i++)
		cli_close(c[i]);
}
END_TEST

START_TEST(bad_requests_and_too_many_listeners)
{
	struct cli *c, *more[3];
	struct ev e;

	conf.watch_max_clients = 3;
	start(1024, 0);
	c = cli_open("filter=a/%23/b", NULL, 0);
	ck_assert_int_eq(cli_status(c), 400);
	cli_close(c);
	c = cli_open("snapshot=yes", NULL, 0);
	ck_assert_int_eq(cli_status(c), 400);
	cli_close(c);
	c = cli_open("", "12x", 0);
	ck_assert_int_eq(cli_status(c), 400);
	cli_close(c);
	for (int i = 0; i < 3; i++)
		more[i] = cli_stream("", NULL, 0);
	put("m/1", "{}");
	for (int i = 0; i < 3; i++)
		expect(more[i], "update", "m/1", 1);
	c = cli_open("", NULL, 0);
	ck_assert_int_eq(cli_status(c), 503);
	cli_close(c);
	/* A slot comes back when a listener leaves. */
	cli_close(more[0]);
	put("m/2", "{}");
	expect(more[1], "update", "m/2", 2);
	for (int tries = 0;; tries++) {
		int st;

		c = cli_open("", NULL, 0);
		st = cli_status(c);
		if (st == 200)
			break;
		/* The hub sees the hang-up as the socket reports it: a retry
		 * per change, each one a hub turn later. */
		ck_assert_int_eq(st, 503);
		ck_assert_int_lt(tries, 50);
		cli_close(c);
		put("m/x", "{}");
		expect(more[1], "update", "m/x", head());
	}
	put("m/3", "{}");
	ck_assert_int_eq(cli_next(c, &e, WAIT_MS), 0);
	ck_assert_str_eq(e.topic, "m/3");
	cli_close(c);
	cli_close(more[1]);
	cli_close(more[2]);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("watch");
	TCase *tc = tcase_create("hub");
	SRunner *sr;
	int failed;

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, snapshot_then_synced_then_live);
	tcase_add_test(tc, resume_from_last_event_id_within_the_log);
	tcase_add_test(tc, gap_gets_a_snapshot);
	tcase_add_test(tc, slow_listener_goes_back_to_the_log);
	tcase_add_test(tc, listener_that_falls_out_of_the_log_is_cut_off);
	tcase_add_test(tc, each_listener_gets_what_its_filter_matches);
	tcase_add_test(tc, bad_requests_and_too_many_listeners);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
