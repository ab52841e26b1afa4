//! The shared spool: PostgreSQL, so that several sealgate nodes keep one
//! queue and one transaction log (`[storage] url`, docs/cluster.md).
//!
//! It stores what the SQLite spool stores, sealed the same way
//! (spool::values, spool::at_rest), and keeps its promise the same way:
//! nothing is acknowledged before its transaction is committed. One
//! writer task per node drains every waiting write into one transaction
//! (group commit) and writes a batch's new messages, and its attempts'
//! outcomes, with one statement per table, sending together (pipelined)
//! the statements that do not wait for each other's answers; should the
//! server refuse one, each write is tried alone in a savepoint, so that
//! one bad write spoils only itself. Reads use pooled connections; the
//! first attempt of a message this node stored reads only whether it may
//! still go (spool::fresh keeps the rest).
//!
//! A message belongs to one node, which alone delivers it; a node is
//! alive while its heartbeat (one row, renewed on a connection that also
//! holds the node's lock) is younger than its lease, and the messages of
//! a dead node are taken over by the others in batches. A tenant's log
//! chain is appended under a row lock on its head, so that two nodes
//! appending at once take turns instead of forking it.
//!
//! The schema is versioned: migrations run at start under an advisory
//! lock (so that nodes starting together do not race), and a database
//! with a newer schema than this binary knows is refused.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use deadpool_postgres::Transaction as PoolTx;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::future::{try_join, try_join3};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::config::SslMode;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row as PgRow, Transaction};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::at_rest::{Cipher, Field, KekChange, RekeyDone, Row, StoredKey};
use super::values::{DELIVERED, FAILED, IdClock, PENDING, Sealed, class_of, seal_message};
use super::*;

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 256;
/// Connections per node: the writer, and readers for deliveries and commands.
const POOL_SIZE: usize = 16;
/// `pg_advisory_xact_lock` key that serializes migrations ("sealgate").
const MIGRATION_LOCK: i64 = 0x7365_616c_6761_7465;
/// First half of the session lock a live node holds on its slot ("SGND").
const NODE_LOCK: i32 = 0x5347_4e44;
/// Longest wait between heartbeats, whatever the lease: how soon a node
/// notices that the database is gone, and refuses mail.
const MAX_BEAT: Duration = Duration::from_secs(5);

/// The schema, one entry per version; never edit a published entry, add one.
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE messages (
    id          BIGINT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    sender      BYTEA NOT NULL,  -- sealed
    env_id      BYTEA,           -- sealed
    ret         TEXT,
    smtputf8    BOOLEAN NOT NULL,
    body_8bit   BOOLEAN NOT NULL,
    received_at BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    client      BYTEA NOT NULL,  -- sealed
    size        BIGINT NOT NULL,
    body        BYTEA,           -- sealed
    tls_request TEXT NOT NULL,
    content     TEXT NOT NULL,
    -- the node that accepted it
    node        TEXT NOT NULL,
    -- set when no recipient is pending; the content is deleted at purge_at
    purge_at    BIGINT
);
CREATE INDEX messages_purge ON messages (purge_at) WHERE purge_at IS NOT NULL;
CREATE TABLE recipients (
    message_id   BIGINT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    idx          INTEGER NOT NULL,
    address      BYTEA NOT NULL,  -- sealed
    domain       TEXT NOT NULL,
    orcpt        BYTEA,           -- sealed
    notify       INTEGER NOT NULL,
    status       SMALLINT NOT NULL,   -- 0 pending, 1 delivered, 2 failed
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt BIGINT NOT NULL,
    last_reply   BYTEA,           -- sealed
    class        TEXT NOT NULL,
    PRIMARY KEY (message_id, idx)
);
CREATE INDEX recipients_due ON recipients (next_attempt) WHERE status = 0;
CREATE TABLE spool_keys (
    id          INTEGER NOT NULL,
    kek         TEXT NOT NULL,
    wrapped     BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (id, kek)
);
CREATE TABLE spool_key_state (
    one      INTEGER PRIMARY KEY CHECK (one = 1),
    current  INTEGER NOT NULL
);
CREATE TABLE txlog (
    tenant   TEXT NOT NULL,
    seq      BIGINT NOT NULL,
    at       BIGINT NOT NULL,
    kind     TEXT NOT NULL,
    queue_id TEXT NOT NULL,
    data     TEXT NOT NULL,
    prev     BYTEA NOT NULL,
    hash     BYTEA NOT NULL,
    node     TEXT NOT NULL,
    PRIMARY KEY (tenant, seq)
);
CREATE INDEX txlog_at ON txlog (at);
-- each tenant's last record; its row lock orders appends across nodes
CREATE TABLE txlog_heads (
    tenant TEXT PRIMARY KEY,
    seq    BIGINT NOT NULL,
    hash   BYTEA NOT NULL
);
-- the nodes that used this database; the slot is part of the ids a node
-- makes, so that two nodes never make the same one
CREATE TABLE nodes (
    name       TEXT PRIMARY KEY,
    slot       SMALLINT NOT NULL UNIQUE CHECK (slot BETWEEN 0 AND 255),
    started_at BIGINT NOT NULL
);
-- a job (a message's recipients in one domain) a node is delivering; an
-- expired lease is anyone's to take
CREATE TABLE leases (
    message_id BIGINT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    domain     TEXT NOT NULL,
    owner      TEXT NOT NULL,
    until      BIGINT NOT NULL,
    PRIMARY KEY (message_id, domain)
);
CREATE INDEX leases_owner ON leases (owner);
",
    "
-- Version 2: a message belongs to one live node at a time (the one that
-- accepted it, retried it or took it over), and a node is alive while its
-- heartbeat is younger than its lease. One row per node is renewed, not
-- one per job, and a dead node's messages are taken in batches.
DROP TABLE leases;
ALTER TABLE messages ADD COLUMN owner TEXT;
UPDATE messages SET owner = node;
ALTER TABLE messages ALTER COLUMN owner SET NOT NULL;
CREATE INDEX messages_owner ON messages (owner) WHERE purge_at IS NULL;
ALTER TABLE nodes ADD COLUMN heartbeat BIGINT NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN lease BIGINT NOT NULL DEFAULT 30;
-- raised by `sealgate queue flush` on any node: every node reads its queue again
ALTER TABLE nodes ADD COLUMN flush BIGINT NOT NULL DEFAULT 0;
",
    "
-- Version 3: an operator keeps a message back (`sealgate queue hold`)
-- until released; the console pages the queue one tenant at a time.
ALTER TABLE messages ADD COLUMN held BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX messages_tenant ON messages (tenant, id) WHERE purge_at IS NULL;
",
    "
-- Version 4: the domain memory (policy::memory), one for the cluster.
-- Levels are ranks: 0 plaintext, 1 encrypted, 2 authenticated, 3 qualified.
CREATE TABLE domains (
    domain          TEXT PRIMARY KEY,
    best_level      SMALLINT NOT NULL,
    best_at         BIGINT NOT NULL,
    last_level      SMALLINT NOT NULL,
    last_at         BIGINT NOT NULL,
    downgrade_since BIGINT,
    confirmed_at    BIGINT
);
CREATE INDEX domains_downgraded ON domains (downgrade_since)
    WHERE downgrade_since IS NOT NULL;
CREATE TABLE domain_hosts (
    domain      TEXT NOT NULL REFERENCES domains (domain) ON DELETE CASCADE,
    mx_host     TEXT NOT NULL,
    address     TEXT NOT NULL,
    level       SMALLINT NOT NULL,
    shortfalls  TEXT NOT NULL,
    at          BIGINT NOT NULL,
    valid_until BIGINT NOT NULL,
    PRIMARY KEY (domain, mx_host)
);
",
    "
-- Version 5: console accounts, API tokens (their SHA-256) and login
-- sessions (the SHA-256 of the cookie), one set for the cluster.
CREATE TABLE console_accounts (
    name       TEXT PRIMARY KEY,
    role       TEXT NOT NULL,
    tenant     TEXT,
    hash       TEXT NOT NULL,
    totp       BYTEA,
    created_at BIGINT NOT NULL
);
CREATE TABLE console_tokens (
    hash       BYTEA PRIMARY KEY,
    name       TEXT NOT NULL REFERENCES console_accounts (name) ON DELETE CASCADE,
    created_at BIGINT NOT NULL
);
CREATE TABLE console_sessions (
    id      BYTEA PRIMARY KEY,
    name    TEXT NOT NULL REFERENCES console_accounts (name) ON DELETE CASCADE,
    csrf    TEXT NOT NULL,
    started BIGINT NOT NULL,
    last    BIGINT NOT NULL
);
CREATE INDEX console_sessions_last ON console_sessions (last);
",
    "
-- Version 6: TLS-RPT reports received for the gateway's own domains
-- (report::received).
CREATE TABLE tlsrpt_received (
    organization  TEXT NOT NULL,
    report_id     TEXT NOT NULL,
    received_at   BIGINT NOT NULL,
    source        TEXT NOT NULL,
    begins        BIGINT NOT NULL,
    ends          BIGINT NOT NULL,
    domains       TEXT NOT NULL,
    successes     BIGINT NOT NULL,
    failures      BIGINT NOT NULL,
    failure_kinds TEXT NOT NULL,
    report        TEXT NOT NULL,
    PRIMARY KEY (organization, report_id)
);
CREATE INDEX tlsrpt_received_at ON tlsrpt_received (received_at);
",
    "
-- Version 7: the pre-agreed envelope passwords (sealed with the store key
-- every node holds, named by its fingerprint) and the recipient
-- certificates, one set for the cluster.
CREATE TABLE seal_passwords (
    tenant  TEXT NOT NULL,
    address TEXT NOT NULL,
    sealed  BYTEA NOT NULL,
    set_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant, address)
);
CREATE TABLE seal_password_key (
    one         INTEGER PRIMARY KEY CHECK (one = 1),
    fingerprint TEXT NOT NULL
);
CREATE TABLE recipient_certs (
    tenant      TEXT NOT NULL,
    address     TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    chain       TEXT NOT NULL,
    subject     TEXT NOT NULL,
    not_after   BIGINT NOT NULL,
    added_at    BIGINT NOT NULL,
    PRIMARY KEY (tenant, address, fingerprint)
);
",
    "
-- Version 8: the MTA-STS policy cache (qualify::mta_sts), one for the
-- cluster: a policy one node fetched guards every node's first delivery.
CREATE TABLE mta_sts_policies (
    domain  TEXT PRIMARY KEY,
    id      TEXT NOT NULL,
    body    TEXT NOT NULL,
    expires BIGINT NOT NULL
);
",
    "
-- Version 9: the TLS-RPT reports sent (report::tlsrpt::SentLog): a node
-- claims a report before it sends it, so each goes out once.
CREATE TABLE tlsrpt_sent (
    day     TEXT NOT NULL,
    domain  TEXT NOT NULL,
    rua     TEXT NOT NULL,
    at      BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    PRIMARY KEY (day, domain, rua)
);
",
    "
-- Version 10: sealed bodies are ciphertext, which never compresses: kept
-- out of line without trying to.
ALTER TABLE messages ALTER COLUMN body SET STORAGE EXTERNAL;
",
    "
-- Version 11: each node reports, with its heartbeat, the newest data key
-- it can open and the one it seals under, so that `sealgate spool rekey`
-- knows when every live node has followed each step of a rotation.
ALTER TABLE nodes ADD COLUMN keys_known INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN key_current INTEGER NOT NULL DEFAULT 0;
",
    "
-- Version 12: an operator's delete, hold or bounce of a message that
-- another live node owns is done by that owner, after its attempt in
-- flight is recorded (spool::pg_acts); the asking node waits for the
-- answer here, then deletes the row.
CREATE TABLE node_acts (
    id       BIGINT PRIMARY KEY,  -- random: no sequence
    node     TEXT NOT NULL,
    queue_id BIGINT NOT NULL,
    act      TEXT NOT NULL,
    by_whom  TEXT NOT NULL,
    reason   TEXT,
    asked_by TEXT NOT NULL,
    asked_at BIGINT NOT NULL,
    taken    BOOLEAN NOT NULL DEFAULT false,
    answer   TEXT
);
CREATE INDEX node_acts_waiting ON node_acts (node) WHERE NOT taken;
",
];

