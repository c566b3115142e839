//! Headless Chromium for the tests that open a web page (Debian `chromium`), driven by
//! chromedriver (Debian `chromium-driver`, the same version) over the W3C WebDriver protocol:
//! JSON over HTTP to chromedriver on loopback, through attohttpc, as the rest of the tests talk
//! HTTP. No Node.js, no test runner of its own: a [`Browser`] is one chromedriver process and
//! one browser session in a fresh profile directory, with the flags that keep Chromium from
//! reaching Google (no background networking, component updates, sync or QUIC). `Drop` ends
//! the session (which closes Chromium) before chromedriver is stopped and the profile removed.

use super::process::Proc;
use super::{SHORT, TempDir, require_program};
use base64::Engine as _;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The browser chromedriver starts.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// The key of a web element reference in WebDriver's JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long one attempt at a new session (Chromium's start) may take.
const SESSION_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts at a new session, each with its own chromedriver and profile.
const SESSION_ATTEMPTS: u32 = 3;

/// A page element, as WebDriver names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element(String);

/// One chromedriver and the headless Chromium session it runs.
pub struct Browser {
    /// `http://127.0.0.1:PORT/session/ID`
    session: String,
    driver: Proc,
    _profile: TempDir,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and a headless Chromium session in a new
    /// profile directory, with a window of `width` x `height` pixels. Chromium's first start
    /// can take most of a minute on a loaded machine: a session that does not come up in
    /// [`SESSION_TIMEOUT`] is tried again with a new chromedriver, up to [`SESSION_ATTEMPTS`]
    /// times.
    pub fn start(name: &str, width: u32, height: u32) -> Browser {
        let mut failures = Vec::new();
        for attempt in 1..=SESSION_ATTEMPTS {
            match Browser::try_start(name, width, height) {
                Ok(browser) => return browser,
                Err(e) => {
                    eprintln!("{name}: attempt {attempt} of {SESSION_ATTEMPTS}: {e}");
                    failures.push(e);
                }
            }
        }
        panic!("chromedriver: no session: {}", failures.join("\n"));
    }

