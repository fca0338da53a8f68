/* SPDX-License-Identifier: MIT */
/* test_store.c: the SQLite store on real files: migrations, round trips, views, faults. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "mirror/state/index.h"
#include "mirror/state/rows.h"
#include "store/store.h"

/* ---- a temporary directory per test ---------------------------------- */

static char tmpdir[64];
static char dbpath[128];
static struct index *tix;   /* where the records a test writes live */

static void setup(void)
{
	tix = index_new();
	ck_assert_ptr_nonnull(tix);
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/sm-store-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
	snprintf(dbpath, sizeof(dbpath), "%s/state.db", tmpdir);
}

static void teardown(void)
{
	DIR *d = opendir(tmpdir);
	struct dirent *de;
	char p[400];

	/* The database, its side files, and whatever a test set aside. */
	ck_assert_ptr_nonnull(d);
	while ((de = readdir(d)))
		if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) {
			snprintf(p, sizeof(p), "%s/%s", tmpdir, de->d_name);
			unlink(p);
		}
	closedir(d);
	ck_assert_int_eq(rmdir(tmpdir), 0);
	index_free(tix);
	tix = NULL;
}

/* ---- the store's own connection, caught as SQLite opens it ------------ */

static sqlite3 *caught;

static int catch_db(sqlite3 *db, char **errmsg, const struct sqlite3_api_routines *api)
{
	(void)errmsg;
	(void)api;
	if (!caught)
		caught = db;
	return SQLITE_OK;
}

/* Open the store and keep a handle on its connection (to set limits that
 * are per connection and to see whether a transaction is open). */
static struct store *open_caught(void)
{
	struct store *st = NULL;
	char err[256] = "";

	caught = NULL;
	ck_assert_int_eq(sqlite3_auto_extension((void (*)(void))catch_db), SQLITE_OK);
	ck_assert_msg(store_open(dbpath, &st, err, sizeof(err)) == 0, "%s", err);
	sqlite3_reset_auto_extension();
	ck_assert_ptr_nonnull(caught);
	return st;
}

static struct store *open_store(void)
{
	struct store *st = NULL;
	char err[256] = "";

	ck_assert_msg(store_open(dbpath, &st, err, sizeof(err)) == 0, "%s", err);
	ck_assert_ptr_nonnull(st);
	return st;
}

/* A second, foreign connection to the file, as an analysis job has it. */
static sqlite3 *open_foreign(int flags)
{
	sqlite3 *db = NULL;

	ck_assert_int_eq(sqlite3_open_v2(dbpath, &db, flags, NULL), SQLITE_OK);
	return db;
}

static int64_t foreign_int(sqlite3 *db, const char *sql)
{
	sqlite3_stmt *s = NULL;
	int64_t v;

	ck_assert_msg(sqlite3_prepare_v2(db, sql, -1, &s, NULL) == SQLITE_OK, "%s: %s",
		      sql, sqlite3_errmsg(db));
	ck_assert_int_eq(sqlite3_step(s), SQLITE_ROW);
	v = sqlite3_column_int64(s, 0);
	sqlite3_finalize(s);
	return v;
}

static int64_t file_int(const char *sql)
{
	sqlite3 *db = open_foreign(SQLITE_OPEN_READONLY);
	int64_t v = foreign_int(db, sql);

	sqlite3_close(db);
	return v;
}

/* ---- records --------------------------------------------------------- */

static struct rec *mkrec(const char *topic, const void *payload, size_t len, int64_t rev)
{
	struct rec *r = index_add(tix, topic, strlen(topic), NULL, 0, 0);

	ck_assert_ptr_nonnull(r);
	if (len)
		ck_assert_int_eq(rec_set_payload(r, payload, len), 0);
	r->ts_ns = 1795313402123456789LL + rev;
	r->received_ms = 1795313402130LL + rev;
	r->last_seen_ms = 1795313412131LL + rev;
	r->rev = rev;
	r->updates = 1;
	return r;
}


/* store_write of the records' rows, as the mirror converts them. */
static int write_recs(struct store *st, struct rec *const *v, size_t n, char *err, size_t errlen)
{
	struct store_row *rows = calloc(n, sizeof(*rows));
	int rc;

	ck_assert_ptr_nonnull(rows);
	for (size_t i = 0; i < n; i++)
		rows_from_rec(tix, v[i], &rows[i]);
	rc = store_write(st, rows, n, err, errlen);
	free(rows);
	return rc;
}

static void write_ok(struct store *st, struct rec **v, size_t n)
{
	char err[256] = "";

	ck_assert_msg(write_recs(st, v, n, err, sizeof(err)) == 0, "%s", err);
}

/* Load the file into a fresh index through a fresh store. */
static struct index *load_all(int64_t *ret_rev)
{
	struct store *st = open_store();
	struct index *ix = index_new();
	char err[256] = "";
	int64_t rev = -1;

	ck_assert_ptr_nonnull(ix);
	ck_assert_msg(rows_load(st, ix, INT64_MIN, &rev, err, sizeof(err)) == 0, "%s", err);
	store_close(st);
	if (ret_rev)
		*ret_rev = rev;
	return ix;
}

/* a: a record of the test's index; b: its copy loaded into ixb. */
static void assert_same(const struct rec *a, const struct rec *b, const struct index *ixb)
{
	(void)ixb;
	ck_assert_str_eq(rec_topic(a), rec_topic(b));
	ck_assert_uint_eq(a->topic_len, b->topic_len);
	ck_assert_int_eq(a->ts_ns, b->ts_ns);
	ck_assert_int_eq(a->received_ms, b->received_ms);
	ck_assert_int_eq(a->last_seen_ms, b->last_seen_ms);
	ck_assert_int_eq(a->rev, b->rev);
	ck_assert_int_eq(a->stale_since_ms, b->stale_since_ms);
	ck_assert_uint_eq(a->updates, b->updates);
	ck_assert_uint_eq(a->cadence_ms, b->cadence_ms);
	ck_assert_uint_eq(a->cadence_source, b->cadence_source);
	ck_assert_uint_eq(a->flags & ~(REC_DIRTY | REC_IN_FILE), b->flags & ~REC_IN_FILE);
	/* The learner's counts come back with its estimate (cadence_ms,
	 * above); its anchor does not (an interval never spans a restart). */
	ck_assert_uint_eq(a->learn, b->learn);
	ck_assert_uint_eq(b->learn_lag, 0);
	/* Payloads stay in the file: the record keeps length and hash. */
	ck_assert_uint_eq(a->payload_len, b->payload_len);
	if (a->payload_len) {
		ck_assert(b->flags & REC_IN_FILE);
		ck_assert(b->payload_hash == rec_payload_hash(a->payload, a->payload_len));
	} else {
		ck_assert(!(b->flags & REC_IN_FILE));
		ck_assert_ptr_null(b->payload);
	}
	ck_assert_uint_eq(b->heap_idx, UINT32_MAX);
}

/* ---- tests ----------------------------------------------------------- */

START_TEST(test_create_migrates)
{
	struct store *st = open_store();
	sqlite3 *db;

	ck_assert_int_ge(store_schema_version(), 1);
	ck_assert_int_eq(file_int("PRAGMA user_version"), store_schema_version());
	db = open_foreign(SQLITE_OPEN_READONLY);
	ck_assert_int_eq(foreign_int(db, "SELECT count(*) FROM sqlite_schema "
				     "WHERE type = 'view' AND name IN ('keys', 'stale_keys')"), 2);
	ck_assert_int_eq(foreign_int(db, "SELECT count(*) FROM keys"), 0);
	sqlite3_close(db);
	store_close(st);

	/* WAL is a property of the file, so foreign readers see it too. */
	db = open_foreign(SQLITE_OPEN_READONLY);
	{
		sqlite3_stmt *s = NULL;

		ck_assert_int_eq(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &s, NULL),
				 SQLITE_OK);
		ck_assert_int_eq(sqlite3_step(s), SQLITE_ROW);
		ck_assert_str_eq((const char *)sqlite3_column_text(s, 0), "wal");
		sqlite3_finalize(s);
	}
	sqlite3_close(db);

	/* Reopening an up-to-date file migrates nothing and loses nothing. */
	st = open_store();
	{
		struct rec *r = mkrec("a/b", "1", 1, 5);

		write_ok(st, &r, 1);
	}
	store_close(st);
	st = open_store();
	store_close(st);
	ck_assert_int_eq(file_int("PRAGMA user_version"), store_schema_version());
	ck_assert_int_eq(file_int("SELECT count(*) FROM keys"), 1);
}
END_TEST

