-- SPDX-License-Identifier: MIT
-- 002: the intent outbox: requests from local applications to publish a
-- value on a state owner's request topic, and their outcomes.
--
-- One row per intent, written (and fsync'd) before the API answers; the
-- outbox is the rows not yet published (state 0), in id order. Internal
-- like rec: read them through GET /v1/intents.
--   id              the intent's number, in order of acceptance, never reused
--   topic           the request topic the value is published on
--   correlation_id  the client's, or one made up (idempotence for the owner)
--   value           the requested value, as JSON text
--   confirm_topic   the state key that confirms it ('' none)
--   confirm_member  the member of that key's payload compared with value
--   state           0 pending, 1 published, 2 confirmed, 3 overridden,
--                   4 timed_out, 5 expired, 6 rejected
--   created_ms      the request time (the "ts" of the published message)
--   expire_ms       never published after this (epoch ms)
--   timeout_ms      how long to wait for confirmation after publishing (ms)
--   published_ms    PUBACK time, 0 before
--   decided_ms      the time of the outcome, 0 while undecided (published
--                   without a confirm key is decided at its PUBACK)
--   observed        the confirm key's value that decided it, JSON text
CREATE TABLE intent (
	id             INTEGER PRIMARY KEY AUTOINCREMENT,
	topic          TEXT    NOT NULL,
	correlation_id TEXT    NOT NULL,
	value          TEXT    NOT NULL,
	confirm_topic  TEXT    NOT NULL,
	confirm_member TEXT    NOT NULL,
	state          INTEGER NOT NULL,
	created_ms     INTEGER NOT NULL,
	expire_ms      INTEGER NOT NULL,
	timeout_ms     INTEGER NOT NULL,
	published_ms   INTEGER NOT NULL,
	decided_ms     INTEGER NOT NULL,
	observed       TEXT
);
-- The undecided ones, loaded at startup.
CREATE INDEX intent_open ON intent(id) WHERE decided_ms = 0;
