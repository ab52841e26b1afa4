//! TLS material and evidence shared by both sides: the server certificate
//! (from config, or self-signed on first start), client-certificate
//! identities for relay authorization, and the facts of a negotiated session.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

pub use crate::qualify::bsi::provider;

/// The inbound TLS set-up.
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    /// Verifies client certificate chains for subject/SAN rules (`tls.client_ca_file`).
    pub client_ca: Option<Arc<dyn ClientCertVerifier>>,
}

/// Loads the configured certificate, or creates (once) a self-signed one under `data_dir/tls`.
pub fn server_config(config: &Config) -> Result<ServerTls, TlsError> {
    let (cert_path, key_path) = inbound_files(config);
    if config.tls.certificate.is_none() || config.tls.private_key.is_none() {
        ensure_self_signed(&config.hostname, &cert_path, &key_path)?;
    }
    let certs = load_certs(&cert_path)?;
    let key = load_key(&key_path)?;
    let client_ca = match &config.tls.client_ca_file {
        Some(path) => {
            let mut store = RootCertStore::empty();
            for cert in load_certs(path)? {
                store.add(cert).map_err(|e| file_error(path, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider())
                .build()
                .map_err(|e| file_error(path, e))?;
            Some(verifier)
        }
        None => None,
    };
    let verifier = Arc::new(ClientIdentityVerifier {
        provider: provider(),
    });
    let mut server =
        rustls::ServerConfig::builder_with_provider(Arc::new(config.tls.profile.server_provider()))
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| file_error(&key_path, format!("does not match the certificate: {e}")))?;
    server.ignore_client_order = true;
    Ok(ServerTls {
        config: Arc::new(server),
        client_ca,
    })
}

/// Validity of a generated certificate: the CA/Browser Forum's ceiling.
const SELF_SIGNED_DAYS: i64 = 397;
/// A generated certificate is replaced this long before it expires.
const RENEW_DAYS: i64 = 30;

/// Makes (or renews, when it expires within `RENEW_DAYS`) the self-signed
/// certificate used when none is configured.
fn ensure_self_signed(hostname: &str, cert: &Path, key: &Path) -> Result<(), TlsError> {
    use rustls::pki_types::pem::PemObject;
    let renew_at = chrono::Utc::now().timestamp() + RENEW_DAYS * 86_400;
    let fresh = key.exists()
        && CertificateDer::from_pem_file(cert).ok().is_some_and(|der| {
            X509Certificate::from_der(&der)
                .is_ok_and(|(_, c)| c.validity().not_after.timestamp() > renew_at)
        });
    if fresh {
        return Ok(());
    }
    generate_self_signed(hostname, cert, key, SELF_SIGNED_DAYS)
}

fn generate_self_signed(
    hostname: &str,
    cert_path: &Path,
    key_path: &Path,
    days: i64,
) -> Result<(), TlsError> {
    // The key a renewal uses is the one announced beforehand: the next key
    // (`sealgate records` publishes its TLSA record beside the current
    // one), else the current key, so that a DANE record of either stays
    // true across the renewal. Only the very first certificate makes a key.
    let next = next_key_path(key_path);
    let key = match [&next, key_path]
        .into_iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .and_then(|pem| rcgen::KeyPair::from_pem(&pem).ok())
    {
        Some(key) => key,
        None => rcgen::KeyPair::generate().map_err(|e| TlsError::Generate(e.to_string()))?,
    };
    let mut params = rcgen::CertificateParams::new(vec![hostname.to_string()])
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, hostname);
    let day = |offset: i64| {
        use chrono::Datelike;
        let d = chrono::Utc::now().date_naive() + chrono::TimeDelta::days(offset);
        rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8)
    };
    // A day of slack for clients whose clock is behind.
    params.not_before = day(-1);
    params.not_after = day(days);
    let cert = params
        .self_signed(&key)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    if let Some(dir) = cert_path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
    }
    write_private(key_path, key.serialize_pem().as_bytes())?;
    std::fs::write(cert_path, cert.pem()).map_err(|e| file_error(cert_path, e))?;
    // The next key is now the current one; a new next key is made when
    // `sealgate records` is asked for the records again.
    let _ = std::fs::remove_file(&next);
    tracing::info!(path = %cert_path.display(), "generated a self-signed certificate for {hostname}, valid {days} days");
    Ok(())
}

/// Where the key for the next certificate waits: beside the current key.
pub fn next_key_path(key_path: &Path) -> std::path::PathBuf {
    key_path.with_file_name("next.key")
}