START_TEST(test_round_trip)
{
	static const unsigned char binary[] = { 0x00, 0xff, 0xfe, 'a', 0x00, 0x80, 0xc3, 0x28 };
	const char *json = "{\"value\": 24.5, \"ts\": 1795313402123}";
	size_t biglen = 256 * 1024;
	unsigned char *big = malloc(biglen);
	struct rec *v[6];
	struct store *st;
	struct index *ix;
	int64_t rev;

	ck_assert_ptr_nonnull(big);
	for (size_t i = 0; i < biglen; i++)
		big[i] = (unsigned char)(i * 7919u >> 3);

	v[0] = mkrec("dc1/hall2/rack17/temp", json, strlen(json), 11);
	v[0]->flags = REC_TS_PAYLOAD | REC_IS_JSON | REC_STALE | REC_DIRTY;
	v[0]->stale_since_ms = 1795313999000LL;
	v[0]->learn_lag = 77;
	v[0]->updates = 4000000000u;
	v[0]->cadence_ms = 10000;
	v[0]->cadence_source = CADENCE_LEARNED;
	v[0]->learn = 0xff;

	v[1] = mkrec("bin/\xc3\xa9t\xc3\xa9", binary, sizeof(binary), 12);
	v[1]->flags = REC_RETAINED;
	v[1]->cadence_ms = 60000;
	v[1]->cadence_source = CADENCE_RULE;

	v[2] = mkrec("big", big, biglen, 13);
	v[2]->cadence_source = CADENCE_DEFAULT;
	v[2]->cadence_ms = 1;

	v[3] = mkrec("gone", NULL, 0, 99);  /* a tombstone */
	v[3]->flags = REC_DELETED;
	v[3]->updates = 3;

	v[4] = mkrec("$SYS/x", "x", 1, 14);
	v[4]->flags = REC_NO_STALE;
	v[4]->cadence_ms = UINT32_MAX; /* still learning: the estimate, not served */
	v[4]->learn = 2;

	v[5] = mkrec("n", "not json \xff", 10, 15);
	v[5]->ts_ns = -5;  /* nothing stops a negative time from round-tripping */

	st = open_store();
	write_ok(st, v, 6);
	store_close(st);

	ix = load_all(&rev);
	ck_assert_int_eq(rev, 99);
	ck_assert_uint_eq(index_size(ix), 6);
	ck_assert_uint_eq(index_live(ix), 5);
	for (int i = 0; i < 6; i++) {
		struct rec *got = index_get(ix, rec_topic(v[i]), v[i]->topic_len);

		ck_assert_msg(got != NULL, "%s not loaded", rec_topic(v[i]));
		assert_same(v[i], got, ix);
	}
	index_free(ix);

	/* An update overwrites in place: a key comes back once, as written last. */
	v[0]->rev = 100;
	v[0]->flags = REC_RETAINED;
	v[0]->stale_since_ms = 0;
	v[0]->learn = 1;
	ck_assert_int_eq(rec_set_payload(v[0], "2", 1), 0);
	v[3]->flags = 0;  /* the deleted key comes back */
	ck_assert_int_eq(rec_set_payload(v[3], "back", 4), 0);
	v[3]->rev = 101;
	v[1]->flags = REC_DELETED;  /* and this one goes */
	ck_assert_int_eq(rec_set_payload(v[1], NULL, 0), 0);
	v[1]->rev = 102;
	st = open_store();
	write_ok(st, v, 2);
	write_ok(st, v + 3, 1);
	store_close(st);

	ix = load_all(&rev);
	ck_assert_int_eq(rev, 102);
	ck_assert_uint_eq(index_size(ix), 6);
	ck_assert_uint_eq(index_live(ix), 5);
	for (int i = 0; i < 6; i++)
		assert_same(v[i], index_get(ix, rec_topic(v[i]), v[i]->topic_len), ix);
	index_free(ix);
	ck_assert_int_eq(file_int("SELECT count(*) FROM rec"), 6);

	free(big);
}
END_TEST

START_TEST(test_empty_file_loads_nothing)
{
	int64_t rev = -1;
	struct index *ix = load_all(&rev);

	ck_assert_int_eq(rev, 0);
	ck_assert_uint_eq(index_size(ix), 0);
	index_free(ix);
}
END_TEST

/* The revision counter never goes back, even if the highest row is
 * rewritten with a lower rev (it cannot today; a purge could). */
START_TEST(test_rev_high_water_mark)
{
	struct store *st = open_store();
	struct rec *r = mkrec("k", "v", 1, 500);
	int64_t rev;
	struct index *ix;

	write_ok(st, &r, 1);
	r->rev = 7;
	write_ok(st, &r, 1);
	store_close(st);
	ix = load_all(&rev);
	ck_assert_int_eq(rev, 500);
	ck_assert_int_eq(index_get(ix, "k", 1)->rev, 7);
	index_free(ix);
}
END_TEST

START_TEST(test_views)
{
	const char *json = "{\"value\":21.5,\"ts\":1795313402}";
	static const unsigned char binary[] = { 0x01, 0x00, 0xff };
	struct store *st = open_store();
	struct rec *v[4];
	sqlite3_stmt *s = NULL;
	sqlite3 *db;
	static const char *const cols[] = { "topic", "payload", "ts_ms", "received_ms",
		"last_seen_ms", "retained", "updates", "cadence_ms", "stale" };

	v[0] = mkrec("a/fresh", json, strlen(json), 1);
	v[0]->flags = REC_RETAINED | REC_IS_JSON | REC_TS_PAYLOAD;
	v[0]->cadence_ms = 10000;
	v[0]->cadence_source = CADENCE_RULE;
	v[0]->updates = 17;
	v[1] = mkrec("a/stale", binary, sizeof(binary), 2);
	v[1]->flags = REC_STALE;
	v[1]->stale_since_ms = 1795313500000LL;
	v[2] = mkrec("a/deleted", NULL, 0, 3);
	v[2]->flags = REC_DELETED | REC_STALE;
	v[3] = mkrec("b/deleted-was-retained", NULL, 0, 4);
	v[3]->flags = REC_DELETED | REC_RETAINED;
	write_ok(st, v, 4);

	db = open_foreign(SQLITE_OPEN_READONLY);
	ck_assert_int_eq(sqlite3_prepare_v2(db, "SELECT * FROM keys ORDER BY topic", -1, &s,
					    NULL), SQLITE_OK);
	ck_assert_int_eq(sqlite3_column_count(s), 9);
	for (int i = 0; i < 9; i++)
		ck_assert_str_eq(sqlite3_column_name(s, i), cols[i]);

	ck_assert_int_eq(sqlite3_step(s), SQLITE_ROW);
	ck_assert_str_eq((const char *)sqlite3_column_text(s, 0), "a/fresh");
	ck_assert_int_eq(sqlite3_column_type(s, 1), SQLITE_TEXT);
	ck_assert_str_eq((const char *)sqlite3_column_text(s, 1), json);
	ck_assert_int_eq(sqlite3_column_int64(s, 2), 1795313402123LL);
	ck_assert_int_eq(sqlite3_column_int64(s, 3), 1795313402131LL);
	ck_assert_int_eq(sqlite3_column_int64(s, 4), 1795313412132LL);
	ck_assert_int_eq(sqlite3_column_int64(s, 5), 1);
	ck_assert_int_eq(sqlite3_column_int64(s, 6), 17);
	ck_assert_int_eq(sqlite3_column_int64(s, 7), 10000);
	ck_assert_int_eq(sqlite3_column_int64(s, 8), 0);

	ck_assert_int_eq(sqlite3_step(s), SQLITE_ROW);
	ck_assert_str_eq((const char *)sqlite3_column_text(s, 0), "a/stale");
	ck_assert_int_eq(sqlite3_column_type(s, 1), SQLITE_BLOB);
	ck_assert_int_eq(sqlite3_column_bytes(s, 1), sizeof(binary));
	ck_assert_mem_eq(sqlite3_column_blob(s, 1), binary, sizeof(binary));
	ck_assert_int_eq(sqlite3_column_int64(s, 5), 0);
	ck_assert_int_eq(sqlite3_column_type(s, 7), SQLITE_NULL); /* cadence unknown */
	ck_assert_int_eq(sqlite3_column_int64(s, 8), 1);

	ck_assert_int_eq(sqlite3_step(s), SQLITE_DONE); /* tombstones are not keys */
	sqlite3_finalize(s);

	ck_assert_int_eq(foreign_int(db, "SELECT count(*) FROM stale_keys"), 1);
	ck_assert_int_eq(foreign_int(db, "SELECT count(*) FROM stale_keys "
				     "WHERE topic = 'a/stale' AND stale = 1"), 1);
	/* JSON payloads are TEXT so that SQLite's json functions work on them. */
	ck_assert_int_eq(foreign_int(db, "SELECT json_extract(payload, '$.value') * 10 "
				     "FROM keys WHERE topic = 'a/fresh'"), 215);
	sqlite3_close(db);

	/* The stale flag follows the record when it is written again. */
	v[1]->flags = 0;
	v[0]->flags |= REC_STALE;
	write_ok(st, v, 2);
	ck_assert_int_eq(file_int("SELECT count(*) FROM stale_keys WHERE topic = 'a/fresh'"), 1);
	ck_assert_int_eq(file_int("SELECT count(*) FROM stale_keys"), 1);
	store_close(st);
}
END_TEST

