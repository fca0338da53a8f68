/* SPDX-License-Identifier: MIT */
/* statemirrord.c: the process in phases: arguments, config, start, reload, stop. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "api/http.h"
#include "api/intents.h"
#include "api/metrics.h"
#include "api/watch.h"
#include "common/clock.h"
#include "common/conf.h"
#include "common/log.h"
#include "common/notify.h"
#include "common/stats.h"
#include "mirror/state/changes.h"
#include "mirror/mirror.h"
#include "mirror/state/index.h"
#include "mirror/ingest/mqtt.h"
#include "mirror/ingest/sparkplug.h"
#include "mirror/state/rejects.h"
#include "mirror/state/intents.h"
#include "mirror/state/rows.h"
#include "mirror/liveness/stale.h"
#include "store/outbox.h"
#include "store/store.h"

enum { EXIT_CONFIG = 1, EXIT_RUNTIME = 2 };

/* Command-line values; they override the file, at start and at every reload. */
struct options {
	const char *config;
	const char *broker;
	const char *filters[CONF_MAX_FILTERS];
	size_t nfilters;
	const char *db;
	const char *http;
	const char *log_level;
	bool check_config;
};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: statemirrord [-c FILE] [--broker URL] [--subscribe FILTER]... [--db PATH]\n"
		"                    [--http ADDR] [--log-level LEVEL] [--check-config] [--version] [--help]\n"
		"\n"
		"Mirror the current state published on an MQTT broker into a local SQLite\n"
		"file and serve it over HTTP. See statemirrord(8).\n"
		"\n"
		"  -c, --config FILE     configuration file (flags override it)\n"
		"      --broker URL      mqtt://HOST:PORT or mqtts://HOST:PORT (default mqtt://127.0.0.1:1883)\n"
		"      --subscribe FILTER  MQTT topic filter, repeatable (default #)\n"
		"      --db PATH         SQLite file (default statemirror.db)\n"
		"      --http ADDR       HOST:PORT or unix:/path (default 127.0.0.1:8080; port 0 = any)\n"
		"      --log-level LEVEL error, warn, info or debug (default info)\n"
		"      --check-config    validate the configuration and exit (0 valid, 1 not)\n"
		"      --version         print the version and exit\n"
		"  -h, --help            this help\n");
}

static int parse_args(int argc, char **argv, struct options *o)
{
	enum { OPT_BROKER = 256, OPT_SUBSCRIBE, OPT_DB, OPT_HTTP, OPT_LOG, OPT_CHECK, OPT_VERSION };
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "broker", required_argument, NULL, OPT_BROKER },
		{ "subscribe", required_argument, NULL, OPT_SUBSCRIBE },
		{ "db", required_argument, NULL, OPT_DB },
		{ "http", required_argument, NULL, OPT_HTTP },
		{ "log-level", required_argument, NULL, OPT_LOG },
		{ "check-config", no_argument, NULL, OPT_CHECK },
		{ "version", no_argument, NULL, OPT_VERSION },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int ch;

	while ((ch = getopt_long(argc, argv, "c:h", longopts, NULL)) != -1) {
		switch (ch) {
		case 'c': o->config = optarg; break;
		case OPT_BROKER: o->broker = optarg; break;
		case OPT_SUBSCRIBE:
			if (o->nfilters == CONF_MAX_FILTERS) {
				fprintf(stderr, "statemirrord: at most %d --subscribe filters\n",
					CONF_MAX_FILTERS);
				return -1;
			}
			o->filters[o->nfilters++] = optarg;
			break;
		case OPT_DB: o->db = optarg; break;
		case OPT_HTTP: o->http = optarg; break;
		case OPT_LOG: o->log_level = optarg; break;
		case OPT_CHECK: o->check_config = true; break;
		case OPT_VERSION:
			printf("statemirrord %s\n", SM_VERSION);
			exit(0);
		case 'h':
			usage(stdout);
			exit(0);
		default:
			usage(stderr);
			return -1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "statemirrord: unexpected argument '%s'\n", argv[optind]);
		usage(stderr);
		return -1;
	}
	return 0;
}

/* Build a configuration: defaults, then the file, then the flags; validate.
 * Returns 0 or -EINVAL with the reason in err. */
