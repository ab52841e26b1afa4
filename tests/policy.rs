//! The policy engine end to end: messages classified at reception by the
//! rules of a policy directory, then delivered, sealed, or deferred
//! according to the verdict of real peers (the PKI world's Postfix
//! listeners behind DNSSEC-signed `NAME.pki.test` domains). The sender
//! here is at `src.test`, which does not exist: a sealed message has no
//! way for its password and waits (tests/sealed.rs has the ways).

mod support;
#[path = "support/world.rs"]
mod world;

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::*;
use world::{MX_PORT, PKI_PEERS, run, world};

const T: Duration = Duration::from_secs(30);

/// The tests' policy, on top of the shipped default.
const POLICY: &str = r#"
[class_header]
name = "X-Sealgate-Class"

# chacha.pki.test reaches authenticated (ChaCha20 is outside the profile):
# its minimum class makes normal mail high.
[[domain]]
name = "chacha.pki.test"
min_class = "high"

# x25519.pki.test reaches authenticated under bsi-strict; an exception lets
# high mail go there anyway.
[[exception]]
domain = "x25519.pki.test"
level = "authenticated"
reason = "partner migrates to P-256, ticket 77"
approved_by = "ciso@src.test"
expires = 2099-12-31

# rsa2048.pki.test had one too, but it has ended.
[[exception]]
domain = "rsa2048.pki.test"
level = "authenticated"
reason = "old key until 2020"
approved_by = "ciso@src.test"
expires = 2020-12-31
"#;

fn gateway(extra_policy: &[(&str, &str)]) -> Gateway {
    let w = world();
    let mut files = vec![("tests.toml", POLICY)];
    files.extend_from_slice(extra_policy);
    Gateway::start_with(|dir, relay, sub| {
        format!(
            "{}\n[tls]\nprofile = \"bsi-strict\"\n{}",
            w.config(dir, relay, sub),
            policy_dir(dir, &files)
        )
    })
}

fn mail(subject: &str, extra_headers: &str) -> String {
    format!(
        "From: sender@src.test\r\nTo: someone@dst.test\r\nSubject: {subject}\r\n\
         Message-ID: <{}@src.test>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n{extra_headers}\r\nbody\r\n",
        unique("m")
    )
}

/// Sends over the relay listener (trusted by network only); returns the queue id.
fn send(gw: &Gateway, to: &[&str], data: &str) -> String {
    let mut c = Client::connect(gw.relay);
    c.cmd("EHLO client.test");
    let reply = c.message("sender@src.test", to, data.as_bytes());
    assert!(reply.starts_with("250"), "{reply}");
    reply.trim().rsplit(' ').next().unwrap().to_string()
}

