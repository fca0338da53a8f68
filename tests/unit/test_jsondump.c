/* SPDX-License-Identifier: MIT */
/* test_jsondump.c: unit tests of json_dumps_exact: numbers as written, and never a different double. */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/jsondump.h"

static void dumps_as(json_t *j, const char *want)
{
	char *s = json_dumps_exact(j, JSON_COMPACT | JSON_ENCODE_ANY);

	ck_assert_ptr_nonnull(s);
	ck_assert_str_eq(s, want);
	free(s);
	json_decref(j);
}

START_TEST(numbers_as_people_write_them)
{
	dumps_as(json_real(21.9), "21.9");
	dumps_as(json_real(0.1), "0.1");
	dumps_as(json_real(100.0), "100.0");
	dumps_as(json_real(-3.25e-7), "-3.25e-7");
	dumps_as(json_real(1e300), "1e300");
	dumps_as(json_real(123456789012345.0), "123456789012345.0");
	dumps_as(json_integer(9007199254740993), "9007199254740993");
	dumps_as(json_pack("{s:f,s:[f,i]}", "value", 21.9, "more", 22.6, 3),
		 "{\"value\":21.9,\"more\":[22.6,3]}");
}
END_TEST

/* A real that needs 16 or 17 digits gets them, so it reads back the same. */
START_TEST(never_a_different_double)
{
	dumps_as(json_real(0.1 + 0.2), "0.30000000000000004");
	ck_assert_int_eq(json_real_digits(0.1 + 0.2), 17);
	ck_assert_int_eq(json_real_digits(21.9), 15);
	ck_assert_int_eq(json_real_digits(5e-324), 15);
	/* one such value in a document raises the precision for all of it */
	dumps_as(json_pack("[f,[{s:f}]]", 21.9, "x", 0.1 + 0.2),
		 "[21.899999999999999,[{\"x\":0.30000000000000004}]]");
}
END_TEST

/* Random bit patterns, every finite double: the text reads back as the
 * same double, and with no more digits than needed. */
START_TEST(random_doubles_read_back)
{
	uint64_t x = 0x9e3779b97f4a7c15u;

	for (int i = 0; i < 20000; i++) {
		double d, back;
		char *s;
		json_t *j, *r;

		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		memcpy(&d, &x, sizeof(d));
		if (!(j = json_real(d)))
			continue; /* NaN and infinities: jansson has no such JSON */
		s = json_dumps_exact(j, JSON_ENCODE_ANY);
		ck_assert_ptr_nonnull(s);
		r = json_loads(s, JSON_DECODE_ANY, NULL);
		ck_assert_msg(r != NULL, "%s", s);
		back = json_is_real(r) ? json_real_value(r) : (double)json_integer_value(r);
		ck_assert_msg(back == d, "%.17g came back as %.17g from %s", d, back, s);
		if (json_real_digits(d) > 15) {
			char t[400];

			snprintf(t, sizeof(t), "%.*g", json_real_digits(d) - 1, d);
			ck_assert_msg(strtod(t, NULL) != d, "%s: fewer digits would do", s);
		}
		free(s);
		json_decref(r);
		json_decref(j);
	}
}
END_TEST

static Suite *jsondump_suite(void)
{
	Suite *s = suite_create("jsondump");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, numbers_as_people_write_them);
	tcase_add_test(tc, never_a_different_double);
	tcase_add_test(tc, random_doubles_read_back);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(jsondump_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
