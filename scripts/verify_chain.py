#!/usr/bin/env python3
"""Independent verifier of a verdict event log (the SQLite file of [storage] path).

    python3 scripts/verify_chain.py data/verdict.db

Opens the file read-only and, for every row of the `events` table in seq order, checks:

- seqs start at 1 and have no gaps;
- prev_hash equals the previous entry's hash (32 zero bytes for seq 1);
- hash equals the entry hash recomputed from the row's fields, exactly as `entry_hash` in
  crates/log/src/entry.rs computes it;
- the stored body decodes according to body_encoding (0: stored as received; 1: an LZ4 block
  preceded by the raw size as u32 little-endian), and the decoded body's SHA-256 equals
  body_sha256;

and that the append-only triggers `events_no_update` and `events_no_delete` and the unique index
`events_dedupe` exist with their shipped SQL (and no other trigger is on `events`).

Prints "ok: N entries, head <hex>" and exits 0 when everything holds. Otherwise prints
"BROKEN: first bad seq N" (or "BROKEN" when no entry is at fault, e.g. a missing trigger)
followed by the problems found, one per line, and exits 1. Exits 2 when the file cannot be
opened or is not a verdict log.

Standard library only (the LZ4 block decoder below is a small pure-Python one). It shares no
code with verdict: it is a second implementation of the rules described in docs/log-format.md,
for auditors who do not want to rely on verdict's own `verdict log verify`.
"""

import hashlib
import sqlite3
import struct
import sys

DOMAIN = b"verdict-log-v1\x00"
GENESIS = bytes(32)
# The objects that guard the table, as shipped in migrations/0001_log.sql (whitespace
# collapsed): (kind, name, SQL). A guard of the right name with other SQL is a problem too.
GUARDS = (
    ("trigger", "events_no_delete",
     "CREATE TRIGGER events_no_delete BEFORE DELETE ON events BEGIN SELECT RAISE(ABORT, "
     "'events is append-only: DELETE is not allowed'); END"),
    ("trigger", "events_no_update",
     "CREATE TRIGGER events_no_update BEFORE UPDATE ON events BEGIN SELECT RAISE(ABORT, "
     "'events is append-only: UPDATE is not allowed'); END"),
    ("index", "events_dedupe", "CREATE UNIQUE INDEX events_dedupe ON events (source, dedupe_key)"),
)
MAX_PROBLEMS = 100
# The largest raw size an LZ4-encoded body may claim; a larger claim means a corrupt row.
MAX_DECODED_BODY = 64 << 20

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
    ("body_encoding", "integer"),
    ("body_sha256", "blob"),
    ("prev_hash", "blob"),
    ("hash", "blob"),
)
# Columns the chain hash does not read: a problem with them does not stop the hash checks.
BODY_COLUMNS = ("body", "body_encoding")


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


class Undecodable(Exception):
    """A stored body that is not a valid encoding."""


def _lz4_length(block, pos, base):
    """An LZ4 length: `base` (a 4-bit field) and, when that is 15, the following bytes added
    while they are 255, plus the first one that is not. Returns (length, new pos)."""
    if base != 15:
        return base, pos
    while True:
        if pos >= len(block):
            raise Undecodable("LZ4 block ends inside a length")
        extra = block[pos]
        pos += 1
        base += extra
        if extra != 255:
            return base, pos


