//! Real peers for the integration tests: one private Postfix destination
//! shared by every test (started once, by `tests/peers/postfix.sh`), a
//! sealgate process per test with its own data directory, swaks, and a
//! raw SMTP client for input no well-behaved client would send.
//!
//! Each test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const DEST_PORT: u16 = 24025;
pub const PASSWORD: &str = "correct horse battery staple";

pub fn peers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("peers")
}

/// tests/peers/postfix.sh, which starts and stops private Postfix instances.
pub fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/postfix.sh")
}

/// Polls `f` every 20 ms until it returns `Some`, or panics with `what` after `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The shared Postfix destination on 127.0.0.1:24025.
pub struct Dest {
    pub dir: PathBuf,
    rules: Mutex<()>,
}

pub fn dest() -> &'static Dest {
    static DEST: OnceLock<Dest> = OnceLock::new();
    DEST.get_or_init(|| {
        let dir = peers_dir().join("postfix-dest");
        std::fs::create_dir_all(&dir).expect("peers dir");
        // Several test binaries may start at once; one of them starts Postfix.
        let lock = std::fs::File::create(peers_dir().join("postfix-dest.lock")).expect("lock file");
        lock.lock().expect("lock");
        std::fs::write(
            dir.join("access"),
            "/^reject-/ 550 5.1.1 No such user here\n",
        )
        .ok();
        let out = Command::new("bash")
            .arg(script())
            .args(["dest", dir.to_str().unwrap(), &DEST_PORT.to_string()])
            .output()
            .expect(
                "run tests/peers/postfix.sh (is postfix installed? run the README test command)",
            );
        assert!(
            out.status.success(),
            "starting Postfix failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Dest {
            dir,
            rules: Mutex::new(()),
        }
    })
}

/// Messages a Postfix peer started by tests/peers/postfix.sh in `dir` saved
/// for `rcpt`, in arrival order.
pub fn saved_mails(dir: &Path, rcpt: &str) -> Vec<Vec<u8>> {
    let dir = dir.join("mail").join(rcpt);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "eml"));
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

impl Dest {
    /// Messages delivered to `rcpt`, in arrival order.
    pub fn mails(&self, rcpt: &str) -> Vec<Vec<u8>> {
        saved_mails(&self.dir, rcpt)
    }

    /// Waits until `rcpt` has at least `n` messages.
    pub fn wait_mails(&self, rcpt: &str, n: usize, limit: Duration) -> Vec<Vec<u8>> {
        wait_for(
            limit,
            &format!("{n} message(s) for {rcpt} at Postfix"),
            || {
                let m = self.mails(rcpt);
                (m.len() >= n).then_some(m)
            },
        )
    }

    /// Waits until Postfix answers `RCPT TO:<rcpt>` with `code`. A reload
    /// reaches an idle smtpd process only after it served one more
    /// connection with the old table, so a rule is not in force at once.
    pub fn wait_rcpt_reply(&self, rcpt: &str, code: &str) {
        wait_for(
            Duration::from_secs(20),
            &format!("Postfix to answer RCPT {rcpt} with {code}"),
            || {
                let mut c = Client::connect(DEST_PORT);
                c.cmd("EHLO probe.test");
                c.cmd("MAIL FROM:<probe@src.test>");
                let reply = c.cmd(&format!("RCPT TO:<{rcpt}>"));
                c.cmd("QUIT");
                reply.starts_with(code).then_some(())
            },
        );
    }

    /// Adds a line to the recipient access map (regexp) and reloads Postfix.
    pub fn add_rule(&self, line: &str) {
        let _guard = self.rules.lock().unwrap();
        let path = self.dir.join("access");
        let mut text = std::fs::read_to_string(&path).unwrap_or_default();
        text.push_str(line);
        text.push('\n');
        std::fs::write(&path, text).unwrap();
        self.reload();
    }

    pub fn remove_rule(&self, line: &str) {
        let _guard = self.rules.lock().unwrap();
        let path = self.dir.join("access");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let kept: String = text
            .lines()
            .filter(|l| *l != line)
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, kept).unwrap();
        self.reload();
    }

    fn reload(&self) {
        let ok = Command::new("postfix")
            .args(["-c", self.dir.to_str().unwrap(), "reload"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "postfix reload failed");
    }
}