static int load_config(const struct options *o, struct conf *c, char *err, size_t errlen)
{
	int rc = conf_defaults(c);
	size_t used;

	if (rc < 0) {
		snprintf(err, errlen, "out of memory");
		return rc;
	}
	/* Bad lines leave their keys as they were: the whole file is still
	 * judged, so that one run of --check-config lists every mistake. */
	if (o->config && (rc = conf_load_file(c, o->config, err, errlen)) < 0 && rc != -EINVAL)
		return rc;
	if (o->broker) {
		for (size_t i = 0; i < c->nurls; i++) {
			free(c->urls[i]);
			c->urls[i] = NULL;
		}
		c->nurls = 0;
		if (conf_set_str(&c->urls[0], o->broker) < 0)
			goto nomem;
		c->nurls = 1;
	}
	if (o->nfilters) {
		for (size_t i = 0; i < c->nfilters; i++) {
			free(c->filters[i]);
			c->filters[i] = NULL;
		}
		c->nfilters = 0;
		for (size_t i = 0; i < o->nfilters; i++) {
			if (conf_set_str(&c->filters[i], o->filters[i]) < 0)
				goto nomem;
			c->nfilters = i + 1;
		}
	}
	if (o->db && conf_set_str(&c->db_path, o->db) < 0)
		goto nomem;
	if (o->http && conf_set_str(&c->http_listen, o->http) < 0)
		goto nomem;
	if (o->log_level && log_level_parse(o->log_level, &c->log_level) < 0) {
		used = rc < 0 ? strlen(err) : 0;
		snprintf(err + used, errlen - used, "%s--log-level: unknown level '%s' (error, warn, "
			 "info, debug)", used ? "\n" : "", o->log_level);
		return -EINVAL;
	}
	if (rc == 0)
		return conf_validate(c, err, errlen);
	/* After the file's own errors, on lines of their own; not when the
	 * file was read only in part (what is unread could answer them). */
	if (c->src_partial)
		return rc;
	used = strlen(err);
	if (used + 2 < errlen && conf_validate(c, err + used + 1, errlen - used - 1) < 0 &&
	    err[used + 1])
		err[used] = '\n';
	return rc;
nomem:
	snprintf(err, errlen, "out of memory");
	return -ENOMEM;
}

static bool str_differs(const char *a, const char *b)
{
	return strcmp(a ? a : "", b ? b : "") != 0;
}

/* Tell the operator which changed settings a reload cannot take. */
static void report_restart_needed(const struct conf *old, const struct conf *nc)
{
	bool broker = old->nurls != nc->nurls || old->protocol != nc->protocol ||
		      old->qos != nc->qos || old->session != nc->session ||
		      old->keepalive_ms != nc->keepalive_ms ||
		      str_differs(old->client_id, nc->client_id) ||
		      str_differs(old->username, nc->username) ||
		      str_differs(old->password_file, nc->password_file) ||
		      str_differs(old->tls_ca_file, nc->tls_ca_file) ||
		      str_differs(old->tls_cert_file, nc->tls_cert_file) ||
		      str_differs(old->tls_key_file, nc->tls_key_file);
	bool subs = old->nfilters != nc->nfilters || old->nretained != nc->nretained;
	bool store = str_differs(old->db_path, nc->db_path) || old->max_keys != nc->max_keys ||
		     old->serve_while_loading_above != nc->serve_while_loading_above ||
		     old->max_payload != nc->max_payload || old->format != nc->format ||
		     str_differs(old->timestamp_field, nc->timestamp_field) ||
		     old->future_skew_ms != nc->future_skew_ms || old->on_corrupt != nc->on_corrupt;
	bool http = str_differs(old->http_listen, nc->http_listen) ||
		    str_differs(old->token_file, nc->token_file);
	bool sparkplug = old->sp_enabled != nc->sp_enabled || old->sp_rebirth != nc->sp_rebirth ||
			 old->sp_reorder_window_ms != nc->sp_reorder_window_ms ||
			 old->sp_rebirth_interval_ms != nc->sp_rebirth_interval_ms ||
			 old->sp_max_nodes != nc->sp_max_nodes ||
			 old->sp_max_devices != nc->sp_max_devices ||
			 old->sp_max_node_metrics != nc->sp_max_node_metrics ||
			 old->sp_max_metrics != nc->sp_max_metrics ||
			 old->sp_max_message_metrics != nc->sp_max_message_metrics ||
			 old->sp_max_value != nc->sp_max_value ||
			 old->sp_max_decode_mem != nc->sp_max_decode_mem ||
			 str_differs(old->sp_primary_host, nc->sp_primary_host);

	for (size_t i = 0; !broker && i < nc->nurls; i++)
		broker = str_differs(old->urls[i], nc->urls[i]);
	for (size_t i = 0; !subs && i < nc->nfilters; i++)
		subs = str_differs(old->filters[i], nc->filters[i]);
	for (size_t i = 0; !subs && i < nc->nretained; i++)
		subs = str_differs(old->retained[i], nc->retained[i]);
	if (broker || subs || store || http || sparkplug)
		log_warnx("reload: changes to%s%s%s%s%s take effect only after a restart",
			  broker ? " [broker]" : "", subs ? " [subscribe]" : "",
			  store ? " [store]/[payload]" : "", http ? " [http]" : "",
			  sparkplug ? " [sparkplug]" : "");
}

static void stale_publish(void *ctx, const char *topic, const char *payload, size_t len)
{
	struct mqtt *m = ctx;
	int rc = mqtt_publish_retained(m, topic, payload, len);

	if (rc < 0)
		log_warnx("alerts: cannot publish to %s: %s", topic, strerror(-rc));
}

