//! What sealgate remembers of each recipient domain: the best level its
//! transport ever reached, the last one, whether it is in a downgrade, and
//! the last verdict of each MX host (the domain risk cache).
//!
//! The memory orders hosts and feeds the risk view and the downgrade
//! defence; it never authorizes a delivery (DESIGN.md): every message is
//! decided on the verdict of the connection it travels on. Kept in memory
//! and written through to the `domains` and `domain_hosts` tables of the
//! gateway's SQLite database when something changes (or, for unchanged
//! verdicts, at most once a minute), so a busy domain costs no write per
//! message.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::History;
use crate::qualify::{Level, Verdict};
use crate::util::rfc3339;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS domains (
    domain          TEXT PRIMARY KEY,
    best_level      TEXT NOT NULL,
    best_at         INTEGER NOT NULL,
    last_level      TEXT NOT NULL,
    last_at         INTEGER NOT NULL,
    downgrade_since INTEGER,
    confirmed_at    INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS domains_downgraded ON domains(downgrade_since)
    WHERE downgrade_since IS NOT NULL;
CREATE TABLE IF NOT EXISTS domain_hosts (
    domain      TEXT NOT NULL,
    mx_host     TEXT NOT NULL,
    address     TEXT NOT NULL,
    level       TEXT NOT NULL,
    shortfalls  TEXT NOT NULL,
    at          INTEGER NOT NULL,
    valid_until INTEGER NOT NULL,
    PRIMARY KEY (domain, mx_host)
) WITHOUT ROWID;
";

/// Unchanged verdicts are written at most this often.
const REFRESH: i64 = 60;

/// One domain as remembered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DomainRecord {
    pub domain: String,
    pub best: Level,
    pub best_at: i64,
    pub last: Level,
    pub last_at: i64,
    /// When the level first fell below `best`, if it is below now.
    pub downgrade_since: Option<i64>,
    /// When an operator last accepted the current level as the new best.
    pub confirmed_at: Option<i64>,
    pub hosts: Vec<HostRecord>,
}

/// The last verdict of one MX host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostRecord {
    pub mx_host: String,
    pub address: String,
    pub level: Level,
    /// The checks that failed, as `name: detail`.
    pub shortfalls: Vec<String>,
    pub at: i64,
    /// Bounded by the DNS TTLs and the revocation answer's nextUpdate.
    pub valid_until: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("domain memory database: {0}")]
    Database(#[from] rusqlite::Error),
    #[error("{0}: no such domain in the memory")]
    Unknown(String),
}

struct Entry {
    record: Option<DomainRecord>,
    written: i64,
}

pub struct DomainMemory {
    db: Option<Mutex<Connection>>,
    domains: Mutex<HashMap<String, Entry>>,
    hold: Duration,
}

impl DomainMemory {
    /// `db`: the gateway's database (none: memory only, as in unit tests);
    /// `hold`: how long a downgrade holds high-class mail.
    pub fn open(db: Option<&Path>, hold: Duration) -> Result<DomainMemory, MemoryError> {
        let db = match db {
            Some(path) => {
                let conn = Connection::open(path)?;
                conn.busy_timeout(Duration::from_secs(5))?;
                conn.pragma_update(None, "journal_mode", "WAL")?;
                conn.pragma_update(None, "synchronous", "NORMAL")?;
                conn.execute_batch(SCHEMA)?;
                Some(Mutex::new(conn))
            }
            None => None,
        };
        Ok(DomainMemory {
            db,
            domains: Mutex::new(HashMap::new()),
            hold,
        })
    }

    /// The history a decision weighs, as it stands.
    pub fn history(&self, domain: &str) -> History {
        let Ok(mut map) = self.domains.lock() else {
            return History::Ordinary;
        };
        let entry = self.entry(&mut map, domain);
        history_of(entry.record.as_ref(), self.hold)
    }

