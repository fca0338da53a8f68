/* SPDX-License-Identifier: MIT */
/* outbox.c: the intent rows in the SQLite file, on a durable connection of their own. */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "store/fileid.h"
#include "store/outbox.h"
#include "store/sqlerr.h"

/*
** Why a connection of its own: the store's connection belongs to the
** keeper thread and commits with synchronous=NORMAL (a crash may lose the
** last second of values: the stream repairs them). An intent is a request
** nobody will repeat, so its insert must be on disk before the API says
** 202: synchronous=FULL, on this connection only. Both write the same
** WAL file; SQLite lets one writer in at a time, so an insert may wait
** (busy_timeout) behind a store commit, which is short.
*/
struct outbox {
	pthread_mutex_t mu;
	sqlite3 *db;
	sqlite3_stmt *ins, *upd;
	char *path;
	struct file_id id;  /* fileid.h: no intent goes to a file removed or replaced */
};

static const char sql_insert[] =
	"INSERT INTO intent(topic, correlation_id, value, confirm_topic, confirm_member, state,"
	" created_ms, expire_ms, timeout_ms, published_ms, decided_ms, observed)"
	" VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";
static const char sql_update[] =
	"UPDATE intent SET state = ?2, published_ms = ?3, decided_ms = ?4, observed = ?5"
	" WHERE id = ?1";
static const char sql_cols[] =
	"id, topic, correlation_id, value, confirm_topic, confirm_member, state,"
	" created_ms, expire_ms, timeout_ms, published_ms, decided_ms, observed";

