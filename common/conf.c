/* SPDX-License-Identifier: MIT */
/* conf.c: the table-driven INI parser, defaults, value parsers and validation. */
#include "common/conf.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/topic.h"

#define CONF_LINE_MAX 65536
#define WHY_MAX 512

/* ---- value parsers ------------------------------------------------------ */

/*
** Parse "DIGITS[.DIGITS]" at *s scaled by `unit` (truncating), advancing *s.
** Returns 0 or -EINVAL (no digits, overflow).
*/
static int parse_scaled(const char **s, int64_t unit, int64_t *ret)
{
	const char *p = *s;
	int64_t ip = 0, v, frac = 0, den = 1;

	if (!isdigit((unsigned char)*p))
		return -EINVAL;
	while (isdigit((unsigned char)*p)) {
		if (__builtin_mul_overflow(ip, 10, &ip) || __builtin_add_overflow(ip, *p - '0', &ip))
			return -EINVAL;
		p++;
	}
	if (*p == '.') {
		p++;
		if (!isdigit((unsigned char)*p))
			return -EINVAL;
		while (isdigit((unsigned char)*p)) {
			if (den < 1000000) { /* six digits: frac * unit stays in int64 */
				frac = frac * 10 + (*p - '0');
				den *= 10;
			}
			p++;
		}
	}
	if (__builtin_mul_overflow(ip, unit, &v))
		return -EINVAL;
	/* frac < 1e6 and unit <= 2^40: the product fits. */
	if (__builtin_add_overflow(v, frac * unit / den, &v))
		return -EINVAL;
	*s = p;
	*ret = v;
	return 0;
}

int conf_parse_duration(const char *s, int64_t *ret_ms)
{
	static const struct {
		const char *name;
		int64_t ms;
	} units[] = {
		{ "ms", 1 }, { "s", 1000 }, { "m", 60000 }, { "h", 3600000 }, { "d", 86400000 },
	};
	const char *p = s;
	int64_t total = 0;
	bool any = false;

	if (!s || !*s)
		return -EINVAL;
	while (*p) {
		const char *num = p, *u;
		int64_t part;
		size_t ulen, i;

		while (isdigit((unsigned char)*p) || *p == '.')
			p++;
		if (p == num)
			return -EINVAL;
		u = p;
		while (isalpha((unsigned char)*p))
			p++;
		ulen = (size_t)(p - u);
		if (ulen == 0) {
			/* A bare number is seconds, and only alone. */
			if (any || *p)
				return -EINVAL;
			i = 1;
		} else {
			for (i = 0; i < sizeof(units) / sizeof(units[0]); i++)
				if (strlen(units[i].name) == ulen && strncmp(u, units[i].name, ulen) == 0)
					break;
			if (i == sizeof(units) / sizeof(units[0]))
				return -EINVAL;
		}
		const char *q = num;
		if (parse_scaled(&q, units[i].ms, &part) < 0 || q != u)
			return -EINVAL;
		if (__builtin_add_overflow(total, part, &total))
			return -EINVAL;
		any = true;
	}
	*ret_ms = total;
	return 0;
}

int conf_parse_size(const char *s, int64_t *ret_bytes)
{
	static const struct {
		const char *name;
		int64_t mult;
	} units[] = {
		{ "", 1 }, { "b", 1 },
		{ "k", INT64_C(1) << 10 }, { "kib", INT64_C(1) << 10 }, { "kb", 1000 },
		{ "m", INT64_C(1) << 20 }, { "mib", INT64_C(1) << 20 }, { "mb", 1000000 },
		{ "g", INT64_C(1) << 30 }, { "gib", INT64_C(1) << 30 }, { "gb", 1000000000 },
		{ "t", INT64_C(1) << 40 }, { "tib", INT64_C(1) << 40 }, { "tb", INT64_C(1000000000000) },
	};
	const char *p = s, *u;
	int64_t v;

	if (!s || !*s)
		return -EINVAL;
	while (isdigit((unsigned char)*p) || *p == '.')
		p++;
	u = p;
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
		if (strcasecmp(u, units[i].name) != 0)
			continue;
		p = s;
		if (parse_scaled(&p, units[i].mult, &v) < 0 || p != u)
			return -EINVAL;
		*ret_bytes = v;
		return 0;
	}
	return -EINVAL;
}

/* The URL as an error message may show it: a userinfo part ("user:secret@")
 * becomes "***@", since logs and --check-config never show a password. */
static const char *url_shown(const char *url, char *buf, size_t n)
{
	const char *sep = strstr(url, "://");
	const char *at = sep ? strrchr(sep + 3, '@') : NULL;

	if (!at)
		return url;
	snprintf(buf, n, "%.*s***%s", (int)(sep + 3 - url), url, at);
	return buf;
}

/* Why a URL is refused, or NULL when it parses into *ret. */
static const char *url_parse(const char *url, struct conf_url *ret)
{
	struct conf_url u = { 0 };
	const char *p, *host, *hend;
	size_t hlen;

	if (strncasecmp(url, "mqtt://", 7) == 0) {
		p = url + 7;
		u.port = 1883;
	} else if (strncasecmp(url, "mqtts://", 8) == 0) {
		p = url + 8;
		u.tls = true;
		u.port = 8883;
	} else {
		return "must start with mqtt:// or mqtts://";
	}
	if (strpbrk(p, "@"))
		return "credentials do not belong in the URL (use username and password_file)";
	if (*p == '[') {
		host = p + 1;
		hend = strchr(host, ']');
		if (!hend)
			return "missing ']' after the IPv6 address";
		p = hend + 1;
	} else {
		host = p;
		while (*p && *p != ':' && *p != '/')
			p++;
		hend = p;
	}
	hlen = (size_t)(hend - host);
	if (hlen == 0)
		return "no host";
	if (hlen >= sizeof(u.host))
		return "host name too long";
	for (const char *h = host; h < hend; h++)
		if ((unsigned char)*h <= ' ' || *h == '/' || *h == '?' || *h == '#')
			return "invalid character in host";
	memcpy(u.host, host, hlen);
	u.host[hlen] = '\0';
	if (*p == ':') {
		long port = 0;
		const char *d = ++p;

		while (isdigit((unsigned char)*p) && port <= 65535)
			port = port * 10 + (*p++ - '0');
		if (p == d || isdigit((unsigned char)*p) || port < 1 || port > 65535)
			return "invalid port (1..65535)";
		u.port = (int)port;
	}
	if (*p == '/')
		p++;
	if (*p)
		return "unexpected text after host and port";
	*ret = u;
	return NULL;
}

int conf_parse_url(const char *url, struct conf_url *ret)
{
	if (!url)
		return -EINVAL;
	return url_parse(url, ret) ? -EINVAL : 0;
}

/* Why an HTTP listen address is refused, or NULL. */
static const char *listen_check(const char *s)
{
	const char *colon;
	long port = 0;

	if (strncmp(s, "unix:", 5) == 0) {
		size_t n = strlen(s + 5);
		if (n == 0)
			return "no socket path after unix:";
		if (n >= 108)
			return "unix socket path too long (107 bytes at most)";
		return NULL;
	}
	colon = strrchr(s, ':');
	if (!colon || colon == s)
		return "expected HOST:PORT or unix:/path";
	if (s[0] == '[' && colon[-1] != ']')
		return "an IPv6 address must be written [ADDR]:PORT";
	if (s[0] != '[' && memchr(s, ':', (size_t)(colon - s)))
		return "an IPv6 address must be written [ADDR]:PORT";
	if (!colon[1])
		return "no port";
	for (const char *d = colon + 1; *d; d++) {
		if (!isdigit((unsigned char)*d) || port > 65535)
			return "invalid port (0..65535)";
		port = port * 10 + (*d - '0');
	}
	if (port > 65535)
		return "invalid port (0..65535)";
	return NULL;
}

