/* SPDX-License-Identifier: MIT */
/* test_render.c: key records and tombstones as JSON, parsed back and checked field by field. */
#include <check.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/render.h"
#include "clock_fake.h"
#include "common/log.h"
#include "mirror/state/index.h"
#include "mirror/state/rejects.h"

/* The records here are outside any index (no payload source), but in
 * payload_from_source. */
static struct index *ix;

/* The contract's example record. */
#define T0_MS 1795313402123LL /* 2026-11-22T02:10:02.123Z */

static struct rec *mk(const char *topic, const void *payload, size_t n, uint16_t flags)
{
	struct rec *r = rec_new(topic, strlen(topic));

	ck_assert_ptr_nonnull(r);
	if (n)
		ck_assert_int_eq(rec_set_payload(r, payload, n), 0);
	r->flags = flags;
	r->ts_ns = T0_MS * 1000000 + 456789; /* sub-ms part is cut, not rounded */
	r->received_ms = T0_MS + 7;
	r->last_seen_ms = T0_MS + 10008;
	r->updates = 17;
	r->cadence_ms = 10000;
	r->cadence_source = CADENCE_RULE;
	r->rev = 90211;
	return r;
}

/* Render r, check it is one line, parse it back. Caller json_decref()s. */
static json_t *render(const struct rec *r, int64_t now_ms, struct buf *keep)
{
	struct buf b;
	json_error_t err;
	json_t *j;

	buf_init(&b, 0);
	ck_assert_int_eq(render_record(&b, ix, r, now_ms), 0);
	ck_assert_ptr_nonnull(b.data);
	ck_assert_ptr_null(memchr(b.data, '\n', b.len));
	ck_assert_ptr_null(memchr(b.data, '\r', b.len));
	j = json_loadb(b.data, b.len, JSON_ALLOW_NUL, &err);
	if (!j)
		ck_abort_msg("not JSON (%s): %s", err.text, b.data);
	ck_assert(json_is_object(j));
	if (keep)
		*keep = b;
	else
		buf_free(&b);
	return j;
}

static const char *str(json_t *o, const char *k)
{
	json_t *v = json_object_get(o, k);

	ck_assert_msg(json_is_string(v), "%s is not a string", k);
	return json_string_value(v);
}

static json_int_t num(json_t *o, const char *k)
{
	json_t *v = json_object_get(o, k);

	ck_assert_msg(json_is_integer(v), "%s is not an integer", k);
	return json_integer_value(v);
}

static void is_null(json_t *o, const char *k)
{
	json_t *v = json_object_get(o, k);

	ck_assert_msg(v && json_is_null(v), "%s is not null", k);
}

static void absent(json_t *o, const char *k)
{
	ck_assert_msg(json_object_get(o, k) == NULL, "%s should be absent", k);
}

START_TEST(json_record)
{
	const char *p = "{\"value\": 24.5, \"ts\": 1795313402123}";
	struct rec *r = mk("dc1/hall2/rack17/temp", p, strlen(p), REC_IS_JSON | REC_TS_PAYLOAD);
	struct buf b;
	json_t *j = render(r, T0_MS + 10008 + 840, &b), *pl;

	ck_assert_str_eq(str(j, "topic"), "dc1/hall2/rack17/temp");
	pl = json_object_get(j, "payload");
	ck_assert(json_is_object(pl));
	ck_assert(json_real_value(json_object_get(pl, "value")) == 24.5);
	ck_assert(json_integer_value(json_object_get(pl, "ts")) == 1795313402123LL);
	absent(j, "payload_text");
	absent(j, "payload_base64");
	ck_assert_str_eq(str(j, "ts"), "2026-11-22T02:10:02.123Z");
	ck_assert_str_eq(str(j, "ts_source"), "payload");
	ck_assert_str_eq(str(j, "received"), "2026-11-22T02:10:02.130Z");
	ck_assert_str_eq(str(j, "last_seen"), "2026-11-22T02:10:12.131Z");
	ck_assert_int_eq(num(j, "age_ms"), 840);
	ck_assert(json_is_false(json_object_get(j, "retained")));
	ck_assert_int_eq(num(j, "updates"), 17);
	ck_assert_int_eq(num(j, "cadence_ms"), 10000);
	ck_assert_str_eq(str(j, "cadence_source"), "rule");
	ck_assert(json_is_false(json_object_get(j, "stale")));
	is_null(j, "stale_since");
	is_null(j, "stale_reason");
	ck_assert_int_eq(num(j, "rev"), 90211);
	ck_assert_uint_eq(json_object_size(j), 15);

	/* The payload is inlined byte for byte and the key order is the contract's. */
	ck_assert_str_eq(b.data,
		"{\"topic\":\"dc1/hall2/rack17/temp\","
		"\"payload\":{\"value\": 24.5, \"ts\": 1795313402123},"
		"\"ts\":\"2026-11-22T02:10:02.123Z\",\"ts_source\":\"payload\","
		"\"received\":\"2026-11-22T02:10:02.130Z\",\"last_seen\":\"2026-11-22T02:10:12.131Z\","
		"\"age_ms\":840,\"retained\":false,\"updates\":17,\"cadence_ms\":10000,"
		"\"cadence_source\":\"rule\",\"stale\":false,\"stale_since\":null,\"stale_reason\":null,\"rev\":90211}");
	buf_free(&b);
	json_decref(j);
	rec_free(r);
}
END_TEST

