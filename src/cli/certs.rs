//! `sealgate certs`: the recipient S/MIME certificates confidential mail is
//! encrypted to, per tenant.

use super::*;
use crate::seal::certs::{CertStore, StoredCert};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use x509_parser::prelude::{FromDer, X509Certificate};

#[derive(Subcommand)]
pub(super) enum CertsCommand {
    /// Import a recipient's certificate (PEM or DER; intermediates may follow
    /// it in a PEM file), after checking its chain, its revocation status and
    /// its key, for every address it names (or only --address).
    Import {
        file: PathBuf,
        /// The tenant whose recipient this is (default: default_tenant).
        #[arg(long)]
        tenant: Option<String>,
        /// Only this address of the certificate.
        #[arg(long)]
        address: Option<String>,
    },
    /// The certificates of a tenant, by address.
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Forget an address's certificates, or one certificate by its SHA-256
    /// fingerprint (at least 8 hex digits).
    Remove {
        what: String,
        #[arg(long)]
        tenant: Option<String>,
    },
}

pub(super) fn certs(config: Config, command: CertsCommand) -> anyhow::Result<()> {
    crate::util::private_files();
    crate::util::private_dir(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    // Where the gateway keeps them: a cluster's are its nodes'.
    let (runtime, tables) = command_tables(&config, crate::seal::certs::SCHEMA)?;
    let store = CertStore::new(tables);
    match command {
        CertsCommand::Import {
            file,
            tenant,
            address,
        } => {
            let tenant = tenant_of(&config, tenant)?;
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let chain = read_chain(&bytes).with_context(|| format!("{}", file.display()))?;
            import(config, &runtime, &store, &tenant, chain, address.as_deref())
        }
        CertsCommand::List { tenant } => {
            let tenant = tenant_of(&config, tenant)?;
            let list = runtime.block_on(store.list(&tenant))?;
            let now = crate::util::now();
            for c in &list {
                println!(
                    "{:<32}  {}  until {}{}  {}",
                    c.address,
                    c.fingerprint.get(..16).unwrap_or(&c.fingerprint),
                    time(c.not_after),
                    if c.not_after < now { " (expired)" } else { "" },
                    c.subject
                );
            }
            println!("{} certificate(s) of tenant {tenant}", list.len());
            Ok(())
        }
        CertsCommand::Remove { what, tenant } => {
            let tenant = tenant_of(&config, tenant)?;
            let n = runtime.block_on(store.remove(&tenant, &what))?;
            if n == 0 {
                bail!("no certificate of tenant {tenant} matches `{what}`");
            }
            println!("{what} (tenant {tenant}): {n} certificate(s) removed");
            Ok(())
        }
    }
}

/// The certificates of a file: the recipient's (the first that is not a
/// CA) first, then the rest as intermediates.
fn read_chain(bytes: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let mut certs = if bytes.starts_with(b"-----") || bytes.windows(11).any(|w| w == b"-----BEGIN ")
    {
        CertificateDer::pem_slice_iter(bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("not a PEM certificate file: {e}"))?
    } else {
        vec![CertificateDer::from(bytes.to_vec())]
    };
    if certs.is_empty() {
        bail!("no certificate in the file");
    }
    let is_ca = |der: &CertificateDer<'_>| -> anyhow::Result<bool> {
        let (_, c) = X509Certificate::from_der(der)
            .map_err(|e| anyhow::anyhow!("a certificate does not parse: {e}"))?;
        Ok(c.is_ca())
    };
    let mut ee = None;
    for (i, c) in certs.iter().enumerate() {
        if !is_ca(c)? {
            ee = Some(i);
            break;
        }
    }
    let Some(ee) = ee else {
        bail!("the file holds only CA certificates, no recipient's certificate");
    };
    let first = certs.remove(ee);
    certs.insert(0, first);
    Ok(certs)
}

fn import(
    config: Config,
    runtime: &tokio::runtime::Runtime,
    store: &CertStore,
    tenant: &str,
    chain: Vec<CertificateDer<'static>>,
    only: Option<&str>,
) -> anyhow::Result<()> {
    let (_, cert) = X509Certificate::from_der(&chain[0])
        .map_err(|e| anyhow::anyhow!("the certificate does not parse: {e}"))?;
    let named = crate::qualify::recipient::addresses(&cert);
    if named.is_empty() {
        bail!("the certificate names no e-mail address (subjectAltName rfc822Name)");
    }
    let addresses: Vec<String> = match only {
        Some(a) if named.iter().any(|n| n.eq_ignore_ascii_case(a)) => vec![a.to_string()],
        Some(a) => bail!(
            "the certificate does not name {a}; it names {}",
            named.join(", ")
        ),
        None => named,
    };
    let subject = cert.subject().to_string();
    let not_after = cert.validity().not_after.timestamp();
    let now = crate::util::now();
    let judgments = runtime.block_on(async {
        let dns = crate::dns::Dns::new(&config.dns)?;
        let qualifier = crate::qualify::Qualifier::new(Arc::new(config), dns, None)?;
        let mut out = Vec::new();
        for a in &addresses {
            // Imported even if its revocation status cannot be had now:
            // each use asks again and the class decides.
            out.push(
                qualifier
                    .judge_recipient_certificate(&chain, a, true, now)
                    .await,
            );
        }
        anyhow::Ok(out)
    })?;
    if let Some(why) = judgments.iter().find_map(|j| j.refusal.as_ref()) {
        bail!("not imported: {why}");
    }
    for (address, j) in addresses.iter().zip(&judgments) {
        let stored = StoredCert {
            address: address.clone(),
            fingerprint: j.fingerprint.clone(),
            chain: chain.clone(),
            subject: subject.clone(),
            not_after,
            added_at: now,
        };
        let new = runtime.block_on(store.add(tenant, &stored))?;
        println!(
            "{address} (tenant {tenant}): {} {} ({}; {})",
            if new { "imported" } else { "already known:" },
            j.fingerprint,
            j.summary,
            j.passed.join("; ")
        );
    }
    Ok(())
}
