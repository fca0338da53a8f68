/* SPDX-License-Identifier: MIT */
/* test_decode.c: unit tests of the JSON decoder behind the decoder interface (decode.h). */
#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/conf.h"
#include "mirror/ingest/decode_json.h"
#include "mirror/ingest/jscan.h"
#include "mirror/state/apply.h"
#include "mirror/state/rejects.h"

#define RECV_NS (INT64_C(1795313402123) * 1000000 + 456) /* 2026-11-22T02:10:02.123000456Z */

/* What the decoder emitted: the last update, copied, and how many. */
struct got {
	unsigned n;
	struct msg m;
	enum reject_reason why;
	size_t full_len;
	char topic[128];
	char payload[8192];
};

static void got_value(void *ctx, const struct msg *m, enum reject_reason why, size_t full_len)
{
	struct got *g = ctx;

	ck_assert_uint_lt(m->topic_len, sizeof(g->topic));
	ck_assert_uint_lt(m->payload_len, sizeof(g->payload));
	ck_assert_ptr_nonnull(m->payload);
	g->n++;
	g->m = *m;
	g->why = why;
	g->full_len = full_len;
	memcpy(g->topic, m->topic, m->topic_len);
	g->topic[m->topic_len] = '\0';
	memcpy(g->payload, m->payload, m->payload_len);
	g->payload[m->payload_len] = '\0';
}

static int no_publish(void *ctx, const char *topic, const void *payload, size_t len, int qos,
		      bool retain)
{
	(void)ctx, (void)topic, (void)payload, (void)len, (void)qos, (void)retain;
	ck_abort_msg("the JSON decoder never publishes");
	return -EINVAL;
}

static struct decoder *json_new(enum conf_format format, const char *ts_field)
{
	struct conf c;
	struct decoder *d = NULL;

	ck_assert_int_eq(conf_defaults(&c), 0);
	c.format = format;
	if (ts_field)
		ck_assert_int_eq(conf_set_str(&c.timestamp_field, ts_field), 0);
	ck_assert_int_eq(decode_json_new(&c, &d), 0);
	conf_free(&c); /* the decoder keeps its own copy */
	ck_assert_ptr_nonnull(d);
	ck_assert_str_eq(d->ops->name, "json");
	return d;
}

static struct got decode(struct decoder *d, const char *topic, const char *payload, bool retained)
{
	struct got g = { 0 };
	struct decode_out out = { .value = got_value, .ctx = &g, .publish = no_publish };
	struct decode_in in = { .topic = topic, .topic_len = strlen(topic),
				.payload = payload, .payload_len = strlen(payload),
				.recv_ns = RECV_NS, .retained = retained };

	ck_assert(d->ops->claims(d, topic, strlen(topic)));
	ck_assert_uint_eq(d->ops->decode(d, &in, &out), 1);
	ck_assert_uint_eq(g.n, 1);
	ck_assert_str_eq(g.topic, topic);
	return g;
}

/* One update per message: the topic is the key, the payload as received. */
START_TEST(test_plain)
{
	struct decoder *d = json_new(CONF_FORMAT_AUTO, NULL);
	struct got g;

	g = decode(d, "dc1/r1/temp", "{\"value\": 21.5, \"ts\": 1795313402000}", true);
	ck_assert_int_eq(g.why, REJECT_NONE);
	ck_assert(g.m.is_json && g.m.ts_from_payload && g.m.retained);
	ck_assert_int_eq(g.m.ts_ns, INT64_C(1795313402000) * 1000000);
	ck_assert_int_eq(g.m.recv_ms, RECV_NS / 1000000);
	ck_assert_str_eq(g.payload, "{\"value\": 21.5, \"ts\": 1795313402000}");
	ck_assert_uint_eq(g.full_len, strlen(g.payload));

	/* No timestamp: the receive time, to the nanosecond. */
	g = decode(d, "a", "{\"value\": 1}", false);
	ck_assert(g.m.is_json && !g.m.ts_from_payload && !g.m.retained);
	ck_assert_int_eq(g.m.ts_ns, RECV_NS);

	/* format = auto mirrors any bytes. */
	g = decode(d, "a", "not json at all", false);
	ck_assert_int_eq(g.why, REJECT_NONE);
	ck_assert(!g.m.is_json && !g.m.ts_from_payload);
	ck_assert_str_eq(g.payload, "not json at all");

	/* An empty payload is a delete, never scanned. */
	g = decode(d, "a", "", false);
	ck_assert_int_eq(g.why, REJECT_NONE);
	ck_assert_uint_eq(g.m.payload_len, 0);
	ck_assert(!g.m.is_json);
	decoder_free(d);
}
END_TEST

/* The timestamp member: the configured field first, then "timestamp", "time". */
START_TEST(test_ts_fields)
{
	struct decoder *d = json_new(CONF_FORMAT_AUTO, "obs");
	struct got g;

	g = decode(d, "a", "{\"time\": 1, \"obs\": 1795313402123}", false);
	ck_assert(g.m.ts_from_payload);
	ck_assert_int_eq(g.m.ts_ns, INT64_C(1795313402123) * 1000000);
	g = decode(d, "a", "{\"time\": \"2026-11-22T02:10:02.5Z\"}", false);
	ck_assert_int_eq(g.m.ts_ns, INT64_C(1795313402500) * 1000000);
	g = decode(d, "a", "{\"timestamp\": 1795313403, \"time\": 1}", false);
	ck_assert_int_eq(g.m.ts_ns, INT64_C(1795313403) * 1000000000);
	/* "ts" is not among the names once the field is "obs". */
	g = decode(d, "a", "{\"ts\": 1}", false);
	ck_assert(!g.m.ts_from_payload);
	ck_assert_int_eq(g.m.ts_ns, RECV_NS);
	/* A null member counts as absent. */
	g = decode(d, "a", "{\"obs\": null, \"time\": 1795313404}", false);
	ck_assert_int_eq(g.m.ts_ns, INT64_C(1795313404) * 1000000000);
	decoder_free(d);

	/* The field named like a default one is not asked twice. */
	d = json_new(CONF_FORMAT_AUTO, "time");
	g = decode(d, "a", "{\"timestamp\": 1795313403, \"time\": 1795313404}", false);
	ck_assert_int_eq(g.m.ts_ns, INT64_C(1795313404) * 1000000000);
	decoder_free(d);
}
END_TEST

