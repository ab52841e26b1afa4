//! Running sealgate as a service: what systemd hears from it, the log in
//! JSON for shippers, and SIGHUP reloading the inbound certificate and
//! configuration without dropping a session.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const T: Duration = Duration::from_secs(30);

/// Reads notifications until one holds `line`; returns everything read.
fn wait_notify(socket: &UnixDatagram, line: &str) -> String {
    let deadline = Instant::now() + T;
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            seen.push_str(&message);
            seen.push_str("--\n");
            if message.lines().any(|l| l == line) {
                return seen;
            }
        }
    }
    panic!("no {line} from sealgate; heard:\n{seen}");
}

#[test]
fn systemd_hears_ready_alive_reloading_and_stopping_and_the_log_is_json() {
    let notify_dir = tempfile::tempdir().unwrap();
    let path = notify_dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut gw = Gateway::start_with_env(
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
            ("SEALGATE_LOG_FORMAT", "json"),
        ],
        base_config,
    );
    let ready = wait_notify(&socket, "READY=1");
    assert!(
        ready.contains(&format!("STATUS=listening on 127.0.0.1:{}", gw.relay)),
        "{ready}"
    );
    // At half the interval, and only while the scheduler answers.
    wait_notify(&socket, "WATCHDOG=1");
    wait_notify(&socket, "WATCHDOG=1");

    let rcpt = format!("{}@json.test", unique("j"));
    relay_one(
        gw.relay,
        "sender@src.test",
        &[&rcpt],
        message("json", "x\r\n").as_bytes(),
    );
    dest().wait_mails(&rcpt, 1, T);
    let line = wait_for(T, "the delivery line in JSON", || {
        gw.log()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))
            })
            .find(|v| v["target"] == "delivery" && v["to"] == rcpt.as_str())
    });
    assert_eq!(line["status"], "sent", "{line}");
    assert_eq!(line["level"], "INFO", "{line}");
    // A peer without a trusted certificate: encrypted, the normal class's need.
    assert_eq!(
        (&line["reached"], &line["required"]),
        (
            &serde_json::json!("encrypted"),
            &serde_json::json!("encrypted")
        ),
        "{line}"
    );
    assert_eq!(line["from"], "sender@src.test", "{line}");
    assert!(line["delay"].is_u64(), "a number: {line}");
    assert!(line["timestamp"].is_string(), "{line}");

    gw.signal_hup();
    let reload = wait_notify(&socket, "RELOADING=1");
    assert!(reload.contains("MONOTONIC_USEC="), "{reload}");
    wait_notify(&socket, "READY=1");
    gw.signal_term();
    wait_notify(&socket, "STOPPING=1");
    assert!(gw.wait_exit());
}

/// The subject of the certificate a new STARTTLS session is shown.
fn served_subject(port: u16) -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "openssl s_client -starttls smtp -connect 127.0.0.1:{port} </dev/null 2>/dev/null \
             | openssl x509 -noout -subject"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A STARTTLS session held open by `openssl s_client`.
