/* SPDX-License-Identifier: MIT */
/* index.c: the key index, a crit-bit tree over topic bytes (djb, agl) behind a rwlock. */
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/hash.h"
#include "mirror/state/index.h"

/*
** The tree holds 32-bit references, not pointers: at a million keys that
** halves the internal nodes (12 bytes instead of 24) and the walk stacks.
** A reference with bit 0 set is internal node number ref >> 1; with bit 0
** clear it is a record: bits 31..18 its block, bits 17..1 its slot's offset
** in the block in 8-byte units. An internal node splits on one bit: `byte`
** is the index of the first byte where its two subtrees differ and
** `otherbits` has every bit set except that critical one, so that
** (1 + (otherbits | c)) >> 8 is the direction for byte c.  Bytes past a
** topic's end read as 0; topics hold no NUL, so a prefix sorts before its
** extensions and an in-order walk is byte order.
**
** Keys are never removed (a delete leaves a tombstone record), so nodes and
** records come from arenas that only grow, freed all at once by
** index_free(): nodes from chunks of 8192, records from 1 MiB blocks (a
** record is one slot holding its fields and its topic, with no malloc
** header and no rounding to malloc's size classes; 2^14 blocks, 16 GiB of
** records, is the most one index holds). A payload the file does not have
** yet is malloc'd, and released by index_free(). Every record hangs below
** exactly one internal node (or is the root), which is how index_free()
** finds them.
*/
typedef uint32_t cb_ref;

#define CB_NONE UINT32_MAX                /* the empty tree's root */

struct cb_node {
	cb_ref child[2];
	uint16_t byte;           /* < 65536: topics are at most 65535 bytes */
	uint8_t otherbits;
};
_Static_assert(sizeof(struct cb_node) == 12, "a crit-bit node is 12 bytes");
_Static_assert(offsetof(struct rec, data) == 73, "rec_slot_size says 73");

#define NODE_CHUNK_SHIFT 13
#define NODE_CHUNK (1u << NODE_CHUNK_SHIFT)
#define NODE_MAX ((1u << 31) - 1)        /* node numbers below; CB_NONE is not one */

#define REC_BLOCK_SHIFT 20
#define REC_BLOCK_SIZE (1u << REC_BLOCK_SHIFT)
#define REC_BLOCK_MAX (1u << (31 - REC_BLOCK_SHIFT + 3))
#define REC_SLOT_BITS (REC_BLOCK_SHIFT - 3)

struct block_at {
	uintptr_t addr;
	uint32_t num;
};

#define RETIRED_MAX 32 /* chunk and block tables outgrown: 14 + 10 doublings at most */

struct index {
	uint64_t gen;                /* unique in the process: names it in read caches */
	/* Where payloads in the file come from (index_set_payload_source). */
	rec_fetch_fn fetch;
	rec_scan_fn scan;
	rec_scan_end_fn scan_end;
	void *source_ctx;
	cb_ref root;
	struct cb_node **chunks;     /* node n is chunks[n >> 13][n & 8191] */
	uint32_t nnodes, capchunks;
	char **blocks;               /* records are carved from the last one */
	uint32_t nblocks, capblocks;
	struct block_at *by_addr;    /* the blocks sorted by address, for index_ref() */
	size_t block_used;
	size_t nrec, nlive;
	/* Tables outgrown, kept until index_free(): a lock-free reader may
	 * still be looking through the old one (index_peek). */
	void *retired[RETIRED_MAX];
	uint32_t nretired;
	pthread_rwlock_t lock;
	/* The records' sequence (index_peek): odd while a writer changes them. */
	_Alignas(64) _Atomic uint64_t seq;
};

static inline bool is_node(cb_ref p) { return p & 1; }

