//! The HTTP API under `/api/v1`: JSON for automation, with the roles and
//! scoping of the pages and through the same query layer. The OpenAPI
//! document at `/api/v1/openapi.json` is generated from these handlers and
//! types (utoipa), so it cannot drift from them.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use utoipa::OpenApi;

use super::index::{ChainStatus, Filter, Page, Totals};
use super::query::{QueueAction, QueueFilter, do_act, overview, queued, records, search};
use super::state::{Console, User};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sealgate",
        description = "The gateway's transactions, queue and log chains. Authenticate with `Authorization: Bearer TOKEN` (`sealgate account token NAME`); a tenant-admin's token sees its own tenant only, an auditor's changes nothing."
    ),
    paths(dashboard, transactions, message, queue, act, tlsrpt_received),
    components(schemas(QueueAction, crate::report::received::Received)),
    modifiers(&Bearer),
    security(("bearer" = []))
)]
struct Doc;

struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/dashboard", get(dashboard))
        .route("/api/v1/transactions", get(transactions))
        .route("/api/v1/messages/{id}", get(message))
        .route("/api/v1/queue", get(queue))
        .route("/api/v1/queue/{id}/{action}", post(act))
        .route("/api/v1/tlsrpt/received", get(tlsrpt_received))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct Since {
    /// Unix seconds; default: 30 days ago.
    since: Option<i64>,
}

/// TLS-RPT reports other senders posted about the gateway's own domains,
/// newest first, at most 500 (not for a tenant-admin: they are the
/// gateway's, not a tenant's).
#[utoipa::path(get, path = "/api/v1/tlsrpt/received", params(Since), responses(
    (status = 200, body = Vec<crate::report::received::Received>),
    (status = 400, description = "`since` is not a 64-bit integer"),
    (status = 401, description = "no or an unknown token"),
    (status = 403, description = "a tenant-admin"),
))]
async fn tlsrpt_received(
    State(console): State<Arc<Console>>,
    user: User,
    Query(q): Query<Since>,
) -> Response {
    if user.scope().is_some() {
        return super::session::refuse(
            axum::http::StatusCode::FORBIDDEN,
            "TLS-RPT reports are the gateway's, not a tenant's",
        );
    }
    let since = q.since.unwrap_or_else(|| crate::util::now() - 30 * 86_400);
    match console.inbox.since(since).await {
        Ok(r) => axum::Json(r).into_response(),
        Err(e) => super::query::internal(e),
    }
}

async fn openapi() -> Response {
    axum::Json(Doc::openapi()).into_response()
}

/// What the dashboard shows.
#[derive(Serialize, utoipa::ToSchema)]
struct Dashboard {
    queue: crate::spool::QueueDepth,
    totals: Totals,
    chains: Vec<ChainStatus>,
    /// Domains below their best level (none for a tenant-admin: domains
    /// are shared by every tenant).
    #[schema(value_type = Vec<Object>)]
    downgraded: Vec<crate::policy::memory::DomainRecord>,
}

/// The queue, its messages and recipients' state, totals and charts' data.
#[utoipa::path(get, path = "/api/v1/dashboard", responses(
    (status = 200, body = Dashboard),
    (status = 401, description = "no or an unknown token"),
))]
async fn dashboard(State(console): State<Arc<Console>>, user: User) -> Response {
    match overview(&console, &user).await {
        Ok(o) => axum::Json(Dashboard {
            queue: o.depth,
            totals: o.totals,
            chains: o.chains,
            downgraded: o.downgraded,
        })
        .into_response(),
        Err(r) => r,
    }
}

/// One page of recipients' attempts matching the filter, newest first
/// (`sort=old`: oldest first); pass `next` as `after` for the next page.
#[utoipa::path(get, path = "/api/v1/transactions", params(Filter), responses(
    (status = 200, body = Page),
    (status = 400, description = "a parameter that does not parse"),
    (status = 401, description = "no or an unknown token"),
))]
async fn transactions(
    State(console): State<Arc<Console>>,
    user: User,
    Query(filter): Query<Filter>,
) -> Response {
    match search(&console, &user, filter).await {
        Ok(page) => axum::Json(page).into_response(),
        Err(r) => r,
    }
}

