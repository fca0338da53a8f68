/* SPDX-License-Identifier: MIT */
/* statemirrorctl.c: the operator's command line for statemirrord: status, get, ls, stale, rejects, watch, intent. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "api/ctl/ctlhttp.h"
#include "common/buf.h"
#include "common/jsondump.h"
#include "common/conf.h"

/* Exit codes, as statemirrorctl(1) documents them. */
enum ctl_exit {
	EXIT_OK = 0,
	EXIT_USAGE = 1,         /* bad arguments, unreadable token file */
	EXIT_UNREACHABLE = 2,   /* no daemon answers at the address */
	EXIT_NOT_READY = 3,     /* status: the mirror is not ready */
	EXIT_UNAUTHORISED = 4,  /* 401: no token, or the wrong one */
	EXIT_NOT_FOUND = 5,     /* 404: no such key */
	EXIT_HTTP = 6,          /* any other HTTP error or unusable answer */
	EXIT_NOT_DONE = 7,      /* intent --wait: overridden, timed_out or expired */
	EXIT_UNDECIDED = 8,     /* intent --wait: no outcome before the wait ran out */
	EXIT_MAX
};

#define PAGE_DEFAULT 1000
#define PAGE_MAX 10000
#define TOPIC_COL_MAX 64
#define WATCH_IDLE_MS 45000     /* three missed heartbeats */
#define WATCH_BACKOFF_MAX_MS 2000

struct ctl {
	struct ctl_conn *conn;
	const char *where;      /* the address, for messages */
	bool json;
	bool color;
	bool tty;
	unsigned cols;          /* terminal width, 0 when not a terminal */
	long page;
	long interval_ms;       /* status: between the two /metrics samples */
	bool snapshot;          /* watch */
	const char *since;      /* watch */
	int stale_only;         /* ls: -1 all, 1 stale, 0 fresh */
	bool said_unsynced;
	const char *wait;       /* intent: ?wait=, or NULL */
	const char *confirm;    /* intent: the confirm topic, or NULL */
	const char *member;     /* intent: the confirm member, or NULL */
	const char *corr_id;    /* intent */
	const char *expire;     /* intent */
	const char *confirm_timeout; /* intent: the body's "timeout" */
};

static const char *prog = "statemirrorctl";

/* ---- output helpers --------------------------------------------------- */

