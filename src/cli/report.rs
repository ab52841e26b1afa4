//! `sealgate report`: verify, export, prune and sign the transaction log;
//! the domain risk view; TLS-RPT reports.

use super::*;

#[derive(Subcommand)]
pub(super) enum ReportCommand {
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
    /// row per recipient per attempt) or `html` (a self-contained report:
    /// one page up to 20,000 attempts; with `--out DIR/` a summary page
    /// and the attempts day by day, for any size).
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

/// The log a command reads: a SQLite database (the gateway's, or `--db`),
/// or, on a cluster's shared database, a local copy of the records asked
/// for, which the same readers then read (spool::PgSpool::copy_log).
struct Log {
    conn: rusqlite::Connection,
    /// Holds the copy; removed when the command ends.
    _copy: Option<tempfile::TempDir>,
}

impl std::ops::Deref for Log {
    type Target = rusqlite::Connection;
    fn deref(&self) -> &rusqlite::Connection {
        &self.conn
    }
}

/// Opens the log, with the records `[from, to)` of `tenant` (or all) when it
/// must be copied from the shared database.
fn open_log(
    config: &Config,
    db: Option<PathBuf>,
    (from, to): (i64, i64),
    tenant: Option<&str>,
) -> anyhow::Result<Log> {
    if db.is_none()
        && let Some(url) = config.storage_url()
    {
        let (runtime, storage) = command_storage(config)?;
        let crate::spool::Storage::Postgres(pg) = storage else {
            bail!(
                "storage url {} did not open PostgreSQL",
                crate::config::redact_url(&url)
            );
        };
        let dir = tempfile::Builder::new().prefix("sealgate-log").tempdir()?;
        let conn = rusqlite::Connection::open(dir.path().join("log.db"))?;
        let total = runtime.block_on(pg.count_log(from, to, tenant))?;
        let progress = super::progress::Progress::new(total, "reading the shared log");
        runtime.block_on(pg.copy_log(&conn, from, to, tenant, &|| progress.tick()))?;
        return Ok(Log {
            conn,
            _copy: Some(dir),
        });
    }
    let path = db.unwrap_or_else(|| config.database_path());
    if !path.exists() {
        bail!("no database at {}", path.display());
    }
    let conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("cannot open {}", path.display()))?;
    Ok(Log { conn, _copy: None })
}

pub(super) fn report_command(config: Config, command: ReportCommand) -> anyhow::Result<()> {
    use crate::report::{LogStore, export, log};
    const ALL: (i64, i64) = (i64::MIN, i64::MAX);
    match command {
        ReportCommand::Domains { format, out } => {
            let (runtime, memory) = super::domains::domain_memory(&config)?;
            let policies = Policies::load(config.policy.dir.as_deref())?.current();
            let now = crate::util::now();
            let mut lines = Vec::new();
            for r in runtime.block_on(memory.list())? {
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
                                .map(|l| format!("pinned at {} ", l.name()))
                                .unwrap_or_default(),
                            d.note.clone().unwrap_or_default()
                        ));
                    }
                    for e in excepted {
                        exceptions.push(format!(
                            "{who}: {} until {}{} by {}: {}",
                            e.level.name(),
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
                    "last_level": r.last.name(),
                    "last_seen": rfc3339(r.last_at),
                    "best_level": r.best.name(),
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
                None => crate::util::now() - 86_400,
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
            let conn = open_log(&config, db, (day_start, day_start + 86_400), None)?;
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
            let (runtime, storage) = command_storage(&config)?;
            let tenants = match (tenant, &storage) {
                (Some(t), _) => vec![t],
                (None, crate::spool::Storage::Postgres(pg)) => {
                    runtime.block_on(pg.log_tenants())?
                }
                (None, _) => log::tenants(&open_log(&config, None, ALL, None)?.conn)?,
            };
            for t in &tenants {
                let now = crate::util::now();
                match runtime.block_on(storage.prune(t, before, now))? {
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
            let conn = open_log(&config, db, ALL, tenant.as_deref())?;
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
                let progress =
                    super::progress::Progress::new(log::count(&conn, t)?, &format!("tenant {t}"));
                let verified = log::verify_with_progress(&conn, t, &|| progress.tick())?;
                drop(progress);
                match verified {
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
            let when = |s: &Option<String>, default: i64| -> anyhow::Result<i64> {
                match s {
                    None => Ok(default),
                    Some(s) => crate::config::parse_instant(s, crate::config::DayEdge::Start)
                        .map_err(anyhow::Error::msg),
                }
            };
            let mut sel = export::Selection {
                from: when(&from, 0)?,
                to: when(&to, crate::util::now() + 1)?,
                tenant: tenant.as_deref(),
                progress: None,
            };
            let conn = open_log(&config, db, (sel.from, sel.to), sel.tenant)?;
            let progress = super::progress::Progress::new(export::count(&conn, &sel)?, "export");
            let tick = || progress.tick();
            sel.progress = Some(&tick);
            // A directory: the HTML report in pages, however large the log.
            if let Some(dir) = out
                .as_deref()
                .filter(|p| format == "html" && is_directory(p))
            {
                let pages =
                    crate::report::html::render_pages(&conn, &sel, crate::util::now(), dir)?;
                drop(progress);
                eprintln!(
                    "{pages} pages written to {}; open {}",
                    dir.display(),
                    dir.join("index.html").display()
                );
                return Ok(());
            }
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
                    let page = crate::report::html::render(&conn, &sel, crate::util::now())?;
                    sink.write_all(page.as_bytes())?;
                    (page.len(), "bytes of HTML")
                }
                _ => (export::json_lines(&conn, &sel, &mut sink)?, "records"),
            };
            sink.flush()?;
            drop(progress);
            eprintln!("{n} {what} exported");
            Ok(())
        }
    }
}

/// `--out` names a directory: one that exists, or a path ending in `/`
/// or without an extension.
fn is_directory(path: &std::path::Path) -> bool {
    path.is_dir() || path.as_os_str().to_string_lossy().ends_with('/') || path.extension().is_none()
}
