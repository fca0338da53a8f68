-- SPDX-License-Identifier: MIT
-- 003: the cadence learner's state in the record, not seven intervals beside it.

-- The staleness engine learns a key's cadence from a running estimate now
-- (mirror/liveness/stale.c, "the learner"), not from the median of its last
-- seven intervals, and keeps what it learns from in the in-memory record.
-- rec.learn becomes an INTEGER (the column's BLOB affinity stores integers
-- as they are):
--   learn           NULL, or the learner's estimate in ms x 256 + its counts
--                   (stale.c; 3 in the counts: three intervals known)
-- and last_live_ms goes: an interval is never measured across a restart,
-- so the anchor the learner measures from is not stored.
-- A cadence learned before keeps its value, as three intervals known; the
-- rings of keys still learning are dropped (they learn afresh).
ALTER TABLE rec DROP COLUMN last_live_ms;
UPDATE rec SET learn = CASE WHEN cadence_source = 2 AND cadence_ms > 0
                            THEN cadence_ms * 256 + 3 END;
