//! Delivers one job (a message and its recipients in one domain) to the
//! domain's mail exchangers.
//!
//! [`Outbound::deliver`] is a pipeline: each recipient's requirement (the
//! policy) → the candidate hosts (`qualify::route`) → per host a connection
//! upgraded with the qualifier's verifier and judged by it
//! (`qualify::Qualifier::judge`) → per recipient the policy's decision →
//! the transaction, or the envelope (`sealed`). This module only connects,
//! speaks SMTP and hands over: every verdict rule is in `qualify`, every
//! decision in `policy`. Connections are kept briefly for the next job
//! to the same domain ([`pool`]).

mod attempt;
mod check;
pub mod client;
mod connect;
mod direct;
mod pool;
mod sealed;
mod smime;
mod transact;

pub use attempt::{Attempt, Detail, Outcome};
pub use direct::Direct;

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Config;
use crate::dns::Dns;
use crate::message::{LoadedJob, PendingRecipient};
use crate::policy::memory::DomainMemory;
use crate::policy::{Action, History, Policies, Reason, ReasonCode, Required, Requirement};
use crate::qualify::judge::QualifyError;
use crate::qualify::report::HostReport;
use crate::qualify::route::HostPlan;
use crate::qualify::{Level, Qualifier, Verdict};
use crate::seal::channel::{Contacts, PasswordStore};
use crate::spool::journal::Journal;
use client::Timeouts;
use pool::{Idle, Pool, keep_better};
use transact::deferred_by;

/// The outbound side; shared by all delivery tasks.
pub struct Outbound {
    /// Replaced as a whole by a reload (SIGHUP): tenants and their
    /// settings apply from the next delivery on.
    config: std::sync::RwLock<Arc<Config>>,
    qualifier: Qualifier,
    policies: Arc<Policies>,
    memory: Arc<DomainMemory>,
    /// Pre-agreed envelope passwords (none for `sealgate check`).
    passwords: Option<PasswordStore>,
    /// For the password webhook.
    http: reqwest::Client,
    pool: Pool,
    /// Where accepted recipients are noted the moment the peer says 250
    /// (none for `sealgate check`, which delivers nothing).
    journal: Option<Arc<Journal>>,
    /// Signs the sealed notifications sealgate writes in a tenant's name.
    dkim: Arc<crate::dkim::Keys>,
    /// Recipient S/MIME certificates (none for `sealgate check`).
    certs: Option<crate::seal::certs::CertStore>,
}

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error(transparent)]
    Qualify(#[from] QualifyError),
    #[error("sealed delivery: {0}")]
    Seal(String),
}

/// Recipients whose requirement a connection must meet, and those the
/// policy seals whatever the connection.
type Open<'a> = Vec<(&'a PendingRecipient, Requirement)>;
type ToSeal<'a> = Vec<(&'a PendingRecipient, Requirement, Reason)>;

impl Outbound {
    /// New static routes (SIGHUP). Idle connections are closed, so that no
    /// domain keeps using a next hop its route no longer names.
    pub fn set_routes(&self, routes: Vec<crate::config::Route>) {
        self.qualifier.set_routes(routes);
        self.close_idle(true);
    }

