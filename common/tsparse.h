/* SPDX-License-Identifier: MIT */
/* tsparse.h: finding and decoding a payload's observation timestamp. */
#ifndef SM_TSPARSE_H
#define SM_TSPARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
** Decode an epoch number given as text ("1795313402", "1795313402.123",
** "1795313402123", "1795313402123456", "1795313402123456789") into epoch
** nanoseconds. The unit is told by magnitude of the integer part:
**   < 1e11 seconds, < 1e14 milliseconds, < 1e17 microseconds, else nanoseconds.
** Fractions are honoured down to the nanosecond; exponents ("1.7e9") too.
** Negative numbers, NaN and values that overflow are -EINVAL.
*/
int ts_parse_epoch(const char *s, size_t len, int64_t *ret_ns);

/* Decode an RFC 3339 date-time ("2026-11-22T02:10:02.123Z",
 * "2026-11-22T03:10:02+01:00", 't'/'z' lower case and ' ' separator accepted)
 * into epoch nanoseconds. Fraction digits past the ninth are dropped. A leap
 * second (":60", only at minute 59) is clamped to the minute's last
 * nanosecond. Times before 1970 or after 2262 (int64 ns) are -EINVAL.
 * Returns 0 or -EINVAL. */
int ts_parse_rfc3339(const char *s, size_t len, int64_t *ret_ns);

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
** Never allocates; depth of nesting is limited to JSCAN_MAX_DEPTH (deeper
** is treated as not JSON). Safe on any bytes (fuzzed).
*/
#define JSCAN_MAX_DEPTH 64

struct jscan_result {
	bool is_json;
	bool ts_found;
	bool ts_bad;
	int64_t ts_ns;
};

void jscan_payload(const char *payload, size_t len, const char *const *names,
		   size_t nnames, struct jscan_result *ret);

#endif
