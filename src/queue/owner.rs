//! In a cluster, an operator's delete, hold or bounce is done by the node
//! that owns the message: only its queue knows whether an attempt is in
//! flight, and waits for it (`spool::pg_acts` carries the request and the
//! answer). This module decides when to ask, and writes and reads the
//! answer.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{Act, Acted, Event};
use crate::message::QueueId;
use crate::spool::{Asked, Forwarded, Operator, Spool};

/// The outcome of `act` on `id` when another live node owns the message
/// and did it; `None` when it is for this node. A release is always for
/// the node asked: it delivers what it releases, and nothing of a held
/// message is in flight.
pub async fn elsewhere(
    spool: &dyn Spool,
    id: QueueId,
    act: Act,
    by: &Operator,
) -> Option<Result<Acted, String>> {
    if act == Act::Release || !spool.shared() {
        return None;
    }
    match spool.forward(id, act.name(), by).await {
        Ok(Forwarded::Here) => None,
        Ok(Forwarded::There { node, answer }) => Some(read(&answer).unwrap_or_else(|| {
            Err(format!(
                "node {node} answered the {} with {answer:?}, which this version does not read",
                act.name()
            ))
        })),
        Err(e) => Some(Err(format!(
            "cannot have the node that owns {id} do the {}: {e} (that node may still do it: \
             see `sealgate queue show {id}`)",
            act.name()
        ))),
    }
}

/// Puts an act another node asked of this one, the owner, into this
/// node's queue (`events`), where it waits for any attempt in flight, and
/// writes the outcome back for the node that asked.
pub(super) fn take(events: &mpsc::UnboundedSender<Event>, spool: Arc<dyn Spool>, asked: Asked) {
    let (done, result) = oneshot::channel();
    match Act::from_name(&asked.act) {
        Some(act) => {
            tracing::info!(id = %asked.id, "{} asked by node {}", asked.act, asked.from);
            let _ = events.send(Event::Act {
                id: asked.id,
                act,
                by: asked.by.clone(),
                done,
            });
        }
        None => {
            let _ = done.send(Err(format!("no such act: {:?}", asked.act)));
        }
    }
    reply(spool, asked, result);
}

/// Writes `result` back to the node that asked, once the queue has done
/// the act; tries for a minute while the database is away.
fn reply(spool: Arc<dyn Spool>, asked: Asked, result: oneshot::Receiver<Result<Acted, String>>) {
    tokio::spawn(async move {
        let result = result
            .await
            .unwrap_or_else(|_| Err("the queue of the owning node stopped".to_string()));
        let text = write(&result);
        for _ in 0..60 {
            match spool.answer(asked.ask, &text).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(id = %asked.id, "cannot answer node {}: {e}", asked.from);
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    });
}

/// The answer as a line of text: a word, then the bounce's figures or the
/// error's text.
fn write(result: &Result<Acted, String>) -> String {
    match result {
        Ok(Acted::Missing) => "missing".into(),
        Ok(Acted::Deleted) => "deleted".into(),
        Ok(Acted::Held) => "held".into(),
        Ok(Acted::AlreadyHeld) => "already-held".into(),
        Ok(Acted::Released) => "released".into(),
        Ok(Acted::NotHeld) => "not-held".into(),
        Ok(Acted::Bounced { recipients, dsn }) => match dsn {
            Some(dsn) => format!("bounced {recipients} {dsn}"),
            None => format!("bounced {recipients}"),
        },
        Err(e) => format!("error {e}"),
    }
}

/// The answer [`write`] wrote; `None` if it is not one.
fn read(answer: &str) -> Option<Result<Acted, String>> {
    let (word, rest) = answer.split_once(' ').unwrap_or((answer, ""));
    Some(Ok(match word {
        "missing" => Acted::Missing,
        "deleted" => Acted::Deleted,
        "held" => Acted::Held,
        "already-held" => Acted::AlreadyHeld,
        "released" => Acted::Released,
        "not-held" => Acted::NotHeld,
        "bounced" => {
            let mut parts = rest.split(' ');
            let recipients = parts.next()?.parse().ok()?;
            let dsn = match parts.next() {
                Some(id) => Some(id.parse().ok()?),
                None => None,
            };
            Acted::Bounced { recipients, dsn }
        }
        "error" => return Some(Err(rest.to_string())),
        _ => return None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_answer_reads_back_as_written() {
        let all = [
            Ok(Acted::Missing),
            Ok(Acted::Deleted),
            Ok(Acted::Held),
            Ok(Acted::AlreadyHeld),
            Ok(Acted::Released),
            Ok(Acted::NotHeld),
            Ok(Acted::Bounced {
                recipients: 3,
                dsn: Some(QueueId(0x0123_4567_89AB_CDEF)),
            }),
            Ok(Acted::Bounced {
                recipients: 1,
                dsn: None,
            }),
            Err("the spool said no: disk full".to_string()),
        ];
        for result in all {
            assert_eq!(read(&write(&result)), Some(result.clone()), "{result:?}");
        }
        assert_eq!(read("bounced many"), None);
        assert_eq!(read("exploded"), None);
    }
}
