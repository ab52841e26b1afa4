//! `/metrics` in the Prometheus / OpenMetrics text format, encoded by
//! prometheus-client. The delivery counts come from the console index
//! (the log's totals since it began, identical on every node of a
//! cluster); the queue from one aggregate query.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::index::{ChainStatus, Totals};
use crate::spool::QueueDepth;

type Labels = Vec<(String, String)>;

pub fn text(
    totals: &Totals,
    chains: &[ChainStatus],
    depth: Option<QueueDepth>,
    started: i64,
    now: i64,
) -> String {
    let mut registry = Registry::with_prefix("sealgate");
    let attempts = Family::<Labels, Counter>::default();
    registry.register(
        "recipient_attempts",
        "Delivery attempts per recipient, by tenant, level reached, risk class and what became of the recipient",
        attempts.clone(),
    );
    for c in &totals.all {
        let labels = vec![
            ("tenant".into(), c.tenant.clone()),
            ("level".into(), c.level.clone()),
            ("class".into(), c.class.clone()),
            ("status".into(), c.status.clone()),
        ];
        attempts
            .get_or_create(&labels)
            .inc_by(u64::try_from(c.n).unwrap_or(0));
    }
    let queued = Gauge::<i64>::default();
    let oldest = Gauge::<i64>::default();
    let storage_up = Gauge::<i64>::default();
    registry.register(
        "queue_messages",
        "Messages with a pending recipient",
        queued.clone(),
    );
    registry.register(
        "queue_oldest_age_seconds",
        "Age of the oldest message with a pending recipient",
        oldest.clone(),
    );
    registry.register(
        "storage_up",
        "1 when the spool answered this scrape",
        storage_up.clone(),
    );
    if let Some(d) = depth {
        queued.set(i64::try_from(d.messages).unwrap_or(i64::MAX));
        oldest.set(d.oldest.map_or(0, |at| (now - at).max(0)));
        storage_up.set(1);
    }
    let records = Family::<Labels, Gauge>::default();
    let intact = Family::<Labels, Gauge>::default();
    let head_age = Family::<Labels, Gauge>::default();
    registry.register(
        "log_records",
        "Records in the tenant's transaction log chain",
        records.clone(),
    );
    registry.register(
        "log_chain_intact",
        "1 while every link and hash read so far checks out",
        intact.clone(),
    );
    registry.register(
        "log_head_age_seconds",
        "Time since the tenant's last log record",
        head_age.clone(),
    );
    for c in chains {
        let labels = vec![("tenant".to_string(), c.tenant.clone())];
        records.get_or_create(&labels).set(c.records);
        intact
            .get_or_create(&labels)
            .set(i64::from(c.broken.is_none()));
        head_age
            .get_or_create(&labels)
            .set((now - c.last_at).max(0));
    }
    crate::metrics::register(&mut registry);
    let start = Gauge::<i64>::default();
    registry.register(
        "start_time_seconds",
        "When this process started, Unix seconds",
        start.clone(),
    );
    start.set(started);
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}
