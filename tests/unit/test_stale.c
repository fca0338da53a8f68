/* SPDX-License-Identifier: MIT */
/* test_stale.c: cadence rules, learning, the deadline heap at scale, transitions, load, reload. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/conf.h"
#include "common/stats.h"
#include "common/topic.h"
#include <errno.h>

#include "mirror/liveness/alerts.h"
#include "mirror/liveness/avail.h"
#include "mirror/liveness/stale.h"
#include "clock_fake.h"

#define SEC 1000

static struct conf conf;
static struct stale *st;
static struct index *ix;      /* the records the tests make */
static int64_t T;                 /* the test's "now" */

/* Transitions seen through the callback. */
static struct {
	unsigned to_stale, to_fresh;
	struct rec *last;
	bool last_stale;
	int64_t at;       /* T when the last transition was made */
} seen;

static void on_transition(struct rec *r, bool became_stale, void *ctx)
{
	(void)ctx;
	ck_assert_int_eq(!!(r->flags & REC_STALE), became_stale); /* flag already updated */
	if (became_stale) {
		seen.to_stale++;
		ck_assert_int_gt(r->stale_since_ms, 0);
	} else {
		seen.to_fresh++;
		ck_assert_int_eq(r->stale_since_ms, 0);
	}
	seen.last = r;
	seen.last_stale = became_stale;
	seen.at = T;
}

static unsigned published;
static void count_publish(void *ctx, const char *topic, const char *payload, size_t len)
{
	(void)ctx;
	(void)topic;
	(void)payload;
	(void)len;
	published++;
}

static void add_rule(const char *filter, int64_t cadence_ms)
{
	conf.rules[conf.nrules].filter = strdup(filter);
	ck_assert_ptr_nonnull(conf.rules[conf.nrules].filter);
	conf.rules[conf.nrules++].cadence_ms = cadence_ms;
}

static void setup(void)
{
	ck_assert_int_eq(conf_defaults(&conf), 0);
	memset(&g_stats, 0, sizeof(g_stats));
	memset(&seen, 0, sizeof(seen));
	published = 0;
	T = fake_now_ms;
	st = NULL;
	log_set_level(LOG_LEVEL_ERROR); /* a million transitions are logged otherwise */
	ix = index_new();
	ck_assert_ptr_nonnull(ix);
}

static void teardown(void)
{
	stale_free(st);
	st = NULL;
	index_free(ix);
	ix = NULL;
	conf_free(&conf);
}

static void start(bool synced)
{
	st = stale_new(&conf, ix, &(struct deliver_outlet){ count_publish, NULL });
	ck_assert_ptr_nonnull(st);
	stale_on_broker(st, false, T);
	if (synced)
		stale_on_broker(st, true, T);
}

/* A fresh record, as apply would leave it, in the test's index (the
 * engine's heap names records by their place in it). */
static struct rec *mk(const char *topic)
{
	struct rec *r = index_add(ix, topic, strlen(topic), NULL, 0, 0);

	ck_assert_ptr_nonnull(r);
	return r;
}

/* A live message at T: apply moved last_seen to now. */
static void live(struct rec *r)
{
	bool is_new = r->updates == 0;
	int64_t prev = r->last_seen_ms;

	r->updates++;
	r->last_seen_ms = T;
	stale_on_message(st, r, true, is_new, prev, T, on_transition, NULL);
}

/* A retained delivery observed at obs_ms (apply's last_seen rule). */
static void retained(struct rec *r, int64_t obs_ms, bool ts_from_payload)
{
	bool is_new = r->updates == 0;
	int64_t prev = r->last_seen_ms;

	r->updates++;
	if (obs_ms > r->last_seen_ms)
		r->last_seen_ms = obs_ms > T ? T : obs_ms;
	if (ts_from_payload)
		r->flags |= REC_TS_PAYLOAD;
	else
		r->flags &= (uint16_t)~REC_TS_PAYLOAD;
	stale_on_message(st, r, false, is_new, prev, T, on_transition, NULL);
}

static int64_t tick(void)
{
	int64_t w = stale_tick(st, T, on_transition, NULL);

	ck_assert_int_ge(w, 1);
	ck_assert_int_le(w, 100);
	return w;
}

/* Advance the clock to `until`, ticking as the keeper loop does. */
static void run_until(int64_t until)
{
	while (T < until) {
		int64_t w = tick();
		T = T + w < until ? T + w : until;
	}
	tick();
}

/* ------------------------------------------------------------- rules */

START_TEST(rule_precedence)
{
	struct rec *a, *b, *c, *d, *e;

	add_rule("dc1/+/temp", 10 * SEC);
	add_rule("dc1/#", 0);               /* never */
	add_rule("dc1/hall2/temp", 1 * SEC); /* shadowed by the first */
	conf.default_kind = CONF_DEFAULT_FIXED;
	conf.default_cadence_ms = 5 * SEC;
	start(true);
	live(a = mk("dc1/hall2/temp"));
	live(b = mk("dc1/hall2/hum"));
	live(c = mk("other/x"));
	live(d = mk("dc1"));                /* "dc1/#" matches its parent level */
	live(e = mk("$SYS/x/temp"));        /* wildcards never match $ topics */
	ck_assert_uint_eq(a->cadence_ms, 10000);
	ck_assert_uint_eq(a->cadence_source, CADENCE_RULE);
	ck_assert_uint_eq(b->cadence_ms, 0);
	ck_assert_uint_eq(b->cadence_source, CADENCE_RULE);
	ck_assert_uint_eq(c->cadence_ms, 5000);
	ck_assert_uint_eq(c->cadence_source, CADENCE_DEFAULT);
	ck_assert_uint_eq(d->cadence_ms, 0);
	ck_assert_uint_eq(d->cadence_source, CADENCE_RULE);
	ck_assert_uint_eq(e->cadence_source, CADENCE_DEFAULT);

	/* "never" is never stale, even after a day. */
	run_until(T + 31 * SEC);
	ck_assert(a->flags & REC_STALE);
	ck_assert(c->flags & REC_STALE);
	ck_assert(!(b->flags & REC_STALE));
	T += 86400 * SEC;
	tick();
	ck_assert(!(b->flags & REC_STALE));
	stale_free(st);
	st = NULL;
}
END_TEST

