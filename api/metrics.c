/* SPDX-License-Identifier: MIT */
/* metrics.c: Prometheus text rendering of the process counters (g_stats). */
#include "api/metrics.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "common/stats.h"
#include "mirror/state/apply.h"
#include "mirror/liveness/stale.h"

static const unsigned http_codes[STATS_HTTP_CODES - 1] = { 200, 400, 401, 404, 405, 500, 503 };

size_t metrics_http_bucket(unsigned code)
{
	for (size_t i = 0; i < STATS_HTTP_CODES - 1; i++)
		if (http_codes[i] == code)
			return i;
	return STATS_HTTP_CODES - 1;
}

/* Our labels, not apply_result_name(): the metric's label set is an
 * interface of its own (dashboards and alert rules depend on it). */
static const char *const result_labels[APPLY_RESULT_MAX] = {
	[APPLY_APPLIED] = "applied",
	[APPLY_DELETED] = "deleted",
	[APPLY_DUPLICATE] = "duplicate",
	[APPLY_OUT_OF_ORDER] = "out_of_order",
	[APPLY_REJECTED] = "rejected",
};

/* The Sparkplug counters, in struct sparkplug_stats order: name, help. */
#define SP_STAT(f, help) { #f, help, offsetof(struct sparkplug_stats, f) }
static const struct {
	const char *name, *help;
	size_t off;
} sp_rows[] = {
	SP_STAT(messages, "Sparkplug messages decoded."),
	SP_STAT(metrics, "Sparkplug metrics emitted as key updates."),
	SP_STAT(births, "Sparkplug NBIRTH and DBIRTH accepted."),
	SP_STAT(node_deaths, "Sparkplug NDEATH that ended a live session (its keys stale)."),
	SP_STAT(deaths_ignored, "Sparkplug deaths of another bdSeq or of no live session, ignored."),
	SP_STAT(device_deaths, "Sparkplug DDEATH that ended a device (its keys stale)."),
	SP_STAT(commands_ignored, "Sparkplug NCMD and DCMD seen (commands, not state)."),
	SP_STAT(undecodable, "Sparkplug messages refused whole (topic, protobuf, depth, memory)."),
	SP_STAT(metrics_refused, "Sparkplug metrics refused alone (type, UTF-8, size, limits)."),
	SP_STAT(no_birth, "Sparkplug data for a node or device without a live birth."),
	SP_STAT(unknown_alias, "Sparkplug metrics naming no metric of the birth."),
	SP_STAT(seq_gaps, "Sparkplug seq gaps not filled within reorder_window."),
	SP_STAT(rebirth_sent, "Sparkplug rebirth requests (NCMD) sent."),
	SP_STAT(rebirth_suppressed, "Sparkplug rebirth requests wanted but off or within rebirth_interval."),
	SP_STAT(rebirth_failed, "Sparkplug rebirth requests that could not be published."),
	SP_STAT(refused_nodes, "Sparkplug edge nodes refused: max_nodes reached."),
	SP_STAT(refused_devices, "Sparkplug devices refused: max_devices reached."),
	SP_STAT(refused_metrics, "Sparkplug metrics refused: max_node_metrics or max_metrics reached."),
	SP_STAT(refused_messages, "Sparkplug messages refused: more than max_message_metrics."),
	SP_STAT(evicted, "Sparkplug nodes and devices without a live session forgotten for room."),
};
#define SP_NROWS (sizeof(sp_rows) / sizeof(sp_rows[0]))
_Static_assert(SP_NROWS == sizeof(struct sparkplug_stats) / sizeof(uint64_t),
	       "a sparkplug_stats field has no metric");

static _Atomic uint64_t sp_vals[SP_NROWS];
static atomic_bool sp_on;

void metrics_set_sparkplug(const struct sparkplug_stats *st)
{
	for (size_t i = 0; i < SP_NROWS; i++) {
		uint64_t v;

		memcpy(&v, (const char *)st + sp_rows[i].off, sizeof(v));
		atomic_store_explicit(&sp_vals[i], v, memory_order_relaxed);
	}
	atomic_store_explicit(&sp_on, true, memory_order_release);
}