START_TEST(json_multiline_and_scalars)
{
	const char *p = "\n  {\"a\":\r\n [1,\n2],\t\"s\":\"x\\ny\"}\n\n";
	struct rec *r = mk("t", p, strlen(p), REC_IS_JSON);
	json_t *j = render(r, fake_now_ms, NULL), *pl;

	pl = json_object_get(j, "payload");
	ck_assert(json_is_object(pl));
	ck_assert_uint_eq(json_array_size(json_object_get(pl, "a")), 2);
	ck_assert_str_eq(json_string_value(json_object_get(pl, "s")), "x\ny");
	json_decref(j);
	rec_free(r);

	/* A bare JSON number and string are payloads too. */
	r = mk("t", "42", 2, REC_IS_JSON);
	j = render(r, fake_now_ms, NULL);
	ck_assert_int_eq(num(j, "payload"), 42);
	json_decref(j);
	rec_free(r);
	r = mk("t", "\"on\"", 4, REC_IS_JSON);
	j = render(r, fake_now_ms, NULL);
	ck_assert_str_eq(str(j, "payload"), "on");
	json_decref(j);
	rec_free(r);
}
END_TEST

START_TEST(text_record)
{
	const char *p = "21.5 \"C\"\n\\ caf\xc3\xa9";
	struct rec *r = mk("sensors/x", p, strlen(p), REC_RETAINED);
	json_t *j = render(r, fake_now_ms, NULL);

	absent(j, "payload");
	absent(j, "payload_base64");
	ck_assert_str_eq(str(j, "payload_text"), p);
	ck_assert_str_eq(str(j, "ts_source"), "received");
	ck_assert(json_is_true(json_object_get(j, "retained")));
	json_decref(j);
	rec_free(r);

	/* NUL and control bytes are valid UTF-8: escaped, length kept. */
	r = mk("sensors/y", "a\0\x01", 3, 0);
	j = render(r, fake_now_ms, NULL);
	ck_assert_uint_eq(json_string_length(json_object_get(j, "payload_text")), 3);
	ck_assert_int_eq(memcmp(json_string_value(json_object_get(j, "payload_text")), "a\0\x01", 3), 0);
	json_decref(j);
	rec_free(r);
}
END_TEST

START_TEST(binary_record)
{
	const unsigned char p[] = { 0xff, 0x00, 0x01, 0xc3 };
	struct rec *r = mk("bin/raw", p, sizeof(p), REC_TS_PAYLOAD);
	json_t *j = render(r, fake_now_ms, NULL);

	absent(j, "payload");
	absent(j, "payload_text");
	ck_assert_str_eq(str(j, "payload_base64"), "/wABww==");
	json_decref(j);
	rec_free(r);

	/* A truncated UTF-8 sequence is binary too, and a JSON flag is honoured
	 * only for what it says: here it is clear. */
	r = mk("bin/trunc", "ok\xe2\x82", 4, 0);
	j = render(r, fake_now_ms, NULL);
	ck_assert_str_eq(str(j, "payload_base64"), "b2vigg==");
	json_decref(j);
	rec_free(r);
}
END_TEST

START_TEST(stale_record)
{
	struct rec *r = mk("dc1/a", "1", 1, REC_IS_JSON | REC_STALE);
	json_t *j;

	r->stale_since_ms = T0_MS + 30008;
	j = render(r, T0_MS + 40008, NULL);
	ck_assert(json_is_true(json_object_get(j, "stale")));
	ck_assert_str_eq(str(j, "stale_since"), "2026-11-22T02:10:32.131Z");
	ck_assert_int_eq(num(j, "age_ms"), 30000);
	/* Stored before reasons were (no bits): cadence. */
	ck_assert_str_eq(str(j, "stale_reason"), "cadence");
	json_decref(j);
	rec_set_stale_reason(r, STALE_REASON_PRODUCER_OFFLINE);
	j = render(r, T0_MS + 40008, NULL);
	ck_assert_str_eq(str(j, "stale_reason"), "producer_offline");
	json_decref(j);
	rec_set_stale_reason(r, STALE_REASON_BROKER);
	j = render(r, T0_MS + 40008, NULL);
	ck_assert_str_eq(str(j, "stale_reason"), "broker");
	json_decref(j);
	rec_free(r);
}
END_TEST

