//! Turns a delivery connection into a [`Verdict`]: what this transport is worth.
//!
//! The verdict is built from the evidence the outbound TLS handshake gathered
//! on the very connection the message will travel on (DESIGN.md: "Qualify on
//! the connection you send on"). Its [`Level`] is always computed from the
//! [`Check`]s, never set by hand, so "why not qualified?" always has an
//! answer: the checks that did not pass, with their detail.
//!
//! Submodules: [`dane`] (TLSA matching), [`pkix`] (chain and host name),
//! [`mta_sts`] (policy discovery), [`verifier`] (the rustls verifier of the
//! delivery connection that gathers their evidence), [`revocation`] (OCSP
//! and CRL), [`bsi`] (the TLS profile the negotiated parameters are judged
//! by), [`probe`] (what a peer offers when no handshake is possible).

pub mod bsi;
pub mod dane;
pub mod mta_sts;
pub mod pkix;
pub mod probe;
pub mod revocation;
pub mod verifier;

use serde::Serialize;

/// How well a transport is secured, in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
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

/// Names of checks; stable, because auditors and scripts read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
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

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    Fail,
    NotApplicable,
    /// The check could not be carried out (timeout, SERVFAIL, unreachable responder).
    Error,
}

/// One check with its evidence in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    /// SHA-256 of the DER encoding, upper-case hex.
    pub sha256: String,
    /// RFC 3339.
    pub not_after: String,
}

/// The public key of the peer's end-entity certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerKey {
    /// `RSA`, `ECDSA P-256`, `Ed25519`, …
    pub algorithm: String,
    pub bits: u32,
}

/// What was negotiated on a TLS connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

/// What one connection to one MX host is worth, with the evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub domain: String,
    pub mx_host: String,
    pub address: String,
    pub level: Level,
    pub checks: Vec<Check>,
    pub tls: Option<TlsFacts>,
    /// Unix seconds.
    pub at: i64,
}

impl Verdict {
    /// Builds a verdict whose level follows from its checks.
    pub fn new(
        domain: &str,
        mx_host: &str,
        address: &str,
        checks: Vec<Check>,
        tls: Option<TlsFacts>,
        at: i64,
    ) -> Verdict {
        Verdict {
            domain: domain.to_string(),
            mx_host: mx_host.to_string(),
            address: address.to_string(),
            level: level_from_checks(&checks),
            checks,
            tls,
            at,
        }
    }

    /// The checks that keep this verdict from the next level, as `name: detail`.
    pub fn shortfalls(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| matches!(c.status, Status::Fail | Status::Error))
            .map(|c| format!("{}: {}", serde_plain(&c.name), c.detail))
            .collect()
    }
}

fn serde_plain<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
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
