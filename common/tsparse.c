/* SPDX-License-Identifier: MIT */
/* tsparse.c: epoch and RFC 3339 timestamps, a one-pass JSON scanner. */
#include "common/tsparse.h"

#include <errno.h>
#include <string.h>

#include "common/utf8.h"

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

/* ---- the JSON scanner --------------------------------------------------- */

/* Character classes for string bodies: 0 = plain ASCII, else look closer. */
static const unsigned char str_class[256] = {
	1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
	1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
	0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* '"' */
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, /* '\\' */
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
	1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
	1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
	1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
	1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
	1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
	1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
	1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
	1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
};

static inline int hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c |= 0x20;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

static inline int read_hex4(const unsigned char *p, const unsigned char *end, unsigned *ret)
{
	unsigned v = 0;

	if (end - p < 4)
		return -1;
	for (int i = 0; i < 4; i++) {
		int h = hexval(p[i]);
		if (h < 0)
			return -1;
		v = v << 4 | (unsigned)h;
	}
	*ret = v;
	return 0;
}

/*
** Decode one escape at p (just after the backslash) into a code point.
** Returns the bytes consumed or 0 if the escape is invalid (a lone or
** reversed surrogate included, as jansson and most decoders reject them).
*/
static size_t json_escape(const unsigned char *p, const unsigned char *end, unsigned *ret_cp)
{
	unsigned cp, lo;

	if (p >= end)
		return 0;
	switch (*p) {
	case '"': *ret_cp = '"'; return 1;
	case '\\': *ret_cp = '\\'; return 1;
	case '/': *ret_cp = '/'; return 1;
	case 'b': *ret_cp = '\b'; return 1;
	case 'f': *ret_cp = '\f'; return 1;
	case 'n': *ret_cp = '\n'; return 1;
	case 'r': *ret_cp = '\r'; return 1;
	case 't': *ret_cp = '\t'; return 1;
	case 'u':
		if (read_hex4(p + 1, end, &cp) < 0)
			return 0;
		if (cp >= 0xdc00 && cp <= 0xdfff)
			return 0;
		if (cp < 0xd800 || cp > 0xdbff) {
			*ret_cp = cp;
			return 5;
		}
		if (end - p < 11 || p[5] != '\\' || p[6] != 'u' || read_hex4(p + 7, end, &lo) < 0 ||
		    lo < 0xdc00 || lo > 0xdfff)
			return 0;
		*ret_cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
		return 11;
	default:
		return 0;
	}
}

/*
** Scan a string body starting after the opening quote. Returns the pointer
** past the closing quote, or NULL if invalid. *ret_esc tells whether the
** raw body held an escape (then it is not its own decoded value).
*/
static const unsigned char *scan_string(const unsigned char *p, const unsigned char *end,
					bool *ret_esc)
{
	bool esc = false;

	for (;;) {
		while (end - p >= 4 && !str_class[p[0]] && !str_class[p[1]] && !str_class[p[2]] &&
		       !str_class[p[3]])
			p += 4;
		while (p < end && !str_class[*p])
			p++;
		if (p >= end)
			return NULL;
		unsigned char c = *p;
		if (c == '"') {
			*ret_esc = esc;
			return p + 1;
		}
		if (c == '\\') {
			unsigned cp;
			size_t n = json_escape(p + 1, end, &cp);
			if (!n)
				return NULL;
			esc = true;
			p += 1 + n;
		} else if (c < 0x20) {
			return NULL;
		} else {
			size_t n = utf8_seq_len(p, (size_t)(end - p), NULL);
			if (!n)
				return NULL;
			p += n;
		}
	}
}

