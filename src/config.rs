//! `sealgate.toml` → a typed [`Config`].
//!
//! Every key has a default, so an empty file (or no file at all) is the
//! embedded default configuration: listen on 127.0.0.1:2525 (relay) and
//! 127.0.0.1:2587 (submission), keep everything under `./sealgate-data`,
//! relay for 127.0.0.0/8 only. Errors name the file, the line, the key and
//! what was expected; nothing is re-parsed after this module.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

/// The whole configuration, as read from one file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Our host name: in the greeting, in `Received:` headers, in EHLO to peers.
    pub hostname: String,
    /// Directory for the spool database, the generated certificate and the control socket.
    pub data_dir: PathBuf,
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    pub limits: Limits,
    pub queue: QueueConfig,
    pub outbound: OutboundConfig,
    pub dns: DnsConfig,
    pub mta_sts: MtaStsConfig,
    pub revocation: RevocationConfig,
    pub seal: SealConfig,
    pub spool: SpoolConfig,
    pub policy: PolicyConfig,
    pub report: ReportConfig,
    #[serde(rename = "route")]
    pub routes: Vec<Route>,
    #[serde(rename = "tenant")]
    pub tenants: Vec<Tenant>,
    /// Tenant of authenticated users that no tenant lists.
    pub default_tenant: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hostname: default_hostname(),
            data_dir: PathBuf::from("sealgate-data"),
            listeners: vec![
                ListenerConfig {
                    address: SocketAddr::from(([127, 0, 0, 1], 2525)),
                    mode: ListenerMode::Relay,
                    tls: ListenerTls::Starttls,
                },
                ListenerConfig {
                    address: SocketAddr::from(([127, 0, 0, 1], 2587)),
                    mode: ListenerMode::Submission,
                    tls: ListenerTls::Starttls,
                },
            ],
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            limits: Limits::default(),
            queue: QueueConfig::default(),
            outbound: OutboundConfig::default(),
            dns: DnsConfig::default(),
            mta_sts: MtaStsConfig::default(),
            revocation: RevocationConfig::default(),
            seal: SealConfig::default(),
            spool: SpoolConfig::default(),
            policy: PolicyConfig::default(),
            report: ReportConfig::default(),
            routes: Vec::new(),
            tenants: vec![Tenant {
                id: "default".into(),
                networks: vec![IpNet::from_str("127.0.0.0/8").expect("literal CIDR")],
                users: Vec::new(),
                client_certificates: Vec::new(),
                seal: TenantSeal::default(),
                retention: TenantRetention::default(),
            }],
            default_tenant: "default".into(),
        }
    }
}

fn default_hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `ip:port` to bind.
    pub address: SocketAddr,
    pub mode: ListenerMode,
    #[serde(default)]
    pub tls: ListenerTls,
}

/// What a listener is for: decides how relaying is authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerMode {
    /// Port 25 style: clients are trusted by network, client certificate or AUTH.
    Relay,
    /// Port 587 style (RFC 6409): only authenticated users (or client certificates) may send.
    Submission,
}

