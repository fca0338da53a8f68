/* SPDX-License-Identifier: MIT */
/* test_notify.c: sd_notify against a real AF_UNIX datagram socket the test binds. */
#include <check.h>
#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/notify.h"

/* The listening end, as systemd sets it up: a datagram socket that wants
 * the sender's credentials. */
struct listener {
	int fd;
	char dir[64];
	char path[128];
	char env[128]; /* the value for $NOTIFY_SOCKET */
};

static void listener_bind(struct listener *l, int abstract)
{
	struct sockaddr_un sa;
	socklen_t salen;
	int one = 1;
	size_t len;

	memset(l, 0, sizeof(*l));
	l->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(l->fd, 0);
	ck_assert_int_eq(setsockopt(l->fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)), 0);

	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	if (abstract) {
		snprintf(l->env, sizeof(l->env), "@statemirror-test-notify-%ld-%d",
		    (long)getpid(), rand());
		len = strlen(l->env);
		memcpy(sa.sun_path, l->env, len);
		sa.sun_path[0] = '\0';
		salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
	} else {
		snprintf(l->dir, sizeof(l->dir), "/tmp/sm-notify-XXXXXX");
		ck_assert_ptr_nonnull(mkdtemp(l->dir));
		snprintf(l->path, sizeof(l->path), "%s/notify", l->dir);
		snprintf(l->env, sizeof(l->env), "%s", l->path);
		len = strlen(l->path);
		memcpy(sa.sun_path, l->path, len + 1);
		salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
	}
	ck_assert_int_eq(bind(l->fd, (struct sockaddr *)&sa, salen), 0);
	ck_assert_int_eq(setenv("NOTIFY_SOCKET", l->env, 1), 0);
}

static void listener_close(struct listener *l)
{
	close(l->fd);
	if (l->path[0] != '\0') {
		unlink(l->path);
		rmdir(l->dir);
	}
	unsetenv("NOTIFY_SOCKET");
}

/* Receive one datagram (waiting at most 2 s) into buf as a string; checks
 * that the kernel-attached credentials name this process, as systemd's
 * NotifyAccess=main does. Returns the datagram's length. */
static ssize_t listener_recv(struct listener *l, char *buf, size_t size)
{
	struct pollfd pfd = { .fd = l->fd, .events = POLLIN };
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(struct ucred))];
	} control;
	struct iovec iov = { .iov_base = buf, .iov_len = size - 1 };
	struct msghdr mh = { 0 };
	struct cmsghdr *cm;
	struct ucred cred = { 0 };
	int have_cred = 0;
	ssize_t n;

	ck_assert_int_eq(poll(&pfd, 1, 2000), 1);
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	mh.msg_control = control.buf;
	mh.msg_controllen = sizeof(control.buf);
	n = recvmsg(l->fd, &mh, MSG_DONTWAIT);
	ck_assert_int_ge(n, 0);
	ck_assert_int_eq(mh.msg_flags & MSG_TRUNC, 0);
	buf[n] = '\0';
	for (cm = CMSG_FIRSTHDR(&mh); cm != NULL; cm = CMSG_NXTHDR(&mh, cm)) {
		if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_CREDENTIALS) {
			memcpy(&cred, CMSG_DATA(cm), sizeof(cred));
			have_cred = 1;
		}
	}
	ck_assert(have_cred);
	ck_assert_int_eq(cred.pid, getpid());
	return n;
}

static int listener_pending(struct listener *l)
{
	struct pollfd pfd = { .fd = l->fd, .events = POLLIN };
	return poll(&pfd, 1, 0);
}

START_TEST(test_send_path)
{
	struct listener l;
	char buf[NOTIFY_MAX + 16];

	listener_bind(&l, 0);
	ck_assert_int_eq(notify_send("READY=1"), 0);
	ck_assert_int_eq(listener_recv(&l, buf, sizeof(buf)), 7);
	ck_assert_str_eq(buf, "READY=1");

	/* Several assignments in one datagram, as for a reload. */
	ck_assert_int_eq(notify_send("RELOADING=1\nSTATUS=reloading configuration"), 0);
	listener_recv(&l, buf, sizeof(buf));
	ck_assert_str_eq(buf, "RELOADING=1\nSTATUS=reloading configuration");
	listener_close(&l);
}
END_TEST

START_TEST(test_send_abstract)
{
	struct listener l;
	char buf[256];

	listener_bind(&l, 1);
	ck_assert_int_eq(notify_send("WATCHDOG=1"), 0);
	listener_recv(&l, buf, sizeof(buf));
	ck_assert_str_eq(buf, "WATCHDOG=1");
	ck_assert_int_eq(notify_sendf("STATUS=connected, %d keys, %d stale", 12, 3), 0);
	listener_recv(&l, buf, sizeof(buf));
	ck_assert_str_eq(buf, "STATUS=connected, 12 keys, 3 stale");
	listener_close(&l);
}
END_TEST

