//! Decides, per recipient, what may happen to a message: deliver it over
//! this connection, seal it, let it wait, or bounce it.
//!
//! Three inputs meet here: the message's [`RiskClass`] (set at reception by
//! the rules of `policies/*.toml`, see [`rules`]), the recipient domain's
//! profile and history (minimum class, pinned level, exceptions, and what
//! its transport has been worth before, see [`memory`]), and the
//! [`Verdict`] of the connection about to carry the message.
//! [`rules::Policy::requirement`] turns the first two into a
//! [`Requirement`]; [`Requirement::decide`] weighs verdicts against it.

pub mod e2e;
pub mod memory;
pub mod rules;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::qualify::{CheckName, Level, Status, Verdict, level_from_checks};

/// The class lives with the message it belongs to; the policy decides by it.
pub use crate::message::{Content, RiskClass, TlsRequest};

/// What a message requires of the transport: a level, or never to travel
/// as it is (end-to-end: sealed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Required {
    Level(Level),
    Sealed,
}

impl fmt::Display for Required {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Required::Level(l) => l.fmt(f),
            Required::Sealed => f.write_str("sealed"),
        }
    }
}

impl FromStr for Required {
    type Err = String;
    fn from_str(s: &str) -> Result<Required, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "sealed" => Ok(Required::Sealed),
            other => other.parse().map(Required::Level).map_err(|_| {
                format!(
                    "`{s}` is not a level (plaintext, encrypted, authenticated, qualified, sealed)"
                )
            }),
        }
    }
}

/// What happens to a message no host can carry at its level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// Wait and try again; bounce at the queue's expiry.
    Defer,
    /// Wrap it in a password envelope.
    Seal,
    /// Return it to the sender now.
    Bounce,
}

/// Why a recipient is sealed, deferred or bounced: a stable machine name
/// that the console and the exports count and filter by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    /// The class is always sealed (end-to-end).
    AlwaysSealed,
    /// The best usable host is below what the class requires.
    BelowRequired,
    /// The domain fell below its best level; high mail waits for an operator.
    DowngradeHold,
    /// No host could be reached at all.
    NoHost,
    /// Hosts were reached, but every one is refused (DANE, MTA-STS
    /// enforce, revocation, mandatory TLS): never downgraded.
    HostsRefused,
    /// The domain could not be routed (MX lookup bogus or failed).
    Unroutable,
    /// REQUIRETLS (RFC 8689): no host met its conditions; returned with 5.7.30.
    #[serde(rename = "requiretls")]
    RequireTls,
}

impl ReasonCode {
    pub fn name(self) -> &'static str {
        match self {
            ReasonCode::AlwaysSealed => "always_sealed",
            ReasonCode::BelowRequired => "below_required",
            ReasonCode::DowngradeHold => "downgrade_hold",
            ReasonCode::NoHost => "no_host",
            ReasonCode::HostsRefused => "hosts_refused",
            ReasonCode::Unroutable => "unroutable",
            ReasonCode::RequireTls => "requiretls",
        }
    }
}

/// A reason: its machine name and the words for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    pub code: ReasonCode,
    pub text: String,
}

impl Reason {
    pub fn new(code: ReasonCode, text: impl Into<String>) -> Reason {
        Reason {
            code,
            text: text.into(),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The decision for one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum Action {
    Deliver { required: Level },
    Seal { reason: Reason },
    Defer { reason: Reason },
    Bounce { reason: Reason },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Deliver { .. } => "deliver",
            Action::Seal { .. } => "seal",
            Action::Defer { .. } => "defer",
            Action::Bounce { .. } => "bounce",
        }
    }

    /// The reason of a seal, defer or bounce; none for a delivery.
    pub fn reason(&self) -> Option<&Reason> {
        match self {
            Action::Deliver { .. } => None,
            Action::Seal { reason } | Action::Defer { reason } | Action::Bounce { reason } => {
                Some(reason)
            }
        }
    }

    /// The reason in words; for a delivery, the level met.
    pub fn reason_text(&self) -> String {
        match self {
            Action::Deliver { required } => format!("the transport meets {required}"),
            Action::Seal { reason } | Action::Defer { reason } | Action::Bounce { reason } => {
                reason.text.clone()
            }
        }
    }
}

/// The decision for one recipient, with what it was weighed against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub class: RiskClass,
    pub required: Required,
    #[serde(flatten)]
    pub action: Action,
    /// What protects the content end to end, when sealgate encrypted it
    /// to the recipient's certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_to_end: Option<String>,
}

