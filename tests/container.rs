//! The container image as an operator meets it: Containerfile built with
//! podman from the Debian package the suite built (run-tests.sh names it
//! in `SEALGATE_DEB`), started with its own configuration and a named
//! volume, ports published on loopback. It greets on SMTP and relays for
//! nobody, its HEALTHCHECK passes, it runs as the `sealgate` user, keeps
//! its state in the volume, and stops on SIGTERM.
//!
//! The base image is made here, by debootstrap from Debian's mirror, and
//! tagged as the one Containerfile names: these machines reach package
//! registries, not container registries. The package stands in for the
//! build stage (`PACKAGE`), which would compile the whole crate again.
//! Where no container can run (no podman, or a kernel that refuses it),
//! the test says so and ends.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use support::*;

const BASE: &str = "docker.io/library/debian:bookworm-slim";
const IMAGE: &str = "localhost/sealgate-test:latest";

/// podman with what these machines need: runc (crun refuses their hybrid
/// cgroups) and limits no higher than the engine may set (it lacks
/// CAP_SYS_RESOURCE here).
fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args(["--runtime", "runc"]);
    c
}

const LIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=16384:16384",
    "--ulimit",
    "nproc=16384:16384",
];

fn text(out: &Output) -> String {
    output_text(out)
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Makes the base image from a minimal Debian 12, once per machine.
fn base_image() -> Result<(), String> {
    if podman()
        .args(["image", "exists", BASE])
        .status()
        .is_ok_and(|s| s.success())
    {
        return Ok(());
    }
    let root = peers_dir().join("bookworm-minbase");
    let tar = peers_dir().join("bookworm-minbase.tar");
    if !tar.exists() {
        let _ = std::fs::remove_dir_all(&root);
        let out = Command::new("debootstrap")
            .args(["--variant=minbase", "bookworm"])
            .arg(&root)
            .arg("http://deb.debian.org/debian")
            .output()
            .map_err(|e| format!("debootstrap: {e}"))?;
        if !out.status.success() {
            return Err(format!("debootstrap failed:\n{}", text(&out)));
        }
        let out = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .args(["-cf"])
            .arg(&tar)
            .arg(".")
            .output()
            .map_err(|e| format!("tar: {e}"))?;
        if !out.status.success() {
            return Err(format!("tar failed:\n{}", text(&out)));
        }
        let _ = std::fs::remove_dir_all(&root);
    }
    let out = podman()
        .arg("import")
        .arg(&tar)
        .arg(BASE)
        .output()
        .map_err(|e| format!("podman import: {e}"))?;
    if !out.status.success() {
        return Err(format!("podman import failed:\n{}", text(&out)));
    }
    Ok(())
}

/// Why no container can run here, if none can.
fn engine() -> Result<(), String> {
    let version = Command::new("podman")
        .arg("--version")
        .output()
        .map_err(|e| format!("no podman: {e}"))?;
    if !version.status.success() {
        return Err("podman --version failed".into());
    }
    base_image()?;
    let out = podman()
        .args(["run", "--rm"])
        .args(LIMITS)
        .args([BASE, "true"])
        .output()
        .map_err(|e| format!("podman run: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "podman cannot run a container here:\n{}",
            text(&out)
        ));
    }
    Ok(())
}

/// The build context: what Containerfile copies, with the package.
fn context(dir: &Path, deb: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in [
        "Containerfile",
        ".containerignore",
        "packaging/container.toml",
    ] {
        let to = dir.join(file);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(root.join(file), &to).unwrap();
    }
    std::fs::create_dir_all(dir.join("pkg")).unwrap();
    let name = deb.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::copy(deb, dir.join("pkg").join(&name)).unwrap();
    format!("pkg/{name}")
}

/// Removes what the test made, however it ends.
struct Cleanup {
    name: String,
    volume: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = podman().args(["rm", "-f", "-t", "0", &self.name]).output();
        let _ = podman().args(["volume", "rm", "-f", &self.volume]).output();
    }
}

#[test]
fn the_image_builds_from_the_package_runs_as_sealgate_and_is_healthy() {
    if let Err(why) = engine() {
        eprintln!("SKIPPED: no container engine can run here: {why}");
        return;
    }
    let deb = debian_package();
    let dir = tempfile::tempdir().unwrap();
    let package = context(dir.path(), &deb);
    ok(podman()
        // Docker's image format: OCI's has no HEALTHCHECK.
        .args(["build", "--format", "docker", "--network", "host"])
        .args(["-f", "Containerfile", "-t", IMAGE])
        .args(LIMITS)
        .args(["--build-arg", &format!("BUILDER={BASE}")])
        .args(["--build-arg", &format!("PACKAGE={package}")])
        .arg(dir.path()));

    let name = format!("sealgate-test-{}", std::process::id());
    let volume = format!("{name}-data");
    let _cleanup = Cleanup {
        name: name.clone(),
        volume: volume.clone(),
    };
    let (smtp, console) = (free_port(), free_port());
    ok(podman()
        .args(["run", "-d", "--name", &name])
        .args(LIMITS)
        .args(["-p", &format!("127.0.0.1:{smtp}:25")])
        .args(["-p", &format!("127.0.0.1:{console}:8443")])
        .args(["-v", &format!("{volume}:/var/lib/sealgate")])
        .arg(IMAGE));

    let banner = wait_for(Duration::from_secs(60), "the SMTP greeting", || {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", smtp)).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut buf = [0u8; 512];
        let n = std::io::Read::read(&mut c, &mut buf).ok()?;
        let line = String::from_utf8_lossy(&buf[..n]).into_owned();
        line.starts_with("220").then_some(line)
    });
    assert!(banner.contains("ESMTP"), "{banner}");
    // The image's configuration relays for nobody.
    let mut c = Client::connect(smtp);
    c.cmd("EHLO outside.test");
    c.cmd("MAIL FROM:<a@outside.test>");
    let rcpt = c.cmd("RCPT TO:<b@elsewhere.test>");
    assert!(rcpt.starts_with("554") || rcpt.starts_with("550"), "{rcpt}");
    c.cmd("QUIT");

    // Its own HEALTHCHECK: the console's /healthz from inside.
    wait_for(Duration::from_secs(60), "a healthy health check", || {
        podman()
            .args(["healthcheck", "run", &name])
            .status()
            .ok()?
            .success()
            .then_some(())
    });
    let user = ok(podman().args(["exec", &name, "id", "-un"]));
    assert_eq!(user.trim(), "sealgate");
    let state = ok(podman().args(["exec", &name, "ls", "/var/lib/sealgate"]));
    assert!(state.lines().any(|l| l == "sealgate.db"), "{state}");

    // SIGTERM: a clean stop well within podman's 10 s.
    ok(podman().args(["stop", "-t", "30", &name]));
    let exit = ok(podman().args(["inspect", "-f", "{{.State.ExitCode}}", &name]));
    assert_eq!(
        exit.trim(),
        "0",
        "{}",
        text(&podman().args(["logs", &name]).output().unwrap())
    );
    let logs = text(&podman().args(["logs", &name]).output().unwrap());
    assert!(logs.contains("sealgate ready"), "{logs}");
    // The state outlives the container: a new one on the same volume has it.
    let kept = ok(podman()
        .args(["run", "--rm"])
        .args(LIMITS)
        .args(["-v", &format!("{volume}:/var/lib/sealgate")])
        .args(["--entrypoint", "ls", IMAGE, "/var/lib/sealgate"]));
    assert!(kept.lines().any(|l| l == "sealgate.db"), "{kept}");
}
