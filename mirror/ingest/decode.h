/* SPDX-License-Identifier: MIT */
/* decode.h: payload decoders: one MQTT message in, zero or more key updates out. */
#ifndef SM_DECODE_H
#define SM_DECODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mirror/state/apply.h"

/*
** The MQTT session hands every message it receives, once the whole-message
** limits (max_topic_len, max_payload) have passed, to the first decoder
** that claims its topic; the JSON decoder (decode_json.c) claims every
** topic and comes last. A decoder turns the message into key updates
** (struct msg, apply.h) and emits each through `out`: the plain JSON
** decoder emits one (the topic is the key), Sparkplug B one per metric.
** Every update is then applied under the same rules (timestamps,
** idempotence, tombstones, limits), and a refused one is listed with its
** reason. A decoder never touches the index: it only says what the
** message means.
**
** Decoders are given to the session before it starts (mqtt_add_decoder,
** mqtt.h), which owns them from then on and frees them with the session.
** The session also calls their tick (about once a second) and link_lost
** (when the broker link drops), both optional.
**
** Threads: decoders run on the session thread only (no locking inside);
** their state is theirs (Sparkplug keeps sessions and alias tables).
**
** Cost: the session calls claims() of each decoder before the JSON one
** for every message, then one decode(); keep claims() a prefix test and
** decode() free of allocation on its common path. The payload is
** libmosquitto's buffer: no copy is made for a decoder.
*/

/* One message as received. Pointers borrowed for the call. */
struct decode_in {
	const char *topic;     /* NUL-terminated at topic_len */
	size_t topic_len;
	const void *payload;   /* never NULL ("" when empty) */
	size_t payload_len;
	int64_t recv_ns;       /* receive time, strictly increasing across messages */
	bool retained;
};

/*
** Where a decoder's results go (the session's sink, mqtt.h), and the way
** back to the broker. The session builds one decode_out when it starts
** and passes the same pointer to every call: nothing is set up per message.
**
**   value    one key update. m->recv_ms is the message's receive time
**            (recv_ns / 1e6); m->ts_ns the update's observation time (the
**            payload's, or recv_ns). why != REJECT_NONE: the update (or the
**            whole message, with m->topic the message's topic) is refused;
**            then m->payload holds at most REJECTS_KEEP_BYTES of it and
**            full_len is its size as received. Pointers are borrowed for
**            the call: m->topic may point into the decoder's own scratch
**            (a Sparkplug metric's key), valid until value() returns.
**
**   publish  send a message through the session's connection (Sparkplug's
**            NCMD/DCMD rebirth requests), pub_ctx being the session. Only
**            on the session thread, within decode(), tick() or
**            link_lost() (libmosquitto is used from no other thread). A
**            decoder that publishes from hooks of its own is given
**            mqtt_decoder_publish and the session instead (mqtt.h): the
**            same function. topic and payload are copied into the
**            outgoing packet before it returns; the session writes it
**            right after the current read burst, never blocking the
**            caller. qos 0 or 1; retain as MQTT says.
**            Returns 0, -ENOTCONN (no connection right now: nothing is
**            queued; a decoder asks again when data comes again),
**            -EINVAL (bad topic or qos, bad UTF-8), -EPERM (not on the
**            session thread), -EMSGSIZE, -ENOBUFS (more than
**            MQTT_DECODER_PUB_MAX (mqtt.h) publications in this turn:
**            dropped, counted and logged by the session, so a stream that
**            provokes a request per message cannot grow libmosquitto's
**            queue without bound) or -ENOMEM.
*/
struct decode_out {
	void (*value)(void *ctx, const struct msg *m, enum reject_reason why, size_t full_len);
	void *ctx;
	int (*publish)(void *pub_ctx, const char *topic, const void *payload, size_t len, int qos,
		       bool retain);
	void *pub_ctx;
};

struct decoder;

struct decoder_ops {
	const char *name;   /* "json", "sparkplug": logs and metrics */
	/* Is this message the decoder's? Cheap: a prefix test. The last
	 * decoder (JSON) is not asked: it takes whatever is left. */
	bool (*claims)(const struct decoder *d, const char *topic, size_t len);
	/* Decode in and emit its updates; returns how many were emitted
	 * (refusals included). */
	size_t (*decode)(struct decoder *d, const struct decode_in *in, const struct decode_out *out);
	/* May be NULL. About once a second, connected or not: timers (a
	 * Sparkplug seq gap that did not fill). now_ns is the clock of
	 * decode_in.recv_ns. May publish (when connected). */
	void (*tick)(struct decoder *d, int64_t now_ns);
	/* May be NULL. The broker link was lost: what the decoder knows of
	 * its producers' sessions may be stale by the next connect (a node
	 * reborn meanwhile with other aliases). Publishing fails here
	 * (-ENOTCONN). */
	void (*link_lost)(struct decoder *d);
	void (*free)(struct decoder *d);   /* accepts NULL */
};

/* Every decoder begins with this; its own state follows. */
struct decoder {
	const struct decoder_ops *ops;
};

static inline void decoder_free(struct decoder *d)
{
	if (d)
		d->ops->free(d);
}

#endif
