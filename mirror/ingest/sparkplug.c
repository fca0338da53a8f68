/* SPDX-License-Identifier: MIT */
/* sparkplug.c: Sparkplug B host mode: protobuf payloads to keys, edge node sessions, rebirth requests. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/utf8.h"
#include "mirror/ingest/jscan.h"
#include "mirror/ingest/sparkplug.h"
#include "mirror/state/rejects.h"
#include "sparkplug_b.pb-c.h"

#define SP_PREFIX "spBv1.0/"
#define SP_PREFIX_LEN (sizeof(SP_PREFIX) - 1)
#define SP_WIRE_DEPTH 20      /* nested protobuf messages, Payload = 0 */
#define SP_RENDER_DEPTH 8     /* templates within templates */
#define SP_CHUNK (64 * 1024)  /* arena chunk */
#define SP_REBIRTH_METRIC "Node Control/Rebirth"
#define SP_REBIRTH_PER_SEC 100  /* rebirth requests, all nodes together */

typedef Spb__Payload Payload;
typedef Spb__Payload__Metric Metric;
typedef Spb__Payload__DataSet DataSet;
typedef Spb__Payload__Template Template;

static const char *const type_names[] = {
	"Unknown", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64",
	"Float", "Double", "Boolean", "String", "DateTime", "Text", "UUID", "DataSet", "Bytes",
	"File", "Template", "PropertySet", "PropertySetList", "Int8Array", "Int16Array",
	"Int32Array", "Int64Array", "UInt8Array", "UInt16Array", "UInt32Array", "UInt64Array",
	"FloatArray", "DoubleArray", "BooleanArray", "StringArray", "DateTimeArray",
};
#define SP_TYPE_MAX (sizeof(type_names) / sizeof(type_names[0]))

const char *sparkplug_type_name(uint32_t t)
{
	return t < SP_TYPE_MAX ? type_names[t] : "Unknown";
}

/* ---- an arena for protobuf-c: bounded, freed in one go per message ------ */

struct chunk {
	struct chunk *next;
	size_t cap, used;
	max_align_t data[];
};

struct arena {
	struct chunk *head;   /* kept across messages */
	struct chunk *extra;  /* freed at reset */
	size_t total, max;
	bool over;
};

static struct chunk *chunk_new(size_t cap)
{
	struct chunk *c = malloc(sizeof(*c) + cap);

	if (c) {
		c->next = NULL;
		c->cap = cap;
		c->used = 0;
	}
	return c;
}

static void *arena_alloc(void *ad, size_t n)
{
	struct arena *a = ad;
	struct chunk *c = a->extra ? a->extra : a->head;
	size_t need = (n + 15) & ~(size_t)15;
	void *p;

	if (need < n)
		return NULL;
	if (!c || c->cap - c->used < need) {
		size_t cap = need > SP_CHUNK ? need : SP_CHUNK;

		if (cap > a->max - a->total) {
			a->over = true;
			return NULL;
		}
		if (!(c = chunk_new(cap)))
			return NULL;
		a->total += cap;
		if (!a->head) {
			a->head = c;
		} else {
			c->next = a->extra;
			a->extra = c;
		}
	}
	p = (char *)c->data + c->used;
	c->used += need;
	return p;
}

static void arena_free_one(void *ad, void *p)
{
	(void)ad;
	(void)p;   /* everything goes at arena_reset */
}

static void arena_reset(struct arena *a)
{
	while (a->extra) {
		struct chunk *c = a->extra;

		a->extra = c->next;
		a->total -= c->cap;
		free(c);
	}
	if (a->head)
		a->head->used = 0;
	a->over = false;
}

static void arena_free(struct arena *a)
{
	arena_reset(a);
	free(a->head);
	a->head = NULL;
	a->total = 0;
}

/* ---- the wire, checked before protobuf-c sees it ------------------------ */

/*
** protobuf-c recurses once per nested message without a limit, so a
** payload of nested templates could exhaust the stack. This walk knows
** which fields hold messages, checks the wire format (no groups, lengths
** within bounds) and the depth, and counts the top-level metrics.
*/
enum wkind { W_NONE, W_PAYLOAD, W_METRIC, W_PSET, W_PVALUE, W_PSETLIST, W_DATASET, W_ROW,
	     W_TEMPLATE, W_LEAF };

static enum wkind wire_child(enum wkind k, uint64_t field)
{
	switch (k) {
	case W_PAYLOAD: return field == 2 ? W_METRIC : W_NONE;
	case W_METRIC:
		switch (field) {
		case 8: return W_LEAF;     /* metadata */
		case 9: return W_PSET;
		case 17: return W_DATASET;
		case 18: return W_TEMPLATE;
		default: return W_NONE;
		}
	case W_PSET: return field == 2 ? W_PVALUE : W_NONE;
	case W_PVALUE: return field == 9 ? W_PSET : field == 10 ? W_PSETLIST : W_NONE;
	case W_PSETLIST: return field == 1 ? W_PSET : W_NONE;
	case W_DATASET: return field == 4 ? W_ROW : W_NONE;
	case W_ROW: return field == 1 ? W_LEAF : W_NONE;
	case W_TEMPLATE: return field == 2 ? W_METRIC : field == 3 ? W_LEAF : W_NONE;
	default: return W_NONE;
	}
}

static int wire_varint(const uint8_t **p, const uint8_t *end, uint64_t *ret)
{
	uint64_t v = 0;

	for (unsigned shift = 0; shift < 64 && *p < end; shift += 7) {
		uint8_t b = *(*p)++;

		v |= (uint64_t)(b & 0x7f) << shift;
		if (!(b & 0x80)) {
			*ret = v;
			return 0;
		}
	}
	return -EINVAL;
}

static int wire_check(const uint8_t *p, const uint8_t *end, enum wkind k, int depth,
		      size_t *metrics)
{
	while (p < end) {
		uint64_t key, len;
		enum wkind child;

		if (wire_varint(&p, end, &key) < 0 || (key >> 3) == 0)
			return -EINVAL;
		switch (key & 7) {
		case 0:
			if (wire_varint(&p, end, &len) < 0)
				return -EINVAL;
			break;
		case 1:
			if (end - p < 8)
				return -EINVAL;
			p += 8;
			break;
		case 5:
			if (end - p < 4)
				return -EINVAL;
			p += 4;
			break;
		case 2:
			if (wire_varint(&p, end, &len) < 0 || len > (uint64_t)(end - p))
				return -EINVAL;
			child = wire_child(k, key >> 3);
			if (k == W_PAYLOAD && child == W_METRIC)
				(*metrics)++;
			if (child != W_NONE && child != W_LEAF) {
				if (depth + 1 > SP_WIRE_DEPTH)
					return -ELOOP;
				if (wire_check(p, p + len, child, depth + 1, metrics) < 0)
					return -EINVAL;
			}
			p += len;
			break;
		default:
			return -EINVAL;   /* groups, or no wire type at all */
		}
	}
	return 0;
}

/* ---- small open-addressing indexes over arrays -------------------------- */

/* slot[i] = array index + 1, 0 empty; cap a power of two, at most half full. */
struct sp_index {
	uint32_t *slot;
	size_t cap;
};

static uint64_t hash_bytes(uint64_t h, const void *p, size_t n)
{
	const unsigned char *s = p;

	for (size_t i = 0; i < n; i++)
		h = (h ^ s[i]) * UINT64_C(0x100000001b3);
	return h;
}

#define HASH_SEED UINT64_C(0xcbf29ce484222325)

static uint64_t hash_u64(uint64_t v)
{
	v ^= v >> 33;
	v *= UINT64_C(0xff51afd7ed558ccd);
	v ^= v >> 33;
	return v;
}

/* A fresh, empty index for n entries; on ENOMEM the old one stays. */
static int ix_alloc(struct sp_index *ix, size_t n)
{
	size_t cap = 8;
	uint32_t *slot;

	while (cap < 2 * n + 2)
		cap *= 2;
	if (!(slot = calloc(cap, sizeof(*slot))))
		return -ENOMEM;
	free(ix->slot);
	ix->slot = slot;
	ix->cap = cap;
	return 0;
}

