/* SPDX-License-Identifier: MIT */
/* test_conf.c: unit tests of the config file parser, value parsers and validation. */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/conf.h"

static char tmpdir[64];
static char cpath[128];
static char err[1024];

static void setup(void)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_conf.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
	snprintf(cpath, sizeof(cpath), "%s/sm.conf", tmpdir);
}

static void teardown(void)
{
	char cmd[160];

	snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
	ck_assert_int_eq(system(cmd), 0);
}

static void write_file(const char *path, const char *text, size_t len)
{
	FILE *f = fopen(path, "w");

	ck_assert_ptr_nonnull(f);
	ck_assert_uint_eq(fwrite(text, 1, len, f), len);
	ck_assert_int_eq(fclose(f), 0);
}

/* Defaults, then the text as a file; returns conf_load_file's code. */
static int load(struct conf *c, const char *text)
{
	write_file(cpath, text, strlen(text));
	ck_assert_int_eq(conf_defaults(c), 0);
	err[0] = '\0';
	return conf_load_file(c, cpath, err, sizeof(err));
}

static const char contract_example[] =
	"[broker]\n"
	"url = mqtt://127.0.0.1:1883      ; several, comma-separated, tried in turn\n"
	"client_id = statemirror-%h       ; %h = hostname\n"
	"protocol = 5                     ; 5 or 3.1.1\n"
	"qos = 1                          ; subscription QoS\n"
	"session = clean                  ; clean | persistent (broker queues QoS 1 while we are away)\n"
	"keepalive = 30s\n"
	"username =\n"
	"password_file =                  ; the secret is read from a file, never from argv\n"
	"tls_ca_file =\n"
	"tls_cert_file =\n"
	"tls_key_file =\n"
	"\n"
	"[subscribe]\n"
	"filter = #                       ; repeatable\n"
	"\n"
	"[store]\n"
	"path = statemirror.db\n"
	"max_keys = 1000000               ; beyond this, new keys are rejected, counted and logged\n"
	"max_payload = 256KiB             ; larger payloads are rejected, counted and logged\n"
	"\n"
	"[payload]\n"
	"format = auto                    ; auto: mirror any bytes | json: reject what is not JSON\n"
	"timestamp_field = ts             ; JSON member with the observation time\n"
	"future_skew = 5m                 ; a timestamp further ahead than this is rejected\n"
	"\n"
	"[staleness]\n"
	"grace = 3                        ; a key is stale when unheard for grace x cadence\n"
	"default = learn                  ; learn | never | DURATION, for keys no rule matches\n"
	"rule = dc1/+/rack/+/temp 10s     ; FILTER CADENCE; repeatable; the first matching rule wins\n"
	"rule = bms/+/meta never\n"
	"\n"
	"[alerts]\n"
	"topic = statemirror/alerts       ; MQTT topic prefix for alert state; empty = off\n"
	"exec =                           ; optional program run once per alert, alert JSON on stdin\n"
	"\n"
	"[http]\n"
	"listen = 127.0.0.1:8080          ; HOST:PORT or unix:/run/statemirror/api.sock\n"
	"socket_mode = 0660               ; for a unix socket\n"
	"token_file =                     ; if set, requests need \"Authorization: Bearer <token>\"\n";

static void assert_defaults(const struct conf *c)
{
	char host[256], cid[300];

	gethostname(host, sizeof(host));
	host[sizeof(host) - 1] = '\0';
	snprintf(cid, sizeof(cid), "statemirror-%s", host);
	ck_assert_uint_eq(c->nurls, 1);
	ck_assert_str_eq(c->urls[0], "mqtt://127.0.0.1:1883");
	ck_assert_str_eq(c->client_id, cid);
	/* protocol: auto by default, 5 in the contract's example; checked by
	 * each caller. */
	ck_assert_int_eq(c->qos, 1);
	ck_assert_int_eq(c->session, CONF_SESSION_CLEAN);
	ck_assert_int_eq(c->keepalive_ms, 30000);
	ck_assert_ptr_null(c->username);
	ck_assert_ptr_null(c->password_file);
	ck_assert_ptr_null(c->tls_ca_file);
	ck_assert_ptr_null(c->tls_cert_file);
	ck_assert_ptr_null(c->tls_key_file);
	ck_assert_int_eq(c->session_expiry_ms, 3600000);
	ck_assert_int_eq(c->reconnect_min_ms, 250);
	ck_assert_int_eq(c->reconnect_max_ms, 30000);
	ck_assert_int_eq(c->sync_quiet_ms, 200);
	ck_assert_uint_eq(c->nfilters, 1);
	ck_assert_str_eq(c->filters[0], "#");
	ck_assert_ptr_null(c->retained_file);
	ck_assert_int_eq(c->on_corrupt, CONF_ON_CORRUPT_REBUILD);
	ck_assert_int_eq(c->max_keys, 1000000);
	ck_assert_int_eq(c->max_payload, 256 * 1024);
	ck_assert_int_eq(c->max_topic_len, 1024);
	ck_assert_int_eq(c->commit_interval_ms, 500);
	ck_assert_int_eq(c->max_rejects, 100);
	ck_assert_int_eq(c->format, CONF_FORMAT_AUTO);
	ck_assert_str_eq(c->timestamp_field, "ts");
	ck_assert_int_eq(c->future_skew_ms, 300000);
	ck_assert(c->grace == 3.0);
	ck_assert_int_eq(c->default_kind, CONF_DEFAULT_LEARN);
	ck_assert_int_eq(c->group_wait_ms, 2000);
	ck_assert_int_eq(c->min_hold_ms, 0);
	ck_assert_str_eq(c->alert_topic, "statemirror/alerts");
	ck_assert_ptr_null(c->alert_exec);
	ck_assert_int_eq(c->alert_exec_timeout_ms, 10000);
	ck_assert_str_eq(c->http_listen, "127.0.0.1:8080");
	ck_assert_int_eq(c->socket_mode, 0660);
	ck_assert_ptr_null(c->token_file);
	ck_assert_int_eq(c->http_max_conns, 512);
	ck_assert_int_eq(c->http_per_ip_conns, 64);
	ck_assert_int_eq(c->http_timeout_ms, 30000);
	ck_assert_int_eq(c->http_threads, 2);
	ck_assert_int_eq(c->watch_max_clients, 512);
	ck_assert_int_eq(c->watch_buffer, 1024 * 1024);
	ck_assert_int_eq(c->watch_log_size, 65536);
	/* [sparkplug]: as sparkplug_conf_default (mirror/ingest/sparkplug.c) */
	ck_assert(!c->sp_enabled);
	ck_assert(!c->sp_rebirth);
	ck_assert_int_eq(c->sp_reorder_window_ms, 2000);
	ck_assert_int_eq(c->sp_rebirth_interval_ms, 30000);
	ck_assert_int_eq(c->sp_max_nodes, 10000);
	ck_assert_int_eq(c->sp_max_devices, 1000);
	ck_assert_int_eq(c->sp_max_node_metrics, 100000);
	ck_assert_int_eq(c->sp_max_metrics, 1000000);
	ck_assert_int_eq(c->sp_max_message_metrics, 10000);
	ck_assert_int_eq(c->sp_max_value, 65536);
	ck_assert_int_eq(c->sp_max_decode_mem, 32 << 20);
	ck_assert_ptr_null(c->sp_primary_host);
	ck_assert_int_eq(c->log_level, LOG_LEVEL_INFO);
}

