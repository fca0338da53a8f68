/* SPDX-License-Identifier: MIT */
/* test_sparkplug.c: unit tests of the Sparkplug B decoder: every metric type, sessions, malformed payloads. */
#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mirror/ingest/sparkplug.h"
#include "sparkplug_b.pb-c.h"
#include "clock_fake.h"

#define T INT64_C(1795313402123)   /* ms: the vectors' and fake_now_ms's time */
#define MS(ms) ((int64_t)(ms) * 1000000)

/* ---- what comes out --------------------------------------------------- */

#define MAXU 256

struct upd {
	char key[256];
	char json[2048];
	int64_t ts_ns;
	bool from_payload;
	enum reject_reason why;
};

struct death {
	char who[128];   /* "G/E" or "G/E/D" */
	int64_t ts_ms;
	char keys[1024]; /* sparkplug_foreach_key inside the hook, ';'-separated */
};

struct pub {
	char topic[128];
	uint8_t payload[256];
	size_t len;
	int qos;
	bool retain;
};

static struct upd upds[MAXU];
static size_t n_upds;
static struct death deaths[16];
static size_t n_deaths;
static struct pub pubs[256];
static size_t n_pubs;
static struct decoder *dec;

static void sink_value(void *ctx, const struct msg *m, enum reject_reason why, size_t full_len)
{
	struct upd *u = &upds[n_upds];

	(void)ctx;
	(void)full_len;
	ck_assert_uint_lt(n_upds, MAXU);
	ck_assert_uint_lt(m->topic_len, sizeof(u->key));
	memcpy(u->key, m->topic, m->topic_len);
	u->key[m->topic_len] = '\0';
	ck_assert_uint_lt(m->payload_len, sizeof(u->json));
	memcpy(u->json, m->payload, m->payload_len);
	u->json[m->payload_len] = '\0';
	u->ts_ns = m->ts_ns;
	u->from_payload = m->ts_from_payload;
	u->why = why;
	if (why == REJECT_NONE)
		ck_assert(m->is_json);
	n_upds++;
}

static const struct decode_out out = { .value = sink_value };

static void key_cb(void *ctx, const char *key, size_t len)
{
	char *keys = ctx;

	ck_assert_uint_eq(strlen(key), len);
	if (*keys)
		strncat(keys, ";", 1023 - strlen(keys));
	strncat(keys, key, 1023 - strlen(keys));
}

static void hook_node_death(void *ctx, const char *g, const char *e, int64_t ts_ms)
{
	struct death *d = &deaths[n_deaths++];

	(void)ctx;
	snprintf(d->who, sizeof(d->who), "%s/%s", g, e);
	d->ts_ms = ts_ms;
	d->keys[0] = '\0';
	ck_assert_int_ge(sparkplug_foreach_key(dec, g, e, NULL, key_cb, d->keys), 0);
}

static void hook_device_death(void *ctx, const char *g, const char *e, const char *dv, int64_t ts_ms)
{
	struct death *d = &deaths[n_deaths++];

	(void)ctx;
	snprintf(d->who, sizeof(d->who), "%s/%s/%s", g, e, dv);
	d->ts_ms = ts_ms;
	d->keys[0] = '\0';
	ck_assert_int_ge(sparkplug_foreach_key(dec, g, e, dv, key_cb, d->keys), 0);
}

static int hook_publish(void *ctx, const char *topic, const void *p, size_t len, int qos, bool retain)
{
	struct pub *u;

	ck_assert_uint_lt(n_pubs, sizeof(pubs) / sizeof(pubs[0]));
	u = &pubs[n_pubs++];

	(void)ctx;
	snprintf(u->topic, sizeof(u->topic), "%s", topic);
	ck_assert_uint_le(len, sizeof(u->payload));
	memcpy(u->payload, p, len);
	u->len = len;
	u->qos = qos;
	u->retain = retain;
	return 0;
}

static const struct sparkplug_hooks hooks = { hook_node_death, hook_device_death, hook_publish, NULL };

static struct sparkplug_conf conf;

static void setup_with(void)
{
	n_upds = n_deaths = n_pubs = 0;
	ck_assert_int_eq(sparkplug_new(&conf, &hooks, &dec), 0);
	ck_assert(sparkplug_is(dec));
}

static void setup(void)
{
	sparkplug_conf_default(&conf);
	conf.rebirth = true;
	conf.reorder_window_ms = 0;
	setup_with();
}

static void teardown(void)
{
	decoder_free(dec);
	dec = NULL;
}

static struct sparkplug_stats stats(void)
{
	struct sparkplug_stats s;

	sparkplug_get_stats(dec, &s);
	return s;
}

static int64_t recv_ns = MS(T);

/* Feed one message; returns the number of updates it produced. */
static size_t feed(const char *topic, const void *p, size_t len)
{
	struct decode_in in = {
		.topic = topic, .topic_len = strlen(topic),
		.payload = len ? p : "", .payload_len = len,
		.recv_ns = (recv_ns += MS(1)),
	};
	size_t before = n_upds, r;

	ck_assert(dec->ops->claims(dec, topic, strlen(topic)));
	r = dec->ops->decode(dec, &in, &out);
	ck_assert_uint_eq(r, n_upds - before);
	return r;
}

/* The last update for key (REJECT_NONE or not), or NULL. */
static const struct upd *find(const char *key)
{
	for (size_t i = n_upds; i-- > 0;)
		if (!strcmp(upds[i].key, key))
			return &upds[i];
	return NULL;
}

static void expect(const char *key, const char *json)
{
	const struct upd *u = find(key);

	ck_assert_msg(u, "no update for %s", key);
	ck_assert_msg(u->why == REJECT_NONE, "%s refused: %s", key, reject_reason_name(u->why));
	ck_assert_str_eq(u->json, json);
}

static void expect_refused(const char *key, enum reject_reason why)
{
	const struct upd *u = find(key);

	ck_assert_msg(u, "no update for %s", key);
	ck_assert_msg(u->why == why, "%s: %s, not %s", key, reject_reason_name(u->why),
		      reject_reason_name(why));
}

/* ---- payloads built here with protobuf-c -------------------------------- */

static uint8_t wire[1 << 16];

static size_t pack(Spb__Payload *pl)
{
	size_t n = spb__payload__get_packed_size(pl);

	ck_assert_uint_le(n, sizeof(wire));
	return spb__payload__pack(pl, wire);
}

static size_t pack_metrics(uint64_t seq, Spb__Payload__Metric **m, size_t n)
{
	Spb__Payload pl = SPB__PAYLOAD__INIT;

	pl.has_timestamp = true;
	pl.timestamp = (uint64_t)T;
	pl.has_seq = true;
	pl.seq = seq;
	pl.n_metrics = n;
	pl.metrics = m;
	return pack(&pl);
}

