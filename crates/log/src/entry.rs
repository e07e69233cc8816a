use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The `prev_hash` of the first entry.
pub const GENESIS: Hash = [0; 32];

/// Delivery headers kept with an entry (lowercase name -> value), in a stable order so that
/// their JSON text, which the hash covers, is canonical.
pub type Headers = BTreeMap<String, String>;

/// An event to append. The writer assigns `seq`, `event_id`, `recorded_at` and the hashes.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The webhook source name, or [`crate::INTERNAL_SOURCE`].
    pub source: String,
    /// The event type, e.g. `idv:session_finished`.
    pub event_type: String,
    /// The version of the event's shape (internal events are upcast by it).
    pub event_version: u32,
    /// Unique per source: a second event with the same key is a duplicate.
    pub dedupe_key: String,
    /// Before migration 0007 the `seon` scheme keyed deliveries on their (unsigned)
    /// `Request-Id`: when set, an entry of the same source with the same body stored under a
    /// `request-id:` key is this event too (a duplicate). Not stored.
    pub legacy_request_id_dedupe: bool,
    /// The sender's event time in unix milliseconds, when the payload has one.
    pub vendor_time: Option<i64>,
    /// The delivery headers an auditor needs.
    pub headers: Headers,
    /// The raw body bytes exactly as received.
    pub body: bytes::Bytes,
    /// SHA-256 of `body`; computed by the caller so the single writer thread does not have to.
    pub body_sha256: Hash,
    /// The body as it will be stored, when already encoded ([`NewEvent::encode`]); the writer
    /// encodes it itself otherwise.
    pub encoded: Option<EncodedBody>,
    /// Outbox rows to write in the same transaction, if the event is new (not a duplicate).
    pub outbox: Option<OutboxEntries>,
}

/// The transactional outbox: rows of the `outbox` table written atomically with an event, one
/// per target, so that an event exists if and only if its deliveries are queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntries {
    /// Where the event goes (sink names).
    pub targets: Vec<String>,
    /// The ordering key: deliveries with the same key go out in seq order (the session id).
    pub key: String,
    /// The id the receiver deduplicates on (the decision id).
    pub id: String,
}

/// How a body is stored in the `body` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEncoding {
    /// The bytes as received.
    Identity = 0,
    /// An LZ4 block, preceded by the raw size as u32 little-endian.
    Lz4 = 1,
}

/// Bodies smaller than this are stored as they are.
const COMPRESS_MIN: usize = 512;
/// The largest raw size a stored LZ4 body may claim (a guard against corrupt rows).
pub const MAX_DECODED_BODY: usize = 64 << 20;

/// A body encoded for storage, tied to the SHA-256 of the raw bytes it encodes.
#[derive(Debug, Clone)]
pub struct EncodedBody {
    pub(crate) of: Hash,
    pub(crate) encoding: BodyEncoding,
    pub(crate) bytes: bytes::Bytes,
}

impl EncodedBody {
    /// Encodes `raw` (whose SHA-256 is `of`): LZ4 when that saves at least an eighth.
    pub fn encode(raw: &bytes::Bytes, of: Hash) -> Self {
        if raw.len() >= COMPRESS_MIN && raw.len() <= MAX_DECODED_BODY {
            let packed = compress_prepend_size(raw);
            if packed.len() + packed.len() / 8 < raw.len() {
                return Self {
                    of,
                    encoding: BodyEncoding::Lz4,
                    bytes: packed.into(),
                };
            }
        }
        Self {
            of,
            encoding: BodyEncoding::Identity,
            bytes: raw.clone(),
        }
    }

    /// What goes into the `body` and `body_encoding` columns.
    pub fn stored(&self) -> (BodyEncoding, &[u8]) {
        (self.encoding, &self.bytes)
    }
}

thread_local! {
    /// The LZ4 hash table and output buffer of this thread, reused for bodies under 64 KiB: a
    /// fresh table is a zeroed 8 KiB allocation per body (on the HTTP workers, where `perf`
    /// showed zeroing allocations at ~2.5% of the durable server's samples). The buffer holds
    /// at most the largest such body's bound (~64 KiB).
    static COMPRESSOR: std::cell::RefCell<(lz4_flex::block::CompressTable, Vec<u8>)> =
        std::cell::RefCell::new((lz4_flex::block::CompressTable::small(), Vec::new()));
}

