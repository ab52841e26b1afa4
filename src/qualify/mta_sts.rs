//! MTA-STS (RFC 8461): a domain's published promise that its MX hosts
//! speak TLS with PKIX-valid certificates for the listed names.
//!
//! Discovery: the `_mta-sts.<domain>` TXT record names a policy id; the
//! policy itself comes over HTTPS from `mta-sts.<domain>` (PKIX-validated,
//! no redirects, size and time limits) and is cached by id for its max_age,
//! in the database when the gateway runs, so a later failed or forged
//! lookup cannot make sealgate forget it (§5.1). A policy is refetched when
//! the TXT id changes or it is within a day of expiry.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::config::MtaStsConfig;
use crate::dns::{Dns, DnsError};
use crate::qualify::pkix::Roots;
use crate::tables::Tables;

/// Why a policy record, a policy or its fetch was not good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MtaStsError {
    /// The `_mta-sts` TXT record (§3.1).
    #[error("{0}")]
    Record(String),
    /// The policy body (§3.2).
    #[error("{0}")]
    Policy(String),
    /// The HTTPS fetch (§3.3).
    #[error("{0}")]
    Fetch(String),
    /// The HTTPS client or the cache could not be set up.
    #[error("{0}")]
    Setup(String),
}

/// Policy mode (§5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Testing,
    None,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub id: String,
    pub mode: Mode,
    /// MX patterns: a host name, or `*.` plus a domain for one more label.
    pub mx: Vec<String>,
    pub max_age: u64,
    /// Unix seconds when this copy stops being valid.
    pub expires: i64,
}

impl Policy {
    /// §4.1: does the MX host match one of the policy's `mx` patterns?
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|p| match p.strip_prefix("*.") {
            Some(base) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == base),
            None => *p == host,
        })
    }
}

/// The `id` of a `v=STSv1` TXT record (§3.1); exactly one such record counts.
pub fn parse_txt(records: &[String]) -> Result<String, MtaStsError> {
    let sts: Vec<&String> = records
        .iter()
        .filter(|r| r.starts_with("v=STSv1;") || r.as_str() == "v=STSv1")
        .collect();
    let record = match sts.as_slice() {
        [one] => one,
        [] => return Err(MtaStsError::Record("no v=STSv1 record".into())),
        _ => {
            return Err(MtaStsError::Record(
                "more than one v=STSv1 record (RFC 8461 §3.1)".into(),
            ));
        }
    };
    for field in record.split(';').map(str::trim) {
        if let Some(id) = field.strip_prefix("id=") {
            let ok =
                !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric());
            return if ok {
                Ok(id.to_string())
            } else {
                Err(MtaStsError::Record(format!("bad id `{id}`")))
            };
        }
    }
    Err(MtaStsError::Record("record has no id".into()))
}

/// Parses a policy body (§3.2).
pub fn parse_policy(text: &str, id: &str, now: i64) -> Result<Policy, MtaStsError> {
    let mut version = None;
    let mut mode = None;
    let mut max_age = None;
    let mut mx = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(MtaStsError::Policy(format!(
                "line `{line}` is not `key: value`"
            )));
        };
        let value = value.trim();
        match key.trim() {
            "version" => version = Some(value.to_string()),
            "mode" => {
                mode = Some(match value {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    other => return Err(MtaStsError::Policy(format!("unknown mode `{other}`"))),
                })
            }
            "max_age" => {
                let v: u64 = value.parse().map_err(|_| {
                    MtaStsError::Policy(format!("max_age `{value}` is not a number"))
                })?;
                // §3.2: at most 31557600 seconds (one year).
                max_age = Some(v.min(31_557_600));
            }
            "mx" => mx.push(value.trim_end_matches('.').to_ascii_lowercase()),
            // §3.2: unknown fields are ignored.
            _ => {}
        }
    }
    if version.as_deref() != Some("STSv1") {
        return Err(MtaStsError::Policy("version is not STSv1".into()));
    }
    let mode = mode.ok_or(MtaStsError::Policy("no mode".into()))?;
    let max_age = max_age.ok_or(MtaStsError::Policy("no max_age".into()))?;
    if mx.is_empty() && mode != Mode::None {
        return Err(MtaStsError::Policy("no mx patterns".into()));
    }
    Ok(Policy {
        id: id.to_string(),
        mode,
        mx,
        max_age,
        expires: now.saturating_add(max_age as i64),
    })
}

