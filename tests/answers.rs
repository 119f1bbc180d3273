//! Malformed provider answers: every one is classified, none panics, and
//! none counts as accepted (which would mark a job done).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chatferry::config::TargetConfig;
use chatferry::providers::{Outcome, Provider, SendJob};
use common::*;

/// Both providers' clients, sending to `addr` with a 3 s request timeout.
fn clients(addr: std::net::SocketAddr) -> Vec<(String, Arc<dyn Provider>)> {
    let endpoint = Some(format!("http://{addr}/"));
    let cfg = Settings {
        worker: Some(WorkerSettings {
            request_timeout_ms: Some(3000),
            ..Default::default()
        }),
        ..Default::default()
    }
    .with(ZimTarget {
        endpoint: endpoint.clone(),
        ..Default::default()
    })
    .with(TencentTarget {
        endpoint,
        ..Default::default()
    })
    .config();
    assert!(matches!(cfg.targets["zim"], TargetConfig::Zim(_)));
    chatferry::providers::build_all(&cfg).unwrap()
}

/// One ZIM text message of lane `a`→`b`, first attempt.
fn job(start_by: Option<Instant>) -> SendJob<'static> {
    SendJob {
        job_id: 1,
        body: r#"{"FromUserId":"a","ToUserId":"b","MessageType":1,"MessageBody":{"Message":"x"},"ImportedUserId":"a","MsgSeq":1}"#,
        lane_key: "a\u{1f}b",
        attempt: 1,
        known_ids: &[],
        first_mark_ms: None,
        start_by,
    }
}

async fn outcomes(status: u16, body: Vec<u8>) -> Vec<(String, Outcome)> {
    let server = Canned::start(status, body).await;
    let mut out = Vec::new();
    for (name, p) in clients(server.addr) {
        let o = tokio::time::timeout(Duration::from_secs(10), p.send(&job(None)))
            .await
            .expect("answers in time");
        out.push((name, o));
    }
    out
}

fn never_accepted(cases: &[(String, Outcome)], what: &str) {
    for (name, o) in cases {
        assert!(
            !matches!(o, Outcome::Accepted(_)),
            "{what} accepted by {name}: {o:?}"
        );
    }
}

#[tokio::test]
async fn html_502_page_is_in_doubt() {
    let r = outcomes(
        502,
        b"<html><body><h1>502 Bad Gateway</h1></body></html>".to_vec(),
    )
    .await;
    never_accepted(&r, "502");
    for (name, o) in &r {
        match o {
            Outcome::Unknown { reason, .. } => assert!(reason.contains("502"), "{name}: {reason}"),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn empty_truncated_and_wrongly_typed_answers_are_in_doubt() {
    for body in [
        b"".to_vec(),
        br#"{"Code":0,"MsgId":"1"#.to_vec(),
        br#"{"ActionStatus":"OK","ErrorCode":0"#.to_vec(),
        br#"[1,2,3]"#.to_vec(),
        br#"{"Code":"zero","ActionStatus":7,"ErrorCode":{"a":1}}"#.to_vec(),
        br#"{"ActionStatus":"FAIL","ErrorCode":0}"#.to_vec(),
        b"\xff\xfe\x00garbage".to_vec(),
    ] {
        let what = String::from_utf8_lossy(&body).to_string();
        let r = outcomes(200, body).await;
        never_accepted(&r, &what);
        for (name, o) in &r {
            assert!(
                matches!(o, Outcome::Unknown { .. } | Outcome::Permanent { .. }),
                "{what:?} from {name}: {o:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_body_of_several_megabytes_is_refused_unread() {
    let mut big = br#"{"Code":0,"ActionStatus":"OK","ErrorCode":0,"Pad":""#.to_vec();
    big.extend(std::iter::repeat_n(b'x', 5 << 20));
    big.extend(br#""}"#);
    let r = outcomes(200, big).await;
    never_accepted(&r, "5 MB body");
    for (name, o) in &r {
        match o {
            Outcome::Unknown { reason, .. } => assert!(reason.contains("larger than"), "{name}: {reason}"),
            other => panic!("{name}: {other:?}"),
        }
    }
}

/// ZIM documents no idempotency key, so an undocumented code may come
/// after the write: in doubt, with the code kept for the job row. Tencent
/// names the code and refuses the message for good.
#[tokio::test]
async fn an_unknown_code_is_in_doubt_on_zim_and_fails_the_job_on_tencent() {
    let r = outcomes(
        200,
        br#"{"Code":987654,"Message":"new","ActionStatus":"FAIL","ErrorCode":987654,"ErrorInfo":"new"}"#
            .to_vec(),
    )
    .await;
    never_accepted(&r, "unknown code");
    for (name, o) in &r {
        match (name.as_str(), o) {
            (
                "zim",
                Outcome::Unknown {
                    code: Some(987654),
                    reason,
                },
            ) => assert!(reason.contains("987654"), "{name}: {reason}"),
            (
                "tim",
                Outcome::Permanent {
                    code: Some(987654),
                    reason,
                },
            ) => assert!(reason.contains("unrecognized"), "{name}: {reason}"),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn a_404_halts_the_target_with_a_hint() {
    let r = outcomes(404, b"not found".to_vec()).await;
    for (name, o) in &r {
        match o {
            Outcome::Halt { reason, .. } => assert!(reason.contains("endpoint"), "{name}: {reason}"),
            other => panic!("{name}: {other:?}"),
        }
    }
}

/// A refused signature or UserSig is retried once with a fresh one, but
/// only while that second call can still end inside the lane's lease.
#[tokio::test]
async fn a_fresh_credential_is_tried_only_if_the_second_call_fits_the_lease() {
    let answers = [
        ("zim", r#"{"Code":100000004,"Message":"signature expired"}"#),
        (
            "tim",
            r#"{"ActionStatus":"FAIL","ErrorCode":70001,"ErrorInfo":"usersig expired"}"#,
        ),
    ];
    for (target, answer) in answers {
        // A lease whose deadline has passed leaves no room for a second call.
        let passed = Instant::now() - Duration::from_millis(5);
        for (start_by, calls) in [(None, 2), (Some(passed), 1)] {
            let server = Canned::start(200, answer).await;
            let p = clients(server.addr)
                .into_iter()
                .find(|(n, _)| n == target)
                .unwrap()
                .1;
            let o = p.send(&job(start_by)).await;
            assert!(!matches!(o, Outcome::Accepted(_)), "{target}: {o:?}");
            assert_eq!(server.hits(), calls, "{target} with {start_by:?}");
        }
    }
}
