/* SPDX-License-Identifier: MIT */
/* test_buf.c: unit tests of the bounded buffer, JSON string escaping and base64. */
#include <check.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"

START_TEST(test_append_and_limit)
{
	struct buf b;

	buf_init(&b, 8);
	ck_assert_int_eq(buf_puts(&b, "abc"), 0);
	ck_assert_int_eq(buf_putc(&b, 'd'), 0);
	ck_assert_int_eq(buf_append(&b, "efgh", 4), 0);
	ck_assert_uint_eq(b.len, 8);
	ck_assert_str_eq(b.data, "abcdefgh");
	/* Past the limit: -E2BIG and nothing changes. */
	ck_assert_int_eq(buf_putc(&b, 'x'), -E2BIG);
	ck_assert_int_eq(buf_printf(&b, "%d", 1), -E2BIG);
	ck_assert_int_eq(buf_json_str(&b, "", 0), -E2BIG);
	ck_assert_int_eq(buf_base64(&b, "a", 1), -E2BIG);
	ck_assert_uint_eq(b.len, 8);
	ck_assert_str_eq(b.data, "abcdefgh");
	buf_reset(&b);
	ck_assert_uint_eq(b.len, 0);
	ck_assert_str_eq(b.data, "");
	ck_assert_int_eq(buf_append(&b, "123456789", 9), -E2BIG);
	ck_assert_uint_eq(b.len, 0);
	buf_free(&b);
	ck_assert_ptr_null(b.data);
	buf_free(&b);  /* twice is fine */
	buf_free(NULL);
}
END_TEST

START_TEST(test_zeroed_is_unlimited)
{
	struct buf b = { 0 };

	for (int i = 0; i < 100000; i++)
		ck_assert_int_eq(buf_puts(&b, "0123456789"), 0);
	ck_assert_uint_eq(b.len, 1000000);
	ck_assert_uint_eq(strlen(b.data), 1000000);
	buf_free(&b);
}
END_TEST

