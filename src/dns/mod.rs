//! Name resolution for delivery: MX, A/AAAA, TLSA and TXT lookups, each
//! answer with its DNSSEC security status.
//!
//! Validation runs in process (hickory, anchored at the DNS root keys shipped
//! in `certs/` or a configured anchor file), so sealgate does not have to
//! trust the AD bit of whatever resolver it is pointed at. What delivery
//! decisions depend on is kept apart:
//! - a name that does not exist (bounce), a name without the record (fall
//!   back or no DANE), and a lookup that failed (try again later);
//! - Secure, Insecure, Bogus and Indeterminate answers. A Bogus answer is
//!   never returned as data: it is an error, because someone may be lying.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as HickoryDnsError, NetError};
use hickory_resolver::proto::dnssec::{Proof, TrustAnchors};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use hickory_resolver::{Resolver, TokioResolver};
use serde::Serialize;

use crate::config::DnsConfig;

/// The IANA root key-signing keys, the default trust anchor (provenance in the file).
pub const ROOT_ANCHORS: &str = include_str!("../../certs/root-anchors.dnskey");

/// DNSSEC status of an answer (RFC 4035 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// A chain of signatures from the trust anchor proves it.
    Secure,
    /// Provably unsigned: the zone (or one above it) has no DS.
    Insecure,
    /// Should be signed, but the signatures or the chain do not verify.
    Bogus,
    /// The status could not be determined.
    Indeterminate,
}

impl Security {
    fn of(proof: Proof) -> Security {
        match proof {
            Proof::Secure => Security::Secure,
            Proof::Insecure => Security::Insecure,
            Proof::Bogus => Security::Bogus,
            Proof::Indeterminate => Security::Indeterminate,
        }
    }

