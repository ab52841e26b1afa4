//! The guides in docs/ tried end to end on loopback: the configuration each
//! shows (the TOML block marked `# guide: NAME`) is started as it is
//! written, with only the machine-specific parts replaced (listen
//! addresses, file paths, the outside world routed to the test Postfix),
//! and used the way the guide says. The auditors' verification script is
//! run on a real export.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(30);

fn doc(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("docs")
            .join(name),
    )
    .unwrap()
}

/// The fenced block of `lang` in docs/`file` that starts with `marker`.
fn block(file: &str, lang: &str, marker: &str) -> String {
    let text = doc(file);
    let fence = format!("```{lang}\n");
    let mut blocks = text.split(&fence).skip(1);
    blocks
        .find_map(|b| {
            let body = b.split("\n```").next()?;
            body.starts_with(marker).then(|| body.to_string())
        })
        .unwrap_or_else(|| panic!("docs/{file} has no {lang} block starting with {marker}"))
}

/// Machine-specific parts of a guide's configuration, replaced for loopback.
struct Site {
    etc: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        let etc = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(etc.path().join("tls")).unwrap();
        self_signed(
            "gw.example.org",
            &etc.path().join("tls/fullchain.pem"),
            &etc.path().join("tls/privkey.pem"),
        );
        std::fs::create_dir_all(etc.path().join("policies")).unwrap();
        std::fs::write(
            etc.path().join("policies/default.toml"),
            include_str!("../policies/default.toml"),
        )
        .unwrap();
        Site { etc }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.etc.path().join(rel)
    }

    /// The guide's text for this machine: its own addresses and paths, and
    /// every other domain routed to the test Postfix (which has no trusted
    /// certificate: the test policy lets normal mail to it go encrypted).
    fn localize(&self, text: &str, dir: &Path, relay: u16, sub: u16) -> String {
        let etc = format!("{}/", self.etc.path().display());
        let routed = text
            .replace("0.0.0.0:25", &format!("127.0.0.1:{relay}"))
            .replace("0.0.0.0:587", &format!("127.0.0.1:{sub}"))
            .replace("/var/lib/sealgate", &dir.display().to_string())
            .replace("/etc/sealgate/", &etc)
            .replace(
                "/etc/ssl/certs/ca-certificates.crt",
                &self.path("test-ca.pem").display().to_string(),
            )
            .replace("exchange.example.org:25", &format!("127.0.0.1:{DEST_PORT}"));
        format!(
            "{routed}\n[outbound]\nport = {DEST_PORT}\n\n[[route]]\ndomain = \"*\"\nnext_hop = \"127.0.0.1:{DEST_PORT}\"\n"
        )
    }
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA and a client certificate from it that names
/// `mail.protection.outlook.com`, as Microsoft 365 presents.
fn microsoft_certificate(dir: &Path) -> (String, String) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-days",
        "2",
        "-subj",
        "/CN=Guide Test CA",
        "-keyout",
        "test-ca.key",
        "-out",
        "test-ca.pem",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&ca, dir);
    let mut req = vec!["req"];
    req.extend(ec);
    req.extend([
        "-subj",
        "/CN=mail.protection.outlook.com",
        "-keyout",
        "m365.key",
        "-out",
        "m365.csr",
    ]);
    openssl(&req, dir);
    std::fs::write(
        dir.join("m365.ext"),
        "subjectAltName=DNS:mail.protection.outlook.com\nextendedKeyUsage=clientAuth,serverAuth\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "m365.csr",
            "-CA",
            "test-ca.pem",
            "-CAkey",
            "test-ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "m365.ext",
            "-out",
            "m365.pem",
        ],
        dir,
    );
    (
        dir.join("m365.pem").display().to_string(),
        dir.join("m365.key").display().to_string(),
    )
}

/// The test peer (Postfix) has no certificate sealgate trusts: a policy
/// file lets normal mail to it go encrypted, as the default does.
fn with_test_policy(site: &Site) {
    std::fs::write(
        site.path("policies/test.toml"),
        plaintext_exception("*.test"),
    )
    .unwrap();
}

