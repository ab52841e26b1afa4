//! One inbound SMTP session: the state machine from greeting to QUIT.
//!
//! Commands are parsed by smtp-proto; message data is un-dot-stuffed by its
//! `DataReceiver`, which only ends on CRLF.CRLF (a bare-LF dot does not end
//! the data, so SMTP smuggling finds no second end marker here). Replies are
//! collected and written when the input buffer is used up, which is what
//! PIPELINING (RFC 2920) needs. Every limit answers with its own reply and
//! leaves the session usable, or closes it with a 421.

use std::net::SocketAddr;
use std::sync::Arc;

use smtp_proto::request::receiver::{
    BdatReceiver, DataReceiver, DummyDataReceiver, RequestReceiver,
};
use smtp_proto::{
    AUTH_LOGIN, AUTH_PLAIN, MAIL_BODY_8BITMIME, MAIL_BODY_BINARYMIME, MAIL_REQUIRETLS,
    MAIL_RET_FULL, MAIL_RET_HDRS, MAIL_SMTPUTF8, RCPT_NOTIFY_DELAY, RCPT_NOTIFY_FAILURE,
    RCPT_NOTIFY_NEVER, RCPT_NOTIFY_SUCCESS, Request,
};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at};

use super::InboundContext;
use super::{auth, path};
use crate::config::{ClientCertRule, ListenerConfig, ListenerMode, ListenerTls};
use crate::message::{
    AddressError, Envelope, Notify, Recipient, Ret, TenantId, TlsRequest, crlf_lines, domain_of,
    has_control, literal_ip, mailbox,
};
use crate::policy::RiskClass;
use crate::policy::rules::{Facts, strip_subject_tags};
use crate::qualify::TlsFacts;
use crate::reply::Reply;
use crate::report::{Event, EventData, event};
use crate::spool::{NewMessage, SpoolError};
use crate::tls::ClientIdentity;

/// The slowest a large message may arrive, in bytes per second, once
/// `data_timeout` is used up.
const MIN_DATA_RATE: usize = 1024;

/// The longest command line, CRLF included, however it arrives.
const MAX_COMMAND_LINE: usize = smtp_proto::request::receiver::MAX_LINE_LENGTH;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Why relaying is allowed in this session.
#[derive(Debug, Clone)]
enum Authorization {
    Network(ipnet::IpNet),
    User(String),
    ClientCertificate(String),
    /// None: the only recipient is `<Postmaster>`, which anyone may write to.
    Postmaster,
}

/// The mail transaction in progress (RFC 5321 §3.3).
#[derive(Debug, Default)]
struct Transaction {
    sender: String,
    env_id: Option<String>,
    ret: Option<Ret>,
    smtputf8: bool,
    body_8bit: bool,
    /// `MAIL FROM:<…> REQUIRETLS` (RFC 8689).
    require_tls: bool,
    recipients: Vec<Recipient>,
    /// The content comes in BDAT chunks (RFC 3030); DATA may not follow.
    chunked: bool,
}

/// What the input bytes are, at this point of the session.
enum Phase {
    Command,
    /// After an over-long command line: skip to its end.
    DiscardLine,
    Data,
    /// Over the size limit: read to the end of the data and throw it away.
    DiscardData(DummyDataReceiver),
    /// One BDAT chunk (RFC 3030): exactly so many octets, taken as they are.
    Chunk(BdatReceiver),
    /// A BDAT chunk that cannot be taken: its octets are read and thrown
    /// away (RFC 3030 §2), then the reply is given.
    DiscardChunk(DummyDataReceiver, Reply),
    AuthPlain,
    AuthLoginUser,
    AuthLoginPassword(String),
}

/// What the session loop does after a batch of input.
enum Next {
    Continue,
    StartTls,
    Close,
}

struct Session {
    ctx: Arc<InboundContext>,
    listener: ListenerConfig,
    remote: SocketAddr,
    out: Vec<u8>,
    phase: Phase,
    requests: RequestReceiver,
    data: DataReceiver,
    message: Vec<u8>,
    auth_line: Vec<u8>,
    helo: Option<String>,
    esmtp: bool,
    tls: Option<TlsFacts>,
    client_cert: Option<ClientIdentity>,
    relay: Option<(TenantId, Authorization)>,
    authenticated: bool,
    tx: Option<Transaction>,
    errors: u32,
    auth_failures: u32,
    /// When the command being read began, if one has.
    line_started: Option<tokio::time::Instant>,
    /// When the message data being read began.
    data_started: Option<tokio::time::Instant>,
}

pub async fn run(
    ctx: Arc<InboundContext>,
    listener: ListenerConfig,
    tcp: TcpStream,
    remote: SocketAddr,
) {
    let mut session = Session::new(ctx, listener, remote);
    let mut stream: Box<dyn Io> = Box::new(tcp);
    if session.listener.tls == ListenerTls::Implicit {
        match session.handshake(stream).await {
            Some(s) => stream = s,
            None => return,
        }
    }
    let greeting = Reply {
        code: 220,
        status: [0, 0, 0],
        text: format!("{} ESMTP sealgate", session.ctx.config.hostname).into(),
    };
    session.reply(greeting);
    if let Err(e) = session.serve(stream).await {
        tracing::debug!(remote = %session.remote, "session ended: {e}");
    }
}

impl Session {
    fn new(ctx: Arc<InboundContext>, listener: ListenerConfig, remote: SocketAddr) -> Session {
        let mut s = Session {
            ctx,
            listener,
            remote,
            out: Vec::with_capacity(1024),
            phase: Phase::Command,
            requests: RequestReceiver::default(),
            data: DataReceiver::new(),
            message: Vec::new(),
            auth_line: Vec::new(),
            helo: None,
            esmtp: false,
            tls: None,
            client_cert: None,
            relay: None,
            authenticated: false,
            tx: None,
            errors: 0,
            auth_failures: 0,
            line_started: None,
            data_started: None,
        };
        s.relay = s.network_authorization();
        s
    }

