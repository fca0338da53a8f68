/* SPDX-License-Identifier: MIT */
/* stats.c: the process-wide counters and the commit latency histogram. */
#include <stddef.h>

#include "common/stats.h"

struct stats g_stats;

/* Commits are expected in the low milliseconds; the tail up to 5 s shows a
 * slow disk long before the one-second durability budget is blown. */
const uint64_t stats_commit_bounds_us[STATS_COMMIT_BUCKETS] = {
	100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 1000000, 5000000,
};

void stats_commit_observe(uint64_t us)
{
	size_t i = 0;

	while (i < STATS_COMMIT_BUCKETS && us > stats_commit_bounds_us[i])
		i++;
	STAT_INC(commit_hist[i]);
	STAT_ADD(commit_sum_us, us);
}