/// The policy in force, replaced as a whole by a reload (SIGHUP); a
/// policy directory with an error leaves the old policy in force.
pub struct Policies {
    dir: Option<PathBuf>,
    current: RwLock<Arc<rules::PolicySet>>,
}

impl Policies {
    /// `dir`: `policy.dir`; none: the built-in default policy.
    pub fn load(dir: Option<&Path>) -> Result<Policies, rules::PolicyError> {
        let set = match dir {
            Some(d) => rules::PolicySet::load(d)?,
            None => rules::PolicySet::builtin(),
        };
        Ok(Policies {
            dir: dir.map(Path::to_path_buf),
            current: RwLock::new(Arc::new(set)),
        })
    }

    /// `policy.dir`; none when the built-in policy is in force.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    pub fn current(&self) -> Arc<rules::PolicySet> {
        match self.current.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads the directory again; on error the old policy stays and the error is returned.
    pub fn reload(&self) -> Result<Arc<rules::PolicySet>, rules::PolicyError> {
        let Some(dir) = &self.dir else {
            return Ok(self.current());
        };
        let set = Arc::new(rules::PolicySet::load(dir)?);
        match self.current.write() {
            Ok(mut p) => *p = set.clone(),
            Err(poisoned) => *poisoned.into_inner() = set.clone(),
        }
        Ok(set)
    }
}

/// The reason of a deferral for want of any usable host.
pub const NO_HOST: &str = "no mail exchanger could be reached";

/// What one recipient's message needs, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Requirement {
    /// The class the decision uses: the message's, raised by the domain's minimum.
    pub class: RiskClass,
    pub required: Required,
    /// When no host reaches `required`.
    pub fallback: Fallback,
    /// Revocation status "unavailable" or "unknown" counts as good for this class.
    pub accept_revocation_unavailable: bool,
    /// Where `class` and `required` come from, in words (rule, domain profile, exception).
    pub basis: Vec<String>,
    /// REQUIRETLS (RFC 8689): only a host authenticated by DANE or MTA-STS
    /// that takes REQUIRETLS may carry it; else it is returned, never sealed.
    pub require_tls: bool,
    /// The content is encrypted by sealgate to the recipient's S/MIME
    /// certificate (`seal::smime`): which one, for the evidence.
    pub end_to_end: Option<String>,
}

/// What the domain's history says about the verdict now seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum History {
    /// Nothing suspicious: no history, or nothing better was ever seen.
    Ordinary,
    /// The domain reached `best` before and less now, since `since`; until
    /// `hold_until` high-class mail waits for an operator to confirm.
    Downgrade {
        best: Level,
        since: i64,
        hold_until: i64,
    },
}

impl Requirement {
    /// What the sender asked of the transport, applied: REQUIRETLS raises
    /// the level to authenticated and adds its conditions; an honoured
    /// `TLS-Required: No` lets a normal-class recipient go without TLS
    /// where no refusal (DANE, MTA-STS) stands in the way (RFC 8689 §5).
    pub fn with_tls_request(mut self, request: TlsRequest) -> Requirement {
        match request {
            TlsRequest::None => {}
            TlsRequest::RequireTls => {
                self.require_tls = true;
                if let Required::Level(l) = self.required {
                    self.required = Required::Level(l.max(Level::Authenticated));
                }
                self.basis.push("REQUIRETLS (RFC 8689)".into());
            }
            TlsRequest::TlsOptional => {
                if self.class == RiskClass::Normal && matches!(self.required, Required::Level(_)) {
                    self.required = Required::Level(Level::Plaintext);
                    self.basis.push("TLS-Required: No (RFC 8689 §5)".into());
                }
            }
        }
        self
    }