static void notify_status(struct mirror *core, struct mqtt *m)
{
	static char last[256];
	char status[256];

	snprintf(status, sizeof(status), "STATUS=%s, %s, %llu keys, %llu stale",
		 mqtt_connected(m) ? "connected" : "disconnected",
		 mirror_synced(core) ? "synced" : "not synced",
		 (unsigned long long)STAT_GET(keys), (unsigned long long)STAT_GET(stale_keys));
	if (strcmp(status, last) != 0) {
		notify_send(status);
		snprintf(last, sizeof(last), "%s", status);
	}
}

struct load_ctx {
	struct stale *stale;
	int64_t now_ms;
};

static int load_visit(struct rec *r, void *ctx)
{
	struct load_ctx *lc = ctx;

	/* A cadence that changed with the rules is written back, when the
	 * keeper has room (the mirror picks up records loaded dirty). */
	if (!(r->flags & REC_DELETED) && stale_on_load(lc->stale, r, lc->now_ms))
		r->flags |= REC_DIRTY | REC_REDERIVE;
	return 0;
}

/*
** Tombstones keep an older message from bringing a deleted key back; a day
** after the delete no such message is still on its way (the broker clears
** a retained copy on delete), and keeping them longer would let deletes of
** topics never seen again fill max_keys for ever.
*/
#define TOMBSTONE_TTL_MS (24LL * 3600 * 1000)

/*
** Revisions handed out but not yet written when the process died are
** reused by nobody: a restart continues this far above the highest stored
** revision, so a watcher resuming with an id from the previous run gets a
** fresh snapshot instead of silently skipping changes that reuse its ids.
*/
#define REV_RESTART_GAP (1LL << 32)

/* Load the stored keys and schedule every deadline; keys whose deadline
 * passed while we were down turn stale now (without an alert: startup
 * counts as not synced, see stale_on_broker). */
static int load_index(const char *path, struct store *st, struct stale *stale, struct index *ix,
		      int64_t *ret_rev, int64_t *ret_purge_before_ns, int64_t ret_resume[2])
{
	struct load_ctx lc = { stale, clock_wall_ms() };
	int64_t t0 = clock_mono_ms();
	char err[256];
	int rc;

	/* Tombstones older than a day are forgotten now and deleted from the
	 * file by the keeper thread once serving (mirror_deps.purge_before_ns). */
	*ret_purge_before_ns = (lc.now_ms - TOMBSTONE_TTL_MS) * 1000000;
	rc = rows_load(st, ix, *ret_purge_before_ns, ret_rev, err, sizeof(err));
	if (rc < 0) {
		log_error("store: cannot load: %s", err);
		return rc;
	}
	/* Watchers of the previous run resume from the records (watch.h). */
	ret_resume[1] = *ret_rev;
	rc = store_resume_window(st, *ret_purge_before_ns, *ret_rev, &ret_resume[0], err, sizeof(err));
	if (*ret_rev > 0)
		*ret_rev += REV_RESTART_GAP;
	if (rc == 0)
		rc = store_mark_run(st, *ret_rev, err, sizeof(err));
	if (rc < 0) {
		log_error("store: cannot load: %s", err);
		return rc;
	}
	index_wrlock(ix);
	index_walk(ix, NULL, 0, NULL, 0, load_visit, &lc);
	index_unlock(ix);
	log_info("store: %s: %zu keys loaded in %lld ms (rev %lld)", path, index_live(ix),
		 (long long)(clock_mono_ms() - t0), (long long)*ret_rev);
	return 0;
}

/* The session's sink is the mirror's ingest (mqtt.h, core.h). */
static void ingest_message(void *ctx, const struct msg *m, enum reject_reason why, size_t full_len)
{
	mirror_ingest(ctx, m, why, full_len);
}

static void ingest_flush(void *ctx)
{
	mirror_ingest_flush(ctx);
}

static void ingest_link(void *ctx)
{
	mirror_link_changed(ctx);
}

/* ---- the Sparkplug B host mode ------------------------------------------ */

/*
** The Sparkplug decoder (mirror/ingest/sparkplug.h) goes to the session
** inside a thin decoder of ours that forwards every call and adds what the
** decoder leaves to its host: deaths and a lost link turn keys stale
** (mirror_keys_stale, grouped by edge node "spBv1.0/G/E"), rebirth
** requests go out through the session, the counters reach /metrics.
**
** Locks: all of it runs on the session thread, inside the decoder's
** decode(), tick() or link_lost(); the session holds no lock of ours
** around them (mirror_ingest, the sink, may keep the index lock over a
** few values; mirror_keys_stale lets that hold go before taking it).
*/
struct sp_host {
	struct decoder base;      /* ops = sp_host_ops */
	struct decoder *sp;       /* the Sparkplug decoder, ours */
	struct mirror *core;
	struct mqtt *mqtt;
};

/* One node's (or device's) keys for mirror_keys_stale. */
struct sp_keys {
	struct decoder *sp;
	const char *group, *edge, *device;
	int listed;               /* sparkplug_foreach_key's answer */
};

