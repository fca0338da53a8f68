/* SPDX-License-Identifier: MIT */
/* test_queue.c: unit tests of the bounded network-to-core message queue. */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mirror/queue.h"

static int64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct qmsg *mk(int64_t seq)
{
	struct qmsg *m = qmsg_new("t", 1, "x", 1, 16);

	ck_assert_ptr_nonnull(m);
	m->m.recv_ms = seq;
	return m;
}

START_TEST(test_qmsg_layout)
{
	struct qmsg *m = qmsg_new("a/b", 3, "hello\0world", 11, 64);

	ck_assert_ptr_nonnull(m);
	ck_assert_uint_eq(m->m.topic_len, 3);
	ck_assert_str_eq(m->m.topic, "a/b");
	ck_assert_uint_eq(m->m.payload_len, 11);
	ck_assert_uint_eq(m->full_len, 11);
	ck_assert_int_eq(memcmp(m->m.payload, "hello\0world", 11), 0);
	ck_assert_int_eq(((const char *)m->m.payload)[11], '\0');
	ck_assert_int_eq(m->reject, REJECT_NONE);
	ck_assert(!m->m.retained && !m->m.ts_from_payload && !m->m.is_json);
	ck_assert_int_eq(m->m.ts_ns, 0);
	/* One allocation: the pointers live inside the block. */
	ck_assert_ptr_eq(m->m.topic, m->data);
	ck_assert_ptr_eq(m->m.payload, m->data + 4);
	free(m);

	m = qmsg_new("big", 3, "0123456789", 10, 4);
	ck_assert_ptr_nonnull(m);
	ck_assert_uint_eq(m->m.payload_len, 4);
	ck_assert_uint_eq(m->full_len, 10);
	ck_assert_str_eq((const char *)m->m.payload, "0123");
	free(m);

	m = qmsg_new("empty", 5, NULL, 0, 64);
	ck_assert_ptr_nonnull(m);
	ck_assert_uint_eq(m->m.payload_len, 0);
	ck_assert_ptr_nonnull(m->m.payload);
	ck_assert_str_eq((const char *)m->m.payload, "");
	free(m);

	ck_assert_ptr_null(qmsg_new("x", SIZE_MAX - 8, "y", 1, 1));
}
END_TEST

struct run {
	struct queue *q;
	int64_t n;
	_Atomic uint64_t eagain;
};

static void *producer(void *arg)
{
	struct run *r = arg;

	for (int64_t i = 0; i < r->n; i++) {
		struct qmsg *m = mk(i);
		int rc;

		while ((rc = queue_push(r->q, m, 50)) == -EAGAIN)
			atomic_fetch_add(&r->eagain, 1);
		ck_assert_int_eq(rc, 0);
	}
	queue_flush(r->q); /* the tail of the burst */
	return NULL;
}

/* A million messages through a queue of 64: every one arrives, in order. */
START_TEST(test_million_in_order)
{
	struct run r = { .q = queue_new(64), .n = 1000000 };
	struct qmsg *out[64];
	pthread_t th;
	int64_t next = 0;
	size_t max_batch = 0;

	ck_assert_ptr_nonnull(r.q);
	ck_assert_int_eq(pthread_create(&th, NULL, producer, &r), 0);
	while (next < r.n) {
		int n = queue_pop_batch(r.q, out, 64, 1000);

		ck_assert_int_ge(n, 0);
		ck_assert_int_le(n, 64);
		if ((size_t)n > max_batch)
			max_batch = (size_t)n;
		for (int i = 0; i < n; i++) {
			ck_assert_int_eq(out[i]->m.recv_ms, next);
			next++;
			free(out[i]);
		}
		ck_assert_uint_le(queue_depth(r.q), 64);
	}
	pthread_join(th, NULL);
	ck_assert_int_eq(queue_pop_batch(r.q, out, 64, 0), 0);
	ck_assert_uint_ge(max_batch, 1);
	queue_free(r.q);
}
END_TEST

START_TEST(test_full_eagain)
{
	struct queue *q = queue_new(2);
	struct qmsg *m = mk(99);
	struct qmsg *out[4];
	int64_t t0;

	ck_assert_int_eq(queue_push(q, mk(0), 0), 0);
	ck_assert_int_eq(queue_push(q, mk(1), 0), 0);
	ck_assert_uint_eq(queue_depth(q), 2);
	ck_assert_uint_eq(queue_capacity(q), 2);

	ck_assert_int_eq(queue_push(q, m, 0), -EAGAIN);
	t0 = mono_ms();
	ck_assert_int_eq(queue_push(q, m, 30), -EAGAIN);
	ck_assert_int_ge(mono_ms() - t0, 30);
	ck_assert_uint_eq(queue_depth(q), 2);

	/* Not owned after -EAGAIN: still ours to push again once there is room. */
	ck_assert_int_eq(queue_pop_batch(q, out, 1, 0), 1);
	ck_assert_int_eq(out[0]->m.recv_ms, 0);
	free(out[0]);
	ck_assert_int_eq(queue_push(q, m, 0), 0);
	ck_assert_int_eq(queue_pop_batch(q, out, 4, 0), 2);
	ck_assert_int_eq(out[0]->m.recv_ms, 1);
	ck_assert_int_eq(out[1]->m.recv_ms, 99);
	free(out[0]);
	free(out[1]);
	queue_free(q);
}
END_TEST

