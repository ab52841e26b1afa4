//! `[console]`: the web console, the HTTP API and the metrics endpoints.

use super::*;

/// The console's HTTPS listener. Absent from a file: no console; the
/// embedded default configuration (no file) turns it on.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    pub address: SocketAddr,
    /// PEM certificate chain; default: the `[tls]` one (generated on first
    /// start when that is not set either).
    pub certificate: Option<PathBuf>,
    pub private_key: Option<PathBuf>,
    /// Who may read `/metrics`, `/healthz` and `/readyz` without logging in.
    pub open_to: Vec<IpNet>,
    /// A console session ends after this long without a request.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub idle_timeout: Duration,
    /// Serve the gateway's MTA-STS policy file (RFC 8461 §3.2) at
    /// `/.well-known/mta-sts.txt` in this mode; absent: not served.
    pub mta_sts_mode: Option<PublishedStsMode>,
    /// Accept TLS-RPT reports (RFC 8460 §3) POSTed to `/tlsrpt` by any
    /// sender, for the Reports page.
    pub tlsrpt_receive: bool,
}

/// The mode of the policy the gateway publishes for its own domains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishedStsMode {
    /// Senders report failures but deliver anyway: start here.
    Testing,
    /// Senders refuse to deliver over a connection that fails the policy.
    Enforce,
}

impl PublishedStsMode {
    pub fn name(self) -> &'static str {
        match self {
            PublishedStsMode::Testing => "testing",
            PublishedStsMode::Enforce => "enforce",
        }
    }

    /// The policy file (RFC 8461 §3.2) naming `host` as the one MX, with
    /// a week's max_age.
    pub fn policy_file(self, host: &str) -> String {
        format!(
            "version: STSv1\nmode: {}\nmx: {}\nmax_age: 604800\n",
            self.name(),
            host.trim_end_matches('.')
        )
    }
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            address: SocketAddr::from(([127, 0, 0, 1], 8443)),
            certificate: None,
            private_key: None,
            open_to: vec![
                IpNet::from_str("127.0.0.0/8").expect("literal CIDR"),
                IpNet::from_str("::1/128").expect("literal CIDR"),
            ],
            idle_timeout: Duration::from_secs(30 * 60),
            mta_sts_mode: None,
            tlsrpt_receive: false,
        }
    }
}

impl Config {
    /// What `sealgate serve` runs without a configuration file.
    pub fn embedded() -> Config {
        Config {
            console: Some(ConsoleConfig::default()),
            ..Config::default()
        }
    }

    /// The console's database: an index of the log, rebuilt when deleted.
    pub fn console_index_path(&self) -> PathBuf {
        self.data_dir.join("console.db")
    }
}
