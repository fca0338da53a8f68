/* SPDX-License-Identifier: MIT */
/* render.c: key records and rejected messages as JSON, without an intermediate tree. */
#include "api/render.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/jsondump.h"
#include "common/utf8.h"
#include "mirror/liveness/stale.h"

/*
** The fixed-size tail of a record (everything after the payload) is built
** in a local array and appended with one buf_append(): numbers and times
** are formatted by hand, no printf on the hot path.
*/
struct out {
	char *p;
};

static void put_lit(struct out *o, const char *s, size_t n)
{
	memcpy(o->p, s, n);
	o->p += n;
}
#define PUT(o, lit) put_lit((o), (lit), sizeof(lit) - 1)

static const char digit_pairs[201] =
	"00010203040506070809101112131415161718192021222324252627282930313233343536373839"
	"40414243444546474849505152535455565758596061626364656667686970717273747576777879"
	"8081828384858687888990919293949596979899";

/* Right to left, two digits at a time (a record holds five numbers). */
static void put_u64(struct out *o, uint64_t v)
{
	char tmp[20];
	char *t = tmp + sizeof(tmp);
	size_t n;

	while (v >= 100) {
		unsigned d = (unsigned)(v % 100);

		v /= 100;
		t -= 2;
		memcpy(t, digit_pairs + 2 * d, 2);
	}
	if (v >= 10) {
		t -= 2;
		memcpy(t, digit_pairs + 2 * v, 2);
	} else {
		*--t = (char)('0' + v);
	}
	n = (size_t)(tmp + sizeof(tmp) - t);
	memcpy(o->p, t, n);
	o->p += n;
}

static void put_i64(struct out *o, int64_t v)
{
	if (v < 0) {
		*o->p++ = '-';
		put_u64(o, (uint64_t)0 - (uint64_t)v);
	} else {
		put_u64(o, (uint64_t)v);
	}
}

static void put_time(struct out *o, int64_t ms)
{
	*o->p++ = '"';
	o->p += clock_put_rfc3339(ms, o->p);
	*o->p++ = '"';
}

static void put_bool(struct out *o, bool v)
{
	if (v)
		PUT(o, "true");
	else
		PUT(o, "false");
}

/* Floor division, so that a (theoretical) negative ts still rounds down. */
static int64_t ns_to_ms(int64_t ns)
{
	int64_t ms = ns / 1000000;

	if (ns % 1000000 < 0)
		ms--;
	return ms;
}

static const char *const cadence_names[CADENCE_SOURCE_MAX] = {
	[CADENCE_NONE] = NULL,
	[CADENCE_RULE] = "rule",
	[CADENCE_LEARNED] = "learned",
	[CADENCE_DEFAULT] = "default",
};

