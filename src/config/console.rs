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
