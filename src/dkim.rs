//! DKIM signatures (RFC 6376) on the mail a tenant relays through sealgate.
//!
//! sealgate changes messages (it removes subject tags, adds its trace
//! header), which breaks a signature an upstream such as Exchange Online
//! made over them; and mail leaving through the gateway should carry a
//! signature of the sender's domain for DMARC. So the gateway signs, once,
//! when it accepts a message and has made every change: a tenant's key for
//! a domain signs only that tenant's mail whose `From:` is in that domain,
//! so one customer of an MSP can never get mail signed as another.
//!
//! Keys are PKCS#8 PEM files, Ed25519 (RFC 8463) or RSA with SHA-256;
//! `sealgate dkim keygen` makes them and prints the DNS record. Signing is
//! mail-auth's; choosing the key and keeping tenants apart is ours.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{DkimSigner, Done};

use rustls::pki_types::PrivateKeyDer;

use crate::config::Config;

/// The signers in force, shared by accepting mail and sealed delivery; a
/// reload (SIGHUP) replaces them as a whole.
#[derive(Default)]
pub struct Keys(std::sync::RwLock<std::sync::Arc<Signers>>);

impl Keys {
    pub fn new(signers: Signers) -> Keys {
        Keys(std::sync::RwLock::new(std::sync::Arc::new(signers)))
    }

    pub fn replace(&self, signers: Signers) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = std::sync::Arc::new(signers);
    }

    /// As [`Signers::sign`] with the signers in force.
    pub fn sign(&self, tenant: &str, message: &[u8]) -> Option<String> {
        let current = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        current.sign(tenant, message)
    }
}

/// The headers we sign; `From` twice so that a second `From:` added on the
/// way cannot slip in unsigned (RFC 6376 §8.15).
const SIGNED: &[&str] = &[
    "From",
    "From",
    "Sender",
    "Reply-To",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    #[error("{path}: {why}")]
    Key { path: PathBuf, why: String },
    #[error("tenant {tenant}: dkim domain {domain} is listed twice")]
    Duplicate { tenant: String, domain: String },
    #[error("{0}")]
    Generate(String),
}

/// Key algorithms `keygen` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Algorithm {
    /// RSA 2048 with SHA-256: verified by every receiver.
    Rsa,
    /// Ed25519 (RFC 8463): short, fast, not yet verified everywhere.
    Ed25519,
}

enum Key {
    Rsa(Box<DkimSigner<RsaKey<Sha256>, Done>>),
    Ed25519(Box<DkimSigner<Ed25519Key, Done>>),
}

/// Every tenant's signing keys, by tenant and lower-case domain.
#[derive(Default)]
pub struct Signers {
    keys: HashMap<String, HashMap<String, Key>>,
}

impl Signers {
    /// Reads every `[[tenant.dkim]]` key; a key that does not load is an error.
    pub fn load(config: &Config) -> Result<Signers, DkimError> {
        let mut keys: HashMap<String, HashMap<String, Key>> = HashMap::new();
        for tenant in &config.tenants {
            for d in &tenant.dkim {
                let domain = d.domain.trim_end_matches('.').to_ascii_lowercase();
                let key = load_key(&d.key, &domain, &d.selector)?;
                let own = keys.entry(tenant.id.clone()).or_default();
                if own.insert(domain.clone(), key).is_some() {
                    return Err(DkimError::Duplicate {
                        tenant: tenant.id.clone(),
                        domain,
                    });
                }
            }
        }
        Ok(Signers { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The `DKIM-Signature:` header line(s), CRLF-terminated, for `message`
    /// (headers and body as they will be sent) when `tenant` has a key for
    /// the domain of its first `From:` address; none otherwise.
    pub fn sign(&self, tenant: &str, message: &[u8]) -> Option<String> {
        let keys = self.keys.get(tenant)?;
        let domain = from_domain(message)?;
        let key = keys.get(&domain)?;
        let signed = match key {
            Key::Rsa(s) => s.sign(message),
            Key::Ed25519(s) => s.sign(message),
        };
        match signed {
            Ok(signature) => Some(signature.to_header()),
            Err(e) => {
                tracing::warn!(%tenant, %domain, "not DKIM-signed: {e}");
                None
            }
        }
    }
}

/// The domain of the first address in the first `From:` header, lower case.
fn from_domain(message: &[u8]) -> Option<String> {
    let parsed = mail_parser::MessageParser::new().parse_headers(message)?;
    let address = parsed.from()?.first()?.address()?;
    let (_, domain) = address.rsplit_once('@')?;
    Some(domain.trim_end_matches('.').to_ascii_lowercase())
}

fn load_key(path: &Path, domain: &str, selector: &str) -> Result<Key, DkimError> {
    let err = |why: String| DkimError::Key {
        path: path.to_path_buf(),
        why,
    };
    let pem = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let pkcs8 = rustls_pemfile::pkcs8_private_keys(&mut pem.as_bytes())
        .next()
        .ok_or_else(|| err("no PKCS#8 private key (BEGIN PRIVATE KEY) in it".into()))?
        .map_err(|e| err(e.to_string()))?;
    if let Ok(key) = Ed25519Key::from_pkcs8_der(pkcs8.secret_pkcs8_der()) {
        return Ok(Key::Ed25519(Box::new(
            DkimSigner::from_key(key)
                .domain(domain)
                .selector(selector)
                .headers(SIGNED.iter().copied()),
        )));
    }
    let key = RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs8(pkcs8))
        .map_err(|e| err(format!("neither an Ed25519 nor an RSA key: {e}")))?;
    Ok(Key::Rsa(Box::new(
        DkimSigner::from_key(key)
            .domain(domain)
            .selector(selector)
            .headers(SIGNED.iter().copied()),
    )))
}

/// Makes a key, writes it to `out` (mode 0600, never over an existing
/// file), and returns the TXT record to publish.
pub fn keygen(
    domain: &str,
    selector: &str,
    algorithm: Algorithm,
    out: &Path,
) -> Result<String, DkimError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    let (pem, tag, public) = match algorithm {
        Algorithm::Ed25519 => {
            let der = Ed25519Key::generate_pkcs8()
                .map_err(|e| DkimError::Generate(format!("Ed25519 key: {e}")))?;
            let key = Ed25519Key::from_pkcs8_der(&der)
                .map_err(|e| DkimError::Generate(format!("Ed25519 key: {e}")))?;
            (pem_of(&der), "ed25519", key.public_key())
        }
        Algorithm::Rsa => {
            use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey};
            // The rsa crate only makes the key; signing is mail-auth's (ring).
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
                .map_err(|e| DkimError::Generate(format!("RSA key: {e}")))?;
            let der = key
                .to_pkcs8_der()
                .map_err(|e| DkimError::Generate(format!("RSA key: {e}")))?;
            let public = key
                .to_public_key()
                .to_public_key_der()
                .map_err(|e| DkimError::Generate(format!("RSA public key: {e}")))?;
            (pem_of(der.as_bytes()), "rsa", public.as_bytes().to_vec())
        }
    };
    // The file must load as sealgate will load it.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| DkimError::Key {
            path: out.to_path_buf(),
            why: e.to_string(),
        })?;
    file.write_all(pem.as_bytes()).map_err(|e| DkimError::Key {
        path: out.to_path_buf(),
        why: e.to_string(),
    })?;
    load_key(out, domain, selector)?;
    Ok(txt_record(domain, selector, tag, &public))
}

