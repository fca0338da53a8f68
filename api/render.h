/* SPDX-License-Identifier: MIT */
/* render.h: key records as JSON, written straight into a buffer. */
#ifndef SM_RENDER_H
#define SM_RENDER_H

#include <stdint.h>

#include "../common/buf.h"
#include "../mirror/index.h"

/*
** Append r as the contract's key record (one line, no trailing newline):
** topic, payload | payload_text | payload_base64, ts, ts_source, received,
** last_seen, age_ms (now_ms - last_seen), retained, updates, cadence_ms,
** cadence_source, stale, stale_since, rev. Caller holds the index read lock.
** Returns 0 or a buf error.
*/
int render_record(struct buf *b, const struct rec *r, int64_t now_ms);

/* For a tombstone: {"topic":...,"deleted":true,"ts":...,"rev":N}. */
int render_tombstone(struct buf *b, const struct rec *r);

#endif
