/* SPDX-License-Identifier: MIT */
/* test_pathdec.c: strict percent-decoding, query-string parsing and typed query parameters of the HTTP API. */
#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/pathdec.h"

/* Decode s into a fresh buffer; returns the result code, *out/ *len set on 0. */
static int dec(const char *s, char *out, size_t *len)
{
	return pathdec_decode(s, strlen(s), out, len);
}

START_TEST(decode_valid)
{
	char out[64];
	size_t n = 99;

	ck_assert_int_eq(dec("dc1/hall2/rack17/temp", out, &n), 0);
	ck_assert_uint_eq(n, 21);
	ck_assert_int_eq(memcmp(out, "dc1/hall2/rack17/temp", n), 0);

	ck_assert_int_eq(dec("a%2Fb%2fc", out, &n), 0);
	ck_assert_uint_eq(n, 5);
	ck_assert_int_eq(memcmp(out, "a/b/c", 5), 0);

	ck_assert_int_eq(dec("%41%62%7e", out, &n), 0);
	ck_assert_uint_eq(n, 3);
	ck_assert_int_eq(memcmp(out, "Ab~", 3), 0);

	/* '+' is literal, %2B is '+', %20 the only way to a space. */
	ck_assert_int_eq(dec("a/+/b%2B%20c", out, &n), 0);
	ck_assert_uint_eq(n, 8);
	ck_assert_int_eq(memcmp(out, "a/+/b+ c", 8), 0);

	/* '#' and '%' themselves. */
	ck_assert_int_eq(dec("x%23%25", out, &n), 0);
	ck_assert_uint_eq(n, 3);
	ck_assert_int_eq(memcmp(out, "x#%", 3), 0);
}
END_TEST

START_TEST(decode_invalid)
{
	char out[64];
	size_t n = 77;

	ck_assert_int_eq(dec("%zz", out, &n), -EINVAL);
	ck_assert_int_eq(dec("a%4", out, &n), -EINVAL);
	ck_assert_int_eq(dec("%", out, &n), -EINVAL);
	ck_assert_int_eq(dec("abc%", out, &n), -EINVAL);
	ck_assert_int_eq(dec("%g1", out, &n), -EINVAL);
	ck_assert_int_eq(dec("%1g", out, &n), -EINVAL);
	ck_assert_int_eq(dec("ok%2Fthen%x", out, &n), -EINVAL);
	/* A '%' whose hex digits lie beyond n is truncated even if the memory
	 * after n holds them. */
	ck_assert_int_eq(pathdec_decode("ab%41", 4, out, &n), -EINVAL);
	/* ret_len is written only on success. */
	ck_assert_uint_eq(n, 77);
}
END_TEST

START_TEST(decode_edges)
{
	char out[64];
	size_t n = 5;

	ck_assert_int_eq(dec("", out, &n), 0);
	ck_assert_uint_eq(n, 0);

	/* %00 decodes to a NUL byte; the length tells. */
	ck_assert_int_eq(dec("a%00b", out, &n), 0);
	ck_assert_uint_eq(n, 3);
	ck_assert_int_eq(out[1], '\0');
	ck_assert_int_eq(out[2], 'b');

	/* Non-ASCII: encoded UTF-8 and raw bytes both come through byte for byte. */
	ck_assert_int_eq(dec("caf%C3%A9/\xc3\xa9", out, &n), 0);
	ck_assert_uint_eq(n, 8);
	ck_assert_int_eq(memcmp(out, "caf\xc3\xa9/\xc3\xa9", 8), 0);
	ck_assert_int_eq(dec("%FF%fe", out, &n), 0);
	ck_assert_uint_eq(n, 2);
	ck_assert_int_eq((unsigned char)out[0], 0xff);
	ck_assert_int_eq((unsigned char)out[1], 0xfe);
}
END_TEST

START_TEST(decode_in_place)
{
	char s[] = "%2Fa%2Fbb%2F%2F";
	size_t n = 0;

	ck_assert_int_eq(pathdec_decode(s, strlen(s), s, &n), 0);
	ck_assert_uint_eq(n, 7);
	ck_assert_int_eq(memcmp(s, "/a/bb//", 7), 0);
}
END_TEST

