/* SPDX-License-Identifier: MIT */
/* intents.c: the intent engine: the outbox in memory, publication, outcomes, waiters. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "common/clock.h"
#include "common/jsondump.h"
#include "mirror/state/intents.h"

/*
** Memory: every undecided intent is on `open` (id order: the publication
** order), those with a confirm key also in a bucket of `confirm` by that
** key's topic; decided ones move to `done` (in order of decision, so that
** what was just decided stays to be read), bounded by lim.history. Changes of state are written to the outbox by the engine's
** thread, from copies queued under the mutex (`writes`), so that neither
** the apply path nor the session ever waits for the disk.
*/

#define CONFIRM_BUCKETS 256
#define CORR_MAX 128

struct intent {
	int64_t id;
	char *topic, *corr, *confirm_topic, *member; /* confirm_topic NULL: none */
	json_t *value, *before, *observed;
	enum intent_state state;
	int64_t created_ms, expire_at_ms, timeout_ms, published_ms, decided_ms;
	int mid;
	bool in_flight;
	struct intent *prev, *next;  /* open or done */
	struct intent *cnext;        /* confirm bucket */
};

struct list {
	struct intent *head, *tail;
	size_t n;
};

struct write {
	int64_t id;
	int state;
	int64_t published_ms, decided_ms;
	char *observed;
};

struct intents {
	struct intents_limits lim;
	struct outbox *ob;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct list open, done;
	struct intent *confirm[CONFIRM_BUCKETS];
	struct intent_waiter *waiters;
	struct write *writes;
	size_t nwrites, capwrites;
	size_t pending;                  /* open and state pending */
	bool evicted;                    /* history dropped some: prune the file too */
	atomic_size_t publishable;       /* pending and not in flight: the pump's quick test */
	atomic_size_t confirming;        /* open with a confirm key: observe's quick test */
	struct intents_stats st;
	/* the thread */
	pthread_t thread;
	bool started, stop, kick;
	int64_t (*clock)(void);
	void (*wake)(void *ctx);
	void *wake_ctx;
	intent_visit_fn observer;
	void *observer_ctx;
};

static const char *const state_names[INTENT_STATE_MAX] = {
	"pending", "published", "confirmed", "overridden", "timed_out", "expired", "rejected",
};

const char *intent_state_name(enum intent_state s)
{
	return s < INTENT_STATE_MAX ? state_names[s] : "unknown";
}

int intent_state_parse(const char *name, enum intent_state *ret)
{
	for (int i = 0; i < INTENT_STATE_MAX; i++)
		if (strcmp(name, state_names[i]) == 0) {
			*ret = (enum intent_state)i;
			return 0;
		}
	return -EINVAL;
}

/* FNV-1a, for the confirm buckets only. */
static size_t bucket_of(const char *t, size_t n)
{
	uint32_t h = 2166136261u;

	for (size_t i = 0; i < n; i++)
		h = (h ^ (unsigned char)t[i]) * 16777619u;
	return h % CONFIRM_BUCKETS;
}

static void list_append(struct list *l, struct intent *it)
{
	it->next = NULL;
	it->prev = l->tail;
	if (l->tail)
		l->tail->next = it;
	else
		l->head = it;
	l->tail = it;
	l->n++;
}

static void list_remove(struct list *l, struct intent *it)
{
	if (it->prev)
		it->prev->next = it->next;
	else
		l->head = it->next;
	if (it->next)
		it->next->prev = it->prev;
	else
		l->tail = it->prev;
	it->prev = it->next = NULL;
	l->n--;
}

static void intent_free(struct intent *it)
{
	if (!it)
		return;
	free(it->topic);
	free(it->corr);
	free(it->confirm_topic);
	free(it->member);
	json_decref(it->value);
	json_decref(it->before);
	json_decref(it->observed);
	free(it);
}

