//! Delivers one job (a message and its recipients in one domain) to the
//! domain's mail exchangers.
//!
//! An attempt is a short pipeline of named steps: [`Outbound::route`] (static
//! route or MX), connect (in preference order, falling back to the next
//! host or address when one fails), STARTTLS when offered (opportunistic in
//! the relay core), the transaction, and a per-recipient [`Outcome`].
//! Connections are kept for a few seconds after a transaction so the next
//! job to the same domain skips the connect, greeting, EHLO and TLS
//! handshake.

pub mod client;
mod direct;
mod sealed;

pub use direct::Direct;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rustls::pki_types::ServerName;
use serde::Serialize;

use crate::config::Config;
use crate::dns::{Dns, DnsError, MxAnswer, Security, Tlsa};
use crate::policy::memory::DomainMemory;
use crate::policy::{Action, Decision, History, NO_HOST, Policies, Required, Requirement};
use crate::qualify::bsi::Profile;
use crate::qualify::mta_sts::{Discovery, Mode, MtaSts, Policy};
use crate::qualify::pkix::{Roots, RootsError};
use crate::qualify::probe::{self, Offer};
use crate::qualify::revocation::Revocation;
use crate::qualify::verifier::{self, CertEvidence, DeliveryVerifier};
use crate::qualify::{Check, CheckName, Level, Status, TlsFacts, Verdict, dane};
use crate::reply::Reply;
use crate::seal::channel::{Contacts, PasswordStore};
use crate::spool::{LoadedJob, PendingRecipient};
use client::{ClientError, SmtpClient, Timeouts};

/// Why a recipient ended where it did, for the queue, the DSN and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detail {
    /// Enhanced status code (RFC 3463) for the DSN.
    pub status: [u8; 3],
    /// `host[address]` of the peer that answered, if one did.
    pub remote: Option<String>,
    /// The peer's reply, as it said it.
    pub reply: Option<Reply>,
    /// One line for the operator: what happened.
    pub text: String,
}

impl Detail {
    fn from_reply(remote: &str, reply: &Reply) -> Detail {
        let status = if reply.status != [0, 0, 0] {
            reply.status
        } else {
            [(reply.code / 100) as u8, 0, 0]
        };
        Detail {
            status,
            remote: Some(remote.to_string()),
            reply: Some(reply.clone()),
            text: format!("{remote} said: {reply}"),
        }
    }

    fn local(status: [u8; 3], text: impl Into<String>) -> Detail {
        Detail {
            status,
            remote: None,
            reply: None,
            text: text.into(),
        }
    }
}

/// What an attempt did for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered(Detail),
    /// Permanent failure: bounce now.
    Failed(Detail),
    /// Temporary failure: try again later.
    Deferred(Detail),
}

/// The result of one delivery attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// Keyed by the recipient's index in the envelope.
    pub outcomes: Vec<(u32, Outcome)>,
    /// The verdict of the connection the transaction ran on, or else the
    /// best one seen, if a connection was made.
    pub verdict: Option<Verdict>,
    /// The policy's decision for each recipient it decided (not those a
    /// routing failure left undecided).
    pub decisions: Vec<(u32, Decision)>,
}

impl Attempt {
    /// The recipients a connection carried: the peer's replies.
    fn delivered(
        &mut self,
        recipients: &[(&PendingRecipient, Requirement)],
        outcomes: Vec<(u32, Outcome)>,
    ) {
        for (p, req) in recipients {
            if let Required::Level(required) = req.required {
                self.decisions.push((
                    p.index,
                    Decision {
                        class: req.class,
                        required: req.required,
                        action: Action::Deliver { required },
                    },
                ));
            }
        }
        self.outcomes.extend(outcomes);
    }

    /// One outcome for every recipient given.
    fn all(
        &mut self,
        recipients: &[(&PendingRecipient, Requirement)],
        outcome: Outcome,
        verdict: Option<Verdict>,
    ) {
        self.outcomes
            .extend(recipients.iter().map(|(p, _)| (p.index, outcome.clone())));
        if verdict.is_some() {
            self.verdict = verdict;
        }
    }

