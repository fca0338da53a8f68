/* SPDX-License-Identifier: MIT */
/* pathdec.c: strict percent-decoding, query-string parsing and typed query parameters for the HTTP API. */
#include "api/pathdec.h"

#include <errno.h>
#include <string.h>

static int hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int pathdec_decode(const char *in, size_t n, char *out, size_t *ret_len)
{
	const char *pct;
	size_t i = 0, o = 0;

	if (n > PATHDEC_MAX_LEN)
		return -E2BIG;
	while (i < n) {
		size_t run;
		int hi, lo;

		/* Copy the run up to the next '%' in one go (memmove: out may be in). */
		pct = memchr(in + i, '%', n - i);
		run = pct ? (size_t)(pct - (in + i)) : n - i;
		if (run && out + o != in + i)
			memmove(out + o, in + i, run);
		o += run;
		i += run;
		if (i == n)
			break;
		if (n - i < 3)
			return -EINVAL;
		hi = hexval((unsigned char)in[i + 1]);
		lo = hexval((unsigned char)in[i + 2]);
		if (hi < 0 || lo < 0)
			return -EINVAL;
		out[o++] = (char)(hi << 4 | lo);
		i += 3;
	}
	*ret_len = o;
	return 0;
}

int pathdec_query(char *q, size_t n, struct pathdec_param *params, size_t max, size_t *ret_n)
{
	size_t count = 0, pos = 0;
	int r;

	if (n > PATHDEC_MAX_LEN)
		return -E2BIG;
	while (pos < n) {
		char *seg = q + pos, *amp, *eq;
		size_t seg_len, klen, vlen;
		struct pathdec_param *p;

		amp = memchr(seg, '&', n - pos);
		seg_len = amp ? (size_t)(amp - seg) : n - pos;
		pos += seg_len + (amp ? 1 : 0);
		if (seg_len == 0)
			continue;
		if (count == max)
			return -E2BIG;
		p = &params[count];
		eq = memchr(seg, '=', seg_len);
		klen = eq ? (size_t)(eq - seg) : seg_len;
		if ((r = pathdec_decode(seg, klen, seg, &p->key_len)) < 0)
			return r;
		p->key = seg;
		if (eq) {
			vlen = seg_len - klen - 1;
			if ((r = pathdec_decode(eq + 1, vlen, eq + 1, &p->val_len)) < 0)
				return r;
			p->val = eq + 1;
			p->val[p->val_len] = '\0';
		} else {
			/* The key's own terminator doubles as the empty value. */
			p->val_len = 0;
			p->val = seg + p->key_len;
		}
		/* Decoding only shrinks, so the terminator lands on '=', '&', a
		 * decoded-away byte or q[n]. */
		p->key[p->key_len] = '\0';
		count++;
	}
	*ret_n = count;
	return 0;
}

int pathdec_get(const struct pathdec_param *params, size_t n, const char *key,
		const struct pathdec_param **ret)
{
	const struct pathdec_param *found = NULL;
	size_t klen = strlen(key);

	for (size_t i = 0; i < n; i++) {
		if (params[i].key_len != klen || memcmp(params[i].key, key, klen) != 0)
			continue;
		if (found)
			return -EINVAL;
		found = &params[i];
	}
	if (!found)
		return -ENOENT;
	*ret = found;
	return 0;
}

const char *pathdec_query_reason(int err)
{
	return err == -E2BIG ? "too many query parameters" : "bad percent-encoding in the query";
}

int pathdec_parse_uint(const char *s, size_t n, uint64_t max, uint64_t *ret)
{
	uint64_t v = 0;

	if (n == 0)
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		unsigned d = (unsigned char)s[i] - '0';

		if (d > 9 || d > max || v > (max - d) / 10)
			return -EINVAL;
		v = v * 10 + d;
	}
	*ret = v;
	return 0;
}

/* Look key up: 1 with *ret when given once, 0 when absent, -EINVAL twice. */
static int lookup(const struct pathdec_param *params, size_t n, const char *key,
		  const struct pathdec_param **ret)
{
	int r = pathdec_get(params, n, key, ret);

	if (r == -ENOENT)
		return 0;
	return r < 0 ? r : 1;
}

int pathdec_bool(const struct pathdec_param *params, size_t n, const char *key, int *ret)
{
	const struct pathdec_param *v;
	int r = lookup(params, n, key, &v);

	if (r <= 0)
		return r;
	if (v->val_len == 4 && memcmp(v->val, "true", 4) == 0)
		*ret = 1;
	else if (v->val_len == 5 && memcmp(v->val, "false", 5) == 0)
		*ret = 0;
	else
		return -EINVAL;
	return 0;
}

int pathdec_uint(const struct pathdec_param *params, size_t n, const char *key, uint64_t lo,
		 uint64_t hi, uint64_t *ret)
{
	const struct pathdec_param *v;
	uint64_t x;
	int r = lookup(params, n, key, &v);

	if (r <= 0)
		return r;
	if (pathdec_parse_uint(v->val, v->val_len, hi, &x) < 0 || x < lo)
		return -EINVAL;
	*ret = x;
	return 0;
}

int pathdec_str(const struct pathdec_param *params, size_t n, const char *key,
		const struct pathdec_param **ret)
{
	const struct pathdec_param *v;
	int r = lookup(params, n, key, &v);

	if (r <= 0)
		return r;
	if (memchr(v->val, '\0', v->val_len))
		return -EINVAL;
	*ret = v;
	return 0;
}
