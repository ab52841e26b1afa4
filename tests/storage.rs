//! The PostgreSQL spool against a real PostgreSQL server (the machine's
//! own at 127.0.0.1:5432, else a private cluster that
//! tests/peers/postgres.sh makes): each test on a database of its own.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, OnceLock};

use sealgate::message::{Content, Envelope, Notify, Recipient, Ret, TenantId, TlsRequest};
use sealgate::report::event::{Deleted, VERSION};
use sealgate::report::log::Verified;
use sealgate::report::{Event, EventData};
use sealgate::spool::{
    AttemptRecord, DueJob, KeyFile, NewMessage, PgSpool, QueueId, RecipientOutcome, Spool,
};

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
            v: VERSION,
            by: by.into(),
        }),
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
    let spool = PgSpool::open(&url, &key(&dir, true), "node-a")
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
    let spool = PgSpool::open(&url, &key(&dir, true), "node-a")
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
    let list = spool.list().await.unwrap();
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
    let list = spool.list().await.unwrap();
    assert_eq!(list.len(), 1, "only the DSN is queued");
    assert!(spool.delete(list[0].id).await.unwrap());
    assert!(spool.list().await.unwrap().is_empty());
    // received, attempt, received (DSN), attempt, deleted
    assert_eq!(verify_chain(&client, "t").await, 5);
}

#[tokio::test]
async fn two_nodes_appending_to_one_chain_take_turns() {
    let url = database("chain").await;
    let dir = tempfile::tempdir().unwrap();
    let a = PgSpool::open(&url, &key(&dir, true), "node-a")
        .await
        .unwrap();
    let b = PgSpool::open(&url, &key(&dir, false), "node-b")
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
        a.list().await.unwrap().len(),
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
    let spool = PgSpool::open(&url, &key(&dir, true), "node-a")
        .await
        .unwrap();
    let m = message(&*spool, "t", &["x@one.test"], "kept");
    spool.store(m).await.unwrap();
    drop(spool);

    // The key file gone: refused, nothing lost.
    let elsewhere = tempfile::tempdir().unwrap();
    let err = PgSpool::open(&url, &key(&elsewhere, true), "node-a")
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
    let err = PgSpool::open(&url, &key(&dir, true), "node-a")
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
async fn a_job_is_leased_to_one_node_and_taken_over_when_the_lease_runs_out() {
    let url = database("lease").await;
    let dir = tempfile::tempdir().unwrap();
    let a = PgSpool::open(&url, &key(&dir, true), "node-a")
        .await
        .unwrap();
    let b = PgSpool::open(&url, &key(&dir, false), "node-b")
        .await
        .unwrap();
    assert!(a.shared());
    let m = message(&*a, "t", &["x@one.test", "y@two.test"], "x");
    let id = m.id;
    a.store(m).await.unwrap();
    let now = 1_000;
    // Due and held by no one: both nodes see both jobs.
    assert_eq!(b.unclaimed(now, 10).await.unwrap().len(), 2);
    assert!(a.claim(id, "one.test", now, now + 60).await.unwrap());
    assert!(
        !b.claim(id, "one.test", now, now + 60).await.unwrap(),
        "held by a"
    );
    assert!(
        a.claim(id, "one.test", now, now + 60).await.unwrap(),
        "a may claim again"
    );
    let seen = b.unclaimed(now, 10).await.unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].domain, "two.test");
    // a's heartbeat keeps it; once a stops renewing, the lease runs out.
    a.renew(now + 120).await.unwrap();
    assert!(!b.claim(id, "one.test", now + 100, now + 160).await.unwrap());
    assert_eq!(b.unclaimed(now + 121, 10).await.unwrap().len(), 2);
    assert!(
        b.claim(id, "one.test", now + 121, now + 181).await.unwrap(),
        "taken over"
    );
    assert!(
        !a.claim(id, "one.test", now + 122, now + 182).await.unwrap(),
        "a lost it"
    );
    // The record of b's attempt ends b's lease; a gone message cannot be claimed.
    b.record(attempt(
        id,
        "t",
        vec![(
            0,
            RecipientOutcome::Deferred {
                reply: "451 later".into(),
                next_attempt: now + 300,
            },
        )],
        now + 130,
    ))
    .await
    .unwrap();
    assert!(
        a.claim(id, "one.test", now + 130, now + 190).await.unwrap(),
        "free again"
    );
    assert!(a.delete(id).await.unwrap());
    assert!(!b.claim(id, "two.test", now + 200, now + 260).await.unwrap());
    assert!(a.unclaimed(now + 1_000, 10).await.unwrap().is_empty());
}
