//! The evidence auditors read: a tamper-evident transaction log of every
//! event that matters (received, classified, each attempt with its verdict
//! and decisions, deleted), and its exports.
//!
//! Records are metadata only, never content. They are appended in the same
//! database transaction as the spool change they describe (so the log and
//! the queue cannot disagree after a crash) and chained per tenant: each
//! record carries the SHA-256 of its predecessor and of its own canonical
//! encoding, so an edited, deleted or inserted record breaks the chain at
//! that point ([`log::verify`]). [`export`] writes JSON lines and CSV,
//! [`html`] the report for people. docs/reports.md says how to read them.

pub mod export;
pub mod html;
pub mod log;
pub mod tlsrpt;

use serde::Serialize;

use crate::spool::QueueId;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A message was accepted: client, TLS of the inbound session, size, envelope.
    Received,
    /// Its class per recipient and the rules that gave it.
    Classified,
    /// A delivery attempt for one domain: verdict, decision and outcome per recipient.
    Attempt,
    /// An operator removed it from the queue.
    Deleted,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Received => "received",
            EventKind::Classified => "classified",
            EventKind::Attempt => "attempt",
            EventKind::Deleted => "deleted",
        }
    }
}

/// One event to append; the tenant and the chain are added by the log.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: EventKind,
    pub queue_id: QueueId,
    /// Unix seconds.
    pub at: i64,
    /// The event's facts; serialized once, as stored and hashed.
    pub data: serde_json::Value,
}