START_TEST(null_cadence)
{
	struct rec *r = mk("k", "1", 1, REC_IS_JSON);
	json_t *j;

	r->cadence_ms = 0;
	r->cadence_source = CADENCE_NONE;
	j = render(r, fake_now_ms, NULL);
	is_null(j, "cadence_ms");
	is_null(j, "cadence_source");
	json_decref(j);

	r->cadence_ms = 1500;
	r->cadence_source = CADENCE_LEARNED;
	j = render(r, fake_now_ms, NULL);
	ck_assert_int_eq(num(j, "cadence_ms"), 1500);
	ck_assert_str_eq(str(j, "cadence_source"), "learned");
	json_decref(j);

	r->cadence_ms = 60000;
	r->cadence_source = CADENCE_DEFAULT;
	j = render(r, fake_now_ms, NULL);
	ck_assert_str_eq(str(j, "cadence_source"), "default");
	json_decref(j);

	/* A "never" rule: the source is known, there is no cadence. */
	r->cadence_ms = 0;
	r->cadence_source = CADENCE_RULE;
	j = render(r, fake_now_ms, NULL);
	is_null(j, "cadence_ms");
	ck_assert_str_eq(str(j, "cadence_source"), "rule");
	json_decref(j);
	rec_free(r);
}
END_TEST

START_TEST(age_never_negative)
{
	struct rec *r = mk("k", "1", 1, REC_IS_JSON);
	json_t *j = render(r, r->last_seen_ms - 5000, NULL);

	ck_assert_int_eq(num(j, "age_ms"), 0);
	json_decref(j);
	rec_free(r);
}
END_TEST

START_TEST(escaped_topic)
{
	const char *t = "we\"ird/\\/\x01/caf\xc3\xa9";
	struct rec *r = mk(t, "1", 1, REC_IS_JSON);
	json_t *j = render(r, fake_now_ms, NULL);

	ck_assert_str_eq(str(j, "topic"), t);
	json_decref(j);
	rec_free(r);
}
END_TEST

START_TEST(tombstone)
{
	struct rec *r = mk("dc1/gone", NULL, 0, REC_DELETED);
	struct buf b;
	json_error_t err;
	json_t *j;

	buf_init(&b, 0);
	ck_assert_int_eq(render_tombstone(&b, r), 0);
	j = json_loadb(b.data, b.len, 0, &err);
	ck_assert_ptr_nonnull(j);
	ck_assert_str_eq(str(j, "topic"), "dc1/gone");
	ck_assert(json_is_true(json_object_get(j, "deleted")));
	ck_assert_str_eq(str(j, "ts"), "2026-11-22T02:10:02.123Z");
	ck_assert_int_eq(num(j, "rev"), 90211);
	ck_assert_uint_eq(json_object_size(j), 4);
	json_decref(j);
	buf_free(&b);
	rec_free(r);
}
END_TEST

START_TEST(error_body)
{
	struct buf b;
	json_t *j;

	buf_init(&b, 0);
	ck_assert_int_eq(render_error(&b, "bad \"filter\"\n"), 0);
	j = json_loadb(b.data, b.len, 0, NULL);
	ck_assert_ptr_nonnull(j);
	ck_assert_str_eq(str(j, "error"), "bad \"filter\"\n");
	json_decref(j);
	buf_free(&b);
}
END_TEST

START_TEST(buffer_limit)
{
	char big[600];
	struct rec *r;
	struct buf b;

	memset(big, 'x', sizeof(big));
	r = mk("k", big, sizeof(big), 0);
	buf_init(&b, 256);
	ck_assert_int_eq(render_record(&b, ix, r, fake_now_ms), -E2BIG);
	ck_assert_uint_le(b.len, 256);
	buf_free(&b);
	/* The tail alone does not fit either. */
	buf_init(&b, 64);
	rec_free(r);
	r = mk("k", "1", 1, REC_IS_JSON);
	ck_assert_int_eq(render_record(&b, ix, r, fake_now_ms), -E2BIG);
	buf_free(&b);
	rec_free(r);
}
END_TEST

/* A payload the index no longer holds is rendered from its index's
 * payload source; without one (or when the file disagrees) the record is
 * not rendered at all, never with a wrong payload. */
static int fetch_stored(void *ctx, const char *topic, size_t len, const void **p, size_t *n)
{
	(void)ctx;
	if (len != 1 || topic[0] != 'k')
		return -ENOENT;
	*p = "{\"v\": 7}";
	*n = 8;
	return 0;
}

