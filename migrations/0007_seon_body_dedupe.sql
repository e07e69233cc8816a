-- The `seon` scheme now keys deliveries on the SHA-256 of the body (the signed bytes), not on
-- the unsigned `Request-Id` header. A delivery stored before under `request-id:<id>` and
-- retried after the upgrade must still be a duplicate, whatever `Request-Id` the retry (or a
-- replay) carries: the writer looks for an entry of the same source with the same body among
-- the entries stored so. Partial: only those entries are in it, so new entries (never keyed
-- `request-id:`) cost ingest nothing. Building it reads the log once, at the upgrade.
-- By body alone: the writer compares the source itself. The condition is a function of the
-- key, not a range of it, so that the look-up cannot be planned as a range of the dedupe index
-- instead (that range is every pre-upgrade entry).
CREATE INDEX events_request_id ON events (body_sha256)
    WHERE substr(dedupe_key, 1, 11) = 'request-id:';