/// The PostgreSQL spool. Cheap to share: clone the `Arc`.
pub struct PgSpool {
    pool: Pool,
    node: String,
    cipher: Arc<Cipher>,
    ids: IdClock,
    writer: mpsc::UnboundedSender<Write>,
    health: Arc<Health>,
    /// A node's lease; none for a command's view.
    lease: Option<Duration>,
    /// What this node just stored, for the first attempt, and the task
    /// that asks the database whether it may still go (a node only).
    fresh: Option<(super::fresh::Fresh, mpsc::UnboundedSender<Check>)>,
    /// Dropped with the spool: the heartbeat stops and the node lock goes.
    _beat: oneshot::Sender<()>,
}

/// What the heartbeat last saw.
struct Health {
    up: AtomicBool,
    flushes: AtomicU64,
    /// Unix seconds since when the database has answered without a break.
    up_since: AtomicI64,
}

/// A write the writer task applies inside its batch transaction.
enum Op {
    Store(Box<NewMessage>, Box<Sealed>),
    Record(Box<AttemptRecord>),
    Retry(QueueId, i64),
    RetryAll(i64),
    Delete(QueueId, Operator),
    /// Hold (`true`) or release (`false`).
    Hold(QueueId, Operator, bool, i64),
    Purge(i64),
}

/// What a write gives back.
enum Done {
    Stored,
    /// Stored, and the message given back to the caller.
    Kept(Box<NewMessage>),
    Recorded(RecordResult),
    Jobs(Vec<DueJob>),
    Deleted(bool),
    Hold(HoldOutcome),
    Purged(usize),
}

struct Write {
    op: Op,
    reply: oneshot::Sender<Result<Done, SpoolError>>,
}

impl PgSpool {
    /// Connects to `url`, brings the schema up to date, opens the data keys
    /// (see [`Cipher::from_stored`]), takes this node's name (refused while
    /// another live node has it) and starts the writer and the heartbeat;
    /// `node` names this node in what it writes, and the others take over
    /// its messages when its heartbeat is older than `lease`. Without a
    /// lease it is a command's view (`sealgate queue`, `report`): no node
    /// lock, no heartbeat, no ids of its own.
    ///
    /// `ca`: the certificates that sign the server's, for `sslmode=require`
    /// (see [`connector`]).
    pub async fn open(
        url: &str,
        ca: Option<&Path>,
        key: &KeyFile,
        node: &str,
        lease: Option<Duration>,
    ) -> Result<Arc<PgSpool>, SpoolError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| SpoolError::Unavailable(format!("storage url: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(MAX_BEAT);
        }
        let tls = connector(&mut config, url, ca)?;
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .map_err(|e| SpoolError::Unavailable(e.to_string()))?;
        let mut client = pool.get().await.map_err(unavailable)?;
        let tx = client.transaction().await?;
        migrate(&tx).await?;
        let stored: Vec<StoredKey> = tx
            .query(
                "SELECT id, kek, wrapped, created_at FROM spool_keys ORDER BY id",
                &[],
            )
            .await?
            .iter()
            .map(stored_key)
            .collect();
        let current: Option<i32> = tx
            .query_opt("SELECT current FROM spool_key_state", &[])
            .await?
            .map(|r| r.get(0));
        let (cipher, first) =
            Cipher::from_stored(&stored, current.map(|c| c as u32), &key.path, key.create)?;
        if let Some(k) = first {
            insert_keys(&tx, std::slice::from_ref(&k)).await?;
            tx.execute(
                "INSERT INTO spool_key_state (one, current) VALUES (1, $1)",
                &[&(k.id as i32)],
            )
            .await?;
        }
        let slot = match lease {
            Some(lease) => node_slot(&tx, node, lease).await?,
            None => 0,
        };
        let max_id: Option<i64> = tx
            .query_one("SELECT MAX(id) FROM messages", &[])
            .await?
            .get(0);
        tx.commit().await?;
        drop(client);
        let health = Arc::new(Health {
            up: AtomicBool::new(true),
            flushes: AtomicU64::new(0),
            up_since: AtomicI64::new(crate::util::now()),
        });
        let (stop_beat, stopped) = oneshot::channel();
        let cipher = Arc::new(cipher);
        if let Some(lease) = lease {
            let beat = Beat {
                config,
                tls,
                node: node.to_string(),
                slot,
                lease,
                health: health.clone(),
                cipher: cipher.clone(),
            };
            let lock = beat.first_connect().await?;
            tokio::spawn(beat.run(lock, stopped));
        }
        let fresh = lease.map(|_| {
            let (checks, rx) = mpsc::unbounded_channel();
            tokio::spawn(check_loop(pool.clone(), node.to_string(), rx));
            (super::fresh::Fresh::default(), checks)
        });
        let (writer, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer_loop(
            pool.clone(),
            cipher.clone(),
            node.to_string(),
            rx,
        ));
        Ok(Arc::new(PgSpool {
            pool,
            node: node.to_string(),
            cipher,
            ids: IdClock::after(max_id.unwrap_or(0) as u64).with_slot(slot),
            writer,
            health,
            lease,
            fresh,
            _beat: stop_beat,
        }))
    }