START_TEST(payload_from_source)
{
	struct rec *r;
	struct buf b;
	json_t *j;

	ix = index_new();
	ck_assert_ptr_nonnull(ix);
	r = index_add(ix, "k", 1, "{\"v\": 7}", 8, REC_IS_JSON);
	ck_assert_ptr_nonnull(r);
	rec_drop_payload(r);
	ck_assert(r->flags & REC_IN_FILE);
	buf_init(&b, 0);
	ck_assert_int_eq(render_record(&b, ix, r, fake_now_ms), -ENOENT);
	buf_free(&b);
	index_set_payload_source(ix, fetch_stored, NULL, NULL, NULL);
	j = render(r, fake_now_ms, NULL);
	ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(j, "payload"), "v")), 7);
	json_decref(j);
	r->payload_len = 9;
	buf_init(&b, 0);
	ck_assert_int_eq(render_record(&b, ix, r, fake_now_ms), -EIO);
	buf_free(&b);
	index_free(ix);
	ix = NULL;
}
END_TEST

/* Numbers of every width, written two digits at a time. */
START_TEST(numbers_every_width)
{
	int64_t p10 = 1;

	/* 10^k - 1, 10^k and 10^k + 1 for k = 0..18, then INT64_MAX. */
	for (int i = 0; i < 58; i++) {
		struct rec *r = mk("k", "1", 1, REC_IS_JSON);
		int64_t v = i == 57 ? INT64_MAX : p10 - 1 + i % 3;
		json_t *j;

		if (i % 3 == 2 && i < 54)
			p10 *= 10;
		r->rev = v;
		r->updates = (uint32_t)(v % 4294967296);
		r->last_seen_ms = fake_now_ms - v % 100000000;
		j = render(r, fake_now_ms, NULL);
		ck_assert_int_eq(num(j, "rev"), v);
		ck_assert_int_eq(num(j, "updates"), v % 4294967296);
		ck_assert_int_eq(num(j, "age_ms"), v % 100000000);
		json_decref(j);
		rec_free(r);
	}
}
END_TEST

/* ---- the listings' record cache ---------------------------------------- */

#define NREC 48

/* The "file" of the cache tests: each record's current payload by topic. */
static struct {
	char topic[32];
	char payload[3000];
	size_t len;
} store_rows[NREC];

static int fetch_rows(void *ctx, const char *topic, size_t len, const void **p, size_t *n)
{
	(void)ctx;
	for (int i = 0; i < NREC; i++)
		if (strlen(store_rows[i].topic) == len && memcmp(store_rows[i].topic, topic, len) == 0) {
			*p = store_rows[i].payload;
			*n = store_rows[i].len;
			return 0;
		}
	return -ENOENT;
}

static uint64_t rnd_state = 88172645463325252ull;

static uint64_t rnd(void)
{
	rnd_state ^= rnd_state << 13;
	rnd_state ^= rnd_state >> 7;
	rnd_state ^= rnd_state << 17;
	return rnd_state;
}

/* A new value for record i: JSON, text, binary or big, of any length. */
static void new_value(struct rec *r, int i, int64_t *rev, int64_t now_ms)
{
	char *v = store_rows[i].payload;
	size_t n;
	uint16_t f;
	uint16_t keep = r->flags & (REC_STALE | REC_REASON_MASK | REC_DIRTY);

	switch (rnd() % 4) {
	case 0:
		n = (size_t)snprintf(v, 64, "{\"v\": %llu,\n \"s\":\"x\"}", (unsigned long long)(rnd() % 100000));
		f = REC_IS_JSON;
		break;
	case 1:
		n = (size_t)snprintf(v, 64, "t\"%llu\\\x01", (unsigned long long)rnd());
		f = 0;
		break;
	case 2:
		n = 1 + rnd() % 40;
		for (size_t k = 0; k < n; k++)
			v[k] = (char)(0x80 | (rnd() & 0x7f));
		f = 0;
		break;
	default: /* more than the cache keeps for one record */
		n = 2100 + rnd() % 800;
		memset(v, 'a' + (int)(rnd() % 26), n);
		f = 0;
		break;
	}
	store_rows[i].len = n;
	ck_assert_int_eq(rec_set_payload(r, v, n), 0); /* before the flags: it reads REC_IN_FILE */
	r->flags = f | keep | (rnd() % 2 ? REC_RETAINED : 0) | (rnd() % 2 ? REC_TS_PAYLOAD : 0);
	r->ts_ns = (now_ms - (int64_t)(rnd() % 5000)) * 1000000 + (int64_t)(rnd() % 1000000);
	r->received_ms = now_ms;
	r->last_seen_ms = now_ms;
	r->updates++;
	r->rev = ++*rev;
}

/* Both ways, for every change a record goes through: the cached bytes are
 * always the bytes render_record gives, and the cache answers most. */
