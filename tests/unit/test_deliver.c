/* SPDX-License-Identifier: MIT */
/* test_deliver.c: the alert delivery queue's bound, and that a wedged publish or a slow exec never blocks the producer. */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "common/stats.h"
#include "mirror/liveness/deliver.h"
#include "clock_fake.h"

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static unsigned npub, nempty;
static bool gate_closed;   /* publish blocks while set */
static bool in_publish;
static char first_topic[64];

static void publish(void *ctx, const char *topic, const char *payload, size_t len)
{
	(void)ctx;
	(void)payload;
	pthread_mutex_lock(&mu);
	in_publish = true;
	pthread_cond_broadcast(&cv);
	while (gate_closed)
		pthread_cond_wait(&cv, &mu);
	if (len == 0)
		nempty++;
	else if (npub++ == 0)
		snprintf(first_topic, sizeof(first_topic), "%s", topic);
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mu);
}

/* Wait on the publish condition until *what >= want or 10 s pass. */
static bool wait_for(unsigned *what, unsigned want)
{
	struct timespec ts;
	bool ok;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 10;
	pthread_mutex_lock(&mu);
	while (*what < want)
		if (pthread_cond_timedwait(&cv, &mu, &ts) == ETIMEDOUT)
			break;
	ok = *what >= want;
	pthread_mutex_unlock(&mu);
	return ok;
}

static void setup(void)
{
	memset(&g_stats, 0, sizeof(g_stats));
	log_set_level(LOG_LEVEL_ERROR);
	npub = nempty = 0;
	gate_closed = false;
	in_publish = false;
	first_topic[0] = '\0';
}

static int push(struct deliver *d, unsigned i, bool clear, bool exec)
{
	char topic[64];

	snprintf(topic, sizeof(topic), "alerts/group/g%u", i);
	return deliver_push(d, &(struct deliver_alert){
		.key = topic, .topic = topic, .payload = "{\"alert\":\"stale\"}", .len = 17,
		.state = "stale", .group = topic + 13, .clear = clear, .exec = exec,
	}, fake_now_ms);
}

START_TEST(queue_bound_drops_oldest)
{
	struct deliver *d = deliver_new(&(struct deliver_outlet){ publish, NULL });

	ck_assert_ptr_nonnull(d);
	for (unsigned i = 0; i < DELIVER_QUEUE_MAX + 10; i++)
		ck_assert_int_eq(push(d, i, false, false), 0);
	ck_assert_uint_eq(deliver_queued(d), DELIVER_QUEUE_MAX);
	ck_assert_uint_eq(STAT_GET(alerts_dropped), 10);
	ck_assert_int_eq(deliver_pump(d, fake_now_ms), INT64_MAX);
	ck_assert_uint_eq(npub, DELIVER_QUEUE_MAX);
	ck_assert_str_eq(first_topic, "alerts/group/g10"); /* the ten oldest went */
	ck_assert_uint_eq(deliver_queued(d), 0);
	deliver_free(d);
}
END_TEST

/* The bytes bound: big alerts stop at DELIVER_QUEUE_BYTES, not at the count. */
START_TEST(queue_bytes_bounded)
{
	struct deliver *d = deliver_new(&(struct deliver_outlet){ publish, NULL });
	static char big[16000];
	unsigned n = DELIVER_QUEUE_BYTES / sizeof(big) + 50, fit;

	memset(big, 'x', sizeof(big));
	for (unsigned i = 0; i < n; i++)
		ck_assert_int_eq(deliver_push(d, &(struct deliver_alert){
			.key = "k", .topic = "alerts/big", .payload = big, .len = sizeof(big),
		}, fake_now_ms), 0);
	fit = (unsigned)deliver_queued(d);
	ck_assert_uint_lt(fit, DELIVER_QUEUE_BYTES / sizeof(big) + 1);
	ck_assert_uint_gt(fit, DELIVER_QUEUE_BYTES / sizeof(big) - 5);
	ck_assert_uint_eq(STAT_GET(alerts_dropped), n - fit);
	deliver_pump(d, fake_now_ms);
	ck_assert_uint_eq(npub, fit);
	deliver_free(d);
}
END_TEST

