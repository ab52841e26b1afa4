//! The message model every part shares: a queued message's id, its tenant,
//! its envelope and recipients (with their DSN parameters and class), and
//! what a delivery attempt loads. Parsed once at the edge (inbound), stored
//! by the spool, read by the queue, outbound, policy and report.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How much harm a message would do in the wrong hands; ordered.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum RiskClass {
    #[default]
    Normal,
    High,
    Confidential,
}

impl RiskClass {
    pub const ALL: [RiskClass; 3] = [RiskClass::Normal, RiskClass::High, RiskClass::Confidential];

    pub fn name(self) -> &'static str {
        match self {
            RiskClass::Normal => "normal",
            RiskClass::High => "high",
            RiskClass::Confidential => "confidential",
        }
    }
}

impl fmt::Display for RiskClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for RiskClass {
    type Err = String;
    fn from_str(s: &str) -> Result<RiskClass, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "normal" => Ok(RiskClass::Normal),
            "high" => Ok(RiskClass::High),
            "confidential" => Ok(RiskClass::Confidential),
            _ => Err(format!(
                "`{s}` is not a risk class (normal, high, confidential)"
            )),
        }
    }
}

/// Identifies a queued message; shown as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(pub u64);

impl QueueId {
    /// A message sent outside the queue (a password by SMTP): nothing in
    /// the spool to record it against.
    pub const UNSPOOLED: QueueId = QueueId(0);
}

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
    /// What the sender asked of the transport (RFC 8689).
    pub tls_request: TlsRequest,
    /// Whether the content is already end-to-end encrypted (policy::e2e).
    pub content: Content,
    pub recipients: Vec<Recipient>,
}

/// What a message's content is, as far as end-to-end encryption goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Content {
    #[default]
    Plain,
    /// `application/pkcs7-mime` with enveloped or authEnveloped data.
    Smime,
    /// `multipart/encrypted; protocol="application/pgp-encrypted"`.
    PgpMime,
    /// A text body that is `-----BEGIN PGP MESSAGE-----` armour.
    PgpInline,
    /// Signed (S/MIME or PGP), not encrypted.
    SignedOnly,
}

impl Content {
    pub fn name(self) -> &'static str {
        match self {
            Content::Plain => "plain",
            Content::Smime => "smime",
            Content::PgpMime => "pgp_mime",
            Content::PgpInline => "pgp_inline",
            Content::SignedOnly => "signed_only",
        }
    }

    /// The stored name back; an unknown one is plain (it relaxes nothing).
    pub fn from_name(name: &str) -> Content {
        match name {
            "smime" => Content::Smime,
            "pgp_mime" => Content::PgpMime,
            "pgp_inline" => Content::PgpInline,
            "signed_only" => Content::SignedOnly,
            _ => Content::Plain,
        }
    }

    /// Encrypted by a structure that cannot be a quotation.
    pub fn strongly_encrypted(self) -> bool {
        matches!(self, Content::Smime | Content::PgpMime)
    }
}

/// What the sender asked of every hop's transport (RFC 8689).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsRequest {
    /// Nothing: our policy alone decides.
    #[default]
    None,
    /// `MAIL FROM:<…> REQUIRETLS`: only to a host authenticated by DANE or
    /// MTA-STS that takes REQUIRETLS itself; else a bounce, never a seal.
    RequireTls,
    /// `TLS-Required: No`, honoured (for normal-class recipients only).
    TlsOptional,
}

impl TlsRequest {
    pub fn name(self) -> &'static str {
        match self {
            TlsRequest::None => "none",
            TlsRequest::RequireTls => "requiretls",
            TlsRequest::TlsOptional => "tls_optional",
        }
    }

    /// The stored name back; an unknown one is REQUIRETLS: never less
    /// than the writer meant.
    pub fn from_name(name: &str) -> TlsRequest {
        match name {
            "none" => TlsRequest::None,
            "tls_optional" => TlsRequest::TlsOptional,
            _ => TlsRequest::RequireTls,
        }
    }
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

impl LoadedJob {
    /// The job with no body and no recipients: the base of a part of it.
    pub fn clone_without_body(&self) -> LoadedJob {
        LoadedJob {
            id: self.id,
            envelope: self.envelope.clone(),
            received_at: self.received_at,
            expires_at: self.expires_at,
            body: Vec::new(),
            recipients: Vec::new(),
        }
    }
}

