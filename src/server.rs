//! `sealgate serve`: builds every part from the configuration, runs them,
//! and shuts them down in order on SIGTERM or SIGINT: listeners stop,
//! sessions finish their transactions, deliveries in flight are recorded,
//! and everything accepted stays in the spool for the next start. SIGHUP
//! reloads the policy directory and the settings of accepting mail (an
//! invalid file leaves the old state in force, and the log says why).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;

use crate::config::Config;
use crate::control;
use crate::dns::{Dns, ResolverHealth};
use crate::inbound::{self, InboundContext, LiveContext, Users};
use crate::outbound::Outbound;
use crate::policy::Policies;
use crate::policy::memory::DomainMemory;
use crate::queue::Queue;
use crate::report::heads;
use crate::report::tlsrpt::Reporter;
use crate::spool::journal::Journal;
use crate::spool::{Opener, Spool, Storage};

/// What the web console reads and acts on.
async fn console_state(
    config: &Arc<Config>,
    storage: &Storage,
    queue: crate::queue::QueueHandle,
    memory: Arc<DomainMemory>,
    policies: Arc<Policies>,
    signer: Option<Arc<heads::Signer>>,
) -> anyhow::Result<Arc<crate::console::Console>> {
    let spool = storage.spool();
    use crate::console::{accounts::AccountStore, index::Index};
    let accounts = AccountStore::new(storage.tables(crate::console::accounts::SCHEMA)?);
    if accounts.list().await?.is_empty() {
        tracing::warn!(
            "console: no accounts yet; add one with `sealgate account add NAME --role admin`"
        );
    }
    // In a cluster the heads a download ends in name the node that signed.
    let node = spool.shared().then(|| config.cluster.node.clone());
    let index = Index::open(&config.console_index_path())
        .with_context(|| format!("{}", config.console_index_path().display()))?;
    Ok(Arc::new(crate::console::Console {
        config: config.clone(),
        accounts,
        inbox: crate::report::received::Inbox::new(
            storage.tables(crate::report::received::SCHEMA)?,
        ),
        tlsrpt_sent: crate::report::tlsrpt::SentLog::new(
            storage.tables(crate::report::tlsrpt::SCHEMA)?,
        ),
        idle: config
            .console
            .as_ref()
            .map_or(std::time::Duration::from_secs(1800), |c| c.idle_timeout),
        guard: Default::default(),
        index: Arc::new(index),
        log: Arc::new(storage.clone()),
        spool,
        queue,
        memory,
        policies,
        signer,
        node,
        verifications: Default::default(),
        started: crate::util::now(),
    }))
}

