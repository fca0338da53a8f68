/* SPDX-License-Identifier: MIT */
/* queue.c: a bounded single-producer single-consumer ring of qmsg pointers guarded by one mutex. */
#include "queue.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct queue {
	pthread_mutex_t mu;
	pthread_cond_t not_empty;  /* the consumer waits here */
	pthread_cond_t not_full;   /* the producer waits here */
	struct qmsg **ring;
	size_t cap;
	size_t head;               /* next to pop */
	size_t count;
	size_t wake_at;            /* min(QUEUE_WAKE_BATCH, cap) */
	_Atomic size_t depth;      /* mirror of count for lock-free metrics reads */
	/*
	** The waiting flags let each side signal only when the other is
	** actually asleep: a busy stream then costs no futex wake-up per
	** message. The waker clears the flag so that a burst of pushes into an
	** empty queue wakes the consumer once.
	*/
	bool consumer_waiting;
	bool producer_waiting;
	bool kicked;
	bool closed;
};

struct qmsg *qmsg_new(const char *topic, size_t topic_len, const void *payload,
		      size_t payload_len, size_t keep)
{
	size_t kept = payload_len < keep ? payload_len : keep;
	struct qmsg *q;
	size_t sz;

	if (topic_len > SIZE_MAX / 2 || kept > SIZE_MAX / 2 - sizeof(*q) - topic_len - 2)
		return NULL;
	sz = sizeof(*q) + topic_len + 1 + kept + 1;
	q = malloc(sz);
	if (!q)
		return NULL;
	memset(q, 0, sizeof(*q));
	if (topic_len)
		memcpy(q->data, topic, topic_len);
	q->data[topic_len] = '\0';
	if (kept)
		memcpy(q->data + topic_len + 1, payload, kept);
	q->data[topic_len + 1 + kept] = '\0';
	q->m.topic = q->data;
	q->m.topic_len = topic_len;
	q->m.payload = q->data + topic_len + 1;
	q->m.payload_len = kept;
	q->full_len = payload_len;
	q->reject = REJECT_NONE;
	return q;
}

struct queue *queue_new(size_t cap)
{
	pthread_condattr_t ca;
	struct queue *q;

	if (cap == 0 || cap > SIZE_MAX / sizeof(struct qmsg *))
		return NULL;
	q = calloc(1, sizeof(*q));
	if (!q)
		return NULL;
	q->ring = calloc(cap, sizeof(*q->ring));
	if (!q->ring)
		goto fail_ring;
	q->cap = cap;
	q->wake_at = cap < QUEUE_WAKE_BATCH ? cap : QUEUE_WAKE_BATCH;
	if (pthread_mutex_init(&q->mu, NULL) != 0)
		goto fail_mutex;
	if (pthread_condattr_init(&ca) != 0)
		goto fail_attr;
	/* Timed waits use the monotonic clock: a wall-clock step must not turn
	 * a 50 ms wait into an hour or into a busy loop. */
	if (pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) != 0)
		goto fail_cond1;
	if (pthread_cond_init(&q->not_empty, &ca) != 0)
		goto fail_cond1;
	if (pthread_cond_init(&q->not_full, &ca) != 0)
		goto fail_cond2;
	pthread_condattr_destroy(&ca);
	atomic_init(&q->depth, 0);
	return q;

fail_cond2:
	pthread_cond_destroy(&q->not_empty);
fail_cond1:
	pthread_condattr_destroy(&ca);
fail_attr:
	pthread_mutex_destroy(&q->mu);
fail_mutex:
	free(q->ring);
fail_ring:
	free(q);
	return NULL;
}

void queue_free(struct queue *q)
{
	if (!q)
		return;
	for (size_t i = 0; i < q->count; i++)
		free(q->ring[(q->head + i) % q->cap]);
	pthread_cond_destroy(&q->not_full);
	pthread_cond_destroy(&q->not_empty);
	pthread_mutex_destroy(&q->mu);
	free(q->ring);
	free(q);
}

/* An absolute CLOCK_MONOTONIC deadline ms from now. */
static struct timespec deadline_after(int64_t ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += (time_t)(ms / 1000);
	ts.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	return ts;
}

