//! Several sealgate nodes on one PostgreSQL (`[storage] url`): real
//! processes, the real shared Postfix destination, a real PostgreSQL
//! server. A node killed with SIGKILL leaves its queue to the others; a
//! PostgreSQL that stops under load costs no acknowledged message, and the
//! nodes refuse mail while it is away and take it again when it is back.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use support::*;

/// The lease the test nodes run with: short, so that takeover is quick.
const LEASE: &str = "4s";
/// Deliveries a node runs at once: at most this many can be in flight when
/// it is killed, so at most this many can arrive twice.
const CONCURRENCY: usize = 20;

/// A node of the cluster on `url`, named `name`, trying deferred mail
/// again after `retry`; every node reads the spool's key-encryption key
/// from `shared`.
fn node(url: &str, shared: &Path, name: &str, retry: &str) -> Gateway {
    node_with(url, shared, name, retry, |_, text| text)
}

/// As [`node`], with its base configuration changed by `edit` (which is
/// given the node's directory).
fn node_with(
    url: &str,
    shared: &Path,
    name: &str,
    retry: &str,
    edit: impl FnOnce(&Path, String) -> String,
) -> Gateway {
    Gateway::start_with(|dir, relay, sub| {
        format!(
            "{}\n[storage]\nurl = \"{url}\"\n\n[cluster]\nnode = \"{name}\"\nlease = \"{LEASE}\"\n\n[spool]\nkey_file = \"{}\"\n",
            edit(
                dir,
                base_config(dir, relay, sub).replace(
                    "retry_schedule = [\"1s\"]",
                    &format!("retry_schedule = [\"{retry}\"]\nmax_concurrency = {CONCURRENCY}"),
                )
            ),
            shared.join("spool.key").display()
        )
    })
}

fn text(message_id: &str, rcpt: &str) -> String {
    format!(
        "From: load@src.test\r\nTo: {rcpt}\r\nSubject: cluster\r\nMessage-ID: {message_id}\r\n\r\nload\r\n"
    )
}

/// How often each Message-ID arrived at the destination for `rcpts`.
fn arrivals(rcpts: &[String]) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for r in rcpts {
        for m in dest().mails(r) {
            let text = String::from_utf8_lossy(&m);
            if let Some(id) = text
                .lines()
                .find_map(|l| l.strip_prefix("Message-ID: "))
                .map(|s| s.trim().to_string())
            {
                *seen.entry(id).or_insert(0) += 1;
            }
        }
    }
    seen
}

fn delivered_count(rcpts: &[String]) -> usize {
    rcpts
        .iter()
        .map(|r| {
            std::fs::read_dir(dest().dir.join("mail").join(r))
                .map(|d| d.count())
                .unwrap_or(0)
        })
        .sum()
}