START_TEST(default_kinds)
{
	struct rec *a = mk("x/y");

	conf.default_kind = CONF_DEFAULT_NEVER;
	start(true);
	live(a);
	ck_assert_uint_eq(a->cadence_ms, 0);
	ck_assert_uint_eq(a->cadence_source, CADENCE_DEFAULT);
	for (int i = 0; i < 10; i++) {
		T += SEC;
		live(a);
	}
	ck_assert_uint_eq(a->cadence_ms, 0); /* never: nothing is learned */
	stale_free(st);
	st = NULL;

	conf.default_kind = CONF_DEFAULT_LEARN;
	a = mk("x/z"); /* a fresh key for the second engine */
	start(true);
	live(a);
	ck_assert_uint_eq(a->cadence_source, CADENCE_NONE);
	ck_assert_uint_eq(a->cadence_ms, 0);
	stale_free(st);
	st = NULL;
}
END_TEST

/* ---------------------------------------------------------- learning */

static void feed(struct rec *r, int64_t interval, int n)
{
	for (int i = 0; i < n; i++) {
		T += interval;
		live(r);
	}
}

START_TEST(learn_steady)
{
	struct rec *r = mk("p/steady");

	start(true);
	live(r);
	feed(r, 10 * SEC, 2);
	ck_assert_uint_eq(r->cadence_source, CADENCE_NONE); /* two intervals: not yet */
	ck_assert_uint_eq(rec_cadence_ms(r), 0);            /* (its estimate is not served) */
	feed(r, 10 * SEC, 1);
	ck_assert_uint_eq(r->cadence_source, CADENCE_LEARNED);
	ck_assert_uint_eq(r->cadence_ms, 10000);
	/* And it is judged by it: stale after grace (3) x 10 s. */
	run_until(T + 30 * SEC);
	ck_assert(!(r->flags & REC_STALE));
	run_until(T + 100);
	ck_assert(r->flags & REC_STALE);
	ck_assert_int_eq(r->stale_since_ms, r->last_seen_ms + 30 * SEC);
	/* Many more messages: the cadence stays, to the ms, never stale. */
	seen.to_stale = 0;
	feed(r, 10 * SEC, 100);
	ck_assert_uint_eq(r->cadence_ms, 10000);
	ck_assert_uint_eq(r->cadence_source, CADENCE_LEARNED);
	ck_assert(!(r->flags & REC_STALE));
	stale_free(st);
	st = NULL;
}
END_TEST

START_TEST(learn_jitter)
{
	struct rec *r = mk("p/jitter");

	srandom(7);
	start(true);
	live(r);
	for (int i = 0; i < 200; i++) {
		T += 10 * SEC - 1500 + random() % 3001; /* 10 s +- 15 % */
		live(r);
		if (i >= 3) {
			ck_assert_uint_ge(r->cadence_ms, 8500);
			ck_assert_uint_le(r->cadence_ms, 11500);
		}
	}
	ck_assert_uint_eq(seen.to_stale, 0);
	stale_free(st);
	st = NULL;
}
END_TEST

START_TEST(learn_outliers)
{
	struct rec *r = mk("p/outlier");

	start(true);
	live(r);
	feed(r, 10 * SEC, 8);
	ck_assert_uint_eq(r->cadence_ms, 10000);
	/* One late message (the producer hiccuped for 25 s). */
	feed(r, 25 * SEC, 1);
	ck_assert_uint_eq(r->cadence_ms, 10000);
	/* One early message. */
	feed(r, 2 * SEC, 1);
	feed(r, 8 * SEC, 1);
	ck_assert_uint_eq(r->cadence_ms, 10000);
	/* One doubled message (QoS 1 redelivery, 3 ms apart). */
	feed(r, 10 * SEC, 1);
	feed(r, 3, 1);
	feed(r, 10 * SEC - 3, 1);
	ck_assert_uint_eq(r->cadence_ms, 10000);
	stale_free(st);
	st = NULL;
}
END_TEST

START_TEST(learn_always_doubled)
{
	struct rec *r = mk("p/twice");

	start(true);
	live(r);
	for (int i = 0; i < 20; i++) {
		feed(r, 5, 1);           /* every message arrives twice */
		feed(r, 10 * SEC - 5, 1);
	}
	ck_assert_uint_eq(r->cadence_source, CADENCE_LEARNED);
	ck_assert_uint_ge(r->cadence_ms, 9990);
	ck_assert_uint_le(r->cadence_ms, 10000);
	/* Copies 1 s apart are real messages once nothing is learned... */
	stale_free(st);
	st = NULL;
}
END_TEST

START_TEST(learn_changed_cadence)
{
	struct rec *r = mk("p/change");
	int n;

	start(true);
	live(r);
	feed(r, 10 * SEC, 10);
	ck_assert_uint_eq(r->cadence_ms, 10000);
	/* Slower: 60 s. Three intervals that all disagree, on the long
	 * side, re-seed the estimate; two do not. */
	feed(r, 60 * SEC, 2);
	ck_assert_uint_eq(r->cadence_ms, 10000);
	feed(r, 60 * SEC, 1);
	ck_assert_uint_eq(r->cadence_ms, 60000);
	feed(r, 60 * SEC, 10);
	ck_assert_uint_eq(r->cadence_ms, 60000);
	/* Faster: 1 s. Copies within a quarter cadence are merged, so it
	 * converges in a few steps, not at once, and then follows exactly. */
	for (n = 0; n < 400 && r->cadence_ms != 1000; n++)
		feed(r, SEC, 1);
	ck_assert_uint_eq(r->cadence_ms, 1000);
	ck_assert_int_lt(n, 100);
	/* A smaller change is followed, a quarter of the way each interval:
	 * 1 s -> 1.5 s is within 5 % after 8 intervals. */
	feed(r, 1500, 8);
	ck_assert_uint_ge(r->cadence_ms, 1425);
	ck_assert_uint_le(r->cadence_ms, 1500);
	stale_free(st);
	st = NULL;
}
END_TEST

/* A producer that sends its value in bursts: a few messages within a
 * second, every 10 s. What matters for staleness is the gap between the
 * bursts: once learned, the burst's other messages are copies. */