    /// Records an attempt's verdicts (`best`: of the hosts that could be
    /// used) and returns the domain's history including them. A fall from
    /// the best level is logged as an alert when it starts.
    pub fn observe(
        &self,
        domain: &str,
        best: &Verdict,
        all: &[(Verdict, i64)],
        now: i64,
    ) -> History {
        let Ok(mut map) = self.domains.lock() else {
            return History::Ordinary;
        };
        let hold = self.hold;
        let entry = self.entry(&mut map, domain);
        let before = entry.record.clone();
        let record = entry.record.get_or_insert_with(|| DomainRecord {
            domain: domain.to_string(),
            best: best.observed_level,
            best_at: now,
            last: best.observed_level,
            last_at: now,
            downgrade_since: None,
            confirmed_at: None,
            hosts: Vec::new(),
        });
        // What the transport was worth, usable or not: a domain whose
        // hosts became refused has downgraded as surely as one gone plaintext.
        let level = best.observed_level;
        if level >= record.best {
            record.best = level;
            record.best_at = now;
            record.downgrade_since = None;
        } else if record.best >= Level::Authenticated && record.downgrade_since.is_none() {
            record.downgrade_since = Some(now);
            tracing::warn!(
                %domain,
                alert = "downgrade",
                "transport downgrade: {domain} reached {} before (last {}), now {} on {}: {}",
                record.best.name(),
                rfc3339(record.best_at),
                level.name(),
                best.mx_host,
                best.shortfalls().join("; ")
            );
        }
        record.last = level;
        record.last_at = now;
        for (v, valid_until) in all {
            let host = HostRecord {
                mx_host: v.mx_host.clone(),
                address: v.address.clone(),
                level: v.observed_level,
                shortfalls: v.shortfalls(),
                at: now,
                valid_until: *valid_until,
            };
            match record.hosts.iter_mut().find(|h| h.mx_host == v.mx_host) {
                Some(h) => *h = host,
                None => record.hosts.push(host),
            }
        }
        let changed = before.as_ref().is_none_or(|b| {
            b.best != record.best
                || b.last != record.last
                || b.downgrade_since != record.downgrade_since
                || b.hosts.len() != record.hosts.len()
                || b.hosts.iter().zip(&record.hosts).any(|(x, y)| {
                    x.level != y.level || x.shortfalls != y.shortfalls || x.address != y.address
                })
        });
        let history = history_of(Some(record), hold);
        if changed || now - entry.written >= REFRESH {
            let record = record.clone();
            entry.written = now;
            if let Err(e) = self.write(&record) {
                tracing::warn!(%domain, "cannot write the domain memory: {e}");
            }
        }
        history
    }

    /// The cached level of a host, while its verdict is valid.
    pub fn cached_level(&self, domain: &str, mx_host: &str, now: i64) -> Option<Level> {
        let mut map = self.domains.lock().ok()?;
        let entry = self.entry(&mut map, domain);
        entry
            .record
            .as_ref()?
            .hosts
            .iter()
            .find(|h| h.mx_host.eq_ignore_ascii_case(mx_host) && h.valid_until > now)
            .map(|h| h.level)
    }

