//! Console accounts: who may use the web console and the HTTP API, with
//! which role, kept apart from the SMTP AUTH users. Passwords are argon2
//! hashes; API tokens are random and only their SHA-256 is stored, so the
//! database never holds anything that logs in by itself.
//!
//! The accounts and their login sessions live where the gateway keeps its
//! tables: its SQLite database, or a cluster's PostgreSQL one, so that an
//! account added on one node logs in on all and a session started on one
//! node is good on the others (docs/console.md).

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::tables::{TableError, Tables, Value};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS console_accounts (
    name       TEXT PRIMARY KEY,
    role       TEXT NOT NULL,
    tenant     TEXT,
    hash       TEXT NOT NULL,
    -- The RFC 6238 secret of the second factor, if the account has one.
    totp       BLOB,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS console_tokens (
    hash       BLOB PRIMARY KEY,
    name       TEXT NOT NULL REFERENCES console_accounts(name) ON DELETE CASCADE,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
-- id: the SHA-256 of the cookie's value
CREATE TABLE IF NOT EXISTS console_sessions (
    id      BLOB PRIMARY KEY,
    name    TEXT NOT NULL REFERENCES console_accounts(name) ON DELETE CASCADE,
    csrf    TEXT NOT NULL,
    started INTEGER NOT NULL,
    last    INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS console_sessions_last ON console_sessions(last);
";

/// What an account may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Queue and domain actions; reads everything.
    Operator,
    /// Reads everything, changes nothing.
    Auditor,
    /// Reads and acts on one tenant's messages, domains and reports only.
    TenantAdmin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
            Role::TenantAdmin => "tenant-admin",
        }
    }

    /// May retry, delete or confirm (within its scope).
    pub fn acts(self) -> bool {
        !matches!(self, Role::Auditor)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = AccountError;
    fn from_str(s: &str) -> Result<Role, AccountError> {
        [
            Role::Admin,
            Role::Operator,
            Role::Auditor,
            Role::TenantAdmin,
        ]
        .into_iter()
        .find(|r| r.name() == s)
        .ok_or_else(|| AccountError::Role(s.to_string()))
    }
}

/// One account as listed; the password hash stays in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Account {
    pub name: String,
    pub role: Role,
    /// The one tenant a tenant-admin sees; none for the other roles.
    pub tenant: Option<String>,
    /// Logs in with a one-time code besides the password.
    pub totp: bool,
    pub created_at: i64,
}

