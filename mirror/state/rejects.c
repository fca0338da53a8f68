/* SPDX-License-Identifier: MIT */
/* rejects.c: a fixed ring of the most recent rejected messages, counted and logged rate-limited. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/stats.h"
#include "common/utf8.h"
#include "mirror/state/rejects.h"

#define REJECTS_LOG_TOPIC 200     /* bytes of a topic quoted in a log line */

struct rejects {
	pthread_mutex_t lock;
	size_t cap, n, next;              /* next: the slot the next entry takes */
	struct log_ratelimit rl;
	struct rejects_entry e[];         /* preallocated: adding never allocates */
};

struct rejects *rejects_new(size_t cap)
{
	struct rejects *r;

	if (cap == 0)
		cap = 1;
	if (cap > (SIZE_MAX - sizeof(*r)) / sizeof(r->e[0]))
		return NULL;
	r = calloc(1, sizeof(*r) + cap * sizeof(r->e[0]));
	if (!r)
		return NULL;
	if (pthread_mutex_init(&r->lock, NULL) != 0) {
		free(r);
		return NULL;
	}
	r->cap = cap;
	r->rl = (struct log_ratelimit)LOG_RATELIMIT_INIT(10000, 10);
	return r;
}

void rejects_free(struct rejects *r)
{
	if (!r)
		return;
	pthread_mutex_destroy(&r->lock);
	free(r);
}

/* A topic fit for a log line: control bytes, quotes and backslashes as
 * \xNN, at most REJECTS_LOG_TOPIC bytes of it, "..." when cut. */
static void log_safe(char out[REJECTS_LOG_TOPIC * 4 + 4], const char *s, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	size_t o = 0;

	for (size_t i = 0; i < n && i < REJECTS_LOG_TOPIC; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c < 0x20 || c == 0x7f || c == '"' || c == '\\') {
			out[o++] = '\\';
			out[o++] = 'x';
			out[o++] = hex[c >> 4];
			out[o++] = hex[c & 15];
		} else {
			out[o++] = (char)c;
		}
	}
	if (n > REJECTS_LOG_TOPIC)
		for (int k = 0; k < 3; k++)
			out[o++] = '.';
	out[o] = '\0';
}

void rejects_add(struct rejects *r, const char *topic, size_t topic_len,
		 const void *payload, size_t payload_len, size_t full_len,
		 enum reject_reason reason, int64_t now_ms)
{
	struct rejects_entry *e;
	uint32_t suppressed = 0;

	if ((unsigned)reason < REJECT_REASON_MAX)
		STAT_INC(rejects[reason]);
	STAT_INC(messages[APPLY_REJECTED]);
	if (payload_len > full_len)
		full_len = payload_len;

	pthread_mutex_lock(&r->lock);
	e = &r->e[r->next];
	r->next = (r->next + 1) % r->cap;
	if (r->n < r->cap)
		r->n++;
	e->time_ms = now_ms;
	e->reason = reason;
	e->payload_size = full_len;
	e->topic_cut = topic_len > REJECTS_KEEP_TOPIC;
	e->topic_len = (uint16_t)(e->topic_cut ? REJECTS_KEEP_TOPIC : topic_len);
	if (e->topic_len)
		memcpy(e->topic, topic, e->topic_len);
	e->kept = (uint8_t)(payload_len < REJECTS_KEEP_BYTES ? payload_len : REJECTS_KEEP_BYTES);
	if (e->kept)
		memcpy(e->payload, payload, e->kept);
	pthread_mutex_unlock(&r->lock);

	if (log_ratelimit_ok(&r->rl, now_ms, &suppressed)) {
		char t[REJECTS_LOG_TOPIC * 4 + 4];

		log_safe(t, topic, topic_len);
		if (suppressed)
			log_warnx("%u more rejects not logged", suppressed);
		log_warnx("message on \"%s\" (%zu bytes) rejected: %s", t, full_len,
			  reject_reason_name(reason));
	}
}

int rejects_visit(struct rejects *r, rejects_visit_fn fn, void *ctx)
{
	int rc = 0;

	pthread_mutex_lock(&r->lock);
	for (size_t i = 0; i < r->n && rc == 0; i++)
		rc = fn(&r->e[(r->next + r->cap - 1 - i) % r->cap], ctx);
	pthread_mutex_unlock(&r->lock);
	return rc;
}