/// Where a message's header section ends (before the empty line), or the
/// end of the message when it has no body.
pub fn header_end(raw: &[u8]) -> usize {
    raw.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 2)
        .unwrap_or(raw.len())
}

/// The fields of a header section (CRLF lines), each with its continuation
/// lines and final CRLF.
pub fn header_fields(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = head;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = 0;
        loop {
            match rest[end..].windows(2).position(|w| w == b"\r\n") {
                Some(i) => {
                    end += i + 2;
                    if !matches!(rest.get(end), Some(b' ' | b'\t')) {
                        break;
                    }
                }
                None => {
                    end = rest.len();
                    break;
                }
            }
        }
        let (field, tail) = rest.split_at(end);
        rest = tail;
        Some(field)
    })
}

/// Why an address from a client is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address must be local-part@domain")]
    NoDomain,
    #[error("address contains a control character")]
    Control,
    #[error("the domain of the address is not a domain name")]
    Domain,
    #[error("the address literal is not an IPv4 or an IPv6 address (RFC 5321 §4.1.3)")]
    Literal,
}

/// Any C0 control character or DEL: never part of an address, a
/// parameter or a header we write.
pub fn has_control(s: &str) -> bool {
    s.chars().any(|c| c.is_control())
}

/// An SMTP mailbox from a client, in the one form sealgate keeps and
/// writes: `local@domain`, the local part quoted (RFC 5321 §4.1.2) whenever
/// it is not a dot-string. smtp-proto hands over quoted local parts
/// without their quotes; writing them back unquoted would let
/// `"x> NOTIFY=…"@d` add parameters on the next hop, and
/// `"a@evil"@d` change its meaning. The domain is what follows the last
/// `@`, which no local part, quoted or not, can change.
pub fn mailbox(raw: &str) -> Result<String, AddressError> {
    if has_control(raw) {
        return Err(AddressError::Control);
    }
    let (local, domain) = raw.rsplit_once('@').ok_or(AddressError::NoDomain)?;
    if local.is_empty() || domain.is_empty() {
        return Err(AddressError::NoDomain);
    }
    if domain.starts_with('[') {
        let ip = literal_ip(domain).ok_or(AddressError::Literal)?;
        return Ok(format!("{}@{}", quote_local(local), literal(ip)));
    }
    // Labels of letters, digits, `-` and `_` (or UTF-8, RFC 6531): nothing
    // that could end the path or start a parameter when written again.
    let label = |l: &str| {
        !l.is_empty()
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || !c.is_ascii())
    };
    if !domain
        .strip_suffix('.')
        .unwrap_or(domain)
        .split('.')
        .all(label)
    {
        return Err(AddressError::Domain);
    }
    Ok(format!("{}@{domain}", quote_local(local)))
}

/// The address of an address literal domain, `[192.0.2.1]` or
/// `[IPv6:2001:db8::1]` (RFC 5321 §4.1.3); `None` for anything else,
/// including the general `[tag:content]` form no one defines.
pub fn literal_ip(domain: &str) -> Option<std::net::IpAddr> {
    let inner = domain.strip_prefix('[')?.strip_suffix(']')?;
    match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => inner[5..]
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .map(Into::into),
        _ => inner.parse::<std::net::Ipv4Addr>().ok().map(Into::into),
    }
}

/// The one way an address literal is written (RFC 5321 §4.1.3).
pub fn literal(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => format!("[{v4}]"),
        std::net::IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    }
}

/// A local part as a dot-string when it is one, else as a quoted string
/// with `"` and `\` escaped (RFC 5321 §4.1.2; RFC 6531 allows UTF-8 in both).
pub fn quote_local(local: &str) -> std::borrow::Cow<'_, str> {
    let atext =
        |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii();
    let dot_string = !local.is_empty()
        && local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(atext));
    if dot_string {
        return local.into();
    }
    let mut q = String::with_capacity(local.len() + 2);
    q.push('"');
    for c in local.chars() {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q.into()
}

