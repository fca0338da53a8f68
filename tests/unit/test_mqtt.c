/* SPDX-License-Identifier: MIT */
/* test_mqtt.c: the MQTT session against a real mosquitto broker started on a free port. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/conf.h"
#include "common/stats.h"
#include "clock_fake.h"
#include "mirror/ingest/decode.h"
#include "mirror/ingest/mqtt.h"
#include "mirror/state/rejects.h"

#define MOSQUITTO_BIN "/usr/sbin/mosquitto"
#define DEADLINE_MS 15000

static int64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Poll a condition until it holds or the deadline passes (never a bare sleep). */
#define WAIT_FOR(cond, ms)                                                         \
	do {                                                                       \
		int64_t dl_ = mono_ms() + (ms);                                    \
		while (!(cond) && mono_ms() < dl_)                                 \
			poll(NULL, 0, 5);                                          \
		ck_assert_msg((cond), "timed out waiting for: %s", #cond);         \
	} while (0)

static int free_port(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	close(fd);
	return ntohs(a.sin_port);
}

static bool port_open(int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	bool ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;

	close(fd);
	return ok;
}

struct broker {
	char dir[64];
	int port;
	pid_t pid;
};

/* Run as root, mosquitto drops to its own user: it must be able to read here. */
static void broker_dir(struct broker *b)
{
	snprintf(b->dir, sizeof(b->dir), "/tmp/sm-test-mqtt-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(b->dir));
	ck_assert_int_eq(chmod(b->dir, 0755), 0);
}

static void broker_start(struct broker *b, const char *extra)
{
	char path[128];
	FILE *f;

	if (!b->dir[0])
		broker_dir(b);
	if (!b->port)
		b->port = free_port();
	snprintf(path, sizeof(path), "%s/mosquitto.conf", b->dir);
	f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	fprintf(f, "listener %d 127.0.0.1\nallow_anonymous true\npersistence false\n%s", b->port,
		extra ? extra : "");
	fclose(f);
	b->pid = fork();
	ck_assert_int_ge(b->pid, 0);
	if (b->pid == 0) {
		char logp[128];
		int fd;

		snprintf(logp, sizeof(logp), "%s/broker.log", b->dir);
		fd = open(logp, O_WRONLY | O_CREAT | O_APPEND, 0600);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execl(MOSQUITTO_BIN, "mosquitto", "-c", path, (char *)NULL);
		_exit(127);
	}
	WAIT_FOR(port_open(b->port), DEADLINE_MS);
}

static void broker_kill(struct broker *b)
{
	if (b->pid > 0) {
		kill(b->pid, SIGKILL);
		waitpid(b->pid, NULL, 0);
		b->pid = 0;
	}
}

static void broker_cleanup(struct broker *b)
{
	char cmd[160];

	broker_kill(b);
	if (b->dir[0]) {
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", b->dir);
		ck_assert_int_eq(system(cmd), 0);
	}
}

/* Publish with the real mosquitto_pub client. */
static void pub(const struct broker *b, const char *topic, const char *payload, bool retain)
{
	char port[16];
	pid_t pid;
	int st;

	snprintf(port, sizeof(port), "%d", b->port);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		if (retain)
			execlp("mosquitto_pub", "mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-q", "1",
			       "-t", topic, "-m", payload, "-r", (char *)NULL);
		else
			execlp("mosquitto_pub", "mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-q", "1",
			       "-t", topic, "-m", payload, (char *)NULL);
		_exit(127);
	}
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "mosquitto_pub failed");
}

/*
** A sink that records what the session delivers (a copy of each message,
** as the mirror would see it) and can hold the session thread at a gate, as
** a slow consumer would.
*/
struct tmsg {
	struct msg m;
	enum reject_reason reject;
	size_t full_len;
	char data[];
};

struct tsink {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct tmsg *m[4096];
	size_t n;
	size_t flushed;   /* n at the last flush */
	unsigned links;
	bool gated;       /* message() waits for allow > 0 */
	unsigned allow;
	unsigned blocked; /* callers waiting at the gate */
	struct mqtt_sink s;
};

static void tsink_message(void *ctx, const struct msg *m, enum reject_reason why, size_t full_len)
{
	struct tsink *t = ctx;
	struct tmsg *x = malloc(sizeof(*x) + m->topic_len + 1 + m->payload_len + 1);

	ck_assert_ptr_nonnull(x);
	x->m = *m;
	x->reject = why;
	x->full_len = full_len;
	memcpy(x->data, m->topic, m->topic_len);
	x->data[m->topic_len] = '\0';
	memcpy(x->data + m->topic_len + 1, m->payload, m->payload_len);
	x->data[m->topic_len + 1 + m->payload_len] = '\0';
	x->m.topic = x->data;
	x->m.payload = x->data + m->topic_len + 1;
	pthread_mutex_lock(&t->mu);
	t->blocked++;
	while (t->gated && t->allow == 0)
		pthread_cond_wait(&t->cv, &t->mu);
	if (t->gated)
		t->allow--;
	t->blocked--;
	if (t->n < 4096)
		t->m[t->n++] = x;
	else
		free(x);
	pthread_mutex_unlock(&t->mu);
}

static void tsink_flush(void *ctx)
{
	struct tsink *t = ctx;

	pthread_mutex_lock(&t->mu);
	t->flushed = t->n;
	pthread_mutex_unlock(&t->mu);
}

static void tsink_link(void *ctx)
{
	struct tsink *t = ctx;

	pthread_mutex_lock(&t->mu);
	t->links++;
	pthread_mutex_unlock(&t->mu);
}

static struct tsink *tsink_new(void)
{
	struct tsink *t = calloc(1, sizeof(*t));

	ck_assert_ptr_nonnull(t);
	pthread_mutex_init(&t->mu, NULL);
	pthread_cond_init(&t->cv, NULL);
	t->s = (struct mqtt_sink){ .message = tsink_message, .flush = tsink_flush,
				   .link = tsink_link, .ctx = t };
	return t;
}

static void tsink_free(struct tsink *t)
{
	for (size_t i = 0; i < t->n; i++)
		free(t->m[i]);
	pthread_cond_destroy(&t->cv);
	pthread_mutex_destroy(&t->mu);
	free(t);
}

/* Let n more messages through the gate (or all, with the gate open). */
static void tsink_allow(struct tsink *t, unsigned n, bool open)
{
	pthread_mutex_lock(&t->mu);
	t->allow += n;
	if (open)
		t->gated = false;
	pthread_cond_broadcast(&t->cv);
	pthread_mutex_unlock(&t->mu);
}

/* Messages recorded, and callers held at the gate, right now. */
static size_t tsink_n(struct tsink *t)
{
	size_t n;

	pthread_mutex_lock(&t->mu);
	n = t->n;
	pthread_mutex_unlock(&t->mu);
	return n;
}

static unsigned tsink_blocked(struct tsink *t)
{
	unsigned n;

	pthread_mutex_lock(&t->mu);
	n = t->blocked;
	pthread_mutex_unlock(&t->mu);
	return n;
}

/* The first message delivered on topic, or NULL. Entries live until tsink_free. */
static struct tmsg *find(struct tsink *t, const char *topic)
{
	struct tmsg *x = NULL;

	pthread_mutex_lock(&t->mu);
	for (size_t i = 0; i < t->n && !x; i++)
		if (strcmp(t->m[i]->m.topic, topic) == 0)
			x = t->m[i];
	pthread_mutex_unlock(&t->mu);
	return x;
}

static void make_conf(struct conf *c, int port)
{
	char url[64];

	ck_assert_int_eq(conf_defaults(c), 0);
	snprintf(url, sizeof(url), "mqtt://127.0.0.1:%d", port);
	ck_assert_int_eq(conf_set_str(&c->urls[0], url), 0);
	c->nurls = 1;
	c->reconnect_min_ms = 20;
	c->reconnect_max_ms = 200;
	c->sync_quiet_ms = 300;
	c->max_payload = 1000;
	c->keepalive_ms = 5000;
}

static bool synced_epoch(struct mqtt *m, uint64_t want)
{
	uint64_t e = 0;

	return mqtt_synced(m, &e) && e == want;
}

