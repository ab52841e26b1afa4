//! Connections kept for a few seconds after a transaction, so the next job
//! to the same domain skips the connect, greeting, EHLO and TLS handshake.
//! Each keeps the verdict it was qualified with.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::client::SmtpClient;
use crate::qualify::Verdict;

/// A qualified connection that may carry mail.
pub struct Idle {
    pub client: SmtpClient,
    pub since: Instant,
    pub verdict: Verdict,
}

/// Keeps the better of two spare connections (by level) and closes the other.
pub fn keep_better(spare: &mut Option<Idle>, session: Idle) {
    match spare {
        Some(s) if s.verdict.level >= session.verdict.level => {
            tokio::spawn(session.client.quit());
        }
        _ => {
            if let Some(old) = spare.replace(session) {
                tokio::spawn(old.client.quit());
            }
        }
    }
}

/// Idle connections per domain.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<String, Vec<Idle>>>,
}

impl Pool {
    /// The newest idle connection to `domain` younger than `timeout`.
    pub fn take(&self, domain: &str, timeout: Duration) -> Option<Idle> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(domain)?;
        while let Some(entry) = list.pop() {
            if entry.since.elapsed() < timeout {
                return Some(entry);
            }
            tokio::spawn(entry.client.quit());
        }
        None
    }

    pub fn put(&self, domain: &str, mut idle: Idle) {
        idle.since = Instant::now();
        if let Ok(mut map) = self.idle.lock() {
            map.entry(domain.to_string()).or_default().push(idle);
        }
    }

    /// Closes connections idle for longer than `timeout` (all with `all`).
    pub fn close(&self, timeout: Duration, all: bool) {
        let mut expired = Vec::new();
        if let Ok(mut map) = self.idle.lock() {
            for list in map.values_mut() {
                let (keep, old): (Vec<_>, Vec<_>) = list
                    .drain(..)
                    .partition(|i| !all && i.since.elapsed() < timeout);
                *list = keep;
                expired.extend(old);
            }
            map.retain(|_, l| !l.is_empty());
        }
        for idle in expired {
            tokio::spawn(idle.client.quit());
        }
    }
}
