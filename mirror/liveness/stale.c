/* SPDX-License-Identifier: MIT */
/* stale.c: per-key cadence (rules, learning), the deadline heap, stale/fresh transitions, hold-back. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "common/hash.h"
#include "common/hmap.h"
#include "common/log.h"
#include "common/stats.h"
#include "common/topic.h"
#include "mirror/liveness/alerts.h"
#include "mirror/liveness/stale.h"

/*
** The heap holds every tracked key (live, not REC_NO_STALE), keyed by the
** time it next needs attention ("due"):
**   fresh key with a cadence: the first ms at which it is stale
**                             (last_seen + window + 1); a lower bound only:
**                             a live message does not touch the heap unless
**                             it brings the deadline earlier, so a message
**                             costs O(1) and a key is re-sifted at most once
**                             per window (the due handler re-checks);
**   stale key held back:      when its hold-back ends (re-sync + window);
**   otherwise:                STALE_NEVER (sinks to the bottom).
** Keeping the keys without a deadline in the heap too lets a reload re-key
** everything without walking the index.
**
** An entry is 8 bytes (a million keys: 8 MiB, not 16): the record's 32-bit
** name in the index and its due time in ms after base_ms, a moving origin
** kept between 2^30 ms (12 days) and a minute behind now (heap_rebase). A
** due time too far ahead to fit is kept as the furthest that fits, a lower
** bound like any other; UINT32_MAX is STALE_NEVER.
*/
#define STALE_NEVER INT64_MAX
#define STALE_NO_IDX UINT32_MAX
#define STALE_TICK_BATCH 65536   /* due keys handled per tick; the rest next turn */
#define STALE_TICK_MAX_MS 100    /* the contract's detection bound */
#define LEARN_MIN_MS 10          /* a second copy within this is one message */
#define LEARN_NEED 3             /* intervals before a cadence is learned */

struct hent {
	uint32_t due;            /* ms after base_ms; DUE_NEVER for STALE_NEVER */
	uint32_t ref;            /* index_ref() of the record */
};

#define DUE_NEVER UINT32_MAX
#define DUE_REBASE_MS (1 << 30)
#define DUE_SLACK_MS 60000       /* the origin's place behind now (see heap_rebase) */

struct rule {
	char *filter;
	int64_t cadence_ms; /* 0 = never */
};

/* Stale keys per group prefix and reason, for GET /v1/stale. A key's
 * group is its producer's name when it has one (pgrp), else its topic
 * without the last level. */
struct gcount {
	uint64_t n;
	uint32_t key;       /* its hmap key: group_hash of prefix and reason */
	uint32_t idx;       /* its place in stale.groups */
	uint8_t reason;     /* enum stale_reason */
	size_t len;
	char prefix[];
};

/* Stale keys per reason, process-wide like g_stats (/metrics). */
static _Atomic uint64_t g_by_reason[STALE_REASON_MAX];

#define NO_GROUP ALERTS_NO_GROUP

struct stale {
	double grace;
	enum conf_default_cadence default_kind;
	int64_t default_ms;
	struct rule *rules;
	size_t nrules;

	struct index *ix;
	struct hent *heap;
	uint32_t n, cap;
	int64_t base_ms;       /* origin of the heap's due times */

	bool synced, link_known;
	int64_t synced_since_ms;
	struct rec **held;     /* stale keys held while not synced (AS_LISTED) */
	size_t nheld, capheld;

	struct gcount **groups; /* group counters, dense */
	uint32_t ngroups, capgroups;
	struct hmap gmap;       /* prefix -> index in groups */
	uint64_t nstale;
	uint64_t nby[STALE_REASON_MAX]; /* stale keys per reason */
	/* The producer of each REC_STICKY key (made stale by stale_mark_dead)
	 * whose producer names a prefix of its topic: index_ref + 1 -> the
	 * prefix's length. Only such keys have an entry; lost at a restart
	 * (they are then grouped by topic). */
	struct hmap pgrp;
	struct rule *unjudged;  /* status topics (availability): never judged by cadence */
	size_t nunjudged;

	int64_t max_window_ms; /* longest window of any key seen (never shrinks but at reload) */
	struct alerts *alerts;
	struct log_ratelimit rl_trans;
	struct log_ratelimit rl_err;
};

/* ---------------------------------------------------------------- heap */

static inline struct rec *hrec(const struct stale *s, uint32_t i)
{
	return index_rec(s->ix, s->heap[i].ref);
}

static uint32_t due_enc(const struct stale *s, int64_t due)
{
	if (due == STALE_NEVER)
		return DUE_NEVER;
	if (due <= s->base_ms)
		return 0;
	if (due - s->base_ms >= DUE_NEVER)
		return DUE_NEVER - 1;
	return (uint32_t)(due - s->base_ms);
}

static int64_t due_dec(const struct stale *s, uint32_t due)
{
	return due == DUE_NEVER ? STALE_NEVER : s->base_ms + due;
}

/*
** Keep the origin a minute or more behind now and less than 12 days behind
** it, so that every deadline up to 37 days ahead fits as it is. Moving it
** forward subtracts the same from every entry (those that would go below it
** become 0: due now); moving it back, after the wall clock stepped back,
** adds (capped at the furthest that fits: earlier, so still a lower bound).
** Either keeps the heap's order: no sift. O(n), once every 12 days or when
** the clock steps back by more than the minute of slack; without the slack,
** the few ms by which one thread's clock reading trails another's would
** move it back and forth.
*/
static void heap_rebase(struct stale *s, int64_t now_ms)
{
	int64_t base = now_ms - DUE_SLACK_MS;

	if (s->n == 0) {
		s->base_ms = base;
		return;
	}
	if (now_ms >= s->base_ms && now_ms - s->base_ms < DUE_REBASE_MS)
		return;
	for (uint32_t i = 0; i < s->n; i++) {
		uint32_t *d = &s->heap[i].due;
		int64_t v;

		if (*d == DUE_NEVER)
			continue;
		v = (int64_t)*d + (s->base_ms - base);
		*d = v <= 0 ? 0 : v >= DUE_NEVER ? DUE_NEVER - 1 : (uint32_t)v;
	}
	s->base_ms = base;
}

