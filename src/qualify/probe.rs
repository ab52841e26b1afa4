//! What a peer offers when rustls cannot talk to it (TLS 1.0/1.1 only,
//! CBC-only, RSA key transport only, an RSA key below 2048 bits): after
//! STARTTLS, one TLS 1.2 ClientHello that also offers the old suites, the
//! ServerHello and (below TLS 1.3 the certificate travels in clear) the
//! Certificate message are read, then the connection is closed. No key is
//! ever exchanged: nothing can be delivered over a probe.
//!
//! TLS records are built and parsed with rusticata's `tls-parser`.

use std::time::Duration;

use tls_parser::{
    NamedGroup, SNIType, Serialize, TlsCipherAu, TlsCipherEnc, TlsCipherSuite, TlsCipherSuiteID,
    TlsClientHelloContents, TlsCompressionID, TlsExtension, TlsMessage, TlsMessageHandshake,
    TlsPlaintext, TlsRecordHeader, TlsRecordType, TlsVersion,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{PeerKey, TlsFacts};

/// What the peer answered to the probe's ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// `TLSv1.0` … `TLSv1.2`.
    pub version: String,
    /// IANA name of the chosen suite.
    pub cipher_suite: String,
    pub peer_key: Option<PeerKey>,
}

impl Offer {
    /// In words, for the verdict: "TLSv1.0 with TLS_RSA_WITH_AES_128_CBC_SHA, RSA 2048 bits".
    pub fn describe(&self) -> String {
        let key = self
            .peer_key
            .as_ref()
            .map(|k| format!(", {k}"))
            .unwrap_or_default();
        format!("{} with {}{key}", self.version, self.cipher_suite)
    }

    /// As TLS facts, so the profile checks can judge it like a handshake.
    pub fn facts(&self) -> TlsFacts {
        TlsFacts {
            version: self.version.clone(),
            cipher_suite: self.cipher_suite.clone(),
            kx_group: None,
            peer_key: self.peer_key.clone(),
            chain: Vec::new(),
            ocsp_stapled: false,
        }
    }
}

/// Why a probe found out nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("connecting for the probe: {0}")]
    Connect(String),
    #[error("no answer within {0}s")]
    Timeout(u64),
    #[error("connection closed during the handshake: {0}")]
    Closed(String),
    #[error(
        "the peer sent alert {0} to a ClientHello offering TLS 1.0 to 1.2 with every common suite"
    )]
    Alert(&'static str),
    #[error("unexpected TLS record type {0}")]
    RecordType(u8),
    #[error("handshake too large")]
    TooLarge,
    #[error("no ServerHello")]
    NoServerHello,
    #[error("building the ClientHello: {0}")]
    Build(String),
}

/// Largest handshake data read before giving up.
const MAX_HANDSHAKE: usize = 256 * 1024;

/// Sends the probe ClientHello on `tcp` (just after the peer's 220 to
/// STARTTLS) and reads what the peer chose.
pub async fn probe(mut tcp: TcpStream, host: &str, limit: Duration) -> Result<Offer, ProbeError> {
    let hello = client_hello(host)?;
    tokio::time::timeout(limit, async {
        tcp.write_all(&hello)
            .await
            .map_err(|e| ProbeError::Closed(e.to_string()))?;
        read_offer(&mut tcp).await
    })
    .await
    .map_err(|_| ProbeError::Timeout(limit.as_secs()))?
}

/// Reads records until the ServerHello and, below TLS 1.3, the Certificate
/// have come, or an alert.
async fn read_offer(tcp: &mut TcpStream) -> Result<Offer, ProbeError> {
    let mut handshake = Vec::new();
    let mut offer: Option<(String, String)> = None;
    let mut key = None;
    loop {
        let mut header = [0u8; 5];
        tcp.read_exact(&mut header)
            .await
            .map_err(|e| ProbeError::Closed(e.to_string()))?;
        let len = u16::from_be_bytes([header[3], header[4]]) as usize;
        let mut body = vec![0u8; len];
        tcp.read_exact(&mut body)
            .await
            .map_err(|e| ProbeError::Closed(e.to_string()))?;
        match TlsRecordType(header[0]) {
            TlsRecordType::Alert => {
                return Err(ProbeError::Alert(
                    body.get(1).map(|c| alert_name(*c)).unwrap_or("?"),
                ));
            }
            TlsRecordType::Handshake => handshake.extend_from_slice(&body),
            other => return Err(ProbeError::RecordType(other.0)),
        }
        if handshake.len() > MAX_HANDSHAKE {
            return Err(ProbeError::TooLarge);
        }
        // Parse the complete messages gathered so far.
        let mut rest: &[u8] = &handshake;
        while let Ok((next, msg)) = tls_parser::parse_tls_message_handshake(rest) {
            rest = next;
            match msg {
                TlsMessage::Handshake(TlsMessageHandshake::ServerHello(hello)) => {
                    offer = Some((version_name(hello.version), suite_name(hello.cipher)));
                }
                TlsMessage::Handshake(TlsMessageHandshake::Certificate(c)) => {
                    key = c
                        .cert_chain
                        .first()
                        .and_then(|cert| crate::qualify::facts::peer_key_of(cert.data));
                }
                TlsMessage::Handshake(TlsMessageHandshake::ServerDone(_)) => {
                    let (version, cipher_suite) = offer.ok_or(ProbeError::NoServerHello)?;
                    return Ok(Offer {
                        version,
                        cipher_suite,
                        peer_key: key,
                    });
                }
                _ => {}
            }
        }
    }
}

