/* SPDX-License-Identifier: MIT */
/* notify.h: the systemd sd_notify protocol, spoken directly over $NOTIFY_SOCKET. */
#ifndef SM_NOTIFY_H
#define SM_NOTIFY_H

#include <stdint.h>

#include "common/log.h"

/*
** Why not libsystemd: the protocol is one datagram of "KEY=VALUE\n" lines
** to the AF_UNIX socket named by $NOTIFY_SOCKET (a path, or "@name" for the
** abstract namespace), and the daemon then runs the same with or without
** systemd, on any init, with one dependency less.
**
** Thread-safety: every function only reads the environment and opens its
** own socket, so any thread may call them, as long as nobody calls setenv()
** concurrently. systemd tells the sender by its process id (NotifyAccess=main
** takes any thread of the main process).
*/

/* Bytes of one notify message at most (state string, without the NUL). */
#define NOTIFY_MAX 4096

/*
** Send `state` (e.g. "READY=1", "STATUS=connected, 12 keys", "WATCHDOG=1",
** "RELOADING=1", "STOPPING=1"; several may be joined with '\n') to the
** service manager as one datagram.
** Returns 0 when it was sent, and also 0 when $NOTIFY_SOCKET is unset or
** empty (not started by systemd: nothing to do).
** -EINVAL: state is NULL or empty, longer than NOTIFY_MAX, or the socket
**          name is too long for sockaddr_un;
** -EAFNOSUPPORT: $NOTIFY_SOCKET is neither "/path" nor "@abstract";
** else the negative errno of socket()/sendto() (e.g. -ECONNREFUSED,
**          -ENOENT when nobody listens). Never blocks for long: the
**          datagram goes out at once or fails with -EAGAIN.
** The caller keeps ownership of state.
*/
int notify_send(const char *state);

/* notify_send() with a printf format; a message longer than NOTIFY_MAX
 * is not sent (-EINVAL). */
int notify_sendf(const char *fmt, ...) LOG_PRINTF(1, 2);

/*
** The watchdog interval systemd asks for (WatchdogSec= in the unit), in
** microseconds, from $WATCHDOG_USEC; 0 when the watchdog is off: the
** variable is unset, not a positive decimal number, or $WATCHDOG_PID is set
** and names another process. Send "WATCHDOG=1" at least every half of it.
*/
uint64_t notify_watchdog_usec(void);

#endif
