//! Sealed delivery: what happens to a recipient the policy seals.
//!
//! For each such recipient: its pre-agreed password, or a fresh one sent
//! out of band first (webhook or a mail to the sender over a qualified
//! connection; if that fails, nothing is sent and the message waits);
//! then the message sealed into an envelope and sent inside the
//! notification mail over the best usable connection to the recipient's
//! domain, whatever its level — the envelope needs none. A message too
//! large to seal bounces with a clear reason. The password is never
//! logged or spooled.

use super::*;
use crate::config::TenantSeal;
use crate::message::Envelope;
use crate::outbound::Direct;
use crate::seal::channel::{self, Contacts, PasswordChannel, WebhookPayload};
use crate::seal::notify::{self, Addressing, Words};
use crate::seal::opener::Texts;
use crate::seal::password::Password;
use crate::seal::{SealError, seal_message};

/// How long the webhook may take.
const WEBHOOK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

impl Outbound {
    /// Seals and sends to each recipient in `to_seal` over `carrier` (a
    /// usable connection to their domain, if one was made).
    pub(super) async fn deliver_sealed(
        &self,
        job: &LoadedJob,
        to_seal: ToSeal<'_>,
        carrier: Option<Idle>,
        unreachable: &str,
        attempt: &mut Attempt,
    ) {
        let domain = to_seal
            .first()
            .map(|(p, _, _)| p.recipient.domain.clone())
            .unwrap_or_default();
        let Some(mut carrier) = carrier else {
            for (p, req, reason) in to_seal {
                attempt.outcomes.push((
                    p.index,
                    Outcome::Deferred(Detail::local(
                        [4, 4, 1],
                        format!(
                            "policy: seal: {reason}; no host to carry the envelope: {unreachable}"
                        ),
                    )),
                ));
                attempt.push_decision(p.index, &req, Action::Seal { reason });
            }
            return;
        };
        let seal = self
            .config()
            .tenants
            .iter()
            .find(|t| t.id == job.envelope.tenant.0)
            .map(|t| t.seal.clone())
            .unwrap_or_default();
        let lang = seal
            .language
            .clone()
            .unwrap_or_else(|| self.config().seal.language.clone());
        let texts = Texts::for_language(&lang).unwrap_or(crate::seal::opener::EN);
        let mut words = Words::for_language(&lang);
        if let Some(s) = &seal.notification_subject {
            words.subject = s.clone();
        }
        if let Some(b) = &seal.notification_body {
            words.body = b.replace("\r\n", "\n").replace('\n', "\r\n");
        }
        let mut broken = None::<String>;
        for (p, req, reason) in to_seal {
            attempt.push_decision(
                p.index,
                &req,
                Action::Seal {
                    reason: reason.clone(),
                },
            );
            if let Some(why) = &broken {
                attempt.outcomes.push((
                    p.index,
                    Outcome::Deferred(Detail::local([4, 4, 2], why.clone())),
                ));
                continue;
            }
            let outcome = match self
                .seal_one(job, p, &seal, &lang, &texts, &words, &reason)
                .await
            {
                Err(outcome) => outcome,
                Ok((notice, how)) => {
                    let verdict = carrier.verdict.clone();
                    match self
                        .transact(&mut carrier.client, &notice, &[p], &verdict)
                        .await
                    {
                        Ok(mut outcomes) => match outcomes.pop() {
                            Some((_, Outcome::Delivered(d))) => Outcome::Delivered(Detail {
                                text: format!("sealed ({reason}); password: {how}; {}", d.text),
                                ..d
                            }),
                            Some((_, other)) => other,
                            None => Outcome::Deferred(Detail::local([4, 4, 2], "no reply")),
                        },
                        Err((e, _)) => {
                            let outcome = deferred_by(&carrier.client, &e);
                            if let Outcome::Deferred(d) = &outcome {
                                broken = Some(d.text.clone());
                            }
                            outcome
                        }
                    }
                }
            };
            attempt.outcomes.push((p.index, outcome));
        }
        if broken.is_none() {
            self.release(&domain, carrier);
        }
    }

