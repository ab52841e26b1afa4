//! Scheduling: which job runs when, with retry backoff, expiry, concurrency
//! limits and bounces.
//!
//! A *job* is the pending recipients of one message in one domain. The spool
//! holds every job's due time; this module keeps a copy in memory so that
//! picking the next job never scans the queue: a binary heap orders future
//! jobs by due time (O(log n)), and due jobs wait in one FIFO per domain,
//! served round-robin so that one slow destination cannot starve the rest.
//! A job's outcome is written to the spool, with the DSN it causes, in one
//! transaction before the job is forgotten here.

pub mod dsn;
mod line;
mod owner;

pub use owner::elsewhere;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::message::QueueId;
use crate::outbound::{Detail, Outbound, Outcome};
use crate::policy::Action;
use crate::report::EventData;
use crate::report::event::{self, AttemptRecipient, RecipientResult};
use crate::spool::journal::{Entry, Journal};
use crate::spool::{
    AttemptRecord, DueJob, HoldOutcome, Operator, PendingRecipient, RecipientOutcome, Spool,
};
use line::Status;

use crate::util::now;

enum Event {
    Due(DueJob),
    Finished {
        id: QueueId,
        domain: Arc<str>,
        next: Option<i64>,
    },
    /// An operator's delete, hold or bounce: done once no attempt for the
    /// message is in flight here.
    Act {
        id: QueueId,
        act: Act,
        by: Operator,
        done: Reply,
    },
    /// The watchdog asks whether the scheduler still turns.
    Ping(tokio::sync::oneshot::Sender<()>),
    /// A reload: `[queue]` limits from the next round; the retry schedule,
    /// lifetime and tenants' retention from the next attempt on.
    Settings(Arc<Config>),
}

/// What an operator does to a queued message that must wait for its
/// attempt in flight: the log never shows an attempt after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// Remove it, without a bounce.
    Delete,
    /// Keep it back until released.
    Hold,
    /// End a hold: due now, on this node.
    Release,
    /// Give up its pending recipients now, with a DSN to the sender.
    Bounce,
}

impl Act {
    /// As the command line and the control socket name it.
    pub fn name(self) -> &'static str {
        match self {
            Act::Delete => "delete",
            Act::Hold => "hold",
            Act::Release => "release",
            Act::Bounce => "bounce",
        }
    }

    pub fn from_name(name: &str) -> Option<Act> {
        [Act::Delete, Act::Hold, Act::Release, Act::Bounce]
            .into_iter()
            .find(|a| a.name() == name)
    }
}

/// What came of an [`Act`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acted {
    /// No such message, or (hold, bounce) nothing of it is pending.
    Missing,
    Deleted,
    Held,
    /// It was held already.
    AlreadyHeld,
    Released,
    /// A release of a message that was not held.
    NotHeld,
    /// `recipients` failed; the DSN, if the sender gets one.
    Bounced {
        recipients: usize,
        dsn: Option<QueueId>,
    },
}

impl Acted {
    /// Whether the act changed anything.
    pub fn done(&self) -> bool {
        !matches!(self, Acted::Missing | Acted::AlreadyHeld | Acted::NotHeld)
    }
}

type Reply = tokio::sync::oneshot::Sender<Result<Acted, String>>;

/// How the rest of the gateway tells the queue about work.
#[derive(Clone)]
pub struct QueueHandle {
    tx: mpsc::UnboundedSender<Event>,
    /// In a cluster, acts on messages other nodes own are sent to them.
    spool: Arc<dyn Spool>,
}

impl QueueHandle {
    /// A message was stored durably; its recipients' domains are due at `due`.
    pub fn submitted(&self, id: QueueId, domains: Vec<String>, due: i64) {
        for domain in domains {
            let _ = self.tx.send(Event::Due(DueJob { id, domain, due }));
        }
    }

