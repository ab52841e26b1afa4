//! The recipient certificate directory: per tenant, the S/MIME
//! certificates (with the intermediates that came with them) imported by
//! `sealgate certs import`, one row per address a certificate names, in
//! the gateway's database (a cluster's, shared by its nodes). Certificates are public; what makes one usable
//! (chain, revocation, expiry) is judged each time it is used, by
//! `qualify::recipient`, not stored.

use std::path::Path;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::tables::{TableError, Tables, Value};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS recipient_certs (
    tenant      TEXT NOT NULL,
    address     TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    chain       TEXT NOT NULL,
    subject     TEXT NOT NULL,
    not_after   INTEGER NOT NULL,
    added_at    INTEGER NOT NULL,
    PRIMARY KEY (tenant, address, fingerprint)
) WITHOUT ROWID;
";

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("certificate store: {0}")]
    Db(#[from] TableError),
    #[error("certificate store: a stored chain does not parse: {0}")]
    Stored(String),
}

/// One certificate for one address.
#[derive(Debug, Clone)]
pub struct StoredCert {
    pub address: String,
    /// SHA-256 of the certificate, upper-case hex.
    pub fingerprint: String,
    /// The certificate first, then the intermediates imported with it.
    pub chain: Vec<CertificateDer<'static>>,
    pub subject: String,
    pub not_after: i64,
    pub added_at: i64,
}

/// The directory, in the gateway's tables (a cluster's nodes share it).
pub struct CertStore {
    tables: Tables,
}

impl CertStore {
    /// The directory in the node's SQLite file.
    pub fn open(db: &Path) -> Result<CertStore, CertsError> {
        Ok(CertStore::new(Tables::sqlite(db, SCHEMA)?))
    }

    pub fn new(tables: Tables) -> CertStore {
        CertStore { tables }
    }

    /// Stores `cert` for its address; false: it was there already.
    pub async fn add(&self, tenant: &str, cert: &StoredCert) -> Result<bool, CertsError> {
        let pem: String = cert
            .chain
            .iter()
            .map(|c| pem_of(c))
            .collect::<Vec<_>>()
            .concat();
        let n = self
            .tables
            .execute(
                "INSERT INTO recipient_certs
                 (tenant, address, fingerprint, chain, subject, not_after, added_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (tenant, address, fingerprint) DO NOTHING",
                &[
                    tenant.into(),
                    cert.address.to_ascii_lowercase().into(),
                    cert.fingerprint.clone().into(),
                    pem.into(),
                    cert.subject.clone().into(),
                    cert.not_after.into(),
                    cert.added_at.into(),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    /// The certificates for `address`, the longest-valid first.
    pub async fn for_address(
        &self,
        tenant: &str,
        address: &str,
    ) -> Result<Vec<StoredCert>, CertsError> {
        self.select(
            "WHERE tenant = ?1 AND address = ?2 ORDER BY not_after DESC",
            &[tenant.into(), address.to_ascii_lowercase().into()],
        )
        .await
    }

    /// Every certificate of the tenant, by address.
    pub async fn list(&self, tenant: &str) -> Result<Vec<StoredCert>, CertsError> {
        self.select(
            "WHERE tenant = ?1 ORDER BY address, not_after DESC",
            &[tenant.into()],
        )
        .await
    }

    /// Removes the certificates of an address, or one certificate (by its
    /// fingerprint, or a prefix of it of at least 8 hex digits) for every
    /// address; how many rows went.
    pub async fn remove(&self, tenant: &str, what: &str) -> Result<usize, CertsError> {
        let fp = what.replace(':', "").to_ascii_uppercase();
        let by_fingerprint = fp.len() >= 8 && fp.chars().all(|c| c.is_ascii_hexdigit());
        let n = if by_fingerprint {
            // A prefix of hex digits: no LIKE wildcard can be in it.
            self.tables
                .execute(
                    "DELETE FROM recipient_certs WHERE tenant = ?1 AND fingerprint LIKE ?2",
                    &[tenant.into(), format!("{fp}%").into()],
                )
                .await?
        } else {
            self.tables
                .execute(
                    "DELETE FROM recipient_certs WHERE tenant = ?1 AND address = ?2",
                    &[tenant.into(), what.to_ascii_lowercase().into()],
                )
                .await?
        };
        Ok(n as usize)
    }

    async fn select(&self, filter: &str, args: &[Value]) -> Result<Vec<StoredCert>, CertsError> {
        let rows = self
            .tables
            .query(
                &format!(
                    "SELECT address, fingerprint, chain, subject, not_after, added_at
                     FROM recipient_certs {filter}"
                ),
                args,
            )
            .await?;
        rows.into_iter()
            .map(|row| {
                let mut r = row.into_iter();
                let mut next = || r.next().unwrap_or(Value::Null);
                let (address, fingerprint, pem, subject, not_after, added_at) =
                    (next(), next(), next(), next(), next(), next());
                let fingerprint = fingerprint.text().unwrap_or_default();
                let chain =
                    CertificateDer::pem_slice_iter(pem.text().unwrap_or_default().as_bytes())
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| CertsError::Stored(format!("{fingerprint}: {e}")))?;
                Ok(StoredCert {
                    address: address.text().unwrap_or_default(),
                    fingerprint,
                    chain,
                    subject: subject.text().unwrap_or_default(),
                    not_after: not_after.int().unwrap_or_default(),
                    added_at: added_at.int().unwrap_or_default(),
                })
            })
            .collect()
    }
}

fn pem_of(der: &CertificateDer<'_>) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn certificates_are_kept_per_tenant_and_address_and_removed_by_either_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = CertStore::open(&dir.path().join("db")).expect("open");
        let key = rcgen::KeyPair::generate().expect("key");
        let der = rcgen::CertificateParams::new(Vec::<String>::new())
            .expect("params")
            .self_signed(&key)
            .expect("cert")
            .der()
            .clone();
        let cert = |address: &str, fingerprint: &str, not_after| StoredCert {
            address: address.into(),
            fingerprint: fingerprint.into(),
            chain: vec![der.clone()],
            subject: "CN=x".into(),
            not_after,
            added_at: 1,
        };
        assert!(
            store
                .add("t", &cert("Bob@X.test", "AB12CD34EF", 10))
                .await
                .expect("add")
        );
        assert!(
            !store
                .add("t", &cert("bob@x.test", "AB12CD34EF", 10))
                .await
                .expect("again")
        );
        assert!(
            store
                .add("t", &cert("bob@x.test", "FFEE0011", 20))
                .await
                .expect("add")
        );
        assert!(
            store
                .add("other", &cert("bob@x.test", "AB12CD34EF", 10))
                .await
                .expect("add")
        );
        let found = store.for_address("t", "BOB@x.test").await.expect("find");
        assert_eq!(
            found
                .iter()
                .map(|c| c.fingerprint.as_str())
                .collect::<Vec<_>>(),
            ["FFEE0011", "AB12CD34EF"]
        );
        assert_eq!(found[0].chain, vec![der.clone()]);
        assert_eq!(store.remove("t", "ab:12:cd:34").await.expect("rm"), 1);
        assert_eq!(store.remove("t", "bob@x.test").await.expect("rm"), 1);
        assert!(store.list("t").await.expect("list").is_empty());
        assert_eq!(store.list("other").await.expect("list").len(), 1);
    }
}
