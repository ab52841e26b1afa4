//! REQUIRETLS and `TLS-Required: No` (RFC 8689) against real peers: a
//! REQUIRETLS next hop (aiosmtpd behind DANE, tests/peers/requiretls_peer.py),
//! Postfix 3.7 behind DANE (which does not take REQUIRETLS), and a Postfix
//! listener without STARTTLS; messages sent with Python's smtplib.

mod support;
#[path = "support/world.rs"]
mod world;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::*;
use world::world;

fn gateway() -> Gateway {
    let w = world();
    Gateway::start_with(|dir, relay, sub| w.config(dir, relay, sub))
}

/// One transaction with smtplib: STARTTLS first when `tls`; prints the
/// EHLO keywords, then each reply, one per line.
fn smtplib(port: u16, tls: bool, from: &str, options: &str, to: &str, data: &str) -> String {
    let script = r#"
import smtplib, sys
port, tls, sender, options, rcpt, data = sys.argv[1:]
s = smtplib.SMTP("127.0.0.1", int(port), local_hostname="client.test")
s.ehlo()
if tls == "1":
    s.starttls()
    s.ehlo()
print("ehlo:", " ".join(sorted(s.esmtp_features)))
code, text = s.mail(sender, options.split())
print(code, text.decode())
if code == 250:
    print(*s.rcpt(rcpt))
    code, text = s.data(data.encode())
    print(code, text.decode())
s.quit()
"#;
    let out = Command::new("python3")
        .args(["-c", script, &port.to_string(), if tls { "1" } else { "0" }])
        .args([from, options, to, data])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the REQUIRETLS peer saved for `rcpt`: (MAIL FROM parameters, message).
fn saved(dir: &Path, rcpt: &str) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".eml")?;
            stem.starts_with(&format!("{rcpt}.")).then(|| {
                let mail = std::fs::read_to_string(dir.join(format!("{stem}.mail"))).unwrap();
                let eml = std::fs::read_to_string(dir.join(&name)).unwrap();
                (mail.trim().to_string(), eml)
            })
        })
        .collect();
    found.sort();
    found
}

fn wait_saved(dir: &Path, rcpt: &str) -> (String, String) {
    wait_for(Duration::from_secs(30), &format!("mail for {rcpt}"), || {
        saved(dir, rcpt).pop()
    })
}

#[test]
fn rfc8689_requiretls_is_offered_and_taken_only_over_tls() {
    let gw = gateway();
    let plain = smtplib(
        gw.relay,
        false,
        "a@client.test",
        "REQUIRETLS",
        "b@rtls.dane.test",
        "",
    );
    assert!(!plain.contains("requiretls"), "{plain}");
    assert!(plain.contains("530 5.7.10"), "{plain}");
    let tls = smtplib(
        gw.relay,
        true,
        "a@client.test",
        "",
        &format!("{}@rtls.dane.test", unique("offer")),
        &message("offer", "x\r\n"),
    );
    assert!(tls.contains("requiretls"), "{tls}");
}

