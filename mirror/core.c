/* SPDX-License-Identifier: MIT */
/* core.c: the core thread: drains the queue, applies, tracks staleness, writes the store. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/clock.h"
#include "../common/log.h"
#include "../common/stats.h"
#include "core.h"

/*
** One thread owns every mutable record. A turn of its loop:
**
**   1. take a batch of messages from the queue (waiting at most until the
**      next staleness deadline or commit is due);
**   2. under the index write lock: apply each message, feed the staleness
**      engine, note the records that changed (the dirty list);
**   3. outside the lock: when the commit interval has passed, write the
**      dirty records to SQLite in one transaction.
**
** Applying in memory first and writing later keeps the API live while the
** file lags by at most commit_interval (<= 1 s, the contract's bound); a
** record is written once per commit however often it changed.  A failed
** write (disk full, database locked) keeps the records dirty and is
** retried with backoff, while the API goes on serving from memory.
*/

#define CORE_BATCH 1024
/* The dirty list holds one entry per applied change (a hot key repeats);
 * past this many the core commits early to bound the list's memory. A
 * commit per commit_interval is cheaper than several smaller ones: SQLite
 * rewrites about a page per changed row whatever the batch size. */
#define CORE_FLUSH_ROWS 262144
#define CORE_RETRY_MIN_MS 250
#define CORE_RETRY_MAX_MS 5000
#define CORE_CHECKPOINT_MS 10000

struct core {
	struct core_deps d;
	struct apply_limits lim;
	pthread_t thread;
	atomic_bool stop;
	_Atomic int64_t heartbeat;
	atomic_bool ready;
	atomic_bool synced;

	/* Owned by the core thread. */
	int64_t rev;
	struct rec **dirty;       /* records changed since the last commit (may repeat) */
	size_t ndirty, capdirty;
	struct rec **wbatch;      /* the unique records of one write */
	size_t capwbatch;
	int64_t first_dirty_ms;   /* mono time of the oldest unwritten change, 0 none */
	int64_t retry_at_ms;      /* mono time of the next write attempt after a failure */
	int64_t retry_delay_ms;
	int64_t last_checkpoint_ms;
	bool link_synced;         /* what the staleness engine was last told */
	uint64_t link_epoch;
	/* Messages still to pop before the sync's retained burst is applied:
	 * the queue depth when the sync was first seen (FIFO, and only this
	 * thread pops). Ready needs it at 0 once per sync, not an empty queue
	 * at every turn, which live traffic rarely leaves. */
	size_t sync_left;
	bool store_failed;
	bool changed;             /* this turn appended to the change log */

	pthread_mutex_t status_lock; /* guards reason */
	char reason[256];         /* why not ready, "" when ready */
};

static void core_set_reason(struct core *c, const char *reason)
{
	pthread_mutex_lock(&c->status_lock);
	snprintf(c->reason, sizeof(c->reason), "%s", reason);
	pthread_mutex_unlock(&c->status_lock);
}

/* Remember r for the next write. Grows the list; on ENOMEM the change is
 * still in memory and REC_DIRTY stays set, so the next compaction after a
 * write failure or the next change of r picks it up. */
static void core_mark_dirty(struct core *c, struct rec *r)
{
	if (c->ndirty == c->capdirty) {
		size_t ncap = c->capdirty ? c->capdirty * 2 : 4096;
		struct rec **nd = realloc(c->dirty, ncap * sizeof(*nd));
		if (!nd) {
			log_warnx("core: cannot grow the dirty list, change of %s written later",
				  rec_topic(r));
			return;
		}
		c->dirty = nd;
		c->capdirty = ncap;
	}
	r->flags |= REC_DIRTY;
	c->dirty[c->ndirty++] = r;
	if (c->first_dirty_ms == 0)
		c->first_dirty_ms = clock_mono_ms();
}

static void core_log_change(struct core *c, struct rec *r, enum change_type t)
{
	if (c->d.changes) {
		changes_append(c->d.changes, r, t);
		c->changed = true;
	}
}

/* Staleness transitions change the record (its stale flag) and so get a
 * revision of their own, like any other change a watcher can see. */
