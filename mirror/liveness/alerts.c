/* SPDX-License-Identifier: MIT */
/* alerts.c: staleness alerts: pending set, incidents by topic prefix, the mirror alert, rendered for delivery. */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/hash.h"
#include "common/hmap.h"
#include "common/log.h"
#include "common/stats.h"
#include "common/topic.h"
#include "common/tsparse.h"
#include "mirror/liveness/alerts.h"

#define NEVER INT64_MAX
#define GROUP_INTERVAL_FACTOR 5  /* updates to an open incident: at most one per 5 group waits */
#define MIRROR_WAIT_FACTOR 15    /* the mirror alert waits 15 group waits (30 s by default) */
#define EXAMPLES_KEPT 8          /* example records remembered per incident */
#define EXEC_MAX_ARGS 32

struct pend {
	struct rec *r;
	int64_t t; /* time of the key's latest change */
	uint32_t glen; /* its producer's prefix length, ALERTS_NO_GROUP none */
};

/* An open alert for a topic prefix. Its keys are the AS_ALERTED records
 * whose deepest open incident it is; only their number is kept. */
struct incident {
	uint32_t key;           /* its hmap key: hash_key32 of the prefix */
	uint32_t idx;           /* its place in alerts.inc */
	uint32_t count;         /* keys alerted in it */
	uint32_t added, recovered; /* since the last publication */
	struct rec *ex[EXAMPLES_KEPT];
	unsigned nex;
	int64_t since_ms, last_pub_ms;
	bool published;         /* its state is out (or adopted from a retained copy) */
	bool listed;            /* in the work list */
	bool adopted;           /* from an earlier run: decided once its keys had time to rejoin */
	uint32_t adopted_count; /* the count its retained copy said */
	bool mqtt_only;         /* republish under a new topic without running exec */
	bool producer;          /* a producer's: its keys joined by name (alerts_key_changed_in) */
	size_t len;
	char prefix[];
};

enum mirror_state { MIRROR_OK, MIRROR_WAITING, MIRROR_OPEN, MIRROR_RESOLVING, MIRROR_STATE_MAX };

struct alerts {
	int64_t group_wait_ms, min_hold_ms;
	char *topic;         /* NULL = no MQTT alerts */
	size_t topic_len;
	char *exec_line;     /* NULL = no exec */
	struct deliver *dl;  /* publishes and execs, on its own thread */

	struct pend *pend;
	size_t npend, cappend;
	struct hmap pmap;    /* hash_ptr(r) -> index in pend */
	int64_t window_due;

	struct incident **inc; /* the open incidents, dense */
	uint32_t ninc, capinc;
	struct hmap imap;      /* prefix -> index in inc */
	struct incident **work; /* incidents with something to publish or to settle */
	size_t nwork, capwork;

	bool link_known, synced;
	int64_t unsynced_since_ms, synced_since_ms;
	enum mirror_state mirror;
	int64_t mirror_due_ms;

};

/* ------------------------------------------------------------ helpers */

static int64_t group_interval(const struct alerts *a)
{
	return a->group_wait_ms * GROUP_INTERVAL_FACTOR;
}

static int64_t mirror_wait(const struct alerts *a)
{
	int64_t w = a->group_wait_ms * MIRROR_WAIT_FACTOR;

	return w > a->min_hold_ms ? w : a->min_hold_ms;
}

/* Does incident prefix p (len) contain topic t? "" holds the one-level topics. */
static bool prefix_contains(const char *p, size_t len, const char *t, size_t tlen)
{
	if (len == 0)
		return !memchr(t, '/', tlen);
	return tlen > len && t[len] == '/' && memcmp(p, t, len) == 0;
}

bool alerts_own_topic(const struct alerts *a, const char *topic, size_t len)
{
	if (!a->topic)
		return false;
	return len >= a->topic_len && memcmp(topic, a->topic, a->topic_len) == 0 &&
	       (len == a->topic_len || topic[a->topic_len] == '/');
}

/* "<topic>/group/<prefix>" ("<topic>/group" for the one-level topics). */
static char *group_topic(const struct alerts *a, const char *prefix, size_t len)
{
	size_t n = a->topic_len + 7 + len + 2;
	char *t = malloc(n);

	if (!t)
		return NULL;
	if (len)
		snprintf(t, n, "%s/group/%.*s", a->topic, (int)len, prefix);
	else
		snprintf(t, n, "%s/group", a->topic);
	return t;
}

/* ---------------------------------------------------------- settings */

struct settings {
	char *topic, *exec_line;
};

static int read_settings(const struct conf *c, struct settings *ret)
{
	struct settings st = { 0 };

	if (c->alert_topic && c->alert_topic[0]) {
		size_t n = strlen(c->alert_topic);
		while (n > 1 && c->alert_topic[n - 1] == '/')
			n--; /* "a/b/" means "a/b" */
		if (!(st.topic = strndup(c->alert_topic, n)))
			goto fail;
	}
	if (c->alert_exec && c->alert_exec[strspn(c->alert_exec, " \t")]) {
		if (!(st.exec_line = strdup(c->alert_exec)))
			goto fail;
	}
	*ret = st;
	return 0;
fail:
	free(st.topic);
	free(st.exec_line);
	return -ENOMEM;
}

