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
use serde::{Deserialize, Deserializer, Serialize, Serializer};

mod console;
mod delivery;
mod listen;
mod read;
mod reload;
mod show;
mod storage;
mod tenant;

pub use console::*;
pub use delivery::*;
pub use listen::*;
pub use read::*;
pub use storage::*;
pub use tenant::*;

/// The whole configuration, as read from one file.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    pub smime: SmimeConfig,
    pub seal: SealConfig,
    pub spool: SpoolConfig,
    pub storage: StorageConfig,
    pub cluster: ClusterConfig,
    pub policy: PolicyConfig,
    pub report: ReportConfig,
    /// The web console and HTTP API (`[console]`); none: not served.
    pub console: Option<ConsoleConfig>,
    #[serde(rename = "route")]
    pub routes: Vec<Route>,
    #[serde(rename = "tenant")]
    pub tenants: Vec<Tenant>,
    /// Tenant of authenticated users that no tenant lists.
    pub default_tenant: String,
    /// Where mail to `<Postmaster>` goes (RFC 5321 §4.5.1: every SMTP
    /// server takes it, from anyone); unset, such mail is refused.
    pub postmaster: Option<String>,
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
            smime: SmimeConfig::default(),
            seal: SealConfig::default(),
            spool: SpoolConfig::default(),
            storage: StorageConfig::default(),
            cluster: ClusterConfig::default(),
            policy: PolicyConfig::default(),
            report: ReportConfig::default(),
            console: None,
            routes: Vec::new(),
            tenants: vec![Tenant {
                id: "default".into(),
                networks: vec![IpNet::from_str("127.0.0.0/8").expect("literal CIDR")],
                users: Vec::new(),
                client_certificates: Vec::new(),
                m365_tenant_id: None,
                sender_domains: Vec::new(),
                seal: TenantSeal::default(),
                retention: TenantRetention::default(),
                dkim: Vec::new(),
                view: RecipientView::default(),
            }],
            default_tenant: "default".into(),
            postmaster: None,
        }
    }
}

