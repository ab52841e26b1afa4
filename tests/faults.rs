//! Fault injection on the delivery side: a peer that drops the connection
//! in the middle of DATA, one that takes the whole message and closes
//! before its reply, one that answers after the data timeout. In every case
//! the message stays queued, is not reported delivered, and is delivered by
//! a later attempt. The misbehaving peer is a scripted SMTP server on
//! loopback: no real MTA can be told to fail at an exact byte.
//! And on the storage side: a spool disk that fills up.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// What the first attempt said: deferred (not reported delivered), with a
/// reason. Read from its delivery log line, which stays: the retry may
/// follow within milliseconds, too soon for a poll of the queue to catch
/// the recipient pending in between.
fn first_attempt(gw: &Gateway, id: &str) -> String {
    let line = wait_for(T, "the first attempt", || {
        delivery_lines(&gw.log())
            .into_iter()
            .find(|f| f["id"] == id)
    });
    assert_eq!(
        line["status"], "deferred",
        "not reported delivered: {line:?}"
    );
    line["reply"].clone()
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

/// A small tmpfs, unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs (the test runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

/// Disk full under the spool: clients get `452 4.3.1`, what was
/// acknowledged stays queued in an intact database, and mail is accepted
/// again once space returns.
#[test]
fn a_full_spool_disk_answers_452_and_recovers_when_space_returns() {
    let disk = Tmpfs::mount("6m");
    let data = disk.0.path().to_path_buf();
    // Space to give back later.
    std::fs::write(data.join("filler"), vec![0u8; 1536 * 1024]).unwrap();
    // The disk under test is the SQLite spool's, whatever backend the run uses.
    let mut gw = Gateway::start_with(|dir, relay, sub| {
        base_config(dir, relay, sub).replacen(
            &format!("data_dir = \"{}\"", dir.display()),
            &format!("# storage: sqlite\ndata_dir = \"{}\"", data.display()),
            1,
        )
    });
    // Nothing leaves: unreachable.test goes to a closed port.
    let body = format!(
        "{}{}",
        message(&unique("full"), "big\r\n"),
        format!("{}\r\n", "y".repeat(998)).repeat(256)
    );
    let mut c = Client::connect(gw.relay);
    c.cmd("EHLO client.test");
    let mut acked = Vec::new();
    let mut refusal = None;
    for _ in 0..60 {
        let reply = c.message("sender@src.test", &["r@unreachable.test"], body.as_bytes());
        if reply.starts_with("250") {
            acked.push(reply.trim().rsplit(' ').next().unwrap().to_string());
        } else {
            refusal = Some(reply);
            break;
        }
    }
    let refusal = refusal.expect("the 6 MiB disk filled up within 60 messages of 256 KiB");
    assert!(refusal.starts_with("452 4.3.1"), "{refusal}");
    assert!(
        !acked.is_empty(),
        "some messages fit before the disk was full"
    );
    // The session goes on: the next transaction is refused the same way.
    let again = c.message("sender@src.test", &["r@unreachable.test"], body.as_bytes());
    assert!(again.starts_with("452 4.3.1"), "{again}");

    let queued = |gw: &Gateway| -> Vec<String> {
        gw.queue()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    let mut in_queue = queued(&gw);
    in_queue.sort();
    let mut expected = acked.clone();
    expected.sort();
    assert_eq!(
        in_queue, expected,
        "exactly the acknowledged messages are queued"
    );

    std::fs::remove_file(data.join("filler")).unwrap();
    let reply = c.message("sender@src.test", &["r@unreachable.test"], body.as_bytes());
    assert!(reply.starts_with("250"), "space returned: {reply}");
    assert_eq!(queued(&gw).len(), acked.len() + 1);
    assert!(gw.log().contains("spool full"), "the operator is told");

    // After a restart the queue is whole and the database intact.
    gw.signal_term();
    assert!(gw.wait_exit());
    let check = std::process::Command::new("sqlite3")
        .arg(data.join("sealgate.db"))
        .arg("PRAGMA integrity_check")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&check.stdout).trim(), "ok");
    gw.restart();
    assert_eq!(queued(&gw).len(), acked.len() + 1);
}