    /// Everything before the envelope travels: password, envelope,
    /// password out of band, notification. `Err` is the recipient's outcome.
    #[allow(clippy::too_many_arguments)]
    async fn seal_one(
        &self,
        job: &LoadedJob,
        p: &PendingRecipient,
        seal: &TenantSeal,
        lang: &str,
        texts: &Texts,
        words: &Words,
        reason: &Reason,
    ) -> Result<(LoadedJob, String), Outcome> {
        let rcpt = &p.recipient.address;
        let defer = |why: String| {
            Outcome::Deferred(Detail::local(
                [4, 7, 10],
                format!("policy: seal: {reason}; {why}; nothing sent"),
            ))
        };
        let agreed = match &self.passwords {
            Some(store) => store
                .get(&job.envelope.tenant.0, rcpt)
                .await
                .map_err(|e| defer(e.to_string()))?,
            None => None,
        };
        let (password, fresh) = match agreed {
            Some(pw) => (pw, false),
            None => (Password::generate(), true),
        };
        let iterations = self.config().seal.iterations;
        let limit = self.config().seal.max_size;
        let body = job.body.clone();
        let pw = password.clone();
        // PBKDF2 is deliberately slow: off the async workers.
        let sealed =
            tokio::task::spawn_blocking(move || seal_message(&body, &pw, iterations, limit))
                .await
                .map_err(|e| defer(format!("sealing stopped: {e}")))?;
        let envelope = match sealed {
            Ok(e) => e,
            Err(SealError::TooLarge { size, limit }) => {
                return Err(Outcome::Failed(Detail::local(
                    [5, 3, 4],
                    format!(
                        "policy: seal: {reason}; the message is too large to seal ({size} bytes of content, the limit is {limit}; seal.max_size): not sent"
                    ),
                )));
            }
            Err(e) => {
                return Err(Outcome::Failed(Detail::local(
                    [5, 6, 0],
                    format!("policy: seal: {reason}; the message cannot be sealed: {e}: not sent"),
                )));
            }
        };
        let how = if fresh {
            self.send_password(job, rcpt, &password, seal, lang)
                .await
                .map_err(|e| defer(format!("the password could not be sent: {e}")))?
        } else {
            "pre-agreed password".to_string()
        };
        tracing::info!(id = %job.id, to = %rcpt, "sealed; password: {how}");
        let from = if job.envelope.sender.is_empty() {
            format!("postmaster@{}", self.config().hostname)
        } else {
            job.envelope.sender.clone()
        };
        let message_id = format!("{}.{}.sealed@{}", job.id, p.index, self.config().hostname);
        let notification = notify::notification(
            &envelope,
            texts,
            words,
            &Addressing {
                from: &from,
                to: std::slice::from_ref(rcpt),
                message_id: &message_id,
                date: chrono::Utc::now().timestamp(),
            },
        );
        // A new message in the sender's name: signed like the mail it replaces.
        let mut notification = notification;
        if let Some(signature) = self.dkim.sign(&job.envelope.tenant.0, &notification) {
            notification.splice(0..0, signature.into_bytes());
        }
        let notice = LoadedJob {
            id: job.id,
            envelope: Envelope {
                body_8bit: !notification.is_ascii(),
                ..job.envelope.clone()
            },
            received_at: job.received_at,
            expires_at: job.expires_at,
            body: notification,
            recipients: vec![p.clone()],
        };
        Ok((notice, how))
    }

    /// Gets a fresh password to the recipient; says how.
    async fn send_password(
        &self,
        job: &LoadedJob,
        rcpt: &str,
        password: &Password,
        seal: &TenantSeal,
        lang: &str,
    ) -> Result<String, String> {
        if seal.password_channel == PasswordChannel::Webhook
            && let (Some(url), Some(file)) = (&seal.webhook_url, &seal.contacts_file)
        {
            // Read at each use: edits to the file apply without a restart.
            let contacts = Contacts::load(file).map_err(|e| e.to_string())?;
            if let Some(phone) = contacts.phone(rcpt) {
                let payload = WebhookPayload {
                    recipient: rcpt,
                    phone,
                    sender: &job.envelope.sender,
                    password: password.display(),
                    message: &job.id.to_string(),
                };
                channel::post_webhook(&self.http, url, &payload, WEBHOOK_TIMEOUT)
                    .await
                    .map_err(|e| format!("webhook: {e}"))?;
                return Ok(format!("sent for {phone} to the webhook"));
            }
        }
        let sender = &job.envelope.sender;
        if sender.is_empty() {
            return Err("the message has no sender to pass the password on".into());
        }
        let required = seal
            .password_mail_requires
            .unwrap_or(crate::qualify::Level::Qualified);
        let mail = channel::password_mail(
            &self.config().hostname,
            sender,
            rcpt,
            password,
            &format!("{}.password@{}", job.id, self.config().hostname),
            lang,
        );
        let level = self
            .send_direct(
                &job.envelope.tenant,
                sender,
                mail,
                Direct {
                    required,
                    despite_policy: false,
                    what: "the password mail",
                },
            )
            .await?;
        Ok(format!(
            "mailed to the sender {sender} over a {} connection",
            level.name()
        ))
    }
}
