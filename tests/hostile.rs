//! Hostile input over real sockets against the running gateway: what the
//! sender is told, what the next hop sees on the wire, and that the
//! gateway still serves normal mail afterwards. The next hop here is a
//! recorder that speaks just enough SMTP to take a message and keeps every
//! byte it was sent, since a real MTA would clean up what we must prove we
//! never send; real delivery stays with the Postfix destination.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

const T: Duration = Duration::from_secs(30);

/// How the recorder answers.
#[derive(Clone, Copy)]
struct Behaviour {
    /// The reply to every RCPT.
    rcpt: &'static str,
    /// Whether DATA gets 354 whatever RCPT got (a broken peer).
    data_anyway: bool,
    /// Whether the reply after the data never comes.
    stall_after_data: bool,
    /// Whether EHLO offers 8BITMIME.
    eight_bit: bool,
    /// Whether EHLO offers CHUNKING (BDAT, RFC 3030).
    chunking: bool,
    /// How long the reply after the data takes.
    data_reply_after: Duration,
    /// The reply after the data.
    data_reply: &'static str,
}

const ACCEPTING: Behaviour = Behaviour {
    rcpt: "250 2.1.5 ok",
    data_anyway: false,
    stall_after_data: false,
    eight_bit: true,
    chunking: false,
    data_reply_after: Duration::ZERO,
    data_reply: "250 2.0.0 queued",
};

/// A next hop that records the raw bytes of every connection.
struct Recorder {
    port: u16,
    sessions: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Recorder {
    fn start(how: Behaviour) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind recorder");
        let port = listener.local_addr().unwrap().port();
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let keep = sessions.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let keep = keep.clone();
                std::thread::spawn(move || {
                    let index = {
                        let mut s = keep.lock().unwrap();
                        s.push(Vec::new());
                        s.len() - 1
                    };
                    serve(stream, how, |bytes| {
                        keep.lock().unwrap()[index].extend_from_slice(bytes)
                    });
                });
            }
        });
        Recorder { port, sessions }
    }

    /// Everything every connection sent, as text.
    fn wire(&self) -> String {
        let s = self.sessions.lock().unwrap();
        s.iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect::<Vec<_>>()
            .join("\n--- next connection ---\n")
    }

    fn wait_for(&self, what: &str) -> String {
        wait_for(T, &format!("the next hop to see {what:?}"), || {
            let w = self.wire();
            w.contains(what).then_some(w)
        })
    }
}

/// One SMTP session of the recorder; `record` gets every byte read.
fn serve(stream: TcpStream, how: Behaviour, mut record: impl FnMut(&[u8])) {
    stream.set_read_timeout(Some(T)).ok();
    let mut out = stream.try_clone().expect("clone");
    let mut input = BufReader::new(stream);
    let _ = out.write_all(b"220 rec.test ESMTP recorder\r\n");
    let mut accepted = 0;
    loop {
        let mut line = Vec::new();
        match input.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => record(&line),
        }
        let verb = String::from_utf8_lossy(&line).to_ascii_uppercase();
        let reply: &[u8] = if verb.starts_with("EHLO") {
            let mut ehlo = "250-rec.test\r\n250-PIPELINING\r\n".to_string();
            if how.chunking {
                ehlo.push_str("250-CHUNKING\r\n");
            }
            if how.eight_bit {
                ehlo.push_str("250-8BITMIME\r\n");
            }
            ehlo.push_str("250 HELP\r\n");
            let _ = out.write_all(ehlo.as_bytes());
            continue;
        } else if verb.starts_with("BDAT") && how.chunking {
            // The count says how many octets follow the line, as they are.
            let size: usize = verb
                .split_whitespace()
                .nth(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let mut chunk = vec![0u8; size];
            if input.read_exact(&mut chunk).is_err() {
                return;
            }
            record(&chunk);
            let _ = out.write_all(format!("{}\r\n", how.data_reply).as_bytes());
            continue;
        } else if verb.starts_with("RCPT") {
            if how.rcpt.starts_with('2') {
                accepted += 1;
            }
            let _ = out.write_all(format!("{}\r\n", how.rcpt).as_bytes());
            continue;
        } else if verb.starts_with("DATA") {
            if accepted == 0 && !how.data_anyway {
                b"554 5.5.1 no valid recipients\r\n"
            } else {
                let _ = out.write_all(b"354 go ahead\r\n");
                // Read to CRLF.CRLF, the data's only end.
                let mut data = b"\r\n".to_vec();
                while !data.ends_with(b"\r\n.\r\n") {
                    let mut byte = [0u8; 1];
                    match input.read(&mut byte) {
                        Ok(1) => {
                            record(&byte);
                            data.push(byte[0]);
                        }
                        _ => return,
                    }
                }
                std::thread::sleep(how.data_reply_after);
                if how.stall_after_data {
                    // Holds the connection until the client gives up:
                    // longer than the gateway's 30 s shutdown bound, so
                    // that the bound, not this read's timeout, ends it.
                    input.get_ref().set_read_timeout(Some(3 * T)).ok();
                    let mut rest = Vec::new();
                    let _ = input.read_to_end(&mut rest);
                    return;
                }
                let _ = out.write_all(format!("{}\r\n", how.data_reply).as_bytes());
                continue;
            }
        } else if verb.starts_with("QUIT") {
            let _ = out.write_all(b"221 2.0.0 bye\r\n");
            return;
        } else {
            b"250 2.0.0 ok\r\n"
        };
        accepted = if verb.starts_with("RSET") || verb.starts_with("MAIL") {
            0
        } else {
            accepted
        };
        let _ = out.write_all(reply);
    }
}

