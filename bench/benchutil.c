/* SPDX-License-Identifier: MIT */
/* benchutil.c: what the benchmark tools share: option parsing and the stop signal. */
#include "benchutil.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

volatile sig_atomic_t bench_stop_requested;

static void on_signal(int sig)
{
	(void)sig;
	bench_stop_requested = 1;
}

void bench_catch_signals(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
}

int bench_parse_u64(const char *s, uint64_t max, uint64_t *ret)
{
	char *end;
	unsigned long long v;

	if (s == NULL || *s == '\0' || *s == '-')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0 || *end != '\0' || v > max)
		return -EINVAL;
	*ret = v;
	return 0;
}

int bench_parse_double(const char *s, double *ret)
{
	char *end;
	double v;

	if (s == NULL || *s == '\0')
		return -EINVAL;
	errno = 0;
	v = strtod(s, &end);
	if (errno != 0 || *end != '\0' || !(v >= 0.0))
		return -EINVAL;
	*ret = v;
	return 0;
}