    /// The status of answers used together: the weakest one decides.
    pub fn and(self, other: Security) -> Security {
        use Security::*;
        match (self, other) {
            (Bogus, _) | (_, Bogus) => Bogus,
            (Indeterminate, _) | (_, Indeterminate) => Indeterminate,
            (Insecure, _) | (_, Insecure) => Insecure,
            (Secure, Secure) => Secure,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Security::Secure => "secure",
            Security::Insecure => "insecure",
            Security::Bogus => "bogus",
            Security::Indeterminate => "indeterminate",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DnsError {
    /// NXDOMAIN: the name does not exist.
    #[error("{name}: no such domain (NXDOMAIN, {})", .security.name())]
    NoSuchDomain { name: String, security: Security },
    /// The name exists but has no record of the asked type (NODATA).
    #[error("{name}: no {rtype} records ({})", .security.name())]
    NoRecords {
        name: String,
        rtype: &'static str,
        security: Security,
    },
    /// The answer failed DNSSEC validation: it is not used.
    #[error("{name}: {rtype} answer is DNSSEC-bogus: {why}")]
    Bogus {
        name: String,
        rtype: &'static str,
        why: String,
    },
    /// SERVFAIL, timeout, unreachable resolver: the answer is unknown.
    #[error("{0}: DNS lookup failed: {1}")]
    Temporary(String, String),
    /// The resolver could not be set up (configuration, trust anchor).
    #[error("resolver: {0}")]
    Setup(String),
}

impl DnsError {
    /// NXDOMAIN or NODATA: the record does not exist (as opposed to unknown).
    pub fn is_absent(&self) -> bool {
        matches!(
            self,
            DnsError::NoSuchDomain { .. } | DnsError::NoRecords { .. }
        )
    }
}

/// An answer with its security status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer<T> {
    pub value: T,
    /// Of every record used: the CNAMEs followed and the final RRset.
    pub security: Security,
    /// The owner name of the final RRset after CNAME expansion, without the
    /// trailing dot; the query name when there was no CNAME.
    pub canonical: String,
    /// Seconds the answer may be kept: the smallest TTL of the records used.
    pub ttl: u32,
}

/// How long an answer without records (no MX, one address family) is kept.
const NEGATIVE_TTL: u32 = 300;

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

/// One TLSA record (RFC 6698 §2.1), the raw numbers kept for the evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
#[error("DNSSEC trust anchor {path}: {message}")]
pub struct AnchorError {
    path: String,
    message: String,
}

/// What the start-up check found about the resolver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolverHealth {
    /// Answers arrive with signatures that validate up to the trust anchor.
    Validating,
    /// No answer at all (timeout, refused, SERVFAIL).
    Unreachable(String),
    /// Answers arrive, but without signatures that validate.
    NotValidating(String),
}

/// A shared, caching, validating resolver.
#[derive(Clone)]
pub struct Dns {
    resolver: Arc<TokioResolver>,
}

impl Dns {
    pub fn new(config: &DnsConfig) -> Result<Dns, DnsError> {
        crate::metrics::count_dns_cache();
        let mut builder = if config.servers.is_empty() {
            Resolver::builder_tokio()
                .map_err(|e| DnsError::Setup(format!("/etc/resolv.conf: {e}")))?
        } else {
            let servers = config.servers.iter().map(name_server).collect();
            Resolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], servers),
                TokioRuntimeProvider::default(),
            )
        };
        let anchors = trust_anchors(config).map_err(|e| DnsError::Setup(e.to_string()))?;
        // Mail routing comes from the DNS alone, never from /etc/hosts.
        builder.options_mut().use_hosts_file = ResolveHosts::Never;
        builder.options_mut().edns0 = true;
        builder.options_mut().timeout = config.timeout;
        builder.options_mut().attempts = config.attempts;
        let resolver = builder
            .with_trust_anchor(Arc::new(anchors))
            .build()
            .map_err(|e| DnsError::Setup(e.to_string()))?;
        Ok(Dns {
            resolver: Arc::new(resolver),
        })
    }

    /// Whether DNSSEC validation can work through the configured resolver,
    /// tried on the root zone's NS records (signed, and always there).
    pub async fn health(&self) -> ResolverHealth {
        match self.lookup(".", RecordType::NS).await {
            Ok(a) if a.security == Security::Secure => ResolverHealth::Validating,
            Ok(a) => ResolverHealth::NotValidating(format!(
                "the root zone's NS answer came back {}",
                a.security.name()
            )),
            Err(DnsError::Bogus { why, .. }) => ResolverHealth::NotValidating(format!(
                "the root zone's NS answer failed validation: {why}"
            )),
            Err(e) => ResolverHealth::Unreachable(e.to_string()),
        }
    }

    pub async fn mx(&self, domain: &str) -> Result<Answer<MxAnswer>, DnsError> {
        let answer = match self.lookup(domain, RecordType::MX).await {
            Ok(a) => a,
            Err(DnsError::NoRecords { name, security, .. }) => {
                return Ok(Answer {
                    value: MxAnswer::Implicit,
                    security,
                    canonical: name,
                    ttl: NEGATIVE_TTL,
                });
            }
            Err(e) => return Err(e),
        };
        let mut hosts: Vec<(u16, String)> = answer
            .value
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(mx) => Some((mx.preference, name_of(&mx.exchange.to_ascii()))),
                _ => None,
            })
            .collect();
        let value = if hosts.len() == 1 && hosts[0].1.is_empty() {
            MxAnswer::NullMx
        } else {
            hosts.retain(|(_, h)| !h.is_empty());
            hosts.sort();
            if hosts.is_empty() {
                MxAnswer::Implicit
            } else {
                MxAnswer::Hosts(hosts)
            }
        };
        Ok(Answer {
            value,
            security: answer.security,
            canonical: answer.canonical,
            ttl: answer.ttl,
        })
    }

    /// A and AAAA records of a host; IPv4 first. An IP literal is Secure:
    /// nothing was looked up.
    pub async fn addresses(&self, host: &str) -> Result<Answer<Vec<IpAddr>>, DnsError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Answer {
                value: vec![ip],
                security: Security::Secure,
                canonical: host.to_string(),
                ttl: u32::MAX,
            });
        }
        let (mut v4, mut v6) = tokio::join!(
            self.lookup(host, RecordType::A),
            self.lookup(host, RecordType::AAAA)
        );
        // A CNAME'd host whose target lacks one family: the validator (hickory
        // 0.26) judges "CNAME plus NSEC denial at the target" bogus although
        // the proof is sound. The other family already validated the CNAME,
        // so ask for the missing family at the target itself, where the
        // denial validates on its own.
        let target = |a: &Result<Answer<Vec<Record>>, DnsError>| match a {
            Ok(a) if a.canonical != name_of(host) => Some(a.canonical.clone()),
            _ => None,
        };
        if let (Err(DnsError::Bogus { .. }), Some(t)) = (&v4, target(&v6)) {
            v4 = self.lookup(&t, RecordType::A).await;
        }
        if let (Err(DnsError::Bogus { .. }), Some(t)) = (&v6, target(&v4)) {
            v6 = self.lookup(&t, RecordType::AAAA).await;
        }
        let mut ips = Vec::new();
        let mut security = None::<Security>;
        let mut canonical = name_of(host);
        let mut ttl = u32::MAX;
        let mut failure = None;
        for result in [v4, v6] {
            match result {
                Ok(a) => {
                    ips.extend(a.value.iter().filter_map(|r| match &r.data {
                        RData::A(a) => Some(IpAddr::V4(a.0)),
                        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                        _ => None,
                    }));
                    security = Some(security.map_or(a.security, |s| s.and(a.security)));
                    canonical = a.canonical;
                    ttl = ttl.min(a.ttl);
                }
                // One family being absent is normal; its proof still counts.
                Err(DnsError::NoRecords { security: s, .. }) => {
                    security = Some(security.map_or(s, |x| x.and(s)));
                    ttl = ttl.min(NEGATIVE_TTL);
                }
                Err(e @ DnsError::NoSuchDomain { .. }) => return Err(e),
                Err(e) => failure = Some(e),
            }
        }
        if let Some(e) = failure {
            // A bogus family taints the host; a failed one leaves the other usable.
            if matches!(e, DnsError::Bogus { .. }) || ips.is_empty() {
                return Err(e);
            }
        }
        if ips.is_empty() {
            return Err(DnsError::NoRecords {
                name: name_of(host),
                rtype: "A/AAAA",
                security: security.unwrap_or(Security::Indeterminate),
            });
        }
        Ok(Answer {
            value: ips,
            security: security.unwrap_or(Security::Indeterminate),
            canonical,
            ttl,
        })
    }

    /// TLSA records at `_port._tcp.host` (RFC 6698 §3).
    pub async fn tlsa(&self, host: &str, port: u16) -> Result<Answer<Vec<Tlsa>>, DnsError> {
        let name = format!("_{port}._tcp.{}", name_of(host));
        let answer = self.lookup(&name, RecordType::TLSA).await?;
        let value = answer
            .value
            .iter()
            .filter_map(|r| match &r.data {
                RData::TLSA(t) => Some(Tlsa {
                    usage: t.cert_usage.into(),
                    selector: t.selector.into(),
                    matching: t.matching.into(),
                    data: t.cert_data.clone(),
                }),
                _ => None,
            })
            .collect();
        Ok(Answer {
            value,
            security: answer.security,
            canonical: answer.canonical,
            ttl: answer.ttl,
        })
    }

    /// TXT records, each as its character-strings joined (RFC 7208 §3.3 style).
    pub async fn txt(&self, name: &str) -> Result<Answer<Vec<String>>, DnsError> {
        let answer = self.lookup(name, RecordType::TXT).await?;
        let value = answer
            .value
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(t) => Some(
                    t.txt_data
                        .iter()
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect::<String>(),
                ),
                _ => None,
            })
            .collect();
        Ok(Answer {
            value,
            security: answer.security,
            canonical: answer.canonical,
            ttl: answer.ttl,
        })
    }

    /// One lookup: the records of `rtype` at the end of the CNAME chain,
    /// with the security status of the whole chain.
    async fn lookup(&self, name: &str, rtype: RecordType) -> Result<Answer<Vec<Record>>, DnsError> {
        let rname = rtype_name(rtype);
        let qname = name_of(name);
        let started = std::time::Instant::now();
        let result = self.resolver.lookup(fqdn(name).as_str(), rtype).await;
        crate::metrics::dns(rname, started.elapsed());
        let lookup = match result {
            Ok(l) => l,
            Err(e) => return Err(classify(&qname, rname, e)),
        };
        // Follow the chain from the query name, so unrelated records in the
        // answer section cannot lend their status or data.
        let mut owner = qname.clone();
        let mut security = None::<Security>;
        for _ in 0..16 {
            let cname = lookup.answers().iter().find_map(|r| match &r.data {
                RData::CNAME(c) if name_of(&r.name.to_ascii()) == owner => {
                    Some((name_of(&c.0.to_ascii()), Security::of(r.proof)))
                }
                _ => None,
            });
            match cname {
                Some((target, s)) => {
                    security = Some(security.map_or(s, |x| x.and(s)));
                    owner = target;
                }
                None => break,
            }
        }
        let records: Vec<Record> = lookup
            .answers()
            .iter()
            .filter(|r| r.record_type() == rtype && name_of(&r.name.to_ascii()) == owner)
            .cloned()
            .collect();
        for r in &records {
            let s = Security::of(r.proof);
            security = Some(security.map_or(s, |x| x.and(s)));
        }
        let security = security.unwrap_or(Security::Indeterminate);
        if security == Security::Bogus {
            return Err(DnsError::Bogus {
                name: qname,
                rtype: rname,
                why: "signatures do not verify from the trust anchor".into(),
            });
        }
        if records.is_empty() {
            return Err(DnsError::NoRecords {
                name: owner,
                rtype: rname,
                security,
            });
        }
        let ttl = lookup
            .answers()
            .iter()
            .map(|r| r.ttl)
            .min()
            .unwrap_or(NEGATIVE_TTL);
        Ok(Answer {
            value: records,
            security,
            canonical: owner,
            ttl,
        })
    }
}

