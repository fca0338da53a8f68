/* SPDX-License-Identifier: MIT */
/* loadgen: publishes timestamped current-value messages to an MQTT broker, paced on the socket, for bench/run. */

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <mosquitto.h>

#include "benchutil.h"
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TOPIC_MAX 256
#define PAYLOAD_MAX (1024 * 1024)
#define KEYS_MAX 100000000UL

enum layout {
	LAYOUT_FLAT,  /* PREFIX/000123 */
	LAYOUT_TREE,  /* PREFIX/dc1/hall2/rack017/p042 */
	LAYOUT_MAX
};

struct opts {
	const char *host;
	int port;
	const char *id;
	const char *prefix;
	enum layout layout;
	uint64_t count;      /* 0: until --duration or a signal */
	uint64_t keys;
	uint64_t start;      /* first key index */
	size_t size;         /* target payload bytes */
	int qos;
	bool retain;
	bool distinct;       /* every message on a new key */
	double rate;         /* msg/s, 0 = as fast as the socket takes them */
	double duration;     /* s, 0 = no limit */
	int inflight;        /* QoS 1 window */
	int protocol;
	bool quiet;
};

struct gen {
	struct mosquitto *mosq;
	bool connected;
	int connect_rc;
	uint64_t acked;      /* QoS 1 PUBACKs seen (on_publish) */
};



static double mono_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int64_t wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void usage(FILE *f)
{
	fprintf(f,
	    "usage: loadgen [OPTIONS]\n"
	    "Publish N current-value messages {\"value\":V,\"ts\":EPOCH_MS} over K keys.\n"
	    "\n"
	    "  -H, --host HOST        broker host (default 127.0.0.1)\n"
	    "  -p, --port PORT        broker port (default 1883)\n"
	    "  -n, --count N          messages to publish; 0 = until --duration or SIGTERM\n"
	    "                         (default 1000000)\n"
	    "  -k, --keys K           distinct keys, used round-robin (default 10000)\n"
	    "  -d, --distinct         every message on a new key (keys = count)\n"
	    "      --start I          index of the first key (default 0)\n"
	    "  -P, --prefix P         topic prefix (default bench/k)\n"
	    "      --tree             topics PREFIX/dcD/hallH/rackRRR/pPPP, not PREFIX/NNNNNN\n"
	    "  -s, --size BYTES       payload size, padded with a \"pad\" member (default 60)\n"
	    "  -q, --qos 0|1          publish QoS (default 0)\n"
	    "  -r, --retain           publish retained\n"
	    "  -R, --rate MSG_PER_S   pace to this rate (default: as fast as possible)\n"
	    "  -t, --duration S       stop after S seconds\n"
	    "      --inflight N       QoS 1 messages awaiting PUBACK (default 300)\n"
	    "  -V, --protocol 5|311   MQTT version (default 311)\n"
	    "  -i, --id ID            client id (default loadgen-PID)\n"
	    "      --quiet            print only the summary line\n"
	    "  -h, --help             this text\n"
	    "\n"
	    "Per key, timestamps strictly increase (max(now, last + 1 ms)), so every\n"
	    "message is a new current value. Prints one summary line:\n"
	    "  loadgen sent=N seconds=S rate=R qos=Q retain=0|1 keys=K bytes=B\n");
}



