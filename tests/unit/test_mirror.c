/* SPDX-License-Identifier: MIT */
/* test_mirror.c: the keeper thread: writes within commit_interval, failed writes kept dirty and retried, deadlines, readiness after the link. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/conf.h"
#include "common/log.h"
#include "common/stats.h"
#include "mirror/mirror.h"
#include "store/store.h"
#include "clock_fake.h"

/*
** The keeper runs on its own thread and reads its time through the fake
** clock (clock_fake.c, as mirror_deps.clk) that only the test moves. Every check follows
** mirror_wait_turn(): the keeper has then made a whole turn with the time
** as the test set it, so what it did (or did not do) is final for that
** time. Nothing here sleeps: the waits are on the keeper's turns, and in
** the readiness test on the session's link callback.
*/

#define TURN_MS 5000     /* a turn, at most (a write on a locked file waits 100 ms) */
#define LINK_MS 15000    /* a real broker's session to (re)sync */
#define MOSQUITTO_BIN "/usr/sbin/mosquitto"

/* ---- the fake clock (clock_fake.c) ---- */

static int64_t wall_ms(void)
{
	return fake_clock.wall_ns(fake_clock.ctx) / 1000000;
}

/* Move the clock by ms and let the keeper make a whole turn at the new time. */
static void advance(struct mirror *m, int64_t ms)
{
	fake_clock_advance(ms);
	ck_assert_int_eq(mirror_wait_turn(m, TURN_MS), 0);
}

/* ---- the world the keeper works on ---- */

static char tmpdir[64], dbpath[128];
static struct conf conf;
static struct store *st;
static sqlite3 *caught;         /* the store's own connection (disk-full test) */
static struct index *ix;
static struct stale *stl;
static struct rejects *rj;
static struct changes *chg;
static struct mqtt *mq;
static struct mirror *mr;
static _Atomic unsigned woken;  /* on_changes calls */
static int64_t seq;             /* makes each message's ts newer than the last */

static int catch_db(sqlite3 *db, char **err, const void *api)
{
	(void)err;
	(void)api;
	if (!caught)
		caught = db;
	return SQLITE_OK;
}

static void on_changes(void *ctx)
{
	(void)ctx;
	atomic_fetch_add(&woken, 1);
}

static void setup(void)
{
	char err[256] = "";

	ck_assert_int_eq(conf_defaults(&conf), 0);
	memset(&g_stats, 0, sizeof(g_stats));
	log_set_level(LOG_LEVEL_ERROR);
	atomic_store(&woken, 0);
	seq = 0;
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/sm-test-mirror-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
	snprintf(dbpath, sizeof(dbpath), "%s/state.db", tmpdir);
	caught = NULL;
	ck_assert_int_eq(sqlite3_auto_extension((void (*)(void))catch_db), SQLITE_OK);
	ck_assert_msg(store_open(dbpath, &st, err, sizeof(err)) == 0, "%s", err);
	sqlite3_reset_auto_extension();
	ck_assert_ptr_nonnull(caught);
	ix = index_new();
	rj = rejects_new(100);
	chg = changes_new(1024, 0);
	ck_assert(ix && rj && chg);
	mq = NULL;
	mr = NULL;
	stl = NULL;
}

static void teardown(void)
{
	char cmd[160];

	if (mq)
		mqtt_stop(mq);
	mirror_stop(mr);
	mqtt_free(mq);
	stale_free(stl);
	changes_free(chg);
	rejects_free(rj);
	index_free(ix);
	store_close(st);
	conf_free(&conf);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	ck_assert_int_eq(system(cmd), 0);
}

/* Start the keeper over the world, on the fake clock unless clk says otherwise. */
static void start_with(const struct clock_src *clk)
{
	stl = stale_new(&conf, ix, NULL); /* no alert outlet: no alerts are configured */
	ck_assert_ptr_nonnull(stl);
	struct mirror_deps d = { .conf = &conf, .ix = ix, .store = st, .stale = stl, .mqtt = mq,
				 .rejects = rj, .changes = chg, .on_changes = on_changes,
				 .clk = clk };
	ck_assert_int_eq(mirror_start(&d, &mr), 0);
}

static void start(void)
{
	start_with(&fake_clock);
}

