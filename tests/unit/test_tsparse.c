/* SPDX-License-Identifier: MIT */
/* test_tsparse.c: unit tests of epoch and RFC 3339 timestamp decoding. */
#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/tsparse.h"
#include "clock_fake.h"

#define NOW_NS (INT64_C(1795313402123) * 1000000) /* fake_now_ms: 2026-11-22T02:10:02.123Z */

static int epoch(const char *s, int64_t *ns)
{
	return ts_parse_epoch(s, strlen(s), ns);
}

static int rfc(const char *s, int64_t *ns)
{
	return ts_parse_rfc3339(s, strlen(s), ns);
}

/* ---- ts_parse_epoch ----------------------------------------------------- */

static const struct {
	const char *in;
	int64_t ns;
} epoch_good[] = {
	{ "1795313402", INT64_C(1795313402000000000) },                 /* seconds */
	{ "1795313402.123", INT64_C(1795313402123000000) },
	{ "1795313402.5", INT64_C(1795313402500000000) },
	{ "1795313402.123456789", INT64_C(1795313402123456789) },
	{ "1795313402.1234567899", INT64_C(1795313402123456789) },      /* past ns: dropped */
	{ "1795313402123", INT64_C(1795313402123000000) },              /* milliseconds */
	{ "1795313402123.5", INT64_C(1795313402123500000) },
	{ "1795313402123456", INT64_C(1795313402123456000) },           /* microseconds */
	{ "1795313402123456789", INT64_C(1795313402123456789) },        /* nanoseconds */
	{ "1.795313402e9", INT64_C(1795313402000000000) },              /* exponents */
	{ "1.795313402123E12", INT64_C(1795313402123000000) },
	{ "17953134021234e-1", INT64_C(1795313402123400000) },          /* 13 int digits: ms */
	{ "1795313402123e+3", INT64_C(1795313402123000000) },           /* 16 digits: us */
	{ "0", 0 },
	{ "0.5", 500000000 },
	{ "00001", 1000000000 },                                        /* leading zeros */
	{ "1e-400", 0 },
	{ "99999999999e-2", INT64_C(999999999990000000) },              /* 9 int digits: s */
	{ "100000000000", INT64_C(100000000000000000) },                /* 1e11: ms */
	{ "17953134021234e-4", INT64_C(1795313402123400000) },          /* 10 int digits: s */
	{ "100000000000000", INT64_C(100000000000000000) },             /* 1e14: us */
	{ "100000000000000000", INT64_C(100000000000000000) },          /* 1e17: ns */
	{ "9223372036854775807", INT64_MAX },
	{ "9223372036.854775807", INT64_MAX },                          /* seconds, max */
};

static const char *const epoch_bad[] = {
	"", "-1", "+1", "-0", "1.", ".5", "1e", "1e+", "1e-", "NaN", "nan", "Infinity", "inf",
	"1 ", " 1", "0x10", "1,5", "1e400", "12a", "1..2", "1.2.3", "9223372036854775808",
	"9300000000",          /* seconds that overflow int64 ns (year 2264) */
	"99999999999",         /* the largest "seconds" magnitude, overflows */
	"99999999999999",      /* the largest "milliseconds" magnitude, overflows */
	"18446744073709551616",
	"99999999999999999999999999999",
};

START_TEST(test_epoch_good)
{
	for (size_t i = 0; i < sizeof(epoch_good) / sizeof(epoch_good[0]); i++) {
		int64_t ns = -1;
		ck_assert_msg(epoch(epoch_good[i].in, &ns) == 0, "'%s' should parse", epoch_good[i].in);
		ck_assert_msg(ns == epoch_good[i].ns, "'%s' -> %lld, expected %lld", epoch_good[i].in,
			      (long long)ns, (long long)epoch_good[i].ns);
	}
}
END_TEST

START_TEST(test_epoch_bad)
{
	for (size_t i = 0; i < sizeof(epoch_bad) / sizeof(epoch_bad[0]); i++) {
		int64_t ns = 42;
		ck_assert_msg(epoch(epoch_bad[i], &ns) == -EINVAL, "'%s' should fail", epoch_bad[i]);
		ck_assert_msg(ns == 42, "'%s' wrote the output on failure", epoch_bad[i]);
	}
	ck_assert_int_eq(ts_parse_epoch(NULL, 0, &(int64_t){ 0 }), -EINVAL);
}
END_TEST

