//! `sealgate check DOMAIN` for people: one block per MX host.

/// `sealgate check` for people: one block per MX host.
pub(super) fn check_text(report: &crate::qualify::report::CheckReport) -> String {
    use std::fmt::Write;
    let level = |l: Option<crate::qualify::Level>| l.map_or("none", |l| l.name());
    let mut out = format!("{}: {}", report.domain, level(report.level));
    if report.observed_level != report.level {
        let _ = write!(
            out,
            " (observed {}; no host may carry mail at it)",
            level(report.observed_level)
        );
    }
    out.push('\n');
    if let Some(e) = &report.error {
        let _ = writeln!(out, "  {e}");
    }
    for c in &report.checks {
        let _ = writeln!(out, "  {:<13} {:<15} {}", c.name, c.status, c.detail);
    }
    for mx in &report.mx {
        let _ = writeln!(
            out,
            "\nMX {} {} [{}]: {}",
            mx.preference,
            mx.host,
            mx.address.as_deref().unwrap_or("-"),
            level(mx.level)
        );
        if mx.observed_level != mx.level {
            let _ = writeln!(out, "  observed      {}", level(mx.observed_level));
        }
        for r in &mx.refusals {
            let _ = writeln!(out, "  refused       {}: {r}", r.reason.name());
        }
        if mx.refusals.is_empty()
            && let Some(e) = &mx.error
        {
            let _ = writeln!(out, "  not used: {e}");
        }
        for c in &mx.checks {
            let _ = writeln!(out, "  {:<13} {:<15} {}", c.name, c.status, c.detail);
        }
        if let Some(t) = &mx.tls {
            let _ = writeln!(
                out,
                "  tls           {} {} {}{}",
                t.version,
                t.cipher_suite,
                t.kx_group.as_deref().unwrap_or("-"),
                t.peer_key
                    .as_ref()
                    .map(|k| format!(", {k}"))
                    .unwrap_or_default()
            );
            for c in &t.chain {
                let _ = writeln!(
                    out,
                    "  cert          {} (issuer {}, until {})",
                    c.subject, c.issuer, c.not_after
                );
            }
        }
    }
    out
}
