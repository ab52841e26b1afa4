//! What the console reads and acts on, who is asking ([`User`]), the live
//! sessions, and the one way the console writes to the log:
//! [`Console::record`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::accounts::{Account, AccountStore, Role};
use super::index::Index;
use crate::config::Config;
use crate::inbound::auth::Guard;
use crate::message::QueueId;
use crate::policy::memory::DomainMemory;
use crate::queue::QueueHandle;
use crate::report::event::{Console as ConsoleEvent, VERSION};
use crate::report::log::Verified;
use crate::report::{Event, EventData, LogStore};
use crate::spool::Spool;
use crate::util::now;

/// What the console reads and acts on.
pub struct Console {
    pub config: Arc<Config>,
    pub accounts: AccountStore,
    pub sessions: Sessions,
    pub idle: Duration,
    pub guard: Guard,
    pub index: Arc<Index>,
    pub log: Arc<dyn LogStore>,
    pub spool: Arc<dyn Spool>,
    pub queue: QueueHandle,
    pub memory: Arc<DomainMemory>,
    pub policies: Arc<crate::policy::Policies>,
    /// Signs the head that ends a log download (`[report] signing_key`).
    pub signer: Option<Arc<crate::report::heads::Signer>>,
    /// This node's name in a cluster, for the heads it signs.
    pub node: Option<String>,
    /// Full walks of chains started from the Reports page.
    pub verifications: Verifications,
    pub started: i64,
}

impl Console {
    /// Writes an action to the log of the tenant it concerned.
    pub async fn record(
        &self,
        user: &User,
        tenant: &str,
        id: QueueId,
        action: &str,
        target: Option<String>,
        detail: Option<String>,
    ) {
        let event = Event {
            queue_id: id,
            at: now(),
            data: EventData::Console(ConsoleEvent {
                v: VERSION,
                account: user.account.name.clone(),
                role: user.account.role.name().to_string(),
                action: action.to_string(),
                source: user.source.to_string(),
                target,
                detail,
            }),
        };
        if let Err(e) = self.log.append(tenant, event).await {
            tracing::error!(account = %user.account.name, action, "console: cannot log the action: {e:#}");
        }
    }

    /// The tenant an account's own events go to.
    pub fn home(&self, user: &User) -> String {
        user.scope()
            .map_or_else(|| self.config.default_tenant.clone(), str::to_string)
    }
}

/// The signed-in account of a request, and how it came.
#[derive(Clone)]
pub struct User {
    pub account: Account,
    /// The session's CSRF token; none for a bearer token (no cookie, no CSRF).
    pub csrf: Option<String>,
    pub session: Option<String>,
    pub source: IpAddr,
}

impl User {
    /// The tenant this account is confined to, if any.
    pub fn scope(&self) -> Option<&str> {
        match self.account.role {
            Role::TenantAdmin => self.account.tenant.as_deref(),
            _ => None,
        }
    }
}

/// A session ends this long after login whatever its activity.
const ABSOLUTE: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most (oldest dropped first).
const MAX_SESSIONS: usize = 10_000;

struct Session {
    name: String,
    csrf: String,
    started: Instant,
    last: Instant,
}

/// The live sessions of this process, by id.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    pub fn start(&self, name: &str) -> (String, String) {
        let (id, csrf) = (random_hex(), random_hex());
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.last)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        let now = Instant::now();
        map.insert(
            id.clone(),
            Session {
                name: name.to_string(),
                csrf: csrf.clone(),
                started: now,
                last: now,
            },
        );
        (id, csrf)
    }

    /// The account name and CSRF token of a live session, refreshed.
    pub fn find(&self, id: &str, idle: Duration) -> Option<(String, String)> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let s = map.get_mut(id)?;
        if s.last.elapsed() > idle || s.started.elapsed() > ABSOLUTE {
            map.remove(id);
            return None;
        }
        s.last = Instant::now();
        Some((s.name.clone(), s.csrf.clone()))
    }

    pub fn end(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

pub fn random_hex() -> String {
    use rand::RngCore;
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    crate::util::hex(&raw)
}

/// A full walk of one chain, running or done.
pub struct Verification {
    pub started: i64,
    pub by: String,
    /// Records walked so far.
    pub walked: Arc<AtomicU64>,
    /// Records the index counted when it started (for the progress bar).
    pub total: i64,
    /// The outcome once the walk ended.
    pub outcome: Option<Result<Verified, String>>,
}

/// The walks of this process, by tenant.
#[derive(Default)]
pub struct Verifications(Mutex<HashMap<String, Verification>>);

impl Verifications {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Verification>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
