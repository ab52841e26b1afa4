//! A small DNS world on loopback for the DNSSEC, DANE and MTA-STS tests:
//! Knot DNS serving a signed test root and child zones (tests/peers/knot.sh),
//! one Postfix MX on 127.0.1.1 with a certificate from a test CA made here,
//! and `openssl s_server -WWW` serving MTA-STS policies on 127.0.2.x.
//! For the certificate tests: a test PKI made with `openssl ca`
//! (tests/peers/pki.sh) with an `openssl ocsp` responder and a CRL over
//! HTTP, and one more Postfix listener per peer variant on 127.0.3.x
//! (same Postfix instance, `-o` TLS settings per listener), each the MX of
//! `NAME.pki.test` in a signed zone.
//! Started once per test process; every run makes fresh keys.

#![allow(dead_code)] // each test binary uses a part of the world

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub const KNOT_PORT: u16 = 24053;
pub const MX_ADDR: &str = "127.0.1.1";
pub const MX_PORT: u16 = 24025;
pub const HTTPS_PORT: u16 = 24443;
pub const OCSP_PORT: u16 = 24080;
/// Nothing listens here: the "responder down" peer's OCSP URL.
pub const DEAD_PORT: u16 = 24081;
pub const CRL_PORT: u16 = 24090;
/// A misbehaving OCSP responder served by the test process itself:
/// `/garbage` answers 200 with bytes that are no OCSP response, `/slow`
/// answers nothing for longer than the gateway waits.
pub const FAULT_PORT: u16 = 24091;
/// `https://reports.ee.dane.test:REPORTS_PORT/v1`, the https TLS-RPT address
/// of mismatch.dane.test; tests/report.rs listens there.
pub const REPORTS_ADDR: &str = "127.0.2.9";
pub const REPORTS_PORT: u16 = 24445;
/// The REQUIRETLS peer (tests/peers/requiretls_peer.py), MX of
/// `rtls.dane.test` (DANE-EE), started by [`World::requiretls_peer`].
pub const RTLS_ADDR: &str = "127.0.1.2";

/// The certificate peers: (name, PEM in pki/peers, extra `-o` settings).
/// `NAME.pki.test` has MX `mx.NAME.pki.test` at 127.0.3.(index + 1).
pub const PKI_PEERS: &[(&str, &str, &str)] = &[
    ("good", "good", ""),
    ("ecdsa", "ecdsa", ""),
    ("rsa2048", "rsa2048", ""),
    ("rsa1024", "rsa1024", ""),
    ("expired", "expired", ""),
    ("notyet", "notyet", ""),
    ("wrongname", "wrongname", ""),
    ("selfsigned", "selfsigned", ""),
    ("unknownca", "unknownca", ""),
    ("revoked", "revoked", ""),
    ("crlrevoked", "crlrevoked", ""),
    ("crlgood", "crlgood", ""),
    ("ocspdown", "ocspdown", ""),
    ("ocspgarbage", "ocspgarbage", ""),
    ("ocspslow", "ocspslow", ""),
    (
        "tls10",
        "good",
        "-o smtpd_tls_protocols=!SSLv2,!SSLv3,!TLSv1.2,!TLSv1.3 -o tls_medium_cipherlist=DEFAULT:@SECLEVEL=0",
    ),
    (
        "cbc",
        "good",
        "-o smtpd_tls_protocols=!SSLv2,!SSLv3,!TLSv1,!TLSv1.1,!TLSv1.3 -o tls_medium_cipherlist=ECDHE-RSA-AES256-SHA384:ECDHE-RSA-AES128-SHA",
    ),
    (
        "chacha",
        "good",
        "-o smtpd_tls_protocols=!SSLv2,!SSLv3,!TLSv1,!TLSv1.1,!TLSv1.3 -o tls_medium_cipherlist=ECDHE-RSA-CHACHA20-POLY1305",
    ),
    ("x25519", "good", "-o tls_eecdh_auto_curves=X25519"),
    ("nostarttls", "good", "-o smtpd_tls_security_level=none"),
    // Qualified until a test turns its STARTTLS off (tests/policy.rs).
    ("flip", "good", ""),
];

/// Names the MX certificate is valid for. `mx.testing.sts.test` is not
/// among them on purpose: its MTA-STS check must fail.
const CERT_NAMES: &[&str] = &[
    "mx.ee.dane.test",
    "mx.ta.dane.test",
    "mx.mismatch.dane.test",
    "mx.unsigned.test",
    "mx.big.test",
    "reports.ee.dane.test",
    "mx.enforce.sts.test",
    "mx.badmx.sts.test",
    "mta-sts.enforce.sts.test",
    "mta-sts.badmx.sts.test",
    "mta-sts.testing.sts.test",
];

