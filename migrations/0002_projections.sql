-- Projections: derived from the events table by the projector, rebuilt by `verdict replay`.
-- Nothing here is a source of truth; all of it can be dropped and folded again from the log.

-- One row per session: its folded state (JSON of verdict_projector::Session) and the columns
-- the list API filters on.
CREATE TABLE sessions (
    session_id    TEXT    PRIMARY KEY,
    vendor_status TEXT,
    action        TEXT,                     -- the current decision's action, if any
    updated_at    INTEGER NOT NULL,
    state         TEXT    NOT NULL
) WITHOUT ROWID;

CREATE INDEX sessions_by_status ON sessions (vendor_status, session_id);
CREATE INDEX sessions_by_action ON sessions (action, session_id);

-- Which log entries belong to which session (history, as_of).
CREATE TABLE session_entries (
    session_id TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;

-- Entries the projector could not understand: kept in the log, listed here with the reason.
CREATE TABLE quarantine (
    seq        INTEGER PRIMARY KEY,
    session_id TEXT,
    reason     TEXT    NOT NULL
);

-- How far each stage has read the log; updated in the same transaction as its output.
CREATE TABLE checkpoints (
    name TEXT    PRIMARY KEY,
    seq  INTEGER NOT NULL
);