static void ix_put(struct sp_index *ix, uint64_t h, uint32_t i)
{
	size_t j = h & (ix->cap - 1);

	while (ix->slot[j])
		j = (j + 1) & (ix->cap - 1);
	ix->slot[j] = i + 1;
}

/* Iterate the candidates of hash h: `for (IX_EACH(ix, h, j, i))`. */
#define IX_EACH(ix, h, j, i) \
	size_t j = (ix)->cap ? (h) & ((ix)->cap - 1) : 0, i; \
	(ix)->cap && (i = (ix)->slot[j]) != 0; \
	j = (j + 1) & ((ix)->cap - 1)

/* ---- sessions ------------------------------------------------------------ */

struct sp_metric {
	char *name;
	size_t name_len;
	uint64_t alias;
	uint32_t type;
	bool has_alias;
};

/* One birth's metrics: a node's own or a device's. */
struct sp_scope {
	struct sp_metric *m;
	size_t n;
	struct sp_index by_name, by_alias;
};

struct sp_device {
	char *id;
	uint64_t h;
	bool alive;
	struct sp_scope s;
};

struct sp_node {
	char *group, *edge;
	uint64_t h;
	bool alive;
	bool has_bdseq;
	uint64_t bdseq;
	int next_seq;              /* -1: no expectation */
	uint8_t missing[32];       /* seqs skipped over, 256 bits */
	unsigned n_missing;
	bool gap, gap_unfillable;
	int64_t gap_since_ns;
	bool rebirth_ever;
	int64_t rebirth_ns;
	struct sp_scope s;
	struct sp_device **dev;
	size_t n_dev, cap_dev;
	struct sp_index dev_ix;
	size_t n_metrics;          /* own and devices' */
};

struct sparkplug {
	struct decoder base;
	struct sparkplug_conf conf;
	struct sparkplug_hooks hooks;
	struct sparkplug_stats st;
	struct sp_node **nodes;
	size_t n_nodes, cap_nodes;
	struct sp_index node_ix;
	size_t n_held;             /* metrics and devices of every node: max_metrics */
	int64_t rebirth_window_ns; /* the global rebirth limit's current second */
	unsigned rebirth_in_window;
	struct arena arena;
	ProtobufCAllocator alloc;
	struct buf key, json;
	char *topic;               /* the message topic, split at '/' */
	size_t topic_cap;
};

static void scope_clear(struct sp_scope *s)
{
	for (size_t i = 0; i < s->n; i++)
		free(s->m[i].name);
	free(s->m);
	free(s->by_name.slot);
	free(s->by_alias.slot);
	memset(s, 0, sizeof(*s));
}

static uint64_t node_hash(const char *group, const char *edge)
{
	return hash_bytes(hash_bytes(HASH_SEED, group, strlen(group) + 1), edge, strlen(edge));
}

static struct sp_node *node_find(struct sparkplug *sp, const char *group, const char *edge)
{
	uint64_t h = node_hash(group, edge);

	for (IX_EACH(&sp->node_ix, h, j, i)) {
		struct sp_node *n = sp->nodes[i - 1];

		if (n->h == h && !strcmp(n->group, group) && !strcmp(n->edge, edge))
			return n;
	}
	return NULL;
}

static void node_free(struct sp_node *n);
static void scope_drop(struct sparkplug *sp, struct sp_node *n, struct sp_scope *s);

/*
** At max_nodes, make room by forgetting a node without a live session (one
** that died, or only ever sent data): the first found. Returns whether one
** went. O(nodes), only while the table is full.
*/
static bool node_evict(struct sparkplug *sp)
{
	for (size_t i = 0; i < sp->n_nodes; i++) {
		struct sp_node *n = sp->nodes[i];

		if (n->alive)
			continue;
		sp->n_held -= n->n_metrics + n->n_dev;
		node_free(n);
		sp->nodes[i] = sp->nodes[--sp->n_nodes];
		memset(sp->node_ix.slot, 0, sp->node_ix.cap * sizeof(*sp->node_ix.slot));
		for (size_t k = 0; k < sp->n_nodes; k++)
			ix_put(&sp->node_ix, sp->nodes[k]->h, (uint32_t)k);
		sp->st.evicted++;
		return true;
	}
	return false;
}

/* The same for a node's devices at max_devices. */
static bool dev_evict(struct sparkplug *sp, struct sp_node *n)
{
	for (size_t i = 0; i < n->n_dev; i++) {
		struct sp_device *d = n->dev[i];

		if (d->alive)
			continue;
		scope_drop(sp, n, &d->s);
		sp->n_held--;
		free(d->id);
		free(d);
		n->dev[i] = n->dev[--n->n_dev];
		memset(n->dev_ix.slot, 0, n->dev_ix.cap * sizeof(*n->dev_ix.slot));
		for (size_t k = 0; k < n->n_dev; k++)
			ix_put(&n->dev_ix, n->dev[k]->h, (uint32_t)k);
		sp->st.evicted++;
		return true;
	}
	return false;
}

/* Find or make the session of (group, edge); NULL at max_nodes or ENOMEM. */
static struct sp_node *node_get(struct sparkplug *sp, const char *group, const char *edge)
{
	struct sp_node *n = node_find(sp, group, edge);

	if (n)
		return n;
	if (sp->n_nodes >= sp->conf.max_nodes && !node_evict(sp)) {
		sp->st.refused_nodes++;
		return NULL;
	}
	if (sp->n_nodes == sp->cap_nodes) {
		size_t cap = sp->cap_nodes ? sp->cap_nodes * 2 : 16;
		struct sp_node **v = realloc(sp->nodes, cap * sizeof(*v));

		if (!v || ix_alloc(&sp->node_ix, cap) < 0) {
			if (v)
				sp->nodes = v;
			return NULL;
		}
		sp->nodes = v;
		sp->cap_nodes = cap;
		for (size_t i = 0; i < sp->n_nodes; i++)
			ix_put(&sp->node_ix, sp->nodes[i]->h, (uint32_t)i);
	}
	if (!(n = calloc(1, sizeof(*n))))
		return NULL;
	n->group = strdup(group);
	n->edge = strdup(edge);
	if (!n->group || !n->edge) {
		free(n->group);
		free(n->edge);
		free(n);
		return NULL;
	}
	n->h = node_hash(group, edge);
	n->next_seq = -1;
	sp->nodes[sp->n_nodes] = n;
	ix_put(&sp->node_ix, n->h, (uint32_t)sp->n_nodes);
	sp->n_nodes++;
	return n;
}

static struct sp_device *dev_find(struct sp_node *n, const char *id)
{
	uint64_t h = hash_bytes(HASH_SEED, id, strlen(id));

	for (IX_EACH(&n->dev_ix, h, j, i)) {
		struct sp_device *d = n->dev[i - 1];

		if (d->h == h && !strcmp(d->id, id))
			return d;
	}
	return NULL;
}

static struct sp_device *dev_get(struct sparkplug *sp, struct sp_node *n, const char *id)
{
	struct sp_device *d = dev_find(n, id);

	if (d)
		return d;
	if ((n->n_dev >= sp->conf.max_devices && !dev_evict(sp, n)) ||
	    sp->n_held >= sp->conf.max_metrics) {
		sp->st.refused_devices++;
		return NULL;
	}
	if (n->n_dev == n->cap_dev) {
		size_t cap = n->cap_dev ? n->cap_dev * 2 : 4;
		struct sp_device **v = realloc(n->dev, cap * sizeof(*v));

		if (!v || ix_alloc(&n->dev_ix, cap) < 0) {
			if (v)
				n->dev = v;
			return NULL;
		}
		n->dev = v;
		n->cap_dev = cap;
		for (size_t i = 0; i < n->n_dev; i++)
			ix_put(&n->dev_ix, n->dev[i]->h, (uint32_t)i);
	}
	if (!(d = calloc(1, sizeof(*d))) || !(d->id = strdup(id))) {
		free(d);
		return NULL;
	}
	d->h = hash_bytes(HASH_SEED, id, strlen(id));
	n->dev[n->n_dev] = d;
	ix_put(&n->dev_ix, d->h, (uint32_t)n->n_dev);
	n->n_dev++;
	sp->n_held++;
	return d;
}

