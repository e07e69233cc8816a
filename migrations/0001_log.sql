-- The append-only event log. Every entry is chained to the previous one by SHA-256
-- (see crates/log/src/entry.rs for the exact hash input), so an edited, inserted or deleted
-- row breaks the chain; the triggers below make accidental edits fail loudly.
CREATE TABLE events (
    seq           INTEGER PRIMARY KEY,      -- gapless, assigned by the writer (head + 1)
    event_id      TEXT    NOT NULL,         -- UUIDv7
    source        TEXT    NOT NULL,         -- webhook source name, or "verdict" for internal events
    type          TEXT    NOT NULL,         -- e.g. idv:session_finished
    event_version INTEGER NOT NULL,
    dedupe_key    TEXT    NOT NULL,         -- unique per source: retried deliveries map to one entry
    recorded_at   INTEGER NOT NULL,         -- unix milliseconds, when the writer committed it
    vendor_time   INTEGER,                  -- unix milliseconds, the sender's event time if any
    headers       TEXT    NOT NULL,         -- JSON object of the delivery headers an auditor needs
    body          BLOB    NOT NULL,         -- the body as received, encoded per body_encoding
    body_encoding INTEGER NOT NULL,         -- 0: as is; 1: LZ4 block, u32 LE raw size first
    body_sha256   BLOB    NOT NULL,         -- SHA-256 of body; the chain covers this, not the body
    prev_hash     BLOB    NOT NULL,
    hash          BLOB    NOT NULL
);

CREATE UNIQUE INDEX events_dedupe ON events (source, dedupe_key);

CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events is append-only: UPDATE is not allowed');
END;

CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events is append-only: DELETE is not allowed');
END;

-- How often a delivery was seen again after it was stored (retry storms are visible here).
CREATE TABLE delivery_repeats (
    seq          INTEGER PRIMARY KEY,       -- the original entry
    count        INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL           -- unix milliseconds
);
