/* SPDX-License-Identifier: MIT */
/* hash.h: the one hash function (bytes, seeded per process) and its 64-bit mixer, for every map and payload check. */
#ifndef SM_HASH_H
#define SM_HASH_H

#include <stddef.h>
#include <stdint.h>

/*
** MurmurHash3's finalizer: every input bit reaches every output bit. Pure,
** unseeded: for keys a peer cannot choose (pointers, our own numbers).
*/
static inline uint64_t hash_mix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return x;
}

/*
** A 64-bit hash of n bytes, 8 at a time through hash_mix64, seeded once per
** process from the clock, the pid and the stack address: topics and
** payloads come from peers, and a seed they cannot guess keeps them from
** choosing collisions. The values never leave the process (nothing stores
** them: a loader recomputes), so the seed costs nothing. Thread-safe.
*/
uint64_t hash_bytes(const void *p, size_t n);

/* A pointer's hash (unseeded: a peer does not choose our addresses). */
static inline uint64_t hash_ptr(const void *p)
{
	return hash_mix64((uint64_t)(uintptr_t)p);
}

/* A 64-bit hash as a key for hmap (32 bits, never 0). */
static inline uint32_t hash_key32(uint64_t h)
{
	uint32_t k = (uint32_t)(h >> 32) ^ (uint32_t)h;

	return k ? k : 1;
}

#endif