    /// Content already end-to-end encrypted (policy::e2e) makes an
    /// always-sealed class (confidential) need `requires` instead: the
    /// content is protected without our envelope; the transport still
    /// counts for the rest (headers, envelope).
    pub fn with_content(
        mut self,
        content: Content,
        requires: Required,
        inline_pgp_counts: bool,
    ) -> Requirement {
        let counts =
            content.strongly_encrypted() || (content == Content::PgpInline && inline_pgp_counts);
        if counts && self.required == Required::Sealed {
            self.required = requires;
            self.basis.push(format!(
                "content already end-to-end encrypted ({})",
                content.name()
            ));
        }
        self
    }

    /// Content that sealgate encrypts to the recipient's S/MIME
    /// certificate `certificate` (named for the evidence) is end-to-end
    /// encrypted as well: the always-sealed class needs `requires` of the
    /// transport, as for content that came encrypted.
    pub fn with_smime(mut self, requires: Required, certificate: &str) -> Requirement {
        if self.required == Required::Sealed && requires != Required::Sealed {
            self.required = requires;
            self.basis.push(format!(
                "content encrypted to the recipient's S/MIME certificate {certificate}"
            ));
            self.end_to_end = Some(format!("S/MIME, certificate {certificate}"));
        }
        self
    }

    /// Whether a connection with this verdict may carry the message as it is.
    pub fn met_by(&self, verdict: &Verdict) -> bool {
        let Required::Level(required) = self.required else {
            return false;
        };
        let Some(level) = verdict.level else {
            // A refused host carries nothing, whatever it reached.
            return false;
        };
        if self.require_tls && requiretls_shortfall(verdict).is_some() {
            return false;
        }
        if level >= required {
            return true;
        }
        // Only a revocation status that could not be had stands between
        // this verdict and the level: the class's policy may accept that.
        self.accept_revocation_unavailable && level_ignoring_revocation(verdict) >= required
    }

    /// The action for a recipient after the hosts were tried: `best` is the
    /// best verdict of a host that could have been used (none: no host
    /// could be reached at all), `now` Unix seconds.
    pub fn decide(&self, best: Option<&Verdict>, history: History, now: i64) -> Action {
        let required = match self.required {
            Required::Sealed => {
                return Action::Seal {
                    reason: Reason::new(
                        ReasonCode::AlwaysSealed,
                        format!(
                            "class {} is always sealed (end-to-end){}",
                            self.class,
                            self.because()
                        ),
                    ),
                };
            }
            Required::Level(l) => l,
        };
        let Some(verdict) = best else {
            return Action::Defer {
                reason: Reason::new(ReasonCode::NoHost, NO_HOST),
            };
        };
        if self.met_by(verdict) {
            return Action::Deliver { required };
        }
        if self.require_tls {
            let why = requiretls_shortfall(verdict)
                .unwrap_or_else(|| format!("it reached {}", verdict.observed_level));
            return Action::Bounce {
                reason: Reason::new(
                    ReasonCode::RequireTls,
                    format!(
                        "REQUIRETLS (RFC 8689 §4.2.1): no host of {} may carry it; the best MX {}: {why}",
                        verdict.domain, verdict.mx_host
                    ),
                ),
            };
        }
        let shortfalls = verdict.shortfalls();
        let what = format!(
            "class {} needs {}{}, the best MX {} reached {} ({})",
            self.class,
            required,
            self.because(),
            verdict.mx_host,
            verdict.observed_level,
            if shortfalls.is_empty() {
                "no failed checks".to_string()
            } else {
                shortfalls.join("; ")
            }
        );
        if let History::Downgrade {
            best,
            since,
            hold_until,
        } = history
            && self.class >= RiskClass::High
            && now < hold_until
        {
            return Action::Defer {
                reason: Reason::new(
                    ReasonCode::DowngradeHold,
                    format!(
                        "downgrade: {} reached {best} before and {} since {}; {what}; held until an operator runs `sealgate domains confirm {}` or until {}",
                        verdict.domain,
                        verdict.observed_level,
                        rfc3339(since),
                        verdict.domain,
                        rfc3339(hold_until),
                    ),
                ),
            };
        }
        let reason = Reason::new(ReasonCode::BelowRequired, what);
        match self.fallback {
            Fallback::Defer => Action::Defer { reason },
            Fallback::Seal => Action::Seal { reason },
            Fallback::Bounce => Action::Bounce { reason },
        }
    }

