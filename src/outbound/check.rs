//! `sealgate check DOMAIN`: every MX host qualified the way delivery does,
//! on a real connection (EHLO, STARTTLS with the delivery verifier, QUIT).

use super::Outbound;
use super::connect::Opened;
use crate::qualify::report::{CheckReport, HostReport};
use crate::qualify::route::HostPlan;

impl Outbound {
    pub async fn check(&self, domain: &str) -> CheckReport {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let route = match self.qualifier.route(&domain).await {
            Ok(r) => r,
            Err(f) => return CheckReport::unroutable(&domain, &f),
        };
        let now = chrono::Utc::now().timestamp();
        let mut reports = Vec::new();
        for plan in self.ordered(&domain, route.hosts, now).await {
            let c = match plan {
                HostPlan::Skip {
                    target,
                    checks,
                    refusal,
                } => {
                    reports.push(HostReport::skipped(&target, &checks, &refusal));
                    continue;
                }
                HostPlan::Use(c) => c,
            };
            let mut report = None;
            let mut last = (None, String::new());
            for &ip in &c.addresses {
                match self.open(&domain, &c, ip).await {
                    Ok(Opened { client, judged }) => {
                        report = Some(HostReport::connected(&c.target, &judged.verdict));
                        if let Some(client) = client {
                            client.quit().await;
                        }
                        break;
                    }
                    Err(e) => last = (Some(ip.to_string()), e.to_string()),
                }
            }
            reports
                .push(report.unwrap_or_else(|| HostReport::unreachable(&c.target, last.0, last.1)));
        }
        CheckReport::new(&domain, route.checks, reports)
    }
}