static Spb__Payload__Metric metric(const char *name, uint32_t type)
{
	Spb__Payload__Metric m = SPB__PAYLOAD__METRIC__INIT;

	m.name = (char *)name;
	m.has_datatype = true;
	m.datatype = type;
	m.has_timestamp = true;
	m.timestamp = (uint64_t)T;
	return m;
}

static Spb__Payload__Metric m_int(const char *name, uint32_t type, uint32_t v)
{
	Spb__Payload__Metric m = metric(name, type);

	m.value_case = SPB__PAYLOAD__METRIC__VALUE_INT_VALUE;
	m.int_value = v;
	return m;
}

static Spb__Payload__Metric m_bytes(const char *name, uint32_t type, const void *p, size_t n)
{
	Spb__Payload__Metric m = metric(name, type);

	m.value_case = SPB__PAYLOAD__METRIC__VALUE_BYTES_VALUE;
	m.bytes_value.data = (uint8_t *)p;
	m.bytes_value.len = n;
	return m;
}

static Spb__Payload__Metric m_str(const char *name, uint32_t type, const char *s)
{
	Spb__Payload__Metric m = metric(name, type);

	m.value_case = SPB__PAYLOAD__METRIC__VALUE_STRING_VALUE;
	m.string_value = (char *)s;
	return m;
}

/* An NBIRTH of group G, edge E with bdSeq bd and the given metrics after it. */
static void birth_node(uint64_t bd, Spb__Payload__Metric *extra, size_t n)
{
	Spb__Payload__Metric bdm = metric("bdSeq", SPB__DATA_TYPE__UINT64), *mv[16];

	bdm.value_case = SPB__PAYLOAD__METRIC__VALUE_LONG_VALUE;
	bdm.long_value = bd;
	mv[0] = &bdm;
	ck_assert_uint_lt(n, 16);
	for (size_t i = 0; i < n; i++)
		mv[i + 1] = &extra[i];
	feed("spBv1.0/G/NBIRTH/E", wire, pack_metrics(0, mv, n + 1));
}

/* An NDATA with seq and one Int32 metric by alias. */
static size_t data_alias(uint64_t seq, uint64_t alias, uint32_t v)
{
	Spb__Payload__Metric m = SPB__PAYLOAD__METRIC__INIT, *mv[1] = { &m };

	m.has_alias = true;
	m.alias = alias;
	m.value_case = SPB__PAYLOAD__METRIC__VALUE_INT_VALUE;
	m.int_value = v;
	return feed("spBv1.0/G/NDATA/E", wire, pack_metrics(seq, mv, 1));
}

/* ---- Tahu's vectors --------------------------------------------------------- */

static uint8_t vec[4096];

static size_t vector(const char *name)
{
	const char *dir = getenv("SM_SPARKPLUG_VECTORS");
	const char *src = getenv("SM_TEST_SRCDIR");
	char path[1024];
	FILE *f;
	size_t n;

	if (dir)
		snprintf(path, sizeof(path), "%s/%s.pb", dir, name);
	else
		snprintf(path, sizeof(path), "%s/tests/unit/sparkplug_vectors/%s.pb",
			 src ? src : ".", name);
	f = fopen(path, "rb");
	ck_assert_msg(f, "cannot open %s: %s", path, strerror(errno));
	n = fread(vec, 1, sizeof(vec), f);
	ck_assert(!ferror(f));
	fclose(f);
	ck_assert_uint_gt(n, 0);
	return n;
}

static void feedv(const char *topic, const char *name)
{
	size_t n = vector(name);

	feed(topic, vec, n);
}

#define TS "\"ts\":1795313402123"

START_TEST(tahu_types)
{
	feedv("spBv1.0/G/NBIRTH/E", "nbirth");
	expect("spBv1.0/G/E/bdSeq", "{\"value\":0,\"type\":\"UInt64\"," TS "}");
	expect("spBv1.0/G/E/Node Control/Rebirth", "{\"value\":false,\"type\":\"Boolean\"," TS "}");
	expect("spBv1.0/G/E/i8", "{\"value\":-5,\"type\":\"Int8\"," TS "}");
	expect("spBv1.0/G/E/i16", "{\"value\":-300,\"type\":\"Int16\"," TS "}");
	expect("spBv1.0/G/E/i32", "{\"value\":-70000,\"type\":\"Int32\"," TS "}");
	expect("spBv1.0/G/E/i64", "{\"value\":-5000000000,\"type\":\"Int64\"," TS "}");
	expect("spBv1.0/G/E/u8", "{\"value\":250,\"type\":\"UInt8\"," TS "}");
	expect("spBv1.0/G/E/u16", "{\"value\":65000,\"type\":\"UInt16\"," TS "}");
	expect("spBv1.0/G/E/u32", "{\"value\":4000000000,\"type\":\"UInt32\"," TS "}");
	expect("spBv1.0/G/E/u64", "{\"value\":18446744073709551615,\"type\":\"UInt64\"," TS "}");
	expect("spBv1.0/G/E/f", "{\"value\":3.14,\"type\":\"Float\"," TS "}");
	expect("spBv1.0/G/E/d", "{\"value\":2.718281828459045,\"type\":\"Double\"," TS "}");
	expect("spBv1.0/G/E/b", "{\"value\":true,\"type\":\"Boolean\"," TS "}");
	expect("spBv1.0/G/E/s", "{\"value\":\"h\xc3\xa9llo \\\"q\\\"\",\"type\":\"String\"," TS "}");
	expect("spBv1.0/G/E/dt", "{\"value\":1795313402123,\"type\":\"DateTime\"," TS "}");
	expect("spBv1.0/G/E/t", "{\"value\":\"text\",\"type\":\"Text\"," TS "}");
	expect("spBv1.0/G/E/uuid",
	       "{\"value\":\"8d1f4e2a-0c3b-4d5e-9f60-718293a4b5c6\",\"type\":\"UUID\"," TS "}");
	expect("spBv1.0/G/E/bytes", "{\"value\":\"AAEC/w==\",\"type\":\"Bytes\"," TS "}");
	expect("spBv1.0/G/E/file",
	       "{\"value\":\"aGk=\",\"type\":\"File\"," TS ",\"file_name\":\"a.txt\"}");
	expect("spBv1.0/G/E/ds", "{\"value\":{\"columns\":[\"a\",\"b\"],\"types\":[\"Int32\",\"String\"],"
	       "\"rows\":[[1,\"x\"],[2,\"y\"]]},\"type\":\"DataSet\"," TS "}");
	expect("spBv1.0/G/E/tpl", "{\"value\":{\"template_ref\":\"Motor\",\"version\":\"v1\","
	       "\"is_definition\":false,\"parameters\":{\"p\":\"v\"},"
	       "\"metrics\":{\"rpm\":{\"type\":\"Int32\",\"value\":1200}}},\"type\":\"Template\"," TS "}");
	expect("spBv1.0/G/E/nul", "{\"value\":null,\"type\":\"Int32\"," TS ",\"is_null\":true}");
	expect("spBv1.0/G/E/folder/leaf", "{\"value\":7,\"type\":\"Int32\"," TS "}");
	expect("spBv1.0/G/E/q", "{\"value\":5,\"type\":\"Int32\"," TS ",\"quality\":192}");
	/* No metric timestamp: the payload's (T + 7). */
	expect("spBv1.0/G/E/nots", "{\"value\":1,\"type\":\"Int32\",\"ts\":1795313402130}");
	ck_assert_int_eq(find("spBv1.0/G/E/nots")->ts_ns, MS(T + 7));
	ck_assert(find("spBv1.0/G/E/nots")->from_payload);
	ck_assert_int_eq(find("spBv1.0/G/E/i8")->ts_ns, MS(T));
	ck_assert_uint_eq(n_upds, 25);
	ck_assert_uint_eq(stats().metrics, 25);
	ck_assert_uint_eq(stats().metrics_refused, 0);
	ck_assert_uint_eq(stats().births, 1);
}
END_TEST

