//! Durable storage of accepted messages and their queue state.
//!
//! Nothing is acknowledged to a client before [`Spool::store`] returns: the
//! body and the envelope are on disk (synced) by then. The queue keeps its
//! schedule in memory but the spool is the truth: every recipient's state,
//! attempt count and next attempt time live here, so a restart recovers the
//! whole queue. Storage sits behind the narrow [`Spool`] trait so that a
//! shared PostgreSQL can replace the embedded SQLite for multi-node setups.

pub mod at_rest;
mod fresh;
pub mod journal;
mod pg_acts;
mod pg_domains;
mod postgres;
mod sqlite;
mod values;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;

use crate::report::Event;

pub use crate::message::{
    Content, Envelope, LoadedJob, Notify, PendingRecipient, QueueId, Recipient, Ret, TenantId,
    TlsRequest, domain_of,
};
pub use pg_domains::SharedDomains;
pub use postgres::{NodeStatus, PgSpool};
pub use sqlite::{KeyFile, SqliteSpool};

/// Where the queue and the log live: the embedded SQLite database in
/// `data_dir`, or the PostgreSQL database a cluster shares
/// (`[storage] url`). Readers of the log and the CLI take it from here.
#[derive(Clone)]
pub enum Storage {
    Sqlite(Arc<SqliteSpool>),
    Postgres(Arc<PgSpool>),
}

/// Who opens the storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opener {
    /// `sealgate serve`: makes keys on first start, and in a cluster takes
    /// the node's name and beats.
    Gateway,
    /// A command: never makes keys, takes no node name.
    Command,
}

impl Storage {
    /// Opens what `config` names; the SQLite database must exist for a command.
    pub async fn open(config: &crate::config::Config, opener: Opener) -> anyhow::Result<Storage> {
        use anyhow::Context;
        let gateway = opener == Opener::Gateway;
        let key = KeyFile::of(config, gateway);
        match config.storage_url() {
            Some(url) => {
                let lease = gateway.then_some(config.cluster.lease);
                let ca = config.storage.ca.as_deref();
                let spool = PgSpool::open(&url, ca, &key, &config.cluster.node, lease)
                    .await
                    .with_context(|| {
                        format!(
                            "cannot open the storage database {}",
                            crate::config::redact_url(&url)
                        )
                    })?;
                Ok(Storage::Postgres(spool))
            }
            None => {
                let db = config.database_path();
                if !gateway && !db.exists() {
                    anyhow::bail!(
                        "no spool at {} (has the gateway run with this data_dir?)",
                        db.display()
                    );
                }
                let spool = SqliteSpool::open(&db, &key)
                    .with_context(|| format!("cannot open the spool {}", db.display()))?;
                Ok(Storage::Sqlite(spool))
            }
        }
    }

    /// The domain memory's store: the same database as the queue's.
    pub fn domains(
        &self,
    ) -> Result<Box<dyn crate::policy::memory::DomainStore>, crate::policy::memory::MemoryError>
    {
        Ok(match self {
            Storage::Sqlite(s) => Box::new(crate::policy::memory::SqliteDomains::open(s.path())?),
            Storage::Postgres(pg) => Box::new(SharedDomains(pg.clone())),
        })
    }

    /// Where the small tables are (console accounts, sessions, caches).
    pub fn tables(
        &self,
        sqlite_schema: &str,
    ) -> Result<crate::tables::Tables, crate::tables::TableError> {
        match self {
            Storage::Sqlite(s) => crate::tables::Tables::sqlite(s.path(), sqlite_schema),
            Storage::Postgres(pg) => Ok(crate::tables::Tables::Postgres(pg.pool())),
        }
    }

    pub fn spool(&self) -> Arc<dyn Spool> {
        match self {
            Storage::Sqlite(s) => s.clone(),
            Storage::Postgres(s) => s.clone(),
        }
    }

    /// What to call it in messages: a path, or the URL without its password.
    pub fn describe(&self, config: &crate::config::Config) -> String {
        match (self, config.storage_url()) {
            (Storage::Postgres(_), Some(url)) => crate::config::redact_url(&url),
            _ => config.database_path().display().to_string(),
        }
    }
}