/// Waits until every acknowledged Message-ID arrived; the arrivals.
fn wait_all(acked: &[String], rcpts: &[String], limit: Duration) -> BTreeMap<String, usize> {
    let start = Instant::now();
    loop {
        if delivered_count(rcpts) >= acked.len() {
            let seen = arrivals(rcpts);
            let missing: Vec<&String> = acked.iter().filter(|m| !seen.contains_key(*m)).collect();
            if missing.is_empty() {
                return seen;
            }
            assert!(
                start.elapsed() < limit,
                "{} acknowledged message(s) never arrived, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(5)]
            );
        }
        assert!(
            start.elapsed() < limit,
            "{} of {} acknowledged messages arrived within {limit:?}",
            delivered_count(rcpts),
            acked.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn cli_ok(gw: &Gateway, args: &[&str]) -> String {
    let out = gw.cli(args);
    assert!(out.status.success(), "{args:?}: {}", output_text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn three_nodes_share_the_queue_and_finish_what_a_killed_node_held() {
    let url = pg_database(pg_server(), "cluster");
    let shared = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Gateway> = ["n1", "n2", "n3"]
        .iter()
        .map(|name| node(&url, shared.path(), name, "5s"))
        .collect();
    let rcpts: Vec<String> = (0..4)
        .map(|d| format!("{}@d{d}.cluster.test", unique("node")))
        .collect();
    // The destination defers them while they are sent, so that every node
    // holds a queue when one is killed.
    let local = rcpts[0].split('@').next().unwrap().to_string();
    let rule = format!("/^{local}@/ 451 4.3.0 Not yet");
    dest().add_rule(&rule);
    dest().wait_rcpt_reply(&rcpts[0], "451");

    // 3,000 messages, round-robin over the three nodes, one session each.
    let total = 3_000;
    let tag = unique("c");
    let senders: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(n, gw)| {
            let (port, tag, rcpts) = (gw.relay, tag.clone(), rcpts.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(port);
                c.cmd("EHLO load.test");
                let mut acked = Vec::new();
                for i in (n..total).step_by(3) {
                    let id = format!("<{tag}.{i}@cluster.test>");
                    let rcpt = &rcpts[i % rcpts.len()];
                    let reply = c.message("load@src.test", &[rcpt], text(&id, rcpt).as_bytes());
                    assert!(reply.starts_with("250"), "node {n}: {reply}");
                    acked.push(id);
                }
                c.cmd("QUIT");
                acked
            })
        })
        .collect();
    let acked: Vec<String> = senders
        .into_iter()
        .flat_map(|t| t.join().expect("sender"))
        .collect();
    assert_eq!(acked.len(), total);
    dest().remove_rule(&rule);
    dest().wait_rcpt_reply(&rcpts[0], "250");

    // While they deliver, n2 dies with no chance to clean up.
    wait_for(Duration::from_secs(120), "deliveries to begin", || {
        (delivered_count(&rcpts) >= 300).then_some(())
    });
    nodes[1].kill9();
    let killed_at = Instant::now();

    let seen = wait_all(&acked, &rcpts, Duration::from_secs(600));
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "cluster: {total} acknowledged, all arrived {:.1} s after the kill, {duplicates} duplicate(s)",
        killed_at.elapsed().as_secs_f64()
    );
    assert!(
        duplicates <= CONCURRENCY,
        "{duplicates} duplicates: more than the killed node's deliveries in flight ({CONCURRENCY})"
    );
    assert!(
        seen.keys().all(|k| acked.contains(k)),
        "a message arrived that nobody sent"
    );
    let took_over = nodes
        .iter()
        .filter(|g| g.log().contains("took over the queue of node n2"))
        .count();
    let status = cli_ok(&nodes[0], &["cluster", "status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let by_name = |name: &str| {
        status
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {status}"))
    };
    assert_eq!(by_name("n2")["alive"], false, "{status}");
    assert_eq!(
        by_name("n2")["messages"],
        0,
        "n2's queue was taken: {status}"
    );
    assert_eq!(by_name("n1")["alive"], true, "{status}");
    eprintln!("cluster: {took_over} node(s) took over n2's queue");

    // One chain per tenant across the three nodes: it verifies, and every
    // node wrote into it.
    let verify = cli_ok(&nodes[2], &["report", "verify"]);
    assert!(verify.contains("tenant default: intact"), "{verify}");
    let writers = pg_query(
        &url,
        "SELECT node, COUNT(*) FROM txlog WHERE tenant = 'default' GROUP BY node ORDER BY node",
    );
    assert_eq!(writers.len(), 3, "records from every node: {writers:?}");
    let export = cli_ok(&nodes[0], &["report", "export", "--format", "csv"]);
    assert!(
        export.lines().count() > total,
        "one row per recipient per attempt: {} lines",
        export.lines().count()
    );
    // TLS-RPT reports are made from the shared log, and any node sends
    // them (tests/report.rs checks that each goes out once).
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let printed = cli_ok(&nodes[0], &["report", "tlsrpt", "--day", &today]);
    assert!(printed.contains("\"policy-domain\""), "{printed}");
    let said = cli_ok(&nodes[2], &["report", "tlsrpt", "--day", &today, "--send"]);
    assert!(said.contains("report(s) sent"), "{said}");
}

#[test]
fn a_postgresql_restart_under_load_loses_nothing_and_the_nodes_resume_by_themselves() {
    let pg = PrivatePg::start("postgres-restart", 24433);
    let url = pg_database(&pg.url, "restart");
    let shared = tempfile::tempdir().unwrap();
    let nodes: Vec<Gateway> = ["r1", "r2"]
        .iter()
        .map(|name| node(&url, shared.path(), name, "1s"))
        .collect();
    let rcpts = vec![format!("{}@restart.test", unique("pg"))];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tag = unique("r");
    // One sender per node until told to stop; it keeps what was
    // acknowledged, and counts what was refused.
    let senders: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(n, gw)| {
            let (port, rcpt, tag) = (gw.relay, rcpts[0].clone(), tag.clone());
            let (stop, refused) = (stop.clone(), refused.clone());
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut c = Client::connect(port);
                    c.cmd("EHLO load.test");
                    loop {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                        i += 1;
                        let id = format!("<{tag}.{n}.{i}@restart.test>");
                        let mail = c.cmd("MAIL FROM:<load@src.test>");
                        if !mail.starts_with("250") {
                            refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            std::thread::sleep(Duration::from_millis(100));
                            if mail.starts_with("421") || mail.is_empty() {
                                break;
                            }
                            continue;
                        }
                        assert!(c.cmd(&format!("RCPT TO:<{rcpt}>")).starts_with("250"));
                        assert!(c.cmd("DATA").starts_with("354"));
                        c.send(text(&id, &rcpt).as_bytes());
                        c.send(b".\r\n");
                        let reply = c.reply();
                        if reply.starts_with("250") {
                            acked.push(id);
                        } else {
                            refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
                acked
            })
        })
        .collect();

    wait_for(Duration::from_secs(60), "mail to flow", || {
        (delivered_count(&rcpts) >= 100).then_some(())
    });
    pg.halt();
    // Both nodes notice, and say so to new sessions before any data.
    for gw in &nodes {
        wait_for(Duration::from_secs(30), "a node to refuse mail", || {
            let mut c = Client::connect(gw.relay);
            c.cmd("EHLO probe.test");
            let reply = c.cmd("MAIL FROM:<probe@src.test>");
            reply.starts_with("451 4.3.0").then_some(())
        });
    }
    std::thread::sleep(Duration::from_secs(2));
    pg.resume();
    for gw in &nodes {
        wait_for(Duration::from_secs(60), "a node to take mail again", || {
            let mut c = Client::connect(gw.relay);
            c.cmd("EHLO probe.test");
            let reply = c.cmd("MAIL FROM:<probe@src.test>");
            c.cmd("QUIT");
            reply.starts_with("250").then_some(())
        });
    }
    let resumed = delivered_count(&rcpts);
    wait_for(Duration::from_secs(60), "mail to flow again", || {
        (delivered_count(&rcpts) >= resumed + 100).then_some(())
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked: Vec<String> = senders
        .into_iter()
        .flat_map(|t| t.join().expect("sender"))
        .collect();
    assert!(
        refused.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the senders never met a refusal while PostgreSQL was down"
    );
    let seen = wait_all(&acked, &rcpts, Duration::from_secs(300));
    eprintln!(
        "restart: {} acknowledged, all arrived; {} refused while down; {} duplicate(s)",
        acked.len(),
        refused.load(std::sync::atomic::Ordering::Relaxed),
        seen.values().map(|n| n - 1).sum::<usize>()
    );
    for gw in &nodes {
        let log = gw.log();
        assert!(log.contains("storage database unreachable"), "{log}");
        assert!(log.contains("storage database reachable again"), "{log}");
    }
    let verify = cli_ok(&nodes[0], &["report", "verify"]);
    assert!(verify.contains("tenant default: intact"), "{verify}");
}

#[test]
fn a_single_nodes_queue_and_log_move_into_postgresql_and_are_delivered_from_there() {
    let url = pg_database(pg_server(), "migrate");
    // A node on SQLite whose destination defers: its mail stays queued.
    let mut gw = Gateway::start("# storage: sqlite");
    let rcpt = format!("{}@migrate.test", unique("mig"));
    let local = rcpt.split('@').next().unwrap().to_string();
    let rule = format!("/^{local}@/ 451 4.3.0 Not yet");
    dest().add_rule(&rule);
    dest().wait_rcpt_reply(&rcpt, "451");
    let ids: Vec<String> = (0..3)
        .map(|i| {
            relay_one(
                gw.relay,
                "sender@src.test",
                &[&rcpt],
                text(&format!("<mig.{i}.{local}@src.test>"), &rcpt).as_bytes(),
            )
        })
        .collect();
    wait_for(Duration::from_secs(30), "a deferral of each", || {
        let queue = gw.queue();
        (queue.len() == 3 && queue.iter().all(|m| m["last_reply"].is_string())).then_some(())
    });
    gw.signal_term();
    assert!(gw.wait_exit(), "clean stop");
    // Held while no gateway runs (the spool itself), and held it moves.
    let said = cli_ok(&gw, &["queue", "hold", &ids[0], "--reason", "moving"]);
    assert!(said.contains("held until released"), "{said}");
    let before = cli_ok(&gw, &["report", "verify"]);

    let out = gw.cli(&["storage", "migrate", "--to", &url]);
    let said = output_text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("3 queued message(s)"), "{said}");
    assert!(said.contains("tenant default: intact"), "{said}");
    // What the node learnt of the destination went along.
    assert!(said.contains(" 1 domain(s)"), "{said}");

    // The node on PostgreSQL: the same queue, the same chain, and it delivers.
    let mut config = std::fs::read_to_string(&gw.config).unwrap();
    config.push_str(&format!("\n[storage]\nurl = \"{url}\"\n"));
    std::fs::write(&gw.config, config).unwrap();
    let after = cli_ok(&gw, &["report", "verify"]);
    let domains = cli_ok(&gw, &["domains", "show", "migrate.test"]);
    assert!(domains.contains("last level:"), "{domains}");
    let head = |s: &str| s.split(", head ").nth(1).map(str::to_string);
    assert!(head(&before).is_some(), "{before}");
    assert_eq!(
        head(&after),
        head(&before),
        "the same chain: {before} / {after}"
    );
    gw.restart();
    let queue = gw.queue();
    let mut queued: Vec<String> = queue
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    queued.sort();
    let mut sent = ids.clone();
    sent.sort();
    assert_eq!(queued, sent, "the same messages, the same ids");
    let held: Vec<&serde_json::Value> = queue.iter().filter(|m| m["held"] == true).collect();
    assert_eq!(held.len(), 1, "{queue:?}");
    assert_eq!(held[0]["id"], ids[0].as_str());
    dest().remove_rule(&rule);
    dest().wait_rcpt_reply(&rcpt, "250");
    let arrived = dest().wait_mails(&rcpt, 2, Duration::from_secs(60));
    assert_eq!(arrived.len(), 2);
    cli_ok(&gw, &["queue", "release", &ids[0]]);
    let arrived = dest().wait_mails(&rcpt, 3, Duration::from_secs(60));
    assert_eq!(arrived.len(), 3);
    gw.wait_queue_empty(Duration::from_secs(30));
    let verify = cli_ok(&gw, &["report", "verify"]);
    assert!(verify.contains("tenant default: intact"), "{verify}");
    // A second run finds the chain there and refuses rather than fork it.
    gw.signal_term();
    assert!(gw.wait_exit());
    let again = gw.cli(&["storage", "migrate", "--to", &url]);
    assert!(!again.status.success());
    assert!(
        output_text(&again).contains("already has log records"),
        "{}",
        output_text(&again)
    );
}

/// Makes a CA and a server certificate for 127.0.0.1 signed by it in `dir`
/// (ca.pem, server.pem, server.key), readable by the postgres user.
fn database_certificates(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            output_text(&out)
        );
    };
    let p256 = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &p256,
            &[
                "-days",
                "2",
                "-subj",
                "/CN=Test database CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &p256,
            &[
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("ext"),
        "subjectAltName = IP:127.0.0.1\nextendedKeyUsage = serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext",
        "-out",
        "server.pem",
    ]);
    // PostgreSQL reads its key only when the postgres user owns it, 0600.
    let chown = std::process::Command::new("chown")
        .args(["-R", "postgres:"])
        .arg(dir)
        .status()
        .expect("chown");
    assert!(chown.success());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
}

#[test]
fn a_node_reaches_postgresql_over_tls_and_checks_its_certificate() {
    let certs = peers_dir().join("postgres-tls-certs");
    database_certificates(&certs);
    // The server takes nothing in clear, so a node that gets in used TLS.
    std::fs::write(
        certs.join("pg_hba.conf"),
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
    )
    .unwrap();
    let at = |f: &str| certs.join(f).display().to_string();
    let pg = PrivatePg::start_with(
        "postgres-tls",
        24434,
        &format!(
            "-c ssl=on -c ssl_cert_file={} -c ssl_key_file={} -c hba_file={}",
            at("server.pem"),
            at("server.key"),
            at("pg_hba.conf")
        ),
    );
    let url = pg_database(&pg.url, "tls");
    let shared = tempfile::tempdir().unwrap();
    let secure = format!("{url}?sslmode=require");
    let gw = Gateway::start_with(|dir, relay, sub| {
        format!(
            "{}\n[storage]\nurl = \"{secure}\"\nca = \"{}\"\n\n[spool]\nkey_file = \"{}\"\n",
            base_config(dir, relay, sub),
            at("ca.pem"),
            shared.path().join("spool.key").display()
        )
    });
    let rcpt = format!("{}@tls-db.test", unique("pg"));
    let mut c = Client::connect(gw.relay);
    c.cmd("EHLO load.test");
    assert!(c.cmd("MAIL FROM:<load@src.test>").starts_with("250"));
    assert!(c.cmd(&format!("RCPT TO:<{rcpt}>")).starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(text("<tls-db@src.test>", &rcpt).as_bytes());
    assert!(c.cmd(".").starts_with("250"), "stored over TLS");
    wait_all(
        &["<tls-db@src.test>".to_string()],
        std::slice::from_ref(&rcpt),
        Duration::from_secs(30),
    );

    // The same node's commands, told otherwise by the environment (which
    // wins over the file) or by another file.
    let command = |config: &Path, url: &str| {
        let out = std::process::Command::new(bin())
            .env("SEALGATE_STORAGE_URL", url)
            .args(["--config", config.to_str().unwrap(), "queue", "list"])
            .output()
            .expect("sealgate");
        (out.status.success(), output_text(&out))
    };
    let without_ca = gw.dir.path().join("without-ca.toml");
    let text = std::fs::read_to_string(&gw.config).unwrap();
    let ca_line = format!("ca = \"{}\"\n", at("ca.pem"));
    assert!(text.contains(&ca_line));
    std::fs::write(&without_ca, text.replace(&ca_line, "")).unwrap();
    let (ok, said) = command(&gw.config, &secure);
    assert!(ok, "{said}");
    // In clear, the server refuses.
    let (ok, said) = command(&without_ca, &format!("{url}?sslmode=disable"));
    assert!(!ok && said.contains("no encryption"), "{said}");
    // A CA for a connection that would not use it, or a mode that might
    // not encrypt: refused before connecting.
    let (ok, said) = command(&gw.config, &url);
    assert!(
        !ok && said.contains("does not say sslmode=require"),
        "{said}"
    );
    let (ok, said) = command(&without_ca, &format!("{url}?sslmode=prefer"));
    assert!(
        !ok && said.contains("sslmode=prefer would send everything in clear"),
        "{said}"
    );
    // Without our CA, the server's certificate is not trusted.
    let (ok, said) = command(&without_ca, &secure);
    assert!(!ok && said.to_lowercase().contains("certificate"), "{said}");
}

/// The pre-agreed envelope passwords are the cluster's: set on one node,
/// listed on another. A node with another store key is refused (it would
/// seal passwords no other node opens) until it has the cluster's key.
#[test]
fn pre_agreed_passwords_are_shared_and_a_node_with_another_key_is_refused() {
    let url = pg_database(pg_server(), "passwords");
    let shared = tempfile::tempdir().unwrap();
    let first = node(&url, shared.path(), "first", "1s");
    let second = node(&url, shared.path(), "second", "1s");
    let set = |gw: &Gateway, address: &str| {
        with_stdin(
            std::process::Command::new(bin())
                .args(["--config", gw.config.to_str().unwrap()])
                .args(["passwords", "set", address]),
            "a pre-agreed password 1\n",
        )
    };
    let out = set(&first, "bob@dst.test");
    assert!(out.status.success(), "{}", output_text(&out));
    let listed = cli_ok(&second, &["passwords", "list"]);
    assert!(listed.contains("bob@dst.test"), "{listed}");

    let out = set(&second, "carol@dst.test");
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("is not the key the stored passwords were sealed with"),
        "{}",
        output_text(&out)
    );
    std::fs::copy(
        first.dir.path().join("passwords.key"),
        second.dir.path().join("passwords.key"),
    )
    .unwrap();
    let out = set(&second, "carol@dst.test");
    assert!(out.status.success(), "{}", output_text(&out));
    let listed = cli_ok(&first, &["passwords", "list"]);
    assert!(
        listed.contains("bob@dst.test") && listed.contains("carol@dst.test"),
        "{listed}"
    );
}

/// `sealgate spool rekey` on a cluster: the node asked rotates the data
/// key, the other live node follows each step by its heartbeat, mail
/// flows on both meanwhile, a message queued before opens on both after,
/// every stored value ends sealed under the new key, and only that key
/// stays in the database.
#[test]
fn a_data_key_rotation_is_followed_by_every_live_node() {
    let url = pg_database(pg_server(), "rekey");
    let shared = tempfile::tempdir().unwrap();
    let first = node(&url, shared.path(), "first", "1s");
    let second = node(&url, shared.path(), "second", "1s");
    let keys = || pg_query(&url, "SELECT id FROM spool_keys ORDER BY id");
    assert_eq!(keys(), ["1"]);
    let stuck = relay_one(
        second.relay,
        "before@src.test",
        &["r@unreachable.test"],
        text("<before@rekey.test>", "r@unreachable.test").as_bytes(),
    );

    let rcpts: Vec<String> = (0..2).map(|i| format!("rekey{i}@dst.test")).collect();
    let (relays, to) = ([first.relay, second.relay], rcpts.clone());
    let load = std::thread::spawn(move || {
        let mut acked = Vec::new();
        for i in 0..40 {
            let id = format!("<m{i}@rekey.test>");
            let rcpt = &to[i % 2];
            relay_one(
                relays[i % 2],
                "load@src.test",
                &[rcpt],
                text(&id, rcpt).as_bytes(),
            );
            acked.push(id);
            std::thread::sleep(Duration::from_millis(100));
        }
        acked
    });
    let out = first.cli(&["spool", "rekey"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let acked = load.join().unwrap();
    wait_all(&acked, &rcpts, Duration::from_secs(60));

    assert_eq!(keys(), ["2"], "the old key is gone");
    let under_old = pg_query(
        &url,
        "SELECT (SELECT COUNT(*) FROM messages WHERE substring(sender from 2 for 4) <> int4send(2)
                   OR substring(client from 2 for 4) <> int4send(2)
                   OR substring(body from 2 for 4) <> int4send(2))
              + (SELECT COUNT(*) FROM recipients WHERE substring(address from 2 for 4) <> int4send(2)
                   OR substring(last_reply from 2 for 4) <> int4send(2))",
    );
    assert_eq!(under_old, ["0"]);
    for gw in [&first, &second] {
        let show = cli_ok(gw, &["queue", "show", &stuck]);
        assert!(show.contains("before@src.test"), "{show}");
    }
    // Mail stored after the rotation flows on both.
    let after: Vec<String> = (0..2).map(|i| format!("<after{i}@rekey.test>")).collect();
    for (i, gw) in [&first, &second].into_iter().enumerate() {
        relay_one(
            gw.relay,
            "load@src.test",
            &[&rcpts[i]],
            text(&after[i], &rcpts[i]).as_bytes(),
        );
    }
    wait_all(&[acked, after].concat(), &rcpts, Duration::from_secs(60));
}

/// A next hop that takes one message and holds its reply to the data
/// until told: an attempt that stays in flight as long as a test wants.
struct SlowHop {
    port: u16,
    got_data: std::sync::mpsc::Receiver<()>,
    answer: std::sync::mpsc::Sender<()>,
}

impl SlowHop {
    fn start() -> SlowHop {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (data_tx, got_data) = std::sync::mpsc::channel();
        let (answer, answer_rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            stream.set_read_timeout(Some(Duration::from_secs(60))).ok();
            let mut out = stream.try_clone().unwrap();
            let mut input = BufReader::new(stream);
            let _ = out.write_all(b"220 slow.test ESMTP\r\n");
            let mut line = String::new();
            loop {
                line.clear();
                if input.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let verb = line.to_ascii_uppercase();
                let reply: &[u8] = if verb.starts_with("EHLO") {
                    b"250 slow.test\r\n"
                } else if verb.starts_with("DATA") {
                    let _ = out.write_all(b"354 go ahead\r\n");
                    let mut data = String::new();
                    while !data.ends_with("\r\n.\r\n") {
                        line.clear();
                        if input.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        data.push_str(&line);
                    }
                    let _ = data_tx.send(());
                    let _ = answer_rx.recv_timeout(Duration::from_secs(60));
                    b"250 2.0.0 queued\r\n"
                } else if verb.starts_with("QUIT") {
                    let _ = out.write_all(b"221 2.0.0 bye\r\n");
                    return;
                } else {
                    b"250 2.0.0 ok\r\n"
                };
                let _ = out.write_all(reply);
            }
        });
        SlowHop {
            port,
            got_data,
            answer,
        }
    }
}

/// An operator's bounce asked on one node, of a message another node is
/// handing to the next hop at that moment: the owner does it once that
/// attempt is recorded, so the sender is never told "returned" of a
/// message that arrived, and the log has no attempt after the act.
#[test]
fn an_act_asked_on_one_node_waits_for_the_owners_attempt_in_flight() {
    let url = pg_database(pg_server(), "acts");
    let shared = tempfile::tempdir().unwrap();
    let hop = SlowHop::start();
    let routed = |dir: &Path, text: String| {
        let policy = policy_dir(dir, &[("slow.toml", &plaintext_exception("slow.test"))]);
        let text = text.replace(
            "[[route]]\ndomain = \"*\"",
            &format!(
                "[[route]]\ndomain = \"slow.test\"\nnext_hop = \"127.0.0.1:{}\"\n\n[[route]]\ndomain = \"*\"",
                hop.port
            ),
        );
        format!("{text}{policy}")
    };
    let asking = node_with(&url, shared.path(), "asking", "1h", routed);
    let owner = node_with(&url, shared.path(), "owner", "1h", routed);
    let rcpt = "someone@slow.test";
    let id = relay_one(
        owner.relay,
        "sender@src.test",
        &[rcpt],
        text("<inflight@acts.test>", rcpt).as_bytes(),
    );
    hop.got_data
        .recv_timeout(Duration::from_secs(30))
        .expect("the owner's attempt reaches the data");

    let config = asking.config.clone();
    let bouncing = {
        let id = id.clone();
        std::thread::spawn(move || {
            std::process::Command::new(bin())
                .args(["--config", config.to_str().unwrap(), "queue", "bounce", &id])
                .args(["--reason", "recalled by the sender"])
                .output()
                .unwrap()
        })
    };
    wait_for(Duration::from_secs(30), "the owner to be asked", || {
        (bouncing.is_finished() || owner.log().contains("bounce asked by node asking"))
            .then_some(())
    });
    assert!(
        !bouncing.is_finished(),
        "the bounce ended while the owner's attempt was in flight"
    );
    // Meanwhile the node asked answers other requests on its control socket.
    let flushing = {
        let config = asking.config.clone();
        std::thread::spawn(move || {
            std::process::Command::new(bin())
                .args(["--config", config.to_str().unwrap(), "queue", "flush"])
                .output()
                .unwrap()
        })
    };
    wait_for(Duration::from_secs(10), "a flush beside the bounce", || {
        flushing.is_finished().then_some(())
    });
    let flushed = flushing.join().unwrap();
    assert!(flushed.status.success(), "{}", output_text(&flushed));
    hop.answer.send(()).unwrap();
    let out = bouncing.join().unwrap();
    let said = output_text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("no such message in the queue"), "{said}");
    let line = wait_delivery_line(&owner, rcpt, "sent");
    assert_eq!(line["id"], id, "{line:?}");
    assert!(
        !owner.log().contains("status=bounced") && !asking.log().contains("status=bounced"),
        "a bounce was recorded:\n{}",
        asking.log()
    );
}
