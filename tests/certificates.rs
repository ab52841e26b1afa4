//! Certificate qualification against real peers: a test PKI made with
//! `openssl ca`, an `openssl ocsp` responder, a CRL over HTTP, and one
//! Postfix listener per peer variant (tests/support/world.rs), each the MX
//! of a DNSSEC-signed domain, judged by the BSI TR-02102-2 profiles.

mod support;
#[path = "support/world.rs"]
mod world;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::*;
use world::world;

const T: Duration = Duration::from_secs(30);

fn gateway(profile: &str) -> Gateway {
    let w = world();
    Gateway::start_with(|dir, relay, sub| {
        format!(
            "{}\n[tls]\nprofile = \"{profile}\"\n",
            w.config(dir, relay, sub)
        )
    })
}

/// `sealgate check NAME.pki.test --json`: the verdict of its one MX.
fn verdict(gw: &Gateway, name: &str) -> Value {
    let domain = format!("{name}.pki.test");
    let out = gw.cli(&["check", &domain, "--json"]);
    assert!(
        out.status.success(),
        "check {domain}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("check --json prints JSON");
    v["mx"][0].clone()
}

fn check<'a>(host: &'a Value, name: &str) -> Option<(&'a str, &'a str)> {
    host["checks"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
        .map(|c| (c["status"].as_str().unwrap(), c["detail"].as_str().unwrap()))
}

/// One row of the peer table: the level, and a check with its status and
/// a word its detail must contain.
struct Expect {
    peer: &'static str,
    level: &'static str,
    check: &'static str,
    status: &'static str,
    says: &'static str,
}

const fn row(
    peer: &'static str,
    level: &'static str,
    check: &'static str,
    status: &'static str,
    says: &'static str,
) -> Expect {
    Expect {
        peer,
        level,
        check,
        status,
        says,
    }
}

/// Under bsi-strict: what a BSI auditor would say of each peer.
const STRICT: &[Expect] = &[
    row("good", "qualified", "key_size", "pass", "RSA 3072 bits"),
    row(
        "good",
        "qualified",
        "revocation",
        "pass",
        "good (OCSP http://127.0.0.1:24080",
    ),
    row(
        "ecdsa",
        "qualified",
        "key_size",
        "pass",
        "ECDSA P-256, 256 bits",
    ),
    row(
        "rsa2048",
        "authenticated",
        "key_size",
        "fail",
        "RSA 2048 bits: RSA below 3000 bits",
    ),
    row("rsa1024", "plaintext", "key_size", "fail", "RSA 1024 bits"),
    row("expired", "encrypted", "pkix", "fail", "expired"),
    row("notyet", "encrypted", "pkix", "fail", "not valid yet"),
    row(
        "wrongname",
        "encrypted",
        "hostname",
        "fail",
        "not valid for mx.wrongname.pki.test",
    ),
    row("selfsigned", "encrypted", "pkix", "fail", ""),
    row("unknownca", "encrypted", "pkix", "fail", "issuer unknown"),
    row(
        "revoked",
        "encrypted",
        "revocation",
        "fail",
        "reason KeyCompromise (OCSP",
    ),
    row(
        "crlrevoked",
        "encrypted",
        "revocation",
        "fail",
        "revoked at",
    ),
    row(
        "crlrevoked",
        "encrypted",
        "revocation",
        "fail",
        "CRL http://127.0.0.1:24090/int.crl",
    ),
    row(
        "crlgood",
        "qualified",
        "revocation",
        "pass",
        "good (CRL http://127.0.0.1:24090",
    ),
    row(
        "ocspdown",
        "authenticated",
        "revocation",
        "error",
        "unavailable",
    ),
    row(
        "ocspdown",
        "authenticated",
        "revocation",
        "error",
        "127.0.0.1:24081",
    ),
    row("tls10", "plaintext", "protocol", "fail", "below TLS 1.2"),
    row(
        "tls10",
        "plaintext",
        "starttls",
        "fail",
        "the peer offers TLSv1.1",
    ),
    row(
        "cbc",
        "plaintext",
        "cipher",
        "fail",
        "CBC mode is not allowed",
    ),
    row(
        "chacha",
        "authenticated",
        "cipher",
        "fail",
        "ChaCha20-Poly1305 is not among",
    ),
    row(
        "x25519",
        "authenticated",
        "key_exchange",
        "fail",
        "x25519: group not allowed",
    ),
    row(
        "nostarttls",
        "plaintext",
        "starttls",
        "fail",
        "STARTTLS not offered",
    ),
];

/// Under bsi-compatible, the deviations pass and say so.
const COMPATIBLE: &[Expect] = &[
    row("good", "qualified", "key_size", "pass", "RSA 3072 bits"),
    row(
        "rsa2048",
        "qualified",
        "key_size",
        "pass",
        "deviation from TR-02102-2",
    ),
    row(
        "x25519",
        "qualified",
        "key_exchange",
        "pass",
        "deviation from TR-02102-2",
    ),
    row("chacha", "authenticated", "cipher", "fail", "ChaCha20"),
    row("rsa1024", "plaintext", "key_size", "fail", "RSA 1024 bits"),
];

fn assert_table(profile: &str, table: &[Expect]) {
    let gw = gateway(profile);
    let mut wrong = Vec::new();
    let mut last: Option<(&str, Value)> = None;
    for e in table {
        let host = match &last {
            Some((peer, v)) if *peer == e.peer => v.clone(),
            _ => verdict(&gw, e.peer),
        };
        let level = host["observed_level"].as_str().unwrap_or_default();
        let found = check(&host, e.check);
        // A revoked certificate is refused whatever it reached; these peers
        // publish no DANE or MTA-STS, so nothing else refuses a host.
        let revoked = e.check == "revocation" && e.status == "fail";
        let usable = if revoked {
            host["level"].is_null() && host["refusals"][0]["reason"] == "revoked"
        } else {
            host["level"] == host["observed_level"]
                && host["refusals"].as_array().is_some_and(Vec::is_empty)
        };
        let ok = level == e.level
            && usable
            && found.is_some_and(|(s, d)| s == e.status && d.contains(e.says));
        if !ok {
            wrong.push(format!(
                "{} under {profile}: expected {} with {} {} containing {:?}, got {level} with {:?}\n  all checks: {}",
                e.peer, e.level, e.check, e.status, e.says, found, host["checks"]
            ));
        }
        last = Some((e.peer, host));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn bsi_strict_verdicts_of_every_peer() {
    assert_table("bsi-strict", STRICT);
}

#[test]
fn bsi_compatible_accepts_the_named_deviations_and_shows_them() {
    assert_table("bsi-compatible", COMPATIBLE);
}

#[test]
fn the_verdict_records_every_certificate_of_the_chain() {
    let gw = gateway("bsi-strict");
    let host = verdict(&gw, "good");
    let chain = host["tls"]["chain"].as_array().expect("chain");
    assert_eq!(chain.len(), 2, "{chain:?}");
    assert!(
        chain[0]["subject"]
            .as_str()
            .unwrap()
            .contains("mx.good.pki.test")
    );
    assert!(
        chain[1]["subject"]
            .as_str()
            .unwrap()
            .contains("sealgate test intermediate")
    );
    for c in chain {
        assert_eq!(c["sha256"].as_str().unwrap().len(), 64);
        assert!(c["not_after"].as_str().unwrap().ends_with('Z'), "{c}");
    }
    assert_eq!(host["tls"]["peer_key"]["bits"], 3072);
}

#[test]
fn a_revoked_certificate_never_carries_mail() {
    let gw = gateway("bsi-compatible");
    let mut c = Client::connect(gw.relay);
    c.cmd("EHLO client.test");
    let reply = c.message(
        "sender@src.test",
        &["someone@revoked.pki.test"],
        message(&unique("revoked"), "secret\r\n").as_bytes(),
    );
    assert!(reply.starts_with("250"), "{reply}");
    let id = reply.trim().rsplit(' ').next().unwrap().to_string();
    let shown = wait_for(T, "a deferred attempt", || {
        let out = gw.cli(&["queue", "show", &id, "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let r = &v["recipients"][0];
        (r["attempts"].as_u64()? >= 1 && r["status"] == "pending").then_some(v)
    });
    let why = shown["recipients"][0]["last_reply"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("revoked"), "{why}");
    assert!(world().mails("someone@revoked.pki.test").is_empty());
    // `check --json` and the log of this delivery say the same: good TLS,
    // refused for the revocation, no host may carry mail.
    let host = verdict(&gw, "revoked");
    assert_eq!(host["observed_level"], "encrypted", "{host:#}");
    assert!(host["level"].is_null(), "{host:#}");
    assert_eq!(refusals(&host), ["revoked"]);
    assert_log_agrees(&gw, &id, &host);
    let logged = attempts(&gw, &id).pop().unwrap();
    assert_eq!(logged["recipients"][0]["reason_code"], "hosts_refused");
}

/// The stapled path: a response the intermediate signed itself (made with
/// `openssl ocsp` from the PKI's index), checked as a staple would be.
#[test]
fn ocsp_responses_signed_by_the_issuer_verify_and_tampering_is_caught() {
    use sealgate::qualify::revocation::{Outcome, verify_response};
    let w = world();
    let dir = tempfile::tempdir().unwrap();
    let response = |cert: &str| {
        let req = dir.path().join(format!("{cert}.req"));
        let resp = dir.path().join(format!("{cert}.resp"));
        run(Command::new("openssl")
            .args(["ocsp", "-issuer"])
            .arg(w.pki("ca/int.pem"))
            .arg("-cert")
            .arg(w.pki(&format!("peers/{cert}.crt")))
            .arg("-reqout")
            .arg(&req));
        run(Command::new("openssl")
            .args(["ocsp", "-index"])
            .arg(w.pki("ca/index.txt"))
            .arg("-CA")
            .arg(w.pki("ca/int.pem"))
            .arg("-rsigner")
            .arg(w.pki("ca/int.pem"))
            .arg("-rkey")
            .arg(w.pki("ca/int.key"))
            .arg("-reqin")
            .arg(&req)
            .arg("-respout")
            .arg(&resp)
            .args(["-ndays", "1"]));
        std::fs::read(resp).unwrap()
    };
    let issuer = pem_der(&w.pki("ca/int.pem"));
    let now = chrono_now();
    let good = response("good");
    let good_serial = serial(&w.pki("peers/good.crt"));
    let (outcome, _, next) = verify_response(&good, &issuer.as_slice().into(), &good_serial, now)
        .expect("a good response verifies");
    assert_eq!(outcome, Outcome::Good);
    assert!(next.is_some_and(|n| n > now));

    let revoked = response("revoked");
    let revoked_serial = serial(&w.pki("peers/revoked.crt"));
    let (outcome, _, _) =
        verify_response(&revoked, &issuer.as_slice().into(), &revoked_serial, now).unwrap();
    assert!(matches!(outcome, Outcome::Revoked { .. }), "{outcome:?}");

    // The answer for another certificate is not an answer for this one.
    let err = verify_response(&good, &issuer.as_slice().into(), &revoked_serial, now).unwrap_err();
    assert!(err.to_string().contains("CertID"), "{err}");
    // A flipped byte inside the signed data breaks the signature.
    let mut tampered = good.clone();
    let at = tampered.len() / 3;
    tampered[at] ^= 0x01;
    assert!(verify_response(&tampered, &issuer.as_slice().into(), &good_serial, now).is_err());
    // Too old: the same response a week later has expired.
    let err = verify_response(
        &good,
        &issuer.as_slice().into(),
        &good_serial,
        now + 7 * 86_400,
    )
    .unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pem_der(path: &std::path::Path) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_file(path).unwrap().to_vec()
}

fn serial(path: &std::path::Path) -> Vec<u8> {
    use x509_parser::prelude::FromDer;
    let der = pem_der(path);
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der).unwrap();
    cert.raw_serial().to_vec()
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// testssl.sh (a real, independent TLS scanner) against sealgate's own
/// relay and submission listeners under bsi-strict: nothing below TLS 1.2,
/// no CBC, no RSA key transport, forward secrecy only, the profile's curves.
#[test]
fn testssl_rates_our_own_listeners_by_the_profile() {
    let gw = Gateway::start("[tls]\nprofile = \"bsi-strict\"\n");
    let scans: Vec<_> = [gw.relay, gw.submission]
        .into_iter()
        .map(|port| {
            let out = gw.dir.path().join(format!("testssl-{port}.json"));
            std::thread::spawn(move || {
                // Its exit status counts findings of every kind (a failed
                // session-resumption probe included): the JSON is what we judge.
                Command::new("testssl")
                    .args(["-p", "-E", "-S", "-f", "--quiet", "--warnings", "off"])
                    .arg("--jsonfile")
                    .arg(&out)
                    .args(["--starttls", "smtp"])
                    .arg(format!("127.0.0.1:{port}"))
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .status()
                    .expect("testssl is installed by run-tests.sh");
                let findings: Vec<Value> = serde_json::from_slice(
                    &std::fs::read(&out).expect("testssl wrote its JSON file"),
                )
                .expect("testssl's JSON parses");
                assert!(
                    findings.iter().any(|f| f["id"] == "scanTime"),
                    "testssl on {port} did not finish: {findings:?}"
                );
                (port, findings)
            })
        })
        .collect();
    for scan in scans {
        let (port, findings) = scan.join().unwrap();
        let finding = |id: &str| {
            findings
                .iter()
                .find(|f| f["id"] == id)
                .and_then(|f| f["finding"].as_str())
                .unwrap_or_else(|| panic!("no {id} in testssl's findings for {port}"))
                .to_string()
        };
        for old in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
            assert_eq!(finding(old), "not offered", "{old} on {port}");
        }
        assert_eq!(finding("TLS1_2"), "offered");
        assert!(finding("TLS1_3").starts_with("offered"));
        assert_eq!(finding("PFS"), "offered");
        let curves = finding("PFS_ECDHE_curves");
        assert!(!curves.contains("X25519"), "{curves}");
        let ciphers: Vec<String> = findings
            .iter()
            .filter(|f| f["id"].as_str().is_some_and(|id| id.starts_with("cipher-")))
            .map(|f| f["finding"].as_str().unwrap().to_string())
            .collect();
        assert!(ciphers.len() >= 4, "{ciphers:?}");
        for c in &ciphers {
            assert!(c.contains("GCM"), "not AES-GCM on {port}: {c}");
            assert!(!c.contains("CBC") && !c.contains("CHACHA"), "{port}: {c}");
            assert!(!c.contains("TLS_RSA_"), "RSA key transport on {port}: {c}");
            assert!(
                c.contains("ECDH"),
                "no ephemeral key exchange on {port}: {c}"
            );
        }
    }
}
