/* SPDX-License-Identifier: MIT */
/* store.h: the SQLite file: open and migrate, load at startup, batched writes. */
#ifndef SM_STORE_H
#define SM_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct store;

/*
** The bits of a row's flags the store itself reads. The others are stored
** as given; schema/001_init.sql lists them all, and the mirror's record
** flags carry the same values (mirror/state/rows.c asserts it).
*/
enum store_flag {
	STORE_DELETED = 1u << 1, /* a tombstone: no payload; purged when old */
	STORE_IS_JSON = 1u << 4, /* the payload is stored as TEXT, else BLOB */
};

/*
** One row of the rec table: a key's state as the file keeps it, in plain
** fields (schema/001_init.sql says what each means). The store knows rows,
** not the mirror's records: the mirror converts (mirror/state/rows.c).
** Pointers are borrowed: store_stage copies what they point at (but the
** topic, see there); rows handed to a store_row_fn point into SQLite's
** buffers, valid for that call only.
*/
struct store_row {
	const char *topic;       /* topic_len bytes, not NUL-terminated */
	const void *payload;     /* payload_len bytes; NULL: none (an empty value, a tombstone) */
	int64_t ts_ns;
	int64_t received_ms;
	int64_t last_seen_ms;
	int64_t rev;
	int64_t stale_since_ms;
	int64_t cadence_source;  /* as stored: the reader checks its range */
	uint32_t payload_len;
	uint32_t updates;
	uint32_t cadence_ms;
	uint32_t learn_ms;       /* the cadence learner's estimate (ms), 0 none */
	uint16_t topic_len;
	uint16_t flags;          /* enum store_flag and the record's other stored bits */
	uint8_t learn;           /* the cadence learner's counts (opaque here) */
	bool payload_kept;       /* store_stage: the file has the payload already, keep it
				  * (payload ignored); never set by store_load */
};

/*
** Open (creating if needed) the database at path, in WAL mode with
** synchronous=NORMAL, and migrate it to the newest schema (schema/NNN_*.sql,
** PRAGMA user_version), each migration in its own transaction; the file is
** marked ours (PRAGMA application_id = 0x73746d72, "stmr"). Returns 0, or
** with a reason in err:
**   -ENOTSUP   written by a newer release: its user_version is above
**              store_schema_version() (or negative);
**   -EMEDIUMTYPE  not ours: an SQLite database of another application
**              (another application_id, or tables but not ours);
**   -EINVAL    not an SQLite database at all (no SQLite header);
**   -ENODATA   truncated: shorter than its header says (checked when no
**              -wal file is beside it: a WAL may hold the missing pages),
**              or not even a whole header;
**   -EBADMSG   corrupt: SQLite cannot read its header or schema (damage
**              deeper in the file shows at store_load, with this code too);
**   -EBUSY (another process holds the write lock), the OS's -errno when
**   the file cannot be opened (-EACCES also when it is read-only, -ENOENT
**   for a missing directory...), -ENOMEM or -EIO.
** A file refused with -ENOTSUP, -EMEDIUMTYPE, -EINVAL or -ENODATA is not
** written to, and those found from its 100-byte header (all of them, but
** a newer schema the WAL alone knows of) are refused before SQLite opens
** it: no recovery runs on it. An empty file is a new database. The checks
** cost a stat and one read, whatever the file's size; a file refused may
** be moved away with store_set_aside().
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
** Hand every stored row to fn(ctx, row), in the table's (topic) order, but the
** tombstones (STORE_DELETED) of keys deleted before skip_before_ns
** (observation time; INT64_MIN keeps all): those are forgotten, and
** store_purge_tombstones() with the same bound deletes them later, off the
** startup path. A row's payload is its stored bytes (NULL for a tombstone
** or none); learn_ms and learn are 0 when the learn column is NULL or not
** an integer that fits (the cadence is relearned); payload_kept is false. fn returns 0 to go
** on, or a negative errno to stop: store_load returns it, with
** "load: <topic>: <reason>" in err. *ret_rev receives the highest rev ever
** written (the greatest of the rows fn took and the file's high-water
** mark; 0 for a new file). Returns 0, fn's error, -ENOMEM, -EAGAIN (no
** thread could be started), -EBADMSG (a corrupt page: the file is
** damaged), or -EIO (with err; also for a stored topic that is empty,
** longer than 65535 bytes or holds a NUL, before fn sees it). The keeper
** thread's store, at startup; SQLite is read on a thread of its own
** meanwhile (fn runs on the caller's).
*/
typedef int (*store_row_fn)(void *ctx, const struct store_row *row);
int store_load(struct store *st, int64_t skip_before_ns, store_row_fn fn, void *ctx,
	       int64_t *ret_rev, char *err, size_t errlen);

/*
** Delete the tombstones of keys deleted before before_ns (observation
** time), so that deletes of topics never seen again do not fill max_keys
** for ever: the rows store_load skipped. The keeper thread calls it once,
** before its first write.
** *ret_n (may be NULL) receives the count. Returns 0 or -errno with err.
*/
int store_purge_tombstones(struct store *st, int64_t before_ns, int64_t *ret_n, char *err,
			   size_t errlen);

