//! `sealgate spool rekey`: rotate the keys that encrypt the spool at rest
//! (through the running gateway, which holds them, when it runs).

use super::*;
use crate::spool::at_rest::KekChange;

#[derive(Subcommand)]
pub(super) enum SpoolCommand {
    /// Encrypt every stored message again under a new data key and delete
    /// the old one. With --new-kek or --kek-out, the key-encryption key (the
    /// key file) is new as well.
    Rekey {
        /// Replace the key file with a new key (written beside it first).
        #[arg(long, conflicts_with = "kek_out")]
        new_kek: bool,
        /// Write a new key-encryption key to this file, which must not exist,
        /// and leave the key file alone (for a key kept as a systemd
        /// credential); afterwards only the new file opens the spool.
        #[arg(long, value_name = "FILE")]
        kek_out: Option<PathBuf>,
    },
}

pub(super) fn spool(config: Config, command: SpoolCommand) -> anyhow::Result<()> {
    let SpoolCommand::Rekey { new_kek, kek_out } = command;
    let change = match (new_kek, kek_out) {
        (true, _) => KekChange::Replace,
        (false, Some(path)) => {
            // The gateway may run elsewhere in the file system.
            let path = if path.is_absolute() {
                path
            } else {
                std::env::current_dir()?.join(path)
            };
            KekChange::WriteTo(path)
        }
        (false, None) => KekChange::Keep,
    };
    let line = match &change {
        KekChange::Keep => "rekey keep".to_string(),
        KekChange::Replace => "rekey replace".to_string(),
        KekChange::WriteTo(p) => format!("rekey to {}", p.display()),
    };
    if let Some(answer) = crate::control::request(&config.control_socket(), &line) {
        return report(answer);
    }
    if config.storage_url().is_some() {
        // No node runs here: this command rotates, and the live nodes follow.
        let (runtime, storage) = command_storage(&config)?;
        let crate::spool::Storage::Postgres(pg) = storage else {
            bail!("the storage url did not open PostgreSQL");
        };
        let done = runtime.block_on(pg.rekey(change))?;
        println!("{done}");
        return Ok(());
    }
    let db = config.database_path();
    if !db.exists() {
        bail!("no spool at {}", db.display());
    }
    let spool = SqliteSpool::open(&db, &crate::spool::KeyFile::of(&config, false))
        .with_context(|| format!("cannot open {}", db.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let done = runtime
        .block_on(spool.rekey(change))
        .context("the rotation stopped; the spool opens with the old keys, run it again")?;
    println!("{done}");
    Ok(())
}