static void heap_place(struct stale *s, uint32_t i, struct hent e)
{
	s->heap[i] = e;
	index_rec(s->ix, e.ref)->heap_idx = i;
}

static void sift_up(struct stale *s, uint32_t i)
{
	struct hent e = s->heap[i];

	while (i > 0) {
		uint32_t p = (i - 1) / 2;
		if (s->heap[p].due <= e.due)
			break;
		heap_place(s, i, s->heap[p]);
		i = p;
	}
	heap_place(s, i, e);
}

static void sift_down(struct stale *s, uint32_t i)
{
	struct hent e = s->heap[i];

	for (;;) {
		uint32_t c = 2 * i + 1;
		if (c >= s->n)
			break;
		if (c + 1 < s->n && s->heap[c + 1].due < s->heap[c].due)
			c++;
		if (e.due <= s->heap[c].due)
			break;
		heap_place(s, i, s->heap[c]);
		i = c;
	}
	heap_place(s, i, e);
}

static int heap_push(struct stale *s, struct rec *r, int64_t due)
{
	if (s->n == s->cap) {
		uint32_t ncap = s->cap ? s->cap * 2 : 1024;
		struct hent *nh;

		if (s->cap >= UINT32_MAX / 2)
			return -ENOSPC;
		nh = realloc(s->heap, (size_t)ncap * sizeof(*nh));
		if (!nh)
			return -ENOMEM;
		s->heap = nh;
		s->cap = ncap;
	}
	s->heap[s->n] = (struct hent){ due_enc(s, due), index_ref(s->ix, r) };
	r->heap_idx = s->n++;
	sift_up(s, r->heap_idx);
	return 0;
}

static void heap_remove(struct stale *s, struct rec *r)
{
	uint32_t i = r->heap_idx;

	if (i == STALE_NO_IDX || i >= s->n || hrec(s, i) != r)
		return;
	r->heap_idx = STALE_NO_IDX;
	if (--s->n == i)
		return;
	heap_place(s, i, s->heap[s->n]);
	sift_up(s, i);
	sift_down(s, hrec(s, i) == r ? i : hrec(s, i)->heap_idx);
}

static void heap_set_due(struct stale *s, struct rec *r, int64_t due64)
{
	uint32_t i = r->heap_idx, due = due_enc(s, due64), old;

	if (i == STALE_NO_IDX || i >= s->n)
		return;
	old = s->heap[i].due;
	s->heap[i].due = due;
	if (due < old)
		sift_up(s, i);
	else if (due > old)
		sift_down(s, i);
}

static void heapify(struct stale *s)
{
	for (uint32_t i = s->n / 2; i-- > 0;)
		sift_down(s, i);
}

/* ----------------------------------------------------- group counters */

struct gkey {
	const char *p;
	size_t len;
	uint8_t reason;
};

static uint32_t group_hash(const char *p, size_t len, unsigned reason)
{
	return hash_key32(hash_bytes(p, len) + (uint64_t)reason * 0x9e3779b97f4a7c15ull);
}

static bool group_eq(uint32_t val, const void *k, const void *ctx)
{
	const struct stale *s = ctx;
	const struct gkey *want = k;
	const struct gcount *g = s->groups[val];

	return g->len == want->len && g->reason == want->reason &&
	       memcmp(g->prefix, want->p, want->len) == 0;
}

static bool group_is(uint32_t val, const void *k, const void *ctx)
{
	const struct stale *s = ctx;

	return s->groups[val] == k;
}

static void group_drop(struct stale *s, struct gcount *g)
{
	uint32_t last = s->ngroups - 1;

	hmap_del(&s->gmap, g->key, group_is, g, s);
	if (g->idx != last) {
		/* The last one fills the hole; its entry follows it. */
		struct gcount *m = s->groups[last];
		uint32_t *v = hmap_find(&s->gmap, m->key, group_is, m, s);

		s->groups[g->idx] = m;
		m->idx = g->idx;
		if (v)
			*v = m->idx;
	}
	s->ngroups--;
	free(g);
}

/* The prefix length of r's producer (stale_mark_dead), NO_GROUP none. */
static uint32_t pgroup_len(const struct stale *s, const struct rec *r)
{
	uint32_t ref, *v;

	if (!(r->flags & REC_STICKY) || s->pgrp.n == 0)
		return NO_GROUP;
	ref = index_ref(s->ix, r);
	v = ref == UINT32_MAX ? NULL : hmap_find(&s->pgrp, ref + 1, NULL, NULL, NULL);
	return v ? *v : NO_GROUP;
}

static void pgroup_set(struct stale *s, const struct rec *r, uint32_t glen)
{
	uint32_t ref = index_ref(s->ix, r), *v;

	if (ref == UINT32_MAX)
		return;
	v = hmap_find(&s->pgrp, ref + 1, NULL, NULL, NULL);
	if (glen == NO_GROUP) {
		if (v)
			hmap_del(&s->pgrp, ref + 1, NULL, NULL, NULL);
	} else if (v) {
		*v = glen;
	} else if (hmap_put(&s->pgrp, ref + 1, glen) < 0) {
		/* Grouped by its topic instead: /v1/stale and the alert say
		 * less, the key's state is still right. */
		log_warnx("staleness: out of memory, %s grouped by topic, not by producer", r->data);
	}
}

/* r's group for /v1/stale: its producer's name, else its topic's parent. */
static size_t group_len(const struct stale *s, const struct rec *r)
{
	uint32_t g = pgroup_len(s, r);

	return g != NO_GROUP ? g : topic_group_prefix(r->data, r->topic_len);
}

