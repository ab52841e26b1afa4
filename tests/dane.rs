//! DNSSEC, DANE (RFC 7672) and MTA-STS (RFC 8461) against real peers:
//! Knot DNS serving signed zones under a test root, a Postfix MX with a
//! test-CA certificate, MTA-STS policies over HTTPS. Tests are named after
//! the section they prove.

mod support;
#[path = "support/world.rs"]
mod world;

use std::time::Duration;

use serde_json::Value;
use support::*;
use world::world;

const T: Duration = Duration::from_secs(30);

fn gateway() -> Gateway {
    let w = world();
    Gateway::start_with(|dir, relay, sub| w.config(dir, relay, sub))
}

/// Sends one message to `rcpt` through the gateway; returns its queue id.
fn send(gw: &Gateway, rcpt: &str) -> String {
    let mut c = Client::connect(gw.relay);
    c.cmd("EHLO client.test");
    let reply = c.message(
        "sender@src.test",
        &[rcpt],
        message(&unique("m"), "secret\r\n").as_bytes(),
    );
    assert!(reply.starts_with("250"), "{reply}");
    reply.trim().rsplit(' ').next().unwrap().to_string()
}

/// `sealgate check DOMAIN --json`, parsed.
fn check(gw: &Gateway, domain: &str) -> Value {
    let out = gw.cli(&["check", domain, "--json"]);
    assert!(
        out.status.success(),
        "check {domain}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("check --json prints JSON")
}

fn status<'a>(host: &'a Value, name: &str) -> (&'a str, &'a str) {
    let c = host["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {host}"));
    (c["status"].as_str().unwrap(), c["detail"].as_str().unwrap())
}