impl Account {
    /// Whether this account may see `tenant`'s data.
    pub fn sees(&self, tenant: &str) -> bool {
        match self.role {
            Role::TenantAdmin => self.tenant.as_deref() == Some(tenant),
            _ => true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("account store: {0}")]
    Db(#[from] TableError),
    #[error("`{0}` is not a role (admin, operator, auditor, tenant-admin)")]
    Role(String),
    #[error("account names are 1 to 64 letters, digits and . _ @ -; `{0}` is not one")]
    Name(String),
    #[error("a tenant-admin needs --tenant, and only a tenant-admin has one")]
    Tenant,
    #[error("account `{0}` exists already (use `account passwd` to change its password)")]
    Exists(String),
    #[error("no account `{0}`")]
    Missing(String),
    #[error("a password of at least 12 characters is needed")]
    Weak,
    #[error("cannot hash the password: {0}")]
    Hash(String),
    #[error("second factor: {0}")]
    Totp(String),
}

/// The accounts, their tokens and their sessions.
pub struct AccountStore {
    tables: Tables,
}

/// Bytes of randomness in an API token.
const TOKEN_BYTES: usize = 32;
/// What every token starts with, so that a leaked one is recognised in a scan.
pub const TOKEN_PREFIX: &str = "sgt_";
/// A session ends this long after login whatever its activity.
const ABSOLUTE: i64 = 12 * 3600;
/// A session's last use is written at most this often (a write per page
/// would cost more than the page).
const TOUCH: i64 = 30;

const ACCOUNT: &str =
    "SELECT name, role, tenant, created_at, totp IS NOT NULL FROM console_accounts";
/// The same columns, of `a`, for the joins that find an account by its
/// token or session in one query.
const ACCOUNT_OF: &str = "a.name, a.role, a.tenant, a.created_at, a.totp IS NOT NULL";

impl AccountStore {
    /// The accounts in the node's SQLite file.
    pub fn open(db: &Path) -> Result<AccountStore, AccountError> {
        Ok(AccountStore::new(Tables::sqlite(db, SCHEMA)?))
    }

    /// The accounts where the gateway keeps its tables (a cluster's are
    /// shared by its nodes).
    pub fn new(tables: Tables) -> AccountStore {
        AccountStore { tables }
    }

    pub async fn add(
        &self,
        name: &str,
        role: Role,
        tenant: Option<&str>,
        password: &str,
        now: i64,
    ) -> Result<Account, AccountError> {
        check_name(name)?;
        if (role == Role::TenantAdmin) != tenant.is_some() {
            return Err(AccountError::Tenant);
        }
        let hash = hash(password)?;
        let added = self
            .tables
            .execute(
                "INSERT INTO console_accounts (name, role, tenant, hash, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (name) DO NOTHING",
                &[
                    name.into(),
                    role.name().into(),
                    tenant.into(),
                    hash.into(),
                    now.into(),
                ],
            )
            .await?;
        if added == 0 {
            return Err(AccountError::Exists(name.to_string()));
        }
        Ok(Account {
            name: name.to_string(),
            role,
            tenant: tenant.map(str::to_string),
            totp: false,
            created_at: now,
        })
    }

    /// A new password; the account's API tokens stay valid, its sessions end.
    pub async fn set_password(&self, name: &str, password: &str) -> Result<(), AccountError> {
        let hash = hash(password)?;
        self.change(
            name,
            "UPDATE console_accounts SET hash = ?2 WHERE name = ?1",
            hash.into(),
        )
        .await?;
        self.tables
            .execute(
                "DELETE FROM console_sessions WHERE name = ?1",
                &[name.into()],
            )
            .await?;
        Ok(())
    }

    /// Removes the account, its tokens and its sessions.
    pub async fn remove(&self, name: &str) -> Result<(), AccountError> {
        let n = self
            .tables
            .execute(
                "DELETE FROM console_accounts WHERE name = ?1",
                &[name.into()],
            )
            .await?;
        if n == 0 {
            return Err(AccountError::Missing(name.to_string()));
        }
        Ok(())
    }

    pub async fn list(&self) -> Result<Vec<Account>, AccountError> {
        let rows = self
            .tables
            .query(&format!("{ACCOUNT} ORDER BY name"), &[])
            .await?;
        rows.into_iter().map(account).collect()
    }

    pub async fn get(&self, name: &str) -> Result<Option<Account>, AccountError> {
        let row = self
            .tables
            .row(&format!("{ACCOUNT} WHERE name = ?1"), &[name.into()])
            .await?;
        row.map(account).transpose()
    }

    /// Every account's password hash, for the password checker.
    pub async fn hashes(&self) -> Result<std::collections::HashMap<String, String>, AccountError> {
        let rows = self
            .tables
            .query("SELECT name, hash FROM console_accounts", &[])
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let mut r = r.into_iter();
                Some((r.next()?.text()?, r.next()?.text()?))
            })
            .collect())
    }

    /// Gives the account a new second factor; returns the provisioning URI
    /// (`otpauth://totp/…`) for an authenticator app.
    pub async fn enable_totp(&self, name: &str, issuer: &str) -> Result<String, AccountError> {
        use rand::RngCore;
        let mut secret = vec![0u8; 20];
        rand::rng().fill_bytes(&mut secret);
        let totp = totp(secret.clone(), Some(issuer), name)?;
        self.change(
            name,
            "UPDATE console_accounts SET totp = ?2 WHERE name = ?1",
            secret.into(),
        )
        .await?;
        Ok(totp.get_url())
    }

    /// Removes the account's second factor.
    pub async fn disable_totp(&self, name: &str) -> Result<(), AccountError> {
        self.change(
            name,
            "UPDATE console_accounts SET totp = ?2 WHERE name = ?1",
            Value::Null,
        )
        .await
    }

    async fn change(&self, name: &str, sql: &str, value: Value) -> Result<(), AccountError> {
        let n = self.tables.execute(sql, &[name.into(), value]).await?;
        if n == 0 {
            return Err(AccountError::Missing(name.to_string()));
        }
        Ok(())
    }

    /// Whether `code` is the account's current one-time code (or the one
    /// before or after, for clocks a little apart); true when the account
    /// has no second factor.
    pub async fn check_totp(&self, name: &str, code: &str, now: u64) -> Result<bool, AccountError> {
        let secret = self
            .tables
            .row(
                "SELECT totp FROM console_accounts WHERE name = ?1",
                &[name.into()],
            )
            .await?
            .and_then(|r| r.into_iter().next()?.bytes());
        match secret {
            None => Ok(true),
            Some(secret) => Ok(totp(secret, None, name)?.check(code.trim(), now)),
        }
    }

    /// A new API token for `name`: returned once, only its hash is kept.
    pub async fn new_token(&self, name: &str, now: i64) -> Result<String, AccountError> {
        use rand::RngCore;
        if self.get(name).await?.is_none() {
            return Err(AccountError::Missing(name.to_string()));
        }
        let mut raw = [0u8; TOKEN_BYTES];
        rand::rng().fill_bytes(&mut raw);
        let token = format!("{TOKEN_PREFIX}{}", crate::util::hex(&raw));
        // Removed meanwhile: the reference fails, and no token is given.
        self.tables
            .execute(
                "INSERT INTO console_tokens (hash, name, created_at) VALUES (?1, ?2, ?3)",
                &[token_hash(&token).into(), name.into(), now.into()],
            )
            .await
            .map_err(|_| AccountError::Missing(name.to_string()))?;
        Ok(token)
    }

    /// The account a bearer token belongs to, if any.
    pub async fn by_token(&self, token: &str) -> Result<Option<Account>, AccountError> {
        let row = self
            .tables
            .row(
                &format!(
                    "SELECT {ACCOUNT_OF} FROM console_tokens t
                     JOIN console_accounts a ON a.name = t.name WHERE t.hash = ?1"
                ),
                &[token_hash(token).into()],
            )
            .await?;
        row.map(account).transpose()
    }

    /// A new session for `name`: its id (the cookie) and its CSRF token.
    /// Only the id's hash is kept, and sessions past their time go.
    pub async fn start_session(
        &self,
        name: &str,
        idle: Duration,
        now: i64,
    ) -> Result<(String, String), AccountError> {
        let (id, csrf) = (random_hex(), random_hex());
        self.tables
            .execute(
                "DELETE FROM console_sessions WHERE last < ?1 OR started < ?2",
                &[
                    (now - idle.as_secs() as i64).into(),
                    (now - ABSOLUTE).into(),
                ],
            )
            .await?;
        self.tables
            .execute(
                "INSERT INTO console_sessions (id, name, csrf, started, last)
                 VALUES (?1, ?2, ?3, ?4, ?4)",
                &[
                    token_hash(&id).into(),
                    name.into(),
                    csrf.clone().into(),
                    now.into(),
                ],
            )
            .await?;
        Ok((id, csrf))
    }

    /// The account and CSRF token of a live session (on any node of a
    /// cluster), its last use refreshed.
    pub async fn session(
        &self,
        id: &str,
        idle: Duration,
        now: i64,
    ) -> Result<Option<(Account, String)>, AccountError> {
        let key = Value::from(token_hash(id));
        // The account is read with the session each time: a removed
        // account or a changed role counts at once.
        let Some(mut row) = self
            .tables
            .row(
                &format!(
                    "SELECT {ACCOUNT_OF}, s.csrf, s.started, s.last FROM console_sessions s
                     JOIN console_accounts a ON a.name = s.name WHERE s.id = ?1"
                ),
                std::slice::from_ref(&key),
            )
            .await?
        else {
            return Ok(None);
        };
        let session = row.split_off(5);
        let mut session = session.into_iter();
        let (Some(csrf), Some(started), Some(last)) = (
            session.next().and_then(Value::text),
            session.next().and_then(|v| v.int()),
            session.next().and_then(|v| v.int()),
        ) else {
            return Ok(None);
        };
        if now - last > idle.as_secs() as i64 || now - started > ABSOLUTE {
            self.end_session(id).await?;
            return Ok(None);
        }
        if now - last >= TOUCH {
            self.tables
                .execute(
                    "UPDATE console_sessions SET last = ?2 WHERE id = ?1",
                    &[key, now.into()],
                )
                .await?;
        }
        Ok(Some((account(row)?, csrf)))
    }

    pub async fn end_session(&self, id: &str) -> Result<(), AccountError> {
        self.tables
            .execute(
                "DELETE FROM console_sessions WHERE id = ?1",
                &[token_hash(id).into()],
            )
            .await?;
        Ok(())
    }
}

