/* SPDX-License-Identifier: MIT */
/* test_alerts.c: grouping, recovery, hysteresis, the mirror alert, hold-back after re-sync and restart, exec. */
#include <check.h>
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/conf.h"
#include "common/stats.h"
#include "mirror/liveness/alerts.h"
#include "mirror/liveness/stale.h"
#include "clock_fake.h"

#define SEC 1000
#define MAXMSG 4096
#define MAXKEYS 2000

static struct conf conf;
static struct stale *st;
static struct index *ix;
static int64_t T;

/* What the fake outlet received. */
static struct pub {
	char *topic;
	char *payload;
} msgs[MAXMSG];
static unsigned nmsgs;

static void record(void *ctx, const char *topic, const char *payload, size_t len)
{
	(void)ctx;
	ck_assert_uint_lt(nmsgs, MAXMSG);
	msgs[nmsgs].topic = strdup(topic);
	msgs[nmsgs].payload = strndup(payload, len);
	nmsgs++;
}

static void clear_msgs(void)
{
	for (unsigned i = 0; i < nmsgs; i++) {
		free(msgs[i].topic);
		free(msgs[i].payload);
	}
	nmsgs = 0;
}

/* Number of non-empty alert messages on topics under prefix. */
static unsigned alerts_under(const char *prefix)
{
	unsigned n = 0;

	for (unsigned i = 0; i < nmsgs; i++)
		if (strncmp(msgs[i].topic, prefix, strlen(prefix)) == 0 && msgs[i].payload[0])
			n++;
	return n;
}

/* The i-th message, parsed (caller decrefs). */
static json_t *msg_json(unsigned i)
{
	json_error_t err;
	json_t *o = json_loads(msgs[i].payload, 0, &err);

	ck_assert_msg(o != NULL, "not JSON: %s", msgs[i].payload);
	return o;
}

static const char *jstr(json_t *o, const char *k)
{
	json_t *v = json_object_get(o, k);

	return json_is_string(v) ? json_string_value(v) : "";
}

static json_int_t jint(json_t *o, const char *k)
{
	return json_integer_value(json_object_get(o, k));
}

static struct rec *keys[MAXKEYS];
static unsigned nkeys;

#define A stale_alerts(st)
#define D alerts_delivery(A)

/* One keeper turn at T, then the delivery thread's turn (no thread runs in
 * these tests: deliver_pump with the injected clock stands for it). */
static int64_t tick_at(void)
{
	int64_t w = stale_tick(st, T, NULL, NULL);

	deliver_pump(D, T);
	return w;
}