    /// Deletes, holds or bounces a message. An attempt in flight for it is
    /// recorded first, so the log never shows an attempt after the act; in
    /// a cluster the node that owns the message does it, for that reason.
    pub async fn act(&self, id: QueueId, act: Act, by: Operator) -> Result<Acted, String> {
        if let Some(done) = owner::elsewhere(self.spool.as_ref(), id, act, &by).await {
            return done;
        }
        let (done, answer) = tokio::sync::oneshot::channel();
        let stopped = || "the queue has stopped".to_string();
        self.tx
            .send(Event::Act { id, act, by, done })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Answers once the scheduler loop has come round to it: it is not
    /// stuck (the service manager's watchdog asks).
    pub async fn alive(&self) -> bool {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.tx.send(Event::Ping(done)).is_ok() && answer.await.is_ok()
    }

    /// The configuration a reload put in force (SIGHUP): concurrency
    /// limits apply from the scheduler's next round, the retry schedule,
    /// lifetime and tenants' retention from the next attempt on.
    pub fn settings(&self, config: Arc<Config>) {
        let _ = self.tx.send(Event::Settings(config));
    }

    /// Jobs whose due time changed (recovery, `queue retry`).
    pub fn due(&self, jobs: Vec<DueJob>) {
        for job in jobs {
            let _ = self.tx.send(Event::Due(job));
        }
    }
}

type Key = (QueueId, Arc<str>);

/// The in-memory schedule. Every operation is O(log n) in the queue size,
/// or O(number of domains) for a dispatch round when all are saturated.
#[derive(Default)]
struct Schedule {
    /// Future jobs by due time; entries whose due time changed are skipped when popped.
    waiting: BinaryHeap<Reverse<(i64, QueueId, Arc<str>)>>,
    /// Due time of every job that is waiting or ready (not in flight).
    due_at: HashMap<Key, i64>,
    ready: HashMap<Arc<str>, VecDeque<QueueId>>,
    /// Domains with ready jobs, served in turn.
    rotation: VecDeque<Arc<str>>,
    in_flight: HashSet<Key>,
    active: HashMap<Arc<str>, usize>,
    total_active: usize,
}

impl Schedule {
    fn add(&mut self, job: DueJob, now: i64) {
        let domain: Arc<str> = job.domain.into();
        let key = (job.id, domain.clone());
        if self.in_flight.contains(&key) {
            return;
        }
        if let Some(&due) = self.due_at.get(&key)
            && due <= job.due
        {
            return;
        }
        self.due_at.insert(key, job.due);
        if job.due <= now {
            self.make_ready(job.id, domain);
        } else {
            self.waiting.push(Reverse((job.due, job.id, domain)));
        }
    }

    fn make_ready(&mut self, id: QueueId, domain: Arc<str>) {
        let queue = self.ready.entry(domain.clone()).or_default();
        if queue.is_empty() {
            self.rotation.push_back(domain);
        }
        queue.push_back(id);
    }

    /// Moves every job that has come due into the ready queues.
    fn promote(&mut self, now: i64) {
        while let Some(Reverse((due, _, _))) = self.waiting.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((due, id, domain))) = self.waiting.pop() else {
                break;
            };
            if self.due_at.get(&(id, domain.clone())) == Some(&due) {
                self.make_ready(id, domain);
            }
        }
    }

    fn next_due(&self) -> Option<i64> {
        self.waiting.peek().map(|Reverse((due, _, _))| *due)
    }

    /// Takes the next job that the limits allow to start.
    fn take(&mut self, max_total: usize, max_per_domain: usize) -> Option<Key> {
        if self.total_active >= max_total {
            return None;
        }
        for _ in 0..self.rotation.len() {
            let domain = self.rotation.pop_front()?;
            if self.active.get(&domain).copied().unwrap_or(0) >= max_per_domain {
                self.rotation.push_back(domain);
                continue;
            }
            let queue = self.ready.get_mut(&domain)?;
            let id = queue.pop_front()?;
            if queue.is_empty() {
                self.ready.remove(&domain);
            } else {
                self.rotation.push_back(domain.clone());
            }
            let key = (id, domain.clone());
            if self.due_at.remove(&key).is_none() {
                // Stale (superseded) entry; look again.
                continue;
            }
            self.in_flight.insert(key.clone());
            *self.active.entry(domain).or_insert(0) += 1;
            self.total_active += 1;
            return Some(key);
        }
        None
    }

    /// Whether an attempt for message `id` is running (O(jobs in flight)).
    fn in_flight_for(&self, id: QueueId) -> bool {
        self.in_flight.iter().any(|(i, _)| *i == id)
    }

    fn finished(&mut self, key: &Key) {
        if self.in_flight.remove(key) {
            self.total_active -= 1;
            if let Some(n) = self.active.get_mut(&key.1) {
                *n -= 1;
                if *n == 0 {
                    self.active.remove(&key.1);
                }
            }
        }
    }
}

