//! TLS-RPT (RFC 8460): a daily report of our TLS sessions to each
//! recipient domain that asks for one with an `_smtp._tls` TXT record.
//!
//! The numbers come from the transaction log: each `attempt` record with a
//! connection is one session, judged by the verdict it carries. So a report
//! says exactly what the audited log says, and can be made again from it:
//! until a report went out (table `tlsrpt_sent`), each hourly run retries.
//! Reports are mailed directly (not spooled) from the null sender, over any
//! connection, even one the domain's policy refuses (RFC 8460 §5.3), and
//! are never themselves counted (they make no `attempt` record); `https:`
//! addresses get them POSTed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::EventData;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::mta_sts::{ReportUri, TlsRpt};
use mail_auth::report::tlsrpt::{
    DateRange, FailureDetails, Policy, PolicyDetails, PolicyType, ResultType, Summary, TlsReport,
};
use rusqlite::Connection;

use super::export::{Selection, each};
use crate::config::Config;
use crate::message::TenantId;
use crate::outbound::{Direct, Outbound};
use crate::qualify::mta_sts::FETCH_FAILED;
use crate::qualify::{Check, CheckName, Level, Status, Verdict};
use crate::tables::{TableError, Tables};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tlsrpt_sent (
    day     TEXT NOT NULL,
    domain  TEXT NOT NULL,
    rua     TEXT NOT NULL,
    at      INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    PRIMARY KEY (day, domain, rua)
) WITHOUT ROWID;
";

/// How long a node's claim on a report may stand unfinished before another
/// node takes it (the claiming node died mid-send).
const CLAIM: i64 = 3600;

/// One report this gateway sent (or tried to), as `tlsrpt_sent` keeps it.
#[derive(Debug, Clone)]
pub struct Sent {
    pub day: String,
    pub domain: String,
    pub rua: String,
    pub at: i64,
    pub outcome: String,
}

/// What was sent, in the gateway's tables: a cluster's nodes share it, so
/// each report goes out once whichever node's hourly run gets to it first.
/// A row is claimed (`sending`) before its report is sent, and becomes
/// `sent`, or goes again so that the next run retries; a day whose run
/// left nothing to do is marked `complete` and not read again.
#[derive(Clone)]
pub struct SentLog(Tables);

impl SentLog {
    pub fn new(tables: Tables) -> SentLog {
        SentLog(tables)
    }

    /// The reports sent since `since` (Unix seconds), newest first.
    pub async fn since(&self, since: i64) -> Result<Vec<Sent>, TableError> {
        let rows = self
            .0
            .query(
                "SELECT day, domain, rua, at, outcome FROM tlsrpt_sent
                 WHERE at >= ?1 AND domain <> '*' ORDER BY at DESC LIMIT 500",
                &[since.into()],
            )
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let mut r = r.into_iter();
                Some(Sent {
                    day: r.next()?.text()?,
                    domain: r.next()?.text()?,
                    rua: r.next()?.text()?,
                    at: r.next()?.int()?,
                    outcome: r.next()?.text()?,
                })
            })
            .collect())
    }

    /// (domain, rua) of the day's rows; `None` when the day is complete.
    async fn done(&self, day: &str, now: i64) -> Result<Option<Vec<(String, String)>>, TableError> {
        self.0
            .execute(
                "DELETE FROM tlsrpt_sent WHERE outcome = 'sending' AND at < ?1",
                &[(now - CLAIM).into()],
            )
            .await?;
        let rows = self
            .0
            .query(
                "SELECT domain, rua FROM tlsrpt_sent WHERE day = ?1",
                &[day.into()],
            )
            .await?;
        let rows: Vec<(String, String)> = rows
            .into_iter()
            .filter_map(|r| {
                let mut r = r.into_iter();
                Some((r.next()?.text()?, r.next()?.text()?))
            })
            .collect();
        if rows.iter().any(|(d, _)| d == "*") {
            return Ok(None);
        }
        Ok(Some(rows))
    }

    /// Takes the row for this node; false: another node has it, or it is done.
    async fn claim(
        &self,
        day: &str,
        domain: &str,
        rua: &str,
        outcome: &str,
        now: i64,
    ) -> Result<bool, TableError> {
        let n = self
            .0
            .execute(
                "INSERT INTO tlsrpt_sent (day, domain, rua, at, outcome) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (day, domain, rua) DO NOTHING",
                &[day.into(), domain.into(), rua.into(), now.into(), outcome.into()],
            )
            .await?;
        Ok(n == 1)
    }

    async fn finish(
        &self,
        day: &str,
        domain: &str,
        rua: &str,
        sent: bool,
        now: i64,
    ) -> Result<(), TableError> {
        if sent {
            self.0
                .execute(
                    "UPDATE tlsrpt_sent SET outcome = 'sent', at = ?4
                     WHERE day = ?1 AND domain = ?2 AND rua = ?3",
                    &[day.into(), domain.into(), rua.into(), now.into()],
                )
                .await?;
        } else {
            self.0
                .execute(
                    "DELETE FROM tlsrpt_sent WHERE day = ?1 AND domain = ?2 AND rua = ?3",
                    &[day.into(), domain.into(), rua.into()],
                )
                .await?;
        }
        Ok(())
    }
}

