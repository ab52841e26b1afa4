//! The Reports page: each tenant's chain, verified in full on request with
//! its progress shown while it runs; the log of a tenant and period for
//! download, ending in a head signed with the gateway's key; and the
//! TLS-RPT reports this gateway sent and those it received.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::pages::{layout, text};
use super::query::internal;
use super::session::{ChangeForm, Checked, Lang, refuse};
use super::state::{Console, User, Verification};
use crate::message::QueueId;
use crate::report::log::Verified;
use crate::util::rfc3339;

/// Records read from the log per round of an export.
const BATCH: usize = 2_000;

pub(super) async fn page(State(console): State<Arc<Console>>, user: User, lang: Lang) -> Response {
    let t = |k| text(lang, k);
    let scope = user.scope().map(str::to_string);
    let chains = match console
        .index
        .with(move |i| i.chains(scope.as_deref()))
        .await
    {
        Ok(c) => c,
        Err(e) => return internal(e),
    };
    let since = crate::util::now() - 30 * 86_400;
    let received = if user.scope().is_some() {
        Vec::new()
    } else {
        match console.inbox.since(since).await {
            Ok(r) => r,
            Err(e) => return internal(e),
        }
    };
    let sent = if user.scope().is_some() {
        // Reports to recipient domains are the gateway's, not a tenant's.
        Vec::new()
    } else {
        match console.tlsrpt_sent.since(since).await {
            Ok(s) => s,
            Err(e) => return internal(e),
        }
    };
    let csrf = user.csrf.as_deref().unwrap_or("");
    let running;
    let page = {
        let walks = console.verifications.lock();
        running = walks.values().any(|v| v.outcome.is_none());
        layout(
            lang,
            Some(&user),
            t("reports"),
            "reports",
            html! {
                h2 { (t("chains")) }
                table #chains {
                    tr { th { (t("tenant")) } th.num { (t("records")) } th { (t("head")) } th { (t("full-walk")) } th {} }
                    @for c in &chains {
                        tr {
                            td { (c.tenant) }
                            td.num { (c.records) }
                            td { code { (c.head_seq) " " (c.head_hash.get(..16).unwrap_or("")) "…" } }
                            td {
                                @match walks.get(&c.tenant) {
                                    None => span.muted { (t("not-walked")) },
                                    Some(v) => {
                                        @match &v.outcome {
                                            None => {
                                                @let walked = v.walked.load(Ordering::Relaxed);
                                                progress max=(v.total.max(1)) value=(walked) {}
                                                " " (walked) " / " (v.total)
                                            }
                                            Some(Ok(Verified::Intact { records, .. })) => {
                                                span.ok { (t("intact")) } ", " (records) " " (t("records")) " · " (rfc3339(v.started)) " · " (v.by)
                                            }
                                            Some(Ok(Verified::Broken { seq, why })) => {
                                                span.bad { "BROKEN at " (seq) ": " (why) } " · " (rfc3339(v.started))
                                            }
                                            Some(Err(e)) => { span.bad { (e) } }
                                        }
                                    }
                                }
                            }
                            td {
                                form method="post" action="/reports/verify" {
                                    input type="hidden" name="csrf" value=(csrf);
                                    input type="hidden" name="tenant" value=(c.tenant);
                                    button type="submit" { (t("verify")) }
                                }
                            }
                        }
                    }
                }
                h2 { (t("download")) }
                p.muted { (t("download-note")) }
                form.filter method="get" action="/reports/export" {
                    label { (t("tenant")) select name="tenant" {
                        @for c in &chains { option value=(c.tenant) { (c.tenant) } }
                    } }
                    label { (t("from")) input name="from" type="date"; }
                    label { (t("to")) input name="to" type="date"; }
                    button type="submit" { (t("export")) }
                }
                @if user.scope().is_none() {
                    h2 { (t("tlsrpt-received")) }
                    p.muted { (t("tlsrpt-received-note")) }
                    @if received.is_empty() { p.muted { (t("none")) } } @else {
                        table #received {
                            tr {
                                th { (t("time")) } th { (t("organization")) } th { (t("domain")) }
                                th { (t("period")) } th.num { (t("successful")) } th.num { (t("failed")) } th { (t("failure-kinds")) }
                            }
                            @for r in &received {
                                tr {
                                    td { (rfc3339(r.received_at)) }
                                    td { (r.organization) br; span.small.muted { (r.report_id) } }
                                    td { (r.domains.join(", ")) }
                                    td.small { (rfc3339(r.begins)) " – " (rfc3339(r.ends)) }
                                    td.num { (r.successes) }
                                    td.num { @if r.failures > 0 { span.bad { (r.failures) } } @else { "0" } }
                                    td.small { (r.failure_kinds.join(", ")) }
                                }
                            }
                        }
                    }
                    h2 { (t("tlsrpt-sent")) }
                    @if sent.is_empty() { p.muted { (t("none")) } } @else {
                        table {
                            tr { th { "day" } th { (t("domain")) } th { "rua" } th { (t("time")) } th { (t("status")) } }
                            @for s in &sent {
                                tr { td { (s.day) } td { (s.domain) } td.small { (s.rua) } td { (rfc3339(s.at)) } td.small { (s.outcome) } }
                            }
                        }
                    }
                }
            },
        )
    };
    let mut res = page.into_response();
    if running {
        // The page shows the walk's progress without script.
        res.headers_mut()
            .insert(header::REFRESH, HeaderValue::from_static("2"));
    }
    res
}

