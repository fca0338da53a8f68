/* SPDX-License-Identifier: MIT */
/* render.c: key records and rejected messages as JSON, without an intermediate tree. */
#include "api/render.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
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

static void put_u64(struct out *o, uint64_t v)
{
	char tmp[20];
	size_t n = 0;

	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n)
		*o->p++ = tmp[--n];
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

int render_record(struct buf *b, const struct index *ix, const struct rec *r, int64_t now_ms)
{
	const void *pv;
	size_t plen;
	int ret;

	/* From memory, or from the file (a committed value: index.h). */
	if ((ret = rec_payload(ix, r, &pv, &plen)) < 0)
		return ret;
	return render_record_value(b, r, rec_topic(r), pv, plen, now_ms);
}

int render_record_value(struct buf *b, const struct rec *r, const char *topic, const void *pv,
			size_t plen, int64_t now_ms)
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
	if (!(s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY)))
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
