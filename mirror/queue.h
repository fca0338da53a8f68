/* SPDX-License-Identifier: MIT */
/* queue.h: the bounded hand-off from the MQTT network thread to the core thread. */
#ifndef SM_QUEUE_H
#define SM_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "apply.h"

/*
** A queued message: one allocation holding the struct msg and, after it,
** the topic (NUL-terminated) and payload it points into.  When `reject` is
** not REJECT_NONE the network thread already refused the message (too large,
** not JSON, ...) and only the first bytes of the payload are kept, for the
** rejects list; full_len always holds the payload's size as received.
**
** Layout of data[]: topic, NUL, payload (m.payload_len bytes), NUL. Both
** are NUL-terminated for the convenience of parsers; the lengths are the
** truth (a payload may hold NUL bytes).
*/
struct qmsg {
	struct msg m;
	enum reject_reason reject;
	size_t full_len;     /* payload size as received (m.payload_len may be less) */
	char data[];
};

/* Build a qmsg copying topic and payload (payload truncated to keep bytes):
 * one allocation. m.topic, m.topic_len, m.payload, m.payload_len (the kept
 * length) and full_len are set; every other field is zero (REJECT_NONE).
 * Returns NULL on ENOMEM (or on sizes that would overflow). Free with free(). */
struct qmsg *qmsg_new(const char *topic, size_t topic_len, const void *payload,
		      size_t payload_len, size_t keep);

struct queue;

/* A queue of at most cap messages. Returns NULL on ENOMEM. */
struct queue *queue_new(size_t cap);
void queue_free(struct queue *q);   /* frees queued messages; accepts NULL */

/*
** Producer side (one thread). Blocks while the queue is full (the network
** thread then stops reading the socket: TCP backpressure, nothing dropped),
** but at most max_wait_ms per call so the caller can keep its session alive;
** returns 0 when queued, -EAGAIN when still full after max_wait_ms (the
** caller retries; 0 = do not wait, negative = wait until space or close),
** -ESHUTDOWN after queue_close(). Takes ownership on 0 only.
**
** A waiting consumer is woken once QUEUE_WAKE_BATCH messages wait (or the
** queue is full), not at every push: a consumer that keeps up would
** otherwise cost a futex wake per message. The producer must therefore
** call queue_flush() whenever it stops pushing for a while (the MQTT
** thread does within a few milliseconds of the first message it has not
** flushed), so the tail of a burst is not left waiting for the consumer's
** timeout.
*/
#define QUEUE_WAKE_BATCH 256
int queue_push(struct queue *q, struct qmsg *m, int64_t max_wait_ms);

/* Producer side: wake the consumer if it waits and anything is queued. */
void queue_flush(struct queue *q);

/*
** Consumer side (one thread). Moves up to max messages into out[] (the
** caller owns them), waiting up to timeout_ms for the first one. Returns
** the count (0 on timeout or queue_kick(); timeout_ms 0 = do not wait,
** negative = wait forever) or -ESHUTDOWN when closed and empty: messages
** queued before queue_close() are still delivered.
*/
int queue_pop_batch(struct queue *q, struct qmsg **out, size_t max, int64_t timeout_ms);

/* Wake the consumer early (e.g. a config reload or shutdown): its current
 * or next wait returns at once. Thread-safe. */
void queue_kick(struct queue *q);
/* Refuse further pushes (-ESHUTDOWN) and wake both sides. Thread-safe. */
void queue_close(struct queue *q);
size_t queue_depth(struct queue *q);   /* racy snapshot, for metrics */
size_t queue_capacity(const struct queue *q);

#endif
