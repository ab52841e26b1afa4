//! The hash-chained transaction log in SQLite.
//!
//! Per tenant, records are numbered from 1 without gaps. A record's hash is
//! `SHA-256(prev || canonical)`, where `prev` is the previous record's hash
//! (32 zero bytes for the first) and `canonical` the JSON array
//! `[tenant, seq, at, kind, queue_id, data]` with `data` as the stored JSON
//! text. Appending reads the chain head inside the writing transaction, so
//! a rolled-back write leaves no trace in the chain either.
//!
//! Retention removes a prefix of a chain, never a record in the middle:
//! first a `pruned` record is appended naming the last record removed and
//! its hash, then the prefix goes. The remaining chain starts where the
//! `pruned` record says it must, with the hash it says it had.

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use super::Event;
use super::event::{EventData, Pruned as PrunedEvent, VERSION};
use crate::message::QueueId;

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

/// One record of a chain, ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Linked {
    pub seq: i64,
    pub at: i64,
    pub kind: &'static str,
    pub queue_id: String,
    pub data: String,
    pub prev: Vec<u8>,
    pub hash: [u8; 32],
}

/// The records `events` become after the chain's head (`None`: an empty
/// chain), whichever database stores them.
pub fn link(head: Option<(i64, Vec<u8>)>, tenant: &str, events: &[Event]) -> Vec<Linked> {
    let (mut seq, mut prev) = head.unwrap_or((0, vec![0; 32]));
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        seq += 1;
        let queue_id = e.queue_id.to_string();
        let data = e.data.to_json();
        let kind = e.data.kind();
        let hash = record_hash(&prev, tenant, seq, e.at, kind, &queue_id, &data);
        out.push(Linked {
            seq,
            at: e.at,
            kind,
            queue_id,
            data,
            prev: std::mem::replace(&mut prev, hash.to_vec()),
            hash,
        });
    }
    out
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
    let mut insert = conn.prepare_cached(
        "INSERT INTO txlog (tenant, seq, at, kind, queue_id, data, prev, hash)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )?;
    for r in link(head, tenant, events) {
        insert.execute(params![
            tenant,
            r.seq,
            r.at,
            r.kind,
            r.queue_id,
            r.data,
            r.prev,
            r.hash.as_slice()
        ])?;
    }
    Ok(())
}

/// What a pruning removed: records `from..=through`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pruned {
    pub from: i64,
    pub through: i64,
}

/// Removes the tenant's records older than `before` (the longest prefix
/// of the chain that is all older), after appending the `pruned` record
/// that vouches for them. Call inside a transaction.
pub fn prune(
    conn: &Connection,
    tenant: &str,
    before: i64,
    now: i64,
) -> rusqlite::Result<Option<Pruned>> {
    let (first, head): (Option<i64>, Option<i64>) = conn.query_row(
        "SELECT MIN(seq), MAX(seq) FROM txlog WHERE tenant = ?",
        [tenant],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let (Some(first), Some(head)) = (first, head) else {
        return Ok(None);
    };
    // Appends are numbered in commit order, and their times can differ
    // slightly from it: stop at the first record that is not old.
    let first_kept: Option<i64> = conn.query_row(
        "SELECT MIN(seq) FROM txlog WHERE tenant = ? AND at >= ?",
        params![tenant, before],
        |r| r.get(0),
    )?;
    let through = first_kept.map_or(head, |k| k - 1);
    if through < first {
        return Ok(None);
    }
    let hash: Vec<u8> = conn.query_row(
        "SELECT hash FROM txlog WHERE tenant = ? AND seq = ?",
        params![tenant, through],
        |r| r.get(0),
    )?;
    let record = Event {
        queue_id: QueueId(0),
        at: now,
        data: EventData::Pruned(PrunedEvent {
            v: VERSION,
            from_seq: first,
            through_seq: through,
            through_hash: hex(&hash),
            older_than: crate::util::rfc3339(before),
        }),
    };
    // Appended first: the head stays in place even when every record goes.
    append(conn, tenant, &[record])?;
    conn.execute(
        "DELETE FROM txlog WHERE tenant = ? AND seq <= ?",
        params![tenant, through],
    )?;
    Ok(Some(Pruned {
        from: first,
        through,
    }))
}

/// The outcome of walking one tenant's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// Every record holds; the head is `(seq, hash)` of the last one;
    /// records `1..=pruned` were removed by retention, as a `pruned`
    /// record in the chain says.
    Intact {
        records: i64,
        head: Option<(i64, String)>,
        pruned: Option<i64>,
    },
    /// The first record where the chain breaks, and how.
    Broken { seq: i64, why: String },
}

