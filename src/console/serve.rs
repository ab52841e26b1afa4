//! The listener, the routes and the pages' handlers: reading and acting
//! through the query layer, writing every action to the log.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{ConnectInfo, Form, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

use super::index::Filter;
use super::pages;
use super::query::{QueueAction, QueueFilter, do_act, internal, overview, queued, records, search};
use super::session::{
    ChangeForm, Checked, LOGIN_COOKIE, Lang, Refused, SESSION_COOKIE, cookie, refuse, set_cookie,
};
use super::state::{Console, User};
use crate::config::Config;
use crate::inbound::auth::Users;
use crate::message::QueueId;
use crate::util::now;

/// The console's listener and TLS, or none when `[console]` is absent.
pub async fn bind(
    config: &Config,
) -> anyhow::Result<Option<(TcpListener, Arc<rustls::ServerConfig>)>> {
    let Some(console) = &config.console else {
        return Ok(None);
    };
    let (cert, key) = match (&console.certificate, &console.private_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        // The inbound certificate: serve loaded it (and made it on first
        // start) before the console is bound.
        _ => crate::tls::inbound_files(config),
    };
    let certs = crate::tls::load_certs(&cert)?;
    let key = crate::tls::load_key(&key)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs.clone(), key)
    .with_context(|| format!("console certificate {}", cert.display()))?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let listener = TcpListener::bind(console.address)
        .await
        .with_context(|| format!("console: cannot listen on {}", console.address))?;
    if let Some(first) = certs.first() {
        use sha2::Digest;
        tracing::info!(
            "console on https://{} (certificate SHA-256 {})",
            console.address,
            crate::util::hex(&sha2::Sha256::digest(first.as_ref()))
        );
    }
    Ok(Some((listener, Arc::new(tls))))
}

/// Serves the console until shutdown.
pub async fn run(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    console: Arc<Console>,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = router(console);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("console: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let Ok(Ok(stream)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let service =
                hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    app.clone().oneshot(req.map(axum::body::Body::new))
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

fn router(console: Arc<Console>) -> Router {
    Router::<Arc<Console>>::new()
        .route("/", get(dashboard))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/transactions", get(transactions))
        .route("/transactions/export", get(export))
        .route("/message/{id}", get(message))
        .route("/queue", get(queue_page))
        .route("/queue/{id}/{action}", post(queue_act))
        .route("/domains", get(domains))
        .route("/reports", get(super::reports::page))
        .route("/reports/verify", post(super::reports::verify))
        .route("/reports/export", get(super::reports::export))
        .route(
            "/policies",
            get(super::policies::page).post(super::policies::save),
        )
        .route("/domains/{domain}/confirm", post(confirm))
        .route("/lang/{code}", get(language))
        .route("/static/console.css", get(stylesheet))
        .route(
            "/tlsrpt",
            post(tlsrpt).layer(axum::extract::DefaultBodyLimit::max(
                crate::report::received::MAX_POSTED,
            )),
        )
        .route("/.well-known/mta-sts.txt", get(mta_sts))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(super::api::routes())
        .fallback(|| async { refuse(StatusCode::NOT_FOUND, "no such page") })
        .layer(middleware::from_fn(security_headers))
        .with_state(console)
}

/// Strict headers on every response: no script at all, no framing, no
/// caching of pages that show mail data.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    let cached = h.contains_key(header::CACHE_CONTROL);
    let mut set = |name: &'static str, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(
        "content-security-policy",
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set("x-content-type-options", "nosniff");
    set("x-frame-options", "DENY");
    set("referrer-policy", "no-referrer");
    set("strict-transport-security", "max-age=31536000");
    set("cross-origin-opener-policy", "same-origin");
    if !cached {
        set("cache-control", "no-store");
    }
    res
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        pages::STYLE,
    )
        .into_response()
}

/// A path on this console, never one a browser would take elsewhere
/// (`//host`, `/\\host`) or one that could not be a header value.
fn local_path(p: &str) -> bool {
    p.starts_with('/')
        && !p.starts_with("//")
        && p.len() < 2048
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.~?=&%+".contains(&b))
}

async fn language(Path(code): Path<String>, headers: HeaderMap) -> Response {
    let code = if code == "de" { "de" } else { "en" };
    // Back to where the switch was clicked, when that was one of our pages.
    let back = headers
        .get(header::REFERER)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.find("://").map(|i| &r[i + 3..]))
        .and_then(|r| r.find('/').map(|i| r[i..].to_string()))
        .filter(|p| local_path(p))
        .unwrap_or_else(|| "/".into());
    let mut res = Redirect::to(&back).into_response();
    if let Ok(v) = HeaderValue::from_str(&set_cookie("lang", code, Some(365 * 86_400))) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    res
}