/* A timestamp member that cannot be decoded refuses the message, kept cut. */
START_TEST(test_bad_ts)
{
	struct decoder *d = json_new(CONF_FORMAT_AUTO, NULL);
	char big[200];
	struct got g;

	g = decode(d, "a", "{\"ts\": \"yesterday\"}", false);
	ck_assert_int_eq(g.why, REJECT_BAD_TS);
	ck_assert_str_eq(g.payload, "{\"ts\": \"yesterday\"}");
	g = decode(d, "a", "{\"ts\": true}", false);
	ck_assert_int_eq(g.why, REJECT_BAD_TS);
	g = decode(d, "a", "{\"ts\": -5}", false);
	ck_assert_int_eq(g.why, REJECT_BAD_TS);

	/* A refused payload is passed cut to REJECTS_KEEP_BYTES, with its size. */
	snprintf(big, sizeof(big), "{\"ts\": \"no\", \"pad\": \"%0120d\"}", 0);
	g = decode(d, "a", big, false);
	ck_assert_int_eq(g.why, REJECT_BAD_TS);
	ck_assert_uint_eq(g.m.payload_len, REJECTS_KEEP_BYTES);
	ck_assert_uint_eq(g.full_len, strlen(big));
	ck_assert_int_eq(memcmp(g.payload, big, REJECTS_KEEP_BYTES), 0);
	decoder_free(d);
}
END_TEST

/* format = json refuses what is not one JSON text; a delete still passes. */
START_TEST(test_format_json)
{
	struct decoder *d = json_new(CONF_FORMAT_JSON, NULL);
	struct got g;

	g = decode(d, "a", "hello", false);
	ck_assert_int_eq(g.why, REJECT_NOT_JSON);
	g = decode(d, "a", "{\"a\":1} {\"b\":2}", false);
	ck_assert_int_eq(g.why, REJECT_NOT_JSON);
	g = decode(d, "a", "42", false);
	ck_assert_int_eq(g.why, REJECT_NONE);
	ck_assert(g.m.is_json);
	g = decode(d, "a", "", false);
	ck_assert_int_eq(g.why, REJECT_NONE);
	/* A bad timestamp wins over a valid document. */
	g = decode(d, "a", "{\"ts\": {}}", false);
	ck_assert_int_eq(g.why, REJECT_BAD_TS);
	decoder_free(d);
	decoder_free(NULL);
}
END_TEST

/* Deep nesting: 100 levels (more than the scanner once took) is JSON with
 * its timestamp; beyond jansson's depth it is not JSON: format = json
 * refuses it as too_deep, format = auto mirrors it as text at its receive
 * time, as the contract says of what is not JSON. */
START_TEST(test_too_deep)
{
	struct decoder *d = json_new(CONF_FORMAT_AUTO, NULL);
	size_t cap = 16 * JSCAN_MAX_DEPTH + 64, n;
	char *p = malloc(cap);
	struct got g;

	ck_assert_ptr_nonnull(p);
	for (unsigned depth = 100; depth <= JSCAN_MAX_DEPTH + 1; depth += JSCAN_MAX_DEPTH + 1 - 100) {
		n = (size_t)snprintf(p, cap, "{\"ts\":1795313402123,\"a\":");
		for (unsigned i = 1; i < depth; i++)
			p[n++] = '[';
		p[n++] = '1';
		for (unsigned i = 1; i < depth; i++)
			p[n++] = ']';
		p[n++] = '}';
		p[n] = '\0';
		if (depth <= JSCAN_MAX_DEPTH) {
			decoder_free(d);
			d = json_new(CONF_FORMAT_JSON, NULL);
			g = decode(d, "a", p, false);
			ck_assert_int_eq(g.why, REJECT_NONE);
			ck_assert(g.m.is_json && g.m.ts_from_payload);
			ck_assert_int_eq(g.m.ts_ns, 1795313402123LL * 1000000);
		} else {
			g = decode(d, "a", p, false);
			ck_assert_int_eq(g.why, REJECT_TOO_DEEP);
			ck_assert_uint_eq(g.m.payload_len, REJECTS_KEEP_BYTES);
			decoder_free(d);
			d = json_new(CONF_FORMAT_AUTO, NULL);
			g = decode(d, "a", p, false);
			ck_assert_int_eq(g.why, REJECT_NONE);
			ck_assert(!g.m.is_json && !g.m.ts_from_payload);
			ck_assert_int_eq(g.m.ts_ns, RECV_NS);
			ck_assert_uint_eq(g.m.payload_len, n);
		}
	}
	ck_assert_str_eq(reject_reason_name(REJECT_TOO_DEEP), "too_deep");
	free(p);
	decoder_free(d);
}
END_TEST

static Suite *decode_suite(void)
{
	Suite *s = suite_create("decode");
	TCase *tc = tcase_create("json");

	tcase_add_test(tc, test_plain);
	tcase_add_test(tc, test_ts_fields);
	tcase_add_test(tc, test_bad_ts);
	tcase_add_test(tc, test_format_json);
	tcase_add_test(tc, test_too_deep);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(decode_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