/* How many tombstones the last store_load forgot: when none, there is
 * nothing for store_purge_tombstones to delete, and its full scan (some
 * seconds at ten million keys) can be skipped. */
uint64_t store_forgotten(const struct store *st);

/*
** Write n rows in one transaction (upsert, or the tombstone for a deleted
** key) and commit: store_stage() each, then store_commit(). Returns what
** store_commit returns (or -ENOMEM, nothing written).
*/
int store_write(struct store *st, const struct store_row *rows, size_t n, char *err,
		size_t errlen);

/*
** Copy row (every field and its payload bytes) into the
** store's staging buffer for the next store_commit(). The copy is what lets
** the mirror stage records under the index lock, cheaply (a memcpy per row,
** no allocation once the buffers have grown), and write them without it
** while ingest goes on changing them. Only the topic is kept by pointer:
** it must stay valid and unchanged until the commit (a record's topic never
** changes and records never move). A row with payload_kept is written
** without its payload column (an UPDATE: the row must exist), one with
** STORE_DELETED or no payload with a NULL one. Returns 0 or -ENOMEM
** (nothing staged for the row).
*/
int store_stage(struct store *st, const struct store_row *row);
/* Rows staged and not yet committed. */
size_t store_staged(const struct store *st);

/*
** Write every staged row in one transaction and commit; the staging buffer
** is empty afterwards, whatever the outcome. Returns 0, or on failure rolls
** back (no transaction stays open) and returns -ENOSPC (disk full), -EBUSY
** (locked by another process), -EBADMSG (the file is corrupt), -ENOMEM or
** -EIO, with the reason in err;
** the caller keeps the records dirty and stages them again later.
** Cost: one prepared upsert per row, no allocation once the buffers have
** grown; 10,000 rows commit in a few tens of milliseconds.
*/
int store_commit(struct store *st, char *err, size_t errlen);

/* Does the path still name the file opened (store/fileid.h)? 0, or
 * -ESTALE with the reason in err. One stat(); the keeper asks about once
 * a second when it has nothing to write, so an idle mirror notices too. */
int store_check_file(struct store *st, char *err, size_t errlen);

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
** The payload stored for topic (len bytes), as the file holds it now: ctx
** is the store (the signature of the index's payload source, index.h).
** Each thread reads through a read-only connection of its own, opened at
** its first call and closed when the thread ends; *p (NUL-terminated past
** *n) stays valid until that thread's next call. Returns 0, -ENOENT (no
** such row), -ENOMEM or -EIO (also when the connection cannot be opened).
** Thread-safe.
*/
int store_fetch_payload(void *ctx, const char *topic, size_t len, const void **p, size_t *n);

/*
** The stored row of one topic, handed to fn (its pointers valid during the
** call), read on the calling thread's read-only connection like
** store_fetch_payload: a reader never waits for the writer. Returns fn's
** result, -ENOENT when the file has no such row, -EIO or -errno.
*/
int store_get_row(struct store *st, const char *topic, size_t len, store_row_fn fn, void *ctx);

/* Around a run of store_fetch_payload calls in topic order from `from`
 * (len bytes; NULL: the first topic), on one thread: its payloads come
 * from one range scan of this thread's reader, started at the first
 * fetch's topic (none at all when nothing is fetched), which holds its
 * read snapshot until store_scan_end (a no-op without a scan). */
void store_scan(void *ctx, const char *from, size_t len);
void store_scan_end(void *ctx);

/*
** Move the database at path out of the way, for a new one to take its
** place: path becomes "<path>.bad-YYYYMMDDTHHMMSSZ" (now_ms in UTC; "-2",
** "-3"... appended when that name is taken, nothing is ever overwritten),
** and its -wal, -shm and -journal files, when there are, the same name
** with their suffix, so that `sqlite3` opening the moved file finds its
** WAL. The side files move first: a crash half-way never leaves a stale
** WAL beside the new database. The directory is synced. The new name is
** copied into ret_path (ret_len bytes) on success. Call it only while no
** store has the file open (after store_open refused it). Returns 0, -ENOENT
** (no file at path), -ENAMETOOLONG (the new name does not fit ret_path or
** PATH_MAX), -EEXIST (100 names taken) or rename's -errno, with err set;
** on failure after a side file moved, err names what moved where.
** Library code: does not log; the caller logs the move loudly.
*/
int store_set_aside(const char *path, int64_t now_ms, char *ret_path, size_t ret_len,
		    char *err, size_t errlen);

/*
** Watch resume across restarts (api/watch.h, watch_set_resume): the first
** revision of this run, kept in the file's meta table. At startup
** store_resume_window() reads the previous run's first revision and
** returns the range of its revisions a watcher may resume from by a
** replay of the records: [*ret_floor, file_max] (file_max is what
** store_load returned), raised above the newest tombstone that the last
** store_load forgot (deleted before its skip_before_ns, which is what to
** pass here), since its delete can no longer be replayed; *ret_floor > file_max when there is none (a file without
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
