//! What sealgate remembers of each recipient domain: the best level its
//! transport ever reached, the last one, whether it is in a downgrade, and
//! the last verdict of each MX host (the domain risk cache).
//!
//! The memory orders hosts and feeds the risk view and the downgrade
//! defence; it never authorizes a delivery (DESIGN.md): every message is
//! decided on the verdict of the connection it travels on. Kept in memory
//! and written through to a [`DomainStore`] when something changes (or,
//! for unchanged verdicts, at most once a minute), so a busy domain costs
//! no write per message: the `domains` and `domain_hosts` tables of the
//! gateway's SQLite database, or of the PostgreSQL database a cluster
//! shares. A shared store merges what every node observes (a domain falls
//! into a downgrade for all nodes at once, and an operator's confirm on
//! any node ends it for all), and a node reads a downgraded domain again
//! before its memory holds mail.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Mutex as SyncMutex;
use std::time::Duration;

use tokio::sync::Mutex;

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
    /// The cluster's database failed; the text has its causes.
    #[error("domain memory in the storage database: {0}")]
    Shared(String),
    #[error("{0}: no such domain in the memory")]
    Unknown(String),
}

pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, MemoryError>> + Send + 'a>>;

/// Which remembered domains to read.
#[derive(Debug, Clone, Copy)]
pub enum Select<'a> {
    All,
    /// Those below their best level now.
    Downgraded,
    /// At most `limit` domains after this name, in name order.
    After(&'a str, usize),
}

/// Where the memory is kept (see the module doc).
pub trait DomainStore: Send + Sync {
    /// Whether other nodes write it too: what a node holds of it in
    /// memory may then be old.
    fn shared(&self) -> bool;
    fn read<'a>(&'a self, domain: &'a str) -> StoreFuture<'a, Option<DomainRecord>>;
    /// Writes what this node observed (`record` as this node sees it now)
    /// and returns the record as stored: a shared store merges the
    /// observed level into what other nodes wrote, so its answer is the
    /// one to keep.
    fn observe<'a>(&'a self, record: &'a DomainRecord) -> StoreFuture<'a, DomainRecord>;
    /// An operator's confirm; `None` for a domain never seen.
    fn confirm<'a>(&'a self, domain: &'a str, now: i64) -> StoreFuture<'a, Option<DomainRecord>>;
    fn select<'a>(&'a self, which: Select<'a>) -> StoreFuture<'a, Vec<DomainRecord>>;
}

struct Entry {
    record: Option<DomainRecord>,
    /// When it was last written, and read from the store.
    written: i64,
    read: i64,
}

pub struct DomainMemory {
    store: Option<Box<dyn DomainStore>>,
    /// Held across a store's round trip, so that two attempts to one
    /// domain never write over each other's observation.
    domains: Mutex<HashMap<String, Entry>>,
    hold: Duration,
}

impl DomainMemory {
    /// `store`: where it is kept (none: in memory only, as for `sealgate
    /// check` and unit tests); `hold`: how long a downgrade holds
    /// high-class mail.
    pub fn new(store: Option<Box<dyn DomainStore>>, hold: Duration) -> DomainMemory {
        DomainMemory {
            store,
            domains: Mutex::new(HashMap::new()),
            hold,
        }
    }

    /// The memory in a node's own SQLite database.
    pub fn open(db: &Path, hold: Duration) -> Result<DomainMemory, MemoryError> {
        Ok(DomainMemory::new(
            Some(Box::new(SqliteDomains::open(db)?)),
            hold,
        ))
    }

    /// The history a decision weighs, as it stands.
    pub async fn history(&self, domain: &str, now: i64) -> History {
        let mut map = self.domains.lock().await;
        let record = self.entry(&mut map, domain, now).await;
        history_of(record.as_ref(), self.hold)
    }