START_TEST(tahu_session)
{
	feedv("spBv1.0/G/NBIRTH/E", "nbirth");
	feedv("spBv1.0/G/NDATA/E", "ndata_alias");    /* seq 1, alias 3 = i32 */
	expect("spBv1.0/G/E/i32", "{\"value\":42,\"type\":\"Int32\",\"ts\":1795313403123}");
	ck_assert_int_eq(find("spBv1.0/G/E/i32")->ts_ns, MS(T + 1000));
	feedv("spBv1.0/G/NDATA/E", "ndata_name");     /* seq 2, by name */
	expect("spBv1.0/G/E/i32", "{\"value\":43,\"type\":\"Int32\",\"ts\":1795313404123}");
	feedv("spBv1.0/G/DBIRTH/E/D", "dbirth");      /* seq 3 */
	expect("spBv1.0/G/E/D/temp", "{\"value\":21.5,\"type\":\"Double\",\"ts\":1795313405123}");
	expect("spBv1.0/G/E/D/on", "{\"value\":true,\"type\":\"Boolean\",\"ts\":1795313405123}");
	feedv("spBv1.0/G/DDATA/E/D", "ddata");        /* seq 4, alias 100 */
	expect("spBv1.0/G/E/D/temp", "{\"value\":22.25,\"type\":\"Double\",\"ts\":1795313406123}");
	ck_assert_uint_eq(n_pubs, 0);

	n_upds = 0;
	feedv("spBv1.0/G/DDEATH/E/D", "ddeath");
	ck_assert_uint_eq(n_upds, 0);
	ck_assert_uint_eq(n_deaths, 1);
	ck_assert_str_eq(deaths[0].who, "G/E/D");
	ck_assert_int_eq(deaths[0].ts_ms, recv_ns / 1000000);
	ck_assert_str_eq(deaths[0].keys, "spBv1.0/G/E/D/temp;spBv1.0/G/E/D/on");
	/* The device is gone: its data is refused and a rebirth asked for. */
	n_upds = 0;
	feedv("spBv1.0/G/DDATA/E/D", "ddata");
	ck_assert_uint_eq(n_upds, 1);
	ck_assert_int_eq(upds[0].why, REJECT_NO_BIRTH);
	ck_assert_uint_eq(n_pubs, 1);
	ck_assert_str_eq(pubs[0].topic, "spBv1.0/G/NCMD/E");

	/* An old will (bdSeq 7, the session's is 0) changes nothing. */
	feedv("spBv1.0/G/NDEATH/E", "ndeath_old");
	ck_assert_uint_eq(n_deaths, 1);
	ck_assert_uint_eq(stats().deaths_ignored, 1);
	n_upds = 0;
	feedv("spBv1.0/G/NDATA/E", "ndata_alias");
	ck_assert_uint_eq(n_upds, 1);
	ck_assert_int_eq(upds[0].why, REJECT_NONE);

	feedv("spBv1.0/G/NDEATH/E", "ndeath");
	ck_assert_uint_eq(n_deaths, 2);
	ck_assert_str_eq(deaths[1].who, "G/E");
	ck_assert_ptr_nonnull(strstr(deaths[1].keys, "spBv1.0/G/E/i32;"));
	ck_assert_ptr_nonnull(strstr(deaths[1].keys, "spBv1.0/G/E/D/temp"));
	ck_assert_uint_eq(stats().node_deaths, 1);
	n_upds = 0;
	feedv("spBv1.0/G/NDATA/E", "ndata_alias");
	ck_assert_uint_eq(n_upds, 1);
	ck_assert_int_eq(upds[0].why, REJECT_NO_BIRTH);
	/* A second death of the same session is ignored. */
	feedv("spBv1.0/G/NDEATH/E", "ndeath");
	ck_assert_uint_eq(n_deaths, 2);
}
END_TEST

START_TEST(tahu_gap)
{
	Spb__Payload *pl;

	feedv("spBv1.0/G/NBIRTH/E", "nbirth");
	feedv("spBv1.0/G/NDATA/E", "ndata_alias");   /* seq 1 */
	ck_assert_uint_eq(n_pubs, 0);
	feedv("spBv1.0/G/NDATA/E", "ndata_gap");     /* seq 9: 2..8 missing */
	expect("spBv1.0/G/E/i32", "{\"value\":44,\"type\":\"Int32\",\"ts\":1795313408123}");
	ck_assert_uint_eq(stats().seq_gaps, 1);
	ck_assert_uint_eq(n_pubs, 1);
	ck_assert_str_eq(pubs[0].topic, "spBv1.0/G/NCMD/E");
	ck_assert_int_eq(pubs[0].qos, 0);
	ck_assert(!pubs[0].retain);
	pl = spb__payload__unpack(NULL, pubs[0].len, pubs[0].payload);
	ck_assert_ptr_nonnull(pl);
	ck_assert_uint_eq(pl->n_metrics, 1);
	ck_assert_str_eq(pl->metrics[0]->name, "Node Control/Rebirth");
	ck_assert_uint_eq(pl->metrics[0]->datatype, SPB__DATA_TYPE__BOOLEAN);
	ck_assert_int_eq(pl->metrics[0]->value_case, SPB__PAYLOAD__METRIC__VALUE_BOOLEAN_VALUE);
	ck_assert(pl->metrics[0]->boolean_value);
	spb__payload__free_unpacked(pl, NULL);
	/* Another gap at once: within rebirth_interval, not asked again. */
	feedv("spBv1.0/G/NDATA/E", "ndata_alias");   /* seq 1 after 9 */
	ck_assert_uint_eq(stats().seq_gaps, 2);
	ck_assert_uint_eq(n_pubs, 1);
	ck_assert_uint_eq(stats().rebirth_suppressed, 1);
}
END_TEST

