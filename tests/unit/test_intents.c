/* SPDX-License-Identifier: MIT */
/* test_intents.c: the intent engine: order, PUBACK, expiry, outcomes, waiters, the outbox file. */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mirror/state/intents.h"
#include "store/outbox.h"
#include "store/store.h"

#define T0 1795313402123LL /* the request time of most tests */

/* ---- a publisher that records what the session would send ---- */

struct sent {
	char topic[64];
	char payload[256];
	char corr[64];
	int qos;
	uint32_t expiry_s;
	int mid;
};

static struct sent sent[64];
static int nsent, next_mid, refuse;

static int rec_publish(void *ctx, const char *topic, const void *payload, size_t len, int qos,
		       const char *corr, uint32_t expiry_s, int *ret_mid)
{
	struct sent *s;

	(void)ctx;
	if (refuse)
		return -ENOTCONN;
	ck_assert_int_lt(nsent, 64);
	s = &sent[nsent++];
	snprintf(s->topic, sizeof(s->topic), "%s", topic);
	snprintf(s->payload, sizeof(s->payload), "%.*s", (int)len, (const char *)payload);
	snprintf(s->corr, sizeof(s->corr), "%s", corr);
	s->qos = qos;
	s->expiry_s = expiry_s;
	s->mid = *ret_mid = ++next_mid;
	return 0;
}

static void reset_sent(void)
{
	nsent = 0;
	next_mid = 100;
	refuse = 0;
}

static struct intents *mk(size_t outbox_max, int qos)
{
	struct intents_limits lim = { .outbox_max = outbox_max, .history = 8, .qos = qos };
	struct intents *in = NULL;
	char err[128];

	reset_sent();
	ck_assert_int_eq(intents_new(&lim, NULL, T0, &in, err, sizeof(err)), 0);
	return in;
}

static int64_t submit(struct intents *in, const char *topic, json_t *value, const char *confirm,
		      json_t *before, int64_t now)
{
	struct intent_request rq = { .topic = topic, .value = value, .confirm_topic = confirm,
				     .expire_ms = 30000, .timeout_ms = 10000, .before = before };
	int64_t id = -1;
	char err[128];

	ck_assert_int_eq(intents_submit(in, &rq, now, &id, err, sizeof(err)), 0);
	json_decref(value);
	json_decref(before);
	return id;
}

static int grab(const struct intent_info *it, void *ctx)
{
	struct intent_info *out = ctx;

	*out = *it;
	out->requested = NULL; /* not valid after the call */
	out->topic = out->correlation_id = NULL;
	if (it->observed)
		out->observed = (const json_t *)(intptr_t)json_integer_value(it->observed);
	return 0;
}

static int64_t decided_of(struct intents *in, int64_t id)
{
	struct intent_info it;

	ck_assert_int_eq(intents_get(in, id, grab, &it), 0);
	ck_assert_int_ge(it.decided_ms, it.published_ms);
	return it.decided_ms;
}

static enum intent_state state_of(struct intents *in, int64_t id)
{
	struct intent_info it;

	ck_assert_msg(intents_get(in, id, grab, &it) == 0, "no intent %lld", (long long)id);
	return it.state;
}

static json_int_t observed_of(struct intents *in, int64_t id)
{
	struct intent_info it;

	ck_assert_int_eq(intents_get(in, id, grab, &it), 0);
	return (json_int_t)(intptr_t)it.observed;
}

static void observe(struct intents *in, const char *topic, const char *payload)
{
	intents_observe(in, topic, strlen(topic), payload, strlen(payload), 0);
}

/* payloads carry ts; observe() passes 0 as the observation time, so use this */
static void observe_at(struct intents *in, const char *topic, const char *payload, int64_t ts_ms)
{
	intents_observe(in, topic, strlen(topic), payload, strlen(payload), ts_ms * 1000000);
}