/* Forget s's metrics, and count them out of the node's and the global total. */
static void scope_drop(struct sparkplug *sp, struct sp_node *n, struct sp_scope *s)
{
	n->n_metrics -= s->n;
	sp->n_held -= s->n;
	scope_clear(s);
}

static void node_devices_end(struct sparkplug *sp, struct sp_node *n, bool clear)
{
	for (size_t i = 0; i < n->n_dev; i++) {
		n->dev[i]->alive = false;
		if (clear)
			scope_drop(sp, n, &n->dev[i]->s);
	}
}

static void node_free(struct sp_node *n)
{
	for (size_t i = 0; i < n->n_dev; i++) {
		scope_clear(&n->dev[i]->s);
		free(n->dev[i]->id);
		free(n->dev[i]);
	}
	free(n->dev);
	free(n->dev_ix.slot);
	scope_clear(&n->s);
	free(n->group);
	free(n->edge);
	free(n);
}

static const struct sp_metric *scope_by_name(const struct sp_scope *s, const char *name)
{
	size_t len = strlen(name);
	uint64_t h = hash_bytes(HASH_SEED, name, len);

	for (IX_EACH(&s->by_name, h, j, i)) {
		const struct sp_metric *m = &s->m[i - 1];

		if (m->name_len == len && !memcmp(m->name, name, len))
			return m;
	}
	return NULL;
}

static const struct sp_metric *scope_by_alias(const struct sp_scope *s, uint64_t alias)
{
	for (IX_EACH(&s->by_alias, hash_u64(alias), j, i)) {
		const struct sp_metric *m = &s->m[i - 1];

		if (m->alias == alias)
			return m;
	}
	return NULL;
}

/* ---- rebirth requests and seq ------------------------------------------- */

static void rebirth_want(struct sparkplug *sp, struct sp_node *n, int64_t now_ns)
{
	Payload pl = SPB__PAYLOAD__INIT;
	Metric m = SPB__PAYLOAD__METRIC__INIT, *mv[1] = { &m };
	uint8_t wire[128];
	char topic[1024];
	uint64_t now_ms = now_ns > 0 ? (uint64_t)(now_ns / 1000000) : 0;
	int len;

	if (!sp->conf.rebirth ||
	    (n->rebirth_ever && now_ns - n->rebirth_ns < sp->conf.rebirth_interval_ms * 1000000)) {
		sp->st.rebirth_suppressed++;
		return;
	}
	if (now_ns - sp->rebirth_window_ns >= 1000000000 || now_ns < sp->rebirth_window_ns) {
		sp->rebirth_window_ns = now_ns;
		sp->rebirth_in_window = 0;
	}
	if (sp->rebirth_in_window >= SP_REBIRTH_PER_SEC) {
		sp->st.rebirth_suppressed++;
		return;
	}
	sp->rebirth_in_window++;
	n->rebirth_ever = true;
	n->rebirth_ns = now_ns;
	len = snprintf(topic, sizeof(topic), SP_PREFIX "%s/NCMD/%s", n->group, n->edge);
	if (len < 0 || (size_t)len >= sizeof(topic) || !sp->hooks.publish) {
		sp->st.rebirth_failed++;
		return;
	}
	pl.has_timestamp = true;
	pl.timestamp = now_ms;
	pl.n_metrics = 1;
	pl.metrics = mv;
	m.name = (char *)SP_REBIRTH_METRIC;
	m.has_timestamp = true;
	m.timestamp = now_ms;
	m.has_datatype = true;
	m.datatype = SPB__DATA_TYPE__BOOLEAN;
	m.value_case = SPB__PAYLOAD__METRIC__VALUE_BOOLEAN_VALUE;
	m.boolean_value = 1;
	if (spb__payload__get_packed_size(&pl) > sizeof(wire)) {
		sp->st.rebirth_failed++;
		return;
	}
	if (sp->hooks.publish(sp->hooks.ctx, topic, wire, spb__payload__pack(&pl, wire), 0, false) < 0)
		sp->st.rebirth_failed++;
	else
		sp->st.rebirth_sent++;
}

static void gap_clear(struct sp_node *n)
{
	memset(n->missing, 0, sizeof(n->missing));
	n->n_missing = 0;
	n->gap = n->gap_unfillable = false;
}

static void gap_check(struct sparkplug *sp, struct sp_node *n, int64_t now_ns)
{
	if (!n->gap)
		return;
	if (!n->n_missing && !n->gap_unfillable) {
		n->gap = false;   /* filled in time */
		return;
	}
	if (now_ns - n->gap_since_ns < sp->conf.reorder_window_ms * 1000000)
		return;
	sp->st.seq_gaps++;
	gap_clear(n);
	rebirth_want(sp, n, now_ns);
}

static void gap_open(struct sp_node *n, int64_t now_ns)
{
	if (!n->gap) {
		n->gap = true;
		n->gap_since_ns = now_ns;
	}
}

/* A message of the live session with seq (0..255) arrived. */
static void seq_seen(struct sparkplug *sp, struct sp_node *n, const Payload *pl, int64_t now_ns)
{
	unsigned s, e, d;

	if (!pl->has_seq)
		return;   /* MUST be there; nothing to check against when it is not */
	if (pl->seq > 255 || n->next_seq < 0) {
		if (pl->seq > 255) {
			n->gap_unfillable = true;
			gap_open(n, now_ns);
		} else {
			n->next_seq = (int)((pl->seq + 1) & 255);
		}
		gap_check(sp, n, now_ns);
		return;
	}
	s = (unsigned)pl->seq;
	e = (unsigned)n->next_seq;
	d = (s - e) & 255;
	if (d == 0) {
		n->next_seq = (int)((s + 1) & 255);
	} else if (d < 128) {   /* ahead: e .. s-1 are missing */
		for (unsigned k = e; k != s; k = (k + 1) & 255) {
			if (!(n->missing[k >> 3] & (1u << (k & 7)))) {
				n->missing[k >> 3] |= (uint8_t)(1u << (k & 7));
				n->n_missing++;
			}
		}
		gap_open(n, now_ns);
		n->next_seq = (int)((s + 1) & 255);
	} else if (n->missing[s >> 3] & (1u << (s & 7))) {   /* a late one */
		n->missing[s >> 3] &= (uint8_t)~(1u << (s & 7));
		n->n_missing--;
	} else {   /* a repeat, or a jump too far to tell */
		n->gap_unfillable = true;
		gap_open(n, now_ns);
	}
	gap_check(sp, n, now_ns);
}

/* ---- values as JSON ------------------------------------------------------ */

/* A metric, data set cell, parameter or property value, seen alike. */
enum vkind { V_NONE, V_U32, V_U64, V_FLOAT, V_DOUBLE, V_BOOL, V_STRING, V_BYTES, V_DATASET,
	     V_TEMPLATE };

struct sp_val {
	enum vkind kind;
	uint64_t u;
	double d;
	bool b;
	const char *s;
	ProtobufCBinaryData bytes;
	const DataSet *ds;
	const Template *tp;
};

static void val_of_metric(const Metric *m, struct sp_val *v)
{
	memset(v, 0, sizeof(*v));
	switch (m->value_case) {
	case SPB__PAYLOAD__METRIC__VALUE_INT_VALUE: v->kind = V_U32; v->u = m->int_value; break;
	case SPB__PAYLOAD__METRIC__VALUE_LONG_VALUE: v->kind = V_U64; v->u = m->long_value; break;
	case SPB__PAYLOAD__METRIC__VALUE_FLOAT_VALUE: v->kind = V_FLOAT; v->d = m->float_value; break;
	case SPB__PAYLOAD__METRIC__VALUE_DOUBLE_VALUE: v->kind = V_DOUBLE; v->d = m->double_value; break;
	case SPB__PAYLOAD__METRIC__VALUE_BOOLEAN_VALUE: v->kind = V_BOOL; v->b = m->boolean_value; break;
	case SPB__PAYLOAD__METRIC__VALUE_STRING_VALUE: v->kind = V_STRING; v->s = m->string_value; break;
	case SPB__PAYLOAD__METRIC__VALUE_BYTES_VALUE: v->kind = V_BYTES; v->bytes = m->bytes_value; break;
	case SPB__PAYLOAD__METRIC__VALUE_DATASET_VALUE: v->kind = V_DATASET; v->ds = m->dataset_value; break;
	case SPB__PAYLOAD__METRIC__VALUE_TEMPLATE_VALUE: v->kind = V_TEMPLATE; v->tp = m->template_value; break;
	default: break;
	}
}

