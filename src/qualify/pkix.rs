//! PKIX authentication of a peer: a chain to a trusted root, and the MX host
//! name as the reference identity (RFC 7672 §3.2.3, RFC 8461 §4.2: never the
//! recipient domain). Chain and name are separate checks (`pkix`,
//! `hostname`) so an auditor sees which one failed.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use webpki::{EndEntityCert, KeyUsage};

use super::{Check, CheckName, Status};
use crate::config::RootStore;

/// Trust anchors for PKIX, loaded once.
#[derive(Debug, Clone)]
pub struct Roots {
    anchors: Arc<Vec<TrustAnchor<'static>>>,
    /// What they are, for the evidence: `mozilla`, `system`, or the file.
    pub source: String,
}

#[derive(Debug, thiserror::Error)]
#[error("PKIX roots {source_name}: {message}")]
pub struct RootsError {
    source_name: String,
    message: String,
}

impl Roots {
    pub fn load(store: &RootStore) -> Result<Roots, RootsError> {
        let fail = |source_name: &str, message: String| RootsError {
            source_name: source_name.to_string(),
            message,
        };
        let (anchors, source) = match store {
            RootStore::Mozilla => (webpki_roots::TLS_SERVER_ROOTS.to_vec(), "mozilla".into()),
            RootStore::System => {
                let found = rustls_native_certs::load_native_certs();
                let anchors: Vec<TrustAnchor<'static>> = found
                    .certs
                    .iter()
                    .filter_map(|c| {
                        webpki::anchor_from_trusted_cert(c)
                            .ok()
                            .map(|a| a.to_owned())
                    })
                    .collect();
                if anchors.is_empty() {
                    return Err(fail("system", "no usable CA certificates found".into()));
                }
                (anchors, "system".into())
            }
            RootStore::File(path) => {
                let name = path.display().to_string();
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| fail(&name, e.to_string()))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| fail(&name, e.to_string()))?;
                let anchors = certs
                    .iter()
                    .map(|c| {
                        webpki::anchor_from_trusted_cert(c)
                            .map(|a| a.to_owned())
                            .map_err(|e| fail(&name, format!("not a CA certificate: {e}")))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if anchors.is_empty() {
                    return Err(fail(&name, "no certificates in the file".into()));
                }
                (anchors, name)
            }
        };
        Ok(Roots {
            anchors: Arc::new(anchors),
            source,
        })
    }

    pub fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }
}

/// The `pkix` and `hostname` checks for a presented chain. `names` are the
/// reference identities; one match suffices.
pub fn checks(
    roots: &Roots,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    names: &[String],
    now: UnixTime,
) -> (Check, Check) {
    let algs = crate::qualify::bsi::provider()
        .signature_verification_algorithms
        .all;
    let ee = match EndEntityCert::try_from(end_entity) {
        Ok(ee) => ee,
        Err(e) => {
            let detail = format!("certificate does not parse: {e:?}");
            return (
                Check::new(CheckName::Pkix, Status::Fail, detail.clone()),
                Check::new(CheckName::Hostname, Status::Fail, detail),
            );
        }
    };
    let pkix = match ee.verify_for_usage(
        algs,
        roots.anchors(),
        intermediates,
        now,
        KeyUsage::server_auth(),
        None,
        None,
    ) {
        Ok(path) => Check::new(
            CheckName::Pkix,
            Status::Pass,
            format!(
                "chain of {} to a trusted root ({})",
                path.intermediate_certificates().count() + 1,
                roots.source
            ),
        ),
        Err(e) => Check::new(
            CheckName::Pkix,
            Status::Fail,
            format!("{} (roots: {})", describe(&e), roots.source),
        ),
    };
    (pkix, hostname_check(&ee, names))
}

/// Whether the certificate names one of `names` (DNS names, wildcard rules of RFC 6125).
pub fn hostname_check(ee: &EndEntityCert<'_>, names: &[String]) -> Check {
    for name in names {
        if let Ok(server_name) = ServerName::try_from(name.as_str())
            && ee.verify_is_valid_for_subject_name(&server_name).is_ok()
        {
            return Check::new(
                CheckName::Hostname,
                Status::Pass,
                format!("certificate is valid for {name}"),
            );
        }
    }
    Check::new(
        CheckName::Hostname,
        Status::Fail,
        format!("certificate is not valid for {}", names.join(" or ")),
    )
}

/// webpki errors in words an operator reads.
pub fn describe(e: &webpki::Error) -> String {
    use webpki::Error::*;
    match e {
        CertExpired { .. } => "certificate has expired".into(),
        CertNotValidYet { .. } => "certificate is not valid yet".into(),
        UnknownIssuer => "issuer unknown: no chain to a trusted root".into(),
        InvalidSignatureForPublicKey => "a signature in the chain does not verify".into(),
        UnsupportedSignatureAlgorithmContext(_)
        | UnsupportedSignatureAlgorithmForPublicKeyContext(_) => {
            "the chain uses an unsupported signature algorithm or key".into()
        }
        RequiredEkuNotFoundContext(_) => {
            "certificate is not for TLS servers (extended key usage)".into()
        }
        CaUsedAsEndEntity => "a CA certificate is used as the server certificate".into(),
        other => format!("{other:?}"),
    }
}
