/* SPDX-License-Identifier: MIT */
/* hmap.h: the one small hash map: 32-bit keys to 32-bit values, open addressing, 8 bytes an entry, bounded. */
#ifndef SM_HMAP_H
#define SM_HMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
** Every map of ours is this one. An entry is a 32-bit key (never 0: 0
** marks a free slot) and a 32-bit value, 8 bytes, no per-entry allocation;
** linear probing from the key's Fibonacci hash, at most 3/4 full, deletion
** by backward shift (no tombstones), so a lookup costs a few adjacent reads.
**
** Two ways to use it:
**  - the key is the key: a 32-bit number of ours (a record reference);
**    lookups pass eq = NULL, equal keys are the same entry;
**  - the key is a hash (hash_key32 of hash_bytes / hash_ptr) and the value
**    names the item in the caller's own array: lookups pass eq, called for
**    each entry whose key matches, to compare the item itself. Distinct
**    items may share a key; the caller puts only items it did not find.
**
** Bounded: a map never holds more than its max entries (HMAP_INIT); a put
** past it fails with -ENOSPC, the caller's answer is counted and logged
** there. Not thread-safe: the owner's lock covers it.
*/
struct hmap_ent {
	uint32_t key;
	uint32_t val;
};

struct hmap {
	struct hmap_ent *e;
	uint32_t cap;   /* a power of 2, or 0 before the first put */
	uint32_t n;
	uint32_t max;   /* entries at most */
};

#define HMAP_INIT(max_entries) { NULL, 0, 0, (max_entries) }

/* Does entry value val hold the item k? (ctx: the caller's) */
typedef bool (*hmap_eq_fn)(uint32_t val, const void *k, const void *ctx);

/* Free the table; m is then empty and reusable. Accepts an empty map. */
void hmap_free(struct hmap *m);

/* Forget every entry, keep the table. */
void hmap_clear(struct hmap *m);

/* Make room for n entries in all, so that puts up to there cannot fail.
 * Returns 0, -ENOSPC (n > max) or -ENOMEM (the map unchanged). */
int hmap_reserve(struct hmap *m, uint32_t n);

/* Add (key, val); key != 0. Does not look for an equal entry first. Returns
 * 0, -EINVAL (key 0), -ENOSPC (full at max) or -ENOMEM (unchanged). */
int hmap_put(struct hmap *m, uint32_t key, uint32_t val);

/* The value of the entry with key that eq accepts (eq NULL: any with key),
 * as a pointer the caller may write through until the next put or del;
 * NULL when there is none. */
uint32_t *hmap_find(const struct hmap *m, uint32_t key, hmap_eq_fn eq, const void *k, const void *ctx);

/* Remove that entry. Returns 0 or -ENOENT. */
int hmap_del(struct hmap *m, uint32_t key, hmap_eq_fn eq, const void *k, const void *ctx);

/* Bytes the table takes (for memory accounting and tests). */
static inline size_t hmap_bytes(const struct hmap *m)
{
	return (size_t)m->cap * sizeof(struct hmap_ent);
}

#endif
