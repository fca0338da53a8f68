/* SPDX-License-Identifier: MIT */
/* alerts.h: staleness alerts: grouping, hysteresis, the mirror's own alert, rendered for delivery. */
#ifndef SM_ALERTS_H
#define SM_ALERTS_H

#include <stdbool.h>
#include <stdint.h>

#include "common/conf.h"
#include "mirror/state/index.h"
#include "mirror/liveness/deliver.h"

/*
** This is the staleness engine's back half (stale.c is the front half and
** its only caller); it is not used by anything else. Dependencies run one
** way: stale -> alerts -> deliver; nothing here knows stale.h (the outlet
** is deliver.h's, the eligibility question a callback). Once the threads run,
** every call is made with the index write lock held, which serialises the
** two that make transitions: the MQTT session thread, as it applies a
** message, and the keeper thread, at its timers (a reload takes the lock
** too). Changes (alerts_key_changed, alerts_link, alerts_adopt) come from
** either; alerts_tick, the only call that sends alerts, from the keeper
** thread only. It never reads the clock: time is passed in. Sending an
** alert renders it (topic and JSON) and pushes it into the delivery queue
** (deliver.h): the publish and the exec run happen on the delivery thread,
** never under the index lock.
**
** The model (see README "Staleness and alerts"):
**
**  - A key's alert-worthy change (it turned stale and is eligible, or it is
**    fresh or deleted again after being alerted) is reported with
**    alerts_key_changed(). It waits in a pending set; a change that does
**    not hold until the set is flushed (the group wait, and min_hold) is
**    forgotten. That is the flap filter.
**  - A flush turns the pending changes into incidents. An incident is an
**    alert for a topic prefix: a key joins the deepest open incident whose
**    prefix contains it, else a new one is opened for its group (the topic
**    without its last level); sibling groups opened in the same flush roll
**    up into their common parent, level by level, never above the first
**    level. Each incident is one retained MQTT message under
**    "<alerts topic>/group/<prefix>" and one exec run per publication.
**  - An open incident publishes updates at most once per group interval
**    (5 x group wait) and is resolved when its last key recovers.
**  - The mirror's own link: one "mirror" alert when not synced for the
**    mirror wait (15 x group wait, at least min_hold); no key alert is
**    flushed while not synced.
*/

/* Per-record alert bits in rec->alert_state. ALERTED and PENDING belong to
 * alerts.c; HELD and LISTED to stale.c. */
enum alert_state_bits {
	AS_ALERTED = 1u << 0, /* counted in an open incident (on-call was told it is stale) */
	AS_PENDING = 1u << 1, /* in the pending set */
	AS_HELD    = 1u << 2, /* stale, but its alert waits for the hold-back after a re-sync */
	AS_LISTED  = 1u << 3, /* in stale.c's list of keys held while not synced */
	AS_ANNOUNCE = 1u << 4, /* stale flag changed at load: the first tick calls back */
};

#define ALERTS_EXAMPLES 5          /* example keys per alert message */
#define ALERTS_JSON_MAX 16384      /* alert JSON size bound (fits a pipe buffer) */

struct alerts;

/*
** Is the stale key r allowed to be alerted now? stale.c's answer to the
** hold-back rule; when it says no it has scheduled r's re-examination
** itself (and r leaves the pending set).
*/
typedef bool (*alerts_eligible_fn)(struct rec *r, int64_t now_ms, void *ctx);

/* Returns NULL on ENOMEM. Copies what it needs from c; out is copied (it
 * is called on the delivery thread). The delivery thread is not started. */
struct alerts *alerts_new(const struct conf *c, const struct deliver_outlet *out);
/* Start / stop the delivery thread (deliver_start, deliver_stop). Stop it
 * before what out->ctx names is freed. */
int alerts_start(struct alerts *a);
void alerts_stop(struct alerts *a);
/* Accepts NULL. Stops delivery; running exec children finish on their own. */
void alerts_free(struct alerts *a);
/* New group wait, hold, topic, exec. Returns 0 or -ENOMEM (old kept). */
int alerts_reconfigure(struct alerts *a, const struct conf *c);

/* Is topic under the alerts topic (never judged)? False when alerts are off. */
bool alerts_own_topic(const struct alerts *a, const char *topic, size_t len);

/*
** r's alert-relevant state changed: it turned stale (and was eligible), or
** it turned fresh or was deleted while AS_ALERTED or AS_PENDING. Sets
** AS_PENDING and remembers now_ms as the time of the change.
*/
void alerts_key_changed(struct alerts *a, struct rec *r, int64_t now_ms);

/*
** The same for a key whose producer is known (a death certificate, an
** offline status): group_len is the length of the producer's name, a topic
** prefix of r's (ALERTS_NO_GROUP: none, as alerts_key_changed). Such keys
** join the incident for exactly that prefix, opened for them if need be,
** not rolled up with other groups: one alert per producer.
*/
#define ALERTS_NO_GROUP UINT32_MAX
void alerts_key_changed_in(struct alerts *a, struct rec *r, uint32_t group_len, int64_t now_ms);

/* The mirror's link changed (synced or not). */
void alerts_link(struct alerts *a, bool synced, int64_t now_ms);

/*
** A retained alert message of ours from an earlier run (r is a record under
** the alerts topic, loaded from the store or replayed by the broker): if it
** holds an open alert we do not know, adopt it, so that it is resolved
** (and its retained copy cleared) once the keys under it turn out fresh.
** ix is r's index (a payload in the file is read through it).
*/
void alerts_adopt(struct alerts *a, const struct index *ix, const struct rec *r,
		  int64_t now_ms);

/*
** Flush what is due: pending changes whose group wait passed, incident
** updates, the mirror alert (queued for delivery). settle_ms: the longest grace x cadence of any key (adopted alerts
** are resolved when still empty that long after a re-sync). Returns the ms
** until something is next due, INT64_MAX when nothing is.
*/
int64_t alerts_tick(struct alerts *a, int64_t now_ms, int64_t settle_ms,
		    alerts_eligible_fn eligible, void *ctx);

/* For tests and /metrics-like introspection: open incidents, pending
 * changes; the delivery queue (a test without a started thread drives it
 * with deliver_pump). */
size_t alerts_open_incidents(const struct alerts *a);
size_t alerts_pending(const struct alerts *a);
struct deliver *alerts_delivery(struct alerts *a);

#endif