START_TEST(decode_overlong)
{
	size_t big = PATHDEC_MAX_LEN + 1, n = 0;
	char *in = malloc(big), *out = malloc(big);

	ck_assert_ptr_nonnull(in);
	ck_assert_ptr_nonnull(out);
	memset(in, 'a', big);
	ck_assert_int_eq(pathdec_decode(in, big, out, &n), -E2BIG);
	/* Exactly the limit is fine. */
	ck_assert_int_eq(pathdec_decode(in, big - 1, out, &n), 0);
	ck_assert_uint_eq(n, big - 1);
	free(in);
	free(out);
}
END_TEST

static size_t parse(char *q, struct pathdec_param *p, int want)
{
	size_t n = 999;

	ck_assert_int_eq(pathdec_query(q, strlen(q), p, PATHDEC_MAX_PARAMS, &n), want);
	return n;
}

START_TEST(query_basic)
{
	struct pathdec_param p[PATHDEC_MAX_PARAMS];
	const struct pathdec_param *v;
	char q[] = "filter=dc1%2F%2B%2Ftemp&limit=10&after=dc1%2Fa+b&stale=true";
	size_t n = parse(q, p, 0);

	ck_assert_uint_eq(n, 4);
	ck_assert_int_eq(pathdec_get(p, n, "filter", &v), 0);
	ck_assert_str_eq(v->val, "dc1/+/temp");
	ck_assert_uint_eq(v->val_len, 10);
	ck_assert_int_eq(pathdec_get(p, n, "limit", &v), 0);
	ck_assert_str_eq(v->val, "10");
	ck_assert_int_eq(pathdec_get(p, n, "after", &v), 0);
	ck_assert_str_eq(v->val, "dc1/a+b"); /* '+' is not a space */
	ck_assert_int_eq(pathdec_get(p, n, "stale", &v), 0);
	ck_assert_str_eq(v->val, "true");
	ck_assert_int_eq(pathdec_get(p, n, "nope", &v), -ENOENT);
}
END_TEST

START_TEST(query_plus_literal)
{
	struct pathdec_param p[PATHDEC_MAX_PARAMS];
	char q[] = "filter=a/+/b/#";
	size_t n = parse(q, p, 0);

	ck_assert_uint_eq(n, 1);
	ck_assert_str_eq(p[0].key, "filter");
	ck_assert_str_eq(p[0].val, "a/+/b/#");
}
END_TEST

START_TEST(query_shapes)
{
	struct pathdec_param p[PATHDEC_MAX_PARAMS];
	const struct pathdec_param *v;
	char q1[] = "&a=1&&b=2&";
	char q2[] = "flag&x=";
	char q3[] = "=v&k=a=b";
	char q4[] = "";
	char q5[] = "k%3D=v%26w&n=%00";
	size_t n;

	n = parse(q1, p, 0);
	ck_assert_uint_eq(n, 2);
	ck_assert_str_eq(p[0].key, "a");
	ck_assert_str_eq(p[0].val, "1");
	ck_assert_str_eq(p[1].key, "b");
	ck_assert_str_eq(p[1].val, "2");

	n = parse(q2, p, 0);
	ck_assert_uint_eq(n, 2);
	ck_assert_str_eq(p[0].key, "flag");
	ck_assert_uint_eq(p[0].val_len, 0);
	ck_assert_str_eq(p[0].val, "");
	ck_assert_str_eq(p[1].key, "x");
	ck_assert_str_eq(p[1].val, "");

	n = parse(q3, p, 0);
	ck_assert_uint_eq(n, 2);
	ck_assert_uint_eq(p[0].key_len, 0);
	ck_assert_str_eq(p[0].val, "v");
	ck_assert_str_eq(p[1].val, "a=b");

	n = parse(q4, p, 0);
	ck_assert_uint_eq(n, 0);

	/* Encoded separators do not split; %00 stays inside the value. */
	n = parse(q5, p, 0);
	ck_assert_uint_eq(n, 2);
	ck_assert_str_eq(p[0].key, "k=");
	ck_assert_str_eq(p[0].val, "v&w");
	ck_assert_int_eq(pathdec_get(p, n, "n", &v), 0);
	ck_assert_uint_eq(v->val_len, 1);
	ck_assert_int_eq(v->val[0], '\0');
}
END_TEST

