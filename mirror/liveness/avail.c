/* SPDX-License-Identifier: MIT */
/* avail.c: availability topics: positional binding of wildcards, payload words, the producers offline now. */
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "common/log.h"
#include "common/topic.h"
#include "mirror/liveness/avail.h"

struct line {
	char *status, *keys;
};

struct offline {
	char *bound;
	int64_t ts_ms;
};

struct avail {
	struct line *lines;
	size_t nlines;
	char *online, *offline_word, *member;
	struct offline *off;
	size_t noff, capoff;
	uint64_t forgotten;
};

static void free_lines(struct line *l, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(l[i].status);
		free(l[i].keys);
	}
	free(l);
}

struct settings {
	struct line *lines;
	size_t n;
	char *online, *offline, *member;
};

static int read_settings(const struct conf *c, struct settings *st)
{
	memset(st, 0, sizeof(*st));
	if (c->navail && !(st->lines = calloc(c->navail, sizeof(*st->lines))))
		return -ENOMEM;
	for (size_t i = 0; i < c->navail; i++, st->n++)
		if (!(st->lines[i].status = strdup(c->avail[i].status)) ||
		    !(st->lines[i].keys = strdup(c->avail[i].keys)))
			goto fail;
	st->online = strdup(c->avail_online ? c->avail_online : "online");
	st->offline = strdup(c->avail_offline ? c->avail_offline : "offline");
	st->member = c->avail_member && *c->avail_member ? strdup(c->avail_member) : NULL;
	if (!st->online || !st->offline || (c->avail_member && *c->avail_member && !st->member))
		goto fail;
	return 0;
fail:
	free_lines(st->lines, c->navail); /* calloc'd: the rest are NULL */
	free(st->online);
	free(st->offline);
	free(st->member);
	return -ENOMEM;
}

static void take(struct avail *a, struct settings *st)
{
	free_lines(a->lines, a->nlines);
	free(a->online);
	free(a->offline_word);
	free(a->member);
	a->lines = st->lines;
	a->nlines = st->n;
	a->online = st->online;
	a->offline_word = st->offline;
	a->member = st->member;
}

struct avail *avail_new(const struct conf *c)
{
	struct avail *a = calloc(1, sizeof(*a));
	struct settings st;

	if (!a || read_settings(c, &st) < 0) {
		free(a);
		return NULL;
	}
	take(a, &st);
	return a;
}

void avail_free(struct avail *a)
{
	if (!a)
		return;
	free_lines(a->lines, a->nlines);
	free(a->online);
	free(a->offline_word);
	free(a->member);
	for (size_t i = 0; i < a->noff; i++)
		free(a->off[i].bound);
	free(a->off);
	free(a);
}

int avail_reconfigure(struct avail *a, const struct conf *c)
{
	struct settings st;

	if (read_settings(c, &st) < 0)
		return -ENOMEM;
	take(a, &st);
	return 0;
}

bool avail_any(const struct avail *a)
{
	return a && a->nlines > 0;
}

int avail_match(const struct avail *a, const char *topic, size_t len)
{
	for (size_t i = 0; a && i < a->nlines; i++)
		if (topic_matches(a->lines[i].status, topic, len))
			return (int)i;
	return -1;
}

int avail_bind_filters(const char *status, const char *keys, const char *topic, size_t len,
		       char *out, size_t n)
{
	/* The topic's levels under the status filter's '+' levels, in order. */
	const char *cap[64];
	size_t caplen[64], ncap = 0, o = 0;
	const char *f = status, *t = topic, *tend = topic + len;

	if (!topic_matches(status, topic, len))
		return -EINVAL;
	for (;;) {
		size_t lf = strcspn(f, "/");
		const char *slash = memchr(t, '/', (size_t)(tend - t));
		size_t lt = slash ? (size_t)(slash - t) : (size_t)(tend - t);

		if (lf == 1 && f[0] == '#')
			break;
		if (lf == 1 && f[0] == '+' && ncap < 64) {
			cap[ncap] = t;
			caplen[ncap++] = lt;
		}
		if (!f[lf] || !slash)
			break;
		f += lf + 1;
		t = slash + 1;
	}
	/* The keys filter with its i-th '+' replaced by the i-th capture. */
	for (size_t i = 0, k = 0; keys[i];) {
		size_t l = strcspn(keys + i, "/");
		const char *src = keys + i;

		if (l == 1 && keys[i] == '+' && k < ncap) {
			src = cap[k];
			l = caplen[k++];
		}
		if (o + l + 2 > n)
			return -ENAMETOOLONG;
		memcpy(out + o, src, l);
		o += l;
		i += strcspn(keys + i, "/");
		if (keys[i] == '/') {
			out[o++] = '/';
			i++;
		}
	}
	if (o >= n)
		return -ENAMETOOLONG;
	out[o] = '\0';
	return (int)o;
}