START_TEST(learn_bursty)
{
	struct rec *r = mk("p/bursty"), *q = mk("p/bursty2");
	int stale_at_end;

	start(true);
	/* Learned at 10 s first, then bursts of 4 messages 100 ms apart. */
	live(r);
	feed(r, 10 * SEC, 5);
	ck_assert_uint_eq(r->cadence_ms, 10000);
	for (int i = 0; i < 20; i++) {
		feed(r, 10 * SEC - 300, 1);
		feed(r, 100, 3);
		ck_assert_uint_ge(r->cadence_ms, 9500);
		ck_assert_uint_le(r->cadence_ms, 10000);
	}
	ck_assert_uint_eq(seen.to_stale, 0);
	/* Bursty from its first message: the first intervals (100 ms) are
	 * learned, then the regular long gaps re-seed the estimate within a
	 * few bursts, and from then on the key is never stale between them. */
	live(q);
	for (int i = 0; i < 6; i++) {
		feed(q, 100, 3);
		run_until(T + 10 * SEC - 300);
		live(q);
	}
	ck_assert_uint_eq(q->cadence_source, CADENCE_LEARNED);
	ck_assert_uint_ge(q->cadence_ms, 9000);
	ck_assert_uint_le(q->cadence_ms, 10000);
	stale_at_end = (int)seen.to_stale;
	for (int i = 0; i < 20; i++) {
		feed(q, 100, 3);
		run_until(T + 10 * SEC - 300);
		live(q);
	}
	ck_assert_uint_eq(seen.to_stale, (unsigned)stale_at_end);
	ck_assert_uint_ge(q->cadence_ms, 9500);
	ck_assert_uint_le(q->cadence_ms, 10000);
	stale_free(st);
	st = NULL;
}
END_TEST

/* A producer that pauses (a restart, a maintenance window) goes stale and
 * comes back; the pause is not learned as its new cadence, even when it
 * pauses again a little later. */
START_TEST(learn_pause)
{
	struct rec *r = mk("p/pause");

	start(true);
	live(r);
	feed(r, 10 * SEC, 10);
	ck_assert_uint_eq(r->cadence_ms, 10000);
	for (int pause = 0; pause < 3; pause++) {
		unsigned was = seen.to_stale;

		run_until(T + 5 * 60 * SEC);       /* 5 min of silence */
		ck_assert(r->flags & REC_STALE);
		ck_assert_uint_eq(seen.to_stale, was + 1);
		live(r);                           /* back */
		ck_assert(!(r->flags & REC_STALE));
		ck_assert_uint_eq(r->cadence_ms, 10000);
		/* Its regular messages go on, judged by the old cadence. */
		for (int i = 0; i < 8; i++) {
			T += 10 * SEC;
			tick();
			live(r);
		}
		ck_assert_uint_eq(r->cadence_ms, 10000);
		ck_assert_uint_eq(seen.to_stale, was + 1);
	}
	/* Pauses close together, three within a few messages, are the
	 * producer's new way: then it is learned (a longer cadence only
	 * detects later; it raises no false alarm). */
	for (int pause = 0; pause < 3; pause++) {
		run_until(T + 5 * 60 * SEC);
		live(r);
		feed(r, 10 * SEC, 1);
	}
	ck_assert_uint_gt(r->cadence_ms, 60000);
	/* And back to 10 s: messages within a quarter of the estimate are
	 * copies, so it comes down in steps of three short intervals. */
	{
		int n;

		for (n = 0; n < 100 && r->cadence_ms > 10500; n++)
			feed(r, 10 * SEC, 1);
		ck_assert_uint_ge(r->cadence_ms, 10000);
		ck_assert_int_lt(n, 50);
	}
	stale_free(st);
	st = NULL;
}
END_TEST

/* A retained copy in between is no interval: the next live message only
 * anchors. The learner's anchor survives copies of any lag. */
START_TEST(learn_anchor)
{
	struct rec *r = mk("p/anchor");
	uint32_t was;

	start(true);
	live(r);
	feed(r, 100 * 60 * SEC, 3);            /* learned: 100 min */
	ck_assert_uint_eq(r->cadence_ms, 6000000);
	/* A copy 20 min after the message (a lag of 1.2e6 ms, not exact in
	 * 16 bits): the next interval is still measured from the message. */
	feed(r, 20 * 60 * SEC, 1);
	feed(r, 80 * 60 * SEC, 1);
	ck_assert_uint_ge(r->cadence_ms, 6000000 - 1000);
	ck_assert_uint_le(r->cadence_ms, 6000000);
	was = r->cadence_ms;
	/* A retained delivery with a newer timestamp of its own moves
	 * last_seen; the next live message is an anchor, not an interval
	 * (measured from the retained copy, 70 min would pull the estimate
	 * down by a quarter of the difference). */
	T += 30 * 60 * SEC;
	retained(r, T, true);
	feed(r, 70 * 60 * SEC, 1);
	ck_assert_uint_eq(r->cadence_ms, was);
	feed(r, 100 * 60 * SEC, 1);
	ck_assert_uint_ge(r->cadence_ms, was);
	stale_free(st);
	st = NULL;
}
END_TEST

START_TEST(learn_not_across_absence)
{
	struct rec *r = mk("p/absence");

	start(true);
	live(r);
	feed(r, 10 * SEC, 2);            /* two intervals */
	stale_on_broker(st, false, T);
	T += 10 * SEC;
	live(r);                          /* during the re-sync: anchor only */
	T += 5 * 60 * SEC;
	stale_on_broker(st, true, T);
	T += 10 * SEC;
	live(r);                          /* spans the absence: not an interval */
	ck_assert_uint_eq(r->cadence_source, CADENCE_NONE);
	feed(r, 10 * SEC, 1);             /* the third real interval */
	ck_assert_uint_eq(r->cadence_source, CADENCE_LEARNED);
	ck_assert_uint_eq(r->cadence_ms, 10000);
	stale_free(st);
	st = NULL;
}
END_TEST

/* ------------------------------------------------------- transitions */

