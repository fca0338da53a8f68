/* SPDX-License-Identifier: MIT */
/* apply.h: the apply decision for one message against a key's current record. */
#ifndef SM_APPLY_H
#define SM_APPLY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mirror/state/index.h"

enum apply_result {
	APPLY_APPLIED,      /* became the current value (new key or newer ts or tie won) */
	APPLY_DELETED,      /* an empty payload deleted the key (tombstone written) */
	APPLY_DUPLICATE,    /* same ts, same bytes: only last_seen may move */
	APPLY_OUT_OF_ORDER, /* older than the current value (or lost the tie): ignored */
	APPLY_REJECTED,     /* see enum reject_reason */
	APPLY_RESULT_MAX
};

enum reject_reason {
	REJECT_NONE,
	REJECT_FUTURE_TS,   /* ts further ahead than future_skew */
	REJECT_TOO_LARGE,   /* payload over max_payload */
	REJECT_TOPIC_LEN,   /* topic over max_topic_len */
	REJECT_MAX_KEYS,    /* a new key while max_keys are held */
	REJECT_NOT_JSON,    /* format = json and the payload is not */
	REJECT_BAD_TS,      /* a timestamp member that cannot be decoded */
	REJECT_NOMEM,       /* allocation failed */
	REJECT_STORE_READ,  /* a tie with a value only the file holds, which could not be read */
	REJECT_UNDECODABLE, /* a decoder could not read the payload (Sparkplug: protobuf, topic, type) */
	REJECT_NO_BIRTH,    /* Sparkplug data of no live birth, or of an alias the birth did not define */
	REJECT_TOO_DEEP,    /* format = json, nested deeper than JSCAN_MAX_DEPTH (jansson's limit) */
	REJECT_REASON_MAX
};

const char *apply_result_name(enum apply_result r);   /* "applied", ... */
const char *reject_reason_name(enum reject_reason r); /* "future_timestamp", ... */

/* A decoded message, as the MQTT session thread hands it to the apply
 * (mirror_ingest). Borrowed pointers, into libmosquitto's buffer: valid for
 * that call only. */
struct msg {
	const char *topic;
	size_t topic_len;
	const void *payload; /* never NULL (an empty payload points at "") */
	size_t payload_len;
	int64_t ts_ns;       /* observation time (payload's, or receive time) */
	int64_t recv_ms;     /* wall time the message was received */
	bool retained;       /* delivered with the retain flag */
	bool ts_from_payload;
	bool is_json;
};

struct apply_limits {
	int64_t future_skew_ms;
	int64_t max_keys;    /* records held, tombstones included (memory bound) */
};

/*
** Apply m to the index at wall time now_ms, following the contract's apply
** rules exactly: the order is (ts, payload bytes), a delete being the empty
** payload; the greater one is the current value, equal is a duplicate.
** On APPLIED/DELETED the record's value, flags, received_ms, updates and
** rev (= ++*rev_counter) change. REC_DIRTY is never touched, whatever the
** outcome: the apply decides and changes the value, marking the change for
** the store is the caller's. The caller marks every APPLIED/DELETED record
** dirty before it releases the lock (mirror_mark_dirty): once a write
** commits, the payloads of clean records leave memory (rec_drop_payload),
** and a new value not written yet would go with them. A delete of a key
** not held yet inserts a tombstone (DELETED), so that an older message
** arriving later cannot create the key. updates counts applied messages
** (deletes too) and restarts at 1 when a key comes back from a tombstone,
** so updates == 1 after APPLIED means "new key" (for the staleness engine).
** On DUPLICATE and on APPLIED/DELETED the last_seen rule is applied (live:
** now_ms; retained: the observation time, never later than now_ms and
** never earlier than the previous last_seen; a retained duplicate leaves
** it); the caller marks the record dirty if it persists last_seen.
** *ret_live_seen is set true when a live delivery
** confirmed a live key (APPLIED or DUPLICATE, not a tombstone): the
** staleness engine's sign of life. *ret_prev_seen receives last_seen as
** it was before this message (0 for a new key, or on REJECTED): the
** staleness engine measures the interval since the previous live message
** from it.
** Rejections (future ts; a new key while lim->max_keys records are held,
** tombstones included, max_keys <= 0 = no limit; out of memory) set
** *ret_reason and touch nothing. Every ret_* (each may be NULL) is written
** on every return: *ret_rec is the key's record (NULL on REJECTED, never
** moves), *ret_reason REJECT_NONE unless rejected. Pure logic: no logging,
** no clock. Caller holds the write lock.
*/
enum apply_result apply_message(struct index *ix, const struct msg *m, int64_t now_ms,
				const struct apply_limits *lim, int64_t *rev_counter,
				struct rec **ret_rec, bool *ret_live_seen,
				enum reject_reason *ret_reason, int64_t *ret_prev_seen);

#endif
