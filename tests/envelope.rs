//! The password envelope against independent implementations: OpenSSL
//! re-derives the keys, checks the tag and decrypts what sealgate sealed;
//! headless Chromium (through chromedriver) opens the opener page with the
//! right password, a wrong one, and a modified file.

#[path = "support/browser.rs"]
mod browser;
mod support;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use browser::Session;
use serde_json::{Value, json};
use support::*;

/// A message with a plain and an HTML body, an attachment, and an image
/// that would call home to `tracker` if the opener let it.
fn message(tracker: u16) -> String {
    format!(
        "From: Alice Sender <alice@src.test>\r\n\
To: bob@dst.test\r\n\
Subject: Quarterly numbers\r\n\
Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=b1\r\n\
\r\n\
--b1\r\n\
Content-Type: multipart/alternative; boundary=b2\r\n\
\r\n\
--b2\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
The numbers are attached.\r\n\
--b2\r\n\
Content-Type: text/html; charset=utf-8\r\n\
\r\n\
<p>The <b>numbers</b> are attached.<img src=\"http://127.0.0.1:{tracker}/pixel.png\"></p>\r\n\
--b2--\r\n\
--b1\r\n\
Content-Type: text/csv; name=q3.csv\r\n\
Content-Disposition: attachment; filename=q3.csv\r\n\
\r\n\
quarter,revenue\r\n\
Q3,42\r\n\
--b1--\r\n"
    )
}

/// Seals `eml` with the CLI; returns the page and the password it printed.
fn seal(dir: &Path, eml: &str) -> (PathBuf, String) {
    seal_with(dir, eml, &[])
}

/// `seal` with more arguments to `sealgate envelope seal`.
fn seal_with(dir: &Path, eml: &str, extra: &[&std::ffi::OsStr]) -> (PathBuf, String) {
    let input = dir.join("in.eml");
    std::fs::write(&input, eml).unwrap();
    let page = dir.join("secure-message.html");
    let out = Command::new(bin())
        .args(["envelope", "seal"])
        .arg(&input)
        .arg("--out")
        .arg(&page)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let password = String::from_utf8(out.stdout).unwrap().trim().to_string();
    (page, password)
}

fn envelope_bytes(page: &Path) -> Vec<u8> {
    use base64::Engine;
    let html = std::fs::read_to_string(page).unwrap();
    let start = html.find("id=\"envelope\">").unwrap() + "id=\"envelope\">".len();
    let end = start + html[start..].find("</script>").unwrap();
    base64::engine::general_purpose::STANDARD
        .decode(html[start..end].trim())
        .unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn openssl(args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn openssl_derives_the_same_keys_checks_the_tag_and_decrypts() {
    let dir = tempfile::tempdir().unwrap();
    let (page, password) = seal(dir.path(), &message(9));
    let env = envelope_bytes(&page);
    assert_eq!(&env[..6], b"SGEV\x01\x01");
    let iterations = u32::from_be_bytes(env[6..10].try_into().unwrap());
    assert_eq!(iterations, 210_000);
    let (salt, iv) = (&env[10..26], &env[26..42]);
    let canonical = password.replace('-', "");
    let keys = openssl(
        &[
            "kdf",
            "-keylen",
            "64",
            "-kdfopt",
            "digest:SHA512",
            "-kdfopt",
            &format!("pass:{canonical}"),
            "-kdfopt",
            &format!("hexsalt:{}", hex(salt)),
            "-kdfopt",
            &format!("iter:{iterations}"),
            "PBKDF2",
        ],
        b"",
    );
    let keys = String::from_utf8(keys)
        .unwrap()
        .trim()
        .replace(':', "")
        .to_lowercase();
    assert_eq!(keys.len(), 128, "{keys}");
    let (aes_key, mac_key) = keys.split_at(64);

    let signed = &env[..env.len() - 32];
    let tag = openssl(
        &[
            "dgst",
            "-sha256",
            "-mac",
            "HMAC",
            "-macopt",
            &format!("hexkey:{mac_key}"),
            "-binary",
        ],
        signed,
    );
    assert_eq!(
        tag,
        &env[env.len() - 32..],
        "HMAC-SHA256 over header and ciphertext"
    );

    let plain = openssl(
        &["enc", "-d", "-aes-256-ctr", "-K", aes_key, "-iv", &hex(iv)],
        &env[42..env.len() - 32],
    );
    let content: Value = serde_json::from_slice(&plain).expect("the plaintext is JSON");
    assert_eq!(content["v"], 1);
    assert!(content["headers"].to_string().contains("Quarterly numbers"));
    assert_eq!(content["attachments"][0]["name"], "q3.csv");
}

#[test]
fn the_cli_opens_what_it_sealed_and_refuses_a_wrong_password() {
    let dir = tempfile::tempdir().unwrap();
    let eml = message(9);
    let (page, password) = seal(dir.path(), &eml);
    let open = |pw: &str| {
        let out_file = dir.path().join("out.eml");
        let mut child = Command::new(bin())
            .args(["envelope", "open"])
            .arg(&page)
            .arg("--out")
            .arg(&out_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        writeln!(child.stdin.take().unwrap(), "{pw}").unwrap();
        let out = child.wait_with_output().unwrap();
        (out, std::fs::read(&out_file).ok())
    };
    // Typed in capitals with spaces instead of dashes: still the password.
    let (out, written) = open(&password.to_uppercase().replace('-', " "));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        written.unwrap(),
        eml.as_bytes(),
        "the original, byte for byte"
    );
    std::fs::remove_file(dir.path().join("out.eml")).unwrap();
    let (out, written) = open("abcd-efgh-jkmn-pqrs-tuvw-xyz2");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong password"));
    assert!(written.is_none(), "nothing is written on a wrong password");
}

/// Waits until the opener page shows either the message or the error.
fn outcome(s: &Session) -> Value {
    wait_for(Duration::from_secs(30), "the opener to finish", || {
        let v = s.script(
            "return {message: !document.getElementById('message').hidden,
                     error: !document.getElementById('error').hidden,
                     text: document.body.innerText,
                     loaded: window.__htmlLoaded === true};",
        );
        (v["message"] == true || v["error"] == true).then_some(v)
    })
}

/// Counts connections to a port the sealed HTML points an image at.
fn tracker() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
        }
    });
    (port, hits)
}

