//! The web console and HTTP API of a real gateway that relays real mail
//! to the Postfix destination: roles and their limits over HTTPS, CSRF,
//! login slow-down, cookie flags, escaping of hostile values, metrics read
//! by a Prometheus parser, and headless Chromium walking every page as each
//! role (screenshots under target/artifacts/console/).

#[path = "support/browser.rs"]
mod browser;
mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use support::*;

const T: Duration = Duration::from_secs(30);

/// The accounts every test makes: (name, role, tenant).
const ACCOUNTS: [(&str, &str, Option<&str>); 4] = [
    ("ann", "admin", None),
    ("oscar", "operator", None),
    ("audrey", "auditor", None),
    ("tom", "tenant-admin", Some("b")),
];
const SECRET: &str = "console password 1";

/// A gateway with the console on, two tenants (relay clients are
/// `default`, alice by AUTH is `b`) and the four accounts.
fn gateway() -> (Gateway, u16) {
    let port = free_port();
    let gw = Gateway::start_with(|dir, relay, submission| {
        // The key that signs chain heads, the one ending a log download too.
        let key = dir.join("heads.key");
        let out = std::process::Command::new(bin())
            .args(["report", "keygen", "--out", key.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", output_text(&out));
        format!(
            "{}\n[report]\nsigning_key = \"{}\"\n\n[console]\naddress = \"127.0.0.1:{port}\"\n\
             tlsrpt_receive = true\nmta_sts_mode = \"enforce\"\n\n\
             [[tenant]]\nid = \"default\"\nnetworks = [\"127.0.0.0/8\"]\n\n\
             [[tenant]]\nid = \"b\"\nusers = [\"alice\"]\n{}",
            base_config(dir, relay, submission),
            key.display(),
            policy_dir(
                dir,
                &[("exceptions.toml", &plaintext_exception("dest.test"))]
            )
        )
    });
    for (name, role, tenant) in ACCOUNTS {
        let mut args = vec!["account", "add", name, "--role", role];
        if let Some(t) = tenant {
            args.extend(["--tenant", t]);
        }
        let out = with_stdin(
            std::process::Command::new(bin())
                .args(["--config", gw.config.to_str().unwrap()])
                .args(&args),
            &format!("{SECRET}\n"),
        );
        assert!(out.status.success(), "{}", output_text(&out));
    }
    wait_for(T, "the console to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    (gw, port)
}

/// A response, its headers flattened (repeated ones joined by "\n").
struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

/// An HTTPS client with a cookie jar of its own.
struct Web {
    base: String,
    client: reqwest::Client,
    rt: tokio::runtime::Runtime,
    cookies: HashMap<String, String>,
    bearer: Option<String>,
}

impl Web {
    fn new(port: u16) -> Web {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Web {
            base: format!("https://127.0.0.1:{port}"),
            // The gateway's own self-signed certificate.
            client: reqwest::Client::builder()
                .danger_accept_invalid_certs(true)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            cookies: HashMap::new(),
            bearer: None,
        }
    }

    fn send(&mut self, method: &str, path: &str, form: Option<&[(&str, &str)]>) -> Reply {
        let mut req = self
            .client
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        if !self.cookies.is_empty() {
            let jar: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            req = req.header("cookie", jar.join("; "));
        }
        if let Some(token) = &self.bearer {
            req = req.bearer_auth(token);
        }
        if let Some(form) = form {
            req = req
                .header("content-type", "application/x-www-form-urlencoded")
                .body(serde_urlencoded::to_string(form).unwrap());
        }
        let (status, headers, body) = self.rt.block_on(async {
            let res = req.send().await.expect("the console answers");
            let status = res.status().as_u16();
            let mut headers: HashMap<String, String> = HashMap::new();
            for (k, v) in res.headers() {
                let v = v.to_str().unwrap_or_default().to_string();
                headers
                    .entry(k.as_str().to_string())
                    .and_modify(|old| {
                        old.push('\n');
                        old.push_str(&v)
                    })
                    .or_insert(v);
            }
            (status, headers, res.text().await.unwrap_or_default())
        });
        for line in headers
            .get("set-cookie")
            .map(|s| s.lines().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            let pair = line.split(';').next().unwrap_or_default();
            if let Some((k, v)) = pair.split_once('=') {
                if v.is_empty() {
                    self.cookies.remove(k);
                } else {
                    self.cookies.insert(k.to_string(), v.to_string());
                }
            }
        }
        Reply {
            status,
            headers,
            body,
        }
    }

    fn get(&mut self, path: &str) -> Reply {
        self.send("GET", path, None)
    }

    fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Reply {
        self.send("POST", path, Some(form))
    }

    /// Logs in through the form; the reply to the form's POST.
    fn login(&mut self, name: &str, password: &str) -> Reply {
        let page = self.get("/login");
        let token = csrf(&page.body);
        self.post(
            "/login",
            &[("name", name), ("password", password), ("csrf", &token)],
        )
    }

    /// The CSRF token of the last page that had a form.
    fn csrf(&mut self) -> String {
        csrf(&self.get("/").body)
    }
}

fn csrf(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    page[at..at + 64].to_string()
}

/// Messages: one delivered and one deferred for tenant `default`, one
/// delivered for tenant `b`; returns their queue ids. The deferred one's
/// sender is a quoted local part carrying markup.
fn traffic(gw: &Gateway) -> (String, String, String) {
    let delivered = relay_one(
        gw.relay,
        "sender@src.test",
        &["rcpt-a@dest.test"],
        message(&unique("console"), "hello\r\n").as_bytes(),
    );
    let deferred = relay_one(
        gw.relay,
        "\"<script>alert(1)</script>\"@src.test",
        &["someone@unreachable.test"],
        "From: x@src.test\r\nSubject: <b>bold</b>\r\nMessage-ID: <\"><img src=x>@src.test>\r\n\r\nbody\r\n".as_bytes(),
    );
    let (ok, transcript) = swaks_auth(
        &format!("127.0.0.1:{}", gw.submission),
        "rcpt-b@dest.test",
        "PLAIN",
        &[],
    );
    assert!(ok, "{transcript}");
    let b = transcript
        .lines()
        .filter(|l| l.contains("<~  250") && l.contains("queued as"))
        .filter_map(|l| l.trim().rsplit(' ').next())
        .next_back()
        .expect("a queue id from the submission")
        .to_string();
    (delivered, deferred, b)
}

/// Waits until a search as `web` finds `n` rows for `query`.
fn wait_rows(web: &mut Web, query: &str, n: usize) -> Vec<Value> {
    wait_for(T, "the console index to catch up", || {
        let r = web.get(&format!("/api/v1/transactions?{query}"));
        assert_eq!(r.status, 200, "{}", r.body);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        let rows = v["rows"].as_array().cloned().unwrap_or_default();
        (rows.len() >= n).then_some(rows)
    })
}

/// The console records of a message, from the API, as (account, action).
fn console_records(web: &mut Web, id: &str) -> Vec<(String, String)> {
    let r = web.get(&format!("/api/v1/messages/{id}"));
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    v["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "console")
        .map(|r| {
            (
                r["data"]["account"].as_str().unwrap().to_string(),
                r["data"]["action"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn each_role_sees_and_does_only_what_it_may() {
    let (gw, port) = gateway();
    let (delivered, deferred, of_b) = traffic(&gw);
    let mut admin = Web::new(port);
    assert_eq!(admin.login("ann", SECRET).status, 303);
    wait_rows(&mut admin, "status=sent", 2);
    wait_rows(&mut admin, "status=deferred", 1);

    // The session cookie carries its flags; the pages their headers.
    let mut fresh = Web::new(port);
    let r = fresh.login("ann", SECRET);
    let cookie = r.headers["set-cookie"]
        .lines()
        .find(|c| c.starts_with("__Host-sealgate="))
        .expect("a session cookie")
        .to_string();
    for flag in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(flag), "{flag} in {cookie}");
    }
    let page = admin.get("/");
    assert_eq!(page.status, 200);
    let csp = &page.headers["content-security-policy"];
    assert!(
        csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );

    // Hostile values are text on the page, never markup.
    let page = admin.get(&format!("/transactions?queue_id={deferred}"));
    assert!(
        page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("<script"), "no script element");
    let page = admin.get(&format!("/message/{deferred}"));
    assert_eq!(page.status, 200);
    assert!(
        !page.body.contains("<script") && !page.body.contains("<img"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("&lt;img src=x&gt;"),
        "the Message-ID as text"
    );

    // The auditor reads everything and changes nothing.
    let mut auditor = Web::new(port);
    assert_eq!(auditor.login("audrey", SECRET).status, 303);
    assert_eq!(auditor.get(&format!("/message/{of_b}")).status, 200);
    assert_eq!(auditor.get("/queue").status, 200);
    let token = auditor.csrf();
    for path in [
        format!("/queue/{deferred}/retry"),
        format!("/queue/{deferred}/hold"),
        format!("/queue/{deferred}/release"),
        format!("/queue/{deferred}/bounce"),
        format!("/queue/{deferred}/delete"),
        "/domains/dest.test/confirm".to_string(),
    ] {
        let r = auditor.post(&path, &[("csrf", &token), ("reason", "audit")]);
        assert_eq!(r.status, 403, "{path}: {}", r.body);
    }

    // The current search downloads, every page of it.
    let csv = admin.get("/transactions/export?format=csv&status=sent");
    assert_eq!(csv.status, 200);
    assert!(csv.body.starts_with("at,tenant,queue_id,"), "{}", csv.body);
    assert_eq!(csv.body.lines().count(), 3, "{}", csv.body);
    let jsonl = admin.get("/transactions/export?format=jsonl");
    let rows: Vec<Value> = jsonl
        .body
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    // Two sent, and the deferred message's attempts so far.
    assert!(rows.len() >= 3, "{}", jsonl.body);
    assert!(
        rows.iter().all(|r| r["tenant"].is_string()),
        "{}",
        jsonl.body
    );

    // The tenant-admin sees its tenant only.
    let mut tenant = Web::new(port);
    assert_eq!(tenant.login("tom", SECRET).status, 303);
    let csv = tenant.get("/transactions/export?format=csv");
    assert!(
        csv.body.contains("rcpt-b@dest.test") && !csv.body.contains("rcpt-a@dest.test"),
        "{}",
        csv.body
    );
    assert_eq!(tenant.get(&format!("/message/{delivered}")).status, 403);
    assert_eq!(
        tenant.get(&format!("/api/v1/messages/{deferred}")).status,
        403
    );
    assert_eq!(tenant.get(&format!("/message/{of_b}")).status, 200);
    let rows = wait_rows(&mut tenant, "", 1);
    assert!(rows.iter().all(|r| r["tenant"] == "b"), "{rows:?}");
    let queue = tenant.get("/api/v1/queue");
    assert!(!queue.body.contains(&deferred), "{}", queue.body);
    let token = tenant.csrf();
    let r = tenant.post(&format!("/queue/{deferred}/retry"), &[("csrf", &token)]);
    assert_eq!(r.status, 403, "{}", r.body);

    // A form without the session's CSRF token is refused.
    let mut operator = Web::new(port);
    assert_eq!(operator.login("oscar", SECRET).status, 303);
    let r = operator.post(&format!("/queue/{deferred}/retry"), &[]);
    assert_eq!(r.status, 403, "{}", r.body);
    let r = operator.post(
        &format!("/queue/{deferred}/retry"),
        &[("csrf", &"0".repeat(64))],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    // Nothing of the refused requests reached the log.
    let index = wait_for(T, "the console records", || {
        let v = console_records(&mut admin, &deferred);
        Some(v)
    });
    assert!(index.is_empty(), "{index:?}");

    // With it the operator's retry is done and logged with who did it.
    let token = operator.csrf();
    let r = operator.post(&format!("/queue/{deferred}/retry"), &[("csrf", &token)]);
    assert_eq!(r.status, 303, "{}", r.body);
    let records = wait_for(T, "the retry in the log", || {
        let v = console_records(&mut admin, &deferred);
        (!v.is_empty()).then_some(v)
    });
    assert_eq!(records, vec![("oscar".to_string(), "retry".to_string())]);

    // Held, it shows as held and waits; released, it is due again.
    let r = operator.post(
        &format!("/queue/{deferred}/hold"),
        &[("csrf", &token), ("reason", "asking the sender")],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let queue = operator.get("/api/v1/queue");
    let listed: Value = serde_json::from_str(&queue.body).unwrap();
    let held = listed["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == deferred.as_str())
        .expect("still queued");
    assert_eq!(held["held"], true, "{held}");
    let r = operator.post(&format!("/queue/{deferred}/hold"), &[("csrf", &token)]);
    assert_eq!(r.status, 409, "held twice: {}", r.body);
    let r = operator.post(&format!("/queue/{deferred}/release"), &[("csrf", &token)]);
    assert_eq!(r.status, 303, "{}", r.body);
    // A bounce needs a reason; with one, the message leaves the queue.
    let r = operator.post(&format!("/queue/{deferred}/bounce"), &[("csrf", &token)]);
    assert_eq!(r.status, 400, "{}", r.body);
    let r = operator.post(
        &format!("/queue/{deferred}/bounce"),
        &[("csrf", &token), ("reason", "the sender recalled it")],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let queue = operator.get("/api/v1/queue");
    assert!(!queue.body.contains(&deferred), "{}", queue.body);
    let records = wait_for(T, "the hold, release and bounce in the log", || {
        let v = console_records(&mut admin, &deferred);
        (v.len() >= 4).then_some(v)
    });
    let actions: Vec<&str> = records.iter().map(|(_, a)| a.as_str()).collect();
    assert_eq!(
        actions,
        ["retry", "hold", "release", "bounce"],
        "{records:?}"
    );

    // A bearer token works for the API; the auditor's may not act.
    let token = gw.cli(&["account", "token", "audrey"]);
    assert!(token.status.success(), "{}", output_text(&token));
    let mut api = Web::new(port);
    api.bearer = Some(String::from_utf8_lossy(&token.stdout).trim().to_string());
    assert_eq!(api.get("/api/v1/dashboard").status, 200);
    assert_eq!(
        api.post(&format!("/api/v1/queue/{deferred}/retry"), &[])
            .status,
        403
    );
    api.bearer = Some("sgt_not-a-token".into());
    assert_eq!(api.get("/api/v1/dashboard").status, 401);
    // A console session acts through the API only with its CSRF token.
    let forged = admin.post(&format!("/api/v1/queue/{deferred}/hold"), &[]);
    assert!(
        forged.status == 403 && forged.body.contains("CSRF"),
        "{} {}",
        forged.status,
        forged.body
    );

    // The report chain still verifies with the console's records in it.
    let out = gw.cli(&["report", "verify"]);
    assert!(out.status.success(), "{}", output_text(&out));
}

#[test]
fn wrong_passwords_are_slowed_down_and_metrics_parse() {
    let (gw, port) = gateway();
    let mut web = Web::new(port);
    let mut statuses = Vec::new();
    for _ in 0..11 {
        let r = web.login("ann", "not the password");
        if r.status == 429 {
            let wait: u64 = r.headers["retry-after"].parse().unwrap();
            assert!((1..=60).contains(&wait), "{wait}");
        }
        statuses.push(r.status);
    }
    assert_eq!(&statuses[..3], &[401, 401, 401], "{statuses:?}");
    assert!(statuses[3..].iter().all(|s| *s == 429), "{statuses:?}");
    // Even the right password waits its turn, and then works.
    assert_eq!(web.login("ann", SECRET).status, 429);
    let done = wait_for(Duration::from_secs(70), "the wait to end", || {
        std::thread::sleep(Duration::from_millis(500));
        let r = web.login("ann", SECRET);
        (r.status != 429).then_some(r.status)
    });
    assert_eq!(done, 303);

    // A second factor: the password alone, or with a wrong code, is not enough.
    let out = gw.cli(&["account", "totp", "oscar"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let uri = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let totp = totp_rs::TOTP::from_url(&uri).expect("an otpauth URI");
    let mut second = Web::new(port);
    assert_eq!(second.login("oscar", SECRET).status, 401);
    let code = totp.generate_current().unwrap();
    let wrong = format!(
        "{:06}",
        (code.parse::<u32>().unwrap() + 500_000) % 1_000_000
    );
    for (code, status) in [(wrong.as_str(), 401), (code.as_str(), 303)] {
        let page = second.get("/login");
        let token = csrf(&page.body);
        let r = second.post(
            "/login",
            &[
                ("name", "oscar"),
                ("password", SECRET),
                ("code", code),
                ("csrf", &token),
            ],
        );
        assert_eq!(r.status, status, "code {code}: {}", r.body);
    }

    relay_one(
        gw.relay,
        "sender@src.test",
        &["metrics@dest.test"],
        message(&unique("metrics"), "hi\r\n").as_bytes(),
    );
    wait_rows(&mut web, "recipient=metrics@dest.test&status=sent", 1);
    let mut anonymous = Web::new(port);
    let r = anonymous.get("/metrics");
    assert_eq!(r.status, 200);
    let lines = r.body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    let sent: f64 = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "sealgate_recipient_attempts_total")
        .filter(|s| s.labels.get("status") == Some("sent"))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum();
    assert!(sent >= 1.0, "{}", r.body);
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "sealgate_log_chain_intact"),
        "{}",
        r.body
    );
    // The delivery's STARTTLS handshake and its DNS-free route: a
    // handshake observed, as a histogram the parser reads.
    let handshakes: f64 = scrape
        .samples
        .iter()
        .filter(|s| s.metric.starts_with("sealgate_tls_handshake_seconds"))
        .map(|s| match &s.value {
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            _ => 0.0,
        })
        .fold(0.0, f64::max);
    assert!(handshakes >= 1.0, "{}", r.body);
    assert_eq!(anonymous.get("/healthz").status, 200);
    assert_eq!(anonymous.get("/readyz").status, 200);
    // The pages themselves are not open.
    assert_eq!(anonymous.get("/").status, 303);
    assert_eq!(anonymous.get("/api/v1/transactions").status, 401);
}

/// Where the screenshots go: kept after the run for people to look at.
fn artifacts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/artifacts/console")
}

#[test]
fn chromium_walks_every_page_as_each_role() {
    let (gw, port) = gateway();
    let (_, deferred, of_b) = traffic(&gw);
    let base = format!("https://127.0.0.1:{port}");
    // A report another sender posted, for the Reports page.
    assert_eq!(post_report(port, &tlsrpt_gzip("shot-1")).status, 200);
    let mut check = Web::new(port);
    check.login("ann", SECRET);
    wait_rows(&mut check, "status=sent", 2);

    for (name, _, tenant) in ACCOUNTS {
        let s = browser::Session::new();
        s.goto(&format!("{base}/"));
        assert!(s.url().ends_with("/login"), "{}", s.url());
        s.type_into("input[name=name]", name);
        s.type_into("input[name=password]", SECRET);
        s.click("form.login button");
        wait_for(T, "the dashboard", || {
            s.text()
                .contains("sealgate")
                .then_some(())
                .filter(|_| !s.url().ends_with("/login"))
        });
        let shot = |page: &str| s.screenshot(&artifacts().join(format!("{name}-{page}.png")));
        assert!(s.text().contains(name), "{}", s.text());
        shot("dashboard");
        s.goto(&format!("{base}/transactions"));
        shot("transactions");
        // A search by recipient domain.
        s.type_into("input[name=domain]", "dest.test");
        s.click("form.filter button");
        wait_for(T, "the search", || {
            s.url().contains("domain=dest.test").then_some(())
        });
        let text = s.text();
        match tenant {
            None => assert!(
                text.contains("rcpt-a@dest.test") && text.contains("rcpt-b@dest.test"),
                "{text}"
            ),
            Some(_) => assert!(
                text.contains("rcpt-b@dest.test") && !text.contains("rcpt-a@dest.test"),
                "{text}"
            ),
        }
        shot("search");
        // A message's evidence.
        s.goto(&format!("{base}/message/{of_b}"));
        let text = s.text();
        assert!(
            text.contains("ATTEMPT") || text.contains("attempt"),
            "{text}"
        );
        assert!(
            text.contains("starttls") && text.contains("Verdict"),
            "{text}"
        );
        shot("message");
        s.goto(&format!("{base}/queue"));
        shot("queue");
        s.goto(&format!("{base}/domains"));
        shot("domains");
        s.goto(&format!("{base}/policies"));
        assert!(s.text().contains("normal"), "{}", s.text());
        shot("policies");
        s.goto(&format!("{base}/reports"));
        shot("reports");
        if name == "oscar" {
            // The operator retries the deferred message from the queue page.
            s.goto(&format!("{base}/queue"));
            assert!(s.text().contains(&deferred), "{}", s.text());
            s.click("button.retry");
            wait_for(T, "back on the queue page", || {
                s.url().ends_with("/queue").then_some(())
            });
            // Held from the page, it says so; released, it is gone again.
            s.click("button.hold");
            wait_for(T, "the message shown held", || {
                s.text().contains("held").then_some(())
            });
            shot("queue-held");
            s.click("button.release");
            wait_for(T, "the hold released", || {
                (s.script("return document.querySelectorAll('span.held').length;") == 0)
                    .then_some(())
            });
            let records = wait_for(T, "the retry in the log", || {
                let v = console_records(&mut check, &deferred);
                v.iter()
                    .any(|(a, x)| a == "oscar" && x == "retry")
                    .then_some(v)
            });
            assert!(!records.is_empty());
        }
        if name == "audrey" {
            s.goto(&format!("{base}/queue"));
            assert_eq!(
                s.script("return document.querySelectorAll('form[action$=\"/retry\"]').length;"),
                0,
                "no action buttons for the auditor"
            );
        }
        // German, as the opener page offers it.
        if name == "ann" {
            s.goto(&format!("{base}/lang/de"));
            wait_for(T, "the German dashboard", || {
                s.text().contains("Übersicht").then_some(())
            });
            shot("dashboard-de");
        }
    }
}

#[test]
fn the_api_keeps_to_its_openapi_document() {
    let (gw, port) = gateway();
    traffic(&gw);
    let token = gw.cli(&["account", "token", "ann"]);
    assert!(token.status.success(), "{}", output_text(&token));
    let token = String::from_utf8_lossy(&token.stdout).trim().to_string();
    let schemathesis = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/tmp/peers/schemathesis/bin/schemathesis");
    let out = std::process::Command::new(&schemathesis)
        .args([
            "run",
            &format!("https://127.0.0.1:{port}/api/v1/openapi.json"),
            "--header",
            &format!("Authorization: Bearer {token}"),
            "--checks",
            "all",
            "--max-examples",
            "25",
            "--seed",
            "1",
            // The gateway's own self-signed certificate.
            "--tls-verify",
            "false",
            "--no-color",
        ])
        // Its cache of crashes stays out of the tree.
        .current_dir(gw.dir.path())
        .output()
        .expect("schemathesis is installed by run-tests.sh");
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    // Every operation of the document was exercised.
    assert!(text.contains("6 selected / 6 total"), "{text}");
    assert!(!text.contains('❌'), "{text}");
}

#[test]
fn an_admin_edits_the_policy_and_a_broken_file_is_refused() {
    let (gw, port) = gateway();
    let file = gw.dir.path().join("policies/default.toml");
    let original = std::fs::read_to_string(&file).unwrap();
    let mut admin = Web::new(port);
    admin.login("ann", SECRET);
    let page = admin.get("/policies");
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("<textarea name=\"text\""),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("Approved by") && page.body.contains("test peer without TLS"),
        "the exception"
    );
    let token = csrf(&page.body);

    // The auditor and the tenant-admin may read what applies, not edit.
    for name in ["audrey", "tom"] {
        let mut web = Web::new(port);
        web.login(name, SECRET);
        let page = web.get("/policies");
        assert_eq!(page.status, 200);
        assert!(!page.body.contains("<textarea"), "{name}");
        let t = csrf(&page.body);
        let r = web.post(
            "/policies",
            &[("csrf", &t), ("file", "default.toml"), ("text", "")],
        );
        assert_eq!(r.status, 403, "{name}: {}", r.body);
    }
    assert_eq!(
        Web::new(port).get("/policies").status,
        303,
        "not without logging in"
    );

    // A broken file is refused with its line; the old one stays.
    let broken = original.replace("[classes.high]", "[classes.high\nrequired = 1");
    let r = admin.post(
        "/policies",
        &[
            ("csrf", &token),
            ("file", "default.toml"),
            ("text", &broken),
        ],
    );
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        r.body.contains("default.toml:"),
        "file and line: {}",
        r.body
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), original);
    // So is one that conflicts with another file of the directory.
    let conflicting = format!(
        "default_class = \"high\"\n{}",
        plaintext_exception("dest.test")
    );
    let r = admin.post(
        "/policies",
        &[
            ("csrf", &token),
            ("file", "exceptions.toml"),
            ("text", &conflicting),
        ],
    );
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("already set by"), "{}", r.body);
    // A form cannot name another file.
    let r = admin.post(
        "/policies",
        &[
            ("csrf", &token),
            ("file", "../sealgate.toml"),
            ("text", &original),
        ],
    );
    assert_eq!(r.status, 400, "{}", r.body);

    // A good edit is written, in force at once, and logged.
    let edited = original.replace(
        "required = \"encrypted\"          # TLS 1.2+",
        "required = \"authenticated\"      # TLS 1.2+",
    );
    assert_ne!(edited, original);
    let r = admin.post(
        "/policies",
        &[
            ("csrf", &token),
            ("file", "default.toml"),
            ("text", &edited),
        ],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), edited);
    let page = admin.get("/policies");
    assert!(
        page.body
            .contains("<td>normal (default)</td><td>authenticated</td>"),
        "{}",
        page.body
    );
    let out = gw.cli(&["report", "export", "--format", "json"]);
    let log = output_text(&out);
    assert!(
        log.lines().any(|l| l.contains("\"kind\":\"console\"")
            && l.contains("\"action\":\"policy\"")
            && l.contains("ann")),
        "{log}"
    );
}

#[test]
fn reports_walk_a_chain_and_download_a_signed_log() {
    let (gw, port) = gateway();
    traffic(&gw);
    let mut admin = Web::new(port);
    admin.login("ann", SECRET);
    wait_rows(&mut admin, "status=sent", 2);
    let page = admin.get("/reports");
    assert_eq!(page.status, 200);
    let token = csrf(&page.body);
    let r = admin.post(
        "/reports/verify",
        &[("csrf", &token), ("tenant", "default")],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let walked = wait_for(T, "the walk to end", || {
        let page = admin.get("/reports");
        let running = page.headers.contains_key("refresh") || page.body.contains("<progress");
        (!running && (page.body.contains("intact") || page.body.contains("BROKEN")))
            .then_some(page.body)
    });
    assert!(walked.contains("intact"), "{walked}");

    // The download ends in a head that the gateway's key signed and that
    // matches the chain.
    let download = admin.get("/reports/export?tenant=default");
    assert_eq!(download.status, 200);
    let lines: Vec<&str> = download.body.lines().collect();
    let (head, records) = lines.split_last().expect("lines");
    assert!(head.starts_with("chain-head v1 tenant=default "), "{head}");
    let last: Value = serde_json::from_str(records.last().expect("records")).unwrap();
    assert!(
        head.contains(&format!("hash={}", last["hash"].as_str().unwrap())),
        "{head}"
    );
    for line in records {
        let r: Value = serde_json::from_str(line).expect("a JSON line");
        assert!(r["prev"].is_string() && r["hash"].is_string(), "{line}");
    }
    let file = gw.dir.path().join("download.jsonl");
    std::fs::write(&file, &download.body).unwrap();
    let key = gw.dir.path().join("heads.key.pub");
    let out = gw.cli(&[
        "report",
        "verify",
        "--heads",
        file.to_str().unwrap(),
        "--public-key",
        key.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", output_text(&out));

    // A tenant-admin neither walks nor downloads another tenant's log.
    let mut tenant = Web::new(port);
    tenant.login("tom", SECRET);
    let page = tenant.get("/reports");
    assert_eq!(page.status, 200);
    assert!(!page.body.contains(">default<"), "{}", page.body);
    let t = csrf(&page.body);
    assert_eq!(
        tenant
            .post("/reports/verify", &[("csrf", &t), ("tenant", "default")])
            .status,
        403
    );
    assert_eq!(tenant.get("/reports/export?tenant=default").status, 403);
}

/// Two nodes on one PostgreSQL database share the console's accounts and
/// sessions: an account added on one logs in on the other, a session
/// started on one is good on the other until it ends on either, and an
/// API token made on one works on both.
#[test]
fn in_a_cluster_accounts_sessions_and_tokens_are_good_on_every_node() {
    let url = pg_database(pg_server(), "console_cluster");
    let shared = tempfile::tempdir().unwrap();
    let node = |name: &str| {
        let port = free_port();
        let gw = Gateway::start_with(|dir, relay, submission| {
            format!(
                "{}\n[console]\naddress = \"127.0.0.1:{port}\"\n\n[storage]\nurl = \"{url}\"\n\n\
                 [cluster]\nnode = \"{name}\"\n\n[spool]\nkey_file = \"{}\"\n",
                base_config(dir, relay, submission),
                shared.path().join("spool.key").display()
            )
        });
        wait_for(T, "the console to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        (gw, port)
    };
    let (first, first_port) = node("first");
    let (second, second_port) = node("second");
    let out = with_stdin(
        std::process::Command::new(bin())
            .args(["--config", first.config.to_str().unwrap()])
            .args(["account", "add", "ann", "--role", "admin"]),
        &format!("{SECRET}\n"),
    );
    assert!(out.status.success(), "{}", output_text(&out));
    let listed = output_text(&second.cli(&["account", "list"]));
    assert!(listed.contains("ann\tadmin"), "{listed}");

    // Logged in on the second node, whose own command did not add ann.
    let mut on_second = Web::new(second_port);
    assert_eq!(on_second.login("ann", SECRET).status, 303);
    // The same cookie on the first node.
    let mut on_first = Web::new(first_port);
    on_first.cookies = on_second.cookies.clone();
    let page = on_first.get("/");
    assert_eq!(page.status, 200, "{}", page.body);
    // Logged out on the first, it has ended on the second too.
    let token = on_first.csrf();
    assert_eq!(on_first.post("/logout", &[("csrf", &token)]).status, 303);
    assert_eq!(
        on_second.get("/").status,
        303,
        "the session ended everywhere"
    );

    // A token made on the second node is good on the first.
    let made = second.cli(&["account", "token", "ann"]);
    assert!(made.status.success(), "{}", output_text(&made));
    let token = String::from_utf8_lossy(&made.stdout).into_owned();
    let mut api = Web::new(first_port);
    api.bearer = Some(token.trim().to_string());
    let r = api.get("/api/v1/queue");
    assert_eq!(r.status, 200, "{}", r.body);
    // Removed on the first node: the token is refused on the second.
    let removed = first.cli(&["account", "remove", "ann"]);
    assert!(removed.status.success(), "{}", output_text(&removed));
    let mut api = Web::new(second_port);
    api.bearer = Some(token.trim().to_string());
    assert_eq!(api.get("/api/v1/queue").status, 401);
}

/// RFC 8460 Appendix B's example report, with `id` as its report-id.
fn tlsrpt_json(id: &str) -> String {
    format!(
        r#"{{"organization-name": "Company-X",
  "date-range": {{"start-datetime": "2026-11-29T00:00:00Z", "end-datetime": "2026-11-29T23:59:59Z"}},
  "contact-info": "sts-reporting@company-x.example", "report-id": "{id}",
  "policies": [{{
    "policy": {{"policy-type": "sts", "policy-string": ["version: STSv1", "mode: enforce"],
               "policy-domain": "gw-own.test", "mx-host": ["gw.test"]}},
    "summary": {{"total-successful-session-count": 5326, "total-failure-session-count": 303}},
    "failure-details": [{{"result-type": "certificate-expired", "sending-mta-ip": "2001:db8::1",
                          "receiving-mx-hostname": "gw.test", "failed-session-count": 303}}]}}]}}"#
    )
}

fn tlsrpt_gzip(id: &str) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(tlsrpt_json(id).as_bytes()).unwrap();
    gz.finish().unwrap()
}

/// POSTs a report as a sender does: no login, `application/tlsrpt+gzip`.
fn post_report(port: u16, body: &[u8]) -> Reply {
    post_body(port, "application/tlsrpt+gzip", body.to_vec())
}

fn post_body(port: u16, media: &str, body: Vec<u8>) -> Reply {
    try_post_body(port, media, body).expect("the console answers")
}

/// As [`post_body`]; `Err` when the request could not be sent whole (the
/// console may answer 413 and close before a large body is written).
fn try_post_body(port: u16, media: &str, body: Vec<u8>) -> Result<Reply, reqwest::Error> {
    let web = Web::new(port);
    let req = web
        .client
        .post(format!("{}/tlsrpt", web.base))
        .header("content-type", media)
        .body(body);
    web.rt.block_on(async {
        let res = req.send().await?;
        Ok(Reply {
            status: res.status().as_u16(),
            headers: HashMap::new(),
            body: res.text().await.unwrap_or_default(),
        })
    })
}

/// Senders post TLS-RPT reports without an account: each is parsed and
/// kept once, and shown to those who see the whole gateway; what is not a
/// report, or too large, is refused. The MTA-STS policy file is served.
#[test]
fn tlsrpt_reports_are_received_and_the_mta_sts_policy_is_served() {
    let (_gw, port) = gateway();
    let mut anyone = Web::new(port);
    let policy = anyone.get("/.well-known/mta-sts.txt");
    assert_eq!(policy.status, 200, "{}", policy.body);
    assert!(
        policy
            .body
            .starts_with("version: STSv1\nmode: enforce\nmx: "),
        "{}",
        policy.body
    );

    assert_eq!(post_report(port, &tlsrpt_gzip("r-1")).status, 200);
    // Sent again (senders retry): kept once.
    let again = post_body(
        port,
        "application/tlsrpt+json",
        tlsrpt_json("r-1").into_bytes(),
    );
    assert_eq!(again.status, 200, "{}", again.body);
    let r = post_body(port, "text/plain", tlsrpt_json("r-2").into_bytes());
    assert_eq!(r.status, 400);
    assert!(r.body.contains("tlsrpt+json"), "{}", r.body);
    let r = post_body(
        port,
        "application/tlsrpt+json",
        b"{\"report-id\": 1}".to_vec(),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    // Over 1 MiB: refused with 413, which can reach the client only as a
    // closed connection while it is still writing the body.
    match try_post_body(port, "application/tlsrpt+gzip", vec![0x1f; 2 << 20]) {
        Ok(r) => assert_eq!(r.status, 413, "a body over 1 MiB"),
        Err(e) => assert!(e.is_request(), "{e:?}"),
    }
    // And nothing of it was kept: the console still answers, with one report.
    assert_eq!(post_report(port, &tlsrpt_gzip("r-1")).status, 200);

    let mut admin = Web::new(port);
    admin.login("audrey", SECRET);
    let page = admin.get("/reports");
    assert!(
        page.body.contains("Company-X")
            && page.body.contains("gw-own.test")
            && page.body.contains("certificate-expired"),
        "{}",
        page.body
    );
    let listed = admin.get("/api/v1/tlsrpt/received");
    assert_eq!(listed.status, 200, "{}", listed.body);
    let v: Value = serde_json::from_str(&listed.body).unwrap();
    let ours: Vec<&Value> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["report_id"] == "r-1")
        .collect();
    assert_eq!(ours.len(), 1, "{v}");
    assert_eq!(ours[0]["failures"], 303);
    assert_eq!(ours[0]["domains"][0], "gw-own.test");

    let mut tenant = Web::new(port);
    tenant.login("tom", SECRET);
    assert_eq!(tenant.get("/api/v1/tlsrpt/received").status, 403);
    assert!(!tenant.get("/reports").body.contains("Company-X"));
}
