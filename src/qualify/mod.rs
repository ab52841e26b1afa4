//! Turns a candidate host into a [`Verdict`]: what its transport is worth,
//! whether it may carry mail, and why not.
//!
//! Every verdict rule lives here. [`route`] plans the hosts of a domain
//! (static route or MX, DNSSEC, TLSA applicability, MTA-STS) before any
//! connection; [`Qualifier::judge`] turns the handshake of the very
//! connection the message will travel on (DESIGN.md: "Qualify on the
//! connection you send on") into a verdict. Its observed [`Level`] is
//! always computed from the [`Check`]s, never set by hand, so "why not
//! qualified?" always has an answer; its [`Refusal`]s say why a host that
//! reached some level may still not carry mail (DANE, MTA-STS enforce,
//! revocation), each backed by a failing check.
//!
//! Submodules: [`route`] (host planning), [`judge`] (the [`Qualifier`] and
//! the verdict of a connection), [`dane`] (TLSA matching), [`pkix`] (chain
//! and host name), [`mta_sts`] (policy discovery), [`verifier`] (the rustls
//! verifier of the delivery connection that gathers their evidence),
//! [`revocation`] (OCSP and CRL), [`bsi`] (the TLS profile the negotiated
//! parameters are judged by), [`probe`] (what a peer offers when no
//! handshake is possible).

pub mod bsi;
pub mod dane;
pub mod facts;
pub mod judge;
pub mod mta_sts;
pub mod pkix;
pub mod probe;
pub mod recipient;
pub mod report;
pub mod revocation;
pub mod route;
#[cfg(test)]
mod table;
pub mod verifier;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use judge::Qualifier;

/// How well a transport is secured, in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// No TLS could be negotiated.
    Plaintext,
    /// TLS 1.2 or later, peer not authenticated.
    Encrypted,
    /// Peer authenticated by DANE or by PKIX with its MX host name.
    Authenticated,
    /// Authenticated, DNSSEC-secure, revocation known good, BSI profile met.
    Qualified,
}

impl Level {
    pub const ALL: [Level; 4] = [
        Level::Plaintext,
        Level::Encrypted,
        Level::Authenticated,
        Level::Qualified,
    ];

    /// The stable name, as in the JSON, the log and the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Level::Plaintext => "plaintext",
            Level::Encrypted => "encrypted",
            Level::Authenticated => "authenticated",
            Level::Qualified => "qualified",
        }
    }

    /// Its place in the order (0 plaintext … 3 qualified), as the
    /// cluster's database keeps it so that SQL can compare levels.
    pub fn rank(self) -> i16 {
        self as i16
    }

    pub fn from_rank(rank: i16) -> Option<Level> {
        Level::ALL.get(usize::try_from(rank).ok()?).copied()
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// A word that is not a level.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a level (plaintext, encrypted, authenticated, qualified)")]
pub struct NotALevel(pub String);

impl FromStr for Level {
    type Err = NotALevel;
    fn from_str(s: &str) -> Result<Level, NotALevel> {
        let word = s.trim().to_ascii_lowercase();
        Level::ALL
            .into_iter()
            .find(|l| l.name() == word)
            .ok_or_else(|| NotALevel(s.to_string()))
    }
}

/// Names of checks; stable, because auditors and scripts read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckName {
    Dnssec,
    Starttls,
    Protocol,
    Cipher,
    KeyExchange,
    KeySize,
    Dane,
    MtaSts,
    Pkix,
    Hostname,
    Revocation,
}

impl CheckName {
    pub fn name(self) -> &'static str {
        match self {
            CheckName::Dnssec => "dnssec",
            CheckName::Starttls => "starttls",
            CheckName::Protocol => "protocol",
            CheckName::Cipher => "cipher",
            CheckName::KeyExchange => "key_exchange",
            CheckName::KeySize => "key_size",
            CheckName::Dane => "dane",
            CheckName::MtaSts => "mta_sts",
            CheckName::Pkix => "pkix",
            CheckName::Hostname => "hostname",
            CheckName::Revocation => "revocation",
        }
    }
}

