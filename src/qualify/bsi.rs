//! BSI TR-02102-2 (version 2025-01) profiles: which negotiated TLS
//! parameters a qualified transport may use, and the `protocol`, `cipher`,
//! `key_exchange` and `key_size` checks that judge a connection by them.
//!
//! One profile governs both directions: inbound it is the exact list of
//! suites and groups sealgate offers; outbound its suites and groups are
//! offered first and the rest of the provider's after them, so a peer that
//! can do the profile gets it, a peer that cannot still gets an encrypted
//! connection, and the checks say which rule the negotiated values broke.
//!
//! Entries of the TR that the ring provider cannot do: the brainpool
//! curves, secp521r1, AES-CCM and DHE suites. They are absent from both
//! profiles, which therefore are subsets of the TR's recommendations.

use std::fmt;

use rustls::crypto::ring::{cipher_suite, kx_group};
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::{CipherSuite, NamedGroup, SupportedCipherSuite};
use serde::Deserialize;

use super::{Check, CheckName, PeerKey, Status, TlsFacts};

/// A named set of TLS rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// Exactly the TR's recommendations that the provider can do.
    BsiStrict,
    /// The strict profile plus named deviations most public MX need today:
    /// RSA keys of 2048 bits and the X25519 group. Each one shows in the
    /// check detail as a deviation.
    #[default]
    BsiCompatible,
}

