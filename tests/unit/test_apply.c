/* SPDX-License-Identifier: MIT */
/* test_apply.c: one test per apply rule of the contract, including ties, deletes and last_seen. */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mirror/state/apply.h"
#include "clock_fake.h"

#define MS 1000000LL                      /* ns per ms */

static struct index *ix;
static int64_t rev;
static const struct apply_limits lim = { .future_skew_ms = 300000, .max_keys = 100 };

static void setup(void)
{
	ix = index_new();
	ck_assert_ptr_nonnull(ix);
	rev = 0;
}

static void teardown(void)
{
	index_free(ix);
	ix = NULL;
}

struct out {
	struct rec *r;
	bool live;
	enum reject_reason why;
};

/* Apply payload p (may be "" = delete) on topic t at ts_ms, retained or live, at now_ms. */
static enum apply_result put(const char *t, const char *p, int64_t ts_ms, bool retained,
			     int64_t now_ms, struct out *o)
{
	struct msg m = {
		.topic = t, .topic_len = strlen(t),
		.payload = p, .payload_len = strlen(p),
		.ts_ns = ts_ms * MS, .recv_ms = now_ms,
		.retained = retained, .ts_from_payload = true, .is_json = p[0] == '{',
	};
	struct out tmp;

	if (!o)
		o = &tmp;
	return apply_message(ix, &m, now_ms, &lim, &rev, &o->r, &o->live, &o->why, NULL);
}

static struct rec *get(const char *t)
{
	return index_get(ix, t, strlen(t));
}

static const int64_t T = 1795313400000; /* a producer timestamp, before fake_now_ms */

START_TEST(names)
{
	ck_assert_str_eq(apply_result_name(APPLY_OUT_OF_ORDER), "out_of_order");
	ck_assert_str_eq(apply_result_name(APPLY_APPLIED), "applied");
	ck_assert_str_eq(reject_reason_name(REJECT_FUTURE_TS), "future_timestamp");
	ck_assert_str_eq(reject_reason_name(REJECT_MAX_KEYS), "max_keys");
	ck_assert_str_eq(apply_result_name(APPLY_RESULT_MAX), "unknown");
}
END_TEST

START_TEST(new_key_applies)
{
	struct out o;
	int64_t now = fake_now_ms;

	ck_assert_int_eq(put("a/b", "{\"v\":1}", T, false, now, &o), APPLY_APPLIED);
	ck_assert_ptr_nonnull(o.r);
	ck_assert_ptr_eq(o.r, get("a/b"));
	ck_assert_int_eq(o.why, REJECT_NONE);
	ck_assert(o.live);
	ck_assert_str_eq(o.r->payload, "{\"v\":1}");
	ck_assert_int_eq(o.r->ts_ns, T * MS);
	ck_assert_int_eq(o.r->received_ms, now);
	ck_assert_int_eq(o.r->last_seen_ms, now);
	ck_assert_uint_eq(o.r->updates, 1);
	ck_assert_int_eq(o.r->rev, 1);
	ck_assert_int_eq(rev, 1);
	ck_assert_uint_eq(o.r->flags, REC_TS_PAYLOAD | REC_IS_JSON); /* dirty: the mirror's */
	ck_assert_uint_eq(index_live(ix), 1);
	ck_assert_uint_eq(index_size(ix), 1);
}
END_TEST

START_TEST(future_skew_rejected)
{
	struct out o;
	int64_t now = fake_now_ms;

	/* exactly at the bound is fine, 1 ms beyond is not */
	ck_assert_int_eq(put("k", "1", now + 300000, false, now, &o), APPLY_APPLIED);
	ck_assert_int_eq(put("k", "2", now + 300001, false, now, &o), APPLY_REJECTED);
	ck_assert_int_eq(o.why, REJECT_FUTURE_TS);
	ck_assert_ptr_null(o.r);
	ck_assert(!o.live);
	ck_assert_str_eq(get("k")->payload, "1");
	ck_assert_int_eq(rev, 1);
	ck_assert_int_eq(put("new", "2", now + 400000, false, now, &o), APPLY_REJECTED);
	ck_assert_ptr_null(get("new"));
	ck_assert_uint_eq(index_size(ix), 1);
}
END_TEST