START_TEST(cached_is_rendered)
{
	struct rec *recs[NREC];
	struct buf a, b;
	int64_t rev = 1000, now = fake_now_ms;
	uint64_t h0, m0, h1, m1;

	ix = index_new();
	ck_assert_ptr_nonnull(ix);
	index_set_payload_source(ix, fetch_rows, NULL, NULL, NULL);
	for (int i = 0; i < NREC; i++) {
		snprintf(store_rows[i].topic, sizeof(store_rows[i].topic), i % 7 ? "site/r%d/t" : "s\"\\%d\x01", i);
		recs[i] = index_add(ix, store_rows[i].topic, strlen(store_rows[i].topic), NULL, 0, 0);
		ck_assert_ptr_nonnull(recs[i]);
		new_value(recs[i], i, &rev, now);
	}
	buf_init(&a, 0);
	buf_init(&b, 0);
	render_cache_stats(&h0, &m0);
	for (int step = 0; step < 20000; step++) {
		int i = (int)(rnd() % NREC);
		struct rec *r = recs[i];

		switch (rnd() % 14) {
		case 0:
			new_value(r, i, &rev, now);
			break;
		case 1: /* a confirmation */
			r->last_seen_ms = now - (int64_t)(rnd() % 3);
			break;
		case 2: /* stale, and why; fresh again */
			if (r->flags & REC_STALE) {
				r->flags &= (uint16_t)~REC_STALE;
				rec_set_stale_reason(r, STALE_REASON_NONE);
				r->stale_since_ms = 0;
			} else {
				r->flags |= REC_STALE;
				rec_set_stale_reason(r, (enum stale_reason)(1 + rnd() % 3));
				r->stale_since_ms = now;
			}
			break;
		case 3:
			r->cadence_ms = (uint32_t)(rnd() % 3) * 5000;
			r->cadence_source = (uint8_t)(rnd() % CADENCE_SOURCE_MAX);
			break;
		case 4: /* committed: the payload now comes from the file */
			if (!(r->flags & REC_IN_FILE))
				rec_drop_payload(r);
			break;
		case 5: /* what the JSON does not show */
			r->heap_idx = (uint32_t)rnd();
			r->learn = (uint8_t)rnd();
			r->alert_state = (uint8_t)rnd();
			r->flags ^= REC_DIRTY;
			break;
		case 6: /* the clock, forward far (age_ms's digits change), or behind last_seen */
			now += (int64_t)(rnd() % 2 ? rnd() % 100000000 : 1);
			if (rnd() % 8 == 0)
				now = r->last_seen_ms - 5;
			break;
		case 7: /* a new value in the same millisecond, as long, updates saturated */
			if (store_rows[i].len && !(r->flags & REC_IN_FILE)) {
				store_rows[i].payload[0] ^= 1;
				ck_assert_int_eq(rec_set_payload(r, store_rows[i].payload, store_rows[i].len), 0);
				r->flags &= (uint16_t)~REC_IS_JSON;
				r->rev = ++rev;
			}
			break;
		case 8: /* stale still, since another time, or for another reason */
			if (r->flags & REC_STALE && rnd() % 2)
				r->stale_since_ms -= 1 + (int64_t)(rnd() % 1000);
			else if (r->flags & REC_STALE)
				rec_set_stale_reason(r, (enum stale_reason)(1 + (rec_stale_reason(r) % 3)));
			break;
		case 9: /* one shown field alone, rev unchanged: the key must hold each */
			switch (rnd() % 8) {
			case 0:
				r->ts_ns += 1000000;
				break;
			case 1:
				r->received_ms += 1;
				break;
			case 2:
				r->updates += 1;
				break;
			case 3: /* a shorter payload under the same rev */
				if (store_rows[i].len > 1 && !(r->flags & REC_IN_FILE)) {
					store_rows[i].len--;
					ck_assert_int_eq(rec_set_payload(r, store_rows[i].payload,
									 store_rows[i].len), 0);
					r->flags &= (uint16_t)~REC_IS_JSON;
				}
				break;
			case 4: /* JSON shown as text */
				r->flags &= (uint16_t)~REC_IS_JSON;
				break;
			case 5:
				r->flags ^= REC_TS_PAYLOAD;
				break;
			case 6:
				r->flags ^= REC_RETAINED;
				break;
			default: /* the stale flag alone, reason and since unchanged */
				r->flags ^= REC_STALE;
				break;
			}
			break;
		default:
			break;
		}
		buf_reset(&a);
		buf_reset(&b);
		ck_assert_int_eq(render_record(&a, ix, r, now), 0);
		ck_assert_int_eq(buf_puts(&b, "x,"), 0); /* not at the start of the buffer */
		ck_assert_int_eq(render_record_cached(&b, ix, r, now), 0);
		ck_assert_uint_eq(b.len, a.len + 2);
		ck_assert_msg(memcmp(b.data + 2, a.data, a.len) == 0, "step %d:\n%s\n%s", step, a.data,
			      b.data + 2);
		ck_assert_uint_eq(strlen(b.data), b.len);
	}
	render_cache_stats(&h1, &m1);
	ck_assert_uint_gt(h1 - h0, 7000);
	ck_assert_uint_gt(m1 - m0, 3000);
	buf_free(&a);
	buf_free(&b);
	index_free(ix);
	ix = NULL;
}
END_TEST

/* More records than the cache has ways for: full sets give up a way in
 * turn, and every record still renders as render_record has it. */