    /// The action for a recipient when no host may carry mail: `refused`
    /// says, per host reached, why it was refused (DANE, MTA-STS enforce,
    /// revocation: never downgraded, RFC 7672 §2.2, RFC 8461 §5);
    /// `unreachable` why the others could not be reached.
    pub fn decide_without_host(&self, refused: &[String], unreachable: &str) -> Action {
        match self.decide(None, History::Ordinary, 0) {
            Action::Defer { reason } if reason.code == ReasonCode::NoHost => Action::Defer {
                reason: if refused.is_empty() {
                    Reason::new(ReasonCode::NoHost, unreachable)
                } else {
                    Reason::new(ReasonCode::HostsRefused, refused.join("; "))
                },
            },
            other => other,
        }
    }

    fn because(&self) -> String {
        if self.basis.is_empty() {
            String::new()
        } else {
            format!(" [{}]", self.basis.join("; "))
        }
    }
}

/// Why a connection may not carry a REQUIRETLS message (RFC 8689 §4.2.1):
/// its certificate must be authenticated by DANE or MTA-STS (PKIX alone,
/// with no policy asking for it, is not enough), and the peer must take
/// REQUIRETLS itself; `None` when it may.
fn requiretls_shortfall(verdict: &Verdict) -> Option<String> {
    let passed = |name| {
        verdict
            .checks
            .iter()
            .any(|c| c.name == name && c.status == Status::Pass)
    };
    let authenticated = verdict.level >= Some(Level::Authenticated)
        && (passed(CheckName::Dane) || passed(CheckName::MtaSts));
    match (authenticated, verdict.requiretls) {
        (true, true) => None,
        (false, true) => Some("not authenticated by DANE or MTA-STS".into()),
        (true, false) => Some("does not offer REQUIRETLS".into()),
        (false, false) => {
            Some("not authenticated by DANE or MTA-STS, and does not offer REQUIRETLS".into())
        }
    }
}

/// The level the verdict would have if its revocation check had passed.
fn level_ignoring_revocation(verdict: &Verdict) -> Level {
    let mut checks = verdict.checks.clone();
    for c in &mut checks {
        if c.name == CheckName::Revocation && c.status == Status::Error {
            c.status = Status::Pass;
        }
    }
    level_from_checks(&checks)
}

