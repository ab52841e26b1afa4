//! The certificate verifier of the delivery connection. It gathers the
//! evidence (`pkix`, `hostname`, `dane`) during the very handshake the
//! message will travel over, and lets the handshake finish either way: the
//! outbound side decides on the whole verdict, and `sealgate check` can show
//! what a failing peer presented. The handshake signature is always
//! verified, so the peer holds the key of the certificate we record.

use std::sync::{Arc, Mutex};

use rustls::DigitallySignedStruct;
use rustls::SignatureScheme;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use super::bsi::Profile;
use super::pkix::{self, Roots};
use super::{Check, dane};
use crate::dns::Tlsa;

/// What the verifier found about the presented certificate.
#[derive(Debug, Clone)]
pub struct CertEvidence {
    pub pkix: Check,
    pub hostname: Check,
    /// Present only when usable TLSA records were given.
    pub dane: Option<Check>,
    /// The presented chain, end entity first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The stapled OCSP response; empty when none came.
    pub staple: Vec<u8>,
}

#[derive(Debug)]
pub struct DeliveryVerifier {
    provider: Arc<CryptoProvider>,
    roots: Roots,
    names: Vec<String>,
    tlsa: Vec<Tlsa>,
    evidence: Arc<Mutex<Option<CertEvidence>>>,
}

impl DeliveryVerifier {
    /// `names`: reference identities (the MX host, and the TLSA base domain
    /// after CNAME expansion); `tlsa`: usable records, empty when DANE does
    /// not apply.
    pub fn new(
        roots: Roots,
        names: Vec<String>,
        tlsa: Vec<Tlsa>,
    ) -> (Arc<DeliveryVerifier>, Arc<Mutex<Option<CertEvidence>>>) {
        let evidence = Arc::new(Mutex::new(None));
        let v = Arc::new(DeliveryVerifier {
            provider: crate::qualify::bsi::provider(),
            roots,
            names,
            tlsa,
            evidence: evidence.clone(),
        });
        (v, evidence)
    }
}

impl ServerCertVerifier for DeliveryVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let (pkix, hostname) =
            pkix::checks(&self.roots, end_entity, intermediates, &self.names, now);
        let dane = (!self.tlsa.is_empty())
            .then(|| dane::check(&self.tlsa, end_entity, intermediates, &self.names, now));
        if let Ok(mut slot) = self.evidence.lock() {
            *slot = Some(CertEvidence {
                pkix,
                hostname,
                dane,
                chain: std::iter::once(end_entity)
                    .chain(intermediates)
                    .map(|c| c.clone().into_owned())
                    .collect(),
                staple: ocsp_response.to_vec(),
            });
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client configuration for one delivery connection with this verifier,
/// offering the profile's suites and groups first.
pub fn client_config(verifier: Arc<DeliveryVerifier>, profile: Profile) -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(profile.client_provider()))
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth()
}
