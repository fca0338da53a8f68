/* SPDX-License-Identifier: MIT */
/* intents.c: the intent endpoints' rules: what a request may ask, and the records they answer. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "api/intents.h"
#include "api/render.h"
#include "api/watch.h"
#include "common/conf.h"
#include "common/stats.h"
#include "common/topic.h"

static unsigned fail(struct buf *out, unsigned code, const char *reason)
{
	if (code == 400 || code == 403)
		STAT_INC(intents_rejected); /* the outcome "rejected" */
	buf_reset(out);
	if (render_error(out, reason) < 0)
		return 500;
	return code;
}

/* A duration member: "30s"-style text, or a number of milliseconds. */
static int member_duration(const json_t *v, int64_t *ret_ms)
{
	int64_t ms;

	if (json_is_integer(v)) {
		ms = json_integer_value(v);
	} else if (json_is_string(v)) {
		if (conf_parse_duration(json_string_value(v), &ms) < 0)
			return -EINVAL;
	} else {
		return -EINVAL;
	}
	if (ms <= 0 || ms > INT64_C(24) * 3600 * 1000)
		return -EINVAL;
	*ret_ms = ms;
	return 0;
}

static bool allowed(const struct api_intents *ai, const char *topic, size_t len)
{
	for (size_t i = 0; i < ai->nallow; i++)
		if (topic_matches(ai->allow[i], topic, len))
			return true;
	return false;
}

/* The confirm member's value now, or NULL (no such key, not JSON, no
 * such member). New reference. */
