//! Table tests that pin the verdict's semantics, one row per outcome of
//! RFC 7672 (DANE for SMTP), RFC 8461 (MTA-STS) and revocation: the
//! observed level, whether the host may carry mail and why not, the
//! failing checks, and the policy's decision for a normal and a high
//! message. The end-to-end tests (tests/dane.rs, tests/certificates.rs)
//! assert the same of `check --json` and of the log against real peers.

use super::bsi::Profile;
use super::judge::{connection_checks, refusals};
use super::mta_sts::{Mode, Policy};
use super::route::{Candidate, HostPlan, Target, not_in_policy, tlsa_lookup_failed};
use super::verifier::CertEvidence;
use super::*;
use crate::dns::{DnsError, Tlsa};
use crate::policy::{Fallback, History, ReasonCode, Required, Requirement, RiskClass};
use CheckName::*;
use Status::*;

fn target() -> Target {
    Target {
        host: "mx.d.test".into(),
        preference: 10,
        port: 25,
    }
}

fn check(name: CheckName, status: Status) -> Check {
    Check::new(name, status, format!("{name} {status}"))
}

/// A host whose MX and address records are DNSSEC-secure, with usable
/// TLSA records when `dane`, governed by `sts` otherwise.
fn candidate(dane: bool, sts: Option<Mode>) -> Candidate {
    Candidate {
        target: target(),
        addresses: vec![],
        names: vec!["mx.d.test".into()],
        tlsa: if dane {
            vec![Tlsa {
                usage: 3,
                selector: 1,
                matching: 1,
                data: vec![0; 32],
            }]
        } else {
            vec![]
        },
        require_tls: match (dane, sts) {
            (true, _) => Some("usable TLSA records published (DANE)".into()),
            (false, Some(Mode::Enforce)) => Some("MTA-STS policy in enforce mode".into()),
            _ => None,
        },
        dnssec: check(Dnssec, Pass),
        dane: Check::new(Dane, NotApplicable, "no TLSA records"),
        sts: sts.map(|mode| Policy {
            id: "1".into(),
            mode,
            mx: vec!["mx.d.test".into()],
            max_age: 86_400,
            expires: i64::MAX,
        }),
        sts_detail: "policy id 1 fetched".into(),
        ttl: 300,
    }
}

/// A TLS 1.3 session within every BSI profile.
fn negotiated() -> TlsOutcome {
    TlsOutcome::Negotiated(TlsFacts {
        version: "TLSv1.3".into(),
        cipher_suite: "TLS13_AES_256_GCM_SHA384".into(),
        kx_group: Some("secp384r1".into()),
        peer_key: Some(PeerKey {
            algorithm: "ECDSA P-384".into(),
            bits: 384,
        }),
        chain: vec![],
        ocsp_stapled: false,
    })
}

/// What the verifier found: `dane` only where TLSA records were given.
fn evidence(pkix: Status, hostname: Status, dane: Option<Status>) -> CertEvidence {
    CertEvidence {
        pkix: check(Pkix, pkix),
        hostname: check(Hostname, hostname),
        dane: dane.map(|s| check(Dane, s)),
        chain: vec![],
        staple: vec![],
    }
}

/// The verdict of a connection, as `Qualifier::judge` builds it.
fn judge(c: &Candidate, tls: TlsOutcome, e: Option<CertEvidence>, revocation: Status) -> Verdict {
    let e = e.filter(|_| tls.facts().is_some());
    let checks = connection_checks(
        c,
        &tls,
        e.as_ref(),
        check(Revocation, revocation),
        Profile::BsiStrict,
    );
    let refused = refusals(c, &tls, &checks);
    Verdict::new(
        ("d.test", "mx.d.test", "192.0.2.1"),
        checks,
        refused,
        None,
        0,
    )
}

fn requirement(class: RiskClass, accept_revocation_unavailable: bool) -> Requirement {
    let (required, fallback) = match class {
        RiskClass::Normal => (Required::Level(Level::Encrypted), Fallback::Defer),
        _ => (Required::Level(Level::Qualified), Fallback::Seal),
    };
    Requirement {
        require_tls: false,
        end_to_end: None,
        class,
        required,
        fallback,
        accept_revocation_unavailable,
        basis: vec![],
    }
}

/// The decision for a message of `class` when this is the only host.
fn decision(v: &Verdict, class: RiskClass) -> (&'static str, Option<ReasonCode>) {
    let req = requirement(class, false);
    let action = if v.usable() {
        req.decide(Some(v), History::Ordinary, 0)
    } else {
        req.decide_without_host(&[format!("mx.d.test: {}", v.refusals[0])], "")
    };
    (action.name(), action.reason().map(|r| r.code))
}

fn failing(v: &Verdict) -> Vec<(CheckName, Status)> {
    v.failing().map(|c| (c.name, c.status)).collect()
}

fn reasons(v: &Verdict) -> Vec<RefusalReason> {
    v.refusals.iter().map(|r| r.reason).collect()
}

