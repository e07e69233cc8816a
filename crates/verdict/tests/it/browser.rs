//! A small driver for headless Chromium over its DevTools protocol (one WebSocket, JSON
//! commands): navigate, read the page, type, click with real mouse events, read cookies.
//! Chromium is Debian's `/usr/bin/chromium` (or `$VERDICT_CHROMIUM`), installed by
//! `scripts/test-setup.sh`.

use std::io::{BufRead as _, BufReader};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

use crate::support::ChildGuard;

/// A headless Chromium with one page.
pub struct Browser {
    ws: WebSocket<TcpStream>,
    session: String,
    next_id: u64,
    _child: ChildGuard,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium with more command-line switches (e.g. to accept a test certificate) and
    /// opens an empty page.
    pub fn launch_with(extra: &[&str]) -> Self {
        let path = std::env::var("VERDICT_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        assert!(
            std::path::Path::new(&path).exists(),
            "{path} is missing: run scripts/test-setup.sh (it installs Debian's chromium)"
        );
        let profile = tempfile::tempdir().expect("profile dir");
        let mut child = Command::new(&path)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--remote-debugging-port=0",
                "--window-size=1280,1000",
            ])
            .args(extra)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        // Chromium prints the browser's WebSocket address on stderr; the pipe keeps being
        // drained so Chromium never blocks on it.
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("ws://") {
                    let _ = tx.send(line[at..].trim().to_owned());
                }
            }
        });
        let child = ChildGuard(child);
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("chromium printed no DevTools address within 30 s");
        let authority = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .expect("host:port")
            .to_owned();
        let stream = TcpStream::connect(&authority).expect("connect to DevTools");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        let (ws, _) = tungstenite::client(url.as_str(), stream).expect("DevTools handshake");
        let mut b = Self {
            ws,
            session: String::new(),
            next_id: 0,
            _child: child,
            _profile: profile,
        };
        let target = b.call_browser("Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].as_str().expect("targetId").to_owned();
        let attached = b.call_browser(
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        );
        b.session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_owned();
        b.call("Page.enable", json!({}));
        b.call("Runtime.enable", json!({}));
        b
    }

    fn send(&mut self, method: &str, params: Value, session: Option<&str>) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method});
        msg["params"] = params;
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .expect("send to DevTools");
        loop {
            let m = self.ws.read().expect("read from DevTools");
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(t.as_str()).expect("DevTools JSON");
            if v["id"].as_u64() == Some(id) {
                return match v.get("error") {
                    Some(e) => Err(e.clone()),
                    None => Ok(v["result"].clone()),
                };
            }
            // Events and other answers are not needed: the tests poll the page's state.
        }
    }

    fn call_browser(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params, None)
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    /// A command on the page.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.send(method, params, Some(&session))
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    /// Evaluates JavaScript in the page; `Err` when it threw or the page was navigating.
    pub fn try_eval(&mut self, expression: &str) -> Result<Value, String> {
        let session = self.session.clone();
        let r = self
            .send(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
                Some(&session),
            )
            .map_err(|e| e.to_string())?;
        if let Some(ex) = r.get("exceptionDetails") {
            return Err(ex.to_string());
        }
        Ok(r["result"]["value"].clone())
    }

    /// Evaluates JavaScript in the page and answers its value.
    pub fn eval(&mut self, expression: &str) -> Value {
        self.try_eval(expression)
            .unwrap_or_else(|e| panic!("{expression}: {e}"))
    }

    /// Waits (at most 20 s) until `condition` (JavaScript) is true on a fully loaded page.
    pub fn wait_for(&mut self, condition: &str) {
        let probe = format!("document.readyState === 'complete' && !!({condition})");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.try_eval(&probe) == Ok(Value::Bool(true)) {
                return;
            }
            if Instant::now() > deadline {
                let now = self.try_eval("location.href + '\\n' + document.body.innerText");
                panic!("timed out waiting for {condition}; the page is: {now:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Marks the current page, so a wait can tell the next page from it (and
    /// [`Self::same_page`] can tell that a click did not navigate).
    pub fn mark_page(&mut self) {
        self.eval("window.__verdict_old_page = true");
    }

    /// Opens `url` and waits until it has loaded.
    pub fn goto(&mut self, url: &str) {
        self.mark_page();
        self.call("Page.navigate", json!({"url": url}));
        let want = serde_json::to_string(url).expect("json");
        self.wait_for(&format!(
            "!window.__verdict_old_page && location.href.startsWith({want})"
        ));
    }

    /// Clicks something that loads another page (a link, a form's button) and waits until
    /// that page has loaded and `condition` holds on it.
    pub fn click_to(&mut self, selector: &str, condition: &str) {
        self.mark_page();
        self.click(selector);
        self.wait_for(&format!("!window.__verdict_old_page && ({condition})"));
    }

    /// Whether the page is still the one marked by the last [`Self::mark_page`] (a click since
    /// then did not navigate).
    pub fn same_page(&mut self) -> bool {
        self.eval("window.__verdict_old_page === true") == Value::Bool(true)
    }

    /// The page's visible text.
    pub fn text(&mut self, selector: &str) -> String {
        let sel = serde_json::to_string(selector).expect("json");
        self.eval(&format!(
            "(document.querySelector({sel}) || {{innerText: ''}}).innerText"
        ))
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Whether `selector` matches an element.
    pub fn exists(&mut self, selector: &str) -> bool {
        let sel = serde_json::to_string(selector).expect("json");
        self.eval(&format!("document.querySelector({sel}) !== null")) == Value::Bool(true)
    }

    /// Clicks the middle of the element with real mouse events.
    pub fn click(&mut self, selector: &str) {
        let sel = serde_json::to_string(selector).expect("json");
        let at = self.eval(&format!(
            "(() => {{ const e = document.querySelector({sel}); if (!e) return null; \
             e.scrollIntoView({{block: 'center'}}); const r = e.getClientRects()[0] || e.getBoundingClientRect(); \
             const x = r.left + r.width / 2, y = r.top + r.height / 2; \
             const hit = document.elementFromPoint(x, y); \
             if (!hit || !(hit === e || e.contains(hit))) return 'covered by ' + (hit && hit.outerHTML); \
             return [x, y]; }})()"
        ));
        let (x, y) = match at.as_array().map(Vec::as_slice) {
            Some([x, y]) => (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0)),
            _ => panic!("cannot click {selector}: {at}"),
        };
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            );
        }
    }

    /// Focuses the field and types `text` into it as keyboard input.
    pub fn type_into(&mut self, selector: &str, text: &str) {
        self.click(selector);
        let sel = serde_json::to_string(selector).expect("json");
        assert_eq!(
            self.eval(&format!(
                "document.activeElement === document.querySelector({sel})"
            )),
            Value::Bool(true),
            "{selector} did not take the focus"
        );
        self.call("Input.insertText", json!({"text": text}));
    }

    /// Chooses an option of a `<select>` (as the keyboard would: value set, change fired).
    pub fn select(&mut self, selector: &str, value: &str) {
        let sel = serde_json::to_string(selector).expect("json");
        let val = serde_json::to_string(value).expect("json");
        let ok = self.eval(&format!(
            "(() => {{ const e = document.querySelector({sel}); e.value = {val}; \
             e.dispatchEvent(new Event('change', {{bubbles: true}})); return e.value === {val}; }})()"
        ));
        assert_eq!(ok, Value::Bool(true), "{selector} has no option {value}");
    }

    /// The browser's cookies for the page.
    pub fn cookies(&mut self) -> Vec<Value> {
        self.call("Network.getCookies", json!({}))["cookies"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Saves a PNG of the page (for looking at a failure).
    pub fn screenshot(&mut self, path: &std::path::Path) {
        use base64::Engine as _;
        let shot = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        );
        let data = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or_default())
            .expect("png");
        std::fs::write(path, data).expect("write screenshot");
    }
}
