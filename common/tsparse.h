/* SPDX-License-Identifier: MIT */
/* tsparse.h: decoding an observation timestamp given as an epoch number or RFC 3339 text. */
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

#endif