    /// Relay by client network applies on relay listeners only: submission
    /// requires authentication (RFC 6409 §4.3).
    fn network_authorization(&self) -> Option<(TenantId, Authorization)> {
        if self.listener.mode != ListenerMode::Relay {
            return None;
        }
        let ip = self.remote.ip();
        self.ctx.config.tenants.iter().find_map(|t| {
            t.networks
                .iter()
                .find(|n| n.contains(&ip))
                .map(|n| (TenantId(t.id.clone()), Authorization::Network(*n)))
        })
    }

    fn reply(&mut self, reply: Reply) {
        reply.write_to(&mut self.out);
    }

    /// A reply to a command that was wrong; too many of them end the session.
    fn error(&mut self, reply: Reply) -> Next {
        self.errors += 1;
        self.reply(reply);
        if self.errors >= self.ctx.config.limits.max_errors {
            self.reply(Reply::TOO_MANY_ERRORS);
            return Next::Close;
        }
        Next::Continue
    }

    async fn serve(&mut self, mut stream: Box<dyn Io>) -> std::io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut shutdown = self.ctx.shutdown.clone();
        loop {
            if !self.out.is_empty() {
                stream.write_all(&self.out).await?;
                stream.flush().await?;
                self.out.clear();
            }
            let in_data = self.in_data();
            let deadline = self.deadline(in_data);
            let busy = in_data || self.tx.is_some();
            let read = tokio::select! {
                r = timeout_at(deadline, stream.read(&mut buf)) => r,
                // Shutting down: an idle session is told to come back later;
                // one in a transaction is left to finish it.
                _ = shutdown.changed(), if !busy => {
                    self.reply(Reply::SHUTTING_DOWN);
                    stream.write_all(&self.out).await?;
                    return stream.shutdown().await;
                }
            };
            let n = match read {
                Err(_) => {
                    self.reply(Reply::TIMEOUT);
                    stream.write_all(&self.out).await?;
                    return stream.shutdown().await;
                }
                Ok(Ok(0)) => {
                    if in_data {
                        tracing::info!(remote = %self.remote, "client disconnected during DATA; nothing queued");
                    }
                    return Ok(());
                }
                Ok(r) => r?,
            };
            match self.ingest(&buf[..n]).await {
                Next::Continue => {}
                Next::Close => {
                    stream.write_all(&self.out).await?;
                    return stream.shutdown().await;
                }
                Next::StartTls => {
                    stream.write_all(&self.out).await?;
                    stream.flush().await?;
                    self.out.clear();
                    match self.handshake(stream).await {
                        Some(s) => stream = s,
                        None => return Ok(()),
                    }
                }
            }
            if *shutdown.borrow() && self.tx.is_none() && matches!(self.phase, Phase::Command) {
                self.reply(Reply::SHUTTING_DOWN);
                stream.write_all(&self.out).await?;
                return stream.shutdown().await;
            }
        }
    }

    /// Whether message content is being read: during DATA, and from the
    /// first BDAT chunk to the last (so that tiny chunks, each in time,
    /// cannot keep a transaction open forever).
    fn in_data(&self) -> bool {
        matches!(
            self.phase,
            Phase::Data | Phase::DiscardData(_) | Phase::Chunk(_) | Phase::DiscardChunk(..)
        ) || self.tx.as_ref().is_some_and(|t| t.chunked)
    }

    /// Until when the next read may take. A command that has begun must be
    /// complete within `command_timeout` of its first byte, and a message
    /// within `data_timeout` of its first byte (longer only for a large
    /// message, at `MIN_DATA_RATE`): a byte now and then does not keep a
    /// connection forever (slowloris). Between commands, `command_timeout`.
    fn deadline(&mut self, in_data: bool) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        let limits = &self.ctx.config.limits;
        if in_data {
            self.line_started = None;
            let started = *self.data_started.get_or_insert(now);
            let floor = Duration::from_secs((self.message.len() / MIN_DATA_RATE) as u64);
            return started + limits.data_timeout.max(floor);
        }
        self.data_started = None;
        let partial = !self.requests.buf().is_empty()
            || !self.auth_line.is_empty()
            || matches!(self.phase, Phase::DiscardLine);
        if partial {
            *self.line_started.get_or_insert(now) + limits.command_timeout
        } else {
            self.line_started = None;
            now + limits.command_timeout
        }
    }

    /// TLS handshake (STARTTLS or implicit); on success the session starts over (RFC 3207 §4.2).
    async fn handshake(&mut self, stream: Box<dyn Io>) -> Option<Box<dyn Io>> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.ctx.tls.config.clone());
        let tls = match timeout(
            self.ctx.config.limits.command_timeout,
            acceptor.accept(stream),
        )
        .await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::info!(remote = %self.remote, "TLS handshake failed: {e}");
                return None;
            }
            Err(_) => {
                tracing::info!(remote = %self.remote, "TLS handshake timed out");
                return None;
            }
        };
        let (_, conn) = tls.get_ref();
        self.tls = crate::qualify::facts::of(conn, false);
        self.client_cert = conn
            .peer_certificates()
            .and_then(|chain| ClientIdentity::from_chain(self.ctx.tls.client_ca.as_deref(), chain));
        self.helo = None;
        self.esmtp = false;
        self.tx = None;
        self.requests = RequestReceiver::default();
        if let Some(auth) = self.certificate_authorization() {
            self.relay = Some(auth);
        }
        Some(Box::new(tls))
    }

    /// The tenant whose client-certificate rule admitted this session, if
    /// one did: its binding (sender domains, Microsoft 365 tenant) applies.
    fn certificate_tenant(&self) -> Option<&crate::config::Tenant> {
        let Some((id, Authorization::ClientCertificate(_))) = &self.relay else {
            return None;
        };
        self.ctx.config.tenants.iter().find(|t| t.id == id.0)
    }

    fn certificate_authorization(&self) -> Option<(TenantId, Authorization)> {
        let id = self.client_cert.as_ref()?;
        self.ctx.config.tenants.iter().find_map(|t| {
            let matched = t.client_certificates.iter().any(|rule| match rule {
                ClientCertRule::Sha256(fp) => *fp == id.sha256,
                ClientCertRule::Subject(s) => id.chain_verified && *s == id.subject,
                ClientCertRule::San(name) => {
                    id.chain_verified && id.dns_names.iter().any(|d| d.eq_ignore_ascii_case(name))
                }
            });
            matched.then(|| {
                (
                    TenantId(t.id.clone()),
                    Authorization::ClientCertificate(id.fingerprint()),
                )
            })
        })
    }

    /// Processes one chunk of input.
    async fn ingest(&mut self, chunk: &[u8]) -> Next {
        let mut bytes = chunk.iter();
        loop {
            match &mut self.phase {
                Phase::Command => {
                    // The limit holds whether the line spans reads or
                    // arrives whole in one (smtp-proto checks only the first).
                    let rest = bytes.as_slice();
                    let buffered = self.requests.buf().len();
                    let line = match rest.iter().position(|b| *b == b'\n') {
                        Some(i) => buffered + i + 1,
                        None => buffered + rest.len(),
                    };
                    if line > MAX_COMMAND_LINE {
                        self.requests = RequestReceiver::default();
                        self.phase = Phase::DiscardLine;
                        if let Next::Close = self.error(Reply::LINE_TOO_LONG) {
                            return Next::Close;
                        }
                        continue;
                    }
                    // The line as received, put together only for what
                    // smtp-proto's path parser does not take (see `path`).
                    // `buffered` is empty, and allocates nothing, unless the
                    // line spanned reads.
                    let buffered = self.requests.buf().to_vec();
                    let request = self.requests.ingest(&mut bytes).map(Request::into_owned);
                    let consumed = &rest[..rest.len() - bytes.as_slice().len()];
                    let raw = || [buffered.as_slice(), consumed].concat();
                    let request = match request {
                        Ok(Request::Rcpt { mut to })
                            if to.address.is_empty() && path::is_postmaster(&raw()) =>
                        {
                            to.address = path::POSTMASTER.into();
                            Request::Rcpt { to }
                        }
                        Ok(r) => r,
                        Err(
                            e @ (smtp_proto::Error::InvalidSenderAddress
                            | smtp_proto::Error::InvalidRecipientAddress),
                        ) => match path::with_literal(&raw()) {
                            Some(Ok(r)) => r,
                            Some(Err(why)) => {
                                let reply = if matches!(e, smtp_proto::Error::InvalidSenderAddress)
                                {
                                    Reply::BAD_SENDER.with_text(format!("Sender {why}"))
                                } else {
                                    Reply::BAD_RECIPIENT.with_text(format!("Recipient {why}"))
                                };
                                if let Next::Close = self.error(reply) {
                                    return Next::Close;
                                }
                                continue;
                            }
                            None => {
                                if let Next::Close = self.error(parse_error_reply(&e)) {
                                    return Next::Close;
                                }
                                continue;
                            }
                        },
                        Err(smtp_proto::Error::NeedsMoreData { .. }) => return Next::Continue,
                        Err(smtp_proto::Error::ResponseTooLong) => {
                            self.phase = Phase::DiscardLine;
                            if let Next::Close = self.error(Reply::LINE_TOO_LONG) {
                                return Next::Close;
                            }
                            continue;
                        }
                        Err(e) => {
                            if let Next::Close = self.error(parse_error_reply(&e)) {
                                return Next::Close;
                            }
                            continue;
                        }
                    };
                    match self.command(request).await {
                        Next::Continue => {}
                        Next::Close => return Next::Close,
                        // Whatever the client pipelined after STARTTLS is
                        // dropped, never read as if it came over TLS.
                        Next::StartTls => return Next::StartTls,
                    }
                }
                Phase::DiscardLine => {
                    let rest = bytes.as_slice();
                    match rest.iter().position(|b| *b == b'\n') {
                        Some(i) => {
                            bytes = rest[i + 1..].iter();
                            self.phase = Phase::Command;
                            self.requests = RequestReceiver::default();
                        }
                        None => return Next::Continue,
                    }
                }
                Phase::Data => {
                    let done = self.data.ingest(&mut bytes, &mut self.message);
                    if done {
                        self.phase = Phase::Command;
                        self.finish_data().await;
                    } else if self.message.len() > self.ctx.config.limits.max_message_size {
                        self.phase = Phase::DiscardData(DummyDataReceiver::new_data(&self.data));
                        self.message = Vec::new();
                    } else {
                        return Next::Continue;
                    }
                }
                Phase::DiscardData(receiver) => {
                    if receiver.ingest(&mut bytes) {
                        self.phase = Phase::Command;
                        self.tx = None;
                        self.reply(Reply::MESSAGE_TOO_BIG.with_text(format!(
                            "Message size exceeds fixed limit of {} bytes",
                            self.ctx.config.limits.max_message_size
                        )));
                    } else {
                        return Next::Continue;
                    }
                }
                Phase::Chunk(receiver) => {
                    if !receiver.ingest(&mut bytes, &mut self.message) {
                        return Next::Continue;
                    }
                    let last = receiver.is_last;
                    self.phase = Phase::Command;
                    if last {
                        self.finish_data().await;
                    } else {
                        self.reply(
                            Reply::CHUNK_OK
                                .with_text(format!("{} octets received", self.message.len())),
                        );
                    }
                }
                Phase::DiscardChunk(receiver, _) => {
                    if !receiver.ingest(&mut bytes) {
                        return Next::Continue;
                    }
                    if let Phase::DiscardChunk(_, reply) =
                        std::mem::replace(&mut self.phase, Phase::Command)
                        && let Next::Close = self.error(reply)
                    {
                        return Next::Close;
                    }
                }
                Phase::AuthPlain | Phase::AuthLoginUser | Phase::AuthLoginPassword(_) => {
                    let rest = bytes.as_slice();
                    let Some(i) = rest.iter().position(|b| *b == b'\n') else {
                        if self.auth_line.len() + rest.len() > 4096 {
                            self.phase = Phase::DiscardLine;
                            self.auth_line.clear();
                            return self.error(Reply::AUTH_MALFORMED);
                        }
                        self.auth_line.extend_from_slice(rest);
                        return Next::Continue;
                    };
                    self.auth_line.extend_from_slice(&rest[..=i]);
                    bytes = rest[i + 1..].iter();
                    let line = std::mem::take(&mut self.auth_line);
                    if let Next::Close = self.auth_step(&line).await {
                        return Next::Close;
                    }
                }
            }
        }
    }

    async fn command(&mut self, request: Request<String>) -> Next {
        match request {
            Request::Ehlo { host } => self.hello(host, true),
            Request::Helo { host } => self.hello(host, false),
            Request::Lhlo { .. } => self.error(Reply::UNKNOWN_COMMAND),
            Request::StartTls => self.starttls(),
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, initial_response).await,
            Request::Mail { from } => self.mail(from),
            Request::Rcpt { to } => self.rcpt(to),
            Request::Data => self.data(),
            Request::Bdat {
                chunk_size,
                is_last,
            } => self.bdat(chunk_size, is_last),
            Request::Rset => {
                self.tx = None;
                self.message = Vec::new();
                self.reply(Reply::RESET_OK);
                Next::Continue
            }
            Request::Noop { .. } => {
                self.reply(Reply::OK);
                Next::Continue
            }
            Request::Quit => {
                self.reply(Reply::BYE);
                Next::Close
            }
            Request::Vrfy { .. } => {
                self.reply(Reply::VRFY_REFUSED);
                Next::Continue
            }
            Request::Expn { .. }
            | Request::Help { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => self.error(Reply::NOT_IMPLEMENTED),
        }
    }

    fn starttls_offered(&self) -> bool {
        self.listener.tls == ListenerTls::Starttls && self.tls.is_none()
    }

    fn auth_offered(&self) -> bool {
        self.tls.is_some() && !self.ctx.users.is_empty() && !self.authenticated
    }

    fn hello(&mut self, host: String, esmtp: bool) -> Next {
        // The name goes into our Received: header: nothing but text.
        if has_control(&host) {
            return self.error(Reply::BAD_HELO);
        }
        self.helo = Some(host);
        self.esmtp = esmtp;
        self.tx = None;
        let name = &self.ctx.config.hostname;
        if !esmtp {
            self.reply(Reply::OK.with_text(name.clone()));
            return Next::Continue;
        }
        let mut lines = vec![
            name.clone(),
            "PIPELINING".into(),
            format!("SIZE {}", self.ctx.config.limits.max_message_size),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
            "DSN".into(),
            // BDAT (RFC 3030), which Exchange and Microsoft 365 use when
            // offered. Not BINARYMIME: a relay cannot know at EHLO whether
            // every next hop takes binary content, and could not convert it.
            "CHUNKING".into(),
        ];
        if self.starttls_offered() {
            lines.push("STARTTLS".into());
        }
        if self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        // RFC 8689 §3: only where the session itself is encrypted.
        if self.tls.is_some() {
            lines.push("REQUIRETLS".into());
        }
        // EHLO replies carry no enhanced status code (RFC 2034 §3).
        self.reply(Reply {
            code: 250,
            status: [0, 0, 0],
            text: lines.join("\n").into(),
        });
        Next::Continue
    }

    fn starttls(&mut self) -> Next {
        if self.tls.is_some() {
            return self.error(Reply::ALREADY_TLS);
        }
        if !self.starttls_offered() {
            return self.error(Reply::NOT_IMPLEMENTED);
        }
        self.reply(Reply::READY_FOR_TLS);
        Next::StartTls
    }

    async fn auth(&mut self, mechanism: u64, initial: String) -> Next {
        if self.authenticated {
            return self.error(Reply::ALREADY_AUTHENTICATED);
        }
        if self.ctx.users.is_empty() {
            return self.error(Reply::NOT_IMPLEMENTED);
        }
        if self.tls.is_none() {
            // RFC 4954 §4: no passwords over an unencrypted session.
            return self.error(Reply::TLS_REQUIRED);
        }
        if self.tx.is_some() {
            return self.error(Reply::BAD_SEQUENCE);
        }
        match mechanism {
            AUTH_PLAIN if initial.is_empty() => {
                self.reply(prompt(""));
                self.phase = Phase::AuthPlain;
            }
            AUTH_PLAIN => return self.auth_plain(initial.as_bytes()).await,
            AUTH_LOGIN if initial.is_empty() => {
                self.reply(prompt("Username:"));
                self.phase = Phase::AuthLoginUser;
            }
            AUTH_LOGIN => match auth::decode(initial.as_bytes()) {
                Some(user) => {
                    self.reply(prompt("Password:"));
                    self.phase = Phase::AuthLoginPassword(user);
                }
                None => return self.error(Reply::AUTH_MALFORMED),
            },
            _ => return self.error(Reply::AUTH_MECHANISM_UNSUPPORTED),
        }
        Next::Continue
    }

    /// One line of a SASL exchange.
    async fn auth_step(&mut self, line: &[u8]) -> Next {
        let phase = std::mem::replace(&mut self.phase, Phase::Command);
        if line.trim_ascii() == b"*" {
            // RFC 4954 §4: the client cancels the exchange.
            return self.error(Reply::AUTH_CANCELLED);
        }
        match phase {
            Phase::AuthPlain => self.auth_plain(line).await,
            Phase::AuthLoginUser => match auth::decode(line) {
                Some(user) => {
                    self.reply(prompt("Password:"));
                    self.phase = Phase::AuthLoginPassword(user);
                    Next::Continue
                }
                None => self.error(Reply::AUTH_MALFORMED),
            },
            Phase::AuthLoginPassword(user) => match auth::decode(line) {
                Some(password) => self.check_credentials(user, password).await,
                None => self.error(Reply::AUTH_MALFORMED),
            },
            other => {
                self.phase = other;
                Next::Continue
            }
        }
    }

    async fn auth_plain(&mut self, response: &[u8]) -> Next {
        match auth::decode(response).and_then(|m| auth::split_plain(&m)) {
            Some((user, password)) => self.check_credentials(user, password).await,
            None => self.error(Reply::AUTH_MALFORMED),
        }
    }

    async fn check_credentials(&mut self, user: String, password: String) -> Next {
        let guard = &self.ctx.auth_guard;
        let ip = self.remote.ip();
        // Earlier failures from this address or for this user name, in any
        // session, make this check wait: guessing gets slower and slower.
        let wait = guard.delay(ip, &user);
        if !wait.is_zero() {
            tracing::info!(remote = %self.remote, %user, "AUTH after repeated failures: waiting {wait:?}");
            tokio::time::sleep(wait).await;
        }
        let ok = guard.verify(self.ctx.users.clone(), &user, password).await;
        if ok {
            guard.succeeded(ip, &user);
            let config = &self.ctx.config;
            let tenant = config
                .tenants
                .iter()
                .find(|t| t.users.contains(&user))
                .map(|t| t.id.clone())
                .unwrap_or_else(|| config.default_tenant.clone());
            tracing::info!(remote = %self.remote, %user, %tenant, "authenticated");
            self.authenticated = true;
            self.relay = Some((TenantId(tenant), Authorization::User(user)));
            self.reply(Reply::AUTH_OK);
            return Next::Continue;
        }
        tracing::info!(remote = %self.remote, %user, "authentication failed");
        guard.failed(ip, &user);
        self.auth_failures += 1;
        self.reply(Reply::AUTH_INVALID);
        if self.auth_failures >= self.ctx.config.limits.max_auth_failures {
            self.reply(Reply::TOO_MANY_ERRORS);
            return Next::Close;
        }
        Next::Continue
    }

    fn mail(&mut self, from: smtp_proto::MailFrom<String>) -> Next {
        if self.helo.is_none() {
            return self.error(Reply::NEED_EHLO);
        }
        if self.tx.is_some() {
            return self.error(Reply::BAD_SEQUENCE.with_text("Nested MAIL command"));
        }
        if self.listener.mode == ListenerMode::Submission && self.relay.is_none() {
            return self.error(
                if self.tls.is_none() && self.listener.tls == ListenerTls::Starttls {
                    Reply::TLS_REQUIRED
                } else {
                    Reply::AUTH_REQUIRED
                },
            );
        }
        // Said now rather than after DATA: a shared database that is down
        // could commit nothing, and the client may try another node at once.
        if !self.ctx.spool.available() {
            return self.error(Reply::STORAGE_DOWN);
        }
        let limit = self.ctx.config.limits.max_message_size;
        if from.size > limit {
            return self.error(
                Reply::MESSAGE_TOO_BIG
                    .with_text(format!("Message size exceeds fixed limit of {limit} bytes")),
            );
        }
        if from.flags & MAIL_BODY_BINARYMIME != 0 {
            return self.error(
                Reply::PARAM_NOT_IMPLEMENTED.with_text("BODY=BINARYMIME is not offered here"),
            );
        }
        let require_tls = from.flags & MAIL_REQUIRETLS != 0;
        if require_tls && self.tls.is_none() {
            return self.error(Reply::REQUIRETLS_WITHOUT_TLS);
        }
        let smtputf8 = from.flags & MAIL_SMTPUTF8 != 0;
        if !smtputf8 && !from.address.is_ascii() {
            return self.error(Reply::SMTPUTF8_NOT_ALLOWED);
        }
        // ENVID arrives xtext-decoded: a CR LF in it would become a header
        // of the bounce (RFC 3461 §4.4 allows none).
        if from.env_id.as_deref().is_some_and(has_control) {
            return self.error(Reply::BAD_PARAMETER.with_text("ENVID contains control characters"));
        }
        let sender = if from.address.is_empty() {
            String::new()
        } else {
            match mailbox(&from.address) {
                Ok(a) => a,
                Err(e) => return self.error(Reply::BAD_SENDER.with_text(format!("Sender {e}"))),
            }
        };
        if let Some(t) = self.certificate_tenant()
            && !t.sender_domains.is_empty()
            && !sender.is_empty()
        {
            let domain = crate::message::domain_of(&sender);
            if !t
                .sender_domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(domain))
            {
                tracing::info!(remote = %self.remote, %sender, tenant = %t.id, "sender domain not bound to the client certificate");
                return self.error(Reply::RELAY_DENIED.with_text(format!(
                    "Sender domain {domain} is not one of this client's domains"
                )));
            }
        }
        self.tx = Some(Transaction {
            sender,
            env_id: from.env_id,
            ret: if from.flags & MAIL_RET_FULL != 0 {
                Some(Ret::Full)
            } else if from.flags & MAIL_RET_HDRS != 0 {
                Some(Ret::Headers)
            } else {
                None
            },
            smtputf8,
            body_8bit: from.flags & MAIL_BODY_8BITMIME != 0,
            require_tls,
            recipients: Vec::new(),
            chunked: false,
        });
        self.reply(Reply::SENDER_OK);
        Next::Continue
    }

    fn rcpt(&mut self, to: smtp_proto::RcptTo<String>) -> Next {
        let Some(tx) = &self.tx else {
            return self.error(Reply::NEED_MAIL);
        };
        let smtputf8 = tx.smtputf8;
        let count = tx.recipients.len();
        let postmaster = to.address == path::POSTMASTER;
        let address = match mailbox(if postmaster {
            match &self.ctx.config.postmaster {
                Some(p) => p,
                None => return self.error(Reply::NO_POSTMASTER),
            }
        } else {
            &to.address
        }) {
            Ok(a) => a,
            Err(AddressError::NoDomain) => {
                return self.error(
                    Reply::BAD_RECIPIENT.with_text("Recipient address must be local@domain"),
                );
            }
            Err(e) => return self.error(Reply::BAD_RECIPIENT.with_text(format!("Recipient {e}"))),
        };
        if to.orcpt.as_deref().is_some_and(has_control) {
            return self.error(Reply::BAD_PARAMETER.with_text("ORCPT contains control characters"));
        }
        if !smtputf8 && !address.is_ascii() {
            return self.error(Reply::SMTPUTF8_NOT_ALLOWED);
        }
        if self.relay.is_none() && !postmaster {
            // We own no mailboxes: every recipient but <Postmaster> is a
            // relay request.
            tracing::info!(remote = %self.remote, rcpt = %address, "relay denied");
            return self
                .error(Reply::RELAY_DENIED.with_text(format!("<{address}>: Relay access denied")));
        }
        if literal_ip(domain_of(&address)).is_some() && !self.ctx.config.outbound.address_literals {
            tracing::info!(remote = %self.remote, rcpt = %address, "address literal refused");
            return self.error(Reply::LITERAL_REFUSED);
        }
        if count >= self.ctx.config.limits.max_recipients {
            self.reply(Reply::TOO_MANY_RECIPIENTS);
            return Next::Continue;
        }
        let f = to.flags;
        let notify = Notify {
            success: f & RCPT_NOTIFY_SUCCESS != 0,
            failure: f & RCPT_NOTIFY_FAILURE != 0,
            delay: f & RCPT_NOTIFY_DELAY != 0,
            never: f & RCPT_NOTIFY_NEVER != 0,
            explicit: f
                & (RCPT_NOTIFY_SUCCESS
                    | RCPT_NOTIFY_FAILURE
                    | RCPT_NOTIFY_DELAY
                    | RCPT_NOTIFY_NEVER)
                != 0,
        };
        if let Some(tx) = &mut self.tx {
            tx.recipients
                .push(Recipient::new(address, to.orcpt, notify));
        }
        self.reply(Reply::RECIPIENT_OK);
        Next::Continue
    }

    fn data(&mut self) -> Next {
        match &self.tx {
            None => self.error(Reply::NEED_MAIL),
            Some(tx) if tx.chunked => {
                self.tx = None;
                self.message.clear();
                self.error(Reply::MIXED_DATA_BDAT)
            }
            Some(tx) if tx.recipients.is_empty() => self.error(Reply::NO_VALID_RECIPIENTS),
            Some(_) => {
                self.reply(Reply::START_DATA);
                self.phase = Phase::Data;
                self.data = DataReceiver::new();
                // The data begins at a line start (after DATA's CRLF), so a
                // dot there is stuffed too (RFC 5321 §4.5.2); smtp-proto's
                // receiver only knows line starts after a CRLF it has seen.
                self.data.ingest(&mut b"\r\n".iter(), &mut self.message);
                self.message.clear();
                Next::Continue
            }
        }
    }

    /// A BDAT command: its chunk is read in any case (RFC 3030 §2), kept
    /// when the transaction may go on, thrown away with the reply when not.
    fn bdat(&mut self, size: usize, last: bool) -> Next {
        let limit = self.ctx.config.limits.max_message_size;
        let refusal = match &self.tx {
            None => Some(Reply::NEED_MAIL),
            Some(tx) if tx.recipients.is_empty() => Some(Reply::NO_VALID_RECIPIENTS),
            Some(_) if self.message.len().saturating_add(size) > limit => Some(
                Reply::MESSAGE_TOO_BIG
                    .with_text(format!("Message size exceeds fixed limit of {limit} bytes")),
            ),
            Some(_) => None,
        };
        if let Some(reply) = refusal {
            // The transaction ends: later chunks the client pipelined find
            // no transaction and are thrown away too.
            self.tx = None;
            self.message = Vec::new();
            self.phase = Phase::DiscardChunk(DummyDataReceiver::new_bdat(size), reply);
            return Next::Continue;
        }
        if let Some(tx) = &mut self.tx
            && !tx.chunked
        {
            tx.chunked = true;
            self.message.clear();
        }
        self.phase = Phase::Chunk(BdatReceiver::new(size, last));
        Next::Continue
    }

    /// The end of the content (DATA's dot or the last BDAT chunk): check
    /// it, make it durable, then answer.
    async fn finish_data(&mut self) {
        let Some(tx) = self.tx.take() else {
            return;
        };
        let data = std::mem::take(&mut self.message);
        let limits = &self.ctx.config.limits;
        if data.len() > limits.max_message_size {
            self.reply(Reply::MESSAGE_TOO_BIG.with_text(format!(
                "Message size exceeds fixed limit of {} bytes",
                limits.max_message_size
            )));
            return;
        }
        if let Some(len) = longest_line(&data).filter(|l| *l > limits.max_line_length) {
            self.reply(Reply::DATA_LINE_TOO_LONG.with_text(format!(
                "Message has a line of {len} bytes; the limit is {}",
                limits.max_line_length
            )));
            return;
        }
        if let Some(line) = control_in_headers(&data) {
            self.reply(Reply::BAD_HEADERS.with_text(format!(
                "Message header line {line} contains a control character"
            )));
            return;
        }
        if let Some(t) = self.certificate_tenant()
            && let Some(expected) = &t.m365_tenant_id
        {
            let found = header_value(&data, "x-ms-exchange-crosstenant-id");
            if !found
                .as_deref()
                .is_some_and(|v| v.trim().eq_ignore_ascii_case(expected.trim()))
            {
                tracing::info!(remote = %self.remote, tenant = %t.id, found = ?found, "message not from the client certificate's Microsoft 365 tenant");
                self.reply(Reply::RELAY_DENIED.with_text(
                    "Message is not from this client's Microsoft 365 tenant (X-MS-Exchange-CrossTenant-Id)",
                ));
                return;
            }
        }
        // Without relay rights, RCPT took nothing but <Postmaster>.
        let (tenant, authorization) = self.relay.clone().unwrap_or_else(|| {
            (
                TenantId(self.ctx.config.default_tenant.clone()),
                Authorization::Postmaster,
            )
        });
        let spool = &self.ctx.spool;
        let id = spool.next_id();
        let now = chrono::Local::now();
        let received = self.received_header(&tx, id, &now);
        let mut body = Vec::with_capacity(received.len() + data.len() + 16);
        body.extend_from_slice(received.as_bytes());
        crlf_lines(&data, &mut body);
        if let Some(clean) = crate::view::strip_transport_headers(&body) {
            tracing::info!(
                remote = %self.remote,
                "removed the {} header the sender wrote: only the gateway says how a message travelled",
                crate::view::HEADER
            );
            body = clean;
        }
        let (recipients, classified) = self.classify(&tenant, &authorization, &tx, &mut body);
        let (tls_request, tls_request_note) = self.tls_request(&tx, &body, &recipients);
        let (content, content_note) = crate::policy::e2e::detect(&body);
        if let Some(view) = self.ctx.config.view(&tenant.0) {
            let classes: Vec<RiskClass> = recipients.iter().map(|r| r.class).collect();
            if let Some(tag) = crate::view::subject_tag(view, &classes) {
                body = crate::view::tag_subject(&body, &tag);
            }
        }
        // After the last change we make (subject tags removed or added), before the
        // message is stored: what is signed is what every next hop gets.
        if let Some(signature) = self.ctx.dkim.sign(&tenant.0, &body) {
            body.splice(0..0, signature.into_bytes());
        }
        let domains = {
            let mut d: Vec<String> = tx.recipients.iter().map(|r| r.domain.clone()).collect();
            d.sort();
            d.dedup();
            d
        };
        let received_at = now.timestamp();
        let lifetime = self.ctx.config.queue.max_lifetime.as_secs() as i64;
        let client = format!(
            "{} helo={} {}",
            self.remote.ip(),
            self.helo.as_deref().unwrap_or(""),
            match &authorization {
                Authorization::Network(n) => format!("network={n}"),
                Authorization::User(u) => format!("user={u}"),
                Authorization::ClientCertificate(fp) => format!("cert-sha256={fp}"),
                Authorization::Postmaster => "postmaster-only".into(),
            }
        );
        let events = vec![
            Event {
                queue_id: id,
                at: received_at,
                data: EventData::Received(Box::new(event::Received {
                    v: event::VERSION,
                    client: client.clone(),
                    listener: Some(self.listener.address.to_string()),
                    tls: self.tls.clone(),
                    size: body.len() as u64,
                    message_id: header_value(&body, "message-id"),
                    sender: tx.sender.clone(),
                    recipients: recipients.iter().map(|r| r.address.clone()).collect(),
                    bounce_of: None,
                    tls_request: tls_request_note,
                    content: content_note,
                })),
            },
            Event {
                queue_id: id,
                at: received_at,
                data: EventData::Classified(event::Classified {
                    v: event::VERSION,
                    recipients: classified,
                }),
            },
        ];
        let message = NewMessage {
            id,
            envelope: Envelope {
                tenant: tenant.clone(),
                sender: tx.sender,
                env_id: tx.env_id,
                ret: tx.ret,
                smtputf8: tx.smtputf8,
                // Declared or not (RFC 6152): what the content is decides
                // how it is passed on.
                body_8bit: tx.body_8bit || !body.is_ascii(),
                tls_request,
                content,
                recipients,
            },
            received_at,
            expires_at: received_at + lifetime,
            client,
            body,
            events,
        };
        let size = message.body.len();
        let rcpts = message.envelope.recipients.len();
        match spool.store(message).await {
            Ok(()) => {
                tracing::info!(%id, remote = %self.remote, %tenant, size, rcpts, "queued");
                self.ctx.queue.submitted(id, domains, received_at);
                self.reply(Reply::OK.with_text(format!("Ok: queued as {id}")));
            }
            Err(SpoolError::Full(e)) => {
                tracing::error!(remote = %self.remote, "spool full, message refused: {e}");
                self.reply(Reply::STORAGE_FULL);
            }
            Err(e) => {
                tracing::error!(remote = %self.remote, "spool error, message refused: {e}");
                self.reply(Reply::STORAGE_ERROR);
            }
        }
    }

    /// What the sender asked of the transport (RFC 8689), and the words
    /// for the log: REQUIRETLS, or a `TLS-Required: No` header, which
    /// `[policy] honour_tls_required_no` lets relax normal-class mail only.
    fn tls_request(
        &self,
        tx: &Transaction,
        body: &[u8],
        recipients: &[Recipient],
    ) -> (TlsRequest, Option<String>) {
        let header_no =
            header_value(body, "tls-required").is_some_and(|v| v.trim().eq_ignore_ascii_case("no"));
        if tx.require_tls {
            let mut note = "REQUIRETLS (RFC 8689): only to hosts authenticated by DANE or MTA-STS \
                            that take REQUIRETLS; else returned, never sealed"
                .to_string();
            if header_no {
                note.push_str("; TLS-Required: No ignored, REQUIRETLS was given (RFC 8689 §5)");
            }
            return (TlsRequest::RequireTls, Some(note));
        }
        if !header_no {
            return (TlsRequest::None, None);
        }
        if !self.ctx.config.policy.honour_tls_required_no {
            return (
                TlsRequest::None,
                Some("TLS-Required: No ignored: [policy] honour_tls_required_no = false".into()),
            );
        }
        let (normal, other): (Vec<&Recipient>, Vec<&Recipient>) = recipients
            .iter()
            .partition(|r| r.class == RiskClass::Normal);
        let list = |rs: &[&Recipient]| {
            rs.iter()
                .map(|r| format!("{} ({})", r.address, r.class))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut note = String::from("TLS-Required: No (RFC 8689 §5): ");
        if normal.is_empty() {
            note.push_str("honoured for none");
        } else {
            note.push_str(&format!(
                "honoured for {}: may travel without TLS where no DANE or MTA-STS policy forbids it",
                list(&normal)
            ));
        }
        if !other.is_empty() {
            note.push_str(&format!(
                "; never for high or confidential: ignored for {}",
                list(&other)
            ));
        }
        (TlsRequest::TlsOptional, Some(note))
    }

    /// Gives every recipient the message's risk class under the tenant's
    /// policy, and removes the subject tags that set it.
    fn classify(
        &self,
        tenant: &TenantId,
        authorization: &Authorization,
        tx: &Transaction,
        body: &mut Vec<u8>,
    ) -> (Vec<Recipient>, Vec<event::ClassifiedRecipient>) {
        let policy = self.ctx.policies.current().for_tenant(&tenant.0);
        let facts = Facts::parse(body, policy.reads());
        let authenticated = !matches!(
            authorization,
            Authorization::Network(_) | Authorization::Postmaster
        );
        let trusted = policy.trusts_class_header(self.remote.ip(), authenticated);
        let mut tags = Vec::new();
        let mut recipients = Vec::with_capacity(tx.recipients.len());
        let mut evidence = Vec::with_capacity(tx.recipients.len());
        for r in &tx.recipients {
            let c = policy.classify(&tx.sender, &r.address, &facts, trusted);
            evidence.push(event::ClassifiedRecipient {
                address: r.address.clone(),
                class: c.class,
                by: c.by.clone(),
                tags: c.tags.clone(),
            });
            if c.class != RiskClass::Normal {
                tracing::info!(remote = %self.remote, to = %r.address, class = %c.class, by = %c.by.join(", "), "classified");
            }
            tags.extend(c.tags);
            recipients.push(r.clone().with_class(c.class));
        }
        tags.sort();
        tags.dedup();
        if let Some(stripped) = strip_subject_tags(body, &tags) {
            *body = stripped;
        }
        (recipients, evidence)
    }

    /// Our trace header (RFC 5321 §4.4), with the TLS facts of this session.
    fn received_header(
        &self,
        tx: &Transaction,
        id: crate::message::QueueId,
        now: &chrono::DateTime<chrono::Local>,
    ) -> String {
        let helo = self.helo.as_deref().unwrap_or("unknown");
        let mut h = format!("Received: from {helo} ([{}])", self.remote.ip());
        if let Some(tls) = &self.tls {
            h.push_str(&format!(
                "\r\n\t(using {} with cipher {}",
                tls.version, tls.cipher_suite
            ));
            if let Some(group) = &tls.kx_group {
                h.push_str(&format!(" key-exchange {group}"));
            }
            h.push(')');
        }
        if let Some((_, Authorization::ClientCertificate(fp))) = &self.relay {
            h.push_str(&format!("\r\n\t(client certificate SHA-256 {fp})"));
        }
        // RFC 3848 and RFC 6531 §3.7.3 protocol names.
        let protocol = format!(
            "{}{}{}",
            if tx.smtputf8 {
                "UTF8SMTP"
            } else if self.esmtp {
                "ESMTP"
            } else {
                "SMTP"
            },
            if self.tls.is_some() { "S" } else { "" },
            if self.authenticated { "A" } else { "" },
        );
        h.push_str(&format!(
            "\r\n\tby {} (sealgate) with {protocol} id {id}",
            self.ctx.config.hostname
        ));
        if let [only] = tx.recipients.as_slice() {
            h.push_str(&format!("\r\n\tfor <{}>", only.address));
        }
        h.push_str(&format!("; {}\r\n", now.to_rfc2822()));
        h
    }
}

