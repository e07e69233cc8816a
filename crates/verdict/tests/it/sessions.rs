//! The projector and the `/v1` API against the real server: out-of-order folding, overrides
//! with roles, history, as_of, lists, quarantine, replay.

use serde_json::{Value, json};

use crate::support::*;

const TOKENS: &str = r#"
[[tokens]]
name = "alice"
role = "analyst"
token = "tok-alice-0123456789abcdef0123456789"

[[tokens]]
name = "rob"
role = "reader"
token = "tok-rob-0123456789abcdef0123456789ab"
"#;

const REVIEW: &str =
    include_str!("../../../../fixtures/seon/session_finished_review_face_mismatch.json");
const UPDATED: &str =
    include_str!("../../../../fixtures/seon/session_status_updated_approved.json");
const APPROVED: &str = include_str!("../../../../fixtures/seon/session_finished_approved.json");
const SID: &str = "2a7c9e11-4b3d-4f60-a2b8-c9d0e1f2a3b4";

/// Waits (bounded) until the session shows `event_count` entries: the projector runs after the
/// 200, woken by the commit.
async fn settled(s: &Server, id: &str, event_count: u64) -> Value {
    eventually(
        &format!("session {id} with {event_count} entries"),
        async || {
            let (status, body) = get(
                s,
                &format!("/v1/sessions/{id}"),
                Some("tok-rob-0123456789abcdef0123456789ab"),
            )
            .await;
            (status == 200 && body["event_count"] == event_count).then_some(body)
        },
    )
    .await
}

