/* SPDX-License-Identifier: MIT */
/* mqtt.c: the MQTT session thread: connect with backoff, subscribe, track the retained sync, decode and deliver messages. */
#include "mirror/ingest/mqtt.h"

#include <errno.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <linux/sockios.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/stats.h"
#include "common/tsparse.h"
#include "mirror/state/rejects.h"

/*
** Threading. Every libmosquitto call on the session's handle happens on the
** session thread, so the library runs in its simple non-threaded mode (no
** mosquitto_threaded_set): none of the session's locks is held inside its
** callbacks (the sink takes the index lock inside on_message, for that
** message's apply only), and other threads only touch the status string and the outbox
** (under mu) and a few atomics. mqtt_publish_retained() hands its message
** to the outbox and pokes the thread through an eventfd.
**
** Lock order. The mirror may call mqtt_publish_retained() (mu) holding the
** index lock, and flush_outbox() calls libmosquitto holding mu, whose
** callbacks (on this thread) take the index lock: ThreadSanitizer reports
** that as a cycle. It cannot deadlock: libmosquitto's own mutexes are only
** ever taken on this thread, so no other thread can hold one while it
** waits for mu.
**
** Wake-ups. A subscriber that keeps up with a fast stream is woken every
** few messages, and each wake-up (poll, the scheduler, the TCP receive)
** costs more than the messages it brings. While the stream is busy the
** thread raises the socket's SO_RCVLOWAT, so that poll reports it readable
** once MQTT_BUSY_LOWAT bytes wait, and polls with a timeout of
** MQTT_BUSY_WAIT_MS, after which it reads whatever is there: one wake-up
** per hundred-odd messages instead of one per ten, at most a millisecond
** later. A quiet stream puts the mark back to one byte. libmosquitto's
** reads are untouched (a non-blocking read returns what is there,
** whatever the mark).
**
** Delivery. Each message goes straight to the sink (the mirror's apply) from
** on_message, in libmosquitto's buffer: no copy, no allocation, no queue
** and no other thread to wake. One wake-up's run of messages ends with
** sink.flush. The kernel's receive buffer is the ingest queue: while the
** sink works, the socket is not read and TCP pushes back on the broker.
**
** The loop. Instead of mosquitto_loop() (one select() per packet) the thread
** polls the socket itself and, when it is readable, calls
** mosquitto_loop_read() again and again while packets keep coming, so a busy
** stream costs one poll() per burst rather than one select() per message.
** This is libmosquitto's documented "use in other event loops" interface,
** not a fork of its internals.
*/

#define MQTT_OUTBOX_MAX 1024      /* retained topics kept for (re)publication */
#define MQTT_DRAIN_MAX 256        /* reads per wake-up before timers are checked */
#define MQTT_CLOCK_EVERY 64       /* reads between two readings of the receive clock */
#define MQTT_BACKLOG_EVERY_MS 100 /* how often the socket's unread bytes are sampled */
#define MQTT_BUSY_PACKETS 32      /* a wake-up that read this many: the stream is busy */
#define MQTT_BUSY_LOWAT 16384     /* while busy, poll wakes once this many bytes wait... */
#define MQTT_BUSY_WAIT_MS 1       /* ... or after this long, for the tail */
#define MQTT_IDLE_TICK_MS 1000    /* libmosquitto's keepalive clock has 1 s resolution */
#define MQTT_STOP_JOIN_MS 5000
#define MQTT_FAIL_REMIND_MS 300000 /* repeat an unchanged connect failure at most this often */

enum sub_state { SUB_PENDING, SUB_OK, SUB_FAILED };

struct sub {
	char *filter;
	int mid;
	enum sub_state state;
	int reason;            /* SUBACK reason code or MOSQ_ERR_* when failed */
	enum sub_state logged; /* the result last logged, to log changes only */
	int logged_reason;
};

struct outmsg {
	char *topic;
	void *payload;
	size_t len;
};

enum link_state { LINK_IDLE, LINK_CONNECTING, LINK_UP };

struct mqtt {
	/* Configuration, copied: the caller's conf may be freed or reloaded. */
	char *urls[CONF_MAX_URLS];
	size_t nurls;
	char *client_id;           /* NULL: the broker or library picks one */
	int protocol;              /* 5 or 311 */
	int qos;
	bool persistent;
	int keepalive_s;
	char *username, *password_file;
	char *tls_ca, *tls_cert, *tls_key;
	uint32_t session_expiry_s;
	int64_t reconnect_min_ms, reconnect_max_ms, sync_quiet_ms;
	struct sub *subs;
	size_t nsubs;
	size_t max_payload, max_topic_len;
	bool format_json;
	char *ts_field;
	const char *ts_names[3];
	size_t nts_names;
	int64_t connack_timeout_ms;

	struct mqtt_sink sink;
	struct mosquitto *mosq;
	bool mosq_tls;
	int wakefd;
	pthread_t thread;
	bool started, joined, abandoned;
	_Atomic bool stop;

