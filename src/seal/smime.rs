//! S/MIME encryption (RFC 8551) of confidential mail whose recipients'
//! certificates are known: the message's content becomes CMS enveloped
//! data (RFC 5652) that only the holders of the private keys open,
//! whichever hosts carry it.
//!
//! The content is encrypted with AES-256-CBC by the `cms` crate's builder,
//! which also makes the content key; each recipient gets that key by
//! RSAES-OAEP with SHA-256 (RFC 8017, RFC 4055) for an RSA certificate, or
//! by ephemeral-static ECDH with the X9.63 KDF and AES-256 key wrap
//! (RFC 5753, RFC 3394) for a P-256 or P-384 one — the two recipient kinds
//! the builder does not provide. The outer header stays readable, as every
//! S/MIME client leaves it: the next hops route by it and the recipient
//! sorts by it; the `Content-*` fields go inside with the body.

use cms::builder::{
    ContentEncryptionAlgorithm, EnvelopedDataBuilder, RecipientInfoBuilder, RecipientInfoType,
};
use cms::cert::IssuerAndSerialNumber;
use cms::content_info::{CmsVersion, ContentInfo};
use cms::enveloped_data::{
    KeyAgreeRecipientIdentifier, KeyAgreeRecipientInfo, KeyTransRecipientInfo,
    OriginatorIdentifierOrKey, OriginatorPublicKey, RecipientEncryptedKey, RecipientIdentifier,
    RecipientInfo,
};
use der::asn1::{BitString, ObjectIdentifier, OctetString};
use der::{Any, Decode, Encode};
use rsa::pkcs8::DecodePublicKey;
use rsa::rand_core::OsRng;
use sha2::Digest;
use spki::AlgorithmIdentifierOwned;
use zeroize::Zeroizing;

const ID_ENVELOPED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.3");
const ID_RSAES_OAEP: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.7");
const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// dhSinglePass-stdDH-sha256kdf-scheme and -sha384kdf-scheme (RFC 5753 §7.1.4).
const ECDH_SHA256_KDF: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.1.11.1");
const ECDH_SHA384_KDF: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.1.11.2");
const ID_AES256_WRAP: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.45");

#[derive(Debug, thiserror::Error)]
pub enum SmimeError {
    #[error("the certificate does not parse: {0}")]
    Certificate(String),
    #[error("the certificate's key is neither RSA nor EC P-256 or P-384")]
    KeyType,
    #[error("no recipient to encrypt to")]
    NoRecipient,
    #[error("CMS: {0}")]
    Cms(String),
}

/// One recipient certificate, parsed for encryption (judged before, by
/// `qualify::recipient`).
pub struct Recipient {
    id: IssuerAndSerialNumber,
    key: Key,
}

enum Key {
    Rsa(rsa::RsaPublicKey),
    P256(p256::PublicKey),
    P384(p384::PublicKey),
}

impl Recipient {
    pub fn from_der(der: &[u8]) -> Result<Recipient, SmimeError> {
        let cert = x509_cert::Certificate::from_der(der)
            .map_err(|e| SmimeError::Certificate(e.to_string()))?;
        let tbs = &cert.tbs_certificate;
        let spki = tbs
            .subject_public_key_info
            .to_der()
            .map_err(|e| SmimeError::Certificate(e.to_string()))?;
        let key = if let Ok(k) = rsa::RsaPublicKey::from_public_key_der(&spki) {
            Key::Rsa(k)
        } else if let Ok(k) = p256::PublicKey::from_public_key_der(&spki) {
            Key::P256(k)
        } else if let Ok(k) = p384::PublicKey::from_public_key_der(&spki) {
            Key::P384(k)
        } else {
            return Err(SmimeError::KeyType);
        };
        Ok(Recipient {
            id: IssuerAndSerialNumber {
                issuer: tbs.issuer.clone(),
                serial_number: tbs.serial_number.clone(),
            },
            key,
        })
    }
}

