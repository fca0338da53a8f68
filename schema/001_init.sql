-- SPDX-License-Identifier: MIT
-- 001: the record table, the meta table and the public views keys and stale_keys.

-- One row per key the mirror knows, tombstones (flags & 2) included: every
-- field of the in-memory record (mirror/state/index.h, struct rec) that a restart
-- needs. Internal: its layout may change in any migration; analysis jobs
-- read the views below. The small fixed-size columns come first and the
-- payload last so that reading them never touches a payload's overflow pages.
--   ts_ns           observation time of the current value, epoch ns
--   received_ms     wall time the current value was applied, epoch ms
--   last_seen_ms    last confirmation, epoch ms
--   rev             revision of the last change to the record
--   stale_since_ms  0 while fresh
--   last_live_ms    last live message, for learning; 0 none
--   updates         messages applied to the key
--   cadence_ms      0 when unknown or never
--   cadence_source  0 none, 1 rule, 2 learned, 3 default
--   flags           1 retained, 2 deleted, 4 ts from payload, 8 stale,
--                   16 payload is JSON, 64 never judged for staleness
--   learn           NULL, or the learning state: one byte nlearn, then the
--                   interval ring (ms) as LEB128 varints, trailing zeros cut
--   payload         the bytes as received: TEXT when the payload is JSON
--                   (so SQLite's json functions apply), else BLOB; NULL for
--                   a tombstone
-- Zeros and NULLs cost no bytes in an SQLite record, which keeps a fresh key
-- near 70 bytes plus its topic and payload.
CREATE TABLE rec (
	topic          TEXT    NOT NULL PRIMARY KEY,
	ts_ns          INTEGER NOT NULL,
	received_ms    INTEGER NOT NULL,
	last_seen_ms   INTEGER NOT NULL,
	rev            INTEGER NOT NULL,
	stale_since_ms INTEGER NOT NULL,
	last_live_ms   INTEGER NOT NULL,
	updates        INTEGER NOT NULL,
	cadence_ms     INTEGER NOT NULL,
	cadence_source INTEGER NOT NULL,
	flags          INTEGER NOT NULL,
	learn          BLOB,
	payload
) WITHOUT ROWID;

-- Small facts about the file: 'rev' is the revision counter's high-water
-- mark (the greatest rev ever written, even if that row is gone).
CREATE TABLE meta (
	name  TEXT NOT NULL PRIMARY KEY,
	value
) WITHOUT ROWID;

-- The stable query interface (see the contract): every live key, times in
-- epoch milliseconds, retained and stale as 0 or 1, cadence_ms NULL while
-- unknown. The file lags the live API by at most a second.
CREATE VIEW keys(topic, payload, ts_ms, received_ms, last_seen_ms, retained,
                 updates, cadence_ms, stale) AS
	SELECT topic, payload, ts_ns / 1000000, received_ms, last_seen_ms,
	       flags & 1, updates, NULLIF(cadence_ms, 0), (flags >> 3) & 1
	FROM rec
	WHERE flags & 2 = 0;

-- The rows of keys that are stale.
CREATE VIEW stale_keys AS
	SELECT * FROM keys WHERE stale = 1;
