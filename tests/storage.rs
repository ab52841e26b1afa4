//! The PostgreSQL spool against a real PostgreSQL server (the machine's
//! own at 127.0.0.1:5432, else a private cluster that
//! tests/peers/postgres.sh makes): each test on a database of its own.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sealgate::message::{Content, Envelope, Notify, Recipient, Ret, TenantId, TlsRequest};
use sealgate::report::event::{Deleted, VERSION};
use sealgate::report::log::Verified;
use sealgate::report::{Event, EventData};
use sealgate::spool::{
    AttemptRecord, DueJob, HoldOutcome, KeyFile, ListPage, NewMessage, Operator, PgSpool, QueueId,
    RecipientOutcome, Spool, SqliteSpool,
};

const LEASE: Option<Duration> = Some(Duration::from_secs(30));

/// The server's URL (without a database).
fn server() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("peers/postgres");
        let out = Command::new("bash")
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/postgres.sh"))
            .arg("url")
            .arg(&dir)
            .arg("24432")
            .output()
            .expect("postgres.sh");
        assert!(out.status.success(), "postgres.sh: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    })
}

/// A fresh database for one test; its URL.
async fn database(name: &str) -> String {
    let db = format!("sealgate_test_{name}_{}", std::process::id());
    let (client, conn) =
        tokio_postgres::connect(&format!("{}/postgres", server()), tokio_postgres::NoTls)
            .await
            .expect("connect");
    tokio::spawn(conn);
    // Each its own statement: neither runs inside a transaction block.
    for sql in [
        format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        format!("CREATE DATABASE {db}"),
    ] {
        client.batch_execute(&sql).await.expect(&sql);
    }
    format!("{}/{db}", server())
}

async fn raw(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}

fn key(dir: &tempfile::TempDir, create: bool) -> KeyFile {
    KeyFile {
        path: dir.path().join("spool.key"),
        create,
    }
}

fn message(spool: &dyn Spool, tenant: &str, rcpts: &[&str], body: &str) -> NewMessage {
    let id = spool.next_id();
    NewMessage {
        id,
        envelope: Envelope {
            tenant: TenantId(tenant.into()),
            sender: "a@src.test".into(),
            env_id: Some("env1".into()),
            ret: Some(Ret::Headers),
            smtputf8: false,
            body_8bit: true,
            tls_request: TlsRequest::None,
            content: Content::Plain,
            recipients: rcpts
                .iter()
                .map(|r| {
                    Recipient::new(
                        r.to_string(),
                        Some(format!("rfc822;{r}")),
                        Notify::default(),
                    )
                })
                .collect(),
        },
        received_at: 100,
        expires_at: 1000,
        client: "client.test [127.0.0.1]".into(),
        body: body.as_bytes().to_vec(),
        events: vec![event(id, "received")],
    }
}

fn event(id: QueueId, by: &str) -> Event {
    Event {
        queue_id: id,
        at: 100,
        data: EventData::Deleted(Deleted {
            reason: None,
            v: VERSION,
            by: by.into(),
        }),
    }
}

fn operator() -> Operator {
    Operator {
        by: "test".into(),
        reason: Some("checking".into()),
    }
}

fn attempt(
    id: QueueId,
    tenant: &str,
    outcomes: Vec<(u32, RecipientOutcome)>,
    now: i64,
) -> AttemptRecord {
    AttemptRecord {
        id,
        domain: "one.test".into(),
        outcomes,
        dsn: None,
        now,
        purge_at: now,
        tenant: TenantId(tenant.into()),
        events: vec![event(id, "attempt")],
    }
}

