//! Fills a gateway database's transaction log with COUNT messages, each a
//! `received` and an `attempt` record (one recipient, a realistic
//! verdict), spread over DOMAINS recipient domains, TENANTS tenants and
//! the last 14 days: real chained records, as the gateway writes them.
//! For benches/console.sh.
//!
//!   cargo run --release --example fill-log -- DB COUNT DOMAINS TENANTS [FIRST]
//!
//! FIRST numbers the first message (default 0), so that a second run adds
//! new messages instead of repeating queue ids.

use sealgate::message::QueueId;
use sealgate::report::{Event, EventData, log};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (db, count, domains, tenants, first) = match &args[1..] {
        [db, c, d, t] => (
            db,
            c.parse::<u64>()?,
            d.parse::<u64>()?,
            t.parse::<u64>()?,
            0,
        ),
        [db, c, d, t, f] => (db, c.parse()?, d.parse()?, t.parse()?, f.parse::<u64>()?),
        _ => return Err("usage: fill-log DB COUNT DOMAINS TENANTS [FIRST]".into()),
    };
    let mut conn = rusqlite::Connection::open(db)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    log::init(&conn)?;
    let now = sealgate::util::now();
    let start = now - 14 * 86_400;
    let levels = ["qualified", "authenticated", "encrypted", "encrypted"];
    let outcomes = [
        ("delivered", "deliver", "2.0.0"),
        ("delivered", "deliver", "2.0.0"),
        ("delivered", "seal", "2.0.0"),
        ("deferred", "defer", "4.4.1"),
        ("bounced", "bounce", "5.7.1"),
    ];
    const BATCH: u64 = 10_000;
    let (mut done, count) = (first, first + count);
    while done < count {
        let tx = conn.transaction()?;
        let mut per_tenant: Vec<Vec<Event>> = vec![Vec::new(); tenants as usize];
        for n in done..(done + BATCH).min(count) {
            let tenant = (n % tenants) as usize;
            let domain = format!("d{}.example", n % domains);
            let rcpt = format!("user{}@{domain}", n % 997);
            let sender = format!("sender{}@tenant{tenant}.example", n % 101);
            let at = start + (n * 14 * 86_400 / count) as i64;
            let id = QueueId(0x1000_0000 + n);
            let received = format!(
                r#"{{"v":2,"client":"192.0.2.{} helo=exchange{} user=app","size":{},"message_id":"<{n}@tenant{tenant}.example>","sender":"{sender}","recipients":["{rcpt}"]}}"#,
                n % 250,
                tenant,
                2000 + n % 50_000
            );
            let level = levels[(n % 4) as usize];
            let (outcome, action, status) = outcomes[(n % 5) as usize];
            let attempt = format!(
                r#"{{"v":2,"domain":"{domain}","verdict":{{"domain":"{domain}","mx_host":"mx.{domain}","address":"198.51.100.{}","observed_level":"{level}","level":"{level}","checks":[{{"name":"dnssec","status":"pass","detail":"MX answer validated"}},{{"name":"starttls","status":"pass","detail":"STARTTLS negotiated"}},{{"name":"protocol","status":"pass","detail":"TLSv1.3"}},{{"name":"cipher","status":"pass","detail":"TLS13_AES_256_GCM_SHA384"}},{{"name":"key_exchange","status":"pass","detail":"X25519"}},{{"name":"dane","status":"pass","detail":"TLSA 3 1 1 matched"}},{{"name":"revocation","status":"pass","detail":"OCSP good (stapled)"}}],"refusals":[],"tls":{{"version":"TLSv1.3","cipher_suite":"TLS13_AES_256_GCM_SHA384","kx_group":"X25519","peer_key":{{"algorithm":"ECDSA P-256","bits":256}},"chain":[{{"subject":"CN=mx.{domain}","issuer":"CN=Example CA","sha256":"00","not_after":"2027-01-01T00:00:00Z"}}],"ocsp_stapled":true}},"at":{at}}},"checks":[],"hosts":[],"recipients":[{{"address":"{rcpt}","class":"normal","required":"encrypted","action":"{action}","outcome":"{outcome}","status":"{status}","remote":"mx.{domain}","detail":"mx.{domain}[198.51.100.1] said: 250 ok"}}],"bounce":null}}"#,
                n % 250
            );
            per_tenant[tenant].push(Event {
                queue_id: id,
                at,
                data: EventData::parse("received", &received)?,
            });
            per_tenant[tenant].push(Event {
                queue_id: id,
                at: at + 1,
                data: EventData::parse("attempt", &attempt)?,
            });
        }
        for (t, events) in per_tenant.iter().enumerate() {
            log::append(&tx, &format!("t{t}"), events)?;
        }
        tx.commit()?;
        done = (done + BATCH).min(count);
    }
    println!(
        "{} messages, {} records",
        count - first,
        (count - first) * 2
    );
    Ok(())
}