use crate::util::rfc3339;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qualify::Check;
    use CheckName::*;
    use Status::*;

    /// A verdict with the checks that give `level`; an authenticated one
    /// falls short of qualified by its revocation status (`Error`:
    /// unavailable) or, without `revocation_error`, by an unsigned zone.
    fn verdict(level: Level, revocation_error: bool) -> Verdict {
        let dnssec = if level == Level::Authenticated && !revocation_error {
            Fail
        } else {
            Pass
        };
        let mut checks = vec![Check::new(Dnssec, dnssec, "zone unsigned")];
        if level >= Level::Encrypted {
            checks.extend([
                Check::new(Starttls, Pass, ""),
                Check::new(Protocol, Pass, ""),
            ]);
            for n in [Cipher, KeyExchange, KeySize] {
                checks.push(Check::new(n, Pass, ""));
            }
        } else {
            checks.push(Check::new(Starttls, Fail, "STARTTLS not offered"));
        }
        let revocation = match level {
            Level::Qualified => Pass,
            Level::Authenticated if revocation_error => Error,
            Level::Authenticated => Pass,
            _ => NotApplicable,
        };
        if level >= Level::Authenticated {
            checks.extend([Check::new(Pkix, Pass, ""), Check::new(Hostname, Pass, "")]);
        }
        checks.push(Check::new(Revocation, revocation, "unavailable: timed out"));
        let v = Verdict::new(
            ("d.test", "mx.d.test", "127.0.0.1"),
            checks,
            Vec::new(),
            None,
            0,
        );
        assert_eq!(v.observed_level, level, "test verdict");
        v
    }

    fn revoked() -> Verdict {
        let mut v = verdict(Level::Qualified, false);
        for c in &mut v.checks {
            if c.name == Revocation {
                c.status = Fail;
            }
        }
        Verdict::new(
            ("d.test", "mx.d.test", "127.0.0.1"),
            v.checks,
            Vec::new(),
            None,
            0,
        )
    }

    fn requirement(class: RiskClass, required: Required, fallback: Fallback) -> Requirement {
        Requirement {
            require_tls: false,
            end_to_end: None,
            class,
            required,
            fallback,
            accept_revocation_unavailable: false,
            basis: Vec::new(),
        }
    }

    /// The decision table of docs/policies.md: (class, required, fallback) ×
    /// the level the best MX reached, without history.
    #[test]
    fn decision_table() {
        use Level::*;
        let q = Required::Level(Qualified);
        let e = Required::Level(Encrypted);
        let cases: &[(RiskClass, Required, Fallback, Level, &str)] = &[
            (RiskClass::Normal, e, Fallback::Defer, Qualified, "deliver"),
            (
                RiskClass::Normal,
                e,
                Fallback::Defer,
                Authenticated,
                "deliver",
            ),
            (RiskClass::Normal, e, Fallback::Defer, Encrypted, "deliver"),
            (RiskClass::Normal, e, Fallback::Defer, Plaintext, "defer"),
            (RiskClass::Normal, e, Fallback::Seal, Plaintext, "seal"),
            (RiskClass::Normal, e, Fallback::Bounce, Plaintext, "bounce"),
            (RiskClass::High, q, Fallback::Seal, Qualified, "deliver"),
            (RiskClass::High, q, Fallback::Seal, Authenticated, "seal"),
            (RiskClass::High, q, Fallback::Seal, Encrypted, "seal"),
            (RiskClass::High, q, Fallback::Seal, Plaintext, "seal"),
            (
                RiskClass::Confidential,
                Required::Sealed,
                Fallback::Seal,
                Qualified,
                "seal",
            ),
            (
                RiskClass::Confidential,
                Required::Sealed,
                Fallback::Seal,
                Plaintext,
                "seal",
            ),
            // A pinned plaintext level (a test network, an internal relay).
            (
                RiskClass::Normal,
                Required::Level(Plaintext),
                Fallback::Defer,
                Plaintext,
                "deliver",
            ),
        ];
        for (class, required, fallback, level, expected) in cases {
            let r = requirement(*class, *required, *fallback);
            let v = verdict(*level, false);
            let action = r.decide(Some(&v), History::Ordinary, 0);
            assert_eq!(
                action.name(),
                *expected,
                "{class} requiring {required} over {level:?}: {action:?}"
            );
        }
    }

    #[test]
    fn rfc8689_requiretls_bounces_where_the_class_would_seal_and_tls_optional_relaxes_normal_only()
    {
        let high = requirement(
            RiskClass::High,
            Required::Level(Level::Qualified),
            Fallback::Seal,
        )
        .with_tls_request(TlsRequest::RequireTls);
        // Qualified by its checks, but no DANE or MTA-STS pass and no offer.
        let v = verdict(Level::Qualified, false);
        let action = high.decide(Some(&v), History::Ordinary, 0);
        assert_eq!(action.name(), "bounce", "{action:?}");
        assert_eq!(action.reason().unwrap().code, ReasonCode::RequireTls);
        let mut offered = v.clone();
        offered.requiretls = true;
        offered
            .checks
            .push(Check::new(CheckName::Dane, Status::Pass, "3 1 1"));
        assert!(high.met_by(&offered));
        // Normal mail is raised to authenticated.
        let normal = requirement(
            RiskClass::Normal,
            Required::Level(Level::Encrypted),
            Fallback::Defer,
        );
        let raised = normal.clone().with_tls_request(TlsRequest::RequireTls);
        assert_eq!(raised.required, Required::Level(Level::Authenticated));
        // TLS-Required: No: plaintext for normal mail, nothing for high.
        let relaxed = normal.with_tls_request(TlsRequest::TlsOptional);
        assert_eq!(relaxed.required, Required::Level(Level::Plaintext));
        let high = requirement(
            RiskClass::High,
            Required::Level(Level::Qualified),
            Fallback::Seal,
        )
        .with_tls_request(TlsRequest::TlsOptional);
        assert_eq!(high.required, Required::Level(Level::Qualified));
    }

    #[test]
    fn no_reachable_host_defers_unless_always_sealed() {
        let r = requirement(
            RiskClass::High,
            Required::Level(Level::Qualified),
            Fallback::Seal,
        );
        assert_eq!(r.decide(None, History::Ordinary, 0).name(), "defer");
        let r = requirement(RiskClass::Confidential, Required::Sealed, Fallback::Seal);
        assert_eq!(r.decide(None, History::Ordinary, 0).name(), "seal");
    }

    #[test]
    fn a_downgrade_holds_high_mail_until_confirmed_or_past_the_hold() {
        let v = verdict(Level::Plaintext, false);
        let history = History::Downgrade {
            best: Level::Qualified,
            since: 100,
            hold_until: 200,
        };
        let high = requirement(
            RiskClass::High,
            Required::Level(Level::Qualified),
            Fallback::Seal,
        );
        let action = high.decide(Some(&v), history, 150);
        assert_eq!(action.name(), "defer");
        assert!(
            action
                .reason_text()
                .starts_with("downgrade: d.test reached qualified"),
            "{action:?}"
        );
        assert!(
            action
                .reason_text()
                .contains("starttls: STARTTLS not offered"),
            "{action:?}"
        );
        // Past the hold the downgrade is the new normal: sealed as usual.
        assert_eq!(high.decide(Some(&v), history, 200).name(), "seal");
        // Normal mail is not held by a downgrade (it is logged as an alert).
        let normal = requirement(
            RiskClass::Normal,
            Required::Level(Level::Encrypted),
            Fallback::Defer,
        );
        let e = verdict(Level::Encrypted, false);
        assert_eq!(normal.decide(Some(&e), history, 150).name(), "deliver");
    }

    #[test]
    fn revocation_unavailable_is_accepted_only_where_the_class_says_so() {
        let v = verdict(Level::Authenticated, true);
        let mut r = requirement(
            RiskClass::High,
            Required::Level(Level::Qualified),
            Fallback::Seal,
        );
        assert!(!r.met_by(&v));
        r.accept_revocation_unavailable = true;
        assert!(r.met_by(&v));
        // A revoked certificate is never "unavailable".
        assert!(!r.met_by(&revoked()));
        // Nor does it excuse anything but revocation.
        assert!(!r.met_by(&verdict(Level::Authenticated, false)));
    }

    #[test]
    fn requirement_order_and_names() {
        assert!(Required::Sealed > Required::Level(Level::Qualified));
        assert!(RiskClass::Confidential > RiskClass::High);
        assert_eq!("Sealed".parse::<Required>(), Ok(Required::Sealed));
        assert_eq!("high".parse::<RiskClass>(), Ok(RiskClass::High));
        assert!("secret".parse::<RiskClass>().is_err());
    }
}