/// `lz4_flex::block::compress_prepend_size` (the raw size as a little-endian u32, then the LZ4
/// block), the same bytes, with this thread's table and buffer when it can.
fn compress_prepend_size(raw: &[u8]) -> Vec<u8> {
    // From 64 KiB on, lz4_flex uses its large table: such bodies are rare, and a reused table
    // switched to large would encode every later small body differently.
    if raw.len() >= usize::from(u16::MAX) {
        return lz4_flex::block::compress_prepend_size(raw);
    }
    COMPRESSOR
        .try_with(|c| {
            let mut guard = c.try_borrow_mut().ok()?;
            let (table, buf) = &mut *guard;
            let max = lz4_flex::block::get_maximum_output_size(raw.len());
            if buf.len() < max {
                buf.resize(max, 0);
            }
            let n = lz4_flex::block::compress_into_with_table(raw, buf, table).ok()?;
            let size = u32::try_from(raw.len()).ok()?;
            let mut out = Vec::with_capacity(4 + n);
            out.extend_from_slice(&size.to_le_bytes());
            out.extend_from_slice(buf.get(..n)?);
            Some(out)
        })
        .ok()
        .flatten()
        // The thread is exiting, or (never, as nothing here re-enters) the table is in use.
        .unwrap_or_else(|| lz4_flex::block::compress_prepend_size(raw))
}

/// Decodes a stored body into `out` (reused between calls); `false` (and `out` empty) when the
/// stored bytes are not a valid encoding.
pub fn decode_body_into(encoding: i64, stored: &[u8], out: &mut Vec<u8>) -> bool {
    let ok = match encoding {
        0 => {
            out.clear();
            out.extend_from_slice(stored);
            true
        }
        1 => decode_lz4_into(stored, out),
        _ => false,
    };
    if !ok {
        out.clear();
    }
    ok
}

fn decode_lz4_into(stored: &[u8], out: &mut Vec<u8>) -> bool {
    let Some(size) = stored.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()) else {
        return false;
    };
    let size = u32::from_le_bytes(size) as usize;
    if size > MAX_DECODED_BODY {
        return false;
    }
    // What the buffer already holds is overwritten, not zeroed first (a replay decodes a
    // million bodies into one buffer).
    if out.len() < size {
        out.resize(size, 0);
    } else {
        out.truncate(size);
    }
    match stored
        .get(4..)
        .map(|block| lz4_flex::block::decompress_into(block, out))
    {
        Some(Ok(n)) => {
            out.truncate(n);
            true
        }
        _ => false,
    }
}

/// Decodes a stored body; `None` when the stored bytes are not a valid encoding.
pub fn decode_body(encoding: i64, stored: Vec<u8>) -> Option<Vec<u8>> {
    match encoding {
        0 => Some(stored),
        1 => {
            let size = u32::from_le_bytes(stored.get(..4)?.try_into().ok()?) as usize;
            if size > MAX_DECODED_BODY {
                return None;
            }
            lz4_flex::block::decompress(stored.get(4..)?, size).ok()
        }
        _ => None,
    }
}

impl NewEvent {
    /// An event of version 1 with no vendor time and no headers; computes the body hash.
    pub fn new(
        source: impl Into<String>,
        event_type: impl Into<String>,
        dedupe_key: impl Into<String>,
        body: impl Into<bytes::Bytes>,
    ) -> Self {
        let body = body.into();
        let body_sha256 = sha256(&body);
        Self {
            source: source.into(),
            event_type: event_type.into(),
            event_version: 1,
            dedupe_key: dedupe_key.into(),
            legacy_request_id_dedupe: false,
            vendor_time: None,
            headers: Headers::new(),
            body,
            body_sha256,
            encoded: None,
            outbox: None,
        }
    }

    /// Encodes the body for storage now (on the caller's thread rather than the writer's).
    pub fn encode(&mut self) {
        if self
            .encoded
            .as_ref()
            .is_none_or(|e| e.of != self.body_sha256)
        {
            self.encoded = Some(EncodedBody::encode(&self.body, self.body_sha256));
        }
    }
}

/// One entry of the log, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Position in the log: 1, 2, 3... without gaps.
    pub seq: u64,
    /// A UUIDv7 assigned by the writer.
    pub event_id: Uuid,
    /// The webhook source name, or [`crate::INTERNAL_SOURCE`].
    pub source: String,
    /// The event type.
    pub event_type: String,
    /// The version of the event's shape.
    pub event_version: u32,
    /// Unique per source.
    pub dedupe_key: String,
    /// Unix milliseconds at which the writer committed the entry.
    pub recorded_at: i64,
    /// The sender's event time in unix milliseconds, when the payload has one.
    pub vendor_time: Option<i64>,
    /// The JSON text of the stored delivery headers (an object), exactly as hashed.
    pub headers_json: String,
    /// The raw body bytes, as received (decoded from storage).
    pub body: Vec<u8>,
    /// SHA-256 of the body as received.
    pub body_sha256: Hash,
    /// The previous entry's hash ([`GENESIS`] for seq 1).
    pub prev_hash: Hash,
    /// This entry's hash: see [`entry_hash`].
    pub hash: Hash,
}

