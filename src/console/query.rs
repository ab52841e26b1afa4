//! The console's one query layer: what the pages and the API read and
//! do, each scoped to what the asking account may see.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::index::Filter;
use super::session::refuse;
use super::state::{Console, User};
use crate::message::QueueId;
use crate::util::now;

/// A failure of ours: its details go to the gateway's log, not to the
/// browser (a tenant's customer has no business reading paths or SQL).
pub(super) fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!("console: {e}");
    refuse(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error; the gateway's log says more",
    )
}

/// What the dashboard shows.
pub struct Overview {
    pub totals: super::index::Totals,
    pub chains: Vec<super::index::ChainStatus>,
    pub depth: crate::spool::QueueDepth,
    pub downgraded: Vec<crate::policy::memory::DomainRecord>,
    pub now: i64,
}

pub(super) async fn overview(console: &Arc<Console>, user: &User) -> Result<Overview, Response> {
    let scope = user.scope().map(str::to_string);
    let now = now();
    let (totals, chains) = console
        .index
        .with(move |i| {
            Ok((
                i.totals(scope.as_deref(), now, 14)?,
                i.chains(scope.as_deref())?,
            ))
        })
        .await
        .map_err(internal)?;
    let depth = console.spool.depth().await.map_err(internal)?;
    // Domains are shared by all tenants: a tenant-admin sees none here.
    let downgraded = match user.scope() {
        Some(_) => Vec::new(),
        None => console.memory.downgraded().await.map_err(internal)?,
    };
    Ok(Overview {
        totals,
        chains,
        depth,
        downgraded,
        now,
    })
}

pub(super) async fn search(
    console: &Arc<Console>,
    user: &User,
    filter: Filter,
) -> Result<super::index::Page, Response> {
    let scope = user.scope().map(str::to_string);
    console
        .index
        .with(move |i| i.search(&filter, scope.as_deref()))
        .await
        .map_err(internal)
}

/// A message's records as the log holds them, if this user may see them.
pub(super) async fn records(
    console: &Arc<Console>,
    user: &User,
    id: &str,
) -> Result<(String, Vec<crate::report::log::Stored>), Response> {
    let queue_id: QueueId = id
        .parse()
        .map_err(|e: String| refuse(StatusCode::BAD_REQUEST, &e))?;
    let key = queue_id.to_string();
    let found = console
        .index
        .with(move |i| i.message(&key))
        .await
        .map_err(internal)?;
    let Some((tenant, seqs)) = found else {
        return Err(refuse(StatusCode::NOT_FOUND, "no such message in the log"));
    };
    if !user.account.sees(&tenant) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "this message belongs to another tenant",
        ));
    }
    let records = console
        .log
        .read_seqs(&tenant, &seqs)
        .await
        .map_err(|e| internal(format!("{e:#}")))?;
    Ok((tenant, records))
}

#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct QueueFilter {
    /// Part of the sender's address.
    #[serde(default)]
    pub sender: String,
    #[serde(default)]
    pub tenant: String,
    /// Messages after this queue id (the `next` of the previous page).
    #[serde(default)]
    #[param(pattern = "^[0-9A-Fa-f]{0,16}$")]
    pub after: String,
}

/// Messages per page of the queue.
pub const QUEUE_PAGE: usize = 100;
/// Most messages one view reads for a sender filter (the sender is
/// sealed at rest, so it is matched after reading): a view costs the
/// same in a queue of a hundred or of a million.
const QUEUE_SCAN: usize = 5_000;

/// A page of the queue.
pub struct QueuePage {
    pub messages: Vec<crate::spool::MessageSummary>,
    /// Where the next page starts, if there is more to look at.
    pub next: Option<QueueId>,
    /// The whole queue's size: not for a tenant-admin, whose view is its
    /// own tenant's.
    pub depth: Option<crate::spool::QueueDepth>,
}