/// One record of the transaction log.
#[derive(Serialize, utoipa::ToSchema)]
struct Record {
    seq: i64,
    /// RFC 3339.
    at: String,
    /// `received`, `classified`, `attempt`, `deleted`, `pruned`, `console`.
    kind: String,
    /// The record's facts as stored and hashed (docs/reports.md).
    #[schema(value_type = Object)]
    data: serde_json::Value,
    /// SHA-256 of the record, hex.
    hash: String,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Message {
    queue_id: String,
    tenant: String,
    records: Vec<Record>,
}

/// Every record of one message, with its evidence.
#[utoipa::path(get, path = "/api/v1/messages/{id}",
    params(("id" = String, Path, description = "queue id, 16 hex digits", pattern = "^[0-9A-Fa-f]{1,16}$")),
    responses(
        (status = 200, body = Message),
        (status = 400, description = "not a queue id"),
        (status = 401, description = "no or an unknown token"),
        (status = 403, description = "another tenant's message"),
        (status = 404, description = "not in the log"),
    ))]
async fn message(
    State(console): State<Arc<Console>>,
    user: User,
    Path(id): Path<String>,
) -> Response {
    match records(&console, &user, &id).await {
        Ok((tenant, stored)) => axum::Json(Message {
            queue_id: id,
            tenant,
            records: stored
                .into_iter()
                .map(|r| Record {
                    seq: r.seq,
                    at: crate::util::rfc3339(r.at),
                    data: serde_json::from_str(&r.data).unwrap_or_default(),
                    kind: r.kind,
                    hash: crate::util::hex(&r.hash),
                })
                .collect(),
        })
        .into_response(),
        Err(r) => r,
    }
}

#[derive(Serialize, utoipa::ToSchema)]
struct Queue {
    /// Messages with a pending recipient, in the whole queue (not for a
    /// tenant-admin).
    #[serde(skip_serializing_if = "Option::is_none")]
    queued: Option<u64>,
    /// Pass as `after` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
    #[schema(value_type = Vec<Object>)]
    messages: Vec<crate::spool::MessageSummary>,
}

/// Queued messages, oldest first, a page of at most 100 at a time.
#[utoipa::path(get, path = "/api/v1/queue", params(QueueFilter), responses(
    (status = 200, body = Queue),
    (status = 400, description = "`after` is not a queue id"),
    (status = 401, description = "no or an unknown token"),
))]
async fn queue(
    State(console): State<Arc<Console>>,
    user: User,
    Query(f): Query<QueueFilter>,
) -> Response {
    match queued(&console, &user, &f).await {
        Ok(page) => axum::Json(Queue {
            queued: page.depth.map(|d| d.messages),
            next: page.next.map(|n| n.to_string()),
            messages: page.messages,
        })
        .into_response(),
        Err(r) => r,
    }
}

#[derive(Serialize, utoipa::ToSchema)]
struct Acted {
    result: String,
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct Reason {
    /// Why; required for delete and bounce. One line, at most 500 characters kept.
    #[serde(default)]
    reason: String,
}

/// Retries, holds, releases, deletes or bounces a queued message.
#[utoipa::path(post, path = "/api/v1/queue/{id}/{action}",
    params(
        ("id" = String, Path, description = "queue id, 16 hex digits", pattern = "^[0-9A-Fa-f]{1,16}$"),
        ("action" = QueueAction, Path, description = "what to do"),
        Reason,
    ),
    responses(
        (status = 200, body = Acted),
        (status = 400, description = "not a queue id, an unknown action, or no reason for a delete or bounce"),
        (status = 401, description = "no or an unknown token"),
        (status = 403, description = "an auditor, another tenant's message, or a console session without its `X-CSRF-Token`"),
        (status = 404, description = "not in the queue"),
        (status = 409, description = "nothing to do: held already, not held, or nothing pending"),
    ))]
async fn act(
    State(console): State<Arc<Console>>,
    user: User,
    headers: axum::http::HeaderMap,
    Path((id, action)): Path<(String, QueueAction)>,
    Query(q): Query<Reason>,
) -> Response {
    // A bearer token cannot be sent by another site; a session cookie is
    // held back by SameSite=Strict, and the session's token is asked for
    // as well, as on the console's forms.
    let sent = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if let Err(r) = user.check_csrf(sent) {
        return r.into();
    }
    match do_act(&console, &user, &id, action, &q.reason).await {
        Ok(result) => axum::Json(Acted { result }).into_response(),
        Err(r) => r,
    }
}
