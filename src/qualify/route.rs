//! Plans the hosts of a recipient domain before any connection: the static
//! route or the MX answer, and per host its addresses, the DNSSEC status of
//! the path, whether DANE (RFC 7672) or MTA-STS (RFC 8461) governs it, and
//! whether TLS is mandatory. A host the DNS already rules out is kept with
//! the failing checks that say why, so every output can show it.

use std::net::IpAddr;

use super::mta_sts::{Discovery, Mode, Policy};
use super::{Check, CheckName, Qualifier, Refusal, RefusalReason, Status, dane};
use crate::dns::{DnsError, MxAnswer, Security, Tlsa};

/// One host to try.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub preference: u16,
    pub port: u16,
}

/// The hosts of a domain in MX order, with the domain-level evidence.
#[derive(Debug, Clone)]
pub struct Route {
    pub hosts: Vec<HostPlan>,
    /// What the MX lookup and MTA-STS discovery said (`dnssec`, `mta_sts`).
    pub checks: Vec<Check>,
}

/// A host that may be tried, or why it may not.
#[derive(Debug, Clone)]
pub enum HostPlan {
    Use(Box<Candidate>),
    /// Ruled out before connecting: the checks that say so, and the refusal.
    Skip {
        target: Target,
        checks: Vec<Check>,
        refusal: Refusal,
    },
}

impl HostPlan {
    pub fn target(&self) -> &Target {
        match self {
            HostPlan::Use(c) => &c.target,
            HostPlan::Skip { target, .. } => target,
        }
    }
}

/// A host with the rules its connection must meet.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub target: Target,
    pub addresses: Vec<IpAddr>,
    /// Reference identities for the certificate (RFC 7672 §3.2.2).
    pub names: Vec<String>,
    /// Usable TLSA records: when present, only DANE authenticates.
    pub tlsa: Vec<Tlsa>,
    /// Why TLS is mandatory for this host, if it is (no plaintext fallback).
    pub require_tls: Option<String>,
    pub dnssec: Check,
    /// `dane` when no usable TLSA records exist (why DANE does not apply).
    pub dane: Check,
    /// MTA-STS policy that governs this host (not when DANE applies).
    pub sts: Option<Policy>,
    pub sts_detail: String,
    /// Seconds the DNS answers behind this plan may be kept.
    pub ttl: u32,
}

/// Why a domain could not be routed at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteFailureKind {
    /// NXDOMAIN for the recipient domain.
    NoSuchDomain,
    /// Null MX (RFC 7505): the domain takes no mail.
    NullMx,
    /// The MX answer failed DNSSEC validation (RFC 4035 §5).
    MxBogus,
    /// SERVFAIL, timeout, unreachable resolver.
    MxLookupFailed,
}

/// Routing failed for the whole domain, with the domain-level checks.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{text}")]
pub struct RouteFailure {
    pub kind: RouteFailureKind,
    pub text: String,
    pub checks: Vec<Check>,
}

impl RouteFailure {
    /// Whether the recipients bounce now rather than wait.
    pub fn permanent(&self) -> bool {
        matches!(
            self.kind,
            RouteFailureKind::NoSuchDomain | RouteFailureKind::NullMx
        )
    }

    /// Enhanced status code (RFC 3463) for the queue and the DSN.
    pub fn status(&self) -> [u8; 3] {
        match self.kind {
            RouteFailureKind::NoSuchDomain => [5, 1, 2],
            RouteFailureKind::NullMx => [5, 1, 10],
            RouteFailureKind::MxBogus => [4, 7, 5],
            RouteFailureKind::MxLookupFailed => [4, 4, 3],
        }
    }
}