static void group_add(struct stale *s, const struct rec *r, int delta)
{
	size_t len = group_len(s, r);
	uint8_t reason = (uint8_t)rec_stale_reason(r);
	uint32_t key = group_hash(r->data, len, reason);
	uint32_t *v = hmap_find(&s->gmap, key, group_eq, &(struct gkey){ r->data, len, reason }, s);
	struct gcount *g;

	if (!v) {
		if (delta < 0)
			return;
		if (s->ngroups == s->capgroups) {
			uint32_t ncap = s->capgroups ? 2 * s->capgroups : 64;
			struct gcount **ng = ncap > s->capgroups ? realloc(s->groups, ncap * sizeof(*ng)) : NULL;
			if (!ng)
				return; /* /v1/stale misses this group; the flag is still right */
			s->groups = ng;
			s->capgroups = ncap;
		}
		g = malloc(sizeof(*g) + len + 1);
		if (!g)
			return;
		g->n = 0;
		g->key = key;
		g->reason = reason;
		g->idx = s->ngroups;
		g->len = len;
		memcpy(g->prefix, r->data, len);
		g->prefix[len] = '\0';
		if (hmap_put(&s->gmap, key, g->idx) < 0) {
			free(g);
			return;
		}
		s->groups[s->ngroups++] = g;
	} else {
		g = s->groups[*v];
	}
	if (delta > 0)
		g->n++;
	else if (g->n <= 1)
		group_drop(s, g);
	else
		g->n--;
}

/* ----------------------------------------------------------- cadence */

static int64_t window_of(const struct stale *s, const struct rec *r)
{
	uint32_t c = rec_cadence_ms(r);
	double w;

	if (!c)
		return 0;
	w = ceil(s->grace * (double)c);
	return w < 1 ? 1 : w > 1e15 ? (int64_t)1e15 : (int64_t)w;
}

static uint32_t clamp_ms(int64_t v)
{
	return v <= 0 ? 0 : v >= UINT32_MAX ? UINT32_MAX : (uint32_t)v;
}

/*
** The learner's state in the record (index.h): its estimate in cadence_ms,
** and in learn: bits 0-1 the intervals that agreed (0..3: learned at 3),
** 2-3 the run of outliers on one side, 4 that side is the long one, 5-7
** the intervals that agreed since the last outlier (0..LEARN_CALM). Its
** anchor is learn_lag ms behind last_seen_ms (lag_enc), LAG_NONE for none.
*/
#define LEARN_N_MASK 0x03u
#define LEARN_RUN_SHIFT 2
#define LEARN_RUN_MASK (0x03u << LEARN_RUN_SHIFT)
#define LEARN_LONG 0x10u
#define LEARN_CALM_SHIFT 5
#define LEARN_CALM_MASK (0x07u << LEARN_CALM_SHIFT)
#define LEARN_CALM 7             /* agreeing intervals that forget a run of long ones */
#define LAG_NONE UINT16_MAX

static bool learned(const struct rec *r)
{
	return (r->learn & LEARN_N_MASK) >= LEARN_NEED;
}

static void learn_reset(struct rec *r)
{
	r->learn = 0;
	r->learn_lag = 0;
}

/* A lag in 16 bits: 11 bits of mantissa, 5 of exponent (m << e): exact
 * below 2048 ms, within 0.05 % above; never LAG_NONE (e <= 21 for 32 bits). */
static uint16_t lag_enc(int64_t lag)
{
	unsigned e = 0;

	if (lag <= 0)
		return 0;
	if (lag > UINT32_MAX)
		return LAG_NONE;
	while ((lag >> e) > 0x7ff)
		e++;
	return (uint16_t)(e << 11 | (uint64_t)(lag >> e));
}

static int64_t lag_dec(uint16_t v)
{
	return (int64_t)(v & 0x7ff) << (v >> 11);
}

/* Derive r's cadence: the first matching rule, else the default. Returns
 * true when cadence_ms or cadence_source changed. */
static bool derive(struct stale *s, struct rec *r)
{
	uint32_t ms = 0;
	uint8_t src = CADENCE_NONE;
	bool changed;

	for (size_t i = 0; i < s->nunjudged; i++) {
		if (topic_matches(s->unjudged[i].filter, r->data, r->topic_len))
			goto done; /* a status topic: its producer's word, not a cadence */
	}
	for (size_t i = 0; i < s->nrules; i++) {
		if (topic_matches(s->rules[i].filter, r->data, r->topic_len)) {
			ms = clamp_ms(s->rules[i].cadence_ms);
			src = CADENCE_RULE;
			goto done;
		}
	}
	switch (s->default_kind) {
	case CONF_DEFAULT_FIXED:
		ms = clamp_ms(s->default_ms);
		src = CADENCE_DEFAULT;
		break;
	case CONF_DEFAULT_NEVER:
		src = CADENCE_DEFAULT;
		break;
	case CONF_DEFAULT_LEARN:
	case CONF_DEFAULT_MAX:
		/* What the learner has learned so far, if it was learning (its
		 * estimate is cadence_ms); from a rule or a default it starts
		 * from nothing. */
		if (r->cadence_source == CADENCE_LEARNED && r->cadence_ms && !learned(r))
			r->learn = (uint8_t)((r->learn & ~LEARN_N_MASK) | LEARN_NEED); /* learned, counts lost */
		if (r->learn && (r->cadence_source == CADENCE_NONE || r->cadence_source == CADENCE_LEARNED)) {
			ms = r->cadence_ms;
			src = learned(r) ? CADENCE_LEARNED : CADENCE_NONE;
		}
		break;
	}
done:
	if (src != CADENCE_LEARNED && !(src == CADENCE_NONE && ms))
		learn_reset(r);
	changed = (src == CADENCE_NONE ? 0 : ms) != rec_cadence_ms(r) || src != r->cadence_source;
	r->cadence_ms = ms;
	r->cadence_source = src;
	if (window_of(s, r) > s->max_window_ms)
		s->max_window_ms = window_of(s, r);
	return changed;
}

static bool learns(const struct stale *s, const struct rec *r)
{
	return (r->cadence_source == CADENCE_NONE || r->cadence_source == CADENCE_LEARNED) &&
	       (s->default_kind == CONF_DEFAULT_LEARN || s->default_kind == CONF_DEFAULT_MAX);
}