#[test]
fn microsoft365_guide_relays_for_its_tenant_only() {
    let site = Site::new();
    with_test_policy(&site);
    let (cert, key) = microsoft_certificate(site.etc.path());
    let config = block("microsoft365.md", "toml", "# guide: microsoft365");
    let tenant_id = config
        .lines()
        .find_map(|l| l.strip_prefix("m365_tenant_id = "))
        .unwrap()
        .trim_matches('"')
        .to_string();
    let gw = Gateway::start_with(|dir, relay, sub| site.localize(&config, dir, relay, sub));
    let check = gw.cli(&["config", "check"]);
    assert!(check.status.success(), "{check:?}");

    let server = format!("127.0.0.1:{}", gw.relay);
    let send = |rcpt: &str, tenant: &str, with_cert: bool| {
        let header = format!("X-MS-Exchange-CrossTenant-Id: {tenant}");
        let mut args = vec![
            "--server",
            &server,
            "--from",
            "anna@example.org",
            "--to",
            rcpt,
            "--tls",
            "--add-header",
            &header,
        ];
        if with_cert {
            args.extend(["--tls-cert", &cert, "--tls-key", &key]);
        }
        swaks(&args)
    };
    let rcpt = format!("{}@m365-guide.test", unique("ok"));
    let (ok, out) = send(&rcpt, &tenant_id, true);
    assert!(ok, "the tenant's own mail relays:\n{out}");
    dest().wait_mails(&rcpt, 1, T);

    let (ok, out) = send(
        &format!("{}@m365-guide.test", unique("other")),
        "11111111-2222-4333-8444-555555555555",
        true,
    );
    assert!(!ok && out.contains("554 5.7.1"), "another tenant:\n{out}");
    assert!(out.contains("Microsoft 365 tenant"), "{out}");
    let (ok, out) = send(
        &format!("{}@m365-guide.test", unique("nocert")),
        &tenant_id,
        false,
    );
    assert!(!ok && out.contains("554 5.7.1"), "no certificate:\n{out}");
}

#[test]
fn exchange_guide_relays_by_address_routes_home_and_takes_auth() {
    let site = Site::new();
    with_test_policy(&site);
    let config = block("exchange.md", "toml", "# guide: exchange")
        // This machine's "Exchange servers", and an organisation domain
        // the test Postfix keeps (it saves *.test).
        .replace("10.20.0.0/24", "127.0.0.0/8")
        .replace("domain = \"example.org\"", "domain = \"example-org.test\"");
    std::fs::write(site.path("users"), format!("exchange:{}\n", users_hash())).unwrap();
    let gw = Gateway::start_with(|dir, relay, sub| site.localize(&config, dir, relay, sub));

    // By address, to the outside.
    let out_rcpt = format!("{}@outside.test", unique("ex"));
    let mut c = Client::connect(gw.relay);
    c.cmd("EHLO exchange.example.org");
    let reply = c.message(
        "anna@example.org",
        &[&out_rcpt],
        message("exchange guide", "out\r\n").as_bytes(),
    );
    assert!(reply.starts_with("250"), "{reply}");
    dest().wait_mails(&out_rcpt, 1, T);
    // Home: the [[route]] for the organisation's own domain.
    let home = format!("{}@example-org.test", unique("home"));
    let reply = c.message(
        "anna@example.org",
        &[&home],
        message("exchange guide", "home\r\n").as_bytes(),
    );
    assert!(reply.starts_with("250"), "{reply}");
    dest().wait_mails(&home, 1, T);

    // AUTH on 587 after STARTTLS, as the connector's basic authentication.
    let auth_rcpt = format!("{}@outside.test", unique("auth"));
    let (ok, out) = swaks(&[
        "--server",
        &format!("127.0.0.1:{}", gw.submission),
        "--from",
        "anna@example.org",
        "--to",
        &auth_rcpt,
        "--tls",
        "--auth",
        "PLAIN",
        "--auth-user",
        "exchange",
        "--auth-password",
        PASSWORD,
    ]);
    assert!(ok, "{out}");
    dest().wait_mails(&auth_rcpt, 1, T);
}

