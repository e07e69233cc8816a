-- Indexes for two reads that otherwise read far more than they return.
--
-- verdict's own entries (decisions, overrides, policy activations) by type, in seq order:
-- `GET /v1/decisions` pages through the decisions after a cursor (and its long poll reads
-- again at every commit), `verdict policy backtest` reads them all. Without it SQLite took the
-- dedupe index for `source = 'verdict'` and read every internal entry of the log, then sorted
-- (77 ms a request at 500k decisions, even with the cursor at the head). Partial: webhook
-- entries, nearly all of the log, are not in it, so ingest does not maintain it. Building it
-- reads the whole log once, at the upgrade.
CREATE INDEX events_internal ON events (type) WHERE source = 'verdict';

-- Delivered decisions by sink and session: `verdict deliveries retry` checks, for each dead
-- delivery, whether a newer decision of its session was delivered to the same sink. Without
-- it, each dead delivery read every later delivery of its sink, inside the write transaction
-- (1,000 dead against 300k delivered: 54 s with the log's writer locked out).
CREATE INDEX outbox_delivered ON outbox (sink, session_id, seq) WHERE state = 'delivered';

-- Pending deliveries by sink, then due time: the dispatcher reads each sink's first due
-- deliveries as a range of it. The index it replaces ordered every sink's pending rows by due
-- time alone, so each pass went past the rows of a sink disabled by a 410 or removed from the
-- config, which stay pending (55 ms a pass with 300k of them, at least once a second).
DROP INDEX outbox_due;
CREATE INDEX outbox_due ON outbox (sink, next_attempt_at, seq) WHERE state = 'pending';
