//! What the console reads and acts on, who is asking ([`User`]), and the
//! one way the console writes to the log:
//! [`Console::record`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    /// TLS-RPT reports other senders posted (`[console] tlsrpt_receive`).
    pub inbox: crate::report::received::Inbox,
    /// TLS-RPT reports this gateway (or another node) sent.
    pub tlsrpt_sent: crate::report::tlsrpt::SentLog,
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
