/* SPDX-License-Identifier: MIT */
/* intents.h: requests to change a state owner's value, and their outcomes from the state stream. */
#ifndef SM_INTENTS_H
#define SM_INTENTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "store/outbox.h"

/*
** An intent is a local application's request that a state owner change a
** value (the articles' "decoupled intent"): the mirror publishes it on the
** owner's request topic and confirms the outcome from the owner's normal
** state stream, which it applies anyway. No callback from the owner.
**
**   pending     committed to the outbox (store/outbox.h), not yet acknowledged
**               by the broker; published in id order when the link is up
**   published   the broker acknowledged it (PUBACK; QoS 0: sent). Without a
**               confirm key this is its last state.
**   confirmed   the confirm key showed the requested value with a
**               timestamp after the request, or a message on it carried our
**               correlation id and the requested value
**   overridden  after publication the owner published another value than
**               the requested one and than the one it held at the request
**               (clamped, fallen back), or answered our correlation id with
**               another value: `observed` says what it chose
**   timed_out   `timeout` after publication and no such answer (the owner
**               kept its old value, or said nothing)
**   expired     not published before `expire`: it never will be
**   rejected    refused at the door (the API answers 4xx; not stored)
**
** Threads: every call takes the engine's mutex and never a lock of the
** index, so the apply path may call intents_observe() holding the index
** write lock. The engine's own thread (intents_start) runs the deadlines,
** writes state changes to the outbox and wakes waiters.
*/
enum intent_state {
	INTENT_PENDING,
	INTENT_PUBLISHED,
	INTENT_CONFIRMED,   /* the first outcome: states from here on are final */
	INTENT_OVERRIDDEN,
	INTENT_TIMED_OUT,
	INTENT_EXPIRED,
	INTENT_REJECTED,
	INTENT_STATE_MAX
};

const char *intent_state_name(enum intent_state s); /* "pending", ... */
/* Returns 0 with *ret, or -EINVAL. */
int intent_state_parse(const char *name, enum intent_state *ret);

struct intents_limits {
	size_t outbox_max;    /* undecided intents at most (pending + published) */
	size_t history;       /* decided ones kept for GET, in memory and in the file */
	int qos;              /* 0 or 1 */
};

/* What the API hands in, validated. Borrowed for the call. */
struct intent_request {
	const char *topic;          /* the request topic (no wildcards) */
	const json_t *value;        /* the requested value: any JSON */
	const char *confirm_topic;  /* the state key that confirms it, NULL none */
	const char *confirm_member; /* its payload's member compared with value; NULL "value" */
	const char *correlation_id; /* NULL: one is made up */
	int64_t expire_ms;          /* never published later than this after the request */
	int64_t timeout_ms;         /* how long to wait for the confirmation after publishing */
	const json_t *before;       /* the confirm member's value at the request, NULL unknown */
};

/* One intent as the API renders it (valid during the callback only). */
struct intent_info {
	int64_t id;
	const char *topic;
	const char *correlation_id;
	enum intent_state state;
	const json_t *requested;
	const json_t *observed;     /* NULL none */
	int64_t created_ms, published_ms, decided_ms; /* 0: not yet */
};
typedef int (*intent_visit_fn)(const struct intent_info *it, void *ctx);

struct intents;

/*
** Create the engine over ob (which must outlive it; NULL: nothing is
** stored, for tests), taking back what the file holds: undecided intents
** are the outbox again, the newest lim->history decided ones its history.
** now_ms: the wall clock (intents past expire are expired at the first
** tick). Returns 0 or -errno with err.
*/
int intents_new(const struct intents_limits *lim, struct outbox *ob, int64_t now_ms,
		struct intents **ret, char *err, size_t errlen);
/* Stop the thread if started, free everything. Accepts NULL. */
void intents_free(struct intents *in);

/*
** The engine's thread: deadlines, outbox writes, waiters. clock returns the
** wall time in ms (injectable for tests). wake (may be NULL) is called,
** without the mutex, when intents became publishable (a submit, a link
** back): the MQTT session's kick. Returns 0 or -errno.
*/
int intents_start(struct intents *in, int64_t (*clock)(void), void (*wake)(void *ctx), void *ctx);