START_TEST(query_errors)
{
	struct pathdec_param p[PATHDEC_MAX_PARAMS];
	const struct pathdec_param *v;
	char bad1[] = "a=%zz";
	char bad2[] = "a%4=1";
	char dup[] = "filter=a&filter=b";
	char many[256], exact[256];
	size_t n, off = 0;

	parse(bad1, p, -EINVAL);
	parse(bad2, p, -EINVAL);

	n = parse(dup, p, 0);
	ck_assert_uint_eq(n, 2);
	ck_assert_int_eq(pathdec_get(p, n, "filter", &v), -EINVAL);

	for (int i = 0; i < PATHDEC_MAX_PARAMS + 1; i++)
		off += (size_t)snprintf(many + off, sizeof(many) - off, "%sk%d=v", i ? "&" : "", i);
	parse(many, p, -E2BIG);
	off = 0;
	for (int i = 0; i < PATHDEC_MAX_PARAMS; i++)
		off += (size_t)snprintf(exact + off, sizeof(exact) - off, "%sk%d=v", i ? "&" : "", i);
	ck_assert_uint_eq(parse(exact, p, 0), PATHDEC_MAX_PARAMS);
	ck_assert_str_eq(p[PATHDEC_MAX_PARAMS - 1].key, "k15");
}
END_TEST

START_TEST(query_overlong)
{
	struct pathdec_param p[PATHDEC_MAX_PARAMS];
	size_t big = PATHDEC_MAX_LEN + 1, n = 0;
	char *q = malloc(big + 1);

	ck_assert_ptr_nonnull(q);
	memset(q, 'a', big);
	q[big] = '\0';
	ck_assert_int_eq(pathdec_query(q, big, p, PATHDEC_MAX_PARAMS, &n), -E2BIG);
	free(q);
}
END_TEST

/* Parse q (a literal) into p; returns the count. */
static size_t parse_lit(const char *q, char *store, struct pathdec_param *p)
{
	size_t n = 0;

	snprintf(store, 256, "%s", q);
	ck_assert_int_eq(pathdec_query(store, strlen(store), p, PATHDEC_MAX_PARAMS, &n), 0);
	return n;
}

START_TEST(param_bool)
{
	struct pathdec_param p[PATHDEC_MAX_PARAMS];
	char q[256];
	size_t n;
	int v;

	n = parse_lit("a=true&b=false&c=TRUE&d=1&e=&a2=true&a2=true", q, p);
	v = -1;
	ck_assert_int_eq(pathdec_bool(p, n, "a", &v), 0);
	ck_assert_int_eq(v, 1);
	ck_assert_int_eq(pathdec_bool(p, n, "b", &v), 0);
	ck_assert_int_eq(v, 0);
	/* Absent: the default stands. */
	v = 7;
	ck_assert_int_eq(pathdec_bool(p, n, "zz", &v), 0);
	ck_assert_int_eq(v, 7);
	/* Only the two words, once. */
	ck_assert_int_eq(pathdec_bool(p, n, "c", &v), -EINVAL);
	ck_assert_int_eq(pathdec_bool(p, n, "d", &v), -EINVAL);
	ck_assert_int_eq(pathdec_bool(p, n, "e", &v), -EINVAL);
	ck_assert_int_eq(pathdec_bool(p, n, "a2", &v), -EINVAL);
	ck_assert_int_eq(v, 7);
}
END_TEST

START_TEST(param_uint)
{
	struct pathdec_param p[PATHDEC_MAX_PARAMS];
	char q[256];
	uint64_t v;
	size_t n;

	n = parse_lit("l=100&z=0&big=10001&neg=-1&sp=%2010&x=1e3&e=&max=10000&h=0x10&lead=007", q, p);
	v = 5;
	ck_assert_int_eq(pathdec_uint(p, n, "l", 1, 10000, &v), 0);
	ck_assert_uint_eq(v, 100);
	ck_assert_int_eq(pathdec_uint(p, n, "max", 1, 10000, &v), 0);
	ck_assert_uint_eq(v, 10000);
	ck_assert_int_eq(pathdec_uint(p, n, "lead", 1, 10000, &v), 0);
	ck_assert_uint_eq(v, 7);
	v = 5;
	ck_assert_int_eq(pathdec_uint(p, n, "absent", 1, 10000, &v), 0);
	ck_assert_uint_eq(v, 5);
	ck_assert_int_eq(pathdec_uint(p, n, "z", 1, 10000, &v), -EINVAL);
	ck_assert_int_eq(pathdec_uint(p, n, "z", 0, 10000, &v), 0);
	ck_assert_uint_eq(v, 0);
	v = 5;
	for (const char *const *k = (const char *const[]){ "big", "neg", "sp", "x", "e", "h", NULL };
	     *k; k++)
		ck_assert_int_eq(pathdec_uint(p, n, *k, 1, 10000, &v), -EINVAL);
	ck_assert_uint_eq(v, 5);
}
END_TEST

