//! The events of the transaction log as types: the writers build them, the
//! readers (exports, HTML, TLS-RPT, verify) read them back into the same
//! types, so nothing indexes JSON by string keys.
//!
//! Format versions: records written since the verdict became typed carry
//! `"v": 2` in their data; records without it are version 1 and are read
//! through [`upgrade_v1`], which maps the old verdict (one `level`, the
//! observed one, and no refusals) into today's fields. The stored text is
//! never rewritten, so old chains still verify.

use serde::{Deserialize, Serialize};

use crate::message::QueueId;
use crate::policy::{ReasonCode, RiskClass};
use crate::qualify::report::HostReport;
use crate::qualify::{Check, TlsFacts, Verdict};

/// The version written today.
pub const VERSION: u32 = 2;

fn version() -> u32 {
    VERSION
}

/// A message was accepted: client, TLS of the inbound session, size, envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Received {
    #[serde(default = "version")]
    pub v: u32,
    pub client: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFacts>,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    pub sender: String,
    pub recipients: Vec<String>,
    /// For a bounce (DSN): the message it reports on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounce_of: Option<QueueId>,
    /// What the sender asked of the transport (REQUIRETLS, `TLS-Required:
    /// No`) and what sealgate made of it (RFC 8689).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_request: Option<String>,
    /// End-to-end encryption or a signature found in the content (policy::e2e).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// One recipient's class and the rules that gave it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifiedRecipient {
    pub address: String,
    pub class: RiskClass,
    pub by: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classified {
    #[serde(default = "version")]
    pub v: u32,
    pub recipients: Vec<ClassifiedRecipient>,
}

/// What became of one recipient in an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecipientResult {
    Delivered,
    Bounced,
    Expired,
    Deferred,
}

impl RecipientResult {
    pub fn name(self) -> &'static str {
        match self {
            RecipientResult::Delivered => "delivered",
            RecipientResult::Bounced => "bounced",
            RecipientResult::Expired => "expired",
            RecipientResult::Deferred => "deferred",
        }
    }
}

/// One recipient of an attempt: the decision and the result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecipient {
    pub address: String,
    pub class: Option<RiskClass>,
    /// The level (or `sealed`) the decision required.
    pub required: Option<String>,
    /// `deliver`, `seal`, `defer`, `bounce`; none when no decision was made
    /// (the domain could not be routed).
    pub action: Option<String>,
    /// The decision's reason: its machine name and its words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_code: Option<ReasonCode>,
    pub reason: Option<String>,
    /// What protects the content end to end when sealgate encrypted it
    /// (S/MIME to the recipient's certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_to_end: Option<String>,
    pub outcome: RecipientResult,
    /// Enhanced status code, `x.y.z`.
    pub status: String,
    pub remote: Option<String>,
    pub detail: String,
}

/// A delivery attempt for one domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    #[serde(default = "version")]
    pub v: u32,
    pub domain: String,
    /// The verdict of the connection used, or else the best one seen.
    pub verdict: Option<Verdict>,
    /// Domain-level checks (MX lookup, MTA-STS discovery).
    #[serde(default)]
    pub checks: Vec<Check>,
    /// Every host considered, as `sealgate check` reports it.
    #[serde(default)]
    pub hosts: Vec<HostReport>,
    pub recipients: Vec<AttemptRecipient>,
    /// The bounce queued for the failures, if any.
    pub bounce: Option<QueueId>,
}

/// The content left the spool: an operator's delete, or the end of its hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deleted {
    #[serde(default = "version")]
    pub v: u32,
    pub by: String,
    /// Why, as the operator said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// An operator held a message back from delivery, or released it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Held {
    #[serde(default = "version")]
    pub v: u32,
    pub by: String,
    /// `true` for a hold, `false` for its release.
    pub held: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Records of the log itself were removed by retention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pruned {
    #[serde(default = "version")]
    pub v: u32,
    pub from_seq: i64,
    pub through_seq: i64,
    /// Hex SHA-256 of the last record removed.
    pub through_hash: String,
    /// RFC 3339.
    pub older_than: String,
}

/// Someone did something in the web console or through the HTTP API: the
/// auditor sees the admins too. Recorded in the chain of the tenant the
/// action concerned (a login: the account's tenant, or the default one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Console {
    #[serde(default = "version")]
    pub v: u32,
    /// The account name.
    pub account: String,
    pub role: String,
    /// `login`, `login-failed`, `logout`, `retry`, `delete`, `confirm`, `export`.
    pub action: String,
    /// The client's address.
    pub source: String,
    /// What the action was about (a domain, a filter), when not the queue id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The reason given, or what came of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What happened, with its facts.
#[derive(Debug, Clone, PartialEq)]
pub enum EventData {
    Received(Box<Received>),
    Classified(Classified),
    Attempt(Box<Attempt>),
    Deleted(Deleted),
    Held(Held),
    Pruned(Pruned),
    Console(Console),
}

/// A record whose data does not read as its kind says.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("unknown record kind `{0}`")]
    Kind(String),
    #[error("{kind} record: {source}")]
    Data {
        kind: &'static str,
        source: serde_json::Error,
    },
}

