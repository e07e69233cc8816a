//! The fold: given these events, expect this state; and the property that any delivery order
//! with any retried deliveries reaches the same state and digest as in-order delivery.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::collections::HashSet;

use proptest::prelude::*;
use verdict_projector::{Action, Fact, OverrideBody, Projection, Recorded, read};

/// A vendor event: (type, session, status, vendor time ms).
fn vendor(kind: &str, session: &str, status: &str, time: i64) -> String {
    format!(
        r#"{{"event":"{kind}","date":"t","details":{{"sessionId":"{session}","referenceId":"ref-{session}","userId":"u-{session}","status":"{status}","updatedBy":"a@x"}}}}"#
    )
    .replace("\"t\"", &format!("\"{time}\""))
}

struct Ev {
    source: &'static str,
    kind: String,
    time: Option<i64>,
    body: String,
}

fn fin(session: &str, status: &str, time: i64) -> Ev {
    Ev {
        source: "seon-idv",
        kind: "idv:session_finished".into(),
        time: Some(time),
        body: vendor("idv:session_finished", session, status, time),
    }
}

fn upd(session: &str, status: &str, time: i64) -> Ev {
    Ev {
        source: "seon-idv",
        kind: "idv:session_status_updated".into(),
        time: Some(time),
        body: vendor("idv:session_status_updated", session, status, time),
    }
}

fn fold(events: &[Ev]) -> Projection {
    let mut p = Projection::default();
    for (i, e) in events.iter().enumerate() {
        p.apply(&Recorded {
            seq: i as u64 + 1,
            source: e.source,
            event_type: &e.kind,
            recorded_at: 1000 + i as i64,
            vendor_time: e.time,
            body: e.body.as_bytes(),
        });
    }
    p
}

/// given `events`, expect session `s-1` to have `status`.
fn check(events: &[Ev], status: Option<&str>) {
    let p = fold(events);
    assert_eq!(
        p.session("s-1").and_then(|s| s.vendor_status.as_deref()),
        status
    );
}

#[test]
fn newest_vendor_time_wins() {
    check(
        &[fin("s-1", "REVIEW", 10), upd("s-1", "APPROVED", 20)],
        Some("APPROVED"),
    );
    // The older REVIEW arrives after the APPROVED: history only.
    check(
        &[upd("s-1", "APPROVED", 20), fin("s-1", "REVIEW", 10)],
        Some("APPROVED"),
    );
    // Ties: a terminal status beats REVIEW whatever the arrival order...
    check(
        &[fin("s-1", "APPROVED", 10), upd("s-1", "REVIEW", 10)],
        Some("APPROVED"),
    );
    check(
        &[upd("s-1", "REVIEW", 10), fin("s-1", "APPROVED", 10)],
        Some("APPROVED"),
    );
    // ...then the later seq.
    check(
        &[fin("s-1", "APPROVED", 10), upd("s-1", "DECLINED", 10)],
        Some("DECLINED"),
    );
    check(&[fin("s-2", "DECLINED", 10)], None);
}

#[test]
fn unknown_and_unparseable_events_are_quarantined_not_dropped() {
    let events = [
        fin("s-1", "APPROVED", 10),
        Ev {
            source: "seon-idv",
            kind: "idv:something_new".into(),
            time: None,
            body: vendor("idv:something_new", "s-1", "X", 1),
        },
        Ev {
            source: "seon-idv",
            kind: "idv:session_finished".into(),
            time: None,
            body: "not json".into(),
        },
        Ev {
            source: "seon-idv",
            kind: "idv:session_finished".into(),
            time: None,
            body: r#"{"event":"idv:session_finished","details":{"status":"APPROVED"}}"#.into(),
        },
    ];
    let p = fold(&events);
    let s = p.session("s-1").unwrap();
    assert_eq!((s.quarantined, s.event_count, p.quarantined), (1, 2, 3));
    assert_eq!(s.vendor_status.as_deref(), Some("APPROVED"));
}

#[test]
fn overrides_apply_in_recorded_order_and_reapplying_changes_nothing() {
    let body = |action: Action, reason: &str| {
        serde_json::to_string(&OverrideBody {
            session_id: "s-1".into(),
            actor: "alice".into(),
            action,
            reason: reason.into(),
            ticket: None,
        })
        .unwrap()
    };
    let events = [
        fin("s-1", "REVIEW", 10),
        Ev {
            source: "verdict",
            kind: "analyst:override".into(),
            time: None,
            body: body(Action::Decline, "fake id"),
        },
        Ev {
            source: "verdict",
            kind: "analyst:override".into(),
            time: None,
            body: body(Action::Approve, "checked by phone"),
        },
    ];
    let mut p = fold(&events);
    let o = p.session("s-1").unwrap().last_override.clone().unwrap();
    assert_eq!(
        (o.action, o.reason.as_str(), o.seq),
        (Action::Approve, "checked by phone", 3)
    );
    let before = p.clone();
    let again = Recorded {
        seq: 2,
        source: "verdict",
        event_type: "analyst:override",
        recorded_at: 0,
        vendor_time: None,
        body: events[1].body.as_bytes(),
    };
    assert!(p.apply(&again).is_none());
    assert_eq!(p, before);
    let fact = read(&again);
    assert!(matches!(fact, Fact::Override(_)));
    let mut s = p.session("s-1").unwrap().clone();
    assert!(!s.apply(&again, &fact).applied);
}

