//! TLS-RPT reports *received* (RFC 8460 §3): what other senders saw of
//! TLS to the gateway's own domains, POSTed to the console's `/tlsrpt`
//! when `[console] tlsrpt_receive` is on, and shown on the Reports page.
//!
//! Anyone may post, so what is kept is bounded: a body of at most 1 MiB
//! (10 MiB once unzipped), parsed into the RFC's JSON schema before
//! anything is stored, one row per sender's report id (a sender that
//! posts again changes nothing), and the newest [`KEEP`] reports.

use std::io::Read;

use mail_auth::report::tlsrpt::TlsReport;
use serde::Serialize;

use crate::tables::{TableError, Tables, Value};

/// Largest body accepted, as posted.
pub const MAX_POSTED: usize = 1 << 20;
/// Largest report once decompressed.
const MAX_JSON: u64 = 10 << 20;
/// Reports kept; older ones go as new ones come.
const KEEP: i64 = 10_000;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tlsrpt_received (
    organization TEXT NOT NULL,
    report_id    TEXT NOT NULL,
    received_at  INTEGER NOT NULL,
    source       TEXT NOT NULL,
    begins       INTEGER NOT NULL,
    ends         INTEGER NOT NULL,
    domains      TEXT NOT NULL,
    successes    INTEGER NOT NULL,
    failures     INTEGER NOT NULL,
    failure_kinds TEXT NOT NULL,
    report       TEXT NOT NULL,
    PRIMARY KEY (organization, report_id)
);
CREATE INDEX IF NOT EXISTS tlsrpt_received_at ON tlsrpt_received(received_at);
";

#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error(
        "the body is neither application/tlsrpt+json nor application/tlsrpt+gzip (RFC 8460 §3)"
    )]
    MediaType,
    #[error("the report does not unzip: {0}")]
    Gzip(std::io::Error),
    #[error("the report is larger than 10 MiB unzipped")]
    TooLarge,
    #[error("the report is not a TLS-RPT report: {0}")]
    Parse(String),
    #[error("the report names no organization or no report-id")]
    Unnamed,
    #[error("cannot keep the report: {0}")]
    Store(#[from] TableError),
}

/// One received report as listed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Received {
    pub organization: String,
    pub report_id: String,
    /// Unix seconds.
    pub received_at: i64,
    /// The address it was posted from.
    pub source: String,
    /// The period it covers, Unix seconds.
    pub begins: i64,
    pub ends: i64,
    /// The policy domains it reports on.
    pub domains: Vec<String>,
    pub successes: i64,
    pub failures: i64,
    /// The result types of its failures (`certificate-expired`, …), each once.
    pub failure_kinds: Vec<String>,
}

/// The store of received reports, in the gateway's tables.
pub struct Inbox {
    tables: Tables,
}

impl Inbox {
    pub fn new(tables: Tables) -> Inbox {
        Inbox { tables }
    }

    /// Parses a posted report (`content_type` as sent) and keeps it;
    /// returns it as listed, and whether it was new.
    pub async fn receive(
        &self,
        content_type: &str,
        body: &[u8],
        source: &str,
        now: i64,
    ) -> Result<(Received, bool), ReceiveError> {
        let media = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let json = match media.as_str() {
            "application/tlsrpt+json" => body.to_vec(),
            "application/tlsrpt+gzip" => {
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(body)
                    .take(MAX_JSON + 1)
                    .read_to_end(&mut out)
                    .map_err(ReceiveError::Gzip)?;
                out
            }
            _ => return Err(ReceiveError::MediaType),
        };
        if json.len() as u64 > MAX_JSON {
            return Err(ReceiveError::TooLarge);
        }
        let report =
            TlsReport::parse_json(&json).map_err(|e| ReceiveError::Parse(format!("{e:?}")))?;
        let organization = report.organization_name.clone().unwrap_or_default();
        if organization.trim().is_empty() || report.report_id.trim().is_empty() {
            return Err(ReceiveError::Unnamed);
        }
        let mut domains: Vec<String> = report
            .policies
            .iter()
            .map(|p| p.policy.policy_domain.to_ascii_lowercase())
            .collect();
        domains.sort();
        domains.dedup();
        let mut kinds: Vec<String> = report
            .policies
            .iter()
            .flat_map(|p| &p.failure_details)
            .filter_map(|d| serde_json::to_value(d.result_type).ok())
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        kinds.sort();
        kinds.dedup();
        let sum = |f: fn(&mail_auth::report::tlsrpt::Policy) -> u32| -> i64 {
            report.policies.iter().map(|p| i64::from(f(p))).sum()
        };
        let received = Received {
            organization,
            report_id: report.report_id.clone(),
            received_at: now,
            source: source.to_string(),
            begins: report.date_range.start_datetime.to_timestamp(),
            ends: report.date_range.end_datetime.to_timestamp(),
            domains,
            successes: sum(|p| p.summary.total_success),
            failures: sum(|p| p.summary.total_failure),
            failure_kinds: kinds,
        };
        // Kept as parsed, so that what is stored is the schema's, not the bytes sent.
        let text =
            serde_json::to_string(&report).map_err(|e| ReceiveError::Parse(e.to_string()))?;
        let r = &received;
        let added = self
            .tables
            .execute(
                "INSERT INTO tlsrpt_received (organization, report_id, received_at, source,
                     begins, ends, domains, successes, failures, failure_kinds, report)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT (organization, report_id) DO NOTHING",
                &[
                    r.organization.clone().into(),
                    r.report_id.clone().into(),
                    now.into(),
                    r.source.clone().into(),
                    r.begins.into(),
                    r.ends.into(),
                    r.domains.join(" ").into(),
                    r.successes.into(),
                    r.failures.into(),
                    r.failure_kinds.join(" ").into(),
                    text.into(),
                ],
            )
            .await?;
        if added > 0 {
            self.tables
                .execute(
                    "DELETE FROM tlsrpt_received WHERE received_at < (
                         SELECT received_at FROM tlsrpt_received
                         ORDER BY received_at DESC LIMIT 1 OFFSET ?1)",
                    &[KEEP.into()],
                )
                .await?;
        }
        Ok((received, added > 0))
    }

    /// The reports received since `since`, newest first, at most 500.
    pub async fn since(&self, since: i64) -> Result<Vec<Received>, TableError> {
        let rows = self
            .tables
            .query(
                "SELECT organization, report_id, received_at, source, begins, ends, domains,
                        successes, failures, failure_kinds
                 FROM tlsrpt_received WHERE received_at >= ?1
                 ORDER BY received_at DESC, organization, report_id LIMIT 500",
                &[since.into()],
            )
            .await?;
        Ok(rows.into_iter().map(row).collect())
    }
}