/*
** Learn from a live message at now_ms (prev_seen_ms: last_seen before it).
**
** The anchor is the last live message that counted; the interval is from
** it to now. Intervals are measured only between live messages both heard
** while synced in the current session: one that spans our own absence (or
** a restart) is not the producer's cadence. A message closer to the anchor
** than a quarter of the estimate (or LEARN_MIN_MS) is another copy of it:
** it neither counts as an interval nor moves the anchor, so a producer that
** always publishes twice, or in bursts, is learned right; one that really
** speeds up is still followed, a few steps at a time.
**
** An interval within [estimate / 2, 2 x estimate] agrees: the estimate
** moves a quarter of the way to it (an EWMA; jitter averages out). One
** outside is an outlier and leaves the estimate alone; three outliers on
** the same side re-seed it with the latest (the cadence changed). Long ones
** need not be consecutive: the run of long outliers is forgotten only after
** LEARN_CALM intervals that agree, so a producer that pauses now and then
** is not taken for a slower one, while one whose bursts leave regular gaps
** is learned by the gaps. Short ones must be consecutive: too short a
** cadence would raise false alarms, too long one only detects later.
** The cadence is learned once three intervals agreed (or re-seeded it).
*/
static void learn(struct stale *s, struct rec *r, int64_t prev_seen_ms, int64_t now_ms)
{
	unsigned n, run, calm;
	bool long_side;
	int64_t anchor, iv, floor_ms;
	uint32_t est;

	if (!learns(s, r))
		return;
	anchor = r->learn_lag == LAG_NONE ? 0 : prev_seen_ms - lag_dec(r->learn_lag);
	if (anchor <= 0 || !s->synced || anchor < s->synced_since_ms || now_ms <= anchor) {
		r->learn_lag = 0; /* this message is the anchor */
		return;
	}
	iv = now_ms - anchor;
	n = r->learn & LEARN_N_MASK;
	est = n ? r->cadence_ms : 0;
	floor_ms = est / 4 > LEARN_MIN_MS ? est / 4 : LEARN_MIN_MS;
	if (iv < floor_ms) {
		r->learn_lag = lag_enc(now_ms - prev_seen_ms + lag_dec(r->learn_lag));
		return;
	}
	r->learn_lag = 0;
	run = (r->learn & LEARN_RUN_MASK) >> LEARN_RUN_SHIFT;
	calm = (r->learn & LEARN_CALM_MASK) >> LEARN_CALM_SHIFT;
	long_side = r->learn & LEARN_LONG;
	if (iv > UINT32_MAX)
		iv = UINT32_MAX;
	if (n == 0) {
		est = (uint32_t)iv;
		n = 1;
		run = 0;
	} else if (iv > 2 * (int64_t)est || 2 * iv < (int64_t)est) {
		bool lng = iv > 2 * (int64_t)est;

		run = run && lng == long_side ? run + 1 : 1;
		long_side = lng;
		calm = 0;
		if (run >= LEARN_NEED) {
			est = (uint32_t)iv;
			n = LEARN_NEED;
			run = 0;
		}
	} else {
		int64_t d = iv - (int64_t)est;

		/* A quarter of the way, at least a ms: a steady producer is
		 * followed to the ms. */
		est = (uint32_t)((int64_t)est + (d / 4 ? d / 4 : d > 0 ? 1 : d < 0 ? -1 : 0));
		if (n < LEARN_NEED)
			n++;
		if (!long_side)
			run = 0;
		if (calm < LEARN_CALM && ++calm == LEARN_CALM)
			run = 0;
	}
	r->learn = (uint8_t)(n | run << LEARN_RUN_SHIFT | calm << LEARN_CALM_SHIFT |
			     (long_side ? LEARN_LONG : 0));
	r->cadence_ms = est ? est : 1;
	if (learned(r)) {
		r->cadence_source = CADENCE_LEARNED;
		if (window_of(s, r) > s->max_window_ms)
			s->max_window_ms = window_of(s, r);
	}
}

/* ------------------------------------------------------- transitions */

static bool stale_by_truth(const struct stale *s, const struct rec *r, int64_t now_ms)
{
	int64_t w = window_of(s, r);

	return w > 0 && now_ms > r->last_seen_ms + w;
}

static int64_t deadline_due(const struct stale *s, const struct rec *r)
{
	int64_t w = window_of(s, r);

	return w > 0 ? r->last_seen_ms + w + 1 : STALE_NEVER;
}

static void log_transition(struct stale *s, const struct rec *r, bool to_stale, int64_t now_ms)
{
	uint32_t dropped = 0;

	if (!log_ratelimit_ok(&s->rl_trans, now_ms, &dropped))
		return;
	if (dropped)
		log_info("staleness: %" PRIu32 " more transitions not logged", dropped);
	if (to_stale)
		log_info("stale: %s, unheard for %" PRId64 " ms (cadence %" PRIu32 " ms, grace %g)",
			 r->data, now_ms - r->last_seen_ms, rec_cadence_ms(r), s->grace);
	else
		log_info("fresh: %s, heard again", r->data);
}

static void count_reason(struct stale *s, enum stale_reason why, int delta)
{
	if (delta > 0)
		s->nby[why]++;
	else if (s->nby[why])
		s->nby[why]--;
	atomic_store_explicit(&g_by_reason[why], s->nby[why], memory_order_relaxed);
}

/* The reason a key is stale by its cadence: its own silence, or ours (the
 * deadline passed while we were not synced: we cannot tell). */
static enum stale_reason cadence_reason(const struct stale *s)
{
	return s->synced ? STALE_REASON_CADENCE : STALE_REASON_BROKER;
}

/* When a key stale by its cadence became stale. */
static int64_t cadence_since(const struct stale *s, const struct rec *r, int64_t now_ms)
{
	int64_t since = r->last_seen_ms + window_of(s, r);

	return since > now_ms || since <= 0 ? now_ms : since;
}

