//! The web console, the HTTP API and the metrics endpoints, served by
//! `sealgate serve` itself on the `[console]` HTTPS listener.
//!
//! Pages are rendered on the server (maud escapes every value it is
//! given) and need no script. Who may see and do what follows from the
//! account's role ([`accounts::Role`]); a tenant-admin's every query is
//! scoped to its tenant. Browsers authenticate with a session cookie
//! (`__Host-`, HttpOnly, Secure, SameSite=Strict) and send a CSRF token
//! with every form; automation uses a bearer token under `/api/v1`. Every
//! action, login and logout is appended to the transaction log, so the
//! auditor sees the admins too. Pages and the API read through one query
//! layer ([`index`]).

pub mod accounts;
mod api;
pub mod index;
mod metrics;
mod pages;
mod policies;
mod query;
mod reports;
mod serve;
mod session;
mod state;

pub use serve::{bind, run};
pub use state::Console;
