/* SPDX-License-Identifier: MIT */
/* test_hmap.c: the hash map (puts, finds, deletes against a reference, bounds, shared keys) and the hash functions. */
#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/hash.h"
#include "common/hmap.h"

START_TEST(put_find_del_u32)
{
	struct hmap m = HMAP_INIT(1000);

	ck_assert_ptr_null(hmap_find(&m, 5, NULL, NULL, NULL));
	ck_assert_int_eq(hmap_del(&m, 5, NULL, NULL, NULL), -ENOENT);
	ck_assert_int_eq(hmap_put(&m, 0, 1), -EINVAL);
	ck_assert_int_eq(hmap_put(&m, 5, 50), 0);
	ck_assert_int_eq(hmap_put(&m, 7, 70), 0);
	ck_assert_uint_eq(*hmap_find(&m, 5, NULL, NULL, NULL), 50);
	*hmap_find(&m, 7, NULL, NULL, NULL) = 71;
	ck_assert_uint_eq(*hmap_find(&m, 7, NULL, NULL, NULL), 71);
	ck_assert_int_eq(hmap_del(&m, 5, NULL, NULL, NULL), 0);
	ck_assert_ptr_null(hmap_find(&m, 5, NULL, NULL, NULL));
	ck_assert_uint_eq(m.n, 1);
	hmap_clear(&m);
	ck_assert_ptr_null(hmap_find(&m, 7, NULL, NULL, NULL));
	hmap_free(&m);
	hmap_free(&m); /* twice is fine */
}
END_TEST

/* Random puts and deletes against a plain array: backward-shift deletion
 * must keep every remaining key findable. Keys in a small range, so that
 * runs are long and wrap around. */
START_TEST(random_against_reference)
{
	enum { N = 4096 };
	static uint32_t ref[N]; /* value + 1 per key, 0 absent */
	struct hmap m = HMAP_INIT(N);
	unsigned seed = 12345;

	memset(ref, 0, sizeof(ref));
	for (int round = 0; round < 200000; round++) {
		uint32_t k = (uint32_t)(rand_r(&seed) % (N - 1)) + 1;
		uint32_t *v = hmap_find(&m, k, NULL, NULL, NULL);

		ck_assert_int_eq(v != NULL, ref[k] != 0);
		if (v)
			ck_assert_uint_eq(*v + 1, ref[k]);
		if (rand_r(&seed) % 3 == 0 && v) {
			ck_assert_int_eq(hmap_del(&m, k, NULL, NULL, NULL), 0);
			ref[k] = 0;
		} else if (!v) {
			ck_assert_int_eq(hmap_put(&m, k, (uint32_t)round), 0);
			ref[k] = (uint32_t)round + 1;
		}
	}
	for (uint32_t k = 1; k < N; k++) {
		uint32_t *v = hmap_find(&m, k, NULL, NULL, NULL);
		ck_assert_int_eq(v != NULL, ref[k] != 0);
	}
	hmap_free(&m);
}
END_TEST

START_TEST(bounded_and_compact)
{
	struct hmap m = HMAP_INIT(100);

	for (uint32_t k = 1; k <= 100; k++)
		ck_assert_int_eq(hmap_put(&m, k, k), 0);
	ck_assert_int_eq(hmap_put(&m, 101, 1), -ENOSPC);
	ck_assert_int_eq(hmap_reserve(&m, 101), -ENOSPC);
	ck_assert_uint_eq(m.n, 100);
	ck_assert_uint_eq(sizeof(struct hmap_ent), 8);
	ck_assert_uint_le(m.n * 4, m.cap * 3);      /* at most 3/4 full */
	ck_assert_uint_le(hmap_bytes(&m), 100 * 8 * 8 / 3 + 8);
	hmap_free(&m);
}
END_TEST

START_TEST(reserve_makes_puts_infallible)
{
	struct hmap m = HMAP_INIT(1u << 20);
	uint32_t cap;

	ck_assert_int_eq(hmap_reserve(&m, 3000), 0);
	cap = m.cap;
	for (uint32_t k = 1; k <= 3000; k++)
		ck_assert_int_eq(hmap_put(&m, k * 2654435761u | 1, k), 0);
	ck_assert_uint_eq(m.cap, cap); /* no growth after the reserve */
	hmap_free(&m);
}
END_TEST

/* Keyed by hash: items whose keys collide are told apart by eq. */
static const char *items[] = { "dc1/hall2", "dc1/hall3", "plant", "", "x/y/z" };

static bool item_eq(uint32_t val, const void *k, const void *ctx)
{
	(void)ctx;
	return strcmp(items[val], k) == 0;
}

START_TEST(shared_keys_told_apart)
{
	struct hmap m = HMAP_INIT(64);

	/* Every item under the same key: the worst collision there is. */
	for (uint32_t i = 0; i < 5; i++)
		ck_assert_int_eq(hmap_put(&m, 42, i), 0);
	for (uint32_t i = 0; i < 5; i++)
		ck_assert_uint_eq(*hmap_find(&m, 42, item_eq, items[i], NULL), i);
	ck_assert_ptr_null(hmap_find(&m, 42, item_eq, "nope", NULL));
	ck_assert_int_eq(hmap_del(&m, 42, item_eq, "plant", NULL), 0);
	ck_assert_ptr_null(hmap_find(&m, 42, item_eq, "plant", NULL));
	ck_assert_uint_eq(*hmap_find(&m, 42, item_eq, "x/y/z", NULL), 4);
	ck_assert_uint_eq(*hmap_find(&m, 42, item_eq, "", NULL), 3);
	hmap_free(&m);
	/* The same through real hashes. */
	for (uint32_t i = 0; i < 5; i++)
		ck_assert_int_eq(hmap_put(&m, hash_key32(hash_bytes(items[i], strlen(items[i]))), i), 0);
	for (uint32_t i = 0; i < 5; i++)
		ck_assert_uint_eq(*hmap_find(&m, hash_key32(hash_bytes(items[i], strlen(items[i]))),
					     item_eq, items[i], NULL), i);
	hmap_free(&m);
}
END_TEST

START_TEST(hash_functions)
{
	char a[64], b[64];

	memset(a, 'a', sizeof(a));
	memcpy(b, a, sizeof(b));
	/* Deterministic within the process, over every length and tail. */
	for (size_t n = 0; n <= sizeof(a); n++)
		ck_assert_uint_eq(hash_bytes(a, n), hash_bytes(b, n));
	for (size_t n = 1; n <= sizeof(a); n++) {
		ck_assert_uint_ne(hash_bytes(a, n), hash_bytes(a, n - 1)); /* length counts */
		b[n - 1] = 'b';
		ck_assert_uint_ne(hash_bytes(a, n), hash_bytes(b, n));     /* every byte counts */
		b[n - 1] = 'a';
	}
	ck_assert_uint_ne(hash_key32(0), 0);
	ck_assert_uint_ne(hash_ptr(a), hash_ptr(b));
	ck_assert_uint_eq(hash_mix64(0), 0); /* the finalizer's fixed point: why keys are never 0 */
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("hmap");
	TCase *tc = tcase_create("map");

	tcase_add_test(tc, put_find_del_u32);
	tcase_add_test(tc, random_against_reference);
	tcase_add_test(tc, bounded_and_compact);
	tcase_add_test(tc, reserve_makes_puts_infallible);
	tcase_add_test(tc, shared_keys_told_apart);
	tcase_add_test(tc, hash_functions);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
