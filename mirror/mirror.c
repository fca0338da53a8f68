/* SPDX-License-Identifier: MIT */
/* mirror.c: the mirror: the apply path ingest calls, and the keeper thread (deadlines, link, readiness, store writes). */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/stats.h"
#include "common/topic.h"
#include "mirror/mirror.h"
#include "mirror/liveness/avail.h"
#include "mirror/state/intents.h"
#include "mirror/state/rows.h"

/*
** Two threads change records, always under the index write lock:
**
**   the ingest thread (the MQTT session's) applies each message as it is
**   read (mirror_ingest, the lock held across at most MIRROR_INGEST_HOLD
**   messages of one run: over libmosquitto's non-blocking reads of bytes
**   already received, never over a wait), and at the end of a run of messages
**   (mirror_ingest_flush) wakes the watch hub: no copy, no queue, no
**   hand-off between threads per message;
**
**   the keeper thread wakes for timers: staleness deadlines, the broker
**   link, readiness, and once per commit_interval the store: the records
**   that changed (the dirty list) are copied into the store's staging
**   buffer under the lock, then written to SQLite in one transaction
**   without it, so neither ingest nor queries wait for the disk.
**
** Applying in memory first and writing later keeps the API live while the
** file lags by at most commit_interval (<= 1 s, the contract's bound); a
** record is written once per commit however often it changed.  A failed
** write (disk full, database locked) keeps the records dirty and is
** retried with backoff, while the API goes on serving from memory.
*/

/* The dirty list holds one entry per applied change (a hot key repeats);
 * past this many the mirror commits early to bound the list's memory. A
 * commit per commit_interval is cheaper than several smaller ones: SQLite
 * rewrites about a page per changed row whatever the batch size. */
#define MIRROR_FLUSH_ROWS 262144
#define MIRROR_RETRY_MIN_MS 250
#define MIRROR_RETRY_MAX_MS 5000
#define MIRROR_CHECKPOINT_MS 10000
#define MIRROR_TICK_MAX_MS 100
#define MIRROR_FILE_CHECK_MS 1000  /* is the database file still there, when idle */
/* One write stages at most this many rows or payload bytes: the copy made
 * under the lock stays short, and so does the memory it holds. A larger
 * backlog (a retained burst into an empty file, a disk full a while) is
 * written in back-to-back transactions of this size. */
#define MIRROR_STAGE_ROWS 8192
#define MIRROR_STAGE_BYTES (4u << 20)
/* ... copied under the lock this many rows at a time (some 100 us): a
 * point read never waits behind a whole chunk. The same goes for the
 * payloads a write lets go of. */
#define MIRROR_STAGE_SLICE 1024
/* Records an offline status visits at most (its keys' walk, under the
 * lock); the rest are left as they are, counted and logged. */
#define MIRROR_DEAD_WALK_MAX 1000000

/*
** The records a write is to take, oldest first from head on: appended by
** the apply path, taken a chunk at a time by the keeper. A chunk moves head
** (never the entries behind it), so a backlog of millions (every key after
** a restart that changed the rules) costs each write its chunk only.
*/
struct dlist {
	struct rec **v;
	size_t head, n, cap;
};

static size_t dlist_pending(const struct dlist *l)
{
	return l->n - l->head;
}

static int dlist_push(struct dlist *l, struct rec *r)
{
	if (l->n == l->cap && l->head) {
		memmove(l->v, l->v + l->head, (l->n - l->head) * sizeof(*l->v));
		l->n -= l->head;
		l->head = 0;
	}
	if (l->n == l->cap) {
		size_t ncap = l->cap ? l->cap * 2 : 4096;
		struct rec **nv = realloc(l->v, ncap * sizeof(*nv));

		if (!nv)
			return -ENOMEM;
		l->v = nv;
		l->cap = ncap;
	}
	l->v[l->n++] = r;
	return 0;
}

struct mirror {
	struct mirror_deps d;
	struct apply_limits lim;
	struct avail *avail;      /* [liveness] availability; under the index write lock */
	pthread_t thread;
	atomic_bool stop;
	_Atomic int64_t heartbeat;
	atomic_bool ready;
	atomic_bool synced;

	struct clock_src clk;     /* every reading of time below goes through it */

	/* Wakes the keeper thread before its timeout (link change, reload, the
	 * first change to write, stop). */
	pthread_mutex_t wake_mu;
	pthread_cond_t wake_cv;
	bool wake;
	uint64_t turns;           /* keeper turns begun (mirror_wait_turn), under wake_mu */
	pthread_cond_t turn_cv;   /* signalled when one begins */

	/* Under the index write lock (either thread). */
	int64_t rev;
	struct dlist dirty;       /* records changed since the last commit (may repeat) */
	struct dlist rederive;    /* records whose derived fields only changed (REC_REDERIVE) */
	int64_t first_dirty_ms;   /* mono time of the oldest unwritten change, 0 none */
	bool link_synced;         /* what the staleness engine was last told */
	uint64_t link_epoch;
	bool changed;             /* the change log grew since the watch hub was woken */
	bool wake_keeper;           /* ingest made the first dirty entry: tell the mirror */

