//! What the recipient sees of the protection (per tenant, `[tenant.view]`):
//! one `Sealgate-Transport:` header naming the level the message was
//! delivered at and the checks behind it, added to what each connection
//! carries, and a tag in the subject of high and confidential mail, added
//! at reception (before DKIM signing, so the signature covers it).
//!
//! The header's values come from our own types and from DNS names; the
//! one encoder [`token`] lets through only what a header parameter may
//! hold, so nothing from a peer or a zone can end the line or the field.

use crate::config::RecipientView;
use crate::message::{RiskClass, header_end, header_fields};
use crate::qualify::{Status, Verdict};

pub const HEADER: &str = "Sealgate-Transport";

/// `Sealgate-Transport: qualified; mx=mx.example.org; tls=TLSv1.3;
/// cipher=TLS13_AES_256_GCM_SHA384; passed=dnssec,dane,…; failed=…;
/// by=gw.example.net`, with a CRLF, folded at the parameters.
pub fn transport_header(verdict: &Verdict, by: &str) -> String {
    let level = verdict
        .level
        .map(|l| l.name())
        .unwrap_or(verdict.observed_level.name());
    let mut params = vec![format!("mx={}", token(&verdict.mx_host))];
    if let Some(tls) = &verdict.tls {
        params.push(format!("tls={}", token(&tls.version)));
        params.push(format!("cipher={}", token(&tls.cipher_suite)));
    }
    let names = |status: Status| {
        verdict
            .checks
            .iter()
            .filter(|c| c.status == status)
            .map(|c| c.name.name())
            .collect::<Vec<_>>()
            .join(",")
    };
    for (key, status) in [("passed", Status::Pass), ("failed", Status::Fail)] {
        let list = names(status);
        if !list.is_empty() {
            params.push(format!("{key}={list}"));
        }
    }
    params.push(format!("by={}", token(by)));
    format!("{HEADER}: {level};\r\n\t{}\r\n", params.join(";\r\n\t"))
}

/// A header parameter value: letters, digits and `.-_:[]` only; anything
/// else (a space, a quote, a line break, a semicolon) becomes `_`.
fn token(s: &str) -> String {
    let t: String = s
        .chars()
        .take(255)
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-_:[]".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if t.is_empty() { "_".into() } else { t }
}

/// The words for the subject of a message whose recipients are all of
/// class high or above (the lowest of them decides); none otherwise, since
/// one subject goes to every recipient and must be true for each.
pub fn subject_tag(view: &RecipientView, classes: &[RiskClass]) -> Option<String> {
    if !view.subject_tag {
        return None;
    }
    let lowest = classes.iter().min()?;
    let german = view.language.as_deref() == Some("de");
    match lowest {
        RiskClass::Normal => None,
        RiskClass::High => Some(view.high_tag.clone().unwrap_or_else(|| {
            if german {
                "[qualifiziertes TLS]".into()
            } else {
                "[qualified TLS]".into()
            }
        })),
        RiskClass::Confidential => Some(view.confidential_tag.clone().unwrap_or_else(|| {
            if german {
                "[Ende-zu-Ende verschlüsselt]".into()
            } else {
                "[end-to-end encrypted]".into()
            }
        })),
    }
}

/// The message with `tag` before its subject (a `Subject:` made if it has
/// none); non-ASCII words are written as an encoded word (RFC 2047).
pub fn tag_subject(raw: &[u8], tag: &str) -> Vec<u8> {
    let (start, end) = match crate::policy::rules::subject_span(raw) {
        Some(span) => span,
        None => {
            let mut out = raw.to_vec();
            let mut header = b"Subject:".to_vec();
            write_subject(&mut header, tag);
            let at = header_end(raw);
            out.splice(at..at, header);
            return out;
        }
    };
    let current = mail_parser::MessageParser::default()
        .parse_headers(&raw[start..end])
        .and_then(|m| m.subject().map(str::to_string))
        .unwrap_or_default();
    if current.starts_with(tag) {
        return raw.to_vec();
    }
    let text = format!("{tag} {current}");
    let mut out = Vec::with_capacity(raw.len() + tag.len() + 16);
    out.extend_from_slice(&raw[..start]);
    out.extend_from_slice(b"Subject:");
    write_subject(&mut out, text.trim_end());
    out.extend_from_slice(&raw[end..]);
    out
}

fn write_subject(out: &mut Vec<u8>, text: &str) {
    use mail_builder::headers::Header;
    // One line of words: whatever the subject held, no line break stays.
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    out.push(b' ');
    mail_builder::headers::text::Text::new(text).write_header(&mut *out, "Subject: ".len());
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
}