/* The configuration's only staleness rule: filter, cadence. */
static void one_rule(const char *filter, int64_t cadence_ms)
{
	conf.rules[0].filter = strdup(filter);
	ck_assert_ptr_nonnull(conf.rules[0].filter);
	conf.rules[0].cadence_ms = cadence_ms;
	conf.nrules = 1;
}

/* One live message at the fake wall time, as the session hands it over. */
static void put(const char *topic, const char *payload)
{
	int64_t now = wall_ms();
	struct msg m = {
		.topic = topic, .topic_len = strlen(topic),
		.payload = payload, .payload_len = strlen(payload),
		.ts_ns = now * 1000000 + ++seq, .recv_ms = now, .is_json = true,
	};

	mirror_ingest(mr, &m, REJECT_NONE, m.payload_len);
}

/* ---- what the file and the index hold ---- */

static sqlite3 *foreign(int flags)
{
	sqlite3 *db = NULL;

	ck_assert_int_eq(sqlite3_open_v2(dbpath, &db, flags, NULL), SQLITE_OK);
	sqlite3_busy_timeout(db, 2000);
	return db;
}

static int64_t file_int(const char *sql)
{
	sqlite3 *db = foreign(SQLITE_OPEN_READONLY);
	sqlite3_stmt *s = NULL;
	int64_t v;

	ck_assert_int_eq(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK);
	ck_assert_int_eq(sqlite3_step(s), SQLITE_ROW);
	v = sqlite3_column_int64(s, 0);
	sqlite3_finalize(s);
	sqlite3_close(db);
	return v;
}

/* The payload the file holds for topic ("" when no row), in buf. */
static const char *file_payload(const char *topic, char *buf, size_t n)
{
	sqlite3 *db = foreign(SQLITE_OPEN_READONLY);
	sqlite3_stmt *s = NULL;

	buf[0] = '\0';
	ck_assert_int_eq(sqlite3_prepare_v2(db, "SELECT payload FROM keys WHERE topic = ?", -1, &s,
					    NULL), SQLITE_OK);
	sqlite3_bind_text(s, 1, topic, -1, SQLITE_STATIC);
	if (sqlite3_step(s) == SQLITE_ROW)
		snprintf(buf, n, "%s", (const char *)sqlite3_column_text(s, 0));
	sqlite3_finalize(s);
	sqlite3_close(db);
	return buf;
}

static void exec_ok(sqlite3 *db, const char *sql)
{
	char *e = NULL;

	ck_assert_msg(sqlite3_exec(db, sql, NULL, NULL, &e) == SQLITE_OK, "%s: %s", sql, e);
}

static uint16_t flags_of(const char *topic)
{
	struct rec *r;
	uint16_t f;

	index_rdlock(ix);
	r = index_get(ix, topic, strlen(topic));
	ck_assert_ptr_nonnull(r);
	f = r->flags;
	index_unlock(ix);
	return f;
}

static int64_t head(void)
{
	int64_t h;

	index_rdlock(ix);
	h = changes_head(chg);
	index_unlock(ix);
	return h;
}

/* The type of the one change logged after rev (-1 if not exactly one). */
static int only_change_after(int64_t rev)
{
	struct change ch[4];
	bool gap = false;
	size_t n;

	index_rdlock(ix);
	n = changes_read(chg, rev, ch, 4, &gap);
	index_unlock(ix);
	ck_assert(!gap);
	return n == 1 ? ch[0].type : -1;
}

static const char *reason(char *buf, size_t n)
{
	mirror_ready(mr, buf, n);
	return buf;
}

/* ---- store writes ---- */