    /// Records an attempt's verdicts (`best`: of the hosts that could be
    /// used) and returns the domain's history including them. A fall from
    /// the best level is logged as an alert when it starts.
    pub async fn observe(
        &self,
        domain: &str,
        best: &Verdict,
        all: &[(Verdict, i64)],
        now: i64,
    ) -> History {
        let mut map = self.domains.lock().await;
        let before = self.entry(&mut map, domain, now).await;
        let mut record = before.clone().unwrap_or_else(|| DomainRecord {
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
        fold(&mut record, best.observed_level, now);
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
        // Kept even when the store could not be read: the next write puts it there.
        let entry = map.entry(domain.to_string()).or_insert(Entry {
            record: None,
            written: 0,
            read: 0,
        });
        if changed || now - entry.written >= REFRESH {
            entry.written = now;
            if let Some(store) = &self.store {
                match store.observe(&record).await {
                    Ok(stored) => {
                        record = stored;
                        entry.read = now;
                    }
                    Err(e) => tracing::warn!(%domain, "cannot write the domain memory: {e}"),
                }
            }
        }
        if record.downgrade_since == Some(now)
            && before.as_ref().is_none_or(|b| b.downgrade_since.is_none())
        {
            tracing::warn!(
                %domain,
                alert = "downgrade",
                "transport downgrade: {domain} reached {} before (last {}), now {} on {}: {}",
                record.best.name(),
                rfc3339(record.best_at),
                best.observed_level.name(),
                best.mx_host,
                best.shortfalls().join("; ")
            );
        }
        let history = history_of(Some(&record), self.hold);
        entry.record = Some(record);
        history
    }

    /// The cached level of each host of `domain` whose verdict is still valid.
    pub async fn host_levels(&self, domain: &str, now: i64) -> HashMap<String, Level> {
        let mut map = self.domains.lock().await;
        let record = self.entry(&mut map, domain, now).await;
        record
            .map(|r| r.hosts)
            .unwrap_or_default()
            .into_iter()
            .filter(|h| h.valid_until > now)
            .map(|h| (h.mx_host.to_ascii_lowercase(), h.level))
            .collect()
    }

    /// An operator accepts the domain's current level as its best: the
    /// downgrade ends, and held mail is decided normally on the next try
    /// (on every node of a cluster).
    pub async fn confirm(&self, domain: &str, now: i64) -> Result<DomainRecord, MemoryError> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let mut map = self.domains.lock().await;
        let record = match &self.store {
            Some(store) => store.confirm(&domain, now).await?,
            None => map
                .get(&domain)
                .and_then(|e| e.record.clone())
                .map(|mut r| {
                    r.best = r.last;
                    r.best_at = now;
                    r.downgrade_since = None;
                    r.confirmed_at = Some(now);
                    r
                }),
        };
        let Some(record) = record else {
            return Err(MemoryError::Unknown(domain));
        };
        map.insert(
            domain.clone(),
            Entry {
                record: Some(record.clone()),
                written: now,
                read: now,
            },
        );
        tracing::info!(%domain, "downgrade confirmed by an operator: {} is the new best", record.best.name());
        Ok(record)
    }

    /// Every remembered domain, from the store.
    pub async fn list(&self) -> Result<Vec<DomainRecord>, MemoryError> {
        self.select(Select::All).await
    }

    /// The domains below their best level now (an index finds them).
    pub async fn downgraded(&self) -> Result<Vec<DomainRecord>, MemoryError> {
        self.select(Select::Downgraded).await
    }

    /// At most `limit` domains after `after`, in name order: a page of a
    /// long list.
    pub async fn page(&self, after: &str, limit: usize) -> Result<Vec<DomainRecord>, MemoryError> {
        let after = after.trim().to_ascii_lowercase();
        self.select(Select::After(&after, limit)).await
    }

    async fn select(&self, which: Select<'_>) -> Result<Vec<DomainRecord>, MemoryError> {
        if let Some(store) = &self.store {
            return store.select(which).await;
        }
        let map = self.domains.lock().await;
        let mut v: Vec<_> = map
            .values()
            .filter_map(|e| e.record.clone())
            .filter(|r| match which {
                Select::All => true,
                Select::Downgraded => r.downgrade_since.is_some(),
                Select::After(after, _) => r.domain.as_str() > after,
            })
            .collect();
        v.sort_by(|a, b| a.domain.cmp(&b.domain));
        if let Select::After(_, limit) = which {
            v.truncate(limit);
        }
        Ok(v)
    }

    /// One domain, from the store (or memory).
    pub async fn show(&self, domain: &str) -> Result<Option<DomainRecord>, MemoryError> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        match &self.store {
            Some(store) => store.read(&domain).await,
            None => Ok(self
                .domains
                .lock()
                .await
                .get(&domain)
                .and_then(|e| e.record.clone())),
        }
    }

