/* SPDX-License-Identifier: MIT */
/* watch.h: /v1/watch: Server-Sent Event streams of changes, with snapshot and resume. */
#ifndef SM_WATCH_H
#define SM_WATCH_H

#include <stddef.h>

#include "common/conf.h"
#include "mirror/state/changes.h"
#include "mirror/state/index.h"

struct MHD_Connection;
struct MHD_Response;
struct watch;

/*
** How a stream is fed. Each listener starts in one of three ways:
** a snapshot (every matching live record as an `update` event without an
** `id:`, then `synced` with id = the change-log head the snapshot was cut
** at), a resume (every change after the revision from Last-Event-ID or
** since=, each with its `id:`), or now (snapshot=false, nothing to
** resume). A resume from further back than the change log holds gets a
** snapshot instead, so no change is ever silently missed. Snapshot events
** carry no `id:`, so a client cut off in the middle of a snapshot resumes
** with the revision it had before, never from the middle of the snapshot.
**
** Snapshot and catch-up are rendered by the listener's own connection
** thread, a chunk at a time, as the client reads. Once a listener has
** caught up with the change log it is live: one thread (the hub) reads
** each new change once, renders it once, and appends it to the output
** buffer of every live listener whose filter matches. A live listener
** whose buffer would grow past conf->watch_buffer goes back to reading the
** change log at its own pace (a burst never costs more memory than that,
** and a healthy client is not punished for one); a listener that falls
** further behind than the change log holds (conf->watch_log_size changes)
** is disconnected at once, even if its client never reads again (counted
** in g_stats.watchers_dropped, logged rate-limited). Neither ingest nor
** other listeners ever wait for it. An idle live listener's connection is
** suspended in
** libmicrohttpd (no CPU) and resumed when it has something to send; a
** comment line goes out every WATCH_HEARTBEAT_MS.
*/
#define WATCH_HEARTBEAT_MS 15000

/*
** Start the hub thread. conf (watch_max_clients, watch_buffer), ix and cl
** must outlive watch_free(); the watch owns none of them.
** Returns 0 and *ret, or -ENOMEM / -errno (thread or eventfd creation).
*/
int watch_new(const struct conf *conf, struct index *ix, struct changes *cl,
	      struct watch **ret);

/*
** Where a listener may resume from when the change log no longer holds its
** revision: the previous run's revisions [file_floor, file_max] that the
** file kept (file_max 0: none), and this run's from run_base (the change
** log's base; the default is the log's head at watch_new). Such a listener
** gets the records changed since its revision (deletes included) as
** `update`/`delete` events without ids, then one `resumed` event whose id
** is the revision it is now at; anything else gets a full snapshot. Call
** before serving.
*/
void watch_set_resume(struct watch *w, int64_t file_floor, int64_t file_max, int64_t run_base);

/*
** An event that is not a key's change (an intent's new state): ev (len
** bytes, a whole "event: ...\ndata: ...\n\n" block) goes to every live
** listener whose filter matches topic, now, without an id: it is not in
** the change log and not replayed on resume. Best effort: a listener
** whose buffer is full misses it. Any thread; takes the hub's mutex.
*/
void watch_event(struct watch *h, const char *topic, size_t topic_len, const char *ev, size_t len);

/*
** The mirror's mirror_deps.on_changes (ctx = the struct watch *): new changes
** were appended. Called without locks from the thread that appended them:
** the MQTT session thread after each run of applied messages, the mirror
** thread after a turn that appended changes (staleness transitions).
** O(1): while nobody listens it does nothing (the first listener brings
** the hub to the change log's head as it joins); else it sets a flag and,
** if it was clear, writes to an eventfd. Never blocks on a listener. NULL
** ctx is ignored.
*/
void watch_wake(void *ctx);

/*
** Open a stream for an HTTP request on connection c. query (query_len
** bytes, without '?', NUL-terminated and writable: it is clobbered) holds
** filter=F (default "#"), snapshot=true|false (default false) and since=REV;
** last_event_id is the Last-Event-ID header or NULL (it wins over since).
** Returns 0 with *ret_resp, a response the caller queues with status 200
** and Content-Type text/event-stream and then destroys (the stream owns
** itself from there; destroying an unqueued response closes it too);
** -EINVAL with a reason for a 400; -EBUSY with a reason for a 503 (too
** many listeners, or shutting down); -ENOMEM. *ret_reason is a static
** string. Called on libmicrohttpd's threads; thread-safe.
*/
int watch_open(struct watch *w, struct MHD_Connection *c, char *query, size_t query_len,
	       const char *last_event_id, struct MHD_Response **ret_resp,
	       const char **ret_reason);

/*
** End every stream and resume every suspended connection, so that
** MHD_stop_daemon() may run next (libmicrohttpd forbids stopping with
** suspended connections). New streams are refused (-EBUSY) from here on.
** Call before MHD_stop_daemon(). Accepts NULL.
*/
void watch_shutdown(struct watch *w);

/* Stop the hub thread and free. Only after the HTTP server is stopped (no
 * stream left) and neither ingest nor the keeper thread can call watch_wake
 * any more (mqtt_stop and mirror_stop). Accepts NULL. */
void watch_free(struct watch *w);

#endif