START_TEST(test_reader_during_writes)
{
	struct store *st = open_store();
	struct rec *v[100];
	char topic[32];
	sqlite3_stmt *s = NULL;
	sqlite3 *db;
	char err[256] = "";

	for (int i = 0; i < 100; i++) {
		snprintf(topic, sizeof(topic), "t/%03d", i);
		v[i] = mkrec(topic, "1", 1, i + 1);
	}
	write_ok(st, v, 50);

	/* A reader in the middle of a long read transaction, as `sqlite3
	 * -readonly` holds one while it prints. */
	db = open_foreign(SQLITE_OPEN_READONLY);
	ck_assert_int_eq(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
	ck_assert_int_eq(foreign_int(db, "SELECT count(*) FROM keys"), 50);
	ck_assert_int_eq(sqlite3_prepare_v2(db, "SELECT topic FROM keys", -1, &s, NULL),
			 SQLITE_OK);
	ck_assert_int_eq(sqlite3_step(s), SQLITE_ROW);

	ck_assert_msg(write_recs(st, v + 50, 50, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(store_checkpoint(st), 0);  /* passive: does not wait */
	for (int i = 0; i < 50; i++)
		v[i]->rev += 1000;
	ck_assert_msg(write_recs(st, v, 50, err, sizeof(err)) == 0, "%s", err);

	/* Its snapshot is stable ... */
	ck_assert_int_eq(foreign_int(db, "SELECT count(*) FROM keys"), 50);
	sqlite3_finalize(s);
	ck_assert_int_eq(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
	/* ... and the next one sees everything committed. */
	ck_assert_int_eq(foreign_int(db, "SELECT count(*) FROM keys"), 100);
	ck_assert_int_eq(foreign_int(db, "SELECT max(rev) FROM rec"), 1050);
	sqlite3_close(db);

	ck_assert_int_eq(store_checkpoint(st), 0);
	store_close(st);
}
END_TEST

START_TEST(test_newer_version_refused)
{
	struct store *st = open_store();
	struct store *st2 = (struct store *)&st;  /* a sentinel that must stay */
	char err[256] = "";
	sqlite3 *db;
	int rc;

	store_close(st);
	db = open_foreign(SQLITE_OPEN_READWRITE);
	ck_assert_int_eq(sqlite3_exec(db, "PRAGMA user_version = 999", NULL, NULL, NULL),
			 SQLITE_OK);
	sqlite3_close(db);

	rc = store_open(dbpath, &st2, err, sizeof(err));
	ck_assert_int_eq(rc, -ENOTSUP);
	ck_assert_ptr_eq(st2, (struct store *)&st);
	ck_assert_msg(strstr(err, "newer") && strstr(err, "999"), "err: %s", err);
	ck_assert_int_eq(file_int("PRAGMA user_version"), 999);
}
END_TEST

START_TEST(test_garbage_file_refused)
{
	unsigned char junk[8192], back[sizeof(junk)];
	struct store *st = NULL;
	char err[256] = "";
	int fd, rc;

	for (size_t i = 0; i < sizeof(junk); i++)
		junk[i] = (unsigned char)(i * 31 + 7);
	fd = open(dbpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, junk, sizeof(junk)), (ssize_t)sizeof(junk));
	close(fd);

	rc = store_open(dbpath, &st, err, sizeof(err));
	ck_assert_int_eq(rc, -EINVAL);
	ck_assert_ptr_null(st);
	ck_assert_msg(strstr(err, "not a statemirror database") != NULL, "err: %s", err);

	/* The file is left as it was. */
	fd = open(dbpath, O_RDONLY);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(read(fd, back, sizeof(back)), (ssize_t)sizeof(back));
	close(fd);
	ck_assert_mem_eq(junk, back, sizeof(junk));
}
END_TEST

/* ---- broken files: told apart at open, never touched ------------------ */

static unsigned char *slurp(const char *path, size_t *ret_len)
{
	struct stat sb;
	unsigned char *p;
	int fd = open(path, O_RDONLY);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(fstat(fd, &sb), 0);
	p = malloc((size_t)sb.st_size + 1);
	ck_assert_ptr_nonnull(p);
	ck_assert_int_eq(read(fd, p, (size_t)sb.st_size), sb.st_size);
	close(fd);
	*ret_len = (size_t)sb.st_size;
	return p;
}

static void spill(const char *path, const void *p, size_t n)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, p, n), (ssize_t)n);
	close(fd);
}

static bool exists(const char *path)
{
	struct stat sb;

	return stat(path, &sb) == 0;
}

static bool side_file(const char *sfx)
{
	char p[200];

	snprintf(p, sizeof(p), "%s%s", dbpath, sfx);
	return exists(p);
}

/* The size of dbpath's side file, -1 when there is none. */
static off_t side_size(const char *sfx)
{
	struct stat sb;
	char p[200];

	snprintf(p, sizeof(p), "%s%s", dbpath, sfx);
	return stat(p, &sb) == 0 ? sb.st_size : -1;
}

/* A file of ours with n rows of 3 kB payloads (spans pages), closed:
 * the last close checkpoints and removes the WAL. */
static void make_db(int n)
{
	struct store *st = open_store();
	char payload[3000], topic[32];

	memset(payload, 'q', sizeof(payload));
	for (int i = 0; i < n; i++) {
		struct rec *r;

		snprintf(topic, sizeof(topic), "db/%04d", i);
		r = mkrec(topic, payload, sizeof(payload), i + 1);
		write_ok(st, &r, 1);
	}
	store_close(st);
	ck_assert(!side_file("-wal"));
}

/* store_open refuses the file at dbpath with want, err mentioning what,
 * and leaves it as it was: same bytes, no WAL or shm made beside it (a
 * foreign reader may have left empty ones: they stay as they were). */
static void assert_refused(int want, const char *what)
{
	struct store *st = NULL;
	unsigned char *before, *after;
	size_t n0, n1;
	char err[256] = "";
	off_t wal = side_size("-wal"), shm = side_size("-shm");

	before = slurp(dbpath, &n0);
	ck_assert_int_eq(store_open(dbpath, &st, err, sizeof(err)), want);
	ck_assert_ptr_null(st);
	ck_assert_msg(strstr(err, what) != NULL, "err: %s (want \"%s\")", err, what);
	ck_assert_msg(strstr(err, dbpath) != NULL, "err: %s", err);
	after = slurp(dbpath, &n1);
	ck_assert_uint_eq(n0, n1);
	ck_assert_int_eq(memcmp(before, after, n0), 0);
	ck_assert_int_le(wal, 0);
	ck_assert_int_eq(side_size("-wal"), wal);
	ck_assert_int_eq(side_size("-shm"), shm);
	free(before);
	free(after);
}

START_TEST(test_short_files)
{
	unsigned char *db;
	size_t n;
	struct store *st;

	/* Not even the first bytes of an SQLite header. */
	spill(dbpath, "hello, world\n", 13);
	assert_refused(-EINVAL, "not a statemirror database");
	/* The first 60 bytes of a real one: cut short. */
	unlink(dbpath);
	make_db(1);
	db = slurp(dbpath, &n);
	spill(dbpath, db, 60);
	assert_refused(-ENODATA, "truncated");
	spill(dbpath, db, 10);
	assert_refused(-ENODATA, "truncated");
	free(db);
	/* An empty file is a new database. */
	spill(dbpath, "", 0);
	st = open_store();
	store_close(st);
	ck_assert_int_eq(file_int("PRAGMA user_version"), store_schema_version());
}
END_TEST

