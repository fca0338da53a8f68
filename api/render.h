/* SPDX-License-Identifier: MIT */
/* render.h: key records and rejected messages as JSON, written straight into a buffer. */
#ifndef SM_RENDER_H
#define SM_RENDER_H

#include <stdint.h>

#include "common/buf.h"
#include "mirror/state/index.h"
#include "mirror/state/intents.h"
#include "mirror/state/rejects.h"

/*
** Append r as the contract's key record (one line, no trailing newline):
** topic, payload | payload_text | payload_base64, ts, ts_source, received,
** last_seen, age_ms (now_ms - last_seen, never negative), retained, updates,
** cadence_ms, cadence_source, stale, stale_since, rev.
**
** - payload: inline when REC_IS_JSON; surrounding JSON whitespace is
**   trimmed and CR/LF bytes (which valid JSON can only hold as insignificant
**   whitespace) become spaces, so a record is always one line (watch
**   streams depend on it). Else payload_text when the bytes are valid UTF-8
**   (NUL and control bytes are escaped), else payload_base64.
** - cadence_ms is null when it is 0 (unknown, or a "never" cadence);
**   cadence_source is null for CADENCE_NONE, else "rule", "learned",
**   "default". stale_since is null while 0.
**
** r is a record of ix: a payload in the file only is read through ix's
** payload source (index.h). Caller holds the index read lock. Returns 0,
** -ENOMEM, -E2BIG (the buffer's limit) or rec_payload's error; on error b
** may hold part of the record: the caller truncates back to its previous
** length if it wants to keep b.
*/
int render_record(struct buf *b, const struct index *ix, const struct rec *r, int64_t now_ms);

/*
** render_record, from this thread's cache of what it rendered when r shows
** what it showed then (only age_ms is written anew): for listings, which
** render the same records page after page. The same bytes, locking and
** return codes as render_record; ix NULL renders without the cache. At
** most 2 MiB of JSON a thread, beside a table of 384 KiB (render.c).
*/
int render_record_cached(struct buf *b, const struct index *ix, const struct rec *r,
			 int64_t now_ms);
/*
** Its parts, for a point read without the lock: snap is r's fields (r
** itself, or index_peek's copy). render_cached appends r as snap shows it
** from this thread's cache and returns 0, or -EAGAIN when the cache does
** not hold it (b untouched). render_record_keep renders snap with its topic
** and payload (render_record_value) and keeps the result for r. Neither
** reads r itself, only its address: no lock needed.
*/
int render_cached(struct buf *b, const struct index *ix, const struct rec *r,
		  const struct rec *snap, int64_t now_ms);
int render_record_keep(struct buf *b, const struct index *ix, const struct rec *r,
		       const struct rec *snap, const char *topic, const void *pv, size_t plen,
		       int64_t now_ms);
/* This thread's record cache: records it answered, records it rendered. */
void render_cache_stats(uint64_t *ret_hits, uint64_t *ret_misses);

/* The same from parts: r's fields (it may be index_peek's copy, which has
 * no topic), its topic (r->topic_len bytes) and its payload. Needs no lock. */
int render_record_value(struct buf *b, const struct rec *r, const char *topic, const void *pv,
			size_t plen, int64_t now_ms);

/* For a tombstone: {"topic":...,"deleted":true,"ts":...,"rev":N}.
 * Same locking and return codes as render_record(). */
int render_tombstone(struct buf *b, const struct rec *r);

/*
** Append one rejected message: {"topic":..,["topic_truncated":true,]
** "reason":..,"time":..,"payload_size":N,"payload_text"|"payload_base64":..}.
** The kept bytes are payload_text when they are UTF-8 (a cut that ends
** inside a character drops that incomplete tail), else payload_base64.
** Returns 0 or a buf error.
*/
int render_reject(struct buf *b, const struct rejects_entry *e);

/* Append {"items":[...]} of every entry of r (render_reject), newest
 * first (GET /v1/rejects). Holds the ring's lock while it renders.
 * Returns 0 or a buf error. */
int render_rejects(struct buf *b, struct rejects *r);

/* Append {"error":"<reason>"} (reason is escaped). Returns 0 or a buf error. */
int render_error(struct buf *b, const char *reason);

/*
** An intent record, as every intent endpoint answers it:
** {"id","topic","correlation_id","state","requested","observed","created",
**  "published","decided"}, times RFC 3339 (null while not yet), observed
** null until the confirm key said something. Returns 0 or a buf error
** (-ENOMEM, -E2BIG); b is left as it was on error.
*/
int render_intent(struct buf *b, const struct intent_info *it);

#endif