/// Waits until the message was tried and is still pending; returns the reason.
fn deferred_reason(gw: &Gateway, id: &str) -> String {
    let shown = wait_for(T, "a deferred attempt", || {
        let out = gw.cli(&["queue", "show", id, "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let r = &v["recipients"][0];
        (r["attempts"].as_u64()? >= 1 && r["status"] == "pending").then_some(v)
    });
    shown["recipients"][0]["last_reply"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn delivered(rcpt: &str) -> Vec<Vec<u8>> {
    wait_for(T, &format!("delivery to {rcpt}"), || {
        let m = world().mails(rcpt);
        (!m.is_empty()).then_some(m)
    })
}

#[test]
fn rfc7672_3_1_1_dane_ee_match_delivers_authenticated() {
    let gw = gateway();
    let rcpt = format!("{}@ee.dane.test", unique("ee"));
    send(&gw, &rcpt);
    delivered(&rcpt);
    let v = check(&gw, "ee.dane.test");
    let mx = &v["mx"][0];
    assert_eq!(mx["host"], "mx.ee.dane.test");
    assert_eq!(mx["level"], "authenticated", "{v:#}");
    let (s, d) = status(mx, "dane");
    assert_eq!(s, "pass", "{d}");
    assert!(d.contains("DANE-EE") && d.contains("3 1 1"), "{d}");
    let (s, d) = status(mx, "dnssec");
    assert_eq!(s, "pass", "{d}");
    assert!(d.contains("TLSA secure"), "{d}");
    let line = wait_delivery_line(&gw, &rcpt, "sent");
    assert_eq!(line["reached"], "authenticated", "{line:?}");
}

#[test]
fn rfc7672_3_1_2_dane_ta_match_checks_chain_and_name() {
    let gw = gateway();
    let rcpt = format!("{}@ta.dane.test", unique("ta"));
    send(&gw, &rcpt);
    delivered(&rcpt);
    let v = check(&gw, "ta.dane.test");
    let (s, d) = status(&v["mx"][0], "dane");
    assert_eq!(s, "pass", "{d}");
    assert!(
        d.contains("DANE-TA") && d.contains("sealgate test CA") && d.contains("mx.ta.dane.test"),
        "{d}"
    );
    assert_eq!(v["level"], "authenticated");
}

#[test]
fn rfc7672_3_2_2_dane_ta_needs_the_mx_name_in_the_certificate() {
    let gw = gateway();
    let rcpt = format!("{}@taname.dane.test", unique("taname"));
    let id = send(&gw, &rcpt);
    let reason = deferred_reason(&gw, &id);
    assert!(reason.contains("DANE authentication failed"), "{reason}");
    assert!(world().mails(&rcpt).is_empty());
    let v = check(&gw, "taname.dane.test");
    let mx = &v["mx"][0];
    let (s, d) = status(mx, "dane");
    assert_eq!(s, "fail");
    assert!(
        d.contains("sealgate test CA") && d.contains("not valid for mx.taname.dane.test"),
        "{d}"
    );
    // Good TLS, refused: the domain gets no mail, and says so.
    assert_eq!(mx["observed_level"], "encrypted", "{v:#}");
    assert!(mx["level"].is_null(), "{v:#}");
    assert_eq!(refusals(mx), ["dane_failed"]);
    assert!(v["level"].is_null(), "{v:#}");
    assert_eq!(v["observed_level"], "encrypted");
    assert_log_agrees(&gw, &id, mx);
}

#[test]
fn rfc7672_2_2_only_unusable_tlsa_means_tls_without_authentication() {
    let gw = gateway();
    let rcpt = format!("{}@unusable.dane.test", unique("unusable"));
    send(&gw, &rcpt);
    delivered(&rcpt);
    let v = check(&gw, "unusable.dane.test");
    let mx = &v["mx"][0];
    let (s, d) = status(mx, "dane");
    assert_eq!(s, "not_applicable");
    assert!(d.contains("none usable"), "{d}");
    // PKIX-TA(1) is not how SMTP authenticates (§3.1.3): encrypted, no more.
    assert_eq!(status(mx, "hostname").0, "fail");
    assert_eq!(mx["level"], "encrypted");
}

#[test]
fn rfc7672_2_2_tlsa_mismatch_defers_and_never_downgrades() {
    let gw = gateway();
    let rcpt = format!("{}@mismatch.dane.test", unique("mismatch"));
    let id = send(&gw, &rcpt);
    let reason = deferred_reason(&gw, &id);
    assert!(reason.contains("DANE authentication failed"), "{reason}");
    assert!(world().mails(&rcpt).is_empty(), "nothing was delivered");
    // The certificate is PKIX-valid for the name; DANE alone decides.
    let v = check(&gw, "mismatch.dane.test");
    let mx = &v["mx"][0];
    assert_eq!(status(mx, "pkix").0, "pass");
    assert_eq!(status(mx, "dane").0, "fail");
    assert_eq!(mx["observed_level"], "encrypted", "{v:#}");
    assert!(mx["level"].is_null(), "{v:#}");
    assert_eq!(refusals(mx), ["dane_failed"]);
    assert!(mx["error"].as_str().unwrap().contains("RFC 7672"), "{v:#}");
    // Never "plaintext": no host may carry mail, and what was seen is named.
    assert!(v["level"].is_null(), "{v:#}");
    assert_eq!(v["observed_level"], "encrypted");
    assert_log_agrees(&gw, &id, mx);
    let logged = attempts(&gw, &id).pop().unwrap();
    assert_eq!(logged["recipients"][0]["reason_code"], "hosts_refused");
    assert_eq!(logged["verdict"]["refusals"][0]["reason"], "dane_failed");
}

#[test]
fn rfc7672_2_2_a_failing_host_gives_way_to_the_next_mx() {
    let gw = gateway();
    let rcpt = format!("{}@fallback.dane.test", unique("fallback"));
    send(&gw, &rcpt);
    delivered(&rcpt);
    let v = check(&gw, "fallback.dane.test");
    assert_eq!(v["mx"][0]["host"], "mx.mismatch.dane.test");
    assert_eq!(status(&v["mx"][0], "dane").0, "fail");
    assert_eq!(v["mx"][1]["host"], "mx.ee.dane.test");
    assert_eq!(status(&v["mx"][1], "dane").0, "pass");
    assert_eq!(v["level"], "authenticated");
}

#[test]
fn rfc7672_2_2_1_servfail_on_tlsa_means_the_host_is_not_used() {
    let gw = gateway();
    let rcpt = format!("{}@servfail.dane.test", unique("servfail"));
    let id = send(&gw, &rcpt);
    let reason = deferred_reason(&gw, &id);
    assert!(
        reason.contains("TLSA") && reason.contains("not used"),
        "{reason}"
    );
    assert!(world().mails(&rcpt).is_empty());
    let v = check(&gw, "servfail.dane.test");
    let mx = &v["mx"][0];
    assert!(
        mx["error"].as_str().unwrap().contains("Server Failure"),
        "{v:#}"
    );
    // A failing check names it, not only the free text.
    assert_eq!(status(mx, "dane").0, "error", "{v:#}");
    assert_eq!(status(mx, "dnssec").0, "error", "{v:#}");
    assert_eq!(refusals(mx), ["tlsa_lookup_failed"]);
    assert!(mx["observed_level"].is_null() && mx["level"].is_null());
    assert_log_agrees(&gw, &id, mx);
}

#[test]
fn rfc4035_5_bogus_mx_answer_is_never_used() {
    let gw = gateway();
    let rcpt = format!("{}@bogus.test", unique("bogus"));
    let id = send(&gw, &rcpt);
    let reason = deferred_reason(&gw, &id);
    assert!(reason.contains("DNSSEC-bogus"), "{reason}");
    assert!(world().mails(&rcpt).is_empty());
    // RFC 4035 §5: bogus is a failing dnssec check at domain level.
    let v = check(&gw, "bogus.test");
    assert_eq!(status(&v, "dnssec").0, "fail", "{v:#}");
    assert!(v["level"].is_null() && v["observed_level"].is_null());
    let logged = attempts(&gw, &id).pop().unwrap();
    assert_eq!(failing(&logged), failing(&v), "{logged:#}");
    assert_eq!(logged["recipients"][0]["reason_code"], "unroutable");
}

#[test]
fn resolver_down_defers_with_the_dns_reason() {
    let w = world();
    let dead = free_port();
    let gw = Gateway::start_with(|dir, relay, sub| {
        w.config(dir, relay, sub).replace(
            &format!("servers = [\"127.0.0.1:{}\"]", world::KNOT_PORT),
            &format!("servers = [\"127.0.0.1:{dead}\"]\ntimeout = \"1s\"\nattempts = 1"),
        )
    });
    let rcpt = format!("{}@ee.dane.test", unique("nodns"));
    let id = send(&gw, &rcpt);
    let reason = deferred_reason(&gw, &id);
    assert!(
        reason.contains("ee.dane.test: DNS lookup failed"),
        "{reason}"
    );
    assert!(world().mails(&rcpt).is_empty());
}

#[test]
fn rfc7672_2_2_unsigned_zone_has_no_dane_and_pkix_decides() {
    let gw = gateway();
    let rcpt = format!("{}@unsigned.test", unique("unsigned"));
    send(&gw, &rcpt);
    delivered(&rcpt);
    let v = check(&gw, "unsigned.test");
    let mx = &v["mx"][0];
    // The zone even publishes a non-matching TLSA record: insecure, so ignored.
    assert_eq!(status(mx, "dane").0, "not_applicable");
    let (s, d) = status(mx, "dnssec");
    assert_eq!(s, "fail");
    assert!(d.contains("zone unsigned"), "{d}");
    assert_eq!(status(mx, "pkix").0, "pass");
    assert_eq!(status(mx, "hostname").0, "pass");
    assert_eq!(mx["level"], "authenticated");
}

#[test]
fn rfc7672_2_2_2_cname_mx_host_uses_the_expanded_tlsa_base() {
    let gw = gateway();
    let rcpt = format!("{}@cname.dane.test", unique("cname"));
    send(&gw, &rcpt);
    delivered(&rcpt);
    let v = check(&gw, "cname.dane.test");
    let mx = &v["mx"][0];
    assert_eq!(mx["host"], "mx.cname.dane.test");
    // The TLSA record exists only at the CNAME target.
    let (s, d) = status(mx, "dane");
    assert_eq!(s, "pass", "{d}");
    assert_eq!(status(mx, "dnssec").0, "pass");
}

#[test]
fn rfc8461_4_1_enforce_with_matching_mx_delivers() {
    let gw = gateway();
    let rcpt = format!("{}@enforce.sts.test", unique("enforce"));
    send(&gw, &rcpt);
    delivered(&rcpt);
    let v = check(&gw, "enforce.sts.test");
    let (s, d) = status(&v["mx"][0], "mta_sts");
    assert_eq!(s, "pass", "{d}");
    assert!(d.contains("mode enforce"), "{d}");
}

#[test]
fn rfc8461_4_1_enforce_with_non_matching_mx_defers() {
    let gw = gateway();
    let rcpt = format!("{}@badmx.sts.test", unique("badmx"));
    let id = send(&gw, &rcpt);
    let reason = deferred_reason(&gw, &id);
    assert!(
        reason.contains("MTA-STS enforce") && reason.contains("does not match"),
        "{reason}"
    );
    assert!(world().mails(&rcpt).is_empty());
    let v = check(&gw, "badmx.sts.test");
    let mx = &v["mx"][0];
    assert_eq!(status(mx, "mta_sts").0, "fail", "{v:#}");
    assert_eq!(refusals(mx), ["not_in_mta_sts_policy"]);
    assert!(v["level"].is_null(), "{v:#}");
    assert_log_agrees(&gw, &id, mx);
}

#[test]
fn rfc8461_5_testing_mode_delivers_and_records_the_failure() {
    let gw = gateway();
    let rcpt = format!("{}@testing.sts.test", unique("testing"));
    send(&gw, &rcpt);
    delivered(&rcpt);
    let v = check(&gw, "testing.sts.test");
    let mx = &v["mx"][0];
    let (s, d) = status(mx, "mta_sts");
    assert_eq!(s, "fail");
    assert!(
        d.contains("testing mode") && d.contains("not valid for mx.testing.sts.test"),
        "{d}"
    );
    assert_eq!(status(mx, "hostname").0, "fail");
    assert!(mx["error"].is_null(), "testing mode does not block: {v:#}");
    assert_eq!(mx["level"], "encrypted");
}

#[test]
fn check_prints_a_readable_verdict() {
    let gw = gateway();
    let out = gw.cli(&["check", "ee.dane.test"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.starts_with("ee.dane.test: authenticated"), "{text}");
    assert!(
        text.contains("MX 10 mx.ee.dane.test [127.0.1.1]: authenticated"),
        "{text}"
    );
    assert!(text.contains("dane          pass"), "{text}");
    // A domain that does not exist: the check ran, and says so.
    let out = gw.cli(&["check", "nx.dane.test"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("does not exist"));
}

/// RFC 7766 §6.2.1 (RFC 1035 §4.2.1): an answer too large for UDP comes
/// back truncated; the resolver asks again over TCP, and DANE still
/// decides with the whole, validated RRset.
#[test]
fn rfc7766_a_truncated_answer_is_asked_again_over_tcp() {
    world();
    let udp = std::process::Command::new("kdig")
        .args(["@127.0.0.1", "-p", &world::KNOT_PORT.to_string()])
        // 4096 bytes: the most any resolver offers over UDP.
        .args(["+notcp", "+dnssec", "+bufsize=4096", "+ignore"])
        .arg(format!("_{}._tcp.mx.big.test", world::MX_PORT))
        .arg("TLSA")
        .output()
        .expect("kdig (knot-dnsutils)");
    let udp = String::from_utf8_lossy(&udp.stdout);
    assert!(
        udp.lines().any(|l| l.contains("Flags:")
            && l.split_whitespace()
                .any(|f| f.trim_end_matches(';') == "tc")),
        "the UDP answer is truncated: {udp}"
    );
    let gw = gateway();
    let host = &check(&gw, "big.test")["mx"][0];
    assert_eq!(status(host, "dane").0, "pass", "{host}");
    let rcpt = format!("{}@big.test", unique("tcp"));
    send(&gw, &rcpt);
    delivered(&rcpt);
}

/// At start the gateway says whether DNSSEC can work through its resolver:
/// quietly fine with one that passes signatures (Knot here), and in words
/// with one that does not answer, instead of every domain looking bogus.
#[test]
fn the_resolver_is_checked_at_start() {
    let gw = gateway();
    wait_for(T, "the resolver check", || {
        gw.log()
            .contains("answer with DNSSEC signatures that validate")
            .then_some(())
    });
    let w = world();
    let silent = Gateway::start_with(|dir, relay, sub| {
        // Nothing listens on the discard port: no answer at all.
        w.config(dir, relay, sub).replace(
            &format!("127.0.0.1:{}\"]", world::KNOT_PORT),
            "127.0.0.1:9\"]",
        )
    });
    let said = wait_for(T, "the warning about the resolver", || {
        let log = silent.log();
        log.contains("DNS: no answer from 127.0.0.1:9")
            .then_some(log)
    });
    assert!(said.contains("WARN"), "{said}");
}

/// The resolver's cache, as `/metrics` reports it: the second message to
/// a domain finds its MX, address and TLSA answers cached.
#[test]
fn a_second_delivery_is_answered_from_the_dns_cache() {
    let w = world();
    let port = free_port();
    let gw = Gateway::start_with(|dir, relay, sub| {
        format!(
            "{}\n[console]\naddress = \"127.0.0.1:{port}\"\n",
            w.config(dir, relay, sub)
        )
    });
    let lookups = || -> (f64, f64) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let body = rt.block_on(async {
            reqwest::Client::builder()
                // The gateway's own self-signed certificate.
                .danger_accept_invalid_certs(true)
                .build()
                .unwrap()
                .get(format!("https://127.0.0.1:{port}/metrics"))
                .send()
                .await
                .expect("a scrape")
                .text()
                .await
                .unwrap()
        });
        let lines = body.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
        let count = |result: &str| -> f64 {
            scrape
                .samples
                .iter()
                .filter(|s| s.metric == "sealgate_dns_cache_lookups_total")
                .filter(|s| s.labels.get("result") == Some(result))
                .map(|s| match s.value {
                    prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
                    _ => 0.0,
                })
                .sum()
        };
        (count("hit"), count("miss"))
    };
    wait_for(T, "the console to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let rcpt = format!("{}@ee.dane.test", unique("cache"));
    send(&gw, &rcpt);
    delivered(&rcpt);
    let (hits, misses) = lookups();
    assert!(misses >= 3.0, "MX, address and TLSA asked: {misses} misses");
    let rcpt = format!("{}@ee.dane.test", unique("cache"));
    send(&gw, &rcpt);
    delivered(&rcpt);
    let (hits_after, misses_after) = lookups();
    assert!(
        hits_after >= hits + 3.0,
        "the second delivery's MX, address and TLSA from the cache: hits {hits} -> {hits_after}, misses {misses} -> {misses_after}"
    );
}

/// RFC 8461 §5.1 across a cluster: a policy one node fetched guards the
/// other node's first delivery to the domain, even when that node cannot
/// reach the policy host (here: its fetches go to a closed port, as an
/// attacker who blocks them would make them fail). Without the shared
/// cache the second node would find no policy and deliver to an MX the
/// policy does not list.
#[test]
fn rfc8461_5_1_a_policy_cached_by_one_node_holds_on_another() {
    let url = pg_database(pg_server(), "sts_cache");
    let shared = tempfile::tempdir().unwrap();
    let node = |name: &str, blocked: bool| {
        let w = world();
        Gateway::start_with(|dir, relay, sub| {
            let mut text = w.config(dir, relay, sub);
            if blocked {
                text = text.replace(
                    &format!("https_port = {}", world::HTTPS_PORT),
                    "https_port = 1",
                );
            }
            format!(
                "{text}\n[storage]\nurl = \"{url}\"\n\n[cluster]\nnode = \"{name}\"\n\n\
                 [spool]\nkey_file = \"{}\"\n",
                shared.path().join("spool.key").display()
            )
        })
    };
    let first = node("first", false);
    let rcpt = format!("{}@badmx.sts.test", unique("fetched"));
    let id = send(&first, &rcpt);
    let reason = deferred_reason(&first, &id);
    assert!(reason.contains("does not match"), "{reason}");

    let second = node("second", true);
    let rcpt = format!("{}@badmx.sts.test", unique("cached"));
    let id = send(&second, &rcpt);
    let reason = deferred_reason(&second, &id);
    assert!(
        reason.contains("MTA-STS enforce") && reason.contains("does not match"),
        "{reason}"
    );
    assert!(world().mails(&rcpt).is_empty());
}