impl EventData {
    /// The stored kind.
    pub fn kind(&self) -> &'static str {
        match self {
            EventData::Received(_) => "received",
            EventData::Classified(_) => "classified",
            EventData::Attempt(_) => "attempt",
            EventData::Deleted(_) => "deleted",
            EventData::Held(_) => "held",
            EventData::Pruned(_) => "pruned",
            EventData::Console(_) => "console",
        }
    }

    /// The stored data: the JSON text that is hashed into the chain.
    pub fn to_json(&self) -> String {
        let text = match self {
            EventData::Received(d) => serde_json::to_string(d),
            EventData::Classified(d) => serde_json::to_string(d),
            EventData::Attempt(d) => serde_json::to_string(d),
            EventData::Deleted(d) => serde_json::to_string(d),
            EventData::Held(d) => serde_json::to_string(d),
            EventData::Pruned(d) => serde_json::to_string(d),
            EventData::Console(d) => serde_json::to_string(d),
        };
        // Plain data with string keys: serializing cannot fail.
        text.unwrap_or_default()
    }

    /// Reads a stored record, of any format version.
    pub fn parse(kind: &str, data: &str) -> Result<EventData, EventError> {
        fn read<T: serde::de::DeserializeOwned>(
            kind: &'static str,
            value: serde_json::Value,
        ) -> Result<T, EventError> {
            serde_json::from_value(value).map_err(|source| EventError::Data { kind, source })
        }
        let mut value: serde_json::Value =
            serde_json::from_str(data).map_err(|source| EventError::Data {
                kind: "stored",
                source,
            })?;
        if value.get("v").is_none() {
            upgrade_v1(kind, &mut value);
        }
        Ok(match kind {
            "received" => EventData::Received(Box::new(read("received", value)?)),
            "classified" => EventData::Classified(read("classified", value)?),
            "attempt" => EventData::Attempt(Box::new(read("attempt", value)?)),
            "deleted" => EventData::Deleted(read("deleted", value)?),
            "held" => EventData::Held(read("held", value)?),
            "pruned" => EventData::Pruned(read("pruned", value)?),
            "console" => EventData::Console(read("console", value)?),
            other => return Err(EventError::Kind(other.to_string())),
        })
    }
}

/// Version 1 attempt records kept one `level` per verdict (the observed
/// one) and knew no refusals: that level becomes `observed_level`, and
/// `level` stays what it said, as version 1 readers understood it.
pub fn upgrade_v1(kind: &str, value: &mut serde_json::Value) {
    if let Some(map) = value.as_object_mut() {
        map.insert("v".into(), 1.into());
    }
    if kind != "attempt" {
        return;
    }
    if let Some(verdict) = value.get_mut("verdict").and_then(|v| v.as_object_mut())
        && let Some(level) = verdict.get("level").cloned()
    {
        verdict.insert("observed_level".into(), level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::export::{self, Selection};
    use crate::report::{Event, log};
    use rusqlite::{Connection, params};

    /// An attempt record as version 1 wrote it (before the typed verdict).
    const V1_ATTEMPT: &str = r#"{"domain":"x.test","verdict":{"domain":"x.test","mx_host":"mx.x.test","address":"192.0.2.1","level":"encrypted","checks":[{"name":"starttls","status":"pass","detail":"STARTTLS negotiated"},{"name":"dane","status":"fail","detail":"no TLSA record matches"}],"tls":{"version":"TLSv1.3","cipher_suite":"TLS13_AES_256_GCM_SHA384","kx_group":"x25519","peer_key":{"algorithm":"RSA","bits":2048},"chain":[],"ocsp_stapled":false},"at":1800000000},"recipients":[{"address":"a@x.test","class":"normal","required":"encrypted","action":"defer","reason":"no mail exchanger could be reached","outcome":"deferred","status":"4.4.1","remote":null,"detail":"mx.x.test[192.0.2.1]: DANE authentication failed"}],"bounce":null}"#;

    #[test]
    fn version_1_records_stay_readable_and_verifiable() {
        let EventData::Attempt(a) = EventData::parse("attempt", V1_ATTEMPT).expect("v1 parses")
        else {
            panic!("an attempt");
        };
        assert_eq!(a.v, 1);
        let v = a.verdict.as_ref().expect("verdict");
        assert_eq!(v.observed_level, crate::qualify::Level::Encrypted);
        assert!(v.refusals.is_empty());
        assert_eq!(a.recipients[0].outcome, RecipientResult::Deferred);
        assert_eq!(a.recipients[0].reason_code, None);

        // A chain with a version 1 record first, then today's records.
        let conn = Connection::open_in_memory().expect("db");
        log::init(&conn).expect("schema");
        let (at, qid) = (1_800_000_000, "00000000000000AA");
        let hash = log::record_hash(&[0; 32], "t", 1, at, "attempt", qid, V1_ATTEMPT);
        conn.execute(
            "INSERT INTO txlog VALUES ('t', 1, ?, 'attempt', ?, ?, ?, ?)",
            params![at, qid, V1_ATTEMPT, vec![0u8; 32], hash.as_slice()],
        )
        .expect("insert v1");
        let today = Event {
            queue_id: QueueId(0xAB),
            at: at + 1,
            data: EventData::Attempt(a.clone()),
        };
        log::append(&conn, "t", &[today]).expect("append v2");
        let verified = log::verify(&conn, "t").expect("verify");
        assert!(
            matches!(verified, log::Verified::Intact { records: 2, .. }),
            "{verified:?}"
        );
        let sel = Selection {
            from: 0,
            to: i64::MAX,
            tenant: None,
            progress: None,
        };
        let mut out = Vec::new();
        assert_eq!(export::csv(&conn, &sel, &mut out).expect("csv"), 2);
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(text.matches(",deferred,mx.x.test,").count(), 2, "{text}");
        // A record read from version 1 keeps its version when written again.
        let data: String = conn
            .query_row("SELECT data FROM txlog WHERE seq = 2", [], |r| r.get(0))
            .expect("row");
        assert!(data.starts_with("{\"v\":1"), "kept as read: {data}");
    }
}
