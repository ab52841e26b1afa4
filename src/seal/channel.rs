//! How a sealed message's password reaches its recipient, out of band:
//! a password agreed beforehand (kept encrypted in the [`PasswordStore`]),
//! an HTTP webhook (an SMS gateway) for recipients whose phone the
//! tenant's [`Contacts`] file knows, or a mail to the sender — who passes
//! it on by phone — sent only over a qualified connection. The password is
//! never written to the log or the spool in clear.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mail_builder::MessageBuilder;
use mail_builder::headers::raw::Raw;
use serde::Serialize;

use crate::tables::{TableError, Tables};

use super::envelope;
use super::password::Password;

/// Which channel a tenant uses for passwords it generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PasswordChannel {
    /// A mail to the envelope sender over a qualified connection.
    #[default]
    SenderMail,
    /// A JSON POST to `webhook_url` when the recipient's phone is known;
    /// a mail to the sender otherwise.
    Webhook,
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("{path}:{line}: {message}")]
    ContactsLine {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: cannot read: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("password store: {0}")]
    Store(String),
}

impl From<TableError> for ChannelError {
    fn from(e: TableError) -> Self {
        ChannelError::Store(e.to_string())
    }
}

/// Recipients' phone numbers: a file of `address,phone` lines (`#` comments).
#[derive(Debug, Default, Clone)]
pub struct Contacts {
    phones: HashMap<String, String>,
}

impl Contacts {
    pub fn load(path: &Path) -> Result<Contacts, ChannelError> {
        let text = std::fs::read_to_string(path).map_err(|error| ChannelError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let mut phones = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |message: &str| ChannelError::ContactsLine {
                path: path.to_path_buf(),
                line: i + 1,
                message: message.to_string(),
            };
            let (address, phone) = line
                .split_once(',')
                .ok_or_else(|| bad("expected `address,phone`"))?;
            let (address, phone) = (address.trim(), phone.trim());
            if !address.contains('@') {
                return Err(bad("the first field is not an address"));
            }
            let digits = phone.chars().filter(char::is_ascii_digit).count();
            if digits < 6
                || !phone
                    .chars()
                    .all(|c| c.is_ascii_digit() || " +-/()".contains(c))
            {
                return Err(bad("the second field is not a phone number"));
            }
            phones.insert(address.to_lowercase(), phone.to_string());
        }
        Ok(Contacts { phones })
    }

    pub fn phone(&self, address: &str) -> Option<&str> {
        self.phones.get(&address.to_lowercase()).map(String::as_str)
    }
}

/// What the webhook receives (JSON).
#[derive(Debug, Serialize)]
pub struct WebhookPayload<'a> {
    pub recipient: &'a str,
    pub phone: &'a str,
    pub sender: &'a str,
    pub password: &'a str,
    /// The queue id of the sealed message, for the operator.
    pub message: &'a str,
}

/// Posts the password to the webhook; any 2xx is success.
pub async fn post_webhook(
    client: &reqwest::Client,
    url: &str,
    payload: &WebhookPayload<'_>,
    timeout: Duration,
) -> Result<(), String> {
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(payload).map_err(|e| e.to_string())?)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| crate::util::error_chain(&e))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("{url} answered {status}"))
    }
}

/// The mail that gives the sender the password to pass on.
pub fn password_mail(
    hostname: &str,
    sender: &str,
    recipient: &str,
    password: &Password,
    message_id: &str,
    lang: &str,
) -> Vec<u8> {
    let (subject, body) = match lang {
        "de" => (
            format!("Passwort für Ihre sichere Nachricht an {recipient}"),
            format!(
                "Ihre Nachricht an {recipient} wurde verschlüsselt zugestellt, weil keine\r\n\
ausreichend gesicherte Verbindung zum Empfänger bestand.\r\n\
\r\n\
Passwort: {}\r\n\
\r\n\
Bitte geben Sie es dem Empfänger telefonisch oder per SMS weiter,\r\n\
nie per E-Mail.\r\n",
                password.display()
            ),
        ),
        _ => (
            format!("Password for your secure message to {recipient}"),
            format!(
                "Your message to {recipient} was delivered encrypted, because no\r\n\
sufficiently secure connection to the recipient existed.\r\n\
\r\n\
Password: {}\r\n\
\r\n\
Please pass it on by phone or SMS, never by e-mail.\r\n",
                password.display()
            ),
        ),
    };
    MessageBuilder::new()
        .from(("sealgate", format!("postmaster@{hostname}").as_str()))
        .to(sender)
        .subject(subject)
        .message_id(message_id)
        .date(chrono::Utc::now().timestamp())
        .header("Auto-Submitted", Raw::new("auto-generated"))
        .text_body(body)
        .write_to_vec()
        .expect("writing to a Vec does not fail")
}