START_TEST(publishes_in_order_with_request_time_and_correlation)
{
	struct intents *in = mk(10, 1);
	int64_t a = submit(in, "bms/ahu1/setpoint/set", json_real(21.5), NULL, NULL, T0);
	int64_t b = submit(in, "bms/ahu2/setpoint/set", json_integer(19), NULL, NULL, T0 + 1);

	ck_assert_int_lt(a, b);
	intents_pump(in, T0 + 2, rec_publish, NULL);
	ck_assert_int_eq(nsent, 2);
	ck_assert_str_eq(sent[0].topic, "bms/ahu1/setpoint/set");
	ck_assert_str_eq(sent[1].topic, "bms/ahu2/setpoint/set");
	ck_assert_int_eq(sent[0].qos, 1);
	ck_assert_uint_eq(sent[0].expiry_s, 30);
	{
		json_t *m = json_loads(sent[0].payload, 0, NULL);

		ck_assert_ptr_nonnull(m);
		ck_assert(json_real_value(json_object_get(m, "value")) == 21.5);
		ck_assert_int_eq(json_integer_value(json_object_get(m, "ts")), T0);
		ck_assert_str_eq(json_string_value(json_object_get(m, "correlation_id")),
				 sent[0].corr);
		json_decref(m);
	}
	ck_assert_str_ne(sent[0].corr, sent[1].corr);
	/* the value as the user wrote it, not 21.899999999999999 */
	submit(in, "bms/ahu3/setpoint/set", json_real(21.9), NULL, NULL, T0 + 1);
	intents_pump(in, T0 + 2, rec_publish, NULL);
	ck_assert_int_eq(nsent, 3);
	ck_assert_msg(strstr(sent[2].payload, "{\"value\":21.9,") == sent[2].payload, "%s",
		      sent[2].payload);
	/* in flight: not sent twice */
	intents_pump(in, T0 + 3, rec_publish, NULL);
	ck_assert_int_eq(nsent, 3);
	ck_assert_int_eq(state_of(in, a), INTENT_PENDING);
	/* PUBACK: published; no confirm key, so that is final */
	intents_acked(in, sent[0].mid, T0 + 50);
	ck_assert_int_eq(state_of(in, a), INTENT_PUBLISHED);
	ck_assert_int_eq(state_of(in, b), INTENT_PENDING);
	{
		struct intents_stats st;

		intents_stats(in, &st);
		ck_assert_uint_eq(st.outbox_depth, 2);
		ck_assert_uint_eq(st.outcomes[INTENT_PUBLISHED], 1);
		ck_assert_uint_eq(st.publish_latency_sum_ms, 50);
	}
	intents_free(in);
}
END_TEST

START_TEST(broker_away_keeps_order_then_link_down_resends)
{
	struct intents *in = mk(10, 1);
	int64_t a = submit(in, "x/1", json_integer(1), NULL, NULL, T0);

	refuse = 1;
	intents_pump(in, T0 + 1, rec_publish, NULL);
	ck_assert_int_eq(nsent, 0);
	submit(in, "x/2", json_integer(2), NULL, NULL, T0 + 2);
	refuse = 0;
	intents_pump(in, T0 + 3, rec_publish, NULL);
	ck_assert_int_eq(nsent, 2);
	ck_assert_str_eq(sent[0].topic, "x/1");
	ck_assert_str_eq(sent[1].topic, "x/2");
	/* the link drops before the PUBACKs: both are sent again, in order */
	ck_assert_uint_eq(intents_link_down(in), 2);
	intents_acked(in, sent[0].mid, T0 + 4); /* a stale mid acks nothing */
	ck_assert_int_eq(state_of(in, a), INTENT_PENDING);
	intents_pump(in, T0 + 5, rec_publish, NULL);
	ck_assert_int_eq(nsent, 4);
	ck_assert_str_eq(sent[2].topic, "x/1");
	ck_assert_str_eq(sent[3].topic, "x/2");
	intents_free(in);
}
END_TEST

START_TEST(never_published_after_expire)
{
	struct intents *in = mk(10, 1);
	int64_t a = submit(in, "x/1", json_integer(1), NULL, NULL, T0);

	refuse = 1;
	intents_pump(in, T0 + 29999, rec_publish, NULL);
	refuse = 0;
	intents_pump(in, T0 + 30000, rec_publish, NULL);
	ck_assert_int_eq(nsent, 0);
	ck_assert_int_eq(state_of(in, a), INTENT_EXPIRED);
	/* the engine's tick expires it too, without a link */
	a = submit(in, "x/2", json_integer(1), NULL, NULL, T0);
	ck_assert_int_eq(intents_tick(in, T0 + 1000), 1000); /* the thread looks at least every second */
	intents_tick(in, T0 + 30001);
	ck_assert_int_eq(state_of(in, a), INTENT_EXPIRED);
	intents_free(in);
}
END_TEST