int outbox_open(const char *path, int busy_ms, struct outbox **ret, char *err, size_t errlen)
{
	struct outbox *ob = calloc(1, sizeof(*ob));
	int rc;

	if (!ob)
		return -ENOMEM;
	pthread_mutex_init(&ob->mu, NULL);
	if (!(ob->path = strdup(path))) {
		outbox_close(ob);
		return -ENOMEM;
	}
	rc = sqlite3_open_v2(path, &ob->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
	file_id_take(path, &ob->id);
	if (rc != SQLITE_OK)
		goto fail;
	sqlite3_busy_timeout(ob->db, busy_ms);
	rc = sqlite3_exec(ob->db, "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL", NULL, NULL,
			  NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_prepare_v3(ob->db, sql_insert, -1, SQLITE_PREPARE_PERSISTENT, &ob->ins, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_prepare_v3(ob->db, sql_update, -1, SQLITE_PREPARE_PERSISTENT, &ob->upd, NULL);
	if (rc != SQLITE_OK)
		goto fail;
	*ret = ob;
	return 0;
fail:
	rc = store_sql_fail(ob->db, rc, "outbox: open", err, errlen);
	outbox_close(ob);
	return rc;
}

void outbox_close(struct outbox *ob)
{
	if (!ob)
		return;
	sqlite3_finalize(ob->ins);
	sqlite3_finalize(ob->upd);
	sqlite3_close(ob->db);
	pthread_mutex_destroy(&ob->mu);
	free(ob->path);
	free(ob);
}

static void bind_text(sqlite3_stmt *s, int i, const char *v)
{
	if (v)
		sqlite3_bind_text(s, i, v, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(s, i);
}

int outbox_insert(struct outbox *ob, const struct outbox_row *r, int64_t *ret_id, char *err,
		  size_t errlen)
{
	sqlite3_stmt *s = ob->ins;
	int rc;

	pthread_mutex_lock(&ob->mu);
	if ((rc = file_id_check(ob->path, &ob->id, err, errlen)) < 0) {
		pthread_mutex_unlock(&ob->mu);
		return rc;
	}
	bind_text(s, 1, r->topic);
	bind_text(s, 2, r->correlation_id);
	bind_text(s, 3, r->value);
	bind_text(s, 4, r->confirm_topic);
	bind_text(s, 5, r->confirm_member);
	sqlite3_bind_int(s, 6, r->state);
	sqlite3_bind_int64(s, 7, r->created_ms);
	sqlite3_bind_int64(s, 8, r->expire_ms);
	sqlite3_bind_int64(s, 9, r->timeout_ms);
	sqlite3_bind_int64(s, 10, r->published_ms);
	sqlite3_bind_int64(s, 11, r->decided_ms);
	bind_text(s, 12, r->observed);
	/* One statement outside a transaction is its own transaction: its
	 * commit (with synchronous=FULL) is the fsync. */
	rc = sqlite3_step(s);
	sqlite3_reset(s);
	sqlite3_clear_bindings(s);
	if (rc != SQLITE_DONE) {
		rc = store_sql_fail(ob->db, rc, "outbox: insert", err, errlen);
		pthread_mutex_unlock(&ob->mu);
		return rc;
	}
	*ret_id = sqlite3_last_insert_rowid(ob->db);
	pthread_mutex_unlock(&ob->mu);
	return 0;
}

int outbox_update(struct outbox *ob, const struct outbox_row *r, char *err, size_t errlen)
{
	sqlite3_stmt *s = ob->upd;
	int rc;

	pthread_mutex_lock(&ob->mu);
	sqlite3_bind_int64(s, 1, r->id);
	sqlite3_bind_int(s, 2, r->state);
	sqlite3_bind_int64(s, 3, r->published_ms);
	sqlite3_bind_int64(s, 4, r->decided_ms);
	bind_text(s, 5, r->observed);
	rc = sqlite3_step(s);
	sqlite3_reset(s);
	sqlite3_clear_bindings(s);
	rc = rc == SQLITE_DONE ? 0 : store_sql_fail(ob->db, rc, "outbox: update", err, errlen);
	pthread_mutex_unlock(&ob->mu);
	return rc;
}

static const char *col_text(sqlite3_stmt *s, int i)
{
	return (const char *)sqlite3_column_text(s, i);
}

/* Run sql (with ?1 = a) and hand each row to fn. Lock held. */
static int load_rows(struct outbox *ob, const char *sql, int64_t a,
		     int (*fn)(const struct outbox_row *, void *), void *ctx, char *err,
		     size_t errlen)
{
	sqlite3_stmt *s = NULL;
	int rc = sqlite3_prepare_v2(ob->db, sql, -1, &s, NULL), ret = 0;

	if (rc != SQLITE_OK)
		return store_sql_fail(ob->db, rc, "outbox: load", err, errlen);
	sqlite3_bind_int64(s, 1, a);
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		struct outbox_row r = {
			.id = sqlite3_column_int64(s, 0),
			.topic = col_text(s, 1),
			.correlation_id = col_text(s, 2),
			.value = col_text(s, 3),
			.confirm_topic = col_text(s, 4),
			.confirm_member = col_text(s, 5),
			.state = sqlite3_column_int(s, 6),
			.created_ms = sqlite3_column_int64(s, 7),
			.expire_ms = sqlite3_column_int64(s, 8),
			.timeout_ms = sqlite3_column_int64(s, 9),
			.published_ms = sqlite3_column_int64(s, 10),
			.decided_ms = sqlite3_column_int64(s, 11),
			.observed = col_text(s, 12),
		};

		if (!r.topic || !r.correlation_id || !r.value || !r.confirm_topic ||
		    !r.confirm_member)
			continue; /* NOT NULL columns: only a foreign hand could do this */
		if ((ret = fn(&r, ctx)) != 0)
			break;
	}
	if (ret == 0 && rc != SQLITE_DONE)
		ret = store_sql_fail(ob->db, rc, "outbox: load", err, errlen);
	sqlite3_finalize(s);
	return ret;
}

int outbox_load(struct outbox *ob, size_t recent,
		int (*fn)(const struct outbox_row *row, void *ctx), void *ctx, char *err,
		size_t errlen)
{
	char sql[512];
	int ret;

	pthread_mutex_lock(&ob->mu);
	snprintf(sql, sizeof(sql), "SELECT %s FROM intent WHERE decided_ms = 0 ORDER BY id",
		 sql_cols);
	ret = load_rows(ob, sql, 0, fn, ctx, err, errlen);
	if (ret == 0 && recent > 0) {
		snprintf(sql, sizeof(sql),
			 "SELECT * FROM (SELECT %s FROM intent WHERE decided_ms != 0"
			 " ORDER BY decided_ms DESC, id DESC LIMIT ?1) ORDER BY decided_ms, id",
			 sql_cols);
		ret = load_rows(ob, sql, (int64_t)recent, fn, ctx, err, errlen);
	}
	pthread_mutex_unlock(&ob->mu);
	return ret;
}

int outbox_prune(struct outbox *ob, size_t keep, char *err, size_t errlen)
{
	sqlite3_stmt *s = NULL;
	int rc;

	pthread_mutex_lock(&ob->mu);
	rc = sqlite3_prepare_v2(ob->db, "DELETE FROM intent WHERE decided_ms != 0 AND id NOT IN"
				" (SELECT id FROM intent WHERE decided_ms != 0"
				" ORDER BY decided_ms DESC, id DESC LIMIT ?1)", -1, &s, NULL);
	if (rc == SQLITE_OK) {
		sqlite3_bind_int64(s, 1, (int64_t)keep);
		rc = sqlite3_step(s);
	}
	sqlite3_finalize(s);
	rc = rc == SQLITE_DONE ? 0 : store_sql_fail(ob->db, rc, "outbox: prune", err, errlen);
	pthread_mutex_unlock(&ob->mu);
	return rc;
}