static int parse_opts(int argc, char **argv, struct opts *o)
{
	static const struct option longopts[] = {
		{"host", required_argument, NULL, 'H'},
		{"port", required_argument, NULL, 'p'},
		{"count", required_argument, NULL, 'n'},
		{"keys", required_argument, NULL, 'k'},
		{"distinct", no_argument, NULL, 'd'},
		{"start", required_argument, NULL, 'S'},
		{"prefix", required_argument, NULL, 'P'},
		{"tree", no_argument, NULL, 'T'},
		{"size", required_argument, NULL, 's'},
		{"qos", required_argument, NULL, 'q'},
		{"retain", no_argument, NULL, 'r'},
		{"rate", required_argument, NULL, 'R'},
		{"duration", required_argument, NULL, 't'},
		{"inflight", required_argument, NULL, 'I'},
		{"protocol", required_argument, NULL, 'V'},
		{"id", required_argument, NULL, 'i'},
		{"quiet", no_argument, NULL, 'Q'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	uint64_t v;
	int c;

	while ((c = getopt_long(argc, argv, "H:p:n:k:dP:s:q:rR:t:V:i:h", longopts, NULL)) != -1) {
		switch (c) {
		case 'H':
			o->host = optarg;
			break;
		case 'p':
			if (bench_parse_u64(optarg, 65535, &v) < 0 || v == 0)
				goto bad;
			o->port = (int)v;
			break;
		case 'n':
			if (bench_parse_u64(optarg, UINT64_MAX / 2, &o->count) < 0)
				goto bad;
			break;
		case 'k':
			if (bench_parse_u64(optarg, KEYS_MAX, &o->keys) < 0 || o->keys == 0)
				goto bad;
			break;
		case 'd':
			o->distinct = true;
			break;
		case 'S':
			if (bench_parse_u64(optarg, KEYS_MAX, &o->start) < 0)
				goto bad;
			break;
		case 'P':
			o->prefix = optarg;
			break;
		case 'T':
			o->layout = LAYOUT_TREE;
			break;
		case 's':
			if (bench_parse_u64(optarg, PAYLOAD_MAX, &v) < 0)
				goto bad;
			o->size = (size_t)v;
			break;
		case 'q':
			if (bench_parse_u64(optarg, 1, &v) < 0)
				goto bad;
			o->qos = (int)v;
			break;
		case 'r':
			o->retain = true;
			break;
		case 'R':
			if (bench_parse_double(optarg, &o->rate) < 0)
				goto bad;
			break;
		case 't':
			if (bench_parse_double(optarg, &o->duration) < 0)
				goto bad;
			break;
		case 'I':
			if (bench_parse_u64(optarg, 65535, &v) < 0 || v == 0)
				goto bad;
			o->inflight = (int)v;
			break;
		case 'V':
			if (strcmp(optarg, "5") == 0)
				o->protocol = MQTT_PROTOCOL_V5;
			else if (strcmp(optarg, "311") == 0 || strcmp(optarg, "3.1.1") == 0)
				o->protocol = MQTT_PROTOCOL_V311;
			else
				goto bad;
			break;
		case 'i':
			o->id = optarg;
			break;
		case 'Q':
			o->quiet = true;
			break;
		case 'h':
			usage(stdout);
			exit(0);
		default:
			usage(stderr);
			return -EINVAL;
		}
		continue;
bad:
		fprintf(stderr, "loadgen: bad value for -%c: %s\n", c, optarg);
		return -EINVAL;
	}
	if (optind != argc) {
		fprintf(stderr, "loadgen: unexpected argument: %s\n", argv[optind]);
		return -EINVAL;
	}
	if (o->count == 0 && o->distinct) {
		fprintf(stderr, "loadgen: --distinct needs --count\n");
		return -EINVAL;
	}
	if (o->distinct && o->start + o->count > KEYS_MAX) {
		fprintf(stderr, "loadgen: too many distinct keys\n");
		return -EINVAL;
	}
	return 0;
}

static void on_connect(struct mosquitto *mosq, void *obj, int rc)
{
	struct gen *g = obj;

	(void)mosq;
	g->connect_rc = rc;
	g->connected = (rc == 0);
}

static void on_publish(struct mosquitto *mosq, void *obj, int mid)
{
	struct gen *g = obj;

	(void)mosq;
	(void)mid;
	g->acked++;
}

/*
** Wait up to timeout_s for socket activity and let libmosquitto read,
** write and keep the session alive. Returns 0, or -EIO when the connection
** is lost (loadgen never reconnects: a benchmark with a gap is void).
*/
static int service(struct gen *g, double timeout_s)
{
	struct pollfd pfd;
	struct timespec ts;
	int sock, n, rc;

	sock = mosquitto_socket(g->mosq);
	if (sock < 0)
		return -EIO;
	pfd.fd = sock;
	pfd.events = POLLIN;
	if (mosquitto_want_write(g->mosq))
		pfd.events |= POLLOUT;
	pfd.revents = 0;
	if (timeout_s < 0)
		timeout_s = 0;
	ts.tv_sec = (time_t)timeout_s;
	ts.tv_nsec = (long)((timeout_s - (double)ts.tv_sec) * 1e9);
	n = ppoll(&pfd, 1, &ts, NULL);
	if (n < 0 && errno != EINTR)
		return -errno;
	if (n > 0) {
		if (pfd.revents & (POLLIN | POLLERR | POLLHUP)) {
			rc = mosquitto_loop_read(g->mosq, 1);
			if (rc != MOSQ_ERR_SUCCESS)
				return -EIO;
		}
		if (pfd.revents & POLLOUT) {
			rc = mosquitto_loop_write(g->mosq, 1);
			if (rc != MOSQ_ERR_SUCCESS)
				return -EIO;
		}
	}
	rc = mosquitto_loop_misc(g->mosq);
	if (rc != MOSQ_ERR_SUCCESS)
		return -EIO;
	return 0;
}

static size_t format_topic(const struct opts *o, uint64_t key, char *buf, size_t cap)
{
	int n;

	if (o->layout == LAYOUT_TREE)
		n = snprintf(buf, cap, "%s/dc%" PRIu64 "/hall%" PRIu64 "/rack%03" PRIu64 "/p%03" PRIu64,
		    o->prefix, key / 100000, (key / 10000) % 10, (key / 100) % 100, key % 100);
	else
		n = snprintf(buf, cap, "%s/%06" PRIu64, o->prefix, key);
	if (n < 0 || (size_t)n >= cap)
		return 0;
	return (size_t)n;
}

/* Writes {"value":V,"ts":T} padded with ,"pad":"xxx" up to o->size bytes. */
static size_t format_payload(const struct opts *o, uint64_t seq, int64_t ts, char *buf, size_t cap)
{
	size_t len, pad;
	int n;

	n = snprintf(buf, cap, "{\"value\":%" PRIu64 ".%" PRIu64 ",\"ts\":%" PRId64,
	    15 + (seq * 7) % 20, (seq * 3) % 10, ts);
	if (n < 0 || (size_t)n + 2 >= cap)
		return 0;
	len = (size_t)n;
	/* ,"pad":"" and } are 10 bytes */
	if (o->size >= len + 10 + 1 && o->size < cap) {
		pad = o->size - len - 10;
		memcpy(buf + len, ",\"pad\":\"", 8);
		len += 8;
		memset(buf + len, 'x', pad);
		len += pad;
		buf[len++] = '"';
	}
	buf[len++] = '}';
	return len;
}

static int gen_connect(struct gen *g, const struct opts *o)
{
	double deadline;
	int rc;

	rc = mosquitto_connect(g->mosq, o->host, o->port, 30);
	if (rc != MOSQ_ERR_SUCCESS) {
		fprintf(stderr, "loadgen: connect %s:%d: %s\n", o->host, o->port,
		    rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
		return -EIO;
	}
	deadline = mono_now() + 10.0;
	while (!g->connected && g->connect_rc == 0 && mono_now() < deadline && !bench_stop_requested) {
		if (service(g, 0.1) < 0)
			break;
	}
	if (!g->connected) {
		fprintf(stderr, "loadgen: not connected: %s\n",
		    g->connect_rc ? mosquitto_connack_string(g->connect_rc) : "timeout");
		return -EIO;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct opts o = {
		.host = "127.0.0.1", .port = 1883, .prefix = "bench/k",
		.layout = LAYOUT_FLAT, .count = 1000000, .keys = 10000, .size = 60,
		.inflight = 300, .protocol = MQTT_PROTOCOL_V311,
	};
	struct gen g = {0};
	char idbuf[64];
	char topic[TOPIC_MAX];
	char *payload = NULL;
	size_t cap, tlen, plen;
	int64_t *last_ts = NULL;
	uint64_t sent = 0, bytes = 0, nkeys;
	double t0, t1, deadline, end_at;
	int rc, ret = 1;

	if (parse_opts(argc, argv, &o) < 0)
		return 2;
	nkeys = o.distinct ? o.count : o.keys;
	if (o.id == NULL) {
		snprintf(idbuf, sizeof(idbuf), "loadgen-%ld", (long)getpid());
		o.id = idbuf;
	}

	bench_catch_signals();
	signal(SIGPIPE, SIG_IGN);

	cap = o.size + 64;
	payload = malloc(cap);
	if (!o.distinct)
		last_ts = calloc(nkeys, sizeof(*last_ts));
	if (payload == NULL || (!o.distinct && last_ts == NULL)) {
		fprintf(stderr, "loadgen: out of memory\n");
		goto out;
	}

	mosquitto_lib_init();
	g.mosq = mosquitto_new(o.id, true, &g);
	if (g.mosq == NULL) {
		fprintf(stderr, "loadgen: mosquitto_new: %s\n", strerror(errno));
		goto out;
	}
	mosquitto_int_option(g.mosq, MOSQ_OPT_PROTOCOL_VERSION, o.protocol);
	mosquitto_int_option(g.mosq, MOSQ_OPT_SEND_MAXIMUM, o.inflight);
	mosquitto_connect_callback_set(g.mosq, on_connect);
	mosquitto_publish_callback_set(g.mosq, on_publish);
	if (gen_connect(&g, &o) < 0)
		goto out;

	t0 = mono_now();
	end_at = o.duration > 0 ? t0 + o.duration : 0;
	while ((o.count == 0 || sent < o.count) && !bench_stop_requested) {
		uint64_t key;
		int64_t ts;

		if (end_at > 0 && mono_now() >= end_at)
			break;
		if (o.rate > 0) {
			double due = t0 + (double)sent / o.rate;
			double now = mono_now();

			if (now < due) {
				if (service(&g, due - now) < 0)
					goto lost;
				continue;
			}
		}
		/*
		 * Pace on the socket: while libmosquitto holds unwritten
		 * packets, the kernel buffer is full; wait until it drains,
		 * so QoS 0 at full speed never piles up in our memory.
		 */
		if (mosquitto_want_write(g.mosq)) {
			if (service(&g, 1.0) < 0)
				goto lost;
			continue;
		}
		if (o.qos > 0 && sent - g.acked >= (uint64_t)o.inflight) {
			if (service(&g, 1.0) < 0)
				goto lost;
			continue;
		}
		if ((sent & 1023) == 0 && mosquitto_loop_misc(g.mosq) != MOSQ_ERR_SUCCESS)
			goto lost;

		key = o.distinct ? o.start + sent : o.start + sent % o.keys;
		ts = wall_ms();
		if (!o.distinct) {
			int64_t *last = &last_ts[sent % o.keys];

			if (ts <= *last)
				ts = *last + 1;
			*last = ts;
		}
		tlen = format_topic(&o, key, topic, sizeof(topic));
		plen = format_payload(&o, sent, ts, payload, cap);
		if (tlen == 0 || plen == 0) {
			fprintf(stderr, "loadgen: topic or payload too long\n");
			goto out;
		}
		rc = mosquitto_publish(g.mosq, NULL, topic, (int)plen, payload, o.qos, o.retain);
		if (rc != MOSQ_ERR_SUCCESS) {
			fprintf(stderr, "loadgen: publish: %s\n", mosquitto_strerror(rc));
			goto lost;
		}
		sent++;
		bytes += plen;
		if (!o.quiet && (sent % 1000000) == 0)
			fprintf(stderr, "loadgen: %" PRIu64 " sent\n", sent);
	}

	/* Flush what libmosquitto still holds and, for QoS 1, every PUBACK. */
	deadline = mono_now() + 60.0;
	while ((mosquitto_want_write(g.mosq) || (o.qos > 0 && g.acked < sent)) && mono_now() < deadline) {
		if (service(&g, 0.1) < 0)
			goto lost;
	}
	t1 = mono_now();
	mosquitto_disconnect(g.mosq);
	for (int i = 0; i < 10 && mosquitto_want_write(g.mosq); i++)
		(void)service(&g, 0.05);

	printf("loadgen sent=%" PRIu64 " seconds=%.3f rate=%.0f qos=%d retain=%d keys=%" PRIu64
	    " bytes=%" PRIu64 " acked=%" PRIu64 "\n",
	    sent, t1 - t0, t1 > t0 ? (double)sent / (t1 - t0) : 0.0, o.qos, o.retain ? 1 : 0,
	    nkeys < sent ? nkeys : sent, bytes, o.qos > 0 ? g.acked : sent);
	ret = (o.qos > 0 && g.acked < sent) ? 1 : 0;
	goto out;

lost:
	fprintf(stderr, "loadgen: connection lost after %" PRIu64 " messages\n", sent);
out:
	if (g.mosq != NULL)
		mosquitto_destroy(g.mosq);
	mosquitto_lib_cleanup();
	free(last_ts);
	free(payload);
	return ret;
}
