/* SPDX-License-Identifier: MIT */
/* intents.h: the intent endpoints' rules (POST /v1/intents/{topic}, GET /v1/intents...), apart from HTTP. */
#ifndef SM_API_INTENTS_H
#define SM_API_INTENTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "common/buf.h"
#include "mirror/state/index.h"
#include "mirror/state/intents.h"

/* What the endpoints check requests against; borrowed from the config. */
struct api_intents {
	struct intents *in;          /* NULL: intents are off (403) */
	struct index *ix;            /* where the confirm key's value at the request is read */
	char *const *allow;          /* [intents] allow filters */
	size_t nallow;
	int64_t expire_ms, timeout_ms; /* the defaults */
	size_t max_topic_len;
};

#define API_INTENT_WAIT_MAX_MS (5 * 60 * 1000) /* ?wait= is capped at this */
#define API_INTENTS_LIST_MAX 1000

/*
** POST /v1/intents/{topic} (topic percent-decoded, len bytes) with body:
** validate (403 not allowed or intents off, 400 a bad body: the reason
** names the member), read the confirm key's current value, submit at
** now_ms. Writes the JSON answer (the intent record, or {"error"}) to out
** and returns the HTTP status: 202 (accepted: *ret_id set), 400, 403, 503
** (the outbox is full, or the file cannot take it), 500 (out of memory).
*/
unsigned api_intent_post(const struct api_intents *ai, const char *topic, size_t len,
			 const json_t *body, int64_t now_ms, struct buf *out, int64_t *ret_id);

/* GET /v1/intents/{id}: 200 with the record (*ret_decided: final), 404, 500. */
unsigned api_intent_get(const struct api_intents *ai, int64_t id, struct buf *out,
			bool *ret_decided);

/* GET /v1/intents?state=S&limit=N: {"items":[...]} newest first: 200, 500. */
unsigned api_intent_list(const struct api_intents *ai, enum intent_state only, size_t limit,
			 struct buf *out);

/* An intent_visit_fn for intents_set_observer: each change of an intent
 * as an `intent` event to /v1/watch listeners whose filter matches its
 * topic (ctx: the struct watch). */
int api_intent_event(const struct intent_info *it, void *ctx);

#endif