static bool status_has(struct mqtt *m, const char *needle)
{
	char buf[320];

	mqtt_status(m, buf, sizeof(buf));
	return strstr(buf, needle) != NULL;
}

/* The retained burst arrives before synced; timestamps, flags and limits. */
START_TEST(test_sync_and_decode)
{
	struct broker b = { 0 };
	struct conf c;
	struct tsink *q = tsink_new();
	struct mqtt *m;
	char err[256], topic[64], payload[128], big[2001];
	struct tmsg *x;
	size_t nretained = 0;

	broker_start(&b, NULL);
	for (int i = 0; i < 40; i++) {
		snprintf(topic, sizeof(topic), "dc1/r%d/temp", i);
		snprintf(payload, sizeof(payload), "{\"value\": %d, \"ts\": %lld}", i,
			 1795313402000LL + i);
		pub(&b, topic, payload, true);
	}
	pub(&b, "dc1/plain", "not json at all", true);
	pub(&b, "dc1/rfc", "{\"time\":\"2026-11-22T02:10:02.123Z\"}", true);
	for (int i = 0; i < 5; i++) {
		snprintf(topic, sizeof(topic), "dc1/plain%d", i);
		pub(&b, topic, "no timestamp", true);
	}

	make_conf(&c, b.port);
	ck_assert_int_eq(mqtt_new(&c, &m, err, sizeof(err)), 0);
	conf_free(&c); /* the session keeps its own copy */
	ck_assert(!mqtt_connected(m));
	ck_assert(!mqtt_synced(m, NULL));
	ck_assert_int_eq(mqtt_start(m, &q->s), 0);
	ck_assert_int_eq(mqtt_start(m, &q->s), -EALREADY);

	WAIT_FOR(mqtt_synced(m, NULL), DEADLINE_MS);
	ck_assert(synced_epoch(m, 1));
	ck_assert(mqtt_connected(m));
	ck_assert(status_has(m, "synced with"));
	ck_assert_int_eq(STAT_GET(broker_connected), 1);
	ck_assert_int_eq(STAT_GET(synced), 1);

	/* Every retained message was delivered, and flushed, before synced
	 * became true; the sink heard of the connect and of the sync. */
	pthread_mutex_lock(&q->mu);
	for (size_t i = 0; i < q->n; i++)
		nretained += q->m[i]->m.retained;
	ck_assert_uint_eq(nretained, 47);
	ck_assert_uint_eq(q->n, 47);
	ck_assert_uint_eq(q->flushed, 47);
	ck_assert_uint_ge(q->links, 2);
	pthread_mutex_unlock(&q->mu);
	/* Receive times come from one clock reading per stretch of reads, yet
	 * stay strictly increasing: without a timestamp of their own, messages
	 * keep their order of arrival. */
	{
		int64_t prev = 0;

		for (size_t i = 0; i < 47; i++) {
			if (strncmp(q->m[i]->m.topic, "dc1/plain", 9) != 0)
				continue;
			ck_assert_int_gt(q->m[i]->m.ts_ns, prev);
			prev = q->m[i]->m.ts_ns;
		}
	}

	x = find(q, "dc1/r7/temp");
	ck_assert_ptr_nonnull(x);
	ck_assert(x->m.ts_from_payload && x->m.is_json && x->m.retained);
	ck_assert_int_eq(x->m.ts_ns, (1795313402000LL + 7) * 1000000LL);
	ck_assert_int_eq(x->reject, REJECT_NONE);
	ck_assert_int_gt(x->m.recv_ms, 1700000000000LL);

	x = find(q, "dc1/plain");
	ck_assert_ptr_nonnull(x);
	ck_assert(!x->m.ts_from_payload && !x->m.is_json);
	ck_assert_int_eq(x->reject, REJECT_NONE); /* format = auto mirrors any bytes */
	ck_assert_int_eq(x->m.ts_ns / 1000000, x->m.recv_ms);
	ck_assert_uint_eq(x->m.payload_len, strlen("not json at all"));

	x = find(q, "dc1/rfc");
	ck_assert_ptr_nonnull(x);
	ck_assert(x->m.ts_from_payload);
	ck_assert_int_eq(x->m.ts_ns, 1795313402123LL * 1000000LL);

	/* Live messages after sync: no retain flag; an oversize one is refused
	 * with its reason and only its first bytes. */
	pub(&b, "dc1/live", "{\"ts\": 1795313402.5}", false);
	memset(big, 'a', 2000);
	big[2000] = '\0';
	pub(&b, "dc1/big", big, false);
	WAIT_FOR(find(q, "dc1/big") != NULL, DEADLINE_MS);
	x = find(q, "dc1/live");
	ck_assert_ptr_nonnull(x);
	ck_assert(!x->m.retained && x->m.ts_from_payload);
	ck_assert_int_eq(x->m.ts_ns, 1795313402500000000LL);
	x = find(q, "dc1/big");
	ck_assert_int_eq(x->reject, REJECT_TOO_LARGE);
	ck_assert_uint_eq(x->full_len, 2000);
	ck_assert_uint_eq(x->m.payload_len, REJECTS_KEEP_BYTES);

	/* Our own retained publication reaches the broker (and comes back
	 * through the '#' subscription). */
	ck_assert_int_eq(mqtt_publish_retained(m, "statemirror/alerts/x", "{\"a\":1}", 7), 0);
	ck_assert_int_eq(mqtt_publish_retained(m, "bad/+/topic", "x", 1), -EINVAL);
	ck_assert_int_eq(mqtt_publish_retained(m, "", "x", 1), -EINVAL);
	WAIT_FOR(find(q, "statemirror/alerts/x") != NULL, DEADLINE_MS);

	mqtt_stop(m);
	ck_assert(!mqtt_connected(m));
	ck_assert(!mqtt_synced(m, NULL));
	ck_assert(status_has(m, "stopped"));
	mqtt_free(m);
	tsink_free(q);
	broker_cleanup(&b);
}
END_TEST

/* format = json, the configured timestamp field, undecodable timestamps. */
START_TEST(test_json_format_and_ts_fields)
{
	struct broker b = { 0 };
	struct conf c;
	struct tsink *q = tsink_new();
	struct mqtt *m;
	char err[256], longtopic[200];
	struct tmsg *x;

	broker_start(&b, NULL);
	make_conf(&c, b.port);
	c.format = CONF_FORMAT_JSON;
	c.max_topic_len = 100;
	ck_assert_int_eq(conf_set_str(&c.timestamp_field, "obs"), 0);
	ck_assert_int_eq(mqtt_new(&c, &m, err, sizeof(err)), 0);
	conf_free(&c);
	ck_assert_int_eq(mqtt_start(m, &q->s), 0);
	WAIT_FOR(mqtt_synced(m, NULL), DEADLINE_MS);

	pub(&b, "j/notjson", "hello", false);
	pub(&b, "j/obs", "{\"time\": 1, \"obs\": 1795313402123}", false);
	pub(&b, "j/badts", "{\"obs\": \"yesterday\"}", false);
	memset(longtopic, 'x', 150);
	memcpy(longtopic, "j/", 2);
	longtopic[150] = '\0';
	pub(&b, longtopic, "{}", false);
	pub(&b, "j/end", "{}", false);
	WAIT_FOR(find(q, "j/end") != NULL, DEADLINE_MS);

	x = find(q, "j/notjson");
	ck_assert_ptr_nonnull(x);
	ck_assert_int_eq(x->reject, REJECT_NOT_JSON);
	x = find(q, "j/obs");
	ck_assert_ptr_nonnull(x);
	ck_assert_int_eq(x->reject, REJECT_NONE);
	ck_assert_int_eq(x->m.ts_ns, 1795313402123LL * 1000000LL); /* obs wins over time */
	x = find(q, "j/badts");
	ck_assert_ptr_nonnull(x);
	ck_assert_int_eq(x->reject, REJECT_BAD_TS);
	/* The long topic is refused and kept truncated to max_topic_len. */
	x = NULL;
	pthread_mutex_lock(&q->mu);
	for (size_t i = 0; i < q->n; i++)
		if (q->m[i]->reject == REJECT_TOPIC_LEN)
			x = q->m[i];
	pthread_mutex_unlock(&q->mu);
	ck_assert_ptr_nonnull(x);
	ck_assert_uint_eq(x->m.topic_len, 100);
	ck_assert_int_eq(strncmp(x->m.topic, longtopic, 100), 0);

	mqtt_free(m);
	tsink_free(q);
	broker_cleanup(&b);
}
END_TEST

