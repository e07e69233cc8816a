-- The decision outbox: one row per (sink, decision), with the state of its delivery.
-- Rows are written by the log writer in the same transaction as the decision event (the
-- transactional outbox: a decision exists if and only if its deliveries are queued) and
-- advanced by the dispatcher; every attempt is recorded here, so a restart resumes each
-- schedule exactly. It remembers what was delivered: `verdict replay` leaves it alone.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY,    -- the delivery id shown by `verdict deliveries list`
    sink            TEXT    NOT NULL,
    seq             INTEGER NOT NULL,       -- the decision's seq in the log
    session_id      TEXT    NOT NULL,
    decision_id     TEXT    NOT NULL,       -- sent as webhook-id
    state           TEXT    NOT NULL,       -- pending | delivered | dead | superseded
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,       -- unix ms: when the next attempt is due
    last_status     INTEGER,                -- HTTP status of the last attempt, if any
    last_error      TEXT,                   -- transport error of the last attempt, if any
    created_at      INTEGER NOT NULL,       -- unix ms
    updated_at      INTEGER NOT NULL,       -- unix ms
    UNIQUE (sink, seq)
);

-- Due work, and the per-session order check (an earlier pending decision blocks later ones).
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX outbox_session ON outbox (sink, session_id, seq) WHERE state = 'pending';
CREATE INDEX outbox_dead ON outbox (state, id);

-- Sinks disabled because they answered 410 Gone (until `verdict deliveries enable NAME`).
CREATE TABLE sink_status (
    sink        TEXT    PRIMARY KEY,
    disabled_at INTEGER NOT NULL,           -- unix ms
    reason      TEXT    NOT NULL
);