impl fmt::Display for CheckName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    Fail,
    NotApplicable,
    /// The check could not be carried out (timeout, SERVFAIL, unreachable responder).
    Error,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::NotApplicable => "not_applicable",
            Status::Error => "error",
        }
    }

    /// Fail or error: the check stands between the evidence and a level.
    pub fn is_failing(self) -> bool {
        matches!(self, Status::Fail | Status::Error)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// One check with its evidence in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: CheckName,
    pub status: Status,
    pub detail: String,
}

impl Check {
    pub fn new(name: CheckName, status: Status, detail: impl Into<String>) -> Check {
        Check {
            name,
            status,
            detail: detail.into(),
        }
    }
}

/// One certificate of the peer's chain, as evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    /// SHA-256 of the DER encoding, upper-case hex.
    pub sha256: String,
    /// RFC 3339.
    pub not_after: String,
}

/// The public key of the peer's end-entity certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerKey {
    /// `RSA`, `ECDSA P-256`, `Ed25519`, …
    pub algorithm: String,
    pub bits: u32,
}

impl fmt::Display for PeerKey {
    /// The key named once: "RSA 3072 bits", "ECDSA P-256, 256 bits".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.algorithm == "RSA" {
            write!(f, "RSA {} bits", self.bits)
        } else {
            write!(f, "{}, {} bits", self.algorithm, self.bits)
        }
    }
}

/// What was negotiated on a TLS connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsFacts {
    /// `TLSv1.3`, `TLSv1.2`.
    pub version: String,
    /// IANA-style name as rustls spells it, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher_suite: String,
    pub kx_group: Option<String>,
    pub peer_key: Option<PeerKey>,
    pub chain: Vec<CertInfo>,
    pub ocsp_stapled: bool,
}

/// How the TLS upgrade of a delivery connection went: one value, where
/// the SMTP client used to keep three.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsOutcome {
    /// The handshake completed: what was negotiated.
    Negotiated(TlsFacts),
    /// STARTTLS was offered but no handshake completed; `offer` is what a
    /// probe found the peer offers, when the probe got that far.
    Failed {
        error: String,
        offer: Option<Result<probe::Offer, probe::ProbeError>>,
    },
    /// The peer did not offer STARTTLS.
    NotOffered,
}

impl TlsOutcome {
    pub fn facts(&self) -> Option<&TlsFacts> {
        match self {
            TlsOutcome::Negotiated(f) => Some(f),
            _ => None,
        }
    }
}

/// Why a host may not carry mail although a connection may reach it:
/// promises the domain made (DANE, MTA-STS enforce) or a certificate known
/// bad. Each is backed by a failing check of the same verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    /// The certificate is revoked (OCSP or CRL): `revocation` fail.
    Revoked,
    /// Usable TLSA records, and DANE did not authenticate the peer
    /// (RFC 7672 §2.2): `dane` fail.
    DaneFailed,
    /// The TLSA lookup failed or was bogus (RFC 7672 §2.2.1): `dane` error.
    TlsaLookupFailed,
    /// The host's address lookup failed, was bogus, or found nothing: `dnssec`.
    AddressLookupFailed,
    /// Not in the mx list of an MTA-STS policy in enforce mode
    /// (RFC 8461 §4.1): `mta_sts` fail.
    NotInMtaStsPolicy,
    /// An MTA-STS policy in enforce mode was not met (RFC 8461 §5): `mta_sts` fail.
    MtaStsFailed,
    /// TLS is mandatory for the host (DANE or MTA-STS enforce) and did not
    /// come about: `starttls` fail.
    TlsRequired,
}