START_TEST(max_keys_counts_tombstones)
{
	struct out o;
	char t[16];
	int64_t now = fake_now_ms;

	for (int i = 0; i < 99; i++) {
		snprintf(t, sizeof(t), "k%d", i);
		ck_assert_int_eq(put(t, "v", T, false, now, NULL), APPLY_APPLIED);
	}
	/* the 100th record is a tombstone of an unknown key */
	ck_assert_int_eq(put("gone", "", T, false, now, NULL), APPLY_DELETED);
	ck_assert_uint_eq(index_size(ix), 100);
	ck_assert_uint_eq(index_live(ix), 99);
	ck_assert_int_eq(put("k100", "v", T, false, now, &o), APPLY_REJECTED);
	ck_assert_int_eq(o.why, REJECT_MAX_KEYS);
	ck_assert_ptr_null(get("k100"));
	/* known keys still update */
	ck_assert_int_eq(put("k5", "w", T + 1, false, now, NULL), APPLY_APPLIED);
	ck_assert_int_eq(put("gone", "back", T + 1, false, now, NULL), APPLY_APPLIED);
	ck_assert_uint_eq(index_live(ix), 100);
}
END_TEST

START_TEST(newer_applies)
{
	struct out o;
	int64_t now = fake_now_ms;

	put("k", "old", T, false, now - 1000, NULL);
	ck_assert_int_eq(put("k", "new", T + 1, false, now, &o), APPLY_APPLIED);
	ck_assert_str_eq(o.r->payload, "new");
	ck_assert_int_eq(o.r->ts_ns, (T + 1) * MS);
	ck_assert_uint_eq(o.r->updates, 2);
	ck_assert_int_eq(o.r->rev, 2);
	ck_assert_int_eq(o.r->received_ms, now);
	ck_assert_int_eq(o.r->last_seen_ms, now);
	ck_assert(o.live);
}
END_TEST

START_TEST(older_out_of_order)
{
	struct out o;
	int64_t now = fake_now_ms;

	put("k", "cur", T, false, now - 1000, NULL);
	ck_assert_int_eq(put("k", "older", T - 1, false, now, &o), APPLY_OUT_OF_ORDER);
	ck_assert_ptr_eq(o.r, get("k"));
	ck_assert(!o.live);
	ck_assert_str_eq(o.r->payload, "cur");
	ck_assert_uint_eq(o.r->updates, 1);
	ck_assert_int_eq(o.r->rev, 1);
	/* an older live message does not refresh last_seen */
	ck_assert_int_eq(o.r->last_seen_ms, now - 1000);
	ck_assert_int_eq(o.r->received_ms, now - 1000);
}
END_TEST

START_TEST(same_duplicate)
{
	struct out o;
	int64_t now = fake_now_ms;

	put("k", "v", T, false, now - 1000, NULL);
	ck_assert_int_eq(put("k", "v", T, false, now, &o), APPLY_DUPLICATE);
	ck_assert(o.live);
	ck_assert_int_eq(o.r->last_seen_ms, now);
	ck_assert_int_eq(o.r->received_ms, now - 1000);
	ck_assert_uint_eq(o.r->updates, 1);
	ck_assert_int_eq(o.r->rev, 1);
	ck_assert_int_eq(rev, 1);
	ck_assert(!(o.r->flags & REC_DIRTY));
}
END_TEST

/* Marking a record for the store is the mirror's (mirror_mark_dirty):
 * an apply decides and changes the value, and leaves REC_DIRTY as it
 * found it, set or clear, whatever the outcome. */