/// How TLS is offered on a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerTls {
    /// STARTTLS is offered (RFC 3207).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465, RFC 8314).
    Implicit,
    /// No TLS at all (for tests and trusted local networks only).
    None,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain; when unset, a self-signed one is generated in `data_dir/tls`.
    pub certificate: Option<PathBuf>,
    /// PEM private key belonging to `certificate`.
    pub private_key: Option<PathBuf>,
    /// PEM CA certificates that client certificates matched by subject or SAN must chain to.
    pub client_ca_file: Option<PathBuf>,
    /// The TLS profile of both directions: what sealgate's own TLS server
    /// offers, and what a delivery connection must meet to be `qualified`.
    pub profile: crate::qualify::bsi::Profile,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// File of `user:argon2-hash` lines; AUTH is not offered when unset.
    pub users_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest accepted message in bytes (advertised with SIZE).
    pub max_message_size: usize,
    /// Recipients per message.
    pub max_recipients: usize,
    /// Longest line inside DATA, in bytes without CRLF.
    pub max_line_length: usize,
    /// How long we wait for the next command.
    #[serde(deserialize_with = "duration")]
    pub command_timeout: Duration,
    /// How long we wait for the next chunk of message data.
    #[serde(deserialize_with = "duration")]
    pub data_timeout: Duration,
    /// Simultaneous inbound connections in all.
    pub max_connections: usize,
    /// Simultaneous inbound connections from one client address.
    pub max_connections_per_client: usize,
    /// Failed AUTH attempts before the session is closed.
    pub max_auth_failures: u32,
    /// Commands that are errors before the session is closed.
    pub max_errors: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 50 * 1024 * 1024,
            max_recipients: 1000,
            max_line_length: 8192,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            max_connections: 1000,
            max_connections_per_client: 50,
            max_auth_failures: 3,
            max_errors: 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Waits between attempts; the last one repeats until the lifetime ends.
    #[serde(deserialize_with = "durations")]
    pub retry_schedule: Vec<Duration>,
    /// How long a message may stay queued before it bounces.
    #[serde(deserialize_with = "duration")]
    pub max_lifetime: Duration,
    /// Delivery attempts running at once, in all.
    pub max_concurrency: usize,
    /// Delivery attempts running at once to one recipient domain.
    pub max_per_destination: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        let m = |n: u64| Duration::from_secs(60 * n);
        QueueConfig {
            retry_schedule: vec![m(1), m(5), m(15), m(30), m(60), m(120), m(240)],
            max_lifetime: Duration::from_secs(5 * 24 * 3600),
            max_concurrency: 100,
            max_per_destination: 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundConfig {
    /// Port of peer MX hosts (25 on the Internet; tests route to other ports).
    pub port: u16,
    /// Name we give in EHLO; defaults to `hostname`.
    pub helo_name: Option<String>,
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// Wait for a peer's reply to one command (RFC 5321 §4.5.3.2 gives 5 minutes as the floor for most).
    #[serde(deserialize_with = "duration")]
    pub command_timeout: Duration,
    /// Wait for the reply after the final dot (RFC 5321 §4.5.3.2.6: 10 minutes).
    #[serde(deserialize_with = "duration")]
    pub data_timeout: Duration,
    /// How long an idle connection is kept for the next message to the same destination.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// Transactions sent over one connection before it is closed.
    pub max_messages_per_connection: usize,
    /// Trust anchors for PKIX authentication of peers.
    pub pkix_roots: RootStore,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        OutboundConfig {
            port: 25,
            helo_name: None,
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(5),
            max_messages_per_connection: 100,
            pkix_roots: RootStore::Mozilla,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Resolvers as `ip:port`; empty means the system's /etc/resolv.conf.
    pub servers: Vec<SocketAddr>,
    /// DNSKEY records to anchor DNSSEC validation at; default: the IANA root
    /// keys built in from `certs/root-anchors.dnskey`.
    pub trust_anchor: Option<PathBuf>,
    /// How long one query to one server may take.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// How many times a query is sent before the lookup fails.
    pub attempts: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            servers: Vec::new(),
            trust_anchor: None,
            timeout: Duration::from_secs(5),
            attempts: 2,
        }
    }
}

/// Where PKIX trust comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum RootStore {
    /// The Mozilla root program, built in (webpki-roots).
    Mozilla,
    /// The operating system's store.
    System,
    /// CA certificates from a PEM file.
    File(PathBuf),
}

impl TryFrom<String> for RootStore {
    type Error = String;
    fn try_from(s: String) -> Result<RootStore, String> {
        match s.as_str() {
            "mozilla" => Ok(RootStore::Mozilla),
            "system" => Ok(RootStore::System),
            "" => Err("expected `mozilla`, `system` or the path of a PEM file".into()),
            path => Ok(RootStore::File(PathBuf::from(path))),
        }
    }
}

/// MTA-STS (RFC 8461) policy discovery.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MtaStsConfig {
    pub enabled: bool,
    /// Port of the policy host (443 on the Internet; tests use another).
    pub https_port: u16,
    /// Trust for the policy host's certificate; default: `outbound.pkix_roots`.
    pub roots: Option<RootStore>,
    #[serde(deserialize_with = "duration")]
    pub fetch_timeout: Duration,
    /// Largest policy accepted (RFC 8461 §3.3 suggests 64 KiB).
    pub max_policy_size: usize,
}

/// Revocation checking of delivery peers' certificates (OCSP, CRL).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RevocationConfig {
    /// Time limit of one OCSP query or CRL download.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Largest OCSP response accepted.
    pub max_ocsp_size: usize,
    /// Largest CRL accepted.
    pub max_crl_size: usize,
}

