//! The analyst's pages, driven end to end in headless Chromium: log in, find a session, read
//! its timeline, open a payload, override it, see the new decision; and the refusals (no
//! login, a reader, a forged or cross-site form, markup in a payload).

use serde_json::Value;

use crate::browser::Browser;
use crate::support::*;

const REVIEW: &str =
    include_str!("../../../../fixtures/seon/session_finished_review_face_mismatch.json");
const SID: &str = "2a7c9e11-4b3d-4f60-a2b8-c9d0e1f2a3b4";
const HOSTILE_SID: &str = "hostile-0001";
/// Markup an attacker could put into fields the vendor copies from user input.
const HOSTILE_REF: &str =
    r#"<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>"#;

fn config() -> String {
    let policy = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../config/policies/kyc.toml"
    );
    format!(
        "[policy]\npath = {policy:?}\n\n\
         [[tokens]]\nname = \"alice\"\nrole = \"analyst\"\ntoken = \"tok-alice-0123456789abcdef0123456789\"\n\n\
         [[tokens]]\nname = \"bob\"\nrole = \"reader\"\ntoken = \"tok-bob-0123456789abcdef0123456789ab\"\n"
    )
}

async fn decision(s: &Server, id: &str) -> Value {
    get(
        s,
        &format!("/v1/sessions/{id}"),
        Some("tok-alice-0123456789abcdef0123456789"),
    )
    .await
    .1["decision"]
        .clone()
}

/// Posts the override form with the given cookie and fields: the status.
async fn post_form(
    s: &Server,
    cookie: &str,
    fields: &[(&str, &str)],
    extra: &[(&str, &str)],
) -> u16 {
    let mut req = s
        .http
        .post(s.url(&format!("/ui/sessions/{SID}/override")))
        .header("Cookie", format!("verdict_ui={cookie}"))
        .form(fields);
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap().status().as_u16()
}

/// With `VERDICT_UI_SHOTS=DIR`, saves a picture of the page (to look at the pages).
fn shot(b: &mut Browser, name: &str) {
    if let Some(dir) = std::env::var_os("VERDICT_UI_SHOTS") {
        b.screenshot(&std::path::Path::new(&dir).join(name));
    }
}

/// A form that must be refused: what, the cookie, the fields, more headers, the status.
type Refusal<'a> = (
    &'a str,
    &'a str,
    Vec<(&'a str, &'a str)>,
    &'a [(&'a str, &'a str)],
    u16,
);

