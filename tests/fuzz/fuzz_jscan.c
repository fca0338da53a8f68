/* SPDX-License-Identifier: MIT */
/* fuzz_jscan.c: libFuzzer target for the payload scanner, checked against jansson. */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "common/tsparse.h"
#include "common/utf8.h"
#include "mirror/ingest/jscan.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const names[] = { "ts", "timestamp", "time" };

/* Brackets outside strings: jscan stops at JSCAN_MAX_DEPTH, jansson later. */
static size_t max_depth(const char *s, size_t n)
{
	size_t d = 0, max = 0;
	bool str = false;

	for (size_t i = 0; i < n; i++) {
		if (str) {
			if (s[i] == '\\')
				i++;
			else if (s[i] == '"')
				str = false;
		} else if (s[i] == '"') {
			str = true;
		} else if (s[i] == '[' || s[i] == '{') {
			if (++d > max)
				max = d;
		} else if ((s[i] == ']' || s[i] == '}') && d) {
			d--;
		}
	}
	return max;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *s = (const char *)data;
	struct jscan_result r;
	json_error_t e;
	json_t *j;
	int64_t ns;

	jscan_payload(s, size, names, 3, &r);
	assert(!(r.ts_found && r.ts_bad));
	(void)ts_parse_epoch(s, size, &ns);
	(void)ts_parse_rfc3339(s, size, &ns);
	(void)utf8_valid(s, size);

	/* Valid JSON is what jansson loads, except where jscan documents a
	 * difference: nesting deeper than JSCAN_MAX_DEPTH, numbers jansson
	 * cannot hold, and member names holding \u0000. */
	/* too_deep: said only of nesting beyond the limit, and nothing else known */
	assert(!r.too_deep || (!r.is_json && !r.ts_found && !r.ts_bad &&
			       max_depth(s, size) > JSCAN_MAX_DEPTH));
	if (max_depth(s, size) > JSCAN_MAX_DEPTH)
		return 0;
	/* A raw NUL byte is never JSON (jansson takes "0\0" for 0). */
	if (memchr(s, '\0', size)) {
		assert(!r.is_json);
		return 0;
	}
	j = json_loadb(s, size, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
	if (!j && (strstr(e.text, "too big") || strstr(e.text, "overflow") ||
		   strstr(e.text, "NUL byte in object key")))
		return 0;   /* jansson's limits, not JSON's: \u0000 in a member name is valid */
	assert(r.is_json == (j != NULL));
	json_decref(j);
	return 0;
}