/// Every record of the tenant's chain links to the one before; their count.
async fn verify_chain(client: &tokio_postgres::Client, tenant: &str) -> usize {
    let rows = client
        .query(
            "SELECT seq, at, kind, queue_id, data, prev, hash FROM txlog
             WHERE tenant = $1 ORDER BY seq",
            &[&tenant],
        )
        .await
        .unwrap();
    let mut prev = vec![0u8; 32];
    for (i, r) in rows.iter().enumerate() {
        let seq: i64 = r.get(0);
        assert_eq!(seq, i as i64 + 1, "no gap, no fork");
        let stored_prev: Vec<u8> = r.get(5);
        assert_eq!(stored_prev, prev, "record {seq} links to the one before");
        let hash = sealgate::report::log::record_hash(
            &prev,
            tenant,
            seq,
            r.get(1),
            r.get(2),
            r.get(3),
            r.get(4),
        );
        let stored: Vec<u8> = r.get(6);
        assert_eq!(stored, hash.to_vec(), "record {seq}'s hash");
        prev = stored;
    }
    rows.len()
}

#[tokio::test]
async fn messages_are_stored_loaded_recorded_and_survive_a_restart() {
    let url = database("roundtrip").await;
    let dir = tempfile::tempdir().unwrap();
    let spool = PgSpool::open(&url, None, &key(&dir, true), "node-a", LEASE)
        .await
        .unwrap();
    let marker = "marker-7c1e0d5a in the body";
    let m = message(
        &*spool,
        "t",
        &["x@one.test", "y@two.test", "z@One.Test"],
        marker,
    );
    let id = m.id;
    spool.store(m).await.unwrap();

    let job = spool
        .load(id, "one.test")
        .await
        .unwrap()
        .expect("pending in one.test");
    assert_eq!(job.recipients.len(), 2);
    assert_eq!(
        job.recipients[1].recipient.orcpt.as_deref(),
        Some("rfc822;z@One.Test")
    );
    assert_eq!(job.envelope.ret, Some(Ret::Headers));
    assert_eq!(job.envelope.env_id.as_deref(), Some("env1"));
    assert_eq!(job.body, marker.as_bytes());

    // Nothing of the message is readable in the database.
    let client = raw(&url).await;
    for (table, column) in [
        ("messages", "body"),
        ("messages", "sender"),
        ("recipients", "address"),
    ] {
        let rows = client
            .query(&format!("SELECT {column} FROM {table}"), &[])
            .await
            .unwrap();
        for r in rows {
            let v: Vec<u8> = r.get(0);
            let text = String::from_utf8_lossy(&v);
            assert!(
                !text.contains("marker-7c1e0d5a")
                    && !text.contains("src.test")
                    && !text.contains("one.test"),
                "{table}.{column} in clear"
            );
        }
    }

    let result = spool
        .record(attempt(
            id,
            "t",
            vec![
                (
                    0,
                    RecipientOutcome::Delivered {
                        reply: "250 ok".into(),
                    },
                ),
                (
                    2,
                    RecipientOutcome::Deferred {
                        reply: "451 later".into(),
                        next_attempt: 500,
                    },
                ),
            ],
            200,
        ))
        .await
        .unwrap();
    assert!(!result.finished && !result.gone);

    // A restart (a second open) sees the same queue, and the same keys.
    drop(spool);
    let spool = PgSpool::open(&url, None, &key(&dir, true), "node-a", LEASE)
        .await
        .unwrap();
    let mut due = spool.pending().await.unwrap();
    due.sort_by(|a, b| a.domain.cmp(&b.domain));
    assert_eq!(
        due,
        vec![
            DueJob {
                id,
                domain: "one.test".into(),
                due: 500
            },
            DueJob {
                id,
                domain: "two.test".into(),
                due: 100
            },
        ]
    );
    assert!(spool.next_id() > id, "ids keep growing across restarts");
    let shown = spool.show(id).await.unwrap().expect("shown");
    assert_eq!(shown.client, "client.test [127.0.0.1]");
    assert_eq!(shown.recipients[2].last_reply.as_deref(), Some("451 later"));
    let list = spool
        .list(ListPage {
            limit: 1000,
            ..ListPage::default()
        })
        .await
        .unwrap();
    assert_eq!((list.len(), list[0].pending, list[0].recipients), (1, 2, 3));

    let retried = spool.retry(id, 300).await.unwrap();
    assert!(retried.iter().all(|j| j.due == 300), "{retried:?}");

    let mut last = attempt(
        id,
        "t",
        vec![
            (
                1,
                RecipientOutcome::Failed {
                    reply: "550 no".into(),
                },
            ),
            (
                2,
                RecipientOutcome::Delivered {
                    reply: "250 ok".into(),
                },
            ),
        ],
        600,
    );
    last.dsn = Some(message(&*spool, "t", &["a@src.test"], "the bounce"));
    let result = spool.record(last).await.unwrap();
    assert!(result.finished);
    assert!(
        spool.show(id).await.unwrap().is_none(),
        "finished content is deleted at once"
    );
    let list = spool
        .list(ListPage {
            limit: 1000,
            ..ListPage::default()
        })
        .await
        .unwrap();
    assert_eq!(list.len(), 1, "only the DSN is queued");
    assert!(spool.delete(list[0].id, operator()).await.unwrap());
    assert!(
        spool
            .list(ListPage {
                limit: 1000,
                ..ListPage::default()
            })
            .await
            .unwrap()
            .is_empty()
    );
    // received, attempt, received (DSN), attempt, deleted
    assert_eq!(verify_chain(&client, "t").await, 5);
}