static void mark_stale(struct stale *s, struct rec *r, int64_t now_ms, bool count,
		       enum stale_reason why, int64_t since)
{
	r->flags |= REC_STALE;
	rec_set_stale_reason(r, why);
	r->stale_since_ms = since;
	group_add(s, r, +1);
	count_reason(s, why, +1);
	s->nstale++;
	STAT_SET(stale_keys, s->nstale);
	if (count) {
		STAT_INC(stale_transitions);
		log_transition(s, r, true, now_ms);
	}
}

/* A stale key's reason changes (its counters follow). */
static void set_reason(struct stale *s, struct rec *r, enum stale_reason why, uint32_t glen)
{
	group_add(s, r, -1);
	count_reason(s, rec_stale_reason(r), -1);
	rec_set_stale_reason(r, why);
	if (glen != NO_GROUP || (r->flags & REC_STICKY))
		pgroup_set(s, r, glen);
	group_add(s, r, +1);
	count_reason(s, why, +1);
}

static void mark_fresh(struct stale *s, struct rec *r, int64_t now_ms, bool count)
{
	group_add(s, r, -1);
	count_reason(s, rec_stale_reason(r), -1);
	if (r->flags & REC_STICKY)
		pgroup_set(s, r, NO_GROUP);
	r->flags &= (uint16_t)~(REC_STALE | REC_STICKY | REC_REASON_MASK);
	r->stale_since_ms = 0;
	if (s->nstale)
		s->nstale--;
	STAT_SET(stale_keys, s->nstale);
	if (count) {
		STAT_INC(fresh_transitions);
		log_transition(s, r, false, now_ms);
	}
}

/*
** The hold-back rule: a stale key may be alerted only while synced and once
** it has had its window since the re-sync to be heard from. When not, r is
** parked: listed (not synced: released at the re-sync) or scheduled on the
** heap for the end of its hold-back.
*/
static bool eligible(struct rec *r, int64_t now_ms, void *ctx)
{
	struct stale *s = ctx;
	int64_t release;

	if (!s->synced) {
		r->alert_state |= AS_HELD;
		heap_set_due(s, r, STALE_NEVER);
		if (!(r->alert_state & AS_LISTED)) {
			if (s->nheld == s->capheld) {
				size_t ncap = s->capheld ? s->capheld * 2 : 256;
				struct rec **nl = realloc(s->held, ncap * sizeof(*nl));
				if (!nl) {
					/* Without the list it cannot be released at the
					 * re-sync: give it a generous fixed hold instead. */
					heap_set_due(s, r, now_ms + 2 * s->max_window_ms + 1);
					return false;
				}
				s->held = nl;
				s->capheld = ncap;
			}
			s->held[s->nheld++] = r;
			r->alert_state |= AS_LISTED;
		}
		return false;
	}
	/* A producer said it is gone: nothing to wait for. */
	release = r->flags & REC_STICKY ? now_ms : s->synced_since_ms + window_of(s, r);
	if (now_ms < release) {
		r->alert_state |= AS_HELD;
		heap_set_due(s, r, release);
		return false;
	}
	r->alert_state &= (uint8_t)~AS_HELD;
	heap_set_due(s, r, STALE_NEVER);
	return true;
}

/* r is stale (just turned, or its hold-back ended): hand it to alerting. */
static void consider(struct stale *s, struct rec *r, int64_t now_ms)
{
	if (r->alert_state & (AS_ALERTED | AS_PENDING)) {
		heap_set_due(s, r, STALE_NEVER);
		alerts_key_changed_in(s->alerts, r, pgroup_len(s, r), now_ms);
		return;
	}
	if (eligible(r, now_ms, s))
		alerts_key_changed_in(s->alerts, r, pgroup_len(s, r), now_ms);
}

static void to_stale(struct stale *s, struct rec *r, int64_t now_ms, stale_transition_fn cb, void *ctx)
{
	mark_stale(s, r, now_ms, true, cadence_reason(s), cadence_since(s, r, now_ms));
	if (cb)
		cb(r, true, ctx);
	consider(s, r, now_ms);
}

static void to_fresh(struct stale *s, struct rec *r, int64_t now_ms, stale_transition_fn cb, void *ctx)
{
	uint32_t glen = pgroup_len(s, r); /* the incident it leaves */

	mark_fresh(s, r, now_ms, true);
	r->alert_state &= (uint8_t)~AS_HELD;
	heap_set_due(s, r, deadline_due(s, r));
	if (cb)
		cb(r, false, ctx);
	if (r->alert_state & (AS_ALERTED | AS_PENDING))
		alerts_key_changed_in(s->alerts, r, glen, now_ms);
}

/* Stop judging r (deleted, or now under our alerts topic). */
static void untrack(struct stale *s, struct rec *r, int64_t now_ms)
{
	uint32_t glen = pgroup_len(s, r);

	heap_remove(s, r);
	r->alert_state &= (uint8_t)~AS_HELD;
	if (r->flags & REC_STALE)
		mark_fresh(s, r, now_ms, false);
	if (r->alert_state & (AS_ALERTED | AS_PENDING))
		alerts_key_changed_in(s->alerts, r, glen, now_ms);
}

static void track(struct stale *s, struct rec *r, int64_t now_ms)
{
	uint32_t dropped;
	int rc = heap_push(s, r, deadline_due(s, r));

	if (rc < 0 && log_ratelimit_ok(&s->rl_err, now_ms, &dropped))
		log_warnx("staleness: cannot track %s: %s, key never judged stale",
			  r->data, strerror(-rc));
}

/* ----------------------------------------------------------- the API */

static void free_rules(struct rule *rules, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(rules[i].filter);
	free(rules);
}

static int copy_rules(const struct conf *c, struct rule **ret)
{
	struct rule *rules = c->nrules ? calloc(c->nrules, sizeof(*rules)) : NULL;

	if (c->nrules && !rules)
		return -ENOMEM;
	for (size_t i = 0; i < c->nrules; i++) {
		rules[i].filter = strdup(c->rules[i].filter);
		rules[i].cadence_ms = c->rules[i].cadence_ms;
		if (!rules[i].filter) {
			free_rules(rules, i);
			return -ENOMEM;
		}
	}
	*ret = rules;
	return 0;
}

