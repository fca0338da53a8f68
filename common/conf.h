/* SPDX-License-Identifier: MIT */
/* conf.h: the configuration: INI file, defaults, command-line overrides. */
#ifndef SM_CONF_H
#define SM_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/log.h"

#define CONF_MAX_URLS 16
#define CONF_MAX_FILTERS 256
#define CONF_MAX_RULES 4096
#define CONF_MAX_AVAIL 256
#define CONF_NKEYS 80 /* table rows in conf.c (a static assertion checks) */

enum conf_format { CONF_FORMAT_AUTO, CONF_FORMAT_JSON, CONF_FORMAT_MAX };
enum conf_session { CONF_SESSION_CLEAN, CONF_SESSION_PERSISTENT, CONF_SESSION_MAX };
/* What start does with a database file that is corrupt, truncated or not
 * ours: move it aside and start empty, or refuse to start (exit 2). A file
 * from a future schema is refused whatever this says. */
enum conf_on_corrupt { CONF_ON_CORRUPT_REBUILD, CONF_ON_CORRUPT_FAIL, CONF_ON_CORRUPT_MAX };

/* [broker] protocol: CONF_PROTOCOL_AUTO offers MQTT 5 and falls back to
 * 3.1.1 when the broker refuses the protocol version. */
#define CONF_PROTOCOL_AUTO 0
/* A retained_file holds at most this many bytes. */
#define CONF_RETAINED_FILE_MAX (4 * 1024 * 1024)

/* A cadence: 0 = never (a key that is never stale), else milliseconds. */
struct conf_rule {
	char *filter;
	int64_t cadence_ms; /* 0 = never */
};

/* [liveness] availability = STATUS_FILTER KEYS_FILTER: the status topics
 * of producers, and the keys each covers; the i-th '+' of status binds the
 * i-th '+' of keys. */
struct conf_avail {
	char *status;
	char *keys;
};

enum conf_default_cadence { CONF_DEFAULT_LEARN, CONF_DEFAULT_NEVER, CONF_DEFAULT_FIXED, CONF_DEFAULT_MAX };

struct conf {
	/* [broker] */
	char *urls[CONF_MAX_URLS];    /* "mqtt://host:port" / "mqtts://host:port" */
	size_t nurls;
	char *client_id;              /* with %h already expanded */
	int protocol;                 /* CONF_PROTOCOL_AUTO (0, the default), 5 or 311 */
	int qos;                      /* 0 or 1 */
	enum conf_session session;
	int64_t keepalive_ms;
	char *username;               /* NULL when unset */
	char *password_file;          /* NULL when unset; read at connect */
	char *tls_ca_file, *tls_cert_file, *tls_key_file;
	int64_t session_expiry_ms;    /* MQTT 5 persistent sessions; default 1h */
	int64_t reconnect_min_ms;     /* default 250ms */
	int64_t reconnect_max_ms;     /* default 30s */
	int64_t sync_quiet_ms;        /* the retained burst is over after this
	                                 much silence; default 200ms */

	/* [subscribe] */
	char *filters[CONF_MAX_FILTERS];
	size_t nfilters;
	/* Exact topic names (no wildcards) subscribed one by one, so that a
	 * broker that sends retained messages only to exact-topic
	 * subscriptions (RabbitMQ) sends them at startup: the "retained" keys
	 * and the lines of retained_file, in file order, without duplicates. */
	char *retained[CONF_MAX_FILTERS];
	size_t nretained;
	char *retained_file;          /* NULL when unset; read by conf_load_file */

	/* [store] */
	char *db_path;
	int64_t max_keys;
	int64_t max_payload;          /* bytes */
	int64_t max_topic_len;        /* bytes, default 1024 */
	int64_t commit_interval_ms;   /* default 250ms; never above 1000 */
	int64_t max_rejects;          /* entries kept for /v1/rejects, default 100 */
	enum conf_on_corrupt on_corrupt; /* default rebuild */
	int64_t serve_while_loading_above; /* bytes of file: point reads are served from
	                                      it while its index loads, default 64 MiB */

	/* [payload] */
	enum conf_format format;
	char *timestamp_field;
	int64_t future_skew_ms;

