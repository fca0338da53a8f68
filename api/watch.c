/* SPDX-License-Identifier: MIT */
/* watch.c: /v1/watch: Server-Sent Event streams of changes, with snapshot and resume. */
#include "api/watch.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include <microhttpd.h>

#include "common/buf.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/stats.h"
#include "common/topic.h"
#include "api/pathdec.h"
#include "api/render.h"

/*
** Budgets. A connection thread renders snapshot and catch-up a chunk at a
** time, dropping the index read lock in between, so the writers (ingest
** and the keeper thread) never wait long behind a big snapshot. The hub
** reads the change log in batches for the same reason.
*/
#define WATCH_CHUNK_BYTES (64u << 10)  /* render until this much is pending */
#define WATCH_SNAP_VISITS 4096         /* records looked at per lock hold */
#define WATCH_SNAP_RENDERS 256         /* records rendered per lock hold */
#define WATCH_BATCH 64                 /* changes per lock hold */
#define WATCH_BLOCK_SIZE (32u << 10)   /* libmicrohttpd's read block hint */

/* Where a listener is. Only its connection thread moves it forward, and
 * into W_LIVE only under the hub mutex; from then on the hub feeds it. */
enum wphase {
	W_RESUME,       /* check that `cursor` is still in the change log */
	W_SNAPSHOT,     /* walking the index (a full snapshot, or a replay: see replay_from) */
	W_CATCHUP,      /* reading the change log after `cursor` */
	W_LIVE,         /* fed by the hub */
	W_PHASE_MAX
};

struct watcher {
	struct watcher *prev, *next;    /* the hub's list (mu) */
	struct watch *hub;
	struct MHD_Connection *conn;
	int fd;                         /* the connection's socket, -1 unknown */
	uint64_t serial;                /* names it in the hub's epoll set */
	bool epolled;                   /* mu: in the hub's epoll set */
	char *filter;
	size_t plen;                    /* literal prefix of the filter */
	bool literal;                   /* no wildcard: the filter is a topic */
	_Atomic enum wphase phase;      /* also read by the hub without mu */
	bool started;                   /* past W_RESUME: a gap now means "too slow" */
	bool suspended;                 /* mu: suspended by us, not yet resumed */
	bool dead;                      /* mu: cut off; the reader ends the stream */
	bool hungup;                    /* mu: the client went away (not an error) */
	int64_t cursor;                 /* catch-up: the last revision dealt with */
	/* The oldest revision it still needs from the change log (cursor or
	 * snap_rev), -1 when none: the hub cuts off a listener that fell out
	 * of the log even when its connection thread never runs (a client
	 * that does not read). Written by the connection thread. */
	_Atomic int64_t need_rev;
	int64_t skip_to;                /* live: the hub skips revisions <= this */
	int64_t snap_rev;               /* the change-log head the snapshot is cut at */
	bool snap_begun;
	const struct rec *snap_last;    /* the last record the snapshot walk visited */
	uint64_t snap_count;
	/* >= 0: the walk is a replay, not a snapshot: only records changed
	 * after this revision are sent (see watch_set_resume). */
	int64_t replay_from;
	/* Output: bytes [off, len) are still to be sent. Before W_LIVE only
	 * the connection thread touches it; once live, only under mu. */
	struct buf out;
	size_t off;
};

struct watch {
	const struct conf *conf;
	struct index *ix;
	struct changes *cl;
	size_t max_clients;
	size_t buffer;                  /* per-listener limit of pending bytes */

	pthread_mutex_t mu;             /* the list, live listeners' output, pos */
	struct watcher *head;
	size_t nwatchers;
	size_t nlive;
	int64_t pos;                    /* every change <= pos went to live listeners */
	bool closing;

	/* Revisions a listener may resume from by a replay of the records
	 * when the change log no longer holds them (watch_set_resume):
	 * [file_floor, file_max] from the file, [run_base, head] from this
	 * run. Set before serving; read-only afterwards. */
	int64_t file_floor, file_max, run_base;

	/* Held by whoever collects suspended listeners and resumes them, so
	 * that watch_shutdown() knows no resume is still in flight. */
	pthread_mutex_t resume_mu;

	uint64_t serial_next;           /* mu */
	int efd;                        /* eventfd: wake the hub */
	int epfd;                       /* the eventfd and suspended listeners' sockets */
	atomic_bool kicked;
	atomic_size_t listening;        /* nwatchers, for watch_wake without mu */
	atomic_bool stop;
	pthread_t thread;
	bool thread_started;