START_TEST(test_send_max_size)
{
	struct listener l;
	static char big[NOTIFY_MAX + 2];
	static char buf[NOTIFY_MAX + 16];

	listener_bind(&l, 0);
	memcpy(big, "STATUS=", 7);
	memset(big + 7, 'x', NOTIFY_MAX - 7);
	big[NOTIFY_MAX] = '\0';
	ck_assert_int_eq(notify_send(big), 0);
	ck_assert_int_eq(listener_recv(&l, buf, sizeof(buf)), NOTIFY_MAX);
	ck_assert_str_eq(buf, big);

	/* One byte more is refused, and nothing is sent. */
	big[NOTIFY_MAX] = 'x';
	big[NOTIFY_MAX + 1] = '\0';
	ck_assert_int_eq(notify_send(big), -EINVAL);
	ck_assert_int_eq(notify_sendf("%s", big), -EINVAL);
	ck_assert_int_eq(listener_pending(&l), 0);
	listener_close(&l);
}
END_TEST

START_TEST(test_unset_is_noop)
{
	unsetenv("NOTIFY_SOCKET");
	ck_assert_int_eq(notify_send("READY=1"), 0);
	setenv("NOTIFY_SOCKET", "", 1);
	ck_assert_int_eq(notify_send("READY=1"), 0);
	unsetenv("NOTIFY_SOCKET");
}
END_TEST

START_TEST(test_bad_arguments)
{
	char longname[200];

	ck_assert_int_eq(notify_send(NULL), -EINVAL);
	ck_assert_int_eq(notify_send(""), -EINVAL);

	setenv("NOTIFY_SOCKET", "relative/notify", 1);
	ck_assert_int_eq(notify_send("READY=1"), -EAFNOSUPPORT);
	setenv("NOTIFY_SOCKET", "vsock:2:1234", 1);
	ck_assert_int_eq(notify_send("READY=1"), -EAFNOSUPPORT);

	memset(longname, 'a', sizeof(longname) - 1);
	longname[0] = '/';
	longname[sizeof(longname) - 1] = '\0';
	setenv("NOTIFY_SOCKET", longname, 1);
	ck_assert_int_eq(notify_send("READY=1"), -EINVAL);
	setenv("NOTIFY_SOCKET", "@", 1);
	ck_assert_int_eq(notify_send("READY=1"), -EINVAL);
	unsetenv("NOTIFY_SOCKET");
}
END_TEST

START_TEST(test_nobody_listening)
{
	struct listener l;
	int r;

	/* A socket path that no longer exists. */
	listener_bind(&l, 0);
	close(l.fd);
	unlink(l.path);
	r = notify_send("READY=1");
	ck_assert_msg(r == -ENOENT || r == -ECONNREFUSED, "got %d", r);
	rmdir(l.dir);
	l.path[0] = '\0';

	/* An abstract name nobody bound. */
	setenv("NOTIFY_SOCKET", "@statemirror-test-nobody-listens-here", 1);
	r = notify_send("READY=1");
	ck_assert_msg(r == -ECONNREFUSED || r == -ENOENT, "got %d", r);
	unsetenv("NOTIFY_SOCKET");
}
END_TEST

START_TEST(test_watchdog_usec)
{
	char pid[32];

	unsetenv("WATCHDOG_USEC");
	unsetenv("WATCHDOG_PID");
	ck_assert_uint_eq(notify_watchdog_usec(), 0);

	setenv("WATCHDOG_USEC", "30000000", 1);
	ck_assert_uint_eq(notify_watchdog_usec(), 30000000u);

	snprintf(pid, sizeof(pid), "%ld", (long)getpid());
	setenv("WATCHDOG_PID", pid, 1);
	ck_assert_uint_eq(notify_watchdog_usec(), 30000000u);

	/* Inherited from a parent that was the watched one: not ours. */
	snprintf(pid, sizeof(pid), "%ld", (long)getpid() + 1);
	setenv("WATCHDOG_PID", pid, 1);
	ck_assert_uint_eq(notify_watchdog_usec(), 0);
	setenv("WATCHDOG_PID", "x1", 1);
	ck_assert_uint_eq(notify_watchdog_usec(), 0);
	unsetenv("WATCHDOG_PID");

	static const char *bad[] = { "0", "", "-5", " 5", "5s", "1e6",
	    "99999999999999999999999", "+5" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		setenv("WATCHDOG_USEC", bad[i], 1);
		ck_assert_msg(notify_watchdog_usec() == 0, "WATCHDOG_USEC=\"%s\"", bad[i]);
	}
	unsetenv("WATCHDOG_USEC");
}
END_TEST

static Suite *notify_suite(void)
{
	Suite *s = suite_create("notify");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, test_send_path);
	tcase_add_test(tc, test_send_abstract);
	tcase_add_test(tc, test_send_max_size);
	tcase_add_test(tc, test_unset_is_noop);
	tcase_add_test(tc, test_bad_arguments);
	tcase_add_test(tc, test_nobody_listening);
	tcase_add_test(tc, test_watchdog_usec);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(notify_suite());
	int failed;

	srand((unsigned)getpid());
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
