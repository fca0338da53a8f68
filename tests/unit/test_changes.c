/* SPDX-License-Identifier: MIT */
/* test_changes.c: the bounded change log that watch streams replay. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "mirror/state/changes.h"
#include "mirror/state/index.h"

static struct rec *mk(const char *topic, int64_t rev)
{
	struct rec *r = rec_new(topic, strlen(topic));

	ck_assert_ptr_nonnull(r);
	r->rev = rev;
	return r;
}

START_TEST(names)
{
	ck_assert_str_eq(change_type_name(CHANGE_UPDATE), "update");
	ck_assert_str_eq(change_type_name(CHANGE_DELETE), "delete");
	ck_assert_str_eq(change_type_name(CHANGE_STALE), "stale");
	ck_assert_str_eq(change_type_name(CHANGE_FRESH), "fresh");
	ck_assert_str_eq(change_type_name(CHANGE_TYPE_MAX), "unknown");
}
END_TEST

START_TEST(read_after_in_order)
{
	struct changes *cl = changes_new(8, 100);
	struct rec *r = mk("a", 0);
	struct change out[8];
	bool gap = true;

	ck_assert_ptr_nonnull(cl);
	ck_assert_int_eq(changes_head(cl), 100);
	ck_assert_uint_eq(changes_read(cl, 100, out, 8, &gap), 0);
	ck_assert(!gap);
	for (int64_t rev = 101; rev <= 105; rev++) {
		r->rev = rev;
		changes_append(cl, r, rev == 103 ? CHANGE_STALE : CHANGE_UPDATE);
	}
	ck_assert_int_eq(changes_head(cl), 105);
	ck_assert_uint_eq(changes_read(cl, 102, out, 8, &gap), 3);
	ck_assert(!gap);
	ck_assert_int_eq(out[0].rev, 103);
	ck_assert_int_eq(out[0].type, CHANGE_STALE);
	ck_assert_ptr_eq(out[0].rec, r);
	ck_assert_int_eq(out[2].rev, 105);
	/* at most n at a time, oldest first */
	ck_assert_uint_eq(changes_read(cl, 100, out, 2, &gap), 2);
	ck_assert_int_eq(out[0].rev, 101);
	ck_assert_int_eq(out[1].rev, 102);
	/* up to date: nothing, and no gap */
	ck_assert_uint_eq(changes_read(cl, 105, out, 8, &gap), 0);
	ck_assert(!gap);
	changes_free(cl);
	rec_free(r);
}
END_TEST

START_TEST(too_old_or_foreign_is_a_gap)
{
	struct changes *cl = changes_new(4, 0);
	struct rec *r = mk("a", 0);
	struct change out[8];
	bool gap = false;

	for (int64_t rev = 1; rev <= 10; rev++) {
		r->rev = rev;
		changes_append(cl, r, CHANGE_UPDATE);
	}
	/* the ring holds 7..10: from 6 on is replayable, before is a gap */
	ck_assert_uint_eq(changes_read(cl, 6, out, 8, &gap), 4);
	ck_assert(!gap);
	ck_assert_int_eq(out[0].rev, 7);
	ck_assert_int_eq(out[3].rev, 10);
	ck_assert_uint_eq(changes_read(cl, 5, out, 8, &gap), 0);
	ck_assert(gap);
	/* a revision this log never handed out (another database, or lost in
	 * a crash) is a gap too: the client must start over */
	gap = false;
	ck_assert_uint_eq(changes_read(cl, 11, out, 8, &gap), 0);
	ck_assert(gap);
	changes_free(cl);
	rec_free(r);
}
END_TEST

START_TEST(a_jump_restarts_the_ring)
{
	struct changes *cl = changes_new(8, 0);
	struct rec *r = mk("a", 0);
	struct change out[8];
	bool gap = false;

	r->rev = 1;
	changes_append(cl, r, CHANGE_UPDATE);
	r->rev = 50;   /* not 2: whatever lies between is unknown */
	changes_append(cl, r, CHANGE_UPDATE);
	ck_assert_uint_eq(changes_read(cl, 1, out, 8, &gap), 0);
	ck_assert(gap);
	ck_assert_uint_eq(changes_read(cl, 49, out, 8, &gap), 1);
	ck_assert(!gap);
	ck_assert_int_eq(out[0].rev, 50);
	changes_free(cl);
	rec_free(r);
}
END_TEST

static Suite *changes_suite(void)
{
	Suite *s = suite_create("changes");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, names);
	tcase_add_test(tc, read_after_in_order);
	tcase_add_test(tc, too_old_or_foreign_is_a_gap);
	tcase_add_test(tc, a_jump_restarts_the_ring);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(changes_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