/// MTA-STS policy hosts: (domain, address, policy).
const POLICIES: &[(&str, &str, &str)] = &[
    (
        "enforce.sts.test",
        "127.0.2.1",
        "version: STSv1\nmode: enforce\nmx: mx.enforce.sts.test\nmax_age: 86400\n",
    ),
    (
        "badmx.sts.test",
        "127.0.2.2",
        "version: STSv1\nmode: enforce\nmx: *.elsewhere.test\nmax_age: 86400\n",
    ),
    (
        "testing.sts.test",
        "127.0.2.3",
        "version: STSv1\nmode: testing\nmx: mx.testing.sts.test\nmax_age: 86400\n",
    ),
];

pub struct World {
    pub dir: PathBuf,
}

pub fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("peers/dns-world");
        stop(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("knot")).unwrap();
        let (ee, ta, other) = certificates(&dir);
        zones(&dir.join("knot"), &ee, &ta, &other);
        let pki = dir.join("pki");
        run(Command::new("bash")
            .arg(peer_script("pki.sh"))
            .arg("make")
            .arg(&pki)
            .args([OCSP_PORT, DEAD_PORT, CRL_PORT, FAULT_PORT].map(|p| p.to_string())));
        fault_responder();
        run(Command::new("bash")
            .arg(peer_script("pki.sh"))
            .arg("start")
            .arg(&pki)
            .args([OCSP_PORT, CRL_PORT].map(|p| p.to_string())));
        // One trust store for both test CAs.
        let roots = [dir.join("ca.pem"), pki.join("ca/root.pem")]
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect::<String>();
        std::fs::write(dir.join("roots.pem"), roots).unwrap();
        let mut listeners = String::new();
        for (i, (_, pem, extra)) in PKI_PEERS.iter().enumerate() {
            listeners.push_str(&format!(
                "127.0.3.{}:{MX_PORT} inet n - n - - smtpd -o smtpd_tls_chain_files={} {extra}\n",
                i + 1,
                pki.join("peers").join(format!("{pem}.pem")).display()
            ));
        }
        std::fs::write(dir.join("pki-listeners.cf"), listeners).unwrap();
        run(Command::new("bash")
            .arg(peer_script("knot.sh"))
            .arg("start")
            .arg(dir.join("knot"))
            .arg(KNOT_PORT.to_string()));
        run(Command::new("bash")
            .arg(peer_script("postfix.sh"))
            .arg("dest")
            .arg(dir.join("mx"))
            .arg(MX_PORT.to_string())
            .env("ADDR", MX_ADDR)
            .env("CHAIN", dir.join("chain.pem"))
            .env("EXTRA_MASTER", dir.join("pki-listeners.cf")));
        for (domain, addr, policy) in POLICIES {
            let www = dir.join("www").join(domain);
            std::fs::create_dir_all(www.join(".well-known")).unwrap();
            std::fs::write(www.join(".well-known/mta-sts.txt"), policy).unwrap();
            // A server left by another checkout's run would answer in place of
            // ours with a certificate from another CA: say so, not "BadSignature".
            // (Ours from an earlier run was stopped above: give it a moment.)
            let start = Instant::now();
            while std::net::TcpStream::connect((*addr, HTTPS_PORT)).is_ok() {
                assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "{addr}:{HTTPS_PORT} is taken by another process before this world's \
                     MTA-STS server started (a peer left by another checkout? `ss -ltnp`)"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            // Outlives this process on purpose, like Knot and Postfix; stopped
            // through its pid file by `stop` and by the suite's end.
            #[allow(clippy::zombie_processes)]
            let child = Command::new("openssl")
                .args(["s_server", "-quiet", "-WWW", "-accept"])
                .arg(format!("{addr}:{HTTPS_PORT}"))
                .arg("-cert")
                .arg(dir.join("leaf.pem"))
                .arg("-key")
                .arg(dir.join("leaf.key"))
                .current_dir(&www)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("openssl s_server");
            std::fs::write(www.join("pid"), child.id().to_string()).unwrap();
            wait_listening(addr, HTTPS_PORT);
        }
        World { dir }
    })
}