	/* Session state: the session thread only. */
	enum link_state link;
	size_t url_idx;
	unsigned fail_round;       /* backoff exponent: full rounds over the URLs */
	uint64_t rng;
	uint64_t events;           /* callbacks seen: the drain loop's progress mark */
	int64_t recv_clock_ns;     /* wall clock, read once per MQTT_CLOCK_EVERY reads */
	int64_t last_recv_ns;      /* the last message's receive time: strictly increasing */
	bool delivered;            /* messages went to the sink since its last flush */
	int64_t backlog_ms;        /* monotonic: last ingest_queue_bytes sample */
	bool busy;                 /* the last wake-up read MQTT_BUSY_PACKETS or more */
	int lowat_fd;              /* the socket SO_RCVLOWAT is raised on, -1 none */
	bool ever_connected;
	bool just_connected;       /* on_connect fired; the loop finishes the work */
	bool refused;              /* CONNACK refused; reason in why */
	bool session_present;
	int disconnect_rc;         /* reason from on_disconnect, -1 = none */
	size_t subs_pending;
	int64_t attempt_ms;        /* monotonic: start of the current attempt */
	int64_t up_ms;             /* monotonic: CONNACK received */
	int64_t quiet_since_ms;    /* monotonic: last SUBACK or retained message */
	int64_t next_attempt_ms;
	uint64_t retained_burst;
	uint64_t failed_attempts;
	int64_t fail_logged_ms;
	char why[160];             /* the current failure reason */
	char fail_logged[160];     /* the failure reason last logged */
	bool status_dirty;
	bool local_synced;

	/* Shared with other threads. */
	_Atomic bool connected;
	_Atomic bool synced;
	_Atomic uint64_t epoch;
	_Atomic uint64_t sub_failures;
	pthread_mutex_t mu;        /* status, outbox */
	char status[320];
	struct outmsg *outbox;
	size_t noutbox;
};

static pthread_once_t lib_once = PTHREAD_ONCE_INIT;

static void lib_init(void)
{
	mosquitto_lib_init();
}

/* Translate a MOSQ_ERR_* into -errno, once, at the border. */
static int mosq_errno(int rc, int saved_errno)
{
	switch (rc) {
	case MOSQ_ERR_SUCCESS:
		return 0;
	case MOSQ_ERR_NOMEM:
		return -ENOMEM;
	case MOSQ_ERR_INVAL:
	case MOSQ_ERR_MALFORMED_UTF8:
		return -EINVAL;
	case MOSQ_ERR_NO_CONN:
		return -ENOTCONN;
	case MOSQ_ERR_CONN_LOST:
		return -ECONNRESET;
	case MOSQ_ERR_CONN_REFUSED:
		return -ECONNREFUSED;
	case MOSQ_ERR_OVERSIZE_PACKET:
	case MOSQ_ERR_PAYLOAD_SIZE:
		return -EMSGSIZE;
	case MOSQ_ERR_KEEPALIVE:
		return -ETIMEDOUT;
	case MOSQ_ERR_ERRNO:
		return saved_errno > 0 ? -saved_errno : -EIO;
	default:
		return -EIO;
	}
}

/* A human reason for a MOSQ_ERR_* (errno captured right after the call). */
static void mosq_reason(int rc, int saved_errno, char *buf, size_t n)
{
	if (rc == MOSQ_ERR_ERRNO && saved_errno > 0) {
		char tmp[128];

		snprintf(buf, n, "%s", strerror_r(saved_errno, tmp, sizeof(tmp)));
	} else if (rc == MOSQ_ERR_CONN_LOST) {
		snprintf(buf, n, "connection lost");
	} else if (rc == MOSQ_ERR_KEEPALIVE) {
		snprintf(buf, n, "no answer from the broker within the keepalive");
	} else if (rc == MOSQ_ERR_EAI) {
		snprintf(buf, n, "host name lookup failed");
	} else {
		snprintf(buf, n, "%s", mosquitto_strerror(rc));
	}
}

static void set_status(struct mqtt *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_status(struct mqtt *m, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&m->mu);
	va_start(ap, fmt);
	vsnprintf(m->status, sizeof(m->status), fmt, ap);
	va_end(ap);
	pthread_mutex_unlock(&m->mu);
}

static uint64_t rng_next(struct mqtt *m)
{
	/* xorshift64*: jitter only, not security. */
	m->rng ^= m->rng >> 12;
	m->rng ^= m->rng << 25;
	m->rng ^= m->rng >> 27;
	return m->rng * 2685821657736338717ULL;
}

/* Full jitter: uniform in [0, min(max, min * 2^round)]. */
static int64_t backoff_ms(struct mqtt *m)
{
	int64_t cap = m->reconnect_min_ms;

	for (unsigned i = 0; i < m->fail_round && cap < m->reconnect_max_ms; i++)
		cap *= 2;
	if (cap > m->reconnect_max_ms)
		cap = m->reconnect_max_ms;
	if (cap <= 0)
		return 0;
	return (int64_t)(rng_next(m) % (uint64_t)(cap + 1));
}