/// The verdict of a logged attempt, as far as TLS-RPT reads it.
/// The status of a check in a logged verdict; absent is not applicable.
fn status(v: &Verdict, name: CheckName) -> Status {
    v.check(name).map_or(Status::NotApplicable, |c| c.status)
}

/// Which published policy a session was held to, and whether it failed
/// (and how). A session fails when TLS was not established, or when the
/// domain's DANE or MTA-STS policy did not validate; our own BSI judgement
/// is not the domain's policy and is not reported.
fn judge(v: &Verdict) -> (PolicyType, Option<FailureDetails>) {
    use CheckName::*;
    let status = |n: CheckName| status(v, n);
    let decided = |s: Status| matches!(s, Status::Pass | Status::Fail);
    let sts_fetch_failed = v
        .check(MtaSts)
        .is_some_and(|c| c.status == Status::NotApplicable && c.detail.starts_with(FETCH_FAILED));
    let policy = if decided(status(Dane)) {
        PolicyType::Tlsa
    } else if decided(status(MtaSts)) || sts_fetch_failed {
        PolicyType::Sts
    } else {
        PolicyType::NoPolicyFound
    };
    let fail = |result: ResultType, why: Option<&Check>| {
        let mut d =
            FailureDetails::new(result).with_receiving_mx_hostname(v.mx_host.trim_end_matches('.'));
        if let Ok(ip) = v.address.parse() {
            d = d.with_receiving_ip(ip);
        }
        if let Some(c) = why {
            d = d.with_failure_reason_code(shorten(&c.detail));
        }
        Some(d)
    };
    if status(Starttls) != Status::Pass {
        let c = v.check(Starttls);
        let offered = c.is_some_and(|c| c.detail.contains("offered but failed"));
        let result = if offered {
            ResultType::ValidationFailure
        } else {
            ResultType::StartTlsNotSupported
        };
        return (policy, fail(result, c));
    }
    let failure = match policy {
        PolicyType::Tlsa if status(Dane) == Status::Fail => {
            if status(Dnssec) == Status::Fail {
                fail(ResultType::DnssecInvalid, v.check(Dnssec))
            } else {
                fail(ResultType::TlsaInvalid, v.check(Dane))
            }
        }
        PolicyType::Sts if sts_fetch_failed => {
            fail(ResultType::StsPolicyFetchError, v.check(MtaSts))
        }
        PolicyType::Sts if status(MtaSts) == Status::Fail => {
            let pkix = v.check(Pkix);
            if status(Hostname) == Status::Fail {
                fail(ResultType::CertificateHostMismatch, v.check(Hostname))
            } else if pkix.is_some_and(|c| c.status == Status::Fail && c.detail.contains("expired"))
            {
                fail(ResultType::CertificateExpired, pkix)
            } else if status(Pkix) == Status::Fail {
                fail(ResultType::CertificateNotTrusted, pkix)
            } else {
                fail(ResultType::ValidationFailure, v.check(MtaSts))
            }
        }
        _ => None,
    };
    (policy, failure)
}