/* mirror_keys_fn: a session's keys (none when the decoder no longer holds it). */
static void sp_keys_list(void *ectx, mirror_key_fn key, void *kctx)
{
	struct sp_keys *k = ectx;

	k->listed = sparkplug_foreach_key(k->sp, k->group, k->edge, k->device, key, kctx);
}

static void sp_keys_stale(struct sp_host *h, const char *group, const char *edge,
			  const char *device, enum stale_reason reason, int64_t ts_ms)
{
	struct sp_keys k = { h->sp, group, edge, device, 0 };
	char producer[512];
	size_t changed;

	snprintf(producer, sizeof(producer), "spBv1.0/%s/%s", group, edge);
	changed = mirror_keys_stale(h->core, producer, reason, sp_keys_list, &k, ts_ms);
	if (k.listed < 0 && k.listed != -ENOENT)
		log_warnx("sparkplug: cannot list the keys of %s%s%s: %s; they stay as they are",
			  producer, device ? "/" : "", device ? device : "", strerror(-k.listed));
	else
		log_debug("sparkplug: %zu of %d key(s) of %s%s%s stale (%s)", changed,
			  k.listed > 0 ? k.listed : 0, producer, device ? "/" : "",
			  device ? device : "", reason == STALE_REASON_BROKER ? "broker" : "producer_offline");
}

static void sp_node_death(void *ctx, const char *group, const char *edge, int64_t ts_ms)
{
	log_info("sparkplug: edge node spBv1.0/%s/%s is offline (NDEATH)", group, edge);
	sp_keys_stale(ctx, group, edge, NULL, STALE_REASON_PRODUCER_OFFLINE, ts_ms);
}

static void sp_device_death(void *ctx, const char *group, const char *edge, const char *device,
			    int64_t ts_ms)
{
	log_info("sparkplug: device spBv1.0/%s/%s/%s is offline (DDEATH)", group, edge, device);
	sp_keys_stale(ctx, group, edge, device, STALE_REASON_PRODUCER_OFFLINE, ts_ms);
}

static int sp_publish(void *ctx, const char *topic, const void *payload, size_t len, int qos,
		      bool retain)
{
	struct sp_host *h = ctx;

	return mqtt_decoder_publish(h->mqtt, topic, payload, len, qos, retain);
}

static void sp_sample(const struct sp_host *h)
{
	struct sparkplug_stats st;

	sparkplug_get_stats(h->sp, &st);
	metrics_set_sparkplug(&st);
}

static bool sp_host_claims(const struct decoder *d, const char *topic, size_t len)
{
	const struct sp_host *h = (const struct sp_host *)d;

	return h->sp->ops->claims(h->sp, topic, len);
}

static size_t sp_host_decode(struct decoder *d, const struct decode_in *in,
			     const struct decode_out *out)
{
	struct sp_host *h = (struct sp_host *)d;
	size_t n = h->sp->ops->decode(h->sp, in, out);

	sp_sample(h);
	return n;
}

static void sp_host_tick(struct decoder *d, int64_t now_ns)
{
	struct sp_host *h = (struct sp_host *)d;

	sparkplug_tick(h->sp, now_ns);
	sp_sample(h);
}

struct sp_lost {
	struct sp_host *h;
	int64_t ts_ms;
};

static void sp_lost_node(void *ctx, const char *group, const char *edge)
{
	struct sp_lost *l = ctx;

	sp_keys_stale(l->h, group, edge, NULL, STALE_REASON_BROKER, l->ts_ms);
}

/* The link is lost: every Sparkplug key is stale (broker) until its node
 * is born again; the sessions are listed before the decoder ends them. */
static void sp_host_link_lost(struct decoder *d)
{
	struct sp_host *h = (struct sp_host *)d;
	struct sp_lost l = { h, clock_wall_ms() };

	sparkplug_foreach_node(h->sp, sp_lost_node, &l);
	sparkplug_link_lost(h->sp);
	sp_sample(h);
}

static void sp_host_free(struct decoder *d)
{
	struct sp_host *h = (struct sp_host *)d;

	if (!h)
		return;
	decoder_free(h->sp);
	free(h);
}

static const struct decoder_ops sp_host_ops = {
	.name = "sparkplug",
	.claims = sp_host_claims,
	.decode = sp_host_decode,
	.tick = sp_host_tick,
	.link_lost = sp_host_link_lost,
	.free = sp_host_free,
};

/* Our STATE as a Sparkplug 3.0 primary host: {"online":B,"timestamp":MS}. */
static int sp_state_payload(void *ctx, bool online, int64_t ts_ms, char *buf, size_t n)
{
	int w = snprintf(buf, n, "{\"online\":%s,\"timestamp\":%lld}", online ? "true" : "false",
			 (long long)ts_ms);

	(void)ctx;
	return w < 0 ? -EINVAL : w;
}

