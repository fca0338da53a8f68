/* SPDX-License-Identifier: MIT */
/* test_log.c: unit tests of log levels, line format, the rate limiter, and lines dropped rather than blocking. */
#include <check.h>
#include <stdbool.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/log.h"
#include "common/stats.h"
#include "clock_fake.h"

/* Run fn with stderr captured; returns what it wrote (static buffer). */
static const char *capture(void (*fn)(void))
{
	static char out[8192];
	FILE *tmp = tmpfile();
	int saved = dup(STDERR_FILENO);
	size_t n;

	ck_assert_ptr_nonnull(tmp);
	ck_assert_int_ge(saved, 0);
	ck_assert_int_ge(dup2(fileno(tmp), STDERR_FILENO), 0);
	fn();
	ck_assert_int_ge(dup2(saved, STDERR_FILENO), 0);
	close(saved);
	rewind(tmp);
	n = fread(out, 1, sizeof(out) - 1, tmp);
	out[n] = '\0';
	fclose(tmp);
	return out;
}

/* The part after an optional "YYYY-MM-DDTHH:MM:SS.mmmZ " prefix. */
static const char *body(const char *line)
{
	if (strlen(line) > 25 && line[4] == '-' && line[10] == 'T' && line[23] == 'Z' &&
	    line[24] == ' ')
		return line + 25;
	return line;
}

static void emit_warn(void)
{
	errno = ENOENT;
	log_warn("open %s", "/x");
	ck_assert_int_eq(errno, ENOENT); /* logging keeps errno */
}

START_TEST(test_warn_appends_errno)
{
	log_set_level(LOG_LEVEL_INFO);
	ck_assert_str_eq(body(capture(emit_warn)), "WARN: open /x: No such file or directory\n");
}
END_TEST

static void emit_levels(void)
{
	log_error("e%d", 1);
	log_warnx("w%d", 2);
	log_info("i%d", 3);
	log_debug("d%d", 4);
}

START_TEST(test_levels_filter)
{
	const char *out;

	log_set_level(LOG_LEVEL_WARN);
	ck_assert_int_eq(log_get_level(), LOG_LEVEL_WARN);
	out = capture(emit_levels);
	ck_assert_ptr_nonnull(strstr(out, "ERROR: e1\n"));
	ck_assert_ptr_nonnull(strstr(out, "WARN: w2\n"));
	ck_assert_ptr_null(strstr(out, "i3"));
	ck_assert_ptr_null(strstr(out, "d4"));

	log_set_level(LOG_LEVEL_DEBUG);
	out = capture(emit_levels);
	ck_assert_ptr_nonnull(strstr(out, "INFO: i3\n"));
	ck_assert_ptr_nonnull(strstr(out, "DEBUG: d4\n"));
	log_set_level(LOG_LEVEL_INFO);
}
END_TEST

static void emit_multiline(void)
{
	log_info("a\nb\rc");
}

START_TEST(test_one_line_per_event)
{
	log_set_level(LOG_LEVEL_INFO);
	ck_assert_str_eq(body(capture(emit_multiline)), "INFO: a b c\n");
}
END_TEST

static void emit_long(void)
{
	static char big[10000];
	memset(big, 'x', sizeof(big) - 1);
	log_info("%s", big);
}

START_TEST(test_long_line_truncated)
{
	const char *out = capture(emit_long);
	size_t n = strlen(out);

	ck_assert_uint_gt(n, 1000);
	ck_assert_uint_lt(n, 4096);
	ck_assert_int_eq(out[n - 1], '\n');
	ck_assert_ptr_eq(strchr(out, '\n'), out + n - 1);
}
END_TEST

static void emit_journal(void)
{
	log_info("hello");
}

START_TEST(test_journal_has_no_timestamp)
{
	/* Forked per test: the journal detection starts afresh here. */
	setenv("JOURNAL_STREAM", "8:1234", 1);
	ck_assert_str_eq(capture(emit_journal), "INFO: hello\n");
}
END_TEST

START_TEST(test_plain_stderr_has_timestamp)
{
	const char *out;

	unsetenv("JOURNAL_STREAM");
	out = capture(emit_journal);
	ck_assert_str_eq(body(out), "INFO: hello\n");
	ck_assert_ptr_ne(body(out), out);
}
END_TEST

START_TEST(test_level_parse)
{
	enum log_level l = LOG_LEVEL_MAX;

	ck_assert_int_eq(log_level_parse("debug", &l), 0);
	ck_assert_int_eq(l, LOG_LEVEL_DEBUG);
	ck_assert_int_eq(log_level_parse("WARN", &l), 0);
	ck_assert_int_eq(l, LOG_LEVEL_WARN);
	ck_assert_int_eq(log_level_parse("warning", &l), 0);
	ck_assert_int_eq(l, LOG_LEVEL_WARN);
	ck_assert_int_eq(log_level_parse("error", &l), 0);
	ck_assert_int_eq(l, LOG_LEVEL_ERROR);
	l = LOG_LEVEL_INFO;
	ck_assert_int_eq(log_level_parse("verbose", &l), -EINVAL);
	ck_assert_int_eq(log_level_parse("", &l), -EINVAL);
	ck_assert_int_eq(log_level_parse(NULL, &l), -EINVAL);
	ck_assert_int_eq(l, LOG_LEVEL_INFO);
	for (int i = 0; i < LOG_LEVEL_MAX; i++) {
		enum log_level back;
		ck_assert_int_eq(log_level_parse(log_level_name((enum log_level)i), &back), 0);
		ck_assert_int_eq(back, i);
	}
	ck_assert_str_eq(log_level_name(LOG_LEVEL_MAX), "unknown");
}
END_TEST