    fn try_start(name: &str, width: u32, height: u32) -> Result<Browser, String> {
        require_program("chromedriver", "chromium-driver");
        assert!(
            Path::new(CHROMIUM).is_file(),
            "{CHROMIUM} is not installed (Debian package chromium): run scripts/test, which \
             installs everything the integration tests need"
        );
        let profile = TempDir::new("chromium-profile");
        let mut cmd = Command::new("chromedriver");
        cmd.args(["--port=0", "--log-level=WARNING"]);
        let mut driver = Proc::spawn(&format!("chromedriver for {name}"), cmd);
        let port = driver.wait_for_line(SHORT, "chromedriver's port", |l| {
            l.split("started successfully on port ")
                .nth(1)?
                .trim_end_matches('.')
                .parse::<u16>()
                .ok()
        });
        let base = format!("http://127.0.0.1:{port}");
        let args = [
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            format!("--user-data-dir={}", profile.path().display()),
            format!("--window-size={width},{height}"),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let reply = request(
            "POST",
            &format!("{base}/session"),
            Some(&caps),
            SESSION_TIMEOUT,
        )
        .map_err(|e| format!("{e}\n{}", driver.log_text()))?;
        let id = reply["sessionId"]
            .as_str()
            .ok_or_else(|| format!("no sessionId in {reply}"))?;
        Ok(Browser {
            session: format!("{base}/session/{id}"),
            driver,
            _profile: profile,
        })
    }

    /// Sends one WebDriver command (`path` under the session); returns its `value`.
    fn command(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        request(method, &format!("{}{path}", self.session), body, SHORT)
            .unwrap_or_else(|e| panic!("webdriver {method} {path}: {e}"))
    }

    /// Loads `url` and waits for its `load` event.
    pub fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(&json!({ "url": url })));
    }

    /// Every element matching the CSS `selector`, in document order.
    pub fn find_all(&self, selector: &str) -> Vec<Element> {
        let found = self.command(
            "POST",
            "/elements",
            Some(&json!({"using": "css selector", "value": selector})),
        );
        found
            .as_array()
            .unwrap_or_else(|| panic!("elements {selector:?}: not a list: {found}"))
            .iter()
            .map(|e| {
                Element(
                    e[ELEMENT_KEY]
                        .as_str()
                        .unwrap_or_else(|| panic!("elements {selector:?}: {e}"))
                        .to_owned(),
                )
            })
            .collect()
    }

    /// The rendered text of `element` (what a user reads).
    pub fn text(&self, element: &Element) -> String {
        let text = self.command("GET", &format!("/element/{}/text", element.0), None);
        text.as_str().unwrap_or_default().to_owned()
    }

    /// The text of the first element matching `selector` inside `within`, if there is one.
    pub fn text_in(&self, within: &Element, selector: &str) -> Option<String> {
        let found = self.command(
            "POST",
            &format!("/element/{}/elements", within.0),
            Some(&json!({"using": "css selector", "value": selector})),
        );
        let first = found.as_array()?.first()?[ELEMENT_KEY].as_str()?.to_owned();
        Some(self.text(&Element(first)))
    }

    /// Clicks `element` as a user would (scrolled into view, at its centre).
    pub fn click(&self, element: &Element) {
        self.command(
            "POST",
            &format!("/element/{}/click", element.0),
            Some(&json!({})),
        );
    }

    /// Clicks the first element matching `selector`; panics when there is none.
    pub fn click_on(&self, selector: &str) {
        let found = self.find_all(selector);
        let first = found
            .first()
            .unwrap_or_else(|| panic!("nothing on the page matches {selector:?}"));
        self.click(first);
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page; returns its value.
    pub fn execute(&self, script: &str, args: Value) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            Some(&json!({"script": script, "args": args})),
        )
    }

    /// The page's visible text (for failure messages).
    pub fn page_text(&self) -> String {
        self.execute(
            "return document.body ? document.body.innerText : '';",
            json!([]),
        )
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Polls `f` every 200 ms until it returns `Some`; panics naming `what`, with the page's
    /// text, once `timeout` has passed.
    pub fn wait_for<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&Browser) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "the page did not show {what} within {timeout:?}; it reads:\n{}",
                self.page_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Saves a PNG of the window to `path`; returns its size in bytes.
    pub fn screenshot(&self, path: &Path) -> usize {
        let encoded = self.command("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().expect("a base64 string"))
            .expect("the screenshot is base64");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        std::fs::write(path, &png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        png.len()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closes Chromium; chromedriver itself is stopped when `driver` drops.
        if let Err(e) = request("DELETE", &self.session, None, SHORT) {
            eprintln!("{}: ending the session: {e}", self.driver.name());
        }
    }
}

/// One WebDriver exchange: the reply's `value`, or the error it names (WebDriver errors come as
/// `{"value": {"error", "message"}}` with a non-200 status).
fn request(
    method: &str,
    url: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<Value, String> {
    let builder = match method {
        "GET" => attohttpc::get(url),
        "POST" => attohttpc::post(url),
        "DELETE" => attohttpc::delete(url),
        other => panic!("no WebDriver method {other}"),
    }
    .timeout(timeout)
    // Loopback only: no proxy from the environment.
    .proxy_settings(attohttpc::ProxySettings::builder().build());
    let sent = match body {
        Some(body) => builder
            .header("Content-Type", "application/json")
            .bytes(serde_json::to_vec(body).expect("encode a WebDriver command"))
            .send(),
        None => builder.send(),
    };
    let resp = sent.map_err(|e| format!("{method} {url}: {e}"))?;
    let status = resp.status().as_u16();
    let text = resp.text().map_err(|e| format!("{method} {url}: {e}"))?;
    let reply: Value = serde_json::from_str(&text)
        .map_err(|e| format!("{method} {url}: not JSON ({e}): {text}"))?;
    if status != 200 {
        return Err(format!(
            "{method} {url}: {status} {}: {}",
            reply["value"]["error"], reply["value"]["message"]
        ));
    }
    Ok(reply["value"].clone())
}
