/* SPDX-License-Identifier: MIT */
/* test_jscan.c: unit tests of the JSON scanner: validity against jansson, the timestamp member, depth. */
#include <check.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mirror/ingest/jscan.h"

/* What jscan calls JSON is what jansson loads, at every depth. */
_Static_assert(JSCAN_MAX_DEPTH == JSON_PARSER_MAX_DEPTH, "jscan's depth is jansson's");

#define NOW_NS (INT64_C(1795313402123) * 1000000) /* 2026-11-22T02:10:02.123Z */

/* ---- jscan_payload ------------------------------------------------------ */

static const char *const ts_names[] = { "ts", "timestamp", "time" };

static struct jscan_result scan(const char *s)
{
	struct jscan_result r;

	memset(&r, 0x5a, sizeof(r));
	jscan_payload(s, strlen(s), ts_names, 3, &r);
	return r;
}

static const char *const json_good[] = {
	"{}", "[]", "\"\"", "0", "-0", "1.5e+10", "-1E-2", "0.0", "123", "true", "false", "null",
	" \t\n\r[1] \t\n\r", "{\"a\":[1,{\"b\":null}],\"c\":\"\\u00e9\\ud83d\\ude00\\n\\\"\\\\\\/\\b\\f\\r\\t\"}",
	"\"\\u0000\"", "[1,2,3]", "{\"\":0}", "{\"a\":1,\"a\":2}", "\"caf\xc3\xa9\"",
	"\"\xf0\x9f\x98\x80\"", "[[]]", "[{}]", "{\"a\":{}}", "[ 1 , 2 ]", "{ \"a\" : 1 }",
	"\"\\uD834\\uDD1E\"", "[-1.0e-0]", "1E+2", "[\"\x7f\"]", "\"/\"", "{\"a\":\"}\"}",
	"[\"]\"]", "{\"a\\\"b\":1}", "1e999", "123456789012345678901234567890",
};

static const char *const json_bad[] = {
	"", " ", "{", "}", "[", "]", "[1,]", "[,1]", "{\"a\":1,}", "{\"a\"}", "{\"a\" 1}",
	"{a:1}", "{'a':1}", "['a']", "01", "-01", "-", "1.", ".1", "1e", "1e+", "+1", "0x1", "NaN",
	"Infinity", "-Infinity", "tru", "nul", "True", "NULL", "[1 2]", "\"abc", "\"\\x\"",
	"\"\\u12\"", "\"\\u12G4\"", "\"\\ud800\"", "\"\\udc00\"", "\"\\ud800\\u0041\"",
	"\"\\ud800x\"", "\"\\udc00\\ud800\"", "\"tab\there\"", "\"\x01\"", "\"\xff\"",
	"\"\xc0\xaf\"", "\"\xed\xa0\x80\"", "\"\xe2\x82\"", "1 2", "{} {}", "[1]x",
	"\xef\xbb\xbf{}", "{\"a\":1}}", "[1]]", "{\"a\":1]", "[1}", "{,}", "{\"a\":}", "{:1}",
	"{\"a\"::1}", "[\"a\",]", "\"\\\"", "\"\\'\"", "[1,,2]", "{\"a\":1 \"b\":2}", "\x01",
	"[\n1\n,\n]", "\"\\u00\"", "-.5", "2.e3", "1e2.5", "[true false]", "[nulll]", "[truee]",
	"\f[]", "[]\v",
};

START_TEST(test_jscan_valid)
{
	for (size_t i = 0; i < sizeof(json_good) / sizeof(json_good[0]); i++) {
		struct jscan_result r = scan(json_good[i]);
		ck_assert_msg(r.is_json, "'%s' should be JSON", json_good[i]);
		ck_assert_msg(!r.ts_found && !r.ts_bad, "'%s' has no timestamp", json_good[i]);
	}
}
END_TEST

START_TEST(test_jscan_invalid)
{
	for (size_t i = 0; i < sizeof(json_bad) / sizeof(json_bad[0]); i++) {
		struct jscan_result r = scan(json_bad[i]);
		ck_assert_msg(!r.is_json, "'%s' should not be JSON", json_bad[i]);
		ck_assert(!r.ts_found && !r.ts_bad);
	}
	/* A NUL inside or after the text. */
	struct jscan_result r;
	jscan_payload("{}\0", 3, ts_names, 3, &r);
	ck_assert(!r.is_json);
	jscan_payload("\"a\0b\"", 5, ts_names, 3, &r);
	ck_assert(!r.is_json);
	/* Only len bytes are looked at. */
	jscan_payload("[1]garbage", 3, ts_names, 3, &r);
	ck_assert(r.is_json);
	jscan_payload("[1]", 2, ts_names, 3, &r);
	ck_assert(!r.is_json);
	jscan_payload(NULL, 0, ts_names, 3, &r);
	ck_assert(!r.is_json);
}
END_TEST

