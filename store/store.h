/* SPDX-License-Identifier: MIT */
/* store.h: the SQLite file: open and migrate, load at startup, batched writes. */
#ifndef SM_STORE_H
#define SM_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "../mirror/index.h"

struct store;

/*
** Open (creating if needed) the database at path, in WAL mode with
** synchronous=NORMAL, and migrate it to the newest schema (schema/NNN_*.sql,
** PRAGMA user_version). A file written by a newer daemon is refused.
** Returns 0, or -errno / -EINVAL with a reason in err; *ret_st is written
** only on success. The store belongs to one thread (the core thread) after
** startup; SQLite is opened with SQLITE_OPEN_NOMUTEX.
*/
int store_open(const char *path, struct store **ret_st, char *err, size_t errlen);

/* Close, committing nothing pending (store_write commits itself). Accepts NULL. */
void store_close(struct store *st);

/*
** Load every stored record (tombstones included) into ix, which must be
** empty; *ret_rev receives the highest rev seen (0 for a new file).
** Returns 0, -ENOMEM, or -EIO (with err).
*/
int store_load(struct store *st, struct index *ix, int64_t *ret_rev, char *err, size_t errlen);

/*
** Write the current state of n records in one transaction (upsert, or the
** tombstone for a deleted key) and commit. The records must not change
** during the call (the core thread owns them; it calls this without the
** index lock). Returns 0, or on failure rolls back and returns -ENOSPC
** (disk full), -EBUSY (locked), -ENOMEM or -EIO, with the reason in err;
** the caller keeps the records dirty and retries later.
*/
int store_write(struct store *st, struct rec *const *recs, size_t n, char *err, size_t errlen);

/* Run a WAL checkpoint (PASSIVE) so the -wal file does not grow without
 * bound while readers come and go. Returns 0 or -EIO. */
int store_checkpoint(struct store *st);

/* The schema version this build writes. */
int store_schema_version(void);

#endif