START_TEST(dirty_bit_untouched)
{
	static const struct { const char *payload; int64_t ts; enum apply_result want; } step[] = {
		{ "v", T + 1, APPLY_APPLIED },
		{ "v", T + 1, APPLY_DUPLICATE },
		{ "u", T, APPLY_OUT_OF_ORDER },
		{ "", T + 2, APPLY_DELETED },
		{ "w", T + 3, APPLY_APPLIED },
	};
	static const char *const topic[2] = { "clean", "dirty" };
	struct out o;

	for (int dirty = 0; dirty < 2; dirty++) {
		ck_assert_int_eq(put(topic[dirty], "v", T, false, fake_now_ms, &o), APPLY_APPLIED);
		ck_assert(!(o.r->flags & REC_DIRTY));
		if (dirty)
			o.r->flags |= REC_DIRTY;
		for (size_t i = 0; i < sizeof(step) / sizeof(step[0]); i++) {
			ck_assert_int_eq(put(topic[dirty], step[i].payload, step[i].ts, false,
					     fake_now_ms, &o), step[i].want);
			ck_assert_int_eq((get(topic[dirty])->flags & REC_DIRTY) != 0, dirty);
		}
	}
}
END_TEST

START_TEST(tie_greater_wins)
{
	struct out o;
	int64_t now = fake_now_ms;

	put("k", "abc", T, false, now, NULL);
	ck_assert_int_eq(put("k", "abd", T, false, now, &o), APPLY_APPLIED);
	ck_assert_str_eq(o.r->payload, "abd");
	ck_assert_int_eq(put("k", "abc", T, false, now, &o), APPLY_OUT_OF_ORDER);
	ck_assert_str_eq(o.r->payload, "abd");
	/* a shorter prefix is smaller */
	ck_assert_int_eq(put("k", "ab", T, false, now, &o), APPLY_OUT_OF_ORDER);
	ck_assert_int_eq(put("k", "abdd", T, false, now, &o), APPLY_APPLIED);
	ck_assert_str_eq(o.r->payload, "abdd");
	/* unsigned bytes: 0xff > 'z' */
	ck_assert_int_eq(put("k", "\xff", T, false, now, &o), APPLY_APPLIED);
	ck_assert_int_eq(put("k", "zzzzz", T, false, now, &o), APPLY_OUT_OF_ORDER);
	ck_assert_str_eq(get("k")->payload, "\xff");
	ck_assert_uint_eq(get("k")->updates, 4);
}
END_TEST

START_TEST(tie_order_independent)
{
	put("x", "B", T, false, fake_now_ms, NULL);
	put("x", "A", T, false, fake_now_ms, NULL);
	put("y", "A", T, false, fake_now_ms, NULL);
	put("y", "B", T, false, fake_now_ms, NULL);
	ck_assert_str_eq(get("x")->payload, "B");
	ck_assert_str_eq(get("y")->payload, "B");
}
END_TEST

/* A source for payloads in the file: "abc" for k, or a failure. */
static bool fetch_fails;
static int fetches;

static int fetch_abc(void *ctx, const char *topic, size_t len, const void **p, size_t *n)
{
	(void)ctx;
	(void)topic;
	(void)len;
	fetches++;
	if (fetch_fails)
		return -EIO;
	*p = "abc";
	*n = 3;
	return 0;
}

/* Ties against a payload only the file holds: equal bytes by hash (no
 * read), different bytes by reading it back; a failed read rejects the
 * message with its own reason instead of ordering it blindly. */
