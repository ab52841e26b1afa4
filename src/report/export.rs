//! Exports of the transaction log: JSON lines (every record, for machines)
//! and CSV (one row per recipient per attempt, for spreadsheets).

use std::io::Write;

use rusqlite::Connection;
use serde::Serialize;
use serde_json::Value;

use super::EventData;
use super::event::EventError;
use super::log::hex;

/// Which records: `[from, to)` in Unix seconds, one tenant or all.
pub struct Selection<'a> {
    pub from: i64,
    pub to: i64,
    pub tenant: Option<&'a str>,
    /// Called once per record read (a progress bar); none: nothing.
    pub progress: Option<&'a dyn Fn()>,
}

/// How many records a selection holds (for a progress estimate).
pub fn count(conn: &Connection, sel: &Selection<'_>) -> rusqlite::Result<u64> {
    conn.query_row(
        "SELECT count(*) FROM txlog WHERE at >= ?1 AND at < ?2 AND (?3 IS NULL OR tenant = ?3)",
        rusqlite::params![sel.from, sel.to, sel.tenant],
        |r| r.get(0),
    )
}

#[derive(Debug, Serialize)]
struct Line<'a> {
    tenant: &'a str,
    seq: i64,
    at: String,
    kind: &'a str,
    queue_id: &'a str,
    data: Value,
    /// The previous record's hash, where an export starts mid-chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    prev: Option<String>,
    hash: String,
}

/// One record as a JSON line of `report export --format json`, with its
/// `prev` (the console's download, which may start mid-chain).
pub fn json_line(tenant: &str, r: &super::log::Stored) -> String {
    let line = Line {
        tenant,
        seq: r.seq,
        at: crate::util::rfc3339(r.at),
        kind: &r.kind,
        queue_id: &r.queue_id,
        data: serde_json::from_str(&r.data).unwrap_or(Value::String(r.data.clone())),
        prev: Some(hex(&r.prev)),
        hash: hex(&r.hash),
    };
    serde_json::to_string(&line).unwrap_or_default()
}

/// One stored record as selected.
pub(super) struct Stored<'a> {
    pub tenant: &'a str,
    pub seq: i64,
    /// Unix seconds.
    pub at: i64,
    pub kind: &'a str,
    pub queue_id: &'a str,
    /// The stored JSON text, as hashed.
    pub data: &'a str,
    pub hash: &'a [u8],
}

impl Stored<'_> {
    /// The record as its type.
    pub fn event(&self) -> Result<EventData, EventError> {
        EventData::parse(self.kind, self.data)
    }
}

/// Calls `f` for each selected record in time order.
pub(super) fn each(
    conn: &Connection,
    sel: &Selection<'_>,
    mut f: impl FnMut(&Stored<'_>) -> std::io::Result<()>,
) -> anyhow::Result<usize> {
    let mut stmt = conn.prepare(
        "SELECT tenant, seq, at, kind, queue_id, data, hash FROM txlog
         WHERE at >= ?1 AND at < ?2 AND (?3 IS NULL OR tenant = ?3)
         ORDER BY at, tenant, seq",
    )?;
    let mut rows = stmt.query(rusqlite::params![sel.from, sel.to, sel.tenant])?;
    let mut n = 0;
    while let Some(r) = rows.next()? {
        if let Some(progress) = sel.progress {
            progress();
        }
        let tenant: String = r.get(0)?;
        let kind: String = r.get(3)?;
        let queue_id: String = r.get(4)?;
        let data: String = r.get(5)?;
        let hash: Vec<u8> = r.get(6)?;
        f(&Stored {
            tenant: &tenant,
            seq: r.get(1)?,
            at: r.get(2)?,
            kind: &kind,
            queue_id: &queue_id,
            data: &data,
            hash: &hash,
        })?;
        n += 1;
    }
    Ok(n)
}

/// Every selected record as one JSON object per line; returns the count.
pub fn json_lines(
    conn: &Connection,
    sel: &Selection<'_>,
    out: &mut dyn Write,
) -> anyhow::Result<usize> {
    each(conn, sel, |r| {
        // The stored text as it was hashed, so the line can be checked.
        let data = serde_json::from_str(r.data).unwrap_or(Value::String(r.data.to_string()));
        let line = Line {
            tenant: r.tenant,
            seq: r.seq,
            at: crate::util::rfc3339(r.at),
            kind: r.kind,
            queue_id: r.queue_id,
            data,
            prev: None,
            hash: hex(r.hash),
        };
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")
    })
}

/// The CSV columns, in order.
pub const CSV_COLUMNS: &[&str] = &[
    "time",
    "tenant",
    "queue_id",
    "recipient",
    "class",
    "required",
    "action",
    "outcome",
    "mx_host",
    "address",
    "level",
    "tls_version",
    "cipher_suite",
    "failed_checks",
    "detail",
    "observed_level",
    "refusals",
    "reason_code",
    "end_to_end",
];

/// The one encoder of a CSV cell: text a spreadsheet would run as a formula
/// (starting with `=`, `+`, `-`, `@`, a tab or a CR) gets a leading `'`, as
/// OWASP's CSV-injection guidance does; the CSV writer quotes the rest.
pub fn cell(text: &str) -> std::borrow::Cow<'_, str> {
    match text.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{text}").into(),
        _ => text.into(),
    }
}

