//! The console's query layer: a search index and daily totals built from
//! the transaction log, in `console.db` beside the gateway's database.
//!
//! The log is the truth and stays as it is (a chain of JSON records, made
//! for verifying, not for searching). A background task reads each
//! tenant's chain forward from where it stopped, a batch at a time, and
//! writes one row per recipient per attempt with the fields people search
//! by, plus per-day totals, so that no page rescans the log. While reading
//! it checks each record's link and hash, which gives the dashboard its
//! chain status for free. The file can be deleted at any time: it is
//! rebuilt from the log. Pages and the HTTP API both query through here.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use serde::Serialize;

use crate::report::LogStore;
use crate::report::event::{Attempt, EventData, RecipientResult};
use crate::report::log::{Stored, record_hash};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS chains (
    tenant  TEXT PRIMARY KEY,
    seq     INTEGER NOT NULL,
    hash    BLOB NOT NULL,
    records INTEGER NOT NULL,
    broken  TEXT,
    last_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    tenant     TEXT NOT NULL,
    queue_id   TEXT NOT NULL,
    at         INTEGER NOT NULL,
    sender     TEXT NOT NULL,
    message_id TEXT,
    PRIMARY KEY (tenant, queue_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    queue_id TEXT NOT NULL,
    tenant   TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    PRIMARY KEY (queue_id, tenant, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tx (
    id         INTEGER PRIMARY KEY,
    tenant     TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    at         INTEGER NOT NULL,
    queue_id   TEXT NOT NULL,
    sender     TEXT NOT NULL,
    recipient  TEXT NOT NULL,
    domain     TEXT NOT NULL,
    message_id TEXT,
    level      TEXT NOT NULL,
    class      TEXT NOT NULL,
    status     TEXT NOT NULL,
    relay      TEXT NOT NULL,
    detail     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tx_at ON tx(at, id);
CREATE INDEX IF NOT EXISTS tx_tenant ON tx(tenant, at, id);
CREATE INDEX IF NOT EXISTS tx_sender ON tx(sender, at, id);
CREATE INDEX IF NOT EXISTS tx_recipient ON tx(recipient, at, id);
CREATE INDEX IF NOT EXISTS tx_domain ON tx(domain, at, id);
CREATE INDEX IF NOT EXISTS tx_queue ON tx(queue_id);
CREATE INDEX IF NOT EXISTS tx_message_id ON tx(message_id);
CREATE TABLE IF NOT EXISTS daily (
    tenant TEXT NOT NULL,
    day    INTEGER NOT NULL,
    level  TEXT NOT NULL,
    class  TEXT NOT NULL,
    status TEXT NOT NULL,
    n      INTEGER NOT NULL,
    PRIMARY KEY (tenant, day, level, class, status)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reasons (
    tenant TEXT NOT NULL,
    day    INTEGER NOT NULL,
    reason TEXT NOT NULL,
    n      INTEGER NOT NULL,
    PRIMARY KEY (tenant, day, reason)
) WITHOUT ROWID;
";

/// The layout of `console.db`. A file of another version is a cache of
/// another layout: it is emptied and rebuilt from the log.
const LAYOUT: i64 = 2;
const TABLES: [&str; 6] = ["chains", "messages", "records", "tx", "daily", "reasons"];

/// Records read from the log per round.
const BATCH: usize = 2_000;
/// Rows per page of a search.
pub const PAGE: usize = 50;

/// What became of one recipient in an attempt, as operators say it (the
/// `status` of the delivery log line).
pub const STATUSES: [&str; 5] = ["sent", "sealed", "deferred", "bounced", "expired"];

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("console index: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("console index: {0}")]
    Task(#[from] tokio::task::JoinError),
}

pub struct Index {
    conn: Mutex<Connection>,
}

/// A search, as the transactions page and the API take it. Empty fields
/// do not filter.
#[derive(Debug, Clone, Default, serde::Deserialize, Serialize, utoipa::IntoParams)]
#[serde(default)]
#[into_params(parameter_in = Query)]
pub struct Filter {
    pub sender: String,
    pub recipient: String,
    pub domain: String,
    pub message_id: String,
    pub queue_id: String,
    pub level: String,
    pub class: String,
    pub status: String,
    /// Unix seconds, inclusive.
    pub from: Option<i64>,
    /// Unix seconds, exclusive.
    pub to: Option<i64>,
    /// `old` for oldest first; newest first otherwise.
    pub sort: String,
    /// Continue after this row (`at.id`, from the previous page).
    pub after: String,
}

impl Filter {
    pub fn oldest_first(&self) -> bool {
        self.sort == "old"
    }
}

/// One row of a search.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TxRow {
    pub tenant: String,
    pub at: i64,
    pub queue_id: String,
    pub sender: String,
    pub recipient: String,
    pub domain: String,
    pub message_id: Option<String>,
    pub level: String,
    pub class: String,
    pub status: String,
    pub relay: String,
    pub detail: String,
}

/// One page of a search.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Page {
    pub rows: Vec<TxRow>,
    /// Pass as `after` for the next page; none on the last.
    pub next: Option<String>,
}

/// A tenant's chain as the indexer last read it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ChainStatus {
    pub tenant: String,
    pub records: i64,
    pub head_seq: i64,
    pub head_hash: String,
    /// Where a link or hash did not check out, and why.
    pub broken: Option<String>,
    pub last_at: i64,
}

/// Recipients of one day with one status.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DayCount {
    /// Unix seconds of the day's start (UTC).
    pub day: i64,
    pub status: String,
    pub n: i64,
}

/// A count by one label (a level, a deferral reason).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Count {
    pub label: String,
    pub n: i64,
}

/// Recipients since the log began, by every label the metrics carry.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Cell {
    pub tenant: String,
    pub level: String,
    pub class: String,
    pub status: String,
    pub n: i64,
}