#[test]
fn rfc8689_requiretls_goes_only_to_an_authenticated_host_that_takes_it() {
    let gw = gateway();
    let mail = world().requiretls_peer();
    let sender = format!("{}@rtls.dane.test", unique("sender"));

    // DANE-authenticated, REQUIRETLS offered: delivered, with the parameter.
    let rcpt = format!("{}@rtls.dane.test", unique("yes"));
    let out = smtplib(
        gw.relay,
        true,
        &sender,
        "REQUIRETLS",
        &rcpt,
        &message("yes", "x\r\n"),
    );
    assert!(out.contains("250 2.0.0 Ok: queued"), "{out}");
    let (params, _) = wait_saved(&mail, &rcpt);
    assert_eq!(params, "REQUIRETLS");
    let line = wait_delivery_line(&gw, &rcpt, "sent");
    // Normal mail needs encrypted; REQUIRETLS raises that to authenticated.
    assert_eq!(line["required"], "authenticated", "{line:?}");

    // DANE-authenticated, but Postfix 3.7 does not take REQUIRETLS: not
    // delivered, not sealed, not held: returned with 5.7.30, and the bounce
    // carries the headers only, itself with REQUIRETLS.
    let rcpt = format!("{}@ee.dane.test", unique("no"));
    let marker = unique("secret-body");
    let out = smtplib(
        gw.relay,
        true,
        &sender,
        "REQUIRETLS RET=FULL",
        &rcpt,
        &message("no", &format!("The {marker} text.\r\n")),
    );
    assert!(out.contains("250 2.0.0 Ok: queued"), "{out}");
    let line = wait_delivery_line(&gw, &rcpt, "bounced");
    assert_eq!(line["code"], "5.7.30", "{line:?}");
    assert!(
        line["reply"].contains("does not offer REQUIRETLS"),
        "{line:?}"
    );
    assert!(world().mails(&rcpt).is_empty());
    let (params, dsn) = wait_saved(&mail, &sender);
    assert_eq!(params, "REQUIRETLS");
    assert!(dsn.contains("Status: 5.7.30"), "{dsn}");
    assert!(dsn.contains("text/rfc822-headers"), "{dsn}");
    assert!(
        !dsn.contains(&marker),
        "the bounce must not carry the content: {dsn}"
    );
    // The evidence names the request and the decision.
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("250 2.0.0 Ok: queued as "))
        .unwrap()
        .trim()
        .to_string();
    let export = gw.cli(&["report", "export", "--format", "json"]);
    let text = String::from_utf8_lossy(&export.stdout);
    let received = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|r| r["kind"] == "received" && r["queue_id"] == id.as_str())
        .unwrap();
    assert!(
        received["data"]["tls_request"]
            .as_str()
            .unwrap()
            .starts_with("REQUIRETLS"),
        "{received:#}"
    );
    let attempt = attempts(&gw, &id).pop().unwrap();
    let decision = &attempt["recipients"][0];
    assert_eq!(decision["reason_code"], "requiretls", "{attempt:#}");
}

#[test]
fn rfc8689_high_class_requiretls_mail_is_returned_rather_than_sealed() {
    let gw = gateway();
    // nostarttls.pki.test: plaintext only; high mail would be sealed.
    let rcpt = format!("{}@nostarttls.pki.test", unique("high"));
    let out = smtplib(
        gw.relay,
        true,
        "a@client.test",
        "REQUIRETLS",
        &rcpt,
        &message("[secure] plans", "x\r\n"),
    );
    assert!(out.contains("250 2.0.0"), "{out}");
    let line = wait_delivery_line(&gw, &rcpt, "bounced");
    assert_eq!(line["code"], "5.7.30", "{line:?}");
    assert_eq!(line["class"], "high", "{line:?}");
}

#[test]
fn rfc8689_tls_required_no_is_honoured_for_normal_mail_only() {
    let gw = gateway();
    let normal = format!("{}@nostarttls.pki.test", unique("normal"));
    let data = |subject: &str| {
        message(subject, "x\r\n").replacen("MIME-Version", "TLS-Required: No\r\nMIME-Version", 1)
    };
    let out = smtplib(gw.relay, true, "a@client.test", "", &normal, &data("plain"));
    assert!(out.contains("250 2.0.0"), "{out}");
    let line = wait_delivery_line(&gw, &normal, "sent");
    assert_eq!(line["reached"], "plaintext", "{line:?}");
    assert_eq!(line["required"], "plaintext", "{line:?}");

    // High mail: the header changes nothing (it is sealed, as always).
    let high = format!("{}@nostarttls.pki.test", unique("high"));
    let out = smtplib(
        gw.relay,
        true,
        "a@client.test",
        "",
        &high,
        &data("[secure] plans"),
    );
    assert!(out.contains("250 2.0.0"), "{out}");
    // (Its password has nowhere to go in this world, so it waits; the
    // decision is what counts.)
    let line = wait_for(
        Duration::from_secs(30),
        "the high message's decision",
        || {
            delivery_lines(&gw.log())
                .into_iter()
                .find(|f| f["to"] == high)
        },
    );
    assert_eq!(line["action"], "seal", "{line:?}");
    assert_eq!(line["required"], "qualified", "{line:?}");
}
