/* SPDX-License-Identifier: MIT */
/* baresub: a bare libmosquitto subscriber that discards what it receives, the floor bench/run measures against. */

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <mosquitto.h>

#include "benchutil.h"
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define TOPICS_MAX 16

enum loop_mode {
	LOOP_FOREVER, /* mosquitto_loop() over and over: what mosquitto_loop_forever() does */
	LOOP_READ,    /* our own poll, then mosquitto_loop_read() until a call brings nothing */
	LOOP_BUFFERED, /* LOOP_READ, and read() interposed with a 64 KiB buffer (below) */
	LOOP_MAX
};

struct opts {
	const char *host;
	int port;
	const char *id;
	const char *topics[TOPICS_MAX];
	int ntopics;
	int qos;
	uint64_t count;      /* 0: no limit */
	double idle;         /* s without a message (after the first) that ends the run; 0: off */
	double timeout;      /* s for the whole run */
	int protocol;
	int receive_max;     /* MQTT 5 receive maximum, 0 = libmosquitto's default */
	enum loop_mode loop;
};

struct sub {
	const struct opts *o;
	struct mosquitto *mosq;
	bool subscribed;
	bool done;
	int connect_rc;
	uint64_t messages;
	uint64_t retained;
	uint64_t bytes;
	double first;        /* CLOCK_REALTIME, s */
	double last;
	double last_mono;
};


/*
** --loop buffered: an experiment on libmosquitto's syscalls, not a habit to
** copy blindly. libmosquitto 2.0 reads a packet with three read() calls
** (command byte, remaining length, body), so a small message costs three
** syscalls. This executable defines read(); ELF symbol interposition makes
** libmosquitto's calls land here, and for the broker socket only they are
** served from a 64 KiB buffer filled by one real read. Data held in the
** buffer is invisible to poll(), so run_read() drains it before polling.
*/
static int rb_fd = -1;
static char rb_buf[65536];
static size_t rb_off, rb_len;

ssize_t read(int fd, void *buf, size_t count)
{
	size_t k;

	if (fd != rb_fd || fd < 0)
		return syscall(SYS_read, fd, buf, count);
	if (rb_off == rb_len) {
		long n = syscall(SYS_read, fd, rb_buf, sizeof(rb_buf));

		if (n <= 0)
			return n;
		rb_off = 0;
		rb_len = (size_t)n;
	}
	k = rb_len - rb_off < count ? rb_len - rb_off : count;
	memcpy(buf, rb_buf + rb_off, k);
	rb_off += k;
	return (ssize_t)k;
}


