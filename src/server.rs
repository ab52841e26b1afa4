//! `sealgate serve`: builds every part from the configuration, runs them,
//! and shuts them down in order on SIGTERM or SIGINT: listeners stop,
//! sessions finish their transactions, deliveries in flight are recorded,
//! and everything accepted stays in the spool for the next start.

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;

use crate::config::Config;
use crate::control;
use crate::dns::Dns;
use crate::inbound::{self, InboundContext, Users};
use crate::outbound::Outbound;
use crate::queue::Queue;
use crate::spool::{Spool, SqliteSpool};

pub async fn serve(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    let spool: Arc<dyn Spool> = SqliteSpool::open(&config.database_path())
        .with_context(|| format!("cannot open the spool {}", config.database_path().display()))?;
    let tls = crate::tls::server_config(&config)?;
    let users = match &config.auth.users_file {
        Some(path) => Users::load(path)?,
        None => Users::default(),
    };
    let dns = Dns::new(&config.dns)?;
    let outbound = Arc::new(Outbound::new(
        config.clone(),
        dns,
        Some(config.database_path()),
    )?);
    let queue = Queue::new(config.clone(), spool.clone(), outbound);
    let handle = queue.handle();
    let listeners = inbound::bind(&config).await?;

    let (stop, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: no new connections; finishing transactions in progress");
        let _ = stop.send(true);
    });

    let control = control::Server::bind(&config.control_socket(), spool.clone(), handle.clone())?;
    let control_task = tokio::spawn(control.run(shutdown.clone()));
    let queue_task = tokio::spawn(queue.run(shutdown.clone()));
    let ctx = Arc::new(InboundContext {
        config: config.clone(),
        tls,
        users: Arc::new(users),
        spool,
        queue: handle,
        shutdown,
    });
    let addresses: Vec<String> = listeners
        .iter()
        .map(|(l, _)| format!("{} ({:?})", l.address, l.mode))
        .collect();
    tracing::info!(data_dir = %config.data_dir.display(), "sealgate ready on {}", addresses.join(", "));
    inbound::serve(ctx, listeners).await;
    let _ = queue_task.await;
    let _ = control_task.await;
    let _ = std::fs::remove_file(config.control_socket());
    tracing::info!("stopped; the queue is on disk");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process still dies on them, as by default.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