/// A TLS 1.2 ClientHello offering every suite with a certificate-based
/// authentication that tls-parser knows, except NULL and export ciphers.
fn client_hello(host: &str) -> Result<Vec<u8>, ProbeError> {
    let mut suites: Vec<&TlsCipherSuite> = tls_parser::CIPHERS
        .values()
        .filter(|s| {
            matches!(
                s.au,
                TlsCipherAu::Rsa | TlsCipherAu::Ecdsa | TlsCipherAu::Dss
            )
        })
        .filter(|s| !matches!(s.enc, TlsCipherEnc::Null) && s.enc_size >= 112)
        .filter(|s| !s.name.contains("EXPORT"))
        .collect();
    // Stable and preferring what a good server would pick anyway.
    suites.sort_by_key(|s| (!s.name.contains("GCM"), !s.name.contains("ECDHE"), s.id.0));
    let ciphers: Vec<TlsCipherSuiteID> = suites.iter().map(|s| s.id).collect();

    // tls-parser serializes only some extensions; the two others are built here.
    let mut ext = Vec::new();
    for e in [
        TlsExtension::SNI(vec![(SNIType::HostName, host.as_bytes())]),
        TlsExtension::EllipticCurves(vec![
            NamedGroup::Secp256r1,
            NamedGroup::Secp384r1,
            NamedGroup::Secp521r1,
            NamedGroup::EcdhX25519,
            NamedGroup::Ffdhe2048,
            NamedGroup::Ffdhe3072,
        ]),
    ] {
        ext = cookie_factory::gen_simple(tls_parser::gen_tls_extension(&e), ext)
            .map_err(|e| ProbeError::Build(format!("{e:?}")))?;
    }
    // ec_point_formats: uncompressed.
    ext.extend_from_slice(&[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
    // signature_algorithms: ECDSA, RSA-PSS, RSA PKCS#1 with SHA-2, then SHA-1.
    let schemes: [u16; 11] = [
        0x0403, 0x0503, 0x0603, 0x0804, 0x0805, 0x0806, 0x0401, 0x0501, 0x0601, 0x0203, 0x0201,
    ];
    let list: Vec<u8> = schemes.iter().flat_map(|s| s.to_be_bytes()).collect();
    ext.extend_from_slice(&[0x00, 0x0d]);
    ext.extend_from_slice(&((list.len() + 2) as u16).to_be_bytes());
    ext.extend_from_slice(&(list.len() as u16).to_be_bytes());
    ext.extend_from_slice(&list);
    let random: [u8; 32] = rand::random();
    let hello = TlsClientHelloContents::new(
        TlsVersion::Tls12.0,
        &random,
        None,
        ciphers,
        vec![TlsCompressionID(0)],
        Some(&ext),
    );
    let record = TlsPlaintext {
        hdr: TlsRecordHeader {
            record_type: TlsRecordType::Handshake,
            version: TlsVersion::Tls10,
            len: 0,
        },
        msg: vec![TlsMessage::Handshake(TlsMessageHandshake::ClientHello(
            hello,
        ))],
    };
    record
        .serialize()
        .map_err(|e| ProbeError::Build(format!("{e:?}")))
}

fn version_name(v: TlsVersion) -> String {
    match v {
        TlsVersion::Ssl30 => "SSLv3".into(),
        TlsVersion::Tls10 => "TLSv1.0".into(),
        TlsVersion::Tls11 => "TLSv1.1".into(),
        TlsVersion::Tls12 => "TLSv1.2".into(),
        TlsVersion::Tls13 => "TLSv1.3".into(),
        other => format!("{other}"),
    }
}

fn suite_name(id: TlsCipherSuiteID) -> String {
    TlsCipherSuite::from_id(id.0)
        .map(|s| s.name.to_string())
        .unwrap_or_else(|| format!("suite 0x{:04X}", id.0))
}

fn alert_name(code: u8) -> &'static str {
    match code {
        40 => "handshake_failure",
        47 => "illegal_parameter",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        112 => "unrecognized_name",
        _ => "other",
    }
}