static bool json_ws(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Append a JSON payload verbatim, trimmed, with CR/LF turned into spaces. */
static int put_json_payload(struct buf *b, const char *p, size_t n)
{
	size_t start = b->len;
	char *s;
	int r;

	while (n && json_ws(p[0])) {
		p++;
		n--;
	}
	while (n && json_ws(p[n - 1]))
		n--;
	if (n == 0) /* cannot happen for a valid JSON text; stay valid anyway */
		return buf_puts(b, "null");
	if ((r = buf_append(b, p, n)) < 0)
		return r;
	if (!memchr(p, '\n', n) && !memchr(p, '\r', n))
		return 0;
	for (s = b->data + start; s < b->data + b->len; s++)
		if (*s == '\n' || *s == '\r')
			*s = ' ';
	return 0;
}

static int render_value(struct buf *b, const struct rec *r, const char *topic, const void *pv,
			size_t plen, int64_t now_ms, size_t *age_at);

int render_record(struct buf *b, const struct index *ix, const struct rec *r, int64_t now_ms)
{
	const void *pv;
	size_t plen;
	int ret;

	/* From memory, or from the file (a committed value: index.h). */
	if ((ret = rec_payload(ix, r, &pv, &plen)) < 0)
		return ret;
	return render_value(b, r, rec_topic(r), pv, plen, now_ms, NULL);
}

/* render_record_value; *age_at (when not NULL) is where age_ms's digits
 * start in b. */
static int render_value(struct buf *b, const struct rec *r, const char *topic, const void *pv,
			size_t plen, int64_t now_ms, size_t *age_at)
{
	/* The tail: fixed keys plus 4 times (< 32 each) and 5 numbers (<= 20). */
	char tail[512];
	struct out o = { tail };
	const char *cs = r->cadence_source < CADENCE_SOURCE_MAX ? cadence_names[r->cadence_source] : NULL;
	int64_t age = now_ms - r->last_seen_ms;
	const char *payload = pv ? pv : "";
	int ret;

	if ((ret = buf_append(b, "{\"topic\":", 9)) < 0)
		return ret;
	if ((ret = buf_json_str(b, topic, r->topic_len)) < 0)
		return ret;
	if ((r->flags & REC_IS_JSON) && plen) {
		if ((ret = buf_append(b, ",\"payload\":", 11)) < 0)
			return ret;
		ret = put_json_payload(b, payload, plen);
	} else if (utf8_valid(payload, plen)) {
		if ((ret = buf_append(b, ",\"payload_text\":", 16)) < 0)
			return ret;
		ret = buf_json_str(b, payload, plen);
	} else {
		if ((ret = buf_append(b, ",\"payload_base64\":\"", 19)) < 0)
			return ret;
		if ((ret = buf_base64(b, payload, plen)) < 0)
			return ret;
		ret = buf_putc(b, '"');
	}
	if (ret < 0)
		return ret;

	PUT(&o, ",\"ts\":");
	put_time(&o, ns_to_ms(r->ts_ns));
	if (r->flags & REC_TS_PAYLOAD)
		PUT(&o, ",\"ts_source\":\"payload\",\"received\":");
	else
		PUT(&o, ",\"ts_source\":\"received\",\"received\":");
	put_time(&o, r->received_ms);
	PUT(&o, ",\"last_seen\":");
	put_time(&o, r->last_seen_ms);
	PUT(&o, ",\"age_ms\":");
	if (age_at)
		*age_at = b->len + (size_t)(o.p - tail);
	put_i64(&o, age > 0 ? age : 0);
	PUT(&o, ",\"retained\":");
	put_bool(&o, r->flags & REC_RETAINED);
	PUT(&o, ",\"updates\":");
	put_u64(&o, r->updates);
	PUT(&o, ",\"cadence_ms\":");
	if (rec_cadence_ms(r))
		put_u64(&o, rec_cadence_ms(r));
	else
		PUT(&o, "null");
	PUT(&o, ",\"cadence_source\":");
	if (cs) {
		*o.p++ = '"';
		put_lit(&o, cs, strlen(cs));
		*o.p++ = '"';
	} else {
		PUT(&o, "null");
	}
	PUT(&o, ",\"stale\":");
	put_bool(&o, r->flags & REC_STALE);
	PUT(&o, ",\"stale_since\":");
	if (r->stale_since_ms)
		put_time(&o, r->stale_since_ms);
	else
		PUT(&o, "null");
	PUT(&o, ",\"stale_reason\":");
	if ((cs = stale_reason_name(rec_stale_reason(r)))) {
		*o.p++ = '"';
		put_lit(&o, cs, strlen(cs));
		*o.p++ = '"';
	} else {
		PUT(&o, "null");
	}
	PUT(&o, ",\"rev\":");
	put_i64(&o, r->rev);
	*o.p++ = '}';
	return buf_append(b, tail, (size_t)(o.p - tail));
}

int render_record_value(struct buf *b, const struct rec *r, const char *topic, const void *pv,
			size_t plen, int64_t now_ms)
{
	return render_value(b, r, topic, pv, plen, now_ms, NULL);
}

/*
** Listings render the same records again and again: a page of 1,000 keys
** polled by a dashboard, most of them unchanged since the last poll. So
** each thread that lists keeps the JSON it rendered, per record, valid
** while every field the JSON shows is what it was then. The revision names
** the value (topic, payload, ts, received, retained, updates: a revision is
** never given twice in an index's life, and a restart continues above the
** old ones); a confirmation, a staleness change or a new cadence change the
** rest without a new revision, so those fields are compared too. age_ms is
** the one part that moves with the clock: its digits are cut out of the
** kept bytes and written at each use.
**
** Records are found by address in sets of RCACHE_WAYS: a direct-mapped
** table of 4,096 slots left some 200 of a 1,000-key page colliding in
** pairs, each pair evicting the other on every listing. Bounded per
** thread: RCACHE_SLOTS slots, records up to RCACHE_MAX_RECORD bytes,
** RCACHE_BUDGET bytes in all; freed when the thread ends.
*/
#define RCACHE_SLOTS 4096u
#define RCACHE_WAYS 4u
#define RCACHE_SET_BITS 10 /* RCACHE_SLOTS / RCACHE_WAYS sets */
#define RCACHE_MAX_RECORD 2048u
#define RCACHE_BUDGET (2u << 20)
/* The flags render_value shows. */
#define RCACHE_FLAGS ((uint16_t)(REC_IS_JSON | REC_TS_PAYLOAD | REC_RETAINED | REC_STALE | \
				 REC_REASON_MASK))