/// A gateway that routes `*.rec.test` to the recorder, the rest to Postfix.
fn gateway(rec: &Recorder) -> Gateway {
    let port = rec.port;
    Gateway::start_with(move |dir, relay, sub| {
        // The recorder speaks no TLS: normal mail may go to it in plaintext.
        let exceptions = format!(
            "{}{}",
            plaintext_exception("allowed.rec.test"),
            plaintext_exception("refusing.rec.test")
        );
        let policy = policy_dir(dir, &[("recorder.toml", &exceptions)]);
        let routed = base_config(dir, relay, sub).replace(
            "[[route]]\ndomain = \"*\"",
            &format!(
                "[[route]]\ndomain = \"*.rec.test\"\nnext_hop = \"127.0.0.1:{port}\"\n\n[[route]]\ndomain = \"*\""
            ),
        );
        format!("{routed}{policy}")
    })
}

fn client(gw: &Gateway) -> Client {
    let mut c = Client::connect(gw.relay);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    c
}

/// Sends one message through the gateway's relay port and checks it was
/// taken (250); returns its queue id.
fn accepted(gw: &Gateway, from: &str, rcpt: &str, subject: &str, body: &str) -> String {
    let mut c = client(gw);
    let reply = c.message(from, &[rcpt], message(subject, body).as_bytes());
    assert!(reply.starts_with("250"), "{reply}");
    reply.trim().rsplit(' ').next().unwrap().to_string()
}

/// The gateway still takes and delivers an ordinary message.
fn still_serves(gw: &Gateway) {
    let rcpt = format!("{}@dst.test", unique("after"));
    accepted(gw, "sender@src.test", &rcpt, &unique("m"), "fine\r\n");
    dest().wait_mails(&rcpt, 1, T);
}

/// RFC 5321 §4.1.2: a quoted local part stays quoted on the next hop; its
/// contents can neither add parameters nor move the domain.
#[test]
fn rfc5321_4_1_2_quoted_local_parts_stay_quoted_on_the_next_hop() {
    let rec = Recorder::start(ACCEPTING);
    let gw = gateway(&rec);
    let mut c = client(&gw);
    assert!(c.cmd("MAIL FROM:<sender@src.test>").starts_with("250"));
    let r = c.cmd("RCPT TO:<\"x> NOTIFY=SUCCESS ORCPT=rfc822;forged\"@allowed.rec.test>");
    assert!(r.starts_with("250"), "{r}");
    let r = c.cmd("RCPT TO:<\"victim@evil.test\"@allowed.rec.test>");
    assert!(r.starts_with("250"), "{r}");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(message(&unique("quoted"), "hi\r\n").as_bytes());
    let r = c.cmd(".");
    assert!(r.starts_with("250"), "{r}");
    let wire = rec.wait_for("hi\r\n");
    assert!(
        wire.contains("RCPT TO:<\"x> NOTIFY=SUCCESS ORCPT=rfc822;forged\"@allowed.rec.test>"),
        "{wire}"
    );
    assert!(
        wire.contains("RCPT TO:<\"victim@evil.test\"@allowed.rec.test>"),
        "{wire}"
    );
    assert!(!wire.contains("RCPT TO:<x>"), "{wire}");
    assert!(!wire.contains("RCPT TO:<victim@evil.test"), "{wire}");
    still_serves(&gw);
}

/// RFC 3461 §4.4: ENVID and ORCPT arrive xtext-encoded; decoded, a CR LF
/// in them would write headers into the bounce. They are refused.
#[test]
fn rfc3461_4_decoded_line_breaks_in_envid_and_orcpt_are_refused() {
    let rec = Recorder::start(ACCEPTING);
    let gw = gateway(&rec);
    let mut c = client(&gw);
    let r = c.cmd("MAIL FROM:<sender@src.test> ENVID=x+0D+0AAction:+20delivered");
    assert!(r.starts_with("501 5.5.4"), "{r}");
    assert!(
        c.cmd("MAIL FROM:<sender@src.test> ENVID=ok-1")
            .starts_with("250")
    );
    let r = c.cmd("RCPT TO:<a@allowed.rec.test> ORCPT=rfc822;x+0D+0AFinal-Recipient:+20forged");
    assert!(r.starts_with("501 5.5.4"), "{r}");
    let r = c.cmd("RCPT TO:<a@allowed.rec.test> ORCPT=rfc822;a+00b@x.test");
    assert!(r.starts_with("501 5.5.4"), "{r}");
    still_serves(&gw);
}

