/* SPDX-License-Identifier: MIT */
/* avail.h: availability topics: which producer a status topic names, which keys it covers, what its payload says. */
#ifndef SM_AVAIL_H
#define SM_AVAIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/conf.h"

/*
** [liveness] availability = STATUS_FILTER KEYS_FILTER. A status topic that
** matches STATUS_FILTER names one producer: the i-th '+' level of the
** status filter binds the i-th '+' level of the keys filter, so that
** "dc1/+/agent/status dc1/+/#" makes "dc1/ag7/agent/status" cover
** "dc1/ag7/#". Levels of the keys filter beyond the bound ones stay
** wildcards. The producer's name (alerts, /v1/stale) is the bound keys
** filter's literal part without its trailing '/' ("dc1/ag7"), or, for a
** keys filter without a wildcard, that topic's parent.
**
** The mirror keeps one of these, read and changed under the index write
** lock (the apply path, a reload). It remembers which producers are
** offline now (at most AVAIL_OFFLINE_MAX, the oldest forgotten first,
** counted and logged), so that a key that arrives after its producer's
** offline status (a retained burst in any order) is stale at once too.
*/

#define AVAIL_BOUND_MAX 1024    /* bytes of a bound keys filter */
#define AVAIL_OFFLINE_MAX 4096  /* producers remembered offline */

enum avail_word { AVAIL_UNKNOWN, AVAIL_ONLINE, AVAIL_OFFLINE };

struct avail;

/* Copies what it needs from c. NULL on ENOMEM. */
struct avail *avail_new(const struct conf *c);
void avail_free(struct avail *a); /* accepts NULL */
/* New lines and payloads (SIGHUP); producers offline stay so while their
 * status topics still match. Returns 0 or -ENOMEM (old kept). */
int avail_reconfigure(struct avail *a, const struct conf *c);

/* Any availability configured? */
bool avail_any(const struct avail *a);

/* The first availability line whose status filter matches topic, or -1. */
int avail_match(const struct avail *a, const char *topic, size_t len);

/*
** Bind: the keys filter of line `line` for status topic (len bytes), into
** out (n bytes, NUL-terminated). Returns the length, or -ENAMETOOLONG,
** -EINVAL (topic does not match the status filter). Pure; exposed for tests
** with avail_bind_filters.
*/
int avail_bind(const struct avail *a, int line, const char *topic, size_t len, char *out, size_t n);
int avail_bind_filters(const char *status, const char *keys, const char *topic, size_t len,
		       char *out, size_t n);

/* The producer's name for a bound keys filter: its length (a prefix of it). */
size_t avail_producer_len(const char *bound);

/* What a status payload says: the payload itself, or with payload_member
 * the string value of that member of a JSON object. */
enum avail_word avail_word(const struct avail *a, const void *payload, size_t len);

/*
** The producer of bound keys filter `bound` went offline at ts_ms (true)
** or is no longer offline (false). Returns 0, or -ENOMEM.
*/
int avail_set_offline(struct avail *a, const char *bound, bool offline, int64_t ts_ms);

/* Is topic covered by a producer offline now? Then *ret_bound (valid until
 * the next change) and *ret_ts are set. O(producers offline). */
bool avail_offline_cover(const struct avail *a, const char *topic, size_t len,
			 const char **ret_bound, int64_t *ret_ts);
size_t avail_offline_count(const struct avail *a);

#endif
