//! Encryption at rest: nothing of a message (body, sender, recipients,
//! client, the peers' replies) is written to the spool database readable.
//!
//! Each value is sealed with AES-256-GCM under a random *data key*. The data
//! keys are kept in the database, each wrapped (AES-256-GCM again) by the
//! *key-encryption key*: 32 random bytes in a file outside the database
//! (`[spool] key_file`, a systemd credential named `spool.key`, or
//! `data_dir/spool.key`, made on first start). A copy of the database
//! without the key file reads as noise, and the key file alone holds no
//! mail; that is why the two are kept apart (docs/configuration.md).
//!
//! A sealed value is `1 ‖ data key id (4 bytes, big-endian) ‖ nonce (12) ‖
//! ciphertext ‖ tag (16)`. The associated data names the column and the
//! row, so a value moved to another row or column does not open.
//!
//! Rotation (`sealgate spool rekey`) adds a data key, re-seals every value
//! under it, then deletes the old one; with a new key-encryption key the
//! data key is wrapped under both until the new key file is in place, so a
//! crash at any step leaves a spool that the old or the new file opens.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use rusqlite::{Connection, OptionalExtension, params};
use zeroize::Zeroizing;

const FORMAT: u8 = 1;
const HEADER: usize = 1 + 4 + NONCE_LEN;
const TAG: usize = 16;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS spool_keys (
    id          INTEGER NOT NULL,
    -- fingerprint of the key-encryption key this copy is wrapped under
    kek         TEXT NOT NULL,
    wrapped     BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (id, kek)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS spool_key_state (
    one      INTEGER PRIMARY KEY CHECK (one = 1),
    current  INTEGER NOT NULL
);
";

#[derive(Debug, thiserror::Error)]
pub enum AtRestError {
    #[error(
        "{path}: the spool key file is missing, and the spool holds mail encrypted with it; \
         refusing to start so that nothing is lost. Restore the key file (keep it apart from \
         database backups) or point [spool] key_file at it"
    )]
    Missing { path: PathBuf },
    #[error(
        "{path}: this key (fingerprint {found}) does not open the spool, whose data key is \
         wrapped under {expected}; refusing to start so that nothing is lost"
    )]
    WrongKey {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("spool encryption: {0}")]
    Database(#[from] rusqlite::Error),
    #[error("spool value does not decrypt: {0}")]
    Corrupt(String),
}

/// Which stored value a sealed value belongs to; part of its associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Body,
    Sender,
    EnvId,
    Client,
    Address,
    Orcpt,
    LastReply,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::Body => "messages.body",
            Field::Sender => "messages.sender",
            Field::EnvId => "messages.env_id",
            Field::Client => "messages.client",
            Field::Address => "recipients.address",
            Field::Orcpt => "recipients.orcpt",
            Field::LastReply => "recipients.last_reply",
        }
    }
}

/// The row a value is stored in: message id, and the recipient index (0 for message columns).
#[derive(Debug, Clone, Copy)]
pub struct Row(pub i64, pub i64);

/// The key-encryption key.
pub struct Kek {
    key: LessSafeKey,
    fingerprint: String,
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kek({})", self.fingerprint)
    }
}

impl Kek {
    /// The data keys of `stored` wrapped under this key, but those `known`.
    fn open_keys(
        &self,
        stored: &[StoredKey],
        known: impl Fn(u32) -> bool,
    ) -> Result<Vec<(u32, LessSafeKey)>, AtRestError> {
        stored
            .iter()
            .filter(|k| k.kek == self.fingerprint && !known(k.id))
            .map(|k| Ok((k.id, aead_key(&*self.unwrap(k.id, &k.wrapped)?))))
            .collect()
    }

    fn from_bytes(bytes: &[u8; 32]) -> Kek {
        let digest = ring::digest::digest(
            &ring::digest::SHA256,
            &[b"sealgate spool kek\0".as_slice(), bytes].concat(),
        );
        Kek {
            key: aead_key(bytes),
            fingerprint: hex(&digest.as_ref()[..8]),
        }
    }