/// Sorts a resolver error into what delivery needs to know.
fn classify(name: &str, rtype: &'static str, e: NetError) -> DnsError {
    match &e {
        NetError::Dns(HickoryDnsError::NoRecordsFound(nr)) => {
            // The proofs of the denial are in the authority section.
            let security = nr
                .authorities
                .as_ref()
                .map(|a| {
                    a.iter()
                        .map(|r| Security::of(r.proof))
                        .reduce(Security::and)
                        .unwrap_or(Security::Indeterminate)
                })
                .unwrap_or(Security::Indeterminate);
            if security == Security::Bogus {
                return DnsError::Bogus {
                    name: name.to_string(),
                    rtype,
                    why: "the denial of existence does not verify".into(),
                };
            }
            if nr.response_code == ResponseCode::NXDomain {
                DnsError::NoSuchDomain {
                    name: name.to_string(),
                    security,
                }
            } else {
                DnsError::NoRecords {
                    name: name.to_string(),
                    rtype,
                    security,
                }
            }
        }
        NetError::Dns(HickoryDnsError::Nsec { proof, .. }) => match proof {
            Proof::Bogus => DnsError::Bogus {
                name: name.to_string(),
                rtype,
                why: "the denial of existence does not verify".into(),
            },
            other => DnsError::Temporary(
                name.to_string(),
                format!(
                    "{rtype} denial of existence is {}",
                    Security::of(*other).name()
                ),
            ),
        },
        NetError::Dns(HickoryDnsError::DnssecBogus) => DnsError::Bogus {
            name: name.to_string(),
            rtype,
            why: "DNSSEC validation failed".into(),
        },
        NetError::Dns(HickoryDnsError::ResponseCode(code)) => {
            DnsError::Temporary(name.to_string(), format!("{rtype} lookup: {code}"))
        }
        _ => DnsError::Temporary(name.to_string(), format!("{rtype} lookup: {e}")),
    }
}

