/* SPDX-License-Identifier: MIT */
/* stats.h: process-wide counters and gauges behind /metrics and STATUS=. */
#ifndef SM_STATS_H
#define SM_STATS_H

#include <stdatomic.h>
#include <stdint.h>

#define STATS_COMMIT_BUCKETS 12  /* commit latency histogram, see stats.c */
#define STATS_HTTP_CODES 8       /* 200 204 400 401 404 405 413 414 431 503 other... see api */
/* Room for the apply outcomes and reject reasons (enum apply_result,
 * enum reject_reason in mirror/state/apply.h; apply.c asserts that they fit):
 * common/ names no type of the layers above it. */
#define STATS_RESULTS 8
#define STATS_REASONS 16

/*
** Everything here is written by exactly one thread (noted per field) or with
** relaxed atomic increments, and read racily by /metrics; a scrape may see
** counters a few messages apart, never torn values.
*/
struct stats {
	/* the ingest (session) thread applies; the keeper thread ticks */
	_Atomic uint64_t messages[STATS_RESULTS];      /* by enum apply_result */
	_Atomic uint64_t rejects[STATS_REASONS];       /* by enum reject_reason */
	_Atomic uint64_t keys;                         /* live keys */
	_Atomic uint64_t stale_keys;
	_Atomic uint64_t stale_transitions;            /* fresh->stale */
	_Atomic uint64_t fresh_transitions;            /* stale->fresh */
	_Atomic uint64_t alerts_sent;
	_Atomic uint64_t alert_exec_failures;
	_Atomic uint64_t alerts_dropped;               /* delivery queue full (any thread) */
	_Atomic int64_t rev;
	/* store (keeper thread) */
	_Atomic uint64_t commits;
	_Atomic uint64_t commit_errors;
	_Atomic uint64_t rows_written;
	_Atomic uint64_t commit_hist[STATS_COMMIT_BUCKETS + 1]; /* cumulative at render */
	_Atomic uint64_t commit_sum_us;
	_Atomic uint64_t store_rebuilds;  /* a corrupt or foreign file moved aside at start (main) */
	/* mqtt (network thread) */
	_Atomic uint64_t received;
	_Atomic uint64_t reconnects;
	_Atomic int broker_connected;
	_Atomic int synced;        /* subscriptions acked and retained burst done */
	_Atomic uint64_t ingest_queue_bytes; /* received by the kernel, not read yet (sampled) */
	/* http */
	_Atomic uint64_t http_requests[STATS_HTTP_CODES];
	/* connections closed by the fairness rules (api/fair.h), by reason:
	 * reclaimed to make room, no complete head in time, refused */
	_Atomic uint64_t http_conns_closed[3];
	_Atomic uint64_t watchers;
	_Atomic uint64_t watchers_dropped;
	_Atomic uint64_t intents_rejected;             /* refused at the API (400/403) */
	/* log (any thread) */
	_Atomic uint64_t log_dropped;   /* lines stderr could not take at once */
};

extern struct stats g_stats;

/* Upper bounds (microseconds) of the commit latency buckets; +Inf is last. */
extern const uint64_t stats_commit_bounds_us[STATS_COMMIT_BUCKETS];
void stats_commit_observe(uint64_t us);

#define STAT_INC(f) atomic_fetch_add_explicit(&g_stats.f, 1, memory_order_relaxed)
#define STAT_ADD(f, n) atomic_fetch_add_explicit(&g_stats.f, (n), memory_order_relaxed)
#define STAT_SET(f, v) atomic_store_explicit(&g_stats.f, (v), memory_order_relaxed)
#define STAT_GET(f) atomic_load_explicit(&g_stats.f, memory_order_relaxed)

#endif
