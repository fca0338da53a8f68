/* SPDX-License-Identifier: MIT */
/* metrics.h: the Prometheus text exposition of g_stats for GET /metrics. */
#ifndef SM_METRICS_H
#define SM_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "mirror/ingest/sparkplug.h"
#include "mirror/state/intents.h"

/*
** HTTP status codes are counted in g_stats.http_requests[STATS_HTTP_CODES]
** by bucket: 200, 400, 401, 404, 405, 500, 503 and "other" (the label
** code="other"; our own 413 and 414 land there). The 414/431 answers that
** libmicrohttpd gives itself, for a request line or headers that do not
** fit the connection's memory, never reach our handler and are not counted.
** Returns the bucket index for code (always < STATS_HTTP_CODES).
*/
size_t metrics_http_bucket(unsigned code);

/* What /metrics needs that g_stats does not hold; sampled by the caller. */
struct metrics_extra {
	bool ready;              /* mirror_ready() */
	const struct intents_stats *intents; /* NULL: intents are off */
	int64_t now_ms;          /* for the oldest pending intent's age */
};

/*
** The Sparkplug decoder's counters (sparkplug.h), rendered as
** statemirror_sparkplug_<name>_total once this has been called (the
** host mode is on). Copied field by field into relaxed atomics: a scrape
** may see counters a few messages apart, never torn values. One writer
** (the session thread); any thread may render.
*/
void metrics_set_sparkplug(const struct sparkplug_stats *st);

/*
** Append the whole exposition (text/plain; version=0.0.4): HELP and TYPE
** lines, counters, gauges and the store commit histogram (seconds).
** Reads g_stats racily (see stats.h). Returns 0 or a buf error.
*/
int metrics_render(struct buf *b, const struct metrics_extra *x);

#endif