#[tokio::test]
async fn two_nodes_appending_to_one_chain_take_turns() {
    let url = database("chain").await;
    let dir = tempfile::tempdir().unwrap();
    let a = PgSpool::open(&url, None, &key(&dir, true), "node-a", LEASE)
        .await
        .unwrap();
    let b = PgSpool::open(&url, None, &key(&dir, false), "node-b", LEASE)
        .await
        .unwrap();
    // Ids made on two nodes in the same microsecond still differ.
    assert_ne!(a.next_id().0 & 0xff, b.next_id().0 & 0xff);
    let per_node = 150;
    let mut tasks = Vec::new();
    for (node, spool) in [("a", a.clone()), ("b", b.clone())] {
        for i in 0..per_node {
            let spool: Arc<PgSpool> = spool.clone();
            tasks.push(tokio::spawn(async move {
                let m = message(&*spool, "acme", &[&format!("r{i}@{node}.test")], "x");
                spool.store(m).await
            }));
        }
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let client = raw(&url).await;
    assert_eq!(verify_chain(&client, "acme").await, 2 * per_node);
    let by_node = client
        .query(
            "SELECT node, COUNT(*) FROM txlog GROUP BY node ORDER BY node",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
        .collect::<Vec<_>>();
    assert_eq!(
        by_node,
        vec![
            ("node-a".to_string(), per_node as i64),
            ("node-b".to_string(), per_node as i64)
        ]
    );
    assert_eq!(
        a.list(ListPage {
            limit: 1000,
            ..ListPage::default()
        })
        .await
        .unwrap()
        .len(),
        2 * per_node,
        "both see one queue"
    );

    // What `report verify` says of it, and of it tampered with.
    let verified = b.verify_log("acme", &|| {}).await.unwrap();
    assert!(
        matches!(verified, Verified::Intact { records, .. } if records == 2 * per_node as i64),
        "{verified:?}"
    );
    client
        .execute(
            "UPDATE txlog SET data = replace(data, 'received', 'Received') WHERE seq = 7",
            &[],
        )
        .await
        .unwrap();
    let verified = a.verify_log("acme", &|| {}).await.unwrap();
    assert!(
        matches!(&verified, Verified::Broken { seq: 7, why } if why.contains("was edited")),
        "{verified:?}"
    );
}

#[tokio::test]
async fn a_newer_schema_or_a_missing_key_is_refused() {
    let url = database("refuse").await;
    let dir = tempfile::tempdir().unwrap();
    let spool = PgSpool::open(&url, None, &key(&dir, true), "node-a", LEASE)
        .await
        .unwrap();
    let m = message(&*spool, "t", &["x@one.test"], "kept");
    spool.store(m).await.unwrap();
    drop(spool);

    // The key file gone: refused, nothing lost.
    let elsewhere = tempfile::tempdir().unwrap();
    let err = PgSpool::open(&url, None, &key(&elsewhere, true), "node-a", LEASE)
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("spool key file is missing"),
        "{err}"
    );

    let client = raw(&url).await;
    client
        .execute("UPDATE sealgate_schema SET version = 99", &[])
        .await
        .unwrap();
    let err = PgSpool::open(&url, None, &key(&dir, true), "node-a", LEASE)
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains("schema is version 99, newer than this sealgate knows"),
        "{err}"
    );
}

