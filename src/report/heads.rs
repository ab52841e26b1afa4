//! Chain heads outside the database: at intervals the gateway writes each
//! tenant's head (last seq and hash) to its log, signed with Ed25519 when a
//! key is configured. Whoever can rewrite the database cannot unwrite the
//! log that went to the journal or a log host; `report verify --heads`
//! checks the database against those lines, which finds truncation and a
//! rewritten chain, and with the public key finds forged lines.
//!
//! A line: `chain-head v1 tenant=T seq=N hash=H at=RFC3339 sig=BASE64`;
//! the signature covers the text from `tenant=` up to ` sig=`.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use rusqlite::{Connection, OptionalExtension};

use super::log;

const TAG: &str = "chain-head v1 ";

#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("{path}: {why}")]
    Key { path: String, why: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The gateway's signing key.
pub struct Signer(Ed25519KeyPair);

impl Signer {
    /// Reads a PKCS#8 Ed25519 key in PEM (`sealgate report keygen`).
    pub fn load(path: &Path) -> Result<Signer, HeadError> {
        let bad = |why: String| HeadError::Key {
            path: path.display().to_string(),
            why,
        };
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let key = rustls_pemfile::private_key(&mut pem.as_slice())
            .map_err(|e| bad(e.to_string()))?
            .ok_or_else(|| bad("no PRIVATE KEY in PEM".into()))?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(key.secret_der())
            .map_err(|e| bad(format!("not an Ed25519 PKCS#8 key: {e}")))?;
        Ok(Signer(pair))
    }

    /// The public key, base64 of its 32 bytes (what `--public-key` reads).
    pub fn public_key(&self) -> String {
        B64.encode(self.0.public_key().as_ref())
    }
}

/// Writes a new key (mode 0600) and its public half beside it (`FILE.pub`);
/// returns the public key.
pub fn keygen(path: &Path) -> Result<String, HeadError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| HeadError::Key {
        path: path.display().to_string(),
        why: e.to_string(),
    })?;
    let body = B64.encode(pkcs8.as_ref());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(file, "-----BEGIN PRIVATE KEY-----")?;
    for chunk in body.as_bytes().chunks(64) {
        file.write_all(chunk)?;
        file.write_all(b"\n")?;
    }
    writeln!(file, "-----END PRIVATE KEY-----")?;
    file.sync_all()?;
    let public = Signer::load(path)?.public_key();
    let mut pub_path = path.as_os_str().to_owned();
    pub_path.push(".pub");
    std::fs::write(&pub_path, format!("{public}\n"))?;
    Ok(public)
}

/// The line for one head; in a cluster it names the node that signed.
pub fn line(
    tenant: &str,
    seq: i64,
    hash: &str,
    at: i64,
    node: Option<&str>,
    signer: Option<&Signer>,
) -> String {
    let mut signed = format!(
        "tenant={tenant} seq={seq} hash={hash} at={}",
        crate::util::rfc3339(at)
    );
    if let Some(node) = node {
        signed.push_str(" node=");
        signed.push_str(node);
    }
    let sig = signer.map_or_else(
        || "-".to_string(),
        |s| B64.encode(s.0.sign(signed.as_bytes())),
    );
    format!("{TAG}{signed} sig={sig}")
}

/// One head line found in a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub tenant: String,
    pub seq: i64,
    pub hash: String,
    signed: String,
    sig: Option<Vec<u8>>,
}

/// The head lines in any text (a log file, `journalctl` output).
pub fn parse(text: &str) -> Vec<Head> {
    text.lines()
        .filter_map(|l| {
            let rest = &l[l.find(TAG)? + TAG.len()..];
            let (signed, sig) = rest.rsplit_once(" sig=")?;
            let field = |name: &str| {
                signed
                    .split(' ')
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                    .map(str::to_string)
            };
            Some(Head {
                tenant: field("tenant")?,
                seq: field("seq")?.parse().ok()?,
                hash: field("hash")?,
                signed: signed.to_string(),
                sig: B64.decode(sig.trim()).ok(),
            })
        })
        .collect()
}

