//! DANE for SMTP (RFC 7672): which TLSA records count, and whether the
//! chain a peer presented matches one of them.
//!
//! Only DANE-TA(2) and DANE-EE(3) are usable (§3.1.3); selectors Cert(0)
//! and SPKI(1); matching Full(0), SHA2-256(1), SHA2-512(2). DANE-EE binds
//! the server key alone: names and dates are not checked (§3.1.1).
//! DANE-TA makes the matched certificate a trust anchor for the rest of the
//! chain, whose leaf must then carry one of the reference names (§3.2.2).

use rustls::pki_types::{CertificateDer, UnixTime};
use sha2::{Digest, Sha256, Sha512};
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{Check, CheckName, Status, pkix};
use crate::dns::Tlsa;

const DANE_TA: u8 = 2;
const DANE_EE: u8 = 3;

/// The records a DANE client may use (RFC 7672 §3.1.3); the rest are ignored.
pub fn usable(records: &[Tlsa]) -> Vec<Tlsa> {
    records
        .iter()
        .filter(|r| {
            matches!(r.usage, DANE_TA | DANE_EE)
                && r.selector <= 1
                && r.matching <= 2
                && !(r.matching == 1 && r.data.len() != 32)
                && !(r.matching == 2 && r.data.len() != 64)
        })
        .cloned()
        .collect()
}

/// Matches a presented chain against usable TLSA records; the `dane` check.
pub fn check(
    records: &[Tlsa],
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    names: &[String],
    now: UnixTime,
) -> Check {
    let mut reasons = Vec::new();
    for r in records.iter().filter(|r| r.usage == DANE_EE) {
        if associated(r, end_entity.as_ref()) {
            return Check::new(
                CheckName::Dane,
                Status::Pass,
                format!(
                    "DANE-EE TLSA {} matches the server {} (RFC 7672 §3.1.1: names and dates not checked)",
                    short(r),
                    if r.selector == 1 {
                        "key"
                    } else {
                        "certificate"
                    }
                ),
            );
        }
    }
    if records.iter().any(|r| r.usage == DANE_EE) {
        reasons.push("no DANE-EE record matches the server certificate".to_string());
    }
    for r in records.iter().filter(|r| r.usage == DANE_TA) {
        // The trust anchor is a certificate the server sent, or the record itself.
        let mut candidates: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .filter(|c| associated(r, c.as_ref()))
            .cloned()
            .collect();
        if r.selector == 0 && r.matching == 0 {
            candidates.push(CertificateDer::from(r.data.clone()));
        }
        if candidates.is_empty() {
            continue;
        }
        for ta in &candidates {
            match chain_to(ta, end_entity, intermediates, names, now) {
                Ok(name) => {
                    return Check::new(
                        CheckName::Dane,
                        Status::Pass,
                        format!(
                            "DANE-TA TLSA {} matches trust anchor {}; chain verified; certificate valid for {name}",
                            short(r),
                            subject(ta.as_ref())
                        ),
                    );
                }
                Err(why) => reasons.push(format!(
                    "DANE-TA TLSA {} matches {}, but {why}",
                    short(r),
                    subject(ta.as_ref())
                )),
            }
        }
    }
    if records.iter().any(|r| r.usage == DANE_TA) && !reasons.iter().any(|r| r.contains("DANE-TA"))
    {
        reasons.push("no certificate in the chain matches a DANE-TA record".to_string());
    }
    Check::new(
        CheckName::Dane,
        Status::Fail,
        format!(
            "{} (TLSA: {})",
            reasons.join("; "),
            records.iter().map(short).collect::<Vec<_>>().join(", ")
        ),
    )
}

/// Why a DANE-TA(2) anchor did not vouch for the server (RFC 7672 §3.1.2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum TaError {
    #[error("it is not a usable CA certificate ({0})")]
    Anchor(String),
    #[error("the server certificate does not parse ({0})")]
    EndEntity(String),
    #[error("the chain to it does not verify: {0}")]
    Chain(String),
    /// The hostname check's own words.
    #[error("{0}")]
    Name(String),
}

/// Verifies the leaf up to the matched anchor and its name; returns the name that matched.
fn chain_to(
    ta: &CertificateDer<'_>,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    names: &[String],
    now: UnixTime,
) -> Result<String, TaError> {
    let anchor =
        webpki::anchor_from_trusted_cert(ta).map_err(|e| TaError::Anchor(format!("{e:?}")))?;
    let ee =
        EndEntityCert::try_from(end_entity).map_err(|e| TaError::EndEntity(format!("{e:?}")))?;
    let algs = crate::qualify::bsi::provider()
        .signature_verification_algorithms
        .all;
    ee.verify_for_usage(
        algs,
        &[anchor],
        intermediates,
        now,
        KeyUsage::server_auth(),
        None,
        None,
    )
    .map_err(|e| TaError::Chain(pkix::describe(&e)))?;
    let name = pkix::hostname_check(&ee, names);
    if name.status == Status::Pass {
        Ok(name
            .detail
            .trim_start_matches("certificate is valid for ")
            .to_string())
    } else {
        Err(TaError::Name(name.detail))
    }
}

/// Whether a certificate (DER) is the one a record associates.
fn associated(r: &Tlsa, cert_der: &[u8]) -> bool {
    let selected: Vec<u8> = match r.selector {
        0 => cert_der.to_vec(),
        1 => match X509Certificate::from_der(cert_der) {
            Ok((_, c)) => c.tbs_certificate.subject_pki.raw.to_vec(),
            Err(_) => return false,
        },
        _ => return false,
    };
    match r.matching {
        0 => selected == r.data,
        1 => Sha256::digest(&selected).as_slice() == r.data.as_slice(),
        2 => Sha512::digest(&selected).as_slice() == r.data.as_slice(),
        _ => false,
    }
}

/// `3 1 1 abcdef12…`: enough to find the record, short enough for a log line.
fn short(r: &Tlsa) -> String {
    let hex = crate::util::hex(&r.data);
    let cut = hex.get(..16).unwrap_or(&hex);
    format!("{} {} {} {cut}…", r.usage, r.selector, r.matching)
}

fn subject(der: &[u8]) -> String {
    X509Certificate::from_der(der)
        .map(|(_, c)| c.subject().to_string())
        .unwrap_or_else(|_| "(unparsable certificate)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(usage: u8, selector: u8, matching: u8, len: usize) -> Tlsa {
        Tlsa {
            usage,
            selector,
            matching,
            data: vec![0; len],
        }
    }

    #[test]
    fn rfc7672_3_1_3_only_dane_ta_and_dane_ee_are_usable() {
        let records = [
            t(0, 0, 1, 32),
            t(1, 1, 1, 32),
            t(2, 0, 1, 32),
            t(3, 1, 1, 32),
            t(3, 1, 2, 64),
            t(3, 2, 1, 32),
            t(3, 1, 3, 32),
            t(3, 1, 1, 31),
        ];
        let kept: Vec<(u8, u8, u8)> = usable(&records)
            .iter()
            .map(|r| (r.usage, r.selector, r.matching))
            .collect();
        assert_eq!(kept, [(2, 0, 1), (3, 1, 1), (3, 1, 2)]);
    }
}