impl crate::report::LogStore for Storage {
    fn heads(&self) -> crate::report::LogFuture<'_, Vec<(String, i64, Vec<u8>)>> {
        Box::pin(async move {
            match self {
                Storage::Postgres(pg) => Ok(pg.log_heads().await?),
                Storage::Sqlite(s) => {
                    let db = s.path().to_path_buf();
                    Ok(
                        tokio::task::spawn_blocking(move || crate::report::heads::current_in(&db))
                            .await??,
                    )
                }
            }
        })
    }

    fn prune<'a>(
        &'a self,
        tenant: &'a str,
        before: i64,
        now: i64,
    ) -> crate::report::LogFuture<'a, Option<crate::report::log::Pruned>> {
        Box::pin(async move {
            match self {
                Storage::Postgres(pg) => Ok(pg.prune_log(tenant, before, now).await?),
                Storage::Sqlite(s) => {
                    let (db, tenant) = (s.path().to_path_buf(), tenant.to_string());
                    tokio::task::spawn_blocking(move || {
                        crate::report::prune(&db, &tenant, before, now)
                    })
                    .await?
                }
            }
        })
    }

    fn read_after<'a>(
        &'a self,
        tenant: &'a str,
        after: i64,
        limit: usize,
    ) -> crate::report::LogFuture<'a, Vec<crate::report::log::Stored>> {
        Box::pin(async move {
            match self {
                Storage::Postgres(pg) => Ok(pg.read_log(tenant, after, limit).await?),
                Storage::Sqlite(s) => {
                    let tenant = tenant.to_string();
                    s.read_log(move |conn| {
                        crate::report::log::read_after(conn, &tenant, after, limit)
                    })
                    .await
                }
            }
        })
    }

    fn read_seqs<'a>(
        &'a self,
        tenant: &'a str,
        seqs: &'a [i64],
    ) -> crate::report::LogFuture<'a, Vec<crate::report::log::Stored>> {
        Box::pin(async move {
            match self {
                Storage::Postgres(pg) => Ok(pg.read_log_seqs(tenant, seqs).await?),
                Storage::Sqlite(s) => {
                    let (tenant, seqs) = (tenant.to_string(), seqs.to_vec());
                    s.read_log(move |conn| crate::report::log::read_seqs(conn, &tenant, &seqs))
                        .await
                }
            }
        })
    }

    fn sessions(
        &self,
        from: i64,
        to: i64,
    ) -> crate::report::LogFuture<'_, crate::report::tlsrpt::Sessions> {
        Box::pin(async move {
            match self {
                Storage::Postgres(pg) => {
                    let mut days = Default::default();
                    pg.each_attempt(from, to, &mut |r| {
                        crate::report::tlsrpt::count(&mut days, &r.kind, &r.data)
                    })
                    .await?;
                    Ok(days)
                }
                Storage::Sqlite(s) => {
                    let db = s.path().to_path_buf();
                    tokio::task::spawn_blocking(move || {
                        let conn = rusqlite::Connection::open_with_flags(
                            &db,
                            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                        )?;
                        crate::report::tlsrpt::aggregate(&conn, from, to)
                    })
                    .await?
                }
            }
        })
    }

    fn verify<'a>(
        &'a self,
        tenant: &'a str,
        progress: Arc<dyn Fn() + Send + Sync>,
    ) -> crate::report::LogFuture<'a, crate::report::log::Verified> {
        Box::pin(async move {
            match self {
                Storage::Postgres(pg) => Ok(pg.verify_log(tenant, &*progress).await?),
                Storage::Sqlite(s) => {
                    let tenant = tenant.to_string();
                    s.read_log(move |conn| {
                        crate::report::log::verify_with_progress(conn, &tenant, &*progress)
                    })
                    .await
                }
            }
        })
    }

    fn append<'a>(
        &'a self,
        tenant: &'a str,
        event: crate::report::Event,
    ) -> crate::report::LogFuture<'a, ()> {
        Box::pin(async move {
            match self {
                Storage::Postgres(pg) => Ok(pg.append_log(tenant, event).await?),
                Storage::Sqlite(s) => Ok(s.append_log(tenant, event).await?),
            }
        })
    }
}

