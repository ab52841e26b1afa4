//! `[queue]`, `[outbound]`, `[dns]`, `[mta_sts]`, `[revocation]`, `[[route]]`:
//! how mail goes out and how its transport is qualified.

use super::*;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Waits between attempts; the last one repeats until the lifetime ends.
    #[serde(deserialize_with = "durations", serialize_with = "ser_durations")]
    pub retry_schedule: Vec<Duration>,
    /// How long a message may stay queued before it bounces.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
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

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundConfig {
    /// Port of peer MX hosts (25 on the Internet; tests route to other ports).
    pub port: u16,
    /// Name we give in EHLO; defaults to `hostname`.
    pub helo_name: Option<String>,
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub connect_timeout: Duration,
    /// Wait for a peer's reply to one command (RFC 5321 §4.5.3.2 gives 5 minutes as the floor for most).
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub command_timeout: Duration,
    /// Wait for the reply after the final dot (RFC 5321 §4.5.3.2.6: 10 minutes).
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub data_timeout: Duration,
    /// How long an idle connection is kept for the next message to the same destination.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub idle_timeout: Duration,
    /// Transactions sent over one connection before it is closed.
    pub max_messages_per_connection: usize,
    /// Trust anchors for PKIX authentication of peers.
    pub pkix_roots: RootStore,
    /// Whether recipients at an address literal (`user@[192.0.2.1]`) are
    /// relayed: straight to that address, with no MX, DANE or MTA-STS, so
    /// at best `encrypted`.
    pub address_literals: bool,
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
            address_literals: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Resolvers as `ip:port`; empty means the system's /etc/resolv.conf.
    pub servers: Vec<SocketAddr>,
    /// DNSKEY records to anchor DNSSEC validation at; default: the IANA root
    /// keys built in from `certs/root-anchors.dnskey`.
    pub trust_anchor: Option<PathBuf>,
    /// How long one query to one server may take.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum RootStore {
    /// The Mozilla root program, built in (webpki-roots).
    Mozilla,
    /// The operating system's store.
    System,
    /// CA certificates from a PEM file.
    File(PathBuf),
}

impl From<RootStore> for String {
    fn from(r: RootStore) -> String {
        match r {
            RootStore::Mozilla => "mozilla".into(),
            RootStore::System => "system".into(),
            RootStore::File(path) => path.display().to_string(),
        }
    }
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
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MtaStsConfig {
    pub enabled: bool,
    /// Port of the policy host (443 on the Internet; tests use another).
    pub https_port: u16,
    /// Trust for the policy host's certificate; default: `outbound.pkix_roots`.
    pub roots: Option<RootStore>,
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub fetch_timeout: Duration,
    /// Largest policy accepted (RFC 8461 §3.3 suggests 64 KiB).
    pub max_policy_size: usize,
}

/// `[smime]`: confidential mail encrypted to a recipient certificate
/// imported with `sealgate certs import`, instead of the password envelope.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmimeConfig {
    /// Use recipient certificates for the confidential class (default on:
    /// with no certificate imported, nothing changes).
    pub encrypt: bool,
    /// Trust for recipient certificates; default: `outbound.pkix_roots`.
    pub roots: Option<RootStore>,
}

impl Default for SmimeConfig {
    fn default() -> Self {
        SmimeConfig {
            encrypt: true,
            roots: None,
        }
    }
}

/// Revocation checking of delivery peers' certificates (OCSP, CRL).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RevocationConfig {
    /// Time limit of one OCSP query or CRL download.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
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

/// A static route: mail for `domain` goes to `next_hop` instead of its MX.
#[derive(Debug, Clone, Deserialize, Serialize)]
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

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainPattern::Any => f.write_str("*"),
            DomainPattern::Exact(d) => f.write_str(d),
            DomainPattern::Subdomains(parent) => write!(f, "*.{parent}"),
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
        if s.starts_with('[') {
            return match crate::message::literal_ip(&s) {
                Some(ip) => Ok(DomainPattern::Exact(crate::message::literal(ip))),
                None => Err(format!(
                    "`{s}` is not an address literal ([192.0.2.1] or [IPv6:2001:db8::1])"
                )),
            };
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

macro_rules! serialize_display {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )*};
}
serialize_display!(DomainPattern, NextHop);
