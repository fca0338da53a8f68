/* SPDX-License-Identifier: MIT */
/* rejects.h: the bounded list of recently rejected messages (GET /v1/rejects). */
#ifndef SM_REJECTS_H
#define SM_REJECTS_H

#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "mirror/state/apply.h"

#define REJECTS_KEEP_BYTES 64 /* payload bytes kept per entry */

struct rejects;

/* A ring of at most cap entries. Returns NULL on ENOMEM. */
struct rejects *rejects_new(size_t cap);
void rejects_free(struct rejects *r);  /* accepts NULL */

/* Record a rejection (copies topic, at most REJECTS_KEEP_BYTES of payload).
 * Also counts it in g_stats and logs it, rate-limited. Thread-safe. */
void rejects_add(struct rejects *r, const char *topic, size_t topic_len,
		 const void *payload, size_t payload_len, size_t full_len,
		 enum reject_reason reason, int64_t now_ms);

/* Append {"items":[{"topic":..,"reason":..,"time":..,"payload_size":N,
 * "payload_text"|"payload_base64":..}, ...]} newest first. Thread-safe.
 * Returns 0 or a buf error. */
int rejects_render(struct rejects *r, struct buf *b);

#endif