/*
** Links are stored with release and read with acquire: a new node or
** record is written in full before the one link that makes it reachable,
** and a reader without the lock (index_peek) that sees the link sees what
** it leads to. Nodes and records never move and are never freed before
** index_free(); the chunk and block tables that name them are replaced,
** not reallocated, when they grow (the old ones are retired). On x86 both
** are plain moves.
*/
static inline cb_ref load_ref(const cb_ref *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void store_ref(cb_ref *p, cb_ref v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

static inline struct cb_node *to_node(const struct index *ix, cb_ref p)
{
	struct cb_node **chunks = __atomic_load_n(&ix->chunks, __ATOMIC_ACQUIRE);
	uint32_t n = p >> 1;

	return &chunks[n >> NODE_CHUNK_SHIFT][n & (NODE_CHUNK - 1)];
}

static inline struct rec *to_rec(const struct index *ix, cb_ref p)
{
	char **blocks = __atomic_load_n(&ix->blocks, __ATOMIC_ACQUIRE);

	return (struct rec *)(blocks[p >> (REC_SLOT_BITS + 1)] +
			      ((size_t)((p >> 1) & ((1u << REC_SLOT_BITS) - 1)) << 3));
}

/*
** A table (chunks, blocks) grown to ncap entries of `size` bytes, the n in
** use copied: the old one is retired, not freed (see load_ref). Publish
** the result with __atomic_store_n(..., __ATOMIC_RELEASE). NULL on ENOMEM.
*/
static void *table_grow(struct index *ix, void *old, size_t n, size_t ncap, size_t size)
{
	void *t;

	if (old && ix->nretired == RETIRED_MAX)
		return NULL;
	if (!(t = malloc(ncap * size)))
		return NULL;
	if (n)
		memcpy(t, old, n * size);
	if (old)
		ix->retired[ix->nretired++] = old;
	return t;
}

static inline uint8_t key_byte(const char *k, size_t len, uint32_t i)
{
	return i < len ? (uint8_t)k[i] : 0;
}

static inline int direction(const struct cb_node *n, const char *k, size_t len)
{
	return (1 + (n->otherbits | key_byte(k, len, n->byte))) >> 8;
}

/* r owns a payload buffer. */
static inline bool payload_in_ram(const struct rec *r)
{
	return !(r->flags & REC_IN_FILE) && r->payload;
}

static void rec_init(struct rec *r, const char *topic, size_t topic_len)
{
	memset(r, 0, sizeof(*r));
	r->heap_idx = UINT32_MAX;
	r->topic_len = (uint16_t)topic_len;
	if (topic_len)
		memcpy(r->data, topic, topic_len);
	r->data[topic_len] = '\0';
}

/* Free what r owns beyond its own block. */
static void rec_release(struct rec *r)
{
	if (payload_in_ram(r))
		free(r->payload);
}

struct rec *rec_new(const char *topic, size_t topic_len)
{
	struct rec *r;

	if (topic_len > UINT16_MAX) {
		errno = EINVAL;
		return NULL;
	}
	r = malloc(sizeof(*r) + topic_len + 1);
	if (!r)
		return NULL;
	rec_init(r, topic, topic_len);
	return r;
}

void rec_free(struct rec *r)
{
	if (!r)
		return;
	rec_release(r);
	free(r);
}

/* Keep a malloc'd buffer that fits unless it is much larger than needed, so
 * that a value changing by a few bytes never reallocates (malloc rounds up
 * to 16 anyway) while one huge payload does not pin its memory forever. */
static bool payload_fits(struct rec *r, size_t need)
{
	size_t have;

	if (!payload_in_ram(r))
		return false;
	/* The common case, a value of the same size, needs no look at the
	 * buffer: it was kept (or made) for exactly this size. */
	if (need == (size_t)r->payload_len + 1)
		return true;
	have = malloc_usable_size(r->payload);
	return need <= have && have <= 2 * need + 64;
}

int rec_set_payload(struct rec *r, const void *p, size_t n)
{
	char *np = NULL;

	if (n >= UINT32_MAX)
		return -E2BIG;
	if (n == 0)
		np = NULL;
	else if (payload_fits(r, n + 1))
		np = r->payload;
	else if (!(np = malloc(n + 1)))
		return -ENOMEM;
	if (np) {
		memmove(np, p, n);
		np[n] = '\0';
	}
	if (payload_in_ram(r) && r->payload != np)
		free(r->payload);
	r->flags &= (uint16_t)~REC_IN_FILE;
	r->payload = np;
	r->payload_len = (uint32_t)n;
	return 0;
}

/* Payload hashes never leave the process (the loader recomputes them):
 * common/hash.h's seeded hash. */
uint64_t rec_payload_hash(const void *p, size_t n)
{
	return hash_bytes(p, n);
}

void rec_drop_payload(struct rec *r)
{
	uint64_t h;

	if (!payload_in_ram(r) || (r->flags & REC_DELETED))
		return;
	h = rec_payload_hash(r->payload, r->payload_len);
	free(r->payload);
	r->payload_hash = h;
	r->flags |= REC_IN_FILE;
}

void rec_set_payload_in_file(struct rec *r, size_t n, uint64_t hash)
{
	if (payload_in_ram(r))
		free(r->payload);
	r->payload_hash = hash;
	r->payload_len = (uint32_t)n;
	r->flags |= REC_IN_FILE;
}

void index_set_payload_source(struct index *ix, rec_fetch_fn fetch, rec_scan_fn scan,
			      rec_scan_end_fn scan_end, void *ctx)
{
	ix->fetch = fetch;
	ix->scan = scan;
	ix->scan_end = scan_end;
	ix->source_ctx = ctx;
}

void rec_payload_scan(const struct index *ix, const char *from, size_t len)
{
	if (ix && ix->scan)
		ix->scan(ix->source_ctx, from, len);
}

void rec_payload_scan_end(const struct index *ix)
{
	if (ix && ix->scan_end)
		ix->scan_end(ix->source_ctx);
}

/*
** Each thread that reads payloads from the file keeps the last ones it read
** (a point read polled again and again, the pages of a listing): a slot
** per record, direct-mapped by the record's address, valid while the record
** has the revision it had when read. A revision names one value of a key
** for ever (a new value is a new revision; a restart continues above every
** old one), so a hit is that value, byte for byte, with no SQLite read
** transaction (two fcntl locks and a global mutex) behind it. Bounded per
** thread: PCACHE_SLOTS slots, payloads up to PCACHE_MAX_PAYLOAD bytes,
** PCACHE_BUDGET bytes in all; freed when the thread ends.
*/
#define PCACHE_SLOTS 4096u
#define PCACHE_MAX_PAYLOAD 4096u
#define PCACHE_BUDGET (1u << 20)

struct pc_slot {
	const struct rec *r;
	uint64_t gen;           /* r's index (index.gen): addresses are reused */
	int64_t rev;
	uint32_t len, cap;
	char *data;
};

struct pcache {
	struct pc_slot slot[PCACHE_SLOTS];
	size_t bytes;           /* capacity of every slot's data */
	uint64_t hits, misses;
};

static pthread_key_t pcache_key;
static pthread_once_t pcache_once = PTHREAD_ONCE_INIT;
static bool pcache_ok;
static _Atomic uint64_t index_gens;

static void pcache_free(void *p)
{
	struct pcache *pc = p;

	if (!pc)
		return;
	for (size_t i = 0; i < PCACHE_SLOTS; i++)
		free(pc->slot[i].data);
	free(pc);
}

static void pcache_init(void)
{
	pcache_ok = pthread_key_create(&pcache_key, pcache_free) == 0;
}

/* This thread's cache, made at its first use; NULL: none (no memory). */
static struct pcache *pcache_get(void)
{
	struct pcache *pc;

	pthread_once(&pcache_once, pcache_init);
	if (!pcache_ok)
		return NULL;
	if ((pc = pthread_getspecific(pcache_key)))
		return pc;
	if (!(pc = calloc(1, sizeof(*pc))))
		return NULL;
	if (pthread_setspecific(pcache_key, pc) != 0) {
		free(pc);
		return NULL;
	}
	return pc;
}

static struct pc_slot *pcache_slot(struct pcache *pc, const struct rec *r)
{
	/* Records are 8-aligned and at least 80 bytes apart. */
	uintptr_t a = (uintptr_t)r >> 3;

	return &pc->slot[(a ^ (a >> 12)) & (PCACHE_SLOTS - 1)];
}

/* Keep what the file gave for r (best effort: within the budget). */
static void pcache_put(struct pcache *pc, const struct index *ix, const struct rec *r,
		       const void *p, size_t n)
{
	struct pc_slot *s = pcache_slot(pc, r);

	if (n > PCACHE_MAX_PAYLOAD)
		return;
	if (s->r == r && s->gen == ix->gen && s->rev == r->rev && s->len == n)
		return; /* kept already */
	if (s->cap < n || !s->data) {
		size_t cap = n < 64 ? 64 : n;
		char *d;

		if (pc->bytes - s->cap + cap > PCACHE_BUDGET || !(d = realloc(s->data, cap)))
			return;
		pc->bytes = pc->bytes - s->cap + cap;
		s->data = d;
		s->cap = (uint32_t)cap;
	}
	if (n)
		memcpy(s->data, p, n);
	s->r = r;
	s->gen = ix->gen;
	s->rev = r->rev;
	s->len = (uint32_t)n;
}

void rec_payload_cache_stats(uint64_t *ret_hits, uint64_t *ret_misses)
{
	struct pcache *pc = pcache_ok ? pthread_getspecific(pcache_key) : NULL;

	*ret_hits = pc ? pc->hits : 0;
	*ret_misses = pc ? pc->misses : 0;
}

uint64_t index_gen(const struct index *ix)
{
	return ix->gen;
}

int rec_payload(const struct index *ix, const struct rec *r, const void **p, size_t *n)
{
	struct pcache *pc;
	int rc;

	if (!(r->flags & REC_IN_FILE)) {
		*p = r->payload;
		*n = r->payload ? r->payload_len : 0;
		return 0;
	}
	*p = NULL;
	*n = 0;
	if (!ix || !ix->fetch)
		return -ENOENT;
	if ((pc = pcache_get())) {
		const struct pc_slot *s = pcache_slot(pc, r);

		if (s->r == r && s->gen == ix->gen && s->rev == r->rev && s->len == r->payload_len) {
			pc->hits++;
			*p = s->data;
			*n = s->len;
			return 0;
		}
		pc->misses++;
	}
	rc = ix->fetch(ix->source_ctx, rec_topic(r), r->topic_len, p, n);
	if (rc == 0 && *n != r->payload_len)
		rc = -EIO;
	if (rc < 0) {
		*p = NULL;
		*n = 0;
	} else if (pc) {
		pcache_put(pc, ix, r, *p, *n);
	}
	return rc;
}

int rec_payload_keep(const struct index *ix, const struct rec *r, const void **p, size_t *n)
{
	struct pcache *pc;
	int rc = rec_payload(ix, r, p, n);

	/* From the file, rec_payload kept it already. */
	if (rc == 0 && *n && !(r->flags & REC_IN_FILE) && ix && (pc = pcache_get()))
		pcache_put(pc, ix, r, *p, *n);
	return rc;
}

int rec_payload_peek(const struct index *ix, const struct rec *r, const struct rec *snap,
		     const void **p, size_t *n)
{
	struct pcache *pc;
	const struct pc_slot *s;

	*p = NULL;
	*n = 0;
	if (snap->payload_len == 0)
		return 0;
	pthread_once(&pcache_once, pcache_init); /* what pcache_key is, seen from this thread */
	if (!pcache_ok || !(pc = pthread_getspecific(pcache_key)))
		return -EAGAIN;
	s = pcache_slot(pc, r);
	if (s->r != r || s->gen != ix->gen || s->rev != snap->rev || s->len != snap->payload_len)
		return -EAGAIN;
	pc->hits++;
	*p = s->data;
	*n = s->len;
	return 0;
}

/* The slot size of a record with this topic (8-aligned). */
static size_t rec_slot_size(size_t topic_len)
{
	/* The topic starts right after the fields (73 bytes), not at
	 * sizeof(struct rec), which rounds them up to 80. */
	return (offsetof(struct rec, data) + topic_len + 1 + 7) & ~(size_t)7;
}

/* Carve a slot of `size` bytes (at most a block) from the last block, or
 * a new one when it is full; *ref is the slot's reference. NULL on ENOMEM,
 * also when the index holds as many blocks as references can name. */
static struct rec *rec_slot(struct index *ix, size_t size, cb_ref *ref)
{
	size_t off;

	if (ix->nblocks == 0 || REC_BLOCK_SIZE - ix->block_used < size) {
		char *b;

		if (ix->nblocks == REC_BLOCK_MAX)
			return NULL;
		uint32_t i;

		if (ix->nblocks == ix->capblocks) {
			uint32_t ncap = ix->capblocks ? 2 * ix->capblocks : 16;
			struct block_at *na;
			char **nb;

			/* by_addr first: it is the writer's alone (realloc'd). */
			if (!(na = realloc(ix->by_addr, ncap * sizeof(*na))))
				return NULL;
			ix->by_addr = na;
			if (!(nb = table_grow(ix, ix->blocks, ix->nblocks, ncap, sizeof(*nb))))
				return NULL;
			__atomic_store_n(&ix->blocks, nb, __ATOMIC_RELEASE);
			ix->capblocks = ncap;
		}
		if (!(b = malloc(REC_BLOCK_SIZE)))
			return NULL;
		/* One insertion a MiB of records keeps by_addr sorted. */
		for (i = ix->nblocks; i > 0 && ix->by_addr[i - 1].addr > (uintptr_t)b; i--)
			ix->by_addr[i] = ix->by_addr[i - 1];
		ix->by_addr[i] = (struct block_at){ (uintptr_t)b, ix->nblocks };
		ix->blocks[ix->nblocks++] = b;
		ix->block_used = 0;
	}
	off = ix->block_used;
	ix->block_used += size;
	*ref = (cb_ref)(((ix->nblocks - 1) << REC_SLOT_BITS | off >> 3) << 1);
	return (struct rec *)(ix->blocks[ix->nblocks - 1] + off);
}

struct index *index_new(void)
{
	pthread_rwlockattr_t attr;
	struct index *ix;

	/* seq's cache line of its own needs the alignment calloc does not give. */
	if (posix_memalign((void **)&ix, _Alignof(struct index), sizeof(*ix)) != 0)
		return NULL;
	memset(ix, 0, sizeof(*ix));
	ix->root = CB_NONE;
	ix->gen = ++index_gens;
	if (pthread_rwlockattr_init(&attr) != 0)
		goto fail;
	pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	if (pthread_rwlock_init(&ix->lock, &attr) != 0) {
		pthread_rwlockattr_destroy(&attr);
		goto fail;
	}
	pthread_rwlockattr_destroy(&attr);
	return ix;
fail:
	free(ix);
	return NULL;
}

void index_free(struct index *ix)
{
	if (!ix)
		return;
	if (ix->root != CB_NONE && !is_node(ix->root))
		rec_release(to_rec(ix, ix->root));
	for (uint32_t i = 0; i < ix->nnodes; i++) {
		const struct cb_node *n = &ix->chunks[i >> NODE_CHUNK_SHIFT][i & (NODE_CHUNK - 1)];

		for (int d = 0; d < 2; d++)
			if (!is_node(n->child[d]))
				rec_release(to_rec(ix, n->child[d]));
	}
	for (uint32_t i = 0; i < (ix->nnodes + NODE_CHUNK - 1) >> NODE_CHUNK_SHIFT; i++)
		free(ix->chunks[i]);
	for (uint32_t i = 0; i < ix->nblocks; i++)
		free(ix->blocks[i]);
	free(ix->chunks);
	free(ix->blocks);
	free(ix->by_addr);
	for (uint32_t i = 0; i < ix->nretired; i++)
		free(ix->retired[i]);
	pthread_rwlock_destroy(&ix->lock);
	free(ix);
}

size_t index_size(const struct index *ix) { return ix->nrec; }
size_t index_live(const struct index *ix) { return ix->nlive; }

void index_adjust_live(struct index *ix, long delta)
{
	ix->nlive = (size_t)((long)ix->nlive + delta);
}

uint32_t index_ref(const struct index *ix, const struct rec *r)
{
	uintptr_t a = (uintptr_t)r;
	uint32_t lo = 0, hi = ix->nblocks;

	/* The last block starting at or below r holds it. */
	while (hi - lo > 1) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (ix->by_addr[mid].addr <= a)
			lo = mid;
		else
			hi = mid;
	}
	return (uint32_t)((ix->by_addr[lo].num << REC_SLOT_BITS |
			   (a - ix->by_addr[lo].addr) >> 3) << 1);
}

struct rec *index_rec(const struct index *ix, uint32_t ref)
{
	return to_rec(ix, ref);
}

/* Walk down by k's bits to the leaf that shares the longest prefix with it. */
static struct rec *best_leaf(const struct index *ix, cb_ref p, const char *k, size_t len)
{
	while (is_node(p)) {
		const struct cb_node *n = to_node(ix, p);

		p = load_ref(&n->child[direction(n, k, len)]);
	}
	return to_rec(ix, p);
}

struct rec *index_get(const struct index *ix, const char *topic, size_t len)
{
	cb_ref root = load_ref(&ix->root);
	struct rec *r;

	if (root == CB_NONE)
		return NULL;
	r = best_leaf(ix, root, topic, len);
	if (r->topic_len != len || memcmp(r->data, topic, len) != 0)
		return NULL;
	return r;
}

/* A new internal node: its number in *num. NULL on ENOMEM. */
static struct cb_node *node_alloc(struct index *ix, uint32_t *num)
{
	uint32_t n = ix->nnodes;

	if (n == NODE_MAX)
		return NULL;
	if ((n & (NODE_CHUNK - 1)) == 0) {
		uint32_t c = n >> NODE_CHUNK_SHIFT;

		if (c == ix->capchunks) {
			uint32_t ncap = ix->capchunks ? 2 * ix->capchunks : 16;
			struct cb_node **nc = table_grow(ix, ix->chunks, c, ncap, sizeof(*nc));

			if (!nc)
				return NULL;
			__atomic_store_n(&ix->chunks, nc, __ATOMIC_RELEASE);
			ix->capchunks = ncap;
		}
		if (!(ix->chunks[c] = malloc(NODE_CHUNK * sizeof(struct cb_node))))
			return NULL;
	}
	ix->nnodes++;
	*num = n;
	return &ix->chunks[n >> NODE_CHUNK_SHIFT][n & (NODE_CHUNK - 1)];
}

/* Give back the node node_alloc() just returned. */
static void node_unalloc(struct index *ix)
{
	uint32_t n = --ix->nnodes;

	if ((n & (NODE_CHUNK - 1)) == 0) {
		free(ix->chunks[n >> NODE_CHUNK_SHIFT]);
		ix->chunks[n >> NODE_CHUNK_SHIFT] = NULL;
	}
}

/*
** Find where k first differs from leaf q: *ret_byte and *ret_otherbits in
** the node encoding. Returns false when k equals q's topic.
*/
static bool crit_bit(const struct rec *q, const char *k, size_t len,
		     uint32_t *ret_byte, uint8_t *ret_otherbits)
{
	size_t n = len > q->topic_len ? len : q->topic_len;
	uint32_t i;
	uint32_t diff;

	for (i = 0; i < n; i++) {
		diff = key_byte(k, len, i) ^ key_byte(q->data, q->topic_len, i);
		if (diff) {
			while (diff & (diff - 1))
				diff &= diff - 1;     /* keep the highest set bit */
			*ret_byte = i;
			*ret_otherbits = (uint8_t)(diff ^ 255);
			return true;
		}
	}
	return false;
}

/* Is node n's critical bit after (deeper than) the bit (byte, otherbits)? */
static inline bool node_after(const struct cb_node *n, uint32_t byte, uint8_t otherbits)
{
	return n->byte > byte || (n->byte == byte && n->otherbits > otherbits);
}

struct rec *index_add(struct index *ix, const char *k, size_t len,
		      const void *p, size_t n, uint16_t flags)
{
	uint32_t nbyte = 0, nnum = 0;
	uint8_t nother = 0;
	struct cb_node *nn = NULL;
	size_t size;
	struct rec *r;
	cb_ref rref, *where;
	int dir;

	if (len > UINT16_MAX || memchr(k, '\0', len)) {
		errno = EINVAL;
		return NULL;
	}
	if (n >= UINT32_MAX) {
		errno = E2BIG;
		return NULL;
	}
	if (ix->root != CB_NONE &&
	    !crit_bit(best_leaf(ix, ix->root, k, len), k, len, &nbyte, &nother)) {
		errno = EEXIST;
		return NULL;
	}
	/* Every allocation first, so that a failure leaves the index as it was. */
	if (ix->root != CB_NONE && !(nn = node_alloc(ix, &nnum)))
		goto nomem;
	size = rec_slot_size(len);
	r = rec_slot(ix, size, &rref);
	if (!r)
		goto nomem;
	rec_init(r, k, len);
	if (rec_set_payload(r, p, n) < 0) {
		ix->block_used -= size; /* the slot just carved: give it back */
		goto nomem;
	}
	r->flags = flags;

	if (!nn) {
		store_ref(&ix->root, rref);
		goto done;
	}
	dir = (1 + (nother | key_byte(k, len, nbyte))) >> 8;
	nn->byte = (uint16_t)nbyte;
	nn->otherbits = nother;
	nn->child[dir] = rref;

	where = &ix->root;
	while (is_node(*where)) {
		struct cb_node *cn = to_node(ix, *where);

		if (node_after(cn, nbyte, nother))
			break;
		where = &cn->child[direction(cn, k, len)];
	}
	nn->child[1 - dir] = *where;
	store_ref(where, nnum << 1 | 1); /* nn and r complete: now reachable */
done:
	ix->nrec++;
	if (!(flags & REC_DELETED))
		ix->nlive++;
	return r;
nomem:
	if (nn)
		node_unalloc(ix);
	errno = ENOMEM;
	return NULL;
}

/*
** The sequence is a seqlock over the records and the tree, for index_peek:
** a writer makes it odd before it changes anything (index_wrlock,
** index_changing) and even again when the index is consistent
** (index_settled, index_unlock). Only the holder of the write lock moves
** it; the thread-local says which index this thread holds for writing.
** Fences, not atomics on every field: a reader copies a record with
** memcpy and trusts the copy only if the sequence did not move (the usual
** seqlock; the fences order the copy between the two reads of seq).
*/
static _Thread_local const struct index *writing;

/*
** ThreadSanitizer does not model fences, nor a seqlock's deliberate race.
** In its build the reader's copy of a record a writer may be changing is
** left uninstrumented (peek_copy); every other access the peek makes (the
** links, the tables) is still checked. The fences stay, so the ordering
** is the same as in any other build (meson.build silences GCC's -Wtsan,
** its warning that TSan ignores them). __SANITIZE_THREAD__ is GCC's sign
** of -fsanitize=thread, __has_feature(thread_sanitizer) clang's.
*/
#if defined(__SANITIZE_THREAD__)
#define SEQ_FOR_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SEQ_FOR_TSAN 1
#endif
#endif
#ifndef SEQ_FOR_TSAN
#define SEQ_FOR_TSAN 0
#endif

static void seq_odd(struct index *ix)
{
	uint64_t s = atomic_load_explicit(&ix->seq, memory_order_relaxed);

	if (s & 1)
		return;
	atomic_store_explicit(&ix->seq, s + 1, memory_order_relaxed);
	atomic_thread_fence(memory_order_release);
}

static void seq_even(struct index *ix)
{
	uint64_t s = atomic_load_explicit(&ix->seq, memory_order_relaxed);

	if (s & 1)
		atomic_store_explicit(&ix->seq, s + 1, memory_order_release);
}

void index_rdlock(struct index *ix) { pthread_rwlock_rdlock(&ix->lock); }

void index_wrlock(struct index *ix)
{
	pthread_rwlock_wrlock(&ix->lock);
	writing = ix;
	seq_odd(ix);
}

void index_unlock(struct index *ix)
{
	if (writing == ix) {
		seq_even(ix);
		writing = NULL;
	}
	pthread_rwlock_unlock(&ix->lock);
}

void index_settled(struct index *ix)
{
	if (writing == ix)
		seq_even(ix);
}

void index_changing(struct index *ix)
{
	if (writing == ix)
		seq_odd(ix);
}

/* A spin's worth of waiting for a writer's change (an applied message
 * takes a few microseconds): past PEEK_SPIN_NS a try, the writer is in a
 * long hold or preempted, and a spinning reader would only take its core:
 * the caller takes the lock. Time-bounded, since what a pause costs
 * varies from one CPU to the next (30 ns here, next to nothing on arm64). */
#define PEEK_SPIN_NS 10000
#define PEEK_TRIES 4

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield" ::: "memory");
#endif
}

