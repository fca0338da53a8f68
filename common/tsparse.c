/* SPDX-License-Identifier: MIT */
/* tsparse.c: epoch numbers and RFC 3339 date-times decoded into epoch nanoseconds. */
#include "common/tsparse.h"

#include <errno.h>
#include <string.h>

static inline bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* ---- epoch numbers ------------------------------------------------------ */

/*
** The number is kept as its digit string S = integer digits ++ fraction
** digits and the position of the decimal point in S (moved by the exponent),
** so any precision the text carries is honoured without floating point.
*/
struct decnum {
	const char *ip;  /* integer digits */
	size_t nip;
	const char *fp;  /* fraction digits */
	size_t nfp;
	int64_t point;   /* decimal point position in S */
};

static inline int decnum_digit(const struct decnum *d, int64_t j)
{
	if (j < 0)
		return 0;
	if ((size_t)j < d->nip)
		return d->ip[j] - '0';
	if ((size_t)j - d->nip < d->nfp)
		return d->fp[(size_t)j - d->nip] - '0';
	return 0;
}

int ts_parse_epoch(const char *s, size_t len, int64_t *ret_ns)
{
	const char *p = s, *end = s + len;
	struct decnum d = { 0 };
	int64_t exp = 0, z, ipd, last, v = 0;
	int k;

	if (!s || len == 0)
		return -EINVAL;
	/* The common case, an integer of at most 18 digits (epoch s, ms, us
	 * or ns): no fraction, no exponent, so no digit string to walk. */
	if (len <= 18 && s[0] != '0') {
		uint64_t u = 0;
		size_t i;

		for (i = 0; i < len && is_digit(s[i]); i++)
			u = u * 10 + (uint64_t)(s[i] - '0');
		if (i == len) {
			static const int64_t scale[19] = {
				0, 1000000000, 1000000000, 1000000000, 1000000000, 1000000000,
				1000000000, 1000000000, 1000000000, 1000000000, 1000000000,
				1000000000, 1000000, 1000000, 1000000, 1000, 1000, 1000, 1,
			};
			int64_t ns;

			if (__builtin_mul_overflow((int64_t)u, scale[len], &ns))
				return -EINVAL;
			*ret_ns = ns;
			return 0;
		}
	}
	d.ip = p;
	while (p < end && is_digit(*p))
		p++;
	d.nip = (size_t)(p - d.ip);
	if (p < end && *p == '.') {
		p++;
		d.fp = p;
		while (p < end && is_digit(*p))
			p++;
		d.nfp = (size_t)(p - d.fp);
		if (d.nfp == 0)
			return -EINVAL;
	}
	if (d.nip == 0)
		return -EINVAL;
	if (p < end && (*p == 'e' || *p == 'E')) {
		bool neg = false;
		const char *e0;

		p++;
		if (p < end && (*p == '+' || *p == '-'))
			neg = *p++ == '-';
		e0 = p;
		while (p < end && is_digit(*p)) {
			if (exp < 100000)  /* far beyond any int64; keeps exp bounded */
				exp = exp * 10 + (*p - '0');
			p++;
		}
		if (p == e0)
			return -EINVAL;
		if (neg)
			exp = -exp;
	}
	if (p != end)
		return -EINVAL;

	int64_t nd = (int64_t)(d.nip + d.nfp);
	d.point = (int64_t)d.nip + exp;
	for (z = 0; z < nd && decnum_digit(&d, z) == 0; z++)
		;
	if (z == nd) {
		*ret_ns = 0;
		return 0;
	}
	/* The unit by the magnitude of the integer part (its digit count). */
	ipd = d.point - z;
	if (ipd <= 11)
		k = 9;      /* seconds */
	else if (ipd <= 14)
		k = 6;      /* milliseconds */
	else if (ipd <= 17)
		k = 3;      /* microseconds */
	else
		k = 0;      /* nanoseconds */
	last = d.point + k; /* digits [z, last) form the integer nanoseconds */
	if (last - z > 19)
		return -EINVAL;
	for (int64_t j = z; j < last; j++) {
		if (__builtin_mul_overflow(v, 10, &v) ||
		    __builtin_add_overflow(v, decnum_digit(&d, j), &v))
			return -EINVAL;
	}
	*ret_ns = v;
	return 0;
}