fn log_in(b: &mut Browser, base: &str, token: &str) {
    b.goto(&format!("{base}/ui/sessions"));
    b.wait_for("document.querySelector('#token')");
    b.type_into("#token", token);
    b.click_to(
        "#login",
        "location.pathname === '/ui/sessions' && document.querySelector('table.sessions')",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_analyst_logs_in_reads_the_timeline_and_overrides_in_a_browser() {
    analyst_in_a_browser(false).await;
}

/// The same over HTTPS, where browsers speak HTTP/2 (no `Host` header: the same-origin check
/// reads `:authority`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_analyst_works_in_a_browser_over_https_and_http2() {
    analyst_in_a_browser(true).await;
}

async fn analyst_in_a_browser(tls: bool) {
    let s = if tls {
        let pair = crate::tls::cert();
        Server::start_tls_in(crate::tls::setup_with(&pair, "", &config()), &pair.0)
    } else {
        Server::start_with(&config())
    };
    let chromium_flags: &'static [&'static str] = if tls {
        // The test's own self-signed certificate.
        &["--ignore-certificate-errors"]
    } else {
        &[]
    };
    let (status, first) = s.post_seon(REVIEW, Some("r-1"), SEON_SECRET).await;
    assert_eq!(status, 200);
    // The same delivery again (a vendor retry), shown on the payload as a repeat.
    s.post_seon(REVIEW, Some("r-1"), SEON_SECRET).await;
    let hostile = format!(
        r#"{{"event":"idv:session_finished","date":"2026-03-02T10:15:42.000Z","details":{{"sessionId":"{HOSTILE_SID}","referenceId":{},"status":"APPROVED"}}}}"#,
        serde_json::to_string(HOSTILE_REF).unwrap()
    );
    assert_eq!(s.post_seon(&hostile, Some("r-h"), SEON_SECRET).await.0, 200);
    eventually("the policy's decision", async || {
        decision(&s, SID).await["seq"].is_u64().then_some(())
    })
    .await;
    eventually("the hostile session's decision", async || {
        decision(&s, HOSTILE_SID).await["seq"]
            .is_u64()
            .then_some(())
    })
    .await;

    // Without a login: a 401 with the log-in form, nothing else.
    let resp = s
        .http
        .get(s.url(&format!("/ui/sessions/{SID}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    let page = resp.text().await.unwrap();
    assert!(
        page.contains(r#"name="token""#) && !page.contains("timeline"),
        "{page}"
    );

    let base = s.base.clone();
    let mut b = tokio::task::spawn_blocking(move || {
        let mut b = Browser::launch_with(chromium_flags);
        // A wrong token is refused on the page.
        b.goto(&format!("{base}/ui/login"));
        b.type_into("#token", "not-a-token");
        b.click_to("#login", "document.querySelector('#login-error')");
        log_in(&mut b, &base, "tok-alice-0123456789abcdef0123456789");
        b
    })
    .await
    .unwrap();
    let protocol = b.eval("performance.getEntriesByType('navigation')[0].nextHopProtocol");
    assert_eq!(protocol, if tls { "h2" } else { "http/1.1" });

    // The cookie: HttpOnly (scripts cannot read it), SameSite=Strict, scoped to /ui.
    let cookies = b.cookies();
    let c = cookies
        .iter()
        .find(|c| c["name"] == "verdict_ui")
        .unwrap_or_else(|| panic!("no login cookie in {cookies:?}"));
    assert_eq!(c["httpOnly"], true, "{c}");
    assert_eq!(c["sameSite"], "Strict", "{c}");
    assert_eq!(c["path"], "/ui", "{c}");
    let cookie = c["value"].as_str().unwrap().to_owned();
    assert_eq!(b.eval("document.cookie.includes('verdict_ui')"), false);

    shot(&mut b, "sessions.png");
    // The list shows both sessions with their decisions; the filter narrows it.
    let list = b.text("table.sessions");
    assert!(list.contains(SID) && list.contains(HOSTILE_SID), "{list}");
    b.select("select[name=vendor_status]", "REVIEW");
    b.click_to(
        "form.filters button",
        "location.search.includes('vendor_status=REVIEW')",
    );
    let list = b.text("table.sessions");
    assert!(list.contains(SID) && !list.contains(HOSTILE_SID), "{list}");

    // Open the session from the list and read its timeline.
    b.click_to(
        &format!("a[href='/ui/sessions/{SID}']"),
        "document.querySelector('#timeline')",
    );
    let summary = b.text("#summary");
    assert!(
        summary.contains("REVIEW") && summary.contains("user-50031-1709391111"),
        "{summary}"
    );
    let current = b.text("#current-decision").to_lowercase();
    assert!(
        current.contains("review")
            && current.contains("policy kyc-default version")
            && current.contains("face-mismatch"),
        "{current}"
    );
    let first_seq = first["seq"].as_u64().unwrap();
    let entry = b.text(&format!("#seq-{first_seq}"));
    assert!(
        entry.contains("idv:session_finished")
            && entry.contains("status REVIEW")
            && entry.contains("vendor status: — → REVIEW"),
        "{entry}"
    );
    assert!(
        entry.contains("delivered 1 more time"),
        "the retry is shown: {entry}"
    );
    let timeline = b.text("#timeline");
    assert!(
        timeline.contains("decided review (source: policy)")
            && timeline.contains("rules matched: vendor-review, face-mismatch"),
        "{timeline}"
    );

    // The payload is one click away, on its own page (a long timeline does not carry them).
    assert!(!b.exists("#timeline pre.json"));
    b.click_to(
        &format!("#seq-{first_seq} p.payload a"),
        "document.querySelector('#payload')",
    );
    let shown = b.text("#payload pre.json");
    assert!(
        shown.contains("\"sessionId\": \"2a7c9e11") && shown.contains("Ana Demo"),
        "{shown}"
    );
    let headers = b.text("#payload");
    assert!(!headers.contains("x-seon-signature"), "{headers}");
    b.click_to("main p a", "document.querySelector('#timeline')");

    // A form without its CSRF token, with another login's token, or posted cross-site is
    // refused, and nothing is written.
    let before = s.count();
    let good_csrf = b
        .eval("document.querySelector('#override input[name=csrf]').value")
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(good_csrf.len(), 64);
    let reason = ("reason", "forged");
    let wrong = "0".repeat(64);
    let good = good_csrf.as_str();
    let approve = ("action", "approve");
    let cases: [Refusal<'_>; 5] = [
        ("no CSRF token", &cookie, vec![approve, reason], &[], 403),
        (
            "another token",
            &cookie,
            vec![("csrf", &wrong), approve, reason],
            &[],
            403,
        ),
        (
            "cross-site",
            &cookie,
            vec![("csrf", good), approve, reason],
            &[("Sec-Fetch-Site", "cross-site")],
            403,
        ),
        (
            "empty reason",
            &cookie,
            vec![("csrf", good), approve, ("reason", "  ")],
            &[],
            400,
        ),
        (
            "unknown login",
            "no-such-login",
            vec![("csrf", good), approve, reason],
            &[],
            401,
        ),
    ];
    for (what, cookie, fields, extra, want) in cases {
        assert_eq!(post_form(&s, cookie, &fields, extra).await, want, "{what}");
    }
    assert_eq!(s.count(), before, "a refused form wrote something");

    // Override in the browser. Without an action, then without a reason, the browser itself
    // refuses to send the form (required fields); then a real one.
    let before = s.count();
    let mut b = tokio::task::spawn_blocking(move || {
        b.mark_page();
        b.click("#override-submit");
        assert_eq!(
            b.eval("document.querySelector('#action').validity.valueMissing"),
            true
        );
        b.select("#action", "decline");
        b.click("#override-submit");
        assert_eq!(
            b.eval("document.querySelector('#reason').validity.valueMissing"),
            true
        );
        assert!(b.same_page() && !b.exists("#override-error"));
        b.type_into("#reason", "document reused in another account");
        b.type_into("#ticket", "KYC-42");
        b.click_to(
            "#override-submit",
            "document.querySelector('#current-decision').innerText.includes('analyst')",
        );
        b
    })
    .await
    .unwrap();
    // The override and the decision it led to; nothing from the refused attempts.
    assert_eq!(s.count(), before + 2);
    shot(&mut b, "session.png");
    let current = b.text("#current-decision").to_lowercase();
    assert!(
        current.contains("decline")
            && current.contains("alice")
            && current.contains("document reused in another account"),
        "{current}"
    );
    let last = b.text("#last-override");
    assert!(
        last.contains("alice set decline") && last.contains("ticket KYC-42"),
        "{last}"
    );
    let timeline = b.text("#timeline");
    assert!(
        timeline.contains("alice overrode the decision: decline")
            && timeline.contains("reason: document reused in another account")
            && timeline.contains("ticket: KYC-42")
            && timeline.contains("decided decline (source: analyst)"),
        "{timeline}"
    );
    let d = decision(&s, SID).await;
    assert_eq!(
        (
            d["action"].as_str(),
            d["source"].as_str(),
            d["actor"].as_str()
        ),
        (Some("decline"), Some("analyst"), Some("alice"))
    );

    // Markup from a payload is shown as text and never runs.
    let base = s.base.clone();
    let b = tokio::task::spawn_blocking(move || {
        b.goto(&format!("{base}/ui/sessions/{HOSTILE_SID}"));
        let summary = b.text("#summary");
        assert!(summary.contains(HOSTILE_REF), "{summary}");
        b.click_to("p.payload a", "document.querySelector('#payload')");
        assert!(b.text("#payload pre.json").contains("onerror"));
        for _page in ["payload", "session"] {
            assert_eq!(b.eval("typeof window.__pwned"), "undefined");
            assert_eq!(
                b.eval("document.querySelectorAll('main img, main script').length"),
                0
            );
            b.goto(&format!("{base}/ui/sessions/{HOSTILE_SID}"));
        }

        // Log out: the cookie no longer opens anything.
        b.click_to("header form button", "location.pathname === '/ui/login'");
        // A reader sees the timeline but no override form.
        log_in(&mut b, &base, "tok-bob-0123456789abcdef0123456789ab");
        b.goto(&format!("{base}/ui/sessions/{SID}"));
        assert!(b.exists("#timeline") && !b.exists("#override"));
        let cookie = b
            .cookies()
            .iter()
            .find(|c| c["name"] == "verdict_ui")
            .and_then(|c| c["value"].as_str().map(str::to_owned))
            .unwrap();
        (b, cookie)
    })
    .await
    .unwrap();
    let (_b, reader_cookie) = b;
    let resp = get_page(&s, &s.http, &cookie, "/ui/sessions").await;
    assert_eq!(
        resp.status().as_u16(),
        401,
        "the logged-out cookie still works"
    );
    let before = s.count();
    assert_eq!(
        post_form(&s, &reader_cookie, &[("action", "approve"), reason], &[]).await,
        403
    );
    assert_eq!(s.count(), before);
}

/// Logs in with a plain HTTP client (no redirects followed): the answer.
async fn login_raw(
    s: &Server,
    http: &reqwest::Client,
    token: &str,
    next: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = http
        .post(s.url("/ui/login"))
        .form(&[("token", token), ("next", next)]);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

fn set_cookie(resp: &reqwest::Response) -> Option<String> {
    let v = resp.headers().get("set-cookie")?.to_str().ok()?;
    let value = v.strip_prefix("verdict_ui=")?.split(';').next()?;
    (!value.is_empty()).then(|| value.to_owned())
}

/// A GET of a `/ui` page with the login's cookie.
async fn get_page(
    s: &Server,
    http: &reqwest::Client,
    cookie: &str,
    path: &str,
) -> reqwest::Response {
    http.get(s.url(path))
        .header("Cookie", format!("verdict_ui={cookie}"))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn log_in_and_out_refuse_forged_and_cross_site_posts() {
    let s = Server::start_with(&config());
    assert_eq!(s.post_seon(REVIEW, Some("r-1"), SEON_SECRET).await.0, 200);
    // The session page and the override form need the session projected (the 200 above
    // only says the delivery is in the log): wait for it, as a browser user would reload.
    eventually("the session projected", async || {
        (get(
            &s,
            &format!("/v1/sessions/{SID}"),
            Some("tok-alice-0123456789abcdef0123456789"),
        )
        .await
        .0 == 200)
            .then_some(())
    })
    .await;
    let _ = client();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // `next` is followed inside /ui only; anything else, or a value that cannot be a header,
    // goes to the list.
    for (next, want) in [
        (format!("/ui/sessions/{SID}"), format!("/ui/sessions/{SID}")),
        (
            "https://evil.example/".to_owned(),
            "/ui/sessions".to_owned(),
        ),
        ("//evil.example/ui/".to_owned(), "/ui/sessions".to_owned()),
        ("/ui/\n".to_owned(), "/ui/sessions".to_owned()),
        ("/ui/\u{7f}x".to_owned(), "/ui/sessions".to_owned()),
    ] {
        let resp = login_raw(
            &s,
            &http,
            "tok-alice-0123456789abcdef0123456789",
            &next,
            &[],
        )
        .await;
        assert_eq!(resp.status().as_u16(), 303, "{next:?}");
        assert_eq!(resp.headers()["location"], want.as_str(), "{next:?}");
        let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
        for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=28800"] {
            assert!(cookie.contains(attr), "{cookie}");
        }
        assert!(
            !cookie.contains("Secure"),
            "plain HTTP: no Secure flag ({cookie})"
        );
    }

    // Cross-site log-in attempts are refused and set no cookie.
    for headers in [
        [("Sec-Fetch-Site", "cross-site")],
        [("Origin", "https://evil.example")],
        [("Origin", "null")],
    ] {
        let resp = login_raw(
            &s,
            &http,
            "tok-alice-0123456789abcdef0123456789",
            "/ui/sessions",
            &headers,
        )
        .await;
        assert_eq!(resp.status().as_u16(), 403, "{headers:?}");
        assert!(set_cookie(&resp).is_none());
    }
    // A same-origin one is fine.
    let host = s.base.trim_start_matches("http://").to_owned();
    let origin = format!("http://{host}");
    let resp = login_raw(
        &s,
        &http,
        "tok-alice-0123456789abcdef0123456789",
        "/ui/sessions",
        &[("Origin", &origin), ("Sec-Fetch-Site", "same-origin")],
    )
    .await;
    assert_eq!(resp.status().as_u16(), 303);
    let cookie = set_cookie(&resp).unwrap();

    // The session page carries the login's CSRF token; log-out needs it.
    let page = get_page(&s, &http, &cookie, &format!("/ui/sessions/{SID}")).await;
    assert_eq!(page.status().as_u16(), 200);
    let page = page.text().await.unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();
    let logout = |csrf: String, origin: Option<String>| {
        let mut req = http
            .post(s.url("/ui/logout"))
            .header("Cookie", format!("verdict_ui={cookie}"))
            .form(&[("csrf", csrf)]);
        if let Some(o) = origin {
            req = req.header("Origin", o);
        }
        req.send()
    };
    assert_eq!(
        logout("0".repeat(64), None)
            .await
            .unwrap()
            .status()
            .as_u16(),
        403
    );
    assert_eq!(
        logout(csrf.clone(), Some("https://evil.example".into()))
            .await
            .unwrap()
            .status()
            .as_u16(),
        403
    );
    // Still logged in after the refused attempts.
    let still = get_page(&s, &http, &cookie, "/ui/sessions").await;
    assert_eq!(still.status().as_u16(), 200);

    // A refused override form comes back with what was typed and the action chosen.
    let before = s.count();
    let resp = http
        .post(s.url(&format!("/ui/sessions/{SID}/override")))
        .header("Cookie", format!("verdict_ui={cookie}"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("action", "decline"),
            ("reason", " "),
            ("ticket", "T-9"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let page = resp.text().await.unwrap();
    assert!(
        page.contains(r#"<option value="decline" selected>"#),
        "{page}"
    );
    assert!(page.contains("reason must not be empty") && page.contains(r#"value="T-9""#));
    assert_eq!(s.count(), before);

    // Log-out with the token: the cookie stops working.
    let out = logout(csrf, Some(origin)).await.unwrap();
    assert_eq!(out.status().as_u16(), 303);
    assert!(
        out.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let gone = get_page(&s, &http, &cookie, "/ui/sessions").await;
    assert_eq!(gone.status().as_u16(), 401);
}
