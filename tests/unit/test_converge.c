/* SPDX-License-Identifier: MIT */
/* test_converge.c: the same messages in any order, any number of times, give the same final state. */
#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mirror/state/apply.h"
#include "clock_fake.h"

#define MS INT64_C(1000000)
#define NKEYS 4
#define NMSG 40
#define PERMS 400
#define SNAP_MAX 4096

static const char *const topics[NKEYS] = { "dc1/a/temp", "dc1/a/hum", "dc1//x", "dc2/\xc3\xa9/t" };
/* Payloads that tie in interesting ways: prefixes, high bytes, the empty delete. */
static const char *const payloads[] = { "", "a", "ab", "b", "{\"v\":1}", "{\"v\":2}", "\xff", "a\xff", "" };
#define NPAYLOADS (sizeof(payloads) / sizeof(payloads[0]))

struct tmsg {
	int key;
	const char *payload;
	int64_t ts_ms;
	bool retained;
};

/* A small xorshift PRNG so that one seed means the same run everywhere. */
static uint64_t rng;
static uint32_t rnd(uint32_t n)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (uint32_t)(rng % n);
}

static void gen(struct tmsg *m, size_t n, int64_t now)
{
	for (size_t i = 0; i < n; i++) {
		m[i].key = (int)rnd(NKEYS);
		m[i].payload = payloads[rnd(NPAYLOADS)];
		/* a narrow ts range forces equal-ts ties with different payloads */
		m[i].ts_ms = now - 10000 + rnd(5);
		m[i].retained = rnd(2);
		if (rnd(20) == 0)
			m[i].ts_ms = now + 10 * 60000;      /* beyond future_skew: always rejected */
		if (i > 0 && rnd(5) == 0) {                 /* an exact copy, other retain flag */
			m[i] = m[rnd((uint32_t)i)];
			m[i].retained = !m[i].retained;
		}
	}
}

struct snap {
	char s[SNAP_MAX];
	size_t live;
	const struct index *ix;   /* the walk's, for payloads in the "file" */
};

/*
** A fake file: each key's payload as of its last "commit". apply_all
** commits a random half of the changes as it goes (the payload leaves the
** record, REC_IN_FILE), so ties are also decided against payloads that
** are only in the file: by hash when equal, by the bytes read back when not.
*/
static char *filed[NKEYS];

static int key_of(const char *topic, size_t len)
{
	for (int k = 0; k < NKEYS; k++)
		if (strlen(topics[k]) == len && memcmp(topics[k], topic, len) == 0)
			return k;
	return -1;
}

static int file_fetch(void *ctx, const char *topic, size_t len, const void **p, size_t *n)
{
	int k = key_of(topic, len);

	(void)ctx;
	if (k < 0 || !filed[k])
		return -ENOENT;
	*p = filed[k];
	*n = strlen(filed[k]);
	return 0;
}

static int snap_fn(struct rec *r, void *ctx)
{
	struct snap *sn = ctx;
	size_t len = strlen(sn->s);
	const void *p;
	size_t n;

	ck_assert_int_eq(rec_payload(sn->ix, r, &p, &n), 0);
	snprintf(sn->s + len, sizeof(sn->s) - len, "%s=%.*s@%" PRId64 "%s;", rec_topic(r),
		 (int)n, p ? (const char *)p : "", r->ts_ns,
		 (r->flags & REC_DELETED) ? "(deleted)" : "");
	if (!(r->flags & REC_DELETED))
		sn->live++;
	return 0;
}

/* The oracle: per key the maximum (ts, payload bytes), a delete being empty. */
static void expected(const struct tmsg *m, size_t n, int64_t now, int64_t skew_ms, struct snap *out)
{
	const struct tmsg *best[NKEYS] = { 0 };
	int order[NKEYS];

	for (size_t i = 0; i < n; i++) {
		const struct tmsg *b = best[m[i].key];

		if (m[i].ts_ms > now + skew_ms)
			continue;
		if (!b || m[i].ts_ms > b->ts_ms ||
		    (m[i].ts_ms == b->ts_ms && strcmp(m[i].payload, b->payload) > 0))
			best[m[i].key] = &m[i];
	}
	/* sorted by topic (strcmp is byte order) */
	for (int k = 0; k < NKEYS; k++)
		order[k] = k;
	for (int a = 0; a < NKEYS; a++)
		for (int b = a + 1; b < NKEYS; b++)
			if (strcmp(topics[order[a]], topics[order[b]]) > 0) {
				int t = order[a];
				order[a] = order[b];
				order[b] = t;
			}
	memset(out, 0, sizeof(*out));
	for (int i = 0; i < NKEYS; i++) {
		const struct tmsg *b = best[order[i]];
		size_t len = strlen(out->s);

		if (!b)
			continue;
		snprintf(out->s + len, sizeof(out->s) - len, "%s=%s@%" PRId64 "%s;", topics[order[i]],
			 b->payload, b->ts_ms * MS, b->payload[0] ? "" : "(deleted)");
		if (b->payload[0])
			out->live++;
	}
}