    /// A recipient no connection carried: the policy's action becomes its outcome.
    fn decide(&mut self, index: u32, req: &Requirement, action: Action, unreachable: &str) {
        let outcome = match &action {
            Action::Deliver { .. } => Outcome::Deferred(Detail::local(
                [4, 4, 1],
                "no connection was left to deliver on",
            )),
            Action::Defer { reason } if reason == NO_HOST => {
                Outcome::Deferred(Detail::local([4, 4, 1], unreachable))
            }
            Action::Defer { reason } => Outcome::Deferred(Detail::local(
                [4, 7, 10],
                format!("policy: defer: {reason}"),
            )),
            // Until sealed delivery exists (the envelope issue), a message
            // the policy would seal is held, never sent as it is.
            Action::Seal { reason } => Outcome::Deferred(Detail::local(
                [4, 7, 10],
                format!(
                    "policy: seal: {reason}; held: seal unavailable (sealed delivery is not built yet)"
                ),
            )),
            Action::Bounce { reason } => Outcome::Failed(Detail::local(
                [5, 7, 10],
                format!("policy: bounce: {reason}"),
            )),
        };
        self.outcomes.push((index, outcome));
        self.push_decision(index, req, action);
    }

    fn push_decision(&mut self, index: u32, req: &Requirement, action: Action) {
        self.decisions.push((
            index,
            Decision {
                class: req.class,
                required: req.required,
                action,
            },
        ));
    }
}

/// Keeps the better of two spare connections (by level) and closes the other.
fn keep_better(spare: &mut Option<Idle>, session: Idle) {
    let level = |i: &Idle| i.verdict.as_ref().map(|v| v.level);
    match spare {
        Some(s) if level(s) >= level(&session) => {
            tokio::spawn(session.client.quit());
        }
        _ => {
            if let Some(old) = spare.replace(session) {
                tokio::spawn(old.client.quit());
            }
        }
    }
}

/// One host to try.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub preference: u16,
    pub port: u16,
}

/// Routing failed for the whole domain.
#[derive(Debug, Clone)]
struct RouteFailure {
    permanent: bool,
    status: [u8; 3],
    text: String,
}

/// The hosts of a domain, best first, each with what it requires.
struct Route {
    hosts: Vec<HostPlan>,
}

/// A host that may be tried, or why it may not.
enum HostPlan {
    Use(Box<Candidate>),
    Skip { target: Target, reason: String },
}

impl HostPlan {
    fn target(&self) -> &Target {
        match self {
            HostPlan::Use(c) => &c.target,
            HostPlan::Skip { target, .. } => target,
        }
    }
}

/// A host with the rules its connection must meet.
#[derive(Debug, Clone)]
struct Candidate {
    target: Target,
    addresses: Vec<IpAddr>,
    /// Reference identities for the certificate (RFC 7672 §3.2.2).
    names: Vec<String>,
    /// Usable TLSA records: when present, only DANE authenticates.
    tlsa: Vec<Tlsa>,
    /// Why TLS is mandatory for this host, if it is (no plaintext fallback).
    require_tls: Option<String>,
    dnssec: Check,
    /// `dane` when no usable TLSA records exist (why DANE does not apply).
    dane: Check,
    /// MTA-STS policy that governs this host (not when DANE applies).
    sts: Option<Policy>,
    sts_detail: String,
    /// Seconds the DNS answers behind this plan may be kept.
    ttl: u32,
}

struct Idle {
    client: SmtpClient,
    since: Instant,
    verdict: Option<Verdict>,
    /// Until when the verdict may be remembered (DNS TTLs, revocation nextUpdate).
    valid_until: i64,
}

/// The outbound side; shared by all delivery tasks.
pub struct Outbound {
    config: Arc<Config>,
    dns: Dns,
    roots: Roots,
    mta_sts: Option<MtaSts>,
    revocation: Revocation,
    policies: Arc<Policies>,
    memory: Arc<DomainMemory>,
    /// Pre-agreed envelope passwords (none for `sealgate check`).
    passwords: Option<PasswordStore>,
    /// For the password webhook.
    http: reqwest::Client,
    idle: Mutex<HashMap<String, Vec<Idle>>>,
}

/// `sealgate check`: one entry per MX host.
#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    pub host: String,
    pub preference: u16,
    pub address: Option<String>,
    pub level: Level,
    pub checks: Vec<Check>,
    pub tls: Option<TlsFacts>,
    /// Why the host was not (or could not be) used, if so.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub domain: String,
    /// The best level any MX reached.
    pub level: Level,
    pub mx: Vec<HostReport>,
    /// Why no host could be listed, if so.
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error(transparent)]
    Roots(#[from] RootsError),
    #[error("MTA-STS: {0}")]
    MtaSts(String),
    #[error("revocation: {0}")]
    Revocation(String),
    #[error("sealed delivery: {0}")]
    Seal(String),
}