#[derive(Deserialize)]
struct LoginForm {
    name: String,
    password: String,
    /// The one-time code, for accounts with a second factor.
    #[serde(default)]
    code: String,
    #[serde(default)]
    csrf: String,
}

async fn login_page(lang: Lang) -> Response {
    let token = super::accounts::random_hex();
    let mut res = pages::login(lang, &token, None).into_response();
    if let Ok(v) = HeaderValue::from_str(&set_cookie(LOGIN_COOKIE, &token, Some(3600))) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    res
}

async fn login(
    State(console): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    lang: Lang,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let again = |status: StatusCode, why: &str| {
        let token = super::accounts::random_hex();
        let mut res = (status, pages::login(lang, &token, Some(why))).into_response();
        if let Ok(v) = HeaderValue::from_str(&set_cookie(LOGIN_COOKIE, &token, Some(3600))) {
            res.headers_mut().append(header::SET_COOKIE, v);
        }
        res
    };
    // The form must come from a page we served to this browser.
    match cookie(&headers, LOGIN_COOKIE) {
        Some(t) if !form.csrf.is_empty() && t == form.csrf => {}
        _ => return again(StatusCode::FORBIDDEN, pages::text(lang, "login-stale")),
    }
    let ip = peer.ip();
    let name = form.name.trim().to_string();
    let wait = console.guard.wait(ip, &name);
    if !wait.is_zero() {
        let mut res = again(
            StatusCode::TOO_MANY_REQUESTS,
            pages::text(lang, "login-wait"),
        );
        if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return res;
    }
    let users = match console.accounts.hashes().await {
        Ok(h) => Arc::new(Users::from_hashes(h)),
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let ok = console.guard.verify(users, &name, form.password).await;
    // Which of password and code was wrong is not said.
    let unix = u64::try_from(now()).unwrap_or(0);
    let account = if ok
        && console
            .accounts
            .check_totp(&name, &form.code, unix)
            .await
            .unwrap_or(false)
    {
        console.accounts.get(&name).await.ok().flatten()
    } else {
        None
    };
    let Some(account) = account else {
        console.guard.failed(ip, &name);
        tracing::warn!(account = %name, client = %ip, "console: login failed");
        return again(StatusCode::UNAUTHORIZED, pages::text(lang, "login-failed"));
    };
    console.guard.succeeded(ip, &name);
    let (id, csrf) = match console
        .accounts
        .start_session(&account.name, console.idle, now())
        .await
    {
        Ok(session) => session,
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let user = User {
        account,
        csrf: Some(csrf),
        session: Some(id.clone()),
        source: ip,
    };
    let home = console.home(&user);
    console
        .record(&user, &home, QueueId::UNSPOOLED, "login", None, None)
        .await;
    let mut res = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&set_cookie(SESSION_COOKIE, &id, None)) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&set_cookie(LOGIN_COOKIE, "", Some(0))) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    res
}

/// A button's form: the token, and the reason an operator may give.
#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
}

impl ChangeForm for CsrfForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