START_TEST(cache_eviction)
{
	enum { N = 6000 };
	static struct rec *recs[N];
	struct buf a, b;
	uint64_t h0, m0, h1, m1;
	char t[32], v[32];

	ix = index_new();
	ck_assert_ptr_nonnull(ix);
	for (int i = 0; i < N; i++) {
		int tl = snprintf(t, sizeof(t), "e/%05d", i);
		int vl = snprintf(v, sizeof(v), "{\"v\":%d}", i * 7);

		recs[i] = index_add(ix, t, (size_t)tl, v, (size_t)vl, REC_IS_JSON);
		ck_assert_ptr_nonnull(recs[i]);
		recs[i]->rev = 10 + i;
	}
	buf_init(&a, 0);
	buf_init(&b, 0);
	render_cache_stats(&h0, &m0);
	for (int pass = 0; pass < 3; pass++)
		for (int i = 0; i < N; i++) {
			buf_reset(&a);
			buf_reset(&b);
			ck_assert_int_eq(render_record(&a, ix, recs[i], fake_now_ms + pass), 0);
			ck_assert_int_eq(render_record_cached(&b, ix, recs[i], fake_now_ms + pass), 0);
			ck_assert_uint_eq(a.len, b.len);
			ck_assert_msg(memcmp(a.data, b.data, a.len) == 0, "%s\n%s", a.data, b.data);
		}
	render_cache_stats(&h1, &m1);
	/* 4,096 ways for 6,000 records: some stay, most are replaced. */
	ck_assert_uint_eq(h1 - h0 + m1 - m0, 3 * N);
	ck_assert_uint_gt(h1 - h0, 1000);
	ck_assert_uint_gt(m1 - m0, N + 1000);
	buf_free(&a);
	buf_free(&b);
	index_free(ix);
	ix = NULL;
}
END_TEST

/* The cache names a record by its index too: a new index that reuses the
 * freed one's memory, at the same revision, shows its own record. */
START_TEST(cache_is_per_index)
{
	const void *prev = NULL;
	int reused = 0;

	for (int round = 0; round < 6; round++) {
		const char *topic = round % 2 ? "b" : "a";
		struct rec *r;
		struct buf b;

		ix = index_new();
		r = index_add(ix, topic, 1, "1", 1, REC_IS_JSON);
		ck_assert_ptr_nonnull(r);
		r->rev = 5;
		r->ts_ns = r->received_ms = r->last_seen_ms = 0;
		reused += (const void *)r == prev;
		prev = r;
		buf_init(&b, 0);
		ck_assert_int_eq(render_record_cached(&b, ix, r, 0), 0);
		ck_assert_int_eq(render_record_cached(&b, ix, r, 0), 0);
		ck_assert_msg(strncmp(b.data, round % 2 ? "{\"topic\":\"b\"" : "{\"topic\":\"a\"", 12) == 0,
			      "%s", b.data);
		buf_free(&b);
		index_free(ix);
		ix = NULL;
	}
	/* malloc hands the freed block back (from the second round, once its
	 * mmap threshold has grown): the case is exercised, not assumed.
	 * ASan's quarantine never reuses a block this soon. */
#if !defined(__SANITIZE_ADDRESS__)
	ck_assert_int_gt(reused, 1);
#else
	(void)reused;
#endif
}
END_TEST

/* A point read without the lock keeps and finds a record by its address
 * as a copy of its fields shows it, never as the record shows it now. */
START_TEST(cache_from_snapshot)
{
	struct rec *r, snap;
	struct buf a, b;

	ix = index_new();
	r = index_add(ix, "p/k", 3, "{\"v\":1}", 7, REC_IS_JSON);
	ck_assert_ptr_nonnull(r);
	r->rev = 9;
	r->last_seen_ms = fake_now_ms - 50;
	memcpy(&snap, r, sizeof(snap));
	r->last_seen_ms = fake_now_ms; /* a confirmation since the copy */
	buf_init(&a, 0);
	buf_init(&b, 0);
	ck_assert_int_eq(render_cached(&b, ix, r, &snap, fake_now_ms), -EAGAIN);
	ck_assert_uint_eq(b.len, 0);
	ck_assert_int_eq(render_record_keep(&a, ix, r, &snap, "p/k", "{\"v\":1}", 7, fake_now_ms), 0);
	ck_assert_ptr_nonnull(strstr(a.data, "\"age_ms\":50,"));
	ck_assert_int_eq(render_cached(&b, ix, r, r, fake_now_ms), -EAGAIN);
	ck_assert_int_eq(render_cached(&b, ix, r, &snap, fake_now_ms), 0);
	ck_assert_str_eq(a.data, b.data);
	buf_reset(&b);
	ck_assert_int_eq(render_record_cached(&b, ix, r, fake_now_ms), 0);
	ck_assert_ptr_nonnull(strstr(b.data, "\"age_ms\":0,"));
	buf_free(&a);
	buf_free(&b);
	index_free(ix);
	ix = NULL;
}
END_TEST