    /// The nodes that have used this database, for `sealgate cluster status`.
    pub async fn nodes(&self, now: i64) -> Result<Vec<NodeStatus>, SpoolError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT n.name, n.slot, n.started_at, n.heartbeat, n.lease,
                        (SELECT COUNT(*) FROM messages m
                          WHERE m.owner = n.name AND m.purge_at IS NULL)
                 FROM nodes n ORDER BY n.name",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let heartbeat: i64 = r.get(3);
                let lease: i64 = r.get(4);
                NodeStatus {
                    name: r.get(0),
                    slot: r.get::<_, i16>(1) as u8,
                    started_at: r.get(2),
                    heartbeat: (heartbeat > 0).then_some(heartbeat),
                    lease_until: heartbeat + lease,
                    alive: heartbeat + lease >= now,
                    messages: r.get::<_, i64>(5) as u64,
                }
            })
            .collect())
    }

    async fn write(&self, op: Op) -> Result<Done, SpoolError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(Write { op, reply })
            .map_err(|_| SpoolError::Stopped)?;
        rx.await.map_err(|_| SpoolError::Stopped)?
    }

    /// The connection pool, for the small tables (crate::tables).
    /// This node's name (a command's view: the name the configuration gives).
    pub(super) fn node(&self) -> &str {
        &self.node
    }

    pub(super) fn pool(&self) -> Pool {
        self.pool.clone()
    }

    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object, SpoolError> {
        self.pool.get().await.map_err(unavailable)
    }

    /// Walks a tenant's log chain, as `sealgate report verify` does,
    /// streaming the records in order; `progress` is called once per record.
    pub async fn verify_log(
        &self,
        tenant: &str,
        progress: &(dyn Fn() + Sync),
    ) -> Result<crate::report::log::Verified, SpoolError> {
        use crate::report::log::Walk;
        use futures_util::TryStreamExt;
        let client = self.client().await?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&tenant];
        let rows = client
            .query_raw(
                "SELECT seq, at, kind, queue_id, data, prev, hash FROM txlog
                 WHERE tenant = $1 ORDER BY seq",
                params,
            )
            .await?;
        futures_util::pin_mut!(rows);
        let mut walk = Walk::new(tenant);
        while let Some(r) = rows.try_next().await? {
            progress();
            if let Some(broken) = walk.next(stored(&r)) {
                return Ok(broken);
            }
        }
        Ok(walk.end())
    }

    /// Copies the log records `[from, to)`, of one tenant or all, into the
    /// SQLite database `dest`: the log's readers (exports, the HTML report,
    /// TLS-RPT, verify) then read a cluster's log as they read one node's.
    /// Streams, so the copy costs disk, not memory. Returns the count.
    pub async fn copy_log(
        &self,
        dest: &rusqlite::Connection,
        from: i64,
        to: i64,
        tenant: Option<&str>,
        progress: &(dyn Fn() + Sync),
    ) -> Result<u64, SpoolError> {
        use futures_util::TryStreamExt;
        crate::report::log::init(dest)?;
        let client = self.client().await?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&from, &to, &tenant];
        let rows = client
            .query_raw(
                "SELECT tenant, seq, at, kind, queue_id, data, prev, hash FROM txlog
                 WHERE at >= $1 AND at < $2 AND ($3::text IS NULL OR tenant = $3)",
                params,
            )
            .await?;
        futures_util::pin_mut!(rows);
        let tx = dest.unchecked_transaction()?;
        let mut n = 0;
        {
            let mut insert = tx.prepare(
                "INSERT INTO txlog (tenant, seq, at, kind, queue_id, data, prev, hash)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )?;
            while let Some(r) = rows.try_next().await? {
                progress();
                insert.execute(rusqlite::params![
                    r.get::<_, &str>(0),
                    r.get::<_, i64>(1),
                    r.get::<_, i64>(2),
                    r.get::<_, &str>(3),
                    r.get::<_, &str>(4),
                    r.get::<_, &str>(5),
                    r.get::<_, &[u8]>(6),
                    r.get::<_, &[u8]>(7),
                ])?;
                n += 1;
            }
        }
        tx.commit()?;
        Ok(n)
    }

    /// Every tenant's `attempt` records of `[from, to)`, streamed to `f`
    /// (TLS-RPT counts them without a copy of the log).
    pub async fn each_attempt(
        &self,
        from: i64,
        to: i64,
        f: &mut (dyn FnMut(&crate::report::log::Stored) + Send),
    ) -> Result<u64, SpoolError> {
        use futures_util::TryStreamExt;
        let client = self.client().await?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&from, &to];
        let rows = client
            .query_raw(
                "SELECT seq, at, kind, queue_id, data, prev, hash FROM txlog
                 WHERE at >= $1 AND at < $2 AND kind = 'attempt'",
                params,
            )
            .await?;
        futures_util::pin_mut!(rows);
        let mut n = 0;
        while let Some(r) = rows.try_next().await? {
            f(&stored(&r));
            n += 1;
        }
        Ok(n)
    }

    /// How many log records a copy of `[from, to)` would take.
    pub async fn count_log(
        &self,
        from: i64,
        to: i64,
        tenant: Option<&str>,
    ) -> Result<u64, SpoolError> {
        let client = self.client().await?;
        let n: i64 = client
            .query_one(
                "SELECT COUNT(*) FROM txlog
                 WHERE at >= $1 AND at < $2 AND ($3::text IS NULL OR tenant = $3)",
                &[&from, &to, &tenant],
            )
            .await?
            .get(0);
        Ok(n as u64)
    }

    /// Each tenant's last record: (tenant, seq, hash).
    pub async fn log_heads(&self) -> Result<Vec<(String, i64, Vec<u8>)>, SpoolError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT tenant, seq, hash FROM txlog_heads WHERE seq > 0 ORDER BY tenant",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// The tenant's records after number `after`, in order, at most `limit`.
    pub async fn read_log(
        &self,
        tenant: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<crate::report::log::Stored>, SpoolError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT seq, at, kind, queue_id, data, prev, hash FROM txlog
             WHERE tenant = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            )
            .await?;
        let rows = client
            .query(&statement, &[&tenant, &after, &(limit as i64)])
            .await?;
        Ok(rows.iter().map(stored).collect())
    }

    /// The tenant's records with these numbers, in order.
    pub async fn read_log_seqs(
        &self,
        tenant: &str,
        seqs: &[i64],
    ) -> Result<Vec<crate::report::log::Stored>, SpoolError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT seq, at, kind, queue_id, data, prev, hash FROM txlog
             WHERE tenant = $1 AND seq = ANY($2) ORDER BY seq",
            )
            .await?;
        let rows = client.query(&statement, &[&tenant, &seqs]).await?;
        Ok(rows.iter().map(stored).collect())
    }

    /// Appends one event to a tenant's chain, whichever node holds its head.
    pub async fn append_log(
        &self,
        tenant: &str,
        event: crate::report::Event,
    ) -> Result<(), SpoolError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        append(&tx, tenant, &self.node, &[event]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every tenant with records.
    pub async fn log_tenants(&self) -> Result<Vec<String>, SpoolError> {
        Ok(self.log_heads().await?.into_iter().map(|h| h.0).collect())
    }

    /// What `report::log::prune` does, on the shared log: the tenant's
    /// records older than `before` go, after a `pruned` record that
    /// vouches for them is appended (under the head's lock, so appends
    /// from other nodes wait).
    pub async fn prune_log(
        &self,
        tenant: &str,
        before: i64,
        now: i64,
    ) -> Result<Option<crate::report::log::Pruned>, SpoolError> {
        use crate::report::event::{Pruned as PrunedEvent, VERSION};
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let bounds = tx
            .query_one(
                "SELECT MIN(seq), MAX(seq), MIN(seq) FILTER (WHERE at >= $2)
                 FROM txlog WHERE tenant = $1",
                &[&tenant, &before],
            )
            .await?;
        let (first, head, first_kept): (Option<i64>, Option<i64>, Option<i64>) =
            (bounds.get(0), bounds.get(1), bounds.get(2));
        let (Some(first), Some(head)) = (first, head) else {
            return Ok(None);
        };
        let through = first_kept.map_or(head, |k| k - 1);
        if through < first {
            return Ok(None);
        }
        let hash: Vec<u8> = tx
            .query_one(
                "SELECT hash FROM txlog WHERE tenant = $1 AND seq = $2",
                &[&tenant, &through],
            )
            .await?
            .get(0);
        let record = crate::report::Event {
            queue_id: QueueId(0),
            at: now,
            data: crate::report::EventData::Pruned(PrunedEvent {
                v: VERSION,
                from_seq: first,
                through_seq: through,
                through_hash: crate::report::log::hex(&hash),
                older_than: crate::util::rfc3339(before),
            }),
        };
        append(&tx, tenant, &self.node, &[record]).await?;
        tx.execute(
            "DELETE FROM txlog WHERE tenant = $1 AND seq <= $2",
            &[&tenant, &through],
        )
        .await?;
        tx.commit().await?;
        Ok(Some(crate::report::log::Pruned {
            from: first,
            through,
        }))
    }

    /// `sealgate storage migrate`: one queued message as it stands on the
    /// node it comes from (every recipient's state, attempts, next try and
    /// last reply), owned by this node. Its log records come with the log.
    pub async fn import_message(
        &self,
        message: &NewMessage,
        states: &[RecipientState],
        held: bool,
    ) -> Result<(), SpoolError> {
        let sealed = seal_message(&self.cipher, message)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let key = message.id.0 as i64;
        insert_message(&tx, &self.node, message, &sealed).await?;
        let mut idx = Vec::with_capacity(states.len());
        let mut status = Vec::with_capacity(states.len());
        let mut attempts = Vec::with_capacity(states.len());
        let mut next = Vec::with_capacity(states.len());
        let mut reply = Vec::with_capacity(states.len());
        for (i, r) in states.iter().enumerate() {
            idx.push(i as i32);
            status.push(match r.status {
                RecipientStatus::Pending => PENDING,
                RecipientStatus::Delivered => DELIVERED,
                RecipientStatus::Failed => FAILED,
            } as i16);
            attempts.push(r.attempts as i32);
            next.push(r.next_attempt);
            reply.push(match &r.last_reply {
                Some(text) => Some(self.cipher.seal_text(
                    Field::LastReply,
                    Row(key, i as i64),
                    text,
                )?),
                None => None,
            });
        }
        exec(
            &tx,
            "UPDATE recipients r SET status = u.status, attempts = u.attempts,
                    next_attempt = u.next, last_reply = u.reply
             FROM UNNEST($2::integer[], $3::smallint[], $4::integer[], $5::bigint[], $6::bytea[])
                  AS u(idx, status, attempts, next, reply)
             WHERE r.message_id = $1 AND r.idx = u.idx",
            &[&key, &idx, &status, &attempts, &next, &reply],
        )
        .await?;
        if held {
            exec(
                &tx,
                "UPDATE messages SET held = true WHERE id = $1",
                &[&key],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// `sealgate storage migrate`: log records exactly as stored on the
    /// node they come from (links and hashes unchanged, so the chain
    /// verifies here as it did there), in order per tenant. A tenant that
    /// already has records here is refused: two chains cannot be joined.
    pub async fn import_log(
        &self,
        records: &[(String, crate::report::log::Stored)],
    ) -> Result<(), SpoolError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let mut tenants: Vec<&str> = records.iter().map(|(t, _)| t.as_str()).collect();
        tenants.sort_unstable();
        tenants.dedup();
        for tenant in &tenants {
            let head = opt(
                &tx,
                "SELECT seq FROM txlog_heads WHERE tenant = $1 FOR UPDATE",
                &[tenant],
            )
            .await?;
            let first = records
                .iter()
                .find(|(t, _)| t == tenant)
                .map_or(0, |(_, r)| r.seq);
            if let Some(head) = head
                && head.get::<_, i64>(0) >= first
            {
                return Err(SpoolError::Corrupt(format!(
                    "tenant {tenant} already has log records up to {} in the target database: its chain cannot take records from {first} on",
                    head.get::<_, i64>(0)
                )));
            }
        }
        let tenant: Vec<&str> = records.iter().map(|(t, _)| t.as_str()).collect();
        let seq: Vec<i64> = records.iter().map(|(_, r)| r.seq).collect();
        let at: Vec<i64> = records.iter().map(|(_, r)| r.at).collect();
        let kind: Vec<&str> = records.iter().map(|(_, r)| r.kind.as_str()).collect();
        let queue_id: Vec<&str> = records.iter().map(|(_, r)| r.queue_id.as_str()).collect();
        let data: Vec<&str> = records.iter().map(|(_, r)| r.data.as_str()).collect();
        let prev: Vec<&[u8]> = records.iter().map(|(_, r)| r.prev.as_slice()).collect();
        let hash: Vec<&[u8]> = records.iter().map(|(_, r)| r.hash.as_slice()).collect();
        exec(
            &tx,
            "INSERT INTO txlog (tenant, seq, at, kind, queue_id, data, prev, hash, node)
             SELECT u.*, $9
             FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[],
                         $6::text[], $7::bytea[], $8::bytea[]) AS u",
            &[
                &tenant, &seq, &at, &kind, &queue_id, &data, &prev, &hash, &self.node,
            ],
        )
        .await?;
        for t in &tenants {
            if let Some((_, last)) = records.iter().rev().find(|(x, _)| x == t) {
                exec(
                    &tx,
                    "INSERT INTO txlog_heads (tenant, seq, hash) VALUES ($1, $2, $3)
                     ON CONFLICT (tenant) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash",
                    &[t, &last.seq, &last.hash.as_slice()],
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// A job of one domain, this node's and not held; or of every domain
    /// (`None`: held or not, whoever owns it).
    async fn load_now(
        &self,
        id: QueueId,
        domain: Option<&str>,
    ) -> Result<Option<LoadedJob>, SpoolError> {
        let client = self.client().await?;
        let key = id.0 as i64;
        // One round trip: the message with its pending recipients in the
        // domain as arrays (the body once, however many recipients).
        let statement = client
            .prepare_cached(
                "SELECT m.tenant, m.sender, m.env_id, m.ret, m.smtputf8, m.body_8bit,
                        m.received_at, m.expires_at, m.body, m.tls_request, m.content,
                        r.idx, r.address, r.orcpt, r.notify, r.attempts, r.class
                 FROM messages m,
                      LATERAL (SELECT array_agg(idx ORDER BY idx) AS idx,
                                      array_agg(address ORDER BY idx) AS address,
                                      array_agg(orcpt ORDER BY idx) AS orcpt,
                                      array_agg(notify ORDER BY idx) AS notify,
                                      array_agg(attempts ORDER BY idx) AS attempts,
                                      array_agg(class ORDER BY idx) AS class
                               FROM recipients
                               WHERE message_id = m.id AND ($3::text IS NULL OR domain = $3)
                                 AND status = 0) r
                 WHERE m.id = $1 AND m.purge_at IS NULL
                   AND ($3::text IS NULL OR (m.owner = $2 AND NOT m.held))",
            )
            .await?;
        let Some(row) = client
            .query_opt(&statement, &[&key, &self.node, &domain])
            .await?
        else {
            return Ok(None);
        };
        let Some(idx) = row.get::<_, Option<Vec<i32>>>("idx") else {
            return Ok(None);
        };
        let (envelope, received_at, expires_at) = envelope_of(&row, &self.cipher, key)?;
        let body: Option<Vec<u8>> = row.get("body");
        let body = body.ok_or_else(|| SpoolError::Corrupt(format!("message {id} has no body")))?;
        let body = self.cipher.open_value(Field::Body, Row(key, 0), &body)?;
        let address: Vec<Vec<u8>> = row.get("address");
        let orcpt: Vec<Option<Vec<u8>>> = row.get("orcpt");
        let notify: Vec<i32> = row.get("notify");
        let attempts: Vec<i32> = row.get("attempts");
        let class: Vec<String> = row.get("class");
        let mut recipients = Vec::with_capacity(idx.len());
        for (i, idx) in idx.iter().enumerate() {
            let (Some(address), Some(orcpt), Some(notify), Some(attempts), Some(class)) = (
                address.get(i),
                orcpt.get(i),
                notify.get(i),
                attempts.get(i),
                class.get(i),
            ) else {
                return Err(SpoolError::Corrupt(format!(
                    "message {id}: recipient {idx} is incomplete"
                )));
            };
            let at = Row(key, *idx as i64);
            recipients.push(PendingRecipient {
                index: *idx as u32,
                recipient: Recipient::new(
                    self.cipher.open_text(Field::Address, at, address)?,
                    open_opt(&self.cipher, Field::Orcpt, at, orcpt.as_deref())?,
                    Notify::from_bits(*notify as i64),
                )
                .with_class(class_of(class.clone())),
                attempts: *attempts as u32,
            });
        }
        Ok(Some(LoadedJob {
            id,
            envelope,
            received_at,
            expires_at,
            body,
            recipients,
        }))
    }

    /// Drops the copy kept for a message's first attempt: an operator
    /// acted on it, and its next attempt must see what the database says.
    fn forget(&self, id: QueueId) {
        if let Some((fresh, _)) = &self.fresh {
            fresh.forget(id);
        }
    }

    /// Holds (`true`) or releases a message, in the writer's next batch.
    async fn set_held(
        &self,
        id: QueueId,
        by: Operator,
        held: bool,
        now: i64,
    ) -> Result<HoldOutcome, SpoolError> {
        self.forget(id);
        match self.write(Op::Hold(id, by, held, now)).await? {
            Done::Hold(h) => Ok(h),
            _ => Err(SpoolError::Stopped),
        }
    }

    async fn list_now(&self, page: &ListPage) -> Result<Vec<MessageSummary>, SpoolError> {
        let client = self.client().await?;
        let after = page.after.map_or(0, |a| a.0 as i64);
        let rows = client
            .query(
                "SELECT m.id, m.tenant, m.sender, m.size, m.received_at,
                        (SELECT COUNT(*) FROM recipients x
                          WHERE x.message_id = m.id AND x.status = 0),
                        (SELECT COUNT(*) FROM recipients x WHERE x.message_id = m.id),
                        (SELECT MIN(next_attempt) FROM recipients x
                          WHERE x.message_id = m.id AND x.status = 0),
                        (SELECT idx FROM recipients x WHERE x.message_id = m.id
                           AND x.last_reply IS NOT NULL ORDER BY x.status, x.idx LIMIT 1),
                        (SELECT last_reply FROM recipients x WHERE x.message_id = m.id
                           AND x.last_reply IS NOT NULL ORDER BY x.status, x.idx LIMIT 1),
                        m.held
                 FROM messages m
                 WHERE m.purge_at IS NULL AND m.id > $1 AND ($2::text IS NULL OR m.tenant = $2)
                 ORDER BY m.id LIMIT $3",
                &[&after, &page.tenant, &(page.limit as i64)],
            )
            .await?;
        let cipher = &self.cipher;
        rows.iter()
            .map(|r| {
                let id: i64 = r.get(0);
                let reply_at = Row(id, r.get::<_, Option<i32>>(8).unwrap_or(0) as i64);
                Ok(MessageSummary {
                    id: QueueId(id as u64),
                    tenant: TenantId(r.get(1)),
                    held: r.get(10),
                    sender: cipher.open_text(Field::Sender, Row(id, 0), r.get(2))?,
                    size: r.get::<_, i64>(3) as u64,
                    received_at: r.get(4),
                    pending: r.get::<_, i64>(5) as u32,
                    recipients: r.get::<_, i64>(6) as u32,
                    next_attempt: r.get(7),
                    last_reply: open_opt(cipher, Field::LastReply, reply_at, r.get(9))?,
                })
            })
            .collect()
    }

    async fn show_now(&self, id: QueueId) -> Result<Option<MessageDetail>, SpoolError> {
        let client = self.client().await?;
        let key = id.0 as i64;
        let Some(head) = client
            .query_opt(
                "SELECT tenant, sender, env_id, ret, smtputf8, body_8bit, received_at,
                        expires_at, client, size, tls_request, content, held
                 FROM messages WHERE id = $1",
                &[&key],
            )
            .await?
        else {
            return Ok(None);
        };
        let (mut envelope, received_at, expires_at) = envelope_of(&head, &self.cipher, key)?;
        let client_text = self
            .cipher
            .open_text(Field::Client, Row(key, 0), head.get("client"))?;
        let size: i64 = head.get("size");
        let rows = client
            .query(
                "SELECT address, orcpt, notify, status, attempts, next_attempt, last_reply,
                        class, idx
                 FROM recipients WHERE message_id = $1 ORDER BY idx",
                &[&key],
            )
            .await?;
        let cipher = &self.cipher;
        let mut recipients = Vec::with_capacity(rows.len());
        for r in &rows {
            let at = Row(key, r.get::<_, i32>(8) as i64);
            let address = cipher.open_text(Field::Address, at, r.get(0))?;
            envelope.recipients.push(
                Recipient::new(
                    address.clone(),
                    open_opt(cipher, Field::Orcpt, at, r.get(1))?,
                    Notify::from_bits(r.get::<_, i32>(2) as i64),
                )
                .with_class(class_of(r.get(7))),
            );
            recipients.push(RecipientState {
                address,
                status: match r.get::<_, i16>(3) as i64 {
                    PENDING => RecipientStatus::Pending,
                    DELIVERED => RecipientStatus::Delivered,
                    _ => RecipientStatus::Failed,
                },
                attempts: r.get::<_, i32>(4) as u32,
                next_attempt: r.get(5),
                last_reply: open_opt(cipher, Field::LastReply, at, r.get(6))?,
            });
        }
        Ok(Some(MessageDetail {
            id,
            envelope,
            received_at,
            expires_at,
            client: client_text,
            size: size as u64,
            held: head.get("held"),
            recipients,
        }))
    }
}

impl Spool for PgSpool {
    fn next_id(&self) -> QueueId {
        self.ids.next()
    }

    fn store(&self, message: NewMessage) -> BoxFuture<'_, Result<(), SpoolError>> {
        Box::pin(async move {
            let sealed = seal_message(&self.cipher, &message)?;
            let done = self
                .write(Op::Store(Box::new(message), Box::new(sealed)))
                .await?;
            if let (Done::Kept(message), Some((fresh, _))) = (done, &self.fresh) {
                fresh.put(message, std::time::Instant::now());
            }
            Ok(())
        })
    }

    fn load<'a>(
        &'a self,
        id: QueueId,
        domain: &'a str,
    ) -> BoxFuture<'a, Result<Option<LoadedJob>, SpoolError>> {
        Box::pin(async move {
            if let Some((fresh, checks)) = &self.fresh
                && let Some(job) = fresh.take(id, domain, std::time::Instant::now())
            {
                let (reply, rx) = oneshot::channel();
                checks
                    .send(Check { id, reply })
                    .map_err(|_| SpoolError::Stopped)?;
                if rx.await.map_err(|_| SpoolError::Stopped)?? {
                    return Ok(Some(job));
                }
            }
            self.load_now(id, Some(domain)).await
        })
    }

    fn load_all(&self, id: QueueId) -> BoxFuture<'_, Result<Option<LoadedJob>, SpoolError>> {
        // An operator's bounce: what it records, a first attempt must see.
        self.forget(id);
        Box::pin(self.load_now(id, None))
    }

    fn record(&self, attempt: AttemptRecord) -> BoxFuture<'_, Result<RecordResult, SpoolError>> {
        Box::pin(async move {
            match self.write(Op::Record(Box::new(attempt))).await? {
                Done::Recorded(r) => Ok(r),
                _ => Err(SpoolError::Stopped),
            }
        })
    }

    fn pending(&self) -> BoxFuture<'_, Result<Vec<DueJob>, SpoolError>> {
        Box::pin(async move {
            let client = self.client().await?;
            due_jobs(&**client, &self.node, None).await
        })
    }

    fn retry(&self, id: QueueId, now: i64) -> BoxFuture<'_, Result<Vec<DueJob>, SpoolError>> {
        Box::pin(async move {
            self.forget(id);
            match self.write(Op::Retry(id, now)).await? {
                Done::Jobs(j) => Ok(j),
                _ => Err(SpoolError::Stopped),
            }
        })
    }

    fn retry_all(&self, now: i64) -> BoxFuture<'_, Result<Vec<DueJob>, SpoolError>> {
        Box::pin(async move {
            match self.write(Op::RetryAll(now)).await? {
                Done::Jobs(j) => Ok(j),
                _ => Err(SpoolError::Stopped),
            }
        })
    }

    fn delete(&self, id: QueueId, by: Operator) -> BoxFuture<'_, Result<bool, SpoolError>> {
        Box::pin(async move {
            self.forget(id);
            match self.write(Op::Delete(id, by)).await? {
                Done::Deleted(d) => Ok(d),
                _ => Err(SpoolError::Stopped),
            }
        })
    }

    fn hold(
        &self,
        id: QueueId,
        by: Operator,
        now: i64,
    ) -> BoxFuture<'_, Result<HoldOutcome, SpoolError>> {
        Box::pin(self.set_held(id, by, true, now))
    }

    fn release(
        &self,
        id: QueueId,
        by: Operator,
        now: i64,
    ) -> BoxFuture<'_, Result<HoldOutcome, SpoolError>> {
        Box::pin(self.set_held(id, by, false, now))
    }

    fn purge(&self, now: i64) -> BoxFuture<'_, Result<usize, SpoolError>> {
        Box::pin(async move {
            match self.write(Op::Purge(now)).await? {
                Done::Purged(n) => Ok(n),
                _ => Err(SpoolError::Stopped),
            }
        })
    }

    fn list(&self, page: ListPage) -> BoxFuture<'_, Result<Vec<MessageSummary>, SpoolError>> {
        Box::pin(async move { self.list_now(&page).await })
    }

    fn show(&self, id: QueueId) -> BoxFuture<'_, Result<Option<MessageDetail>, SpoolError>> {
        Box::pin(self.show_now(id))
    }

    fn depth(&self) -> BoxFuture<'_, Result<QueueDepth, SpoolError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let row = client
                .query_one(
                    "SELECT COUNT(*), MIN(received_at) FROM messages m
                     WHERE EXISTS (SELECT 1 FROM recipients r
                                   WHERE r.message_id = m.id AND r.status = 0)",
                    &[],
                )
                .await?;
            Ok(QueueDepth {
                messages: row.get::<_, i64>(0) as u64,
                oldest: row.get(1),
            })
        })
    }

    fn shared(&self) -> bool {
        true
    }

    fn available(&self) -> bool {
        self.health.up.load(Ordering::Relaxed)
    }

    fn flushes(&self) -> u64 {
        self.health.flushes.load(Ordering::Relaxed)
    }

    fn adopt(&self, now: i64, limit: usize) -> BoxFuture<'_, Result<Vec<DueJob>, SpoolError>> {
        Box::pin(async move {
            // After a start or an outage the others need a lease's time to
            // beat again: until then an old heartbeat proves nothing.
            let Some(lease) = self.lease else {
                return Ok(Vec::new());
            };
            let steady = now - self.health.up_since.load(Ordering::Relaxed);
            if !self.available() || steady < lease.as_secs() as i64 {
                return Ok(Vec::new());
            }
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            // SKIP LOCKED: nodes adopting at once take different messages,
            // and none waits for a message a writer holds.
            let taken = tx
                .query(
                    "WITH dead AS (SELECT name FROM nodes
                                   WHERE heartbeat + lease < $1 AND name <> $2),
                          taken AS (SELECT id, owner FROM messages
                                    WHERE owner IN (SELECT name FROM dead) AND purge_at IS NULL
                                    LIMIT $3 FOR UPDATE SKIP LOCKED)
                     UPDATE messages m SET owner = $2 FROM taken
                     WHERE m.id = taken.id RETURNING m.id, taken.owner",
                    &[&now, &self.node, &(limit as i64)],
                )
                .await?;
            if taken.is_empty() {
                return Ok(Vec::new());
            }
            let ids: Vec<i64> = taken.iter().map(|r| r.get(0)).collect();
            let mut from: Vec<String> = taken.iter().map(|r| r.get(1)).collect();
            from.sort();
            from.dedup();
            let jobs = tx
                .query(
                    "SELECT message_id, domain, MIN(next_attempt) FROM recipients
                     WHERE message_id = ANY($1) AND status = 0 GROUP BY message_id, domain",
                    &[&ids],
                )
                .await?;
            tx.commit().await?;
            tracing::warn!(
                messages = ids.len(),
                "took over the queue of node {} (no heartbeat within its lease)",
                from.join(", ")
            );
            Ok(jobs.iter().map(due_job).collect())
        })
    }

    fn forward<'a>(
        &'a self,
        id: QueueId,
        act: &'a str,
        by: &'a Operator,
    ) -> BoxFuture<'a, Result<Forwarded, SpoolError>> {
        Box::pin(self.forward_act(id, act, by))
    }

    fn asked(&self) -> BoxFuture<'_, Result<Vec<Asked>, SpoolError>> {
        Box::pin(self.take_asked())
    }

    fn answer<'a>(&'a self, ask: i64, answer: &'a str) -> BoxFuture<'a, Result<(), SpoolError>> {
        Box::pin(self.give_answer(ask, answer))
    }

    fn rekey(&self, change: KekChange) -> BoxFuture<'_, Result<RekeyDone, SpoolError>> {
        Box::pin(async move {
            if !matches!(change, KekChange::Keep) {
                return Err(SpoolError::Rotation(
                    "on shared storage every node reads its own copy of the key file, so \
                     `sealgate spool rekey` makes a new data key only: run it without \
                     --new-kek and --kek-out"
                        .into(),
                ));
            }
            self.rekey_now().await
        })
    }
}

