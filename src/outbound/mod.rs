//! Delivers one job (a message and its recipients in one domain) to the
//! domain's mail exchangers.
//!
//! An attempt is a short pipeline of named steps: [`Outbound::route`] (static
//! route or MX), connect (in preference order, falling back to the next
//! host or address when one fails), STARTTLS when offered (opportunistic in
//! the relay core), the transaction, and a per-recipient [`Outcome`].
//! Connections are kept for a few seconds after a transaction so the next
//! job to the same domain skips the connect, greeting, EHLO and TLS
//! handshake.

pub mod client;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rustls::pki_types::ServerName;

use crate::config::Config;
use crate::dns::{Dns, DnsError, MxAnswer};
use crate::qualify::{Check, CheckName, Status, Verdict};
use crate::reply::Reply;
use crate::spool::LoadedJob;
use client::{ClientError, SmtpClient, Timeouts};

/// Why a recipient ended where it did, for the queue, the DSN and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detail {
    /// Enhanced status code (RFC 3463) for the DSN.
    pub status: [u8; 3],
    /// `host[address]` of the peer that answered, if one did.
    pub remote: Option<String>,
    /// The peer's reply, as it said it.
    pub reply: Option<Reply>,
    /// One line for the operator: what happened.
    pub text: String,
}

impl Detail {
    fn from_reply(remote: &str, reply: &Reply) -> Detail {
        let status = if reply.status != [0, 0, 0] {
            reply.status
        } else {
            [(reply.code / 100) as u8, 0, 0]
        };
        Detail {
            status,
            remote: Some(remote.to_string()),
            reply: Some(reply.clone()),
            text: format!("{remote} said: {reply}"),
        }
    }

    fn local(status: [u8; 3], text: impl Into<String>) -> Detail {
        Detail {
            status,
            remote: None,
            reply: None,
            text: text.into(),
        }
    }
}

/// What an attempt did for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered(Detail),
    /// Permanent failure: bounce now.
    Failed(Detail),
    /// Temporary failure: try again later.
    Deferred(Detail),
}

/// The result of one delivery attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// Keyed by the recipient's index in the envelope.
    pub outcomes: Vec<(u32, Outcome)>,
    /// The verdict of the connection the transaction ran on, if one was made.
    pub verdict: Option<Verdict>,
}

/// One host to try, with its addresses.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub preference: u16,
    pub port: u16,
}

/// Routing failed for the whole domain.
#[derive(Debug, Clone)]
struct RouteFailure {
    permanent: bool,
    status: [u8; 3],
    text: String,
}

struct Idle {
    client: SmtpClient,
    since: Instant,
    verdict: Option<Verdict>,
}

/// The outbound side; shared by all delivery tasks.
pub struct Outbound {
    config: Arc<Config>,
    dns: Dns,
    connector: tokio_rustls::TlsConnector,
    idle: Mutex<HashMap<String, Vec<Idle>>>,
}

impl Outbound {
    pub fn new(config: Arc<Config>, dns: Dns) -> Outbound {
        Outbound {
            config,
            dns,
            connector: client::opportunistic_connector(),
            idle: Mutex::new(HashMap::new()),
        }
    }

    fn timeouts(&self) -> Timeouts {
        let o = &self.config.outbound;
        Timeouts {
            connect: o.connect_timeout,
            command: o.command_timeout,
            data: o.data_timeout,
        }
    }

    /// Delivers a job; never fails as a whole: every recipient gets an outcome.
    pub async fn deliver(&self, job: &LoadedJob) -> Attempt {
        let Some(first) = job.recipients.first() else {
            return Attempt {
                outcomes: Vec::new(),
                verdict: None,
            };
        };
        let domain = first.recipient.domain.clone();

        if let Some(mut idle) = self.take_idle(&domain) {
            match self.transact(&mut idle.client, job).await {
                Ok(outcomes) => {
                    let verdict = idle.verdict.clone();
                    self.release(&domain, idle);
                    return Attempt { outcomes, verdict };
                }
                // The cached connection died before the peer took anything
                // (it timed out or restarted): start over on a new one.
                Err((e, false)) => tracing::debug!(%domain, "cached connection unusable: {e}"),
                Err((e, true)) => return all(job, deferred_by(&idle.client, &e), idle.verdict),
            }
        }

        let targets = match self.route(&domain).await {
            Ok(t) => t,
            Err(f) if f.permanent => {
                return all(job, Outcome::Failed(Detail::local(f.status, f.text)), None);
            }
            Err(f) => {
                return all(
                    job,
                    Outcome::Deferred(Detail::local(f.status, f.text)),
                    None,
                );
            }
        };

        let mut last_error = format!("no mail exchanger of {domain} could be reached");
        for target in &targets {
            let addresses = match self.dns.addresses(&target.host).await {
                Ok(a) => a,
                Err(e) => {
                    last_error = e.to_string();
                    continue;
                }
            };
            for ip in addresses {
                let mut session = match self.open(&domain, target, ip).await {
                    Ok(s) => s,
                    Err(e) => {
                        last_error = format!("{}[{ip}]: {e}", target.host);
                        tracing::info!(%domain, "{last_error}");
                        continue;
                    }
                };
                return match self.transact(&mut session.client, job).await {
                    Ok(outcomes) => {
                        let verdict = session.verdict.clone();
                        self.release(&domain, session);
                        Attempt { outcomes, verdict }
                    }
                    Err((e, _)) => all(job, deferred_by(&session.client, &e), session.verdict),
                };
            }
        }
        all(
            job,
            Outcome::Deferred(Detail::local([4, 4, 1], last_error)),
            None,
        )
    }