static json_t *value_now(const struct api_intents *ai, const char *topic, const char *member)
{
	json_t *doc = NULL, *v = NULL;
	const void *p;
	size_t n;
	struct rec *r;

	if (!ai->ix)
		return NULL;
	index_rdlock(ai->ix);
	r = index_get(ai->ix, topic, strlen(topic));
	if (r && !(r->flags & REC_DELETED) && (r->flags & REC_IS_JSON) &&
	    rec_payload(ai->ix, r, &p, &n) == 0 && p)
		doc = json_loadb(p, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
	index_unlock(ai->ix);
	if (json_is_object(doc) && (v = json_object_get(doc, member)))
		json_incref(v);
	json_decref(doc);
	return v;
}

struct render_ctx {
	struct buf *out;
	bool decided;
	int err;
};

static int render_one(const struct intent_info *it, void *arg)
{
	struct render_ctx *rc = arg;

	rc->decided = it->decided_ms != 0;
	rc->err = render_intent(rc->out, it);
	return rc->err < 0 ? 1 : 0;
}

unsigned api_intent_post(const struct api_intents *ai, const char *topic, size_t len,
			 const json_t *body, int64_t now_ms, struct buf *out, int64_t *ret_id)
{
	struct intent_request rq = { .expire_ms = ai->expire_ms, .timeout_ms = ai->timeout_ms };
	struct render_ctx rc = { .out = out };
	const char *key, *member = NULL;
	json_t *v, *before = NULL;
	char t[1024], err[256];
	int64_t id;
	int r;

	if (!ai->in || ai->nallow == 0)
		return fail(out, 403, "intents are off: no [intents] allow filter is set");
	if (len == 0 || len > ai->max_topic_len || len >= sizeof(t) ||
	    topic_name_check(topic, len) < 0)
		return fail(out, 400, "the intent topic must be a topic name (no wildcards, valid UTF-8)");
	if (!allowed(ai, topic, len))
		return fail(out, 403, "intents to this topic are not allowed ([intents] allow)");
	memcpy(t, topic, len);
	t[len] = '\0';
	rq.topic = t;
	if (!json_is_object(body))
		return fail(out, 400, "the body must be a JSON object with a \"value\"");
	json_object_foreach((json_t *)body, key, v) {
		if (strcmp(key, "value") == 0) {
			rq.value = v;
		} else if (strcmp(key, "correlation_id") == 0) {
			if (!json_is_string(v) || json_string_length(v) == 0 ||
			    json_string_length(v) > 128 || strlen(json_string_value(v)) != json_string_length(v))
				return fail(out, 400, "correlation_id must be a string of 1 to 128 characters");
			rq.correlation_id = json_string_value(v);
		} else if (strcmp(key, "expire") == 0) {
			if (member_duration(v, &rq.expire_ms) < 0)
				return fail(out, 400, "expire must be a duration (\"30s\") or milliseconds, at most 1d");
		} else if (strcmp(key, "timeout") == 0) {
			if (member_duration(v, &rq.timeout_ms) < 0)
				return fail(out, 400, "timeout must be a duration (\"10s\") or milliseconds, at most 1d");
		} else if (strcmp(key, "confirm") == 0) {
			const char *ck;
			json_t *cv;

			if (!json_is_object(v))
				return fail(out, 400, "confirm must be an object {\"topic\": ..., \"member\": ...}");
			json_object_foreach(v, ck, cv) {
				if (strcmp(ck, "topic") == 0 && json_is_string(cv) &&
				    topic_name_check(json_string_value(cv), json_string_length(cv)) == 0 &&
				    json_string_length(cv) <= ai->max_topic_len) {
					rq.confirm_topic = json_string_value(cv);
				} else if (strcmp(ck, "member") == 0 && json_is_string(cv) &&
					   json_string_length(cv) > 0 && json_string_length(cv) <= 256) {
					member = json_string_value(cv);
				} else {
					char why[160];

					snprintf(why, sizeof(why), "confirm.%.64s: %s", ck,
						 strcmp(ck, "topic") == 0 ? "must be a topic name" :
						 strcmp(ck, "member") == 0 ? "must be a member name" :
						 "unknown member");
					return fail(out, 400, why);
				}
			}
			if (!rq.confirm_topic)
				return fail(out, 400, "confirm.topic is required in confirm");
		} else {
			char why[160];

			snprintf(why, sizeof(why), "unknown member \"%.64s\" (value, confirm, "
				 "correlation_id, expire, timeout)", key);
			return fail(out, 400, why);
		}
	}
	if (!rq.value)
		return fail(out, 400, "the body has no \"value\"");
	rq.confirm_member = member ? member : "value";
	if (rq.confirm_topic)
		before = value_now(ai, rq.confirm_topic, rq.confirm_member);
	rq.before = before;
	r = intents_submit(ai->in, &rq, now_ms, &id, err, sizeof(err));
	json_decref(before);
	if (r == -ENOBUFS)
		return fail(out, 503, "the outbox is full ([intents] outbox_max undecided intents): "
				      "nothing was accepted, try again later");
	if (r == -EINVAL)
		return fail(out, 400, err);
	if (r == -ENOMEM)
		return fail(out, 500, "out of memory");
	if (r < 0) {
		char why[320];

		snprintf(why, sizeof(why), "the intent could not be stored: %s", err);
		return fail(out, 503, why);
	}
	*ret_id = id;
	buf_reset(out);
	if (intents_get(ai->in, id, render_one, &rc) < 0 || rc.err < 0)
		return fail(out, 500, "out of memory");
	return 202;
}

unsigned api_intent_get(const struct api_intents *ai, int64_t id, struct buf *out,
			bool *ret_decided)
{
	struct render_ctx rc = { .out = out };
	int r;

	if (!ai->in)
		return fail(out, 404, "no such intent (intents are off)");
	buf_reset(out);
	r = intents_get(ai->in, id, render_one, &rc);
	if (r == -ENOENT)
		return fail(out, 404, "no such intent");
	if (r < 0 || rc.err < 0)
		return fail(out, 500, "out of memory");
	*ret_decided = rc.decided;
	return 200;
}

struct list_ctx {
	struct buf *out;
	bool first;
	int err;
};

static int list_one(const struct intent_info *it, void *arg)
{
	struct list_ctx *lc = arg;

	if ((!lc->first && (lc->err = buf_putc(lc->out, ',')) < 0) ||
	    (lc->err = render_intent(lc->out, it)) < 0)
		return 1;
	lc->first = false;
	return 0;
}

unsigned api_intent_list(const struct api_intents *ai, enum intent_state only, size_t limit,
			 struct buf *out)
{
	struct list_ctx lc = { .out = out, .first = true };

	buf_reset(out);
	if (buf_puts(out, "{\"items\":[") < 0)
		return fail(out, 500, "out of memory");
	if (ai->in && (intents_list(ai->in, only, limit, list_one, &lc) < 0 || lc.err < 0))
		return fail(out, 500, "out of memory");
	if (buf_puts(out, "]}") < 0)
		return fail(out, 500, "out of memory");
	return 200;
}

int api_intent_event(const struct intent_info *it, void *ctx)
{
	struct buf b;

	buf_init(&b, 1u << 20);
	if (buf_puts(&b, "event: intent\ndata: ") == 0 && render_intent(&b, it) == 0 &&
	    buf_puts(&b, "\n\n") == 0)
		watch_event(ctx, it->topic, strlen(it->topic), b.data, b.len);
	buf_free(&b);
	return 0;
}