/* Is a valid TCP listen address on the loopback interface? */
static bool listen_is_loopback(const char *s)
{
	size_t host = (size_t)(strrchr(s, ':') - s);

	return (host > 4 && strncmp(s, "127.", 4) == 0) ||
	       (host == 9 && strncmp(s, "localhost", 9) == 0) ||
	       (host == 5 && strncmp(s, "[::1]", 5) == 0);
}

/* Formats ms in the largest unit that divides it ("250ms", "30s", "1h"). */
static const char *fmt_duration(int64_t ms, char *buf, size_t len)
{
	if (ms != 0 && ms % 86400000 == 0)
		snprintf(buf, len, "%lldd", (long long)(ms / 86400000));
	else if (ms != 0 && ms % 3600000 == 0)
		snprintf(buf, len, "%lldh", (long long)(ms / 3600000));
	else if (ms != 0 && ms % 60000 == 0)
		snprintf(buf, len, "%lldm", (long long)(ms / 60000));
	else if (ms % 1000 == 0)
		snprintf(buf, len, "%llds", (long long)(ms / 1000));
	else
		snprintf(buf, len, "%lldms", (long long)ms);
	return buf;
}

/* Blanks (and a line's end) off both ends of s, in place. */
static char *trim(char *s)
{
	char *e;

	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' || e[-1] == '\n'))
		e--;
	*e = '\0';
	return s;
}

/* ---- the types ---------------------------------------------------------- */

/* The value types; each has a row of operations in types[] below. */
enum item_type {
	T_STR,        /* non-empty string */
	T_STR_OPT,    /* empty = NULL */
	T_CLIENT_ID,  /* %h = hostname */
	T_TOPIC,      /* empty or a valid topic name (no wildcards); %h = hostname */
	T_LISTEN,     /* HOST:PORT or unix:/path */
	T_INT,        /* int, min..max */
	T_INT64,      /* int64, min..max */
	T_DURATION,   /* int64 ms, min..max */
	T_SIZE,       /* int64 bytes, min..max */
	T_DOUBLE,     /* double, > min, <= max */
	T_ENUM,       /* int, one of names[] */
	T_BOOL,       /* bool: true | false (yes | no, on | off) */
	T_PROTOCOL,   /* "auto" | "5" | "3.1.1" -> 0 | 5 | 311 */
	T_MODE,       /* octal file mode, min..max */
	T_LOGLEVEL,   /* enum log_level */
	T_URLS,       /* repeatable, comma-separated, into urls[] */
	T_FILTERS,    /* repeatable, into filters[] */
	T_TOPICS,     /* repeatable exact topic names, into retained[] */
	T_TOPICS_FILE,/* a path; its lines join retained[] */
	T_RULES,      /* repeatable "FILTER CADENCE|never", into rules[] */
	T_CADENCE,    /* learn | never | DURATION, min..max */
	T_AVAIL,      /* repeatable "STATUS_FILTER KEYS_FILTER", into avail[] */
	T_MAX
};

/* One configuration key: where it lives in struct conf and how it parses. */
struct item {
	const char *section;
	const char *name;
	enum item_type type;
	const char *def;         /* the default, parsed like file text; NULL = none */
	int64_t min, max;        /* bounds, for the types that have them */
	size_t off;              /* the field in struct conf */
	const char *const *names; /* T_ENUM: the values, NULL-terminated */
};

/*
** The operations of one type (in the manner of redis' standardConfig):
**   parse   sets (or, for a list, adds) the value from text v. Returns 0,
**           -EINVAL or -ENOMEM with the reason, without file, line or key,
**           in why. A failed parse leaves the field as it was, or holding
**           the values added before (always freeable).
**   clear   frees what the field owns and resets it (NULL = owns nothing).
**           conf_free clears every key; a list's first value in the file
**           clears its default.
**   list    repeatable: every occurrence adds a value.
**   hash_first  the value may begin with '#' (a filter): not a comment.
*/
struct item_ops {
	int (*parse)(struct conf *c, const struct item *it, const char *v, char *why,
		     size_t whylen);
	void (*clear)(struct conf *c, const struct item *it);
	bool list;
	bool hash_first;
};

static inline void *field(struct conf *c, const struct item *it)
{
	return (char *)c + it->off;
}

static int why_ret(char *why, size_t whylen, int rc, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static int why_ret(char *why, size_t whylen, int rc, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, whylen, fmt, ap);
	va_end(ap);
	return rc;
}

static int range_error(const struct item *it, const char *v, char *why, size_t whylen)
{
	char a[32], b[32];

	if (it->type == T_DURATION)
		return why_ret(why, whylen, -EINVAL, "'%s' out of range (%s..%s)", v,
			       fmt_duration(it->min, a, sizeof(a)), fmt_duration(it->max, b, sizeof(b)));
	return why_ret(why, whylen, -EINVAL, "'%s' out of range (%lld..%lld)", v,
		       (long long)it->min, (long long)it->max);
}

int conf_set_str(char **fieldp, const char *value)
{
	char *s = NULL;

	if (value && !(s = strdup(value)))
		return -ENOMEM;
	free(*fieldp);
	*fieldp = s;
	return 0;
}

/* A copy of v with every %h replaced by the host name. */
static int expand_host(const char *v, char **ret)
{
	char host[256];
	size_t n = 0, cap = strlen(v) + 1, hlen;
	char *out;

	if (gethostname(host, sizeof(host)) < 0)
		snprintf(host, sizeof(host), "localhost");
	host[sizeof(host) - 1] = '\0';
	hlen = strlen(host);
	for (const char *p = v; *p; p++)
		if (p[0] == '%' && p[1] == 'h')
			cap += hlen;
	out = malloc(cap);
	if (!out)
		return -ENOMEM;
	for (const char *p = v; *p; p++) {
		if (p[0] == '%' && p[1] == 'h') {
			memcpy(out + n, host, hlen);
			n += hlen;
			p++;
		} else {
			out[n++] = *p;
		}
	}
	out[n] = '\0';
	*ret = out;
	return 0;
}

/* ---- strings ---- */

static int set_str(struct conf *c, const struct item *it, const char *v, char *why, size_t whylen)
{
	if (conf_set_str((char **)field(c, it), v) < 0)
		return why_ret(why, whylen, -ENOMEM, "out of memory");
	return 0;
}

static int parse_str(struct conf *c, const struct item *it, const char *v, char *why,
		     size_t whylen)
{
	if (!*v)
		return why_ret(why, whylen, -EINVAL, "must not be empty");
	return set_str(c, it, v, why, whylen);
}

static int parse_str_opt(struct conf *c, const struct item *it, const char *v, char *why,
			 size_t whylen)
{
	return set_str(c, it, *v ? v : NULL, why, whylen);
}

static int parse_client_id(struct conf *c, const struct item *it, const char *v, char *why,
			   size_t whylen)
{
	char *s;

	if (expand_host(v, &s) < 0)
		return why_ret(why, whylen, -ENOMEM, "out of memory");
	free(*(char **)field(c, it));
	*(char **)field(c, it) = s;
	return 0;
}

static int parse_topic(struct conf *c, const struct item *it, const char *v, char *why,
		       size_t whylen)
{
	char *s;

	if (expand_host(v, &s) < 0) /* %h: one alert topic per host */
		return why_ret(why, whylen, -ENOMEM, "out of memory");
	if (*s && topic_name_check(s, strlen(s)) < 0) {
		free(s);
		return why_ret(why, whylen, -EINVAL,
			       "'%s' is not a valid MQTT topic name (no + or #)", v);
	}
	free(*(char **)field(c, it));
	*(char **)field(c, it) = s;
	return 0;
}

static int parse_listen(struct conf *c, const struct item *it, const char *v, char *why,
			size_t whylen)
{
	const char *reason = listen_check(v);

	if (reason)
		return why_ret(why, whylen, -EINVAL, "'%s': %s", v, reason);
	return set_str(c, it, v, why, whylen);
}

