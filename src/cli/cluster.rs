//! `sealgate cluster status`: the nodes that share the storage database,
//! whether each is alive, and how much of the queue each holds.

use super::*;

#[derive(Subcommand)]
pub(super) enum ClusterCommand {
    /// Every node that used the database: its last heartbeat, when the
    /// others may take its queue over, and the messages it holds.
    Status {
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn cluster(config: Config, command: ClusterCommand) -> anyhow::Result<()> {
    let ClusterCommand::Status { json } = command;
    if config.storage_url().is_none() {
        bail!(
            "this gateway keeps its queue in {} for itself alone: set [storage] url (or {}) to a PostgreSQL database to run several nodes (docs/cluster.md)",
            config.database_path().display(),
            crate::config::STORAGE_URL_ENV
        );
    }
    let (runtime, storage) = command_storage(&config)?;
    let crate::spool::Storage::Postgres(pg) = storage else {
        bail!("the storage url did not open PostgreSQL");
    };
    let now = crate::util::now();
    let nodes = runtime.block_on(pg.nodes(now))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&nodes)?);
        return Ok(());
    }
    println!(
        "{:<24}  {:>4}  {:<5}  {:<19}  {:<19}  {:>8}",
        "node", "slot", "state", "last heartbeat", "lease until", "messages"
    );
    for n in &nodes {
        println!(
            "{:<24}  {:>4}  {:<5}  {:<19}  {:<19}  {:>8}",
            n.name,
            n.slot,
            if n.alive { "alive" } else { "dead" },
            n.heartbeat.map(time).unwrap_or_else(|| "never".into()),
            n.heartbeat
                .map(|_| time(n.lease_until))
                .unwrap_or_else(|| "-".into()),
            n.messages
        );
    }
    let alive = nodes.iter().filter(|n| n.alive).count();
    println!("{} node(s), {alive} alive", nodes.len());
    Ok(())
}