/* ---- every type, built here ---------------------------------------------- */

START_TEST(types_arrays)
{
	/* The specification's examples, Data Types chapter. */
	static const uint8_t i8[] = { 0xEF, 0x7B }, i16[] = { 0xD0, 0x8A, 0x30, 0x75 },
		i32[] = { 0xFF, 0xFF, 0xFF, 0xFF, 0xFA, 0xAF, 0xCB, 0x12 },
		i64[] = { 0xCE, 0x06, 0x72, 0xAC, 0x18, 0x9C, 0xBA, 0xC4,
			  0xC4, 0xBA, 0x9C, 0x18, 0xAC, 0x72, 0x06, 0xCE },
		u8[] = { 0x17, 0xFA }, u16[] = { 0x1E, 0x00, 0x88, 0xCC },
		u32[] = { 0x34, 0, 0, 0, 0x49, 0xFB, 0x55, 0xC4 },
		u64[] = { 0x34, 0, 0, 0, 0, 0, 0, 0, 0xD9, 0x9E, 0x02, 0xD1, 0xB2, 0x76, 0x37, 0xE4 },
		bools[] = { 0x0C, 0, 0, 0, 0x34, 0xD0 },
		strs[] = { 'A', 'B', 'C', 0, 'h', 'e', 'l', 'l', 'o', 0 },
		dts[] = { 0xC7, 0xD0, 0x90, 0x75, 0x24, 0x01, 0, 0, 0xB8, 0xBA, 0xB8, 0x97, 0x81, 0x01, 0, 0 };
	float fl[2] = { 1.23f, 89.341f };
	double db[2] = { 12.354213, 1022.9123213 };
	Spb__Payload__Metric m[] = {
		m_bytes("i8", SPB__DATA_TYPE__INT8_ARRAY, i8, sizeof(i8)),
		m_bytes("i16", SPB__DATA_TYPE__INT16_ARRAY, i16, sizeof(i16)),
		m_bytes("i32", SPB__DATA_TYPE__INT32_ARRAY, i32, sizeof(i32)),
		m_bytes("i64", SPB__DATA_TYPE__INT64_ARRAY, i64, sizeof(i64)),
		m_bytes("u8", SPB__DATA_TYPE__UINT8_ARRAY, u8, sizeof(u8)),
		m_bytes("u16", SPB__DATA_TYPE__UINT16_ARRAY, u16, sizeof(u16)),
		m_bytes("u32", SPB__DATA_TYPE__UINT32_ARRAY, u32, sizeof(u32)),
		m_bytes("u64", SPB__DATA_TYPE__UINT64_ARRAY, u64, sizeof(u64)),
		m_bytes("fl", SPB__DATA_TYPE__FLOAT_ARRAY, fl, sizeof(fl)),      /* little-endian host */
		m_bytes("db", SPB__DATA_TYPE__DOUBLE_ARRAY, db, sizeof(db)),
		m_bytes("bo", SPB__DATA_TYPE__BOOLEAN_ARRAY, bools, sizeof(bools)),
		m_bytes("st", SPB__DATA_TYPE__STRING_ARRAY, strs, sizeof(strs)),
		m_bytes("dt", SPB__DATA_TYPE__DATETIME_ARRAY, dts, sizeof(dts)),
		m_bytes("odd", SPB__DATA_TYPE__INT32_ARRAY, i8, 2),           /* not a multiple of 4 */
		m_bytes("bo2", SPB__DATA_TYPE__BOOLEAN_ARRAY, bools, 5),       /* 12 bits need 2 bytes */
	};

	birth_node(0, m, sizeof(m) / sizeof(m[0]));
#define A(k, v, t) expect("spBv1.0/G/E/" k, "{\"value\":" v ",\"type\":\"" t "\"," TS "}")
	A("i8", "[-17,123]", "Int8Array");   /* the spec's example says -23; 0xEF is -17 */
	A("i16", "[-30000,30000]", "Int16Array");
	A("i32", "[-1,315338746]", "Int32Array");
	A("i64", "[-4270929666821191986,-3601064768563266876]", "Int64Array");
	A("u8", "[23,250]", "UInt8Array");
	A("u16", "[30,52360]", "UInt16Array");
	A("u32", "[52,3293969225]", "UInt32Array");
	A("u64", "[52,16444743074749521625]", "UInt64Array");
	A("fl", "[1.23,89.341]", "FloatArray");
	A("db", "[12.354213,1022.9123213]", "DoubleArray");
	A("bo", "[false,false,true,true,false,true,false,false,true,true,false,true]", "BooleanArray");
	A("st", "[\"ABC\",\"hello\"]", "StringArray");
	A("dt", "[1256102875335,1656107875000]", "DateTimeArray");
#undef A
	expect_refused("spBv1.0/G/E/odd", REJECT_UNDECODABLE);
	expect_refused("spBv1.0/G/E/bo2", REJECT_UNDECODABLE);
}
END_TEST

START_TEST(types_edges)
{
	static const char bad_utf8[] = "ok\xc3\x28";
	Spb__Payload__Metric m[] = {
		m_int("i8zx", SPB__DATA_TYPE__INT8, 0xFB),           /* 8-bit two's complement: -5 */
		m_int("i8big", SPB__DATA_TYPE__INT8, 300),           /* fits no form */
		m_int("u8big", SPB__DATA_TYPE__UINT8, 256),
		m_str("i32str", SPB__DATA_TYPE__INT32, "12"),        /* wrong value field */
		m_str("badutf8", SPB__DATA_TYPE__STRING, bad_utf8),
		m_int("unknown", 99, 1),
		m_int("pset", SPB__DATA_TYPE__PROPERTYSET, 1),
		metric("novalue", SPB__DATA_TYPE__INT32),            /* no value, not null */
		m_int("u64small", SPB__DATA_TYPE__UINT64, 7),        /* in int_value: fine */
		metric("nan", SPB__DATA_TYPE__FLOAT),
		metric("inf", SPB__DATA_TYPE__DOUBLE),
		m_str("ctl", SPB__DATA_TYPE__TEXT, "a\nb\x01"),
	};

	m[9].value_case = SPB__PAYLOAD__METRIC__VALUE_FLOAT_VALUE;
	m[9].float_value = __builtin_nanf("");
	m[10].value_case = SPB__PAYLOAD__METRIC__VALUE_DOUBLE_VALUE;
	m[10].double_value = -__builtin_inf();
	birth_node(0, m, sizeof(m) / sizeof(m[0]));
	expect("spBv1.0/G/E/i8zx", "{\"value\":-5,\"type\":\"Int8\"," TS "}");
	expect_refused("spBv1.0/G/E/i8big", REJECT_UNDECODABLE);
	expect_refused("spBv1.0/G/E/u8big", REJECT_UNDECODABLE);
	expect_refused("spBv1.0/G/E/i32str", REJECT_UNDECODABLE);
	expect_refused("spBv1.0/G/E/badutf8", REJECT_UNDECODABLE);
	expect_refused("spBv1.0/G/E/unknown", REJECT_UNDECODABLE);
	expect_refused("spBv1.0/G/E/pset", REJECT_UNDECODABLE);
	expect_refused("spBv1.0/G/E/novalue", REJECT_UNDECODABLE);
	expect("spBv1.0/G/E/u64small", "{\"value\":7,\"type\":\"UInt64\"," TS "}");
	expect("spBv1.0/G/E/nan", "{\"value\":\"NaN\",\"type\":\"Float\"," TS "}");
	expect("spBv1.0/G/E/inf", "{\"value\":\"-Infinity\",\"type\":\"Double\"," TS "}");
	expect("spBv1.0/G/E/ctl", "{\"value\":\"a\\nb\\u0001\",\"type\":\"Text\"," TS "}");
	ck_assert_uint_eq(stats().metrics_refused, 7);
	ck_assert_uint_eq(stats().metrics, 6);   /* bdSeq + 5 */
}
END_TEST