static void confirm_link(struct intents *in, struct intent *it)
{
	size_t b;

	if (!it->confirm_topic)
		return;
	b = bucket_of(it->confirm_topic, strlen(it->confirm_topic));
	it->cnext = in->confirm[b];
	in->confirm[b] = it;
	atomic_fetch_add(&in->confirming, 1);
}

static void confirm_unlink(struct intents *in, struct intent *it)
{
	struct intent **pp;

	if (!it->confirm_topic)
		return;
	for (pp = &in->confirm[bucket_of(it->confirm_topic, strlen(it->confirm_topic))]; *pp;
	     pp = &(*pp)->cnext)
		if (*pp == it) {
			*pp = it->cnext;
			atomic_fetch_sub(&in->confirming, 1);
			break;
		}
	it->cnext = NULL;
}

/* Queue it's current state for the outbox (the thread writes it). A
 * failed allocation loses only this write: the file then shows an older
 * state, which at a restart repeats a publication or a wait, never loses
 * the intent. */
static void queue_write(struct intents *in, const struct intent *it)
{
	struct write *w;

	if (!in->ob)
		return;
	if (in->nwrites == in->capwrites) {
		size_t cap = in->capwrites ? in->capwrites * 2 : 64;
		struct write *nw = realloc(in->writes, cap * sizeof(*nw));

		if (!nw)
			return;
		in->writes = nw;
		in->capwrites = cap;
	}
	w = &in->writes[in->nwrites++];
	*w = (struct write){ .id = it->id, .state = (int)it->state,
			     .published_ms = it->published_ms, .decided_ms = it->decided_ms,
			     .observed = it->observed ? json_dumps_exact(it->observed, JSON_COMPACT |
										JSON_ENCODE_ANY) : NULL };
	in->kick = true;
	pthread_cond_signal(&in->cv);
}

static int visit(const struct intent *it, intent_visit_fn fn, void *ctx);

/* Tell the observer (mutex held). */
static void notify(struct intents *in, const struct intent *it)
{
	if (in->observer)
		(void)visit(it, in->observer, in->observer_ctx);
}

void intents_set_observer(struct intents *in, intent_visit_fn fn, void *ctx)
{
	in->observer = fn;
	in->observer_ctx = ctx;
}

/* Fire (under the mutex: see intents_wait) the waiters of it. */
static void fire_waiters(struct intents *in, int64_t id)
{
	for (struct intent_waiter **pp = &in->waiters; *pp;) {
		struct intent_waiter *w = *pp;

		if (w->id == id) {
			*pp = w->next;
			w->fired = true;
			w->done(w->ctx);
		} else {
			pp = &w->next;
		}
	}
}

static bool is_final(const struct intent *it)
{
	return it->decided_ms != 0;
}

/* it (open) reaches a final state at now_ms: to the history. */
static void decide(struct intents *in, struct intent *it, enum intent_state s, int64_t now_ms)
{
	if (it->state == INTENT_PENDING) {
		in->pending--;
		if (!it->in_flight)
			atomic_fetch_sub(&in->publishable, 1);
	}
	it->in_flight = false;
	it->state = s;
	it->decided_ms = now_ms > 0 ? now_ms : 1;
	confirm_unlink(in, it);
	list_remove(&in->open, it);
	list_append(&in->done, it);
	in->st.outcomes[s]++;
	queue_write(in, it);
	notify(in, it);
	fire_waiters(in, it->id);
	while (in->done.n > in->lim.history) {
		struct intent *old = in->done.head;

		list_remove(&in->done, old);
		intent_free(old);
		in->evicted = true;
	}
}

/* ---- creation and loading ---- */

static int dup_str(char **dst, const char *src)
{
	if (!src) {
		*dst = NULL;
		return 0;
	}
	return (*dst = strdup(src)) ? 0 : -ENOMEM;
}

static json_t *load_json(const char *text)
{
	return text ? json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL) : NULL;
}

