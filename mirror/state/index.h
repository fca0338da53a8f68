/* SPDX-License-Identifier: MIT */
/* index.h: the in-memory key index: every key's current record, ordered by topic. */
#ifndef SM_INDEX_H
#define SM_INDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum rec_flags {
	REC_RETAINED   = 1u << 0, /* current value arrived as a retained delivery */
	REC_DELETED    = 1u << 1, /* a tombstone: the key was deleted at ts_ns */
	REC_TS_PAYLOAD = 1u << 2, /* ts came from the payload (else receive time) */
	REC_STALE      = 1u << 3, /* judged stale right now */
	REC_IS_JSON    = 1u << 4, /* payload is valid JSON */
	REC_DIRTY      = 1u << 5, /* changed since the store last wrote it */
	REC_NO_STALE   = 1u << 6, /* never judged (our own alert topics) */
	REC_IN_FILE    = 1u << 7, /* the payload is in the store only: payload_hash holds its hash */
	/* Dirty only because a derived field (the cadence a rule or the
	 * learner gives) changed at load or reload: written when the keeper
	 * has room, not waited for at stop (the next start derives it again). */
	REC_REDERIVE   = 1u << 8,
	/* Bits 9-10: why a stale key is stale (enum stale_reason; 0 while
	 * fresh), rec_stale_reason(). Stored with the other flags. */
	REC_REASON_0   = 1u << 9,
	REC_REASON_1   = 1u << 10,
	REC_STICKY     = 1u << 11, /* stale until heard from live again (a producer's death), whatever its cadence says */
};

/* Why a key is stale (a record's bits 9-10, rec_stale_reason). */
enum stale_reason {
	STALE_REASON_NONE,             /* fresh */
	STALE_REASON_CADENCE,          /* not heard from for grace x cadence */
	STALE_REASON_PRODUCER_OFFLINE, /* its producer said it is gone (a will, a status, a death certificate) */
	STALE_REASON_BROKER,           /* its deadline passed while the mirror was not synced with the broker */
	STALE_REASON_MAX
};

#define REC_REASON_SHIFT 9
#define REC_REASON_MASK ((uint16_t)(REC_REASON_0 | REC_REASON_1))

enum cadence_source {
	CADENCE_NONE,    /* unknown: never stale */
	CADENCE_RULE,
	CADENCE_LEARNED,
	CADENCE_DEFAULT,
	CADENCE_SOURCE_MAX
};

/*
** One key. A record in the index comes from the index's arena, in one block
** with its topic (data[], NUL-terminated).
**
** Payloads are held in memory only while the file does not have them yet:
** a changed value gets a malloc'd buffer (`payload`), and once the store
** has committed that value the mirror drops the buffer (rec_drop_payload):
** REC_IN_FILE is set and `payload_hash` takes the pointer's place. So a
** million keys cost their index, not their payloads, whatever the payload
** size. rec_payload() reads a payload from wherever it is (the file through
** the index's payload source); only code that
** has checked REC_IN_FILE may touch `payload`. payload_len is always the
** current value's length.
**
** A record's address never changes: the store's dirty list and the watch
** change log hold plain pointers to records, the staleness heap their
** 32-bit names (index_ref).  Records
** are owned by the index and live until index_free(). They change only
** with the index write lock held: on the MQTT session thread, which applies
** each message as it reads it (mirror_ingest), on the keeper thread (staleness
** deadlines, store writes) and at a reload (SIGHUP). Readers (HTTP
** handlers, the watch hub) hold the read lock while they look, except
** point reads, which copy a record without it (index_peek).  A deleted key stays as a tombstone
** (REC_DELETED, payload NULL, payload_len 0) so that an older message can
** never bring it back; tombstones are not counted as keys and are not
** served.  Fields are ordered widest first: no padding.
**
** A key that learns its cadence keeps what it learns from in the record
** itself (stale.c, "the learner"): its running estimate in cadence_ms
** (while cadence_source is still CADENCE_NONE, too: read a key's cadence
** with rec_cadence_ms()), 8 bits of counts in learn and its anchor, the
** last live message counted, as learn_lag behind last_seen_ms. They fill
** what was the 8-byte alignment's padding after a 14-byte topic.
*/
struct rec {
	int64_t ts_ns;          /* observation time of the current value */
	int64_t received_ms;    /* wall time the current value was applied */
	int64_t last_seen_ms;   /* last confirmation (see contract) */
	int64_t rev;            /* revision of the last change to this record */
	int64_t stale_since_ms; /* 0 while fresh */
	union {
		char *payload;          /* !REC_IN_FILE: payload_len bytes (+ a NUL), malloc'd; NULL if empty */
		uint64_t payload_hash;  /* REC_IN_FILE: rec_payload_hash() of the stored payload */
	};
	uint32_t updates;
	uint32_t cadence_ms;    /* 0 when unknown or never; the learner's estimate while CADENCE_NONE */
	uint32_t payload_len;
	uint32_t heap_idx;      /* position in the staleness heap, UINT32_MAX if none */
	uint16_t flags;         /* enum rec_flags */
	uint16_t topic_len;
	uint16_t learn_lag;     /* private to the staleness engine: the learner's anchor */
	uint8_t cadence_source; /* enum cadence_source */
	uint8_t alert_state;    /* private to the staleness engine */
	uint8_t learn;          /* private to the staleness engine: the learner's counts */
	char data[];            /* topic '\0' */
};