/// Every message with pending recipients, read a page at a time: for
/// commands that need the whole queue (`queue list`, `storage migrate`).
pub async fn list_all(spool: &dyn Spool) -> Result<Vec<MessageSummary>, SpoolError> {
    const PAGE: usize = 1000;
    let mut all: Vec<MessageSummary> = Vec::new();
    loop {
        let page = spool
            .list(ListPage {
                after: all.last().map(|m| m.id),
                limit: PAGE,
                tenant: None,
            })
            .await?;
        let done = page.len() < PAGE;
        all.extend(page);
        if done {
            return Ok(all);
        }
    }
}

/// The log record of a message's content leaving the spool.
fn deleted_record(id: QueueId, at: i64, by: &str, reason: Option<&str>) -> Event {
    Event {
        queue_id: id,
        at,
        data: crate::report::EventData::Deleted(crate::report::event::Deleted {
            v: crate::report::event::VERSION,
            by: by.to_string(),
            reason: reason.map(str::to_string),
        }),
    }
}

/// The log record of a hold or its release.
fn held_record(id: QueueId, at: i64, by: &Operator, held: bool) -> Event {
    Event {
        queue_id: id,
        at,
        data: crate::report::EventData::Held(crate::report::event::Held {
            v: crate::report::event::VERSION,
            by: by.by.clone(),
            held,
            reason: by.reason.clone(),
        }),
    }
}

/// A boxed future, so that [`Spool`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A message to put into the spool.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: QueueId,
    pub envelope: Envelope,
    /// Unix seconds.
    pub received_at: i64,
    /// Unix seconds after which undelivered recipients bounce.
    pub expires_at: i64,
    /// Who handed it to us (address, HELO, auth), for the operator.
    pub client: String,
    /// The message as it will be sent, our `Received:` header included, CRLF line ends.
    pub body: Vec<u8>,
    /// Transaction-log records written with it (report::log).
    pub events: Vec<Event>,
}

/// The result of an attempt for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientOutcome {
    Delivered { reply: String },
    Failed { reply: String },
    Deferred { reply: String, next_attempt: i64 },
}

/// An attempt's results, written in one transaction with the bounce it causes.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub id: QueueId,
    /// The job's domain.
    pub domain: String,
    pub outcomes: Vec<(u32, RecipientOutcome)>,
    /// The DSN to queue for the failed recipients, if any.
    pub dsn: Option<NewMessage>,
    pub now: i64,
    /// Content of a finished message is kept until this time (`now` for "at once").
    pub purge_at: i64,
    /// Whose log chain the attempt's records go to.
    pub tenant: TenantId,
    /// Transaction-log records written with it (report::log).
    pub events: Vec<Event>,
}

/// What recording an attempt changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordResult {
    /// No recipient of the message is pending any more.
    pub finished: bool,
    /// The message was gone (deleted by an operator) when the result came in.
    pub gone: bool,
}

/// How full the queue is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct QueueDepth {
    pub messages: u64,
    /// Unix seconds; none when the queue is empty.
    pub oldest: Option<i64>,
}

/// A recipient's state in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecipientStatus {
    Pending,
    Delivered,
    Failed,
}

/// Who changes a message by hand, and why: both go into the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    /// `sealgate queue …` on the host, or a console account.
    pub by: String,
    pub reason: Option<String>,
}

/// An operator's act that another node of a cluster asked this one to
/// do, because this node owns the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    /// Names the request, for the answer.
    pub ask: i64,
    pub id: QueueId,
    /// The act's name, as `queue::Act::name` gives it.
    pub act: String,
    pub by: Operator,
    /// The node that asked.
    pub from: String,
}

/// Where an operator's act was done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forwarded {
    /// It is for this node: no other live node owns the message.
    Here,
    /// The owner did it; its answer, in the form `queue` wrote it.
    There { node: String, answer: String },
}

/// What holding or releasing a message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldOutcome {
    /// No such message, or nothing of it is pending.
    Missing,
    /// It was held already (hold), or was not held (release).
    Unchanged,
    /// Done; on release, its jobs, due now.
    Done(Vec<DueJob>),
}

