/* SPDX-License-Identifier: MIT */
/* render.c: the contract's key record as JSON, without an intermediate tree. */
#include "api/render.h"

#include <string.h>

#include "common/clock.h"
#include "common/utf8.h"

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
	char tmp[32];
	size_t n;

	clock_format_rfc3339(ms, tmp);
	n = strlen(tmp);
	*o->p++ = '"';
	put_lit(o, tmp, n);
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

int render_record(struct buf *b, const struct rec *r, int64_t now_ms)
{
	/* The tail: fixed keys plus 4 times (< 32 each) and 5 numbers (<= 20). */
	char tail[512];
	struct out o = { tail };
	const char *cs = r->cadence_source < CADENCE_SOURCE_MAX ? cadence_names[r->cadence_source] : NULL;
	int64_t age = now_ms - r->last_seen_ms;
	const char *payload;
	const void *pv;
	size_t plen;
	int ret;

	/* From memory, or from the file (a committed value: index.h). */
	if ((ret = rec_payload(r, &pv, &plen)) < 0)
		return ret;
	payload = pv ? pv : "";

	if ((ret = buf_append(b, "{\"topic\":", 9)) < 0)
		return ret;
	if ((ret = buf_json_str(b, rec_topic(r), r->topic_len)) < 0)
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
	if (r->cadence_ms)
		put_u64(&o, r->cadence_ms);
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