START_TEST(transition_on_time)
{
	struct rec *r = mk("dc1/rack1/temp");
	int64_t deadline;

	add_rule("dc1/#", 10 * SEC);
	start(true);
	live(r);
	deadline = T + 30 * SEC;
	/* Drive the clock only by what stale_tick asks for. */
	while (!(r->flags & REC_STALE)) {
		int64_t w = tick();
		ck_assert_int_le(T, deadline + 100);
		T += w;
	}
	ck_assert_int_gt(seen.at, deadline);
	ck_assert_int_le(seen.at, deadline + 100);
	ck_assert_uint_eq(seen.to_stale, 1);
	ck_assert_ptr_eq(seen.last, r);
	ck_assert_int_eq(r->stale_since_ms, deadline);
	ck_assert_uint_eq(STAT_GET(stale_keys), 1);
	ck_assert_uint_eq(STAT_GET(stale_transitions), 1);
	/* Exactly at the deadline it is not stale yet ("longer than"). */
	stale_free(st);
	st = NULL;
	memset(&g_stats, 0, sizeof(g_stats));
	start(true);
	r->flags &= (uint16_t)~REC_STALE;
	r->heap_idx = UINT32_MAX;
	r->updates = 0;
	live(r);
	T += 30 * SEC;
	tick();
	ck_assert(!(r->flags & REC_STALE));
	T += 1;
	tick();
	ck_assert(r->flags & REC_STALE);

	/* Back to fresh on the next live message, at once. */
	T += 5 * SEC;
	live(r);
	ck_assert(!(r->flags & REC_STALE));
	ck_assert_uint_eq(STAT_GET(stale_keys), 0);
	ck_assert_uint_eq(STAT_GET(fresh_transitions), 1);
	ck_assert(!seen.last_stale);
	stale_free(st);
	st = NULL;
}
END_TEST

START_TEST(retained_is_no_sign_of_life)
{
	struct rec *r = mk("dc1/rack1/temp");
	struct rec *n = mk("dc1/rack2/temp");

	add_rule("dc1/#", 10 * SEC);
	start(true);
	live(r);
	run_until(T + 31 * SEC);
	ck_assert(r->flags & REC_STALE);
	/* The broker replays the stored copy: same old observation time. */
	retained(r, r->last_seen_ms, true);
	ck_assert(r->flags & REC_STALE);
	/* A copy without the producer's timestamp (ts = receive time) says
	 * nothing about the producer either. */
	retained(r, T, false);
	ck_assert(r->flags & REC_STALE);
	/* A copy whose own timestamp is recent: the data held is recent. */
	retained(r, T - SEC, true);
	ck_assert(!(r->flags & REC_STALE));

	/* A new key seen first as a dead producer's retained value: stale at
	 * once, not after another grace period. */
	retained(n, T - 60 * SEC, true);
	ck_assert(n->flags & REC_STALE);
	ck_assert_int_eq(n->stale_since_ms, T - 30 * SEC);
	stale_free(st);
	st = NULL;
}
END_TEST

START_TEST(lazy_deadline_is_exact)
{
	/* Live messages do not touch the heap while they move the deadline
	 * later; the due handler re-schedules. The key must still go stale
	 * exactly one window after its last message. */
	struct rec *r = mk("a/b");

	add_rule("a/#", SEC);
	start(true);
	live(r);
	for (int i = 0; i < 50; i++) {
		T += 700;
		live(r);
		tick();
		ck_assert(!(r->flags & REC_STALE));
	}
	run_until(T + 3 * SEC);
	ck_assert(!(r->flags & REC_STALE));
	T += 1;
	tick();
	ck_assert(r->flags & REC_STALE);
	ck_assert_uint_eq(seen.to_stale, 1);
	stale_free(st);
	st = NULL;
}
END_TEST

START_TEST(delete_untracks)
{
	struct rec *r = mk("a/b");

	add_rule("a/#", SEC);
	start(true);
	live(r);
	run_until(T + 4 * SEC);
	ck_assert(r->flags & REC_STALE);
	ck_assert_uint_eq(STAT_GET(stale_keys), 1);
	r->flags |= REC_DELETED;
	stale_on_delete(st, r, T, on_transition, NULL);
	ck_assert(!(r->flags & REC_STALE));
	ck_assert_uint_eq(STAT_GET(stale_keys), 0);
	ck_assert_uint_eq(stale_tracked(st), 0);
	/* Revived: a new life, tracked again. */
	r->flags &= (uint16_t)~REC_DELETED;
	r->updates = 0;
	live(r);
	ck_assert_uint_eq(stale_tracked(st), 1);
	ck_assert(!(r->flags & REC_STALE));
	stale_free(st);
	st = NULL;
}
END_TEST

START_TEST(own_alert_topics_never_judged)
{
	struct rec *a = mk("statemirror/alerts/group/x");
	struct rec *b = mk("statemirror/alerts");
	struct rec *c = mk("statemirror/alertsX/y");

	conf.default_kind = CONF_DEFAULT_FIXED;
	conf.default_cadence_ms = SEC;
	start(true);
	live(a);
	live(b);
	live(c);
	ck_assert(a->flags & REC_NO_STALE);
	ck_assert(b->flags & REC_NO_STALE);
	ck_assert(!(c->flags & REC_NO_STALE));
	ck_assert_uint_eq(stale_tracked(st), 1);
	run_until(T + 10 * SEC);
	ck_assert(!(a->flags & REC_STALE));
	ck_assert(c->flags & REC_STALE);
	stale_free(st);
	st = NULL;
}
END_TEST

struct gseen {
	char prefix[8][32];
	uint64_t n[8];
	int k;
};

static void group_fn(const char *prefix, enum stale_reason why, uint64_t count, void *ctx)
{
	struct gseen *g = ctx;

	(void)why;
	ck_assert_int_lt(g->k, 8);
	snprintf(g->prefix[g->k], sizeof(g->prefix[0]), "%s", prefix);
	g->n[g->k++] = count;
}

START_TEST(groups_for_v1_stale)
{
	const char *topics[] = { "b/r1/t", "b/r1/h", "a/x", "a/y", "a/z", "top", "b/r2/t" };
	struct rec *r[7];
	struct gseen g = { 0 };

	ck_assert_uint_eq(topic_group_prefix("dc1/hall2/rack17/temp", 21), 16);
	ck_assert_uint_eq(topic_group_prefix("top", 3), 0);
	ck_assert_uint_eq(topic_group_prefix("/a", 2), 0);
	ck_assert_uint_eq(topic_group_prefix("a/", 2), 1);

	conf.default_kind = CONF_DEFAULT_FIXED;
	conf.default_cadence_ms = SEC;
	start(true);
	for (int i = 0; i < 7; i++)
		live(r[i] = mk(topics[i]));
	T += 2 * SEC;
	live(r[6]); /* b/r2/t stays fresh */
	run_until(T + 2 * SEC);
	stale_groups(st, NULL, group_fn, &g);
	ck_assert_int_eq(g.k, 3);
	ck_assert_str_eq(g.prefix[0], "");
	ck_assert_uint_eq(g.n[0], 1);
	ck_assert_str_eq(g.prefix[1], "a");
	ck_assert_uint_eq(g.n[1], 3);
	ck_assert_str_eq(g.prefix[2], "b/r1");
	ck_assert_uint_eq(g.n[2], 2);
	/* Fresh again: its group goes away. */
	live(r[0]);
	live(r[1]);
	memset(&g, 0, sizeof(g));
	stale_groups(st, NULL, group_fn, &g);
	ck_assert_int_eq(g.k, 2);
	stale_free(st);
	st = NULL;
}
END_TEST