/// The `dnssec` check of a lookup that produced no usable answer: bogus is
/// `fail`, SERVFAIL and timeouts `error`, a proven absence by its proof.
pub fn dnssec_of_error(e: &DnsError) -> Check {
    let status = match e {
        DnsError::Bogus { .. } => Status::Fail,
        DnsError::Temporary(..) | DnsError::Setup(_) => Status::Error,
        DnsError::NoSuchDomain { security, .. } | DnsError::NoRecords { security, .. } => {
            return dnssec_of(*security, &e.to_string());
        }
    };
    Check::new(CheckName::Dnssec, status, e.to_string())
}

/// The `dnssec` check for answers of this (combined) security.
fn dnssec_of(security: Security, detail: &str) -> Check {
    match security {
        Security::Secure => Check::new(CheckName::Dnssec, Status::Pass, detail),
        Security::Insecure => Check::new(
            CheckName::Dnssec,
            Status::Fail,
            format!("zone unsigned: {detail}"),
        ),
        Security::Bogus => Check::new(CheckName::Dnssec, Status::Fail, detail),
        Security::Indeterminate => Check::new(CheckName::Dnssec, Status::Error, detail),
    }
}

/// The domain-level `mta_sts` check of a discovery.
fn sts_discovery_check(sts: Option<&Discovery>) -> Check {
    match sts {
        None => Check::new(CheckName::MtaSts, Status::NotApplicable, "MTA-STS disabled"),
        Some(Discovery::None(why)) => Check::new(CheckName::MtaSts, Status::NotApplicable, why),
        Some(Discovery::Policy(p, how)) => Check::new(
            CheckName::MtaSts,
            Status::Pass,
            format!("policy id {} mode {} ({how})", p.id, p.mode.name()),
        ),
    }
}

/// RFC 7672 §2.2.1: a TLSA lookup that fails, or is bogus, leaves the host
/// unusable: DANE could not be ruled out, and it cannot be done.
pub fn tlsa_lookup_failed(target: Target, dnssec_parts: &[String], e: &DnsError) -> HostPlan {
    let mut dnssec = dnssec_of_error(e);
    dnssec.detail = format!("{}, TLSA: {e}", dnssec_parts.join(", "));
    HostPlan::Skip {
        checks: vec![
            dnssec,
            Check::new(
                CheckName::Dane,
                Status::Error,
                format!("TLSA lookup failed: {e}"),
            ),
        ],
        refusal: Refusal::new(RefusalReason::TlsaLookupFailed, e.to_string()),
        target,
    }
}

/// RFC 8461 §4.1: a host outside the mx list of a policy in enforce mode
/// is not used.
pub fn not_in_policy(target: Target, dnssec: Check, dane: Check, p: &Policy) -> HostPlan {
    let detail = format!(
        "policy id {} mode enforce: {} does not match the policy's mx patterns {}",
        p.id,
        target.host,
        p.mx.join(", ")
    );
    HostPlan::Skip {
        checks: vec![
            dnssec,
            dane,
            Check::new(CheckName::MtaSts, Status::Fail, detail.clone()),
        ],
        refusal: Refusal::new(RefusalReason::NotInMtaStsPolicy, detail),
        target,
    }
}

/// An address literal (RFC 5321 §4.1.3) is its own one host: no DNS is
/// asked, so neither DANE nor MTA-STS can apply, and the certificate is
/// checked against the address itself (an IP SAN).
fn literal_route(domain: &str, ip: IpAddr, port: u16) -> Route {
    let why = "address literal: no DNS lookup";
    Route {
        hosts: vec![HostPlan::Use(Box::new(Candidate {
            target: Target {
                host: domain.to_string(),
                preference: 0,
                port,
            },
            addresses: vec![ip],
            names: vec![ip.to_string()],
            tlsa: Vec::new(),
            require_tls: None,
            dnssec: Check::new(CheckName::Dnssec, Status::NotApplicable, why),
            dane: Check::new(CheckName::Dane, Status::NotApplicable, why),
            sts: None,
            sts_detail: why.into(),
            // No DNS answer can change it: an hour, like a long TTL.
            ttl: 3600,
        }))],
        checks: vec![Check::new(CheckName::MtaSts, Status::NotApplicable, why)],
    }
}