static void take_settings(struct alerts *a, const struct conf *c, struct settings *st)
{
	free(a->topic);
	free(a->exec_line);
	a->topic = st->topic;
	a->topic_len = st->topic ? strlen(st->topic) : 0;
	a->exec_line = st->exec_line;
	a->group_wait_ms = c->group_wait_ms > 0 ? c->group_wait_ms : 0;
	a->min_hold_ms = c->min_hold_ms > 0 ? c->min_hold_ms : 0;
}

/* ---------------------------------------------------------- delivery */

static void put_time(json_t *o, const char *name, int64_t ms)
{
	char buf[32];

	json_object_set_new(o, name, ms > 0 ? json_string(clock_format_rfc3339(ms, buf)) : json_null());
}

/*
** Send one alert: log it, count it, and queue it for delivery (retained
** MQTT when topic, and exec): the delivery thread does the I/O, never this
** one, which holds the index write lock. clear: publish an empty retained
** payload afterwards, so
** that the broker no longer holds an alert that is over (subscribers still
** see the resolution first). mqtt_only: a republication (the alerts topic
** moved), not a new alert.
*/
static void emit(struct alerts *a, const char *key, const char *topic, json_t *o, const char *state,
		 const char *group, bool clear, bool mqtt_only, int64_t now_ms)
{
	json_t *summary = json_object_get(o, "summary");
	char *text = json_dumps(o, JSON_COMPACT);
	size_t len;

	if (!text) {
		log_warnx("alerts: out of memory, the %s alert not sent", key);
		return;
	}
	len = strlen(text);
	if (!mqtt_only) {
		log_warnx("alert: %s", json_string_value(summary) ? json_string_value(summary) : text);
		STAT_INC(alerts_sent);
	}
	if (topic || (!mqtt_only && a->exec_line))
		deliver_push(a->dl, &(struct deliver_alert){
			.key = key, .topic = topic, .payload = text, .len = len, .state = state,
			.group = group, .clear = clear, .exec = !mqtt_only && a->exec_line,
		}, now_ms);
	free(text);
}

static bool example_valid(const struct incident *inc, const struct rec *r)
{
	return (r->alert_state & AS_ALERTED) && (r->flags & REC_STALE) && !(r->flags & REC_DELETED) &&
	       prefix_contains(inc->prefix, inc->len, r->data, r->topic_len);
}

static json_t *incident_json(const struct incident *inc, int64_t now_ms, size_t nex)
{
	json_t *o = json_object(), *ex = json_array();
	const char *first = NULL;
	const char *where = inc->len ? inc->prefix : "(top level)";
	char summary[512];
	char since[32];

	if (!o || !ex) {
		json_decref(o);
		json_decref(ex);
		return NULL;
	}
	for (unsigned i = 0; i < inc->nex && json_array_size(ex) < nex; i++) {
		json_array_append_new(ex, json_stringn(inc->ex[i]->data, inc->ex[i]->topic_len));
		if (!first)
			first = inc->ex[i]->data;
	}
	clock_format_rfc3339(inc->since_ms, since);
	if (inc->count && inc->producer)
		snprintf(summary, sizeof(summary), "producer %.200s offline: %" PRIu32 " key%s stale%s%.200s",
			 where, inc->count, inc->count == 1 ? "" : "s", first ? ", e.g. " : "",
			 first ? first : "");
	else if (inc->count)
		snprintf(summary, sizeof(summary), "%" PRIu32 " key%s stale under %.200s%s%.200s",
			 inc->count, inc->count == 1 ? "" : "s", where, first ? ", e.g. " : "",
			 first ? first : "");
	else
		snprintf(summary, sizeof(summary), "keys under %.200s fresh again (stale since %s)",
			 where, since);
	json_object_set_new(o, "alert", json_string("stale"));
	json_object_set_new(o, "group", json_stringn(inc->prefix, inc->len));
	if (inc->producer)
		json_object_set_new(o, "producer", json_stringn(inc->prefix, inc->len));
	json_object_set_new(o, "state", json_string(inc->count ? "stale" : "resolved"));
	json_object_set_new(o, "count", json_integer(inc->count));
	json_object_set_new(o, "new", json_integer(inc->added));
	json_object_set_new(o, "recovered", json_integer(inc->recovered));
	json_object_set_new(o, "examples", ex);
	put_time(o, "since", inc->since_ms);
	put_time(o, "time", now_ms);
	json_object_set_new(o, "summary", json_string(summary));
	return o;
}

