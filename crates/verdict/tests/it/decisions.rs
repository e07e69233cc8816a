//! Decisions as events: the policy decides on the newest finished event, a vendor status
//! update is a vendor decision, an override an analyst decision; older events decide nothing.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

const REVIEW: &str =
    include_str!("../../../../fixtures/seon/session_finished_review_face_mismatch.json");
const UPDATED: &str =
    include_str!("../../../../fixtures/seon/session_status_updated_approved.json");
const APPROVED: &str = include_str!("../../../../fixtures/seon/session_finished_approved.json");
const SID: &str = "2a7c9e11-4b3d-4f60-a2b8-c9d0e1f2a3b4";
const APPROVED_SID: &str = "5b0f6a7e-2c1d-4d8e-9a11-0c3f7e2b9d10";

fn config() -> String {
    let policy = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../config/policies/kyc.toml"
    );
    format!(
        "[policy]\npath = {policy:?}\n\n[[tokens]]\nname = \"alice\"\nrole = \"analyst\"\ntoken = \"tok-alice-0123456789abcdef0123456789\"\n"
    )
}

async fn session(s: &Server, id: &str) -> Value {
    get(
        s,
        &format!("/v1/sessions/{id}"),
        Some("tok-alice-0123456789abcdef0123456789"),
    )
    .await
    .1
}

/// Waits (bounded) until the session's decision satisfies `ok` and is stored (has a seq).
async fn decided(s: &Server, id: &str, ok: impl Fn(&Value) -> bool) -> Value {
    eventually(&format!("a decision for {id}"), async || {
        let d = session(s, id).await["decision"].take();
        (d.is_object() && d["seq"].is_u64() && ok(&d)).then_some(d)
    })
    .await
}

#[tokio::test]
async fn policy_vendor_and_analyst_decisions_follow_the_session() {
    let s = Server::start_with(&config());
    let (_, ok) = s.post_seon(APPROVED, Some("r-app"), SEON_SECRET).await;
    let d = decided(&s, APPROVED_SID, |d| d["source"] == "policy").await;
    assert_eq!(d["action"], "approve");
    assert_eq!(d["rules"], json!(["clean-session"]));
    assert_eq!(d["reasons"], json!(["All checks passed"]));
    assert_eq!(d["policy"]["name"], "kyc-default");
    assert_eq!(d["policy"]["sha256"].as_str().map(str::len), Some(64));
    assert_eq!(d["trigger_seq"], ok["seq"]);
    assert_eq!(d["reference_id"], "user-48213-1709374501");
    assert!(d["decision_id"].as_str().is_some_and(|id| id.len() == 36));

    s.post_seon(REVIEW, Some("r-rev"), SEON_SECRET).await;
    let d = decided(&s, SID, |d| d["source"] == "policy").await;
    assert_eq!(
        (d["action"].as_str(), d["rules"].clone()),
        (Some("review"), json!(["vendor-review", "face-mismatch"]))
    );

    s.post_seon(UPDATED, Some("r-upd"), SEON_SECRET).await;
    let d = decided(&s, SID, |d| d["source"] == "vendor").await;
    assert_eq!(
        (d["action"].as_str(), d["actor"].as_str()),
        (Some("approve"), Some("analyst@example.com"))
    );

    let body =
        json!({"action": "decline", "reason": "document reused elsewhere", "ticket": "KYC-7"});
    let (status, answer) =
        post_override(&s, SID, "tok-alice-0123456789abcdef0123456789", body).await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            answer["decision"]["source"].as_str(),
            answer["decision"]["action"].as_str()
        ),
        (Some("analyst"), Some("decline")),
        "{answer}"
    );
    assert_eq!(answer["decision"]["trigger_seq"], answer["seq"]);
    let d = decided(&s, SID, |d| d["source"] == "analyst").await;
    assert_eq!(
        (d["action"].as_str(), d["actor"].as_str()),
        (Some("decline"), Some("alice"))
    );
    assert_eq!(d["reasons"], json!(["document reused elsewhere"]));

    // The same action by the same source again records nothing new.
    let before = s.count();
    post_override(
        &s,
        SID,
        "tok-alice-0123456789abcdef0123456789",
        json!({"action": "decline", "reason": "still reused"}),
    )
    .await;
    let (_, history) = get(
        &s,
        &format!("/v1/sessions/{SID}/history"),
        Some("tok-alice-0123456789abcdef0123456789"),
    )
    .await;
    let kinds: Vec<&str> = history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "decision").count(),
        3,
        "{kinds:?}"
    );
    let settle = Instant::now() + Duration::from_secs(2);
    while Instant::now() < settle && s.count() == before {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.count(), before + 1, "only the override itself is new");
    let out = verdict(&s.config(), &["log", "verify"]);
    assert!(out.status.success(), "{}", text(&out.stdout));

    // Lists filter on the current decision's action.
    let (_, page) = get(
        &s,
        "/v1/sessions?action=approve",
        Some("tok-alice-0123456789abcdef0123456789"),
    )
    .await;
    let ids: Vec<&str> = page["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [APPROVED_SID]);
}