/// The message (RFC 5322, CRLF lines) with its content encrypted to every
/// recipient in `to`.
pub fn encrypt(message: &[u8], to: &[Recipient]) -> Result<Vec<u8>, SmimeError> {
    if to.is_empty() {
        return Err(SmimeError::NoRecipient);
    }
    let (outer, inner) = split(message);
    let mut builder =
        EnvelopedDataBuilder::new(None, &inner, ContentEncryptionAlgorithm::Aes256Cbc, None)
            .map_err(cms_error)?;
    for r in to {
        builder
            .add_recipient_info(ForRecipient(r))
            .map_err(cms_error)?;
    }
    let enveloped = builder.build_with_rng(&mut OsRng).map_err(cms_error)?;
    let info = ContentInfo {
        content_type: ID_ENVELOPED_DATA,
        content: Any::encode_from(&enveloped).map_err(der_error)?,
    };
    let der = info.to_der().map_err(der_error)?;

    let mut out = Vec::with_capacity(outer.len() + der.len() * 4 / 3 + 512);
    out.extend_from_slice(&outer);
    out.extend_from_slice(
        b"MIME-Version: 1.0\r\n\
          Content-Type: application/pkcs7-mime; smime-type=enveloped-data;\r\n\tname=\"smime.p7m\"\r\n\
          Content-Transfer-Encoding: base64\r\n\
          Content-Disposition: attachment; filename=\"smime.p7m\"\r\n\
          Content-Description: S/MIME Encrypted Message\r\n\r\n",
    );
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    for line in b64.as_bytes().chunks(76) {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    Ok(out)
}

/// The outer header (every field but `Content-*` and `MIME-Version`) and
/// the inner MIME entity (the `Content-*` fields, the empty line, the body).
fn split(message: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (head, body) = match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => (&message[..i + 2], &message[i + 4..]),
        None if message.starts_with(b"\r\n") => (&message[..0], &message[2..]),
        None => (message, &message[message.len()..]),
    };
    let mut outer = Vec::with_capacity(head.len());
    let mut inner = Vec::with_capacity(body.len() + 256);
    for field in crate::message::header_fields(head) {
        let name = field.split(|&b| b == b':').next().unwrap_or_default();
        let name = String::from_utf8_lossy(name).trim().to_ascii_lowercase();
        if name.starts_with("content-") {
            inner.extend_from_slice(field);
        } else if name != "mime-version" {
            outer.extend_from_slice(field);
        }
    }
    inner.extend_from_slice(b"\r\n");
    inner.extend_from_slice(body);
    (outer, inner)
}

/// The `cms` builder's hook: gives one recipient the content key.
struct ForRecipient<'a>(&'a Recipient);

impl RecipientInfoBuilder for ForRecipient<'_> {
    fn recipient_info_type(&self) -> RecipientInfoType {
        match self.0.key {
            Key::Rsa(_) => RecipientInfoType::Ktri,
            Key::P256(_) | Key::P384(_) => RecipientInfoType::Kari,
        }
    }

    fn recipient_info_version(&self) -> CmsVersion {
        match self.0.key {
            // RFC 5652 §6.2.1: v0 with issuerAndSerialNumber.
            Key::Rsa(_) => CmsVersion::V0,
            // §6.2.2: always v3.
            Key::P256(_) | Key::P384(_) => CmsVersion::V3,
        }
    }

    fn build(&mut self, content_key: &[u8]) -> Result<RecipientInfo, cms::builder::Error> {
        let r = self.0;
        match &r.key {
            Key::Rsa(key) => {
                let padding = rsa::Oaep::new::<sha2::Sha256>();
                let encrypted = key
                    .encrypt(&mut OsRng, padding, content_key)
                    .map_err(|e| builder_error(format!("RSA-OAEP: {e}")))?;
                let params = rsa::pkcs1::RsaOaepParams::new::<sha2::Sha256>();
                Ok(RecipientInfo::Ktri(KeyTransRecipientInfo {
                    version: CmsVersion::V0,
                    rid: RecipientIdentifier::IssuerAndSerialNumber(r.id.clone()),
                    key_enc_alg: AlgorithmIdentifierOwned {
                        oid: ID_RSAES_OAEP,
                        parameters: Some(Any::encode_from(&params).map_err(der_builder_error)?),
                    },
                    enc_key: OctetString::new(encrypted).map_err(der_builder_error)?,
                }))
            }
            Key::P256(key) => {
                let e = p256::ecdh::EphemeralSecret::random(&mut OsRng);
                let z = Zeroizing::new(e.diffie_hellman(key).raw_secret_bytes().to_vec());
                let point = p256::EncodedPoint::from(e.public_key());
                kari(r, &point.to_bytes(), &z, Kdf::Sha256, content_key)
            }
            Key::P384(key) => {
                let e = p384::ecdh::EphemeralSecret::random(&mut OsRng);
                let z = Zeroizing::new(e.diffie_hellman(key).raw_secret_bytes().to_vec());
                let point = p384::EncodedPoint::from(e.public_key());
                kari(r, &point.to_bytes(), &z, Kdf::Sha384, content_key)
            }
        }
    }
}

/// The KDF's hash follows the curve (RFC 5008 §3: SHA-256 with P-256,
/// SHA-384 with P-384).
#[derive(Clone, Copy)]
enum Kdf {
    Sha256,
    Sha384,
}