/// Walks a tenant's chain from its first record.
pub fn verify(conn: &Connection, tenant: &str) -> rusqlite::Result<Verified> {
    verify_with_progress(conn, tenant, &|| {})
}

/// How many records a tenant's chain holds (for a progress estimate).
pub fn count(conn: &Connection, tenant: &str) -> rusqlite::Result<u64> {
    conn.query_row(
        "SELECT count(*) FROM txlog WHERE tenant = ?",
        [tenant],
        |r| r.get(0),
    )
}

/// As [`verify`], calling `progress` once per record read.
pub fn verify_with_progress(
    conn: &Connection,
    tenant: &str,
    progress: &dyn Fn(),
) -> rusqlite::Result<Verified> {
    let mut stmt = conn.prepare(
        "SELECT seq, at, kind, queue_id, data, prev, hash FROM txlog WHERE tenant = ? ORDER BY seq",
    )?;
    let mut rows = stmt.query([tenant])?;
    let mut walk = Walk::new(tenant);
    while let Some(r) = rows.next()? {
        progress();
        if let Some(broken) = walk.next(Stored::from_row(r, 0)?) {
            return Ok(broken);
        }
    }
    Ok(walk.end())
}

/// One record as a database holds it.
#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: i64,
    pub at: i64,
    pub kind: String,
    pub queue_id: String,
    pub data: String,
    pub prev: Vec<u8>,
    pub hash: Vec<u8>,
}

impl Stored {
    /// From a SQLite row whose columns from `first` on are seq, at, kind,
    /// queue_id, data, prev, hash.
    pub fn from_row(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Stored> {
        Ok(Stored {
            seq: r.get(first)?,
            at: r.get(first + 1)?,
            kind: r.get(first + 2)?,
            queue_id: r.get(first + 3)?,
            data: r.get(first + 4)?,
            prev: r.get(first + 5)?,
            hash: r.get(first + 6)?,
        })
    }
}

/// A walk along one tenant's chain, fed its records in `seq` order from
/// whichever database holds them.
pub struct Walk<'a> {
    tenant: &'a str,
    expected_seq: i64,
    prev_hash: Vec<u8>,
    count: i64,
    /// Where the chain starts when retention removed its beginning: the
    /// record before the first one kept, and the hash that one had.
    start: Option<(i64, String)>,
    /// What the `pruned` records in the chain vouch for: the latest one.
    vouched: Option<(i64, String)>,
}

