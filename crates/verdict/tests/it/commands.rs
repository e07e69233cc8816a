//! `verdict log verify|export` and configuration errors, through the real binary.

use crate::support::*;

#[tokio::test]
async fn log_verify_catches_a_row_edited_behind_its_back() {
    let s = Server::start();
    for i in 0..5 {
        s.post_seon(
            &seon_body(&format!("v-{i}"), "APPROVED"),
            Some(&format!("rv-{i}")),
            SEON_SECRET,
        )
        .await;
    }
    let out = verdict(&s.config(), &["log", "verify"]);
    assert!(out.status.success());
    assert!(
        text(&out.stdout).starts_with("ok: 5 entries"),
        "{}",
        text(&out.stdout)
    );

    // Edit seq 3's body behind verdict's back (the trigger must be dropped to do it).
    let conn = rusqlite::Connection::open(s.db()).unwrap();
    conn.execute_batch(
        "DROP TRIGGER events_no_update;
         UPDATE events SET body = CAST(REPLACE(CAST(body AS TEXT), 'APPROVED', 'DECLINED') AS BLOB) WHERE seq = 3;
         CREATE TRIGGER events_no_update BEFORE UPDATE ON events BEGIN SELECT RAISE(ABORT, 'x'); END;",
    )
    .unwrap();
    let out = verdict(&s.config(), &["log", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("first bad seq 3"), "{stdout}");
    assert!(stdout.contains("body does not match"), "{stdout}");
}

#[tokio::test]
async fn log_export_writes_one_entry_a_line_with_the_payload() {
    let s = Server::start();
    let pretty = "{\n  \"event\": \"idv:session_finished\",\n  \"date\": \"2026-03-02T10:15:42.000Z\",\n  \"details\": {\"sessionId\": \"e-1\"}\n}";
    s.post_seon(pretty, Some("re-1"), SEON_SECRET).await;
    s.post_seon(&seon_body("e-2", "DECLINED"), Some("re-2"), SEON_SECRET)
        .await;
    let out = verdict(&s.config(), &["log", "export"]);
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for key in [
        "seq",
        "type",
        "source",
        "recorded_at",
        "hash",
        "prev_hash",
        "payload",
    ] {
        assert!(lines[0].get(key).is_some(), "missing {key}");
    }
    assert_eq!(lines[0]["payload"]["details"]["sessionId"], "e-1");
    assert_eq!(lines[0]["vendor_time"], "2026-03-02T10:15:42.000Z");
    assert_eq!(lines[1]["prev_hash"], lines[0]["hash"]);
    assert_eq!(lines[1]["payload"]["details"]["status"], "DECLINED");
    assert_eq!(lines[0]["headers"]["request-id"], "re-1");
    let after = verdict(&s.config(), &["log", "export", "--after", "1"]);
    assert_eq!(text(&after.stdout).lines().count(), 1);
}

#[test]
fn a_write_left_unfinished_is_named_and_the_next_replay_rolls_it_back() {
    let (dir, config) = write_config("");
    let db = dir.path().join("v.db");
    let mut log = verdict_log::SqliteLog::open(&db).unwrap();
    let events: Vec<verdict_log::NewEvent> = (0..3)
        .map(|i| {
            verdict_log::NewEvent::new(
                "seon-idv",
                "idv:session_finished",
                format!("u-{i}"),
                seon_body(&format!("u-{i}"), "APPROVED").into_bytes(),
            )
        })
        .collect();
    verdict_log::EventStore::append_batch(&mut log, &events.iter().collect::<Vec<_>>()).unwrap();
    // A replay killed while writing through its rollback journal leaves the file with a hot
    // journal: made here by copying the files in the middle of a write that spills pages.
    let killed = dir.path().join("killed");
    verdict_log::testing::copy_mid_write(&mut log, &killed).unwrap();
    drop(log);
    let config_killed = dir.path().join("killed.toml");
    std::fs::write(&config_killed, config_text(&killed.join("v.db"), "")).unwrap();
    drop(config);

    for args in [&["log", "verify"][..], &["session", "show", "u-1"]] {
        let out = verdict(&config_killed, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains("unfinished write"), "{args:?}: {stderr}");
        assert!(
            stderr.contains("run `verdict replay`"),
            "{args:?}: {stderr}"
        );
    }
    // The advice works: replay opens the file read-write (rolling the write back) first.
    let out = verdict(&config_killed, &["replay"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("replayed 3 entries"));
    let out = verdict(&config_killed, &["log", "verify"]);
    assert!(
        text(&out.stdout).starts_with("ok: 3 entries"),
        "{}",
        text(&out.stdout)
    );
}

fn write_config(extra: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("verdict.toml");
    std::fs::write(&path, config_text(&dir.path().join("v.db"), extra)).unwrap();
    (dir, path)
}

#[test]
fn bad_configuration_exits_2_naming_the_problem() {
    let (_d, path) = write_config("[storage]\n");
    // A duplicate [storage] table is a TOML error with a location.
    let out = verdict(&path, &["serve"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("verdict.toml:"),
        "{}",
        text(&out.stderr)
    );

    let (_d, path) = write_config("[policy]\npath = \"p.toml\"\ncolour = \"blue\"\n");
    let out = verdict(&path, &["serve"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("unknown field `colour`") && err.contains("verdict.toml:"),
        "{err}"
    );

    let (_d, path) = write_config(
        "[[tokens]]\nname = \"alice\"\nrole = \"analyst\"\ntoken = \"env:VERDICT_IT_SURELY_UNSET\"\n",
    );
    let out = verdict(&path, &["serve"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("VERDICT_IT_SURELY_UNSET is not set"),
        "{}",
        text(&out.stderr)
    );

    let out = verdict(
        std::path::Path::new("/nonexistent/verdict.toml"),
        &["serve"],
    );
    assert_eq!(out.status.code(), Some(2));

    let out = verdict(&path, &["no-such-command"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn env_secrets_are_resolved() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("verdict.toml");
    let text_cfg = config_text(&dir.path().join("v.db"), "")
        .replace("\"seon-secret-1-abcdef\"", "\"env:VERDICT_IT_SEON\"");
    std::fs::write(&path, text_cfg).unwrap();
    let out = std::process::Command::new(BIN)
        .env_remove("VERDICT_IT_SEON")
        .args(["--config", path.to_str().unwrap(), "serve"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("VERDICT_IT_SEON"));
}

#[test]
fn policy_check_points_at_the_problem() {
    let shipped = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../config/policies/kyc.toml"
    );
    let out = verdict(
        std::path::Path::new("/nonexistent.toml"),
        &["policy", "check", shipped],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("ok: policy kyc-default"),
        "{}",
        text(&out.stdout)
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[policy]\nname = \"p\"\nversion = \"1\"\ndefault_action = \"review\"\n\n[[rules]]\nid = \"r\"\nwhen = 'details.x =='\naction = \"decline\"\nreason = \"r\"\n",
    )
    .unwrap();
    let out = verdict(
        std::path::Path::new("/nonexistent.toml"),
        &["policy", "check", bad.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("bad.toml:8:"), "{err}");
    assert!(
        err.contains("8 | when = 'details.x =='") && err.contains('^'),
        "{err}"
    );

    // serve refuses a policy that does not compile (exit 2, with the diagnostic).
    let cfg = dir.path().join("verdict.toml");
    std::fs::write(
        &cfg,
        config_text(
            &dir.path().join("v.db"),
            &format!("[policy]\npath = {:?}\n", bad.display().to_string()),
        ),
    )
    .unwrap();
    let out = verdict(&cfg, &["serve"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("does not compile"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_shipped_policy_passes_its_tests_and_a_wrong_expectation_fails() {
    let shipped = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../config/policies/kyc.toml"
    );
    let out = verdict(
        std::path::Path::new("/nonexistent.toml"),
        &["policy", "test", shipped],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    assert!(
        !stdout.contains("rules no case matched"),
        "every rule needs a case: {stdout}"
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(shipped, dir.path().join("p.toml")).unwrap();
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/seon/session_finished_approved.json"
    );
    std::fs::write(
        dir.path().join("p.tests.toml"),
        format!(
            "[[cases]]\nname = \"wrong on purpose\"\nfixture = {fixture:?}\nexpect = \"decline\"\n"
        ),
    )
    .unwrap();
    let out = verdict(
        std::path::Path::new("/nonexistent.toml"),
        &[
            "policy",
            "test",
            dir.path().join("p.toml").to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("FAIL wrong on purpose")
            && stdout.contains("expected decline")
            && stdout.contains("actual   approve [\"clean-session\"]"),
        "{stdout}"
    );
}

#[tokio::test]
async fn the_active_policy_is_recorded_once_with_its_full_text() {
    let policy = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../config/policies/kyc.toml"
    );
    let s = Server::start_with(&format!("[policy]\npath = {policy:?}\n"));
    let (status, dir) = s.terminate();
    assert!(status.success());
    let s = Server::start_in(dir); // same policy: nothing new
    let (_, dir) = s.terminate();
    let out = verdict(&dir.path().join("verdict.toml"), &["log", "export"]);
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let activations: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["type"] == "policy:activated")
        .collect();
    assert_eq!(activations.len(), 1, "{lines:?}");
    let text_on_disk = std::fs::read_to_string(policy).unwrap();
    assert_eq!(activations[0]["payload"]["text"], text_on_disk.as_str());
    assert_eq!(activations[0]["payload"]["name"], "kyc-default");
    use sha2::Digest as _;
    assert_eq!(
        activations[0]["payload"]["sha256"],
        hex::encode(sha2::Sha256::digest(text_on_disk.as_bytes()))
    );
}

#[test]
fn the_demo_runs_end_to_end_and_exits_0() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args(["demo", "--sessions", "12"])
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let said = text(&out.stdout);
    assert!(out.status.success(), "{said}\n{}", text(&out.stderr));
    assert!(said.contains("decisions delivered to the sink"), "{said}");
    assert!(said.contains("(0 bad)"), "{said}");
    assert!(said.contains("the sidecar stopped cleanly: true"), "{said}");
    let token = said
        .split("/ui/, token ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_default();
    assert!(token.len() >= 32, "{said}");
    // The log it leaves verifies.
    let config = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with("verdict-demo-"))
        .unwrap()
        .path()
        .join("verdict.toml");
    let out = verdict(&config, &["log", "verify"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
}

/// The independent Python verifier agrees with `log verify`: an intact log passes, a trigger
/// replaced by one that lets updates through is found.
#[tokio::test]
async fn the_python_verifier_checks_the_chain_and_the_guards() {
    let s = Server::start();
    assert_eq!(
        s.post_seon(&seon_body("py-1", "APPROVED"), None, SEON_SECRET)
            .await
            .0,
        200
    );
    let (_, dir) = s.terminate();
    let db = dir.path().join("verdict.db");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/verify_chain.py");
    let run = || {
        std::process::Command::new("python3")
            .arg(script)
            .arg(&db)
            .output()
            .expect("python3 runs")
    };
    let out = run();
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).starts_with("ok: 1 entries"),
        "{}",
        text(&out.stdout)
    );
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "DROP TRIGGER events_no_update;
         CREATE TRIGGER events_no_update BEFORE UPDATE ON events WHEN 0
         BEGIN SELECT RAISE(ABORT, 'events is append-only: UPDATE is not allowed'); END;",
    )
    .unwrap();
    drop(conn);
    let out = run();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("events_no_update is not the shipped one"),
        "{}",
        text(&out.stdout)
    );
}
