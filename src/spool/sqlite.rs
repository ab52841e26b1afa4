//! The embedded spool: one SQLite database in WAL mode.
//!
//! Bodies are BLOBs in the same database as the envelope, not files: one
//! transaction makes body and queue record durable together, so a crash can
//! leave neither an orphan file nor a record without its body, and one WAL
//! sync commits both. All writes go through a single writer thread that
//! drains every request waiting in its channel into one transaction and one
//! sync (group commit): under load, one fsync acknowledges many messages.
//! Reads use their own connections, which WAL lets run beside the writer.

use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};

use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use tokio::sync::oneshot;

use super::at_rest::{Cipher, Field, KekChange, RekeyDone, Row};
use super::values::{
    DELIVERED, FAILED, IdClock, PENDING, Sealed, class_of, seal_message, sealed_opt,
};
use super::*;

/// Most operations committed with one sync.
const MAX_BATCH: usize = 256;

// Columns marked "sealed" hold AES-256-GCM values (spool::at_rest); a
// spool written before that held them as text and is sealed at start.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    id          INTEGER PRIMARY KEY,
    tenant      TEXT NOT NULL,
    sender      BLOB NOT NULL,  -- sealed
    env_id      BLOB,           -- sealed
    ret         TEXT,
    smtputf8    INTEGER NOT NULL,
    body_8bit   INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    client      BLOB NOT NULL,  -- sealed
    size        INTEGER NOT NULL,
    body        BLOB,           -- sealed
    tls_request TEXT NOT NULL DEFAULT 'none',
    content     TEXT NOT NULL DEFAULT 'plain',
    -- set when no recipient is pending; the content is deleted at purge_at
    purge_at    INTEGER
);
CREATE INDEX IF NOT EXISTS messages_purge ON messages(purge_at) WHERE purge_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS recipients (
    message_id   INTEGER NOT NULL,
    idx          INTEGER NOT NULL,
    address      BLOB NOT NULL,  -- sealed
    domain       TEXT NOT NULL,
    orcpt        BLOB,           -- sealed
    notify       INTEGER NOT NULL,
    status       INTEGER NOT NULL,   -- 0 pending, 1 delivered, 2 failed
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt INTEGER NOT NULL,
    last_reply   BLOB,           -- sealed
    class        TEXT NOT NULL DEFAULT 'normal',
    PRIMARY KEY (message_id, idx)
) WITHOUT ROWID;
";

type Finish = Box<dyn FnOnce(Result<(), SpoolError>) + Send>;
/// A write: applied inside the batch transaction, or given `None` when that
/// transaction could not even begin.
type Op = Box<dyn FnOnce(Option<&Connection>) -> (bool, Finish) + Send>;

/// The SQLite spool. Cheap to share: clone the `Arc`.
pub struct SqliteSpool {
    writer: Mutex<mpsc::Sender<Op>>,
    readers: Mutex<Vec<Connection>>,
    path: std::path::PathBuf,
    ids: IdClock,
    cipher: Arc<Cipher>,
}

/// How the spool's key-encryption key is found (spool::at_rest).
#[derive(Debug, Clone)]
pub struct KeyFile {
    pub path: std::path::PathBuf,
    /// The gateway starting: a new spool gets its key file and first data
    /// key. Commands that only read or change the queue never make keys.
    pub create: bool,
}

impl KeyFile {
    /// The key file `config` names; `create` only for the gateway starting.
    pub fn of(config: &crate::config::Config, create: bool) -> KeyFile {
        KeyFile {
            path: super::at_rest::key_path(config.spool.key_file.as_deref(), &config.data_dir),
            create,
        }
    }
}

impl SqliteSpool {
    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens (creating if needed) the database at `path` and starts its writer thread.
    pub fn open(path: &Path, key: &KeyFile) -> Result<Arc<SqliteSpool>, SpoolError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let conn = open_connection(path)?;
        conn.pragma_update(None, "cache_size", WRITER_CACHE_KIB)?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        crate::report::log::init(&conn)?;
        let cipher = Arc::new(Cipher::open(&conn, &key.path, key.create)?);
        seal_legacy_rows(&conn, &cipher)?;
        let max_id: Option<i64> =
            conn.query_row("SELECT MAX(id) FROM messages", [], |r| r.get(0))?;
        let (tx, rx) = mpsc::channel::<Op>();
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer_loop(conn, rx))?;
        Ok(Arc::new(SqliteSpool {
            writer: Mutex::new(tx),
            readers: Mutex::new(Vec::new()),
            path: path.to_path_buf(),
            ids: IdClock::after(max_id.unwrap_or(0) as u64),
            cipher,
        }))
    }

    /// Runs `f` inside the next group-committed transaction; resolves after the sync.
    async fn write<T, F>(&self, f: F) -> Result<T, SpoolError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, SpoolError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let op: Op = Box::new(move |conn| {
            let result = match conn {
                Some(conn) => f(conn),
                None => Err(SpoolError::Stopped),
            };
            let ok = result.is_ok();
            let finish: Finish = Box::new(move |commit| {
                let _ = tx.send(commit.and(result));
            });
            (ok, finish)
        });
        self.writer
            .lock()
            .map_err(|_| SpoolError::Stopped)?
            .send(op)
            .map_err(|_| SpoolError::Stopped)?;
        rx.await.map_err(|_| SpoolError::Stopped)?
    }

    /// Reads the transaction log on a pooled connection, off the async threads.
    pub async fn read_log<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let spool = self.clone();
        let read = tokio::task::spawn_blocking(move || spool.read(|conn| Ok(f(conn)?)));
        Ok(read.await??)
    }

    /// Appends one event to a tenant's chain in the next group commit.
    pub async fn append_log(
        &self,
        tenant: &str,
        event: crate::report::Event,
    ) -> Result<(), SpoolError> {
        let tenant = tenant.to_string();
        self.write(move |conn| Ok(crate::report::log::append(conn, &tenant, &[event])?))
            .await
    }

    /// Runs a read on a pooled connection.
    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, SpoolError>,
    ) -> Result<T, SpoolError> {
        let pooled = self.readers.lock().ok().and_then(|mut v| v.pop());
        let conn = match pooled {
            Some(c) => c,
            None => {
                let conn = open_connection(&self.path)?;
                // Readers load bodies once and walk the log forward: a
                // large cache holds pages they never read again, and there
                // can be as many readers as deliveries run at once.
                conn.pragma_update(None, "cache_size", READER_CACHE_KIB)?;
                conn
            }
        };
        let result = f(&conn);
        // A burst of reads leaves no more connections (and their caches)
        // behind than the pool keeps.
        if let Ok(mut pool) = self.readers.lock()
            && pool.len() < MAX_READERS
        {
            pool.push(conn);
        }
        result
    }
}