START_TEST(clear_follows_its_alert)
{
	struct deliver *d = deliver_new(&(struct deliver_outlet){ publish, NULL });

	ck_assert_int_eq(push(d, 1, true, false), 0);
	deliver_pump(d, fake_now_ms);
	ck_assert_uint_eq(npub, 1);
	ck_assert_uint_eq(nempty, 1);
	deliver_free(d);
}
END_TEST

START_TEST(wedged_publish_never_blocks_producer)
{
	struct deliver *d = deliver_new(&(struct deliver_outlet){ publish, NULL });
	unsigned n = 4 * DELIVER_QUEUE_MAX;

	ck_assert_ptr_nonnull(d);
	gate_closed = true;
	ck_assert_int_eq(deliver_start(d), 0);
	ck_assert_int_eq(push(d, 0, false, false), 0);
	/* The thread is now stuck in the broker call... */
	pthread_mutex_lock(&mu);
	while (!in_publish)
		pthread_cond_wait(&cv, &mu);
	pthread_mutex_unlock(&mu);
	/* ...and the producer goes on: every push returns, the bound holds,
	 * the overflow is counted. */
	for (unsigned i = 1; i <= n; i++)
		ck_assert_int_eq(push(d, i, false, false), 0);
	ck_assert_uint_eq(deliver_queued(d), DELIVER_QUEUE_MAX);
	ck_assert_uint_eq(STAT_GET(alerts_dropped), n - DELIVER_QUEUE_MAX);
	ck_assert_uint_eq(npub, 0);
	pthread_mutex_lock(&mu);
	gate_closed = false;
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mu);
	ck_assert(wait_for(&npub, DELIVER_QUEUE_MAX + 1));
	deliver_free(d);
	ck_assert_uint_eq(npub, DELIVER_QUEUE_MAX + 1);
}
END_TEST

START_TEST(slow_exec_never_blocks_producer_nor_publish)
{
	struct deliver *d = deliver_new(&(struct deliver_outlet){ publish, NULL });

	ck_assert_ptr_nonnull(d);
	ck_assert_int_eq(deliver_configure(d, "sleep 60", 60000), 0);
	ck_assert_int_eq(deliver_start(d), 0);
	for (unsigned k = 0; k < 10; k++)
		ck_assert_int_eq(push(d, k, false, true), 0);
	/* Four programs hang, six wait for a slot, and all ten are published:
	 * neither the producer nor the broker side waits for a program. */
	ck_assert(wait_for(&npub, 10));
	for (unsigned k = 10; k < 20; k++)
		ck_assert_int_eq(push(d, k, false, false), 0);
	ck_assert(wait_for(&npub, 20));
	/* Stopped, the thread's state is the test's to look at and to drive:
	 * at a time past every deadline the hanging ones are killed, counted. */
	deliver_stop(d);
	ck_assert_uint_eq(deliver_exec_running(d), DELIVER_EXEC_MAX_CHILDREN);
	ck_assert_uint_eq(deliver_exec_queued(d), 10 - DELIVER_EXEC_MAX_CHILDREN);
	ck_assert_uint_eq(STAT_GET(alert_exec_failures), 0);
	deliver_pump(d, INT64_MAX / 2);
	ck_assert_uint_eq(STAT_GET(alert_exec_failures), DELIVER_EXEC_MAX_CHILDREN);
	deliver_free(d);
}
END_TEST

START_TEST(no_exec_configured_runs_nothing)
{
	struct deliver *d = deliver_new(&(struct deliver_outlet){ publish, NULL });

	ck_assert_int_eq(deliver_configure(d, "  ", 0), 0);
	ck_assert_int_eq(push(d, 1, false, true), 0);
	deliver_pump(d, fake_now_ms);
	ck_assert_uint_eq(npub, 1);
	ck_assert_uint_eq(deliver_exec_running(d), 0);
	ck_assert_uint_eq(deliver_exec_queued(d), 0);
	deliver_free(d);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("deliver");
	TCase *tc = tcase_create("queue");

	tcase_add_checked_fixture(tc, setup, NULL);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, queue_bound_drops_oldest);
	tcase_add_test(tc, queue_bytes_bounded);
	tcase_add_test(tc, clear_follows_its_alert);
	tcase_add_test(tc, wedged_publish_never_blocks_producer);
	tcase_add_test(tc, slow_exec_never_blocks_producer_nor_publish);
	tcase_add_test(tc, no_exec_configured_runs_nothing);
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
	return failed ? 1 : 0;
}