fn account(row: Vec<Value>) -> Result<Account, AccountError> {
    let mut r = row.into_iter();
    let mut next = || r.next().unwrap_or(Value::Null);
    let (name, role, tenant, created_at, totp) = (next(), next(), next(), next(), next());
    let (Some(name), Some(role), Some(created_at)) = (name.text(), role.text(), created_at.int())
    else {
        return Err(AccountError::Db(TableError::Column(
            "an account row with a missing name, role or time".into(),
        )));
    };
    Ok(Account {
        name,
        role: role.parse()?,
        tenant: tenant.text(),
        totp: totp.truth(),
        created_at,
    })
}

pub fn random_hex() -> String {
    use rand::RngCore;
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    crate::util::hex(&raw)
}

fn check_name(name: &str) -> Result<(), AccountError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'));
    if ok {
        Ok(())
    } else {
        Err(AccountError::Name(name.to_string()))
    }
}

fn hash(password: &str) -> Result<String, AccountError> {
    if password.chars().count() < 12 {
        return Err(AccountError::Weak);
    }
    crate::inbound::auth::hash_password(password).map_err(AccountError::Hash)
}

/// RFC 6238 as authenticator apps use it: SHA-1, 6 digits, 30 s steps,
/// one step of skew either way.
fn totp(secret: Vec<u8>, issuer: Option<&str>, name: &str) -> Result<totp_rs::TOTP, AccountError> {
    totp_rs::TOTP::new(
        totp_rs::Algorithm::SHA1,
        6,
        1,
        30,
        secret,
        issuer.map(str::to_string),
        name.to_string(),
    )
    .map_err(|e| AccountError::Totp(e.to_string()))
}

fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accounts_roles_and_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let store = AccountStore::open(&dir.path().join("db")).unwrap();
        assert!(matches!(
            store
                .add("t", Role::TenantAdmin, None, "long enough password", 1)
                .await,
            Err(AccountError::Tenant)
        ));
        assert!(matches!(
            store.add("a", Role::Admin, None, "short", 1).await,
            Err(AccountError::Weak)
        ));
        assert!(matches!(
            store
                .add("a b", Role::Admin, None, "long enough password", 1)
                .await,
            Err(AccountError::Name(_))
        ));
        store
            .add("ann", Role::Admin, None, "long enough password", 1)
            .await
            .unwrap();
        store
            .add(
                "cus",
                Role::TenantAdmin,
                Some("b"),
                "long enough password",
                2,
            )
            .await
            .unwrap();
        assert!(matches!(
            store
                .add("ann", Role::Auditor, None, "long enough password", 3)
                .await,
            Err(AccountError::Exists(_))
        ));
        let cus = store.get("cus").await.unwrap().unwrap();
        assert!(cus.sees("b") && !cus.sees("a"));
        let token = store.new_token("cus", 5).await.unwrap();
        assert!(token.starts_with(TOKEN_PREFIX));
        assert_eq!(store.by_token(&token).await.unwrap(), Some(cus));
        assert_eq!(store.by_token("sgt_00").await.unwrap(), None);
        let uri = store.enable_totp("ann", "sealgate gw.test").await.unwrap();
        assert!(uri.starts_with("otpauth://totp/"), "{uri}");
        assert!(store.get("ann").await.unwrap().unwrap().totp);
        assert!(
            !store.check_totp("ann", "000000", 59).await.unwrap()
                || !store.check_totp("ann", "111111", 59).await.unwrap()
        );
        assert!(
            store.check_totp("cus", "anything", 59).await.unwrap(),
            "no second factor"
        );
        store.remove("cus").await.unwrap();
        assert_eq!(
            store.by_token(&token).await.unwrap(),
            None,
            "tokens go with it"
        );
        assert_eq!(store.list().await.unwrap().len(), 1);
    }
}