/// Reader connections kept open between reads: as many as deliveries
/// commonly run at once (opening one costs more than a body's read).
const MAX_READERS: usize = 16;
/// A reader's page cache, as SQLite's negative `cache_size`: KiB.
const READER_CACHE_KIB: i64 = -256;
/// The writer's: it appends, and re-reads little but the B-tree's upper pages.
const WRITER_CACHE_KIB: i64 = -1024;

fn open_connection(path: &Path) -> Result<Connection, SpoolError> {
    let conn = Connection::open(path)?;
    // WAL lets readers run beside the writer; synchronous=FULL syncs the WAL
    // on every commit, which is what makes a 250 reply a promise.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // Freed pages are zeroed where that costs no extra I/O, so delivered
    // content does not linger in the file.
    conn.pragma_update(None, "secure_delete", "FAST")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}

fn writer_loop(conn: Connection, rx: mpsc::Receiver<Op>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let finishes = run_batch(&conn, batch);
        for (finish, result) in finishes {
            finish(result);
        }
    }
}

/// One transaction, one sync, for every operation in the batch. An operation
/// that fails is rolled back to its savepoint and does not spoil the others.
fn run_batch(conn: &Connection, batch: Vec<Op>) -> Vec<(Finish, Result<(), SpoolError>)> {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let err = classify(e);
        return batch
            .into_iter()
            .map(|op| {
                let (_, finish) = op(None);
                (finish, Err(clone_error(&err)))
            })
            .collect();
    }
    let mut finishes = Vec::with_capacity(batch.len());
    for op in batch {
        let savepoint_ok = conn.execute_batch("SAVEPOINT op").is_ok();
        let (ok, finish) = op(Some(conn));
        if savepoint_ok {
            let end = if ok {
                "RELEASE op"
            } else {
                "ROLLBACK TO op; RELEASE op"
            };
            let _ = conn.execute_batch(end);
        }
        finishes.push((finish, ok));
    }
    let commit = conn.execute_batch("COMMIT").map_err(classify);
    if commit.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    finishes
        .into_iter()
        .map(|(finish, _)| {
            let result = match &commit {
                Ok(()) => Ok(()),
                Err(e) => Err(clone_error(e)),
            };
            (finish, result)
        })
        .collect()
}

fn classify(e: rusqlite::Error) -> SpoolError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => SpoolError::Full(e.to_string()),
        _ => SpoolError::Database(e),
    }
}

fn clone_error(e: &SpoolError) -> SpoolError {
    match e {
        SpoolError::Full(s) => SpoolError::Full(s.clone()),
        other => SpoolError::Corrupt(format!("transaction failed: {other}")),
    }
}

/// Brings a spool written by an older sealgate up to the current schema.
fn migrate(conn: &Connection) -> Result<(), SpoolError> {
    // Messages queued before risk classes existed are normal; before
    // RFC 8689 and content detection, they asked nothing and were plain.
    add_column(
        conn,
        "recipients",
        "class",
        "TEXT NOT NULL DEFAULT 'normal'",
    )?;
    add_column(
        conn,
        "messages",
        "tls_request",
        "TEXT NOT NULL DEFAULT 'none'",
    )?;
    add_column(conn, "messages", "content", "TEXT NOT NULL DEFAULT 'plain'")?;
    // Kept back by an operator (`sealgate queue hold`) until released.
    add_column(conn, "messages", "held", "INTEGER NOT NULL DEFAULT 0")?;
    // The console's queue page, one tenant at a time.
    conn.execute_batch("CREATE INDEX IF NOT EXISTS messages_tenant ON messages(tenant, id)")?;
    Ok(())
}

/// Adds `column` to `table` unless it is there (the names are ours, never input).
fn add_column(conn: &Connection, table: &str, column: &str, decl: &str) -> Result<(), SpoolError> {
    let present = conn
        .prepare(&format!(
            "SELECT 1 FROM pragma_table_info('{table}') WHERE name = '{column}'"
        ))?
        .exists([])?;
    if !present {
        conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
    }
    Ok(())
}

