/* SPDX-License-Identifier: MIT */
/* mqtt.h: the MQTT session: connect, subscribe, re-sync, hand each message to a sink. */
#ifndef SM_MQTT_H
#define SM_MQTT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/clock.h"
#include "common/conf.h"
#include "mirror/ingest/decode.h"
#include "mirror/state/apply.h"

#define MQTT_MAX_DECODERS 8       /* decoders besides the JSON one */
#define MQTT_DECODER_PUB_MAX 256  /* decoder publications per session turn (decode.h) */

struct mqtt;

/*
** Where the session thread hands what it receives. Every callback runs on
** the session thread, never inside a lock of the session's own.
**
**   message  one key update, in arrival order: a message's decoder
**            (decode.h) emits zero or more per message. why != REJECT_NONE:
**            refused by the session (max_topic_len, max_payload) or the
**            decoder (format, a bad timestamp, ...); then only the first
**            REJECTS_KEEP_BYTES of the payload are passed (m->payload_len)
**            and full_len is its size as received. The pointers are
**            borrowed for the call.
**   flush    the end of a run of messages (one wake-up's worth, at most
**            a few hundred): the sink publishes what it applied.
**   link     connected or synced may have changed (mqtt_synced tells).
**
** The sink does its work (the apply) in the callback itself: a sink that
** takes long stops the session from reading, and the broker's TCP window
** closes (backpressure, nothing lost). The kernel's receive buffer is the
** ingest queue; g_stats.ingest_queue_bytes samples what waits in it.
*/
struct mqtt_sink {
	void (*message)(void *ctx, const struct msg *m, enum reject_reason why, size_t full_len);
	void (*flush)(void *ctx);
	void (*link)(void *ctx);  /* may be NULL */
	void *ctx;
};

/*
** Create a session from c (URLs, client id, protocol, QoS, session kind,
** keepalive, credentials, TLS, filters and [subscribe] retained topics,
** payload limits), with the JSON
** decoder made from c (format, timestamp field: decode_json.h) as its
** only decoder. Nothing connects yet.
** Returns 0 or -errno with a reason in err.
*/
int mqtt_new(const struct conf *c, struct mqtt **ret, char *err, size_t errlen);

/*
** Give the session one more decoder (decode.h), before mqtt_start. Each
** message goes to the first decoder that claims its topic, in the order
** they were added; the JSON decoder stays last and takes the rest. On 0
** the session owns d (freed by mqtt_free); on error the caller keeps it.
** Returns 0, -EINVAL (an op missing), -EBUSY (started already) or
** -ENOSPC (MQTT_MAX_DECODERS added already). Not thread-safe: call it
** from the thread that made the session.
*/
int mqtt_add_decoder(struct mqtt *m, struct decoder *d);

/*
** The intent outbox (mirror/state/intents.h), before mqtt_start: at every
** turn with the link up the session publishes what is due through
** intents_pump (QoS as configured; with MQTT 5 the correlation id also as
** correlation data, and the time left before `expire` as the message
** expiry), reports each PUBACK (intents_acked) and a lost link
** (intents_link_down). When intents were in flight at a lost link, the
** session drops its libmosquitto handle before reconnecting, so that
** libmosquitto cannot resend them itself after their expiry: the engine
** publishes them again if they are still due. mqtt_kick (any thread) wakes
** the session when intents were submitted.
*/
struct intents;
void mqtt_set_intents(struct mqtt *m, struct intents *in);
void mqtt_kick(void *m);

/*
** Publish through the session's connection, for decoders: the same as
** decode_out.publish (decode.h: arguments, -ENOTCONN, -ENOBUFS, ...), for
** a decoder that publishes from its tick or from hooks of its own, with
** session = the struct mqtt (the type fits a hook's ctx). Session thread
** only: inside a decoder's decode(), tick() or link_lost(); from any other
** thread it returns -EPERM.
*/
int mqtt_decoder_publish(void *session, const char *topic, const void *payload, size_t len,
			 int qos, bool retain);