/*
** The heap keeps due times as 32-bit ms from an origin that follows the
** clock (it moves every 12 days): a deadline 200 days ahead does not fit
** and is kept as a lower bound, re-checked when it comes up. Keys still go
** stale on the millisecond, however far ahead and across any number of
** moves of the origin.
*/
START_TEST(far_deadlines_across_the_heap_origin)
{
	const int64_t DAY = 86400 * SEC;
	struct rec *slow = mk("far/slow"), *mid = mk("far/mid");
	int64_t t0;

	add_rule("far/slow", 40 * DAY);    /* x grace 5: a 200-day window */
	add_rule("far/mid", 2 * DAY);
	conf.grace = 5;
	start(true);
	t0 = T;
	live(slow);
	for (int d = 1; d < 200; d++) {
		T = t0 + d * DAY;
		if (d == 150)
			live(mid);          /* due on day 160, after a dozen moves */
		tick();
		ck_assert_msg(!(slow->flags & REC_STALE), "day %d", d);
		ck_assert_int_eq(!!(mid->flags & REC_STALE), d >= 160);
		ck_assert(stale_heap_check(st));
		if (d == 159) {
			/* On the millisecond: fresh at the window's end, stale 1 ms on. */
			T = t0 + 160 * DAY;
			tick();
			ck_assert(!(mid->flags & REC_STALE));
			T++;
			tick();
			ck_assert(mid->flags & REC_STALE);
		}
	}
	T = t0 + 200 * DAY;
	tick();
	ck_assert(!(slow->flags & REC_STALE));
	T++;
	tick();
	ck_assert(slow->flags & REC_STALE);
	ck_assert_int_eq(stale_next_due(st), INT64_MAX);
}
END_TEST

/* --------------------------------------------------------- at scale */

/* A million keys; a tenth of that under ASan or TSan, which check the
 * same heap code at four to six times the cost per key. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SCALE_KEYS 100000
#else
#define SCALE_KEYS 1000000
#endif

static int64_t last_deadline;
static unsigned fired;

static void ordered(struct rec *r, bool became_stale, void *ctx)
{
	int64_t *now = ctx;
	int64_t deadline = r->last_seen_ms + 1000;

	ck_assert(became_stale);
	ck_assert_int_ge(deadline, last_deadline); /* in deadline order */
	ck_assert_int_gt(*now, deadline);
	ck_assert_int_le(*now, deadline + 100);     /* within 100 ms */
	last_deadline = deadline;
	fired++;
}

START_TEST(heap_at_scale)
{
	struct rec **r = malloc(SCALE_KEYS * sizeof(*r));
	char topic[32];
	int64_t t0 = T;

	ck_assert_ptr_nonnull(r);
	conf.default_kind = CONF_DEFAULT_FIXED;
	conf.default_cadence_ms = 1000;
	conf.grace = 1;
	start(true);
	srandom(42);
	for (int i = 0; i < SCALE_KEYS; i++) {
		snprintf(topic, sizeof(topic), "site%d/dev%d/v", i % 97, i);
		r[i] = mk(topic);
		/* last_seen spread over the next 100 s (loaded from the store) */
		r[i]->last_seen_ms = t0 + random() % 100000;
		stale_on_load(st, r[i], T);
	}
	ck_assert_uint_eq(stale_tracked(st), SCALE_KEYS);
	ck_assert(stale_heap_check(st));
	ck_assert_uint_eq(STAT_GET(stale_keys), 0);
	/* A message per key moves a tenth of the deadlines (lazily). */
	for (int i = 0; i < SCALE_KEYS; i += 10) {
		r[i]->last_seen_ms += 500;
		stale_on_message(st, r[i], true, false, r[i]->last_seen_ms - 500, T, on_transition, NULL);
	}
	ck_assert(stale_heap_check(st));
	last_deadline = 0;
	fired = 0;
	while (T < t0 + 102000) {
		int64_t w = stale_tick(st, T, ordered, &T);
		ck_assert_int_ge(w, 1);
		ck_assert_int_le(w, 100);
		T += w;
	}
	ck_assert_uint_eq(fired, SCALE_KEYS);
	ck_assert_uint_eq(STAT_GET(stale_keys), SCALE_KEYS);
	ck_assert(stale_heap_check(st));
	/* Removing keys keeps the heap sound. */
	for (int i = 0; i < SCALE_KEYS; i += 3) {
		r[i]->flags |= REC_DELETED;
		stale_on_delete(st, r[i], T, NULL, NULL);
	}
	ck_assert(stale_heap_check(st));
	stale_free(st);
	st = NULL;
	free(r);
}
END_TEST

/* The wall clock steps back an hour (an NTP correction) while keys are
 * tracked: a key heard after the step still goes stale one window after its
 * last message, as it does when the clock does not jump. (Found in review:
 * the heap's origin only moved forward, and every deadline before it waited
 * for the clock to catch up.) */
START_TEST(clock_steps_back)
{
	struct rec *r = mk("dc1/rack1/temp");
	int64_t t_back;

	add_rule("dc1/#", 10 * SEC);        /* grace 3: a 30 s window */
	start(true);
	live(r);
	T += 5 * SEC;
	tick();
	T -= 3600 * SEC;                    /* the clock steps back an hour */
	t_back = T;
	live(r);
	tick();
	ck_assert(!(r->flags & REC_STALE));
	ck_assert(stale_heap_check(st));
	run_until(t_back + 30 * SEC);
	ck_assert(!(r->flags & REC_STALE));
	T++;
	tick();
	ck_assert_msg(r->flags & REC_STALE,
		      "not stale 30 s + 1 ms after its last message (next due %lld ms from now)",
		      (long long)(stale_next_due(st) - T));
	stale_free(st);
	st = NULL;
}
END_TEST

/* ---------------------------------------------------- load and reload */

