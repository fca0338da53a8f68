/* SPDX-License-Identifier: MIT */
/* stale.h: per-key cadence, staleness deadlines and the alerts they raise. */
#ifndef SM_STALE_H
#define SM_STALE_H

#include <stdbool.h>
#include <stdint.h>

#include "common/conf.h"
#include "mirror/liveness/alerts.h"
#include "mirror/liveness/deliver.h"
#include "mirror/state/index.h"

struct stale;

/*
** Called for each fresh<->stale transition of a key (r's REC_STALE and
** stale_since_ms are already updated). The mirror uses it to bump rev, mark
** the record dirty and feed watchers.
*/
typedef void (*stale_transition_fn)(struct rec *r, bool became_stale, void *ctx);

/* Returns NULL on ENOMEM. Copies what it needs from c. Every record given
 * to the engine must be one of ix's (its heap names records by index_ref).
 * out is where alerts go (deliver.h), called on the delivery thread. */
struct stale *stale_new(const struct conf *c, struct index *ix, const struct deliver_outlet *out);
void stale_free(struct stale *s);   /* accepts NULL */

/* Start the alert delivery thread (0 or -errno); stop it (idempotent) before
 * what the outlet's ctx names is freed. Any thread; no lock needed. */
int stale_start_delivery(struct stale *s);
void stale_stop_delivery(struct stale *s);

/*
** Take new rules, grace, default, alert settings (SIGHUP). Every tracked key
** is re-derived and re-keyed at once (O(keys x rules), then an O(keys)
** heapify); transitions this causes are made (with the callback) by the
** next stale_tick. Keys under a moved alerts topic change status at their
** next message. changed (may be NULL) is called for each key whose cadence
** changed, so that the caller writes it back. Write lock held. Returns 0 or
** -ENOMEM (old settings kept).
*/
int stale_reconfigure(struct stale *s, const struct conf *c,
		      void (*changed)(struct rec *r, void *ctx), void *ctx);

/*
** A record loaded from the store at startup (not a tombstone): derive its
** cadence (rules may have changed), schedule its deadline; a key whose
** deadline passed while we were down is marked stale at once (REC_STALE
** set, no transition counted, no alert: see stale_on_broker). No callback
** here: the first stale_tick calls it for each record whose stale flag
** changed at load, so that the mirror persists it and tells watchers.
** A record under the alerts topic is an alert of ours from an earlier run:
** it is remembered so that it gets resolved. Returns true when the record
** changed (stale flag, cadence); the caller may write it back.
*/
bool stale_on_load(struct stale *s, struct rec *r, int64_t now_ms);

/*
** A message was applied or confirmed r (APPLIED or DUPLICATE, or a retained
** delivery). live_seen: a live delivery refreshed last_seen (learn from it,
** push the deadline, and turn a stale key fresh). is_new: first sight of
** the key (derive its cadence). prev_seen_ms: r's last_seen before this
** message (apply_message's *ret_prev_seen): the learner's anchor is kept
** relative to it. Write lock held.
*/
void stale_on_message(struct stale *s, struct rec *r, bool live_seen, bool is_new,
		      int64_t prev_seen_ms, int64_t now_ms, stale_transition_fn cb, void *ctx);

/* The key was deleted: stop tracking it (and clear its stale state; no
 * callback: a deleted key is not served, the delete is its change). If it
 * was alerted, it counts as recovered in its alert. */
void stale_on_delete(struct stale *s, struct rec *r, int64_t now_ms, stale_transition_fn cb, void *ctx);

/*
** The mirror's own link: connected && synced or not. While not synced
** one "mirror disconnected" alert is raised (after the mirror wait:
** 15 x group_wait, at least min_hold, so that a deploy or a blip pages
** nobody) and no key alert is sent; after re-sync each key gets
** grace x cadence to be heard from before its staleness is alerted.
** Call it with false at startup. Write lock held: the MQTT session thread
** calls it before it applies a run of messages, the keeper thread at each
** turn, whichever sees the change first.
*/
void stale_on_broker(struct stale *s, bool synced, int64_t now_ms);

/*
** Advance to now_ms: fire the transitions whose deadlines passed (cb for
** each), flush alert groups whose wait elapsed. Cost: O(log n) per due
** deadline, O(1) otherwise; at most 65536 due keys per call (then it
** returns 1 to come back at once). Returns the ms until the next thing is due, 1..100. Write lock held.
*/
int64_t stale_tick(struct stale *s, int64_t now_ms, stale_transition_fn cb, void *ctx);

/*
** The key's producer is gone (a will, an offline status, a death
** certificate; why: usually STALE_REASON_PRODUCER_OFFLINE): r turns stale
** at once with stale_since = ts_ms (a key stale already keeps its
** stale_since and takes the reason), and stays stale whatever its cadence
** says (REC_STICKY) until a live message of its own (or a value whose
** payload time is after ts_ms) makes it fresh. group_len: the length of
** the producer's name, a topic prefix of r's: the key's group in
** stale_groups and its alert's (one incident per producer, not rolled up);
** ALERTS_NO_GROUP: grouped by its topic as usual. The alert skips the
** hold-back (nothing to wait for) but not the group wait. Deleted keys,
** our own alert topics and keys not tracked are left alone. cb is called
** when r changed. Write lock held.
*/
void stale_mark_dead(struct stale *s, struct rec *r, enum stale_reason why, uint32_t group_len,
		     int64_t ts_ms, stale_transition_fn cb, void *ctx);

/* Group counts of stale keys for GET /v1/stale: calls fn(prefix, reason,
 * count, ctx) for each group (the keys' producer, else topic_group_prefix
 * of the keys) and reason, in byte order of prefix, then reason.
 * Counters are kept per transition, so this costs O(groups), not O(keys).
 * ix is unused. Read lock held by the caller. */
void stale_groups(struct stale *s, struct index *ix,
		  void (*fn)(const char *prefix, enum stale_reason reason, uint64_t count, void *ctx),
		  void *ctx);

/* "cadence", "producer_offline", "broker"; NULL for NONE (fresh). */
const char *stale_reason_name(enum stale_reason r);
/* Stale keys with reason r now, process-wide (the last engine to change:
 * there is one in the daemon), for /metrics. Any thread, no lock. */
uint64_t stale_reason_count(enum stale_reason r);
/* The same for engine s (tests). Lock held. */
uint64_t stale_count_by_reason(const struct stale *s, enum stale_reason r);

/* Introspection for tests: keys tracked in the deadline heap, whether the
 * heap is consistent (O(n)), the earliest due time (INT64_MAX if none). */
size_t stale_tracked(const struct stale *s);
bool stale_heap_check(const struct stale *s);
int64_t stale_next_due(const struct stale *s);
/* The alerting half (mirror/alerts.h), for tests. */
struct alerts *stale_alerts(struct stale *s);

#endif