START_TEST(test_defaults)
{
	struct conf c;

	ck_assert_int_eq(conf_defaults(&c), 0);
	assert_defaults(&c);
	ck_assert_int_eq(c.protocol, CONF_PROTOCOL_AUTO);
	ck_assert_uint_eq(c.nretained, 0);
	ck_assert_uint_eq(c.nrules, 0);
	ck_assert_str_eq(c.db_path, "statemirror.db");
	ck_assert_int_eq(conf_validate(&c, err, sizeof(err)), 0);
	conf_free(&c);
	conf_free(&c); /* idempotent */
	conf_free(NULL);
}
END_TEST

START_TEST(test_contract_example)
{
	struct conf c;

	ck_assert_msg(load(&c, contract_example) == 0, "%s", err);
	ck_assert_msg(conf_validate(&c, err, sizeof(err)) == 0, "%s", err);
	assert_defaults(&c);
	ck_assert_int_eq(c.protocol, 5);
	ck_assert_uint_eq(c.nretained, 0);
	ck_assert_str_eq(c.db_path, "statemirror.db");
	ck_assert_uint_eq(c.nrules, 2);
	ck_assert_str_eq(c.rules[0].filter, "dc1/+/rack/+/temp");
	ck_assert_int_eq(c.rules[0].cadence_ms, 10000);
	ck_assert_str_eq(c.rules[1].filter, "bms/+/meta");
	ck_assert_int_eq(c.rules[1].cadence_ms, 0);
	conf_free(&c);
}
END_TEST

/* The shipped config file shows every default commented out: uncommented,
 * it must load, validate, and mean exactly the built-in defaults. */
START_TEST(test_packaged_conf_matches_defaults)
{
	const char *src = getenv("SM_TEST_SRCDIR");
	char path[512], *text = NULL, *out;
	size_t cap = 0, n = 0;
	FILE *f;
	struct conf c;

	snprintf(path, sizeof(path), "%s/packaging/statemirror.conf", src ? src : ".");
	f = fopen(path, "r");
	if (!f)
		return; /* not packaged in this tree */
	out = calloc(1, 1 << 20);
	ck_assert_ptr_nonnull(out);
	while (getline(&text, &cap, f) >= 0) {
		const char *l = text, *eq = strstr(text, " =");
		size_t k = 1;
		/* "#key = value" -> "key = value"; prose comments stay. */
		while (l[k] == '_' || (l[k] >= 'a' && l[k] <= 'z'))
			k++;
		if (l[0] == '#' && k > 1 && eq == l + k)
			l++;
		n += (size_t)snprintf(out + n, (1 << 20) - n, "%s", l);
	}
	free(text);
	fclose(f);
	ck_assert_msg(load(&c, out) == 0, "%s", err);
	ck_assert_msg(conf_validate(&c, err, sizeof(err)) == 0, "%s", err);
	/* The example rules are uncommented too; everything else is default. */
	assert_defaults(&c);
	ck_assert_int_eq(c.protocol, CONF_PROTOCOL_AUTO);
	ck_assert_uint_eq(c.nrules, 2); /* proves the uncommenting took place */
	ck_assert_uint_eq(c.navail, 1);
	ck_assert_str_eq(c.avail[0].status, "dc1/+/agent/status");
	ck_assert_str_eq(c.avail[0].keys, "dc1/+/#");
	ck_assert_str_eq(c.avail_online, "online");
	ck_assert_str_eq(c.avail_offline, "offline");
	ck_assert_ptr_null(c.avail_member);
	ck_assert_uint_eq(c.nretained, 1);
	ck_assert_str_eq(c.retained[0], "bms/site1/meta");
	ck_assert_str_eq(c.db_path, "/var/lib/statemirror/state.db");
	conf_free(&c);
	free(out);
}
END_TEST

START_TEST(test_liveness_section)
{
	struct conf c;

	ck_assert_msg(load(&c, "[subscribe]\n"
			       "filter = dc1/#\n"
			       "[liveness]\n"
			       "availability = dc1/+/agent/status dc1/+/#\n"
			       "availability = dc1/gw/+/state   dc1/gw/+/+\n"
			       "offline = dead\n"
			       "payload_member = state\n") == 0,
		      "%s", err);
	ck_assert_uint_eq(c.navail, 2);
	ck_assert_str_eq(c.avail[1].status, "dc1/gw/+/state");
	ck_assert_str_eq(c.avail[1].keys, "dc1/gw/+/+");
	ck_assert_str_eq(c.avail_offline, "dead");
	ck_assert_str_eq(c.avail_online, "online");
	ck_assert_str_eq(c.avail_member, "state");
	ck_assert_int_eq(conf_validate(&c, err, sizeof(err)), 0);
	conf_free(&c);

	/* One filter only, a bad filter: refused with the line. */
	ck_assert_int_ne(load(&c, "[liveness]\navailability = dc1/+/agent/status\n"), 0);
	ck_assert_ptr_nonnull(strstr(err, ":2:"));
	conf_free(&c);
	ck_assert_int_ne(load(&c, "[liveness]\navailability = dc1/#/x dc1/#\n"), 0);
	conf_free(&c);
	/* A status filter no subscription covers. */
	ck_assert_msg(load(&c, "[subscribe]\nfilter = plant/#\n"
			       "[liveness]\navailability = dc1/+/status dc1/+/#\n") == 0, "%s", err);
	ck_assert_int_ne(conf_validate(&c, err, sizeof(err)), 0);
	ck_assert_ptr_nonnull(strstr(err, "not covered"));
	ck_assert_ptr_nonnull(strstr(err, ":4:"));
	conf_free(&c);
	ck_assert_msg(load(&c, "[subscribe]\nfilter = dc1/+/status\n"
			       "[liveness]\navailability = dc1/+/status dc1/+/#\n") == 0, "%s", err);
	ck_assert_int_eq(conf_validate(&c, err, sizeof(err)), 0);
	conf_free(&c);
	ck_assert_msg(load(&c, "[subscribe]\nfilter = +/#\n"
			       "[liveness]\navailability = $SYS/+/s x/+/#\n") == 0, "%s", err);
	ck_assert_int_ne(conf_validate(&c, err, sizeof(err)), 0); /* '+' never takes '$' */
	conf_free(&c);
}
END_TEST

