/* SPDX-License-Identifier: MIT */
/* deliver.h: alert delivery (retained MQTT publish, exec runs) on its own thread, fed by a bounded queue. */
#ifndef SM_DELIVER_H
#define SM_DELIVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
** alerts.c decides and renders an alert with the index write lock held;
** it must not wait there for a broker, a pipe or a program. So it pushes
** the rendered alert (topic and JSON, copied) into a bounded queue and
** returns; the delivery thread takes it from there: it publishes it and
** hands it to the exec program, whose runs it starts, reaps and times out.
**
** Bounds: at most DELIVER_QUEUE_MAX alerts, DELIVER_QUEUE_BYTES in all,
** wait for the thread (a flush may open an alert for each of thousands of
** unrelated producers at once: each one's retained state must get out);
** when full, the oldest are dropped (the newest is the current state of
** its alert, which matters more than a past one), counted in
** alerts_dropped and logged at most 10 times per 10 s. Exec: at most DELIVER_EXEC_MAX_CHILDREN programs
** at once, DELIVER_EXEC_QUEUE waiting for a slot (a newer alert with the
** same key replaces a waiting one; when full the oldest waiting goes,
** counted as an exec failure, as is every run that fails or times out).
**
** Threads: deliver_push, deliver_configure and deliver_queued may be called
** from any thread (they take the queue's mutex only, for a copy: no I/O).
** deliver_pump is the thread's own work; a test that never calls
** deliver_start (or has called deliver_stop) drives it by hand, with an
** injected clock, and only then may it read deliver_exec_running and
** deliver_exec_queued.
*/

#define DELIVER_QUEUE_MAX 4096        /* alerts waiting for the delivery thread */
#define DELIVER_QUEUE_BYTES (8u << 20) /* and their bytes (an alert is at most ~16 KiB) */
#define DELIVER_EXEC_MAX_CHILDREN 4   /* exec programs running at once */
#define DELIVER_EXEC_QUEUE 64         /* exec runs waiting for a slot */
#define DELIVER_REAP_MS 50            /* how often running children are polled */

/*
** Where alerts go. `publish` sends a retained MQTT message (may be NULL);
** called on the delivery thread only. It may be slow: only delivery waits.
*/
struct deliver_outlet {
	void (*publish)(void *ctx, const char *topic, const char *payload, size_t len);
	void *ctx;
};

/* One rendered alert. Everything is copied by deliver_push. */
struct deliver_alert {
	const char *key;     /* names the alert ("group dc1/hall2", "mirror"): exec coalesces by it */
	const char *topic;   /* retained MQTT topic, NULL: none */
	const char *payload; /* the JSON (no newline), or "" for a bare clear */
	size_t len;
	const char *state;   /* STATEMIRROR_ALERT_STATE */
	const char *group;   /* STATEMIRROR_ALERT_GROUP, NULL: "" */
	bool clear;          /* publish an empty retained payload after it */
	bool exec;           /* also hand it to the exec program */
};

struct deliver;

/* Returns NULL on ENOMEM. out is copied. No thread runs yet. */
struct deliver *deliver_new(const struct deliver_outlet *out);

/* Start the delivery thread. Returns 0, -EALREADY or -errno of pthread_create. */
int deliver_start(struct deliver *d);

/*
** Stop the thread (if started) and wait for it; alerts still queued are
** dropped (logged). Running exec children are left to finish on their own.
** Idempotent; deliver_free calls it.
*/
void deliver_stop(struct deliver *d);

/* Accepts NULL. Stops the thread first. */
void deliver_free(struct deliver *d);

/*
** The exec program: a command line split at blanks (no shell; NULL or
** blank: none) and its timeout in ms (<= 0: 10 s). Takes effect for runs
** started after the thread next wakes. Returns 0 or -ENOMEM (old kept).
*/
int deliver_configure(struct deliver *d, const char *exec_line, int64_t timeout_ms);

/*
** Queue one alert for delivery; never blocks on the thread's work. When
** the queue is full the oldest queued alert is dropped (counted, logged
** rate-limited). now_ms only rate-limits that log line. Returns 0 (queued)
** or -ENOMEM (this alert dropped, counted).
*/
int deliver_push(struct deliver *d, const struct deliver_alert *al, int64_t now_ms);

/*
** One round of the thread's work at now_ms: publish what is queued, start
** exec runs, reap and time out children. Returns the ms until it needs to
** run again with no new alert (INT64_MAX: not before one arrives).
*/
int64_t deliver_pump(struct deliver *d, int64_t now_ms);

/* Alerts waiting for the thread (any thread). */
size_t deliver_queued(struct deliver *d);
/* Exec children running, runs waiting for a slot (the pumping thread only). */
size_t deliver_exec_running(const struct deliver *d);
size_t deliver_exec_queued(const struct deliver *d);

#endif