#[test]
fn msp_guide_tenant_relays_signs_and_its_export_verifies_with_the_auditors_script() {
    let site = Site::new();
    with_test_policy(&site);
    let fragment = block("msp.md", "toml", "# guide: msp")
        // This machine's "practice network".
        .replace("192.0.2.0/28", "127.0.0.0/8");
    std::fs::create_dir_all(site.path("tenants/dental-practice")).unwrap();
    std::fs::write(
        site.path("tenants/dental-practice/contacts.csv"),
        "someone@lab.example,+49 170 0000000\n",
    )
    .unwrap();
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("practice.pem");
    let out = Command::new(bin())
        .args([
            "dkim",
            "keygen",
            "practice.example",
            "--selector",
            "sg2026",
            "--out",
        ])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let fragment = fragment.replace(
        "/var/lib/sealgate/dkim/practice.example.sg2026.pem",
        &key.display().to_string(),
    );
    let gw = Gateway::start_with(|dir, relay, sub| {
        // The rest of a gateway around the guide's tenant.
        let base = "hostname = \"gw.test\"\ndata_dir = \"/var/lib/sealgate\"\ndefault_tenant = \"dental-practice\"\n\
             [[listener]]\naddress = \"0.0.0.0:25\"\nmode = \"relay\"\n\
             [[listener]]\naddress = \"0.0.0.0:587\"\nmode = \"submission\"\n\
             [policy]\ndir = \"/etc/sealgate/policies\"\n";
        site.localize(&format!("{base}{fragment}"), dir, relay, sub)
    });
    let rcpt = format!("{}@msp-guide.test", unique("p"));
    let mail = format!(
        "From: Practice <info@practice.example>\r\nTo: <{rcpt}>\r\nSubject: Befund\r\n\r\nSiehe Anhang.\r\n"
    );
    relay_one(gw.relay, "info@practice.example", &[&rcpt], mail.as_bytes());
    let got = String::from_utf8(dest().wait_mails(&rcpt, 1, T).remove(0)).unwrap();
    assert!(
        got.contains("DKIM-Signature:")
            && got.contains("d=practice.example")
            && got.contains("s=sg2026"),
        "{got}"
    );
    let line = wait_delivery_line(&gw, &rcpt, "sent");
    assert_eq!(line["tenant"], "dental-practice");

    // docs/auditors.md: the Python check of a JSON export, as printed there.
    let export = gw.cli(&[
        "report",
        "export",
        "--format",
        "json",
        "--tenant",
        "dental-practice",
    ]);
    assert!(export.status.success(), "{export:?}");
    let script = keys.path().join("check.py");
    std::fs::write(&script, block("auditors.md", "python", "import hashlib")).unwrap();
    let jsonl = keys.path().join("export.jsonl");
    std::fs::write(&jsonl, &export.stdout).unwrap();
    let run = |file: &Path| {
        Command::new("python3")
            .arg(&script)
            .arg(file)
            .output()
            .unwrap()
    };
    let ok = run(&jsonl);
    assert!(
        ok.status.success() && String::from_utf8_lossy(&ok.stdout).contains("every record matches"),
        "{ok:?}\n{}",
        String::from_utf8_lossy(&export.stdout)
    );
    // One edited value in one record: the script must say so.
    let text = String::from_utf8(export.stdout).unwrap();
    assert!(text.contains("\"info@practice.example\""), "{text}");
    let tampered = keys.path().join("tampered.jsonl");
    std::fs::write(
        &tampered,
        text.replacen("\"info@practice.example\"", "\"ceo@practice.example\"", 1),
    )
    .unwrap();
    let bad = run(&tampered);
    assert!(
        !bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("does not match"),
        "{bad:?}"
    );
}