static int take_row(const struct outbox_row *r, void *ctx)
{
	struct intents *in = ctx;
	struct intent *it = calloc(1, sizeof(*it));

	if (!it || dup_str(&it->topic, r->topic) < 0 || dup_str(&it->corr, r->correlation_id) < 0 ||
	    dup_str(&it->confirm_topic, r->confirm_topic[0] ? r->confirm_topic : NULL) < 0 ||
	    dup_str(&it->member, r->confirm_member) < 0) {
		intent_free(it);
		return -ENOMEM;
	}
	it->id = r->id;
	it->value = load_json(r->value);
	it->observed = load_json(r->observed);
	it->state = r->state >= 0 && r->state < INTENT_STATE_MAX ? (enum intent_state)r->state
								   : INTENT_PENDING;
	it->created_ms = r->created_ms;
	it->expire_at_ms = r->expire_ms;
	it->timeout_ms = r->timeout_ms;
	it->published_ms = r->published_ms;
	it->decided_ms = r->decided_ms;
	if (!it->value) {
		intent_free(it);
		return 0; /* unreadable: nothing could be published of it */
	}
	if (is_final(it)) {
		list_append(&in->done, it);
		return 0;
	}
	/* What was in flight at the crash is pending again: a duplicate at
	 * most, which the correlation id lets the owner recognise. */
	list_append(&in->open, it);
	confirm_link(in, it);
	if (it->state == INTENT_PENDING) {
		in->pending++;
		atomic_fetch_add(&in->publishable, 1);
	}
	return 0;
}

int intents_new(const struct intents_limits *lim, struct outbox *ob, int64_t now_ms,
		struct intents **ret, char *err, size_t errlen)
{
	struct intents *in = calloc(1, sizeof(*in));
	int r;

	(void)now_ms;
	if (!in)
		return -ENOMEM;
	in->lim = *lim;
	if (in->lim.history == 0)
		in->lim.history = 1;
	in->ob = ob;
	pthread_mutex_init(&in->mu, NULL);
	{
		pthread_condattr_t ca;

		/* Its waits are timed on the monotonic clock: a step of the wall
		 * clock neither stalls nor hurries the deadlines' thread. */
		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&in->cv, &ca);
		pthread_condattr_destroy(&ca);
	}
	if (ob && (r = outbox_load(ob, in->lim.history, take_row, in, err, errlen)) < 0) {
		intents_free(in);
		return r;
	}
	*ret = in;
	return 0;
}

static void flush_writes(struct intents *in);

void intents_free(struct intents *in)
{
	struct intent *it, *next;

	if (!in)
		return;
	if (in->started) {
		pthread_mutex_lock(&in->mu);
		in->stop = true;
		pthread_cond_signal(&in->cv);
		pthread_mutex_unlock(&in->mu);
		pthread_join(in->thread, NULL);
	}
	flush_writes(in);
	for (it = in->open.head; it; it = next) {
		next = it->next;
		intent_free(it);
	}
	for (it = in->done.head; it; it = next) {
		next = it->next;
		intent_free(it);
	}
	free(in->writes);
	pthread_cond_destroy(&in->cv);
	pthread_mutex_destroy(&in->mu);
	free(in);
}

/* ---- submit, get, list ---- */

static void make_corr(char out[40])
{
	uint8_t b[12];
	size_t n = 0;

	if (getrandom(b, sizeof(b), GRND_NONBLOCK) != (ssize_t)sizeof(b)) {
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		memcpy(b, &ts, sizeof(b) < sizeof(ts) ? sizeof(b) : sizeof(ts));
	}
	n += (size_t)snprintf(out, 40, "sm-");
	for (size_t i = 0; i < sizeof(b); i++)
		n += (size_t)snprintf(out + n, 40 - n, "%02x", b[i]);
}

static void seterr(char *err, size_t errlen, const char *msg)
{
	if (err && errlen)
		snprintf(err, errlen, "%s", msg);
}

