/* SPDX-License-Identifier: MIT */
/* fuzz_filter.c: libFuzzer target for MQTT filter checking and topic matching. */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/topic.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool has_wildcard(const char *f)
{
	return strchr(f, '+') || strchr(f, '#');
}

/*
** Input: FILTER '\0' TOPIC (no NUL: the whole input is both). Checks the
** properties the index and the watch streams rely on: a matching topic
** starts with the filter's literal prefix (the index seeks to it, the
** watch hub compares it first); a filter without wildcards matches
** exactly itself; "#" matches every topic not starting with '$'.
*/
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *nul = memchr(data, '\0', size);
	size_t flen = nul ? (size_t)(nul - (const char *)data) : size;
	const char *topic = nul ? nul + 1 : (const char *)data;
	size_t tlen = nul ? size - flen - 1 : size;
	char *filter = malloc(flen + 1);
	bool topic_ok;

	if (!filter)
		abort();
	memcpy(filter, data, flen);
	filter[flen] = '\0';
	topic_ok = topic_name_check(topic, tlen) == 0;
	if (topic_ok)
		assert(!memchr(topic, '+', tlen) && !memchr(topic, '#', tlen) && tlen > 0);
	if (topic_filter_check(filter) == 0) {
		size_t plen = topic_filter_prefix_len(filter);
		bool m = topic_matches(filter, topic, tlen);

		assert(plen <= flen);
		if (m && topic_ok)
			assert(tlen >= plen && memcmp(topic, filter, plen) == 0);
		if (topic_ok && !has_wildcard(filter))
			assert(m == (tlen == flen && memcmp(topic, filter, flen) == 0));
		if (topic_ok && strcmp(filter, "#") == 0)
			assert(m == (topic[0] != '$'));
		/* A valid topic is a valid filter that matches itself. */
		if (topic_ok && !memchr(topic, '\0', tlen)) {
			char *t = malloc(tlen + 1);

			if (!t)
				abort();
			memcpy(t, topic, tlen);
			t[tlen] = '\0';
			assert(topic_filter_check(t) == 0);
			assert(topic_matches(t, topic, tlen));
			free(t);
		}
	}
	free(filter);
	return 0;
}
