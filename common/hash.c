/* SPDX-License-Identifier: MIT */
/* hash.c: the process-seeded byte hash. */
#include "common/hash.h"

#include <pthread.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static uint64_t hash_seed;
static pthread_once_t hash_once = PTHREAD_ONCE_INIT;

static void hash_seed_init(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	hash_seed = ((uint64_t)ts.tv_nsec << 32 ^ (uint64_t)ts.tv_sec ^ (uint64_t)getpid() << 16 ^
		     (uintptr_t)&ts) * 0x9e3779b97f4a7c15ULL;
}

uint64_t hash_bytes(const void *p, size_t n)
{
	const unsigned char *s = p;
	uint64_t h, w;

	pthread_once(&hash_once, hash_seed_init);
	h = hash_seed ^ (n * 0x9e3779b97f4a7c15ULL);
	for (; n >= 8; s += 8, n -= 8) {
		memcpy(&w, s, 8);
		h = hash_mix64(h ^ w) + 0x9e3779b97f4a7c15ULL;
	}
	w = 0;
	memcpy(&w, s, n);
	return hash_mix64(h ^ w ^ ((uint64_t)n << 56));
}