static void clear_str(struct conf *c, const struct item *it)
{
	free(*(char **)field(c, it));
	*(char **)field(c, it) = NULL;
}

/* ---- numbers ---- */

/* A decimal integer within the row's bounds. */
static int integer_parse(const struct item *it, const char *v, int64_t *ret, char *why,
			 size_t whylen)
{
	char *end;
	int64_t n;

	errno = 0;
	n = strtoll(v, &end, 10);
	if (!*v || *end || errno || !(isdigit((unsigned char)*v) || *v == '-'))
		return why_ret(why, whylen, -EINVAL, "'%s' is not an integer", v);
	if (n < it->min || n > it->max)
		return range_error(it, v, why, whylen);
	*ret = n;
	return 0;
}

static int parse_int(struct conf *c, const struct item *it, const char *v, char *why,
		     size_t whylen)
{
	int64_t n = 0;
	int rc = integer_parse(it, v, &n, why, whylen);

	if (rc == 0)
		*(int *)field(c, it) = (int)n;
	return rc;
}

static int parse_int64(struct conf *c, const struct item *it, const char *v, char *why,
		       size_t whylen)
{
	return integer_parse(it, v, (int64_t *)field(c, it), why, whylen);
}

static int parse_duration(struct conf *c, const struct item *it, const char *v, char *why,
			  size_t whylen)
{
	int64_t n;

	if (conf_parse_duration(v, &n) < 0)
		return why_ret(why, whylen, -EINVAL,
			       "invalid duration '%s' (e.g. 250ms, 10s, 5m, 2h, 1d)", v);
	if (n < it->min || n > it->max)
		return range_error(it, v, why, whylen);
	*(int64_t *)field(c, it) = n;
	return 0;
}

static int parse_size(struct conf *c, const struct item *it, const char *v, char *why,
		      size_t whylen)
{
	int64_t n;

	if (conf_parse_size(v, &n) < 0)
		return why_ret(why, whylen, -EINVAL, "invalid size '%s' (e.g. 512, 256KiB, 1MiB)", v);
	if (n < it->min || n > it->max)
		return range_error(it, v, why, whylen);
	*(int64_t *)field(c, it) = n;
	return 0;
}

static int parse_double(struct conf *c, const struct item *it, const char *v, char *why,
			size_t whylen)
{
	char *end;
	double d;

	errno = 0;
	d = strtod(v, &end);
	if (!*v || *end || errno || !(isdigit((unsigned char)*v) || *v == '.'))
		return why_ret(why, whylen, -EINVAL, "'%s' is not a number", v);
	if (!(d > (double)it->min && d <= (double)it->max))
		return why_ret(why, whylen, -EINVAL, "'%s' out of range (above %lld, at most %lld)",
			       v, (long long)it->min, (long long)it->max);
	*(double *)field(c, it) = d;
	return 0;
}

static int parse_mode(struct conf *c, const struct item *it, const char *v, char *why,
		      size_t whylen)
{
	char *end;
	int64_t n;

	errno = 0;
	n = strtoll(v, &end, 8);
	if (!*v || *end || errno || !isdigit((unsigned char)*v) || n < it->min || n > it->max)
		return why_ret(why, whylen, -EINVAL, "'%s' is not an octal mode (0000..0777)", v);
	*(int *)field(c, it) = (int)n;
	return 0;
}

/* ---- names ---- */

static int parse_enum(struct conf *c, const struct item *it, const char *v, char *why,
		      size_t whylen)
{
	for (int i = 0; it->names[i]; i++) {
		if (strcmp(v, it->names[i]) == 0) {
			*(int *)field(c, it) = i;
			return 0;
		}
	}
	return why_ret(why, whylen, -EINVAL, "'%s' is not one of %s%s%s", v, it->names[0],
		       it->names[1] ? " | " : "", it->names[1] ? it->names[1] : "");
}

static int parse_bool(struct conf *c, const struct item *it, const char *v, char *why,
		      size_t whylen)
{
	static const char *const yes[] = { "true", "yes", "on", "1" }, *const no[] = { "false", "no", "off", "0" };

	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
		if (strcasecmp(v, yes[i]) == 0 || strcasecmp(v, no[i]) == 0) {
			*(bool *)field(c, it) = strcasecmp(v, yes[i]) == 0;
			return 0;
		}
	}
	return why_ret(why, whylen, -EINVAL, "'%s' is not true or false", v);
}

static int parse_protocol(struct conf *c, const struct item *it, const char *v, char *why,
			  size_t whylen)
{
	int *f = field(c, it);

	if (strcmp(v, "auto") == 0)
		*f = CONF_PROTOCOL_AUTO;
	else if (strcmp(v, "5") == 0 || strcmp(v, "5.0") == 0)
		*f = 5;
	else if (strcmp(v, "3.1.1") == 0 || strcmp(v, "311") == 0)
		*f = 311;
	else
		return why_ret(why, whylen, -EINVAL, "'%s' is not auto, 5 or 3.1.1", v);
	return 0;
}

static int parse_loglevel(struct conf *c, const struct item *it, const char *v, char *why,
			  size_t whylen)
{
	if (log_level_parse(v, (enum log_level *)field(c, it)) < 0)
		return why_ret(why, whylen, -EINVAL,
			       "'%s' is not a level (error, warn, info, debug)", v);
	return 0;
}

static int parse_cadence(struct conf *c, const struct item *it, const char *v, char *why,
			 size_t whylen)
{
	enum conf_default_cadence *kind = field(c, it);
	int64_t n = 0;

	if (strcmp(v, "learn") == 0) {
		*kind = CONF_DEFAULT_LEARN;
	} else if (strcmp(v, "never") == 0) {
		*kind = CONF_DEFAULT_NEVER;
	} else if (conf_parse_duration(v, &n) == 0) {
		if (n < it->min || n > it->max)
			return range_error(it, v, why, whylen);
		*kind = CONF_DEFAULT_FIXED;
	} else {
		return why_ret(why, whylen, -EINVAL, "'%s' is not learn, never or a duration", v);
	}
	c->default_cadence_ms = n;
	return 0;
}

/* ---- lists ---- */

static void strv_clear(char **v, size_t *n)
{
	for (size_t i = 0; i < *n; i++) {
		free(v[i]);
		v[i] = NULL;
	}
	*n = 0;
}

static int parse_urls(struct conf *c, const struct item *it, const char *v, char *why,
		      size_t whylen)
{
	const char *p = v;

	for (;;) {
		const char *comma = strchr(p, ','), *e = comma ? comma : p + strlen(p), *reason;
		struct conf_url u;
		char *one;

		while (p < e && isspace((unsigned char)*p))
			p++;
		while (e > p && isspace((unsigned char)e[-1]))
			e--;
		if (p == e)
			return why_ret(why, whylen, -EINVAL, "empty URL in the list");
		if (!(one = strndup(p, (size_t)(e - p))))
			return why_ret(why, whylen, -ENOMEM, "out of memory");
		if ((reason = url_parse(one, &u))) {
			char shown[256];
			int rc = why_ret(why, whylen, -EINVAL, "'%s': %s",
					 url_shown(one, shown, sizeof(shown)), reason);
			free(one);
			return rc;
		}
		if (c->nurls >= CONF_MAX_URLS) {
			free(one);
			return why_ret(why, whylen, -EINVAL, "more than %d URLs", CONF_MAX_URLS);
		}
		c->urls[c->nurls++] = one;
		if (!comma)
			return 0;
		p = comma + 1;
	}
}

static void clear_urls(struct conf *c, const struct item *it)
{
	strv_clear(c->urls, &c->nurls);
}