/* The availability status filters: never judged by cadence. */
static int copy_unjudged(const struct conf *c, struct rule **ret)
{
	struct rule *u = c->navail ? calloc(c->navail, sizeof(*u)) : NULL;

	if (c->navail && !u)
		return -ENOMEM;
	for (size_t i = 0; i < c->navail; i++) {
		if (!(u[i].filter = strdup(c->avail[i].status))) {
			free_rules(u, i);
			return -ENOMEM;
		}
	}
	*ret = u;
	return 0;
}

static void take_settings(struct stale *s, const struct conf *c, struct rule *rules)
{
	free_rules(s->rules, s->nrules);
	s->rules = rules;
	s->nrules = c->nrules;
	s->grace = c->grace >= 1 ? c->grace : c->grace > 0 ? c->grace : 1;
	s->default_kind = c->default_kind;
	s->default_ms = c->default_cadence_ms;
}

struct stale *stale_new(const struct conf *c, struct index *ix, const struct deliver_outlet *out)
{
	struct stale *s = calloc(1, sizeof(*s));
	struct rule *rules = NULL;

	if (!s)
		return NULL;
	s->ix = ix;
	s->rl_trans = (struct log_ratelimit)LOG_RATELIMIT_INIT(1000, 50);
	s->rl_err = (struct log_ratelimit)LOG_RATELIMIT_INIT(10000, 5);
	if (copy_rules(c, &rules) < 0)
		goto fail;
	take_settings(s, c, rules);
	if (copy_unjudged(c, &s->unjudged) < 0)
		goto fail;
	s->nunjudged = c->navail;
	s->gmap = (struct hmap)HMAP_INIT(UINT32_MAX / 2);
	s->pgrp = (struct hmap)HMAP_INIT(UINT32_MAX / 2);
	s->alerts = alerts_new(c, out);
	if (!s->alerts)
		goto fail;
	return s;
fail:
	stale_free(s);
	return NULL;
}

void stale_free(struct stale *s)
{
	if (!s)
		return;
	for (uint32_t i = 0; i < s->n; i++)
		hrec(s, i)->heap_idx = STALE_NO_IDX;
	free(s->heap);
	free(s->held);
	for (uint32_t i = 0; i < s->ngroups; i++)
		free(s->groups[i]);
	free(s->groups);
	hmap_free(&s->gmap);
	hmap_free(&s->pgrp);
	free_rules(s->rules, s->nrules);
	free_rules(s->unjudged, s->nunjudged);
	alerts_free(s->alerts);
	free(s);
}

int stale_start_delivery(struct stale *s)
{
	return alerts_start(s->alerts);
}

void stale_stop_delivery(struct stale *s)
{
	alerts_stop(s->alerts);
}

int stale_reconfigure(struct stale *s, const struct conf *c,
		      void (*changed)(struct rec *r, void *ctx), void *ctx)
{
	struct rule *rules = NULL, *unjudged = NULL;
	int rc;

	if ((rc = copy_rules(c, &rules)) < 0)
		return rc;
	if ((rc = copy_unjudged(c, &unjudged)) < 0 || (rc = alerts_reconfigure(s->alerts, c)) < 0) {
		free_rules(rules, c->nrules);
		free_rules(unjudged, c->navail);
		return rc;
	}
	take_settings(s, c, rules);
	free_rules(s->unjudged, s->nunjudged);
	s->unjudged = unjudged;
	s->nunjudged = c->navail;
	/* Re-key every tracked key in place, then restore the heap in O(n).
	 * What turns stale or fresh by it is done by the next tick, with the
	 * callback: fresh keys past their new deadline are due at once, and
	 * stale keys that are no longer stale are made due at once. */
	s->max_window_ms = 0;
	for (uint32_t i = 0; i < s->n; i++) {
		struct hent *e = &s->heap[i];
		struct rec *r = index_rec(s->ix, e->ref);

		if (alerts_own_topic(s->alerts, r->data, r->topic_len)) {
			e->due = 0; /* due now: the due handler stops judging it */
			continue;
		}
		if (derive(s, r) && changed)
			changed(r, ctx);
		/* A stale key is re-examined by the next tick: it may be fresh
		 * now, or its hold-back may end at another time. */
		e->due = r->flags & REC_STALE ? 0 : due_enc(s, deadline_due(s, r));
	}
	heapify(s);
	return 0;
}

/* Have the first tick call back for r (its flag changed at load). */
static void announce(struct stale *s, struct rec *r)
{
	r->alert_state |= AS_ANNOUNCE;
	heap_set_due(s, r, INT64_MIN);
}

bool stale_on_load(struct stale *s, struct rec *r, int64_t now_ms)
{
	bool was = r->flags & REC_STALE, changed;
	bool sticky = was && (r->flags & REC_STICKY);
	enum stale_reason why = rec_stale_reason(r);

	heap_rebase(s, now_ms);
	r->alert_state = 0;
	r->heap_idx = STALE_NO_IDX;
	if (r->flags & REC_DELETED) {
		r->flags &= (uint16_t)~(REC_STALE | REC_STICKY | REC_REASON_MASK);
		return was;
	}
	if (alerts_own_topic(s->alerts, r->data, r->topic_len)) {
		changed = was || !(r->flags & REC_NO_STALE);
		r->flags = (uint16_t)((r->flags | REC_NO_STALE) &
				      ~(REC_STALE | REC_STICKY | REC_REASON_MASK));
		r->stale_since_ms = 0;
		alerts_adopt(s->alerts, s->ix, r, now_ms);
		return changed;
	}
	changed = r->flags & REC_NO_STALE;
	r->flags &= (uint16_t)~(REC_NO_STALE | REC_STALE | REC_STICKY | REC_REASON_MASK);
	changed |= derive(s, r);
	track(s, r, now_ms);
	if (sticky) {
		/* Its producer was gone when we stopped, and nothing since has
		 * said otherwise: stale still, until it is heard from. */
		int64_t since = r->stale_since_ms;

		r->flags |= REC_STICKY;
		mark_stale(s, r, now_ms, false, why,
			   since > 0 && since <= now_ms ? since : now_ms);
		heap_set_due(s, r, STALE_NEVER);
		consider(s, r, now_ms);
		return changed;
	}
	if (stale_by_truth(s, r, now_ms)) {
		int64_t since = r->stale_since_ms;

		/* Stale since before keeps its reason; else it turned stale
		 * while we were away: not synced (broker). */
		mark_stale(s, r, now_ms, false,
			   was && why != STALE_REASON_NONE ? why : cadence_reason(s),
			   was && since > 0 && since <= now_ms ? since : cadence_since(s, r, now_ms));
		consider(s, r, now_ms);
		if (!was)
			announce(s, r);
		return changed || !was;
	}
	r->stale_since_ms = 0;
	if (was)
		announce(s, r);
	return changed || was;
}

