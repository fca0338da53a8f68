/* SPDX-License-Identifier: MIT */
/* benchutil.h: what the benchmark tools share: option parsing and the stop signal. */
#ifndef SM_BENCHUTIL_H
#define SM_BENCHUTIL_H

#include <signal.h>
#include <stdint.h>

/* Set by SIGINT/SIGTERM once bench_catch_signals() ran. */
extern volatile sig_atomic_t bench_stop_requested;
void bench_catch_signals(void);

/* A whole decimal number in 0..max. Returns 0 or -EINVAL. */
int bench_parse_u64(const char *s, uint64_t max, uint64_t *ret);
/* A non-negative decimal number. Returns 0 or -EINVAL. */
int bench_parse_double(const char *s, double *ret);

#endif
