//! Transaction-log throughput: `cargo bench --bench report`. Appends
//! 100,000 attempt records shaped like a real delivery's (verdict with its
//! checks and TLS facts) to a fresh SQLite file, then times `verify`, the
//! JSON-lines, CSV and HTML exports of all of them.

use std::time::Instant;

use sealgate::report::{Event, EventData, export, log};
use sealgate::spool::QueueId;

const RECORDS: u64 = 100_000;
const BATCH: u64 = 256;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let conn = rusqlite::Connection::open(dir.path().join("log.db")).expect("db");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    log::init(&conn).expect("schema");
    let checks: Vec<_> = [
        "dnssec", "starttls", "protocol", "cipher", "key_exchange", "key_size", "dane",
        "pkix", "hostname", "revocation", "mta_sts",
    ]
    .iter()
    .map(|n| serde_json::json!({ "name": n, "status": "pass", "detail": "a sentence of evidence as the checks write it" }))
    .collect();
    let start = Instant::now();
    for first in (0..RECORDS).step_by(BATCH as usize) {
        let events: Vec<Event> = (first..(first + BATCH).min(RECORDS))
            .map(|n| {
                let data = serde_json::json!({
                    "v": 2,
                    "domain": "example.net",
                    "verdict": { "domain": "example.net", "mx_host": "mx1.example.net",
                        "address": "192.0.2.1", "observed_level": "qualified", "level": "qualified",
                        "checks": checks, "refusals": [], "at": 1_800_000_000,
                        "tls": { "version": "TLSv1.3", "cipher_suite": "TLS13_AES_256_GCM_SHA384",
                                 "kx_group": "secp384r1", "peer_key": { "algorithm": "ECDSA P-384", "bits": 384 },
                                 "chain": [], "ocsp_stapled": false } },
                    "recipients": [{ "address": format!("r{n}@example.net"), "class": "high",
                        "required": "qualified", "action": "deliver", "reason": null, "outcome": "delivered",
                        "status": "2.0.0", "remote": "mx1.example.net[192.0.2.1]",
                        "detail": "mx1.example.net[192.0.2.1] said: 250 2.0.0 Ok" }],
                    "bounce": null,
                });
                Event {
                    queue_id: QueueId(n),
                    at: 1_800_000_000 + n as i64,
                    data: EventData::parse("attempt", &data.to_string()).expect("an attempt record"),
                }
            })
            .collect();
        conn.execute_batch("BEGIN").expect("begin");
        log::append(&conn, "bench", &events).expect("append");
        conn.execute_batch("COMMIT").expect("commit");
    }
    let append = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let verified = log::verify(&conn, "bench").expect("verify");
    let verify = start.elapsed().as_secs_f64();
    assert!(matches!(verified, log::Verified::Intact { records, .. } if records == RECORDS as i64));
    let sel = export::Selection {
        from: 0,
        to: i64::MAX,
        tenant: None,
        progress: None,
    };
    let mut sink = std::io::sink();
    let start = Instant::now();
    let n = export::json_lines(&conn, &sel, &mut sink).expect("json");
    let json = start.elapsed().as_secs_f64();
    assert_eq!(n as u64, RECORDS);
    let start = Instant::now();
    let rows = export::csv(&conn, &sel, &mut sink).expect("csv");
    let csv = start.elapsed().as_secs_f64();
    assert_eq!(rows as u64, RECORDS);
    let start = Instant::now();
    let page = sealgate::report::html::render(&conn, &sel, 1_900_000_000).expect("html");
    let html = start.elapsed().as_secs_f64();
    println!(
        "{RECORDS} attempt records: append {append:.2} s ({:.0}/s, {BATCH} per transaction)",
        RECORDS as f64 / append
    );
    println!("verify: {verify:.2} s");
    println!("export json lines: {json:.2} s");
    println!("export csv: {csv:.2} s");
    println!("export html: {html:.2} s ({} MB)", page.len() / 1_000_000);
}
