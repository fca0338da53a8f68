/* SPDX-License-Identifier: MIT */
/* test_topic.c: unit tests of MQTT topic name/filter validation and matching. */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/topic.h"

static bool m(const char *filter, const char *topic)
{
	ck_assert_msg(topic_filter_check(filter) == 0, "filter '%s' should be valid", filter);
	return topic_matches(filter, topic, strlen(topic));
}

static const struct {
	const char *filter, *topic;
	bool match;
} match_cases[] = {
	/* MQTT 5.0 4.7.1.2: the multi-level wildcard */
	{ "sport/tennis/player1/#", "sport/tennis/player1", true },
	{ "sport/tennis/player1/#", "sport/tennis/player1/ranking", true },
	{ "sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true },
	{ "sport/tennis/player1/#", "sport/tennis/player2", false },
	{ "sport/tennis/player1/#", "sport/tennis", false },
	{ "sport/#", "sport", true },
	{ "sport/#", "sports", false },
	{ "sport/#", "sport/", true },
	{ "#", "a", true },
	{ "#", "/", true },
	{ "#", "a/b/c", true },
	/* 4.7.1.3: the single-level wildcard */
	{ "sport/tennis/+", "sport/tennis/player1", true },
	{ "sport/tennis/+", "sport/tennis/player2", true },
	{ "sport/tennis/+", "sport/tennis/player1/ranking", false },
	{ "sport/+", "sport", false },
	{ "sport/+", "sport/", true },
	{ "+/+", "/finance", true },
	{ "/+", "/finance", true },
	{ "+", "/finance", false },
	{ "+", "finance", true },
	{ "+/tennis/#", "sport/tennis", true },
	{ "+/tennis/#", "sport/tennis/x/y", true },
	{ "+/tennis/#", "sport/golf/x", false },
	{ "sport/+/player1", "sport/tennis/player1", true },
	{ "sport/+/player1", "sport//player1", true },
	{ "+/+/+", "a//", true },
	{ "+/+/+", "a/", false },
	{ "+/#", "a", true },
	/* 4.7.2: topics beginning with $ */
	{ "#", "$SYS/monitor/Clients", false },
	{ "+/monitor/Clients", "$SYS/monitor/Clients", false },
	{ "$SYS/#", "$SYS/monitor/Clients", true },
	{ "$SYS/#", "$SYS", true },
	{ "$SYS/monitor/+", "$SYS/monitor/Clients", true },
	{ "#", "$", false },
	{ "+", "$x", false },
	{ "a/#", "a/$x", true },   /* only the first level is special */
	{ "a/+", "a/$x", true },
	/* literal levels, exactly */
	{ "a/b", "a/b", true },
	{ "a/b", "a/bc", false },
	{ "a/bc", "a/b", false },
	{ "a/b", "a/b/", false },
	{ "a/b/", "a/b", false },
	{ "/a", "/a", true },
	{ "/a", "a", false },
	{ "a//b", "a//b", true },
	{ "a//b", "a/b", false },
	{ "caf\xc3\xa9/+", "caf\xc3\xa9/x", true },
	{ "caf\xc3\xa9", "caf\xc3\xa8", false },
};

START_TEST(test_match_table)
{
	for (size_t i = 0; i < sizeof(match_cases) / sizeof(match_cases[0]); i++)
		ck_assert_msg(m(match_cases[i].filter, match_cases[i].topic) == match_cases[i].match,
			      "'%s' vs '%s': expected %d", match_cases[i].filter,
			      match_cases[i].topic, match_cases[i].match);
}
END_TEST

START_TEST(test_match_not_nul_terminated)
{
	const char buf[] = "a/b/cdef";

	/* Only len bytes are the topic: "a/b" */
	ck_assert(topic_matches("a/b", buf, 3));
	ck_assert(!topic_matches("a/b/cdef", buf, 3));
	ck_assert(topic_matches("a/+", buf, 3));
	ck_assert(!topic_matches("a/b/+", buf, 3));
	ck_assert(topic_matches("a/b/#", buf, 3));
	ck_assert(!topic_matches("#", buf, 0));
}
END_TEST

START_TEST(test_filter_check)
{
	static const char *const good[] = {
		"#", "+", "+/+", "/", "//", "a/#", "+/tennis/#", "sport/+/player1", "sport/tennis/#",
		"$SYS/#", "/+", "a/+/b", "caf\xc3\xa9", "a b/c",
	};
	static const char *const bad[] = {
		"", "sport/tennis#", "sport/tennis/#/ranking", "sport+", "#/a", "a/#/", "+a", "a+",
		"a/b+/c", "##", "++", "a/\xff", "a/\xc0\xaf", "\xed\xa0\x80",
	};

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		ck_assert_msg(topic_filter_check(good[i]) == 0, "'%s' should be valid", good[i]);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(topic_filter_check(bad[i]) == -EINVAL, "'%s' should be invalid", bad[i]);
	ck_assert_int_eq(topic_filter_check(NULL), -EINVAL);
}
END_TEST

START_TEST(test_name_check)
{
	static const char *const good[] = {
		"a", "/", "a/b", "$SYS/x", "//", "a b", "caf\xc3\xa9", "\xf0\x9f\x98\x80",
	};
	static const char *const bad[] = {
		"a/+", "a/#", "#", "+", "a\xff", "\xe2\x82", "\xed\xa0\x80", "\xf4\x90\x80\x80",
		"\xc1\xbf",
	};

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		ck_assert_msg(topic_name_check(good[i], strlen(good[i])) == 0, "'%s'", good[i]);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(topic_name_check(bad[i], strlen(bad[i])) == -EINVAL, "'%s'", bad[i]);
	ck_assert_int_eq(topic_name_check("", 0), -EINVAL);
	ck_assert_int_eq(topic_name_check("a\0b", 3), -EINVAL);

	char *big = malloc(TOPIC_MAX_LEN + 1);
	ck_assert_ptr_nonnull(big);
	memset(big, 'x', TOPIC_MAX_LEN + 1);
	ck_assert_int_eq(topic_name_check(big, TOPIC_MAX_LEN), 0);
	ck_assert_int_eq(topic_name_check(big, TOPIC_MAX_LEN + 1), -EINVAL);
	free(big);
}
END_TEST

START_TEST(test_prefix_len)
{
	ck_assert_uint_eq(topic_filter_prefix_len("a/b/+"), 4);
	ck_assert_uint_eq(topic_filter_prefix_len("#"), 0);
	ck_assert_uint_eq(topic_filter_prefix_len("+"), 0);
	ck_assert_uint_eq(topic_filter_prefix_len("+/a"), 0);
	ck_assert_uint_eq(topic_filter_prefix_len("a/b"), 3);
	ck_assert_uint_eq(topic_filter_prefix_len("a/#"), 1);       /* matches "a" */
	ck_assert_uint_eq(topic_filter_prefix_len("a/b/#"), 3);
	ck_assert_uint_eq(topic_filter_prefix_len("/#"), 0);        /* matches "" level */
	ck_assert_uint_eq(topic_filter_prefix_len("a/+/c/#"), 2);
	ck_assert_uint_eq(topic_filter_prefix_len("$SYS/#"), 4);
}
END_TEST

/* Every topic a filter matches starts with the filter's prefix, over a
 * small exhaustive alphabet of levels. */
START_TEST(test_prefix_property)
{
	static const char *const lv[] = { "", "a", "b", "ab", "$" };
	static const char *const flv[] = { "", "a", "ab", "+", "#" };
	char topic[64], filter[64];
	size_t nl = sizeof(lv) / sizeof(lv[0]), nf = sizeof(flv) / sizeof(flv[0]);
	unsigned checked = 0, matched = 0;

	for (size_t tn = 1; tn <= 3; tn++) {
		size_t tcount = 1;
		for (size_t k = 0; k < tn; k++)
			tcount *= nl;
		for (size_t ti = 0; ti < tcount; ti++) {
			size_t tl = 0, x = ti;
			for (size_t k = 0; k < tn; k++, x /= nl)
				tl += (size_t)snprintf(topic + tl, sizeof(topic) - tl, "%s%s",
						       k ? "/" : "", lv[x % nl]);
			if (tl == 0)
				continue;
			for (size_t fn = 1; fn <= 3; fn++) {
				size_t fcount = 1;
				for (size_t k = 0; k < fn; k++)
					fcount *= nf;
				for (size_t fi = 0; fi < fcount; fi++) {
					size_t fl = 0, y = fi;
					for (size_t k = 0; k < fn; k++, y /= nf)
						fl += (size_t)snprintf(filter + fl, sizeof(filter) - fl,
								       "%s%s", k ? "/" : "", flv[y % nf]);
					if (topic_filter_check(filter) < 0)
						continue;
					checked++;
					if (!topic_matches(filter, topic, tl))
						continue;
					matched++;
					size_t pl = topic_filter_prefix_len(filter);
					ck_assert_msg(pl <= tl && memcmp(filter, topic, pl) == 0,
						      "'%s' matches '%s' but prefix %zu", filter, topic, pl);
				}
			}
		}
	}
	ck_assert_uint_gt(checked, 1000);
	ck_assert_uint_gt(matched, 100);
}
END_TEST

static Suite *topic_suite(void)
{
	Suite *s = suite_create("topic");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, test_match_table);
	tcase_add_test(tc, test_match_not_nul_terminated);
	tcase_add_test(tc, test_filter_check);
	tcase_add_test(tc, test_name_check);
	tcase_add_test(tc, test_prefix_len);
	tcase_add_test(tc, test_prefix_property);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(topic_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
