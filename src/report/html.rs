//! The report for people: one self-contained HTML file (no script, no
//! external asset; its Content-Security-Policy allows inline style only)
//! with the chain's state, totals per level and action, a chart of levels
//! per day (inline SVG), a table per recipient domain, and every attempt
//! with its evidence in a `<details>` element that opens without script.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::EventData;
use rusqlite::Connection;

use super::export::Selection;
use super::log::{self, Verified};

const LEVELS: [&str; 4] = ["qualified", "authenticated", "encrypted", "plaintext"];
const COLORS: [&str; 4] = ["#1a7f37", "#4b8bd6", "#d4a72c", "#cf222e"];
const NO_CONNECTION: &str = "#888";

/// One recipient of one attempt, as the report shows it.
struct Row {
    at: i64,
    tenant: String,
    queue_id: String,
    domain: String,
    recipient: String,
    class: String,
    action: String,
    outcome: String,
    level: String,
    mx: String,
    detail: String,
    checks: Vec<(String, String, String)>,
    tls: String,
    end_to_end: Option<String>,
}

#[derive(Default)]
struct DomainLine {
    attempts: usize,
    last_at: i64,
    last_level: String,
    best_level: Option<usize>,
    failing: Vec<String>,
}

pub fn render(conn: &Connection, sel: &Selection<'_>, generated: i64) -> anyhow::Result<String> {
    let rows = rows(conn, sel)?;
    let tenants = match sel.tenant {
        Some(t) => vec![t.to_string()],
        None => log::tenants(conn)?,
    };
    let mut out = String::with_capacity(64 * 1024 + rows.len() * 1024);
    let title = format!(
        "sealgate transaction report {} – {}",
        day(sel.from.max(rows.first().map_or(sel.from, |r| r.at))),
        day(sel.to.min(generated))
    );
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">\
<title>{}</title><style>{STYLE}</style></head><body>\n<h1>{}</h1>\n",
        esc(&title),
        esc(&title)
    );
    let _ = writeln!(
        out,
        "<p>Generated {} by sealgate. Tenant: {}. Records from {} up to {}.</p>",
        esc(&crate::util::rfc3339(generated)),
        esc(sel.tenant.unwrap_or("all")),
        if sel.from <= 0 {
            "the first".to_string()
        } else {
            esc(&crate::util::rfc3339(sel.from))
        },
        esc(&crate::util::rfc3339(sel.to.min(generated)))
    );

    out.push_str("<h2>Integrity</h2>\n<table><tr><th>tenant</th><th>chain</th><th>head (write it down)</th></tr>\n");
    for t in &tenants {
        let (state, head) = match log::verify(conn, t)? {
            Verified::Intact {
                records,
                head,
                pruned,
            } => (
                format!(
                    "<span class=\"ok\">intact</span>, {records} records{}",
                    pruned
                        .map(|p| format!(" (1–{p} removed by retention)"))
                        .unwrap_or_default()
                ),
                head.map(|(s, h)| format!("{s} {h}")).unwrap_or_default(),
            ),
            Verified::Broken { seq, why } => (
                format!(
                    "<span class=\"bad\">BROKEN at record {seq}</span>: {}",
                    esc(&why)
                ),
                String::new(),
            ),
        };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{state}</td><td><code>{}</code></td></tr>",
            esc(t),
            esc(&head)
        );
    }
    out.push_str("</table>\n");

    // Totals.
    let mut by_level: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_action: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &rows {
        *by_level.entry(r.level.as_str()).or_default() += 1;
        *by_action.entry(r.action.as_str()).or_default() += 1;
    }
    out.push_str("<h2>Totals</h2>\n<p>Recipient attempts by the level of the transport and by the policy's action.</p>\n<table><tr>");
    for l in LEVELS {
        let _ = write!(out, "<th>{l}</th>");
    }
    out.push_str("<th>no connection</th>");
    for a in ["deliver", "seal", "defer", "bounce"] {
        let _ = write!(out, "<th>{a}</th>");
    }
    out.push_str("</tr>\n<tr>");
    for l in LEVELS {
        let _ = write!(
            out,
            "<td id=\"level-{l}\">{}</td>",
            by_level.get(l).copied().unwrap_or(0)
        );
    }
    let _ = write!(
        out,
        "<td id=\"level-none\">{}</td>",
        by_level.get("").copied().unwrap_or(0)
    );
    for a in ["deliver", "seal", "defer", "bounce"] {
        let _ = write!(
            out,
            "<td id=\"action-{a}\">{}</td>",
            by_action.get(a).copied().unwrap_or(0)
        );
    }
    out.push_str("</tr></table>\n");

    out.push_str("<h2>Levels per day</h2>\n");
    out.push_str(&chart(&rows));

    // Domains.
    let mut domains: BTreeMap<&str, DomainLine> = BTreeMap::new();
    for r in &rows {
        let d = domains.entry(r.domain.as_str()).or_default();
        d.attempts += 1;
        if r.at >= d.last_at {
            d.last_at = r.at;
            d.last_level = r.level.clone();
            d.failing = r
                .checks
                .iter()
                .filter(|(_, s, _)| s == "fail" || s == "error")
                .map(|(n, _, _)| n.clone())
                .collect();
        }
        if let Some(rank) = LEVELS.iter().position(|l| *l == r.level) {
            d.best_level = Some(d.best_level.map_or(rank, |b: usize| b.min(rank)));
        }
    }
    out.push_str("<h2>Recipient domains</h2>\n<table><tr><th>domain</th><th>attempts</th><th>last level</th><th>best level</th><th>failing checks (last)</th></tr>\n");
    for (name, d) in &domains {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"lvl-{}\">{}</td><td>{}</td><td>{}</td></tr>",
            esc(name),
            d.attempts,
            esc(&d.last_level),
            esc(or_dash(&d.last_level)),
            d.best_level.map_or("-", |i| LEVELS[i]),
            esc(&d.failing.join(", "))
        );
    }
    out.push_str("</table>\n");

    // Transactions.
    let _ = writeln!(
        out,
        "<h2>Transactions</h2>\n<p>{} recipient attempts; open one for its evidence.</p>",
        rows.len()
    );
    for r in &rows {
        let _ = write!(
            out,
            "<details><summary>{} · {} · <b>{}</b> → {} · class {} · {} · {} · {}</summary>\n<p>tenant {}, MX {}{}</p>\n<p>{}</p>\n",
            esc(&crate::util::rfc3339(r.at)),
            esc(&r.queue_id),
            esc(&r.recipient),
            esc(&r.domain),
            esc(&r.class),
            esc(&r.action),
            esc(&r.outcome),
            esc(or_dash(&r.level)),
            esc(&r.tenant),
            esc(or_dash(&r.mx)),
            if r.tls.is_empty() {
                String::new()
            } else {
                format!(", {}", esc(&r.tls))
            },
            esc(&r.detail)
        );
        if let Some(e2e) = &r.end_to_end {
            let _ = writeln!(out, "<p>content encrypted end to end: {}</p>", esc(e2e));
        }
        if !r.checks.is_empty() {
            out.push_str("<table><tr><th>check</th><th>status</th><th>evidence</th></tr>\n");
            for (name, status, detail) in &r.checks {
                let _ = writeln!(
                    out,
                    "<tr><td>{}</td><td class=\"st-{}\">{}</td><td>{}</td></tr>",
                    esc(name),
                    esc(status),
                    esc(status),
                    esc(detail)
                );
            }
            out.push_str("</table>\n");
        }
        out.push_str("</details>\n");
    }
    out.push_str("</body></html>\n");
    Ok(out)
}

