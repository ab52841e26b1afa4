//! How a sealed message's password reaches its recipient, out of band:
//! a password agreed beforehand (kept encrypted in the [`PasswordStore`]),
//! an HTTP webhook (an SMS gateway) for recipients whose phone the
//! tenant's [`Contacts`] file knows, or a mail to the sender — who passes
//! it on by phone — sent only over a qualified connection. The password is
//! never written to the log or the spool in clear.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use mail_builder::MessageBuilder;
use mail_builder::headers::raw::Raw;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

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

impl From<rusqlite::Error> for ChannelError {
    fn from(e: rusqlite::Error) -> Self {
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

const STORE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS seal_passwords (
    tenant   TEXT NOT NULL,
    address  TEXT NOT NULL,
    sealed   BLOB NOT NULL,
    set_at   INTEGER NOT NULL,
    PRIMARY KEY (tenant, address)
) WITHOUT ROWID;
";

/// Pre-agreed passwords per recipient, each sealed with the store key (a
/// random password in `data_dir/passwords.key`, mode 0600) in our own
/// envelope format, in the gateway's database.
pub struct PasswordStore {
    conn: Mutex<Connection>,
    key_path: PathBuf,
    iterations: u32,
}

impl PasswordStore {
    pub fn open(db: &Path, key_path: &Path) -> Result<PasswordStore, ChannelError> {
        let conn = Connection::open(db)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(STORE_SCHEMA)?;
        Ok(PasswordStore {
            conn: Mutex::new(conn),
            key_path: key_path.to_path_buf(),
            iterations: envelope::MIN_ITERATIONS,
        })
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

    pub fn set(
        &self,
        tenant: &str,
        address: &str,
        password: &Password,
    ) -> Result<(), ChannelError> {
        let key = self
            .key(true)?
            .ok_or_else(|| ChannelError::Store("no key".into()))?;
        let sealed = envelope::seal(password.canonical().as_bytes(), &key, self.iterations);
        let conn = self
            .conn
            .lock()
            .map_err(|_| ChannelError::Store("poisoned".into()))?;
        conn.execute(
            "INSERT OR REPLACE INTO seal_passwords (tenant, address, sealed, set_at) VALUES (?, ?, ?, ?)",
            params![tenant, address.to_lowercase(), sealed, chrono::Utc::now().timestamp()],
        )?;
        Ok(())
    }

    pub fn remove(&self, tenant: &str, address: &str) -> Result<bool, ChannelError> {
        let conn = self
            .conn
            .lock()
            .map_err(|_| ChannelError::Store("poisoned".into()))?;
        Ok(conn.execute(
            "DELETE FROM seal_passwords WHERE tenant = ? AND address = ?",
            params![tenant, address.to_lowercase()],
        )? > 0)
    }

    /// Addresses with a pre-agreed password (never the passwords).
    pub fn list(&self, tenant: &str) -> Result<Vec<(String, i64)>, ChannelError> {
        let conn = self
            .conn
            .lock()
            .map_err(|_| ChannelError::Store("poisoned".into()))?;
        let mut stmt = conn.prepare(
            "SELECT address, set_at FROM seal_passwords WHERE tenant = ? ORDER BY address",
        )?;
        let rows = stmt
            .query_map([tenant], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// The pre-agreed password of a recipient, if there is one.
    pub fn get(&self, tenant: &str, address: &str) -> Result<Option<Password>, ChannelError> {
        let sealed: Option<Vec<u8>> = {
            let conn = self
                .conn
                .lock()
                .map_err(|_| ChannelError::Store("poisoned".into()))?;
            conn.query_row(
                "SELECT sealed FROM seal_passwords WHERE tenant = ? AND address = ?",
                params![tenant, address.to_lowercase()],
                |r| r.get(0),
            )
            .optional()?
        };
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let Some(key) = self.key(false)? else {
            return Err(ChannelError::Store(format!(
                "{} is missing: the stored passwords cannot be read",
                self.key_path.display()
            )));
        };
        let plain = envelope::open(&sealed, key.canonical())
            .map_err(|e| ChannelError::Store(format!("a stored password does not open: {e}")))?;
        let text = String::from_utf8(plain)
            .map_err(|_| ChannelError::Store("a stored password is not text".into()))?;
        Ok(Some(Password::from_text(&text)))
    }
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

    #[test]
    fn stored_passwords_are_sealed_and_come_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("g.db");
        let key = dir.path().join("passwords.key");
        let store = PasswordStore::open(&db, &key).expect("open");
        assert_eq!(store.get("t", "bob@dst.test").expect("get"), None);
        let pw = Password::from_text("correct horse battery staple");
        store.set("t", "Bob@dst.test", &pw).expect("set");
        assert_eq!(
            store.get("t", "bob@DST.test").expect("get"),
            Some(pw.clone())
        );
        assert_eq!(store.get("other", "bob@dst.test").expect("get"), None);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let raw = std::fs::read(&db).expect("db");
        assert!(
            !raw.windows(pw.canonical().len())
                .any(|w| w == pw.canonical().as_bytes()),
            "the password is not in the database in clear"
        );
        assert_eq!(store.list("t").expect("list")[0].0, "bob@dst.test");
        std::fs::remove_file(&key).expect("rm key");
        assert!(
            store
                .get("t", "bob@dst.test")
                .unwrap_err()
                .to_string()
                .contains("missing")
        );
        assert!(store.remove("t", "bob@dst.test").expect("remove"));
    }
}