START_TEST(writes_once_per_commit_interval)
{
	char buf[256];

	start();
	put("w/a", "{\"v\":1}");
	put("w/b", "{\"v\":2}");
	mirror_ingest_flush(mr);
	ck_assert_int_eq(mirror_wait_turn(mr, TURN_MS), 0);
	/* In memory at once, in the file one commit_interval after the first
	 * change: not before (one transaction per interval), not later. */
	ck_assert_int_eq(file_int("SELECT count(*) FROM keys"), 0);
	ck_assert(flags_of("w/a") & REC_DIRTY);
	advance(mr, conf.commit_interval_ms - 1);
	ck_assert_int_eq(file_int("SELECT count(*) FROM keys"), 0);
	advance(mr, 1);
	ck_assert_int_eq(file_int("SELECT count(*) FROM keys"), 2);
	ck_assert_str_eq(file_payload("w/a", buf, sizeof(buf)), "{\"v\":1}");
	ck_assert_str_eq(file_payload("w/b", buf, sizeof(buf)), "{\"v\":2}");
	ck_assert(!(flags_of("w/a") & REC_DIRTY));
	ck_assert_uint_eq(STAT_GET(commits), 1);
	ck_assert_uint_eq(STAT_GET(rows_written), 2);

	/* A key changed three times in one interval is written once, newest value. */
	put("w/a", "{\"v\":3}");
	put("w/a", "{\"v\":4}");
	put("w/a", "{\"v\":5}");
	mirror_ingest_flush(mr);
	advance(mr, conf.commit_interval_ms);
	ck_assert_str_eq(file_payload("w/a", buf, sizeof(buf)), "{\"v\":5}");
	ck_assert_uint_eq(STAT_GET(commits), 2);
	ck_assert_uint_eq(STAT_GET(rows_written), 3);
	ck_assert_int_eq(file_int("SELECT max(rev) FROM rec"), 5);
	/* Nothing changed: no empty transactions. */
	advance(mr, 10 * conf.commit_interval_ms);
	ck_assert_uint_eq(STAT_GET(commits), 2);
	ck_assert_uint_eq(STAT_GET(commit_errors), 0);
}
END_TEST

START_TEST(stop_writes_the_backlog)
{
	char name[32];

	start();
	/* More than one write takes (8192 rows): stop writes them all, now. */
	for (int i = 0; i < 10000; i++) {
		snprintf(name, sizeof(name), "b/%05d", i);
		put(name, "{}");
	}
	mirror_ingest_flush(mr);
	mirror_stop(mr);
	mr = NULL;
	ck_assert_int_eq(file_int("SELECT count(*) FROM keys"), 10000);
	ck_assert_uint_ge(STAT_GET(commits), 2);
	ck_assert(!(flags_of("b/09999") & REC_DIRTY));
}
END_TEST

/*
** A reload (or a restart) that changes the cadence of many keys rewrites
** them all, but behind the changes: a chunk at a time, and a stop does not
** wait for them (the next start derives them again).
*/
START_TEST(rederived_rows_yield_to_changes_and_do_not_hold_a_stop)
{
	char name[32], buf[64];
	int64_t done, before;

	one_rule("r/#", 1000);
	conf.grace = 1000;
	start();
	for (int i = 0; i < 20000; i++) {
		snprintf(name, sizeof(name), "r/%05d", i);
		put(name, "{}");
	}
	mirror_ingest_flush(mr);
	for (int i = 0; i < 5; i++)
		advance(mr, conf.commit_interval_ms);
	ck_assert_int_eq(file_int("SELECT count(*) FROM keys WHERE cadence_ms = 1000"), 20000);

	conf.rules[0].cadence_ms = 2000;
	mirror_reload(mr, &conf);
	ck_assert_int_eq(mirror_wait_turn(mr, TURN_MS), 0);
	done = file_int("SELECT count(*) FROM keys WHERE cadence_ms = 2000");
	ck_assert_int_gt(done, 0);
	ck_assert_int_le(done, 8192); /* one chunk a turn */
	ck_assert(flags_of("r/19999") & REC_REDERIVE);

	/* A change made now is written at its commit_interval, whatever the backlog. */
	put("v/x", "{\"v\":1}");
	mirror_ingest_flush(mr);
	advance(mr, conf.commit_interval_ms);
	ck_assert_str_eq(file_payload("v/x", buf, sizeof(buf)), "{\"v\":1}");

	/* A change to a key waiting for its rewrite takes it along, as a change. */
	before = file_int("SELECT count(*) FROM keys WHERE cadence_ms = 2000");
	ck_assert_int_lt(before, 20000);
	put("r/19999", "{\"v\":2}");
	put("v/y", "{\"v\":3}");
	mirror_ingest_flush(mr);
	ck_assert(!(flags_of("r/19999") & REC_REDERIVE));
	mirror_stop(mr);
	mr = NULL;
	/* The stop wrote the changes, not the rest of the backlog. */
	ck_assert_str_eq(file_payload("v/y", buf, sizeof(buf)), "{\"v\":3}");
	ck_assert_str_eq(file_payload("r/19999", buf, sizeof(buf)), "{\"v\":2}");
	ck_assert_int_eq(file_int("SELECT cadence_ms FROM keys WHERE topic = 'r/19999'"), 2000);
	ck_assert_int_lt(file_int("SELECT count(*) FROM keys WHERE cadence_ms = 2000"), 20000);
}
END_TEST

