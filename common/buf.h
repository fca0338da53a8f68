/* SPDX-License-Identifier: MIT */
/* buf.h: a growable byte buffer with a hard size limit (curl's dynbuf). */
#ifndef SM_BUF_H
#define SM_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct buf {
	char *data;     /* owned; always NUL-terminated when non-NULL */
	size_t len;
	size_t cap;
	size_t max;     /* appending past this fails with -E2BIG */
};

/* max 0 means no limit (a zeroed struct buf is a valid, unlimited empty buffer). */
void buf_init(struct buf *b, size_t max);
void buf_free(struct buf *b);        /* accepts a zeroed struct */
void buf_reset(struct buf *b);       /* len = 0, keeps memory */
/* Each returns 0, -ENOMEM or -E2BIG (the limit); on error b is unchanged. */

/* The slow path of buf_reserve: grows the buffer (or says why not). */
int buf_grow(struct buf *b, size_t n);

/*
** Room for n more bytes (and the NUL) at once: a writer that knows about
** how much it will write saves the doublings. 0, -E2BIG or -ENOMEM.
** Inline, with buf_append and buf_putc, because renderers call them a few
** times per field: the capacity never exceeds max + 1, so fitting in it
** is also within the limit.
*/
static inline int buf_reserve(struct buf *b, size_t n)
{
	return n < b->cap - b->len ? 0 : buf_grow(b, n);
}

static inline int buf_append(struct buf *b, const void *p, size_t n)
{
	int r = buf_reserve(b, n);

	if (r < 0)
		return r;
	if (n)
		__builtin_memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = '\0';
	return 0;
}

static inline int buf_putc(struct buf *b, char c)
{
	int r = buf_reserve(b, 1);

	if (r < 0)
		return r;
	b->data[b->len++] = c;
	b->data[b->len] = '\0';
	return 0;
}

int buf_puts(struct buf *b, const char *s);
int buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s as a JSON string literal with quotes; invalid UTF-8 bytes are
 * written as U+FFFD so the output is always valid JSON. */
int buf_json_str(struct buf *b, const char *s, size_t n);
/* Appends base64 (RFC 4648, padded). */
int buf_base64(struct buf *b, const void *p, size_t n);
/* Detaches the data: the caller owns it (free()); b is reset to empty. Never
 * NULL for an empty buffer (an allocated ""), NULL only if that malloc fails. */
char *buf_steal(struct buf *b, size_t *ret_len);

#endif
