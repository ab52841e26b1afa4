//! `sealgate records DOMAIN`: the DNS records (and the MTA-STS policy
//! file) that protect mail *to* the gateway, the way sealgate checks
//! others: DANE TLSA for its host name with the current key and the next
//! one (so a certificate renewal never breaks DANE), MTA-STS, TLS-RPT.

use std::fmt::Write;

use anyhow::Context;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::Config;

pub fn records(config: &Config, domain: &str) -> anyhow::Result<String> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let host = config.hostname.trim_end_matches('.');
    let (cert_path, key_path) = crate::tls::inbound_files(config);
    let certs = crate::tls::load_certs(&cert_path).with_context(|| {
        format!(
            "no certificate to publish yet ({}): start sealgate once, or set [tls]",
            cert_path.display()
        )
    })?;
    let leaf = certs
        .first()
        .context("the certificate file holds no certificate")?;
    let (_, parsed) = X509Certificate::from_der(leaf.as_ref())
        .map_err(|e| anyhow::anyhow!("{}: {e}", cert_path.display()))?;
    let current = hex(&Sha256::digest(parsed.tbs_certificate.subject_pki.raw));
    let next = hex(&Sha256::digest(
        crate::tls::next_key(&key_path).context("the next key")?,
    ));
    let next_path = crate::tls::next_key_path(&key_path);
    let id = chrono::Utc::now().format("%Y%m%d%H%M%S");

    let mut out = String::new();
    let _ = writeln!(
        out,
        "; Mail for {domain} goes to this gateway:\n\
         {domain}. IN MX 10 {host}.\n\n\
         ; DANE (RFC 7672), in the DNSSEC-signed zone of {host}: the key in\n\
         ; use now, and the next key ({}) for the certificate after this one.\n\
         ; Renew with the next key (openssl req -new -key {} …); once the\n\
         ; renewed certificate is in use, run this again and replace both.\n\
         _25._tcp.{host}. IN TLSA 3 1 1 {current}\n\
         _25._tcp.{host}. IN TLSA 3 1 1 {next}\n\n\
         ; MTA-STS (RFC 8461): change id= whenever the policy file changes.\n\
         _mta-sts.{domain}. IN TXT \"v=STSv1; id={id}\"\n\n\
         ; TLS-RPT (RFC 8460): where senders report failed TLS to {domain}\n\
         ; (with [console] tlsrpt_receive, rua=https://mta-sts.{domain}/tlsrpt\n\
         ; brings them to the console's Reports page).\n\
         _smtp._tls.{domain}. IN TXT \"v=TLSRPTv1; rua=mailto:tlsrpt@{domain}\"\n\n\
         ; Serve this at https://mta-sts.{domain}/.well-known/mta-sts.txt\n\
         ; (start with mode: testing; enforce once the reports are clean):",
        next_path.display(),
        next_path.display(),
    );
    let mode = config
        .console
        .as_ref()
        .and_then(|c| c.mta_sts_mode)
        .unwrap_or(crate::config::PublishedStsMode::Testing);
    out.push_str(&mode.policy_file(host));
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