/* A record outside any index is never cached (its address and revision do
 * not name it), and a buffer that cannot take a cached record is an error
 * with the buffer's limit, as uncached. */
START_TEST(cache_limits)
{
	struct rec *r = mk("k", "{\"v\":1}", 7, REC_IS_JSON);
	uint64_t h0, m0, h1, m1;
	struct buf b;
	size_t len;

	render_cache_stats(&h0, &m0);
	buf_init(&b, 0);
	for (int i = 0; i < 3; i++)
		ck_assert_int_eq(render_record_cached(&b, NULL, r, fake_now_ms), 0);
	render_cache_stats(&h1, &m1);
	ck_assert_uint_eq(h1 - h0, 0);
	ck_assert_uint_eq(m1 - m0, 0);
	buf_free(&b);
	rec_free(r);

	ix = index_new();
	r = index_add(ix, "k", 1, "{\"v\":1}", 7, REC_IS_JSON);
	ck_assert_ptr_nonnull(r);
	r->rev = 3;
	buf_init(&b, 0);
	ck_assert_int_eq(render_record_cached(&b, ix, r, fake_now_ms), 0);
	len = b.len;
	buf_free(&b);
	buf_init(&b, 40);
	ck_assert_int_eq(render_record_cached(&b, ix, r, fake_now_ms), -E2BIG);
	buf_free(&b);
	/* A buffer with room for the record and no byte more takes it
	 * (rendered: the copy wants room for the longest age). */
	buf_init(&b, len);
	ck_assert_int_eq(render_record_cached(&b, ix, r, fake_now_ms), 0);
	ck_assert_uint_eq(b.len, len);
	buf_free(&b);
	buf_init(&b, 0);
	ck_assert_int_eq(render_record_cached(&b, ix, r, fake_now_ms), 0);
	ck_assert_uint_eq(b.len, len);
	buf_free(&b);
	render_cache_stats(&h1, &m1);
	ck_assert_uint_eq(h1 - h0, 1);
	ck_assert_uint_eq(m1 - m0, 3);
	index_free(ix);
	ix = NULL;
}
END_TEST

/* ---- rejected messages (GET /v1/rejects) ------------------------------ */

static json_t *render_rej(struct rejects *r)
{
	struct buf b;
	json_error_t err;
	json_t *j;

	buf_init(&b, 1 << 20);
	ck_assert_int_eq(render_rejects(&b, r), 0);
	ck_assert_ptr_null(memchr(b.data, '\n', b.len));
	j = json_loadb(b.data, b.len, 0, &err);
	if (!j)
		ck_abort_msg("not JSON (%s): %s", err.text, b.data);
	buf_free(&b);
	ck_assert(json_is_array(json_object_get(j, "items")));
	return j;
}

static json_t *rej_item(json_t *j, size_t i)
{
	json_t *it = json_array_get(json_object_get(j, "items"), i);

	ck_assert_ptr_nonnull(it);
	return it;
}

static struct rejects *rej_new(size_t cap)
{
	struct rejects *r = rejects_new(cap);

	ck_assert_ptr_nonnull(r);
	log_set_level(LOG_LEVEL_ERROR);   /* rejects_add's warnings would clutter the output */
	return r;
}

START_TEST(rejects_empty)
{
	struct rejects *r = rej_new(4);
	json_t *j = render_rej(r);

	ck_assert_uint_eq(json_array_size(json_object_get(j, "items")), 0);
	json_decref(j);
	rejects_free(r);
}
END_TEST

START_TEST(rejects_fields_newest_first)
{
	struct rejects *r = rej_new(8);
	const unsigned char bin[] = { 0x00, 0x01, 0x02, 0xff };
	json_t *j, *it;

	rejects_add(r, "dc1/t", 5, "{\"ts\":99}", 9, 9, REJECT_FUTURE_TS, fake_now_ms);
	rejects_add(r, "bin", 3, bin, sizeof(bin), sizeof(bin), REJECT_NOT_JSON, fake_now_ms);
	j = render_rej(r);
	ck_assert_uint_eq(json_array_size(json_object_get(j, "items")), 2);
	it = rej_item(j, 0);
	ck_assert_str_eq(str(it, "topic"), "bin");
	ck_assert_str_eq(str(it, "payload_base64"), "AAEC/w==");
	ck_assert_ptr_null(json_object_get(it, "payload_text"));
	it = rej_item(j, 1);
	ck_assert_str_eq(str(it, "topic"), "dc1/t");
	ck_assert_str_eq(str(it, "reason"), "future_timestamp");
	ck_assert_str_eq(str(it, "time"), "2026-11-22T02:10:02.123Z");
	ck_assert_int_eq(json_integer_value(json_object_get(it, "payload_size")), 9);
	ck_assert_str_eq(str(it, "payload_text"), "{\"ts\":99}");
	ck_assert_ptr_null(json_object_get(it, "payload_base64"));
	ck_assert_ptr_null(json_object_get(it, "topic_truncated"));
	json_decref(j);
	rejects_free(r);
}
END_TEST