START_TEST(types_dataset)
{
	Spb__Payload__DataSet ds = SPB__PAYLOAD__DATA_SET__INIT;
	Spb__Payload__DataSet__Row r0 = SPB__PAYLOAD__DATA_SET__ROW__INIT, r1 = r0, *rows[2] = { &r0, &r1 };
	Spb__Payload__DataSet__Value c[4], *e0[3] = { &c[0], &c[1], &c[2] }, *e1[2] = { &c[2], &c[3] };
	char *cols[3] = { (char *)"n", (char *)"ok", (char *)"x" };
	uint32_t types[3] = { SPB__DATA_TYPE__UINT32, SPB__DATA_TYPE__BOOLEAN, SPB__DATA_TYPE__DOUBLE };
	Spb__Payload__Metric m[2];

	for (int i = 0; i < 4; i++)
		spb__payload__data_set__value__init(&c[i]);
	c[0].value_case = SPB__PAYLOAD__DATA_SET__VALUE__VALUE_LONG_VALUE;   /* Tahu's UInt32 */
	c[0].long_value = 4000000000u;
	c[1].value_case = SPB__PAYLOAD__DATA_SET__VALUE__VALUE_BOOLEAN_VALUE;
	c[1].boolean_value = 1;
	/* c[2]: a cell with no value: null */
	r0.n_elements = 3;
	r0.elements = e0;
	ds.n_columns = ds.n_types = 3;
	ds.columns = cols;
	ds.types = types;
	ds.n_rows = 1;
	ds.rows = rows;
	m[0] = metric("ds", SPB__DATA_TYPE__DATASET);
	m[0].value_case = SPB__PAYLOAD__METRIC__VALUE_DATASET_VALUE;
	m[0].dataset_value = &ds;
	m[1] = m[0];
	m[1].name = (char *)"short";
	c[3].value_case = SPB__PAYLOAD__DATA_SET__VALUE__VALUE_INT_VALUE;
	c[3].int_value = 1;
	birth_node(0, m, 1);
	expect("spBv1.0/G/E/ds", "{\"value\":{\"columns\":[\"n\",\"ok\",\"x\"],"
	       "\"types\":[\"UInt32\",\"Boolean\",\"Double\"],\"rows\":[[4000000000,true,null]]},"
	       "\"type\":\"DataSet\"," TS "}");
	/* A row shorter than the columns: refused. */
	r1.n_elements = 2;
	r1.elements = e1;
	ds.n_rows = 2;
	birth_node(0, m, 1);
	expect_refused("spBv1.0/G/E/ds", REJECT_UNDECODABLE);
}
END_TEST

/* A metric whose name is not UTF-8 is refused in a birth, its siblings not. */
START_TEST(types_bad_name)
{
	Spb__Payload__Metric m[] = { m_int("ok\xff", SPB__DATA_TYPE__INT32, 1),
				     m_int("fine", SPB__DATA_TYPE__INT32, 2) };

	birth_node(0, m, 2);
	ck_assert_uint_eq(n_upds, 3);
	ck_assert_int_eq(upds[1].why, REJECT_UNDECODABLE);
	ck_assert_str_eq(upds[1].key, "spBv1.0/G/NBIRTH/E");
	expect("spBv1.0/G/E/fine", "{\"value\":2,\"type\":\"Int32\"," TS "}");
}
END_TEST

/* Templates nest, but only 8 deep; deeper than the wire check allows, the
 * whole message is refused. */
static void nest(Spb__Payload__Metric *mm, Spb__Payload__Metric **mp, Spb__Payload__Template *tp,
		 int levels)
{
	for (int i = levels - 1; i >= 0; i--) {
		spb__payload__template__init(&tp[i]);
		if (i < levels - 1) {
			tp[i].n_metrics = 1;
			mp[i + 1] = &mm[i + 1];
			tp[i].metrics = &mp[i + 1];
		}
		mm[i] = metric(i ? "m" : "deep", SPB__DATA_TYPE__TEMPLATE);
		mm[i].value_case = SPB__PAYLOAD__METRIC__VALUE_TEMPLATE_VALUE;
		mm[i].template_value = &tp[i];
	}
}

START_TEST(types_template_depth)
{
	Spb__Payload__Metric mm[12], *mp[12];
	Spb__Payload__Template tp[12];

	nest(mm, mp, tp, 12);
	birth_node(0, mm, 1);
	expect_refused("spBv1.0/G/NBIRTH/E", REJECT_UNDECODABLE);
	nest(mm, mp, tp, 9);
	birth_node(0, mm, 1);
	expect_refused("spBv1.0/G/E/deep", REJECT_UNDECODABLE);
	nest(mm, mp, tp, 8);
	birth_node(0, mm, 1);
	ck_assert_int_eq(find("spBv1.0/G/E/deep")->why, REJECT_NONE);
	/* Three levels, in full. */
	nest(mm, mp, tp, 3);
	birth_node(0, mm, 1);
	expect("spBv1.0/G/E/deep", "{\"value\":{\"is_definition\":false,\"parameters\":{},\"metrics\":"
	       "{\"m\":{\"type\":\"Template\",\"value\":{\"is_definition\":false,\"parameters\":{},"
	       "\"metrics\":{\"m\":{\"type\":\"Template\",\"value\":{\"is_definition\":false,"
	       "\"parameters\":{},\"metrics\":{}}}}}}}},\"type\":\"Template\"," TS "}");
}
END_TEST

