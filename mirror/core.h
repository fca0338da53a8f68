/* SPDX-License-Identifier: MIT */
/* core.h: the core: applies messages as they arrive, tracks staleness, writes the store. */
#ifndef SM_CORE_H
#define SM_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/conf.h"
#include "../store/store.h"
#include "changes.h"
#include "index.h"
#include "mqtt.h"
#include "rejects.h"
#include "stale.h"

struct core;

/* What the core works with; it owns none of it. */
struct core_deps {
	const struct conf *conf;
	struct index *ix;
	struct store *store;
	struct stale *stale;
	struct mqtt *mqtt;        /* may be NULL in tests */
	struct rejects *rejects;
	struct changes *changes;  /* may be NULL: no watch streams */
	/* Called without the lock after a run of messages or a core turn
	 * that appended changes (wakes watch streams), from the thread that
	 * made them. May be NULL. */
	void (*on_changes)(void *ctx);
	void *on_changes_ctx;
	int64_t rev;              /* highest rev loaded from the store */
	/* Delete the tombstones store_load skipped (observation time before
	 * this, ns) before the first write; 0: none. */
	int64_t purge_before_ns;
};

/* Start the core thread (staleness deadlines, readiness, store writes). */
int core_start(const struct core_deps *d, struct core **ret);
/* Write what changed to the store and stop the thread. Stop ingest first. */
void core_stop(struct core *c);

/*
** Ingest: apply one message now, on the caller's thread (the MQTT session's:
** one thread only), under the index write lock. core_ingest_flush() ends a
** run of messages: it wakes watch streams when something changed and the
** core thread when a write becomes due. Rejected messages (why != REJECT_NONE) are counted and listed.
** These three are the session's mqtt_sink.
*/
void core_ingest(struct core *c, const struct msg *m, enum reject_reason why, size_t full_len);
void core_ingest_flush(struct core *c);
/* The broker link changed: readiness and staleness look again. Thread-safe. */
void core_link_changed(struct core *c);

/* ready: synced with the broker (every retained message of the sync
 * applied) and the store writable; live traffic does not make it flap.
 * When not ready a short reason is copied into buf. Thread-safe. */
bool core_ready(struct core *c, char *buf, size_t n);
/* Synced with the broker (the Statemirror-Synced header). Thread-safe. */
bool core_synced(struct core *c);
/* Monotonic ms of the core loop's last turn (the watchdog feeds on it). */
int64_t core_heartbeat(struct core *c);

/* Take the reloadable settings of conf (staleness rules, grace, default,
 * alert settings) under the write lock. Thread-safe; conf must stay
 * valid until the next reload or core_stop. */
void core_reload(struct core *c, const struct conf *conf);

#endif