    /// The key in `path`; `None` when there is no such file.
    pub fn read(path: &Path) -> Result<Option<Kek>, AtRestError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => Zeroizing::new(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(file_error(path, e)),
        };
        let line = text.trim();
        let mut bytes = Zeroizing::new([0u8; 32]);
        if line.len() != 64 || !line.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(AtRestError::File {
                path: path.to_path_buf(),
                message: "expected one line of 64 hexadecimal digits (a 256-bit key)".into(),
            });
        }
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte =
                u8::from_str_radix(&line[2 * i..2 * i + 2], 16).map_err(|e| AtRestError::File {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
        }
        Ok(Some(Kek::from_bytes(&bytes)))
    }

    /// Makes a new key and writes it to `path`, which must not exist (mode 0600, synced).
    pub fn create(path: &Path) -> Result<Kek, AtRestError> {
        let bytes = random_key()?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| file_error(path, e))?;
        let text = Zeroizing::new(format!("{}\n", hex(bytes.as_ref())));
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| file_error(path, e))?;
        sync_dir(path)?;
        Ok(Kek::from_bytes(&bytes))
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn wrap(&self, id: u32, dek: &[u8; 32]) -> Result<Vec<u8>, AtRestError> {
        seal_with(&self.key, id, &wrap_aad(id), dek)
    }

    fn unwrap(&self, id: u32, wrapped: &[u8]) -> Result<Zeroizing<[u8; 32]>, AtRestError> {
        let plain = Zeroizing::new(open_with(&self.key, &wrap_aad(id), wrapped)?);
        let mut out = Zeroizing::new([0u8; 32]);
        if plain.len() != 32 {
            return Err(AtRestError::Corrupt(format!(
                "data key {id} has the wrong size"
            )));
        }
        out.copy_from_slice(&plain);
        Ok(out)
    }
}

fn wrap_aad(id: u32) -> Vec<u8> {
    format!("spool_keys:{id}").into_bytes()
}

/// Where the key-encryption key comes from: the configured file, else a
/// systemd credential `spool.key`, else `data_dir/spool.key`.
pub fn key_path(configured: Option<&Path>, data_dir: &Path) -> PathBuf {
    if let Some(p) = configured {
        return p.to_path_buf();
    }
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let p = Path::new(&dir).join("spool.key");
        if p.exists() {
            return p;
        }
    }
    data_dir.join("spool.key")
}

/// The data keys of an open spool.
pub struct Cipher {
    keys: RwLock<Keys>,
    path: PathBuf,
}

struct Keys {
    current: u32,
    by_id: HashMap<u32, LessSafeKey>,
    /// `None` only for a reader of a spool that has no keys yet.
    kek: Option<Kek>,
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cipher({})", self.path.display())
    }
}