START_TEST(locked_file_keeps_records_dirty_and_retries)
{
	char buf[256];
	sqlite3 *w;

	start();
	put("l/a", "{\"v\":1}");
	mirror_ingest_flush(mr);
	/* A foreign writer holds the write lock: the keeper's write fails. */
	w = foreign(SQLITE_OPEN_READWRITE);
	exec_ok(w, "BEGIN IMMEDIATE");
	advance(mr, conf.commit_interval_ms);
	ck_assert_uint_eq(STAT_GET(commit_errors), 1);
	ck_assert_uint_eq(STAT_GET(commits), 0);
	ck_assert(flags_of("l/a") & REC_DIRTY);
	ck_assert_msg(strncmp(reason(buf, sizeof(buf)), "store: ", 7) == 0, "reason: %s", buf);
	ck_assert(!mirror_ready(mr, NULL, 0));

	/* Changed again while the file refuses: the newest value is the one written. */
	put("l/a", "{\"v\":2}");
	mirror_ingest_flush(mr);
	exec_ok(w, "COMMIT");
	sqlite3_close(w);

	/* With backoff: not at once while time stands still... */
	ck_assert_int_eq(mirror_wait_turn(mr, TURN_MS), 0);
	ck_assert_int_eq(mirror_wait_turn(mr, TURN_MS), 0);
	ck_assert_uint_eq(STAT_GET(commit_errors) + STAT_GET(commits), 1);
	ck_assert_int_eq(file_int("SELECT count(*) FROM keys"), 0);
	/* ...but within the longest backoff (5 s). */
	advance(mr, 5000);
	ck_assert_uint_eq(STAT_GET(commits), 1);
	ck_assert_uint_eq(STAT_GET(commit_errors), 1);
	ck_assert_str_eq(file_payload("l/a", buf, sizeof(buf)), "{\"v\":2}");
	ck_assert(!(flags_of("l/a") & REC_DIRTY));
	ck_assert_msg(strncmp(reason(buf, sizeof(buf)), "store: ", 7) != 0, "reason: %s", buf);
}
END_TEST

START_TEST(disk_full_keeps_records_dirty_until_space_comes_back)
{
	char payload[4001], name[32], buf[256];
	sqlite3 *w;

	/* A file that may not grow (SQLite's max_page_count on the store's
	 * own connection, set before the keeper uses it), with a filler table
	 * whose pages come back when it is dropped. */
	w = foreign(SQLITE_OPEN_READWRITE);
	exec_ok(w, "CREATE TABLE filler(b); INSERT INTO filler VALUES (zeroblob(600000))");
	exec_ok(caught, "PRAGMA max_page_count = 1");
	memset(payload, 'p', sizeof(payload) - 1);
	payload[sizeof(payload) - 1] = '\0';
	payload[0] = '"';
	payload[sizeof(payload) - 2] = '"';

	start();
	for (int i = 0; i < 50; i++) {
		snprintf(name, sizeof(name), "f/%02d", i);
		put(name, payload);
	}
	mirror_ingest_flush(mr);
	advance(mr, conf.commit_interval_ms);
	ck_assert_uint_eq(STAT_GET(commit_errors), 1);
	ck_assert_int_eq(file_int("SELECT count(*) FROM keys"), 0);
	ck_assert(flags_of("f/00") & REC_DIRTY);
	ck_assert(flags_of("f/49") & REC_DIRTY);
	ck_assert_msg(strstr(reason(buf, sizeof(buf)), "full") != NULL, "reason: %s", buf);
	/* Still full at the next attempt: still dirty, counted again. */
	advance(mr, 5000);
	ck_assert_uint_eq(STAT_GET(commit_errors), 2);
	ck_assert(flags_of("f/00") & REC_DIRTY);

	/* Space comes back: the next attempt writes every record. */
	exec_ok(w, "DROP TABLE filler");
	sqlite3_close(w);
	advance(mr, 5000);
	ck_assert_uint_eq(STAT_GET(commit_errors), 2);
	ck_assert_uint_eq(STAT_GET(commits), 1);
	ck_assert_int_eq(file_int("SELECT count(*) FROM keys"), 50);
	ck_assert_int_eq(file_int("SELECT count(*) FROM keys WHERE CAST(payload AS TEXT) = "
				  "'\"' || printf('%.3998c', 'p') || '\"'"), 50);
	ck_assert(!(flags_of("f/00") & REC_DIRTY));
	ck_assert_msg(strstr(reason(buf, sizeof(buf)), "full") == NULL, "reason: %s", buf);
}
END_TEST

