/* SPDX-License-Identifier: MIT */
/* test_rejects.c: the rejects ring: overwrite order, what an entry keeps, counting, the visit. */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/stats.h"
#include "mirror/state/rejects.h"
#include "clock_fake.h"

/* The entries a visit saw, copied (they are valid during the call only). */
struct seen {
	struct rejects_entry e[8];
	int n;
	int stop_at;   /* return 7 at this entry (1-based), 0 never */
};

static int collect(const struct rejects_entry *e, void *ctx)
{
	struct seen *s = ctx;

	ck_assert_int_lt(s->n, 8);
	s->e[s->n++] = *e;
	return s->stop_at && s->n == s->stop_at ? 7 : 0;
}

static void visit_all(struct rejects *r, struct seen *s)
{
	memset(s, 0, sizeof(*s));
	ck_assert_int_eq(rejects_visit(r, collect, s), 0);
}

static void add(struct rejects *r, const char *topic, const void *p, size_t n,
		enum reject_reason why, int64_t now)
{
	rejects_add(r, topic, strlen(topic), p, n, n, why, now);
}

static void assert_topic(const struct rejects_entry *e, const char *t)
{
	ck_assert_uint_eq(e->topic_len, strlen(t));
	ck_assert_int_eq(memcmp(e->topic, t, e->topic_len), 0);
}

static void setup(void)
{
	log_set_level(LOG_LEVEL_ERROR);   /* the warnings would only clutter the output */
}

START_TEST(empty)
{
	struct rejects *r = rejects_new(4);
	struct seen s;

	ck_assert_ptr_nonnull(r);
	visit_all(r, &s);
	ck_assert_int_eq(s.n, 0);
	rejects_free(r);
	rejects_free(NULL);
}
END_TEST

START_TEST(ring_overwrites_oldest)
{
	struct rejects *r = rejects_new(3);
	struct seen s;
	char t[16];

	for (int i = 0; i < 5; i++) {
		snprintf(t, sizeof(t), "t%d", i);
		add(r, t, "x", 1, REJECT_NOT_JSON, fake_now_ms + i);
	}
	visit_all(r, &s);
	ck_assert_int_eq(s.n, 3);
	assert_topic(&s.e[0], "t4");
	assert_topic(&s.e[1], "t3");
	assert_topic(&s.e[2], "t2");
	ck_assert_int_eq(s.e[0].time_ms, fake_now_ms + 4);
	rejects_free(r);
}
END_TEST

START_TEST(fields_and_counts)
{
	struct rejects *r = rejects_new(8);
	uint64_t before_r = STAT_GET(rejects[REJECT_FUTURE_TS]);
	uint64_t before_m = STAT_GET(messages[APPLY_REJECTED]);
	struct seen s;

	rejects_add(r, "dc1/t", 5, "{\"ts\":99}", 9, 9, REJECT_FUTURE_TS, fake_now_ms);
	ck_assert_uint_eq(STAT_GET(rejects[REJECT_FUTURE_TS]), before_r + 1);
	ck_assert_uint_eq(STAT_GET(messages[APPLY_REJECTED]), before_m + 1);
	visit_all(r, &s);
	ck_assert_int_eq(s.n, 1);
	assert_topic(&s.e[0], "dc1/t");
	ck_assert(!s.e[0].topic_cut);
	ck_assert_int_eq(s.e[0].reason, REJECT_FUTURE_TS);
	ck_assert_int_eq(s.e[0].time_ms, fake_now_ms);
	ck_assert_uint_eq(s.e[0].payload_size, 9);
	ck_assert_uint_eq(s.e[0].kept, 9);
	ck_assert_int_eq(memcmp(s.e[0].payload, "{\"ts\":99}", 9), 0);
	rejects_free(r);
}
END_TEST

/* Only the first REJECTS_KEEP_BYTES of a payload and REJECTS_KEEP_TOPIC of
 * a topic are kept; the sizes say what there was. */
START_TEST(cut_to_keep_bytes)
{
	struct rejects *r = rejects_new(4);
	char big[1000], *longt = malloc(5000);
	struct seen s;

	ck_assert_ptr_nonnull(longt);
	memset(big, 'z', sizeof(big));
	memset(longt, 'L', 5000);
	rejects_add(r, "big", 3, big, sizeof(big), 300000, REJECT_TOO_LARGE, fake_now_ms);
	rejects_add(r, longt, 5000, "p", 1, 1, REJECT_TOPIC_LEN, fake_now_ms);
	/* a full length below what was handed over: the payload's own counts */
	rejects_add(r, "short", 5, "abcdef", 6, 2, REJECT_NOT_JSON, fake_now_ms);
	free(longt);
	visit_all(r, &s);
	ck_assert_int_eq(s.n, 3);
	ck_assert_uint_eq(s.e[0].payload_size, 6);
	ck_assert(s.e[1].topic_cut);
	ck_assert_uint_eq(s.e[1].topic_len, REJECTS_KEEP_TOPIC);
	ck_assert_uint_eq(s.e[1].kept, 1);
	ck_assert_uint_eq(s.e[2].payload_size, 300000);
	ck_assert_uint_eq(s.e[2].kept, REJECTS_KEEP_BYTES);
	ck_assert_int_eq(memcmp(s.e[2].payload, big, REJECTS_KEEP_BYTES), 0);
	rejects_free(r);
}
END_TEST

/* A visit stops at the first non-zero return and returns it. */
START_TEST(visit_stops)
{
	struct rejects *r = rejects_new(4);
	struct seen s = { .n = 0, .stop_at = 2 };

	for (int i = 0; i < 4; i++)
		add(r, "t", "x", 1, REJECT_NOT_JSON, fake_now_ms + i);
	ck_assert_int_eq(rejects_visit(r, collect, &s), 7);
	ck_assert_int_eq(s.n, 2);
	ck_assert_int_eq(s.e[1].time_ms, fake_now_ms + 2);
	rejects_free(r);
}
END_TEST

static Suite *rejects_suite(void)
{
	Suite *s = suite_create("rejects");
	TCase *tc = tcase_create("ring");

	tcase_add_checked_fixture(tc, setup, NULL);
	tcase_add_test(tc, empty);
	tcase_add_test(tc, ring_overwrites_oldest);
	tcase_add_test(tc, fields_and_counts);
	tcase_add_test(tc, cut_to_keep_bytes);
	tcase_add_test(tc, visit_stops);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(rejects_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