START_TEST(tie_against_payload_in_file)
{
	struct out o;
	int64_t now = fake_now_ms;

	index_set_payload_source(ix, fetch_abc, NULL, NULL, NULL);
	fetch_fails = true;
	fetches = 0;
	put("k", "abc", T, false, now, NULL);
	rec_drop_payload(get("k"));
	ck_assert(get("k")->flags & REC_IN_FILE);
	ck_assert_int_eq(put("k", "abc", T, false, now, &o), APPLY_DUPLICATE);
	ck_assert_int_eq(put("k", "abc", T, true, now, &o), APPLY_DUPLICATE);
	ck_assert_int_eq(fetches, 0);
	ck_assert_int_eq(put("k", "abd", T, false, now, &o), APPLY_REJECTED);
	ck_assert_int_eq(o.why, REJECT_STORE_READ);
	ck_assert_str_eq(reject_reason_name(REJECT_STORE_READ), "store_read_error");
	ck_assert(get("k")->flags & REC_IN_FILE);
	fetch_fails = false;
	ck_assert_int_eq(put("k", "abb", T, false, now, &o), APPLY_OUT_OF_ORDER);
	ck_assert_int_eq(put("k", "abd", T, false, now, &o), APPLY_APPLIED);
	ck_assert(!(get("k")->flags & REC_IN_FILE));
	ck_assert_str_eq(get("k")->payload, "abd");
	/* The failed read, then one: the second tie at the same revision is
	 * answered by this thread's read cache (index.c). */
	ck_assert_int_eq(fetches, 2);
	/* A newer timestamp never needs the old bytes. */
	rec_drop_payload(get("k"));
	fetch_fails = true;
	ck_assert_int_eq(put("k", "a", T + 1, false, now, &o), APPLY_APPLIED);
	ck_assert_int_eq(fetches, 2);
	index_set_payload_source(ix, NULL, NULL, NULL, NULL);
}
END_TEST

START_TEST(delete_writes_tombstone)
{
	struct out o;
	int64_t now = fake_now_ms;

	put("k", "v", T, false, now, NULL);
	ck_assert_uint_eq(index_live(ix), 1);
	ck_assert_int_eq(put("k", "", T + 5, false, now, &o), APPLY_DELETED);
	ck_assert(o.r->flags & REC_DELETED);
	ck_assert(!(o.r->flags & REC_DIRTY));
	ck_assert(!(o.r->flags & REC_IS_JSON));
	ck_assert_ptr_null(o.r->payload);
	ck_assert_uint_eq(o.r->payload_len, 0);
	ck_assert_int_eq(o.r->ts_ns, (T + 5) * MS);
	ck_assert_int_eq(o.r->rev, 2);
	ck_assert(!o.live);
	ck_assert_uint_eq(index_live(ix), 0);
	ck_assert_uint_eq(index_size(ix), 1);
	/* an older message cannot bring it back */
	ck_assert_int_eq(put("k", "old", T + 4, false, now, &o), APPLY_OUT_OF_ORDER);
	ck_assert(o.r->flags & REC_DELETED);
	ck_assert_uint_eq(index_live(ix), 0);
}
END_TEST

START_TEST(newer_resurrects)
{
	struct out o;
	int64_t now = fake_now_ms;

	put("k", "v", T, false, now, NULL);
	put("k", "w", T + 1, false, now, NULL);
	put("k", "", T + 5, false, now, NULL);
	ck_assert_int_eq(put("k", "back", T + 6, false, now, &o), APPLY_APPLIED);
	ck_assert(!(o.r->flags & REC_DELETED));
	ck_assert_str_eq(o.r->payload, "back");
	ck_assert_uint_eq(o.r->updates, 1);  /* a new life */
	ck_assert(o.live);
	ck_assert_uint_eq(index_live(ix), 1);
}
END_TEST

START_TEST(delete_unknown_key)
{
	struct out o;
	int64_t now = fake_now_ms;

	ck_assert_int_eq(put("k", "", T + 5, false, now, &o), APPLY_DELETED);
	ck_assert_ptr_nonnull(o.r);
	ck_assert(o.r->flags & REC_DELETED);
	ck_assert_int_eq(o.r->rev, 1);
	ck_assert_uint_eq(index_size(ix), 1);
	ck_assert_uint_eq(index_live(ix), 0);
	/* an older message arriving after cannot create the key */
	ck_assert_int_eq(put("k", "early", T, false, now, &o), APPLY_OUT_OF_ORDER);
	ck_assert_uint_eq(index_live(ix), 0);
	ck_assert_ptr_null(get("k")->payload);
}
END_TEST

START_TEST(delete_twice_duplicate)
{
	struct out o;
	int64_t now = fake_now_ms;

	put("k", "v", T, false, now, NULL);
	put("k", "", T + 5, false, now, NULL);
	ck_assert_int_eq(put("k", "", T + 5, false, now, &o), APPLY_DUPLICATE);
	ck_assert(!o.live);
	ck_assert_int_eq(rev, 2);
	ck_assert_uint_eq(index_live(ix), 0);
}
END_TEST