pub(super) fn default_hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// A configuration error, with where it is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path}: {message}")]
    Inconsistent { path: PathBuf, message: String },
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| FileError::read(path, e))?;
        Config::parse(&text, path)
    }

    /// Parses configuration text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = deserialize_toml(text)
            .map_err(|e| FileError::at(path, text, e.offset, e.key, e.message))?;
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
        if self.hostname.is_empty() || self.hostname.chars().any(|c| c.is_control() || c == ' ') {
            return Err(format!(
                "hostname {:?} must be a host name: it goes into EHLO, our Received: header and every bounce",
                self.hostname
            ));
        }
        let l = &self.limits;
        if l.max_connections == 0 || l.max_connections_per_client == 0 {
            return Err(
                "limits.max_connections and limits.max_connections_per_client must be at least 1: the gateway would accept no connection".into(),
            );
        }
        let o = &self.outbound;
        for (key, d) in [
            ("limits.command_timeout", l.command_timeout),
            ("limits.data_timeout", l.data_timeout),
            ("outbound.connect_timeout", o.connect_timeout),
            ("outbound.command_timeout", o.command_timeout),
            ("outbound.data_timeout", o.data_timeout),
        ] {
            if d.is_zero() {
                return Err(format!(
                    "{key} must be above zero: every wait would fail at once"
                ));
            }
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
        let node = &self.cluster.node;
        if node.is_empty() || node.len() > 63 || !node.chars().all(|c| c.is_ascii_graphic()) {
            return Err(format!(
                "cluster.node {node:?} must be 1 to 63 visible ASCII characters: it names this node in the log and to the other nodes"
            ));
        }
        if self.cluster.lease < Duration::from_secs(3) {
            return Err(
                "cluster.lease must be at least 3s: a node renews it a few times per lease, and a busy node must not lose its queue to a short pause".into(),
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
            if let Some(shared) = t.shared_cloud_rule()
                && !t.binds_certificate_clients()
            {
                return Err(format!(
                    "tenant `{}` admits clients by the certificate name `{shared}`, which every customer of that provider presents: bind the tenant with m365_tenant_id and/or sender_domains (docs/configuration.md)",
                    t.id
                ));
            }
            if t.matches_certificates_by_name() && self.tls.client_ca_file.is_none() {
                return Err(format!(
                    "tenant `{}` matches client certificates by subject or SAN, which needs tls.client_ca_file (anyone can make a self-signed certificate with any name)",
                    t.id
                ));
            }
        }
        if let Some(p) = &self.postmaster
            && crate::message::mailbox(p).is_err()
        {
            return Err(format!(
                "postmaster {p:?} must be an address local@domain: mail to <Postmaster> is relayed there"
            ));
        }
        if !self.tenants.iter().any(|t| t.id == self.default_tenant) {
            return Err(format!(
                "default_tenant `{}` is not one of the [[tenant]] ids",
                self.default_tenant
            ));
        }
        Ok(())
    }

    /// What is allowed but probably a mistake, in words for `config check`
    /// and the start-up log.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.postmaster.is_none() {
            out.push(
                "postmaster is not set: RCPT TO:<Postmaster>, which RFC 5321 §4.5.1 says every SMTP server accepts, is refused"
                    .into(),
            );
        }
        for t in &self.tenants {
            for n in &t.networks {
                let wide = match n {
                    IpNet::V4(v4) => v4.prefix_len() < 8,
                    IpNet::V6(v6) => v6.prefix_len() < 16,
                };
                if wide {
                    out.push(format!(
                        "tenant `{}`: network {n} covers a large part of the internet: everyone in it may relay through this gateway",
                        t.id
                    ));
                }
            }
            if t.matches_certificates_by_name()
                && !t.binds_certificate_clients()
                && self.public_client_ca()
            {
                out.push(format!(
                    "tenant `{}`: client certificates are matched by name against a public CA bundle ({}), and the tenant binds no sender_domains or m365_tenant_id: anyone who can buy a certificate for that name may relay",
                    t.id,
                    self.tls
                        .client_ca_file
                        .as_deref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                ));
            }
        }
        out
    }

    /// Whether `tls.client_ca_file` looks like a public CA bundle (many roots).
    fn public_client_ca(&self) -> bool {
        let Some(path) = &self.tls.client_ca_file else {
            return false;
        };
        std::fs::read_to_string(path)
            .map(|text| text.matches("-----BEGIN CERTIFICATE-----").count() > 20)
            .unwrap_or(false)
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

    /// What `tenant`'s recipients see of the protection (none: nothing).
    pub fn view(&self, tenant: &str) -> Option<&RecipientView> {
        self.tenants
            .iter()
            .find(|t| t.id == tenant)
            .map(|t| &t.view)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("t.toml"))
    }

    #[test]
    fn dangerous_settings_are_errors_or_warnings() {
        let err = |text: &str| parse(text).unwrap_err().to_string();
        assert!(err("hostname = \"gw.test\\r\\nX-Evil: 1\"\n").contains("host name"));
        assert!(err("[limits]\nmax_connections = 0\n").contains("max_connections"));
        assert!(err("[limits]\ncommand_timeout = \"0s\"\n").contains("limits.command_timeout"));
        assert!(err("[outbound]\ndata_timeout = \"0s\"\n").contains("outbound.data_timeout"));
        // Microsoft's sending certificate admits every Microsoft 365 tenant.
        let shared = "[tls]\nclient_ca_file = \"/etc/ssl/certs/ca-certificates.crt\"\n\
                      [[tenant]]\nid = \"default\"\n\
                      client_certificates = [{ san = \"mail.protection.outlook.com\" }]\n";
        assert!(err(shared).contains("m365_tenant_id"), "{}", err(shared));
        let bound = format!("{shared}m365_tenant_id = \"tid\"\n");
        assert!(parse(&bound).is_ok());
        let pm = "postmaster = \"hostmaster@gw.test\"\n";
        let open = parse(&format!(
            "{pm}[[tenant]]\nid = \"default\"\nnetworks = [\"0.0.0.0/0\"]\n"
        ))
        .unwrap();
        assert!(
            open.warnings()[0].contains("0.0.0.0/0"),
            "{:?}",
            open.warnings()
        );
        assert!(parse(pm).unwrap().warnings().is_empty());
        assert!(parse("").unwrap().warnings()[0].contains("Postmaster"));
        assert!(err("postmaster = \"nobody\"\n").contains("postmaster"));
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