START_TEST(test_jscan_depth)
{
	char buf[2 * (JSCAN_MAX_DEPTH + 1) + 1];
	struct jscan_result r;
	size_t n;

	for (n = 0; n < JSCAN_MAX_DEPTH; n++)
		buf[n] = '[';
	for (size_t i = 0; i < JSCAN_MAX_DEPTH; i++)
		buf[n++] = ']';
	jscan_payload(buf, n, ts_names, 3, &r);
	ck_assert(r.is_json && !r.too_deep);
	{
		json_t *j = json_loadb(buf, n, 0, NULL);

		ck_assert_ptr_nonnull(j);
		json_decref(j);
	}

	n = 0;
	for (size_t i = 0; i <= JSCAN_MAX_DEPTH; i++)
		buf[n++] = '[';
	for (size_t i = 0; i <= JSCAN_MAX_DEPTH; i++)
		buf[n++] = ']';
	jscan_payload(buf, n, ts_names, 3, &r);
	ck_assert(!r.is_json && r.too_deep);
	ck_assert_ptr_null(json_loadb(buf, n, 0, NULL));

	/* Objects count as well: {"a":{"a":...}} */
	char obj[8 * (JSCAN_MAX_DEPTH + 1) + 8];
	n = 0;
	for (size_t i = 0; i <= JSCAN_MAX_DEPTH; i++)
		n += (size_t)snprintf(obj + n, sizeof(obj) - n, "{\"a\":");
	obj[n++] = '1';
	for (size_t i = 0; i <= JSCAN_MAX_DEPTH; i++)
		obj[n++] = '}';
	jscan_payload(obj, n, ts_names, 3, &r);
	ck_assert(!r.is_json);
	jscan_payload(obj + 5, n - 6, ts_names, 3, &r);  /* one level less: fine */
	ck_assert(r.is_json);

	/* Very deep input is refused, not overflowed. */
	size_t big = 1 << 20;
	char *deep = malloc(big);
	ck_assert_ptr_nonnull(deep);
	memset(deep, '[', big);
	jscan_payload(deep, big, ts_names, 3, &r);
	ck_assert(!r.is_json);
	free(deep);
}
END_TEST

static const struct {
	const char *in;
	bool found, bad;
	int64_t ns;
} member_cases[] = {
	{ "{\"ts\":1795313402123}", true, false, NOW_NS },
	{ "{\"ts\":1795313402.123}", true, false, NOW_NS },
	{ "{\"ts\":\"2026-11-22T02:10:02.123Z\"}", true, false, NOW_NS },
	{ "{\"ts\":\"1795313402123\"}", true, false, NOW_NS },                 /* epoch in a string */
	{ "{\"time\":1,\"timestamp\":2,\"ts\":1795313402123}", true, false, NOW_NS }, /* preference */
	{ "{\"time\":1795313402123,\"x\":{\"ts\":5}}", true, false, NOW_NS },   /* nested ignored */
	{ "{\"time\":1,\"timestamp\":1795313402123}", true, false, NOW_NS },
	{ "{\"ts\":1795313402123,\"ts\":5}", true, false, NOW_NS },            /* first wins */
	{ "{\"ts\":null,\"time\":1795313402123}", true, false, NOW_NS },       /* null = absent */
	{ "{\"ts\":null}", false, false, 0 },
	{ "{\"t\\u0073\":1795313402123}", true, false, NOW_NS },               /* escaped name */
	{ "{\"a\":[{\"ts\":1}],\"b\":{\"c\":[]},\"ts\":1795313402123}", true, false, NOW_NS },
	{ " { \"ts\" : 1795313402123 } ", true, false, NOW_NS },
	{ "{\"ts\":\"abc\"}", false, true, 0 },
	{ "{\"ts\":-5}", false, true, 0 },
	{ "{\"ts\":{\"a\":1}}", false, true, 0 },
	{ "{\"ts\":[1795313402]}", false, true, 0 },
	{ "{\"ts\":true}", false, true, 0 },
	{ "{\"ts\":\"\\u0032026-11-22T02:10:02.123Z\"}", false, true, 0 },    /* escapes: refused */
	{ "{\"ts\":\"\"}", false, true, 0 },
	{ "{\"ts\":1e400}", false, true, 0 },
	{ "{\"ts\":\"abc\",\"time\":1795313402123}", false, true, 0 },         /* preferred decides */
	{ "{\"tsx\":1,\"t\":2,\"Ts\":3}", false, false, 0 },
	{ "[{\"ts\":1795313402123}]", false, false, 0 },
	{ "\"ts\"", false, false, 0 },
	{ "{\"x\":\"ts\",\"y\":\"time\"}", false, false, 0 },                  /* values, not names */
};

