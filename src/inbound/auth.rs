//! SMTP AUTH (RFC 4954) with PLAIN (RFC 4616) and LOGIN against a users
//! file of argon2 password hashes: one `user:$argon2id$…` per line, `#`
//! starts a comment. `sealgate user hash` makes the hash. The [`Guard`]
//! slows guessing across sessions and bounds the checks running at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

    /// Users from name → argon2 hash (the console's accounts).
    pub fn from_hashes(hashes: HashMap<String, String>) -> Users {
        Users { hashes }
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

/// Failures below this many, per client address and per user name, cost
/// nothing; each one after doubles the wait before the next check.
const FREE_FAILURES: u32 = 3;
/// The longest wait before a check.
const MAX_DELAY: Duration = Duration::from_secs(60);
/// A failure is forgotten after this long.
const FAILURE_MEMORY: Duration = Duration::from_secs(15 * 60);
/// Records kept at most: an attacker with many addresses cannot grow memory.
const MAX_RECORDS: usize = 10_000;

/// Who failed: the client address and the user name are counted apart, so
/// that guessing from many connections, or for one user from many
/// addresses, slows down alike.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Address(IpAddr),
    User(String),
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Slows password guessing across sessions and bounds the password checks
/// running at once: argon2 takes 19 MiB per check, so a burst of AUTH
/// attempts is checked on one thread per core, and the memory the checks
/// take is that of those threads, never one check per attempt (a thread
/// per check would also keep its allocator arena). The wait does not depend
/// on whether the user exists.
pub struct Guard {
    failures: Mutex<HashMap<Key, Failures>>,
    checks: tokio::sync::mpsc::Sender<PasswordCheck>,
}

/// One password to check on a checker thread.
struct PasswordCheck {
    users: std::sync::Arc<Users>,
    user: String,
    password: String,
    done: tokio::sync::oneshot::Sender<bool>,
}

impl Default for Guard {
    fn default() -> Guard {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let (checks, queue) = tokio::sync::mpsc::channel::<PasswordCheck>(256);
        let queue = std::sync::Arc::new(Mutex::new(queue));
        for i in 0..cores {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("password-check-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for the next check.
                        let next = match queue.lock() {
                            Ok(mut q) => q.blocking_recv(),
                            Err(_) => None,
                        };
                        let Some(c) = next else { return };
                        let _ = c.done.send(c.users.verify(&c.user, &c.password));
                    }
                });
            if let Err(e) = spawned {
                tracing::error!("cannot start a password-check thread: {e}");
            }
        }
        Guard {
            failures: Mutex::new(HashMap::new()),
            checks,
        }
    }
}

impl Guard {
    /// How long to wait before checking `user`'s password from `ip`.
    pub fn delay(&self, ip: IpAddr, user: &str) -> Duration {
        let Ok(map) = self.failures.lock() else {
            return MAX_DELAY;
        };
        let count = [Key::Address(ip), Key::User(user.to_string())]
            .iter()
            .filter_map(|k| map.get(k))
            .filter(|f| f.last.elapsed() < FAILURE_MEMORY)
            .map(|f| f.count)
            .max()
            .unwrap_or(0);
        match count.checked_sub(FREE_FAILURES) {
            None => Duration::ZERO,
            Some(over) => Duration::from_secs(1u64 << over.min(6)).min(MAX_DELAY),
        }
    }

    /// How much longer a login that does not wait (the web console) must
    /// be refused: [`Guard::delay`] counted from the latest failure.
    pub fn wait(&self, ip: IpAddr, user: &str) -> Duration {
        let delay = self.delay(ip, user);
        let Ok(map) = self.failures.lock() else {
            return MAX_DELAY;
        };
        let since = [Key::Address(ip), Key::User(user.to_string())]
            .iter()
            .filter_map(|k| map.get(k))
            .map(|f| f.last.elapsed())
            .min()
            .unwrap_or(Duration::MAX);
        delay.saturating_sub(since)
    }

    /// Checks a password on a checker thread (one per core).
    pub async fn verify(&self, users: std::sync::Arc<Users>, user: &str, password: String) -> bool {
        let (done, answer) = tokio::sync::oneshot::channel();
        let check = PasswordCheck {
            users,
            user: user.to_string(),
            password,
            done,
        };
        if self.checks.send(check).await.is_err() {
            return false;
        }
        answer.await.unwrap_or(false)
    }

    pub fn failed(&self, ip: IpAddr, user: &str) {
        let Ok(mut map) = self.failures.lock() else {
            return;
        };
        if map.len() >= MAX_RECORDS {
            map.retain(|_, f| f.last.elapsed() < FAILURE_MEMORY);
            if map.len() >= MAX_RECORDS
                && let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, f)| f.last)
                    .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        for key in [Key::Address(ip), Key::User(user.to_string())] {
            let f = map.entry(key).or_insert(Failures {
                count: 0,
                last: Instant::now(),
            });
            if f.last.elapsed() >= FAILURE_MEMORY {
                f.count = 0;
            }
            f.count += 1;
            f.last = Instant::now();
        }
    }

    /// A good password: that user's and that address's failures are forgotten.
    pub fn succeeded(&self, ip: IpAddr, user: &str) {
        if let Ok(mut map) = self.failures.lock() {
            map.remove(&Key::Address(ip));
            map.remove(&Key::User(user.to_string()));
        }
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