impl<'a> Walk<'a> {
    pub fn new(tenant: &'a str) -> Walk<'a> {
        Walk {
            tenant,
            expected_seq: 1,
            prev_hash: vec![0u8; 32],
            count: 0,
            start: None,
            vouched: None,
        }
    }

    /// The next record; `Some` when the chain breaks at it.
    pub fn next(&mut self, r: Stored) -> Option<Verified> {
        let Stored {
            seq,
            at,
            kind,
            queue_id,
            data,
            prev,
            hash,
        } = r;
        if self.count == 0 && seq > 1 {
            // Checked against the `pruned` records at the end.
            self.start = Some((seq - 1, hex(&prev)));
            self.expected_seq = seq;
            self.prev_hash = prev.clone();
        }
        let expected_seq = self.expected_seq;
        if seq != expected_seq {
            return Some(Verified::Broken {
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
        if prev != self.prev_hash {
            return Some(Verified::Broken {
                seq,
                why: format!(
                    "record {seq} ({kind}) does not follow record {}: its predecessor's hash differs (a record was inserted, deleted or replaced before it)",
                    seq - 1
                ),
            });
        }
        let computed = record_hash(&prev, self.tenant, seq, at, &kind, &queue_id, &data);
        if computed.as_slice() != hash.as_slice() {
            return Some(Verified::Broken {
                seq,
                why: format!(
                    "record {seq} ({kind}, message {queue_id}) does not match its hash: it was edited"
                ),
            });
        }
        if let Ok(EventData::Pruned(p)) = EventData::parse(&kind, &data) {
            self.vouched = Some((p.through_seq, p.through_hash));
        }
        self.prev_hash = hash;
        self.expected_seq += 1;
        self.count += 1;
        None
    }

    /// After the last record: the chain's state.
    pub fn end(self) -> Verified {
        if let Some((before, hash)) = &self.start {
            match &self.vouched {
                Some((through, h)) if through == before && h == hash => {}
                Some((through, _)) if through < before => {
                    return Verified::Broken {
                        seq: through + 1,
                        why: format!(
                            "records {}–{before} are missing: retention removed records up to {through} only, the rest were deleted",
                            through + 1
                        ),
                    };
                }
                Some((through, _)) if through == before => {
                    return Verified::Broken {
                        seq: before + 1,
                        why: format!(
                            "record {} does not follow the pruned record {before}: its predecessor's hash is not the one the pruning recorded",
                            before + 1
                        ),
                    };
                }
                Some((through, _)) => {
                    return Verified::Broken {
                        seq: before + 1,
                        why: format!(
                            "the chain starts at record {} though the last pruning removed records up to {through}",
                            before + 1
                        ),
                    };
                }
                None => {
                    return Verified::Broken {
                        seq: 1,
                        why: format!(
                            "records 1–{before} are missing and no pruned record accounts for them: records were deleted"
                        ),
                    };
                }
            }
        }
        let last = self.expected_seq - 1;
        Verified::Intact {
            records: self.count,
            head: (self.count > 0).then(|| (last, hex(&self.prev_hash))),
            pruned: self.start.map(|(before, _)| before),
        }
    }
}

/// The tenant's records after number `after`, in order, at most `limit`.
pub fn read_after(
    conn: &Connection,
    tenant: &str,
    after: i64,
    limit: usize,
) -> rusqlite::Result<Vec<Stored>> {
    conn.prepare_cached(
        "SELECT seq, at, kind, queue_id, data, prev, hash FROM txlog
         WHERE tenant = ? AND seq > ? ORDER BY seq LIMIT ?",
    )?
    .query_map(params![tenant, after, limit as i64], |r| {
        Stored::from_row(r, 0)
    })?
    .collect()
}

/// The tenant's records with these numbers, in order.
pub fn read_seqs(conn: &Connection, tenant: &str, seqs: &[i64]) -> rusqlite::Result<Vec<Stored>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, at, kind, queue_id, data, prev, hash FROM txlog WHERE tenant = ? AND seq = ?",
    )?;
    let mut out = Vec::with_capacity(seqs.len());
    for seq in seqs {
        if let Some(r) = stmt
            .query_row(params![tenant, seq], |r| Stored::from_row(r, 0))
            .optional()?
        {
            out.push(r);
        }
    }
    out.sort_by_key(|r| r.seq);
    Ok(out)
}

/// Every tenant that has records.
pub fn tenants(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    conn.prepare("SELECT DISTINCT tenant FROM txlog ORDER BY tenant")?
        .query_map([], |r| r.get(0))?
        .collect()
}

pub use crate::util::hex;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::QueueId;
    use crate::report::event::Deleted;

    fn event(n: u64) -> Event {
        Event {
            queue_id: QueueId(n),
            at: 1_800_000_000 + n as i64,
            data: EventData::Deleted(Deleted {
                v: VERSION,
                by: format!("r{n}@x.test"),
                reason: None,
            }),
        }
    }

    #[test]
    fn the_chain_catches_edits_deletions_and_insertions() {
        let conn = Connection::open_in_memory().expect("db");
        init(&conn).expect("schema");
        append(&conn, "t", &[event(1), event(2)]).expect("append");
        append(&conn, "t", &[event(3)]).expect("append");
        append(&conn, "u", &[event(9)]).expect("append");
        let Verified::Intact { records, head, .. } = verify(&conn, "t").expect("verify") else {
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

    #[test]
    fn retention_removes_a_prefix_and_the_chain_still_verifies() {
        let conn = Connection::open_in_memory().expect("db");
        init(&conn).expect("schema");
        // Times 1_800_000_001.. : records 1-3 are older than the cut.
        append(
            &conn,
            "t",
            &[event(1), event(2), event(3), event(7), event(8)],
        )
        .expect("append");
        let cut = 1_800_000_005;
        let pruned = prune(&conn, "t", cut, 1_900_000_000).expect("prune");
        assert_eq!(
            pruned,
            Some(Pruned {
                from: 1,
                through: 3
            })
        );
        assert_eq!(prune(&conn, "t", cut, 1_900_000_000).expect("again"), None);
        let v = verify(&conn, "t").expect("verify");
        assert_eq!(
            v,
            Verified::Intact {
                records: 3,
                head: Some((6, hex(&head_hash(&conn)))),
                pruned: Some(3),
            }
        );
        // A second pruning takes everything, its own earlier record too.
        append(&conn, "t", &[event(9)]).expect("append");
        let pruned = prune(&conn, "t", 2_000_000_000, 2_000_000_000).expect("prune");
        assert_eq!(
            pruned,
            Some(Pruned {
                from: 4,
                through: 7
            })
        );
        let Verified::Intact {
            records: 1,
            pruned: Some(7),
            head: Some((8, _)),
        } = verify(&conn, "t").expect("verify")
        else {
            panic!("intact after the second pruning");
        };
        append(&conn, "t", &[event(10)]).expect("append after pruning");
        assert!(matches!(
            verify(&conn, "t").expect("verify"),
            Verified::Intact { records: 2, .. }
        ));

        // Deleting beyond what a pruning vouches for is found.
        let broken = |sql: &str| {
            let c = Connection::open_in_memory().expect("db");
            init(&c).expect("schema");
            append(&c, "t", &[event(1), event(2), event(3), event(7), event(8)]).expect("append");
            prune(&c, "t", 1_800_000_005, 1_900_000_000).expect("prune");
            c.execute_batch(sql).expect("tamper");
            verify(&c, "t").expect("verify")
        };
        let v = broken("DELETE FROM txlog WHERE seq = 4");
        assert!(
            matches!(&v, Verified::Broken { seq: 4, why } if why.contains("up to 3 only")),
            "{v:?}"
        );
        // The pruned record itself removed (and the chain renumbered to hide it) is found.
        let v = broken("DELETE FROM txlog WHERE kind = 'pruned'");
        assert!(matches!(&v, Verified::Broken { seq: 1, .. }), "{v:?}");
        // Without any pruning, a missing beginning is deletion.
        let c = Connection::open_in_memory().expect("db");
        init(&c).expect("schema");
        append(&c, "t", &[event(1), event(2)]).expect("append");
        c.execute_batch("DELETE FROM txlog WHERE seq = 1")
            .expect("tamper");
        let v = verify(&c, "t").expect("verify");
        assert!(
            matches!(&v, Verified::Broken { seq: 1, why } if why.contains("no pruned record")),
            "{v:?}"
        );
    }

    fn head_hash(conn: &Connection) -> Vec<u8> {
        conn.query_row(
            "SELECT hash FROM txlog WHERE tenant = 't' ORDER BY seq DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .expect("head")
    }
}