START_TEST(delete_newer_tombstone)
{
	struct out o;
	int64_t now = fake_now_ms;

	put("k", "", T + 5, false, now, NULL);
	ck_assert_int_eq(put("k", "", T + 9, false, now, &o), APPLY_DELETED);
	ck_assert_int_eq(o.r->ts_ns, (T + 9) * MS);
	ck_assert_int_eq(o.r->rev, 2);
	ck_assert_uint_eq(index_live(ix), 0);
	/* ...so that a message between the two deletes stays ignored */
	ck_assert_int_eq(put("k", "mid", T + 7, false, now, &o), APPLY_OUT_OF_ORDER);
	/* an older delete is out of order */
	ck_assert_int_eq(put("k", "", T + 6, false, now, &o), APPLY_OUT_OF_ORDER);
	ck_assert_int_eq(get("k")->ts_ns, (T + 9) * MS);
}
END_TEST

START_TEST(value_beats_delete_at_same_ts)
{
	struct out o;

	put("a", "v", T, false, fake_now_ms, NULL);
	ck_assert_int_eq(put("a", "", T, false, fake_now_ms, &o), APPLY_OUT_OF_ORDER);
	ck_assert_str_eq(get("a")->payload, "v");
	put("b", "", T, false, fake_now_ms, NULL);
	ck_assert_int_eq(put("b", "v", T, false, fake_now_ms, &o), APPLY_APPLIED);
	ck_assert_str_eq(get("b")->payload, "v");
	ck_assert_uint_eq(index_live(ix), 2);
}
END_TEST

START_TEST(retained_sets_last_seen_to_obs)
{
	struct out o;
	int64_t now = fake_now_ms;

	ck_assert_int_eq(put("k", "v", now - 60000, true, now, &o), APPLY_APPLIED);
	ck_assert(!o.live);
	ck_assert(o.r->flags & REC_RETAINED);
	ck_assert_int_eq(o.r->last_seen_ms, now - 60000);
	ck_assert_int_eq(o.r->received_ms, now);
}
END_TEST

START_TEST(retained_last_seen_clamped_to_now)
{
	struct out o;
	int64_t now = fake_now_ms;

	/* within future_skew, but last_seen never later than the clock */
	ck_assert_int_eq(put("k", "v", now + 2000, true, now, &o), APPLY_APPLIED);
	ck_assert_int_eq(o.r->last_seen_ms, now);
}
END_TEST

START_TEST(retained_never_moves_last_seen_back)
{
	struct out o;
	int64_t now = fake_now_ms;

	put("k", "v", now - 90000, false, now - 1000, NULL);     /* live, seen at now-1000 */
	ck_assert_int_eq(put("k", "w", now - 50000, true, now, &o), APPLY_APPLIED);
	ck_assert_int_eq(o.r->last_seen_ms, now - 1000);
	ck_assert(o.r->flags & REC_RETAINED);
	ck_assert(!o.live);
}
END_TEST

START_TEST(retained_duplicate_no_refresh)
{
	struct out o;
	int64_t now = fake_now_ms;

	put("k", "v", now - 60000, true, now - 5000, NULL);
	ck_assert_int_eq(get("k")->last_seen_ms, now - 60000);
	ck_assert_int_eq(put("k", "v", now - 60000, true, now, &o), APPLY_DUPLICATE);
	ck_assert(!o.live);
	ck_assert_int_eq(o.r->last_seen_ms, now - 60000);
	/* a live duplicate of the same value does refresh */
	ck_assert_int_eq(put("k", "v", now - 60000, false, now, &o), APPLY_DUPLICATE);
	ck_assert(o.live);
	ck_assert_int_eq(o.r->last_seen_ms, now);
	/* the flag stays with the delivery that set the value */
	ck_assert(o.r->flags & REC_RETAINED);
}
END_TEST

/* A retained replay of a payload without a timestamp gets the receive time:
 * it must not count as a newer value each time the broker replays it. */
