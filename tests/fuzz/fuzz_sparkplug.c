/* SPDX-License-Identifier: MIT */
/* fuzz_sparkplug.c: libFuzzer target for the Sparkplug B decoder: births, data and deaths from any bytes. */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "mirror/ingest/jscan.h"
#include "mirror/ingest/sparkplug.h"
#include "sparkplug_b.pb-c.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Every value is one JSON object; a refusal names a reason. */
static void check_value(void *ctx, const struct msg *m, enum reject_reason why, size_t full_len)
{
	struct jscan_result r;
	json_error_t e;
	json_t *j;

	(void)ctx;
	assert(m->topic && m->topic_len && m->payload);
	if (why != REJECT_NONE) {
		assert(why < REJECT_REASON_MAX);
		assert(m->payload_len <= full_len);
		return;
	}
	assert(m->is_json);
	jscan_payload(m->payload, m->payload_len, NULL, 0, &r);
	assert(r.is_json);
	/* jansson too, within its limits: no integer past INT64_MAX (a UInt64
	 * may be), no real that overflows a double (a STATE payload may hold one). */
	j = json_loadb(m->payload, m->payload_len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
	assert(j || strstr(e.text, "too big") || strstr(e.text, "overflow"));
	json_decref(j);
}

/* A rebirth request is a payload we can read back. */
static int check_publish(void *ctx, const char *topic, const void *p, size_t len, int qos, bool retain)
{
	Spb__Payload *pl = spb__payload__unpack(NULL, len, p);

	(void)ctx;
	assert(!strncmp(topic, "spBv1.0/", 8) && strstr(topic, "/NCMD/"));
	assert(pl && pl->n_metrics == 1 && pl->metrics[0]->boolean_value);
	assert(qos == 0 && !retain);
	spb__payload__free_unpacked(pl, NULL);
	return 0;
}

static const char *const topics[] = {
	"spBv1.0/G/NDATA/E", "spBv1.0/G/DDATA/E/D", "spBv1.0/G/NDEATH/E", "spBv1.0/G/DDEATH/E/D",
	"spBv1.0/G/NBIRTH/E", "spBv1.0/G/DBIRTH/E/D", "spBv1.0/STATE/h", "spBv1.0/G/NCMD/E",
};

/*
** The first byte picks the last topic; the rest is the payload. The payload
** goes in as an NBIRTH, then a DBIRTH, then under that topic, so that data
** and deaths meet the session the birth made (aliases, bdSeq, seq).
*/
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sparkplug_conf c;
	struct sparkplug_hooks h = { NULL, NULL, check_publish, NULL };
	struct decode_out out = { .value = check_value };
	struct decoder *d;
	const char *last;
	int64_t t = INT64_C(1795313402123) * 1000000;

	if (!size)
		return 0;
	last = topics[data[0] % (sizeof(topics) / sizeof(topics[0]))];
	sparkplug_conf_default(&c);
	c.rebirth = true;
	c.reorder_window_ms = 0;
	c.max_node_metrics = 64;
	c.max_message_metrics = 256;
	c.max_value_len = 4096;
	c.max_decode_mem = 1 << 20;
	if (sparkplug_new(&c, &h, &d) < 0)
		abort();
	const char *sequence[] = { "spBv1.0/G/NBIRTH/E", "spBv1.0/G/DBIRTH/E/D", last, last };
	for (size_t i = 0; i < 4; i++) {
		struct decode_in in = {
			.topic = sequence[i], .topic_len = strlen(sequence[i]),
			.payload = size > 1 ? (const void *)(data + 1) : "", .payload_len = size - 1,
			.recv_ns = t + (int64_t)i * 1000000,
		};

		assert(d->ops->claims(d, in.topic, in.topic_len));
		(void)d->ops->decode(d, &in, &out);
	}
	sparkplug_tick(d, t + INT64_C(10000000000));
	sparkplug_link_lost(d);
	decoder_free(d);
	return 0;
}