void stale_on_message(struct stale *s, struct rec *r, bool live_seen, bool is_new,
		      int64_t prev_seen_ms, int64_t now_ms, stale_transition_fn cb, void *ctx)
{
	bool stale;

	heap_rebase(s, now_ms);
	if (r->flags & REC_DELETED)
		return;
	/* Our own alerts (and only those) are never judged. The check is a
	 * prefix compare, so a reload that moves the alerts topic takes
	 * effect for a key at its next message. */
	if (alerts_own_topic(s->alerts, r->data, r->topic_len)) {
		if (!(r->flags & REC_NO_STALE)) {
			bool was = r->flags & REC_STALE;
			untrack(s, r, now_ms);
			r->flags |= REC_NO_STALE;
			if (was && cb)
				cb(r, false, ctx);
		}
		if (!live_seen)
			alerts_adopt(s->alerts, s->ix, r, now_ms);
		return;
	}
	if (r->flags & REC_NO_STALE) {
		r->flags &= (uint16_t)~REC_NO_STALE;
		is_new = true;
	}
	if (r->heap_idx == STALE_NO_IDX) {
		is_new = true;
		if (r->flags & REC_STALE) /* revived tombstone: start clean */
			mark_fresh(s, r, now_ms, false);
	}
	if (is_new) {
		derive(s, r);
		if (r->heap_idx == STALE_NO_IDX)
			track(s, r, now_ms);
	}
	if (live_seen)
		learn(s, r, prev_seen_ms, now_ms);
	else if (r->last_seen_ms != prev_seen_ms)
		r->learn_lag = LAG_NONE; /* a retained copy moved last_seen: the next live message anchors */

	if ((r->flags & REC_STALE) && (r->flags & REC_STICKY)) {
		/* Its producer said it is gone: only the key itself, heard
		 * live (or a value observed after its death), says otherwise. */
		if (live_seen || ((r->flags & REC_TS_PAYLOAD) && r->ts_ns / 1000000 > r->stale_since_ms))
			to_fresh(s, r, now_ms, cb, ctx);
		else
			return;
	}
	stale = stale_by_truth(s, r, now_ms);
	if (r->flags & REC_STALE) {
		/* A retained copy is no sign of life: without the producer's own
		 * timestamp its last_seen says nothing about the producer. */
		if (!stale && (live_seen || (r->flags & REC_TS_PAYLOAD)))
			to_fresh(s, r, now_ms, cb, ctx);
	} else if (stale) {
		to_stale(s, r, now_ms, cb, ctx);
	} else if (r->heap_idx != STALE_NO_IDX) {
		int64_t due = deadline_due(s, r);
		/* Lazy: the heap only ever holds a lower bound of the deadline. */
		if (due_enc(s, due) < s->heap[r->heap_idx].due)
			heap_set_due(s, r, due);
	}
}

void stale_on_delete(struct stale *s, struct rec *r, int64_t now_ms, stale_transition_fn cb, void *ctx)
{
	(void)cb;
	(void)ctx;
	untrack(s, r, now_ms);
}

void stale_on_broker(struct stale *s, bool synced, int64_t now_ms)
{
	heap_rebase(s, now_ms);
	if (s->link_known && synced == s->synced)
		return;
	s->link_known = true;
	s->synced = synced;
	alerts_link(s->alerts, synced, now_ms);
	if (!synced)
		return;
	/* Re-synced: every key held meanwhile gets its window from now. */
	s->synced_since_ms = now_ms;
	for (size_t i = 0; i < s->nheld; i++) {
		struct rec *r = s->held[i];

		r->alert_state &= (uint8_t)~AS_LISTED;
		if ((r->alert_state & AS_HELD) && (r->flags & REC_STALE) && !(r->flags & REC_DELETED))
			heap_set_due(s, r, r->flags & REC_STICKY ? now_ms : now_ms + window_of(s, r));
	}
	s->nheld = 0;
	if (s->capheld > 4096) {
		free(s->held);
		s->held = NULL;
		s->capheld = 0;
	}
}

/* A key's due time came: decide what it is now. */
static void on_due(struct stale *s, struct rec *r, int64_t now_ms, stale_transition_fn cb, void *ctx)
{
	bool stale;

	if (alerts_own_topic(s->alerts, r->data, r->topic_len)) {
		bool was = r->flags & REC_STALE;
		untrack(s, r, now_ms);
		r->flags |= REC_NO_STALE;
		if (was && cb)
			cb(r, false, ctx);
		return;
	}
	if (r->alert_state & AS_ANNOUNCE) {
		/* Its stale flag changed at load, without a callback: now the
		 * core gets to persist it and tell watchers. */
		r->alert_state &= (uint8_t)~AS_ANNOUNCE;
		if (cb)
			cb(r, r->flags & REC_STALE, ctx);
	}
	if ((r->flags & REC_STALE) && (r->flags & REC_STICKY)) {
		/* Stale until heard from, whatever its cadence says. */
		heap_set_due(s, r, STALE_NEVER);
		if (!(r->alert_state & (AS_ALERTED | AS_PENDING)))
			consider(s, r, now_ms);
		return;
	}
	stale = stale_by_truth(s, r, now_ms);
	if (!(r->flags & REC_STALE)) {
		if (stale)
			to_stale(s, r, now_ms, cb, ctx);
		else
			heap_set_due(s, r, deadline_due(s, r)); /* heard meanwhile */
		return;
	}
	if (!stale) {
		/* Only a reload gets here: a new cadence or grace cleared it. */
		to_fresh(s, r, now_ms, cb, ctx);
		return;
	}
	if (rec_stale_reason(r) == STALE_REASON_BROKER && s->synced &&
	    now_ms >= s->synced_since_ms + window_of(s, r)) {
		/* Synced again and given its window: unheard, now its own doing. */
		set_reason(s, r, STALE_REASON_CADENCE, NO_GROUP);
		if (cb)
			cb(r, true, ctx);
	}
	heap_set_due(s, r, STALE_NEVER);
	if (!(r->alert_state & (AS_ALERTED | AS_PENDING)))
		consider(s, r, now_ms); /* a hold-back ended */
}