    /// An operator accepts the domain's current level as its best: the
    /// downgrade ends, and held mail is decided normally on the next try.
    pub fn confirm(&self, domain: &str, now: i64) -> Result<DomainRecord, MemoryError> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let mut map = self
            .domains
            .lock()
            .map_err(|_| MemoryError::Unknown(domain.clone()))?;
        let entry = self.entry(&mut map, &domain);
        let Some(record) = entry.record.as_mut() else {
            return Err(MemoryError::Unknown(domain));
        };
        record.best = record.last;
        record.best_at = now;
        record.downgrade_since = None;
        record.confirmed_at = Some(now);
        let record = record.clone();
        entry.written = now;
        self.write(&record)?;
        tracing::info!(%domain, "downgrade confirmed by an operator: {} is the new best", record.best.name());
        Ok(record)
    }

    /// Every remembered domain, from the database.
    pub fn list(&self) -> Result<Vec<DomainRecord>, MemoryError> {
        self.select(|_| true, "", &[], None)
    }

    /// The domains below their best level now (an index finds them).
    pub fn downgraded(&self) -> Result<Vec<DomainRecord>, MemoryError> {
        self.select(
            |r| r.downgrade_since.is_some(),
            "WHERE downgrade_since IS NOT NULL",
            &[],
            None,
        )
    }

    /// At most `limit` domains after `after`, in name order: a page of a
    /// long list.
    pub fn page(&self, after: &str, limit: usize) -> Result<Vec<DomainRecord>, MemoryError> {
        let after = after.trim().to_ascii_lowercase();
        self.select(
            |r| r.domain.as_str() > after.as_str(),
            "WHERE domain > ?1",
            &[&after],
            Some(limit),
        )
    }

    fn select(
        &self,
        keep: impl Fn(&DomainRecord) -> bool,
        filter: &str,
        params: &[&dyn rusqlite::ToSql],
        limit: Option<usize>,
    ) -> Result<Vec<DomainRecord>, MemoryError> {
        let Some(db) = &self.db else {
            let map = self
                .domains
                .lock()
                .map_err(|_| MemoryError::Unknown("*".into()))?;
            let mut v: Vec<_> = map
                .values()
                .filter_map(|e| e.record.clone())
                .filter(|r| keep(r))
                .collect();
            v.sort_by(|a, b| a.domain.cmp(&b.domain));
            v.truncate(limit.unwrap_or(usize::MAX));
            return Ok(v);
        };
        let conn = db.lock().map_err(|_| MemoryError::Unknown("*".into()))?;
        let limit = limit.map(|n| format!(" LIMIT {n}")).unwrap_or_default();
        let names: Vec<String> = conn
            .prepare(&format!(
                "SELECT domain FROM domains {filter} ORDER BY domain{limit}"
            ))?
            .query_map(params, |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::new();
        for name in names {
            if let Some(r) = read(&conn, &name)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// One domain, from the database (or memory).
    pub fn show(&self, domain: &str) -> Result<Option<DomainRecord>, MemoryError> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        match &self.db {
            Some(db) => {
                let conn = db
                    .lock()
                    .map_err(|_| MemoryError::Unknown(domain.clone()))?;
                read(&conn, &domain)
            }
            None => Ok(self
                .domains
                .lock()
                .ok()
                .and_then(|m| m.get(&domain).and_then(|e| e.record.clone()))),
        }
    }

    fn entry<'a>(&self, map: &'a mut HashMap<String, Entry>, domain: &str) -> &'a mut Entry {
        map.entry(domain.to_string()).or_insert_with(|| {
            let record = self.db.as_ref().and_then(|db| {
                let conn = db.lock().ok()?;
                read(&conn, domain)
                    .inspect_err(|e| tracing::warn!(%domain, "cannot read the domain memory: {e}"))
                    .ok()
                    .flatten()
            });
            Entry { record, written: 0 }
        })
    }

    fn write(&self, r: &DomainRecord) -> Result<(), MemoryError> {
        let Some(db) = &self.db else { return Ok(()) };
        let mut conn = db
            .lock()
            .map_err(|_| MemoryError::Unknown(r.domain.clone()))?;
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO domains
             (domain, best_level, best_at, last_level, last_at, downgrade_since, confirmed_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
            params![
                r.domain,
                r.best.name(),
                r.best_at,
                r.last.name(),
                r.last_at,
                r.downgrade_since,
                r.confirmed_at
            ],
        )?;
        for h in &r.hosts {
            tx.execute(
                "INSERT OR REPLACE INTO domain_hosts
                 (domain, mx_host, address, level, shortfalls, at, valid_until)
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
                params![
                    r.domain,
                    h.mx_host,
                    h.address,
                    h.level.name(),
                    serde_json::to_string(&h.shortfalls).unwrap_or_default(),
                    h.at,
                    h.valid_until
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}

fn history_of(record: Option<&DomainRecord>, hold: Duration) -> History {
    match record {
        Some(r) => match r.downgrade_since {
            Some(since) => History::Downgrade {
                best: r.best,
                since,
                hold_until: since + hold.as_secs() as i64,
            },
            None => History::Ordinary,
        },
        None => History::Ordinary,
    }
}

fn read(conn: &Connection, domain: &str) -> Result<Option<DomainRecord>, MemoryError> {
    let level = |s: String| s.parse().unwrap_or(Level::Plaintext);
    let record = conn
        .query_row(
            "SELECT best_level, best_at, last_level, last_at, downgrade_since, confirmed_at
             FROM domains WHERE domain = ?",
            [domain],
            |r| {
                Ok(DomainRecord {
                    domain: domain.to_string(),
                    best: level(r.get(0)?),
                    best_at: r.get(1)?,
                    last: level(r.get(2)?),
                    last_at: r.get(3)?,
                    downgrade_since: r.get(4)?,
                    confirmed_at: r.get(5)?,
                    hosts: Vec::new(),
                })
            },
        )
        .optional()?;
    let Some(mut record) = record else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT mx_host, address, level, shortfalls, at, valid_until
         FROM domain_hosts WHERE domain = ? ORDER BY mx_host",
    )?;
    record.hosts = stmt
        .query_map([domain], |r| {
            Ok(HostRecord {
                mx_host: r.get(0)?,
                address: r.get(1)?,
                level: level(r.get(2)?),
                shortfalls: serde_json::from_str(&r.get::<_, String>(3)?).unwrap_or_default(),
                at: r.get(4)?,
                valid_until: r.get(5)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(Some(record))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qualify::{Check, CheckName, Status};

    fn verdict(starttls: bool) -> Verdict {
        let status = if starttls { Status::Pass } else { Status::Fail };
        let mut checks = vec![
            Check::new(CheckName::Starttls, status, "STARTTLS not offered"),
            Check::new(CheckName::Protocol, Status::Pass, ""),
        ];
        if starttls {
            for n in [
                CheckName::Dnssec,
                CheckName::Pkix,
                CheckName::Hostname,
                CheckName::Revocation,
                CheckName::Cipher,
                CheckName::KeyExchange,
                CheckName::KeySize,
            ] {
                checks.push(Check::new(n, Status::Pass, ""));
            }
        }
        Verdict::new(
            ("d.test", "mx.d.test", "127.0.0.1"),
            checks,
            Vec::new(),
            None,
            0,
        )
    }

    #[test]
    fn a_fall_from_the_best_level_is_a_downgrade_until_confirmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("m.db");
        let memory = DomainMemory::open(Some(&db), Duration::from_secs(3600)).expect("open");
        let good = verdict(true);
        assert_eq!(good.level, Some(Level::Qualified));
        assert_eq!(
            memory.observe("d.test", &good, &[(good.clone(), 500)], 100),
            History::Ordinary
        );
        let bad = verdict(false);
        let h = memory.observe("d.test", &bad, &[(bad.clone(), 800)], 200);
        let found = memory.downgraded().expect("downgraded");
        assert_eq!(found.len(), 1, "the index finds the downgrade");
        assert_eq!(found[0].downgrade_since, Some(200));
        assert_eq!(
            h,
            History::Downgrade {
                best: Level::Qualified,
                since: 200,
                hold_until: 3800
            }
        );
        // It persists (and its start does not move) across a restart.
        drop(memory);
        let memory = DomainMemory::open(Some(&db), Duration::from_secs(3600)).expect("reopen");
        assert_eq!(memory.history("d.test"), h);
        let h2 = memory.observe("d.test", &bad, &[(bad.clone(), 900)], 300);
        assert_eq!(h2, h);
        assert_eq!(
            memory.cached_level("d.test", "mx.d.test", 850),
            Some(Level::Plaintext)
        );
        assert_eq!(
            memory.cached_level("d.test", "mx.d.test", 900),
            None,
            "expired"
        );
        let r = memory.confirm("D.test.", 400).expect("confirm");
        assert_eq!(
            (r.best, r.downgrade_since, r.confirmed_at),
            (Level::Plaintext, None, Some(400))
        );
        assert_eq!(memory.history("d.test"), History::Ordinary);
        assert!(memory.downgraded().expect("downgraded").is_empty());
        let listed = memory.list().expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(
            listed[0].hosts[0].shortfalls,
            vec!["starttls: STARTTLS not offered".to_string()]
        );
        // Recovering to the best level ends a downgrade by itself.
        memory.observe("d.test", &good, &[], 500);
        memory.observe("d.test", &bad, &[], 600);
        memory.observe("d.test", &good, &[], 700);
        assert_eq!(memory.history("d.test"), History::Ordinary);
        // Pages of the list follow each other by name.
        for d in ["a.test", "b.test", "c.test"] {
            memory.observe(d, &good, &[], 800);
        }
        let names =
            |page: Vec<DomainRecord>| page.into_iter().map(|r| r.domain).collect::<Vec<_>>();
        assert_eq!(
            names(memory.page("", 2).expect("page")),
            ["a.test", "b.test"]
        );
        assert_eq!(
            names(memory.page("b.test", 2).expect("page")),
            ["c.test", "d.test"]
        );
        assert!(memory.page("d.test", 2).expect("page").is_empty());
        assert!(matches!(
            memory.confirm("never.test", 1),
            Err(MemoryError::Unknown(_))
        ));
    }
}
