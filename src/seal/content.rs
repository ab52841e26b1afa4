//! What goes inside an envelope: the original message parsed (with
//! mail-parser) into a small JSON structure the opener shows without a MIME
//! parser of its own — the headers a reader needs, the text and HTML
//! bodies, the attachments — plus the original message itself, so
//! `sealgate envelope open` and the opener's "original" download give back
//! exactly what was sealed.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use mail_parser::{Address, MessageParser, MimeHeaders};
use serde::{Deserialize, Serialize};

/// The JSON inside the envelope; `v` versions this structure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    pub v: u8,
    /// Shown to the reader, in this order: From, To, Cc, Date, Subject.
    pub headers: Vec<(String, String)>,
    pub text: Option<String>,
    pub html: Option<String>,
    pub attachments: Vec<Attachment>,
    /// The message as sealgate received it, base64.
    pub original: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub name: String,
    pub content_type: String,
    /// base64 of the decoded content.
    pub data: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("the message could not be parsed as an e-mail (RFC 5322)")]
    Unparsable,
    #[error("the envelope's content is not valid: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the envelope's original message is not valid base64")]
    Base64,
}

impl Content {
    pub fn from_message(raw: &[u8]) -> Result<Content, ContentError> {
        let message = MessageParser::default()
            .parse(raw)
            .ok_or(ContentError::Unparsable)?;
        let mut headers = Vec::new();
        for (name, value) in [
            ("From", message.from()),
            ("To", message.to()),
            ("Cc", message.cc()),
        ] {
            if let Some(a) = value {
                headers.push((name.to_string(), addresses(a)));
            }
        }
        if let Some(d) = message.date() {
            headers.push(("Date".into(), d.to_rfc822()));
        }
        headers.push((
            "Subject".into(),
            message.subject().unwrap_or_default().to_string(),
        ));
        let attachments = message
            .attachments()
            .enumerate()
            .map(|(i, part)| Attachment {
                name: part
                    .attachment_name()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("attachment-{}", i + 1)),
                content_type: part
                    .content_type()
                    .map(|ct| match ct.subtype() {
                        Some(sub) => format!("{}/{sub}", ct.ctype()),
                        None => ct.ctype().to_string(),
                    })
                    .unwrap_or_else(|| "application/octet-stream".into()),
                data: B64.encode(part.contents()),
            })
            .collect();
        // mail-parser derives a text body from HTML and vice versa; keep
        // only the bodies the sender wrote.
        let has_html = message.html_body_count() > 0
            && message
                .html_part(0)
                .is_some_and(|p| p.is_content_type("text", "html"));
        let has_text = message.text_body_count() > 0
            && message
                .text_part(0)
                .is_some_and(|p| !p.is_content_type("text", "html"));
        Ok(Content {
            v: 1,
            headers,
            text: has_text
                .then(|| message.body_text(0).map(|t| t.into_owned()))
                .flatten(),
            html: has_html
                .then(|| message.body_html(0).map(|t| t.into_owned()))
                .flatten(),
            attachments,
            original: B64.encode(raw),
        })
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("plain data serializes")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Content, ContentError> {
        Ok(serde_json::from_slice(bytes)?)
    }

    pub fn original(&self) -> Result<Vec<u8>, ContentError> {
        B64.decode(&self.original).map_err(|_| ContentError::Base64)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The bare sender address and the To/Cc addresses of a message.
pub fn addresses_of(raw: &[u8]) -> (Option<String>, Vec<String>) {
    let Some(message) = MessageParser::default().parse_headers(raw) else {
        return (None, Vec::new());
    };
    let bare = |a: Option<&Address<'_>>| -> Vec<String> {
        a.map(|a| {
            a.iter()
                .filter_map(|x| x.address.as_ref().map(|e| e.to_string()))
                .collect()
        })
        .unwrap_or_default()
    };
    let from = bare(message.from()).into_iter().next();
    let mut to = bare(message.to());
    to.extend(bare(message.cc()));
    (from, to)
}

fn addresses(a: &Address<'_>) -> String {
    a.iter()
        .map(|addr| match (&addr.name, &addr.address) {
            (Some(n), Some(e)) => format!("{n} <{e}>"),
            (None, Some(e)) => e.to_string(),
            (Some(n), None) => n.to_string(),
            (None, None) => String::new(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIXED: &str = "From: Alice Sender <alice@src.test>\r\n\
To: bob@dst.test, Carol <carol@dst.test>\r\n\
Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= and the contract\r\n\
Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=b1\r\n\
\r\n\
--b1\r\n\
Content-Type: multipart/alternative; boundary=b2\r\n\
\r\n\
--b2\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
Plain body\r\n\
--b2\r\n\
Content-Type: text/html; charset=utf-8\r\n\
\r\n\
<p>HTML <b>body</b></p>\r\n\
--b2--\r\n\
--b1\r\n\
Content-Type: application/pdf; name=contract.pdf\r\n\
Content-Disposition: attachment; filename=contract.pdf\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
JVBERi0xLjQK\r\n\
--b1--\r\n";

    #[test]
    fn a_multipart_message_becomes_headers_bodies_and_attachments() {
        let c = Content::from_message(MIXED.as_bytes()).unwrap();
        assert_eq!(c.header("From"), Some("Alice Sender <alice@src.test>"));
        assert_eq!(c.header("To"), Some("bob@dst.test, Carol <carol@dst.test>"));
        assert_eq!(c.header("Subject"), Some("Grüße and the contract"));
        assert!(c.text.as_deref().unwrap().contains("Plain body"));
        assert!(c.html.as_deref().unwrap().contains("<b>body</b>"));
        assert_eq!(c.attachments.len(), 1);
        assert_eq!(c.attachments[0].name, "contract.pdf");
        assert_eq!(c.attachments[0].content_type, "application/pdf");
        assert_eq!(B64.decode(&c.attachments[0].data).unwrap(), b"%PDF-1.4\n");
        assert_eq!(c.original().unwrap(), MIXED.as_bytes());
        let back = Content::from_json(&c.to_json()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn a_plain_message_has_no_html_body() {
        let c = Content::from_message(b"Subject: hi\r\n\r\njust text\r\n").unwrap();
        assert_eq!(c.text.as_deref(), Some("just text\r\n"));
        assert_eq!(c.html, None);
    }
}