int avail_bind(const struct avail *a, int line, const char *topic, size_t len, char *out, size_t n)
{
	if (line < 0 || (size_t)line >= a->nlines)
		return -EINVAL;
	return avail_bind_filters(a->lines[line].status, a->lines[line].keys, topic, len, out, n);
}

size_t avail_producer_len(const char *bound)
{
	size_t p = topic_filter_prefix_len(bound), full = strlen(bound);

	if (p == full && !strpbrk(bound, "+#"))
		return topic_group_prefix(bound, full); /* one topic: its parent */
	while (p > 0 && bound[p - 1] == '/')
		p--;
	return p;
}

enum avail_word avail_word(const struct avail *a, const void *payload, size_t len)
{
	const char *w = payload;
	size_t wl = len;
	json_t *o = NULL, *v;
	enum avail_word res = AVAIL_UNKNOWN;

	if (a->member) {
		json_error_t err;

		if (!len || !(o = json_loadb(payload, len, 0, &err)) ||
		    !json_is_string(v = json_object_get(o, a->member))) {
			json_decref(o);
			return AVAIL_UNKNOWN;
		}
		w = json_string_value(v);
		wl = json_string_length(v);
	}
	if (wl == strlen(a->offline_word) && memcmp(w, a->offline_word, wl) == 0)
		res = AVAIL_OFFLINE;
	else if (wl == strlen(a->online) && memcmp(w, a->online, wl) == 0)
		res = AVAIL_ONLINE;
	json_decref(o);
	return res;
}

static ssize_t off_find(const struct avail *a, const char *bound)
{
	for (size_t i = 0; i < a->noff; i++)
		if (strcmp(a->off[i].bound, bound) == 0)
			return (ssize_t)i;
	return -1;
}

int avail_set_offline(struct avail *a, const char *bound, bool offline, int64_t ts_ms)
{
	ssize_t i = off_find(a, bound);
	char *b;

	if (!offline) {
		if (i >= 0) {
			free(a->off[i].bound);
			a->off[i] = a->off[--a->noff];
		}
		return 0;
	}
	if (i >= 0)
		return 0; /* offline since the first word */
	if (a->noff == AVAIL_OFFLINE_MAX) {
		/* Bounded: the oldest is forgotten (its keys stay stale; only
		 * keys first seen later are not caught). */
		size_t old = 0;
		for (size_t k = 1; k < a->noff; k++)
			if (a->off[k].ts_ms < a->off[old].ts_ms)
				old = k;
		if (!a->forgotten++ || a->forgotten % 1000 == 0)
			log_warnx("liveness: more than %d producers offline, %llu forgotten so far",
				  AVAIL_OFFLINE_MAX, (unsigned long long)a->forgotten);
		free(a->off[old].bound);
		a->off[old] = a->off[--a->noff];
	}
	if (a->noff == a->capoff) {
		size_t ncap = a->capoff ? a->capoff * 2 : 16;
		struct offline *no = realloc(a->off, ncap * sizeof(*no));
		if (!no)
			return -ENOMEM;
		a->off = no;
		a->capoff = ncap;
	}
	if (!(b = strdup(bound)))
		return -ENOMEM;
	a->off[a->noff++] = (struct offline){ b, ts_ms };
	return 0;
}

bool avail_offline_cover(const struct avail *a, const char *topic, size_t len,
			 const char **ret_bound, int64_t *ret_ts)
{
	for (size_t i = 0; a && i < a->noff; i++) {
		if (topic_matches(a->off[i].bound, topic, len)) {
			*ret_bound = a->off[i].bound;
			*ret_ts = a->off[i].ts_ms;
			return true;
		}
	}
	return false;
}

size_t avail_offline_count(const struct avail *a)
{
	return a ? a->noff : 0;
}