static inline const char *rec_topic(const struct rec *r) { return r->data; }

/* Why r is stale: STALE_REASON_NONE while fresh (or for a record stored
 * before reasons were: a stale one then reads as CADENCE). */
static inline enum stale_reason rec_stale_reason(const struct rec *r)
{
	unsigned v = (r->flags & REC_REASON_MASK) >> REC_REASON_SHIFT;

	if (!(r->flags & REC_STALE))
		return STALE_REASON_NONE;
	return v ? (enum stale_reason)v : STALE_REASON_CADENCE;
}

static inline void rec_set_stale_reason(struct rec *r, enum stale_reason why)
{
	r->flags = (uint16_t)((r->flags & ~REC_REASON_MASK) |
			      (((unsigned)why << REC_REASON_SHIFT) & REC_REASON_MASK));
}

/* r's cadence as served and judged: 0 when unknown or never. */
static inline uint32_t rec_cadence_ms(const struct rec *r)
{
	return r->cadence_source == CADENCE_NONE ? 0 : r->cadence_ms;
}

/* A record outside any index (tests, tools): topic copied, no payload.
 * Other fields are zero, heap_idx = UINT32_MAX. Returns NULL
 * with errno ENOMEM, or EINVAL when topic_len > UINT16_MAX. Free it with
 * rec_free(); records in an index are created by index_add() instead and
 * freed by index_free() only. */
struct rec *rec_new(const char *topic, size_t topic_len);
void rec_free(struct rec *r);
/* Replace r's payload with a copy of p (n bytes; n = 0 drops it) in a
 * malloc'd buffer, reused when the new payload fits and the buffer is not
 * much too large; REC_IN_FILE is cleared. Returns 0, -ENOMEM or -E2BIG
 * (n >= 4 GiB) with r unchanged. */
int rec_set_payload(struct rec *r, const void *p, size_t n);

/* The store holds r's current payload: free the memory copy, keep its hash
 * (REC_IN_FILE). No-op for a tombstone, an empty payload or one in the file. */
void rec_drop_payload(struct rec *r);
/* Mark r's payload as stored only (n bytes hashing to hash), for the loader. */
void rec_set_payload_in_file(struct rec *r, size_t n, uint64_t hash);

/* The hash kept for a payload in the file: 64 bits, seeded per process.
 * Equal hashes and lengths are taken for equal bytes (duplicate detection
 * without a read of the file); the odds of a false match are 2^-64. */
uint64_t rec_payload_hash(const void *p, size_t n);

struct index;

/*
** Where an index reads the payloads that are in the file only: fetch puts
** the payload stored for topic (len bytes) in *p / *n (valid until the
** calling thread's next fetch) and returns 0 or -errno; scan / scan_end
** (both optional, NULL) bracket a walk's reads (rec_payload_scan). The
** store's are store_fetch_payload, store_scan and store_scan_end, ctx the
** store (statemirrord.c). Set it before the index is shared between
** threads: it is read without a lock. Without one (fetch NULL, as after
** index_new) payloads in the file read as -ENOENT.
*/
typedef int (*rec_fetch_fn)(void *ctx, const char *topic, size_t len, const void **p, size_t *n);
typedef void (*rec_scan_fn)(void *ctx, const char *from, size_t len);
typedef void (*rec_scan_end_fn)(void *ctx);
void index_set_payload_source(struct index *ix, rec_fetch_fn fetch, rec_scan_fn scan,
			      rec_scan_end_fn scan_end, void *ctx);

/* r's payload (r a record of ix), from memory or through ix's payload
 * source (ix NULL: none, for a record outside any index): 0 with *p, *n
 * set (*p NULL and *n 0 when empty), or -errno; -EIO also when the file
 * holds bytes of another length than r says (a file changed behind our
 * back: never served as r's value). Hold a lock on the index. *p stays
 * valid until this thread's next rec_payload. A thread keeps the payloads
 * it read from the file last, for as long as their record keeps its
 * revision (index.c: at most 1 MiB a thread). */
int rec_payload(const struct index *ix, const struct rec *r, const void **p, size_t *n);
/* rec_payload, and a payload that is in memory is kept in this thread's
 * cache too (as one read from the file is): for point reads, whose next
 * read of the same revision can then be a rec_payload_peek. */
int rec_payload_keep(const struct index *ix, const struct rec *r, const void **p, size_t *n);
/*
** Without a lock: the payload of snap (index_peek's copy of r) from this
** thread's cache only: 0 with *p, *n set (valid until this thread's next
** rec_payload*), or -EAGAIN when the cache does not hold snap's revision
** (read it under the lock instead).
*/
int rec_payload_peek(const struct index *ix, const struct rec *r, const struct rec *snap,
		     const void **p, size_t *n);