int queue_push(struct queue *q, struct qmsg *m, int64_t max_wait_ms)
{
	struct timespec dl = { 0, 0 };
	bool wake;

	pthread_mutex_lock(&q->mu);
	if (q->count == q->cap && !q->closed) {
		if (max_wait_ms == 0) {
			pthread_mutex_unlock(&q->mu);
			return -EAGAIN;
		}
		if (max_wait_ms > 0)
			dl = deadline_after(max_wait_ms);
		while (q->count == q->cap && !q->closed) {
			int rc;

			q->producer_waiting = true;
			if (max_wait_ms < 0)
				rc = pthread_cond_wait(&q->not_full, &q->mu);
			else
				rc = pthread_cond_timedwait(&q->not_full, &q->mu, &dl);
			if (rc == ETIMEDOUT && q->count == q->cap && !q->closed) {
				q->producer_waiting = false;
				pthread_mutex_unlock(&q->mu);
				return -EAGAIN;
			}
		}
		q->producer_waiting = false;
	}
	if (q->closed) {
		pthread_mutex_unlock(&q->mu);
		return -ESHUTDOWN;
	}
	q->ring[(q->head + q->count) % q->cap] = m;
	q->count++;
	atomic_store_explicit(&q->depth, q->count, memory_order_relaxed);
	/* Wake a waiting consumer once a batch is worth its futex; the
	 * producer's queue_flush() delivers a smaller tail. */
	wake = q->consumer_waiting && (q->count >= q->wake_at);
	if (wake)
		q->consumer_waiting = false;
	pthread_mutex_unlock(&q->mu);
	if (wake)
		pthread_cond_signal(&q->not_empty);
	return 0;
}

int queue_pop_batch(struct queue *q, struct qmsg **out, size_t max, int64_t timeout_ms)
{
	struct timespec dl = { 0, 0 };
	size_t n;
	bool wake;

	if (max == 0)
		return 0;
	if (max > INT32_MAX)
		max = INT32_MAX;
	pthread_mutex_lock(&q->mu);
	if (q->count == 0 && !q->closed && !q->kicked && timeout_ms != 0) {
		if (timeout_ms > 0)
			dl = deadline_after(timeout_ms);
		while (q->count == 0 && !q->closed && !q->kicked) {
			int rc;

			q->consumer_waiting = true;
			if (timeout_ms < 0)
				rc = pthread_cond_wait(&q->not_empty, &q->mu);
			else
				rc = pthread_cond_timedwait(&q->not_empty, &q->mu, &dl);
			if (rc == ETIMEDOUT)
				break;
		}
		q->consumer_waiting = false;
	}
	q->kicked = false;
	if (q->count == 0) {
		int ret = q->closed ? -ESHUTDOWN : 0;

		pthread_mutex_unlock(&q->mu);
		return ret;
	}
	n = q->count < max ? q->count : max;
	for (size_t i = 0; i < n; i++) {
		out[i] = q->ring[q->head];
		q->ring[q->head] = NULL;
		q->head = q->head + 1 == q->cap ? 0 : q->head + 1;
	}
	q->count -= n;
	atomic_store_explicit(&q->depth, q->count, memory_order_relaxed);
	/* The producer only sleeps on a full queue: this pop made room. */
	wake = q->producer_waiting;
	q->producer_waiting = false;
	pthread_mutex_unlock(&q->mu);
	if (wake)
		pthread_cond_signal(&q->not_full);
	return (int)n;
}

void queue_kick(struct queue *q)
{
	pthread_mutex_lock(&q->mu);
	q->kicked = true;
	q->consumer_waiting = false;
	pthread_mutex_unlock(&q->mu);
	pthread_cond_signal(&q->not_empty);
}

void queue_close(struct queue *q)
{
	pthread_mutex_lock(&q->mu);
	q->closed = true;
	q->consumer_waiting = false;
	q->producer_waiting = false;
	pthread_mutex_unlock(&q->mu);
	pthread_cond_broadcast(&q->not_empty);
	pthread_cond_broadcast(&q->not_full);
}

void queue_flush(struct queue *q)
{
	bool wake;

	pthread_mutex_lock(&q->mu);
	wake = q->consumer_waiting && q->count > 0;
	if (wake)
		q->consumer_waiting = false;
	pthread_mutex_unlock(&q->mu);
	if (wake)
		pthread_cond_signal(&q->not_empty);
}

size_t queue_depth(struct queue *q)
{
	return atomic_load_explicit(&q->depth, memory_order_relaxed);
}

size_t queue_capacity(const struct queue *q)
{
	return q->cap;
}