	/* The ingest thread only. */
	bool in_run;              /* a run of messages began (mirror_ingest_flush ends it) */
	unsigned held;            /* messages applied under the write lock held now (session thread) */

	/* The keeper thread only. */
	struct rec **wbatch;      /* the records staged for the write in progress (MIRROR_STAGE_ROWS) */
	int64_t retry_at_ms;      /* mono time of the next write attempt after a failure */
	int64_t retry_delay_ms;
	int64_t last_checkpoint_ms;
	int64_t rederive_at_ms;   /* mono time the next chunk of re-derived rows may go */
	int64_t last_commit_ms;   /* how long the last write took */
	int64_t file_checked_ms;  /* mono time of the last idle store_check_file */
	bool store_failed;
	bool file_gone;           /* store_failed by store_check_file, not by a write */

	pthread_mutex_t status_lock; /* guards reason */
	char reason[256];         /* why not ready, "" when ready */
};

static int64_t mirror_mono_ms(struct mirror *c)
{
	return c->clk.mono_ms(c->clk.ctx);
}

static int64_t mirror_wall_ms(struct mirror *c)
{
	return c->clk.wall_ns(c->clk.ctx) / 1000000;
}

static void mirror_wake(struct mirror *c)
{
	pthread_mutex_lock(&c->wake_mu);
	c->wake = true;
	pthread_mutex_unlock(&c->wake_mu);
	pthread_cond_signal(&c->wake_cv);
}

/* The CLOCK_MONOTONIC time (real, as the condition variables wait) ms from now. */
static void mirror_deadline(struct timespec *dl, int64_t ms)
{
	clock_deadline(CLOCK_MONOTONIC, ms, dl);
}

/* Sleep until woken or timeout_ms passed (0: just look); a turn begins.
 * The wait is in real time whatever c->clk says (at most
 * MIRROR_TICK_MAX_MS): a clock moved by hand is seen at the next turn. */
static void mirror_sleep(struct mirror *c, int64_t timeout_ms)
{
	struct timespec dl;

	pthread_mutex_lock(&c->wake_mu);
	if (!c->wake && timeout_ms > 0) {
		mirror_deadline(&dl, timeout_ms);
		while (!c->wake && pthread_cond_timedwait(&c->wake_cv, &c->wake_mu, &dl) == 0)
			;
	}
	c->wake = false;
	c->turns++;
	pthread_cond_broadcast(&c->turn_cv);
	pthread_mutex_unlock(&c->wake_mu);
}

static void mirror_set_reason(struct mirror *c, const char *reason)
{
	pthread_mutex_lock(&c->status_lock);
	snprintf(c->reason, sizeof(c->reason), "%s", reason);
	pthread_mutex_unlock(&c->status_lock);
}

/* Remember r for the next write (write lock held). Grows the list; on
 * ENOMEM the change is still in memory, REC_DIRTY set (so its payload is
 * kept), and r is written with its next change. */
static void mirror_mark_dirty(struct mirror *c, struct rec *r)
{
	/* Set first, whatever happens to the list: a dirty record keeps its
	 * payload in memory (a commit only drops clean ones). */
	r->flags = (uint16_t)((r->flags | REC_DIRTY) & ~REC_REDERIVE);
	if (dlist_push(&c->dirty, r) < 0) {
		log_warnx("keeper: cannot grow the dirty list, change of %s written later",
			  rec_topic(r));
		return;
	}
	if (c->first_dirty_ms == 0) {
		c->first_dirty_ms = mirror_mono_ms(c);
		c->wake_keeper = true; /* the commit timer starts now */
	} else if (dlist_pending(&c->dirty) == MIRROR_FLUSH_ROWS) {
		c->wake_keeper = true; /* commit early */
	}
}

/* Remember r for a write when the keeper has room (write lock held): only
 * what the rules derive changed, which a stop does not wait for. A record
 * dirty already is written whole with its change. */
static void mirror_mark_rederive(struct mirror *c, struct rec *r)
{
	if (r->flags & REC_DIRTY)
		return;
	r->flags |= REC_DIRTY | REC_REDERIVE;
	if (dlist_push(&c->rederive, r) < 0) {
		/* Not on a list: written with its next change, or derived
		 * again at the next start. */
		log_warnx("keeper: cannot grow the list of re-derived keys, %s written later",
			  rec_topic(r));
		return;
	}
	c->wake_keeper = true;
}

static void mirror_log_change(struct mirror *c, struct rec *r, enum change_type t)
{
	if (c->d.changes) {
		changes_append(c->d.changes, r, t);
		c->changed = true;
	}
}

/* Staleness transitions change the record (its stale flag) and so get a
 * revision of their own, like any other change a watcher can see. */
static void mirror_on_transition(struct rec *r, bool became_stale, void *ctx)
{
	struct mirror *c = ctx;

	r->rev = ++c->rev;
	mirror_mark_dirty(c, r);
	mirror_log_change(c, r, became_stale ? CHANGE_STALE : CHANGE_FRESH);
}

