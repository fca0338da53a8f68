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
** one thread only), under the index write lock. mirror_ingest_flush() ends a
** run of messages: it wakes watch streams when something changed and the
** keeper thread when a write becomes due. Rejected messages (why != REJECT_NONE) are counted and listed.
** These three are the session's mqtt_sink.
*/
void mirror_ingest(struct mirror *c, const struct msg *m, enum reject_reason why, size_t full_len);
void mirror_ingest_flush(struct mirror *c);
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
