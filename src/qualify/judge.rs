//! The [`Qualifier`]: the DNS, the trust roots, MTA-STS and revocation
//! checking together, and the one place a connection's evidence becomes a
//! [`Verdict`] with its refusals.
//!
//! The outbound side connects and upgrades with the verifier the
//! qualifier gives it ([`Qualifier::verifier`]), then hands over what the
//! upgrade came to ([`TlsOutcome`]) and the certificate evidence; the
//! qualifier checks revocation, judges the negotiated parameters by the BSI
//! profile and decides whether the host may carry mail at all.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use super::bsi::Profile;
use super::mta_sts::{Mode, MtaSts, MtaStsError};
use super::pkix::{Roots, RootsError};
use super::revocation::{Revocation, RevocationError};
use super::route::Candidate;
use super::verifier::{self, CertEvidence, DeliveryVerifier};
use super::{Check, CheckName, Refusal, RefusalReason, Status, TlsOutcome, Verdict};
use crate::config::Config;
use crate::dns::Dns;

/// The parts the qualifier could not be built from.
#[derive(Debug, thiserror::Error)]
pub enum QualifyError {
    #[error(transparent)]
    Roots(#[from] RootsError),
    #[error("MTA-STS: {0}")]
    MtaSts(#[from] MtaStsError),
    #[error("revocation: {0}")]
    Revocation(#[from] RevocationError),
}

/// Turns candidate hosts and their connections into verdicts.
pub struct Qualifier {
    pub(super) config: Arc<Config>,
    /// `[[route]]`, replaced as a whole by a reload (SIGHUP).
    pub(super) routes: std::sync::RwLock<Arc<Vec<crate::config::Route>>>,
    pub(super) dns: Dns,
    roots: Roots,
    /// Trust for recipient S/MIME certificates (`[smime] roots`).
    smime_roots: Roots,
    pub(super) mta_sts: Option<MtaSts>,
    revocation: Revocation,
}

/// A verdict, and until when it may be remembered.
#[derive(Debug, Clone)]
pub struct Judged {
    pub verdict: Verdict,
    /// Unix seconds: the DNS TTLs, the revocation answer's nextUpdate and
    /// `policy.verdict_cache_max`, whichever ends first.
    pub valid_until: i64,
}

/// What the verifier gathers during the handshake it is installed in.
pub type EvidenceSlot = Arc<Mutex<Option<CertEvidence>>>;

impl Qualifier {
    /// `tables`: where MTA-STS policies are cached across restarts (none: memory only).
    pub fn new(
        config: Arc<Config>,
        dns: Dns,
        tables: Option<crate::tables::Tables>,
    ) -> Result<Qualifier, QualifyError> {
        let roots = Roots::load(&config.outbound.pkix_roots)?;
        let mta_sts = if config.mta_sts.enabled {
            let sts_roots = match &config.mta_sts.roots {
                Some(r) => Roots::load(r)?,
                None => roots.clone(),
            };
            Some(MtaSts::new(
                &config.mta_sts,
                &sts_roots,
                dns.clone(),
                tables,
            )?)
        } else {
            None
        };
        let revocation = Revocation::new(&config.revocation, dns.clone())?;
        let smime_roots = match &config.smime.roots {
            Some(r) => Roots::load(r)?,
            None => roots.clone(),
        };
        Ok(Qualifier {
            smime_roots,
            routes: std::sync::RwLock::new(Arc::new(config.routes.clone())),
            config,
            dns,
            roots,
            mta_sts,
            revocation,
        })
    }

    /// New static routes, for the next route lookup on.
    pub fn set_routes(&self, routes: Vec<crate::config::Route>) {
        *self.routes.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(routes);
    }

    pub fn dns(&self) -> &Dns {
        &self.dns
    }

    pub fn roots(&self) -> &Roots {
        &self.roots
    }

    pub fn smime_roots(&self) -> &Roots {
        &self.smime_roots
    }

    pub(super) fn revocation(&self) -> &Revocation {
        &self.revocation
    }

    /// The TLS client configuration for a connection to this host, whose
    /// verifier records the `pkix`, `hostname` and `dane` evidence.
    pub fn verifier(&self, c: &Candidate) -> (rustls::ClientConfig, EvidenceSlot) {
        let (verifier, evidence) =
            DeliveryVerifier::new(self.roots.clone(), c.names.clone(), c.tlsa.clone());
        (
            verifier::client_config(verifier, self.config.tls.profile),
            evidence,
        )
    }

    /// The verdict of a connection to `ip` of candidate `c`: what its TLS
    /// came to, the certificate evidence of that handshake, revocation,
    /// the BSI profile, and the refusals the domain's promises demand.
    pub async fn judge(
        &self,
        domain: &str,
        c: &Candidate,
        ip: IpAddr,
        tls: &TlsOutcome,
        evidence: Option<CertEvidence>,
    ) -> Judged {
        let evidence = evidence.filter(|_| tls.facts().is_some());
        let (revocation, next_update) = self.revocation_check(evidence.as_ref()).await;
        let now = chrono::Utc::now().timestamp();
        let cache_max = self.config.policy.verdict_cache_max.as_secs() as i64;
        let valid_until = (now + cache_max)
            .min(now + i64::from(c.ttl))
            .min(next_update.unwrap_or(i64::MAX));
        let mut facts = tls.facts().cloned();
        if let (Some(f), Some(e)) = (facts.as_mut(), &evidence) {
            f.ocsp_stapled = !e.staple.is_empty();
        }
        let checks = connection_checks(
            c,
            tls,
            evidence.as_ref(),
            revocation,
            self.config.tls.profile,
        );
        let refusals = refusals(c, tls, &checks);
        Judged {
            verdict: Verdict::new(
                (domain, &c.target.host, &ip.to_string()),
                checks,
                refusals,
                facts,
                now,
            ),
            valid_until,
        }
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
}

/// Every check of a connection, in the stable order of the outputs.
pub fn connection_checks(
    c: &Candidate,
    tls: &TlsOutcome,
    evidence: Option<&CertEvidence>,
    revocation: Check,
    profile: Profile,
) -> Vec<Check> {
    let mut checks = vec![c.dnssec.clone()];
    match tls {
        TlsOutcome::Negotiated(facts) => {
            checks.push(Check::new(
                CheckName::Starttls,
                Status::Pass,
                "STARTTLS negotiated",
            ));
            checks.extend(profile.checks(facts));
        }
        TlsOutcome::Failed { error, offer } => {
            let failure = match offer {
                Some(Ok(o)) => format!("{error}; the peer offers {}", o.describe()),
                Some(Err(why)) => format!("{error}; probe: {why}"),
                None => error.clone(),
            };
            checks.push(Check::new(
                CheckName::Starttls,
                Status::Fail,
                format!("STARTTLS offered but failed: {failure}"),
            ));
            if let Some(Ok(offer)) = offer {
                let facts = offer.facts();
                checks.push(profile.protocol(&facts.version));
                checks.push(profile.cipher(&facts.cipher_suite));
                checks.push(profile.key_size(facts.peer_key.as_ref()));
            }
        }
        TlsOutcome::NotOffered => checks.push(Check::new(
            CheckName::Starttls,
            Status::Fail,
            "STARTTLS not offered",
        )),
    }
    match evidence {
        Some(e) => {
            checks.push(e.dane.clone().unwrap_or_else(|| c.dane.clone()));
            checks.push(e.pkix.clone());
            checks.push(e.hostname.clone());
        }
        None => {
            checks.push(if c.tlsa.is_empty() {
                c.dane.clone()
            } else {
                Check::new(
                    CheckName::Dane,
                    Status::Fail,
                    "usable TLSA records published, but no TLS session to match them against",
                )
            });
            for name in [CheckName::Pkix, CheckName::Hostname] {
                checks.push(Check::new(name, Status::NotApplicable, "no TLS session"));
            }
        }
    }
    checks.push(revocation);
    checks.push(sts_check(c, evidence));
    checks
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

/// Whether a connection may carry mail to this host: DANE and MTA-STS
/// enforce are promises by the domain, never downgraded (RFC 7672 §2.2,
/// RFC 8461 §5), and a revoked certificate authenticates nothing.
pub fn refusals(c: &Candidate, tls: &TlsOutcome, checks: &[Check]) -> Vec<Refusal> {
    let check = |name| checks.iter().find(|c| c.name == name);
    let mut refusals = Vec::new();
    if tls.facts().is_none()
        && let Some(why) = &c.require_tls
    {
        let what = match tls {
            TlsOutcome::NotOffered => "STARTTLS not offered",
            _ => "the TLS handshake failed",
        };
        refusals.push(Refusal::new(
            RefusalReason::TlsRequired,
            format!("{what}, but TLS is mandatory for this host ({why})"),
        ));
    }
    if let Some(r) = check(CheckName::Revocation)
        && r.status == Status::Fail
    {
        refusals.push(Refusal::new(RefusalReason::Revoked, r.detail.clone()));
    }
    if !c.tlsa.is_empty() {
        match check(CheckName::Dane) {
            Some(d) if d.status == Status::Pass => {}
            Some(d) => refusals.push(Refusal::new(RefusalReason::DaneFailed, d.detail.clone())),
            None => refusals.push(Refusal::new(
                RefusalReason::DaneFailed,
                "DANE authentication did not run",
            )),
        }
    }
    if let Some(p) = &c.sts
        && p.mode == Mode::Enforce
        && let Some(s) = check(CheckName::MtaSts)
        && s.status != Status::Pass
    {
        refusals.push(Refusal::new(RefusalReason::MtaStsFailed, s.detail.clone()));
    }
    refusals
}
