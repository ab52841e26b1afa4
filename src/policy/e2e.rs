//! Content that is already end-to-end encrypted: S/MIME enveloped data,
//! PGP/MIME, and inline PGP armour (a weaker signal: a text body can quote
//! armour it is not). Only the message's own top level counts; an
//! encrypted attachment inside a readable message does not make the
//! message encrypted, and a signature alone encrypts nothing.

use mail_parser::{MessageParser, MimeHeaders};

pub use crate::message::Content;

/// DER of the CMS content types (RFC 5652 §6.1, RFC 5083 §1.1, §5.1).
const ENVELOPED_DATA: &[u8] = &[
    0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x07, 0x03,
];
const AUTH_ENVELOPED_DATA: &[u8] = &[
    0x06, 0x0B, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x09, 0x10, 0x01, 0x17,
];
const SIGNED_DATA: &[u8] = &[
    0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x07, 0x02,
];

/// What the content is, and the evidence in words (`None`: nothing to say).
pub fn detect(raw: &[u8]) -> (Content, Option<String>) {
    let parser = MessageParser::default();
    let Some(headers) = parser.parse_headers(raw) else {
        return (Content::Plain, None);
    };
    let Some(ct) = headers.content_type() else {
        return (Content::Plain, None);
    };
    let ctype = ct.ctype().to_ascii_lowercase();
    let subtype = ct.subtype().unwrap_or_default().to_ascii_lowercase();
    let attr = |name: &str| ct.attribute(name).unwrap_or_default().to_ascii_lowercase();
    let shown = format!("{ctype}/{subtype}");
    match (ctype.as_str(), subtype.as_str()) {
        ("application", "pkcs7-mime" | "x-pkcs7-mime") => {
            let smime_type = attr("smime-type");
            match smime_type.as_str() {
                "enveloped-data" | "authenveloped-data" => (
                    Content::Smime,
                    Some(format!("S/MIME {smime_type} ({shown})")),
                ),
                "signed-data" | "certs-only" => (
                    Content::SignedOnly,
                    Some(format!(
                        "S/MIME {smime_type} ({shown}): signed, not encrypted"
                    )),
                ),
                // No smime-type (older clients): the CMS content type says.
                _ => sniff_cms(raw, &shown),
            }
        }
        ("multipart", "encrypted") if attr("protocol") == "application/pgp-encrypted" => (
            Content::PgpMime,
            Some("PGP/MIME (multipart/encrypted; protocol=\"application/pgp-encrypted\")".into()),
        ),
        ("multipart", "signed") => (
            Content::SignedOnly,
            Some(format!(
                "multipart/signed (protocol \"{}\"): signed, not encrypted",
                attr("protocol")
            )),
        ),
        ("text", _) | ("multipart", "alternative" | "mixed") => inline_pgp(raw),
        _ => (Content::Plain, None),
    }
}

fn sniff_cms(raw: &[u8], shown: &str) -> (Content, Option<String>) {
    let parsed = MessageParser::default().parse(raw);
    let body = parsed
        .as_ref()
        .map(|m| m.root_part().contents())
        .unwrap_or_default();
    // ContentInfo ::= SEQUENCE { contentType OID, … }: the OID follows the
    // SEQUENCE's tag and length, within the first few bytes.
    let head = &body[..body.len().min(16)];
    let has = |oid: &[u8]| head.windows(oid.len()).any(|w| w == oid);
    if has(ENVELOPED_DATA) || has(AUTH_ENVELOPED_DATA) {
        (
            Content::Smime,
            Some(format!("S/MIME enveloped data ({shown}, CMS content type)")),
        )
    } else if has(SIGNED_DATA) {
        (
            Content::SignedOnly,
            Some(format!(
                "S/MIME signed data ({shown}, CMS content type): not encrypted"
            )),
        )
    } else {
        (
            Content::Plain,
            Some(format!(
                "{shown} without smime-type and no CMS content type found"
            )),
        )
    }
}

fn inline_pgp(raw: &[u8]) -> (Content, Option<String>) {
    let Some(m) = MessageParser::default().parse(raw) else {
        return (Content::Plain, None);
    };
    let Some(text) = m.body_text(0) else {
        return (Content::Plain, None);
    };
    let first = text.trim_start();
    if first.starts_with("-----BEGIN PGP MESSAGE-----") {
        (
            Content::PgpInline,
            Some("inline PGP armour (-----BEGIN PGP MESSAGE-----) in the first text body".into()),
        )
    } else if first.starts_with("-----BEGIN PGP SIGNED MESSAGE-----") {
        (
            Content::SignedOnly,
            Some("inline PGP signed message: signed, not encrypted".into()),
        )
    } else {
        (Content::Plain, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detected(raw: &str) -> Content {
        detect(raw.replace('\n', "\r\n").as_bytes()).0
    }

    #[test]
    fn smime_by_its_parameter_or_by_the_cms_content_type() {
        assert_eq!(
            detected(
                "Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\n\nMIIB\n"
            ),
            Content::Smime
        );
        assert_eq!(
            detected(
                "Content-Type: application/x-pkcs7-mime; smime-type=authEnveloped-data\n\nx\n"
            ),
            Content::Smime
        );
        assert_eq!(
            detected("Content-Type: application/pkcs7-mime; smime-type=signed-data\n\nx\n"),
            Content::SignedOnly
        );
        // No smime-type: base64 of a ContentInfo with the envelopedData OID.
        use base64::Engine;
        let der = [&[0x30, 0x80][..], ENVELOPED_DATA, &[0xA0, 0x80]].concat();
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        assert_eq!(
            detected(&format!(
                "Content-Type: application/pkcs7-mime\nContent-Transfer-Encoding: base64\n\n{b64}\n"
            )),
            Content::Smime
        );
    }

    #[test]
    fn pgp_mime_inline_armour_and_signatures_are_told_apart() {
        assert_eq!(
            detected(
                "Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=b\n\n--b\n\n--b--\n"
            ),
            Content::PgpMime
        );
        assert_eq!(
            detected(
                "Content-Type: multipart/signed; protocol=\"application/pgp-signature\"; boundary=b\n\n--b\n\n--b--\n"
            ),
            Content::SignedOnly
        );
        assert_eq!(
            detected(
                "Content-Type: text/plain\n\n-----BEGIN PGP MESSAGE-----\nhQ\n-----END PGP MESSAGE-----\n"
            ),
            Content::PgpInline
        );
        assert_eq!(
            detected("Content-Type: text/plain\n\nSee below:\n-----BEGIN PGP MESSAGE-----\n"),
            Content::Plain
        );
        assert_eq!(detected("Subject: x\n\nplain\n"), Content::Plain);
    }
}
