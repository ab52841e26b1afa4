//! Durable storage of accepted messages and their queue state.
//!
//! Nothing is acknowledged to a client before [`Spool::store`] returns: the
//! body and the envelope are on disk (synced) by then. The queue keeps its
//! schedule in memory but the spool is the truth: every recipient's state,
//! attempt count and next attempt time live here, so a restart recovers the
//! whole queue. Storage sits behind the narrow [`Spool`] trait so that a
//! shared PostgreSQL can replace the embedded SQLite for multi-node setups.

mod sqlite;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;

use serde::Serialize;

use crate::policy::RiskClass;
use crate::report::Event;

pub use sqlite::SqliteSpool;

/// A boxed future, so that [`Spool`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Identifies a queued message; shown as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(pub u64);

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

impl FromStr for QueueId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        u64::from_str_radix(s.trim(), 16)
            .map(QueueId)
            .map_err(|_| format!("`{s}` is not a queue id (16 hex digits)"))
    }
}

impl Serialize for QueueId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The tenant a message belongs to (DESIGN.md "Tenants").
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct TenantId(pub String);

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// DSN NOTIFY (RFC 3461 §4.1), as given on RCPT TO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Notify {
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
    /// NOTIFY=NEVER.
    pub never: bool,
    /// The client gave NOTIFY at all; without it, failures are reported (RFC 3461 §4.1).
    pub explicit: bool,
}

impl Notify {
    /// Whether a failure of this recipient is reported to the sender.
    pub fn on_failure(&self) -> bool {
        !self.never && (self.failure || !self.explicit)
    }

    fn to_bits(self) -> i64 {
        [
            self.success,
            self.failure,
            self.delay,
            self.never,
            self.explicit,
        ]
        .iter()
        .enumerate()
        .map(|(i, b)| (*b as i64) << i)
        .sum()
    }

    fn from_bits(bits: i64) -> Self {
        let bit = |i: i64| bits & (1 << i) != 0;
        Notify {
            success: bit(0),
            failure: bit(1),
            delay: bit(2),
            never: bit(3),
            explicit: bit(4),
        }
    }
}

/// DSN RET (RFC 3461 §4.3): what of the message a bounce returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ret {
    Full,
    Headers,
}

/// One envelope recipient with its DSN parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recipient {
    pub address: String,
    /// Lower-cased domain part: the unit of routing and scheduling.
    pub domain: String,
    /// ORCPT (RFC 3461 §4.2), as given: `addr-type;xtext`.
    pub orcpt: Option<String>,
    pub notify: Notify,
    /// The message's risk class for this recipient (set at reception by the policy).
    pub class: RiskClass,
}

impl Recipient {
    pub fn new(address: String, orcpt: Option<String>, notify: Notify) -> Recipient {
        let domain = domain_of(&address).to_lowercase();
        Recipient {
            address,
            domain,
            orcpt,
            notify,
            class: RiskClass::Normal,
        }
    }

    pub fn with_class(self, class: RiskClass) -> Recipient {
        Recipient { class, ..self }
    }
}

/// The domain of an address (after the last `@`), or "" if it has none.
pub fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
}

/// Everything about a message but its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Envelope {
    pub tenant: TenantId,
    /// Reverse path; empty for the null sender `<>`.
    pub sender: String,
    pub env_id: Option<String>,
    pub ret: Option<Ret>,
    /// The client asked for SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// The client declared BODY=8BITMIME (RFC 6152).
    pub body_8bit: bool,
    pub recipients: Vec<Recipient>,
}

/// A message to put into the spool.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: QueueId,
    pub envelope: Envelope,
    /// Unix seconds.
    pub received_at: i64,
    /// Unix seconds after which undelivered recipients bounce.
    pub expires_at: i64,
    /// Who handed it to us (address, HELO, auth), for the operator.
    pub client: String,
    /// The message as it will be sent, our `Received:` header included, CRLF line ends.
    pub body: Vec<u8>,
    /// Transaction-log records written with it (report::log).
    pub events: Vec<Event>,
}

/// A pending recipient as loaded for a delivery attempt.
#[derive(Debug, Clone)]
pub struct PendingRecipient {
    /// Position in the envelope; identifies the recipient within the message.
    pub index: u32,
    pub recipient: Recipient,
    pub attempts: u32,
}

/// What a delivery attempt needs: the message and the recipients of one domain.
#[derive(Debug, Clone)]
pub struct LoadedJob {
    pub id: QueueId,
    pub envelope: Envelope,
    pub received_at: i64,
    pub expires_at: i64,
    pub body: Vec<u8>,
    pub recipients: Vec<PendingRecipient>,
}

/// The result of an attempt for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientOutcome {
    Delivered { reply: String },
    Failed { reply: String },
    Deferred { reply: String, next_attempt: i64 },
}

