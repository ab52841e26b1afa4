//! The control socket: how `sealgate queue retry|delete` and `sealgate
//! domains confirm` reach a running gateway, so that its schedule and its
//! domain memory learn of the change at once.
//!
//! A Unix socket in `data_dir` (mode 0600). One request line, one reply
//! line: `retry ID`, `flush`, `delete ID [REASON]`, `hold ID [REASON]`,
//! `release ID`, `bounce ID [REASON]`, `confirm DOMAIN`, `tlsrpt DAY` or
//! `rekey keep|replace|to PATH`,
//! answered `ok …` or `error …`. Each request is answered on its own, so
//! an act that waits for an attempt in flight holds up no other. When no
//! gateway runs, the CLI changes the database itself (TLS-RPT reports need
//! the running gateway).

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::watch;

use crate::message::QueueId;
use crate::policy::memory::DomainMemory;
use crate::queue::{Act, Acted, QueueHandle};
use crate::report::tlsrpt::{Reporter, day_name};
use crate::spool::at_rest::KekChange;
use crate::spool::{Operator, Spool};
use crate::util::now;

pub struct Server {
    listener: UnixListener,
    requests: Arc<Requests>,
}

/// What answers the requests, each in a task of its own.
struct Requests {
    spool: Arc<dyn Spool>,
    queue: QueueHandle,
    memory: Arc<DomainMemory>,
    reporter: Arc<Reporter>,
    /// Held while this process rotates the spool's keys: one at a time.
    rotating: tokio::sync::Mutex<()>,
}

/// How long a client may take to send its request line.
const REQUEST_LINE: std::time::Duration = std::time::Duration::from_secs(10);

/// The longest request line read; the longest real one is a path.
const MAX_LINE: u64 = 64 * 1024;

impl Server {
    pub fn bind(
        path: &Path,
        spool: Arc<dyn Spool>,
        queue: QueueHandle,
        memory: Arc<DomainMemory>,
        reporter: Arc<Reporter>,
    ) -> std::io::Result<Server> {
        // A socket left by a killed gateway would block the bind.
        if socket_answers(path) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another sealgate is running on {}", path.display()),
            ));
        }
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Server {
            listener,
            requests: Arc::new(Requests {
                spool,
                queue,
                memory,
                reporter,
                rotating: tokio::sync::Mutex::new(()),
            }),
        })
    }

    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let stream = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(_) => continue,
                },
                _ = shutdown.changed() => return,
            };
            // Each request on its own: an act that waits for an attempt in
            // flight (here, or on the node that owns the message) or a key
            // rotation does not hold up a flush or a retry meanwhile.
            let requests = self.requests.clone();
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                let mut line = String::new();
                let mut limited = (&mut stream).take(MAX_LINE);
                let read = limited.read_line(&mut line);
                if !matches!(tokio::time::timeout(REQUEST_LINE, read).await, Ok(Ok(_))) {
                    return;
                }
                let answer = requests.handle(line.trim()).await;
                let _ = stream
                    .get_mut()
                    .write_all(format!("{answer}\n").as_bytes())
                    .await;
            });
        }
    }
}