/* A record for the topic printf(fmt, ...). */
static struct rec *mk(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static struct rec *mk(const char *fmt, ...)
{
	char topic[256];
	struct rec *r;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(topic, sizeof(topic), fmt, ap);
	va_end(ap);
	r = index_add(ix, topic, strlen(topic), NULL, 0, 0);
	ck_assert_ptr_nonnull(r);
	ck_assert_uint_lt(nkeys, MAXKEYS);
	keys[nkeys++] = r;
	return r;
}

static void add_rule(const char *filter, int64_t cadence_ms)
{
	conf.rules[conf.nrules].filter = strdup(filter);
	conf.rules[conf.nrules++].cadence_ms = cadence_ms;
}

static void setup(void)
{
	ck_assert_int_eq(conf_defaults(&conf), 0);
	memset(&g_stats, 0, sizeof(g_stats));
	log_set_level(LOG_LEVEL_ERROR);
	T = fake_now_ms;
	st = NULL;
	nkeys = 0;
	ix = index_new();
	ck_assert_ptr_nonnull(ix);
	clear_msgs();
	/* 1 s cadence, grace 3, group wait 2 s (the default) */
	add_rule("#", SEC);
}

static void teardown(void)
{
	stale_free(st);
	st = NULL;
	index_free(ix);
	ix = NULL;
	clear_msgs();
	conf_free(&conf);
}

static void start(void)
{
	st = stale_new(&conf, ix, &(struct deliver_outlet){ record, NULL });
	ck_assert_ptr_nonnull(st);
	stale_on_broker(st, false, T);
}

static void live(struct rec *r)
{
	bool is_new = r->updates == 0;
	int64_t prev = r->last_seen_ms;

	r->updates++;
	r->last_seen_ms = T;
	stale_on_message(st, r, true, is_new, prev, T, NULL, NULL);
}

static void run_until(int64_t until)
{
	while (T < until) {
		int64_t w = tick_at();
		ck_assert_int_ge(w, 1);
		ck_assert_int_le(w, 100);
		T = T + w < until ? T + w : until;
	}
	tick_at();
}

/* Started and synced long ago, so that no hold-back is in the way. */
static void start_synced(void)
{
	start();
	stale_on_broker(st, true, T);
	run_until(T + 60 * SEC);
	clear_msgs();
}

/* Every key in [from, to) publishes at T, each producer period. */
static void keep_alive(unsigned from, unsigned to, int64_t until)
{
	while (T < until) {
		for (unsigned i = from; i < to; i++)
			live(keys[i]);
		run_until(T + 500);
	}
}

/* ----------------------------------------------------------- grouping */

START_TEST(thousand_keys_one_alert)
{
	json_t *o;

	start_synced();
	for (int i = 0; i < 1000; i++)
		live(mk("plant/gw7/p%04d", i));
	for (int i = 0; i < 10; i++)
		live(mk("plant/gw8/p%d", i));
	keep_alive(0, 1010, T + 5 * SEC);
	/* gw7 stops; gw8 goes on. */
	keep_alive(1000, 1010, T + 30 * SEC);
	ck_assert_uint_eq(STAT_GET(stale_keys), 1000);
	ck_assert_uint_eq(alerts_under("statemirror/alerts/"), 1);
	ck_assert_str_eq(msgs[0].topic, "statemirror/alerts/group/plant/gw7");
	o = msg_json(0);
	ck_assert_str_eq(jstr(o, "alert"), "stale");
	ck_assert_str_eq(jstr(o, "state"), "stale");
	ck_assert_str_eq(jstr(o, "group"), "plant/gw7");
	ck_assert_int_eq(jint(o, "count"), 1000);
	ck_assert_uint_eq(json_array_size(json_object_get(o, "examples")), ALERTS_EXAMPLES);
	ck_assert_ptr_nonnull(strstr(jstr(o, "summary"), "1000 keys stale under plant/gw7"));
	{
		/* as old as its first stale key, not the group wait later */
		int64_t first = INT64_MAX;
		char want[32];

		for (int i = 0; i < 1000; i++)
			if (keys[i]->stale_since_ms < first)
				first = keys[i]->stale_since_ms;
		ck_assert_int_gt(first, 0);
		ck_assert_str_eq(jstr(o, "since"), clock_format_rfc3339(first, want));
		ck_assert_str_lt(jstr(o, "since"), jstr(o, "time"));
	}
	json_decref(o);
	ck_assert_uint_eq(STAT_GET(alerts_sent), 1);

	/* It comes back: one resolution, then the retained copy is cleared. */
	clear_msgs();
	keep_alive(0, 1010, T + 30 * SEC);
	ck_assert_uint_eq(STAT_GET(stale_keys), 0);
	ck_assert_uint_eq(nmsgs, 2);
	o = msg_json(0);
	ck_assert_str_eq(jstr(o, "state"), "resolved");
	ck_assert_int_eq(jint(o, "count"), 0);
	ck_assert_int_eq(jint(o, "recovered"), 1000);
	json_decref(o);
	ck_assert_str_eq(msgs[1].topic, "statemirror/alerts/group/plant/gw7");
	ck_assert_str_eq(msgs[1].payload, "");
	ck_assert_uint_eq(alerts_open_incidents(A), 0);
}
END_TEST

START_TEST(staggered_stop_few_alerts)
{
	/* 1000 keys whose last messages are spread over a second: still a
	 * handful of messages (the first alert, then at most an update per
	 * group interval). */
	start_synced();
	for (int i = 0; i < 1000; i++)
		live(mk("plant/gw7/p%04d", i));
	for (int i = 0; i < 1000; i++) {
		T += 1;
		live(keys[i]);
	}
	run_until(T + 60 * SEC);
	ck_assert_uint_eq(STAT_GET(stale_keys), 1000);
	ck_assert_uint_ge(alerts_under("statemirror/alerts/"), 1);
	ck_assert_uint_le(alerts_under("statemirror/alerts/"), 3);
	{
		json_t *o = msg_json(nmsgs - 1);
		ck_assert_int_eq(jint(o, "count"), 1000);
		json_decref(o);
	}
}
END_TEST

/* A thousand unrelated producers die in one flush: a thousand alerts, and
 * the delivery queue takes every one (each retained state must get out). */
START_TEST(thousand_groups_all_delivered)
{
	start_synced();
	for (int i = 0; i < 1000; i++)
		live(mk("prod%04d/x", i));
	run_until(T + 10 * SEC);
	ck_assert_uint_eq(alerts_under("statemirror/alerts/group/prod"), 1000);
	ck_assert_uint_eq(STAT_GET(alerts_dropped), 0);
}
END_TEST

START_TEST(rollup_to_common_parent)
{
	json_t *o;

	/* A gateway with 100 devices of 10 points each, and an unrelated one. */
	start_synced();
	for (int d = 0; d < 100; d++)
		for (int p = 0; p < 10; p++)
			live(mk("gw1/dev%03d/p%d", d, p));
	live(mk("other/x/temp"));
	live(mk("other/y/temp"));
	live(mk("lonely/a/b/c"));
	run_until(T + 10 * SEC);
	ck_assert_uint_eq(STAT_GET(stale_keys), 1003);
	/* gw1's devices roll up into gw1; other/x and other/y into other;
	 * lonely/a/b stays as it is. */
	ck_assert_uint_eq(alerts_under("statemirror/alerts/"), 3);
	ck_assert_uint_eq(alerts_under("statemirror/alerts/group/gw1"), 1);
	ck_assert_uint_eq(alerts_under("statemirror/alerts/group/other"), 1);
	ck_assert_uint_eq(alerts_under("statemirror/alerts/group/lonely/a/b"), 1);
	for (unsigned i = 0; i < nmsgs; i++) {
		o = msg_json(i);
		if (strcmp(jstr(o, "group"), "gw1") == 0)
			ck_assert_int_eq(jint(o, "count"), 1000);
		else if (strcmp(jstr(o, "group"), "other") == 0)
			ck_assert_int_eq(jint(o, "count"), 2);
		else
			ck_assert_str_eq(jstr(o, "group"), "lonely/a/b");
		json_decref(o);
	}

	/* A later stale key under gw1 joins the open alert (an update). */
	clear_msgs();
	live(mk("gw1/dev999/p%d", 0));
	run_until(T + 30 * SEC);
	ck_assert_uint_eq(nmsgs, 1);
	o = msg_json(0);
	ck_assert_str_eq(jstr(o, "group"), "gw1");
	ck_assert_int_eq(jint(o, "count"), 1001);
	ck_assert_int_eq(jint(o, "new"), 1);
	json_decref(o);
}
END_TEST

/* Two edge nodes of one group die together: one alert each, named after
 * the producer, not rolled up into the group; keys of a producer that is
 * not a prefix of them are grouped as usual. */
START_TEST(one_alert_per_dead_producer)
{
	json_t *o;
	unsigned n1 = 0;

	conf_free(&conf);
	ck_assert_int_eq(conf_defaults(&conf), 0);
	add_rule("#", 600 * SEC); /* cadence alone would wait half an hour */
	start_synced();
	for (int i = 0; i < 50; i++)
		live(mk("spBv1.0/G/E1/D%d/m", i));
	for (int i = 0; i < 50; i++)
		live(mk("spBv1.0/G/E2/m%d", i));
	live(mk("spBv1.0/G/E3/m"));
	T += SEC;
	for (unsigned i = 0; i < 50; i++)
		stale_mark_dead(st, keys[i], STALE_REASON_PRODUCER_OFFLINE, 12, T, NULL, NULL);
	for (unsigned i = 50; i < 100; i++)
		stale_mark_dead(st, keys[i], STALE_REASON_PRODUCER_OFFLINE, 12, T, NULL, NULL);
	ck_assert_uint_eq(STAT_GET(stale_keys), 100);
	run_until(T + 5 * SEC); /* the group wait, not grace x cadence */
	ck_assert_uint_eq(alerts_under("statemirror/alerts/"), 2);
	for (unsigned i = 0; i < nmsgs; i++) {
		o = msg_json(i);
		ck_assert_int_eq(jint(o, "count"), 50);
		ck_assert(!strcmp(jstr(o, "producer"), "spBv1.0/G/E1") ||
			  !strcmp(jstr(o, "producer"), "spBv1.0/G/E2"));
		ck_assert_str_eq(jstr(o, "group"), jstr(o, "producer"));
		ck_assert_ptr_nonnull(strstr(jstr(o, "summary"), "offline"));
		if (!strcmp(msgs[i].topic, "statemirror/alerts/group/spBv1.0/G/E1"))
			n1++;
		json_decref(o);
	}
	ck_assert_uint_eq(n1, 1);
	ck_assert_uint_eq(alerts_open_incidents(A), 2);

	/* E1's keys are heard again: its alert resolves, E2's stays. */
	clear_msgs();
	for (unsigned i = 0; i < 50; i++)
		live(keys[i]);
	run_until(T + 30 * SEC);
	ck_assert_uint_eq(alerts_open_incidents(A), 1);
	ck_assert_uint_eq(alerts_under("statemirror/alerts/group/spBv1.0/G/E1"), 1);
	ck_assert_uint_eq(alerts_under("statemirror/alerts/group/spBv1.0/G/E2"), 0);
	o = msg_json(0);
	ck_assert_str_eq(jstr(o, "state"), "resolved");
	json_decref(o);
}
END_TEST

START_TEST(updates_rate_limited)
{
	/* Keys of one group go stale one by one every second: the open alert
	 * is updated at most once per group interval (5 x group wait). */
	start_synced();
	for (int i = 0; i < 40; i++)
		live(mk("g/k%d", i));
	for (int i = 0; i < 40; i++) {
		for (int j = i; j < 40; j++)
			live(keys[j]);
		run_until(T + SEC);
	}
	run_until(T + 30 * SEC);
	ck_assert_uint_eq(STAT_GET(stale_keys), 40);
	/* ~43 s of changes: the first alert plus at most one per 10 s. */
	ck_assert_uint_le(alerts_under("statemirror/alerts/"), 6);
	{
		json_t *o = msg_json(nmsgs - 1);
		ck_assert_int_eq(jint(o, "count"), 40);
		json_decref(o);
	}
}
END_TEST

/* -------------------------------------------------------- hysteresis */

START_TEST(flapping_within_group_wait)
{
	struct rec *r;

	start_synced();
	r = mk("f/lap");
	live(r);
	/* Stale for a second, fresh again, fifty times: it never holds
	 * through the group wait, so nobody is paged. */
	for (int i = 0; i < 50; i++) {
		run_until(T + 4 * SEC);
		ck_assert(r->flags & REC_STALE);
		live(r);
		ck_assert(!(r->flags & REC_STALE));
	}
	ck_assert_uint_eq(STAT_GET(stale_transitions), 50);
	ck_assert_uint_eq(nmsgs, 0);
	ck_assert_uint_eq(STAT_GET(alerts_sent), 0);
}
END_TEST

START_TEST(min_hold)
{
	struct rec *r;

	conf.min_hold_ms = 20 * SEC;
	start_synced();
	r = mk("f/lap");
	live(r);
	/* Stale for 15 s at a time: under min_hold, never alerted. */
	for (int i = 0; i < 5; i++) {
		run_until(T + 18 * SEC);
		live(r);
	}
	ck_assert_uint_eq(nmsgs, 0);
	/* Stale for good: alerted once it held 20 s (+ the group wait). */
	run_until(T + 3 * SEC + 20 * SEC);
	ck_assert_uint_eq(nmsgs, 0);
	run_until(T + 3 * SEC);
	ck_assert_uint_eq(alerts_under("statemirror/alerts/group/f"), 1);
	/* A short recovery (under min_hold) does not resolve it. */
	clear_msgs();
	live(r);
	run_until(T + 2 * SEC);
	ck_assert(!(r->flags & REC_STALE));
	run_until(T + 30 * SEC);
	ck_assert(r->flags & REC_STALE);
	ck_assert_uint_eq(nmsgs, 0);
}
END_TEST

/* ------------------------------------------------- the mirror's link */

START_TEST(disconnect_one_mirror_alert)
{
	json_t *o;

	start_synced();
	for (int i = 0; i < 500; i++)
		live(mk("a%d/x/y", i));
	keep_alive(0, 500, T + 5 * SEC);
	/* The broker goes away: every key goes stale (truthfully), but the
	 * only alert is the mirror's own, after the mirror wait (30 s). */
	stale_on_broker(st, false, T);
	run_until(T + 29 * SEC);
	ck_assert_uint_eq(STAT_GET(stale_keys), 500);
	ck_assert_uint_eq(nmsgs, 0);
	run_until(T + 2 * SEC);
	ck_assert_uint_eq(nmsgs, 1);
	ck_assert_str_eq(msgs[0].topic, "statemirror/alerts/mirror");
	o = msg_json(0);
	ck_assert_str_eq(jstr(o, "alert"), "mirror");
	ck_assert_str_eq(jstr(o, "state"), "disconnected");
	json_decref(o);
	run_until(T + 600 * SEC);
	ck_assert_uint_eq(nmsgs, 1);

	/* Back, and every producer alive: the mirror alert resolves, and no
	 * key alert is ever sent. */
	stale_on_broker(st, true, T);
	keep_alive(0, 500, T + 60 * SEC);
	ck_assert_uint_eq(STAT_GET(stale_keys), 0);
	ck_assert_uint_eq(nmsgs, 3);
	o = msg_json(1);
	ck_assert_str_eq(jstr(o, "state"), "resolved");
	json_decref(o);
	ck_assert_str_eq(msgs[2].payload, "");
	ck_assert_uint_eq(alerts_under("statemirror/alerts/group"), 0);
	ck_assert_uint_eq(STAT_GET(alerts_sent), 2);
}
END_TEST

START_TEST(blip_pages_nobody)
{
	start_synced();
	for (int i = 0; i < 100; i++)
		live(mk("b/%d", i));
	keep_alive(0, 100, T + 5 * SEC);
	stale_on_broker(st, false, T);
	run_until(T + 8 * SEC);           /* long enough for every key to go stale */
	ck_assert_uint_eq(STAT_GET(stale_keys), 100);
	stale_on_broker(st, true, T);
	keep_alive(0, 100, T + 60 * SEC);
	ck_assert_uint_eq(nmsgs, 0);
	ck_assert_uint_eq(STAT_GET(alerts_sent), 0);
}
END_TEST

/* Only keys [from, to) speak: a message every period, the first one at
 * T + phase; returns at until. */
static void speak(unsigned from, unsigned to, int64_t phase, int64_t period, int64_t until)
{
	int64_t next = T + phase;

	while (T < until) {
		if (T >= next) {
			for (unsigned i = from; i < to; i++)
				live(keys[i]);
			next += period;
		}
		run_until(next < until ? next : until);
	}
}

static void slow_rules(void)
{
	free(conf.rules[0].filter);
	conf.nrules = 0;
	add_rule("#", 10 * SEC); /* a window of 30 s */
}

START_TEST(producer_died_during_outage_pages)
{
	json_t *o;
	int64_t resync;

	slow_rules();
	start_synced();
	for (int i = 0; i < 50; i++)
		live(mk("alive/k%d", i));
	for (int i = 0; i < 50; i++)
		live(mk("dead/k%d", i));
	speak(0, 100, 0, 10 * SEC, T + 25 * SEC);
	stale_on_broker(st, false, T);
	run_until(T + 60 * SEC);
	ck_assert_uint_eq(STAT_GET(stale_keys), 100);
	ck_assert_uint_eq(alerts_under("statemirror/alerts/group"), 0);
	clear_msgs();
	stale_on_broker(st, true, T);
	resync = T;
	/* The alive producer is next heard 8 s after the re-sync; the dead one
	 * never. Nothing may be alerted before each key has had its window
	 * (30 s) to be heard from. */
	speak(0, 50, 8 * SEC, 10 * SEC, resync + 30 * SEC);
	ck_assert_uint_eq(STAT_GET(stale_keys), 50);
	ck_assert_uint_eq(alerts_under("statemirror/alerts/group"), 0);
	speak(0, 50, 8 * SEC, 10 * SEC, resync + 60 * SEC);
	ck_assert_uint_eq(alerts_under("statemirror/alerts/group/dead"), 1);
	ck_assert_uint_eq(alerts_under("statemirror/alerts/group"), 1);
	for (unsigned i = 0; i < nmsgs; i++) {
		if (strcmp(msgs[i].topic, "statemirror/alerts/group/dead") != 0)
			continue;
		o = msg_json(i);
		ck_assert_int_eq(jint(o, "count"), 50);
		json_decref(o);
	}
}
END_TEST

START_TEST(stale_after_resync_from_missed_messages)
{
	int64_t resync;
	struct rec *alive, *dead;

	/* Cadence 10 s (window 30 s). The alive producer publishes every 12 s;
	 * we miss two of its messages during a 25 s outage, so its key turns
	 * stale 4 s after the re-sync, and is heard 10 s after. That gap is
	 * ours, not the producer's: no page. The dead producer's key turns
	 * stale at the same moment and does page, once its hold-back is over. */
	slow_rules();
	start_synced();
	alive = mk("alive/k");
	dead = mk("dead/k");
	live(alive);
	live(dead);
	run_until(T + 12 * SEC);
	live(alive);
	live(dead);
	run_until(T + 1 * SEC);
	stale_on_broker(st, false, T);
	run_until(T + 25 * SEC);
	ck_assert_uint_eq(STAT_GET(stale_keys), 0);
	stale_on_broker(st, true, T);
	resync = T;
	run_until(resync + 5 * SEC);
	ck_assert(alive->flags & REC_STALE);
	ck_assert(dead->flags & REC_STALE);
	run_until(resync + 10 * SEC);
	live(alive);
	speak(0, 1, 12 * SEC, 12 * SEC, resync + 29 * SEC);
	ck_assert_uint_eq(nmsgs, 0);
	speak(0, 1, 12 * SEC, 12 * SEC, resync + 60 * SEC);
	ck_assert_uint_eq(alerts_under("statemirror/alerts/group"), 1);
	ck_assert_uint_eq(alerts_under("statemirror/alerts/group/dead"), 1);
}
END_TEST

START_TEST(restart_holds_back)
{
	struct rec *r;
	int64_t boot;

	/* Keys loaded from the store after 10 minutes down: all stale. */
	slow_rules();
	start();
	for (int i = 0; i < 20; i++) {
		r = mk("%s/k%d", i < 10 ? "alive" : "dead", i);
		r->last_seen_ms = T - 600 * SEC;
		r->updates = 5;
		ck_assert(stale_on_load(st, r, T));
		ck_assert(r->flags & REC_STALE);
	}
	ck_assert_uint_eq(STAT_GET(stale_keys), 20);
	run_until(T + 5 * SEC);  /* connecting, syncing */
	stale_on_broker(st, true, T);
	boot = T;
	speak(0, 10, 9 * SEC, 10 * SEC, boot + 30 * SEC);
	ck_assert_uint_eq(STAT_GET(stale_keys), 10);
	ck_assert_uint_eq(nmsgs, 0);
	speak(0, 10, 9 * SEC, 10 * SEC, boot + 90 * SEC);
	/* The producer that died meanwhile pages, once; the alive one never. */
	ck_assert_uint_eq(alerts_under("statemirror/alerts/"), 1);
	ck_assert_uint_eq(alerts_under("statemirror/alerts/group/dead"), 1);
}
END_TEST

START_TEST(slow_startup_raises_mirror_alert)
{
	start();
	run_until(T + 29 * SEC);
	ck_assert_uint_eq(nmsgs, 0);
	run_until(T + 2 * SEC);
	ck_assert_uint_eq(alerts_under("statemirror/alerts/mirror"), 1);
}
END_TEST

START_TEST(adopts_alerts_of_an_earlier_run)
{
	struct rec *old = mk("statemirror/alerts/group/gone%d", 1);
	struct rec *mir = mk("statemirror/alerts/mirror");
	struct rec *k = mk("gone1/k%d", 0);
	const char *p = "{\"alert\":\"stale\",\"group\":\"gone1\",\"state\":\"stale\",\"count\":3}";
	const char *m = "{\"alert\":\"mirror\",\"state\":\"disconnected\"}";
	unsigned resolved = 0, cleared = 0;

	ck_assert_int_eq(rec_set_payload(old, p, strlen(p)), 0);
	ck_assert_int_eq(rec_set_payload(mir, m, strlen(m)), 0);
	start();
	stale_on_load(st, old, T);
	stale_on_load(st, mir, T);
	ck_assert(old->flags & REC_NO_STALE);
	k->last_seen_ms = T - 1000 * SEC;
	stale_on_load(st, k, T);
	ck_assert_uint_eq(alerts_open_incidents(A), 1);
	stale_on_broker(st, true, T);
	/* gone1/k0 is back: the adopted alert is resolved and cleared, as is
	 * the mirror alert. */
	keep_alive(2, 3, T + 30 * SEC);
	for (unsigned i = 0; i < nmsgs; i++) {
		if (strcmp(msgs[i].topic, "statemirror/alerts/group/gone1") == 0) {
			if (msgs[i].payload[0]) {
				json_t *o = msg_json(i);
				ck_assert_str_eq(jstr(o, "state"), "resolved");
				json_decref(o);
				resolved++;
			} else {
				cleared++;
			}
		}
	}
	ck_assert_uint_eq(resolved, 1);
	ck_assert_uint_eq(cleared, 1);
	ck_assert_uint_eq(alerts_under("statemirror/alerts/mirror"), 1);
}
END_TEST

/* A restart over open alerts: the keys still stale after their windows
 * rejoin the adopted alerts. Same count: nothing is sent (no false
 * "resolved", no second page); another count: one update, still stale. */
START_TEST(restart_over_open_alerts_pages_nobody)
{
	const char *p1 = "{\"alert\":\"stale\",\"group\":\"gone1\",\"state\":\"stale\",\"count\":10}";
	const char *p2 = "{\"alert\":\"stale\",\"group\":\"gone2\",\"state\":\"stale\",\"count\":5,"
			 "\"since\":\"2026-11-22T01:00:00.000Z\"}";
	struct rec *r;
	unsigned n2 = 0;

	r = mk("statemirror/alerts/group/gone1");
	ck_assert_int_eq(rec_set_payload(r, p1, strlen(p1)), 0);
	r = mk("statemirror/alerts/group/gone2");
	ck_assert_int_eq(rec_set_payload(r, p2, strlen(p2)), 0);
	start();
	stale_on_load(st, keys[0], T);
	stale_on_load(st, keys[1], T);
	for (int i = 0; i < 13; i++) {
		r = mk("gone%d/k%d", i < 10 ? 1 : 2, i);
		r->last_seen_ms = T - 600 * SEC;
		r->updates = 5;
		ck_assert(stale_on_load(st, r, T));
	}
	ck_assert_uint_eq(alerts_open_incidents(A), 2);
	run_until(T + 2 * SEC);
	stale_on_broker(st, true, T);
	run_until(T + 120 * SEC);
	ck_assert_uint_eq(STAT_GET(stale_keys), 13);
	for (unsigned i = 0; i < nmsgs; i++) {
		json_t *o;

		ck_assert_msg(strcmp(msgs[i].topic, "statemirror/alerts/group/gone1") != 0,
			      "gone1 did not change, yet: %s", msgs[i].payload);
		if (strcmp(msgs[i].topic, "statemirror/alerts/group/gone2") != 0)
			continue;
		o = msg_json(i);
		ck_assert_str_eq(jstr(o, "state"), "stale");
		ck_assert_int_eq(jint(o, "count"), 3);
		/* still as old as the earlier run said */
		ck_assert_str_eq(jstr(o, "since"), "2026-11-22T01:00:00.000Z");
		json_decref(o);
		n2++;
	}
	ck_assert_uint_eq(n2, 1);
	ck_assert_uint_eq(alerts_open_incidents(A), 2);
	/* and they still resolve when their keys come back */
	clear_msgs();
	keep_alive(2, 15, T + 30 * SEC);
	ck_assert_uint_eq(alerts_open_incidents(A), 0);
	ck_assert_uint_eq(STAT_GET(stale_keys), 0);
}
END_TEST

/* A broker blip while an alert is open: it stays open, silently. */
START_TEST(blip_keeps_open_alert)
{
	start_synced();
	for (int i = 0; i < 10; i++)
		live(mk("held/gw/k%d", i));
	keep_alive(0, 10, T + 5 * SEC);
	run_until(T + 10 * SEC);
	ck_assert_uint_eq(alerts_under("statemirror/alerts/group/held"), 1);
	clear_msgs();
	stale_on_broker(st, false, T);
	run_until(T + 10 * SEC);
	stale_on_broker(st, true, T);
	run_until(T + 120 * SEC);
	ck_assert_uint_eq(STAT_GET(stale_keys), 10);
	ck_assert_msg(nmsgs == 0, "%u messages, the first %s: %s", nmsgs, nmsgs ? msgs[0].topic : "",
		      nmsgs ? msgs[0].payload : "");
}
END_TEST

/* ------------------------------------------------------------- exec */

static char dir[64];

static void write_script(const char *name, const char *body)
{
	char path[128];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	fprintf(f, "#!/bin/sh\n%s\n", body);
	fclose(f);
	ck_assert_int_eq(chmod(path, 0755), 0);
}

/* Wait (really: the child is a real process) until no exec child is left,
 * ticking with the injected clock; a deadline, no bare sleep. */
static void wait_children(void)
{
	struct timespec ts = { 0, 5 * 1000 * 1000 };

	for (int i = 0; i < 2000; i++) {
		tick_at();
		if (!deliver_exec_running(D) && !deliver_exec_queued(D))
			return;
		nanosleep(&ts, NULL);
	}
	ck_abort_msg("exec children did not finish");
}

static void exec_setup(void)
{
	setup();
	snprintf(dir, sizeof(dir), "/tmp/sm-test-alerts-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void exec_teardown(void)
{
	char cmd[128];

	teardown();
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	ck_assert_int_eq(system(cmd), 0);
}

static void exec_conf(const char *script)
{
	char line[256];

	snprintf(line, sizeof(line), "%s/%s", dir, script);
	ck_assert_int_eq(conf_set_str(&conf.alert_exec, line), 0);
	conf.alert_exec_timeout_ms = 5 * SEC;
}

START_TEST(exec_gets_alert_on_stdin)
{
	char body[512], path[128], buf[4096];
	FILE *f;
	size_t n;
	json_t *o;
	json_error_t err;

	snprintf(body, sizeof(body),
		 "cat > %s/alert.$$.tmp && echo \"$STATEMIRROR_ALERT_STATE $STATEMIRROR_ALERT_GROUP "
		 "$(tr '\\0' '\\n' < /proc/$$/environ | grep -c ^STATEMIRROR_ALERT_STATE=)\" > %s/env && mv %s/alert.$$.tmp %s/alert.json",
		 dir, dir, dir, dir);
	write_script("pager", body);
	exec_conf("pager");
	/* The daemon's own environment must not shadow the alert's values. */
	setenv("STATEMIRROR_ALERT_STATE", "from-the-daemon", 1);
	start_synced();
	for (int i = 0; i < 10; i++)
		live(mk("site/gw/%d", i));
	run_until(T + 10 * SEC);
	ck_assert_uint_eq(STAT_GET(alerts_sent), 1);
	wait_children();
	ck_assert_uint_eq(STAT_GET(alert_exec_failures), 0);
	snprintf(path, sizeof(path), "%s/alert.json", dir);
	f = fopen(path, "r");
	ck_assert_ptr_nonnull(f);
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	ck_assert_int_eq(buf[n - 1], '\n');
	o = json_loads(buf, 0, &err);
	ck_assert_ptr_nonnull(o);
	ck_assert_str_eq(jstr(o, "group"), "site/gw");
	ck_assert_int_eq(jint(o, "count"), 10);
	json_decref(o);
	snprintf(path, sizeof(path), "%s/env", dir);
	f = fopen(path, "r");
	ck_assert_ptr_nonnull(f);
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	unsetenv("STATEMIRROR_ALERT_STATE");
	ck_assert_str_eq(buf, "stale site/gw 1\n");   /* execve passed one STATEMIRROR_ALERT_STATE, ours */
}
END_TEST

START_TEST(exec_failures_counted)
{
	write_script("fails", "exit 3");
	exec_conf("fails");
	start_synced();
	live(mk("x/%d", 1));
	run_until(T + 10 * SEC);
	wait_children();
	ck_assert_uint_eq(STAT_GET(alert_exec_failures), 1);
	ck_assert_uint_eq(STAT_GET(alerts_sent), 1);
}
END_TEST

START_TEST(exec_missing_program_counted)
{
	exec_conf("no-such-program");
	start_synced();
	live(mk("x/%d", 1));
	run_until(T + 10 * SEC);
	wait_children();
	ck_assert_uint_eq(STAT_GET(alert_exec_failures), 1);
	ck_assert_uint_eq(alerts_under("statemirror/alerts/group/x"), 1); /* MQTT still got it */
}
END_TEST

START_TEST(exec_timeout_kills)
{
	struct timespec ts = { 0, 20 * 1000 * 1000 };

	write_script("hangs", "exec sleep 60");
	exec_conf("hangs");
	start_synced();
	live(mk("x/%d", 1));
	run_until(T + 10 * SEC);
	ck_assert_uint_eq(deliver_exec_running(D), 1);
	nanosleep(&ts, NULL); /* let it really start; the timeout itself is injected */
	T += 5 * SEC;
	tick_at();
	ck_assert_uint_eq(STAT_GET(alert_exec_failures), 1);
	wait_children();
	ck_assert_uint_eq(STAT_GET(alert_exec_failures), 1); /* counted once */
}
END_TEST

START_TEST(exec_bounded_and_coalesced)
{
	write_script("slow", "exec sleep 60");
	exec_conf("slow");
	start_synced();
	/* 200 unrelated groups stale in one flush: 200 alerts; at most
	 * DELIVER_EXEC_MAX_CHILDREN run, DELIVER_EXEC_QUEUE wait, the rest are
	 * dropped and counted. */
	for (int i = 0; i < 200; i++)
		live(mk("p%d/x", i));
	run_until(T + 10 * SEC);
	ck_assert_uint_eq(alerts_under("statemirror/alerts/"), 200);
	ck_assert_uint_eq(deliver_exec_running(D), DELIVER_EXEC_MAX_CHILDREN);
	ck_assert_uint_eq(deliver_exec_queued(D), DELIVER_EXEC_QUEUE);
	ck_assert_uint_eq(STAT_GET(alert_exec_failures), 200 - DELIVER_EXEC_MAX_CHILDREN - DELIVER_EXEC_QUEUE);
	/* The timeouts free the slots; every queued one runs and is killed. */
	for (int round = 0; round < 40 && (deliver_exec_running(D) || deliver_exec_queued(D)); round++) {
		struct timespec ts = { 0, 10 * 1000 * 1000 };
		T += 5 * SEC;
		tick_at();
		nanosleep(&ts, NULL);
		tick_at();
	}
	wait_children();
	ck_assert_uint_eq(STAT_GET(alert_exec_failures), 200);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("alerts");
	TCase *tc = tcase_create("grouping");
	TCase *te = tcase_create("exec");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, thousand_keys_one_alert);
	tcase_add_test(tc, thousand_groups_all_delivered);
	tcase_add_test(tc, staggered_stop_few_alerts);
	tcase_add_test(tc, rollup_to_common_parent);
	tcase_add_test(tc, one_alert_per_dead_producer);
	tcase_add_test(tc, updates_rate_limited);
	tcase_add_test(tc, flapping_within_group_wait);
	tcase_add_test(tc, min_hold);
	tcase_add_test(tc, disconnect_one_mirror_alert);
	tcase_add_test(tc, blip_pages_nobody);
	tcase_add_test(tc, producer_died_during_outage_pages);
	tcase_add_test(tc, stale_after_resync_from_missed_messages);
	tcase_add_test(tc, restart_holds_back);
	tcase_add_test(tc, slow_startup_raises_mirror_alert);
	tcase_add_test(tc, adopts_alerts_of_an_earlier_run);
	tcase_add_test(tc, restart_over_open_alerts_pages_nobody);
	tcase_add_test(tc, blip_keeps_open_alert);
	suite_add_tcase(s, tc);

	tcase_add_checked_fixture(te, exec_setup, exec_teardown);
	tcase_set_timeout(te, 60);
	tcase_add_test(te, exec_gets_alert_on_stdin);
	tcase_add_test(te, exec_failures_counted);
	tcase_add_test(te, exec_missing_program_counted);
	tcase_add_test(te, exec_timeout_kills);
	tcase_add_test(te, exec_bounded_and_coalesced);
	suite_add_tcase(s, te);
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
