/* SPDX-License-Identifier: MIT */
/* utf8.h: UTF-8 validation (RFC 3629): one sequence, or a whole buffer. */
#ifndef SM_UTF8_H
#define SM_UTF8_H

#include <stdbool.h>
#include <stddef.h>

/*
** The one definition of well-formed UTF-8 in the daemon (Unicode 15,
** table 3-7): no overlong forms, no surrogates (U+D800..U+DFFF), nothing
** above U+10FFFF. U+0000 is valid UTF-8: topics refuse it apart.
**
** utf8_seq_len: the length (1..4) of the well-formed sequence that starts
** at p, of which n >= 1 bytes are available; 0 when it is ill-formed or
** cut short by n. Then *ret_skip (may be NULL) holds the length (1..3) of
** its maximal ill-formed subpart, which becomes one U+FFFD under Unicode's
** "substitution of maximal subparts" (buf_json_str). Inline: the JSON
** scanner calls it for every non-ASCII character on the ingest path.
*/
static inline size_t utf8_seq_len(const unsigned char *p, size_t n, size_t *ret_skip)
{
	unsigned char c = p[0], lo = 0x80, hi = 0xbf;
	size_t need;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf) {
		need = 1;
	} else if (c >= 0xe0 && c <= 0xef) {
		need = 2;
		if (c == 0xe0)
			lo = 0xa0;  /* no overlongs */
		else if (c == 0xed)
			hi = 0x9f;  /* no surrogates */
	} else if (c >= 0xf0 && c <= 0xf4) {
		need = 3;
		if (c == 0xf0)
			lo = 0x90;  /* no overlongs */
		else if (c == 0xf4)
			hi = 0x8f;  /* <= U+10FFFF */
	} else {
		if (ret_skip)
			*ret_skip = 1;
		return 0;
	}
	for (size_t i = 1; i <= need; i++) {
		if (i >= n || p[i] < lo || p[i] > hi) {
			if (ret_skip)
				*ret_skip = i;
			return 0;
		}
		lo = 0x80;
		hi = 0xbf;
	}
	return need + 1;
}

/* Is buf[0..len) well-formed UTF-8? ASCII runs are checked eight bytes at
 * a time. Safe on any bytes; buf may be NULL when len is 0. */
bool utf8_valid(const char *buf, size_t len);

#endif