/// The SMTP smuggling family (CVE-2023-51764): a bare CR and a bare LF
/// are line ends to some MTAs. None reaches the next hop, and a dot after
/// one is stuffed, so no second end of data can be read there.
#[test]
fn bare_cr_and_lf_in_data_never_reach_the_next_hop() {
    let rec = Recorder::start(ACCEPTING);
    let gw = gateway(&rec);
    let mut c = client(&gw);
    assert!(c.cmd("MAIL FROM:<sender@src.test>").starts_with("250"));
    assert!(
        c.cmd("RCPT TO:<smuggle@allowed.rec.test>")
            .starts_with("250")
    );
    assert!(c.cmd("DATA").starts_with("354"));
    let subject = unique("smuggle");
    c.send(
        format!(
            "Subject: {subject}\r\n\r\nfirst\r.\rMAIL FROM:<forged@x.test>\r\nsecond\n.\nRCPT TO:<y@x.test>\r\nend\r\n"
        )
        .as_bytes(),
    );
    let r = c.cmd(".");
    assert!(r.starts_with("250"), "{r}");
    let wire = rec.wait_for("end\r\n.\r\n");
    let data = &wire[wire.find(&subject).expect("the message")..];
    assert!(
        data.contains(
            "first\r\n..\r\nMAIL FROM:<forged@x.test>\r\nsecond\r\n..\r\nRCPT TO:<y@x.test>"
        ),
        "{data:?}"
    );
    let bytes = data.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'\r' {
            assert_eq!(bytes.get(i + 1), Some(&b'\n'), "bare CR at {i}: {data:?}");
        }
        if *b == b'\n' {
            assert!(i > 0 && bytes[i - 1] == b'\r', "bare LF at {i}: {data:?}");
        }
    }
    still_serves(&gw);
}

/// NUL and control characters in HELO, in an address (quoted or not) and
/// in a header get a clear refusal; nothing of them is relayed or written
/// into our Received: header.
#[test]
fn control_characters_in_helo_addresses_and_headers_are_refused() {
    let rec = Recorder::start(ACCEPTING);
    let gw = gateway(&rec);
    let mut c = Client::connect(gw.relay);
    let r = c.cmd("EHLO bad\u{1}name.test");
    assert!(r.starts_with("501 5.5.4"), "{r}");
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    let r = c.cmd("MAIL FROM:<\"a\u{0}b\"@src.test>");
    assert!(r.starts_with("501"), "{r}");
    assert!(c.cmd("MAIL FROM:<sender@src.test>").starts_with("250"));
    let r = c.cmd("RCPT TO:<\"x\u{7}y\"@allowed.rec.test>");
    assert!(r.starts_with("501"), "{r}");
    assert!(c.cmd("RCPT TO:<ok@allowed.rec.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: a\0b\r\nX-Evil: c\x1bd\r\n\r\nbody\r\n");
    let r = c.cmd(".");
    assert!(r.starts_with("554 5.6.0"), "{r}");
    assert!(r.contains("line 1"), "{r}");
    still_serves(&gw);
    assert!(!rec.wire().contains("body\r\n"), "nothing was relayed");
}

/// A command line over the limit is refused however it arrives: in one
/// write as much as across reads.
#[test]
fn an_overlong_command_in_one_write_is_refused() {
    let rec = Recorder::start(ACCEPTING);
    let gw = gateway(&rec);
    let mut c = client(&gw);
    let long = format!("MAIL FROM:<{}@src.test>\r\n", "a".repeat(60_000));
    c.send(long.as_bytes());
    let r = c.reply();
    assert!(r.starts_with("500 5.5.2"), "{r}");
    // The session goes on with the next command.
    assert!(c.cmd("NOOP").starts_with("250"), "still in step");
    still_serves(&gw);
}

/// RFC 2920 §3.1: a peer that answers the pipelined DATA with 354 although
/// it refused every recipient gets no content.
#[test]
fn rfc2920_3_1_no_content_when_every_recipient_was_refused() {
    let rec = Recorder::start(Behaviour {
        rcpt: "550 5.1.1 no such user",
        data_anyway: true,
        ..ACCEPTING
    });
    let gw = gateway(&rec);
    let marker = unique("secret-content");
    accepted(
        &gw,
        "sender@src.test",
        "nobody@refusing.rec.test",
        &marker,
        "confidential words\r\n",
    );
    let wire = rec.wait_for("RSET");
    assert!(!wire.contains(&marker), "content was sent: {wire}");
    assert!(!wire.contains("confidential words"), "{wire}");
    still_serves(&gw);
}

/// Spreadsheet formulas in exported cells are defused.
#[test]
fn csv_cells_that_look_like_formulas_are_defused() {
    let rec = Recorder::start(ACCEPTING);
    let gw = gateway(&rec);
    accepted(
        &gw,
        "sender@src.test",
        "=cmd@allowed.rec.test",
        &unique("csv"),
        "x\r\n",
    );
    rec.wait_for("x\r\n.\r\n");
    let csv = wait_for(T, "the attempt in the CSV export", || {
        let out = gw.cli(&["report", "export", "--format", "csv"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("cmd@allowed.rec.test").then_some(text)
    });
    assert!(csv.contains(",'=cmd@allowed.rec.test,"), "{csv}");
    assert!(!csv.contains(",=cmd@"), "{csv}");
}

/// The data directory and everything in it are the gateway user's alone,
/// whatever umask it was started with.
#[test]
fn the_data_directory_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let gw = Gateway::start_with(|dir, relay, sub| {
        // As an installer or an older version may have left it.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        base_config(dir, relay, sub)
    });
    still_serves(&gw);
    let dir = gw.dir.path();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    let mut files = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_file() {
            files += 1;
            assert_eq!(
                mode(&path) & 0o077,
                0,
                "{} is open to others",
                path.display()
            );
        }
    }
    assert!(files >= 2, "the database and its WAL at least");
}

/// One AUTH PLAIN attempt over its own connection (STARTTLS first), as
/// `user` with `password`; whether it was accepted, and how long it took.
fn auth_attempt(gw: &Gateway, user: &str, password: &str) -> (bool, Duration) {
    let server = format!("127.0.0.1:{}", gw.submission);
    let started = Instant::now();
    let (ok, out) = swaks(&[
        "--server",
        &server,
        "--from",
        "alice@src.test",
        "--to",
        "x@dst.test",
        "--tls",
        "--auth",
        "PLAIN",
        "--auth-user",
        user,
        "--auth-password",
        password,
        "--quit-after",
        "AUTH",
    ]);
    assert!(ok || out.contains("535"), "{out}");
    (ok, started.elapsed())
}

/// Guessing over many connections gets slower and slower, for a known
/// user as for an unknown one, and a good password still works.
#[test]
fn auth_guessing_slows_down_across_sessions() {
    let gw = Gateway::start("");
    for i in 0..3 {
        let (ok, took) = auth_attempt(&gw, "alice", "wrong");
        assert!(!ok);
        assert!(took < Duration::from_secs(1), "attempt {i} took {took:?}");
    }
    let (ok, _) = auth_attempt(&gw, "alice", "wrong");
    assert!(!ok);
    // The fifth failure from this address waits 2 s before it is checked.
    let (ok, took) = auth_attempt(&gw, "alice", "wrong");
    assert!(!ok);
    assert!(took >= Duration::from_secs(2), "took {took:?}");
    // An unknown user from the same address waits just as long: the wait
    // says nothing about who exists.
    let (ok, took) = auth_attempt(&gw, "mallory", "wrong");
    assert!(!ok);
    assert!(took >= Duration::from_secs(4), "took {took:?}");
    let (ok, _) = auth_attempt(&gw, "alice", PASSWORD);
    assert!(ok, "the right password still gets in");
    still_serves(&gw);
}

/// The largest memory the gateway process has used, in KiB.
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// argon2 takes 19 MiB per check: 24 AUTH attempts at once must not mean
/// 24 checks at once.
#[test]
fn parallel_auth_attempts_do_not_grow_memory_without_bound() {
    let gw = Gateway::start("");
    let before = peak_kib(gw.pid());
    let gw = &gw;
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..24)
            .map(|_| s.spawn(move || auth_attempt(gw, "alice", PASSWORD).0))
            .collect();
        for r in runs {
            assert!(r.join().unwrap(), "every good password gets in");
        }
    });
    let grown = peak_kib(gw.pid()).saturating_sub(before);
    // One check per core (2 here): about 40 MiB, never 24 × 19 MiB.
    assert!(grown < 160 * 1024, "peak grew by {grown} KiB");
}