START_TEST(test_epoch_len_bounded)
{
	int64_t ns;

	/* Only len bytes count: "17953134029" must be read as "1795313402". */
	ck_assert_int_eq(ts_parse_epoch("17953134029", 10, &ns), 0);
	ck_assert_int_eq(ns, INT64_C(1795313402000000000));
}
END_TEST

/* Plain integers take a shortcut: it must agree with the general decoder
 * (reached by the same number with a ".0" fraction) at every length,
 * including the unit boundaries and the overflows. */
START_TEST(test_epoch_integer_shortcut)
{
	static const char digits[] = "9876543210123456789012";
	char plain[32], frac[40];

	for (size_t len = 1; len < sizeof(digits); len++) {
		for (int lead = 1; lead <= 9; lead++) {
			int64_t a = 42, b = 42;
			int ra, rb;

			plain[0] = (char)('0' + lead);
			memcpy(plain + 1, digits, len - 1);
			plain[len] = '\0';
			snprintf(frac, sizeof(frac), "%s.0", plain);
			ra = epoch(plain, &a);
			rb = epoch(frac, &b);
			ck_assert_msg(ra == rb && a == b, "'%s' -> %d %lld, '%s' -> %d %lld", plain, ra,
				      (long long)a, frac, rb, (long long)b);
		}
	}
}
END_TEST

/* ---- ts_parse_rfc3339 --------------------------------------------------- */

static const struct {
	const char *in;
	int64_t ns;
} rfc_good[] = {
	{ "2026-11-22T02:10:02.123Z", NOW_NS },
	{ "2026-11-22T03:10:02.123+01:00", NOW_NS },
	{ "2026-11-21T21:10:02.123-05:00", NOW_NS },
	{ "2026-11-22T07:40:02.123+05:30", NOW_NS },
	{ "2026-11-22t02:10:02.123z", NOW_NS },
	{ "2026-11-22 02:10:02.123Z", NOW_NS },
	{ "2026-11-22T02:10:02.123000000Z", NOW_NS },
	{ "2026-11-22T02:10:02.123+00:00", NOW_NS },
	{ "2026-11-22T02:10:02.123-00:00", NOW_NS },
	{ "2026-11-22T02:10:02Z", NOW_NS - 123000000 },
	{ "2026-11-22T02:10:02.1Z", NOW_NS - 23000000 },
	{ "2026-11-22T02:10:02.123456789Z", NOW_NS + 456789 },
	{ "2026-11-22T02:10:02.1234567891Z", NOW_NS + 456789 },       /* past ns: dropped */
	{ "1970-01-01T00:00:00Z", 0 },
	{ "1970-01-01T01:00:00+01:00", 0 },
	{ "2000-02-29T00:00:00Z", INT64_C(951782400) * 1000000000 },  /* leap year */
	{ "2024-02-29T12:00:00Z", INT64_C(1709208000) * 1000000000 },
	{ "2016-12-31T23:59:60Z", INT64_C(1483228799999999999) },     /* leap second: clamped */
	{ "2016-12-31T23:59:60.5Z", INT64_C(1483228799999999999) },
	{ "2262-04-11T23:47:16.854775807Z", INT64_MAX },
};

static const char *const rfc_bad[] = {
	"", "2026-11-22", "2026-11-22T02:10:02", "2026-11-22T02:10:02.123",
	"2026-11-22T02:10Z", "2026-11-22X02:10:02Z", "2026/11/22T02:10:02Z",
	"2026-13-01T00:00:00Z", "2026-00-01T00:00:00Z", "2026-11-31T00:00:00Z",
	"2026-11-00T00:00:00Z", "2023-02-29T00:00:00Z", "2100-02-29T00:00:00Z",
	"2026-11-22T24:00:00Z", "2026-11-22T23:60:00Z", "2026-11-22T23:58:60Z",
	"2026-11-22T23:59:61Z", "2026-11-22T02:10:02.Z", "2026-11-22T02:10:02+01",
	"2026-11-22T02:10:02+0100", "2026-11-22T02:10:02+01:60", "2026-11-22T02:10:02+24:00",
	"2026-11-22T02:10:02ZZ", "2026-11-22T02:10:02Z ", " 2026-11-22T02:10:02Z",
	"2026-11-22T02:10:02.123 Z", "1969-12-31T23:59:59Z", "1970-01-01T00:00:00+00:01",
	"2262-04-11T23:47:16.854775808Z", "9999-12-31T23:59:59Z", "2026-1-22T02:10:02Z",
	"+2026-11-22T02:10:02Z", "2026-11-22T02:10:02,123Z", "2026-11-22T2:10:02Z",
};