/// How long a rotation waits for every live node to follow a step.
const ROTATION_WAIT: Duration = Duration::from_secs(60);

impl PgSpool {
    /// Rotates the data key across the cluster, in steps that every live
    /// node follows by its heartbeat before the next begins: the new key
    /// is stored and learnt by all (so that any node opens what is sealed
    /// under it), then made the one all seal under, then every stored
    /// value is sealed again under it, and the old keys are deleted once
    /// nothing sealed under them is left.
    async fn rekey_now(&self) -> Result<RekeyDone, SpoolError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let id: i32 = tx
            .query_one("SELECT COALESCE(MAX(id), 0) + 1 FROM spool_keys", &[])
            .await?
            .get(0);
        let (rows, key) = self.cipher.new_data_key(id as u32, None)?;
        insert_keys(&tx, &rows).await?;
        tx.commit().await?;
        drop(client);
        self.cipher.know(&key);
        self.wait_for_nodes("keys_known", id, "learnt").await?;

        self.client()
            .await?
            .execute("UPDATE spool_key_state SET current = $1", &[&id])
            .await?;
        self.cipher.activate(key);
        self.wait_for_nodes("key_current", id, "sealed under")
            .await?;
        // What a node sealed under the old key just before it switched is
        // committed by now.
        tokio::time::sleep(Duration::from_secs(2)).await;