/// Sends `bytes` one every 300 ms on its own thread (ignoring a closed
/// connection) while this thread waits for the gateway's next reply line;
/// returns that line and when it came, from the first byte sent.
fn trickle(stream: &TcpStream, bytes: &'static [u8]) -> (String, Duration) {
    let mut writer = stream.try_clone().unwrap();
    let started = Instant::now();
    std::thread::spawn(move || {
        for b in bytes {
            if writer.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let mut line = String::new();
    BufReader::new(stream.try_clone().unwrap())
        .read_line(&mut line)
        .ok();
    (line, started.elapsed())
}

/// A command or a message that trickles in a byte at a time is cut off
/// when its whole time is up, not kept alive by every byte (slowloris).
#[test]
fn a_trickling_client_is_cut_off_at_the_total_deadline() {
    let gw = Gateway::start("[limits]\ncommand_timeout = \"2s\"\ndata_timeout = \"2s\"\n");
    // Within a command: nine bytes in 2.7 s, never a line end.
    let stream = TcpStream::connect(("127.0.0.1", gw.relay)).unwrap();
    stream.set_read_timeout(Some(T)).unwrap();
    let mut greeting = String::new();
    BufReader::new(stream.try_clone().unwrap())
        .read_line(&mut greeting)
        .unwrap();
    let (line, took) = trickle(&stream, b"NOOP NOOP");
    assert!(line.starts_with("421 4.4.2"), "{line}");
    // Each pause is 0.3 s: only the total deadline (2 s) ends it this soon.
    assert!(took < Duration::from_millis(3500), "{took:?}");

    // Within a message's data.
    let stream = TcpStream::connect(("127.0.0.1", gw.relay)).unwrap();
    stream.set_read_timeout(Some(T)).unwrap();
    let mut c = Client::from_stream(stream.try_clone().unwrap());
    c.reply();
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<sender@src.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<slow@dst.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    let (line, took) = trickle(&stream, b"Subject: slow");
    assert!(line.starts_with("421 4.4.2"), "{line}");
    assert!(took < Duration::from_millis(3500), "{took:?}");
    assert!(dest().mails("slow@dst.test").is_empty());
    still_serves(&gw);
}

/// A delivery that outlives the shutdown bound is named in the log and
/// stays in the queue for the next start.
#[test]
fn deliveries_given_up_at_shutdown_are_logged_and_stay_queued() {
    let rec = Recorder::start(Behaviour {
        stall_after_data: true,
        ..ACCEPTING
    });
    let mut gw = gateway(&rec);
    let id = accepted(
        &gw,
        "sender@src.test",
        "stuck@allowed.rec.test",
        &unique("stuck"),
        "waiting\r\n",
    );
    rec.wait_for("waiting\r\n.\r\n");
    gw.signal_term();
    assert!(gw.wait_exit(), "the gateway stops");
    let log = gw.log();
    assert!(
        log.contains("shutdown: delivery still in progress") && log.contains(&id),
        "{log}"
    );
    gw.restart();
    let queued = gw.queue();
    assert!(
        queued.iter().any(|m| m["id"] == id.as_str()),
        "still queued: {queued:?}"
    );
}

/// RFC 6152: 8-bit content sent without BODY=8BITMIME is declared to a
/// next hop that offers 8BITMIME, and never sent to one that does not.
#[test]
fn rfc6152_8bit_content_is_declared_downstream_or_not_sent() {
    let rec = Recorder::start(ACCEPTING);
    let gw = gateway(&rec);
    accepted(
        &gw,
        "sender@src.test",
        "eight@allowed.rec.test",
        &unique("8bit"),
        "Grüße\r\n",
    );
    let wire = rec.wait_for("Gr");
    assert!(
        wire.contains("MAIL FROM:<sender@src.test> BODY=8BITMIME"),
        "{wire}"
    );

    let seven = Recorder::start(Behaviour {
        eight_bit: false,
        ..ACCEPTING
    });
    let gw = gateway(&seven);
    let sender = format!("{}@dst.test", unique("sender8"));
    accepted(
        &gw,
        &sender,
        "eight@allowed.rec.test",
        &unique("8bit"),
        "Grüße\r\n",
    );
    let bounce = String::from_utf8_lossy(&dest().wait_mails(&sender, 1, T)[0]).into_owned();
    assert!(bounce.contains("Status: 5.6.3"), "{bounce}");
    assert!(!seven.wire().contains("Gr\u{fc}"), "nothing 8-bit was sent");
}

/// `queue delete` while the message is being delivered waits for that
/// attempt to be recorded: the log never shows an attempt after the delete.
#[test]
fn a_delete_during_an_attempt_waits_and_the_log_ends_with_it() {
    // The attempt takes 2 s and defers: the message stays queued.
    let rec = Recorder::start(Behaviour {
        data_reply_after: Duration::from_secs(2),
        data_reply: "451 4.3.0 try again later",
        ..ACCEPTING
    });
    let gw = gateway(&rec);
    let id = accepted(
        &gw,
        "sender@src.test",
        "slowpeer@allowed.rec.test",
        &unique("del"),
        "in flight\r\n",
    );
    rec.wait_for("in flight\r\n.\r\n");
    let out = gw.cli(&["queue", "delete", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kinds: Vec<String> = wait_for(T, "the delete in the log", || {
        let out = gw.cli(&["report", "export", "--format", "json"]);
        let kinds: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|r| r["queue_id"] == id.as_str())
            .map(|r| r["kind"].as_str().unwrap_or_default().to_string())
            .collect();
        kinds.iter().any(|k| k == "deleted").then_some(kinds)
    });
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("deleted"),
        "{kinds:?}"
    );
    assert!(kinds.iter().any(|k| k == "attempt"), "{kinds:?}");
}

/// RFC 5321 §4.5.2: the data begins at a line start, so a dot there is
/// stuffed too: a first line that begins with a dot arrives as it was
/// (found by the `data` fuzz target).
#[test]
fn rfc5321_4_5_2_a_dot_at_the_very_start_of_the_data_is_unstuffed() {
    let rec = Recorder::start(ACCEPTING);
    let gw = gateway(&rec);
    let mut c = client(&gw);
    assert!(c.cmd("MAIL FROM:<sender@src.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<dot@allowed.rec.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    let subject = unique("dot");
    // The client stuffs its leading dot: the message's first line is ".first".
    c.send(format!("..first\r\nSubject: {subject}\r\n\r\nbody\r\n").as_bytes());
    let r = c.cmd(".");
    assert!(r.starts_with("250"), "{r}");
    let wire = rec.wait_for(&subject);
    // Stuffed once again on the way out: one extra dot, not two.
    assert!(wire.contains("\r\n..first\r\n"), "{wire:?}");
    assert!(!wire.contains("...first"), "{wire:?}");
}

/// A peer that offers STARTTLS, completes the handshake, then drops the
/// connection when the client says EHLO over TLS; records what it was sent
/// before TLS and on any later (plaintext) connection.
fn tls_then_drop_peer() -> (u16, Arc<Mutex<Vec<u8>>>) {
    let key = rcgen::generate_simple_self_signed(vec!["drop.rec.test".into()]).unwrap();
    let cert = key.cert.der().clone();
    let private =
        rustls::pki_types::PrivateKeyDer::try_from(key.signing_key.serialize_der()).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], private)
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let keep = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (config, keep) = (config.clone(), keep.clone());
            std::thread::spawn(move || {
                let mut out = stream.try_clone().unwrap();
                let mut input = BufReader::new(stream.try_clone().unwrap());
                let _ = out.write_all(b"220 drop.rec.test ESMTP\r\n");
                loop {
                    let mut line = Vec::new();
                    if input.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    keep.lock().unwrap().extend_from_slice(&line);
                    let verb = String::from_utf8_lossy(&line).to_ascii_uppercase();
                    if verb.starts_with("EHLO") {
                        let _ = out.write_all(b"250-drop.rec.test\r\n250 STARTTLS\r\n");
                    } else if verb.starts_with("STARTTLS") {
                        let _ = out.write_all(b"220 2.0.0 go ahead\r\n");
                        let mut conn = rustls::ServerConnection::new(config).unwrap();
                        let mut tcp = stream;
                        while conn.is_handshaking() {
                            if conn.complete_io(&mut tcp).is_err() {
                                return;
                            }
                        }
                        // The handshake is done; the EHLO that follows gets no answer.
                        let mut tls = rustls::StreamOwned::new(conn, tcp);
                        let mut buf = [0u8; 512];
                        let _ = tls.read(&mut buf);
                        return;
                    } else if verb.starts_with("QUIT") {
                        let _ = out.write_all(b"221 bye\r\n");
                        return;
                    } else {
                        let _ = out.write_all(b"250 ok\r\n");
                    }
                }
            });
        }
    });
    (port, seen)
}