START_TEST(test_rfc3339_good)
{
	for (size_t i = 0; i < sizeof(rfc_good) / sizeof(rfc_good[0]); i++) {
		int64_t ns = -1;
		ck_assert_msg(rfc(rfc_good[i].in, &ns) == 0, "'%s' should parse", rfc_good[i].in);
		ck_assert_msg(ns == rfc_good[i].ns, "'%s' -> %lld, expected %lld", rfc_good[i].in,
			      (long long)ns, (long long)rfc_good[i].ns);
	}
}
END_TEST

START_TEST(test_rfc3339_bad)
{
	for (size_t i = 0; i < sizeof(rfc_bad) / sizeof(rfc_bad[0]); i++) {
		int64_t ns = 42;
		ck_assert_msg(rfc(rfc_bad[i], &ns) == -EINVAL, "'%s' should fail", rfc_bad[i]);
		ck_assert_int_eq(ns, 42);
	}
}
END_TEST

/* What clock_format_rfc3339 writes, ts_parse_rfc3339 reads back exactly. */
START_TEST(test_rfc3339_roundtrip)
{
	int64_t ms = 0;
	char buf[32];

	for (int i = 0; i < 20000; i++) {
		int64_t ns;
		ck_assert_int_eq(rfc(clock_format_rfc3339(ms, buf), &ns), 0);
		ck_assert_msg(ns == ms * 1000000, "%s -> %lld", buf, (long long)ns);
		/* a spread of times from 1970 to 2262 */
		ms = (int64_t)(((uint64_t)ms * 6364136223846793005ULL + 1442695040888963407ULL) %
			       UINT64_C(9223372036854));
	}
	ck_assert_str_eq(clock_format_rfc3339(fake_now_ms, buf), "2026-11-22T02:10:02.123Z");
	ck_assert_str_eq(clock_format_rfc3339(-1, buf), "1969-12-31T23:59:59.999Z");
	ck_assert_str_eq(clock_format_rfc3339(951782400000, buf), "2000-02-29T00:00:00.000Z");
	/* The formatted second is kept from one call to the next (per thread):
	 * across a day's end, and back to an earlier second. */
	ck_assert_str_eq(clock_format_rfc3339(951868799999, buf), "2000-02-29T23:59:59.999Z");
	ck_assert_str_eq(clock_format_rfc3339(951868800000, buf), "2000-03-01T00:00:00.000Z");
	ck_assert_str_eq(clock_format_rfc3339(951782400042, buf), "2000-02-29T00:00:00.042Z");
	/* And the second: same second, the next one, and back within a second of 1970. */
	ck_assert_str_eq(clock_format_rfc3339(951782400999, buf), "2000-02-29T00:00:00.999Z");
	ck_assert_str_eq(clock_format_rfc3339(951782401000, buf), "2000-02-29T00:00:01.000Z");
	ck_assert_str_eq(clock_format_rfc3339(-999, buf), "1969-12-31T23:59:59.001Z");
	ck_assert_str_eq(clock_format_rfc3339(-1000, buf), "1969-12-31T23:59:59.000Z");
	ck_assert_str_eq(clock_format_rfc3339(-1001, buf), "1969-12-31T23:59:58.999Z");
	ck_assert_str_eq(clock_format_rfc3339(0, buf), "1970-01-01T00:00:00.000Z");
	ck_assert_str_eq(clock_format_rfc3339(INT64_MAX, buf), "9999-12-31T23:59:59.999Z");
	ck_assert_str_eq(clock_format_rfc3339(INT64_MIN, buf), "0000-01-01T00:00:00.000Z");
}
END_TEST

static Suite *tsparse_suite(void)
{
	Suite *s = suite_create("tsparse");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, test_epoch_good);
	tcase_add_test(tc, test_epoch_bad);
	tcase_add_test(tc, test_epoch_integer_shortcut);
	tcase_add_test(tc, test_epoch_len_bounded);
	tcase_add_test(tc, test_rfc3339_good);
	tcase_add_test(tc, test_rfc3339_bad);
	tcase_add_test(tc, test_rfc3339_roundtrip);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(tsparse_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
