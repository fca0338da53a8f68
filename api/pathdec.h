/* SPDX-License-Identifier: MIT */
/* pathdec.h: strict percent-decoding of request paths, query-string parsing and the typed query parameters every endpoint reads. */
#ifndef SM_PATHDEC_H
#define SM_PATHDEC_H

#include <stddef.h>
#include <stdint.h>

/*
** Limits. A query with more parameters than PATHDEC_MAX_PARAMS, or any
** input longer than PATHDEC_MAX_LEN bytes, is refused with -E2BIG (the
** caller answers 414). The HTTP layer bounds URLs well below this anyway.
*/
#define PATHDEC_MAX_PARAMS 16
#define PATHDEC_MAX_LEN (1u << 20)

/*
** Percent-decode n bytes of `in` into `out` (which must hold n bytes; out
** may equal in: decoding never lengthens). Strict: '%' must be followed by
** two hex digits ("%zz", a truncated "%4" or a trailing '%' are -EINVAL).
** '+' is a literal plus everywhere, never a space: MQTT filters use '+'
** as a wildcard, so "filter=a/+/b" means what it says; a client that wants
** a space sends %20. "%00" decodes to a NUL byte: callers that need C
** strings must check for it. No NUL is appended.
** Returns 0 with the decoded length in *ret_len, -EINVAL, or -E2BIG
** (n > PATHDEC_MAX_LEN). Pure function, thread-safe.
*/
int pathdec_decode(const char *in, size_t n, char *out, size_t *ret_len);

/* One decoded query parameter; key and val point into the parsed string
 * and are NUL-terminated (they may also hold NUL bytes: use the lengths). */
struct pathdec_param {
	char *key;
	size_t key_len;
	char *val;
	size_t val_len;
};

/*
** Parse the query string q (n bytes, without the '?', q[n] must be a
** writable NUL) in place: split on '&', then on the first '=', and
** percent-decode key and value as pathdec_decode() does. Empty segments
** ("a=1&&b=2", a trailing '&') are skipped; "key" without '=' has an empty
** value. At most `max` parameters are stored in params[].
** Returns 0 with the count in *ret_n, -EINVAL (bad percent-encoding),
** or -E2BIG (more than max parameters, or n > PATHDEC_MAX_LEN).
** q is clobbered even on error. Thread-safe.
*/
int pathdec_query(char *q, size_t n, struct pathdec_param *params, size_t max, size_t *ret_n);

/*
** Find the parameter named key. Returns 0 with *ret set, -ENOENT when it is
** absent, -EINVAL when it is given more than once (an ambiguous request).
*/
int pathdec_get(const struct pathdec_param *params, size_t n, const char *key,
		const struct pathdec_param **ret);

/* The reason for a 400 answer to a pathdec_query() error (a static string). */
const char *pathdec_query_reason(int err);

/*
** Typed parameters. Each looks key up with pathdec_get(): absent leaves
** *ret alone and returns 0 (the caller's default stands); given twice, or
** not of the type, is -EINVAL (the caller answers 400 naming the key).
**
** pathdec_bool: "true" or "false" (nothing else: not "1", not "TRUE").
** pathdec_uint: decimal digits only, no sign, in lo..hi.
** pathdec_str: any bytes but NUL, so *ret's val is a usable C string.
*/
int pathdec_bool(const struct pathdec_param *params, size_t n, const char *key, int *ret);
int pathdec_uint(const struct pathdec_param *params, size_t n, const char *key, uint64_t lo,
		 uint64_t hi, uint64_t *ret);
int pathdec_str(const struct pathdec_param *params, size_t n, const char *key,
		const struct pathdec_param **ret);

/*
** Parse n bytes of decimal digits (no sign, no space, at least one digit)
** as a number no greater than max (a header value such as Last-Event-ID
** uses the same rule as a query parameter). Returns 0 with *ret, or
** -EINVAL (empty, not digits, or above max; never overflows).
*/
int pathdec_parse_uint(const char *s, size_t n, uint64_t max, uint64_t *ret);

#endif
