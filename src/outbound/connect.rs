//! One connection to one address of a candidate host: connect, EHLO,
//! STARTTLS with the qualifier's verifier (no plaintext fallback where TLS
//! is mandatory), a probe when the handshake fails, and the qualifier's
//! verdict of what came of it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::ServerName;

use super::Outbound;
use super::client::{ClientError, SmtpClient};
use super::pool::Idle;
use crate::qualify::judge::Judged;
use crate::qualify::probe::{self, Offer, ProbeError};
use crate::qualify::route::Candidate;
use crate::qualify::{TlsOutcome, Verdict};

/// A connection made and judged; the client is gone when the handshake
/// failed where TLS was mandatory.
pub(super) struct Opened {
    pub client: Option<SmtpClient>,
    pub judged: Judged,
}

impl Opened {
    /// The connection, if the host may carry mail; else it is closed, and
    /// the verdict says why.
    pub fn usable(self) -> Result<Idle, Box<Verdict>> {
        if self.judged.verdict.usable() {
            self.any()
        } else {
            if let Some(c) = self.client {
                tokio::spawn(c.quit());
            }
            Err(Box::new(self.judged.verdict))
        }
    }

    /// The connection whatever the domain's policies say (TLS reports,
    /// RFC 8460 §5.3), if there is one.
    pub fn any(self) -> Result<Idle, Box<Verdict>> {
        match self.client {
            Some(client) => Ok(Idle {
                client,
                since: Instant::now(),
                verdict: self.judged.verdict,
            }),
            None => Err(Box::new(self.judged.verdict)),
        }
    }
}

impl Outbound {
    /// Connects to one address, upgrades with STARTTLS as the host's rules
    /// require (mandatory TLS) or the peer allows (opportunistic), and has
    /// the qualifier judge the connection.
    pub(super) async fn open(
        &self,
        domain: &str,
        c: &Candidate,
        ip: IpAddr,
    ) -> Result<Opened, ClientError> {
        let target = &c.target;
        let addr = SocketAddr::new(ip, target.port);
        let config = self.config();
        let helo = config.helo_name();
        let client = SmtpClient::connect(addr, &target.host, helo, self.timeouts()).await?;
        let (tls_config, evidence) = self.qualifier.verifier(c);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config));
        let (client, tls) = if client.caps.starttls {
            let name = ServerName::try_from(target.host.clone())
                .unwrap_or_else(|_| ServerName::IpAddress(ip.into()));
            let started = Instant::now();
            match client.starttls(&connector, name).await {
                Ok(c) => {
                    crate::metrics::handshake(started.elapsed());
                    let facts = c.tls.clone();
                    (Some(c), facts.map(TlsOutcome::Negotiated))
                }
                // The handshake completed and the session then failed:
                // nothing was downgraded, and nothing is retried in plaintext.
                Err((e @ ClientError::AfterHandshake(_), _)) => return Err(e),
                Err((e, refused)) => {
                    // A failed handshake still gets a verdict that names
                    // what the peer offers (docs/tls-profiles.md).
                    let offer = match (&e, refused) {
                        (ClientError::Tls(_), None) => Some(self.probe(addr, &target.host).await),
                        _ => None,
                    };
                    let tls = TlsOutcome::Failed {
                        error: e.to_string(),
                        offer,
                    };
                    if c.require_tls.is_some() {
                        (None, Some(tls))
                    } else {
                        // Opportunistic TLS (RFC 7435 §3): a failed handshake
                        // falls back to a new plaintext session, as Postfix's
                        // "may" level does. The policy decides whether that
                        // transport is good enough for a given message.
                        tracing::info!(%domain, host = %target.host, "STARTTLS failed, continuing without TLS: {e}");
                        let plain =
                            SmtpClient::connect(addr, &target.host, helo, self.timeouts()).await?;
                        (Some(plain), Some(tls))
                    }
                }
            }
        } else {
            (Some(client), Some(TlsOutcome::NotOffered))
        };
        let tls = tls.unwrap_or(TlsOutcome::NotOffered);
        let evidence = evidence.lock().ok().and_then(|mut e| e.take());
        let mut judged = self.qualifier.judge(domain, c, ip, &tls, evidence).await;
        judged.verdict.requiretls = matches!(tls, TlsOutcome::Negotiated(_))
            && client.as_ref().is_some_and(|c| c.caps.requiretls);
        Ok(Opened { client, judged })
    }

    /// A second connection that asks the peer what it offers
    /// (qualify::probe). Bounded tighter than a command: it only informs
    /// the verdict, and the attempt waits for it.
    async fn probe(&self, addr: SocketAddr, host: &str) -> Result<Offer, ProbeError> {
        const PROBE_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);
        let mut timeouts = self.timeouts();
        timeouts.connect = timeouts.connect.min(PROBE_LIMIT);
        timeouts.command = timeouts.command.min(PROBE_LIMIT);
        let config = self.config();
        let helo = config.helo_name();
        let client = SmtpClient::connect(addr, host, helo, timeouts)
            .await
            .map_err(|e| ProbeError::Connect(e.to_string()))?;
        let tcp = client
            .starttls_raw()
            .await
            .map_err(|e| ProbeError::Connect(e.to_string()))?;
        probe::probe(tcp, host, timeouts.command).await
    }
}
