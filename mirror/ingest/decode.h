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
** Threads: decoders run on the session thread only (no locking inside);
** their state is theirs (Sparkplug keeps sessions and alias tables).
*/

/* One message as received. Pointers borrowed for the call. */
struct decode_in {
	const char *topic;
	size_t topic_len;
	const void *payload;   /* never NULL ("" when empty) */
	size_t payload_len;
	int64_t recv_ns;       /* receive time, strictly increasing across messages */
	bool retained;
};

/*
** Where a decoder's results go (the session's sink, mqtt.h).
**
**   value  one key update. why != REJECT_NONE: the update (or the whole
**          message, with m->topic the message's topic) is refused; then
**          m->payload holds at most REJECTS_KEEP_BYTES of it and full_len
**          is its size as received. Pointers are borrowed for the call.
*/
struct decode_out {
	void (*value)(void *ctx, const struct msg *m, enum reject_reason why, size_t full_len);
	void *ctx;
};

struct decoder;

struct decoder_ops {
	const char *name;   /* "json", "sparkplug": logs and metrics */
	/* Is this message the decoder's? Cheap: a prefix test. */
	bool (*claims)(const struct decoder *d, const char *topic, size_t len);
	/* Decode in and emit its updates; returns how many were emitted
	 * (refusals included). */
	size_t (*decode)(struct decoder *d, const struct decode_in *in, const struct decode_out *out);
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