/* Broker killed: not connected, not synced; restarted: re-synced, epoch + 1. */
START_TEST(test_broker_restart)
{
	struct broker b = { 0 };
	struct conf c;
	struct tsink *q = tsink_new();
	struct mqtt *m;
	char err[256];
	uint64_t reconnects0 = STAT_GET(reconnects);

	broker_start(&b, NULL);
	pub(&b, "r/one", "{\"ts\": 1795313402}", true);
	make_conf(&c, b.port);
	ck_assert_int_eq(mqtt_new(&c, &m, err, sizeof(err)), 0);
	conf_free(&c);
	ck_assert_int_eq(mqtt_start(m, &q->s), 0);
	WAIT_FOR(synced_epoch(m, 1), DEADLINE_MS);
	ck_assert_ptr_nonnull(find(q, "r/one"));

	broker_kill(&b);
	WAIT_FOR(!mqtt_connected(m), DEADLINE_MS);
	ck_assert(!mqtt_synced(m, NULL));
	ck_assert_int_eq(STAT_GET(broker_connected), 0);
	ck_assert_int_eq(STAT_GET(synced), 0);
	WAIT_FOR(status_has(m, "lost") || status_has(m, "cannot connect"), DEADLINE_MS);

	/* The new broker has no persistence: publish the retained value again
	 * before the session gets back. */
	broker_start(&b, NULL);
	pub(&b, "r/two", "{\"ts\": 1795313403}", true);
	WAIT_FOR(synced_epoch(m, 2), DEADLINE_MS);
	ck_assert(mqtt_connected(m));
	ck_assert_uint_eq(STAT_GET(reconnects), reconnects0 + 1);
	ck_assert_ptr_nonnull(find(q, "r/two"));

	mqtt_free(m);
	tsink_free(q);
	broker_cleanup(&b);
}
END_TEST

/* mqtt_set_presence: per connect, the will built first, then the birth
 * with the same timestamp, published retained after the SUBSCRIBEs. */
struct presence_rec {
	unsigned calls;
	bool online[8];
	int64_t ts[8];
};

static int presence_payload(void *ctx, bool online, int64_t ts_ms, char *buf, size_t n)
{
	struct presence_rec *r = ctx;

	if (r->calls < 8) {
		r->online[r->calls] = online;
		r->ts[r->calls] = ts_ms;
	}
	r->calls++;
	return snprintf(buf, n, "{\"online\":%s,\"ts\":%lld}", online ? "true" : "false",
			(long long)ts_ms);
}

START_TEST(test_presence)
{
	struct broker b = { 0 };
	struct presence_rec rec = { 0 };
	struct conf c;
	struct tsink *q = tsink_new();
	struct tmsg *x;
	struct mqtt *m;
	char err[256], want[64];

	broker_start(&b, NULL);
	make_conf(&c, b.port);
	ck_assert_int_eq(mqtt_new(&c, &m, err, sizeof(err)), 0);
	conf_free(&c);
	ck_assert_int_eq(mqtt_set_presence(m, "p/+/bad", presence_payload, &rec), -EINVAL);
	ck_assert_int_eq(mqtt_set_presence(m, "p/STATE/h", presence_payload, &rec), 0);
	ck_assert_int_eq(mqtt_start(m, &q->s), 0);
	ck_assert_int_eq(mqtt_set_presence(m, "p/STATE/h", presence_payload, &rec), -EBUSY);
	WAIT_FOR(synced_epoch(m, 1), DEADLINE_MS);
	/* Subscribed to #, the session hears its own birth. */
	WAIT_FOR(find(q, "p/STATE/h") != NULL, DEADLINE_MS);
	mqtt_stop(m);
	ck_assert_uint_eq(rec.calls, 2);
	ck_assert(!rec.online[0] && rec.online[1]);
	ck_assert_int_eq(rec.ts[0], rec.ts[1]);
	x = find(q, "p/STATE/h");
	snprintf(want, sizeof(want), "{\"online\":true,\"ts\":%lld}", (long long)rec.ts[1]);
	ck_assert_str_eq((const char *)x->m.payload, want);
	/* Retained: a later subscriber gets it from the broker. */
	{
		char cmd[256], out[128] = "";
		FILE *p;

		snprintf(cmd, sizeof(cmd), "mosquitto_sub -p %d -t p/STATE/h -C 1 -W 5 2>/dev/null",
			 b.port);
		p = popen(cmd, "r");
		ck_assert_ptr_nonnull(p);
		ck_assert_ptr_nonnull(fgets(out, sizeof(out), p));
		pclose(p);
		out[strcspn(out, "\n")] = '\0';
		ck_assert_str_eq(out, want);
	}
	mqtt_free(m);
	tsink_free(q);
	broker_cleanup(&b);
}
END_TEST

/* While disconnected, publications wait (latest value per topic wins). */
START_TEST(test_publish_while_disconnected)
{
	struct broker b = { 0 };
	struct conf c;
	struct tsink *q = tsink_new();
	struct mqtt *m;
	char err[256];
	struct tmsg *x;

	b.port = free_port();
	make_conf(&c, b.port);
	ck_assert_int_eq(mqtt_new(&c, &m, err, sizeof(err)), 0);
	conf_free(&c);
	ck_assert_int_eq(mqtt_publish_retained(m, "a/state", "old", 3), 0);
	ck_assert_int_eq(mqtt_start(m, &q->s), 0);
	ck_assert_int_eq(mqtt_publish_retained(m, "a/state", "new", 3), 0);
	/* A value then a clear: both go out, in order (an alert's "resolved"
	 * must reach live subscribers before the broker forgets it). */
	ck_assert_int_eq(mqtt_publish_retained(m, "b/alert", "resolved", 8), 0);
	ck_assert_int_eq(mqtt_publish_retained(m, "b/alert", "", 0), 0);
	WAIT_FOR(status_has(m, "cannot connect"), DEADLINE_MS);
	broker_start(&b, NULL);
	WAIT_FOR(mqtt_synced(m, NULL), DEADLINE_MS);
	WAIT_FOR(find(q, "a/state") != NULL, DEADLINE_MS);
	x = find(q, "a/state");
	ck_assert_uint_eq(x->m.payload_len, 3);
	ck_assert_int_eq(memcmp(x->m.payload, "new", 3), 0);
	WAIT_FOR(find(q, "b/alert") != NULL, DEADLINE_MS);
	x = find(q, "b/alert");
	ck_assert_uint_eq(x->m.payload_len, 8);
	ck_assert_int_eq(memcmp(x->m.payload, "resolved", 8), 0);

	mqtt_free(m);
	tsink_free(q);
	broker_cleanup(&b);
}
END_TEST

/*
** A fake MQTT broker, just enough to answer CONNECT and SUBSCRIBE: stock
** mosquitto 2.0 grants every well-formed subscription (its ACLs act at
** delivery) and speaks every version, so a refusing SUBACK, a broker that
** does not speak MQTT 5 or one that refuses a login needs one of our own.
** It serves up to max_conns connections (1 when 0), one after the other,
** and records the protocol level of each CONNECT (4 = 3.1.1, 5 = MQTT 5).
*/
enum fake_v5 {
	FAKE_V5_OK,       /* MQTT 5 accepted (answered in MQTT 5) */
	FAKE_V5_REASON,   /* MQTT 5 CONNACK 0x84 unsupported protocol version */
	FAKE_V5_V3ACK,    /* a 3.1.1 CONNACK with return code 1, as a 3.1.1-only broker answers */
	FAKE_V5_CLOSE,    /* the connection closed, no CONNACK (RabbitMQ 3.10) */
};