/// Totals for the dashboard.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Totals {
    /// The last days, oldest first.
    pub by_day: Vec<DayCount>,
    /// By level reached over the same days.
    pub by_level: Vec<Count>,
    /// Deferral reasons over the same days, most frequent first.
    pub reasons: Vec<Count>,
    /// Since the log began: for metrics.
    pub all: Vec<Cell>,
}

impl Index {
    pub fn open(path: &Path) -> Result<Index, IndexError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // A cache: losing the last second of it to a crash costs a re-read.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Pages are found by index in a file of hundreds of MB: the
        // system's page cache holds it; ours stays the same size whatever
        // the log's (SQLite's default is 2 MiB).
        conn.pragma_update(None, "cache_size", -1024)?;
        let layout: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if layout != LAYOUT {
            for table in TABLES {
                conn.execute_batch(&format!("DROP TABLE IF EXISTS {table}"))?;
            }
            conn.pragma_update(None, "user_version", LAYOUT)?;
        }
        conn.execute_batch(SCHEMA)?;
        Ok(Index {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs a query off the async threads.
    pub async fn with<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Index) -> Result<T, IndexError> + Send + 'static,
    ) -> Result<T, IndexError> {
        let index = self.clone();
        tokio::task::spawn_blocking(move || f(&index)).await?
    }

    /// Reads what the log gained since the last call; returns how many
    /// records were indexed.
    pub async fn catch_up(self: &Arc<Self>, log: &dyn LogStore) -> anyhow::Result<usize> {
        let mut total = 0;
        for (tenant, head, _) in log.heads().await? {
            loop {
                let t = tenant.clone();
                let cursor = self
                    .with(move |i| Ok(i.cursor(&t)?.map_or(0, |c| c.0)))
                    .await?;
                if cursor >= head {
                    break;
                }
                let batch = log.read_after(&tenant, cursor, BATCH).await?;
                if batch.is_empty() {
                    break;
                }
                total += batch.len();
                let tenant_ = tenant.clone();
                self.with(move |i| i.add(&tenant_, &batch)).await?;
            }
        }
        Ok(total)
    }

