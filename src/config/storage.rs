//! `[storage]` and `[cluster]`: where the queue and the log live, and who
//! this node is when several share them.

use super::*;

/// Where state lives. Without a URL: the SQLite database in `data_dir`,
/// for one node; with one, the PostgreSQL database that every node of a
/// cluster shares (docs/cluster.md).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `postgres://user@host/db` or `host=… dbname=…`. The environment
    /// variable `SEALGATE_STORAGE_URL` wins, so that a password need not
    /// sit in this file. Shown with its password hidden.
    #[serde(serialize_with = "ser_url")]
    pub url: Option<String>,
    /// PEM file of the certificate(s) that sign PostgreSQL's, when the
    /// URL says `sslmode=require`; without it, the system's trust store.
    pub ca: Option<PathBuf>,
}

/// This node among those that share one database.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Unique among the live nodes; default: the host name.
    pub node: String,
    /// How long a node may miss its heartbeat before the others take over
    /// its queue. Shorter: faster takeover; too short: a node that is slow
    /// for a moment loses its jobs and some mail goes out twice.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub lease: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node: default_hostname(),
            lease: Duration::from_secs(30),
        }
    }
}

/// The variable that sets `[storage] url` from the environment.
pub const STORAGE_URL_ENV: &str = "SEALGATE_STORAGE_URL";

impl Config {
    /// The shared database, if any: the environment first, then the file.
    pub fn storage_url(&self) -> Option<String> {
        std::env::var(STORAGE_URL_ENV)
            .ok()
            .filter(|u| !u.trim().is_empty())
            .or_else(|| self.storage.url.clone())
    }
}

/// A storage URL for people to read: any password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    if let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    {
        let scheme = &url[..url.len() - rest.len()];
        // user:password@host — the last '@' ends the credentials.
        if let Some(at) = rest.rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            return format!("{scheme}{}:***{}", &rest[..colon], &rest[at..]);
        }
        return url.to_string();
    }
    // key=value form.
    url.split_whitespace()
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => kv.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn ser_url<S: Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(u) => s.serialize_some(&redact_url(u)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_storage_urls_are_hidden() {
        assert_eq!(
            redact_url("postgres://sg:s3cr@t@db.example:5432/sealgate"),
            "postgres://sg:***@db.example:5432/sealgate"
        );
        assert_eq!(
            redact_url("postgres://sg@db/sealgate"),
            "postgres://sg@db/sealgate"
        );
        assert_eq!(
            redact_url("host=db user=sg password=x dbname=s"),
            "host=db user=sg password=*** dbname=s"
        );
    }
}