impl Cipher {
    /// Unwraps the spool's data keys (read from its SQLite database) with
    /// the key in `path`; see [`Cipher::from_stored`].
    pub fn open(conn: &Connection, path: &Path, create: bool) -> Result<Cipher, AtRestError> {
        conn.execute_batch(SCHEMA)?;
        let stored: Vec<StoredKey> = conn
            .prepare("SELECT id, kek, wrapped, created_at FROM spool_keys ORDER BY id")?
            .query_map([], |r| {
                Ok(StoredKey {
                    id: r.get(0)?,
                    kek: r.get(1)?,
                    wrapped: r.get(2)?,
                    created_at: r.get(3)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let current: Option<u32> = conn
            .query_row("SELECT current FROM spool_key_state", [], |r| r.get(0))
            .optional()?;
        let (cipher, first) = Cipher::from_stored(&stored, current, path, create)?;
        if let Some(k) = first {
            conn.execute(
                "INSERT INTO spool_keys (id, kek, wrapped, created_at) VALUES (?, ?, ?, ?)",
                params![k.id, k.kek, k.wrapped, k.created_at],
            )?;
            conn.execute(
                "INSERT INTO spool_key_state (one, current) VALUES (1, ?)",
                [k.id],
            )?;
        }
        Ok(cipher)
    }

    /// Unwraps the data keys `stored` (whichever database holds them; the
    /// current one is `current`) with the key in `path`. With `create`
    /// (the gateway starting), a spool without keys gets its first data
    /// key, returned for the caller to store, and a missing key file is
    /// made, but only then: a spool that has keys and no key file is an
    /// error, never a fresh start.
    pub fn from_stored(
        stored: &[StoredKey],
        current: Option<u32>,
        path: &Path,
        create: bool,
    ) -> Result<(Cipher, Option<StoredKey>), AtRestError> {
        let kek = match Kek::read(path)? {
            Some(k) => k,
            None if stored.is_empty() && create => Kek::create(path)?,
            // A reader of a spool that never stored anything: nothing to open.
            None if stored.is_empty() => {
                let cipher = Cipher {
                    keys: RwLock::new(Keys {
                        current: 0,
                        by_id: HashMap::new(),
                        kek: None,
                    }),
                    path: path.to_path_buf(),
                };
                return Ok((cipher, None));
            }
            None => {
                return Err(AtRestError::Missing {
                    path: path.to_path_buf(),
                });
            }
        };
        let mut by_id: HashMap<u32, LessSafeKey> =
            kek.open_keys(stored, |_| false)?.into_iter().collect();
        if !stored.is_empty() && by_id.is_empty() {
            return Err(AtRestError::WrongKey {
                path: path.to_path_buf(),
                found: kek.fingerprint.clone(),
                expected: stored[0].kek.clone(),
            });
        }
        let mut first = None;
        let current = match current {
            Some(c) if by_id.contains_key(&c) => c,
            Some(c) => {
                return Err(AtRestError::Corrupt(format!(
                    "the current data key {c} is not wrapped under the key in {}",
                    path.display()
                )));
            }
            None if create => {
                let id = 1;
                let dek = random_key()?;
                first = Some(StoredKey {
                    id,
                    kek: kek.fingerprint.clone(),
                    wrapped: kek.wrap(id, &dek)?,
                    created_at: crate::util::now(),
                });
                by_id.insert(id, aead_key(&dek));
                id
            }
            // Nothing was ever stored: a reader has nothing to open.
            None => 0,
        };
        let cipher = Cipher {
            keys: RwLock::new(Keys {
                current,
                by_id,
                kek: Some(kek),
            }),
            path: path.to_path_buf(),
        };
        Ok((cipher, first))
    }

    fn keys(&self) -> std::sync::RwLockReadGuard<'_, Keys> {
        self.keys.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Seals `plain` for `field` of `row` under the current data key.
    pub fn seal(&self, field: Field, row: Row, plain: &[u8]) -> Result<Vec<u8>, AtRestError> {
        let keys = self.keys();
        let key = keys
            .by_id
            .get(&keys.current)
            .ok_or_else(|| AtRestError::Corrupt("the spool has no data key to write".into()))?;
        seal_with(key, keys.current, &aad(field, row), plain)
    }

    pub fn seal_text(&self, field: Field, row: Row, text: &str) -> Result<Vec<u8>, AtRestError> {
        self.seal(field, row, text.as_bytes())
    }

    /// Opens what [`Cipher::seal`] sealed for the same field and row.
    pub fn open_value(
        &self,
        field: Field,
        row: Row,
        sealed: &[u8],
    ) -> Result<Vec<u8>, AtRestError> {
        let id = key_id(sealed).ok_or_else(|| {
            AtRestError::Corrupt(format!("{} of {} is cut short", field.name(), row.0))
        })?;
        let keys = self.keys();
        let key = keys.by_id.get(&id).ok_or_else(|| {
            AtRestError::Corrupt(format!(
                "{} of {}: unknown data key {id}",
                field.name(),
                row.0
            ))
        })?;
        open_with(key, &aad(field, row), sealed)
            .map_err(|_| AtRestError::Corrupt(format!("{} of message {}", field.name(), row.0)))
    }

    pub fn open_text(&self, field: Field, row: Row, sealed: &[u8]) -> Result<String, AtRestError> {
        String::from_utf8(self.open_value(field, row, sealed)?).map_err(|_| {
            AtRestError::Corrupt(format!("{} of {} is not UTF-8", field.name(), row.0))
        })
    }

    /// Whether values can be written: the spool has a data key.
    pub fn writable(&self) -> bool {
        let keys = self.keys();
        keys.by_id.contains_key(&keys.current)
    }

    /// Whether a sealed value is under the current data key.
    pub fn is_current(&self, sealed: &[u8]) -> bool {
        key_id(sealed) == Some(self.keys().current)
    }

    /// The value sealed again under the current data key; `None` if it already is.
    pub fn reseal(
        &self,
        field: Field,
        row: Row,
        sealed: &[u8],
    ) -> Result<Option<Vec<u8>>, AtRestError> {
        if self.is_current(sealed) {
            return Ok(None);
        }
        let plain = Zeroizing::new(self.open_value(field, row, sealed)?);
        self.seal(field, row, &plain).map(Some)
    }

    /// The key file this spool was opened with.
    pub fn key_path(&self) -> &Path {
        &self.path
    }

    /// Step one of a rotation: a new data key, wrapped under the current
    /// key-encryption key and, when given, under `next` too. New values are
    /// sealed under it from the commit on; old ones still open.
    pub fn add_data_key(&self, conn: &Connection, next: Option<&Kek>) -> Result<u32, AtRestError> {
        let id: u32 =
            conn.query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM spool_keys", [], |r| {
                r.get(0)
            })?;
        let (rows, key) = self.new_data_key(id, next)?;
        let mut insert = conn
            .prepare("INSERT INTO spool_keys (id, kek, wrapped, created_at) VALUES (?, ?, ?, ?)")?;
        for k in &rows {
            insert.execute(params![k.id, k.kek, k.wrapped, k.created_at])?;
        }
        conn.execute(
            "INSERT INTO spool_key_state (one, current) VALUES (1, ?1)
             ON CONFLICT (one) DO UPDATE SET current = ?1",
            [id],
        )?;
        self.activate(key);
        Ok(id)
    }

    /// A new data key `id`, as the rows to store (wrapped under the
    /// current key-encryption key and `next`), and the key to
    /// [`Cipher::activate`] once they are committed.
    pub fn new_data_key(
        &self,
        id: u32,
        next: Option<&Kek>,
    ) -> Result<(Vec<StoredKey>, NewDataKey), AtRestError> {
        let keys = self.keys();
        let kek = keys.kek.as_ref().ok_or_else(|| AtRestError::Missing {
            path: self.path.clone(),
        })?;
        let dek = random_key()?;
        let now = crate::util::now();
        let mut rows = vec![StoredKey {
            id,
            kek: kek.fingerprint.clone(),
            wrapped: kek.wrap(id, &dek)?,
            created_at: now,
        }];
        if let Some(next) = next {
            rows.push(StoredKey {
                id,
                kek: next.fingerprint.clone(),
                wrapped: next.wrap(id, &dek)?,
                created_at: now,
            });
        }
        Ok((rows, NewDataKey { id, dek }))
    }

    /// Seals new values under `key` from now on.
    pub fn activate(&self, key: NewDataKey) {
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        keys.by_id.insert(key.id, aead_key(&key.dek));
        keys.current = key.id;
    }

    /// Opens values sealed under `key` from now on, and goes on sealing
    /// under the current key: a shared spool's nodes all learn a new data
    /// key before any of them seals under it.
    pub fn know(&self, key: &NewDataKey) {
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        keys.by_id.insert(key.id, aead_key(&key.dek));
    }

    /// Follows a rotation another process of a shared spool runs: learns
    /// the data keys in `stored` (wrapped under this key-encryption key)
    /// that are new here, seals under `current` once it is known, and
    /// forgets the keys no longer stored. Whether anything changed.
    pub fn follow(&self, stored: &[StoredKey], current: u32) -> Result<bool, AtRestError> {
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        let Some(kek) = keys.kek.as_ref() else {
            return Ok(false);
        };
        let learned = kek.open_keys(stored, |id| keys.by_id.contains_key(&id))?;
        let mut changed = !learned.is_empty();
        keys.by_id.extend(learned);
        if keys.current != current && keys.by_id.contains_key(&current) {
            keys.current = current;
            changed = true;
        }
        let before = keys.by_id.len();
        let now_current = keys.current;
        keys.by_id
            .retain(|id, _| *id == now_current || stored.iter().any(|k| k.id == *id));
        Ok(changed || keys.by_id.len() != before)
    }

    /// How many data keys this process can open.
    pub fn key_count(&self) -> usize {
        self.keys().by_id.len()
    }

    /// The newest data key this process can open.
    pub fn newest_key(&self) -> u32 {
        self.keys().by_id.keys().copied().max().unwrap_or(0)
    }

    /// Last step: every data key but the current one is gone from the
    /// database, and with `kek`, only its wrapping of the current key stays.
    pub fn drop_old_keys(&self, conn: &Connection, kek: Option<Kek>) -> Result<(), AtRestError> {
        let current = self.keys().current;
        conn.execute("DELETE FROM spool_keys WHERE id != ?", [current])?;
        if let Some(kek) = &kek {
            conn.execute(
                "DELETE FROM spool_keys WHERE kek != ?",
                [kek.fingerprint.as_str()],
            )?;
        }
        self.forget_old_keys(kek);
        Ok(())
    }

    /// After the old keys left the database: forget them here too, and
    /// use `kek` (the new key-encryption key) from now on.
    pub fn forget_old_keys(&self, kek: Option<Kek>) {
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        let current = keys.current;
        if let Some(kek) = kek {
            keys.kek = Some(kek);
        }
        keys.by_id.retain(|id, _| *id == current);
    }

    /// The id of the key new values are sealed under.
    pub fn current_key(&self) -> u32 {
        self.keys().current
    }

    /// The fingerprint of the key-encryption key in use.
    pub fn kek_fingerprint(&self) -> Option<String> {
        self.keys().kek.as_ref().map(|k| k.fingerprint.clone())
    }
}

/// A data key as a database stores it.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub id: u32,
    /// Fingerprint of the key-encryption key this copy is wrapped under.
    pub kek: String,
    pub wrapped: Vec<u8>,
    pub created_at: i64,
}

/// A data key made by [`Cipher::new_data_key`], not yet in use.
pub struct NewDataKey {
    id: u32,
    dek: Zeroizing<[u8; 32]>,
}

/// What a rotation does with the key-encryption key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KekChange {
    /// Only the data key is new.
    Keep,
    /// A new key replaces the key file (written beside it, renamed over it).
    Replace,
    /// A new key is written to this file, which must not exist; the key
    /// file is left alone, and after the rotation only the new file opens
    /// the spool (for keys kept as systemd credentials).
    WriteTo(PathBuf),
}