/// After a completed TLS handshake, a failure is a failed TLS session: the
/// host is not tried again in plaintext, and no downgrade is logged.
#[test]
fn a_failure_after_the_handshake_is_never_retried_in_plaintext() {
    let (port, seen) = tls_then_drop_peer();
    let gw = Gateway::start_with(move |dir, relay, sub| {
        let policy = policy_dir(dir, &[("drop.toml", &plaintext_exception("drop.rec.test"))]);
        let routed = base_config(dir, relay, sub).replace(
            "[[route]]\ndomain = \"*\"",
            &format!(
                "[[route]]\ndomain = \"drop.rec.test\"\nnext_hop = \"127.0.0.1:{port}\"\n\n[[route]]\ndomain = \"*\""
            ),
        );
        format!("{routed}{policy}")
    });
    accepted(
        &gw,
        "sender@src.test",
        "someone@drop.rec.test",
        &unique("drop"),
        "never in clear\r\n",
    );
    wait_for(T, "the attempt to fail after the handshake", || {
        gw.log()
            .contains("TLS session failed after the handshake")
            .then_some(())
    });
    let wire = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    assert!(!wire.contains("MAIL FROM"), "retried in plaintext: {wire}");
    assert!(!gw.log().contains("continuing without TLS"), "{}", gw.log());
    still_serves(&gw);
}