START_TEST(retained_replay_without_ts_is_duplicate)
{
	struct out o;
	int64_t now = fake_now_ms;
	struct msg m = {
		.topic = "meta", .topic_len = 4, .payload = "rack 17", .payload_len = 7,
		.ts_ns = (now - 5000) * MS, .recv_ms = now - 5000, .retained = true,
	};

	ck_assert_int_eq(apply_message(ix, &m, now - 5000, &lim, &rev, &o.r, &o.live, &o.why, NULL),
			 APPLY_APPLIED);
	int64_t rev0 = o.r->rev, seen0 = o.r->last_seen_ms;
	m.ts_ns = now * MS;   /* replayed after a reconnect: a newer receive time */
	m.recv_ms = now;
	ck_assert_int_eq(apply_message(ix, &m, now, &lim, &rev, &o.r, &o.live, &o.why, NULL),
			 APPLY_DUPLICATE);
	ck_assert_int_eq(o.r->rev, rev0);
	ck_assert_int_eq(o.r->updates, 1);
	ck_assert_int_eq(o.r->last_seen_ms, seen0);
	ck_assert(!o.live);
	/* different bytes are news, even without a timestamp */
	m.payload = "rack 18";
	ck_assert_int_eq(apply_message(ix, &m, now, &lim, &rev, &o.r, &o.live, &o.why, NULL),
			 APPLY_APPLIED);
}
END_TEST

START_TEST(live_clears_retained_flag)
{
	struct out o;
	int64_t now = fake_now_ms;

	put("k", "v", now - 60000, true, now, NULL);
	ck_assert_int_eq(put("k", "v", now - 10, false, now, &o), APPLY_APPLIED);
	ck_assert(!(o.r->flags & REC_RETAINED));
	ck_assert_int_eq(o.r->last_seen_ms, now);
}
END_TEST

START_TEST(flags_follow_message)
{
	struct out o;
	struct msg m = {
		.topic = "k", .topic_len = 1, .payload = "raw", .payload_len = 3,
		.ts_ns = T * MS, .recv_ms = fake_now_ms,
	};

	ck_assert_int_eq(apply_message(ix, &m, fake_now_ms, &lim, &rev, &o.r, &o.live, &o.why, NULL),
			 APPLY_APPLIED);
	ck_assert_uint_eq(o.r->flags, 0);
	/* the staleness engine's flags survive an apply, and the mirror's
	 * dirty bit (a change not written yet) */
	o.r->flags = REC_STALE | REC_NO_STALE | REC_DIRTY;
	o.r->stale_since_ms = 5;
	m.payload = "{}";
	m.payload_len = 2;
	m.ts_ns += MS;
	m.is_json = true;
	m.ts_from_payload = true;
	m.retained = true;
	ck_assert_int_eq(apply_message(ix, &m, fake_now_ms, &lim, &rev, NULL, NULL, NULL, NULL),
			 APPLY_APPLIED);
	ck_assert_uint_eq(o.r->flags, REC_STALE | REC_NO_STALE | REC_DIRTY | REC_IS_JSON |
			  REC_TS_PAYLOAD | REC_RETAINED);
	ck_assert_int_eq(o.r->stale_since_ms, 5);
}
END_TEST

START_TEST(rev_counts_changes_only)
{
	int64_t now = fake_now_ms;

	rev = 41;
	put("a", "1", T, false, now, NULL);              /* 42 */
	put("a", "1", T, false, now, NULL);              /* duplicate */
	put("a", "0", T - 1, false, now, NULL);          /* out of order */
	put("b", "1", T, false, now, NULL);              /* 43 */
	put("a", "", T + 1, false, now, NULL);           /* 44 */
	put("a", "x", now + 999999, false, now, NULL);   /* rejected */
	ck_assert_int_eq(rev, 44);
	ck_assert_int_eq(get("a")->rev, 44);
	ck_assert_int_eq(get("b")->rev, 43);
}
END_TEST