struct fake {
	int lfd;
	pthread_t th;
	const char *refuse; /* the filter answered with 0x80 */
	int nretained;      /* retained messages sent after the (last) SUBACK */
	bool exact_only;    /* instead: a retained message on each exact topic subscribed,
			     * none for wildcards (RabbitMQ, rabbitmq-server#8824) */
	enum fake_v5 v5;
	int refuse_code;    /* CONNACK code for every CONNECT (3.1.1 code; x 0x80 + 2.. for 5), 0 none */
	int max_conns;
	_Atomic int nconns;
	int levels[16];
	_Atomic int cfd;    /* the client being served, -1 none */
};

static bool read_full(int fd, unsigned char *p, size_t n)
{
	while (n) {
		ssize_t r = read(fd, p, n);

		if (r <= 0)
			return false;
		p += r;
		n -= (size_t)r;
	}
	return true;
}

/* The MQTT 5 reason for a 3.1.1 CONNACK return code. */
static unsigned char v5_reason(int code)
{
	switch (code) {
	case 1: return 0x84;
	case 2: return 0x85;
	case 3: return 0x88;
	case 4: return 0x86;
	default: return 0x87;
	}
}

/* Serve one client; returns when it goes (or is dropped). */
static void fake_serve(struct fake *f, int fd)
{
	unsigned char h, body[1024];
	int level = 4;

	while (read_full(fd, &h, 1)) {
		size_t len = 0, mul = 1;
		unsigned char b;

		do {
			if (!read_full(fd, &b, 1))
				return;
			len += (b & 0x7f) * mul;
			mul *= 128;
		} while (b & 0x80);
		if (len > sizeof(body) || !read_full(fd, body, len))
			return;
		if ((h & 0xf0) == 0x10) { /* CONNECT: "\0\4MQTT" then the level */
			level = len > 6 ? body[6] : 0;
			if (f->nconns <= (int)(sizeof(f->levels) / sizeof(f->levels[0])))
				f->levels[f->nconns - 1] = level;
			if (level == 5 && f->v5 == FAKE_V5_CLOSE)
				return;
			if (level == 5 && f->v5 == FAKE_V5_V3ACK) {
				static const unsigned char nack[] = { 0x20, 2, 0, 1 };

				(void)!write(fd, nack, 4);
				return;
			}
			if (level == 5 && (f->v5 == FAKE_V5_REASON || f->refuse_code)) {
				unsigned char nack[] = { 0x20, 3, 0,
							 f->v5 == FAKE_V5_REASON ? 0x84 : v5_reason(f->refuse_code), 0 };

				(void)!write(fd, nack, 5);
				return;
			}
			if (f->refuse_code) {
				unsigned char nack[] = { 0x20, 2, 0, (unsigned char)f->refuse_code };

				(void)!write(fd, nack, 4);
				return;
			}
			if (level == 5) {
				static const unsigned char connack[] = { 0x20, 3, 0, 0, 0 };

				if (write(fd, connack, 5) != 5)
					return;
			} else {
				static const unsigned char connack[] = { 0x20, 2, 0, 0 };

				if (write(fd, connack, 4) != 4)
					return;
			}
		} else if ((h & 0xf0) == 0x80 && len >= 5) { /* SUBSCRIBE, one filter */
			size_t off = level == 5 ? 3 : 2; /* MQTT 5: a properties length (0) */
			size_t tl = (size_t)body[off] << 8 | body[off + 1];
			bool refuse = f->refuse && tl == strlen(f->refuse) &&
				      memcmp(body + off + 2, f->refuse, tl) == 0;
			unsigned char code = refuse ? 0x80 : 0x01;
			unsigned char suback3[] = { 0x90, 3, body[0], body[1], code };
			unsigned char suback5[] = { 0x90, 4, body[0], body[1], 0, code };

			if (level == 5 ? write(fd, suback5, 6) != 6 : write(fd, suback3, 5) != 5)
				return;
			if (f->exact_only && tl < 100 && !memchr(body + off + 2, '#', tl) &&
			    !memchr(body + off + 2, '+', tl)) {
				unsigned char pb[128];
				size_t n = 0;

				pb[n++] = 0x31;
				pb[n++] = (unsigned char)(2 + tl + (level == 5) + 2);
				memcpy(pb + n, body + off, 2 + tl);
				n += 2 + tl;
				if (level == 5)
					pb[n++] = 0;
				pb[n++] = '{';
				pb[n++] = '}';
				if (write(fd, pb, n) != (ssize_t)n)
					return;
			}
			/* QoS 0 retained PUBLISH "r/N" with payload "{}". */
			for (int i = 0; i < f->nretained; i++) {
				unsigned char pb3[] = { 0x31, 7, 0, 3, 'r', '/', (unsigned char)('0' + i),
							'{', '}' };
				unsigned char pb5[] = { 0x31, 8, 0, 3, 'r', '/', (unsigned char)('0' + i),
							0, '{', '}' };

				if (level == 5 ? write(fd, pb5, sizeof(pb5)) != (ssize_t)sizeof(pb5)
					       : write(fd, pb3, sizeof(pb3)) != (ssize_t)sizeof(pb3))
					return;
			}
		} else if ((h & 0xf0) == 0xc0) { /* PINGREQ */
			static const unsigned char pingresp[] = { 0xd0, 0 };

			if (write(fd, pingresp, 2) != 2)
				return;
		} else if ((h & 0xf0) == 0xe0) { /* DISCONNECT */
			return;
		}
	}
}

static void *fake_broker(void *arg)
{
	struct fake *f = arg;
	int max = f->max_conns > 0 ? f->max_conns : 1;

	while (f->nconns < max) {
		int fd = accept(f->lfd, NULL, NULL);

		if (fd < 0)
			break; /* fake_stop shut the listener down */
		f->nconns++;
		f->cfd = fd;
		fake_serve(f, fd);
		f->cfd = -1;
		close(fd);
	}
	return NULL;
}