fn rows(conn: &Connection, sel: &Selection<'_>) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    super::export::each(conn, sel, |r| {
        let Ok(EventData::Attempt(a)) = r.event() else {
            return Ok(());
        };
        let v = a.verdict.as_ref();
        let mut checks: Vec<(String, String, String)> = v
            .map(|v| {
                v.checks
                    .iter()
                    .map(|c| (c.name.to_string(), c.status.to_string(), c.detail.clone()))
                    .collect()
            })
            .unwrap_or_default();
        // Why the host may not carry mail, beside the checks that say so.
        for refusal in v.map(|v| v.refusals.as_slice()).unwrap_or_default() {
            checks.push((
                "refused".into(),
                refusal.reason.name().into(),
                refusal.to_string(),
            ));
        }
        let tls = v
            .and_then(|v| v.tls.as_ref())
            .map(|t| {
                format!(
                    "{} {} {}",
                    t.version,
                    t.cipher_suite,
                    t.kx_group.as_deref().unwrap_or_default()
                )
                .trim()
                .to_string()
            })
            .unwrap_or_default();
        for rc in &a.recipients {
            rows.push(Row {
                at: r.at,
                tenant: r.tenant.to_string(),
                queue_id: r.queue_id.to_string(),
                domain: a.domain.clone(),
                recipient: rc.address.clone(),
                class: rc.class.map(|c| c.to_string()).unwrap_or_default(),
                action: rc.action.clone().unwrap_or_default(),
                outcome: rc.outcome.name().to_string(),
                // The level the transport reached; refusals are in the checks.
                level: v.map(|v| v.observed_level.to_string()).unwrap_or_default(),
                mx: v.map(|v| v.mx_host.clone()).unwrap_or_default(),
                detail: rc.detail.clone(),
                checks: checks.clone(),
                tls: tls.clone(),
                end_to_end: rc.end_to_end.clone(),
            });
        }
        Ok(())
    })?;
    Ok(rows)
}

