//! The DSN builder with hostile envelope values (ENVID, ORCPT, addresses,
//! a peer's reply text): the delivery-status part has exactly the fields
//! we write, one Final-Recipient and one Action per recipient, whatever
//! line breaks the values carry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealgate::message::{
    Envelope, LoadedJob, Notify, PendingRecipient, QueueId, Recipient, TenantId,
};
use sealgate::outbound::Detail;
use sealgate::queue::dsn::{Failure, build};

fuzz_target!(|input: (String, String, String, String)| {
    let (env_id, orcpt, local, reply) = input;
    let address = format!("{local}@dst.test");
    let recipient = Recipient::new(address, Some(orcpt), Notify::default());
    let job = LoadedJob {
        id: QueueId(1),
        envelope: Envelope {
            tenant: TenantId("t".into()),
            sender: "sender@src.test".into(),
            env_id: Some(env_id),
            ret: None,
            smtputf8: true,
            body_8bit: false,
            tls_request: Default::default(),
            content: Default::default(),
            recipients: vec![recipient.clone()],
        },
        received_at: 0,
        expires_at: 0,
        body: b"Subject: x\r\n\r\nbody\r\n".to_vec(),
        recipients: vec![PendingRecipient {
            index: 0,
            recipient: recipient.clone(),
            attempts: 1,
        }],
    };
    let detail = Detail {
        status: [5, 1, 1],
        remote: Some("mx.dst.test[192.0.2.1]".into()),
        reply: None,
        text: reply,
    };
    let failures = [Failure {
        recipient: &recipient,
        detail: &detail,
    }];
    let Some(dsn) = build("gw.test", &job, &failures, QueueId(2), 0, 0) else {
        panic!("a failure to a real sender makes a DSN");
    };
    let text = String::from_utf8_lossy(&dsn.body);
    // The machine-readable part, up to the next MIME boundary.
    let start = text
        .find("Content-Type: message/delivery-status")
        .expect("a delivery-status part");
    let part = &text[start..];
    let part = &part[..part.find("\r\n--").unwrap_or(part.len())];
    let count = |field: &str| part.lines().filter(|l| l.starts_with(field)).count();
    assert_eq!(count("Action:"), 1, "{part}");
    assert_eq!(count("Final-Recipient:"), 1, "{part}");
    assert_eq!(count("Original-Envelope-Id:"), 1, "{part}");
    assert_eq!(count("Status:"), 1, "{part}");
});