/// A loopback port nobody listens on right now, and never handed out
/// before in this test process: the kernel may give a just-closed port
/// again at once, and two tests (or a gateway's relay and submission
/// ports) must not end up with the same one.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if given.insert(port) {
            return port;
        }
    }
}

/// One sealgate process with its own data directory.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub relay: u16,
    pub submission: u16,
    pub config: PathBuf,
    child: Option<Child>,
    /// Environment of the sealgate process, beyond the log filter.
    env: Vec<(String, String)>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sealgate")
}

/// The test configuration: relay and submission listeners, everything routed to Postfix.
pub fn base_config(dir: &Path, relay: u16, submission: u16) -> String {
    format!(
        r#"hostname = "gw.test"
data_dir = "{dir}"

[[listener]]
address = "127.0.0.1:{relay}"
mode = "relay"

[[listener]]
address = "127.0.0.1:{submission}"
mode = "submission"

[auth]
users_file = "{dir}/users"

[queue]
retry_schedule = ["1s"]

[outbound]
port = {DEST_PORT}
idle_timeout = "2s"

[[route]]
domain = "unreachable.test"
next_hop = "127.0.0.1:1"

[[route]]
domain = "*"
next_hop = "127.0.0.1:{DEST_PORT}"
"#,
        dir = dir.display()
    )
}

/// Writes a policy directory under `dir`: the shipped default policy plus
/// `files`; returns the `[policy]` table that points the gateway at it.
pub fn policy_dir(dir: &Path, files: &[(&str, &str)]) -> String {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("default.toml"),
        include_str!("../../policies/default.toml"),
    )
    .unwrap();
    for (name, text) in files {
        std::fs::write(policies.join(name), text).unwrap();
    }
    format!("\n[policy]\ndir = \"{}\"\n", policies.display())
}

/// A policy exception that lets normal mail to `domain` go in plaintext: for
/// test peers without TLS.
pub fn plaintext_exception(domain: &str) -> String {
    format!(
        "[[exception]]\ndomain = \"{domain}\"\nlevel = \"plaintext\"\nreason = \"test peer without TLS\"\napproved_by = \"tests\"\nexpires = 2099-12-31\n"
    )
}

impl Gateway {
    /// Starts sealgate with the base configuration plus `extra` TOML
    /// (tables may be added; `tenants` replaces the default tenant list).
    pub fn start(extra: &str) -> Gateway {
        Self::start_with(|dir, relay, sub| format!("{}\n{extra}", base_config(dir, relay, sub)))
    }

    pub fn start_with(make: impl FnOnce(&Path, u16, u16) -> String) -> Gateway {
        Self::start_with_env(&[], make)
    }

    /// As [`Gateway::start_with`], with these environment variables set.
    pub fn start_with_env(
        env: &[(&str, &str)],
        make: impl FnOnce(&Path, u16, u16) -> String,
    ) -> Gateway {
        dest();
        let dir = tempfile::tempdir().unwrap();
        let (relay, submission) = (free_port(), free_port());
        let mut text = make(dir.path(), relay, submission);
        // The suite again on the cluster backend: every gateway on a
        // PostgreSQL database of its own, except those whose test is about
        // the SQLite file (marked `# storage: sqlite`).
        if std::env::var("SEALGATE_TEST_STORAGE").as_deref() == Ok("postgres")
            && !text.contains("[storage]")
            && !text.contains("# storage: sqlite")
        {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let url = pg_database(pg_server(), &format!("gw{n}"));
            text.push_str(&format!("\n[storage]\nurl = \"{url}\"\n"));
        }
        if !text.contains("[[tenant]]") {
            text.push_str("\n[[tenant]]\nid = \"default\"\nnetworks = [\"127.0.0.0/8\"]\nusers = [\"alice\"]\n");
        }
        let config = dir.path().join("sealgate.toml");
        std::fs::write(&config, text).unwrap();
        std::fs::write(
            dir.path().join("users"),
            format!("alice:{}\n", users_hash()),
        )
        .unwrap();
        let mut gw = Gateway {
            dir,
            relay,
            submission,
            config,
            child: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        gw.spawn();
        gw
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("log"))
            .unwrap();
        let child = Command::new(bin())
            .args(["--config", self.config.to_str().unwrap(), "serve"])
            .env("SEALGATE_LOG", "info,sealgate=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start sealgate");
        self.child = Some(child);
        let port = self.relay;
        wait_for(Duration::from_secs(20), "sealgate to listen", || {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("sealgate exited with {status}:\n{}", self.log());
            }
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
    }

    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal_term(&self) {
        self.signal(libc::SIGTERM);
    }

    /// SIGHUP: reload the policy.
    pub fn signal_hup(&self) {
        self.signal(libc::SIGHUP);
    }

    fn signal(&self, signal: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child's pid has no memory effects.
            unsafe {
                libc::kill(c.id() as i32, signal);
            }
        }
    }

