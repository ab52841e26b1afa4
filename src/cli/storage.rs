//! `sealgate storage migrate`: a single node's queue, transaction log and
//! domain memory moved from its SQLite database into the PostgreSQL
//! database of a cluster, the log's chains intact (docs/cluster.md).

use super::*;

#[derive(Subcommand)]
pub(super) enum StorageCommand {
    /// Copy the queue (every message with pending recipients, each
    /// recipient's state), the transaction log and the domain memory into
    /// PostgreSQL, owned by this node, then verify every chain there. Run it with the
    /// gateway stopped; then set `[storage] url` and start it.
    Migrate {
        /// `sqlite` (this configuration's database) or a database file.
        #[arg(long, default_value = "sqlite")]
        from: String,
        /// The PostgreSQL URL (`postgres://…`); default: `[storage] url`.
        #[arg(long)]
        to: Option<String>,
    },
}

pub(super) fn storage(config: Config, command: StorageCommand) -> anyhow::Result<()> {
    let StorageCommand::Migrate { from, to } = command;
    let db = if from == "sqlite" {
        config.database_path()
    } else {
        PathBuf::from(&from)
    };
    if !db.exists() {
        bail!("no database at {}", db.display());
    }
    let Some(url) = to.or_else(|| config.storage_url()) else {
        bail!(
            "--to postgres://… is missing, and neither [storage] url nor {} names a database",
            crate::config::STORAGE_URL_ENV
        );
    };
    if crate::control::request(&config.control_socket(), "ping").is_some() {
        bail!(
            "the gateway is running on {}: stop it first, or it keeps changing the queue being copied",
            config.data_dir.display()
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The same key-encryption key: the cluster's nodes share the key file.
    let key = crate::spool::KeyFile::of(&config, true);
    let source = SqliteSpool::open(
        &db,
        &crate::spool::KeyFile {
            create: false,
            ..key.clone()
        },
    )
    .with_context(|| format!("cannot open {}", db.display()))?;
    let target = runtime
        .block_on(crate::spool::PgSpool::open(
            &url,
            config.storage.ca.as_deref(),
            &key,
            &config.cluster.node,
            None,
        ))
        .with_context(|| format!("cannot open {}", crate::config::redact_url(&url)))?;

    // The log first, every tenant's chain in order, in slices.
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let total: u64 = conn.query_row("SELECT COUNT(*) FROM txlog", [], |r| r.get(0))?;
    let progress = super::progress::Progress::new(total, "log records");
    let mut stmt = conn.prepare(
        "SELECT tenant, seq, at, kind, queue_id, data, prev, hash FROM txlog ORDER BY tenant, seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut slice = Vec::with_capacity(1000);
    let mut records = 0u64;
    loop {
        let row = rows.next()?;
        if let Some(r) = row {
            slice.push((
                r.get::<_, String>(0)?,
                crate::report::log::Stored::from_row(r, 1)?,
            ));
            progress.tick();
        }
        if slice.len() >= 1000 || (row.is_none() && !slice.is_empty()) {
            runtime.block_on(target.import_log(&slice))?;
            records += slice.len() as u64;
            slice.clear();
        }
        if row.is_none() {
            break;
        }
    }
    drop(progress);

    // Then the queue: each message whole, with its recipients' states.
    let list = runtime.block_on(crate::spool::list_all(source.as_ref()))?;
    let progress = super::progress::Progress::new(list.len() as u64, "queued messages");
    let mut messages = 0;
    for summary in &list {
        progress.tick();
        let Some(detail) = runtime.block_on(source.show(summary.id))? else {
            continue;
        };
        // Held or not: the hold goes over with it.
        let Some(job) = runtime.block_on(source.load_all(summary.id))? else {
            continue;
        };
        let message = crate::spool::NewMessage {
            id: detail.id,
            envelope: detail.envelope,
            received_at: detail.received_at,
            expires_at: detail.expires_at,
            client: detail.client,
            body: job.body,
            events: Vec::new(),
        };
        runtime.block_on(target.import_message(&message, &detail.recipients, detail.held))?;
        messages += 1;
    }
    drop(progress);

    // And what the node learnt of each domain, downgrades included.
    use crate::policy::memory::{DomainStore, Select, SqliteDomains};
    let remembered = runtime.block_on(SqliteDomains::open(&db)?.select(Select::All))?;
    let domains = runtime.block_on(target.import_domains(&remembered))?;
    println!(
        "copied {records} log record(s), {messages} queued message(s) and {domains} domain(s) into {} (owned by node {})",
        crate::config::redact_url(&url),
        config.cluster.node
    );

    // What an auditor would run: every chain, walked where it now is.
    let mut broken = 0;
    for tenant in runtime.block_on(target.log_tenants())? {
        match runtime.block_on(target.verify_log(&tenant, &|| {}))? {
            crate::report::log::Verified::Intact { records, .. } => {
                println!("tenant {tenant}: intact, {records} record(s)")
            }
            crate::report::log::Verified::Broken { seq, why } => {
                broken += 1;
                println!("tenant {tenant}: BROKEN at record {seq}: {why}");
            }
        }
    }
    if broken > 0 {
        bail!("{broken} chain(s) broken after the copy");
    }
    println!(
        "done: set [storage] url (or {}) and start the gateway; {} stays as it was",
        crate::config::STORAGE_URL_ENV,
        db.display()
    );
    Ok(())
}