/// Checks head lines against the database; each problem in words.
pub fn check(
    conn: &Connection,
    heads: &[Head],
    public_key: Option<&[u8]>,
) -> rusqlite::Result<Vec<String>> {
    let mut problems = Vec::new();
    for h in heads {
        let at = format!("head {} of tenant {}", h.seq, h.tenant);
        if let Some(key) = public_key {
            let ok = h.sig.as_ref().is_some_and(|sig| {
                UnparsedPublicKey::new(&ED25519, key)
                    .verify(h.signed.as_bytes(), sig)
                    .is_ok()
            });
            if !ok {
                problems.push(format!(
                    "{at}: the signature does not verify (a forged or edited line)"
                ));
                continue;
            }
        }
        let stored: Option<Vec<u8>> = conn
            .query_row(
                "SELECT hash FROM txlog WHERE tenant = ? AND seq = ?",
                rusqlite::params![h.tenant, h.seq],
                |r| r.get(0),
            )
            .optional()?;
        match stored {
            Some(hash) if log::hex(&hash) == h.hash => {}
            Some(_) => problems.push(format!(
                "{at}: the record's hash differs from the one logged: the chain was rewritten"
            )),
            None => {
                let (first, last): (Option<i64>, Option<i64>) = conn.query_row(
                    "SELECT MIN(seq), MAX(seq) FROM txlog WHERE tenant = ?",
                    [&h.tenant],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                match (first, last) {
                    (Some(first), _) if h.seq < first => {} // removed by retention; verify vouches
                    (_, Some(last)) => problems.push(format!(
                        "{at}: no such record, the chain ends at {last}: records were removed from its end"
                    )),
                    _ => problems.push(format!("{at}: the tenant has no records at all")),
                }
            }
        }
    }
    Ok(problems)
}

/// Every tenant's current head.
fn current(conn: &Connection) -> rusqlite::Result<Vec<(String, i64, Vec<u8>)>> {
    conn.prepare(
        "SELECT t.tenant, t.seq, t.hash FROM txlog t
         JOIN (SELECT tenant, MAX(seq) AS seq FROM txlog GROUP BY tenant) h
           ON t.tenant = h.tenant AND t.seq = h.seq",
    )?
    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
    .collect()
}

/// Every tenant's current head in the SQLite database at `db`.
pub fn current_in(db: &Path) -> rusqlite::Result<Vec<(String, i64, Vec<u8>)>> {
    let conn = Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    current(&conn)
}

/// In the gateway: every `interval`, and once at shutdown, each tenant's
/// head that moved since it was last written. In a cluster each node
/// writes the heads it sees, with its name.
pub async fn write_periodically(
    storage: std::sync::Arc<dyn super::LogStore>,
    node: Option<String>,
    interval: Duration,
    signer: Option<std::sync::Arc<Signer>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut written: std::collections::HashMap<String, i64> = Default::default();
    let mut tick = tokio::time::interval(interval);
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = shutdown.changed() => true,
        };
        match storage.heads().await {
            Ok(heads) => {
                for (tenant, seq, hash) in heads {
                    if written.get(&tenant) == Some(&seq) {
                        continue;
                    }
                    let text = line(
                        &tenant,
                        seq,
                        &log::hex(&hash),
                        crate::util::now(),
                        node.as_deref(),
                        signer.as_deref(),
                    );
                    tracing::info!(target: "sealgate::chain", "{text}");
                    written.insert(tenant, seq);
                }
            }
            Err(e) => tracing::warn!("cannot read the chain heads: {e:#}"),
        }
        if last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::QueueId;
    use crate::report::Event;

    #[test]
    fn logged_heads_find_truncation_rewrites_and_forged_lines() {
        let dir = tempfile::tempdir().expect("dir");
        let key = dir.path().join("heads.key");
        let public = keygen(&key).expect("keygen");
        let signer = Signer::load(&key).expect("load");
        assert_eq!(signer.public_key(), public);
        let public = B64.decode(public).expect("base64");

        let conn = Connection::open_in_memory().expect("db");
        log::init(&conn).expect("schema");
        let event = |n: u64| Event {
            queue_id: QueueId(n),
            at: 1_800_000_000,
            data: crate::report::EventData::Deleted(crate::report::event::Deleted {
                v: crate::report::event::VERSION,
                by: format!("n{n}"),
                reason: None,
            }),
        };
        log::append(&conn, "t", &[event(1), event(2), event(3)]).expect("append");
        let heads = current(&conn).expect("heads");
        let (_, seq, hash) = &heads[0];
        let text = format!(
            "2026-11-23T10:00:00Z INFO sealgate::chain: {}\nunrelated line\n",
            line(
                "t",
                *seq,
                &log::hex(hash),
                1_800_000_000,
                None,
                Some(&signer)
            )
        );
        let parsed = parse(&text);
        assert_eq!(parsed.len(), 1);
        assert_eq!(
            check(&conn, &parsed, Some(&public)).expect("check"),
            Vec::<String>::new()
        );

        let forged = parse(&text.replace("seq=3", "seq=2"));
        let p = check(&conn, &forged, Some(&public)).expect("check");
        assert!(p[0].contains("signature"), "{p:?}");
        // Without the key the same line is still checked against the chain.
        let p = check(&conn, &forged, None).expect("check");
        assert!(p[0].contains("differs"), "{p:?}");

        conn.execute("DELETE FROM txlog WHERE seq = 3", [])
            .expect("truncate");
        let p = check(&conn, &parsed, Some(&public)).expect("check");
        assert!(p[0].contains("chain ends at 2"), "{p:?}");
    }
}