/// Stacked bars of recipient attempts per day and level.
fn chart(rows: &[Row]) -> String {
    let mut days: BTreeMap<i64, [usize; 5]> = BTreeMap::new();
    for r in rows {
        let slot = LEVELS.iter().position(|l| *l == r.level).unwrap_or(4);
        days.entry(r.at.div_euclid(86_400)).or_default()[slot] += 1;
    }
    if days.is_empty() {
        return "<p>No attempts in this period.</p>\n".into();
    }
    let max = days
        .values()
        .map(|c| c.iter().sum::<usize>())
        .max()
        .unwrap_or(1)
        .max(1);
    let (bar, gap, height) = (28usize, 8usize, 160usize);
    // Wide enough for the legend below the bars.
    let width = (days.len() * (bar + gap) + 60).max(520);
    let mut svg = format!(
        "<svg role=\"img\" aria-label=\"recipient attempts per day by level\" width=\"{width}\" height=\"{}\">\n",
        height + 40
    );
    for (i, (day_no, counts)) in days.iter().enumerate() {
        let x = 40 + i * (bar + gap);
        let mut y = height;
        for (slot, count) in counts.iter().enumerate() {
            if *count == 0 {
                continue;
            }
            let h = (count * height).div_ceil(max);
            y = y.saturating_sub(h);
            let color = COLORS.get(slot).copied().unwrap_or(NO_CONNECTION);
            let name = LEVELS.get(slot).copied().unwrap_or("no connection");
            let _ = writeln!(
                svg,
                "<rect x=\"{x}\" y=\"{y}\" width=\"{bar}\" height=\"{h}\" fill=\"{color}\"><title>{name}: {count}</title></rect>"
            );
        }
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
            x + bar / 2,
            height + 14,
            esc(&day(day_no * 86_400)[5..])
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"0\" y=\"10\" font-size=\"10\">{max}</text><text x=\"0\" y=\"{height}\" font-size=\"10\">0</text>"
    );
    let legend = LEVELS
        .iter()
        .zip(COLORS)
        .chain([(&"no connection", NO_CONNECTION)]);
    for (slot, (name, color)) in legend.enumerate() {
        let _ = writeln!(
            svg,
            "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\" font-size=\"10\">{name}</text>",
            40 + slot * 95,
            height + 24,
            54 + slot * 95,
            height + 33
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn day(t: i64) -> String {
    crate::util::rfc3339(t).chars().take(10).collect()
}

/// The domain risk view (`report domains --format html`) as a
/// self-contained page: one row per domain, list cells one item per line.
pub fn domains(columns: &[&str], lines: &[serde_json::Value], generated: i64) -> String {
    let mut out = String::with_capacity(4096 + lines.len() * 512);
    let title = "sealgate recipient domains";
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
<title>{title}</title><style>{STYLE}</style></head><body>\n<h1>{title}</h1>\n\
<p>Generated {} by sealgate: {} domain(s).</p>\n<table><tr>",
        esc(&crate::util::rfc3339(generated)),
        lines.len()
    );
    for c in columns {
        let _ = write!(out, "<th>{}</th>", esc(&c.replace('_', " ")));
    }
    out.push_str("</tr>\n");
    for l in lines {
        out.push_str("<tr>");
        for c in columns {
            let cell = match &l[*c] {
                serde_json::Value::Array(items) => items
                    .iter()
                    .filter_map(|x| x.as_str())
                    .map(esc)
                    .collect::<Vec<_>>()
                    .join("<br>"),
                serde_json::Value::String(s) => esc(s),
                _ => String::new(),
            };
            let class = match *c {
                "downgrade_since" if !cell.is_empty() => " class=\"bad\"",
                _ => "",
            };
            let _ = write!(out, "<td{class}>{}</td>", or_dash(&cell));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n</body></html>\n");
    out
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// Text for HTML element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#1f2328}\
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}\
th{background:#f6f8fa}details{border-bottom:1px solid #eee;padding:4px 0}summary{cursor:pointer}\
.ok{color:#1a7f37;font-weight:bold}.bad{color:#cf222e;font-weight:bold}.st-pass{color:#1a7f37}.st-fail,.st-error{color:#cf222e}\
code{font-size:12px;word-break:break-all}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_the_log_cannot_become_markup() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }
}