/// Queued messages this user may see, filtered, a page at a time.
pub(super) async fn queued(
    console: &Arc<Console>,
    user: &User,
    f: &QueueFilter,
) -> Result<QueuePage, Response> {
    let mut after: Option<QueueId> = match f.after.trim() {
        "" => None,
        a => Some(
            a.parse()
                .map_err(|e: String| refuse(StatusCode::BAD_REQUEST, &e))?,
        ),
    };
    // A tenant-admin sees its own tenant, whatever the filter asks.
    let tenant = match user.scope() {
        Some(t) => Some(t.to_string()),
        None => Some(f.tenant.trim().to_string()).filter(|t| !t.is_empty()),
    };
    let sender = f.sender.trim().to_lowercase();
    let batch = if sender.is_empty() { QUEUE_PAGE } else { 500 };
    let mut messages = Vec::new();
    let mut scanned = 0;
    let next = loop {
        let page = console
            .spool
            .list(crate::spool::ListPage {
                after,
                limit: batch,
                tenant: tenant.clone(),
            })
            .await
            .map_err(internal)?;
        let end = page.len() < batch;
        for m in page {
            scanned += 1;
            after = Some(m.id);
            if sender.is_empty() || m.sender.to_lowercase().contains(&sender) {
                messages.push(m);
                if messages.len() == QUEUE_PAGE {
                    break;
                }
            }
        }
        if messages.len() == QUEUE_PAGE || (scanned >= QUEUE_SCAN && !end) {
            break after;
        }
        if end {
            break None;
        }
    };
    let depth = match user.scope() {
        Some(_) => None,
        None => Some(console.spool.depth().await.map_err(internal)?),
    };
    Ok(QueuePage {
        messages,
        next,
        depth,
    })
}

/// The queued message `id` if this user may act on it.
pub(super) async fn actionable(
    console: &Arc<Console>,
    user: &User,
    id: &str,
) -> Result<(QueueId, String), Response> {
    user.require_action()?;
    let id: QueueId = id
        .parse()
        .map_err(|e: String| refuse(StatusCode::BAD_REQUEST, &e))?;
    let detail = console.spool.show(id).await.map_err(internal)?;
    let Some(detail) = detail else {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            "no such message in the queue",
        ));
    };
    let tenant = detail.envelope.tenant.0;
    if !user.account.sees(&tenant) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "this message belongs to another tenant",
        ));
    }
    Ok((id, tenant))
}

/// What an operator may do to a queued message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum QueueAction {
    /// Try its pending recipients now.
    Retry,
    /// Keep it back from delivery until released.
    Hold,
    /// End a hold; it is tried now.
    Release,
    /// Remove it without a bounce (a reason is required).
    Delete,
    /// Fail its pending recipients now with a DSN to the sender (a reason
    /// is required).
    Bounce,
}

impl QueueAction {
    pub fn name(self) -> &'static str {
        match self {
            QueueAction::Retry => "retry",
            QueueAction::Hold => "hold",
            QueueAction::Release => "release",
            QueueAction::Delete => "delete",
            QueueAction::Bounce => "bounce",
        }
    }
}

/// Does `action` to the message `id`; what came of it, in words. The
/// queue's own record (held, deleted, the bounce) names the account and
/// the reason; a console record follows each change that was made.
pub(super) async fn do_act(
    console: &Arc<Console>,
    user: &User,
    id: &str,
    action: QueueAction,
    reason: &str,
) -> Result<String, Response> {
    let (id, tenant) = actionable(console, user, id).await?;
    // Kept short and on one line: it goes into the log, a DSN and pages.
    let reason: String = reason
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(500)
        .collect();
    if reason.is_empty() && matches!(action, QueueAction::Delete | QueueAction::Bounce) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "say why: a delete or a bounce needs a reason",
        ));
    }
    let reason = Some(reason).filter(|r| !r.is_empty());
    let said = act_on(console, id, action, user, reason.clone()).await?;
    console
        .record(user, &tenant, id, action.name(), None, reason)
        .await;
    Ok(said)
}

async fn act_on(
    console: &Arc<Console>,
    id: QueueId,
    action: QueueAction,
    user: &User,
    reason: Option<String>,
) -> Result<String, Response> {
    use crate::queue::{Act, Acted};
    use crate::spool::Operator;
    let by = Operator {
        by: format!("console account {}", user.account.name),
        reason,
    };
    let act = match action {
        QueueAction::Retry => {
            let jobs = console.spool.retry(id, now()).await.map_err(internal)?;
            if jobs.is_empty() {
                let why = crate::control::nothing_to_retry(id, console.spool.as_ref()).await;
                return Err(refuse(StatusCode::CONFLICT, &why));
            }
            let said = format!("{id}: {} destination(s) scheduled now", jobs.len());
            console.queue.due(jobs);
            return Ok(said);
        }
        QueueAction::Release => Act::Release,
        QueueAction::Hold => Act::Hold,
        QueueAction::Delete => Act::Delete,
        QueueAction::Bounce => Act::Bounce,
    };
    match console.queue.act(id, act, by).await {
        Ok(Acted::Missing) => Err(refuse(
            StatusCode::NOT_FOUND,
            "no such message in the queue",
        )),
        Ok(acted) if !acted.done() => Err(refuse(
            StatusCode::CONFLICT,
            &crate::control::acted_text(id, &acted),
        )),
        Ok(acted) => Ok(crate::control::acted_text(id, &acted)),
        Err(e) => Err(internal(e)),
    }
}
