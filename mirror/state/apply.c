/* SPDX-License-Identifier: MIT */
/* apply.c: the apply decision: which message is a key's current value, whatever the arrival order. */
#include <errno.h>
#include <string.h>

#include "common/stats.h"
#include "mirror/state/apply.h"

/* g_stats counts messages and rejects by these enums. */
_Static_assert(APPLY_RESULT_MAX <= STATS_RESULTS, "stats.h: STATS_RESULTS too small");
_Static_assert(REJECT_REASON_MAX <= STATS_REASONS, "stats.h: STATS_REASONS too small");

static const char *const result_names[APPLY_RESULT_MAX] = {
	[APPLY_APPLIED] = "applied",
	[APPLY_DELETED] = "deleted",
	[APPLY_DUPLICATE] = "duplicate",
	[APPLY_OUT_OF_ORDER] = "out_of_order",
	[APPLY_REJECTED] = "rejected",
};

static const char *const reason_names[REJECT_REASON_MAX] = {
	[REJECT_NONE] = "none",
	[REJECT_FUTURE_TS] = "future_timestamp",
	[REJECT_TOO_LARGE] = "too_large",
	[REJECT_TOPIC_LEN] = "topic_too_long",
	[REJECT_MAX_KEYS] = "max_keys",
	[REJECT_NOT_JSON] = "not_json",
	[REJECT_BAD_TS] = "bad_timestamp",
	[REJECT_NOMEM] = "out_of_memory",
	[REJECT_STORE_READ] = "store_read_error",
	[REJECT_UNDECODABLE] = "undecodable",
	[REJECT_NO_BIRTH] = "no_birth",
	[REJECT_TOO_DEEP] = "too_deep",
};

const char *apply_result_name(enum apply_result r)
{
	return (unsigned)r < APPLY_RESULT_MAX ? result_names[r] : "unknown";
}

const char *reject_reason_name(enum reject_reason r)
{
	return (unsigned)r < REJECT_REASON_MAX ? reason_names[r] : "unknown";
}

/*
** The total order that makes arrival order irrelevant: (ts, payload bytes),
** bytes compared like memcmp with a shorter prefix smaller.  A delete is
** the empty payload, so at one timestamp any value beats a delete.
*/
static int value_cmp(int64_t ta, const void *pa, size_t na, int64_t tb, const void *pb, size_t nb)
{
	size_t n = na < nb ? na : nb;
	int c;

	if (ta != tb)
		return ta < tb ? -1 : 1;
	c = n ? memcmp(pa, pb, n) : 0;
	if (c)
		return c < 0 ? -1 : 1;
	return na < nb ? -1 : na > nb;
}

/* m's payload is r's current one (r not a tombstone). A payload held in
 * the file only is compared by length and hash (index.h). */
static bool same_bytes(const struct msg *m, const struct rec *r)
{
	if (m->payload_len != r->payload_len)
		return false;
	if (m->payload_len == 0)
		return true;
	if (r->flags & REC_IN_FILE)
		return rec_payload_hash(m->payload, m->payload_len) == r->payload_hash;
	return memcmp(m->payload, r->payload, m->payload_len) == 0;
}

/*
** value_cmp of m against r's current value. When the timestamps tie and
** r's payload is in the file, equal bytes are told by the hash; only a tie
** between different values (two producers, one timestamp) reads the file.
** Should that read fail, *failed is set (the caller rejects m: counted and
** listed, never silently ordered).
*/
static int cmp_current(const struct index *ix, const struct msg *m, const struct rec *r,
		       bool *failed)
{
	const void *p;
	size_t n;

	if (m->ts_ns != r->ts_ns)
		return m->ts_ns < r->ts_ns ? -1 : 1;
	if (!(r->flags & REC_IN_FILE))
		return value_cmp(m->ts_ns, m->payload, m->payload_len, r->ts_ns, r->payload,
				 r->payload ? r->payload_len : 0);
	if (same_bytes(m, r))
		return 0;
	if (rec_payload(ix, r, &p, &n) < 0) {
		*failed = true;
		return -1;
	}
	return value_cmp(m->ts_ns, m->payload, m->payload_len, r->ts_ns, p, n);
}