/* ---- staleness deadlines ---- */

START_TEST(deadline_turns_a_key_stale_on_the_keeper)
{
	int64_t rev, heard = wall_ms();
	unsigned before;

	one_rule("s/#", 1000);
	conf.grace = 2;
	start();
	put("s/k", "{\"v\":1}");
	mirror_ingest_flush(mr);
	ck_assert_int_eq(mirror_wait_turn(mr, TURN_MS), 0);
	rev = head();
	/* grace 2 x 1 s: fresh up to 2 s after it was heard... */
	advance(mr, 2000);
	ck_assert(!(flags_of("s/k") & REC_STALE));
	ck_assert_int_eq(head(), rev);
	before = atomic_load(&woken);
	/* ...stale just after, made by the keeper's turn alone. */
	advance(mr, 1);
	ck_assert(flags_of("s/k") & REC_STALE);
	/* A change of its own (a revision, in the log), watchers woken. */
	ck_assert_int_eq(head(), rev + 1);
	ck_assert_int_eq(only_change_after(rev), CHANGE_STALE);
	ck_assert_uint_gt(atomic_load(&woken), before);
	/* And written back within commit_interval. */
	advance(mr, conf.commit_interval_ms);
	ck_assert_int_eq(file_int("SELECT count(*) FROM stale_keys"), 1);
	/* Stale since its window ended. */
	ck_assert_int_eq(file_int("SELECT stale_since_ms FROM rec WHERE topic = 's/k'"),
			 heard + 2000);

	/* Heard again: fresh at once, on the ingest thread. */
	put("s/k", "{\"v\":2}");
	mirror_ingest_flush(mr);
	ck_assert(!(flags_of("s/k") & REC_STALE));
	advance(mr, conf.commit_interval_ms);
	ck_assert_int_eq(file_int("SELECT count(*) FROM stale_keys"), 0);
}
END_TEST


/* ---- a dead producer's keys (mirror_keys_stale) ---- */

static const char *const n1_keys[] = { "e/n1/a", "e/n1/b", "e/n1/never-seen" };

static void enum_n1(void *ectx, mirror_key_fn key, void *kctx)
{
	(void)ectx;
	for (size_t i = 0; i < sizeof(n1_keys) / sizeof(n1_keys[0]); i++)
		key(kctx, n1_keys[i], strlen(n1_keys[i]));
}

START_TEST(dead_producer_keys_turn_stale_and_are_written)
{
	int64_t rev, ts;
	unsigned before;

	one_rule("e/#", 60000);
	start();
	put("e/n1/a", "1");
	put("e/n1/b", "2");
	put("e/n2/c", "3");
	mirror_ingest_flush(mr);
	ck_assert_int_eq(mirror_wait_turn(mr, TURN_MS), 0);
	rev = head();
	before = atomic_load(&woken);
	fake_clock_advance(10);
	ts = wall_ms();
	ck_assert_uint_eq(mirror_keys_stale(mr, "e/n1", STALE_REASON_PRODUCER_OFFLINE, enum_n1, NULL, ts), 2);
	ck_assert(flags_of("e/n1/a") & REC_STALE);
	ck_assert(flags_of("e/n1/b") & REC_STALE);
	ck_assert(!(flags_of("e/n2/c") & REC_STALE));
	ck_assert_int_eq(head(), rev + 2);          /* a revision each */
	ck_assert_uint_gt(atomic_load(&woken), before); /* watchers told */
	/* Again: nothing new. */
	ck_assert_uint_eq(mirror_keys_stale(mr, "e/n1", STALE_REASON_PRODUCER_OFFLINE, enum_n1, NULL, ts), 0);
	/* Written with its reason (flag bits), stale since the death. */
	advance(mr, conf.commit_interval_ms);
	ck_assert_int_eq(file_int("SELECT count(*) FROM stale_keys"), 2);
	ck_assert_int_eq(file_int("SELECT stale_since_ms FROM rec WHERE topic = 'e/n1/a'"), ts);
	ck_assert_int_eq((file_int("SELECT flags FROM rec WHERE topic = 'e/n1/a'") & REC_REASON_MASK) >>
			 REC_REASON_SHIFT, STALE_REASON_PRODUCER_OFFLINE);
	ck_assert(file_int("SELECT flags FROM rec WHERE topic = 'e/n1/a'") & REC_STICKY);
	/* Long past nothing, still stale; heard again: that key only. */
	advance(mr, 30000);
	put("e/n1/a", "4");
	mirror_ingest_flush(mr);
	ck_assert(!(flags_of("e/n1/a") & REC_STALE));
	ck_assert(flags_of("e/n1/b") & REC_STALE);
	advance(mr, conf.commit_interval_ms);
	ck_assert_int_eq(file_int("SELECT flags FROM rec WHERE topic = 'e/n1/a'") &
			 (REC_REASON_MASK | REC_STICKY), 0);
}
END_TEST


