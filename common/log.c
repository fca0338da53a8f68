/* SPDX-License-Identifier: MIT */
/* log.c: leveled one-line logging to stderr, each line a single write that never blocks (dropped and counted instead). */
#include "common/log.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/stats.h"

#define LOG_LINE_MAX 2048

static _Atomic int log_level_cur = LOG_LEVEL_INFO;

/* -1 unknown, 0 plain stderr (timestamps), 1 journald adds its own. */
static _Atomic int log_to_journal = -1;

static const char *const level_names[LOG_LEVEL_MAX] = {
	[LOG_LEVEL_ERROR] = "error",
	[LOG_LEVEL_WARN] = "warn",
	[LOG_LEVEL_INFO] = "info",
	[LOG_LEVEL_DEBUG] = "debug",
};

static const char *const level_tags[LOG_LEVEL_MAX] = {
	[LOG_LEVEL_ERROR] = "ERROR",
	[LOG_LEVEL_WARN] = "WARN",
	[LOG_LEVEL_INFO] = "INFO",
	[LOG_LEVEL_DEBUG] = "DEBUG",
};

int log_level_parse(const char *s, enum log_level *ret_level)
{
	if (!s)
		return -EINVAL;
	for (int i = 0; i < LOG_LEVEL_MAX; i++) {
		if (strcasecmp(s, level_names[i]) == 0) {
			*ret_level = (enum log_level)i;
			return 0;
		}
	}
	if (strcasecmp(s, "warning") == 0) {
		*ret_level = LOG_LEVEL_WARN;
		return 0;
	}
	return -EINVAL;
}

const char *log_level_name(enum log_level level)
{
	if ((int)level < 0 || level >= LOG_LEVEL_MAX)
		return "unknown";
	return level_names[level];
}

void log_set_level(enum log_level level)
{
	if ((int)level < 0 || level >= LOG_LEVEL_MAX)
		return;
	atomic_store_explicit(&log_level_cur, (int)level, memory_order_relaxed);
}

enum log_level log_get_level(void)
{
	return (enum log_level)atomic_load_explicit(&log_level_cur, memory_order_relaxed);
}

static bool journal_stderr(void)
{
	int j = atomic_load_explicit(&log_to_journal, memory_order_relaxed);

	if (j < 0) {
		/* systemd sets JOURNAL_STREAM when stderr is the journal, which
		 * stamps lines itself: a second timestamp would only be noise. */
		j = getenv("JOURNAL_STREAM") != NULL;
		atomic_store_explicit(&log_to_journal, j, memory_order_relaxed);
	}
	return j != 0;
}

/*
** Writing a line must never block: the caller may hold the index lock, and
** a stderr pipe nobody drains (a stuck journald, a paused terminal, a
** supervisor that stopped reading) would then stall ingest. Setting
** O_NONBLOCK on fd 2 is not an option: the flag belongs to the open file
** description, shared with whoever else holds it (the shell and the
** terminal under ./run, a supervisor's pipe), and would change their
** behaviour too. So each write is made non-blocking on its own:
**  - a socket (journald's stream): send(MSG_DONTWAIT), the per-call flag;
**  - anything else (pipe, tty, file): poll() with a zero timeout, then one
**    write. A pipe that polls writable has a free page, which takes any
**    line (at most LOG_LINE_MAX bytes) whole. The mutex makes poll+write
**    one step among our threads, so two of them cannot both see the last
**    free page; only another process writing to the same pipe between the
**    two calls could still make us wait.
** A line that cannot be written is dropped and counted (log_dropped,
** statemirror_log_dropped_total). A socket that took only part of a line
** gets a newline first next time, so that the torn line ends.
*/
static pthread_mutex_t emit_mu = PTHREAD_MUTEX_INITIALIZER;
static bool stderr_torn;     /* under emit_mu */

static ssize_t emit_try(const char *p, size_t len)
{
	struct pollfd pfd = { .fd = STDERR_FILENO, .events = POLLOUT };
	struct stat st;
	bool sock;
	ssize_t w;
	int pr;

	/* Asked each time (one fstat), not cached: fd 2 may be replaced. */
	sock = fstat(STDERR_FILENO, &st) == 0 && S_ISSOCK(st.st_mode);
	for (;;) {
		if (sock) {
			w = send(STDERR_FILENO, p, len, MSG_DONTWAIT | MSG_NOSIGNAL);
		} else {
			pr = poll(&pfd, 1, 0);
			if (pr < 0 && errno == EINTR)
				continue;
			/* Not writable now, or an error or hang-up, where a write
			 * would fail (or raise SIGPIPE): the line is dropped. */
			if (pr != 1 || !(pfd.revents & POLLOUT) ||
			    (pfd.revents & (POLLERR | POLLHUP | POLLNVAL))) {
				errno = EAGAIN;
				return -1;
			}
			w = write(STDERR_FILENO, p, len);
		}
		if (w < 0 && errno == EINTR)
			continue;
		return w;
	}
}