/* ---- availability topics (the apply path, write lock held) ---- */

struct status_walk {
	struct mirror *c;
	const char *bound;
	size_t glen;
	int64_t ts_ms;
	size_t visited, changed;
};

static void mirror_on_dead_status(struct rec *r, bool became_stale, void *ctx)
{
	struct status_walk *w = ctx;

	w->changed++;
	mirror_on_transition(r, became_stale, w->c);
}

static int mirror_status_visit(struct rec *r, void *ctx)
{
	struct status_walk *w = ctx;

	if (++w->visited > MIRROR_DEAD_WALK_MAX)
		return 1;
	if ((r->flags & REC_DELETED) || !topic_matches(w->bound, r->data, r->topic_len) ||
	    avail_match(w->c->avail, r->data, r->topic_len) >= 0)
		return 0; /* not covered, or a status topic: never judged */
	stale_mark_dead(w->c->d.stale, r, STALE_REASON_PRODUCER_OFFLINE, (uint32_t)w->glen,
			w->ts_ms, mirror_on_dead_status, w);
	return 0;
}

/* The time a status message speaks for: its own, else when we got it. */
static int64_t mirror_msg_ms(const struct msg *m)
{
	int64_t ts = m->ts_from_payload ? m->ts_ns / 1000000 : m->recv_ms;

	return ts > 0 && ts <= m->recv_ms ? ts : m->recv_ms;
}

/* A status topic's message was applied (or confirmed): the producer it
 * names is offline (remembered, and with walk every key it covers stale at
 * once: one walk of the keys under the bound filter's literal prefix) or
 * online (forgotten; keys turn fresh when heard from themselves). */
static void mirror_status(struct mirror *c, int line, const struct msg *m, bool deleted, bool walk)
{
	char bound[AVAIL_BOUND_MAX];
	enum avail_word w = deleted ? AVAIL_UNKNOWN : avail_word(c->avail, m->payload, m->payload_len);
	struct status_walk k = { .c = c, .bound = bound, .ts_ms = mirror_msg_ms(m) };
	uint32_t dropped;
	int n = avail_bind(c->avail, line, m->topic, m->topic_len, bound, sizeof(bound));

	if (n < 0) {
		static struct log_ratelimit rl = LOG_RATELIMIT_INIT(10000, 5);
		if (log_ratelimit_ok(&rl, m->recv_ms, &dropped))
			log_warnx("liveness: %.*s: the covered keys' filter is too long, ignored",
				  (int)(m->topic_len > 200 ? 200 : m->topic_len), m->topic);
		return;
	}
	if (w != AVAIL_OFFLINE) {
		/* Online, unknown or gone: no longer offline. Keys stay as they
		 * are: an online word is no value of theirs. */
		avail_set_offline(c->avail, bound, false, k.ts_ms);
		return;
	}
	if (avail_set_offline(c->avail, bound, true, k.ts_ms) < 0)
		log_warnx("liveness: out of memory, keys of %s first seen later not marked", bound);
	if (!walk)
		return;
	k.glen = avail_producer_len(bound);
	index_walk(c->d.ix, bound, topic_filter_prefix_len(bound), NULL, 0, mirror_status_visit, &k);
	if (k.visited > MIRROR_DEAD_WALK_MAX)
		log_warnx("liveness: %s offline: more than %d keys under it, the rest left as they are",
			  bound, MIRROR_DEAD_WALK_MAX);
	if (k.changed)
		log_info("liveness: %.*s offline (%.*s): %zu keys stale", (int)k.glen, bound,
			 (int)(m->topic_len > 200 ? 200 : m->topic_len), m->topic, k.changed);
}

/* After a message was applied to r: a status topic speaks, or a key of a
 * producer that is offline arrived other than live (a retained copy after
 * the offline status): stale at once like its siblings. */
static void mirror_liveness(struct mirror *c, const struct msg *m, struct rec *r,
			    enum apply_result res, bool live_seen)
{
	const char *bound;
	int64_t ts;
	int line;

	if (!avail_any(c->avail) || !r ||
	    (res != APPLY_APPLIED && res != APPLY_DUPLICATE && res != APPLY_DELETED))
		return;
	line = avail_match(c->avail, m->topic, m->topic_len);
	if (line >= 0) {
		/* The broker's replay of a status we hold already (a re-sync, a
		 * restart: the keys' state is stored) only tells which producers
		 * are offline; a new word, or one said live, judges the keys. */
		mirror_status(c, line, m, res == APPLY_DELETED,
			      res == APPLY_APPLIED || (res == APPLY_DUPLICATE && !m->retained));
		return;
	}
	if (!live_seen && res != APPLY_DELETED && !(r->flags & REC_STICKY) &&
	    avail_offline_cover(c->avail, m->topic, m->topic_len, &bound, &ts))
		stale_mark_dead(c->d.stale, r, STALE_REASON_PRODUCER_OFFLINE,
				(uint32_t)avail_producer_len(bound), ts, mirror_on_transition, c);
}