/* A filter list: CONF_MAX_FILTERS pointers at it->off, then their count. */
_Static_assert(offsetof(struct conf, nfilters) ==
	       offsetof(struct conf, filters) + sizeof(((struct conf *)0)->filters),
	       "a filter list's count follows its array");
_Static_assert(offsetof(struct conf, nintent_allow) ==
	       offsetof(struct conf, intent_allow) + sizeof(((struct conf *)0)->intent_allow),
	       "a filter list's count follows its array");

static char **filter_list(struct conf *c, const struct item *it, size_t **ret_n)
{
	char **v = (char **)((char *)c + it->off);

	*ret_n = (size_t *)(void *)(v + CONF_MAX_FILTERS);
	return v;
}

static int parse_filter(struct conf *c, const struct item *it, const char *v, char *why,
			size_t whylen)
{
	size_t *n;
	char **list = filter_list(c, it, &n);

	if (topic_filter_check(v) < 0)
		return why_ret(why, whylen, -EINVAL, "'%s' is not a valid MQTT topic filter", v);
	if (*n >= CONF_MAX_FILTERS)
		return why_ret(why, whylen, -EINVAL, "more than %d filters", CONF_MAX_FILTERS);
	if (!(list[*n] = strdup(v)))
		return why_ret(why, whylen, -ENOMEM, "out of memory");
	(*n)++;
	return 0;
}

static void clear_filters(struct conf *c, const struct item *it)
{
	size_t *n;
	char **list = filter_list(c, it, &n);

	strv_clear(list, n);
}

/* Add one exact topic name to c->retained (a duplicate is dropped). */
static int retained_add(struct conf *c, const char *v, char *why, size_t whylen)
{
	if (!*v)
		return why_ret(why, whylen, -EINVAL, "must not be empty");
	if (topic_name_check(v, strlen(v)) < 0)
		return why_ret(why, whylen, -EINVAL,
			       "'%s' is not a valid MQTT topic name (exact names, no + or #)", v);
	for (size_t i = 0; i < c->nretained; i++)
		if (strcmp(c->retained[i], v) == 0)
			return 0;
	if (c->nretained >= CONF_MAX_FILTERS)
		return why_ret(why, whylen, -EINVAL,
			       "more than %d retained topics (retained and retained_file together)",
			       CONF_MAX_FILTERS);
	if (!(c->retained[c->nretained] = strdup(v)))
		return why_ret(why, whylen, -ENOMEM, "out of memory");
	c->nretained++;
	return 0;
}

static int parse_retained(struct conf *c, const struct item *it, const char *v, char *why,
			  size_t whylen)
{
	return retained_add(c, v, why, whylen);
}

static void clear_retained(struct conf *c, const struct item *it)
{
	strv_clear(c->retained, &c->nretained);
}

/* Read a retained_file into c->retained: one topic per line, '#' comments,
 * blank lines. Errors name the file's own line: "PATH:LINE: reason". */
static int retained_read(struct conf *c, const char *path, char *why, size_t whylen)
{
	char *line = NULL;
	size_t cap = 0, total = 0;
	unsigned lineno = 0;
	ssize_t n;
	FILE *fp;
	int rc = 0;

	if (!(fp = fopen(path, "re"))) {
		rc = -errno;
		return why_ret(why, whylen, rc == -ENOMEM ? rc : -EINVAL, "cannot open '%s': %s",
			       path, strerror(-rc));
	}
	while ((n = getline(&line, &cap, fp)) >= 0) {
		char *s, *hash;

		lineno++;
		total += (size_t)n;
		if (total > CONF_RETAINED_FILE_MAX) {
			rc = why_ret(why, whylen, -EINVAL, "%s:%u: file larger than %d bytes", path,
				     lineno, CONF_RETAINED_FILE_MAX);
			goto out;
		}
		if (strlen(line) != (size_t)n) {
			rc = why_ret(why, whylen, -EINVAL, "%s:%u: NUL byte in line", path, lineno);
			goto out;
		}
		if ((hash = strchr(line, '#')))  /* a topic name holds no '#' */
			*hash = '\0';
		s = trim(line);
		if (!*s)
			continue;
		if ((rc = retained_add(c, s, why, whylen)) < 0) {
			char inner[WHY_MAX];

			snprintf(inner, sizeof(inner), "%s", why);
			why_ret(why, whylen, rc, "%s:%u: %s", path, lineno, inner);
			goto out;
		}
	}
	if (ferror(fp))
		rc = why_ret(why, whylen, -EINVAL, "%s:%u: read error", path, lineno);
out:
	free(line);
	fclose(fp);
	return rc;
}

/* The path is kept (for the reload report); its topics join retained[]. */
static int parse_retained_file(struct conf *c, const struct item *it, const char *v, char *why,
			       size_t whylen)
{
	int rc = parse_str_opt(c, it, v, why, whylen);

	return rc < 0 || !*v ? rc : retained_read(c, v, why, whylen);
}

/* Why a rule is refused, or NULL; *ret is filled on success (filter owned). */
static const char *rule_parse(const struct item *it, const char *v, struct conf_rule *ret,
			      char *why, size_t whylen)
{
	const char *sp = v, *cad;
	int64_t ms;
	char *filter;

	while (*sp && !isspace((unsigned char)*sp))
		sp++;
	cad = sp;
	while (isspace((unsigned char)*cad))
		cad++;
	if (sp == v || !*cad)
		return "expected 'FILTER CADENCE' (a duration or never)";
	filter = strndup(v, (size_t)(sp - v));
	if (!filter)
		return "out of memory";
	if (topic_filter_check(filter) < 0) {
		snprintf(why, whylen, "'%s' is not a valid MQTT topic filter", filter);
		free(filter);
		return why;
	}
	if (strcmp(cad, "never") == 0) {
		ms = 0;
	} else if (conf_parse_duration(cad, &ms) < 0) {
		snprintf(why, whylen, "invalid cadence '%s' (a duration such as 10s, or never)", cad);
		free(filter);
		return why;
	} else if (ms < it->min || ms > it->max) {
		char a[32], b[32];
		snprintf(why, whylen, "cadence '%s' out of range (%s..%s, or never)", cad,
			 fmt_duration(it->min, a, sizeof(a)), fmt_duration(it->max, b, sizeof(b)));
		free(filter);
		return why;
	}
	ret->filter = filter;
	ret->cadence_ms = ms;
	return NULL;
}

static int parse_rule(struct conf *c, const struct item *it, const char *v, char *why,
		      size_t whylen)
{
	struct conf_rule r;
	const char *reason;

	if (c->nrules >= CONF_MAX_RULES)
		return why_ret(why, whylen, -EINVAL, "more than %d rules", CONF_MAX_RULES);
	if ((reason = rule_parse(it, v, &r, why, whylen))) {
		if (reason != why)
			snprintf(why, whylen, "%s", reason);
		return strcmp(reason, "out of memory") == 0 ? -ENOMEM : -EINVAL;
	}
	c->rules[c->nrules++] = r;
	return 0;
}

static void clear_rules(struct conf *c, const struct item *it)
{
	for (size_t i = 0; i < c->nrules; i++) {
		free(c->rules[i].filter);
		c->rules[i].filter = NULL;
	}
	c->nrules = 0;
}

int conf_add_availability(struct conf *c, const char *status, const char *keys)
{
	char *a, *b;

	if (c->navail >= CONF_MAX_AVAIL)
		return -ENOSPC;
	a = strdup(status);
	b = strdup(keys);
	if (!a || !b) {
		free(a);
		free(b);
		return -ENOMEM;
	}
	c->avail[c->navail].status = a;
	c->avail[c->navail++].keys = b;
	return 0;
}