/// The queue manager and its delivery tasks.
pub struct Queue {
    config: Arc<Config>,
    spool: Arc<dyn Spool>,
    outbound: Arc<Outbound>,
    journal: Arc<Journal>,
    events: mpsc::UnboundedReceiver<Event>,
    handle: QueueHandle,
}

impl Queue {
    pub fn new(
        config: Arc<Config>,
        spool: Arc<dyn Spool>,
        outbound: Arc<Outbound>,
        journal: Arc<Journal>,
    ) -> Queue {
        let (tx, events) = mpsc::unbounded_channel();
        let handle = QueueHandle {
            tx,
            spool: spool.clone(),
        };
        Queue {
            config,
            spool,
            outbound,
            journal,
            events,
            handle,
        }
    }

    pub fn handle(&self) -> QueueHandle {
        self.handle.clone()
    }

    /// Records as delivered what the delivered journal says peers took
    /// before the last stop, then empties the journal. A recipient that
    /// was recorded meanwhile is left as it is.
    pub async fn record_journal(&self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        let mut recorded = 0;
        let mut complete = true;
        for entry in entries {
            let job = match self.spool.load(entry.id, &entry.domain).await {
                Ok(Some(job)) => job,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(id = %entry.id, "cannot load a journalled job: {e}");
                    complete = false;
                    continue;
                }
            };
            let taken: Vec<&PendingRecipient> = job
                .recipients
                .iter()
                .filter(|r| entry.recipients.contains(&r.index))
                .collect();
            if taken.is_empty() {
                continue;
            }
            let now = now();
            let text = format!(
                "{} accepted it (250) just before sealgate stopped; recorded at the next start from the delivered journal",
                entry.remote
            );
            let record = AttemptRecord {
                id: job.id,
                domain: entry.domain.clone(),
                outcomes: taken
                    .iter()
                    .map(|r| {
                        (
                            r.index,
                            RecipientOutcome::Delivered {
                                reply: text.clone(),
                            },
                        )
                    })
                    .collect(),
                dsn: None,
                now,
                purge_at: now + self.config.hold_delivered(&job.envelope.tenant.0).as_secs() as i64,
                tenant: job.envelope.tenant.clone(),
                events: vec![attempt_without_verdict(
                    job.id,
                    now,
                    entry.domain.clone(),
                    taken
                        .iter()
                        .map(|r| {
                            undecided(
                                r,
                                RecipientResult::Delivered,
                                "2.0.0",
                                Some(&entry.remote),
                                &text,
                            )
                        })
                        .collect(),
                    None,
                )],
            };
            match self.spool.record(record).await {
                Ok(_) => recorded += taken.len(),
                Err(e) => {
                    tracing::error!(id = %job.id, "cannot record a journalled delivery: {e}");
                    complete = false;
                }
            }
        }
        if recorded > 0 {
            tracing::info!(
                recipients = recorded,
                "delivered journal: recorded deliveries that peers accepted just before the last stop"
            );
        }
        // Kept when something could not be recorded: the next start tries again.
        if complete && let Err(e) = self.journal.clear() {
            tracing::error!("{e}");
        }
    }

    /// Runs until shutdown, then waits (bounded) for deliveries in flight.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut schedule = Schedule::default();
        match self.spool.pending().await {
            Ok(jobs) => {
                let now = now();
                tracing::info!(jobs = jobs.len(), "queue recovered from the spool");
                for job in jobs {
                    schedule.add(job, now);
                }
            }
            Err(e) => tracing::error!("cannot read the queue from the spool: {e}"),
        }
        // Acts waiting for an attempt in flight to be recorded.
        let mut acts: HashMap<QueueId, Vec<(Act, Operator, Reply)>> = HashMap::new();
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        let mut ticks = 0u64;
        // A flush asked on any node of a cluster shows as a new count.
        let mut flushes = self.spool.flushes();
        loop {
            let now = now();
            schedule.promote(now);
            let (most, per_destination) = (
                self.config.queue.max_concurrency,
                self.config.queue.max_per_destination,
            );
            while let Some((id, domain)) = schedule.take(most, per_destination) {
                self.spawn_attempt(id, domain);
            }
            let sleep = match schedule.next_due() {
                Some(due) => Duration::from_millis(((due - now).max(0) as u64) * 1000 + 5),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                event = self.events.recv() => match event {
                    Some(Event::Due(job)) => schedule.add(job, now),
                    Some(Event::Finished { id, domain, next }) => {
                        let key = (id, domain.clone());
                        schedule.finished(&key);
                        if let Some(due) = next {
                            schedule.add(DueJob { id, domain: domain.to_string(), due }, now);
                        }
                        if !schedule.in_flight_for(id)
                            && let Some(waiting) = acts.remove(&id)
                        {
                            self.spawn_acts(id, waiting);
                        }
                    }
                    Some(Event::Act { id, act, by, done }) => {
                        if schedule.in_flight_for(id) {
                            acts.entry(id).or_default().push((act, by, done));
                        } else {
                            self.spawn_acts(id, vec![(act, by, done)]);
                        }
                    }
                    Some(Event::Ping(done)) => {
                        let _ = done.send(());
                    }
                    Some(Event::Settings(config)) => self.config = config,
                    None => break,
                },
                _ = tokio::time::sleep(sleep) => {}
                _ = housekeeping.tick() => {
                    ticks += 1;
                    self.outbound.close_idle(false);
                    if ticks.is_multiple_of(60)
                        && let Err(e) = self.spool.purge(now).await
                    {
                        tracing::warn!("purging held messages failed: {e}");
                    }
                    if self.spool.shared() && self.spool.available() {
                        self.cluster_work(&mut schedule, &mut flushes, now).await;
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        // Deliveries in flight finish (their results are recorded); nothing new starts.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while schedule.total_active > 0 {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Event::Finished { id, domain, .. })) => schedule.finished(&(id, domain)),
                Ok(Some(
                    Event::Due(_) | Event::Act { .. } | Event::Ping(_) | Event::Settings(_),
                )) => {}
                Ok(None) | Err(_) => break,
            }
        }
        // Given up: each stays pending in the spool and is tried again at
        // the next start (at least once: a peer that took it meanwhile may
        // get it twice).
        for (id, domain) in &schedule.in_flight {
            tracing::warn!(
                %id,
                %domain,
                "shutdown: delivery still in progress after 30 s; left in the queue, tried again at the next start"
            );
        }
        self.outbound.close_idle(true);
    }

    /// In a cluster: takes over messages of nodes that died (a batch a
    /// second, so a large queue comes over without stalling this loop),
    /// and reads this node's queue again after a flush on any node.
    async fn cluster_work(&self, schedule: &mut Schedule, flushes: &mut u64, now: i64) {
        const ADOPT_BATCH: usize = 500;
        match self.spool.adopt(now, ADOPT_BATCH).await {
            Ok(jobs) => {
                for job in jobs {
                    schedule.add(job, now);
                }
            }
            Err(e) => tracing::warn!("cannot look for the queues of dead nodes: {e}"),
        }
        // Acts other nodes asked of this one, the owner: they join the
        // others, after any attempt in flight.
        match self.spool.asked().await {
            Ok(asked) => {
                for a in asked {
                    owner::take(&self.handle.tx, self.spool.clone(), a);
                }
            }
            Err(e) => tracing::warn!("cannot read the acts other nodes asked of this one: {e}"),
        }
        let seen = self.spool.flushes();
        if seen != *flushes {
            match self.spool.pending().await {
                Ok(jobs) => {
                    *flushes = seen;
                    for job in jobs {
                        schedule.add(job, now);
                    }
                }
                Err(e) => tracing::warn!("cannot read the queue after a flush: {e}"),
            }
        }
    }

    /// Runs the acts on `id` in the order they came; a bounce's DSN joins
    /// the schedule.
    fn spawn_acts(&self, id: QueueId, acts: Vec<(Act, Operator, Reply)>) {
        let config = self.config.clone();
        let spool = self.spool.clone();
        let tx = self.handle.tx.clone();
        tokio::spawn(async move {
            for (act, by, done) in acts {
                let result =
                    apply(&config, spool.as_ref(), id, act, by)
                        .await
                        .map(|(acted, due)| {
                            for job in due {
                                let _ = tx.send(Event::Due(job));
                            }
                            acted
                        });
                let _ = done.send(result.map_err(|e| e.to_string()));
            }
        });
    }

    fn spawn_attempt(&self, id: QueueId, domain: Arc<str>) {
        let config = self.config.clone();
        let spool = self.spool.clone();
        let outbound = self.outbound.clone();
        let tx = self.handle.tx.clone();
        // Held until the attempt is recorded: the journal keeps its notes.
        let ticket = self.journal.begin();
        tokio::spawn(async move {
            let (next, dsn) = attempt(&config, spool.as_ref(), &outbound, id, &domain).await;
            drop(ticket);
            if let Some(dsn) = dsn {
                let _ = tx.send(Event::Due(dsn));
            }
            let _ = tx.send(Event::Finished { id, domain, next });
        });
    }
}