/// RFC 3030: a BDAT client (Exchange and Microsoft 365 are) is offered
/// CHUNKING; its chunks are content as they are, whatever lines they hold
/// and wherever they are cut, and the message arrives byte for byte. A
/// chunk that cannot be taken is still read, so the session goes on.
#[test]
fn rfc3030_bdat_chunks_are_content_as_they_are() {
    let gw = Gateway::start("[limits]\nmax_message_size = 4000\n");
    let mut c = Client::connect(gw.relay);
    let ehlo = c.cmd("EHLO exchange.test");
    assert!(ehlo.contains("250-CHUNKING"), "{ehlo}");
    assert!(!ehlo.contains("BINARYMIME"), "{ehlo}");
    // No transaction: the 12 octets are the chunk, not two NOOPs.
    c.send(b"BDAT 12\r\nNOOP\r\nNOOP\r\n");
    assert!(c.reply().starts_with("503"));
    assert!(c.cmd("NOOP").starts_with("250"));

    let rcpt = format!("{}@dst.test", unique("bdat"));
    let subject = unique("chunks");
    // Lines that would end or stuff DATA are plain content in BDAT.
    let content = message(&subject, "one\r\n.\r\n..two\r\n\r\n.\r\nQUIT\r\nlast\r\n");
    let bytes = content.as_bytes();
    let (a, rest) = bytes.split_at(bytes.len() / 3);
    let (b, last) = rest.split_at(rest.len() / 2 + 1);
    let mut pipelined = format!("MAIL FROM:<sender@src.test>\r\nRCPT TO:<{rcpt}>\r\n").into_bytes();
    for (chunk, is_last) in [(a, false), (b, false), (last, true)] {
        let end = if is_last { " LAST" } else { "" };
        pipelined.extend_from_slice(format!("BDAT {}{end}\r\n", chunk.len()).as_bytes());
        pipelined.extend_from_slice(chunk);
    }
    c.send(&pipelined);
    let replies: Vec<String> = (0..5).map(|_| c.reply()).collect();
    assert!(
        replies[..4].iter().all(|r| r.starts_with("250")),
        "{replies:?}"
    );
    assert!(replies[4].contains("queued as"), "{replies:?}");
    let got = dest().wait_mails(&rcpt, 1, T).remove(0);
    assert_eq!(
        String::from_utf8_lossy(&strip_trace(&got)),
        content.replace('\r', "")
    );

    // DATA cannot follow BDAT in one transaction.
    assert!(c.cmd("MAIL FROM:<sender@src.test>").starts_with("250"));
    assert!(c.cmd(&format!("RCPT TO:<{rcpt}>")).starts_with("250"));
    c.send(b"BDAT 3\r\nab\n");
    assert!(c.reply().starts_with("250"));
    assert!(c.cmd("DATA").starts_with("503"));
    // Over the size limit: the whole chunk is read and refused, and what
    // the client pipelined after it finds no transaction.
    assert!(c.cmd("MAIL FROM:<sender@src.test>").starts_with("250"));
    assert!(c.cmd(&format!("RCPT TO:<{rcpt}>")).starts_with("250"));
    let big = vec![b'x'; 5000];
    c.send(format!("BDAT {}\r\n", big.len()).as_bytes());
    c.send(&big);
    c.send(b"BDAT 4 LAST\r\nNOOP");
    let too_big = c.reply();
    assert!(too_big.starts_with("552"), "{too_big}");
    assert!(c.reply().starts_with("503"));
    assert!(c.cmd("NOOP").starts_with("250"));
    assert_eq!(
        dest().mails(&rcpt).len(),
        1,
        "nothing but the first message"
    );
    still_serves(&gw);
}

