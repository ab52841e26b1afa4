//! Headless Chromium driven over WebDriver (Debian's chromedriver), one
//! driver per test process and one fresh profile per session.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};

use super::support::{free_port, wait_for};

struct Browser {
    url: String,
}

fn browser() -> &'static Browser {
    static BROWSER: OnceLock<Browser> = OnceLock::new();
    BROWSER.get_or_init(|| {
        let port = free_port();
        // The driver must end with this test process. PR_SET_PDEATHSIG
        // follows the spawning *thread*, so a thread that lives as long as
        // the process spawns it and waits on it.
        std::thread::spawn(move || {
            let mut cmd = Command::new("chromedriver");
            unsafe {
                use std::os::unix::process::CommandExt;
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
            let mut driver = cmd
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver is installed by run-tests.sh");
            let _ = driver.wait();
        });
        let url = format!("http://127.0.0.1:{port}");
        wait_for(Duration::from_secs(20), "chromedriver", || {
            ureq::get(&format!("{url}/status")).call().ok()
        });
        Browser { url }
    })
}

/// One browser session (a fresh profile); closed on drop.
pub struct Session {
    base: String,
    _profile: tempfile::TempDir,
}

impl Session {
    pub fn new() -> Session {
        Self::with_args(&[])
    }

    /// A session whose Chromium also gets `extra` arguments
    /// (`--lang=de`, say). Self-signed certificates are accepted: the
    /// gateway under test makes its own.
    pub fn with_args(extra: &[&str]) -> Session {
        let b = browser();
        let profile = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1366,900",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        args.extend(extra.iter().map(|s| s.to_string()));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}
        }}});
        let v = post(&format!("{}/session", b.url), caps);
        let id = v["value"]["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        Session {
            base: format!("{}/session/{id}", b.url),
            _profile: profile,
        }
    }

    pub fn goto_file(&self, page: &Path) {
        self.goto(&format!("file://{}", page.display()));
    }

    pub fn goto(&self, url: &str) {
        post(&format!("{}/url", self.base), json!({ "url": url }));
    }

    fn element(&self, css: &str) -> String {
        let v = post(
            &format!("{}/element", self.base),
            json!({"using": "css selector", "value": css}),
        );
        v["value"]
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(|e| e.as_str())
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    pub fn type_into(&self, css: &str, text: &str) {
        self.on_element(css, "value", json!({ "text": text }));
    }

    pub fn click(&self, css: &str) {
        self.on_element(css, "click", json!({}));
    }

    /// Acts on the element `css` finds. A page that was still loading when
    /// it was found can replace it before the action ("stale element
    /// reference"): it is found again, a few times.
    fn on_element(&self, css: &str, action: &str, body: Value) {
        for _ in 0..5 {
            let e = self.element(css);
            match try_post(&format!("{}/element/{e}/{action}", self.base), &body) {
                Ok(_) => return,
                Err(v) if v["value"]["error"] == "stale element reference" => {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                Err(v) => panic!("{action} on {css}: {v}"),
            }
        }
        panic!("{action} on {css}: the element went stale five times");
    }

    pub fn script(&self, script: &str) -> Value {
        post(
            &format!("{}/execute/sync", self.base),
            json!({"script": script, "args": []}),
        )["value"]
            .clone()
    }

    /// The page's visible text.
    pub fn text(&self) -> String {
        self.script("return document.body.innerText;")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The current address.
    pub fn url(&self) -> String {
        self.script("return location.href;")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Saves a PNG of the window to `path`.
    pub fn screenshot(&self, path: &Path) {
        use base64::Engine;
        let mut response = ureq::get(&format!("{}/screenshot", self.base))
            .call()
            .expect("screenshot");
        let v: Value = response.body_mut().read_json().unwrap();
        let png = base64::engine::general_purpose::STANDARD
            .decode(v["value"].as_str().expect("base64 PNG"))
            .unwrap();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = ureq::delete(&self.base).call();
    }
}

fn post(url: &str, body: Value) -> Value {
    try_post(url, &body).unwrap_or_else(|v| panic!("POST {url} {body}: {v}"))
}

/// The answer's JSON: `Err` unless the status is 200.
fn try_post(url: &str, body: &Value) -> Result<Value, Value> {
    let mut response = ureq::post(url)
        .config()
        .http_status_as_error(false)
        .build()
        .send_json(body)
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let v: Value = response.body_mut().read_json().unwrap();
    if response.status() == 200 {
        Ok(v)
    } else {
        Err(v)
    }
}