START_TEST(test_sparkplug_section)
{
	struct conf c;

	ck_assert_msg(load(&c, "[sparkplug]\n"
			       "enabled = yes\n"
			       "rebirth = TRUE\n"
			       "reorder_window = 0\n"
			       "rebirth_interval = 1m\n"
			       "max_nodes = 5\n"
			       "max_value = 1KiB\n"
			       "primary_host = scada-1\n") == 0,
		      "%s", err);
	ck_assert_msg(conf_validate(&c, err, sizeof(err)) == 0, "%s", err);
	ck_assert(c.sp_enabled && c.sp_rebirth);
	ck_assert_int_eq(c.sp_reorder_window_ms, 0);
	ck_assert_int_eq(c.sp_rebirth_interval_ms, 60000);
	ck_assert_int_eq(c.sp_max_nodes, 5);
	ck_assert_int_eq(c.sp_max_value, 1024);
	ck_assert_str_eq(c.sp_primary_host, "scada-1");
	conf_free(&c);

	ck_assert_int_eq(load(&c, "[sparkplug]\nenabled = maybe\n"), -EINVAL);
	ck_assert_msg(strstr(err, ":2: [sparkplug] enabled: 'maybe' is not true or false"),
		      "%s", err);
	conf_free(&c);
	ck_assert_int_eq(load(&c, "[sparkplug]\nmax_nodes = 0\n"), -EINVAL);
	conf_free(&c);
	/* A host id is one topic level: spBv1.0/STATE/HOST_ID. */
	ck_assert_int_eq(load(&c, "[sparkplug]\nenabled = off\nprimary_host = a/b\n"), 0);
	ck_assert(!c.sp_enabled);
	ck_assert_int_eq(conf_validate(&c, err, sizeof(err)), -EINVAL);
	ck_assert_msg(strstr(err, ":3: [sparkplug] primary_host 'a/b' must be one topic level"), "%s",
		      err);
	conf_free(&c);
}
END_TEST

START_TEST(test_repeated_keys)
{
	struct conf c;

	ck_assert_msg(load(&c, "[broker]\n"
			       "url = mqtt://a:1883, mqtts://b\n"
			       "url = mqtt://[::1]:1884/\n"
			       "[subscribe]\n"
			       "filter = a/#\n"
			       "filter = $SYS/#\n"
			       "[staleness]\n"
			       "rule = a/+ 10s\n"
			       "rule = a/# never\n"
			       "rule = # 1m30s\n"
			       "[subscribe]\n"
			       "filter = b\n") == 0,
		      "%s", err);
	ck_assert_uint_eq(c.nurls, 3);
	ck_assert_str_eq(c.urls[0], "mqtt://a:1883");
	ck_assert_str_eq(c.urls[1], "mqtts://b");
	ck_assert_str_eq(c.urls[2], "mqtt://[::1]:1884/");
	/* The file's first filter replaced the default "#". */
	ck_assert_uint_eq(c.nfilters, 3);
	ck_assert_str_eq(c.filters[0], "a/#");
	ck_assert_str_eq(c.filters[1], "$SYS/#");
	ck_assert_str_eq(c.filters[2], "b");
	ck_assert_uint_eq(c.nrules, 3);
	ck_assert_int_eq(c.rules[0].cadence_ms, 10000);
	ck_assert_int_eq(c.rules[1].cadence_ms, 0);
	ck_assert_str_eq(c.rules[2].filter, "#");
	ck_assert_int_eq(c.rules[2].cadence_ms, 90000);
	ck_assert_int_eq(conf_validate(&c, err, sizeof(err)), 0);
	conf_free(&c);
}
END_TEST

START_TEST(test_comments_and_values)
{
	struct conf c;
	char host[256], cid[600];

	ck_assert_msg(load(&c, "\xef\xbb\xbf; a comment\n"
			       "# another\n"
			       "   ; indented\n"
			       "\n"
			       "[ broker ]   ; section comment\n"
			       "client_id = x-%h-%h-%d\n"
			       "protocol = 3.1.1 # trailing hash comment\n"
			       "username = a;b#c\n"
			       "password_file = ;nothing\n"
			       "\tqos\t=\t0\r\n"
			       "[subscribe]\n"
			       "filter = #\t; the wildcard, not a comment\n"
			       "[store]\n"
			       "path = /tmp/with space/x.db  # comment\n"
			       "[staleness]\n"
			       "default = 45s\n"
			       "rule = # 5m # all\n"
			       "grace = 2.5\n"
			       "[alerts]\n"
			       "topic =\n"
			       "exec = /usr/bin/notify --all\n"
			       "[http]\n"
			       "listen = unix:/run/statemirror/api.sock\n"
			       "socket_mode = 0600\n"
			       "[log]\n"
			       "level = debug\n") == 0,
		      "%s", err);
	gethostname(host, sizeof(host));
	host[sizeof(host) - 1] = '\0';
	snprintf(cid, sizeof(cid), "x-%s-%s-%%d", host, host);
	ck_assert_str_eq(c.client_id, cid);
	ck_assert_int_eq(c.protocol, 311);
	ck_assert_str_eq(c.username, "a;b#c");
	ck_assert_ptr_null(c.password_file);
	ck_assert_int_eq(c.qos, 0);
	ck_assert_uint_eq(c.nfilters, 1);
	ck_assert_str_eq(c.filters[0], "#");
	ck_assert_str_eq(c.db_path, "/tmp/with space/x.db");
	ck_assert_int_eq(c.default_kind, CONF_DEFAULT_FIXED);
	ck_assert_int_eq(c.default_cadence_ms, 45000);
	ck_assert_uint_eq(c.nrules, 1);
	ck_assert_str_eq(c.rules[0].filter, "#");
	ck_assert_int_eq(c.rules[0].cadence_ms, 300000);
	ck_assert(c.grace == 2.5);
	ck_assert_str_eq(c.alert_topic, "");
	ck_assert_str_eq(c.alert_exec, "/usr/bin/notify --all");
	ck_assert_str_eq(c.http_listen, "unix:/run/statemirror/api.sock");
	ck_assert_int_eq(c.socket_mode, 0600);
	ck_assert_int_eq(c.log_level, LOG_LEVEL_DEBUG);
	ck_assert_msg(conf_validate(&c, err, sizeof(err)) == 0, "%s", err);
	conf_free(&c);

	ck_assert_int_eq(load(&c, "[staleness]\ndefault = never\n"), 0);
	ck_assert_int_eq(c.default_kind, CONF_DEFAULT_NEVER);
	conf_free(&c);
	ck_assert_int_eq(load(&c, ""), 0); /* an empty file is all defaults */
	assert_defaults(&c);
	conf_free(&c);
}
END_TEST