/// One page of the queue, oldest first, from after a message id on.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub after: Option<QueueId>,
    pub limit: usize,
    /// Only this tenant's messages.
    pub tenant: Option<String>,
}

/// One line of `sealgate queue list`.
#[derive(Debug, Clone, Serialize)]
pub struct MessageSummary {
    pub id: QueueId,
    pub tenant: TenantId,
    /// Kept back from delivery by an operator until released.
    pub held: bool,
    pub sender: String,
    pub size: u64,
    pub received_at: i64,
    pub pending: u32,
    pub recipients: u32,
    pub next_attempt: Option<i64>,
    pub last_reply: Option<String>,
}

/// `sealgate queue show ID`.
#[derive(Debug, Clone, Serialize)]
pub struct MessageDetail {
    pub id: QueueId,
    pub envelope: Envelope,
    pub received_at: i64,
    pub expires_at: i64,
    pub client: String,
    pub size: u64,
    pub held: bool,
    pub recipients: Vec<RecipientState>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecipientState {
    pub address: String,
    pub status: RecipientStatus,
    pub attempts: u32,
    pub next_attempt: i64,
    pub last_reply: Option<String>,
}

/// A scheduling unit: the pending recipients of one message in one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueJob {
    pub id: QueueId,
    pub domain: String,
    /// Unix seconds.
    pub due: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool storage is full: {0}")]
    Full(String),
    #[error("spool database error: {0}")]
    Database(#[from] rusqlite::Error),
    #[error("spool I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("spool writer has stopped")]
    Stopped,
    #[error("storage database error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// The shared database cannot be reached or did not commit.
    #[error("storage database unavailable: {0}")]
    Unavailable(String),
    /// `[cluster] node`: another process on the shared database has it.
    #[error(
        "another live node is named {0:?} on this database (it holds the node lock): give this node its own [cluster] node name"
    )]
    NodeInUse(String),
    #[error("spool record is corrupt: {0}")]
    Corrupt(String),
    /// A key rotation on shared storage stopped; the old keys still open
    /// everything.
    #[error("the key rotation stopped: {0}")]
    Rotation(String),
    #[error(transparent)]
    AtRest(#[from] at_rest::AtRestError),
}

