//! `policies/*.toml` → a [`Policy`] per tenant: the rules that give each
//! message its [`RiskClass`], what each class requires of the transport,
//! and the profiles and exceptions of recipient domains.
//!
//! Rules do not compete by order: every rule that matches proposes a class
//! and the highest wins, so adding a file can raise a message's class but
//! never lower it by accident (docs/policies.md). Errors name the file,
//! the line and the key, like the configuration's.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::IpNet;
use mail_parser::{MessageParser, MimeHeaders};
use serde::{Deserialize, Deserializer};
use toml::Spanned;
use wildmatch::WildMatch;

use super::{Fallback, Required, Requirement, RiskClass};
use crate::config::{
    DayEdge, DomainPattern, FileError, deserialize_toml, key_prefix, parse_instant,
};
use crate::qualify::Level;
use crate::util::rfc3339;

/// The policy shipped in the binary: `policies/default.toml`.
pub const BUILTIN: &str = include_str!("../../policies/default.toml");
const BUILTIN_NAME: &str = "(built-in policies/default.toml)";

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{0}: no policy files (*.toml) in this directory")]
    Empty(PathBuf),
    #[error("{second}: `{key}` is already set by {first}{scope}; set it in one file only")]
    Conflict {
        key: String,
        first: PathBuf,
        second: PathBuf,
        scope: String,
    },
}

/// Every tenant's policy, as loaded from one directory.
#[derive(Debug)]
pub struct PolicySet {
    general: Arc<Policy>,
    tenants: HashMap<String, Arc<Policy>>,
    /// The files read, in order (for the log and `domains show`).
    pub files: Vec<PathBuf>,
}

impl PolicySet {
    /// The policy compiled into the binary (no `policy.dir`).
    pub fn builtin() -> PolicySet {
        PolicySet::from_files(vec![(PathBuf::from(BUILTIN_NAME), BUILTIN.to_string())])
            .expect("the built-in policy parses (unit test)")
    }

    /// Reads every `*.toml` directly in `dir`, in name order.
    pub fn load(dir: &Path) -> Result<PolicySet, PolicyError> {
        let read = |e| FileError::read(dir, e);
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(read)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(PolicyError::Empty(dir.to_path_buf()));
        }
        let mut files = Vec::new();
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|e| FileError::read(&path, e))?;
            files.push((path, text));
        }
        PolicySet::from_files(files)
    }

    /// Builds the set from `(path, text)` pairs; the paths are only used in messages.
    pub fn from_files(files: Vec<(PathBuf, String)>) -> Result<PolicySet, PolicyError> {
        let mut parsed = Vec::new();
        // Which file set each setting, per scope: two files of one scope
        // setting the same key would make the result depend on file names.
        let mut setters: HashMap<(Option<String>, String), PathBuf> = HashMap::new();
        for (path, text) in &files {
            let file = parse_file(text, path)?;
            for key in file.settings() {
                let scope = (file.tenant.clone(), key.clone());
                if let Some(first) = setters.get(&scope) {
                    return Err(PolicyError::Conflict {
                        key,
                        first: first.clone(),
                        second: path.clone(),
                        scope: file
                            .tenant
                            .as_ref()
                            .map(|t| format!(" for tenant {t}"))
                            .unwrap_or_default(),
                    });
                }
                setters.insert(scope, path.clone());
            }
            parsed.push((path.clone(), file));
        }
        let mut general = Policy::default();
        for (_, f) in parsed.iter().filter(|(_, f)| f.tenant.is_none()) {
            general.add(f);
        }
        let mut tenants = HashMap::new();
        for (_, f) in &parsed {
            let Some(t) = &f.tenant else { continue };
            let policy = tenants
                .entry(t.clone())
                .or_insert_with(|| Policy::tenant_over(&general));
            policy.add(f);
        }
        Ok(PolicySet {
            general: Arc::new(general),
            tenants: tenants.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
            files: files.into_iter().map(|(p, _)| p).collect(),
        })
    }

    /// The policy of a tenant: its own files over the general ones.
    pub fn for_tenant(&self, tenant: &str) -> Arc<Policy> {
        self.tenants.get(tenant).unwrap_or(&self.general).clone()
    }

    /// Every policy with its tenant (`None`: the general one).
    pub fn all(&self) -> Vec<(Option<&str>, &Policy)> {
        let mut v: Vec<(Option<&str>, &Policy)> = vec![(None, &self.general)];
        let mut names: Vec<&String> = self.tenants.keys().collect();
        names.sort();
        for n in names {
            v.push((Some(n.as_str()), &self.tenants[n]));
        }
        v
    }
}

/// What a class requires, and what happens below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassRule {
    pub required: Required,
    pub fallback: Fallback,
    pub accept_revocation_unavailable: bool,
}

/// Whose `X-Sealgate-Class` style header is believed.
#[derive(Debug, Clone)]
pub struct ClassHeader {
    /// Lower case.
    pub name: String,
    /// Besides authenticated clients (AUTH or certificate).
    pub trusted_networks: Vec<IpNet>,
}