/* The record's fields, which a writer may be changing: the copy is only
 * trusted when the sequence did not move (index_peek). */
#if SEQ_FOR_TSAN
__attribute__((no_sanitize_thread)) static void peek_copy(struct rec *out, const struct rec *r)
{
	const volatile unsigned char *from = (const volatile unsigned char *)r;
	unsigned char *to = (unsigned char *)out;

	/* Not memcpy: ThreadSanitizer intercepts it, and would check it. */
	for (size_t i = 0; i < offsetof(struct rec, data); i++)
		to[i] = from[i];
}
#else
static inline void peek_copy(struct rec *out, const struct rec *r)
{
	memcpy(out, r, offsetof(struct rec, data));
}
#endif

int index_peek(const struct index *ix, const char *topic, size_t len, struct rec *out,
	       const struct rec **ret_rec)
{
	for (int t = 0; t < PEEK_TRIES; t++) {
		uint64_t s1 = atomic_load_explicit(&ix->seq, memory_order_acquire);
		const struct rec *r;

		if (s1 & 1) {
			int64_t until = clock_mono_ns() + PEEK_SPIN_NS;

			for (unsigned i = 1; s1 & 1; i++) {
				cpu_relax();
				s1 = atomic_load_explicit(&ix->seq, memory_order_acquire);
				if ((i & 31) == 0 && clock_mono_ns() > until)
					break;
			}
		}
		if (s1 & 1)
			return -EAGAIN;
		/* Safe whatever a writer does meanwhile (see load_ref); only
		 * the copy's consistency needs the check below. */
		r = index_get(ix, topic, len);
		if (r)
			peek_copy(out, r);
		atomic_thread_fence(memory_order_acquire);
		if (atomic_load_explicit(&ix->seq, memory_order_relaxed) != s1)
			continue;
		if (!r)
			return 0;
		*ret_rec = r;
		return 1;
	}
	return -EAGAIN;
}