    fn cursor(&self, tenant: &str) -> Result<Option<(i64, Vec<u8>)>, IndexError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT seq, hash FROM chains WHERE tenant = ?",
                [tenant],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// Indexes a tenant's records that follow its cursor, in one transaction.
    fn add(&self, tenant: &str, batch: &[Stored]) -> Result<(), IndexError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let chain: Option<(i64, Vec<u8>, i64, Option<String>)> = tx
            .query_row(
                "SELECT seq, hash, records, broken FROM chains WHERE tenant = ?",
                [tenant],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let (mut seq, mut hash, mut records, mut broken) = match chain {
            Some(c) => (c.0, c.1, c.2, c.3),
            None => (0, vec![0u8; 32], 0, None),
        };
        let mut last_at = 0;
        for r in batch {
            // The first record read may follow a prefix removed by
            // retention: its link is vouched for by a `pruned` record.
            let linked = (r.seq == seq + 1 && r.prev == hash) || (seq == 0 && records == 0);
            let sound = record_hash(&r.prev, tenant, r.seq, r.at, &r.kind, &r.queue_id, &r.data)
                .as_slice()
                == r.hash.as_slice();
            if broken.is_none() && !(linked && sound) {
                broken = Some(format!(
                    "record {}: {}",
                    r.seq,
                    if linked {
                        "its hash does not match its content"
                    } else {
                        "it does not follow the record before it"
                    }
                ));
            }
            seq = r.seq;
            hash = r.hash.clone();
            records += 1;
            last_at = r.at;
            tx.prepare_cached(
                "INSERT OR IGNORE INTO records (tenant, queue_id, seq) VALUES (?, ?, ?)",
            )?
            .execute(params![tenant, r.queue_id, r.seq])?;
            match EventData::parse(&r.kind, &r.data) {
                Ok(EventData::Received(m)) => {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO messages (tenant, queue_id, at, sender, message_id)
                         VALUES (?, ?, ?, ?, ?)",
                    )?
                    .execute(params![
                        tenant,
                        r.queue_id,
                        r.at,
                        m.sender,
                        m.message_id
                    ])?;
                }
                Ok(EventData::Attempt(a)) => add_attempt(&tx, tenant, r, &a)?,
                // Other kinds are shown on the message page, not searched.
                Ok(_) => {}
                Err(e) => tracing::warn!(tenant, seq = r.seq, "console index: {e}"),
            }
        }
        tx.execute(
            "INSERT INTO chains (tenant, seq, hash, records, broken, last_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (tenant) DO UPDATE SET seq = ?2, hash = ?3, records = ?4,
                 broken = ?5, last_at = MAX(last_at, ?6)",
            params![tenant, seq, hash, records, broken, last_at],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// One page of rows matching `filter` among the tenants `scope` allows
    /// (none: all). Keyset pagination: the cost of page 500 is that of page 1.
    pub fn search(&self, filter: &Filter, scope: Option<&str>) -> Result<Page, IndexError> {
        let mut sql = String::from(
            "SELECT id, tenant, at, queue_id, sender, recipient, domain, message_id,
                    level, class, status, relay, detail FROM tx WHERE 1",
        );
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        let mut eq = |column: &str, value: &str, sql: &mut String| {
            if !value.trim().is_empty() {
                sql.push_str(&format!(" AND {column} = ?"));
                args.push(value.trim().to_string().into());
            }
        };
        eq("tenant", scope.unwrap_or(""), &mut sql);
        eq("sender", &filter.sender.to_lowercase(), &mut sql);
        eq("recipient", &filter.recipient.to_lowercase(), &mut sql);
        eq("domain", &filter.domain.to_lowercase(), &mut sql);
        eq("message_id", &filter.message_id, &mut sql);
        eq("queue_id", &filter.queue_id.to_uppercase(), &mut sql);
        eq("level", &filter.level, &mut sql);
        eq("class", &filter.class, &mut sql);
        eq("status", &filter.status, &mut sql);
        if let Some(from) = filter.from {
            sql.push_str(" AND at >= ?");
            args.push(from.into());
        }
        if let Some(to) = filter.to {
            sql.push_str(" AND at < ?");
            args.push(to.into());
        }
        let old = filter.oldest_first();
        if let Some((at, id)) = filter
            .after
            .split_once('.')
            .and_then(|(a, i)| Some((a.parse::<i64>().ok()?, i.parse::<i64>().ok()?)))
        {
            sql.push_str(if old {
                " AND (at, id) > (?, ?)"
            } else {
                " AND (at, id) < (?, ?)"
            });
            args.push(at.into());
            args.push(id.into());
        }
        sql.push_str(if old {
            " ORDER BY at, id LIMIT ?"
        } else {
            " ORDER BY at DESC, id DESC LIMIT ?"
        });
        args.push(((PAGE + 1) as i64).into());
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut rows: Vec<(i64, TxRow)> = stmt
            .query_map(params_from_iter(args), |r| {
                Ok((
                    r.get(0)?,
                    TxRow {
                        tenant: r.get(1)?,
                        at: r.get(2)?,
                        queue_id: r.get(3)?,
                        sender: r.get(4)?,
                        recipient: r.get(5)?,
                        domain: r.get(6)?,
                        message_id: r.get(7)?,
                        level: r.get(8)?,
                        class: r.get(9)?,
                        status: r.get(10)?,
                        relay: r.get(11)?,
                        detail: r.get(12)?,
                    },
                ))
            })?
            .collect::<Result<_, _>>()?;
        let more = rows.len() > PAGE;
        rows.truncate(PAGE);
        let next = more
            .then(|| rows.last().map(|(id, r)| format!("{}.{id}", r.at)))
            .flatten();
        Ok(Page {
            rows: rows.into_iter().map(|(_, r)| r).collect(),
            next,
        })
    }

    /// The tenant a queue id belongs to, and the numbers of its records.
    pub fn message(&self, queue_id: &str) -> Result<Option<(String, Vec<i64>)>, IndexError> {
        let conn = self.conn();
        let tenant: Option<String> = conn
            .prepare_cached("SELECT tenant FROM records WHERE queue_id = ? LIMIT 1")?
            .query_row([queue_id], |r| r.get(0))
            .optional()?;
        let Some(tenant) = tenant else {
            return Ok(None);
        };
        let seqs = conn
            .prepare_cached(
                "SELECT seq FROM records WHERE tenant = ? AND queue_id = ? ORDER BY seq",
            )?
            .query_map(params![tenant, queue_id], |r| r.get(0))?
            .collect::<Result<Vec<i64>, _>>()?;
        Ok(Some((tenant, seqs)))
    }

    /// The domains a tenant's mail was tried for.
    pub fn domains_of(
        &self,
        tenant: &str,
    ) -> Result<std::collections::HashSet<String>, IndexError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT DISTINCT domain FROM tx WHERE tenant = ?")?;
        let rows = stmt.query_map([tenant], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every chain as last read.
    pub fn chains(&self, scope: Option<&str>) -> Result<Vec<ChainStatus>, IndexError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT tenant, records, seq, hash, broken, last_at FROM chains
             WHERE ?1 IS NULL OR tenant = ?1 ORDER BY tenant",
        )?;
        let rows = stmt.query_map([scope], |r| {
            Ok(ChainStatus {
                tenant: r.get(0)?,
                records: r.get(1)?,
                head_seq: r.get(2)?,
                head_hash: crate::util::hex(&r.get::<_, Vec<u8>>(3)?),
                broken: r.get(4)?,
                last_at: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The dashboard's totals over the `days` before `now`.
    pub fn totals(&self, scope: Option<&str>, now: i64, days: i64) -> Result<Totals, IndexError> {
        let since = (now.div_euclid(86_400) - days + 1) * 86_400;
        let conn = self.conn();
        let by_day = conn
            .prepare_cached(
                "SELECT day, status, SUM(n) FROM daily WHERE day >= ?1 AND (?2 IS NULL OR tenant = ?2)
                 GROUP BY day, status ORDER BY day, status",
            )?
            .query_map(params![since, scope], |r| {
                Ok(DayCount {
                    day: r.get(0)?,
                    status: r.get(1)?,
                    n: r.get(2)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let by_level = conn
            .prepare_cached(
                "SELECT level, SUM(n) FROM daily WHERE day >= ?1 AND (?2 IS NULL OR tenant = ?2)
                 GROUP BY level ORDER BY level",
            )?
            .query_map(params![since, scope], |r| {
                Ok(Count {
                    label: r.get(0)?,
                    n: r.get(1)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let reasons = conn
            .prepare_cached(
                "SELECT reason, SUM(n) AS total FROM reasons WHERE day >= ?1 AND (?2 IS NULL OR tenant = ?2)
                 GROUP BY reason ORDER BY total DESC, reason LIMIT 10",
            )?
            .query_map(params![since, scope], |r| {
                Ok(Count {
                    label: r.get(0)?,
                    n: r.get(1)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let all = conn
            .prepare_cached(
                "SELECT tenant, level, class, status, SUM(n) FROM daily
                 WHERE ?1 IS NULL OR tenant = ?1 GROUP BY tenant, level, class, status",
            )?
            .query_map([scope], |r| {
                Ok(Cell {
                    tenant: r.get(0)?,
                    level: r.get(1)?,
                    class: r.get(2)?,
                    status: r.get(3)?,
                    n: r.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(Totals {
            by_day,
            by_level,
            reasons,
            all,
        })
    }
}

/// One row per recipient, and the day's totals.
fn add_attempt(
    tx: &rusqlite::Transaction<'_>,
    tenant: &str,
    r: &Stored,
    a: &Attempt,
) -> rusqlite::Result<()> {
    let message: Option<(String, Option<String>)> = tx
        .prepare_cached(
            "SELECT sender, message_id FROM messages WHERE tenant = ? AND queue_id = ?",
        )?
        .query_row(params![tenant, r.queue_id], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?;
    let (sender, message_id) = message.unwrap_or_default();
    let level = a
        .verdict
        .as_ref()
        .and_then(|v| v.level)
        .map_or("none", |l| l.name());
    let relay = a
        .verdict
        .as_ref()
        .filter(|v| !v.address.is_empty())
        .map(|v| format!("{}[{}]", v.mx_host, v.address))
        .unwrap_or_default();
    let day = r.at.div_euclid(86_400) * 86_400;
    for p in &a.recipients {
        let status = status(p.outcome, p.action.as_deref());
        let class = p.class.map_or("", |c| c.name());
        let domain = p
            .address
            .rsplit_once('@')
            .map_or(a.domain.as_str(), |(_, d)| d)
            .to_lowercase();
        tx.prepare_cached(
            "INSERT INTO tx (tenant, seq, at, queue_id, sender, recipient, domain, message_id,
                             level, class, status, relay, detail)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )?
        .execute(params![
            tenant,
            r.seq,
            r.at,
            r.queue_id,
            sender.to_lowercase(),
            p.address.to_lowercase(),
            domain,
            message_id,
            level,
            class,
            status,
            relay,
            p.detail
        ])?;
        tx.prepare_cached(
            "INSERT INTO daily (tenant, day, level, class, status, n) VALUES (?, ?, ?, ?, ?, 1)
             ON CONFLICT DO UPDATE SET n = n + 1",
        )?
        .execute(params![tenant, day, level, class, status])?;
        if status == "deferred" {
            tx.prepare_cached(
                "INSERT INTO reasons (tenant, day, reason, n) VALUES (?, ?, ?, 1)
                 ON CONFLICT DO UPDATE SET n = n + 1",
            )?
            .execute(params![tenant, day, reason(p)])?;
        }
    }
    Ok(())
}

/// The status word of the delivery log line (queue::line).
fn status(outcome: RecipientResult, action: Option<&str>) -> &'static str {
    match (outcome, action) {
        (RecipientResult::Delivered, Some("seal")) => "sealed",
        (RecipientResult::Delivered, _) => "sent",
        (RecipientResult::Deferred, _) => "deferred",
        (RecipientResult::Bounced, _) => "bounced",
        (RecipientResult::Expired, _) => "expired",
    }
}

/// What a deferral is grouped by: the decision's reason when there is
/// one, else the enhanced status code (peer replies vary too much).
fn reason(p: &crate::report::event::AttemptRecipient) -> String {
    match (&p.reason_code, &p.reason) {
        (Some(_), Some(reason)) => reason.chars().take(120).collect(),
        _ => format!("status {}", p.status),
    }
}

/// Keeps the index following the log until shutdown.
/// Records after whose indexing the free heap goes back to the system.
const BIG_CATCH_UP: usize = 10_000;

pub async fn follow(
    index: Arc<Index>,
    log: Arc<dyn LogStore>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        match index.catch_up(log.as_ref()).await {
            Ok(n) => {
                failing = false;
                // A long catch-up (the first start after an upgrade, a
                // burst of mail) leaves the decoded batches' memory free
                // but kept by the allocator: hand it back.
                if n >= BIG_CATCH_UP {
                    crate::util::return_free_memory();
                }
            }
            // Said once per outage, not every second.
            Err(e) if !failing => {
                failing = true;
                tracing::warn!("console index: cannot read the log: {e:#}");
            }
            Err(_) => {}
        }
    }
}