impl RefusalReason {
    /// The stable machine name.
    pub fn name(self) -> &'static str {
        match self {
            RefusalReason::Revoked => "revoked",
            RefusalReason::DaneFailed => "dane_failed",
            RefusalReason::TlsaLookupFailed => "tlsa_lookup_failed",
            RefusalReason::AddressLookupFailed => "address_lookup_failed",
            RefusalReason::NotInMtaStsPolicy => "not_in_mta_sts_policy",
            RefusalReason::MtaStsFailed => "mta_sts_failed",
            RefusalReason::TlsRequired => "tls_required",
        }
    }

    /// The rule, in words, with its source.
    pub fn rule(self) -> &'static str {
        match self {
            RefusalReason::Revoked => "never delivered over a revoked certificate",
            RefusalReason::DaneFailed => {
                "DANE authentication failed (RFC 7672 §2.2: not delivered)"
            }
            RefusalReason::TlsaLookupFailed => {
                "TLSA lookup must succeed (RFC 7672 §2.2.1): host not used"
            }
            RefusalReason::AddressLookupFailed => "no usable address for the host",
            RefusalReason::NotInMtaStsPolicy => {
                "MTA-STS enforce: host not in the policy's mx list (RFC 8461 §4.1): host not used"
            }
            RefusalReason::MtaStsFailed => "MTA-STS enforce (RFC 8461 §5: not delivered)",
            RefusalReason::TlsRequired => "TLS is mandatory for this host: no plaintext fallback",
        }
    }

    /// The check whose failure backs this refusal.
    pub fn check(self) -> CheckName {
        match self {
            RefusalReason::Revoked => CheckName::Revocation,
            RefusalReason::DaneFailed | RefusalReason::TlsaLookupFailed => CheckName::Dane,
            RefusalReason::AddressLookupFailed => CheckName::Dnssec,
            RefusalReason::NotInMtaStsPolicy | RefusalReason::MtaStsFailed => CheckName::MtaSts,
            RefusalReason::TlsRequired => CheckName::Starttls,
        }
    }
}

/// One reason a host may not carry mail, with the evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub reason: RefusalReason,
    pub detail: String,
}

impl Refusal {
    pub fn new(reason: RefusalReason, detail: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.rule(), self.detail)
    }
}

/// What one connection to one MX host is worth, with the evidence; or,
/// for a host that was not connected to, what its DNS already said.
///
/// Three things are kept apart: what was *observed* (`observed_level`,
/// from the checks), whether the host *may carry mail* (`refusals`; empty:
/// it may) and the level it may carry mail at (`level`, none when refused).
/// The decision for a message is the policy's, made from this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub domain: String,
    pub mx_host: String,
    /// Empty when no address was connected to.
    pub address: String,
    /// The level the connection reached, whether or not the host may be used.
    pub observed_level: Level,
    /// The level the host may carry mail at: `observed_level`, or none when refused.
    pub level: Option<Level>,
    pub checks: Vec<Check>,
    /// Why the host may not carry mail; empty when it may.
    #[serde(default)]
    pub refusals: Vec<Refusal>,
    pub tls: Option<TlsFacts>,
    /// The peer offered REQUIRETLS (RFC 8689) in its EHLO over TLS.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requiretls: bool,
    /// Unix seconds.
    pub at: i64,
}

impl Verdict {
    /// Builds a verdict whose levels follow from its checks and refusals.
    pub fn new(
        host: (&str, &str, &str),
        checks: Vec<Check>,
        refusals: Vec<Refusal>,
        tls: Option<TlsFacts>,
        at: i64,
    ) -> Verdict {
        let (domain, mx_host, address) = host;
        let observed_level = level_from_checks(&checks);
        Verdict {
            domain: domain.to_string(),
            mx_host: mx_host.to_string(),
            address: address.to_string(),
            observed_level,
            level: refusals.is_empty().then_some(observed_level),
            checks,
            refusals,
            tls,
            requiretls: false,
            at,
        }
    }

    /// Whether the host may carry mail.
    pub fn usable(&self) -> bool {
        self.refusals.is_empty()
    }

    /// The check of that name, if it ran.
    pub fn check(&self, name: CheckName) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// The checks that failed or could not run.
    pub fn failing(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.status.is_failing())
    }

    /// The checks that keep this verdict from the next level, as `name: detail`.
    pub fn shortfalls(&self) -> Vec<String> {
        self.failing()
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect()
    }
}