    /// Waits for the process to exit; returns whether it exited with status 0.
    pub fn wait_exit(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            if start.elapsed() > Duration::from_secs(40) {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Runs a sealgate subcommand against this gateway's configuration.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(["--config", self.config.to_str().unwrap()])
            .args(args)
            .output()
            .expect("run sealgate")
    }

    /// `sealgate queue list --json`.
    pub fn queue(&self) -> Vec<serde_json::Value> {
        let out = self.cli(&["queue", "list", "--json"]);
        assert!(
            out.status.success(),
            "queue list: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn wait_queue_empty(&self, limit: Duration) {
        wait_for(limit, "the queue to drain", || {
            self.queue().is_empty().then_some(())
        });
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- sealgate log ({}) ----\n{}",
                self.dir.path().display(),
                self.log()
            );
        }
        self.kill9();
    }
}

/// Runs a command with `input` on its standard input; collects the rest.
pub fn with_stdin(cmd: &mut Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// swaks to `server` as alice (STARTTLS, then AUTH `mechanism`), with extra arguments.
pub fn swaks_auth(server: &str, to: &str, mechanism: &str, extra: &[&str]) -> (bool, String) {
    let mut args = vec![
        "--server",
        server,
        "--from",
        "alice@src.test",
        "--to",
        to,
        "--tls",
        "--auth",
        mechanism,
        "--auth-user",
        "alice",
        "--auth-password",
        PASSWORD,
    ];
    args.extend_from_slice(extra);
    swaks(&args)
}

/// A users-file hash of PASSWORD, made once by `sealgate user hash`.
pub fn users_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        let out = with_stdin(
            Command::new(bin()).args(["user", "hash", "alice"]),
            &format!("{PASSWORD}\n"),
        );
        assert!(out.status.success());
        let line = String::from_utf8(out.stdout).unwrap();
        line.trim()
            .strip_prefix("alice:")
            .expect("user:hash")
            .to_string()
    })
}

/// Runs swaks; returns success and the whole transcript.
pub fn swaks(args: &[&str]) -> (bool, String) {
    let out = Command::new("swaks")
        .args(["--timeout", "30"])
        .args(args)
        .output()
        .expect("swaks is installed (run the README test command)");
    (out.status.success(), output_text(&out))
}