/* ---- sessions -------------------------------------------------------------- */

START_TEST(session_data_before_birth)
{
	ck_assert_uint_eq(data_alias(1, 3, 5), 1);
	ck_assert_int_eq(upds[0].why, REJECT_NO_BIRTH);
	ck_assert_str_eq(upds[0].key, "spBv1.0/G/NDATA/E");
	ck_assert_uint_eq(n_pubs, 1);
	ck_assert_str_eq(pubs[0].topic, "spBv1.0/G/NCMD/E");
	data_alias(2, 3, 5);
	ck_assert_uint_eq(n_pubs, 1);   /* rate-limited */
	recv_ns += MS(conf.rebirth_interval_ms);
	data_alias(3, 3, 5);
	ck_assert_uint_eq(n_pubs, 2);
	ck_assert_uint_eq(stats().no_birth, 3);
	ck_assert_uint_eq(stats().rebirth_sent, 2);
	ck_assert_uint_eq(stats().rebirth_suppressed, 1);
	/* DDATA of a device never born, under a live node: the same. */
	birth_node(0, NULL, 0);
	n_upds = 0;
	{
		Spb__Payload__Metric m = m_int("x", SPB__DATA_TYPE__INT32, 1), *mv[1] = { &m };

		feed("spBv1.0/G/DDATA/E/nodev", wire, pack_metrics(1, mv, 1));
	}
	ck_assert_int_eq(upds[0].why, REJECT_NO_BIRTH);
}
END_TEST

START_TEST(session_rebirth_off)
{
	teardown();
	sparkplug_conf_default(&conf);
	setup_with();
	data_alias(1, 3, 5);
	ck_assert_uint_eq(n_pubs, 0);
	ck_assert_uint_eq(stats().rebirth_suppressed, 1);
}
END_TEST

START_TEST(session_unknown_alias)
{
	Spb__Payload__Metric m = m_int("x", SPB__DATA_TYPE__INT32, 1);

	m.has_alias = true;
	m.alias = 3;
	birth_node(0, &m, 1);
	n_upds = 0;
	data_alias(1, 4, 9);
	ck_assert_uint_eq(n_upds, 1);
	ck_assert_int_eq(upds[0].why, REJECT_NO_BIRTH);
	ck_assert_uint_eq(stats().unknown_alias, 1);
	ck_assert_uint_eq(n_pubs, 1);
	data_alias(2, 3, 9);
	expect("spBv1.0/G/E/x", "{\"value\":9,\"type\":\"Int32\"," TS "}");
	/* An alias the birth did not give, with a name it did: by name. */
	{
		Spb__Payload__Metric d = m_int("x", SPB__DATA_TYPE__INT32, 11), *mv[1] = { &d };

		d.has_alias = true;
		d.alias = 77;
		feed("spBv1.0/G/NDATA/E", wire, pack_metrics(3, mv, 1));
		expect("spBv1.0/G/E/x", "{\"value\":11,\"type\":\"Int32\"," TS "}");
		ck_assert_uint_eq(stats().unknown_alias, 1);
	}
}
END_TEST

START_TEST(session_gap_window)
{
	Spb__Payload__Metric x = m_int("x", SPB__DATA_TYPE__INT32, 1);

	x.has_alias = true;
	x.alias = 3;
	teardown();
	sparkplug_conf_default(&conf);
	conf.rebirth = true;
	conf.reorder_window_ms = 2000;
	setup_with();
	birth_node(0, &x, 1);
	data_alias(1, 3, 0);
	data_alias(3, 3, 0);   /* 2 is late ... */
	data_alias(2, 3, 0);   /* ... and comes */
	recv_ns += MS(5000);
	data_alias(4, 3, 0);
	ck_assert_uint_eq(stats().seq_gaps, 0);
	ck_assert_uint_eq(n_pubs, 0);
	data_alias(6, 3, 0);   /* 5 never comes */
	sparkplug_tick(dec, recv_ns + MS(1999));
	ck_assert_uint_eq(n_pubs, 0);
	sparkplug_tick(dec, recv_ns + MS(2000));
	ck_assert_uint_eq(n_pubs, 1);
	ck_assert_uint_eq(stats().seq_gaps, 1);
	/* seq wraps 255 -> 0 without a gap. */
	birth_node(0, &x, 1);
	for (unsigned s = 1; s < 300; s++) {
		n_upds = 0;
		data_alias(s & 255, 3, 0);
	}
	sparkplug_tick(dec, recv_ns + MS(10000));
	ck_assert_uint_eq(stats().seq_gaps, 1);
	ck_assert_uint_eq(stats().unknown_alias, 0);
}
END_TEST

START_TEST(session_bdseq)
{
	birth_node(5, NULL, 0);
	{
		/* A death with another bdSeq, one with none: ignored. */
		Spb__Payload__Metric bd = metric("bdSeq", SPB__DATA_TYPE__UINT64), *mv[1] = { &bd };
		Spb__Payload pl = SPB__PAYLOAD__INIT;

		bd.value_case = SPB__PAYLOAD__METRIC__VALUE_LONG_VALUE;
		bd.long_value = 4;
		pl.n_metrics = 1;
		pl.metrics = mv;
		ck_assert_uint_eq(feed("spBv1.0/G/NDEATH/E", wire, pack(&pl)), 0);
		pl.n_metrics = 0;
		feed("spBv1.0/G/NDEATH/E", wire, pack(&pl));
		ck_assert_uint_eq(n_deaths, 0);
		ck_assert_uint_eq(stats().deaths_ignored, 2);
		/* A reconnect (bdSeq 6) and then the late will of 5: ignored. */
		birth_node(6, NULL, 0);
		bd.long_value = 5;
		pl.n_metrics = 1;
		feed("spBv1.0/G/NDEATH/E", wire, pack(&pl));
		ck_assert_uint_eq(n_deaths, 0);
		bd.long_value = 6;
		feed("spBv1.0/G/NDEATH/E", wire, pack(&pl));
		ck_assert_uint_eq(n_deaths, 1);
		ck_assert_str_eq(deaths[0].who, "G/E");
		ck_assert_str_eq(deaths[0].keys, "spBv1.0/G/E/bdSeq");
	}
}
END_TEST