static void *read_once(void *arg)
{
	(void)arg;
	index_rdlock(ix);
	index_unlock(ix);
	return NULL;
}

/* A run of messages may keep the write lock from one message to the next;
 * a death in the middle of the run (mirror_keys_stale on the session
 * thread) lets it go first instead of waiting for itself, and the run's
 * flush releases it: a reader started mid-run gets in. A lock kept too
 * long hangs here, and check's timeout fails the test. */
START_TEST(a_run_releases_the_lock_at_a_death_and_at_its_flush)
{
	pthread_t reader;
	char topic[32];

	one_rule("e/#", 60000);
	start();
	put("e/n1/a", "1");
	put("e/n1/b", "2");
	ck_assert_uint_eq(mirror_keys_stale(mr, "e/n1", STALE_REASON_PRODUCER_OFFLINE, enum_n1, NULL,
					    wall_ms()), 2);
	/* More than one hold's worth, then a reader waits for the flush. */
	for (int i = 0; i < 37; i++) {
		snprintf(topic, sizeof(topic), "e/n2/k%02d", i);
		put(topic, "3");
	}
	ck_assert_int_eq(pthread_create(&reader, NULL, read_once, NULL), 0);
	mirror_ingest_flush(mr);
	ck_assert_int_eq(pthread_join(reader, NULL), 0);
	ck_assert(flags_of("e/n1/a") & REC_STALE);
	ck_assert(!(flags_of("e/n2/k36") & REC_STALE));
	ck_assert_int_eq(mirror_wait_turn(mr, TURN_MS), 0);
}
END_TEST

/* index_peek, retried for a second past the keeper's own holds of the lock. */
static int peek(const char *topic, struct rec *snap)
{
	int64_t until = clock_mono_ms() + 1000;
	const struct rec *r;
	int rc;

	while ((rc = index_peek(ix, topic, strlen(topic), snap, &r)) == -EAGAIN &&
	       clock_mono_ms() < until)
		;
	return rc;
}

/*
** Between two messages of one hold of the write lock the records are
** settled: a point read without the lock sees each message applied whole,
** after a death's mirror_keys_stale and after the run's flush too.
*/
START_TEST(a_hold_is_settled_between_messages)
{
	struct rec a, b;

	one_rule("e/#", 60000);
	start();
	put("e/n1/a", "11");
	ck_assert_int_eq(peek("e/n1/a", &a), 1);
	ck_assert_uint_eq(a.updates, 1);
	ck_assert_uint_eq(a.payload_len, 2);
	put("e/n1/a", "222");
	ck_assert_int_eq(peek("e/n1/a", &b), 1);
	ck_assert_uint_eq(b.updates, 2);
	ck_assert_uint_eq(b.payload_len, 3);
	ck_assert_int_gt(b.rev, a.rev);
	ck_assert_int_gt(b.ts_ns, a.ts_ns);
	ck_assert_int_eq(peek("e/n1/none", &b), 0);
	ck_assert_uint_eq(mirror_keys_stale(mr, "e/n1", STALE_REASON_PRODUCER_OFFLINE, enum_n1, NULL,
					    wall_ms()), 1);
	ck_assert_int_eq(peek("e/n1/a", &b), 1);
	ck_assert(b.flags & REC_STALE);
	put("e/n1/b", "3");
	mirror_ingest_flush(mr);
	ck_assert_int_eq(peek("e/n1/b", &b), 1);
	ck_assert_int_eq(mirror_wait_turn(mr, TURN_MS), 0);
}
END_TEST