START_TEST(outbox_full)
{
	struct intents *in = mk(2, 1);
	struct intent_request rq = { .topic = "x", .value = json_true(), .expire_ms = 1000 };
	int64_t id;
	char err[128] = "";

	submit(in, "x", json_true(), NULL, NULL, T0);
	submit(in, "x", json_true(), NULL, NULL, T0);
	ck_assert_int_eq(intents_submit(in, &rq, T0, &id, err, sizeof(err)), -ENOBUFS);
	ck_assert_str_eq(err, "the outbox is full");
	/* decided ones make room */
	intents_tick(in, T0 + 40000);
	ck_assert_int_eq(intents_submit(in, &rq, T0 + 40000, &id, err, sizeof(err)), 0);
	intents_free(in);
}
END_TEST

/* The fake owner's answers: the outcomes of the contract. */
START_TEST(outcomes_from_the_state_stream)
{
	struct intents *in = mk(10, 1);
	const char *st = "bms/ahu1/setpoint";
	int64_t ok, clamp, ign, corr;

	ok = submit(in, "set/a", json_integer(22), "bms/a", json_integer(20), T0);
	clamp = submit(in, "set/b", json_integer(40), "bms/b", json_integer(20), T0);
	ign = submit(in, "set/c", json_integer(25), "bms/c", json_integer(20), T0);
	corr = submit(in, "set/d", json_integer(25), st, json_integer(20), T0);
	/* before publication nothing decides */
	observe_at(in, "bms/a", "{\"value\":22}", T0 + 10);
	ck_assert_int_eq(state_of(in, ok), INTENT_PENDING);
	intents_pump(in, T0 + 1, rec_publish, NULL);
	for (int i = 0; i < nsent; i++)
		intents_acked(in, sent[i].mid, T0 + 2);
	ck_assert_int_eq(state_of(in, ok), INTENT_PUBLISHED);
	/* older than the request: not an answer */
	observe_at(in, "bms/a", "{\"value\":22}", T0 - 1);
	ck_assert_int_eq(state_of(in, ok), INTENT_PUBLISHED);
	/* in the request's own millisecond: an answer (a fast owner) */
	observe_at(in, "bms/a", "{\"value\":22,\"ts\":1}", T0);
	ck_assert_int_eq(state_of(in, ok), INTENT_CONFIRMED);
	ck_assert_int_eq(observed_of(in, ok), 22);
	/* ... decided then by the owner's clock, shown no earlier than the PUBACK */
	ck_assert_int_eq(decided_of(in, ok), T0 + 2);
	/* clamped to 30: overridden, with what the owner chose */
	observe_at(in, "bms/b", "{\"value\":30}", T0 + 20);
	ck_assert_int_eq(state_of(in, clamp), INTENT_OVERRIDDEN);
	ck_assert_int_eq(observed_of(in, clamp), 30);
	ck_assert_int_eq(decided_of(in, clamp), T0 + 20);
	/* ignored: the old value again, then the timeout */
	observe_at(in, "bms/c", "{\"value\":20}", T0 + 20);
	observe_at(in, "bms/c", "not json", T0 + 21);
	observe_at(in, "bms/c", "{\"other\":1}", T0 + 22);
	ck_assert_int_eq(state_of(in, ign), INTENT_PUBLISHED);
	intents_tick(in, T0 + 2 + 9999);
	ck_assert_int_eq(state_of(in, ign), INTENT_PUBLISHED);
	/* an answer to our correlation id decides even with the old value */
	{
		struct sent *s = NULL;
		char msg[200];

		for (int i = 0; i < nsent; i++)
			if (strcmp(sent[i].topic, "set/d") == 0)
				s = &sent[i];
		ck_assert_ptr_nonnull(s);
		snprintf(msg, sizeof(msg), "{\"value\":20,\"correlation_id\":\"%s\"}", s->corr);
		observe_at(in, st, msg, T0 + 30);
		ck_assert_int_eq(state_of(in, corr), INTENT_OVERRIDDEN);
	}
	intents_tick(in, T0 + 2 + 10000);
	ck_assert_int_eq(state_of(in, ign), INTENT_TIMED_OUT);
	ck_assert_int_eq(observed_of(in, ign), 20);
	observe(in, "bms/a", "{\"value\":1}"); /* decided ones stay decided */
	ck_assert_int_eq(state_of(in, ok), INTENT_CONFIRMED);
	intents_free(in);
}
END_TEST

