//! HTTPS served by verdict: certificates made here with rcgen, clients that trust only them,
//! rotation without a restart, a broken replacement, and bad files at start-up.

use std::path::Path;

use crate::support::*;

/// A self-signed certificate for 127.0.0.1 and localhost: (cert PEM, key PEM).
pub fn cert() -> (String, String) {
    let c =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    (c.cert.pem(), c.signing_key.serialize_pem())
}

/// Replaces a file the way cert-manager and editors do: write aside, then rename over it.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A client that trusts only `cert_pem`; `fresh` disables connection reuse.
pub fn trusting(cert_pem: &str, fresh: bool) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap()]);
    if fresh {
        b = b.pool_max_idle_per_host(0);
    }
    b.build().unwrap()
}

/// A config serving `[server.tls]` from `dir/tls`, with more `[server]` keys and more tables.
pub fn tls_config_with(dir: &Path, server: &str, extra: &str) -> String {
    config_text_with(
        &dir.join("verdict.db"),
        server,
        &format!(
            "{extra}\n\n[server.tls]\ncert = {:?}\nkey = {:?}\n",
            dir.join("tls").join("tls.crt").display().to_string(),
            dir.join("tls").join("tls.key").display().to_string()
        ),
    )
}

/// Writes the pair and a config with [server.tls]; starts nothing.
pub fn setup(pair: &(String, String)) -> tempfile::TempDir {
    setup_with(pair, "", "")
}

/// [`setup`] with more `[server]` keys and more tables.
pub fn setup_with(pair: &(String, String), server: &str, extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tls")).unwrap();
    std::fs::write(dir.path().join("tls/tls.crt"), &pair.0).unwrap();
    std::fs::write(dir.path().join("tls/tls.key"), &pair.1).unwrap();
    let text = tls_config_with(dir.path(), server, extra);
    std::fs::write(dir.path().join("verdict.toml"), text).unwrap();
    dir
}

async fn post_signed(client: &reqwest::Client, url: &str, id: &str) -> reqwest::Result<u16> {
    let body = seon_body(id, "APPROVED");
    let sig = hex::encode(hmac(SEON_SECRET.as_bytes(), &[body.as_bytes()]));
    let resp = client
        .post(format!("{url}/webhooks/seon-idv"))
        .header("X-Seon-Signature", sig)
        .header("Request-Id", format!("req-{id}"))
        .body(body)
        .send()
        .await?;
    Ok(resp.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_rotation_and_a_broken_replacement() {
    let first = cert();
    let s = Server::start_in(setup(&first));
    let url = s.url("");
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    // A client that trusts only this certificate: a signed delivery is accepted, over HTTP/2
    // (ALPN) and over HTTP/1.1.
    let c1 = trusting(&first.0, false);
    assert_eq!(post_signed(&c1, &url, "t-1").await.unwrap(), 200);
    let resp = c1.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let h1 = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(first.0.as_bytes()).unwrap()])
        .http1_only()
        .build()
        .unwrap();
    let resp = h1.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.status(), 200);

    // Plain HTTP to the TLS port fails; so does a client that trusts another certificate.
    let plain = url.replacen("https://", "http://", 1);
    assert!(
        client()
            .get(format!("{plain}/healthz"))
            .send()
            .await
            .is_err()
    );
    let other = cert();
    assert!(
        trusting(&other.0, true)
            .get(format!("{url}/healthz"))
            .send()
            .await
            .is_err()
    );

    // Rotation: the new pair is picked up by new connections without a restart...
    let second = cert();
    let tls = s.config().parent().unwrap().join("tls");
    replace(&tls.join("tls.key"), &second.1);
    replace(&tls.join("tls.crt"), &second.0);
    let c2 = trusting(&second.0, true);
    eventually("the second certificate served", async || {
        c2.get(format!("{url}/healthz"))
            .send()
            .await
            .ok()
            .filter(|r| r.status() == 200)
    })
    .await;
    assert_eq!(post_signed(&c2, &url, "t-2").await.unwrap(), 200);
    // ...and a connection made before it is not cut (HTTP/2 keeps c1's connection open).
    assert_eq!(post_signed(&c1, &url, "t-3").await.unwrap(), 200);
    // New connections trusting only the first certificate now fail.
    assert!(
        trusting(&first.0, true)
            .get(format!("{url}/healthz"))
            .send()
            .await
            .is_err()
    );

    // A broken replacement (a key that is not the certificate's) is rejected: the second pair
    // keeps serving.
    // (Waits are for the specific message: a rotation with a pause between the two renames can
    // log a passing mismatch of its own.)
    let mismatches = || s.stderr().matches("does not match the certificate").count();
    let before = mismatches();
    let third = cert();
    replace(&tls.join("tls.crt"), &third.0);
    eventually("the rejected reload logged", async || {
        (mismatches() > before).then_some(())
    })
    .await;
    assert_eq!(post_signed(&c2, &url, "t-4").await.unwrap(), 200);
    // Not PEM at all: rejected too, on SIGHUP as well.
    replace(&tls.join("tls.crt"), "not a certificate\n");
    s.signal("HUP");
    eventually("the second rejection logged", async || {
        s.stderr().contains("no PEM certificate").then_some(())
    })
    .await;
    assert_eq!(post_signed(&c2, &url, "t-5").await.unwrap(), 200);
    let (status, _) = s.terminate();
    assert!(status.success());
}

#[test]
fn bad_tls_files_stop_start_up_naming_the_file() {
    let good = cert();
    type Spoil = Box<dyn Fn(&Path)>;
    let cases: [(&str, Spoil, &str); 4] = [
        (
            "missing certificate",
            Box::new(|d: &Path| std::fs::remove_file(d.join("tls/tls.crt")).unwrap()),
            "tls.crt: cannot read",
        ),
        (
            "not PEM",
            Box::new(|d: &Path| std::fs::write(d.join("tls/tls.crt"), "hello\n").unwrap()),
            "tls.crt: no PEM certificate",
        ),
        (
            "no key",
            Box::new(|d: &Path| std::fs::write(d.join("tls/tls.key"), "").unwrap()),
            "tls.key: no PEM private key",
        ),
        (
            "key of another certificate",
            Box::new(|d: &Path| std::fs::write(d.join("tls/tls.key"), cert().1).unwrap()),
            "does not match the certificate",
        ),
    ];
    for (what, spoil, expected) in cases {
        let dir = setup(&good);
        spoil(dir.path());
        let out = verdict(&dir.path().join("verdict.toml"), &["serve"]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {err}");
        assert!(err.contains(expected), "{what}: {err}");
        assert!(
            err.contains("verdict.toml:"),
            "{what}: names the config line: {err}"
        );
    }
}

#[tokio::test]
async fn sighup_never_terminates_the_server() {
    // No policy and no TLS: nothing listens for SIGHUP but verdict's own handler.
    let s = Server::start();
    s.signal("HUP");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (status, _) = get(&s, "/healthz", None).await;
    assert_eq!(status, 200);
    let (status, _) = s.terminate();
    assert!(status.success(), "{status:?}");
}
