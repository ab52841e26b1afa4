//! sealgate: an outbound SMTP relay that delivers a message only over a
//! transport good enough for it, and proves which transport it used.
//!
//! The modules follow the data flow of a message:
//! `inbound` (classified by `policy`) → `spool` → `queue` → `outbound`
//! (with `dns`, `qualify`, and `policy` deciding per recipient),
//! wired together by `server`. `message` is the model they share, `util`
//! the small helpers (clock, RFC 3339, hex, error chains). See
//! docs/ARCHITECTURE.md.

pub mod cli;
pub mod config;
pub mod console;
pub mod control;
pub mod dkim;
pub mod dns;
pub mod inbound;
pub mod message;
pub mod metrics;
pub mod outbound;
pub mod policy;
pub mod qualify;
pub mod queue;
pub mod reply;
pub mod report;
pub mod seal;
pub mod server;
pub mod spool;
pub mod systemd;
pub mod tables;
pub mod tls;
pub mod util;
pub mod view;