/* This thread's payload cache: reads it answered, reads that went to the file. */
void rec_payload_cache_stats(uint64_t *ret_hits, uint64_t *ret_misses);
/* ix's number, unique in the process (never 0): a per-thread cache keyed by
 * record addresses keys them by it too, since another index (a reload, a
 * test) may reuse an address. */
uint64_t index_gen(const struct index *ix);

/*
** A hint around a walk of ix in topic order (index_walk, one hold of the
** lock): the payloads read next belong to topics >= from, in order, so the
** source may read them with one range scan instead of a lookup each. Call
** rec_payload_scan_end() before the lock is released (the scan holds the
** file's read snapshot). No-ops when the source has no scan (or ix is NULL).
*/
void rec_payload_scan(const struct index *ix, const char *from, size_t len);
void rec_payload_scan_end(const struct index *ix);

struct index *index_new(void);
/* Frees every record. Accepts NULL. */
void index_free(struct index *ix);

/* Number of records including tombstones, and of live (non-deleted) keys. */
size_t index_size(const struct index *ix);
size_t index_live(const struct index *ix);
/* Keep the live count right when a record becomes / stops being a tombstone. */
void index_adjust_live(struct index *ix, long delta);

/* Exact lookup. Returns NULL when absent. */
struct rec *index_get(const struct index *ix, const char *topic, size_t len);

/*
** Create the record of a new topic in the index, with a copy of its first
** payload (p, n bytes; n = 0 for none) and `flags` (REC_DELETED makes it a
** tombstone, else it counts as a live key). The record comes from the
** index's arena, the payload from malloc.
** Returns the record, or NULL with errno EEXIST (the topic is there),
** EINVAL (the topic is longer than 65535 bytes or holds a NUL byte),
** E2BIG (n >= 4 GiB) or ENOMEM; on failure the index is unchanged. There is
** no removal: a deleted key stays as a tombstone, so record pointers stay
** valid.
*/
struct rec *index_add(struct index *ix, const char *topic, size_t topic_len,
		      const void *p, size_t n, uint16_t flags);

/*
** A record's 32-bit name in its index, and back: for tables of records
** that want 4 bytes an entry rather than a pointer's 8 (the staleness
** heap). r must be a record of ix. index_ref() is O(log(records / 8000)),
** index_rec() O(1).
*/
uint32_t index_ref(const struct index *ix, const struct rec *r);
struct rec *index_rec(const struct index *ix, uint32_t ref);

/*
** The index's reader-writer lock. Writers: the MQTT session thread around
** each message it applies (short; never across a socket read) and the mirror
** thread around its timers and before and after a store write (staging the
** rows, dropping the payloads written; the disk is written without the
** lock). Readers: HTTP handlers and the watch hub. Writers are preferred
** so that a stream of readers cannot starve ingest; hence the read lock is
** not recursive: a reader must not take it twice.
*/
void index_rdlock(struct index *ix);
void index_wrlock(struct index *ix);
void index_unlock(struct index *ix);

/*
** Point reads without the lock (a seqlock beside it). A reader waiting on
** the rwlock waits for the whole of a writer's hold, and on a busy host
** for as long as the holder is preempted: milliseconds at the tail. So the
** writer says when the records are consistent: index_wrlock makes them
** "changing", index_settled (write lock held) says they are consistent
** until index_changing (before the writer changes anything again) or
** index_unlock. The session thread settles between the messages of one
** hold; other writers stay changing for their whole hold.
**
** index_peek copies the fields of topic's record (not its topic: the caller
** has it) into *out when no writer changed anything meanwhile: returns 1
** with *ret_rec the record (for rec_payload_peek), 0 when there is no such
** record, -EAGAIN when writers kept changing the index: take the read lock
** then. It spins a few microseconds at most. Never touches a payload.
*/
void index_settled(struct index *ix);
void index_changing(struct index *ix);
int index_peek(const struct index *ix, const char *topic, size_t len, struct rec *out,
	       const struct rec **ret_rec);

/*
** Ordered iteration: calls fn for each record whose topic is strictly
** greater than `after` (NULL = from the start) and starts with `prefix`
** (prefix_len bytes, 0 = all), in byte order of topic, until fn returns
** non-zero (that value is returned) or the records are exhausted (0).
** Returns -ENOMEM if the walk's stack cannot grow (only for trees deeper
** than 64, i.e. pathological topic sets). Tombstones are visited too.
** fn must not insert into the index. Hold the read (or write) lock.
** Cost: O(len(topic)) to seek, then O(1) amortised per record visited.
*/
typedef int (*index_visit_fn)(struct rec *r, void *ctx);
int index_walk(const struct index *ix, const char *prefix, size_t prefix_len,
	       const char *after, size_t after_len, index_visit_fn fn, void *ctx);

#endif