/// The full ring provider, for what no profile restricts: signature
/// checks of certificates and OCSP answers, HTTPS fetches.
pub fn provider() -> std::sync::Arc<CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// Minimum RSA modulus of the TR (section 3.6: 3000 bits from 2023).
const RSA_MIN_BITS: u32 = 3000;
/// Smallest RSA modulus the compatible profile accepts, as a deviation.
const RSA_DEVIATION_BITS: u32 = 2048;
/// Minimum size of an elliptic-curve key of the TR.
const ECC_MIN_BITS: u32 = 250;

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::BsiStrict => "bsi-strict",
            Profile::BsiCompatible => "bsi-compatible",
        }
    }

    /// The cipher suites of the profile, in order of preference.
    pub fn suites(self) -> Vec<SupportedCipherSuite> {
        vec![
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ]
    }

    /// The key exchange groups of the profile, in order of preference.
    pub fn groups(self) -> Vec<&'static dyn SupportedKxGroup> {
        let mut groups: Vec<&'static dyn SupportedKxGroup> =
            vec![kx_group::SECP256R1, kx_group::SECP384R1];
        if self == Profile::BsiCompatible {
            groups.push(kx_group::X25519);
        }
        groups
    }

    /// The provider for sealgate's own TLS server: the profile and nothing else.
    pub fn server_provider(self) -> CryptoProvider {
        CryptoProvider {
            cipher_suites: self.suites(),
            kx_groups: self.groups(),
            ..rustls::crypto::ring::default_provider()
        }
    }

    /// The provider for delivery connections: the profile first, then every
    /// other suite and group the provider has, so a peer outside the profile
    /// is still reached (and judged by the checks).
    pub fn client_provider(self) -> CryptoProvider {
        let all = rustls::crypto::ring::default_provider();
        let mut suites = self.suites();
        for s in &all.cipher_suites {
            if !suites.iter().any(|p| p.suite() == s.suite()) {
                suites.push(*s);
            }
        }
        let mut groups = self.groups();
        for g in &all.kx_groups {
            if !groups.iter().any(|p| p.name() == g.name()) {
                groups.push(*g);
            }
        }
        CryptoProvider {
            cipher_suites: suites,
            kx_groups: groups,
            ..all
        }
    }

    /// The `protocol`, `cipher`, `key_exchange` and `key_size` checks of a
    /// finished handshake.
    pub fn checks(self, facts: &TlsFacts) -> [Check; 4] {
        [
            self.protocol(&facts.version),
            self.cipher(&facts.cipher_suite),
            self.key_exchange(facts.kx_group.as_deref()),
            self.key_size(facts.peer_key.as_ref()),
        ]
    }

    /// TLS 1.2 and 1.3 only (TR section 3.2).
    pub fn protocol(self, version: &str) -> Check {
        let ok = matches!(version, "TLSv1.3" | "TLSv1.2");
        let detail = if ok {
            format!("{version}: allowed by {self}")
        } else {
            format!("{version}: below TLS 1.2, not allowed by {self}")
        };
        Check::new(CheckName::Protocol, pass_if(ok), detail)
    }

    /// AES-GCM with ECDHE, forward secrecy always (TR sections 3.3.1, 3.3.2).
    pub fn cipher(self, suite: &str) -> Check {
        let ok = self.suites().iter().any(|s| suite_name(s.suite()) == suite);
        let why = if suite.contains("CHACHA20") {
            "ChaCha20-Poly1305 is not among the TR's ciphers"
        } else if suite.contains("CBC") {
            "CBC mode is not allowed"
        } else if suite.starts_with("TLS_RSA_") {
            "RSA key transport gives no forward secrecy"
        } else if !suite.starts_with("TLS13_") && !suite.contains("ECDHE") {
            "no ephemeral key exchange: no forward secrecy"
        } else {
            "not among the profile's suites"
        };
        let detail = if ok {
            format!("{suite}: AES-GCM with forward secrecy, allowed by {self}")
        } else {
            format!("{suite}: {why} ({self})")
        };
        Check::new(CheckName::Cipher, pass_if(ok), detail)
    }

    /// secp256r1/secp384r1; X25519 as a deviation in the compatible profile
    /// (TR section 3.3.3 recommends the NIST and brainpool curves only).
    pub fn key_exchange(self, group: Option<&str>) -> Check {
        match group {
            Some(g @ ("secp256r1" | "secp384r1")) => Check::new(
                CheckName::KeyExchange,
                Status::Pass,
                format!("ECDHE with {g}: allowed by {self}"),
            ),
            Some("x25519") if self == Profile::BsiCompatible => Check::new(
                CheckName::KeyExchange,
                Status::Pass,
                format!(
                    "ECDHE with x25519: deviation from TR-02102-2 (curve not recommended), accepted by {self}"
                ),
            ),
            Some(g) => Check::new(
                CheckName::KeyExchange,
                Status::Fail,
                format!("ECDHE with {g}: group not allowed by {self}"),
            ),
            None => Check::new(
                CheckName::KeyExchange,
                Status::Fail,
                format!("no ephemeral key exchange group: {self} demands forward secrecy"),
            ),
        }
    }

    /// RSA ≥ 3000 bits, ECC ≥ 250 bits (TR section 3.6); RSA-2048 as a
    /// deviation in the compatible profile.
    pub fn key_size(self, key: Option<&PeerKey>) -> Check {
        let Some(key) = key else {
            return Check::new(
                CheckName::KeySize,
                Status::Fail,
                "server key unknown: no certificate",
            );
        };
        let k = key.to_string();
        let (status, detail) = if key.algorithm == "RSA" {
            if key.bits >= RSA_MIN_BITS {
                (
                    Status::Pass,
                    format!("{k}: at least {RSA_MIN_BITS} bits, allowed by {self}"),
                )
            } else if key.bits >= RSA_DEVIATION_BITS && self == Profile::BsiCompatible {
                (
                    Status::Pass,
                    format!(
                        "{k}: deviation from TR-02102-2 (RSA below {RSA_MIN_BITS} bits), accepted by {self}"
                    ),
                )
            } else {
                (
                    Status::Fail,
                    format!("{k}: RSA below {RSA_MIN_BITS} bits, not allowed by {self}"),
                )
            }
        } else if key.algorithm.starts_with("ECDSA") {
            if key.bits >= ECC_MIN_BITS {
                (
                    Status::Pass,
                    format!("{k}: at least {ECC_MIN_BITS} bits, allowed by {self}"),
                )
            } else {
                (
                    Status::Fail,
                    format!("{k}: below {ECC_MIN_BITS} bits, not allowed by {self}"),
                )
            }
        } else {
            (
                Status::Fail,
                format!("{k}: key type not in TR-02102-2 ({self})"),
            )
        };
        Check::new(CheckName::KeySize, status, detail)
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn pass_if(ok: bool) -> Status {
    if ok { Status::Pass } else { Status::Fail }
}

/// The name of a suite as the evidence spells it (rustls' names, which
/// follow IANA's with `TLS13_` for TLS 1.3).
pub fn suite_name(suite: CipherSuite) -> String {
    format!("{suite:?}")
}

/// The name of a group as the evidence spells it.
pub fn group_name(group: NamedGroup) -> String {
    format!("{group:?}").to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(version: &str, suite: &str, group: Option<&str>, key: (&str, u32)) -> TlsFacts {
        TlsFacts {
            version: version.into(),
            cipher_suite: suite.into(),
            kx_group: group.map(str::to_string),
            peer_key: Some(PeerKey {
                algorithm: key.0.into(),
                bits: key.1,
            }),
            chain: Vec::new(),
            ocsp_stapled: false,
        }
    }

    fn statuses(p: Profile, f: &TlsFacts) -> Vec<Status> {
        p.checks(f).iter().map(|c| c.status).collect()
    }

    #[test]
    fn strict_accepts_the_tr_recommendations() {
        use Status::*;
        let good = facts(
            "TLSv1.3",
            "TLS13_AES_256_GCM_SHA384",
            Some("secp384r1"),
            ("RSA", 3072),
        );
        assert_eq!(
            statuses(Profile::BsiStrict, &good),
            [Pass, Pass, Pass, Pass]
        );
        let ecdsa = facts(
            "TLSv1.2",
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            Some("secp256r1"),
            ("ECDSA P-256", 256),
        );
        assert_eq!(
            statuses(Profile::BsiStrict, &ecdsa),
            [Pass, Pass, Pass, Pass]
        );
    }

    #[test]
    fn deviations_pass_only_in_the_compatible_profile_and_say_so() {
        let common = facts(
            "TLSv1.3",
            "TLS13_AES_128_GCM_SHA256",
            Some("x25519"),
            ("RSA", 2048),
        );
        let strict = Profile::BsiStrict.checks(&common);
        assert_eq!(strict[2].status, Status::Fail);
        assert_eq!(strict[3].status, Status::Fail);
        let compatible = Profile::BsiCompatible.checks(&common);
        assert_eq!(compatible[2].status, Status::Pass);
        assert!(compatible[2].detail.contains("deviation"));
        assert_eq!(compatible[3].status, Status::Pass);
        assert!(compatible[3].detail.contains("deviation"));
    }

    #[test]
    fn chacha_cbc_small_keys_and_old_protocols_fail_both_profiles() {
        for p in [Profile::BsiStrict, Profile::BsiCompatible] {
            let chacha = p.cipher("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256");
            assert_eq!(chacha.status, Status::Fail);
            assert!(chacha.detail.contains("ChaCha20"), "{}", chacha.detail);
            let cbc = p.cipher("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA");
            assert!(cbc.detail.contains("CBC"), "{}", cbc.detail);
            let rsa = p.cipher("TLS_RSA_WITH_AES_128_GCM_SHA256");
            assert!(rsa.detail.contains("forward secrecy"), "{}", rsa.detail);
            assert_eq!(p.protocol("TLSv1.1").status, Status::Fail);
            let small = PeerKey {
                algorithm: "RSA".into(),
                bits: 1024,
            };
            assert_eq!(p.key_size(Some(&small)).status, Status::Fail);
        }
    }

    #[test]
    fn the_client_offers_the_profile_first_and_everything_else_after() {
        let p = Profile::BsiStrict.client_provider();
        assert_eq!(
            p.cipher_suites[0].suite(),
            CipherSuite::TLS13_AES_256_GCM_SHA384
        );
        assert!(
            p.cipher_suites
                .iter()
                .any(|s| suite_name(s.suite()).contains("CHACHA20"))
        );
        assert_eq!(p.kx_groups[0].name(), NamedGroup::secp256r1);
        assert!(p.kx_groups.iter().any(|g| g.name() == NamedGroup::X25519));
        let server = Profile::BsiStrict.server_provider();
        assert!(
            !server
                .cipher_suites
                .iter()
                .any(|s| suite_name(s.suite()).contains("CHACHA20"))
        );
        assert!(
            !server
                .kx_groups
                .iter()
                .any(|g| g.name() == NamedGroup::X25519)
        );
    }
}
