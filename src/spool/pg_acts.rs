//! Operators' acts across a cluster: a delete, hold or bounce asked on one
//! node, for a message that another live node owns, is done by the owner.
//!
//! Only the owner knows whether an attempt for the message is in flight,
//! and only it can wait for that attempt to be recorded before it acts. A
//! bounce done elsewhere could otherwise tell the sender "returned" of a
//! message that the owner was handing to the next hop at that moment, and
//! the log would show an attempt after the act.
//!
//! The request is a row of `node_acts`: the asking node writes it and polls
//! for the answer; the owner takes the rows addressed to it once a second
//! (its queue's housekeeping), does the act through its own queue, and
//! writes the answer. When the owner dies first, the asking node asks
//! again whoever owns the message then, or does the act itself.

use std::time::Duration;

use super::postgres::PgSpool;
use super::{Asked, Forwarded, Operator, QueueId, SpoolError};
use crate::util::now;

/// How often the asking node looks for the answer.
const POLL: Duration = Duration::from_millis(100);

/// Requests older than this (seconds) were left by a node that died while
/// it waited; whoever next asks deletes them.
const STALE: i64 = 86_400;

impl PgSpool {
    pub(super) async fn forward_act(
        &self,
        id: QueueId,
        act: &str,
        by: &Operator,
    ) -> Result<Forwarded, SpoolError> {
        let key = id.0 as i64;
        loop {
            let c = self.client().await?;
            let owner: Option<String> = c
                .query_opt(
                    "SELECT m.owner FROM messages m JOIN nodes n ON n.name = m.owner
                     WHERE m.id = $1 AND m.purge_at IS NULL AND m.owner <> $2
                       AND n.heartbeat + n.lease >= $3",
                    &[&key, &self.node(), &now()],
                )
                .await?
                .map(|r| r.get(0));
            let Some(owner) = owner else {
                return Ok(Forwarded::Here);
            };
            // Random rather than from a sequence (docs/cluster.md says why).
            let ask = rand::random::<i64>();
            c.execute(
                "INSERT INTO node_acts (id, node, queue_id, act, by_whom, reason, asked_by, asked_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                        &ask,
                        &owner,
                        &key,
                        &act,
                        &by.by,
                        &by.reason,
                        &self.node(),
                        &now(),
                    ],
                )
                .await?;
            drop(c);
            tracing::info!(%id, "{act} asked of node {owner}, which owns the message");
            match self.wait_for_answer(ask, &owner).await? {
                Some(answer) => {
                    return Ok(Forwarded::There {
                        node: owner,
                        answer,
                    });
                }
                None => tracing::warn!(
                    %id,
                    "node {owner} stopped before it answered the {act}; asking the message's owner now"
                ),
            }
        }
    }

    /// The owner's answer; `None` when the owner stopped beating first.
    async fn wait_for_answer(&self, ask: i64, owner: &str) -> Result<Option<String>, SpoolError> {
        loop {
            tokio::time::sleep(POLL).await;
            let c = self.client().await?;
            let row = c
                .query_one(
                    "SELECT (SELECT answer FROM node_acts WHERE id = $1),
                            COALESCE((SELECT heartbeat + lease >= $3 FROM nodes WHERE name = $2),
                                     false)",
                    &[&ask, &owner, &now()],
                )
                .await?;
            let (answer, alive): (Option<String>, bool) = (row.get(0), row.get(1));
            if answer.is_some() || !alive {
                c.execute(
                    "DELETE FROM node_acts WHERE id = $1 OR asked_at < $2",
                    &[&ask, &(now() - STALE)],
                )
                .await?;
                return Ok(answer);
            }
        }
    }

    /// Hands out the requests addressed to this node, each once.
    pub(super) async fn take_asked(&self) -> Result<Vec<Asked>, SpoolError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "UPDATE node_acts SET taken = true WHERE node = $1 AND NOT taken
                 RETURNING id, queue_id, act, by_whom, reason, asked_by",
                &[&self.node()],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Asked {
                ask: r.get(0),
                id: QueueId(r.get::<_, i64>(1) as u64),
                act: r.get(2),
                by: Operator {
                    by: r.get(3),
                    reason: r.get(4),
                },
                from: r.get(5),
            })
            .collect())
    }

    pub(super) async fn give_answer(&self, ask: i64, answer: &str) -> Result<(), SpoolError> {
        self.client()
            .await?
            .execute(
                "UPDATE node_acts SET answer = $2 WHERE id = $1",
                &[&ask, &answer],
            )
            .await?;
        Ok(())
    }
}