/// Finds and caches policies.
pub struct MtaSts {
    dns: Dns,
    http: reqwest::Client,
    port: u16,
    max_size: usize,
    memory: Mutex<HashMap<String, Policy>>,
    tables: Option<Tables>,
}

/// The cache's table in a node's SQLite file (a cluster's is a migration
/// of its database): policies outlive a restart, and in a cluster a policy
/// one node fetched protects the others' first delivery too (§5.1).
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS mta_sts_policies (
    domain TEXT PRIMARY KEY, id TEXT NOT NULL, body TEXT NOT NULL,
    expires INTEGER NOT NULL)";

/// How a failed policy fetch begins its detail (TLS-RPT reports it as
/// `sts-policy-fetch-error`).
pub const FETCH_FAILED: &str = "policy fetch failed";

/// What discovery found for a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// No policy: MTA-STS does not apply.
    None(String),
    Policy(Policy, String),
}

impl MtaSts {
    /// `tables`: where policies are kept across restarts (with
    /// [`SCHEMA`]); `None` keeps them in memory only (`sealgate check`).
    pub fn new(
        config: &MtaStsConfig,
        roots: &Roots,
        dns: Dns,
        tables: Option<Tables>,
    ) -> Result<MtaSts, MtaStsError> {
        let mut store = rustls::RootCertStore::empty();
        store.extend(roots.anchors().iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(crate::qualify::bsi::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| MtaStsError::Setup(e.to_string()))?
            .with_root_certificates(store)
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(true)
            // §3.3: redirects are not followed.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.fetch_timeout)
            .no_proxy()
            .dns_resolver(Arc::new(Resolver(dns.clone())))
            .build()
            .map_err(|e| MtaStsError::Setup(format!("HTTPS client: {e}")))?;
        Ok(MtaSts {
            dns,
            http,
            port: config.https_port,
            max_size: config.max_policy_size,
            memory: Mutex::new(HashMap::new()),
            tables,
        })
    }

    /// The policy in force for `domain`, fetching or refreshing as needed.
    pub async fn discover(&self, domain: &str) -> Discovery {
        let now = chrono::Utc::now().timestamp();
        let cached = self.cached(domain, now).await;
        let txt = self.dns.txt(&format!("_mta-sts.{domain}")).await;
        let id = match txt {
            Ok(answer) => match parse_txt(&answer.value) {
                Ok(id) => id,
                Err(e) => return self.keep(cached, format!("_mta-sts TXT: {e}")),
            },
            Err(e @ DnsError::NoRecords { .. }) | Err(e @ DnsError::NoSuchDomain { .. }) => {
                return self.keep(cached, format!("no _mta-sts TXT record ({e})"));
            }
            Err(e) => return self.keep(cached, format!("_mta-sts TXT lookup failed: {e}")),
        };
        if let Some(p) = &cached
            && p.id == id
            && p.expires - now > 86_400
        {
            return Discovery::Policy(p.clone(), format!("cached policy id {id}"));
        }
        match self.fetch(domain, &id, now).await {
            Ok((policy, body)) => {
                self.store(domain, &policy, &body).await;
                Discovery::Policy(policy, format!("policy id {id} fetched"))
            }
            Err(e) => self.keep(cached, format!("{FETCH_FAILED}: {e}")),
        }
    }

    /// §5.1: when discovery fails, an unexpired cached policy still holds.
    fn keep(&self, cached: Option<Policy>, why: String) -> Discovery {
        match cached {
            Some(p) => Discovery::Policy(p, format!("{why}; using the cached policy")),
            None => Discovery::None(why),
        }
    }

    async fn fetch(
        &self,
        domain: &str,
        id: &str,
        now: i64,
    ) -> Result<(Policy, String), MtaStsError> {
        let url = format!(
            "https://mta-sts.{domain}:{}/.well-known/mta-sts.txt",
            self.port
        );
        let mut response =
            self.http.get(&url).send().await.map_err(|e| {
                MtaStsError::Fetch(format!("{url}: {}", crate::util::error_chain(&e)))
            })?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(MtaStsError::Fetch(format!(
                "{url}: HTTP {}",
                response.status()
            )));
        }
        let text_plain = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("text/plain"));
        if !text_plain {
            return Err(MtaStsError::Fetch(format!(
                "{url}: media type is not text/plain (RFC 8461 §3.3)"
            )));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| MtaStsError::Fetch(format!("{url}: {e}")))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > self.max_size {
                return Err(MtaStsError::Fetch(format!(
                    "{url}: policy larger than {} bytes",
                    self.max_size
                )));
            }
        }
        let body = String::from_utf8(body)
            .map_err(|_| MtaStsError::Fetch(format!("{url}: policy is not UTF-8")))?;
        let policy =
            parse_policy(&body, id, now).map_err(|e| MtaStsError::Fetch(format!("{url}: {e}")))?;
        Ok((policy, body))
    }

    async fn cached(&self, domain: &str, now: i64) -> Option<Policy> {
        if let Some(p) = self.memory.lock().ok()?.get(domain).cloned()
            && p.expires > now
        {
            return Some(p);
        }
        let row = self
            .tables
            .as_ref()?
            .row(
                "SELECT id, body, expires FROM mta_sts_policies WHERE domain = ?1",
                &[domain.into()],
            )
            .await
            .inspect_err(|e| tracing::warn!(%domain, "cannot read the MTA-STS policy cache: {e}"))
            .ok()??;
        let mut row = row.into_iter();
        let (id, body, expires) = (row.next()?.text()?, row.next()?.text()?, row.next()?.int()?);
        let mut policy = parse_policy(&body, &id, now).ok()?;
        policy.expires = expires;
        if let Ok(mut m) = self.memory.lock() {
            m.insert(domain.to_string(), policy.clone());
        }
        (expires > now).then_some(policy)
    }

    async fn store(&self, domain: &str, policy: &Policy, body: &str) {
        if let Ok(mut m) = self.memory.lock() {
            m.insert(domain.to_string(), policy.clone());
        }
        let Some(tables) = &self.tables else { return };
        let result = tables
            .execute(
                "INSERT INTO mta_sts_policies (domain, id, body, expires) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (domain) DO UPDATE
                 SET id = excluded.id, body = excluded.body, expires = excluded.expires",
                &[
                    domain.into(),
                    policy.id.clone().into(),
                    body.into(),
                    policy.expires.into(),
                ],
            )
            .await;
        if let Err(e) = result {
            tracing::warn!(%domain, "could not store the MTA-STS policy: {e}");
        }
    }
}