/// Runs the gateway with `config`, read from `path` (None: the embedded
/// defaults); SIGHUP reads `path` again.
pub async fn serve(config: Config, path: Option<PathBuf>) -> anyhow::Result<()> {
    // Before any listener exists: a SIGHUP or SIGTERM that comes as soon as
    // the port answers must reach our handlers, not the default action
    // (which ends the process).
    let Signals {
        terminate,
        interrupt,
        hangup,
    } = Signals::install()?;
    // A stop asked while starting (a database that does not answer, say)
    // ends the process at once, as the default action did: nothing has
    // been accepted or started yet. After that, it finishes what is in
    // progress.
    let serving = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (stop, shutdown) = watch::channel(false);
    let started = serving.clone();
    tokio::spawn(async move {
        wait_for_stop(terminate, interrupt).await;
        if !started.load(std::sync::atomic::Ordering::SeqCst) {
            tracing::info!("stopped while starting; nothing was accepted");
            std::process::exit(0);
        }
        tracing::info!("shutting down: no new connections; finishing transactions in progress");
        crate::systemd::stopping("finishing transactions in progress");
        let _ = stop.send(true);
    });
    let config = Arc::new(config);
    for w in config.warnings() {
        tracing::warn!("configuration: {w}");
    }
    crate::util::return_large_allocations();
    // Queued bodies, the database and keys are for this user alone.
    crate::util::private_files();
    crate::util::private_dir(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    let storage = Storage::open(&config, Opener::Gateway).await?;
    let spool: Arc<dyn Spool> = storage.spool();
    // In a cluster the heads name the node that wrote them.
    let node = spool.shared().then(|| config.cluster.node.clone());
    let InboundFiles {
        tls,
        users,
        dkim: signers,
    } = InboundFiles::load(&config)?;
    let dns = Dns::new(&config.dns)?;
    tokio::spawn(report_resolver(dns.clone(), config.dns.servers.clone()));
    let signer = match &config.report.signing_key {
        // One key for the heads in the log and those ending a console download.
        Some(path) => Some(Arc::new(
            heads::Signer::load(path).context("report.signing_key")?,
        )),
        None => None,
    };
    let policies = Arc::new(Policies::load(config.policy.dir.as_deref())?);
    let files = policies.current().files.clone();
    tracing::info!("policy from {}", describe(&files));
    let memory = Arc::new(DomainMemory::new(
        Some(storage.domains().context("cannot open the domain memory")?),
        config.policy.downgrade_hold,
    ));
    let (journal, accepted_before) = Journal::open(&config.data_dir)?;
    let dkim = Arc::new(crate::dkim::Keys::new(signers));
    let outbound = Arc::new(
        Outbound::new(
            config.clone(),
            dns,
            Some(storage.tables(crate::qualify::mta_sts::SCHEMA)?),
            policies.clone(),
            memory.clone(),
            Some(journal.clone()),
        )?
        .with_dkim(dkim.clone())
        .with_stores(
            crate::seal::channel::PasswordStore::new(
                storage.tables(crate::seal::channel::STORE_SCHEMA)?,
                &config.passwords_key(),
            ),
            crate::seal::certs::CertStore::new(storage.tables(crate::seal::certs::SCHEMA)?),
        ),
    );
    let reporter = Arc::new(
        Reporter::new(
            &config,
            Arc::new(storage.clone()),
            storage.tables(crate::report::tlsrpt::SCHEMA)?,
            outbound.clone(),
        )
        .map_err(|e| anyhow::anyhow!("TLS-RPT reporter: {e}"))?,
    );
    let reload_outbound = outbound.clone();
    let queue = Queue::new(config.clone(), spool.clone(), outbound, journal);
    // Before the queue is read: what peers took just before a crash is
    // recorded as delivered, not sent again.
    queue.record_journal(accepted_before).await;
    let handle = queue.handle();
    let listeners = inbound::bind(&config).await?;
    // From here on, background work starts: a stop lets it finish.
    serving.store(true, std::sync::atomic::Ordering::SeqCst);

    let console_listener = crate::console::bind(&config).await?;
    let control = control::Server::bind(
        &config.control_socket(),
        spool.clone(),
        handle.clone(),
        memory.clone(),
        reporter.clone(),
    )?;
    // The configuration in force for background work (retention), replaced by a reload.
    let (in_force, in_force_rx) = watch::channel(config.clone());
    let log_store: Arc<dyn crate::report::LogStore> = Arc::new(storage.clone());
    tokio::spawn(crate::report::retention(
        log_store.clone(),
        in_force_rx,
        shutdown.clone(),
    ));
    // Stopped after the queue, so the last head written covers the last record.
    let (heads_stop, heads_shutdown) = watch::channel(false);
    let heads_task = (!config.report.head_interval.is_zero()).then(|| {
        tokio::spawn(heads::write_periodically(
            log_store.clone(),
            node.clone(),
            config.report.head_interval,
            signer.clone(),
            heads_shutdown,
        ))
    });
    // In a cluster every node runs it: the shared record of what was sent
    // lets each report go out once.
    if config.report.tlsrpt {
        tokio::spawn(reporter.run(shutdown.clone()));
    }
    if let Some((listener, tls)) = console_listener {
        let console = console_state(
            &config,
            &storage,
            handle.clone(),
            memory,
            policies.clone(),
            signer,
        )
        .await?;
        tokio::spawn(crate::console::index::follow(
            console.index.clone(),
            log_store.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(crate::console::run(
            listener,
            tls,
            console,
            shutdown.clone(),
        ));
    }
    let control_task = tokio::spawn(control.run(shutdown.clone()));
    let queue_task = tokio::spawn(queue.run(shutdown.clone()));
    tokio::spawn(crate::systemd::watchdog(handle.clone(), shutdown.clone()));
    let live = Arc::new(LiveContext::new(InboundContext {
        config: config.clone(),
        tls,
        users: Arc::new(users),
        auth_guard: Default::default(),
        spool,
        queue: handle,
        policies: policies.clone(),
        dkim: dkim.clone(),
        shutdown: shutdown.clone(),
    }));
    let reload = Reload {
        path,
        policies,
        live: live.clone(),
        outbound: reload_outbound,
        in_force,
    };
    tokio::spawn(reload.on_hangup(hangup, shutdown));
    let addresses: Vec<String> = listeners
        .iter()
        .map(|(l, _)| format!("{} ({:?})", l.address, l.mode))
        .collect();
    match &node {
        Some(node) => tracing::info!(
            data_dir = %config.data_dir.display(),
            "sealgate node {node} ready on {}; storage {}",
            addresses.join(", "),
            storage.describe(&config)
        ),
        None => {
            tracing::info!(data_dir = %config.data_dir.display(), "sealgate ready on {}", addresses.join(", "))
        }
    }
    crate::systemd::ready(&format!("listening on {}", addresses.join(", ")));
    inbound::serve(live, listeners).await;
    let _ = queue_task.await;
    let _ = heads_stop.send(true);
    if let Some(task) = heads_task {
        let _ = task.await;
    }
    let _ = control_task.await;
    let _ = std::fs::remove_file(config.control_socket());
    tracing::info!("stopped; the queue is on disk");
    Ok(())
}

/// The signals `serve` answers, taken over from their default actions.
struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        let take = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("cannot install the {name} handler"))
        };
        Ok(Signals {
            terminate: take(SignalKind::terminate(), "SIGTERM")?,
            interrupt: take(SignalKind::interrupt(), "SIGINT")?,
            hangup: take(SignalKind::hangup(), "SIGHUP")?,
        })
    }
}

