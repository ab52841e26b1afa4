//! A recipient's S/MIME certificate, judged before content is encrypted
//! to it (RFC 8550 §4): a chain to a trusted root for e-mail protection,
//! the recipient's address in the certificate, a key that may encrypt and
//! is as strong as the TLS profile asks of a server key, and its
//! revocation status — with the PKIX and revocation code of a delivery
//! connection, so that a certificate good enough for one is good enough
//! for the other.

use rustls::pki_types::{CertificateDer, UnixTime};
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::pkix::{Roots, describe};
use super::{Qualifier, Status, facts};

/// id-kp-emailProtection (1.3.6.1.5.5.7.3.4), DER value bytes.
const EKU_EMAIL_PROTECTION: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x04];

/// What a recipient certificate was found to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertJudgment {
    /// SHA-256 of the certificate, upper-case hex.
    pub fingerprint: String,
    /// The certificate in one line: subject, key, validity.
    pub summary: String,
    /// What passed, for the evidence (chain, revocation).
    pub passed: Vec<String>,
    /// Why it may not be used; none: usable.
    pub refusal: Option<String>,
}

impl CertJudgment {
    pub fn usable(&self) -> bool {
        self.refusal.is_none()
    }
}

impl Qualifier {
    /// Judges `chain` (the recipient's certificate first, then any
    /// intermediates) for mail to `address`. `accept_unavailable`: a
    /// revocation status that could not be had does not stand in the way
    /// (the class's own rule, as for a connection); `now` Unix seconds.
    pub async fn judge_recipient_certificate(
        &self,
        chain: &[CertificateDer<'static>],
        address: &str,
        accept_unavailable: bool,
        now: i64,
    ) -> CertJudgment {
        let mut j = judge_offline(
            self.smime_roots(),
            chain,
            address,
            self.config.tls.profile,
            now,
        );
        if j.refusal.is_some() {
            return j;
        }
        let (check, _) = self
            .revocation()
            .check(chain, &[], self.smime_roots(), now)
            .await;
        match check.status {
            Status::Pass => j.passed.push(format!("revocation {}", check.detail)),
            Status::Error if accept_unavailable => j.passed.push(format!(
                "revocation {}, accepted for this class",
                check.detail
            )),
            _ => j.refusal = Some(format!("revocation {}", check.detail)),
        }
        j
    }
}

/// Everything but revocation: what can be known without asking anyone.
pub fn judge_offline(
    roots: &Roots,
    chain: &[CertificateDer<'static>],
    address: &str,
    profile: super::bsi::Profile,
    now: i64,
) -> CertJudgment {
    let mut j = CertJudgment {
        fingerprint: String::new(),
        summary: String::new(),
        passed: Vec::new(),
        refusal: None,
    };
    let Some(ee_der) = chain.first() else {
        j.refusal = Some("no certificate".into());
        return j;
    };
    if let Some(info) = facts::cert_info(ee_der) {
        j.fingerprint = info.sha256.clone();
        j.summary = format!("{} (until {})", info.subject, info.not_after);
    }
    let refuse = |mut j: CertJudgment, why: String| {
        j.refusal = Some(why);
        j
    };
    let Ok((_, cert)) = X509Certificate::from_der(ee_der) else {
        return refuse(j, "the certificate does not parse".into());
    };
    if !names_address(&cert, address) {
        return refuse(j, format!("the certificate does not name {address}"));
    }
    let key = facts::peer_key_of(ee_der);
    if let Some(k) = &key {
        j.summary = format!("{}, {k}", j.summary);
    }
    let rsa = key.as_ref().is_some_and(|k| k.algorithm == "RSA");
    let ec = key
        .as_ref()
        .is_some_and(|k| matches!(k.algorithm.as_str(), "ECDSA P-256" | "ECDSA P-384"));
    if !rsa && !ec {
        return refuse(
            j,
            format!(
                "its key ({}) is neither RSA nor EC P-256 or P-384",
                key.map(|k| k.to_string())
                    .unwrap_or_else(|| "unknown".into())
            ),
        );
    }
    let size = profile.key_size(key.as_ref());
    if size.status != Status::Pass {
        return refuse(j, size.detail);
    }
    // RFC 8550 §4.4.2: a key usage extension, when present, must allow
    // what the key is used for.
    if let Ok(Some(ku)) = cert.key_usage() {
        let ku = ku.value;
        if rsa && !ku.key_encipherment() {
            return refuse(j, "its key usage does not allow keyEncipherment".into());
        }
        if ec && !ku.key_agreement() {
            return refuse(j, "its key usage does not allow keyAgreement".into());
        }
    }
    let ee = match EndEntityCert::try_from(ee_der) {
        Ok(ee) => ee,
        Err(e) => return refuse(j, format!("the certificate does not parse: {e:?}")),
    };
    let algs = super::bsi::provider().signature_verification_algorithms.all;
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.max(0) as u64));
    match ee.verify_for_usage(
        algs,
        roots.anchors(),
        &chain[1..],
        time,
        KeyUsage::required_if_present(EKU_EMAIL_PROTECTION),
        None,
        None,
    ) {
        Ok(path) => j.passed.push(format!(
            "chain of {} to a trusted root ({})",
            path.intermediate_certificates().count() + 1,
            roots.source
        )),
        Err(webpki::Error::RequiredEkuNotFoundContext(_)) => {
            return refuse(
                j,
                "the certificate is not for e-mail protection (extended key usage)".into(),
            );
        }
        Err(e) => return refuse(j, format!("{} (roots: {})", describe(&e), roots.source)),
    }
    j
}

