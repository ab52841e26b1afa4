//! The Debian package as an administrator meets it: built by
//! packaging/build-deb.sh, checked by lintian, installed on this machine,
//! started with the configuration it installs, upgraded, removed, purged.
//! Also the unit's sandbox rating and the manual pages it ships.
//!
//! run-tests.sh builds the package first and names it in `SEALGATE_DEB`;
//! without it this test builds the package itself (a release build).

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(30);

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Purges the package however the test ends: the machine is left as found.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("pkill").args(["-u", "sealgate"]).status();
        let _ = Command::new("dpkg").args(["--purge", "sealgate"]).output();
    }
}

/// The installed binary, run as the sealgate user with only the capability
/// to bind ports below 1024, as the unit runs it.
fn as_sealgate(args: &[&str]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=sealgate",
        "--regid=sealgate",
        "--init-groups",
        "--inh-caps=+net_bind_service",
        "--ambient-caps=+net_bind_service",
        "/usr/sbin/sealgate",
        "--config",
        "/etc/sealgate/sealgate.toml",
    ])
    .args(args);
    cmd
}

fn mode(path: &str) -> (u32, String) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let owner = output_text(&run(Command::new("stat").args(["-c", "%U:%G", path])));
    (meta.mode() & 0o7777, owner.trim().to_string())
}

/// Starts the installed gateway; returns it once port 25 answers.
fn start() -> std::process::Child {
    let mut child = as_sealgate(&["serve"])
        .stderr(std::fs::File::create("/tmp/sealgate-package-test.log").unwrap())
        .spawn()
        .unwrap();
    wait_for(T, "the installed gateway on 127.0.0.1:25", || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the installed gateway exited with {status}:\n{}",
                std::fs::read_to_string("/tmp/sealgate-package-test.log").unwrap_or_default()
            );
        }
        std::net::TcpStream::connect(("127.0.0.1", 25)).ok()
    });
    child
}

fn stop(mut child: std::process::Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "stopped with {status}");
}

fn queue_ids() -> String {
    output_text(&run(&mut as_sealgate(&["queue", "list"])))
}