/*
** When [sparkplug] enabled: give the session the Sparkplug decoder (its
** keys, deaths, rebirth requests) and, with primary_host, our own STATE
** birth and will. Before mqtt_start, after mirror_start. Returns 0 or
** -errno (logged).
*/
static int sparkplug_host_start(const struct conf *c, struct mirror *core, struct mqtt *mqtt)
{
	struct sparkplug_conf sc;
	struct sp_host *h;
	int rc;

	if (!c->sp_enabled)
		return 0;
	sparkplug_conf_default(&sc);
	sc.rebirth = c->sp_rebirth;
	sc.reorder_window_ms = c->sp_reorder_window_ms;
	sc.rebirth_interval_ms = c->sp_rebirth_interval_ms;
	sc.max_nodes = (size_t)c->sp_max_nodes;
	sc.max_devices = (size_t)c->sp_max_devices;
	sc.max_node_metrics = (size_t)c->sp_max_node_metrics;
	sc.max_metrics = (size_t)c->sp_max_metrics;
	sc.max_message_metrics = (size_t)c->sp_max_message_metrics;
	sc.max_value_len = (size_t)c->sp_max_value;
	sc.max_decode_mem = (size_t)c->sp_max_decode_mem;
	if (!(h = calloc(1, sizeof(*h))))
		return -ENOMEM;
	h->base.ops = &sp_host_ops;
	h->core = core;
	h->mqtt = mqtt;
	struct sparkplug_hooks hooks = { .node_death = sp_node_death,
					 .device_death = sp_device_death,
					 .publish = sp_publish, .ctx = h };
	if ((rc = sparkplug_new(&sc, &hooks, &h->sp)) < 0) {
		free(h);
		log_error("sparkplug: cannot start the decoder: %s", strerror(-rc));
		return rc;
	}
	if ((rc = mqtt_add_decoder(mqtt, &h->base)) < 0) {
		sp_host_free(&h->base);
		log_error("sparkplug: cannot add the decoder: %s", strerror(-rc));
		return rc;
	}
	sp_sample(h);
	if (c->sp_primary_host) {
		char topic[512];

		snprintf(topic, sizeof(topic), "spBv1.0/STATE/%s", c->sp_primary_host);
		if ((rc = mqtt_set_presence(mqtt, topic, sp_state_payload, NULL)) < 0) {
			log_error("sparkplug: cannot set the STATE of %s: %s", topic, strerror(-rc));
			return rc;
		}
	}
	log_info("sparkplug: host mode on (rebirth %s%s%s)", c->sp_rebirth ? "on" : "off",
		 c->sp_primary_host ? ", primary host " : "",
		 c->sp_primary_host ? c->sp_primary_host : "");
	return 0;
}

/* ---- the process in phases ---------------------------------------------- */

/* The process: its options, its configuration and every module it runs.
 * One per process; the main thread alone touches it. */
struct daemon {
	struct options opt;
	struct conf conf;         /* as at start: modules keep pointers into it */
	struct conf *reloaded;    /* the last reload's; mirror_reload keeps it */
	struct store *store;
	struct index *ix;
	struct rejects *rejects;
	struct changes *changes;
	struct mqtt *mqtt;
	struct stale *stale;
	struct mirror *core;
	struct api *api;
	struct watch *watch;
	struct outbox *outbox;    /* the intents' table ([intents] allow set) */
	struct intents *intents;
	int lock_fd;              /* flock()ed DB.lock: one daemon per file; -1 = none */
	sigset_t sigs;            /* taken by the main loop, blocked in every thread */
	uint64_t wd_usec;         /* the systemd watchdog interval, 0 = none */
};

/* Phase 1, arguments: the command line into d->opt. Returns 0 or -1 (the
 * reason printed). --help and --version exit here. */
static int daemon_args(struct daemon *d, int argc, char **argv)
{
	return parse_args(argc, argv, &d->opt);
}

/* Phase 2, config: defaults, file, flags, validated into d->conf; the
 * reason ("FILE:LINE: reason") goes to stderr. Returns 0 or -errno. */
static int daemon_config(struct daemon *d)
{
	char err[4096];
	int rc = load_config(&d->opt, &d->conf, err, sizeof(err));

	if (rc < 0) {
		fprintf(stderr, "%s\n", err);
		return rc;
	}
	log_set_level(d->conf.log_level);
	return 0;
}

/* A file store_open or store_load refuses as damaged or not ours: what
 * [store] on_corrupt decides about (a newer schema, -ENOTSUP, is not). */
static bool store_unusable(int rc)
{
	return rc == -EINVAL || rc == -ENODATA || rc == -EBADMSG || rc == -EMEDIUMTYPE;
}