/// An attempt's results, written in one transaction with the bounce it causes.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub id: QueueId,
    pub outcomes: Vec<(u32, RecipientOutcome)>,
    /// The DSN to queue for the failed recipients, if any.
    pub dsn: Option<NewMessage>,
    pub now: i64,
    /// Content of a finished message is kept until this time (`now` for "at once").
    pub purge_at: i64,
    /// Whose log chain the attempt's records go to.
    pub tenant: TenantId,
    /// Transaction-log records written with it (report::log).
    pub events: Vec<Event>,
}

/// What recording an attempt changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordResult {
    /// No recipient of the message is pending any more.
    pub finished: bool,
    /// The message was gone (deleted by an operator) when the result came in.
    pub gone: bool,
}

/// A recipient's state in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecipientStatus {
    Pending,
    Delivered,
    Failed,
}

/// One line of `sealgate queue list`.
#[derive(Debug, Clone, Serialize)]
pub struct MessageSummary {
    pub id: QueueId,
    pub tenant: TenantId,
    pub sender: String,
    pub size: u64,
    pub received_at: i64,
    pub pending: u32,
    pub recipients: u32,
    pub next_attempt: Option<i64>,
    pub last_reply: Option<String>,
}

/// `sealgate queue show ID`.
#[derive(Debug, Clone, Serialize)]
pub struct MessageDetail {
    pub id: QueueId,
    pub envelope: Envelope,
    pub received_at: i64,
    pub expires_at: i64,
    pub client: String,
    pub size: u64,
    pub recipients: Vec<RecipientState>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecipientState {
    pub address: String,
    pub status: RecipientStatus,
    pub attempts: u32,
    pub next_attempt: i64,
    pub last_reply: Option<String>,
}

/// A scheduling unit: the pending recipients of one message in one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueJob {
    pub id: QueueId,
    pub domain: String,
    /// Unix seconds.
    pub due: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool storage is full: {0}")]
    Full(String),
    #[error("spool database error: {0}")]
    Database(#[from] rusqlite::Error),
    #[error("spool I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("spool writer has stopped")]
    Stopped,
    #[error("spool record is corrupt: {0}")]
    Corrupt(String),
}

/// Durable message storage and queue state.
pub trait Spool: Send + Sync {
    /// A fresh id for a message about to be stored.
    fn next_id(&self) -> QueueId;
    /// Stores a message durably; when this returns `Ok`, the message survives a crash.
    fn store(&self, message: NewMessage) -> BoxFuture<'_, Result<(), SpoolError>>;
    /// Loads a message with its pending recipients in `domain`; `None` if none are pending.
    fn load(&self, id: QueueId, domain: &str) -> Result<Option<LoadedJob>, SpoolError>;
    /// Records an attempt's outcomes, the DSN it causes, and removes a finished message.
    fn record(&self, attempt: AttemptRecord) -> BoxFuture<'_, Result<RecordResult, SpoolError>>;
    /// Every (message, domain) with pending recipients, with its due time: the queue on start.
    fn pending(&self) -> Result<Vec<DueJob>, SpoolError>;
    /// Makes every pending recipient of a message due now; returns its jobs, empty if none.
    fn retry(&self, id: QueueId, now: i64) -> BoxFuture<'_, Result<Vec<DueJob>, SpoolError>>;
    /// Makes every pending recipient due now (`sealgate queue flush`).
    fn retry_all(&self, now: i64) -> BoxFuture<'_, Result<Vec<DueJob>, SpoolError>>;
    /// Removes a message and all its state, with a `deleted` log record;
    /// `false` if there was none.
    fn delete(&self, id: QueueId) -> BoxFuture<'_, Result<bool, SpoolError>>;
    /// Deletes the content of finished messages whose hold time is over.
    fn purge(&self, now: i64) -> BoxFuture<'_, Result<usize, SpoolError>>;
    /// Messages with pending recipients, oldest first.
    fn list(&self) -> Result<Vec<MessageSummary>, SpoolError>;
    /// One message's envelope and recipient states.
    fn show(&self, id: QueueId) -> Result<Option<MessageDetail>, SpoolError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_id_round_trip() {
        let id = QueueId(0x0123_4567_89AB_CDEF);
        assert_eq!(id.to_string(), "0123456789ABCDEF");
        assert_eq!("0123456789abcdef".parse::<QueueId>(), Ok(id));
        assert!("xyz".parse::<QueueId>().is_err());
    }

    #[test]
    fn rfc3461_4_1_notify_default_reports_failures() {
        assert!(Notify::default().on_failure());
        let never = Notify {
            never: true,
            explicit: true,
            ..Notify::default()
        };
        assert!(!never.on_failure());
        let success_only = Notify {
            success: true,
            explicit: true,
            ..Notify::default()
        };
        assert!(!success_only.on_failure());
        for n in [never, success_only, Notify::default()] {
            assert_eq!(Notify::from_bits(n.to_bits()), n);
        }
    }
}