static void core_on_transition(struct rec *r, bool became_stale, void *ctx)
{
	struct core *c = ctx;

	r->rev = ++c->rev;
	core_mark_dirty(c, r);
	core_log_change(c, r, became_stale ? CHANGE_STALE : CHANGE_FRESH);
}

static void core_apply_one(struct core *c, struct qmsg *q, int64_t now_ms)
{
	struct rec *r = NULL;
	bool live_seen = false;
	enum reject_reason why = q->reject;
	enum apply_result res;

	if (why != REJECT_NONE) {
		rejects_add(c->d.rejects, q->m.topic, q->m.topic_len, q->m.payload,
			    q->m.payload_len, q->full_len, why, now_ms);
		return;
	}
	res = apply_message(c->d.ix, &q->m, now_ms, &c->lim, &c->rev, &r, &live_seen, &why);
	switch (res) {
	case APPLY_REJECTED:
		rejects_add(c->d.rejects, q->m.topic, q->m.topic_len, q->m.payload,
			    q->m.payload_len, q->full_len, why, now_ms);
		return;
	case APPLY_APPLIED:
		core_mark_dirty(c, r);
		core_log_change(c, r, CHANGE_UPDATE);
		stale_on_message(c->d.stale, r, live_seen, r->updates == 1, now_ms,
				 core_on_transition, c);
		break;
	case APPLY_DELETED:
		core_mark_dirty(c, r);
		core_log_change(c, r, CHANGE_DELETE);
		stale_on_delete(c->d.stale, r, now_ms, core_on_transition, c);
		break;
	case APPLY_DUPLICATE:
		/* last_seen may have moved: persist it with the next write. */
		if (live_seen) {
			if (!(r->flags & REC_DIRTY))
				core_mark_dirty(c, r);
			stale_on_message(c->d.stale, r, true, false, now_ms,
					 core_on_transition, c);
		}
		break;
	case APPLY_OUT_OF_ORDER:
	case APPLY_RESULT_MAX:
		break;
	}
	STAT_INC(messages[res]);
}

/* Tell the staleness engine about the broker link when it changed. */
static void core_check_link(struct core *c, int64_t now_ms)
{
	uint64_t epoch = 0;
	bool synced = c->d.mqtt ? mqtt_synced(c->d.mqtt, &epoch) : false;

	if (synced == c->link_synced && epoch == c->link_epoch)
		return;
	if (synced && c->link_synced && epoch != c->link_epoch)
		stale_on_broker(c->d.stale, false, now_ms); /* a blip we missed */
	stale_on_broker(c->d.stale, synced, now_ms);
	c->link_synced = synced;
	c->link_epoch = epoch;
	/* Every retained message of this sync was pushed before mqtt said
	 * synced: it is applied already or among the messages queued now. */
	c->sync_left = synced ? queue_depth(c->d.queue) : 0;
}

