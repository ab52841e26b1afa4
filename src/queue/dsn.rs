//! Delivery status notifications (RFC 3464): the bounce that tells a sender
//! which recipients failed and why.
//!
//! Built with mail-builder as `multipart/report; report-type=delivery-status`
//! with three parts: words for a person, the machine-readable
//! `message/delivery-status`, and the returned headers (RET=HDRS, our
//! default, so that a confidential message is not sent back in full) or the
//! whole message (RET=FULL, and only when no failed recipient's copy was of
//! class high or above: such content goes back over whatever transport
//! reaches the sender, so it is never returned). The bounce itself is
//! normal mail.

use mail_builder::MessageBuilder;

use crate::policy::RiskClass;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::{BodyPart, MimePart};

use crate::message::{Envelope, LoadedJob, QueueId, Recipient, Ret, TlsRequest, xtext};
use crate::outbound::Detail;
use crate::spool::NewMessage;

/// One failed recipient to report.
pub struct Failure<'a> {
    pub recipient: &'a Recipient,
    pub detail: &'a Detail,
}

/// Builds the DSN for `failures`; `None` for the null sender (RFC 5321 §4.5.5: never bounce a bounce).
pub fn build(
    hostname: &str,
    job: &LoadedJob,
    failures: &[Failure<'_>],
    id: QueueId,
    now: i64,
    lifetime: i64,
) -> Option<NewMessage> {
    let sender = &job.envelope.sender;
    if sender.is_empty() || failures.is_empty() {
        return None;
    }
    let date = chrono::DateTime::from_timestamp(now, 0)
        .unwrap_or_default()
        .to_rfc2822();
    let arrival = chrono::DateTime::from_timestamp(job.received_at, 0)
        .unwrap_or_default()
        .to_rfc2822();

    let mut human = format!(
        "This is the mail gateway at {hostname}.\r\n\r\n\
         Your message could not be delivered to the following recipients:\r\n\r\n"
    );
    for f in failures {
        human.push_str(&format!(
            "  <{}>: {}\r\n",
            one_line(&f.recipient.address),
            one_line(&f.detail.text)
        ));
    }
    human.push_str("\r\nThe headers of your message are attached.\r\n");

    let mut status = format!("Reporting-MTA: dns; {hostname}\r\n");
    if let Some(env_id) = &job.envelope.env_id {
        status.push_str(&format!("Original-Envelope-Id: {}\r\n", xtext(env_id)));
    }
    status.push_str(&format!("Arrival-Date: {arrival}\r\n"));
    for f in failures {
        status.push_str("\r\n");
        if let Some(orcpt) = &f.recipient.orcpt {
            status.push_str(&format!("Original-Recipient: rfc822; {}\r\n", xtext(orcpt)));
        }
        let [a, b, c] = f.detail.status;
        status.push_str(&format!(
            "Final-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {a}.{b}.{c}\r\n",
            one_line(&f.recipient.address)
        ));
        if let Some(remote) = &f.detail.remote {
            let host = remote.split('[').next().unwrap_or(remote);
            status.push_str(&format!("Remote-MTA: dns; {}\r\n", one_line(host)));
        }
        match &f.detail.reply {
            Some(reply) => status.push_str(&format!(
                "Diagnostic-Code: smtp; {}\r\n",
                one_line(&reply.to_string())
            )),
            None => status.push_str(&format!(
                "Diagnostic-Code: X-sealgate; {}\r\n",
                one_line(&f.detail.text)
            )),
        }
        status.push_str(&format!("Last-Attempt-Date: {date}\r\n"));
    }

    // RFC 8689 §5: the bounce of a REQUIRETLS message may travel a path
    // the message could not; it carries the headers only, and REQUIRETLS.
    let requiretls = job.envelope.tls_request == TlsRequest::RequireTls;
    let sensitive = requiretls
        || failures
            .iter()
            .any(|f| f.recipient.class >= RiskClass::High);
    let returned = match job.envelope.ret {
        Some(Ret::Full) if !sensitive => {
            MimePart::new("message/rfc822", BodyPart::Binary(job.body.clone().into()))
        }
        _ => MimePart::new(
            "text/rfc822-headers",
            BodyPart::Binary(headers_of(&job.body).to_vec().into()),
        ),
    }
    .transfer_encoding(if job.body.is_ascii() { "7bit" } else { "8bit" })
    .inline();

    let report = MimePart::new(
        ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
        vec![
            MimePart::new("text/plain", human),
            MimePart::new(
                "message/delivery-status",
                BodyPart::Binary(status.into_bytes().into()),
            )
            .transfer_encoding("7bit"),
            returned,
        ],
    );
    let body = MessageBuilder::new()
        .from((
            "Mail Delivery System".to_string(),
            format!("MAILER-DAEMON@{hostname}"),
        ))
        .to(sender.as_str())
        .subject("Undelivered Mail Returned to Sender")
        .header("Auto-Submitted", Raw::new("auto-replied"))
        .message_id(format!("{id}.dsn@{hostname}"))
        .date(now)
        .body(report)
        .write_to_vec()
        .ok()?;

    Some(NewMessage {
        id,
        envelope: Envelope {
            tenant: job.envelope.tenant.clone(),
            sender: String::new(),
            env_id: None,
            ret: None,
            smtputf8: !sender.is_ascii(),
            body_8bit: !body.is_ascii(),
            tls_request: if requiretls {
                TlsRequest::RequireTls
            } else {
                TlsRequest::None
            },
            content: Default::default(),
            recipients: vec![Recipient::new(sender.clone(), None, Default::default())],
        },
        received_at: now,
        expires_at: now + lifetime,
        client: format!("DSN for {}", job.id),
        events: vec![crate::report::Event {
            queue_id: id,
            at: now,
            data: crate::report::EventData::Received(Box::new(crate::report::event::Received {
                v: crate::report::event::VERSION,
                client: format!("DSN for {}", job.id),
                listener: None,
                tls: None,
                size: body.len() as u64,
                message_id: None,
                sender: String::new(),
                recipients: vec![sender.clone()],
                bounce_of: Some(job.id),
                tls_request: requiretls.then(|| {
                    "REQUIRETLS (RFC 8689 §5): the bounce of a REQUIRETLS message, headers only"
                        .to_string()
                }),
                content: None,
            })),
        }],
        body,
    })
}

/// The one encoder of a DSN field's text: no control character, so no
/// line break, can come through from a peer's reply or an address.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The header section of a message, up to and including the empty line.
fn headers_of(body: &[u8]) -> &[u8] {
    body.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| &body[..i + 4])
        .unwrap_or(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Notify, PendingRecipient, TenantId};
    use crate::reply::Reply;

    fn job(sender: &str, ret: Option<Ret>) -> LoadedJob {
        LoadedJob {
            id: QueueId(7),
            envelope: Envelope {
                tenant: TenantId("t".into()),
                sender: sender.into(),
                env_id: Some("ENV-1".into()),
                ret,
                smtputf8: false,
                body_8bit: false,
                tls_request: TlsRequest::None,
                content: Default::default(),
                recipients: vec![],
            },
            received_at: 1_700_000_000,
            expires_at: 0,
            body: b"Subject: secret plans\r\nFrom: a@src.test\r\n\r\nThe plans.\r\n".to_vec(),
            recipients: vec![PendingRecipient {
                index: 0,
                recipient: Recipient::new(
                    "x@dst.test".into(),
                    Some("x@orig.test".into()),
                    Notify::default(),
                ),
                attempts: 1,
            }],
        }
    }

    #[test]
    fn rfc3464_report_fields() {
        let j = job("a@src.test", None);
        let detail = Detail {
            status: [5, 1, 1],
            remote: Some("mx.dst.test[127.0.0.1]".into()),
            reply: Some(Reply {
                code: 550,
                status: [5, 1, 1],
                text: "no such user".into(),
            }),
            text: "mx.dst.test[127.0.0.1] said: 550 5.1.1 no such user".into(),
        };
        let failures = [Failure {
            recipient: &j.recipients[0].recipient,
            detail: &detail,
        }];
        let dsn = build("gw.test", &j, &failures, QueueId(8), 1_700_000_100, 100).expect("a DSN");
        let text = String::from_utf8(dsn.body.clone()).unwrap();
        assert!(text.contains("multipart/report"), "{text}");
        assert!(
            text.contains("report-type=\"delivery-status\"")
                || text.contains("report-type=delivery-status"),
            "{text}"
        );
        for field in [
            "Reporting-MTA: dns; gw.test",
            "Original-Envelope-Id: ENV-1",
            "Original-Recipient: rfc822; x@orig.test",
            "Final-Recipient: rfc822; x@dst.test",
            "Action: failed",
            "Status: 5.1.1",
            "Remote-MTA: dns; mx.dst.test",
            "Diagnostic-Code: smtp; 550 5.1.1 no such user",
        ] {
            assert!(text.contains(field), "missing {field}:\n{text}");
        }
        assert!(
            text.contains("Subject: secret plans"),
            "headers are returned"
        );
        assert!(
            !text.contains("The plans."),
            "the body is not returned by default"
        );
        assert_eq!(dsn.envelope.sender, "", "a DSN has the null sender");
        assert_eq!(dsn.envelope.recipients[0].address, "a@src.test");

        let full = build(
            "gw.test",
            &job("a@src.test", Some(Ret::Full)),
            &failures,
            QueueId(9),
            0,
            0,
        )
        .unwrap();
        assert!(
            String::from_utf8_lossy(&full.body).contains("The plans."),
            "RET=FULL returns the body"
        );

        // Not of a high-class copy: its content would go back over any transport.
        let high = job("a@src.test", Some(Ret::Full));
        let recipient = high.recipients[0]
            .recipient
            .clone()
            .with_class(RiskClass::High);
        let failures = [Failure {
            recipient: &recipient,
            detail: &failures[0].detail.clone(),
        }];
        let dsn = build("gw.test", &high, &failures, QueueId(10), 0, 0).unwrap();
        let text = String::from_utf8_lossy(&dsn.body);
        assert!(
            !text.contains("The plans.") && text.contains("Subject: secret plans"),
            "{text}"
        );
        assert_eq!(dsn.envelope.recipients[0].class, RiskClass::Normal);
    }

    #[test]
    fn rfc5321_4_5_5_no_bounce_to_null_sender() {
        let j = job("", None);
        let detail = Detail {
            status: [5, 0, 0],
            remote: None,
            reply: None,
            text: "x".into(),
        };
        let failures = [Failure {
            recipient: &j.recipients[0].recipient,
            detail: &detail,
        }];
        assert!(build("gw.test", &j, &failures, QueueId(8), 0, 0).is_none());
    }
}