/// A spool written before encryption at rest holds its values as text:
/// they are sealed here, in one transaction, before anything else runs.
fn seal_legacy_rows(conn: &Connection, cipher: &Cipher) -> Result<(), SpoolError> {
    let legacy = conn
        .prepare(
            "SELECT 1 FROM messages WHERE typeof(sender) = 'text'
             UNION ALL SELECT 1 FROM recipients WHERE typeof(address) = 'text' LIMIT 1",
        )?
        .exists([])?;
    if !legacy {
        return Ok(());
    }
    if !cipher.writable() {
        return Err(SpoolError::Corrupt(
            "the spool was written by an older sealgate and is not encrypted yet; \
             start the gateway once, which encrypts it"
                .into(),
        ));
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let sealed = seal_legacy_in(conn, cipher);
    match sealed {
        Ok(n) => {
            conn.execute_batch("COMMIT")?;
            tracing::info!("encrypted {n} message(s) written by an older sealgate");
            Ok(())
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

fn seal_legacy_in(conn: &Connection, cipher: &Cipher) -> Result<usize, SpoolError> {
    type Head = (i64, String, Option<String>, String, Option<Vec<u8>>);
    let heads: Vec<Head> = conn
        .prepare(
            "SELECT id, sender, env_id, client, body FROM messages
             WHERE typeof(sender) = 'text'",
        )?
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut update = conn
        .prepare("UPDATE messages SET sender = ?, env_id = ?, client = ?, body = ? WHERE id = ?")?;
    for (id, sender, env_id, client, body) in &heads {
        let at = Row(*id, 0);
        let body = match body {
            Some(b) => Some(cipher.seal(Field::Body, at, b)?),
            None => None,
        };
        update.execute(params![
            cipher.seal_text(Field::Sender, at, sender)?,
            sealed_opt(cipher, Field::EnvId, at, env_id.as_deref())?,
            cipher.seal_text(Field::Client, at, client)?,
            body,
            id
        ])?;
    }
    type Rcpt = (i64, i64, String, Option<String>, Option<String>);
    let rcpts: Vec<Rcpt> = conn
        .prepare(
            "SELECT message_id, idx, address, orcpt, last_reply FROM recipients
             WHERE typeof(address) = 'text'",
        )?
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut update = conn.prepare(
        "UPDATE recipients SET address = ?, orcpt = ?, last_reply = ?
         WHERE message_id = ? AND idx = ?",
    )?;
    for (id, idx, address, orcpt, reply) in &rcpts {
        let at = Row(*id, *idx);
        update.execute(params![
            cipher.seal_text(Field::Address, at, address)?,
            sealed_opt(cipher, Field::Orcpt, at, orcpt.as_deref())?,
            sealed_opt(cipher, Field::LastReply, at, reply.as_deref())?,
            id,
            idx
        ])?;
    }
    Ok(heads.len())
}

fn insert_message(conn: &Connection, m: &NewMessage, sealed: &Sealed) -> Result<(), SpoolError> {
    let e = &m.envelope;
    let id = m.id.0 as i64;
    let ret = e.ret.map(|r| match r {
        Ret::Full => "full",
        Ret::Headers => "hdrs",
    });
    conn.prepare_cached(
        "INSERT INTO messages (id, tenant, sender, env_id, ret, smtputf8, body_8bit,
         received_at, expires_at, client, size, body, tls_request, content)
         VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
    )?
    .execute(params![
        id,
        e.tenant.0,
        sealed.sender,
        sealed.env_id,
        ret,
        e.smtputf8,
        e.body_8bit,
        m.received_at,
        m.expires_at,
        sealed.client,
        m.body.len() as i64,
        sealed.body,
        e.tls_request.name(),
        e.content.name(),
    ])
    .map_err(classify)?;
    let mut stmt = conn.prepare_cached(
        "INSERT INTO recipients (message_id, idx, address, domain, orcpt, notify, status, next_attempt, class)
         VALUES (?,?,?,?,?,?,?,?,?)",
    )?;
    for (i, (r, (address, orcpt))) in e.recipients.iter().zip(&sealed.recipients).enumerate() {
        stmt.execute(params![
            id,
            i as i64,
            address,
            r.domain,
            orcpt,
            r.notify.to_bits(),
            PENDING,
            m.received_at,
            r.class.name(),
        ])
        .map_err(classify)?;
    }
    crate::report::log::append(conn, &e.tenant.0, &m.events).map_err(classify)?;
    Ok(())
}

/// A sealed column of a result row, opened.
fn opened(
    row: &rusqlite::Row<'_>,
    column: &str,
    cipher: &Cipher,
    field: Field,
    at: Row,
) -> rusqlite::Result<Vec<u8>> {
    let sealed: Vec<u8> = row.get(column)?;
    cipher.open_value(field, at, &sealed).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, Box::new(e))
    })
}

fn opened_text(
    row: &rusqlite::Row<'_>,
    column: &str,
    cipher: &Cipher,
    field: Field,
    at: Row,
) -> rusqlite::Result<String> {
    let sealed: Vec<u8> = row.get(column)?;
    cipher.open_text(field, at, &sealed).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, Box::new(e))
    })
}

fn opened_opt(
    row: &rusqlite::Row<'_>,
    column: &str,
    cipher: &Cipher,
    field: Field,
    at: Row,
) -> rusqlite::Result<Option<String>> {
    match row.get_ref(column)? {
        rusqlite::types::ValueRef::Null => Ok(None),
        _ => opened_text(row, column, cipher, field, at).map(Some),
    }
}

fn read_envelope_row(
    row: &rusqlite::Row<'_>,
    cipher: &Cipher,
    id: i64,
) -> rusqlite::Result<(Envelope, i64, i64)> {
    let ret: Option<String> = row.get("ret")?;
    let at = Row(id, 0);
    Ok((
        Envelope {
            tenant: TenantId(row.get("tenant")?),
            sender: opened_text(row, "sender", cipher, Field::Sender, at)?,
            env_id: opened_opt(row, "env_id", cipher, Field::EnvId, at)?,
            ret: match ret.as_deref() {
                Some("full") => Some(Ret::Full),
                Some("hdrs") => Some(Ret::Headers),
                _ => None,
            },
            smtputf8: row.get("smtputf8")?,
            body_8bit: row.get("body_8bit")?,
            tls_request: TlsRequest::from_name(&row.get::<_, String>("tls_request")?),
            content: Content::from_name(&row.get::<_, String>("content")?),
            recipients: Vec::new(),
        },
        row.get("received_at")?,
        row.get("expires_at")?,
    ))
}