impl World {
    /// The DANE world's CA and the PKI's root.
    pub fn roots(&self) -> PathBuf {
        self.dir.join("roots.pem")
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A file of the test PKI (tests/peers/pki.sh).
    pub fn pki(&self, path: &str) -> PathBuf {
        self.dir.join("pki").join(path)
    }

    pub fn anchor(&self) -> PathBuf {
        self.dir.join("knot/root.keys")
    }

    /// The REQUIRETLS peer, started on first use; its mail directory.
    pub fn requiretls_peer(&self) -> PathBuf {
        static STARTED: OnceLock<PathBuf> = OnceLock::new();
        STARTED
            .get_or_init(|| {
                let dir = self.dir.join("rtls");
                std::fs::create_dir_all(dir.join("mail")).unwrap();
                let chain = dir.join("chain.pem");
                let pems = ["leaf.pem", "ca.pem"]
                    .map(|f| std::fs::read_to_string(self.dir.join(f)).unwrap())
                    .concat();
                std::fs::write(&chain, pems).unwrap();
                let python = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                    .join("peers/mtas-root/venv/bin/python");
                // Outlives this process like the other peers; `stop` ends it.
                #[allow(clippy::zombie_processes)]
                let child = Command::new(python)
                    .arg(peer_script("requiretls_peer.py"))
                    .args([RTLS_ADDR, &MX_PORT.to_string()])
                    .arg(&chain)
                    .arg(self.dir.join("leaf.key"))
                    .arg(dir.join("mail"))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(dir.join("log")).unwrap())
                    .spawn()
                    .expect("the REQUIRETLS peer (run-tests.sh installs its venv)");
                std::fs::write(dir.join("pid"), child.id().to_string()).unwrap();
                wait_listening(RTLS_ADDR, MX_PORT);
                dir.join("mail")
            })
            .clone()
    }

    /// Messages the MX received for `rcpt`.
    pub fn mails(&self, rcpt: &str) -> Vec<Vec<u8>> {
        super::support::saved_mails(&self.dir.join("mx"), rcpt)
    }

    /// A gateway configuration routed by this world's DNS (no static routes).
    pub fn config(&self, dir: &Path, relay: u16, submission: u16) -> String {
        let base = super::support::base_config(dir, relay, submission);
        let base = base.split("[[route]]").next().unwrap_or_default();
        let base = base.replace(
            "idle_timeout = \"2s\"",
            &format!(
                "idle_timeout = \"0s\"\npkix_roots = \"{}\"\nconnect_timeout = \"5s\"",
                self.roots().display()
            ),
        );
        format!(
            "{base}\n[revocation]\ntimeout = \"2s\"\n\n[dns]\nservers = [\"127.0.0.1:{KNOT_PORT}\"]\ntrust_anchor = \"{}\"\n\n[mta_sts]\nhttps_port = {HTTPS_PORT}\nfetch_timeout = \"5s\"\nroots = \"{}\"\n",
            self.anchor().display(),
            self.ca().display()
        )
    }
}

/// The misbehaving OCSP responder (see `FAULT_PORT`), for this process's life.
fn fault_responder() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind(("127.0.0.1", FAULT_PORT))
        .expect("the fault responder's port is free");
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut request = [0u8; 4096];
                let n = conn.read(&mut request).unwrap_or(0);
                let head = String::from_utf8_lossy(&request[..n]).into_owned();
                if head.contains(" /slow ") {
                    std::thread::sleep(Duration::from_secs(30));
                }
                let body = b"this is not an OCSP response";
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/ocsp-response\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(body);
            });
        }
    });
}

