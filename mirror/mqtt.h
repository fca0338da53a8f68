/* SPDX-License-Identifier: MIT */
/* mqtt.h: the MQTT session: connect, subscribe, re-sync, hand messages to the queue. */
#ifndef SM_MQTT_H
#define SM_MQTT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/conf.h"
#include "queue.h"

struct mqtt;

/*
** Create a session from c (URLs, client id, protocol, QoS, session kind,
** keepalive, credentials, TLS, filters, payload limits and format, the
** timestamp field names). Messages go to q. Nothing connects yet.
** Returns 0 or -errno with a reason in err.
*/
int mqtt_new(const struct conf *c, struct queue *q, struct mqtt **ret, char *err, size_t errlen);

/*
** Start the session's own thread. It connects to the URLs in turn
** (a broker down at start is not an error: it keeps trying with
** exponential backoff and jitter), subscribes, and after every (re)connect
** re-subscribes and waits for the retained burst to go quiet before it
** reports synced. Returns 0 or -errno (-EALREADY when started twice).
**
** Every libmosquitto call happens on that thread. Messages are checked
** (max_topic_len, max_payload, format, timestamp) and decoded there; refused
** ones are still queued with qmsg.reject set and only their first
** REJECTS_KEEP_BYTES, for the rejects list. A full queue blocks the thread
** (TCP backpressure) in slices of keepalive/4, each counted in
** g_stats.queue_full_waits. The thread keeps g_stats.broker_connected,
** synced, reconnects (successful connects after the first) and received
** current.
*/
int mqtt_start(struct mqtt *m);

/* Stop the thread and disconnect cleanly (a DISCONNECT is sent when
 * connected). Waits at most ~5 s: a thread stuck in a blocking connect
 * (DNS, a SYN to a host that drops it) is left behind and mqtt_free() then
 * leaks m instead of freeing it under the thread. Call it before freeing
 * the queue. mqtt_free() stops first if needed and accepts NULL. */
void mqtt_stop(struct mqtt *m);
void mqtt_free(struct mqtt *m);

/* Connected to a broker right now (CONNACK accepted). Thread-safe. */
bool mqtt_connected(struct mqtt *m);
/* Connected, every subscription acknowledged, retained burst over.
 * *ret_epoch (may be NULL) counts the syncs so far: a change means a
 * disconnect and re-sync happened in between. */
bool mqtt_synced(struct mqtt *m, uint64_t *ret_epoch);
/* Thread-safe. A short reason while not synced ("connecting to mqtt://h:1883: connection
 * refused", "waiting for subscription acknowledgements", ...), copied into buf. */
void mqtt_status(struct mqtt *m, char *buf, size_t n);

/* SUBACK refusals (and filters that could not be sent) so far, for metrics. */
uint64_t mqtt_subscribe_failures(struct mqtt *m);

/* Publish a retained message (alert state) at QoS 1. Thread-safe, never
 * blocks (copies topic and payload; the session thread sends them). Only
 * the latest value per topic is kept until it is sent, so while
 * disconnected the current state of up to 1024 topics waits for the next
 * connect. Returns 0, -EINVAL (empty topic, wildcards, bad UTF-8),
 * -EMSGSIZE, -ENOBUFS (1024 topics waiting) or -ENOMEM. */
int mqtt_publish_retained(struct mqtt *m, const char *topic, const void *payload, size_t len);

#endif
