//! The transaction log of a real run (deliveries to the Postfix
//! destination, a deferral, an operator's delete): its chain verifies, its
//! exports hold the run's numbers, and an edit, a deletion and an insertion
//! made with the sqlite3 CLI in the real database file are each found.
//! And the TLS-RPT reports (RFC 8460) a day of real sessions makes.

mod support;
#[path = "support/world.rs"]
mod world;

use std::process::Command;
use std::time::Duration;

use sealgate::report::export::CSV_COLUMNS;
use serde_json::Value;
use support::*;
use world::world;

const T: Duration = Duration::from_secs(30);

fn report(gw: &Gateway, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["report"];
    all.extend_from_slice(args);
    let out = gw.cli(&all);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Sends one message to `rcpt` through the relay listener; its queue id.
fn send(gw: &Gateway, rcpt: &str) -> String {
    let mut c = Client::connect(gw.relay);
    c.cmd("EHLO client.test");
    let reply = c.message(
        "sender@src.test",
        &[rcpt],
        message(&unique("log"), "hello\r\n").as_bytes(),
    );
    assert!(reply.starts_with("250"), "{reply}");
    reply.trim().rsplit(' ').next().unwrap().to_string()
}

/// Sends one message to a new recipient at the Postfix destination and
/// waits until it arrived.
fn deliver(gw: &Gateway, prefix: &str) {
    let rcpt = format!("{}@dst.test", unique(prefix));
    send(gw, &rcpt);
    dest().wait_mails(&rcpt, 1, T);
}

/// Copies a database file with its write-ahead log, where the last
/// commits may still be.
fn copy_db(from: &std::path::Path, to: &std::path::Path) {
    std::fs::copy(from, to).unwrap();
    let wal = |p: &std::path::Path| format!("{}-wal", p.display());
    if std::path::Path::new(&wal(from)).exists() {
        std::fs::copy(wal(from), wal(to)).unwrap();
    }
}

fn sqlite(db: &std::path::Path, sql: &str) {
    let out = Command::new("sqlite3").arg(db).arg(sql).output().unwrap();
    assert!(
        out.status.success(),
        "sqlite3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_log_of_a_real_run_verifies_exports_and_catches_tampering() {
    let mut gw = Gateway::start("");
    let rcpts: Vec<String> = (0..3)
        .map(|i| format!("{}@dst.test", unique(&format!("log{i}"))))
        .collect();
    for r in &rcpts {
        send(&gw, r);
    }
    let stuck = send(&gw, "nobody@unreachable.test");
    for r in &rcpts {
        dest().wait_mails(r, 1, T);
    }
    wait_for(T, "the deferral", || {
        let out = gw.cli(&["queue", "show", &stuck, "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["recipients"][0]["attempts"].as_u64()? >= 1).then_some(())
    });
    assert!(gw.cli(&["queue", "delete", &stuck]).status.success());
    // Deliveries are recorded after the peer's 250: wait for the last record.
    let lines = wait_for(T, "every attempt in the log", || {
        let (ok, out, _) = report(&gw, &["export", "--format", "json"]);
        let lines: Vec<Value> = out
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let delivered = lines
            .iter()
            .filter(|l| {
                l["kind"] == "attempt" && l["data"]["recipients"][0]["outcome"] == "delivered"
            })
            .count();
        let deleted = lines.iter().any(|l| l["kind"] == "deleted");
        (ok && delivered == 3 && deleted).then_some(lines)
    });

    let count = |kind: &str| lines.iter().filter(|l| l["kind"] == kind).count();
    assert_eq!(count("received"), 4);
    assert_eq!(count("classified"), 4);
    assert!(count("attempt") >= 4, "{lines:?}");
    let received = lines.iter().find(|l| l["kind"] == "received").unwrap();
    assert!(
        received["data"]["client"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1 helo=client.test network=")
    );
    assert!(
        received["data"]["message_id"]
            .as_str()
            .unwrap()
            .starts_with("<log-")
    );
    let delivered = lines
        .iter()
        .find(|l| l["kind"] == "attempt" && l["data"]["recipients"][0]["outcome"] == "delivered")
        .unwrap();
    let v = &delivered["data"]["verdict"];
    assert_eq!(v["tls"]["version"], "TLSv1.3", "{v}");
    assert!(
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "starttls" && c["status"] == "pass")
    );
    assert_eq!(delivered["data"]["recipients"][0]["action"], "deliver");
    assert_eq!(delivered["data"]["recipients"][0]["class"], "normal");
    assert!(
        !lines.iter().any(|l| l.to_string().contains("hello")),
        "no content in the log"
    );

    let (ok, out, err) = report(&gw, &["export", "--format", "csv"]);
    assert!(ok, "{err}");
    let mut csv = csv::Reader::from_reader(out.as_bytes());
    let header: Vec<String> = csv.headers().unwrap().iter().map(str::to_string).collect();
    assert_eq!(header, CSV_COLUMNS);
    let rows: Vec<csv::StringRecord> = csv.records().map(Result::unwrap).collect();
    let outcome = header.iter().position(|h| h == "outcome").unwrap();
    let level = header.iter().position(|h| h == "level").unwrap();
    let sent: Vec<_> = rows.iter().filter(|r| &r[outcome] == "delivered").collect();
    assert_eq!(sent.len(), 3);
    assert!(
        sent.iter()
            .all(|r| &r[level] == "encrypted" || &r[level] == "authenticated")
    );
    assert!(rows.iter().any(|r| &r[outcome] == "deferred"));
    // A selection by time: nothing before the run.
    let (ok, out, _) = report(&gw, &["export", "--format", "json", "--to", "2020-01-01"]);
    assert!(ok && out.is_empty(), "{out}");

    let (ok, out, err) = report(&gw, &["verify"]);
    assert!(ok && out.contains("tenant default: intact"), "{out}{err}");
    // Not a terminal: no progress bar on standard error.
    assert!(!err.contains("left") && !err.contains('\r'), "{err}");
    // On a terminal (script(1) gives it one): progress with an estimate,
    // cleared before the result.
    let tty = Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "{} --config {} report verify",
            bin(),
            gw.config.display()
        ))
        .arg("/dev/null")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{shown}");
    assert!(
        shown.contains("records, ") && shown.contains(" left") && shown.contains("\x1b[2K"),
        "{shown}"
    );
    assert!(shown.contains("tenant default: intact"), "{shown}");

    // The HTML report, as a real browser parses it.
    let page = gw.dir.path().join("report.html");
    let (ok, _, err) = report(
        &gw,
        &[
            "export",
            "--format",
            "html",
            "--out",
            page.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    let html = std::fs::read_to_string(&page).unwrap();
    // Self-contained: nothing to run, nothing to fetch.
    assert!(!html.contains("<script") && !html.contains(" src=") && !html.contains(" href="));
    let url = format!("file://{}", page.display());
    let dom = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--dump-dom",
            &url,
        ])
        .output()
        .expect("chromium is installed (run the README test command)");
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(dom.contains("<td id=\"action-deliver\">3</td>"), "{dom}");
    assert!(dom.contains("<span class=\"ok\">intact</span>"), "{dom}");
    assert!(dom.contains("<svg") && dom.contains("dst.test"), "{dom}");
    let delivered_levels: usize = ["encrypted", "authenticated"]
        .iter()
        .filter_map(|l| {
            let key = format!("<td id=\"level-{l}\">");
            let at = dom.find(&key)? + key.len();
            dom[at..].split('<').next()?.parse::<usize>().ok()
        })
        .sum();
    assert_eq!(delivered_levels, 3, "{dom}");
    // The same report in pages: a summary, the domains, a page per day.
    let pages = gw.dir.path().join("report-pages/");
    let (ok, _, err) = report(
        &gw,
        &[
            "export",
            "--format",
            "html",
            "--out",
            pages.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    let index = std::fs::read_to_string(pages.join("index.html")).unwrap();
    assert!(
        index.contains("<td id=\"action-deliver\">3</td>"),
        "{index}"
    );
    assert!(
        !index.contains("<script") && !index.contains(" src="),
        "{index}"
    );
    let day = index
        .split("<a href=\"")
        .skip(1)
        .filter_map(|a| a.split('"').next())
        .find(|h| h.starts_with("20"))
        .expect("a link to a day page");
    let page_of_day = std::fs::read_to_string(pages.join(day)).unwrap();
    assert_eq!(
        page_of_day.matches("<details>").count(),
        html.matches("<details>").count()
    );
    assert!(page_of_day.contains("href=\"index.html\""));
    let domains = std::fs::read_to_string(pages.join("domains.html")).unwrap();
    assert!(domains.contains("dst.test"), "{domains}");
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("report.png");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1200,1400",
        ])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .unwrap();
    let png = std::fs::read(&shot).unwrap_or_default();
    assert!(
        png.starts_with(b"\x89PNG"),
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("screenshot of the HTML report: {}", shot.display());

    // Tamper with copies of the real database file.
    gw.signal_term();
    assert!(gw.wait_exit());
    let db = gw.dir.path().join("sealgate.db");
    let tampered = |name: &str, sql: &str| {
        let copy = gw.dir.path().join(name);
        copy_db(&db, &copy);
        sqlite(&copy, sql);
        let (ok, out, _) = report(&gw, &["verify", "--db", copy.to_str().unwrap()]);
        assert!(!ok, "{name}: {out}");
        out
    };
    let out = tampered(
        "edited.db",
        // Backdating one record by an hour.
        "UPDATE txlog SET at = at - 3600 WHERE seq = 5",
    );
    assert!(
        out.contains("BROKEN at record 5") && out.contains("edited"),
        "{out}"
    );
    let out = tampered("deleted.db", "DELETE FROM txlog WHERE seq = 3");
    assert!(
        out.contains("BROKEN at record 3") && out.contains("missing"),
        "{out}"
    );
    let out = tampered(
        "inserted.db",
        "UPDATE txlog SET seq = seq + 1000 WHERE seq >= 4;
         UPDATE txlog SET seq = seq - 999 WHERE seq >= 1000;
         INSERT INTO txlog SELECT tenant, 4, at, kind, queue_id, data, prev, hash FROM txlog WHERE seq = 3;",
    );
    assert!(out.contains("BROKEN at record 4"), "{out}");
    // The untouched file still verifies.
    let (ok, out, _) = report(&gw, &["verify", "--db", db.to_str().unwrap()]);
    assert!(ok, "{out}");
}

/// Retention on a live gateway: the removed records are vouched for by a
/// `pruned` record, the chain goes on, and deleting more than was pruned
/// is found.
#[test]
fn pruned_records_leave_a_chain_that_still_verifies() {
    let mut gw = Gateway::start(
        "[[tenant]]\nid = \"default\"\nnetworks = [\"127.0.0.0/8\"]\n[tenant.retention]\nlog_days = 400\nhold_delivered = \"1h\"\n",
    );
    let records = |gw: &Gateway, n: usize| {
        wait_for(T, "the attempts in the log", || {
            let (_, out, _) = report(gw, &["export", "--format", "json"]);
            let lines: Vec<Value> = out
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            (lines.iter().filter(|l| l["kind"] == "attempt").count() >= n).then_some(lines)
        })
    };
    deliver(&gw, "ret");
    deliver(&gw, "ret");
    let before = records(&gw, 2);
    let last = before
        .iter()
        .map(|l| l["seq"].as_i64().unwrap())
        .max()
        .unwrap();

    let (ok, out, err) = report(&gw, &["prune", "--before", "2100-01-01"]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("tenant default: records 1–{last} removed")),
        "{out}"
    );
    let (ok, out, err) = report(&gw, &["verify"]);
    assert!(
        ok && out.contains(&format!("intact, 1 record (1–{last} removed by retention)")),
        "{out}{err}"
    );
    // The gateway goes on appending to the pruned chain.
    deliver(&gw, "ret");
    let after = records(&gw, 1);
    assert_eq!(after[0]["kind"], "pruned");
    assert_eq!(after[0]["seq"], last + 1);
    assert_eq!(after[0]["data"]["through_seq"], last);
    let (ok, out, err) = report(&gw, &["verify"]);
    assert!(ok && out.contains("intact"), "{out}{err}");

    gw.signal_term();
    assert!(gw.wait_exit());
    let db = gw.dir.path().join("sealgate.db");
    let copy = gw.dir.path().join("cut.db");
    copy_db(&db, &copy);
    // Deleting the pruned record too: more is missing than was pruned.
    sqlite(
        &copy,
        &format!("DELETE FROM txlog WHERE seq = {}", last + 1),
    );
    let (ok, out, _) = report(&gw, &["verify", "--db", copy.to_str().unwrap()]);
    assert!(!ok && out.contains("BROKEN at record 1"), "{out}");
}

/// The heads the gateway signs into its log catch what the chain alone
/// cannot: records cut from its end.
#[test]
fn signed_heads_in_the_log_find_a_truncated_chain() {
    let keydir = tempfile::tempdir().unwrap();
    let key = keydir.path().join("heads.key");
    let out = Command::new(bin())
        .args(["report", "keygen", "--out", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut gw = Gateway::start(&format!(
        "[report]\nhead_interval = \"1s\"\nsigning_key = \"{}\"\n",
        key.display()
    ));
    for _ in 0..2 {
        deliver(&gw, "head");
    }
    // Stopping writes the final head: it covers the last record.
    gw.signal_term();
    assert!(gw.wait_exit());
    let log = gw.dir.path().join("log");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("chain-head v1 tenant=default seq="), "{text}");
    let pubkey = format!("{}.pub", key.display());
    let verify = |db: &std::path::Path, log: &std::path::Path| {
        report(
            &gw,
            &[
                "verify",
                "--db",
                db.to_str().unwrap(),
                "--heads",
                log.to_str().unwrap(),
                "--public-key",
                &pubkey,
            ],
        )
    };
    let db = gw.dir.path().join("sealgate.db");
    let (ok, out, err) = verify(&db, &log);
    assert!(ok && out.contains("signatures required"), "{out}{err}");

    // Cut the newest records: the chain alone still verifies, the heads do not.
    let cut = gw.dir.path().join("cut.db");
    copy_db(&db, &cut);
    sqlite(&cut, "DELETE FROM txlog WHERE seq > 3");
    let (ok, out, _) = report(&gw, &["verify", "--db", cut.to_str().unwrap()]);
    assert!(ok, "{out}");
    let (ok, out, _) = verify(&cut, &log);
    assert!(!ok && out.contains("the chain ends at 3"), "{out}");

    // A key that is no signing key is found before a restart.
    let text_config = std::fs::read_to_string(&gw.config).unwrap();
    let bad = gw.dir.path().join("bad.toml");
    std::fs::write(&bad, text_config.replace(key.to_str().unwrap(), &pubkey)).unwrap();
    let out = gw.cli(&["config", "check", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("report.signing_key"),
        "{err}"
    );

    // A forged head line does not carry a valid signature.
    let forged = gw.dir.path().join("forged.log");
    std::fs::write(&forged, text.replace("seq=", "seq=1")).unwrap();
    let (ok, out, _) = verify(&db, &forged);
    assert!(!ok && out.contains("signature does not verify"), "{out}");
}

/// RFC 8460 §4.4: the fields and values a report must have.
fn assert_rfc8460_report(r: &Value, domain: &str) {
    let text = |v: &Value, what: &str| {
        v.as_str()
            .unwrap_or_else(|| panic!("{what} is not a string: {r}"))
            .to_string()
    };
    assert!(!text(&r["organization-name"], "organization-name").is_empty());
    assert!(!text(&r["report-id"], "report-id").is_empty());
    for end in ["start-datetime", "end-datetime"] {
        let t = text(&r["date-range"][end], end);
        assert!(
            t.len() == 20 && t.ends_with('Z') && &t[10..11] == "T",
            "{end} is no RFC 3339 UTC time: {t}"
        );
    }
    let policies = r["policies"].as_array().expect("policies array");
    assert!(!policies.is_empty());
    for p in policies {
        let kind = text(&p["policy"]["policy-type"], "policy-type");
        assert!(["tlsa", "sts", "no-policy-found"].contains(&kind.as_str()));
        assert_eq!(p["policy"]["policy-domain"], domain);
        for n in [
            "total-successful-session-count",
            "total-failure-session-count",
        ] {
            assert!(p["summary"][n].is_u64(), "{n} in {p}");
        }
        let failures: u64 = p["failure-details"]
            .as_array()
            .map(|d| {
                d.iter()
                    .map(|f| f["failed-session-count"].as_u64().unwrap())
                    .sum()
            })
            .unwrap_or(0);
        assert_eq!(
            failures,
            p["summary"]["total-failure-session-count"]
                .as_u64()
                .unwrap()
        );
        for f in p["failure-details"].as_array().into_iter().flatten() {
            let t = text(&f["result-type"], "result-type");
            assert!(
                [
                    "starttls-not-supported",
                    "certificate-host-mismatch",
                    "certificate-expired",
                    "certificate-not-trusted",
                    "validation-failure",
                    "tlsa-invalid",
                    "dnssec-invalid",
                    "dane-required",
                    "sts-policy-fetch-error",
                    "sts-policy-invalid",
                    "sts-webpki-invalid",
                ]
                .contains(&t.as_str()),
                "{t}"
            );
            if let Some(ip) = f.get("receiving-ip") {
                text(ip, "receiving-ip")
                    .parse::<std::net::IpAddr>()
                    .expect("receiving-ip is an address");
            }
        }
    }
    assert!(!r.to_string().contains("null"), "no nulls: {r}");
}

/// The https end of a TLS-RPT address: records each POST (path,
/// content type, body) and answers 200.
type Posts = std::sync::Arc<std::sync::Mutex<Vec<(String, String, Vec<u8>)>>>;

fn https_receiver(w: &world::World) -> Posts {
    static POSTS: std::sync::OnceLock<Posts> = std::sync::OnceLock::new();
    POSTS.get_or_init(|| start_https_receiver(w)).clone()
}

fn start_https_receiver(w: &world::World) -> Posts {
    use std::io::{BufRead, Read, Write};
    let certs =
        rustls_pemfile::certs(&mut std::fs::read(w.dir.join("leaf.pem")).unwrap().as_slice())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
    let key =
        rustls_pemfile::private_key(&mut std::fs::read(w.dir.join("leaf.key")).unwrap().as_slice())
            .unwrap()
            .unwrap();
    let config = std::sync::Arc::new(
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap(),
    );
    let listener = std::net::TcpListener::bind((world::REPORTS_ADDR, world::REPORTS_PORT)).unwrap();
    let posts = Posts::default();
    let seen = posts.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let tls = rustls::StreamOwned::new(
                rustls::ServerConnection::new(config.clone()).unwrap(),
                conn,
            );
            let mut r = std::io::BufReader::new(tls);
            let (mut request, mut ctype, mut length) = (String::new(), String::new(), 0);
            if r.read_line(&mut request).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                let lower = h.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                } else if let Some(v) = lower.strip_prefix("content-type:") {
                    ctype = v.trim().to_string();
                }
            }
            let mut body = vec![0; length];
            if r.read_exact(&mut body).is_err() {
                continue;
            }
            let path = request.split(' ').nth(1).unwrap_or_default().to_string();
            seen.lock().unwrap().push((path, ctype, body));
            let mut tls = r.into_inner();
            let _ =
                tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    posts
}

/// TLS-RPT from a day of real sessions behind DNSSEC: a DANE-qualified
/// delivery, a TLSA mismatch (deferred), a domain that asks for no report.
#[test]
fn tls_reports_go_by_mail_to_the_domains_that_ask_for_them() {
    let w = world();
    let _one = REPORTS.lock().unwrap_or_else(|e| e.into_inner());
    let gw = Gateway::start_with(|dir, relay, sub| w.config(dir, relay, sub));
    tls_reports(&gw, &gw);
}

/// Two nodes on one PostgreSQL database: each node's sessions are in the
/// reports, and each report goes out once, whichever node sends.
#[test]
fn a_cluster_sends_each_tls_report_once() {
    let w = world();
    let _one = REPORTS.lock().unwrap_or_else(|e| e.into_inner());
    let url = pg_database(pg_server(), "tlsrpt");
    let shared = tempfile::tempdir().unwrap();
    let node = |name: &str| {
        Gateway::start_with(|dir, relay, sub| {
            format!(
                "{}\n[storage]\nurl = \"{url}\"\n\n[cluster]\nnode = \"{name}\"\n\n\
                 [spool]\nkey_file = \"{}\"\n",
                w.config(dir, relay, sub),
                shared.path().join("spool.key").display()
            )
        })
    };
    let (first, second) = (node("first"), node("second"));
    tls_reports(&first, &second);
}

/// The report sink and the HTTPS receiver are the world's: one test at a time.
static REPORTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// TLS-RPT from a day of real sessions behind DNSSEC, `first` and
/// `second` delivering; `first` sends the reports, then `second` finds
/// nothing left to send.
fn tls_reports(first: &Gateway, second: &Gateway) {
    use mail_parser::MimeHeaders;
    use std::io::Read;
    let w = world();
    let posts = https_receiver(w);
    posts.lock().unwrap().clear();
    let sink = "tlsrpt@ee.dane.test";
    let mailed_before = w.mails(sink).len();
    let good = format!("{}@ee.dane.test", unique("rpt"));
    let other = format!("{}@unsigned.test", unique("rpt"));
    let bad = format!("{}@mismatch.dane.test", unique("rpt"));
    send(first, &good);
    send(second, &other);
    send(second, &bad);
    for rcpt in [&good, &other] {
        wait_for(T, "delivery", || (!w.mails(rcpt).is_empty()).then_some(()));
    }
    let lines = wait_for(T, "the three attempts in the log", || {
        let (_, out, _) = report(first, &["export", "--format", "json"]);
        let lines: Vec<Value> = out
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let attempts = lines.iter().filter(|l| l["kind"] == "attempt").count();
        (attempts >= 3).then_some(lines)
    });
    let today = lines[0]["at"].as_str().unwrap()[..10].to_string();

    // The preview: one report per domain with sessions, from the log.
    let (ok, out, err) = report(first, &["tlsrpt", "--day", &today]);
    assert!(ok, "{err}");
    let previews: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let domains: Vec<&str> = previews
        .iter()
        .map(|r| {
            r["policies"][0]["policy"]["policy-domain"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(
        domains,
        ["ee.dane.test", "mismatch.dane.test", "unsigned.test"]
    );

    let (ok, out, err) = report(first, &["tlsrpt", "--day", &today, "--send"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("3 report(s) sent, 1 domain(s) ask for none, 0 failed"),
        "{out}"
    );
    // The https address got its report POSTed, gzip'd.
    let posted = posts.lock().unwrap().clone();
    assert_eq!(posted.len(), 1, "one POST");
    let (path, ctype, body) = &posted[0];
    assert_eq!(
        (path.as_str(), ctype.as_str()),
        ("/v1", "application/tlsrpt+gzip")
    );
    let mut json = String::new();
    flate2::read::GzDecoder::new(body.as_slice())
        .read_to_string(&mut json)
        .expect("gzip");
    let r: Value = serde_json::from_str(&json).unwrap();
    assert_rfc8460_report(&r, "mismatch.dane.test");
    let mails = wait_for(T, "two reports at the rua", || {
        let m = w.mails(sink);
        (m.len() == mailed_before + 2).then_some(m[mailed_before..].to_vec())
    });
    let mut seen = Vec::new();
    for raw in &mails {
        let m = mail_parser::MessageParser::default().parse(raw).unwrap();
        let domain = m
            .header("TLS-Report-Domain")
            .and_then(|h| h.as_text())
            .unwrap()
            .to_string();
        assert!(
            m.subject()
                .unwrap()
                .starts_with(&format!("Report Domain: {domain} Submitter: ")),
            "{:?}",
            m.subject()
        );
        let ct = m.content_type().unwrap();
        assert_eq!(ct.ctype(), "multipart");
        assert_eq!(ct.attribute("report-type"), Some("tlsrpt"));
        let part = m
            .attachments()
            .find(|a| {
                a.content_type()
                    .is_some_and(|c| c.subtype() == Some("tlsrpt+gzip"))
            })
            .expect("an application/tlsrpt+gzip part");
        let mut json = String::new();
        flate2::read::GzDecoder::new(part.contents())
            .read_to_string(&mut json)
            .expect("gzip");
        let r: Value = serde_json::from_str(&json).unwrap();
        assert_rfc8460_report(&r, &domain);
        let p = &r["policies"][0];
        assert_eq!(p["policy"]["policy-type"], "tlsa", "{r}");
        if domain == "ee.dane.test" {
            assert!(p["summary"]["total-successful-session-count"].as_u64() >= Some(1));
            assert_eq!(p["summary"]["total-failure-session-count"], 0);
        } else {
            assert_eq!(domain, "mismatch.dane.test");
            assert_eq!(p["summary"]["total-successful-session-count"], 0);
            let f = &p["failure-details"][0];
            assert_eq!(f["result-type"], "tlsa-invalid", "{r}");
            assert_eq!(f["receiving-mx-hostname"], "mx.mismatch.dane.test");
            assert_eq!(f["receiving-ip"], "127.0.1.1");
        }
        seen.push(domain);
    }
    seen.sort();
    assert_eq!(seen, ["ee.dane.test", "mismatch.dane.test"]);

    // Sent once: a second run (on the other node of a cluster) sends
    // nothing again.
    let (ok, out, err) = report(second, &["tlsrpt", "--day", &today, "--send"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("0 report(s) sent, 0 domain(s) ask for none, 0 failed"),
        "{out}"
    );
    assert_eq!(w.mails(sink).len(), mailed_before + 2);
    assert_eq!(posts.lock().unwrap().len(), 1);
}
