//! Property tests in place of a fuzzer for the SEON payload parser and the fold: any bytes under
//! any event type are read into a fact (what cannot be read is quarantined) and folded without a
//! panic.
//!
//! Bounded run: `PROPTEST_CASES=100000 cargo test --release -p verdict-projector --test fuzz`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use proptest::prelude::*;
use serde_json::Value;
use verdict_projector::{Fact, Projection, Recorded, read};

const TYPES: &[&str] = &[
    "idv:session_finished",
    "idv:session_status_updated",
    "analyst:override",
    "decision",
    "policy:activated",
    "something:else",
];
const SOURCES: &[&str] = &["seon-idv", "verdict"];

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "[A-Za-z0-9:_-]{0,12}".prop_map(Value::String),
        Just(Value::String("2026-03-02T10:15:42.000Z".into())),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("event".to_owned()),
                    Just("details".to_owned()),
                    Just("sessionId".to_owned()),
                    Just("status".to_owned()),
                    Just("date".to_owned()),
                    Just("session_id".to_owned()),
                    Just("action".to_owned()),
                    "[a-z]{1,8}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
    ]
}

proptest! {
    #[test]
    fn any_entry_is_read_and_folded_without_a_panic(
        entries in proptest::collection::vec(
            (0..TYPES.len(), 0..SOURCES.len(), body(), proptest::option::of(any::<i64>())),
            1..12,
        ),
    ) {
        let mut p = Projection::default();
        for (i, (t, s, body, time)) in entries.iter().enumerate() {
            let r = Recorded {
                seq: i as u64 + 1,
                source: SOURCES[*s],
                event_type: TYPES[*t],
                recorded_at: 1000,
                vendor_time: *time,
                body,
            };
            let fact = read(&r);
            if serde_json::from_slice::<Value>(body).is_err()
                && TYPES[*t].starts_with("idv:")
                && SOURCES[*s] != "verdict"
            {
                prop_assert!(matches!(fact, Fact::Quarantined { .. }), "{fact:?}");
            }
            p.apply_fact(&r, &fact);
        }
        prop_assert_eq!(p.last_seq, entries.len() as u64);
        let _ = p.digest();
    }
}