static int fired;
static void on_done(void *ctx)
{
	(void)ctx;
	fired++;
}

START_TEST(waiters_fire_once_on_decision_or_deadline)
{
	struct intents *in = mk(10, 1);
	int64_t a = submit(in, "set/a", json_integer(1), "st/a", NULL, T0);
	int64_t b = submit(in, "set/b", json_integer(1), "st/b", NULL, T0);
	struct intent_waiter wa = { .id = a, .deadline_ms = T0 + 60000, .done = on_done };
	struct intent_waiter wb = { .id = b, .deadline_ms = T0 + 500, .done = on_done };
	struct intent_waiter wx = { .id = 999, .deadline_ms = T0 + 500, .done = on_done };

	fired = 0;
	ck_assert_int_eq(intents_wait(in, &wa), 0);
	ck_assert_int_eq(intents_wait(in, &wb), 0);
	ck_assert_int_eq(intents_wait(in, &wx), -ENOENT);
	intents_pump(in, T0 + 1, rec_publish, NULL);
	intents_acked(in, sent[0].mid, T0 + 2);
	ck_assert_int_eq(fired, 0);
	observe_at(in, "st/a", "{\"value\":1}", T0 + 3);
	ck_assert_int_eq(fired, 1);
	ck_assert(wa.fired);
	ck_assert(!wb.fired);
	ck_assert_int_eq(intents_tick(in, T0 + 100), 400);
	ck_assert_int_eq(fired, 1);
	intents_tick(in, T0 + 500);
	ck_assert_int_eq(fired, 2);
	ck_assert(wb.fired);
	intents_tick(in, T0 + 50000);
	ck_assert_int_eq(fired, 2);
	ck_assert_int_eq(intents_wait(in, &wa), -EALREADY);
	/* unwait: never called afterwards */
	wb.deadline_ms = T0 + 70000;
	ck_assert_int_eq(intents_wait(in, &wb), 0);
	intents_unwait(in, &wb);
	intents_tick(in, T0 + 80000);
	ck_assert_int_eq(fired, 2);
	intents_free(in);
}
END_TEST

static int count_cb(const struct intent_info *it, void *ctx)
{
	int64_t *ids = ctx;

	ids[ids[0] + 1] = it->id;
	ids[0]++;
	return 0;
}

START_TEST(list_newest_first_and_bounded_history)
{
	struct intents *in = mk(100, 1);
	int64_t ids[64] = { 0 };
	int64_t first = submit(in, "x", json_integer(0), NULL, NULL, T0);

	for (int i = 1; i < 20; i++)
		submit(in, "x", json_integer(i), NULL, NULL, T0);
	intents_pump(in, T0, rec_publish, NULL);
	for (int i = 0; i < 15; i++)
		intents_acked(in, sent[i].mid, T0 + 1); /* 15 decided, 5 open */
	ck_assert_int_eq(intents_list(in, INTENT_STATE_MAX, 100, count_cb, ids), 0);
	ck_assert_int_eq(ids[0], 5 + 8); /* history keeps 8 */
	ck_assert_int_eq(ids[1], first + 19);
	for (int i = 2; i <= ids[0]; i++)
		ck_assert_int_lt(ids[i], ids[i - 1]);
	ck_assert_int_eq(intents_get(in, first, grab, &(struct intent_info){ 0 }), -ENOENT);
	memset(ids, 0, sizeof(ids));
	intents_list(in, INTENT_PENDING, 3, count_cb, ids);
	ck_assert_int_eq(ids[0], 3);
	intents_free(in);
}
END_TEST