static void val_of_cell(const Spb__Payload__DataSet__Value *c, struct sp_val *v)
{
	memset(v, 0, sizeof(*v));
	if (!c)
		return;
	switch (c->value_case) {
	case SPB__PAYLOAD__DATA_SET__VALUE__VALUE_INT_VALUE: v->kind = V_U32; v->u = c->int_value; break;
	case SPB__PAYLOAD__DATA_SET__VALUE__VALUE_LONG_VALUE: v->kind = V_U64; v->u = c->long_value; break;
	case SPB__PAYLOAD__DATA_SET__VALUE__VALUE_FLOAT_VALUE: v->kind = V_FLOAT; v->d = c->float_value; break;
	case SPB__PAYLOAD__DATA_SET__VALUE__VALUE_DOUBLE_VALUE: v->kind = V_DOUBLE; v->d = c->double_value; break;
	case SPB__PAYLOAD__DATA_SET__VALUE__VALUE_BOOLEAN_VALUE: v->kind = V_BOOL; v->b = c->boolean_value; break;
	case SPB__PAYLOAD__DATA_SET__VALUE__VALUE_STRING_VALUE: v->kind = V_STRING; v->s = c->string_value; break;
	default: break;
	}
}

static void val_of_param(const Spb__Payload__Template__Parameter *p, struct sp_val *v)
{
	memset(v, 0, sizeof(*v));
	switch (p->value_case) {
	case SPB__PAYLOAD__TEMPLATE__PARAMETER__VALUE_INT_VALUE: v->kind = V_U32; v->u = p->int_value; break;
	case SPB__PAYLOAD__TEMPLATE__PARAMETER__VALUE_LONG_VALUE: v->kind = V_U64; v->u = p->long_value; break;
	case SPB__PAYLOAD__TEMPLATE__PARAMETER__VALUE_FLOAT_VALUE: v->kind = V_FLOAT; v->d = p->float_value; break;
	case SPB__PAYLOAD__TEMPLATE__PARAMETER__VALUE_DOUBLE_VALUE: v->kind = V_DOUBLE; v->d = p->double_value; break;
	case SPB__PAYLOAD__TEMPLATE__PARAMETER__VALUE_BOOLEAN_VALUE: v->kind = V_BOOL; v->b = p->boolean_value; break;
	case SPB__PAYLOAD__TEMPLATE__PARAMETER__VALUE_STRING_VALUE: v->kind = V_STRING; v->s = p->string_value; break;
	default: break;
	}
}

static int put_str(struct buf *b, const char *s)
{
	size_t n = strlen(s);

	if (!utf8_valid(s, n))
		return -EILSEQ;
	return buf_json_str(b, s, n);
}

/* The shortest text that reads back as the same float or double. */
static int put_real(struct buf *b, double d, bool single)
{
	char t[40];

	if (isnan(d))
		return buf_puts(b, "\"NaN\"");
	if (isinf(d))
		return buf_puts(b, d > 0 ? "\"Infinity\"" : "\"-Infinity\"");
	for (int p = single ? 6 : 15; p <= (single ? 9 : 17); p++) {
		snprintf(t, sizeof(t), "%.*g", p, d);
		if (single ? strtof(t, NULL) == (float)d : strtod(t, NULL) == d)
			break;
	}
	return buf_puts(b, t);
}

/* Signed N-bit from either the sign-extended or the N-bit two's complement form. */
static int int_of(const struct sp_val *v, unsigned bits, int64_t *ret)
{
	int64_t s, lo, hi;

	if (bits == 64) {
		*ret = (int64_t)v->u;
		return 0;
	}
	lo = -(INT64_C(1) << (bits - 1));
	hi = (INT64_C(1) << (bits - 1)) - 1;
	s = v->kind == V_U32 ? (int64_t)(int32_t)(uint32_t)v->u : (int64_t)v->u;
	if (s >= lo && s <= hi) {
		*ret = s;
		return 0;
	}
	if (v->u < (UINT64_C(1) << bits)) {
		*ret = v->u > (uint64_t)hi ? (int64_t)v->u - (INT64_C(1) << bits) : (int64_t)v->u;
		return 0;
	}
	return -ERANGE;
}

static int put_array(struct buf *b, uint32_t type, const uint8_t *p, size_t n);

static int put_template(struct sparkplug *sp, struct buf *b, const Template *t, int depth);

static int put_value(struct sparkplug *sp, struct buf *b, uint32_t type, const struct sp_val *v,
		     int depth)
{
	static const unsigned bits[] = { [1] = 8, [2] = 16, [3] = 32, [4] = 64,
					 [5] = 8, [6] = 16, [7] = 32, [8] = 64 };
	int64_t s;

	switch (type) {
	case SPB__DATA_TYPE__INT8: case SPB__DATA_TYPE__INT16:
	case SPB__DATA_TYPE__INT32: case SPB__DATA_TYPE__INT64:
		if (v->kind != V_U32 && v->kind != V_U64)
			return -EINVAL;
		if (int_of(v, bits[type], &s) < 0)
			return -ERANGE;
		return buf_printf(b, "%" PRId64, s);
	case SPB__DATA_TYPE__UINT8: case SPB__DATA_TYPE__UINT16:
	case SPB__DATA_TYPE__UINT32: case SPB__DATA_TYPE__UINT64:
		if (v->kind != V_U32 && v->kind != V_U64)
			return -EINVAL;
		if (bits[type] < 64 && v->u >= (UINT64_C(1) << bits[type]))
			return -ERANGE;
		return buf_printf(b, "%" PRIu64, v->u);
	case SPB__DATA_TYPE__DATETIME:
		if (v->kind != V_U32 && v->kind != V_U64)
			return -EINVAL;
		return buf_printf(b, "%" PRIu64, v->u);
	case SPB__DATA_TYPE__FLOAT: case SPB__DATA_TYPE__DOUBLE:
		if (v->kind != V_FLOAT && v->kind != V_DOUBLE)
			return -EINVAL;
		return put_real(b, v->d, v->kind == V_FLOAT);
	case SPB__DATA_TYPE__BOOLEAN:
		if (v->kind != V_BOOL)
			return -EINVAL;
		return buf_puts(b, v->b ? "true" : "false");
	case SPB__DATA_TYPE__STRING: case SPB__DATA_TYPE__TEXT: case SPB__DATA_TYPE__UUID:
		if (v->kind != V_STRING)
			return -EINVAL;
		return put_str(b, v->s);
	case SPB__DATA_TYPE__BYTES: case SPB__DATA_TYPE__FILE:
		if (v->kind != V_BYTES)
			return -EINVAL;
		if (buf_putc(b, '"') < 0 || buf_base64(b, v->bytes.data, v->bytes.len) < 0)
			return -E2BIG;
		return buf_putc(b, '"');
	case SPB__DATA_TYPE__DATASET: {
		const DataSet *ds = v->ds;
		int r;

		if (v->kind != V_DATASET)
			return -EINVAL;
		if (ds->n_columns != ds->n_types)
			return -EINVAL;
		if ((r = buf_puts(b, "{\"columns\":[")) < 0)
			return r;
		for (size_t i = 0; i < ds->n_columns; i++)
			if ((i && (r = buf_putc(b, ',')) < 0) || (r = put_str(b, ds->columns[i])) < 0)
				return r;
		if ((r = buf_puts(b, "],\"types\":[")) < 0)
			return r;
		for (size_t i = 0; i < ds->n_types; i++)
			if ((i && (r = buf_putc(b, ',')) < 0) ||
			    (r = buf_printf(b, "\"%s\"", sparkplug_type_name(ds->types[i]))) < 0)
				return r;
		if ((r = buf_puts(b, "],\"rows\":[")) < 0)
			return r;
		for (size_t i = 0; i < ds->n_rows; i++) {
			const Spb__Payload__DataSet__Row *row = ds->rows[i];

			if (row->n_elements != ds->n_types)
				return -EINVAL;
			if ((r = buf_puts(b, i ? ",[" : "[")) < 0)
				return r;
			for (size_t c = 0; c < row->n_elements; c++) {
				struct sp_val cv;

				val_of_cell(row->elements[c], &cv);
				if (c && (r = buf_putc(b, ',')) < 0)
					return r;
				if (cv.kind == V_NONE)
					r = buf_puts(b, "null");
				else if (ds->types[c] > SPB__DATA_TYPE__TEXT)
					r = -EINVAL;   /* basic types only */
				else
					r = put_value(sp, b, ds->types[c], &cv, depth);
				if (r < 0)
					return r;
			}
			if ((r = buf_putc(b, ']')) < 0)
				return r;
		}
		return buf_puts(b, "]}");
	}
	case SPB__DATA_TYPE__TEMPLATE:
		if (v->kind != V_TEMPLATE)
			return -EINVAL;
		return put_template(sp, b, v->tp, depth + 1);
	default:
		if (type >= SPB__DATA_TYPE__INT8_ARRAY && type <= SPB__DATA_TYPE__DATETIME_ARRAY) {
			if (v->kind != V_BYTES)
				return -EINVAL;
			return put_array(b, type, v->bytes.data, v->bytes.len);
		}
		return -EINVAL;   /* Unknown, PropertySet(List), out of range */
	}
}

