/* SPDX-License-Identifier: MIT */
/* clock_fake.c: the fixed now_ms modules are given, and a hand-moved clock source for threads. */
#include "clock_fake.h"

#include <stdatomic.h>
#include <stddef.h>

int64_t fake_now_ms = 1795313402123;

static _Atomic int64_t fake_elapsed_ms;

#define FAKE_MONO_BASE_MS 1000000 /* not 0: "never" is often 0 */

static int64_t fake_mono(void *ctx)
{
	(void)ctx;
	return FAKE_MONO_BASE_MS + atomic_load(&fake_elapsed_ms);
}

static int64_t fake_wall(void *ctx)
{
	(void)ctx;
	return (fake_now_ms + atomic_load(&fake_elapsed_ms)) * 1000000;
}

const struct clock_src fake_clock = { .mono_ms = fake_mono, .wall_ns = fake_wall };

void fake_clock_advance(int64_t ms)
{
	atomic_fetch_add(&fake_elapsed_ms, ms);
}

int64_t fake_clock_mono_ms(void)
{
	return fake_mono(NULL);
}
