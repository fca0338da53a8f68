/* SPDX-License-Identifier: MIT */
/* hmap.c: open addressing with linear probing and backward-shift deletion. */
#include "common/hmap.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define HMAP_MIN_CAP 16u

/* Fibonacci hashing: the product's top bits, as many as cap needs; they
 * depend on every bit of the key. */
static inline uint32_t home(uint32_t key, uint32_t cap)
{
	return (key * 0x9e3779b1u) >> (32 - __builtin_ctz(cap));
}

static void place(struct hmap_ent *e, uint32_t cap, struct hmap_ent x)
{
	uint32_t i = home(x.key, cap);

	while (e[i].key)
		i = (i + 1) & (cap - 1);
	e[i] = x;
}

void hmap_free(struct hmap *m)
{
	free(m->e);
	m->e = NULL;
	m->cap = m->n = 0;
}

void hmap_clear(struct hmap *m)
{
	if (m->e)
		memset(m->e, 0, hmap_bytes(m));
	m->n = 0;
}

int hmap_reserve(struct hmap *m, uint32_t n)
{
	uint64_t cap = m->cap ? m->cap : HMAP_MIN_CAP;
	struct hmap_ent *ne;

	if (n > m->max)
		return -ENOSPC;
	while ((uint64_t)n * 4 > cap * 3)
		cap *= 2;
	if (cap == m->cap)
		return 0;
	if (cap > UINT32_MAX || !(ne = calloc((size_t)cap, sizeof(*ne))))
		return -ENOMEM;
	for (uint32_t i = 0; i < m->cap; i++)
		if (m->e[i].key)
			place(ne, (uint32_t)cap, m->e[i]);
	free(m->e);
	m->e = ne;
	m->cap = (uint32_t)cap;
	return 0;
}

int hmap_put(struct hmap *m, uint32_t key, uint32_t val)
{
	int rc;

	if (!key)
		return -EINVAL;
	if ((rc = hmap_reserve(m, m->n + 1)) < 0)
		return rc;
	place(m->e, m->cap, (struct hmap_ent){ key, val });
	m->n++;
	return 0;
}

static int64_t slot_of(const struct hmap *m, uint32_t key, hmap_eq_fn eq, const void *k,
		       const void *ctx)
{
	if (!m->cap || !key)
		return -1;
	for (uint32_t i = home(key, m->cap); m->e[i].key; i = (i + 1) & (m->cap - 1))
		if (m->e[i].key == key && (!eq || eq(m->e[i].val, k, ctx)))
			return i;
	return -1;
}

uint32_t *hmap_find(const struct hmap *m, uint32_t key, hmap_eq_fn eq, const void *k, const void *ctx)
{
	int64_t i = slot_of(m, key, eq, k, ctx);

	return i < 0 ? NULL : &m->e[i].val;
}

int hmap_del(struct hmap *m, uint32_t key, hmap_eq_fn eq, const void *k, const void *ctx)
{
	int64_t s = slot_of(m, key, eq, k, ctx);
	uint32_t i, j, mask = m->cap - 1;

	if (s < 0)
		return -ENOENT;
	/* Backward shift: pull later entries of the run into the hole when
	 * their home is not between the hole and where they sit. */
	i = (uint32_t)s;
	for (j = (i + 1) & mask; m->e[j].key; j = (j + 1) & mask) {
		uint32_t h = home(m->e[j].key, m->cap);

		if (((j - h) & mask) >= ((j - i) & mask)) {
			m->e[i] = m->e[j];
			i = j;
		}
	}
	m->e[i] = (struct hmap_ent){ 0, 0 };
	m->n--;
	return 0;
}
