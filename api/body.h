/* SPDX-License-Identifier: MIT */
/* body.h: a request body gathered up to a limit, its media type checked, parsed as JSON. */
#ifndef SM_BODY_H
#define SM_BODY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "common/buf.h"

/*
** One request's upload, kept in the connection's request context while
** libmicrohttpd hands it over piece by piece (no PostProcessor: the body
** is one JSON document). Bytes beyond `limit` are not stored, only
** counted, so a client that sends gigabytes costs `limit` bytes of memory.
** Not thread-safe; one per request, on the connection's thread.
*/
struct body {
	struct buf data;        /* at most limit bytes */
	size_t limit;
	uint64_t seen;          /* every byte offered, stored or not */
};

void body_init(struct body *b, size_t limit);
/* Free what was gathered. Accepts a zeroed struct. */
void body_free(struct body *b);

/*
** Add n bytes of upload. Returns 0; -E2BIG once the body (every byte seen
** so far) is longer than the limit: nothing more is stored, the caller
** answers 413 (or closes the connection when it cannot answer yet), and
** further calls keep counting and keep returning -E2BIG; -ENOMEM.
*/
int body_feed(struct body *b, const void *p, size_t n);

/* True once more than the limit was offered. */
bool body_too_large(const struct body *b);

/*
** Whether a Content-Type header value names the media type `want`
** ("application/json"): compared without case, parameters after ';'
** ignored but for charset, which must be utf-8 when given (a JSON body is
** UTF-8). NULL or empty header: false.
*/
bool body_type_is(const char *header, const char *want);

/*
** Parse the gathered bytes as one JSON value (an object, an array or a
** scalar; duplicate object keys and NUL bytes in strings are refused).
** Returns 0 with *ret (the caller owns one reference), or -EINVAL with a
** reason for the client in err ("empty body", or jansson's text with line
** and column), or -E2BIG when the body was too large.
*/
int body_json(const struct body *b, json_t **ret, char *err, size_t errlen);

#endif