/*
** The answer to a database file that cannot be used (why: the reason, with
** the path, as store_open words it):
** with on_corrupt = rebuild it is moved aside, loudly, and counted, and
** the caller starts over on an empty file; with fail the start ends here.
** Returns 0 (moved aside) or -errno (logged).
*/
static int store_rebuild(const struct conf *conf, int rc, const char *why)
{
	char aside[4096], err[512];
	int r;

	if (conf->on_corrupt == CONF_ON_CORRUPT_FAIL) {
		log_error("store: %s; refusing to start ([store] on_corrupt = fail)", why);
		return rc;
	}
	if ((r = store_set_aside(conf->db_path, clock_wall_ms(), aside, sizeof(aside), err,
				 sizeof(err))) < 0) {
		log_error("store: %s, and it cannot be moved aside: %s", why, err);
		return r;
	}
	STAT_INC(store_rebuilds);
	log_error("store: %s; moved aside to %s, starting with an empty mirror that the "
		  "broker fills again ([store] on_corrupt = rebuild)", why, aside);
	return 0;
}

/*
** One daemon per database: a second one on the same file would interleave
** its revisions with ours and fight over the broker session. The lock is
** flock() on a file of its own beside the database (DB.lock), not on the
** database: closing any descriptor of the database would drop SQLite's
** own fcntl() locks, and a rebuild renames the database away. Kept until
** the process ends. Returns 0 or -errno (logged).
*/
/* DB.lock for the database's real path (a symlink or a second name of its
 * directory finds the same lock); malloc'd, NULL on ENOMEM. */
static char *lock_path(const char *db)
{
	const char *slash = strrchr(db, '/');
	char *real = realpath(db, NULL), *dir = NULL, *path;
	size_t n;

	if (!real) { /* not there yet: its directory's real path, then its name */
		char *d = slash ? strndup(db, slash == db ? 1 : (size_t)(slash - db)) : strdup(".");

		dir = d ? realpath(d, NULL) : NULL;
		free(d);
	}
	n = (real ? strlen(real) : dir ? strlen(dir) + 1 + strlen(slash ? slash + 1 : db)
		      : strlen(db)) + sizeof(".lock");
	if ((path = malloc(n))) {
		if (real)
			snprintf(path, n, "%s.lock", real);
		else if (dir)
			snprintf(path, n, "%s/%s.lock", strcmp(dir, "/") ? dir : "",
				 slash ? slash + 1 : db);
		else
			snprintf(path, n, "%s.lock", db);
	}
	free(real);
	free(dir);
	return path;
}

static int daemon_lock_store(struct daemon *d)
{
	const char *db = d->conf.db_path;
	char *path = lock_path(db);
	int fd, e;

	if (!path)
		return -ENOMEM;
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB) < 0) {
		e = errno;
		if (fd >= 0 && e == EWOULDBLOCK)
			log_error("store: %s is in use by another statemirrord (it holds %s): one "
				  "daemon per database", db, path);
		else
			log_error("store: cannot lock %s: %s", path, strerror(e));
		if (fd >= 0)
			close(fd);
		free(path);
		return -e;
	}
	free(path);
	d->lock_fd = fd;
	return 0;
}

/* Open the database (d->store). A file from a newer release is refused
 * whatever on_corrupt says: it is never replaced. Returns 0 or -errno
 * (logged). */
static int daemon_open_store(struct daemon *d)
{
	const char *path = d->conf.db_path;
	char err[512];
	int rc = store_open(path, &d->store, err, sizeof(err));

	if (store_unusable(rc) && (rc = store_rebuild(&d->conf, rc, err)) == 0)
		rc = store_open(path, &d->store, err, sizeof(err));
	if (rc == -ENOTSUP)
		log_error("store: %s; refusing to start: the file is left for the release that "
			  "wrote it", err);
	else if (rc < 0)
		log_error("store: cannot open %s: %s", path, err);
	return rc;
}

/* The index (with its payload read-back) and the staleness engine over it,
 * loaded from the store: damage found only now (-EBADMSG, deeper in the
 * file) is answered as at open, once, with a fresh index. */
static int daemon_load(struct daemon *d, int64_t *ret_rev, int64_t *ret_purge_before_ns,
		       int64_t ret_resume[2])
{
	const struct conf *conf = &d->conf;
	char why[4200];
	int rc;

	snprintf(why, sizeof(why), "%s: damaged (the load error above)", conf->db_path);
	for (int attempt = 0;; attempt++) {
		d->ix = index_new();
		if (!d->ix)
			return -ENOMEM;
		/* Payloads the index no longer holds are read back from the file. */
		index_set_payload_source(d->ix, store_fetch_payload, store_scan, store_scan_end,
					 d->store);
		d->stale = stale_new(conf, d->ix, &(struct deliver_outlet){ .publish = stale_publish,
									  .ctx = d->mqtt });
		if (!d->stale)
			return -ENOMEM;
		rc = load_index(conf->db_path, d->store, d->stale, d->ix, ret_rev, ret_purge_before_ns, ret_resume);
		if (rc != -EBADMSG || attempt > 0)
			return rc;
		/* The API serving from this file while it loaded goes first. */
		api_stop(d->api);
		d->api = NULL;
		stale_free(d->stale);
		index_free(d->ix);
		store_close(d->store);
		d->stale = NULL;
		d->ix = NULL;
		d->store = NULL;
		if ((rc = store_rebuild(conf, rc, why)) < 0 ||
		    (rc = daemon_open_store(d)) < 0)
			return rc;
	}
}