static const struct {
	const char *text;
	const char *msg; /* after "PATH:" */
} errors[] = {
	{ "[nope]\n", "1: unknown section [nope]" },
	{ "qos = 1\n", "1: 'qos' outside of any [section]" },
	{ "[broker]\nfoo = 1\n", "2: unknown key 'foo' in [broker]" },
	{ "[broker]\npath = x\n", "2: unknown key 'path' in [broker]" },
	{ "[broker]\nqos\n", "2: expected 'key = value'" },
	{ "[broker]\n= 1\n", "2: missing key before '='" },
	{ "[broker\n", "1: missing ']' in section header" },
	{ "[broker] x\n", "1: unexpected text after section header" },
	{ "; c\n\n# c\n[broker]\nqos = 1\nqos = 0\n",
	  "6: 'qos' in [broker] given twice (first on line 5)" },
	{ "[broker]\nqos = 2\n", "2: [broker] qos: '2' out of range (0..1)" },
	{ "[broker]\nqos = one\n", "2: [broker] qos: 'one' is not an integer" },
	{ "[broker]\nqos = 1x\n", "2: [broker] qos: '1x' is not an integer" },
	{ "[broker]\nkeepalive = 10 s\n",
	  "2: [broker] keepalive: invalid duration '10 s' (e.g. 250ms, 10s, 5m, 2h, 1d)" },
	{ "[broker]\nkeepalive = 0\n", "2: [broker] keepalive: '0' out of range (1s..65535s)" },
	{ "[broker]\nkeepalive =\n",
	  "2: [broker] keepalive: invalid duration '' (e.g. 250ms, 10s, 5m, 2h, 1d)" },
	{ "[broker]\nurl = http://x\n",
	  "2: [broker] url: 'http://x': must start with mqtt:// or mqtts://" },
	{ "[broker]\nurl = mqtt://u:s3cret@h\n",
	  "2: [broker] url: 'mqtt://***@h': credentials do not belong in the URL (use username and password_file)" },
	{ "[broker]\nurl = mqtt://a, mqtts://u:p@ss@h:1\n",
	  "2: [broker] url: 'mqtts://***@h:1': credentials do not belong in the URL (use username and password_file)" },
	{ "[broker]\nurl = mqtt://a,,mqtt://b\n", "2: [broker] url: empty URL in the list" },
	{ "[broker]\nurl = mqtt://h:99999\n", "2: [broker] url: 'mqtt://h:99999': invalid port (1..65535)" },
	{ "[broker]\nprotocol = 4\n", "2: [broker] protocol: '4' is not auto, 5 or 3.1.1" },
	{ "[subscribe]\nretained = a/+/b\n",
	  "2: [subscribe] retained: 'a/+/b' is not a valid MQTT topic name (exact names, no + or #)" },
	{ "[subscribe]\nretained = a/#\n",
	  "2: [subscribe] retained: 'a/#' is not a valid MQTT topic name (exact names, no + or #)" },
	{ "[store]\non_corrupt = ignore\n",
	  "2: [store] on_corrupt: 'ignore' is not one of rebuild | fail" },
	{ "[broker]\nsession = dirty\n", "2: [broker] session: 'dirty' is not one of clean | persistent" },
	{ "[subscribe]\nfilter = a/#/b\n", "2: [subscribe] filter: 'a/#/b' is not a valid MQTT topic filter" },
	{ "[subscribe]\nfilter =\n", "2: [subscribe] filter: '' is not a valid MQTT topic filter" },
	{ "[store]\nmax_payload = 1XB\n",
	  "2: [store] max_payload: invalid size '1XB' (e.g. 512, 256KiB, 1MiB)" },
	{ "[store]\nmax_payload = 0\n", "2: [store] max_payload: '0' out of range (1..268435455)" },
	{ "[store]\ncommit_interval = 2s\n",
	  "2: [store] commit_interval: '2s' out of range (1ms..1s)" },
	{ "[store]\npath =\n", "2: [store] path: must not be empty" },
	{ "[store]\nmax_keys = -5\n", "2: [store] max_keys: '-5' out of range (1..1000000000)" },
	{ "[store]\nmax_keys = 99999999999999999999\n",
	  "2: [store] max_keys: '99999999999999999999' is not an integer" },
	{ "[payload]\nformat = xml\n", "2: [payload] format: 'xml' is not one of auto | json" },
	{ "[staleness]\nrule = a/+\n",
	  "2: [staleness] rule: expected 'FILTER CADENCE' (a duration or never)" },
	{ "[staleness]\nrule = a/+ often\n",
	  "2: [staleness] rule: invalid cadence 'often' (a duration such as 10s, or never)" },
	{ "[staleness]\nrule = a+ 10s\n",
	  "2: [staleness] rule: 'a+' is not a valid MQTT topic filter" },
	{ "[staleness]\nrule = a 0s\n",
	  "2: [staleness] rule: cadence '0s' out of range (1ms..49d, or never)" },
	{ "[staleness]\ngrace = 0\n",
	  "2: [staleness] grace: '0' out of range (above 0, at most 1000)" },
	{ "[staleness]\ngrace = nan\n", "2: [staleness] grace: 'nan' is not a number" },
	{ "[staleness]\ndefault = sometimes\n",
	  "2: [staleness] default: 'sometimes' is not learn, never or a duration" },
	{ "[alerts]\ntopic = a/#\n",
	  "2: [alerts] topic: 'a/#' is not a valid MQTT topic name (no + or #)" },
	{ "[http]\nlisten = localhost\n",
	  "2: [http] listen: 'localhost': expected HOST:PORT or unix:/path" },
	{ "[http]\nlisten = ::1:80\n",
	  "2: [http] listen: '::1:80': an IPv6 address must be written [ADDR]:PORT" },
	{ "[http]\nlisten = 127.0.0.1:70000\n",
	  "2: [http] listen: '127.0.0.1:70000': invalid port (0..65535)" },
	{ "[http]\nsocket_mode = 999\n",
	  "2: [http] socket_mode: '999' is not an octal mode (0000..0777)" },
	{ "[http]\nthreads = 0\n", "2: [http] threads: '0' out of range (1..64)" },
	{ "[log]\nlevel = loud\n",
	  "2: [log] level: 'loud' is not a level (error, warn, info, debug)" },
};

