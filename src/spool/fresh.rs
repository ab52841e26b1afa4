//! Messages a node has just committed to the shared database, kept in
//! memory for their first delivery attempt.
//!
//! The queue starts delivering a message moments after it was stored.
//! Reading back what this node has just written would cost a round trip to
//! PostgreSQL and the body's bytes again, for every message; the copy here
//! spares the body and the recipients; whether the message may still go
//! (an operator on another node may have held or deleted it) is still
//! asked of the database, for many messages at once. It is bounded in bytes
//! and in age: whatever is not taken in time, or would not fit, is read
//! from the database as before. A later attempt (a retry, a takeover)
//! always reads the database.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{LoadedJob, NewMessage, PendingRecipient, QueueId};

/// How long a stored message waits here for its first attempt.
pub const MAX_AGE: Duration = Duration::from_secs(3);
/// Most bytes of bodies kept.
pub const MAX_BYTES: usize = 32 << 20;

/// The messages waiting for their first attempt.
#[derive(Default)]
pub struct Fresh {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    messages: HashMap<QueueId, Entry>,
    /// In the order stored, to expire the oldest first.
    order: VecDeque<(Instant, QueueId)>,
    bytes: usize,
}

struct Entry {
    message: Box<NewMessage>,
    at: Instant,
    /// The domains whose recipients are still to be taken.
    domains: Vec<String>,
}

impl Fresh {
    /// Keeps a message that was just committed, unless it would not fit.
    pub fn put(&self, message: Box<NewMessage>, now: Instant) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.expire(now);
        let size = message.body.len();
        if inner.bytes + size > MAX_BYTES {
            return;
        }
        let mut domains: Vec<String> = message
            .envelope
            .recipients
            .iter()
            .map(|r| r.domain.clone())
            .collect();
        domains.sort_unstable();
        domains.dedup();
        let id = message.id;
        inner.bytes += size;
        inner.order.push_back((now, id));
        if let Some(old) = inner.messages.insert(
            id,
            Entry {
                message,
                at: now,
                domains,
            },
        ) {
            inner.bytes -= old.message.body.len();
        }
    }

    /// The first attempt's job for the recipients of `domain`, as the
    /// database would give it; `None` when the message is not here (taken,
    /// expired, never kept), and the database must be asked.
    pub fn take(&self, id: QueueId, domain: &str, now: Instant) -> Option<LoadedJob> {
        let mut inner = self.inner.lock().ok()?;
        inner.expire(now);
        let entry = inner.messages.get_mut(&id)?;
        let at = entry.domains.iter().position(|d| d == domain)?;
        entry.domains.swap_remove(at);
        let m = &entry.message;
        let recipients = m
            .envelope
            .recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| r.domain == domain)
            .map(|(i, r)| PendingRecipient {
                index: i as u32,
                recipient: r.clone(),
                attempts: 0,
            })
            .collect();
        let mut envelope = m.envelope.clone();
        envelope.recipients = Vec::new();
        let last = entry.domains.is_empty();
        let job = if last {
            let entry = inner.remove(id)?;
            LoadedJob {
                id,
                envelope,
                received_at: entry.message.received_at,
                expires_at: entry.message.expires_at,
                body: entry.message.body,
                recipients,
            }
        } else {
            LoadedJob {
                id,
                envelope,
                received_at: m.received_at,
                expires_at: m.expires_at,
                body: m.body.clone(),
                recipients,
            }
        };
        Some(job)
    }

    /// Drops a message an operator acted on (hold, delete): its next
    /// attempt must see the database's state.
    pub fn forget(&self, id: QueueId) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.remove(id);
        }
    }

    /// Messages kept now, and their bodies' bytes.
    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        let inner = self.inner.lock().expect("lock");
        (inner.messages.len(), inner.bytes)
    }
}

impl Inner {
    fn remove(&mut self, id: QueueId) -> Option<Entry> {
        let entry = self.messages.remove(&id)?;
        self.bytes -= entry.message.body.len();
        Some(entry)
    }

    /// Drops what is older than [`MAX_AGE`]; each message is looked at
    /// once here, however many are kept.
    fn expire(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.order.front() {
            if now.duration_since(at) < MAX_AGE {
                break;
            }
            self.order.pop_front();
            // A message stored again under its id (never, ids are unique)
            // or already taken is skipped by its own time.
            if self.messages.get(&id).is_some_and(|e| e.at == at) {
                self.remove(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Content, Envelope, Notify, Recipient, TenantId, TlsRequest};

    fn message(id: u64, to: &[&str], size: usize) -> Box<NewMessage> {
        Box::new(NewMessage {
            id: QueueId(id),
            envelope: Envelope {
                tenant: TenantId("t".into()),
                sender: "a@src.test".into(),
                recipients: to
                    .iter()
                    .map(|a| Recipient::new(a.to_string(), None, Notify::default()))
                    .collect(),
                env_id: None,
                ret: None,
                smtputf8: false,
                body_8bit: false,
                tls_request: TlsRequest::None,
                content: Content::Plain,
            },
            received_at: 1,
            expires_at: 2,
            client: String::new(),
            body: vec![b'x'; size],
            events: Vec::new(),
        })
    }

    #[test]
    fn each_domain_is_taken_once_with_its_recipients_and_indexes() {
        let fresh = Fresh::default();
        let t = Instant::now();
        fresh.put(
            message(7, &["a@one.test", "b@two.test", "c@One.test"], 10),
            t,
        );
        let one = fresh.take(QueueId(7), "one.test", t).expect("first take");
        let indexes: Vec<u32> = one.recipients.iter().map(|r| r.index).collect();
        assert_eq!(indexes, [0, 2]);
        assert!(one.envelope.recipients.is_empty());
        assert_eq!(one.body.len(), 10);
        assert!(fresh.take(QueueId(7), "one.test", t).is_none());
        assert_eq!(fresh.held(), (1, 10));
        let two = fresh
            .take(QueueId(7), "two.test", t)
            .expect("second domain");
        assert_eq!(two.recipients[0].index, 1);
        assert_eq!(fresh.held(), (0, 0));
    }

    #[test]
    fn old_messages_and_those_over_the_bound_are_left_to_the_database() {
        let fresh = Fresh::default();
        let t = Instant::now();
        fresh.put(message(1, &["a@one.test"], 10), t);
        fresh.put(message(2, &["a@one.test"], MAX_BYTES), t);
        assert_eq!(fresh.held(), (1, 10), "over the bound is not kept");
        let later = t + MAX_AGE;
        assert!(fresh.take(QueueId(1), "one.test", later).is_none());
        assert_eq!(fresh.held(), (0, 0));
        fresh.put(message(3, &["a@one.test"], 10), later);
        fresh.forget(QueueId(3));
        assert!(fresh.take(QueueId(3), "one.test", later).is_none());
        assert_eq!(fresh.held(), (0, 0));
    }
}