#[test]
fn the_package_installs_runs_upgrades_and_purges() {
    let deb = debian_package();
    let deb = deb.to_str().unwrap();

    let contents = output_text(&run(Command::new("dpkg-deb").args(["-c", deb])));
    for path in [
        "./usr/sbin/sealgate",
        "./etc/sealgate/sealgate.toml",
        "./etc/sealgate/policies/default.toml",
        "./usr/lib/systemd/system/sealgate.service",
        "./usr/share/man/man8/sealgate.8.gz",
        "./usr/share/man/man8/sealgate-queue-list.8.gz",
        "./usr/share/man/man5/sealgate.toml.5.gz",
        "./usr/share/bash-completion/completions/sealgate",
        "./usr/share/zsh/vendor-completions/_sealgate",
        "./usr/share/fish/vendor_completions.d/sealgate.fish",
        "./usr/share/doc/sealgate/copyright",
        "./usr/share/doc/sealgate/README.md",
        "./usr/share/doc/sealgate/docs/README.md",
        "./usr/share/doc/sealgate/docs/operations.md",
    ] {
        assert!(
            contents.lines().any(|l| l.ends_with(path)),
            "{path} missing:\n{contents}"
        );
    }
    let control = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb")
        .args(["-e", deb])
        .arg(control.path()));
    let conffiles = std::fs::read_to_string(control.path().join("conffiles")).unwrap();
    assert!(
        conffiles.contains("/etc/sealgate/sealgate.toml")
            && conffiles.contains("/etc/sealgate/policies/default.toml"),
        "{conffiles}"
    );
    let lintian = Command::new("lintian")
        .args(["--fail-on", "error", deb])
        .output()
        .unwrap();
    assert!(
        lintian.status.success(),
        "lintian:\n{}",
        output_text(&lintian)
    );

    for port in [25, 587] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} is taken on this machine: the installed default config needs it"
        );
    }
    let _installed = Installed;
    run(Command::new("dpkg").args(["-i", deb]));

    // The user, the private state directory, the configuration root may write.
    run(Command::new("id").arg("sealgate"));
    assert_eq!(
        mode("/var/lib/sealgate"),
        (0o700, "sealgate:sealgate".into())
    );
    assert_eq!(
        mode("/etc/sealgate/sealgate.toml"),
        (0o640, "root:sealgate".into())
    );
    // Shipped without debug info; the symbols are in the -dbgsym package.
    let sections = output_text(&run(
        Command::new("readelf").args(["-S", "/usr/sbin/sealgate"])
    ));
    assert!(
        !sections.contains(".debug_info"),
        "debug info in the binary"
    );

    // The unit's sandbox, rated by systemd itself.
    let security = output_text(&run(Command::new("systemd-analyze").args([
        "security",
        "--offline=true",
        "/usr/lib/systemd/system/sealgate.service",
    ])));
    let exposure: f64 = security
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for sealgate.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level:\n{security}"));
    assert!(exposure <= 2.0, "exposure {exposure}:\n{security}");

    // Every installed manual page renders without a warning.
    for dir in ["/usr/share/man/man8", "/usr/share/man/man5"] {
        for page in std::fs::read_dir(dir).unwrap() {
            let page = page.unwrap().path();
            if !page.to_string_lossy().contains("sealgate") {
                continue;
            }
            let out = Command::new("man")
                .args(["--warnings", "-l"])
                .arg(&page)
                .env("MANWIDTH", "80")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                page.display(),
                output_text(&out)
            );
            assert!(
                out.stderr.is_empty(),
                "{}: {}",
                page.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let man = output_text(&run(
        Command::new("man").args(["-l", "/usr/share/man/man5/sealgate.toml.5.gz"])
    ));
    assert!(
        man.contains("max_recipients") && man.contains("452 4.5.3"),
        "{man}"
    );
    let completion = output_text(&run(Command::new("bash").arg("-c").arg(
        "source /usr/share/bash-completion/completions/sealgate && complete -p sealgate",
    )));
    assert!(completion.contains("sealgate"), "{completion}");

    // The installed configuration as it is: a message is taken and queued.
    run(&mut as_sealgate(&["config", "check"]));
    let gateway = start();
    let mut c = Client::connect(25);
    c.cmd("EHLO client.test");
    // Nothing listens on 127.0.0.2:25: the message waits in the queue.
    let reply = c.message(
        "sender@example.org",
        &["someone@[127.0.0.2]"],
        message("package", "from the installed gateway\r\n").as_bytes(),
    );
    assert!(reply.starts_with("250"), "{reply}");
    let id = reply.trim().rsplit(' ').next().unwrap().to_string();
    c.cmd("QUIT");
    wait_for(T, "the message in the queue", || {
        queue_ids().contains(&id).then_some(())
    });
    stop(gateway);

    // An upgrade keeps the queue and the administrator's configuration.
    let config = std::fs::read_to_string("/etc/sealgate/sealgate.toml").unwrap();
    std::fs::write(
        "/etc/sealgate/sealgate.toml",
        format!("{config}\n# edited by the administrator\n"),
    )
    .unwrap();
    run(Command::new("dpkg").args(["-i", deb]));
    assert!(
        std::fs::read_to_string("/etc/sealgate/sealgate.toml")
            .unwrap()
            .contains("# edited by the administrator")
    );
    let gateway = start();
    assert!(queue_ids().contains(&id), "the queue after the upgrade");
    run(&mut as_sealgate(&["queue", "delete", &id]));
    stop(gateway);

    // Removing keeps the state; purging removes it and the user.
    run(Command::new("dpkg").args(["-r", "sealgate"]));
    assert!(Path::new("/var/lib/sealgate/sealgate.db").exists());
    assert!(!Path::new("/usr/sbin/sealgate").exists());
    run(Command::new("dpkg").args(["--purge", "sealgate"]));
    assert!(!Path::new("/var/lib/sealgate").exists());
    assert!(!Path::new("/etc/sealgate").exists());
    assert!(
        !Command::new("id")
            .arg("sealgate")
            .output()
            .unwrap()
            .status
            .success()
    );
}
