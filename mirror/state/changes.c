/* SPDX-License-Identifier: MIT */
/* changes.c: the bounded log of recent changes that watch streams replay and follow. */
#include <stdlib.h>

#include "mirror/state/changes.h"

struct changes {
	struct change *ring;
	size_t cap;
	int64_t base;   /* revisions <= base are not in the ring */
	int64_t head;   /* the newest revision appended */
};

static const char *const change_names[CHANGE_TYPE_MAX] = {
	[CHANGE_UPDATE] = "update",
	[CHANGE_DELETE] = "delete",
	[CHANGE_STALE] = "stale",
	[CHANGE_FRESH] = "fresh",
};

const char *change_type_name(enum change_type t)
{
	return t < CHANGE_TYPE_MAX ? change_names[t] : "unknown";
}

struct changes *changes_new(size_t cap, int64_t base_rev)
{
	struct changes *cl;

	if (cap == 0)
		cap = 1;
	cl = calloc(1, sizeof(*cl));
	if (!cl)
		return NULL;
	cl->ring = calloc(cap, sizeof(*cl->ring));
	if (!cl->ring) {
		free(cl);
		return NULL;
	}
	cl->cap = cap;
	cl->base = cl->head = base_rev;
	return cl;
}

void changes_free(struct changes *cl)
{
	if (!cl)
		return;
	free(cl->ring);
	free(cl);
}

void changes_append(struct changes *cl, struct rec *r, enum change_type t)
{
	struct change *c;

	/* A revision that does not follow on (it should not happen) restarts
	 * the ring: readers behind it get a snapshot instead of a gap. */
	if (r->rev != cl->head + 1)
		cl->base = r->rev - 1;
	cl->head = r->rev;
	if ((uint64_t)(cl->head - cl->base) > cl->cap)
		cl->base = cl->head - (int64_t)cl->cap;
	c = &cl->ring[(uint64_t)cl->head % cl->cap];
	c->rev = r->rev;
	c->rec = r;
	c->type = (uint8_t)t;
}

int64_t changes_head(const struct changes *cl)
{
	return cl->head;
}

size_t changes_read(const struct changes *cl, int64_t after, struct change *out, size_t n,
		    bool *ret_gap)
{
	size_t k = 0;

	*ret_gap = after < cl->base || after > cl->head;
	if (*ret_gap)
		return 0;
	for (int64_t rev = after + 1; rev <= cl->head && k < n; rev++)
		out[k++] = cl->ring[(uint64_t)rev % cl->cap];
	return k;
}