static bool incident_is(uint32_t val, const void *k, const void *ctx)
{
	const struct alerts *a = ctx;
	const struct incident *want = k;

	return a->inc[val] == want;
}

static void incident_remove(struct alerts *a, struct incident *inc)
{
	uint32_t last = a->ninc - 1;

	hmap_del(&a->imap, inc->key, incident_is, inc, a);
	if (inc->idx != last) {
		/* The last one fills the hole; its entry follows it. */
		struct incident *m = a->inc[last];
		uint32_t *v = hmap_find(&a->imap, m->key, incident_is, m, a);

		a->inc[inc->idx] = m;
		m->idx = inc->idx;
		if (v)
			*v = m->idx;
	}
	a->ninc--;
	free(inc);
}

/* Publish inc's state. A resolved incident is cleared and freed (the
 * caller must not use it afterwards). */
static void incident_publish(struct alerts *a, struct incident *inc, int64_t now_ms)
{
	char *topic = a->topic ? group_topic(a, inc->prefix, inc->len) : NULL;
	char *key;
	json_t *o = NULL;
	unsigned k = 0;
	bool resolved = inc->count == 0;

	for (unsigned i = 0; i < inc->nex; i++)
		if (example_valid(inc, inc->ex[i]))
			inc->ex[k++] = inc->ex[i];
	inc->nex = k;
	for (size_t nex = ALERTS_EXAMPLES + 1; nex-- > 0;) {
		char *probe;
		size_t len;

		json_decref(o);
		o = incident_json(inc, now_ms, nex);
		if (!o || !(probe = json_dumps(o, JSON_COMPACT)))
			break;
		len = strlen(probe);
		free(probe);
		if (len < ALERTS_JSON_MAX)
			break;
	}
	key = malloc(inc->len + 7);
	if (key)
		snprintf(key, inc->len + 7, "group %s", inc->prefix);
	if (o && key && (topic || !a->topic))
		emit(a, key, topic, o, resolved ? "resolved" : "stale", inc->prefix,
		     resolved, inc->mqtt_only, now_ms);
	else
		log_warnx("alerts: out of memory, the alert for %s not sent", inc->prefix);
	json_decref(o);
	free(topic);
	free(key);
	inc->published = true;
	inc->mqtt_only = false;
	inc->last_pub_ms = now_ms;
	inc->added = inc->recovered = 0;
	if (resolved)
		incident_remove(a, inc);
}

static void mirror_publish(struct alerts *a, bool open, int64_t now_ms)
{
	json_t *o = json_object();
	char *topic = NULL;
	char since[32], summary[256];

	if (!o)
		return;
	clock_format_rfc3339(a->unsynced_since_ms, since);
	if (open)
		snprintf(summary, sizeof(summary),
			 "statemirror not synced with the broker since %s; key alerts held back", since);
	else
		snprintf(summary, sizeof(summary),
			 "statemirror synced with the broker again (out since %s)", since);
	json_object_set_new(o, "alert", json_string("mirror"));
	json_object_set_new(o, "state", json_string(open ? "disconnected" : "resolved"));
	put_time(o, "since", a->unsynced_since_ms);
	put_time(o, "time", now_ms);
	json_object_set_new(o, "summary", json_string(summary));
	if (a->topic) {
		size_t n = a->topic_len + 8;
		if ((topic = malloc(n)))
			snprintf(topic, n, "%s/mirror", a->topic);
	}
	if (topic || !a->topic)
		emit(a, "mirror", topic, o, open ? "disconnected" : "resolved", NULL, !open, false, now_ms);
	free(topic);
	json_decref(o);
}

/* ------------------------------------------------------- incidents */

struct pkey {
	const char *p;
	size_t len;
};

static bool incident_eq(uint32_t val, const void *k, const void *ctx)
{
	const struct alerts *a = ctx;
	const struct pkey *want = k;
	const struct incident *i = a->inc[val];

	return i->len == want->len && memcmp(i->prefix, want->p, want->len) == 0;
}

static struct incident *incident_get(const struct alerts *a, const char *p, size_t len)
{
	uint32_t *v = hmap_find(&a->imap, hash_key32(hash_bytes(p, len)), incident_eq,
				&(struct pkey){ p, len }, a);

	return v ? a->inc[*v] : NULL;
}

static struct incident *incident_new(struct alerts *a, const char *p, size_t len, int64_t now_ms)
{
	struct incident *inc;

	if (a->ninc == a->capinc) {
		uint32_t ncap = a->capinc ? 2 * a->capinc : 64;
		struct incident **ni = ncap > a->capinc ? realloc(a->inc, ncap * sizeof(*ni)) : NULL;
		if (!ni)
			return NULL;
		a->inc = ni;
		a->capinc = ncap;
	}
	inc = calloc(1, sizeof(*inc) + len + 1);
	if (!inc)
		return NULL;
	inc->key = hash_key32(hash_bytes(p, len));
	inc->idx = a->ninc;
	inc->len = len;
	memcpy(inc->prefix, p, len);
	inc->since_ms = now_ms;
	if (hmap_put(&a->imap, inc->key, inc->idx) < 0) {
		free(inc);
		return NULL;
	}
	a->inc[a->ninc++] = inc;
	return inc;
}