impl Requests {
    async fn handle(&self, line: &str) -> String {
        if line == "flush" {
            return match self.spool.retry_all(now()).await {
                Ok(jobs) => {
                    let n = jobs.len();
                    self.queue.due(jobs);
                    format!("ok: {n} destination(s) of queued messages scheduled now")
                }
                Err(e) => format!("error: {e}"),
            };
        }
        let Some((op, id)) = line.split_once(' ') else {
            return format!("error: cannot understand `{line}`");
        };
        if op == "confirm" {
            return match self.memory.confirm(id, now()).await {
                Ok(r) => format!(
                    "ok: {}: {} accepted as the new best level",
                    r.domain,
                    r.best.name()
                ),
                Err(e) => format!("error: {e}"),
            };
        }
        if op == "rekey" {
            let change = match id.split_once(' ') {
                None if id == "keep" => KekChange::Keep,
                None if id == "replace" => KekChange::Replace,
                Some(("to", path)) => KekChange::WriteTo(path.into()),
                _ => return format!("error: cannot understand `{line}`"),
            };
            let Ok(_one) = self.rotating.try_lock() else {
                return "error: a rotation of the spool's keys is running already; wait for it"
                    .to_string();
            };
            return match self.spool.rekey(change).await {
                Ok(done) => {
                    tracing::info!("spool keys rotated: {done}");
                    format!("ok: {done}")
                }
                Err(e) => format!(
                    "error: {e}; the rotation stopped, the spool opens with the old keys, run it again"
                ),
            };
        }
        if op == "tlsrpt" {
            let day = match crate::config::parse_instant(id, crate::config::DayEdge::Start) {
                Ok(t) => t.div_euclid(86_400) * 86_400,
                Err(e) => return format!("error: {e}"),
            };
            return match self.reporter.run_day(day).await {
                Ok(run) => format!("ok: {}: {}", day_name(day), run.summary()),
                Err(e) => format!("error: {e:#}"),
            };
        }
        let (id, reason) = match id.split_once(' ') {
            Some((id, reason)) => (id, Some(reason.trim().to_string())),
            None => (id, None),
        };
        let id: QueueId = match id.parse() {
            Ok(id) => id,
            Err(e) => return format!("error: {e}"),
        };
        let by = Operator {
            by: format!("operator (sealgate queue {op})"),
            reason: reason.filter(|r| !r.is_empty()),
        };
        if let Some(act) = Act::from_name(op) {
            return match self.queue.act(id, act, by).await {
                Ok(acted) if acted.done() => format!("ok: {}", acted_text(id, &acted)),
                Ok(acted) => format!("error: {}", acted_text(id, &acted)),
                Err(e) => format!("error: {e}"),
            };
        }
        match op {
            "retry" => match self.spool.retry(id, now()).await {
                Ok(jobs) if jobs.is_empty() => {
                    format!("error: {}", nothing_to_retry(id, &*self.spool).await)
                }
                Ok(jobs) => {
                    let n = jobs.len();
                    self.queue.due(jobs);
                    format!("ok: {id}: {n} destination(s) scheduled now")
                }
                Err(e) => format!("error: {e}"),
            },
            _ => format!("error: unknown operation `{op}`"),
        }
    }
}

/// Why a retry found nothing to do, in words.
pub async fn nothing_to_retry(id: QueueId, spool: &dyn Spool) -> String {
    match spool.show(id).await {
        Ok(Some(m)) if m.held => format!("{id}: held; release it to deliver it"),
        Ok(Some(_)) => format!("{id}: no pending recipients"),
        Ok(None) => format!("{id}: no such message in the queue"),
        Err(e) => e.to_string(),
    }
}

/// What an act did, in words.
pub fn acted_text(id: QueueId, acted: &Acted) -> String {
    match acted {
        Acted::Missing => format!("{id}: no such message in the queue"),
        Acted::Deleted => format!("{id}: deleted"),
        Acted::Held => format!("{id}: held until released"),
        Acted::AlreadyHeld => format!("{id}: held already"),
        Acted::Released => format!("{id}: released, due now"),
        Acted::NotHeld => format!("{id}: not held"),
        Acted::Bounced {
            recipients,
            dsn: Some(dsn),
        } => format!("{id}: {recipients} recipient(s) bounced; DSN {dsn} queued to the sender"),
        Acted::Bounced {
            recipients,
            dsn: None,
        } => format!(
            "{id}: {recipients} recipient(s) bounced; no DSN (none asked for, or a null sender)"
        ),
    }
}

fn socket_answers(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

/// Sends one request to a running gateway; `None` when none is listening.
pub fn request(path: &Path, line: &str) -> Option<String> {
    use std::io::{BufRead, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(path).ok()?;
    stream.write_all(format!("{line}\n").as_bytes()).ok()?;
    let mut answer = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut answer)
        .ok()?;
    Some(answer.trim().to_string())
}
