/* SPDX-License-Identifier: MIT */
/* topic.h: MQTT topic names and filters (MQTT 5.0 section 4.7). */
#ifndef SM_TOPIC_H
#define SM_TOPIC_H

#include <stdbool.h>
#include <stddef.h>

#define TOPIC_MAX_LEN 65535

/* A topic name as published: 1..65535 bytes of valid UTF-8, no U+0000,
 * no '+' or '#'. Returns 0 or -EINVAL. */
int topic_name_check(const char *topic, size_t len);

/* A subscription filter: valid UTF-8, '#' only as the whole last level,
 * '+' only as a whole level, not empty. Returns 0 or -EINVAL. */
int topic_filter_check(const char *filter);

/*
** Does `topic` (len bytes, not necessarily NUL-terminated) match `filter`?
** Follows the spec: "sport/#" matches "sport"; "+" matches an empty level;
** topics starting with '$' are not matched by a filter whose first level
** is a wildcard.  The filter must have passed topic_filter_check().
*/
bool topic_matches(const char *filter, const char *topic, size_t len);

/* Length of the filter's literal prefix: the bytes before its first
 * wildcard level.  Every topic that matches starts with these bytes, which
 * lets an ordered index seek instead of scanning ("a/b/+" -> 4, "#" -> 0).
 * A trailing "/#" is not part of it, since "a/#" also matches "a": "a/#" -> 1.
 * The prefix still matches more than the filter ("a" prefixes "ab"): filter
 * the candidates with topic_matches(). */
size_t topic_filter_prefix_len(const char *filter);

/* The grouping prefix of a topic (alerts, GET /v1/stale): its length, the
 * topic without its last level ("dc1/hall2/rack17/temp" -> 16, i.e.
 * "dc1/hall2/rack17"; a one-level topic "top" -> 0; "/a" -> 0). */
size_t topic_group_prefix(const char *topic, size_t len);

#endif
