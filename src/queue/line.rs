//! The one log line per recipient per delivery attempt, for operators who
//! grep their logs the way they grep Postfix's `status=sent` lines.
//!
//! The line is a tracing event with target `delivery` and a fixed set of
//! fields. Every text field is passed as a string value, so the text
//! formatter writes it quoted with Rust's escaping (a CR, LF or quote from
//! a peer's reply can never break the line or forge a field) and the JSON
//! formatter (`--log-format json`) writes it as a JSON string. Field names
//! and status words are a stable interface: docs/operations.md lists them.

use crate::message::{PendingRecipient, TenantId};
use crate::outbound::Detail;
use crate::policy::Decision;
use crate::qualify::Level;

/// How an attempt ended for one recipient: the `status` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The next hop took the message as it is.
    Sent,
    /// The next hop took the message inside a password envelope.
    Sealed,
    /// Tried again later.
    Deferred,
    /// Refused for good; a DSN goes to the sender if asked for.
    Bounced,
    /// Deferred past the queue lifetime: bounced.
    Expired,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Sent => "sent",
            Status::Sealed => "sealed",
            Status::Deferred => "deferred",
            Status::Bounced => "bounced",
            Status::Expired => "expired",
        }
    }
}

/// What one line says.
pub struct AttemptLine<'a> {
    pub id: &'a str,
    pub tenant: &'a TenantId,
    pub sender: &'a str,
    pub recipient: Option<&'a PendingRecipient>,
    pub level: Option<Level>,
    pub decision: Option<&'a Decision>,
    /// Seconds since the message was received.
    pub delay: i64,
    pub status: Status,
    pub detail: &'a Detail,
}

impl AttemptLine<'_> {
    /// Writes the line at level INFO (a bounce or expiry at WARN: someone's
    /// mail did not arrive).
    pub fn emit(&self) {
        let d = self.detail;
        // Not `level`: in JSON that is the log level's key.
        let reached = self.level.map_or("none", Level::name);
        let class = self.decision.map(|d| d.class.to_string());
        let required = self.decision.map(|d| d.required.to_string());
        let action = self.decision.map_or("none", |d| d.action.name());
        let to = self.recipient.map_or("", |r| r.recipient.address.as_str());
        let code = format!("{}.{}.{}", d.status[0], d.status[1], d.status[2]);
        let relay = d.remote.as_deref().unwrap_or("none");
        // One macro call per level: tracing fixes the level at the call site.
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    target: "delivery",
                    id = self.id,
                    tenant = self.tenant.0.as_str(),
                    from = self.sender,
                    to,
                    relay,
                    reached,
                    class = class.as_deref().unwrap_or("none"),
                    required = required.as_deref().unwrap_or("none"),
                    action,
                    delay = self.delay,
                    code = code.as_str(),
                    status = self.status.name(),
                    reply = d.text.as_str(),
                )
            };
        }
        match self.status {
            Status::Bounced | Status::Expired => line!(warn),
            _ => line!(info),
        }
    }
}