START_TEST(parse_uint_bounds)
{
	uint64_t v = 0;

	ck_assert_int_eq(pathdec_parse_uint("18446744073709551615", 20, UINT64_MAX, &v), 0);
	ck_assert_uint_eq(v, UINT64_MAX);
	/* One more overflows: refused, not wrapped. */
	ck_assert_int_eq(pathdec_parse_uint("18446744073709551616", 20, UINT64_MAX, &v), -EINVAL);
	ck_assert_int_eq(pathdec_parse_uint("99999999999999999999999", 23, UINT64_MAX, &v), -EINVAL);
	ck_assert_int_eq(pathdec_parse_uint("9223372036854775807", 19, INT64_MAX, &v), 0);
	ck_assert_uint_eq(v, INT64_MAX);
	ck_assert_int_eq(pathdec_parse_uint("9223372036854775808", 19, INT64_MAX, &v), -EINVAL);
	ck_assert_int_eq(pathdec_parse_uint("", 0, 10, &v), -EINVAL);
	ck_assert_int_eq(pathdec_parse_uint("10", 2, 9, &v), -EINVAL);
	ck_assert_int_eq(pathdec_parse_uint("9", 1, 0, &v), -EINVAL);
	ck_assert_int_eq(pathdec_parse_uint("0", 1, 0, &v), 0);
	ck_assert_uint_eq(v, 0);
	/* Length-bounded: what follows does not count. */
	ck_assert_int_eq(pathdec_parse_uint("12x", 2, 100, &v), 0);
	ck_assert_uint_eq(v, 12);
}
END_TEST

START_TEST(param_str)
{
	struct pathdec_param p[PATHDEC_MAX_PARAMS];
	const struct pathdec_param *v = NULL;
	char q[256];
	size_t n;

	n = parse_lit("f=a/%2B/b&nul=a%00b&twice=1&twice=2&empty=", q, p);
	ck_assert_int_eq(pathdec_str(p, n, "f", &v), 0);
	ck_assert_str_eq(v->val, "a/+/b");
	ck_assert_int_eq(pathdec_str(p, n, "empty", &v), 0);
	ck_assert_str_eq(v->val, "");
	v = NULL;
	ck_assert_int_eq(pathdec_str(p, n, "absent", &v), 0);
	ck_assert_ptr_null(v);
	ck_assert_int_eq(pathdec_str(p, n, "nul", &v), -EINVAL);
	ck_assert_int_eq(pathdec_str(p, n, "twice", &v), -EINVAL);
	ck_assert_ptr_null(v);
	ck_assert_str_eq(pathdec_query_reason(-E2BIG), "too many query parameters");
	ck_assert_str_eq(pathdec_query_reason(-EINVAL), "bad percent-encoding in the query");
}
END_TEST

static Suite *pathdec_suite(void)
{
	Suite *s = suite_create("pathdec");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, decode_valid);
	tcase_add_test(tc, decode_invalid);
	tcase_add_test(tc, decode_edges);
	tcase_add_test(tc, decode_in_place);
	tcase_add_test(tc, decode_overlong);
	tcase_add_test(tc, query_basic);
	tcase_add_test(tc, query_plus_literal);
	tcase_add_test(tc, query_shapes);
	tcase_add_test(tc, query_errors);
	tcase_add_test(tc, query_overlong);
	tcase_add_test(tc, param_bool);
	tcase_add_test(tc, param_uint);
	tcase_add_test(tc, parse_uint_bounds);
	tcase_add_test(tc, param_str);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(pathdec_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