    /// The hosts to try for a domain, best first.
    async fn route(&self, domain: &str) -> Result<Vec<Target>, RouteFailure> {
        if let Some(route) = self.config.routes.iter().find(|r| r.domain.matches(domain)) {
            return Ok(vec![Target {
                host: route.next_hop.host.clone(),
                preference: 0,
                port: route.next_hop.port,
            }]);
        }
        let port = self.config.outbound.port;
        match self.dns.mx(domain).await {
            Ok(MxAnswer::Hosts(hosts)) => Ok(hosts
                .into_iter()
                .map(|(preference, host)| Target {
                    host,
                    preference,
                    port,
                })
                .collect()),
            Ok(MxAnswer::Implicit) => Ok(vec![Target {
                host: domain.to_string(),
                preference: 0,
                port,
            }]),
            Ok(MxAnswer::NullMx) => Err(RouteFailure {
                permanent: true,
                status: [5, 1, 10],
                text: format!("{domain} accepts no mail (null MX, RFC 7505)"),
            }),
            Err(DnsError::NoSuchDomain(d)) => Err(RouteFailure {
                permanent: true,
                status: [5, 1, 2],
                text: format!("domain {d} does not exist"),
            }),
            Err(e) => Err(RouteFailure {
                permanent: false,
                status: [4, 4, 3],
                text: e.to_string(),
            }),
        }
    }

    /// Connects to one address and secures the session as far as the peer allows.
    async fn open(&self, domain: &str, target: &Target, ip: IpAddr) -> Result<Idle, ClientError> {
        let addr = SocketAddr::new(ip, target.port);
        let helo = self.config.helo_name();
        let client = SmtpClient::connect(addr, &target.host, helo, self.timeouts()).await?;
        let client = if client.caps.starttls {
            let name = ServerName::try_from(target.host.clone())
                .unwrap_or_else(|_| ServerName::IpAddress(ip.into()));
            match client.starttls(&self.connector, name).await {
                Ok(c) => c,
                Err((e, _)) => {
                    // Opportunistic TLS (RFC 7435 §3): a failed handshake
                    // falls back to a new plaintext session, as Postfix's
                    // "may" level does. The qualifying issues make this
                    // depend on the message's class.
                    tracing::info!(%domain, host = %target.host, "STARTTLS failed, continuing without TLS: {e}");
                    let mut c =
                        SmtpClient::connect(addr, &target.host, helo, self.timeouts()).await?;
                    c.tls_failure = Some(e.to_string());
                    c
                }
            }
        } else {
            client
        };
        let verdict = verdict_of(domain, &client);
        Ok(Idle {
            client,
            since: Instant::now(),
            verdict: Some(verdict),
        })
    }