impl Default for RevocationConfig {
    fn default() -> Self {
        RevocationConfig {
            timeout: Duration::from_secs(10),
            max_ocsp_size: 64 * 1024,
            max_crl_size: 20 * 1024 * 1024,
        }
    }
}

/// The password envelope (docs/envelope-format.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SealConfig {
    /// PBKDF2-HMAC-SHA512 iterations, stored in each envelope.
    #[serde(deserialize_with = "seal_iterations")]
    pub iterations: u32,
    /// Largest envelope content (the parsed message, base64 inside); above
    /// it the sender gets a bounce instead of a sealed mail.
    pub max_size: usize,
    /// Language of the opener page and notification: `en` or `de`.
    #[serde(deserialize_with = "seal_language")]
    pub language: String,
}

impl Default for SealConfig {
    fn default() -> Self {
        SealConfig {
            iterations: crate::seal::envelope::MIN_ITERATIONS,
            max_size: 25 * 1024 * 1024,
            language: "en".into(),
        }
    }
}

fn seal_language<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let lang = String::deserialize(d)?;
    if crate::seal::opener::Texts::for_language(&lang).is_none() {
        return Err(serde::de::Error::custom(format!(
            "no texts for language {lang:?}; sealgate ships en and de"
        )));
    }
    Ok(lang)
}

fn seal_iterations<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    use crate::seal::envelope::{MAX_ITERATIONS, MIN_ITERATIONS};
    let n = u32::deserialize(d)?;
    if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&n) {
        return Err(serde::de::Error::custom(format!(
            "iterations must be between {MIN_ITERATIONS} and {MAX_ITERATIONS}"
        )));
    }
    Ok(n)
}

impl Default for MtaStsConfig {
    fn default() -> Self {
        MtaStsConfig {
            enabled: true,
            https_port: 443,
            roots: None,
            fetch_timeout: Duration::from_secs(30),
            max_policy_size: 64 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Keep message content this long after the last recipient is done (0: delete at once).
    #[serde(deserialize_with = "duration")]
    pub hold_delivered: Duration,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            hold_delivered: Duration::ZERO,
        }
    }
}

/// Where the risk-class rules come from, and how the domain memory acts
/// (docs/policies.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Directory of `*.toml` policy files; none: the built-in
    /// `policies/default.toml`. Reloaded on SIGHUP.
    pub dir: Option<PathBuf>,
    /// How long a downgrade (a domain that reached a level before and less
    /// now) holds high-class mail before it is sealed as usual.
    #[serde(deserialize_with = "duration")]
    pub downgrade_hold: Duration,
    /// Longest a host's verdict is remembered for ordering hosts and the
    /// risk view (DNS TTLs and revocation nextUpdate may cut it shorter).
    #[serde(deserialize_with = "duration")]
    pub verdict_cache_max: Duration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            dir: None,
            downgrade_hold: Duration::from_secs(24 * 3600),
            verdict_cache_max: Duration::from_secs(3600),
        }
    }
}

/// `[report]`: what the gateway reports by itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportConfig {
    /// Send daily TLS-RPT reports (RFC 8460) to domains that publish an
    /// `_smtp._tls` TXT record asking for them.
    pub tlsrpt: bool,
    /// From: of the reports (default `noreply-smtp-tls-reporting@HOSTNAME`).
    pub tlsrpt_from: Option<String>,
    /// `organization-name` in the reports (default: the host name).
    pub organization: Option<String>,
    /// `contact-info` in the reports, e.g. an address for questions.
    pub contact: Option<String>,
    /// How often each tenant's chain head is written to the log (0: never).
    #[serde(deserialize_with = "duration")]
    pub head_interval: Duration,
    /// Ed25519 key (PKCS#8 PEM, `sealgate report keygen`) that signs the heads.
    pub signing_key: Option<PathBuf>,
}

impl Default for ReportConfig {
    fn default() -> Self {
        ReportConfig {
            tlsrpt: true,
            tlsrpt_from: None,
            organization: None,
            contact: None,
            head_interval: Duration::from_secs(3600),
            signing_key: None,
        }
    }
}

/// A static route: mail for `domain` goes to `next_hop` instead of its MX.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// A domain, `*.domain` for its subdomains, or `*` for everything.
    pub domain: DomainPattern,
    /// `host:port` or `[ip]:port`; the host is resolved by A/AAAA, not MX.
    pub next_hop: NextHop,
}