/// One classification rule: every matcher it has must match.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub class: RiskClass,
    senders: Vec<AddressPattern>,
    recipients: Vec<AddressPattern>,
    /// Lower-case header name and a value pattern.
    header: Option<(String, WildMatch)>,
    /// As written (for removal); matched without regard to case.
    pub subject_tag: Option<String>,
    attachment: Option<WildMatch>,
    attachment_type: Option<WildMatch>,
}

/// A recipient domain's standing orders.
#[derive(Debug, Clone)]
pub struct DomainProfile {
    pub pattern: String,
    matcher: DomainPattern,
    pub min_class: Option<RiskClass>,
    /// A floor for the required level of every class.
    pub required: Option<Level>,
    pub note: Option<String>,
}

/// Permission to deliver to a domain below what its class requires, for a while.
#[derive(Debug, Clone)]
pub struct Exception {
    pub pattern: String,
    matcher: DomainPattern,
    pub level: Level,
    pub classes: Vec<RiskClass>,
    pub reason: String,
    pub approved_by: String,
    /// Unix seconds; the exception no longer applies from then on.
    pub expires: i64,
}

impl DomainProfile {
    pub fn matches(&self, domain: &str) -> bool {
        self.matcher.matches(domain)
    }
}

impl Exception {
    pub fn matches(&self, domain: &str) -> bool {
        self.matcher.matches(domain)
    }
}

/// One tenant's policy.
#[derive(Debug, Clone)]
pub struct Policy {
    classes: [ClassRule; 3],
    pub default_class: RiskClass,
    pub class_header: Option<ClassHeader>,
    pub rules: Vec<Rule>,
    pub domains: Vec<DomainProfile>,
    pub exceptions: Vec<Exception>,
}

impl Default for Policy {
    /// DESIGN.md's defaults: normal → encrypted (else wait), high →
    /// qualified (else seal), confidential → always sealed.
    fn default() -> Policy {
        let rule = |required, fallback, accept| ClassRule {
            required,
            fallback,
            accept_revocation_unavailable: accept,
        };
        Policy {
            classes: [
                rule(Required::Level(Level::Encrypted), Fallback::Defer, true),
                rule(Required::Level(Level::Qualified), Fallback::Seal, false),
                rule(Required::Sealed, Fallback::Seal, false),
            ],
            default_class: RiskClass::Normal,
            class_header: None,
            rules: Vec::new(),
            domains: Vec::new(),
            exceptions: Vec::new(),
        }
    }
}

/// How much of a message classification needs parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    Nothing,
    Headers,
    /// The whole MIME tree, for attachment names and types.
    Attachments,
}

/// What classification looks at in a message's content (parsed once).
#[derive(Debug, Default)]
pub struct Facts {
    /// Lower-case name, unfolded raw value.
    headers: Vec<(String, String)>,
    subject: Option<String>,
    /// Lower-case file name and content type.
    attachments: Vec<(String, String)>,
}

impl Facts {
    /// Parses what the rules need; a message mail-parser cannot read has
    /// no headers or attachments to match (the default class applies).
    pub fn parse(raw: &[u8], reads: Reads) -> Facts {
        let parser = MessageParser::default();
        let parsed = match reads {
            Reads::Nothing => None,
            // Headers alone do not decode the MIME tree of the body.
            Reads::Headers => parser.parse_headers(raw),
            Reads::Attachments => parser.parse(raw),
        };
        let Some(m) = parsed else {
            return Facts::default();
        };
        let headers = m
            .headers_raw()
            .map(|(n, v)| (n.to_ascii_lowercase(), unfold(v)))
            .collect();
        let subject = m.subject().map(str::to_string);
        let attachments = m
            .attachments()
            .map(|p| {
                let name = p.attachment_name().unwrap_or_default().to_lowercase();
                let ctype = p
                    .content_type()
                    .map(|ct| match ct.subtype() {
                        Some(sub) => format!("{}/{sub}", ct.ctype()),
                        None => ct.ctype().to_string(),
                    })
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                (name, ctype)
            })
            .collect();
        Facts {
            headers,
            subject,
            attachments,
        }
    }
}

