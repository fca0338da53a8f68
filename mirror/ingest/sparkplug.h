/* SPDX-License-Identifier: MIT */
/* sparkplug.h: the Sparkplug B 3.0 host-mode decoder: births, data, deaths, rebirth requests. */
#ifndef SM_SPARKPLUG_H
#define SM_SPARKPLUG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mirror/ingest/decode.h"

/*
** The decoder claims every topic under "spBv1.0/" and keeps one session per
** edge node (group, edge): the metrics its NBIRTH and each DBIRTH defined
** (name, alias, datatype), its bdSeq and the seq it expects next.
**
** Keys. A node metric is the key "spBv1.0/GROUP/EDGE/NAME", a device metric
** "spBv1.0/GROUP/EDGE/DEVICE/NAME", NAME as the birth gave it. A metric
** name may hold '/' (Sparkplug folders): node metric "pump/speed" of edge
** E and metric "speed" of device "pump" of E both map to
** "spBv1.0/G/E/pump/speed"; the key is shared, the later timestamp wins.
** "spBv1.0/STATE/HOST" (a host's own JSON birth/will) is mirrored as it is.
**
** Values. Each key's payload is one JSON object:
**   {"value":V,"type":"Int32","ts":MS}
** plus "is_null":true (and "value":null) for a null metric,
** "historical":true for is_historical, "quality":N when the metric has a
** "Quality" property. MS is the metric's timestamp, else the payload's,
** else the receive time (ms); the update is ordered by it. V by type:
**   Int8..Int64, UInt8..UInt64   a JSON integer (UInt64 up to 2^64-1)
**   Float, Double                a number, shortest text that reads back;
**                                NaN and infinities as "NaN", "Infinity",
**                                "-Infinity"
**   Boolean                      true / false
**   String, Text, UUID           a string
**   DateTime                     an integer, ms since the epoch
**   Bytes, File                  a base64 string (File adds "file_name"
**                                from the metadata when it has one)
**   Int8Array..DateTimeArray     a JSON array of the element type's
**                                values (little-endian packed bytes, as
**                                the specification packs them)
**   DataSet                      {"columns":[..],"types":[..],"rows":[[..],..]}
**   Template                     {"template_ref":..,"version":..,
**                                "is_definition":bool,"parameters":{NAME:V},
**                                "metrics":{NAME:{"type":..,"value":..}}}
**                                (members nested at most 8 deep)
** A metric whose value does not fit its type (a string for an Int32, an
** Int8 of 300, a bad UTF-8 string, PropertySet or an unknown type) is
** refused alone, with REJECT_UNDECODABLE; its siblings still apply.
**
** Sessions (spec 3.0, host application):
**   NBIRTH  starts a session: its metrics replace the node's, devices
**           must be born again, bdSeq is its "bdSeq" metric, seq resets.
**   DBIRTH  (re)defines a device of a live node.
**   N/DDATA updates metrics by alias, else by name (a metric whose alias
**           the birth did not give but whose name it did: by name).
**   NDEATH  ends the session only when its bdSeq is the live one's (an
**           old will delivered late is ignored, counted): hooks.node_death.
**   DDEATH  ends a device: hooks.device_death.
**   NCMD/DCMD commands, not state: ignored (0 updates, counted).
**   STATE   "spBv1.0/STATE/HOST": mirrored as it is (JSON, ordered by
**           its "timestamp" member; not JSON: REJECT_NOT_JSON).
** Data for a node or device without a live birth, an unknown alias, and a
** seq gap not filled within reorder_window ms (0: at once) are counted
** and, when conf.rebirth is set, answered with a rebirth request (NCMD
** "Node Control/Rebirth" = true through hooks.publish), at most one per
** node per rebirth_interval_ms and 100 a second in all. Such data is
** refused (REJECT_NO_BIRTH); a gap's data is still applied (timestamps
** order it).
**
** Limits (each refusal counted in struct sparkplug_stats):
** max_nodes sessions, max_devices per node (when full, a node or device
** without a live session is forgotten to make room, counted as evicted;
** only live ones are refused), max_node_metrics metrics per node (its own
** and its devices' together), max_metrics metric definitions and devices
** of all nodes together (the memory bound), max_message_metrics per
** payload (the whole message is refused, REJECT_TOO_LARGE), max_value_len
** bytes of JSON per key (REJECT_TOO_LARGE), max_decode_mem bytes for one
** payload's decoded form (REJECT_UNDECODABLE, whole message); protobuf
** messages nested at most 20 deep (checked before protobuf-c unpacks,
** whose recursion has no limit: REJECT_UNDECODABLE, whole message).
** Keys longer than max_topic_len are the sink's to refuse.
**
** Threads: like every decoder, the session thread only; the hooks are
** called on it, from inside decode (or sparkplug_tick).
*/

struct sparkplug_conf {
	bool rebirth;                /* send rebirth requests (default false) */
	int64_t reorder_window_ms;   /* a seq gap may fill within this (default 2000) */
	int64_t rebirth_interval_ms; /* per node, between requests (default 30000) */
	size_t max_nodes;            /* edge node sessions (default 10000) */
	size_t max_devices;          /* devices per node (default 1000) */
	size_t max_node_metrics;     /* metrics per node, devices included (default 100000) */
	size_t max_metrics;          /* metrics and devices of all nodes (default 1000000) */
	size_t max_message_metrics;  /* metrics per payload (default 10000) */
	size_t max_value_len;        /* JSON bytes per key (default 65536) */
	size_t max_decode_mem;       /* decoded form of one payload (default 32 MiB) */
};