struct Row {
    section: &'static str,
    verdict: Verdict,
    observed: Level,
    refused: &'static [RefusalReason],
    failing: &'static [(CheckName, Status)],
    normal: (&'static str, Option<ReasonCode>),
    high: (&'static str, Option<ReasonCode>),
}

fn assert_rows(rows: Vec<Row>) {
    let mut wrong = Vec::new();
    for r in rows {
        let v = &r.verdict;
        let got = (
            v.observed_level,
            reasons(v),
            failing(v),
            decision(v, RiskClass::Normal),
            decision(v, RiskClass::High),
        );
        let want = (
            r.observed,
            r.refused.to_vec(),
            r.failing.to_vec(),
            r.normal,
            r.high,
        );
        if got != want {
            wrong.push(format!("{}:\n  got  {got:?}\n  want {want:?}", r.section));
        }
        // Usable exactly when nothing refuses it; its level then is what was seen.
        assert_eq!(v.level, r.refused.is_empty().then_some(r.observed));
        // Every refusal is backed by a failing check of the same verdict.
        for reason in reasons(v) {
            assert!(
                v.failing().any(|c| c.name == reason.check()),
                "{}: {reason:?} without a failing {}",
                r.section,
                reason.check()
            );
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

const DEFER_REFUSED: (&str, Option<ReasonCode>) = ("defer", Some(ReasonCode::HostsRefused));
const DELIVER: (&str, Option<ReasonCode>) = ("deliver", None);
const SEAL_BELOW: (&str, Option<ReasonCode>) = ("seal", Some(ReasonCode::BelowRequired));
const DEFER_BELOW: (&str, Option<ReasonCode>) = ("defer", Some(ReasonCode::BelowRequired));

#[test]
fn rfc7672_dane_outcomes() {
    let dane = candidate(true, None);
    assert_rows(vec![
        Row {
            // §3.1.1: DANE-EE match; no revocation needed, the record vouches.
            section: "RFC 7672 §3.1.1 DANE-EE match",
            verdict: judge(
                &dane,
                negotiated(),
                Some(evidence(Fail, Fail, Some(Pass))),
                NotApplicable,
            ),
            observed: Level::Qualified,
            refused: &[],
            failing: &[(Pkix, Fail), (Hostname, Fail)],
            normal: DELIVER,
            high: DELIVER,
        },
        Row {
            // §2.2: usable TLSA records that match nothing; a PKIX-valid
            // certificate does not rescue the host.
            section: "RFC 7672 §2.2 TLSA mismatch",
            verdict: judge(
                &dane,
                negotiated(),
                Some(evidence(Pass, Pass, Some(Fail))),
                Pass,
            ),
            observed: Level::Encrypted,
            refused: &[RefusalReason::DaneFailed],
            failing: &[(Dane, Fail)],
            normal: DEFER_REFUSED,
            high: DEFER_REFUSED,
        },
        Row {
            // §3.2.2: DANE-TA whose certificate lacks the MX name.
            section: "RFC 7672 §3.2.2 DANE-TA without the MX name",
            verdict: judge(
                &dane,
                negotiated(),
                Some(evidence(Fail, Fail, Some(Fail))),
                NotApplicable,
            ),
            observed: Level::Encrypted,
            refused: &[RefusalReason::DaneFailed],
            failing: &[(Dane, Fail), (Pkix, Fail), (Hostname, Fail)],
            normal: DEFER_REFUSED,
            high: DEFER_REFUSED,
        },
        Row {
            // §2.2: TLSA records make TLS mandatory; no STARTTLS, no mail.
            section: "RFC 7672 §2.2 TLS mandatory, STARTTLS not offered",
            verdict: judge(&dane, TlsOutcome::NotOffered, None, NotApplicable),
            observed: Level::Plaintext,
            refused: &[RefusalReason::TlsRequired, RefusalReason::DaneFailed],
            failing: &[(Starttls, Fail), (Dane, Fail)],
            normal: DEFER_REFUSED,
            high: DEFER_REFUSED,
        },
        Row {
            // §2.2: no TLSA records (or insecure ones): PKIX decides.
            section: "RFC 7672 §2.2 no TLSA, PKIX valid",
            verdict: judge(
                &candidate(false, None),
                negotiated(),
                Some(evidence(Pass, Pass, None)),
                Pass,
            ),
            observed: Level::Qualified,
            refused: &[],
            failing: &[],
            normal: DELIVER,
            high: DELIVER,
        },
    ]);
}

#[test]
fn rfc7672_2_2_1_a_failed_tlsa_lookup_is_a_failing_dane_and_dnssec_check() {
    let parts = [
        "MX secure".to_string(),
        "mx.d.test A/AAAA secure".to_string(),
    ];
    let servfail = DnsError::Temporary("_25._tcp.mx.d.test".into(), "Server Failure".into());
    let bogus = DnsError::Bogus {
        name: "_25._tcp.mx.d.test".into(),
        rtype: "TLSA",
        why: "signature expired".into(),
    };
    for (e, dnssec) in [(servfail, Error), (bogus, Fail)] {
        let HostPlan::Skip {
            checks, refusal, ..
        } = tlsa_lookup_failed(target(), &parts, &e)
        else {
            panic!("a host whose TLSA lookup failed is not used");
        };
        let got: Vec<_> = checks.iter().map(|c| (c.name, c.status)).collect();
        assert_eq!(got, [(Dnssec, dnssec), (Dane, Error)], "{e}");
        assert_eq!(refusal.reason, RefusalReason::TlsaLookupFailed);
        assert_eq!(refusal.reason.check(), Dane);
    }
}

#[test]
fn rfc8461_mta_sts_outcomes() {
    let enforce = candidate(false, Some(Mode::Enforce));
    let testing = candidate(false, Some(Mode::Testing));
    assert_rows(vec![
        Row {
            section: "RFC 8461 §4 enforce, MX listed, certificate valid",
            verdict: judge(
                &enforce,
                negotiated(),
                Some(evidence(Pass, Pass, None)),
                Pass,
            ),
            observed: Level::Qualified,
            refused: &[],
            failing: &[],
            normal: DELIVER,
            high: DELIVER,
        },
        Row {
            // §5: enforce and the certificate does not validate: not delivered.
            section: "RFC 8461 §5 enforce, certificate not valid for the MX",
            verdict: judge(
                &enforce,
                negotiated(),
                Some(evidence(Pass, Fail, None)),
                Pass,
            ),
            observed: Level::Encrypted,
            refused: &[RefusalReason::MtaStsFailed],
            failing: &[(Hostname, Fail), (MtaSts, Fail)],
            normal: DEFER_REFUSED,
            high: DEFER_REFUSED,
        },
        Row {
            // §5: testing mode reports and delivers anyway.
            section: "RFC 8461 §5 testing, certificate not valid for the MX",
            verdict: judge(
                &testing,
                negotiated(),
                Some(evidence(Pass, Fail, None)),
                Pass,
            ),
            observed: Level::Encrypted,
            refused: &[],
            failing: &[(Hostname, Fail), (MtaSts, Fail)],
            normal: DELIVER,
            high: SEAL_BELOW,
        },
        Row {
            section: "RFC 8461 §5 enforce, STARTTLS not offered",
            verdict: judge(&enforce, TlsOutcome::NotOffered, None, NotApplicable),
            observed: Level::Plaintext,
            refused: &[RefusalReason::TlsRequired, RefusalReason::MtaStsFailed],
            failing: &[(Starttls, Fail), (MtaSts, Fail)],
            normal: DEFER_REFUSED,
            high: DEFER_REFUSED,
        },
    ]);
}

#[test]
fn rfc8461_4_1_a_host_outside_an_enforced_policy_is_a_failing_mta_sts_check() {
    let c = candidate(false, Some(Mode::Enforce));
    let mut policy = c.sts.clone().unwrap();
    policy.mx = vec!["other.d.test".into()];
    let HostPlan::Skip {
        checks, refusal, ..
    } = not_in_policy(target(), c.dnssec.clone(), c.dane.clone(), &policy)
    else {
        panic!("a host outside the policy is not used");
    };
    let mta_sts = checks.iter().find(|c| c.name == MtaSts).unwrap();
    assert_eq!(mta_sts.status, Fail);
    assert!(
        mta_sts.detail.contains("does not match"),
        "{}",
        mta_sts.detail
    );
    assert_eq!(refusal.reason, RefusalReason::NotInMtaStsPolicy);
}

#[test]
fn revocation_outcomes() {
    let pkix = candidate(false, None);
    let good = || Some(evidence(Pass, Pass, None));
    assert_rows(vec![
        Row {
            section: "revocation good (OCSP or CRL)",
            verdict: judge(&pkix, negotiated(), good(), Pass),
            observed: Level::Qualified,
            refused: &[],
            failing: &[],
            normal: DELIVER,
            high: DELIVER,
        },
        Row {
            // A revoked certificate authenticates nothing, and is never used.
            section: "revoked (OCSP or CRL)",
            verdict: judge(&pkix, negotiated(), good(), Fail),
            observed: Level::Encrypted,
            refused: &[RefusalReason::Revoked],
            failing: &[(Revocation, Fail)],
            normal: DEFER_REFUSED,
            high: DEFER_REFUSED,
        },
        Row {
            // Unavailable: authenticated, not qualified; high mail is sealed
            // unless the class accepts unavailable revocation.
            section: "revocation unavailable",
            verdict: judge(&pkix, negotiated(), good(), Error),
            observed: Level::Authenticated,
            refused: &[],
            failing: &[(Revocation, Error)],
            normal: DELIVER,
            high: SEAL_BELOW,
        },
    ]);
    let unavailable = judge(&pkix, negotiated(), good(), Error);
    assert!(requirement(RiskClass::High, true).met_by(&unavailable));
}

#[test]
fn no_tls_at_all_where_tls_is_optional() {
    let plain = judge(
        &candidate(false, None),
        TlsOutcome::NotOffered,
        None,
        NotApplicable,
    );
    assert_eq!(plain.observed_level, Level::Plaintext);
    assert!(plain.usable());
    assert_eq!(decision(&plain, RiskClass::Normal), DEFER_BELOW);
    assert_eq!(decision(&plain, RiskClass::High), SEAL_BELOW);
}