/* The deepest open incident that contains topic t. */
static struct incident *incident_find(const struct alerts *a, const char *t, size_t len)
{
	size_t end = len;

	if (!memchr(t, '/', len))
		return incident_get(a, t, 0);
	/* Up one level at a time while there is a level to go up. */
	while (memchr(t, '/', end)) {
		struct incident *inc;
		end = topic_group_prefix(t, end);
		if ((inc = incident_get(a, t, end)))
			return inc;
	}
	return NULL;
}

static void work_add(struct alerts *a, struct incident *inc)
{
	if (inc->listed)
		return;
	if (a->nwork == a->capwork) {
		size_t ncap = a->capwork ? a->capwork * 2 : 32;
		struct incident **nw = realloc(a->work, ncap * sizeof(*nw));
		if (!nw)
			return; /* published with the next change that finds memory */
		a->work = nw;
		a->capwork = ncap;
	}
	a->work[a->nwork++] = inc;
	inc->listed = true;
}

/* An alert is as old as the first of its keys to go stale: the group wait
 * and the roll-up come after that. (0: the key holds no stale time.) */
static void incident_since(struct incident *inc, int64_t stale_since_ms)
{
	if (stale_since_ms > 0 && stale_since_ms < inc->since_ms)
		inc->since_ms = stale_since_ms;
}

static void incident_join(struct alerts *a, struct incident *inc, struct rec *r)
{
	if (!inc->published)
		incident_since(inc, r->stale_since_ms);
	inc->count++;
	inc->added++;
	if (inc->nex < EXAMPLES_KEPT)
		inc->ex[inc->nex++] = r;
	work_add(a, inc);
}

static void incident_leave(struct alerts *a, struct incident *inc)
{
	if (inc->count)
		inc->count--;
	inc->recovered++;
	work_add(a, inc);
}

/*
** New alert groups from one flush. Each key starts in its group (its
** topic without the last level); while two or more groups share a parent
** (and the parent is not the top), they are merged into it; a group below
** another one folds into it. So a gateway whose 100 devices all stop
** yields one alert for the gateway, and two unrelated producers two.
*/
struct ng {
	const char *p;  /* borrowed from a record's topic */
	size_t len;
	uint32_t count;
	struct rec *ex[EXAMPLES_KEPT];
	unsigned nex;
	int64_t since;  /* the earliest stale time of its keys (INT64_MAX: none) */
	size_t into;    /* merged into this group's index; itself while active */
};

struct ngset {
	struct ng *v;
	uint32_t n, cap;
	struct hmap map; /* prefix -> index in v */
};

static bool ng_eq(uint32_t val, const void *k, const void *ctx)
{
	const struct ngset *g = ctx;
	const struct pkey *want = k;

	return g->v[val].len == want->len && memcmp(g->v[val].p, want->p, want->len) == 0;
}

/* The index of group (p, len), made if absent when create. Returns
 * SIZE_MAX when absent, or on ENOMEM. A plain lookup never fails for want
 * of memory (rollup indexes with what it returns). */
static size_t ngset_get(struct ngset *g, const char *p, size_t len, bool create)
{
	uint32_t key = hash_key32(hash_bytes(p, len));
	uint32_t *v = hmap_find(&g->map, key, ng_eq, &(struct pkey){ p, len }, g);

	if (v)
		return *v;
	if (!create)
		return SIZE_MAX;
	if (g->n == g->cap) {
		uint32_t ncap = g->cap ? 2 * g->cap : 64;
		struct ng *nv = ncap > g->cap ? realloc(g->v, ncap * sizeof(*nv)) : NULL;
		if (!nv)
			return SIZE_MAX;
		g->v = nv;
		g->cap = ncap;
	}
	if (hmap_put(&g->map, key, g->n) < 0)
		return SIZE_MAX;
	g->v[g->n] = (struct ng){ .p = p, .len = len, .since = INT64_MAX, .into = g->n };
	return g->n++;
}

static size_t ng_root(const struct ng *v, size_t i)
{
	while (v[i].into != i)
		i = v[i].into;
	return i;
}

static void ng_merge(struct ng *v, size_t from, size_t to)
{
	to = ng_root(v, to);
	if (from == to)
		return;
	v[to].count += v[from].count;
	if (v[from].since < v[to].since)
		v[to].since = v[from].since;
	for (unsigned k = 0; k < v[from].nex && v[to].nex < EXAMPLES_KEPT; k++)
		v[to].ex[v[to].nex++] = v[from].ex[k];
	v[from].count = 0;
	v[from].into = to;
}

