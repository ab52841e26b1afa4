//! The `sealgate` command line. Errors are reported here, at the edge, with
//! their context; the exit status is 0 for success, 1 for a failure, 2 for
//! a usage error.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::message::QueueId;
use crate::policy::Policies;
use crate::policy::memory::{DomainMemory, DomainRecord};
use crate::spool::{RecipientStatus, Spool, SqliteSpool};
use crate::util::rfc3339;

mod account;
mod certs;
mod check;
mod cluster;
mod domains;
mod envelope;
mod manual;
mod passwords;
mod progress;
mod queue;
mod records;
mod report;
mod spool;
mod storage;

use account::{AccountCommand, account};
use certs::{CertsCommand, certs};
use check::check_text;
use domains::{DomainsCommand, domains};
use envelope::{EnvelopeCommand, envelope};
use passwords::{PasswordsCommand, passwords};
use queue::{QueueCommand, queue};
use report::{ReportCommand, report_command};

#[derive(Parser)]
#[command(
    name = "sealgate",
    version,
    about = "SMTP relay gateway that enforces qualified TLS on outbound mail"
)]
struct Cli {
    /// Configuration file; without it the embedded defaults apply.
    #[arg(long, short, global = true, env = "SEALGATE_CONFIG")]
    config: Option<PathBuf>,
    /// How `serve` writes its log to standard error: `text` for people
    /// and grep, `json` (one object per line) for log shippers.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SEALGATE_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve,
    /// Qualify a domain's mail exchangers the way delivery would: DNSSEC,
    /// DANE, MTA-STS, STARTTLS and the certificate, on a real connection
    /// that ends with QUIT. Exit status 0 whenever the check ran.
    Check {
        domain: String,
        /// The stable JSON of docs/check-json.md instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check a configuration file.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Inspect and change the queue.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// Move a node's queue and log into the PostgreSQL of a cluster.
    Storage {
        #[command(subcommand)]
        command: storage::StorageCommand,
    },
    /// The nodes that share one storage database (docs/cluster.md).
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// The spool's encryption at rest: rotate its keys.
    Spool {
        #[command(subcommand)]
        command: spool::SpoolCommand,
    },
    /// Console and API accounts: admins, operators, auditors, tenant-admins.
    Account {
        #[command(subcommand)]
        command: AccountCommand,
    },
    /// Manage the users file.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// What sealgate knows of recipient domains: levels reached, downgrades,
    /// profiles and exceptions.
    Domains {
        #[command(subcommand)]
        command: DomainsCommand,
    },
    /// Pre-agreed envelope passwords per recipient (kept encrypted): a
    /// recipient with one gets every sealed message under it, and no
    /// password travels per message.
    Passwords {
        #[command(subcommand)]
        command: PasswordsCommand,
    },
    /// Recipient S/MIME certificates: confidential mail to an address with
    /// a usable one is encrypted to it instead of sealed with a password.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// The transaction log: verify its hash chains, export it for auditors.
    Report {
        #[command(subcommand)]
        command: ReportCommand,
    },
    /// Seal a message into a password envelope, or open one (support, tests).
    Envelope {
        #[command(subcommand)]
        command: EnvelopeCommand,
    },
    /// The DNS records that protect mail to this gateway: DANE TLSA of the
    /// current and the next key, MTA-STS (with its policy file), TLS-RPT.
    Records { domain: String },
    /// DKIM keys for signing a tenant's mail at the gateway.
    Dkim {
        #[command(subcommand)]
        command: DkimCommand,
    },
    /// Write the manual pages and shell completions into DIR (packaging).
    #[command(hide = true)]
    Generate { dir: PathBuf },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Parse and check a configuration; print the error with file and line.
    Check {
        /// File to check (default: --config).
        file: Option<PathBuf>,
    },
    /// Print the configuration in force with every default filled in (as
    /// postconf does); it reads back as the same configuration.
    Show {
        /// Only what differs from the built-in defaults (as postconf -n).
        #[arg(short = 'n', long = "non-default")]
        changed_only: bool,
        /// File to show (default: --config; without either, the embedded defaults).
        file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DkimCommand {
    /// Make a signing key for DOMAIN, write it (mode 0600, never over an
    /// existing file) and print the DNS TXT record to publish and the
    /// `[[tenant.dkim]]` lines for the configuration.
    Keygen {
        domain: String,
        /// The selector: the key is published at SELECTOR._domainkey.DOMAIN.
        #[arg(long, default_value = "sealgate")]
        selector: String,
        #[arg(long, value_enum, default_value_t = crate::dkim::Algorithm::Rsa)]
        algorithm: crate::dkim::Algorithm,
        /// Key file (default: DOMAIN.SELECTOR.pem in data_dir/dkim).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Read a password from standard input and print a users-file line for NAME.
    Hash { name: String },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sealgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: &Option<PathBuf>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None => Ok(Config::embedded()),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve => {
            let config = load_config(&cli.config)?;
            init_logging(cli.log_format);
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(crate::server::serve(config, cli.config))
        }
        Command::Check { domain, json } => {
            let config = load_config(&cli.config)?;
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let report = runtime.block_on(async {
                let dns = crate::dns::Dns::new(&config.dns)?;
                let policies = Arc::new(Policies::load(config.policy.dir.as_deref())?);
                // A check is not a delivery: it leaves the gateway's memory alone.
                let memory = Arc::new(DomainMemory::new(None, config.policy.downgrade_hold));
                let outbound = crate::outbound::Outbound::new(
                    Arc::new(config),
                    dns,
                    None,
                    policies,
                    memory,
                    None,
                )?;
                anyhow::Ok(outbound.check(&domain).await)
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", check_text(&report));
            }
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            let Some(path) = file.or(cli.config) else {
                bail!("name a file: sealgate config check FILE");
            };
            let config = Config::load(&path)?;
            if let Some(users) = &config.auth.users_file {
                crate::inbound::Users::load(users)?;
            }
            if let (Some(cert), Some(_)) = (&config.tls.certificate, &config.tls.private_key) {
                crate::tls::load_certs(cert)?;
            }
            if let Some(key) = &config.report.signing_key {
                crate::report::heads::Signer::load(key).context("report.signing_key")?;
            }
            crate::dkim::Signers::load(&config)?;
            let policies = Policies::load(config.policy.dir.as_deref())?.current();
            for w in config.warnings() {
                println!("{}: warning: {w}", path.display());
            }
            println!(
                "{}: OK ({} listeners, {} tenants, {} routes; policy from {})",
                path.display(),
                config.listeners.len(),
                config.tenants.len(),
                config.routes.len(),
                policies
                    .files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Show { changed_only, file },
        } => {
            let config = load_config(&file.or(cli.config))?;
            print!(
                "{}",
                config
                    .show(changed_only)
                    .context("cannot write the configuration as TOML")?
            );
            Ok(())
        }
        Command::Queue { command } => queue(load_config(&cli.config)?, command),
        Command::Cluster { command } => cluster::cluster(load_config(&cli.config)?, command),
        Command::Storage { command } => storage::storage(load_config(&cli.config)?, command),
        Command::Spool { command } => spool::spool(load_config(&cli.config)?, command),
        Command::User {
            command: UserCommand::Hash { name },
        } => {
            let password = read_password(&format!("password for {name} (one line):"))?;
            let hash =
                crate::inbound::auth::hash_password(&password).map_err(anyhow::Error::msg)?;
            println!("{name}:{hash}");
            Ok(())
        }
        Command::Envelope { command } => envelope(load_config(&cli.config)?, command),
        Command::Domains { command } => domains(load_config(&cli.config)?, command),
        Command::Passwords { command } => passwords(load_config(&cli.config)?, command),
        Command::Certs { command } => certs(load_config(&cli.config)?, command),
        Command::Account { command } => account(load_config(&cli.config)?, command),
        Command::Report { command } => report_command(load_config(&cli.config)?, command),
        Command::Records { domain } => {
            let config = load_config(&cli.config)?;
            print!("{}", records::records(&config, &domain)?);
            Ok(())
        }
        Command::Dkim {
            command:
                DkimCommand::Keygen {
                    domain,
                    selector,
                    algorithm,
                    out,
                },
        } => {
            let out = match out {
                Some(out) => out,
                None => {
                    let dir = load_config(&cli.config)?.data_dir.join("dkim");
                    crate::util::private_dir(&dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                    dir.join(format!("{domain}.{selector}.pem"))
                }
            };
            let txt = crate::dkim::keygen(&domain, &selector, algorithm, &out)?;
            println!("# Publish in DNS:\n{txt}\n");
            println!(
                "# Add to the tenant whose mail is From: @{domain}, then reload:\n\
                 [[tenant.dkim]]\ndomain = \"{domain}\"\nselector = \"{selector}\"\nkey = \"{}\"",
                out.display()
            );
            Ok(())
        }
        Command::Generate { dir } => {
            for file in manual::generate(<Cli as clap::CommandFactory>::command(), &dir)? {
                println!("{}", file.display());
            }
            Ok(())
        }
    }
}

/// One line from standard input, with a prompt when it is a terminal.
fn read_password(prompt: &str) -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        eprintln!("{prompt}");
    }
    let mut password = String::new();
    std::io::stdin().lock().read_line(&mut password)?;
    let password = password.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        bail!("empty password");
    }
    Ok(password.to_string())
}

fn report(answer: String) -> anyhow::Result<()> {
    match answer.strip_prefix("ok: ") {
        Some(rest) => {
            println!("{rest}");
            Ok(())
        }
        None => bail!("{}", answer.strip_prefix("error: ").unwrap_or(&answer)),
    }
}

/// The tenant a command names, or `default_tenant`; one the configuration
/// does not have is an error.
fn tenant_of(config: &Config, tenant: Option<String>) -> anyhow::Result<String> {
    let t = tenant.unwrap_or_else(|| config.default_tenant.clone());
    if !config.tenants.iter().any(|x| x.id == t) {
        bail!("no tenant `{t}` in the configuration");
    }
    Ok(t)
}

/// A runtime for a command's database work, and the storage the
/// configuration names (the gateway's SQLite file, or the cluster's
/// PostgreSQL), opened as a command: no keys made, no node name taken.
fn command_storage(
    config: &Config,
) -> anyhow::Result<(tokio::runtime::Runtime, crate::spool::Storage)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let storage = runtime.block_on(crate::spool::Storage::open(
        config,
        crate::spool::Opener::Command,
    ))?;
    Ok((runtime, storage))
}

/// The gateway's small tables for a command: the cluster's database, or
/// this node's SQLite file (made, with `schema`, if it is not there yet).
fn command_tables(
    config: &Config,
    schema: &str,
) -> anyhow::Result<(tokio::runtime::Runtime, crate::tables::Tables)> {
    if config.storage_url().is_some() {
        let (runtime, storage) = command_storage(config)?;
        let tables = storage.tables(schema)?;
        return Ok((runtime, tables));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let db = config.database_path();
    let tables = crate::tables::Tables::sqlite(&db, schema)
        .with_context(|| format!("cannot open {}", db.display()))?;
    Ok((runtime, tables))
}

fn time(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// Prefixes each line with its syslog priority (`<3>` error … `<7>`
/// debug), which journald reads from a service's standard error: so
/// `journalctl -p warning -u sealgate` shows the warnings.
struct JournalPriority<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for JournalPriority<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            tracing::Level::DEBUG | tracing::Level::TRACE => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SEALGATE_LOG")
        // hickory's own warnings dump whole DNS messages; what they mean
        // for mail, sealgate says itself in words (DNS: … at start, the
        // reason of each deferral).
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(
                "info,hickory_net=error,hickory_proto=error,hickory_resolver=error",
            )
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // systemd sets JOURNAL_STREAM when standard error goes to the journal,
    // which stamps every line itself.
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    match (format, journal) {
        (LogFormat::Json, _) => builder.json().flatten_event(true).init(),
        (LogFormat::Text, true) => builder
            .event_format(JournalPriority(
                tracing_subscriber::fmt::format()
                    .with_ansi(false)
                    .without_time(),
            ))
            .init(),
        (LogFormat::Text, false) => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}
