//! Revocation of the peer's certificate: an OCSP staple if the peer sent
//! one, else a query to the OCSP responder named in the certificate, else
//! the CRL from its distribution points. The outcome is the `revocation`
//! check: good (pass), revoked (fail), unknown or unavailable (error), with
//! the source and the times of the answer.
//!
//! OCSP messages are parsed with `x509-ocsp` (RustCrypto's DER types, the
//! client side of RFC 6960); signatures are checked with the same
//! rustls/webpki algorithms as the handshake, and a delegated responder's
//! certificate with webpki (issued by the certificate's issuer, with
//! id-kp-OCSPSigning). CRLs are checked by rustls-webpki, which verifies
//! the CRL's signature and the serial; we only fetch and cache them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use der::asn1::{AnyRef, OctetString};
use der::{Decode, Encode, Reader, SliceReader};
use rustls::pki_types::{CertificateDer, TrustAnchor, UnixTime};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use webpki::{EndEntityCert, KeyUsage};
use x509_cert::serial_number::SerialNumber;
use x509_ocsp::{
    BasicOcspResponse, CertId, CertStatus, OcspRequest, OcspResponse, OcspResponseStatus, Request,
    SingleResponse, TbsRequest, Version,
};
use x509_parser::prelude::{
    DistributionPointName, FromDer, GeneralName, ParsedExtension, X509Certificate,
};

use super::pkix::Roots;
use super::{Check, CheckName, Status};
use crate::config::RevocationConfig;
use crate::dns::Dns;
use crate::util::{error_chain, rfc3339};

const OID_SHA1: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const OID_SHA256: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const OID_OCSP_BASIC: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.1");
/// id-kp-OCSPSigning (1.3.6.1.5.5.7.3.9), DER value bytes.
const EKU_OCSP_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x09];
/// Clock skew tolerated on thisUpdate/nextUpdate.
const SKEW: i64 = 300;
/// How long an answer without nextUpdate is reused.
const DEFAULT_TTL: i64 = 3600;

/// What is known about a certificate's revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Good,
    Revoked {
        at: String,
        reason: Option<String>,
    },
    /// The responder does not know the certificate.
    Unknown,
    /// No answer could be had or trusted.
    Unavailable(String),
}

/// Where an answer came from, and when it is valid.
#[derive(Debug, Clone)]
struct Answer {
    outcome: Outcome,
    source: String,
    this_update: Option<i64>,
    next_update: Option<i64>,
}

impl Answer {
    fn check(&self) -> Check {
        let times = match (self.this_update, self.next_update) {
            (Some(t), Some(n)) => {
                format!(", this update {}, next update {}", rfc3339(t), rfc3339(n))
            }
            (Some(t), None) => format!(", this update {}", rfc3339(t)),
            _ => String::new(),
        };
        let (status, what) = match &self.outcome {
            Outcome::Good => (Status::Pass, "good".to_string()),
            Outcome::Revoked { at, reason } => (
                Status::Fail,
                format!(
                    "revoked at {at}{}",
                    reason
                        .as_ref()
                        .map(|r| format!(", reason {r}"))
                        .unwrap_or_default()
                ),
            ),
            Outcome::Unknown => (
                Status::Error,
                "unknown: the responder does not know the certificate".to_string(),
            ),
            Outcome::Unavailable(why) => (Status::Error, format!("unavailable: {why}")),
        };
        Check::new(
            CheckName::Revocation,
            status,
            format!("{what} ({}{times})", self.source),
        )
    }
}

/// The issuer of the certificate being checked, as a trust anchor (an
/// intermediate from the presented chain, or a root of the store).
struct Issuer {
    anchor: TrustAnchor<'static>,
    /// Full DER of the issuer's Name and SubjectPublicKeyInfo.
    name: Vec<u8>,
    spki: Vec<u8>,
}

struct Cached {
    answer: Answer,
    until: i64,
}

#[derive(Clone)]
struct CachedCrl {
    list: Arc<webpki::CertRevocationList<'static>>,
    this_update: Option<i64>,
    next_update: Option<i64>,
    fetched: i64,
}