__attribute__((format(printf, 1, 2)))
static void errmsg(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s: ", prog);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

enum color { C_RESET, C_BOLD, C_DIM, C_RED, C_GREEN, C_YELLOW, C_CYAN, C_MAX };

static const char *col(const struct ctl *x, enum color c)
{
	static const char *const seq[C_MAX] = {
		"\033[0m", "\033[1m", "\033[2m", "\033[31m", "\033[32m", "\033[33m", "\033[36m",
	};

	return x->color ? seq[c] : "";
}

/* Display width of UTF-8 text: code points, not bytes (close enough for topics). */
static size_t text_width(const char *s)
{
	size_t w = 0;

	for (; *s; s++)
		if (((unsigned char)*s & 0xC0) != 0x80)
			w++;
	return w;
}

static void pad(size_t have, size_t want)
{
	for (; have < want; have++)
		putchar(' ');
}

/* Prints s in a column of width w (followed by two spaces). */
static void cell(const char *s, size_t w)
{
	fputs(s, stdout);
	pad(text_width(s), w + 2);
}

/* Byte length of the longest prefix of s that is at most w wide. */
static size_t prefix_for_width(const char *s, size_t w)
{
	size_t n = 0, seen = 0;

	for (; s[n]; n++) {
		if (((unsigned char)s[n] & 0xC0) != 0x80) {
			if (seen == w)
				break;
			seen++;
		}
	}
	return n;
}

/* Prints s, cut with "…" to fit what remains of the terminal line. */
static void tail_cell(const struct ctl *x, const char *s, size_t used)
{
	size_t w = text_width(s);

	if (!x->cols || used + w <= x->cols || x->cols <= used + 2) {
		fputs(s, stdout);
		return;
	}
	fwrite(s, 1, prefix_for_width(s, x->cols - used - 1), stdout);
	fputs("\xe2\x80\xa6", stdout);
}

static void fmt_ms(char *out, size_t n, json_int_t ms)
{
	if (ms < 0)
		snprintf(out, n, "-");
	else if (ms < 1000)
		snprintf(out, n, "%" JSON_INTEGER_FORMAT "ms", ms);
	else if (ms < 60000)
		snprintf(out, n, "%.1fs", (double)ms / 1000.0);
	else if (ms < 3600000)
		snprintf(out, n, "%" JSON_INTEGER_FORMAT "m%02" JSON_INTEGER_FORMAT "s",
			 ms / 60000, ms / 1000 % 60);
	else if (ms < 86400000)
		snprintf(out, n, "%" JSON_INTEGER_FORMAT "h%02" JSON_INTEGER_FORMAT "m",
			 ms / 3600000, ms / 60000 % 60);
	else
		snprintf(out, n, "%" JSON_INTEGER_FORMAT "d%02" JSON_INTEGER_FORMAT "h",
			 ms / 86400000, ms / 3600000 % 24);
}

static const char *jstr(const json_t *o, const char *k)
{
	return json_string_value(json_object_get(o, k));
}

/* A record's integer member, or -1 when absent or null. */
static json_int_t jint(const json_t *o, const char *k)
{
	const json_t *v = json_object_get(o, k);

	if (json_is_integer(v))
		return json_integer_value(v);
	if (json_is_real(v))
		return (json_int_t)json_real_value(v);
	return -1;
}

/* The record's value as one line: JSON compact, text as is, base64 marked.
 * Returns a malloc'd string (the caller frees it) or NULL on OOM. */
static char *value_text(const json_t *rec)
{
	const json_t *p = json_object_get(rec, "payload");
	const char *s;
	struct buf b;

	if (p)
		return json_dumps_exact(p, JSON_COMPACT | JSON_ENCODE_ANY);
	buf_init(&b, 0);
	if ((s = jstr(rec, "payload_text"))) {
		for (; *s; s++)
			if (buf_putc(&b, *s == '\n' || *s == '\r' || *s == '\t' ? ' ' : *s) < 0)
				goto oom;
	} else if ((s = jstr(rec, "payload_base64"))) {
		if (buf_puts(&b, "base64:") < 0 || buf_puts(&b, s) < 0)
			goto oom;
	}
	return buf_steal(&b, NULL);
oom:
	buf_free(&b);
	return NULL;
}

static void print_json(const json_t *j)
{
	char *s = json_dumps_exact(j, JSON_COMPACT | JSON_ENCODE_ANY);

	if (s) {
		puts(s);
		free(s);
	}
}

/* ---- requests --------------------------------------------------------- */

/* The exit code for an answer that was not 2xx, after saying why. */
static int http_failure(const struct ctl *x, const char *what, const struct ctl_reply *rep)
{
	json_t *j = json_loadb(rep->body.data ? rep->body.data : "", rep->body.len, 0, NULL);
	const char *reason = j ? jstr(j, "error") : NULL;
	int rc;

	if (!reason)
		reason = "no reason given";
	switch (rep->status) {
	case 401:
		errmsg("%s: unauthorised (%s): give the token with --token-file FILE or STATEMIRROR_TOKEN",
		       what, reason);
		rc = EXIT_UNAUTHORISED;
		break;
	case 404:
		errmsg("%s: not found (%s)", what, reason);
		rc = EXIT_NOT_FOUND;
		break;
	default:
		errmsg("%s: HTTP %ld: %s", what, rep->status, reason);
		rc = EXIT_HTTP;
		break;
	}
	json_decref(j);
	return rc;
}

static int transport_failure(const struct ctl *x, const char *what)
{
	if (ctl_conn_fail(x->conn) == CTL_FAIL_UNREACHABLE) {
		errmsg("%s: the daemon is unreachable: %s", what, ctl_conn_error(x->conn));
		return EXIT_UNREACHABLE;
	}
	errmsg("%s: %s", what, ctl_conn_error(x->conn));
	return EXIT_HTTP;
}

/* GET path; on EXIT_OK *ret holds a 2xx answer (or any answer when
 * any_status). Otherwise the failure has been reported. */
static int get_raw(struct ctl *x, const char *path, bool any_status, struct ctl_reply *ret)
{
	struct ctl_reply rep;
	int r = ctl_get(x->conn, path, &rep);

	if (r == -ENOMEM) {
		errmsg("%s: out of memory", path);
		return EXIT_HTTP;
	}
	if (r < 0)
		return transport_failure(x, path);
	if (rep.synced == 0 && !x->said_unsynced && !x->json) {
		fprintf(stderr, "%s: note: the mirror is not synced with the broker right now "
			"(Statemirror-Synced: false): what it shows may be behind\n", prog);
		x->said_unsynced = true;
	}
	if (!any_status && (rep.status < 200 || rep.status > 299)) {
		r = http_failure(x, path, &rep);
		ctl_reply_free(&rep);
		return r;
	}
	*ret = rep;
	return EXIT_OK;
}

/* GET path as JSON; *ret_json owned by the caller. */
static int get_json(struct ctl *x, const char *path, json_t **ret_json, struct ctl_reply *ret_rep)
{
	struct ctl_reply rep;
	json_error_t je;
	json_t *j;
	int rc;

	if ((rc = get_raw(x, path, false, &rep)) != EXIT_OK)
		return rc;
	j = json_loadb(rep.body.data, rep.body.len, 0, &je);
	if (!j) {
		errmsg("%s: the answer is not JSON (%s)", path, je.text);
		ctl_reply_free(&rep);
		return EXIT_HTTP;
	}
	*ret_json = j;
	if (ret_rep)
		*ret_rep = rep;
	else
		ctl_reply_free(&rep);
	return EXIT_OK;
}

/* Appends "&name=" and the value, percent-encoded. */
static int add_param(struct buf *b, const char *name, const char *val)
{
	int r;

	if ((r = buf_putc(b, strchr(b->data ? b->data : "", '?') ? '&' : '?')) < 0 ||
	    (r = buf_puts(b, name)) < 0 || (r = buf_putc(b, '=')) < 0)
		return r;
	return ctl_pct_encode(b, val, true);
}

/* ---- /metrics --------------------------------------------------------- */

/* Sums the samples of metric `name`: with label NULL the unlabelled one
 * only, with "" every sample whatever its labels, else those whose labels
 * contain `label` (e.g. "reason=\"cadence\""). Returns whether one was seen. */
static bool metric_sum(const char *text, const char *name, const char *label, double *ret)
{
	size_t nl = strlen(name);
	bool seen = false;
	double sum = 0;

	for (const char *l = text; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL) {
		const char *end = strchr(l, '\n'), *sp, *lb;
		char num[64];
		size_t len = end ? (size_t)(end - l) : strlen(l);
		char *ep;
		double v;

		if (*l == '#' || len <= nl || strncmp(l, name, nl) != 0 || (l[nl] != ' ' && l[nl] != '{') ||
		    (!label && l[nl] != ' '))
			continue;
		sp = memrchr(l, ' ', len);
		if (!sp || (size_t)(l + len - sp - 1) >= sizeof(num))
			continue;
		if (label && *label) {
			lb = memchr(l, '{', len);
			if (!lb || !memmem(lb, (size_t)(sp - lb), label, strlen(label)))
				continue;
		}
		memcpy(num, sp + 1, (size_t)(l + len - sp - 1));
		num[l + len - sp - 1] = '\0';
		errno = 0;
		v = strtod(num, &ep);
		if (errno || ep == num)
			continue;
		sum += v;
		seen = true;
	}
	if (seen)
		*ret = sum;
	return seen;
}

/* The name of the outbox depth gauge, once intents exist: the first
 * statemirror_outbox* sample that is not a counter, histogram or age. */
static bool metric_outbox(const char *text, double *ret)
{
	static const char pre[] = "statemirror_outbox";

	for (const char *l = text; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL) {
		char name[128];
		size_t n = 0;

		if (strncmp(l, pre, sizeof(pre) - 1) != 0)
			continue;
		while (n + 1 < sizeof(name) && l[n] && l[n] != ' ' && l[n] != '{' && l[n] != '\n') {
			name[n] = l[n];
			n++;
		}
		name[n] = '\0';
		if (strstr(name, "_total") || strstr(name, "_seconds") || strstr(name, "age") ||
		    strstr(name, "_max") || strstr(name, "_bucket") || strstr(name, "_count") ||
		    strstr(name, "_sum"))
			continue;
		return metric_sum(text, name, NULL, ret) || metric_sum(text, name, "", ret);
	}
	return false;
}

/* Appends "reason N, ..." for each statemirror_stale_keys{reason="..."} sample
 * above zero (the daemon counts stale keys by reason once it knows them). */
static int stale_by_reason(const char *text, struct buf *out, json_t *obj)
{
	static const char pre[] = "statemirror_stale_keys{";
	int r;

	for (const char *l = text; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL) {
		const char *rs, *re, *sp, *end = strchr(l, '\n');
		size_t len = end ? (size_t)(end - l) : strlen(l);
		char *ep;
		double v;

		if (strncmp(l, pre, sizeof(pre) - 1) != 0 ||
		    !(rs = memmem(l, len, "reason=\"", 8)) ||
		    !(re = memchr(rs + 8, '"', (size_t)(l + len - rs - 8))) ||
		    !(sp = memrchr(l, ' ', len)))
			continue;
		v = strtod(sp + 1, &ep);
		if (ep == sp + 1 || v <= 0)
			continue;
		if (obj) {
			char name[64];
			size_t n = (size_t)(re - rs - 8) < sizeof(name) - 1 ? (size_t)(re - rs - 8)
									: sizeof(name) - 1;

			memcpy(name, rs + 8, n);
			name[n] = '\0';
			if (json_object_set_new(obj, name, json_integer((json_int_t)v)) < 0)
				return -ENOMEM;
		}
		if (out && ((out->len && (r = buf_puts(out, ", ")) < 0) ||
			    (r = buf_append(out, rs + 8, (size_t)(re - rs - 8))) < 0 ||
			    (r = buf_printf(out, " %.0f", v)) < 0))
			return r;
	}
	return 0;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* Messages received: statemirror_received_total, else the sum of the apply outcomes. */
static bool metric_ingest(const char *text, double *ret)
{
	return metric_sum(text, "statemirror_received_total", NULL, ret) ||
	       metric_sum(text, "statemirror_messages_total", "", ret);
}

/* ---- status ----------------------------------------------------------- */

static int cmd_status(struct ctl *x)
{
	struct ctl_reply ready = { 0 }, m1 = { 0 }, m2 = { 0 };
	json_t *rj = NULL, *stale = NULL, *rejects = NULL, *out = NULL;
	double t1, t2 = 0, keys = 0, nstale = 0, conn = 0, synced = 0, rejected = 0, i1 = 0, i2 = 0,
	       outbox = 0;
	bool have_rate = false, have_outbox, have_synced;
	const char *reason = NULL, *mt;
	bool is_ready;
	int rc;

	x->said_unsynced = true; /* status says so itself */
	if ((rc = get_raw(x, "/readyz", true, &ready)) != EXIT_OK)
		return rc;
	if (ready.status != 200 && ready.status != 503) {
		rc = http_failure(x, "/readyz", &ready);
		goto out;
	}
	is_ready = ready.status == 200;
	rj = json_loadb(ready.body.data, ready.body.len, 0, NULL);
	if (rj)
		reason = jstr(rj, "reason");
	t1 = now_s();
	if ((rc = get_raw(x, "/metrics", false, &m1)) != EXIT_OK)
		goto out;
	if ((rc = get_json(x, "/v1/stale?limit=1", &stale, NULL)) != EXIT_OK ||
	    (rc = get_json(x, "/v1/rejects", &rejects, NULL)) != EXIT_OK)
		goto out;
	if (x->interval_ms > 0) {
		long left = x->interval_ms - (long)((now_s() - t1) * 1000);

		if (left > 0)
			sleep_ms(left);
		t2 = now_s();
		if ((rc = get_raw(x, "/metrics", false, &m2)) != EXIT_OK)
			goto out;
		have_rate = metric_ingest(m1.body.data, &i1) && metric_ingest(m2.body.data, &i2) &&
			    t2 > t1;
	}
	mt = m2.body.data ? m2.body.data : m1.body.data;
	{
		metric_sum(mt, "statemirror_keys", NULL, &keys);
		if (!metric_sum(mt, "statemirror_stale_keys", NULL, &nstale) &&
		    !metric_sum(mt, "statemirror_stale_keys", "", &nstale))
			nstale = (double)jint(stale, "count");
		metric_sum(mt, "statemirror_broker_connected", NULL, &conn);
		have_synced = metric_sum(mt, "statemirror_synced", NULL, &synced);
		if (!metric_sum(mt, "statemirror_rejects_total", "", &rejected))
			metric_sum(mt, "statemirror_messages_total", "result=\"rejected\"", &rejected);
		have_outbox = metric_outbox(mt, &outbox);
	}
	if (!have_synced)
		synced = is_ready;

	if (x->json) {
		json_t *groups = json_object_get(stale, "groups");
		json_t *items = json_object_get(rejects, "items");

		out = json_pack("{s:b, s:s?, s:b, s:b, s:I, s:I}",
				"ready", is_ready, "reason", reason,
				"broker_connected", conn > 0, "synced", synced > 0,
				"keys", (json_int_t)keys, "stale_keys", (json_int_t)nstale);
		if (out && (json_object_set(out, "stale_groups", groups ? groups : json_null()) < 0 ||
			    json_object_set_new(out, "ingest_per_s",
						have_rate ? json_real((i2 - i1) / (t2 - t1)) : json_null()) < 0 ||
			    json_object_set_new(out, "rejects_total", json_integer((json_int_t)rejected)) < 0 ||
			    json_object_set_new(out, "stale_by_reason", json_object()) < 0 ||
			    stale_by_reason(mt, NULL, json_object_get(out, "stale_by_reason")) < 0 ||
			    json_object_set(out, "recent_rejects", items ? items : json_null()) < 0 ||
			    (have_outbox &&
			     json_object_set_new(out, "outbox", json_integer((json_int_t)outbox)) < 0))) {
			json_decref(out);
			out = NULL;
		}
		if (!out) {
			errmsg("out of memory");
			rc = EXIT_HTTP;
			goto out;
		}
		print_json(out);
	} else {
		const json_t *g, *groups = json_object_get(stale, "groups");
		const json_t *last = json_array_get(json_object_get(rejects, "items"), 0);
		size_t i;

		printf("%sstatemirrord%s at %s\n", col(x, C_BOLD), col(x, C_RESET), x->where);
		printf("  ready     %s%s%s%s%s\n", col(x, is_ready ? C_GREEN : C_RED),
		       is_ready ? "yes" : "no", col(x, C_RESET), reason ? ": " : "", reason ? reason : "");
		printf("  broker    %s%s%s\n", col(x, conn > 0 ? C_GREEN : C_RED),
		       conn > 0 ? "connected" : "disconnected", col(x, C_RESET));
		printf("  synced    %s%s%s\n", col(x, synced > 0 ? C_GREEN : C_YELLOW),
		       synced > 0 ? "yes" : "no", col(x, C_RESET));
		printf("  keys      %.0f\n", keys);
		struct buf by;

		buf_init(&by, 4096);
		if (stale_by_reason(mt, &by, NULL) < 0)
			buf_reset(&by);
		printf("  stale     %s%.0f%s%s%s%s\n", col(x, nstale > 0 ? C_RED : C_RESET), nstale,
		       col(x, C_RESET), by.len ? "  (" : "", by.len ? by.data : "", by.len ? ")" : "");
		buf_free(&by);
		json_array_foreach(groups, i, g) {
			const char *why = jstr(g, "reason");

			if (i == 5) {
				printf("            ... %zu more groups\n", json_array_size(groups) - 5);
				break;
			}
			printf("            %s  %" JSON_INTEGER_FORMAT "%s%s%s\n", jstr(g, "prefix"),
			       jint(g, "count"), why ? "  (" : "", why ? why : "", why ? ")" : "");
		}
		if (have_rate)
			printf("  ingest    %.1f msg/s\n", (i2 - i1) / (t2 - t1));
		printf("  rejects   %.0f", rejected);
		if (last)
			printf("  (last: %s on %s at %s)", jstr(last, "reason") ? jstr(last, "reason") : "?",
			       jstr(last, "topic") ? jstr(last, "topic") : "?",
			       jstr(last, "time") ? jstr(last, "time") : "?");
		putchar('\n');
		if (have_outbox)
			printf("  outbox    %.0f\n", outbox);
	}
	rc = is_ready ? EXIT_OK : EXIT_NOT_READY;
out:
	json_decref(out);
	json_decref(rj);
	json_decref(stale);
	json_decref(rejects);
	ctl_reply_free(&ready);
	ctl_reply_free(&m1);
	ctl_reply_free(&m2);
	return rc;
}

/* ---- get -------------------------------------------------------------- */

static void field(const struct ctl *x, const char *name, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void field(const struct ctl *x, const char *name, const char *fmt, ...)
{
	va_list ap;

	printf("%s%-11s%s ", col(x, C_DIM), name, col(x, C_RESET));
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
}

static int cmd_get(struct ctl *x, const char *topic)
{
	struct buf path;
	json_t *rec = NULL;
	char age[32], cad[32], *val = NULL;
	const char *s;
	int rc;

	buf_init(&path, 0);
	if (buf_puts(&path, "/v1/keys/") < 0 || ctl_pct_encode(&path, topic, true) < 0) {
		buf_free(&path);
		errmsg("out of memory");
		return EXIT_HTTP;
	}
	{
		struct ctl_reply rep;

		rc = get_raw(x, path.data, true, &rep);
		buf_free(&path);
		if (rc != EXIT_OK)
			return rc;
		if (rep.status == 404) {
			errmsg("no such key: %s", topic);
			ctl_reply_free(&rep);
			return EXIT_NOT_FOUND;
		}
		if (rep.status != 200) {
			rc = http_failure(x, topic, &rep);
			ctl_reply_free(&rep);
			return rc;
		}
		rec = json_loadb(rep.body.data, rep.body.len, 0, NULL);
		ctl_reply_free(&rep);
		if (!json_is_object(rec)) {
			errmsg("%s: the answer is not a JSON record", topic);
			json_decref(rec);
			return EXIT_HTTP;
		}
	}
	if (x->json) {
		print_json(rec);
		json_decref(rec);
		return EXIT_OK;
	}
	val = value_text(rec);
	fmt_ms(age, sizeof(age), jint(rec, "age_ms"));
	fmt_ms(cad, sizeof(cad), jint(rec, "cadence_ms"));
	field(x, "topic", "%s%s%s", col(x, C_BOLD), jstr(rec, "topic") ? jstr(rec, "topic") : topic,
	      col(x, C_RESET));
	field(x, "value", "%s", val ? val : "");
	field(x, "ts", "%s (%s)", jstr(rec, "ts") ? jstr(rec, "ts") : "-",
	      jstr(rec, "ts_source") ? jstr(rec, "ts_source") : "-");
	field(x, "last seen", "%s (%s ago)", jstr(rec, "last_seen") ? jstr(rec, "last_seen") : "-", age);
	if ((s = jstr(rec, "cadence_source")) && jint(rec, "cadence_ms") >= 0)
		field(x, "cadence", "%s (%s)", cad, s);
	else
		field(x, "cadence", "%s", s ? "never (rule)" : "unknown");
	if (json_is_true(json_object_get(rec, "stale"))) {
		const char *why = jstr(rec, "stale_reason");

		field(x, "stale", "%syes%s since %s%s%s", col(x, C_RED), col(x, C_RESET),
		      jstr(rec, "stale_since") ? jstr(rec, "stale_since") : "?",
		      why ? ", reason " : "", why ? why : "");
	} else {
		field(x, "stale", "%sno%s", col(x, C_GREEN), col(x, C_RESET));
	}
	field(x, "retained", "%s", json_is_true(json_object_get(rec, "retained")) ? "yes" : "no");
	field(x, "updates", "%" JSON_INTEGER_FORMAT, jint(rec, "updates"));
	field(x, "rev", "%" JSON_INTEGER_FORMAT, jint(rec, "rev"));
	free(val);
	json_decref(rec);
	return EXIT_OK;
}

/* ---- ls, stale: paged listings ---------------------------------------- */

struct table {
	size_t wtopic;          /* set by the first page, grows after */
	bool header_done;
	bool stale_view;        /* columns of `stale` */
	size_t rows;
};

static void table_widths(struct table *t, const json_t *items)
{
	const json_t *rec;
	size_t i;

	json_array_foreach(items, i, rec) {
		const char *topic = jstr(rec, "topic");
		size_t w = topic ? text_width(topic) : 0;

		if (w > t->wtopic && w <= TOPIC_COL_MAX)
			t->wtopic = w;
	}
	if (t->wtopic < 5)
		t->wtopic = 5;
}

static void table_header(const struct ctl *x, struct table *t)
{
	printf("%s", col(x, C_BOLD));
	cell("TOPIC", t->wtopic);
	if (t->stale_view) {
		cell("STALE SINCE", 24);
		cell("AGE", 8);
		cell("CADENCE", 8);
		fputs("REASON", stdout);
	} else {
		cell("AGE", 8);
		cell("CADENCE", 8);
		cell("STALE", 5);
		fputs("VALUE", stdout);
	}
	printf("%s\n", col(x, C_RESET));
	t->header_done = true;
}

static void table_row(const struct ctl *x, struct table *t, const json_t *rec)
{
	const char *topic = jstr(rec, "topic");
	char age[32], cad[32];
	bool stale = json_is_true(json_object_get(rec, "stale"));
	size_t used;

	fmt_ms(age, sizeof(age), jint(rec, "age_ms"));
	fmt_ms(cad, sizeof(cad), jint(rec, "cadence_ms"));
	cell(topic ? topic : "?", t->wtopic);
	used = (topic && text_width(topic) > t->wtopic ? text_width(topic) : t->wtopic) + 2;
	if (t->stale_view) {
		const char *why = jstr(rec, "stale_reason");

		cell(jstr(rec, "stale_since") ? jstr(rec, "stale_since") : "-", 24);
		cell(age, 8);
		cell(cad, 8);
		fputs(why ? why : "-", stdout);
	} else {
		char *val = value_text(rec);

		cell(age, 8);
		cell(cad, 8);
		printf("%s", col(x, stale ? C_RED : C_GREEN));
		cell(stale ? "yes" : "no", 5);
		printf("%s", col(x, C_RESET));
		used += 10 + 10 + 7;
		tail_cell(x, val ? val : "", used);
		free(val);
	}
	putchar('\n');
	t->rows++;
}

/*
** Walks every page of base (a path with its query so far), following
** `next`. For each page, calls page_fn. Returns an exit code.
*/
typedef int (*page_fn)(struct ctl *x, json_t *page, bool first, void *ctx);

static int walk_pages(struct ctl *x, const char *base, page_fn fn, void *ctx)
{
	char *after = NULL;
	bool first = true;
	int rc = EXIT_OK;

	for (;;) {
		struct buf path;
		json_t *page = NULL;
		const char *next;
		char lim[24];

		buf_init(&path, 0);
		snprintf(lim, sizeof(lim), "%ld", x->page);
		if (buf_puts(&path, base) < 0 || add_param(&path, "limit", lim) < 0 ||
		    (after && add_param(&path, "after", after) < 0)) {
			buf_free(&path);
			errmsg("out of memory");
			rc = EXIT_HTTP;
			break;
		}
		rc = get_json(x, path.data, &page, NULL);
		buf_free(&path);
		if (rc != EXIT_OK)
			break;
		if (!json_is_array(json_object_get(page, "items"))) {
			errmsg("%s: the answer has no items", base);
			json_decref(page);
			rc = EXIT_HTTP;
			break;
		}
		rc = fn(x, page, first, ctx);
		first = false;
		next = jstr(page, "next");
		free(after);
		after = next ? strdup(next) : NULL;
		json_decref(page);
		if (rc != EXIT_OK || !next)
			break;
		if (!after) {
			errmsg("out of memory");
			rc = EXIT_HTTP;
			break;
		}
	}
	free(after);
	return rc;
}

/* --json: {"items":[...every page...],"next":null}, streamed page by page. */
struct json_stream {
	size_t n;
	json_t *top;            /* stale: the first page's other members */
};

static int ls_page(struct ctl *x, json_t *page, bool first, void *ctx)
{
	struct table *t = ctx;
	const json_t *rec;
	size_t i;

	if (first)
		table_widths(t, json_object_get(page, "items"));
	json_array_foreach(json_object_get(page, "items"), i, rec) {
		if (!t->header_done)
			table_header(x, t);
		table_row(x, t, rec);
	}
	return EXIT_OK;
}

static int json_page(struct ctl *x, json_t *page, bool first, void *ctx)
{
	struct json_stream *js = ctx;
	const json_t *rec;
	size_t i;

	if (first) {
		json_t *top = json_copy(page);
		char *s;
		size_t len;

		if (!top)
			return EXIT_HTTP;
		json_object_del(top, "items");
		json_object_del(top, "next");
		s = json_dumps_exact(top, JSON_COMPACT | JSON_PRESERVE_ORDER);
		json_decref(top);
		if (!s)
			return EXIT_HTTP;
		len = strlen(s);
		/* "{...}" -> "{...," then "items":[ */
		fwrite(s, 1, len - 1, stdout);
		fputs(len > 2 ? ",\"items\":[" : "\"items\":[", stdout);
		free(s);
	}
	json_array_foreach(json_object_get(page, "items"), i, rec) {
		char *s = json_dumps_exact(rec, JSON_COMPACT | JSON_PRESERVE_ORDER);

		if (!s)
			return EXIT_HTTP;
		if (js->n++)
			putchar(',');
		fputs(s, stdout);
		free(s);
	}
	return EXIT_OK;
}

static int list(struct ctl *x, const char *base, page_fn human, struct table *t)
{
	struct json_stream js = { 0 };
	int rc;

	if (!x->json)
		return walk_pages(x, base, human, t);
	rc = walk_pages(x, base, json_page, &js);
	if (rc == EXIT_OK)
		puts("],\"next\":null}");
	else if (js.n)
		putchar('\n'); /* what was printed is cut short: the exit code says so */
	return rc;
}

static int cmd_ls(struct ctl *x, const char *filter)
{
	struct table t = { 0 };
	struct buf base;
	int rc;

	buf_init(&base, 0);
	if (buf_puts(&base, "/v1/keys") < 0 || add_param(&base, "filter", filter ? filter : "#") < 0 ||
	    (x->stale_only >= 0 && add_param(&base, "stale", x->stale_only ? "true" : "false") < 0)) {
		buf_free(&base);
		errmsg("out of memory");
		return EXIT_HTTP;
	}
	rc = list(x, base.data, ls_page, &t);
	buf_free(&base);
	if (rc == EXIT_OK && !x->json && !t.rows && x->tty)
		fprintf(stderr, "no keys\n");
	return rc;
}

static int stale_page(struct ctl *x, json_t *page, bool first, void *ctx)
{
	struct table *t = ctx;

	if (first) {
		const json_t *g, *groups = json_object_get(page, "groups");
		json_int_t n = jint(page, "count");
		size_t i, wp = 6;

		printf("%s%" JSON_INTEGER_FORMAT " stale key%s%s\n", col(x, n > 0 ? C_RED : C_GREEN),
		       n < 0 ? 0 : n, n == 1 ? "" : "s", col(x, C_RESET));
		json_array_foreach(groups, i, g) {
			const char *p = jstr(g, "prefix");

			if (p && text_width(p) > wp && text_width(p) <= TOPIC_COL_MAX)
				wp = text_width(p);
		}
		if (json_array_size(groups)) {
			printf("\n%s", col(x, C_BOLD));
			cell("GROUP", wp);
			cell("COUNT", 6);
			printf("REASON%s\n", col(x, C_RESET));
			json_array_foreach(groups, i, g) {
				char cnt[24];
				const char *why = jstr(g, "reason");

				snprintf(cnt, sizeof(cnt), "%" JSON_INTEGER_FORMAT, jint(g, "count"));
				cell(jstr(g, "prefix") ? jstr(g, "prefix") : "?", wp);
				cell(cnt, 6);
				puts(why ? why : "-");
			}
		}
		if (json_array_size(json_object_get(page, "items")))
			putchar('\n');
		table_widths(t, json_object_get(page, "items"));
	}
	return ls_page(x, page, false, t);
}

static int cmd_stale(struct ctl *x, const char *filter)
{
	struct table t = { .stale_view = true };
	struct buf base;
	int rc;

	buf_init(&base, 0);
	if (buf_puts(&base, "/v1/stale") < 0 || (filter && add_param(&base, "filter", filter) < 0)) {
		buf_free(&base);
		errmsg("out of memory");
		return EXIT_HTTP;
	}
	rc = list(x, base.data, stale_page, &t);
	buf_free(&base);
	return rc;
}

/* ---- rejects ---------------------------------------------------------- */

static int cmd_rejects(struct ctl *x)
{
	const json_t *rec, *items;
	json_t *j = NULL;
	size_t i, wt = 5, wr = 6;
	int rc;

	if ((rc = get_json(x, "/v1/rejects", &j, NULL)) != EXIT_OK)
		return rc;
	if (x->json) {
		print_json(j);
		json_decref(j);
		return EXIT_OK;
	}
	items = json_object_get(j, "items");
	json_array_foreach(items, i, rec) {
		const char *tp = jstr(rec, "topic"), *rs = jstr(rec, "reason");

		if (tp && text_width(tp) > wt && text_width(tp) <= TOPIC_COL_MAX)
			wt = text_width(tp);
		if (rs && strlen(rs) > wr)
			wr = strlen(rs);
	}
	if (!json_array_size(items)) {
		printf("no rejected messages\n");
		json_decref(j);
		return EXIT_OK;
	}
	printf("%s", col(x, C_BOLD));
	cell("TIME", 24);
	cell("REASON", wr);
	cell("TOPIC", wt);
	cell("SIZE", 7);
	printf("PAYLOAD%s\n", col(x, C_RESET));
	json_array_foreach(items, i, rec) {
		char size[24], *val = value_text(rec);
		const char *tp = jstr(rec, "topic");
		size_t used = 26 + wr + 2 + (tp && text_width(tp) > wt ? text_width(tp) : wt) + 2 + 9;

		snprintf(size, sizeof(size), "%" JSON_INTEGER_FORMAT, jint(rec, "payload_size"));
		cell(jstr(rec, "time") ? jstr(rec, "time") : "-", 24);
		printf("%s", col(x, C_YELLOW));
		cell(jstr(rec, "reason") ? jstr(rec, "reason") : "?", wr);
		printf("%s", col(x, C_RESET));
		cell(tp ? tp : "?", wt);
		cell(size, 7);
		tail_cell(x, val ? val : "", used);
		putchar('\n');
		free(val);
	}
	json_decref(j);
	return EXIT_OK;
}

/* ---- watch ------------------------------------------------------------ */

struct watch {
	struct ctl *x;
	struct buf last_id;     /* the newest id: seen, sent as Last-Event-ID */
	uint64_t last_rev;
	bool have_last;
	bool resumed;           /* this connection asked to resume */
	bool connected;         /* a 200 was seen at least once */
	bool unauthorised;
};

static bool parse_u64(const char *s, uint64_t *ret)
{
	char *ep;
	unsigned long long v;

	if (!s || *s < '0' || *s > '9')
		return false;
	errno = 0;
	v = strtoull(s, &ep, 10);
	if (errno || *ep)
		return false;
	*ret = v;
	return true;
}

/* "2026-12-02T15:36:29.402Z" -> "15:36:29.402Z" */
static const char *time_part(const char *rfc3339)
{
	const char *t = rfc3339 ? strchr(rfc3339, 'T') : NULL;

	return t ? t + 1 : (rfc3339 ? rfc3339 : "-");
}

static int on_event(const struct ctl_sse_event *ev, void *ctx)
{
	struct watch *w = ctx;
	struct ctl *x = w->x;
	uint64_t rev = 0;
	json_t *data;
	bool change;

	w->connected = true;
	data = json_loadb(ev->data, ev->data_len, 0, NULL);
	change = !strcmp(ev->event, "update") || !strcmp(ev->event, "delete") ||
		 !strcmp(ev->event, "stale") || !strcmp(ev->event, "fresh");
	/* A snapshot sent in answer to a resume: what is at or before the last
	 * revision seen was shown already. */
	if (change && !ev->id && w->resumed && w->have_last && data &&
	    jint(data, "rev") >= 0 && (uint64_t)jint(data, "rev") <= w->last_rev) {
		json_decref(data);
		return 0;
	}
	if (ev->id) {
		buf_reset(&w->last_id);
		if (buf_puts(&w->last_id, ev->id) < 0) {
			json_decref(data);
			return -ENOMEM;
		}
		w->have_last = true;
		if (parse_u64(ev->id, &rev))
			w->last_rev = rev;
	}
	if (x->json) {
		json_t *o = json_pack("{s:s, s:s?, s:O?}", "event", ev->event, "id", ev->id, "data", data);

		if (o && !data)
			json_object_set_new(o, "data", json_stringn(ev->data, ev->data_len));
		if (o && !ev->id)
			json_object_set_new(o, "id", json_null());
		if (o)
			print_json(o);
		json_decref(o);
	} else if (!strcmp(ev->event, "synced")) {
		if (w->resumed)
			fprintf(stderr, "%s: the daemon could not replay the changes since the last one seen: "
				"a fresh snapshot came first (rev %s)\n", prog, ev->id ? ev->id : "?");
		else
			fprintf(stderr, "%s: snapshot done: %" JSON_INTEGER_FORMAT " keys, rev %s\n", prog,
				data ? jint(data, "count") : -1, ev->id ? ev->id : "?");
	} else if (change && data) {
		enum color c = C_RESET;
		const char *when = jstr(data, "received");
		char *val = NULL;

		if (!strcmp(ev->event, "delete")) {
			c = C_YELLOW;
			when = jstr(data, "ts");
		} else if (!strcmp(ev->event, "stale")) {
			c = C_RED;
			when = jstr(data, "stale_since");
		} else if (!strcmp(ev->event, "fresh")) {
			c = C_GREEN;
			when = jstr(data, "last_seen");
		} else {
			c = C_CYAN;
			val = value_text(data);
		}
		printf("%s%s%s  %s%-6s%s  %s", col(x, C_DIM), time_part(when), col(x, C_RESET),
		       col(x, c), ev->event, col(x, C_RESET), jstr(data, "topic") ? jstr(data, "topic") : "?");
		if (val)
			printf("  %s", val);
		else if (!strcmp(ev->event, "stale") && jstr(data, "stale_reason"))
			printf("  (%s)", jstr(data, "stale_reason"));
		putchar('\n');
		free(val);
	}
	fflush(stdout);
	json_decref(data);
	return 0;
}

static int cmd_watch(struct ctl *x, const char *filter)
{
	struct watch w = { .x = x };
	long backoff = 100;
	int rc = EXIT_OK;

	buf_init(&w.last_id, 256);
	if (x->since) {
		uint64_t v;

		if (!parse_u64(x->since, &v)) {
			errmsg("--since wants a revision number: %s", x->since);
			return EXIT_USAGE;
		}
		if (buf_puts(&w.last_id, x->since) < 0)
			return EXIT_HTTP;
		w.last_rev = v;
		w.have_last = true;
	}
	for (;;) {
		struct ctl_reply rep = { 0 };
		struct buf path;
		int r;

		buf_init(&path, 0);
		if (buf_puts(&path, "/v1/watch") < 0 || add_param(&path, "filter", filter ? filter : "#") < 0 ||
		    (x->snapshot && !w.have_last && add_param(&path, "snapshot", "true") < 0)) {
			buf_free(&path);
			rc = EXIT_HTTP;
			errmsg("out of memory");
			break;
		}
		w.resumed = w.have_last;
		r = ctl_stream(x->conn, path.data, w.have_last ? w.last_id.data : NULL, WATCH_IDLE_MS,
			       on_event, &w, &rep);
		buf_free(&path);
		if (r == -EPROTO) {
			if (rep.status == 503 && w.connected) { /* every listener slot is taken: wait */
				ctl_reply_free(&rep);
				sleep_ms(backoff);
				backoff = backoff * 2 > WATCH_BACKOFF_MAX_MS ? WATCH_BACKOFF_MAX_MS : backoff * 2;
				continue;
			}
			rc = http_failure(x, "/v1/watch", &rep);
			ctl_reply_free(&rep);
			break;
		}
		if (r == -ENOMEM || r > 0) {
			errmsg("out of memory");
			rc = EXIT_HTTP;
			break;
		}
		if (r == -EIO && ctl_conn_fail(x->conn) != CTL_FAIL_UNREACHABLE) {
			rc = transport_failure(x, "/v1/watch");
			break;
		}
		if (!w.connected) {
			rc = transport_failure(x, "/v1/watch");
			break;
		}
		if (backoff == 100 || x->tty)
			fprintf(stderr, "%s: %s; reconnecting%s%s\n", prog, ctl_conn_error(x->conn),
				w.have_last ? " from rev " : "", w.have_last ? w.last_id.data : "");
		sleep_ms(backoff);
		backoff = backoff * 2 > WATCH_BACKOFF_MAX_MS ? WATCH_BACKOFF_MAX_MS : backoff * 2;
		if (r == 0)
			backoff = 100; /* the stream ran, then ended: start again quickly */
	}
	buf_free(&w.last_id);
	return rc;
}

/* ---- intent ----------------------------------------------------------- */

/* The value as the command line gives it: JSON when it parses as JSON
 * (21.5, true, "x", {"a":1}), else the text as a JSON string. */
static json_t *intent_value(const char *arg)
{
	json_t *v = json_loads(arg, JSON_DECODE_ANY, NULL);

	return v ? v : json_string(arg);
}

static int cmd_intent(struct ctl *x, const char *topic, const char *value)
{
	struct ctl_reply rep = { 0 };
	const char *state;
	json_t *body, *val, *rec = NULL;
	struct buf path;
	char *text = NULL, *req = NULL, *obs = NULL;
	int rc, r;

	if (!(val = intent_value(value))) {
		errmsg("the value is not valid UTF-8 text: %s", value);
		return EXIT_USAGE;
	}
	body = json_pack("{s:o}", "value", val);
	if (body && x->confirm) {
		json_t *cf = json_pack("{s:s}", "topic", x->confirm);

		if (cf && x->member)
			json_object_set_new(cf, "member", json_string(x->member));
		json_object_set_new(body, "confirm", cf);
	}
	if (body && x->corr_id)
		json_object_set_new(body, "correlation_id", json_string(x->corr_id));
	if (body && x->expire)
		json_object_set_new(body, "expire", json_string(x->expire));
	if (body && x->confirm_timeout)
		json_object_set_new(body, "timeout", json_string(x->confirm_timeout));
	buf_init(&path, 0);
	if (!body || !(text = json_dumps_exact(body, JSON_COMPACT)) || buf_puts(&path, "/v1/intents/") < 0 ||
	    ctl_pct_encode(&path, topic, true) < 0 || (x->wait && add_param(&path, "wait", x->wait) < 0)) {
		errmsg("out of memory");
		rc = EXIT_HTTP;
		goto out;
	}
	r = ctl_post_json(x->conn, path.data, text, &rep);
	if (r == -ENOMEM) {
		errmsg("%s: out of memory", path.data);
		rc = EXIT_HTTP;
		goto out;
	}
	if (r < 0) {
		rc = transport_failure(x, path.data);
		goto out;
	}
	if (rep.status != 200 && rep.status != 202) {
		rc = http_failure(x, path.data, &rep);
		goto out;
	}
	if (!(rec = json_loadb(rep.body.data, rep.body.len, 0, NULL)) || !(state = jstr(rec, "state"))) {
		errmsg("%s: the answer is not an intent record", path.data);
		rc = EXIT_HTTP;
		goto out;
	}
	if (x->json) {
		print_json(rec);
	} else {
		bool good = !strcmp(state, "confirmed") || !strcmp(state, "published");
		const json_t *o = json_object_get(rec, "observed");

		req = json_dumps_exact(json_object_get(rec, "requested"), JSON_COMPACT | JSON_ENCODE_ANY);
		obs = o && !json_is_null(o) ? json_dumps_exact(o, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
		printf("intent %" JSON_INTEGER_FORMAT "  %s%s%s  requested %s  observed %s\n",
		       jint(rec, "id"), col(x, good ? C_GREEN : x->wait ? C_RED : C_YELLOW), state,
		       col(x, C_RESET), req ? req : "?", obs ? obs : "-");
	}
	rc = EXIT_OK;
	if (x->wait && rep.status == 202) {
		if (!x->json)
			fprintf(stderr, "%s: no outcome within --wait %s (ask GET /v1/intents/%"
				JSON_INTEGER_FORMAT " later)\n", prog, x->wait, jint(rec, "id"));
		rc = EXIT_UNDECIDED;
	} else if (x->wait && strcmp(state, "confirmed") != 0 && strcmp(state, "published") != 0) {
		rc = EXIT_NOT_DONE;
	}
out:
	free(req);
	free(obs);
	free(text);
	json_decref(rec);
	json_decref(body);
	buf_free(&path);
	ctl_reply_free(&rep);
	return rc;
}

/* ---- arguments -------------------------------------------------------- */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: %s [OPTIONS] COMMAND [ARGS]\n"
		"\n"
		"Commands:\n"
		"  status            broker link, sync, keys, stale, ingest rate, rejects (exit 3: not ready)\n"
		"  get TOPIC         one key: value, age, cadence, staleness\n"
		"  ls [FILTER]       keys matching an MQTT filter (default #), every page\n"
		"  stale [FILTER]    stale keys, by group\n"
		"  rejects           the most recent rejected messages\n"
		"  watch [FILTER]    follow changes live; resumes after a daemon restart\n"
		"  intent TOPIC VALUE  ask the owner of TOPIC for VALUE (JSON, else a string)\n"
		"\n"
		"Options:\n"
		"  -u, --url URL         the daemon's address (default http://127.0.0.1:8080)\n"
		"  -s, --socket PATH     talk to a unix socket instead\n"
		"  -t, --token-file FILE bearer token (else $STATEMIRROR_TOKEN)\n"
		"  -j, --json            print the API's JSON\n"
		"      --color WHEN      auto (default: on a terminal, unless NO_COLOR), always, never\n"
		"      --timeout SECS    per request (default 10)\n"
		"      --page-size N     ls, stale: keys per request, 1..10000 (default 1000)\n"
		"      --stale, --fresh  ls: only stale, only fresh keys\n"
		"      --interval MS     status: time between the two samples of the ingest rate (default 1000; 0: none)\n"
		"      --snapshot        watch: first every matching key, then the changes\n"
		"      --since REV       watch: the changes after revision REV\n"
		"      --wait D          intent: wait up to D (10s, 1m) for the outcome\n"
		"      --confirm TOPIC   intent: the state topic that shows the outcome\n"
		"      --member NAME     intent: the member of its payload to compare (default value)\n"
		"      --correlation-id ID, --expire D, --confirm-timeout D   intent: as the API takes them\n"
		"  -h, --help            this text\n"
		"  -V, --version\n"
		"\n"
		"Exit codes: 0 ok, 1 usage, 2 daemon unreachable, 3 not ready, 4 unauthorised,\n"
		"5 not found, 6 other HTTP error; intent --wait: 7 overridden, timed out or expired,\n"
		"8 no outcome within the wait. See statemirrorctl(1).\n",
		prog);
}

static bool parse_long(const char *s, long lo, long hi, long *ret)
{
	char *ep;
	long v;

	errno = 0;
	v = strtol(s, &ep, 10);
	if (errno || ep == s || *ep || v < lo || v > hi)
		return false;
	*ret = v;
	return true;
}

/* The token file's first line, trimmed; the caller frees it. */
static int read_token(const char *path, char **ret)
{
	char line[4096];
	FILE *f = fopen(path, "re");
	size_t n;

	if (!f) {
		errmsg("cannot read the token file %s: %s", path, strerror(errno));
		return -errno;
	}
	if (!fgets(line, sizeof(line), f))
		line[0] = '\0';
	fclose(f);
	n = strlen(line);
	while (n && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' ' ||
		     line[n - 1] == '\t'))
		line[--n] = '\0';
	if (!n) {
		errmsg("the token file %s is empty", path);
		return -EINVAL;
	}
	if (!(*ret = strdup(line)))
		return -ENOMEM;
	return 0;
}

enum { OPT_COLOR = 256, OPT_TIMEOUT, OPT_PAGE, OPT_STALE, OPT_FRESH, OPT_INTERVAL, OPT_SNAPSHOT,
       OPT_SINCE, OPT_WAIT, OPT_CONFIRM, OPT_MEMBER, OPT_CORR, OPT_EXPIRE, OPT_CONFIRM_TIMEOUT };

/* A duration option: what the daemon parses, checked here first. */
static bool check_duration(const char *opt, const char *s, int64_t *ret_ms)
{
	int64_t ms;

	if (conf_parse_duration(s, &ms) < 0 || ms < 0) {
		errmsg("%s wants a duration (250ms, 10s, 5m): %s", opt, s);
		return false;
	}
	if (ret_ms)
		*ret_ms = ms;
	return true;
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "url", required_argument, NULL, 'u' },
		{ "socket", required_argument, NULL, 's' },
		{ "token-file", required_argument, NULL, 't' },
		{ "json", no_argument, NULL, 'j' },
		{ "color", required_argument, NULL, OPT_COLOR },
		{ "colour", required_argument, NULL, OPT_COLOR },
		{ "timeout", required_argument, NULL, OPT_TIMEOUT },
		{ "page-size", required_argument, NULL, OPT_PAGE },
		{ "stale", no_argument, NULL, OPT_STALE },
		{ "fresh", no_argument, NULL, OPT_FRESH },
		{ "interval", required_argument, NULL, OPT_INTERVAL },
		{ "snapshot", no_argument, NULL, OPT_SNAPSHOT },
		{ "since", required_argument, NULL, OPT_SINCE },
		{ "wait", required_argument, NULL, OPT_WAIT },
		{ "confirm", required_argument, NULL, OPT_CONFIRM },
		{ "member", required_argument, NULL, OPT_MEMBER },
		{ "correlation-id", required_argument, NULL, OPT_CORR },
		{ "expire", required_argument, NULL, OPT_EXPIRE },
		{ "confirm-timeout", required_argument, NULL, OPT_CONFIRM_TIMEOUT },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	struct ctl x = { .page = PAGE_DEFAULT, .interval_ms = 1000, .stale_only = -1 };
	struct ctl_conn_opts co = { 0 };
	const char *token_file = NULL, *color = "auto", *cmd, *env;
	char *token = NULL, err[256];
	long timeout_s = 10;
	int64_t wait_ms = 0;
	int opt, rc, nargs;

	while ((opt = getopt_long(argc, argv, "u:s:t:jhV", lo, NULL)) != -1) {
		switch (opt) {
		case 'u': co.url = optarg; break;
		case 's': co.socket = optarg; break;
		case 't': token_file = optarg; break;
		case 'j': x.json = true; break;
		case OPT_COLOR: color = optarg; break;
		case OPT_TIMEOUT:
			if (!parse_long(optarg, 1, 3600, &timeout_s)) {
				errmsg("--timeout wants 1..3600 seconds: %s", optarg);
				return EXIT_USAGE;
			}
			break;
		case OPT_PAGE:
			if (!parse_long(optarg, 1, PAGE_MAX, &x.page)) {
				errmsg("--page-size wants 1..%d: %s", PAGE_MAX, optarg);
				return EXIT_USAGE;
			}
			break;
		case OPT_STALE: x.stale_only = 1; break;
		case OPT_FRESH: x.stale_only = 0; break;
		case OPT_INTERVAL:
			if (!parse_long(optarg, 0, 60000, &x.interval_ms)) {
				errmsg("--interval wants 0..60000 milliseconds: %s", optarg);
				return EXIT_USAGE;
			}
			break;
		case OPT_SNAPSHOT: x.snapshot = true; break;
		case OPT_SINCE: x.since = optarg; break;
		case OPT_WAIT:
			if (!check_duration("--wait", optarg, &wait_ms))
				return EXIT_USAGE;
			x.wait = optarg;
			break;
		case OPT_CONFIRM: x.confirm = optarg; break;
		case OPT_MEMBER: x.member = optarg; break;
		case OPT_CORR: x.corr_id = optarg; break;
		case OPT_EXPIRE:
			if (!check_duration("--expire", optarg, NULL))
				return EXIT_USAGE;
			x.expire = optarg;
			break;
		case OPT_CONFIRM_TIMEOUT:
			if (!check_duration("--confirm-timeout", optarg, NULL))
				return EXIT_USAGE;
			x.confirm_timeout = optarg;
			break;
		case 'h': usage(stdout); return EXIT_OK;
		case 'V': printf("statemirrorctl %s\n", SM_VERSION); return EXIT_OK;
		default: usage(stderr); return EXIT_USAGE;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return EXIT_USAGE;
	}
	cmd = argv[optind];
	nargs = argc - optind - 1;
	x.tty = isatty(STDOUT_FILENO);
	env = getenv("NO_COLOR");
	if (!strcmp(color, "always"))
		x.color = true;
	else if (!strcmp(color, "never"))
		x.color = false;
	else if (!strcmp(color, "auto"))
		x.color = x.tty && !(env && *env);
	else {
		errmsg("--color wants auto, always or never: %s", color);
		return EXIT_USAGE;
	}
	if (x.tty) {
		struct winsize ws;

		if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 20)
			x.cols = ws.ws_col;
	}
	{
		static const struct { const char *name; int min, max; } cmds[] = {
			{ "status", 0, 0 }, { "get", 1, 1 }, { "ls", 0, 1 }, { "stale", 0, 1 },
			{ "rejects", 0, 0 }, { "watch", 0, 1 }, { "intent", 2, 2 },
		};
		size_t i;

		for (i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
			if (!strcmp(cmd, cmds[i].name))
				break;
		if (i == sizeof(cmds) / sizeof(cmds[0])) {
			errmsg("unknown command '%s' (status, get, ls, stale, rejects, watch, intent)", cmd);
			return EXIT_USAGE;
		}
		if (nargs < cmds[i].min || nargs > cmds[i].max) {
			errmsg("%s takes %s", cmd, cmds[i].max == 0 ? "no argument"
					    : cmds[i].min == 2 ? "two arguments (TOPIC VALUE)"
					    : cmds[i].min ? "one argument" : "at most one argument");
			return EXIT_USAGE;
		}
	}
	if (token_file) {
		if (read_token(token_file, &token) < 0)
			return EXIT_USAGE;
	} else if ((env = getenv("STATEMIRROR_TOKEN")) && *env) {
		if (!(token = strdup(env)))
			return EXIT_HTTP;
	}
	co.token = token;
	/* A POST that waits for its outcome takes the wait on top (the daemon caps it at 5 min). */
	co.timeout_ms = timeout_s * 1000 + (wait_ms < 300000 ? (long)wait_ms : 300000);
	if (x.member && !x.confirm) {
		errmsg("--member needs --confirm");
		free(token);
		return EXIT_USAGE;
	}
	if (ctl_conn_new(&co, &x.conn, err, sizeof(err)) < 0) {
		errmsg("%s", err);
		free(token);
		return EXIT_USAGE;
	}
	x.where = co.socket ? co.socket : co.url ? co.url : "http://127.0.0.1:8080";

	if (!strcmp(cmd, "status"))
		rc = cmd_status(&x);
	else if (!strcmp(cmd, "get"))
		rc = cmd_get(&x, argv[optind + 1]);
	else if (!strcmp(cmd, "ls"))
		rc = cmd_ls(&x, nargs ? argv[optind + 1] : NULL);
	else if (!strcmp(cmd, "stale"))
		rc = cmd_stale(&x, nargs ? argv[optind + 1] : NULL);
	else if (!strcmp(cmd, "rejects"))
		rc = cmd_rejects(&x);
	else if (!strcmp(cmd, "intent"))
		rc = cmd_intent(&x, argv[optind + 1], argv[optind + 2]);
	else
		rc = cmd_watch(&x, nargs ? argv[optind + 1] : NULL);
	if (fflush(stdout) != 0 && rc == EXIT_OK) {
		errmsg("cannot write the output: %s", strerror(errno));
		rc = EXIT_HTTP;
	}
	ctl_conn_free(x.conn);
	if (token) {
		explicit_bzero(token, strlen(token));
		free(token);
	}
	return rc;
}