static int head(struct buf *b, const char *name, const char *type, const char *help)
{
	return buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static int scalar(struct buf *b, const char *name, const char *type, const char *help, uint64_t v)
{
	int r;

	if ((r = head(b, name, type, help)) < 0)
		return r;
	return buf_printf(b, "%s %" PRIu64 "\n", name, v);
}

/* The intent outbox: outcomes, depth, the oldest pending one, publish latency. */
static int intents_metrics(struct buf *b, const struct intents_stats *st, int64_t now_ms)
{
	int r;

	if ((r = head(b, "statemirror_intents_total", "counter",
		      "Intents decided since start, by outcome.")) < 0)
		return r;
	for (int s = INTENT_PUBLISHED; s < INTENT_STATE_MAX; s++)
		if ((r = buf_printf(b, "statemirror_intents_total{outcome=\"%s\"} %" PRIu64 "\n",
				    intent_state_name((enum intent_state)s),
				    s == INTENT_REJECTED ? STAT_GET(intents_rejected) : st->outcomes[s])) < 0)
			return r;
	if ((r = scalar(b, "statemirror_outbox_depth", "gauge",
			"Intents waiting in the outbox to be published.", st->outbox_depth)) < 0 ||
	    (r = scalar(b, "statemirror_intents_undecided", "gauge",
			"Intents pending or published, without an outcome yet.", st->undecided)) < 0 ||
	    (r = head(b, "statemirror_outbox_oldest_seconds", "gauge",
		      "Age of the oldest intent waiting in the outbox (0: none).")) < 0 ||
	    (r = buf_printf(b, "statemirror_outbox_oldest_seconds %.3f\n",
			    st->oldest_pending_ms ? (double)(now_ms - st->oldest_pending_ms) / 1000 : 0.0)) < 0 ||
	    (r = head(b, "statemirror_intent_publish_seconds", "summary",
		      "Time from an intent's request to the broker's acknowledgement.")) < 0 ||
	    (r = buf_printf(b, "statemirror_intent_publish_seconds_sum %.3f\n"
			    "statemirror_intent_publish_seconds_count %" PRIu64 "\n",
			    (double)st->publish_latency_sum_ms / 1000, st->published)) < 0)
		return r;
	return 0;
}

static int commit_histogram(struct buf *b)
{
	const char *name = "statemirror_store_commit_seconds";
	uint64_t cum = 0, sum_us;
	int r;

	if ((r = head(b, name, "histogram", "Latency of SQLite batch commits.")) < 0)
		return r;
	for (size_t i = 0; i < STATS_COMMIT_BUCKETS; i++) {
		uint64_t us = stats_commit_bounds_us[i];

		cum += STAT_GET(commit_hist[i]);
		r = buf_printf(b, "%s_bucket{le=\"%g\"} %" PRIu64 "\n", name, (double)us / 1e6, cum);
		if (r < 0)
			return r;
	}
	cum += STAT_GET(commit_hist[STATS_COMMIT_BUCKETS]);
	sum_us = STAT_GET(commit_sum_us);
	return buf_printf(b, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n%s_sum %" PRIu64 ".%06" PRIu64
			  "\n%s_count %" PRIu64 "\n",
			  name, cum, name, sum_us / 1000000, sum_us % 1000000, name, cum);
}

int metrics_render(struct buf *b, const struct metrics_extra *x)
{
	int r;

	if ((r = head(b, "statemirror_messages_total", "counter",
		      "Messages by outcome of the apply decision.")) < 0)
		return r;
	for (size_t i = 0; i < APPLY_RESULT_MAX; i++)
		if ((r = buf_printf(b, "statemirror_messages_total{result=\"%s\"} %" PRIu64 "\n",
				    result_labels[i], STAT_GET(messages[i]))) < 0)
			return r;

	if ((r = head(b, "statemirror_rejects_total", "counter", "Rejected messages by reason.")) < 0)
		return r;
	for (size_t i = 0; i < REJECT_REASON_MAX; i++) {
		if (i == REJECT_NONE)
			continue;
		if ((r = buf_printf(b, "statemirror_rejects_total{reason=\"%s\"} %" PRIu64 "\n",
				    reject_reason_name((enum reject_reason)i), STAT_GET(rejects[i]))) < 0)
			return r;
	}

	if ((r = scalar(b, "statemirror_received_total", "counter",
			"Messages received from the broker.", STAT_GET(received))) < 0 ||
	    (r = scalar(b, "statemirror_keys", "gauge", "Live keys held.", STAT_GET(keys))) < 0 ||
	    (r = scalar(b, "statemirror_stale_keys", "gauge",
			"Keys judged stale now: in all (no label) and by reason.",
			STAT_GET(stale_keys))) < 0)
		return r;
	/* The same family, by why: the unlabelled sample stays the total. */
	for (int i = STALE_REASON_NONE + 1; i < STALE_REASON_MAX; i++)
		if ((r = buf_printf(b, "statemirror_stale_keys{reason=\"%s\"} %" PRIu64 "\n",
				    stale_reason_name((enum stale_reason)i),
				    stale_reason_count((enum stale_reason)i))) < 0)
			return r;
	if ((r = scalar(b, "statemirror_rev", "gauge", "Current revision counter.",
			(uint64_t)STAT_GET(rev))) < 0)
		return r;

	if ((r = head(b, "statemirror_stale_transitions_total", "counter",
		      "Staleness transitions of keys.")) < 0 ||
	    (r = buf_printf(b, "statemirror_stale_transitions_total{to=\"stale\"} %" PRIu64 "\n"
			    "statemirror_stale_transitions_total{to=\"fresh\"} %" PRIu64 "\n",
			    STAT_GET(stale_transitions), STAT_GET(fresh_transitions))) < 0)
		return r;

	if ((r = scalar(b, "statemirror_alerts_sent_total", "counter", "Alerts raised.",
			STAT_GET(alerts_sent))) < 0 ||
	    (r = scalar(b, "statemirror_alert_exec_failures_total", "counter",
			"Alert programs that failed or timed out.", STAT_GET(alert_exec_failures))) < 0 ||
	    (r = scalar(b, "statemirror_alerts_dropped_total", "counter",
			"Alerts dropped: the delivery queue was full.", STAT_GET(alerts_dropped))) < 0 ||
	    (r = scalar(b, "statemirror_log_dropped_total", "counter",
			"Log lines dropped: stderr could not take them at once.", STAT_GET(log_dropped))) < 0 ||
	    (r = scalar(b, "statemirror_broker_connected", "gauge",
			"1 while connected to a broker.", STAT_GET(broker_connected) ? 1 : 0)) < 0 ||
	    (r = scalar(b, "statemirror_synced", "gauge",
			"1 while subscribed and past the retained burst.", STAT_GET(synced) ? 1 : 0)) < 0 ||
	    (r = scalar(b, "statemirror_ready", "gauge", "1 while /readyz answers 200.",
			x->ready ? 1 : 0)) < 0 ||
	    (r = scalar(b, "statemirror_reconnects_total", "counter", "Broker reconnections.",
			STAT_GET(reconnects))) < 0)
		return r;

	/* The ingest queue is the socket's receive buffer: messages are
	 * applied as they are read (mirror/ingest/mqtt.c). */
	if ((r = scalar(b, "statemirror_ingest_queue_bytes", "gauge",
			"Bytes from the broker waiting in the socket to be read and applied "
			"(sampled every 100 ms).", STAT_GET(ingest_queue_bytes))) < 0)
		return r;

	if ((r = scalar(b, "statemirror_store_commits_total", "counter", "SQLite batch commits.",
			STAT_GET(commits))) < 0 ||
	    (r = scalar(b, "statemirror_store_commit_errors_total", "counter",
			"SQLite batch commits that failed.", STAT_GET(commit_errors))) < 0 ||
	    (r = scalar(b, "statemirror_store_rows_written_total", "counter",
			"Rows written to SQLite.", STAT_GET(rows_written))) < 0 ||
	    (r = scalar(b, "statemirror_store_rebuilds_total", "counter",
			"Database files found corrupt or not ours at start, moved aside and "
			"rebuilt from the broker.", STAT_GET(store_rebuilds))) < 0 ||
	    (r = commit_histogram(b)) < 0)
		return r;

	if ((r = head(b, "statemirror_http_requests_total", "counter",
		      "HTTP requests answered by status code.")) < 0)
		return r;
	for (size_t i = 0; i < STATS_HTTP_CODES; i++) {
		if (i < STATS_HTTP_CODES - 1)
			r = buf_printf(b, "statemirror_http_requests_total{code=\"%u\"} %" PRIu64 "\n",
				       http_codes[i], STAT_GET(http_requests[i]));
		else
			r = buf_printf(b, "statemirror_http_requests_total{code=\"other\"} %" PRIu64 "\n",
				       STAT_GET(http_requests[i]));
		if (r < 0)
			return r;
	}

	if ((r = head(b, "statemirror_http_connections_closed_total", "counter",
		      "HTTP connections closed by the fairness rules, by reason.")) < 0 ||
	    (r = buf_printf(b, "statemirror_http_connections_closed_total{reason=\"reclaimed\"} %" PRIu64 "\n"
			    "statemirror_http_connections_closed_total{reason=\"head_timeout\"} %" PRIu64 "\n"
			    "statemirror_http_connections_closed_total{reason=\"refused\"} %" PRIu64 "\n",
			    STAT_GET(http_conns_closed[0]), STAT_GET(http_conns_closed[1]),
			    STAT_GET(http_conns_closed[2]))) < 0)
		return r;

	for (size_t i = 0; atomic_load_explicit(&sp_on, memory_order_acquire) && i < SP_NROWS; i++) {
		char name[96];

		snprintf(name, sizeof(name), "statemirror_sparkplug_%s_total", sp_rows[i].name);
		if ((r = scalar(b, name, "counter", sp_rows[i].help,
				atomic_load_explicit(&sp_vals[i], memory_order_relaxed))) < 0)
			return r;
	}

	if ((r = scalar(b, "statemirror_watchers", "gauge", "Open /v1/watch streams.",
			STAT_GET(watchers))) < 0 ||
	    (r = scalar(b, "statemirror_watchers_dropped_total", "counter",
			"Watch streams cut off for being too slow.", STAT_GET(watchers_dropped))) < 0)
		return r;
	if (x->intents)
		return intents_metrics(b, x->intents, x->now_ms);
	return 0;
}