static int parse_avail(struct conf *c, const struct item *it, const char *v, char *why,
		       size_t whylen)
{
	const char *sp = v, *k;
	char *status;
	int rc;

	(void)it;
	while (*sp && !isspace((unsigned char)*sp))
		sp++;
	k = sp;
	while (isspace((unsigned char)*k))
		k++;
	if (sp == v || !*k || strpbrk(k, " \t"))
		return why_ret(why, whylen, -EINVAL, "expected 'STATUS_FILTER KEYS_FILTER'");
	if (!(status = strndup(v, (size_t)(sp - v))))
		return why_ret(why, whylen, -ENOMEM, "out of memory");
	if (topic_filter_check(status) < 0 || topic_filter_check(k) < 0) {
		rc = why_ret(why, whylen, -EINVAL, "'%s' is not a valid MQTT topic filter",
			     topic_filter_check(status) < 0 ? status : k);
		free(status);
		return rc;
	}
	rc = conf_add_availability(c, status, k);
	free(status);
	if (rc == -ENOSPC)
		return why_ret(why, whylen, -EINVAL, "more than %d availability lines", CONF_MAX_AVAIL);
	return rc < 0 ? why_ret(why, whylen, rc, "out of memory") : 0;
}

static void clear_avail(struct conf *c, const struct item *it)
{
	(void)it;
	for (size_t i = 0; i < c->navail; i++) {
		free(c->avail[i].status);
		free(c->avail[i].keys);
		c->avail[i].status = c->avail[i].keys = NULL;
	}
	c->navail = 0;
}

/* One row per type: parse, clear, list, hash_first. */
static const struct item_ops types[T_MAX] = {
	[T_STR]         = { parse_str, clear_str, false, false },
	[T_STR_OPT]     = { parse_str_opt, clear_str, false, false },
	[T_CLIENT_ID]   = { parse_client_id, clear_str, false, false },
	[T_TOPIC]       = { parse_topic, clear_str, false, false },
	[T_LISTEN]      = { parse_listen, clear_str, false, false },
	[T_INT]         = { parse_int, NULL, false, false },
	[T_INT64]       = { parse_int64, NULL, false, false },
	[T_DURATION]    = { parse_duration, NULL, false, false },
	[T_SIZE]        = { parse_size, NULL, false, false },
	[T_DOUBLE]      = { parse_double, NULL, false, false },
	[T_ENUM]        = { parse_enum, NULL, false, false },
	[T_BOOL]        = { parse_bool, NULL, false, false },
	[T_PROTOCOL]    = { parse_protocol, NULL, false, false },
	[T_MODE]        = { parse_mode, NULL, false, false },
	[T_LOGLEVEL]    = { parse_loglevel, NULL, false, false },
	[T_URLS]        = { parse_urls, clear_urls, true, false },
	[T_FILTERS]     = { parse_filter, clear_filters, true, true },
	[T_TOPICS]      = { parse_retained, clear_retained, true, false },
	[T_TOPICS_FILE] = { parse_retained_file, clear_str, false, false },
	[T_RULES]       = { parse_rule, clear_rules, true, true },
	[T_CADENCE]     = { parse_cadence, NULL, false, false },
	[T_AVAIL]       = { parse_avail, clear_avail, true, false },
};

/* ---- the keys ----------------------------------------------------------- */

static const char *const format_names[] = { "auto", "json", NULL };
static const char *const session_names[] = { "clean", "persistent", NULL };
static const char *const on_corrupt_names[] = { "rebuild", "fail", NULL };

#define O(f) offsetof(struct conf, f)
#define SEC(n) ((int64_t)(n) * 1000)
#define MIN(n) ((int64_t)(n) * 60000)
#define HOUR(n) ((int64_t)(n) * 3600000)
#define KIB(n) ((int64_t)(n) << 10)
#define MIB(n) ((int64_t)(n) << 20)