static void *blocked_push(void *arg)
{
	struct queue *q = arg;
	struct qmsg *m = mk(7);
	int rc = queue_push(q, m, -1);

	if (rc != 0)
		free(m);
	return (void *)(intptr_t)rc;
}

/* A producer waiting without a deadline is released by a pop. */
START_TEST(test_blocked_producer_released_by_pop)
{
	struct queue *q = queue_new(1);
	struct qmsg *out[2];
	pthread_t th;
	void *rc;

	ck_assert_int_eq(queue_push(q, mk(6), 0), 0);
	ck_assert_int_eq(pthread_create(&th, NULL, blocked_push, q), 0);
	ck_assert_int_eq(queue_pop_batch(q, out, 2, -1), 1);
	ck_assert_int_eq(out[0]->m.recv_ms, 6);
	free(out[0]);
	pthread_join(th, &rc);
	ck_assert_int_eq((int)(intptr_t)rc, 0);
	ck_assert_int_eq(queue_pop_batch(q, out, 2, -1), 1);
	ck_assert_int_eq(out[0]->m.recv_ms, 7);
	free(out[0]);
	queue_free(q);
}
END_TEST

START_TEST(test_close_semantics)
{
	struct queue *q = queue_new(4);
	struct qmsg *out[4];
	struct qmsg *late = mk(9);

	ck_assert_int_eq(queue_push(q, mk(0), 0), 0);
	ck_assert_int_eq(queue_push(q, mk(1), 0), 0);
	queue_close(q);
	queue_close(q); /* idempotent */
	ck_assert_int_eq(queue_push(q, late, 0), -ESHUTDOWN);
	ck_assert_int_eq(queue_push(q, late, -1), -ESHUTDOWN);
	free(late);
	/* What was queued before the close is still delivered... */
	ck_assert_int_eq(queue_pop_batch(q, out, 4, -1), 2);
	ck_assert_int_eq(out[0]->m.recv_ms, 0);
	ck_assert_int_eq(out[1]->m.recv_ms, 1);
	free(out[0]);
	free(out[1]);
	/* ...then the consumer is told, even when it would wait forever. */
	ck_assert_int_eq(queue_pop_batch(q, out, 4, -1), -ESHUTDOWN);
	ck_assert_int_eq(queue_pop_batch(q, out, 4, 0), -ESHUTDOWN);
	queue_free(q);
}
END_TEST

/* Close releases a producer blocked on a full queue. */
START_TEST(test_close_releases_producer)
{
	struct queue *q = queue_new(1);
	pthread_t th;
	void *rc;

	ck_assert_int_eq(queue_push(q, mk(0), 0), 0);
	ck_assert_int_eq(pthread_create(&th, NULL, blocked_push, q), 0);
	queue_close(q);
	pthread_join(th, &rc);
	ck_assert_int_eq((int)(intptr_t)rc, -ESHUTDOWN);
	queue_free(q); /* frees the one still queued (ASan checks) */
}
END_TEST

static void *blocked_pop(void *arg)
{
	struct queue *q = arg;
	struct qmsg *out[1];
	int n = queue_pop_batch(q, out, 1, -1);

	if (n == 1) {
		n = (int)out[0]->m.recv_ms + 100;
		free(out[0]);
	}
	return (void *)(intptr_t)n;
}

START_TEST(test_close_releases_consumer)
{
	struct queue *q = queue_new(4);
	pthread_t th;
	void *rc;

	ck_assert_int_eq(pthread_create(&th, NULL, blocked_pop, q), 0);
	queue_close(q);
	pthread_join(th, &rc);
	ck_assert_int_eq((int)(intptr_t)rc, -ESHUTDOWN);
	queue_free(q);
}
END_TEST

/* A consumer waiting forever is woken by the producer's flush... */
START_TEST(test_flush_wakes_consumer)
{
	struct queue *q = queue_new(256);
	pthread_t th;
	void *rc;

	queue_flush(q); /* nothing queued: a no-op */
	ck_assert_int_eq(pthread_create(&th, NULL, blocked_pop, q), 0);
	ck_assert_int_eq(queue_push(q, mk(5), 0), 0);
	queue_flush(q);
	pthread_join(th, &rc);
	ck_assert_int_eq((int)(intptr_t)rc, 105);
	queue_free(q);
}
END_TEST