/* What a way's bytes were rendered from (besides the record: its tag). */
struct rc_key {
	uint64_t gen;           /* the record's index (index_gen) */
	int64_t rev, ts_ns, received_ms, last_seen_ms, stale_since_ms;
	uint32_t updates, cadence_ms, payload_len;
	uint16_t flags;         /* & RCACHE_FLAGS */
	uint8_t cadence_source;
};

struct rc_way {
	struct rc_key k;
	uint32_t len, cap;      /* the kept bytes (age_ms's digits cut out), their room */
	uint32_t age_at;        /* where the digits go */
	char *data;
};

struct rc_set {
	const struct rec *tag[RCACHE_WAYS]; /* each way's record, NULL when empty: one cache line */
	struct rc_way way[RCACHE_WAYS];
};

struct rcache {
	struct rc_set set[1u << RCACHE_SET_BITS];
	size_t bytes;           /* capacity of every way's data */
	uint64_t hits, misses;
	unsigned turn;          /* the next victim's way in a full set */
};

_Static_assert(RCACHE_WAYS << RCACHE_SET_BITS == RCACHE_SLOTS, "sets x ways = slots");

static pthread_key_t rcache_key; /* frees a thread's cache when it ends */
static pthread_once_t rcache_once = PTHREAD_ONCE_INIT;
static bool rcache_ok;
static _Thread_local struct rcache *rcache_mine;

static void rcache_free(void *p)
{
	struct rcache *rc = p;

	if (!rc)
		return;
	rcache_mine = NULL; /* run on the thread itself: no later use finds it */
	for (size_t i = 0; i < (1u << RCACHE_SET_BITS); i++)
		for (size_t w = 0; w < RCACHE_WAYS; w++)
			free(rc->set[i].way[w].data);
	free(rc);
}

static void rcache_init(void)
{
	rcache_ok = pthread_key_create(&rcache_key, rcache_free) == 0;
}

/* This thread's cache, made at its first use; NULL: none (no memory). */
static struct rcache *rcache_get(void)
{
	struct rcache *rc;

	if (rcache_mine)
		return rcache_mine;
	pthread_once(&rcache_once, rcache_init);
	if (!rcache_ok || !(rc = calloc(1, sizeof(*rc))))
		return NULL;
	if (pthread_setspecific(rcache_key, rc) != 0) {
		free(rc);
		return NULL;
	}
	return rcache_mine = rc;
}

static struct rc_set *rcache_set(struct rcache *rc, const struct rec *r)
{
	/* Fibonacci hashing: the top bits of the address times 2^64 / phi. */
	uint64_t h = (uint64_t)(uintptr_t)r * UINT64_C(0x9E3779B97F4A7C15);

