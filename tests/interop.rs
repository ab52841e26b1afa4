//! Interoperability with independent SMTP implementations, over real
//! sockets on loopback. Out: the gateway delivers to Postfix, Exim (which
//! offers CHUNKING and STARTTLS, so gets BDAT over TLS), OpenSMTPD and
//! aiosmtpd at once. In: Postfix, Exim (a BDAT client), OpenSMTPD, swaks
//! and Python's smtplib hand mail to the gateway. Every message is compared
//! byte for byte with what was sent, after the trace headers each hop puts
//! in front. The peers come from tests/peers/mtas.sh, unpacked by the
//! README's test command.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(60);

fn mtas_root() -> PathBuf {
    peers_dir().join("mtas-root")
}

fn mtas(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/mtas.sh");
    let out = Command::new("bash")
        .arg(script)
        .args(args)
        .output()
        .expect("run tests/peers/mtas.sh");
    assert!(
        out.status.success(),
        "mtas.sh {args:?} (are the peers unpacked? run the README test command):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A peer started by mtas.sh, stopped when the test ends.
struct Peer(PathBuf);

impl Peer {
    fn start(kind: &str, port: u16, next: Option<u16>) -> Peer {
        let dir = peers_dir().join("interop").join(kind);
        let root = mtas_root();
        let (port, next) = (port.to_string(), next.map(|n| n.to_string()));
        let mut args = vec![kind, root.to_str().unwrap(), dir.to_str().unwrap(), &port];
        if let Some(n) = &next {
            args.push(n);
        }
        mtas(&args);
        Peer(dir)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        mtas(&["stop", self.0.to_str().unwrap()]);
    }
}

/// What a hop stored, without the trace headers in front (ours included)
/// and with LF line ends (Exim keeps its spool that way).
fn content(stored: &[u8]) -> String {
    let text = String::from_utf8_lossy(stored).replace("\r\n", "\n");
    let mut rest = text.as_str();
    let trace = [
        "Received:",
        "Return-Path:",
        "Delivered-To:",
        "X-Original-To:",
    ];
    while trace.iter().any(|t| rest.starts_with(t)) {
        let mut end = rest.find('\n').map_or(rest.len(), |i| i + 1);
        while rest[end..].starts_with([' ', '\t']) {
            end += rest[end..].find('\n').map_or(rest.len() - end, |i| i + 1);
        }
        rest = &rest[end..];
    }
    rest.to_string()
}

/// A body that tests what can go wrong between implementations: lines
/// that start with dots (stuffed on the wire, never in the content), 8-bit
/// text, a long line, and a last line without a line end before ours.
fn tricky(subject: &str) -> String {
    let long = "x".repeat(900);
    message(
        subject,
        &format!(".leading dot\r\n..two dots\r\n.\r\nGrüße, naïve café\r\n{long}\r\nend\r\n"),
    )
}

/// RFC 5321 §4.5.2 on the way in, for a client that sends raw DATA.
fn stuffed(content: &str) -> String {
    content.replace("\r\n.", "\r\n..")
}

/// Sends with Python's smtplib (which stuffs and ends the data itself).
fn smtplib(port: u16, from: &str, to: &str, content: &str) {
    let script = "import smtplib, sys\n\
        s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), local_hostname='smtplib.test')\n\
        s.sendmail(sys.argv[2], [sys.argv[3]], sys.stdin.buffer.read(), mail_options=['BODY=8BITMIME'])\n\
        s.quit()\n";
    let out = with_stdin(
        Command::new("python3").args(["-c", script, &port.to_string(), from, to]),
        content,
    );
    assert!(
        out.status.success(),
        "smtplib to port {port}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Messages the queue-only Exim holds, as `exim -Mvc` shows them.
fn exim_messages(peer: &Peer) -> Vec<Vec<u8>> {
    let conf = peer.0.join("exim.conf");
    let Ok(dir) = std::fs::read_dir(peer.0.join("spool/input")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let name = e.ok()?.file_name().into_string().ok()?;
        let id = name.strip_suffix("-H")?.to_string();
        let out = Command::new(mtas_root().join("usr/sbin/exim4"))
            .args(["-C", conf.to_str().unwrap(), "-Mvc", &id])
            .output()
            .ok()?;
        out.status.success().then_some(out.stdout)
    })
    .collect()
}

fn saved(peer: &Peer) -> Vec<Vec<u8>> {
    let Ok(dir) = std::fs::read_dir(peer.0.join("mail")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let path = e.ok()?.path();
        (path.extension()? == "eml").then(|| std::fs::read(&path).ok())?
    })
    .collect()
}

/// The one message holding `subject` among `messages`, as content.
fn find(messages: &[Vec<u8>], subject: &str) -> Option<String> {
    messages
        .iter()
        .map(|m| content(m))
        .find(|c| c.contains(&format!("Subject: {subject}\n")))
}

#[test]
fn independent_mtas_exchange_mail_byte_for_byte() {
    let [exim_in, exim_out, smtpd, aio] = [free_port(), free_port(), free_port(), free_port()];
    let gw = Gateway::start_with(move |dir, relay, sub| {
        // OpenSMTPD and aiosmtpd here speak no TLS; Exim does.
        let exceptions = format!(
            "{}{}",
            plaintext_exception("*.smtpd.test"),
            plaintext_exception("*.aio.test")
        );
        let policy = policy_dir(dir, &[("interop.toml", &exceptions)]);
        let routes = format!(
            "[[route]]\ndomain = \"*.exim.test\"\nnext_hop = \"127.0.0.1:{exim_in}\"\n\n\
             [[route]]\ndomain = \"*.smtpd.test\"\nnext_hop = \"127.0.0.1:{smtpd}\"\n\n\
             [[route]]\ndomain = \"*.aio.test\"\nnext_hop = \"127.0.0.1:{aio}\"\n\n\
             [[route]]\ndomain = \"*\""
        );
        let config = base_config(dir, relay, sub).replace("[[route]]\ndomain = \"*\"", &routes);
        format!("{config}{policy}")
    });
    let exim = Peer::start("exim-in", exim_in, None);
    let opensmtpd = Peer::start("smtpd", smtpd, Some(gw.relay));
    let aiosmtpd = Peer::start("aiosmtpd", aio, None);
    let exim_client = Peer::start("exim-out", exim_out, Some(gw.relay));
    let postfix_port = free_port();
    let postfix_dir = peers_dir().join("interop/postfix-relay");
    let out = Command::new("bash")
        .arg(script())
        .args([
            "relay",
            postfix_dir.to_str().unwrap(),
            &postfix_port.to_string(),
        ])
        .arg(format!("127.0.0.1:{}", gw.relay))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    struct StopPostfix(PathBuf);
    impl Drop for StopPostfix {
        fn drop(&mut self) {
            let _ = Command::new("bash")
                .arg(script())
                .args(["stop", self.0.to_str().unwrap()])
                .status();
        }
    }
    let _postfix_relay = StopPostfix(postfix_dir);

    // Out: three messages to each next hop, all at once.
    let tag = unique("out");
    let hops = ["dst.test", "in.exim.test", "in.smtpd.test", "in.aio.test"];
    let mut sent = Vec::new();
    let mut threads = Vec::new();
    for hop in hops {
        for n in 0..3 {
            let subject = format!("{tag}-{hop}-{n}");
            let content = tricky(&subject);
            let rcpt = format!("{tag}-{n}@{hop}");
            sent.push((hop, rcpt.clone(), subject, content.clone()));
            let port = gw.relay;
            threads.push(std::thread::spawn(move || {
                let mut c = Client::connect(port);
                c.cmd("EHLO client.test");
                let reply = c.message("sender@src.test", &[&rcpt], stuffed(&content).as_bytes());
                assert!(reply.starts_with("250"), "{rcpt}: {reply}");
            }));
        }
    }
    for t in threads {
        t.join().unwrap();
    }
    for (hop, rcpt, subject, content) in &sent {
        let got = wait_for(T, &format!("{subject} at {hop}"), || match *hop {
            "dst.test" => find(&dest().mails(rcpt), subject),
            "in.exim.test" => find(&exim_messages(&exim), subject),
            "in.smtpd.test" => find(&saved(&opensmtpd), subject),
            _ => find(&saved(&aiosmtpd), subject),
        });
        assert_eq!(got, content.replace("\r\n", "\n"), "{hop}: {subject}");
    }
    // Exim offered CHUNKING and STARTTLS: it got BDAT ("K") over TLS.
    let exim_log = std::fs::read_to_string(exim.0.join("log/mainlog")).unwrap();
    let ours: Vec<&str> = exim_log
        .lines()
        .filter(|l| l.contains(" <= sender@src.test "))
        .collect();
    assert_eq!(ours.len(), 3, "{exim_log}");
    assert!(
        ours.iter()
            .all(|l| l.contains(" K ") && l.contains("X=TLS")),
        "{ours:?}"
    );

    // In: each client hands the gateway a message for the Postfix destination.
    let tag = unique("in");
    let mut expected = Vec::new();
    let clients: [(&str, u16); 4] = [
        ("postfix", postfix_port),
        ("exim", exim_out),
        ("opensmtpd", smtpd),
        ("smtplib", gw.relay),
    ];
    for (client, port) in clients {
        let subject = format!("{tag}-{client}");
        let rcpt = format!("{tag}-{client}@dst.test");
        let content = tricky(&subject);
        smtplib(port, "sender@src.test", &rcpt, &content);
        expected.push((rcpt, subject, content));
    }
    // swaks stuffs the --data it is given and ends its last line itself.
    let subject = format!("{tag}-swaks");
    let rcpt = format!("{tag}-swaks@dst.test");
    let content = tricky(&subject);
    let file = gw.dir.path().join("swaks.eml");
    std::fs::write(&file, content.strip_suffix("\r\n").unwrap()).unwrap();
    let server = format!("127.0.0.1:{}", gw.relay);
    let data = format!("@{}", file.display());
    let (ok, said) = swaks(&[
        "--server",
        &server,
        "--to",
        &rcpt,
        "--from",
        "sender@src.test",
        "--data",
        &data,
    ]);
    assert!(ok, "{said}");
    expected.push((rcpt, subject, content));
    for (rcpt, subject, content) in &expected {
        let got = wait_for(T, &format!("{subject} at Postfix"), || {
            find(&dest().mails(rcpt), subject)
        });
        assert_eq!(got, content.replace("\r\n", "\n"), "{subject}");
    }
    // Exim handed its message over with BDAT.
    let exim_out_log = std::fs::read_to_string(exim_client.0.join("log/mainlog")).unwrap();
    assert!(
        exim_out_log
            .lines()
            .any(|l| l.contains(" => ") && l.contains(" K ") && l.contains(&tag)),
        "{exim_out_log}"
    );
    let received = gw.log();
    assert!(!received.contains("ERROR"), "{received}");
}

#[test]
fn dkim_signatures_made_at_the_gateway_verify_with_dkimpy() {
    let keys = tempfile::tempdir().unwrap();
    let (rsa_key, rsa_txt) = dkim_keygen(keys.path(), "rsa.dkim.test", "rsa");
    let (ed_key, ed_txt) = dkim_keygen(keys.path(), "ed.dkim.test", "ed25519");
    let (other_key, other_txt) = dkim_keygen(keys.path(), "other.dkim.test", "ed25519");
    let tenants = format!(
        "[[tenant]]\nid = \"default\"\nnetworks = [\"127.0.0.0/8\"]\nusers = [\"alice\"]\n\
         [[tenant.dkim]]\ndomain = \"rsa.dkim.test\"\nselector = \"s1\"\nkey = \"{}\"\n\
         [[tenant.dkim]]\ndomain = \"ed.dkim.test\"\nselector = \"s1\"\nkey = \"{}\"\n\
         [[tenant]]\nid = \"other\"\nusers = [\"bob\"]\n\
         [[tenant.dkim]]\ndomain = \"other.dkim.test\"\nselector = \"s1\"\nkey = \"{}\"\n",
        rsa_key.display(),
        ed_key.display(),
        other_key.display()
    );
    // A subject tag: the gateway changes the message, then signs it.
    let policy = "[[rule]]\nname = \"tagged\"\nsubject_tag = \"[dkim]\"\nclass = \"normal\"\n";
    let gw = Gateway::start_with(|dir, relay, sub| {
        let policies = policy_dir(dir, &[("tag.toml", policy)]);
        format!("{}{policies}\n{tenants}", base_config(dir, relay, sub))
    });
    let records = [rsa_txt, ed_txt, other_txt];
    for (from, signed_by) in [
        ("a@rsa.dkim.test", Some("d=rsa.dkim.test s=s1 a=rsa-sha256")),
        (
            "b@ed.dkim.test",
            Some("d=ed.dkim.test s=s1 a=ed25519-sha256"),
        ),
        // Another tenant's domain, and a domain without a key: unsigned.
        ("c@other.dkim.test", None),
        ("d@plain.dkim.test", None),
    ] {
        let rcpt = format!("{}@dkim-sink.test", unique("k"));
        let mail = format!(
            "From: Sender <{from}>\r\nTo: <{rcpt}>\r\nSubject: [dkim] Quarterly figures\r\n\
             Date: Mon, 30 Nov 2026 09:00:00 +0100\r\nMessage-ID: <{}@dkim.test>\r\n\r\n\
             Figures attached.\r\n.. a dotted line\r\n",
            unique("m")
        );
        relay_one(gw.relay, from, &[&rcpt], mail.as_bytes());
        let got = dest().wait_mails(&rcpt, 1, T).remove(0);
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.contains("Subject: Quarterly figures"),
            "tag removed: {text}"
        );
        let (ok, said) = dkimpy(keys.path(), &got, &records);
        match signed_by {
            Some(expected) => {
                assert!(ok, "{from}: dkimpy says\n{said}\n{text}");
                assert!(said.contains(&format!("pass {expected}")), "{said}");
            }
            None => assert!(
                !text.contains("DKIM-Signature:") && !ok,
                "{from} must not be signed:\n{text}"
            ),
        }
    }
}
