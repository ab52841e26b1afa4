//! Console accounts: who may use the web console and the HTTP API, with
//! which role, kept apart from the SMTP AUTH users. Passwords are argon2
//! hashes; API tokens are random and only their SHA-256 is stored, so the
//! database never holds anything that logs in by itself.
//!
//! The accounts live in the gateway's SQLite database beside the domain
//! memory and the recipient certificates (in a cluster: per node, like
//! them; docs/console.md).

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

const SCHEMA: &str = "
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
    Db(#[from] rusqlite::Error),
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

pub struct AccountStore {
    conn: Mutex<Connection>,
}

/// Bytes of randomness in an API token.
const TOKEN_BYTES: usize = 32;
/// What every token starts with, so that a leaked one is recognised in a scan.
pub const TOKEN_PREFIX: &str = "sgt_";

impl AccountStore {
    pub fn open(db: &Path) -> Result<AccountStore, AccountError> {
        let conn = Connection::open(db)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch("PRAGMA foreign_keys = ON;")?;
        conn.execute_batch(SCHEMA)?;
        Ok(AccountStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves a usable connection.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add(
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
        let conn = self.conn();
        let added = conn.execute(
            "INSERT INTO console_accounts (name, role, tenant, hash, created_at)
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
            params![name, role.name(), tenant, hash, now],
        )?;
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

    /// A new password; the account's API tokens stay valid.
    pub fn set_password(&self, name: &str, password: &str) -> Result<(), AccountError> {
        let hash = hash(password)?;
        let n = self.conn().execute(
            "UPDATE console_accounts SET hash = ? WHERE name = ?",
            params![hash, name],
        )?;
        if n == 0 {
            return Err(AccountError::Missing(name.to_string()));
        }
        Ok(())
    }

    /// Removes the account and its tokens.
    pub fn remove(&self, name: &str) -> Result<(), AccountError> {
        let n = self
            .conn()
            .execute("DELETE FROM console_accounts WHERE name = ?", [name])?;
        if n == 0 {
            return Err(AccountError::Missing(name.to_string()));
        }
        Ok(())
    }

    pub fn list(&self) -> Result<Vec<Account>, AccountError> {
        self.select("ORDER BY name", [])
    }

    pub fn get(&self, name: &str) -> Result<Option<Account>, AccountError> {
        Ok(self.select("WHERE name = ?", [name])?.pop())
    }

    fn select<P: rusqlite::Params>(
        &self,
        tail: &str,
        params: P,
    ) -> Result<Vec<Account>, AccountError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT name, role, tenant, created_at, totp IS NOT NULL FROM console_accounts {tail}"
        ))?;
        let rows = stmt.query_map(params, |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, role, tenant, created_at, totp) = row?;
            out.push(Account {
                name,
                role: role.parse()?,
                tenant,
                totp,
                created_at,
            });
        }
        Ok(out)
    }

    /// Every account's password hash, for the password checker.
    pub fn hashes(&self) -> Result<std::collections::HashMap<String, String>, AccountError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT name, hash FROM console_accounts")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Gives the account a new second factor; returns the provisioning URI
    /// (`otpauth://totp/…`) for an authenticator app.
    pub fn enable_totp(&self, name: &str, issuer: &str) -> Result<String, AccountError> {
        use rand::RngCore;
        let mut secret = vec![0u8; 20];
        rand::rng().fill_bytes(&mut secret);
        let totp = totp(secret.clone(), Some(issuer), name)?;
        let n = self.conn().execute(
            "UPDATE console_accounts SET totp = ? WHERE name = ?",
            params![secret, name],
        )?;
        if n == 0 {
            return Err(AccountError::Missing(name.to_string()));
        }
        Ok(totp.get_url())
    }

    /// Removes the account's second factor.
    pub fn disable_totp(&self, name: &str) -> Result<(), AccountError> {
        let n = self.conn().execute(
            "UPDATE console_accounts SET totp = NULL WHERE name = ?",
            [name],
        )?;
        if n == 0 {
            return Err(AccountError::Missing(name.to_string()));
        }
        Ok(())
    }

    /// Whether `code` is the account's current one-time code (or the one
    /// before or after, for clocks a little apart); true when the account
    /// has no second factor.
    pub fn check_totp(&self, name: &str, code: &str, now: u64) -> Result<bool, AccountError> {
        let secret: Option<Option<Vec<u8>>> = self
            .conn()
            .query_row(
                "SELECT totp FROM console_accounts WHERE name = ?",
                [name],
                |r| r.get(0),
            )
            .optional()?;
        match secret.flatten() {
            None => Ok(true),
            Some(secret) => Ok(totp(secret, None, name)?.check(code.trim(), now)),
        }
    }

    /// A new API token for `name`: returned once, only its hash is kept.
    pub fn new_token(&self, name: &str, now: i64) -> Result<String, AccountError> {
        use rand::RngCore;
        let mut raw = [0u8; TOKEN_BYTES];
        rand::rng().fill_bytes(&mut raw);
        let token = format!("{TOKEN_PREFIX}{}", crate::util::hex(&raw));
        let n = self.conn().execute(
            "INSERT INTO console_tokens (hash, name, created_at)
             SELECT ?, name, ? FROM console_accounts WHERE name = ?",
            params![token_hash(&token), now, name],
        )?;
        if n == 0 {
            return Err(AccountError::Missing(name.to_string()));
        }
        Ok(token)
    }

    /// The account a bearer token belongs to, if any.
    pub fn by_token(&self, token: &str) -> Result<Option<Account>, AccountError> {
        let name: Option<String> = self
            .conn()
            .query_row(
                "SELECT name FROM console_tokens WHERE hash = ?",
                [token_hash(token)],
                |r| r.get(0),
            )
            .optional()?;
        match name {
            Some(name) => self.get(&name),
            None => Ok(None),
        }
    }
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

    #[test]
    fn accounts_roles_and_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let store = AccountStore::open(&dir.path().join("db")).unwrap();
        assert!(matches!(
            store.add("t", Role::TenantAdmin, None, "long enough password", 1),
            Err(AccountError::Tenant)
        ));
        assert!(matches!(
            store.add("a", Role::Admin, None, "short", 1),
            Err(AccountError::Weak)
        ));
        assert!(matches!(
            store.add("a b", Role::Admin, None, "long enough password", 1),
            Err(AccountError::Name(_))
        ));
        store
            .add("ann", Role::Admin, None, "long enough password", 1)
            .unwrap();
        store
            .add(
                "cus",
                Role::TenantAdmin,
                Some("b"),
                "long enough password",
                2,
            )
            .unwrap();
        assert!(matches!(
            store.add("ann", Role::Auditor, None, "long enough password", 3),
            Err(AccountError::Exists(_))
        ));
        let cus = store.get("cus").unwrap().unwrap();
        assert!(cus.sees("b") && !cus.sees("a"));
        let token = store.new_token("cus", 5).unwrap();
        assert!(token.starts_with(TOKEN_PREFIX));
        assert_eq!(store.by_token(&token).unwrap(), Some(cus));
        assert_eq!(store.by_token("sgt_00").unwrap(), None);
        let uri = store.enable_totp("ann", "sealgate gw.test").unwrap();
        assert!(uri.starts_with("otpauth://totp/"), "{uri}");
        assert!(store.get("ann").unwrap().unwrap().totp);
        assert!(
            !store.check_totp("ann", "000000", 59).unwrap()
                || !store.check_totp("ann", "111111", 59).unwrap()
        );
        assert!(
            store.check_totp("cus", "anything", 59).unwrap(),
            "no second factor"
        );
        store.remove("cus").unwrap();
        assert_eq!(store.by_token(&token).unwrap(), None, "tokens go with it");
        assert_eq!(store.list().unwrap().len(), 1);
    }
}
