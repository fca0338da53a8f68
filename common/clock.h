/* SPDX-License-Identifier: MIT */
/* clock.h: wall and monotonic time in milliseconds/nanoseconds. */
#ifndef SM_CLOCK_H
#define SM_CLOCK_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

/*
** The daemon's modules never read the clock themselves where a decision
** depends on time (apply, staleness, alerts): they take `now_ms` as an
** argument, so unit tests drive time explicitly without sleeping.  Only the
** threads at the edges (the keeper loop, the MQTT session, HTTP) call these.
*/
int64_t clock_wall_ms(void);  /* CLOCK_REALTIME, epoch ms */
int64_t clock_wall_ns(void);  /* CLOCK_REALTIME, epoch ns */
int64_t clock_mono_ms(void);  /* CLOCK_MONOTONIC, ms */
int64_t clock_mono_ns(void);  /* CLOCK_MONOTONIC, ns */
/* The time on clock id (CLOCK_MONOTONIC for a condition variable made with
 * that clock) ms from now, for pthread_cond_timedwait; ms < 0 counts as 0. */
void clock_deadline(clockid_t id, int64_t ms, struct timespec *ret);

/* Format epoch ms as RFC 3339 UTC with millisecond precision,
 * "2026-11-22T02:10:02.123Z". buf must hold 32 bytes. Returns buf. */
char *clock_format_rfc3339(int64_t ms, char buf[32]);
/* The same 24 characters at p, without the NUL: for renderers. */
#define CLOCK_RFC3339_LEN 24
size_t clock_put_rfc3339(int64_t ms, char *p);

/*
** A clock a thread reads through, for the threads at the edges that must
** read time themselves (the MQTT session's backoff, CONNACK timeout and
** retained-burst quiet): tests give them a fake one and move it by hand
** (mosquitto stubs mosquitto_time() the same way). Both functions must be
** callable from any thread. clock_system is the real one: mono_ms is
** clock_mono_ms, wall_ns clock_wall_ns, ctx unused.
*/
struct clock_src {
	int64_t (*mono_ms)(void *ctx);  /* monotonic ms */
	int64_t (*wall_ns)(void *ctx);  /* epoch ns */
	void *ctx;
};

extern const struct clock_src clock_system;

#endif