/* A message as the session hands it over, retained or live. */
static void put_r(const char *topic, const char *payload, bool retained)
{
	int64_t now = wall_ms();
	struct msg m = {
		.topic = topic, .topic_len = strlen(topic),
		.payload = payload, .payload_len = strlen(payload),
		.ts_ns = now * 1000000 + ++seq, .recv_ms = now, .retained = retained,
	};

	mirror_ingest(mr, &m, REJECT_NONE, m.payload_len);
}

static int reason_of(const char *topic)
{
	int r;

	index_rdlock(ix);
	r = rec_stale_reason(index_get(ix, topic, strlen(topic)));
	index_unlock(ix);
	return r;
}

START_TEST(availability_status_on_the_apply_path)
{
	one_rule("dc1/#", 60000);
	ck_assert_int_eq(conf_add_availability(&conf, "dc1/+/agent/status", "dc1/+/#"), 0);
	start();
	put_r("dc1/a/temp", "1", false);
	put_r("dc1/a/x/y", "2", false);
	put_r("dc1/b/temp", "3", false);
	put_r("dc1/a/agent/status", "offline", false);
	mirror_ingest_flush(mr);
	ck_assert_int_eq(reason_of("dc1/a/temp"), STALE_REASON_PRODUCER_OFFLINE);
	ck_assert_int_eq(reason_of("dc1/a/x/y"), STALE_REASON_PRODUCER_OFFLINE);
	ck_assert_int_eq(reason_of("dc1/b/temp"), STALE_REASON_NONE);
	ck_assert_int_eq(reason_of("dc1/a/agent/status"), STALE_REASON_NONE); /* never judged */
	/* A key first seen after the status, retained: stale at once too;
	 * one heard live: its producer is alive after all. */
	put_r("dc1/a/late", "4", true);
	put_r("dc1/a/live", "5", false);
	mirror_ingest_flush(mr);
	ck_assert_int_eq(reason_of("dc1/a/late"), STALE_REASON_PRODUCER_OFFLINE);
	ck_assert_int_eq(reason_of("dc1/a/live"), STALE_REASON_NONE);
	/* Online: nothing turns fresh by it; a key heard from does. */
	put_r("dc1/a/agent/status", "online", false);
	put_r("dc1/a/late", "6", true);   /* retained: still no sign of life */
	mirror_ingest_flush(mr);
	ck_assert_int_eq(reason_of("dc1/a/temp"), STALE_REASON_PRODUCER_OFFLINE);
	ck_assert_int_eq(reason_of("dc1/a/late"), STALE_REASON_PRODUCER_OFFLINE);
	put_r("dc1/a/temp", "7", false);
	mirror_ingest_flush(mr);
	ck_assert_int_eq(reason_of("dc1/a/temp"), STALE_REASON_NONE);
	ck_assert_int_eq(reason_of("dc1/a/x/y"), STALE_REASON_PRODUCER_OFFLINE);
	/* Online now: a later retained key is not marked. */
	put_r("dc1/a/later", "8", true);
	mirror_ingest_flush(mr);
	ck_assert_int_eq(reason_of("dc1/a/later"), STALE_REASON_NONE);
}
END_TEST

/* ---- readiness follows the broker link (a real mosquitto) ---- */

static int free_port(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	close(fd);
	return ntohs(a.sin_port);
}

static pid_t broker_start(int port)
{
	char path[128];
	FILE *f;
	pid_t pid;

	/* Run as root, mosquitto drops to its own user: it must read here. */
	ck_assert_int_eq(chmod(tmpdir, 0755), 0);
	snprintf(path, sizeof(path), "%s/mosquitto.conf", tmpdir);
	f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	fprintf(f, "listener %d 127.0.0.1\nallow_anonymous true\npersistence false\n", port);
	fclose(f);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		int fd = open("/dev/null", O_WRONLY);

		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execl(MOSQUITTO_BIN, "mosquitto", "-c", path, (char *)NULL);
		_exit(127);
	}
	return pid;
}

static void broker_kill(pid_t pid)
{
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
}

/* The session's sink: the mirror's ingest, and a signal for the test on link changes. */
static pthread_mutex_t link_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t link_cv = PTHREAD_COND_INITIALIZER;