/// A recipient's state once an attempt has ended for it.
fn after_attempt(gw: &Gateway, id: &str, rcpt: &str, attempts: u64) -> Value {
    wait_for(T, &format!("an attempt for {rcpt}"), || {
        let out = gw.cli(&["queue", "show", id, "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v["recipients"]
            .as_array()?
            .iter()
            .find(|r| r["address"] == rcpt)
            .filter(|r| r["attempts"].as_u64().unwrap_or(0) >= attempts)
            .cloned()
    })
}

fn wait_mail(rcpt: &str) -> String {
    let mails = wait_for(T, &format!("mail for {rcpt}"), || {
        let m = world().mails(rcpt);
        (!m.is_empty()).then_some(m)
    });
    String::from_utf8_lossy(&mails[0]).into_owned()
}

fn held(r: &Value) -> &str {
    assert_eq!(r["status"], "pending", "{r}");
    r["last_reply"].as_str().unwrap_or_default()
}

#[test]
fn a_high_message_goes_to_the_qualified_peer_and_is_held_for_the_tls_only_one() {
    let gw = gateway(&[]);
    let id = send(
        &gw,
        &["a@good.pki.test", "b@wrongname.pki.test"],
        &mail("[secure] Offer", ""),
    );
    let got = wait_mail("a@good.pki.test");
    assert!(
        got.lines().any(|l| l.trim_end() == "Subject: Offer"),
        "tag removed: {got}"
    );
    let r = after_attempt(&gw, &id, "b@wrongname.pki.test", 1);
    let why = held(&r);
    // Sealed, but the password has no way to the recipient (the sender's
    // domain has no mail exchanger): nothing at all is sent.
    assert!(
        why.contains("policy: seal: class high needs qualified")
            && why.contains("reached encrypted")
            && why.contains("hostname: ")
            && why.contains("the password could not be sent: domain src.test does not exist")
            && why.ends_with("nothing sent"),
        "{why}"
    );
    assert!(world().mails("b@wrongname.pki.test").is_empty());
    // The same TLS-only peer is good enough for normal mail.
    send(&gw, &["c@wrongname.pki.test"], &mail("Lunch", ""));
    wait_mail("c@wrongname.pki.test");
    let log = gw.log();
    assert!(
        log.contains("class=high") && log.contains("by=subject tag [secure]"),
        "{log}"
    );
}

#[test]
fn domain_profiles_raise_the_class_and_exceptions_lower_the_level_until_they_expire() {
    let gw = gateway(&[]);
    let id = send(&gw, &["a@chacha.pki.test"], &mail("Statement", ""));
    let why = held(&after_attempt(&gw, &id, "a@chacha.pki.test", 1)).to_string();
    assert!(
        why.contains("class high needs qualified [domain profile chacha.pki.test: at least high]")
            && why.contains("cipher: "),
        "{why}"
    );
    // Excepted: high mail is delivered at authenticated, with the reason in the log.
    send(&gw, &["b@x25519.pki.test"], &mail("[secure] Contract", ""));
    wait_mail("b@x25519.pki.test");
    // Expired: the exception is named, and not applied.
    let id = send(&gw, &["c@rsa2048.pki.test"], &mail("[secure] Contract", ""));
    let why = held(&after_attempt(&gw, &id, "c@rsa2048.pki.test", 1)).to_string();
    assert!(
        why.contains("exception for rsa2048.pki.test expired 2021-01-01T00:00:00Z, not applied")
            && why.contains("key_size: RSA 2048 bits"),
        "{why}"
    );
    let shown = gw.cli(&["domains", "show", "x25519.pki.test"]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains("last level: authenticated")
            && text.contains("authenticated suffices for normal, high until")
            && text.contains("partner migrates to P-256, ticket 77 (approved by ciso@src.test)"),
        "{text}"
    );
    // The same view for auditors, as CSV and JSON.
    let out = gw.cli(&["report", "domains"]);
    assert!(out.status.success(), "{out:?}");
    let mut csv = csv::Reader::from_reader(out.stdout.as_slice());
    let header: Vec<String> = csv.headers().unwrap().iter().map(str::to_string).collect();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let rows: Vec<csv::StringRecord> = csv.records().map(Result::unwrap).collect();
    let row = |domain: &str| rows.iter().find(|r| &r[0] == domain).unwrap().clone();
    let x = row("x25519.pki.test");
    assert_eq!(&x[col("last_level")], "authenticated");
    assert!(
        x[col("exceptions")].contains(
            "authenticated until 2100-01-01T00:00:00Z by ciso@src.test: partner migrates"
        ),
        "{x:?}"
    );
    assert!(x[col("failing_checks")].contains("key_exchange: "), "{x:?}");
    let r = row("rsa2048.pki.test");
    assert!(r[col("exceptions")].contains("(expired)"), "{r:?}");
    let out = gw.cli(&["report", "domains", "--format", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .any(|d| d["domain"] == "chacha.pki.test"
                && d["profiles"][0].as_str().unwrap().contains("at least high"))
    );
    // And as a page for people: the same rows, self-contained.
    let out = gw.cli(&["report", "domains", "--format", "html"]);
    let html = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && html.starts_with("<!DOCTYPE html>"),
        "{out:?}"
    );
    assert!(!html.contains("<script") && !html.contains(" src="));
    assert!(
        html.contains("<td>x25519.pki.test</td><td>authenticated</td>")
            && html.contains("by ciso@src.test: partner migrates"),
        "{html}"
    );
}

#[test]
fn confidential_mail_never_leaves_as_it_is_and_the_class_header_needs_trust() {
    let gw = gateway(&[]);
    // Over the relay listener the client is trusted by its network only:
    // its class header is not believed, the message stays normal.
    send(
        &gw,
        &["a@good.pki.test"],
        &mail("Plan", "X-Sealgate-Class: confidential\r\n"),
    );
    wait_mail("a@good.pki.test");
    // An authenticated client's header is: sealed, even to a qualified peer.
    let server = format!("127.0.0.1:{}", gw.submission);
    let (ok, out) = swaks_auth(
        &server,
        "b@good.pki.test",
        "PLAIN",
        &["--header", "X-Sealgate-Class: confidential"],
    );
    assert!(ok, "{out}");
    let id = out
        .split("queued as ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("queue id")
        .to_string();
    let why = held(&after_attempt(&gw, &id, "b@good.pki.test", 1)).to_string();
    assert!(
        why.contains("policy: seal: class confidential is always sealed"),
        "{why}"
    );
    assert!(world().mails("b@good.pki.test").is_empty());
}

/// 127.0.3.N of a PKI peer.
fn peer_address(name: &str) -> String {
    let i = PKI_PEERS
        .iter()
        .position(|(n, _, _)| *n == name)
        .expect("peer");
    format!("127.0.3.{}", i + 1)
}

fn offers_starttls(addr: &str) -> bool {
    let Ok(stream) = TcpStream::connect((addr, MX_PORT)) else {
        return true;
    };
    let mut c = Client::from_stream(stream);
    c.reply();
    let ehlo = c.cmd("EHLO probe.test");
    c.cmd("QUIT");
    ehlo.contains("STARTTLS")
}

/// The flip peer's STARTTLS is switched off and on by the downgrade tests:
/// one at a time.
static FLIP: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_peer_that_stops_offering_starttls_is_a_downgrade_until_confirmed() {
    let _flip = FLIP.lock().unwrap_or_else(|e| e.into_inner());
    let gw = gateway(&[]);
    downgrade_until_confirmed(&gw, &gw);
}

/// Two nodes on one PostgreSQL database remember each domain together:
/// what one node delivered at `qualified` makes the other hold high-class
/// mail when the peer falls, and a confirm on the first ends the hold on
/// the second.
#[test]
fn in_a_cluster_a_downgrade_seen_by_one_node_holds_on_another_until_confirmed_anywhere() {
    let _flip = FLIP.lock().unwrap_or_else(|e| e.into_inner());
    let url = pg_database(pg_server(), "downgrade");
    let shared = tempfile::tempdir().unwrap();
    let node = |name: &str| {
        let w = world();
        Gateway::start_with(|dir, relay, sub| {
            format!(
                "{}\n[tls]\nprofile = \"bsi-strict\"\n{}\n[storage]\nurl = \"{url}\"\n\n[cluster]\nnode = \"{name}\"\n\n[spool]\nkey_file = \"{}\"\n",
                w.config(dir, relay, sub),
                policy_dir(dir, &[("tests.toml", POLICY)]),
                shared.path().join("spool.key").display()
            )
        })
    };
    let first = node("first");
    let second = node("second");
    downgrade_until_confirmed(&first, &second);
}

/// `before` delivers to flip.pki.test at its best; the peer drops
/// STARTTLS; `after` holds high-class mail for it as a downgrade; an
/// operator confirms on `before`, and `after` seals the held message.
fn downgrade_until_confirmed(before: &Gateway, after: &Gateway) {
    let addr = peer_address("flip");
    // Addresses of this run only: the other run's mail is in the same mailbox.
    let (a, b) = (
        format!("{}@flip.pki.test", unique("a")),
        format!("{}@flip.pki.test", unique("b")),
    );
    send(before, &[&a], &mail("Before", ""));
    wait_mail(&a);
    let list = String::from_utf8_lossy(&after.cli(&["domains", "list"]).stdout).into_owned();
    assert!(
        list.lines()
            .any(|l| l.starts_with("flip.pki.test") && l.contains("qualified")),
        "{list}"
    );

    // An attacker strips STARTTLS (here: the peer's own setting).
    let postfix = world().dir.join("mx");
    let service = format!("{addr}:{MX_PORT}/inet/smtpd_tls_security_level=none");
    run(Command::new("postconf")
        .arg("-c")
        .arg(&postfix)
        .arg("-P")
        .arg(&service));
    run(Command::new("postfix")
        .arg("-c")
        .arg(&postfix)
        .arg("reload"));
    wait_for(T, "the peer without STARTTLS", || {
        (!offers_starttls(&addr)).then_some(())
    });

    let id = send(after, &[&b], &mail("[secure] After", ""));
    let why = held(&after_attempt(after, &id, &b, 1)).to_string();
    assert!(
        why.contains(
            "policy: defer: downgrade: flip.pki.test reached qualified before and plaintext since"
        ) && why.contains("starttls: STARTTLS not offered")
            && why.contains("sealgate domains confirm flip.pki.test"),
        "{why}"
    );
    assert!(
        after.log().contains("alert=\"downgrade\""),
        "{}",
        after.log()
    );
    let shown = String::from_utf8_lossy(&before.cli(&["domains", "show", "flip.pki.test"]).stdout)
        .into_owned();
    assert!(
        shown.contains("best level: qualified")
            && shown.contains("last level: plaintext")
            && shown.contains("downgrade:  since"),
        "{shown}"
    );

    // The operator accepts the new state: the message is sealed, never sent in clear.
    let confirmed = before.cli(&["domains", "confirm", "flip.pki.test"]);
    assert!(confirmed.status.success(), "{confirmed:?}");
    assert!(
        String::from_utf8_lossy(&confirmed.stdout).contains("plaintext accepted"),
        "{confirmed:?}"
    );
    let r = wait_for(T, "a decision after the confirmation", || {
        let r = after_attempt(after, &id, &b, 1);
        r["last_reply"]
            .as_str()
            .is_some_and(|w| w.contains("policy: seal"))
            .then_some(r)
    });
    assert!(held(&r).contains("the password could not be sent"), "{r}");
    assert!(world().mails(&b).is_empty());

    // Put the peer back for whatever runs next in this world.
    run(Command::new("postconf")
        .arg("-c")
        .arg(&postfix)
        .arg("-PX")
        .arg(format!("{addr}:{MX_PORT}/inet/smtpd_tls_security_level")));
    run(Command::new("postfix")
        .arg("-c")
        .arg(&postfix)
        .arg("reload"));
}

#[test]
fn a_bad_policy_on_reload_keeps_the_old_one_and_says_why() {
    let gw = gateway(&[]);
    let dir = gw.dir.path().join("policies");
    std::fs::write(
        dir.join("zz-new.toml"),
        "[[rule]]\nrecipient = \"*@crlgood.pki.test\"\nclass = \"secret\"\n",
    )
    .unwrap();
    gw.signal_hup();
    let log = wait_for(T, "the reload's error", || {
        let log = gw.log();
        log.contains("policy reload failed").then_some(log)
    });
    assert!(
        log.contains("zz-new.toml:3:") && log.contains("previous policy stays in force"),
        "{log}"
    );
    // The old policy still applies: normal mail to crlgood (qualified) is delivered.
    send(&gw, &["a@crlgood.pki.test"], &mail("Still normal", ""));
    wait_mail("a@crlgood.pki.test");
    // `config check` finds the same error, with file and line.
    let out = gw.cli(&["config", "check"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("zz-new.toml:3:") && err.contains("secret"),
        "{err}"
    );

    // Fixed, the new rule applies after the next SIGHUP.
    std::fs::write(
        dir.join("zz-new.toml"),
        "[[rule]]\nrecipient = \"*@crlgood.pki.test\"\nclass = \"confidential\"\n",
    )
    .unwrap();
    gw.signal_hup();
    wait_for(T, "the reload", || {
        gw.log().contains("policy reloaded from").then_some(())
    });
    let id = send(&gw, &["b@crlgood.pki.test"], &mail("Now confidential", ""));
    let why = held(&after_attempt(&gw, &id, "b@crlgood.pki.test", 1)).to_string();
    assert!(why.contains("class confidential is always sealed"), "{why}");
}

/// `text` with CRLF line ends, as SMTP carries it.
fn crlf(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\n', "\r\n")
}

fn tool(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run openssl or gpg");
    assert!(out.status.success(), "{cmd:?}: {}", output_text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn confidential_content_already_encrypted_end_to_end_needs_no_envelope_but_signed_does() {
    let gw = gateway(&[]);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("rcpt.pem"), dir.path().join("rcpt.key"));
    self_signed("rcpt@good.pki.test", &cert, &key);
    let body = dir.path().join("body.txt");
    std::fs::write(&body, "The figures.\n").unwrap();

    // S/MIME enveloped data, made by openssl cms (ECDH to a P-256 key).
    let smime = tool(
        Command::new("openssl")
            .args(["cms", "-encrypt", "-aes256", "-in"])
            .arg(&body)
            .args([
                "-from",
                "sender@src.test",
                "-to",
                "smime@good.pki.test",
                "-subject",
                "[confidential] figures",
            ])
            .arg(&cert),
    );
    let id = send(&gw, &["smime@good.pki.test"], &crlf(&smime));
    let got = wait_mail("smime@good.pki.test");
    assert!(
        got.contains("smime-type=enveloped-data"),
        "delivered as it is: {got}"
    );

    // PGP/MIME (RFC 3156), the armour made by gpg.
    let home = dir.path().join("gnupg");
    std::fs::create_dir_all(&home).unwrap();
    let gpg = |args: &[&str]| {
        tool(
            Command::new("gpg")
                .env("GNUPGHOME", &home)
                .args([
                    "--batch",
                    "--quiet",
                    "--pinentry-mode",
                    "loopback",
                    "--passphrase",
                    "",
                ])
                .args(args),
        )
    };
    gpg(&[
        "--quick-gen-key",
        "pgp@good.pki.test",
        "default",
        "default",
        "never",
    ]);
    let armour = gpg(&[
        "--armor",
        "--trust-model",
        "always",
        "-r",
        "pgp@good.pki.test",
        "--encrypt",
        "--output",
        "-",
        body.to_str().unwrap(),
    ]);
    let pgp_mime = format!(
        "From: sender@src.test\nTo: pgp@good.pki.test\nSubject: [confidential] figures\n\
         MIME-Version: 1.0\nContent-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=\"b1\"\n\n\
         --b1\nContent-Type: application/pgp-encrypted\n\nVersion: 1\n\n\
         --b1\nContent-Type: application/octet-stream; name=\"encrypted.asc\"\n\n{armour}\n--b1--\n"
    );
    send(&gw, &["pgp@good.pki.test"], &crlf(&pgp_mime));
    let got = wait_mail("pgp@good.pki.test");
    assert!(got.contains("-----BEGIN PGP MESSAGE-----"), "{got}");

    // Signed only (openssl cms -sign, multipart/signed): readable, so sealed.
    let signed = tool(
        Command::new("openssl")
            .args(["cms", "-sign", "-in"])
            .arg(&body)
            .args([
                "-from",
                "sender@src.test",
                "-to",
                "signed@good.pki.test",
                "-subject",
                "[confidential] figures",
                "-signer",
            ])
            .arg(&cert)
            .arg("-inkey")
            .arg(&key),
    );
    let signed_id = send(&gw, &["signed@good.pki.test"], &crlf(&signed));
    let why = held(&after_attempt(&gw, &signed_id, "signed@good.pki.test", 1)).to_string();
    assert!(why.contains("class confidential is always sealed"), "{why}");
    assert!(world().mails("signed@good.pki.test").is_empty());

    // What was found is in the received records.
    let export = gw.cli(&["report", "export", "--format", "json"]);
    let records: Vec<Value> = String::from_utf8_lossy(&export.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|r: &Value| r["kind"] == "received")
        .collect();
    let content = |id: &str| {
        records
            .iter()
            .find(|r| r["queue_id"] == id)
            .map(|r| {
                r["data"]["content"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .unwrap()
    };
    assert!(
        content(&id).starts_with("S/MIME enveloped-data"),
        "{}",
        content(&id)
    );
    assert!(
        content(&signed_id).contains("signed, not encrypted"),
        "{}",
        content(&signed_id)
    );
}

#[test]
fn the_recipient_sees_the_level_in_a_header_and_high_mail_is_tagged() {
    let w = world();
    let gw = Gateway::start_with(|dir, relay, sub| {
        format!(
            "{}\n[tls]\nprofile = \"bsi-strict\"\n{}\n[[tenant]]\nid = \"default\"\n\
             networks = [\"127.0.0.0/8\"]\n[tenant.view]\nheader = true\nsubject_tag = true\n",
            w.config(dir, relay, sub),
            policy_dir(dir, &[("tests.toml", POLICY)])
        )
    });
    let rcpt = format!("{}@good.pki.test", unique("view"));
    relay_one(
        gw.relay,
        "sender@src.test",
        &[&rcpt],
        message("[secure] Quarterly figures", "x\r\n").as_bytes(),
    );
    let mail = wait_mail(&rcpt);
    // The class tag the sender used is gone, the recipient's is there.
    assert!(
        mail.lines()
            .any(|l| l.trim_end() == "Subject: [qualified TLS] Quarterly figures"),
        "{mail}"
    );
    // Saved by Postfix with LF line ends; unfolded here.
    let mail = mail.replace("\r\n", "\n");
    let header = mail.split("\n\n").next().unwrap().replace("\n\t", " ");
    let line = header
        .lines()
        .find(|l| l.starts_with("Sealgate-Transport: "))
        .unwrap_or_else(|| panic!("{mail}"));
    assert!(
        line.starts_with("Sealgate-Transport: qualified; mx=mx.good.pki.test;"),
        "{line}"
    );
    for check in [
        "dnssec",
        "starttls",
        "protocol",
        "cipher",
        "pkix",
        "revocation",
    ] {
        assert!(line.contains(check), "{line}");
    }
    assert!(line.ends_with("by=gw.test"), "{line}");
    // Normal mail is not tagged (its level may be lower), but has the
    // header: ours only, whatever the sender wrote.
    let normal = format!("{}@good.pki.test", unique("plainview"));
    let forged = format!(
        "Sealgate-Transport: qualified; mx=forged.example;\r\n\tchecks=dane:pass\r\n{}",
        message("Lunch", "x\r\n")
    );
    relay_one(gw.relay, "sender@src.test", &[&normal], forged.as_bytes());
    let mail = wait_mail(&normal);
    assert!(
        mail.lines().any(|l| l.trim_end() == "Subject: Lunch"),
        "{mail}"
    );
    assert!(mail.contains("Sealgate-Transport: qualified;"), "{mail}");
    assert_eq!(mail.matches("Sealgate-Transport:").count(), 1, "{mail}");
    assert!(!mail.contains("forged.example"), "{mail}");
}

fn pki_script() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/pki.sh")
}

/// `openssl` with its output, failing the test if it fails.
fn openssl_out(args: &[&std::ffi::OsStr]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
    out.stdout
}

#[test]
fn confidential_mail_is_encrypted_to_a_known_certificate_that_openssl_opens() {
    let w = world();
    // The tenant signs src.test's mail: the signature must hold for what
    // goes out, the encrypted message.
    let keys = tempfile::tempdir().unwrap();
    let (dkim_key, dkim_txt) = dkim_keygen(keys.path(), "src.test", "ed25519");
    let gw = Gateway::start_with(|dir, relay, sub| {
        format!(
            "{}\n[tls]\nprofile = \"bsi-strict\"\n{}\n[[tenant]]\nid = \"default\"\n\
             networks = [\"127.0.0.0/8\"]\n[[tenant.dkim]]\ndomain = \"src.test\"\n\
             selector = \"s1\"\nkey = \"{}\"\n",
            w.config(dir, relay, sub),
            policy_dir(dir, &[("tests.toml", POLICY)]),
            dkim_key.display()
        )
    });
    let pki = |p: &str| w.pki(p);
    let import = |name: &str| {
        let out = gw.cli(&[
            "certs",
            "import",
            &pki(&format!("smime/{name}.pem")).to_string_lossy(),
        ]);
        (out.status.success(), output_text(&out))
    };
    // RSA, P-256 and P-384 recipients: chain, revocation and key checked.
    for name in ["alice", "carol", "dave", "gone"] {
        let (ok, text) = import(name);
        assert!(ok, "{text}");
        assert!(
            text.contains(&format!("{name}@good.pki.test (tenant default): imported"))
                && text.contains("chain of 2 to a trusted root")
                && text.contains("revocation good"),
            "{text}"
        );
    }
    let (ok, text) = import("old");
    assert!(
        !ok && text.contains("not imported: certificate has expired"),
        "{text}"
    );
    let out = gw.cli(&["certs", "import", &pki("peers/good.crt").to_string_lossy()]);
    assert!(
        !out.status.success() && output_text(&out).contains("names no e-mail address"),
        "{out:?}"
    );
    // A certificate that expires in seconds, imported while it is valid.
    let now = chrono::Utc::now().timestamp();
    let brief_end = now + 8;
    let at = |t: i64| {
        chrono::DateTime::from_timestamp(t, 0)
            .unwrap()
            .format("%Y%m%d%H%M%SZ")
            .to_string()
    };
    run(Command::new("bash")
        .arg(pki_script())
        .args(["smime"])
        .arg(pki(""))
        .args([
            "brief",
            "ec:P-256",
            "brief@good.pki.test",
            &at(now - 60),
            &at(brief_end),
        ]));
    let (ok, text) = import("brief");
    assert!(ok, "{text}");
    let list = output_text(&gw.cli(&["certs", "list"]));
    for name in ["alice", "carol", "dave", "gone", "brief"] {
        assert!(list.contains(&format!("{name}@good.pki.test")), "{list}");
    }
    assert!(!list.contains("old@"), "{list}");

    // gone's certificate is revoked after its import; the responder
    // rereads its index between requests.
    run(Command::new("bash")
        .arg(pki_script())
        .arg("revoke")
        .arg(pki(""))
        .arg("gone"));
    let ocsp_port = std::fs::read_to_string(pki("ocsp.url")).unwrap();
    wait_for(T, "the responder to say gone is revoked", || {
        let out = Command::new("openssl")
            .args(["ocsp", "-issuer"])
            .arg(pki("ca/int.pem"))
            .arg("-cert")
            .arg(pki("smime/gone.crt"))
            .arg("-url")
            .arg(ocsp_port.trim())
            .arg("-noverify")
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .contains(": revoked")
            .then_some(())
    });
    // Past its notAfter (to the second, which validity compares in).
    wait_for(T, "brief's certificate to expire", || {
        (chrono::Utc::now().timestamp() > brief_end + 1).then_some(())
    });

    let marker = unique("confidential-marker");
    let inner = format!(
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
         Quarterly numbers: {marker}\r\nGrüße\r\n"
    );
    let data = format!(
        "From: sender@src.test\r\nTo: alice@good.pki.test, carol@good.pki.test\r\n\
         Subject: [confidential] Numbers\r\nMessage-ID: <{}@src.test>\r\n\
         Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n{inner}",
        unique("m")
    );
    let to = [
        "alice@good.pki.test",
        "carol@good.pki.test",
        "dave@good.pki.test",
        "gone@good.pki.test",
        "brief@good.pki.test",
    ];
    let id = send(&gw, &to, &data);
    for name in ["alice", "carol", "dave"] {
        let rcpt = format!("{name}@good.pki.test");
        let mail = wait_mail(&rcpt);
        assert!(!mail.contains(&marker), "in clear: {mail}");
        assert!(
            mail.contains("Content-Type: application/pkcs7-mime; smime-type=enveloped-data")
                && mail.lines().any(|l| l.trim_end() == "Subject: Numbers")
                && mail.contains("To: alice@good.pki.test, carol@good.pki.test"),
            "{mail}"
        );
        let file = w.dir.join(format!("smime-{}.eml", unique(name)));
        std::fs::write(&file, &mail).unwrap();
        let plain = openssl_out(&[
            "cms".as_ref(),
            "-decrypt".as_ref(),
            "-in".as_ref(),
            file.as_os_str(),
            "-recip".as_ref(),
            pki(&format!("smime/{name}.crt")).as_os_str(),
            "-inkey".as_ref(),
            pki(&format!("smime/{name}.key")).as_os_str(),
        ]);
        assert_eq!(String::from_utf8_lossy(&plain), inner, "{name}");
        // Signed again after the encryption, by the tenant's key.
        let (ok, said) = dkimpy(
            keys.path(),
            mail.as_bytes(),
            std::slice::from_ref(&dkim_txt),
        );
        assert!(
            ok && said.contains("pass d=src.test s=s1"),
            "{said}\n{mail}"
        );
        // Encrypted to this recipient only: another's key does not open it.
        let other = if name == "alice" { "carol" } else { "alice" };
        let out = Command::new("openssl")
            .args(["cms", "-decrypt", "-in"])
            .arg(&file)
            .arg("-recip")
            .arg(pki(&format!("smime/{other}.crt")))
            .arg("-inkey")
            .arg(pki(&format!("smime/{other}.key")))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{other} opened {name}'s message");
    }
    // Revoked and expired certificates are not used: those recipients are
    // sealed (and wait, as src.test cannot get a password), with the reason.
    let why = held(&after_attempt(&gw, &id, "gone@good.pki.test", 1)).to_string();
    assert!(
        why.contains("class confidential is always sealed")
            && why.contains("S/MIME certificate not used: ")
            && why.contains("revocation revoked"),
        "{why}"
    );
    let why = held(&after_attempt(&gw, &id, "brief@good.pki.test", 1)).to_string();
    assert!(why.contains("certificate has expired"), "{why}");
    assert!(world().mails("gone@good.pki.test").is_empty());
    assert!(world().mails("brief@good.pki.test").is_empty());

    // The evidence names the certificate each delivery was encrypted to.
    let export = gw.cli(&["report", "export", "--format", "json"]);
    let text = String::from_utf8_lossy(&export.stdout);
    let recipient = |rcpt: &str| -> Value {
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|r| r["queue_id"] == id.as_str() && r["kind"] == "attempt")
            .flat_map(|r| {
                r["data"]["recipients"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .find(|r| r["address"] == rcpt && r["outcome"] == "delivered")
            .unwrap_or_else(|| panic!("no delivery of {rcpt} in {text}"))
    };
    for (rcpt, key) in [
        ("alice@good.pki.test", "RSA 3072"),
        ("carol@good.pki.test", "P-256"),
        ("dave@good.pki.test", "P-384"),
    ] {
        let r = recipient(rcpt);
        let e2e = r["end_to_end"].as_str().unwrap_or_default();
        assert!(
            e2e.starts_with("S/MIME, certificate SHA-256 ") && e2e.contains(key),
            "{r}"
        );
        assert_eq!(r["required"], "encrypted", "{r}");
    }

    // Removed: the next confidential message to alice is sealed again.
    let out = gw.cli(&["certs", "remove", "alice@good.pki.test"]);
    assert!(out.status.success(), "{out:?}");
    let id = send(&gw, &["alice@good.pki.test"], &data);
    let why = held(&after_attempt(&gw, &id, "alice@good.pki.test", 1)).to_string();
    assert!(why.contains("class confidential is always sealed"), "{why}");
}