        let mut messages = 0;
        for _ in 0..3 {
            let mut after = 0;
            loop {
                let (n, last) = self.reseal_batch(after, 100).await?;
                messages += n;
                match last {
                    Some(l) => after = l,
                    None => break,
                }
            }
            if self.sealed_under_others(id).await? == 0 {
                self.client()
                    .await?
                    .execute("DELETE FROM spool_keys WHERE id <> $1", &[&id])
                    .await?;
                self.cipher.forget_old_keys(None);
                return Ok(RekeyDone {
                    data_key: id as u32,
                    messages,
                    kek: None,
                });
            }
        }
        Err(SpoolError::Rotation(format!(
            "values sealed under an old data key keep appearing; data key {id} is in use, \
             the old keys stay until a rotation ends: run it again"
        )))
    }

    /// Waits until every live node but this one reports `column` at `id`.
    async fn wait_for_nodes(&self, column: &str, id: i32, what: &str) -> Result<(), SpoolError> {
        let sql = format!(
            "SELECT name FROM nodes WHERE heartbeat + lease >= $1 AND name <> $2 AND {column} < $3
             ORDER BY name"
        );
        let start = std::time::Instant::now();
        loop {
            let behind: Vec<String> = self
                .client()
                .await?
                .query(&sql, &[&crate::util::now(), &self.node, &id])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            if start.elapsed() > ROTATION_WAIT {
                return Err(SpoolError::Rotation(format!(
                    "node(s) {} have not {what} data key {id} within {} s (the old keys \
                     still open everything): run it again",
                    behind.join(", "),
                    ROTATION_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Seals again, under the current data key, the values of up to
    /// `limit` messages after `after`, their rows locked meanwhile; returns
    /// how many messages changed and the last id seen (`None` at the end).
    async fn reseal_batch(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<(usize, Option<i64>), SpoolError> {
        let cipher = &self.cipher;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let heads = tx
            .query(
                "SELECT id, sender, env_id, client, body FROM messages WHERE id > $1
                 ORDER BY id LIMIT $2 FOR UPDATE",
                &[&after, &limit],
            )
            .await?;
        let Some(last) = heads.last().map(|r| r.get::<_, i64>(0)) else {
            return Ok((0, None));
        };
        let again = |field, at, v: Option<Vec<u8>>| -> Result<Option<Vec<u8>>, SpoolError> {
            Ok(match v {
                Some(v) => Some(cipher.reseal(field, at, &v)?.unwrap_or(v)),
                None => None,
            })
        };
        let stale = |v: &Option<Vec<u8>>| v.as_ref().is_some_and(|v| !cipher.is_current(v));
        let mut changed = std::collections::HashSet::new();
        for r in &heads {
            let id: i64 = r.get(0);
            let values: [Option<Vec<u8>>; 4] = [r.get(1), r.get(2), r.get(3), r.get(4)];
            if !values.iter().any(stale) {
                continue;
            }
            let at = Row(id, 0);
            let [sender, env_id, client_, body] = values;
            tx.execute(
                "UPDATE messages SET sender = $2, env_id = $3, client = $4, body = $5 WHERE id = $1",
                &[
                    &id,
                    &again(Field::Sender, at, sender)?,
                    &again(Field::EnvId, at, env_id)?,
                    &again(Field::Client, at, client_)?,
                    &again(Field::Body, at, body)?,
                ],
            )
            .await?;
            changed.insert(id);
        }
        let ids: Vec<i64> = heads.iter().map(|r| r.get(0)).collect();
        let recipients = tx
            .query(
                "SELECT message_id, idx, address, orcpt, last_reply FROM recipients
                 WHERE message_id = ANY($1)",
                &[&ids],
            )
            .await?;
        for r in &recipients {
            let (id, idx): (i64, i32) = (r.get(0), r.get(1));
            let values: [Option<Vec<u8>>; 3] = [r.get(2), r.get(3), r.get(4)];
            if !values.iter().any(stale) {
                continue;
            }
            let at = Row(id, idx as i64);
            let [address, orcpt, reply] = values;
            tx.execute(
                "UPDATE recipients SET address = $3, orcpt = $4, last_reply = $5
                 WHERE message_id = $1 AND idx = $2",
                &[
                    &id,
                    &idx,
                    &again(Field::Address, at, address)?,
                    &again(Field::Orcpt, at, orcpt)?,
                    &again(Field::LastReply, at, reply)?,
                ],
            )
            .await?;
            changed.insert(id);
        }
        tx.commit().await?;
        Ok((changed.len(), Some(last)))
    }

    /// Values still sealed under another data key than `id` (the key's
    /// number is bytes 2 to 5 of a sealed value).
    async fn sealed_under_others(&self, id: i32) -> Result<i64, SpoolError> {
        let key = (id as u32).to_be_bytes().to_vec();
        let other = |c: &str| format!("substring({c} from 2 for 4) <> $1");
        let sql = format!(
            "SELECT (SELECT COUNT(*) FROM messages WHERE {} OR {} OR {} OR {})
                  + (SELECT COUNT(*) FROM recipients WHERE {} OR {} OR {})",
            other("sender"),
            other("env_id"),
            other("client"),
            other("body"),
            other("address"),
            other("orcpt"),
            other("last_reply"),
        );
        Ok(self.client().await?.query_one(&sql, &[&key]).await?.get(0))
    }
}

/// Applies the schema versions this database lacks; refuses a newer one.
async fn migrate(tx: &Transaction<'_>) -> Result<(), SpoolError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS sealgate_schema (
             one INTEGER PRIMARY KEY CHECK (one = 1),
             version INTEGER NOT NULL)",
    )
    .await?;
    let version: i32 = tx
        .query_opt("SELECT version FROM sealgate_schema", &[])
        .await?
        .map_or(0, |r| r.get(0));
    let known = MIGRATIONS.len() as i32;
    if version > known {
        return Err(SpoolError::Corrupt(format!(
            "the database's schema is version {version}, newer than this sealgate knows \
             ({known}); refusing to start rather than misread it. Run the newer sealgate"
        )));
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.batch_execute(step).await?;
        tracing::info!(version = i + 1, "storage schema migrated");
    }
    tx.execute(
        "INSERT INTO sealgate_schema (one, version) VALUES (1, $1)
         ON CONFLICT (one) DO UPDATE SET version = $1",
        &[&known],
    )
    .await?;
    Ok(())
}

/// This node's slot: the one it had, else the lowest free one. Runs
/// under the migration lock, so two nodes starting at once do not pick
/// the same.
async fn node_slot(tx: &Transaction<'_>, node: &str, lease: Duration) -> Result<u8, SpoolError> {
    let now = crate::util::now();
    let lease = lease.as_secs() as i64;
    if let Some(r) = tx
        .query_opt(
            "UPDATE nodes SET started_at = $2, lease = $3 WHERE name = $1 RETURNING slot",
            &[&node, &now, &lease],
        )
        .await?
    {
        return Ok(r.get::<_, i16>(0) as u8);
    }
    let free: Option<i32> = tx
        .query_one(
            "SELECT MIN(s) FROM generate_series(0, 255) AS s
             WHERE s NOT IN (SELECT slot FROM nodes)",
            &[],
        )
        .await?
        .get(0);
    let slot = free.ok_or_else(|| {
        SpoolError::Unavailable(
            "256 node names have used this database; remove old ones from its nodes table".into(),
        )
    })?;
    tx.execute(
        "INSERT INTO nodes (name, slot, started_at, lease) VALUES ($1, $2, $3, $4)",
        &[&node, &(slot as i16), &now, &lease],
    )
    .await?;
    Ok(slot as u8)
}

async fn insert_keys(tx: &Transaction<'_>, keys: &[StoredKey]) -> Result<(), SpoolError> {
    for k in keys {
        tx.execute(
            "INSERT INTO spool_keys (id, kek, wrapped, created_at) VALUES ($1, $2, $3, $4)",
            &[&(k.id as i32), &k.kek, &k.wrapped, &k.created_at],
        )
        .await?;
    }
    Ok(())
}

/// The head of each tenant's chain as this node's writer last left it:
/// while no other node appended since, the next append links to it in one
/// statement instead of reading the head first.
type Heads = std::collections::HashMap<String, Known>;

/// A head this writer left, and how many appends go straight to the lock
/// because the last guess was wrong (other nodes are appending too).
struct Known {
    seq: i64,
    hash: Vec<u8>,
    skip: u8,
}

/// Appends that take the lock without guessing after a wrong guess.
const SKIP_AFTER_MISS: u8 = 8;

async fn writer_loop(
    pool: Pool,
    cipher: Arc<Cipher>,
    node: String,
    mut rx: mpsc::UnboundedReceiver<Write>,
) {
    let mut heads = Heads::new();
    while let Some(batch) = next_batch(&mut rx).await {
        run_batch(&pool, &cipher, &node, &mut heads, batch).await;
    }
}

/// The next request and every other one waiting, up to [`MAX_BATCH`];
/// `None` once every sender is gone.
async fn next_batch<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> Option<Vec<T>> {
    let mut batch = vec![rx.recv().await?];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(w) => batch.push(w),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// Whether a message kept for its first attempt may still go: not held,
/// deleted or taken over since it was stored (an operator on another node
/// may have acted).
struct Check {
    id: QueueId,
    reply: oneshot::Sender<Result<bool, SpoolError>>,
}

/// Answers every waiting [`Check`] with one query: the state is read from
/// the database, as a load would, without the body and the recipients.
async fn check_loop(pool: Pool, node: String, mut rx: mpsc::UnboundedReceiver<Check>) {
    while let Some(batch) = next_batch(&mut rx).await {
        let ids: Vec<i64> = batch.iter().map(|c| c.id.0 as i64).collect();
        let found: Result<std::collections::HashSet<i64>, SpoolError> = async {
            let client = pool.get().await.map_err(unavailable)?;
            let statement = client
                .prepare_cached(
                    "SELECT id FROM messages WHERE id = ANY($1) AND owner = $2
                       AND NOT held AND purge_at IS NULL",
                )
                .await?;
            let rows = client.query(&statement, &[&ids, &node]).await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        }
        .await;
        match found {
            Ok(found) => {
                for c in batch {
                    let _ = c.reply.send(Ok(found.contains(&(c.id.0 as i64))));
                }
            }
            Err(e) => {
                let why = e.to_string();
                for c in batch {
                    let _ = c.reply.send(Err(SpoolError::Unavailable(why.clone())));
                }
            }
        }
    }
}

/// Why a batch's transaction did not commit.
enum BatchError {
    /// The server refused a statement: one write may be at fault, so each
    /// is tried again on its own.
    Refused(SpoolError),
    /// The connection failed, or the commit did: the outcome is not known,
    /// so nothing is tried again.
    Failed(SpoolError),
}

impl From<tokio_postgres::Error> for BatchError {
    fn from(e: tokio_postgres::Error) -> BatchError {
        if e.as_db_error().is_some() {
            BatchError::Refused(e.into())
        } else {
            BatchError::Failed(e.into())
        }
    }
}

impl From<SpoolError> for BatchError {
    fn from(e: SpoolError) -> BatchError {
        match e {
            SpoolError::Postgres(e) => e.into(),
            // Sealing failed, or a row was corrupt: the write's own fault.
            other => BatchError::Refused(other),
        }
    }
}

type Results = Vec<Option<Result<Done, SpoolError>>>;

/// One transaction for the batch. Every writer is answered after the
/// commit, or with the error that prevented it.
async fn run_batch(pool: &Pool, cipher: &Cipher, node: &str, heads: &mut Heads, batch: Vec<Write>) {
    let mut client = match pool.get().await {
        Ok(c) => c,
        Err(e) => {
            let why = e.to_string();
            for w in batch {
                let _ = w.reply.send(Err(SpoolError::Unavailable(why.clone())));
            }
            return;
        }
    };
    let outcome = match together(&mut client, cipher, node, heads, &batch).await {
        Ok(results) => Ok(results),
        Err(BatchError::Refused(e)) => {
            // What this writer knows of the heads may be what the rolled
            // back transaction would have left.
            heads.clear();
            if batch.len() > 1 {
                tracing::warn!(
                    "a batch of {} writes failed together ({e}); each on its own",
                    batch.len()
                );
            }
            one_by_one(&mut client, cipher, node, &batch)
                .await
                .map_err(|e| e.to_string())
        }
        Err(BatchError::Failed(e)) => {
            heads.clear();
            Err(e.to_string())
        }
    };
    match outcome {
        Ok(results) => {
            for (w, r) in batch.into_iter().zip(results) {
                let r = match (w.op, r) {
                    (Op::Store(message, _), Some(Ok(Done::Stored))) => Ok(Done::Kept(message)),
                    (_, r) => r.unwrap_or(Err(SpoolError::Stopped)),
                };
                let _ = w.reply.send(r);
            }
        }
        Err(why) => {
            tracing::error!("storage transaction failed: {why}");
            for w in batch {
                let _ = w.reply.send(Err(SpoolError::Unavailable(format!(
                    "transaction failed: {why}"
                ))));
            }
        }
    }
}

/// The whole batch in one transaction, in few round trips: the new
/// messages and the attempts' outcomes with one statement per table,
/// sent together without waiting for each other (pipelined), then the
/// rest an operator asked for, then one chain append per tenant for
/// everything, last, so that the head's lock is held only to the commit.
async fn together(
    client: &mut deadpool_postgres::Object,
    cipher: &Cipher,
    node: &str,
    heads: &mut Heads,
    batch: &[Write],
) -> Result<Results, BatchError> {
    let tx = client.transaction().await?;
    let mut results: Results = batch.iter().map(|_| None).collect();
    let stores: Vec<(usize, &NewMessage, &Sealed)> = batch
        .iter()
        .enumerate()
        .filter_map(|(i, w)| match &w.op {
            Op::Store(m, sealed) => Some((i, &**m, &**sealed)),
            _ => None,
        })
        .collect();
    let records: Vec<(usize, &AttemptRecord)> = batch
        .iter()
        .enumerate()
        .filter_map(|(i, w)| match &w.op {
            Op::Record(a) => Some((i, &**a)),
            _ => None,
        })
        .collect();
    let (_, recorded) = try_join(
        insert_messages(&tx, node, &stores),
        record_many(&tx, cipher, node, &records),
    )
    .await?;
    let mut dsns = std::collections::HashSet::new();
    for (i, r, dsn) in recorded {
        if dsn {
            dsns.insert(i);
        }
        results[i] = Some(Ok(Done::Recorded(r)));
    }
    for (i, _, _) in &stores {
        results[*i] = Some(Ok(Done::Stored));
    }
    for (w, slot) in batch.iter().zip(results.iter_mut()) {
        if slot.is_none() {
            *slot = Some(Ok(apply(&tx, cipher, node, &w.op).await?));
        }
    }
    // Per tenant in the batch's order; tenants in name order, as every
    // writer locks them: two nodes locking two heads in opposite orders
    // would deadlock.
    let mut events: std::collections::BTreeMap<&str, Vec<crate::report::Event>> =
        Default::default();
    for (i, w) in batch.iter().enumerate() {
        let (tenant, list, dsn) = match &w.op {
            Op::Store(m, _) => (&m.envelope.tenant.0, &m.events, None),
            Op::Record(a) => (
                &a.tenant.0,
                &a.events,
                a.dsn.as_ref().filter(|_| dsns.contains(&i)),
            ),
            _ => continue,
        };
        events
            .entry(tenant)
            .or_default()
            .extend(list.iter().cloned());
        if let Some(dsn) = dsn {
            events
                .entry(&dsn.envelope.tenant.0)
                .or_default()
                .extend(dsn.events.iter().cloned());
        }
    }
    for (tenant, events) in &events {
        append_known(&tx, heads, tenant, node, events).await?;
    }
    tx.commit()
        .await
        .map_err(|e| BatchError::Failed(e.into()))?;
    Ok(results)
}

/// Each write in its own savepoint, so that one bad write spoils only
/// itself: after the batch failed together.
async fn one_by_one(
    client: &mut deadpool_postgres::Object,
    cipher: &Cipher,
    node: &str,
    batch: &[Write],
) -> Result<Results, SpoolError> {
    let mut tx = client.transaction().await?;
    let mut results: Results = Vec::with_capacity(batch.len());
    for w in batch {
        let sp = tx.savepoint("op").await?;
        let r = apply(&sp, cipher, node, &w.op).await;
        if r.is_ok() {
            sp.commit().await?;
        } else {
            sp.rollback().await?;
        }
        results.push(Some(r));
    }
    tx.commit().await?;
    Ok(results)
}

async fn apply(tx: &PoolTx<'_>, cipher: &Cipher, node: &str, op: &Op) -> Result<Done, SpoolError> {
    match op {
        Op::Store(m, sealed) => {
            insert_message(tx, node, m, sealed).await?;
            Ok(Done::Stored)
        }
        Op::Record(a) => record(tx, cipher, node, a).await.map(Done::Recorded),
        Op::Retry(id, now) => {
            let key = id.0 as i64;
            // The node that was asked delivers it: the owner's schedule
            // does not know it is due now, and finds it gone at its time.
            exec(
                tx,
                "UPDATE messages SET owner = $1 WHERE id = $2 AND purge_at IS NULL",
                &[&node, &key],
            )
            .await?;
            exec(
                tx,
                "UPDATE recipients SET next_attempt = $1 WHERE message_id = $2 AND status = 0",
                &[now, &key],
            )
            .await?;
            due_jobs(&**tx, node, Some(*id)).await.map(Done::Jobs)
        }
        Op::RetryAll(now) => {
            exec(
                tx,
                "UPDATE recipients SET next_attempt = $1 WHERE status = 0 AND next_attempt > $1",
                &[now],
            )
            .await?;
            // Each node reads its own queue again when its heartbeat sees this.
            exec(tx, "UPDATE nodes SET flush = flush + 1", &[]).await?;
            due_jobs(&**tx, node, None).await.map(Done::Jobs)
        }
        Op::Delete(id, by) => {
            let key = id.0 as i64;
            let tenant: Option<String> = opt(
                tx,
                "DELETE FROM messages WHERE id = $1 RETURNING tenant",
                &[&key],
            )
            .await?
            .map(|r| r.get(0));
            if let Some(tenant) = &tenant {
                let event = deleted_record(*id, crate::util::now(), &by.by, by.reason.as_deref());
                append(tx, tenant, node, &[event]).await?;
            }
            Ok(Done::Deleted(tenant.is_some()))
        }
        Op::Hold(id, by, held, now) => set_held(tx, node, *id, by, *held, *now)
            .await
            .map(Done::Hold),
        Op::Purge(now) => {
            let held = rows(
                tx,
                "DELETE FROM messages WHERE purge_at IS NOT NULL AND purge_at <= $1
                     RETURNING id, tenant",
                &[now],
            )
            .await?;
            for r in &held {
                let id = QueueId(r.get::<_, i64>(0) as u64);
                let event = deleted_record(id, *now, "retention (hold_delivered ended)", None);
                append(tx, r.get(1), node, &[event]).await?;
            }
            Ok(Done::Purged(held.len()))
        }
    }
}

/// Holds or releases a message that has pending recipients; a release
/// makes them due now, on this node.
async fn set_held(
    tx: &PoolTx<'_>,
    node: &str,
    id: QueueId,
    by: &Operator,
    held: bool,
    now: i64,
) -> Result<HoldOutcome, SpoolError> {
    let key = id.0 as i64;
    let Some(found) = opt(
        tx,
        "SELECT tenant, held FROM messages m WHERE id = $1 AND purge_at IS NULL
         AND EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND r.status = 0)
         FOR UPDATE",
        &[&key],
    )
    .await?
    else {
        return Ok(HoldOutcome::Missing);
    };
    let tenant: String = found.get(0);
    if found.get::<_, bool>(1) == held {
        return Ok(HoldOutcome::Unchanged);
    }
    // Released, it is delivered by the node that was asked: the owner's
    // schedule dropped it while it was held.
    exec(
        tx,
        "UPDATE messages SET held = $1, owner = CASE WHEN $1 THEN owner ELSE $2 END
         WHERE id = $3",
        &[&held, &node, &key],
    )
    .await?;
    append(tx, &tenant, node, &[held_record(id, now, by, held)]).await?;
    if held {
        return Ok(HoldOutcome::Done(Vec::new()));
    }
    exec(
        tx,
        "UPDATE recipients SET next_attempt = $1 WHERE message_id = $2 AND status = 0",
        &[&now, &key],
    )
    .await?;
    due_jobs(&**tx, node, Some(id)).await.map(HoldOutcome::Done)
}

async fn insert_message(
    tx: &PoolTx<'_>,
    node: &str,
    m: &NewMessage,
    sealed: &Sealed,
) -> Result<(), SpoolError> {
    let e = &m.envelope;
    let id = m.id.0 as i64;
    let ret = e.ret.map(|r| match r {
        Ret::Full => "full",
        Ret::Headers => "hdrs",
    });
    exec(
        tx,
        "INSERT INTO messages (id, tenant, sender, env_id, ret, smtputf8, body_8bit,
         received_at, expires_at, client, size, body, tls_request, content, node, owner)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15)",
        &[
            &id,
            &e.tenant.0,
            &sealed.sender,
            &sealed.env_id,
            &ret,
            &e.smtputf8,
            &e.body_8bit,
            &m.received_at,
            &m.expires_at,
            &sealed.client,
            &(m.body.len() as i64),
            &sealed.body,
            &e.tls_request.name(),
            &e.content.name(),
            &node,
        ],
    )
    .await?;
    // All recipients in one statement (one round trip).
    let n = e.recipients.len();
    let idx: Vec<i32> = (0..n as i32).collect();
    let address: Vec<&[u8]> = sealed.recipients.iter().map(|r| r.0.as_slice()).collect();
    let orcpt: Vec<Option<&[u8]>> = sealed.recipients.iter().map(|r| r.1.as_deref()).collect();
    let domain: Vec<&str> = e.recipients.iter().map(|r| r.domain.as_str()).collect();
    let notify: Vec<i32> = e
        .recipients
        .iter()
        .map(|r| r.notify.to_bits() as i32)
        .collect();
    let class: Vec<&str> = e.recipients.iter().map(|r| r.class.name()).collect();
    exec(
        tx,
        "INSERT INTO recipients (message_id, idx, address, domain, orcpt, notify, status,
                                 next_attempt, class)
         SELECT $1, u.idx, u.address, u.domain, u.orcpt, u.notify, 0, $2, u.class
         FROM UNNEST($3::integer[], $4::bytea[], $5::text[], $6::bytea[], $7::integer[],
                     $8::text[]) AS u(idx, address, domain, orcpt, notify, class)",
        &[
            &id,
            &m.received_at,
            &idx,
            &address,
            &domain,
            &orcpt,
            &notify,
            &class,
        ],
    )
    .await?;
    append(tx, &e.tenant.0, node, &m.events).await.map(|_| ())
}

/// Many new messages in one statement per table, and their log records
/// in one append per tenant (in the order given).
async fn insert_messages(
    tx: &PoolTx<'_>,
    node: &str,
    items: &[(usize, &NewMessage, &Sealed)],
) -> Result<(), SpoolError> {
    if items.is_empty() {
        return Ok(());
    }
    let n = items.len();
    let mut id = Vec::with_capacity(n);
    let mut tenant = Vec::with_capacity(n);
    let mut sender = Vec::with_capacity(n);
    let mut env_id = Vec::with_capacity(n);
    let mut ret = Vec::with_capacity(n);
    let mut smtputf8 = Vec::with_capacity(n);
    let mut body_8bit = Vec::with_capacity(n);
    let mut received_at = Vec::with_capacity(n);
    let mut expires_at = Vec::with_capacity(n);
    let mut client = Vec::with_capacity(n);
    let mut size = Vec::with_capacity(n);
    let mut body = Vec::with_capacity(n);
    let mut tls_request = Vec::with_capacity(n);
    let mut content = Vec::with_capacity(n);
    let (mut r_id, mut r_idx, mut r_address, mut r_domain) = (vec![], vec![], vec![], vec![]);
    let (mut r_orcpt, mut r_notify, mut r_next, mut r_class) = (vec![], vec![], vec![], vec![]);
    for (_, m, sealed) in items {
        let e = &m.envelope;
        let key = m.id.0 as i64;
        id.push(key);
        tenant.push(e.tenant.0.as_str());
        sender.push(sealed.sender.as_slice());
        env_id.push(sealed.env_id.as_deref());
        ret.push(e.ret.map(|r| match r {
            Ret::Full => "full",
            Ret::Headers => "hdrs",
        }));
        smtputf8.push(e.smtputf8);
        body_8bit.push(e.body_8bit);
        received_at.push(m.received_at);
        expires_at.push(m.expires_at);
        client.push(sealed.client.as_slice());
        size.push(m.body.len() as i64);
        body.push(sealed.body.as_slice());
        tls_request.push(e.tls_request.name());
        content.push(e.content.name());
        for (i, (r, (address, orcpt))) in e.recipients.iter().zip(&sealed.recipients).enumerate() {
            r_id.push(key);
            r_idx.push(i as i32);
            r_address.push(address.as_slice());
            r_domain.push(r.domain.as_str());
            r_orcpt.push(orcpt.as_deref());
            r_notify.push(r.notify.to_bits() as i32);
            r_next.push(m.received_at);
            r_class.push(r.class.name());
        }
    }
    // Prepared first, so that the two are sent in order without waiting
    // for each other: the recipients reference the messages.
    let messages = tx
        .prepare_cached(
            "INSERT INTO messages (id, tenant, sender, env_id, ret, smtputf8, body_8bit,
             received_at, expires_at, client, size, body, tls_request, content, node, owner)
         SELECT u.*, $15, $15
         FROM UNNEST($1::bigint[], $2::text[], $3::bytea[], $4::bytea[], $5::text[],
                     $6::boolean[], $7::boolean[], $8::bigint[], $9::bigint[], $10::bytea[],
                     $11::bigint[], $12::bytea[], $13::text[], $14::text[]) AS u",
        )
        .await?;
    let recipients = tx
        .prepare_cached(
            "INSERT INTO recipients (message_id, idx, address, domain, orcpt, notify, status,
                                     next_attempt, class)
             SELECT u.id, u.idx, u.address, u.domain, u.orcpt, u.notify, 0, u.next, u.class
             FROM UNNEST($1::bigint[], $2::integer[], $3::bytea[], $4::text[], $5::bytea[],
                         $6::integer[], $7::bigint[], $8::text[])
                  AS u(id, idx, address, domain, orcpt, notify, next, class)",
        )
        .await?;
    try_join(
        tx.execute(
            &messages,
            &[
                &id,
                &tenant,
                &sender,
                &env_id,
                &ret,
                &smtputf8,
                &body_8bit,
                &received_at,
                &expires_at,
                &client,
                &size,
                &body,
                &tls_request,
                &content,
                &node,
            ],
        ),
        tx.execute(
            &recipients,
            &[
                &r_id, &r_idx, &r_address, &r_domain, &r_orcpt, &r_notify, &r_next, &r_class,
            ],
        ),
    )
    .await?;
    Ok(())
}