impl Entry {
    /// The stored headers, parsed (an unparseable header text yields an empty map).
    pub fn headers(&self) -> Headers {
        serde_json::from_str(&self.headers_json).unwrap_or_default()
    }

    /// The hash this entry should have, recomputed from its fields.
    pub fn expected_hash(&self) -> Hash {
        entry_hash(&HashInput {
            prev_hash: &self.prev_hash,
            seq: self.seq,
            event_id: &self.event_id,
            source: &self.source,
            event_type: &self.event_type,
            event_version: self.event_version,
            dedupe_key: &self.dedupe_key,
            recorded_at: self.recorded_at,
            vendor_time: self.vendor_time,
            headers_json: &self.headers_json,
            body_sha256: &self.body_sha256,
        })
    }
}

/// Everything an entry's hash covers.
#[derive(Debug, Clone, Copy)]
pub struct HashInput<'a> {
    /// The previous entry's hash.
    pub prev_hash: &'a Hash,
    /// The entry's seq.
    pub seq: u64,
    /// The entry's event id.
    pub event_id: &'a Uuid,
    /// Source name.
    pub source: &'a str,
    /// Event type.
    pub event_type: &'a str,
    /// Event version.
    pub event_version: u32,
    /// Dedupe key.
    pub dedupe_key: &'a str,
    /// Unix ms.
    pub recorded_at: i64,
    /// Unix ms.
    pub vendor_time: Option<i64>,
    /// Header JSON text.
    pub headers_json: &'a str,
    /// SHA-256 of the body.
    pub body_sha256: &'a Hash,
}

const DOMAIN: &[u8] = b"verdict-log-v1\0";

