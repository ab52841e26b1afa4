//! `[[tenant]]` with its clients, retention and sealed-delivery words;
//! `[seal]`, `[spool]`, `[policy]`, `[report]`: what is done per tenant and
//! with the evidence.

use super::*;

/// One customer of the gateway: who may relay as it, and what it owns.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    /// For clients admitted by certificate: the customer's Microsoft 365
    /// tenant id, which `X-MS-Exchange-CrossTenant-Id` must carry.
    /// Microsoft sends every tenant's mail with one certificate, so the
    /// certificate alone admits the whole world's Microsoft 365 tenants.
    #[serde(default)]
    pub m365_tenant_id: Option<String>,
    /// For clients admitted by certificate: the sender domains they may
    /// use (`MAIL FROM`); empty: any.
    #[serde(default)]
    pub sender_domains: Vec<String>,
    /// Sealed delivery for this tenant's mail.
    #[serde(default)]
    pub seal: TenantSeal,
    /// How long this tenant's log records and finished messages are kept.
    #[serde(default)]
    pub retention: TenantRetention,
    /// DKIM keys: mail of this tenant whose `From:` is in one of these
    /// domains is signed at the gateway (docs/configuration.md).
    #[serde(default)]
    pub dkim: Vec<TenantDkim>,
    /// What the recipients see of the protection (crate::view).
    #[serde(default)]
    pub view: RecipientView,
}

/// `[tenant.view]`: the transport header and the subject tag.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecipientView {
    /// Add a `Sealgate-Transport:` header (level, checks) to what is delivered.
    pub header: bool,
    /// Tag the subject of mail whose recipients are all high or confidential.
    pub subject_tag: bool,
    /// `en` (default) or `de`: the words of the default tags.
    #[serde(deserialize_with = "seal_language_opt")]
    pub language: Option<String>,
    /// Own words for high mail (default `[qualified TLS]`).
    pub high_tag: Option<String>,
    /// Own words for confidential mail (default `[end-to-end encrypted]`).
    pub confidential_tag: Option<String>,
}

/// One DKIM signing key of a tenant (`[[tenant.dkim]]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantDkim {
    /// The `d=` domain: mail whose `From:` address is in it is signed.
    pub domain: String,
    /// The `s=` selector: the key is published at `SELECTOR._domainkey.DOMAIN`.
    pub selector: String,
    /// PKCS#8 PEM private key (Ed25519 or RSA), as `sealgate dkim keygen` writes.
    pub key: std::path::PathBuf,
}

/// Certificate names that many customers share (a cloud provider's
/// sending certificate): a rule naming one admits every customer of that
/// provider unless the tenant binds its own.
pub const SHARED_CLOUD_NAMES: &[&str] = &[
    "mail.protection.outlook.com",
    "outbound.protection.outlook.com",
    "smtp-relay.gmail.com",
];

impl Tenant {
    /// Whether certificate clients are bound to this customer beyond the
    /// certificate: its Microsoft 365 tenant id or its sender domains.
    pub fn binds_certificate_clients(&self) -> bool {
        self.m365_tenant_id.is_some() || !self.sender_domains.is_empty()
    }

    /// Whether a rule matches client certificates by subject or SAN (which
    /// needs a CA to verify the chain), not by pinning one certificate.
    pub fn matches_certificates_by_name(&self) -> bool {
        self.client_certificates
            .iter()
            .any(|r| !matches!(r, ClientCertRule::Sha256(_)))
    }

    /// A by-name rule that names a shared cloud certificate, if any.
    pub fn shared_cloud_rule(&self) -> Option<&str> {
        self.client_certificates.iter().find_map(|r| {
            let name = match r {
                ClientCertRule::San(n) | ClientCertRule::Subject(n) => n.to_ascii_lowercase(),
                ClientCertRule::Sha256(_) => return None,
            };
            SHARED_CLOUD_NAMES
                .iter()
                .find(|shared| name.contains(*shared))
                .copied()
        })
    }
}

/// `[tenant.retention]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRetention {
    /// Remove transaction-log records older than this many days (0: keep
    /// them); a `pruned` record keeps the chain verifiable.
    #[serde(default)]
    pub log_days: u32,
    /// Keep a finished message's content this long (default: `spool.hold_delivered`).
    #[serde(
        default,
        deserialize_with = "duration_opt",
        serialize_with = "ser_duration_opt"
    )]
    pub hold_delivered: Option<Duration>,
}

