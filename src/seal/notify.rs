//! The notification mail a sealed message travels in: a short text in the
//! recipient's language and the opener page as `secure-message.html`.
//! Nothing of the original is in clear here — not even its subject, which
//! often says what the message is about.

use mail_builder::MessageBuilder;
use mail_builder::headers::raw::Raw;

use super::opener::{self, Texts};

/// The words of the notification mail; `{sender}` stands for the sender.
/// Shipped per language ([`Words::for_language`]); a tenant may set its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Words {
    pub subject: String,
    pub body: String,
}

impl Words {
    pub fn for_language(lang: &str) -> Words {
        let (subject, body) = shipped(lang);
        Words {
            subject: subject.to_string(),
            body: body.to_string(),
        }
    }
}

fn shipped(lang: &str) -> (&'static str, &'static str) {
    match lang {
        "de" => (
            "Sichere Nachricht von {sender}",
            "{sender} hat Ihnen eine vertrauliche Nachricht gesendet.\r\n\
\r\n\
Weil keine ausreichend gesicherte Verbindung zu Ihrem Mailserver bestand,\r\n\
wurde sie verschlüsselt. Öffnen Sie den Anhang secure-message.html in einem\r\n\
Browser und geben Sie das Passwort ein, das Sie auf anderem Weg erhalten\r\n\
(Telefon, SMS). Die Datei funktioniert ohne Internetverbindung.\r\n\
\r\n\
Geben Sie das Passwort nie per E-Mail weiter.\r\n",
        ),
        _ => (
            "Secure message from {sender}",
            "{sender} sent you a confidential message.\r\n\
\r\n\
Because no sufficiently secure connection to your mail server existed, it\r\n\
was encrypted. Open the attachment secure-message.html in a browser and\r\n\
enter the password you receive by another channel (phone, SMS). The file\r\n\
works without an Internet connection.\r\n\
\r\n\
Never pass the password on by e-mail.\r\n",
        ),
    }
}

/// Who the notification is from and to, and its identity.
pub struct Addressing<'a> {
    /// The original sender (the notification speaks for them).
    pub from: &'a str,
    pub to: &'a [String],
    pub message_id: &'a str,
    /// Unix seconds.
    pub date: i64,
}

/// The complete notification message (RFC 5322 bytes) carrying `envelope`.
pub fn notification(envelope: &[u8], texts: &Texts, w: &Words, a: &Addressing<'_>) -> Vec<u8> {
    let page = opener::render(envelope, texts);
    MessageBuilder::new()
        .from(a.from)
        .to(a.to.to_vec())
        .subject(w.subject.replace("{sender}", a.from))
        .message_id(a.message_id)
        .date(a.date)
        .header("X-Sealgate-Sealed", Raw::new("envelope; v=1"))
        .text_body(w.body.replace("{sender}", a.from))
        .attachment("text/html", "secure-message.html", page.into_bytes())
        .write_to_vec()
        .expect("writing to a Vec does not fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::password::Password;
    use mail_parser::{MessageParser, MimeHeaders};

    #[test]
    fn the_notification_carries_the_opener_and_nothing_of_the_original_in_clear() {
        let original = b"From: alice@src.test\r\nTo: bob@dst.test\r\nSubject: Merger with Acme\r\n\r\nThe price is 42 million.\r\n";
        let pw = Password::generate();
        let envelope = crate::seal::seal_message(original, &pw, 210_000, 1 << 20).unwrap();
        let to = vec!["bob@dst.test".to_string()];
        let mail = notification(
            &envelope,
            &opener::DE,
            &Words::for_language("de"),
            &Addressing {
                from: "alice@src.test",
                to: &to,
                message_id: "sealed.1@gw.test",
                date: 1_795_000_000,
            },
        );
        let text = String::from_utf8_lossy(&mail);
        for secret in ["Merger", "Acme", "42 million", pw.canonical()] {
            assert!(
                !text.contains(secret),
                "{secret:?} in clear in the notification"
            );
        }
        let parsed = MessageParser::default().parse(&mail).unwrap();
        assert_eq!(
            parsed.subject(),
            Some("Sichere Nachricht von alice@src.test")
        );
        assert!(parsed.body_text(0).unwrap().contains("secure-message.html"));
        let attachment = parsed.attachments().next().expect("the opener is attached");
        assert_eq!(attachment.attachment_name(), Some("secure-message.html"));
        let opened = crate::seal::open_file(attachment.contents(), pw.display()).unwrap();
        assert_eq!(opened.original().unwrap(), original);
    }
}
