//! Exports of the transaction log: JSON lines (every record, for machines)
//! and CSV (one row per recipient per attempt, for spreadsheets).

use std::io::Write;

use rusqlite::Connection;
use serde::Serialize;
use serde_json::Value;

use super::log::hex;

/// Which records: `[from, to)` in Unix seconds, one tenant or all.
pub struct Selection<'a> {
    pub from: i64,
    pub to: i64,
    pub tenant: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct Line<'a> {
    tenant: &'a str,
    seq: i64,
    at: String,
    kind: &'a str,
    queue_id: &'a str,
    data: Value,
    hash: String,
}

/// Calls `f` for each selected record in time order: (tenant, seq, at, kind, queue_id, data, hash).
pub(super) fn each(
    conn: &Connection,
    sel: &Selection<'_>,
    mut f: impl FnMut(&str, i64, i64, &str, &str, Value, &[u8]) -> std::io::Result<()>,
) -> anyhow::Result<usize> {
    let mut stmt = conn.prepare(
        "SELECT tenant, seq, at, kind, queue_id, data, hash FROM txlog
         WHERE at >= ?1 AND at < ?2 AND (?3 IS NULL OR tenant = ?3)
         ORDER BY at, tenant, seq",
    )?;
    let mut rows = stmt.query(rusqlite::params![sel.from, sel.to, sel.tenant])?;
    let mut n = 0;
    while let Some(r) = rows.next()? {
        let tenant: String = r.get(0)?;
        let kind: String = r.get(3)?;
        let queue_id: String = r.get(4)?;
        let data: String = r.get(5)?;
        let hash: Vec<u8> = r.get(6)?;
        let data: Value = serde_json::from_str(&data).unwrap_or(Value::String(data));
        f(&tenant, r.get(1)?, r.get(2)?, &kind, &queue_id, data, &hash)?;
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
    each(conn, sel, |tenant, seq, at, kind, queue_id, data, hash| {
        let line = Line {
            tenant,
            seq,
            at: crate::policy::rfc3339(at),
            kind,
            queue_id,
            data,
            hash: hex(hash),
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
];

/// One row per recipient of every selected attempt; returns the row count.
pub fn csv(conn: &Connection, sel: &Selection<'_>, out: &mut dyn Write) -> anyhow::Result<usize> {
    let mut w = ::csv::Writer::from_writer(out);
    w.write_record(CSV_COLUMNS)?;
    let mut rows = 0;
    each(conn, sel, |tenant, _, at, kind, queue_id, data, _| {
        if kind != "attempt" {
            return Ok(());
        }
        let v = &data["verdict"];
        let text = |x: &Value| x.as_str().unwrap_or_default().to_string();
        let failed: Vec<String> = v["checks"]
            .as_array()
            .map(|checks| {
                checks
                    .iter()
                    .filter(|c| c["status"] == "fail" || c["status"] == "error")
                    .map(|c| text(&c["name"]))
                    .collect()
            })
            .unwrap_or_default();
        for r in data["recipients"].as_array().into_iter().flatten() {
            w.write_record([
                crate::policy::rfc3339(at),
                tenant.to_string(),
                queue_id.to_string(),
                text(&r["address"]),
                text(&r["class"]),
                text(&r["required"]),
                text(&r["action"]),
                text(&r["outcome"]),
                text(&v["mx_host"]),
                text(&v["address"]),
                text(&v["level"]),
                text(&v["tls"]["version"]),
                text(&v["tls"]["cipher_suite"]),
                failed.join(" "),
                text(&r["detail"]),
            ])
            .map_err(std::io::Error::other)?;
            rows += 1;
        }
        Ok(())
    })?;
    w.flush()?;
    Ok(rows)
}