/// `[tenant.seal]`: language and words of sealed mail, and the password's way.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
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

/// How a TLS client certificate is recognised (e.g. a Microsoft 365 outbound connector).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum ClientCertRule {
    /// SHA-256 of the DER certificate, hex, colons optional. Pins this exact certificate.
    Sha256(#[serde(deserialize_with = "fingerprint", serialize_with = "ser_fingerprint")] [u8; 32]),
    /// Exact subject distinguished name, e.g. `CN=mail.example.com, O=Example`; the chain must verify against `tls.client_ca_file`.
    Subject(String),
    /// A DNS name in the subjectAltName; the chain must verify against `tls.client_ca_file`.
    San(String),
}

/// The password envelope (docs/envelope-format.md).
#[derive(Debug, Clone, Deserialize, Serialize)]
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

pub(super) fn seal_language<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let lang = String::deserialize(d)?;
    if crate::seal::opener::Texts::for_language(&lang).is_none() {
        return Err(serde::de::Error::custom(format!(
            "no texts for language {lang:?}; sealgate ships en and de"
        )));
    }
    Ok(lang)
}

pub(super) fn seal_iterations<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    use crate::seal::envelope::{MAX_ITERATIONS, MIN_ITERATIONS};
    let n = u32::deserialize(d)?;
    if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&n) {
        return Err(serde::de::Error::custom(format!(
            "iterations must be between {MIN_ITERATIONS} and {MAX_ITERATIONS}"
        )));
    }
    Ok(n)
}

pub(super) fn seal_language_opt<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    seal_language(d).map(Some)
}

pub(super) fn level_opt<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<crate::qualify::Level>, D::Error> {
    let s = String::deserialize(d)?;
    s.parse::<crate::qualify::Level>()
        .map(Some)
        .map_err(serde::de::Error::custom)
}

pub(super) fn fingerprint<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
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

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Keep message content this long after the last recipient is done (0: delete at once).
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub hold_delivered: Duration,
    /// The key that encrypts the spool's data keys (spool::at_rest). Unset:
    /// the systemd credential `spool.key` if there is one, else
    /// `data_dir/spool.key`, made on first start.
    pub key_file: Option<PathBuf>,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            hold_delivered: Duration::ZERO,
            key_file: None,
        }
    }
}

/// Where the risk-class rules come from, and how the domain memory acts
/// (docs/policies.md).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Directory of `*.toml` policy files; none: the built-in
    /// `policies/default.toml`. Reloaded on SIGHUP.
    pub dir: Option<PathBuf>,
    /// How long a downgrade (a domain that reached a level before and less
    /// now) holds high-class mail before it is sealed as usual.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub downgrade_hold: Duration,
    /// Longest a host's verdict is remembered for ordering hosts and the
    /// risk view (DNS TTLs and revocation nextUpdate may cut it shorter).
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub verdict_cache_max: Duration,
    /// Whether a `TLS-Required: No` header (RFC 8689 §5) lets normal-class
    /// mail travel without TLS where no DANE or MTA-STS policy forbids it.
    /// Never for high or confidential mail.
    pub honour_tls_required_no: bool,
    /// What mail of an always-sealed class (confidential) needs when its
    /// content is already end-to-end encrypted (S/MIME, PGP/MIME): a level,
    /// or `"sealed"` (here `None`) to seal it all the same (policy::e2e).
    #[serde(
        deserialize_with = "level_or_sealed",
        serialize_with = "ser_level_or_sealed"
    )]
    pub encrypted_content_requires: Option<crate::qualify::Level>,
    /// Whether inline PGP armour (a weaker signal) counts as encrypted.
    pub inline_pgp_counts: bool,
}

fn level_or_sealed<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<crate::qualify::Level>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().eq_ignore_ascii_case("sealed") {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "`{s}` is not a level (plaintext, encrypted, authenticated, qualified) or sealed"
        ))
    })
}

fn ser_level_or_sealed<S: serde::Serializer>(
    l: &Option<crate::qualify::Level>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match l {
        Some(l) => s.serialize_str(l.name()),
        None => s.serialize_str("sealed"),
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            dir: None,
            downgrade_hold: Duration::from_secs(24 * 3600),
            verdict_cache_max: Duration::from_secs(3600),
            honour_tls_required_no: true,
            encrypted_content_requires: Some(crate::qualify::Level::Encrypted),
            inline_pgp_counts: false,
        }
    }
}

/// `[report]`: what the gateway reports by itself.
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
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