static void mirror_apply_one(struct mirror *c, const struct msg *m, enum reject_reason why,
			   size_t full_len)
{
	struct rec *r = NULL;
	bool live_seen = false;
	int64_t now_ms = m->recv_ms, prev_seen = 0;
	enum apply_result res;

	if (why != REJECT_NONE) {
		rejects_add(c->d.rejects, m->topic, m->topic_len, m->payload, m->payload_len,
			    full_len, why, now_ms);
		return;
	}
	res = apply_message(c->d.ix, m, now_ms, &c->lim, &c->rev, &r, &live_seen, &why, &prev_seen);
	switch (res) {
	case APPLY_REJECTED:
		rejects_add(c->d.rejects, m->topic, m->topic_len, m->payload, m->payload_len,
			    full_len, why, now_ms);
		return;
	case APPLY_APPLIED:
		mirror_mark_dirty(c, r);
		mirror_log_change(c, r, CHANGE_UPDATE);
		stale_on_message(c->d.stale, r, live_seen, r->updates == 1, prev_seen, now_ms,
				 mirror_on_transition, c);
		/* The owners' state stream confirms (or not) what was asked. */
		if (c->d.intents)
			intents_observe(c->d.intents, m->topic, m->topic_len, m->payload,
					m->payload_len, m->ts_ns);
		break;
	case APPLY_DELETED:
		mirror_mark_dirty(c, r);
		mirror_log_change(c, r, CHANGE_DELETE);
		stale_on_delete(c->d.stale, r, now_ms, mirror_on_transition, c);
		break;
	case APPLY_DUPLICATE:
		/* last_seen may have moved: persist it with the next write. */
		if (live_seen) {
			if (!(r->flags & REC_DIRTY))
				mirror_mark_dirty(c, r);
			stale_on_message(c->d.stale, r, true, false, prev_seen, now_ms,
					 mirror_on_transition, c);
		}
		break;
	case APPLY_OUT_OF_ORDER:
	case APPLY_RESULT_MAX:
		break;
	}
	mirror_liveness(c, m, r, res, live_seen);
	STAT_INC(messages[res]);
}

/* Tell the staleness engine about the broker link when it changed (write
 * lock held). Both threads call it: the ingest thread before a run of
 * messages, so that the messages of a new session meet a staleness engine
 * that knows of the re-sync; the keeper thread at every turn, for a link
 * that went down with nothing to read. */
static void mirror_check_link(struct mirror *c, int64_t now_ms)
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
}

/* ---- ingest (the session thread) ---- */

/*
** A run of messages read in one wake-up is applied MIRROR_INGEST_HOLD at a
** time under one hold of the write lock, across libmosquitto's reads of
** the next ones (non-blocking: bytes already in the socket). Taken per
** message, at 20k msg/s the lock changed hands 20,000 times a second, and
** with writers preferred every hand-over stalled each HTTP thread
** mid-listing: 2-4x fewer listings and a longer tail of point reads. A
** hold stays some tens of microseconds; the run's end releases it. Between
** two messages the records are settled (index_settled): point reads
** (index_peek) go on without the lock meanwhile.
*/
#define MIRROR_INGEST_HOLD 16

/* The mirror whose write lock this thread holds across messages, if any:
 * what the session thread calls between two messages (mirror_keys_stale
 * from a Sparkplug death) lets the hold go first. */
static _Thread_local struct mirror *holding;

static void mirror_hold_end(struct mirror *c)
{
	if (holding != c)
		return;
	holding = NULL;
	c->held = 0;
	index_unlock(c->d.ix);
}

void mirror_ingest(struct mirror *c, const struct msg *m, enum reject_reason why, size_t full_len)
{
	if (!c->held) {
		index_wrlock(c->d.ix);
		holding = c;
	} else {
		index_changing(c->d.ix);
	}
	if (!c->in_run) {
		c->in_run = true;
		mirror_check_link(c, m->recv_ms);
	}
	mirror_apply_one(c, m, why, full_len);
	if (++c->held >= MIRROR_INGEST_HOLD)
		mirror_hold_end(c);
	else
		index_settled(c->d.ix);
}

void mirror_ingest_flush(struct mirror *c)
{
	bool changed, wake;

	if (!c->in_run)
		return;
	if (!c->held)
		index_wrlock(c->d.ix);
	else
		index_changing(c->d.ix);
	holding = NULL;
	c->held = 0;
	STAT_SET(keys, index_live(c->d.ix));
	STAT_SET(rev, c->rev);
	changed = c->changed;
	c->changed = false;
	wake = c->wake_keeper;
	c->wake_keeper = false;
	c->in_run = false;
	index_unlock(c->d.ix);
	if (changed && c->d.on_changes)
		c->d.on_changes(c->d.on_changes_ctx);
	if (wake)
		mirror_wake(c);
}

/* ---- producer liveness ---- */

struct dead_ctx {
	struct mirror *c;
	const char *producer;
	size_t plen;
	enum stale_reason reason;
	int64_t ts_ms;
	size_t changed;
};

static void mirror_on_dead(struct rec *r, bool became_stale, void *ctx)
{
	struct dead_ctx *k = ctx;

	k->changed++;
	mirror_on_transition(r, became_stale, k->c);
}