fn jobs_of(conn: &Connection, id: QueueId) -> Result<Vec<DueJob>, SpoolError> {
    let mut stmt = conn.prepare_cached(
        "SELECT r.domain, MIN(r.next_attempt) FROM recipients r
         JOIN messages m ON m.id = r.message_id
         WHERE r.message_id = ? AND r.status = 0 AND m.held = 0 GROUP BY r.domain",
    )?;
    let rows = stmt.query_map([id.0 as i64], |r| {
        Ok(DueJob {
            id,
            domain: r.get(0)?,
            due: r.get(1)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

impl Spool for SqliteSpool {
    fn next_id(&self) -> QueueId {
        self.ids.next()
    }

    fn store(&self, message: NewMessage) -> BoxFuture<'_, Result<(), SpoolError>> {
        Box::pin(async move {
            let sealed = seal_message(&self.cipher, &message)?;
            self.write(move |conn| insert_message(conn, &message, &sealed))
                .await
        })
    }

    fn load<'a>(
        &'a self,
        id: QueueId,
        domain: &'a str,
    ) -> BoxFuture<'a, Result<Option<LoadedJob>, SpoolError>> {
        Box::pin(async move { self.load_now(id, Some(domain)) })
    }

    fn load_all(&self, id: QueueId) -> BoxFuture<'_, Result<Option<LoadedJob>, SpoolError>> {
        Box::pin(async move { self.load_now(id, None) })
    }

    fn record(&self, attempt: AttemptRecord) -> BoxFuture<'_, Result<RecordResult, SpoolError>> {
        self.record_now(attempt)
    }

    fn pending(&self) -> BoxFuture<'_, Result<Vec<DueJob>, SpoolError>> {
        Box::pin(async move { self.read(due_jobs) })
    }

    fn list(&self, page: ListPage) -> BoxFuture<'_, Result<Vec<MessageSummary>, SpoolError>> {
        Box::pin(async move { self.list_now(&page) })
    }

    fn show(&self, id: QueueId) -> BoxFuture<'_, Result<Option<MessageDetail>, SpoolError>> {
        Box::pin(async move { self.show_now(id) })
    }

    fn depth(&self) -> BoxFuture<'_, Result<QueueDepth, SpoolError>> {
        Box::pin(async move {
            self.read(|conn| {
                let (messages, oldest): (i64, Option<i64>) = conn
                    .prepare_cached(
                        "SELECT COUNT(*), MIN(received_at) FROM messages m
                         WHERE EXISTS (SELECT 1 FROM recipients r
                                       WHERE r.message_id = m.id AND r.status = 0)",
                    )?
                    .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                Ok(QueueDepth {
                    messages: messages as u64,
                    oldest,
                })
            })
        })
    }

    fn retry_all(&self, now: i64) -> BoxFuture<'_, Result<Vec<DueJob>, SpoolError>> {
        Box::pin(self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE recipients SET next_attempt = ?1 WHERE status = 0 AND next_attempt > ?1",
            )?
            .execute([now])?;
            due_jobs(conn)
        }))
    }

    fn retry(&self, id: QueueId, now: i64) -> BoxFuture<'_, Result<Vec<DueJob>, SpoolError>> {
        Box::pin(self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE recipients SET next_attempt = ? WHERE message_id = ? AND status = 0",
            )?
            .execute(params![now, id.0 as i64])?;
            jobs_of(conn, id)
        }))
    }

    fn delete(&self, id: QueueId, by: Operator) -> BoxFuture<'_, Result<bool, SpoolError>> {
        Box::pin(self.write(move |conn| {
            let tenant: Option<String> = conn
                .prepare_cached("SELECT tenant FROM messages WHERE id = ?")?
                .query_row([id.0 as i64], |r| r.get(0))
                .optional()?;
            let deleted = delete_message(conn, id.0 as i64)?;
            if let (true, Some(tenant)) = (deleted, tenant) {
                let event = deleted_record(id, crate::util::now(), &by.by, by.reason.as_deref());
                crate::report::log::append(conn, &tenant, &[event]).map_err(classify)?;
            }
            Ok(deleted)
        }))
    }

    fn hold(
        &self,
        id: QueueId,
        by: Operator,
        now: i64,
    ) -> BoxFuture<'_, Result<HoldOutcome, SpoolError>> {
        Box::pin(self.write(move |conn| set_held(conn, id, &by, true, now)))
    }

    fn release(
        &self,
        id: QueueId,
        by: Operator,
        now: i64,
    ) -> BoxFuture<'_, Result<HoldOutcome, SpoolError>> {
        Box::pin(self.write(move |conn| set_held(conn, id, &by, false, now)))
    }

    fn purge(&self, now: i64) -> BoxFuture<'_, Result<usize, SpoolError>> {
        Box::pin(self.write(move |conn| {
            let held: Vec<(i64, String)> = conn
                .prepare_cached(
                    "SELECT id, tenant FROM messages WHERE purge_at IS NOT NULL AND purge_at <= ?",
                )?
                .query_map([now], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            for (id, tenant) in &held {
                delete_message(conn, *id)?;
                let event = deleted_record(
                    QueueId(*id as u64),
                    now,
                    "retention (hold_delivered ended)",
                    None,
                );
                crate::report::log::append(conn, tenant, &[event]).map_err(classify)?;
            }
            Ok(held.len())
        }))
    }

    fn rekey(&self, change: KekChange) -> BoxFuture<'_, Result<RekeyDone, SpoolError>> {
        self.rekey_now(change)
    }
}