def lz4_block_decode(block, size):
    """Decodes a raw LZ4 block (no frame) into at most `size` bytes.

    A block is a series of sequences. Each starts with a token byte: its high nibble is the
    literal length, its low nibble the match length minus 4 (a nibble of 15 is continued by
    the bytes that follow, see _lz4_length). Then come the literals, copied as they are, then a
    2-byte little-endian offset (1 or more, at most the bytes decoded so far) and the match
    extension: the match copies `length` bytes starting `offset` bytes back in the output,
    byte by byte, so a match may overlap the bytes it produces. The block ends right after the
    literals of its last sequence, which has no match.

    Follows lz4_flex's decoder: decoding past `size` is an error; a shorter result is
    returned as it is (the body hash check then fails).
    """
    out = bytearray()
    pos = 0
    end = len(block)
    while True:
        if pos >= end:
            raise Undecodable("LZ4 block ends where a sequence token is expected")
        token = block[pos]
        pos += 1

        literals, pos = _lz4_length(block, pos, token >> 4)
        if literals > end - pos:
            raise Undecodable("LZ4 literals run past the end of the block")
        if len(out) + literals > size:
            raise Undecodable(f"LZ4 block decodes to more than the {size} bytes it claims")
        out += block[pos:pos + literals]
        pos += literals
        if pos >= end:
            break  # the last sequence: literals only

        if end - pos < 2:
            raise Undecodable("LZ4 block ends inside a match offset")
        offset = block[pos] | (block[pos + 1] << 8)
        pos += 2
        if offset == 0:
            raise Undecodable("LZ4 match offset 0")
        length, pos = _lz4_length(block, pos, token & 0x0F)
        length += 4
        if len(out) + length > size:
            raise Undecodable(f"LZ4 block decodes to more than the {size} bytes it claims")
        if offset > len(out):
            raise Undecodable(f"LZ4 match offset {offset} is before the start of the body")
        start = len(out) - offset
        if length <= offset:
            out += out[start:start + length]
        else:
            # Overlapping: the byte-by-byte copy repeats the last `offset` bytes.
            pattern = bytes(out[start:])
            out += (pattern * (length // offset + 1))[:length]
    return bytes(out)


def decode_body(encoding, stored):
    """The body as received, from the stored bytes and body_encoding; raises Undecodable."""
    if encoding == 0:
        return stored
    if encoding == 1:
        if len(stored) < 4:
            raise Undecodable(f"{len(stored)} bytes, too short for the size prefix")
        size = struct.unpack("<I", stored[:4])[0]
        if size > MAX_DECODED_BODY:
            raise Undecodable(f"claims {size} bytes, more than {MAX_DECODED_BODY}")
        return lz4_block_decode(stored[4:], size)
    raise Undecodable("unknown body_encoding (known: 0 as received, 1 LZ4 block)")


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


def normalise(sql):
    """SQL with whitespace collapsed, as verdict's `log verify` compares it."""
    text = " ".join(sql.split())
    return text.replace("( ", "(").replace(" )", ")").replace(" ;", ";")


def check_guards(conn):
    """The append-only triggers and the dedupe index as shipped, and no other trigger."""
    def text(v):
        return v.decode() if isinstance(v, bytes) else (v or "")
    found = [
        (text(k), text(n), text(q))
        for k, n, q in conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE tbl_name = 'events' "
            "AND (type = 'trigger' OR name = 'events_dedupe')"
        )
    ]
    problems = []
    for kind, name, sql in GUARDS:
        label = "the unique dedupe index" if kind == "index" else "append-only trigger"
        have = [q for k, n, q in found if k == kind and n == name]
        if not have:
            problems.append((None, f"{label} {name} is missing"))
        elif normalise(have[0]) != normalise(sql):
            problems.append((None, f"{label} {name} is not the shipped one: {normalise(have[0])}"))
    for kind, name, sql in found:
        if kind == "trigger" and name not in {n for _, n, _ in GUARDS}:
            problems.append((None, f"unexpected trigger {name} on events: {normalise(sql)}"))
    return problems


def verify(conn):
    """Returns (entries, head hash or None, problems as [(seq or None, what)])."""
    problems = []
    problems.extend(check_guards(conn))

    cols = ", ".join(c for c, _ in COLUMNS)
    types = ", ".join(f"typeof({c})" for c, _ in COLUMNS)
    cur = conn.execute(f"SELECT {cols}, {types} FROM events ORDER BY seq")

    entries = 0
    expected_seq = 1
    prev = GENESIS  # None after a row whose hash could not be read
    head = None
    for row in cur:
        if len(problems) >= MAX_PROBLEMS:
            break
        values, kinds = row[: len(COLUMNS)], row[len(COLUMNS):]
        (seq, event_id_text, source, event_type, event_version, dedupe_key, recorded_at,
         vendor_time, headers_json, body, body_encoding, body_sha256, prev_hash,
         stored_hash) = values
        row_problems = []

        def bad(what, seq=seq):
            row_problems.append((seq, what))

        # seq is the INTEGER PRIMARY KEY: always an integer.
        if seq != expected_seq:
            bad(f"expected seq {expected_seq} (a gap or reordering)")

        # Values the chain hash needs. Any of them unusable: the hash cannot be recomputed.
        hashable = True
        body_readable = True
        for (name, want), got in zip(COLUMNS, kinds):
            got = got.decode() if isinstance(got, bytes) else got
            if got != want and not (name == "vendor_time" and got == "null"):
                bad(f"unreadable row: column {name} is {got}, expected {want}")
                if name in BODY_COLUMNS:
                    body_readable = False
                else:
                    hashable = False
        if hashable:
            event_id = uuid_bytes(event_id_text)
            if event_id is None:
                shown = event_id_text.decode("utf-8", "replace")
                bad(f"event_id {shown!r} is not a lowercase hyphenated UUID")
                hashable = False
            for name, value in (("body_sha256", body_sha256), ("prev_hash", prev_hash),
                                ("hash", stored_hash)):
                if len(value) != 32:
                    bad(f"unreadable row: {name} has {len(value)} bytes, expected 32")
                    hashable = False
            if not 0 <= event_version <= 0xFFFF_FFFF:
                bad(f"unreadable row: event_version {event_version} does not fit in a u32")
                hashable = False
            if seq < 1:
                bad(f"unreadable row: seq {seq} is not positive")
                hashable = False

        if hashable:
            if prev is not None and prev_hash != prev:
                bad("prev_hash does not match the previous entry's hash")
            recomputed = entry_hash(prev_hash, seq, event_id, source, event_type,
                                    event_version, dedupe_key, recorded_at, vendor_time,
                                    headers_json, body_sha256)
            if recomputed != stored_hash:
                bad("hash does not match the entry's contents")

        if body_readable:
            try:
                decoded = decode_body(body_encoding, body)
            except Undecodable as e:
                bad(f"unreadable row: body cannot be decoded (body_encoding {body_encoding}): {e}")
            else:
                if (isinstance(body_sha256, bytes) and len(body_sha256) == 32
                        and hashlib.sha256(decoded).digest() != body_sha256):
                    bad("body does not match body_sha256")
        problems.extend(row_problems)

        entries += 1
        expected_seq = seq + 1
        # The next entry links to this one's stored hash when it can be read at all, so that
        # one bad row is not blamed on its successor too.
        readable_hash = isinstance(stored_hash, bytes) and len(stored_hash) == 32
        prev = stored_hash if readable_hash else None
        head = stored_hash if readable_hash else None
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