/* One key of a dead producer (write lock held). */
static void mirror_dead_key(void *kctx, const char *topic, size_t len)
{
	struct dead_ctx *k = kctx;
	struct rec *r = index_get(k->c->d.ix, topic, len);
	uint32_t glen = ALERTS_NO_GROUP;

	if (!r || (r->flags & REC_DELETED))
		return;
	if (k->plen <= len && memcmp(topic, k->producer, k->plen) == 0 &&
	    (k->plen == len || topic[k->plen] == '/'))
		glen = (uint32_t)k->plen;
	stale_mark_dead(k->c->d.stale, r, k->reason, glen, k->ts_ms, mirror_on_dead, k);
}

/* Under the write lock, from the apply path or mirror_keys_stale. */
static size_t mirror_dead_locked(struct mirror *c, const char *producer, enum stale_reason reason,
				 mirror_keys_fn keys, void *ectx, int64_t ts_ms)
{
	struct dead_ctx k = { c, producer ? producer : "", producer ? strlen(producer) : 0,
			      reason, ts_ms, 0 };

	if (!producer)
		k.plen = SIZE_MAX; /* matches nothing: grouped by topic */
	keys(ectx, mirror_dead_key, &k);
	if (k.changed)
		log_info("liveness: %s gone (%s): %zu keys stale", producer ? producer : "a producer",
			 stale_reason_name(reason) ? stale_reason_name(reason) : "?", k.changed);
	return k.changed;
}

size_t mirror_keys_stale(struct mirror *c, const char *producer, enum stale_reason reason,
			 mirror_keys_fn keys, void *ectx, int64_t ts_ms)
{
	bool changed, wake;
	size_t n;

	mirror_hold_end(c);
	index_wrlock(c->d.ix);
	mirror_check_link(c, ts_ms);
	n = mirror_dead_locked(c, producer, reason, keys, ectx, ts_ms);
	/* Inside a run of messages the run's flush tells watchers. */
	changed = c->changed && !c->in_run;
	if (changed)
		c->changed = false;
	wake = c->wake_keeper && !c->in_run;
	if (wake)
		c->wake_keeper = false;
	index_unlock(c->d.ix);
	if (changed && c->d.on_changes)
		c->d.on_changes(c->d.on_changes_ctx);
	if (wake)
		mirror_wake(c);
	return n;
}

void mirror_link_changed(struct mirror *c)
{
	mirror_wake(c);
}

/* ---- the keeper thread ---- */

/*
** Move records from l's head into the write being staged, up to the chunk's
** limits; with `rederive`, only those still waiting for that alone (a change
** since moved them to the dirty list). A record the staging buffer cannot
** take (out of memory) stays at the head for the next write.
*/
static size_t mirror_stage_list(struct mirror *c, struct dlist *l, bool rederive, size_t n,
				size_t *bytes, size_t limit)
{
	size_t i = l->head;

	for (; i < l->n; i++) {
		struct rec *r = l->v[i];

		if (!(r->flags & REC_DIRTY) || (rederive && !(r->flags & REC_REDERIVE)))
			continue; /* a repeat, or staged already */
		if (n >= limit || *bytes >= MIRROR_STAGE_BYTES ||
		    rows_stage(c->d.store, c->d.ix, r) < 0)
			break;
		r->flags &= (uint16_t)~(REC_DIRTY | REC_REDERIVE);
		if (!(r->flags & REC_IN_FILE))
			*bytes += r->payload_len; /* else written without it */
		c->wbatch[n++] = r;
	}
	l->head = i;
	if (l->head == l->n)
		l->head = l->n = 0;
	return n;
}

/*
** Stage the dirty records for a write when one is due (write lock held):
** copy each into the store's staging buffer and clear its REC_DIRTY, so
** that a change made while the write runs marks it dirty again. Changes go
** first; re-derived records fill what is left of a chunk, at most every
** other commit's time, and never while stopping. n rows (*bytes of
** payload) are staged already; up to `limit` in all. Returns the number
** staged (n: nothing more due).
*/
static size_t mirror_stage(struct mirror *c, bool force, bool stopping, int64_t mono, size_t n,
			   size_t *bytes, size_t limit)
{
	size_t pending = dlist_pending(&c->dirty);
	bool values = pending && (force || mono - c->first_dirty_ms >= c->d.conf->commit_interval_ms ||
				  pending >= MIRROR_FLUSH_ROWS);
	bool rederive = !stopping && dlist_pending(&c->rederive) && mono >= c->rederive_at_ms;

	if (!values && !rederive)
		return n;
	if (!force && c->retry_at_ms && mono < c->retry_at_ms)
		return n;
	if (!c->wbatch) {
		if (!(c->wbatch = malloc(MIRROR_STAGE_ROWS * sizeof(*c->wbatch)))) {
			log_warnx("keeper: out of memory for a store write, retrying");
			return n;
		}
	}
	if (values) {
		n = mirror_stage_list(c, &c->dirty, false, n, bytes, limit);
		/* What is left is due already: first_dirty_ms stays. */
		if (!dlist_pending(&c->dirty))
			c->first_dirty_ms = 0;
	}
	if (rederive)
		n = mirror_stage_list(c, &c->rederive, true, n, bytes, limit);
	return n;
}

