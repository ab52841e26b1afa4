//! `sealgate queue`: list, show, retry, flush and delete queued messages
//! (through the running gateway's control socket where it must act).

use super::*;

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
    Delete { id: QueueId },
}

pub(super) fn queue(config: Config, command: QueueCommand) -> anyhow::Result<()> {
    let (runtime, storage) = command_storage(&config)?;
    let spool = storage.spool();
    match command {
        QueueCommand::List { json } => {
            let list = runtime.block_on(spool.list())?;
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
                bail!("{id}: no pending recipients");
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