fn trust_anchors(config: &DnsConfig) -> Result<TrustAnchors, AnchorError> {
    let (path, text) = match &config.trust_anchor {
        Some(p) => (
            p.display().to_string(),
            std::fs::read_to_string(p).map_err(|e| AnchorError {
                path: p.display().to_string(),
                message: e.to_string(),
            })?,
        ),
        None => ("(built in)".to_string(), ROOT_ANCHORS.to_string()),
    };
    let anchors: TrustAnchors = strip_comments(&text).parse().map_err(|e| AnchorError {
        path: path.clone(),
        message: format!("not a list of DNSKEY records: {e}"),
    })?;
    if anchors.is_empty() {
        return Err(AnchorError {
            path,
            message: "no root DNSKEY records".into(),
        });
    }
    Ok(anchors)
}

/// Drops `;` comments and blank lines, which the anchor parser does not take.
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|l| l.split(';').next().unwrap_or(""))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect()
}

fn rtype_name(rtype: RecordType) -> &'static str {
    match rtype {
        RecordType::MX => "MX",
        RecordType::A => "A",
        RecordType::AAAA => "AAAA",
        RecordType::TLSA => "TLSA",
        RecordType::TXT => "TXT",
        _ => "other",
    }
}

/// Lower case, no trailing dot: how names are compared and shown.
fn name_of(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
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

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// The DS digest of a root DNSKEY (RFC 4034 §5.1.4): SHA-256 over the
    /// owner name in wire form (the root: one zero octet) and the RDATA.
    fn root_ds(flags: u16, protocol: u8, algorithm: u8, key: &[u8]) -> String {
        let mut data = vec![0u8];
        data.extend(flags.to_be_bytes());
        data.extend([protocol, algorithm]);
        data.extend(key);
        crate::util::hex_upper(&Sha256::digest(&data))
    }

    #[test]
    fn shipped_root_anchors_match_the_iana_digests() {
        use base64::Engine;
        let mut digests = Vec::new();
        for line in strip_comments(ROOT_ANCHORS).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(&f[..4], &[".", "172800", "IN", "DNSKEY"], "{line}");
            let key = base64::engine::general_purpose::STANDARD
                .decode(f[7..].concat())
                .expect("base64 key");
            digests.push(root_ds(
                f[4].parse().unwrap(),
                f[5].parse().unwrap(),
                f[6].parse().unwrap(),
                &key,
            ));
        }
        // From https://data.iana.org/root-anchors/root-anchors.xml.
        assert_eq!(
            digests,
            [
                "E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D",
                "683D2D0ACB8C9B712A1948B27F741219298D0A450D612C483AF444A4C0FB2B16"
            ]
        );
        let anchors: TrustAnchors = strip_comments(ROOT_ANCHORS).parse().unwrap();
        assert_eq!(anchors.len(), 2);
    }

    #[test]
    fn the_weakest_status_decides() {
        use Security::*;
        assert_eq!(Secure.and(Secure), Secure);
        assert_eq!(Secure.and(Insecure), Insecure);
        assert_eq!(Insecure.and(Indeterminate), Indeterminate);
        assert_eq!(Secure.and(Bogus), Bogus);
        assert_eq!(Indeterminate.and(Bogus), Bogus);
    }
}
