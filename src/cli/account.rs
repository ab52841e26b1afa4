//! `sealgate account`: who may use the web console and the HTTP API.

use super::*;
use crate::console::accounts::{AccountStore, Role};

#[derive(Subcommand)]
pub(super) enum AccountCommand {
    /// Add an account; its password is read from standard input (one line).
    Add {
        name: String,
        /// admin, operator, auditor or tenant-admin.
        #[arg(long)]
        role: String,
        /// The one tenant a tenant-admin sees.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Set a new password, read from standard input.
    Passwd { name: String },
    /// Remove an account and its API tokens.
    Remove { name: String },
    /// The accounts, their roles and tenants.
    List,
    /// Give the account a second factor (RFC 6238 one-time codes) and print
    /// its provisioning URI for an authenticator app; --off removes it.
    Totp {
        name: String,
        #[arg(long)]
        off: bool,
    },
    /// Print a new API token for the account (`Authorization: Bearer …`);
    /// only its hash is kept, so write it down now.
    Token { name: String },
}

pub(super) fn account(config: Config, command: AccountCommand) -> anyhow::Result<()> {
    crate::util::private_files();
    crate::util::private_dir(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    // Where the gateway keeps them: a cluster's accounts are its nodes'.
    let (runtime, tables) = command_tables(&config, crate::console::accounts::SCHEMA)?;
    let store = AccountStore::new(tables);
    let now = crate::util::now();
    match command {
        AccountCommand::Add { name, role, tenant } => {
            let role: Role = role.parse()?;
            if let Some(t) = &tenant {
                tenant_of(&config, Some(t.clone()))?;
            }
            let password = read_password(&format!("password for {name} (one line):"))?;
            let a = runtime.block_on(store.add(&name, role, tenant.as_deref(), &password, now))?;
            println!(
                "account {} added: {}{}",
                a.name,
                a.role,
                a.tenant
                    .map(|t| format!(" of tenant {t}"))
                    .unwrap_or_default()
            );
        }
        AccountCommand::Passwd { name } => {
            let password = read_password(&format!("new password for {name} (one line):"))?;
            runtime.block_on(store.set_password(&name, &password))?;
            println!("password of {name} changed; its sessions have ended");
        }
        AccountCommand::Remove { name } => {
            runtime.block_on(store.remove(&name))?;
            println!("account {name} removed, with its API tokens");
        }
        AccountCommand::List => {
            for a in runtime.block_on(store.list())? {
                println!(
                    "{}\t{}\t{}\t{}\tsince {}",
                    a.name,
                    a.role,
                    a.tenant.as_deref().unwrap_or("-"),
                    if a.totp { "totp" } else { "password" },
                    crate::util::rfc3339(a.created_at)
                );
            }
        }
        AccountCommand::Totp { name, off: true } => {
            runtime.block_on(store.disable_totp(&name))?;
            println!("{name} logs in with its password alone");
        }
        AccountCommand::Totp { name, off: false } => {
            let uri = runtime
                .block_on(store.enable_totp(&name, &format!("sealgate {}", config.hostname)))?;
            println!("{uri}");
            eprintln!(
                "add this to {name}'s authenticator app; from now on the login asks for its code"
            );
        }
        AccountCommand::Token { name } => {
            println!("{}", runtime.block_on(store.new_token(&name, now))?)
        }
    }
    Ok(())
}
