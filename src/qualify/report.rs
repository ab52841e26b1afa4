//! What was found about each host of a domain, as `sealgate check --json`
//! prints it and as each attempt record carries it (docs/check-json.md).
//!
//! Three things stay apart at every level: `observed_level` (what a
//! connection reached, whether or not the host may be used), `level` (the
//! level at which the host, or the domain's best host, may carry mail;
//! none when none may) and `refusals` (why a host may not).

use serde::{Deserialize, Serialize};

use super::route::{RouteFailure, Target};
use super::{Check, Level, Refusal, TlsFacts, Verdict};

/// One MX host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostReport {
    pub host: String,
    pub preference: u16,
    /// The address connected to; none when none was.
    pub address: Option<String>,
    /// The level a connection reached; none when no connection was made.
    pub observed_level: Option<Level>,
    /// The level the host may carry mail at; none when it may not.
    pub level: Option<Level>,
    /// Why the host may not carry mail.
    #[serde(default)]
    pub refusals: Vec<Refusal>,
    pub checks: Vec<Check>,
    pub tls: Option<TlsFacts>,
    /// A summary of why the host was not used or could not be checked.
    pub error: Option<String>,
}

impl HostReport {
    /// A host a connection reached.
    pub fn connected(target: &Target, v: &Verdict) -> HostReport {
        HostReport {
            host: target.host.clone(),
            preference: target.preference,
            address: Some(v.address.clone()),
            observed_level: Some(v.observed_level),
            level: v.level,
            refusals: v.refusals.clone(),
            checks: v.checks.clone(),
            tls: v.tls.clone(),
            error: summary(&v.refusals),
        }
    }

    /// A host the DNS already ruled out.
    pub fn skipped(target: &Target, checks: &[Check], refusal: &Refusal) -> HostReport {
        HostReport {
            host: target.host.clone(),
            preference: target.preference,
            address: None,
            observed_level: None,
            level: None,
            refusals: vec![refusal.clone()],
            checks: checks.to_vec(),
            tls: None,
            error: Some(refusal.to_string()),
        }
    }

    /// A host none of whose addresses answered.
    pub fn unreachable(target: &Target, address: Option<String>, error: String) -> HostReport {
        HostReport {
            host: target.host.clone(),
            preference: target.preference,
            address,
            observed_level: None,
            level: None,
            refusals: Vec::new(),
            checks: Vec::new(),
            tls: None,
            error: Some(error),
        }
    }
}

/// The one-line summary of refusals, for people.
fn summary(refusals: &[Refusal]) -> Option<String> {
    (!refusals.is_empty()).then(|| {
        refusals
            .iter()
            .map(Refusal::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// A whole domain: `sealgate check DOMAIN --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    pub domain: String,
    /// The best level any connection reached, usable or not; none when no
    /// connection was made.
    pub observed_level: Option<Level>,
    /// The best level of the hosts that may carry mail; none when none may.
    pub level: Option<Level>,
    /// Domain-level checks: the MX lookup's `dnssec`, MTA-STS discovery.
    pub checks: Vec<Check>,
    pub mx: Vec<HostReport>,
    /// Why the domain could not be routed at all, if so.
    pub error: Option<String>,
}

impl CheckReport {
    pub fn new(domain: &str, checks: Vec<Check>, mx: Vec<HostReport>) -> CheckReport {
        CheckReport {
            domain: domain.to_string(),
            observed_level: mx.iter().filter_map(|h| h.observed_level).max(),
            level: mx.iter().filter_map(|h| h.level).max(),
            checks,
            mx,
            error: None,
        }
    }

    pub fn unroutable(domain: &str, f: &RouteFailure) -> CheckReport {
        CheckReport {
            error: Some(f.text.clone()),
            ..CheckReport::new(domain, f.checks.clone(), Vec::new())
        }
    }
}