impl KekChange {
    /// The new key-encryption key, made now (or taken from a rotation that
    /// stopped half-way), and the file it is in.
    pub fn prepare(&self, key_file: &Path) -> Result<Option<(Kek, PathBuf)>, AtRestError> {
        let path = match self {
            KekChange::Keep => return Ok(None),
            KekChange::Replace => {
                let mut name = key_file.as_os_str().to_owned();
                name.push(".new");
                let path = PathBuf::from(name);
                if let Some(kek) = Kek::read(&path)? {
                    return Ok(Some((kek, path)));
                }
                path
            }
            KekChange::WriteTo(p) => p.clone(),
        };
        Ok(Some((Kek::create(&path)?, path)))
    }
}

/// What a rotation did.
#[derive(Debug, Clone)]
pub struct RekeyDone {
    pub data_key: u32,
    pub messages: usize,
    /// The new key-encryption key's fingerprint and where it is.
    pub kek: Option<(String, PathBuf)>,
}

impl fmt::Display for RekeyDone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "data key {} in use, {} message(s) encrypted again",
            self.data_key, self.messages
        )?;
        if let Some((fingerprint, path)) = &self.kek {
            write!(
                f,
                "; new key file {} (fingerprint {fingerprint})",
                path.display()
            )?;
        }
        Ok(())
    }
}