impl Outbound {
    /// `db`: where MTA-STS policies are cached across restarts (none: memory only).
    pub fn new(
        config: Arc<Config>,
        dns: Dns,
        db: Option<std::path::PathBuf>,
        policies: Arc<Policies>,
        memory: Arc<DomainMemory>,
    ) -> Result<Outbound, OutboundError> {
        let roots = Roots::load(&config.outbound.pkix_roots)?;
        let mta_sts = if config.mta_sts.enabled {
            let sts_roots = match &config.mta_sts.roots {
                Some(r) => Roots::load(r)?,
                None => roots.clone(),
            };
            Some(
                MtaSts::new(&config.mta_sts, &sts_roots, dns.clone(), db.clone())
                    .map_err(OutboundError::MtaSts)?,
            )
        } else {
            None
        };
        let revocation =
            Revocation::new(&config.revocation, dns.clone()).map_err(OutboundError::Revocation)?;
        // A broken contacts file is found at start (and named by line), not
        // when the first message is sealed.
        for t in &config.tenants {
            if let Some(file) = &t.seal.contacts_file {
                Contacts::load(file).map_err(|e| OutboundError::Seal(e.to_string()))?;
            }
        }
        let passwords = match &db {
            Some(path) => Some(
                PasswordStore::open(path, &config.passwords_key())
                    .map_err(|e| OutboundError::Seal(e.to_string()))?,
            ),
            None => None,
        };
        let mut store = rustls::RootCertStore::empty();
        store.extend(roots.anchors().iter().cloned());
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(
                rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| OutboundError::Seal(e.to_string()))?
                    .with_root_certificates(store)
                    .with_no_client_auth(),
            )
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| OutboundError::Seal(format!("webhook HTTP client: {e}")))?;
        Ok(Outbound {
            config,
            dns,
            roots,
            mta_sts,
            revocation,
            policies,
            memory,
            passwords,
            http,
            idle: Mutex::new(HashMap::new()),
        })
    }

    fn timeouts(&self) -> Timeouts {
        let o = &self.config.outbound;
        Timeouts {
            connect: o.connect_timeout,
            command: o.command_timeout,
            data: o.data_timeout,
        }
    }

    /// Delivers a job; never fails as a whole: every recipient gets an
    /// outcome and the policy's decision for it.
    ///
    /// Hosts are tried in order; a connection carries the recipients whose
    /// requirement its verdict meets, and the rest try the next host. Those
    /// no host could carry get the action their requirement decides
    /// against the best verdict seen (seal, defer or bounce).
    pub async fn deliver(&self, job: &LoadedJob) -> Attempt {
        let mut attempt = Attempt {
            outcomes: Vec::new(),
            verdict: None,
            decisions: Vec::new(),
        };
        let Some(first) = job.recipients.first() else {
            return attempt;
        };
        let domain = first.recipient.domain.clone();
        let now = chrono::Utc::now().timestamp();
        let policy = self.policies.current().for_tenant(&job.envelope.tenant.0);
        let mut open: Vec<(&PendingRecipient, Requirement)> = Vec::new();
        // Recipients the policy seals, with the reason.
        let mut to_seal: Vec<(&PendingRecipient, Requirement, String)> = Vec::new();
        for p in &job.recipients {
            let req = policy.requirement(p.recipient.class, &domain, now);
            if req.required == Required::Sealed {
                // Always sealed: only a carrier for the envelope is needed.
                if let Action::Seal { reason } = req.decide(None, History::Ordinary, now) {
                    to_seal.push((p, req, reason));
                }
            } else {
                open.push((p, req));
            }
        }

        if !open.is_empty()
            && let Some(mut idle) = self.take_idle(&domain)
        {
            let fits = idle
                .verdict
                .as_ref()
                .is_some_and(|v| open.iter().all(|(_, r)| r.met_by(v)));
            if fits {
                let subset: Vec<_> = open.iter().map(|(p, _)| *p).collect();
                match self.transact(&mut idle.client, job, &subset).await {
                    Ok(outcomes) => {
                        attempt.delivered(&open, outcomes);
                        attempt.verdict = idle.verdict.clone();
                        open.clear();
                        if to_seal.is_empty() {
                            self.release(&domain, idle);
                            return attempt;
                        }
                        self.deliver_sealed(job, to_seal, Some(idle), "", &mut attempt)
                            .await;
                        return attempt;
                    }
                    // The cached connection died before the peer took anything
                    // (it timed out or restarted): start over on a new one.
                    Err((e, false)) => {
                        tracing::debug!(%domain, "cached connection unusable: {e}")
                    }
                    Err((e, true)) => {
                        let outcome = deferred_by(&idle.client, &e);
                        attempt.all(&open, outcome, idle.verdict.take());
                        open.clear();
                        if to_seal.is_empty() {
                            return attempt;
                        }
                    }
                }
            } else {
                self.release(&domain, idle);
            }
        }

        let route = match self.route(&domain).await {
            Ok(r) => r,
            Err(f) => {
                let detail = Detail::local(f.status, f.text);
                let outcome = if f.permanent {
                    Outcome::Failed(detail)
                } else {
                    Outcome::Deferred(detail)
                };
                attempt.all(&open, outcome.clone(), None);
                for (p, req, reason) in &to_seal {
                    attempt.push_decision(
                        p.index,
                        req,
                        Action::Seal {
                            reason: reason.clone(),
                        },
                    );
                    attempt.outcomes.push((p.index, outcome.clone()));
                }
                return attempt;
            }
        };

        let mut last_error = format!("no mail exchanger of {domain} could be reached");
        // The best verdict of a host that could be used, and every verdict seen.
        let mut best: Option<Verdict> = None;
        let mut seen: Vec<(Verdict, i64)> = Vec::new();
        // The best usable connection that carried nothing: it may carry
        // sealed messages, which need no particular level.
        let mut spare: Option<Idle> = None;
        'hosts: for plan in &route.hosts {
            if open.is_empty() && (to_seal.is_empty() || spare.is_some()) {
                break;
            }
            let candidate = match plan {
                HostPlan::Use(c) => c,
                HostPlan::Skip { target, reason } => {
                    last_error = format!("{}: {reason}", target.host);
                    tracing::info!(%domain, "{last_error}");
                    continue;
                }
            };
            for &ip in &candidate.addresses {
                let mut session = match self.open(&domain, candidate, ip).await {
                    Ok(s) => s,
                    Err(e) => {
                        last_error = format!("{}[{ip}]: {e}", candidate.target.host);
                        tracing::info!(%domain, "{last_error}");
                        continue;
                    }
                };
                let Some(verdict) = session.verdict.clone() else {
                    continue;
                };
                seen.push((verdict.clone(), session.valid_until));
                if let Err(reason) = candidate.acceptable(&verdict) {
                    // Never downgrade (RFC 7672 §2.2, RFC 8461 §5): this host
                    // is not used; another may be, or the message waits.
                    last_error = format!("{}[{ip}]: {reason}", candidate.target.host);
                    tracing::warn!(%domain, "not delivering: {last_error}");
                    tokio::spawn(session.client.quit());
                    continue;
                }
                if best.as_ref().is_none_or(|b| verdict.level > b.level) {
                    best = Some(verdict.clone());
                }
                let (now_ok, later): (Vec<_>, Vec<_>) =
                    open.into_iter().partition(|(_, r)| r.met_by(&verdict));
                open = later;
                if now_ok.is_empty() {
                    tracing::info!(
                        %domain,
                        host = %candidate.target.host,
                        level = ?verdict.level,
                        "host below what the messages need; trying the next"
                    );
                    keep_better(&mut spare, session);
                    continue 'hosts;
                }
                let subset: Vec<_> = now_ok.iter().map(|(p, _)| *p).collect();
                match self.transact(&mut session.client, job, &subset).await {
                    Ok(outcomes) => {
                        attempt.delivered(&now_ok, outcomes);
                        attempt.verdict = Some(verdict);
                        keep_better(&mut spare, session);
                    }
                    Err((e, _)) => {
                        let outcome = deferred_by(&session.client, &e);
                        attempt.all(&now_ok, outcome, Some(verdict));
                    }
                }
                continue 'hosts;
            }
        }

        let history = match seen.iter().map(|(v, _)| v).max_by_key(|v| v.level) {
            Some(top) => self.memory.observe(&domain, top, &seen, now),
            None => self.memory.history(&domain),
        };
        for (p, req) in open {
            match req.decide(best.as_ref(), history, now) {
                Action::Seal { reason } => to_seal.push((p, req, reason)),
                action => attempt.decide(p.index, &req, action, &last_error),
            }
        }
        if attempt.verdict.is_none() {
            attempt.verdict = best.or_else(|| seen.pop().map(|(v, _)| v));
        }
        if to_seal.is_empty() {
            if let Some(s) = spare {
                self.release(&domain, s);
            }
        } else {
            self.deliver_sealed(job, to_seal, spare, &last_error, &mut attempt)
                .await;
        }
        attempt
    }

    /// `sealgate check`: every MX host of a domain qualified on a real
    /// connection (EHLO, STARTTLS with the delivery verifier, QUIT).
    pub async fn check(&self, domain: &str) -> CheckReport {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let route = match self.route(&domain).await {
            Ok(r) => r,
            Err(f) => {
                return CheckReport {
                    domain,
                    level: Level::Plaintext,
                    mx: Vec::new(),
                    error: Some(f.text),
                };
            }
        };
        let mut reports = Vec::new();
        for plan in &route.hosts {
            let c = match plan {
                HostPlan::Skip { target, reason } => {
                    reports.push(HostReport {
                        host: target.host.clone(),
                        preference: target.preference,
                        address: None,
                        level: Level::Plaintext,
                        checks: Vec::new(),
                        tls: None,
                        error: Some(reason.clone()),
                    });
                    continue;
                }
                HostPlan::Use(c) => c,
            };
            let mut report = HostReport {
                host: c.target.host.clone(),
                preference: c.target.preference,
                address: None,
                level: Level::Plaintext,
                checks: Vec::new(),
                tls: None,
                error: None,
            };
            for &ip in &c.addresses {
                report.address = Some(ip.to_string());
                match self.open(&domain, c, ip).await {
                    Ok(session) => {
                        if let Some(v) = &session.verdict {
                            report.level = v.level;
                            report.checks = v.checks.clone();
                            report.tls = v.tls.clone();
                            report.error = c.acceptable(v).err();
                        }
                        session.client.quit().await;
                        break;
                    }
                    Err(e) => report.error = Some(e.to_string()),
                }
            }
            reports.push(report);
        }
        let level = reports
            .iter()
            .filter(|r| r.error.is_none())
            .map(|r| r.level)
            .max()
            .unwrap_or(Level::Plaintext);
        CheckReport {
            domain,
            level,
            mx: reports,
            error: None,
        }
    }

    /// The hosts to try for a domain, best first, with their requirements.
    async fn route(&self, domain: &str) -> Result<Route, RouteFailure> {
        if let Some(route) = self.config.routes.iter().find(|r| r.domain.matches(domain)) {
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
                    target,
                    reason: e.to_string(),
                },
            };
            return Ok(Route { hosts: vec![plan] });
        }
        let port = self.config.outbound.port;
        let mx = match self.dns.mx(domain).await {
            Ok(mx) => mx,
            Err(DnsError::NoSuchDomain { name, .. }) => {
                return Err(RouteFailure {
                    permanent: true,
                    status: [5, 1, 2],
                    text: format!("domain {name} does not exist"),
                });
            }
            Err(e @ DnsError::Bogus { .. }) => {
                return Err(RouteFailure {
                    permanent: false,
                    status: [4, 7, 5],
                    text: format!("{e}: not used"),
                });
            }
            Err(e) => {
                return Err(RouteFailure {
                    permanent: false,
                    status: [4, 4, 3],
                    text: e.to_string(),
                });
            }
        };
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
                    permanent: true,
                    status: [5, 1, 10],
                    text: format!("{domain} accepts no mail (null MX, RFC 7505)"),
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
        // Among hosts of equal preference (RFC 5321 §5.1 leaves their order
        // open), try first the one that reached the best level lately.
        let now = chrono::Utc::now().timestamp();
        hosts.sort_by_cached_key(|plan| {
            let t = plan.target();
            let cached = self.memory.cached_level(domain, &t.host, now);
            (t.preference, std::cmp::Reverse(cached))
        });
        Ok(Route { hosts })
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
                    target,
                    reason: e.to_string(),
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
                    Err(e) => {
                        return HostPlan::Skip {
                            target,
                            reason: format!(
                                "{e}: host not used (RFC 7672 §2.2.1, TLSA lookup must succeed)"
                            ),
                        };
                    }
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
        let dnssec = match security {
            Security::Secure => {
                Check::new(CheckName::Dnssec, Status::Pass, dnssec_parts.join(", "))
            }
            Security::Insecure => Check::new(
                CheckName::Dnssec,
                Status::Fail,
                format!("zone unsigned: {}", dnssec_parts.join(", ")),
            ),
            Security::Bogus => Check::new(CheckName::Dnssec, Status::Fail, dnssec_parts.join(", ")),
            Security::Indeterminate => {
                Check::new(CheckName::Dnssec, Status::Error, dnssec_parts.join(", "))
            }
        };
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
                    return HostPlan::Skip {
                        target,
                        reason: format!(
                            "MTA-STS enforce: {host} does not match the policy's mx patterns {} (RFC 8461 §4.1): host not used",
                            p.mx.join(", ")
                        ),
                    };
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

    /// Connects to one address and secures the session as far as the host's
    /// rules require (mandatory TLS) or the peer allows (opportunistic).
    async fn open(&self, domain: &str, c: &Candidate, ip: IpAddr) -> Result<Idle, ClientError> {
        let target = &c.target;
        let addr = SocketAddr::new(ip, target.port);
        let helo = self.config.helo_name();
        let client = SmtpClient::connect(addr, &target.host, helo, self.timeouts()).await?;
        let (verifier, evidence) =
            DeliveryVerifier::new(self.roots.clone(), c.names.clone(), c.tlsa.clone());
        let connector = tokio_rustls::TlsConnector::from(Arc::new(verifier::client_config(
            verifier,
            self.config.tls.profile,
        )));
        let client = if client.caps.starttls {
            let name = ServerName::try_from(target.host.clone())
                .unwrap_or_else(|_| ServerName::IpAddress(ip.into()));
            match client.starttls(&connector, name).await {
                Ok(c) => c,
                Err((e, refused)) => {
                    // A failed handshake still gets a verdict that names
                    // what the peer offers (docs/tls-profiles.md).
                    let offer = match (&e, refused) {
                        (ClientError::Tls(_), None) => Some(self.probe(addr, &target.host).await),
                        _ => None,
                    };
                    let failure = match &offer {
                        Some(Ok(o)) => format!("{e}; the peer offers {}", o.describe()),
                        Some(Err(why)) => format!("{e}; probe: {why}"),
                        None => e.to_string(),
                    };
                    if let Some(why) = &c.require_tls {
                        return Err(ClientError::Tls(format!(
                            "{failure}; TLS is mandatory for this host ({why}), no plaintext fallback"
                        )));
                    }
                    // Opportunistic TLS (RFC 7435 §3): a failed handshake
                    // falls back to a new plaintext session, as Postfix's
                    // "may" level does. The policy decides whether that
                    // transport is good enough for a given message.
                    tracing::info!(%domain, host = %target.host, "STARTTLS failed, continuing without TLS: {failure}");
                    let mut c =
                        SmtpClient::connect(addr, &target.host, helo, self.timeouts()).await?;
                    c.tls_failure = Some(failure);
                    c.tls_offer = offer.and_then(Result::ok);
                    c
                }
            }
        } else if let Some(why) = &c.require_tls {
            tokio::spawn(client.quit());
            return Err(ClientError::Tls(format!(
                "STARTTLS not offered, but TLS is mandatory for this host ({why})"
            )));
        } else {
            client
        };
        let evidence = evidence
            .lock()
            .ok()
            .and_then(|mut e| e.take())
            .filter(|_| client.tls.is_some());
        let mut client = client;
        if let (Some(facts), Some(e)) = (client.tls.as_mut(), &evidence) {
            facts.ocsp_stapled = !e.staple.is_empty();
        }
        let (revocation, next_update) = self.revocation_check(evidence.as_ref()).await;
        let now = chrono::Utc::now().timestamp();
        let cache_max = self.config.policy.verdict_cache_max.as_secs() as i64;
        let valid_until = (now + cache_max)
            .min(now + i64::from(c.ttl))
            .min(next_update.unwrap_or(i64::MAX));
        let verdict = verdict_of(
            domain,
            &client,
            c,
            evidence,
            revocation,
            self.config.tls.profile,
        );
        Ok(Idle {
            client,
            since: Instant::now(),
            verdict: Some(verdict),
            valid_until,
        })
    }

    /// A second connection that asks the peer what it offers
    /// (qualify::probe). Bounded tighter than a command: it only informs
    /// the verdict, and the attempt waits for it.
    async fn probe(&self, addr: SocketAddr, host: &str) -> Result<Offer, String> {
        const PROBE_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);
        let mut timeouts = self.timeouts();
        timeouts.connect = timeouts.connect.min(PROBE_LIMIT);
        timeouts.command = timeouts.command.min(PROBE_LIMIT);
        let helo = self.config.helo_name();
        let client = SmtpClient::connect(addr, host, helo, timeouts)
            .await
            .map_err(|e| e.to_string())?;
        let tcp = client.starttls_raw().await.map_err(|e| e.to_string())?;
        probe::probe(tcp, host, timeouts.command).await
    }

    /// The `revocation` check, for a peer that PKIX authenticated, with
    /// the answer's nextUpdate if it has one.
    async fn revocation_check(&self, evidence: Option<&CertEvidence>) -> (Check, Option<i64>) {
        let na = |why: &str| {
            (
                Check::new(CheckName::Revocation, Status::NotApplicable, why),
                None,
            )
        };
        let Some(e) = evidence else {
            return na("no TLS session");
        };
        if e.pkix.status == Status::Pass {
            let now = chrono::Utc::now().timestamp();
            return self
                .revocation
                .check(&e.chain, &e.staple, &self.roots, now)
                .await;
        }
        match &e.dane {
            Some(d) if d.status == Status::Pass => na(
                "authenticated by DANE: the DNSSEC-signed TLSA record vouches for the key (RFC 7672 §3.1)",
            ),
            _ => na("certificate not authenticated by PKIX"),
        }
    }

    /// Runs the transaction. On error, the flag says whether the peer may
    /// have taken anything (then the connection must not be retried blindly).
    async fn transact(
        &self,
        client: &mut SmtpClient,
        job: &LoadedJob,
        pending: &[&PendingRecipient],
    ) -> Result<Vec<(u32, Outcome)>, (ClientError, bool)> {
        let recipients: Vec<_> = pending.iter().map(|p| &p.recipient).collect();
        if job.envelope.smtputf8 && !client.caps.smtputf8 && needs_smtputf8(job, pending) {
            // RFC 6531 §3.4: non-ASCII addresses cannot go to a server
            // without SMTPUTF8; downgrading them is not ours to do.
            let remote = format!("{}[{}]", client.host, client.peer.ip());
            let detail = Detail {
                status: [5, 6, 7],
                remote: Some(remote.clone()),
                reply: None,
                text: format!("{remote} does not support SMTPUTF8, which this message needs"),
            };
            return Ok(pending
                .iter()
                .map(|p| (p.index, Outcome::Failed(detail.clone())))
                .collect());
        }
        let before = client.replies_read();
        let replies = match client.send(&job.envelope, &recipients, &job.body).await {
            Ok(r) => r,
            Err(e) => {
                let progressed = client.replies_read() > before;
                return Err((e, progressed));
            }
        };
        let remote = format!("{}[{}]", client.host, client.peer.ip());
        Ok(pending
            .iter()
            .zip(replies.per_recipient)
            .map(|(p, reply)| {
                let detail = Detail::from_reply(&remote, &reply);
                let outcome = if reply.is_positive() {
                    Outcome::Delivered(detail)
                } else if reply.is_permanent() {
                    Outcome::Failed(detail)
                } else {
                    Outcome::Deferred(detail)
                };
                (p.index, outcome)
            })
            .collect())
    }

    fn take_idle(&self, domain: &str) -> Option<Idle> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(domain)?;
        let timeout = self.config.outbound.idle_timeout;
        while let Some(entry) = list.pop() {
            if entry.since.elapsed() < timeout {
                return Some(entry);
            }
            tokio::spawn(entry.client.quit());
        }
        None
    }

    fn release(&self, domain: &str, mut idle: Idle) {
        if idle.client.transactions >= self.config.outbound.max_messages_per_connection
            || self.config.outbound.idle_timeout.is_zero()
        {
            tokio::spawn(idle.client.quit());
            return;
        }
        idle.since = Instant::now();
        if let Ok(mut map) = self.idle.lock() {
            map.entry(domain.to_string()).or_default().push(idle);
        }
    }

    /// Closes connections idle for longer than the idle timeout; called periodically.
    pub fn close_idle(&self, all: bool) {
        let timeout = self.config.outbound.idle_timeout;
        let mut expired = Vec::new();
        if let Ok(mut map) = self.idle.lock() {
            for list in map.values_mut() {
                let (keep, old): (Vec<_>, Vec<_>) = list
                    .drain(..)
                    .partition(|i| !all && i.since.elapsed() < timeout);
                *list = keep;
                expired.extend(old);
            }
            map.retain(|_, l| !l.is_empty());
        }
        for idle in expired {
            tokio::spawn(idle.client.quit());
        }
    }
}