/// The level rules of DESIGN.md; a check that is absent has not passed.
pub fn level_from_checks(checks: &[Check]) -> Level {
    let status = |name| checks.iter().find(|c| c.name == name).map(|c| c.status);
    let passed = |name| status(name) == Some(Status::Pass);
    if !passed(CheckName::Starttls) || !passed(CheckName::Protocol) {
        return Level::Plaintext;
    }
    // Usable TLSA records make DANE the only authority (RFC 7672 §2.2): a
    // failing DANE match is not rescued by a PKIX-valid certificate.
    let dane = status(CheckName::Dane);
    let authenticated = match dane {
        Some(Status::Pass) => true,
        Some(Status::Fail) | Some(Status::Error) => false,
        _ => passed(CheckName::Pkix) && passed(CheckName::Hostname),
    };
    // A certificate known to be revoked authenticates nothing.
    if !authenticated || status(CheckName::Revocation) == Some(Status::Fail) {
        return Level::Encrypted;
    }
    let revocation_ok = passed(CheckName::Revocation)
        || (dane == Some(Status::Pass)
            && status(CheckName::Revocation) == Some(Status::NotApplicable));
    let qualified = passed(CheckName::Dnssec)
        && revocation_ok
        && [
            CheckName::Cipher,
            CheckName::KeyExchange,
            CheckName::KeySize,
        ]
        .into_iter()
        .all(passed);
    if qualified {
        Level::Qualified
    } else {
        Level::Authenticated
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CheckName::*;
    use Status::*;

    fn level(checks: &[(CheckName, Status)]) -> Level {
        let checks: Vec<Check> = checks.iter().map(|(n, s)| Check::new(*n, *s, "")).collect();
        level_from_checks(&checks)
    }

    const BSI: [(CheckName, Status); 3] = [(Cipher, Pass), (KeyExchange, Pass), (KeySize, Pass)];

    #[test]
    fn levels_follow_the_design_rules() {
        assert_eq!(level(&[]), Level::Plaintext);
        assert_eq!(level(&[(Starttls, Fail)]), Level::Plaintext);
        assert_eq!(
            level(&[(Starttls, Pass), (Protocol, Pass)]),
            Level::Encrypted
        );
        let pkix = [
            (Starttls, Pass),
            (Protocol, Pass),
            (Pkix, Pass),
            (Hostname, Pass),
        ];
        assert_eq!(level(&pkix), Level::Authenticated);
        let mut all = pkix.to_vec();
        all.extend(BSI);
        all.extend([(Dnssec, Pass), (Revocation, Pass)]);
        assert_eq!(level(&all), Level::Qualified);
        // Revocation unavailable: authenticated, not qualified.
        let mut unavailable = all.clone();
        unavailable.retain(|(n, _)| *n != Revocation);
        unavailable.push((Revocation, Error));
        assert_eq!(level(&unavailable), Level::Authenticated);
        // Revoked: authenticates nothing.
        let mut revoked = all.clone();
        revoked.retain(|(n, _)| *n != Revocation);
        revoked.push((Revocation, Fail));
        assert_eq!(level(&revoked), Level::Encrypted);
    }

    #[test]
    fn rfc7672_2_2_usable_tlsa_makes_dane_the_only_authority() {
        let checks = [
            (Starttls, Pass),
            (Protocol, Pass),
            (Dane, Fail),
            (Pkix, Pass),
            (Hostname, Pass),
        ];
        assert_eq!(level(&checks), Level::Encrypted);
        // DANE-EE needs no revocation check: the signed TLSA record is the authority.
        let mut dane = vec![
            (Starttls, Pass),
            (Protocol, Pass),
            (Dane, Pass),
            (Dnssec, Pass),
            (Revocation, NotApplicable),
        ];
        dane.extend(BSI);
        assert_eq!(level(&dane), Level::Qualified);
    }
}
