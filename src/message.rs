//! The message model every part shares: a queued message's id, its tenant,
//! its envelope and recipients (with their DSN parameters and class), and
//! what a delivery attempt loads. Parsed once at the edge (inbound), stored
//! by the spool, read by the queue, outbound, policy and report.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::policy::RiskClass;

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

impl<'de> Deserialize<'de> for QueueId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
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

    /// As stored by the spool.
    pub fn to_bits(self) -> i64 {
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

    pub fn from_bits(bits: i64) -> Self {
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
