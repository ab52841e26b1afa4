//! Nothing readable at rest: a queued message's content is not in any file
//! the gateway writes, the keys rotate while mail is queued, and a gateway
//! whose key file is missing refuses to start instead of losing the queue.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// Every file under `dir` (recursively) that contains `marker`.
fn files_containing(dir: &Path, marker: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_containing(&path, marker));
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(marker.len()).any(|w| w == marker)
        {
            found.push(path.display().to_string());
        }
    }
    found
}

/// `sealgate serve` that must exit by itself; its status and output.
fn serve_must_exit(config: &Path) -> (bool, String) {
    let mut child = Command::new(bin())
        .args(["--config", config.to_str().unwrap(), "serve"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("sealgate started without its spool key");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (out.status.success(), output_text(&out))
}

/// `sealgate queue show ID` run by hand, with the key as a systemd credential in `creds`.
fn show_with(gw: &Gateway, id: &str, creds: &str) -> std::process::Output {
    Command::new(bin())
        .args(["--config", gw.config.to_str().unwrap(), "queue", "show", id])
        .env("CREDENTIALS_DIRECTORY", creds)
        .output()
        .unwrap()
}

fn queued_sender(gw: &Gateway, id: &str) -> String {
    let out = gw.cli(&["queue", "show", id, "--json"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["envelope"]["sender"].as_str().unwrap().to_string()
}

#[test]
fn a_queued_message_is_nowhere_readable_and_survives_key_rotation_and_a_lost_key() {
    let mut gw = Gateway::start("");
    let marker = unique("marker-body");
    let id = relay_one(
        gw.relay,
        "sender@client.test",
        &["rcpt@unreachable.test"],
        // In the body only: the transaction log keeps the Message-ID for auditors.
        message(&unique("plans"), &format!("The {marker} plans.\r\n")).as_bytes(),
    );
    wait_for(Duration::from_secs(20), "a deferral", || {
        gw.queue()
            .iter()
            .any(|m| m["last_reply"].is_string())
            .then_some(())
    });
    let key = gw.dir.path().join("spool.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The database, its WAL, the journals, the gateway's own log: none.
    assert_eq!(
        files_containing(gw.dir.path(), marker.as_bytes()),
        Vec::<String>::new()
    );
    assert_eq!(queued_sender(&gw, &id), "sender@client.test");

    // Rotation through the running gateway, key-encryption key included.
    let old_key = std::fs::read(&key).unwrap();
    let out = gw.cli(&["spool", "rekey", "--new-kek"]);
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 message(s) encrypted again"), "{text}");
    assert_ne!(std::fs::read(&key).unwrap(), old_key);
    assert!(!gw.dir.path().join("spool.key.new").exists());
    assert_eq!(queued_sender(&gw, &id), "sender@client.test");

    // Stopped, the key file gone: no start, a clear reason, the queue kept.
    gw.signal_term();
    assert!(gw.wait_exit());
    let kept = gw.dir.path().join("kept.key");
    std::fs::rename(&key, &kept).unwrap();
    let (ok, text) = serve_must_exit(&gw.config);
    assert!(!ok);
    assert!(
        text.contains("spool.key: the spool key file is missing")
            && text.contains("refusing to start"),
        "{text}"
    );
    assert!(!key.exists(), "no new key may replace a lost one");
    let out = gw.cli(&["queue", "list"]);
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("key file is missing"),
        "{}",
        output_text(&out)
    );

    // The old key (from before the rotation) opens nothing either.
    std::fs::write(&key, &old_key).unwrap();
    let (ok, text) = serve_must_exit(&gw.config);
    assert!(!ok);
    assert!(text.contains("does not open the spool"), "{text}");

    // The right key back: the message is still there, and goes on.
    std::fs::rename(&kept, &key).unwrap();
    gw.restart();
    assert_eq!(queued_sender(&gw, &id), "sender@client.test");
    assert_eq!(
        files_containing(gw.dir.path(), marker.as_bytes()),
        Vec::<String>::new()
    );
}

#[test]
fn a_key_kept_as_a_systemd_credential_is_used_and_rotated_to_a_new_file() {
    let creds = tempfile::tempdir().unwrap();
    let credential = creds.path().join("spool.key");
    std::fs::write(&credential, format!("{}\n", "ab".repeat(32))).unwrap();
    let creds_dir = creds.path().to_str().unwrap().to_string();
    let gw = Gateway::start_with_env(&[("CREDENTIALS_DIRECTORY", &creds_dir)], |dir, r, s| {
        base_config(dir, r, s)
    });
    let id = relay_one(
        gw.relay,
        "cred@client.test",
        &["rcpt@unreachable.test"],
        message("credential", "held\r\n").as_bytes(),
    );
    assert!(!gw.dir.path().join("spool.key").exists());
    // The CLI finds the credential the same way, from the environment.
    let show = show_with(&gw, &id, &creds_dir);
    assert!(
        output_text(&show).contains("cred@client.test"),
        "{}",
        output_text(&show)
    );
    let next = gw.dir.path().join("next.key");
    let out = gw.cli(&["spool", "rekey", "--kek-out", next.to_str().unwrap()]);
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("new key file"), "{text}");
    // The credential is left alone; only the new file opens the spool now.
    assert_eq!(
        std::fs::read_to_string(&credential).unwrap(),
        format!("{}\n", "ab".repeat(32))
    );
    let old = show_with(&gw, &id, &creds_dir);
    assert!(!old.status.success());
    assert!(
        output_text(&old).contains("does not open the spool"),
        "{}",
        output_text(&old)
    );
    // As systemd-creds would install the new one.
    std::fs::rename(&next, creds.path().join("spool.key")).unwrap();
    let show = show_with(&gw, &id, &creds_dir);
    assert!(
        output_text(&show).contains("cred@client.test"),
        "{}",
        output_text(&show)
    );
}
