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
        None => console.memory.downgraded().map_err(internal)?,
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
    #[serde(default)]
    pub sender: String,
    #[serde(default)]
    pub tenant: String,
}

/// Queued messages this user may see, filtered; at most 500.
pub(super) async fn queued(
    console: &Arc<Console>,
    user: &User,
    f: &QueueFilter,
) -> Result<(Vec<crate::spool::MessageSummary>, usize), Response> {
    let all = console.spool.list().await.map_err(internal)?;
    let sender = f.sender.trim().to_lowercase();
    let mine: Vec<_> = all
        .into_iter()
        .filter(|m| user.account.sees(&m.tenant.0))
        .filter(|m| f.tenant.is_empty() || m.tenant.0 == f.tenant)
        .filter(|m| sender.is_empty() || m.sender.to_lowercase().contains(&sender))
        .collect();
    let total = mine.len();
    Ok((mine.into_iter().take(500).collect(), total))
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

/// Retries a message now; what came of it, in words.
pub(super) async fn do_retry(
    console: &Arc<Console>,
    user: &User,
    id: &str,
) -> Result<String, Response> {
    let (id, tenant) = actionable(console, user, id).await?;
    let jobs = console.spool.retry(id, now()).await.map_err(internal)?;
    let said = if jobs.is_empty() {
        format!("{id}: no pending recipients")
    } else {
        format!("{id}: {} destination(s) scheduled now", jobs.len())
    };
    console.queue.due(jobs);
    console
        .record(user, &tenant, id, "retry", None, Some(said.clone()))
        .await;
    Ok(said)
}