/*
** A big file takes seconds to load (some 1.2 s a million keys): HTTP then
** starts first and answers point reads from the file meanwhile ([store]
** serve_while_loading_above), as the contract's "a restart serves the
** stored keys at once" asks. A small one loads before anything listens.
*/
static int daemon_start_loading_api(struct daemon *d)
{
	const struct conf *conf = &d->conf;
	struct stat sb;
	char err[512];
	int rc;

	if (stat(conf->db_path, &sb) < 0 || sb.st_size < conf->serve_while_loading_above)
		return 0;
	struct api_deps ad = { .conf = conf, .loading_from = d->store };

	log_info("store: %lld MiB to load; point reads are served from the file meanwhile",
		 (long long)(sb.st_size >> 20));
	if ((rc = api_start(&ad, &d->api, err, sizeof(err))) < 0)
		log_error("http: %s", err);
	return rc;
}

/* The intent outbox and its engine, when [intents] allow is set: the
 * outbox's undecided intents are taken back (published again if still
 * due). Returns 0 or -errno (logged). */
static int daemon_open_intents(struct daemon *d)
{
	const struct conf *conf = &d->conf;
	struct intents_limits lim = { .outbox_max = (size_t)conf->intent_outbox_max,
				      .history = (size_t)conf->intent_history,
				      .qos = conf->intent_qos };
	char err[512];
	int rc;

	if (conf->nintent_allow == 0)
		return 0;
	if ((rc = outbox_open(conf->db_path, 5000, &d->outbox, err, sizeof(err))) < 0 ||
	    (rc = intents_new(&lim, d->outbox, clock_wall_ms(), &d->intents, err, sizeof(err))) < 0) {
		log_error("intents: cannot open the outbox: %s", err);
		return rc;
	}
	/* Intent events go to watchers: the hub exists by now. */
	intents_set_observer(d->intents, api_intent_event, d->watch);
	if ((rc = intents_start(d->intents, clock_wall_ms, mqtt_kick, d->mqtt)) < 0) {
		log_error("intents: cannot start: %s", strerror(-rc));
		return rc;
	}
	mqtt_set_intents(d->mqtt, d->intents);
	{
		struct intents_stats st;

		intents_stats(d->intents, &st);
		log_info("intents: on for %zu filter(s); %zu undecided in the outbox",
			 conf->nintent_allow, st.undecided);
	}
	return 0;
}

/* Phase 3, start: signals, the store (opened and loaded), the keeper
 * thread, HTTP, then the MQTT session; READY=1 once serving, whatever the
 * broker does. Returns 0 or -errno (logged); daemon_stop undoes any part. */
