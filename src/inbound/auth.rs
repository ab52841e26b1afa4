//! SMTP AUTH (RFC 4954) with PLAIN (RFC 4616) and LOGIN against a users
//! file of argon2 password hashes: one `user:$argon2id$…` per line, `#`
//! starts a comment. `sealgate user hash` makes the hash.

use std::collections::HashMap;
use std::path::Path;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("{path}: cannot read: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}:{line}: {message}")]
    Line {
        path: String,
        line: usize,
        message: String,
    },
}

/// The users that may authenticate, with their password hashes.
#[derive(Debug, Default, Clone)]
pub struct Users {
    hashes: HashMap<String, String>,
}

impl Users {
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|error| UsersError::Read {
            path: path.display().to_string(),
            error,
        })?;
        let mut hashes = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |message: String| UsersError::Line {
                path: path.display().to_string(),
                line: i + 1,
                message,
            };
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| err("expected `user:argon2-hash`".into()))?;
            PasswordHash::new(hash).map_err(|e| err(format!("not an argon2 PHC hash: {e}")))?;
            if hashes.insert(user.to_string(), hash.to_string()).is_some() {
                return Err(err(format!("user `{user}` appears twice")));
            }
        }
        Ok(Users { hashes })
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Checks a password; slow on purpose (argon2), so call it off the async threads.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        // An unknown user costs as much as a known one, so timing does not
        // tell which user names exist.
        static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let dummy = DUMMY.get_or_init(|| hash_password("no such user").unwrap_or_default());
        let hash = self.hashes.get(user).unwrap_or(dummy);
        let ok = PasswordHash::new(hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false);
        ok && self.hashes.contains_key(user)
    }
}

/// Makes the users-file hash of a password.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Decodes one base64 SASL line; `None` if it is not base64 or not UTF-8.
pub fn decode(line: &[u8]) -> Option<String> {
    let trimmed = line.strip_suffix(b"\n").unwrap_or(line);
    let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
    let bytes = B64.decode(trimmed).ok()?;
    String::from_utf8(bytes).ok()
}

/// Splits a PLAIN response `authzid NUL authcid NUL passwd` (RFC 4616 §2).
pub fn split_plain(message: &str) -> Option<(String, String)> {
    let mut parts = message.split('\0');
    let authzid = parts.next()?;
    let user = parts.next()?;
    let password = parts.next()?;
    if parts.next().is_some() || user.is_empty() || (!authzid.is_empty() && authzid != user) {
        // Acting as another user is not something we offer.
        return None;
    }
    Some((user.to_string(), password.to_string()))
}

pub fn encode(text: &str) -> String {
    B64.encode(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4616_2_plain_message() {
        assert_eq!(
            split_plain("\0tim\0tanstaaftanstaaf"),
            Some(("tim".into(), "tanstaaftanstaaf".into()))
        );
        assert_eq!(
            split_plain("tim\0tim\0pw"),
            Some(("tim".into(), "pw".into()))
        );
        assert_eq!(
            split_plain("other\0tim\0pw"),
            None,
            "no proxy authorization"
        );
        assert_eq!(split_plain("\0tim"), None);
    }

    #[test]
    fn users_file_round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        let hash = hash_password("s3cret").unwrap();
        std::fs::write(&path, format!("# comment\nalice:{hash}\n")).unwrap();
        let users = Users::load(&path).unwrap();
        assert!(users.verify("alice", "s3cret"));
        assert!(!users.verify("alice", "wrong"));
        assert!(!users.verify("bob", "s3cret"));

        std::fs::write(&path, "alice:plaintext\n").unwrap();
        let err = Users::load(&path).unwrap_err().to_string();
        assert!(err.contains(":1:"), "{err}");
    }
}