/// Does an operator's act on the spool; what it made due (a released
/// message's jobs, a bounce's DSN) comes back to be scheduled.
pub async fn apply(
    config: &Config,
    spool: &dyn Spool,
    id: QueueId,
    act: Act,
    by: Operator,
) -> Result<(Acted, Vec<DueJob>), crate::spool::SpoolError> {
    Ok(match act {
        Act::Delete => match spool.delete(id, by).await? {
            true => (Acted::Deleted, Vec::new()),
            false => (Acted::Missing, Vec::new()),
        },
        Act::Hold => match spool.hold(id, by, now()).await? {
            HoldOutcome::Missing => (Acted::Missing, Vec::new()),
            HoldOutcome::Unchanged => (Acted::AlreadyHeld, Vec::new()),
            HoldOutcome::Done(_) => (Acted::Held, Vec::new()),
        },
        Act::Release => match spool.release(id, by, now()).await? {
            HoldOutcome::Missing => (Acted::Missing, Vec::new()),
            HoldOutcome::Unchanged => (Acted::NotHeld, Vec::new()),
            HoldOutcome::Done(jobs) => (Acted::Released, jobs),
        },
        Act::Bounce => {
            let (acted, dsn) = bounce(config, spool, id, &by).await?;
            (acted, dsn.into_iter().collect())
        }
    })
}