/// What a command printed, standard output then standard error.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Hands one message to the relay listener on `port` in a session of its
/// own; asserts the `250` and returns the queue id it names.
pub fn relay_one(port: u16, from: &str, to: &[&str], data: &[u8]) -> String {
    let mut c = Client::connect(port);
    c.cmd("EHLO client.test");
    let reply = c.message(from, to, data);
    assert!(reply.starts_with("250"), "{reply}");
    reply
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A raw SMTP client: sends exactly the bytes it is given.
pub struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        Self::connect_from("127.0.0.1", port)
    }

    /// A client on a connection made elsewhere; the greeting is not read.
    pub fn from_stream(stream: TcpStream) -> Client {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Client {
            reader: BufReader::new(stream),
        }
    }

    /// Connects from a chosen loopback source address.
    pub fn connect_from(source: &str, port: u16) -> Client {
        match Self::try_connect_from(source, port) {
            Ok(c) => c,
            Err(greeting) => panic!("greeting: {greeting}"),
        }
    }

    /// Connects; `Err` with the greeting when it is not 220.
    pub fn try_connect_from(source: &str, port: u16) -> Result<Client, String> {
        let socket = socket2_connect(source, port);
        socket
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut c = Client {
            reader: BufReader::new(socket),
        };
        let greeting = c.reply();
        if greeting.starts_with("220") {
            Ok(c)
        } else {
            Err(greeting)
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).unwrap();
    }

    /// Reads one (possibly multi-line) reply.
    pub fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).unwrap_or(0);
            if n == 0 {
                return all;
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all;
            }
        }
    }

    /// Sends one command line and reads its reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// True once the server has closed the connection.
    pub fn closed(&mut self) -> bool {
        let mut buf = [0u8; 1];
        matches!(self.reader.read(&mut buf), Ok(0))
    }

    /// Sends a whole message: MAIL, RCPTs, DATA, content; returns the final reply.
    pub fn message(&mut self, from: &str, to: &[&str], data: &[u8]) -> String {
        let r = self.cmd(&format!("MAIL FROM:<{from}>"));
        assert!(r.starts_with("250"), "MAIL: {r}");
        for t in to {
            let r = self.cmd(&format!("RCPT TO:<{t}>"));
            assert!(r.starts_with("250"), "RCPT: {r}");
        }
        let r = self.cmd("DATA");
        assert!(r.starts_with("354"), "DATA: {r}");
        self.send(data);
        self.send(b".\r\n");
        self.reply()
    }
}

fn socket2_connect(source: &str, port: u16) -> TcpStream {
    // std has no bind-before-connect; a loopback source is all we need.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    assert!(fd >= 0);
    let addr = |ip: &str, port: u16| {
        let ip: std::net::Ipv4Addr = ip.parse().unwrap();
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        }
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let local = addr(source, 0);
    let remote = addr("127.0.0.1", port);
    unsafe {
        assert_eq!(
            libc::bind(fd, &local as *const _ as *const libc::sockaddr, len),
            0,
            "bind {source}"
        );
        assert_eq!(
            libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len),
            0,
            "connect {port}"
        );
        use std::os::fd::FromRawFd;
        TcpStream::from_raw_fd(fd)
    }
}

/// Removes the leading `Received:` headers (with their continuation lines)
/// and turns CRLF into LF, so a delivered copy compares with what was sent.
pub fn strip_trace(message: &[u8]) -> Vec<u8> {
    let text: Vec<u8> = message.iter().copied().filter(|b| *b != b'\r').collect();
    let mut rest = &text[..];
    loop {
        if rest.starts_with(b"Received:") {
            let mut end = rest
                .iter()
                .position(|b| *b == b'\n')
                .map_or(rest.len(), |i| i + 1);
            while end < rest.len() && (rest[end] == b' ' || rest[end] == b'\t') {
                end += rest[end..]
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(rest.len() - end, |i| i + 1);
            }
            rest = &rest[end..];
        } else {
            return rest.to_vec();
        }
    }
}

/// A complete message (Postfix would add missing Date/From headers).
pub fn message(subject: &str, body: &str) -> String {
    format!(
        "From: Sender <sender@src.test>\r\nTo: rcpt@dst.test\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@src.test>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\r\n{body}"
    )
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), rand::random::<u32>())
}

/// Makes a self-signed P-256 certificate for `cn` with openssl.
pub fn self_signed(cn: &str, cert: &Path, key: &Path) {
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-days", "1", "-subj", &format!("/CN={cn}")])
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert)
        .output()
        .expect("openssl");
    assert!(
        made.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&made.stderr)
    );
}

// What `sealgate check --json` and the transaction log say of a host.

