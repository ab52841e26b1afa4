//! The report for people, self-contained HTML (no script, no external
//! asset; its Content-Security-Policy allows inline style only) with the
//! chain's state, totals per level and action, a chart of levels per day
//! (inline SVG), a table per recipient domain, and every attempt with its
//! evidence in a `<details>` element that opens without script. One page
//! for a small selection; for a large one a summary page and the attempts
//! day by day on pages of their own, written as the log is read.

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

/// Attempts above which one page is too big for a browser (and for an
/// auditor): `render` refuses, `render_pages` splits.
pub const ONE_PAGE_LIMIT: usize = 20_000;
/// Attempts per page of a report in pages.
const PER_PAGE: usize = 2_000;

/// What the summary needs of every row: counts, never the rows.
#[derive(Default)]
struct Summary {
    attempts: usize,
    by_level: BTreeMap<String, usize>,
    by_action: BTreeMap<String, usize>,
    days: BTreeMap<i64, [usize; 5]>,
    domains: BTreeMap<String, DomainLine>,
    first_at: Option<i64>,
}

impl Summary {
    fn add(&mut self, r: &Row) {
        self.attempts += 1;
        self.first_at.get_or_insert(r.at);
        *self.by_level.entry(r.level.clone()).or_default() += 1;
        *self.by_action.entry(r.action.clone()).or_default() += 1;
        let slot = LEVELS.iter().position(|l| *l == r.level).unwrap_or(4);
        self.days.entry(r.at.div_euclid(86_400)).or_default()[slot] += 1;
        let d = self.domains.entry(r.domain.clone()).or_default();
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
}

/// The report as one self-contained page; refused above [`ONE_PAGE_LIMIT`]
/// attempts (use [`render_pages`]).
pub fn render(conn: &Connection, sel: &Selection<'_>, generated: i64) -> anyhow::Result<String> {
    let mut summary = Summary::default();
    let mut details = String::new();
    each_row(conn, sel, |r| {
        summary.add(&r);
        if summary.attempts > ONE_PAGE_LIMIT {
            return Err(std::io::Error::other(format!(
                "more than {ONE_PAGE_LIMIT} recipient attempts are too many for one page: give --out a directory for a report in pages"
            )));
        }
        detail(&mut details, &r);
        Ok(())
    })?;
    let mut out = String::with_capacity(64 * 1024 + details.len());
    head(&mut out, &title(sel, &summary, generated));
    intro(&mut out, sel, generated);
    integrity(&mut out, conn, sel)?;
    totals(&mut out, &summary);
    domain_table(&mut out, &summary);
    let _ = writeln!(
        out,
        "<h2>Transactions</h2>\n<p>{} recipient attempts; open one for its evidence.</p>",
        summary.attempts
    );
    out.push_str(&details);
    out.push_str("</body></html>\n");
    Ok(out)
}

/// The report in pages under `dir`: `index.html` (integrity, totals, the
/// chart and the list of pages), `domains.html`, and the attempts of each
/// day on pages of at most 2,000 (`2026-11-17.html`, `2026-11-17-2.html`,
/// …), each linking back. Written as the log is read: memory holds the
/// counts and one page, whatever the size of the log. Returns the number
/// of pages.
pub fn render_pages(
    conn: &Connection,
    sel: &Selection<'_>,
    generated: i64,
    dir: &std::path::Path,
) -> anyhow::Result<usize> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let mut summary = Summary::default();
    // (file name, day, attempts) of every detail page, in order.
    let mut pages: Vec<(String, i64, usize)> = Vec::new();
    let mut page: Option<std::io::BufWriter<std::fs::File>> = None;
    let mut on_page = 0usize;
    let close = |page: &mut Option<std::io::BufWriter<std::fs::File>>| -> std::io::Result<()> {
        if let Some(mut w) = page.take() {
            w.write_all(b"<p><a href=\"index.html\">back to the summary</a></p></body></html>\n")?;
            w.flush()?;
        }
        Ok(())
    };
    each_row(conn, sel, |r| {
        summary.add(&r);
        let day_no = r.at.div_euclid(86_400);
        let same_day = pages.last().is_some_and(|p| p.1 == day_no);
        if page.is_none() || !same_day || on_page >= PER_PAGE {
            close(&mut page)?;
            let part = if same_day {
                pages.iter().filter(|p| p.1 == day_no).count() + 1
            } else {
                1
            };
            let name = if part == 1 {
                format!("{}.html", day(r.at))
            } else {
                format!("{}-{part}.html", day(r.at))
            };
            let mut w = std::io::BufWriter::new(std::fs::File::create(dir.join(&name))?);
            let mut top = String::new();
            head(&mut top, &format!("sealgate transactions {}", day(r.at)));
            let _ = writeln!(
                top,
                "<p><a href=\"index.html\">summary</a></p>\n<h2>Transactions of {} (page {part})</h2>",
                esc(&day(r.at))
            );
            w.write_all(top.as_bytes())?;
            page = Some(w);
            pages.push((name, day_no, 0));
            on_page = 0;
        }
        let mut one = String::new();
        detail(&mut one, &r);
        if let Some(w) = page.as_mut() {
            w.write_all(one.as_bytes())?;
        }
        on_page += 1;
        if let Some(p) = pages.last_mut() {
            p.2 += 1;
        }
        Ok(())
    })?;
    close(&mut page)?;