/// An operator's bounce: every pending recipient, held or not, fails now
/// with the operator's reason, in one record with its DSN and one attempt
/// record per domain (so reports count it as the bounce it is).
async fn bounce(
    config: &Config,
    spool: &dyn Spool,
    id: QueueId,
    by: &Operator,
) -> Result<(Acted, Option<DueJob>), crate::spool::SpoolError> {
    let Some(job) = spool.load_all(id).await? else {
        return Ok((Acted::Missing, None));
    };
    let now = now();
    let text = match &by.reason {
        Some(reason) => format!("returned to the sender by {}: {reason}", by.by),
        None => format!("returned to the sender by {}", by.by),
    };
    let detail = Detail {
        // RFC 3463 has no code for an operator's decision: "other or
        // undefined status", permanent.
        status: [5, 0, 0],
        remote: None,
        reply: None,
        text,
    };
    let id_text = id.to_string();
    let mut by_domain: Vec<(String, Vec<AttemptRecipient>)> = Vec::new();
    for r in &job.recipients {
        line::AttemptLine {
            id: &id_text,
            tenant: &job.envelope.tenant,
            sender: &job.envelope.sender,
            recipient: Some(r),
            level: None,
            decision: None,
            delay: now - job.received_at,
            status: Status::Bounced,
            detail: &detail,
        }
        .emit();
        let evidence = undecided(r, RecipientResult::Bounced, "5.0.0", None, &detail.text);
        match by_domain.iter_mut().find(|(d, _)| *d == r.recipient.domain) {
            Some((_, list)) => list.push(evidence),
            None => by_domain.push((r.recipient.domain.clone(), vec![evidence])),
        }
    }
    let reportable: Vec<dsn::Failure<'_>> = job
        .recipients
        .iter()
        .filter(|r| r.recipient.notify.on_failure())
        .map(|r| dsn::Failure {
            recipient: &r.recipient,
            detail: &detail,
        })
        .collect();
    let (dsn, dsn_job) = bounce_of(config, spool, &job, &reportable, now);
    let dsn_id = dsn.as_ref().map(|d| d.id);
    let events = by_domain
        .into_iter()
        .map(|(domain, recipients)| attempt_without_verdict(id, now, domain, recipients, dsn_id))
        .collect();
    let record = AttemptRecord {
        id,
        domain: job.recipients[0].recipient.domain.clone(),
        outcomes: job
            .recipients
            .iter()
            .map(|r| {
                (
                    r.index,
                    RecipientOutcome::Failed {
                        reply: detail.text.clone(),
                    },
                )
            })
            .collect(),
        dsn,
        now,
        purge_at: now + config.hold_delivered(&job.envelope.tenant.0).as_secs() as i64,
        tenant: job.envelope.tenant.clone(),
        events,
    };
    spool.record(record).await?;
    Ok((
        Acted::Bounced {
            recipients: job.recipients.len(),
            dsn: dsn_id,
        },
        dsn_job,
    ))
}