pub const STORE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS seal_passwords (
    tenant   TEXT NOT NULL,
    address  TEXT NOT NULL,
    sealed   BLOB NOT NULL,
    set_at   INTEGER NOT NULL,
    PRIMARY KEY (tenant, address)
) WITHOUT ROWID;
-- which store key sealed them: a node with another key is told so
CREATE TABLE IF NOT EXISTS seal_password_key (
    one         INTEGER PRIMARY KEY CHECK (one = 1),
    fingerprint TEXT NOT NULL
);
";

/// Pre-agreed passwords per recipient, each sealed with the store key (a
/// random password in `data_dir/passwords.key`, mode 0600) in our own
/// envelope format, in the gateway's tables. In a cluster they are shared
/// and every node needs the same key file: the store remembers a
/// fingerprint of the key, and a node with another key is refused, saying
/// so, before it seals or opens anything.
pub struct PasswordStore {
    tables: Tables,
    key_path: PathBuf,
    iterations: u32,
}

impl PasswordStore {
    /// The store in the node's SQLite file.
    pub fn open(db: &Path, key_path: &Path) -> Result<PasswordStore, ChannelError> {
        Ok(PasswordStore::new(
            Tables::sqlite(db, STORE_SCHEMA)?,
            key_path,
        ))
    }

    pub fn new(tables: Tables, key_path: &Path) -> PasswordStore {
        PasswordStore {
            tables,
            key_path: key_path.to_path_buf(),
            iterations: envelope::MIN_ITERATIONS,
        }
    }

    /// The store key; made on first use.
    fn key(&self, create: bool) -> Result<Option<Password>, ChannelError> {
        match std::fs::read_to_string(&self.key_path) {
            Ok(text) => Ok(Some(Password::from_text(text.trim()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let key = Password::generate();
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&self.key_path)
                    .map_err(|e| {
                        ChannelError::Store(format!("{}: {e}", self.key_path.display()))
                    })?;
                f.write_all(format!("{}\n", key.canonical()).as_bytes())
                    .and_then(|_| f.sync_all())
                    .map_err(|e| {
                        ChannelError::Store(format!("{}: {e}", self.key_path.display()))
                    })?;
                Ok(Some(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ChannelError::Store(format!(
                "{}: {e}",
                self.key_path.display()
            ))),
        }
    }

    /// Refuses a key other than the one the stored passwords were sealed
    /// with (the first key used is remembered).
    async fn check_key(&self, key: &Password) -> Result<(), ChannelError> {
        let ours = key_fingerprint(key);
        self.tables
            .execute(
                "INSERT INTO seal_password_key (one, fingerprint) VALUES (1, ?1)
                 ON CONFLICT (one) DO NOTHING",
                &[ours.clone().into()],
            )
            .await?;
        let stored = self
            .tables
            .row("SELECT fingerprint FROM seal_password_key", &[])
            .await?
            .and_then(|r| r.into_iter().next()?.text())
            .unwrap_or_default();
        if stored != ours {
            return Err(ChannelError::Store(format!(
                "{} is not the key the stored passwords were sealed with (its fingerprint is {ours}, \
                 the store's {stored}): copy passwords.key from a node of the cluster that has it",
                self.key_path.display()
            )));
        }
        Ok(())
    }

    pub async fn set(
        &self,
        tenant: &str,
        address: &str,
        password: &Password,
    ) -> Result<(), ChannelError> {
        let key = self
            .key(true)?
            .ok_or_else(|| ChannelError::Store("no key".into()))?;
        self.check_key(&key).await?;
        let sealed = envelope::seal(password.canonical().as_bytes(), &key, self.iterations);
        // The newest password is the one agreed.
        self.tables
            .execute(
                "INSERT INTO seal_passwords (tenant, address, sealed, set_at)
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (tenant, address)
                 DO UPDATE SET sealed = excluded.sealed, set_at = excluded.set_at",
                &[
                    tenant.into(),
                    address.to_lowercase().into(),
                    sealed.into(),
                    chrono::Utc::now().timestamp().into(),
                ],
            )
            .await?;
        Ok(())
    }

    pub async fn remove(&self, tenant: &str, address: &str) -> Result<bool, ChannelError> {
        Ok(self
            .tables
            .execute(
                "DELETE FROM seal_passwords WHERE tenant = ?1 AND address = ?2",
                &[tenant.into(), address.to_lowercase().into()],
            )
            .await?
            > 0)
    }

    /// Addresses with a pre-agreed password (never the passwords).
    pub async fn list(&self, tenant: &str) -> Result<Vec<(String, i64)>, ChannelError> {
        let rows = self
            .tables
            .query(
                "SELECT address, set_at FROM seal_passwords WHERE tenant = ?1 ORDER BY address",
                &[tenant.into()],
            )
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let mut r = r.into_iter();
                Some((r.next()?.text()?, r.next()?.int()?))
            })
            .collect())
    }