int intents_submit(struct intents *in, const struct intent_request *req, int64_t now_ms,
		   int64_t *ret_id, char *err, size_t errlen)
{
	char corrbuf[40];
	const char *corr = req->correlation_id;
	const char *member = req->confirm_member ? req->confirm_member : "value";
	char *vtext = NULL;
	struct intent *it = NULL;
	struct outbox_row row;
	int r;

	if (!req->value || !req->topic || !req->topic[0]) {
		seterr(err, errlen, "an intent needs a topic and a value");
		return -EINVAL;
	}
	if (corr && (!corr[0] || strlen(corr) > CORR_MAX)) {
		seterr(err, errlen, "correlation_id must be 1 to 128 characters");
		return -EINVAL;
	}
	if (!corr) {
		make_corr(corrbuf);
		corr = corrbuf;
	}
	if (!(vtext = json_dumps_exact(req->value, JSON_COMPACT | JSON_ENCODE_ANY)))
		return -ENOMEM;
	if (!(it = calloc(1, sizeof(*it))) || dup_str(&it->topic, req->topic) < 0 ||
	    dup_str(&it->corr, corr) < 0 || dup_str(&it->confirm_topic, req->confirm_topic) < 0 ||
	    dup_str(&it->member, member) < 0) {
		r = -ENOMEM;
		goto fail;
	}
	it->value = json_deep_copy(req->value);
	it->before = req->before ? json_deep_copy(req->before) : NULL;
	it->state = INTENT_PENDING;
	it->created_ms = now_ms;
	it->expire_at_ms = now_ms + req->expire_ms;
	it->timeout_ms = req->timeout_ms;
	if (!it->value) {
		r = -ENOMEM;
		goto fail;
	}
	row = (struct outbox_row){
		.topic = it->topic, .correlation_id = it->corr, .value = vtext,
		.confirm_topic = it->confirm_topic ? it->confirm_topic : "",
		.confirm_member = it->member, .state = INTENT_PENDING,
		.created_ms = it->created_ms, .expire_ms = it->expire_at_ms,
		.timeout_ms = it->timeout_ms,
	};
	pthread_mutex_lock(&in->mu);
	if (in->open.n >= in->lim.outbox_max) {
		pthread_mutex_unlock(&in->mu);
		seterr(err, errlen, "the outbox is full");
		r = -ENOBUFS;
		goto fail;
	}
	/* Inserted under the mutex so that ids (the publication order) and
	 * the order on `open` agree; the fsync is the only wait here, and
	 * only submitters wait for it (the apply path never submits). */
	if (in->ob) {
		if ((r = outbox_insert(in->ob, &row, &it->id, err, errlen)) < 0) {
			pthread_mutex_unlock(&in->mu);
			goto fail;
		}
	} else {
		it->id = in->open.tail ? in->open.tail->id + 1 :
			 in->done.tail ? in->done.tail->id + 1 : 1;
	}
	list_append(&in->open, it);
	confirm_link(in, it);
	in->pending++;
	atomic_fetch_add(&in->publishable, 1);
	*ret_id = it->id;
	notify(in, it);
	in->kick = true;
	pthread_cond_signal(&in->cv);
	pthread_mutex_unlock(&in->mu);
	free(vtext);
	if (in->wake)
		in->wake(in->wake_ctx);
	return 0;
fail:
	free(vtext);
	intent_free(it);
	return r;
}

static struct intent *find(struct intents *in, int64_t id)
{
	for (struct intent *it = in->open.tail; it; it = it->prev)
		if (it->id == id)
			return it;
	for (struct intent *it = in->done.tail; it; it = it->prev)
		if (it->id == id)
			return it;
	return NULL;
}

static int visit(const struct intent *it, intent_visit_fn fn, void *ctx)
{
	struct intent_info info = {
		.id = it->id, .topic = it->topic, .correlation_id = it->corr, .state = it->state,
		.requested = it->value, .observed = it->observed, .created_ms = it->created_ms,
		.published_ms = it->published_ms, .decided_ms = it->decided_ms,
	};

	return fn(&info, ctx);
}