START_TEST(test_printf)
{
	struct buf b;
	char big[5000];

	buf_init(&b, 0);
	ck_assert_int_eq(buf_printf(&b, "%s=%d;", "a", 1), 0);
	memset(big, 'z', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	ck_assert_int_eq(buf_printf(&b, "[%s]", big), 0);   /* grows past the first try */
	ck_assert_uint_eq(b.len, 4 + 2 + 4999);
	ck_assert_int_eq(memcmp(b.data, "a=1;[zzz", 8), 0);
	ck_assert_int_eq(b.data[b.len - 1], ']');
	ck_assert_int_eq(b.data[b.len], '\0');
	buf_free(&b);

	/* A limit that the formatted text would cross. */
	buf_init(&b, 10);
	ck_assert_int_eq(buf_printf(&b, "%s", "12345"), 0);
	ck_assert_int_eq(buf_printf(&b, "%s", "678901"), -E2BIG);
	ck_assert_str_eq(b.data, "12345");
	ck_assert_int_eq(buf_printf(&b, "%s", "67890"), 0);
	ck_assert_str_eq(b.data, "1234567890");
	buf_free(&b);
}
END_TEST

static const struct {
	const char *in;
	size_t len;     /* 0 = strlen */
	const char *out;
} esc_cases[] = {
	{ "", 0, "\"\"" },
	{ "plain", 0, "\"plain\"" },
	{ "q\"b\\s/", 0, "\"q\\\"b\\\\s/\"" },
	{ "\b\f\n\r\t", 0, "\"\\b\\f\\n\\r\\t\"" },
	{ "\x01\x1f\x7f", 0, "\"\\u0001\\u001f\\u007f\"" },
	{ "a\0b", 3, "\"a\\u0000b\"" },
	{ "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", 0, "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"" },
	{ "\xff", 0, "\"\xef\xbf\xbd\"" },
	{ "a\xe2\x82z", 0, "\"a\xef\xbf\xbdz\"" },                      /* truncated: one U+FFFD */
	{ "\xc0\xaf", 0, "\"\xef\xbf\xbd\xef\xbf\xbd\"" },              /* overlong: two */
	{ "\xed\xa0\x80", 0, "\"\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\"" }, /* surrogate: three */
	{ "\xf4\x90\x80\x80", 0, "\"\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\"" },
	{ "\xe2\x82", 0, "\"\xef\xbf\xbd\"" },                           /* at the very end */
	{ "\x80\x80", 0, "\"\xef\xbf\xbd\xef\xbf\xbd\"" },
};

START_TEST(test_json_str)
{
	for (size_t i = 0; i < sizeof(esc_cases) / sizeof(esc_cases[0]); i++) {
		struct buf b;
		size_t len = esc_cases[i].len ? esc_cases[i].len : strlen(esc_cases[i].in);

		buf_init(&b, 0);
		ck_assert_int_eq(buf_json_str(&b, esc_cases[i].in, len), 0);
		ck_assert_msg(strcmp(b.data, esc_cases[i].out) == 0, "case %zu: got %s", i, b.data);
		buf_free(&b);
	}
}
END_TEST

/* Whatever the bytes, the output parses as a JSON string. */
START_TEST(test_json_str_always_valid)
{
	uint64_t x = 0x2545f4914f6cdd1dULL;
	char in[32];

	for (int iter = 0; iter < 20000; iter++) {
		struct buf b;
		size_t n = iter % sizeof(in);
		for (size_t i = 0; i < n; i++) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			in[i] = (char)(x & 0xff);
		}
		buf_init(&b, 0);
		ck_assert_int_eq(buf_json_str(&b, in, n), 0);
		json_error_t e;
		json_t *j = json_loadb(b.data, b.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
		ck_assert_msg(j && json_is_string(j), "not JSON: %s (%s)", b.data, e.text);
		json_decref(j);
		buf_free(&b);
	}
}
END_TEST

/* Every single byte: printable ASCII as itself, the rest escaped (or
 * U+FFFD for a byte that is no UTF-8 on its own). */
START_TEST(test_json_str_each_byte)
{
	for (int c = 0; c < 256; c++) {
		struct buf b;
		char in = (char)c, want[16];

		if (c == '"' || c == '\\')
			snprintf(want, sizeof(want), "\"\\%c\"", c);
		else if (c == '\n')
			snprintf(want, sizeof(want), "\"\\n\"");
		else if (c == '\t')
			snprintf(want, sizeof(want), "\"\\t\"");
		else if (c == '\r')
			snprintf(want, sizeof(want), "\"\\r\"");
		else if (c == '\b')
			snprintf(want, sizeof(want), "\"\\b\"");
		else if (c == '\f')
			snprintf(want, sizeof(want), "\"\\f\"");
		else if (c < 0x20 || c == 0x7f)
			snprintf(want, sizeof(want), "\"\\u%04x\"", c);
		else if (c < 0x7f)
			snprintf(want, sizeof(want), "\"%c\"", c);
		else
			snprintf(want, sizeof(want), "\"\xef\xbf\xbd\"");
		buf_init(&b, 0);
		ck_assert_int_eq(buf_json_str(&b, &in, 1), 0);
		ck_assert_msg(strcmp(b.data, want) == 0, "byte 0x%02x: got %s, want %s", c, b.data, want);
		buf_free(&b);
	}
}
END_TEST

/* Filling the buffer to the last byte of its capacity, then one more. */
START_TEST(test_append_at_capacity)
{
	struct buf b;

	buf_init(&b, 0);
	ck_assert_int_eq(buf_putc(&b, 'a'), 0);
	ck_assert_uint_gt(b.cap, 1);
	while (b.len + 1 < b.cap)
		ck_assert_int_eq(buf_putc(&b, 'a'), 0);
	ck_assert_uint_eq(b.len + 1, b.cap);  /* full: only the NUL fits */
	ck_assert_int_eq(buf_append(&b, "bc", 2), 0);
	ck_assert_uint_ge(b.cap, b.len + 1);
	ck_assert_uint_eq(strlen(b.data), b.len);
	ck_assert_int_eq(b.data[b.len - 1], 'c');
	buf_free(&b);
	/* A limit of exactly the length: the last byte fits, the next does not. */
	buf_init(&b, 3);
	ck_assert_int_eq(buf_append(&b, "ab", 2), 0);
	ck_assert_int_eq(buf_putc(&b, 'c'), 0);
	ck_assert_int_eq(buf_putc(&b, 'd'), -E2BIG);
	ck_assert_int_eq(buf_reserve(&b, 0), 0);
	ck_assert_int_eq(buf_reserve(&b, 1), -E2BIG);
	ck_assert_str_eq(b.data, "abc");
	buf_free(&b);
}
END_TEST

START_TEST(test_json_str_limit_unchanged)
{
	struct buf b;

	buf_init(&b, 12);
	ck_assert_int_eq(buf_puts(&b, "ab"), 0);
	/* Fits unescaped (8 bytes) but not escaped. */
	ck_assert_int_eq(buf_json_str(&b, "\n\n\n\n\n\n", 6), -E2BIG);
	ck_assert_uint_eq(b.len, 2);
	ck_assert_str_eq(b.data, "ab");
	ck_assert_int_eq(buf_json_str(&b, "xyz", 3), 0);
	ck_assert_str_eq(b.data, "ab\"xyz\"");
	buf_free(&b);
}
END_TEST

START_TEST(test_base64)
{
	/* RFC 4648 section 10 */
	static const char *const vec[][2] = {
		{ "", "" }, { "f", "Zg==" }, { "fo", "Zm8=" }, { "foo", "Zm9v" },
		{ "foob", "Zm9vYg==" }, { "fooba", "Zm9vYmE=" }, { "foobar", "Zm9vYmFy" },
	};
	struct buf b;

	for (size_t i = 0; i < sizeof(vec) / sizeof(vec[0]); i++) {
		buf_init(&b, 0);
		ck_assert_int_eq(buf_base64(&b, vec[i][0], strlen(vec[i][0])), 0);
		ck_assert_str_eq(b.data ? b.data : "", vec[i][1]);
		buf_free(&b);
	}
	buf_init(&b, 0);
	ck_assert_int_eq(buf_base64(&b, "\xff\xfe\x00\x01", 4), 0);
	ck_assert_str_eq(b.data, "//4AAQ==");
	buf_free(&b);
}
END_TEST

START_TEST(test_steal)
{
	struct buf b;
	size_t len = 99;
	char *s;

	buf_init(&b, 0);
	ck_assert_int_eq(buf_puts(&b, "hello"), 0);
	s = buf_steal(&b, &len);
	ck_assert_str_eq(s, "hello");
	ck_assert_uint_eq(len, 5);
	ck_assert_ptr_null(b.data);
	ck_assert_uint_eq(b.len, 0);
	free(s);
	s = buf_steal(&b, &len);  /* empty: "" not NULL */
	ck_assert_ptr_nonnull(s);
	ck_assert_str_eq(s, "");
	ck_assert_uint_eq(len, 0);
	free(s);
	ck_assert_int_eq(buf_puts(&b, "again"), 0);
	ck_assert_str_eq(b.data, "again");
	buf_free(&b);
}
END_TEST

static Suite *buf_suite(void)
{
	Suite *s = suite_create("buf");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, test_append_and_limit);
	tcase_add_test(tc, test_zeroed_is_unlimited);
	tcase_add_test(tc, test_printf);
	tcase_add_test(tc, test_json_str);
	tcase_add_test(tc, test_json_str_always_valid);
	tcase_add_test(tc, test_json_str_each_byte);
	tcase_add_test(tc, test_append_at_capacity);
	tcase_add_test(tc, test_json_str_limit_unchanged);
	tcase_add_test(tc, test_base64);
	tcase_add_test(tc, test_steal);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(buf_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