/// A domain match pattern of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainPattern {
    Any,
    Exact(String),
    /// `*.example.org`: any subdomain of example.org, not example.org itself.
    Subdomains(String),
}

impl DomainPattern {
    pub fn matches(&self, domain: &str) -> bool {
        match self {
            DomainPattern::Any => true,
            DomainPattern::Exact(d) => d.eq_ignore_ascii_case(domain),
            DomainPattern::Subdomains(parent) => {
                domain.len() > parent.len() + 1 && {
                    let (head, tail) = domain.split_at(domain.len() - parent.len());
                    head.ends_with('.') && tail.eq_ignore_ascii_case(parent)
                }
            }
        }
    }
}

impl FromStr for DomainPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim().trim_end_matches('.').to_ascii_lowercase();
        if s == "*" {
            return Ok(DomainPattern::Any);
        }
        let (pattern, name) = match s.strip_prefix("*.") {
            Some(rest) => (DomainPattern::Subdomains(rest.to_string()), rest),
            None => (DomainPattern::Exact(s.clone()), s.as_str()),
        };
        if name.is_empty()
            || !name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
        {
            return Err(format!("`{s}` is not a domain, `*.domain` or `*`"));
        }
        Ok(pattern)
    }
}

/// Where a static route sends mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHop {
    pub host: String,
    pub port: u16,
}

impl FromStr for NextHop {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let expected = || format!("`{s}` is not `host:port` or `[ip]:port`");
        let (host, port) = s.rsplit_once(':').ok_or_else(expected)?;
        let port: u16 = port.parse().map_err(|_| expected())?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port == 0 {
            return Err(expected());
        }
        Ok(NextHop {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for NextHop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

macro_rules! deserialize_from_str {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
deserialize_from_str!(DomainPattern, NextHop);

/// One customer of the gateway: who may relay as it, and what it owns.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    pub id: String,
    /// Client networks allowed to relay as this tenant (CIDR).
    #[serde(default)]
    pub networks: Vec<IpNet>,
    /// AUTH user names that belong to this tenant.
    #[serde(default)]
    pub users: Vec<String>,
    /// TLS client certificates that may relay as this tenant.
    #[serde(default)]
    pub client_certificates: Vec<ClientCertRule>,
    /// Sealed delivery for this tenant's mail.
    #[serde(default)]
    pub seal: TenantSeal,
    /// How long this tenant's log records and finished messages are kept.
    #[serde(default)]
    pub retention: TenantRetention,
}

/// `[tenant.retention]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRetention {
    /// Remove transaction-log records older than this many days (0: keep
    /// them); a `pruned` record keeps the chain verifiable.
    #[serde(default)]
    pub log_days: u32,
    /// Keep a finished message's content this long (default: `spool.hold_delivered`).
    #[serde(default, deserialize_with = "duration_opt")]
    pub hold_delivered: Option<Duration>,
}

/// `[tenant.seal]`: language and words of sealed mail, and the password's way.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSeal {
    /// Language of the opener and notification (default: `seal.language`).
    #[serde(default, deserialize_with = "seal_language_opt")]
    pub language: Option<String>,
    /// Own notification subject and body (`{sender}` is replaced).
    pub notification_subject: Option<String>,
    pub notification_body: Option<String>,
    /// `sender-mail` (default) or `webhook`.
    #[serde(default)]
    pub password_channel: crate::seal::channel::PasswordChannel,
    /// Where the webhook channel POSTs the password (JSON).
    pub webhook_url: Option<String>,
    /// `address,phone` lines: recipients the webhook channel can reach.
    pub contacts_file: Option<PathBuf>,
    /// The level the password mail to the sender needs (default qualified).
    #[serde(default, deserialize_with = "level_opt")]
    pub password_mail_requires: Option<crate::qualify::Level>,
}

fn seal_language_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    seal_language(d).map(Some)
}

fn level_opt<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<crate::qualify::Level>, D::Error> {
    let s = String::deserialize(d)?;
    crate::policy::parse_level(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// How a TLS client certificate is recognised (e.g. a Microsoft 365 outbound connector).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum ClientCertRule {
    /// SHA-256 of the DER certificate, hex, colons optional. Pins this exact certificate.
    Sha256(#[serde(deserialize_with = "fingerprint")] [u8; 32]),
    /// Exact subject distinguished name, e.g. `CN=mail.example.com, O=Example`; the chain must verify against `tls.client_ca_file`.
    Subject(String),
    /// A DNS name in the subjectAltName; the chain must verify against `tls.client_ca_file`.
    San(String),
}

fn fingerprint<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
    let s = String::deserialize(d)?;
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    let bad = || {
        serde::de::Error::custom(format!(
            "`{s}` is not a SHA-256 fingerprint (64 hex digits)"
        ))
    };
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

fn duration_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "`{s}` is not a duration like \"30s\", \"5m\" or \"5d\" ({e})"
        ))
    })
}

