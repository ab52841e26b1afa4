//! The SMTP transaction on a qualified connection, and what each
//! recipient's reply makes of it.

use super::client::{ClientError, SmtpClient};
use super::{Detail, Outbound, Outcome};
use crate::message::{LoadedJob, PendingRecipient, QueueId};
use crate::qualify::Verdict;
use crate::spool::journal::Entry;

impl Outbound {
    /// Runs the transaction. On error, the flag says whether the peer may
    /// have taken anything (then the connection must not be retried blindly).
    pub(super) async fn transact(
        &self,
        client: &mut SmtpClient,
        job: &LoadedJob,
        pending: &[&PendingRecipient],
        verdict: &Verdict,
    ) -> Result<Vec<(u32, Outcome)>, (ClientError, bool)> {
        let recipients: Vec<_> = pending.iter().map(|p| &p.recipient).collect();
        if job.envelope.smtputf8 && !client.caps.smtputf8 && needs_smtputf8(job, pending) {
            // RFC 6531 §3.4: non-ASCII addresses cannot go to a server
            // without SMTPUTF8; downgrading them is not ours to do.
            let remote = format!("{}[{}]", client.host, client.peer.ip());
            let detail = Detail {
                status: [5, 6, 7],
                remote: Some(remote.clone()),
                reply: None,
                text: format!("{remote} does not support SMTPUTF8, which this message needs"),
            };
            return Ok(pending
                .iter()
                .map(|p| (p.index, Outcome::Failed(detail.clone())))
                .collect());
        }
        if job.envelope.body_8bit && !client.caps.eight_bit {
            // RFC 6152 §3: 8-bit content goes only to a server that offers
            // 8BITMIME; converting MIME to 7 bits is not ours to do.
            let remote = format!("{}[{}]", client.host, client.peer.ip());
            let detail = Detail {
                status: [5, 6, 3],
                remote: Some(remote.clone()),
                reply: None,
                text: format!(
                    "{remote} does not offer 8BITMIME, and this message has 8-bit content (RFC 6152 §3)"
                ),
            };
            return Ok(pending
                .iter()
                .map(|p| (p.index, Outcome::Failed(detail.clone())))
                .collect());
        }
        let before = client.replies_read();
        // The recipient's view (crate::view): how this connection did,
        // above everything else (the DKIM signature does not cover it).
        let body = match self.config().view(&job.envelope.tenant.0) {
            Some(v) if v.header => {
                let header = crate::view::transport_header(verdict, self.config().helo_name());
                std::borrow::Cow::Owned([header.as_bytes(), &job.body].concat())
            }
            _ => std::borrow::Cow::Borrowed(&job.body[..]),
        };
        let replies = match client.send(&job.envelope, &recipients, &body).await {
            Ok(r) => r,
            Err(e) => {
                let progressed = client.replies_read() > before;
                return Err((e, progressed));
            }
        };
        let remote = format!("{}[{}]", client.host, client.peer.ip());
        self.note_accepted(job, pending, &replies.per_recipient, &remote);
        Ok(pending
            .iter()
            .zip(replies.per_recipient)
            .map(|(p, reply)| {
                let detail = Detail::from_reply(&remote, &reply);
                let outcome = if reply.is_positive() {
                    Outcome::Delivered(detail)
                } else if reply.is_permanent() {
                    Outcome::Failed(detail)
                } else {
                    Outcome::Deferred(detail)
                };
                (p.index, outcome)
            })
            .collect())
    }
}

impl Outbound {
    /// Writes down at once which recipients the peer took, so that a
    /// crash before the attempt is recorded does not send them again.
    fn note_accepted(
        &self,
        job: &LoadedJob,
        pending: &[&PendingRecipient],
        replies: &[crate::reply::Reply],
        remote: &str,
    ) {
        let (Some(journal), Some(first)) = (&self.journal, pending.first()) else {
            return;
        };
        if job.id == QueueId::UNSPOOLED {
            return;
        }
        let recipients: Vec<u32> = pending
            .iter()
            .zip(replies)
            .filter(|(_, r)| r.is_positive())
            .map(|(p, _)| p.index)
            .collect();
        if !recipients.is_empty() {
            journal.note(&Entry {
                id: job.id,
                domain: first.recipient.domain.clone(),
                remote: remote.to_string(),
                recipients,
            });
        }
    }
}

/// Whether the envelope has a non-ASCII address.
fn needs_smtputf8(job: &LoadedJob, pending: &[&PendingRecipient]) -> bool {
    !job.envelope.sender.is_ascii() || pending.iter().any(|p| !p.recipient.address.is_ascii())
}

pub(super) fn deferred_by(client: &SmtpClient, e: &ClientError) -> Outcome {
    let remote = format!("{}[{}]", client.host, client.peer.ip());
    Outcome::Deferred(Detail {
        status: [4, 4, 2],
        remote: Some(remote.clone()),
        reply: None,
        text: format!("{remote}: {e}"),
    })
}
