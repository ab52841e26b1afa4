//! What one delivery attempt came to: per recipient an [`Outcome`] and the
//! policy's decision, the verdict of the connection used, and what was
//! found about every host considered.

use crate::message::PendingRecipient;
use crate::policy::{Action, Decision, ReasonCode, Required, Requirement};
use crate::qualify::report::HostReport;
use crate::qualify::{Check, Verdict};
use crate::reply::Reply;

/// Why a recipient ended where it did, for the queue, the DSN and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detail {
    /// Enhanced status code (RFC 3463) for the DSN.
    pub status: [u8; 3],
    /// `host[address]` of the peer that answered, if one did.
    pub remote: Option<String>,
    /// The peer's reply, as it said it.
    pub reply: Option<Reply>,
    /// One line for the operator: what happened.
    pub text: String,
}

impl Detail {
    pub(super) fn from_reply(remote: &str, reply: &Reply) -> Detail {
        let status = if reply.status != [0, 0, 0] {
            reply.status
        } else {
            [(reply.code / 100) as u8, 0, 0]
        };
        Detail {
            status,
            remote: Some(remote.to_string()),
            reply: Some(reply.clone()),
            text: format!("{remote} said: {reply}"),
        }
    }

    pub(super) fn local(status: [u8; 3], text: impl Into<String>) -> Detail {
        Detail {
            status,
            remote: None,
            reply: None,
            text: text.into(),
        }
    }
}

/// What an attempt did for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered(Detail),
    /// Permanent failure: bounce now.
    Failed(Detail),
    /// Temporary failure: try again later.
    Deferred(Detail),
}

/// The result of one delivery attempt.
#[derive(Debug, Clone, Default)]
pub struct Attempt {
    /// Keyed by the recipient's index in the envelope.
    pub outcomes: Vec<(u32, Outcome)>,
    /// The verdict of the connection the transaction ran on, or else the
    /// best one seen, if a connection was made.
    pub verdict: Option<Verdict>,
    /// The policy's decision for each recipient it decided (not those a
    /// routing failure left undecided).
    pub decisions: Vec<(u32, Decision)>,
    /// Domain-level checks: the MX lookup, MTA-STS discovery.
    pub checks: Vec<Check>,
    /// Every host considered, as `sealgate check` shows it.
    pub hosts: Vec<HostReport>,
}

impl Attempt {
    /// Adds a second part of the same attempt (a transaction of its own):
    /// the first part's verdict and domain checks stay when it has them.
    pub(super) fn merge(&mut self, other: Attempt) {
        self.outcomes.extend(other.outcomes);
        self.decisions.extend(other.decisions);
        self.hosts.extend(other.hosts);
        if self.checks.is_empty() {
            self.checks = other.checks;
        }
        if self.verdict.is_none() {
            self.verdict = other.verdict;
        }
    }

    /// The recipients a connection carried: the peer's replies.
    pub(super) fn delivered(
        &mut self,
        recipients: &[(&PendingRecipient, Requirement)],
        outcomes: Vec<(u32, Outcome)>,
    ) {
        for (p, req) in recipients {
            if let Required::Level(required) = req.required {
                self.push_decision(p.index, req, Action::Deliver { required });
            }
        }
        self.outcomes.extend(outcomes);
    }

    /// One outcome for every recipient given.
    pub(super) fn all(
        &mut self,
        recipients: &[(&PendingRecipient, Requirement)],
        outcome: Outcome,
        verdict: Option<Verdict>,
    ) {
        self.outcomes
            .extend(recipients.iter().map(|(p, _)| (p.index, outcome.clone())));
        if verdict.is_some() {
            self.verdict = verdict;
        }
    }

    /// A recipient no connection carried: the policy's action becomes its outcome.
    pub(super) fn decide(&mut self, index: u32, req: &Requirement, action: Action) {
        let outcome = match &action {
            Action::Deliver { .. } => Outcome::Deferred(Detail::local(
                [4, 4, 1],
                "no connection was left to deliver on",
            )),
            Action::Defer { reason }
                if matches!(reason.code, ReasonCode::NoHost | ReasonCode::HostsRefused) =>
            {
                Outcome::Deferred(Detail::local([4, 4, 1], reason.text.clone()))
            }
            Action::Defer { reason } => Outcome::Deferred(Detail::local(
                [4, 7, 10],
                format!("policy: defer: {reason}"),
            )),
            // Sealing is carried out by `sealed`; a seal decided here has
            // no carrier and waits.
            Action::Seal { reason } => Outcome::Deferred(Detail::local(
                [4, 7, 10],
                format!("policy: seal: {reason}; held: no carrier"),
            )),
            Action::Bounce { reason } => Outcome::Failed(Detail::local(
                // RFC 8689 §5: "REQUIRETLS support required".
                if reason.code == ReasonCode::RequireTls {
                    [5, 7, 30]
                } else {
                    [5, 7, 10]
                },
                format!("policy: bounce: {reason}"),
            )),
        };
        self.outcomes.push((index, outcome));
        self.push_decision(index, req, action);
    }

    pub(super) fn push_decision(&mut self, index: u32, req: &Requirement, action: Action) {
        self.decisions.push((
            index,
            Decision {
                class: req.class,
                required: req.required,
                action,
                end_to_end: req.end_to_end.clone(),
            },
        ));
    }
}

/// Per host reached and refused: `host: why`, for the decision's reason.
pub(super) fn refused(hosts: &[HostReport]) -> Vec<String> {
    hosts
        .iter()
        .filter(|h| !h.refusals.is_empty())
        .map(|h| format!("{}: {}", h.host, h.error.as_deref().unwrap_or_default()))
        .collect()
}
