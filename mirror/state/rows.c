/* SPDX-License-Identifier: MIT */
/* rows.c: records to store rows for a write, rows to records at startup. */
#include <errno.h>
#include <string.h>

#include "mirror/state/rows.h"

/* The file's flags are the record's (schema/001_init.sql). */
_Static_assert((unsigned)STORE_DELETED == (unsigned)REC_DELETED, "the tombstone bit");
_Static_assert((unsigned)STORE_IS_JSON == (unsigned)REC_IS_JSON, "the JSON bit");

/* Bits of rec.flags that describe the record rather than our bookkeeping. */
#define PERSISTED_FLAGS ((uint16_t)~(REC_DIRTY | REC_IN_FILE | REC_REDERIVE))

void rows_from_rec(const struct index *ix, const struct rec *r, struct store_row *ret_row)
{
	bool in_file = (r->flags & REC_IN_FILE) != 0;
	struct store_row *w = ret_row;

	/* Field by field, no zeroing pass: this runs under the index lock
	 * for every row of a write (rows_stage). */
	w->topic = rec_topic(r);
	w->topic_len = r->topic_len;
	/* payload_hash shares the payload's place: never pass it on. */
	w->payload = in_file ? NULL : r->payload;
	w->payload_len = in_file || !r->payload ? 0 : r->payload_len;
	w->payload_kept = in_file;
	w->ts_ns = r->ts_ns;
	w->received_ms = r->received_ms;
	w->last_seen_ms = r->last_seen_ms;
	w->rev = r->rev;
	w->stale_since_ms = r->stale_since_ms;
	w->updates = r->updates;
	/* The file's cadence_ms is the served one; a learner's estimate goes
	 * with its counts (the anchor, learn_lag, is not kept: an interval
	 * never spans a restart). */
	w->cadence_ms = rec_cadence_ms(r);
	w->cadence_source = r->cadence_source;
	w->flags = r->flags & PERSISTED_FLAGS;
	w->learn = r->learn;
	w->learn_ms = r->learn ? r->cadence_ms : 0;
}

int rows_stage(struct store *st, const struct index *ix, const struct rec *r)
{
	struct store_row row;

	rows_from_rec(ix, r, &row);
	return store_stage(st, &row);
}

/* A stored row's fields into r (its topic and payload are the caller's). */
static void rec_fill(struct rec *r, const struct store_row *row)
{
	r->ts_ns = row->ts_ns;
	r->received_ms = row->received_ms;
	r->last_seen_ms = row->last_seen_ms;
	r->rev = row->rev;
	r->stale_since_ms = row->stale_since_ms;
	r->updates = row->updates;
	r->cadence_ms = row->cadence_ms;
	r->cadence_source = row->cadence_source >= 0 && row->cadence_source < CADENCE_SOURCE_MAX ?
		(uint8_t)row->cadence_source : CADENCE_NONE;
	/* A learner's state: its estimate is the record's cadence_ms (the
	 * staleness engine checks both at stale_on_load). */
	if (row->learn && (r->cadence_source == CADENCE_NONE || r->cadence_source == CADENCE_LEARNED)) {
		r->learn = row->learn;
		r->cadence_ms = row->learn_ms;
	}
}

/* A store_row_fn: one stored row becomes a record of ix (the ctx). */
static int rows_add(void *ctx, const struct store_row *row)
{
	struct index *ix = ctx;
	uint16_t flags = row->flags & PERSISTED_FLAGS;
	struct rec *r;

	/* The payload stays in the file: the index keeps its hash. */
	r = index_add(ix, row->topic, row->topic_len, NULL, 0, flags);
	if (!r)
		return -errno;
	if (row->payload_len)
		rec_set_payload_in_file(r, row->payload_len,
					rec_payload_hash(row->payload, row->payload_len));
	rec_fill(r, row);
	return 0;
}

/* A store_row_fn: the row as a record of its own, in *(struct rec **)ctx. */
static int rows_copy(void *ctx, const struct store_row *row)
{
	struct rec *r = rec_new(row->topic, row->topic_len);

	if (!r)
		return -errno;
	if (rec_set_payload(r, row->payload, row->payload_len) < 0) {
		rec_free(r);
		return -ENOMEM;
	}
	r->flags = (uint16_t)((row->flags & PERSISTED_FLAGS) & ~REC_IN_FILE);
	rec_fill(r, row);
	*(struct rec **)ctx = r;
	return 0;
}

int rows_get(struct store *st, const char *topic, size_t len, struct rec **ret)
{
	*ret = NULL;
	if (len > UINT16_MAX)
		return -ENOENT;
	return store_get_row(st, topic, len, rows_copy, ret);
}

int rows_load(struct store *st, struct index *ix, int64_t skip_before_ns, int64_t *ret_rev,
	      char *err, size_t errlen)
{
	int rc = store_load(st, skip_before_ns, rows_add, ix, ret_rev, err, errlen);

	/* A row the index refuses (a topic twice) is a broken file. */
	return rc == -EEXIST || rc == -EINVAL || rc == -E2BIG ? -EIO : rc;
}