/// Many attempts' outcomes at once: every recipient's new state in one
/// statement, their bounces, and the messages they finished, in two
/// round trips. What [`record`] does for one, but for the log: the
/// caller appends the attempts' records, and those of the bounces stored
/// (each result says whether its bounce was).
async fn record_many(
    tx: &PoolTx<'_>,
    cipher: &Cipher,
    node: &str,
    records: &[(usize, &AttemptRecord)],
) -> Result<Vec<(usize, RecordResult, bool)>, SpoolError> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let mut ids: Vec<i64> = records.iter().map(|(_, a)| a.id.0 as i64).collect();
    ids.sort_unstable();
    ids.dedup();
    let (mut id, mut idx, mut status, mut reply, mut next) =
        (vec![], vec![], vec![], vec![], vec![]);
    for (_, a) in records {
        let key = a.id.0 as i64;
        for (i, outcome) in &a.outcomes {
            let (s, text, n) = match outcome {
                RecipientOutcome::Delivered { reply } => (DELIVERED, reply, a.now),
                RecipientOutcome::Failed { reply } => (FAILED, reply, a.now),
                RecipientOutcome::Deferred {
                    reply,
                    next_attempt,
                } => (PENDING, reply, *next_attempt),
            };
            id.push(key);
            idx.push(*i as i32);
            status.push(s as i16);
            reply.push(cipher.seal_text(Field::LastReply, Row(key, *i as i64), text)?);
            next.push(n);
        }
    }
    // Sent together, run in this order: the messages still queued are
    // locked (an operator's delete on another node waits, or is waited
    // for), their recipients updated, and those left pending read back. A
    // message deleted or finished has no pending recipient to update.
    let live = tx
        .prepare_cached(
            "SELECT id FROM messages WHERE id = ANY($1) AND purge_at IS NULL ORDER BY id FOR UPDATE",
        )
        .await?;
    let update = tx
        .prepare_cached(
            "UPDATE recipients r SET status = u.status, last_reply = u.reply,
                    attempts = r.attempts + 1, next_attempt = u.next
             FROM UNNEST($1::bigint[], $2::integer[], $3::smallint[], $4::bytea[], $5::bigint[])
                  AS u(id, idx, status, reply, next)
             WHERE r.message_id = u.id AND r.idx = u.idx AND r.status = 0",
        )
        .await?;
    let pending = tx
        .prepare_cached(
            "SELECT DISTINCT message_id FROM recipients WHERE message_id = ANY($1) AND status = 0",
        )
        .await?;
    let (live, _, pending) = try_join3(
        tx.query(&live, &[&ids]),
        tx.execute(&update, &[&id, &idx, &status, &reply, &next]),
        tx.query(&pending, &[&ids]),
    )
    .await?;
    let live: std::collections::HashSet<i64> = live.iter().map(|r| r.get(0)).collect();
    let pending: std::collections::HashSet<i64> = pending.iter().map(|r| r.get(0)).collect();
    let mut dsns = Vec::new();
    for (i, a) in records {
        if let Some(dsn) = a.dsn.as_ref().filter(|_| live.contains(&(a.id.0 as i64))) {
            dsns.push((*i, dsn, seal_message(cipher, dsn)?));
        }
    }
    // A finished message: deleted now, or kept until its purge time (the
    // last record of it in the batch says which).
    let mut finish: std::collections::HashMap<i64, i64> = Default::default();
    for (_, a) in records {
        let key = a.id.0 as i64;
        if live.contains(&key) && !pending.contains(&key) {
            finish.insert(key, if a.purge_at <= a.now { 0 } else { a.purge_at });
        }
    }
    let gone_now: Vec<i64> = finish
        .iter()
        .filter(|(_, p)| **p == 0)
        .map(|(k, _)| *k)
        .collect();
    let (held, until): (Vec<i64>, Vec<i64>) = finish
        .iter()
        .filter(|(_, p)| **p != 0)
        .map(|(k, p)| (*k, *p))
        .unzip();
    let items: Vec<(usize, &NewMessage, &Sealed)> =
        dsns.iter().map(|(i, m, sealed)| (*i, *m, sealed)).collect();
    try_join3(
        insert_messages(tx, node, &items),
        async {
            if !gone_now.is_empty() {
                exec(tx, "DELETE FROM messages WHERE id = ANY($1)", &[&gone_now]).await?;
            }
            Ok::<_, SpoolError>(())
        },
        async {
            if !held.is_empty() {
                exec(
                    tx,
                    "UPDATE messages m SET purge_at = u.purge_at
                     FROM UNNEST($1::bigint[], $2::bigint[]) AS u(id, purge_at) WHERE m.id = u.id",
                    &[&held, &until],
                )
                .await?;
            }
            Ok(())
        },
    )
    .await?;
    let stored: std::collections::HashSet<usize> = dsns.iter().map(|(i, _, _)| *i).collect();
    Ok(records
        .iter()
        .map(|(i, a)| {
            let key = a.id.0 as i64;
            let gone = !live.contains(&key);
            (
                *i,
                RecordResult {
                    finished: gone || !pending.contains(&key),
                    gone,
                },
                stored.contains(i),
            )
        })
        .collect())
}