/// The chain hash of one entry: SHA-256 over a domain tag, the previous hash, the seq and every
/// field, variable-length fields prefixed by their length (u32, big-endian), integers big-endian.
/// The body enters through its SHA-256, so erasing a body later keeps the chain verifiable.
pub fn entry_hash(i: &HashInput<'_>) -> Hash {
    fn field(h: &mut Sha256, bytes: &[u8]) {
        // Lengths beyond u32 cannot occur: bodies are capped far below 4 GiB.
        h.update(u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
        h.update(bytes);
    }
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(i.prev_hash);
    h.update(i.seq.to_be_bytes());
    h.update(i.event_id.as_bytes());
    field(&mut h, i.source.as_bytes());
    field(&mut h, i.event_type.as_bytes());
    h.update(i.event_version.to_be_bytes());
    field(&mut h, i.dedupe_key.as_bytes());
    h.update(i.recorded_at.to_be_bytes());
    match i.vendor_time {
        Some(t) => {
            h.update([1]);
            h.update(t.to_be_bytes());
        }
        None => h.update([0]),
    }
    field(&mut h, i.headers_json.as_bytes());
    h.update(i.body_sha256);
    h.finalize().into()
}

/// SHA-256 of some bytes.
pub fn sha256(bytes: &[u8]) -> Hash {
    Sha256::digest(bytes).into()
}

/// The current time in unix milliseconds.
pub fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(prev: &'a Hash, id: &'a Uuid, body: &'a Hash) -> HashInput<'a> {
        HashInput {
            prev_hash: prev,
            seq: 1,
            event_id: id,
            source: "seon-idv",
            event_type: "idv:session_finished",
            event_version: 1,
            dedupe_key: "request-id:1",
            recorded_at: 1_700_000_000_000,
            vendor_time: Some(1_700_000_000_000),
            headers_json: "{}",
            body_sha256: body,
        }
    }

    #[test]
    fn every_field_changes_the_hash() {
        let id = Uuid::from_u128(7);
        let body = sha256(b"{}");
        let base = entry_hash(&input(&GENESIS, &id, &body));
        let other_prev = [1; 32];
        let other_id = Uuid::from_u128(8);
        let other_body = sha256(b"{ }");
        let variants = [
            entry_hash(&input(&other_prev, &id, &body)),
            entry_hash(&input(&GENESIS, &other_id, &body)),
            entry_hash(&input(&GENESIS, &id, &other_body)),
            entry_hash(&HashInput {
                seq: 2,
                ..input(&GENESIS, &id, &body)
            }),
            entry_hash(&HashInput {
                source: "seon-id",
                ..input(&GENESIS, &id, &body)
            }),
            entry_hash(&HashInput {
                event_type: "x",
                ..input(&GENESIS, &id, &body)
            }),
            entry_hash(&HashInput {
                event_version: 2,
                ..input(&GENESIS, &id, &body)
            }),
            entry_hash(&HashInput {
                dedupe_key: "k",
                ..input(&GENESIS, &id, &body)
            }),
            entry_hash(&HashInput {
                recorded_at: 1,
                ..input(&GENESIS, &id, &body)
            }),
            entry_hash(&HashInput {
                vendor_time: None,
                ..input(&GENESIS, &id, &body)
            }),
            entry_hash(&HashInput {
                headers_json: "{ }",
                ..input(&GENESIS, &id, &body)
            }),
        ];
        for (i, v) in variants.iter().enumerate() {
            assert_ne!(*v, base, "variant {i} did not change the hash");
        }
    }

    #[test]
    fn length_prefixes_separate_adjacent_fields() {
        let id = Uuid::from_u128(7);
        let body = sha256(b"");
        let a = entry_hash(&HashInput {
            source: "ab",
            event_type: "c",
            ..input(&GENESIS, &id, &body)
        });
        let b = entry_hash(&HashInput {
            source: "a",
            event_type: "bc",
            ..input(&GENESIS, &id, &body)
        });
        assert_ne!(a, b);
    }

    proptest::proptest! {
        /// lz4_flex runs without its safe-only mode (Cargo.toml): whatever a row holds, the
        /// decoder answers `false` or some bytes, never a panic or a read out of bounds. So it
        /// does for what the encoder made with any one byte changed.
        #[test]
        fn any_stored_bytes_decode_or_fail_cleanly(
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096),
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            flip in proptest::prelude::any::<(usize, u8)>(),
        ) {
            let body = bytes::Bytes::from(raw.repeat(2));
            let encoded = EncodedBody::encode(&body, sha256(&body));
            let mut out = Vec::new();
            proptest::prop_assert!(decode_body_into(encoded.encoding as i64, &encoded.bytes, &mut out));
            proptest::prop_assert_eq!(&out[..], &body[..]);
            let mut bent = encoded.bytes.to_vec();
            if !bent.is_empty() {
                let at = flip.0 % bent.len();
                bent[at] ^= flip.1.max(1);
            }
            let _ = decode_body_into(1, &bent, &mut out);
            let _ = decode_body_into(1, &noise, &mut out);
            let mut sized = u32::try_from(body.len()).unwrap_or(0).to_le_bytes().to_vec();
            sized.extend_from_slice(&noise);
            let _ = decode_body_into(1, &sized, &mut out);
        }
    }

    proptest::proptest! {
        /// The thread's reused table and buffer encode each body exactly as a fresh
        /// `compress_prepend_size` does, whatever was compressed before on the thread (stored
        /// bodies, and so their hashes' inputs, do not depend on what came before).
        #[test]
        fn the_reused_compressor_encodes_like_a_fresh_one(
            bodies in proptest::collection::vec(
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000), 1..6),
        ) {
            for raw in &bodies {
                let body = [raw.as_slice(), raw.as_slice()].concat();
                proptest::prop_assert_eq!(
                    compress_prepend_size(&body),
                    lz4_flex::block::compress_prepend_size(&body)
                );
            }
        }
    }

    #[test]
    fn small_bodies_after_a_large_one_encode_like_fresh_ones() {
        let text = |n: usize| -> Vec<u8> {
            (0..n)
                .flat_map(|i| format!("{{\"n\":{i},\"s\":\"k{}\"}}", i % 97).into_bytes())
                .collect()
        };
        let large = text(8_000); // well over 64 KiB: lz4_flex's large table
        assert!(large.len() > usize::from(u16::MAX));
        for body in [text(50), large, text(50), text(300)] {
            assert_eq!(
                compress_prepend_size(&body),
                lz4_flex::block::compress_prepend_size(&body)
            );
        }
    }

    #[test]
    fn a_reused_buffer_holds_exactly_each_decoded_body() {
        let numbers = |n: usize| {
            let list: Vec<String> = (0..n).map(|i| i.to_string()).collect();
            bytes::Bytes::from(format!(
                r#"{{"a":"{}","b":[{}]}}"#,
                "x".repeat(n),
                list.join(",")
            ))
        };
        let (big, small) = (numbers(2000), numbers(300));
        let mut buf = Vec::new();
        for body in [&big, &small, &big, &small] {
            let enc = EncodedBody::encode(body, sha256(body));
            assert_eq!(enc.encoding, BodyEncoding::Lz4, "the fixture compresses");
            assert!(decode_body_into(enc.encoding as i64, &enc.bytes, &mut buf));
            assert_eq!(buf, body.as_ref());
        }
        // A match reaching before the start, and an unknown encoding: refused, buffer empty.
        assert!(!decode_body_into(
            1,
            &[200, 0, 0, 0, 0x1f, b'a', 9, 0],
            &mut buf
        ));
        assert!(buf.is_empty());
        buf.extend_from_slice(b"left over");
        assert!(!decode_body_into(9, b"x", &mut buf));
        assert!(buf.is_empty());
    }
}