/// Resolves the policy host through our own resolver.
pub(crate) struct Resolver(pub(crate) Dns);

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let dns = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let answer = dns
                .addresses(&host)
                .await
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            let addrs: Vec<SocketAddr> = answer
                .value
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 0))
                .collect();
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc8461_3_1_txt_record() {
        assert_eq!(
            parse_txt(&["v=STSv1; id=20160831085700Z;".into()]).unwrap(),
            "20160831085700Z"
        );
        assert!(parse_txt(&["v=STSv1; id=a".into(), "v=STSv1; id=b".into()]).is_err());
        assert!(parse_txt(&["v=spf1 -all".into()]).is_err());
        assert!(parse_txt(&["v=STSv1; id=bad-id".into()]).is_err());
    }

    #[test]
    fn rfc8461_3_2_policy_and_4_1_mx_patterns() {
        let text = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n";
        let p = parse_policy(text, "1", 0).unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.expires, 604_800);
        assert!(p.matches("mail.example.com"));
        assert!(p.matches("MX1.example.net."));
        assert!(!p.matches("example.net"), "a wildcard needs one more label");
        assert!(!p.matches("a.b.example.net"), "and only one");
        assert!(!p.matches("mail.example.org"));
        assert!(
            parse_policy(
                "version: STSv1\nmode: sometimes\nmx: a\nmax_age: 1\n",
                "1",
                0
            )
            .is_err()
        );
        assert!(parse_policy("mode: enforce\nmx: a\nmax_age: 1\n", "1", 0).is_err());
        let long =
            parse_policy("version: STSv1\nmode: none\nmax_age: 99999999999\n", "1", 0).unwrap();
        assert_eq!(long.max_age, 31_557_600);
    }
}