fn aad(field: Field, row: Row) -> Vec<u8> {
    format!("{}:{}:{}", field.name(), row.0, row.1).into_bytes()
}

fn key_id(sealed: &[u8]) -> Option<u32> {
    if sealed.len() < HEADER + TAG || sealed[0] != FORMAT {
        return None;
    }
    Some(u32::from_be_bytes([
        sealed[1], sealed[2], sealed[3], sealed[4],
    ]))
}

fn seal_with(key: &LessSafeKey, id: u32, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, AtRestError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| AtRestError::Corrupt("the system random source failed".into()))?;
    let mut out = Vec::with_capacity(HEADER + plain.len() + TAG);
    out.push(FORMAT);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plain);
    let mut body = out.split_off(HEADER);
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut body,
    )
    .map_err(|_| AtRestError::Corrupt("sealing failed".into()))?;
    out.append(&mut body);
    Ok(out)
}

fn open_with(key: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, AtRestError> {
    if sealed.len() < HEADER + TAG || sealed[0] != FORMAT {
        return Err(AtRestError::Corrupt("not a sealed value".into()));
    }
    let nonce = Nonce::try_assume_unique_for_key(&sealed[5..HEADER])
        .map_err(|_| AtRestError::Corrupt("bad nonce".into()))?;
    let mut body = sealed[HEADER..].to_vec();
    let plain = key
        .open_in_place(nonce, Aad::from(aad), &mut body)
        .map_err(|_| AtRestError::Corrupt("authentication failed".into()))?;
    let n = plain.len();
    body.truncate(n);
    Ok(body)
}

fn aead_key(bytes: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("32 bytes is an AES-256 key"))
}