void stale_mark_dead(struct stale *s, struct rec *r, enum stale_reason why, uint32_t group_len,
		     int64_t ts_ms, stale_transition_fn cb, void *ctx)
{
	if ((r->flags & (REC_DELETED | REC_NO_STALE)) || why <= STALE_REASON_NONE ||
	    why >= STALE_REASON_MAX || r->heap_idx == STALE_NO_IDX)
		return; /* not judged: deleted, ours, or never tracked */
	heap_rebase(s, ts_ms);
	if (group_len != NO_GROUP &&
	    (group_len > r->topic_len || (group_len < r->topic_len && r->data[group_len] != '/')))
		group_len = NO_GROUP; /* not a prefix of its topic: grouped by topic */
	if (r->flags & REC_STALE) {
		if ((r->flags & REC_STICKY) && rec_stale_reason(r) == why &&
		    pgroup_len(s, r) == group_len)
			return; /* told already */
		/* Stale already (and since then): it now has its producer's reason. */
		r->flags |= REC_STICKY;
		set_reason(s, r, why, group_len);
	} else {
		r->flags |= REC_STICKY;
		if (group_len != NO_GROUP)
			pgroup_set(s, r, group_len);
		mark_stale(s, r, ts_ms, true, why, ts_ms);
	}
	if (cb)
		cb(r, true, ctx);
	heap_set_due(s, r, STALE_NEVER);
	if (!(r->alert_state & AS_ALERTED))
		consider(s, r, ts_ms);
}

int64_t stale_tick(struct stale *s, int64_t now_ms, stale_transition_fn cb, void *ctx)
{
	int64_t next = STALE_TICK_MAX_MS, a;
	unsigned done = 0;

	heap_rebase(s, now_ms);
	while (s->n && due_dec(s, s->heap[0].due) <= now_ms && done < STALE_TICK_BATCH) {
		on_due(s, hrec(s, 0), now_ms, cb, ctx);
		done++;
	}
	a = alerts_tick(s->alerts, now_ms, s->max_window_ms, eligible, s);
	if (a < next)
		next = a;
	if (s->n && due_dec(s, s->heap[0].due) - now_ms < next)
		next = due_dec(s, s->heap[0].due) - now_ms;
	return next < 1 ? 1 : next;
}

struct gsort {
	const char *prefix;
	uint64_t n;
	enum stale_reason reason;
};

static int gsort_cmp(const void *a, const void *b)
{
	const struct gsort *x = a, *y = b;
	int c = strcmp(x->prefix, y->prefix);

	return c ? c : (int)x->reason - (int)y->reason;
}

void stale_groups(struct stale *s, struct index *ix,
		  void (*fn)(const char *prefix, enum stale_reason reason, uint64_t count, void *ctx),
		  void *ctx)
{
	struct gsort *v = s->ngroups ? malloc(s->ngroups * sizeof(*v)) : NULL;
	size_t k = 0;

	(void)ix;
	for (uint32_t i = 0; i < s->ngroups; i++) {
		struct gcount *g = s->groups[i];
		if (!v)
			fn(g->prefix, (enum stale_reason)g->reason, g->n, ctx); /* out of memory: unsorted */
		else
			v[k++] = (struct gsort){ g->prefix, g->n, (enum stale_reason)g->reason };
	}
	if (!v)
		return;
	qsort(v, k, sizeof(*v), gsort_cmp);
	for (size_t i = 0; i < k; i++)
		fn(v[i].prefix, v[i].reason, v[i].n, ctx);
	free(v);
}

const char *stale_reason_name(enum stale_reason r)
{
	switch (r) {
	case STALE_REASON_CADENCE:
		return "cadence";
	case STALE_REASON_PRODUCER_OFFLINE:
		return "producer_offline";
	case STALE_REASON_BROKER:
		return "broker";
	case STALE_REASON_NONE:
	case STALE_REASON_MAX:
		break;
	}
	return NULL;
}

uint64_t stale_reason_count(enum stale_reason r)
{
	if (r <= STALE_REASON_NONE || r >= STALE_REASON_MAX)
		return 0;
	return atomic_load_explicit(&g_by_reason[r], memory_order_relaxed);
}

uint64_t stale_count_by_reason(const struct stale *s, enum stale_reason r)
{
	return r > STALE_REASON_NONE && r < STALE_REASON_MAX ? s->nby[r] : 0;
}

size_t stale_tracked(const struct stale *s)
{
	return s->n;
}

bool stale_heap_check(const struct stale *s)
{
	for (uint32_t i = 0; i < s->n; i++) {
		if (hrec(s, i)->heap_idx != i)
			return false;
		if (i > 0 && s->heap[(i - 1) / 2].due > s->heap[i].due)
			return false;
	}
	return true;
}

int64_t stale_next_due(const struct stale *s)
{
	return s->n ? due_dec(s, s->heap[0].due) : STALE_NEVER;
}

struct alerts *stale_alerts(struct stale *s)
{
	return s->alerts;
}
