/* SPDX-License-Identifier: MIT */
/* topic.c: MQTT topic name and filter validation and matching (MQTT 5.0 4.7). */
#include "common/topic.h"

#include <errno.h>
#include <string.h>

#include "common/utf8.h"

int topic_name_check(const char *topic, size_t len)
{
	if (!topic || len == 0 || len > TOPIC_MAX_LEN)
		return -EINVAL;
	/* Wildcards and U+0000 are single bytes that never occur inside a
	 * multi-byte UTF-8 sequence, so a byte scan is exact. */
	for (size_t i = 0; i < len; i++) {
		char c = topic[i];
		if (c == '+' || c == '#' || c == '\0')
			return -EINVAL;
	}
	return utf8_valid(topic, len) ? 0 : -EINVAL;
}

int topic_filter_check(const char *filter)
{
	size_t len, i;

	if (!filter)
		return -EINVAL;
	len = strlen(filter);
	if (len == 0 || len > TOPIC_MAX_LEN)
		return -EINVAL;
	for (i = 0; i < len; i++) {
		char c = filter[i];
		bool level_start = i == 0 || filter[i - 1] == '/';
		bool level_end = i + 1 == len || filter[i + 1] == '/';

		if (c == '+' && !(level_start && level_end))
			return -EINVAL;
		if (c == '#' && !(level_start && i + 1 == len))
			return -EINVAL;
	}
	return utf8_valid(filter, len) ? 0 : -EINVAL;
}

bool topic_matches(const char *filter, const char *topic, size_t len)
{
	const char *f = filter;
	size_t i = 0;

	if (len == 0)
		return false;
	/* MQTT 5.0 4.7.2: a leading wildcard does not match "$" topics. */
	if (topic[0] == '$' && (f[0] == '+' || f[0] == '#'))
		return false;
	for (;;) {
		/* At the start of a level in both. */
		if (f[0] == '#')
			return true;
		if (f[0] == '+') {
			f++;
			while (i < len && topic[i] != '/')
				i++;
		} else {
			while (*f && *f != '/' && i < len && topic[i] == *f) {
				f++;
				i++;
			}
			if ((*f && *f != '/') || (i < len && topic[i] != '/'))
				return false;
		}
		if (*f == '\0')
			return i == len;
		/* *f == '/' */
		if (i == len)
			return f[1] == '#' && f[2] == '\0'; /* "sport/#" matches "sport" */
		f++;
		i++;
	}
}

size_t topic_filter_prefix_len(const char *filter)
{
	size_t i = 0, level = 0;

	for (;;) {
		char c = filter[i];

		if (c == '\0')
			return i;
		if (i == level && (c == '+' || c == '#')) {
			/* "a/#" also matches "a": its prefix must not include the '/'. */
			if (c == '#' && level > 0)
				return level - 1;
			return level;
		}
		i++;
		if (c == '/')
			level = i;
	}
}

size_t topic_group_prefix(const char *topic, size_t len)
{
	const char *slash = len ? memrchr(topic, '/', len) : NULL;

	return slash ? (size_t)(slash - topic) : 0;
}