fn durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    #[derive(Deserialize)]
    struct Wrapped(#[serde(deserialize_with = "duration")] Duration);
    let v: Vec<Wrapped> = Vec::deserialize(d)?;
    Ok(v.into_iter().map(|w| w.0).collect())
}

/// A configuration error, with where it is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {key}{message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
    #[error("{path}: {message}")]
    Inconsistent { path: PathBuf, message: String },
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Config::parse(&text, path)
    }

    /// Parses configuration text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = deserialize_toml(text).map_err(|e| {
            let (line, column) = line_column(text, e.offset);
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                key: e.key,
                message: e.message,
            }
        })?;
        config
            .check()
            .map_err(|message| ConfigError::Inconsistent {
                path: path.to_path_buf(),
                message,
            })?;
        Ok(config)
    }

    /// Rules that span several keys, checked after parsing.
    fn check(&self) -> Result<(), String> {
        if self.listeners.is_empty() {
            return Err("no [[listener]]: the gateway would accept nothing".into());
        }
        for (i, a) in self.listeners.iter().enumerate() {
            if self.listeners[..i].iter().any(|b| b.address == a.address) {
                return Err(format!("two listeners on {}", a.address));
            }
        }
        if self.tls.certificate.is_some() != self.tls.private_key.is_some() {
            return Err("tls.certificate and tls.private_key go together".into());
        }
        if self.dns.attempts == 0 || self.dns.timeout.is_zero() {
            return Err("dns.attempts and dns.timeout must be above zero".into());
        }
        if self.queue.retry_schedule.is_empty() {
            return Err("queue.retry_schedule is empty: give at least one wait".into());
        }
        if self.queue.max_concurrency == 0 || self.queue.max_per_destination == 0 {
            return Err(
                "queue.max_concurrency and queue.max_per_destination must be at least 1".into(),
            );
        }
        let mut ids = std::collections::HashSet::new();
        for t in &self.tenants {
            if !ids.insert(t.id.as_str()) {
                return Err(format!("tenant `{}` is defined twice", t.id));
            }
            if t.seal.password_channel == crate::seal::channel::PasswordChannel::Webhook
                && (t.seal.webhook_url.is_none() || t.seal.contacts_file.is_none())
            {
                return Err(format!(
                    "tenant `{}`: password_channel = \"webhook\" needs webhook_url and contacts_file",
                    t.id
                ));
            }
            let by_name = t
                .client_certificates
                .iter()
                .any(|r| !matches!(r, ClientCertRule::Sha256(_)));
            if by_name && self.tls.client_ca_file.is_none() {
                return Err(format!(
                    "tenant `{}` matches client certificates by subject or SAN, which needs tls.client_ca_file (anyone can make a self-signed certificate with any name)",
                    t.id
                ));
            }
        }
        if !self.tenants.iter().any(|t| t.id == self.default_tenant) {
            return Err(format!(
                "default_tenant `{}` is not one of the [[tenant]] ids",
                self.default_tenant
            ));
        }
        Ok(())
    }

    /// The name we give in EHLO to peers.
    pub fn helo_name(&self) -> &str {
        self.outbound.helo_name.as_deref().unwrap_or(&self.hostname)
    }

    /// Path of the SQLite database.
    /// How long a finished message of `tenant` keeps its content.
    pub fn hold_delivered(&self, tenant: &str) -> Duration {
        self.tenants
            .iter()
            .find(|t| t.id == tenant)
            .and_then(|t| t.retention.hold_delivered)
            .unwrap_or(self.spool.hold_delivered)
    }

    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("sealgate.db")
    }

    /// The key that seals pre-agreed envelope passwords (made on first use).
    pub fn passwords_key(&self) -> PathBuf {
        self.data_dir.join("passwords.key")
    }

    /// Path of the control socket the CLI talks to.
    pub fn control_socket(&self) -> PathBuf {
        self.data_dir.join("control.sock")
    }
}