START_TEST(test_error_messages)
{
	for (size_t i = 0; i < sizeof(errors) / sizeof(errors[0]); i++) {
		struct conf c;
		char want[1024];

		snprintf(want, sizeof(want), "%s:%s", cpath, errors[i].msg);
		ck_assert_msg(load(&c, errors[i].text) == -EINVAL, "case %zu should fail", i);
		ck_assert_msg(strcmp(err, want) == 0, "case %zu:\n got  '%s'\n want '%s'", i, err,
			      want);
		conf_free(&c);
	}
}
END_TEST

START_TEST(test_file_errors)
{
	struct conf c;
	char want[256];

	ck_assert_int_eq(conf_defaults(&c), 0);
	snprintf(cpath, sizeof(cpath), "%s/missing.conf", tmpdir);
	ck_assert_int_eq(conf_load_file(&c, cpath, err, sizeof(err)), -ENOENT);
	snprintf(want, sizeof(want), "%s: cannot open: No such file or directory", cpath);
	ck_assert_str_eq(err, want);
	conf_free(&c);

	/* A NUL byte in a line. */
	snprintf(cpath, sizeof(cpath), "%s/nul.conf", tmpdir);
	write_file(cpath, "[broker]\nqos = 1\0 x\n", 19);
	ck_assert_int_eq(conf_defaults(&c), 0);
	ck_assert_int_eq(conf_load_file(&c, cpath, err, sizeof(err)), -EINVAL);
	snprintf(want, sizeof(want), "%s:2: NUL byte in line", cpath);
	ck_assert_str_eq(err, want);
	conf_free(&c);

	/* A tiny error buffer is truncated, never overrun. */
	char small[8];
	ck_assert_int_eq(load(&c, "[x]\n"), -EINVAL);
	conf_free(&c);
	ck_assert_int_eq(conf_defaults(&c), 0);
	ck_assert_int_eq(conf_load_file(&c, cpath, small, sizeof(small)), -EINVAL);
	ck_assert_uint_eq(strlen(small), 7);
	conf_free(&c);
}
END_TEST

START_TEST(test_durations)
{
	static const struct {
		const char *s;
		int64_t ms;
	} good[] = {
		{ "250ms", 250 }, { "10s", 10000 }, { "5m", 300000 }, { "2h", 7200000 },
		{ "1d", 86400000 }, { "10", 10000 }, { "0", 0 }, { "0ms", 0 }, { "1.5s", 1500 },
		{ "0.25s", 250 }, { "1h30m", 5400000 }, { "1m0.5s", 60500 }, { "1.0001s", 1000 },
		{ "007s", 7000 }, { "1.5", 1500 },
	};
	static const char *const bad[] = {
		"", "s", "ms", "10x", "-1s", "+1s", "10 s", " 10s", "10s ", "1m1", "1.s", ".5s",
		"1..5s", "10S", "10sec", "9999999999999999999d", "106751991167301d", "1m 30s", "1e3s",
		"10ms5",
	};
	int64_t ms;

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		ms = -1;
		ck_assert_msg(conf_parse_duration(good[i].s, &ms) == 0, "'%s'", good[i].s);
		ck_assert_msg(ms == good[i].ms, "'%s' -> %lld", good[i].s, (long long)ms);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ms = 42;
		ck_assert_msg(conf_parse_duration(bad[i], &ms) == -EINVAL, "'%s' should fail", bad[i]);
		ck_assert_int_eq(ms, 42);
	}
	ck_assert_int_eq(conf_parse_duration(NULL, &ms), -EINVAL);
	/* The largest: just below overflow. */
	ck_assert_int_eq(conf_parse_duration("9223372036854775807ms", &ms), 0);
	ck_assert_int_eq(ms, INT64_MAX);
	ck_assert_int_eq(conf_parse_duration("9223372036854775808ms", &ms), -EINVAL);
}
END_TEST

START_TEST(test_sizes)
{
	static const struct {
		const char *s;
		int64_t n;
	} good[] = {
		{ "256KiB", 262144 }, { "1MiB", 1048576 }, { "512", 512 }, { "1GiB", 1073741824 },
		{ "10KB", 10000 }, { "1.5KiB", 1536 }, { "1kib", 1024 }, { "2K", 2048 },
		{ "3M", 3145728 }, { "1MB", 1000000 }, { "7B", 7 }, { "0", 0 }, { "1TiB", INT64_C(1) << 40 },
	};
	static const char *const bad[] = {
		"", "KiB", "1XB", "-1", "1 KiB", "1KiBs", "1.KiB", "0x10", "9999999999TiB",
		"99999999999999999999",
	};
	int64_t n;

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		n = -1;
		ck_assert_msg(conf_parse_size(good[i].s, &n) == 0, "'%s'", good[i].s);
		ck_assert_msg(n == good[i].n, "'%s' -> %lld", good[i].s, (long long)n);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		n = 42;
		ck_assert_msg(conf_parse_size(bad[i], &n) == -EINVAL, "'%s' should fail", bad[i]);
		ck_assert_int_eq(n, 42);
	}
}
END_TEST

START_TEST(test_urls)
{
	static const struct {
		const char *url;
		bool tls;
		const char *host;
		int port;
	} good[] = {
		{ "mqtt://127.0.0.1:1883", false, "127.0.0.1", 1883 },
		{ "mqtts://broker.example:8884", true, "broker.example", 8884 },
		{ "mqtt://h", false, "h", 1883 },
		{ "mqtts://h/", true, "h", 8883 },
		{ "MQTT://H:1", false, "H", 1 },
		{ "mqtt://[::1]:1884", false, "::1", 1884 },
		{ "mqtt://[fe80::1%eth0]", false, "fe80::1%eth0", 1883 },
	};
	static const char *const bad[] = {
		"", "h:1883", "tcp://h:1883", "mqtt://", "mqtt://:1883", "mqtt://h:", "mqtt://h:0",
		"mqtt://h:65536", "mqtt://h:12x", "mqtt://h/path", "mqtt://u@h", "mqtt://[::1",
		"mqtt://h h", "mqtt://h:1883?x",
	};
	struct conf_url u;

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		ck_assert_msg(conf_parse_url(good[i].url, &u) == 0, "'%s'", good[i].url);
		ck_assert(u.tls == good[i].tls);
		ck_assert_str_eq(u.host, good[i].host);
		ck_assert_int_eq(u.port, good[i].port);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(conf_parse_url(bad[i], &u) == -EINVAL, "'%s' should fail", bad[i]);
	ck_assert_int_eq(conf_parse_url(NULL, &u), -EINVAL);
}
END_TEST