async fn record(
    tx: &PoolTx<'_>,
    cipher: &Cipher,
    node: &str,
    a: &AttemptRecord,
) -> Result<RecordResult, SpoolError> {
    let id = a.id.0 as i64;
    // Logged even when the message was deleted meanwhile: the attempt happened.
    append(tx, &a.tenant.0, node, &a.events).await?;
    let exists = opt(
        tx,
        "SELECT 1 FROM messages WHERE id = $1 AND purge_at IS NULL FOR UPDATE",
        &[&id],
    )
    .await?
    .is_some();
    if !exists {
        return Ok(RecordResult {
            finished: true,
            gone: true,
        });
    }
    let mut idx = Vec::with_capacity(a.outcomes.len());
    let mut status = Vec::with_capacity(a.outcomes.len());
    let mut reply = Vec::with_capacity(a.outcomes.len());
    let mut next = Vec::with_capacity(a.outcomes.len());
    for (i, outcome) in &a.outcomes {
        let (s, text, n) = match outcome {
            RecipientOutcome::Delivered { reply } => (DELIVERED, reply, a.now),
            RecipientOutcome::Failed { reply } => (FAILED, reply, a.now),
            RecipientOutcome::Deferred {
                reply,
                next_attempt,
            } => (PENDING, reply, *next_attempt),
        };
        idx.push(*i as i32);
        status.push(s as i16);
        reply.push(cipher.seal_text(Field::LastReply, Row(id, *i as i64), text)?);
        next.push(n);
    }
    exec(
        tx,
        "UPDATE recipients r SET status = u.status, last_reply = u.reply,
                attempts = r.attempts + 1, next_attempt = u.next
         FROM UNNEST($2::integer[], $3::smallint[], $4::bytea[], $5::bigint[])
              AS u(idx, status, reply, next)
         WHERE r.message_id = $1 AND r.idx = u.idx AND r.status = 0",
        &[&id, &idx, &status, &reply, &next],
    )
    .await?;
    if let Some(dsn) = &a.dsn {
        insert_message(tx, node, dsn, &seal_message(cipher, dsn)?).await?;
    }
    let pending = opt(
        tx,
        "SELECT 1 FROM recipients WHERE message_id = $1 AND status = 0 LIMIT 1",
        &[&id],
    )
    .await?
    .is_some();
    if !pending {
        if a.purge_at <= a.now {
            exec(tx, "DELETE FROM messages WHERE id = $1", &[&id]).await?;
        } else {
            exec(
                tx,
                "UPDATE messages SET purge_at = $1 WHERE id = $2",
                &[&a.purge_at, &id],
            )
            .await?;
        }
    }
    Ok(RecordResult {
        finished: !pending,
        gone: false,
    })
}

/// A log record from a row of seq, at, kind, queue_id, data, prev, hash.
fn stored(r: &tokio_postgres::Row) -> crate::report::log::Stored {
    crate::report::log::Stored {
        seq: r.get(0),
        at: r.get(1),
        kind: r.get(2),
        queue_id: r.get(3),
        data: r.get(4),
        prev: r.get(5),
        hash: r.get(6),
    }
}

/// Appends `events` to the tenant's chain. The head row's lock, held to
/// the commit, makes appends from several nodes take turns: each links to
/// the head the previous one left. Returns the new head.
async fn append(
    tx: &PoolTx<'_>,
    tenant: &str,
    node: &str,
    events: &[crate::report::Event],
) -> Result<Option<(i64, Vec<u8>)>, SpoolError> {
    if events.is_empty() {
        return Ok(None);
    }
    // One statement creates the head if needed and locks it to the commit.
    let head = one(
        tx,
        "INSERT INTO txlog_heads (tenant, seq, hash) VALUES ($1, 0, $2)
         ON CONFLICT (tenant) DO UPDATE SET tenant = EXCLUDED.tenant
         RETURNING seq, hash",
        &[&tenant, &vec![0u8; 32]],
    )
    .await?;
    let (seq, hash): (i64, Vec<u8>) = (head.get(0), head.get(1));
    match link_after(tx, tenant, node, (seq, &hash), events).await? {
        Linking::Moved => Err(SpoolError::Corrupt(format!(
            "the log head of tenant {tenant} moved while this transaction held its lock"
        ))),
        Linking::Linked(head) => Ok(head),
    }
}

/// What [`link_after`] did.
enum Linking {
    /// The records are written; the new head (none: no records).
    Linked(Option<(i64, Vec<u8>)>),
    /// The head was not the one given: nothing is written.
    Moved,
}

/// Writes `events` linked after `head`, and moves the head past them, in
/// one statement, if the head is still `head`. Under READ COMMITTED, an
/// UPDATE that waited for another transaction's lock on the head checks
/// its condition again on the head that one committed: a moved head
/// updates nothing, and then no record is written.
async fn link_after(
    tx: &PoolTx<'_>,
    tenant: &str,
    node: &str,
    head: (i64, &[u8]),
    events: &[crate::report::Event],
) -> Result<Linking, SpoolError> {
    let linked = crate::report::log::link(Some((head.0, head.1.to_vec())), tenant, events);
    let Some(last) = linked.last() else {
        return Ok(Linking::Linked(None));
    };
    let c = Linked::of(&linked);
    let written = exec(
        tx,
        "WITH head AS (
             UPDATE txlog_heads SET seq = $10, hash = $11
             WHERE tenant = $1 AND seq = $12 AND hash = $13 RETURNING 1)
         INSERT INTO txlog (tenant, seq, at, kind, queue_id, data, prev, hash, node)
         SELECT $1, u.seq, u.at, u.kind, u.queue_id, u.data, u.prev, u.hash, $2
         FROM UNNEST($3::bigint[], $4::bigint[], $5::text[], $6::text[], $7::text[],
                     $8::bytea[], $9::bytea[])
              AS u(seq, at, kind, queue_id, data, prev, hash)
         WHERE EXISTS (SELECT 1 FROM head)",
        &[
            &tenant,
            &node,
            &c.seq,
            &c.at,
            &c.kind,
            &c.queue_id,
            &c.data,
            &c.prev,
            &c.hash,
            &last.seq,
            &last.hash.as_slice(),
            &head.0,
            &head.1,
        ],
    )
    .await?;
    Ok(if written as usize == linked.len() {
        Linking::Linked(Some((last.seq, last.hash.to_vec())))
    } else {
        Linking::Moved
    })
}