/* Listen on a free loopback port and serve clients there; returns the port. */
static int fake_start(struct fake *f)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t alen = sizeof(a);

	f->cfd = -1;
	f->lfd = socket(AF_INET, SOCK_STREAM, 0);
	ck_assert_int_ge(f->lfd, 0);
	ck_assert_int_eq(bind(f->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
	ck_assert_int_eq(listen(f->lfd, 4), 0);
	ck_assert_int_eq(getsockname(f->lfd, (struct sockaddr *)&a, &alen), 0);
	ck_assert_int_eq(pthread_create(&f->th, NULL, fake_broker, f), 0);
	return ntohs(a.sin_port);
}

/* Hang up on the client being served (a broker restart, as the client sees it). */
static void fake_drop(struct fake *f)
{
	int fd = f->cfd;

	if (fd >= 0)
		shutdown(fd, SHUT_RDWR);
}

/* Wait for the fake broker's client to go (mqtt_free sends DISCONNECT),
 * and stop listening. */
static void fake_stop(struct fake *f)
{
	shutdown(f->lfd, SHUT_RDWR); /* wakes an accept() waiting for more */
	pthread_join(f->th, NULL);
	close(f->lfd);
}

/*
** The retained burst is quiet only when nothing arrives for sync_quiet
** after the last message was handed over: time the sink takes (a slow
** consumer) is not quiet. (It was once measured from the message's arrival,
** so a slow consumer made the session report synced while the rest of the
** burst still waited in the socket.) The session reads the fake clock:
** time passes only where the test moves it.
*/
START_TEST(test_slow_sink_is_not_quiet)
{
	struct fake f = { .refuse = "", .nretained = 2 };
	struct tsink *q = tsink_new();
	struct mqtt *m;
	struct conf c;
	char err[256];

	int64_t wall0_ms = fake_clock.wall_ns(NULL) / 1000000;

	make_conf(&c, fake_start(&f));
	c.protocol = 311;
	c.sync_quiet_ms = 1000;
	ck_assert_int_eq(mqtt_new(&c, &m, err, sizeof(err)), 0);
	conf_free(&c);
	ck_assert_int_eq(mqtt_set_clock(m, &fake_clock), 0);
	q->gated = true;
	ck_assert_int_eq(mqtt_start(m, &q->s), 0);
	ck_assert_int_eq(mqtt_set_clock(m, &fake_clock), -EBUSY);

	/* r/0 is held in the sink well past sync_quiet: not synced. */
	WAIT_FOR(tsink_blocked(q) == 1, DEADLINE_MS);
	fake_clock_advance(1200);
	ck_assert(!mqtt_synced(m, NULL));
	/* r/0 done, r/1 held as long again: still not synced. */
	tsink_allow(q, 1, false);
	WAIT_FOR(tsink_n(q) == 1 && tsink_blocked(q) == 1, DEADLINE_MS);
	ck_assert(!mqtt_synced(m, NULL));
	fake_clock_advance(1200);
	/* r/1 done: quiet counts from there. */
	tsink_allow(q, 1, false);
	WAIT_FOR(tsink_n(q) == 2, DEADLINE_MS);
	ck_assert_int_eq(mqtt_wait_turn(m, DEADLINE_MS), 0);
	ck_assert_msg(!mqtt_synced(m, NULL), "synced right after a slow hand-over (sync_quiet 1 s)");
	fake_clock_advance(999);
	ck_assert_int_eq(mqtt_wait_turn(m, DEADLINE_MS), 0);
	ck_assert_msg(!mqtt_synced(m, NULL), "synced 999 ms after a message (sync_quiet 1 s)");
	fake_clock_advance(1);
	ck_assert_int_eq(mqtt_wait_turn(m, DEADLINE_MS), 0);
	ck_assert_msg(mqtt_synced(m, NULL), "not synced sync_quiet after the last message");
	ck_assert_str_eq(q->m[0]->m.topic, "r/0");
	ck_assert_str_eq(q->m[1]->m.topic, "r/1");
	ck_assert(q->m[0]->m.retained && q->m[1]->m.retained);
	/* Receive times come from the injected wall clock. */
	ck_assert_int_eq(q->m[0]->m.recv_ms, wall0_ms);

	tsink_allow(q, 0, true);
	mqtt_free(m);
	fake_stop(&f);
	tsink_free(q);
}
END_TEST

/* A refused subscription counts as acknowledged: synced, and the status says so. */
START_TEST(test_refused_subscription)
{
	struct fake f = { .refuse = "secret/#" };
	struct tsink *q = tsink_new();
	struct mqtt *m;
	struct conf c;
	char err[256];

	make_conf(&c, fake_start(&f));
	c.protocol = 311;
	ck_assert_int_eq(conf_set_str(&c.filters[0], "ok/#"), 0);
	c.filters[1] = strdup("secret/#");
	ck_assert_ptr_nonnull(c.filters[1]);
	c.nfilters = 2;
	ck_assert_int_eq(mqtt_new(&c, &m, err, sizeof(err)), 0);
	conf_free(&c);
	ck_assert_int_eq(mqtt_start(m, &q->s), 0);
	WAIT_FOR(mqtt_synced(m, NULL), DEADLINE_MS);
	ck_assert_uint_eq(mqtt_subscribe_failures(m), 1);
	ck_assert(status_has(m, "1 subscription(s) refused"));
	ck_assert(status_has(m, "'secret/#'"));
	ck_assert(!status_has(m, "'ok/#'"));

	mqtt_free(m); /* sends DISCONNECT: the fake broker's thread ends */
	fake_stop(&f);
	tsink_free(q);
}
END_TEST

/*
** A dead broker does not flood the log: a listener that accepts and closes
** at once sees the retries, and stderr holds one line about them.
*/
START_TEST(test_retry_log_rate_limited)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	char logpath[] = "/tmp/sm-test-mqtt-log-XXXXXX";
	struct tsink *q = tsink_new();
	int lfd = socket(AF_INET, SOCK_STREAM, 0), logfd, saved, accepted = 0;
	struct mqtt *m;
	struct conf c;
	char err[256], buf[8192];
	int64_t t0;
	ssize_t n;
	int lines = 0;

	ck_assert_int_eq(bind(lfd, (struct sockaddr *)&a, sizeof(a)), 0);
	ck_assert_int_eq(listen(lfd, 16), 0);
	ck_assert_int_eq(getsockname(lfd, (struct sockaddr *)&a, &len), 0);
	make_conf(&c, ntohs(a.sin_port));
	c.reconnect_min_ms = 10;
	c.reconnect_max_ms = 20;
	ck_assert_int_eq(mqtt_new(&c, &m, err, sizeof(err)), 0);
	conf_free(&c);

	logfd = mkstemp(logpath);
	ck_assert_int_ge(logfd, 0);
	saved = dup(2);
	dup2(logfd, 2);
	ck_assert_int_eq(mqtt_start(m, &q->s), 0);
	t0 = mono_ms();
	while (accepted < 20 && mono_ms() - t0 < DEADLINE_MS) {
		struct pollfd p = { .fd = lfd, .events = POLLIN };

		if (poll(&p, 1, 100) > 0) {
			int cfd = accept(lfd, NULL, NULL);

			if (cfd >= 0) {
				close(cfd);
				accepted++;
			}
		}
	}
	t0 = mono_ms();
	mqtt_stop(m);
	ck_assert_int_lt(mono_ms() - t0, 2000); /* stop is prompt while retrying */
	dup2(saved, 2);
	close(saved);
	ck_assert_int_ge(accepted, 20);
	ck_assert(!mqtt_connected(m));

	lseek(logfd, 0, SEEK_SET);
	n = read(logfd, buf, sizeof(buf) - 1);
	ck_assert_int_ge(n, 0);
	buf[n] = '\0';
	for (char *p = buf; (p = strstr(p, "cannot connect")) != NULL; p++)
		lines++;
	ck_assert_msg(lines == 1, "%d connect-failure lines for %d attempts:\n%s", lines, accepted, buf);
	/* protocol = auto (the default) tried 3.1.1 after each MQTT 5 hang-up,
	 * and said so once. */
	lines = 0;
	for (char *p = buf; (p = strstr(p, "trying MQTT 3.1.1")) != NULL; p++)
		lines++;
	ck_assert_msg(lines == 1, "%d fallback lines for %d attempts:\n%s", lines, accepted, buf);
	ck_assert(strstr(buf, "with MQTT 5 too"));
	close(logfd);
	unlink(logpath);
	close(lfd);
	mqtt_free(m);
	tsink_free(q);
}
END_TEST

/* Accept one connection on lfd within the deadline and close it at once. */
static void accept_close(int lfd)
{
	int64_t dl = mono_ms() + DEADLINE_MS;

	while (mono_ms() < dl) {
		struct pollfd p = { .fd = lfd, .events = POLLIN };

		if (poll(&p, 1, 100) > 0) {
			int cfd = accept(lfd, NULL, NULL);

			if (cfd >= 0) {
				close(cfd);
				return;
			}
		}
	}
	ck_abort_msg("no connection attempt within %d ms", DEADLINE_MS);
}

/* Count the lines of the file at fd holding needle. */
static int count_in(int fd, const char *needle, char *buf, size_t n)
{
	ssize_t r;
	int lines = 0;

	lseek(fd, 0, SEEK_SET);
	r = read(fd, buf, n - 1);
	ck_assert_int_ge(r, 0);
	buf[r] = '\0';
	for (char *p = buf; (p = strstr(p, needle)) != NULL; p++)
		lines++;
	return lines;
}