impl SqliteSpool {
    /// A job of one domain (not held), or of every domain (`None`: held or not).
    fn load_now(&self, id: QueueId, domain: Option<&str>) -> Result<Option<LoadedJob>, SpoolError> {
        self.read(|conn| {
            let head = conn
                .prepare_cached(if domain.is_some() {
                    "SELECT tenant, sender, env_id, ret, smtputf8, body_8bit, received_at,
                     expires_at, body, tls_request, content FROM messages
                     WHERE id = ? AND purge_at IS NULL AND held = 0"
                } else {
                    "SELECT tenant, sender, env_id, ret, smtputf8, body_8bit, received_at,
                     expires_at, body, tls_request, content FROM messages
                     WHERE id = ? AND purge_at IS NULL"
                })?
                .query_row([id.0 as i64], |row| {
                    let (envelope, received_at, expires_at) =
                        read_envelope_row(row, &self.cipher, id.0 as i64)?;
                    let body = match row.get_ref("body")? {
                        rusqlite::types::ValueRef::Null => None,
                        _ => Some(opened(
                            row,
                            "body",
                            &self.cipher,
                            Field::Body,
                            Row(id.0 as i64, 0),
                        )?),
                    };
                    Ok((envelope, received_at, expires_at, body))
                })
                .optional()?;
            let Some((envelope, received_at, expires_at, body)) = head else {
                return Ok(None);
            };
            let body =
                body.ok_or_else(|| SpoolError::Corrupt(format!("message {id} has no body")))?;
            let mut stmt = conn.prepare_cached(
                "SELECT idx, address, orcpt, notify, attempts, class FROM recipients
                 WHERE message_id = ?1 AND (?2 IS NULL OR domain = ?2) AND status = 0
                 ORDER BY idx",
            )?;
            let recipients = stmt
                .query_map(params![id.0 as i64, domain], |r| {
                    let at = Row(id.0 as i64, r.get(0)?);
                    let cipher = &self.cipher;
                    Ok(PendingRecipient {
                        index: r.get(0)?,
                        recipient: Recipient::new(
                            opened_text(r, "address", cipher, Field::Address, at)?,
                            opened_opt(r, "orcpt", cipher, Field::Orcpt, at)?,
                            Notify::from_bits(r.get(3)?),
                        )
                        .with_class(class_of(r.get(5)?)),
                        attempts: r.get(4)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            if recipients.is_empty() {
                return Ok(None);
            }
            Ok(Some(LoadedJob {
                id,
                envelope,
                received_at,
                expires_at,
                body,
                recipients,
            }))
        })
    }

    fn record_now(
        &self,
        attempt: AttemptRecord,
    ) -> BoxFuture<'_, Result<RecordResult, SpoolError>> {
        let cipher = self.cipher.clone();
        Box::pin(self.write(move |conn| {
            let id = attempt.id.0 as i64;
            // Logged even when the message was deleted meanwhile: the
            // attempt happened.
            crate::report::log::append(conn, &attempt.tenant.0, &attempt.events)
                .map_err(classify)?;
            let exists: bool = conn
                .prepare_cached("SELECT 1 FROM messages WHERE id = ? AND purge_at IS NULL")?
                .exists([id])?;
            if !exists {
                return Ok(RecordResult {
                    finished: true,
                    gone: true,
                });
            }
            let mut update = conn.prepare_cached(
                "UPDATE recipients SET status = ?, last_reply = ?, attempts = attempts + 1,
                 next_attempt = ? WHERE message_id = ? AND idx = ? AND status = 0",
            )?;
            for (idx, outcome) in &attempt.outcomes {
                let (status, reply, next) = match outcome {
                    RecipientOutcome::Delivered { reply } => (DELIVERED, reply, attempt.now),
                    RecipientOutcome::Failed { reply } => (FAILED, reply, attempt.now),
                    RecipientOutcome::Deferred {
                        reply,
                        next_attempt,
                    } => (PENDING, reply, *next_attempt),
                };
                let reply = cipher.seal_text(Field::LastReply, Row(id, *idx as i64), reply)?;
                update.execute(params![status, reply, next, id, idx])?;
            }
            if let Some(dsn) = &attempt.dsn {
                insert_message(conn, dsn, &seal_message(&cipher, dsn)?)?;
            }
            let pending: bool = conn
                .prepare_cached(
                    "SELECT 1 FROM recipients WHERE message_id = ? AND status = 0 LIMIT 1",
                )?
                .exists([id])?;
            if !pending {
                if attempt.purge_at <= attempt.now {
                    delete_message(conn, id)?;
                } else {
                    conn.prepare_cached("UPDATE messages SET purge_at = ? WHERE id = ?")?
                        .execute(params![attempt.purge_at, id])?;
                }
            }
            Ok(RecordResult {
                finished: !pending,
                gone: false,
            })
        }))
    }

    fn list_now(&self, page: &ListPage) -> Result<Vec<MessageSummary>, SpoolError> {
        self.read(|conn| {
            // The same query twice: with `tenant = ?` SQLite walks the
            // (tenant, id) index, without it the primary key.
            const COLUMNS: &str = "SELECT m.id, m.tenant, m.sender, m.size, m.received_at,
                        (SELECT COUNT(*) FROM recipients x
                          WHERE x.message_id = m.id AND x.status = 0),
                        (SELECT COUNT(*) FROM recipients x WHERE x.message_id = m.id),
                        (SELECT MIN(next_attempt) FROM recipients x
                          WHERE x.message_id = m.id AND x.status = 0),
                        (SELECT idx FROM recipients x WHERE x.message_id = m.id
                           AND x.last_reply IS NOT NULL ORDER BY x.status, x.idx LIMIT 1)
                           AS reply_idx,
                        (SELECT last_reply FROM recipients x WHERE x.message_id = m.id
                           AND x.last_reply IS NOT NULL ORDER BY x.status, x.idx LIMIT 1)
                           AS last_reply,
                        m.held
                 FROM messages m";
            let after = page.after.map_or(0, |a| a.0 as i64);
            let limit = page.limit as i64;
            let mut stmt = match &page.tenant {
                Some(_) => conn.prepare_cached(&format!(
                    "{COLUMNS} WHERE m.tenant = ?1 AND m.id > ?2 AND m.purge_at IS NULL
                     ORDER BY m.tenant, m.id LIMIT ?3"
                ))?,
                None => conn.prepare_cached(&format!(
                    "{COLUMNS} WHERE ?1 IS NULL AND m.id > ?2 AND m.purge_at IS NULL
                     ORDER BY m.id LIMIT ?3"
                ))?,
            };
            let cipher = &self.cipher;
            let rows = stmt.query_map(params![page.tenant, after, limit], |r| {
                let id: i64 = r.get(0)?;
                let reply_at = Row(id, r.get::<_, Option<i64>>("reply_idx")?.unwrap_or(0));
                Ok(MessageSummary {
                    id: QueueId(id as u64),
                    tenant: TenantId(r.get(1)?),
                    held: r.get("held")?,
                    sender: opened_text(r, "sender", cipher, Field::Sender, Row(id, 0))?,
                    size: r.get::<_, i64>(3)? as u64,
                    received_at: r.get(4)?,
                    pending: r.get(5)?,
                    recipients: r.get(6)?,
                    next_attempt: r.get(7)?,
                    last_reply: opened_opt(r, "last_reply", cipher, Field::LastReply, reply_at)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn rekey_now(&self, change: KekChange) -> BoxFuture<'_, Result<RekeyDone, SpoolError>> {
        Box::pin(async move {
            let key_file = self.cipher.key_path().to_path_buf();
            let next = change.prepare(&key_file)?;
            let (next_kek, next_path) = match next {
                Some((k, p)) => (Some(k), Some(p)),
                None => (None, None),
            };
            let cipher = self.cipher.clone();
            let (data_key, next_kek) = self
                .write(move |conn| {
                    let id = cipher.add_data_key(conn, next_kek.as_ref())?;
                    Ok((id, next_kek))
                })
                .await?;
            // In small transactions, so that mail keeps flowing meanwhile.
            let mut after = 0;
            let mut messages = 0;
            loop {
                let cipher = self.cipher.clone();
                let (n, last) = self
                    .write(move |conn| reseal_batch(conn, &cipher, after, 100))
                    .await?;
                messages += n;
                match last {
                    Some(l) => after = l,
                    None => break,
                }
            }
            // Both key files open the spool until the old wrapping is gone,
            // so the rename can come first.
            let kek_path = match (&change, next_path) {
                (KekChange::Replace, Some(p)) => {
                    std::fs::rename(&p, &key_file)?;
                    at_rest::sync_dir(&key_file)?;
                    Some(key_file.clone())
                }
                (_, p) => p,
            };
            let fingerprint = next_kek.as_ref().map(|k| k.fingerprint().to_string());
            let cipher = self.cipher.clone();
            self.write(move |conn| Ok(cipher.drop_old_keys(conn, next_kek)?))
                .await?;
            Ok(RekeyDone {
                data_key,
                messages,
                kek: fingerprint.zip(kek_path),
            })
        })
    }

    fn show_now(&self, id: QueueId) -> Result<Option<MessageDetail>, SpoolError> {
        self.read(|conn| {
            let head = conn
                .query_row(
                    "SELECT tenant, sender, env_id, ret, smtputf8, body_8bit, received_at,
                     expires_at, client, size, tls_request, content, held
                     FROM messages WHERE id = ?",
                    [id.0 as i64],
                    |row| {
                        let (envelope, received_at, expires_at) =
                            read_envelope_row(row, &self.cipher, id.0 as i64)?;
                        Ok((
                            envelope,
                            received_at,
                            expires_at,
                            opened_text(
                                row,
                                "client",
                                &self.cipher,
                                Field::Client,
                                Row(id.0 as i64, 0),
                            )?,
                            row.get::<_, i64>("size")?,
                            row.get::<_, bool>("held")?,
                        ))
                    },
                )
                .optional()?;
            let Some((mut envelope, received_at, expires_at, client, size, held)) = head else {
                return Ok(None);
            };
            let mut stmt = conn.prepare(
                "SELECT address, orcpt, notify, status, attempts, next_attempt, last_reply, class,
                        idx
                 FROM recipients WHERE message_id = ? ORDER BY idx",
            )?;
            let mut recipients = Vec::new();
            let mut rows = stmt.query([id.0 as i64])?;
            let cipher = &self.cipher;
            while let Some(r) = rows.next()? {
                let at = Row(id.0 as i64, r.get("idx")?);
                let address = opened_text(r, "address", cipher, Field::Address, at)?;
                envelope.recipients.push(
                    Recipient::new(
                        address.clone(),
                        opened_opt(r, "orcpt", cipher, Field::Orcpt, at)?,
                        Notify::from_bits(r.get(2)?),
                    )
                    .with_class(class_of(r.get(7)?)),
                );
                recipients.push(RecipientState {
                    address,
                    status: match r.get::<_, i64>(3)? {
                        PENDING => RecipientStatus::Pending,
                        DELIVERED => RecipientStatus::Delivered,
                        _ => RecipientStatus::Failed,
                    },
                    attempts: r.get(4)?,
                    next_attempt: r.get(5)?,
                    last_reply: opened_opt(r, "last_reply", cipher, Field::LastReply, at)?,
                });
            }
            Ok(Some(MessageDetail {
                id,
                envelope,
                received_at,
                expires_at,
                client,
                size: size as u64,
                held,
                recipients,
            }))
        })
    }
}

/// Seals again, under the current data key, the values of up to `limit`
/// messages after `after`; returns how many changed and the last id seen
/// (`None` at the end).
fn reseal_batch(
    conn: &Connection,
    cipher: &Cipher,
    after: i64,
    limit: usize,
) -> Result<(usize, Option<i64>), SpoolError> {
    type Head = (i64, Vec<u8>, Option<Vec<u8>>, Vec<u8>, Option<Vec<u8>>);
    let heads: Vec<Head> = conn
        .prepare_cached(
            "SELECT id, sender, env_id, client, body FROM messages WHERE id > ? ORDER BY id LIMIT ?",
        )?
        .query_map(params![after, limit as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<Result<_, _>>()?;
    let again = |field, at, v: &Option<Vec<u8>>| -> Result<Option<Vec<u8>>, SpoolError> {
        Ok(match v {
            Some(v) => Some(cipher.reseal(field, at, v)?.unwrap_or_else(|| v.clone())),
            None => None,
        })
    };
    let mut changed = 0;
    for (id, sender, env_id, client, body) in &heads {
        let at = Row(*id, 0);
        if !cipher.is_current(sender) {
            conn.prepare_cached(
                "UPDATE messages SET sender = ?, env_id = ?, client = ?, body = ? WHERE id = ?",
            )?
            .execute(params![
                again(Field::Sender, at, &Some(sender.clone()))?,
                again(Field::EnvId, at, env_id)?,
                again(Field::Client, at, &Some(client.clone()))?,
                again(Field::Body, at, body)?,
                id
            ])?;
            changed += 1;
        }
        type Rcpt = (i64, Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>);
        let rcpts: Vec<Rcpt> = conn
            .prepare_cached(
                "SELECT idx, address, orcpt, last_reply FROM recipients WHERE message_id = ?",
            )?
            .query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<Result<_, _>>()?;
        for (idx, address, orcpt, reply) in &rcpts {
            let at = Row(*id, *idx);
            let stale = !cipher.is_current(address)
                || orcpt.as_ref().is_some_and(|v| !cipher.is_current(v))
                || reply.as_ref().is_some_and(|v| !cipher.is_current(v));
            if stale {
                conn.prepare_cached(
                    "UPDATE recipients SET address = ?, orcpt = ?, last_reply = ?
                     WHERE message_id = ? AND idx = ?",
                )?
                .execute(params![
                    again(Field::Address, at, &Some(address.clone()))?,
                    again(Field::Orcpt, at, orcpt)?,
                    again(Field::LastReply, at, reply)?,
                    id,
                    idx
                ])?;
            }
        }
    }
    let last = if heads.len() == limit {
        heads.last().map(|h| h.0)
    } else {
        None
    };
    Ok((changed, last))
}

/// Every (message, domain) with pending recipients, and when it is due.
fn due_jobs(conn: &Connection) -> Result<Vec<DueJob>, SpoolError> {
    let mut stmt = conn.prepare_cached(
        "SELECT r.message_id, r.domain, MIN(r.next_attempt) FROM recipients r
         JOIN messages m ON m.id = r.message_id
         WHERE r.status = 0 AND m.held = 0 GROUP BY r.message_id, r.domain",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(DueJob {
            id: QueueId(r.get::<_, i64>(0)? as u64),
            domain: r.get(1)?,
            due: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Holds or releases a message that has pending recipients; a release
/// makes them due now.
fn set_held(
    conn: &Connection,
    id: QueueId,
    by: &Operator,
    held: bool,
    now: i64,
) -> Result<HoldOutcome, SpoolError> {
    let key = id.0 as i64;
    let found: Option<(String, bool)> = conn
        .prepare_cached(
            "SELECT tenant, held FROM messages m WHERE id = ? AND purge_at IS NULL
             AND EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND r.status = 0)",
        )?
        .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((tenant, was)) = found else {
        return Ok(HoldOutcome::Missing);
    };
    if was == held {
        return Ok(HoldOutcome::Unchanged);
    }
    conn.prepare_cached("UPDATE messages SET held = ? WHERE id = ?")?
        .execute(params![held, key])?;
    crate::report::log::append(conn, &tenant, &[held_record(id, now, by, held)])
        .map_err(classify)?;
    if held {
        return Ok(HoldOutcome::Done(Vec::new()));
    }
    conn.prepare_cached(
        "UPDATE recipients SET next_attempt = ? WHERE message_id = ? AND status = 0",
    )?
    .execute(params![now, key])?;
    Ok(HoldOutcome::Done(jobs_of(conn, id)?))
}

fn delete_message(conn: &Connection, id: i64) -> Result<bool, SpoolError> {
    conn.prepare_cached("DELETE FROM recipients WHERE message_id = ?")?
        .execute([id])?;
    let n = conn
        .prepare_cached("DELETE FROM messages WHERE id = ?")?
        .execute([id])?;
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(spool: &SqliteSpool, rcpts: &[&str]) -> NewMessage {
        NewMessage {
            id: spool.next_id(),
            envelope: Envelope {
                tenant: TenantId("t".into()),
                sender: "a@src.test".into(),
                env_id: Some("env1".into()),
                ret: Some(Ret::Headers),
                smtputf8: false,
                body_8bit: true,
                tls_request: TlsRequest::None,
                content: Content::Plain,
                recipients: rcpts
                    .iter()
                    .map(|r| Recipient::new(r.to_string(), None, Notify::default()))
                    .collect(),
            },
            received_at: 100,
            expires_at: 1000,
            client: "test".into(),
            body: b"Subject: x\r\n\r\nbody\r\n".to_vec(),
            events: Vec::new(),
        }
    }

    fn open(path: &Path) -> Arc<SqliteSpool> {
        let key = KeyFile {
            path: path.with_extension("key"),
            create: true,
        };
        SqliteSpool::open(path, &key).unwrap()
    }

    #[tokio::test]
    async fn nothing_of_a_message_is_readable_in_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let spool = open(&path);
        let mut m = message(&spool, &["marker-rcpt@one.test"]);
        m.envelope.sender = "marker-sender@src.test".into();
        m.client = "marker-client".into();
        m.body = b"Subject: x\r\n\r\nmarker-body\r\n".to_vec();
        let id = m.id;
        spool.store(m).await.unwrap();
        spool
            .record(AttemptRecord {
                id,
                domain: "one.test".into(),
                outcomes: vec![(
                    0,
                    RecipientOutcome::Deferred {
                        reply: "451 marker-reply".into(),
                        next_attempt: 500,
                    },
                )],
                dsn: None,
                now: 200,
                purge_at: 200,
                tenant: TenantId("t".into()),
                events: Vec::new(),
            })
            .await
            .unwrap();
        let shown = spool.show(id).await.unwrap().unwrap();
        assert_eq!(shown.envelope.sender, "marker-sender@src.test");
        assert_eq!(shown.client, "marker-client");
        assert_eq!(
            shown.recipients[0].last_reply.as_deref(),
            Some("451 marker-reply")
        );
        assert_eq!(
            spool
                .list(ListPage {
                    limit: 1000,
                    ..ListPage::default()
                })
                .await
                .unwrap()[0]
                .last_reply
                .as_deref(),
            Some("451 marker-reply")
        );
        drop(spool);
        // The writer thread closes its connection after the drop: the WAL
        // may be checkpointed and gone between listing and reading.
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            if let Ok(bytes) = std::fs::read(entry.unwrap().path()) {
                assert!(!bytes.windows(7).any(|w| w == b"marker-"));
            }
        }
    }

    #[tokio::test]
    async fn a_spool_from_before_encryption_is_sealed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            // The schema and a row as sealgate 0.x wrote them.
            let conn = Connection::open(&path).unwrap();
            let old = SCHEMA
                .replace("BLOB NOT NULL,  -- sealed", "TEXT NOT NULL,")
                .replace(
                    "    tls_request TEXT NOT NULL DEFAULT 'none',
    content     TEXT NOT NULL DEFAULT 'plain',\n",
                    "",
                );
            conn.execute_batch(&old).unwrap();
            conn.execute_batch(
                "INSERT INTO messages VALUES (5, 't', 'old@src.test', NULL, NULL, 0, 0, 100,
                   9000, 'client', 9, X'4F6C6420626F6479', NULL);
                 INSERT INTO recipients VALUES (5, 0, 'r@one.test', 'one.test', NULL, 0, 0,
                   0, 100, NULL, 'normal');",
            )
            .unwrap();
        }
        let reader = KeyFile {
            path: path.with_extension("key"),
            create: false,
        };
        let e = SqliteSpool::open(&path, &reader).err().unwrap().to_string();
        assert!(e.contains("start the gateway once"), "{e}");
        let spool = open(&path);
        let job = spool.load(QueueId(5), "one.test").await.unwrap().unwrap();
        assert_eq!(job.body, b"Old body");
        assert_eq!(job.envelope.sender, "old@src.test");
        assert_eq!(job.recipients[0].recipient.address, "r@one.test");
        let conn = Connection::open(&path).unwrap();
        let kind: String = conn
            .query_row("SELECT typeof(sender) FROM messages", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kind, "blob");
        drop(spool);
        // The reader opens it now, with the key the gateway made.
        SqliteSpool::open(&path, &reader).unwrap();
    }

    #[tokio::test]
    async fn store_load_record_and_recover() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let spool = open(&path);
        let m = message(&spool, &["x@one.test", "y@two.test", "z@One.Test"]);
        let id = m.id;
        spool.store(m).await.unwrap();

        let job = spool
            .load(id, "one.test")
            .await
            .unwrap()
            .expect("pending in one.test");
        assert_eq!(job.recipients.len(), 2);
        assert_eq!(job.envelope.ret, Some(Ret::Headers));
        assert_eq!(job.body, b"Subject: x\r\n\r\nbody\r\n");

        let result = spool
            .record(AttemptRecord {
                id,
                domain: "one.test".into(),
                outcomes: vec![
                    (
                        0,
                        RecipientOutcome::Delivered {
                            reply: "250 ok".into(),
                        },
                    ),
                    (
                        2,
                        RecipientOutcome::Deferred {
                            reply: "451 later".into(),
                            next_attempt: 500,
                        },
                    ),
                ],
                dsn: None,
                now: 200,
                purge_at: 200,
                tenant: TenantId("t".into()),
                events: Vec::new(),
            })
            .await
            .unwrap();
        assert!(!result.finished);

        // A second open (a restart) sees the same queue.
        drop(spool);
        let spool = open(&path);
        let mut due = spool.pending().await.unwrap();
        due.sort_by(|a, b| a.domain.cmp(&b.domain));
        assert_eq!(
            due,
            vec![
                DueJob {
                    id,
                    domain: "one.test".into(),
                    due: 500
                },
                DueJob {
                    id,
                    domain: "two.test".into(),
                    due: 100
                },
            ]
        );
        assert!(spool.next_id() > id, "ids keep growing across restarts");

        let result = spool
            .record(AttemptRecord {
                id,
                domain: "one.test".into(),
                outcomes: vec![
                    (
                        1,
                        RecipientOutcome::Failed {
                            reply: "550 no".into(),
                        },
                    ),
                    (
                        2,
                        RecipientOutcome::Delivered {
                            reply: "250 ok".into(),
                        },
                    ),
                ],
                dsn: Some(message(&spool, &["a@src.test"])),
                now: 600,
                purge_at: 600,
                tenant: TenantId("t".into()),
                events: Vec::new(),
            })
            .await
            .unwrap();
        assert!(result.finished);
        assert!(
            spool.show(id).await.unwrap().is_none(),
            "finished content is deleted at once"
        );
        let list = spool
            .list(ListPage {
                limit: 1000,
                ..ListPage::default()
            })
            .await
            .unwrap();
        assert_eq!(list.len(), 1, "only the DSN is queued");
        assert_eq!(list[0].pending, 1);
    }

    #[tokio::test]
    async fn hold_keeps_content_until_purge() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let spool = open(&path);
        let m = message(&spool, &["x@one.test"]);
        let id = m.id;
        spool.store(m).await.unwrap();
        spool
            .record(AttemptRecord {
                id,
                domain: "one.test".into(),
                outcomes: vec![(
                    0,
                    RecipientOutcome::Delivered {
                        reply: "250".into(),
                    },
                )],
                dsn: None,
                now: 200,
                purge_at: 300,
                tenant: TenantId("t".into()),
                events: Vec::new(),
            })
            .await
            .unwrap();
        assert!(spool.show(id).await.unwrap().is_some());
        assert!(
            spool.load(id, "one.test").await.unwrap().is_none(),
            "a finished message is never delivered again"
        );
        assert_eq!(spool.purge(299).await.unwrap(), 0);
        assert_eq!(spool.purge(300).await.unwrap(), 1);
        assert!(spool.show(id).await.unwrap().is_none());
        // The end of the hold is in the log, in the same transaction.
        let log = Connection::open(&path).unwrap();
        let (kind, data): (String, String) = log
            .query_row(
                "SELECT kind, data FROM txlog WHERE tenant = 't' AND queue_id = ?",
                [id.to_string()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(kind, "deleted");
        assert!(data.contains("retention"), "{data}");
    }

    #[tokio::test]
    async fn concurrent_stores_share_commits() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open(&dir.path().join("db"));
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let spool = spool.clone();
            tasks.push(tokio::spawn(async move {
                let m = message(&spool, &["x@one.test"]);
                spool.store(m).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(
            spool
                .list(ListPage {
                    limit: 1000,
                    ..ListPage::default()
                })
                .await
                .unwrap()
                .len(),
            200
        );
    }
}