/// RFC 3030: a next hop that offers CHUNKING gets the message with one
/// BDAT, nothing stuffed, every line end CRLF.
#[test]
fn rfc3030_bdat_goes_out_when_the_next_hop_offers_it() {
    let rec = Recorder::start(Behaviour {
        chunking: true,
        ..ACCEPTING
    });
    let gw = gateway(&rec);
    let subject = unique("bdat-out");
    let content = message(&subject, "one\r\n.\r\n..two\r\nlast\r\n");
    let mut c = client(&gw);
    // Dot-stuffed for DATA on the way in (RFC 5321 §4.5.2).
    let stuffed = content.replace("\r\n.", "\r\n..");
    let reply = c.message(
        "sender@src.test",
        &["chunked@allowed.rec.test"],
        stuffed.as_bytes(),
    );
    assert!(reply.starts_with("250"), "{reply}");
    let wire = rec.wait_for("last\r\n");
    let at = wire.find("BDAT ").expect("BDAT on the wire");
    let (command, sent) = wire[at..].split_once("\r\n").unwrap();
    assert!(!wire.contains("\r\nDATA\r\n"), "{wire}");
    // What went is our Received: header and then the content, unchanged.
    assert_eq!(command, format!("BDAT {} LAST", sent.len()));
    assert!(sent.ends_with(&content), "{sent:?}");
    assert!(sent.starts_with("Received: "), "{sent:?}");
}