	struct buf ev;                  /* the hub's render buffer */
	/* Connections to resume: queued under mu by whoever wakes a listener
	 * (the hub, or watch_event on an HTTP or MQTT thread), taken and
	 * resumed by hub_flush_resumes under resume_mu, with the spare list
	 * (resume_mu) swapped in so that mu is not held while resuming. */
	struct MHD_Connection **resume; /* mu */
	size_t nresume, capresume;      /* mu */
	struct MHD_Connection **spare;  /* resume_mu */
	size_t capspare;                /* resume_mu */
	struct log_ratelimit rl;
};

static const char hello[] = ": statemirror watch\n\n";
static const char heartbeat[] = ": heartbeat\n\n";

/* ---- matching and rendering ------------------------------------------- */

/* Cheap first: most listeners' literal prefixes rule most topics out
 * with one memcmp; topic_matches() only runs on what is left. */
static bool w_match_topic(const struct watcher *w, const char *topic, size_t len)
{
	if (len < w->plen || memcmp(topic, w->filter, w->plen) != 0)
		return false;
	if (w->literal)
		return len == w->plen;
	return topic_matches(w->filter, topic, len);
}

static bool w_match(const struct watcher *w, const struct rec *r)
{
	return w_match_topic(w, rec_topic(r), r->topic_len);
}

/* One change as an event, index read lock held. */
/* Why a render failed, for the log line of a listener cut off for it. */
static const char *render_failure(int err)
{
	return err == -ENOMEM ? "out of memory" : "cannot read a payload from the database";
}

static int render_event(struct buf *b, const struct index *ix, const char *type, int64_t id,
			const struct rec *r, int64_t now_ms)
{
	size_t mark = b->len;
	int ret;

	if (id >= 0)
		ret = buf_printf(b, "event: %s\nid: %lld\ndata: ", type, (long long)id);
	else
		ret = buf_printf(b, "event: %s\ndata: ", type);
	if (ret == 0)
		ret = (r->flags & REC_DELETED) ? render_tombstone(b, r) : render_record(b, ix, r, now_ms);
	if (ret == 0)
		ret = buf_puts(b, "\n\n");
	if (ret < 0 && b->data) {
		b->len = mark;
		b->data[mark] = '\0';
	}
	return ret;
}

static size_t w_pending(const struct watcher *w)
{
	return w->out.len - w->off;
}

/* Copy pending output to libmicrohttpd's buffer. */
static size_t w_take(struct watcher *w, char *dst, size_t max)
{
	size_t n = w_pending(w);

	if (n > max)
		n = max;
	if (n) {
		memcpy(dst, w->out.data + w->off, n);
		w->off += n;
	}
	if (w->off == w->out.len) {
		buf_reset(&w->out);
		w->off = 0;
	}
	return n;
}

/* Append a rendered event to a live listener, within its limit: an event
 * always fits into an empty buffer, whatever its size. mu held.
 * Returns 0, -ENOBUFS (over the limit) or -ENOMEM. */
static int w_push(struct watcher *w, const char *p, size_t n, size_t limit)
{
	size_t pend = w_pending(w);

	if (pend && pend + n > limit)
		return -ENOBUFS;
	if (w->off && (w->off >= w->out.len / 2 || w->out.len + n > w->out.cap)) {
		memmove(w->out.data, w->out.data + w->off, pend);
		w->out.len = pend;
		w->out.data[pend] = '\0';
		w->off = 0;
	}
	return buf_append(&w->out, p, n);
}

/* ---- cutting a listener off ------------------------------------------- */

static void log_drop(struct watch *h, const struct watcher *w, const char *why)
{
	uint32_t suppressed = 0;

	STAT_INC(watchers_dropped);
	if (!log_ratelimit_ok(&h->rl, clock_mono_ms(), &suppressed))
		return;
	if (suppressed)
		log_warnx("watch: listener on %s disconnected: %s (%u similar lines suppressed)",
			  w->filter, why, suppressed);
	else
		log_warnx("watch: listener on %s disconnected: %s", w->filter, why);
}

/* Queue c to be resumed once mu is dropped (mu held, any thread: the
 * next hub_flush_resumes resumes it). */
static void hub_queue_resume(struct watch *h, struct MHD_Connection *c)
{
	if (h->nresume == h->capresume) {
		size_t ncap = h->capresume ? 2 * h->capresume : 64;
		struct MHD_Connection **nr = realloc(h->resume, ncap * sizeof(*nr));

		if (!nr) {
			/* Resume now, under mu: libmicrohttpd never calls our
			 * callbacks while it holds the lock MHD_resume_connection
			 * takes, so this is only slower, not unsafe. */
			MHD_resume_connection(c);
			return;
		}
		h->resume = nr;
		h->capresume = ncap;
	}
	h->resume[h->nresume++] = c;
}

