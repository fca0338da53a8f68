/* SPDX-License-Identifier: MIT */
/* test_utf8.c: unit tests of the UTF-8 module: boundaries, overlongs, surrogates, range, truncation. */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/utf8.h"

/* ---- utf8_valid on whole buffers ---------------------------------------- */

static const struct {
	const char *s;
	bool ok;
} utf8_cases[] = {
	{ "", true },
	{ "plain ascii", true },
	{ "\x7f", true },                      /* U+007F, the last one-byte */
	{ "\xc2\x80", true },                  /* U+0080, the first two-byte */
	{ "caf\xc3\xa9", true },
	{ "\xdf\xbf", true },                  /* U+07FF */
	{ "\xe0\xa0\x80", true },              /* U+0800, the first three-byte */
	{ "\xe2\x82\xac", true },
	{ "\xed\x9f\xbf", true },              /* U+D7FF, just below the surrogates */
	{ "\xee\x80\x80", true },              /* U+E000, just above them */
	{ "\xef\xbf\xbd", true },
	{ "\xef\xbf\xbf", true },              /* U+FFFF */
	{ "\xf0\x90\x80\x80", true },          /* U+10000, the first four-byte */
	{ "\xf0\x9f\x98\x80", true },
	{ "\xf4\x8f\xbf\xbf", true },          /* U+10FFFF, the last code point */
	{ "\xc0\x80", false },                 /* overlong NUL */
	{ "\xc1\xbf", false },                 /* overlong U+007F */
	{ "\xe0\x80\xaf", false },             /* overlong '/' */
	{ "\xe0\x9f\xbf", false },             /* overlong U+07FF */
	{ "\xf0\x80\x80\x80", false },
	{ "\xf0\x8f\xbf\xbf", false },         /* overlong U+FFFF */
	{ "\xed\xa0\x80", false },             /* U+D800 */
	{ "\xed\xbf\xbf", false },             /* U+DFFF */
	{ "\xed\xa0\xbd\xed\xb8\x80", false }, /* CESU-8 surrogate pair */
	{ "\xf4\x90\x80\x80", false },         /* U+110000 */
	{ "\xf5\x80\x80\x80", false },
	{ "\xf7\xbf\xbf\xbf", false },
	{ "\xf8\x88\x80\x80\x80", false },     /* five-byte form */
	{ "\xfe", false },
	{ "\xff", false },
	{ "\x80", false },                     /* lone continuation */
	{ "\xbf", false },
	{ "a\xc3", false },                    /* truncated two-byte */
	{ "\xe2\x82", false },                 /* truncated three-byte */
	{ "\xe2\x82x", false },
	{ "\xf0\x9f\x98", false },             /* truncated four-byte */
	{ "\xf0\x9f", false },
	{ "\xc3\xa9\xa9", false },             /* one continuation too many */
	{ "0123456789abcdef\xc3", false },     /* after the 8-byte fast path */
	{ "0123456789abcdef\xc3\xa9xyz", true },
	{ "01234567\x80" "89abcdef", false },
	{ "0123456\xc3\xa9" "89abcdef", true }, /* a sequence across the 8-byte stride */
};

START_TEST(test_valid_cases)
{
	for (size_t i = 0; i < sizeof(utf8_cases) / sizeof(utf8_cases[0]); i++)
		ck_assert_msg(utf8_valid(utf8_cases[i].s, strlen(utf8_cases[i].s)) == utf8_cases[i].ok,
			      "case %zu", i);
	ck_assert(!utf8_valid("a\0\xff", 3));
	ck_assert(utf8_valid("a\0b", 3)); /* NUL is valid UTF-8; topics check it apart */
	ck_assert(utf8_valid(NULL, 0));
	/* The length given is the end: a valid sequence cut by it is not. */
	ck_assert(!utf8_valid("\xe2\x82\xac", 2));
	ck_assert(utf8_valid("\xe2\x82\xac", 0));
}
END_TEST

/* ---- utf8_seq_len: lengths and maximal subparts ------------------------- */