/// The message without any `Sealgate-Transport` field a sender put in
/// its header (`None`: there was none): only the gateway says how a
/// message travelled, and a forged "qualified" must not reach the
/// recipient beside, or instead of, ours.
pub fn strip_transport_headers(raw: &[u8]) -> Option<Vec<u8>> {
    let end = header_end(raw);
    let is_ours = |f: &[u8]| {
        f.len() > HEADER.len()
            && f[..HEADER.len()].eq_ignore_ascii_case(HEADER.as_bytes())
            && f[HEADER.len()..]
                .iter()
                .find(|b| !matches!(b, b' ' | b'\t'))
                == Some(&b':')
    };
    if !header_fields(&raw[..end]).any(is_ours) {
        return None;
    }
    let mut out = Vec::with_capacity(raw.len());
    for f in header_fields(&raw[..end]).filter(|f| !is_ours(f)) {
        out.extend_from_slice(f);
    }
    out.extend_from_slice(&raw[end..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qualify::{Check, CheckName};

    fn view(tag: bool, language: Option<&str>) -> RecipientView {
        RecipientView {
            header: true,
            subject_tag: tag,
            language: language.map(str::to_string),
            high_tag: None,
            confidential_tag: None,
        }
    }

    #[test]
    fn a_transport_header_from_the_sender_is_removed_and_nothing_else() {
        let m = b"Received: from x\r\nSealgate-Transport: qualified;\r\n\tmx=forged\r\n\
                  Subject: hi\r\nsealgate-transport : qualified\r\nSealgate-Transports: kept\r\n\
                  \r\nSealgate-Transport: in the body stays\r\n";
        let clean = strip_transport_headers(m).expect("stripped");
        assert_eq!(
            String::from_utf8_lossy(&clean),
            "Received: from x\r\nSubject: hi\r\nSealgate-Transports: kept\r\n\r\n\
             Sealgate-Transport: in the body stays\r\n"
        );
        assert_eq!(strip_transport_headers(b"Subject: x\r\n\r\nbody\r\n"), None);
    }

    #[test]
    fn the_header_names_level_and_checks_and_cannot_be_broken_by_a_name() {
        let v = Verdict::new(
            (
                "d.test",
                "mx.d.test\r\nBcc: x@evil.test; a=\"b\"",
                "127.0.0.1",
            ),
            vec![
                Check::new(CheckName::Dnssec, Status::Pass, ""),
                Check::new(CheckName::Starttls, Status::Fail, "not offered"),
            ],
            Vec::new(),
            None,
            0,
        );
        let h = transport_header(&v, "gw.test");
        assert!(h.starts_with("Sealgate-Transport: plaintext;\r\n\t"), "{h}");
        assert!(h.contains("passed=dnssec;"), "{h}");
        assert!(h.contains("failed=starttls;"), "{h}");
        assert!(h.contains("mx=mx.d.test__Bcc:_x_evil.test__a__b_;"), "{h}");
        // Every line break is a fold: a continuation line starts with a tab.
        for line in h.trim_end_matches("\r\n").split("\r\n").skip(1) {
            assert!(line.starts_with('\t'), "{h}");
        }
    }

    #[test]
    fn the_tag_goes_only_where_it_is_true_for_every_recipient() {
        let v = view(true, None);
        assert_eq!(
            subject_tag(&v, &[RiskClass::High]).as_deref(),
            Some("[qualified TLS]")
        );
        assert_eq!(subject_tag(&v, &[RiskClass::High, RiskClass::Normal]), None);
        assert_eq!(
            subject_tag(&view(true, Some("de")), &[RiskClass::Confidential]).as_deref(),
            Some("[Ende-zu-Ende verschlüsselt]")
        );
        assert_eq!(subject_tag(&view(false, None), &[RiskClass::High]), None);
    }

    #[test]
    fn tagging_keeps_the_rest_of_the_message_and_encodes_non_ascii() {
        let raw =
            b"From: a@b.test\r\nSubject: Quarterly\r\n report\r\nTo: c@d.test\r\n\r\nBody\r\n";
        let out = String::from_utf8(tag_subject(raw, "[qualified TLS]")).unwrap();
        assert_eq!(
            out,
            "From: a@b.test\r\nSubject: [qualified TLS] Quarterly report\r\nTo: c@d.test\r\n\r\nBody\r\n"
        );
        let out = tag_subject(raw, "[Ende-zu-Ende verschlüsselt]");
        let parsed = mail_parser::MessageParser::default().parse(&out).unwrap();
        assert_eq!(
            parsed.subject(),
            Some("[Ende-zu-Ende verschlüsselt] Quarterly report")
        );
        assert!(out.is_ascii());
        let none = b"From: a@b.test\r\n\r\nBody\r\n";
        let out = String::from_utf8(tag_subject(none, "[qualified TLS]")).unwrap();
        assert_eq!(
            out,
            "From: a@b.test\r\nSubject: [qualified TLS]\r\n\r\nBody\r\n"
        );
    }
}
