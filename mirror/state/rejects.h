/* SPDX-License-Identifier: MIT */
/* rejects.h: the bounded list of recently rejected messages (GET /v1/rejects renders it, api/render.h). */
#ifndef SM_REJECTS_H
#define SM_REJECTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mirror/state/apply.h"

#define REJECTS_KEEP_BYTES 64   /* payload bytes kept per entry */
/* Topics longer than this are kept cut (the over-long topic is itself a
 * reason to reject, and MQTT allows 64 KiB); the entry says so. */
#define REJECTS_KEEP_TOPIC 1024

/* One rejected message as the ring keeps it. */
struct rejects_entry {
	int64_t time_ms;                  /* when it was rejected (wall clock) */
	uint64_t payload_size;            /* the full payload's size */
	uint16_t topic_len;               /* bytes of topic kept */
	uint8_t kept;                     /* bytes of payload kept: the first ones */
	bool topic_cut;                   /* the topic was longer than REJECTS_KEEP_TOPIC */
	enum reject_reason reason;
	char topic[REJECTS_KEEP_TOPIC];   /* topic_len bytes, not NUL-terminated */
	unsigned char payload[REJECTS_KEEP_BYTES];
};

struct rejects;

/* A ring of at most cap entries. Returns NULL on ENOMEM. */
struct rejects *rejects_new(size_t cap);
void rejects_free(struct rejects *r);  /* accepts NULL */

/* Record a rejection (copies topic, at most REJECTS_KEEP_BYTES of payload).
 * Also counts it in g_stats and logs it, rate-limited. Thread-safe. */
void rejects_add(struct rejects *r, const char *topic, size_t topic_len,
		 const void *payload, size_t payload_len, size_t full_len,
		 enum reject_reason reason, int64_t now_ms);

/*
** Call fn(e, ctx) for each entry, newest first, until fn returns non-zero
** (that value is returned) or the entries are exhausted (0). The ring's
** lock is held throughout, so that the entries form one consistent list
** and e stays valid during the call: fn must be short (it delays the
** thread that rejects next) and must not call rejects_add. Thread-safe.
*/
typedef int (*rejects_visit_fn)(const struct rejects_entry *e, void *ctx);
int rejects_visit(struct rejects *r, rejects_visit_fn fn, void *ctx);

#endif