int intents_get(struct intents *in, int64_t id, intent_visit_fn fn, void *ctx)
{
	struct intent *it;
	int r = -ENOENT;

	pthread_mutex_lock(&in->mu);
	if ((it = find(in, id)))
		r = visit(it, fn, ctx);
	pthread_mutex_unlock(&in->mu);
	return r;
}

static int by_id_desc(const void *a, const void *b)
{
	int64_t x = (*(struct intent *const *)a)->id, y = (*(struct intent *const *)b)->id;

	return x < y ? 1 : x > y ? -1 : 0;
}

int intents_list(struct intents *in, enum intent_state only, size_t limit, intent_visit_fn fn,
		 void *ctx)
{
	struct intent **v;
	size_t n = 0;
	int r = 0;

	pthread_mutex_lock(&in->mu);
	v = malloc((in->open.n + in->done.n + 1) * sizeof(*v));
	if (!v) {
		pthread_mutex_unlock(&in->mu);
		return -ENOMEM;
	}
	for (struct intent *it = in->open.head; it; it = it->next)
		if (only == INTENT_STATE_MAX || it->state == only)
			v[n++] = it;
	for (struct intent *it = in->done.head; it; it = it->next)
		if (only == INTENT_STATE_MAX || it->state == only)
			v[n++] = it;
	/* Newest first: by id, the order of the requests. */
	qsort(v, n, sizeof(*v), by_id_desc);
	for (size_t i = 0; i < n && i < limit && r == 0; i++)
		r = visit(v[i], fn, ctx);
	pthread_mutex_unlock(&in->mu);
	free(v);
	return r;
}

/* ---- waiters ---- */

int intents_wait(struct intents *in, struct intent_waiter *w)
{
	struct intent *it;
	int r = 0;

	w->fired = false;
	pthread_mutex_lock(&in->mu);
	if (!(it = find(in, w->id))) {
		r = -ENOENT;
	} else if (is_final(it)) {
		r = -EALREADY;
	} else {
		w->next = in->waiters;
		in->waiters = w;
		in->kick = true; /* its deadline may be the next one */
		pthread_cond_signal(&in->cv);
	}
	pthread_mutex_unlock(&in->mu);
	return r;
}

void intents_unwait(struct intents *in, struct intent_waiter *w)
{
	pthread_mutex_lock(&in->mu);
	for (struct intent_waiter **pp = &in->waiters; *pp; pp = &(*pp)->next)
		if (*pp == w) {
			*pp = w->next;
			break;
		}
	pthread_mutex_unlock(&in->mu);
}

void intents_release_waiters(struct intents *in)
{
	pthread_mutex_lock(&in->mu);
	while (in->waiters) {
		struct intent_waiter *w = in->waiters;

		in->waiters = w->next;
		w->fired = true;
		w->done(w->ctx);
	}
	pthread_mutex_unlock(&in->mu);
}

/* ---- the session's side ---- */

/* The broker has it (or, QoS 0, it was sent). Mutex held. */
static void mark_published(struct intents *in, struct intent *it, int64_t now_ms)
{
	it->in_flight = false;
	in->pending--;
	it->state = INTENT_PUBLISHED;
	it->published_ms = now_ms;
	in->st.publish_latency_sum_ms += (uint64_t)(now_ms - it->created_ms);
	in->st.published++;
	if (!it->confirm_topic) {
		decide(in, it, INTENT_PUBLISHED, now_ms);
		return;
	}
	queue_write(in, it);
	notify(in, it);
	in->kick = true; /* its timeout starts now */
	pthread_cond_signal(&in->cv);
}

