//! The facts of a finished TLS handshake, as evidence: version, suite,
//! group, the peer's chain and key. Read from either side of a connection
//! (the inbound session's `Received:` header, the delivery connection's
//! verdict) and from a probe's Certificate message.

use rustls::CommonState;
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

use super::{CertInfo, PeerKey, TlsFacts, bsi};
use crate::util::{hex_upper, rfc3339};

/// The facts of a finished handshake, from either side of the connection.
pub fn of(state: &CommonState, ocsp_stapled: bool) -> Option<TlsFacts> {
    let version = match state.protocol_version()? {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_string(),
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_string(),
        other => format!("{other:?}"),
    };
    let cipher_suite = bsi::suite_name(state.negotiated_cipher_suite()?.suite());
    let kx_group = state
        .negotiated_key_exchange_group()
        .map(|g| bsi::group_name(g.name()));
    let certs = state.peer_certificates().unwrap_or(&[]);
    let chain = certs.iter().filter_map(|c| cert_info(c)).collect();
    let peer_key = certs.first().and_then(|c| peer_key_of(c));
    Some(TlsFacts {
        version,
        cipher_suite,
        kx_group,
        peer_key,
        chain,
        ocsp_stapled,
    })
}

pub fn cert_info(der: &CertificateDer<'_>) -> Option<CertInfo> {
    let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
    Some(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        sha256: hex_upper(&Sha256::digest(der.as_ref())),
        not_after: rfc3339(cert.validity().not_after.timestamp()),
    })
}

/// The public key of a DER certificate, for the evidence.
pub fn peer_key_of(der: &[u8]) -> Option<PeerKey> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let spki = cert.public_key();
    let (algorithm, bits) = match spki.parsed().ok()? {
        PublicKey::RSA(rsa) => ("RSA".to_string(), rsa.key_size()),
        PublicKey::EC(ec) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| match oid.to_id_string().as_str() {
                    "1.2.840.10045.3.1.7" => "P-256".to_string(),
                    "1.3.132.0.34" => "P-384".to_string(),
                    "1.3.132.0.35" => "P-521".to_string(),
                    other => other.to_string(),
                })
                .unwrap_or_default();
            (format!("ECDSA {curve}"), ec.key_size())
        }
        PublicKey::DSA(_) => ("DSA".to_string(), 0),
        PublicKey::GostR3410(_) | PublicKey::GostR3410_2012(_) => ("GOST".to_string(), 0),
        PublicKey::Unknown(_) => (spki.algorithm.algorithm.to_id_string(), 0),
    };
    Some(PeerKey {
        algorithm,
        bits: bits as u32,
    })
}