/* ...or once a batch is waiting, without a flush. */
START_TEST(test_batch_wakes_consumer)
{
	struct queue *q = queue_new(256);
	struct qmsg *out[QUEUE_WAKE_BATCH];
	pthread_t th;
	void *rc;

	ck_assert_int_eq(pthread_create(&th, NULL, blocked_pop, q), 0);
	for (int i = 0; i < QUEUE_WAKE_BATCH; i++)
		ck_assert_int_eq(queue_push(q, mk(i), 0), 0);
	pthread_join(th, &rc);
	ck_assert_int_eq((int)(intptr_t)rc, 100); /* the first one, in order */
	ck_assert_int_eq(queue_pop_batch(q, out, QUEUE_WAKE_BATCH, 0), QUEUE_WAKE_BATCH - 1);
	for (int i = 0; i < QUEUE_WAKE_BATCH - 1; i++)
		free(out[i]);
	queue_free(q);
}
END_TEST

/* A queue smaller than the batch wakes its consumer when full. */
START_TEST(test_small_queue_wakes_when_full)
{
	struct queue *q = queue_new(2);
	struct qmsg *out[2];
	pthread_t th;
	void *rc;

	ck_assert_int_eq(pthread_create(&th, NULL, blocked_pop, q), 0);
	ck_assert_int_eq(queue_push(q, mk(1), 0), 0);
	ck_assert_int_eq(queue_push(q, mk(2), -1), 0);
	pthread_join(th, &rc);
	ck_assert_int_eq((int)(intptr_t)rc, 101);
	ck_assert_int_eq(queue_pop_batch(q, out, 2, 0), 1);
	free(out[0]);
	queue_free(q);
}
END_TEST

START_TEST(test_kick)
{
	struct queue *q = queue_new(4);
	struct qmsg *out[1];
	pthread_t th;
	void *rc;

	/* Kicked while waiting forever: returns 0. */
	ck_assert_int_eq(pthread_create(&th, NULL, blocked_pop, q), 0);
	queue_kick(q);
	pthread_join(th, &rc);
	/* The kick may land before the thread waits; then its wait returns at
	 * once. Either way the result is 0 messages, not a hang. */
	ck_assert_int_eq((int)(intptr_t)rc, 0);

	/* A kick is consumed by one pop only. */
	queue_kick(q);
	ck_assert_int_eq(queue_pop_batch(q, out, 1, -1), 0);
	ck_assert_int_eq(queue_pop_batch(q, out, 1, 10), 0);
	queue_free(q);
}
END_TEST

START_TEST(test_timeout_empty)
{
	struct queue *q = queue_new(4);
	struct qmsg *out[1];
	int64_t t0 = mono_ms();

	ck_assert_int_eq(queue_pop_batch(q, out, 1, 0), 0);
	ck_assert_int_eq(queue_pop_batch(q, out, 1, 20), 0);
	ck_assert_int_ge(mono_ms() - t0, 20);
	ck_assert_int_eq(queue_pop_batch(q, out, 0, -1), 0);
	queue_free(q);
}
END_TEST

/* Batches take many at once, in order, across the ring's wrap-around. */
START_TEST(test_batch_pop_wraps)
{
	struct queue *q = queue_new(8);
	struct qmsg *out[16];
	int64_t seq = 0, want = 0;

	for (int round = 0; round < 5; round++) {
		for (int i = 0; i < 6; i++)
			ck_assert_int_eq(queue_push(q, mk(seq++), 0), 0);
		ck_assert_uint_eq(queue_depth(q), 6);
		ck_assert_int_eq(queue_pop_batch(q, out, 4, 0), 4);
		ck_assert_uint_eq(queue_depth(q), 2);
		ck_assert_int_eq(queue_pop_batch(q, out + 4, 16, 0), 2);
		for (int i = 0; i < 6; i++) {
			ck_assert_int_eq(out[i]->m.recv_ms, want++);
			free(out[i]);
		}
		ck_assert_uint_eq(queue_depth(q), 0);
	}
	ck_assert_ptr_null(queue_new(0));
	queue_free(NULL);
	queue_free(q);
}
END_TEST

static Suite *queue_suite(void)
{
	Suite *s = suite_create("queue");
	TCase *tc = tcase_create("core");

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_qmsg_layout);
	tcase_add_test(tc, test_million_in_order);
	tcase_add_test(tc, test_full_eagain);
	tcase_add_test(tc, test_blocked_producer_released_by_pop);
	tcase_add_test(tc, test_close_semantics);
	tcase_add_test(tc, test_close_releases_producer);
	tcase_add_test(tc, test_close_releases_consumer);
	tcase_add_test(tc, test_flush_wakes_consumer);
	tcase_add_test(tc, test_batch_wakes_consumer);
	tcase_add_test(tc, test_small_queue_wakes_when_full);
	tcase_add_test(tc, test_kick);
	tcase_add_test(tc, test_timeout_empty);
	tcase_add_test(tc, test_batch_pop_wraps);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(queue_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