/* Resume what was queued (resume_mu held, mu not held). */
static void hub_flush_resumes(struct watch *h)
{
	struct MHD_Connection **v;
	size_t n, cap;

	pthread_mutex_lock(&h->mu);
	v = h->resume;
	n = h->nresume;
	cap = h->capresume;
	h->resume = h->spare;
	h->capresume = h->capspare;
	h->nresume = 0;
	pthread_mutex_unlock(&h->mu);
	for (size_t i = 0; i < n; i++)
		MHD_resume_connection(v[i]);
	h->spare = v;
	h->capspare = cap;
}

/* Wake a listener suspended by its reader (mu held: the hub, watch_event
** on an HTTP or MQTT thread, or watch_shutdown). */
static void w_unsuspend(struct watch *h, struct watcher *w)
{
	if (!w->suspended)
		return;
	w->suspended = false;
	if (w->epolled) {
		epoll_ctl(h->epfd, EPOLL_CTL_DEL, w->fd, NULL);
		w->epolled = false;
	}
	hub_queue_resume(h, w->conn);
}

/*
** Disconnect w (mu held, hub thread). A suspended connection is resumed and
** its reader ends the stream. One that is not suspended is usually stuck
** on a full socket buffer (the client does not read): libmicrohttpd would
** only notice at its idle timeout, so the socket is shut down now. w is on
** the list, so its response (and with it the socket, which libmicrohttpd
** closes only after destroying the response) is still there.
*/
static void hub_kill(struct watch *h, struct watcher *w, const char *why)
{
	const union MHD_ConnectionInfo *ci;

	if (w->dead)
		return;
	w->dead = true;
	if (why)
		log_drop(h, w, why);
	if (w->suspended) {
		w_unsuspend(h, w);
		return;
	}
	ci = MHD_get_connection_info(w->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
	if (ci && ci->connect_fd >= 0)
		shutdown(ci->connect_fd, SHUT_RDWR);
}

/* ---- the hub: live listeners ------------------------------------------ */

/* Cut off listeners that still need changes the log no longer holds
 * (index read lock and mu held). */
static void hub_cut_laggards(struct watch *h)
{
	for (struct watcher *w = h->head; w; w = w->next) {
		int64_t need = atomic_load(&w->need_rev);
		bool gap;

		if (w->dead || w->phase == W_LIVE || need < 0)
			continue;
		changes_read(h->cl, need, NULL, 0, &gap);
		if (gap)
			hub_kill(h, w, "too slow, it fell out of the change log");
	}
}

/* Hand one batch of new changes to every live listener. Returns the
 * number of changes read (0: nothing new). */
static size_t hub_pump_batch(struct watch *h, int64_t now_ms)
{
	struct change batch[WATCH_BATCH];
	bool gap;
	size_t n;

	index_rdlock(h->ix);
	pthread_mutex_lock(&h->mu); /* pos moves under mu (see watch_open) */
	n = changes_read(h->cl, h->pos, batch, WATCH_BATCH, &gap);
	if (gap) {
		/* The hub fell further behind than the log holds (it should
		 * not: while anyone listens it is woken after every run of
		 * applied messages and every keeper turn that appended
		 * changes). Live listeners missed changes; they must
		 * reconnect and resume. */
		for (struct watcher *w = h->head; w; w = w->next)
			if (w->phase == W_LIVE)
				hub_kill(h, w, "the change log overflowed");
		h->pos = changes_head(h->cl);
		n = 1;
		goto out;
	}
	if (n == 0 || h->nlive == 0 || h->closing)
		goto advance;
	for (size_t i = 0; i < n; i++) {
		const struct change *c = &batch[i];
		bool rendered = false;
		int failed = 0;         /* the render's error: rendered once for all */

		if (c->rec->rev != c->rev)
			continue; /* superseded: a later entry carries its state */
		for (struct watcher *w = h->head; w; w = w->next) {
			int r;

			if (w->phase != W_LIVE || w->dead || c->rev <= w->skip_to || !w_match(w, c->rec))
				continue;
			if (!rendered && !failed) {
				buf_reset(&h->ev);
				failed = render_event(&h->ev, h->ix, change_type_name(c->type), c->rev,
						      c->rec, now_ms);
				rendered = failed == 0;
			}
			if (failed) {
				/* It would miss this change: cut it off, it resumes
				 * from the change log when it reconnects. */
				hub_kill(h, w, render_failure(failed));
				continue;
			}
			r = w_push(w, h->ev.data, h->ev.len, h->buffer);
			if (r == -ENOBUFS) {
				/* Its buffer is full: from here it reads the
				 * change log at its own pace (every change
				 * before this one is in its buffer). */
				w->phase = W_CATCHUP;
				w->cursor = c->rev - 1 > w->skip_to ? c->rev - 1 : w->skip_to;
				atomic_store(&w->need_rev, w->cursor);
				h->nlive--;
				continue;
			}
			if (r < 0) {
				hub_kill(h, w, "out of memory");
				continue;
			}
			w_unsuspend(h, w);
		}
	}
advance:
	if (n)
		h->pos = batch[n - 1].rev;
	hub_cut_laggards(h);
out:
	pthread_mutex_unlock(&h->mu);
	index_unlock(h->ix);
	return n;
}

void watch_event(struct watch *h, const char *topic, size_t topic_len, const char *ev, size_t len)
{
	bool queued;

	if (!h || atomic_load_explicit(&h->listening, memory_order_relaxed) == 0)
		return;
	pthread_mutex_lock(&h->mu);
	for (struct watcher *w = h->head; w && !h->closing; w = w->next) {
		if (w->phase != W_LIVE || w->dead || !w_match_topic(w, topic, topic_len))
			continue;
		/* Best effort, like a heartbeat: a listener whose buffer is
		 * full misses it (GET /v1/intents has the state). */
		if (w_push(w, ev, len, h->buffer) < 0)
			continue;
		w_unsuspend(h, w);
	}
	queued = h->nresume > 0;
	pthread_mutex_unlock(&h->mu);
	/* The hub resumes them: this thread may hold the index lock, which
	 * the hub takes after resume_mu, so it must not take resume_mu. */
	if (queued)
		watch_wake(h);
}

static void hub_heartbeat(struct watch *h)
{
	pthread_mutex_lock(&h->mu);
	for (struct watcher *w = h->head; w && !h->closing; w = w->next) {
		if (w->phase != W_LIVE || w->dead || w_pending(w))
			continue;
		if (w_push(w, heartbeat, sizeof(heartbeat) - 1, h->buffer) < 0)
			continue;
		w_unsuspend(h, w);
	}
	pthread_mutex_unlock(&h->mu);
}

/*
** A suspended listener's client hung up (its socket reported RDHUP/HUP/
** ERR): libmicrohttpd does not look at suspended sockets, so without this
** a vanished client would hold its slot until the next heartbeat. The
** event names the listener by serial, not by pointer: one found on the
** list and still in the epoll set is certainly alive.
*/
static void hub_hangup(struct watch *h, uint64_t serial)
{
	pthread_mutex_lock(&h->mu);
	for (struct watcher *w = h->head; w && !h->closing; w = w->next) {
		if (w->serial == serial) {
			if (w->epolled) {
				w->hungup = true;
				hub_kill(h, w, NULL);
			}
			break;
		}
	}
	pthread_mutex_unlock(&h->mu);
}

static void *hub_main(void *arg)
{
	struct watch *h = arg;
	int64_t next_beat = clock_mono_ms() + WATCH_HEARTBEAT_MS;

	while (!atomic_load(&h->stop)) {
		struct epoll_event evs[32];
		int64_t now = clock_mono_ms();
		bool kicked = false;
		uint64_t v;
		int n;

		if (now >= next_beat) {
			pthread_mutex_lock(&h->resume_mu);
			hub_heartbeat(h);
			hub_flush_resumes(h);
			pthread_mutex_unlock(&h->resume_mu);
			next_beat = now + WATCH_HEARTBEAT_MS;
			continue;
		}
		n = epoll_wait(h->epfd, evs, 32, (int)(next_beat - now));
		pthread_mutex_lock(&h->resume_mu);
		for (int i = 0; i < n; i++) {
			if (evs[i].data.u64 == 0)
				kicked = true;
			else
				hub_hangup(h, evs[i].data.u64);
		}
		hub_flush_resumes(h);
		pthread_mutex_unlock(&h->resume_mu);
		if (!kicked)
			continue;
		if (read(h->efd, &v, sizeof(v)) < 0 && errno != EAGAIN)
			log_warn("watch: eventfd read");
		/* Clear before reading the log: a wake that comes after this
		 * writes the eventfd again, so no change waits for the next one. */
		atomic_store(&h->kicked, false);
		for (;;) {
			size_t k;

			pthread_mutex_lock(&h->resume_mu);
			k = hub_pump_batch(h, clock_wall_ms());
			hub_flush_resumes(h);
			pthread_mutex_unlock(&h->resume_mu);
			if (k == 0 || atomic_load(&h->stop))
				break;
		}
	}
	return NULL;
}

void watch_wake(void *ctx)
{
	struct watch *h = ctx;
	uint64_t one = 1;

	/* Nobody listens: the hub sleeps on. A first listener brings the
	 * hub's position to the log's head as it joins (watch_open), so
	 * the changes it missed are no gap. Ingest calls this after every
	 * run of messages; a hub wake-up each time cost more than the run. */
	if (!h || atomic_load_explicit(&h->listening, memory_order_relaxed) == 0 ||
	    atomic_exchange(&h->kicked, true))
		return;
	/* Non-blocking; it can only fail when the counter would overflow,
	 * and then the hub has a wake pending anyway. */
	if (write(h->efd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		log_warn("watch: eventfd write");
}

/* ---- a listener's own connection thread: snapshot and catch-up -------- */

struct snap_ctx {
	struct watcher *w;
	const struct index *ix;
	int64_t now_ms;
	size_t visits, renders;
	bool paused;
	int err;
};

static int snap_visit(struct rec *r, void *arg)
{
	struct snap_ctx *s = arg;
	struct watcher *w = s->w;
	int ret;

	if (s->visits >= WATCH_SNAP_VISITS || s->renders >= WATCH_SNAP_RENDERS ||
	    w_pending(w) >= WATCH_CHUNK_BYTES) {
		s->paused = true;
		return 1;
	}
	s->visits++;
	w->snap_last = r;
	/* A record changed since the cut comes from the change log after
	 * `synced`, with its id: sending it here too would be a duplicate.
	 * A replay sends what changed after replay_from, deletes included;
	 * a snapshot every live record. */
	if (r->rev > w->snap_rev || !w_match(w, r))
		return 0;
	if (w->replay_from >= 0 ? r->rev <= w->replay_from : (r->flags & REC_DELETED) != 0)
		return 0;
	if ((ret = render_event(&w->out, s->ix, (r->flags & REC_DELETED) ? "delete" : "update", -1,
				r, s->now_ms)) < 0) {
		s->err = ret;
		return 1;
	}
	s->renders++;
	w->snap_count++;
	return 0;
}

/*
** One chunk of the snapshot. The walk goes by topic, dropping the read
** lock between chunks; records never move or die (index.h), so the last
** visited record's topic is where the next chunk starts. Every record
** that existed at the cut is visited; those unchanged since (rev <=
** snap_rev) are sent here, the others by the change log after `synced`.
*/
static int snapshot_step(struct watch *h, struct watcher *w)
{
	struct snap_ctx s = { .w = w, .ix = h->ix, .now_ms = clock_wall_ms() };
	int ret;

	index_rdlock(h->ix);
	if (!w->snap_begun) {
		w->snap_rev = changes_head(h->cl);
		atomic_store(&w->need_rev, w->snap_rev);
		w->snap_begun = true;
		w->snap_last = NULL;
		w->snap_count = 0;
	}
	if (w->snap_last)
		rec_payload_scan(h->ix, rec_topic(w->snap_last), w->snap_last->topic_len);
	else
		rec_payload_scan(h->ix, w->filter, w->plen);
	ret = index_walk(h->ix, w->filter, w->plen,
			 w->snap_last ? rec_topic(w->snap_last) : NULL,
			 w->snap_last ? w->snap_last->topic_len : 0, snap_visit, &s);
	rec_payload_scan_end(h->ix);
	index_unlock(h->ix);
	if (s.err)
		return s.err;
	if (ret < 0)
		return ret;
	if (s.paused)
		return 0;
	if (w->replay_from >= 0)
		ret = buf_printf(&w->out, "event: resumed\nid: %lld\ndata: {\"rev\":%lld,\"from\":%lld,"
				 "\"count\":%llu}\n\n", (long long)w->snap_rev, (long long)w->snap_rev,
				 (long long)w->replay_from, (unsigned long long)w->snap_count);
	else
		ret = buf_printf(&w->out, "event: synced\nid: %lld\ndata: {\"rev\":%lld,\"count\":%llu}\n\n",
				 (long long)w->snap_rev, (long long)w->snap_rev,
				 (unsigned long long)w->snap_count);
	if (ret < 0)
		return ret;
	w->phase = W_CATCHUP;
	w->cursor = w->snap_rev;
	w->snap_begun = false;
	w->replay_from = -1;
	return 0;
}

/*
** One batch of catch-up from the change log, or the step into W_LIVE. The
** hub only moves `pos` under mu, so checking cursor >= pos and joining
** under one hold of mu leaves neither a gap nor a duplicate: the hub hands
** this listener exactly the changes after max(pos, cursor).
** Returns 0, -ESPIPE (fell out of the log: too slow) or -ENOMEM.
*/
static int catchup_step(struct watch *h, struct watcher *w)
{
	struct change batch[WATCH_BATCH];
	int64_t now_ms = clock_wall_ms(), pos;
	size_t n, want;
	bool gap;
	int ret = 0;

	index_rdlock(h->ix);
	pthread_mutex_lock(&h->mu);
	pos = h->pos;
	if (w->cursor >= pos) {
		w->phase = W_LIVE;
		w->skip_to = w->cursor;
		atomic_store(&w->need_rev, -1);
		h->nlive++;
	}
	pthread_mutex_unlock(&h->mu);
	if (w->phase == W_LIVE) {
		index_unlock(h->ix);
		return 0;
	}
	want = (uint64_t)(pos - w->cursor) < WATCH_BATCH ? (size_t)(pos - w->cursor) : WATCH_BATCH;
	n = changes_read(h->cl, w->cursor, batch, want, &gap);
	/* Bounded like a snapshot chunk: 64 records of a 256 KiB payload each
	 * would otherwise be rendered at once, megabytes per listener, kept
	 * (buf_reset keeps the room) until it hangs up. The rest is read next
	 * time: cursor stops at the last change dealt with. */
	for (size_t i = 0; i < n && ret == 0 && w_pending(w) < WATCH_CHUNK_BYTES; i++) {
		const struct change *c = &batch[i];

		if (c->rec->rev == c->rev && w_match(w, c->rec))
			ret = render_event(&w->out, h->ix, change_type_name(c->type), c->rev, c->rec,
					   now_ms);
		if (ret == 0)
			w->cursor = c->rev;
	}
	atomic_store(&w->need_rev, w->cursor);
	index_unlock(h->ix);
	if (gap)
		return -ESPIPE;
	return ret;
}

/*
** Can a listener whose revision `rev` fell out of the change log (or came
** from the previous run) be brought up to date from the records alone?
** Every change is a new revision on its record, so the records whose rev
** is greater than `rev` (tombstones included) are every change after it
** that is still current: the same convergence the change log gives. That
** holds for the revisions of this run, and for those of the previous run
** up to the last one the file kept (a crash loses the rest: the restart
** gap, statemirrord.c) when no tombstone newer than them was forgotten at
** load. Revisions in the restart gap, older runs and other databases get
** a snapshot.
*/
static bool w_replayable(const struct watch *h, int64_t rev, int64_t head)
{
	if (rev >= h->run_base)
		return rev <= head; /* above it: another database's */
	return h->file_max > 0 && rev >= h->file_floor && rev <= h->file_max;
}

void watch_set_resume(struct watch *h, int64_t file_floor, int64_t file_max, int64_t run_base)
{
	h->file_floor = file_floor;
	h->file_max = file_max;
	h->run_base = run_base;
}

/* Make progress before W_LIVE: render something, or move to the next phase. */
static int w_produce(struct watch *h, struct watcher *w)
{
	int64_t head;
	bool gap;

	switch (w->phase) {
	case W_RESUME:
		index_rdlock(h->ix);
		changes_read(h->cl, w->cursor, NULL, 0, &gap);
		head = changes_head(h->cl);
		index_unlock(h->ix);
		w->phase = gap ? W_SNAPSHOT : W_CATCHUP;
		if (!gap) {
			atomic_store(&w->need_rev, w->cursor);
		} else if (w_replayable(h, w->cursor, head)) {
			w->replay_from = w->cursor;
			log_debug("watch: revision %lld is no longer in the change log, replaying the "
				  "records changed since", (long long)w->cursor);
		} else {
			log_debug("watch: revision %lld cannot be resumed from, sending a snapshot",
				  (long long)w->cursor);
		}
		return 0;
	case W_SNAPSHOT:
		w->started = true;
		return snapshot_step(h, w);
	case W_CATCHUP:
		w->started = true;
		return catchup_step(h, w);
	default:
		return 0;
	}
}

/* libmicrohttpd's content reader: runs on the connection's thread. */
static ssize_t w_reader(void *cls, uint64_t pos, char *dst, size_t max)
{
	struct watcher *w = cls;
	struct watch *h = w->hub;
	int r;

	(void)pos;
	for (;;) {
		size_t n;
		bool live;

		pthread_mutex_lock(&h->mu);
		if (w->dead || h->closing) {
			/* An error closes at once (and libmicrohttpd logs it):
			 * only for a listener cut off, not for one that left. */
			bool err = w->dead && !w->hungup;

			pthread_mutex_unlock(&h->mu);
			return err ? MHD_CONTENT_READER_END_WITH_ERROR : MHD_CONTENT_READER_END_OF_STREAM;
		}
		n = w_take(w, dst, max);
		live = w->phase == W_LIVE;
		if (n == 0 && live) {
			/* Nothing to send: sleep until the hub has something
			 * (returning 0 without suspending would busy-loop). */
			struct epoll_event ev = { .events = EPOLLRDHUP, .data.u64 = w->serial };

			w->suspended = true;
			w->epolled = w->fd >= 0 && epoll_ctl(h->epfd, EPOLL_CTL_ADD, w->fd, &ev) == 0;
			MHD_suspend_connection(w->conn);
		}
		pthread_mutex_unlock(&h->mu);
		if (n || live)
			return (ssize_t)n;
		/* Not live: the hub leaves w->out alone, and it is empty. */
		if ((r = w_produce(h, w)) < 0) {
			pthread_mutex_lock(&h->mu);
			if (!w->dead) {
				w->dead = true;
				log_drop(h, w, r == -ESPIPE ? "too slow, it fell out of the change log"
							    : render_failure(r));
			}
			pthread_mutex_unlock(&h->mu);
			return MHD_CONTENT_READER_END_WITH_ERROR;
		}
	}
}

/* libmicrohttpd destroyed the response: the connection is done with it. */
static void w_free(void *cls)
{
	struct watcher *w = cls;
	struct watch *h = w->hub;

	pthread_mutex_lock(&h->mu);
	if (w->epolled)
		epoll_ctl(h->epfd, EPOLL_CTL_DEL, w->fd, NULL);
	if (w->prev)
		w->prev->next = w->next;
	else
		h->head = w->next;
	if (w->next)
		w->next->prev = w->prev;
	h->nwatchers--;
	atomic_store(&h->listening, h->nwatchers);
	if (w->phase == W_LIVE)
		h->nlive--;
	STAT_SET(watchers, h->nwatchers);
	pthread_mutex_unlock(&h->mu);
	buf_free(&w->out);
	free(w->filter);
	free(w);
}

/* ---- opening a stream ------------------------------------------------- */

/* A revision: decimal digits only (the same rule for since= and Last-Event-ID). */
static int parse_rev(const char *s, size_t n, int64_t *ret)
{
	uint64_t v;

	if (pathdec_parse_uint(s, n, INT64_MAX, &v) < 0)
		return -EINVAL;
	*ret = (int64_t)v;
	return 0;
}

int watch_open(struct watch *h, struct MHD_Connection *c, char *query, size_t query_len,
	       const char *last_event_id, struct MHD_Response **ret_resp,
	       const char **ret_reason)
{
	struct pathdec_param params[PATHDEC_MAX_PARAMS];
	const struct pathdec_param *p = NULL;
	const char *filter = "#";
	const union MHD_ConnectionInfo *ci;
	struct MHD_Response *resp;
	struct watcher *w;
	size_t np = 0;
	uint64_t since_q = UINT64_MAX;   /* absent */
	int64_t since = -1;
	int snapshot = 0;
	int r;

	if (query && (r = pathdec_query(query, query_len, params, PATHDEC_MAX_PARAMS, &np)) < 0) {
		*ret_reason = pathdec_query_reason(r);
		return -EINVAL;
	}
	if (pathdec_str(params, np, "filter", &p) < 0 || (p && topic_filter_check(p->val) < 0)) {
		*ret_reason = "invalid filter";
		return -EINVAL;
	}
	if (p)
		filter = p->val;
	if (pathdec_bool(params, np, "snapshot", &snapshot) < 0) {
		*ret_reason = "invalid snapshot (true or false)";
		return -EINVAL;
	}
	if (pathdec_uint(params, np, "since", 0, INT64_MAX, &since_q) < 0) {
		*ret_reason = "invalid since (a revision)";
		return -EINVAL;
	}
	if (since_q != UINT64_MAX)
		since = (int64_t)since_q;
	/* EventSource sends Last-Event-ID on reconnect while the URL still
	 * holds the first since=: the header is newer. */
	if (last_event_id && last_event_id[0] &&
	    parse_rev(last_event_id, strlen(last_event_id), &since) < 0) {
		*ret_reason = "invalid Last-Event-ID (a revision)";
		return -EINVAL;
	}

	if (!(w = calloc(1, sizeof(*w))) || !(w->filter = strdup(filter))) {
		free(w);
		*ret_reason = "out of memory";
		return -ENOMEM;
	}
	w->hub = h;
	w->conn = c;
	w->replay_from = -1;
	atomic_init(&w->need_rev, -1);
	ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
	w->fd = ci ? ci->connect_fd : -1;
	w->plen = topic_filter_prefix_len(filter);
	w->literal = w->plen == strlen(filter);
	buf_init(&w->out, 0);
	if (buf_puts(&w->out, hello) < 0)
		goto fail_nomem;
	if (since >= 0) {
		w->phase = W_RESUME;
		w->cursor = since;
	} else if (snapshot) {
		w->phase = W_SNAPSHOT;
	}

	/* The index lock keeps the log still while the first listener moves
	 * the hub, which slept while nobody listened, to the log's head:
	 * changes made before are this listener's own to catch up on. */
	index_rdlock(h->ix);
	pthread_mutex_lock(&h->mu);
	if (h->nwatchers == 0 && !h->closing)
		h->pos = changes_head(h->cl);
	if (h->closing || h->nwatchers >= h->max_clients) {
		pthread_mutex_unlock(&h->mu);
		index_unlock(h->ix);
		*ret_reason = h->closing ? "shutting down" : "too many watch listeners";
		buf_free(&w->out);
		free(w->filter);
		free(w);
		return -EBUSY;
	}
	if (since < 0 && !snapshot) {
		/* From now: live at once, before the response goes out, so
		 * that nothing (an intent event, which is not in the change
		 * log) made after the client has the headers is missed. The
		 * hub hands it what comes after max(pos, head): pos <= head,
		 * and skip_to leaves out the rest. */
		w->phase = W_LIVE;
		w->cursor = w->skip_to = changes_head(h->cl);
		h->nlive++;
	}
	w->serial = ++h->serial_next;
	w->next = h->head;
	if (h->head)
		h->head->prev = w;
	h->head = w;
	h->nwatchers++;
	atomic_store(&h->listening, h->nwatchers);
	STAT_SET(watchers, h->nwatchers);
	pthread_mutex_unlock(&h->mu);
	index_unlock(h->ix);

	resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, WATCH_BLOCK_SIZE, w_reader, w,
						 w_free);
	if (!resp) {
		w_free(w);
		*ret_reason = "out of memory";
		return -ENOMEM;
	}
	if (MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache") != MHD_YES) {
		MHD_destroy_response(resp);
		*ret_reason = "out of memory";
		return -ENOMEM;
	}
	*ret_resp = resp;
	return 0;

fail_nomem:
	buf_free(&w->out);
	free(w->filter);
	free(w);
	*ret_reason = "out of memory";
	return -ENOMEM;
}

/* ---- life cycle ------------------------------------------------------- */

int watch_new(const struct conf *conf, struct index *ix, struct changes *cl, struct watch **ret)
{
	struct watch *h = calloc(1, sizeof(*h));
	int r;

	if (!h)
		return -ENOMEM;
	h->conf = conf;
	h->ix = ix;
	h->cl = cl;
	h->max_clients = conf->watch_max_clients > 0 ? (size_t)conf->watch_max_clients : 0;
	h->buffer = conf->watch_buffer > 0 ? (size_t)conf->watch_buffer : (1u << 20);
	h->rl = (struct log_ratelimit)LOG_RATELIMIT_INIT(10000, 10);
	h->efd = h->epfd = -1;
	buf_init(&h->ev, 0);
	atomic_init(&h->kicked, false);
	atomic_init(&h->listening, 0);
	atomic_init(&h->stop, false);
	pthread_mutex_init(&h->mu, NULL);
	pthread_mutex_init(&h->resume_mu, NULL);
	index_rdlock(ix);
	h->pos = changes_head(cl);
	h->run_base = h->pos;
	index_unlock(ix);
	if ((h->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0 ||
	    (h->epfd = epoll_create1(EPOLL_CLOEXEC)) < 0) {
		r = -errno;
		goto fail;
	}
	if (epoll_ctl(h->epfd, EPOLL_CTL_ADD, h->efd,
		      &(struct epoll_event){ .events = EPOLLIN, .data.u64 = 0 }) < 0) {
		r = -errno;
		goto fail;
	}
	if ((r = pthread_create(&h->thread, NULL, hub_main, h)) != 0) {
		r = -r;
		goto fail;
	}
	h->thread_started = true;
	*ret = h;
	return 0;

fail:
	watch_free(h);
	return r;
}

void watch_shutdown(struct watch *h)
{
	if (!h)
		return;
	pthread_mutex_lock(&h->resume_mu);
	pthread_mutex_lock(&h->mu);
	h->closing = true;
	for (struct watcher *w = h->head; w; w = w->next)
		w_unsuspend(h, w);
	pthread_mutex_unlock(&h->mu);
	hub_flush_resumes(h);
	pthread_mutex_unlock(&h->resume_mu);
}

void watch_free(struct watch *h)
{
	uint64_t one = 1;

	if (!h)
		return;
	if (h->thread_started) {
		atomic_store(&h->stop, true);
		if (write(h->efd, &one, sizeof(one)) < 0)
			log_warn("watch: eventfd write");
		pthread_join(h->thread, NULL);
	}
	if (h->efd >= 0)
		close(h->efd);
	if (h->epfd >= 0)
		close(h->epfd);
	pthread_mutex_destroy(&h->mu);
	pthread_mutex_destroy(&h->resume_mu);
	buf_free(&h->ev);
	free(h->resume);
	free(h->spare);
	free(h);
}