impl Qualifier {
    /// The hosts to try for a domain, in MX order, with their requirements.
    pub async fn route(&self, domain: &str) -> Result<Route, RouteFailure> {
        let routes = self
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(route) = routes.iter().find(|r| r.domain.matches(domain)) {
            let target = Target {
                host: route.next_hop.host.clone(),
                preference: 0,
                port: route.next_hop.port,
            };
            let plan = match self.dns.addresses(&target.host).await {
                Ok(a) => HostPlan::Use(Box::new(Candidate {
                    names: vec![target.host.clone()],
                    target,
                    addresses: a.value,
                    tlsa: Vec::new(),
                    require_tls: None,
                    dnssec: Check::new(
                        CheckName::Dnssec,
                        Status::NotApplicable,
                        "static route: no MX lookup",
                    ),
                    dane: Check::new(CheckName::Dane, Status::NotApplicable, "static route"),
                    sts: None,
                    sts_detail: "static route".into(),
                    ttl: a.ttl,
                })),
                Err(e) => HostPlan::Skip {
                    checks: vec![dnssec_of_error(&e)],
                    refusal: Refusal::new(RefusalReason::AddressLookupFailed, e.to_string()),
                    target,
                },
            };
            return Ok(Route {
                hosts: vec![plan],
                checks: Vec::new(),
            });
        }
        let port = self.config.outbound.port;
        if let Some(ip) = crate::message::literal_ip(domain) {
            return Ok(literal_route(domain, ip, port));
        }
        let mx = match self.dns.mx(domain).await {
            Ok(mx) => mx,
            Err(e) => {
                let (kind, text) = match &e {
                    DnsError::NoSuchDomain { name, .. } => (
                        RouteFailureKind::NoSuchDomain,
                        format!("domain {name} does not exist"),
                    ),
                    DnsError::Bogus { .. } => (RouteFailureKind::MxBogus, format!("{e}: not used")),
                    _ => (RouteFailureKind::MxLookupFailed, e.to_string()),
                };
                return Err(RouteFailure {
                    kind,
                    text,
                    checks: vec![dnssec_of_error(&e)],
                });
            }
        };
        let mx_check = dnssec_of(mx.security, &format!("MX {}", mx.security.name()));
        let targets: Vec<Target> = match &mx.value {
            MxAnswer::Hosts(hosts) => hosts
                .iter()
                .map(|(preference, host)| Target {
                    host: host.clone(),
                    preference: *preference,
                    port,
                })
                .collect(),
            MxAnswer::Implicit => vec![Target {
                host: domain.to_string(),
                preference: 0,
                port,
            }],
            MxAnswer::NullMx => {
                return Err(RouteFailure {
                    kind: RouteFailureKind::NullMx,
                    text: format!("{domain} accepts no mail (null MX, RFC 7505)"),
                    checks: vec![mx_check],
                });
            }
        };
        let sts = match &self.mta_sts {
            Some(m) => Some(m.discover(domain).await),
            None => None,
        };
        let mut hosts = Vec::new();
        for target in targets {
            hosts.push(
                self.plan_host(target, (mx.security, mx.ttl), sts.as_ref())
                    .await,
            );
        }
        Ok(Route {
            hosts,
            checks: vec![mx_check, sts_discovery_check(sts.as_ref())],
        })
    }

