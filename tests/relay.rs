//! The relay core against real peers: swaks and a raw client in front,
//! a private Postfix as the destination MX behind.

mod support;

use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(30);

fn lf(s: &str) -> Vec<u8> {
    s.replace("\r\n", "\n").into_bytes()
}

#[test]
fn swaks_plain_and_starttls_arrive_byte_exact() {
    let gw = Gateway::start("");
    for (tls, name) in [(false, "plain"), (true, "tls")] {
        let rcpt = format!("{}@exact.test", unique(name));
        let data = message(
            &unique("exact"),
            "Grüße aus Köln.\r\n.leading dot survives stuffing\r\n",
        );
        let file = gw.dir.path().join(format!("{name}.eml"));
        std::fs::write(&file, &data).unwrap();
        let server = format!("127.0.0.1:{}", gw.relay);
        let file = file.to_str().unwrap();
        let mut args = vec![
            "--server",
            &server,
            "--from",
            "sender@src.test",
            "--to",
            &rcpt,
            "--data",
            file,
            "--pipeline",
        ];
        if tls {
            args.push("--tls");
        }
        let (ok, out) = swaks(&args);
        assert!(ok, "swaks failed:\n{out}");
        assert!(out.contains("queued as"), "{out}");

        let got = dest().wait_mails(&rcpt, 1, T).remove(0);
        // swaks ends the data with its own CRLF before the dot: one empty line more.
        let mut sent = lf(&data);
        sent.push(b'\n');
        assert_eq!(
            String::from_utf8_lossy(&strip_trace(&got)),
            String::from_utf8_lossy(&sent),
            "content changed on the way"
        );
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.contains("by gw.test (sealgate) with ESMTP"),
            "our Received header:\n{text}"
        );
        assert_eq!(
            text.contains("(using TLSv1."),
            tls,
            "TLS facts in Received:\n{text}"
        );
    }
    // The outbound side used STARTTLS towards Postfix (opportunistic).
    let lines = delivery_lines(&gw.log());
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines.iter().all(|l| l["reached"] == "encrypted"),
        "{lines:?}"
    );
}

#[test]
fn multi_recipient_8bit_and_smtputf8_arrive() {
    let gw = Gateway::start("");
    let id = unique("utf8");
    let rcpts = [
        format!("{id}-a@one.test"),
        format!("{id}-b@one.test"),
        format!("jörg-{id}@zwei.test"),
    ];
    let data = format!(
        "From: Jörg <jörg@src.test>\r\nTo: {}\r\nSubject: Übermorgen\r\nMessage-ID: <{id}@src.test>\r\n\
         Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         8-bit body: äöü ß € 日本語\r\n",
        rcpts.join(", ")
    );
    let mut c = Client::connect(gw.relay);
    assert!(c.cmd("EHLO client.test").contains("SMTPUTF8"));
    assert!(
        c.cmd("MAIL FROM:<jörg@src.test> SMTPUTF8 BODY=8BITMIME")
            .starts_with("250")
    );
    for r in &rcpts {
        let reply = c.cmd(&format!("RCPT TO:<{r}>"));
        assert!(reply.starts_with("250"), "{reply}");
    }
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(data.as_bytes());
    c.send(b".\r\n");
    let reply = c.reply();
    assert!(reply.starts_with("250 2.0.0 Ok: queued as"), "{reply}");
    for r in &rcpts {
        let got = dest().wait_mails(r, 1, T).remove(0);
        assert_eq!(strip_trace(&got), lf(&data), "for {r}");
        assert!(
            String::from_utf8_lossy(&got).contains("with UTF8SMTP"),
            "RFC 6531 protocol name"
        );
    }
    // Without SMTPUTF8 a non-ASCII address is refused (RFC 6531 §3.4).
    assert!(c.cmd("MAIL FROM:<jörg@src.test>").starts_with("553 5.6.7"));
}

#[test]
fn submission_needs_starttls_then_auth() {
    let gw = Gateway::start("");
    let server = format!("127.0.0.1:{}", gw.submission);
    let mut c = Client::connect(gw.submission);
    let ehlo = c.cmd("EHLO client.test");
    assert!(
        ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "no AUTH before TLS:\n{ehlo}"
    );
    assert!(
        c.cmd("AUTH PLAIN AGFsaWNlAHg=").starts_with("530 5.7.0"),
        "AUTH before STARTTLS is refused"
    );
    assert!(
        c.cmd("MAIL FROM:<a@src.test>").starts_with("530"),
        "no mail before TLS and AUTH"
    );

    let rcpt = format!("{}@sub.test", unique("auth"));
    for mech in ["PLAIN", "LOGIN"] {
        let (ok, out) = swaks_auth(&server, &rcpt, mech, &[]);
        assert!(ok && out.contains("235 2.7.0"), "AUTH {mech}:\n{out}");
    }
    dest().wait_mails(&rcpt, 2, T);

    let (ok, out) = swaks(&[
        "--server",
        &server,
        "--from",
        "alice@src.test",
        "--to",
        &rcpt,
        "--tls",
        "--auth",
        "PLAIN",
        "--auth-user",
        "alice",
        "--auth-password",
        "wrong",
    ]);
    assert!(!ok && out.contains("535 5.7.8"), "wrong password:\n{out}");
    let (ok, out) = swaks(&[
        "--server",
        &server,
        "--from",
        "alice@src.test",
        "--to",
        &rcpt,
        "--tls",
    ]);
    assert!(!ok && out.contains("530 5.7.0"), "TLS without AUTH:\n{out}");
}