START_TEST(test_fatalx_exits_2)
{
	fatalx("cannot open %s", "db");
}
END_TEST

START_TEST(test_ratelimit)
{
	struct log_ratelimit rl = LOG_RATELIMIT_INIT(1000, 3);
	int64_t t = fake_now_ms;
	uint32_t sup = 99;

	/* A burst of 3 per second, then silence. */
	ck_assert(log_ratelimit_ok(&rl, t, &sup));
	ck_assert_uint_eq(sup, 0);
	ck_assert(log_ratelimit_ok(&rl, t + 1, NULL));
	ck_assert(log_ratelimit_ok(&rl, t + 2, NULL));
	for (int i = 0; i < 10; i++)
		ck_assert(!log_ratelimit_ok(&rl, t + 3 + i, &sup));
	ck_assert(!log_ratelimit_ok(&rl, t + 999, &sup));
	/* The next window: allowed, and told that 11 were dropped. */
	sup = 0;
	ck_assert(log_ratelimit_ok(&rl, t + 1000, &sup));
	ck_assert_uint_eq(sup, 11);
	ck_assert(log_ratelimit_ok(&rl, t + 1001, &sup));
	ck_assert_uint_eq(sup, 0);
	/* A quiet spell resets. */
	ck_assert(log_ratelimit_ok(&rl, t + 60000, &sup));
	ck_assert_uint_eq(sup, 0);
	/* A clock that jumps back starts a new window instead of muting forever. */
	ck_assert(log_ratelimit_ok(&rl, t + 60001, NULL));
	ck_assert(log_ratelimit_ok(&rl, t + 60002, NULL));
	ck_assert(!log_ratelimit_ok(&rl, t + 60003, NULL));
	ck_assert(log_ratelimit_ok(&rl, t, &sup));
	ck_assert_uint_eq(sup, 1);
}
END_TEST

/*
** stderr is a pipe nobody reads. Before, the write blocked once the pipe was
** full (the test would hang until check's timeout); now the call returns,
** the lines that did not fit are counted, and the ones in the pipe are
** whole lines.
*/
static void full_pipe(bool nonblock)
{
	static char buf[1 << 20];
	int fds[2], saved = dup(STDERR_FILENO), avail = 0;
	const unsigned lines = 20000;
	unsigned got = 0;
	ssize_t n;

	memset(&g_stats, 0, sizeof(g_stats));
	log_set_level(LOG_LEVEL_INFO);
	ck_assert_int_eq(pipe(fds), 0);
	ck_assert_int_ge(fcntl(fds[1], F_SETPIPE_SZ, 4096), 0); /* small: quick to fill */
	if (nonblock)
		ck_assert_int_eq(fcntl(fds[1], F_SETFL, O_NONBLOCK), 0);
	ck_assert_int_ge(dup2(fds[1], STDERR_FILENO), 0);
	for (unsigned i = 0; i < lines; i++)
		log_info("line %u of a log nobody reads, padded to take some room: %64s", i, "x");
	ck_assert_int_ge(dup2(saved, STDERR_FILENO), 0);
	close(saved);
	close(fds[1]);
	ck_assert_uint_gt(STAT_GET(log_dropped), 0);
	ck_assert_int_eq(ioctl(fds[0], FIONREAD, &avail), 0);
	ck_assert_int_gt(avail, 0);
	n = read(fds[0], buf, sizeof(buf) - 1);
	ck_assert_int_eq(n, avail);
	buf[n] = '\0';
	ck_assert_int_eq(buf[n - 1], '\n');        /* nothing torn */
	for (ssize_t i = 0; i < n; i++)
		got += buf[i] == '\n';
	ck_assert_uint_eq(got + STAT_GET(log_dropped), lines);
	ck_assert_ptr_nonnull(strstr(buf, "line 0 of"));
	close(fds[0]);
}

START_TEST(test_full_pipe_drops_not_blocks)
{
	full_pipe(false);
}
END_TEST

START_TEST(test_full_nonblocking_pipe_drops)
{
	full_pipe(true);
}
END_TEST

/* A socket (journald's stream) takes MSG_DONTWAIT: same answer. */
START_TEST(test_full_socket_drops_not_blocks)
{
	int sv[2], saved = dup(STDERR_FILENO), sz = 4096;

	memset(&g_stats, 0, sizeof(g_stats));
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	ck_assert_int_eq(setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz)), 0);
	ck_assert_int_ge(dup2(sv[1], STDERR_FILENO), 0);
	for (unsigned i = 0; i < 20000; i++)
		log_warnx("socket line %u %64s", i, "y");
	ck_assert_int_ge(dup2(saved, STDERR_FILENO), 0);
	close(saved);
	ck_assert_uint_gt(STAT_GET(log_dropped), 0);
	close(sv[0]);
	close(sv[1]);
}
END_TEST

static Suite *log_suite(void)
{
	Suite *s = suite_create("log");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, test_warn_appends_errno);
	tcase_add_test(tc, test_levels_filter);
	tcase_add_test(tc, test_one_line_per_event);
	tcase_add_test(tc, test_long_line_truncated);
	tcase_add_test(tc, test_journal_has_no_timestamp);
	tcase_add_test(tc, test_plain_stderr_has_timestamp);
	tcase_add_test(tc, test_level_parse);
	tcase_add_exit_test(tc, test_fatalx_exits_2, 2);
	tcase_add_test(tc, test_ratelimit);
	tcase_add_test(tc, test_full_pipe_drops_not_blocks);
	tcase_add_test(tc, test_full_nonblocking_pipe_drops);
	tcase_add_test(tc, test_full_socket_drops_not_blocks);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(log_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