fn row(r: Vec<Value>) -> Received {
    let mut r = r.into_iter();
    let mut next = || r.next().unwrap_or(Value::Null);
    let words = |v: Value| -> Vec<String> {
        v.text()
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    Received {
        organization: next().text().unwrap_or_default(),
        report_id: next().text().unwrap_or_default(),
        received_at: next().int().unwrap_or_default(),
        source: next().text().unwrap_or_default(),
        begins: next().int().unwrap_or_default(),
        ends: next().int().unwrap_or_default(),
        domains: words(next()),
        successes: next().int().unwrap_or_default(),
        failures: next().int().unwrap_or_default(),
        failure_kinds: words(next()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8460 Appendix B's example, shortened.
    const REPORT: &str = r#"{
      "organization-name": "Company-X",
      "date-range": {"start-datetime": "2016-04-01T00:00:00Z", "end-datetime": "2016-04-01T23:59:59Z"},
      "contact-info": "sts-reporting@company-x.example",
      "report-id": "5065427c-23d3-47ca-b6e0-946ea0e8c4be",
      "policies": [{
        "policy": {"policy-type": "sts", "policy-string": ["version: STSv1", "mode: testing"],
                   "policy-domain": "Company-Y.example", "mx-host": ["*.mail.company-y.example"]},
        "summary": {"total-successful-session-count": 5326, "total-failure-session-count": 303},
        "failure-details": [{"result-type": "certificate-expired", "sending-mta-ip": "2001:db8:abcd:0012::1",
                             "receiving-mx-hostname": "mx1.mail.company-y.example", "failed-session-count": 100}]
      }]
    }"#;

    #[tokio::test]
    async fn a_posted_report_is_kept_once_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inbox = Inbox::new(Tables::sqlite(&dir.path().join("db"), SCHEMA).expect("tables"));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, REPORT.as_bytes()).expect("gzip");
        let gz = gz.finish().expect("gzip");
        let (r, new) = inbox
            .receive("application/tlsrpt+gzip", &gz, "192.0.2.1", 100)
            .await
            .expect("received");
        assert!(new);
        assert_eq!(r.domains, ["company-y.example"]);
        assert_eq!((r.successes, r.failures), (5326, 303));
        assert_eq!(r.failure_kinds, ["certificate-expired"]);
        assert_eq!(r.begins, 1_459_468_800);
        let (_, new) = inbox
            .receive(
                "application/tlsrpt+json; charset=utf-8",
                REPORT.as_bytes(),
                "192.0.2.1",
                200,
            )
            .await
            .expect("received again");
        assert!(!new, "the same report id is kept once");
        assert_eq!(inbox.since(0).await.expect("list").len(), 1);
        assert!(matches!(
            inbox.receive("text/plain", REPORT.as_bytes(), "x", 1).await,
            Err(ReceiveError::MediaType)
        ));
        assert!(matches!(
            inbox
                .receive("application/tlsrpt+json", b"{\"x\": 1}", "x", 1)
                .await,
            Err(ReceiveError::Parse(_))
        ));
        assert!(matches!(
            inbox
                .receive("application/tlsrpt+gzip", b"not gzip", "x", 1)
                .await,
            Err(ReceiveError::Gzip(_))
        ));
        // A bomb: 11 MiB of zeros, a few kB zipped.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, &vec![b' '; 11 << 20]).expect("gzip");
        let bomb = gz.finish().expect("gzip");
        assert!(bomb.len() < MAX_POSTED);
        assert!(matches!(
            inbox
                .receive("application/tlsrpt+gzip", &bomb, "x", 1)
                .await,
            Err(ReceiveError::TooLarge)
        ));
    }
}
