/* SPDX-License-Identifier: MIT */
/* mirror.h: the mirror: applies what ingest decodes to the state, and runs the keeper thread (deadlines, link, readiness, store writes). */
#ifndef SM_MIRROR_H
#define SM_MIRROR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/clock.h"
#include "common/conf.h"
#include "store/store.h"
#include "mirror/state/changes.h"
#include "mirror/state/index.h"
#include "mirror/ingest/mqtt.h"
#include "mirror/state/rejects.h"
#include "mirror/liveness/stale.h"

struct mirror;

/* What the mirror works with; it owns none of it. */
struct mirror_deps {
	const struct conf *conf;
	struct index *ix;
	struct store *store;
	struct stale *stale;
	struct mqtt *mqtt;        /* may be NULL in tests */
	struct rejects *rejects;
	struct changes *changes;  /* may be NULL: no watch streams */
	struct intents *intents;  /* told of every applied value (confirmations); NULL none */
	/* Called without the lock after a run of messages or a keeper turn
	 * that appended changes (wakes watch streams), from the thread that
	 * made them. May be NULL. */
	void (*on_changes)(void *ctx);
	void *on_changes_ctx;
	int64_t rev;              /* highest rev loaded from the store */
	/* Delete the tombstones store_load skipped (observation time before
	 * this, ns) before the first write; 0: none. */
	int64_t purge_before_ns;
	/* The clock the keeper reads (deadlines, commit timer, retries,
	 * heartbeat); NULL: clock_system. Copied. Tests move a fake one and
	 * call mirror_wait_turn. */
	const struct clock_src *clk;
};

/* Start the keeper thread (staleness deadlines, readiness, store writes). */
int mirror_start(const struct mirror_deps *d, struct mirror **ret);
/* Write what changed to the store and stop the thread. Stop ingest first. */
void mirror_stop(struct mirror *c);

/*
** Ingest: apply one message now, on the caller's thread (the MQTT session's:
** one thread only), under the index write lock, which stays held for the
** next few messages of the run (mirror.c, MIRROR_INGEST_HOLD): between two
** calls the caller takes no index lock and does not wait; only
** mirror_keys_stale may be called there. mirror_ingest_flush() ends a
** run of messages and releases the lock: it wakes watch streams when something changed and the
** keeper thread when a write becomes due. Rejected messages (why != REJECT_NONE) are counted and listed.
** These three are the session's mqtt_sink.
*/
void mirror_ingest(struct mirror *c, const struct msg *m, enum reject_reason why, size_t full_len);
void mirror_ingest_flush(struct mirror *c);
/*
** Producer liveness. keys enumerates topics: it calls key(kctx, topic, len)
** for each (the topic need not be NUL-terminated; unknown topics are
** skipped), on the caller's thread, with the index write lock held (key
** must not call back into the mirror).
*/
typedef void (*mirror_key_fn)(void *kctx, const char *topic, size_t len);
typedef void (*mirror_keys_fn)(void *ectx, mirror_key_fn key, void *kctx);

/*
** Every key `keys` enumerates (existing, not deleted) turns stale at once
** with `reason` (usually STALE_REASON_PRODUCER_OFFLINE), stale_since =
** ts_ms (wall ms), with one alert for `producer` (NUL-terminated: the
** group name, a topic prefix of its keys: an edge node "spBv1.0/G/E", an
** availability topic's bound producer), not one per key; keys not under
** that prefix are grouped by topic as usual. A key stale already takes the
** reason and keeps its stale_since. Keys turn fresh again only when heard
** from again (a live message; a value whose payload time is after ts_ms),
** whatever their cadence says. Takes the index write lock itself: call it
** from the MQTT session thread outside the sink's message callback (e.g.
** from a decoder hook) or from the keeper, never with the lock held. Wakes
** watch streams (on_changes) before it returns. Returns the number of keys
** that changed.
*/
size_t mirror_keys_stale(struct mirror *m, const char *producer, enum stale_reason reason,
			 mirror_keys_fn keys, void *ectx, int64_t ts_ms);

/* The broker link changed: readiness and staleness look again. Thread-safe. */
void mirror_link_changed(struct mirror *c);

/* ready: synced with the broker (every retained message of the sync
 * applied) and the store writable; live traffic does not make it flap.
 * When not ready a short reason is copied into buf. Thread-safe. */
bool mirror_ready(struct mirror *c, char *buf, size_t n);
/* The broker session's status (mqtt_status: the version spoken and, once
 * synced, the bootstrap the broker gave) for /readyz. Thread-safe. */
void mirror_broker_status(struct mirror *c, char *buf, size_t n);
/* Synced with the broker (the Statemirror-Synced header). Thread-safe. */
bool mirror_synced(struct mirror *c);
/* Monotonic ms of the keeper loop's last turn (the watchdog feeds on it). */
int64_t mirror_heartbeat(struct mirror *c);

/*
** Wake the keeper thread and wait until it has completed a whole turn that
** began after the call: it has read its clock (mirror_deps.clk) as it is
** now and acted on it (deadlines, the link, a write due, readiness). For
** tests that move an injected clock; harmless otherwise. Thread-safe; not
** from the keeper thread (on_changes). Returns 0, or -ETIMEDOUT after
** timeout_ms (a write that takes longer, say).
*/
int mirror_wait_turn(struct mirror *c, int timeout_ms);

/* Take the reloadable settings of conf (staleness rules, grace, default,
 * alert settings) under the write lock. Thread-safe; conf must stay
 * valid until the next reload or mirror_stop. */
void mirror_reload(struct mirror *c, const struct conf *conf);

#endif