fn pem_of(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

/// `SELECTOR._domainkey.DOMAIN. IN TXT "v=DKIM1; k=…; p=…"`, split into
/// strings of at most 255 bytes as DNS needs (RFC 7208 §3.3 style).
fn txt_record(domain: &str, selector: &str, tag: &str, public: &[u8]) -> String {
    use base64::Engine;
    let value = format!(
        "v=DKIM1; k={tag}; p={}",
        base64::engine::general_purpose::STANDARD.encode(public)
    );
    let strings: Vec<String> = value
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!(
        "{selector}._domainkey.{domain}. IN TXT ( {} )",
        strings.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, tenants: &str) -> Config {
        Config::parse(
            &format!("default_tenant = \"a\"\n{tenants}"),
            &dir.join("t.toml"),
        )
        .unwrap()
    }

    #[test]
    fn a_tenant_signs_only_its_own_domains() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("a.pem");
        let txt = keygen("a.example", "s1", Algorithm::Ed25519, &key).unwrap();
        assert!(txt.starts_with("s1._domainkey.a.example. IN TXT ( \"v=DKIM1; k=ed25519; p="));
        let c = config(
            dir.path(),
            &format!(
                "[[tenant]]\nid = \"a\"\n[[tenant.dkim]]\ndomain = \"A.example\"\nselector = \"s1\"\nkey = \"{}\"\n\
                 [[tenant]]\nid = \"b\"\n",
                key.display()
            ),
        );
        let signers = Signers::load(&c).unwrap();
        let mail = b"From: Ann <ann@a.example>\r\nTo: x@y.example\r\nSubject: hi\r\n\r\nbody\r\n";
        let header = signers.sign("a", mail).expect("signed");
        assert!(
            header.starts_with("DKIM-Signature: v=1; a=ed25519-sha256;"),
            "{header}"
        );
        assert!(
            header.contains("d=a.example") && header.contains("s=s1"),
            "{header}"
        );
        assert!(header.ends_with("\r\n") && !header.trim_end().contains("\n\r\n"));
        assert!(signers.sign("b", mail).is_none(), "another tenant");
        let other = b"From: ann@other.example\r\n\r\nbody\r\n";
        assert!(signers.sign("a", other).is_none(), "another domain");
        assert!(
            keygen("a.example", "s1", Algorithm::Ed25519, &key).is_err(),
            "kept"
        );
    }

    #[test]
    fn a_bad_key_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("bad.pem");
        std::fs::write(&key, "not a key").unwrap();
        let c = config(
            dir.path(),
            &format!(
                "[[tenant]]\nid = \"a\"\n[[tenant.dkim]]\ndomain = \"a.example\"\nselector = \"s\"\nkey = \"{}\"\n",
                key.display()
            ),
        );
        let e = Signers::load(&c).err().unwrap().to_string();
        assert!(
            e.starts_with(&key.display().to_string()) && e.contains("PKCS#8"),
            "{e}"
        );
    }
}