/// The first value of a header (unfolded, trimmed), without a MIME parser:
/// for the log, where a missing or odd header is simply absent.
fn header_value(message: &[u8], name: &str) -> Option<String> {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(message.len());
    let head = String::from_utf8_lossy(&message[..end]);
    let mut lines = head.split("\r\n");
    while let Some(line) = lines.next() {
        let Some((n, v)) = line.split_once(':') else {
            continue;
        };
        if n.eq_ignore_ascii_case(name) {
            let mut value = v.trim().to_string();
            for more in lines.by_ref() {
                if !more.starts_with([' ', '\t']) {
                    break;
                }
                value.push(' ');
                value.push_str(more.trim());
            }
            return Some(value);
        }
    }
    None
}

/// Copies message data, turning a bare LF into CRLF so that every line
/// ends the same way on the way out.
/// The number of the first header line (1-based) holding a NUL or another
/// control character than TAB, CR or LF; headers are text (RFC 5322 §2.2),
/// and what we relay raw the next hop may read otherwise.
fn control_in_headers(data: &[u8]) -> Option<usize> {
    let end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 2)
        .or_else(|| data.windows(2).position(|w| w == b"\n\n").map(|i| i + 1))
        .unwrap_or(data.len());
    data[..end]
        .split(|b| *b == b'\n')
        .position(|line| {
            line.strip_suffix(b"\r")
                .unwrap_or(line)
                .iter()
                .any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
        })
        .map(|i| i + 1)
}

/// Length of the longest line, without its line end.
fn longest_line(data: &[u8]) -> Option<usize> {
    data.split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l).len())
        .max()
}

fn prompt(text: &str) -> Reply {
    Reply {
        code: 334,
        status: [0, 0, 0],
        text: auth::encode(text).into(),
    }
}

fn parse_error_reply(e: &smtp_proto::Error) -> Reply {
    use smtp_proto::Error as E;
    match e {
        E::UnknownCommand => Reply::UNKNOWN_COMMAND,
        E::InvalidSenderAddress => Reply::BAD_SENDER,
        E::InvalidRecipientAddress => Reply::BAD_RECIPIENT,
        E::SyntaxError { syntax } => Reply::SYNTAX_ERROR.with_text(format!("Syntax: {syntax}")),
        E::InvalidParameter { param } => {
            Reply::SYNTAX_ERROR.with_text(format!("Invalid parameter {param}"))
        }
        E::UnsupportedParameter { param } => {
            Reply::PARAM_NOT_IMPLEMENTED.with_text(format!("Unsupported parameter {param}"))
        }
        E::ResponseTooLong => Reply::LINE_TOO_LONG,
        _ => Reply::SYNTAX_ERROR,
    }
}