/*
** The walk's stack of subtrees still to visit, top = next in order. Its
** depth is bounded by the tree's height (at most 8 x the longest topic),
** mostly a few dozen: the first slots live on the C stack.
*/
struct walk_stack {
	cb_ref *v;
	size_t n, cap;
	cb_ref inline_v[64];
};

static int ws_push(struct walk_stack *s, cb_ref p)
{
	if (s->n == s->cap) {
		size_t ncap = s->cap * 2;
		cb_ref *nv;

		if (s->v == s->inline_v) {
			nv = malloc(ncap * sizeof(*nv));
			if (nv)
				memcpy(nv, s->v, s->n * sizeof(*nv));
		} else {
			nv = realloc(s->v, ncap * sizeof(*nv));
		}
		if (!nv)
			return -ENOMEM;
		s->v = nv;
		s->cap = ncap;
	}
	s->v[s->n++] = p;
	return 0;
}

static bool has_prefix(const struct rec *r, const char *prefix, size_t plen)
{
	return plen == 0 || (r->topic_len >= plen && memcmp(r->data, prefix, plen) == 0);
}

/*
** Push onto s what remains of subtree top after skipping every key <= k,
** in visiting order.  Follows k's bits: going left leaves the right
** sibling to visit later; at the point where k leaves the tree (its
** critical bit against the best leaf), k is either below the whole
** subtree there (visit it all) or above it (skip it).
*/
static int seek_after(const struct index *ix, struct walk_stack *s, cb_ref top,
		      const char *k, size_t len)
{
	uint32_t nbyte;
	uint8_t nother;
	bool differs = crit_bit(best_leaf(ix, top, k, len), k, len, &nbyte, &nother);
	cb_ref p = top;
	int rc;

	while (is_node(p)) {
		const struct cb_node *n = to_node(ix, p);
		int dir;

		if (differs && node_after(n, nbyte, nother))
			break;
		dir = direction(n, k, len);
		if (dir == 0 && (rc = ws_push(s, n->child[1])) < 0)
			return rc;
		p = n->child[dir];
	}
	if (!differs)
		return 0;                    /* p is k itself: skip it */
	if (((1 + (nother | key_byte(k, len, nbyte))) >> 8) == 0)
		return ws_push(s, p);        /* k sorts before all of p */
	return 0;                            /* k sorts after all of p */
}

