//! The transaction log of a real run (deliveries to the Postfix
//! destination, a deferral, an operator's delete): its chain verifies, its
//! exports hold the run's numbers, and an edit, a deletion and an insertion
//! made with the sqlite3 CLI in the real database file are each found.

mod support;

use std::process::Command;
use std::time::Duration;

use sealgate::report::export::CSV_COLUMNS;
use serde_json::Value;
use support::*;

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
        let mut c = Client::connect(gw.relay);
        c.cmd("EHLO client.test");
        let reply = c.message(
            "sender@src.test",
            &[r],
            message(&unique("log"), "hello\r\n").as_bytes(),
        );
        assert!(reply.starts_with("250"), "{reply}");
    }
    let mut c = Client::connect(gw.relay);
    c.cmd("EHLO client.test");
    let reply = c.message(
        "sender@src.test",
        &["nobody@unreachable.test"],
        message(&unique("stuck"), "hello\r\n").as_bytes(),
    );
    let stuck = reply.trim().rsplit(' ').next().unwrap().to_string();
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
        std::fs::copy(&db, &copy).unwrap();
        // What the last commits wrote may still be in the write-ahead log.
        let wal = gw.dir.path().join("sealgate.db-wal");
        if wal.exists() {
            std::fs::copy(&wal, gw.dir.path().join(format!("{name}-wal"))).unwrap();
        }
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