/* Validation as --check-config runs it: "FILE:LINE: reason" for keys from
 * the file, the bare reason for values that came from flags. */
/* Every bad line is reported, in order, one per line; the keys of an
 * unknown section are not judged one by one. */
START_TEST(test_all_errors_reported)
{
	struct conf c;
	char want[2048];

	ck_assert_int_eq(load(&c, "[broker]\n"
				  "keepalive = 10x\n"
				  "qos = 7\n"
				  "[nonsense]\n"
				  "whatever = 1\n"
				  "[store]\n"
				  "max_keys = -1\n"
				  "path = ok.db\n"), -EINVAL);
	snprintf(want, sizeof(want),
		 "%s:2: [broker] keepalive: invalid duration '10x' (e.g. 250ms, 10s, 5m, 2h, 1d)\n"
		 "%s:3: [broker] qos: '7' out of range (0..1)\n"
		 "%s:4: unknown section [nonsense]\n"
		 "%s:7: [store] max_keys: '-1' out of range (1..1000000000)",
		 cpath, cpath, cpath, cpath);
	ck_assert_msg(strncmp(err, want, strlen(want)) == 0, "got:\n%s\nwant:\n%s", err, want);
	ck_assert_str_eq(err + strlen(want), "");   /* and nothing more */
	ck_assert_str_eq(c.db_path, "ok.db");   /* good lines still parsed */
	conf_free(&c);
}
END_TEST

START_TEST(test_validate)
{
	struct conf c;
	char want[2048];

	ck_assert_int_eq(load(&c, "[broker]\nreconnect_min = 10s\n\nreconnect_max = 1s\n"), 0);
	ck_assert_int_eq(conf_validate(&c, err, sizeof(err)), -EINVAL);
	snprintf(want, sizeof(want), "%s:2: reconnect_min is above reconnect_max", cpath);
	ck_assert_str_eq(err, want);
	conf_free(&c);

	/* every failure, each on its own line, not just the first */
	ck_assert_int_eq(load(&c, "[broker]\nreconnect_min = 10s\nreconnect_max = 1s\n"
				  "tls_cert_file = /etc/hostname\n[http]\nlisten = 0.0.0.0:9\n"), 0);
	ck_assert_int_eq(conf_validate(&c, err, sizeof(err)), -EINVAL);
	snprintf(want, sizeof(want),
		 "%s:4: tls_cert_file and tls_key_file go together\n"
		 "%s:2: reconnect_min is above reconnect_max\n"
		 "%s:6: listening on '0.0.0.0:9', beyond loopback, needs [http] token_file",
		 cpath, cpath, cpath);
	ck_assert_str_eq(err, want);
	conf_free(&c);

	ck_assert_int_eq(load(&c, "[broker]\n\ntls_cert_file = /etc/hostname\n"), 0);
	ck_assert_int_eq(conf_validate(&c, err, sizeof(err)), -EINVAL);
	snprintf(want, sizeof(want), "%s:3: tls_cert_file and tls_key_file go together", cpath);
	ck_assert_str_eq(err, want);
	conf_free(&c);

	ck_assert_int_eq(load(&c, "[broker]\npassword_file = /nonexistent/pw\nusername = u\n"), 0);
	ck_assert_int_eq(conf_validate(&c, err, sizeof(err)), -EINVAL);
	snprintf(want, sizeof(want),
		 "%s:2: password_file '/nonexistent/pw': No such file or directory", cpath);
	ck_assert_str_eq(err, want);
	conf_free(&c);

	ck_assert_int_eq(load(&c, "[broker]\nprotocol = 3.1.1\npassword_file = /etc/hostname\n"), 0);
	ck_assert_int_eq(conf_validate(&c, err, sizeof(err)), -EINVAL);
	snprintf(want, sizeof(want), "%s:3: password_file needs a username with protocol 3.1.1",
		 cpath);
	ck_assert_str_eq(err, want);
	conf_free(&c);

	ck_assert_int_eq(load(&c, "[broker]\nsession = persistent\nclient_id =\n"), 0);
	ck_assert_int_eq(conf_validate(&c, err, sizeof(err)), -EINVAL);
	snprintf(want, sizeof(want), "%s:2: a persistent session needs a client_id", cpath);
	ck_assert_str_eq(err, want);
	conf_free(&c);

	/* %h in the alert topic: one alert topic per host. */
	{
		char host[256], want_topic[300];
		ck_assert_int_eq(gethostname(host, sizeof(host)), 0);
		host[sizeof(host) - 1] = '\0';
		ck_assert_int_eq(load(&c, "[alerts]\ntopic = statemirror/alerts/%h\n"), 0);
		snprintf(want_topic, sizeof(want_topic), "statemirror/alerts/%s", host);
		ck_assert_str_eq(c.alert_topic, want_topic);
		conf_free(&c);
	}

	/* Beyond loopback the API needs a token; loopback and unix sockets do not. */
	ck_assert_int_eq(load(&c, "[http]\nlisten = 0.0.0.0:8080\n"), 0);
	ck_assert_int_eq(conf_validate(&c, err, sizeof(err)), -EINVAL);
	snprintf(want, sizeof(want), "%s:2: listening on '0.0.0.0:8080', beyond loopback, "
		 "needs [http] token_file", cpath);
	ck_assert_str_eq(err, want);
	conf_free(&c);
	ck_assert_int_eq(load(&c, "[http]\nlisten = 0.0.0.0:8080\ntoken_file = /etc/hostname\n"), 0);
	ck_assert_msg(conf_validate(&c, err, sizeof(err)) == 0, "%s", err);
	conf_free(&c);
	static const char *const local[] = { "127.0.0.1:0", "127.3.2.1:80", "localhost:8080",
					     "[::1]:8080", "unix:/run/x.sock" };
	for (size_t i = 0; i < sizeof(local) / sizeof(local[0]); i++) {
		char text[128];
		snprintf(text, sizeof(text), "[http]\nlisten = %s\n", local[i]);
		ck_assert_int_eq(load(&c, text), 0);
		ck_assert_msg(conf_validate(&c, err, sizeof(err)) == 0, "%s: %s", local[i], err);
		conf_free(&c);
	}

	/* Values set after the file (command-line flags): no file:line. */
	ck_assert_int_eq(load(&c, "[subscribe]\nfilter = a\n"), 0);
	ck_assert_int_eq(conf_set_str(&c.filters[0], "a/#/b"), 0);
	ck_assert_int_eq(conf_validate(&c, err, sizeof(err)), -EINVAL);
	ck_assert_str_eq(err, "invalid subscription filter 'a/#/b'");
	ck_assert_int_eq(conf_set_str(&c.filters[0], "a/#"), 0);
	ck_assert_int_eq(conf_set_str(&c.urls[0], "http://x"), 0);
	ck_assert_int_eq(conf_validate(&c, err, sizeof(err)), -EINVAL);
	ck_assert_str_eq(err, "invalid broker URL 'http://x': must start with mqtt:// or mqtts://");
	ck_assert_int_eq(conf_set_str(&c.urls[0], "mqtt://user:s3cret@x:1883"), 0);
	ck_assert_int_eq(conf_validate(&c, err, sizeof(err)), -EINVAL);
	ck_assert_str_eq(err, "invalid broker URL 'mqtt://***@x:1883': credentials do not belong "
			      "in the URL (use username and password_file)");
	ck_assert_int_eq(conf_set_str(&c.urls[0], "mqtt://x"), 0);
	ck_assert_int_eq(conf_set_str(&c.http_listen, "nowhere"), 0);
	ck_assert_int_eq(conf_validate(&c, err, sizeof(err)), -EINVAL);
	ck_assert_str_eq(err, "invalid http listen address 'nowhere': expected HOST:PORT or unix:/path");
	ck_assert_int_eq(conf_set_str(&c.http_listen, "[::1]:0"), 0);
	ck_assert_int_eq(conf_validate(&c, err, sizeof(err)), 0);
	c.commit_interval_ms = 1001;
	ck_assert_int_eq(conf_validate(&c, err, sizeof(err)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "commit_interval must be above 0 and at most 1s"));
	c.commit_interval_ms = 1000;
	c.grace = 0;
	ck_assert_int_eq(conf_validate(&c, err, sizeof(err)), -EINVAL);
	ck_assert_str_eq(err, "grace must be above 0");
	c.grace = 3;
	c.qos = 2;
	ck_assert_int_eq(conf_validate(&c, err, sizeof(err)), -EINVAL);
	ck_assert_str_eq(err, "qos must be 0 or 1");
	c.qos = 1;
	c.protocol = 4;
	ck_assert_int_eq(conf_validate(&c, err, sizeof(err)), -EINVAL);
	ck_assert_str_eq(err, "protocol must be auto, 5 or 3.1.1");
	c.protocol = 5;
	ck_assert_int_eq(conf_validate(&c, err, sizeof(err)), 0);
	conf_free(&c);
}
END_TEST