/* Does the raw (escaped, valid) key body [p, end) decode to name? */
static bool key_equals_escaped(const unsigned char *p, const unsigned char *end, const char *name,
			       size_t nlen)
{
	const unsigned char *q = (const unsigned char *)name, *qend = q + nlen;

	while (p < end) {
		if (*p != '\\') {
			if (q >= qend || *q != *p)
				return false;
			p++;
			q++;
			continue;
		}
		unsigned cp;
		unsigned char u[4];
		size_t n = json_escape(p + 1, end, &cp), ul;
		p += 1 + n;
		if (cp < 0x80) {
			u[0] = (unsigned char)cp;
			ul = 1;
		} else if (cp < 0x800) {
			u[0] = (unsigned char)(0xc0 | cp >> 6);
			u[1] = (unsigned char)(0x80 | (cp & 0x3f));
			ul = 2;
		} else if (cp < 0x10000) {
			u[0] = (unsigned char)(0xe0 | cp >> 12);
			u[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
			u[2] = (unsigned char)(0x80 | (cp & 0x3f));
			ul = 3;
		} else {
			u[0] = (unsigned char)(0xf0 | cp >> 18);
			u[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
			u[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
			u[3] = (unsigned char)(0x80 | (cp & 0x3f));
			ul = 4;
		}
		if ((size_t)(qend - q) < ul || memcmp(q, u, ul) != 0)
			return false;
		q += ul;
	}
	return q == qend;
}

/* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? ; NULL if invalid. */
static const unsigned char *scan_number(const unsigned char *p, const unsigned char *end)
{
	if (p < end && *p == '-')
		p++;
	if (p >= end)
		return NULL;
	if (*p == '0') {
		p++;
	} else if (*p >= '1' && *p <= '9') {
		while (p < end && is_digit((char)*p))
			p++;
	} else {
		return NULL;
	}
	if (p < end && *p == '.') {
		const unsigned char *f = ++p;
		while (p < end && is_digit((char)*p))
			p++;
		if (p == f)
			return NULL;
	}
	if (p < end && (*p == 'e' || *p == 'E')) {
		p++;
		if (p < end && (*p == '+' || *p == '-'))
			p++;
		const unsigned char *e = p;
		while (p < end && is_digit((char)*p))
			p++;
		if (p == e)
			return NULL;
	}
	return p;
}

static inline const unsigned char *skip_ws(const unsigned char *p, const unsigned char *end)
{
	while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
		p++;
	return p;
}

enum jval { JV_NONE, JV_STRING, JV_NUMBER, JV_NULL, JV_OTHER };

#define JSCAN_NAMES_CACHED 8

void jscan_payload(const char *payload, size_t len, const char *const *names, size_t nnames,
		   struct jscan_result *ret)
{
	const unsigned char *p = (const unsigned char *)payload, *end = p + len;
	const unsigned char *vstart = NULL, *best_start = NULL, *best_end = NULL;
	size_t nlen[JSCAN_NAMES_CACHED];
	size_t best = nnames, pending = nnames;
	enum jval pending_kind = JV_NONE, best_kind = JV_NONE;
	uint64_t is_obj = 0; /* bit d-1: the container at depth d is an object */
	unsigned depth = 0;
	bool esc;

	memset(ret, 0, sizeof(*ret));
	for (size_t i = 0; i < nnames && i < JSCAN_NAMES_CACHED; i++)
		nlen[i] = strlen(names[i]);
	if (!payload)
		return;
	p = skip_ws(p, end);

value:
	if (p >= end)
		return;
	vstart = p;
	switch (*p) {
	case '{':
		if (depth >= JSCAN_MAX_DEPTH)
			return;
		is_obj |= UINT64_C(1) << depth;
		depth++;
		pending_kind = JV_OTHER;
		p = skip_ws(p + 1, end);
		if (p < end && *p == '}') {
			p++;
			depth--;
			goto after_value;
		}
		goto member;
	case '[':
		if (depth >= JSCAN_MAX_DEPTH)
			return;
		is_obj &= ~(UINT64_C(1) << depth);
		depth++;
		pending_kind = JV_OTHER;
		p = skip_ws(p + 1, end);
		if (p < end && *p == ']') {
			p++;
			depth--;
			goto after_value;
		}
		goto value;
	case '"':
		p = scan_string(p + 1, end, &esc);
		if (!p)
			return;
		pending_kind = esc ? JV_OTHER : JV_STRING;
		goto after_value;
	case 't':
		if (end - p < 4 || memcmp(p, "true", 4) != 0)
			return;
		p += 4;
		pending_kind = JV_OTHER;
		goto after_value;
	case 'f':
		if (end - p < 5 || memcmp(p, "false", 5) != 0)
			return;
		p += 5;
		pending_kind = JV_OTHER;
		goto after_value;
	case 'n':
		if (end - p < 4 || memcmp(p, "null", 4) != 0)
			return;
		p += 4;
		pending_kind = JV_NULL;
		goto after_value;
	default:
		p = scan_number(p, end);
		if (!p)
			return;
		pending_kind = JV_NUMBER;
		goto after_value;
	}

member:
	/* At a member name inside an object, whitespace skipped. */
	if (p >= end || *p != '"')
		return;
	{
		const unsigned char *k0 = p + 1;
		p = scan_string(k0, end, &esc);
		if (!p)
			return;
		if (depth == 1) {
			const unsigned char *k1 = p - 1;
			size_t klen = (size_t)(k1 - k0);
			pending = nnames;
			for (size_t i = 0; i < best; i++) {
				size_t nl = i < JSCAN_NAMES_CACHED ? nlen[i] : strlen(names[i]);
				if (esc ? key_equals_escaped(k0, k1, names[i], nl)
					: nl == klen && memcmp(k0, names[i], nl) == 0) {
					pending = i;
					break;
				}
			}
		}
	}
	p = skip_ws(p, end);
	if (p >= end || *p != ':')
		return;
	p = skip_ws(p + 1, end);
	goto value;

after_value:
	/* A member value of the top-level object just ended: [vstart, p) unless
	 * it was a container, whose start we only need to know it is not a
	 * timestamp. A null is no timestamp at all: try the next name. */
	if (depth == 1 && pending < best && (is_obj & 1)) {
		if (pending_kind != JV_NULL) {
			best = pending;
			best_kind = pending_kind;
			best_start = vstart;
			best_end = p;
		}
		pending = nnames;
	}
	if (depth == 0) {
		p = skip_ws(p, end);
		if (p != end)
			return;
		goto done;
	}
	p = skip_ws(p, end);
	if (p >= end)
		return;
	if (*p == ',') {
		p = skip_ws(p + 1, end);
		if (is_obj & (UINT64_C(1) << (depth - 1)))
			goto member;
		goto value;
	}
	if (*p == (is_obj & (UINT64_C(1) << (depth - 1)) ? '}' : ']')) {
		p++;
		depth--;
		pending_kind = JV_OTHER;
		goto after_value;
	}
	return;

done:
	ret->is_json = true;
	if (best == nnames)
		return;
	ret->ts_found = true;
	switch (best_kind) {
	case JV_NUMBER:
		if (ts_parse_epoch((const char *)best_start, (size_t)(best_end - best_start),
				   &ret->ts_ns) == 0)
			return;
		break;
	case JV_STRING: {
		const char *s = (const char *)best_start + 1;
		size_t n = (size_t)(best_end - best_start) - 2;
		if (ts_parse_rfc3339(s, n, &ret->ts_ns) == 0 || ts_parse_epoch(s, n, &ret->ts_ns) == 0)
			return;
		break;
	}
	default:
		break;
	}
	ret->ts_found = false;
	ret->ts_bad = true;
	ret->ts_ns = 0;
}