/// The attempt records of message `id` in the transaction log, oldest first.
pub fn attempts(gw: &Gateway, id: &str) -> Vec<serde_json::Value> {
    let out = gw.cli(&["report", "export", "--format", "json"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["kind"] == "attempt" && r["queue_id"] == id)
        .map(|r| r["data"].clone())
        .collect()
}

/// `(name, status)` of the checks that failed or could not run.
pub fn failing(host: &serde_json::Value) -> Vec<(String, String)> {
    host["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["status"] == "fail" || c["status"] == "error")
        .map(|c| (c["name"].to_string(), c["status"].to_string()))
        .collect()
}

pub fn refusals(host: &serde_json::Value) -> Vec<String> {
    host["refusals"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r["reason"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// What `check --json` says of `host` and what the log's attempt record of
/// the delivery of message `id` says of the same host agree: observed
/// level, usable level, refusals and failing checks.
pub fn assert_log_agrees(gw: &Gateway, id: &str, host: &serde_json::Value) {
    let name = host["host"].as_str().unwrap();
    let logged = wait_for(Duration::from_secs(30), "the attempt record", || {
        attempts(gw, id).pop()
    });
    let h = logged["hosts"]
        .as_array()
        .and_then(|hosts| hosts.iter().find(|h| h["host"] == name))
        .unwrap_or_else(|| panic!("{name} is not in the attempt record {logged:#}"));
    for key in ["observed_level", "level"] {
        assert_eq!(
            h[key], host[key],
            "{key} of {name}: log {h:#} check {host:#}"
        );
    }
    assert_eq!(refusals(h), refusals(host), "refusals of {name}");
    assert_eq!(failing(h), failing(host), "failing checks of {name}");
}

/// The gateway's per-attempt log lines (target `delivery`), each parsed
/// into its fields: `key=value` with a bare number or a quoted string in
/// Rust's escaping. A line that does not parse fails the test.
pub fn delivery_lines(log: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    log.lines()
        .filter_map(|l| {
            let (_, rest) = l
                .split_once(" INFO delivery: ")
                .or_else(|| l.split_once(" WARN delivery: "))?;
            Some(rest)
        })
        .map(|rest| parse_fields(rest).unwrap_or_else(|| panic!("unparsable line: {rest}")))
        .collect()
}

/// Waits for the delivery line of `rcpt` with `status`.
pub fn wait_delivery_line(
    gw: &Gateway,
    rcpt: &str,
    status: &str,
) -> std::collections::BTreeMap<String, String> {
    wait_for(
        Duration::from_secs(30),
        &format!("a delivery line {rcpt} {status}"),
        || {
            delivery_lines(&gw.log())
                .into_iter()
                .find(|f| f["to"] == rcpt && f["status"] == status)
        },
    )
}

fn parse_fields(mut rest: &str) -> Option<std::collections::BTreeMap<String, String>> {
    let mut fields = std::collections::BTreeMap::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        'r' => value.push('\r'),
                        't' => value.push('\t'),
                        '0' => value.push('\0'),
                        'u' => {
                            let hex: String = chars
                                .by_ref()
                                .map(|(_, c)| c)
                                .skip(1)
                                .take_while(|c| *c != '}')
                                .collect();
                            value.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                        }
                        c => value.push(c),
                    },
                    (_, c) => value.push(c),
                }
            };
            (value, &quoted[end + 1..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_string(), &after[end..])
        };
        fields.insert(key.to_string(), value);
        rest = tail.strip_prefix(' ').unwrap_or(tail);
    }
    Some(fields)
}

/// Runs dkimpy on `message` with `records` as the DNS it sees; its lines.
pub fn dkimpy(dir: &Path, message: &[u8], records: &[String]) -> (bool, String) {
    let (file, dns) = (dir.join(unique("msg")), dir.join(unique("dns")));
    std::fs::write(&file, message).unwrap();
    std::fs::write(&dns, records.join("\n")).unwrap();
    let out = Command::new(peers_dir().join("mtas-root/venv/bin/python"))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/dkim_verify.py"))
        .args([&file, &dns])
        .output()
        .expect("dkimpy (run the README test command)");
    (out.status.success(), output_text(&out))
}

/// `sealgate dkim keygen`: the key file and the TXT record as
/// `NAME VALUE` for dkim_verify.py.
pub fn dkim_keygen(dir: &Path, domain: &str, algorithm: &str) -> (PathBuf, String) {
    let key = dir.join(format!("{domain}.pem"));
    let out = Command::new(bin())
        .args([
            "dkim",
            "keygen",
            domain,
            "--selector",
            "s1",
            "--algorithm",
            algorithm,
        ])
        .arg("--out")
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8(out.stdout).unwrap();
    let line = printed
        .lines()
        .find(|l| l.contains("._domainkey."))
        .expect("the TXT record");
    let (name, rest) = line.split_once(" IN TXT ").unwrap();
    // ( "part" "part" ) → the concatenated value, as a resolver gives it.
    let value: String = rest
        .trim_matches(|c| c == '(' || c == ')' || c == ' ')
        .split("\" \"")
        .map(|p| p.trim_matches('"'))
        .collect();
    (key, format!("{name} {value}"))
}

/// The PostgreSQL server the tests share (tests/peers/postgres.sh: the
/// machine's own, or a private cluster); its URL without a database.
pub fn pg_server() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| pg_script_url(&peers_dir().join("postgres"), 24432, None))
}