#[tokio::test]
async fn a_node_delivers_its_own_messages_and_the_others_take_them_over_when_it_dies() {
    let url = database("owner").await;
    let dir = tempfile::tempdir().unwrap();
    let lease = Some(Duration::from_secs(3));
    let a = PgSpool::open(&url, None, &key(&dir, true), "node-a", lease)
        .await
        .unwrap();
    let b = PgSpool::open(&url, None, &key(&dir, false), "node-b", lease)
        .await
        .unwrap();
    assert!(a.shared() && a.available());
    let m = message(&*a, "t", &["x@one.test", "y@two.test"], "x");
    let id = m.id;
    a.store(m).await.unwrap();
    assert!(a.load(id, "one.test").await.unwrap().is_some());
    assert!(
        b.load(id, "one.test").await.unwrap().is_none(),
        "a's message is a's to deliver"
    );
    assert_eq!(a.pending().await.unwrap().len(), 2);
    assert!(b.pending().await.unwrap().is_empty());
    let now = sealgate::util::now();
    assert!(
        b.adopt(now, 10).await.unwrap().is_empty(),
        "within a lease of its start a node takes nothing: the others may not have beaten yet"
    );

    // A second live process named node-b is refused.
    let err = PgSpool::open(&url, None, &key(&dir, false), "node-b", lease)
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("another live node is named"),
        "{err}"
    );

    // Seen from a time past a's lease, a is dead and b takes both jobs.
    let mut taken = b.adopt(now + 60, 10).await.unwrap();
    taken.sort_by(|x, y| x.domain.cmp(&y.domain));
    assert_eq!(
        taken.iter().map(|j| j.domain.as_str()).collect::<Vec<_>>(),
        ["one.test", "two.test"]
    );
    assert!(
        b.adopt(now + 60, 10).await.unwrap().is_empty(),
        "taken once"
    );
    assert!(
        a.load(id, "one.test").await.unwrap().is_none(),
        "no longer a's"
    );
    assert!(b.load(id, "one.test").await.unwrap().is_some());

    // `queue retry` on a makes it a's again, due now.
    let jobs = a.retry(id, now).await.unwrap();
    assert_eq!(jobs.len(), 2);
    assert!(a.load(id, "two.test").await.unwrap().is_some());
    assert!(b.load(id, "two.test").await.unwrap().is_none());

    // `queue flush` on a: b's heartbeat sees it and b reads its queue again.
    let before = b.flushes();
    a.retry_all(now).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while b.flushes() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "b never saw the flush"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The command's view: no node name taken, every message listed.
    let command = PgSpool::open(&url, None, &key(&dir, false), "node-a", None)
        .await
        .unwrap();
    assert_eq!(
        command
            .list(ListPage {
                limit: 1000,
                ..ListPage::default()
            })
            .await
            .unwrap()
            .len(),
        1
    );
    let nodes = command.nodes(sealgate::util::now()).await.unwrap();
    assert_eq!(nodes.len(), 2);
    assert!(nodes.iter().all(|n| n.alive), "{nodes:?}");
    assert_eq!(nodes.iter().map(|n| n.messages).sum::<u64>(), 1);
}