    let mut out = String::with_capacity(64 * 1024);
    head(&mut out, &title(sel, &summary, generated));
    intro(&mut out, sel, generated);
    integrity(&mut out, conn, sel)?;
    totals(&mut out, &summary);
    let _ = writeln!(
        out,
        "<p>{} recipient domains: <a href=\"domains.html\">the domain table</a>.</p>",
        summary.domains.len()
    );
    out.push_str("<h2>Transactions by day</h2>\n<table><tr><th>page</th><th>attempts</th></tr>\n");
    for (name, _, n) in &pages {
        let _ = writeln!(
            out,
            "<tr><td><a href=\"{0}\">{0}</a></td><td>{n}</td></tr>",
            esc(name)
        );
    }
    out.push_str("</table>\n</body></html>\n");
    std::fs::write(dir.join("index.html"), out)?;

    let mut domains = String::new();
    head(&mut domains, "sealgate recipient domains");
    domains.push_str("<p><a href=\"index.html\">summary</a></p>\n");
    domain_table(&mut domains, &summary);
    domains.push_str("</body></html>\n");
    std::fs::write(dir.join("domains.html"), domains)?;
    Ok(pages.len() + 2)
}

fn title(sel: &Selection<'_>, summary: &Summary, generated: i64) -> String {
    format!(
        "sealgate transaction report {} – {}",
        day(sel.from.max(summary.first_at.unwrap_or(sel.from))),
        day(sel.to.min(generated))
    )
}

fn head(out: &mut String, title: &str) {
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">\
<title>{}</title><style>{STYLE}</style></head><body>\n<h1>{}</h1>\n",
        esc(title),
        esc(title)
    );
}

fn intro(out: &mut String, sel: &Selection<'_>, generated: i64) {
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
}

fn integrity(out: &mut String, conn: &Connection, sel: &Selection<'_>) -> anyhow::Result<()> {
    let tenants = match sel.tenant {
        Some(t) => vec![t.to_string()],
        None => log::tenants(conn)?,
    };
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
    Ok(())
}

fn totals(out: &mut String, summary: &Summary) {
    let count = |m: &BTreeMap<String, usize>, k: &str| m.get(k).copied().unwrap_or(0);
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
            count(&summary.by_level, l)
        );
    }
    let _ = write!(
        out,
        "<td id=\"level-none\">{}</td>",
        count(&summary.by_level, "")
    );
    for a in ["deliver", "seal", "defer", "bounce"] {
        let _ = write!(
            out,
            "<td id=\"action-{a}\">{}</td>",
            count(&summary.by_action, a)
        );
    }
    out.push_str("</tr></table>\n");
    out.push_str("<h2>Levels per day</h2>\n");
    out.push_str(&chart(&summary.days));
}

fn domain_table(out: &mut String, summary: &Summary) {
    out.push_str("<h2>Recipient domains</h2>\n<table><tr><th>domain</th><th>attempts</th><th>last level</th><th>best level</th><th>failing checks (last)</th></tr>\n");
    for (name, d) in &summary.domains {
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
}

/// One attempt of one recipient, with its evidence, opening without script.
fn detail(out: &mut String, r: &Row) {
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

/// Calls `f` with each recipient of each selected attempt, in time order.
fn each_row(
    conn: &Connection,
    sel: &Selection<'_>,
    mut f: impl FnMut(Row) -> std::io::Result<()>,
) -> anyhow::Result<usize> {
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
            f(Row {
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
            })?;
        }
        Ok(())
    })
}

/// Stacked bars of recipient attempts per day and level.
fn chart(days: &BTreeMap<i64, [usize; 5]>) -> String {
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