/// Durable message storage and queue state.
pub trait Spool: Send + Sync {
    /// A fresh id for a message about to be stored.
    fn next_id(&self) -> QueueId;
    /// Stores a message durably; when this returns `Ok`, the message survives a crash.
    fn store(&self, message: NewMessage) -> BoxFuture<'_, Result<(), SpoolError>>;
    /// Loads a message with its pending recipients in `domain`; `None` if
    /// none are pending or an operator holds it.
    fn load<'a>(
        &'a self,
        id: QueueId,
        domain: &'a str,
    ) -> BoxFuture<'a, Result<Option<LoadedJob>, SpoolError>>;
    /// Loads a message with its pending recipients in every domain, held
    /// or not (an operator's bounce); `None` if none are pending.
    fn load_all(&self, id: QueueId) -> BoxFuture<'_, Result<Option<LoadedJob>, SpoolError>>;
    /// Records an attempt's outcomes, the DSN it causes, and removes a finished message.
    fn record(&self, attempt: AttemptRecord) -> BoxFuture<'_, Result<RecordResult, SpoolError>>;
    /// Every (message, domain) with pending recipients and not held, with
    /// its due time: the queue on start.
    fn pending(&self) -> BoxFuture<'_, Result<Vec<DueJob>, SpoolError>>;
    /// Makes every pending recipient of a message due now; returns its
    /// jobs, empty if none or if the message is held.
    fn retry(&self, id: QueueId, now: i64) -> BoxFuture<'_, Result<Vec<DueJob>, SpoolError>>;
    /// Makes every pending recipient due now (`sealgate queue flush`);
    /// held messages stay held.
    fn retry_all(&self, now: i64) -> BoxFuture<'_, Result<Vec<DueJob>, SpoolError>>;
    /// Keeps a message back from delivery until released, with a `held`
    /// log record.
    fn hold(
        &self,
        id: QueueId,
        by: Operator,
        now: i64,
    ) -> BoxFuture<'_, Result<HoldOutcome, SpoolError>>;
    /// Ends a hold: the pending recipients are due now, and in a cluster
    /// this node delivers them.
    fn release(
        &self,
        id: QueueId,
        by: Operator,
        now: i64,
    ) -> BoxFuture<'_, Result<HoldOutcome, SpoolError>>;
    /// Removes a message and all its state, with a `deleted` log record;
    /// `false` if there was none.
    fn delete(&self, id: QueueId, by: Operator) -> BoxFuture<'_, Result<bool, SpoolError>>;
    /// Deletes the content of finished messages whose hold time is over.
    fn purge(&self, now: i64) -> BoxFuture<'_, Result<usize, SpoolError>>;
    /// A page of the messages with pending recipients, oldest first: one
    /// index range, whatever the queue's size.
    fn list(&self, page: ListPage) -> BoxFuture<'_, Result<Vec<MessageSummary>, SpoolError>>;
    /// One message's envelope and recipient states.
    fn show(&self, id: QueueId) -> BoxFuture<'_, Result<Option<MessageDetail>, SpoolError>>;
    /// Messages with a pending recipient, and when the oldest was received:
    /// one aggregate query, for dashboards and metrics.
    fn depth(&self) -> BoxFuture<'_, Result<QueueDepth, SpoolError>>;
    /// Whether several nodes share this spool (docs/cluster.md): each
    /// node then delivers the messages it owns (those it accepted, retried
    /// or took over), and takes over those of nodes that stopped beating.
    fn shared(&self) -> bool {
        false
    }
    /// Whether writes can be committed now; while not, sessions are told
    /// to try again later before they send a message.
    fn available(&self) -> bool {
        true
    }
    /// How many times any node asked for the whole queue to be tried now
    /// (`sealgate queue flush`): when it changes, this node reads its
    /// jobs again.
    fn flushes(&self) -> u64 {
        0
    }
    /// Takes over up to `limit` messages of nodes whose heartbeat is older
    /// than their lease, and returns their jobs; empty when none are left.
    fn adopt(&self, _now: i64, _limit: usize) -> BoxFuture<'_, Result<Vec<DueJob>, SpoolError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    /// In a cluster: when another live node owns `id`, has it do `act` (an
    /// operator's act, named as `queue::Act::name` names it) once its
    /// attempt in flight is recorded, and waits for its answer; asks the
    /// next owner when that node dies first.
    fn forward<'a>(
        &'a self,
        _id: QueueId,
        _act: &'a str,
        _by: &'a Operator,
    ) -> BoxFuture<'a, Result<Forwarded, SpoolError>> {
        Box::pin(async { Ok(Forwarded::Here) })
    }
    /// The acts other nodes asked this one to do; each is handed out once.
    fn asked(&self) -> BoxFuture<'_, Result<Vec<Asked>, SpoolError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    /// This node's answer to an act it was asked to do.
    fn answer<'a>(&'a self, _ask: i64, _answer: &'a str) -> BoxFuture<'a, Result<(), SpoolError>> {
        Box::pin(async { Ok(()) })
    }
    /// Rotates the data key (and the key-encryption key, if asked), sealing
    /// every stored value again; mail keeps flowing meanwhile.
    fn rekey(
        &self,
        change: at_rest::KekChange,
    ) -> BoxFuture<'_, Result<at_rest::RekeyDone, SpoolError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_id_round_trip() {
        let id = QueueId(0x0123_4567_89AB_CDEF);
        assert_eq!(id.to_string(), "0123456789ABCDEF");
        assert_eq!("0123456789abcdef".parse::<QueueId>(), Ok(id));
        assert!("xyz".parse::<QueueId>().is_err());
    }

    #[test]
    fn rfc3461_4_1_notify_default_reports_failures() {
        assert!(Notify::default().on_failure());
        let never = Notify {
            never: true,
            explicit: true,
            ..Notify::default()
        };
        assert!(!never.on_failure());
        let success_only = Notify {
            success: true,
            explicit: true,
            ..Notify::default()
        };
        assert!(!success_only.on_failure());
        for n in [never, success_only, Notify::default()] {
            assert_eq!(Notify::from_bits(n.to_bits()), n);
        }
    }
}