/*
** Write the dirty records. The flags are cleared under the write lock
** (readers look at them); SQLite runs outside it, so queries are never held
** up by the disk.
*/
static void core_flush(struct core *c, bool force)
{
	int64_t mono = clock_mono_ms();
	size_t n = 0;
	char err[256];
	int64_t t0, t1;
	int rc;

	if (c->ndirty == 0)
		return;
	if (!force && mono - c->first_dirty_ms < c->d.conf->commit_interval_ms &&
	    c->ndirty < CORE_FLUSH_ROWS)
		return;
	if (!force && c->retry_at_ms && mono < c->retry_at_ms)
		return;

	if (c->capwbatch < c->ndirty) {
		struct rec **nb = realloc(c->wbatch, c->ndirty * sizeof(*nb));
		if (!nb) {
			log_warnx("core: out of memory for a store write, retrying");
			return;
		}
		c->wbatch = nb;
		c->capwbatch = c->ndirty;
	}
	index_wrlock(c->d.ix);
	for (size_t i = 0; i < c->ndirty; i++) {
		struct rec *r = c->dirty[i];
		if (r->flags & REC_DIRTY) {
			r->flags &= (uint16_t)~REC_DIRTY;
			c->wbatch[n++] = r;
		}
	}
	index_unlock(c->d.ix);
	c->ndirty = 0;

	t0 = clock_mono_ms();
	rc = store_write(c->d.store, c->wbatch, n, err, sizeof(err));
	t1 = clock_mono_ms();
	if (rc == 0) {
		stats_commit_observe((uint64_t)(t1 - t0) * 1000);
		STAT_INC(commits);
		STAT_ADD(rows_written, n);
		c->first_dirty_ms = 0;
		c->retry_at_ms = 0;
		c->retry_delay_ms = 0;
		if (c->store_failed) {
			log_info("store: writing again, %zu records caught up", n);
			c->store_failed = false;
		}
		if (t1 - c->last_checkpoint_ms >= CORE_CHECKPOINT_MS) {
			store_checkpoint(c->d.store);
			c->last_checkpoint_ms = t1;
		}
		return;
	}

	/* Keep every record dirty, as one unique list, and try again later. */
	STAT_INC(commit_errors);
	index_wrlock(c->d.ix);
	for (size_t i = 0; i < n; i++)
		c->wbatch[i]->flags |= REC_DIRTY;
	index_unlock(c->d.ix);
	if (c->capdirty < n) {
		struct rec **nd = realloc(c->dirty, n * sizeof(*nd));
		if (nd) {
			c->dirty = nd;
			c->capdirty = n;
		}
	}
	if (c->capdirty >= n) {
		memcpy(c->dirty, c->wbatch, n * sizeof(*c->dirty));
		c->ndirty = n;
	}
	c->retry_delay_ms = c->retry_delay_ms ? c->retry_delay_ms * 2 : CORE_RETRY_MIN_MS;
	if (c->retry_delay_ms > CORE_RETRY_MAX_MS)
		c->retry_delay_ms = CORE_RETRY_MAX_MS;
	c->retry_at_ms = t1 + c->retry_delay_ms;
	if (!c->store_failed)
		log_error("store: %s; serving from memory, retrying with backoff up to %d s",
			  err, CORE_RETRY_MAX_MS / 1000);
	c->store_failed = true;
	{
		char reason[sizeof(c->reason)];
		snprintf(reason, sizeof(reason), "store: %.200s", err);
		core_set_reason(c, reason);
	}
}

static void core_update_ready(struct core *c)
{
	char why[256];
	bool synced = c->link_synced;
	bool ready = synced && !c->store_failed && c->sync_left == 0;
	bool was = atomic_load(&c->ready);

	/* Synced (the header) once the retained burst is applied, whatever
	 * the store does: the answers are current even when the file lags. */
	atomic_store(&c->synced, synced && c->sync_left == 0);
	if (!ready && !c->store_failed) {
		if (!synced && c->d.mqtt)
			mqtt_status(c->d.mqtt, why, sizeof(why));
		else if (!synced)
			snprintf(why, sizeof(why), "no broker session");
		else
			snprintf(why, sizeof(why), "applying the retained messages");
		core_set_reason(c, why);
	}
	if (ready == was)
		return;
	if (ready) {
		core_set_reason(c, "");
		log_info("ready: synced with the broker, %zu keys", index_live(c->d.ix));
	} else {
		pthread_mutex_lock(&c->status_lock);
		log_warnx("not ready: %s", c->reason);
		pthread_mutex_unlock(&c->status_lock);
	}
	atomic_store(&c->ready, ready);
}