/// Why a revocation answer could not be had or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevocationError {
    /// The HTTP client could not be set up.
    #[error("{0}")]
    Setup(String),
    /// Fetching an OCSP answer or a CRL over HTTP.
    #[error("{0}")]
    Http(String),
    /// The OCSP response is not one we can rely on.
    #[error("{0}")]
    Ocsp(String),
    /// The CRL is not one we can rely on.
    #[error("{0}")]
    Crl(String),
    /// A DER structure does not parse.
    #[error("{0}")]
    Der(String),
}

/// Revocation checking with its HTTP client and caches; shared by all
/// delivery connections.
pub struct Revocation {
    http: reqwest::Client,
    max_ocsp_size: usize,
    max_crl_size: usize,
    ocsp: Mutex<HashMap<Vec<u8>, Cached>>,
    crls: Mutex<HashMap<String, CachedCrl>>,
}

impl Revocation {
    pub fn new(config: &RevocationConfig, dns: Dns) -> Result<Revocation, RevocationError> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(
                rustls::ClientConfig::builder_with_provider(crate::qualify::bsi::provider())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| RevocationError::Setup(e.to_string()))?
                    .with_root_certificates(rustls::RootCertStore {
                        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                    })
                    .with_no_client_auth(),
            )
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .no_proxy()
            .dns_resolver(Arc::new(super::mta_sts::Resolver(dns)))
            .build()
            .map_err(|e| RevocationError::Setup(format!("HTTP client: {e}")))?;
        Ok(Revocation {
            http,
            max_ocsp_size: config.max_ocsp_size,
            max_crl_size: config.max_crl_size,
            ocsp: Mutex::new(HashMap::new()),
            crls: Mutex::new(HashMap::new()),
        })
    }

    /// The `revocation` check of a chain that PKIX already accepted, and
    /// until when its answer holds (the OCSP or CRL nextUpdate), if it says.
    pub async fn check(
        &self,
        chain: &[CertificateDer<'static>],
        staple: &[u8],
        roots: &Roots,
        now: i64,
    ) -> (Check, Option<i64>) {
        let a = self.answer(chain, staple, roots, now).await;
        (a.check(), a.next_update)
    }

    async fn answer(
        &self,
        chain: &[CertificateDer<'static>],
        staple: &[u8],
        roots: &Roots,
        now: i64,
    ) -> Answer {
        let Some(ee_der) = chain.first() else {
            return unavailable("none", "no certificate");
        };
        let ee = match X509Certificate::from_der(ee_der) {
            Ok((_, c)) => c,
            Err(e) => return unavailable("none", &format!("certificate does not parse: {e}")),
        };
        let Some(issuer) = find_issuer(&ee, &chain[1..], roots) else {
            return unavailable(
                "none",
                "the certificate's issuer is not in the chain or the roots",
            );
        };
        let serial = ee.raw_serial().to_vec();

        let mut why = Vec::new();
        if !staple.is_empty() {
            match verify(staple, &issuer, &serial, now) {
                Ok(found) => return answer("OCSP staple", found),
                Err(e) => why.push(format!("OCSP staple rejected: {e}")),
            }
        }
        let (ocsp_urls, crl_urls) = urls(&ee);
        for url in ocsp_urls.iter().filter(|u| u.starts_with("http")) {
            match self.query(url, &issuer, &serial, now).await {
                Ok(a) if a.outcome != Outcome::Unknown || crl_urls.is_empty() => return a,
                Ok(_) => why.push(format!("OCSP {url}: status unknown")),
                Err(e) => why.push(format!("OCSP {url}: {e}")),
            }
        }
        if ocsp_urls.is_empty() && staple.is_empty() {
            why.push("no OCSP responder in the certificate".into());
        }
        for url in crl_urls.iter().filter(|u| u.starts_with("http")) {
            match self.crl(url, chain, &serial, roots, now).await {
                Ok(a) => return a,
                Err(e) => why.push(format!("CRL {url}: {e}")),
            }
        }
        if crl_urls.is_empty() {
            why.push("no CRL distribution point".into());
        }
        Answer {
            outcome: Outcome::Unavailable(why.join("; ")),
            source: "staple, OCSP and CRL tried".into(),
            this_update: None,
            next_update: None,
        }
    }

    /// Asks the responder, or reuses its answer until its nextUpdate.
    async fn query(
        &self,
        url: &str,
        issuer: &Issuer,
        serial: &[u8],
        now: i64,
    ) -> Result<Answer, RevocationError> {
        let cert_id =
            cert_id(issuer, serial).map_err(|e| RevocationError::Ocsp(format!("CertID: {e}")))?;
        let key = cert_id
            .to_der()
            .map_err(|e| RevocationError::Ocsp(e.to_string()))?;
        if let Ok(cache) = self.ocsp.lock()
            && let Some(c) = cache.get(&key)
            && c.until > now
        {
            crate::metrics::revocation_cache("ocsp", true);
            let mut a = c.answer.clone();
            a.source = format!("{} (cached)", a.source);
            return Ok(a);
        }
        crate::metrics::revocation_cache("ocsp", false);
        let request = OcspRequest {
            tbs_request: TbsRequest {
                version: Version::V1,
                requestor_name: None,
                request_list: vec![Request {
                    req_cert: cert_id,
                    single_request_extensions: None,
                }],
                request_extensions: None,
            },
            optional_signature: None,
        }
        .to_der()
        .map_err(|e| RevocationError::Ocsp(e.to_string()))?;
        let body = self
            .fetch(
                self.http
                    .post(url)
                    .header(reqwest::header::CONTENT_TYPE, "application/ocsp-request")
                    .body(request),
                self.max_ocsp_size,
            )
            .await?;
        let answer = answer(&format!("OCSP {url}"), verify(&body, issuer, serial, now)?);
        let until = answer.next_update.unwrap_or(now + DEFAULT_TTL);
        if let Ok(mut cache) = self.ocsp.lock() {
            cache.retain(|_, c| c.until > now);
            cache.insert(
                key,
                Cached {
                    answer: answer.clone(),
                    until,
                },
            );
        }
        Ok(answer)
    }

    /// Checks the certificate against the CRL at `url` (fetched, or cached
    /// until its nextUpdate); webpki verifies the CRL's signature and scope.
    async fn crl(
        &self,
        url: &str,
        chain: &[CertificateDer<'static>],
        serial: &[u8],
        roots: &Roots,
        now: i64,
    ) -> Result<Answer, RevocationError> {
        let cached = self.crls.lock().ok().and_then(|c| {
            c.get(url)
                .filter(|crl| crl.next_update.unwrap_or(crl.fetched + DEFAULT_TTL) > now)
                .cloned()
        });
        crate::metrics::revocation_cache("crl", cached.is_some());
        let (crl, source) = match cached {
            Some(crl) => (crl, format!("CRL {url} (cached)")),
            None => {
                let body = self.fetch(self.http.get(url), self.max_crl_size).await?;
                let list = webpki::OwnedCertRevocationList::from_der(&body)
                    .map_err(|e| RevocationError::Crl(format!("CRL does not parse: {e:?}")))?;
                let times =
                    x509_parser::revocation_list::CertificateRevocationList::from_der(&body)
                        .map(|(_, c)| {
                            (
                                Some(c.last_update().timestamp()),
                                c.next_update().map(|t| t.timestamp()),
                            )
                        })
                        .unwrap_or((None, None));
                let crl = CachedCrl {
                    list: Arc::new(webpki::CertRevocationList::Owned(list)),
                    this_update: times.0,
                    next_update: times.1,
                    fetched: now,
                };
                if let Ok(mut cache) = self.crls.lock() {
                    cache.insert(url.to_string(), crl.clone());
                }
                (crl, format!("CRL {url}"))
            }
        };
        // Parsed once per fetch; a large CRL is not copied per connection.
        let list: &webpki::CertRevocationList<'static> = &crl.list;
        let lists = [list];
        let options = webpki::RevocationOptionsBuilder::new(&lists)
            .map_err(|_| RevocationError::Crl("no CRL".into()))?
            .with_depth(webpki::RevocationCheckDepth::EndEntity)
            .with_status_policy(webpki::UnknownStatusPolicy::Deny)
            .with_expiration_policy(webpki::ExpirationPolicy::Enforce)
            .build();
        let ee = EndEntityCert::try_from(&chain[0])
            .map_err(|e| RevocationError::Crl(format!("{e:?}")))?;
        let algs = crate::qualify::bsi::provider()
            .signature_verification_algorithms
            .all;
        let outcome = match ee.verify_for_usage(
            algs,
            roots.anchors(),
            &chain[1..],
            unix_time(now),
            KeyUsage::server_auth(),
            Some(options),
            None,
        ) {
            Ok(_) => Outcome::Good,
            Err(webpki::Error::CertRevoked) => {
                let entry = list.find_serial(serial).ok().flatten();
                Outcome::Revoked {
                    at: entry
                        .as_ref()
                        .map(|e| rfc3339(e.revocation_date.as_secs() as i64))
                        .unwrap_or_else(|| "an unknown time".into()),
                    reason: entry.and_then(|e| e.reason_code).map(|r| format!("{r:?}")),
                }
            }
            Err(webpki::Error::UnknownRevocationStatus) => {
                return Err(RevocationError::Crl(
                    "the CRL does not cover this certificate".into(),
                ));
            }
            Err(webpki::Error::CrlExpired { .. }) => {
                return Err(RevocationError::Crl("the CRL has expired".into()));
            }
            Err(e) => {
                return Err(RevocationError::Crl(format!(
                    "CRL not usable: {}",
                    super::pkix::describe(&e)
                )));
            }
        };
        Ok(Answer {
            outcome,
            source,
            this_update: crl.this_update,
            next_update: crl.next_update,
        })
    }

    /// GET or POST with a size limit; errors in words.
    async fn fetch(
        &self,
        request: reqwest::RequestBuilder,
        limit: usize,
    ) -> Result<Vec<u8>, RevocationError> {
        let mut response = request
            .send()
            .await
            .map_err(|e| RevocationError::Http(error_chain(&e)))?;
        if !response.status().is_success() {
            return Err(RevocationError::Http(format!("HTTP {}", response.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| RevocationError::Http(error_chain(&e)))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > limit {
                return Err(RevocationError::Http(format!(
                    "answer larger than {limit} bytes"
                )));
            }
        }
        Ok(body)
    }
}

fn answer(
    source: &str,
    (outcome, this_update, next_update): (Outcome, i64, Option<i64>),
) -> Answer {
    Answer {
        outcome,
        source: source.to_string(),
        this_update: Some(this_update),
        next_update,
    }
}

fn unavailable(source: &str, why: &str) -> Answer {
    Answer {
        outcome: Outcome::Unavailable(why.to_string()),
        source: source.to_string(),
        this_update: None,
        next_update: None,
    }
}

/// Verifies an OCSP response (staple or queried) for the certificate with
/// `serial` issued by `issuer`: status successful, signature by the issuer
/// or a delegated responder, a matching CertID, current times. Returns the
/// status with thisUpdate and nextUpdate.
pub fn verify_response(
    der: &[u8],
    issuer_der: &CertificateDer<'_>,
    serial: &[u8],
    now: i64,
) -> Result<(Outcome, i64, Option<i64>), RevocationError> {
    let issuer = issuer_from_cert(issuer_der).ok_or(RevocationError::Ocsp(
        "issuer certificate does not parse".into(),
    ))?;
    verify(der, &issuer, serial, now)
}

fn verify(
    der: &[u8],
    issuer: &Issuer,
    serial: &[u8],
    now: i64,
) -> Result<(Outcome, i64, Option<i64>), RevocationError> {
    let response = OcspResponse::from_der(der)
        .map_err(|e| RevocationError::Ocsp(format!("not an OCSP response: {e}")))?;
    if response.response_status != OcspResponseStatus::Successful {
        return Err(RevocationError::Ocsp(format!(
            "responder says {:?}",
            response.response_status
        )));
    }
    let bytes = response
        .response_bytes
        .ok_or(RevocationError::Ocsp("no response bytes".into()))?;
    if bytes.response_type != OID_OCSP_BASIC {
        return Err(RevocationError::Ocsp(format!(
            "unsupported response type {}",
            bytes.response_type
        )));
    }
    let basic_der = bytes.response.as_bytes();
    let basic = BasicOcspResponse::from_der(basic_der)
        .map_err(|e| RevocationError::Ocsp(format!("basic response: {e}")))?;
    verify_signature(basic_der, &basic, issuer, now)?;

    let single = basic
        .tbs_response_data
        .responses
        .iter()
        .find(|r| matches_cert(r, issuer, serial))
        .ok_or(RevocationError::Ocsp(
            "no answer for this certificate in the response (CertID does not match)".into(),
        ))?;
    let this_update = seconds(&single.this_update);
    let next_update = single.next_update.as_ref().map(seconds);
    if this_update > now + SKEW {
        return Err(RevocationError::Ocsp(format!(
            "thisUpdate {} is in the future",
            rfc3339(this_update)
        )));
    }
    if let Some(next) = next_update
        && next < now - SKEW
    {
        return Err(RevocationError::Ocsp(format!(
            "expired: nextUpdate {} has passed",
            rfc3339(next)
        )));
    }
    let outcome = match &single.cert_status {
        CertStatus::Good(_) => Outcome::Good,
        CertStatus::Revoked(info) => Outcome::Revoked {
            at: rfc3339(seconds(&info.revocation_time)),
            reason: info.revocation_reason.map(|r| format!("{r:?}")),
        },
        CertStatus::Unknown(_) => Outcome::Unknown,
    };
    Ok((outcome, this_update, next_update))
}

/// The signature over tbsResponseData, by the issuer itself or by a
/// responder certificate the issuer gave id-kp-OCSPSigning (RFC 6960 §4.2.2.2).
fn verify_signature(
    basic_der: &[u8],
    basic: &BasicOcspResponse,
    issuer: &Issuer,
    now: i64,
) -> Result<(), RevocationError> {
    // The signed bytes exactly as received: the first element of the sequence.
    let outer = AnyRef::from_der(basic_der).map_err(|e| RevocationError::Ocsp(e.to_string()))?;
    let mut reader =
        SliceReader::new(outer.value()).map_err(|e| RevocationError::Ocsp(e.to_string()))?;
    let tbs = reader
        .tlv_bytes()
        .map_err(|e| RevocationError::Ocsp(e.to_string()))?;

    let algs = crate::qualify::bsi::provider()
        .signature_verification_algorithms
        .all;
    let sig_alg = contents(
        &basic
            .signature_algorithm
            .to_der()
            .map_err(|e| RevocationError::Ocsp(e.to_string()))?,
    )?;
    let signature = basic.signature.raw_bytes();
    let time = unix_time(now);

    let mut signers: Vec<(Vec<u8>, &str)> = Vec::new();
    for cert in basic.certs.iter().flatten() {
        let der = cert
            .to_der()
            .map_err(|e| RevocationError::Ocsp(e.to_string()))?;
        let spki = cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|e| RevocationError::Ocsp(e.to_string()))?;
        if spki == issuer.spki {
            continue;
        }
        let responder = CertificateDer::from(der.as_slice());
        let ee = EndEntityCert::try_from(&responder)
            .map_err(|e| RevocationError::Ocsp(format!("{e:?}")))?;
        ee.verify_for_usage(
            algs,
            std::slice::from_ref(&issuer.anchor),
            &[],
            time,
            KeyUsage::required(EKU_OCSP_SIGNING),
            None,
            None,
        )
        .map_err(|e| {
            RevocationError::Ocsp(format!(
                "the responder's certificate is not a delegated OCSP signer of the issuer: {}",
                super::pkix::describe(&e)
            ))
        })?;
        signers.push((spki, "delegated responder"));
    }
    signers.push((issuer.spki.clone(), "issuer"));

    for (spki_der, _who) in &signers {
        let spki = spki::SubjectPublicKeyInfoRef::from_der(spki_der)
            .map_err(|e| RevocationError::Ocsp(e.to_string()))?;
        let key_alg = contents(
            &spki
                .algorithm
                .to_der()
                .map_err(|e| RevocationError::Ocsp(e.to_string()))?,
        )?;
        let key = spki.subject_public_key.raw_bytes();
        for alg in algs {
            if alg.signature_alg_id().as_ref() == sig_alg.as_slice()
                && alg.public_key_alg_id().as_ref() == key_alg.as_slice()
                && alg.verify_signature(key, tbs, signature).is_ok()
            {
                return Ok(());
            }
        }
    }
    Err(RevocationError::Ocsp(
        "the response's signature does not verify with the issuer's or a delegated responder's key"
            .into(),
    ))
}

fn matches_cert(r: &SingleResponse, issuer: &Issuer, serial: &[u8]) -> bool {
    let id = &r.cert_id;
    let Ok(key) = spki_key(&issuer.spki) else {
        return false;
    };
    let (name_hash, key_hash): (Vec<u8>, Vec<u8>) = if id.hash_algorithm.oid == OID_SHA1 {
        (
            Sha1::digest(&issuer.name).to_vec(),
            Sha1::digest(&key).to_vec(),
        )
    } else if id.hash_algorithm.oid == OID_SHA256 {
        (
            Sha256::digest(&issuer.name).to_vec(),
            Sha256::digest(&key).to_vec(),
        )
    } else {
        return false;
    };
    id.issuer_name_hash.as_bytes() == name_hash
        && id.issuer_key_hash.as_bytes() == key_hash
        && id.serial_number.as_bytes() == serial
}

fn cert_id(issuer: &Issuer, serial: &[u8]) -> Result<CertId, der::Error> {
    let key = spki_key(&issuer.spki)?;
    Ok(CertId {
        hash_algorithm: spki::AlgorithmIdentifierOwned {
            oid: OID_SHA1,
            parameters: Some(der::asn1::Null.into()),
        },
        issuer_name_hash: OctetString::new(Sha1::digest(&issuer.name).to_vec())?,
        issuer_key_hash: OctetString::new(Sha1::digest(&key).to_vec())?,
        serial_number: SerialNumber::new(serial)?,
    })
}

/// The subjectPublicKey bits of an SPKI (what OCSP's issuerKeyHash hashes).
fn spki_key(spki_der: &[u8]) -> Result<Vec<u8>, der::Error> {
    let spki = spki::SubjectPublicKeyInfoRef::from_der(spki_der)?;
    Ok(spki.subject_public_key.raw_bytes().to_vec())
}

/// The issuer of `ee`: the presented intermediate whose subject is the
/// certificate's issuer, else such a root.
fn find_issuer(
    ee: &X509Certificate<'_>,
    intermediates: &[CertificateDer<'static>],
    roots: &Roots,
) -> Option<Issuer> {
    let want = ee.issuer().as_raw();
    for cert in intermediates {
        if let Some(issuer) = issuer_from_cert(cert)
            && issuer.name == want
        {
            return Some(issuer);
        }
    }
    roots
        .anchors()
        .iter()
        .map(|a| issuer_from_anchor(a.clone()))
        .find(|i| i.name == want)
}

fn issuer_from_cert(der: &CertificateDer<'_>) -> Option<Issuer> {
    let anchor = webpki::anchor_from_trusted_cert(der).ok()?.to_owned();
    Some(issuer_from_anchor(anchor))
}

fn issuer_from_anchor(anchor: TrustAnchor<'static>) -> Issuer {
    Issuer {
        name: sequence(anchor.subject.as_ref()),
        spki: sequence(anchor.subject_public_key_info.as_ref()),
        anchor,
    }
}

/// DER SEQUENCE around `contents` (webpki keeps names and keys without it).
fn sequence(contents: &[u8]) -> Vec<u8> {
    let mut out = vec![0x30];
    let len = contents.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(contents);
    out
}

/// The contents of a DER TLV (what pki_types' AlgorithmIdentifier holds).
fn contents(tlv: &[u8]) -> Result<Vec<u8>, RevocationError> {
    AnyRef::from_der(tlv)
        .map(|a| a.value().to_vec())
        .map_err(|e| RevocationError::Der(e.to_string()))
}

/// OCSP responder and CRL URLs of a certificate.
fn urls(cert: &X509Certificate<'_>) -> (Vec<String>, Vec<String>) {
    let mut ocsp = Vec::new();
    let mut crl = Vec::new();
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::AuthorityInfoAccess(aia) => {
                for desc in &aia.accessdescs {
                    if desc.access_method.to_id_string() == "1.3.6.1.5.5.7.48.1"
                        && let GeneralName::URI(u) = desc.access_location
                    {
                        ocsp.push(u.to_string());
                    }
                }
            }
            ParsedExtension::CRLDistributionPoints(points) => {
                for point in points.iter() {
                    if let Some(DistributionPointName::FullName(names)) = &point.distribution_point
                    {
                        for name in names {
                            if let GeneralName::URI(u) = name {
                                crl.push(u.to_string());
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    (ocsp, crl)
}

fn unix_time(now: i64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(now.max(0) as u64))
}

fn seconds(t: &x509_ocsp::OcspGeneralizedTime) -> i64 {
    t.0.to_unix_duration().as_secs() as i64
}