fn shorten(s: &str) -> String {
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// One domain's sessions of a day, per policy type.
#[derive(Debug, Default, Clone)]
pub struct DomainDay {
    policies: Vec<Tally>,
}

#[derive(Debug, Clone)]
struct Tally {
    policy: PolicyType,
    success: u32,
    failure: u32,
    /// Failure details with their count set to 0 (the key), and the count.
    details: Vec<(FailureDetails, u32)>,
}

impl DomainDay {
    fn add(&mut self, policy: PolicyType, failure: Option<FailureDetails>) {
        let i = match self.policies.iter().position(|t| t.policy == policy) {
            Some(i) => i,
            None => {
                self.policies.push(Tally {
                    policy,
                    success: 0,
                    failure: 0,
                    details: Vec::new(),
                });
                self.policies.len() - 1
            }
        };
        let t = &mut self.policies[i];
        match failure {
            None => t.success += 1,
            Some(d) => {
                t.failure += 1;
                match t.details.iter_mut().find(|(k, _)| *k == d) {
                    Some((_, n)) => *n += 1,
                    None => t.details.push((d, 1)),
                }
            }
        }
    }

    /// (successful, failed) sessions over all policies.
    pub fn totals(&self) -> (u32, u32) {
        self.policies
            .iter()
            .fold((0, 0), |(s, f), t| (s + t.success, f + t.failure))
    }
}

/// The sessions of `[from, to)` per recipient domain (lower case), from
/// the log's attempt records of every tenant.
/// Each recipient domain's sessions of a period.
pub type Sessions = BTreeMap<String, DomainDay>;

pub fn aggregate(conn: &Connection, from: i64, to: i64) -> anyhow::Result<Sessions> {
    let mut days: BTreeMap<String, DomainDay> = BTreeMap::new();
    let sel = Selection {
        from,
        to,
        tenant: None,
        progress: None,
    };
    each(conn, &sel, |r| {
        count(&mut days, r.kind, r.data);
        Ok(())
    })?;
    Ok(days)
}

/// Counts one logged record (its kind and data): an attempt with a
/// connection is a session.
pub fn count(days: &mut Sessions, kind: &str, data: &str) {
    let Ok(EventData::Attempt(a)) = EventData::parse(kind, data) else {
        return;
    };
    // No connection, no session: routing and connect failures are not TLS-RPT's.
    let Some(v) = &a.verdict else {
        return;
    };
    let (policy, failure) = judge(v);
    days.entry(a.domain.to_ascii_lowercase())
        .or_default()
        .add(policy, failure);
}

/// Who is reporting.
#[derive(Debug, Clone)]
pub struct Submitter {
    /// Our host name: `TLS-Report-Submitter`, the report id's domain.
    pub domain: String,
    pub organization: String,
    pub contact: Option<String>,
    pub from: String,
}

impl Submitter {
    pub fn from_config(config: &Config) -> Submitter {
        let r = &config.report;
        Submitter {
            domain: config.hostname.clone(),
            organization: r
                .organization
                .clone()
                .unwrap_or_else(|| config.hostname.clone()),
            contact: r.contact.clone(),
            from: r
                .tlsrpt_from
                .clone()
                .unwrap_or_else(|| format!("noreply-smtp-tls-reporting@{}", config.hostname)),
        }
    }
}

/// The RFC 8460 report of one domain's day (`day_start`: midnight UTC).
pub fn report(domain: &str, day: &DomainDay, day_start: i64, by: &Submitter) -> TlsReport {
    let date = day_name(day_start);
    TlsReport {
        organization_name: Some(by.organization.clone()),
        date_range: DateRange::from_timestamps(day_start, day_start + 86_399),
        contact_info: by.contact.clone(),
        report_id: format!("{date}.{domain}@{}", by.domain),
        policies: day
            .policies
            .iter()
            .map(|t| Policy {
                policy: PolicyDetails::new(t.policy, domain),
                summary: Summary {
                    total_success: t.success,
                    total_failure: t.failure,
                },
                failure_details: t
                    .details
                    .iter()
                    .map(|(d, n)| FailureDetails {
                        failed_session_count: *n,
                        ..d.clone()
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// What one day's run did.
#[derive(Debug, Default)]
pub struct DayRun {
    pub sent: Vec<(String, String)>,
    /// Domains with sessions that publish no (usable) TLS-RPT record.
    pub unrequested: Vec<String>,
    pub failed: Vec<(String, String, String)>,
}

impl DayRun {
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} report(s) sent, {} domain(s) ask for none, {} failed",
            self.sent.len(),
            self.unrequested.len(),
            self.failed.len()
        );
        for (domain, rua, why) in &self.failed {
            s.push_str(&format!("; {domain} to {rua}: {why}"));
        }
        s
    }
}

/// Makes and sends the reports, daily in the gateway.
pub struct Reporter {
    /// Where the day's attempts are read from.
    log: Arc<dyn super::LogStore>,
    sent: SentLog,
    outbound: Arc<Outbound>,
    /// For `https:` report addresses.
    http: reqwest::Client,
    by: Submitter,
}

impl Reporter {
    /// `sent`: the gateway's tables, with [`SCHEMA`].
    pub fn new(
        config: &Config,
        log: Arc<dyn super::LogStore>,
        sent: Tables,
        outbound: Arc<Outbound>,
    ) -> Result<Reporter, String> {
        Ok(Reporter {
            log,
            sent: SentLog::new(sent),
            http: outbound.https_client(Duration::from_secs(60))?,
            outbound,
            by: Submitter::from_config(config),
        })
    }

    /// Hourly: yesterday's and the day before's reports (a day missed by a
    /// stopped gateway is caught up), each sent once.
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let today = crate::util::now().div_euclid(86_400) * 86_400;
            for day_start in [today - 2 * 86_400, today - 86_400] {
                match self.run_day(day_start).await {
                    Ok(run) if run.sent.is_empty() && run.failed.is_empty() => {}
                    Ok(run) => {
                        tracing::info!(day = %day_name(day_start), "TLS-RPT: {}", run.summary())
                    }
                    Err(e) => tracing::warn!(day = %day_name(day_start), "TLS-RPT: {e:#}"),
                }
            }
        }
    }

    /// Sends the reports of the day starting at `day_start` that were not
    /// sent yet.
    pub async fn run_day(&self, day_start: i64) -> anyhow::Result<DayRun> {
        let day = day_name(day_start);
        let mut run = DayRun::default();
        let Some(done) = self.sent.done(&day, crate::util::now()).await? else {
            return Ok(run);
        };
        let days = self.log.sessions(day_start, day_start + 86_400).await?;
        // Rows another node holds now: the day is not complete until they are done.
        let mut elsewhere = 0;
        for (domain, sessions) in &days {
            // Looked up before and found asking for nothing.
            if done.iter().any(|(d, r)| d == domain && r.is_empty()) {
                continue;
            }
            let rua = match self.rua(domain).await {
                Ok(Some(rua)) => rua,
                Ok(None) => {
                    self.sent
                        .claim(&day, domain, "", "unrequested", crate::util::now())
                        .await?;
                    run.unrequested.push(domain.clone());
                    continue;
                }
                Err(why) => {
                    run.failed
                        .push((domain.clone(), format!("_smtp._tls.{domain}"), why));
                    continue;
                }
            };
            let report = report(domain, sessions, day_start, &self.by);
            for uri in rua {
                let target = match &uri {
                    ReportUri::Mail(a) => a.clone(),
                    ReportUri::Http(u) => u.clone(),
                };
                if done.iter().any(|(d, r)| d == domain && *r == target) {
                    continue;
                }
                if !self
                    .sent
                    .claim(&day, domain, &target, "sending", crate::util::now())
                    .await?
                {
                    elsewhere += 1;
                    continue;
                }
                let result = match &uri {
                    ReportUri::Mail(to) => self.mail(domain, &report, to).await,
                    ReportUri::Http(url) => self.post(&report, url).await,
                };
                self.sent
                    .finish(&day, domain, &target, result.is_ok(), crate::util::now())
                    .await?;
                match result {
                    Ok(()) => run.sent.push((domain.clone(), target)),
                    Err(why) => run.failed.push((domain.clone(), target, why)),
                }
            }
        }
        // A day that is over and left nothing to do is not read again.
        let over = day_start + 86_400 <= crate::util::now();
        if over && run.failed.is_empty() && elsewhere == 0 {
            self.sent
                .claim(&day, "*", "*", "complete", crate::util::now())
                .await?;
        }
        Ok(run)
    }

    /// The report addresses `domain` publishes; `None` when it asks for
    /// no report, an error when the lookup failed (tried again next hour).
    async fn rua(&self, domain: &str) -> Result<Option<Vec<ReportUri>>, String> {
        let answer = match self
            .outbound
            .dns()
            .txt(&format!("_smtp._tls.{domain}"))
            .await
        {
            Ok(a) => a,
            Err(e) if e.is_absent() => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        // RFC 8460 §3: exactly one record starting with v=TLSRPTv1 counts.
        let records: Vec<TlsRpt> = answer
            .value
            .iter()
            .filter(|t| t.starts_with("v=TLSRPTv1"))
            .filter_map(|t| TlsRpt::parse(t.as_bytes()).ok())
            .collect();
        Ok(match <[TlsRpt; 1]>::try_from(records) {
            Ok([record]) => Some(record.rua),
            Err(_) => None,
        })
    }

    async fn mail(&self, domain: &str, report: &TlsReport, to: &str) -> Result<(), String> {
        let gz = gzip(to_json(report).as_bytes()).map_err(|e| e.to_string())?;
        let mut message = Vec::new();
        report
            .write_rfc5322_from_bytes(
                domain,
                &self.by.domain,
                self.by.from.as_str(),
                [to].into_iter(),
                &gz,
                &mut message,
            )
            .map_err(|e| e.to_string())?;
        self.outbound
            .send_direct(
                &TenantId("tlsrpt".into()),
                to,
                message,
                Direct {
                    required: Level::Plaintext,
                    despite_policy: true,
                    what: "the TLS report",
                },
            )
            .await
            .map(|_| ())
    }

    /// RFC 8460 §5.3: the gzip'd report POSTed; any 2xx takes it.
    async fn post(&self, report: &TlsReport, url: &str) -> Result<(), String> {
        let gz = gzip(to_json(report).as_bytes()).map_err(|e| e.to_string())?;
        let response = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/tlsrpt+gzip")
            .body(gz)
            .send()
            .await
            .map_err(|e| crate::util::error_chain(&e))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {}", response.status()))
        }
    }
}

/// The report as RFC 8460 JSON: fields we have no value for are left out
/// (the RFC makes them optional; it has no `null` for them).
pub fn to_json(report: &TlsReport) -> String {
    fn prune(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                map.retain(|k, v| {
                    let empty_list = matches!(k.as_str(), "policy-string" | "mx-host")
                        && v.as_array().is_some_and(Vec::is_empty);
                    !(v.is_null() || empty_list)
                });
                map.values_mut().for_each(prune);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(prune),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(report).unwrap_or_default();
    prune(&mut v);
    v.to_string()
}

fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes)?;
    e.finish()
}

/// `2026-11-23` for the day starting at `day_start`.
pub fn day_name(day_start: i64) -> String {
    chrono::DateTime::from_timestamp(day_start, 0)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::QueueId;
    use crate::report::event::{self, Attempt};
    use crate::report::{Event, log};
    use serde_json::json;

    /// A verdict with these checks, named as the log spells them.
    fn verdict(checks: &[(&str, &str, &str)]) -> Verdict {
        let checks = checks
            .iter()
            .map(|(n, s, d)| {
                serde_json::from_value(json!({"name": n, "status": s, "detail": d})).expect("check")
            })
            .collect();
        Verdict::new(
            ("x.test", "mx.x.test.", "192.0.2.7"),
            checks,
            Vec::new(),
            None,
            0,
        )
    }

    fn judged(checks: &[(&str, &str, &str)]) -> (PolicyType, Option<ResultType>) {
        let v = verdict(checks);
        let (p, f) = judge(&v);
        (p, f.map(|f| f.result_type))
    }

    #[test]
    fn sessions_are_judged_by_the_policy_the_domain_published() {
        let tls = ("starttls", "pass", "STARTTLS negotiated");
        assert_eq!(
            judged(&[tls, ("dane", "pass", "DANE-EE matches")]),
            (PolicyType::Tlsa, None)
        );
        assert_eq!(
            judged(&[tls, ("dnssec", "pass", ""), ("dane", "fail", "no match")]),
            (PolicyType::Tlsa, Some(ResultType::TlsaInvalid))
        );
        assert_eq!(
            judged(&[
                tls,
                ("mta_sts", "fail", "not in mx list"),
                ("hostname", "fail", "name")
            ]),
            (PolicyType::Sts, Some(ResultType::CertificateHostMismatch))
        );
        assert_eq!(
            judged(&[
                tls,
                ("mta_sts", "fail", "x"),
                ("pkix", "fail", "certificate has expired")
            ]),
            (PolicyType::Sts, Some(ResultType::CertificateExpired))
        );
        assert_eq!(
            judged(&[
                tls,
                (
                    "mta_sts",
                    "not_applicable",
                    &format!("{FETCH_FAILED}: HTTP 404")
                )
            ]),
            (PolicyType::Sts, Some(ResultType::StsPolicyFetchError))
        );
        // Without a policy only TLS itself can fail; a PKIX failure is no failure here.
        assert_eq!(
            judged(&[tls, ("pkix", "fail", "unknown issuer")]),
            (PolicyType::NoPolicyFound, None)
        );
        assert_eq!(
            judged(&[("starttls", "fail", "STARTTLS not offered")]),
            (
                PolicyType::NoPolicyFound,
                Some(ResultType::StartTlsNotSupported)
            )
        );
    }

    #[test]
    fn a_day_of_log_records_becomes_one_report_per_domain() {
        let conn = Connection::open_in_memory().expect("db");
        log::init(&conn).expect("schema");
        let day = 1_800_000_000i64.div_euclid(86_400) * 86_400;
        let attempt = |n: u64, domain: &str, v: Option<Verdict>| Event {
            queue_id: QueueId(n),
            at: day + n as i64,
            data: EventData::Attempt(Box::new(Attempt {
                v: event::VERSION,
                domain: domain.to_string(),
                verdict: v,
                checks: Vec::new(),
                hosts: Vec::new(),
                recipients: Vec::new(),
                bounce: None,
            })),
        };
        let good = Some(verdict(&[("starttls", "pass", ""), ("dane", "pass", "")]));
        let bad = Some(verdict(&[
            ("starttls", "pass", ""),
            ("dane", "fail", "no TLSA matches"),
        ]));
        log::append(
            &conn,
            "a",
            &[
                attempt(1, "X.test", good.clone()),
                attempt(2, "x.test", bad.clone()),
                attempt(3, "x.test", bad),
                // No connection: no session.
                attempt(4, "y.test", None),
            ],
        )
        .expect("append");
        // Another tenant's session counts too; the next day's does not.
        log::append(&conn, "b", &[attempt(5, "x.test", good.clone())]).expect("append");
        log::append(&conn, "b", &[attempt(86_400, "x.test", good)]).expect("append");

        let days = aggregate(&conn, day, day + 86_400).expect("aggregate");
        assert_eq!(days.keys().collect::<Vec<_>>(), ["x.test"]);
        assert_eq!(days["x.test"].totals(), (2, 2));
        let by = Submitter {
            domain: "gw.test".into(),
            organization: "Org".into(),
            contact: None,
            from: "r@gw.test".into(),
        };
        let json: serde_json::Value =
            serde_json::from_str(&to_json(&report("x.test", &days["x.test"], day, &by)))
                .expect("json");
        assert_eq!(json["policies"][0]["policy"]["policy-type"], "tlsa");
        assert_eq!(
            json["policies"][0]["summary"]["total-failure-session-count"],
            2
        );
        let detail = &json["policies"][0]["failure-details"][0];
        assert_eq!(detail["result-type"], "tlsa-invalid");
        assert_eq!(detail["failed-session-count"], 2);
        assert_eq!(detail["receiving-mx-hostname"], "mx.x.test");
        assert_eq!(detail["receiving-ip"], "192.0.2.7");
        assert!(detail.get("sending-mta-ip").is_none(), "no nulls: {json}");
        assert!(json.get("contact-info").is_none());
        assert!(
            json["date-range"]["end-datetime"]
                .as_str()
                .unwrap()
                .ends_with("T23:59:59Z")
        );
    }
}
