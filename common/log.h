/* SPDX-License-Identifier: MIT */
/* log.h: one-line-per-event logging to stderr, in the style of OpenBSD daemons. */
#ifndef SM_LOG_H
#define SM_LOG_H

#include <stdint.h>

enum log_level {
	LOG_LEVEL_ERROR,
	LOG_LEVEL_WARN,
	LOG_LEVEL_INFO,
	LOG_LEVEL_DEBUG,
	LOG_LEVEL_MAX
};

/* Parse "error", "warn", "info" or "debug". Returns 0 or -EINVAL. */
int log_level_parse(const char *s, enum log_level *ret_level);
const char *log_level_name(enum log_level level);

/* Thread-safe: the level is an atomic, each line is one write(2) that
 * never blocks: a line stderr cannot take now is dropped and counted
 * (g_stats.log_dropped, statemirror_log_dropped_total). See log.c. */
void log_set_level(enum log_level level);
enum log_level log_get_level(void);

#define LOG_PRINTF(a, b) __attribute__((format(printf, a, b)))

/* log_warn() appends ": strerror(errno)"; log_warnx() does not. */
void log_warn(const char *fmt, ...) LOG_PRINTF(1, 2);
void log_warnx(const char *fmt, ...) LOG_PRINTF(1, 2);
void log_error(const char *fmt, ...) LOG_PRINTF(1, 2);
void log_info(const char *fmt, ...) LOG_PRINTF(1, 2);
void log_debug(const char *fmt, ...) LOG_PRINTF(1, 2);
/* Logs at error level and exits with status 2 (fatal runtime error). */
void fatalx(const char *fmt, ...) LOG_PRINTF(1, 2) __attribute__((noreturn));

/*
** A rate limiter for log lines a peer can trigger at will (rejects, HTTP
** abuse): at most `burst` lines per `interval_ms`; the first line after a
** quiet spell says how many were suppressed.  Thread-safe.
*/
struct log_ratelimit {
	int64_t window_start_ms;
	uint32_t interval_ms;
	uint32_t burst;
	uint32_t printed;
	uint32_t suppressed;
	int lock; /* spin flag, 0 = free */
};
#define LOG_RATELIMIT_INIT(interval, n) { 0, (interval), (n), 0, 0, 0 }

/* Returns true if the caller may log now; *ret_suppressed (may be NULL)
 * receives the number of lines dropped since the last allowed one. */
int log_ratelimit_ok(struct log_ratelimit *rl, int64_t now_ms, uint32_t *ret_suppressed);

#endif