#[tokio::test]
async fn an_older_finished_event_arriving_later_decides_nothing() {
    let s = Server::start_with(&config());
    s.post_seon(UPDATED, Some("r-upd"), SEON_SECRET).await;
    let d = decided(&s, SID, |d| d["source"] == "vendor").await;
    assert_eq!(d["action"], "approve");
    s.post_seon(REVIEW, Some("r-rev"), SEON_SECRET).await;
    // Wait until the late event is folded, then check nothing was decided on it.
    eventually("the late event folded", async || {
        (session(&s, SID).await["event_count"].as_u64() >= Some(3)).then_some(())
    })
    .await;
    let body = session(&s, SID).await;
    assert_eq!(
        (
            body["decision"]["source"].as_str(),
            body["vendor_status"].as_str()
        ),
        (Some("vendor"), Some("APPROVED"))
    );
    let (status, dir) = s.terminate();
    assert!(status.success());
    let out = verdict(&dir.path().join("verdict.toml"), &["log", "export"]);
    let decisions = text(&out.stdout)
        .lines()
        .filter(|l| l.contains(r#""type":"decision""#))
        .count();
    assert_eq!(decisions, 1);
}

fn export_types(s: &Server) -> Vec<Value> {
    let out = verdict(&s.config(), &["log", "export"]);
    text(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn activations(s: &Server) -> Vec<Value> {
    export_types(s)
        .into_iter()
        .filter(|e| e["type"] == "policy:activated")
        .collect()
}

/// Replaces the file by rename, as editors and ConfigMaps do.
fn replace(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn the_policy_reloads_on_change_and_a_broken_one_is_rejected() {
    let policies = tempfile::tempdir().unwrap();
    let path = policies.path().join("kyc.toml");
    let shipped = include_str!("../../../../config/policies/kyc.toml");
    std::fs::write(&path, shipped).unwrap();
    let s = Server::start_with(&format!(
        "[policy]\npath = {:?}\n\n[[tokens]]\nname = \"alice\"\nrole = \"analyst\"\ntoken = \"tok-alice-0123456789abcdef0123456789\"\n",
        path.display().to_string()
    ));
    assert_eq!(activations(&s).len(), 1);

    replace(
        &path,
        &shipped.replace("version = \"1\"", "version = \"2\""),
    );
    let found = eventually("version 2 activated", async || {
        let a = activations(&s);
        (a.len() == 2).then_some(a)
    })
    .await;
    assert_eq!(found[1]["payload"]["version"], "2");

    // A broken replacement is rejected; the old policy stays and the sidecar stays ready.
    replace(
        &path,
        "[policy]\nname = \"kyc\"\nversion = \"3\"\ndefault_action = \"approve\"\n[[rules]]\nid = \"x\"\nwhen = 'details.'\naction = \"decline\"\nreason = \"r\"\n",
    );
    eventually("the rejection logged", async || {
        s.stderr().contains("policy reload failed").then_some(())
    })
    .await;
    assert_eq!(activations(&s).len(), 2);
    assert_eq!(
        s.http.get(s.url("/readyz")).send().await.unwrap().status(),
        200
    );

    // Fixed again, and SIGHUP forces a check as well: version 3 decides from now on.
    replace(
        &path,
        &shipped.replace("version = \"1\"", "version = \"3\""),
    );
    s.signal("HUP");
    eventually("version 3 activated", async || {
        (activations(&s).len() == 3).then_some(())
    })
    .await;
    s.post_seon(APPROVED, Some("r-app"), SEON_SECRET).await;
    let d = decided(&s, APPROVED_SID, |d| d["source"] == "policy").await;
    assert_eq!(d["policy"]["version"], "3");

    // Every decision, made under several policies, is derived again the same from the log.
    let (status, dir) = s.terminate();
    assert!(status.success());
    let config = dir.path().join("verdict.toml");
    let out = verdict(&config, &["replay"]);
    let said = text(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("all derived again the same"), "{said}");

    // A forged decision appended behind verdict's back (a valid chain, a wrong decision) is
    // found: replay exits 1 and names it.
    let mut log = verdict_log::SqliteLog::open(dir.path().join("verdict.db")).unwrap();
    let last: Value = serde_json::from_str(
        text(&verdict(&config, &["log", "export"]).stdout)
            .lines()
            .rfind(|l| l.contains(r#""type":"decision""#))
            .unwrap(),
    )
    .unwrap();
    let mut forged = last["payload"].clone();
    forged["action"] = "approve".into();
    forged["rules"] = serde_json::json!([]);
    forged["decision_id"] = "forged".into();
    forged["trigger_seq"] = 1.into(); // the first policy activation: calls for nothing
    use verdict_log::EventStore as _;
    log.append_batch(&[&verdict_log::NewEvent::new(
        "verdict",
        "decision",
        "decision:forged",
        serde_json::to_vec(&forged).unwrap(),
    )])
    .unwrap();
    drop(log);
    let out = verdict(&config, &["replay"]);
    let said = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("1 DIFFER"), "{said}");
    assert!(said.contains("calls for no decision"), "{said}");
}

#[tokio::test]
async fn a_backtest_shows_what_a_candidate_would_change() {
    let s = Server::start_with(&config());
    s.post_seon(REVIEW, Some("b-review"), SEON_SECRET).await;
    s.post_seon(APPROVED, Some("b-approved"), SEON_SECRET).await;
    decided(&s, SID, |d| d["source"] == "policy").await;
    decided(&s, APPROVED_SID, |d| d["source"] == "policy").await;
    let (status, _) = post_override(
        &s,
        SID,
        "tok-alice-0123456789abcdef0123456789",
        json!({"action": "decline", "reason": "the face does not match"}),
    )
    .await;
    assert_eq!(status, 200);
    decided(&s, SID, |d| d["source"] == "analyst").await;
    let (_, dir) = s.terminate();

    // The candidate declines a face mismatch instead of sending it to review.
    let shipped = include_str!("../../../../config/policies/kyc.toml");
    let candidate = shipped.replacen(
        "reason = \"Selfie does not match the document photo\"",
        "reason = \"Selfie does not match the document photo\"\n# stricter",
        1,
    );
    let candidate = candidate.replacen(
        "faceMatchingResult == \"FAIL\"'\naction = \"review\"",
        "faceMatchingResult == \"FAIL\"'\naction = \"decline\"",
        1,
    );
    assert_ne!(candidate, shipped);
    let path = dir.path().join("candidate.toml");
    std::fs::write(&path, candidate).unwrap();
    let config = dir.path().join("verdict.toml");
    let out = verdict(
        &config,
        &["policy", "backtest", "--policy", path.to_str().unwrap()],
    );
    let said = text(&out.stdout);
    assert!(out.status.success(), "{said} {}", text(&out.stderr));
    assert!(said.contains("2 finished sessions evaluated"), "{said}");
    assert!(said.contains("would change: 1 of 2 (50.00%)"), "{said}");
    assert!(
        said.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["review", "decline", "1"]),
        "{said}"
    );
    assert!(
        said.contains("analyst overrides: 1 sessions; the candidate agrees with 1 (100.0%), the recorded policy decisions with 0 (0.0%)"),
        "{said}"
    );
    // Session rows in the shape earlier versions wrote (order keys as objects, the row's
    // columns repeated in the state) give the same backtest.
    assert_eq!(in_the_previous_shape(&dir.path().join("verdict.db")), 2);
    let out = verdict(
        &config,
        &["policy", "backtest", "--policy", path.to_str().unwrap()],
    );
    let untimed = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !l.contains("evaluated in"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(untimed(&text(&out.stdout)), untimed(&said));
    assert!(text(&out.stdout).contains("2 finished sessions evaluated"));
    // A file from before migration 0006 (a read-only command does not migrate): the same.
    rusqlite::Connection::open(dir.path().join("verdict.db"))
        .unwrap()
        .execute_batch("DROP INDEX events_internal; PRAGMA user_version = 5;")
        .unwrap();
    let out = verdict(
        &config,
        &["policy", "backtest", "--policy", path.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(untimed(&text(&out.stdout)), untimed(&said));
    // A candidate that does not compile: diagnostics and exit 1.
    std::fs::write(&path, "[policy]\nname = 1\n").unwrap();
    let out = verdict(
        &config,
        &["policy", "backtest", "--policy", path.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("candidate.toml:"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn a_replayed_delivery_under_a_new_request_id_is_a_duplicate_and_leaves_the_override() {
    let s = Server::start_with(&config());
    let (_, first) = s.post_seon(REVIEW, Some("first"), SEON_SECRET).await;
    decided(&s, SID, |d| d["source"] == "policy").await;
    let (status, _) = post_override(
        &s,
        SID,
        "tok-alice-0123456789abcdef0123456789",
        json!({"action": "approve", "reason": "checked the documents by hand"}),
    )
    .await;
    assert_eq!(status, 200);
    decided(&s, SID, |d| d["source"] == "analyst").await;
    // The same signed body again, under another Request-Id (or none): the same delivery.
    for id in [Some("replayed"), None] {
        let (status, v) = s.post_seon(REVIEW, id, SEON_SECRET).await;
        assert_eq!(
            (status, &v["status"], &v["seq"]),
            (200, &json!("duplicate"), &first["seq"])
        );
    }
    let (_, body) = session_as(&s, SID).await;
    assert_eq!(body["decision"]["source"], "analyst", "{body}");
    assert_eq!(body["decision"]["action"], "approve");
}

async fn session_as(s: &Server, id: &str) -> (u16, Value) {
    get(
        s,
        &format!("/v1/sessions/{id}"),
        Some("tok-alice-0123456789abcdef0123456789"),
    )
    .await
}

/// Rewrites every session row into the state shape of earlier versions; returns how many.
fn in_the_previous_shape(db: &std::path::Path) -> usize {
    let conn = rusqlite::Connection::open(db).unwrap();
    let rows: Vec<(String, Option<String>, i64, String)> = conn
        .prepare("SELECT session_id, vendor_status, updated_at, state FROM sessions")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (id, status, updated_at, state) in &rows {
        let mut v: serde_json::Value = serde_json::from_str(state).unwrap();
        let o = v.as_object_mut().unwrap();
        for key in ["vendor_key", "ids_key", "finished", "status_update"] {
            if let Some(k) = o.get(key).and_then(|k| k.as_array()).cloned() {
                o.insert(
                    key.into(),
                    json!({"vendor_time": k[0], "terminal": k[1], "seq": k[2]}),
                );
            }
        }
        o.insert("session_id".into(), json!(id));
        o.insert("vendor_status".into(), json!(status));
        o.insert("updated_at".into(), json!(updated_at));
        o.insert("quarantined".into(), json!(0));
        conn.execute(
            "UPDATE sessions SET state = ?1 WHERE session_id = ?2",
            rusqlite::params![v.to_string(), id],
        )
        .unwrap();
    }
    rows.len()
}