	/* [staleness] */
	double grace;
	enum conf_default_cadence default_kind;
	int64_t default_cadence_ms;   /* for CONF_DEFAULT_FIXED */
	struct conf_rule rules[CONF_MAX_RULES];
	size_t nrules;
	int64_t group_wait_ms;        /* alert grouping window, default 2s */
	int64_t min_hold_ms;          /* hysteresis: stale/fresh must hold this long
	                                 before it is alerted, default 0 */

	/* [liveness] */
	struct conf_avail avail[CONF_MAX_AVAIL];
	size_t navail;
	char *avail_online;           /* the payload that says online, default "online" */
	char *avail_offline;          /* default "offline" */
	char *avail_member;           /* NULL: the payload itself; else a JSON member's string */

	/* [alerts] */
	char *alert_topic;            /* NULL or "" = off */
	char *alert_exec;             /* NULL = off */
	int64_t alert_exec_timeout_ms;/* default 10s */

	/* [http] */
	char *http_listen;            /* "HOST:PORT" or "unix:/path" */
	int socket_mode;              /* default 0660 */
	char *token_file;
	int64_t http_max_conns;       /* default 512 */
	int64_t http_per_ip_conns;    /* default 64 */
	int64_t http_timeout_ms;      /* idle timeout, default 30s */
	int64_t http_threads;         /* default 2 */
	int64_t watch_max_clients;    /* default 512 */
	int64_t watch_buffer;         /* bytes buffered per watcher before it is cut off, default 1MiB */
	int64_t watch_log_size;       /* changes kept for resume, default 65536 */

	/* [intents] */
	char *intent_allow[CONF_MAX_FILTERS]; /* topics intents may be published to; none: off */
	size_t nintent_allow;         /* (follows intent_allow: conf.c's filter lists) */
	int intent_qos;               /* 0 or 1, default 1 */
	int64_t intent_expire_ms;     /* never published later than this, default 30s */
	int64_t intent_timeout_ms;    /* wait for confirmation this long, default 10s */
	int64_t intent_outbox_max;    /* undecided intents at most, default 10000 */
	int64_t intent_max_body;      /* bytes of a POST body, default 64KiB */
	int64_t intent_history;       /* decided intents kept for GET, default 1000 */
	char *intent_token_file;      /* NULL: the [http] token grants intents */

	/* [sparkplug]: the Sparkplug B host mode (mirror/ingest/sparkplug.h,
	 * struct sparkplug_conf has the meaning of each limit) */
	bool sp_enabled;              /* default false */
	bool sp_rebirth;              /* send rebirth requests, default false */
	int64_t sp_reorder_window_ms; /* default 2s */
	int64_t sp_rebirth_interval_ms; /* default 30s */
	int64_t sp_max_nodes;         /* default 10000 */
	int64_t sp_max_devices;       /* per node, default 1000 */
	int64_t sp_max_node_metrics;  /* default 100000 */
	int64_t sp_max_metrics;       /* all nodes, default 1000000 */
	int64_t sp_max_message_metrics; /* default 10000 */
	int64_t sp_max_value;         /* JSON bytes per key, default 64KiB */
	int64_t sp_max_decode_mem;    /* default 32MiB */
	char *sp_primary_host;        /* host id of our own STATE; NULL = none */

	/* [log] */
	enum log_level log_level;

	/* Where each key was last set by the file, so that conf_validate can
	 * say "FILE:LINE: reason"; conf.c's business only. */
	char *src_path;
	uint32_t src_line[CONF_NKEYS];
	bool src_bad[CONF_NKEYS];     /* its last line was refused, and said so */
	bool src_partial;             /* the file was read only up to CONF_MAX_ERRORS errors */
};

/* Fills c with every default (including the contract's "#" filter and URL).
 * c's previous contents are overwritten, not freed. Returns 0 or -ENOMEM.
 * The caller frees with conf_free(). */
int conf_defaults(struct conf *c);