/* One row per key; the defaults are the contract's and conf.h's. */
static const struct item items[] = {
	{ "broker", "url", T_URLS, "mqtt://127.0.0.1:1883", 0, 0, O(urls), NULL },
	{ "broker", "client_id", T_CLIENT_ID, "statemirror-%h", 0, 0, O(client_id), NULL },
	{ "broker", "protocol", T_PROTOCOL, "auto", 0, 0, O(protocol), NULL },
	{ "broker", "qos", T_INT, "1", 0, 1, O(qos), NULL },
	{ "broker", "session", T_ENUM, "clean", 0, 0, O(session), session_names },
	{ "broker", "keepalive", T_DURATION, "30s", SEC(1), SEC(65535), O(keepalive_ms), NULL },
	{ "broker", "username", T_STR_OPT, NULL, 0, 0, O(username), NULL },
	{ "broker", "password_file", T_STR_OPT, NULL, 0, 0, O(password_file), NULL },
	{ "broker", "tls_ca_file", T_STR_OPT, NULL, 0, 0, O(tls_ca_file), NULL },
	{ "broker", "tls_cert_file", T_STR_OPT, NULL, 0, 0, O(tls_cert_file), NULL },
	{ "broker", "tls_key_file", T_STR_OPT, NULL, 0, 0, O(tls_key_file), NULL },
	{ "broker", "session_expiry", T_DURATION, "1h", 0, SEC(INT64_C(4294967295)), O(session_expiry_ms), NULL },
	{ "broker", "reconnect_min", T_DURATION, "250ms", 10, HOUR(1), O(reconnect_min_ms), NULL },
	{ "broker", "reconnect_max", T_DURATION, "30s", 10, HOUR(1), O(reconnect_max_ms), NULL },
	{ "broker", "sync_quiet", T_DURATION, "200ms", 10, MIN(1), O(sync_quiet_ms), NULL },

	{ "subscribe", "filter", T_FILTERS, "#", 0, 0, O(filters), NULL },
	{ "subscribe", "retained", T_TOPICS, NULL, 0, 0, O(retained), NULL },
	{ "subscribe", "retained_file", T_TOPICS_FILE, NULL, 0, 0, O(retained_file), NULL },

	{ "store", "path", T_STR, "statemirror.db", 0, 0, O(db_path), NULL },
	{ "store", "max_keys", T_INT64, "1000000", 1, INT64_C(1000000000), O(max_keys), NULL },
	{ "store", "max_payload", T_SIZE, "256KiB", 1, 268435455, O(max_payload), NULL },
	{ "store", "max_topic_len", T_INT64, "1024", 1, 65535, O(max_topic_len), NULL },
	{ "store", "commit_interval", T_DURATION, "500ms", 1, SEC(1), O(commit_interval_ms), NULL },
	{ "store", "max_rejects", T_INT64, "100", 0, 100000, O(max_rejects), NULL },
	{ "store", "on_corrupt", T_ENUM, "rebuild", 0, 0, O(on_corrupt), on_corrupt_names },
	{ "store", "serve_while_loading_above", T_SIZE, "64MiB", 0, INT64_C(1) << 50,
	  O(serve_while_loading_above), NULL },

	{ "payload", "format", T_ENUM, "auto", 0, 0, O(format), format_names },
	{ "payload", "timestamp_field", T_STR, "ts", 0, 0, O(timestamp_field), NULL },
	{ "payload", "future_skew", T_DURATION, "5m", 0, HOUR(24) * 365, O(future_skew_ms), NULL },

	{ "staleness", "grace", T_DOUBLE, "3", 0, 1000, O(grace), NULL },
	/* Cadences are held in 32 bits of ms on each record: 49 days at most. */
	{ "staleness", "default", T_CADENCE, "learn", 1, HOUR(24) * 49, O(default_kind), NULL },
	{ "staleness", "rule", T_RULES, NULL, 1, HOUR(24) * 49, O(rules), NULL },
	{ "staleness", "group_wait", T_DURATION, "2s", 0, MIN(10), O(group_wait_ms), NULL },
	{ "staleness", "min_hold", T_DURATION, "0", 0, HOUR(1), O(min_hold_ms), NULL },

	{ "liveness", "availability", T_AVAIL, NULL, 0, 0, O(avail), NULL },
	{ "liveness", "online", T_STR, "online", 0, 0, O(avail_online), NULL },
	{ "liveness", "offline", T_STR, "offline", 0, 0, O(avail_offline), NULL },
	{ "liveness", "payload_member", T_STR_OPT, NULL, 0, 0, O(avail_member), NULL },

	{ "alerts", "topic", T_TOPIC, "statemirror/alerts", 0, 0, O(alert_topic), NULL },
	{ "alerts", "exec", T_STR_OPT, NULL, 0, 0, O(alert_exec), NULL },
	{ "alerts", "exec_timeout", T_DURATION, "10s", 100, HOUR(1), O(alert_exec_timeout_ms), NULL },

	{ "http", "listen", T_LISTEN, "127.0.0.1:8080", 0, 0, O(http_listen), NULL },
	{ "http", "socket_mode", T_MODE, "0660", 0, 0777, O(socket_mode), NULL },
	{ "http", "token_file", T_STR_OPT, NULL, 0, 0, O(token_file), NULL },
	{ "http", "max_connections", T_INT64, "512", 1, 65536, O(http_max_conns), NULL },
	{ "http", "per_ip_connections", T_INT64, "64", 1, 65536, O(http_per_ip_conns), NULL },
	{ "http", "timeout", T_DURATION, "30s", SEC(1), HOUR(1), O(http_timeout_ms), NULL },
	{ "http", "threads", T_INT64, "2", 1, 64, O(http_threads), NULL },
	{ "http", "watch_max_clients", T_INT64, "512", 0, 65536, O(watch_max_clients), NULL },
	{ "http", "watch_buffer", T_SIZE, "1MiB", KIB(4), MIB(1024), O(watch_buffer), NULL },
	{ "http", "watch_log_size", T_INT64, "65536", 0, INT64_C(16777216), O(watch_log_size), NULL },

	{ "intents", "allow", T_FILTERS, NULL, 0, 0, O(intent_allow), NULL },
	{ "intents", "qos", T_INT, "1", 0, 1, O(intent_qos), NULL },
	{ "intents", "expire", T_DURATION, "30s", SEC(1), HOUR(24), O(intent_expire_ms), NULL },
	{ "intents", "timeout", T_DURATION, "10s", 100, HOUR(24), O(intent_timeout_ms), NULL },
	{ "intents", "outbox_max", T_INT64, "10000", 1, 1000000, O(intent_outbox_max), NULL },
	{ "intents", "max_body", T_SIZE, "64KiB", 256, MIB(16), O(intent_max_body), NULL },
	{ "intents", "history", T_INT64, "1000", 1, 1000000, O(intent_history), NULL },
	{ "intents", "intent_token_file", T_STR_OPT, NULL, 0, 0, O(intent_token_file), NULL },

	/* Sparkplug B host mode (mirror/ingest/sparkplug.h); defaults as sparkplug_conf_default. */
	{ "sparkplug", "enabled", T_BOOL, "false", 0, 0, O(sp_enabled), NULL },
	{ "sparkplug", "rebirth", T_BOOL, "false", 0, 0, O(sp_rebirth), NULL },
	{ "sparkplug", "reorder_window", T_DURATION, "2s", 0, MIN(10), O(sp_reorder_window_ms), NULL },
	{ "sparkplug", "rebirth_interval", T_DURATION, "30s", 0, HOUR(24), O(sp_rebirth_interval_ms), NULL },
	{ "sparkplug", "max_nodes", T_INT64, "10000", 1, INT64_C(1000000), O(sp_max_nodes), NULL },
	{ "sparkplug", "max_devices", T_INT64, "1000", 1, INT64_C(1000000), O(sp_max_devices), NULL },
	{ "sparkplug", "max_node_metrics", T_INT64, "100000", 1, INT64_C(100000000), O(sp_max_node_metrics), NULL },
	{ "sparkplug", "max_metrics", T_INT64, "1000000", 1, INT64_C(1000000000), O(sp_max_metrics), NULL },
	{ "sparkplug", "max_message_metrics", T_INT64, "10000", 1, INT64_C(10000000), O(sp_max_message_metrics), NULL },
	{ "sparkplug", "max_value", T_SIZE, "64KiB", 64, MIB(256), O(sp_max_value), NULL },
	{ "sparkplug", "max_decode_mem", T_SIZE, "32MiB", KIB(64), MIB(4096), O(sp_max_decode_mem), NULL },
	{ "sparkplug", "primary_host", T_STR_OPT, NULL, 0, 0, O(sp_primary_host), NULL },

	{ "log", "level", T_LOGLEVEL, "info", 0, 0, O(log_level), NULL },
};

#define NITEMS (sizeof(items) / sizeof(items[0]))
_Static_assert(sizeof(items) / sizeof(items[0]) <= CONF_NKEYS, "raise CONF_NKEYS");

static const char *const sections[] = {
	"broker", "subscribe", "store", "payload", "staleness", "liveness", "alerts", "http",
	"intents", "sparkplug", "log",
};

static int item_index(const char *name)
{
	for (size_t i = 0; i < NITEMS; i++)
		if (strcmp(items[i].name, name) == 0)
			return (int)i;
	return -1;
}

/* Set one value of item `it` from text v (see struct item_ops). */
static int item_set(struct conf *c, const struct item *it, const char *v, char *why, size_t whylen)
{
	if (it->type >= T_MAX || !types[it->type].parse)
		return why_ret(why, whylen, -EINVAL, "internal: bad item type");
	return types[it->type].parse(c, it, v, why, whylen);
}

static void item_clear(struct conf *c, const struct item *it)
{
	if (types[it->type].clear)
		types[it->type].clear(c, it);
}

/* ---- defaults, free ----------------------------------------------------- */

void conf_free(struct conf *c)
{
	if (!c)
		return;
	for (size_t i = 0; i < NITEMS; i++)
		item_clear(c, &items[i]);
	free(c->src_path);
	c->src_path = NULL;
}

int conf_defaults(struct conf *c)
{
	char why[WHY_MAX];

	memset(c, 0, sizeof(*c));
	for (size_t i = 0; i < NITEMS; i++) {
		if (!items[i].def)
			continue;
		if (item_set(c, &items[i], items[i].def, why, sizeof(why)) < 0) {
			conf_free(c);
			return -ENOMEM;
		}
	}
	return 0;
}

/* ---- the file ----------------------------------------------------------- */

/* Cut a trailing comment off a value: a ';' or '#' at the value's start or
 * after whitespace, except a leading '#' where the value is a filter. */
static void cut_comment(char *v, bool hash_ok_first)
{
	for (char *p = v; *p; p++) {
		bool at_start = p == v, after_ws = !at_start && (p[-1] == ' ' || p[-1] == '\t');

		if (*p == ';' && (at_start || after_ws)) {
			*p = '\0';
			return;
		}
		if (*p == '#' && after_ws) {
			*p = '\0';
			return;
		}
		if (*p == '#' && at_start && !hash_ok_first) {
			*p = '\0';
			return;
		}
	}
}