/* The parent of a group prefix, never the empty top. */
static bool parent_of(const char *p, size_t len, size_t *ret_len)
{
	size_t n = topic_group_prefix(p, len);

	if (n == 0)
		return false;
	*ret_len = n;
	return true;
}

static bool ng_active(const struct ng *x, size_t i)
{
	return x->into == i && x->count > 0;
}

static int rollup(struct ngset *g)
{
	bool changed = true;

	while (changed) {
		size_t nbefore = g->n, pl, pi;
		uint32_t *kids;

		changed = false;
		for (size_t i = 0; i < nbefore; i++)
			if (ng_active(&g->v[i], i) && parent_of(g->v[i].p, g->v[i].len, &pl) &&
			    ngset_get(g, g->v[i].p, pl, true) == SIZE_MAX)
				return -ENOMEM;
		if (!(kids = calloc(g->n, sizeof(*kids))))
			return -ENOMEM;
		for (size_t i = 0; i < nbefore; i++)
			if (ng_active(&g->v[i], i) && parent_of(g->v[i].p, g->v[i].len, &pl))
				kids[ngset_get(g, g->v[i].p, pl, false)]++;
		for (size_t i = 0; i < nbefore; i++) {
			if (!ng_active(&g->v[i], i) || !parent_of(g->v[i].p, g->v[i].len, &pl))
				continue;
			pi = ngset_get(g, g->v[i].p, pl, false);
			if (kids[pi] >= 2) {
				ng_merge(g->v, i, pi);
				changed = true;
			}
		}
		free(kids);
	}
	/* Fold each group into the topmost group above it. */
	for (size_t i = 0; i < g->n; i++) {
		size_t top = i, end = g->v[i].len, ai;

		if (!ng_active(&g->v[i], i))
			continue;
		while (parent_of(g->v[i].p, end, &end))
			if ((ai = ngset_get(g, g->v[i].p, end, false)) != SIZE_MAX &&
			    ng_active(&g->v[ai], ai))
				top = ai;
		if (top != i)
			ng_merge(g->v, i, top);
	}
	return 0;
}

static void open_new(struct alerts *a, struct rec **keys, size_t n, int64_t now_ms)
{
	struct ngset g = { .map = HMAP_INIT(UINT32_MAX / 2) };

	if (!n)
		return;
	for (size_t i = 0; i < n; i++) {
		struct rec *r = keys[i];
		size_t gi = ngset_get(&g, r->data, topic_group_prefix(r->data, r->topic_len), true);

		if (gi == SIZE_MAX)
			goto fallback;
		g.v[gi].count++;
		if (r->stale_since_ms > 0 && r->stale_since_ms < g.v[gi].since)
			g.v[gi].since = r->stale_since_ms;
		if (g.v[gi].nex < EXAMPLES_KEPT)
			g.v[gi].ex[g.v[gi].nex++] = r;
	}
	if (rollup(&g) < 0)
		goto fallback;
	for (size_t i = 0; i < g.n; i++) {
		struct ng *x = &g.v[i];
		struct incident *inc;

		if (!ng_active(x, i))
			continue;
		inc = incident_get(a, x->p, x->len);
		if (!inc)
			inc = incident_new(a, x->p, x->len, now_ms);
		if (!inc) {
			log_warnx("alerts: out of memory, %" PRIu32 " stale keys under %.*s not alerted",
				  x->count, (int)x->len, x->p);
			continue;
		}
		if (!inc->published)
			incident_since(inc, x->since);
		inc->count += x->count;
		inc->added += x->count;
		for (unsigned k = 0; k < x->nex && inc->nex < EXAMPLES_KEPT; k++)
			inc->ex[inc->nex++] = x->ex[k];
		work_add(a, inc);
	}
	free(g.v);
	hmap_free(&g.map);
	return;
fallback:
	/* Out of memory for the roll-up: one incident per key's group. */
	free(g.v);
	hmap_free(&g.map);
	for (size_t i = 0; i < n; i++) {
		size_t len = topic_group_prefix(keys[i]->data, keys[i]->topic_len);
		struct incident *inc = incident_get(a, keys[i]->data, len);
		if (!inc && !(inc = incident_new(a, keys[i]->data, len, now_ms)))
			continue;
		incident_join(a, inc, keys[i]);
	}
}

/* ------------------------------------------------------------ pending */

static bool pend_is(uint32_t val, const void *k, const void *ctx)
{
	const struct alerts *a = ctx;

	return a->pend[val].r == k;
}

static int pmap_rebuild(struct alerts *a)
{
	int rc;

	hmap_clear(&a->pmap);
	if ((rc = hmap_reserve(&a->pmap, (uint32_t)a->npend)) < 0)
		return rc;
	for (size_t i = 0; i < a->npend; i++)
		hmap_put(&a->pmap, hash_key32(hash_ptr(a->pend[i].r)), (uint32_t)i); /* reserved */
	return 0;
}

