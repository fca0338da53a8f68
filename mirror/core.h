/* SPDX-License-Identifier: MIT */
/* core.h: the core thread: drains the queue, applies, tracks staleness, writes the store. */
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
#include "queue.h"
#include "rejects.h"
#include "stale.h"

struct core;

/* What the core works with; it owns none of it. */
struct core_deps {
	const struct conf *conf;
	struct index *ix;
	struct store *store;
	struct stale *stale;
	struct queue *queue;
	struct mqtt *mqtt;        /* may be NULL in tests */
	struct rejects *rejects;
	struct changes *changes;  /* may be NULL: no watch streams */
	/* Called from the core thread, without the lock, after a turn that
	 * appended changes (wakes watch streams). May be NULL. */
	void (*on_changes)(void *ctx);
	void *on_changes_ctx;
	int64_t rev;              /* highest rev loaded from the store */
};

int core_start(const struct core_deps *d, struct core **ret);
/* Drain what is queued, write it to the store, stop the thread. */
void core_stop(struct core *c);

/* ready: synced with the broker, the store writable, and every message queued
 * when the sync completed (the retained burst) applied; live traffic after
 * that does not make it flap.
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