/// xtext (RFC 3461 §4): what ENVID and ORCPT travel as, on the wire and in
/// a DSN; it cannot carry a line break or a space.
pub fn xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// Copies message data with every line end as CRLF: a bare LF and a bare
/// CR each become CRLF, so no line end that one MTA reads differently from
/// the next can reach the wire (the SMTP smuggling family, CVE-2023-51764).
pub fn crlf_lines(data: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if data.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc5321_4_1_2_local_parts_are_quoted_when_not_a_dot_string() {
        assert_eq!(
            mailbox("john.smith@example.org").unwrap(),
            "john.smith@example.org"
        );
        assert_eq!(
            mailbox("x> NOTIFY=SUCCESS ORCPT=rfc822;forged@allowed.test").unwrap(),
            "\"x> NOTIFY=SUCCESS ORCPT=rfc822;forged\"@allowed.test"
        );
        assert_eq!(
            mailbox("victim@evil.test@allowed.test").unwrap(),
            "\"victim@evil.test\"@allowed.test"
        );
        assert_eq!(mailbox("a\"b\\c@d.test").unwrap(), "\"a\\\"b\\\\c\"@d.test");
        assert_eq!(mailbox(".lead@d.test").unwrap(), "\".lead\"@d.test");
        assert_eq!(mailbox("jörg@d.test").unwrap(), "jörg@d.test");
        assert_eq!(mailbox("a\0b@d.test"), Err(AddressError::Control));
        assert_eq!(mailbox("a\r\nb@d.test"), Err(AddressError::Control));
        assert_eq!(mailbox("nodomain"), Err(AddressError::NoDomain));
        assert_eq!(mailbox("@d.test"), Err(AddressError::NoDomain));
        assert_eq!(mailbox("a@d.test>x"), Err(AddressError::Domain));
        assert_eq!(mailbox("a@d..test"), Err(AddressError::Domain));
    }

    #[test]
    fn rfc5321_4_1_3_address_literals_are_kept_in_one_form() {
        assert_eq!(mailbox("u@[192.0.2.1]").unwrap(), "u@[192.0.2.1]");
        assert_eq!(
            mailbox("u@[ipv6:2001:DB8:0::1]").unwrap(),
            "u@[IPv6:2001:db8::1]"
        );
        assert_eq!(mailbox("a b@[192.0.2.1]").unwrap(), "\"a b\"@[192.0.2.1]");
        assert_eq!(mailbox("u@[192.0.2.300]"), Err(AddressError::Literal));
        assert_eq!(mailbox("u@[2001:db8::1]"), Err(AddressError::Literal));
        assert_eq!(mailbox("u@[tag:x]"), Err(AddressError::Literal));
        assert_eq!(mailbox("u@[192.0.2.1]>x"), Err(AddressError::Literal));
        assert_eq!(mailbox("u@[192.0.2.1"), Err(AddressError::Literal));
    }

    proptest::proptest! {
        /// Whatever local part a client gives (quoted or not, any printable
        /// character), what we write parses back, as the next hop's
        /// smtp-proto would read it, to exactly that mailbox.
        #[test]
        fn rfc5321_4_1_2_mailbox_round_trip(local in "[ -~]{1,40}", domain in "[a-z0-9]{1,10}\\.test") {
            let raw = format!("{local}@{domain}");
            let wire = mailbox(&raw).unwrap();
            let line = format!("RCPT TO:<{wire}>\r\n");
            match smtp_proto::Request::parse(&mut line.as_bytes().iter()) {
                Ok(smtp_proto::Request::Rcpt { to }) => proptest::prop_assert_eq!(to.address, raw),
                other => proptest::prop_assert!(false, "{line:?} parsed as {other:?}"),
            }
        }

        /// Line ends of any kind come out as CRLF only.
        #[test]
        fn only_crlf_leaves(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let mut out = Vec::new();
            crlf_lines(&data, &mut out);
            for (i, b) in out.iter().enumerate() {
                if *b == b'\r' {
                    proptest::prop_assert_eq!(out.get(i + 1), Some(&b'\n'));
                }
                if *b == b'\n' {
                    proptest::prop_assert!(i > 0 && out[i - 1] == b'\r');
                }
            }
        }
    }

    #[test]
    fn rfc3461_4_xtext() {
        assert_eq!(xtext("a+b=c d"), "a+2Bb+3Dc+20d");
        assert_eq!(xtext("Bob@Example.COM"), "Bob@Example.COM");
        assert_eq!(
            xtext("x\r\nAction: delivered"),
            "x+0D+0AAction:+20delivered"
        );
    }

    #[test]
    fn every_line_end_becomes_crlf() {
        let mut out = Vec::new();
        crlf_lines(b"a\rb\nc\r\nd\r\r\n.\r", &mut out);
        assert_eq!(out, b"a\r\nb\r\nc\r\nd\r\n\r\n.\r\n");
    }
}
