//! What the delivery path measures of itself for `/metrics`: TLS handshake
//! and DNS lookup times, and how often the revocation and DNS caches
//! answered.
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
    dns_cache: Family<Labels, Counter>,
}

/// Seconds, from 1 ms to about 16 s.
fn buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15)
}

static PROCESS: LazyLock<Process> = LazyLock::new(|| Process {
    handshake: Histogram::new(buckets()),
    dns: Family::new_with_constructor(|| Histogram::new(buckets())),
    cache: Family::default(),
    dns_cache: Family::default(),
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

/// hickory counts its cache's hits and misses through the `metrics`
/// facade; this recorder passes those two counts on to `dns_cache` and
/// drops everything else hickory reports.
struct HickoryCache;

/// One of hickory's counters, kept in ours.
struct Forward(Counter);

impl ::metrics::CounterFn for Forward {
    fn increment(&self, value: u64) {
        self.0.inc_by(value);
    }

    fn absolute(&self, _value: u64) {}
}

impl ::metrics::Recorder for HickoryCache {
    fn describe_counter(
        &self,
        _: ::metrics::KeyName,
        _: Option<::metrics::Unit>,
        _: ::metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: ::metrics::KeyName,
        _: Option<::metrics::Unit>,
        _: ::metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: ::metrics::KeyName,
        _: Option<::metrics::Unit>,
        _: ::metrics::SharedString,
    ) {
    }

    fn register_counter(
        &self,
        key: &::metrics::Key,
        _: &::metrics::Metadata<'_>,
    ) -> ::metrics::Counter {
        use hickory_resolver::metrics::{CACHE_HIT_TOTAL, CACHE_MISS_TOTAL};
        let result = match key.name() {
            CACHE_HIT_TOTAL => "hit",
            CACHE_MISS_TOTAL => "miss",
            _ => return ::metrics::Counter::noop(),
        };
        let counter = PROCESS
            .dns_cache
            .get_or_create(&vec![("result", result)])
            .clone();
        ::metrics::Counter::from_arc(std::sync::Arc::new(Forward(counter)))
    }

    fn register_gauge(&self, _: &::metrics::Key, _: &::metrics::Metadata<'_>) -> ::metrics::Gauge {
        ::metrics::Gauge::noop()
    }

    fn register_histogram(
        &self,
        _: &::metrics::Key,
        _: &::metrics::Metadata<'_>,
    ) -> ::metrics::Histogram {
        ::metrics::Histogram::noop()
    }
}

/// Lets hickory's cache counts reach `/metrics`; before the first
/// resolver is built, which registers them. Once per process.
pub fn count_dns_cache() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Only fails when another recorder was set first: then its owner
        // gets hickory's counts, and ours stay at zero.
        let _ = ::metrics::set_global_recorder(HickoryCache);
    });
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
        "dns_cache_lookups",
        "DNS lookups answered from the resolver's cache (hit) or sent to the name servers (miss)",
        PROCESS.dns_cache.clone(),
    );
    registry.register(
        "revocation_cache_lookups",
        "OCSP and CRL lookups answered from the cache (hit) or fetched (miss)",
        PROCESS.cache.clone(),
    );
}
