//! Who is asking: the session cookie or the bearer token of a request
//! made into a [`User`], the CSRF check of forms, refusals, and the
//! language pages are shown in.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::state::{Console, User};

/// The session cookie. `__Host-` makes browsers insist on Secure, Path=/
/// and no Domain, so no other site or subdomain can set it.
pub const SESSION_COOKIE: &str = "__Host-sealgate";
/// The pre-login cookie whose value the login form must repeat.
pub const LOGIN_COOKIE: &str = "__Host-sealgate-login";
/// A cookie's value from the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// A `Set-Cookie` value with the flags every cookie of ours carries.
pub fn set_cookie(name: &str, value: &str, max_age: Option<u64>) -> String {
    let age = max_age
        .map(|s| format!("; Max-Age={s}"))
        .unwrap_or_default();
    format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Strict{age}")
}

impl User {
    /// A form's CSRF token matches the session's (tokens need none).
    pub fn check_csrf(&self, sent: &str) -> Result<(), Refused> {
        match &self.csrf {
            None => Ok(()),
            Some(csrf) if constant_eq(csrf.as_bytes(), sent.as_bytes()) => Ok(()),
            Some(_) => Err(Refused::FORBIDDEN_CSRF),
        }
    }

    /// May change things (within its scope).
    pub fn require_action(&self) -> Result<(), Refused> {
        if self.account.role.acts() {
            Ok(())
        } else {
            Err(Refused::READ_ONLY)
        }
    }
}

/// A form that changes something: it carries the CSRF token of the page
/// it came from.
pub trait ChangeForm: serde::de::DeserializeOwned + Send {
    fn csrf(&self) -> &str;
}

/// A changing form posted by a logged-in user, its CSRF token checked
/// before the handler runs: a handler that takes one cannot forget it.
pub struct Checked<T>(pub User, pub T);

impl<T: ChangeForm> FromRequest<Arc<Console>> for Checked<T> {
    type Rejection = Response;

    async fn from_request(req: Request, console: &Arc<Console>) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let user = User::from_request_parts(&mut parts, console).await?;
        let axum::Form(form) =
            axum::Form::<T>::from_request(Request::from_parts(parts, body), console)
                .await
                .map_err(IntoResponse::into_response)?;
        user.check_csrf(form.csrf())?;
        Ok(Checked(user, form))
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// A request refused for a reason known in advance.
#[derive(Debug, Clone, Copy)]
pub struct Refused {
    pub status: StatusCode,
    pub why: &'static str,
}

impl Refused {
    pub const FORBIDDEN_CSRF: Refused = Refused {
        status: StatusCode::FORBIDDEN,
        why: "the form's CSRF token is missing or stale: reload the page and try again",
    };
    pub const READ_ONLY: Refused = Refused {
        status: StatusCode::FORBIDDEN,
        why: "this account may read, not change anything",
    };
    pub const NOT_OPEN: Refused = Refused {
        status: StatusCode::FORBIDDEN,
        why: "not from this address ([console] open_to)",
    };
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        refuse(self.status, self.why)
    }
}

impl From<Refused> for Response {
    fn from(r: Refused) -> Response {
        r.into_response()
    }
}

/// A plain-text refusal (pages show it as text, the API as its body).
pub fn refuse(status: StatusCode, why: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        why.to_string(),
    )
        .into_response()
}

/// The client's address (hyper hands it to every request).
pub fn source(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip())
}

impl FromRequestParts<Arc<Console>> for User {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Arc<Console>,
    ) -> Result<User, Response> {
        let source = source(parts);
        let api = parts.uri.path().starts_with("/api/");
        if let Some(token) = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        {
            return match console.accounts.by_token(token.trim()).await {
                Ok(Some(account)) => Ok(User {
                    account,
                    csrf: None,
                    session: None,
                    source,
                }),
                Ok(None) => Err(refuse(StatusCode::UNAUTHORIZED, "unknown API token")),
                Err(e) => Err(refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())),
            };
        }
        if let Some(id) = cookie(&parts.headers, SESSION_COOKIE) {
            match console
                .accounts
                .session(&id, console.idle, crate::util::now())
                .await
            {
                Ok(Some((account, csrf))) => {
                    return Ok(User {
                        account,
                        csrf: Some(csrf),
                        session: Some(id),
                        source,
                    });
                }
                Ok(None) => {}
                Err(e) => return Err(refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())),
            }
        }
        if api {
            Err(refuse(
                StatusCode::UNAUTHORIZED,
                "log in, or send `Authorization: Bearer TOKEN` (sealgate account token NAME)",
            ))
        } else {
            Err(Redirect::to("/login").into_response())
        }
    }
}

/// The language of the pages: German when the browser prefers it or the
/// `lang` cookie says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    De,
}

impl Lang {
    pub fn of(headers: &HeaderMap) -> Lang {
        if let Some(l) = cookie(headers, "lang") {
            return if l == "de" { Lang::De } else { Lang::En };
        }
        let first = headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .unwrap_or("");
        if first.trim().to_ascii_lowercase().starts_with("de") {
            Lang::De
        } else {
            Lang::En
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::De => "de",
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Lang {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Lang, Self::Rejection> {
        Ok(Lang::of(&parts.headers))
    }
}
