/* SPDX-License-Identifier: MIT */
/* test_rejects.c: the rejects ring: overwrite order, counting, JSON rendering, text vs base64. */
#include <check.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/stats.h"
#include "mirror/state/rejects.h"
#include "clock_fake.h"

static json_t *render(struct rejects *r)
{
	struct buf b;
	json_error_t err;
	json_t *j;

	buf_init(&b, 1 << 20);
	ck_assert_int_eq(rejects_render(r, &b), 0);
	j = json_loadb(b.data, b.len, 0, &err);
	if (!j)
		ck_abort_msg("not JSON (%s): %s", err.text, b.data);
	buf_free(&b);
	ck_assert(json_is_array(json_object_get(j, "items")));
	return j;
}

static json_t *item(json_t *j, size_t i)
{
	json_t *it = json_array_get(json_object_get(j, "items"), i);

	ck_assert_ptr_nonnull(it);
	return it;
}

static const char *str(json_t *it, const char *k)
{
	json_t *v = json_object_get(it, k);

	return json_is_string(v) ? json_string_value(v) : NULL;
}

static void add(struct rejects *r, const char *topic, const void *p, size_t n,
		enum reject_reason why, int64_t now)
{
	rejects_add(r, topic, strlen(topic), p, n, n, why, now);
}

static void setup(void)
{
	log_set_level(LOG_LEVEL_ERROR);   /* the warnings would only clutter the output */
}

START_TEST(empty)
{
	struct rejects *r = rejects_new(4);
	json_t *j;

	ck_assert_ptr_nonnull(r);
	j = render(r);
	ck_assert_uint_eq(json_array_size(json_object_get(j, "items")), 0);
	json_decref(j);
	rejects_free(r);
	rejects_free(NULL);
}
END_TEST

START_TEST(ring_overwrites_oldest)
{
	struct rejects *r = rejects_new(3);
	char t[16];
	json_t *j;

	for (int i = 0; i < 5; i++) {
		snprintf(t, sizeof(t), "t%d", i);
		add(r, t, "x", 1, REJECT_NOT_JSON, fake_now_ms + i);
	}
	j = render(r);
	ck_assert_uint_eq(json_array_size(json_object_get(j, "items")), 3);
	ck_assert_str_eq(str(item(j, 0), "topic"), "t4");
	ck_assert_str_eq(str(item(j, 1), "topic"), "t3");
	ck_assert_str_eq(str(item(j, 2), "topic"), "t2");
	json_decref(j);
	rejects_free(r);
}
END_TEST

START_TEST(fields_and_counts)
{
	struct rejects *r = rejects_new(8);
	uint64_t before_r = STAT_GET(rejects[REJECT_FUTURE_TS]);
	uint64_t before_m = STAT_GET(messages[APPLY_REJECTED]);
	json_t *j, *it;

	rejects_add(r, "dc1/t", 5, "{\"ts\":99}", 9, 9, REJECT_FUTURE_TS, fake_now_ms);
	ck_assert_uint_eq(STAT_GET(rejects[REJECT_FUTURE_TS]), before_r + 1);
	ck_assert_uint_eq(STAT_GET(messages[APPLY_REJECTED]), before_m + 1);
	j = render(r);
	it = item(j, 0);
	ck_assert_str_eq(str(it, "topic"), "dc1/t");
	ck_assert_str_eq(str(it, "reason"), "future_timestamp");
	ck_assert_str_eq(str(it, "time"), "2026-11-22T02:10:02.123Z");
	ck_assert_int_eq(json_integer_value(json_object_get(it, "payload_size")), 9);
	ck_assert_str_eq(str(it, "payload_text"), "{\"ts\":99}");
	ck_assert_ptr_null(json_object_get(it, "payload_base64"));
	ck_assert_ptr_null(json_object_get(it, "topic_truncated"));
	json_decref(j);
	rejects_free(r);
}
END_TEST