struct TlsSession {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

impl TlsSession {
    fn open(port: u16) -> TlsSession {
        let mut child = Command::new("openssl")
            .args(["s_client", "-quiet", "-starttls", "smtp", "-crlf"])
            .args(["-connect", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut s = TlsSession { child, out };
        assert!(s.cmd("EHLO held.test").starts_with("250"));
        s
    }

    /// Sends a command, returns the last line of the reply.
    fn cmd(&mut self, line: &str) -> String {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
        loop {
            let mut l = String::new();
            assert!(self.out.read_line(&mut l).unwrap() > 0, "session closed");
            if l.as_bytes().get(3) != Some(&b'-') {
                return l.trim_end().to_string();
            }
        }
    }
}

impl Drop for TlsSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sighup_serves_a_renewed_certificate_keeps_open_sessions_and_refuses_a_broken_config() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    self_signed("before.gw.test", &cert, &key);
    let tls = format!(
        "[tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let gw =
        Gateway::start_with(|dir, relay, sub| format!("{}{tls}", base_config(dir, relay, sub)));
    assert_eq!(served_subject(gw.relay), "subject=CN = before.gw.test");
    let mut held = TlsSession::open(gw.relay);

    // Waiting for a route that leads nowhere.
    let stranded = format!("{}@unreachable.test", unique("route"));
    relay_one(
        gw.relay,
        "a@src.test",
        &[&stranded],
        message("route", "x\r\n").as_bytes(),
    );
    wait_delivery_line(&gw, &stranded, "deferred");

    // A renewed certificate at the same path, a lower recipient limit, and
    // the route fixed.
    self_signed("after.gw.test", &cert, &key);
    let text = std::fs::read_to_string(&gw.config).unwrap().replace(
        "next_hop = \"127.0.0.1:1\"",
        &format!("next_hop = \"127.0.0.1:{DEST_PORT}\""),
    );
    let lowered = format!("{text}\n[limits]\nmax_recipients = 1\n");
    std::fs::write(&gw.config, &lowered).unwrap();
    gw.signal_hup();
    wait_for(T, "the reload", || {
        gw.log().contains("configuration reloaded").then_some(())
    });
    assert_eq!(served_subject(gw.relay), "subject=CN = after.gw.test");
    // The next retry takes the new route.
    dest().wait_mails(&stranded, 1, T);

    // The session opened before goes on, with the settings it began with.
    let rcpt = |n: u32| format!("held{n}-{}@held.test", std::process::id());
    assert!(held.cmd("MAIL FROM:<a@src.test>").starts_with("250"));
    assert!(
        held.cmd(&format!("RCPT TO:<{}>", rcpt(1)))
            .starts_with("250")
    );
    assert!(
        held.cmd(&format!("RCPT TO:<{}>", rcpt(2)))
            .starts_with("250")
    );
    assert!(held.cmd("DATA").starts_with("354"));
    // s_client -crlf turns each LF into CR LF.
    let sent = held.cmd("Subject: held\n\nbody\n.");
    assert!(sent.starts_with("250"), "{sent}");
    dest().wait_mails(&rcpt(2), 1, T);

    // A new session has the new limit.
    let mut c = Client::connect(gw.relay);
    c.cmd("EHLO client.test");
    assert!(c.cmd("MAIL FROM:<a@src.test>").starts_with("250"));
    assert!(c.cmd(&format!("RCPT TO:<{}>", rcpt(3))).starts_with("250"));
    let refused = c.cmd(&format!("RCPT TO:<{}>", rcpt(4)));
    assert!(refused.starts_with("452"), "{refused}");

    // A broken file: named with its line, the running state stays.
    std::fs::write(&gw.config, format!("{lowered}\nhostname = [\n")).unwrap();
    gw.signal_hup();
    let said = wait_for(T, "the refused reload", || {
        gw.log()
            .lines()
            .find(|l| l.contains("configuration reload failed"))
            .map(str::to_string)
    });
    assert!(
        said.contains(&format!("{}:", gw.config.display())) && said.contains("the previous"),
        "{said}"
    );
    assert_eq!(served_subject(gw.relay), "subject=CN = after.gw.test");

    // A change that only a restart applies is named.
    std::fs::write(
        &gw.config,
        lowered.replace("hostname = \"gw.test\"", "hostname = \"renamed.test\""),
    )
    .unwrap();
    gw.signal_hup();
    wait_for(T, "the restart notice", || {
        gw.log()
            .contains("in force only after a restart: hostname")
            .then_some(())
    });
    let stream = std::net::TcpStream::connect(("127.0.0.1", gw.relay)).unwrap();
    let greeting = Client::from_stream(stream).reply();
    assert!(
        greeting.contains("gw.test") && !greeting.contains("renamed"),
        "{greeting}"
    );
}

#[test]
fn sighup_adds_and_removes_a_tenant_for_the_next_session_and_delivery() {
    let tenants = "[[tenant]]\nid = \"default\"\nnetworks = [\"127.0.0.1/32\"]\n";
    let gw =
        Gateway::start_with(|dir, relay, sub| format!("{}{tenants}", base_config(dir, relay, sub)));
    let base = std::fs::read_to_string(&gw.config).unwrap();
    let session = || {
        let mut c = Client::connect_from("127.0.0.7", gw.relay);
        c.cmd("EHLO client.test");
        c
    };
    let rcpt_reply = |rcpt: &str| {
        let mut c = session();
        assert!(c.cmd("MAIL FROM:<a@acme.test>").starts_with("250"));
        c.cmd(&format!("RCPT TO:<{rcpt}>"))
    };
    // 127.0.0.7 belongs to no tenant yet: no relay.
    let refused = rcpt_reply(&format!("{}@dst.test", unique("before")));
    assert!(refused.starts_with("554"), "{refused}");

    // The MSP adds a customer: no restart, open sessions stay.
    let added = format!(
        "{base}[[tenant]]\nid = \"acme\"\nnetworks = [\"127.0.0.7/32\"]\n\
         [tenant.view]\nheader = false\n"
    );
    std::fs::write(&gw.config, &added).unwrap();
    gw.signal_hup();
    wait_for(T, "the reload", || {
        gw.log()
            .contains("configuration reloaded: tenants")
            .then_some(())
    });
    assert!(!gw.log().contains("after a restart"), "{}", gw.log());
    let rcpt = format!("{}@dst.test", unique("acme"));
    let queued = session().message("a@acme.test", &[&rcpt], message("acme", "x\r\n").as_bytes());
    assert!(queued.starts_with("250"), "{queued}");
    let line = wait_delivery_line(&gw, &rcpt, "sent");
    assert_eq!(line["tenant"], "acme", "{line:?}");

    // Removed again: its networks no longer relay.
    std::fs::write(&gw.config, &base).unwrap();
    gw.signal_hup();
    wait_for(T, "the second reload", || {
        (gw.log().matches("configuration reloaded: tenants").count() == 2).then_some(())
    });
    let refused = rcpt_reply(&format!("{}@dst.test", unique("after")));
    assert!(refused.starts_with("554"), "{refused}");
}

/// SHA-256 of a public key's DER SubjectPublicKeyInfo, by openssl.
fn spki_sha256(openssl_args: &str) -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "{openssl_args} | openssl pkey -pubin -outform DER | openssl dgst -sha256 -r"
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The two TLSA 3 1 1 values `sealgate records` prints: (current, next).
fn tlsa(gw: &Gateway) -> (String, String) {
    let out = gw.cli(&["records", "example.org"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let values: Vec<String> = text
        .lines()
        .filter_map(|l| l.split(" IN TLSA 3 1 1 ").nth(1))
        .map(str::to_string)
        .collect();
    assert_eq!(values.len(), 2, "{text}");
    assert!(
        text.contains("_mta-sts.example.org. IN TXT \"v=STSv1; id=")
            && text.contains("_smtp._tls.example.org. IN TXT \"v=TLSRPTv1; rua=mailto:")
            && text.contains("mx: gw.test"),
        "{text}"
    );
    (values[0].clone(), values[1].clone())
}

#[test]
fn records_publish_the_current_and_next_key_and_a_renewal_moves_to_the_next() {
    let mut gw = Gateway::start_with(base_config);
    let tls = gw.dir.path().join("tls");
    let (current, next) = tlsa(&gw);
    let served = spki_sha256(&format!(
        "openssl x509 -in {} -pubkey -noout",
        tls.join("self-signed.pem").display()
    ));
    assert_eq!(current, served, "TLSA of the certificate in use");
    let waiting = spki_sha256(&format!(
        "openssl pkey -in {} -pubout",
        tls.join("next.key").display()
    ));
    assert_eq!(next, waiting, "TLSA of the next key");
    assert_eq!(tlsa(&gw), (current.clone(), next.clone()), "stable");

    // The certificate is renewed (here: gone at a restart): the new one
    // uses the announced next key, so its TLSA record was already out.
    std::fs::remove_file(tls.join("self-signed.pem")).unwrap();
    gw.restart();
    let (renewed, after) = tlsa(&gw);
    assert_eq!(renewed, next, "renewed with the announced key");
    assert_ne!(after, next, "a new next key");
    let served = spki_sha256(&format!(
        "openssl s_client -starttls smtp -connect 127.0.0.1:{} </dev/null 2>/dev/null | openssl x509 -pubkey -noout",
        gw.relay
    ));
    assert_eq!(served, renewed, "and the gateway serves it");
}

#[test]
fn under_journald_lines_carry_their_priority_and_no_timestamp() {
    // systemd sets JOURNAL_STREAM when standard error is the journal.
    let gw = Gateway::start_with_env(&[("JOURNAL_STREAM", "8:12345")], base_config);
    let rcpt = format!("{}@journal.test", unique("j"));
    relay_one(
        gw.relay,
        "a@src.test",
        &[&rcpt],
        message("j", "x\r\n").as_bytes(),
    );
    let line = wait_delivery_line(&gw, &rcpt, "sent");
    assert_eq!(line["tenant"], "default");
    let log = gw.log();
    for l in log.lines().filter(|l| !l.is_empty()) {
        let priority = l.get(..3).unwrap_or("");
        assert!(
            matches!(priority, "<3>" | "<4>" | "<6>" | "<7>"),
            "a line without its priority: {l}"
        );
        assert!(
            !l[3..]
                .trim_start()
                .starts_with(|c: char| c.is_ascii_digit()),
            "journald stamps lines itself: {l}"
        );
    }
    assert!(log.lines().any(|l| l.starts_with("<4> WARN")), "{log}");
    assert!(
        log.lines().any(|l| l.starts_with("<6> INFO delivery: ")),
        "{log}"
    );
}

/// `systemctl stop` while the gateway waits for its database: it stops at
/// once, and says so, rather than first waiting out the database.
#[test]
fn a_stop_while_starting_ends_the_process_at_once() {
    // Takes connections into its backlog and never answers: a database
    // that hangs.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hole.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sealgate.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[storage]\nurl = \"postgres://sealgate@127.0.0.1:{port}/sealgate\"\n",
            base_config(dir.path(), free_port(), free_port())
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("users"), "").unwrap();
    let log = dir.path().join("log");
    let mut child = Command::new(bin())
        .args(["--config", config.to_str().unwrap(), "serve"])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::from(
            std::fs::File::options().append(true).open(&log).unwrap(),
        ))
        .spawn()
        .unwrap();
    // The gateway reached its database: its signal handlers are in place.
    hole.set_nonblocking(true).unwrap();
    let _held = wait_for(T, "the gateway to reach the database", || {
        hole.accept().ok()
    });
    let asked = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = wait_for(T, "the gateway to stop", || child.try_wait().unwrap());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "stopped only after {:?}:\n{text}",
        asked.elapsed()
    );
    assert!(status.success(), "{status}:\n{text}");
    assert!(text.contains("stopped while starting"), "{text}");
}
