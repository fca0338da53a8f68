/* SPDX-License-Identifier: MIT */
/* jscan.c: the one-pass JSON scanner: validity and the timestamp member, in place. */
#include "mirror/ingest/jscan.h"

#include <string.h>

#include "common/tsparse.h"
#include "common/utf8.h"

static inline bool is_digit(char c)
{
	return c >= '0' && c <= '9';
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
	/* bit d-1: the container at depth d is an object */
	/* A word is cleared when the scan first reaches its depths (64 at a
	 * time), not up front: most payloads never leave the first. */
	uint64_t is_obj[JSCAN_MAX_DEPTH / 64];
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
			goto too_deep;
		if (depth % 64 == 0)
			is_obj[depth / 64] = 0;
		is_obj[depth / 64] |= UINT64_C(1) << (depth % 64);
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
			goto too_deep;
		if (depth % 64 == 0)
			is_obj[depth / 64] = 0;
		is_obj[depth / 64] &= ~(UINT64_C(1) << (depth % 64));
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
	if (depth == 1 && pending < best && (is_obj[0] & 1)) {
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
		if (is_obj[(depth - 1) / 64] & (UINT64_C(1) << ((depth - 1) % 64)))
			goto member;
		goto value;
	}
	if (*p == (is_obj[(depth - 1) / 64] & (UINT64_C(1) << ((depth - 1) % 64)) ? '}' : ']')) {
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
	return;
too_deep:
	memset(ret, 0, sizeof(*ret));
	ret->too_deep = true;
}