static double clock_s(clockid_t id)
{
	struct timespec ts;

	clock_gettime(id, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void usage(FILE *f)
{
	fprintf(f,
	    "usage: baresub [OPTIONS]\n"
	    "Subscribe, discard every message, and report rate and own CPU time.\n"
	    "\n"
	    "  -H, --host HOST          broker host (default 127.0.0.1)\n"
	    "  -p, --port PORT          broker port (default 1883)\n"
	    "  -t, --topic FILTER       subscription, repeatable (default #)\n"
	    "  -q, --qos 0|1            subscription QoS (default 0)\n"
	    "  -C, --count N            exit after N messages\n"
	    "      --idle S             exit once no message came for S seconds (after the first)\n"
	    "      --timeout S          give up after S seconds (default 600)\n"
	    "  -V, --protocol 5|311     MQTT version (default 5)\n"
	    "      --receive-max N      MQTT 5 receive maximum (default libmosquitto's)\n"
	    "      --loop MODE          forever: mosquitto_loop() as loop_forever does (default);\n"
	    "                           read: own poll, mosquitto_loop_read() until dry;\n"
	    "                           buffered: read, with libmosquitto's read() calls on the\n"
	    "                           socket served from a 64 KiB buffer (an experiment)\n"
	    "  -i, --id ID              client id (default baresub-PID)\n"
	    "  -h, --help               this text\n"
	    "\n"
	    "Writes \"baresub: subscribed\" to stderr once the SUBACK is in, then one line:\n"
	    "  baresub messages=N retained=R seconds=S rate=R cpu_s=C us_per_msg=U ...\n"
	    "seconds runs from the first message to the last. Exit 0 when --count was\n"
	    "reached (or, without --count, when anything arrived), else 1.\n");
}



static int parse_opts(int argc, char **argv, struct opts *o)
{
	static const struct option longopts[] = {
		{"host", required_argument, NULL, 'H'},
		{"port", required_argument, NULL, 'p'},
		{"topic", required_argument, NULL, 't'},
		{"qos", required_argument, NULL, 'q'},
		{"count", required_argument, NULL, 'C'},
		{"idle", required_argument, NULL, 'D'},
		{"timeout", required_argument, NULL, 'T'},
		{"protocol", required_argument, NULL, 'V'},
		{"receive-max", required_argument, NULL, 'M'},
		{"loop", required_argument, NULL, 'L'},
		{"id", required_argument, NULL, 'i'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	uint64_t v;
	int c;

	while ((c = getopt_long(argc, argv, "H:p:t:q:C:V:i:h", longopts, NULL)) != -1) {
		switch (c) {
		case 'H':
			o->host = optarg;
			break;
		case 'p':
			if (bench_parse_u64(optarg, 65535, &v) < 0 || v == 0)
				goto bad;
			o->port = (int)v;
			break;
		case 't':
			if (o->ntopics == TOPICS_MAX)
				goto bad;
			o->topics[o->ntopics++] = optarg;
			break;
		case 'q':
			if (bench_parse_u64(optarg, 1, &v) < 0)
				goto bad;
			o->qos = (int)v;
			break;
		case 'C':
			if (bench_parse_u64(optarg, UINT64_MAX / 2, &o->count) < 0)
				goto bad;
			break;
		case 'D':
			if (bench_parse_double(optarg, &o->idle) < 0)
				goto bad;
			break;
		case 'T':
			if (bench_parse_double(optarg, &o->timeout) < 0 || o->timeout <= 0)
				goto bad;
			break;
		case 'V':
			if (strcmp(optarg, "5") == 0)
				o->protocol = MQTT_PROTOCOL_V5;
			else if (strcmp(optarg, "311") == 0 || strcmp(optarg, "3.1.1") == 0)
				o->protocol = MQTT_PROTOCOL_V311;
			else
				goto bad;
			break;
		case 'M':
			if (bench_parse_u64(optarg, 65535, &v) < 0 || v == 0)
				goto bad;
			o->receive_max = (int)v;
			break;
		case 'L':
			if (strcmp(optarg, "forever") == 0)
				o->loop = LOOP_FOREVER;
			else if (strcmp(optarg, "read") == 0)
				o->loop = LOOP_READ;
			else if (strcmp(optarg, "buffered") == 0)
				o->loop = LOOP_BUFFERED;
			else
				goto bad;
			break;
		case 'i':
			o->id = optarg;
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
		fprintf(stderr, "baresub: bad value for -%c: %s\n", c, optarg);
		return -EINVAL;
	}
	if (optind != argc) {
		fprintf(stderr, "baresub: unexpected argument: %s\n", argv[optind]);
		return -EINVAL;
	}
	if (o->ntopics == 0)
		o->topics[o->ntopics++] = "#";
	return 0;
}

static void on_connect(struct mosquitto *mosq, void *obj, int rc)
{
	struct sub *s = obj;
	int mrc;

	s->connect_rc = rc;
	if (rc != 0)
		return;
	mrc = mosquitto_subscribe_multiple(mosq, NULL, s->o->ntopics, (char *const *)s->o->topics,
	    s->o->qos, 0, NULL);
	if (mrc != MOSQ_ERR_SUCCESS)
		fprintf(stderr, "baresub: subscribe: %s\n", mosquitto_strerror(mrc));
}

static void on_subscribe(struct mosquitto *mosq, void *obj, int mid, int n, const int *granted)
{
	struct sub *s = obj;

	(void)mosq;
	(void)mid;
	for (int i = 0; i < n; i++) {
		if (granted[i] > 2) {
			fprintf(stderr, "baresub: subscription %d refused\n", i);
			s->done = true;
			return;
		}
	}
	s->subscribed = true;
	fprintf(stderr, "baresub: subscribed\n");
	fflush(stderr);
}

static void on_message(struct mosquitto *mosq, void *obj, const struct mosquitto_message *m)
{
	struct sub *s = obj;
	double now = clock_s(CLOCK_REALTIME);

	(void)mosq;
	if (s->messages == 0)
		s->first = now;
	s->last = now;
	s->last_mono = clock_s(CLOCK_MONOTONIC);
	s->messages++;
	s->bytes += (uint64_t)m->payloadlen;
	if (m->retain)
		s->retained++;
	if (s->o->count > 0 && s->messages >= s->o->count)
		s->done = true;
}

/* True when the run should end: count reached, idle, deadline or signal. */
static bool finished(struct sub *s, double deadline)
{
	double now;

	if (s->done || bench_stop_requested)
		return true;
	now = clock_s(CLOCK_MONOTONIC);
	if (now >= deadline)
		return true;
	if (s->o->idle > 0 && s->messages > 0 && now - s->last_mono >= s->o->idle)
		return true;
	return false;
}

static int run_forever(struct sub *s, double deadline)
{
	while (!finished(s, deadline)) {
		int rc = mosquitto_loop(s->mosq, 100, 1);

		if (rc != MOSQ_ERR_SUCCESS) {
			fprintf(stderr, "baresub: connection lost: %s\n", mosquitto_strerror(rc));
			return -EIO;
		}
	}
	return 0;
}

/*
** One poll per burst, not per message: keep calling mosquitto_loop_read()
** while each call delivers a message; the first call that delivers none
** (libmosquitto treats EAGAIN as success) sends us back to poll.
*/
static int run_read(struct sub *s, double deadline)
{
	while (!finished(s, deadline)) {
		struct pollfd pfd;
		int sock = mosquitto_socket(s->mosq);
		int n, rc;

		if (sock < 0)
			return -EIO;
		pfd.fd = sock;
		pfd.events = POLLIN;
		if (mosquitto_want_write(s->mosq))
			pfd.events |= POLLOUT;
		pfd.revents = 0;
		if (rb_off < rb_len) {
			n = 1; /* bytes wait in our buffer: no poll needed */
			pfd.revents = POLLIN;
		} else {
			n = poll(&pfd, 1, 100);
		}
		if (n < 0 && errno != EINTR)
			return -errno;
		if (n > 0 && (pfd.revents & (POLLIN | POLLERR | POLLHUP))) {
			uint64_t before;

			do {
				before = s->messages;
				rc = mosquitto_loop_read(s->mosq, 1);
				if (rc != MOSQ_ERR_SUCCESS) {
					fprintf(stderr, "baresub: connection lost: %s\n",
					    mosquitto_strerror(rc));
					return -EIO;
				}
			} while (s->messages != before && !s->done);
		}
		if (n > 0 && (pfd.revents & POLLOUT) &&
		    mosquitto_loop_write(s->mosq, 1) != MOSQ_ERR_SUCCESS)
			return -EIO;
		if (mosquitto_loop_misc(s->mosq) != MOSQ_ERR_SUCCESS)
			return -EIO;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct opts o = {
		.host = "127.0.0.1", .port = 1883, .timeout = 600.0,
		.protocol = MQTT_PROTOCOL_V5, .loop = LOOP_FOREVER,
	};
	struct sub s = {0};
	struct rusage ru;
	char idbuf[64];
	double start_wall, deadline, cpu_user, cpu_sys, secs;
	int rc, ret = 1;

	start_wall = clock_s(CLOCK_REALTIME);
	if (parse_opts(argc, argv, &o) < 0)
		return 2;
	if (o.id == NULL) {
		snprintf(idbuf, sizeof(idbuf), "baresub-%ld", (long)getpid());
		o.id = idbuf;
	}
	s.o = &o;

	bench_catch_signals();
	signal(SIGPIPE, SIG_IGN);

	mosquitto_lib_init();
	s.mosq = mosquitto_new(o.id, true, &s);
	if (s.mosq == NULL) {
		fprintf(stderr, "baresub: mosquitto_new: %s\n", strerror(errno));
		goto out;
	}
	mosquitto_int_option(s.mosq, MOSQ_OPT_PROTOCOL_VERSION, o.protocol);
	if (o.receive_max > 0)
		mosquitto_int_option(s.mosq, MOSQ_OPT_RECEIVE_MAXIMUM, o.receive_max);
	mosquitto_connect_callback_set(s.mosq, on_connect);
	mosquitto_subscribe_callback_set(s.mosq, on_subscribe);
	mosquitto_message_callback_set(s.mosq, on_message);

	deadline = clock_s(CLOCK_MONOTONIC) + o.timeout;
	rc = mosquitto_connect(s.mosq, o.host, o.port, 30);
	if (rc != MOSQ_ERR_SUCCESS) {
		fprintf(stderr, "baresub: connect %s:%d: %s\n", o.host, o.port,
		    rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
		goto out;
	}
	if (o.loop == LOOP_BUFFERED)
		rb_fd = mosquitto_socket(s.mosq);
	rc = o.loop == LOOP_FOREVER ? run_forever(&s, deadline) : run_read(&s, deadline);
	rb_fd = -1;
	if (s.connect_rc != 0)
		fprintf(stderr, "baresub: connection refused: %s\n", mosquitto_connack_string(s.connect_rc));
	mosquitto_disconnect(s.mosq);

	getrusage(RUSAGE_SELF, &ru);
	cpu_user = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6;
	cpu_sys = (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
	secs = s.messages > 1 ? s.last - s.first : 0.0;
	printf("baresub messages=%" PRIu64 " retained=%" PRIu64 " bytes=%" PRIu64
	    " seconds=%.3f rate=%.0f cpu_user=%.3f cpu_sys=%.3f cpu_s=%.3f us_per_msg=%.2f"
	    " start=%.6f first=%.6f last=%.6f\n",
	    s.messages, s.retained, s.bytes, secs, secs > 0 ? (double)s.messages / secs : 0.0,
	    cpu_user, cpu_sys, cpu_user + cpu_sys,
	    s.messages ? (cpu_user + cpu_sys) * 1e6 / (double)s.messages : 0.0,
	    start_wall, s.first, s.last);
	if (rc == 0 && (o.count > 0 ? s.messages >= o.count : s.messages > 0))
		ret = 0;
out:
	if (s.mosq != NULL)
		mosquitto_destroy(s.mosq);
	mosquitto_lib_cleanup();
	return ret;
}