#[test]
fn chromium_opens_the_envelope_with_the_right_password_only() {
    let dir = tempfile::tempdir().unwrap();
    let (port, hits) = tracker();
    let (page, password) = seal(dir.path(), &message(port));
    let s = Session::new();

    // A wrong password: the error, and nothing of the message.
    s.goto_file(&page);
    s.type_into("#password", "abcd-efgh-jkmn-pqrs-tuvw-xyz2");
    s.click("#open");
    let wrong = outcome(&s);
    assert_eq!(wrong["error"], true, "{wrong}");
    assert_eq!(wrong["message"], false);
    let text = wrong["text"].as_str().unwrap();
    assert!(text.contains("Wrong password"), "{text}");
    assert!(
        !text.contains("Quarterly numbers") && !text.contains("q3.csv"),
        "{text}"
    );

    // The right one, typed the way a reader might.
    s.goto_file(&page);
    s.script(
        "window.__htmlLoaded = false;
         document.getElementById('html').addEventListener('load', () => window.__htmlLoaded = true);
         return null;",
    );
    s.type_into("#password", &password.replace('-', " "));
    s.click("#open");
    let right = outcome(&s);
    assert_eq!(right["message"], true, "{right}");
    let text = right["text"].as_str().unwrap();
    for expected in [
        "Quarterly numbers",
        "Alice Sender <alice@src.test>",
        "The numbers are attached.",
        "q3.csv (text/csv)",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} not shown in:\n{text}"
        );
    }
    // The HTML body rendered in its sandbox without calling home.
    wait_for(Duration::from_secs(10), "the HTML body to load", || {
        (s.script("return window.__htmlLoaded === true;") == true).then_some(())
    });
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the opener made a network request"
    );
    let links = s.script(
        "return Array.from(document.querySelectorAll('#attachments a')).map(a => [a.download, a.href.slice(0, 5)]);",
    );
    assert_eq!(links, json!([["q3.csv", "blob:"]]));
}

#[test]
fn chromium_shows_the_error_for_a_modified_file() {
    let dir = tempfile::tempdir().unwrap();
    let (page, password) = seal(dir.path(), &message(9));
    // Change one base64 symbol in the middle of the envelope.
    let html = std::fs::read_to_string(&page).unwrap();
    let start = html.find("id=\"envelope\">").unwrap() + "id=\"envelope\">".len();
    let at = start + 120;
    let mut bytes = html.into_bytes();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    let tampered = dir.path().join("tampered.html");
    std::fs::write(&tampered, bytes).unwrap();

    let s = Session::new();
    s.goto_file(&tampered);
    s.type_into("#password", &password);
    s.click("#open");
    let v = outcome(&s);
    assert_eq!(v["error"], true, "{v}");
    assert!(!v["text"].as_str().unwrap().contains("Quarterly numbers"));
}

#[test]
fn the_cli_writes_a_notification_mail_without_the_original_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let mail = dir.path().join("notification.eml");
    let (_, password) = seal_with(
        dir.path(),
        &message(9),
        &["--mail".as_ref(), mail.as_os_str()],
    );
    let password = password.replace('-', "");
    let text = std::fs::read_to_string(&mail).unwrap();
    assert!(
        text.contains("Subject: Secure message from alice@src.test"),
        "{text}"
    );
    assert!(text.contains("To: <bob@dst.test>"));
    assert!(text.contains("secure-message.html"));
    for secret in [
        "Quarterly",
        "numbers are attached",
        "quarter,revenue",
        &password,
    ] {
        assert!(!text.contains(secret), "{secret:?} in clear");
    }
}