START_TEST(load_marks_dead_keys_stale)
{
	struct rec *dead = mk("dc1/a/temp"), *alive = mk("dc1/b/temp"), *was = mk("dc1/c/temp");

	add_rule("dc1/#", 10 * SEC);
	start(false);
	dead->last_seen_ms = T - 60 * SEC;
	alive->last_seen_ms = T - 5 * SEC;
	was->last_seen_ms = T - 3600 * SEC;
	was->flags = REC_STALE;
	was->stale_since_ms = T - 3500 * SEC;
	was->cadence_ms = 10000;
	was->cadence_source = CADENCE_RULE;
	ck_assert(stale_on_load(st, dead, T));
	ck_assert(stale_on_load(st, alive, T)); /* cadence derived */
	ck_assert(!stale_on_load(st, was, T));  /* nothing changed */
	ck_assert(dead->flags & REC_STALE);
	ck_assert_int_eq(dead->stale_since_ms, T - 30 * SEC);
	ck_assert(!(alive->flags & REC_STALE));
	ck_assert(was->flags & REC_STALE);
	ck_assert_int_eq(was->stale_since_ms, T - 3500 * SEC);
	ck_assert_uint_eq(seen.to_stale, 0);     /* no callback at load */
	ck_assert_uint_eq(STAT_GET(stale_keys), 2);
	/* The first tick announces the flag that changed (dead's), once, so
	 * that the mirror writes it back; was's stored flag was right already. */
	tick();
	ck_assert_uint_eq(seen.to_stale, 1);
	ck_assert_ptr_eq(seen.last, dead);
	T += 50;
	tick();
	ck_assert_uint_eq(seen.to_stale, 1);
	ck_assert_uint_eq(STAT_GET(stale_transitions), 0); /* not a live transition */
	/* A stored learned cadence survives: it is the learner's estimate. */
	stale_free(st);
	st = NULL;

	conf_free(&conf);
	ck_assert_int_eq(conf_defaults(&conf), 0);
	start(false);
	was = mk("p/q");
	was->last_seen_ms = T - 100 * SEC;
	was->cadence_ms = 20000;
	was->cadence_source = CADENCE_LEARNED;
	stale_on_load(st, was, T);
	ck_assert_uint_eq(was->cadence_ms, 20000);
	ck_assert(was->flags & REC_STALE);
	stale_free(st);
	st = NULL;
}
END_TEST

static void count_changed(struct rec *r, void *ctx)
{
	(void)r;
	(*(int *)ctx)++;
}

START_TEST(reload_rederives)
{
	int nchanged = 0;
	struct rec *a = mk("dc1/a/temp"), *b = mk("dc1/b/hum");

	add_rule("dc1/+/temp", 10 * SEC);
	conf.default_kind = CONF_DEFAULT_NEVER;
	start(true);
	live(a);
	live(b);
	run_until(T + 31 * SEC);
	ck_assert(a->flags & REC_STALE);
	ck_assert(!(b->flags & REC_STALE));

	/* New rules: temp is never judged, hum every 5 s. */
	free(conf.rules[0].filter);
	conf.nrules = 0;
	add_rule("dc1/+/temp", 0);
	add_rule("dc1/+/hum", 5 * SEC);
	ck_assert_int_eq(stale_reconfigure(st, &conf, count_changed, &nchanged), 0);
	ck_assert_int_eq(nchanged, 2);   /* both cadences changed: both reported */
	ck_assert(stale_heap_check(st));
	tick();
	ck_assert(!(a->flags & REC_STALE)); /* never: fresh, with a callback */
	ck_assert(b->flags & REC_STALE);    /* unheard for 31 s > 15 s */
	ck_assert_uint_eq(seen.to_fresh, 1);
	ck_assert_uint_eq(seen.to_stale, 2);

	/* A larger grace brings b back. */
	conf.grace = 10;
	nchanged = 0;
	ck_assert_int_eq(stale_reconfigure(st, &conf, count_changed, &nchanged), 0);
	ck_assert_int_eq(nchanged, 0);   /* grace is not a cadence */
	tick();
	ck_assert(!(b->flags & REC_STALE));
	ck_assert_uint_eq(b->cadence_ms, 5000);
	stale_free(st);
	st = NULL;
}
END_TEST


/* ---------------------------------------------------- producer liveness */

/* stale_groups as "prefix reason count" lines. */
static void group_line(const char *prefix, enum stale_reason why, uint64_t count, void *ctx)
{
	char *out = ctx;
	size_t n = strlen(out);

	snprintf(out + n, 1024 - n, "%s %s %llu\n", prefix, stale_reason_name(why),
		 (unsigned long long)count);
}

static const char *groups_text(void)
{
	static char out[1024];

	out[0] = '\0';
	stale_groups(st, NULL, group_line, out);
	return out;
}

START_TEST(dead_producer_keys_stale_at_once)
{
	struct rec *a = mk("dc1/ag1/temp"), *b = mk("dc1/ag1/sub/hum"), *c = mk("dc1/ag2/temp");
	unsigned before;

	add_rule("dc1/#", 60 * SEC);
	start(true);
	live(a);
	live(b);
	live(c);
	T += SEC;
	before = seen.to_stale;
	stale_mark_dead(st, a, STALE_REASON_PRODUCER_OFFLINE, 7, T, on_transition, NULL);
	stale_mark_dead(st, b, STALE_REASON_PRODUCER_OFFLINE, 7, T, on_transition, NULL);
	ck_assert_uint_eq(seen.to_stale, before + 2);
	ck_assert(a->flags & REC_STALE);
	ck_assert(b->flags & REC_STALE);
	ck_assert(!(c->flags & REC_STALE));
	ck_assert_int_eq(rec_stale_reason(a), STALE_REASON_PRODUCER_OFFLINE);
	ck_assert_int_eq(rec_stale_reason(c), STALE_REASON_NONE);
	ck_assert_int_eq(a->stale_since_ms, T);
	ck_assert_uint_eq(stale_count_by_reason(st, STALE_REASON_PRODUCER_OFFLINE), 2);
	ck_assert_uint_eq(stale_reason_count(STALE_REASON_PRODUCER_OFFLINE), 2);
	ck_assert_uint_eq(STAT_GET(stale_keys), 2);
	/* Grouped by the producer, not by the topics' parents. */
	ck_assert_str_eq(groups_text(), "dc1/ag1 producer_offline 2\n");
	/* Told twice: nothing changes. */
	stale_mark_dead(st, a, STALE_REASON_PRODUCER_OFFLINE, 7, T, on_transition, NULL);
	ck_assert_uint_eq(seen.to_stale, before + 2);

	/* A retained copy and time passing do not make them fresh, long
	 * after their cadence would have. */
	retained(a, T, false);
	run_until(T + 30 * SEC);
	ck_assert(a->flags & REC_STALE);
	ck_assert(b->flags & REC_STALE);
	ck_assert(!(c->flags & REC_STALE));
	ck_assert(stale_heap_check(st));

	/* Heard from live again: that key only. */
	live(a);
	ck_assert(!(a->flags & REC_STALE));
	ck_assert(!(a->flags & REC_STICKY));
	ck_assert_int_eq(rec_stale_reason(a), STALE_REASON_NONE);
	ck_assert(b->flags & REC_STALE);
	ck_assert_str_eq(groups_text(), "dc1/ag1 producer_offline 1\n");
	ck_assert_uint_eq(stale_count_by_reason(st, STALE_REASON_PRODUCER_OFFLINE), 1);
	/* ...and judged by its cadence again. */
	run_until(T + 181 * SEC);
	ck_assert(a->flags & REC_STALE);
	ck_assert_int_eq(rec_stale_reason(a), STALE_REASON_CADENCE);
	ck_assert_int_eq(rec_stale_reason(b), STALE_REASON_PRODUCER_OFFLINE);
	/* c has been unheard for 182 s > 180 s: by its cadence */
	ck_assert_int_eq(rec_stale_reason(c), STALE_REASON_CADENCE);
	ck_assert_str_eq(groups_text(), "dc1/ag1 cadence 1\n"
					"dc1/ag1 producer_offline 1\n"
					"dc1/ag2 cadence 1\n");
	/* A payload timestamp after the death makes b fresh, a retained one. */
	b->ts_ns = (T + 1) * 1000000;
	retained(b, T, true);
	ck_assert(!(b->flags & REC_STALE));
	stale_free(st);
	st = NULL;
}
END_TEST