fn random_key() -> Result<Zeroizing<[u8; 32]>, AtRestError> {
    let mut key = Zeroizing::new([0u8; 32]);
    SystemRandom::new()
        .fill(key.as_mut())
        .map_err(|_| AtRestError::Corrupt("the system random source failed".into()))?;
    Ok(key)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn file_error(path: &Path, e: std::io::Error) -> AtRestError {
    AtRestError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Syncs the directory holding `path`, so that a new name survives a crash.
pub fn sync_dir(path: &Path) -> Result<(), AtRestError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| file_error(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("db")).unwrap();
        (dir, conn)
    }

    #[test]
    fn a_value_opens_only_in_its_own_field_and_row() {
        let (dir, conn) = spool();
        let cipher = Cipher::open(&conn, &dir.path().join("spool.key"), true).unwrap();
        let sealed = cipher
            .seal(Field::Body, Row(7, 0), b"Secret plans")
            .unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"Secret"));
        assert_eq!(
            cipher.open_value(Field::Body, Row(7, 0), &sealed).unwrap(),
            b"Secret plans"
        );
        assert!(cipher.open_value(Field::Body, Row(8, 0), &sealed).is_err());
        assert!(
            cipher
                .open_value(Field::Sender, Row(7, 0), &sealed)
                .is_err()
        );
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(cipher.open_value(Field::Body, Row(7, 0), &flipped).is_err());
        assert!(
            cipher
                .open_value(Field::Body, Row(7, 0), &sealed[..10])
                .is_err()
        );
    }

    #[test]
    fn the_key_file_is_made_once_and_then_required() {
        let (dir, conn) = spool();
        let path = dir.path().join("spool.key");
        let sealed = {
            let c = Cipher::open(&conn, &path, true).unwrap();
            c.seal(Field::Sender, Row(1, 0), b"a@b").unwrap()
        };
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Reopened with the same file: the same data key.
        let c = Cipher::open(&conn, &path, false).unwrap();
        assert_eq!(
            c.open_value(Field::Sender, Row(1, 0), &sealed).unwrap(),
            b"a@b"
        );
        drop(c);
        // Missing: an error, even for the gateway starting, and no new file.
        let moved = dir.path().join("elsewhere.key");
        std::fs::rename(&path, &moved).unwrap();
        let e = Cipher::open(&conn, &path, true).unwrap_err();
        assert!(matches!(e, AtRestError::Missing { .. }), "{e}");
        assert!(!path.exists());
        // Another key: named as the wrong one.
        Kek::create(&path).unwrap();
        let e = Cipher::open(&conn, &path, true).unwrap_err();
        assert!(matches!(e, AtRestError::WrongKey { .. }), "{e}");
        // A file that is not a key.
        std::fs::write(&path, "not a key\n").unwrap();
        let e = Cipher::open(&conn, &path, true).unwrap_err().to_string();
        assert!(e.contains("64 hexadecimal digits"), "{e}");
    }

    #[test]
    fn rotation_keeps_old_values_open_until_the_old_key_is_dropped() {
        let (dir, conn) = spool();
        let path = dir.path().join("spool.key");
        let cipher = Cipher::open(&conn, &path, true).unwrap();
        let old = cipher.seal(Field::Body, Row(1, 0), b"old").unwrap();
        let next_path = dir.path().join("next.key");
        let next = Kek::create(&next_path).unwrap();
        cipher.add_data_key(&conn, Some(&next)).unwrap();
        assert!(!cipher.is_current(&old));
        let new = cipher.seal(Field::Body, Row(1, 0), b"new").unwrap();
        assert!(cipher.is_current(&new));
        assert_eq!(
            cipher.open_value(Field::Body, Row(1, 0), &old).unwrap(),
            b"old"
        );
        // Mid-rotation, both key files open the spool.
        Cipher::open(&conn, &path, false).unwrap();
        Cipher::open(&conn, &next_path, false).unwrap();
        cipher
            .drop_old_keys(&conn, Kek::read(&next_path).unwrap())
            .unwrap();
        assert!(cipher.open_value(Field::Body, Row(1, 0), &old).is_err());
        let reopened = Cipher::open(&conn, &next_path, false).unwrap();
        assert_eq!(
            reopened.open_value(Field::Body, Row(1, 0), &new).unwrap(),
            b"new"
        );
        assert!(matches!(
            Cipher::open(&conn, &path, false),
            Err(AtRestError::WrongKey { .. })
        ));
    }
}