static void wake(struct mqtt *m)
{
	uint64_t one = 1;

	/* EAGAIN means the counter is already non-zero: the thread will wake. */
	if (write(m->wakefd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		log_warn("mqtt: cannot wake the session thread");
}

static void drain_wake(struct mqtt *m)
{
	uint64_t v;

	while (read(m->wakefd, &v, sizeof(v)) > 0)
		;
}

/* ---- callbacks (session thread, inside libmosquitto) ---- */

static void on_connect(struct mosquitto *mosq, void *obj, int rc, int flags,
		       const mosquitto_property *props)
{
	struct mqtt *m = obj;

	(void)mosq;
	(void)props;
	m->events++;
	if (rc != 0) {
		m->refused = true;
		snprintf(m->why, sizeof(m->why), "connection refused by the broker: %s",
			 m->protocol == 5 ? mosquitto_reason_string(rc) : mosquitto_connack_string(rc));
		return;
	}
	m->just_connected = true;
	m->session_present = flags & 1;
}

static void on_disconnect(struct mosquitto *mosq, void *obj, int rc,
			  const mosquitto_property *props)
{
	struct mqtt *m = obj;

	(void)mosq;
	(void)props;
	m->disconnect_rc = rc;
}

static void on_subscribe(struct mosquitto *mosq, void *obj, int mid, int count,
			 const int *granted, const mosquitto_property *props)
{
	struct mqtt *m = obj;

	(void)mosq;
	(void)props;
	m->events++;
	for (size_t i = 0; i < m->nsubs; i++) {
		struct sub *s = &m->subs[i];

		if (s->state != SUB_PENDING || s->mid != mid)
			continue;
		/* One filter per SUBSCRIBE: granted[0] is its answer. A refusal
		 * counts as acknowledged (nothing more will come for it). */
		if (count < 1 || granted[0] >= 0x80) {
			s->state = SUB_FAILED;
			s->reason = count < 1 ? MQTT_RC_UNSPECIFIED : granted[0];
			atomic_fetch_add_explicit(&m->sub_failures, 1, memory_order_relaxed);
		} else {
			s->state = SUB_OK;
		}
		m->subs_pending--;
		m->quiet_since_ms = clock_mono_ms();
		m->status_dirty = true;
		break;
	}
}

/*
** The hot path. Limits are checked first; the payload is scanned once, in
** libmosquitto's buffer, and handed to the sink from there (only its first
** bytes when it is refused).
*/
static void on_message(struct mosquitto *mosq, void *obj, const struct mosquitto_message *msg,
		       const mosquitto_property *props)
{
	struct mqtt *m = obj;
	size_t plen = msg->payloadlen > 0 ? (size_t)msg->payloadlen : 0;
	size_t tlen = strnlen(msg->topic, m->max_topic_len + 1);
	enum reject_reason why = REJECT_NONE;
	struct jscan_result js = { 0 };
	struct msg d;
	int64_t now_ns;

	(void)mosq;
	(void)props;
	m->events++;
	STAT_INC(received);
	/* The receive time: the clock read at the start of this stretch of
	 * reads (a clock read per message cost more than the rest of this
	 * function), made strictly increasing so that messages without a
	 * timestamp of their own keep their order of arrival. */
	now_ns = m->recv_clock_ns > m->last_recv_ns ? m->recv_clock_ns : m->last_recv_ns + 1;
	m->last_recv_ns = now_ns;
	if (tlen > m->max_topic_len) {
		why = REJECT_TOPIC_LEN;
		tlen = m->max_topic_len; /* keep a bounded prefix for the rejects list */
	} else if (plen > m->max_payload) {
		why = REJECT_TOO_LARGE;
	} else if (plen > 0) {
		jscan_payload(msg->payload, plen, m->ts_names, m->nts_names, &js);
		if (js.ts_bad)
			why = REJECT_BAD_TS;
		else if (m->format_json && !js.is_json)
			why = REJECT_NOT_JSON;
	}
	d = (struct msg){
		.topic = msg->topic, .topic_len = tlen,
		.payload = msg->payload ? msg->payload : "", /* never NULL, even empty */
		.payload_len = why == REJECT_NONE || plen < REJECTS_KEEP_BYTES ? plen
									: REJECTS_KEEP_BYTES,
		.ts_ns = js.ts_found ? js.ts_ns : now_ns,
		.recv_ms = now_ns / 1000000,
		.retained = msg->retain,
		.ts_from_payload = js.ts_found,
		.is_json = js.is_json,
	};
	m->sink.message(m->sink.ctx, &d, why, plen);
	m->delivered = true;
	/* Quiet is counted from the hand-over: the time the sink took is not
	 * a pause in the burst, the rest of which waits in the socket. */
	if (msg->retain && !m->local_synced) {
		m->quiet_since_ms = clock_mono_ms();
		m->retained_burst++;
	}
}

/* The end of a run of messages: the sink publishes what it applied. */
static void deliver_flush(struct mqtt *m)
{
	if (!m->delivered)
		return;
	m->delivered = false;
	m->sink.flush(m->sink.ctx);
}

static void link_changed(struct mqtt *m)
{
	if (m->sink.link)
		m->sink.link(m->sink.ctx);
}

/* Sample the bytes that wait in the socket: the ingest queue's depth. */
static void sample_backlog(struct mqtt *m, int sock, int64_t now)
{
	int n = 0;

	if (now - m->backlog_ms < MQTT_BACKLOG_EVERY_MS)
		return;
	m->backlog_ms = now;
	if (sock >= 0 && ioctl(sock, SIOCINQ, &n) == 0 && n >= 0)
		STAT_SET(ingest_queue_bytes, (uint64_t)n);
}

/* ---- session steps (session thread) ---- */

static int ensure_handle(struct mqtt *m, bool tls)
{
	struct mosquitto *mosq;
	int rc;

	if (m->mosq && m->mosq_tls == tls)
		return 0;
	/* TLS cannot be switched off on a handle: make a fresh one. */
	if (m->mosq) {
		mosquitto_destroy(m->mosq);
		m->mosq = NULL;
	}
	errno = 0;
	mosq = mosquitto_new(m->client_id, !m->persistent, m);
	if (!mosq) {
		snprintf(m->why, sizeof(m->why), "cannot create the MQTT client: %s",
			 strerror_r(errno ? errno : ENOMEM, (char[128]){ 0 }, 128));
		return errno ? -errno : -ENOMEM;
	}
	rc = mosquitto_int_option(mosq, MOSQ_OPT_PROTOCOL_VERSION,
				  m->protocol == 5 ? MQTT_PROTOCOL_V5 : MQTT_PROTOCOL_V311);
	if (rc == MOSQ_ERR_SUCCESS && tls) {
		if (m->tls_ca) {
			rc = mosquitto_tls_set(mosq, m->tls_ca, NULL, m->tls_cert, m->tls_key, NULL);
		} else {
			/* No CA file: the system's trust store. */
			rc = mosquitto_int_option(mosq, MOSQ_OPT_TLS_USE_OS_CERTS, 1);
			if (rc == MOSQ_ERR_SUCCESS && m->tls_cert)
				rc = mosquitto_tls_set(mosq, NULL, "/etc/ssl/certs", m->tls_cert,
						       m->tls_key, NULL);
		}
	}
	if (rc != MOSQ_ERR_SUCCESS) {
		int e = errno;

		mosq_reason(rc, e, m->why, sizeof(m->why));
		mosquitto_destroy(mosq);
		return mosq_errno(rc, e);
	}
	mosquitto_connect_v5_callback_set(mosq, on_connect);
	mosquitto_disconnect_v5_callback_set(mosq, on_disconnect);
	mosquitto_subscribe_v5_callback_set(mosq, on_subscribe);
	mosquitto_message_v5_callback_set(mosq, on_message);
	m->mosq = mosq;
	m->mosq_tls = tls;
	return 0;
}

/* Open the TCP (and TLS) connection and send CONNECT. The CONNACK comes later. */
static int session_connect(struct mqtt *m)
{
	const char *url = m->urls[m->url_idx];
	mosquitto_property *props = NULL;
	struct conf_url u;
	char *pw = NULL;
	int rc, e;

	m->why[0] = '\0';
	if (conf_parse_url(url, &u) < 0) {
		snprintf(m->why, sizeof(m->why), "not a broker URL");
		return -EINVAL;
	}
	rc = ensure_handle(m, u.tls);
	if (rc < 0)
		return rc;
	if (m->username || m->password_file) {
		/* Read at every connect so a rotated secret is picked up. */
		if (m->password_file) {
			rc = conf_read_secret(m->password_file, &pw);
			if (rc < 0) {
				char tmp[128];

				snprintf(m->why, sizeof(m->why), "cannot read password_file: %s",
					 strerror_r(-rc, tmp, sizeof(tmp)));
				return rc;
			}
		}
		rc = mosquitto_username_pw_set(m->mosq, m->username, pw);
		if (pw) {
			explicit_bzero(pw, strlen(pw));
			free(pw);
		}
		if (rc != MOSQ_ERR_SUCCESS) {
			mosq_reason(rc, errno, m->why, sizeof(m->why));
			return mosq_errno(rc, errno);
		}
	}
	if (m->protocol == 5 && m->persistent) {
		/* Without a session expiry an MQTT 5 broker ends the session at
		 * disconnect, whatever clean_start says. */
		rc = mosquitto_property_add_int32(&props, MQTT_PROP_SESSION_EXPIRY_INTERVAL,
						  m->session_expiry_s);
		if (rc != MOSQ_ERR_SUCCESS) {
			mosq_reason(rc, errno, m->why, sizeof(m->why));
			return mosq_errno(rc, errno);
		}
	}
	m->refused = false;
	m->just_connected = false;
	m->disconnect_rc = -1;
	errno = 0;
	rc = mosquitto_connect_bind_v5(m->mosq, u.host, u.port, m->keepalive_s, NULL, props);
	e = errno;
	mosquitto_property_free_all(&props);
	if (rc != MOSQ_ERR_SUCCESS) {
		mosq_reason(rc, e, m->why, sizeof(m->why));
		return mosq_errno(rc, e);
	}
	return 0;
}

static void attempt_failed(struct mqtt *m, int64_t now)
{
	const char *url = m->urls[m->url_idx];
	int64_t delay;

	m->failed_attempts++;
	m->link = LINK_IDLE;
	if (!m->why[0])
		snprintf(m->why, sizeof(m->why), "unknown error");
	/* A dead broker must not flood the log: a reason is logged when it
	 * changes, and an unchanged one is repeated only every few minutes. */
	if (strcmp(m->why, m->fail_logged) != 0) {
		log_warnx("mqtt: cannot connect to %s: %s; retrying with backoff", url, m->why);
		snprintf(m->fail_logged, sizeof(m->fail_logged), "%s", m->why);
		m->fail_logged_ms = now;
	} else if (now - m->fail_logged_ms >= MQTT_FAIL_REMIND_MS) {
		log_warnx("mqtt: still cannot connect after %llu attempts; last: %s: %s",
			  (unsigned long long)m->failed_attempts, url, m->why);
		m->fail_logged_ms = now;
	}
	m->url_idx = (m->url_idx + 1) % m->nurls;
	if (m->url_idx == 0 && m->fail_round < 32)
		m->fail_round++;
	delay = backoff_ms(m);
	m->next_attempt_ms = now + delay;
	set_status(m, "cannot connect to %s: %s; next attempt in %lld ms", url, m->why,
		   (long long)delay);
}

static void subscribe_all(struct mqtt *m)
{
	m->subs_pending = 0;
	for (size_t i = 0; i < m->nsubs; i++) {
		struct sub *s = &m->subs[i];
		int rc = mosquitto_subscribe_v5(m->mosq, &s->mid, s->filter, m->qos, 0, NULL);

		if (rc == MOSQ_ERR_SUCCESS) {
			s->state = SUB_PENDING;
			m->subs_pending++;
		} else {
			/* Not sendable (bad filter, too large): as good as refused. */
			s->state = SUB_FAILED;
			s->reason = rc;
			s->mid = -1;
			atomic_fetch_add_explicit(&m->sub_failures, 1, memory_order_relaxed);
		}
	}
}

static void went_up(struct mqtt *m, int64_t now)
{
	const char *url = m->urls[m->url_idx];

	m->just_connected = false;
	m->link = LINK_UP;
	m->busy = false;     /* a new socket: its mark is the default */
	m->lowat_fd = -1;
	m->up_ms = now;
	m->quiet_since_ms = now;
	m->retained_burst = 0;
	m->local_synced = false;
	atomic_store(&m->connected, true);
	STAT_SET(broker_connected, 1);
	link_changed(m);
	if (m->ever_connected)
		STAT_INC(reconnects);
	m->ever_connected = true;
	if (m->failed_attempts)
		log_info("mqtt: connected to %s (MQTT %s, %s session%s) after %llu failed attempt(s)",
			 url, m->protocol == 5 ? "5" : "3.1.1", m->persistent ? "persistent" : "clean",
			 m->session_present ? ", resumed" : "",
			 (unsigned long long)m->failed_attempts);
	else
		log_info("mqtt: connected to %s (MQTT %s, %s session%s)", url,
			 m->protocol == 5 ? "5" : "3.1.1", m->persistent ? "persistent" : "clean",
			 m->session_present ? ", resumed" : "");
	m->failed_attempts = 0;
	m->fail_logged[0] = '\0';
	/* Resubscribe even when the broker resumed the session: the SUBACKs
	 * and the retained messages after them are how we know we are synced. */
	subscribe_all(m);
	m->status_dirty = true;
}

static void went_down(struct mqtt *m, int rc, int e, int64_t now)
{
	const char *url = m->urls[m->url_idx];
	bool stable = m->local_synced || now - m->up_ms >= 10000;

	/* An MQTT 5 broker says why it hangs up (DISCONNECT reason code). */
	if (m->protocol == 5 && m->disconnect_rc >= 0x80)
		snprintf(m->why, sizeof(m->why), "disconnected by the broker: %s",
			 mosquitto_reason_string(m->disconnect_rc));
	else
		mosq_reason(rc ? rc : MOSQ_ERR_CONN_LOST, e, m->why, sizeof(m->why));
	m->link = LINK_IDLE;
	m->local_synced = false;
	atomic_store(&m->synced, false);
	atomic_store(&m->connected, false);
	STAT_SET(synced, 0);
	STAT_SET(broker_connected, 0);
	STAT_SET(ingest_queue_bytes, 0);
	link_changed(m);
	log_warnx("mqtt: connection to %s lost: %s; reconnecting", url, m->why);
	snprintf(m->fail_logged, sizeof(m->fail_logged), "%s", m->why);
	m->fail_logged_ms = now;
	/* A link that held (synced, or up a while) restarts the backoff; one
	 * that flaps keeps growing it. The first retry goes to the same URL. */
	if (stable)
		m->fail_round = 0;
	else if (m->fail_round < 32)
		m->fail_round++;
	m->next_attempt_ms = now + backoff_ms(m);
	set_status(m, "connection to %s lost: %s; reconnecting", url, m->why);
}

static void update_status(struct mqtt *m)
{
	const char *url = m->urls[m->url_idx];
	char failed[200] = "";
	size_t nfailed = 0, off = 0;

	m->status_dirty = false;
	for (size_t i = 0; i < m->nsubs; i++) {
		struct sub *s = &m->subs[i];

		if (s->state == SUB_FAILED) {
			const char *r = s->mid < 0 ? mosquitto_strerror(s->reason)
						   : mosquitto_reason_string(s->reason);

			if (s->logged != SUB_FAILED || s->logged_reason != s->reason)
				log_warnx("mqtt: subscription to '%s' refused: %s; filter skipped",
					  s->filter, r);
			if (off < sizeof(failed)) {
				int w = snprintf(failed + off, sizeof(failed) - off, "%s'%s' (%s)",
						 nfailed ? ", " : "", s->filter, r);
				off += w > 0 ? (size_t)w : 0;
			}
			nfailed++;
		} else if (s->state == SUB_OK && s->logged == SUB_FAILED) {
			log_info("mqtt: subscription to '%s' accepted", s->filter);
		}
		if (s->state != SUB_PENDING) {
			s->logged = s->state;
			s->logged_reason = s->reason;
		}
	}
	if (m->link != LINK_UP)
		return;
	if (m->subs_pending)
		set_status(m, "waiting for subscription acknowledgements from %s (%zu of %zu)",
			   url, m->nsubs - m->subs_pending, m->nsubs);
	else if (!m->local_synced)
		set_status(m, "receiving retained messages from %s", url);
	else if (nfailed)
		set_status(m, "synced with %s; %zu subscription(s) refused: %s", url, nfailed, failed);
	else
		set_status(m, "synced with %s", url);
}

/* Send what waits in the outbox. Session thread, link up. */
static void flush_outbox(struct mqtt *m)
{
	size_t kept = 0;

	pthread_mutex_lock(&m->mu);
	for (size_t i = 0; i < m->noutbox; i++) {
		struct outmsg *o = &m->outbox[i];
		int rc = mosquitto_publish(m->mosq, NULL, o->topic, (int)o->len, o->payload, 1, true);

		if (rc == MOSQ_ERR_SUCCESS || rc == MOSQ_ERR_INVAL || rc == MOSQ_ERR_OVERSIZE_PACKET ||
		    rc == MOSQ_ERR_PAYLOAD_SIZE || rc == MOSQ_ERR_MALFORMED_UTF8) {
			if (rc != MOSQ_ERR_SUCCESS)
				log_warnx("mqtt: cannot publish to '%s': %s; message dropped",
					  o->topic, mosquitto_strerror(rc));
			free(o->topic);
			free(o->payload);
			continue;
		}
		m->outbox[kept++] = *o; /* not connected after all: keep for later */
	}
	m->noutbox = kept;
	pthread_mutex_unlock(&m->mu);
}

static void check_sync(struct mqtt *m, int64_t now)
{
	if (m->link != LINK_UP || m->local_synced || m->subs_pending)
		return;
	if (now - m->quiet_since_ms < m->sync_quiet_ms)
		return;
	m->local_synced = true;
	m->fail_round = 0;
	atomic_fetch_add(&m->epoch, 1);
	atomic_store(&m->synced, true);
	STAT_SET(synced, 1);
	link_changed(m);
	log_info("mqtt: synced with %s: %zu subscription(s), %llu retained message(s) in %lld ms",
		 m->urls[m->url_idx], m->nsubs, (unsigned long long)m->retained_burst,
		 (long long)(now - m->up_ms));
	m->status_dirty = true;
}

/* Raise or restore the socket's low-water mark (see "Wake-ups" above). A
 * failure only costs wake-ups: the mark stays as it was. */
static void set_lowat(struct mqtt *m, int sock, bool busy)
{
	int v = busy ? MQTT_BUSY_LOWAT : 1;

	if (setsockopt(sock, SOL_SOCKET, SO_RCVLOWAT, &v, sizeof(v)) == 0)
		m->lowat_fd = busy ? sock : -1;
}

/* One turn while a socket is open: poll, read bursts, write, keepalive, timers. */
static void session_turn(struct mqtt *m)
{
	struct pollfd pfd[2];
	int64_t now = clock_mono_ms();
	int64_t timeout = MQTT_IDLE_TICK_MS;
	int sock = mosquitto_socket(m->mosq);
	int rc = MOSQ_ERR_SUCCESS, e = 0;

	if (m->link == LINK_CONNECTING) {
		int64_t left = m->attempt_ms + m->connack_timeout_ms - now;
		timeout = left < timeout ? left : timeout;
	} else if (!m->local_synced && !m->subs_pending) {
		int64_t left = m->quiet_since_ms + m->sync_quiet_ms - now;
		timeout = left < timeout ? left : timeout;
	}
	if (timeout < 0)
		timeout = 0;
	if (sock >= 0 && m->link == LINK_UP && m->busy != (m->lowat_fd == sock))
		set_lowat(m, sock, m->busy);
	if (m->lowat_fd == sock && timeout > MQTT_BUSY_WAIT_MS)
		timeout = MQTT_BUSY_WAIT_MS;
	pfd[0] = (struct pollfd){ .fd = sock, .events = POLLIN };
	if (mosquitto_want_write(m->mosq))
		pfd[0].events |= POLLOUT;
	pfd[1] = (struct pollfd){ .fd = m->wakefd, .events = POLLIN };
	if (poll(pfd, 2, (int)timeout) < 0 && errno != EINTR) {
		log_warn("mqtt: poll");
		pfd[0].revents = pfd[1].revents = 0;
	}
	if (pfd[1].revents)
		drain_wake(m);
	if ((pfd[0].revents & (POLLIN | POLLERR | POLLHUP)) || m->lowat_fd == sock) {
		uint64_t first = m->events;

		/* Keep reading while packets keep completing: one poll per
		 * burst. A call that completes nothing (partial packet, or
		 * EAGAIN) sends us back to poll. With the mark raised, a
		 * timeout reads too: fewer bytes than the mark may wait. */
		for (int i = 0; i < MQTT_DRAIN_MAX && !atomic_load_explicit(&m->stop, memory_order_relaxed); i++) {
			uint64_t before = m->events;

			if (i % MQTT_CLOCK_EVERY == 0)
				m->recv_clock_ns = clock_wall_ns();
			errno = 0;
			rc = mosquitto_loop_read(m->mosq, 1);
			e = errno;
			if (rc != MOSQ_ERR_SUCCESS || m->events == before || m->refused)
				break;
		}
		deliver_flush(m);
		m->busy = m->events - first >= MQTT_BUSY_PACKETS;
	}
	if (rc == MOSQ_ERR_SUCCESS && mosquitto_socket(m->mosq) >= 0 && mosquitto_want_write(m->mosq)) {
		errno = 0;
		rc = mosquitto_loop_write(m->mosq, 1);
		e = errno;
	}
	if (rc == MOSQ_ERR_SUCCESS && mosquitto_socket(m->mosq) >= 0) {
		errno = 0;
		rc = mosquitto_loop_misc(m->mosq);
		e = errno;
	}
	now = clock_mono_ms();
	sample_backlog(m, mosquitto_socket(m->mosq), now);
	if (m->just_connected && mosquitto_socket(m->mosq) >= 0)
		went_up(m, now);
	if (rc != MOSQ_ERR_SUCCESS || mosquitto_socket(m->mosq) < 0 || m->refused) {
		if (m->link == LINK_UP) {
			went_down(m, rc, e, now);
		} else {
			if (!m->refused)
				mosq_reason(rc ? rc : MOSQ_ERR_CONN_LOST, e, m->why, sizeof(m->why));
			attempt_failed(m, now);
		}
		return;
	}
	if (m->link == LINK_CONNECTING && now - m->attempt_ms >= m->connack_timeout_ms) {
		snprintf(m->why, sizeof(m->why), "no CONNACK within %lld ms",
			 (long long)m->connack_timeout_ms);
		/* The next connect (or mqtt_free) closes the half-open socket. */
		attempt_failed(m, now);
		return;
	}
	if (m->link == LINK_UP) {
		check_sync(m, now);
		pthread_mutex_lock(&m->mu);
		bool pending = m->noutbox > 0;
		pthread_mutex_unlock(&m->mu);
		if (pending)
			flush_outbox(m);
	}
	if (m->status_dirty)
		update_status(m);
}

static void *session_main(void *arg)
{
	struct mqtt *m = arg;

	while (!atomic_load(&m->stop)) {
		int64_t now = clock_mono_ms();

		if (m->link != LINK_IDLE) {
			session_turn(m);
			continue;
		}
		if (now < m->next_attempt_ms) {
			struct pollfd pfd = { .fd = m->wakefd, .events = POLLIN };
			int64_t left = m->next_attempt_ms - now;

			if (poll(&pfd, 1, (int)(left > 60000 ? 60000 : left)) > 0)
				drain_wake(m);
			continue;
		}
		if (m->failed_attempts == 0)
			set_status(m, "connecting to %s", m->urls[m->url_idx]);
		m->attempt_ms = now;
		if (session_connect(m) < 0) {
			attempt_failed(m, clock_mono_ms());
			continue;
		}
		m->link = LINK_CONNECTING;
	}
	if (m->mosq && m->link == LINK_UP) {
		/* Say goodbye, best effort: the socket is non-blocking. */
		if (mosquitto_disconnect_v5(m->mosq, 0, NULL) == MOSQ_ERR_SUCCESS)
			mosquitto_loop_write(m->mosq, 1);
	}
	/* No sink call from here: a thread that mqtt_stop gave up on (stuck
	 * in a blocking connect) gets here after its caller freed the sink.
	 * Every run of messages was flushed in session_turn already. */
	atomic_store(&m->synced, false);
	atomic_store(&m->connected, false);
	STAT_SET(synced, 0);
	STAT_SET(broker_connected, 0);
	STAT_SET(ingest_queue_bytes, 0);
	set_status(m, "stopped");
	return NULL;
}

/* ---- public ---- */

static int dup_str(char **dst, const char *src)
{
	*dst = NULL;
	if (!src || !*src)
		return 0;
	*dst = strdup(src);
	return *dst ? 0 : -ENOMEM;
}

int mqtt_new(const struct conf *c, struct mqtt **ret, char *err, size_t errlen)
{
	struct mqtt *m;
	int rc = -ENOMEM;

	if (!c || !ret || c->nurls == 0 || c->nurls > CONF_MAX_URLS) {
		snprintf(err, errlen, "no broker URL");
		return -EINVAL;
	}
	if (c->session == CONF_SESSION_PERSISTENT && (!c->client_id || !*c->client_id)) {
		snprintf(err, errlen, "a persistent session needs a client_id");
		return -EINVAL;
	}
	for (size_t i = 0; i < c->nurls; i++) {
		struct conf_url u;

		if (conf_parse_url(c->urls[i], &u) < 0) {
			snprintf(err, errlen, "not a broker URL: %s", c->urls[i]);
			return -EINVAL;
		}
	}
	pthread_once(&lib_once, lib_init);
	m = calloc(1, sizeof(*m));
	if (!m)
		goto nomem;
	m->wakefd = -1;
	if (pthread_mutex_init(&m->mu, NULL) != 0) {
		free(m);
		goto nomem;
	}
	m->outbox = calloc(MQTT_OUTBOX_MAX, sizeof(*m->outbox));
	m->subs = calloc(c->nfilters ? c->nfilters : 1, sizeof(*m->subs));
	if (!m->outbox || !m->subs)
		goto fail;
	for (size_t i = 0; i < c->nurls; i++)
		if (dup_str(&m->urls[i], c->urls[i]) < 0)
			goto fail;
	m->nurls = c->nurls;
	for (size_t i = 0; i < c->nfilters; i++) {
		if (dup_str(&m->subs[i].filter, c->filters[i]) < 0 || !m->subs[i].filter)
			goto fail;
		m->nsubs++;
	}
	if (dup_str(&m->client_id, c->client_id) < 0 || dup_str(&m->username, c->username) < 0 ||
	    dup_str(&m->password_file, c->password_file) < 0 ||
	    dup_str(&m->tls_ca, c->tls_ca_file) < 0 || dup_str(&m->tls_cert, c->tls_cert_file) < 0 ||
	    dup_str(&m->tls_key, c->tls_key_file) < 0 ||
	    dup_str(&m->ts_field, c->timestamp_field) < 0)
		goto fail;
	m->protocol = c->protocol == 311 ? 311 : 5; /* auto offers 5 */
	m->qos = c->qos == 1 ? 1 : 0;
	m->persistent = c->session == CONF_SESSION_PERSISTENT;
	/* libmosquitto refuses a keepalive under 5 s. */
	m->keepalive_s = (int)(c->keepalive_ms / 1000);
	if (m->keepalive_s < 5)
		m->keepalive_s = 5;
	if (m->keepalive_s > 65535)
		m->keepalive_s = 65535;
	m->session_expiry_s = c->session_expiry_ms / 1000 > UINT32_MAX ? UINT32_MAX
				: (uint32_t)(c->session_expiry_ms / 1000);
	m->reconnect_min_ms = c->reconnect_min_ms > 0 ? c->reconnect_min_ms : 250;
	m->reconnect_max_ms = c->reconnect_max_ms >= m->reconnect_min_ms ? c->reconnect_max_ms
									 : m->reconnect_min_ms;
	m->sync_quiet_ms = c->sync_quiet_ms > 0 ? c->sync_quiet_ms : 200;
	m->max_payload = c->max_payload > 0 ? (size_t)c->max_payload : SIZE_MAX / 4;
	m->max_topic_len = c->max_topic_len > 0 ? (size_t)c->max_topic_len : 65535;
	m->format_json = c->format == CONF_FORMAT_JSON;
	if (m->ts_field)
		m->ts_names[m->nts_names++] = m->ts_field;
	if (!m->ts_field || strcmp(m->ts_field, "timestamp") != 0)
		m->ts_names[m->nts_names++] = "timestamp";
	if (!m->ts_field || strcmp(m->ts_field, "time") != 0)
		m->ts_names[m->nts_names++] = "time";
	m->connack_timeout_ms = (int64_t)m->keepalive_s * 1000;
	if (m->connack_timeout_ms > 30000)
		m->connack_timeout_ms = 30000;
	m->lowat_fd = -1;
	m->disconnect_rc = -1;
	m->rng = (uint64_t)clock_wall_ns() ^ ((uint64_t)getpid() << 32) ^ (uintptr_t)m;
	if (!m->rng)
		m->rng = 0x9e3779b97f4a7c15ULL;
	atomic_init(&m->stop, false);
	atomic_init(&m->connected, false);
	atomic_init(&m->synced, false);
	atomic_init(&m->epoch, 0);
	atomic_init(&m->sub_failures, 0);
	m->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (m->wakefd < 0) {
		rc = -errno;
		snprintf(err, errlen, "eventfd: %s", strerror_r(errno, (char[128]){ 0 }, 128));
		mqtt_free(m);
		return rc;
	}
	snprintf(m->status, sizeof(m->status), "not started");
	*ret = m;
	return 0;

fail:
	mqtt_free(m);
nomem:
	snprintf(err, errlen, "out of memory");
	return rc;
}

int mqtt_start(struct mqtt *m, const struct mqtt_sink *sink)
{
	int rc;

	if (m->started)
		return -EALREADY;
	if (!sink || !sink->message || !sink->flush)
		return -EINVAL;
	m->sink = *sink;
	set_status(m, "connecting to %s", m->urls[0]);
	rc = pthread_create(&m->thread, NULL, session_main, m);
	if (rc != 0)
		return -rc;
	m->started = true;
	return 0;
}

void mqtt_stop(struct mqtt *m)
{
	struct timespec dl;
	int rc;

	if (!m || !m->started || m->joined || m->abandoned)
		return;
	atomic_store(&m->stop, true);
	wake(m);
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += MQTT_STOP_JOIN_MS / 1000;
	rc = pthread_timedjoin_np(m->thread, NULL, &dl);
	if (rc == 0) {
		m->joined = true;
		return;
	}
	/* Only a blocking connect (DNS, or a SYN to a host that drops it) can
	 * hold the thread this long. It touches nothing of the caller's once
	 * it returns and sees stop; mqtt_free then leaves m to it. */
	log_warnx("mqtt: session thread busy in a connect attempt; not waiting for it");
	pthread_detach(m->thread);
	m->abandoned = true;
}

void mqtt_free(struct mqtt *m)
{
	if (!m)
		return;
	if (m->started && !m->joined)
		mqtt_stop(m);
	if (m->abandoned)
		return; /* still in use by a detached thread; the process is exiting */
	if (m->mosq)
		mosquitto_destroy(m->mosq);
	for (size_t i = 0; i < m->noutbox; i++) {
		free(m->outbox[i].topic);
		free(m->outbox[i].payload);
	}
	free(m->outbox);
	for (size_t i = 0; i < m->nsubs; i++)
		free(m->subs[i].filter);
	free(m->subs);
	for (size_t i = 0; i < m->nurls; i++)
		free(m->urls[i]);
	free(m->client_id);
	free(m->username);
	free(m->password_file);
	free(m->tls_ca);
	free(m->tls_cert);
	free(m->tls_key);
	free(m->ts_field);
	if (m->wakefd >= 0)
		close(m->wakefd);
	pthread_mutex_destroy(&m->mu);
	free(m);
}

bool mqtt_connected(struct mqtt *m)
{
	return atomic_load(&m->connected);
}

bool mqtt_synced(struct mqtt *m, uint64_t *ret_epoch)
{
	bool s = atomic_load(&m->synced);

	if (ret_epoch)
		*ret_epoch = atomic_load(&m->epoch);
	return s;
}

void mqtt_status(struct mqtt *m, char *buf, size_t n)
{
	if (!n)
		return;
	pthread_mutex_lock(&m->mu);
	snprintf(buf, n, "%s", m->status);
	pthread_mutex_unlock(&m->mu);
}

uint64_t mqtt_subscribe_failures(struct mqtt *m)
{
	return atomic_load_explicit(&m->sub_failures, memory_order_relaxed);
}

int mqtt_publish_retained(struct mqtt *m, const char *topic, const void *payload, size_t len)
{
	struct outmsg *slot = NULL;
	void *copy = NULL;
	char *tcopy = NULL;

	if (!topic || !*topic || (len && !payload))
		return -EINVAL;
	if (mosquitto_pub_topic_check2(topic, strlen(topic)) != MOSQ_ERR_SUCCESS)
		return -EINVAL;
	if (len > 268435455 - strlen(topic) - 16)
		return -EMSGSIZE;
	copy = malloc(len ? len : 1);
	if (!copy)
		return -ENOMEM;
	if (len)
		memcpy(copy, payload, len);
	pthread_mutex_lock(&m->mu);
	/* Only the latest value per topic matters, with one exception: a
	 * value followed by a clear (an empty payload) keeps both, in order, so
	 * that live subscribers see e.g. an alert's "resolved" before the
	 * broker forgets it. */
	for (size_t i = m->noutbox; i-- > 0;) {
		if (strcmp(m->outbox[i].topic, topic) == 0) {
			if (len > 0 || m->outbox[i].len == 0)
				slot = &m->outbox[i];
			break;
		}
	}
	if (!slot) {
		if (m->noutbox == MQTT_OUTBOX_MAX) {
			pthread_mutex_unlock(&m->mu);
			free(copy);
			return -ENOBUFS;
		}
		tcopy = strdup(topic);
		if (!tcopy) {
			pthread_mutex_unlock(&m->mu);
			free(copy);
			return -ENOMEM;
		}
		slot = &m->outbox[m->noutbox++];
		slot->topic = tcopy;
		slot->payload = NULL;
	}
	free(slot->payload);
	slot->payload = copy;
	slot->len = len;
	pthread_mutex_unlock(&m->mu);
	wake(m);
	return 0;
}
