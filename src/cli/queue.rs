//! `sealgate queue`: list, show, retry, flush, hold, release, bounce and
//! delete queued messages (through the running gateway's control socket
//! where it must act).

use super::*;
use crate::queue::{Act, Acted};
use crate::spool::Operator;

#[derive(Subcommand)]
pub(super) enum QueueCommand {
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
    Delete {
        id: QueueId,
        /// Why, for the transaction log.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Keep a message back from delivery until it is released.
    Hold {
        id: QueueId,
        #[arg(long)]
        reason: Option<String>,
    },
    /// End a hold: the message is tried now.
    Release { id: QueueId },
    /// Give up a message's pending recipients now and send its sender a
    /// DSN that says why.
    Bounce {
        id: QueueId,
        /// Why, for the DSN and the transaction log (the sender reads it).
        #[arg(long)]
        reason: String,
    },
}

/// A reason from the command line: one line of printable text, so that
/// the control socket's line protocol and the DSN stay whole.
fn reason_of(reason: Option<String>) -> anyhow::Result<Option<String>> {
    match reason {
        Some(r) if r.chars().any(char::is_control) => {
            bail!("--reason: one line of text without control characters")
        }
        Some(r) if r.len() > 500 => bail!("--reason: at most 500 bytes"),
        Some(r) if r.trim().is_empty() => Ok(None),
        r => Ok(r.map(|r| r.trim().to_string())),
    }
}

pub(super) fn queue(config: Config, command: QueueCommand) -> anyhow::Result<()> {
    let (runtime, storage) = command_storage(&config)?;
    let spool = storage.spool();
    match command {
        QueueCommand::List { json } => {
            let list = runtime.block_on(crate::spool::list_all(spool.as_ref()))?;
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
                    "{:<16}{} {:>9}  {:<19}  {:>3}/{:<3}  {:<30}  {}",
                    m.id,
                    if m.held { "!" } else { " " },
                    m.size,
                    time(m.received_at),
                    m.pending,
                    m.recipients,
                    if m.sender.is_empty() { "<>" } else { &m.sender },
                    m.last_reply.as_deref().unwrap_or("-")
                );
            }
            let held = list.iter().filter(|m| m.held).count();
            if held > 0 {
                println!("{} message(s), {held} held (marked !)", list.len());
            } else {
                println!("{} message(s)", list.len());
            }
            Ok(())
        }
        QueueCommand::Show { id, json } => {
            let Some(m) = runtime.block_on(spool.show(id))? else {
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
            if m.held {
                println!("held:      yes, until released (sealgate queue release {id})");
            }
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
            let jobs = runtime.block_on(spool.retry(id, crate::util::now()))?;
            if jobs.is_empty() {
                bail!(
                    "{}",
                    runtime.block_on(crate::control::nothing_to_retry(id, spool.as_ref()))
                );
            }
            println!("{id}: due now; the gateway is not running, it will try at its next start");
            Ok(())
        }
        QueueCommand::Flush => {
            if let Some(answer) = crate::control::request(&config.control_socket(), "flush") {
                return report(answer);
            }
            let jobs = runtime.block_on(spool.retry_all(crate::util::now()))?;
            println!(
                "{} destination(s) due now; the gateway is not running, it will try at its next start",
                jobs.len()
            );
            Ok(())
        }
        QueueCommand::Delete { id, reason } => {
            act(&config, &runtime, spool, id, Act::Delete, reason)
        }
        QueueCommand::Hold { id, reason } => act(&config, &runtime, spool, id, Act::Hold, reason),
        QueueCommand::Bounce { id, reason } => {
            if reason.trim().is_empty() {
                bail!("--reason: say why; the sender reads it in the bounce");
            }
            act(&config, &runtime, spool, id, Act::Bounce, Some(reason))
        }
        QueueCommand::Release { id } => act(&config, &runtime, spool, id, Act::Release, None),
    }
}

/// Deletes, holds, releases or bounces through the running gateway, which
/// waits for an attempt in flight; or, when none runs, on the spool itself.
fn act(
    config: &Config,
    runtime: &tokio::runtime::Runtime,
    spool: std::sync::Arc<dyn crate::spool::Spool>,
    id: QueueId,
    act: Act,
    reason: Option<String>,
) -> anyhow::Result<()> {
    let reason = reason_of(reason)?;
    let verb = act.name();
    let line = match &reason {
        Some(r) => format!("{verb} {id} {r}"),
        None => format!("{verb} {id}"),
    };
    if let Some(answer) = crate::control::request(&config.control_socket(), &line) {
        return report(answer);
    }
    let by = Operator {
        by: format!("operator (sealgate queue {verb})"),
        reason,
    };
    // In a cluster, another live node that owns the message does it.
    let acted = match runtime.block_on(crate::queue::elsewhere(spool.as_ref(), id, act, &by)) {
        Some(done) => done.map_err(|e| anyhow::anyhow!("{e}"))?,
        None => {
            runtime
                .block_on(crate::queue::apply(config, spool.as_ref(), id, act, by))?
                .0
        }
    };
    if !acted.done() {
        bail!("{}", crate::control::acted_text(id, &acted));
    }
    println!("{}", crate::control::acted_text(id, &acted));
    if acted == Acted::Released {
        println!("the gateway is not running: it will try at its next start");
    }
    Ok(())
}