#[derive(Deserialize)]
pub(super) struct VerifyForm {
    #[serde(default)]
    csrf: String,
    tenant: String,
}

impl ChangeForm for VerifyForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// Starts a full walk of a tenant's chain (a read: every role may).
pub(super) async fn verify(
    State(console): State<Arc<Console>>,
    Checked(user, form): Checked<VerifyForm>,
) -> Response {
    if !user.account.sees(&form.tenant) {
        return refuse(StatusCode::FORBIDDEN, "another tenant's log");
    }
    let tenant = form.tenant.clone();
    let total = {
        let t = tenant.clone();
        match console.index.with(move |i| i.chains(Some(&t))).await {
            Ok(c) => c.first().map_or(0, |c| c.records),
            Err(e) => return internal(e),
        }
    };
    let walked = Arc::new(AtomicU64::new(0));
    {
        let mut walks = console.verifications.lock();
        if walks.get(&tenant).is_some_and(|v| v.outcome.is_none()) {
            return Redirect::to("/reports").into_response();
        }
        walks.insert(
            tenant.clone(),
            Verification {
                started: crate::util::now(),
                by: user.account.name.clone(),
                walked: walked.clone(),
                total,
                outcome: None,
            },
        );
    }
    let task_console = console.clone();
    tokio::spawn(async move {
        let counter = walked.clone();
        let progress: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        let outcome = task_console
            .log
            .verify(&tenant, progress)
            .await
            .map_err(|e| format!("{e:#}"));
        let said = match &outcome {
            Ok(Verified::Intact { records, .. }) => format!("intact, {records} records"),
            Ok(Verified::Broken { seq, why }) => format!("broken at record {seq}: {why}"),
            Err(e) => format!("could not be walked: {e}"),
        };
        task_console
            .record(
                &user,
                &tenant,
                QueueId::UNSPOOLED,
                "verify",
                Some(tenant.clone()),
                Some(said),
            )
            .await;
        if let Some(v) = task_console.verifications.lock().get_mut(&tenant) {
            v.outcome = Some(outcome);
        }
    });
    Redirect::to("/reports").into_response()
}

#[derive(Deserialize)]
pub(super) struct ExportQuery {
    tenant: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
}

/// A tenant's records of a period as `report export --format json` writes
/// them (with each record's `prev`), ending in a chain-head line for the
/// last record, signed with `[report] signing_key`: an auditor recomputes
/// the chain over the lines and checks the head (docs/auditors.md).
pub(super) async fn export(
    State(console): State<Arc<Console>>,
    user: User,
    Query(q): Query<ExportQuery>,
) -> Response {
    use futures_util::StreamExt;
    if !user.account.sees(&q.tenant) {
        return refuse(StatusCode::FORBIDDEN, "another tenant's log");
    }
    // An empty field: from the first record, up to the last.
    let day = |s: &str, edge, default: i64| -> Result<i64, String> {
        if s.trim().is_empty() {
            return Ok(default);
        }
        crate::config::parse_instant(s, edge)
    };
    let period = day(&q.from, crate::config::DayEdge::Start, 0)
        .and_then(|from| Ok((from, day(&q.to, crate::config::DayEdge::End, i64::MAX)?)));
    let (from, to) = match period {
        Ok(p) => p,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &e),
    };
    console
        .record(
            &user,
            &q.tenant,
            QueueId::UNSPOOLED,
            "export",
            Some(q.tenant.clone()),
            Some(format!("log records {} – {}", q.from, q.to)),
        )
        .await;
    let tenant = q.tenant.clone();
    // (console, tenant, after seq, last exported (seq, hash), finished)
    let state = (console, tenant.clone(), 0i64, None::<(i64, Vec<u8>)>, false);
    let lines = futures_util::stream::unfold(Some(state), move |state| async move {
        let (console, tenant, after, last, finished) = state?;
        if finished {
            let (seq, hash) = last?;
            let head = crate::report::heads::line(
                &tenant,
                seq,
                &crate::util::hex(&hash),
                crate::util::now(),
                console.node.as_deref(),
                console.signer.as_deref(),
            );
            // As the gateway logs heads: `report verify --heads` reads it.
            let line = format!("{head}\n");
            return Some((Ok(axum::body::Bytes::from(line)), None));
        }
        let batch = match console.log.read_after(&tenant, after, BATCH).await {
            Ok(b) => b,
            Err(e) => return Some((Err(std::io::Error::other(format!("{e:#}"))), None)),
        };
        let mut out = Vec::new();
        let mut last = last;
        let mut done = batch.len() < BATCH;
        let next_after = batch.last().map_or(after, |r| r.seq);
        for r in &batch {
            if r.at < from && last.is_none() {
                continue;
            }
            if r.at >= to {
                done = true;
                break;
            }
            let line = crate::report::export::json_line(&tenant, r);
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
            last = Some((r.seq, r.hash.clone()));
        }
        Some((
            Ok(axum::body::Bytes::from(out)),
            Some((console, tenant, next_after, last, done)),
        ))
    });
    let name = format!(
        "sealgate-log-{}.jsonl",
        q.tenant.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    );
    (
        [
            (
                header::CONTENT_TYPE,
                "application/jsonl; charset=utf-8".to_string(),
            ),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        axum::body::Body::from_stream(lines.boxed()),
    )
        .into_response()
}
