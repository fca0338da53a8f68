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
** reports synced. Returns 0 or -errno.
*/
int mqtt_start(struct mqtt *m);

/* Stop the thread and disconnect cleanly. Accepts NULL in mqtt_free. */
void mqtt_stop(struct mqtt *m);
void mqtt_free(struct mqtt *m);

/* Connected to a broker right now. */
bool mqtt_connected(struct mqtt *m);
/* Connected, every subscription acknowledged, retained burst over.
 * *ret_epoch (may be NULL) counts the syncs so far: a change means a
 * disconnect and re-sync happened in between. */
bool mqtt_synced(struct mqtt *m, uint64_t *ret_epoch);
/* A short reason while not synced ("connecting to mqtt://h:1883: connection
 * refused", "waiting for subscription acknowledgements", ...), copied into buf. */
void mqtt_status(struct mqtt *m, char *buf, size_t n);

/* Publish a retained message (alert state) at QoS 1. Thread-safe, never
 * blocks; while disconnected the latest value per topic is kept and sent
 * after reconnect. Returns 0 or -errno. */
int mqtt_publish_retained(struct mqtt *m, const char *topic, const void *payload, size_t len);

#endif