START_TEST(dead_key_stale_already_takes_the_reason)
{
	struct rec *a = mk("n/e1/m");
	int64_t since;

	add_rule("n/#", 10 * SEC);
	start(true);
	live(a);
	run_until(T + 31 * SEC);
	ck_assert_int_eq(rec_stale_reason(a), STALE_REASON_CADENCE);
	since = a->stale_since_ms;
	seen.to_stale = 0;
	stale_mark_dead(st, a, STALE_REASON_PRODUCER_OFFLINE, 4, T, on_transition, NULL);
	ck_assert_uint_eq(seen.to_stale, 1); /* the record changed: its reason */
	ck_assert_int_eq(rec_stale_reason(a), STALE_REASON_PRODUCER_OFFLINE);
	ck_assert_int_eq(a->stale_since_ms, since);
	ck_assert_uint_eq(stale_count_by_reason(st, STALE_REASON_CADENCE), 0);
	ck_assert_uint_eq(stale_count_by_reason(st, STALE_REASON_PRODUCER_OFFLINE), 1);
	ck_assert_str_eq(groups_text(), "n/e1 producer_offline 1\n");
	/* A reload re-examines stale keys: this one stays. */
	ck_assert_int_eq(stale_reconfigure(st, &conf, NULL, NULL), 0);
	tick();
	ck_assert(a->flags & REC_STALE);
	ck_assert_int_eq(rec_stale_reason(a), STALE_REASON_PRODUCER_OFFLINE);
	/* A producer that is not a prefix of the key: grouped by topic. */
	stale_free(st);
	st = NULL;
}
END_TEST

START_TEST(broker_reason_while_not_synced)
{
	struct rec *a = mk("x/a"), *b = mk("x/b");

	add_rule("x/#", 10 * SEC);
	start(true);
	live(a);
	live(b);
	T += 5 * SEC;
	stale_on_broker(st, false, T);
	run_until(T + 30 * SEC);
	ck_assert(a->flags & REC_STALE);
	ck_assert_int_eq(rec_stale_reason(a), STALE_REASON_BROKER);
	ck_assert_uint_eq(stale_count_by_reason(st, STALE_REASON_BROKER), 2);
	/* Synced again: b is heard from, a gets its window, then it is its own. */
	stale_on_broker(st, true, T);
	live(b);
	ck_assert(!(b->flags & REC_STALE));
	run_until(T + 29 * SEC);
	ck_assert_int_eq(rec_stale_reason(a), STALE_REASON_BROKER);
	live(b);
	run_until(T + 2 * SEC);
	ck_assert_int_eq(rec_stale_reason(a), STALE_REASON_CADENCE);
	ck_assert_uint_eq(stale_count_by_reason(st, STALE_REASON_BROKER), 0);
	ck_assert_uint_eq(stale_count_by_reason(st, STALE_REASON_CADENCE), 1);
	ck_assert_str_eq(groups_text(), "x cadence 1\n");
	stale_free(st);
	st = NULL;
}
END_TEST

START_TEST(dead_keys_stay_stale_across_load)
{
	struct rec *a = mk("dc1/ag1/temp"), *b = mk("dc1/ag1/hum");

	add_rule("dc1/#", 60 * SEC);
	start(false);
	/* Stored: stale because its producer died, heard 5 s ago by cadence. */
	a->last_seen_ms = T - 5 * SEC;
	a->flags = REC_STALE | REC_STICKY;
	rec_set_stale_reason(a, STALE_REASON_PRODUCER_OFFLINE);
	a->stale_since_ms = T - 4 * SEC;
	b->last_seen_ms = T - 5 * SEC;
	stale_on_load(st, a, T);
	stale_on_load(st, b, T);
	ck_assert(a->flags & REC_STALE);
	ck_assert_int_eq(rec_stale_reason(a), STALE_REASON_PRODUCER_OFFLINE);
	ck_assert_int_eq(a->stale_since_ms, T - 4 * SEC);
	ck_assert(!(b->flags & REC_STALE));
	stale_on_broker(st, true, T);
	retained(a, T - 5 * SEC, false); /* the broker's copy: no sign of life */
	run_until(T + 10 * SEC);
	ck_assert(a->flags & REC_STALE);
	live(a);
	ck_assert(!(a->flags & REC_STALE));
	stale_free(st);
	st = NULL;
}
END_TEST


START_TEST(status_topics_never_judged)
{
	struct rec *s1 = mk("dc1/ag1/agent/status"), *k = mk("dc1/ag1/temp");

	add_rule("dc1/#", 10 * SEC);
	ck_assert_int_eq(conf_add_availability(&conf, "dc1/+/agent/status", "dc1/+/#"), 0);
	start(true);
	live(s1);
	live(k);
	ck_assert_uint_eq(s1->cadence_ms, 0);
	ck_assert_uint_eq(k->cadence_ms, 10000);
	run_until(T + 60 * SEC);
	ck_assert(!(s1->flags & REC_STALE));
	ck_assert(k->flags & REC_STALE);
	stale_free(st);
	st = NULL;
}
END_TEST