    /// The configuration in force.
    fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The configuration a reload put in force (`Config::reloaded`: only
    /// what may change while running differs from the one at start).
    pub fn set_config(&self, config: Arc<Config>) {
        self.set_routes(config.routes.clone());
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = config;
    }

    /// DKIM keys for the notifications of sealed messages (none by default).
    pub fn with_dkim(mut self, keys: Arc<crate::dkim::Keys>) -> Outbound {
        self.dkim = keys;
        self
    }

    /// The pre-agreed passwords and the recipient certificates, where the
    /// gateway keeps its tables.
    pub fn with_stores(
        mut self,
        passwords: PasswordStore,
        certs: crate::seal::certs::CertStore,
    ) -> Outbound {
        self.passwords = Some(passwords);
        self.certs = Some(certs);
        self
    }

    /// `sts_cache`: where MTA-STS policies are cached across restarts
    /// (none: memory only).
    pub fn new(
        config: Arc<Config>,
        dns: Dns,
        sts_cache: Option<crate::tables::Tables>,
        policies: Arc<Policies>,
        memory: Arc<DomainMemory>,
        journal: Option<Arc<Journal>>,
    ) -> Result<Outbound, OutboundError> {
        let qualifier = Qualifier::new(config.clone(), dns, sts_cache)?;
        // A broken contacts file is found at start (and named by line), not
        // when the first message is sealed.
        for t in &config.tenants {
            if let Some(file) = &t.seal.contacts_file {
                Contacts::load(file).map_err(|e| OutboundError::Seal(e.to_string()))?;
            }
        }
        // Given by the gateway (with_stores); a check has none.
        let (passwords, certs) = (None, None);
        let mut store = rustls::RootCertStore::empty();
        store.extend(qualifier.roots().anchors().iter().cloned());
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(
                rustls::ClientConfig::builder_with_provider(crate::qualify::bsi::provider())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| OutboundError::Seal(e.to_string()))?
                    .with_root_certificates(store)
                    .with_no_client_auth(),
            )
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| OutboundError::Seal(format!("webhook HTTP client: {e}")))?;
        Ok(Outbound {
            config: std::sync::RwLock::new(config),
            qualifier,
            policies,
            memory,
            passwords,
            http,
            pool: Pool::default(),
            journal,
            dkim: Arc::default(),
            certs,
        })
    }

    fn timeouts(&self) -> Timeouts {
        let o = &self.config().outbound;
        Timeouts {
            connect: o.connect_timeout,
            command: o.command_timeout,
            data: o.data_timeout,
        }
    }

    /// Delivers a job; never fails as a whole: every recipient gets an
    /// outcome and the policy's decision for it.
    ///
    /// Hosts are tried in order; a connection carries the recipients whose
    /// requirement its verdict meets, and the rest try the next host. Those
    /// no host could carry get the action their requirement decides
    /// against the best usable verdict (seal, defer or bounce).
    ///
    /// Recipients whose content is encrypted to their S/MIME certificate
    /// ([`smime`]) go in transactions of their own, after the others.
    pub async fn deliver(&self, job: &LoadedJob) -> Attempt {
        let Some(first) = job.recipients.first() else {
            return Attempt::default();
        };
        let domain = first.recipient.domain.clone();
        let now = chrono::Utc::now().timestamp();
        let plan = self.smime_plan(job, &domain, now).await;
        if plan.jobs.is_empty() {
            return self.deliver_part(job, &domain, &plan.notes, now).await;
        }
        let rest = LoadedJob {
            body: job.body.clone(),
            recipients: job
                .recipients
                .iter()
                .filter(|p| !plan.jobs.iter().any(|j| j.recipients[0].index == p.index))
                .cloned()
                .collect(),
            ..job.clone_without_body()
        };
        let mut attempt = self.deliver_part(&rest, &domain, &plan.notes, now).await;
        for encrypted in &plan.jobs {
            let part = self
                .deliver_part(encrypted, &domain, &plan.notes, now)
                .await;
            attempt.merge(part);
        }
        attempt
    }

    async fn deliver_part(
        &self,
        job: &LoadedJob,
        domain: &str,
        notes: &HashMap<u32, smime::Note>,
        now: i64,
    ) -> Attempt {
        let mut attempt = Attempt::default();
        if job.recipients.is_empty() {
            return attempt;
        }
        let domain = domain.to_string();
        let (mut open, mut to_seal) = self.requirements(job, &domain, now, notes);
        // The best usable connection that carried nothing: it may carry
        // sealed messages, which need no particular level.
        let mut spare = self.reuse(job, &domain, &mut open, &mut attempt).await;
        if open.is_empty() && (to_seal.is_empty() || spare.is_some()) {
            self.finish(job, &domain, to_seal, spare, "", &mut attempt)
                .await;
            return attempt;
        }
        let route = match self.qualifier.route(&domain).await {
            Ok(r) => r,
            Err(f) => {
                attempt.checks = f.checks.clone();
                let detail = Detail::local(f.status(), f.text.clone());
                let outcome = if f.permanent() {
                    Outcome::Failed(detail)
                } else {
                    Outcome::Deferred(detail)
                };
                attempt.all(&open, outcome.clone(), None);
                let reason = Reason::new(ReasonCode::Unroutable, f.text.clone());
                for (p, req) in &open {
                    let action = if f.permanent() {
                        Action::Bounce {
                            reason: reason.clone(),
                        }
                    } else {
                        Action::Defer {
                            reason: reason.clone(),
                        }
                    };
                    attempt.push_decision(p.index, req, action);
                }
                for (p, req, reason) in to_seal {
                    attempt.push_decision(p.index, &req, Action::Seal { reason });
                    attempt.outcomes.push((p.index, outcome.clone()));
                }
                return attempt;
            }
        };
        attempt.checks = route.checks.clone();

        let mut last_error = format!("no mail exchanger of {domain} could be reached");
        // The best usable verdict, and every verdict seen.
        let mut best: Option<Verdict> = None;
        let mut seen: Vec<(Verdict, i64)> = Vec::new();
        'hosts: for plan in &self.ordered(&domain, route.hosts, now).await {
            if open.is_empty() && (to_seal.is_empty() || spare.is_some()) {
                break;
            }
            let c = match plan {
                HostPlan::Use(c) => c,
                HostPlan::Skip {
                    target,
                    checks,
                    refusal,
                } => {
                    last_error = format!("{}: {refusal}", target.host);
                    tracing::info!(%domain, "{last_error}");
                    attempt
                        .hosts
                        .push(HostReport::skipped(target, checks, refusal));
                    continue;
                }
            };
            let mut reached = false;
            for &ip in &c.addresses {
                let opened = match self.open(&domain, c, ip).await {
                    Ok(o) => o,
                    Err(e) => {
                        last_error = format!("{}[{ip}]: {e}", c.target.host);
                        tracing::info!(%domain, "{last_error}");
                        continue;
                    }
                };
                reached = true;
                seen.push((opened.judged.verdict.clone(), opened.judged.valid_until));
                attempt
                    .hosts
                    .push(HostReport::connected(&c.target, &opened.judged.verdict));
                let mut session = match opened.usable() {
                    Ok(s) => s,
                    Err(refused) => {
                        // Never downgrade (RFC 7672 §2.2, RFC 8461 §5): this
                        // host is not used; another may be, or the message waits.
                        let why: Vec<String> =
                            refused.refusals.iter().map(ToString::to_string).collect();
                        last_error = format!("{}[{ip}]: {}", c.target.host, why.join("; "));
                        tracing::warn!(%domain, "not delivering: {last_error}");
                        continue;
                    }
                };
                let verdict = session.verdict.clone();
                if best.as_ref().is_none_or(|b| verdict.level > b.level) {
                    best = Some(verdict.clone());
                }
                let (now_ok, later): (Vec<_>, Vec<_>) =
                    open.into_iter().partition(|(_, r)| r.met_by(&verdict));
                open = later;
                if now_ok.is_empty() {
                    tracing::info!(
                        %domain,
                        host = %c.target.host,
                        level = ?verdict.level,
                        "host below what the messages need; trying the next"
                    );
                    keep_better(&mut spare, session);
                    continue 'hosts;
                }
                let subset: Vec<_> = now_ok.iter().map(|(p, _)| *p).collect();
                match self
                    .transact(&mut session.client, job, &subset, &verdict)
                    .await
                {
                    Ok(outcomes) => {
                        attempt.delivered(&now_ok, outcomes);
                        attempt.verdict = Some(verdict);
                        keep_better(&mut spare, session);
                    }
                    Err((e, _)) => {
                        let outcome = deferred_by(&session.client, &e);
                        attempt.all(&now_ok, outcome, Some(verdict));
                    }
                }
                continue 'hosts;
            }
            if !reached {
                let address = c.addresses.last().map(ToString::to_string);
                attempt.hosts.push(HostReport::unreachable(
                    &c.target,
                    address,
                    last_error.clone(),
                ));
            }
        }

        let history = match seen.iter().map(|(v, _)| v).max_by_key(|v| v.observed_level) {
            Some(top) => self.memory.observe(&domain, top, &seen, now).await,
            None => self.memory.history(&domain, now).await,
        };
        let refused = attempt::refused(&attempt.hosts);
        for (p, req) in open {
            let action = match &best {
                Some(b) => req.decide(Some(b), history, now),
                None => req.decide_without_host(&refused, &last_error),
            };
            match action {
                Action::Seal { reason } => to_seal.push((p, req, reason)),
                action => attempt.decide(p.index, &req, action),
            }
        }
        if attempt.verdict.is_none() {
            attempt.verdict = best.or_else(|| seen.pop().map(|(v, _)| v));
        }
        self.finish(job, &domain, to_seal, spare, &last_error, &mut attempt)
            .await;
        attempt
    }

    /// One recipient's requirement: the policy's, with what the content
    /// and the sender ask applied, and what S/MIME did (`note`).
    fn requirement(
        &self,
        job: &LoadedJob,
        p: &PendingRecipient,
        domain: &str,
        now: i64,
        note: Option<&smime::Note>,
    ) -> Requirement {
        let policy = self.policies.current().for_tenant(&job.envelope.tenant.0);
        let requires = self.encrypted_content_requires();
        let req = policy
            .requirement(p.recipient.class, domain, now)
            .with_content(
                job.envelope.content,
                requires,
                self.config().policy.inline_pgp_counts,
            );
        let req = match note {
            Some(n) => n.apply(req, requires),
            None => req,
        };
        req.with_tls_request(job.envelope.tls_request)
    }

    /// Each recipient's requirement; those always sealed apart.
    fn requirements<'a>(
        &self,
        job: &'a LoadedJob,
        domain: &str,
        now: i64,
        notes: &HashMap<u32, smime::Note>,
    ) -> (Open<'a>, ToSeal<'a>) {
        let mut open = Vec::new();
        let mut to_seal = Vec::new();
        for p in &job.recipients {
            let req = self.requirement(job, p, domain, now, notes.get(&p.index));
            if req.required == Required::Sealed {
                // Always sealed: only a carrier for the envelope is needed.
                if let Action::Seal { reason } = req.decide(None, History::Ordinary, now) {
                    to_seal.push((p, req, reason));
                }
            } else {
                open.push((p, req));
            }
        }
        (open, to_seal)
    }

    /// Tries an idle connection to the domain for the open recipients, if
    /// its verdict meets them all; returns it as a spare carrier when it
    /// carried them.
    async fn reuse(
        &self,
        job: &LoadedJob,
        domain: &str,
        open: &mut Open<'_>,
        attempt: &mut Attempt,
    ) -> Option<Idle> {
        if open.is_empty() {
            return None;
        }
        let mut idle = self
            .pool
            .take(domain, self.config().outbound.idle_timeout)?;
        if !open.iter().all(|(_, r)| r.met_by(&idle.verdict)) {
            self.release(domain, idle);
            return None;
        }
        let subset: Vec<_> = open.iter().map(|(p, _)| *p).collect();
        let verdict = idle.verdict.clone();
        match self
            .transact(&mut idle.client, job, &subset, &verdict)
            .await
        {
            Ok(outcomes) => {
                attempt.delivered(open, outcomes);
                attempt.verdict = Some(idle.verdict.clone());
                open.clear();
                Some(idle)
            }
            // The cached connection died before the peer took anything
            // (it timed out or restarted): start over on a new one.
            Err((e, false)) => {
                tracing::debug!(%domain, "cached connection unusable: {e}");
                None
            }
            Err((e, true)) => {
                let outcome = deferred_by(&idle.client, &e);
                attempt.all(open, outcome, Some(idle.verdict.clone()));
                open.clear();
                None
            }
        }
    }

    /// Seals what is to be sealed over the spare connection, or keeps the
    /// spare for the next job.
    async fn finish(
        &self,
        job: &LoadedJob,
        domain: &str,
        to_seal: ToSeal<'_>,
        spare: Option<Idle>,
        unreachable: &str,
        attempt: &mut Attempt,
    ) {
        if to_seal.is_empty() {
            if let Some(s) = spare {
                self.release(domain, s);
            }
        } else {
            self.deliver_sealed(job, to_seal, spare, unreachable, attempt)
                .await;
        }
    }

    /// Hosts of equal preference (RFC 5321 §5.1 leaves their order open):
    /// first the one that reached the best level lately.
    async fn ordered(&self, domain: &str, mut hosts: Vec<HostPlan>, now: i64) -> Vec<HostPlan> {
        let levels = self.memory.host_levels(domain, now).await;
        hosts.sort_by_cached_key(|plan| {
            let t = plan.target();
            let cached = levels.get(&t.host.to_ascii_lowercase()).copied();
            (t.preference, std::cmp::Reverse(cached))
        });
        hosts
    }

    fn release(&self, domain: &str, idle: Idle) {
        if idle.client.transactions >= self.config().outbound.max_messages_per_connection
            || self.config().outbound.idle_timeout.is_zero()
        {
            tokio::spawn(idle.client.quit());
            return;
        }
        self.pool.put(domain, idle);
    }

    /// Closes connections idle for longer than the idle timeout; called periodically.
    pub fn close_idle(&self, all: bool) {
        self.pool.close(self.config().outbound.idle_timeout, all);
    }
}
