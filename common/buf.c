/* SPDX-License-Identifier: MIT */
/* buf.c: a growable, size-limited byte buffer with JSON and base64 writers. */
#include "common/buf.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/utf8.h"

void buf_init(struct buf *b, size_t max)
{
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
	b->max = max ? max : SIZE_MAX - 1;
}

void buf_free(struct buf *b)
{
	if (!b)
		return;
	free(b->data);
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
}

void buf_reset(struct buf *b)
{
	b->len = 0;
	if (b->data)
		b->data[0] = '\0';
}

int buf_grow(struct buf *b, size_t n)
{
	size_t max = b->max ? b->max : SIZE_MAX - 1;
	size_t need, cap;
	char *p;

	if (n > max || b->len > max - n)
		return -E2BIG;
	need = b->len + n + 1;
	if (need <= b->cap)
		return 0;
	cap = b->cap ? b->cap : 64;
	while (cap < need)
		cap = cap > SIZE_MAX / 2 ? need : cap * 2;
	if (cap > max + 1)
		cap = max + 1;
	p = realloc(b->data, cap);
	if (!p)
		return -ENOMEM;
	b->data = p;
	b->cap = cap;
	return 0;
}

int buf_puts(struct buf *b, const char *s)
{
	return buf_append(b, s, strlen(s));
}

int buf_printf(struct buf *b, const char *fmt, ...)
{
	va_list ap;
	size_t avail;
	int n, r;

	/* Try in the space we have first; most calls fit. */
	if ((r = buf_reserve(b, 0)) < 0)
		return r;
	avail = b->cap - b->len;
	va_start(ap, fmt);
	n = vsnprintf(b->data + b->len, avail, fmt, ap);
	va_end(ap);
	if (n < 0)
		goto fail_fmt;
	if ((size_t)n >= avail) {
		if ((r = buf_reserve(b, (size_t)n)) < 0) {
			b->data[b->len] = '\0';
			return r;
		}
		va_start(ap, fmt);
		n = vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
		va_end(ap);
		if (n < 0)
			goto fail_fmt;
	}
	if ((size_t)n > (b->max ? b->max : SIZE_MAX - 1) - b->len) {
		b->data[b->len] = '\0';
		return -E2BIG;
	}
	b->len += (size_t)n;
	return 0;

fail_fmt:
	b->data[b->len] = '\0';
	return -EINVAL;
}

/* Bytes that need attention in a JSON string: controls, '"', '\\', DEL and
 * non-ASCII (checked as UTF-8). A table: topics are scanned a byte at a time. */
#define R16(v) v, v, v, v, v, v, v, v, v, v, v, v, v, v, v, v
static const unsigned char json_special_tab[256] = {
	R16(1), R16(1),                                   /* 0x00-0x1f */
	0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,   /* 0x20-0x2f: '"' */
	R16(0), R16(0),                                   /* 0x30-0x4f */
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,   /* 0x50-0x5f: '\\' */
	R16(0),                                           /* 0x60-0x6f */
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,   /* 0x70-0x7f: DEL */
	R16(1), R16(1), R16(1), R16(1), R16(1), R16(1), R16(1), R16(1),
};
#undef R16

static inline int json_special(unsigned char c)
{
	return json_special_tab[c];
}

int buf_json_str(struct buf *b, const char *s, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *p = (const unsigned char *)s;
	size_t old = b->len, i = 0, run;
	int r;

	/* Common case: short ASCII; reserve once for the unescaped size. */
	if ((r = buf_reserve(b, n + 2)) < 0)
		return r;
	b->data[b->len++] = '"';
	while (i < n) {
		run = i;
		while (run < n && !json_special(p[run]))
			run++;
		if (run > i) {
			if ((r = buf_append(b, p + i, run - i)) < 0)
				goto fail;
			i = run;
			if (i == n)
				break;
		}
		unsigned char c = p[i];
		char esc[6];
		size_t elen = 2, seq, skip = 1;

		esc[0] = '\\';
		switch (c) {
		case '"': esc[1] = '"'; break;
		case '\\': esc[1] = '\\'; break;
		case '\b': esc[1] = 'b'; break;
		case '\f': esc[1] = 'f'; break;
		case '\n': esc[1] = 'n'; break;
		case '\r': esc[1] = 'r'; break;
		case '\t': esc[1] = 't'; break;
		default:
			if (c < 0x20 || c == 0x7f) {
				esc[1] = 'u';
				esc[2] = '0';
				esc[3] = '0';
				esc[4] = hex[c >> 4];
				esc[5] = hex[c & 15];
				elen = 6;
				break;
			}
			seq = utf8_seq_len(p + i, n - i, &skip);
			if (seq) {
				r = buf_append(b, p + i, seq);
				i += seq;
			} else {
				r = buf_append(b, "\xef\xbf\xbd", 3);
				i += skip;
			}
			if (r < 0)
				goto fail;
			continue;
		}
		if ((r = buf_append(b, esc, elen)) < 0)
			goto fail;
		i++;
	}
	if ((r = buf_putc(b, '"')) < 0)
		goto fail;
	return 0;

fail:
	b->len = old;
	b->data[old] = '\0';
	return r;
}

int buf_base64(struct buf *b, const void *p, size_t n)
{
	static const char tbl[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	const unsigned char *s = p;
	size_t out, i;
	char *d;
	int r;

	if (n > (SIZE_MAX / 4) * 3 - 3)
		return -E2BIG;
	out = (n + 2) / 3 * 4;
	if ((r = buf_reserve(b, out)) < 0)
		return r;
	d = b->data + b->len;
	for (i = 0; i + 3 <= n; i += 3) {
		uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
		*d++ = tbl[v >> 18];
		*d++ = tbl[(v >> 12) & 63];
		*d++ = tbl[(v >> 6) & 63];
		*d++ = tbl[v & 63];
	}
	if (i < n) {
		uint32_t v = (uint32_t)s[i] << 16;
		if (i + 1 < n)
			v |= (uint32_t)s[i + 1] << 8;
		*d++ = tbl[v >> 18];
		*d++ = tbl[(v >> 12) & 63];
		*d++ = i + 1 < n ? tbl[(v >> 6) & 63] : '=';
		*d++ = '=';
	}
	b->len += out;
	b->data[b->len] = '\0';
	return 0;
}

char *buf_steal(struct buf *b, size_t *ret_len)
{
	char *p = b->data;
	size_t len = b->len;

	if (!p) {
		p = malloc(1);
		if (!p)
			return NULL;
		p[0] = '\0';
	}
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
	if (ret_len)
		*ret_len = len;
	return p;
}
