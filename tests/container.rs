//! The container image as an operator meets it: Containerfile built with
//! podman from the Debian package the suite built (run-tests.sh names it
//! in `SEALGATE_DEB`), started with its own configuration and a named
//! volume, ports published on loopback. It greets on SMTP and relays for
//! nobody, its HEALTHCHECK passes, it runs as the `sealgate` user, keeps
//! its state in the volume, and stops on SIGTERM. deploy/compose.yaml,
//! started by podman-compose with that image, runs two nodes on one
//! PostgreSQL that share one queue.
//!
//! The base image is made here, by debootstrap from Debian's mirror, and
//! tagged as the one Containerfile names: these machines reach package
//! registries, not container registries. The package stands in for the
//! build stage (`PACKAGE`), which would compile the whole crate again,
//! and Debian's PostgreSQL (tests/peers/postgres-image) for postgres:15.
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

/// Builds the image from the package, once for every test here.
fn built_image() {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
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
    });
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
    built_image();

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

/// The PostgreSQL that deploy/compose.yaml runs, from Debian's package
/// (tests/peers/postgres-image): no registry to pull postgres:15 from.
const POSTGRES_IMAGE: &str = "localhost/sealgate-test-postgres:latest";

/// Takes down what a compose project made, however the test ends.
struct Project {
    name: String,
    dir: std::path::PathBuf,
}

impl Project {
    fn compose(&self) -> Command {
        let mut c = Command::new("podman-compose");
        // podman-compose runs plain `podman`: runc and the limits come
        // from this file instead of the command line.
        c.env("CONTAINERS_CONF", self.dir.join("containers.conf"));
        c.args(["-p", &self.name, "-f"])
            .arg(self.dir.join("compose.yaml"));
        c
    }

    fn exec(&self, service: &str, args: &[&str]) -> String {
        let container = format!("{}_{service}_1", self.name);
        ok(podman()
            .args([
                "exec",
                &container,
                "sealgate",
                "--config",
                "/etc/sealgate/sealgate.toml",
            ])
            .args(args))
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.compose().args(["down", "-v", "-t", "5"]).output();
        let _ = podman()
            .args(["network", "rm", "-f", &format!("{}_default", self.name)])
            .output();
    }
}

#[test]
fn compose_runs_two_nodes_on_one_postgresql_that_share_the_queue() {
    if let Err(why) = engine() {
        eprintln!("SKIPPED: no container engine can run here: {why}");
        return;
    }
    let compose_version = Command::new("podman-compose").arg("version").output();
    if !compose_version.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: no podman-compose here (run-tests.sh installs it)");
        return;
    }
    built_image();
    ok(podman().args(["tag", IMAGE, "localhost/sealgate:latest"]));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    ok(podman()
        .args(["build", "--network", "host", "-t", POSTGRES_IMAGE])
        .args(LIMITS)
        .args(["--build-arg", &format!("BASE={BASE}")])
        .arg(root.join("tests/peers/postgres-image")));

    // The files deploy/compose.yaml's comment tells the operator to make.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        root.join("deploy/compose.yaml"),
        dir.path().join("compose.yaml"),
    )
    .unwrap();
    let key: String = (0..32)
        .map(|i| format!("{:02x}", (i * 37 + 11) % 256))
        .collect();
    std::fs::write(dir.path().join("spool.key"), format!("{key}\n")).unwrap();
    // Relaying for the engine's own network (connections to published
    // ports arrive from its gateway), to a next hop that refuses: the
    // messages stay queued, deferred.
    let config = std::fs::read_to_string(root.join("deploy/cluster.toml")).unwrap();
    std::fs::write(
        dir.path().join("sealgate.toml"),
        format!(
            "{config}networks = [\"10.0.0.0/8\"]\n\n\
             [[route]]\ndomain = \"elsewhere.test\"\nnext_hop = \"127.0.0.1:9\"\n"
        ),
    )
    .unwrap();
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    std::fs::write(
        dir.path().join(".env"),
        format!(
            "PGPASSWORD=test{pid}\nPOSTGRES_IMAGE={POSTGRES_IMAGE}\nGW1_SMTP={}\nGW1_SUBMISSION={}\nGW2_SMTP={}\nGW2_SUBMISSION={}\n",
            ports[0],
            ports[1],
            ports[2],
            ports[3],
            pid = std::process::id()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("containers.conf"),
        "[containers]\ndefault_ulimits = [\"nofile=16384:16384\", \"nproc=16384:16384\"]\n\
         [engine]\nruntime = \"runc\"\n",
    )
    .unwrap();
    let project = Project {
        name: format!("sgcompose{}", std::process::id()),
        dir: dir.path().to_path_buf(),
    };
    ok(project.compose().args(["up", "-d", "--no-build"]));

    // Each node greets once it has its database, and takes a message.
    let mut ids = Vec::new();
    for (node, port) in [("gw1", ports[0]), ("gw2", ports[2])] {
        wait_for(
            Duration::from_secs(120),
            &format!("{node}'s greeting"),
            || {
                let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
                c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
                let mut buf = [0u8; 512];
                let n = std::io::Read::read(&mut c, &mut buf).ok()?;
                buf[..n].starts_with(b"220").then_some(())
            },
        );
        let mut c = Client::connect(port);
        c.cmd("EHLO exchange.test");
        c.cmd("MAIL FROM:<a@customer.test>");
        let rcpt = c.cmd("RCPT TO:<b@elsewhere.test>");
        assert!(rcpt.starts_with("250"), "{node}: {rcpt}");
        c.cmd("DATA");
        let queued = c.cmd(&format!("Subject: via {node}\r\n\r\nhello\r\n."));
        assert!(queued.starts_with("250"), "{node}: {queued}");
        let id = queued.rsplit(' ').next().unwrap().trim().to_string();
        ids.push(id);
        c.cmd("QUIT");
    }
    // One queue: each node lists the message the other accepted.
    for node in ["gw1", "gw2"] {
        let list = project.exec(node, &["queue", "list"]);
        for id in &ids {
            assert!(list.contains(id.as_str()), "{node} lacks {id}:\n{list}");
        }
    }
    let status = project.exec("gw1", &["cluster", "status"]);
    for node in ["gw1", "gw2"] {
        let line = status
            .lines()
            .find(|l| l.split_whitespace().next() == Some(node))
            .unwrap_or_else(|| panic!("{node} not in:\n{status}"));
        assert!(line.contains("alive"), "{line}");
    }
}