    /// The domain as this node should weigh it, read from the store when
    /// first needed, and again from a shared store once a minute or while
    /// it is in a downgrade: another node's confirm then counts here at
    /// once, and a held message is never held on an old view.
    async fn entry(
        &self,
        map: &mut HashMap<String, Entry>,
        domain: &str,
        now: i64,
    ) -> Option<DomainRecord> {
        let shared = self.store.as_ref().is_some_and(|s| s.shared());
        if let Some(e) = map.get(domain) {
            let old = shared
                && (now - e.read >= REFRESH
                    || e.record
                        .as_ref()
                        .is_some_and(|r| r.downgrade_since.is_some()));
            if !old {
                return e.record.clone();
            }
        }
        let record = match &self.store {
            Some(store) => match store.read(domain).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(%domain, "cannot read the domain memory: {e}");
                    // What we had beats nothing while the store is away.
                    return map.get(domain).and_then(|e| e.record.clone());
                }
            },
            None => None,
        };
        let entry = map.entry(domain.to_string()).or_insert(Entry {
            record: None,
            written: 0,
            read: now,
        });
        entry.record = record.clone();
        entry.read = now;
        record
    }
}

/// One observed level folded into a record: a level at or above the best
/// is the new best and ends a downgrade; a fall from an authenticated
/// best starts one. The shared store does the same in SQL
/// (`spool::pg_domains`).
fn fold(record: &mut DomainRecord, level: Level, now: i64) {
    if level >= record.best {
        record.best = level;
        record.best_at = now;
        record.downgrade_since = None;
    } else if record.best >= Level::Authenticated && record.downgrade_since.is_none() {
        record.downgrade_since = Some(now);
    }
    record.last = level;
    record.last_at = now;
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

/// The memory in the node's own SQLite database.
pub struct SqliteDomains {
    conn: SyncMutex<Connection>,
}

impl SqliteDomains {
    pub fn open(db: &Path) -> Result<SqliteDomains, MemoryError> {
        let conn = Connection::open(db)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Rows read by key: a small cache, whatever the file's size.
        conn.pragma_update(None, "cache_size", -256)?;
        conn.execute_batch(SCHEMA)?;
        Ok(SqliteDomains {
            conn: SyncMutex::new(conn),
        })
    }

    fn conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>, MemoryError> {
        self.conn
            .lock()
            .map_err(|_| MemoryError::Shared("the domain memory's lock was poisoned".into()))
    }

    fn write(&self, r: &DomainRecord) -> Result<(), MemoryError> {
        let mut conn = self.conn()?;
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

impl DomainStore for SqliteDomains {
    fn shared(&self) -> bool {
        false
    }

    fn read<'a>(&'a self, domain: &'a str) -> StoreFuture<'a, Option<DomainRecord>> {
        Box::pin(async move { read(&*self.conn()?, domain) })
    }

    fn observe<'a>(&'a self, record: &'a DomainRecord) -> StoreFuture<'a, DomainRecord> {
        // One node: what it computed is the truth.
        Box::pin(async move {
            self.write(record)?;
            Ok(record.clone())
        })
    }

    fn confirm<'a>(&'a self, domain: &'a str, now: i64) -> StoreFuture<'a, Option<DomainRecord>> {
        Box::pin(async move {
            let Some(mut r) = read(&*self.conn()?, domain)? else {
                return Ok(None);
            };
            r.best = r.last;
            r.best_at = now;
            r.downgrade_since = None;
            r.confirmed_at = Some(now);
            self.write(&r)?;
            Ok(Some(r))
        })
    }

    fn select<'a>(&'a self, which: Select<'a>) -> StoreFuture<'a, Vec<DomainRecord>> {
        Box::pin(async move {
            let conn = self.conn()?;
            let names: Vec<String> = match which {
                Select::All => conn
                    .prepare("SELECT domain FROM domains ORDER BY domain")?
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?,
                Select::Downgraded => conn
                    .prepare(
                        "SELECT domain FROM domains WHERE downgrade_since IS NOT NULL ORDER BY domain",
                    )?
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?,
                Select::After(after, limit) => conn
                    .prepare("SELECT domain FROM domains WHERE domain > ?1 ORDER BY domain LIMIT ?2")?
                    .query_map(params![after, limit as i64], |r| r.get(0))?
                    .collect::<Result<_, _>>()?,
            };
            let mut out = Vec::new();
            for name in names {
                if let Some(r) = read(&conn, &name)? {
                    out.push(r);
                }
            }
            Ok(out)
        })
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

    #[tokio::test]
    async fn a_fall_from_the_best_level_is_a_downgrade_until_confirmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("m.db");
        let memory = DomainMemory::open(&db, Duration::from_secs(3600)).expect("open");
        let good = verdict(true);
        assert_eq!(good.level, Some(Level::Qualified));
        assert_eq!(
            memory
                .observe("d.test", &good, &[(good.clone(), 500)], 100)
                .await,
            History::Ordinary
        );
        let bad = verdict(false);
        let h = memory
            .observe("d.test", &bad, &[(bad.clone(), 800)], 200)
            .await;
        let found = memory.downgraded().await.expect("downgraded");
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
        let memory = DomainMemory::open(&db, Duration::from_secs(3600)).expect("reopen");
        assert_eq!(memory.history("d.test", 300).await, h);
        let h2 = memory
            .observe("d.test", &bad, &[(bad.clone(), 900)], 300)
            .await;
        assert_eq!(h2, h);
        assert_eq!(
            memory.host_levels("d.test", 850).await.get("mx.d.test"),
            Some(&Level::Plaintext)
        );
        assert_eq!(
            memory.host_levels("d.test", 900).await.get("mx.d.test"),
            None,
            "expired"
        );
        let r = memory.confirm("D.test.", 400).await.expect("confirm");
        assert_eq!(
            (r.best, r.downgrade_since, r.confirmed_at),
            (Level::Plaintext, None, Some(400))
        );
        assert_eq!(memory.history("d.test", 300).await, History::Ordinary);
        assert!(memory.downgraded().await.expect("downgraded").is_empty());
        let listed = memory.list().await.expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(
            listed[0].hosts[0].shortfalls,
            vec!["starttls: STARTTLS not offered".to_string()]
        );
        // Recovering to the best level ends a downgrade by itself.
        memory.observe("d.test", &good, &[], 500).await;
        memory.observe("d.test", &bad, &[], 600).await;
        memory.observe("d.test", &good, &[], 700).await;
        assert_eq!(memory.history("d.test", 300).await, History::Ordinary);
        // Pages of the list follow each other by name.
        for d in ["a.test", "b.test", "c.test"] {
            memory.observe(d, &good, &[], 800).await;
        }
        let names =
            |page: Vec<DomainRecord>| page.into_iter().map(|r| r.domain).collect::<Vec<_>>();
        assert_eq!(
            names(memory.page("", 2).await.expect("page")),
            ["a.test", "b.test"]
        );
        assert_eq!(
            names(memory.page("b.test", 2).await.expect("page")),
            ["c.test", "d.test"]
        );
        assert!(memory.page("d.test", 2).await.expect("page").is_empty());
        assert!(matches!(
            memory.confirm("never.test", 1).await,
            Err(MemoryError::Unknown(_))
        ));
    }
}