START_TEST(binary_gets_base64)
{
	struct rejects *r = rejects_new(2);
	const unsigned char bin[] = { 0x00, 0x01, 0x02, 0xff };
	json_t *j, *it;

	add(r, "bin", bin, sizeof(bin), REJECT_NOT_JSON, fake_now_ms);
	j = render(r);
	it = item(j, 0);
	ck_assert_str_eq(str(it, "payload_base64"), "AAEC/w==");
	ck_assert_ptr_null(json_object_get(it, "payload_text"));
	json_decref(j);
	rejects_free(r);
}
END_TEST

START_TEST(payload_cut_to_keep_bytes)
{
	struct rejects *r = rejects_new(2);
	char big[1000];
	char utf[80];
	json_t *j, *it;

	memset(big, 'z', sizeof(big));
	rejects_add(r, "big", 3, big, sizeof(big), 300000, REJECT_TOO_LARGE, fake_now_ms);
	/* "a" + "é" x 39: the 64-byte cut falls inside a character */
	utf[0] = 'a';
	for (int i = 0; i < 39; i++) {
		utf[1 + 2 * i] = (char)0xc3;
		utf[2 + 2 * i] = (char)0xa9;
	}
	add(r, "utf", utf, 79, REJECT_NOT_JSON, fake_now_ms);
	j = render(r);
	it = item(j, 1);
	ck_assert_int_eq(json_integer_value(json_object_get(it, "payload_size")), 300000);
	ck_assert_uint_eq(strlen(str(it, "payload_text")), REJECTS_KEEP_BYTES);
	it = item(j, 0);
	ck_assert_int_eq(json_integer_value(json_object_get(it, "payload_size")), 79);
	ck_assert_ptr_nonnull(str(it, "payload_text"));
	ck_assert_uint_eq(strlen(str(it, "payload_text")), REJECTS_KEEP_BYTES - 1);
	ck_assert_int_eq(memcmp(str(it, "payload_text"), utf, REJECTS_KEEP_BYTES - 1), 0);
	json_decref(j);
	rejects_free(r);
}
END_TEST

START_TEST(hostile_topic_is_valid_json)
{
	struct rejects *r = rejects_new(4);
	const char evil[] = "a\"b\\c\n\x01/\xff\xfe/\xc3\xa9";
	char *longt = malloc(5000);
	json_t *j;

	ck_assert_ptr_nonnull(longt);
	memset(longt, 'L', 5000);
	rejects_add(r, evil, sizeof(evil) - 1, "", 0, 0, REJECT_BAD_TS, fake_now_ms);
	rejects_add(r, longt, 5000, "p", 1, 1, REJECT_TOPIC_LEN, fake_now_ms);
	free(longt);
	j = render(r);
	ck_assert(json_is_true(json_object_get(item(j, 0), "topic_truncated")));
	ck_assert_uint_eq(strlen(str(item(j, 0), "topic")), 1024);
	ck_assert_str_eq(str(item(j, 0), "reason"), "topic_too_long");
	/* invalid bytes become U+FFFD, the rest survives */
	ck_assert_str_eq(str(item(j, 1), "topic"),
			 "a\"b\\c\n\x01/\xef\xbf\xbd\xef\xbf\xbd/\xc3\xa9");
	ck_assert_str_eq(str(item(j, 1), "payload_text"), "");
	json_decref(j);
	rejects_free(r);
}
END_TEST

START_TEST(render_respects_buf_limit)
{
	struct rejects *r = rejects_new(4);
	struct buf b;

	add(r, "t", "x", 1, REJECT_NOT_JSON, fake_now_ms);
	buf_init(&b, 16);
	ck_assert_int_eq(rejects_render(r, &b), -E2BIG);
	buf_free(&b);
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
	tcase_add_test(tc, binary_gets_base64);
	tcase_add_test(tc, payload_cut_to_keep_bytes);
	tcase_add_test(tc, hostile_topic_is_valid_json);
	tcase_add_test(tc, render_respects_buf_limit);
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