/*
** An unchanged connect failure is logged once, then repeated only after
** MQTT_FAIL_REMIND_MS (5 minutes) with the count: with the fake clock the
** test moves the backoff and the five minutes by hand, attempt by attempt.
*/
START_TEST(test_retry_reminder)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	char logpath[] = "/tmp/sm-test-mqtt-log-XXXXXX";
	struct tsink *q = tsink_new();
	int lfd = socket(AF_INET, SOCK_STREAM, 0), logfd, saved;
	struct mqtt *m;
	struct conf c;
	char err[256], buf[8192];

	ck_assert_int_eq(bind(lfd, (struct sockaddr *)&a, sizeof(a)), 0);
	ck_assert_int_eq(listen(lfd, 16), 0);
	ck_assert_int_eq(getsockname(lfd, (struct sockaddr *)&a, &len), 0);
	make_conf(&c, ntohs(a.sin_port));
	c.reconnect_min_ms = 10;
	c.reconnect_max_ms = 20;
	c.protocol = 5; /* one attempt per connection: no fallback to count */
	ck_assert_int_eq(mqtt_new(&c, &m, err, sizeof(err)), 0);
	conf_free(&c);
	ck_assert_int_eq(mqtt_set_clock(m, &fake_clock), 0);

	logfd = mkstemp(logpath);
	ck_assert_int_ge(logfd, 0);
	saved = dup(2);
	dup2(logfd, 2);
	ck_assert_int_eq(mqtt_start(m, &q->s), 0);
	for (int i = 0; i < 5; i++) {
		/* Each attempt fails when we close it: one failure per accept,
		 * whatever the backoff drew (full jitter may draw 0). */
		accept_close(lfd);
		ck_assert_int_eq(mqtt_wait_turn(m, DEADLINE_MS), 0);
		fake_clock_advance(20); /* reconnect_max: the next attempt is due */
	}
	ck_assert_msg(count_in(logfd, "cannot connect to", buf, sizeof(buf)) == 1, "%s", buf);
	ck_assert_msg(count_in(logfd, "still cannot connect", buf, sizeof(buf)) == 0, "%s", buf);
	/* Five minutes, in steps under the CONNACK timeout (5 s): an attempt
	 * that began before a step is closed before the next one, so every
	 * failure keeps the same reason. */
	for (int i = 0; i < 63; i++) {
		struct pollfd p = { .fd = lfd, .events = POLLIN };

		while (poll(&p, 1, 0) > 0) {
			accept_close(lfd);
			ck_assert_int_eq(mqtt_wait_turn(m, DEADLINE_MS), 0);
		}
		fake_clock_advance(4999);
		ck_assert_int_eq(mqtt_wait_turn(m, DEADLINE_MS), 0);
	}
	accept_close(lfd);
	ck_assert_int_eq(mqtt_wait_turn(m, DEADLINE_MS), 0);
	mqtt_stop(m);
	dup2(saved, 2);
	close(saved);
	ck_assert_msg(count_in(logfd, "cannot connect to", buf, sizeof(buf)) == 1, "%s", buf);
	ck_assert_msg(count_in(logfd, "still cannot connect after ", buf, sizeof(buf)) == 1,
		      "no reminder after 5 minutes:\n%s", buf);
	close(logfd);
	unlink(logpath);
	close(lfd);
	mqtt_free(m);
	tsink_free(q);
}
END_TEST

/* stderr (the log) to a temporary file, to read back what was logged. */
struct logcap {
	char path[40];
	int fd, saved;
	char text[16384];
};

static void logcap_start(struct logcap *l)
{
	snprintf(l->path, sizeof(l->path), "/tmp/sm-test-mqtt-log-XXXXXX");
	l->fd = mkstemp(l->path);
	ck_assert_int_ge(l->fd, 0);
	l->saved = dup(2);
	dup2(l->fd, 2);
}

/* What was logged so far (the capture goes on). */
static const char *logcap_text(struct logcap *l)
{
	ssize_t n = pread(l->fd, l->text, sizeof(l->text) - 1, 0);

	l->text[n > 0 ? n : 0] = '\0';
	return l->text;
}

static void logcap_stop(struct logcap *l)
{
	dup2(l->saved, 2);
	close(l->saved);
	logcap_text(l);
	close(l->fd);
	unlink(l->path);
}

/* A session with protocol = auto against fake broker f, synced or not. */
static struct mqtt *auto_session(struct fake *f, struct tsink *q, int protocol)
{
	struct mqtt *m;
	struct conf c;
	char err[256];

	make_conf(&c, fake_start(f));
	c.protocol = protocol; /* 0: auto */
	ck_assert_int_eq(mqtt_new(&c, &m, err, sizeof(err)), 0);
	conf_free(&c);
	ck_assert_int_eq(mqtt_start(m, &q->s), 0);
	return m;
}