	return &rc->set[h >> (64 - RCACHE_SET_BITS)];
}

static bool rc_key_is(const struct rc_key *k, const struct rec *r, uint64_t gen)
{
	return k->gen == gen && k->rev == r->rev && k->last_seen_ms == r->last_seen_ms &&
	       k->stale_since_ms == r->stale_since_ms && k->ts_ns == r->ts_ns &&
	       k->received_ms == r->received_ms && k->updates == r->updates &&
	       k->cadence_ms == r->cadence_ms && k->payload_len == r->payload_len &&
	       k->flags == (r->flags & RCACHE_FLAGS) && k->cadence_source == r->cadence_source;
}

/* Keep the n bytes at p (age_ms's digits at age_at, nd of them), rendered
 * from r's fields (tag's, or index_peek's copy of them), for tag in way w
 * of set; best effort: within the budget. */
static void rcache_keep(struct rcache *rc, struct rc_set *set, unsigned w, const struct rec *tag,
			const struct rec *r, uint64_t gen, const char *p, size_t n, size_t age_at,
			size_t nd)
{
	struct rc_way *s = &set->way[w];
	size_t len = n - nd;

	set->tag[w] = NULL; /* empty until it holds r's bytes */
	if (n > RCACHE_MAX_RECORD)
		return;
	if (s->cap < len || !s->data) {
		size_t cap = len < 256 ? 256 : len;
		char *d;

		if (rc->bytes - s->cap + cap > RCACHE_BUDGET || !(d = realloc(s->data, cap)))
			return;
		rc->bytes = rc->bytes - s->cap + cap;
		s->data = d;
		s->cap = (uint32_t)cap;
	}
	memcpy(s->data, p, age_at);
	memcpy(s->data + age_at, p + age_at + nd, n - age_at - nd);
	s->len = (uint32_t)len;
	s->age_at = (uint32_t)age_at;
	s->k = (struct rc_key){
		.gen = gen, .rev = r->rev, .ts_ns = r->ts_ns, .received_ms = r->received_ms,
		.last_seen_ms = r->last_seen_ms, .stale_since_ms = r->stale_since_ms,
		.updates = r->updates, .cadence_ms = r->cadence_ms, .payload_len = r->payload_len,
		.flags = (uint16_t)(r->flags & RCACHE_FLAGS), .cadence_source = r->cadence_source,
	};
	set->tag[w] = tag;
}

/* render_cached's work, in both its callers: a listing pays no call for it. */
static inline int rcache_render(struct rcache *rc, struct buf *b, const struct index *ix,
				const struct rec *r, const struct rec *snap, int64_t now_ms)
{
	int64_t age = now_ms - snap->last_seen_ms;
	const struct rc_way *s;
	struct rc_set *set;
	struct out o;
	unsigned w;

	set = rcache_set(rc, r);
	for (w = 0; w < RCACHE_WAYS && set->tag[w] != r; w++)
		;
	if (w == RCACHE_WAYS || !rc_key_is(&set->way[w].k, snap, index_gen(ix))) {
		rc->misses++;
		return -EAGAIN;
	}
	s = &set->way[w];
	/* Room for the kept bytes and the longest age (20 digits); near the
	 * buffer's limit, rendering finds out what fits. */
	if (buf_reserve(b, s->len + 20) < 0) {
		rc->misses++;
		return -EAGAIN;
	}
	rc->hits++;
	o.p = b->data + b->len;
	memcpy(o.p, s->data, s->age_at);
	o.p += s->age_at;
	put_i64(&o, age > 0 ? age : 0);
	memcpy(o.p, s->data + s->age_at, s->len - s->age_at);
	o.p += s->len - s->age_at;
	*o.p = '\0';
	b->len = (size_t)(o.p - b->data);
	return 0;
}