/// Stops whatever a previous run left (the suite's end also does this).
pub fn stop(dir: &Path) {
    for (script, sub) in [("knot.sh", "knot"), ("postfix.sh", "mx"), ("pki.sh", "pki")] {
        let _ = Command::new("bash")
            .arg(peer_script(script))
            .arg("stop")
            .arg(dir.join(sub))
            .status();
    }
    for pid in [dir.join("rtls/pid")] {
        if let Ok(pid) = std::fs::read_to_string(pid) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
    for (domain, _, _) in POLICIES {
        if let Ok(pid) = std::fs::read_to_string(dir.join("www").join(domain).join("pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

/// Test CA, the MX certificate, and the TLSA data: (DANE-EE 3 1 1 of the
/// MX key, DANE-TA 2 0 1 of the CA certificate, 3 1 1 of an unrelated key).
fn certificates(dir: &Path) -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, PublicKeyData,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sealgate test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, &ca_key);

    let leaf_key = KeyPair::generate().unwrap();
    let names: Vec<String> = CERT_NAMES.iter().map(|s| s.to_string()).collect();
    let mut leaf_params = CertificateParams::new(names).unwrap();
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "mx.ee.dane.test");
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();

    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("leaf.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("leaf.key"), leaf_key.serialize_pem()).unwrap();
    // Postfix wants the key first, then the chain; the CA travels along for DANE-TA.
    std::fs::write(
        dir.join("chain.pem"),
        format!("{}{}{}", leaf_key.serialize_pem(), leaf.pem(), ca.pem()),
    )
    .unwrap();

    let spki_sha256 = |key: &KeyPair| hex(&Sha256::digest(key.subject_public_key_info()));
    let other = KeyPair::generate().unwrap();
    (
        spki_sha256(&leaf_key),
        hex(&Sha256::digest(ca.der())),
        spki_sha256(&other),
    )
}

fn zones(dir: &Path, ee: &str, ta: &str, other: &str) {
    let mx = MX_ADDR;
    let p = MX_PORT;
    let files: Vec<(&str, &str, String)> = vec![
        (".", "signed", String::new()),
        ("test.", "signed", String::new()),
        (
            "dane.test.",
            "signed",
            format!(
                "ee.dane.test. MX 10 mx.ee.dane.test.
mx.ee.dane.test. A {mx}
_{p}._tcp.mx.ee.dane.test. TLSA 3 1 1 {ee}
rtls.dane.test. MX 10 mx.rtls.dane.test.
mx.rtls.dane.test. A {RTLS_ADDR}
_{p}._tcp.mx.rtls.dane.test. TLSA 3 1 1 {ee}
ta.dane.test. MX 10 mx.ta.dane.test.
mx.ta.dane.test. A {mx}
_{p}._tcp.mx.ta.dane.test. TLSA 2 0 1 {ta}
mismatch.dane.test. MX 10 mx.mismatch.dane.test.
mx.mismatch.dane.test. A {mx}
_{p}._tcp.mx.mismatch.dane.test. TLSA 3 1 1 {other}
fallback.dane.test. MX 10 mx.mismatch.dane.test.
fallback.dane.test. MX 20 mx.ee.dane.test.
servfail.dane.test. MX 10 mx.servfail.dane.test.
mx.servfail.dane.test. A {mx}
cname.dane.test. MX 10 mx.cname.dane.test.
mx.cname.dane.test. CNAME mx.ee.dane.test.
taname.dane.test. MX 10 mx.taname.dane.test.
mx.taname.dane.test. A {mx}
_{p}._tcp.mx.taname.dane.test. TLSA 2 0 1 {ta}
unusable.dane.test. MX 10 mx.unusable.dane.test.
mx.unusable.dane.test. A {mx}
_{p}._tcp.mx.unusable.dane.test. TLSA 1 1 1 {ee}
_smtp._tls.ee.dane.test. TXT \"v=TLSRPTv1; rua=mailto:tlsrpt@ee.dane.test\"
_smtp._tls.mismatch.dane.test. TXT \"v=TLSRPTv1;rua=mailto:tlsrpt@ee.dane.test,https://reports.ee.dane.test:{REPORTS_PORT}/v1\"
reports.ee.dane.test. A {REPORTS_ADDR}
"
            ),
        ),
        ("_tcp.mx.servfail.dane.test.", "broken", String::new()),
        // Too many TLSA records for one UDP answer: resolvers must ask over TCP.
        ("big.test.", "signed", {
            let mut z = format!(
                "big.test. MX 10 mx.big.test.\nmx.big.test. A {mx}\n_{p}._tcp.mx.big.test. TLSA 3 1 1 {ee}\n"
            );
            for i in 0..120 {
                z.push_str(&format!(
                    "_{p}._tcp.mx.big.test. TLSA 3 1 1 {}\n",
                    hex(&Sha256::digest(format!("filler {i}")))
                ));
            }
            z
        }),
        (
            "unsigned.test.",
            "unsigned",
            format!(
                "unsigned.test. MX 10 mx.unsigned.test.
mx.unsigned.test. A {mx}
_{p}._tcp.mx.unsigned.test. TLSA 3 1 1 {other}
"
            ),
        ),
        (
            "bogus.test.",
            "bogus",
            format!("bogus.test. MX 10 mx.bogus.test.\nmx.bogus.test. A {mx}\n"),
        ),
        ("pki.test.", "signed", {
            let mut z = String::new();
            for (i, (name, _, _)) in PKI_PEERS.iter().enumerate() {
                z.push_str(&format!(
                    "{name}.pki.test. MX 10 mx.{name}.pki.test.\nmx.{name}.pki.test. A 127.0.3.{}\n",
                    i + 1
                ));
            }
            z
        }),
        ("sts.test.", "unsigned", {
            let mut z = String::new();
            for (domain, addr, _) in POLICIES {
                z.push_str(&format!(
                    "{domain}. MX 10 mx.{domain}.\nmx.{domain}. A {mx}\n_mta-sts.{domain}. TXT \"v=STSv1; id=1\"\nmta-sts.{domain}. A {addr}\n"
                ));
            }
            z
        }),
    ];
    let mut list = String::new();
    for (name, mode, records) in &files {
        list.push_str(&format!("{name} {mode}\n"));
        let file = if *name == "." {
            "root".to_string()
        } else {
            name.trim_end_matches('.').to_string()
        };
        std::fs::write(dir.join(format!("{file}.zone")), records).unwrap();
    }
    std::fs::write(dir.join("zones"), list).unwrap();
}

fn peer_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers")
        .join(name)
}

pub fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run a peer script");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wait_listening(addr: &str, port: u16) {
    let start = Instant::now();
    while std::net::TcpStream::connect((addr, port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{addr}:{port} did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
