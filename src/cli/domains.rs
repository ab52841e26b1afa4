//! `sealgate domains`: what each recipient domain's transport has been
//! worth, its downgrades, and the policy's profile and exceptions for it.

use super::*;

#[derive(Subcommand)]
pub(super) enum DomainsCommand {
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

/// The domain memory where the gateway keeps it: the cluster's database,
/// or this node's SQLite file (read without the spool's keys).
pub(super) fn domain_memory(
    config: &Config,
) -> anyhow::Result<(tokio::runtime::Runtime, DomainMemory)> {
    let hold = config.policy.downgrade_hold;
    if config.storage_url().is_some() {
        let (runtime, storage) = command_storage(config)?;
        let store = storage.domains()?;
        return Ok((runtime, DomainMemory::new(Some(store), hold)));
    }
    let db = config.database_path();
    if !db.exists() {
        bail!(
            "no database at {} (has the gateway run with this data_dir?)",
            db.display()
        );
    }
    let memory =
        DomainMemory::open(&db, hold).with_context(|| format!("cannot open {}", db.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok((runtime, memory))
}

pub(super) fn domains(config: Config, command: DomainsCommand) -> anyhow::Result<()> {
    let (runtime, memory) = domain_memory(&config)?;
    let downgrade = |r: &DomainRecord| match r.downgrade_since {
        Some(since) => format!("since {}", time(since)),
        None => "-".into(),
    };
    match command {
        DomainsCommand::List { json } => {
            let list = runtime.block_on(memory.list())?;
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
                    r.last.name(),
                    r.best.name(),
                    time(r.last_at),
                    downgrade(r)
                );
            }
            println!("{} domain(s)", list.len());
            Ok(())
        }
        DomainsCommand::Show { domain, json } => {
            let record = runtime.block_on(memory.show(&domain))?;
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
                    println!("last level: {} ({})", r.last.name(), time(r.last_at));
                    println!("best level: {} ({})", r.best.name(), time(r.best_at));
                    println!("downgrade:  {}", downgrade(r));
                    if let Some(c) = r.confirmed_at {
                        println!("confirmed:  {}", time(c));
                    }
                    for h in &r.hosts {
                        println!(
                            "mx:         {} [{}] {} at {}, valid until {}",
                            h.mx_host,
                            h.address,
                            h.level.name(),
                            time(h.at),
                            time(h.valid_until)
                        );
                        for s in &h.shortfalls {
                            println!("              {s}");
                        }
                    }
                }
            }
            let now = crate::util::now();
            for (tenant, p) in policies.all() {
                let who = tenant.map_or("all tenants".to_string(), |t| format!("tenant {t}"));
                let (profile, exceptions) = p.standing(&domain);
                if let Some(d) = profile {
                    let mut parts = Vec::new();
                    if let Some(c) = d.min_class {
                        parts.push(format!("at least {c}"));
                    }
                    if let Some(l) = d.required {
                        parts.push(format!("pinned at {}", l.name()));
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
                        e.level.name(),
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
            let r = runtime.block_on(memory.confirm(&domain, crate::util::now()))?;
            println!(
                "{}: {} accepted as the new best level",
                r.domain,
                r.best.name()
            );
            Ok(())
        }
    }
}