START_TEST(test_truncated_refused)
{
	int64_t pages = 0;
	size_t n;
	unsigned char *db;

	make_db(40);
	pages = file_int("PRAGMA page_count");
	ck_assert_int_gt(pages, 40);
	db = slurp(dbpath, &n);
	ck_assert_uint_eq(n % 4096, 0);
	/* Half of it (whole pages), and a page cut in the middle. */
	spill(dbpath, db, n / 2 - (n / 2) % 4096);
	assert_refused(-ENODATA, "truncated");
	spill(dbpath, db, n - 100);
	assert_refused(-ENODATA, "truncated");
	/* Whole again: it opens and loads. */
	spill(dbpath, db, n);
	free(db);
	{
		int64_t rev;
		struct index *ix = load_all(&rev);

		ck_assert_uint_eq(index_size(ix), 40);
		index_free(ix);
	}
}
END_TEST

START_TEST(test_corrupt_refused)
{
	unsigned char *db;
	size_t n;

	make_db(40);
	db = slurp(dbpath, &n);
	/* The schema's page (page 1 after the header) overwritten. */
	{
		unsigned char *bad = malloc(n);

		ck_assert_ptr_nonnull(bad);
		memcpy(bad, db, n);
		memset(bad + 100, 0xff, 200);
		spill(dbpath, bad, n);
		assert_refused(-EBADMSG, "corrupt");
		/* A page size no SQLite writes. */
		memcpy(bad, db, n);
		bad[16] = 0x03;
		bad[17] = 0x00;
		spill(dbpath, bad, n);
		assert_refused(-EBADMSG, "corrupt");
		/* Damage deeper in (the table's pages) shows when the rows are
		 * read: store_load says -EBADMSG too. */
		memcpy(bad, db, n);
		memset(bad + 4096, 0xa5, n - 4096);
		spill(dbpath, bad, n);
		{
			struct store *st = NULL;
			struct index *ix = index_new();
			char err[256] = "";
			int64_t rev;
			int rc = store_open(dbpath, &st, err, sizeof(err));

			ck_assert_ptr_nonnull(ix);
			if (rc == 0) {
				rc = rows_load(st, ix, INT64_MIN, &rev, err, sizeof(err));
				store_close(st);
			}
			ck_assert_msg(rc == -EBADMSG, "rc %d: %s", rc, err);
			index_free(ix);
		}
		free(bad);
	}
	free(db);
}
END_TEST