static int fail_at(char *err, size_t errlen, const char *path, unsigned line, int rc,
		   const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static int fail_at(char *err, size_t errlen, const char *path, unsigned line, int rc,
		   const char *fmt, ...)
{
	va_list ap;
	int n;

	if (!err || !errlen)
		return rc;
	/* A message already there (an earlier line of the same file) stays:
	 * this one goes on a line of its own after it. */
	if (err[0]) {
		size_t used = strlen(err);
		if (used + 2 >= errlen)
			return rc;
		err[used++] = '\n';
		err[used] = '\0';
		err += used;
		errlen -= used;
	}
	n = line ? snprintf(err, errlen, "%s:%u: ", path, line) : snprintf(err, errlen, "%s: ", path);
	if (n < 0 || (size_t)n >= errlen)
		return rc;
	va_start(ap, fmt);
	vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
	va_end(ap);
	return rc;
}

#define CONF_MAX_ERRORS 20

int conf_load_file(struct conf *c, const char *path, char *err, size_t errlen)
{
	uint32_t seen[NITEMS] = { 0 };
	const char *section = NULL;
	char *line = NULL, *why = NULL;
	size_t cap = 0;
	unsigned lineno = 0, nerr = 0;
	bool skip_section = false;  /* after an unknown [section]: its keys are not judged */
	ssize_t n;
	FILE *fp;
	int rc = 0;

	if (err && errlen)
		err[0] = '\0';
	fp = fopen(path, "re");
	if (!fp) {
		rc = -errno;
		return fail_at(err, errlen, path, 0, rc, "cannot open: %s", strerror(-rc));
	}
	why = malloc(WHY_MAX);
	if (!why || conf_set_str(&c->src_path, path) < 0) {
		rc = fail_at(err, errlen, path, 0, -ENOMEM, "out of memory");
		goto out;
	}
	memset(c->src_line, 0, sizeof(c->src_line));
	memset(c->src_bad, 0, sizeof(c->src_bad));
	c->src_partial = false;

	while ((n = getline(&line, &cap, fp)) >= 0) {
		char *s, *eq, *key, *val;
		const struct item *it = NULL;
		int idx = -1;

		lineno++;
		if ((size_t)n > CONF_LINE_MAX) {
			rc = fail_at(err, errlen, path, lineno, -EINVAL, "line too long");
			goto next;
		}
		if (strlen(line) != (size_t)n) {
			rc = fail_at(err, errlen, path, lineno, -EINVAL, "NUL byte in line");
			goto next;
		}
		s = line;
		if (lineno == 1 && memcmp(s, "\xef\xbb\xbf", 3) == 0)
			s += 3; /* a UTF-8 byte order mark */
		s = trim(s);
		if (!*s || *s == ';' || *s == '#')
			continue;
		if (*s == '[') {
			char *close = strchr(s, ']'), *rest;
			if (!close) {
				rc = fail_at(err, errlen, path, lineno, -EINVAL,
					     "missing ']' in section header");
				goto next;
			}
			*close = '\0';
			rest = close + 1;
			cut_comment(rest, false);
			if (*trim(rest)) {
				rc = fail_at(err, errlen, path, lineno, -EINVAL,
					     "unexpected text after section header");
				goto next;
			}
			s = trim(s + 1);
			section = NULL;
			for (size_t i = 0; i < sizeof(sections) / sizeof(sections[0]); i++)
				if (strcmp(s, sections[i]) == 0)
					section = sections[i];
			skip_section = !section;
			if (!section) {
				rc = fail_at(err, errlen, path, lineno, -EINVAL, "unknown section [%s]", s);
				goto next;
			}
			continue;
		}
		eq = strchr(s, '=');
		if (!eq) {
			rc = fail_at(err, errlen, path, lineno, -EINVAL, "expected 'key = value'");
			goto next;
		}
		*eq = '\0';
		key = trim(s);
		val = eq + 1;
		if (!*key) {
			rc = fail_at(err, errlen, path, lineno, -EINVAL, "missing key before '='");
			goto next;
		}
		if (skip_section)
			continue;
		if (!section) {
			rc = fail_at(err, errlen, path, lineno, -EINVAL,
				     "'%s' outside of any [section]", key);
			goto next;
		}
		for (size_t i = 0; i < NITEMS; i++) {
			if (items[i].section == section && strcmp(items[i].name, key) == 0) {
				it = &items[i];
				idx = (int)i;
				break;
			}
		}
		if (!it) {
			rc = fail_at(err, errlen, path, lineno, -EINVAL, "unknown key '%s' in [%s]",
				     key, section);
			goto next;
		}
		val = trim(val);
		cut_comment(val, types[it->type].hash_first);
		val = trim(val);
		if (types[it->type].list) {
			/* The file's first value replaces the default list (a
			 * list without default may already hold retained_file's
			 * topics). */
			if (!seen[idx] && it->def)
				item_clear(c, it);
		} else if (seen[idx]) {
			rc = fail_at(err, errlen, path, lineno, -EINVAL,
				     "'%s' in [%s] given twice (first on line %u)", key, section,
				     seen[idx]);
			goto next;
		}
		if (!seen[idx])
			seen[idx] = lineno;
		c->src_line[idx] = lineno;
		c->src_bad[idx] = false;
		{
			int r = item_set(c, it, val, why, WHY_MAX);
			if (r == -ENOMEM) {
				rc = fail_at(err, errlen, path, lineno, r, "out of memory");
				goto out;
			}
			if (r < 0) {
				c->src_bad[idx] = true;
				rc = fail_at(err, errlen, path, lineno, r, "[%s] %s: %s", section, key, why);
				goto next;
			}
		}
		continue;
next:
		/* Report every bad line of the file (up to a point), not just
		 * the first, so an operator fixes them in one go. */
		if (++nerr >= CONF_MAX_ERRORS) {
			c->src_partial = true;
			goto out;
		}
	}
	if (ferror(fp)) {
		rc = fail_at(err, errlen, path, lineno, -EIO, "read error");
		goto out;
	}
	/* A repeatable list the file emptied entirely cannot happen: every
	 * occurrence adds a value. */

out:
	free(line);
	free(why);
	fclose(fp);
	return rc;
}

/* ---- validation --------------------------------------------------------- */

/* Does subscription filter sub receive every topic filter f matches? */
static bool filter_covers(const char *sub, const char *f)
{
	/* A first-level wildcard never receives '$' topics. */
	if ((sub[0] == '+' || sub[0] == '#') && (f[0] == '$'))
		return false;
	for (;;) {
		size_t ls = strcspn(sub, "/"), lf = strcspn(f, "/");

		if (ls == 1 && sub[0] == '#')
			return true;
		if (lf == 1 && f[0] == '#')
			return false; /* f goes deeper than sub does */
		if (!(ls == 1 && sub[0] == '+') && (ls != lf || memcmp(sub, f, ls) != 0))
			return false;
		sub += ls;
		f += lf;
		if (!*f)
			return !*sub || strcmp(sub, "/#") == 0;
		if (!*sub)
			return false;
		sub++;
		f++;
	}
}

/* Writes "FILE:LINE: " for the key when the file set it, else nothing. */
static int vfail(const struct conf *c, char *err, size_t errlen, const char *key,
		 const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static int vfail(const struct conf *c, char *err, size_t errlen, const char *key,
		 const char *fmt, ...)
{
	int idx = key ? item_index(key) : -1;
	size_t n = 0;
	va_list ap;
	int w;

	if (!err || !errlen)
		return -EINVAL;
	/* What follows from a line the file's parse refused (an emptied
	 * list, say) was said there already. */
	if (idx >= 0 && c->src_bad[idx])
		return -EINVAL;
	/* conf_validate reports every failure, each on a line of its own. */
	if (err[0]) {
		size_t used = strlen(err);

		if (used + 2 >= errlen)
			return -EINVAL;
		err[used++] = '\n';
		err[used] = '\0';
		err += used;
		errlen -= used;
	}
	if (idx >= 0 && c->src_path && c->src_line[idx]) {
		w = snprintf(err, errlen, "%s:%u: ", c->src_path, (unsigned)c->src_line[idx]);
		if (w > 0)
			n = (size_t)w < errlen ? (size_t)w : errlen - 1;
	}
	va_start(ap, fmt);
	vsnprintf(err + n, errlen - n, fmt, ap);
	va_end(ap);
	return -EINVAL;
}

static int check_readable(const struct conf *c, const char *key, const char *path, char *err,
			  size_t errlen)
{
	if (path && access(path, R_OK) < 0)
		return vfail(c, err, errlen, key, "%s '%s': %s", key, path, strerror(errno));
	return 0;
}

int conf_validate(const struct conf *c, char *err, size_t errlen)
{
	const char *reason = NULL;
	struct conf_url u;
	int rc = 0;
	const struct {
		const char *key;
		char *const *path;
	} secrets[] = {
		{ "password_file", &c->password_file }, { "tls_ca_file", &c->tls_ca_file },
		{ "tls_cert_file", &c->tls_cert_file }, { "tls_key_file", &c->tls_key_file },
		{ "token_file", &c->token_file },
	};

	if (err && errlen)
		err[0] = '\0';

	if (c->nurls == 0)
		rc = vfail(c, err, errlen, "url", "no broker URL");
	for (size_t i = 0; i < c->nurls; i++) {
		char shown[256];

		if (!c->urls[i] || (reason = url_parse(c->urls[i], &u)))
			rc = vfail(c, err, errlen, NULL, "invalid broker URL '%s': %s",
				   c->urls[i] ? url_shown(c->urls[i], shown, sizeof(shown)) : "",
				   c->urls[i] ? reason : "missing");
	}
	if (c->nfilters == 0)
		rc = vfail(c, err, errlen, "filter", "no subscription filter");
	for (size_t i = 0; i < c->nfilters; i++)
		if (topic_filter_check(c->filters[i]) < 0)
			rc = vfail(c, err, errlen, NULL, "invalid subscription filter '%s'",
				   c->filters[i] ? c->filters[i] : "");
	for (size_t i = 0; i < c->navail; i++) {
		const struct conf_avail *a = &c->avail[i];
		bool covered = false;

		if (!a->status || !a->keys || topic_filter_check(a->status) < 0 ||
		    topic_filter_check(a->keys) < 0) {
			rc = vfail(c, err, errlen, "availability", "invalid availability filters");
			continue;
		}
		for (size_t j = 0; j < c->nfilters && !covered; j++)
			covered = filter_covers(c->filters[j], a->status);
		if (!covered)
			rc = vfail(c, err, errlen, "availability",
				   "availability status filter '%s' is not covered by any [subscribe] filter",
				   a->status);
	}
	for (size_t i = 0; i < c->nrules; i++)
		if (topic_filter_check(c->rules[i].filter) < 0 || c->rules[i].cadence_ms < 0)
			rc = vfail(c, err, errlen, "rule", "invalid rule filter '%s'",
				   c->rules[i].filter ? c->rules[i].filter : "");
	for (size_t i = 0; i < c->nretained; i++)
		if (!c->retained[i] || topic_name_check(c->retained[i], strlen(c->retained[i])) < 0)
			rc = vfail(c, err, errlen, NULL, "invalid retained topic '%s'",
				   c->retained[i] ? c->retained[i] : "");
	if (c->protocol != CONF_PROTOCOL_AUTO && c->protocol != 5 && c->protocol != 311)
		rc = vfail(c, err, errlen, "protocol", "protocol must be auto, 5 or 3.1.1");
	if (c->qos != 0 && c->qos != 1)
		rc = vfail(c, err, errlen, "qos", "qos must be 0 or 1");
	if (c->session == CONF_SESSION_PERSISTENT && (!c->client_id || !*c->client_id))
		rc = vfail(c, err, errlen, "session",
			   "a persistent session needs a client_id");
	if (c->client_id && strlen(c->client_id) > 65535)
		rc = vfail(c, err, errlen, "client_id", "client_id is longer than 65535 bytes");
	if (c->password_file && !c->username && c->protocol == 311)
		rc = vfail(c, err, errlen, "password_file",
			   "password_file needs a username with protocol 3.1.1");
	if (!c->tls_cert_file != !c->tls_key_file)
		rc = vfail(c, err, errlen, c->tls_cert_file ? "tls_cert_file" : "tls_key_file",
			   "tls_cert_file and tls_key_file go together");
	if (c->reconnect_min_ms > c->reconnect_max_ms)
		rc = vfail(c, err, errlen, "reconnect_min",
			   "reconnect_min is above reconnect_max");
	if (c->commit_interval_ms <= 0 || c->commit_interval_ms > 1000)
		rc = vfail(c, err, errlen, "commit_interval",
			   "commit_interval must be above 0 and at most 1s (the durability bound)");
	if (!(c->grace > 0))
		rc = vfail(c, err, errlen, "grace", "grace must be above 0");
	if (!c->db_path || !*c->db_path)
		rc = vfail(c, err, errlen, "path", "no database path");
	if (!c->timestamp_field || !*c->timestamp_field)
		rc = vfail(c, err, errlen, "timestamp_field", "timestamp_field must not be empty");
	if (c->default_kind == CONF_DEFAULT_FIXED && c->default_cadence_ms <= 0)
		rc = vfail(c, err, errlen, "default", "default cadence must be above 0");
	if (c->alert_topic && *c->alert_topic &&
	    topic_name_check(c->alert_topic, strlen(c->alert_topic)) < 0)
		rc = vfail(c, err, errlen, "topic", "alert topic '%s' is not a valid topic name",
			   c->alert_topic);
	if (!c->http_listen || (reason = listen_check(c->http_listen)))
		rc = vfail(c, err, errlen, NULL, "invalid http listen address '%s': %s",
			   c->http_listen ? c->http_listen : "", c->http_listen ? reason : "missing");
	/* Anyone who can reach a non-loopback listener could read the whole
	 * mirror: such a listener needs a token. */
	else if (strncmp(c->http_listen, "unix:", 5) != 0 && !listen_is_loopback(c->http_listen) &&
	    !(c->token_file && *c->token_file))
		rc = vfail(c, err, errlen, "listen",
			   "listening on '%s', beyond loopback, needs [http] token_file",
			   c->http_listen);
	if (c->max_keys < 1 || c->max_payload < 1 || c->max_topic_len < 1)
		rc = vfail(c, err, errlen, NULL, "store limits must be positive");
	if (c->sp_primary_host && (!*c->sp_primary_host || strpbrk(c->sp_primary_host, "/+#") ||
				   topic_name_check(c->sp_primary_host, strlen(c->sp_primary_host)) < 0))
		rc = vfail(c, err, errlen, "primary_host",
			   "[sparkplug] primary_host '%s' must be one topic level (no /, + or #)",
			   c->sp_primary_host);
	for (size_t i = 0; i < sizeof(secrets) / sizeof(secrets[0]); i++)
		if (check_readable(c, secrets[i].key, *secrets[i].path, err, errlen) < 0)
			rc = -EINVAL;
	return rc;
}

/* ---- secrets ------------------------------------------------------------ */

#define SECRET_MAX (64 * 1024)

int conf_read_secret(const char *path, char **ret)
{
	char *buf = NULL, *nl, *out;
	size_t len = 0;
	int fd, rc = 0;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0)
		return -errno;
	buf = malloc(SECRET_MAX + 1);
	if (!buf) {
		rc = -ENOMEM;
		goto fail;
	}
	for (;;) {
		ssize_t r = read(fd, buf + len, SECRET_MAX + 1 - len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			rc = -errno;
			goto fail;
		}
		if (r == 0)
			break;
		len += (size_t)r;
		if (len > SECRET_MAX) {
			rc = -EFBIG;
			goto fail;
		}
	}
	buf[len] = '\0';
	nl = memchr(buf, '\n', len);
	if (nl)
		len = (size_t)(nl - buf);
	if (len && buf[len - 1] == '\r')
		len--;
	if (len == 0 || memchr(buf, '\0', len)) {
		rc = -EINVAL;
		goto fail;
	}
	out = strndup(buf, len);
	if (!out) {
		rc = -ENOMEM;
		goto fail;
	}
	explicit_bzero(buf, SECRET_MAX + 1);
	free(buf);
	close(fd);
	*ret = out;
	return 0;

fail:
	if (buf) {
		explicit_bzero(buf, SECRET_MAX + 1);
		free(buf);
	}
	close(fd);
	return rc;
}
