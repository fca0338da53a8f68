/* SPDX-License-Identifier: MIT */
/* notify.c: sd_notify over the $NOTIFY_SOCKET datagram socket, without libsystemd. */
#include "common/notify.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

/* Build the address from $NOTIFY_SOCKET. Returns 0, 1 when unset (nothing
 * to do), or a negative errno. */
static int notify_address(struct sockaddr_un *ret_sa, socklen_t *ret_len)
{
	const char *name = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sa;
	size_t len;

	if (name == NULL || name[0] == '\0')
		return 1;
	if (name[0] != '/' && name[0] != '@')
		return -EAFNOSUPPORT; /* e.g. "vsock:": not for a local daemon */
	len = strlen(name);
	if (len < 2 || len > sizeof(sa.sun_path) - (name[0] == '/' ? 1 : 0))
		return -EINVAL;

	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	memcpy(sa.sun_path, name, len);
	if (name[0] == '@') {
		/* Abstract namespace: a leading NUL, and the length counts
		 * exactly the name's bytes, no terminator. */
		sa.sun_path[0] = '\0';
		*ret_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
	} else {
		*ret_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
	}
	*ret_sa = sa;
	return 0;
}

int notify_send(const char *state)
{
	struct sockaddr_un sa;
	socklen_t salen = 0;
	size_t len;
	ssize_t n;
	int fd, r;

	if (state == NULL || state[0] == '\0')
		return -EINVAL;
	len = strlen(state);
	if (len > NOTIFY_MAX)
		return -EINVAL;

	r = notify_address(&sa, &salen);
	if (r != 0)
		return r < 0 ? r : 0;

	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	do {
		n = sendto(fd, state, len, MSG_NOSIGNAL,
		    (const struct sockaddr *)&sa, salen);
	} while (n < 0 && errno == EINTR);
	if (n < 0) {
		r = -errno;
		goto fail;
	}
	if ((size_t)n != len) {
		r = -EMSGSIZE; /* a datagram goes whole or not at all */
		goto fail;
	}
	r = 0;
fail:
	close(fd);
	return r;
}

int notify_sendf(const char *fmt, ...)
{
	char buf[NOTIFY_MAX + 1];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n > NOTIFY_MAX)
		return -EINVAL;
	return notify_send(buf);
}

/* A positive decimal number without sign, spaces or trailing bytes. */
static int parse_u64(const char *s, uint64_t *ret)
{
	unsigned long long v;
	char *end;

	if (s == NULL || s[0] < '0' || s[0] > '9')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0 || *end != '\0')
		return -EINVAL;
	*ret = (uint64_t)v;
	return 0;
}

uint64_t notify_watchdog_usec(void)
{
	const char *pid_s = getenv("WATCHDOG_PID");
	uint64_t usec, pid;

	if (parse_u64(getenv("WATCHDOG_USEC"), &usec) < 0 || usec == 0)
		return 0;
	if (pid_s != NULL && pid_s[0] != '\0') {
		/* Set by systemd when the variable may have been inherited
		 * by a child: only the named process is watched. */
		if (parse_u64(pid_s, &pid) < 0 || pid != (uint64_t)getpid())
			return 0;
	}
	return usec;
}
