/* SPDX-License-Identifier: MIT */
/* jscan.h: the one-pass JSON scanner the JSON decoder runs on every payload. */
#ifndef SM_JSCAN_H
#define SM_JSCAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
** One pass over a payload: is it valid JSON (RFC 8259, any top-level value),
** and if it is an object, the raw value of the first top-level member whose
** name is one of `names` (tried in order of preference: a member named
** names[0] wins over names[1] wherever it appears).
**
** Results in *ret:
**   is_json   : the whole payload is one valid JSON text (whitespace around
**               it allowed)
**   ts_found  : a member was found and decoded into ts_ns (a number via
**               ts_parse_epoch, a string via ts_parse_rfc3339, or a string
**               holding an epoch number)
**   ts_bad    : a member was found but could not be decoded (a bool,
**               object, array, a string with escapes, a negative number...)
** A member whose value is null counts as absent: the next name is tried.
** Strings are checked as jansson does: valid UTF-8, no lone surrogate
** escapes; "\u0000" is valid JSON (load with JSON_ALLOW_NUL). is_json does
** not promise that every number fits an int64 or a double.
**   too_deep  : the scan stopped at nesting deeper than JSCAN_MAX_DEPTH
**               (is_json and the rest false)
** Never allocates. Safe on any bytes (fuzzed). JSCAN_MAX_DEPTH is
** jansson's own limit (JSON_PARSER_MAX_DEPTH in 2.14), so that what jscan
** calls JSON is what jansson loads, at any depth.
*/
#define JSCAN_MAX_DEPTH 2048

struct jscan_result {
	bool is_json;
	bool too_deep;
	bool ts_found;
	bool ts_bad;
	int64_t ts_ns;
};

void jscan_payload(const char *payload, size_t len, const char *const *names,
		   size_t nnames, struct jscan_result *ret);

#endif
