//! The opener: one self-contained HTML file that carries the envelope and
//! opens it in any current browser, offline. Inline script and style only;
//! its Content-Security-Policy allows that one script (by hash) and no
//! network request at all.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};

const TEMPLATE: &str = include_str!("opener.html");
const SCRIPT: &str = include_str!("opener.js");
const ENVELOPE_START: &str = r#"<script type="application/octet-stream" id="envelope">"#;

/// The words of the opener page, per language.
#[derive(Debug, Clone, Copy)]
pub struct Texts {
    pub lang: &'static str,
    pub title: &'static str,
    pub intro: &'static str,
    pub password_label: &'static str,
    pub open_label: &'static str,
    pub attachments_label: &'static str,
    pub original_label: &'static str,
    pub wrong: &'static str,
}

pub const EN: Texts = Texts {
    lang: "en",
    title: "Secure message",
    intro: "This message was encrypted because its sender's mail system could not verify a secure connection to yours. Enter the password you received by another channel (phone, SMS) to read it. Nothing leaves this page.",
    password_label: "Password",
    open_label: "Open",
    attachments_label: "Attachments",
    original_label: "Download the original message (.eml)",
    wrong: "Wrong password, or this file was modified. Check the password and try again.",
};

pub const DE: Texts = Texts {
    lang: "de",
    title: "Sichere Nachricht",
    intro: "Diese Nachricht wurde verschlüsselt, weil das Mailsystem des Absenders keine gesicherte Verbindung zu Ihrem prüfen konnte. Geben Sie das Passwort ein, das Sie auf anderem Weg (Telefon, SMS) erhalten haben. Nichts verlässt diese Seite.",
    password_label: "Passwort",
    open_label: "Öffnen",
    attachments_label: "Anhänge",
    original_label: "Originalnachricht herunterladen (.eml)",
    wrong: "Falsches Passwort, oder die Datei wurde verändert. Prüfen Sie das Passwort und versuchen Sie es erneut.",
};

impl Texts {
    pub fn for_language(lang: &str) -> Option<Texts> {
        match lang {
            "en" => Some(EN),
            "de" => Some(DE),
            _ => None,
        }
    }
}

/// The opener page for `envelope`.
pub fn render(envelope: &[u8], texts: &Texts) -> String {
    let hash = format!("sha256-{}", B64.encode(Sha256::digest(SCRIPT.as_bytes())));
    TEMPLATE
        .replace("{{script_hash}}", &hash)
        .replace("{{lang}}", texts.lang)
        .replace("{{wrong}}", &escape(texts.wrong))
        .replace("{{title}}", &escape(texts.title))
        .replace("{{intro}}", &escape(texts.intro))
        .replace("{{password_label}}", &escape(texts.password_label))
        .replace("{{open_label}}", &escape(texts.open_label))
        .replace("{{attachments_label}}", &escape(texts.attachments_label))
        .replace("{{original_label}}", &escape(texts.original_label))
        .replace("{{envelope}}", &B64.encode(envelope))
        .replace("{{script}}", SCRIPT)
}

/// The envelope inside an opener page, or `None` if `page` is not one.
pub fn extract(page: &[u8]) -> Option<Vec<u8>> {
    let page = std::str::from_utf8(page).ok()?;
    let start = page.find(ENVELOPE_START)? + ENVELOPE_START.len();
    let end = start + page[start..].find("</script>")?;
    let b64: String = page[start..end].split_whitespace().collect();
    B64.decode(b64).ok()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_carries_the_envelope_and_allows_only_its_own_script() {
        let page = render(b"SGEV-bytes", &DE);
        assert_eq!(extract(page.as_bytes()).unwrap(), b"SGEV-bytes");
        assert!(page.contains("default-src 'none'"));
        let hash = format!("sha256-{}", B64.encode(Sha256::digest(SCRIPT.as_bytes())));
        assert!(page.contains(&format!("script-src '{hash}'")));
        assert!(page.contains(&format!("<script>{SCRIPT}</script>")));
        assert!(page.contains("lang=\"de\""));
        assert!(!page.contains("{{"), "a placeholder was left");
        // No reference to anything outside the file.
        assert!(!page.contains("http://") && !page.contains("https://"));
    }
}