/*
** Accept req at now_ms: commit it to the outbox (durably) and queue it for
** publication. *ret_id gets its id. Returns 0; -ENOBUFS when outbox_max
** intents are undecided; -EINVAL (bad topic, value or member; err says
** why); or the outbox's -errno (-ENOSPC, -EBUSY, -EIO) with err: nothing
** was accepted then.
*/
int intents_submit(struct intents *in, const struct intent_request *req, int64_t now_ms,
		   int64_t *ret_id, char *err, size_t errlen);

/* Call fn for intent id (fn's value is returned), or -ENOENT. */
int intents_get(struct intents *in, int64_t id, intent_visit_fn fn, void *ctx);
/* Call fn for the newest intents first, at most limit, only those in
 * state `only` (INTENT_STATE_MAX: all); stops when fn returns non-zero. */
int intents_list(struct intents *in, enum intent_state only, size_t limit, intent_visit_fn fn,
		 void *ctx);

/*
** A waiter: done(ctx) is called once (from the engine's thread or the
** thread that decided it, without the mutex) when intent id is decided
** (final: confirmed ... expired, or published when it has no confirm
** key), or when deadline_ms passes. Storage is the caller's, until done
** has been called or intents_unwait() returned. Returns 0, or -ENOENT
** (no such intent), or -EALREADY (already decided: no call).
*/
struct intent_waiter {
	int64_t id;
	int64_t deadline_ms;
	void (*done)(void *ctx);
	void *ctx;
	struct intent_waiter *next; /* the engine's */
	bool fired;                 /* the engine's */
};
int intents_wait(struct intents *in, struct intent_waiter *w);
void intents_unwait(struct intents *in, struct intent_waiter *w);
/* Fire every waiter now (the API is stopping). */
void intents_release_waiters(struct intents *in);

/*
** The session's side (its thread; the link up): publish what is due, in
** id order, through publish(), which returns 0 with *ret_mid, or -errno
** (then the rest waits for the next call). Pending intents past expire
** are expired instead. expiry_s: what is left until expire, for MQTT 5's
** message expiry. Cheap when nothing waits (one atomic load).
*/
typedef int (*intent_publish_fn)(void *ctx, const char *topic, const void *payload, size_t len,
				 int qos, const char *correlation_id, uint32_t expiry_s, int *ret_mid);
void intents_pump(struct intents *in, int64_t now_ms, intent_publish_fn publish, void *ctx);
/* The broker acknowledged message mid (PUBACK). */
void intents_acked(struct intents *in, int mid, int64_t now_ms);
/* The link went down: what was sent and not acknowledged is pending again
 * (published again after the reconnect unless expired by then). The
 * session drops its own copies (see mqtt.c), so no late resend slips
 * past expire. Returns how many were in flight. */
size_t intents_link_down(struct intents *in);

/*
** The apply path: a value was applied to key topic (payload, ts_ns its
** observation time). Decides the intents confirmed by that key. Cheap when
** no intent waits for a confirmation (one atomic load).
*/
void intents_observe(struct intents *in, const char *topic, size_t topic_len,
		     const void *payload, size_t len, int64_t ts_ns);

/* fn(ctx, it) at every change of state (accepted, published, decided),
 * called with the engine's mutex held: it must not call the engine (the
 * watch hub's intent events). Set before the threads run. */
void intents_set_observer(struct intents *in, intent_visit_fn fn, void *ctx);

/* Counts for /metrics: by state (decided ones since start), and the outbox. */
struct intents_stats {
	uint64_t outcomes[INTENT_STATE_MAX]; /* decisions made since start */
	size_t outbox_depth;                  /* pending */
	size_t undecided;                     /* pending + published */
	int64_t oldest_pending_ms;            /* created_ms of the oldest pending, 0 none */
	uint64_t publish_latency_sum_ms;      /* request -> PUBACK, summed */
	uint64_t published;                   /* how many that sum covers */
};
void intents_stats(struct intents *in, struct intents_stats *ret);

/* The engine's turn, for tests without the thread: run deadlines at
 * now_ms, write changes, fire waiters. Returns ms until the next deadline. */
int64_t intents_tick(struct intents *in, int64_t now_ms);

#endif