START_TEST(session_limits)
{
	Spb__Payload__Metric m[] = {
		m_int("a", SPB__DATA_TYPE__INT32, 1), m_int("b", SPB__DATA_TYPE__INT32, 2),
		m_int("c", SPB__DATA_TYPE__INT32, 3), m_int("d", SPB__DATA_TYPE__INT32, 4),
	}, *mv[2] = { &m[0], &m[1] };

	teardown();
	sparkplug_conf_default(&conf);
	conf.max_nodes = 1;
	conf.max_devices = 1;
	conf.max_node_metrics = 4;
	setup_with();
	birth_node(0, m, 4);   /* bdSeq + 4: one too many */
	ck_assert_uint_eq(stats().refused_metrics, 1);
	expect_refused("spBv1.0/G/E/d", REJECT_MAX_KEYS);
	expect("spBv1.0/G/E/c", "{\"value\":3,\"type\":\"Int32\"," TS "}");
	/* Another node: no room. */
	n_upds = 0;
	feed("spBv1.0/G/NBIRTH/E2", wire, pack_metrics(0, mv, 2));
	ck_assert_int_eq(upds[0].why, REJECT_MAX_KEYS);
	ck_assert_uint_eq(stats().refused_nodes, 1);
	/* A node with 2 metrics leaves room for a device of 2. */
	birth_node(0, m, 1);
	feed("spBv1.0/G/DBIRTH/E/D1", wire, pack_metrics(1, mv, 2));
	expect("spBv1.0/G/E/D1/b", "{\"value\":2,\"type\":\"Int32\"," TS "}");
	n_upds = 0;
	feed("spBv1.0/G/DBIRTH/E/D2", wire, pack_metrics(2, mv, 2));
	ck_assert_int_eq(upds[0].why, REJECT_MAX_KEYS);
	ck_assert_uint_eq(stats().refused_devices, 1);
	/* A device reborn replaces its metrics: no room lost. */
	feed("spBv1.0/G/DBIRTH/E/D1", wire, pack_metrics(3, mv, 2));
	ck_assert_uint_eq(stats().refused_metrics, 1);
}
END_TEST

START_TEST(session_evict_and_global_limits)
{
	Spb__Payload__Metric m[] = { m_int("a", SPB__DATA_TYPE__INT32, 1),
				     m_int("b", SPB__DATA_TYPE__INT32, 2) }, *mv[2] = { &m[0], &m[1] };
	Spb__Payload pl = SPB__PAYLOAD__INIT;
	char topic[64];

	teardown();
	sparkplug_conf_default(&conf);
	conf.rebirth = true;
	conf.max_nodes = 200;
	conf.max_metrics = 5;
	setup_with();
	/* The whole table: bdSeq + a + b, then a device of 2 (one left over for it). */
	birth_node(0, m, 2);
	feed("spBv1.0/G/DBIRTH/E/D", wire, pack_metrics(1, mv, 2));
	expect("spBv1.0/G/E/D/a", "{\"value\":1,\"type\":\"Int32\"," TS "}");
	expect_refused("spBv1.0/G/E/D/b", REJECT_MAX_KEYS);
	ck_assert_uint_eq(stats().refused_metrics, 1);
	/* Data of 150 unknown nodes in one second: 100 rebirth requests in all. */
	for (int i = 0; i < 150; i++) {
		snprintf(topic, sizeof(topic), "spBv1.0/G/NDATA/X%d", i);
		n_upds = 0;
		feed(topic, wire, pack_metrics(1, mv, 1));
	}
	ck_assert_uint_eq(n_pubs, 100);
	ck_assert_uint_eq(stats().rebirth_suppressed, 50);
	/* 151 nodes held; 60 more need 11 places: X nodes have no session and give way. */
	ck_assert_uint_eq(stats().evicted, 0);
	pl.n_metrics = 0;
	feed("spBv1.0/G/NDEATH/E", wire, pack(&pl));   /* no bdSeq: ignored */
	for (int i = 0; i < 60; i++) {
		snprintf(topic, sizeof(topic), "spBv1.0/G/NDATA/Y%d", i);
		feed(topic, wire, pack_metrics(1, mv, 1));
	}
	ck_assert_uint_eq(stats().evicted, 11);
	ck_assert_uint_eq(stats().refused_nodes, 0);
	/* E still lives, its keys intact. */
	n_upds = 0;
	{
		Spb__Payload__Metric a = m_int("a", SPB__DATA_TYPE__INT32, 5), *av[1] = { &a };

		a.has_datatype = false;
		feed("spBv1.0/G/NDATA/E", wire, pack_metrics(2, av, 1));
	}
	expect("spBv1.0/G/E/a", "{\"value\":5,\"type\":\"Int32\"," TS "}");
	ck_assert_int_eq(sparkplug_foreach_key(dec, "G", "X0", NULL, key_cb, topic), -ENOENT);
}
END_TEST

START_TEST(session_link_lost_and_topics)
{
	static const char state[] = "{\"online\":true,\"timestamp\":1795313402000}";

	birth_node(0, NULL, 0);
	sparkplug_link_lost(dec);
	n_upds = 0;
	data_alias(1, 3, 0);
	ck_assert_int_eq(upds[0].why, REJECT_NO_BIRTH);
	/* STATE: mirrored as it is. */
	n_upds = 0;
	ck_assert_uint_eq(feed("spBv1.0/STATE/host1", state, strlen(state)), 1);
	ck_assert_str_eq(upds[0].key, "spBv1.0/STATE/host1");
	ck_assert_str_eq(upds[0].json, state);
	ck_assert_int_eq(upds[0].ts_ns, MS(1795313402000));
	feed("spBv1.0/STATE/host1", "offline", 7);
	ck_assert_int_eq(upds[1].why, REJECT_NOT_JSON);
	/* Commands: not state. */
	ck_assert_uint_eq(feed("spBv1.0/G/NCMD/E", "", 0), 0);
	ck_assert_uint_eq(feed("spBv1.0/G/DCMD/E/D", "", 0), 0);
	ck_assert_uint_eq(stats().commands_ignored, 2);
	/* Bad topics. */
	static const char *const bad[] = {
		"spBv1.0/G/NFOO/E", "spBv1.0/G/NDATA/E/D", "spBv1.0/G/DDATA/E", "spBv1.0/G//E",
		"spBv1.0/G/NDATA/E/D/x", "spBv1.0/OTHER/x", "spBv1.0/",
	};
	n_upds = 0;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ck_assert_uint_eq(feed(bad[i], "", 0), 1);
		ck_assert_int_eq(upds[i].why, REJECT_UNDECODABLE);
	}
	ck_assert(!dec->ops->claims(dec, "spAv1.0/G/NDATA/E", 17));
	ck_assert(!dec->ops->claims(dec, "spBv1.", 6));
}
END_TEST

/* ---- malformed payloads ---------------------------------------------------- */