#[test]
fn open_relay_attempts_are_refused() {
    let gw = Gateway::start("[[tenant]]\nid = \"default\"\nnetworks = [\"127.0.0.1/32\"]\n");
    let rcpt = format!("{}@victim.test", unique("relay"));
    let mut c = Client::connect_from("127.0.0.9", gw.relay);
    c.cmd("EHLO spammer.test");
    assert!(c.cmd("MAIL FROM:<spam@spam.test>").starts_with("250"));
    let reply = c.cmd(&format!("RCPT TO:<{rcpt}>"));
    assert!(reply.starts_with("554 5.7.1"), "{reply}");
    assert!(c.cmd("DATA").starts_with("554"), "no recipients, no data");
    // The same with swaks, over STARTTLS.
    let (ok, out) = swaks(&[
        "--server",
        &format!("127.0.0.1:{}", gw.relay),
        "--local-interface",
        "127.0.0.9",
        "--from",
        "spam@spam.test",
        "--to",
        &rcpt,
        "--tls",
    ]);
    assert!(!ok && out.contains("554 5.7.1"), "{out}");
    // From the allowed network it relays.
    let mut ok_client = Client::connect(gw.relay);
    ok_client.cmd("EHLO ok.test");
    let r = ok_client.message(
        "a@src.test",
        &[&rcpt],
        message("allowed", "x\r\n").as_bytes(),
    );
    assert!(r.starts_with("250"), "{r}");
    dest().wait_mails(&rcpt, 1, T);
    assert!(gw.queue().is_empty() || dest().mails(&rcpt).len() == 1);
}