static void sink_message(void *ctx, const struct msg *m, enum reject_reason why, size_t full_len)
{
	mirror_ingest(ctx, m, why, full_len);
}

static void sink_flush(void *ctx)
{
	mirror_ingest_flush(ctx);
}

static void sink_link(void *ctx)
{
	mirror_link_changed(ctx);
	pthread_mutex_lock(&link_mu);
	pthread_cond_broadcast(&link_cv);
	pthread_mutex_unlock(&link_mu);
}

/* Wait (on the link callback, not a timer) until the session's synced is want. */
static void wait_synced(bool want)
{
	struct timespec dl;

	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += LINK_MS / 1000;
	pthread_mutex_lock(&link_mu);
	while (mqtt_synced(mq, NULL) != want)
		if (pthread_cond_timedwait(&link_cv, &link_mu, &dl) != 0)
			break;
	pthread_mutex_unlock(&link_mu);
	ck_assert_msg(mqtt_synced(mq, NULL) == want, "the session never became %s",
		      want ? "synced" : "unsynced");
}

START_TEST(ready_follows_the_link)
{
	char url[64], err[256] = "", buf[256];
	int port = free_port();
	pid_t broker;

	if (access(MOSQUITTO_BIN, X_OK) != 0)
		return; /* no broker to test against */
	snprintf(url, sizeof(url), "mqtt://127.0.0.1:%d", port);
	ck_assert_int_eq(conf_set_str(&conf.urls[0], url), 0);
	conf.nurls = 1;
	conf.reconnect_min_ms = 50;
	conf.reconnect_max_ms = 200;
	ck_assert_msg(mqtt_new(&conf, &mq, err, sizeof(err)) == 0, "%s", err);
	/* The session keeps real time (its retained-burst quiet): so does the keeper here. */
	start_with(NULL);
	ck_assert_int_eq(mqtt_start(mq, &(struct mqtt_sink){ sink_message, sink_flush, sink_link,
							      mr }), 0);

	/* No broker yet: not ready, and it says why. */
	ck_assert_int_eq(mirror_wait_turn(mr, TURN_MS), 0);
	ck_assert(!mirror_ready(mr, buf, sizeof(buf)));
	ck_assert_msg(buf[0] != '\0', "not ready without a reason");
	ck_assert(!mirror_synced(mr));

	/* The broker comes: ready within a turn of the session's sync. */
	broker = broker_start(port);
	wait_synced(true);
	ck_assert_int_eq(mirror_wait_turn(mr, TURN_MS), 0);
	ck_assert_msg(mirror_ready(mr, buf, sizeof(buf)), "not ready: %s", buf);
	ck_assert_str_eq(buf, "");
	ck_assert(mirror_synced(mr));

	/* It dies: not ready, with a reason. */
	broker_kill(broker);
	wait_synced(false);
	ck_assert_int_eq(mirror_wait_turn(mr, TURN_MS), 0);
	ck_assert(!mirror_ready(mr, buf, sizeof(buf)));
	ck_assert_msg(buf[0] != '\0', "not ready without a reason");
	ck_assert(!mirror_synced(mr));

	/* Back: ready again. */
	broker = broker_start(port);
	wait_synced(true);
	ck_assert_int_eq(mirror_wait_turn(mr, TURN_MS), 0);
	ck_assert_msg(mirror_ready(mr, buf, sizeof(buf)), "not ready: %s", buf);
	broker_kill(broker);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("mirror");
	TCase *tc = tcase_create("keeper");
	SRunner *sr;
	int failed;

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, writes_once_per_commit_interval);
	tcase_add_test(tc, stop_writes_the_backlog);
	tcase_add_test(tc, rederived_rows_yield_to_changes_and_do_not_hold_a_stop);
	tcase_add_test(tc, locked_file_keeps_records_dirty_and_retries);
	tcase_add_test(tc, disk_full_keeps_records_dirty_until_space_comes_back);
	tcase_add_test(tc, deadline_turns_a_key_stale_on_the_keeper);
	tcase_add_test(tc, dead_producer_keys_turn_stale_and_are_written);
	tcase_add_test(tc, a_run_releases_the_lock_at_a_death_and_at_its_flush);
	tcase_add_test(tc, a_hold_is_settled_between_messages);
	tcase_add_test(tc, availability_status_on_the_apply_path);
	tcase_add_test(tc, ready_follows_the_link);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