/* The file cannot take writes (why: err): logged once, not ready, and said
 * so by /readyz, until a write succeeds or the file is back. */
static void mirror_store_down(struct mirror *c, const char *err, const char *then)
{
	char reason[sizeof(c->reason)];

	if (!c->store_failed)
		log_error("store: %s; serving from memory%s", err, then);
	c->store_failed = true;
	snprintf(reason, sizeof(reason), "store: %.200s", err);
	mirror_set_reason(c, reason);
}

/* Write what mirror_stage staged, without the lock. */
static void mirror_commit(struct mirror *c, size_t n)
{
	char err[256], then[64];
	int64_t t0, t1;
	int rc;

	t0 = mirror_mono_ms(c);
	rc = store_commit(c->d.store, err, sizeof(err));
	t1 = mirror_mono_ms(c);
	c->last_commit_ms = t1 - t0;
	if (rc == 0) {
		/* The file has these values now: their payloads leave memory,
		 * unless a record changed again meanwhile (dirty: its new value
		 * waits for the next write). */
		for (size_t i = 0; i < n; i += MIRROR_STAGE_SLICE) {
			size_t end = n - i > MIRROR_STAGE_SLICE ? i + MIRROR_STAGE_SLICE : n;

			index_wrlock(c->d.ix);
			for (size_t j = i; j < end; j++)
				if (!(c->wbatch[j]->flags & REC_DIRTY))
					rec_drop_payload(c->wbatch[j]);
			index_unlock(c->d.ix);
		}
		stats_commit_observe((uint64_t)(t1 - t0) * 1000);
		STAT_INC(commits);
		STAT_ADD(rows_written, n);
		c->retry_at_ms = 0;
		c->retry_delay_ms = 0;
		if (c->store_failed) {
			log_info("store: writing again, %zu records caught up", n);
			c->store_failed = c->file_gone = false;
		}
		if (t1 - c->last_checkpoint_ms >= MIRROR_CHECKPOINT_MS) {
			store_checkpoint(c->d.store);
			c->last_checkpoint_ms = t1;
		}
		return;
	}

	/* Mark every staged record dirty again (those changed meanwhile are
	 * dirty already) and try again later. */
	STAT_INC(commit_errors);
	index_wrlock(c->d.ix);
	for (size_t i = 0; i < n; i++)
		if (!(c->wbatch[i]->flags & REC_DIRTY))
			mirror_mark_dirty(c, c->wbatch[i]);
	c->wake_keeper = false;
	index_unlock(c->d.ix);
	c->retry_delay_ms = c->retry_delay_ms ? c->retry_delay_ms * 2 : MIRROR_RETRY_MIN_MS;
	if (c->retry_delay_ms > MIRROR_RETRY_MAX_MS)
		c->retry_delay_ms = MIRROR_RETRY_MAX_MS;
	c->retry_at_ms = t1 + c->retry_delay_ms;
	snprintf(then, sizeof(then), ", retrying with backoff up to %d s",
		 MIRROR_RETRY_MAX_MS / 1000);
	mirror_store_down(c, err, then);
}

/*
** With nothing to write, the keeper still looks about once a second whether
** the database file is where it was opened (removed, or another moved over
** it), so /readyz says so at once rather than at the next write. Back in
** place, and nothing held, it is ready again here; with records held, the
** next write's success says so.
*/
static void mirror_check_file(struct mirror *c, int64_t mono)
{
	char err[512];

	if (mono - c->file_checked_ms < MIRROR_FILE_CHECK_MS)
		return;
	c->file_checked_ms = mono;
	if (store_check_file(c->d.store, err, sizeof(err)) == 0) {
		if (c->file_gone && !dlist_pending(&c->dirty)) {
			log_info("store: the database file is back");
			c->store_failed = c->file_gone = false;
			c->retry_at_ms = c->retry_delay_ms = 0;
		}
		return;
	}
	if (c->store_failed)
		return;
	c->file_gone = true;
	mirror_store_down(c, err, "");
}

static void mirror_update_ready(struct mirror *c, bool synced, size_t keys)
{
	char why[256];
	bool ready = synced && !c->store_failed;
	bool was = atomic_load(&c->ready);

	/* Synced (the header) once the retained burst is applied, whatever
	 * the store does: the answers are current even when the file lags.
	 * The session reports synced only after it handed the whole burst to
	 * mirror_ingest, which applied it there and then. */
	atomic_store(&c->synced, synced);
	if (!ready && !c->store_failed) {
		if (c->d.mqtt)
			mqtt_status(c->d.mqtt, why, sizeof(why));
		else
			snprintf(why, sizeof(why), "no broker session");
		mirror_set_reason(c, why);
	}
	if (ready == was)
		return;
	if (ready) {
		mirror_set_reason(c, "");
		log_info("ready: synced with the broker, %zu keys", keys);
	} else {
		pthread_mutex_lock(&c->status_lock);
		log_warnx("not ready: %s", c->reason);
		pthread_mutex_unlock(&c->status_lock);
	}
	atomic_store(&c->ready, ready);
}