/// One row per recipient of every selected attempt; returns the row count.
///
/// `level` is the level the host used may carry mail at (empty when no
/// host may), `observed_level` what its connection reached, `refusals`
/// why a host may not carry mail.
pub fn csv(conn: &Connection, sel: &Selection<'_>, out: &mut dyn Write) -> anyhow::Result<usize> {
    let mut w = ::csv::Writer::from_writer(out);
    w.write_record(CSV_COLUMNS)?;
    let mut rows = 0;
    each(conn, sel, |r| {
        let Ok(EventData::Attempt(a)) = r.event() else {
            return Ok(());
        };
        let v = a.verdict.as_ref();
        let failed: Vec<&str> = v
            .map(|v| v.failing().map(|c| c.name.name()).collect())
            .unwrap_or_default();
        let refusals: Vec<&str> = v
            .map(|v| v.refusals.iter().map(|r| r.reason.name()).collect())
            .unwrap_or_default();
        let level = |l: Option<crate::qualify::Level>| l.map(|l| l.name()).unwrap_or_default();
        let tls = v.and_then(|v| v.tls.as_ref());
        for rc in &a.recipients {
            let at = crate::util::rfc3339(r.at);
            let row = [
                at.as_str(),
                r.tenant,
                r.queue_id,
                &rc.address,
                rc.class.map(|c| c.name()).unwrap_or_default(),
                rc.required.as_deref().unwrap_or_default(),
                rc.action.as_deref().unwrap_or_default(),
                rc.outcome.name(),
                v.map(|v| v.mx_host.as_str()).unwrap_or_default(),
                v.map(|v| v.address.as_str()).unwrap_or_default(),
                level(v.and_then(|v| v.level)),
                tls.map(|t| t.version.as_str()).unwrap_or_default(),
                tls.map(|t| t.cipher_suite.as_str()).unwrap_or_default(),
                &failed.join(" "),
                &rc.detail,
                level(v.map(|v| v.observed_level)),
                &refusals.join(" "),
                rc.reason_code.map(|c| c.name()).unwrap_or_default(),
                rc.end_to_end.as_deref().unwrap_or_default(),
            ];
            w.write_record(row.map(|c| cell(c).into_owned()))
                .map_err(std::io::Error::other)?;
            rows += 1;
        }
        Ok(())
    })?;
    w.flush()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::cell;

    #[test]
    fn formula_cells_are_defused() {
        assert_eq!(
            cell("=HYPERLINK(\"http://x\")"),
            "'=HYPERLINK(\"http://x\")"
        );
        for s in ["+1", "-1", "@SUM(A1)", "\tx", "\rx"] {
            assert!(cell(s).starts_with('\''), "{s}");
        }
        assert_eq!(cell("a@b.test"), "a@b.test");
        assert_eq!(cell(""), "");
    }
}
