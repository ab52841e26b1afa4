//! Sealed delivery end to end: a high-class message to a peer that is only
//! TLS (the PKI world's `wrongname` listener, `encrypted`) arrives there as
//! the notification mail with the envelope; the password reaches the
//! recipient's phone through a webhook (a receiver in this test), or the
//! sender by a mail over a qualified connection, or was agreed before.

mod support;
#[path = "support/world.rs"]
mod world;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mail_parser::{MessageParser, MimeHeaders};
use serde_json::Value;
use support::*;
use world::world;

const T: Duration = Duration::from_secs(30);

/// An HTTP endpoint that records every POST body and answers `status`.
struct Webhook {
    port: u16,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Webhook {
    fn start(status: u16) -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = bodies.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut reader = BufReader::new(conn);
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_ok()
                    && let Ok(v) = serde_json::from_slice(&body)
                {
                    seen.lock().unwrap().push(v);
                }
                let _ = write!(
                    reader.get_mut(),
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        Webhook { port, bodies }
    }

    fn wait(&self, n: usize) -> Vec<Value> {
        wait_for(T, "the webhook call", || {
            let b = self.bodies.lock().unwrap();
            (b.len() >= n).then(|| b.clone())
        })
    }
}

/// A gateway in the PKI world whose default tenant sends passwords to
/// `hook` for the recipients in `contacts` (`address,phone` lines).
fn gateway(hook: &Webhook, contacts: &str, extra: &str) -> Gateway {
    let w = world();
    Gateway::start_with(|dir, relay, sub| {
        let file = dir.join("contacts.csv");
        std::fs::write(&file, contacts).unwrap();
        format!(
            "{}\n[tls]\nprofile = \"bsi-strict\"\n{extra}\n[[tenant]]\nid = \"default\"\nnetworks = [\"127.0.0.0/8\"]\nusers = [\"alice\"]\n[tenant.seal]\npassword_channel = \"webhook\"\nwebhook_url = \"http://127.0.0.1:{}/sms\"\ncontacts_file = \"{}\"\n",
            w.config(dir, relay, sub),
            hook.port,
            file.display()
        )
    })
}

const SECRET: &str = "The merger price is 42 million.";

fn send(gw: &Gateway, from: &str, to: &str, subject: &str) -> String {
    let data = format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{}@src.test>\r\n\
         Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\n{SECRET}\r\n",
        unique("m")
    );
    let mut c = Client::connect(gw.relay);
    c.cmd("EHLO client.test");
    let reply = c.message(from, &[to], data.as_bytes());
    assert!(reply.starts_with("250"), "{reply}");
    reply.trim().rsplit(' ').next().unwrap().to_string()
}

fn wait_mail(rcpt: &str) -> Vec<u8> {
    wait_for(T, &format!("mail for {rcpt}"), || {
        world().mails(rcpt).into_iter().next()
    })
}

