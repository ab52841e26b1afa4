//! The hash-chained transaction log in SQLite.
//!
//! Per tenant, records are numbered from 1 without gaps. A record's hash is
//! `SHA-256(prev || canonical)`, where `prev` is the previous record's hash
//! (32 zero bytes for the first) and `canonical` the JSON array
//! `[tenant, seq, at, kind, queue_id, data]` with `data` as the stored JSON
//! text. Appending reads the chain head inside the writing transaction, so
//! a rolled-back write leaves no trace in the chain either.

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use super::Event;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS txlog (
    tenant   TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    at       INTEGER NOT NULL,
    kind     TEXT NOT NULL,
    queue_id TEXT NOT NULL,
    data     TEXT NOT NULL,
    prev     BLOB NOT NULL,
    hash     BLOB NOT NULL,
    PRIMARY KEY (tenant, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS txlog_at ON txlog(at);
";

pub fn init(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(SCHEMA)
}

/// The hash of a record, from its stored fields.
pub fn record_hash(
    prev: &[u8],
    tenant: &str,
    seq: i64,
    at: i64,
    kind: &str,
    queue_id: &str,
    data: &str,
) -> [u8; 32] {
    let canonical = serde_json::to_string(&(tenant, seq, at, kind, queue_id, data))
        .expect("plain values serialize");
    let mut h = Sha256::new();
    h.update(prev);
    h.update(canonical.as_bytes());
    h.finalize().into()
}

/// Appends events to a tenant's chain; call inside the transaction of the
/// change they describe.
pub fn append(conn: &Connection, tenant: &str, events: &[Event]) -> rusqlite::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let head: Option<(i64, Vec<u8>)> = conn
        .prepare_cached("SELECT seq, hash FROM txlog WHERE tenant = ? ORDER BY seq DESC LIMIT 1")?
        .query_row([tenant], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (mut seq, mut prev) = head.unwrap_or((0, vec![0; 32]));
    let mut insert = conn.prepare_cached(
        "INSERT INTO txlog (tenant, seq, at, kind, queue_id, data, prev, hash)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )?;
    for e in events {
        seq += 1;
        let queue_id = e.queue_id.to_string();
        let data = e.data.to_string();
        let hash = record_hash(&prev, tenant, seq, e.at, e.kind.name(), &queue_id, &data);
        insert.execute(params![
            tenant,
            seq,
            e.at,
            e.kind.name(),
            queue_id,
            data,
            prev,
            hash.as_slice()
        ])?;
        prev = hash.to_vec();
    }
    Ok(())
}

/// The outcome of walking one tenant's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// Every record holds; the head is `(seq, hash)` of the last one.
    Intact {
        records: i64,
        head: Option<(i64, String)>,
    },
    /// The first record where the chain breaks, and how.
    Broken { seq: i64, why: String },
}

/// Walks a tenant's chain from its first record.
pub fn verify(conn: &Connection, tenant: &str) -> rusqlite::Result<Verified> {
    let mut stmt = conn.prepare(
        "SELECT seq, at, kind, queue_id, data, prev, hash FROM txlog WHERE tenant = ? ORDER BY seq",
    )?;
    let mut rows = stmt.query([tenant])?;
    let mut expected_seq = 1;
    let mut prev_hash = vec![0u8; 32];
    let mut count = 0;
    while let Some(r) = rows.next()? {
        let seq: i64 = r.get(0)?;
        let at: i64 = r.get(1)?;
        let kind: String = r.get(2)?;
        let queue_id: String = r.get(3)?;
        let data: String = r.get(4)?;
        let prev: Vec<u8> = r.get(5)?;
        let hash: Vec<u8> = r.get(6)?;
        if seq != expected_seq {
            return Ok(Verified::Broken {
                seq: expected_seq,
                why: if seq > expected_seq {
                    format!(
                        "record {expected_seq} is missing (the next is {seq}): records were deleted"
                    )
                } else {
                    format!("record {seq} is out of order")
                },
            });
        }
        if prev != prev_hash {
            return Ok(Verified::Broken {
                seq,
                why: format!(
                    "record {seq} ({kind}) does not follow record {}: its predecessor's hash differs (a record was inserted, deleted or replaced before it)",
                    seq - 1
                ),
            });
        }
        let computed = record_hash(&prev, tenant, seq, at, &kind, &queue_id, &data);
        if computed.as_slice() != hash.as_slice() {
            return Ok(Verified::Broken {
                seq,
                why: format!(
                    "record {seq} ({kind}, message {queue_id}) does not match its hash: it was edited"
                ),
            });
        }
        prev_hash = hash;
        expected_seq += 1;
        count += 1;
    }
    Ok(Verified::Intact {
        records: count,
        head: (count > 0).then(|| (count, hex(&prev_hash))),
    })
}

/// Every tenant that has records.
pub fn tenants(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    conn.prepare("SELECT DISTINCT tenant FROM txlog ORDER BY tenant")?
        .query_map([], |r| r.get(0))?
        .collect()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::EventKind;
    use crate::spool::QueueId;

    fn event(n: u64) -> Event {
        Event {
            kind: EventKind::Attempt,
            queue_id: QueueId(n),
            at: 1_800_000_000 + n as i64,
            data: serde_json::json!({ "n": n, "to": format!("r{n}@x.test") }),
        }
    }

    #[test]
    fn the_chain_catches_edits_deletions_and_insertions() {
        let conn = Connection::open_in_memory().expect("db");
        init(&conn).expect("schema");
        append(&conn, "t", &[event(1), event(2)]).expect("append");
        append(&conn, "t", &[event(3)]).expect("append");
        append(&conn, "u", &[event(9)]).expect("append");
        let Verified::Intact { records, head } = verify(&conn, "t").expect("verify") else {
            panic!("intact");
        };
        assert_eq!(records, 3);
        assert_eq!(head.expect("head").0, 3);
        assert_eq!(tenants(&conn).expect("tenants"), vec!["t", "u"]);

        let broken = |sql: &str| {
            let c = Connection::open_in_memory().expect("db");
            init(&c).expect("schema");
            append(&c, "t", &[event(1), event(2), event(3)]).expect("append");
            c.execute_batch(sql).expect("tamper");
            verify(&c, "t").expect("verify")
        };
        let edited = broken("UPDATE txlog SET data = replace(data, 'r2@', 'evil@') WHERE seq = 2");
        assert!(
            matches!(&edited, Verified::Broken { seq: 2, why } if why.contains("edited")),
            "{edited:?}"
        );
        let deleted = broken("DELETE FROM txlog WHERE seq = 2");
        assert!(
            matches!(&deleted, Verified::Broken { seq: 2, why } if why.contains("missing")),
            "{deleted:?}"
        );
        // Inserted: the later records renumbered to make room for a forged one.
        let inserted = broken(
            "UPDATE txlog SET seq = seq + 100 WHERE seq >= 2;
             UPDATE txlog SET seq = seq - 99 WHERE seq >= 100;
             INSERT INTO txlog SELECT tenant, 2, at, kind, queue_id, data, hash, hash FROM txlog WHERE seq = 1;",
        );
        assert!(
            matches!(&inserted, Verified::Broken { seq: 2, .. }),
            "{inserted:?}"
        );
    }
}