static const struct {
	const char *s;
	size_t n;     /* bytes available */
	size_t len;   /* expected result */
	size_t skip;  /* expected maximal subpart when len == 0 */
} seq_cases[] = {
	{ "A", 1, 1, 0 },
	{ "\xc3\xa9", 2, 2, 0 },
	{ "\xe2\x82\xac", 3, 3, 0 },
	{ "\xf4\x8f\xbf\xbf", 4, 4, 0 },
	{ "\xe2\x82\xac" "tail", 7, 3, 0 },  /* only the first sequence counts */
	{ "\xc3\xa9", 1, 0, 1 },             /* cut by n after the lead */
	{ "\xe2\x82\xac", 2, 0, 2 },         /* cut after one continuation */
	{ "\xf0\x9f\x98\x80", 3, 0, 3 },
	{ "\x80", 1, 0, 1 },
	{ "\xc0\xaf", 2, 0, 1 },             /* C0/C1 are never leads */
	{ "\xe0\x80\xaf", 3, 0, 1 },         /* overlong: the second byte is out of range */
	{ "\xed\xa0\x80", 3, 0, 1 },         /* surrogate: likewise */
	{ "\xf4\x90\x80\x80", 4, 0, 1 },     /* above U+10FFFF: likewise */
	{ "\xf5\x80\x80\x80", 4, 0, 1 },
	{ "\xe2\x82z", 3, 0, 2 },            /* E2 82 then a non-continuation */
	{ "\xf0\x9f\x98z", 4, 0, 3 },
};

START_TEST(test_seq_len)
{
	for (size_t i = 0; i < sizeof(seq_cases) / sizeof(seq_cases[0]); i++) {
		size_t skip = 99;
		size_t got = utf8_seq_len((const unsigned char *)seq_cases[i].s, seq_cases[i].n, &skip);

		ck_assert_msg(got == seq_cases[i].len, "case %zu: length %zu, want %zu", i, got,
			      seq_cases[i].len);
		if (got == 0)
			ck_assert_msg(skip == seq_cases[i].skip, "case %zu: skip %zu, want %zu", i,
				      skip, seq_cases[i].skip);
		else
			ck_assert_msg(skip == 99, "case %zu: skip written on success", i);
	}
	/* NULL skip is allowed. */
	ck_assert_uint_eq(utf8_seq_len((const unsigned char *)"\xff", 1, NULL), 0);
}
END_TEST

/*
** Against a decoder written the other way round (by bit patterns, then the
** code point's range): every two- and three-byte sequence, and every
** four-byte one over a spread of continuation bytes.
*/
static size_t reference_len(const unsigned char *p, size_t n)
{
	uint32_t cp;
	size_t need;

	if (p[0] < 0x80)
		return 1;
	if ((p[0] & 0xe0) == 0xc0) {
		need = 2;
		cp = p[0] & 0x1f;
	} else if ((p[0] & 0xf0) == 0xe0) {
		need = 3;
		cp = p[0] & 0x0f;
	} else if ((p[0] & 0xf8) == 0xf0) {
		need = 4;
		cp = p[0] & 0x07;
	} else {
		return 0;
	}
	if (n < need)
		return 0;
	for (size_t i = 1; i < need; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (p[i] & 0x3f);
	}
	if ((need == 2 && cp < 0x80) || (need == 3 && cp < 0x800) || (need == 4 && cp < 0x10000))
		return 0; /* overlong */
	if ((cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
		return 0;
	return need;
}

START_TEST(test_against_reference)
{
	static const unsigned char conts[] = { 0x00, 0x41, 0x7f, 0x80, 0x8f, 0x90,
					       0x9f, 0xa0, 0xbf, 0xc0, 0xff };
	unsigned char b[4] = { 0 };
	size_t checked = 0;

	for (unsigned a = 0; a < 256; a++) {
		/* Bytes that cannot matter for a lead stay 0; four-byte leads
		 * take every second byte and a spread of third and fourth. */
		size_t n3 = a >= 0xf0 ? sizeof(conts) : a >= 0xe0 ? 256 : 1;
		size_t n4 = a >= 0xf0 ? sizeof(conts) : 1;

		b[0] = (unsigned char)a;
		for (unsigned c = 0; c < 256; c++) {
			b[1] = (unsigned char)c;
			for (size_t i3 = 0; i3 < n3; i3++) {
				b[2] = a >= 0xf0 ? conts[i3] : (unsigned char)i3;
				for (size_t i4 = 0; i4 < n4; i4++) {
					b[3] = a >= 0xf0 ? conts[i4] : 0;
					for (size_t n = 1; n <= 4; n++) {
						size_t want = reference_len(b, n);
						size_t got = utf8_seq_len(b, n, NULL);

						if (got != want)
							ck_abort_msg("%02x %02x %02x %02x n=%zu: %zu, want %zu",
								     b[0], b[1], b[2], b[3], n, got, want);
						/* A buffer of exactly that sequence. */
						if (want && want == n)
							ck_assert(utf8_valid((const char *)b, n));
						checked++;
					}
				}
			}
		}
	}
	ck_assert_uint_gt(checked, 1000000);
}
END_TEST

static Suite *utf8_suite(void)
{
	Suite *s = suite_create("utf8");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, test_valid_cases);
	tcase_add_test(tc, test_seq_len);
	tcase_add_test(tc, test_against_reference);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(utf8_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