/// The recipient's state once an attempt has ended for it.
fn after_attempt(gw: &Gateway, id: &str) -> Value {
    wait_for(T, "an attempt", || {
        let out = gw.cli(&["queue", "show", id, "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let r = v["recipients"][0].clone();
        (r["attempts"].as_u64()? >= 1).then_some(r)
    })
}

/// The queue's log line for a recipient that finished with `status`
/// (`sealed`, `bounced`): its reply text.
fn finished(gw: &Gateway, rcpt: &str, status: &str) -> String {
    let line = wait_delivery_line(gw, rcpt, status);
    // Sealed or not, the policy's decision was to seal.
    assert_eq!(line["action"], "seal", "{line:?}");
    line["reply"].clone()
}

/// Opens the notification's envelope with `sealgate envelope open`.
fn open(gw: &Gateway, notification: &[u8], password: &str) -> String {
    let parsed = MessageParser::default().parse(notification).unwrap();
    let page = parsed.attachments().next().expect("the opener is attached");
    assert_eq!(page.attachment_name(), Some("secure-message.html"));
    let file = gw.dir.path().join(unique("page"));
    std::fs::write(&file, page.contents()).unwrap();
    let out_file = gw.dir.path().join(unique("eml"));
    let out = with_stdin(
        Command::new(bin())
            .args(["envelope", "open"])
            .arg(&file)
            .arg("--out")
            .arg(&out_file),
        &format!("{password}\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(out_file).unwrap()
}

fn assert_nothing_in_clear(notification: &[u8], secrets: &[&str]) {
    let text = String::from_utf8_lossy(notification);
    for s in secrets {
        assert!(
            !text.contains(s),
            "{s:?} in clear in the notification:\n{text}"
        );
    }
}

/// Nothing the gateway wrote to disk holds the password.
fn assert_password_not_stored(gw: &Gateway, password: &str) {
    for entry in std::fs::read_dir(gw.dir.path()).unwrap().flatten() {
        let path = entry.path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes
                    .windows(password.len())
                    .any(|w| w == password.as_bytes()),
                "the password is in {}",
                path.display()
            );
        }
    }
}

#[test]
fn a_high_message_arrives_sealed_and_the_password_reaches_the_webhook() {
    let hook = Webhook::start(200);
    let gw = gateway(&hook, "b@wrongname.pki.test,+49 170 1234567\n", "");
    let id = send(
        &gw,
        "sender@src.test",
        "b@wrongname.pki.test",
        "[secure] Project Falcon",
    );
    let call = hook.wait(1).remove(0);
    assert_eq!(call["recipient"], "b@wrongname.pki.test");
    assert_eq!(call["phone"], "+49 170 1234567");
    assert_eq!(call["sender"], "sender@src.test");
    assert_eq!(call["message"], id.as_str());
    let password = call["password"].as_str().unwrap().to_string();

    let notification = wait_mail("b@wrongname.pki.test");
    assert_nothing_in_clear(&notification, &["Falcon", "42 million", &password]);
    let text = String::from_utf8_lossy(&notification);
    assert!(
        text.contains("Subject: Secure message from sender@src.test"),
        "{text}"
    );
    let original = open(&gw, &notification, &password);
    assert!(
        original.contains("Subject: Project Falcon"),
        "tag removed, subject kept: {original}"
    );
    assert!(original.contains(SECRET), "{original}");

    let why = finished(&gw, "b@wrongname.pki.test", "sealed");
    assert!(
        why.contains("sealed (class high needs qualified")
            && why.contains("hostname: ")
            && why.contains("said: 250"),
        "{why}"
    );
    let log = gw.log();
    assert!(
        log.contains("sealed; password: sent for +49 170 1234567 to the webhook"),
        "{log}"
    );
    assert_password_not_stored(&gw, &password);
    assert_password_not_stored(&gw, &password.replace('-', ""));
}

#[test]
fn without_a_phone_the_password_goes_to_the_sender_over_a_qualified_connection_only() {
    let hook = Webhook::start(200);
    let gw = gateway(&hook, "# nobody\n", "");
    send(
        &gw,
        "offer@good.pki.test",
        "c@wrongname.pki.test",
        "[secure] Offer",
    );
    let mail = wait_mail("offer@good.pki.test");
    let parsed = MessageParser::default().parse(&mail).unwrap();
    assert_eq!(
        parsed.subject(),
        Some("Password for your secure message to c@wrongname.pki.test")
    );
    let body = parsed.body_text(0).unwrap().into_owned();
    let password = body
        .lines()
        .find_map(|l| l.strip_prefix("Password: "))
        .expect("the password line")
        .trim()
        .to_string();
    let notification = wait_mail("c@wrongname.pki.test");
    assert!(open(&gw, &notification, &password).contains(SECRET));
    finished(&gw, "c@wrongname.pki.test", "sealed");
    assert!(
        gw.log().contains(
            "password: mailed to the sender offer@good.pki.test over a qualified connection"
        ),
        "{}",
        gw.log()
    );
    assert!(hook.bodies.lock().unwrap().is_empty());

    // A sender whose domain reaches only authenticated gets no password
    // mail, and so the recipient gets nothing yet.
    let id = send(
        &gw,
        "alice@rsa2048.pki.test",
        "d@wrongname.pki.test",
        "[secure] Offer",
    );
    let r = after_attempt(&gw, &id);
    assert_eq!(r["status"], "pending", "{r}");
    let why = r["last_reply"].as_str().unwrap();
    assert!(
        why.contains("the password could not be sent: mx.rsa2048.pki.test")
            && why.contains("reached authenticated, the password mail needs qualified")
            && why.ends_with("nothing sent"),
        "{why}"
    );
    assert!(world().mails("d@wrongname.pki.test").is_empty());
    assert!(world().mails("alice@rsa2048.pki.test").is_empty());
}

#[test]
fn a_pre_agreed_password_needs_no_channel_and_a_failing_webhook_sends_nothing() {
    let hook = Webhook::start(503);
    let gw = gateway(
        &hook,
        "e@wrongname.pki.test,+49 170 7654321\nf@wrongname.pki.test,+49 170 7654322\n",
        "",
    );
    let agreed = "pre agreed secret 2026";
    let out = with_stdin(
        Command::new(bin()).arg("--config").arg(&gw.config).args([
            "passwords",
            "set",
            "e@wrongname.pki.test",
        ]),
        &format!("{agreed}\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = gw.cli(&["passwords", "list"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("e@wrongname.pki.test"));

    send(
        &gw,
        "sender@src.test",
        "e@wrongname.pki.test",
        "[secure] Again",
    );
    let notification = wait_mail("e@wrongname.pki.test");
    assert!(open(&gw, &notification, agreed).contains(SECRET));
    assert!(
        gw.log().contains("password: pre-agreed password"),
        "{}",
        gw.log()
    );
    assert_password_not_stored(&gw, "preagreedsecret2026");

    // The webhook answers 503: the password did not get through, so the
    // envelope is not sent either.
    let id = send(
        &gw,
        "sender@src.test",
        "f@wrongname.pki.test",
        "[secure] Again",
    );
    hook.wait(1);
    let r = after_attempt(&gw, &id);
    assert_eq!(r["status"], "pending", "{r}");
    let why = r["last_reply"].as_str().unwrap();
    assert!(
        why.contains("the password could not be sent: webhook: http://127.0.0.1:")
            && why.contains("answered 503"),
        "{why}"
    );
    assert!(world().mails("f@wrongname.pki.test").is_empty());
}

#[test]
fn a_message_too_large_to_seal_bounces_with_the_reason() {
    let hook = Webhook::start(200);
    let gw = gateway(
        &hook,
        "g@wrongname.pki.test,+49 170 1111111\n",
        "[seal]\nmax_size = 200\n",
    );
    send(
        &gw,
        "big@good.pki.test",
        "g@wrongname.pki.test",
        "[secure] Big",
    );
    let line = finished(&gw, "g@wrongname.pki.test", "bounced");
    assert!(line.contains("too large to seal"), "{line}");
    let dsn = wait_for(T, "the bounce", || {
        world()
            .mails("big@good.pki.test")
            .into_iter()
            .find(|m| String::from_utf8_lossy(m).contains("Undelivered Mail"))
    });
    let text = String::from_utf8_lossy(&dsn);
    assert!(
        text.contains("too large to seal") && text.contains("seal.max_size"),
        "{text}"
    );
    assert!(world().mails("g@wrongname.pki.test").is_empty());
    assert!(
        hook.bodies.lock().unwrap().is_empty(),
        "no password for nothing"
    );
}