int render_cached(struct buf *b, const struct index *ix, const struct rec *r,
		  const struct rec *snap, int64_t now_ms)
{
	struct rcache *rc = ix ? rcache_get() : NULL;

	return rc ? rcache_render(rc, b, ix, r, snap, now_ms) : -EAGAIN;
}

int render_record_keep(struct buf *b, const struct index *ix, const struct rec *r,
		       const struct rec *snap, const char *topic, const void *pv, size_t plen,
		       int64_t now_ms)
{
	struct rcache *rc = ix ? rcache_get() : NULL;
	size_t mark = b->len, age_at;
	int64_t age = now_ms - snap->last_seen_ms;
	char digits[24];
	struct out o = { digits };
	struct rc_set *set;
	unsigned w;
	int ret;

	if ((ret = render_value(b, snap, topic, pv, plen, now_ms, &age_at)) < 0 || !rc)
		return ret;
	put_i64(&o, age > 0 ? age : 0);
	set = rcache_set(rc, r);
	/* Where r was, else an empty way, else the next in turn. */
	for (w = 0; w < RCACHE_WAYS && set->tag[w] != r; w++)
		;
	if (w == RCACHE_WAYS)
		for (w = 0; w < RCACHE_WAYS && set->tag[w]; w++)
			;
	if (w == RCACHE_WAYS)
		w = rc->turn++ % RCACHE_WAYS;
	rcache_keep(rc, set, w, r, snap, index_gen(ix), b->data + mark, b->len - mark,
		    age_at - mark, (size_t)(o.p - digits));
	return 0;
}

int render_record_cached(struct buf *b, const struct index *ix, const struct rec *r, int64_t now_ms)
{
	struct rcache *rc;
	const void *pv;
	size_t plen;
	int ret;

	if (!ix || !(rc = rcache_get()))
		return render_record(b, ix, r, now_ms);
	if ((ret = rcache_render(rc, b, ix, r, r, now_ms)) != -EAGAIN)
		return ret;
	if ((ret = rec_payload(ix, r, &pv, &plen)) < 0)
		return ret;
	return render_record_keep(b, ix, r, r, rec_topic(r), pv, plen, now_ms);
}

void render_cache_stats(uint64_t *ret_hits, uint64_t *ret_misses)
{
	struct rcache *rc = rcache_mine;

	*ret_hits = rc ? rc->hits : 0;
	*ret_misses = rc ? rc->misses : 0;
}

int render_tombstone(struct buf *b, const struct rec *r)
{
	char tail[128];
	struct out o = { tail };
	int ret;

	if ((ret = buf_append(b, "{\"topic\":", 9)) < 0)
		return ret;
	if ((ret = buf_json_str(b, rec_topic(r), r->topic_len)) < 0)
		return ret;
	PUT(&o, ",\"deleted\":true,\"ts\":");
	put_time(&o, ns_to_ms(r->ts_ns));
	PUT(&o, ",\"rev\":");
	put_i64(&o, r->rev);
	*o.p++ = '}';
	return buf_append(b, tail, (size_t)(o.p - tail));
}

int render_error(struct buf *b, const char *reason)
{
	int ret;

	if ((ret = buf_append(b, "{\"error\":", 9)) < 0)
		return ret;
	if ((ret = buf_json_str(b, reason, strlen(reason))) < 0)
		return ret;
	return buf_putc(b, '}');
}

/*
** Kept payload bytes as text when they are UTF-8. A cut payload may end
** inside a character: drop that incomplete tail rather than fall back to
** base64. Returns the length to show as text, or -1 for base64.
*/
static long reject_text_len(const struct rejects_entry *e)
{
	const char *p = (const char *)e->payload;
	size_t n = e->kept;

	if (utf8_valid(p, n))
		return (long)n;
	if (n < e->payload_size)
		for (size_t cut = 1; cut <= 3 && cut < n; cut++)
			if (((unsigned char)p[n - cut] & 0x80) && utf8_valid(p, n - cut))
				return (long)(n - cut);
	return -1;
}