static int daemon_start(struct daemon *d)
{
	const struct conf *conf = &d->conf;
	int64_t rev = 0, purge_before_ns = 0, resume[2] = { 0, 0 };
	char err[512];
	int rc;

	/* Signals are taken synchronously by the main thread; every other
	 * thread inherits the blocked mask. */
	sigemptyset(&d->sigs);
	sigaddset(&d->sigs, SIGTERM);
	sigaddset(&d->sigs, SIGINT);
	sigaddset(&d->sigs, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &d->sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	log_info("statemirrord %s starting", SM_VERSION);
	if ((rc = daemon_lock_store(d)) < 0 || (rc = daemon_open_store(d)) < 0)
		return rc;
	if (!(d->rejects = rejects_new((size_t)conf->max_rejects)))
		goto nomem;
	if ((rc = mqtt_new(conf, &d->mqtt, err, sizeof(err))) < 0) {
		log_error("mqtt: %s", err);
		return rc;
	}
	if ((rc = daemon_start_loading_api(d)) < 0)
		return rc;
	if ((rc = daemon_load(d, &rev, &purge_before_ns, resume)) == -ENOMEM)
		goto nomem;
	if (rc < 0)
		return rc;

	if (!(d->changes = changes_new((size_t)conf->watch_log_size, rev)))
		goto nomem;
	if ((rc = watch_new(conf, d->ix, d->changes, &d->watch)) < 0) {
		log_error("watch: cannot start: %s", strerror(-rc));
		return rc;
	}
	watch_set_resume(d->watch, resume[0], resume[1], rev);
	if ((rc = daemon_open_intents(d)) < 0)
		return rc;
	struct mirror_deps cd = { .conf = conf, .ix = d->ix, .store = d->store,
				  .stale = d->stale, .mqtt = d->mqtt, .rejects = d->rejects,
				  .changes = d->changes, .intents = d->intents, .rev = rev,
				  .purge_before_ns = purge_before_ns,
				  .on_changes = watch_wake, .on_changes_ctx = d->watch };
	if ((rc = mirror_start(&cd, &d->core)) < 0) {
		log_error("cannot start the keeper thread: %s", strerror(-rc));
		return rc;
	}
	struct api_deps ad = { .conf = conf, .ix = d->ix, .core = d->core,
			       .rejects = d->rejects, .stale = d->stale, .watch = d->watch,
			       .intents = d->intents };
	if (d->api) {
		api_attach(d->api, &ad);
	} else if ((rc = api_start(&ad, &d->api, err, sizeof(err))) < 0) {
		log_error("http: %s", err);
		return rc;
	}
	if ((rc = sparkplug_host_start(conf, d->core, d->mqtt)) < 0)
		return rc;
	/* The session thread applies what it reads, through the mirror. */
	struct mqtt_sink sink = { .message = ingest_message, .flush = ingest_flush,
				  .link = ingest_link, .ctx = d->core };
	if ((rc = mqtt_start(d->mqtt, &sink)) < 0) {
		log_error("mqtt: cannot start: %s", strerror(-rc));
		return rc;
	}
	/* Serving from here on, whatever the broker does: systemd may go on. */
	notify_send("READY=1");
	d->wd_usec = notify_watchdog_usec();
	return 0;
nomem:
	log_error("out of memory at startup");
	return -ENOMEM;
}

/* Phase 4, reload (SIGHUP): a fresh configuration, swapped in only when it
 * is valid as a whole; the staleness rules, alert settings and log level
 * take effect, the rest is reported as needing a restart. */
static void daemon_reload(struct daemon *d)
{
	struct conf *nc = calloc(1, sizeof(*nc));
	char err[4096];

	notify_send("RELOADING=1");
	if (!nc) {
		log_warnx("reload: out of memory, configuration unchanged");
	} else if (load_config(&d->opt, nc, err, sizeof(err)) < 0) {
		log_warnx("reload: %s; configuration unchanged", err);
		conf_free(nc);
		free(nc);
	} else {
		report_restart_needed(&d->conf, nc);
		log_set_level(nc->log_level);
		mirror_reload(d->core, nc);
		if (d->reloaded) {
			conf_free(d->reloaded);
			free(d->reloaded);
		}
		d->reloaded = nc;
		log_info("reload: staleness rules, alert settings and log level applied");
	}
	notify_send("READY=1");
}

/* The main loop between start and stop: signals, the watchdog, STATUS=.
 * Returns the exit status once SIGTERM or SIGINT arrives. */
static int daemon_run(struct daemon *d)
{
	int64_t tick_ms = d->wd_usec ? (int64_t)(d->wd_usec / 1000 / 3) : 1000;

	if (tick_ms > 1000)
		tick_ms = 1000;
	if (tick_ms < 50)
		tick_ms = 50;
	for (;;) {
		struct timespec ts = { tick_ms / 1000, (tick_ms % 1000) * 1000000L };
		int sig = sigtimedwait(&d->sigs, NULL, &ts);

		if (sig == SIGTERM || sig == SIGINT) {
			log_info("received %s, shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
			notify_send("STOPPING=1");
			return 0;
		}
		if (sig == SIGHUP)
			daemon_reload(d);
		/* Feed the watchdog only while the keeper loop turns. */
		if (d->wd_usec &&
		    clock_mono_ms() - mirror_heartbeat(d->core) < (int64_t)(d->wd_usec / 1000))
			notify_send("WATCHDOG=1");
		notify_status(d->core, d->mqtt);
	}
}

/* Phase 5, stop: everything start made, in reverse dependency order; any
 * part may be missing (a start that failed half-way). */
static void daemon_stop(struct daemon *d)
{
	/* The HTTP handlers read the mirror (readiness, sync): stop serving
	 * before mirror_stop frees it. */
	mqtt_stop(d->mqtt);
	api_stop(d->api);
	mirror_stop(d->core);
	intents_free(d->intents); /* nobody submits, pumps or observes any more */
	outbox_close(d->outbox);
	watch_free(d->watch); /* after api_stop (no stream left) and mirror_stop (no wake) */
	mqtt_free(d->mqtt);
	stale_free(d->stale);
	rejects_free(d->rejects);
	changes_free(d->changes);
	index_free(d->ix);
	store_close(d->store);
	if (d->lock_fd >= 0)
		close(d->lock_fd); /* after every connection to the database is closed */
	if (d->reloaded) {
		conf_free(d->reloaded);
		free(d->reloaded);
	}
	conf_free(&d->conf);
	log_info("statemirrord stopped");
}

int main(int argc, char **argv)
{
	static struct daemon d = { .lock_fd = -1 }; /* struct conf is large: not on the stack */
	int status;

	if (daemon_args(&d, argc, argv) < 0)
		return EXIT_CONFIG;
	if (daemon_config(&d) < 0) {
		conf_free(&d.conf);
		return EXIT_CONFIG;
	}
	if (d.opt.check_config) {
		printf("configuration ok\n");
		conf_free(&d.conf);
		return 0;
	}
	status = daemon_start(&d) < 0 ? EXIT_RUNTIME : daemon_run(&d);
	daemon_stop(&d);
	return status;
}