/*
** Parse an INI file into c, which must hold defaults (conf_defaults).
** Syntax: "[section]", "key = value", full-line comments starting with ';'
** or '#', and trailing comments: a ';' or '#' at the start of a value or
** after whitespace begins a comment, except that a filter-valued key
** (filter, rule) may start with the '#' wildcard ("filter = #  ; all").
** Unknown sections and keys are errors; a non-repeatable key given twice is
** an error. Section and key names are those of the contract's example plus:
**   [broker] session_expiry reconnect_min reconnect_max sync_quiet
**   [subscribe] retained retained_file
**   [store] max_topic_len commit_interval max_rejects on_corrupt
**          serve_while_loading_above
**   [staleness] group_wait min_hold      [alerts] exec_timeout
**   [http] max_connections per_ip_connections timeout threads
**          watch_max_clients watch_buffer watch_log_size
**   [sparkplug] enabled rebirth reorder_window rebirth_interval max_nodes
**          max_devices max_node_metrics max_metrics max_message_metrics
**          max_value max_decode_mem primary_host
**   [log] level
**   [liveness] availability (repeatable) online offline payload_member
** Values from the file replace defaults; a repeated key of a repeatable
** item (url list, filter, rule, retained) adds a value, and the first
** occurrence in the file replaces the default list.
** [subscribe] retained_file names a file read here, at load: one exact
** topic name per line, blank lines and '#' comments ignored (a topic name
** holds no '#'), surrounding blanks trimmed; its topics join "retained"
** (CONF_MAX_FILTERS in all, CONF_RETAINED_FILE_MAX bytes at most); an
** error in it is reported as "FILE:LINE: [subscribe] retained_file:
** RFILE:RLINE: reason". On error returns -EINVAL (or -errno for
** I/O) and writes "FILE:LINE: reason" into err (errlen bytes); c is then in
** an unspecified but freeable state. Parse into a fresh struct and swap
** only on success.
*/
int conf_load_file(struct conf *c, const char *path, char *err, size_t errlen);

/* Parse "250ms", "10s", "5m", "2h", "1d" (a bare number is seconds); a
 * decimal fraction ("1.5s") and sums ("1h30m") are accepted; the result is
 * truncated to whole milliseconds. Returns 0 or -EINVAL (also on overflow). */
int conf_parse_duration(const char *s, int64_t *ret_ms);
/* Parse "256KiB", "1MiB", "512", "1GiB", "10KB": KiB/MiB/GiB/TiB (and K/M/G/T)
 * are powers of 1024, KB/MB/GB/TB powers of 1000, "B" or nothing bytes;
 * units are case-insensitive. Returns 0 or -EINVAL (also on overflow). */
int conf_parse_size(const char *s, int64_t *ret_bytes);

/* Cross-field validation after the file and flags are applied (filters and
 * rules are valid MQTT filters, URLs parse, TLS files readable, etc.).
 * Returns 0 or -EINVAL with the reason in err: "FILE:LINE: reason" when the
 * offending key came from the file, else just the reason. */
int conf_validate(const struct conf *c, char *err, size_t errlen);

/* Replace a string-valued field: frees the old value. Returns 0 or -ENOMEM. */
int conf_set_str(char **field, const char *value);

void conf_free(struct conf *c);

/* Add an availability (copies both filters; not validated here, see
 * conf_validate). Returns 0, -ENOSPC (CONF_MAX_AVAIL) or -ENOMEM. */
int conf_add_availability(struct conf *c, const char *status, const char *keys);

/* A parsed broker URL. */
struct conf_url {
	bool tls;
	char host[256];  /* an IPv6 address without its brackets */
	int port;        /* default 1883, or 8883 for mqtts */
};
/* Parse "mqtt://HOST[:PORT][/]" or "mqtts://...". Credentials in the URL are
 * refused (they would end up in logs and argv). Returns 0 or -EINVAL. */
int conf_parse_url(const char *url, struct conf_url *ret);

/* Read a secret file (password, token): its first line without the newline
 * (and without a trailing '\r'). An empty first line is -EINVAL, a file
 * over 64 KiB -EFBIG. Returns 0 or -errno; *ret is malloc'd, the caller
 * frees (and should explicit_bzero it). */
int conf_read_secret(const char *path, char **ret);

#endif
