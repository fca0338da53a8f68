-- SPDX-License-Identifier: MIT
-- 001: the first schema. Placeholder written by the lead; the store owner fills it.
CREATE TABLE meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;