    /// DNSSEC, DANE and MTA-STS for one MX host, before connecting.
    async fn plan_host(
        &self,
        target: Target,
        (mx_security, mx_ttl): (Security, u32),
        sts: Option<&Discovery>,
    ) -> HostPlan {
        let addresses = match self.dns.addresses(&target.host).await {
            Ok(a) => a,
            Err(e) => {
                return HostPlan::Skip {
                    checks: vec![dnssec_of_error(&e)],
                    refusal: Refusal::new(RefusalReason::AddressLookupFailed, e.to_string()),
                    target,
                };
            }
        };
        let host = target.host.clone();
        let mut names = vec![host.clone()];
        let mut security = mx_security.and(addresses.security);
        let mut ttl = mx_ttl.min(addresses.ttl);
        let mut dnssec_parts = vec![
            format!("MX {}", mx_security.name()),
            format!("{host} A/AAAA {}", addresses.security.name()),
        ];
        let mut tlsa = Vec::new();
        let mut require_tls = None;
        let mut dane = Check::new(
            CheckName::Dane,
            Status::NotApplicable,
            "MX or address records not DNSSEC-secure: DANE does not apply (RFC 7672 §2.2)",
        );
        // RFC 7672 §2.2: TLSA records count only for a host whose MX and
        // address records are secure.
        if security == Security::Secure {
            // §2.2.2: with a secure CNAME chain, the expanded name first.
            let mut bases = Vec::new();
            if addresses.canonical != host {
                bases.push(addresses.canonical.clone());
            }
            bases.push(host.clone());
            let mut found = None;
            for base in &bases {
                match self.dns.tlsa(base, target.port).await {
                    Ok(answer) => {
                        found = Some((base.clone(), answer));
                        break;
                    }
                    Err(e) if e.is_absent() => continue,
                    Err(e) => return tlsa_lookup_failed(target, &dnssec_parts, &e),
                }
            }
            match found {
                None => {
                    dane = Check::new(
                        CheckName::Dane,
                        Status::NotApplicable,
                        format!("no TLSA records at _{}._tcp.{host}", target.port),
                    );
                }
                Some((base, answer)) => {
                    ttl = ttl.min(answer.ttl);
                    dnssec_parts.push(format!("TLSA {}", answer.security.name()));
                    security = security.and(answer.security);
                    if answer.security != Security::Secure {
                        dane = Check::new(
                            CheckName::Dane,
                            Status::NotApplicable,
                            format!(
                                "TLSA records at _{}._tcp.{base} are not DNSSEC-secure: ignored",
                                target.port
                            ),
                        );
                    } else {
                        tlsa = dane::usable(&answer.value);
                        if base != host {
                            names = vec![base.clone(), host.clone()];
                        }
                        require_tls = Some(if tlsa.is_empty() {
                            dane = Check::new(
                                CheckName::Dane,
                                Status::NotApplicable,
                                "TLSA records present but none usable: TLS without authentication is mandatory (RFC 7672 §2.2)",
                            );
                            "TLSA records published".to_string()
                        } else {
                            "usable TLSA records published (DANE)".to_string()
                        });
                    }
                }
            }
        }
        let dnssec = dnssec_of(security, &dnssec_parts.join(", "));
        // RFC 8461 §2: DANE takes precedence over MTA-STS for a host with usable TLSA.
        let (sts_policy, sts_detail) = match sts {
            _ if !tlsa.is_empty() => (
                None,
                "DANE applies to this host and takes precedence (RFC 8461 §2)".to_string(),
            ),
            None => (None, "MTA-STS disabled".to_string()),
            Some(Discovery::None(why)) => (None, why.clone()),
            Some(Discovery::Policy(p, how)) if p.mode == Mode::None => {
                (None, format!("policy mode none ({how})"))
            }
            Some(Discovery::Policy(p, how)) => {
                if p.mode == Mode::Enforce && !p.matches(&host) {
                    return not_in_policy(target, dnssec, dane, p);
                }
                if p.mode == Mode::Enforce && require_tls.is_none() {
                    require_tls = Some("MTA-STS policy in enforce mode".to_string());
                }
                (Some(p.clone()), how.clone())
            }
        };
        HostPlan::Use(Box::new(Candidate {
            target,
            addresses: addresses.value,
            names,
            tlsa,
            require_tls,
            dnssec,
            dane,
            sts: sts_policy,
            sts_detail,
            ttl,
        }))
    }
}