int render_reject(struct buf *b, const struct rejects_entry *e)
{
	char ts[32];
	long tl = reject_text_len(e);
	int rc;

	if ((rc = buf_puts(b, "{\"topic\":")) < 0 ||
	    (rc = buf_json_str(b, e->topic, e->topic_len)) < 0 ||
	    (e->topic_cut && (rc = buf_puts(b, ",\"topic_truncated\":true")) < 0) ||
	    (rc = buf_printf(b, ",\"reason\":\"%s\",\"time\":\"%s\",\"payload_size\":%llu",
			     reject_reason_name(e->reason), clock_format_rfc3339(e->time_ms, ts),
			     (unsigned long long)e->payload_size)) < 0)
		return rc;
	if (tl >= 0) {
		if ((rc = buf_puts(b, ",\"payload_text\":")) < 0 ||
		    (rc = buf_json_str(b, (const char *)e->payload, (size_t)tl)) < 0)
			return rc;
	} else {
		if ((rc = buf_puts(b, ",\"payload_base64\":\"")) < 0 ||
		    (rc = buf_base64(b, e->payload, e->kept)) < 0 ||
		    (rc = buf_putc(b, '"')) < 0)
			return rc;
	}
	return buf_putc(b, '}');
}

struct rejects_out {
	struct buf *b;
	size_t n;
};

static int reject_visit(const struct rejects_entry *e, void *ctx)
{
	struct rejects_out *o = ctx;
	int rc;

	if ((o->n++ && (rc = buf_putc(o->b, ',')) < 0) || (rc = render_reject(o->b, e)) < 0)
		return rc;
	return 0;
}

int render_rejects(struct buf *b, struct rejects *r)
{
	struct rejects_out o = { b, 0 };
	int rc;

	if ((rc = buf_puts(b, "{\"items\":[")) < 0 ||
	    (rc = rejects_visit(r, reject_visit, &o)) < 0)
		return rc;
	return buf_puts(b, "]}");
}

static int put_json_value(struct buf *b, const json_t *v)
{
	char *s;
	int ret;

	if (!v)
		return buf_puts(b, "null");
	if (!(s = json_dumps_exact(v, JSON_COMPACT | JSON_ENCODE_ANY)))
		return -ENOMEM;
	ret = buf_puts(b, s);
	free(s);
	return ret;
}

static int put_time_or_null(struct buf *b, const char *name, int64_t ms)
{
	char ts[32];

	if (ms == 0)
		return buf_printf(b, ",\"%s\":null", name);
	return buf_printf(b, ",\"%s\":\"%s\"", name, clock_format_rfc3339(ms, ts));
}

int render_intent(struct buf *b, const struct intent_info *it)
{
	size_t mark = b->len;
	int ret;

	if ((ret = buf_printf(b, "{\"id\":%lld,\"topic\":", (long long)it->id)) < 0 ||
	    (ret = buf_json_str(b, it->topic, strlen(it->topic))) < 0 ||
	    (ret = buf_puts(b, ",\"correlation_id\":")) < 0 ||
	    (ret = buf_json_str(b, it->correlation_id, strlen(it->correlation_id))) < 0 ||
	    (ret = buf_printf(b, ",\"state\":\"%s\",\"requested\":",
			      intent_state_name(it->state))) < 0 ||
	    (ret = put_json_value(b, it->requested)) < 0 ||
	    (ret = buf_puts(b, ",\"observed\":")) < 0 ||
	    (ret = put_json_value(b, it->observed)) < 0 ||
	    (ret = put_time_or_null(b, "created", it->created_ms)) < 0 ||
	    (ret = put_time_or_null(b, "published", it->published_ms)) < 0 ||
	    (ret = put_time_or_null(b, "decided", it->decided_ms)) < 0 ||
	    (ret = buf_putc(b, '}')) < 0) {
		if (b->data) {
			b->len = mark;
			b->data[mark] = '\0';
		}
		return ret;
	}
	return 0;
}
