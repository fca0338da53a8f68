/* SPDX-License-Identifier: MIT */
/* pathdec.c: strict percent-decoding and query-string parsing for the HTTP API. */
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