/// `private`: a cluster of the test's own even where the machine has a
/// server, started with these server options.
fn pg_script_url(dir: &Path, port: u16, private: Option<&str>) -> String {
    let mut cmd = Command::new("bash");
    cmd.arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/postgres.sh"))
        .arg("url")
        .arg(dir)
        .arg(port.to_string());
    if let Some(options) = private {
        cmd.env("SEALGATE_TEST_PG_PRIVATE", "1")
            .env("SEALGATE_TEST_PG_OPTIONS", options);
    }
    let out = cmd.output().expect("postgres.sh");
    assert!(out.status.success(), "postgres.sh: {}", output_text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A fresh, empty database on `server` for one test; its URL.
pub fn pg_database(server: &str, name: &str) -> String {
    let db = format!("sealgate_test_{name}_{}", std::process::id());
    // Each its own command: neither runs inside a transaction block.
    for sql in [
        format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        format!("CREATE DATABASE {db}"),
    ] {
        let out = Command::new("psql")
            .args([&format!("{server}/postgres"), "-qc", &sql])
            .output()
            .expect("psql");
        assert!(out.status.success(), "{sql}: {}", output_text(&out));
    }
    format!("{server}/{db}")
}

/// One SQL query's rows as text (psql, unaligned, `|` between columns).
pub fn pg_query(url: &str, sql: &str) -> Vec<String> {
    let out = Command::new("psql")
        .args([url, "-tAc", sql])
        .output()
        .expect("psql");
    assert!(out.status.success(), "{sql}: {}", output_text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// A PostgreSQL cluster of a test's own, which it may stop and start.
pub struct PrivatePg {
    dir: PathBuf,
    port: u16,
    options: String,
    pub url: String,
}

impl PrivatePg {
    pub fn start(name: &str, port: u16) -> PrivatePg {
        Self::start_with(name, port, "")
    }

    /// With these server options (`-c name=value …`).
    pub fn start_with(name: &str, port: u16, options: &str) -> PrivatePg {
        let dir = peers_dir().join(name);
        let url = pg_script_url(&dir, port, Some(options));
        PrivatePg {
            dir,
            port,
            options: options.to_string(),
            url,
        }
    }

    /// Stops it at once, as a crash would.
    pub fn halt(&self) {
        let out = Command::new("bash")
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/postgres.sh"))
            .arg("stop")
            .arg(&self.dir)
            .output()
            .expect("postgres.sh stop");
        assert!(out.status.success(), "{}", output_text(&out));
    }

    /// Starts it again; it recovers what was committed from its WAL.
    pub fn resume(&self) {
        pg_script_url(&self.dir, self.port, Some(&self.options));
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The Debian package under test: the one run-tests.sh built and named in
/// `SEALGATE_DEB`, else one built now by packaging/build-deb.sh (a
/// release build).
pub fn debian_package() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Some(deb) = std::env::var_os("SEALGATE_DEB") {
        return PathBuf::from(deb);
    }
    let out = Command::new("bash")
        .arg(root.join("packaging/build-deb.sh"))
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "packaging/build-deb.sh: {}",
        output_text(&out)
    );
    std::fs::read_dir(root.join("target/debian"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("sealgate_") && name.ends_with(".deb")
        })
        .expect("packaging/build-deb.sh made no .deb")
}