/* Fill c with the defaults above. */
void sparkplug_conf_default(struct sparkplug_conf *c);

/*
** What leaves the decoder besides key updates. Every member may be NULL.
** Strings are borrowed for the call. ts_ms is the receive time of the
** message that caused the call (a death's own timestamp is the time its
** will was registered, not of the death).
**
**   node_death    a live node's session ended (a matching NDEATH): every
**                 key of the node and of its devices is offline now.
**   device_death  a device's session ended (DDEATH).
**   publish       send a message (rebirth requests: QoS 0, not retained).
**                 Returns 0 or -errno (counted as rebirth_failed).
** Within node_death/device_death, sparkplug_foreach_key() lists the keys
** the session covered.
*/
struct sparkplug_hooks {
	void (*node_death)(void *ctx, const char *group, const char *edge, int64_t ts_ms);
	void (*device_death)(void *ctx, const char *group, const char *edge,
			     const char *device, int64_t ts_ms);
	int (*publish)(void *ctx, const char *topic, const void *payload, size_t len,
		       int qos, bool retain);
	void *ctx;
};

/* Counters, monotonic from sparkplug_new(). */
struct sparkplug_stats {
	uint64_t messages;          /* messages decoded (claimed) */
	uint64_t metrics;           /* key updates emitted as values */
	uint64_t births;            /* NBIRTH + DBIRTH accepted */
	uint64_t node_deaths;       /* NDEATH that ended a session */
	uint64_t deaths_ignored;    /* NDEATH of another bdSeq or of no session; DDEATH of no device */
	uint64_t device_deaths;
	uint64_t commands_ignored;  /* NCMD, DCMD */
	uint64_t undecodable;       /* messages refused whole: topic, protobuf, depth, memory */
	uint64_t metrics_refused;   /* single metrics refused (type, UTF-8, size, limits) */
	uint64_t no_birth;          /* data for a node/device without a live birth */
	uint64_t unknown_alias;     /* metrics naming no metric of the birth */
	uint64_t seq_gaps;          /* gaps not filled within reorder_window */
	uint64_t rebirth_sent;
	uint64_t rebirth_suppressed; /* wanted, but off or within rebirth_interval */
	uint64_t rebirth_failed;    /* publish returned an error */
	uint64_t refused_nodes;     /* max_nodes reached */
	uint64_t refused_devices;   /* max_devices reached */
	uint64_t refused_metrics;   /* max_node_metrics reached */
	uint64_t refused_messages;  /* more than max_message_metrics */
	uint64_t evicted;           /* nodes/devices without a live session forgotten for room */
};

/*
** A Sparkplug decoder with conf and hooks (both copied). *ret is a struct
** decoder for the session's decoder list; free it with decoder_free().
** Returns 0, -EINVAL (a zero limit) or -ENOMEM.
*/
int sparkplug_new(const struct sparkplug_conf *conf, const struct sparkplug_hooks *hooks,
		  struct decoder **ret);

/* Is d a Sparkplug decoder (made by sparkplug_new)? */
bool sparkplug_is(const struct decoder *d);

/* Copy d's counters into *ret. */
void sparkplug_get_stats(const struct decoder *d, struct sparkplug_stats *ret);

/*
** Check the pending seq gaps against now_ns (the receive-time clock of
** struct decode_in) when no message comes to do it: the session calls it
** now and then (once a second is plenty). May call hooks.publish.
*/
void sparkplug_tick(struct decoder *d, int64_t now_ns);

/*
** The broker link was lost: births received before may be stale (a node
** may have been reborn meanwhile with other aliases), so every session
** needs a new birth. No hook is called (the mirror marks everything
** stale with reason broker itself).
*/
void sparkplug_link_lost(struct decoder *d);

/*
** Call fn with each key (NUL-terminated, borrowed for the call) of the
** session of (group, edge), or of its device when device is non-NULL;
** a node's keys include its devices'. Returns how many keys were listed,
** -ENOENT if no such session is held. Valid at any time on the session
** thread, and inside node_death/device_death for the session that ended.
*/
int sparkplug_foreach_key(struct decoder *d, const char *group, const char *edge,
			  const char *device, void (*fn)(void *ctx, const char *key, size_t len),
			  void *ctx);

/*
** Call fn with the group and edge (borrowed for the call) of every edge
** node session held, live or not (a node whose session ended keeps its
** keys until it is forgotten for room). fn must not call back into d
** except sparkplug_foreach_key. Session thread only; valid inside
** link_lost before the decoder's own (its sessions are kept, only marked
** dead). Returns how many nodes were listed.
*/
size_t sparkplug_foreach_node(struct decoder *d,
			      void (*fn)(void *ctx, const char *group, const char *edge), void *ctx);

/* The Sparkplug name of a datatype ("Int32"), "Unknown" when out of range. */
const char *sparkplug_type_name(uint32_t datatype);

#endif