static struct pend *pend_find(struct alerts *a, const struct rec *r)
{
	uint32_t *v = hmap_find(&a->pmap, hash_key32(hash_ptr(r)), pend_is, r, a);

	return v ? &a->pend[*v] : NULL;
}

void alerts_key_changed(struct alerts *a, struct rec *r, int64_t now_ms)
{
	alerts_key_changed_in(a, r, ALERTS_NO_GROUP, now_ms);
}

void alerts_key_changed_in(struct alerts *a, struct rec *r, uint32_t glen, int64_t now_ms)
{
	struct pend *p;

	if (glen != ALERTS_NO_GROUP && (glen > r->topic_len || (glen < r->topic_len && r->data[glen] != '/')))
		glen = ALERTS_NO_GROUP; /* not a prefix of its topic: grouped as usual */
	if (r->alert_state & AS_PENDING) {
		if ((p = pend_find(a, r))) {
			p->t = now_ms;
			p->glen = glen;
		}
		return;
	}
	if (a->npend == a->cappend) {
		size_t ncap = a->cappend ? a->cappend * 2 : 256;
		struct pend *np = ncap <= UINT32_MAX ? realloc(a->pend, ncap * sizeof(*np)) : NULL;
		if (!np)
			goto nomem;
		a->pend = np;
		a->cappend = ncap;
	}
	if (hmap_put(&a->pmap, hash_key32(hash_ptr(r)), (uint32_t)a->npend) < 0)
		goto nomem;
	a->pend[a->npend++] = (struct pend){ r, now_ms, glen };
	r->alert_state |= AS_PENDING;
	if (a->window_due == NEVER)
		a->window_due = now_ms + a->min_hold_ms + a->group_wait_ms;
	return;
nomem:
	log_warnx("alerts: out of memory, change of %s not alerted", r->data);
}

/* The group wait is over: turn what still holds into incidents. */
static void flush(struct alerts *a, int64_t now_ms, alerts_eligible_fn eligible, void *ctx)
{
	struct rec **fresh_keys = NULL;
	size_t nnew = 0, keep = 0;
	int64_t next = NEVER;

	fresh_keys = malloc((a->npend ? a->npend : 1) * sizeof(*fresh_keys));
	for (size_t i = 0; i < a->npend; i++) {
		struct pend e = a->pend[i];
		struct rec *r = e.r;
		bool want = (r->flags & REC_STALE) && !(r->flags & (REC_DELETED | REC_NO_STALE));
		bool have = r->alert_state & AS_ALERTED;
		struct incident *inc;

		if (want == have) {
			r->alert_state &= (uint8_t)~AS_PENDING;
			continue;
		}
		if (now_ms - e.t < a->min_hold_ms || (want && !fresh_keys)) {
			a->pend[keep++] = e;
			if (e.t + a->min_hold_ms < next)
				next = e.t + a->min_hold_ms;
			continue;
		}
		r->alert_state &= (uint8_t)~AS_PENDING;
		if (want) {
			if (!eligible(r, now_ms, ctx))
				continue;
			r->alert_state |= AS_ALERTED;
			if (e.glen != ALERTS_NO_GROUP) {
				/* A producer's key: its producer's incident, whatever else is open. */
				inc = incident_get(a, r->data, e.glen);
				if (!inc && (inc = incident_new(a, r->data, e.glen, now_ms)))
					inc->producer = true;
				if (inc)
					incident_join(a, inc, r);
				else
					log_warnx("alerts: out of memory, %s not alerted", r->data);
			} else if ((inc = incident_find(a, r->data, r->topic_len))) {
				incident_join(a, inc, r);
			} else {
				fresh_keys[nnew++] = r;
			}
		} else {
			r->alert_state &= (uint8_t)~AS_ALERTED;
			inc = e.glen != ALERTS_NO_GROUP ? incident_get(a, r->data, e.glen) : NULL;
			if (inc || (inc = incident_find(a, r->data, r->topic_len)))
				incident_leave(a, inc);
		}
	}
	a->npend = keep;
	if (pmap_rebuild(a) < 0) {
		/* Without the table a pending key cannot be found again: give the
		 * kept ones up; they are re-reported by their next change. */
		for (size_t i = 0; i < keep; i++)
			a->pend[i].r->alert_state &= (uint8_t)~AS_PENDING;
		a->npend = 0;
		next = NEVER;
	}
	if (a->npend == 0 && a->cappend > 65536) {
		free(a->pend);
		a->pend = NULL;
		a->cappend = 0;
		hmap_free(&a->pmap);
	}
	open_new(a, fresh_keys, nnew, now_ms);
	free(fresh_keys);
	a->window_due = next == NEVER ? NEVER : next + a->group_wait_ms;
}

/* --------------------------------------------------------------- API */

struct alerts *alerts_new(const struct conf *c, const struct deliver_outlet *out)
{
	struct alerts *a = calloc(1, sizeof(*a));
	struct settings st;