/// Whether the envelope has a non-ASCII address.
fn needs_smtputf8(job: &LoadedJob, pending: &[&PendingRecipient]) -> bool {
    !job.envelope.sender.is_ascii() || pending.iter().any(|p| !p.recipient.address.is_ascii())
}

fn deferred_by(client: &SmtpClient, e: &ClientError) -> Outcome {
    let remote = format!("{}[{}]", client.host, client.peer.ip());
    Outcome::Deferred(Detail {
        status: [4, 4, 2],
        remote: Some(remote.clone()),
        reply: None,
        text: format!("{remote}: {e}"),
    })
}

/// The verdict of a connection: what was negotiated, and what the
/// certificate evidence and the host's DNS say.
fn verdict_of(
    domain: &str,
    client: &SmtpClient,
    c: &Candidate,
    evidence: Option<CertEvidence>,
    revocation: Check,
    profile: Profile,
) -> Verdict {
    let now = chrono::Utc::now().timestamp();
    let mut checks = vec![c.dnssec.clone()];
    match (&client.tls, &client.tls_failure) {
        (Some(facts), _) => {
            checks.push(Check::new(
                CheckName::Starttls,
                Status::Pass,
                "STARTTLS negotiated",
            ));
            checks.extend(profile.checks(facts));
        }
        (None, Some(failure)) => {
            checks.push(Check::new(
                CheckName::Starttls,
                Status::Fail,
                format!("STARTTLS offered but failed: {failure}"),
            ));
            if let Some(offer) = &client.tls_offer {
                let facts = offer.facts();
                checks.push(profile.protocol(&facts.version));
                checks.push(profile.cipher(&facts.cipher_suite));
                checks.push(profile.key_size(facts.peer_key.as_ref()));
            }
        }
        (None, None) => checks.push(Check::new(
            CheckName::Starttls,
            Status::Fail,
            "STARTTLS not offered",
        )),
    }
    match &evidence {
        Some(e) => {
            checks.push(e.dane.clone().unwrap_or_else(|| c.dane.clone()));
            checks.push(e.pkix.clone());
            checks.push(e.hostname.clone());
        }
        None => {
            checks.push(c.dane.clone());
            for name in [CheckName::Pkix, CheckName::Hostname] {
                checks.push(Check::new(name, Status::NotApplicable, "no TLS session"));
            }
        }
    }
    checks.push(revocation);
    checks.push(sts_check(c, evidence.as_ref()));
    Verdict::new(
        domain,
        &client.host,
        &client.peer.ip().to_string(),
        checks,
        client.tls.clone(),
        now,
    )
}

