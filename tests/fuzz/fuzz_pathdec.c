/* SPDX-License-Identifier: MIT */
/* fuzz_pathdec.c: libFuzzer target for request-path decoding and query parsing. */
#include <assert.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/pathdec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

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

/* The specification, written the slow and obvious way. */
static int ref_decode(const char *in, size_t n, char *out, size_t *ret_len)
{
	size_t k = 0;

	for (size_t i = 0; i < n; i++) {
		if (in[i] != '%') {
			out[k++] = in[i];
			continue;
		}
		if (i + 2 >= n || hexval((unsigned char)in[i + 1]) < 0 ||
		    hexval((unsigned char)in[i + 2]) < 0)
			return -EINVAL;
		out[k++] = (char)(hexval((unsigned char)in[i + 1]) * 16 +
				  hexval((unsigned char)in[i + 2]));
		i += 2;
	}
	*ret_len = k;
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *in = (const char *)data;
	char *a = malloc(size + 1), *b = malloc(size + 1), *q = malloc(size + 1);
	struct pathdec_param params[PATHDEC_MAX_PARAMS];
	const struct pathdec_param *p;
	size_t la = 0, lb = 0, np = 0;
	int ra, rb, rq;

	if (!a || !b || !q)
		abort();
	/* Decoding: agrees with the reference, never lengthens, works in place. */
	ra = pathdec_decode(in, size, a, &la);
	rb = ref_decode(in, size, b, &lb);
	if (size <= PATHDEC_MAX_LEN) {
		assert(ra == rb);
		if (ra == 0)
			assert(la == lb && la <= size && memcmp(a, b, la) == 0);
	} else {
		assert(ra == -E2BIG);
	}
	memcpy(b, in, size);
	rb = pathdec_decode(b, size, b, &lb);
	assert(rb == ra && (ra < 0 || (lb == la && memcmp(a, b, la) == 0)));

	/* Query parsing: every parameter lies inside the buffer, is
	 * NUL-terminated, and has no '&' left in its key. */
	memcpy(q, in, size);
	q[size] = '\0';
	rq = pathdec_query(q, size, params, PATHDEC_MAX_PARAMS, &np);
	if (rq == 0) {
		assert(np <= PATHDEC_MAX_PARAMS);
		for (size_t i = 0; i < np; i++) {
			assert(params[i].key >= q && params[i].key + params[i].key_len <= q + size);
			assert(params[i].val >= q && params[i].val + params[i].val_len <= q + size);
			assert(params[i].key[params[i].key_len] == '\0');
			assert(params[i].val[params[i].val_len] == '\0');
		}
		(void)pathdec_get(params, np, "filter", &p);
		/* The typed helpers never read outside a parameter, and a
		 * number they accept is what the digits say. */
		for (size_t i = 0; i < np; i++) {
			uint64_t v = 0, ref = 0;
			bool digits = params[i].val_len > 0 && params[i].val_len <= 19;
			int bv;

			for (size_t j = 0; j < params[i].val_len && digits; j++) {
				digits = params[i].val[j] >= '0' && params[i].val[j] <= '9';
				ref = ref * 10 + (uint64_t)(params[i].val[j] - '0');
			}
			if (pathdec_parse_uint(params[i].val, params[i].val_len, UINT64_MAX, &v) == 0)
				assert(params[i].val_len > 19 || (digits && v == ref));
			else
				assert(!digits);
			(void)pathdec_bool(params, np, params[i].key, &bv);
			(void)pathdec_str(params, np, params[i].key, &p);
		}
	} else {
		assert(rq == -EINVAL || rq == -E2BIG);
	}
	free(a);
	free(b);
	free(q);
	return 0;
}
