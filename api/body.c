/* SPDX-License-Identifier: MIT */
/* body.c: a request body gathered up to a limit, its media type checked, parsed as JSON. */
#include "api/body.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

void body_init(struct body *b, size_t limit)
{
	buf_init(&b->data, limit);
	b->limit = limit;
	b->seen = 0;
}

void body_free(struct body *b)
{
	buf_free(&b->data);
	b->seen = 0;
}

bool body_too_large(const struct body *b)
{
	return b->seen > b->limit;
}

int body_feed(struct body *b, const void *p, size_t n)
{
	int r;

	b->seen += n;
	if (body_too_large(b)) {
		/* Nothing of it is any use now: give the memory back early. */
		buf_free(&b->data);
		return -E2BIG;
	}
	if (n && (r = buf_append(&b->data, p, n)) < 0)
		return r;
	return 0;
}

static const char *skip_ows(const char *s)
{
	while (*s == ' ' || *s == '\t')
		s++;
	return s;
}

/* Length of s without trailing spaces and tabs, at most n. */
static size_t trim_len(const char *s, size_t n)
{
	while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
		n--;
	return n;
}

bool body_type_is(const char *header, const char *want)
{
	const char *s, *semi;
	size_t n, wlen = strlen(want);

	if (!header)
		return false;
	s = skip_ows(header);
	semi = strchr(s, ';');
	n = trim_len(s, semi ? (size_t)(semi - s) : strlen(s));
	if (n != wlen || strncasecmp(s, want, wlen) != 0)
		return false;
	/* Parameters: only charset matters, and only utf-8 is JSON. */
	while (semi) {
		const char *name = skip_ows(semi + 1), *eq, *val;
		size_t vlen;

		semi = strchr(name, ';');
		eq = strchr(name, '=');
		if (!eq || (semi && eq > semi))
			continue;
		if (trim_len(name, (size_t)(eq - name)) != 7 || strncasecmp(name, "charset", 7) != 0)
			continue;
		val = skip_ows(eq + 1);
		vlen = trim_len(val, semi ? (size_t)(semi - val) : strlen(val));
		if (vlen >= 2 && val[0] == '"' && val[vlen - 1] == '"') {
			val++;
			vlen -= 2;
		}
		if (!(vlen == 5 && strncasecmp(val, "utf-8", 5) == 0) &&
		    !(vlen == 4 && strncasecmp(val, "utf8", 4) == 0))
			return false;
	}
	return true;
}

int body_json(const struct body *b, json_t **ret, char *err, size_t errlen)
{
	json_error_t je;
	json_t *v;

	if (body_too_large(b)) {
		snprintf(err, errlen, "request body larger than %zu bytes", b->limit);
		return -E2BIG;
	}
	if (b->data.len == 0) {
		snprintf(err, errlen, "empty body (a JSON document is expected)");
		return -EINVAL;
	}
	v = json_loadb(b->data.data, b->data.len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &je);
	if (!v) {
		snprintf(err, errlen, "invalid JSON body: %s (line %d, column %d)", je.text,
			 je.line, je.column);
		return -EINVAL;
	}
	*ret = v;
	return 0;
}