START_TEST(payload_bytes_kept)
{
	struct out o;
	const char bin[] = { 'a', 0, 'b', (char)0xff };
	struct msg m = {
		.topic = "bin", .topic_len = 3, .payload = bin, .payload_len = sizeof(bin),
		.ts_ns = T * MS,
	};

	ck_assert_int_eq(apply_message(ix, &m, fake_now_ms, &lim, &rev, &o.r, NULL, NULL, NULL),
			 APPLY_APPLIED);
	ck_assert_uint_eq(o.r->payload_len, 4);
	ck_assert_int_eq(memcmp(o.r->payload, bin, 4), 0);
	ck_assert_int_eq(o.r->payload[4], '\0');
	/* an embedded NUL is part of the compared bytes */
	m.payload = "a";
	m.payload_len = 1;
	ck_assert_int_eq(apply_message(ix, &m, fake_now_ms, &lim, &rev, NULL, NULL, NULL, NULL),
			 APPLY_OUT_OF_ORDER);
}
END_TEST

START_TEST(nul_in_topic_rejected)
{
	struct out o;
	struct msg m = {
		.topic = "a\0b", .topic_len = 3, .payload = "v", .payload_len = 1, .ts_ns = T * MS,
	};

	put("a", "v", T, false, fake_now_ms, NULL);
	ck_assert_int_eq(apply_message(ix, &m, fake_now_ms, &lim, &rev, &o.r, &o.live, &o.why, NULL),
			 APPLY_REJECTED);
	ck_assert_int_eq(o.why, REJECT_TOPIC_LEN);
	ck_assert_uint_eq(index_size(ix), 1);
}
END_TEST

START_TEST(no_key_limit)
{
	const struct apply_limits nolim = { .future_skew_ms = 0, .max_keys = 0 };
	struct msg m = { .topic = "k", .topic_len = 1, .payload = "v", .payload_len = 1,
			 .ts_ns = fake_now_ms * MS };

	ck_assert_int_eq(apply_message(ix, &m, fake_now_ms, &nolim, &rev, NULL, NULL, NULL, NULL),
			 APPLY_APPLIED);
	m.ts_ns += MS;
	ck_assert_int_eq(apply_message(ix, &m, fake_now_ms, &nolim, &rev, NULL, NULL, NULL, NULL),
			 APPLY_REJECTED);
}
END_TEST

static Suite *apply_suite(void)
{
	Suite *s = suite_create("apply");
	TCase *tc = tcase_create("rules");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, names);
	tcase_add_test(tc, new_key_applies);
	tcase_add_test(tc, dirty_bit_untouched);
	tcase_add_test(tc, future_skew_rejected);
	tcase_add_test(tc, max_keys_counts_tombstones);
	tcase_add_test(tc, newer_applies);
	tcase_add_test(tc, older_out_of_order);
	tcase_add_test(tc, same_duplicate);
	tcase_add_test(tc, tie_greater_wins);
	tcase_add_test(tc, tie_order_independent);
	tcase_add_test(tc, tie_against_payload_in_file);
	tcase_add_test(tc, delete_writes_tombstone);
	tcase_add_test(tc, newer_resurrects);
	tcase_add_test(tc, delete_unknown_key);
	tcase_add_test(tc, delete_twice_duplicate);
	tcase_add_test(tc, delete_newer_tombstone);
	tcase_add_test(tc, value_beats_delete_at_same_ts);
	tcase_add_test(tc, retained_sets_last_seen_to_obs);
	tcase_add_test(tc, retained_last_seen_clamped_to_now);
	tcase_add_test(tc, retained_never_moves_last_seen_back);
	tcase_add_test(tc, retained_duplicate_no_refresh);
	tcase_add_test(tc, live_clears_retained_flag);
	tcase_add_test(tc, flags_follow_message);
	tcase_add_test(tc, rev_counts_changes_only);
	tcase_add_test(tc, payload_bytes_kept);
	tcase_add_test(tc, nul_in_topic_rejected);
	tcase_add_test(tc, no_key_limit);
	tcase_add_test(tc, retained_replay_without_ts_is_duplicate);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(apply_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