void intents_pump(struct intents *in, int64_t now_ms, intent_publish_fn publish, void *ctx)
{
	struct intent *it, *next;

	if (atomic_load_explicit(&in->publishable, memory_order_relaxed) == 0)
		return;
	pthread_mutex_lock(&in->mu);
	for (it = in->open.head; it; it = next) {
		char *payload;
		json_t *msg;
		int mid = 0, r;

		next = it->next;
		if (it->state != INTENT_PENDING || it->in_flight)
			continue;
		if (now_ms >= it->expire_at_ms) {
			decide(in, it, INTENT_EXPIRED, now_ms);
			continue;
		}
		msg = json_pack("{s:O,s:I,s:s}", "value", it->value, "ts", (json_int_t)it->created_ms,
				"correlation_id", it->corr);
		payload = msg ? json_dumps_exact(msg, JSON_COMPACT) : NULL;
		json_decref(msg);
		if (!payload)
			break; /* out of memory: the next turn tries again */
		r = publish(ctx, it->topic, payload, strlen(payload), in->lim.qos, it->corr,
			    (uint32_t)((it->expire_at_ms - now_ms + 999) / 1000), &mid);
		free(payload);
		if (r < 0)
			break; /* not connected after all, or the queue is full: keep order */
		atomic_fetch_sub(&in->publishable, 1);
		it->in_flight = true;
		it->mid = mid;
		if (in->lim.qos == 0)
			mark_published(in, it, now_ms); /* no PUBACK: sent is published */
	}
	pthread_mutex_unlock(&in->mu);
}

void intents_acked(struct intents *in, int mid, int64_t now_ms)
{
	pthread_mutex_lock(&in->mu);
	for (struct intent *it = in->open.head; it; it = it->next)
		if (it->in_flight && it->mid == mid && it->state == INTENT_PENDING) {
			mark_published(in, it, now_ms);
			break;
		}
	pthread_mutex_unlock(&in->mu);
}

size_t intents_link_down(struct intents *in)
{
	size_t n = 0;

	pthread_mutex_lock(&in->mu);
	for (struct intent *it = in->open.head; it; it = it->next)
		if (it->in_flight) {
			it->in_flight = false;
			it->mid = 0;
			atomic_fetch_add(&in->publishable, 1);
			n++;
		}
	pthread_mutex_unlock(&in->mu);
	return n;
}

/* ---- observing the state stream ---- */

