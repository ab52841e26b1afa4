//! The SMTP server: listeners, connection limits, and one [`session`] per
//! client connection.
//!
//! A listener is `relay` (port 25 style: clients are trusted by network,
//! certificate or AUTH) or `submission` (port 587, RFC 6409: AUTH after
//! STARTTLS, or a client certificate). Every accepted message is handed to
//! the spool, and to the queue once it is durable.

pub mod auth;
pub mod path;
mod session;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::task::TaskTracker;

use crate::config::{Config, ListenerConfig};
use crate::queue::QueueHandle;
use crate::reply::Reply;
use crate::spool::Spool;

pub use auth::Users;

/// What every session shares.
pub struct InboundContext {
    pub config: Arc<Config>,
    pub tls: crate::tls::ServerTls,
    pub users: Arc<Users>,
    /// Password guessing across sessions, and the checks running at once;
    /// kept across reloads.
    pub auth_guard: Arc<auth::Guard>,
    pub spool: Arc<dyn Spool>,
    pub queue: QueueHandle,
    /// Classifies each message as it is received.
    pub policies: Arc<crate::policy::Policies>,
    /// Signs each tenant's mail for its own domains, once every change is made.
    pub dkim: Arc<crate::dkim::Keys>,
    /// Becomes `true` when the server is shutting down.
    pub shutdown: watch::Receiver<bool>,
}

/// The inbound context in force. A reload (SIGHUP) replaces it as a whole;
/// each connection keeps the one that was current when it was accepted, so
/// an open session is never switched to a half-new configuration.
pub struct LiveContext(std::sync::RwLock<Arc<InboundContext>>);

impl LiveContext {
    pub fn new(ctx: InboundContext) -> LiveContext {
        LiveContext(std::sync::RwLock::new(Arc::new(ctx)))
    }

    pub fn current(&self) -> Arc<InboundContext> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn replace(&self, ctx: InboundContext) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ctx);
    }
}

/// Counts connections per client address, for `max_connections_per_client`.
#[derive(Default)]
struct PerClient {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// Holds one client's slot; gives it back when dropped.
struct ClientSlot {
    table: Arc<PerClient>,
    ip: IpAddr,
}

impl PerClient {
    fn acquire(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<ClientSlot> {
        let mut counts = self.counts.lock().ok()?;
        let count = counts.entry(ip).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.table.counts.lock()
            && let Some(c) = counts.get_mut(&self.ip)
        {
            *c -= 1;
            if *c == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Binds every configured listener; fails before anything is accepted if one cannot bind.
pub async fn bind(config: &Config) -> std::io::Result<Vec<(ListenerConfig, TcpListener)>> {
    let mut bound = Vec::new();
    for l in &config.listeners {
        let listener = TcpListener::bind(l.address).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", l.address))
        })?;
        bound.push((l.clone(), listener));
    }
    Ok(bound)
}

/// Accepts connections until shutdown, then waits for the sessions to end.
pub async fn serve(live: Arc<LiveContext>, listeners: Vec<(ListenerConfig, TcpListener)>) {
    let tracker = TaskTracker::new();
    // Sized once: a new `max_connections` takes a restart.
    let global = Arc::new(Semaphore::new(live.current().config.limits.max_connections));
    let per_client = Arc::new(PerClient::default());
    let mut accept_tasks = Vec::new();
    for (lc, listener) in listeners {
        let live = live.clone();
        let tracker = tracker.clone();
        let global = global.clone();
        let per_client = per_client.clone();
        accept_tasks.push(tokio::spawn(async move {
            let mut shutdown = live.current().shutdown.clone();
            loop {
                let (stream, remote) = tokio::select! {
                    r = listener.accept() => match r {
                        Ok(x) => x,
                        Err(e) => {
                            // EMFILE and friends: back off briefly instead of spinning.
                            tracing::warn!(listener = %lc.address, "accept failed: {e}");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    _ = shutdown.changed() => break,
                };
                let _ = stream.set_nodelay(true);
                let ctx = live.current();
                let permit = global.clone().try_acquire_owned().ok();
                let slot =
                    per_client.acquire(remote.ip(), ctx.config.limits.max_connections_per_client);
                let (Some(permit), Some(slot)) = (permit, slot) else {
                    tracker.spawn(refuse(stream, remote));
                    continue;
                };
                let lc = lc.clone();
                tracker.spawn(async move {
                    session::run(ctx, lc, stream, remote).await;
                    drop((permit, slot));
                });
            }
        }));
    }
    for t in accept_tasks {
        let _ = t.await;
    }
    tracker.close();
    // Sessions finish their transaction and close on their own; this bounds
    // how long a stuck client can hold up the shutdown.
    if tokio::time::timeout(std::time::Duration::from_secs(30), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some inbound sessions did not end within 30 s of shutdown");
    }
}

async fn refuse(mut stream: tokio::net::TcpStream, remote: SocketAddr) {
    tracing::info!(%remote, "connection refused: too many connections");
    let mut out = Vec::new();
    Reply::TOO_MANY_CONNECTIONS.write_to(&mut out);
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}
