//! Name resolution for delivery: MX and address lookups.
//!
//! This is the plain (non-validating) resolver of the relay core; the DNSSEC
//! issue replaces it with one that reports each answer's security status.
//! What it keeps apart already, because delivery decisions depend on it:
//! a name that does not exist (bounce), a name without the record (fall
//! back or bounce), and a lookup that failed (try again later).

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};

use crate::config::DnsConfig;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DnsError {
    /// NXDOMAIN: the name does not exist.
    #[error("{0}: no such domain (NXDOMAIN)")]
    NoSuchDomain(String),
    /// The name exists but has no record of the asked type.
    #[error("{0}: no {1} records")]
    NoRecords(String, &'static str),
    /// SERVFAIL, timeout, unreachable resolver: the answer is unknown.
    #[error("{0}: DNS lookup failed: {1}")]
    Temporary(String, String),
}

/// The MX answer for a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxAnswer {
    /// Exchanges sorted by preference (RFC 5321 §5.1).
    Hosts(Vec<(u16, String)>),
    /// "Null MX" (RFC 7505): the domain accepts no mail.
    NullMx,
    /// No MX records: the domain itself is the implicit MX (RFC 5321 §5.1).
    Implicit,
}

/// A shared, caching resolver.
#[derive(Clone)]
pub struct Dns {
    resolver: TokioResolver,
}

impl Dns {
    pub fn new(config: &DnsConfig) -> Result<Dns, DnsError> {
        let builder = if config.servers.is_empty() {
            Resolver::builder_tokio()
                .map_err(|e| DnsError::Temporary("resolv.conf".into(), e.to_string()))?
        } else {
            let servers = config.servers.iter().map(name_server).collect();
            Resolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], servers),
                TokioRuntimeProvider::default(),
            )
        };
        let resolver = builder
            .build()
            .map_err(|e| DnsError::Temporary("resolver".into(), e.to_string()))?;
        Ok(Dns { resolver })
    }

    pub async fn mx(&self, domain: &str) -> Result<MxAnswer, DnsError> {
        let fqdn = fqdn(domain);
        match self.resolver.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => {
                let mut hosts: Vec<(u16, String)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                        _ => None,
                    })
                    .collect();
                if hosts.len() == 1 && hosts[0].1 == "." {
                    return Ok(MxAnswer::NullMx);
                }
                hosts.retain(|(_, h)| h != ".");
                hosts.sort();
                for (_, h) in &mut hosts {
                    *h = h.trim_end_matches('.').to_ascii_lowercase();
                }
                if hosts.is_empty() {
                    Ok(MxAnswer::Implicit)
                } else {
                    Ok(MxAnswer::Hosts(hosts))
                }
            }
            Err(e) if e.is_nx_domain() => Err(DnsError::NoSuchDomain(domain.to_string())),
            Err(e) if e.is_no_records_found() => Ok(MxAnswer::Implicit),
            Err(e) => Err(DnsError::Temporary(domain.to_string(), e.to_string())),
        }
    }

    /// A and AAAA records of a host.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        match self.resolver.lookup_ip(fqdn(host).as_str()).await {
            Ok(lookup) => {
                let ips: Vec<IpAddr> = lookup.iter().collect();
                if ips.is_empty() {
                    Err(DnsError::NoRecords(host.to_string(), "A/AAAA"))
                } else {
                    Ok(ips)
                }
            }
            Err(e) if e.is_nx_domain() => Err(DnsError::NoSuchDomain(host.to_string())),
            Err(e) if e.is_no_records_found() => {
                Err(DnsError::NoRecords(host.to_string(), "A/AAAA"))
            }
            Err(e) => Err(DnsError::Temporary(host.to_string(), e.to_string())),
        }
    }
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

fn name_server(addr: &SocketAddr) -> NameServerConfig {
    let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
    for c in &mut ns.connections {
        c.port = addr.port();
    }
    ns
}