fn unfold(v: &str) -> String {
    v.split(['\r', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The class of a message for one recipient, with the rules that gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    pub class: RiskClass,
    /// Rule names (or "class header", "default"), for the log.
    pub by: Vec<String>,
    /// Subject tags of the rules that matched: removed before sending.
    pub tags: Vec<String>,
}

impl Policy {
    fn tenant_over(general: &Policy) -> Policy {
        // A tenant inherits the general table and defaults, and adds its
        // own rules, profiles and exceptions in front of the general ones.
        general.clone()
    }

    pub fn class_rule(&self, class: RiskClass) -> &ClassRule {
        &self.classes[class as usize]
    }

    /// How much of a message the rules read (no more is parsed).
    pub fn reads(&self) -> Reads {
        if self
            .rules
            .iter()
            .any(|r| r.attachment.is_some() || r.attachment_type.is_some())
        {
            Reads::Attachments
        } else if self.class_header.is_some()
            || self
                .rules
                .iter()
                .any(|r| r.header.is_some() || r.subject_tag.is_some())
        {
            Reads::Headers
        } else {
            Reads::Nothing
        }
    }

    /// Whether a client's class header is believed.
    pub fn trusts_class_header(&self, client: IpAddr, authenticated: bool) -> bool {
        self.class_header.as_ref().is_some_and(|h| {
            authenticated || h.trusted_networks.iter().any(|n| n.contains(&client))
        })
    }

    /// The class of the message for one recipient: the highest any rule gives.
    pub fn classify(
        &self,
        sender: &str,
        recipient: &str,
        content: &Facts,
        header_trusted: bool,
    ) -> Classified {
        let mut out = Classified {
            class: self.default_class,
            by: vec!["default".into()],
            tags: Vec::new(),
        };
        let mut raise = |class: RiskClass, by: String| {
            if class > out.class || out.by == ["default"] && class == out.class {
                out.class = class;
                out.by = vec![by];
            } else if class == out.class {
                out.by.push(by);
            }
        };
        for rule in &self.rules {
            if rule.matches(sender, recipient, content) {
                raise(rule.class, rule.name.clone());
                if let Some(tag) = &rule.subject_tag {
                    out.tags.push(tag.clone());
                }
            }
        }
        if header_trusted
            && let Some(h) = &self.class_header
            && let Some((_, value)) = content.headers.iter().find(|(n, _)| *n == h.name)
        {
            match value.parse::<RiskClass>() {
                Ok(class) => raise(class, format!("header {}", h.name)),
                Err(e) => tracing::warn!("ignoring class header {}: {e}", h.name),
            }
        }
        out
    }

    /// What the message needs for this recipient domain at `now`.
    pub fn requirement(&self, class: RiskClass, domain: &str, now: i64) -> Requirement {
        let mut basis = Vec::new();
        let profile = self.domains.iter().find(|d| d.matches(domain));
        let mut class = class;
        if let Some(p) = profile
            && let Some(min) = p.min_class
            && min > class
        {
            class = min;
            basis.push(format!("domain profile {}: at least {min}", p.pattern));
        }
        let rule = self.class_rule(class);
        let mut required = rule.required;
        if let Some(p) = profile
            && let Some(pin) = p.required
            && Required::Level(pin) > required
        {
            required = Required::Level(pin);
            basis.push(format!(
                "domain profile {}: pinned at {}",
                p.pattern,
                pin.name()
            ));
        }
        for e in self
            .exceptions
            .iter()
            .filter(|e| e.matches(domain) && e.classes.contains(&class))
        {
            if now >= e.expires {
                basis.push(format!(
                    "exception for {} expired {}, not applied",
                    e.pattern,
                    rfc3339(e.expires)
                ));
                continue;
            }
            if Required::Level(e.level) < required {
                required = Required::Level(e.level);
                basis.push(format!(
                    "exception for {}: {} suffices until {} ({}; approved by {})",
                    e.pattern,
                    e.level.name(),
                    rfc3339(e.expires),
                    e.reason,
                    e.approved_by
                ));
            }
            break;
        }
        Requirement {
            require_tls: false,
            end_to_end: None,
            class,
            required,
            fallback: rule.fallback,
            accept_revocation_unavailable: rule.accept_revocation_unavailable,
            basis,
        }
    }

    /// The profile and the exceptions that name a domain.
    pub fn standing(&self, domain: &str) -> (Option<&DomainProfile>, Vec<&Exception>) {
        (
            self.domains.iter().find(|d| d.matches(domain)),
            self.exceptions
                .iter()
                .filter(|e| e.matches(domain))
                .collect(),
        )
    }

    fn add(&mut self, f: &File) {
        if let Some(c) = f.default_class {
            self.default_class = c;
        }
        for (class, spec) in [
            (RiskClass::Normal, &f.classes.normal),
            (RiskClass::High, &f.classes.high),
            (RiskClass::Confidential, &f.classes.confidential),
        ] {
            let rule = &mut self.classes[class as usize];
            if let Some(r) = spec.required {
                rule.required = r;
            }
            if let Some(fb) = spec.fallback {
                rule.fallback = fb;
            }
            if let Some(a) = spec.accept_revocation_unavailable {
                rule.accept_revocation_unavailable = a;
            }
        }
        if let Some(h) = &f.class_header {
            self.class_header = Some(h.clone());
        }
        // A tenant's own entries go first: they win over general ones.
        let tenant = f.tenant.is_some();
        put_first(&mut self.domains, &f.domains, tenant);
        put_first(&mut self.exceptions, &f.exceptions, tenant);
        self.rules.extend(f.rules.iter().cloned());
    }
}

/// Adds entries; in front when `first` (a tenant's own, which win on lookup).
fn put_first<T: Clone>(v: &mut Vec<T>, new: &[T], first: bool) {
    if first {
        let rest = std::mem::take(v);
        v.extend(new.iter().cloned());
        v.extend(rest);
    } else {
        v.extend(new.iter().cloned());
    }
}

impl Rule {
    fn matches(&self, sender: &str, recipient: &str, content: &Facts) -> bool {
        let any = |patterns: &[AddressPattern], address: &str| {
            patterns.is_empty() || patterns.iter().any(|p| p.matches(address))
        };
        any(&self.senders, sender)
            && any(&self.recipients, recipient)
            && self.header.as_ref().is_none_or(|(name, value)| {
                content
                    .headers
                    .iter()
                    .any(|(n, v)| n == name && value.matches(&v.to_lowercase()))
            })
            && self.subject_tag.as_ref().is_none_or(|tag| {
                content
                    .subject
                    .as_ref()
                    .is_some_and(|s| s.to_lowercase().contains(&tag.to_lowercase()))
            })
            && self
                .attachment
                .as_ref()
                .is_none_or(|p| content.attachments.iter().any(|(n, _)| p.matches(n)))
            && self
                .attachment_type
                .as_ref()
                .is_none_or(|p| content.attachments.iter().any(|(_, t)| p.matches(t)))
    }
}

/// `user@example.org`, `*@example.org` (or `@example.org`), `example.org`,
/// `*.example.org` (any address in a subdomain), `*`.
#[derive(Debug, Clone)]
struct AddressPattern {
    /// Lower case; `None`: any local part.
    local: Option<String>,
    domain: DomainPattern,
}

impl AddressPattern {
    fn parse(s: &str) -> Result<AddressPattern, String> {
        let (local, domain) = match s.trim().rsplit_once('@') {
            Some(("*" | "", d)) => (None, d),
            Some((l, d)) => (Some(l.to_lowercase()), d),
            None => (None, s.trim()),
        };
        let domain = domain.parse().map_err(|e: String| {
            format!(
                "`{s}` is not an address pattern (user@domain, *@domain, domain, *.domain): {e}"
            )
        })?;
        Ok(AddressPattern { local, domain })
    }

    fn matches(&self, address: &str) -> bool {
        let (local, domain) = address.rsplit_once('@').unwrap_or(("", address));
        self.local
            .as_ref()
            .is_none_or(|l| l.eq_ignore_ascii_case(local) || *l == local.to_lowercase())
            && self.domain.matches(domain)
    }
}

// ---- the file format ----

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    tenant: Option<String>,
    default_class: Option<RiskClass>,
    #[serde(default)]
    classes: ClassesSpec,
    class_header: Option<ClassHeaderSpec>,
    #[serde(default)]
    rule: Vec<Spanned<RuleSpec>>,
    #[serde(default)]
    domain: Vec<DomainSpec>,
    #[serde(default)]
    exception: Vec<ExceptionSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassesSpec {
    #[serde(default)]
    normal: ClassSpec,
    #[serde(default)]
    high: ClassSpec,
    #[serde(default)]
    confidential: ClassSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassSpec {
    #[serde(default, deserialize_with = "required")]
    required: Option<Required>,
    fallback: Option<Fallback>,
    accept_revocation_unavailable: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassHeaderSpec {
    name: String,
    #[serde(default)]
    trusted_networks: Vec<IpNet>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    name: Option<String>,
    class: RiskClass,
    #[serde(default, deserialize_with = "addresses")]
    sender: Vec<AddressPattern>,
    #[serde(default, deserialize_with = "addresses")]
    recipient: Vec<AddressPattern>,
    header: Option<String>,
    value: Option<String>,
    subject_tag: Option<String>,
    attachment: Option<String>,
    attachment_type: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainSpec {
    name: String,
    min_class: Option<RiskClass>,
    #[serde(default, deserialize_with = "level")]
    required: Option<Level>,
    note: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExceptionSpec {
    domain: String,
    #[serde(deserialize_with = "level_required")]
    level: Level,
    classes: Option<Vec<RiskClass>>,
    reason: String,
    approved_by: String,
    #[serde(deserialize_with = "expiry")]
    expires: i64,
}

/// A file after parsing and checking.
struct File {
    tenant: Option<String>,
    default_class: Option<RiskClass>,
    classes: ClassesSpec,
    class_header: Option<ClassHeader>,
    rules: Vec<Rule>,
    domains: Vec<DomainProfile>,
    exceptions: Vec<Exception>,
}

impl File {
    /// The single-valued settings this file sets, by key.
    fn settings(&self) -> Vec<String> {
        let mut keys = Vec::new();
        if self.default_class.is_some() {
            keys.push("default_class".to_string());
        }
        if self.class_header.is_some() {
            keys.push("class_header".to_string());
        }
        for (name, c) in [
            ("normal", &self.classes.normal),
            ("high", &self.classes.high),
            ("confidential", &self.classes.confidential),
        ] {
            for (key, set) in [
                ("required", c.required.is_some()),
                ("fallback", c.fallback.is_some()),
                (
                    "accept_revocation_unavailable",
                    c.accept_revocation_unavailable.is_some(),
                ),
            ] {
                if set {
                    keys.push(format!("classes.{name}.{key}"));
                }
            }
        }
        keys
    }
}

fn required<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Required>, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map(Some).map_err(serde::de::Error::custom)
}

fn level<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Level>, D::Error> {
    level_required(d).map(Some)
}

fn level_required<'de, D: Deserializer<'de>>(d: D) -> Result<Level, D::Error> {
    let s = String::deserialize(d)?;
    s.parse::<Level>().map_err(serde::de::Error::custom)
}

fn addresses<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<AddressPattern>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let list = match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    };
    list.iter()
        .map(|s| AddressPattern::parse(s).map_err(serde::de::Error::custom))
        .collect()
}

/// `2027-01-31` (the whole day, UTC) or an RFC 3339 time; quoted or not.
fn expiry<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum When {
        Text(String),
        Toml(toml::value::Datetime),
    }
    let s = match When::deserialize(d)? {
        When::Text(s) => s,
        When::Toml(t) => t.to_string(),
    };
    parse_instant(&s, DayEdge::End).map_err(serde::de::Error::custom)
}

fn parse_file(text: &str, path: &Path) -> Result<File, PolicyError> {
    let at = |offset: usize, key: String, message: String| -> PolicyError {
        FileError::at(path, text, offset, key, message).into()
    };
    let spec: FileSpec = deserialize_toml(text).map_err(|e| at(e.offset, e.key, e.message))?;

    let mut rules = Vec::new();
    for (i, r) in spec.rule.into_iter().enumerate() {
        let offset = r.span().start;
        let key = format!("rule[{i}]");
        let r = r.into_inner();
        let glob = |p: &str| WildMatch::new(&p.to_lowercase());
        if r.value.is_some() && r.header.is_none() {
            return Err(at(
                offset,
                key_prefix(&key),
                "`value` needs `header`".into(),
            ));
        }
        let rule = Rule {
            name: r
                .name
                .unwrap_or_else(|| format!("rule {} of {}", i + 1, path.display())),
            class: r.class,
            senders: r.sender,
            recipients: r.recipient,
            header: r.header.map(|h| {
                (
                    h.trim().to_ascii_lowercase(),
                    glob(r.value.as_deref().unwrap_or("*")),
                )
            }),
            subject_tag: r.subject_tag.filter(|t| !t.trim().is_empty()),
            attachment: r.attachment.as_deref().map(glob),
            attachment_type: r.attachment_type.as_deref().map(glob),
        };
        let matchers = !rule.senders.is_empty()
            || !rule.recipients.is_empty()
            || rule.header.is_some()
            || rule.subject_tag.is_some()
            || rule.attachment.is_some()
            || rule.attachment_type.is_some();
        if !matchers {
            return Err(at(
                offset,
                key_prefix(&key),
                "a rule needs at least one of sender, recipient, header, subject_tag, attachment, attachment_type (use default_class for everything else)".into(),
            ));
        }
        rules.push(rule);
    }
    let domain_pattern = |s: &str, key: String| {
        s.parse::<DomainPattern>().map_err(|e| {
            // serde has no span for a plain string: point at its first use.
            at(text.find(s).unwrap_or(0), key_prefix(&key), e)
        })
    };
    let mut domains = Vec::new();
    for (i, d) in spec.domain.into_iter().enumerate() {
        domains.push(DomainProfile {
            matcher: domain_pattern(&d.name, format!("domain[{i}].name"))?,
            pattern: d.name.trim().to_ascii_lowercase(),
            min_class: d.min_class,
            required: d.required,
            note: d.note,
        });
    }
    let mut exceptions = Vec::new();
    for (i, e) in spec.exception.into_iter().enumerate() {
        exceptions.push(Exception {
            matcher: domain_pattern(&e.domain, format!("exception[{i}].domain"))?,
            pattern: e.domain.trim().to_ascii_lowercase(),
            level: e.level,
            classes: e
                .classes
                .unwrap_or_else(|| vec![RiskClass::Normal, RiskClass::High]),
            reason: e.reason,
            approved_by: e.approved_by,
            expires: e.expires,
        });
    }
    Ok(File {
        tenant: spec.tenant,
        default_class: spec.default_class,
        classes: spec.classes,
        class_header: spec.class_header.map(|h| ClassHeader {
            name: h.name.trim().to_ascii_lowercase(),
            trusted_networks: h.trusted_networks,
        }),
        rules,
        domains,
        exceptions,
    })
}

/// Removes the subject tags from a message's `Subject:` header; `None`
/// when there is nothing to remove. A tag written literally in the header
/// is cut out of it; one inside an encoded word (RFC 2047) makes the
/// header rewritten from its decoded text.
pub fn strip_subject_tags(raw: &[u8], tags: &[String]) -> Option<Vec<u8>> {
    if tags.is_empty() {
        return None;
    }
    let (start, end) = subject_span(raw)?;
    let value = std::str::from_utf8(&raw[start + 8..end]).ok()?;
    let mut literal = value.to_string();
    let mut changed = false;
    for tag in tags {
        if let Some(i) = literal.to_lowercase().find(&tag.to_lowercase())
            && literal.is_char_boundary(i)
            && literal.is_char_boundary(i + tag.len())
        {
            literal.replace_range(i..i + tag.len(), "");
            changed = true;
        }
    }
    let new_value = if changed {
        let unfolded = unfold(&literal);
        format!(
            " {}\r\n",
            unfolded.split_whitespace().collect::<Vec<_>>().join(" ")
        )
    } else {
        // The tag is inside an encoded word: rewrite from the decoded text.
        let decoded = MessageParser::default()
            .parse_headers(&raw[start..end])
            .and_then(|m| m.subject().map(str::to_string))?;
        let mut text = decoded.clone();
        for tag in tags {
            let lower = text.to_lowercase();
            if let Some(i) = lower.find(&tag.to_lowercase())
                && text.is_char_boundary(i)
                && text.is_char_boundary(i + tag.len())
            {
                text.replace_range(i..i + tag.len(), "");
            }
        }
        if text == decoded {
            return None;
        }
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut out = b" ".to_vec();
        use mail_builder::headers::Header;
        mail_builder::headers::text::Text::new(text).write_header(&mut out, "Subject: ".len());
        String::from_utf8(out).ok()?
    };
    let mut out = Vec::with_capacity(raw.len());
    out.extend_from_slice(&raw[..start]);
    out.extend_from_slice(b"Subject:");
    out.extend_from_slice(new_value.as_bytes());
    out.extend_from_slice(&raw[end..]);
    Some(out)
}

/// Where the `Subject:` header is (from its name to the end of its last
/// continuation line, CRLF included), if the header section has one.
pub(crate) fn subject_span(raw: &[u8]) -> Option<(usize, usize)> {
    let header_end = find(raw, b"\r\n\r\n").map(|i| i + 2).unwrap_or(raw.len());
    // Find `Subject:` at the start of a header line.
    let mut start = None;
    let mut pos = 0;
    while pos < header_end {
        let line_end = find(&raw[pos..header_end], b"\r\n").map_or(header_end, |i| pos + i + 2);
        if raw[pos..line_end].len() >= 8 && raw[pos..pos + 8].eq_ignore_ascii_case(b"subject:") {
            start = Some(pos);
            break;
        }
        pos = line_end;
    }
    let start = start?;
    // The header runs on over continuation lines.
    let mut end = start;
    loop {
        let line_end = find(&raw[end..header_end], b"\r\n").map_or(header_end, |i| end + i + 2);
        end = line_end;
        if end >= header_end || !matches!(raw.get(end), Some(b' ' | b'\t')) {
            break;
        }
    }
    Some((start, end))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(files: &[(&str, &str)]) -> Result<PolicySet, PolicyError> {
        PolicySet::from_files(
            files
                .iter()
                .map(|(p, t)| (PathBuf::from(p), t.to_string()))
                .collect(),
        )
    }

    fn content(raw: &str) -> Facts {
        Facts::parse(raw.replace('\n', "\r\n").as_bytes(), Reads::Attachments)
    }

    #[test]
    fn builtin_policy_parses_and_has_the_design_defaults() {
        let p = PolicySet::builtin().for_tenant("any");
        assert_eq!(
            p.class_rule(RiskClass::Normal).required,
            Required::Level(Level::Encrypted)
        );
        assert_eq!(
            p.class_rule(RiskClass::High).required,
            Required::Level(Level::Qualified)
        );
        assert_eq!(
            p.class_rule(RiskClass::Confidential).required,
            Required::Sealed
        );
        assert_eq!(p.class_rule(RiskClass::High).fallback, Fallback::Seal);
    }

    #[test]
    fn shipped_examples_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/examples");
        // (file, meant to sit beside default.toml)
        for (name, beside_default) in [
            ("office-exchange.toml", true),
            ("law-firm.toml", false),
            ("msp-tenant.toml", true),
        ] {
            let text = std::fs::read_to_string(dir.join(name)).expect("example exists");
            let mut files = vec![(name, text.as_str())];
            if beside_default {
                files.insert(0, ("default.toml", BUILTIN));
            }
            set(&files).unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(std::fs::read_dir(&dir).expect("examples").count(), 3);
    }

    #[test]
    fn the_highest_class_wins_whatever_the_order() {
        let p = set(&[(
            "p.toml",
            r#"
[[rule]]
name = "tagged"
subject_tag = "[secure]"
class = "high"
[[rule]]
name = "bank"
recipient = "*.bank.example"
class = "confidential"
[[rule]]
name = "contracts"
attachment = "*.docx"
class = "high"
[[rule]]
name = "aip"
header = "msip_labels"
value = "*Name=Confidential*"
class = "high"
"#,
        )])
        .expect("parses")
        .for_tenant("t");
        let plain = content("Subject: hello\n\nbody\n");
        let c = p.classify("a@x.test", "b@y.test", &plain, false);
        assert_eq!(
            (c.class, c.by.clone()),
            (RiskClass::Normal, vec!["default".to_string()])
        );
        let tagged = content("Subject: [SECURE] offer\n\nbody\n");
        let c = p.classify("a@x.test", "b@y.test", &tagged, false);
        assert_eq!(c.class, RiskClass::High);
        assert_eq!(c.tags, vec!["[secure]".to_string()]);
        let c = p.classify("a@x.test", "b@mx.bank.example", &tagged, false);
        assert_eq!(c.class, RiskClass::Confidential, "{c:?}");
        let labelled = content(
            "msip_labels: MSIP_Label_1_Enabled=true;\n MSIP_Label_1_Name=Confidential;\nSubject: x\n\nb\n",
        );
        assert_eq!(
            p.classify("a@x.test", "b@y.test", &labelled, false).class,
            RiskClass::High
        );
        let attached = content(
            "Subject: x\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\nhi\n--b\nContent-Type: application/octet-stream\nContent-Disposition: attachment; filename=\"Contract.DOCX\"\n\nAAAA\n--b--\n",
        );
        let c = p.classify("a@x.test", "b@y.test", &attached, false);
        assert_eq!(c.by, vec!["contracts".to_string()]);
    }

    #[test]
    fn only_what_the_rules_read_is_parsed() {
        let reads = |text: &str| {
            set(&[("p.toml", text)])
                .expect("parses")
                .for_tenant("t")
                .reads()
        };
        assert_eq!(
            reads("[[rule]]\nsender = \"a@b.test\"\nclass = \"high\"\n"),
            Reads::Nothing
        );
        assert_eq!(reads(BUILTIN), Reads::Headers);
        assert_eq!(
            reads("[[rule]]\nattachment = \"*.pdf\"\nclass = \"high\"\n"),
            Reads::Attachments
        );
        let m = "Subject: [secure] x\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Disposition: attachment; filename=a.pdf\r\n\r\nx\r\n--b--\r\n";
        let headers = Facts::parse(m.as_bytes(), Reads::Headers);
        assert_eq!(headers.subject.as_deref(), Some("[secure] x"));
        assert!(headers.attachments.is_empty());
        let full = Facts::parse(m.as_bytes(), Reads::Attachments);
        assert_eq!(full.attachments, vec![("a.pdf".to_string(), String::new())]);
    }

    #[test]
    fn the_class_header_counts_only_from_trusted_clients() {
        let p = set(&[(
            "p.toml",
            "[class_header]\nname = \"X-Sealgate-Class\"\ntrusted_networks = [\"10.0.0.0/8\"]\n",
        )])
        .expect("parses")
        .for_tenant("t");
        let m = content("X-Sealgate-Class: High\nSubject: x\n\nb\n");
        let outside: IpAddr = "192.0.2.1".parse().expect("ip");
        let inside: IpAddr = "10.1.2.3".parse().expect("ip");
        assert!(!p.trusts_class_header(outside, false));
        assert!(p.trusts_class_header(outside, true));
        assert!(p.trusts_class_header(inside, false));
        assert_eq!(p.classify("a@x", "b@y", &m, false).class, RiskClass::Normal);
        assert_eq!(p.classify("a@x", "b@y", &m, true).class, RiskClass::High);
    }

    #[test]
    fn domain_profiles_and_exceptions_shape_the_requirement() {
        let p = set(&[(
            "p.toml",
            r#"
[[domain]]
name = "bank.example"
min_class = "high"
[[domain]]
name = "*.gov.example"
required = "authenticated"
[[exception]]
domain = "partner.example"
level = "authenticated"
reason = "OCSP responder down, ticket 4711"
approved_by = "ciso@office.example"
expires = 2027-01-31
"#,
        )])
        .expect("parses")
        .for_tenant("t");
        let r = p.requirement(RiskClass::Normal, "bank.example", 0);
        assert_eq!(
            (r.class, r.required),
            (RiskClass::High, Required::Level(Level::Qualified))
        );
        let r = p.requirement(RiskClass::Normal, "tax.gov.example", 0);
        assert_eq!(r.required, Required::Level(Level::Authenticated));
        assert!(r.basis[0].contains("pinned"), "{r:?}");
        let jan_30 = 1_801_267_200; // 2027-01-30T00:00:00Z
        let r = p.requirement(RiskClass::High, "partner.example", jan_30);
        assert_eq!(r.required, Required::Level(Level::Authenticated));
        assert!(
            r.basis[0].contains("ticket 4711") && r.basis[0].contains("ciso@"),
            "{r:?}"
        );
        // The exception covers the whole of its last day, then ends.
        let feb_1 = jan_30 + 2 * 86_400;
        let r = p.requirement(RiskClass::High, "partner.example", feb_1);
        assert_eq!(r.required, Required::Level(Level::Qualified));
        assert!(r.basis[0].contains("expired"), "{r:?}");
        // Confidential mail is not excepted unless the exception says so.
        let r = p.requirement(RiskClass::Confidential, "partner.example", jan_30);
        assert_eq!(r.required, Required::Sealed);
    }

    #[test]
    fn tenant_files_add_to_the_general_ones_and_win() {
        let s = set(&[
            ("a.toml", "[[domain]]\nname = \"x.example\"\nmin_class = \"high\"\n"),
            (
                "b.toml",
                "tenant = \"acme\"\n[classes.normal]\nrequired = \"authenticated\"\n[[domain]]\nname = \"x.example\"\nmin_class = \"confidential\"\n",
            ),
        ])
        .expect("parses");
        let other = s.for_tenant("other");
        assert_eq!(
            other.requirement(RiskClass::Normal, "x.example", 0).class,
            RiskClass::High
        );
        assert_eq!(
            other
                .requirement(RiskClass::Normal, "y.example", 0)
                .required,
            Required::Level(Level::Encrypted)
        );
        let acme = s.for_tenant("acme");
        assert_eq!(
            acme.requirement(RiskClass::Normal, "x.example", 0).class,
            RiskClass::Confidential
        );
        assert_eq!(
            acme.requirement(RiskClass::Normal, "y.example", 0).required,
            Required::Level(Level::Authenticated)
        );
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let err = set(&[(
            "law.toml",
            "\n\n[[rule]]\nsubject_tag = \"[s]\"\nclass = \"secret\"\n",
        )])
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("law.toml:5:"), "{err}");
        assert!(
            err.contains("rule[0].class") && err.contains("secret"),
            "{err}"
        );
        let err = set(&[("p.toml", "[[rule]]\nname = \"empty\"\nclass = \"high\"\n")])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("p.toml:1:") && err.contains("at least one"),
            "{err}"
        );
        let err = set(&[("p.toml", "[classes.high]\nrequired = \"best\"\n")])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("p.toml:2:") && err.contains("not a level"),
            "{err}"
        );
        let err = set(&[(
            "p.toml",
            "[[exception]]\ndomain = \"a.example\"\nlevel = \"encrypted\"\nreason = \"r\"\napproved_by = \"me\"\nexpires = \"soon\"\n",
        )])
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("p.toml:6:") && err.contains("not a date"),
            "{err}"
        );
        let err = set(&[("p.toml", "[[domain]]\nname = \"bad..name\"\n")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("p.toml:2:"), "{err}");
        let err = set(&[(
            "p.toml",
            "[[rule]]\nsender = \"a@b\"\nclass = \"high\"\ncolour = 1\n",
        )])
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("p.toml:4:") && err.contains("colour"),
            "{err}"
        );
    }

    #[test]
    fn one_setting_in_two_files_of_a_scope_is_an_error() {
        let err = set(&[
            ("default.toml", BUILTIN),
            ("local.toml", "[classes.normal]\nrequired = \"plaintext\"\n"),
        ])
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "local.toml: `classes.normal.required` is already set by default.toml; set it in one file only"
        );
        // A tenant's file may override the general one.
        set(&[
            ("default.toml", BUILTIN),
            (
                "t.toml",
                "tenant = \"t\"\n[classes.normal]\nrequired = \"plaintext\"\n",
            ),
        ])
        .expect("tenant override");
    }

    #[test]
    fn subject_tags_are_removed_literal_or_encoded() {
        let tags = vec!["[secure]".to_string()];
        let raw = b"Received: x\r\nSubject: [Secure] Offer\r\n for you\r\nFrom: a@b\r\n\r\nSubject: [secure] stays in the body\r\n";
        let out = strip_subject_tags(raw, &tags).expect("changed");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "Received: x\r\nSubject: Offer for you\r\nFrom: a@b\r\n\r\nSubject: [secure] stays in the body\r\n"
        );
        let encoded =
            "Subject: =?UTF-8?Q?=5Bsecure=5D_Gr=C3=BC=C3=9Fe?=\r\nFrom: a@b\r\n\r\nbody\r\n";
        let out = strip_subject_tags(encoded.as_bytes(), &tags).expect("changed");
        let parsed = MessageParser::default().parse(&out).expect("parses");
        assert_eq!(parsed.subject(), Some("Grüße"));
        assert!(out.ends_with(b"From: a@b\r\n\r\nbody\r\n"));
        assert!(strip_subject_tags(b"Subject: plain\r\n\r\n", &tags).is_none());
    }
}