/*
** Our own retained presence, for a Sparkplug primary host's STATE: on
** every connect the will (set on the CONNECT, sent by the broker when the
** session ends without a DISCONNECT) is payload(ctx, false, ts_ms, ...),
** and once connected, after the SUBSCRIBEs, payload(ctx, true, ts_ms, ...)
** is published; both QoS 1, retained, topic as given (copied). ts_ms is
** the wall time (the session's clock) of that connect attempt, the same
** for its will and its birth. payload writes at most n bytes into buf and
** returns the length (< n), or -errno (the connect attempt fails, and is
** retried). Called on the session thread. Before mqtt_start. Returns 0,
** -EINVAL (not a topic name), -EBUSY (started) or -ENOMEM.
*/
#define MQTT_PRESENCE_MAX 512
typedef int (*mqtt_presence_fn)(void *ctx, bool online, int64_t ts_ms, char *buf, size_t n);
int mqtt_set_presence(struct mqtt *m, const char *topic, mqtt_presence_fn payload, void *ctx);

/*
** Read time from clk (copied) instead of the system's clocks, before
** mqtt_start: the backoff between attempts, the CONNACK timeout, the
** retained burst's quiet and the receive times all follow it, so tests
** move time by hand. The thread's poll timeouts stay real time: a clock
** moved by hand is seen at the next turn (mqtt_wait_turn). Returns 0,
** -EINVAL or -EBUSY (started already).
*/
int mqtt_set_clock(struct mqtt *m, const struct clock_src *clk);

/*
** Wake the session thread and wait until it has completed a whole turn
** that began after the call: it has read its clock (mqtt_set_clock) as it
** is now and acted on it (sync, timeouts, retries). For tests that move an
** injected clock; harmless otherwise. Thread-safe; never call it from a
** sink callback (the session thread). Returns 0, -ETIMEDOUT after
** timeout_ms (the thread is held, e.g. in the sink) or -ESRCH (not running).
*/
int mqtt_wait_turn(struct mqtt *m, int timeout_ms);

/*
** Start the session's own thread, delivering to sink (copied). It connects to the URLs in turn
** (a broker down at start is not an error: it keeps trying with
** exponential backoff and jitter), subscribes (one SUBSCRIBE per filter and
** per exact retained topic), and after every (re)connect re-subscribes and
** waits for every SUBACK and for the retained burst to go quiet before it
** reports synced. Returns 0 or -errno (-EALREADY when started twice).
**
** protocol = auto offers MQTT 5; when a broker refuses the version, or
** hangs up or stays silent instead of answering the CONNECT, the same URL
** is tried at once with 3.1.1, and a URL that answered 3.1.1 is offered
** 3.1.1 from then on (for the session's life). Both are logged and shown
** in mqtt_status.
**
** Every libmosquitto call happens on that thread. Messages are checked
** (max_topic_len, max_payload) and decoded there, and their updates
** handed to the sink (see struct mqtt_sink); every message received before
** synced becomes true (the retained burst) has been handed over and
** flushed by then. The thread keeps g_stats.broker_connected, synced,
** reconnects (successful connects after the first), received and
** ingest_queue_bytes current.
*/
int mqtt_start(struct mqtt *m, const struct mqtt_sink *sink);

/* Stop the thread and disconnect cleanly (a DISCONNECT is sent when
 * connected). Waits at most ~5 s: a thread stuck in a blocking connect
 * (DNS, a SYN to a host that drops it) is left behind and mqtt_free() then
 * leaks m instead of freeing it under the thread. Call it before freeing
 * what the sink uses. mqtt_free() stops first if needed and accepts NULL. */
void mqtt_stop(struct mqtt *m);
void mqtt_free(struct mqtt *m);

/* Connected to a broker right now (CONNACK accepted). Thread-safe. */
bool mqtt_connected(struct mqtt *m);
/* Connected, every subscription acknowledged, retained burst over.
 * *ret_epoch (may be NULL) counts the syncs so far: a change means a
 * disconnect and re-sync happened in between. */
bool mqtt_synced(struct mqtt *m, uint64_t *ret_epoch);
/* Thread-safe. A short reason while not synced ("cannot connect to mqtt://h:1883: the
 * broker refused the connection: bad user name or password (check ...)", "waiting for
 * subscription acknowledgements", ...), and once synced the version and the bootstrap:
 * "synced with URL (MQTT 3.1.1: the broker refused MQTT 5): 12 retained message(s) from 3
 * wildcard and 40 exact subscription(s) (12 on exact topics)". Copied into buf (512 bytes
 * hold it all). */
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
