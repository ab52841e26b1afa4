//! The evidence auditors read: a tamper-evident transaction log of every
//! event that matters (received, classified, each attempt with its verdict
//! and decisions, deleted), and its exports.
//!
//! Records are metadata only, never content. They are appended in the same
//! database transaction as the spool change they describe (so the log and
//! the queue cannot disagree after a crash) and chained per tenant: each
//! record carries the SHA-256 of its predecessor and of its own canonical
//! encoding, so an edited, deleted or inserted record breaks the chain at
//! that point ([`log::verify`]). [`export`] writes JSON lines and CSV,
//! [`html`] the report for people. docs/reports.md says how to read them.

pub mod event;
pub mod export;
pub mod heads;
pub mod html;
pub mod log;
pub mod received;
pub mod tlsrpt;

pub use event::EventData;

use crate::message::QueueId;

/// One event to append; the tenant and the chain are added by the log.
#[derive(Debug, Clone)]
pub struct Event {
    pub queue_id: QueueId,
    /// Unix seconds.
    pub at: i64,
    /// What happened, with its facts; serialized once, as stored and hashed.
    pub data: EventData,
}

/// Removes a tenant's log records older than `before` from the database
/// at `db` (one immediate transaction beside the running gateway's writes).
pub fn prune(
    db: &std::path::Path,
    tenant: &str,
    before: i64,
    now: i64,
) -> anyhow::Result<Option<log::Pruned>> {
    let mut conn = rusqlite::Connection::open(db)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let pruned = log::prune(&tx, tenant, before, now)?;
    tx.commit()?;
    Ok(pruned)
}

/// The log as the gateway's background work reads and trims it, wherever
/// it is kept (spool::Storage: SQLite or the cluster's PostgreSQL).
pub trait LogStore: Send + Sync {
    /// Every tenant's last record: (tenant, seq, hash).
    fn heads(&self) -> LogFuture<'_, Vec<(String, i64, Vec<u8>)>>;
    /// Removes the tenant's records older than `before` behind a `pruned`
    /// record ([`log::prune`]).
    fn prune<'a>(
        &'a self,
        tenant: &'a str,
        before: i64,
        now: i64,
    ) -> LogFuture<'a, Option<log::Pruned>>;
    /// The tenant's records after number `after`, in order, at most `limit`.
    fn read_after<'a>(
        &'a self,
        tenant: &'a str,
        after: i64,
        limit: usize,
    ) -> LogFuture<'a, Vec<log::Stored>>;
    /// The tenant's records with these numbers, in order.
    fn read_seqs<'a>(&'a self, tenant: &'a str, seqs: &'a [i64])
    -> LogFuture<'a, Vec<log::Stored>>;
    /// Walks a tenant's whole chain, calling `progress` once per record.
    fn verify<'a>(
        &'a self,
        tenant: &'a str,
        progress: std::sync::Arc<dyn Fn() + Send + Sync>,
    ) -> LogFuture<'a, log::Verified>;
    /// Appends one event that no spool change carries (a console action).
    fn append<'a>(&'a self, tenant: &'a str, event: Event) -> LogFuture<'a, ()>;
    /// The TLS sessions of `[from, to)` per recipient domain, every
    /// tenant's, for TLS-RPT ([`tlsrpt::aggregate`]).
    fn sessions(&self, from: i64, to: i64) -> LogFuture<'_, tlsrpt::Sessions>;
}

pub type LogFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<T>> + Send + 'a>>;

/// Hourly in the gateway: each tenant's `retention.log_days`, as the
/// configuration in force says. In a cluster every node does it; the
/// second finds nothing left to remove.
pub async fn retention(
    storage: std::sync::Arc<dyn LogStore>,
    in_force: tokio::sync::watch::Receiver<std::sync::Arc<crate::config::Config>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        // Tenants and their retention as the last reload left them.
        let config = in_force.borrow().clone();
        for t in config.tenants.iter().filter(|t| t.retention.log_days > 0) {
            let now = crate::util::now();
            let before = now - i64::from(t.retention.log_days) * 86_400;
            match storage.prune(&t.id, before, now).await {
                Ok(Some(p)) => tracing::info!(
                    tenant = %t.id,
                    "retention: log records {}–{} removed (older than {} days); a pruned record vouches for them",
                    p.from, p.through, t.retention.log_days
                ),
                Ok(None) => {}
                Err(e) => tracing::warn!(tenant = %t.id, "retention: {e:#}"),
            }
        }
    }
}