static uint64_t le(const uint8_t *p, unsigned n)
{
	uint64_t v = 0;

	for (unsigned i = 0; i < n; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

/* Sparkplug arrays: little-endian packed elements in a bytes value. */
static int put_array(struct buf *b, uint32_t type, const uint8_t *p, size_t n)
{
	static const unsigned width[] = { 1, 2, 4, 8, 1, 2, 4, 8, 4, 8 };
	int r = buf_putc(b, '[');

	if (r < 0)
		return r;
	if (type == SPB__DATA_TYPE__BOOLEAN_ARRAY) {
		uint64_t count;

		if (n < 4)
			return -EINVAL;
		count = le(p, 4);
		if (count > (uint64_t)(n - 4) * 8 || (count + 7) / 8 != n - 4)
			return -EINVAL;
		for (uint64_t i = 0; i < count; i++)
			if ((r = buf_puts(b, i ? "," : "")) < 0 ||
			    (r = buf_puts(b, (p[4 + i / 8] >> (7 - i % 8)) & 1 ? "true" : "false")) < 0)
				return r;
	} else if (type == SPB__DATA_TYPE__STRING_ARRAY) {
		size_t i = 0;

		if (n && p[n - 1] != '\0')
			return -EINVAL;
		for (bool first = true; i < n; first = false) {
			size_t len = strlen((const char *)p + i);

			if (!utf8_valid((const char *)p + i, len))
				return -EILSEQ;
			if ((!first && (r = buf_putc(b, ',')) < 0) ||
			    (r = buf_json_str(b, (const char *)p + i, len)) < 0)
				return r;
			i += len + 1;
		}
	} else {
		unsigned t = type - SPB__DATA_TYPE__INT8_ARRAY, w;

		if (type == SPB__DATA_TYPE__DATETIME_ARRAY)
			t = 3;   /* as Int64 */
		w = width[t];
		if (n % w)
			return -EINVAL;
		for (size_t i = 0; i < n; i += w) {
			uint64_t u = le(p + i, w);

			if (i && (r = buf_putc(b, ',')) < 0)
				return r;
			if (t < 4) {   /* signed */
				int64_t s = w == 8 ? (int64_t)u : (int64_t)(u ^ (UINT64_C(1) << (8 * w - 1))) - (INT64_C(1) << (8 * w - 1));

				r = buf_printf(b, "%" PRId64, s);
			} else if (t < 8) {
				r = buf_printf(b, "%" PRIu64, u);
			} else if (t == 8) {
				uint32_t u32 = (uint32_t)u;
				float f;

				memcpy(&f, &u32, 4);
				r = put_real(b, f, true);
			} else {
				double d;

				memcpy(&d, &u, 8);
				r = put_real(b, d, false);
			}
			if (r < 0)
				return r;
		}
	}
	return buf_putc(b, ']');
}

static int put_template(struct sparkplug *sp, struct buf *b, const Template *t, int depth)
{
	int r;

	if (depth > SP_RENDER_DEPTH)
		return -ELOOP;
	if ((r = buf_putc(b, '{')) < 0)
		return r;
	if (t->template_ref && ((r = buf_puts(b, "\"template_ref\":")) < 0 ||
				(r = put_str(b, t->template_ref)) < 0 || (r = buf_putc(b, ',')) < 0))
		return r;
	if (t->version && ((r = buf_puts(b, "\"version\":")) < 0 ||
			   (r = put_str(b, t->version)) < 0 || (r = buf_putc(b, ',')) < 0))
		return r;
	if ((r = buf_printf(b, "\"is_definition\":%s,\"parameters\":{",
			    t->has_is_definition && t->is_definition ? "true" : "false")) < 0)
		return r;
	for (size_t i = 0; i < t->n_parameters; i++) {
		const Spb__Payload__Template__Parameter *p = t->parameters[i];
		struct sp_val v;

		val_of_param(p, &v);
		if ((i && (r = buf_putc(b, ',')) < 0) || (r = put_str(b, p->name ? p->name : "")) < 0 ||
		    (r = buf_putc(b, ':')) < 0)
			return r;
		if (v.kind == V_NONE)
			r = buf_puts(b, "null");
		else if (!p->has_type || p->type > SPB__DATA_TYPE__TEXT)
			r = -EINVAL;
		else
			r = put_value(sp, b, p->type, &v, depth);
		if (r < 0)
			return r;
	}
	if ((r = buf_puts(b, "},\"metrics\":{")) < 0)
		return r;
	for (size_t i = 0; i < t->n_metrics; i++) {
		const Metric *m = t->metrics[i];
		struct sp_val v;

		val_of_metric(m, &v);
		if ((i && (r = buf_putc(b, ',')) < 0) || (r = put_str(b, m->name ? m->name : "")) < 0 ||
		    (r = buf_printf(b, ":{\"type\":\"%s\",\"value\":", sparkplug_type_name(m->datatype))) < 0)
			return r;
		if ((m->has_is_null && m->is_null) || v.kind == V_NONE)
			r = buf_puts(b, "null");
		else
			r = put_value(sp, b, m->datatype, &v, depth);
		if (r < 0 || (r = buf_putc(b, '}')) < 0)
			return r;
	}
	return buf_puts(b, "}}");
}

/* The key's JSON for metric m of type `type` at ts_ms; 0, -E2BIG or another -errno. */
static int render_metric(struct sparkplug *sp, const Metric *m, uint32_t type, int64_t ts_ms)
{
	struct buf *b = &sp->json;
	bool null = m->has_is_null && m->is_null;
	struct sp_val v;
	int r;

	buf_reset(b);
	val_of_metric(m, &v);
	if (!null && v.kind == V_NONE)
		return -EINVAL;
	if ((r = buf_puts(b, "{\"value\":")) < 0)
		return r;
	r = null ? buf_puts(b, "null") : put_value(sp, b, type, &v, 0);
	if (r < 0)
		return r;
	if ((r = buf_printf(b, ",\"type\":\"%s\",\"ts\":%" PRId64, sparkplug_type_name(type), ts_ms)) < 0)
		return r;
	if (null && (r = buf_puts(b, ",\"is_null\":true")) < 0)
		return r;
	if (m->has_is_historical && m->is_historical && (r = buf_puts(b, ",\"historical\":true")) < 0)
		return r;
	if (type == SPB__DATA_TYPE__FILE && m->metadata && m->metadata->file_name &&
	    ((r = buf_puts(b, ",\"file_name\":")) < 0 || (r = put_str(b, m->metadata->file_name)) < 0))
		return r;
	if (m->properties) {
		const Spb__Payload__PropertySet *ps = m->properties;

		for (size_t i = 0; i < ps->n_keys && i < ps->n_values; i++) {
			const Spb__Payload__PropertyValue *pv = ps->values[i];

			if (strcmp(ps->keys[i], "Quality") || !pv ||
			    pv->value_case != SPB__PAYLOAD__PROPERTY_VALUE__VALUE_INT_VALUE)
				continue;
			if ((r = buf_printf(b, ",\"quality\":%" PRId32, (int32_t)pv->int_value)) < 0)
				return r;
			break;
		}
	}
	return buf_putc(b, '}');
}

/* ---- emitting ------------------------------------------------------------ */

struct sp_msg {
	const struct decode_in *in;
	const struct decode_out *out;
	const Payload *pl;
	size_t emitted;
	size_t prefix_len;   /* of sp->key: "spBv1.0/G/E[/D]/" */
};

static void refuse(struct sp_msg *x, const char *topic, size_t topic_len, enum reject_reason why)
{
	struct msg m = {
		.topic = topic, .topic_len = topic_len,
		.payload = x->in->payload,
		.payload_len = x->in->payload_len < REJECTS_KEEP_BYTES ? x->in->payload_len : REJECTS_KEEP_BYTES,
		.ts_ns = x->in->recv_ns, .recv_ms = x->in->recv_ns / 1000000,
		.retained = x->in->retained,
	};

	x->out->value(x->out->ctx, &m, why, x->in->payload_len);
	x->emitted++;
}

static void refuse_message(struct sparkplug *sp, struct sp_msg *x, enum reject_reason why)
{
	if (why == REJECT_UNDECODABLE)
		sp->st.undecodable++;
	refuse(x, x->in->topic, x->in->topic_len, why);
}

/* Refuse one metric: under its key when the name is known. */
static void refuse_metric(struct sparkplug *sp, struct sp_msg *x, const char *name,
			  enum reject_reason why)
{
	sp->st.metrics_refused++;
	if (name) {
		sp->key.len = x->prefix_len;
		if (buf_append(&sp->key, name, strlen(name)) == 0) {
			refuse(x, sp->key.data, sp->key.len, why);
			return;
		}
	}
	refuse(x, x->in->topic, x->in->topic_len, why);
}

static void emit_metric(struct sparkplug *sp, struct sp_msg *x, const Metric *m,
			const char *name, uint32_t type)
{
	int64_t ts_ms, ts_ns;
	bool from_payload = true;
	uint64_t t;
	int r;

	if (m->has_timestamp)
		t = m->timestamp;
	else if (x->pl->has_timestamp)
		t = x->pl->timestamp;
	else {
		t = (uint64_t)(x->in->recv_ns / 1000000);
		from_payload = false;
	}
	if (t > (uint64_t)(INT64_MAX / 1000000)) {
		refuse_metric(sp, x, name, REJECT_BAD_TS);
		return;
	}
	ts_ms = (int64_t)t;
	ts_ns = from_payload ? ts_ms * 1000000 : x->in->recv_ns;
	if ((r = render_metric(sp, m, type, ts_ms)) < 0) {
		refuse_metric(sp, x, name, r == -E2BIG ? REJECT_TOO_LARGE :
			      r == -ENOMEM ? REJECT_NOMEM : REJECT_UNDECODABLE);
		return;
	}
	sp->key.len = x->prefix_len;
	if (buf_append(&sp->key, name, strlen(name)) < 0) {
		refuse_metric(sp, x, NULL, REJECT_NOMEM);
		return;
	}
	struct msg out = {
		.topic = sp->key.data, .topic_len = sp->key.len,
		.payload = sp->json.data, .payload_len = sp->json.len,
		.ts_ns = ts_ns, .recv_ms = x->in->recv_ns / 1000000,
		.retained = x->in->retained, .ts_from_payload = from_payload, .is_json = true,
	};
	x->out->value(x->out->ctx, &out, REJECT_NONE, sp->json.len);
	x->emitted++;
	sp->st.metrics++;
}

/* ---- births and data ----------------------------------------------------- */

static bool metric_uint(const Metric *m, uint64_t *ret)
{
	if (m->value_case == SPB__PAYLOAD__METRIC__VALUE_LONG_VALUE)
		*ret = m->long_value;
	else if (m->value_case == SPB__PAYLOAD__METRIC__VALUE_INT_VALUE)
		*ret = m->int_value;
	else
		return false;
	return true;
}

static bool payload_bdseq(const Payload *pl, uint64_t *ret)
{
	for (size_t i = 0; i < pl->n_metrics; i++)
		if (pl->metrics[i]->name && !strcmp(pl->metrics[i]->name, "bdSeq"))
			return metric_uint(pl->metrics[i], ret);
	return false;
}

/*
** Build scope s from a birth's metrics, then emit each one's value. room
** is how many metrics the node may still define. Metrics without a name or
** datatype, with a name that is not UTF-8, or past room are refused.
*/
static int birth(struct sparkplug *sp, struct sp_msg *x, struct sp_scope *s, size_t room,
		 size_t *ret_defined)
{
	const Payload *pl = x->pl;
	size_t n = 0;
	int8_t *ok;

	scope_clear(s);
	if (!(ok = arena_alloc(&sp->arena, pl->n_metrics + 1)))
		return -ENOMEM;
	if (pl->n_metrics && !(s->m = calloc(pl->n_metrics, sizeof(*s->m))))
		return -ENOMEM;
	if (ix_alloc(&s->by_name, pl->n_metrics) < 0 || ix_alloc(&s->by_alias, pl->n_metrics) < 0)
		return -ENOMEM;
	for (size_t i = 0; i < pl->n_metrics; i++) {
		const Metric *m = pl->metrics[i];
		struct sp_metric *d;
		size_t len;

		ok[i] = 0;
		if (!m->name || !m->has_datatype || !utf8_valid(m->name, len = strlen(m->name)))
			continue;
		if (n >= room) {
			sp->st.refused_metrics++;
			ok[i] = -1;
			continue;
		}
		ok[i] = 1;
		if (scope_by_name(s, m->name))
			continue;   /* a repeat: the first definition stands, both values apply */
		d = &s->m[n];
		if (!(d->name = strdup(m->name)))
			return -ENOMEM;
		d->name_len = len;
		d->type = m->datatype;
		d->has_alias = m->has_alias;
		d->alias = m->alias;
		ix_put(&s->by_name, hash_bytes(HASH_SEED, d->name, len), (uint32_t)n);
		if (m->has_alias && !scope_by_alias(s, m->alias))
			ix_put(&s->by_alias, hash_u64(m->alias), (uint32_t)n);
		s->n = ++n;
	}
	*ret_defined = n;
	for (size_t i = 0; i < pl->n_metrics; i++) {
		const Metric *m = pl->metrics[i];

		if (ok[i] == 1)
			emit_metric(sp, x, m, m->name, m->datatype);
		else
			refuse_metric(sp, x, ok[i] < 0 ? m->name : NULL,
				      ok[i] < 0 ? REJECT_MAX_KEYS : REJECT_UNDECODABLE);
	}
	return 0;
}

static void data(struct sparkplug *sp, struct sp_msg *x, struct sp_node *n, const struct sp_scope *s)
{
	bool want = false;

	for (size_t i = 0; i < x->pl->n_metrics; i++) {
		const Metric *m = x->pl->metrics[i];
		const struct sp_metric *d = NULL;

		if (m->has_alias)
			d = scope_by_alias(s, m->alias);
		if (!d && m->name)
			d = scope_by_name(s, m->name);   /* no alias, or one the birth did not give */
		if (!d) {
			sp->st.unknown_alias++;
			refuse_metric(sp, x, NULL, REJECT_NO_BIRTH);
			want = true;
			continue;
		}
		emit_metric(sp, x, m, d->name, d->type);
	}
	if (want)
		rebirth_want(sp, n, x->in->recv_ns);
}

/* ---- topics --------------------------------------------------------------- */

enum verb { V_NBIRTH, V_NDATA, V_NDEATH, V_NCMD, V_DBIRTH, V_DDATA, V_DDEATH, V_DCMD, V_STATE,
	    V_BAD };

static const char *const verbs[] = { "NBIRTH", "NDATA", "NDEATH", "NCMD",
				     "DBIRTH", "DDATA", "DDEATH", "DCMD" };

struct sp_topic {
	enum verb verb;
	const char *group, *edge, *device;
};

/* Split in->topic (copied into sp->topic) into its parts. */
static int topic_parse(struct sparkplug *sp, const struct decode_in *in, struct sp_topic *t)
{
	char *part[6];
	size_t np = 0;
	char *p;

	if (in->topic_len + 1 > sp->topic_cap) {
		char *c = realloc(sp->topic, in->topic_len + 1);

		if (!c)
			return -ENOMEM;
		sp->topic = c;
		sp->topic_cap = in->topic_len + 1;
	}
	memcpy(sp->topic, in->topic, in->topic_len);
	sp->topic[in->topic_len] = '\0';
	if (memchr(sp->topic, '\0', in->topic_len) || !utf8_valid(sp->topic, in->topic_len))
		return -EINVAL;
	for (p = sp->topic; np < 6;) {
		char *slash = strchr(p, '/');

		part[np++] = p;
		if (!slash)
			break;
		*slash = '\0';
		p = slash + 1;
	}
	if (np < 3 || np > 5 || strcmp(part[0], "spBv1.0"))
		return -EINVAL;
	for (size_t i = 1; i < np; i++)
		if (!*part[i])
			return -EINVAL;
	if (np == 3) {
		if (strcmp(part[1], "STATE"))
			return -EINVAL;
		t->verb = V_STATE;
		t->group = t->edge = t->device = NULL;
		return 0;
	}
	t->verb = V_BAD;
	for (size_t v = 0; v < sizeof(verbs) / sizeof(verbs[0]); v++)
		if (!strcmp(part[2], verbs[v]))
			t->verb = (enum verb)v;
	if (t->verb == V_BAD || (t->verb >= V_DBIRTH) != (np == 5))
		return -EINVAL;
	t->group = part[1];
	t->edge = part[3];
	t->device = np == 5 ? part[4] : NULL;
	return 0;
}

/* A host's STATE: mirrored as it is, as JSON, ordered by its "timestamp". */
static void state_emit(struct sparkplug *sp, struct sp_msg *x)
{
	static const char *const names[] = { "timestamp" };
	const struct decode_in *in = x->in;
	struct jscan_result r;

	jscan_payload(in->payload, in->payload_len, names, 1, &r);
	if (!r.is_json) {
		refuse_message(sp, x, REJECT_NOT_JSON);
		return;
	}
	if (r.ts_bad) {
		refuse_message(sp, x, REJECT_BAD_TS);
		return;
	}
	struct msg m = {
		.topic = in->topic, .topic_len = in->topic_len,
		.payload = in->payload, .payload_len = in->payload_len,
		.ts_ns = r.ts_found ? r.ts_ns : in->recv_ns, .recv_ms = in->recv_ns / 1000000,
		.retained = in->retained, .ts_from_payload = r.ts_found, .is_json = true,
	};
	x->out->value(x->out->ctx, &m, REJECT_NONE, in->payload_len);
	x->emitted++;
}

static int key_prefix(struct sparkplug *sp, struct sp_msg *x, const struct sp_topic *t)
{
	buf_reset(&sp->key);
	if (buf_puts(&sp->key, SP_PREFIX) < 0 || buf_puts(&sp->key, t->group) < 0 ||
	    buf_putc(&sp->key, '/') < 0 || buf_puts(&sp->key, t->edge) < 0 ||
	    buf_putc(&sp->key, '/') < 0)
		return -ENOMEM;
	if (t->device && (buf_puts(&sp->key, t->device) < 0 || buf_putc(&sp->key, '/') < 0))
		return -ENOMEM;
	x->prefix_len = sp->key.len;
	return 0;
}

/* How many metrics a birth of n may still define: max_node_metrics, max_metrics. */
static size_t room(const struct sparkplug *sp, const struct sp_node *n)
{
	size_t node = sp->conf.max_node_metrics - n->n_metrics;
	size_t all = sp->conf.max_metrics > sp->n_held ? sp->conf.max_metrics - sp->n_held : 0;

	return node < all ? node : all;
}

static void node_birth(struct sparkplug *sp, struct sp_msg *x, const struct sp_topic *t)
{
	struct sp_node *n = node_get(sp, t->group, t->edge);
	size_t defined = 0;
	uint64_t bd;

	if (!n) {
		refuse_message(sp, x, REJECT_MAX_KEYS);
		return;
	}
	node_devices_end(sp, n, true);
	scope_drop(sp, n, &n->s);
	gap_clear(n);
	n->has_bdseq = payload_bdseq(x->pl, &bd);
	n->bdseq = n->has_bdseq ? bd : 0;
	n->next_seq = x->pl->has_seq && x->pl->seq <= 255 ? (int)((x->pl->seq + 1) & 255) : -1;
	if (birth(sp, x, &n->s, room(sp, n), &defined) < 0) {
		n->alive = false;
		scope_clear(&n->s);
		refuse_message(sp, x, REJECT_NOMEM);
		return;
	}
	n->n_metrics += defined;
	sp->n_held += defined;
	n->alive = true;
	sp->st.births++;
}

static void device_birth(struct sparkplug *sp, struct sp_msg *x, struct sp_node *n,
			 const struct sp_topic *t)
{
	struct sp_device *d = dev_get(sp, n, t->device);
	size_t defined = 0;

	if (!d) {
		refuse_message(sp, x, REJECT_MAX_KEYS);
		return;
	}
	scope_drop(sp, n, &d->s);
	if (birth(sp, x, &d->s, room(sp, n), &defined) < 0) {
		d->alive = false;
		scope_clear(&d->s);
		refuse_message(sp, x, REJECT_NOMEM);
		return;
	}
	n->n_metrics += defined;
	sp->n_held += defined;
	d->alive = true;
	sp->st.births++;
}

static void node_death(struct sparkplug *sp, const struct sp_topic *t, const Payload *pl,
		       int64_t now_ns)
{
	struct sp_node *n = node_find(sp, t->group, t->edge);
	uint64_t bd = 0;
	bool has = payload_bdseq(pl, &bd);

	if (!n || !n->alive || has != n->has_bdseq || bd != n->bdseq) {
		sp->st.deaths_ignored++;
		return;
	}
	if (sp->hooks.node_death)
		sp->hooks.node_death(sp->hooks.ctx, n->group, n->edge, now_ns / 1000000);
	n->alive = false;
	node_devices_end(sp, n, false);
	gap_clear(n);
	n->next_seq = -1;
	sp->st.node_deaths++;
}

static size_t sp_decode(struct decoder *dec, const struct decode_in *in, const struct decode_out *out)
{
	struct sparkplug *sp = (struct sparkplug *)dec;
	struct sp_msg x = { .in = in, .out = out };
	struct sp_topic t;
	struct sp_node *n;
	struct sp_device *d;
	Payload *pl;
	size_t nmetrics = 0;

	sp->st.messages++;
	if (topic_parse(sp, in, &t) < 0) {
		refuse_message(sp, &x, REJECT_UNDECODABLE);
		return x.emitted;
	}
	if (t.verb == V_STATE) {
		state_emit(sp, &x);
		return x.emitted;
	}
	if (t.verb == V_NCMD || t.verb == V_DCMD) {
		sp->st.commands_ignored++;
		return 0;
	}
	if (wire_check(in->payload, (const uint8_t *)in->payload + in->payload_len, W_PAYLOAD, 0,
		       &nmetrics) < 0) {
		refuse_message(sp, &x, REJECT_UNDECODABLE);
		return x.emitted;
	}
	if (nmetrics > sp->conf.max_message_metrics) {
		sp->st.refused_messages++;
		refuse_message(sp, &x, REJECT_TOO_LARGE);
		return x.emitted;
	}
	pl = spb__payload__unpack(&sp->alloc, in->payload_len, in->payload);
	if (!pl) {
		refuse_message(sp, &x, REJECT_UNDECODABLE);
		goto done;
	}
	x.pl = pl;
	if (key_prefix(sp, &x, &t) < 0) {
		refuse_message(sp, &x, REJECT_NOMEM);
		goto done;
	}
	switch (t.verb) {
	case V_NBIRTH:
		node_birth(sp, &x, &t);
		break;
	case V_NDEATH:
		node_death(sp, &t, pl, in->recv_ns);
		break;
	case V_NDATA: case V_DBIRTH: case V_DDATA: case V_DDEATH:
		n = node_find(sp, t.group, t.edge);
		if (!n || !n->alive) {
			if (t.verb == V_DDEATH) {
				sp->st.deaths_ignored++;
				break;
			}
			sp->st.no_birth++;
			refuse_message(sp, &x, REJECT_NO_BIRTH);
			if (!n)
				n = node_get(sp, t.group, t.edge);   /* to keep the rebirth rate */
			if (n)
				rebirth_want(sp, n, in->recv_ns);
			break;
		}
		seq_seen(sp, n, pl, in->recv_ns);
		if (t.verb == V_NDATA) {
			data(sp, &x, n, &n->s);
			break;
		}
		if (t.verb == V_DBIRTH) {
			device_birth(sp, &x, n, &t);
			break;
		}
		d = dev_find(n, t.device);
		if (t.verb == V_DDEATH) {
			if (!d || !d->alive) {
				sp->st.deaths_ignored++;
				break;
			}
			if (sp->hooks.device_death)
				sp->hooks.device_death(sp->hooks.ctx, n->group, n->edge, d->id,
						       in->recv_ns / 1000000);
			d->alive = false;
			sp->st.device_deaths++;
			break;
		}
		if (!d || !d->alive) {
			sp->st.no_birth++;
			refuse_message(sp, &x, REJECT_NO_BIRTH);
			rebirth_want(sp, n, in->recv_ns);
			break;
		}
		data(sp, &x, n, &d->s);
		break;
	default:
		break;
	}
done:
	arena_reset(&sp->arena);
	return x.emitted;
}

/* ---- the rest of the interface ------------------------------------------- */

static bool sp_claims(const struct decoder *d, const char *topic, size_t len)
{
	(void)d;
	return len >= SP_PREFIX_LEN && !memcmp(topic, SP_PREFIX, SP_PREFIX_LEN);
}

static void sp_free(struct decoder *dec)
{
	struct sparkplug *sp = (struct sparkplug *)dec;

	if (!sp)
		return;
	for (size_t i = 0; i < sp->n_nodes; i++)
		node_free(sp->nodes[i]);
	free(sp->nodes);
	free(sp->node_ix.slot);
	arena_free(&sp->arena);
	buf_free(&sp->key);
	buf_free(&sp->json);
	free(sp->topic);
	free(sp);
}

static const struct decoder_ops sp_ops = {
	.name = "sparkplug",
	.claims = sp_claims,
	.decode = sp_decode,
	.tick = sparkplug_tick,
	.link_lost = sparkplug_link_lost,
	.free = sp_free,
};

void sparkplug_conf_default(struct sparkplug_conf *c)
{
	*c = (struct sparkplug_conf){
		.rebirth = false,
		.reorder_window_ms = 2000,
		.rebirth_interval_ms = 30000,
		.max_nodes = 10000,
		.max_devices = 1000,
		.max_node_metrics = 100000,
		.max_metrics = 1000000,
		.max_message_metrics = 10000,
		.max_value_len = 65536,
		.max_decode_mem = 32u << 20,
	};
}

int sparkplug_new(const struct sparkplug_conf *conf, const struct sparkplug_hooks *hooks,
		  struct decoder **ret)
{
	struct sparkplug *sp;

	if (!conf->max_nodes || !conf->max_devices || !conf->max_node_metrics || !conf->max_metrics ||
	    !conf->max_message_metrics || !conf->max_value_len || !conf->max_decode_mem ||
	    conf->reorder_window_ms < 0 || conf->rebirth_interval_ms < 0 ||
	    conf->max_nodes > UINT32_MAX / 4 || conf->max_devices > UINT32_MAX / 4)
		return -EINVAL;
	if (!(sp = calloc(1, sizeof(*sp))))
		return -ENOMEM;
	sp->base.ops = &sp_ops;
	sp->conf = *conf;
	if (hooks)
		sp->hooks = *hooks;
	sp->arena.max = conf->max_decode_mem;
	sp->alloc.alloc = arena_alloc;
	sp->alloc.free = arena_free_one;
	sp->alloc.allocator_data = &sp->arena;
	buf_init(&sp->key, 0);
	buf_init(&sp->json, conf->max_value_len);
	*ret = &sp->base;
	return 0;
}

bool sparkplug_is(const struct decoder *d)
{
	return d && d->ops == &sp_ops;
}

void sparkplug_get_stats(const struct decoder *d, struct sparkplug_stats *ret)
{
	*ret = ((const struct sparkplug *)d)->st;
}

void sparkplug_tick(struct decoder *d, int64_t now_ns)
{
	struct sparkplug *sp = (struct sparkplug *)d;

	for (size_t i = 0; i < sp->n_nodes; i++)
		if (sp->nodes[i]->alive)
			gap_check(sp, sp->nodes[i], now_ns);
}

void sparkplug_link_lost(struct decoder *d)
{
	struct sparkplug *sp = (struct sparkplug *)d;

	for (size_t i = 0; i < sp->n_nodes; i++) {
		struct sp_node *n = sp->nodes[i];

		n->alive = false;
		node_devices_end(sp, n, false);
		gap_clear(n);
		n->next_seq = -1;
	}
}

size_t sparkplug_foreach_node(struct decoder *d,
			      void (*fn)(void *ctx, const char *group, const char *edge), void *ctx)
{
	struct sparkplug *sp = (struct sparkplug *)d;

	for (size_t i = 0; i < sp->n_nodes; i++)
		fn(ctx, sp->nodes[i]->group, sp->nodes[i]->edge);
	return sp->n_nodes;
}

static int scope_keys(struct buf *key, size_t prefix, const struct sp_scope *s,
		      void (*fn)(void *, const char *, size_t), void *ctx)
{
	for (size_t i = 0; i < s->n; i++) {
		key->len = prefix;
		if (buf_append(key, s->m[i].name, s->m[i].name_len) < 0)
			return -ENOMEM;
		fn(ctx, key->data, key->len);
	}
	return (int)s->n;
}

int sparkplug_foreach_key(struct decoder *d, const char *group, const char *edge,
			  const char *device, void (*fn)(void *ctx, const char *key, size_t len),
			  void *ctx)
{
	struct sparkplug *sp = (struct sparkplug *)d;
	struct sp_node *n = node_find(sp, group, edge);
	struct buf key;
	size_t prefix;
	int r = 0, count = 0;

	if (!n)
		return -ENOENT;
	buf_init(&key, 0);
	if (buf_printf(&key, SP_PREFIX "%s/%s/", group, edge) < 0) {
		r = -ENOMEM;
		goto out;
	}
	prefix = key.len;
	for (size_t i = 0; i < n->n_dev; i++) {
		const struct sp_device *dv = n->dev[i];

		if (device && strcmp(device, dv->id))
			continue;
		key.len = prefix;
		if (buf_printf(&key, "%s/", dv->id) < 0 || (r = scope_keys(&key, key.len, &dv->s, fn, ctx)) < 0)
			goto out;
		count += r;
		if (device)
			break;
	}
	if (device) {
		r = dev_find(n, device) ? count : -ENOENT;
		goto out;
	}
	if ((r = scope_keys(&key, prefix, &n->s, fn, ctx)) >= 0)
		r += count;
out:
	buf_free(&key);
	return r;
}
