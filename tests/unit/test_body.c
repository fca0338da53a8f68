/* SPDX-License-Identifier: MIT */
/* test_body.c: the request-body accumulator, the Content-Type check and JSON parsing of bodies. */
#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api/body.h"

START_TEST(feed_within_limit)
{
	struct body b;
	json_t *v = NULL;
	char err[256];

	body_init(&b, 16);
	/* Pieces as libmicrohttpd hands them over, up to exactly the limit. */
	ck_assert_int_eq(body_feed(&b, "{\"value\":", 9), 0);
	ck_assert_int_eq(body_feed(&b, "", 0), 0);
	ck_assert_int_eq(body_feed(&b, "12345}", 6), 0);
	ck_assert_int_eq(body_feed(&b, " ", 1), 0);
	ck_assert_uint_eq(b.seen, 16);
	ck_assert(!body_too_large(&b));
	ck_assert_int_eq(body_json(&b, &v, err, sizeof(err)), 0);
	ck_assert(json_is_object(v));
	ck_assert_int_eq(json_integer_value(json_object_get(v, "value")), 12345);
	json_decref(v);
	body_free(&b);
}
END_TEST

START_TEST(feed_beyond_limit)
{
	struct body b;
	json_t *v = NULL;
	char err[256], chunk[4096];

	memset(chunk, ' ', sizeof(chunk));
	body_init(&b, 10);
	ck_assert_int_eq(body_feed(&b, "[1,2,3,4,5", 10), 0);
	/* One byte over: refused, and nothing of it kept. */
	ck_assert_int_eq(body_feed(&b, "]", 1), -E2BIG);
	ck_assert(body_too_large(&b));
	ck_assert_ptr_null(b.data.data);
	/* A client that goes on is counted, never stored. */
	for (int i = 0; i < 1000; i++)
		ck_assert_int_eq(body_feed(&b, chunk, sizeof(chunk)), -E2BIG);
	ck_assert_uint_eq(b.seen, 11 + 1000 * sizeof(chunk));
	ck_assert_ptr_null(b.data.data);
	ck_assert_int_eq(body_json(&b, &v, err, sizeof(err)), -E2BIG);
	ck_assert_ptr_null(v);
	ck_assert_ptr_nonnull(strstr(err, "10 bytes"));
	body_free(&b);

	/* A single piece larger than the limit. */
	body_init(&b, 4);
	ck_assert_int_eq(body_feed(&b, "[1,2]", 5), -E2BIG);
	ck_assert(body_too_large(&b));
	body_free(&b);
}
END_TEST

START_TEST(json_errors)
{
	static const char *const bad[] = { "{", "{\"a\":}", "nul", "{\"a\":1}{\"b\":2}",
					   "{\"a\":1,\"a\":2}", "\"a\\u0000b\"", "\xff", NULL };
	struct body b;
	json_t *v = NULL;
	char err[256];

	body_init(&b, 1024);
	ck_assert_int_eq(body_json(&b, &v, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "empty body"));
	body_free(&b);
	for (const char *const *s = bad; *s; s++) {
		body_init(&b, 1024);
		ck_assert_int_eq(body_feed(&b, *s, strlen(*s)), 0);
		err[0] = '\0';
		ck_assert_msg(body_json(&b, &v, err, sizeof(err)) == -EINVAL, "accepted %s", *s);
		ck_assert_ptr_nonnull(strstr(err, "invalid JSON body"));
		ck_assert_ptr_nonnull(strstr(err, "line"));
		ck_assert_ptr_null(v);
		body_free(&b);
	}
	/* Scalars are documents too; the handler decides what it takes. */
	body_init(&b, 1024);
	ck_assert_int_eq(body_feed(&b, " 42 ", 4), 0);
	ck_assert_int_eq(body_json(&b, &v, err, sizeof(err)), 0);
	ck_assert(json_is_integer(v));
	json_decref(v);
	body_free(&b);
}
END_TEST

START_TEST(content_type)
{
	static const char *const good[] = { "application/json", "Application/JSON",
					    " application/json ", "application/json;charset=utf-8",
					    "application/json; charset=UTF-8", "application/json; charset=\"utf-8\"",
					    "application/json; foo=bar", "application/json;", NULL };
	static const char *const bad[] = { "", "text/plain", "application/jsonx",
					   "application/json-seq", "application/x-www-form-urlencoded",
					   "multipart/form-data; boundary=x", "application/json; charset=latin1",
					   "json", NULL };

	for (const char *const *s = good; *s; s++)
		ck_assert_msg(body_type_is(*s, "application/json"), "refused %s", *s);
	for (const char *const *s = bad; *s; s++)
		ck_assert_msg(!body_type_is(*s, "application/json"), "accepted %s", *s);
	ck_assert(!body_type_is(NULL, "application/json"));
}
END_TEST

static Suite *body_suite(void)
{
	Suite *s = suite_create("body");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, feed_within_limit);
	tcase_add_test(tc, feed_beyond_limit);
	tcase_add_test(tc, json_errors);
	tcase_add_test(tc, content_type);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(body_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