/// Whether the certificate names `address`: a subjectAltName rfc822Name,
/// or (older certificates) the subject's emailAddress (RFC 8550 §3).
/// The domain compares without case; the local part too, as mail systems
/// deliver it.
pub fn names_address(cert: &X509Certificate<'_>, address: &str) -> bool {
    addresses(cert)
        .iter()
        .any(|a| a.eq_ignore_ascii_case(address))
}

/// The e-mail addresses a certificate names.
pub fn addresses(cert: &X509Certificate<'_>) -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::RFC822Name(a) = name {
                found.push(a.to_string());
            }
        }
    }
    if found.is_empty() {
        for attr in cert.subject().iter_email() {
            if let Ok(a) = attr.as_str() {
                found.push(a.to_string());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RootStore;
    use crate::qualify::bsi::Profile;
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose as Eku, IsCa, Issuer, KeyPair,
        KeyUsagePurpose as Ku, SanType,
    };

    fn ca(name: &str) -> (rcgen::Certificate, Issuer<'static, KeyPair>) {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![Ku::KeyCertSign];
        let cert = p.self_signed(&key).expect("ca");
        (cert, Issuer::new(p, key))
    }

    fn leaf(
        issuer: &Issuer<'_, KeyPair>,
        address: &str,
        eku: Eku,
        ku: &[Ku],
    ) -> CertificateDer<'static> {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.subject_alt_names = vec![SanType::Rfc822Name(address.try_into().expect("ia5"))];
        p.extended_key_usages = vec![eku];
        p.key_usages = ku.to_vec();
        p.signed_by(&key, issuer).expect("leaf").der().clone()
    }

    #[test]
    fn a_certificate_is_judged_for_address_usage_key_and_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca_cert, issuer) = ca("trusted CA");
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, ca_cert.pem()).expect("write");
        let roots = Roots::load(&RootStore::File(file)).expect("roots");
        let now = crate::util::now();
        let judge = |der: CertificateDer<'static>, address: &str| {
            judge_offline(&roots, &[der], address, Profile::BsiStrict, now)
        };
        let agree = [Ku::DigitalSignature, Ku::KeyAgreement];

        let good = judge(
            leaf(&issuer, "Bob@X.test", Eku::EmailProtection, &agree),
            "bob@x.test",
        );
        assert!(good.usable(), "{good:?}");
        assert_eq!(good.fingerprint.len(), 64);
        assert!(good.summary.contains("ECDSA P-256"), "{good:?}");
        assert!(
            good.passed[0].starts_with("chain of 1 to a trusted root"),
            "{good:?}"
        );

        let refusal = |j: CertJudgment| j.refusal.unwrap_or_default();
        let other = judge(
            leaf(&issuer, "bob@x.test", Eku::EmailProtection, &agree),
            "eve@x.test",
        );
        assert_eq!(refusal(other), "the certificate does not name eve@x.test");
        let tls = judge(
            leaf(&issuer, "bob@x.test", Eku::ServerAuth, &agree),
            "bob@x.test",
        );
        assert!(refusal(tls).contains("not for e-mail protection"));
        let sign_only = judge(
            leaf(
                &issuer,
                "bob@x.test",
                Eku::EmailProtection,
                &[Ku::DigitalSignature],
            ),
            "bob@x.test",
        );
        assert_eq!(
            refusal(sign_only),
            "its key usage does not allow keyAgreement"
        );
        let (_, stranger) = ca("unknown CA");
        let unknown = judge(
            leaf(&stranger, "bob@x.test", Eku::EmailProtection, &agree),
            "bob@x.test",
        );
        let why = refusal(unknown);
        assert!(why.starts_with("issuer unknown"), "{why}");
    }
}