void intents_observe(struct intents *in, const char *topic, size_t topic_len, const void *payload,
		     size_t len, int64_t ts_ns)
{
	json_t *doc = NULL;
	bool parsed = false;
	struct intent *it, *next;

	if (atomic_load_explicit(&in->confirming, memory_order_relaxed) == 0)
		return;
	pthread_mutex_lock(&in->mu);
	for (it = in->confirm[bucket_of(topic, topic_len)]; it; it = next) {
		const json_t *got, *corr;
		int64_t at_ms;
		bool ours;

		next = it->cnext;
		if (strlen(it->confirm_topic) != topic_len ||
		    memcmp(it->confirm_topic, topic, topic_len) != 0)
			continue;
		/* The owner cannot have answered what it was not sent; an answer
		 * in the request's own millisecond counts (a fast owner on a
		 * fast bus: the request's time has millisecond precision). */
		if (it->state != INTENT_PUBLISHED || ts_ns / 1000000 < it->created_ms)
			continue;
		if (!parsed) {
			doc = json_loadb(payload, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
			parsed = true;
		}
		if (!json_is_object(doc) || !(got = json_object_get(doc, it->member)))
			continue; /* not a statement about the member */
		corr = json_object_get(doc, "correlation_id");
		ours = json_is_string(corr) && strcmp(json_string_value(corr), it->corr) == 0;
		json_decref(it->observed);
		it->observed = json_deep_copy(got);
		/* Decided when the owner's state says so (its timestamp, its
		 * clock), but never shown before our own clock saw the PUBACK. */
		at_ms = ts_ns / 1000000 > it->published_ms ? ts_ns / 1000000 : it->published_ms;
		if (json_equal(got, it->value))
			decide(in, it, INTENT_CONFIRMED, at_ms);
		else if (ours || !it->before || !json_equal(got, it->before))
			decide(in, it, INTENT_OVERRIDDEN, at_ms);
		/* else: still the value from before the request: the owner has
		 * not acted (yet); the timeout decides. */
	}
	pthread_mutex_unlock(&in->mu);
	json_decref(doc);
}

/* ---- the engine's thread ---- */

static void flush_writes(struct intents *in)
{
	struct write *w;
	size_t n;
	char err[256];

	pthread_mutex_lock(&in->mu);
	w = in->writes;
	n = in->nwrites;
	in->writes = NULL;
	in->nwrites = in->capwrites = 0;
	pthread_mutex_unlock(&in->mu);
	for (size_t i = 0; i < n; i++) {
		struct outbox_row row = { .id = w[i].id, .state = w[i].state,
					  .published_ms = w[i].published_ms,
					  .decided_ms = w[i].decided_ms, .observed = w[i].observed };

		if (in->ob)
			(void)outbox_update(in->ob, &row, err, sizeof(err));
		free(w[i].observed);
	}
	free(w);
}

int64_t intents_tick(struct intents *in, int64_t now_ms)
{
	int64_t next = 1000;
	bool evicted;
	struct intent *it, *nx;

	pthread_mutex_lock(&in->mu);
	for (it = in->open.head; it; it = nx) {
		int64_t due;

		nx = it->next;
		if (it->state == INTENT_PENDING && !it->in_flight) {
			if (now_ms >= it->expire_at_ms) {
				decide(in, it, INTENT_EXPIRED, now_ms);
				continue;
			}
			due = it->expire_at_ms - now_ms;
		} else if (it->state == INTENT_PUBLISHED) {
			if (now_ms >= it->published_ms + it->timeout_ms) {
				decide(in, it, INTENT_TIMED_OUT, now_ms);
				continue;
			}
			due = it->published_ms + it->timeout_ms - now_ms;
		} else {
			continue;
		}
		if (due < next)
			next = due;
	}
	for (struct intent_waiter **pp = &in->waiters; *pp;) {
		struct intent_waiter *w = *pp;

		if (now_ms >= w->deadline_ms) {
			*pp = w->next;
			w->fired = true;
			w->done(w->ctx);
			continue;
		}
		if (w->deadline_ms - now_ms < next)
			next = w->deadline_ms - now_ms;
		pp = &w->next;
	}
	evicted = in->evicted;
	in->evicted = false;
	pthread_mutex_unlock(&in->mu);
	flush_writes(in);
	if (in->ob && evicted)
		(void)outbox_prune(in->ob, in->lim.history, NULL, 0);
	return next > 0 ? next : 1;
}

static void *intents_main(void *arg)
{
	struct intents *in = arg;

	for (;;) {
		int64_t wait = intents_tick(in, in->clock());
		struct timespec dl;

		clock_deadline(CLOCK_MONOTONIC, wait, &dl);
		pthread_mutex_lock(&in->mu);
		while (!in->kick && !in->stop &&
		       pthread_cond_timedwait(&in->cv, &in->mu, &dl) == 0)
			;
		in->kick = false;
		if (in->stop) {
			pthread_mutex_unlock(&in->mu);
			return NULL;
		}
		pthread_mutex_unlock(&in->mu);
	}
}

int intents_start(struct intents *in, int64_t (*clock)(void), void (*wake)(void *ctx), void *ctx)
{
	int r;

	in->clock = clock;
	in->wake = wake;
	in->wake_ctx = ctx;
	if ((r = pthread_create(&in->thread, NULL, intents_main, in)) != 0)
		return -r;
	pthread_setname_np(in->thread, "sm-intents");
	in->started = true;
	return 0;
}

void intents_stats(struct intents *in, struct intents_stats *ret)
{
	pthread_mutex_lock(&in->mu);
	*ret = in->st;
	ret->outbox_depth = in->pending;
	ret->undecided = in->open.n;
	ret->oldest_pending_ms = 0;
	for (struct intent *it = in->open.head; it; it = it->next)
		if (it->state == INTENT_PENDING) {
			ret->oldest_pending_ms = it->created_ms;
			break;
		}
	pthread_mutex_unlock(&in->mu);
}