/// `sealgate queue flush`: every deferred message is tried now, not at its
/// next retry an hour away.
#[test]
fn queue_flush_tries_every_deferred_message_now() {
    let gw = Gateway::start_with(|dir, relay, sub| {
        base_config(dir, relay, sub)
            .replace("idle_timeout = \"2s\"", "idle_timeout = \"0s\"")
            .replace("retry_schedule = [\"1s\"]", "retry_schedule = [\"1h\"]")
    });
    let local = unique("flush");
    let rule = format!("/^{local}-/ 451 4.3.0 Try again later");
    dest().add_rule(&rule);
    let rcpts: Vec<String> = (0..2).map(|i| format!("{local}-{i}@flush.test")).collect();
    dest().wait_rcpt_reply(&rcpts[0], "451");
    let mut ids = Vec::new();
    for r in &rcpts {
        let mut c = Client::connect(gw.relay);
        c.cmd("EHLO client.test");
        let reply = c.message("sender@src.test", &[r], message(&local, "x\r\n").as_bytes());
        assert!(reply.starts_with("250"), "{reply}");
        ids.push(reply.trim().rsplit(' ').next().unwrap().to_string());
    }
    for id in &ids {
        wait_for(T, "a deferred attempt", || {
            let out = gw.cli(&["queue", "show", id, "--json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            (v["recipients"][0]["attempts"].as_u64()? >= 1).then_some(())
        });
    }
    dest().remove_rule(&rule);
    // A reload reaches Postfix's smtpd processes in their own time.
    dest().wait_rcpt_reply(&rcpts[0], "250");
    let out = gw.cli(&["queue", "flush"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("2 destination(s)"),
        "{said}"
    );
    for r in &rcpts {
        dest().wait_mails(r, 1, T);
    }
    gw.wait_queue_empty(T);
}

/// `sealgate queue hold|release|bounce|delete`: a held message waits
/// through retries and flushes until released; a bounce fails it now with
/// a DSN that says who and why; each is in the transaction log.
#[test]
fn an_operator_holds_releases_bounces_and_deletes_queued_mail() {
    let gw = Gateway::start_with(|dir, relay, sub| {
        base_config(dir, relay, sub)
            .replace("idle_timeout = \"2s\"", "idle_timeout = \"0s\"")
            .replace("retry_schedule = [\"1s\"]", "retry_schedule = [\"1h\"]")
    });
    let local = unique("hold");
    let sender = format!("{local}-sender@src.test");
    let rule = format!("/^{local}-[a-z]@/ 451 4.3.0 Try again later");
    dest().add_rule(&rule);
    let rcpt = |c: &str| format!("{local}-{c}@hold.test");
    dest().wait_rcpt_reply(&rcpt("a"), "451");
    let send = |to: &str| {
        let mut c = Client::connect(gw.relay);
        c.cmd("EHLO client.test");
        let reply = c.message(&sender, &[to], message(&local, "x\r\n").as_bytes());
        assert!(reply.starts_with("250"), "{reply}");
        let id = reply.trim().rsplit(' ').next().unwrap().to_string();
        wait_for(T, "a deferred attempt", || {
            let out = gw.cli(&["queue", "show", &id, "--json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            (v["recipients"][0]["attempts"].as_u64()? >= 1).then_some(())
        });
        id
    };
    let ok = |args: &[&str]| {
        let out = gw.cli(args);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{args:?}: {said}");
        said
    };
    let (a, c, d) = (send(&rcpt("a")), send(&rcpt("c")), send(&rcpt("d")));
    send(&rcpt("b"));
    let said = ok(&["queue", "delete", &d, "--reason", "a duplicate of b"]);
    assert!(said.contains("deleted"), "{said}");

    let said = ok(&["queue", "hold", &a, "--reason", "checking with the sender"]);
    assert!(said.contains("held until released"), "{said}");
    let again = gw.cli(&["queue", "hold", &a]);
    assert!(!again.status.success(), "held twice");
    let shown: serde_json::Value =
        serde_json::from_slice(&gw.cli(&["queue", "show", &a, "--json"]).stdout).unwrap();
    assert_eq!(shown["held"], true, "{shown}");
    let list = ok(&["queue", "list"]);
    assert!(list.contains(&format!("{a}!")), "{list}");
    assert!(list.contains("1 held"), "{list}");

    // The peer takes mail again: b goes at the flush, a stays held.
    dest().remove_rule(&rule);
    dest().wait_rcpt_reply(&rcpt("b"), "250");
    let refused = gw.cli(&["queue", "retry", &a]);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("held; release it"),
        "{refused:?}"
    );
    ok(&["queue", "hold", &c]);
    ok(&["queue", "flush"]);
    dest().wait_mails(&rcpt("b"), 1, T);
    assert!(
        dest().mails(&rcpt("a")).is_empty(),
        "a held message went out"
    );

    let said = ok(&["queue", "release", &a]);
    assert!(said.contains("released"), "{said}");
    dest().wait_mails(&rcpt("a"), 1, T);

    // A held message can be bounced: the sender learns who and why.
    let said = ok(&["queue", "bounce", &c, "--reason", "recalled by the sender"]);
    assert!(said.contains("1 recipient(s) bounced; DSN"), "{said}");
    let dsn = String::from_utf8(dest().wait_mails(&sender, 1, T).remove(0)).unwrap();
    for needle in [
        &format!("Final-Recipient: rfc822; {}", rcpt("c")),
        "Action: failed",
        "Status: 5.0.0",
        "recalled by the sender",
    ] {
        assert!(dsn.contains(needle), "DSN lacks {needle:?}:\n{dsn}");
    }
    assert!(dest().mails(&rcpt("c")).is_empty());
    let line = wait_delivery_line(&gw, &rcpt("c"), "bounced");
    assert_eq!(line["code"], "5.0.0", "{line:?}");

    // A reason with a line break would split the control line: refused.
    let bad = gw.cli(&["queue", "delete", &a, "--reason", "two\nlines"]);
    assert!(!bad.status.success(), "{bad:?}");
    gw.wait_queue_empty(T);

    // The log says who held, released, bounced, with their reasons.
    let out = gw.cli(&["report", "export", "--format", "json"]);
    let records: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let of = |id: &str, kind: &str| -> Vec<serde_json::Value> {
        records
            .iter()
            .filter(|r| r["queue_id"] == id && r["kind"] == kind)
            .cloned()
            .collect()
    };
    let held = of(&a, "held");
    assert_eq!(held.len(), 2, "{records:?}");
    let text = serde_json::to_string(&held).unwrap();
    assert!(
        text.contains("checking with the sender") && text.contains("sealgate queue release"),
        "{text}"
    );
    let deleted = serde_json::to_string(&of(&d, "deleted")).unwrap();
    assert!(deleted.contains("a duplicate of b"), "{deleted}");
    let bounced = of(&c, "attempt");
    assert!(
        serde_json::to_string(&bounced)
            .unwrap()
            .contains("recalled by the sender"),
        "{bounced:?}"
    );
}

#[test]
fn transient_failure_is_retried_then_delivered() {
    // No connection reuse: a cached session would keep talking to the smtpd
    // process that still has the old access rule after the reload.
    let gw = Gateway::start_with(|dir, relay, sub| {
        base_config(dir, relay, sub).replace("idle_timeout = \"2s\"", "idle_timeout = \"0s\"")
    });
    let local = unique("tempfail");
    let rcpt = format!("{local}@retry.test");
    let rule = format!("/^{local}@/ 451 4.3.0 Try again later");
    dest().add_rule(&rule);
    dest().wait_rcpt_reply(&rcpt, "451");
    let mut c = Client::connect(gw.relay);
    c.cmd("EHLO client.test");
    let reply = c.message(
        "sender@src.test",
        &[&rcpt],
        message(&local, "retry me\r\n").as_bytes(),
    );
    assert!(reply.starts_with("250"), "{reply}");
    let id = reply.trim().rsplit(' ').next().unwrap().to_string();

    // Deferred, with the peer's words recorded.
    let shown = wait_for(T, "a deferred attempt", || {
        let out = gw.cli(&["queue", "show", &id, "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let r = &v["recipients"][0];
        (r["attempts"].as_u64()? >= 1 && r["status"] == "pending").then_some(v)
    });
    assert!(
        shown["recipients"][0]["last_reply"]
            .as_str()
            .unwrap()
            .contains("451 4.3.0"),
        "{shown}"
    );
    assert!(dest().mails(&rcpt).is_empty());
    let line = wait_delivery_line(&gw, &rcpt, "deferred");
    assert_eq!(
        (
            line["id"].as_str(),
            line["tenant"].as_str(),
            line["from"].as_str()
        ),
        (id.as_str(), "default", "sender@src.test"),
        "{line:?}"
    );
    assert_eq!(line["code"], "4.3.0", "{line:?}");
    assert!(line["reply"].contains("Try again later"), "{line:?}");
    assert!(line["relay"].contains("[127.0.0.1]"), "{line:?}");
    assert!(line["delay"].parse::<u64>().is_ok(), "{line:?}");

    dest().remove_rule(&rule);
    dest().wait_rcpt_reply(&rcpt, "250");
    // `queue retry` reaches the running gateway through its control socket.
    let out = gw.cli(&["queue", "retry", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dest().wait_mails(&rcpt, 1, T);
    gw.wait_queue_empty(T);
    let line = wait_delivery_line(&gw, &rcpt, "sent");
    assert_eq!(line["code"].chars().next(), Some('2'), "{line:?}");
    // A test peer without TLS, let through by the test policy's exception.
    assert_eq!(
        (line["action"].as_str(), line["class"].as_str()),
        ("deliver", "normal"),
        "{line:?}"
    );
}

#[test]
fn permanent_failure_bounces_with_a_dsn() {
    let gw = Gateway::start("");
    let sender = format!("{}@src.test", unique("sender"));
    let rcpt = format!("reject-{}@dst.test", unique("x"));
    let good = format!("{}@dst.test", unique("good"));
    let mut c = Client::connect(gw.relay);
    c.cmd("EHLO client.test");
    c.cmd(&format!("MAIL FROM:<{sender}> RET=HDRS ENVID=env-42"));
    assert!(
        c.cmd(&format!(
            "RCPT TO:<{rcpt}> NOTIFY=FAILURE ORCPT=rfc822;orig@dst.test"
        ))
        .starts_with("250")
    );
    assert!(c.cmd(&format!("RCPT TO:<{good}>")).starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(message("bounce-me", "secret body\r\n").as_bytes());
    c.send(b".\r\n");
    assert!(c.reply().starts_with("250"));

    dest().wait_mails(&good, 1, T);
    let dsn = String::from_utf8(dest().wait_mails(&sender, 1, T).remove(0)).unwrap();
    for needle in [
        "multipart/report",
        "delivery-status",
        &format!("Final-Recipient: rfc822; {rcpt}"),
        "Original-Recipient: rfc822; orig@dst.test",
        "Original-Envelope-Id: env-42",
        "Action: failed",
        "Status: 5.1.1",
        "Diagnostic-Code: smtp; 550 5.1.1",
        "Subject: bounce-me",
    ] {
        assert!(dsn.contains(needle), "DSN lacks {needle:?}:\n{dsn}");
    }
    assert!(
        !dsn.contains(&good),
        "only the failed recipient is reported"
    );
    assert!(!dsn.contains("secret body"), "RET=HDRS returns no body");
    gw.wait_queue_empty(T);
    let line = wait_delivery_line(&gw, &rcpt, "bounced");
    assert_eq!(line["code"], "5.1.1", "{line:?}");
    assert_eq!(line["from"], sender, "{line:?}");
    let warned = format!("WARN delivery: id=\"{}\"", line["id"]);
    assert!(gw.log().contains(&warned), "a bounce is a warning");
}

#[test]
fn unreachable_past_lifetime_bounces() {
    let gw = Gateway::start_with(|dir, relay, sub| {
        base_config(dir, relay, sub).replace(
            "retry_schedule = [\"1s\"]",
            "retry_schedule = [\"1s\"]\nmax_lifetime = \"3s\"",
        )
    });
    let sender = format!("{}@src.test", unique("expiry"));
    let mut c = Client::connect(gw.relay);
    c.cmd("EHLO client.test");
    let r = c.message(
        &sender,
        &["nobody@unreachable.test"],
        message("expire", "x\r\n").as_bytes(),
    );
    assert!(r.starts_with("250"), "{r}");
    let dsn = String::from_utf8(dest().wait_mails(&sender, 1, T).remove(0)).unwrap();
    assert!(
        dsn.contains("Final-Recipient: rfc822; nobody@unreachable.test"),
        "{dsn}"
    );
    assert!(dsn.contains("gave up after"), "{dsn}");
    assert!(dsn.contains("Status: 4.4."), "{dsn}");
    gw.wait_queue_empty(T);
    let line = wait_delivery_line(&gw, "nobody@unreachable.test", "expired");
    assert!(line["reply"].starts_with("gave up after"), "{line:?}");
    assert_eq!(line["relay"], "none", "nobody answered: {line:?}");
}

/// Five rounds of load, each ended by `kill -9` at a random moment (the
/// restarted gateway is redelivering the earlier rounds' queue meanwhile):
/// every message that got its 250 arrives, duplicates are counted.
#[test]
fn kill_9_under_load_loses_no_acknowledged_message() {
    use std::sync::{Arc, Mutex};
    const ROUNDS: usize = 5;
    // Four deliveries at most in flight to the domain, so that the bound on
    // duplicates below follows from the configuration, not the machine's speed.
    let mut gw = Gateway::start_with(|dir, relay, sub| {
        base_config(dir, relay, sub).replace(
            "retry_schedule = [\"1s\"]",
            "retry_schedule = [\"1s\"]\nmax_per_destination = 4",
        )
    });
    let tag = unique("crash");
    let rcpt = format!("{tag}@crash.test");
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut kills = Vec::new();
    for round in 0..ROUNDS {
        let port = gw.relay;
        let before = acked.lock().unwrap().len();
        let mut threads = Vec::new();
        for t in 0..8 {
            let acked = acked.clone();
            let rcpt = rcpt.clone();
            threads.push(std::thread::spawn(move || {
                // Stops at the first failure: the gateway died under it.
                let Ok(stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                    return;
                };
                drop(stream);
                let mut c = Client::connect(port);
                c.cmd("EHLO load.test");
                for i in 0..200 {
                    let mid = format!("{round}.{t}.{i}");
                    let data = message(&format!("crash-{mid}"), "load\r\n");
                    if !c.cmd("MAIL FROM:<load@src.test>").starts_with("250")
                        || !c.cmd(&format!("RCPT TO:<{rcpt}>")).starts_with("250")
                        || !c.cmd("DATA").starts_with("354")
                    {
                        return;
                    }
                    c.send(data.as_bytes());
                    c.send(b".\r\n");
                    if c.reply().starts_with("250") {
                        acked
                            .lock()
                            .unwrap()
                            .push(format!("<crash-{mid}@src.test>"));
                    } else {
                        return;
                    }
                }
            }));
        }
        let delay = 200 + rand::random::<u64>() % 600;
        std::thread::sleep(Duration::from_millis(delay));
        gw.kill9();
        for t in threads {
            let _ = t.join();
        }
        let n = acked.lock().unwrap().len() - before;
        assert!(
            n > 0,
            "round {round}: no message was acknowledged before the kill at {delay} ms"
        );
        kills.push(format!("{delay} ms ({n} acked)"));
        gw.restart();
    }
    let acked = acked.lock().unwrap().clone();
    gw.wait_queue_empty(Duration::from_secs(120));
    let message_ids = || -> Vec<String> {
        dest()
            .mails(&rcpt)
            .iter()
            .filter_map(|m| {
                String::from_utf8_lossy(m)
                    .lines()
                    .find_map(|l| l.strip_prefix("Message-ID: ").map(str::to_string))
            })
            .collect()
    };
    // Postfix hands mail to its pipe transport after its own 250, so an empty
    // sealgate queue does not mean every message is on disk at the peer yet:
    // poll until each acknowledged message has arrived, or give up and report.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut delivered = message_ids();
    while acked.iter().any(|id| !delivered.contains(id)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        delivered = message_ids();
    }
    let lost: Vec<&String> = acked.iter().filter(|id| !delivered.contains(id)).collect();
    let mut sorted = delivered.clone();
    sorted.sort();
    sorted.dedup();
    let duplicates = delivered.len() - sorted.len();
    eprintln!(
        "crash test: {ROUNDS} kills at {}; {} acknowledged, {} delivered, {} lost, {duplicates} duplicate(s)",
        kills.join(", "),
        acked.len(),
        delivered.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged but never delivered: {lost:?}"
    );
    // What a peer accepted is noted the moment its 250 arrives (the
    // delivered journal, tested below), so a duplicate needs the kill to
    // fall between the peer's commit and our reading of its 250, a window
    // every SMTP client has (RFC 1047): at most the deliveries in flight at
    // each kill, four. On a slow disk most of a delivery is spent in that
    // window (the peer's fsync), so with the default twenty in flight one
    // run here saw 41.
    assert!(duplicates <= 4 * ROUNDS, "{duplicates} duplicates");
}

/// The delivered journal is applied at start: a recipient a peer accepted
/// just before a crash is recorded as delivered, with that evidence, and
/// not sent again.
#[test]
fn a_delivery_in_the_journal_is_recorded_not_repeated() {
    let mut gw = Gateway::start_with(|dir, relay, sub| {
        base_config(dir, relay, sub)
            .replace("retry_schedule = [\"1s\"]", "retry_schedule = [\"1h\"]")
    });
    // Deferred (nothing listens there) and not due again for an hour.
    let rcpt = format!("{}@unreachable.test", unique("journal"));
    let mut c = Client::connect(gw.relay);
    c.cmd("EHLO client.test");
    let reply = c.message(
        "sender@src.test",
        &[&rcpt],
        message("journal", "x\r\n").as_bytes(),
    );
    let id = reply.trim().rsplit(' ').next().unwrap().to_string();
    wait_for(T, "a deferred attempt", || {
        let out = gw.cli(&["queue", "show", &id, "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["recipients"][0]["attempts"].as_u64()? >= 1).then_some(())
    });
    gw.kill9();
    // As a peer's 250 would have left it, with a line a crash cut short.
    std::fs::write(
        gw.dir.path().join("delivered-journal.1"),
        format!("{id} unreachable.test mx.unreachable.test[127.0.0.1] 0\n{id} unrea"),
    )
    .unwrap();
    gw.restart();
    gw.wait_queue_empty(T);
    let last = attempts(&gw, &id).pop().expect("an attempt record");
    let r = &last["recipients"][0];
    assert_eq!(r["outcome"], "delivered", "{last}");
    assert!(
        r["detail"].as_str().unwrap().contains("delivered journal"),
        "{last}"
    );
    assert!(gw.log().contains("recorded deliveries that peers accepted"));
    let journal = std::fs::read(gw.dir.path().join("delivered-journal.1")).unwrap();
    assert!(journal.is_empty(), "emptied once recorded");
}

#[test]
fn bad_input_gets_clear_replies_and_loses_nothing() {
    let gw = Gateway::start("[limits]\nmax_message_size = 200000\nmax_errors = 50\n");
    let mut c = Client::connect(gw.relay);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(
        c.cmd("FOOBAR baz").starts_with("500 5.5.1"),
        "unknown command"
    );
    assert!(
        c.cmd("MAIL FROM:<not an address").starts_with("50"),
        "malformed MAIL"
    );
    assert!(
        c.cmd("RCPT TO:<x@y.test>").starts_with("503"),
        "RCPT before MAIL"
    );

    // A 1 MB command line: one reply, and the session goes on.
    let mut long = vec![b'X'; 1 << 20];
    long.extend_from_slice(b"\r\n");
    c.send(&long);
    assert!(c.reply().starts_with("500 5.5.2"));
    assert!(
        c.cmd("NOOP").starts_with("250"),
        "session usable after a long line"
    );

    // Pipelined garbage: one reply per line, in order.
    c.send(b"GARBAGE1\r\nGARBAGE2\r\nNOOP\r\n");
    assert!(c.reply().starts_with("500"));
    assert!(c.reply().starts_with("500"));
    assert!(c.reply().starts_with("250"));

    // A 1 MB line inside DATA is refused at the end of the data; session usable.
    let rcpt = format!("{}@bad.test", unique("bad"));
    c.cmd("MAIL FROM:<a@src.test>");
    c.cmd(&format!("RCPT TO:<{rcpt}>"));
    assert!(c.cmd("DATA").starts_with("354"));
    let mut data = b"Subject: long\r\n\r\n".to_vec();
    data.extend(std::iter::repeat_n(b'y', 150_000));
    data.extend_from_slice(b"\r\n.\r\n");
    c.send(&data);
    let r = c.reply();
    assert!(r.starts_with("554 5.6.0"), "{r}");

    // Oversize message: 552 after the data, session usable.
    c.cmd("MAIL FROM:<a@src.test>");
    c.cmd(&format!("RCPT TO:<{rcpt}>"));
    assert!(c.cmd("DATA").starts_with("354"));
    for _ in 0..300 {
        c.send(&[b'z'; 998]);
        c.send(b"\r\n");
    }
    c.send(b".\r\n");
    assert!(c.reply().starts_with("552 5.3.4"));
    assert!(
        c.cmd("MAIL FROM:<a@src.test> SIZE=999999999")
            .starts_with("552 5.3.4"),
        "SIZE checked at MAIL"
    );

    // Bare LF inside the data is stored as CRLF; a bare-LF dot does not end the data.
    c.cmd("RSET");
    c.cmd("MAIL FROM:<a@src.test>");
    c.cmd(&format!("RCPT TO:<{rcpt}>"));
    assert!(c.cmd("DATA").starts_with("354"));
    let headers = "From: a@src.test\nDate: Mon, 23 Nov 2026 10:00:00 +0000\nSubject: bare\nMessage-ID: <bare@src.test>\n";
    c.send(format!("{headers}\nline one\n.\nline three\r\n.\r\n").as_bytes());
    assert!(c.reply().starts_with("250"));
    let got = dest().wait_mails(&rcpt, 1, T).remove(0);
    let body = strip_trace(&got);
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("{headers}\nline one\n.\nline three\n")
    );
    assert_eq!(
        dest().mails(&rcpt).len(),
        1,
        "only the good message arrived"
    );

    // A client that drops mid-DATA leaves nothing queued.
    let before = gw.queue().len();
    let mut d = Client::connect(gw.relay);
    d.cmd("EHLO client.test");
    d.cmd("MAIL FROM:<a@src.test>");
    d.cmd("RCPT TO:<dropped@bad.test>");
    assert!(d.cmd("DATA").starts_with("354"));
    d.send(b"Subject: half\r\n\r\nhalf a mess");
    drop(d);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(gw.queue().len(), before, "a partial message was queued");
    assert!(!gw.log().contains("dropped@bad.test"));

    // Too many errors end the session with 421.
    let mut e = Client::connect(gw.relay);
    for _ in 0..49 {
        e.cmd("BAD");
    }
    assert!(
        e.cmd("BAD").starts_with("500"),
        "the last bad command gets its own reply"
    );
    let last = e.reply();
    assert!(last.starts_with("421 4.7.0"), "{last}");
    assert!(e.closed());
}

#[test]
fn sigterm_finishes_the_transaction_in_progress() {
    let mut gw = Gateway::start("");
    let rcpt = format!("{}@term.test", unique("term"));
    let mut c = Client::connect(gw.relay);
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<a@src.test>");
    c.cmd(&format!("RCPT TO:<{rcpt}>"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: during shutdown\r\n\r\nfirst half\r\n");
    gw.signal_term();
    // The listener closes, but the session in DATA is left to finish.
    std::thread::sleep(Duration::from_millis(300));
    c.send(b"second half\r\n.\r\n");
    let reply = c.reply();
    assert!(
        reply.starts_with("250"),
        "the transaction in progress completes: {reply}"
    );
    assert!(gw.wait_exit(), "exit status 0 after SIGTERM:\n{}", gw.log());
    // What was accepted is on disk and goes out after the next start.
    gw.restart();
    dest().wait_mails(&rcpt, 1, T);
}

#[test]
fn config_errors_name_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let check = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(bin())
            .args(["config", "check", path.to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = check(
        "bad.toml",
        "hostname = \"gw\"\n\n[queue]\nmax_lifetime = \"forever\"\n",
    );
    assert!(!ok);
    assert!(
        err.contains("bad.toml:4:")
            && err.contains("queue.max_lifetime")
            && err.contains("duration"),
        "{err}"
    );
    let (ok, err) = check(
        "bad.toml",
        "[[listener]]\naddress = \"127.0.0.1:25\"\nmode = \"relay\"\nport = 25\n",
    );
    assert!(
        !ok && err.contains("bad.toml:4:") && err.contains("unknown field `port`"),
        "{err}"
    );

    // The shipped example, with its files made real in a temporary /etc/sealgate.
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/sealgate.toml"))
            .unwrap();
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(etc.join("tls")).unwrap();
    self_signed(
        "gw",
        &etc.join("tls/fullchain.pem"),
        &etc.join("tls/key.pem"),
    );
    std::fs::write(etc.join("users"), format!("alice:{}\n", users_hash())).unwrap();
    // The policy directory as the example's comment says: the default and an example.
    std::fs::create_dir_all(etc.join("policies")).unwrap();
    for (from, to) in [
        ("policies/default.toml", "default.toml"),
        ("policies/examples/office-exchange.toml", "office.toml"),
    ] {
        std::fs::copy(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(from),
            etc.join("policies").join(to),
        )
        .unwrap();
    }
    let (ok, err) = check(
        "example.toml",
        &example.replace("/etc/sealgate", etc.to_str().unwrap()),
    );
    assert!(ok, "deploy/sealgate.toml: {err}");
    // Without its policy directory the example says which one is missing, once.
    std::fs::remove_dir_all(etc.join("policies")).unwrap();
    let (ok, err) = check(
        "example.toml",
        &example.replace("/etc/sealgate", etc.to_str().unwrap()),
    );
    assert!(!ok);
    assert_eq!(
        err.trim(),
        format!(
            "sealgate: {}/policies: cannot read: No such file or directory (os error 2)",
            etc.display()
        )
    );
}

/// Makes a self-signed client certificate; returns (cert, key, SHA-256 of the DER).
fn client_certificate(dir: &std::path::Path) -> (String, String, String) {
    let cert = dir.join("client.pem");
    let key = dir.join("client.key");
    self_signed("connector.example", &cert, &key);
    let der = std::process::Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(&cert)
        .output()
        .unwrap()
        .stdout;
    use sha2::Digest;
    let fp: String = sha2::Sha256::digest(&der)
        .iter()
        .map(|b| format!("{b:02X}:"))
        .collect();
    (
        cert.to_str().unwrap().to_string(),
        key.to_str().unwrap().to_string(),
        fp.trim_end_matches(':').to_string(),
    )
}

#[test]
fn client_certificate_pin_authorizes_relay() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key, fp) = client_certificate(certs.path());
    // No network may relay: only the pinned certificate.
    let gw = Gateway::start_with(|dir, relay, sub| {
        format!(
            "default_tenant = \"m365\"\n{}\n[[tenant]]\nid = \"m365\"\nclient_certificates = [{{ sha256 = \"{fp}\" }}]\n",
            base_config(dir, relay, sub)
        )
    });
    let server = format!("127.0.0.1:{}", gw.relay);
    let rcpt = format!("{}@cert.test", unique("cert"));
    let (ok, out) = swaks(&[
        "--server",
        &server,
        "--from",
        "a@src.test",
        "--to",
        &rcpt,
        "--tls",
    ]);
    assert!(
        !ok && out.contains("554 5.7.1"),
        "no certificate, no relay:\n{out}"
    );
    let (ok, out) = swaks(&[
        "--server",
        &server,
        "--from",
        "a@src.test",
        "--to",
        &rcpt,
        "--tls",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ]);
    assert!(ok, "pinned certificate relays:\n{out}");
    let got = String::from_utf8(dest().wait_mails(&rcpt, 1, T).remove(0)).unwrap();
    assert!(
        got.contains(&format!(
            "(client certificate SHA-256 {})",
            fp.replace(':', "")
        )),
        "{got}"
    );
    let queued = gw.log();
    assert!(
        queued.contains("tenant=m365"),
        "the session is bound to the certificate's tenant:\n{queued}"
    );
}

#[test]
fn implicit_tls_listener() {
    let port = free_port();
    let gw = Gateway::start_with(|dir, relay, sub| {
        format!(
            "{}\n[[listener]]\naddress = \"127.0.0.1:{port}\"\nmode = \"relay\"\ntls = \"implicit\"\n",
            base_config(dir, relay, sub)
        )
    });
    let rcpt = format!("{}@smtps.test", unique("smtps"));
    let (ok, out) = swaks(&[
        "--server",
        &format!("127.0.0.1:{port}"),
        "--tlsc",
        "--from",
        "a@src.test",
        "--to",
        &rcpt,
    ]);
    assert!(ok, "{out}");
    let got = String::from_utf8(dest().wait_mails(&rcpt, 1, T).remove(0)).unwrap();
    assert!(got.contains("with ESMTPS"), "{got}");
    drop(gw);
}

#[test]
fn connection_limits_and_timeouts() {
    let gw = Gateway::start("[limits]\nmax_connections_per_client = 2\ncommand_timeout = \"1s\"\n");
    // The harness's readiness probe may hold a slot for a moment: wait for two.
    let slot = || {
        wait_for(T, "a connection slot", || {
            Client::try_connect_from("127.0.0.1", gw.relay).ok()
        })
    };
    let _a = slot();
    let _b = slot();
    let mut third =
        std::io::BufReader::new(std::net::TcpStream::connect(("127.0.0.1", gw.relay)).unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut third, &mut line).unwrap();
    assert!(
        line.starts_with("421 4.7.0"),
        "third connection from one client: {line}"
    );
    // Another client address still gets in.
    let mut other = Client::connect_from("127.0.0.2", gw.relay);
    // An idle session times out with 421 and is closed.
    let reply = other.reply();
    assert!(reply.starts_with("421 4.4.2"), "{reply}");
    assert!(other.closed());
}

#[test]
fn queue_delete_removes_without_bounce() {
    let gw = Gateway::start("");
    let sender = format!("{}@src.test", unique("deleted"));
    let mut c = Client::connect(gw.relay);
    c.cmd("EHLO client.test");
    let r = c.message(
        &sender,
        &["nobody@unreachable.test"],
        message("delete-me", "x\r\n").as_bytes(),
    );
    let id = r.trim().rsplit(' ').next().unwrap().to_string();
    wait_for(T, "the message in the queue", || {
        (gw.queue().len() == 1).then_some(())
    });
    let out = gw.cli(&["queue", "delete", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(gw.queue().is_empty());
    let out = gw.cli(&["queue", "show", &id]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no such message")
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        dest().mails(&sender).is_empty(),
        "a deleted message does not bounce"
    );
}

/// Microsoft sends every Microsoft 365 tenant's mail with one certificate:
/// a tenant admitted by certificate is bound to its own Microsoft 365
/// tenant id and sender domains.
#[test]
fn a_certificate_client_is_bound_to_its_tenant_id_and_sender_domains() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key, fp) = client_certificate(certs.path());
    let gw = Gateway::start_with(|dir, relay, sub| {
        format!(
            "default_tenant = \"m365\"\n{}\n[[tenant]]\nid = \"m365\"\nclient_certificates = [{{ sha256 = \"{fp}\" }}]\nm365_tenant_id = \"6f1c2a9e-0000-4000-8000-000000000001\"\nsender_domains = [\"contoso.test\"]\n",
            base_config(dir, relay, sub)
        )
    });
    let server = format!("127.0.0.1:{}", gw.relay);
    let send = |from: &str, rcpt: &str, tenant: Option<&str>| {
        let mut args = vec![
            "--server",
            &server,
            "--from",
            from,
            "--to",
            rcpt,
            "--tls",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ];
        let header;
        if let Some(t) = tenant {
            header = format!("X-MS-Exchange-CrossTenant-Id: {t}");
            args.extend(["--add-header", &header]);
        }
        swaks(&args)
    };
    let rcpt = format!("{}@cert.test", unique("bound"));
    let (ok, out) = send(
        "a@other.test",
        &rcpt,
        Some("6f1c2a9e-0000-4000-8000-000000000001"),
    );
    assert!(
        !ok && out.contains("554 5.7.1") && out.contains("other.test"),
        "{out}"
    );
    let (ok, out) = send(
        "a@contoso.test",
        &rcpt,
        Some("11111111-2222-4333-8444-555555555555"),
    );
    assert!(
        !ok && out.contains("554 5.7.1") && out.contains("Microsoft 365 tenant"),
        "{out}"
    );
    let (ok, out) = send("a@contoso.test", &rcpt, None);
    assert!(!ok && out.contains("554 5.7.1"), "{out}");
    assert!(dest().mails(&rcpt).is_empty());
    let (ok, out) = send(
        "a@contoso.test",
        &rcpt,
        Some("6f1c2a9e-0000-4000-8000-000000000001"),
    );
    assert!(ok, "{out}");
    dest().wait_mails(&rcpt, 1, T);
}
