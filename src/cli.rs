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
use crate::policy::memory::{DomainMemory, DomainRecord};
use crate::policy::{Policies, level_name, rfc3339};
use crate::spool::{QueueId, RecipientStatus, Spool, SqliteSpool};

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
    #[command(subcommand)]
    command: Command,
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
}

#[derive(Subcommand)]
enum EnvelopeCommand {
    /// Seal MESSAGE (an .eml file) into an opener page; prints the password.
    Seal {
        message: PathBuf,
        /// Where the opener page goes.
        #[arg(long, short, default_value = "secure-message.html")]
        out: PathBuf,
        /// Language of the opener page: en or de (default: seal.language).
        #[arg(long)]
        lang: Option<String>,
        /// Also write the notification mail that carries the page, from the
        /// message's sender to its recipients, ready to send.
        #[arg(long)]
        mail: Option<PathBuf>,
    },
    /// Open an opener page or a raw envelope; reads the password from
    /// standard input and writes the original message.
    Open {
        file: PathBuf,
        /// Where the original message goes.
        #[arg(long, short, default_value = "message.eml")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Parse and check a configuration; print the error with file and line.
    Check {
        /// File to check (default: --config).
        file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Messages with pending recipients.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One message with all its recipients.
    Show {
        id: QueueId,
        #[arg(long)]
        json: bool,
    },
    /// Try a message's pending recipients now.
    Retry { id: QueueId },
    /// Try every queued message now (as `postqueue -f`).
    Flush,
    /// Remove a message from the queue without a bounce.
    Delete { id: QueueId },
}

#[derive(Subcommand)]
enum DomainsCommand {
    /// Every domain delivered to: last and best level, downgrade state.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One domain: levels, each MX host's last verdict, profile and exceptions.
    Show {
        domain: String,
        #[arg(long)]
        json: bool,
    },
    /// Accept a domain's current level as its new best, ending a downgrade
    /// (held high-class mail is then sealed or delivered on its next try).
    Confirm { domain: String },
}

#[derive(Subcommand)]
enum PasswordsCommand {
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

#[derive(Subcommand)]
enum ReportCommand {
    /// Walk every tenant's chain (or one) and name the first broken record.
    /// Exit 1 when a chain is broken.
    Verify {
        #[arg(long)]
        tenant: Option<String>,
        /// A copy of the database to check (default: the gateway's).
        #[arg(long)]
        db: Option<PathBuf>,
        /// Also check the chain heads the gateway wrote to its log: this
        /// file (`-`: standard input, e.g. from journalctl).
        #[arg(long)]
        heads: Option<PathBuf>,
        /// The signing key's public half (the `.pub` file or its base64):
        /// every head line must carry a valid signature.
        #[arg(long, requires = "heads")]
        public_key: Option<String>,
    },
    /// Make an Ed25519 key for `report.signing_key` (and FILE.pub).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// The domain risk view: every recipient domain delivered to, its last
    /// and best level, failing checks, downgrade, and the policy's profile
    /// and exceptions (owner, expiry) for it.
    Domains {
        #[arg(long, value_parser = ["json", "csv", "html"], default_value = "csv")]
        format: String,
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// TLS-RPT (RFC 8460): print one day's report per recipient domain as
    /// JSON lines, from the log; `--send` has the running gateway mail
    /// those not sent yet to the domains that ask for them.
    Tlsrpt {
        /// The day (UTC); default: yesterday.
        #[arg(long)]
        day: Option<String>,
        #[arg(long)]
        db: Option<PathBuf>,
        #[arg(long)]
        send: bool,
    },
    /// Remove log records older than a date or time (what
    /// `retention.log_days` does hourly): a `pruned` record names the last
    /// one removed and its hash, so the chain still verifies.
    Prune {
        /// A date (midnight UTC) or an RFC 3339 time.
        #[arg(long)]
        before: String,
        /// One tenant; default: every tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Export records: `json` (every record, one per line), `csv` (one
    /// row per recipient per attempt) or `html` (a self-contained report).
    Export {
        #[arg(long, value_parser = ["json", "csv", "html"])]
        format: String,
        /// From this date (2026-11-01) or RFC 3339 time; default: the beginning.
        #[arg(long)]
        from: Option<String>,
        /// Up to (not including) this date or time; default: now.
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        db: Option<PathBuf>,
        /// Write here instead of standard output.
        #[arg(long, short)]
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
        None => Ok(Config::default()),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve => {
            let config = load_config(&cli.config)?;
            init_logging();
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(crate::server::serve(config))
        }
        Command::Check { domain, json } => {
            let config = load_config(&cli.config)?;
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let report = runtime.block_on(async {
                let dns = crate::dns::Dns::new(&config.dns)?;
                let policies = Arc::new(Policies::load(config.policy.dir.as_deref())?);
                // A check is not a delivery: it leaves the gateway's memory alone.
                let memory = Arc::new(DomainMemory::open(None, config.policy.downgrade_hold)?);
                let outbound =
                    crate::outbound::Outbound::new(Arc::new(config), dns, None, policies, memory)?;
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
            let policies = Policies::load(config.policy.dir.as_deref())?.current();
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
        Command::Queue { command } => queue(load_config(&cli.config)?, command),
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
        Command::Report { command } => report_command(load_config(&cli.config)?, command),
    }
}

fn report_command(config: Config, command: ReportCommand) -> anyhow::Result<()> {
    use crate::report::{export, log};
    let open = |db: Option<PathBuf>| -> anyhow::Result<rusqlite::Connection> {
        let path = db.unwrap_or_else(|| config.database_path());
        if !path.exists() {
            bail!("no database at {}", path.display());
        }
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(conn)
    };
    match command {
        ReportCommand::Domains { format, out } => {
            let db = config.database_path();
            if !db.exists() {
                bail!("no database at {}", db.display());
            }
            let memory = DomainMemory::open(Some(&db), config.policy.downgrade_hold)?;
            let policies = Policies::load(config.policy.dir.as_deref())?.current();
            let now = crate::queue::now();
            let mut lines = Vec::new();
            for r in memory.list()? {
                let mut exceptions = Vec::new();
                let mut profiles = Vec::new();
                for (tenant, p) in policies.all() {
                    let who = tenant.unwrap_or("all tenants");
                    let (profile, excepted) = p.standing(&r.domain);
                    if let Some(d) = profile {
                        profiles.push(format!(
                            "{who}: {}{}{}",
                            d.min_class
                                .map(|c| format!("at least {c} "))
                                .unwrap_or_default(),
                            d.required
                                .map(|l| format!("pinned at {} ", level_name(l)))
                                .unwrap_or_default(),
                            d.note.clone().unwrap_or_default()
                        ));
                    }
                    for e in excepted {
                        exceptions.push(format!(
                            "{who}: {} until {}{} by {}: {}",
                            level_name(e.level),
                            rfc3339(e.expires),
                            if now >= e.expires { " (expired)" } else { "" },
                            e.approved_by,
                            e.reason
                        ));
                    }
                }
                let failing: Vec<String> = r
                    .hosts
                    .iter()
                    .flat_map(|h| {
                        h.shortfalls
                            .iter()
                            .map(move |s| format!("{}: {s}", h.mx_host))
                    })
                    .collect();
                lines.push(serde_json::json!({
                    "domain": r.domain,
                    "last_level": level_name(r.last),
                    "last_seen": rfc3339(r.last_at),
                    "best_level": level_name(r.best),
                    "downgrade_since": r.downgrade_since.map(rfc3339),
                    "confirmed_at": r.confirmed_at.map(rfc3339),
                    "failing_checks": failing,
                    "profiles": profiles,
                    "exceptions": exceptions,
                }));
            }
            let mut sink: Box<dyn std::io::Write> = match &out {
                Some(path) => Box::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("cannot write {}", path.display()))?,
                ),
                None => Box::new(std::io::stdout().lock()),
            };
            let columns = [
                "domain",
                "last_level",
                "last_seen",
                "best_level",
                "downgrade_since",
                "confirmed_at",
                "failing_checks",
                "profiles",
                "exceptions",
            ];
            match format.as_str() {
                "json" => {
                    serde_json::to_writer_pretty(&mut sink, &lines)?;
                    sink.write_all(b"\n")?;
                }
                "html" => {
                    sink.write_all(crate::report::html::domains(&columns, &lines, now).as_bytes())?;
                }
                _ => {
                    let mut w = csv::Writer::from_writer(sink);
                    w.write_record(columns)?;
                    for l in &lines {
                        w.write_record(columns.iter().map(|c| {
                            match &l[*c] {
                                serde_json::Value::String(s) => s.clone(),
                                serde_json::Value::Array(a) => a
                                    .iter()
                                    .filter_map(|x| x.as_str())
                                    .collect::<Vec<_>>()
                                    .join(" | "),
                                _ => String::new(),
                            }
                        }))?;
                    }
                    w.flush()?;
                }
            }
            eprintln!("{} domain(s)", lines.len());
            Ok(())
        }
        ReportCommand::Tlsrpt { day, db, send } => {
            use crate::report::tlsrpt;
            use std::io::Write;
            let day_start = match &day {
                Some(d) => crate::config::parse_instant(d, crate::config::DayEdge::Start)
                    .map_err(anyhow::Error::msg)?,
                None => crate::queue::now() - 86_400,
            }
            .div_euclid(86_400)
                * 86_400;
            let day = tlsrpt::day_name(day_start);
            if send {
                let answer =
                    crate::control::request(&config.control_socket(), &format!("tlsrpt {day}"))
                        .ok_or_else(|| {
                            anyhow::anyhow!("no gateway is running: reports are sent by it")
                        })?;
                return match answer.strip_prefix("ok: ") {
                    Some(ok) => {
                        println!("{ok}");
                        Ok(())
                    }
                    None => bail!("{}", answer.trim_start_matches("error: ")),
                };
            }
            let conn = open(db)?;
            let by = tlsrpt::Submitter::from_config(&config);
            let days = tlsrpt::aggregate(&conn, day_start, day_start + 86_400)?;
            let mut w = std::io::BufWriter::new(std::io::stdout().lock());
            for (domain, sessions) in &days {
                let report = tlsrpt::report(domain, sessions, day_start, &by);
                writeln!(w, "{}", tlsrpt::to_json(&report))?;
            }
            w.flush()?;
            eprintln!("{day}: {} domain(s) with sessions", days.len());
            Ok(())
        }
        ReportCommand::Prune { before, tenant } => {
            let before = crate::config::parse_instant(&before, crate::config::DayEdge::Start)
                .map_err(anyhow::Error::msg)?;
            let db = config.database_path();
            let tenants = match tenant {
                Some(t) => vec![t],
                None => log::tenants(&open(None)?)?,
            };
            for t in &tenants {
                match crate::report::prune(&db, t, before, crate::queue::now())? {
                    Some(p) => println!(
                        "tenant {t}: records {}–{} removed; a pruned record vouches for them",
                        p.from, p.through
                    ),
                    None => println!("tenant {t}: nothing older"),
                }
            }
            Ok(())
        }
        ReportCommand::Keygen { out } => {
            let public = crate::report::heads::keygen(&out)
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!("{public}");
            eprintln!(
                "key written to {0} (mode 0600), public key to {0}.pub: set report.signing_key = \"{0}\"",
                out.display()
            );
            Ok(())
        }
        ReportCommand::Verify {
            tenant,
            db,
            heads,
            public_key,
        } => {
            let conn = open(db)?;
            let mut head_problems = Vec::new();
            if let Some(path) = heads {
                use base64::Engine;
                let text = if path.as_os_str() == "-" {
                    std::io::read_to_string(std::io::stdin())?
                } else {
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?
                };
                let key = match &public_key {
                    Some(k) => {
                        let text = std::fs::read_to_string(k).unwrap_or_else(|_| k.clone());
                        Some(
                            base64::engine::general_purpose::STANDARD
                                .decode(text.trim())
                                .context("--public-key is neither a .pub file nor base64")?,
                        )
                    }
                    None => None,
                };
                let found = crate::report::heads::parse(&text);
                let found: Vec<_> = found
                    .into_iter()
                    .filter(|h| tenant.as_ref().is_none_or(|t| *t == h.tenant))
                    .collect();
                head_problems = crate::report::heads::check(&conn, &found, key.as_deref())?;
                if found.is_empty() {
                    head_problems.push("no chain-head lines in the given log".into());
                }
                println!(
                    "{} logged head(s) checked{}",
                    found.len(),
                    if key.is_some() {
                        ", signatures required"
                    } else {
                        ""
                    }
                );
                for p in &head_problems {
                    println!("{p}");
                }
            }
            let tenants = match tenant {
                Some(t) => vec![t],
                None => log::tenants(&conn)?,
            };
            let mut broken = 0;
            for t in &tenants {
                match log::verify(&conn, t)? {
                    log::Verified::Intact {
                        records,
                        head,
                        pruned,
                    } => match head {
                        Some((seq, hash)) => {
                            let pruned = pruned
                                .map(|p| format!(" (1–{p} removed by retention)"))
                                .unwrap_or_default();
                            let records = match records {
                                1 => "1 record".to_string(),
                                n => format!("{n} records"),
                            };
                            println!("tenant {t}: intact, {records}{pruned}, head {seq} {hash}")
                        }
                        None => println!("tenant {t}: no records"),
                    },
                    log::Verified::Broken { seq, why } => {
                        broken += 1;
                        println!("tenant {t}: BROKEN at record {seq}: {why}");
                    }
                }
            }
            if broken > 0 {
                bail!("{broken} chain(s) broken");
            }
            if !head_problems.is_empty() {
                bail!("{} logged head(s) do not match", head_problems.len());
            }
            Ok(())
        }
        ReportCommand::Export {
            format,
            from,
            to,
            tenant,
            db,
            out,
        } => {
            let conn = open(db)?;
            let when = |s: &Option<String>, default: i64| -> anyhow::Result<i64> {
                match s {
                    None => Ok(default),
                    Some(s) => crate::config::parse_instant(s, crate::config::DayEdge::Start)
                        .map_err(anyhow::Error::msg),
                }
            };
            let sel = export::Selection {
                from: when(&from, 0)?,
                to: when(&to, crate::queue::now() + 1)?,
                tenant: tenant.as_deref(),
            };
            let mut sink: Box<dyn std::io::Write> = match &out {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("cannot write {}", path.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let (n, what) = match format.as_str() {
                "csv" => (export::csv(&conn, &sel, &mut sink)?, "rows"),
                "html" => {
                    let page = crate::report::html::render(&conn, &sel, crate::queue::now())?;
                    sink.write_all(page.as_bytes())?;
                    (page.len(), "bytes of HTML")
                }
                _ => (export::json_lines(&conn, &sel, &mut sink)?, "records"),
            };
            sink.flush()?;
            eprintln!("{n} {what} exported");
            Ok(())
        }
    }
}

fn passwords(config: Config, command: PasswordsCommand) -> anyhow::Result<()> {
    use crate::seal::channel::PasswordStore;
    use crate::seal::password::Password;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    let store = PasswordStore::open(&config.database_path(), &config.passwords_key())?;
    let tenant_of = |t: Option<String>| -> anyhow::Result<String> {
        let t = t.unwrap_or_else(|| config.default_tenant.clone());
        if !config.tenants.iter().any(|x| x.id == t) {
            bail!("no tenant `{t}` in the configuration");
        }
        Ok(t)
    };
    match command {
        PasswordsCommand::Set {
            address,
            tenant,
            generate,
        } => {
            let tenant = tenant_of(tenant)?;
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
            store.set(&tenant, &address, &password)?;
            if generate {
                println!("{}", password.display());
            }
            eprintln!("{address} (tenant {tenant}): password stored");
            Ok(())
        }
        PasswordsCommand::Remove { address, tenant } => {
            let tenant = tenant_of(tenant)?;
            if !store.remove(&tenant, &address)? {
                bail!("{address} (tenant {tenant}) has no stored password");
            }
            println!("{address} (tenant {tenant}): password removed");
            Ok(())
        }
        PasswordsCommand::List { tenant } => {
            let tenant = tenant_of(tenant)?;
            let list = store.list(&tenant)?;
            for (address, at) in &list {
                println!("{address:<40}  set {}", time(*at));
            }
            println!("{} address(es) with a pre-agreed password", list.len());
            Ok(())
        }
    }
}

fn domains(config: Config, command: DomainsCommand) -> anyhow::Result<()> {
    let db = config.database_path();
    if !db.exists() {
        bail!(
            "no database at {} (has the gateway run with this data_dir?)",
            db.display()
        );
    }
    let memory = DomainMemory::open(Some(&db), config.policy.downgrade_hold)
        .with_context(|| format!("cannot open {}", db.display()))?;
    let downgrade = |r: &DomainRecord| match r.downgrade_since {
        Some(since) => format!("since {}", time(since)),
        None => "-".into(),
    };
    match command {
        DomainsCommand::List { json } => {
            let list = memory.list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            println!(
                "{:<30}  {:<13}  {:<13}  {:<19}  downgrade",
                "domain", "last level", "best level", "last seen"
            );
            for r in &list {
                println!(
                    "{:<30}  {:<13}  {:<13}  {:<19}  {}",
                    r.domain,
                    level_name(r.last),
                    level_name(r.best),
                    time(r.last_at),
                    downgrade(r)
                );
            }
            println!("{} domain(s)", list.len());
            Ok(())
        }
        DomainsCommand::Show { domain, json } => {
            let record = memory.show(&domain)?;
            let policies = Policies::load(config.policy.dir.as_deref())?.current();
            let domain = domain.trim_end_matches('.').to_ascii_lowercase();
            if json {
                let standing: Vec<_> = policies
                    .all()
                    .into_iter()
                    .map(|(tenant, p)| {
                        let (profile, exceptions) = p.standing(&domain);
                        serde_json::json!({
                            "tenant": tenant,
                            "profile": profile.map(|d| serde_json::json!({
                                "pattern": d.pattern, "min_class": d.min_class,
                                "required": d.required, "note": d.note })),
                            "exceptions": exceptions.iter().map(|e| serde_json::json!({
                                "pattern": e.pattern, "level": e.level, "classes": e.classes,
                                "reason": e.reason, "approved_by": e.approved_by,
                                "expires": rfc3339(e.expires) })).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "domain": domain, "memory": record, "policy": standing }))?
                );
                return Ok(());
            }
            println!("domain:     {domain}");
            match &record {
                None => println!("memory:     never delivered to"),
                Some(r) => {
                    println!("last level: {} ({})", level_name(r.last), time(r.last_at));
                    println!("best level: {} ({})", level_name(r.best), time(r.best_at));
                    println!("downgrade:  {}", downgrade(r));
                    if let Some(c) = r.confirmed_at {
                        println!("confirmed:  {}", time(c));
                    }
                    for h in &r.hosts {
                        println!(
                            "mx:         {} [{}] {} at {}, valid until {}",
                            h.mx_host,
                            h.address,
                            level_name(h.level),
                            time(h.at),
                            time(h.valid_until)
                        );
                        for s in &h.shortfalls {
                            println!("              {s}");
                        }
                    }
                }
            }
            let now = crate::queue::now();
            for (tenant, p) in policies.all() {
                let who = tenant.map_or("all tenants".to_string(), |t| format!("tenant {t}"));
                let (profile, exceptions) = p.standing(&domain);
                if let Some(d) = profile {
                    let mut parts = Vec::new();
                    if let Some(c) = d.min_class {
                        parts.push(format!("at least {c}"));
                    }
                    if let Some(l) = d.required {
                        parts.push(format!("pinned at {}", level_name(l)));
                    }
                    if let Some(n) = &d.note {
                        parts.push(n.clone());
                    }
                    println!("profile:    ({who}) {}: {}", d.pattern, parts.join(", "));
                }
                for e in exceptions {
                    let classes: Vec<&str> = e.classes.iter().map(|c| c.name()).collect();
                    println!(
                        "exception:  ({who}) {}: {} suffices for {} until {}{} — {} (approved by {})",
                        e.pattern,
                        level_name(e.level),
                        classes.join(", "),
                        time(e.expires),
                        if now >= e.expires { " [EXPIRED]" } else { "" },
                        e.reason,
                        e.approved_by
                    );
                }
            }
            Ok(())
        }
        DomainsCommand::Confirm { domain } => {
            if let Some(answer) =
                crate::control::request(&config.control_socket(), &format!("confirm {domain}"))
            {
                return report(answer);
            }
            let r = memory.confirm(&domain, crate::queue::now())?;
            println!(
                "{}: {} accepted as the new best level",
                r.domain,
                level_name(r.best)
            );
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

fn envelope(config: Config, command: EnvelopeCommand) -> anyhow::Result<()> {
    use crate::seal::{self, opener::Texts, password::Password};
    match command {
        EnvelopeCommand::Seal {
            message,
            out,
            lang,
            mail,
        } => {
            let raw = std::fs::read(&message)
                .with_context(|| format!("cannot read {}", message.display()))?;
            let lang = lang.unwrap_or_else(|| config.seal.language.clone());
            let Some(texts) = Texts::for_language(&lang) else {
                bail!("no opener texts for language {lang:?} (en, de)");
            };
            let password = Password::generate();
            let envelope = seal::seal_message(
                &raw,
                &password,
                config.seal.iterations,
                config.seal.max_size,
            )
            .with_context(|| format!("cannot seal {}", message.display()))?;
            std::fs::write(&out, seal::opener::render(&envelope, &texts))
                .with_context(|| format!("cannot write {}", out.display()))?;
            eprintln!("sealed {} into {}", message.display(), out.display());
            if let Some(path) = mail {
                let (from, to) = seal::content::addresses_of(&raw);
                let Some(from) = from else {
                    bail!(
                        "{} has no From address to send the notification from",
                        message.display()
                    );
                };
                if to.is_empty() {
                    bail!("{} has no To or Cc address to notify", message.display());
                }
                let id = format!("{:016x}.sealed@{}", rand::random::<u64>(), config.hostname);
                let notification = seal::notify::notification(
                    &envelope,
                    &texts,
                    &seal::notify::Words::for_language(&lang),
                    &seal::notify::Addressing {
                        from: &from,
                        to: &to,
                        message_id: &id,
                        date: chrono::Utc::now().timestamp(),
                    },
                );
                std::fs::write(&path, notification)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                eprintln!(
                    "notification mail for {} in {}",
                    to.join(", "),
                    path.display()
                );
            }
            println!("{}", password.display());
            Ok(())
        }
        EnvelopeCommand::Open { file, out } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let password = read_password("password:")?;
            let content = seal::open_file(&bytes, &password)
                .with_context(|| format!("cannot open {}", file.display()))?;
            std::fs::write(&out, content.original()?)
                .with_context(|| format!("cannot write {}", out.display()))?;
            eprintln!(
                "opened {}: {:?} written to {}",
                file.display(),
                content.header("Subject").unwrap_or_default(),
                out.display()
            );
            Ok(())
        }
    }
}

fn queue(config: Config, command: QueueCommand) -> anyhow::Result<()> {
    let db = config.database_path();
    if !db.exists() {
        bail!(
            "no spool at {} (has the gateway run with this data_dir?)",
            db.display()
        );
    }
    let spool = SqliteSpool::open(&db).with_context(|| format!("cannot open {}", db.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    match command {
        QueueCommand::List { json } => {
            let list = spool.list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            println!(
                "{:<16}  {:>9}  {:<19}  {:>7}  {:<30}  last reply",
                "id", "size", "received", "pending", "sender"
            );
            for m in &list {
                println!(
                    "{:<16}  {:>9}  {:<19}  {:>3}/{:<3}  {:<30}  {}",
                    m.id,
                    m.size,
                    time(m.received_at),
                    m.pending,
                    m.recipients,
                    if m.sender.is_empty() { "<>" } else { &m.sender },
                    m.last_reply.as_deref().unwrap_or("-")
                );
            }
            println!("{} message(s)", list.len());
            Ok(())
        }
        QueueCommand::Show { id, json } => {
            let Some(m) = spool.show(id)? else {
                bail!("{id}: no such message");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&m)?);
                return Ok(());
            }
            let e = &m.envelope;
            println!("id:        {}", m.id);
            println!("tenant:    {}", e.tenant);
            println!("from:      <{}>", e.sender);
            println!("client:    {}", m.client);
            println!("size:      {}", m.size);
            println!("received:  {}", time(m.received_at));
            println!("expires:   {}", time(m.expires_at));
            for r in &m.recipients {
                let status = match r.status {
                    RecipientStatus::Pending => {
                        format!("pending, next try {}", time(r.next_attempt))
                    }
                    RecipientStatus::Delivered => "delivered".into(),
                    RecipientStatus::Failed => "failed".into(),
                };
                println!(
                    "to:        <{}>  {status}, {} attempt(s)",
                    r.address, r.attempts
                );
                if let Some(reply) = &r.last_reply {
                    println!("           {reply}");
                }
            }
            Ok(())
        }
        QueueCommand::Retry { id } => {
            if let Some(answer) =
                crate::control::request(&config.control_socket(), &format!("retry {id}"))
            {
                return report(answer);
            }
            let jobs = runtime.block_on(spool.retry(id, crate::queue::now()))?;
            if jobs.is_empty() {
                bail!("{id}: no pending recipients");
            }
            println!("{id}: due now; the gateway is not running, it will try at its next start");
            Ok(())
        }
        QueueCommand::Flush => {
            if let Some(answer) = crate::control::request(&config.control_socket(), "flush") {
                return report(answer);
            }
            let jobs = runtime.block_on(spool.retry_all(crate::queue::now()))?;
            println!(
                "{} destination(s) due now; the gateway is not running, it will try at its next start",
                jobs.len()
            );
            Ok(())
        }
        QueueCommand::Delete { id } => {
            if let Some(answer) =
                crate::control::request(&config.control_socket(), &format!("delete {id}"))
            {
                return report(answer);
            }
            if !runtime.block_on(spool.delete(id))? {
                bail!("{id}: no such message");
            }
            println!("{id}: deleted");
            Ok(())
        }
    }
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

fn time(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|| unix.to_string())
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SEALGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// `sealgate check` for people: one block per MX host.
fn check_text(report: &crate::outbound::CheckReport) -> String {
    use std::fmt::Write;
    let name = |v: &dyn erased::Name| v.name();
    let mut out = format!("{}: {}\n", report.domain, name(&report.level));
    if let Some(e) = &report.error {
        let _ = writeln!(out, "  {e}");
    }
    for mx in &report.mx {
        let _ = writeln!(
            out,
            "\nMX {} {} [{}]: {}",
            mx.preference,
            mx.host,
            mx.address.as_deref().unwrap_or("-"),
            name(&mx.level)
        );
        if let Some(e) = &mx.error {
            let _ = writeln!(out, "  not used: {e}");
        }
        for c in &mx.checks {
            let _ = writeln!(
                out,
                "  {:<13} {:<15} {}",
                name(&c.name),
                name(&c.status),
                c.detail
            );
        }
        if let Some(t) = &mx.tls {
            let _ = writeln!(
                out,
                "  tls           {} {} {}{}",
                t.version,
                t.cipher_suite,
                t.kx_group.as_deref().unwrap_or("-"),
                t.peer_key
                    .as_ref()
                    .map(|k| format!(", {} {} bits", k.algorithm, k.bits))
                    .unwrap_or_default()
            );
            for c in &t.chain {
                let _ = writeln!(
                    out,
                    "  cert          {} (issuer {}, until {})",
                    c.subject, c.issuer, c.not_after
                );
            }
        }
    }
    out
}

mod erased {
    /// The serde name of a unit enum variant (`qualified`, `key_size`, …).
    pub trait Name {
        fn name(&self) -> String;
    }
    impl<T: serde::Serialize> Name for T {
        fn name(&self) -> String {
            serde_json::to_value(self)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        }
    }
}