/* Reloading over a loaded config (the SIGHUP path) leaks nothing (ASan)
 * and a failed load leaves a freeable struct. */
START_TEST(test_reload_and_failed_load_free)
{
	struct conf c;

	ck_assert_int_eq(load(&c, contract_example), 0);
	conf_free(&c);
	ck_assert_int_eq(load(&c, "[broker]\nurl = mqtt://a\nurl = mqtt://b\nurl = ftp://c\n"),
			 -EINVAL);
	ck_assert_uint_eq(c.nurls, 2);
	conf_free(&c);
	ck_assert_int_eq(load(&c, "[staleness]\nrule = a 1s\nrule = b bad\n"), -EINVAL);
	conf_free(&c);

	/* More URLs than fit. */
	char text[2048];
	size_t n = (size_t)snprintf(text, sizeof(text), "[broker]\n");
	for (int i = 0; i <= CONF_MAX_URLS; i++)
		n += (size_t)snprintf(text + n, sizeof(text) - n, "url = mqtt://h%d\n", i);
	ck_assert_int_eq(load(&c, text), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "more than 16 URLs"));
	conf_free(&c);
}
END_TEST

/* The keys added for broker interop and the corrupt-database answer. */
START_TEST(test_protocol_retained_on_corrupt)
{
	static const struct {
		const char *v;
		int want;
	} protos[] = { { "auto", CONF_PROTOCOL_AUTO }, { "5", 5 }, { "5.0", 5 },
		       { "3.1.1", 311 }, { "311", 311 } };
	struct conf c;
	char text[1024], rpath[160], want[512];

	for (size_t i = 0; i < sizeof(protos) / sizeof(protos[0]); i++) {
		snprintf(text, sizeof(text), "[broker]\nprotocol = %s\n", protos[i].v);
		ck_assert_msg(load(&c, text) == 0, "%s: %s", protos[i].v, err);
		ck_assert_int_eq(c.protocol, protos[i].want);
		ck_assert_msg(conf_validate(&c, err, sizeof(err)) == 0, "%s", err);
		conf_free(&c);
	}
	/* auto may send a password without a username (MQTT 5). */
	ck_assert_int_eq(load(&c, "[broker]\npassword_file = /etc/hostname\n"), 0);
	ck_assert_msg(conf_validate(&c, err, sizeof(err)) == 0, "%s", err);
	conf_free(&c);

	ck_assert_int_eq(load(&c, "[store]\non_corrupt = fail\n"), 0);
	ck_assert_int_eq(c.on_corrupt, CONF_ON_CORRUPT_FAIL);
	conf_free(&c);
	ck_assert_int_eq(load(&c, "[store]\non_corrupt = rebuild\n"), 0);
	ck_assert_int_eq(c.on_corrupt, CONF_ON_CORRUPT_REBUILD);
	conf_free(&c);

	/* retained and retained_file merge into one list, in file order,
	 * without duplicates, whichever key comes first. */
	snprintf(rpath, sizeof(rpath), "%s/retained.txt", tmpdir);
	write_file(rpath, "# site metadata\n\n  bms/site1/meta  \nbms/site2/meta # two\n"
		   "a/b\r\n$SYS/broker/version\n", 82);
	snprintf(text, sizeof(text),
		 "[subscribe]\nretained = a/b\nretained_file = %s\nretained = c d/e\n", rpath);
	ck_assert_msg(load(&c, text) == 0, "%s", err);
	ck_assert_msg(conf_validate(&c, err, sizeof(err)) == 0, "%s", err);
	ck_assert_str_eq(c.retained_file, rpath);
	ck_assert_uint_eq(c.nretained, 5);
	ck_assert_str_eq(c.retained[0], "a/b");
	ck_assert_str_eq(c.retained[1], "bms/site1/meta");
	ck_assert_str_eq(c.retained[2], "bms/site2/meta");
	ck_assert_str_eq(c.retained[3], "$SYS/broker/version");
	ck_assert_str_eq(c.retained[4], "c d/e");
	ck_assert_uint_eq(c.nfilters, 1); /* the filters are untouched */
	conf_free(&c);
	snprintf(text, sizeof(text), "[subscribe]\nretained_file = %s\nretained = x\n", rpath);
	ck_assert_msg(load(&c, text) == 0, "%s", err);
	ck_assert_uint_eq(c.nretained, 5); /* the file's topics stay */
	ck_assert_str_eq(c.retained[4], "x");
	conf_free(&c);
	ck_assert_int_eq(load(&c, "[subscribe]\nretained_file =\n"), 0);
	ck_assert_ptr_null(c.retained_file);
	conf_free(&c);

	/* An error in the file names both lines. */
	write_file(rpath, "ok/topic\nbad/+/x\n", 18);
	snprintf(text, sizeof(text), "[subscribe]\nretained_file = %s\n", rpath);
	ck_assert_int_eq(load(&c, text), -EINVAL);
	snprintf(want, sizeof(want),
		 "%s:2: [subscribe] retained_file: %s:2: 'bad/+/x' is not a valid MQTT topic "
		 "name (exact names, no + or #)", cpath, rpath);
	ck_assert_str_eq(err, want);
	conf_free(&c);
	snprintf(text, sizeof(text), "[subscribe]\nretained_file = %s/none\n", tmpdir);
	ck_assert_int_eq(load(&c, text), -EINVAL);
	snprintf(want, sizeof(want),
		 "%s:2: [subscribe] retained_file: cannot open '%s/none': No such file or directory",
		 cpath, tmpdir);
	ck_assert_str_eq(err, want);
	conf_free(&c);

	/* Bounded: CONF_MAX_FILTERS topics in all, file and keys together. */
	FILE *f = fopen(rpath, "w");
	ck_assert_ptr_nonnull(f);
	for (int i = 0; i < CONF_MAX_FILTERS; i++)
		fprintf(f, "t/%d\n", i);
	ck_assert_int_eq(fclose(f), 0);
	snprintf(text, sizeof(text), "[subscribe]\nretained_file = %s\n", rpath);
	ck_assert_msg(load(&c, text) == 0, "%s", err);
	ck_assert_uint_eq(c.nretained, CONF_MAX_FILTERS);
	conf_free(&c);
	snprintf(text, sizeof(text), "[subscribe]\nretained = t/0\nretained = extra\n"
		 "retained_file = %s\n", rpath);
	ck_assert_int_eq(load(&c, text), -EINVAL);
	snprintf(want, sizeof(want), "%s:4: [subscribe] retained_file: %s:256: more than %d "
		 "retained topics (retained and retained_file together)", cpath, rpath,
		 CONF_MAX_FILTERS);
	ck_assert_str_eq(err, want);
	conf_free(&c);
	/* A file too large is refused before it is all read. */
	f = fopen(rpath, "w");
	ck_assert_ptr_nonnull(f);
	for (int i = 0; i < CONF_RETAINED_FILE_MAX / 64 + 1; i++)
		fprintf(f, "# %061d\n", i); /* 64 bytes a line */
	ck_assert_int_eq(fclose(f), 0);
	ck_assert_int_eq(load(&c, text), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err, "file larger than 4194304 bytes"));
	conf_free(&c);
}
END_TEST