int index_walk(const struct index *ix, const char *prefix, size_t prefix_len,
	       const char *after, size_t after_len, index_visit_fn fn, void *ctx)
{
	struct walk_stack s = { .n = 0, .cap = 64 };
	cb_ref top = ix->root;
	int rc = 0;

	s.v = s.inline_v;
	if (top == CB_NONE)
		return 0;
	/* The subtree holding every key that starts with the prefix, if any. */
	while (is_node(top) && to_node(ix, top)->byte < prefix_len)
		top = to_node(ix, top)->child[direction(to_node(ix, top), prefix, prefix_len)];
	if (!has_prefix(best_leaf(ix, top, prefix, prefix_len), prefix, prefix_len))
		return 0;

	rc = after ? seek_after(ix, &s, top, after, after_len) : ws_push(&s, top);
	if (rc < 0)
		goto out;
	while (s.n > 0) {
		cb_ref p = s.v[--s.n];

		while (is_node(p)) {
			const struct cb_node *n = to_node(ix, p);

			if ((rc = ws_push(&s, n->child[1])) < 0)
				goto out;
			p = n->child[0];
		}
		rc = fn(to_rec(ix, p), ctx);
		if (rc != 0)
			goto out;
	}
out:
	if (s.v != s.inline_v)
		free(s.v);
	return rc;
}