static int64_t floor_div(int64_t a, int64_t b)
{
	int64_t q = a / b;

	return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

/* last_seen after a delivery that carried the current value (set or confirmed). */
static void touch_last_seen(struct rec *r, const struct msg *m, int64_t now_ms)
{
	int64_t obs;

	if (!m->retained) {
		r->last_seen_ms = now_ms;
		return;
	}
	/* The broker's stored copy: its observation time is all we know. */
	obs = floor_div(m->ts_ns, 1000000);
	if (obs > now_ms)
		obs = now_ms;
	if (obs > r->last_seen_ms)
		r->last_seen_ms = obs;
}

/*
** Make m r's current value (or its tombstone); r already holds m's payload.
** was_live: r was in the index as a live key before.
*/
static void set_value(struct rec *r, bool was_live, const struct msg *m, int64_t now_ms,
		      int64_t *rev_counter)
{
	bool del = m->payload_len == 0;
	/* The staleness engine's bits and the mirror's (REC_DIRTY: marking a
	 * change for the store is the caller's) are not the apply's. */
	uint16_t keep = r->flags & (REC_STALE | REC_REASON_MASK | REC_STICKY | REC_NO_STALE |
				      REC_DIRTY | REC_REDERIVE);

	r->ts_ns = m->ts_ns;
	r->received_ms = now_ms;
	r->flags = (uint16_t)(keep |
			      (del ? REC_DELETED : 0) |
			      (m->retained ? REC_RETAINED : 0) |
			      (m->ts_from_payload ? REC_TS_PAYLOAD : 0) |
			      (m->is_json && !del ? REC_IS_JSON : 0));
	/* A key coming back from a tombstone starts a new life: its first
	 * value is update 1 again (the mirror reads updates == 1 as a new key). */
	if (!was_live && !del)
		r->updates = 0;
	if (r->updates < UINT32_MAX)
		r->updates++;
	r->rev = ++*rev_counter;
	touch_last_seen(r, m, now_ms);
}

static enum reject_reason insert_error(int rc)
{
	if (rc == -E2BIG)
		return REJECT_TOO_LARGE;
	if (rc == -EINVAL)
		return REJECT_TOPIC_LEN;   /* too long, or a NUL: not a valid MQTT topic */
	return REJECT_NOMEM;
}

enum apply_result apply_message(struct index *ix, const struct msg *m, int64_t now_ms,
				const struct apply_limits *lim, int64_t *rev_counter,
				struct rec **ret_rec, bool *ret_live_seen,
				enum reject_reason *ret_reason, int64_t *ret_prev_seen)
{
	enum reject_reason why = REJECT_NONE;
	enum apply_result res;
	struct rec *r = NULL;
	bool del = m->payload_len == 0;
	bool was_live, failed = false;
	int64_t prev_seen = 0;
	int c, rc;

	if (floor_div(m->ts_ns, 1000000) > now_ms + lim->future_skew_ms) {
		why = REJECT_FUTURE_TS;
		goto reject;
	}
	r = index_get(ix, m->topic, m->topic_len);
	if (!r) {
		if (lim->max_keys > 0 && index_size(ix) >= (uint64_t)lim->max_keys) {
			why = REJECT_MAX_KEYS;
			goto reject;
		}
		r = index_add(ix, m->topic, m->topic_len, m->payload, m->payload_len,
			      del ? REC_DELETED : 0);
		if (!r) {
			why = insert_error(-errno);
			goto reject;
		}
		set_value(r, false, m, now_ms, rev_counter);
		res = del ? APPLY_DELETED : APPLY_APPLIED;
		goto done;
	}
	prev_seen = r->last_seen_ms;

	/* A retained copy without a timestamp of its own carries only the
	 * time we received it: when its bytes are what we already hold, it is
	 * the broker replaying the value (after every reconnect), not a newer
	 * observation and not a sign of life. */
	if (m->retained && !m->ts_from_payload && !(r->flags & REC_DELETED) && same_bytes(m, r)) {
		res = APPLY_DUPLICATE;
		goto done;
	}
	c = cmp_current(ix, m, r, &failed);
	if (failed) {
		r = NULL;
		why = REJECT_STORE_READ;
		goto reject;
	}
	if (c < 0) {
		res = APPLY_OUT_OF_ORDER;
		goto done;
	}
	if (c == 0) {
		res = APPLY_DUPLICATE;
		if (!m->retained)
			r->last_seen_ms = now_ms;
		goto done;
	}
	was_live = !(r->flags & REC_DELETED);
	rc = rec_set_payload(r, m->payload, m->payload_len);
	if (rc < 0) {
		r = NULL;
		why = insert_error(rc);
		goto reject;
	}
	set_value(r, was_live, m, now_ms, rev_counter);
	if (was_live == del)
		index_adjust_live(ix, del ? -1 : 1);
	res = del ? APPLY_DELETED : APPLY_APPLIED;
done:
	if (ret_rec)
		*ret_rec = r;
	if (ret_live_seen)
		*ret_live_seen = !m->retained && !(r->flags & REC_DELETED) &&
				 (res == APPLY_APPLIED || res == APPLY_DUPLICATE);
	if (ret_reason)
		*ret_reason = REJECT_NONE;
	if (ret_prev_seen)
		*ret_prev_seen = prev_seen;
	return res;
reject:
	if (ret_rec)
		*ret_rec = NULL;
	if (ret_live_seen)
		*ret_live_seen = false;
	if (ret_reason)
		*ret_reason = why;
	if (ret_prev_seen)
		*ret_prev_seen = 0;
	return APPLY_REJECTED;
}
