//! `[[listener]]`, `[tls]`, `[auth]`, `[limits]`: how mail comes in.

use super::*;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `ip:port` to bind.
    pub address: SocketAddr,
    pub mode: ListenerMode,
    #[serde(default)]
    pub tls: ListenerTls,
}

/// What a listener is for: decides how relaying is authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerMode {
    /// Port 25 style: clients are trusted by network, client certificate or AUTH.
    Relay,
    /// Port 587 style (RFC 6409): only authenticated users (or client certificates) may send.
    Submission,
}

/// How TLS is offered on a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
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

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
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

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// File of `user:argon2-hash` lines; AUTH is not offered when unset.
    pub users_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest accepted message in bytes (advertised with SIZE).
    pub max_message_size: usize,
    /// Recipients per message.
    pub max_recipients: usize,
    /// Longest line inside DATA, in bytes without CRLF.
    pub max_line_length: usize,
    /// How long we wait for the next command.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub command_timeout: Duration,
    /// How long we wait for the next chunk of message data.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
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