START_TEST(test_not_ours_refused)
{
	sqlite3 *db;
	struct store *st;

	/* Another application's database (tables, user_version 0). */
	db = open_foreign(SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
	ck_assert_int_eq(sqlite3_exec(db, "CREATE TABLE invoices(id INTEGER PRIMARY KEY);"
				      "INSERT INTO invoices VALUES (1)", NULL, NULL, NULL),
			 SQLITE_OK);
	sqlite3_close(db);
	assert_refused(-EMEDIUMTYPE, "not a statemirror database");
	/* One that sets a user_version of its own, without our tables. */
	db = open_foreign(SQLITE_OPEN_READWRITE);
	ck_assert_int_eq(sqlite3_exec(db, "PRAGMA user_version = 1", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);
	assert_refused(-EMEDIUMTYPE, "without our tables");
	unlink(dbpath);

	/* Ours, marked at open; another application_id is not ours. */
	st = open_store();
	store_close(st);
	ck_assert_int_eq(file_int("PRAGMA application_id"), 0x73746d72);
	db = open_foreign(SQLITE_OPEN_READWRITE);
	ck_assert_int_eq(sqlite3_exec(db, "PRAGMA application_id = 42", NULL, NULL, NULL),
			 SQLITE_OK);
	sqlite3_close(db);
	assert_refused(-EMEDIUMTYPE, "application_id");
	/* A file of ours from before the mark (0) opens, and gets it. */
	db = open_foreign(SQLITE_OPEN_READWRITE);
	ck_assert_int_eq(sqlite3_exec(db, "PRAGMA application_id = 0", NULL, NULL, NULL),
			 SQLITE_OK);
	sqlite3_close(db);
	st = open_store();
	store_close(st);
	ck_assert_int_eq(file_int("PRAGMA application_id"), 0x73746d72);
}
END_TEST

/* ---- setting a file aside --------------------------------------------- */

#define NOW_MS 1795313402123LL /* 2026-11-22T02:10:02.123Z */

static void side(const char *sfx, const char *content)
{
	char p[200];

	snprintf(p, sizeof(p), "%s%s", dbpath, sfx);
	spill(p, content, strlen(content));
}

static void assert_content(const char *path, const char *want)
{
	size_t n;
	unsigned char *p = slurp(path, &n);

	ck_assert_uint_eq(n, strlen(want));
	ck_assert_int_eq(memcmp(p, want, n), 0);
	free(p);
}

START_TEST(test_set_aside)
{
	char got[300], want[300], p[320], err[256] = "";

	side("", "D1");
	side("-wal", "W1");
	side("-shm", "S1");
	ck_assert_msg(store_set_aside(dbpath, NOW_MS, got, sizeof(got), err, sizeof(err)) == 0,
		      "%s", err);
	snprintf(want, sizeof(want), "%s.bad-20261122T021002Z", dbpath);
	ck_assert_str_eq(got, want);
	assert_content(got, "D1");
	snprintf(p, sizeof(p), "%s-wal", got);
	assert_content(p, "W1");
	snprintf(p, sizeof(p), "%s-shm", got);
	assert_content(p, "S1");
	snprintf(p, sizeof(p), "%s-journal", got);
	ck_assert(!exists(p));
	ck_assert(!exists(dbpath) && !side_file("-wal") && !side_file("-shm"));

	/* The same second again: a name of its own, nothing overwritten. */
	side("", "D2");
	side("-journal", "J2");
	ck_assert_msg(store_set_aside(dbpath, NOW_MS + 500, got, sizeof(got), err, sizeof(err)) == 0,
		      "%s", err);
	snprintf(p, sizeof(p), "%s-2", want);
	ck_assert_str_eq(got, p);
	assert_content(got, "D2");
	snprintf(p, sizeof(p), "%s-journal", got);
	assert_content(p, "J2");
	snprintf(p, sizeof(p), "%s.bad-20261122T021002Z", dbpath);
	assert_content(p, "D1");

	/* Nothing there; a name that does not fit: nothing moves. */
	ck_assert_int_eq(store_set_aside(dbpath, NOW_MS, got, sizeof(got), err, sizeof(err)),
			 -ENOENT);
	side("", "D3");
	side("-wal", "W3");
	ck_assert_int_eq(store_set_aside(dbpath, NOW_MS, got, 20, err, sizeof(err)), -ENAMETOOLONG);
	assert_content(dbpath, "D3");
	ck_assert(side_file("-wal"));
}
END_TEST

/* A crash image (database and WAL, as kill -9 leaves them) set aside keeps
 * its WAL beside it: sqlite3 on the moved file sees every commit, and a
 * new database at the old path starts empty. */
START_TEST(test_set_aside_keeps_wal)
{
	char crash[200], p[220], got[300], err[256] = "";
	unsigned char *b;
	size_t n;
	sqlite3 *db;
	struct store *st;

	db = open_foreign(SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
	ck_assert_int_eq(sqlite3_exec(db, "PRAGMA journal_mode = WAL;"
				      "CREATE TABLE t(x); INSERT INTO t VALUES (1), (2), (3)",
				      NULL, NULL, NULL), SQLITE_OK);
	ck_assert(side_file("-wal"));
	snprintf(crash, sizeof(crash), "%s/crash.db", tmpdir);
	b = slurp(dbpath, &n);
	spill(crash, b, n);
	free(b);
	snprintf(p, sizeof(p), "%s-wal", dbpath);
	b = slurp(p, &n);
	ck_assert_uint_gt(n, 0);
	snprintf(p, sizeof(p), "%s-wal", crash);
	spill(p, b, n);
	free(b);
	sqlite3_close(db);
	unlink(dbpath);

	ck_assert_msg(store_set_aside(crash, NOW_MS, got, sizeof(got), err, sizeof(err)) == 0,
		      "%s", err);
	snprintf(p, sizeof(p), "%s-wal", crash);
	ck_assert(!exists(crash) && !exists(p));
	ck_assert_int_eq(sqlite3_open_v2(got, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
	ck_assert_int_eq(foreign_int(db, "SELECT count(*) FROM t"), 3);
	sqlite3_close(db);

	/* And the path is free for a new database of ours. */
	ck_assert_int_eq(store_open(crash, &st, err, sizeof(err)), 0);
	store_close(st);
}
END_TEST

START_TEST(test_unopenable_path)
{
	struct store *st = NULL;
	char err[256] = "";
	char path[200];

	snprintf(path, sizeof(path), "%s/no/such/dir/state.db", tmpdir);
	ck_assert_int_eq(store_open(path, &st, err, sizeof(err)), -ENOENT);
	ck_assert_ptr_null(st);
	ck_assert_msg(strstr(err, path) != NULL, "err: %s", err);
}
END_TEST

START_TEST(test_disk_full)
{
	struct store *st = open_caught();
	unsigned char payload[4000];
	struct rec *v[100];
	char topic[32], err[256] = "";
	int64_t pages, rev;
	struct index *ix;
	int rc;

	memset(payload, 'p', sizeof(payload));
	for (int i = 0; i < 100; i++) {
		snprintf(topic, sizeof(topic), "full/%03d", i);
		v[i] = mkrec(topic, payload, sizeof(payload), i + 1);
	}
	write_ok(st, v, 1);
	pages = foreign_int(caught, "PRAGMA page_count");
	/* No room for the next 99 payloads of 4 kB: SQLITE_FULL. */
	ck_assert_int_eq(foreign_int(caught, "PRAGMA max_page_count = 1"), pages);

	rc = write_recs(st, v + 1, 99, err, sizeof(err));
	ck_assert_int_eq(rc, -ENOSPC);
	ck_assert_msg(strstr(err, "full") != NULL, "err: %s", err);
	ck_assert_int_eq(sqlite3_get_autocommit(caught), 1);  /* no transaction left open */
	ck_assert_int_eq(file_int("SELECT count(*) FROM keys"), 1);
	/* Failing again is just as clean. */
	ck_assert_int_eq(write_recs(st, v + 1, 99, err, sizeof(err)), -ENOSPC);
	ck_assert_int_eq(sqlite3_get_autocommit(caught), 1);

	/* Space comes back: the same call succeeds. */
	ck_assert_int_gt(foreign_int(caught, "PRAGMA max_page_count = 1000000"), pages);
	write_ok(st, v + 1, 99);
	ck_assert_int_eq(sqlite3_get_autocommit(caught), 1);
	store_close(st);

	ix = load_all(&rev);
	ck_assert_uint_eq(index_size(ix), 100);
	ck_assert_int_eq(rev, 100);
	assert_same(v[99], index_get(ix, "full/099", 8), ix);
	index_free(ix);
}
END_TEST

/* A record SQLite refuses in the middle of a batch: nothing of the batch
 * is committed, no transaction stays open, and the retry writes it all. */
START_TEST(test_failed_batch_is_atomic)
{
	struct store *st = open_caught();
	char big[2000], err[256] = "";
	struct rec *v[3];

	memset(big, 'b', sizeof(big));
	v[0] = mkrec("x/1", "1", 1, 1);
	v[1] = mkrec("x/2", big, sizeof(big), 2);
	v[2] = mkrec("x/3", "3", 1, 3);
	sqlite3_limit(caught, SQLITE_LIMIT_LENGTH, 1000);
	ck_assert_int_eq(write_recs(st, v, 3, err, sizeof(err)), -EIO);
	ck_assert_msg(strstr(err, "too big") != NULL, "err: %s", err);
	ck_assert_int_eq(sqlite3_get_autocommit(caught), 1);
	ck_assert_int_eq(file_int("SELECT count(*) FROM rec"), 0);

	sqlite3_limit(caught, SQLITE_LIMIT_LENGTH, 1000000000);
	write_ok(st, v, 3);
	ck_assert_int_eq(file_int("SELECT count(*) FROM keys"), 3);
	store_close(st);
}
END_TEST

START_TEST(test_busy_fails_fast)
{
	struct store *st = open_caught();
	struct rec *r = mkrec("k", "v", 1, 1);
	char err[256] = "";
	struct timespec t0, t1;
	sqlite3 *db;
	double ms;
	int rc;

	write_ok(st, &r, 1);
	/* A foreign writer (not a reader: those never block us) holds the lock. */
	db = open_foreign(SQLITE_OPEN_READWRITE);
	ck_assert_int_eq(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
	r->rev = 2;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	rc = write_recs(st, &r, 1, err, sizeof(err));
	clock_gettime(CLOCK_MONOTONIC, &t1);
	ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
	ck_assert_int_eq(rc, -EBUSY);
	ck_assert_msg(ms < 1000, "store_write waited %.0f ms for a lock", ms);
	ck_assert_int_eq(sqlite3_get_autocommit(caught), 1);

	ck_assert_int_eq(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);
	write_ok(st, &r, 1);
	ck_assert_int_eq(file_int("SELECT rev FROM rec WHERE topic = 'k'"), 2);
	store_close(st);
}
END_TEST

/* The ingest target needs a 10,000-row batch well under 100 ms; the bound
 * here is loose so that sanitizer builds and busy machines pass, and still
 * catches a per-row commit or a missing prepared statement (seconds). */
START_TEST(test_large_batch_updates)
{
	enum { N = 10000 };
	struct store *st = open_store();
	struct rec **v = calloc(N, sizeof(*v));
	char topic[64];
	char payload[64];
	ck_assert_ptr_nonnull(v);
	for (int i = 0; i < N; i++) {
		snprintf(topic, sizeof(topic), "dc1/hall%d/rack%03d/temp", i % 7, i);
		snprintf(payload, sizeof(payload), "{\"value\":%d.5,\"ts\":1795313402}", i);
		v[i] = mkrec(topic, payload, strlen(payload), i + 1);
		v[i]->flags = REC_IS_JSON;
	}
	write_ok(st, v, N);  /* inserts */
	for (int i = 0; i < N; i++)
		v[i]->rev += N;
	write_ok(st, v, N);  /* updates, the steady state (timed in bench/, not here) */
	ck_assert_int_eq(file_int("SELECT count(*) FROM keys"), N);
	ck_assert_int_eq(file_int("SELECT min(rev) FROM rec"), N + 1);
	store_close(st);
	free(v);
}
END_TEST

START_TEST(test_purge_tombstones)
{
	struct store *st = open_store();
	struct rec *v[3];
	char err[256] = "";
	int64_t n = -1;

	v[0] = mkrec("old/deleted", NULL, 0, 1);
	v[0]->flags = REC_DELETED;
	v[1] = mkrec("new/deleted", NULL, 0, 2);
	v[1]->flags = REC_DELETED;
	v[1]->ts_ns += 1000000000LL * 3600 * 48;
	v[2] = mkrec("old/live", "{}", 2, 3);   /* as old, but live: kept */
	write_ok(st, v, 3);
	/* The load forgets the old tombstone (the purge deletes it later)... */
	{
		struct index *ix = index_new();
		int64_t rev = 0;

		ck_assert_ptr_nonnull(ix);
		ck_assert_msg(rows_load(st, ix, v[0]->ts_ns + 10, &rev, err, sizeof(err)) == 0,
			      "%s", err);
		ck_assert_ptr_null(index_get(ix, "old/deleted", 11));
		ck_assert_ptr_nonnull(index_get(ix, "new/deleted", 11));
		ck_assert_ptr_nonnull(index_get(ix, "old/live", 8));
		ck_assert_uint_eq(index_size(ix), 2);
		ck_assert_int_eq(rev, 3);
		ck_assert_uint_eq(store_forgotten(st), 1);
		/* A load that keeps every tombstone forgets none: no purge due. */
		index_free(ix);
		ix = index_new();
		ck_assert_msg(rows_load(st, ix, INT64_MIN, &rev, err, sizeof(err)) == 0, "%s", err);
		ck_assert_uint_eq(store_forgotten(st), 0);
		index_free(ix);
		ix = index_new();
		ck_assert_msg(rows_load(st, ix, v[0]->ts_ns + 10, &rev, err, sizeof(err)) == 0,
			      "%s", err);
		ck_assert_uint_eq(store_forgotten(st), 1);
		index_free(ix);
	}
	/* ... with the same bound. */
	ck_assert_int_eq(store_purge_tombstones(st, v[0]->ts_ns + 10, &n, err, sizeof(err)), 0);
	ck_assert_int_eq(n, 1);
	ck_assert_int_eq(file_int("SELECT count(*) FROM rec WHERE topic = 'old/deleted'"), 0);
	ck_assert_int_eq(file_int("SELECT count(*) FROM rec WHERE topic = 'new/deleted'"), 1);
	ck_assert_int_eq(file_int("SELECT count(*) FROM keys WHERE topic = 'old/live'"), 1);
	store_close(st);
}
END_TEST

/* A load that forgets the tombstones deleted before skip_before_ns. */
static void resume_load(struct store *st, int64_t skip_before_ns)
{
	struct index *ix = index_new();
	int64_t rev = 0;
	char err[256] = "";

	ck_assert_ptr_nonnull(ix);
	ck_assert_msg(rows_load(st, ix, skip_before_ns, &rev, err, sizeof(err)) == 0, "%s", err);
	index_free(ix);
}

/* The revisions a watcher may resume from after a restart (watch.h). */
START_TEST(test_resume_window)
{
	struct store *st = open_store();
	struct rec *v[3];
	char err[256] = "";
	int64_t floor = -1;

	/* A file without the mark (new, or from an older daemon): nothing. */
	ck_assert_int_eq(store_resume_window(st, 0, 0, &floor, err, sizeof(err)), 0);
	ck_assert_int_gt(floor, 0);
	ck_assert_int_eq(store_mark_run(st, 100, err, sizeof(err)), 0);
	v[0] = mkrec("a", "{}", 2, 120);
	v[1] = mkrec("gone", NULL, 0, 130);
	v[1]->flags = REC_DELETED;
	v[2] = mkrec("b", "{}", 2, 140);
	write_ok(st, v, 3);
	/* The previous run began at 100: resumable from there... */
	resume_load(st, 0);
	ck_assert_int_eq(store_resume_window(st, 0, 140, &floor, err, sizeof(err)), 0);
	ck_assert_int_eq(floor, 100);
	/* ... unless the load forgets a newer tombstone: not before its delete. */
	resume_load(st, v[1]->ts_ns + 1);
	ck_assert_int_eq(store_resume_window(st, v[1]->ts_ns + 1, 140, &floor, err, sizeof(err)), 0);
	ck_assert_int_eq(floor, 130);
	/* The mark is the latest run's. */
	ck_assert_int_eq(store_mark_run(st, 140 + (1LL << 32), err, sizeof(err)), 0);
	ck_assert_int_eq(store_resume_window(st, 0, 140, &floor, err, sizeof(err)), 0);
	ck_assert_int_eq(floor, 140 + (1LL << 32));
	store_close(st);
}
END_TEST

static off_t file_size(const char *path)
{
	struct stat sb;

	return stat(path, &sb) == 0 ? sb.st_size : -1;
}

/* Poll (never a bare sleep) until the database file holds at least `want`
 * bytes, i.e. a checkpoint has copied the WAL back; false after 10 s. */
static bool wait_db_size(off_t want)
{
	for (int i = 0; i < 1000; i++) {
		if (file_size(dbpath) >= want)
			return true;
		usleep(10 * 1000);
	}
	return false;
}

/* Commits go to the -wal file; the checkpointer thread copies them into
 * the database file, woken by a growing WAL or by store_checkpoint(). */
START_TEST(test_checkpoints)
{
	struct store *st = open_store();
	size_t biglen = 200 * 1024;
	char *big = malloc(biglen);
	struct rec *v[40];
	char topic[32];
	off_t base;

	ck_assert_ptr_nonnull(big);
	memset(big, 'z', biglen);
	for (int i = 0; i < 40; i++) {
		snprintf(topic, sizeof(topic), "ck/%02d", i);
		v[i] = mkrec(topic, big, biglen, i + 1);
	}
	base = file_size(dbpath);
	ck_assert_int_gt(base, 0);

	/* Small: stays in the WAL until asked. */
	write_ok(st, v, 1);
	ck_assert_int_lt(file_size(dbpath), base + (off_t)biglen);
	ck_assert_int_eq(store_checkpoint(st), 0);
	ck_assert_msg(wait_db_size(base + (off_t)biglen), "store_checkpoint copied nothing");

	/* Large (8 MB, past the WAL threshold): checkpointed unasked. */
	base = file_size(dbpath);
	write_ok(st, v + 1, 39);
	ck_assert_msg(wait_db_size(base + 39 * (off_t)biglen), "no checkpoint after 8 MB");
	ck_assert_int_eq(file_int("SELECT count(*) FROM keys"), 40);

	store_close(st);
	free(big);
}
END_TEST

/*
** store_stage copies a record's state: what store_commit writes is the
** record as it was when staged, whatever changed after (the mirror stages
** under the index lock and commits while ingest goes on). The staging
** buffer is empty after every commit.
*/
START_TEST(test_stage_is_a_snapshot)
{
	struct store *st = open_store();
	struct rec *r = mkrec("snap/a", "{\"v\":1}", 7, 10);
	char err[256] = "";

	r->cadence_ms = 5000;  /* one interval learned */
	r->learn = 1;
	ck_assert_int_eq(rows_stage(st, tix, r), 0);
	ck_assert_uint_eq(store_staged(st), 1);
	/* Ingest changes the record before the write runs. */
	ck_assert_int_eq(rec_set_payload(r, "{\"v\":2, \"much\": \"longer now\"}", 30), 0);
	r->rev = 11;
	r->cadence_ms = 9000;
	ck_assert_msg(store_commit(st, err, sizeof(err)) == 0, "%s", err);
	ck_assert_uint_eq(store_staged(st), 0);
	ck_assert_int_eq(file_int("SELECT rev FROM rec WHERE topic = 'snap/a'"), 10);
	ck_assert_int_eq(file_int("SELECT CAST(payload AS TEXT) = '{\"v\":1}' FROM rec WHERE topic = 'snap/a'"), 1);
	ck_assert_int_eq(file_int("SELECT learn FROM rec WHERE topic = 'snap/a'"), 5000 * 256 + 1);
	ck_assert_int_eq(file_int("SELECT cadence_ms FROM rec WHERE topic = 'snap/a'"), 0); /* not served yet */
	/* Nothing staged: a commit is a no-op. */
	ck_assert_int_eq(store_commit(st, err, sizeof(err)), 0);
	/* The next stage takes the record as it is now. */
	ck_assert_int_eq(rows_stage(st, tix, r), 0);
	ck_assert_msg(store_commit(st, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(file_int("SELECT rev FROM rec WHERE topic = 'snap/a'"), 11);
	ck_assert_int_eq(file_int("SELECT length(payload) FROM rec WHERE topic = 'snap/a'"), 30);
	/* The payload reads back through this thread's reader... */
	{
		struct rec *none = mkrec("snap/none", NULL, 0, 1);
		const void *p;
		size_t n;

		ck_assert_int_eq(store_fetch_payload(st, rec_topic(r), r->topic_len, &p, &n), 0);
		ck_assert_uint_eq(n, 30);
		ck_assert_int_eq(memcmp(p, "{\"v\":2, \"much\": \"longer now\"}", 30), 0);
		ck_assert_int_eq(store_fetch_payload(st, rec_topic(none), none->topic_len, &p, &n),
				 -ENOENT);
	}
	/* ... and a record whose payload is in the file is written without
	 * it: only its other fields change. */
	rec_drop_payload(r);
	ck_assert(r->flags & REC_IN_FILE);
	r->rev = 12;
	r->flags |= REC_STALE;
	ck_assert_int_eq(rows_stage(st, tix, r), 0);
	ck_assert_msg(store_commit(st, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(file_int("SELECT rev FROM rec WHERE topic = 'snap/a'"), 12);
	ck_assert_int_eq(file_int("SELECT length(payload) FROM rec WHERE topic = 'snap/a'"), 30);
	ck_assert_int_eq(file_int("SELECT flags & 128 FROM rec WHERE topic = 'snap/a'"), 0);
	store_close(st);
}
END_TEST

/* Payloads read back in a walk's order come from one range scan, started
 * at the first read; rows the walk skips are stepped over, a sparse or
 * backward step seeks, a topic
 * not in the file is ENOENT, and every answer is the right payload. After
 * store_scan_end the next read sees later commits. */
START_TEST(test_scan_reads_in_order)
{
	struct store *st = open_store();
	struct rec *v[26], *none = mkrec("s/zz-none", NULL, 0, 1);
	char t[8], pl[8], err[256] = "";
	const void *p;
	size_t n;
	const int order[] = { 0, 1, 4, 25, 2, 3, 5, 24 };

	for (int i = 0; i < 26; i++) {
		snprintf(t, sizeof(t), "s/%c", 'a' + i);
		snprintf(pl, sizeof(pl), "v-%c", 'a' + i);
		v[i] = mkrec(t, pl, strlen(pl), i + 1);
	}
	write_ok(st, v, 26);
	store_scan(st, "s/", 2);
	for (size_t k = 0; k < sizeof(order) / sizeof(order[0]); k++) {
		int i = order[k];

		snprintf(pl, sizeof(pl), "v-%c", 'a' + i);
		ck_assert_int_eq(store_fetch_payload(st, rec_topic(v[i]), v[i]->topic_len, &p, &n), 0);
		ck_assert_uint_eq(n, 3);
		ck_assert_int_eq(memcmp(p, pl, 3), 0);
	}
	ck_assert_int_eq(store_fetch_payload(st, rec_topic(none), none->topic_len, &p, &n),
			 -ENOENT);
	/* Back to a topic the scan passed: a seek, the right bytes. */
	ck_assert_int_eq(store_fetch_payload(st, rec_topic(v[7]), v[7]->topic_len, &p, &n), 0);
	ck_assert_uint_eq(n, 3);
	ck_assert_int_eq(memcmp(p, "v-h", 3), 0);
	store_scan_end(st);
	ck_assert_int_eq(rec_set_payload(v[0], "w-a!", 4), 0);
	ck_assert_int_eq(rows_stage(st, tix, v[0]), 0);
	ck_assert_msg(store_commit(st, err, sizeof(err)) == 0, "%s", err);
	store_scan(st, NULL, 0);
	ck_assert_int_eq(store_fetch_payload(st, rec_topic(v[0]), v[0]->topic_len, &p, &n), 0);
	ck_assert_uint_eq(n, 4);
	ck_assert_int_eq(memcmp(p, "w-a!", 4), 0);
	store_scan_end(st);
	store_scan_end(st); /* twice: no-op */
	/* The scan starts where the first read is, deep in the range; a hold
	 * that reads nothing leaves no scan behind. */
	store_scan(st, "s/", 2);
	store_scan_end(st);
	store_scan(st, "s/", 2);
	for (int i = 20; i < 23; i++) {
		snprintf(pl, sizeof(pl), "v-%c", 'a' + i);
		ck_assert_int_eq(store_fetch_payload(st, rec_topic(v[i]), v[i]->topic_len, &p, &n), 0);
		ck_assert_uint_eq(n, 3);
		ck_assert_int_eq(memcmp(p, pl, 3), 0);
	}
	store_scan_end(st);
	/* The end let go of the scan's read transaction: a read outside any
	 * scan sees the next commit. */
	ck_assert_int_eq(rec_set_payload(v[21], "w-v!", 4), 0);
	ck_assert_int_eq(rows_stage(st, tix, v[21]), 0);
	ck_assert_msg(store_commit(st, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(store_fetch_payload(st, rec_topic(v[21]), v[21]->topic_len, &p, &n), 0);
	ck_assert_uint_eq(n, 4);
	ck_assert_int_eq(memcmp(p, "w-v!", 4), 0);
	/* A scan left without its end is ended by the next one. */
	store_scan(st, "s/", 2);
	ck_assert_int_eq(store_fetch_payload(st, rec_topic(v[22]), v[22]->topic_len, &p, &n), 0);
	store_scan(st, "s/", 2);
	store_scan_end(st);
	ck_assert_int_eq(rec_set_payload(v[22], "w-w!", 4), 0);
	ck_assert_int_eq(rows_stage(st, tix, v[22]), 0);
	ck_assert_msg(store_commit(st, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(store_fetch_payload(st, rec_topic(v[22]), v[22]->topic_len, &p, &n), 0);
	ck_assert_uint_eq(n, 4);
	ck_assert_int_eq(memcmp(p, "w-w!", 4), 0);
	store_close(st);
}
END_TEST

/* ---- rows, without an index --------------------------------------------- */

/* What store_load handed over: copies of the rows (their pointers die
 * with the call). */
struct got {
	struct store_row row[8];
	char topic[8][32];
	char payload[8][32];
	int n;
	int fail_at;  /* return -ENOMEM at this row (1-based), 0 never */
};

static int collect(void *ctx, const struct store_row *row)
{
	struct got *g = ctx;

	if (g->fail_at && g->n + 1 == g->fail_at)
		return -ENOMEM;
	ck_assert_int_lt(g->n, 8);
	ck_assert_uint_lt(row->topic_len, sizeof(g->topic[0]));
	ck_assert_uint_lt(row->payload_len, sizeof(g->payload[0]));
	g->row[g->n] = *row;
	memcpy(g->topic[g->n], row->topic, row->topic_len);
	g->topic[g->n][row->topic_len] = '\0';
	if (row->payload)
		memcpy(g->payload[g->n], row->payload, row->payload_len);
	g->payload[g->n][row->payload_len] = '\0';
	g->n++;
	return 0;
}

/* The store knows rows, not records: every field of a row it is given
 * comes back as written, the learner's state as its fields (a learn
 * column that is not one as none), a cadence source as stored (the reader checks
 * it); a kept payload stays; the callback's error stops the load. */
START_TEST(test_rows_round_trip)
{
	struct store_row w[3] = {
		{ .topic = "r/json", .topic_len = 6, .payload = "{\"a\":1}", .payload_len = 7,
		  .ts_ns = -3, .received_ms = 4, .last_seen_ms = 5, .rev = 6,
		  .stale_since_ms = 7, .cadence_source = 200,
		  .updates = 9, .cadence_ms = 10, .flags = STORE_IS_JSON | 8 | 64,
		  .learn_ms = UINT32_MAX, .learn = 0xfe },
		{ .topic = "r/bin", .topic_len = 5, .payload = "b\0n", .payload_len = 3,
		  .rev = 2, .flags = 1 },
		{ .topic = "r/tomb", .topic_len = 6, .payload = "ignored", .payload_len = 7,
		  .ts_ns = 100, .rev = 3, .flags = STORE_DELETED },
	};
	struct got g = { .n = 0 };
	struct store *st = open_store();
	char err[256] = "";
	int64_t rev = -1;

	ck_assert_msg(store_write(st, w, 3, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(file_int("SELECT typeof(payload) = 'text' FROM rec WHERE topic = 'r/json'"), 1);
	ck_assert_int_eq(file_int("SELECT typeof(payload) = 'blob' FROM rec WHERE topic = 'r/bin'"), 1);
	ck_assert_int_eq(file_int("SELECT payload IS NULL FROM rec WHERE topic = 'r/tomb'"), 1);
	ck_assert_msg(store_load(st, INT64_MIN, collect, &g, &rev, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(rev, 6);
	ck_assert_int_eq(g.n, 3);
	/* topic order */
	ck_assert_str_eq(g.topic[0], "r/bin");
	ck_assert_str_eq(g.topic[1], "r/json");
	ck_assert_str_eq(g.topic[2], "r/tomb");
	ck_assert_uint_eq(g.row[0].payload_len, 3);
	ck_assert_mem_eq(g.payload[0], "b\0n", 3);
	ck_assert_uint_eq(g.row[0].learn, 0);
	ck_assert_uint_eq(g.row[0].learn_ms, 0);
	ck_assert_uint_eq(g.row[0].flags, 1);
	ck_assert_str_eq(g.payload[1], "{\"a\":1}");
	ck_assert_int_eq(g.row[1].ts_ns, -3);
	ck_assert_int_eq(g.row[1].received_ms, 4);
	ck_assert_int_eq(g.row[1].last_seen_ms, 5);
	ck_assert_int_eq(g.row[1].rev, 6);
	ck_assert_int_eq(g.row[1].stale_since_ms, 7);
	ck_assert_int_eq(g.row[1].cadence_source, 200);
	ck_assert_uint_eq(g.row[1].updates, 9);
	ck_assert_uint_eq(g.row[1].cadence_ms, 10);
	ck_assert_uint_eq(g.row[1].flags, STORE_IS_JSON | 8 | 64);
	ck_assert_uint_eq(g.row[1].learn, 0xfe);
	ck_assert_uint_eq(g.row[1].learn_ms, UINT32_MAX);
	ck_assert(!g.row[1].payload_kept);
	ck_assert_ptr_null(g.row[2].payload);
	ck_assert_uint_eq(g.row[2].payload_len, 0);

	/* A kept payload: the other columns change, the payload stays. */
	w[1].payload = NULL;
	w[1].payload_len = 0;
	w[1].payload_kept = true;
	w[1].rev = 12;
	ck_assert_msg(store_write(st, &w[1], 1, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(file_int("SELECT rev * (length(payload) = 3) FROM rec WHERE topic = 'r/bin'"),
			 12);

	/* A learn column the store cannot read is no learning state. */
	{
		sqlite3 *db = open_foreign(SQLITE_OPEN_READWRITE);

		ck_assert_int_eq(sqlite3_exec(db, "UPDATE rec SET learn = x'0380' "
					      "WHERE topic = 'r/json'", NULL, NULL, NULL), SQLITE_OK);
		ck_assert_int_eq(sqlite3_exec(db, "UPDATE rec SET learn = -1 "
					      "WHERE topic = 'r/bin'", NULL, NULL, NULL), SQLITE_OK);
		sqlite3_close(db);
	}
	/* Old tombstones are skipped; the callback's error stops the load. */
	memset(&g, 0, sizeof(g));
	ck_assert_msg(store_load(st, 101, collect, &g, &rev, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(g.n, 2);
	ck_assert_int_eq(rev, 12);
	ck_assert_uint_eq(g.row[0].learn, 0); /* -1: not ours */
	ck_assert_uint_eq(g.row[1].learn, 0); /* a blob: not ours */
	ck_assert_uint_eq(g.row[1].learn_ms, 0);
	memset(&g, 0, sizeof(g));
	g.fail_at = 2;
	ck_assert_int_eq(store_load(st, INT64_MIN, collect, &g, &rev, err, sizeof(err)), -ENOMEM);
	ck_assert_int_eq(g.n, 1);
	ck_assert_msg(strstr(err, "out of memory") != NULL, "err: %s", err);
	store_close(st);

	/* Through the mirror's reader: a cadence source out of range is none. */
	{
		struct index *ix = load_all(&rev);
		struct rec *r = index_get(ix, "r/json", 6);

		ck_assert_ptr_nonnull(r);
		ck_assert_uint_eq(r->cadence_source, CADENCE_NONE);
		ck_assert_uint_eq(r->learn, 0);
		ck_assert(r->flags & REC_IN_FILE);
		ck_assert_uint_eq(r->flags & ~(unsigned)REC_IN_FILE, REC_IS_JSON | REC_STALE | REC_NO_STALE);
		index_free(ix);
	}
}
END_TEST

/* What a large load handed over, checked as it comes. */
struct order {
	int n, fail_at;
	char prev[32];
	size_t big;          /* the length of the big payload seen, 0 none */
	bool bad;
};

static int in_order(void *ctx, const struct store_row *row)
{
	struct order *o = ctx;
	char want[48];

	if (o->fail_at && o->n + 1 == o->fail_at)
		return -EIO;
	if (row->topic_len >= sizeof(o->prev) ||
	    (o->n && memcmp(row->topic, o->prev, row->topic_len) <= 0))
		o->bad = true;
	memcpy(o->prev, row->topic, row->topic_len);
	o->prev[row->topic_len] = '\0';
	if (row->payload_len > 4096) {
		for (size_t i = 0; i < row->payload_len; i++)
			if (((const unsigned char *)row->payload)[i] != (unsigned char)(i * 7))
				o->bad = true;
		o->big = row->payload_len;
	} else {
		snprintf(want, sizeof(want), "v=%s", o->prev);
		if (row->payload_len != strlen(want) || memcmp(row->payload, want, row->payload_len))
			o->bad = true;
	}
	o->n++;
	return 0;
}

/*
** The load comes in batches from a reader thread: thousands of rows (more
** batches than are ever in flight) and one payload bigger than a batch
** arrive whole and in topic order, old tombstones are skipped, and the
** callback's error stops the reader at any point (no thread left waiting).
*/
START_TEST(test_load_in_batches)
{
	enum { N = 7000, BIG = 3 << 20 };
	struct store_row *w = calloc(N + 1, sizeof(*w));
	char (*topic)[24] = calloc(N + 1, sizeof(*topic));
	char (*payload)[32] = calloc(N + 1, sizeof(*payload));
	unsigned char *big = malloc(BIG);
	struct store *st = open_store();
	struct order o = { 0 };
	char err[256] = "";
	int64_t rev = 0;

	ck_assert(w && topic && payload && big);
	for (size_t i = 0; i < BIG; i++)
		big[i] = (unsigned char)(i * 7);
	for (int i = 0; i <= N; i++) {
		snprintf(topic[i], sizeof(topic[i]), "b/%06d", i);
		snprintf(payload[i], sizeof(payload[i]), "v=%s", topic[i]);
		w[i] = (struct store_row){ .topic = topic[i], .topic_len = (uint16_t)strlen(topic[i]),
					   .payload = payload[i],
					   .payload_len = (uint32_t)strlen(payload[i]),
					   .rev = i + 1, .ts_ns = 1000 };
		if (i % 1000 == 999) /* an old tombstone: forgotten */
			w[i].flags = STORE_DELETED, w[i].ts_ns = 10;
	}
	w[N / 2].payload = big;
	w[N / 2].payload_len = BIG;
	ck_assert_msg(store_write(st, w, N + 1, err, sizeof(err)) == 0, "%s", err);

	ck_assert_msg(store_load(st, 100, in_order, &o, &rev, err, sizeof(err)) == 0, "%s", err);
	ck_assert_int_eq(o.n, N + 1 - 7);
	ck_assert(!o.bad);
	ck_assert_uint_eq(o.big, BIG);
	ck_assert_str_eq(o.prev, "b/007000");
	ck_assert_int_eq(rev, N + 1);

	/* A failure early, in the middle and at the very last row. */
	for (int k = 0; k < 3; k++) {
		int at = k == 0 ? 1 : k == 1 ? 4500 : N + 1 - 7;

		memset(&o, 0, sizeof(o));
		o.fail_at = at;
		err[0] = '\0';
		ck_assert_int_eq(store_load(st, 100, in_order, &o, &rev, err, sizeof(err)), -EIO);
		ck_assert_int_eq(o.n, at - 1);
		ck_assert_msg(strstr(err, "load: b/") != NULL, "err: %s", err);
	}
	store_close(st);
	free(w);
	free(topic);
	free(payload);
	free(big);
}
END_TEST

static Suite *store_suite(void)
{
	Suite *s = suite_create("store");
	TCase *tc = tcase_create("store");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_create_migrates);
	tcase_add_test(tc, test_load_in_batches);
	tcase_add_test(tc, test_round_trip);
	tcase_add_test(tc, test_rows_round_trip);
	tcase_add_test(tc, test_stage_is_a_snapshot);
	tcase_add_test(tc, test_scan_reads_in_order);
	tcase_add_test(tc, test_empty_file_loads_nothing);
	tcase_add_test(tc, test_rev_high_water_mark);
	tcase_add_test(tc, test_views);
	tcase_add_test(tc, test_reader_during_writes);
	tcase_add_test(tc, test_newer_version_refused);
	tcase_add_test(tc, test_garbage_file_refused);
	tcase_add_test(tc, test_short_files);
	tcase_add_test(tc, test_truncated_refused);
	tcase_add_test(tc, test_corrupt_refused);
	tcase_add_test(tc, test_not_ours_refused);
	tcase_add_test(tc, test_set_aside);
	tcase_add_test(tc, test_set_aside_keeps_wal);
	tcase_add_test(tc, test_unopenable_path);
	tcase_add_test(tc, test_disk_full);
	tcase_add_test(tc, test_failed_batch_is_atomic);
	tcase_add_test(tc, test_busy_fails_fast);
	tcase_add_test(tc, test_large_batch_updates);
	tcase_add_test(tc, test_purge_tombstones);
	tcase_add_test(tc, test_resume_window);
	tcase_add_test(tc, test_checkpoints);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(store_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