/// The evidence of a recipient whose outcome came without a delivery
/// decision: a delivery found in the journal, an operator's bounce.
fn undecided(
    r: &PendingRecipient,
    outcome: RecipientResult,
    status: &str,
    remote: Option<&str>,
    detail: &str,
) -> AttemptRecipient {
    AttemptRecipient {
        address: r.recipient.address.clone(),
        class: Some(r.recipient.class),
        required: None,
        action: None,
        reason_code: None,
        reason: None,
        end_to_end: None,
        outcome,
        status: status.to_string(),
        remote: remote.map(str::to_string),
        detail: detail.to_string(),
    }
}

/// An attempt record with no connection behind it, hence no verdict.
fn attempt_without_verdict(
    id: QueueId,
    at: i64,
    domain: String,
    recipients: Vec<AttemptRecipient>,
    bounce: Option<QueueId>,
) -> crate::report::Event {
    crate::report::Event {
        queue_id: id,
        at,
        data: EventData::Attempt(Box::new(event::Attempt {
            v: event::VERSION,
            domain,
            verdict: None,
            checks: Vec::new(),
            hosts: Vec::new(),
            recipients,
            bounce,
        })),
    }
}

/// The DSN for `failed` recipients of `job`, if one is due, and its job.
fn bounce_of(
    config: &Config,
    spool: &dyn Spool,
    job: &crate::message::LoadedJob,
    failed: &[dsn::Failure<'_>],
    now: i64,
) -> (Option<crate::spool::NewMessage>, Option<DueJob>) {
    let lifetime = config.queue.max_lifetime.as_secs() as i64;
    let dsn = dsn::build(
        &config.hostname,
        job,
        failed,
        spool.next_id(),
        now,
        lifetime,
    );
    let due = dsn.as_ref().map(|d| DueJob {
        id: d.id,
        domain: d.envelope.recipients[0].domain.clone(),
        due: now,
    });
    (dsn, due)
}

/// When to try a job again whose storage failed: the first retry wait,
/// so that mail flows again soon after the database is back.
fn storage_retry(config: &Config) -> i64 {
    config
        .queue
        .retry_schedule
        .first()
        .map_or(60, |d| d.as_secs().max(1) as i64)
}

/// One delivery attempt of one job, recorded. Returns the job's next due
/// time, if recipients remain, and the bounce it queued, if any.
async fn attempt(
    config: &Config,
    spool: &dyn Spool,
    outbound: &Outbound,
    id: QueueId,
    domain: &str,
) -> (Option<i64>, Option<DueJob>) {
    let job = match spool.load(id, domain).await {
        Ok(Some(job)) => job,
        Ok(None) => return (None, None),
        Err(e) => {
            tracing::error!(%id, %domain, "cannot load job: {e}");
            return (Some(now() + storage_retry(config)), None);
        }
    };
    let result = outbound.deliver(&job).await;
    let now = now();
    let schedule = &config.queue.retry_schedule;
    let tried = job
        .recipients
        .iter()
        .map(|r| r.attempts as usize)
        .max()
        .unwrap_or(0);
    let wait = schedule[tried.min(schedule.len() - 1)].as_secs() as i64;
    let expired = now >= job.expires_at;

    let mut outcomes = Vec::with_capacity(result.outcomes.len());
    let mut failed: Vec<(u32, Detail)> = Vec::new();
    let mut next_due: Option<i64> = None;
    let level = result.verdict.as_ref().and_then(|v| v.level);
    let mut evidence = Vec::with_capacity(result.outcomes.len());
    for (index, outcome) in result.outcomes {
        let pending = job.recipients.iter().find(|r| r.index == index);
        let rcpt = pending.map(|r| r.recipient.address.as_str()).unwrap_or("");
        let decision = result.decisions.iter().find(|(i, _)| *i == index);
        let (result_name, detail) = match &outcome {
            Outcome::Delivered(d) => (RecipientResult::Delivered, d),
            Outcome::Failed(d) => (RecipientResult::Bounced, d),
            Outcome::Deferred(d) if expired => (RecipientResult::Expired, d),
            Outcome::Deferred(d) => (RecipientResult::Deferred, d),
        };
        evidence.push(AttemptRecipient {
            address: rcpt.to_string(),
            class: pending.map(|r| r.recipient.class),
            required: decision.map(|(_, d)| d.required.to_string()),
            action: decision.map(|(_, d)| d.action.name().to_string()),
            reason_code: decision.and_then(|(_, d)| d.action.reason().map(|r| r.code)),
            reason: decision.map(|(_, d)| d.action.reason_text()),
            end_to_end: decision.and_then(|(_, d)| d.end_to_end.clone()),
            outcome: result_name,
            status: format!(
                "{}.{}.{}",
                detail.status[0], detail.status[1], detail.status[2]
            ),
            remote: detail.remote.clone(),
            detail: detail.text.clone(),
        });
        let id_text = id.to_string();
        let line = |status, detail: &Detail| {
            line::AttemptLine {
                id: &id_text,
                tenant: &job.envelope.tenant,
                sender: &job.envelope.sender,
                recipient: pending,
                level,
                decision: decision.map(|(_, d)| d),
                delay: now - job.received_at,
                status,
                detail,
            }
            .emit()
        };
        match outcome {
            Outcome::Delivered(d) => {
                let sealed = decision.is_some_and(|(_, d)| matches!(d.action, Action::Seal { .. }));
                line(if sealed { Status::Sealed } else { Status::Sent }, &d);
                outcomes.push((index, RecipientOutcome::Delivered { reply: d.text }));
            }
            Outcome::Failed(d) => {
                line(Status::Bounced, &d);
                outcomes.push((
                    index,
                    RecipientOutcome::Failed {
                        reply: d.text.clone(),
                    },
                ));
                failed.push((index, d));
            }
            Outcome::Deferred(d) if expired => {
                let text = format!(
                    "gave up after {} in the queue; last error: {}",
                    humantime::format_duration(Duration::from_secs(
                        (now - job.received_at).max(0) as u64
                    )),
                    d.text
                );
                let d = Detail { text, ..d };
                line(Status::Expired, &d);
                outcomes.push((
                    index,
                    RecipientOutcome::Failed {
                        reply: d.text.clone(),
                    },
                ));
                failed.push((index, d));
            }
            Outcome::Deferred(d) => {
                // The last try happens at expiry, not a full backoff after it.
                let next = (now + wait).min(job.expires_at);
                line(Status::Deferred, &d);
                outcomes.push((
                    index,
                    RecipientOutcome::Deferred {
                        reply: d.text,
                        next_attempt: next,
                    },
                ));
                next_due = Some(next_due.map_or(next, |n: i64| n.min(next)));
            }
        }
    }

    let reportable: Vec<dsn::Failure<'_>> = failed
        .iter()
        .filter_map(|(index, detail)| {
            let r = job.recipients.iter().find(|r| r.index == *index)?;
            r.recipient.notify.on_failure().then_some(dsn::Failure {
                recipient: &r.recipient,
                detail,
            })
        })
        .collect();
    let (dsn, dsn_job) = bounce_of(config, spool, &job, &reportable, now);

    let event = crate::report::Event {
        queue_id: id,
        at: now,
        data: EventData::Attempt(Box::new(event::Attempt {
            v: event::VERSION,
            domain: domain.to_string(),
            verdict: result.verdict,
            checks: result.checks,
            hosts: result.hosts,
            recipients: evidence,
            bounce: dsn.as_ref().map(|d| d.id),
        })),
    };
    let record = AttemptRecord {
        id,
        domain: domain.to_string(),
        outcomes,
        dsn,
        now,
        purge_at: now + config.hold_delivered(&job.envelope.tenant.0).as_secs() as i64,
        tenant: job.envelope.tenant.clone(),
        events: vec![event],
    };
    match spool.record(record).await {
        Ok(_) => {
            if let Some(d) = &dsn_job {
                tracing::info!(%id, dsn = %d.id, "bounce queued to {}", job.envelope.sender);
            }
            (next_due, dsn_job)
        }
        Err(e) => {
            // The spool still holds the old state: the job runs again later.
            tracing::error!(%id, %domain, "cannot record the attempt: {e}");
            (Some(now + storage_retry(config)), None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: u64, domain: &str, due: i64) -> DueJob {
        DueJob {
            id: QueueId(id),
            domain: domain.into(),
            due,
        }
    }

    #[test]
    fn due_jobs_are_served_round_robin_within_limits() {
        let mut s = Schedule::default();
        for i in 0..5 {
            s.add(job(i, "slow.test", 0), 10);
        }
        s.add(job(100, "fast.test", 0), 10);
        let first = s.take(10, 2).unwrap();
        let second = s.take(10, 2).unwrap();
        assert_ne!(first.1, second.1, "domains take turns");
        let third = s.take(10, 2).unwrap();
        assert_eq!(&*third.1, "slow.test");
        assert!(
            s.take(10, 2).is_none(),
            "slow.test is at its limit, fast.test is empty"
        );
        s.finished(&third);
        assert!(s.take(10, 2).is_some());
    }

    #[test]
    fn future_jobs_wait_and_an_earlier_due_time_wins() {
        let mut s = Schedule::default();
        s.add(job(1, "a.test", 100), 10);
        assert!(s.take(10, 10).is_none());
        assert_eq!(s.next_due(), Some(100));
        // `queue retry`: the same job, due now.
        s.add(job(1, "a.test", 10), 10);
        let k = s.take(10, 10).expect("retried job is ready");
        assert_eq!(k.0, QueueId(1));
        s.promote(200);
        assert!(
            s.take(10, 10).is_none(),
            "the superseded heap entry does not run the job twice"
        );
        s.finished(&k);
        s.add(job(1, "a.test", 150), 160);
        assert!(s.take(10, 10).is_some());
    }
}