START_TEST(malformed)
{
	static const uint8_t wrong_wt[] = { 0x0A, 0x01, 0x00 };       /* timestamp as bytes */
	static const uint8_t group[] = { 0x13, 0x14 };               /* a group */
	static const uint8_t huge_len[] = { 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F };
	static const uint8_t bad_varint[] = { 0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
					      0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01 };
	static const uint8_t field0[] = { 0x00, 0x01 };
	size_t n;

	birth_node(0, NULL, 0);
#define BAD(p, len) do { \
		n_upds = 0; \
		ck_assert_uint_eq(feed("spBv1.0/G/NDATA/E", p, len), 1); \
		ck_assert_int_eq(upds[0].why, REJECT_UNDECODABLE); \
	} while (0)
	BAD(wrong_wt, sizeof(wrong_wt));
	BAD(group, sizeof(group));
	BAD(huge_len, sizeof(huge_len));
	BAD(bad_varint, sizeof(bad_varint));
	BAD(field0, sizeof(field0));
	/* Tahu's birth cut short inside its last metric. */
	n = vector("nbirth");
	BAD(vec, n - 1);
	/* Every cut: never a crash; each refused, or decoded as far as it is whole. */
	for (size_t cut = 0; cut < n; cut++) {
		n_upds = 0;
		feed("spBv1.0/G/NBIRTH/E", vec, cut);
	}
	/* Nesting deeper than the wire check allows: Metric > Template > Metric ... */
	{
		uint8_t deep[256];
		size_t len = 0;

		/* Built inside out: innermost an empty metric. */
		for (int i = 0; i < 30; i++) {
			uint8_t tmp[256];
			size_t k = 0;

			tmp[k++] = i % 2 ? 0x92 : 0x12;   /* Metric.template_value (18) / Template.metrics (2) */
			if (i % 2)
				tmp[k++] = 0x01;
			tmp[k++] = (uint8_t)len;
			memcpy(tmp + k, deep, len);
			len += k;
			memcpy(deep, tmp, len);
		}
		memmove(deep + 2, deep, len);
		deep[0] = 0x12;   /* Payload.metrics */
		deep[1] = (uint8_t)len;
		BAD(deep, len + 2);
	}
#undef BAD
	ck_assert_uint_ge(stats().undecodable, 7);
}
END_TEST

START_TEST(malformed_counts)
{
	static uint8_t many[2 * 10001];

	for (size_t i = 0; i < 10001; i++) {
		many[2 * i] = 0x12;   /* an empty metric */
		many[2 * i + 1] = 0;
	}
	birth_node(0, NULL, 0);
	n_upds = 0;
	ck_assert_uint_eq(feed("spBv1.0/G/NDATA/E", many, sizeof(many)), 1);
	ck_assert_int_eq(upds[0].why, REJECT_TOO_LARGE);
	ck_assert_uint_eq(stats().refused_messages, 1);
}
END_TEST

START_TEST(malformed_memory)
{
	static Spb__Payload__Metric m[400], *mv[400];
	static char big[70000];

	teardown();
	sparkplug_conf_default(&conf);
	conf.max_decode_mem = 64 * 1024;
	conf.max_value_len = 1024;
	setup_with();
	for (size_t i = 0; i < 400; i++) {
		m[i] = m_int("x", SPB__DATA_TYPE__INT32, 1);
		mv[i] = &m[i];
	}
	n_upds = 0;
	feed("spBv1.0/G/NBIRTH/E", wire, pack_metrics(0, mv, 400));
	ck_assert_uint_eq(n_upds, 1);
	ck_assert_int_eq(upds[0].why, REJECT_UNDECODABLE);
	/* One value larger than max_value_len. */
	memset(big, 'a', 2000);
	m[0] = m_str("big", SPB__DATA_TYPE__STRING, big);
	m[1] = m_str("small", SPB__DATA_TYPE__STRING, "s");
	n_upds = 0;
	feed("spBv1.0/G/NBIRTH/E", wire, pack_metrics(0, mv, 2));
	expect_refused("spBv1.0/G/E/big", REJECT_TOO_LARGE);
	expect("spBv1.0/G/E/small", "{\"value\":\"s\",\"type\":\"String\"," TS "}");
}
END_TEST

/* The 10000-metric message above emits 10000 refusals: the sink must keep up. */
static void count_value(void *ctx, const struct msg *m, enum reject_reason why, size_t full_len)
{
	(void)m;
	(void)why;
	(void)full_len;
	(*(size_t *)ctx)++;
}

START_TEST(malformed_counts_emitted)
{
	static uint8_t many[2 * 10000];
	size_t count = 0;
	struct decode_out o = { .value = count_value, .ctx = &count };
	struct decode_in in = { .topic = "spBv1.0/G/NDATA/E", .topic_len = 17,
				.payload = many, .payload_len = sizeof(many), .recv_ns = MS(T) };

	for (size_t i = 0; i < 10000; i++)
		many[2 * i] = 0x12;
	birth_node(0, NULL, 0);
	ck_assert_uint_eq(dec->ops->decode(dec, &in, &o), 10000);
	ck_assert_uint_eq(count, 10000);
	ck_assert_uint_eq(stats().unknown_alias, 10000);
}
END_TEST

START_TEST(conf_rejects_zero)
{
	struct decoder *d = NULL;

	sparkplug_conf_default(&conf);
	conf.max_nodes = 0;
	ck_assert_int_eq(sparkplug_new(&conf, NULL, &d), -EINVAL);
	ck_assert_str_eq(sparkplug_type_name(12), "String");
	ck_assert_str_eq(sparkplug_type_name(1000), "Unknown");
	ck_assert_str_eq(reject_reason_name(REJECT_UNDECODABLE), "undecodable");
	ck_assert_str_eq(reject_reason_name(REJECT_NO_BIRTH), "no_birth");
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("sparkplug");
	TCase *tc;

	tc = tcase_create("tahu");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, tahu_types);
	tcase_add_test(tc, tahu_session);
	tcase_add_test(tc, tahu_gap);
	suite_add_tcase(s, tc);

	tc = tcase_create("types");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, types_arrays);
	tcase_add_test(tc, types_edges);
	tcase_add_test(tc, types_dataset);
	tcase_add_test(tc, types_bad_name);
	tcase_add_test(tc, types_template_depth);
	suite_add_tcase(s, tc);

	tc = tcase_create("session");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, session_data_before_birth);
	tcase_add_test(tc, session_rebirth_off);
	tcase_add_test(tc, session_unknown_alias);
	tcase_add_test(tc, session_gap_window);
	tcase_add_test(tc, session_bdseq);
	tcase_add_test(tc, session_limits);
	tcase_add_test(tc, session_evict_and_global_limits);
	tcase_add_test(tc, session_link_lost_and_topics);
	suite_add_tcase(s, tc);

	tc = tcase_create("malformed");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, malformed);
	tcase_add_test(tc, malformed_counts);
	tcase_add_test(tc, malformed_memory);
	tcase_add_test(tc, malformed_counts_emitted);
	tcase_add_test(tc, conf_rejects_zero);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
