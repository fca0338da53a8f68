/* SPDX-License-Identifier: MIT */
/* decode_json.c: the JSON decoder: one scan of the payload in place, one update per message. */
#include "mirror/ingest/decode_json.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "mirror/ingest/jscan.h"
#include "mirror/state/rejects.h"

struct decode_json {
	struct decoder base;
	bool format_json;
	char *ts_field;
	const char *ts_names[3];
	size_t nts_names;
};

static bool json_claims(const struct decoder *d, const char *topic, size_t len)
{
	(void)d;
	(void)topic;
	(void)len;
	return true;
}

/* The hot path: the payload is scanned once, in the session's buffer. */
static size_t json_decode(struct decoder *d, const struct decode_in *in,
			  const struct decode_out *out)
{
	const struct decode_json *j = (const struct decode_json *)d;
	enum reject_reason why = REJECT_NONE;
	struct jscan_result js = { 0 };
	struct msg m;

	if (in->payload_len > 0) {
		jscan_payload(in->payload, in->payload_len, j->ts_names, j->nts_names, &js);
		/* Deeper than jansson loads: not JSON, as the contract has it
		 * (format = auto mirrors it as text at its receive time);
		 * format = json says why it refuses it. */
		if (js.too_deep && j->format_json)
			why = REJECT_TOO_DEEP;
		else if (js.ts_bad)
			why = REJECT_BAD_TS;
		else if (j->format_json && !js.is_json)
			why = REJECT_NOT_JSON;
	}
	m = (struct msg){
		.topic = in->topic, .topic_len = in->topic_len,
		.payload = in->payload,
		.payload_len = why == REJECT_NONE || in->payload_len < REJECTS_KEEP_BYTES
				       ? in->payload_len : REJECTS_KEEP_BYTES,
		.ts_ns = js.ts_found ? js.ts_ns : in->recv_ns,
		.recv_ms = in->recv_ns / 1000000,
		.retained = in->retained,
		.ts_from_payload = js.ts_found,
		.is_json = js.is_json,
	};
	out->value(out->ctx, &m, why, in->payload_len);
	return 1;
}

static void json_free(struct decoder *d)
{
	struct decode_json *j = (struct decode_json *)d;

	if (!j)
		return;
	free(j->ts_field);
	free(j);
}

static const struct decoder_ops json_ops = {
	.name = "json",
	.claims = json_claims,
	.decode = json_decode,
	.free = json_free,
};

int decode_json_new(const struct conf *c, struct decoder **ret)
{
	struct decode_json *j = calloc(1, sizeof(*j));

	if (!j)
		return -ENOMEM;
	j->base.ops = &json_ops;
	j->format_json = c->format == CONF_FORMAT_JSON;
	if (c->timestamp_field && *c->timestamp_field) {
		j->ts_field = strdup(c->timestamp_field);
		if (!j->ts_field) {
			free(j);
			return -ENOMEM;
		}
		j->ts_names[j->nts_names++] = j->ts_field;
	}
	if (!j->ts_field || strcmp(j->ts_field, "timestamp") != 0)
		j->ts_names[j->nts_names++] = "timestamp";
	if (!j->ts_field || strcmp(j->ts_field, "time") != 0)
		j->ts_names[j->nts_names++] = "time";
	*ret = &j->base;
	return 0;
}
