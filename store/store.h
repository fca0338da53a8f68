/* SPDX-License-Identifier: MIT */
/* store.h: the SQLite file: open and migrate, load at startup, batched writes. */
#ifndef SM_STORE_H
#define SM_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "mirror/state/index.h"

struct store;

/*
** Open (creating if needed) the database at path, in WAL mode with
** synchronous=NORMAL, and migrate it to the newest schema (schema/NNN_*.sql,
** PRAGMA user_version), each migration in its own transaction. Returns 0,
** or with a reason in err: -EINVAL (the file is not an SQLite database),
** -ENOTSUP (written by a newer daemon: its user_version is above
** store_schema_version(); the file is left untouched), -EBUSY (another
** process holds the write lock), the OS's -errno when the file cannot be
** opened (-EACCES also when it is read-only, -ENOENT for a missing
** directory...), -ENOMEM or -EIO.
** *ret_st is written only on success. The store belongs to one thread (the
** keeper thread) after startup; SQLite is opened with SQLITE_OPEN_NOMUTEX.
** Foreign readers (`sqlite3 -readonly`) may hold the file open at any
** time: WAL mode means they never block store_write, nor it them. Starts
** one thread (the checkpointer, see store_checkpoint) with a second
** connection; store_close stops it. A path must name a file (":memory:"
** has no WAL and is refused with -EIO).
*/
int store_open(const char *path, struct store **ret_st, char *err, size_t errlen);

/* Close, committing nothing pending (store_write commits itself): stops the
 * checkpointer, then the last close checkpoints the WAL. Accepts NULL. */
void store_close(struct store *st);

/*
** Load every stored record into ix, which must be empty, in topic order,
** payloads left in the file (REC_IN_FILE), except the tombstones of keys
** deleted before skip_before_ns (observation time; INT64_MIN keeps all):
** those are forgotten, and store_purge_tombstones() with the same bound
** deletes their rows later, off the startup path. *ret_rev receives the
** highest rev ever written (0 for a new file). Loaded records have
** REC_DIRTY clear, heap_idx = UINT32_MAX and alert_state 0 (neither is
** stored); REC_STALE and stale_since_ms are as last written. Returns 0,
** -ENOMEM, or -EIO (with err; also for a stored topic that is empty,
** longer than 65535 bytes or holds a NUL). On failure ix may hold the
** records loaded so far: the caller frees it.
*/
int store_load(struct store *st, struct index *ix, int64_t skip_before_ns, int64_t *ret_rev,
	       char *err, size_t errlen);

/*
** Delete the tombstones of keys deleted before before_ns (observation
** time), so that deletes of topics never seen again do not fill max_keys
** for ever: the rows store_load skipped. The keeper thread calls it once,
** before its first write.
** *ret_n (may be NULL) receives the count. Returns 0 or -errno with err.
*/
int store_purge_tombstones(struct store *st, int64_t before_ns, int64_t *ret_n, char *err,
			   size_t errlen);

/*
** Write the current state of n records in one transaction (upsert, or the
** tombstone for a deleted key) and commit: store_stage() each, then
** store_commit(). Returns what store_commit returns (or -ENOMEM).
*/
int store_write(struct store *st, const struct index *ix, struct rec *const *recs, size_t n,
		char *err, size_t errlen);

/*
** Copy r's current state (every stored field, its payload and learning
** state) into the store's staging buffer for the next store_commit(). The
** copy is what lets the mirror stage records under the index lock, cheaply
** (a memcpy per record), and write them without it while ingest goes on
** changing them. Only the topic is kept by pointer: a record's topic never
** changes and records never move. REC_DIRTY is not stored and not touched.
** ix is r's index, where its learning state is (NULL for a record outside
** any index: none). Returns 0 or -ENOMEM (nothing staged for r).
*/
int store_stage(struct store *st, const struct index *ix, const struct rec *r);
/* Rows staged and not yet committed. */
size_t store_staged(const struct store *st);

/*
** Write every staged row in one transaction and commit; the staging buffer
** is empty afterwards, whatever the outcome. Returns 0, or on failure rolls
** back (no transaction stays open) and returns -ENOSPC (disk full), -EBUSY
** (locked by another process), -ENOMEM or -EIO, with the reason in err;
** the caller keeps the records dirty and stages them again later.
** Cost: one prepared upsert per row, no allocation once the buffers have
** grown; 10,000 rows commit in a few tens of milliseconds.
*/
int store_commit(struct store *st, char *err, size_t errlen);

/*
** Ask for a WAL checkpoint (PASSIVE: never waits for readers) and return at
** once. Checkpoints (which fsync) run on the store's own thread with its
** own connection, so the caller never waits for the disk; that thread is
** also woken by every commit that leaves the -wal file over ~4 MiB.
** Only when writes outpace it (a WAL over 64 MiB) does store_write wait
** for one checkpoint, which bounds the -wal file. Returns the result of
** the last finished checkpoint: 0, -EBUSY or -EIO.
*/
int store_checkpoint(struct store *st);

/*
** The payload of r as the file holds it (a rec_fetch_fn, index.h: ctx is
** the store). Each thread reads through a read-only connection of its own,
** opened at its first call and closed when the thread ends; *p stays valid
** until that thread's next call. Returns 0, -ENOENT (no such row), -ENOMEM
** or -EIO (also when the connection cannot be opened). Thread-safe.
*/
int store_fetch_payload(void *ctx, const struct rec *r, const void **p, size_t *n);

/* A rec_scan_fn / rec_scan_end_fn (index.h) for store_fetch_payload: a
 * walk's payloads come from one range scan of this thread's reader. */
void store_scan(void *ctx, const char *from, size_t len);
void store_scan_end(void *ctx);

/*
** Watch resume across restarts (api/watch.h, watch_set_resume): the first
** revision of this run, kept in the file's meta table. At startup
** store_resume_window() reads the previous run's first revision and
** returns the range of its revisions a watcher may resume from by a
** replay of the records: [*ret_floor, file_max] (file_max is what
** store_load returned), raised above the newest tombstone that the load
** forgot (deleted before skip_before_ns), since its delete can no longer
** be replayed; *ret_floor > file_max when there is none (a file without
** the mark, from an older daemon). store_mark_run() then records
** run_base as this run's first revision. Both run before the keeper
** thread owns the store. Return 0 or -errno with err.
*/
int store_resume_window(struct store *st, int64_t skip_before_ns, int64_t file_max,
			int64_t *ret_floor, char *err, size_t errlen);
int store_mark_run(struct store *st, int64_t run_base, char *err, size_t errlen);

/* The schema version this build writes (the number of migrations). */
int store_schema_version(void);

#endif
