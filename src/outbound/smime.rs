//! End to end by S/MIME: a recipient the policy would seal (confidential)
//! whose certificate is in the tenant's directory (`seal::certs`) and is
//! judged usable now (`qualify::recipient`) gets the message encrypted to
//! that certificate (`seal::smime`) instead, in a transaction of its own —
//! so that no recipient learns another's certificate, as a Bcc recipient's
//! would be — and then needs of the transport only what encrypted content
//! needs (`[policy] encrypted_content_requires`), signed again with the
//! tenant's DKIM key. A certificate that is not used is named with the
//! reason in the recipient's seal decision.

use std::collections::HashMap;

use super::Outbound;
use crate::message::LoadedJob;
use crate::policy::{Required, Requirement};
use crate::seal::smime::{self, Recipient};

/// What S/MIME does for one recipient.
#[derive(Debug, Clone)]
pub(super) enum Note {
    /// Encrypted to this certificate (its description, for the evidence).
    Encrypted(String),
    /// Certificates were known and none could be used: why.
    NotUsed(String),
}

/// The recipients S/MIME concerns: notes by recipient index, and one job
/// per encrypted recipient, holding the encrypted message.
#[derive(Default)]
pub(super) struct Plan {
    pub notes: HashMap<u32, Note>,
    pub jobs: Vec<LoadedJob>,
}

impl Note {
    /// The requirement with what S/MIME did applied.
    pub(super) fn apply(&self, req: Requirement, requires: Required) -> Requirement {
        match self {
            Note::Encrypted(certificate) => req.with_smime(requires, certificate),
            Note::NotUsed(why) => {
                let mut req = req;
                req.basis.push(why.clone());
                req
            }
        }
    }
}

impl Outbound {
    /// What encrypted content needs of the transport (`Sealed`: S/MIME
    /// would change nothing).
    pub(super) fn encrypted_content_requires(&self) -> Required {
        self.config()
            .policy
            .encrypted_content_requires
            .map_or(Required::Sealed, Required::Level)
    }

    /// Judges the known certificates of the recipients the policy would
    /// seal and encrypts the message for each that has a usable one.
    pub(super) async fn smime_plan(&self, job: &LoadedJob, domain: &str, now: i64) -> Plan {
        let mut plan = Plan::default();
        let requires = self.encrypted_content_requires();
        let Some(store) = &self.certs else {
            return plan;
        };
        if !self.config().smime.encrypt || requires == Required::Sealed {
            return plan;
        }
        let tenant = &job.envelope.tenant.0;
        for p in &job.recipients {
            let req = self.requirement(job, p, domain, now, None);
            if req.required != Required::Sealed {
                continue;
            }
            let address = &p.recipient.address;
            let known = match store.for_address(tenant, address).await {
                Ok(k) => k,
                Err(e) => {
                    tracing::error!(id = %job.id, %address, "{e}");
                    continue;
                }
            };
            if known.is_empty() {
                continue;
            }
            let mut refused = Vec::new();
            let mut chosen = None;
            for cert in known {
                let j = self
                    .qualifier
                    .judge_recipient_certificate(
                        &cert.chain,
                        address,
                        req.accept_revocation_unavailable,
                        now,
                    )
                    .await;
                match &j.refusal {
                    None => {
                        chosen = Some((cert, j));
                        break;
                    }
                    Some(why) => refused.push(format!("{}: {why}", short(&cert.fingerprint))),
                }
            }
            let note = match chosen {
                None => Note::NotUsed(format!(
                    "S/MIME certificate not used: {}",
                    refused.join("; ")
                )),
                Some((cert, j)) => {
                    let encrypted = Recipient::from_der(&cert.chain[0])
                        .and_then(|r| smime::encrypt(&job.body, &[r]));
                    match encrypted {
                        Ok(body) => {
                            let body = self.sign_again(&job.envelope.tenant.0, body);
                            plan.jobs.push(LoadedJob {
                                body,
                                recipients: vec![p.clone()],
                                ..job.clone_without_body()
                            });
                            Note::Encrypted(format!(
                                "SHA-256 {}, {}; {}",
                                short(&cert.fingerprint),
                                j.summary,
                                j.passed.join("; ")
                            ))
                        }
                        Err(e) => Note::NotUsed(format!(
                            "S/MIME encryption to {} failed: {e}",
                            short(&cert.fingerprint)
                        )),
                    }
                }
            };
            plan.notes.insert(p.index, note);
        }
        plan
    }
}

impl Outbound {
    /// The tenant's DKIM signature, made at reception over the readable
    /// message (it is then the message's first field: our `Received:`
    /// comes right after it, and any upstream signature after that), no
    /// longer verifies once the body is encrypted: it is made again over
    /// what goes out.
    fn sign_again(&self, tenant: &str, mut body: Vec<u8>) -> Vec<u8> {
        const FIELD: &[u8] = b"dkim-signature:";
        if body.len() > FIELD.len() && body[..FIELD.len()].eq_ignore_ascii_case(FIELD) {
            let first = crate::message::header_fields(&body[..crate::message::header_end(&body)])
                .next()
                .map_or(0, <[u8]>::len);
            body.drain(..first);
        }
        if let Some(signature) = self.dkim.sign(tenant, &body) {
            body.splice(0..0, signature.into_bytes());
        }
        body
    }
}

/// A fingerprint as people compare it: the first 16 hex digits.
fn short(fingerprint: &str) -> &str {
    fingerprint.get(..16).unwrap_or(fingerprint)
}
