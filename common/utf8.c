/* SPDX-License-Identifier: MIT */
/* utf8.c: whole-buffer UTF-8 validation on top of utf8_seq_len (utf8.h). */
#include "common/utf8.h"

#include <stdint.h>
#include <string.h>

bool utf8_valid(const char *buf, size_t len)
{
	const unsigned char *p, *end;

	if (len == 0)
		return true;
	p = (const unsigned char *)buf;
	end = p + len;
	while (p < end) {
		/* ASCII runs eight bytes at a time. */
		while (end - p >= 8) {
			uint64_t w;

			memcpy(&w, p, 8);
			if (w & 0x8080808080808080ULL)
				break;
			p += 8;
		}
		while (p < end && *p < 0x80)
			p++;
		if (p == end)
			break;
		size_t n = utf8_seq_len(p, (size_t)(end - p), NULL);
		if (!n)
			return false;
		p += n;
	}
	return true;
}