#[test]
fn the_shipped_fixtures_fold() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/seon/");
    let mut p = Projection::default();
    for (i, f) in [
        "session_finished_review_face_mismatch.json",
        "session_status_updated_approved.json",
        "session_finished_approved.json",
        "session_finished_abandoned.json",
    ]
    .iter()
    .enumerate()
    {
        let body = std::fs::read(format!("{dir}{f}")).unwrap();
        let kind = if f.contains("status_updated") {
            "idv:session_status_updated"
        } else {
            "idv:session_finished"
        };
        p.apply(&Recorded {
            seq: i as u64 + 1,
            source: "seon-idv",
            event_type: kind,
            recorded_at: 0,
            vendor_time: Some(i as i64),
            body: &body,
        });
    }
    let s = p.session("2a7c9e11-4b3d-4f60-a2b8-c9d0e1f2a3b4").unwrap();
    assert_eq!(s.vendor_status.as_deref(), Some("APPROVED"));
    assert_eq!(
        s.status_update_actor.as_deref(),
        Some("analyst@example.com")
    );
    assert_eq!(s.reference_id.as_deref(), Some("user-50031-1709391111"));
    assert_eq!(p.sessions().count(), 3);
}

const STATUSES: [&str; 4] = ["APPROVED", "DECLINED", "ABANDONED", "REVIEW"];

/// Sessions of vendor events with distinct event times (so the newest is well defined).
fn scenario() -> impl Strategy<Value = Vec<(usize, bool, usize, i64)>> {
    // (session index, is status update, status index, time) with unique times.
    prop::collection::vec((0usize..4, any::<bool>(), 0usize..4), 1..40).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (s, u, st))| (s, u, st, i as i64 * 7 + 3))
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_delivery_order_and_retries_reach_the_in_order_state(
        events in scenario(),
        dups in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 0..20),
        seed in any::<u64>(),
    ) {
        let evs: Vec<Ev> = events.iter().map(|&(s, u, st, t)| {
            let sid = format!("s-{s}");
            if u { upd(&sid, STATUSES[st], t) } else { fin(&sid, STATUSES[st], t) }
        }).collect();
        let in_order = fold(&evs);

        // A delivery schedule: a shuffled order with retried deliveries inserted anywhere.
        let mut schedule: Vec<usize> = (0..evs.len()).collect();
        let mut rng = seed;
        for i in (1..schedule.len()).rev() {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            schedule.swap(i, (rng >> 33) as usize % (i + 1));
        }
        for (what, at) in &dups {
            let e = what.index(evs.len());
            schedule.insert(at.index(schedule.len() + 1), e);
        }
        // The log stores each delivery once (dedupe key), in arrival order.
        let mut seen = HashSet::new();
        let arrived: Vec<&Ev> = schedule.iter().filter(|&&i| seen.insert(i)).map(|&i| &evs[i]).collect();
        let mut shuffled = Projection::default();
        for (i, e) in arrived.iter().enumerate() {
            shuffled.apply(&Recorded { seq: i as u64 + 1, source: e.source, event_type: &e.kind, recorded_at: 1000 + i as i64, vendor_time: e.time, body: e.body.as_bytes() });
        }
        let views = |p: &Projection| p.sessions().map(|s| serde_json::to_string(&s.view()).unwrap()).collect::<Vec<_>>();
        prop_assert_eq!(views(&shuffled), views(&in_order));
        prop_assert_eq!(shuffled.digest(), in_order.digest());
    }
}

#[test]
fn a_redelivery_of_the_reflected_event_changes_nothing_that_decides() {
    let changes = |events: &[Ev]| -> Vec<(bool, bool)> {
        let mut p = Projection::default();
        events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let (_, c) = p
                    .apply(&Recorded {
                        seq: i as u64 + 1,
                        source: e.source,
                        event_type: &e.kind,
                        recorded_at: 1000,
                        vendor_time: e.time,
                        body: e.body.as_bytes(),
                    })
                    .unwrap();
                (c.finished, c.status_update)
            })
            .collect()
    };
    // The same finished event twice (a replay under a new Request-Id): only the first counts.
    assert_eq!(
        changes(&[fin("s-1", "REVIEW", 10), fin("s-1", "REVIEW", 10)]),
        [(true, false), (false, false)]
    );
    // A later one, or one with another status at the same time, does.
    assert_eq!(
        changes(&[fin("s-1", "REVIEW", 10), fin("s-1", "REVIEW", 11)]),
        [(true, false), (true, false)]
    );
    assert_eq!(
        changes(&[fin("s-1", "REVIEW", 10), fin("s-1", "DECLINED", 10)]),
        [(true, false), (true, false)]
    );
    // Status updates likewise.
    assert_eq!(
        changes(&[upd("s-1", "APPROVED", 20), upd("s-1", "APPROVED", 20)]),
        [(false, true), (false, false)]
    );
}