#[tokio::test]
async fn messages_stored_together_go_in_one_statement_and_a_bad_one_spoils_only_itself() {
    let url = database("batch").await;
    let dir = tempfile::tempdir().unwrap();
    let spool = PgSpool::open(&url, None, &key(&dir, true), "node-a", LEASE)
        .await
        .unwrap();
    // Queued before the writer runs (one thread): one batch of three.
    let first = message(&*spool, "t", &["x@one.test", "y@two.test"], "one");
    let mut twin = message(&*spool, "t", &["y@one.test"], "two");
    twin.id = first.id;
    let third = message(&*spool, "u", &["z@one.test"], "three");
    let (ids, third_id) = (first.id, third.id);
    let (a, b, c) = tokio::join!(spool.store(first), spool.store(twin), spool.store(third));
    assert!(a.is_ok(), "{a:?}");
    assert!(b.is_err(), "a second message with the same id is refused");
    assert!(c.is_ok(), "{c:?}");
    let job = spool.load(ids, "two.test").await.unwrap().expect("stored");
    assert_eq!(job.body, b"one");
    assert_eq!(
        spool
            .load(third_id, "one.test")
            .await
            .unwrap()
            .unwrap()
            .body,
        b"three"
    );
    let client = raw(&url).await;
    assert_eq!(verify_chain(&client, "t").await, 1);
    assert_eq!(verify_chain(&client, "u").await, 1);

    // Many at once, as busy sessions give them: every one stored, in one chain.
    let stores: Vec<_> = (0..40)
        .map(|i| message(&*spool, "t", &[&format!("r{i}@many.test")], "m"))
        .collect();
    let results = futures_util::future::join_all(stores.into_iter().map(|m| spool.store(m))).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(verify_chain(&client, "t").await, 41);
    assert_eq!(
        spool
            .list(ListPage {
                limit: 1000,
                ..ListPage::default()
            })
            .await
            .unwrap()
            .len(),
        42
    );
}

