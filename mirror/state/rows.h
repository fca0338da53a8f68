/* SPDX-License-Identifier: MIT */
/* rows.h: a key's record as the store's row and back: where the index meets the file. */
#ifndef SM_ROWS_H
#define SM_ROWS_H

#include <stddef.h>
#include <stdint.h>

#include "mirror/state/index.h"
#include "store/store.h"

/*
** r's state as the store keeps it (ix unused; NULL for a record outside
** any index). The
** row borrows r's topic and, unless the file has it already (REC_IN_FILE:
** payload_kept), its payload: valid while r is unchanged. Bookkeeping bits
** (REC_DIRTY, REC_IN_FILE) and the learner's anchor are not stored. Hold a lock on ix.
*/
void rows_from_rec(const struct index *ix, const struct rec *r, struct store_row *ret_row);

/*
** store_stage() of r's state (see rows_from_rec): the keeper thread's copy
** under the index lock, a struct on the stack and a memcpy of the payload,
** no allocation here. REC_DIRTY is not touched. Returns 0 or -ENOMEM.
*/
int rows_stage(struct store *st, const struct index *ix, const struct rec *r);

/*
** Load every stored row into ix, which must be empty (store_load with
** skip_before_ns: old tombstones are forgotten). Payloads stay in the file
** (REC_IN_FILE, their hash kept). Loaded records have REC_DIRTY clear,
** heap_idx = UINT32_MAX and alert_state 0 (neither is stored); REC_STALE
** and stale_since_ms are as last written; a cadence source out of range
** reads as CADENCE_NONE. *ret_rev as store_load. Returns 0, -ENOMEM,
** -EBADMSG (a corrupt file) or -EIO, with err (a row the index refuses,
** say a topic twice, is -EIO).
** On failure ix may hold the records loaded so far: the caller frees it.
*/
int rows_load(struct store *st, struct index *ix, int64_t skip_before_ns, int64_t *ret_rev,
	      char *err, size_t errlen);

/*
** The stored row of one topic as a record outside any index (rec_new: the
** caller rec_free()s *ret), its payload in memory, its state as last
** written: what the index will hold for it once loaded, before the
** staleness engine judges it again. A tombstone comes back as one
** (REC_DELETED). For serving point reads while rows_load runs; any
** thread (store_get_row). Returns 0, -ENOENT (no such row), -ENOMEM, -EIO.
*/
int rows_get(struct store *st, const char *topic, size_t len, struct rec **ret);

#endif