/* The old tombstones store_load skipped leave the file before the first
 * write (a full scan: off the startup path, on this thread; skipped when
 * the load skipped none, since it holds up the keeper's first turn). */
static void mirror_purge(struct mirror *c)
{
	int64_t purged = 0;
	char err[256];

	if (!c->d.purge_before_ns || !store_forgotten(c->d.store))
		return;
	if (store_purge_tombstones(c->d.store, c->d.purge_before_ns, &purged, err, sizeof(err)) < 0)
		log_warnx("store: old tombstones not purged: %s", err);
	else if (purged)
		log_info("store: %lld tombstones older than a day purged", (long long)purged);
}

static void *mirror_main(void *arg)
{
	struct mirror *c = arg;
	int64_t wait_ms = 0;

	mirror_purge(c);

	for (;;) {
		bool stopping = atomic_load(&c->stop);
		bool changed, synced, again = false, force;
		int64_t now, mono;
		size_t staged, left, rleft, keys, bytes = 0;

		if (!stopping)
			mirror_sleep(c, wait_ms);
		now = mirror_wall_ms(c);
		mono = mirror_mono_ms(c);
		atomic_store(&c->heartbeat, mono);
		index_wrlock(c->d.ix);
		mirror_check_link(c, now);
		wait_ms = stale_tick(c->d.stale, now, mirror_on_transition, c);
		keys = index_live(c->d.ix);
		STAT_SET(keys, keys);
		STAT_SET(rev, c->rev);
		synced = c->link_synced;
		changed = c->changed;
		c->changed = false;
		c->wake_keeper = false;
		force = stopping || (c->store_failed && c->retry_at_ms && mono >= c->retry_at_ms);
		staged = mirror_stage(c, force, stopping, mono, 0, &bytes, MIRROR_STAGE_SLICE);
		left = dlist_pending(&c->dirty);
		rleft = dlist_pending(&c->rederive);
		if (left) {
			int64_t due = c->first_dirty_ms + c->d.conf->commit_interval_ms - mono;

			if (c->retry_at_ms && c->retry_at_ms - mono > due)
				due = c->retry_at_ms - mono;
			if (due <= 0)
				again = staged > 0; /* a backlog: the next chunk at once */
			else if (due < wait_ms || wait_ms <= 0)
				wait_ms = due;
		}
		index_unlock(c->d.ix);
		/* The rest of the chunk, a slice a lock hold. */
		while (staged && staged < MIRROR_STAGE_ROWS) {
			size_t more;

			index_wrlock(c->d.ix);
			more = mirror_stage(c, force, stopping, mono, staged, &bytes,
					    staged + MIRROR_STAGE_SLICE);
			index_unlock(c->d.ix);
			if (more == staged)
				break;
			staged = more;
		}
		if (changed && c->d.on_changes)
			c->d.on_changes(c->d.on_changes_ctx);
		if (staged)
			mirror_commit(c, staged);
		else if (!stopping && c->d.store)
			mirror_check_file(c, mono);
		mirror_update_ready(c, synced, keys);
		if (rleft && !stopping) {
			/* Re-derived rows take at most half the keeper's time:
			 * the next chunk waits as long as this one's write took. */
			int64_t t = mirror_mono_ms(c), due;

			if (staged)
				c->rederive_at_ms = t + (c->last_commit_ms > 0 ? c->last_commit_ms : 1);
			due = c->rederive_at_ms - t;
			if (due < 1)
				due = 1;
			if (wait_ms <= 0 || due < wait_ms)
				wait_ms = due;
		}

		if (wait_ms <= 0 || wait_ms > MIRROR_TICK_MAX_MS)
			wait_ms = MIRROR_TICK_MAX_MS;
		if (again && !c->store_failed)
			wait_ms = 0;
		/* Stopping: write the backlog chunk by chunk, unless the store
		 * refuses (then mirror_stop says what is lost). */
		if (stopping && (!left || !staged || c->store_failed))
			break;
	}
	return NULL;
}

static int mirror_seed_dirty(struct rec *r, void *ctx)
{
	uint16_t f = r->flags;

	if (!(f & REC_DIRTY))
		return 0;
	r->flags &= (uint16_t)~(REC_DIRTY | REC_REDERIVE);
	if (f & REC_REDERIVE)
		mirror_mark_rederive(ctx, r);
	else
		mirror_mark_dirty(ctx, r);
	return 0;
}