	if (!a)
		return NULL;
	if (!(a->dl = deliver_new(out)) ||
	    deliver_configure(a->dl, c->alert_exec, c->alert_exec_timeout_ms) < 0 ||
	    read_settings(c, &st) < 0) {
		deliver_free(a->dl);
		free(a);
		return NULL;
	}
	take_settings(a, c, &st);
	a->window_due = NEVER;
	a->imap = (struct hmap)HMAP_INIT(UINT32_MAX / 2);
	a->pmap = (struct hmap)HMAP_INIT(UINT32_MAX / 2);
	return a;
}

int alerts_start(struct alerts *a)
{
	return deliver_start(a->dl);
}

void alerts_stop(struct alerts *a)
{
	deliver_stop(a->dl);
}

void alerts_free(struct alerts *a)
{
	if (!a)
		return;
	deliver_free(a->dl);
	for (uint32_t i = 0; i < a->ninc; i++)
		free(a->inc[i]);
	free(a->inc);
	hmap_free(&a->imap);
	free(a->work);
	free(a->pend);
	hmap_free(&a->pmap);
	free(a->topic);
	free(a->exec_line);
	free(a);
}

/* A bare clear of a retained alert (the alerts topic moved away). A reload
 * has no time of its own here: 0 only makes a full queue's log line
 * unconditional, which is fine once per reload. */
static void clear_retained(struct alerts *a, const char *topic)
{
	deliver_push(a->dl, &(struct deliver_alert){ .key = "clear", .topic = topic, .payload = "" }, 0);
}

int alerts_reconfigure(struct alerts *a, const struct conf *c)
{
	struct settings st;
	char *old = NULL;
	bool moved;

	if (read_settings(c, &st) < 0)
		return -ENOMEM;
	if (deliver_configure(a->dl, c->alert_exec, c->alert_exec_timeout_ms) < 0) {
		free(st.topic);
		free(st.exec_line);
		return -ENOMEM;
	}
	moved = (a->topic == NULL) != (st.topic == NULL) ||
		(a->topic && strcmp(a->topic, st.topic) != 0);
	if (moved && a->topic) {
		/* Clear what we hold under the old topic; republish under the new. */
		for (uint32_t i = 0; i < a->ninc; i++) {
			struct incident *p = a->inc[i];
			if (!p->published || !(old = group_topic(a, p->prefix, p->len)))
				continue;
			clear_retained(a, old);
			free(old);
		}
		if (a->mirror == MIRROR_OPEN) {
			size_t n = a->topic_len + 8;
			if ((old = malloc(n))) {
				snprintf(old, n, "%s/mirror", a->topic);
				clear_retained(a, old);
				free(old);
			}
		}
	}
	take_settings(a, c, &st);
	if (moved) {
		for (uint32_t i = 0; i < a->ninc; i++) {
			struct incident *p = a->inc[i];
			/* Adopted ones too: the silent decision below then
			 * publishes them under the new topic after all. */
			if (p->published) {
				p->mqtt_only = true;
				p->last_pub_ms = 0;
				work_add(a, p);
			}
		}
	}
	return 0;
}

void alerts_link(struct alerts *a, bool synced, int64_t now_ms)
{
	if (a->link_known && synced == a->synced)
		return;
	a->link_known = true;
	a->synced = synced;
	if (!synced) {
		a->unsynced_since_ms = now_ms;
		if (a->mirror == MIRROR_OK) {
			a->mirror = MIRROR_WAITING;
			a->mirror_due_ms = now_ms + mirror_wait(a);
		} else if (a->mirror == MIRROR_RESOLVING) {
			a->mirror = MIRROR_OPEN; /* never told it was over */
		}
		return;
	}
	a->synced_since_ms = now_ms;
	if (a->mirror == MIRROR_WAITING)
		a->mirror = MIRROR_OK; /* a blip: nobody is paged */
	else if (a->mirror == MIRROR_OPEN)
		a->mirror = MIRROR_RESOLVING;
	/* Adopted alerts settle from this re-sync on. */
	for (uint32_t i = 0; i < a->ninc; i++)
		if (a->inc[i]->adopted)
			work_add(a, a->inc[i]);
}

