//! What the delivery path measures of itself for `/metrics`: TLS handshake
//! and DNS lookup times, and how often the revocation caches answered.
//! Process-wide and lock-free (prometheus-client's atomics); the console
//! registers these beside the counts it reads from the log.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

pub struct Process {
    handshake: Histogram,
    dns: Family<Labels, Histogram>,
    cache: Family<Labels, Counter>,
}

/// Seconds, from 1 ms to about 16 s.
fn buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15)
}

static PROCESS: LazyLock<Process> = LazyLock::new(|| Process {
    handshake: Histogram::new(buckets()),
    dns: Family::new_with_constructor(|| Histogram::new(buckets())),
    cache: Family::default(),
});

/// A completed STARTTLS handshake of a delivery connection.
pub fn handshake(took: Duration) {
    PROCESS.handshake.observe(took.as_secs_f64());
}

/// A DNS lookup of `rtype` (`MX`, `TLSA`, …), answered or not.
pub fn dns(rtype: &'static str, took: Duration) {
    PROCESS
        .dns
        .get_or_create(&vec![("type", rtype)])
        .observe(took.as_secs_f64());
}

/// A revocation lookup (`ocsp`, `crl`) answered from the cache or not.
pub fn revocation_cache(kind: &'static str, hit: bool) {
    let result = if hit { "hit" } else { "miss" };
    PROCESS
        .cache
        .get_or_create(&vec![("cache", kind), ("result", result)])
        .inc();
}

/// Adds this process's measurements to a scrape.
pub fn register(registry: &mut Registry) {
    registry.register(
        "tls_handshake_seconds",
        "STARTTLS handshakes of delivery connections",
        PROCESS.handshake.clone(),
    );
    registry.register(
        "dns_lookup_seconds",
        "DNS lookups by record type",
        PROCESS.dns.clone(),
    );
    registry.register(
        "revocation_cache_lookups",
        "OCSP and CRL lookups answered from the cache (hit) or fetched (miss)",
        PROCESS.cache.clone(),
    );
}