static void emit_line(const char *line, size_t len)
{
	ssize_t w;

	pthread_mutex_lock(&emit_mu);
	if (stderr_torn) {
		if (emit_try("\n", 1) != 1)
			goto dropped;
		stderr_torn = false;
	}
	w = emit_try(line, len);
	if (w < 0 || (size_t)w < len) {
		stderr_torn = w > 0;
		goto dropped;
	}
	pthread_mutex_unlock(&emit_mu);
	return;
dropped:
	pthread_mutex_unlock(&emit_mu);
	STAT_INC(log_dropped);
}

/* Appends at most what fits; returns the new length (never past cap - 1). */
static size_t line_add(char *line, size_t len, size_t cap, const char *s)
{
	size_t n = strlen(s);

	if (len >= cap - 1)
		return len;
	if (n > cap - 1 - len)
		n = cap - 1 - len;
	memcpy(line + len, s, n);
	return len + n;
}

static void log_vemit(enum log_level level, const char *errstr, const char *fmt, va_list ap)
{
	char line[LOG_LINE_MAX];
	size_t len = 0;
	int n;

	if (!journal_stderr()) {
		char ts[32];

		clock_format_rfc3339(clock_wall_ms(), ts);
		len = line_add(line, len, sizeof(line), ts);
		len = line_add(line, len, sizeof(line), " ");
	}
	len = line_add(line, len, sizeof(line), level_tags[level]);
	len = line_add(line, len, sizeof(line), ": ");
	n = vsnprintf(line + len, sizeof(line) - len, fmt, ap);
	if (n > 0)
		len += (size_t)n < sizeof(line) - len ? (size_t)n : sizeof(line) - len - 1;
	if (errstr) {
		len = line_add(line, len, sizeof(line), ": ");
		len = line_add(line, len, sizeof(line), errstr);
	}
	/* A message must not forge extra log lines. */
	for (size_t i = 0; i < len; i++)
		if (line[i] == '\n' || line[i] == '\r')
			line[i] = ' ';
	if (len > sizeof(line) - 2)
		len = sizeof(line) - 2;
	line[len++] = '\n';

	emit_line(line, len);
}

static bool enabled(enum log_level level)
{
	return (int)level <= atomic_load_explicit(&log_level_cur, memory_order_relaxed);
}

void log_warn(const char *fmt, ...)
{
	int saved = errno;
	char ebuf[128];
	const char *es;
	va_list ap;

	if (!enabled(LOG_LEVEL_WARN))
		goto out;
	es = strerror_r(saved, ebuf, sizeof(ebuf));
	va_start(ap, fmt);
	log_vemit(LOG_LEVEL_WARN, es, fmt, ap);
	va_end(ap);
out:
	errno = saved;
}

#define LOG_FN(name, level)                                   \
	void name(const char *fmt, ...)                       \
	{                                                     \
		int saved = errno;                            \
		va_list ap;                                   \
		if (enabled(level)) {                         \
			va_start(ap, fmt);                    \
			log_vemit(level, NULL, fmt, ap);      \
			va_end(ap);                           \
		}                                             \
		errno = saved;                                \
	}

LOG_FN(log_warnx, LOG_LEVEL_WARN)
LOG_FN(log_error, LOG_LEVEL_ERROR)
LOG_FN(log_info, LOG_LEVEL_INFO)
LOG_FN(log_debug, LOG_LEVEL_DEBUG)

void fatalx(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vemit(LOG_LEVEL_ERROR, NULL, fmt, ap);
	va_end(ap);
	exit(2);
}

int log_ratelimit_ok(struct log_ratelimit *rl, int64_t now_ms, uint32_t *ret_suppressed)
{
	uint32_t dropped = 0;
	int ok;

	while (__atomic_exchange_n(&rl->lock, 1, __ATOMIC_ACQUIRE))
		;
	if (rl->printed == 0 || now_ms - rl->window_start_ms >= (int64_t)rl->interval_ms ||
	    now_ms < rl->window_start_ms) {
		/* A new window: report what the previous one swallowed. */
		dropped = rl->suppressed;
		rl->suppressed = 0;
		rl->window_start_ms = now_ms;
		rl->printed = 1;
		ok = 1;
	} else if (rl->printed < rl->burst) {
		rl->printed++;
		ok = 1;
	} else {
		rl->suppressed++;
		ok = 0;
	}
	__atomic_store_n(&rl->lock, 0, __ATOMIC_RELEASE);
	if (ok && ret_suppressed)
		*ret_suppressed = dropped;
	return ok;
}