/// ECC-CMS-SharedInfo (RFC 5753 §7.2): what the key-encryption key is
/// derived for.
#[derive(der::Sequence)]
struct SharedInfo {
    key_info: AlgorithmIdentifierOwned,
    #[asn1(context_specific = "2", tag_mode = "EXPLICIT")]
    supp_pub_info: OctetString,
}

/// A KeyAgreeRecipientInfo: the ephemeral public key `point` (uncompressed),
/// the shared secret `z`, and the content key wrapped under the key derived
/// from them.
fn kari(
    r: &Recipient,
    point: &[u8],
    z: &[u8],
    kdf: Kdf,
    content_key: &[u8],
) -> Result<RecipientInfo, cms::builder::Error> {
    let wrap = AlgorithmIdentifierOwned {
        oid: ID_AES256_WRAP,
        parameters: None,
    };
    let shared = SharedInfo {
        key_info: wrap.clone(),
        // The key-encryption key's length in bits, big-endian.
        supp_pub_info: OctetString::new(256u32.to_be_bytes().to_vec())
            .map_err(der_builder_error)?,
    }
    .to_der()
    .map_err(der_builder_error)?;
    // ANSI X9.63 KDF (SEC 1 §3.6.1): Hash(Z ‖ counter ‖ SharedInfo); one
    // round gives the 32 bytes of an AES-256 key with either hash.
    let counter = 1u32.to_be_bytes();
    let (scheme, digest): (ObjectIdentifier, Vec<u8>) = match kdf {
        Kdf::Sha256 => (
            ECDH_SHA256_KDF,
            sha2::Sha256::new()
                .chain_update(z)
                .chain_update(counter)
                .chain_update(&shared)
                .finalize()
                .to_vec(),
        ),
        Kdf::Sha384 => (
            ECDH_SHA384_KDF,
            sha2::Sha384::new()
                .chain_update(z)
                .chain_update(counter)
                .chain_update(&shared)
                .finalize()
                .to_vec(),
        ),
    };
    let digest = Zeroizing::new(digest);
    let mut kek = Zeroizing::new([0u8; 32]);
    kek.copy_from_slice(&digest[..32]);
    let wrapped = aes_kw::KekAes256::from(*kek)
        .wrap_vec(content_key)
        .map_err(|e| builder_error(format!("AES key wrap: {e}")))?;
    Ok(RecipientInfo::Kari(KeyAgreeRecipientInfo {
        version: CmsVersion::V3,
        originator: OriginatorIdentifierOrKey::OriginatorKey(OriginatorPublicKey {
            // RFC 5753 §7.1.3: parameters absent; the recipient's curve.
            algorithm: AlgorithmIdentifierOwned {
                oid: ID_EC_PUBLIC_KEY,
                parameters: None,
            },
            public_key: BitString::from_bytes(point).map_err(der_builder_error)?,
        }),
        ukm: None,
        key_enc_alg: AlgorithmIdentifierOwned {
            oid: scheme,
            parameters: Some(Any::encode_from(&wrap).map_err(der_builder_error)?),
        },
        recipient_enc_keys: vec![RecipientEncryptedKey {
            rid: KeyAgreeRecipientIdentifier::IssuerAndSerialNumber(r.id.clone()),
            enc_key: OctetString::new(wrapped).map_err(der_builder_error)?,
        }],
    }))
}

fn cms_error(e: cms::builder::Error) -> SmimeError {
    SmimeError::Cms(format!("{e:?}"))
}

fn der_error(e: der::Error) -> SmimeError {
    SmimeError::Cms(e.to_string())
}

fn builder_error(text: String) -> cms::builder::Error {
    cms::builder::Error::Builder(text)
}

fn der_builder_error(e: der::Error) -> cms::builder::Error {
    cms::builder::Error::Asn1(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_fields_go_inside_and_the_rest_stays_outside() {
        let m = b"From: a@x.test\r\nSubject: long\r\n subject\r\nMIME-Version: 1.0\r\n\
                  Content-Type: text/plain;\r\n\tcharset=utf-8\r\n\r\nbody\r\n\r\nmore\r\n";
        let (outer, inner) = split(m);
        assert_eq!(outer, b"From: a@x.test\r\nSubject: long\r\n subject\r\n");
        assert_eq!(
            inner,
            b"Content-Type: text/plain;\r\n\tcharset=utf-8\r\n\r\nbody\r\n\r\nmore\r\n"
        );
        let (outer, inner) = split(b"Subject: none\r\n");
        assert_eq!(
            (outer.as_slice(), inner.as_slice()),
            (&b"Subject: none\r\n"[..], &b"\r\n"[..])
        );
    }

    #[test]
    fn no_recipient_is_an_error() {
        assert!(matches!(
            encrypt(b"Subject: x\r\n\r\nx\r\n", &[]),
            Err(SmimeError::NoRecipient)
        ));
    }
}