START_TEST(test_read_secret)
{
	char path[160], *s = NULL;

	snprintf(path, sizeof(path), "%s/pw", tmpdir);
	write_file(path, "s3cret pass\nsecond line\n", 24);
	ck_assert_int_eq(conf_read_secret(path, &s), 0);
	ck_assert_str_eq(s, "s3cret pass");
	free(s);
	write_file(path, "tok\r\n", 5);
	ck_assert_int_eq(conf_read_secret(path, &s), 0);
	ck_assert_str_eq(s, "tok");
	free(s);
	write_file(path, "no-newline", 10);
	ck_assert_int_eq(conf_read_secret(path, &s), 0);
	ck_assert_str_eq(s, "no-newline");
	free(s);
	s = NULL;
	write_file(path, "\nlater", 6);
	ck_assert_int_eq(conf_read_secret(path, &s), -EINVAL);
	write_file(path, "", 0);
	ck_assert_int_eq(conf_read_secret(path, &s), -EINVAL);
	write_file(path, "a\0b\n", 4);
	ck_assert_int_eq(conf_read_secret(path, &s), -EINVAL);
	ck_assert_ptr_null(s);
	char *big = malloc(70000);
	ck_assert_ptr_nonnull(big);
	memset(big, 'x', 70000);
	write_file(path, big, 70000);
	free(big);
	ck_assert_int_eq(conf_read_secret(path, &s), -EFBIG);
	snprintf(path, sizeof(path), "%s/none", tmpdir);
	ck_assert_int_eq(conf_read_secret(path, &s), -ENOENT);
	ck_assert_ptr_null(s);
}
END_TEST

static Suite *conf_suite(void)
{
	Suite *s = suite_create("conf");
	TCase *tc = tcase_create("core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_defaults);
	tcase_add_test(tc, test_contract_example);
	tcase_add_test(tc, test_packaged_conf_matches_defaults);
	tcase_add_test(tc, test_repeated_keys);
	tcase_add_test(tc, test_liveness_section);
	tcase_add_test(tc, test_sparkplug_section);
	tcase_add_test(tc, test_comments_and_values);
	tcase_add_test(tc, test_error_messages);
	tcase_add_test(tc, test_file_errors);
	tcase_add_test(tc, test_durations);
	tcase_add_test(tc, test_sizes);
	tcase_add_test(tc, test_urls);
	tcase_add_test(tc, test_validate);
	tcase_add_test(tc, test_all_errors_reported);
	tcase_add_test(tc, test_reload_and_failed_load_free);
	tcase_add_test(tc, test_protocol_retained_on_corrupt);
	tcase_add_test(tc, test_read_secret);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(conf_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