int mirror_start(const struct mirror_deps *d, struct mirror **ret)
{
	struct mirror *c = calloc(1, sizeof(*c));
	pthread_condattr_t ca;
	int rc;

	if (!c)
		return -ENOMEM;
	c->d = *d;
	c->rev = d->rev;
	c->lim.future_skew_ms = d->conf->future_skew_ms;
	c->lim.max_keys = d->conf->max_keys;
	if (!(c->avail = avail_new(d->conf))) {
		free(c);
		return -ENOMEM;
	}
	c->clk = d->clk ? *d->clk : clock_system;
	c->last_checkpoint_ms = mirror_mono_ms(c);
	atomic_store(&c->heartbeat, mirror_mono_ms(c));
	pthread_mutex_init(&c->status_lock, NULL);
	pthread_mutex_init(&c->wake_mu, NULL);
	/* Timed waits on the monotonic clock: a wall-clock step must not
	 * turn a 100 ms tick into an hour or a busy loop. */
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&c->wake_cv, &ca);
	pthread_cond_init(&c->turn_cv, &ca);
	pthread_condattr_destroy(&ca);
	snprintf(c->reason, sizeof(c->reason), "starting");

	/* Startup counts as "not synced": keys judged stale from the stored
	 * last_seen are not alerted until the mirror has re-synced and given
	 * each its grace period. Records that changed at load (REC_DIRTY) are
	 * written with the first commit. */
	index_wrlock(c->d.ix);
	stale_on_broker(c->d.stale, false, mirror_wall_ms(c));
	index_walk(c->d.ix, NULL, 0, NULL, 0, mirror_seed_dirty, c);
	index_unlock(c->d.ix);

	rc = stale_start_delivery(c->d.stale);
	if (rc == 0 && (rc = pthread_create(&c->thread, NULL, mirror_main, c)) != 0)
		stale_stop_delivery(c->d.stale);
	if (rc) {
		pthread_cond_destroy(&c->turn_cv);
		pthread_cond_destroy(&c->wake_cv);
		pthread_mutex_destroy(&c->wake_mu);
		pthread_mutex_destroy(&c->status_lock);
		free(c->dirty.v);
		free(c->rederive.v);
		avail_free(c->avail);
		free(c);
		return -rc;
	}
	*ret = c;
	return 0;
}

void mirror_stop(struct mirror *c)
{
	if (!c)
		return;
	atomic_store(&c->stop, true);
	mirror_wake(c);
	pthread_join(c->thread, NULL);
	stale_stop_delivery(c->d.stale); /* before the MQTT session it publishes to is freed */
	if (dlist_pending(&c->dirty))
		log_warnx("store: %zu changes could not be written at shutdown",
			  dlist_pending(&c->dirty));
	if (dlist_pending(&c->rederive))
		log_info("store: %zu keys' re-derived cadence not written; the next start derives it again",
			 dlist_pending(&c->rederive));
	pthread_cond_destroy(&c->turn_cv);
	pthread_cond_destroy(&c->wake_cv);
	pthread_mutex_destroy(&c->wake_mu);
	pthread_mutex_destroy(&c->status_lock);
	free(c->dirty.v);
	free(c->rederive.v);
	free(c->wbatch);
	avail_free(c->avail);
	free(c);
}

bool mirror_ready(struct mirror *c, char *buf, size_t n)
{
	bool ready = atomic_load(&c->ready);

	if (buf && n) {
		pthread_mutex_lock(&c->status_lock);
		snprintf(buf, n, "%s", ready ? "" : c->reason);
		pthread_mutex_unlock(&c->status_lock);
	}
	return ready;
}

void mirror_broker_status(struct mirror *c, char *buf, size_t n)
{
	if (c->d.mqtt)
		mqtt_status(c->d.mqtt, buf, n);
	else if (n)
		snprintf(buf, n, "no broker session");
}

bool mirror_synced(struct mirror *c)
{
	return atomic_load(&c->synced);
}

int64_t mirror_heartbeat(struct mirror *c)
{
	return atomic_load(&c->heartbeat);
}

int mirror_wait_turn(struct mirror *c, int timeout_ms)
{
	struct timespec dl;
	uint64_t target;
	int rc = 0;

	mirror_deadline(&dl, timeout_ms);
	pthread_mutex_lock(&c->wake_mu);
	/* Turn target - 1 begins after this read; it is done once target begins. */
	target = c->turns + 2;
	while (c->turns < target && rc == 0) {
		c->wake = true;
		pthread_cond_signal(&c->wake_cv);
		rc = pthread_cond_timedwait(&c->turn_cv, &c->wake_mu, &dl);
	}
	rc = c->turns >= target ? 0 : -ETIMEDOUT;
	pthread_mutex_unlock(&c->wake_mu);
	return rc;
}

static void mirror_cadence_changed(struct rec *r, void *ctx)
{
	mirror_mark_rederive(ctx, r);
}

void mirror_reload(struct mirror *c, const struct conf *conf)
{
	/* Keys whose cadence the new rules change are written back, so the
	 * file follows the reload without waiting for their next message. */
	index_wrlock(c->d.ix);
	if (stale_reconfigure(c->d.stale, conf, mirror_cadence_changed, c) < 0)
		log_warnx("reload: out of memory, staleness settings unchanged");
	if (avail_reconfigure(c->avail, conf) < 0)
		log_warnx("reload: out of memory, [liveness] settings unchanged");
	index_unlock(c->d.ix);
	mirror_wake(c);
}
