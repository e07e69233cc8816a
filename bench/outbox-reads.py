#!/usr/bin/env python3
"""The delivery dispatcher's two outbox reads with a backlog, on the schema before migration
0006 and after it, with the SQL texts of before and after (docs/benchmarks.md, "Delivery").

    python3 bench/outbox-reads.py

Two scratch databases are built from migrations/*.sql (up to 0005, and all) and filled alike:
sink "a" disabled by a 410 with 300,000 pending deliveries, sink "b" with 299,000 delivered
and 1,000 pending not yet due. Each read is timed 3 times; the best is printed.
"""
import glob
import os
import sqlite3
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SINKS = '["a","b"]'


def database(path, upto):
    c = sqlite3.connect(path)
    for f in sorted(glob.glob(os.path.join(ROOT, "migrations", "*.sql")))[:upto]:
        c.executescript(open(f).read())
    rows = [("a", i, f"s{i}", "pending", 1000 + i) for i in range(1, 300_001)]
    rows += [
        ("b", 300_000 + i, f"s{i}", "delivered" if i > 1000 else "pending", 10**13 + i)
        for i in range(1, 300_001)
    ]
    c.executemany(
        "INSERT INTO outbox (sink, seq, session_id, decision_id, state, attempts, "
        "next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, 'd', ?, 1, ?, 0, 0)",
        rows,
    )
    c.execute("INSERT INTO sink_status VALUES ('a', 0, '410 Gone')")
    c.commit()
    return c


def best(c, sql, params):
    times = []
    for _ in range(3):
        t = time.perf_counter()
        n = len(c.execute(sql, params).fetchall())
        times.append(time.perf_counter() - t)
    return n, 1000 * min(times)


NEWER = ("EXISTS (SELECT 1 FROM outbox n WHERE n.state = 'pending' AND n.sink = o.sink "
         "AND n.session_id = o.session_id AND n.seq > o.seq)")
FIRST = ("NOT EXISTS (SELECT 1 FROM outbox p WHERE p.state = 'pending' AND p.sink = o.sink "
         "AND p.session_id = o.session_id AND p.seq < o.seq)")
COLS = "o.sink, o.seq, o.session_id, o.decision_id, o.attempts, o.next_attempt_at"
OLD_CANDIDATES = (
    f"SELECT {COLS}, {NEWER} FROM outbox o INDEXED BY outbox_due WHERE o.state = 'pending' "
    "AND o.sink IN (SELECT value FROM json_each(?1)) AND o.sink NOT IN (SELECT sink FROM "
    f"sink_status) AND {FIRST} ORDER BY o.next_attempt_at, o.seq LIMIT 64")
NEW_CANDIDATES = (  # run for each configured sink that is not disabled: here "b"
    f"SELECT {COLS}, {NEWER} FROM outbox o INDEXED BY outbox_due WHERE o.state = 'pending' "
    f"AND o.sink = ?1 AND {FIRST} ORDER BY o.next_attempt_at, o.seq LIMIT 64")
OLD_STALE = (
    "SELECT o.sink, o.seq FROM outbox o INDEXED BY outbox_session WHERE o.state = 'pending' "
    "AND o.sink IN (SELECT value FROM json_each(?1)) AND EXISTS (SELECT 1 FROM outbox n "
    "WHERE n.state = 'pending' AND n.sink = o.sink AND n.session_id = o.session_id "
    "AND n.seq > o.seq) LIMIT 1000")
NEW_STALE = (  # from the rows added since the last look: here the newest 10
    "SELECT n.id, o.sink, o.seq FROM outbox n JOIN outbox o INDEXED BY outbox_session "
    "ON o.state = 'pending' AND o.sink = n.sink AND o.session_id = n.session_id "
    "AND o.seq < n.seq WHERE n.id > ?2 AND n.state = 'pending' "
    "AND n.sink IN (SELECT value FROM json_each(?1)) ORDER BY n.id LIMIT 1000")

with tempfile.TemporaryDirectory() as d:
    old = database(os.path.join(d, "old.db"), 5)
    new = database(os.path.join(d, "new.db"), 6)
    newest = new.execute("SELECT MAX(id) FROM outbox").fetchone()[0]
    for label, c, sql, params in [
        ("candidates, before", old, OLD_CANDIDATES, [SINKS]),
        ("candidates, after (sink b)", new, NEW_CANDIDATES, ["b"]),
        ("stale, before (every pending row)", old, OLD_STALE, [SINKS]),
        ("stale, after (10 new rows)", new, NEW_STALE, [SINKS, newest - 10]),
        ("stale, after (all rows: the first look)", new, NEW_STALE, [SINKS, 0]),
    ]:
        n, ms = best(c, sql, params)
        print(f"{label}: {n} rows, {ms:.2f} ms")
