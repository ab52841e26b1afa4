//! Sending one message now, outside the spool: the sender's password mail
//! (it holds a password, so it is never stored) and TLS-RPT reports (made
//! again from the log until sent, so they need no queue).

use std::net::IpAddr;

use super::*;
use crate::message::{Envelope, Recipient, TenantId};

/// What a direct send asks of the connection.
#[derive(Debug, Clone, Copy)]
pub struct Direct {
    /// The least level the connection must reach.
    pub required: Level,
    /// Send even where the domain's DANE or MTA-STS policy refuses the
    /// host: RFC 8460 §5.3 wants TLS reports delivered despite TLS failures.
    pub despite_policy: bool,
    /// What is sent, for the reason when no host will do: "the password mail".
    pub what: &'static str,
}

impl Outbound {
    /// Sends `body` to `to` from the null sender (nothing bounces back to
    /// us) over the first usable host; the level reached, or why none was.
    pub async fn send_direct(
        &self,
        tenant: &TenantId,
        to: &str,
        body: Vec<u8>,
        how: Direct,
    ) -> Result<Level, String> {
        let required = how.required;
        let rcpt = Recipient::new(to.to_string(), None, Default::default());
        let domain = rcpt.domain.clone();
        let route = self.qualifier.route(&domain).await.map_err(|f| f.text)?;
        let mut last = format!("no mail exchanger of {domain} reached {}", required.name());
        for plan in &route.hosts {
            let HostPlan::Use(c) = plan else { continue };
            let addresses: Vec<IpAddr> = c.addresses.clone();
            for ip in addresses {
                let opened = match self.open(&domain, c, ip).await {
                    Ok(o) => o,
                    Err(e) => {
                        last = format!("{}[{ip}]: {e}", c.target.host);
                        continue;
                    }
                };
                let session = if how.despite_policy {
                    opened.any()
                } else {
                    opened.usable()
                };
                let mut session = match session {
                    Ok(s) => s,
                    Err(refused) => {
                        let why: Vec<String> =
                            refused.refusals.iter().map(ToString::to_string).collect();
                        last = format!("{}[{ip}]: {}", c.target.host, why.join("; "));
                        continue;
                    }
                };
                let v = session.verdict.clone();
                if v.observed_level < required {
                    last = format!(
                        "{}[{ip}] reached {}, {} needs {}: {}",
                        c.target.host,
                        v.observed_level,
                        how.what,
                        required.name(),
                        v.shortfalls().join("; ")
                    );
                    tokio::spawn(session.client.quit());
                    break;
                }
                let pending = PendingRecipient {
                    index: 0,
                    recipient: rcpt.clone(),
                    attempts: 0,
                };
                let job = LoadedJob {
                    id: crate::message::QueueId::UNSPOOLED,
                    envelope: Envelope {
                        tenant: tenant.clone(),
                        sender: String::new(),
                        env_id: None,
                        ret: None,
                        smtputf8: !to.is_ascii(),
                        body_8bit: !body.is_ascii(),
                        tls_request: Default::default(),
                        content: Default::default(),
                        recipients: vec![rcpt.clone()],
                    },
                    received_at: 0,
                    expires_at: 0,
                    body: body.clone(),
                    recipients: vec![pending.clone()],
                };
                let verdict = session.verdict.clone();
                let result = self
                    .transact(&mut session.client, &job, &[&pending], &verdict)
                    .await;
                tokio::spawn(session.client.quit());
                return match result {
                    Ok(mut o) => match o.pop() {
                        Some((_, Outcome::Delivered(_))) => Ok(v.observed_level),
                        Some((_, Outcome::Failed(d) | Outcome::Deferred(d))) => Err(d.text),
                        None => Err("no reply".into()),
                    },
                    Err((e, _)) => Err(e.to_string()),
                };
            }
        }
        Err(last)
    }

    /// The resolver deliveries use (TLS-RPT looks up `_smtp._tls` with it).
    pub fn dns(&self) -> &Dns {
        self.qualifier.dns()
    }

    /// An HTTPS-only client that trusts what delivery trusts (PKIX roots)
    /// and resolves through our DNS, as MTA-STS does: for TLS-RPT's
    /// `https:` report addresses.
    pub fn https_client(&self, timeout: std::time::Duration) -> Result<reqwest::Client, String> {
        let mut store = rustls::RootCertStore::empty();
        store.extend(self.qualifier.roots().anchors().iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(crate::qualify::bsi::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(store)
            .with_no_client_auth();
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .no_proxy()
            .dns_resolver(Arc::new(crate::qualify::mta_sts::Resolver(
                self.dns().clone(),
            )))
            .build()
            .map_err(|e| format!("HTTPS client: {e}"))
    }
}
