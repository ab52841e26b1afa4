//! Fault injection on the delivery side: a peer that drops the connection
//! in the middle of DATA, one that takes the whole message and closes
//! before its reply, one that answers after the data timeout. In every case
//! the message stays queued, is not reported delivered, and is delivered by
//! a later attempt. The misbehaving peer is a scripted SMTP server on
//! loopback: no real MTA can be told to fail at an exact byte.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use support::*;

const T: Duration = Duration::from_secs(30);

/// What the peer does on one connection.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Reads part of the message, then closes.
    DropMidData,
    /// Reads the whole message, then closes without a reply.
    CloseBeforeReply,
    /// Reads the whole message and answers after this long.
    SlowReply(Duration),
    /// Behaves.
    Accept,
}

/// A scripted SMTP peer: connection `i` follows `script[i]` (the last entry
/// repeats). Every message it read to the final dot is recorded, with
/// whether it then said 250.
struct Peer {
    port: u16,
    received: Arc<Mutex<Vec<(String, bool)>>>,
}

impl Peer {
    fn start(script: Vec<Fault>) -> Peer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        std::thread::spawn(move || {
            for (i, conn) in listener.incoming().enumerate() {
                let Ok(conn) = conn else { continue };
                let fault = script[i.min(script.len() - 1)];
                let log = log.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, fault, &log);
                });
            }
        });
        Peer { port, received }
    }

    fn received(&self) -> Vec<(String, bool)> {
        self.received.lock().unwrap().clone()
    }
}

fn serve(conn: TcpStream, fault: Fault, log: &Mutex<Vec<(String, bool)>>) -> std::io::Result<()> {
    let mut out = conn.try_clone()?;
    let mut input = BufReader::new(conn);
    out.write_all(b"220 fault.test ESMTP\r\n")?;
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" | "HELO" => out.write_all(b"250 fault.test\r\n")?,
            "MAIL" | "RCPT" | "RSET" | "NOOP" => out.write_all(b"250 ok\r\n")?,
            "QUIT" => {
                out.write_all(b"221 bye\r\n")?;
                return Ok(());
            }
            "DATA" => {
                out.write_all(b"354 go ahead\r\n")?;
                if let Fault::DropMidData = fault {
                    let mut some = [0u8; 64];
                    input.read_exact(&mut some)?;
                    return Ok(());
                }
                let mut message = String::new();
                loop {
                    line.clear();
                    if input.read_line(&mut line)? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" {
                        break;
                    }
                    message.push_str(&line);
                }
                match fault {
                    Fault::CloseBeforeReply => {
                        log.lock().unwrap().push((message, false));
                        return Ok(());
                    }
                    Fault::SlowReply(wait) => {
                        log.lock().unwrap().push((message, false));
                        std::thread::sleep(wait);
                        out.write_all(b"250 ok, late\r\n")?;
                    }
                    _ => {
                        log.lock().unwrap().push((message, true));
                        out.write_all(b"250 ok, queued\r\n")?;
                    }
                }
            }
            _ => out.write_all(b"502 unknown\r\n")?,
        }
    }
}

/// A gateway that routes `fault.test` to the peer, retries after a second
/// and gives the peer two seconds for its final reply.
fn gateway(peer: &Peer) -> Gateway {
    let port = peer.port;
    Gateway::start_with(move |dir, relay, sub| {
        let policy = policy_dir(dir, &[("fault.toml", &plaintext_exception("fault.test"))]);
        let config = base_config(dir, relay, sub) + &policy;
        config
            .replace(
                "idle_timeout = \"2s\"",
                "idle_timeout = \"0s\"\ndata_timeout = \"2s\"",
            )
            .replacen(
                "[[route]]",
                &format!(
                    "[[route]]\ndomain = \"fault.test\"\nnext_hop = \"127.0.0.1:{port}\"\n\n[[route]]"
                ),
                1,
            )
    })
}

fn send(gw: &Gateway, subject: &str) -> String {
    let mut c = Client::connect(gw.relay);
    c.cmd("EHLO client.test");
    let body = format!(
        "{}{}",
        message(subject, "first line\r\n"),
        // Enough that 64 bytes into DATA is the middle of the message.
        format!("{}\r\n", "x".repeat(70)).repeat(200)
    );
    let reply = c.message("sender@src.test", &["rcpt@fault.test"], body.as_bytes());
    assert!(reply.starts_with("250"), "{reply}");
    reply.trim().rsplit(' ').next().unwrap().to_string()
}

/// The recipient's state after the first attempt: pending, with a reason.
fn first_attempt(gw: &Gateway, id: &str) -> String {
    let shown = wait_for(T, "the first attempt", || {
        let out = gw.cli(&["queue", "show", id, "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let r = &v["recipients"][0];
        (r["attempts"].as_u64()? >= 1).then_some(v)
    });
    let r = &shown["recipients"][0];
    assert_eq!(r["status"], "pending", "not reported delivered: {shown}");
    r["last_reply"].as_str().unwrap_or_default().to_string()
}

#[test]
fn peer_drops_mid_data_the_message_is_retried_not_lost() {
    let peer = Peer::start(vec![Fault::DropMidData, Fault::Accept]);
    let gw = gateway(&peer);
    let subject = unique("drop");
    let id = send(&gw, &subject);
    let why = first_attempt(&gw, &id);
    assert!(!why.is_empty(), "the reason is recorded");
    gw.wait_queue_empty(T);
    let got = peer.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].0.contains(&subject) && got[0].1);
}

#[test]
fn peer_closes_after_data_before_its_reply_the_message_is_retried() {
    let peer = Peer::start(vec![Fault::CloseBeforeReply, Fault::Accept]);
    let gw = gateway(&peer);
    let subject = unique("noreply");
    let id = send(&gw, &subject);
    let why = first_attempt(&gw, &id);
    assert!(!why.is_empty());
    gw.wait_queue_empty(T);
    // RFC 5321 §6.1: without the reply the sender cannot know the peer took
    // it; sending again may duplicate (counted here), never lose.
    let got = peer.received();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().all(|(m, _)| m.contains(&subject)));
    assert_eq!(got.iter().filter(|(_, acked)| *acked).count(), 1);
}

#[test]
fn peer_answers_after_the_data_timeout_the_message_is_retried() {
    let peer = Peer::start(vec![
        Fault::SlowReply(Duration::from_secs(4)),
        Fault::Accept,
    ]);
    let gw = gateway(&peer);
    let subject = unique("slow");
    let id = send(&gw, &subject);
    let why = first_attempt(&gw, &id);
    assert!(
        why.contains("timed out") || why.contains("timeout"),
        "{why}"
    );
    gw.wait_queue_empty(T);
    let got = peer.received();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got.iter().filter(|(_, acked)| *acked).count(), 1);
}