async fn wait_for_stop(mut terminate: Signal, mut interrupt: Signal) {
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
}

/// What SIGHUP reloads: the policy directory, and from the configuration
/// file what accepting mail reads per connection (tenants' relay rights,
/// limits, the inbound certificate and key, the users file, DKIM keys),
/// the routes and the queue's limits and schedule. Whatever
/// fails to load leaves the previous state in force, and the log says why.
struct Reload {
    path: Option<PathBuf>,
    policies: Arc<Policies>,
    live: Arc<LiveContext>,
    /// Takes the new configuration for delivery (routes, tenants).
    outbound: Arc<Outbound>,
    in_force: watch::Sender<Arc<Config>>,
}

impl Reload {
    async fn on_hangup(self, mut hup: Signal, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    crate::systemd::reloading();
                    self.once();
                    crate::systemd::ready("reloaded");
                }
                _ = shutdown.changed() => return,
            }
        }
    }

    fn once(&self) {
        match self.policies.reload() {
            Ok(set) => tracing::info!("policy reloaded from {}", describe(&set.files)),
            Err(e) => {
                tracing::error!("policy reload failed, the previous policy stays in force: {e}")
            }
        }
        const RELOADED: &str = "configuration reloaded: tenants (added, removed, changed), limits, routes, queue, inbound certificate, users and DKIM keys";
        match self.inbound() {
            Ok(restart) if restart.is_empty() => tracing::info!("{RELOADED}"),
            Ok(restart) => tracing::warn!(
                "{RELOADED}; changed but in force only after a restart: {}",
                restart.join(", ")
            ),
            Err(e) => tracing::error!(
                "configuration reload failed, the previous configuration stays in force: {e:#}"
            ),
        }
    }

    fn inbound(&self) -> anyhow::Result<Vec<&'static str>> {
        let old = self.live.current();
        let (config, restart) = match &self.path {
            Some(path) => {
                let new = Config::load(path)?;
                for w in new.warnings() {
                    tracing::warn!("configuration: {w}");
                }
                old.config.reloaded(new)
            }
            // The embedded defaults do not change; the files they name may.
            None => ((*old.config).clone(), Vec::new()),
        };
        let InboundFiles { tls, users, dkim } = InboundFiles::load(&config)?;
        // A broken contacts file is found now, not when a message is sealed.
        for t in &config.tenants {
            if let Some(file) = &t.seal.contacts_file {
                crate::seal::channel::Contacts::load(file)
                    .with_context(|| format!("tenant {}", t.id))?;
            }
        }
        // Everything loaded: from here on nothing fails, all goes in at once.
        let config = Arc::new(config);
        old.dkim.replace(dkim);
        self.outbound.set_config(config.clone());
        old.queue.settings(config.clone());
        let _ = self.in_force.send(config.clone());
        self.live.replace(InboundContext {
            config,
            tls,
            users: Arc::new(users),
            auth_guard: old.auth_guard.clone(),
            spool: old.spool.clone(),
            queue: old.queue.clone(),
            policies: old.policies.clone(),
            dkim: old.dkim.clone(),
            shutdown: old.shutdown.clone(),
        });
        Ok(restart)
    }
}

/// What accepting mail reads from files named by the configuration: at
/// start, and again at each reload.
struct InboundFiles {
    tls: crate::tls::ServerTls,
    users: Users,
    dkim: crate::dkim::Signers,
}

impl InboundFiles {
    fn load(config: &Config) -> anyhow::Result<InboundFiles> {
        Ok(InboundFiles {
            tls: crate::tls::server_config(config)?,
            users: match &config.auth.users_file {
                Some(path) => Users::load(path)?,
                None => Users::default(),
            },
            dkim: crate::dkim::Signers::load(config)?,
        })
    }
}

fn describe(files: &[std::path::PathBuf]) -> String {
    files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Says once, at start, in a mail admin's words, when the resolver keeps
/// DNSSEC from working: otherwise the first sign would be every domain
/// reported DNSSEC-bogus or unsigned and qualified mail waiting.
async fn report_resolver(dns: Dns, servers: Vec<std::net::SocketAddr>) {
    let which = if servers.is_empty() {
        "the resolvers in /etc/resolv.conf".to_string()
    } else {
        servers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match dns.health().await {
        ResolverHealth::Validating => {
            tracing::info!(
                "DNS: {which} answer with DNSSEC signatures that validate to the trust anchor"
            )
        }
        ResolverHealth::Unreachable(why) => tracing::warn!(
            "DNS: no answer from {which} ({why}): no domain can be routed until one answers; set [dns] servers to a resolver this host can reach"
        ),
        ResolverHealth::NotValidating(why) => tracing::warn!(
            "DNS: {which} answer, but without DNSSEC signatures that validate ({why}): every domain will look unsigned or bogus, so DANE cannot be used and mail that must be qualified will wait. Point [dns] servers at a resolver that passes DNSSEC records through (unbound or Knot Resolver on this host, for example)"
        ),
    }
}