#[tokio::test]
async fn attempts_recorded_together_keep_each_ones_outcome() {
    let url = database("records").await;
    let dir = tempfile::tempdir().unwrap();
    let spool = PgSpool::open(&url, None, &key(&dir, true), "node-a", LEASE)
        .await
        .unwrap();
    let ms: Vec<NewMessage> = (0..3)
        .map(|i| message(&*spool, "t", &[&format!("r{i}@one.test")], "x"))
        .collect();
    let ids: Vec<QueueId> = ms.iter().map(|m| m.id).collect();
    for m in ms {
        spool.store(m).await.unwrap();
    }
    assert!(spool.delete(ids[2], operator()).await.unwrap());
    let now = 500;
    let delivered = attempt(
        ids[0],
        "t",
        vec![(
            0,
            RecipientOutcome::Delivered {
                reply: "250 ok".into(),
            },
        )],
        now,
    );
    let deferred = attempt(
        ids[1],
        "t",
        vec![(
            0,
            RecipientOutcome::Deferred {
                reply: "451 later".into(),
                next_attempt: now + 60,
            },
        )],
        now,
    );
    let late = attempt(
        ids[2],
        "t",
        vec![(
            0,
            RecipientOutcome::Delivered {
                reply: "250 ok".into(),
            },
        )],
        now,
    );
    // One thread: the three are queued before the writer runs, one batch.
    let (a, b, c) = tokio::join!(
        spool.record(delivered),
        spool.record(deferred),
        spool.record(late)
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    assert!(a.finished && !a.gone, "{a:?}");
    assert!(!b.finished && !b.gone, "{b:?}");
    assert!(c.gone, "{c:?}");
    assert!(
        spool.show(ids[0]).await.unwrap().is_none(),
        "finished, purged at once"
    );
    let kept = spool.show(ids[1]).await.unwrap().expect("still queued");
    assert_eq!(kept.recipients[0].attempts, 1);
    assert_eq!(kept.recipients[0].next_attempt, now + 60);
    assert_eq!(kept.recipients[0].last_reply.as_deref(), Some("451 later"));
    let client = raw(&url).await;
    // 3 received, 1 deleted, 3 attempts (the late one too: it happened).
    assert_eq!(verify_chain(&client, "t").await, 7);
}

/// What `sealgate queue hold|release` and the console's queue page ask of
/// a spool, the same of both: `node` delivers, `other` acts.
async fn holds_releases_and_pages(node: &dyn Spool, other: &dyn Spool) {
    let mut ids = Vec::new();
    for (tenant, n) in [("t", 5), ("u", 3)] {
        for i in 0..n {
            let m = message(
                node,
                tenant,
                &["x@one.test", "y@two.test"],
                &format!("m{i}"),
            );
            ids.push(m.id);
            node.store(m).await.unwrap();
        }
    }
    ids.sort();
    let id = ids[0];
    let now = sealgate::util::now();
    assert_eq!(
        other.hold(id, operator(), now).await.unwrap(),
        HoldOutcome::Done(vec![])
    );
    assert_eq!(
        other.hold(id, operator(), now).await.unwrap(),
        HoldOutcome::Unchanged
    );
    assert_eq!(
        other.hold(QueueId(1), operator(), now).await.unwrap(),
        HoldOutcome::Missing
    );
    // Held: not delivered, not on the schedule, not retried, not flushed.
    assert!(node.load(id, "one.test").await.unwrap().is_none());
    assert!(node.pending().await.unwrap().iter().all(|j| j.id != id));
    assert!(node.retry(id, now).await.unwrap().is_empty());
    assert!(
        node.retry_all(now)
            .await
            .unwrap()
            .iter()
            .all(|j| j.id != id)
    );
    assert!(node.show(id).await.unwrap().unwrap().held);
    // An operator's bounce still finds it, every domain at once.
    let all = other.load_all(id).await.unwrap().unwrap();
    assert_eq!(all.recipients.len(), 2);

    // Pages: oldest first, from after an id on, one tenant or all.
    let page = |after, limit, tenant: Option<&str>| ListPage {
        after,
        limit,
        tenant: tenant.map(str::to_string),
    };
    let first = other.list(page(None, 3, None)).await.unwrap();
    assert_eq!(first.iter().map(|m| m.id).collect::<Vec<_>>(), ids[..3]);
    assert!(first[0].held && !first[1].held);
    let rest = other.list(page(Some(ids[2]), 100, None)).await.unwrap();
    assert_eq!(rest.iter().map(|m| m.id).collect::<Vec<_>>(), ids[3..]);
    let u = other.list(page(None, 100, Some("u"))).await.unwrap();
    assert_eq!(u.len(), 3);
    assert!(
        u.iter()
            .all(|m| m.tenant.0 == "u" && m.pending == 2 && m.recipients == 2)
    );
    let u2 = other.list(page(Some(u[0].id), 1, Some("u"))).await.unwrap();
    assert_eq!(u2.iter().map(|m| m.id).collect::<Vec<_>>(), [u[1].id]);

    // Released: due now, and delivered by whoever released it.
    let HoldOutcome::Done(mut jobs) = other.release(id, operator(), now).await.unwrap() else {
        panic!("not released");
    };
    jobs.sort_by(|a, b| a.domain.cmp(&b.domain));
    assert_eq!(
        jobs.iter()
            .map(|j| (j.id, j.domain.as_str(), j.due))
            .collect::<Vec<_>>(),
        [(id, "one.test", now), (id, "two.test", now)]
    );
    assert!(other.load(id, "two.test").await.unwrap().is_some());
    assert_eq!(
        other.release(id, operator(), now).await.unwrap(),
        HoldOutcome::Unchanged
    );
    assert!(!other.show(id).await.unwrap().unwrap().held);
}

#[tokio::test]
async fn an_operator_holds_and_releases_and_the_queue_is_read_in_pages() {
    let url = database("hold").await;
    let dir = tempfile::tempdir().unwrap();
    let a = PgSpool::open(&url, None, &key(&dir, true), "node-a", LEASE)
        .await
        .unwrap();
    let b = PgSpool::open(&url, None, &key(&dir, false), "node-b", LEASE)
        .await
        .unwrap();
    holds_releases_and_pages(&*a, &*b).await;
    // Both changes are in t's chain, after the message's own records.
    let client = raw(&url).await;
    let kinds: Vec<String> = client
        .query("SELECT kind FROM txlog WHERE kind = 'held'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(kinds.len(), 2);
    verify_chain(&client, "t").await;

    let sqlite = tempfile::tempdir().unwrap();
    let spool = SqliteSpool::open(&sqlite.path().join("sealgate.db"), &key(&sqlite, true)).unwrap();
    holds_releases_and_pages(&*spool, &*spool).await;
}
