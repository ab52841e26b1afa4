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

/// Removes a tenant's log records older than `before`, wherever the log is.
pub async fn prune_stored(
    storage: &crate::spool::Storage,
    tenant: &str,
    before: i64,
    now: i64,
) -> anyhow::Result<Option<log::Pruned>> {
    use crate::spool::Storage;
    match storage {
        Storage::Postgres(pg) => Ok(pg.prune_log(tenant, before, now).await?),
        Storage::Sqlite(s) => {
            let (db, tenant) = (s.path().to_path_buf(), tenant.to_string());
            tokio::task::spawn_blocking(move || prune(&db, &tenant, before, now)).await?
        }
    }
}

/// Hourly in the gateway: each tenant's `retention.log_days`, as the
/// configuration in force says. In a cluster every node does it; the
/// second finds nothing left to remove.
pub async fn retention(
    storage: crate::spool::Storage,
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
            match prune_stored(&storage, &t.id, before, now).await {
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