/// Which end of a day a bare date means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DayEdge {
    /// Midnight UTC at its start (a period's beginning).
    Start,
    /// Midnight UTC after it (an expiry: the whole day still counts).
    End,
}

/// `2027-01-31` (a whole day, UTC) or an RFC 3339 time, as Unix seconds.
pub fn parse_instant(s: &str, edge: DayEdge) -> Result<i64, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp());
    }
    let bad = || format!("`{s}` is not a date (2027-01-31) or an RFC 3339 time");
    let mut day = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| bad())?;
    if edge == DayEdge::End {
        day = day.succ_opt().ok_or_else(bad)?;
    }
    Ok(day
        .and_hms_opt(0, 0, 0)
        .ok_or_else(bad)?
        .and_utc()
        .timestamp())
}

/// Why a TOML text did not deserialize, and where.
pub(crate) struct TomlError {
    /// Byte offset into the text.
    pub offset: usize,
    /// "key `a.b`: ", or empty when the error is not about one key.
    pub key: String,
    pub message: String,
}

/// Deserializes TOML text, keeping the offset and the key path of an error
/// so that it can be reported as `file:line:column: key …: message`.
pub(crate) fn deserialize_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, TomlError> {
    let error = |err: toml::de::Error, key: String| TomlError {
        offset: err.span().map(|s| s.start).unwrap_or(0),
        key: key_prefix(&key),
        message: err.message().trim().to_string(),
    };
    let de = toml::Deserializer::parse(text).map_err(|e| error(e, String::new()))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        // toml::Spanned shows in the path under a private name.
        let key = e
            .path()
            .to_string()
            .replace(".$__serde_spanned_private_value", "");
        error(e.into_inner(), key)
    })
}

/// "key `k`: " for a key path, or "" for none.
pub(crate) fn key_prefix(key: &str) -> String {
    if key.is_empty() || key == "." {
        String::new()
    } else {
        format!("key `{key}`: ")
    }
}

pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("t.toml"))
    }

    #[test]
    fn empty_file_is_the_embedded_default() {
        let c = parse("").expect("empty config parses");
        assert_eq!(c.listeners.len(), 2);
        assert_eq!(c.listeners[0].address.port(), 2525);
        assert_eq!(c.listeners[1].mode, ListenerMode::Submission);
        assert_eq!(c.queue.max_lifetime, Duration::from_secs(432_000));
        assert_eq!(c.tenants[0].networks[0].to_string(), "127.0.0.0/8");
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let err = parse("hostname = \"a\"\n[limits]\nmax_mesage_size = 5\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("t.toml:3:"), "{msg}");
        assert!(msg.contains("max_mesage_size"), "{msg}");
        assert!(
            msg.contains("max_message_size"),
            "names what is expected: {msg}"
        );
    }

    #[test]
    fn bad_value_names_line_key_and_expectation() {
        let err = parse("\n[queue]\nmax_lifetime = \"5 fortnights\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("t.toml:3:"), "{msg}");
        assert!(msg.contains("queue.max_lifetime"), "{msg}");
        assert!(msg.contains("duration"), "{msg}");

        let err = parse("[[tenant]]\nid = \"x\"\nnetworks = [\"10.0.0.0/33\"]\n").unwrap_err();
        assert!(err.to_string().starts_with("t.toml:3:"), "{err}");
        let err = parse("[[route]]\ndomain = \"a..b\"\nnext_hop = \"h:25\"\n").unwrap_err();
        assert!(err.to_string().contains("route[0].domain"), "{err}");
    }

    #[test]
    fn domain_patterns() {
        let p: DomainPattern = "*.Example.org".parse().unwrap();
        assert!(p.matches("mx.example.ORG"));
        assert!(!p.matches("example.org"));
        assert!(!p.matches("badexample.org"));
        assert!("*".parse::<DomainPattern>().unwrap().matches("x.y"));
        let hop: NextHop = "[::1]:2525".parse().unwrap();
        assert_eq!(hop.host, "::1");
        assert_eq!(hop.to_string(), "[::1]:2525");
    }

    #[test]
    fn subject_rules_need_a_ca() {
        let err =
            parse("[[tenant]]\nid = \"default\"\nclient_certificates = [{ subject = \"CN=x\" }]\n")
                .unwrap_err();
        assert!(err.to_string().contains("client_ca_file"), "{err}");
    }
}