START_TEST(names)
{
	enum intent_state s;

	ck_assert_str_eq(intent_state_name(INTENT_TIMED_OUT), "timed_out");
	ck_assert_int_eq(intent_state_parse("overridden", &s), 0);
	ck_assert_int_eq(s, INTENT_OVERRIDDEN);
	ck_assert_int_eq(intent_state_parse("nope", &s), -EINVAL);
}
END_TEST

/* ---- with the file ---- */

static char dir[64], db[128];

static struct intents *open_engine(struct store **st, struct outbox **ob)
{
	struct intents_limits lim = { .outbox_max = 10, .history = 4, .qos = 1 };
	struct intents *in = NULL;
	char err[256] = "";

	ck_assert_msg(store_open(db, st, err, sizeof(err)) == 0, "%s", err);
	ck_assert_msg(outbox_open(db, 2000, ob, err, sizeof(err)) == 0, "%s", err);
	ck_assert_msg(intents_new(&lim, *ob, T0, &in, err, sizeof(err)) == 0, "%s", err);
	return in;
}

START_TEST(survives_a_restart)
{
	struct store *st;
	struct outbox *ob;
	struct intents *in;
	int64_t a, b, c;

	snprintf(dir, sizeof(dir), "/tmp/smintents-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(db, sizeof(db), "%s/i.db", dir);
	in = open_engine(&st, &ob);
	reset_sent();
	a = submit(in, "set/a", json_integer(1), "st/a", json_integer(0), T0);
	b = submit(in, "set/b", json_string("on"), NULL, NULL, T0);
	c = submit(in, "set/c", json_integer(3), NULL, NULL, T0);
	intents_pump(in, T0 + 1, rec_publish, NULL);
	intents_acked(in, sent[0].mid, T0 + 2); /* a published, b in flight, c in flight */
	intents_acked(in, sent[2].mid, T0 + 3); /* c published: final */
	/* what a kill -9 leaves: no clean stop, only what the thread wrote */
	intents_tick(in, T0 + 4);
	intents_free(in);
	outbox_close(ob);
	store_close(st);

	in = open_engine(&st, &ob);
	ck_assert_int_eq(state_of(in, a), INTENT_PUBLISHED); /* waits for its confirmation */
	ck_assert_int_eq(state_of(in, b), INTENT_PENDING);   /* sent again */
	ck_assert_int_eq(state_of(in, c), INTENT_PUBLISHED);
	reset_sent();
	intents_pump(in, T0 + 5, rec_publish, NULL);
	ck_assert_int_eq(nsent, 1);
	ck_assert_str_eq(sent[0].topic, "set/b");
	ck_assert(strstr(sent[0].payload, "\"on\"") != NULL);
	observe_at(in, "st/a", "{\"value\":1}", T0 + 6);
	ck_assert_int_eq(state_of(in, a), INTENT_CONFIRMED);
	intents_tick(in, T0 + 7);
	intents_free(in);
	outbox_close(ob);
	store_close(st);

	in = open_engine(&st, &ob);
	ck_assert_int_eq(state_of(in, a), INTENT_CONFIRMED);
	ck_assert_int_eq(observed_of(in, a), 1);
	intents_free(in);
	outbox_close(ob);
	store_close(st);
	unlink(db);
	{
		char p[160];

		snprintf(p, sizeof(p), "%s-wal", db);
		unlink(p);
		snprintf(p, sizeof(p), "%s-shm", db);
		unlink(p);
	}
	rmdir(dir);
}
END_TEST

static Suite *intents_suite(void)
{
	Suite *s = suite_create("intents");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, publishes_in_order_with_request_time_and_correlation);
	tcase_add_test(tc, broker_away_keeps_order_then_link_down_resends);
	tcase_add_test(tc, never_published_after_expire);
	tcase_add_test(tc, outbox_full);
	tcase_add_test(tc, outcomes_from_the_state_stream);
	tcase_add_test(tc, waiters_fire_once_on_decision_or_deadline);
	tcase_add_test(tc, list_newest_first_and_bounded_history);
	tcase_add_test(tc, names);
	tcase_add_test(tc, survives_a_restart);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(intents_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
