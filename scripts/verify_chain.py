#!/usr/bin/env python3
"""Independent verifier of a verdict event log (the SQLite file of [storage] path).

    python3 scripts/verify_chain.py data/verdict.db

Opens the file read-only and, for every row of the `events` table in seq order, checks:

- seqs start at 1 and have no gaps;
- prev_hash equals the previous entry's hash (32 zero bytes for seq 1);
- hash equals the entry hash recomputed from the row's fields, exactly as `entry_hash` in
  crates/log/src/entry.rs computes it;
- body_sha256 equals SHA-256 of the stored body;

and that the append-only triggers `events_no_update` and `events_no_delete` exist.

Prints "ok: N entries, head <hex>" and exits 0 when everything holds. Otherwise prints
"BROKEN: first bad seq N" (or "BROKEN" when no entry is at fault, e.g. a missing trigger)
followed by the problems found, one per line, and exits 1. Exits 2 when the file cannot be
opened or is not a verdict log.

Standard library only. It shares no code with verdict: it is a second implementation of the
rules described in docs/log-format.md, for auditors who do not want to rely on verdict's own
`verdict log verify`.
"""

import hashlib
import sqlite3
import struct
import sys

DOMAIN = b"verdict-log-v1\x00"
GENESIS = bytes(32)
TRIGGERS = ("events_no_delete", "events_no_update")
MAX_PROBLEMS = 100

# (column, expected SQLite storage class); vendor_time may also be NULL.
COLUMNS = (
    ("seq", "integer"),
    ("event_id", "text"),
    ("source", "text"),
    ("type", "text"),
    ("event_version", "integer"),
    ("dedupe_key", "text"),
    ("recorded_at", "integer"),
    ("vendor_time", "integer"),
    ("headers", "text"),
    ("body", "blob"),
    ("body_sha256", "blob"),
    ("prev_hash", "blob"),
    ("hash", "blob"),
)


def field(data):
    """A variable-length field: u32 big-endian length, then the bytes."""
    return struct.pack(">I", len(data)) + data


def entry_hash(prev_hash, seq, event_id, source, event_type, event_version, dedupe_key,
               recorded_at, vendor_time, headers_json, body_sha256):
    """The chain hash of one entry. Text arguments are the raw UTF-8 bytes as stored."""
    h = hashlib.sha256()
    h.update(DOMAIN)
    h.update(prev_hash)
    h.update(struct.pack(">Q", seq))
    h.update(event_id)  # the UUID's 16 raw bytes
    h.update(field(source))
    h.update(field(event_type))
    h.update(struct.pack(">I", event_version))
    h.update(field(dedupe_key))
    h.update(struct.pack(">q", recorded_at))
    if vendor_time is None:
        h.update(b"\x00")
    else:
        h.update(b"\x01" + struct.pack(">q", vendor_time))
    h.update(field(headers_json))
    h.update(body_sha256)
    return h.digest()


def uuid_bytes(text):
    """The 16 bytes of a UUID stored as verdict writes it (lowercase, hyphenated 8-4-4-4-12),
    or None for any other spelling."""
    try:
        s = text.decode("ascii")
    except UnicodeDecodeError:
        return None
    groups = s.split("-")
    if [len(g) for g in groups] != [8, 4, 4, 4, 12] or s != s.lower():
        return None
    try:
        return bytes.fromhex("".join(groups))
    except ValueError:
        return None


def open_read_only(path):
    # Fail early (and without SQLite creating anything) when the file is absent or unreadable.
    with open(path, "rb"):
        pass
    # A file: URI so that mode=ro applies: nothing is ever created or written. A relative path
    # stays relative to the working directory; the URI-special characters are escaped.
    escaped = path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")
    conn = sqlite3.connect(f"file:{escaped}?mode=ro", uri=True)
    # TEXT values come back as their stored bytes, so the hash covers exactly what is stored.
    conn.text_factory = bytes
    return conn


def verify(conn):
    """Returns (entries, head hash or None, problems as [(seq or None, what)])."""
    problems = []
    names = {
        r[0].decode() if isinstance(r[0], bytes) else r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'events'"
        )
    }
    for t in TRIGGERS:
        if t not in names:
            problems.append((None, f"append-only trigger {t} is missing"))

    cols = ", ".join(c for c, _ in COLUMNS)
    types = ", ".join(f"typeof({c})" for c, _ in COLUMNS)
    cur = conn.execute(f"SELECT {cols}, {types} FROM events ORDER BY seq")

    entries = 0
    expected_seq = 1
    prev = GENESIS
    head = None
    for row in cur:
        if len(problems) >= MAX_PROBLEMS:
            break
        values, kinds = row[: len(COLUMNS)], row[len(COLUMNS):]
        seq = values[0]
        row_problems = []

        def bad(what, seq=seq):
            row_problems.append((seq, what))

        for (name, want), got in zip(COLUMNS, kinds):
            got = got.decode() if isinstance(got, bytes) else got
            if got != want and not (name == "vendor_time" and got == "null"):
                bad(f"column {name} is {got}, expected {want}")
        if row_problems:
            # Cannot recompute the hash from values of the wrong type; the chain stops here.
            problems.extend(row_problems)
            break

        (seq, event_id_text, source, event_type, event_version, dedupe_key, recorded_at,
         vendor_time, headers_json, body, body_sha256, prev_hash, stored_hash) = values

        event_id = uuid_bytes(event_id_text)
        if event_id is None:
            shown = event_id_text.decode("utf-8", "replace")
            bad(f"event_id {shown!r} is not a lowercase hyphenated UUID")
        for name, value in (("body_sha256", body_sha256), ("prev_hash", prev_hash),
                            ("hash", stored_hash)):
            if len(value) != 32:
                bad(f"{name} has {len(value)} bytes, expected 32")
        if not 0 <= event_version <= 0xFFFF_FFFF:
            bad(f"event_version {event_version} does not fit in a u32")
        if seq < 1:
            bad(f"seq {seq} is not positive")
        if row_problems:
            problems.extend(row_problems)
            break

        if seq != expected_seq:
            bad(f"expected seq {expected_seq} (a gap or reordering)")
        if prev_hash != prev:
            bad("prev_hash does not match the previous entry's hash")
        recomputed = entry_hash(prev_hash, seq, event_id, source, event_type, event_version,
                                dedupe_key, recorded_at, vendor_time, headers_json, body_sha256)
        if recomputed != stored_hash:
            bad("hash does not match the entry's contents")
        if hashlib.sha256(body).digest() != body_sha256:
            bad("body does not match body_sha256")
        problems.extend(row_problems)

        entries += 1
        expected_seq = seq + 1
        prev = stored_hash
        head = stored_hash
    return entries, head, problems


def main(argv):
    if len(argv) != 2 or argv[1] in ("-h", "--help"):
        print("usage: python3 scripts/verify_chain.py PATH/TO/verdict.db", file=sys.stderr)
        return 2
    path = argv[1]
    try:
        conn = open_read_only(path)
        try:
            entries, head, problems = verify(conn)
        finally:
            conn.close()
    except (OSError, sqlite3.Error) as e:
        print(f"verify_chain: cannot read {path}: {e}", file=sys.stderr)
        return 2

    if not problems:
        print(f"ok: {entries} entries, head {head.hex() if head else 'none'}")
        return 0
    first = next((s for s, _ in problems if s is not None), None)
    print("BROKEN" if first is None else f"BROKEN: first bad seq {first}")
    for s, what in problems:
        print(f"  {what}" if s is None else f"  seq {s}: {what}")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
