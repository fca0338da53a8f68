/* SPDX-License-Identifier: MIT */
/* outbox.h: the intent rows in the SQLite file: durable before the API answers. */
#ifndef SM_OUTBOX_H
#define SM_OUTBOX_H

#include <stddef.h>
#include <stdint.h>

/*
** One intent as the file holds it (schema/002_intents.sql). Strings are
** NUL-terminated; those a load hands out are valid for the callback only.
** observed may be NULL.
*/
struct outbox_row {
	int64_t id;
	const char *topic;
	const char *correlation_id;
	const char *value;          /* JSON text */
	const char *confirm_topic;  /* "" none */
	const char *confirm_member;
	const char *observed;       /* JSON text or NULL */
	int state;                  /* enum intent_state (mirror/state/intents.h) */
	int64_t created_ms, expire_ms, timeout_ms, published_ms, decided_ms;
};

struct outbox;

/*
** Open the intent table of the database at path, which store_open() has
** created and migrated, through a connection of the outbox's own, with
** synchronous=FULL: a committed insert is on disk (fsync'd) when
** outbox_insert() returns. It waits up to busy_ms for the store's writer
** (WAL: one writer at a time; its transactions are short). Returns 0 or
** -errno with err.
** Thread-safe: every call takes the outbox's mutex.
*/
int outbox_open(const char *path, int busy_ms, struct outbox **ret, char *err, size_t errlen);
void outbox_close(struct outbox *ob); /* accepts NULL */

/* Insert row (its id is chosen here: the next one) and commit durably.
 * *ret_id gets it. Returns 0, -ENOSPC, -EBUSY or -EIO with err. */
int outbox_insert(struct outbox *ob, const struct outbox_row *row, int64_t *ret_id, char *err,
		  size_t errlen);

/* Write row's state, published_ms, decided_ms and observed (matched by
 * id). Not fsync'd on its own: the next insert or the WAL's own sync
 * carries it; a crash may replay an older state, which only repeats a
 * publication or a decision. Returns 0 or -errno with err. */
int outbox_update(struct outbox *ob, const struct outbox_row *row, char *err, size_t errlen);

/*
** Calls fn for every undecided row (decided_ms = 0), in id order, then for
** the `recent` last decided ones, in order of decision; stops when fn returns
** non-zero. For the start: the engine takes the outbox back and its recent
** history. Returns 0, fn's value or -errno with err.
*/
int outbox_load(struct outbox *ob, size_t recent,
		int (*fn)(const struct outbox_row *row, void *ctx), void *ctx, char *err,
		size_t errlen);

/* Delete the decided rows but the `keep` last decided: the file keeps a
 * bounded history. Returns 0 or -errno with err. */
int outbox_prune(struct outbox *ob, size_t keep, char *err, size_t errlen);

#endif