/// The next key beside `key_path`, made (mode 0600) if there is none;
/// returns its SubjectPublicKeyInfo, DER.
pub fn next_key(key_path: &Path) -> Result<Vec<u8>, TlsError> {
    let path = next_key_path(key_path);
    if let Ok(pem) = std::fs::read_to_string(&path) {
        let key = rcgen::KeyPair::from_pem(&pem).map_err(|e| file_error(&path, e))?;
        return Ok(rcgen::PublicKeyData::subject_public_key_info(&key));
    }
    let key = rcgen::KeyPair::generate().map_err(|e| TlsError::Generate(e.to_string()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
    }
    write_private(&path, key.serialize_pem().as_bytes())?;
    // Made by an administrator's `sealgate records` (root), read by the
    // gateway at its next renewal: owned like the directory it is in.
    if let Some(dir) = path.parent()
        && let Ok(meta) = std::fs::metadata(dir)
    {
        use std::os::unix::fs::MetadataExt;
        let _ = std::os::unix::fs::chown(&path, Some(meta.uid()), Some(meta.gid()));
    }
    Ok(rcgen::PublicKeyData::subject_public_key_info(&key))
}

/// The certificate and key files the inbound side uses: the configured
/// ones, or the generated self-signed pair in `data_dir/tls`.
pub fn inbound_files(config: &Config) -> (std::path::PathBuf, std::path::PathBuf) {
    match (&config.tls.certificate, &config.tls.private_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => {
            let dir = config.data_dir.join("tls");
            (dir.join("self-signed.pem"), dir.join("self-signed.key"))
        }
    }
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| file_error(path, e))?;
    f.write_all(data).map_err(|e| file_error(path, e))
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = std::fs::read(path).map_err(|e| file_error(path, e))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate in file"));
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = std::fs::read(path).map_err(|e| file_error(path, e))?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(|e| file_error(path, e))?
        .ok_or_else(|| file_error(path, "no PEM private key in file"))
}

/// Asks every client for a certificate and accepts any that proves its key;
/// whether it authorizes anything is decided after the handshake by
/// [`ClientIdentity`], against the tenants' rules.
#[derive(Debug)]
struct ClientIdentityVerifier {
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for ClientIdentityVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
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

/// Who a TLS client certificate says the client is.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    pub sha256: [u8; 32],
    pub subject: String,
    pub dns_names: Vec<String>,
    /// The chain verified against `tls.client_ca_file`; names count only then.
    pub chain_verified: bool,
}

impl ClientIdentity {
    /// Reads the identity from the certificates a client presented.
    pub fn from_chain(
        client_ca: Option<&dyn ClientCertVerifier>,
        chain: &[CertificateDer<'_>],
    ) -> Option<ClientIdentity> {
        let leaf = chain.first()?;
        let sha256: [u8; 32] = Sha256::digest(leaf.as_ref()).into();
        let (_, cert) = X509Certificate::from_der(leaf.as_ref()).ok()?;
        let dns_names = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let chain_verified = client_ca.is_some_and(|ca| {
            let (leaf, rest) = (&chain[0], &chain[1..]);
            ca.verify_client_cert(leaf, rest, UnixTime::now()).is_ok()
        });
        Some(ClientIdentity {
            sha256,
            subject: cert.subject().to_string(),
            dns_names,
            chain_verified,
        })
    }

    pub fn fingerprint(&self) -> String {
        hex(&self.sha256)
    }
}

pub use crate::util::hex_upper as hex;

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    fn not_after(cert: &Path) -> i64 {
        let der = CertificateDer::from_pem_file(cert).unwrap();
        let (_, c) = X509Certificate::from_der(&der).unwrap();
        c.validity().not_after.timestamp()
    }

    #[test]
    fn the_generated_certificate_is_renewed_before_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        ensure_self_signed("gw.example", &cert, &key).unwrap();
        let days = (not_after(&cert) - chrono::Utc::now().timestamp()) / 86_400;
        assert!(
            (SELF_SIGNED_DAYS - 1..=SELF_SIGNED_DAYS).contains(&days),
            "{days}"
        );
        let der = CertificateDer::from_pem_file(&cert).unwrap();
        let (_, c) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(c.subject().to_string(), "CN=gw.example");
        // Kept while fresh.
        let before = std::fs::read(&cert).unwrap();
        ensure_self_signed("gw.example", &cert, &key).unwrap();
        assert_eq!(std::fs::read(&cert).unwrap(), before);
        // Replaced when it expires within the renewal window.
        generate_self_signed("gw.example", &cert, &key, 10).unwrap();
        ensure_self_signed("gw.example", &cert, &key).unwrap();
        assert!(not_after(&cert) - chrono::Utc::now().timestamp() > 300 * 86_400);
    }
}
