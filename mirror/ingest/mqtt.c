/* SPDX-License-Identifier: MIT */
/* mqtt.c: the MQTT session thread: connect with backoff, subscribe, track the retained sync, hand messages to their decoder. */
#include "mirror/ingest/mqtt.h"
#include "mirror/state/intents.h"

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
#include "common/topic.h"
#include "mirror/ingest/decode_json.h"
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
** Delivery. Each message goes from on_message to the first decoder that
** claims its topic (decode.h; JSON last) and its updates straight to the
** sink (the mirror's apply), in libmosquitto's buffer: no copy, no
** allocation, no queue and no other thread to wake. One wake-up's run of
** messages ends with sink.flush. The kernel's receive buffer is the ingest queue: while the
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
#define MQTT_DECODER_TICK_MS 1000  /* decoders' timers (decode.h, tick) */

enum sub_state { SUB_PENDING, SUB_OK, SUB_FAILED };

struct sub {
	char *filter;
	bool exact;            /* no wildcard: a topic ([subscribe] retained, or a plain filter) */
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
	struct intents *intents;   /* the intent outbox, NULL none (session thread after start) */
	bool drop_handle;          /* intents were in flight at a lost link: a fresh handle */
	/* Configuration, copied: the caller's conf may be freed or reloaded. */
	char *urls[CONF_MAX_URLS];
	size_t nurls;
	char *client_id;           /* NULL: the broker or library picks one */
	int proto_conf;            /* as configured: 0 (auto: offer 5, fall back to 3.1.1), 5 or 311 */
	int qos;
	bool persistent;
	int keepalive_s;
	char *username, *password_file;
	char *tls_ca, *tls_cert, *tls_key;
	uint32_t session_expiry_s;
	int64_t reconnect_min_ms, reconnect_max_ms, sync_quiet_ms;
	struct sub *subs;
	size_t nsubs;
	size_t nexact;             /* subs that are exact topics... */
	const char **exact_sorted; /* ... their topics, sorted (strcmp) */
	bool *exact_seen;          /* per exact topic: a retained message came in this burst */
	size_t max_payload, max_topic_len;
	int64_t connack_timeout_ms;

	/* Decoders in the order they are asked; the JSON one last. */
	struct decoder *dec[MQTT_MAX_DECODERS + 1];
	size_t ndec;
	struct clock_src clk;      /* every reading of time below goes through it */
	/* Our own retained presence (mqtt_set_presence): NULL topic = none. */
	char *presence_topic;
	mqtt_presence_fn presence;
	void *presence_ctx;
	int64_t presence_ts_ms;    /* wall time of the current connect attempt */
	struct mqtt_sink sink;
	struct decode_out dout;    /* the sink's message(), and publish back through us */
	struct mosquitto *mosq;
	bool mosq_tls;
	int wakefd;
	pthread_t thread;
	bool started, joined, abandoned;
	_Atomic bool stop;
	_Atomic uint64_t turns;    /* session loop iterations begun (mqtt_wait_turn) */

	/* Session state: the session thread only. */
	pthread_t self;            /* the session thread, as it knows itself... */
	_Atomic bool in_thread;    /* ... once it runs */
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
	int refused_rc;            /* its reason code (3.1.1 return code or MQTT 5 reason) */
	bool got_connack;          /* a CONNACK arrived on this attempt */
	int protocol;              /* offered on this attempt (and the link's): 5 or 311 */
	bool fallback_try;         /* auto: this attempt is the 3.1.1 retry after MQTT 5 failed */
	int url_proto[CONF_MAX_URLS];   /* auto: the version a URL answered, 0 not known */
	char url_note[CONF_MAX_URLS][96]; /* auto: why a URL speaks 3.1.1 ("" when 5) */
	bool url_fallback_logged[CONF_MAX_URLS]; /* the retry with 3.1.1 was logged (once per outage) */
	bool session_present;
	int disconnect_rc;         /* reason from on_disconnect, -1 = none */
	size_t subs_pending;
	int64_t attempt_ms;        /* monotonic: start of the current attempt */
	int64_t up_ms;             /* monotonic: CONNACK received */
	unsigned quick_drops;      /* links in a row lost within QUICK_DROP_MS of the CONNACK */
	int64_t quiet_since_ms;    /* monotonic: last SUBACK or retained message */
	int64_t next_attempt_ms;
	uint64_t retained_burst;
	uint64_t retained_exact;   /* of which on a topic subscribed exactly... */
	uint64_t retained_exact_dups; /* ... and again (a wildcard subscription matched it too) */
	uint64_t failed_attempts;
	int64_t fail_logged_ms;
	char why[200];             /* the current failure reason */
	char fail_logged[200];     /* the failure reason last logged */
	bool status_dirty;
	bool local_synced;
	unsigned turn_pubs;        /* decoder publications in this turn */
	uint64_t pub_dropped;      /* decoder publications refused (-ENOBUFS) so far */
	uint64_t pub_dropped_logged;
	int64_t pub_logged_ms;
	int64_t tick_ms;           /* monotonic: the decoders' last tick */

	/* Shared with other threads. */
	_Atomic bool connected;
	_Atomic bool synced;
	_Atomic uint64_t epoch;
	_Atomic uint64_t sub_failures;
	pthread_mutex_t mu;        /* status, outbox */
	char status[512];
	struct outmsg *outbox;
	size_t noutbox;
};

static pthread_once_t lib_once = PTHREAD_ONCE_INIT;

static inline int64_t now_ms(struct mqtt *m)
{
	return m->clk.mono_ms(m->clk.ctx);
}

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

/* Is rc a CONNACK's "this protocol version is not spoken here"? */
static bool refused_version(int protocol, int rc)
{
	return protocol == 5 ? rc == MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION
			     : rc == CONNACK_REFUSED_PROTOCOL_VERSION;
}

/*
** The cause of a refused CONNECT, named for an operator, with the setting
** to look at. rc is the 3.1.1 return code or the MQTT 5 reason code (for a
** 3.1.1-only broker answering an MQTT 5 CONNECT libmosquitto reports 0x84).
*/
static void connack_cause(int protocol, int rc, char *buf, size_t n)
{
	const char *what = NULL;

	if (refused_version(protocol, rc)) {
		what = protocol == 5 ? "unsupported protocol version: the broker does not speak MQTT 5 "
				       "(set [broker] protocol = auto or 3.1.1)"
				     : "unacceptable protocol version: the broker does not speak MQTT 3.1.1";
	} else if (protocol == 5) {
		switch (rc) {
		case MQTT_RC_CLIENTID_NOT_VALID:
			what = "client id rejected (check [broker] client_id)";
			break;
		case MQTT_RC_BAD_USERNAME_OR_PASSWORD:
			what = "bad user name or password (check [broker] username and password_file)";
			break;
		case MQTT_RC_NOT_AUTHORIZED:
			what = "not authorised (check [broker] username and password_file, "
			       "and the broker's ACL)";
			break;
		case MQTT_RC_SERVER_UNAVAILABLE:
			what = "server unavailable";
			break;
		case MQTT_RC_SERVER_BUSY:
			what = "server busy";
			break;
		case MQTT_RC_BANNED:
			what = "this client is banned";
			break;
		case MQTT_RC_BAD_AUTHENTICATION_METHOD:
			what = "bad authentication method";
			break;
		default:
			break;
		}
	} else {
		switch (rc) {
		case CONNACK_REFUSED_IDENTIFIER_REJECTED:
			what = "client id rejected (check [broker] client_id)";
			break;
		case CONNACK_REFUSED_SERVER_UNAVAILABLE:
			what = "server unavailable";
			break;
		case CONNACK_REFUSED_BAD_USERNAME_PASSWORD:
			what = "bad user name or password (check [broker] username and password_file)";
			break;
		case CONNACK_REFUSED_NOT_AUTHORIZED:
			what = "not authorised (check [broker] username and password_file, "
			       "and the broker's ACL)";
			break;
		default:
			break;
		}
	}
	if (what)
		snprintf(buf, n, "the broker refused the connection: %s", what);
	else
		snprintf(buf, n, "the broker refused the connection: %s (code %d)",
			 protocol == 5 ? mosquitto_reason_string(rc) : mosquitto_connack_string(rc), rc);
}

static const char *proto_name(int protocol)
{
	return protocol == 5 ? "5" : "3.1.1";
}

/* ---- callbacks (session thread, inside libmosquitto) ---- */

static void on_connect(struct mosquitto *mosq, void *obj, int rc, int flags,
		       const mosquitto_property *props)
{
	struct mqtt *m = obj;

	(void)mosq;
	(void)props;
	m->events++;
	m->got_connack = true;
	if (rc != 0) {
		m->refused = true;
		m->refused_rc = rc;
		connack_cause(m->protocol, rc, m->why, sizeof(m->why));
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
		m->quiet_since_ms = now_ms(m);
		m->status_dirty = true;
		break;
	}
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* A retained message of the burst on one of the exact topics? (A bsearch.) */
static void count_exact(struct mqtt *m, const char *topic)
{
	const char **p = bsearch(&topic, m->exact_sorted, m->nexact, sizeof(*m->exact_sorted),
				 cmp_str);

	if (!p)
		return;
	m->retained_exact++;
	if (m->exact_seen[p - m->exact_sorted])
		m->retained_exact_dups++;
	m->exact_seen[p - m->exact_sorted] = true;
}

/*
** Did the broker give retained messages to the exact subscriptions only?
** A broker that serves wildcards too sends a topic matched by both kinds
** once per subscription; so: no message off the exact topics, none twice,
** and at least one that a wildcard filter matches (else no evidence).
*/
static bool exact_only_bootstrap(const struct mqtt *m)
{
	if (!m->nexact || m->nexact == m->nsubs || !m->retained_exact ||
	    m->retained_burst != m->retained_exact || m->retained_exact_dups)
		return false;
	for (size_t i = 0; i < m->nexact; i++) {
		if (!m->exact_seen[i])
			continue;
		for (size_t j = 0; j < m->nsubs; j++)
			if (!m->subs[j].exact &&
			    topic_matches(m->subs[j].filter, m->exact_sorted[i], strlen(m->exact_sorted[i])))
				return true;
	}
	return false;
}

/* The first decoder that claims the topic; the last (JSON) takes the rest. */
static struct decoder *pick_decoder(const struct mqtt *m, const char *topic, size_t len)
{
	for (size_t i = 0; i + 1 < m->ndec; i++)
		if (m->dec[i]->ops->claims(m->dec[i], topic, len))
			return m->dec[i];
	return m->dec[m->ndec - 1];
}

/*
** The hot path. The whole-message limits are checked first; then the
** message goes, in libmosquitto's buffer, to its decoder, which hands
** each update to the sink (only the first bytes of a refused one).
*/
static void on_message(struct mosquitto *mosq, void *obj, const struct mosquitto_message *msg,
		       const mosquitto_property *props)
{
	struct mqtt *m = obj;
	size_t plen = msg->payloadlen > 0 ? (size_t)msg->payloadlen : 0;
	size_t tlen = strnlen(msg->topic, m->max_topic_len + 1);
	const void *payload = msg->payload ? msg->payload : ""; /* never NULL, even empty */
	enum reject_reason why = REJECT_NONE;
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
	}
	if (why == REJECT_NONE) {
		struct decode_in in = {
			.topic = msg->topic, .topic_len = tlen,
			.payload = payload, .payload_len = plen,
			.recv_ns = now_ns, .retained = msg->retain,
		};
		struct decoder *d = pick_decoder(m, msg->topic, tlen);

		d->ops->decode(d, &in, &m->dout);
	} else {
		struct msg d = {
			.topic = msg->topic, .topic_len = tlen,
			.payload = payload,
			.payload_len = plen < REJECTS_KEEP_BYTES ? plen : REJECTS_KEEP_BYTES,
			.ts_ns = now_ns, .recv_ms = now_ns / 1000000,
			.retained = msg->retain,
		};

		m->sink.message(m->sink.ctx, &d, why, plen);
	}
	m->delivered = true;
	/* Quiet is counted from the hand-over: the time the sink took is not
	 * a pause in the burst, the rest of which waits in the socket. */
	if (msg->retain && !m->local_synced) {
		m->quiet_since_ms = now_ms(m);
		m->retained_burst++;
		if (m->nexact)
			count_exact(m, msg->topic);
	}
}

/*
** decode_out.publish and mqtt_decoder_publish (decode.h, mqtt.h): a
** decoder's message to the broker, on the session thread. libmosquitto
** copies it into a packet and, inside its callbacks, only queues it;
** session_turn writes what is queued right after the reads.
*/
int mqtt_decoder_publish(void *ctx, const char *topic, const void *payload, size_t len, int qos,
			 bool retain)
{
	struct mqtt *m = ctx;
	int rc;

	if (!topic || (len && !payload) || (qos != 0 && qos != 1))
		return -EINVAL;
	/* libmosquitto is used from the session thread only. */
	if (!m->in_thread || !pthread_equal(pthread_self(), m->self))
		return -EPERM;
	if (m->link != LINK_UP || !m->mosq)
		return -ENOTCONN;
	if (len > 268435455 - strlen(topic) - 16)
		return -EMSGSIZE;
	if (m->turn_pubs >= MQTT_DECODER_PUB_MAX) {
		m->pub_dropped++;
		return -ENOBUFS;
	}
	errno = 0;
	rc = mosquitto_publish(m->mosq, NULL, topic, (int)len, payload, qos, retain);
	if (rc != MOSQ_ERR_SUCCESS)
		return mosq_errno(rc, errno);
	m->turn_pubs++;
	return 0;
}

/* Tell the decoders the link was lost (decode.h, link_lost). */
static void decoders_link_lost(struct mqtt *m)
{
	for (size_t i = 0; i < m->ndec; i++)
		if (m->dec[i]->ops->link_lost)
			m->dec[i]->ops->link_lost(m->dec[i]);
}

/* About once a second, the decoders' timers (decode.h, tick). */
static void decoders_tick(struct mqtt *m, int64_t now)
{
	int64_t now_ns;

	if (now - m->tick_ms < MQTT_DECODER_TICK_MS)
		return;
	m->tick_ms = now;
	now_ns = m->clk.wall_ns(m->clk.ctx);
	for (size_t i = 0; i < m->ndec; i++)
		if (m->dec[i]->ops->tick)
			m->dec[i]->ops->tick(m->dec[i], now_ns);
}

/* Decoder publications over the per-turn budget: logged once a minute at most. */
static void report_pub_drops(struct mqtt *m, int64_t now)
{
	if (m->pub_dropped == m->pub_dropped_logged || now - m->pub_logged_ms < 60000)
		return;
	log_warnx("mqtt: %llu decoder publication(s) dropped (more than %d in one turn), %llu in all",
		  (unsigned long long)(m->pub_dropped - m->pub_dropped_logged), MQTT_DECODER_PUB_MAX,
		  (unsigned long long)m->pub_dropped);
	m->pub_dropped_logged = m->pub_dropped;
	m->pub_logged_ms = now;
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

/* ---- the intent outbox ---- */

/* A PUBACK (QoS 1), or a QoS 0 message written. The engine ignores mids
 * it does not know (alerts, decoders' publications). */
static void on_publish(struct mosquitto *mosq, void *obj, int mid, int rc,
		       const mosquitto_property *props)
{
	struct mqtt *m = obj;

	(void)mosq;
	(void)props;
	if (m->intents && rc < 0x80)
		intents_acked(m->intents, mid, m->clk.wall_ns(m->clk.ctx) / 1000000);
}

static int intent_publish(void *ctx, const char *topic, const void *payload, size_t len, int qos,
			  const char *corr, uint32_t expiry_s, int *ret_mid)
{
	struct mqtt *m = ctx;
	mosquitto_property *props = NULL;
	int rc;

	if (m->link != LINK_UP || !m->mosq)
		return -ENOTCONN;
	if (m->protocol == 5 &&
	    (mosquitto_property_add_binary(&props, MQTT_PROP_CORRELATION_DATA, corr,
					   (uint16_t)strlen(corr)) != MOSQ_ERR_SUCCESS ||
	     mosquitto_property_add_int32(&props, MQTT_PROP_MESSAGE_EXPIRY_INTERVAL,
					  expiry_s) != MOSQ_ERR_SUCCESS)) {
		mosquitto_property_free_all(&props);
		return -ENOMEM;
	}
	errno = 0;
	rc = mosquitto_publish_v5(m->mosq, ret_mid, topic, (int)len, payload, qos, false, props);
	mosquitto_property_free_all(&props);
	if (rc != MOSQ_ERR_SUCCESS) {
		if (rc == MOSQ_ERR_INVAL || rc == MOSQ_ERR_PAYLOAD_SIZE ||
		    rc == MOSQ_ERR_MALFORMED_UTF8 || rc == MOSQ_ERR_OVERSIZE_PACKET)
			log_warnx("mqtt: cannot publish an intent to '%s': %s", topic,
				  mosquitto_strerror(rc));
		return mosq_errno(rc, errno);
	}
	return 0;
}

void mqtt_set_intents(struct mqtt *m, struct intents *in)
{
	m->intents = in;
}

void mqtt_kick(void *ctx)
{
	wake(ctx);
}

/* ---- session steps (session thread) ---- */

static int ensure_handle(struct mqtt *m, bool tls)
{
	struct mosquitto *mosq;
	int rc;

	if (m->mosq && m->drop_handle) {
		mosquitto_destroy(m->mosq);
		m->mosq = NULL;
	}
	m->drop_handle = false;
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
	rc = MOSQ_ERR_SUCCESS;
	if (tls) {
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
	mosquitto_publish_v5_callback_set(mosq, on_publish);
	m->mosq = mosq;
	m->mosq_tls = tls;
	return 0;
}

/* Our presence for this connect (mqtt_set_presence): the will now, or
 * the birth once connected. Returns 0 or -errno (m->why says why). */
static int presence_send(struct mqtt *m, bool online)
{
	char buf[MQTT_PRESENCE_MAX];
	int n, rc;

	if (!m->presence_topic)
		return 0;
	if (!online)
		m->presence_ts_ms = m->clk.wall_ns(m->clk.ctx) / 1000000;
	n = m->presence(m->presence_ctx, online, m->presence_ts_ms, buf, sizeof(buf));
	if (n < 0 || (size_t)n >= sizeof(buf)) {
		snprintf(m->why, sizeof(m->why), "cannot build the presence message");
		return n < 0 ? n : -EMSGSIZE;
	}
	if (online)
		rc = mosquitto_publish_v5(m->mosq, NULL, m->presence_topic, n, buf, 1, true, NULL);
	else
		rc = mosquitto_will_set_v5(m->mosq, m->presence_topic, n, buf, 1, true, NULL);
	if (rc != MOSQ_ERR_SUCCESS) {
		mosq_reason(rc, errno, m->why, sizeof(m->why));
		return mosq_errno(rc, errno);
	}
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
	/* The version to offer: as configured; with auto, what this URL
	 * answered before, else 5, or 3.1.1 on the retry after 5 failed. */
	if (m->proto_conf)
		m->protocol = m->proto_conf;
	else if (m->fallback_try)
		m->protocol = 311;
	else
		m->protocol = m->url_proto[m->url_idx] ? m->url_proto[m->url_idx] : 5;
	rc = mosquitto_int_option(m->mosq, MOSQ_OPT_PROTOCOL_VERSION,
				  m->protocol == 5 ? MQTT_PROTOCOL_V5 : MQTT_PROTOCOL_V311);
	if (rc != MOSQ_ERR_SUCCESS) {
		mosq_reason(rc, errno, m->why, sizeof(m->why));
		return mosq_errno(rc, errno);
	}
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
	if ((rc = presence_send(m, false)) < 0) {
		mosquitto_property_free_all(&props);
		return rc;
	}
	m->refused = false;
	m->refused_rc = 0;
	m->got_connack = false;
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

/*
** An attempt ended before the link came up. suspect (NULL if not): the
** failure may mean the broker does not speak the version offered (a
** refusal of the version, a hang-up or silence instead of a CONNACK), said
** for the status ("the broker refused MQTT 5"). With protocol
** = auto an MQTT 5 attempt that failed so is retried at once, on the same
** URL, with 3.1.1; a URL that answered 3.1.1 keeps it for the session.
*/
static void connect_failed(struct mqtt *m, int64_t now, const char *suspect)
{
	const char *url = m->urls[m->url_idx];
	bool was_fallback = m->fallback_try;

	m->fallback_try = false;
	if (!m->proto_conf && m->protocol == 5 && suspect) {
		snprintf(m->url_note[m->url_idx], sizeof(m->url_note[m->url_idx]), "%s", suspect);
		/* Logged once: a broker that hangs up on both versions would
		 * otherwise log a line per attempt. */
		if (!m->url_fallback_logged[m->url_idx])
			log_warnx("mqtt: %s: %s; trying MQTT 3.1.1", url, m->why);
		m->url_fallback_logged[m->url_idx] = true;
		m->fallback_try = true;
		m->link = LINK_IDLE;
		m->next_attempt_ms = now;
		set_status(m, "%s: %s; trying MQTT 3.1.1", url, m->url_note[m->url_idx]);
		return;
	}
	if (!m->proto_conf && m->protocol == 311) {
		if (m->got_connack) {
			/* It answered in 3.1.1: it speaks it, whatever it refused. */
			m->url_proto[m->url_idx] = 311;
		} else if (was_fallback) {
			/* 3.1.1 fared no better: the version was not the cause. */
			m->url_note[m->url_idx][0] = '\0';
			snprintf(m->why + strlen(m->why), sizeof(m->why) - strlen(m->why),
				 "; with MQTT 5 too");
		}
	}
	attempt_failed(m, now);
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
	char after[48] = "";

	m->just_connected = false;
	m->link = LINK_UP;
	m->busy = false;     /* a new socket: its mark is the default */
	m->lowat_fd = -1;
	m->up_ms = now;
	m->quiet_since_ms = now;
	m->retained_burst = 0;
	m->retained_exact = 0;
	m->retained_exact_dups = 0;
	if (m->nexact)
		memset(m->exact_seen, 0, m->nexact * sizeof(*m->exact_seen));
	m->local_synced = false;
	atomic_store(&m->connected, true);
	STAT_SET(broker_connected, 1);
	link_changed(m);
	if (m->ever_connected)
		STAT_INC(reconnects);
	m->ever_connected = true;
	m->fallback_try = false;
	m->url_fallback_logged[m->url_idx] = false;
	if (!m->proto_conf) {
		if (m->protocol == 5)
			m->url_note[m->url_idx][0] = '\0';
		m->url_proto[m->url_idx] = m->protocol;
	}
	if (m->failed_attempts)
		snprintf(after, sizeof(after), " after %llu failed attempt(s)",
			 (unsigned long long)m->failed_attempts);
	log_info("mqtt: connected to %s (MQTT %s%s%s, %s session%s)%s", url, proto_name(m->protocol),
		 m->url_note[m->url_idx][0] ? ": " : "", m->url_note[m->url_idx],
		 m->persistent ? "persistent" : "clean", m->session_present ? ", resumed" : "", after);
	m->failed_attempts = 0;
	m->fail_logged[0] = '\0';
	/* Resubscribe even when the broker resumed the session: the SUBACKs
	 * and the retained messages after them are how we know we are synced. */
	subscribe_all(m);
	/* After the SUBSCRIBEs: a Sparkplug host subscribes, then says it is online. */
	if (presence_send(m, true) < 0)
		log_warnx("mqtt: cannot publish our presence on %s: %s", m->presence_topic, m->why);
	m->status_dirty = true;
}

/*
** A broker closes the older of two connections with one client id, and
** mosquitto 2.0 does so without a DISCONNECT saying why: all we see is
** "connection lost", again and again, soon after each connect. After a
** few such links in a row we say what it most likely is.
*/
#define QUICK_DROP_MS 5000
#define QUICK_DROPS_HINT 3

static void quick_drop_hint(struct mqtt *m, int64_t now)
{
	m->quick_drops = now - m->up_ms < QUICK_DROP_MS ? m->quick_drops + 1 : 0;
	if (m->quick_drops == QUICK_DROPS_HINT || (m->quick_drops > QUICK_DROPS_HINT &&
						  m->quick_drops % 50 == 0))
		log_warnx("mqtt: the broker closed our connection %u times in a row within %d s of "
			  "connecting; brokers do that when another client connects with the same "
			  "client id ('%s'): each mirror needs its own [broker] client_id",
			  m->quick_drops, QUICK_DROP_MS / 1000, m->client_id ? m->client_id : "");
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
	decoders_link_lost(m);
	if (m->intents && intents_link_down(m->intents) > 0)
		m->drop_handle = true;
	log_warnx("mqtt: connection to %s lost: %s; reconnecting", url, m->why);
	if (!(m->protocol == 5 && m->disconnect_rc >= 0x80))
		quick_drop_hint(m, now);
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

/* "12 retained message(s) from 3 wildcard and 40 exact subscription(s) (10 on exact topics)" */
static void bootstrap_text(const struct mqtt *m, char *buf, size_t n)
{
	int w = snprintf(buf, n, "%llu retained message(s) from %zu wildcard and %zu exact subscription(s)",
			 (unsigned long long)m->retained_burst, m->nsubs - m->nexact, m->nexact);

	if (m->nexact && m->nexact < m->nsubs && w > 0 && (size_t)w < n)
		snprintf(buf + w, n - (size_t)w, " (%llu on exact topics)",
			 (unsigned long long)m->retained_exact);
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
	else {
		char boot[160], refused[240] = "";

		bootstrap_text(m, boot, sizeof(boot));
		if (nfailed)
			snprintf(refused, sizeof(refused), "; %zu subscription(s) refused: %s", nfailed,
				 failed);
		set_status(m, "synced with %s (MQTT %s%s%s): %s%s", url, proto_name(m->protocol),
			   m->url_note[m->url_idx][0] ? ": " : "", m->url_note[m->url_idx], boot, refused);
	}
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
	char boot[160];

	if (m->link != LINK_UP || m->local_synced || m->subs_pending)
		return;
	if (now - m->quiet_since_ms < m->sync_quiet_ms)
		return;
	m->local_synced = true;
	m->fail_round = 0;
	/* The status first: whoever sees synced reads the status that says so. */
	update_status(m);
	atomic_fetch_add(&m->epoch, 1);
	atomic_store(&m->synced, true);
	STAT_SET(synced, 1);
	link_changed(m);
	bootstrap_text(m, boot, sizeof(boot));
	log_info("mqtt: synced with %s (MQTT %s): %s in %lld ms", m->urls[m->url_idx],
		 proto_name(m->protocol), boot, (long long)(now - m->up_ms));
	/* Nothing silent: a broker that gave retained messages to the exact
	 * subscriptions and none to the wildcard ones does not deliver them
	 * to wildcards at all (RabbitMQ, rabbitmq-server#8824). */
	if (exact_only_bootstrap(m))
		log_warnx("mqtt: %s gave retained messages to exact subscriptions only, none to "
			  "the wildcard ones that match them: it does not deliver retained messages "
			  "to wildcard subscriptions (RabbitMQ does not); only the topics under "
			  "[subscribe] retained are bootstrapped", m->urls[m->url_idx]);
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
	int64_t now = now_ms(m);
	int64_t timeout = MQTT_IDLE_TICK_MS;
	int sock = mosquitto_socket(m->mosq);
	int rc = MOSQ_ERR_SUCCESS, e = 0;

	m->turn_pubs = 0;
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
				m->recv_clock_ns = m->clk.wall_ns(m->clk.ctx);
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
	now = now_ms(m);
	sample_backlog(m, mosquitto_socket(m->mosq), now);
	report_pub_drops(m, now);
	if (m->just_connected && mosquitto_socket(m->mosq) >= 0)
		went_up(m, now);
	if (rc != MOSQ_ERR_SUCCESS || mosquitto_socket(m->mosq) < 0 || m->refused) {
		if (m->link == LINK_UP) {
			went_down(m, rc, e, now);
		} else if (m->refused || m->got_connack ||
			   (rc != MOSQ_ERR_SUCCESS && rc != MOSQ_ERR_CONN_LOST)) {
			if (!m->refused)
				mosq_reason(rc ? rc : MOSQ_ERR_CONN_LOST, e, m->why, sizeof(m->why));
			connect_failed(m, now, m->refused && refused_version(m->protocol, m->refused_rc)
						       ? "the broker refused MQTT 5" : NULL);
		} else {
			/* TCP was up (connect is blocking) and CONNECT sent: the
			 * broker hung up without a CONNACK. RabbitMQ 3.10 answers
			 * an MQTT 5 CONNECT so. */
			snprintf(m->why, sizeof(m->why),
				 "the broker closed the connection without answering CONNECT (MQTT %s)%s",
				 proto_name(m->protocol),
				 m->protocol == 5 && m->proto_conf == 5
					 ? ": a broker that does not speak MQTT 5 does this "
					   "(set [broker] protocol = auto or 3.1.1)" : "");
			connect_failed(m, now, "the broker closed the connection after an MQTT 5 CONNECT");
		}
		return;
	}
	if (m->link == LINK_CONNECTING && now - m->attempt_ms >= m->connack_timeout_ms) {
		snprintf(m->why, sizeof(m->why), "no CONNACK within %lld ms (MQTT %s)",
			 (long long)m->connack_timeout_ms, proto_name(m->protocol));
		/* The next connect (or mqtt_free) closes the half-open socket. */
		connect_failed(m, now, "the broker did not answer an MQTT 5 CONNECT");
		return;
	}
	if (m->link == LINK_UP) {
		check_sync(m, now);
		pthread_mutex_lock(&m->mu);
		bool pending = m->noutbox > 0;
		pthread_mutex_unlock(&m->mu);
		if (pending)
			flush_outbox(m);
		if (m->intents)
			intents_pump(m->intents, m->clk.wall_ns(m->clk.ctx) / 1000000, intent_publish, m);
	}
	if (m->status_dirty)
		update_status(m);
}

static void *session_main(void *arg)
{
	struct mqtt *m = arg;

	m->self = pthread_self();
	atomic_store(&m->in_thread, true);

	while (!atomic_load(&m->stop)) {
		int64_t now;

		atomic_fetch_add_explicit(&m->turns, 1, memory_order_release);
		now = now_ms(m);
		decoders_tick(m, now);

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
			m->fallback_try = false;
			attempt_failed(m, now_ms(m));
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

/* One SUBSCRIBE per filter or topic; a topic given twice is subscribed once. */
static int add_sub(struct mqtt *m, const char *filter)
{
	struct sub *s;

	if (!filter || !*filter)
		return 0;
	for (size_t i = 0; i < m->nsubs; i++)
		if (strcmp(m->subs[i].filter, filter) == 0)
			return 0;
	s = &m->subs[m->nsubs];
	s->filter = strdup(filter);
	if (!s->filter)
		return -ENOMEM;
	s->exact = !strpbrk(filter, "+#");
	m->nsubs++;
	m->nexact += s->exact;
	return 0;
}

/* The exact topics, sorted, to tell the retained messages they bring. */
static int index_exact(struct mqtt *m)
{
	size_t k = 0;

	if (!m->nexact)
		return 0;
	m->exact_sorted = calloc(m->nexact, sizeof(*m->exact_sorted));
	m->exact_seen = calloc(m->nexact, sizeof(*m->exact_seen));
	if (!m->exact_sorted || !m->exact_seen)
		return -ENOMEM;
	for (size_t i = 0; i < m->nsubs; i++)
		if (m->subs[i].exact)
			m->exact_sorted[k++] = m->subs[i].filter;
	qsort(m->exact_sorted, m->nexact, sizeof(*m->exact_sorted), cmp_str);
	return 0;
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
	m->subs = calloc(c->nfilters + c->nretained + 1, sizeof(*m->subs));
	if (!m->outbox || !m->subs)
		goto fail;
	for (size_t i = 0; i < c->nurls; i++)
		if (dup_str(&m->urls[i], c->urls[i]) < 0)
			goto fail;
	m->nurls = c->nurls;
	for (size_t i = 0; i < c->nfilters; i++)
		if (add_sub(m, c->filters[i]) < 0)
			goto fail;
	/* Exact topics as well, for brokers that give retained messages
	 * only to exact subscriptions (RabbitMQ). */
	for (size_t i = 0; i < c->nretained; i++)
		if (add_sub(m, c->retained[i]) < 0)
			goto fail;
	if (index_exact(m) < 0)
		goto fail;
	if (dup_str(&m->client_id, c->client_id) < 0 || dup_str(&m->username, c->username) < 0 ||
	    dup_str(&m->password_file, c->password_file) < 0 ||
	    dup_str(&m->tls_ca, c->tls_ca_file) < 0 || dup_str(&m->tls_cert, c->tls_cert_file) < 0 ||
	    dup_str(&m->tls_key, c->tls_key_file) < 0)
		goto fail;
	if (decode_json_new(c, &m->dec[0]) < 0)
		goto fail;
	m->ndec = 1;
	m->proto_conf = c->protocol == 5 || c->protocol == 311 ? c->protocol : CONF_PROTOCOL_AUTO;
	m->protocol = m->proto_conf ? m->proto_conf : 5;
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
	m->connack_timeout_ms = (int64_t)m->keepalive_s * 1000;
	if (m->connack_timeout_ms > 30000)
		m->connack_timeout_ms = 30000;
	m->lowat_fd = -1;
	m->disconnect_rc = -1;
	m->clk = clock_system;
	m->rng = (uint64_t)clock_wall_ns() ^ ((uint64_t)getpid() << 32) ^ (uintptr_t)m;
	if (!m->rng)
		m->rng = 0x9e3779b97f4a7c15ULL;
	atomic_init(&m->stop, false);
	atomic_init(&m->turns, 0);
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

int mqtt_add_decoder(struct mqtt *m, struct decoder *d)
{
	if (!m || !d || !d->ops || !d->ops->claims || !d->ops->decode || !d->ops->free)
		return -EINVAL;
	if (m->started)
		return -EBUSY;
	if (m->ndec > MQTT_MAX_DECODERS)
		return -ENOSPC;
	/* Before the JSON decoder, after those added earlier. */
	m->dec[m->ndec] = m->dec[m->ndec - 1];
	m->dec[m->ndec - 1] = d;
	m->ndec++;
	return 0;
}

int mqtt_set_presence(struct mqtt *m, const char *topic, mqtt_presence_fn payload, void *ctx)
{
	char *t;

	if (!m || !topic || !payload || topic_name_check(topic, strlen(topic)) < 0)
		return -EINVAL;
	if (m->started)
		return -EBUSY;
	if (!(t = strdup(topic)))
		return -ENOMEM;
	free(m->presence_topic);
	m->presence_topic = t;
	m->presence = payload;
	m->presence_ctx = ctx;
	return 0;
}

int mqtt_set_clock(struct mqtt *m, const struct clock_src *clk)
{
	if (!m || !clk || !clk->mono_ms || !clk->wall_ns)
		return -EINVAL;
	if (m->started)
		return -EBUSY;
	m->clk = *clk;
	return 0;
}

int mqtt_wait_turn(struct mqtt *m, int timeout_ms)
{
	struct timespec t0, t;
	uint64_t target;

	if (!m || !m->started || m->joined || m->abandoned)
		return -ESRCH;
	/* Begun after this read: the turn numbered target - 1; done once
	 * target begins. */
	target = atomic_load_explicit(&m->turns, memory_order_acquire) + 2;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		wake(m);
		if (atomic_load_explicit(&m->turns, memory_order_acquire) >= target)
			return 0;
		clock_gettime(CLOCK_MONOTONIC, &t);
		if ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 >= timeout_ms)
			return -ETIMEDOUT;
		poll(NULL, 0, 1);
	}
}

int mqtt_start(struct mqtt *m, const struct mqtt_sink *sink)
{
	int rc;

	if (m->started)
		return -EALREADY;
	if (!sink || !sink->message || !sink->flush)
		return -EINVAL;
	m->sink = *sink;
	m->dout = (struct decode_out){ .value = sink->message, .ctx = sink->ctx,
				       .publish = mqtt_decoder_publish, .pub_ctx = m };
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
	free(m->exact_sorted);
	free(m->exact_seen);
	for (size_t i = 0; i < m->nurls; i++)
		free(m->urls[i]);
	free(m->client_id);
	free(m->presence_topic);
	free(m->username);
	free(m->password_file);
	free(m->tls_ca);
	free(m->tls_cert);
	free(m->tls_key);
	for (size_t i = 0; i < m->ndec; i++)
		decoder_free(m->dec[i]);
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