/// RFC 5321 §4.1.3 and §4.5.1: an address literal from a client that may
/// relay is taken and delivered straight to that address (judged like any
/// host, at best `encrypted`); refused with a reason where the
/// configuration says so. `<Postmaster>` is taken from anyone and goes to
/// the configured postmaster; `<>` is still no recipient.
#[test]
fn rfc5321_address_literals_and_postmaster_are_accepted() {
    let rec = Recorder::start(ACCEPTING);
    let port = rec.port;
    let postmaster = format!("{}@dst.test", unique("pm"));
    let pm = postmaster.clone();
    let gw = Gateway::start_with(move |dir, relay, sub| {
        // The literal goes to the recorder: on its port, with no route.
        let policy = policy_dir(
            dir,
            &[("literal.toml", &plaintext_exception("[127.0.0.1]"))],
        );
        let config = base_config(dir, relay, sub)
            .replace(
                "[[route]]\ndomain = \"*\"",
                "[[route]]\ndomain = \"*.test\"",
            )
            .replace(&format!("port = {DEST_PORT}"), &format!("port = {port}"));
        // Only 127.0.0.1 may relay: 127.0.0.2 is a stranger.
        format!(
            "postmaster = \"{pm}\"\n{config}{policy}\n[[tenant]]\nid = \"default\"\nnetworks = [\"127.0.0.1/32\"]\n"
        )
    });
    let mut c = client(&gw);
    let subject = unique("literal");
    let reply = c.message(
        "sender@[192.0.2.7]",
        &["user@[127.0.0.1]"],
        message(&subject, "to an address\r\n").as_bytes(),
    );
    assert!(reply.starts_with("250"), "{reply}");
    let wire = rec.wait_for(&subject);
    assert!(wire.contains("MAIL FROM:<sender@[192.0.2.7]>"), "{wire}");
    assert!(wire.contains("RCPT TO:<user@[127.0.0.1]>"), "{wire}");
    let bad = c.cmd("MAIL FROM:<s@src.test>");
    assert!(bad.starts_with("250"), "{bad}");
    let bad = c.cmd("RCPT TO:<user@[127.0.0.300]>");
    assert!(bad.starts_with("501") && bad.contains("literal"), "{bad}");
    let bad = c.cmd("RCPT TO:<user@[IPv6:::1:x]>");
    assert!(bad.starts_with("501"), "{bad}");
    assert!(c.cmd("RSET").starts_with("250"));

    // From a client that may not relay, only <Postmaster> is taken.
    let mut stranger = Client::connect_from("127.0.0.2", gw.relay);
    assert!(stranger.cmd("EHLO stranger.test").starts_with("250"));
    assert!(
        stranger
            .cmd("MAIL FROM:<reporter@src.test>")
            .starts_with("250")
    );
    let denied = stranger.cmd("RCPT TO:<someone@dst.test>");
    assert!(denied.starts_with("554 5.7.1"), "{denied}");
    let subject = unique("to-postmaster");
    let taken = stranger.cmd("RCPT TO:<Postmaster>");
    assert!(taken.starts_with("250"), "{taken}");
    assert!(stranger.cmd("DATA").starts_with("354"));
    stranger.send(message(&subject, "your gateway\r\n").as_bytes());
    let reply = stranger.cmd(".");
    assert!(reply.starts_with("250"), "{reply}");
    let got = dest().wait_mails(&postmaster, 1, T);
    assert!(String::from_utf8_lossy(&got[0]).contains(&subject));
    assert!(c.cmd("MAIL FROM:<s@src.test>").starts_with("250"));
    let empty = c.cmd("RCPT TO:<>");
    assert!(empty.starts_with("501"), "{empty}");
    assert!(c.cmd("RSET").starts_with("250"));

    // Refused by configuration: a reason, not a syntax error.
    let gw = Gateway::start_with(|dir, relay, sub| {
        base_config(dir, relay, sub)
            .replace("[outbound]\n", "[outbound]\naddress_literals = false\n")
    });
    let mut c = client(&gw);
    assert!(c.cmd("MAIL FROM:<s@src.test>").starts_with("250"));
    let refused = c.cmd("RCPT TO:<user@[127.0.0.1]>");
    assert!(
        refused.starts_with("550 5.7.1") && refused.contains("literal"),
        "{refused}"
    );
    let no_pm = c.cmd("RCPT TO:<postmaster>");
    assert!(no_pm.starts_with("550 5.1.1"), "{no_pm}");
    still_serves(&gw);
}

/// A client whose TLS 1.3 Finished and first command after STARTTLS
/// arrive in one segment (one write, as some MTAs send them) gets its
/// EHLO answered: what was read beyond the handshake is not lost.
#[test]
fn tls_finished_and_ehlo_in_one_segment_are_both_read() {
    use rustls::pki_types::ServerName;
    use sealgate::config::RootStore;
    use sealgate::qualify::pkix::Roots;
    use sealgate::qualify::verifier::DeliveryVerifier;
    use std::sync::Arc as StdArc;

    let gw = Gateway::start("");
    let mut tcp = TcpStream::connect(("127.0.0.1", gw.relay)).unwrap();
    tcp.set_read_timeout(Some(T)).unwrap();
    // Plaintext up to STARTTLS; nothing is buffered past the 220, since
    // the server says nothing more until the client's hello.
    let mut plain = Client::from_stream(tcp.try_clone().unwrap());
    plain.reply();
    plain.cmd("EHLO oneseg.test");
    assert!(plain.cmd("STARTTLS").starts_with("220"));

    // Accepts the gateway's self-signed certificate (recorded, not judged).
    let roots = Roots::load(&RootStore::Mozilla).unwrap();
    let (verifier, _) = DeliveryVerifier::new(roots, vec!["gw.test".into()], Vec::new());
    let config = rustls::ClientConfig::builder_with_provider(sealgate::qualify::bsi::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let name = ServerName::try_from("gw.test").unwrap();
    let mut tls = rustls::ClientConnection::new(StdArc::new(config), name).unwrap();
    while tls.is_handshaking() {
        while tls.wants_write() {
            tls.write_tls(&mut tcp).unwrap();
        }
        if tls.is_handshaking() {
            tls.read_tls(&mut tcp).unwrap();
            tls.process_new_packets().unwrap();
        }
    }
    // The handshake is done here, but our Finished is still queued: the
    // EHLO joins it, and both leave in one write.
    tls.writer().write_all(b"EHLO oneseg.test\r\n").unwrap();
    let mut segment = Vec::new();
    while tls.wants_write() {
        tls.write_tls(&mut segment).unwrap();
    }
    tcp.write_all(&segment).unwrap();
    let mut answer = Vec::new();
    let deadline = Instant::now() + T;
    while !answer.ends_with(b"\r\n") || !String::from_utf8_lossy(&answer).contains("250 ") {
        assert!(Instant::now() < deadline, "no EHLO reply over TLS");
        tls.read_tls(&mut tcp).unwrap();
        tls.process_new_packets().unwrap();
        let _ = tls.reader().read_to_end(&mut answer);
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("250-"), "{answer}");
    assert!(!answer.contains("STARTTLS"), "{answer}");
}