    /// The pre-agreed password of a recipient, if there is one.
    pub async fn get(&self, tenant: &str, address: &str) -> Result<Option<Password>, ChannelError> {
        let sealed = self
            .tables
            .row(
                "SELECT sealed FROM seal_passwords WHERE tenant = ?1 AND address = ?2",
                &[tenant.into(), address.to_lowercase().into()],
            )
            .await?
            .and_then(|r| r.into_iter().next()?.bytes());
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let Some(key) = self.key(false)? else {
            return Err(ChannelError::Store(format!(
                "{} is missing: the stored passwords cannot be read",
                self.key_path.display()
            )));
        };
        self.check_key(&key).await?;
        let plain = envelope::open(&sealed, key.canonical())
            .map_err(|e| ChannelError::Store(format!("a stored password does not open: {e}")))?;
        let text = String::from_utf8(plain)
            .map_err(|_| ChannelError::Store("a stored password is not text".into()))?;
        Ok(Some(Password::from_text(&text)))
    }
}

/// Names a store key without revealing it: 16 hex digits of a SHA-256.
fn key_fingerprint(key: &Password) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("sealgate passwords.key {}", key.canonical()));
    crate::util::hex(&digest[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contacts_file_errors_name_the_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("contacts.csv");
        std::fs::write(
            &path,
            "# phones\nBob@Dst.test, +49 170 1234567\n\nalice@x.test,call me\n",
        )
        .expect("write");
        let err = Contacts::load(&path).unwrap_err().to_string();
        assert!(
            err.ends_with("contacts.csv:4: the second field is not a phone number"),
            "{err}"
        );
        std::fs::write(&path, "bob@dst.test,+49 170 1234567\n").expect("write");
        let c = Contacts::load(&path).expect("loads");
        assert_eq!(c.phone("BOB@dst.test"), Some("+49 170 1234567"));
        assert_eq!(c.phone("eve@dst.test"), None);
    }

    #[tokio::test]
    async fn stored_passwords_are_sealed_and_come_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("g.db");
        let key = dir.path().join("passwords.key");
        let store = PasswordStore::open(&db, &key).expect("open");
        assert_eq!(store.get("t", "bob@dst.test").await.expect("get"), None);
        let pw = Password::from_text("correct horse battery staple");
        store.set("t", "Bob@dst.test", &pw).await.expect("set");
        assert_eq!(
            store.get("t", "bob@DST.test").await.expect("get"),
            Some(pw.clone())
        );
        assert_eq!(store.get("other", "bob@dst.test").await.expect("get"), None);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let raw = std::fs::read(&db).expect("db");
        assert!(
            !raw.windows(pw.canonical().len())
                .any(|w| w == pw.canonical().as_bytes()),
            "the password is not in the database in clear"
        );
        assert_eq!(store.list("t").await.expect("list")[0].0, "bob@dst.test");
        std::fs::remove_file(&key).expect("rm key");
        assert!(
            store
                .get("t", "bob@dst.test")
                .await
                .unwrap_err()
                .to_string()
                .contains("missing")
        );
        assert!(store.remove("t", "bob@dst.test").await.expect("remove"));
        // Another node's key (here: a new one made for a new file) is refused
        // rather than sealing passwords no other node can open.
        let other = PasswordStore::open(&db, &dir.path().join("other.key")).expect("open");
        let err = other
            .set("t", "eve@dst.test", &pw)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is not the key the stored passwords were sealed with"),
            "{err}"
        );
        assert!(other.list("t").await.expect("list").is_empty());
    }
}