async fn logout(
    State(console): State<Arc<Console>>,
    Checked(user, _): Checked<CsrfForm>,
) -> Response {
    if let Some(id) = &user.session
        && let Err(e) = console.accounts.end_session(id).await
    {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
    }
    let home = console.home(&user);
    console
        .record(&user, &home, QueueId::UNSPOOLED, "logout", None, None)
        .await;
    let mut res = Redirect::to("/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&set_cookie(SESSION_COOKIE, "", Some(0))) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    res
}

async fn dashboard(State(console): State<Arc<Console>>, user: User, lang: Lang) -> Response {
    match overview(&console, &user).await {
        Ok(o) => pages::dashboard(lang, &user, &o).into_response(),
        Err(r) => r,
    }
}

async fn transactions(
    State(console): State<Arc<Console>>,
    user: User,
    lang: Lang,
    Query(filter): Query<Filter>,
) -> Response {
    match search(&console, &user, filter.clone()).await {
        Ok(page) => pages::transactions(lang, &user, &filter, &page).into_response(),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
struct ExportQuery {
    #[serde(flatten)]
    filter: Filter,
    #[serde(default)]
    format: String,
}

/// Rows an export from the console holds at most; a larger one is
/// `sealgate report export`.
const EXPORT_LIMIT: usize = 100_000;

/// The current filter as CSV or JSON lines, every page of it, streamed
/// page by page: memory holds one page, whatever the export's size.
async fn export(
    State(console): State<Arc<Console>>,
    user: User,
    Query(q): Query<ExportQuery>,
) -> Response {
    use futures_util::StreamExt;
    let json = q.format == "jsonl";
    let filter = filter_without_cursor(&q.filter);
    // Said before the first byte leaves: who exported what.
    let home = console.home(&user);
    console
        .record(
            &user,
            &home,
            QueueId::UNSPOOLED,
            "export",
            Some(serde_json::to_string(&filter).unwrap_or_default()),
            Some(if json { "jsonl" } else { "csv" }.to_string()),
        )
        .await;
    let head = (!json).then(|| {
        Ok::<_, std::io::Error>(axum::body::Bytes::from_static(
            b"at,tenant,queue_id,sender,recipient,domain,message_id,level,class,status,relay,detail\n",
        ))
    });
    let pages = futures_util::stream::unfold(
        Some((console, user, filter, 0usize)),
        move |state| async move {
            let (console, user, mut filter, rows) = state?;
            let page = match search(&console, &user, filter.clone()).await {
                Ok(p) => p,
                // The download fails visibly rather than ending short.
                Err(_) => return Some((Err(std::io::Error::other("search failed")), None)),
            };
            let bytes = encode_rows(&page.rows, json);
            let rows = rows + page.rows.len();
            let next = match page.next {
                Some(after) if rows < EXPORT_LIMIT => {
                    filter.after = after;
                    Some((console, user, filter, rows))
                }
                _ => None,
            };
            Some((Ok(axum::body::Bytes::from(bytes)), next))
        },
    );
    let body = axum::body::Body::from_stream(futures_util::stream::iter(head).chain(pages));
    let (ctype, name) = if json {
        ("application/jsonl; charset=utf-8", "transactions.jsonl")
    } else {
        ("text/csv; charset=utf-8", "transactions.csv")
    };
    (
        [
            (header::CONTENT_TYPE, ctype.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response()
}

/// One page of rows as JSON lines, or as CSV with formula cells defused.
fn encode_rows(rows: &[super::index::TxRow], json: bool) -> Vec<u8> {
    let mut out = Vec::new();
    if json {
        for r in rows {
            if let Ok(line) = serde_json::to_vec(r) {
                out.extend_from_slice(&line);
                out.push(b'\n');
            }
        }
        return out;
    }
    let mut w = csv::Writer::from_writer(&mut out);
    for r in rows {
        let at = crate::util::rfc3339(r.at);
        let cells = [
            at.as_str(),
            &r.tenant,
            &r.queue_id,
            &r.sender,
            &r.recipient,
            &r.domain,
            r.message_id.as_deref().unwrap_or(""),
            &r.level,
            &r.class,
            &r.status,
            &r.relay,
            &r.detail,
        ];
        let _ = w.write_record(
            cells
                .iter()
                .map(|c| crate::report::export::cell(c).into_owned()),
        );
    }
    let _ = w.flush();
    drop(w);
    out
}

fn filter_without_cursor(f: &Filter) -> Filter {
    Filter {
        after: String::new(),
        ..f.clone()
    }
}

async fn message(
    State(console): State<Arc<Console>>,
    user: User,
    lang: Lang,
    Path(id): Path<String>,
) -> Response {
    match records(&console, &user, &id).await {
        Ok((tenant, records)) => {
            let queued = match id.parse::<QueueId>() {
                Ok(q) => console.spool.show(q).await.ok().flatten(),
                Err(_) => None,
            };
            pages::message(lang, &user, &id, &tenant, &records, queued.as_ref()).into_response()
        }
        Err(r) => r,
    }
}

async fn queue_page(
    State(console): State<Arc<Console>>,
    user: User,
    lang: Lang,
    Query(f): Query<QueueFilter>,
) -> Response {
    match queued(&console, &user, &f).await {
        Ok(page) => pages::queue(lang, &user, &f, &page).into_response(),
        Err(r) => r,
    }
}

async fn queue_act(
    State(console): State<Arc<Console>>,
    Path((id, action)): Path<(String, QueueAction)>,
    Checked(user, form): Checked<CsrfForm>,
) -> Response {
    match do_act(&console, &user, &id, action, &form.reason).await {
        Ok(_) => Redirect::to("/queue").into_response(),
        Err(r) => r,
    }
}

/// Domains per page of the Domains page.
const DOMAINS_PAGE: usize = 500;

#[derive(Deserialize, Default)]
struct DomainsQuery {
    /// Domains after this name (the last one of the previous page).
    #[serde(default)]
    after: String,
}

async fn domains(
    State(console): State<Arc<Console>>,
    user: User,
    lang: Lang,
    Query(q): Query<DomainsQuery>,
) -> Response {
    let records = match console.memory.page(&q.after, DOMAINS_PAGE).await {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    // Domain memory is shared by all tenants; a tenant-admin sees the
    // domains its own mail went to.
    let records = match user.scope() {
        None => records,
        Some(t) => {
            let t = t.to_string();
            let mine = match console.index.with(move |i| i.domains_of(&t)).await {
                Ok(d) => d,
                Err(e) => return internal(e),
            };
            records
                .into_iter()
                .filter(|r| mine.contains(&r.domain))
                .collect()
        }
    };
    // Profiles and exceptions as the user's tenant's policy has them.
    let tenant = user
        .scope()
        .map_or_else(|| console.config.default_tenant.clone(), str::to_string);
    let policy = console.policies.current().for_tenant(&tenant);
    let next = (records.len() == DOMAINS_PAGE)
        .then(|| records.last().map(|r| r.domain.clone()))
        .flatten();
    pages::domains(lang, &user, &records, &policy, next.as_deref()).into_response()
}

async fn confirm(
    State(console): State<Arc<Console>>,
    Path(domain): Path<String>,
    Checked(user, _): Checked<CsrfForm>,
) -> Response {
    if let Err(r) = user.require_action() {
        return r.into();
    }
    // A domain's level is shared by every tenant: not a tenant's decision.
    if user.scope().is_some() {
        return refuse(
            StatusCode::FORBIDDEN,
            "a domain's level is confirmed by an operator",
        );
    }
    match console.memory.confirm(&domain, now()).await {
        Ok(r) => {
            let home = console.home(&user);
            console
                .record(
                    &user,
                    &home,
                    QueueId::UNSPOOLED,
                    "confirm",
                    Some(r.domain.clone()),
                    Some(format!("{} accepted as the new best level", r.best.name())),
                )
                .await;
            Redirect::to("/domains").into_response()
        }
        Err(e) => refuse(StatusCode::NOT_FOUND, &e.to_string()),
    }
}

/// Whether the client may read the open endpoints.
fn open_to(console: &Console, peer: SocketAddr) -> Result<(), Refused> {
    let ip = peer.ip();
    let allowed = console
        .config
        .console
        .as_ref()
        .is_some_and(|c| c.open_to.iter().any(|n| n.contains(&ip)));
    if allowed {
        Ok(())
    } else {
        Err(Refused::NOT_OPEN)
    }
}

/// A TLS-RPT report another sender POSTs (RFC 8460 §3); no login, since
/// senders have none: what is kept is bounded (report::received).
async fn tlsrpt(
    State(console): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !console
        .config
        .console
        .as_ref()
        .is_some_and(|c| c.tlsrpt_receive)
    {
        return refuse(StatusCode::NOT_FOUND, "no such page");
    }
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let source = peer.ip().to_string();
    match console.inbox.receive(media, &body, &source, now()).await {
        Ok((r, new)) => {
            tracing::info!(
                organization = %r.organization,
                report_id = %r.report_id,
                client = %source,
                new,
                "TLS-RPT report received for {}: {} successful, {} failed session(s)",
                r.domains.join(", "),
                r.successes,
                r.failures
            );
            (StatusCode::OK, "report received\n").into_response()
        }
        Err(crate::report::received::ReceiveError::Store(e)) => {
            refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
        Err(e) => refuse(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

/// The gateway's MTA-STS policy file, where `[console] mta_sts_mode` asks
/// for it (served on the host name `mta-sts.DOMAIN`: docs/console.md).
async fn mta_sts(State(console): State<Arc<Console>>) -> Response {
    match console.config.console.as_ref().and_then(|c| c.mta_sts_mode) {
        Some(mode) => (
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::CACHE_CONTROL, "max-age=3600"),
            ],
            mode.policy_file(&console.config.hostname),
        )
            .into_response(),
        None => refuse(StatusCode::NOT_FOUND, "no MTA-STS policy is published here"),
    }
}

async fn healthz(
    State(console): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    if let Err(r) = open_to(&console, peer) {
        return r.into();
    }
    "ok\n".into_response()
}

async fn readyz(
    State(console): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    if let Err(r) = open_to(&console, peer) {
        return r.into();
    }
    if !console.spool.available() {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "storage unavailable\n");
    }
    match console.spool.depth().await {
        Ok(_) => "ready\n".into_response(),
        Err(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, &format!("storage: {e}\n")),
    }
}

async fn metrics(
    State(console): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    if let Err(r) = open_to(&console, peer) {
        return r.into();
    }
    let now = now();
    let index = console
        .index
        .with(move |i| Ok((i.totals(None, now, 1)?, i.chains(None)?)))
        .await;
    let (totals, chains) = match index {
        Ok(x) => x,
        Err(e) => return internal(e),
    };
    let depth = console.spool.depth().await.ok();
    let text = super::metrics::text(&totals, &chains, depth, console.started, now);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::local_path;

    #[test]
    fn the_language_switch_returns_only_to_our_own_pages() {
        assert!(local_path(
            "/transactions?domain=a.test&after=1796045414.12"
        ));
        assert!(local_path("/"));
        for elsewhere in [
            "//evil.test/",
            "/\\evil.test",
            "https://evil.test/",
            "",
            "/a\r\nb",
            "/<x>",
        ] {
            assert!(!local_path(elsewhere), "{elsewhere:?}");
        }
    }
}