/* ---- RFC 3339 ----------------------------------------------------------- */

/* Days from 1970-01-01 to y-m-d (proleptic Gregorian, Howard Hinnant). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
	y -= m <= 2;
	int64_t era = (y >= 0 ? y : y - 399) / 400;
	unsigned yoe = (unsigned)(y - era * 400);
	unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
	unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;

	return era * 146097 + (int64_t)doe - 719468;
}

static bool fixed_num(const char *p, size_t n, unsigned *ret)
{
	unsigned v = 0;

	for (size_t i = 0; i < n; i++) {
		if (!is_digit(p[i]))
			return false;
		v = v * 10 + (unsigned)(p[i] - '0');
	}
	*ret = v;
	return true;
}

int ts_parse_rfc3339(const char *s, size_t len, int64_t *ret_ns)
{
	static const unsigned char mdays[12] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
	unsigned y, mo, d, h, mi, se, oh = 0, om = 0;
	int64_t frac = 0, secs, off = 0, ns;
	const char *p, *end = s + len;
	bool leap;

	/* "YYYY-MM-DDTHH:MM:SS" is 19 bytes, then ".frac" and "Z" or "+HH:MM". */
	if (!s || len < 20)
		return -EINVAL;
	if (!fixed_num(s, 4, &y) || s[4] != '-' || !fixed_num(s + 5, 2, &mo) || s[7] != '-' ||
	    !fixed_num(s + 8, 2, &d) || (s[10] != 'T' && s[10] != 't' && s[10] != ' ') ||
	    !fixed_num(s + 11, 2, &h) || s[13] != ':' || !fixed_num(s + 14, 2, &mi) ||
	    s[16] != ':' || !fixed_num(s + 17, 2, &se))
		return -EINVAL;
	leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
	if (mo < 1 || mo > 12 || d < 1 || d > (unsigned)mdays[mo - 1] + (mo == 2 && leap) || h > 23 ||
	    mi > 59 || se > 60)
		return -EINVAL;
	p = s + 19;
	if (*p == '.') {
		const char *f0 = ++p;
		int64_t scale = 100000000;

		while (p < end && is_digit(*p)) {
			frac += (*p - '0') * scale; /* digits past the 9th are dropped */
			scale /= 10;
			p++;
		}
		if (p == f0)
			return -EINVAL;
	}
	if (p >= end)
		return -EINVAL;
	if (*p == 'Z' || *p == 'z') {
		p++;
	} else if (*p == '+' || *p == '-') {
		if (end - p < 6 || !fixed_num(p + 1, 2, &oh) || p[3] != ':' ||
		    !fixed_num(p + 4, 2, &om) || oh > 23 || om > 59)
			return -EINVAL;
		off = ((int64_t)oh * 60 + om) * 60;
		if (*p == '-')
			off = -off;
		p += 6;
	} else {
		return -EINVAL;
	}
	if (p != end)
		return -EINVAL;
	/* A leap second (":60", only where a minute ends) is clamped to the last
	 * nanosecond of that minute: POSIX time cannot name it, and clamping keeps
	 * it ordered before the next second. */
	if (se == 60) {
		if (mi != 59)
			return -EINVAL;
		se = 59;
		frac = 999999999;
	}
	secs = days_from_civil(y, mo, d) * 86400 + (int64_t)h * 3600 + mi * 60 + se - off;
	if (secs < 0 || __builtin_mul_overflow(secs, 1000000000, &ns) ||
	    __builtin_add_overflow(ns, frac, &ns))
		return -EINVAL;
	*ret_ns = ns;
	return 0;
}