/// [`append`] in one statement when the head is still the one `heads`
/// knows (no other node or command appended since). Otherwise, or the
/// first time, the head is locked and read as always; after a wrong
/// guess, the next appends lock at once, since other nodes are appending
/// too.
async fn append_known(
    tx: &PoolTx<'_>,
    heads: &mut Heads,
    tenant: &str,
    node: &str,
    events: &[crate::report::Event],
) -> Result<(), SpoolError> {
    let mut skip = 0;
    match heads.get_mut(tenant) {
        Some(known) if known.skip > 0 => {
            known.skip -= 1;
            skip = known.skip;
        }
        Some(known) => {
            match link_after(tx, tenant, node, (known.seq, &known.hash), events).await? {
                Linking::Linked(Some((seq, hash))) => {
                    (known.seq, known.hash) = (seq, hash);
                    return Ok(());
                }
                Linking::Linked(None) => return Ok(()),
                Linking::Moved => skip = SKIP_AFTER_MISS,
            }
        }
        None => {}
    }
    match append(tx, tenant, node, events).await? {
        Some((seq, hash)) => heads.insert(tenant.to_string(), Known { seq, hash, skip }),
        None => heads.remove(tenant),
    };
    Ok(())
}

/// Linked log records as the columns of an `UNNEST`.
struct Linked<'a> {
    seq: Vec<i64>,
    at: Vec<i64>,
    kind: Vec<&'a str>,
    queue_id: Vec<&'a str>,
    data: Vec<&'a str>,
    prev: Vec<&'a [u8]>,
    hash: Vec<&'a [u8]>,
}

impl<'a> Linked<'a> {
    fn of(linked: &'a [crate::report::log::Linked]) -> Linked<'a> {
        Linked {
            seq: linked.iter().map(|r| r.seq).collect(),
            at: linked.iter().map(|r| r.at).collect(),
            kind: linked.iter().map(|r| r.kind).collect(),
            queue_id: linked.iter().map(|r| r.queue_id.as_str()).collect(),
            data: linked.iter().map(|r| r.data.as_str()).collect(),
            prev: linked.iter().map(|r| r.prev.as_slice()).collect(),
            hash: linked.iter().map(|r| r.hash.as_slice()).collect(),
        }
    }
}

/// Every (message, domain) of `node`'s messages with pending recipients,
/// and when it is due; of one message when `only` is given.
async fn due_jobs(
    client: &impl tokio_postgres::GenericClient,
    node: &str,
    only: Option<QueueId>,
) -> Result<Vec<DueJob>, SpoolError> {
    let rows = match only {
        Some(id) => {
            client
                .query(
                    "SELECT r.message_id, r.domain, MIN(r.next_attempt)
                     FROM recipients r JOIN messages m ON m.id = r.message_id
                     WHERE r.message_id = $1 AND r.status = 0 AND NOT m.held
                     GROUP BY r.message_id, r.domain",
                    &[&(id.0 as i64)],
                )
                .await?
        }
        None => {
            client
                .query(
                    "SELECT r.message_id, r.domain, MIN(r.next_attempt)
                     FROM messages m JOIN recipients r ON r.message_id = m.id
                     WHERE m.owner = $1 AND m.purge_at IS NULL AND r.status = 0 AND NOT m.held
                     GROUP BY r.message_id, r.domain",
                    &[&node],
                )
                .await?
        }
    };
    Ok(rows.iter().map(due_job).collect())
}

/// Statements of the hot paths are prepared once per connection (the
/// pool keeps them): otherwise each would cost a parse, a plan and a
/// round trip more.
async fn exec(
    tx: &PoolTx<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, SpoolError> {
    let statement = tx.prepare_cached(sql).await?;
    Ok(tx.execute(&statement, params).await?)
}

async fn one(
    tx: &PoolTx<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<PgRow, SpoolError> {
    let statement = tx.prepare_cached(sql).await?;
    Ok(tx.query_one(&statement, params).await?)
}

async fn opt(
    tx: &PoolTx<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<PgRow>, SpoolError> {
    let statement = tx.prepare_cached(sql).await?;
    Ok(tx.query_opt(&statement, params).await?)
}

async fn rows(
    tx: &PoolTx<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<PgRow>, SpoolError> {
    let statement = tx.prepare_cached(sql).await?;
    Ok(tx.query(&statement, params).await?)
}

/// A row of spool_keys (id, kek, wrapped, created_at).
fn stored_key(r: &PgRow) -> StoredKey {
    StoredKey {
        id: r.get::<_, i32>(0) as u32,
        kek: r.get(1),
        wrapped: r.get(2),
        created_at: r.get(3),
    }
}

/// A row of (message_id, domain, due) as a job.
fn due_job(r: &PgRow) -> DueJob {
    DueJob {
        id: QueueId(r.get::<_, i64>(0) as u64),
        domain: r.get(1),
        due: r.get(2),
    }
}

fn envelope_of(row: &PgRow, cipher: &Cipher, id: i64) -> Result<(Envelope, i64, i64), SpoolError> {
    let at = Row(id, 0);
    let ret: Option<&str> = row.get("ret");
    Ok((
        Envelope {
            tenant: TenantId(row.get("tenant")),
            sender: cipher.open_text(Field::Sender, at, row.get("sender"))?,
            env_id: open_opt(cipher, Field::EnvId, at, row.get("env_id"))?,
            ret: match ret {
                Some("full") => Some(Ret::Full),
                Some("hdrs") => Some(Ret::Headers),
                _ => None,
            },
            smtputf8: row.get("smtputf8"),
            body_8bit: row.get("body_8bit"),
            tls_request: TlsRequest::from_name(row.get("tls_request")),
            content: Content::from_name(row.get("content")),
            recipients: Vec::new(),
        },
        row.get("received_at"),
        row.get("expires_at"),
    ))
}

fn open_opt(
    cipher: &Cipher,
    field: Field,
    at: Row,
    sealed: Option<&[u8]>,
) -> Result<Option<String>, SpoolError> {
    Ok(match sealed {
        Some(v) => Some(cipher.open_text(field, at, v)?),
        None => None,
    })
}

/// How this node reaches PostgreSQL. In clear unless the URL says
/// `sslmode=require`; then over TLS (TLS 1.2 or 1.3 with the suites the
/// BSI profile allows), the server's certificate checked against `ca`
/// (PEM) or, without it, the system's trust store, and its name against
/// the URL's host. `sslmode=prefer`, which would go on in clear when TLS
/// is not offered, is refused when asked for; libpq makes it the default,
/// here the default is what it always was: no TLS.
fn connector(
    config: &mut tokio_postgres::Config,
    url: &str,
    ca: Option<&Path>,
) -> Result<MakeRustlsConnect, SpoolError> {
    let refuse = |why: String| SpoolError::Unavailable(format!("storage TLS: {why}"));
    match config.get_ssl_mode() {
        SslMode::Require => {}
        // Prefer is also what the URL parser says when sslmode is absent.
        SslMode::Prefer if url.contains("sslmode") => {
            return Err(refuse(
                "sslmode=prefer would send everything in clear when the server offers no TLS: say sslmode=require (TLS, the certificate checked) or leave sslmode out (no TLS)".into(),
            ));
        }
        _ => {
            if let Some(ca) = ca {
                return Err(refuse(format!(
                    "[storage] ca is {}, but the storage url does not say sslmode=require",
                    ca.display()
                )));
            }
            config.ssl_mode(SslMode::Disable);
        }
    }
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| refuse(format!("[storage] ca {}: {e}", path.display())))?;
            let certs = rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| refuse(format!("[storage] ca {}: {e}", path.display())))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(refuse(format!(
                    "[storage] ca {} holds no certificate",
                    path.display()
                )));
            }
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(crate::qualify::bsi::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| refuse(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(tls))
}

/// With the causes: "db error" alone would hide the server's reason (a
/// refusal by pg_hba.conf, a certificate that is not trusted).
fn unavailable(e: deadpool_postgres::PoolError) -> SpoolError {
    SpoolError::Unavailable(match e {
        deadpool_postgres::PoolError::Backend(e) => crate::util::error_chain(&e),
        e => crate::util::error_chain(&e),
    })
}

/// One node among those sharing the database (`sealgate cluster status`).
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub slot: u8,
    pub started_at: i64,
    /// Its last heartbeat; none before its first.
    pub heartbeat: Option<i64>,
    /// When the others may take its messages, unless it beats again.
    pub lease_until: i64,
    pub alive: bool,
    /// Messages with pending recipients that it owns.
    pub messages: u64,
}

/// The heartbeat: one row renewed every few seconds on a connection of its
/// own, which also holds the node lock (a session advisory lock on the
/// node's slot), so that a second live process with this node's name is
/// refused, and the lock goes the moment this process or its connection
/// dies.
struct Beat {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    node: String,
    slot: u8,
    lease: Duration,
    health: Arc<Health>,
    /// Follows a key rotation run by another process (spool rekey).
    cipher: Arc<Cipher>,
}

impl Beat {
    /// A connection holding the node lock.
    async fn connect(&self) -> Result<tokio_postgres::Client, SpoolError> {
        let (client, connection) = self.config.connect(self.tls.clone()).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let locked: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock($1, $2)",
                &[&NODE_LOCK, &i32::from(self.slot)],
            )
            .await?
            .get(0);
        if !locked {
            return Err(SpoolError::NodeInUse(self.node.clone()));
        }
        Ok(client)
    }

    /// At start: a process of this name that just stopped may take a
    /// moment to let go of the lock.
    async fn first_connect(&self) -> Result<tokio_postgres::Client, SpoolError> {
        let mut tries = 0;
        loop {
            match self.connect().await {
                Err(SpoolError::NodeInUse(_)) if tries < 6 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                other => return other,
            }
        }
    }

    async fn once(&self, lock: &mut Option<tokio_postgres::Client>) -> Result<i64, SpoolError> {
        let client = match lock.take() {
            Some(c) if !c.is_closed() => c,
            _ => self.connect().await?,
        };
        let report = "UPDATE nodes SET heartbeat = $2, keys_known = $3, key_current = $4
             WHERE name = $1
             RETURNING flush, (SELECT current FROM spool_key_state),
                       (SELECT MAX(id) FROM spool_keys), (SELECT COUNT(DISTINCT id) FROM spool_keys)";
        let row = client
            .query_one(
                report,
                &[
                    &self.node,
                    &crate::util::now(),
                    &(self.cipher.newest_key() as i32),
                    &(self.cipher.current_key() as i32),
                ],
            )
            .await?;
        let (current, newest, count): (Option<i32>, Option<i32>, i64) =
            (row.get(1), row.get(2), row.get(3));
        // Another process rotated the data key (or is rotating it).
        let stale = current.is_some_and(|c| c as u32 != self.cipher.current_key())
            || newest.is_some_and(|n| n as u32 > self.cipher.newest_key())
            || count as usize != self.cipher.key_count();
        if stale && let Some(current) = current {
            let stored: Vec<StoredKey> = client
                .query("SELECT id, kek, wrapped, created_at FROM spool_keys", &[])
                .await?
                .iter()
                .map(stored_key)
                .collect();
            if self.cipher.follow(&stored, current as u32)? {
                tracing::info!(
                    "spool data key {} is now in use (a rotation on another process)",
                    self.cipher.current_key()
                );
                client
                    .execute(
                        "UPDATE nodes SET keys_known = $2, key_current = $3 WHERE name = $1",
                        &[
                            &self.node,
                            &(self.cipher.newest_key() as i32),
                            &(self.cipher.current_key() as i32),
                        ],
                    )
                    .await?;
            }
        }
        *lock = Some(client);
        Ok(row.get(0))
    }

    async fn run(self, first: tokio_postgres::Client, mut stop: oneshot::Receiver<()>) {
        let every = (self.lease / 3).min(MAX_BEAT);
        let mut lock = Some(first);
        loop {
            let beat = match tokio::time::timeout(every, self.once(&mut lock)).await {
                Ok(r) => r,
                Err(_) => {
                    lock = None;
                    Err(SpoolError::Unavailable(format!(
                        "no answer within {} s",
                        every.as_secs()
                    )))
                }
            };
            match beat {
                Ok(flush) => {
                    self.health.flushes.store(flush as u64, Ordering::Relaxed);
                    if !self.health.up.swap(true, Ordering::Relaxed) {
                        self.health
                            .up_since
                            .store(crate::util::now(), Ordering::Relaxed);
                        tracing::warn!("storage database reachable again: accepting mail");
                    }
                }
                Err(e) => {
                    if self.health.up.swap(false, Ordering::Relaxed) {
                        tracing::error!(
                            "storage database unreachable ({e}): new mail is refused with 451 4.3.0 until it is back"
                        );
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = &mut stop => return,
            }
        }
    }
}