static void apply_all(const struct tmsg *m, const size_t *seq, size_t n, int64_t now,
		      const struct apply_limits *lim, struct snap *out, uint64_t seed, int perm)
{
	struct index *ix = index_new();
	int64_t rev = 0, last_rev = 0;

	ck_assert_ptr_nonnull(ix);
	index_set_payload_source(ix, file_fetch, NULL, NULL, NULL);
	for (size_t i = 0; i < n; i++) {
		const struct tmsg *t = &m[seq[i]];
		struct msg msg = {
			.topic = topics[t->key], .topic_len = strlen(topics[t->key]),
			.payload = t->payload, .payload_len = strlen(t->payload),
			.ts_ns = t->ts_ms * MS, .recv_ms = now,
			.retained = t->retained, .ts_from_payload = true,
			.is_json = t->payload[0] == '{',
		};
		struct rec *r;
		bool live;
		enum reject_reason why;
		enum apply_result res;

		/* now moves on between deliveries; decisions must not depend on it */
		res = apply_message(ix, &msg, now + (int64_t)i, lim, &rev, &r, &live, &why, NULL);
		if (res == APPLY_APPLIED || res == APPLY_DELETED) {
			if (rev != last_rev + 1 || r->rev != rev)
				ck_abort_msg("seed %" PRIu64 " perm %d: rev not incremented", seed, perm);
		} else if (rev != last_rev) {
			ck_abort_msg("seed %" PRIu64 " perm %d: rev moved on %s", seed, perm,
				     apply_result_name(res));
		}
		last_rev = rev;
		if (r && !(r->flags & (REC_IN_FILE | REC_DELETED)) && r->payload && rnd(2)) {
			int k = key_of(rec_topic(r), r->topic_len);

			free(filed[k]);
			filed[k] = strdup(r->payload);
			ck_assert_ptr_nonnull(filed[k]);
			rec_drop_payload(r);
		}
	}
	memset(out, 0, sizeof(*out));
	out->ix = ix;
	ck_assert_int_eq(index_walk(ix, NULL, 0, NULL, 0, snap_fn, out), 0);
	if (out->live != index_live(ix))
		ck_abort_msg("seed %" PRIu64 " perm %d: live count %zu, walk saw %zu", seed, perm,
			     index_live(ix), out->live);
	index_free(ix);
	for (int k = 0; k < NKEYS; k++) {
		free(filed[k]);
		filed[k] = NULL;
	}
}

START_TEST(any_order_same_state)
{
	const struct apply_limits lim = { .future_skew_ms = 300000, .max_keys = 1000 };
	uint64_t seed = 0x5eed0000u + (uint64_t)_i;
	const char *env = getenv("SM_CONVERGE_SEED");
	int64_t now = fake_now_ms;
	struct tmsg m[NMSG];
	size_t seq[NMSG * 3];
	struct snap want, first, got;

	if (env)
		seed = strtoull(env, NULL, 0) + (uint64_t)_i;
	rng = seed * 0x9e3779b97f4a7c15ull + 1;
	gen(m, NMSG, now);
	expected(m, NMSG, now, lim.future_skew_ms, &want);

	for (int p = 0; p < PERMS; p++) {
		size_t n = 0;

		/* every message at least once, some up to three times */
		for (size_t i = 0; i < NMSG; i++) {
			uint32_t copies = 1 + (rnd(4) == 0) + (rnd(8) == 0);

			for (uint32_t c = 0; c < copies; c++)
				seq[n++] = i;
		}
		for (size_t i = n - 1; i > 0; i--) {          /* Fisher-Yates */
			size_t j = rnd((uint32_t)i + 1);
			size_t t = seq[i];

			seq[i] = seq[j];
			seq[j] = t;
		}
		apply_all(m, seq, n, now, &lim, &got, seed, p);
		if (p == 0)
			first = got;
		if (strcmp(got.s, first.s) != 0)
			ck_abort_msg("seed %" PRIu64 " (SM_CONVERGE_SEED=%" PRIu64 "): permutation %d "
				     "diverged:\n  got   %s\n  first %s", seed, seed - (uint64_t)_i, p,
				     got.s, first.s);
		if (strcmp(got.s, want.s) != 0)
			ck_abort_msg("seed %" PRIu64 ": permutation %d differs from the oracle:\n"
				     "  got  %s\n  want %s", seed, p, got.s, want.s);
	}
	/* the set must have exercised something: at least one key converged */
	ck_assert_str_ne(want.s, "");
}
END_TEST

static Suite *converge_suite(void)
{
	Suite *s = suite_create("converge");
	TCase *tc = tcase_create("random");

	tcase_add_loop_test(tc, any_order_same_state, 0, 20);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(converge_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