/*
** protocol = auto against a broker that does not speak MQTT 5, in each of
** the three ways such a broker answers an MQTT 5 CONNECT: it falls back to
** 3.1.1 at once, says so in the log and the status, and remembers it.
*/
START_TEST(test_auto_falls_back_to_311)
{
	static const struct {
		enum fake_v5 v5;
		const char *note;
	} cases[] = {
		{ FAKE_V5_REASON, "the broker refused MQTT 5" },
		{ FAKE_V5_V3ACK, "the broker refused MQTT 5" },
		{ FAKE_V5_CLOSE, "the broker closed the connection after an MQTT 5 CONNECT" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct fake f = { .v5 = cases[i].v5, .nretained = 1, .max_conns = 3 };
		struct tsink *q = tsink_new();
		struct logcap l;
		struct mqtt *m;
		char want[160];

		logcap_start(&l);
		m = auto_session(&f, q, 0);
		WAIT_FOR(synced_epoch(m, 1), DEADLINE_MS);
		ck_assert_int_eq(f.nconns, 2);
		ck_assert_int_eq(f.levels[0], 5);
		ck_assert_int_eq(f.levels[1], 4);
		snprintf(want, sizeof(want), "(MQTT 3.1.1: %s)", cases[i].note);
		ck_assert_msg(status_has(m, want), "case %zu: status lacks '%s'", i, want);
		ck_assert(status_has(m, "1 retained message(s) from 1 wildcard and 0 exact"));
		ck_assert_msg(strstr(logcap_text(&l), "trying MQTT 3.1.1"), "case %zu:\n%s", i, l.text);
		snprintf(want, sizeof(want), "(MQTT 3.1.1: %s, clean session)", cases[i].note);
		ck_assert_msg(strstr(l.text, want), "case %zu: no '%s' in\n%s", i, want, l.text);
		ck_assert_msg(!strstr(l.text, "retrying with backoff"), "case %zu:\n%s", i, l.text);
		/* Reconnected: 3.1.1 straight away, the URL's version is known. */
		fake_drop(&f);
		WAIT_FOR(synced_epoch(m, 2), DEADLINE_MS);
		ck_assert_int_eq(f.nconns, 3);
		ck_assert_int_eq(f.levels[2], 4);
		ck_assert(status_has(m, cases[i].note));
		mqtt_free(m);
		fake_stop(&f);
		logcap_stop(&l);
		tsink_free(q);
	}
}
END_TEST

/* A broker that speaks MQTT 5 keeps it: no fallback, no note. */
START_TEST(test_auto_keeps_5)
{
	struct fake f = { .v5 = FAKE_V5_OK, .nretained = 2 };
	struct tsink *q = tsink_new();
	struct mqtt *m = auto_session(&f, q, 0);

	WAIT_FOR(mqtt_synced(m, NULL), DEADLINE_MS);
	ck_assert_int_eq(f.nconns, 1);
	ck_assert_int_eq(f.levels[0], 5);
	ck_assert(status_has(m, "(MQTT 5): 2 retained message(s)"));
	mqtt_free(m);
	fake_stop(&f);
	tsink_free(q);
}
END_TEST

/* With protocol = 5 set, a broker hanging up on CONNECT is named as such. */
START_TEST(test_fixed_5_hangup_named)
{
	struct fake f = { .v5 = FAKE_V5_CLOSE, .max_conns = 1 };
	struct tsink *q = tsink_new();
	struct logcap l;
	struct mqtt *m;

	logcap_start(&l);
	m = auto_session(&f, q, 5);
	WAIT_FOR(status_has(m, "closed the connection without answering CONNECT (MQTT 5)"),
		 DEADLINE_MS);
	ck_assert(status_has(m, "set [broker] protocol = auto or 3.1.1"));
	ck_assert(!status_has(m, "connection lost"));
	mqtt_free(m);
	fake_stop(&f);
	logcap_stop(&l);
	ck_assert_int_eq(f.levels[0], 5);
	ck_assert_msg(strstr(l.text, "cannot connect to") &&
		      strstr(l.text, "closed the connection without answering CONNECT"), "%s", l.text);
	tsink_free(q);
}
END_TEST

/*
** A refused CONNECT names its cause in the log and the status, in either
** version, and refusals other than the version do not trigger a fallback.
*/
START_TEST(test_refused_connect_named)
{
	static const struct {
		int code; /* 3.1.1 return code; the fake answers MQTT 5 with its reason */
		const char *cause;
	} cases[] = {
		{ 2, "client id rejected" },
		{ 3, "server unavailable" },
		{ 4, "bad user name or password (check [broker] username and password_file)" },
		{ 5, "not authorised" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		for (int proto = 0; proto <= 311; proto += 311) {
			struct fake f = { .refuse_code = cases[i].code, .max_conns = 1 };
			struct tsink *q = tsink_new();
			struct logcap l;
			struct mqtt *m;

			logcap_start(&l);
			m = auto_session(&f, q, proto);
			WAIT_FOR(status_has(m, cases[i].cause), DEADLINE_MS);
			ck_assert(status_has(m, "the broker refused the connection: "));
			ck_assert(!status_has(m, "connection lost"));
			ck_assert(!mqtt_connected(m));
			mqtt_free(m);
			fake_stop(&f);
			logcap_stop(&l);
			ck_assert_int_eq(f.nconns, 1);
			ck_assert_int_eq(f.levels[0], proto ? 4 : 5); /* auto offers 5 first */
			ck_assert_msg(strstr(l.text, cases[i].cause), "case %zu/%d:\n%s", i, proto, l.text);
			ck_assert_msg(!strstr(l.text, "trying MQTT 3.1.1"), "case %zu/%d:\n%s", i, proto,
				      l.text);
			tsink_free(q);
		}
	}
}
END_TEST

/* Add an exact topic to c's [subscribe] retained. */
static void conf_retained(struct conf *c, const char *topic)
{
	c->retained[c->nretained] = strdup(topic);
	ck_assert_ptr_nonnull(c->retained[c->nretained]);
	c->nretained++;
}

/*
** [subscribe] retained against mosquitto: the exact topics are subscribed
** as well, count for readiness, and the status says which bootstrap came.
*/
START_TEST(test_retained_exact_topics)
{
	struct broker b = { 0 };
	struct conf c;
	struct tsink *q = tsink_new();
	struct logcap l;
	struct mqtt *m;
	char err[256];

	broker_start(&b, NULL);
	pub(&b, "meta/a", "{\"unit\":\"C\"}", true);
	pub(&b, "meta/b", "{\"unit\":\"F\"}", true);
	pub(&b, "data/x", "{\"v\":1}", true);
	make_conf(&c, b.port);
	ck_assert_int_eq(conf_set_str(&c.filters[0], "data/#"), 0);
	conf_retained(&c, "meta/a");
	conf_retained(&c, "data/x"); /* also under data/#: delivered twice, applied once */
	ck_assert_int_eq(mqtt_new(&c, &m, err, sizeof(err)), 0);
	conf_free(&c);
	logcap_start(&l);
	ck_assert_int_eq(mqtt_start(m, &q->s), 0);
	WAIT_FOR(mqtt_synced(m, NULL), DEADLINE_MS);
	ck_assert_ptr_nonnull(find(q, "meta/a"));
	ck_assert_ptr_null(find(q, "meta/b")); /* not subscribed */
	ck_assert_ptr_nonnull(find(q, "data/x"));
	ck_assert_msg(status_has(m, "3 retained message(s) from 1 wildcard and 2 exact subscription(s) "
				    "(3 on exact topics)"), "%s", (mqtt_status(m, err, sizeof(err)), err));
	/* Live messages on an exact topic flow too. */
	pub(&b, "meta/a", "{\"unit\":\"K\"}", false);
	WAIT_FOR(tsink_n(q) == 4, DEADLINE_MS);
	mqtt_free(m);
	logcap_stop(&l);
	/* mosquitto serves wildcards too: data/x came through both. */
	ck_assert_msg(!strstr(l.text, "exact subscriptions only"), "%s", l.text);
	tsink_free(q);
	broker_cleanup(&b);
}
END_TEST

/* A broker that gives retained messages to exact subscriptions only: said. */
START_TEST(test_retained_exact_only_broker)
{
	struct fake f = { .exact_only = true };
	struct tsink *q = tsink_new();
	struct logcap l;
	struct mqtt *m;
	struct conf c;
	char err[256];

	make_conf(&c, fake_start(&f));
	c.protocol = 311;
	ck_assert_int_eq(conf_set_str(&c.filters[0], "meta/#"), 0);
	conf_retained(&c, "meta/a");
	conf_retained(&c, "meta/b");
	ck_assert_int_eq(mqtt_new(&c, &m, err, sizeof(err)), 0);
	conf_free(&c);
	logcap_start(&l);
	ck_assert_int_eq(mqtt_start(m, &q->s), 0);
	WAIT_FOR(mqtt_synced(m, NULL), DEADLINE_MS);
	ck_assert(status_has(m, "2 retained message(s) from 1 wildcard and 2 exact subscription(s) "
				"(2 on exact topics)"));
	ck_assert_ptr_nonnull(find(q, "meta/a"));
	ck_assert_ptr_nonnull(find(q, "meta/b"));
	mqtt_free(m);
	fake_stop(&f);
	logcap_stop(&l);
	ck_assert_msg(strstr(l.text, "gave retained messages to exact subscriptions only"), "%s", l.text);
	ck_assert_msg(strstr(l.text, "2 retained message(s) from 1 wildcard and 2 exact"), "%s", l.text);
	tsink_free(q);
}
END_TEST

/* Backpressure: while the sink holds the session thread, nothing more is
 * read; once it lets go, every message arrives and the session syncs. */
START_TEST(test_slow_sink_backpressure)
{
	struct broker b = { 0 };
	struct conf c;
	struct tsink *q = tsink_new();
	struct mqtt *m;
	char err[256], topic[32];

	broker_start(&b, NULL);
	for (int i = 0; i < 40; i++) {
		snprintf(topic, sizeof(topic), "bp/%d", i);
		pub(&b, topic, "{}", true);
	}
	make_conf(&c, b.port);
	ck_assert_int_eq(mqtt_new(&c, &m, err, sizeof(err)), 0);
	conf_free(&c);
	q->gated = true;
	ck_assert_int_eq(mqtt_start(m, &q->s), 0);
	WAIT_FOR(tsink_blocked(q) == 1, DEADLINE_MS);
	tsink_allow(q, 5, false);
	WAIT_FOR(tsink_n(q) == 5 && tsink_blocked(q) == 1, DEADLINE_MS);
	ck_assert(!mqtt_synced(m, NULL));
	tsink_allow(q, 0, true);
	WAIT_FOR(tsink_n(q) == 40, DEADLINE_MS);
	WAIT_FOR(mqtt_synced(m, NULL), DEADLINE_MS);
	ck_assert_uint_eq(tsink_n(q), 40);
	mqtt_free(m);
	tsink_free(q);
	broker_cleanup(&b);
}
END_TEST

/*
** A decoder of our own, given to the session: it claims "multi/", emits two
** keys per message (topic + "/a", topic + "/b"), answers a payload "ask"
** with a publication through decode_out, publishes once from its tick
** through mqtt_decoder_publish, and counts ticks and lost links.
*/
struct tdec {
	struct decoder base;
	struct mqtt *session;  /* for mqtt_decoder_publish, as a hook's ctx */
	_Atomic unsigned ticks, downs, decoded;
	_Atomic int pub_rc;
	_Atomic int pub_rc_down;
	_Atomic int pub_rc_tick;  /* 1 until the tick published successfully */
	_Atomic unsigned flood_ok, flood_nobufs; /* a "flood" message's publications */
};

static bool tdec_claims(const struct decoder *d, const char *topic, size_t len)
{
	(void)d;
	return len >= 6 && memcmp(topic, "multi/", 6) == 0;
}

static size_t tdec_decode(struct decoder *d, const struct decode_in *in, const struct decode_out *out)
{
	struct tdec *t = (struct tdec *)d;
	char key[128];
	size_t n = 0;

	t->decoded++;
	for (const char *suffix = "ab"; *suffix; suffix++) {
		int w = snprintf(key, sizeof(key), "%.*s/%c", (int)in->topic_len, in->topic, *suffix);
		struct msg m = { .topic = key, .topic_len = (size_t)w, .payload = in->payload,
				 .payload_len = in->payload_len, .ts_ns = in->recv_ns,
				 .recv_ms = in->recv_ns / 1000000, .retained = in->retained };

		out->value(out->ctx, &m, REJECT_NONE, in->payload_len);
		n++;
	}
	if (in->payload_len == 3 && memcmp(in->payload, "ask", 3) == 0)
		t->pub_rc = out->publish(out->pub_ctx, "reply/rebirth", "please", 6, 0, false);
	if (in->payload_len == 5 && memcmp(in->payload, "flood", 5) == 0) {
		for (int i = 0; i < MQTT_DECODER_PUB_MAX + 44; i++) {
			int rc = out->publish(out->pub_ctx, "flood/x", "x", 1, 0, false);

			if (rc == 0)
				t->flood_ok++;
			else if (rc == -ENOBUFS)
				t->flood_nobufs++;
		}
	}
	return n;
}

static void tdec_tick(struct decoder *d, int64_t now_ns)
{
	struct tdec *t = (struct tdec *)d;

	ck_assert_int_gt(now_ns, 1700000000LL * 1000000000);
	t->ticks++;
	if (t->session && t->pub_rc_tick != 0)
		t->pub_rc_tick = mqtt_decoder_publish(t->session, "reply/tick", "hi", 2, 1, false);
}

static void tdec_link_lost(struct decoder *d)
{
	struct tdec *t = (struct tdec *)d;

	t->downs++;
	if (t->session)
		t->pub_rc_down = mqtt_decoder_publish(t->session, "reply/x", "x", 1, 0, false);
}

static void tdec_free(struct decoder *d)
{
	free(d);
}

static const struct decoder_ops tdec_ops = {
	.name = "test", .claims = tdec_claims, .decode = tdec_decode,
	.tick = tdec_tick, .link_lost = tdec_link_lost, .free = tdec_free,
};

static struct tdec *tdec_new(void)
{
	struct tdec *t = calloc(1, sizeof(*t));

	ck_assert_ptr_nonnull(t);
	t->base.ops = &tdec_ops;
	t->pub_rc = 1;
	t->pub_rc_down = 1;
	t->pub_rc_tick = 1;
	return t;
}

/* Each message goes to the first decoder that claims it, JSON last; a
 * decoder emits several keys and publishes through the session. */
START_TEST(test_decoder_dispatch)
{
	struct broker b = { 0 };
	struct conf c;
	struct tsink *q = tsink_new();
	struct tdec *t = tdec_new(), *spare[MQTT_MAX_DECODERS];
	struct logcap l;
	struct mqtt *m;
	char err[256];
	struct tmsg *x;

	broker_start(&b, NULL);
	pub(&b, "multi/r", "{\"ts\": 1795313402}", true);
	pub(&b, "plain/r", "{\"ts\": 1795313402}", true);
	make_conf(&c, b.port);
	ck_assert_int_eq(mqtt_new(&c, &m, err, sizeof(err)), 0);
	conf_free(&c);
	ck_assert_int_eq(mqtt_add_decoder(m, NULL), -EINVAL);
	t->session = m;
	ck_assert_int_eq(mqtt_add_decoder(m, &t->base), 0);
	/* Room for MQTT_MAX_DECODERS besides JSON, no more. */
	for (size_t i = 0; i < MQTT_MAX_DECODERS; i++)
		spare[i] = tdec_new();
	for (size_t i = 0; i + 1 < MQTT_MAX_DECODERS; i++)
		ck_assert_int_eq(mqtt_add_decoder(m, &spare[i]->base), 0);
	ck_assert_int_eq(mqtt_add_decoder(m, &spare[MQTT_MAX_DECODERS - 1]->base), -ENOSPC);
	ck_assert_int_eq(mqtt_start(m, &q->s), 0);
	ck_assert_int_eq(mqtt_add_decoder(m, &spare[MQTT_MAX_DECODERS - 1]->base), -EBUSY);
	free(spare[MQTT_MAX_DECODERS - 1]); /* refused: still ours */

	WAIT_FOR(mqtt_synced(m, NULL), DEADLINE_MS);
	/* The first claimant only: the spares claim the same prefix. */
	ck_assert_uint_eq(t->decoded, 1);
	for (size_t i = 0; i + 1 < MQTT_MAX_DECODERS; i++)
		ck_assert_uint_eq(spare[i]->decoded, 0);
	x = find(q, "multi/r/a");
	ck_assert_ptr_nonnull(x);
	ck_assert(x->m.retained && !x->m.ts_from_payload);
	ck_assert_ptr_nonnull(find(q, "multi/r/b"));
	ck_assert_ptr_null(find(q, "multi/r"));
	x = find(q, "plain/r"); /* JSON took the rest */
	ck_assert_ptr_nonnull(x);
	ck_assert(x->m.ts_from_payload && x->m.is_json);
	/* The tick's publication went out (and came back through '#'). */
	WAIT_FOR(find(q, "reply/tick") != NULL, DEADLINE_MS);
	ck_assert_int_eq(t->pub_rc_tick, 0);
	ck_assert_uint_ge(t->ticks, 1);
	ck_assert_uint_eq(spare[0]->ticks > 0, 1); /* every decoder ticks */

	/* A publication from decode() goes out too. */
	pub(&b, "multi/live", "ask", false);
	WAIT_FOR(find(q, "reply/rebirth") != NULL, DEADLINE_MS);
	ck_assert_int_eq(t->pub_rc, 0);
	x = find(q, "reply/rebirth");
	ck_assert_uint_eq(x->m.payload_len, 6);
	ck_assert(!x->m.retained);

	/* A decoder that publishes without bound is cut off per turn, and the
	 * session says so. */
	logcap_start(&l);
	pub(&b, "multi/flood", "flood", false);
	WAIT_FOR(t->flood_ok + t->flood_nobufs == MQTT_DECODER_PUB_MAX + 44, DEADLINE_MS);
	ck_assert_uint_eq(t->flood_ok, MQTT_DECODER_PUB_MAX);
	ck_assert_uint_eq(t->flood_nobufs, 44);
	WAIT_FOR(strstr(logcap_text(&l), "44 decoder publication(s) dropped") != NULL, DEADLINE_MS);
	logcap_stop(&l);

	/* Outside the session thread, publishing is refused. */
	ck_assert_int_eq(mqtt_decoder_publish(m, "reply/y", "y", 1, 0, false), -EPERM);
	/* Down: the decoder hears it, and cannot publish then. */
	broker_kill(&b);
	WAIT_FOR(t->downs == 1, DEADLINE_MS);
	ck_assert_int_eq(t->pub_rc_down, -ENOTCONN);

	mqtt_free(m); /* frees every decoder it took */
	tsink_free(q);
	broker_cleanup(&b);
}
END_TEST

static Suite *mqtt_suite(void)
{
	Suite *s = suite_create("mqtt");
	TCase *tc = tcase_create("broker");

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_sync_and_decode);
	tcase_add_test(tc, test_json_format_and_ts_fields);
	tcase_add_test(tc, test_broker_restart);
	tcase_add_test(tc, test_presence);
	tcase_add_test(tc, test_publish_while_disconnected);
	tcase_add_test(tc, test_refused_subscription);
	tcase_add_test(tc, test_retry_log_rate_limited);
	tcase_add_test(tc, test_slow_sink_backpressure);
	tcase_add_test(tc, test_slow_sink_is_not_quiet);
	tcase_add_test(tc, test_decoder_dispatch);
	tcase_add_test(tc, test_retry_reminder);
	tcase_add_test(tc, test_auto_falls_back_to_311);
	tcase_add_test(tc, test_auto_keeps_5);
	tcase_add_test(tc, test_fixed_5_hangup_named);
	tcase_add_test(tc, test_refused_connect_named);
	tcase_add_test(tc, test_retained_exact_topics);
	tcase_add_test(tc, test_retained_exact_only_broker);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr;
	int failed;

	if (access(MOSQUITTO_BIN, X_OK) != 0) {
		fprintf(stderr, "test_mqtt: %s not installed, skipping\n", MOSQUITTO_BIN);
		return 77;
	}
	signal(SIGPIPE, SIG_IGN);
	sr = srunner_create(mqtt_suite());
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