START_TEST(test_jscan_member)
{
	for (size_t i = 0; i < sizeof(member_cases) / sizeof(member_cases[0]); i++) {
		struct jscan_result r = scan(member_cases[i].in);
		ck_assert_msg(r.is_json, "'%s' is JSON", member_cases[i].in);
		ck_assert_msg(r.ts_found == member_cases[i].found && r.ts_bad == member_cases[i].bad,
			      "'%s': found %d bad %d", member_cases[i].in, r.ts_found, r.ts_bad);
		if (member_cases[i].found)
			ck_assert_msg(r.ts_ns == member_cases[i].ns, "'%s': %lld", member_cases[i].in,
				      (long long)r.ts_ns);
	}
}
END_TEST

START_TEST(test_jscan_member_invalid_json)
{
	/* Nothing is reported from a payload that is not JSON. */
	struct jscan_result r = scan("{\"ts\":1795313402123,");
	ck_assert(!r.is_json && !r.ts_found && !r.ts_bad);
	r = scan("{\"ts\":\"abc\"");
	ck_assert(!r.is_json && !r.ts_found && !r.ts_bad);
}
END_TEST

START_TEST(test_jscan_names)
{
	static const char *const custom[] = { "observed_at", "timestamp" };
	static const char *const many[] = { "a", "b", "c", "d", "e", "f", "g", "h", "i", "j" };
	const char *p = "{\"timestamp\":1,\"observed_at\":1795313402123}";
	struct jscan_result r;

	jscan_payload(p, strlen(p), custom, 2, &r);
	ck_assert(r.ts_found);
	ck_assert_int_eq(r.ts_ns, NOW_NS);
	jscan_payload(p, strlen(p), custom + 1, 1, &r);
	ck_assert(r.ts_found);
	ck_assert_int_eq(r.ts_ns, 1000000000);
	jscan_payload(p, strlen(p), NULL, 0, &r);
	ck_assert(r.is_json && !r.ts_found && !r.ts_bad);
	/* More names than the scanner caches lengths for. */
	p = "{\"i\":5,\"j\":1795313402123}";
	jscan_payload(p, strlen(p), many, 10, &r);
	ck_assert(r.ts_found);
	ck_assert_int_eq(r.ts_ns, INT64_C(5000000000));
	jscan_payload(p, strlen(p), many + 9, 1, &r);
	ck_assert_int_eq(r.ts_ns, NOW_NS);
}
END_TEST

/*
** Differential check against jansson on every short string over a JSON-ish
** alphabet (no 'e' or long digit runs, where jansson refuses numbers it
** cannot represent although they are valid JSON).
*/
START_TEST(test_jscan_vs_jansson)
{
	static const char alpha[] = "{}[]\",:01-. nul\\\xc3\xa9";
	const size_t na = sizeof(alpha) - 1;
	char s[8];
	unsigned valid = 0;
	uint64_t x = 88172645463325252ULL;

	for (int iter = 0; iter < 300000; iter++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		size_t n = 1 + x % 7;
		uint64_t y = x >> 3;
		for (size_t i = 0; i < n; i++, y /= na)
			s[i] = alpha[y % na];
		struct jscan_result r;
		jscan_payload(s, n, ts_names, 3, &r);
		json_error_t e;
		json_t *j = json_loadb(s, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
		ck_assert_msg(r.is_json == (j != NULL), "'%.*s': jscan %d jansson %d", (int)n, s,
			      r.is_json, j != NULL);
		valid += j != NULL;
		json_decref(j);
	}
	ck_assert_uint_gt(valid, 100);
}
END_TEST

/* Any bytes: never crashes, never reads past len (ASan checks that). */
START_TEST(test_jscan_random_bytes)
{
	static const char alpha[] = "{}[]\":,0123456789.eE+-tsimeanulfr \\u\xc3\xa9\xff";
	uint64_t x = 0x9e3779b97f4a7c15ULL;
	unsigned char buf[64];

	for (int iter = 0; iter < 200000; iter++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		size_t n = x % sizeof(buf);
		for (size_t i = 0; i < n; i++) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			buf[i] = (unsigned char)alpha[x % (sizeof(alpha) - 1)];
		}
		char *heap = malloc(n ? n : 1);
		ck_assert_ptr_nonnull(heap);
		memcpy(heap, buf, n);
		struct jscan_result r;
		jscan_payload(heap, n, ts_names, 3, &r);
		ck_assert(!(r.ts_found && r.ts_bad));
		ck_assert(r.is_json || (!r.ts_found && !r.ts_bad));
		free(heap);
	}
}
END_TEST

static Suite *jscan_suite(void)
{
	Suite *s = suite_create("jscan");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, test_jscan_valid);
	tcase_add_test(tc, test_jscan_invalid);
	tcase_add_test(tc, test_jscan_depth);
	tcase_add_test(tc, test_jscan_member);
	tcase_add_test(tc, test_jscan_member_invalid_json);
	tcase_add_test(tc, test_jscan_names);
	tcase_add_test(tc, test_jscan_vs_jansson);
	tcase_add_test(tc, test_jscan_random_bytes);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(jscan_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
