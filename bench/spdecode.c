/* SPDX-License-Identifier: MIT */
/* spdecode.c: micro-benchmark of the Sparkplug B decoder: NDATA with 50 metrics by alias, decoded into key updates. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/benchutil.h"
#include "mirror/ingest/sparkplug.h"
#include "sparkplug_b.pb-c.h"

#define NMETRICS 50

static uint64_t updates, bytes;

static void count(void *ctx, const struct msg *m, enum reject_reason why, size_t full_len)
{
	(void)ctx;
	(void)full_len;
	if (why != REJECT_NONE) {
		fprintf(stderr, "spdecode: %.*s refused: %s\n", (int)m->topic_len, m->topic,
			reject_reason_name(why));
		exit(1);
	}
	updates++;
	bytes += m->payload_len;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Metric i of a node: a mix of what plants send (Int32, Double, Boolean, String, Int64). */
static void fill(Spb__Payload__Metric *m, size_t i, bool birth, char *name, size_t namelen)
{
	static const uint32_t types[] = { SPB__DATA_TYPE__INT32, SPB__DATA_TYPE__DOUBLE,
					  SPB__DATA_TYPE__BOOLEAN, SPB__DATA_TYPE__STRING,
					  SPB__DATA_TYPE__INT64 };

	spb__payload__metric__init(m);
	if (birth) {
		snprintf(name, namelen, "line%zu/sensor%zu", i % 5, i);
		m->name = name;
		m->has_datatype = true;
		m->datatype = types[i % 5];
	}
	m->has_alias = true;
	m->alias = i + 1;
	m->has_timestamp = true;
	m->timestamp = UINT64_C(1795313402123) + i;
	switch (i % 5) {
	case 0: m->value_case = SPB__PAYLOAD__METRIC__VALUE_INT_VALUE; m->int_value = (uint32_t)(i * 7); break;
	case 1: m->value_case = SPB__PAYLOAD__METRIC__VALUE_DOUBLE_VALUE; m->double_value = 21.5 + (double)i; break;
	case 2: m->value_case = SPB__PAYLOAD__METRIC__VALUE_BOOLEAN_VALUE; m->boolean_value = i & 1; break;
	case 3: m->value_case = SPB__PAYLOAD__METRIC__VALUE_STRING_VALUE; m->string_value = (char *)"running"; break;
	default: m->value_case = SPB__PAYLOAD__METRIC__VALUE_LONG_VALUE; m->long_value = UINT64_C(1) << 40; break;
	}
}

static size_t pack(bool birth, uint64_t seq, uint8_t *out, size_t cap)
{
	static Spb__Payload__Metric m[NMETRICS], *mv[NMETRICS];
	static char names[NMETRICS][32];
	Spb__Payload pl = SPB__PAYLOAD__INIT;

	for (size_t i = 0; i < NMETRICS; i++) {
		fill(&m[i], i, birth, names[i], sizeof(names[i]));
		mv[i] = &m[i];
	}
	pl.has_timestamp = true;
	pl.timestamp = UINT64_C(1795313402123);
	pl.has_seq = true;
	pl.seq = seq;
	pl.n_metrics = NMETRICS;
	pl.metrics = mv;
	if (spb__payload__get_packed_size(&pl) > cap)
		abort();
	return spb__payload__pack(&pl, out);
}

int main(int argc, char **argv)
{
	static uint8_t birth[8192], data[256][8192];
	static size_t data_len[256];
	uint64_t n = 200000;
	struct sparkplug_conf c;
	struct decoder *d;
	struct decode_out out = { .value = count };
	int64_t t = INT64_C(1795313402123) * 1000000;
	double t0, secs;

	if (argc > 1 && bench_parse_u64(argv[1], UINT64_C(1) << 40, &n) < 0) {
		fprintf(stderr, "usage: spdecode [MESSAGES]\n");
		return 2;
	}
	sparkplug_conf_default(&c);
	if (sparkplug_new(&c, NULL, &d) < 0)
		return 1;
	struct decode_in in = { .topic = "spBv1.0/plant/NBIRTH/edge1", .payload = birth,
				.payload_len = pack(true, 0, birth, sizeof(birth)), .recv_ns = t };
	in.topic_len = strlen(in.topic);
	d->ops->decode(d, &in, &out);
	for (unsigned s = 0; s < 256; s++)
		data_len[s] = pack(false, s, data[s], sizeof(data[s]));
	in.topic = "spBv1.0/plant/NDATA/edge1";
	in.topic_len = strlen(in.topic);
	updates = bytes = 0;
	t0 = now_s();
	for (uint64_t i = 0; i < n; i++) {
		unsigned s = (unsigned)((i + 1) & 255);

		in.payload = data[s];
		in.payload_len = data_len[s];
		in.recv_ns = t + (int64_t)i + 1;
		d->ops->decode(d, &in, &out);
	}
	secs = now_s() - t0;
	if (updates != n * NMETRICS) {
		fprintf(stderr, "spdecode: %llu updates, expected %llu\n", (unsigned long long)updates,
			(unsigned long long)(n * NMETRICS));
		return 1;
	}
	printf("spdecode: %llu NDATA x %d metrics (%zu bytes each) in %.3f s: "
	       "%.0f messages/s, %.0f metrics/s, %.0f JSON bytes/metric\n",
	       (unsigned long long)n, NMETRICS, data_len[1], secs, (double)n / secs,
	       (double)updates / secs, (double)bytes / (double)updates);
	decoder_free(d);
	return 0;
}
