//! `sealgate passwords`: pre-agreed envelope passwords per recipient.

use super::*;

#[derive(Subcommand)]
pub(super) enum PasswordsCommand {
    /// Store ADDRESS's password, read from standard input (or made with --generate and printed).
    Set {
        address: String,
        /// The tenant whose recipient this is (default: default_tenant).
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        generate: bool,
    },
    /// Forget ADDRESS's password: its next sealed message gets a fresh one.
    Remove {
        address: String,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// The addresses with a stored password (never the passwords).
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
}

pub(super) fn passwords(config: Config, command: PasswordsCommand) -> anyhow::Result<()> {
    use crate::seal::channel::PasswordStore;
    use crate::seal::password::Password;
    crate::util::private_files();
    crate::util::private_dir(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    // Where the gateway keeps them: a cluster's are its nodes'.
    let (runtime, tables) = command_tables(&config, crate::seal::channel::STORE_SCHEMA)?;
    let store = PasswordStore::new(tables, &config.passwords_key());
    match command {
        PasswordsCommand::Set {
            address,
            tenant,
            generate,
        } => {
            let tenant = tenant_of(&config, tenant)?;
            if !address.contains('@') {
                bail!("`{address}` is not an address");
            }
            let password = if generate {
                Password::generate()
            } else {
                let text = read_password(&format!("password for {address} (one line):"))?;
                let pw = Password::from_text(&text);
                // The envelope is only as strong as this password.
                if pw.canonical().chars().count() < 12 {
                    bail!(
                        "a pre-agreed password needs at least 12 characters (spaces and dashes do not count)"
                    );
                }
                pw
            };
            runtime.block_on(store.set(&tenant, &address, &password))?;
            if generate {
                println!("{}", password.display());
            }
            eprintln!("{address} (tenant {tenant}): password stored");
            Ok(())
        }
        PasswordsCommand::Remove { address, tenant } => {
            let tenant = tenant_of(&config, tenant)?;
            if !runtime.block_on(store.remove(&tenant, &address))? {
                bail!("{address} (tenant {tenant}) has no stored password");
            }
            println!("{address} (tenant {tenant}): password removed");
            Ok(())
        }
        PasswordsCommand::List { tenant } => {
            let tenant = tenant_of(&config, tenant)?;
            let list = runtime.block_on(store.list(&tenant))?;
            for (address, at) in &list {
                println!("{address:<40}  set {}", time(*at));
            }
            println!("{} address(es) with a pre-agreed password", list.len());
            Ok(())
        }
    }
}