/* The i-th '+' of the status filter binds the i-th '+' of the keys filter. */
START_TEST(availability_binds_positionally)
{
	char out[256];
	const char *t1 = "dc1/ag7/agent/status";

	ck_assert_int_eq(avail_bind_filters("dc1/+/agent/status", "dc1/+/#", t1, strlen(t1), out,
					    sizeof(out)), 9);
	ck_assert_str_eq(out, "dc1/ag7/#");
	ck_assert_uint_eq(avail_producer_len(out), 7); /* "dc1/ag7" */
	/* Two bound levels, in order; an unbound '+' stays a wildcard. */
	t1 = "status/h2/r9";
	ck_assert_int_gt(avail_bind_filters("status/+/+", "plant/+/rack/+/+/temp", t1, strlen(t1),
					    out, sizeof(out)), 0);
	ck_assert_str_eq(out, "plant/h2/rack/r9/+/temp");
	ck_assert_uint_eq(avail_producer_len(out), 16); /* "plant/h2/rack/r9" */
	/* No wildcard in keys: that one topic, its parent the producer. */
	t1 = "a/s";
	ck_assert_int_gt(avail_bind_filters("a/s", "a/k/v", t1, 3, out, sizeof(out)), 0);
	ck_assert_str_eq(out, "a/k/v");
	ck_assert_uint_eq(avail_producer_len(out), 3);
	/* An empty level binds as empty. */
	t1 = "dc1//agent/status";
	ck_assert_int_gt(avail_bind_filters("dc1/+/agent/status", "dc1/+/#", t1, strlen(t1), out,
					    sizeof(out)), 0);
	ck_assert_str_eq(out, "dc1//#");
	/* Not a status topic; no room. */
	ck_assert_int_eq(avail_bind_filters("dc1/+/agent/status", "dc1/+/#", "dc1/x", 5, out,
					    sizeof(out)), -EINVAL);
	t1 = "dc1/ag7/agent/status";
	ck_assert_int_eq(avail_bind_filters("dc1/+/agent/status", "dc1/+/#", t1, strlen(t1), out, 5),
			 -ENAMETOOLONG);
}
END_TEST

START_TEST(availability_payload_words)
{
	struct avail *a;

	a = avail_new(&conf);
	ck_assert_ptr_nonnull(a);
	ck_assert_int_eq(avail_word(a, "offline", 7), AVAIL_OFFLINE);
	ck_assert_int_eq(avail_word(a, "online", 6), AVAIL_ONLINE);
	ck_assert_int_eq(avail_word(a, "Offline", 7), AVAIL_UNKNOWN);
	ck_assert_int_eq(avail_word(a, "", 0), AVAIL_UNKNOWN);
	avail_free(a);
	ck_assert_int_eq(conf_set_str(&conf.avail_member, "state"), 0);
	ck_assert_int_eq(conf_set_str(&conf.avail_offline, "dead"), 0);
	a = avail_new(&conf);
	ck_assert_ptr_nonnull(a);
	ck_assert_int_eq(avail_word(a, "{\"state\":\"dead\",\"ts\":1}", strlen("{\"state\":\"dead\",\"ts\":1}")), AVAIL_OFFLINE);
	ck_assert_int_eq(avail_word(a, "{\"state\":\"online\"}", strlen("{\"state\":\"online\"}")), AVAIL_ONLINE);
	ck_assert_int_eq(avail_word(a, "dead", 4), AVAIL_UNKNOWN);      /* not JSON */
	ck_assert_int_eq(avail_word(a, "{\"state\":1}", strlen("{\"state\":1}")), AVAIL_UNKNOWN);
	/* The producers offline: set, covered, cleared. */
	{
		const char *b;
		int64_t ts;

		ck_assert_int_eq(avail_set_offline(a, "dc1/ag7/#", true, 5), 0);
		ck_assert_int_eq(avail_set_offline(a, "dc1/ag7/#", true, 9), 0);
		ck_assert_uint_eq(avail_offline_count(a), 1);
		ck_assert(avail_offline_cover(a, "dc1/ag7/x", 9, &b, &ts));
		ck_assert_int_eq(ts, 5);
		ck_assert(!avail_offline_cover(a, "dc1/ag8/x", 9, &b, &ts));
		ck_assert_int_eq(avail_set_offline(a, "dc1/ag7/#", false, 10), 0);
		ck_assert(!avail_offline_cover(a, "dc1/ag7/x", 9, &b, &ts));
	}
	avail_free(a);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("stale");
	TCase *tc = tcase_create("core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, rule_precedence);
	tcase_add_test(tc, default_kinds);
	tcase_add_test(tc, learn_steady);
	tcase_add_test(tc, learn_jitter);
	tcase_add_test(tc, learn_outliers);
	tcase_add_test(tc, learn_always_doubled);
	tcase_add_test(tc, learn_changed_cadence);
	tcase_add_test(tc, learn_not_across_absence);
	tcase_add_test(tc, learn_bursty);
	tcase_add_test(tc, learn_pause);
	tcase_add_test(tc, learn_anchor);
	tcase_add_test(tc, transition_on_time);
	tcase_add_test(tc, retained_is_no_sign_of_life);
	tcase_add_test(tc, lazy_deadline_is_exact);
	tcase_add_test(tc, delete_untracks);
	tcase_add_test(tc, own_alert_topics_never_judged);
	tcase_add_test(tc, groups_for_v1_stale);
	tcase_add_test(tc, far_deadlines_across_the_heap_origin);
	tcase_add_test(tc, heap_at_scale);
	tcase_add_test(tc, clock_steps_back);
	tcase_add_test(tc, load_marks_dead_keys_stale);
	tcase_add_test(tc, reload_rederives);
	tcase_add_test(tc, dead_producer_keys_stale_at_once);
	tcase_add_test(tc, dead_key_stale_already_takes_the_reason);
	tcase_add_test(tc, broker_reason_while_not_synced);
	tcase_add_test(tc, dead_keys_stay_stale_across_load);
	tcase_add_test(tc, status_topics_never_judged);
	tcase_add_test(tc, availability_binds_positionally);
	tcase_add_test(tc, availability_payload_words);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