START_TEST(rejects_payload_cut)
{
	struct rejects *r = rej_new(2);
	char big[1000];
	char utf[80];
	json_t *j, *it;

	memset(big, 'z', sizeof(big));
	rejects_add(r, "big", 3, big, sizeof(big), 300000, REJECT_TOO_LARGE, fake_now_ms);
	/* "a" + "é" x 39: the 64-byte cut falls inside a character */
	utf[0] = 'a';
	for (int i = 0; i < 39; i++) {
		utf[1 + 2 * i] = (char)0xc3;
		utf[2 + 2 * i] = (char)0xa9;
	}
	rejects_add(r, "utf", 3, utf, 79, 79, REJECT_NOT_JSON, fake_now_ms);
	j = render_rej(r);
	it = rej_item(j, 1);
	ck_assert_int_eq(json_integer_value(json_object_get(it, "payload_size")), 300000);
	ck_assert_uint_eq(strlen(str(it, "payload_text")), REJECTS_KEEP_BYTES);
	it = rej_item(j, 0);
	ck_assert_int_eq(json_integer_value(json_object_get(it, "payload_size")), 79);
	ck_assert_ptr_nonnull(str(it, "payload_text"));
	ck_assert_uint_eq(strlen(str(it, "payload_text")), REJECTS_KEEP_BYTES - 1);
	ck_assert_int_eq(memcmp(str(it, "payload_text"), utf, REJECTS_KEEP_BYTES - 1), 0);
	json_decref(j);
	rejects_free(r);
}
END_TEST

START_TEST(rejects_hostile_topic_is_valid_json)
{
	struct rejects *r = rej_new(4);
	const char evil[] = "a\"b\\c\n\x01/\xff\xfe/\xc3\xa9";
	char *longt = malloc(5000);
	json_t *j;

	ck_assert_ptr_nonnull(longt);
	memset(longt, 'L', 5000);
	rejects_add(r, evil, sizeof(evil) - 1, "", 0, 0, REJECT_BAD_TS, fake_now_ms);
	rejects_add(r, longt, 5000, "p", 1, 1, REJECT_TOPIC_LEN, fake_now_ms);
	free(longt);
	j = render_rej(r);
	ck_assert(json_is_true(json_object_get(rej_item(j, 0), "topic_truncated")));
	ck_assert_uint_eq(strlen(str(rej_item(j, 0), "topic")), 1024);
	ck_assert_str_eq(str(rej_item(j, 0), "reason"), "topic_too_long");
	/* invalid bytes become U+FFFD, the rest survives */
	ck_assert_str_eq(str(rej_item(j, 1), "topic"),
			 "a\"b\\c\n\x01/\xef\xbf\xbd\xef\xbf\xbd/\xc3\xa9");
	ck_assert_str_eq(str(rej_item(j, 1), "payload_text"), "");
	json_decref(j);
	rejects_free(r);
}
END_TEST

START_TEST(rejects_respect_buf_limit)
{
	struct rejects *r = rej_new(4);
	struct buf b;

	rejects_add(r, "t", 1, "x", 1, 1, REJECT_NOT_JSON, fake_now_ms);
	buf_init(&b, 16);
	ck_assert_int_eq(render_rejects(&b, r), -E2BIG);
	buf_free(&b);
	rejects_free(r);
}
END_TEST

static Suite *render_suite(void)
{
	Suite *s = suite_create("render");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, json_record);
	tcase_add_test(tc, json_multiline_and_scalars);
	tcase_add_test(tc, text_record);
	tcase_add_test(tc, binary_record);
	tcase_add_test(tc, stale_record);
	tcase_add_test(tc, null_cadence);
	tcase_add_test(tc, age_never_negative);
	tcase_add_test(tc, escaped_topic);
	tcase_add_test(tc, tombstone);
	tcase_add_test(tc, error_body);
	tcase_add_test(tc, buffer_limit);
	tcase_add_test(tc, payload_from_source);
	tcase_add_test(tc, numbers_every_width);
	tcase_add_test(tc, cached_is_rendered);
	tcase_add_test(tc, cache_limits);
	tcase_add_test(tc, cache_from_snapshot);
	tcase_add_test(tc, cache_eviction);
	tcase_add_test(tc, cache_is_per_index);
	tcase_add_test(tc, rejects_empty);
	tcase_add_test(tc, rejects_fields_newest_first);
	tcase_add_test(tc, rejects_payload_cut);
	tcase_add_test(tc, rejects_hostile_topic_is_valid_json);
	tcase_add_test(tc, rejects_respect_buf_limit);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(render_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
