//! Headless Chromium driven over the DevTools protocol (CDP) with the WebSocket client the
//! workspace already has: launch with `--remote-debugging-port=0`, read the browser's
//! `ws://` address from its stderr, open a page target, then `Page.navigate`,
//! `Runtime.evaluate` (read the DOM, fill and click) and `Page.captureScreenshot`.
//!
//! Every call and every wait has a deadline. The browser is killed on drop.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Longest one CDP call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The Chromium binary, or `None` (reason printed) when it is not installed. With
/// `AGENTMESH_REQUIRE_EXTERNAL=1` (CI) a missing browser panics instead.
pub fn binary() -> Option<PathBuf> {
    crate::external_binary(
        &[
            "/usr/bin/chromium",
            "/usr/bin/chromium-browser",
            "/usr/bin/google-chrome",
        ],
        "chromium",
        "skipping this browser test (.ci/run installs it)",
    )
}

/// A headless browser with one page attached.
pub struct Browser {
    child: Child,
    ws: WebSocketStream<TcpStream>,
    next_id: u64,
    session: Option<String>,
    /// Events received so far (console messages, log entries, ...), oldest first.
    pub events: Vec<Value>,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Launches `binary` headless with a fresh profile and opens a blank page.
    pub async fn launch(binary: &std::path::Path) -> Browser {
        let profile = tempfile::Builder::new()
            .prefix("chromium-")
            .tempdir()
            .unwrap();
        let mut child = Command::new(binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
                "--hide-scrollbars",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let mut seen = Vec::new();
        let url = tokio::time::timeout(CALL_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(i) = line.find("ws://") {
                    return Some(line[i..].trim().to_owned());
                }
                seen.push(line);
            }
            None
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("chromium printed no DevTools address; stderr: {seen:#?}"));
        // Keep draining stderr so the browser never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let ws = connect(&url).await;
        let mut browser = Browser {
            child,
            ws,
            next_id: 0,
            session: None,
            events: Vec::new(),
            _profile: profile,
        };
        let target = browser
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = browser
            .call(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        browser.session = attached["sessionId"].as_str().map(str::to_owned);
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            browser.call(domain, json!({})).await;
        }
        browser
    }

    /// One CDP call on the page's session; panics on a protocol error or after
    /// [`CALL_TIMEOUT`].
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("CDP {method}: no answer within {CALL_TIMEOUT:?}"));
            let text = match next {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(_)) => continue,
                other => panic!("CDP {method}: connection ended: {other:?}"),
            };
            let v: Value = serde_json::from_str(text.as_str()).unwrap();
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    panic!("CDP {method} failed: {e}");
                }
                return v["result"].clone();
            }
            if v.get("method").is_some() {
                self.events.push(v);
            }
        }
    }

    /// Navigates and waits for the load event.
    pub async fn navigate(&mut self, url: &str) {
        let r = self.call("Page.navigate", json!({"url": url})).await;
        assert!(r.get("errorText").is_none(), "navigate {url}: {r}");
        self.wait_for("document loaded", "document.readyState === 'complete'")
            .await;
    }

    /// Evaluates `expr` in the page (promises awaited) and returns its value.
    pub async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("evaluating {expr}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is truthy (returned), panicking with `what` after
    /// [`crate::PATIENCE`].
    pub async fn wait_for(&mut self, what: &str, expr: &str) -> Value {
        let deadline = tokio::time::Instant::now() + crate::PATIENCE;
        loop {
            let v = self.eval(expr).await;
            let truthy =
                !matches!(&v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
            if truthy {
                return v;
            }
            if tokio::time::Instant::now() >= deadline {
                let page = Box::pin(self.eval(
                    "location.href + '\\n' + (document.body ? document.body.innerText.slice(0, 3000) : '')",
                ))
                .await;
                panic!(
                    "browser: timed out waiting for {what} ({expr})\npage: {}\nconsole: {:#?}",
                    page.as_str().unwrap_or_default(),
                    self.console()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sets the viewport (e.g. 375 wide for a phone).
    pub async fn viewport(&mut self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )
        .await;
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine;
        let r = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap_or_default())
            .unwrap()
    }

    /// Console messages and log entries seen so far, as text.
    pub fn console(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e["method"].as_str() {
                Some("Log.entryAdded") => Some(format!(
                    "{}: {}",
                    e["params"]["entry"]["level"], e["params"]["entry"]["text"]
                )),
                Some("Runtime.consoleAPICalled") => Some(format!(
                    "console.{}: {}",
                    e["params"]["type"], e["params"]["args"]
                )),
                Some("Runtime.exceptionThrown") => {
                    Some(format!("exception: {}", e["params"]["exceptionDetails"]))
                }
                _ => None,
            })
            .collect()
    }

    /// Closes the browser.
    pub async fn close(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(CALL_TIMEOUT, self.child.wait()).await;
    }
}

async fn connect(url: &str) -> WebSocketStream<TcpStream> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let rest = url.trim_start_matches("ws://");
    let host = rest.split('/').next().unwrap_or_default();
    let tcp = tokio::time::timeout(CALL_TIMEOUT, TcpStream::connect(host))
        .await
        .unwrap_or_else(|_| panic!("connect to {host} timed out"))
        .unwrap_or_else(|e| panic!("connect to {host}: {e}"));
    let request = url.into_client_request().unwrap();
    let (ws, _) = tokio::time::timeout(CALL_TIMEOUT, tokio_tungstenite::client_async(request, tcp))
        .await
        .unwrap_or_else(|_| panic!("DevTools handshake with {url} timed out"))
        .unwrap_or_else(|e| panic!("DevTools handshake with {url}: {e}"));
    ws
}
