/* SPDX-License-Identifier: MIT */
/* changes.h: the bounded log of recent changes that watch streams replay and follow. */
#ifndef SM_CHANGES_H
#define SM_CHANGES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mirror/state/index.h"

enum change_type {
	CHANGE_UPDATE,
	CHANGE_DELETE,
	CHANGE_STALE,
	CHANGE_FRESH,
	CHANGE_TYPE_MAX
};

const char *change_type_name(enum change_type t); /* "update", "delete", "stale", "fresh" */

/*
** One change: the revision it got and the record it changed. Records never
** move or die (index.h), so the pointer stays valid; when the record has
** changed again since (rec->rev != rev) a later entry carries its newer
** state and this one can be skipped: watchers converge on current state
** and see every change that is still current.
*/
struct change {
	int64_t rev;
	struct rec *rec;
	uint8_t type;   /* enum change_type */
};

struct changes;

/*
** A ring of the last cap changes, starting after revision base_rev.
** Revisions are consecutive (every rev the mirror hands out is appended), so
** a lookup by revision is O(1). Returns NULL on ENOMEM.
*/
struct changes *changes_new(size_t cap, int64_t base_rev);
void changes_free(struct changes *cl); /* accepts NULL */

/* Index write lock held (the MQTT session thread as it applies a message,
 * the keeper thread when a staleness deadline passes): append r's change
 * (rev = r->rev, which must be the last appended rev + 1). */
void changes_append(struct changes *cl, struct rec *r, enum change_type t);

/* The newest revision appended (base_rev when none). Lock held (any mode). */
int64_t changes_head(const struct changes *cl);

/*
** Index read (or write) lock held: copy up to n changes with rev > after,
** oldest first, into out; returns the count. When `after` is older than the
** ring still holds (changes were lost to the reader), or newer than any
** change (a revision from another database), returns 0 and sets *ret_gap:
** the caller must start over with a snapshot.
*/
size_t changes_read(const struct changes *cl, int64_t after, struct change *out, size_t n,
		    bool *ret_gap);

#endif