static void *core_main(void *arg)
{
	struct core *c = arg;
	struct qmsg *batch[CORE_BATCH];
	int64_t wait_ms = 0;

	for (;;) {
		bool stopping = atomic_load(&c->stop);
		int n = queue_pop_batch(c->d.queue, batch, CORE_BATCH, stopping ? 0 : wait_ms);
		int64_t now = clock_wall_ms();

		if (n > 0)
			c->sync_left = (size_t)n >= c->sync_left ? 0 : c->sync_left - (size_t)n;
		atomic_store(&c->heartbeat, clock_mono_ms());
		index_wrlock(c->d.ix);
		for (int i = 0; i < n; i++) {
			core_apply_one(c, batch[i], now);
			free(batch[i]);
		}
		core_check_link(c, now);
		wait_ms = stale_tick(c->d.stale, now, core_on_transition, c);
		STAT_SET(keys, index_live(c->d.ix));
		STAT_SET(rev, c->rev);
		index_unlock(c->d.ix);
		if (c->changed && c->d.on_changes)
			c->d.on_changes(c->d.on_changes_ctx);
		c->changed = false;

		core_flush(c, false);
		if (c->store_failed && (c->retry_at_ms == 0 || clock_mono_ms() >= c->retry_at_ms))
			core_flush(c, true);
		core_update_ready(c);

		if (c->ndirty && wait_ms > c->d.conf->commit_interval_ms)
			wait_ms = c->d.conf->commit_interval_ms;
		if (wait_ms <= 0 || wait_ms > 100)
			wait_ms = 100;
		if (stopping && n <= 0)
			break;
	}
	core_flush(c, true);
	return NULL;
}

static int core_seed_dirty(struct rec *r, void *ctx)
{
	if (r->flags & REC_DIRTY)
		core_mark_dirty(ctx, r);
	return 0;
}

int core_start(const struct core_deps *d, struct core **ret)
{
	struct core *c = calloc(1, sizeof(*c));
	int rc;

	if (!c)
		return -ENOMEM;
	c->d = *d;
	c->rev = d->rev;
	c->lim.future_skew_ms = d->conf->future_skew_ms;
	c->lim.max_keys = d->conf->max_keys;
	c->last_checkpoint_ms = clock_mono_ms();
	atomic_store(&c->heartbeat, clock_mono_ms());
	pthread_mutex_init(&c->status_lock, NULL);
	snprintf(c->reason, sizeof(c->reason), "starting");

	/* Startup counts as "not synced": keys judged stale from the stored
	 * last_seen are not alerted until the mirror has re-synced and given
	 * each its grace period. Records that changed at load (REC_DIRTY) are
	 * written with the first commit. */
	index_wrlock(c->d.ix);
	stale_on_broker(c->d.stale, false, clock_wall_ms());
	index_walk(c->d.ix, NULL, 0, NULL, 0, core_seed_dirty, c);
	index_unlock(c->d.ix);

	rc = pthread_create(&c->thread, NULL, core_main, c);
	if (rc) {
		pthread_mutex_destroy(&c->status_lock);
		free(c);
		return -rc;
	}
	*ret = c;
	return 0;
}

void core_stop(struct core *c)
{
	if (!c)
		return;
	atomic_store(&c->stop, true);
	queue_kick(c->d.queue);
	pthread_join(c->thread, NULL);
	if (c->ndirty)
		log_warnx("store: %zu changes could not be written at shutdown", c->ndirty);
	pthread_mutex_destroy(&c->status_lock);
	free(c->dirty);
	free(c->wbatch);
	free(c);
}

bool core_ready(struct core *c, char *buf, size_t n)
{
	bool ready = atomic_load(&c->ready);

	if (buf && n) {
		pthread_mutex_lock(&c->status_lock);
		snprintf(buf, n, "%s", ready ? "" : c->reason);
		pthread_mutex_unlock(&c->status_lock);
	}
	return ready;
}

bool core_synced(struct core *c)
{
	return atomic_load(&c->synced);
}

int64_t core_heartbeat(struct core *c)
{
	return atomic_load(&c->heartbeat);
}

static void core_cadence_changed(struct rec *r, void *ctx)
{
	if (!(r->flags & REC_DIRTY))
		core_mark_dirty(ctx, r);
}

void core_reload(struct core *c, const struct conf *conf)
{
	/* Keys whose cadence the new rules change are written back, so the
	 * file follows the reload without waiting for their next message. */
	index_wrlock(c->d.ix);
	if (stale_reconfigure(c->d.stale, conf, core_cadence_changed, c) < 0)
		log_warnx("reload: out of memory, staleness settings unchanged");
	index_unlock(c->d.ix);
	queue_kick(c->d.queue);
}