void alerts_adopt(struct alerts *a, const struct index *ix, const struct rec *r,
		  int64_t now_ms)
{
	json_t *o, *kind, *state, *group;
	json_error_t err;
	const void *pv;
	size_t n;

	if (!a->topic || !r->payload_len || r->topic_len <= a->topic_len ||
	    rec_payload(ix, r, &pv, &n) < 0 || !n)
		return;
	o = json_loadb(pv, n, 0, &err);
	if (!o)
		return;
	kind = json_object_get(o, "alert");
	state = json_object_get(o, "state");
	group = json_object_get(o, "group");
	if (json_is_string(kind) && strcmp(json_string_value(kind), "mirror") == 0 &&
	    json_is_string(state) && strcmp(json_string_value(state), "disconnected") == 0 &&
	    strcmp(r->data + a->topic_len, "/mirror") == 0) {
		if (a->mirror == MIRROR_OK || a->mirror == MIRROR_WAITING) {
			a->mirror = a->synced ? MIRROR_RESOLVING : MIRROR_OPEN;
			if (!a->unsynced_since_ms)
				a->unsynced_since_ms = now_ms;
			log_info("alerts: adopted the mirror alert of an earlier run");
		}
	} else if (json_is_string(kind) && strcmp(json_string_value(kind), "stale") == 0 &&
		   json_is_string(state) && strcmp(json_string_value(state), "stale") == 0 &&
		   json_is_string(group)) {
		const char *p = json_string_value(group);
		size_t len = json_string_length(group);
		char *expect = group_topic(a, p, len);
		struct incident *inc;

		if (expect && strcmp(expect, r->data) == 0 && !incident_get(a, p, len) &&
		    (inc = incident_new(a, p, len, now_ms))) {
			json_t *count = json_object_get(o, "count");
			const char *since = json_string_value(json_object_get(o, "since"));
			int64_t ns;

			if (json_is_integer(count) && json_integer_value(count) > 0 &&
			    json_integer_value(count) <= UINT32_MAX)
				inc->adopted_count = (uint32_t)json_integer_value(count);
			if (since && ts_parse_rfc3339(since, strlen(since), &ns) == 0 && ns > 0 &&
			    ns / 1000000 < now_ms)
				inc->since_ms = ns / 1000000;
			inc->published = true;
			inc->adopted = true;
			inc->last_pub_ms = now_ms;
			work_add(a, inc);
			log_info("alerts: adopted the open alert for %s of an earlier run", inc->prefix);
		}
		free(expect);
	}
	json_decref(o);
}

/* Is a key waiting for the group wait that would join inc when flushed
 * (its producer's incident, else the deepest open one holding it)? */
static bool pending_under(const struct alerts *a, const struct incident *inc)
{
	for (size_t i = 0; i < a->npend; i++) {
		const struct pend *p = &a->pend[i];
		const struct incident *to = p->glen != ALERTS_NO_GROUP
						    ? incident_get(a, p->r->data, p->glen)
						    : incident_find(a, p->r->data, p->r->topic_len);

		if (to == inc)
			return true;
	}
	return false;
}

int64_t alerts_tick(struct alerts *a, int64_t now_ms, int64_t settle_ms,
		    alerts_eligible_fn eligible, void *ctx)
{
	int64_t next = NEVER;
	size_t keep = 0;

	if (a->mirror == MIRROR_WAITING && now_ms >= a->mirror_due_ms) {
		mirror_publish(a, true, now_ms);
		a->mirror = MIRROR_OPEN;
	} else if (a->mirror == MIRROR_RESOLVING) {
		mirror_publish(a, false, now_ms);
		a->mirror = MIRROR_OK;
	}
	if (a->mirror == MIRROR_WAITING && a->mirror_due_ms - now_ms < next)
		next = a->mirror_due_ms - now_ms;

	/* No key alert leaves while we are not synced: what changed during
	 * our absence is judged after the re-sync. */
	if (a->synced && a->npend && now_ms >= a->window_due)
		flush(a, now_ms, eligible, ctx);
	if (a->synced && a->npend && a->window_due - now_ms < next)
		next = a->window_due - now_ms;

	for (size_t i = 0; i < a->nwork; i++) {
		struct incident *inc = a->work[i];
		int64_t due;

		if (inc->adopted) {
			/* Its keys still stale rejoin it once their windows are
			 * over (settle_ms at most) and the group wait after
			 * that; keys of it still waiting hold the decision. */
			due = a->synced ? a->synced_since_ms + settle_ms + a->min_hold_ms +
						  a->group_wait_ms
					: NEVER;
			if (a->synced && now_ms >= due && pending_under(a, inc))
				due = a->window_due > now_ms ? a->window_due : now_ms + 1;
			if (a->synced && now_ms >= due) {
				inc->adopted = false;
				if (inc->count && inc->count == inc->adopted_count && !inc->mqtt_only) {
					/* What the earlier run said still holds. */
					inc->added = inc->recovered = 0;
					inc->listed = false;
					continue;
				}
			}
		} else {
			due = inc->published ? inc->last_pub_ms + group_interval(a) : now_ms;
		}
		if (!a->synced || now_ms < due) {
			a->work[keep++] = inc;
			if (a->synced && due - now_ms < next)
				next = due - now_ms;
			continue;
		}
		inc->listed = false;
		incident_publish(a, inc, now_ms); /* may free inc */
	}
	a->nwork = keep;
	return next < 1 ? 1 : next;
}

size_t alerts_open_incidents(const struct alerts *a)
{
	return a->ninc;
}

size_t alerts_pending(const struct alerts *a)
{
	return a->npend;
}

struct deliver *alerts_delivery(struct alerts *a)
{
	return a->dl;
}
