//! Sealing: when no transport is good enough for a message, the recipient
//! gets a plain notification mail whose attachment `secure-message.html`
//! holds the message encrypted under a password that reaches them by
//! another channel. Submodules: [`password`] (generation), [`envelope`]
//! (the cryptographic container), [`content`] (what is inside), [`opener`]
//! (the HTML page that opens it in a browser), [`notify`] (the mail that
//! carries it), [`channel`] (how the password reaches the recipient).
//! Where the recipient's certificate is known ([`certs`]), confidential
//! mail is encrypted to it instead ([`smime`]) and needs no password.

pub mod certs;
pub mod channel;
pub mod content;
pub mod envelope;
pub mod notify;
pub mod opener;
pub mod password;
pub mod smime;

use content::{Content, ContentError};
use envelope::EnvelopeError;
use password::Password;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error("the message is {size} bytes; envelopes are limited to {limit} bytes")]
    TooLarge { size: usize, limit: usize },
}

/// Seals a message (RFC 5322 bytes) into an envelope.
pub fn seal_message(
    raw: &[u8],
    password: &Password,
    iterations: u32,
    limit: usize,
) -> Result<Vec<u8>, SealError> {
    let content = Content::from_message(raw)?.to_json();
    if content.len() > limit {
        return Err(SealError::TooLarge {
            size: content.len(),
            limit,
        });
    }
    Ok(envelope::seal(&content, password, iterations))
}

/// Opens an envelope, or an opener page that carries one.
pub fn open_file(bytes: &[u8], password: &str) -> Result<Content, SealError> {
    let envelope = opener::extract(bytes).unwrap_or_else(|| bytes.to_vec());
    let plain = envelope::open(&envelope, password)?;
    Ok(Content::from_json(&plain)?)
}