    /// Runs the transaction. On error, the flag says whether the peer may
    /// have taken anything (then the connection must not be retried blindly).
    async fn transact(
        &self,
        client: &mut SmtpClient,
        job: &LoadedJob,
    ) -> Result<Vec<(u32, Outcome)>, (ClientError, bool)> {
        let recipients: Vec<_> = job.recipients.iter().map(|p| &p.recipient).collect();
        if job.envelope.smtputf8 && !client.caps.smtputf8 && needs_smtputf8(job) {
            // RFC 6531 §3.4: non-ASCII addresses cannot go to a server
            // without SMTPUTF8; downgrading them is not ours to do.
            let remote = format!("{}[{}]", client.host, client.peer.ip());
            let detail = Detail {
                status: [5, 6, 7],
                remote: Some(remote.clone()),
                reply: None,
                text: format!("{remote} does not support SMTPUTF8, which this message needs"),
            };
            return Ok(job
                .recipients
                .iter()
                .map(|p| (p.index, Outcome::Failed(detail.clone())))
                .collect());
        }
        let before = client.replies_read();
        let replies = match client.send(&job.envelope, &recipients, &job.body).await {
            Ok(r) => r,
            Err(e) => {
                let progressed = client.replies_read() > before;
                return Err((e, progressed));
            }
        };
        let remote = format!("{}[{}]", client.host, client.peer.ip());
        Ok(job
            .recipients
            .iter()
            .zip(replies.per_recipient)
            .map(|(p, reply)| {
                let detail = Detail::from_reply(&remote, &reply);
                let outcome = if reply.is_positive() {
                    Outcome::Delivered(detail)
                } else if reply.is_permanent() {
                    Outcome::Failed(detail)
                } else {
                    Outcome::Deferred(detail)
                };
                (p.index, outcome)
            })
            .collect())
    }

    fn take_idle(&self, domain: &str) -> Option<Idle> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(domain)?;
        let timeout = self.config.outbound.idle_timeout;
        while let Some(entry) = list.pop() {
            if entry.since.elapsed() < timeout {
                return Some(entry);
            }
            tokio::spawn(entry.client.quit());
        }
        None
    }

    fn release(&self, domain: &str, mut idle: Idle) {
        if idle.client.transactions >= self.config.outbound.max_messages_per_connection
            || self.config.outbound.idle_timeout.is_zero()
        {
            tokio::spawn(idle.client.quit());
            return;
        }
        idle.since = Instant::now();
        if let Ok(mut map) = self.idle.lock() {
            map.entry(domain.to_string()).or_default().push(idle);
        }
    }

    /// Closes connections idle for longer than the idle timeout; called periodically.
    pub fn close_idle(&self, all: bool) {
        let timeout = self.config.outbound.idle_timeout;
        let mut expired = Vec::new();
        if let Ok(mut map) = self.idle.lock() {
            for list in map.values_mut() {
                let (keep, old): (Vec<_>, Vec<_>) = list
                    .drain(..)
                    .partition(|i| !all && i.since.elapsed() < timeout);
                *list = keep;
                expired.extend(old);
            }
            map.retain(|_, l| !l.is_empty());
        }
        for idle in expired {
            tokio::spawn(idle.client.quit());
        }
    }
}

/// Whether the envelope has a non-ASCII address.
fn needs_smtputf8(job: &LoadedJob) -> bool {
    !job.envelope.sender.is_ascii()
        || job
            .recipients
            .iter()
            .any(|p| !p.recipient.address.is_ascii())
}

fn all(job: &LoadedJob, outcome: Outcome, verdict: Option<Verdict>) -> Attempt {
    Attempt {
        outcomes: job
            .recipients
            .iter()
            .map(|p| (p.index, outcome.clone()))
            .collect(),
        verdict,
    }
}

fn deferred_by(client: &SmtpClient, e: &ClientError) -> Outcome {
    let remote = format!("{}[{}]", client.host, client.peer.ip());
    Outcome::Deferred(Detail {
        status: [4, 4, 2],
        remote: Some(remote.clone()),
        reply: None,
        text: format!("{remote}: {e}"),
    })
}

/// The relay core's verdict: was the session encrypted, and with what.
fn verdict_of(domain: &str, client: &SmtpClient) -> Verdict {
    let now = chrono::Utc::now().timestamp();
    let mut checks = Vec::new();
    match (&client.tls, &client.tls_failure) {
        (Some(facts), _) => {
            checks.push(Check::new(
                CheckName::Starttls,
                Status::Pass,
                "STARTTLS negotiated",
            ));
            let modern = facts.version == "TLSv1.3" || facts.version == "TLSv1.2";
            checks.push(Check::new(
                CheckName::Protocol,
                if modern { Status::Pass } else { Status::Fail },
                format!("{} with {}", facts.version, facts.cipher_suite),
            ));
        }
        (None, Some(failure)) => checks.push(Check::new(
            CheckName::Starttls,
            Status::Fail,
            format!("STARTTLS offered but failed: {failure}"),
        )),
        (None, None) => checks.push(Check::new(
            CheckName::Starttls,
            Status::Fail,
            "STARTTLS not offered",
        )),
    }
    Verdict::new(
        domain,
        &client.host,
        &client.peer.ip().to_string(),
        checks,
        client.tls.clone(),
        now,
    )
}