/// The `mta_sts` check: did this connection keep the policy's promise?
fn sts_check(c: &Candidate, evidence: Option<&CertEvidence>) -> Check {
    let Some(policy) = &c.sts else {
        return Check::new(
            CheckName::MtaSts,
            Status::NotApplicable,
            c.sts_detail.clone(),
        );
    };
    let mut failures = Vec::new();
    if !policy.matches(&c.target.host) {
        failures.push(format!("{} is not in the policy's mx list", c.target.host));
    }
    match evidence {
        None => failures.push("no TLS session".to_string()),
        Some(e) => {
            for check in [&e.pkix, &e.hostname] {
                if check.status != Status::Pass {
                    failures.push(check.detail.clone());
                }
            }
        }
    }
    let mode = policy.mode.name();
    if failures.is_empty() {
        Check::new(
            CheckName::MtaSts,
            Status::Pass,
            format!(
                "policy id {} mode {mode}: MX matches, certificate valid ({})",
                policy.id, c.sts_detail
            ),
        )
    } else {
        Check::new(
            CheckName::MtaSts,
            Status::Fail,
            format!(
                "policy id {} mode {mode}: {}{}",
                policy.id,
                failures.join("; "),
                if policy.mode == Mode::Testing {
                    " (testing mode: reported, delivered anyway)"
                } else {
                    ""
                }
            ),
        )
    }
}

impl Candidate {
    /// Whether a connection may carry mail to this host: DANE and MTA-STS
    /// enforce are promises by the domain, never downgraded.
    fn acceptable(&self, verdict: &Verdict) -> Result<(), String> {
        let check = |name| verdict.checks.iter().find(|c| c.name == name);
        if let Some(c) = check(CheckName::Revocation)
            && c.status == Status::Fail
        {
            return Err(format!(
                "the certificate is revoked: {} (never delivered over a revoked certificate)",
                c.detail
            ));
        }
        if !self.tlsa.is_empty() {
            match check(CheckName::Dane) {
                Some(c) if c.status == Status::Pass => {}
                Some(c) => {
                    return Err(format!(
                        "DANE authentication failed: {} (RFC 7672 §2.2: not delivered)",
                        c.detail
                    ));
                }
                None => return Err("DANE authentication did not run".into()),
            }
        }
        if let Some(p) = &self.sts
            && p.mode == Mode::Enforce
            && let Some(c) = check(CheckName::MtaSts)
            && c.status != Status::Pass
        {
            return Err(format!(
                "MTA-STS enforce: {} (RFC 8461 §5: not delivered)",
                c.detail
            ));
        }
        Ok(())
    }
}