#[tokio::test]
async fn an_older_event_arriving_later_changes_nothing_current() {
    let s = Server::start_with(TOKENS);
    // The manual APPROVED (13:40) arrives before the automatic REVIEW (10:xx) it overrides.
    assert_eq!(
        s.post_seon(UPDATED, Some("r-upd"), SEON_SECRET).await.0,
        200
    );
    assert_eq!(s.post_seon(REVIEW, Some("r-rev"), SEON_SECRET).await.0, 200);
    let body = settled(&s, SID, 2).await;
    assert_eq!(body["vendor_status"], "APPROVED");
    assert_eq!(body["reference_id"], "user-50031-1709391111");
    assert_eq!(body["vendor_status_updated_by"], "analyst@example.com");

    // as_of the first entry: only the update was known.
    let (_, first) = get(
        &s,
        &format!("/v1/sessions/{SID}?as_of=1"),
        Some("tok-rob-0123456789abcdef0123456789ab"),
    )
    .await;
    assert_eq!(
        (
            first["vendor_status"].as_str(),
            first["event_count"].as_u64()
        ),
        (Some("APPROVED"), Some(1))
    );

    // History: both, in seq order, payloads byte for byte.
    let resp = s
        .http
        .get(s.url(&format!("/v1/sessions/{SID}/history")))
        .bearer_auth("tok-rob-0123456789abcdef0123456789ab")
        .send()
        .await
        .unwrap();
    let text = resp.text().await.unwrap();
    let history: Value = serde_json::from_str(&text).unwrap();
    let entries = history["entries"].as_array().unwrap();
    assert_eq!(
        entries
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(entries[1]["type"], "idv:session_finished");
    assert_eq!(entries[1]["kind"], "event");
    assert_eq!(entries[1]["vendor_time"], "2026-03-02T10:15:42.000Z");
    assert!(
        text.contains(REVIEW.trim_end()),
        "the payload is not byte-exact"
    );
}

#[tokio::test]
async fn overrides_need_an_analyst_and_a_reason() {
    let s = Server::start_with(TOKENS);
    s.post_seon(REVIEW, Some("r-rev"), SEON_SECRET).await;
    settled(&s, SID, 1).await;
    let good =
        json!({"action": "approve", "reason": "ID checked by video call", "ticket": "KYC-42"});

    assert_eq!(get(&s, &format!("/v1/sessions/{SID}"), None).await.0, 401);
    assert_eq!(
        get(
            &s,
            &format!("/v1/sessions/{SID}"),
            Some("tok-nobody-0123456789abcdef01234567")
        )
        .await
        .0,
        401
    );
    let before = s.count();
    assert_eq!(
        post_override(&s, SID, "tok-nobody-0123456789abcdef01234567", good.clone())
            .await
            .0,
        401
    );
    assert_eq!(
        post_override(
            &s,
            SID,
            "tok-rob-0123456789abcdef0123456789ab",
            good.clone()
        )
        .await
        .0,
        403
    );
    assert_eq!(
        post_override(
            &s,
            SID,
            "tok-alice-0123456789abcdef0123456789",
            json!({"action": "allow", "reason": "x"})
        )
        .await
        .0,
        400
    );
    assert_eq!(
        post_override(
            &s,
            SID,
            "tok-alice-0123456789abcdef0123456789",
            json!({"action": "approve", "reason": "  "})
        )
        .await
        .0,
        400
    );
    assert_eq!(
        post_override(
            &s,
            SID,
            "tok-alice-0123456789abcdef0123456789",
            json!({"action": "approve"})
        )
        .await
        .0,
        400
    );
    assert_eq!(
        post_override(
            &s,
            "no-such-session",
            "tok-alice-0123456789abcdef0123456789",
            good.clone()
        )
        .await
        .0,
        404
    );
    assert_eq!(s.count(), before, "a refused override wrote something");

    let (status, answer) =
        post_override(&s, SID, "tok-alice-0123456789abcdef0123456789", good).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["override"]["actor"], "alice");
    let body = settled(&s, SID, 2).await;
    assert_eq!(body["last_override"]["action"], "approve");
    assert_eq!(body["last_override"]["ticket"], "KYC-42");
    assert_eq!(body["last_override"]["reason"], "ID checked by video call");

    // The CLI appends beside the running server through its own connection: one chain.
    let out = verdict(
        &s.config(),
        &[
            "override",
            SID,
            "--action",
            "decline",
            "--reason",
            "second look",
            "--actor",
            "bob",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    s.post_seon(APPROVED, Some("r-app"), SEON_SECRET).await;
    let body = settled(&s, SID, 3).await;
    assert_eq!(body["last_override"]["actor"], "bob");
    let out = verdict(&s.config(), &["log", "verify"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    let (_, history) = get(
        &s,
        &format!("/v1/sessions/{SID}/history"),
        Some("tok-rob-0123456789abcdef0123456789ab"),
    )
    .await;
    let kinds: Vec<&str> = history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["event", "override", "override"]);

    // An override sent the moment a new session's delivery is acknowledged finds the session
    // (the projector is let catch up with what was acknowledged before it; it flushes every
    // few ms, so without that these would mostly be 404).
    for i in 0..5 {
        let id = format!("fresh-{i}");
        let (status, _) = s
            .post_seon(
                &seon_body(&id, "REVIEW"),
                Some(&format!("rf-{i}")),
                SEON_SECRET,
            )
            .await;
        assert_eq!(status, 200);
        let (status, answer) = post_override(
            &s,
            &id,
            "tok-alice-0123456789abcdef0123456789",
            json!({"action": "decline", "reason": "seen on the vendor's dashboard"}),
        )
        .await;
        assert_eq!(status, 200, "{id}: {answer}");
    }
}

#[tokio::test]
async fn lists_filter_and_page_and_the_event_feed_pages() {
    let s = Server::start_with(TOKENS);
    for (i, status) in ["APPROVED", "DECLINED", "APPROVED", "REVIEW", "APPROVED"]
        .iter()
        .enumerate()
    {
        s.post_seon(
            &seon_body(&format!("l-{i}"), status),
            Some(&format!("rl-{i}")),
            SEON_SECRET,
        )
        .await;
    }
    settled(&s, "l-4", 1).await;
    let (_, page) = get(
        &s,
        "/v1/sessions?vendor_status=APPROVED&limit=2",
        Some("tok-rob-0123456789abcdef0123456789ab"),
    )
    .await;
    let ids = |v: &Value| {
        v["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["session_id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&page), ["l-0", "l-2"]);
    assert_eq!(page["next"], "l-2");
    let (_, page2) = get(
        &s,
        "/v1/sessions?vendor_status=APPROVED&limit=2&after=l-2",
        Some("tok-rob-0123456789abcdef0123456789ab"),
    )
    .await;
    assert_eq!(ids(&page2), ["l-4"]);
    assert_eq!(page2["next"], Value::Null);
    assert_eq!(
        get(
            &s,
            "/v1/sessions?action=maybe",
            Some("tok-rob-0123456789abcdef0123456789ab")
        )
        .await
        .0,
        400
    );

    let (_, events) = get(
        &s,
        "/v1/events?after=2&limit=2",
        Some("tok-rob-0123456789abcdef0123456789ab"),
    )
    .await;
    let seqs: Vec<u64> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!((seqs, events["next"].as_u64()), (vec![3, 4], Some(4)));
}

#[tokio::test]
async fn unknown_and_unparseable_events_are_quarantined_and_visible() {
    let s = Server::start_with(TOKENS);
    s.post_seon(&seon_body("q-1", "APPROVED"), Some("rq-1"), SEON_SECRET)
        .await;
    let odd = r#"{"event":"idv:session_reopened","date":"2026-03-03T10:00:00Z","details":{"sessionId":"q-1"}}"#;
    assert_eq!(s.post_seon(odd, Some("rq-2"), SEON_SECRET).await.0, 200);
    assert_eq!(
        s.post_seon("garbage", Some("rq-3"), SEON_SECRET).await.0,
        200
    );
    let body = settled(&s, "q-1", 2).await;
    assert_eq!(
        (body["quarantined"].as_u64(), body["vendor_status"].as_str()),
        (Some(1), Some("APPROVED"))
    );
    let (_, history) = get(
        &s,
        "/v1/sessions/q-1/history",
        Some("tok-rob-0123456789abcdef0123456789ab"),
    )
    .await;
    assert!(
        history["entries"][1]["quarantined"]
            .as_str()
            .unwrap()
            .contains("unknown event type")
    );
    // The garbage body names no session: wait (bounded) until the projector has passed it.
    let events = eventually("seq 3 quarantined", async || {
        let (_, events) = get(
            &s,
            "/v1/events?after=1",
            Some("tok-rob-0123456789abcdef0123456789ab"),
        )
        .await;
        events["events"][1]["quarantined"]
            .is_string()
            .then_some(events)
    })
    .await;
    assert!(
        events["events"][0]["quarantined"]
            .as_str()
            .unwrap()
            .contains("unknown event type")
    );
    assert_eq!(events["events"][1]["payload_base64"], "Z2FyYmFnZQ==");
    assert!(
        events["events"][1]["quarantined"]
            .as_str()
            .unwrap()
            .contains("unknown event type \"unknown\"")
    );
}

#[tokio::test]
async fn the_cli_shows_what_the_api_shows_and_replay_matches_the_live_state() {
    let s = Server::start_with(TOKENS);
    s.post_seon(REVIEW, Some("r-rev"), SEON_SECRET).await;
    s.post_seon(UPDATED, Some("r-upd"), SEON_SECRET).await;
    // 20 deliveries, 6 of them the same body as an earlier one (i and i + 14): duplicates.
    for i in 0..20 {
        s.post_seon(
            &seon_body(&format!("d-{}", i % 7), ["APPROVED", "REVIEW"][i % 2]),
            Some(&format!("rd-{i}")),
            SEON_SECRET,
        )
        .await;
    }
    let api = settled(&s, SID, 2).await;
    settled(&s, "d-6", 2).await;
    let out = verdict(&s.config(), &["session", "show", SID]);
    assert!(out.status.success());
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), api);
    let (_, api_history) = get(
        &s,
        &format!("/v1/sessions/{SID}/history"),
        Some("tok-rob-0123456789abcdef0123456789ab"),
    )
    .await;
    let out = verdict(&s.config(), &["session", "history", SID]);
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        api_history
    );
    assert_eq!(
        verdict(&s.config(), &["session", "show", "nope"])
            .status
            .code(),
        Some(1)
    );

    // Stop; the restart resumes from the checkpoint and picks up new events.
    let (status, dir) = s.terminate();
    assert!(status.success());
    let s = Server::start_in(dir);
    s.post_seon(&seon_body("d-99", "DECLINED"), Some("rd-99"), SEON_SECRET)
        .await;
    settled(&s, "d-99", 1).await;
    let (_, dir) = s.terminate();
    let config = dir.path().join("verdict.toml");
    let out = verdict(&config, &["replay"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", text(&out.stderr));
    assert!(
        stdout.contains("previous digest") && stdout.contains("(matches)"),
        "{stdout}"
    );
    assert!(stdout.contains("replayed 17 entries"), "{stdout}");
    assert!(stdout.contains("all derived again the same"), "{stdout}");
    assert!(
        stdout.contains("projections: 0 session rows and 0 links changed"),
        "{stdout}"
    );

    // Stored rows edited behind verdict's back: replay writes back exactly what differs.
    let show = |id: &str| {
        let out = verdict(&config, &["session", "show", id]);
        (out.status.code(), text(&out.stdout))
    };
    let d0 = show("d-0");
    let d6 = verdict(&config, &["session", "history", "d-6"]).stdout;
    let db = rusqlite::Connection::open(dir.path().join("verdict.db")).unwrap();
    db.execute_batch(
        "UPDATE sessions SET vendor_status = 'DECLINED' WHERE session_id = 'd-0';
         DELETE FROM session_entries WHERE session_id = 'd-6';
         INSERT INTO sessions (session_id, vendor_status, action, updated_at, state)
             VALUES ('ghost', NULL, NULL, 0, '{\"session_id\":\"ghost\"}');
         INSERT INTO session_entries (session_id, seq) VALUES ('ghost', 1);
         UPDATE sessions SET updated_at = 'soon' WHERE session_id = 'd-1';",
    )
    .unwrap();
    let out = verdict(&config, &["replay"]);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("(DIFFERS)"), "{stdout}");
    assert!(
        stdout.contains("projections: 3 session rows and 3 links changed"),
        "{stdout}"
    );
    assert_eq!(show("d-0"), d0);
    assert_eq!(show("ghost").0, Some(1));
    assert_eq!(verdict(&config, &["session", "history", "d-6"]).stdout, d6);
    let out = verdict(&config, &["replay"]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("(matches)") && stdout.contains("0 session rows and 0 links changed"),
        "{stdout}"
    );

    // A state that is not JSON: that row written again.
    db.execute_batch("UPDATE sessions SET state = 'not json' WHERE session_id = 'd-4';")
        .unwrap();
    let stdout = text(&verdict(&config, &["replay"]).stdout);
    assert!(
        stdout.contains("(DIFFERS)") && stdout.contains("1 session rows and 0 links changed"),
        "{stdout}"
    );
    // A stored key of the wrong type (a link's seq, a session's id), then projections lost
    // entirely: written whole, the same as before.
    for edit in [
        "INSERT INTO session_entries (session_id, seq) VALUES ('d-6', 'x');",
        "UPDATE sessions SET session_id = CAST('d-5' AS BLOB) WHERE session_id = 'd-5';",
        "DELETE FROM sessions; DELETE FROM session_entries;",
    ] {
        db.execute_batch(edit).unwrap();
        let stdout = text(&verdict(&config, &["replay"]).stdout);
        assert!(
            stdout.contains("projections: rewritten whole"),
            "{edit} {stdout}"
        );
        assert_eq!(show("d-0"), d0);
        assert_eq!(verdict(&config, &["session", "history", "d-6"]).stdout, d6);
    }
    drop(db);
    let stdout = text(&verdict(&config, &["replay"]).stdout);
    assert!(stdout.contains("(matches)"), "{stdout}");
}

/// The projector folds what the server's writer commits from memory; an entry another process
/// appended in between is not in that hand-over, and must still be folded, in seq order.
#[tokio::test]
async fn entries_appended_by_another_process_are_folded_too() {
    use verdict_log::EventStore as _;
    let s = Server::start_with(TOKENS);
    let body = seon_body("before", "REVIEW");
    assert_eq!(s.post_seon(&body, Some("r-1"), SEON_SECRET).await.0, 200);
    settled(&s, "before", 1).await;

    let mut other = verdict_log::SqliteLog::open(s.db()).unwrap();
    let appended = other
        .append_batch(&[&verdict_log::NewEvent::new(
            "seon-idv",
            "idv:session_finished",
            "other-process-1",
            seon_body("behind", "DECLINED").into_bytes(),
        )])
        .unwrap();
    drop(other);
    let body = seon_body("after", "APPROVED");
    assert_eq!(s.post_seon(&body, Some("r-2"), SEON_SECRET).await.0, 200);

    let after = settled(&s, "after", 1).await;
    assert_eq!(after["vendor_status"], "APPROVED");
    let behind = settled(&s, "behind", 1).await;
    assert_eq!(behind["vendor_status"], "DECLINED");
    assert_eq!(appended[0].seq() + 1, {
        let (_, h) = get(
            &s,
            "/v1/sessions/after/history",
            Some("tok-rob-0123456789abcdef0123456789ab"),
        )
        .await;
        h["entries"][0]["seq"].as_u64().unwrap()
    });
}
