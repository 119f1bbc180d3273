//! `chatferry simulate` over real HTTP on loopback: authentication, every
//! fault mode as a client sees it, rate limits, Tencent dedup, ZIM's
//! duplicate storage and read-back order. Each test runs its own simulator
//! on an ephemeral port; tests that depend on time pin the simulator's
//! clock instead of sleeping.

mod common;

use std::time::{Duration, Instant};

use chatferry::providers::tencent::codes as tc;
use chatferry::providers::tencent::usersig;
use chatferry::providers::zim::codes as zc;
use chatferry::simulate::zim::check_signature;
use chatferry::simulate::{Clock, FaultConfig, SimOptions, Simulator};
use common::settings::{Settings, TencentTarget, ZimTarget, TIM_APP, TIM_KEY, ZIM_SECRET};
use common::sim::*;
use serde_json::{json, Value};

/// 2023-11-14T22:13:20Z, in ms.
const T0_MS: i64 = 1_700_000_000_000;

fn opts() -> SimOptions {
    SimOptions {
        auto_register: true,
        ..Default::default()
    }
}

/// Both default apps, as the library reads them.
fn config() -> chatferry::config::Config {
    apps().config()
}

/// The default apps with these ZIM and Tencent settings.
fn config_with(zim: ZimTarget, tim: TencentTarget) -> chatferry::config::Config {
    Settings::default().with(zim).with(tim).config()
}

fn pinned(ms: i64) -> SimOptions {
    SimOptions {
        clock: Clock::manual(ms),
        ..opts()
    }
}

#[tokio::test]
async fn zim_published_signature_vector_verifies() {
    // The checker itself, at the vector's own clock.
    let (app, nonce, secret, ts) = (12345, "4fd24687296dd9f3", ZIM_SECRET, 1615186943);
    let sig = "43e5cfcca828314675f91b001390566a";
    assert_eq!(check_signature(app, nonce, secret, ts, sig, ts), Ok(()));
    assert_eq!(
        check_signature(app, nonce, secret, ts, sig, ts + 601)
            .unwrap_err()
            .code,
        zc::SIGNATURE_EXPIRED
    );
    assert_eq!(
        check_signature(app, nonce, "other", ts, sig, ts)
            .unwrap_err()
            .code,
        zc::SIGNATURE_WRONG
    );

    // The same vector through a live call, the simulator's clock pinned to it.
    let s = TestSim::start(&config(), pinned(ts * 1000)).await;
    let url = s.zim_url_with("ImportPeerMsg", app, nonce, ts, sig);
    let body = zim_text("alice", "bob", "alice", ts * 1000 - 5_000, "hello");
    let r = s.post(&url, &body).await.unwrap();
    assert_eq!((r.status, r.code()), (200, 0), "{}", r.json);
    let msg_id: u64 = r.json["MsgId"]
        .as_str()
        .expect("MsgId is a string")
        .parse()
        .unwrap();
    assert!(msg_id > 1 << 53);
    assert_eq!(r.json["MsgSeq"], 1);

    // The same nonce again is a replay.
    let r = s.post(&url, &body).await.unwrap();
    assert_eq!(r.code(), zc::NONCE_MISSING, "{}", r.json);
    // A signature 11 minutes old has expired.
    s.sim.clock().advance_ms(660_000);
    let stale = s.zim_url_with(
        "ImportPeerMsg",
        app,
        "0123456789abcdef",
        ts,
        &chatferry::providers::zim::sign::signature(app, "0123456789abcdef", secret, ts),
    );
    assert_eq!(s.post(&stale, &body).await.unwrap().code(), zc::SIGNATURE_EXPIRED);
    // A wrong secret, an unknown app, a missing signature.
    let now = s.sim.clock().now_secs();
    let wrong = chatferry::providers::zim::sign::signature(app, "aaaa", "not-the-secret", now);
    assert_eq!(
        s.post(&s.zim_url_with("ImportPeerMsg", app, "aaaa", now, &wrong), &body)
            .await
            .unwrap()
            .code(),
        zc::SIGNATURE_WRONG
    );
    assert_eq!(
        s.post(&s.zim_url_with("ImportPeerMsg", 999, "bbbb", now, "x"), &body)
            .await
            .unwrap()
            .code(),
        zc::SERVER_SECRET_FAILED
    );
    let no_sig = format!(
        "{}?Action=ImportPeerMsg&AppId={app}&SignatureNonce=cc&Timestamp={now}&SignatureVersion=2.0",
        s.base
    );
    assert_eq!(
        s.post(&no_sig, &body).await.unwrap().code(),
        zc::SIGNATURE_MISSING
    );

    let st = s.stats().await;
    assert_eq!(st["zim"]["accepted"], 1);
    assert_eq!(st["zim"]["auth_failures"], 5);
    assert_eq!(st["zim"]["auth_failures_by_code"]["100000004"], 1);
    s.sim.shutdown().await;
}

#[tokio::test]
async fn tencent_usersig_official_algorithm_verifies_and_bad_sigs_get_their_codes() {
    // The vector's identifier is the admin here, and the clock is its time.
    let cfg = config_with_admin("xiaojun");
    let s = TestSim::start(&cfg, pinned(1_700_000_000_000)).await;
    let good = usersig::generate(u64::from(TIM_APP), "xiaojun", TIM_KEY, 1_700_000_000, 15_552_000);
    assert_eq!(
        usersig::decode(&good).unwrap().sig,
        "LvA7d/Iw7gSsnskvVzBDPOCCDbuNCw4GHwTC0bip+B4="
    );
    let body = tim_text("alice", "bob", Some(1), 7, 1_699_999_000, "hi");
    let call = |sig: String, identifier: &'static str| {
        let url = s.tim_url_with("importmsg", TIM_APP, identifier, &sig);
        let s = &s;
        let body = &body;
        async move { s.post(&url, body).await.unwrap() }
    };
    let r = call(good.clone(), "xiaojun").await;
    assert_eq!((r.status, r.code()), (200, 0), "{}", r.json);
    assert_eq!(r.json["ActionStatus"], "OK");

    let wrong_key = usersig::generate(
        u64::from(TIM_APP),
        "xiaojun",
        "not-the-key",
        1_700_000_000,
        15_552_000,
    );
    let r = call(wrong_key, "xiaojun").await;
    assert_eq!(
        (r.status, r.code()),
        (200, tc::USERSIG_BAD_SIGNATURE),
        "{}",
        r.json
    );
    assert_eq!(r.json["ActionStatus"], "FAIL");

    let short = usersig::generate(u64::from(TIM_APP), "xiaojun", TIM_KEY, 1_700_000_000 - 7200, 3600);
    assert_eq!(call(short, "xiaojun").await.code(), tc::USERSIG_EXPIRED);
    // The good sig itself expires with the clock.
    s.sim.clock().advance_ms(15_552_001_000);
    assert_eq!(call(good.clone(), "xiaojun").await.code(), tc::USERSIG_EXPIRED);
    s.sim.clock().set_ms(1_700_000_000_000);

    assert_eq!(
        call(good.clone(), "someone").await.code(),
        tc::USERSIG_WRONG_IDENTIFIER
    );
    let not_admin = usersig::generate(u64::from(TIM_APP), "bob", TIM_KEY, 1_700_000_000, 86_400);
    assert_eq!(call(not_admin, "bob").await.code(), tc::NOT_ADMIN);
    let other_app = usersig::generate(1400000001, "xiaojun", TIM_KEY, 1_700_000_000, 86_400);
    assert_eq!(call(other_app, "xiaojun").await.code(), tc::USERSIG_WRONG_APP);
    assert_eq!(
        call("garbage".into(), "xiaojun").await.code(),
        tc::USERSIG_MALFORMED
    );
    let unknown_app = s.tim_url_with("importmsg", 42, "xiaojun", &good);
    assert_eq!(
        s.post(&unknown_app, &body).await.unwrap().code(),
        tc::SDKAPPID_NOT_FOUND
    );

    let st = s.stats().await;
    assert_eq!(st["tencent"]["accepted"], 1);
    assert_eq!(st["tencent"]["auth_failures"], 8);
    assert_eq!(st["tencent"]["auth_failures_by_code"]["70001"], 2);
    assert_eq!(st["tencent"]["stored"], 1);
    s.sim.shutdown().await;
}

fn config_with_admin(admin: &str) -> chatferry::config::Config {
    let tim = TencentTarget {
        admin_identifier: admin.into(),
        ..Default::default()
    };
    Settings::default().with(tim).config()
}

#[tokio::test]
async fn fault_transient_code_is_answered_and_not_applied() {
    let s = TestSim::start(&config(), opts()).await;
    s.faults(json!({"zim": {"transient_rate": 1.0}, "tencent": {"transient_rate": 1.0, "transient_codes": [tc::INTERNAL_90994]}}))
        .await;
    let now = s.sim.clock().now_ms();
    let r = s
        .zim("ImportPeerMsg", &zim_text("a", "b", "a", now - 1000, "x"))
        .await;
    assert_eq!(r.status, 200);
    assert!(
        chatferry::simulate::faults::ZIM_TRANSIENT_CODES.contains(&r.code()),
        "{}",
        r.json
    );
    let r = s
        .tim("importmsg", &tim_text("a", "b", Some(1), 1, now / 1000, "x"))
        .await;
    assert_eq!((r.status, r.code()), (200, tc::INTERNAL_90994));
    assert_eq!(r.json["ActionStatus"], "FAIL");

    let st = s.stats().await;
    assert_eq!(st["total"]["faults"]["transient"], 2);
    assert_eq!(st["total"]["stored"], 0);
    assert_eq!(s.zim_view("a", "b").await["count"], 0);
    // Control endpoints are never faulted, and turning the fault off works.
    s.faults(json!({"zim": {"transient_rate": 0}})).await;
    let r = s
        .zim("ImportPeerMsg", &zim_text("a", "b", "a", now - 1000, "x"))
        .await;
    assert_eq!(r.code(), 0);
    s.sim.shutdown().await;
}

#[tokio::test]
async fn fault_http_5xx_is_html_and_not_applied() {
    let s = TestSim::start(&config(), opts()).await;
    s.faults(json!({"tencent": {"http_5xx_rate": 1.0, "http_5xx_statuses": [502]}}))
        .await;
    let now = s.sim.clock().now_secs();
    let r = s
        .http
        .post(s.tim_url("importmsg"))
        .json(&tim_text("a", "b", Some(1), 1, now, "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["content-type"], "text/html");
    let text = r.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");
    assert!(text.contains("502 Bad Gateway"));
    let st = s.stats().await;
    assert_eq!(st["tencent"]["faults"]["http_5xx"], 1);
    assert_eq!(st["tencent"]["stored"], 0);
    assert_eq!(s.tim_conv("a", "b").await["count"], 0);
    s.sim.shutdown().await;
}

#[tokio::test]
async fn fault_reset_before_apply_fails_the_client_and_stores_nothing() {
    let s = TestSim::start(&config(), opts()).await;
    s.faults(json!({"zim": {"reset_rate": 1.0}, "tencent": {"reset_rate": 1.0}}))
        .await;
    let now = s.sim.clock().now_ms();
    let e = s
        .post(
            &s.zim_url("ImportPeerMsg"),
            &zim_text("a", "b", "a", now - 1, "x"),
        )
        .await
        .unwrap_err();
    assert!(!e.is_timeout(), "{e:?}");
    let e = s
        .post(
            &s.tim_url("importmsg"),
            &tim_text("a", "b", Some(1), 1, now / 1000, "x"),
        )
        .await
        .unwrap_err();
    assert!(!e.is_timeout(), "{e:?}");
    let st = s.stats().await;
    assert_eq!(st["total"]["faults"]["reset"], 2);
    assert_eq!(st["total"]["stored"], 0);
    assert_eq!(st["total"]["accepted"], 0);
    assert_eq!(s.zim_view("a", "b").await["count"], 0);
    assert_eq!(s.tim_conv("a", "b").await["count"], 0);
    s.sim.shutdown().await;
}

#[tokio::test]
async fn fault_apply_then_drop_fails_the_client_but_stores_the_message() {
    let s = TestSim::start(&config(), opts()).await;
    s.faults(json!({"zim": {"apply_then_drop_rate": 1.0}, "tencent": {"apply_then_drop_rate": 1.0}}))
        .await;
    let now = s.sim.clock().now_ms();
    let e = s
        .post(
            &s.zim_url("ImportPeerMsg"),
            &zim_text("a", "b", "b", now - 1, "ambiguous"),
        )
        .await
        .unwrap_err();
    assert!(!e.is_timeout(), "{e:?}");
    s.post(
        &s.tim_url("importmsg"),
        &tim_text("a", "b", Some(3), 4, now / 1000, "ambiguous"),
    )
    .await
    .unwrap_err();
    let view = s.zim_view("b", "a").await;
    assert_eq!(view["count"], 1);
    assert_eq!(view["messages"][0]["MsgBody"], "ambiguous");
    let conv = s.tim_conv("a", "b").await;
    assert_eq!(conv["count"], 1);
    assert_eq!(conv["messages"][0]["MsgSeq"], 3);
    assert_eq!(s.stats().await["total"]["faults"]["apply_then_drop"], 2);
    s.sim.shutdown().await;
}

#[tokio::test]
async fn fault_slow_answer_times_the_client_out_after_applying() {
    let s = TestSim::start(&config(), opts()).await;
    s.faults(json!({"tencent": {"slow_rate": 1.0, "slow_ms": 30000}}))
        .await;
    let impatient = client(Some(Duration::from_millis(300)));
    let now = s.sim.clock().now_secs();
    let e = post_with(
        &impatient,
        &s.tim_url("importmsg"),
        &tim_text("a", "b", Some(1), 2, now, "late"),
    )
    .await
    .unwrap_err();
    assert!(e.is_timeout(), "{e:?}");
    let st = s
        .wait_for_stats("the slow call to be stored", |st| st["tencent"]["stored"] == 1)
        .await;
    assert_eq!(st["tencent"]["faults"]["slow"], 1);
    assert_eq!(
        s.tim_conv("a", "b").await["messages"][0]["MsgBody"][0]["MsgContent"]["Text"],
        "late"
    );
    // Shutdown cuts the pending slow answer short instead of waiting 30 s.
    let t = Instant::now();
    s.sim.shutdown().await;
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn fault_outage_windows_and_runtime_toggle() {
    let mut faults = FaultConfig::default();
    faults.tencent.outages = vec![[10.0, 20.0]];
    let s = TestSim::start(
        &config(),
        SimOptions {
            faults,
            ..pinned(T0_MS)
        },
    )
    .await;
    let body = |seq: u32| tim_text("a", "b", Some(seq), 1, T0_MS / 1000 - 60, "x");
    assert_eq!(s.tim("importmsg", &body(1)).await.code(), 0);
    s.sim.clock().advance_ms(10_000);
    let r = s.post(&s.tim_url("importmsg"), &body(2)).await.unwrap();
    assert_eq!(r.status, 503);
    assert!(r.json.is_string(), "an outage answers HTML: {}", r.json);
    // ZIM is not in the window; the control endpoints still answer.
    let zr = s
        .zim("ImportPeerMsg", &zim_text("a", "b", "a", T0_MS - 1, "z"))
        .await;
    assert_eq!(zr.code(), 0);
    assert_eq!(s.stats().await["tencent"]["faults"]["outage"], 1);
    s.sim.clock().advance_ms(10_000);
    assert_eq!(s.tim("importmsg", &body(3)).await.code(), 0);

    // Flipped at runtime, in reset mode.
    s.faults(json!({"zim": {"down": true, "outage_mode": "reset"}}))
        .await;
    s.post(
        &s.zim_url("ImportPeerMsg"),
        &zim_text("a", "b", "a", T0_MS - 1, "z"),
    )
    .await
    .unwrap_err();
    s.faults(json!({"zim": {"down": false}})).await;
    assert_eq!(
        s.zim("ImportPeerMsg", &zim_text("a", "b", "a", T0_MS - 1, "z"))
            .await
            .code(),
        0
    );

    let st = s.stats().await;
    assert_eq!(st["total"]["faults"]["outage"], 2);
    assert_eq!(st["tencent"]["stored"], 2);
    assert_eq!(st["zim"]["stored"], 2);
    s.sim.shutdown().await;
}

#[tokio::test]
async fn fault_latency_delays_every_call() {
    let s = TestSim::start(&config(), opts()).await;
    s.faults(json!({"zim": {"latency_ms": 150, "latency_jitter_ms": 20}}))
        .await;
    let t = Instant::now();
    let now = s.sim.clock().now_ms();
    assert_eq!(
        s.zim("ImportPeerMsg", &zim_text("a", "b", "a", now - 1, "x"))
            .await
            .code(),
        0
    );
    assert!(t.elapsed() >= Duration::from_millis(150));
    assert_eq!(s.stats().await["zim"]["faults"]["latency"], 1);
    s.sim.shutdown().await;
}

#[tokio::test]
async fn faults_are_reproducible_from_the_seed() {
    async fn outcomes(seed: u64) -> Vec<i64> {
        let mut faults = FaultConfig {
            seed,
            ..Default::default()
        };
        faults.apply_flag("tencent.transient_rate=0.5").unwrap();
        let s = TestSim::start(&config(), SimOptions { faults, ..opts() }).await;
        let now = s.sim.clock().now_secs();
        let mut codes = Vec::new();
        for i in 0..40 {
            codes.push(
                s.tim("importmsg", &tim_text("a", "b", Some(i), i, now, "x"))
                    .await
                    .code(),
            );
        }
        s.sim.shutdown().await;
        codes
    }
    let a = outcomes(7).await;
    assert_eq!(a, outcomes(7).await);
    assert_ne!(a, outcomes(8).await);
    let failed = a.iter().filter(|c| **c != 0).count();
    assert!((8..=32).contains(&failed), "{failed} of 40");
}

#[tokio::test]
async fn rate_limit_refuses_exactly_the_excess_with_the_provider_code() {
    let cfg = config_with(
        ZimTarget {
            rate_per_sec: Some(5.0),
            ..Default::default()
        },
        TencentTarget {
            rate_per_sec: Some(4.0),
            ..Default::default()
        },
    );
    let s = TestSim::start(&cfg, pinned(T0_MS)).await;
    let mut codes = Vec::new();
    for i in 0..8 {
        let r = s
            .zim(
                "ImportPeerMsg",
                &zim_text("a", "b", "a", T0_MS - 100 + i, &format!("m{i}")),
            )
            .await;
        codes.push(r.code());
    }
    assert_eq!(
        codes,
        [
            0,
            0,
            0,
            0,
            0,
            zc::APP_RATE_LIMITED,
            zc::APP_RATE_LIMITED,
            zc::APP_RATE_LIMITED
        ]
    );
    let view = s.zim_view("a", "b").await;
    assert_eq!(view["count"], 5);
    let bodies: Vec<&str> = view["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["MsgBody"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["m0", "m1", "m2", "m3", "m4"]);
    // Other APIs have their own window.
    let q = json!({"FromUserId": "a", "ToUserId": "b", "Limit": 10, "Next": 0});
    assert_eq!(s.zim("QueryPeerMsg", &q).await.code(), 0);

    let mut codes = Vec::new();
    for i in 0..6 {
        codes.push(
            s.tim(
                "importmsg",
                &tim_text("a", "b", Some(i), i, T0_MS / 1000 - 5, "t"),
            )
            .await
            .code(),
        );
    }
    assert_eq!(
        codes,
        [0, 0, 0, 0, tc::RATE_LIMITED_60007, tc::RATE_LIMITED_60007]
    );
    assert_eq!(s.tim_conv("a", "b").await["count"], 4);

    // One second later the window has room again.
    s.sim.clock().advance_ms(1000);
    assert_eq!(
        s.zim("ImportPeerMsg", &zim_text("a", "b", "a", T0_MS, "later"))
            .await
            .code(),
        0
    );
    assert_eq!(
        s.tim("importmsg", &tim_text("a", "b", Some(9), 9, T0_MS / 1000, "t"))
            .await
            .code(),
        0
    );

    let st = s.stats().await;
    assert_eq!(st["zim"]["rate_limited"], 3);
    assert_eq!(st["tencent"]["rate_limited"], 2);
    assert_eq!(st["total"]["rate_limited"], 5);
    assert_eq!(st["total"]["stored"], 11);
    s.sim.shutdown().await;
}

#[tokio::test]
async fn rate_override_applies_to_every_api_and_zero_is_unlimited() {
    let s = TestSim::start(
        &config(),
        SimOptions {
            rate_override: Some(2.0),
            ..pinned(T0_MS)
        },
    )
    .await;
    let q = json!({"FromUserId": "a", "ToUserId": "b", "Limit": 10});
    let codes: Vec<i64> = [
        s.zim("QueryPeerMsg", &q).await,
        s.zim("QueryPeerMsg", &q).await,
        s.zim("QueryPeerMsg", &q).await,
    ]
    .iter()
    .map(Answer::code)
    .collect();
    assert_eq!(codes, [0, 0, zc::APP_RATE_LIMITED]);
    let reg = json!({"UserInfo": [{"UserId": "u1"}]});
    let codes: Vec<i64> = [
        s.zim("UserRegister", &reg).await,
        s.zim("UserRegister", &reg).await,
        s.zim("UserRegister", &reg).await,
    ]
    .iter()
    .map(Answer::code)
    .collect();
    // The second call's one user exists: the call answers that code.
    assert_eq!(codes, [0, zc::USER_EXISTS, zc::REGISTER_RATE_LIMITED]);
    s.sim.shutdown().await;

    let s = TestSim::start(
        &config(),
        SimOptions {
            rate_override: Some(0.0),
            ..pinned(T0_MS)
        },
    )
    .await;
    for i in 0..300 {
        let r = s
            .tim("importmsg", &tim_text("a", "b", Some(i), 1, T0_MS / 1000, "x"))
            .await;
        assert_eq!(r.code(), 0);
    }
    s.sim.shutdown().await;
}

#[tokio::test]
async fn tencent_dedups_on_the_triple_in_either_direction() {
    let s = TestSim::start(&config(), opts()).await;
    let ts = s.sim.clock().now_secs() - 100;
    let first = tim_text("alice", "bob", Some(11), 22, ts, "first");
    assert_eq!(s.tim("importmsg", &first).await.code(), 0);
    assert_eq!(s.tim("importmsg", &first).await.code(), 0);
    let st = s.stats().await;
    assert_eq!(
        (
            st["tencent"]["stored"].as_u64(),
            st["tencent"]["dedup_hits"].as_u64()
        ),
        (Some(1), Some(1))
    );
    // Swapped From/To, other content, same triple: the first import wins.
    let swapped = tim_text("bob", "alice", Some(11), 22, ts, "second");
    let r = s.tim("importmsg", &swapped).await;
    assert_eq!(r.code(), 0);
    assert_eq!(r.json["MsgKey"], format!("11_22_{ts}"));
    let conv = s.tim_conv("bob", "alice").await;
    assert_eq!(conv["count"], 1);
    assert_eq!(conv["messages"][0]["MsgBody"][0]["MsgContent"]["Text"], "first");
    assert_eq!(conv["messages"][0]["From_Account"], "alice");
    // Same content under another triple is stored, and counted as a content duplicate.
    assert_eq!(
        s.tim("importmsg", &tim_text("alice", "bob", Some(12), 22, ts, "first"))
            .await
            .code(),
        0
    );
    let st = s.stats().await;
    assert_eq!(st["tencent"]["stored"], 2);
    assert_eq!(st["tencent"]["dedup_hits"], 2);
    assert_eq!(st["tencent"]["accepted"], 4);
    assert_eq!(st["tencent"]["duplicates_stored"], 1);
    s.sim.shutdown().await;
}

#[tokio::test]
async fn zim_stores_a_repeated_message_twice() {
    let s = TestSim::start(&config(), opts()).await;
    let body = zim_text("alice", "bob", "bob", s.sim.clock().now_ms() - 10, "same");
    let a = s.zim("ImportPeerMsg", &body).await;
    let b = s.zim("ImportPeerMsg", &body).await;
    assert_eq!((a.code(), b.code()), (0, 0));
    assert_ne!(a.json["MsgId"], b.json["MsgId"]);
    assert_eq!(
        (a.json["MsgSeq"].as_u64(), b.json["MsgSeq"].as_u64()),
        (Some(1), Some(2))
    );
    let st = s.stats().await;
    assert_eq!(st["zim"]["stored"], 2);
    assert_eq!(st["zim"]["duplicates_stored"], 1);
    assert_eq!(s.zim_view("bob", "alice").await["count"], 2);
    // The other participant's view is separate and still empty.
    assert_eq!(s.zim_view("alice", "bob").await["count"], 0);
    s.sim.shutdown().await;
}

#[tokio::test]
async fn tencent_reads_back_by_time_then_msgseq_and_pages_backwards() {
    let s = TestSim::start(&config(), pinned(T0_MS)).await;
    let t = T0_MS / 1000 - 3600;
    for (seq, ts, text) in [
        (Some(1), t + 1, "c"),
        (Some(5), t, "b"),
        (Some(2), t, "a"),
        (None, t + 2, "d"),
    ] {
        assert_eq!(
            s.tim("importmsg", &tim_text("u1", "u2", seq, 9, ts, text))
                .await
                .code(),
            0
        );
    }
    let conv = s.tim_conv("u1", "u2").await;
    let texts: Vec<&str> = conv["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["MsgBody"][0]["MsgContent"]["Text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["a", "b", "c", "d"]);
    assert_eq!(conv["messages"][3]["MsgSeqAssigned"], true);
    // Arrival t+1 then t is one inversion on this lane.
    let st = s.stats().await;
    assert_eq!(st["tencent"]["order_inversions"], 1);
    assert_eq!(
        st["tencent"]["order_inversions_by_lane"][format!("{TIM_APP}/u1\u{1f}u2")],
        1
    );

    // admin_getroammsg: newest first, two per page, backwards.
    let page = |max_time: i64, key: &str| {
        json!({
            "Operator_Account": "u2", "Peer_Account": "u1", "MaxCnt": 2,
            "MinTime": t - 10, "MaxTime": max_time, "LastMsgKey": key,
        })
    };
    let r = s.tim("admin_getroammsg", &page(t + 100, "")).await;
    assert_eq!(r.code(), 0, "{}", r.json);
    assert_eq!(r.json["Complete"], 0);
    let texts = |r: &Answer| -> Vec<String> {
        r.json["MsgList"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                m["MsgBody"][0]["MsgContent"]["Text"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(texts(&r), ["d", "c"]);
    assert_eq!(r.json["LastMsgTime"], t + 1);
    let key = r.json["LastMsgKey"].as_str().unwrap().to_string();
    let r = s.tim("admin_getroammsg", &page(t + 1, &key)).await;
    assert_eq!(texts(&r), ["b", "a"]);
    assert_eq!(r.json["Complete"], 1);
    s.sim.shutdown().await;
}

#[tokio::test]
async fn zim_query_pages_newest_first_with_exact_u64_msg_ids() {
    let s = TestSim::start(&config(), opts()).await;
    let now = s.sim.clock().now_ms();
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = s
            .zim(
                "ImportPeerMsg",
                &zim_text("a", "b", "a", now - 100 + i, &format!("m{i}")),
            )
            .await;
        ids.push(r.json["MsgId"].as_str().unwrap().parse::<u64>().unwrap());
    }
    assert!(ids.iter().all(|id| *id > 1 << 53));
    assert_eq!(
        ids[1],
        ids[0] + 1,
        "consecutive ids differ by one, beyond f64 precision"
    );

    // Read the raw text so a u64 is checked as written, not through f64.
    let raw = s
        .http
        .post(s.zim_url("QueryPeerMsg"))
        .json(&json!({"FromUserId": "a", "ToUserId": "b", "Limit": 2, "Next": 0}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(raw.contains(&format!("\"MsgId\":{}", ids[2])), "{raw}");
    let v: Value = serde_json::from_str(&raw).unwrap();
    let list = v["List"].as_array().unwrap();
    let got: Vec<u64> = list.iter().map(|m| m["MsgId"].as_u64().unwrap()).collect();
    assert_eq!(got, [ids[2], ids[1]]);
    // MsgTime is the server's receive time (ZEGO's query page), not the
    // SendMessageTime imported.
    assert!(list[0]["MsgTime"].as_i64().unwrap() >= now, "{raw}");
    assert_eq!(list[0]["MsgBody"], "m2");
    let next = v["Next"].as_u64().unwrap();
    assert_ne!(next, 0);
    let r = s
        .zim(
            "QueryPeerMsg",
            &json!({"FromUserId": "a", "ToUserId": "b", "Limit": 2, "Next": next}),
        )
        .await;
    let list = r.json["List"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["MsgId"].as_u64(), Some(ids[0]));
    assert_eq!(r.json["Next"], 0);
    s.sim.shutdown().await;
}

#[tokio::test]
async fn zim_validation_and_registration_codes() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.txt");
    std::fs::write(&users, "# seeded\nalice\nbob\n\n").unwrap();
    let s = TestSim::start(
        &config_with(
            ZimTarget {
                max_message_bytes: Some(16),
                retention_days: Some(2),
                ..Default::default()
            },
            TencentTarget::default(),
        ),
        SimOptions {
            users_file: Some(users),
            auto_register: false,
            ..pinned(T0_MS)
        },
    )
    .await;
    let ok = zim_text("alice", "bob", "alice", T0_MS - 1, "fine");
    assert_eq!(s.zim("ImportPeerMsg", &ok).await.code(), 0);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut b = ok.clone();
        f(&mut b);
        b
    };
    let cases: Vec<(i64, Value)> = vec![
        (zc::FROM_EQUALS_TO, with(&|b| b["ToUserId"] = json!("alice"))),
        (
            zc::TIME_IN_FUTURE,
            with(&|b| b["SendMessageTime"] = json!(T0_MS + 1)),
        ),
        (
            zc::MESSAGE_LENGTH_EXCEEDED,
            with(&|b| b["SendMessageTime"] = json!(T0_MS - 3 * 86_400_000)),
        ),
        (
            zc::MESSAGE_TOO_LARGE,
            with(&|b| b["MessageBody"]["Message"] = json!("x".repeat(17))),
        ),
        (zc::INVALID_INPUT, with(&|b| b["ImportedUserId"] = json!("carol"))),
        (zc::INVALID_INPUT, with(&|b| b["MessageType"] = json!(2))),
        (zc::INVALID_INPUT, with(&|b| b["MessageType"] = json!(200))),
        (
            zc::INVALID_INPUT,
            with(&|b| {
                b["MessageType"] = json!(200);
                b["SubMsgType"] = json!(201);
            }),
        ),
        (
            zc::USER_ID_TOO_LONG,
            with(&|b| b["ToUserId"] = json!("x".repeat(33))),
        ),
        (
            zc::OPERATOR_NOT_REGISTERED,
            with(&|b| b["ToUserId"] = json!("carol")),
        ),
        (zc::INVALID_INPUT, json!("not an object")),
    ];
    for (code, body) in &cases {
        assert_eq!(s.zim("ImportPeerMsg", body).await.code(), *code, "{body}");
    }
    let custom = with(&|b| {
        b["MessageType"] = json!(200);
        b["SubMsgType"] = json!(3);
    });
    assert_eq!(s.zim("ImportPeerMsg", &custom).await.code(), 0);

    // Registering carol makes her usable; registering again reports 660700002.
    let reg = json!({"UserInfo": [{"UserId": "carol", "UserName": "Carol"}, {"UserId": "bad/id"}]});
    let r = s.zim("UserRegister", &reg).await;
    assert_eq!(r.code(), 0);
    assert_eq!(r.json["ErrorList"][0]["UserId"], "bad/id");
    // Every user of the call exists: a non-zero Code and the ErrorList
    // (ZEGO: zim-server/user/batch-register-users.md); her profile stays.
    let r = s
        .zim(
            "UserRegister",
            &json!({"UserInfo": [{"UserId": "carol", "UserName": "Other"}]}),
        )
        .await;
    assert_eq!(r.code(), zc::USER_EXISTS);
    assert_eq!(r.json["ErrorList"][0]["SubCode"], zc::USER_EXISTS);
    // Every user refused for another reason: that code, no ErrorList.
    let r = s
        .zim(
            "UserRegister",
            &json!({"UserInfo": [{"UserId": "dave", "UserName": "x".repeat(257)}]}),
        )
        .await;
    assert_eq!(r.code(), zc::USER_NAME_TOO_LONG);
    assert!(r.json.get("ErrorList").is_none(), "{}", r.json);
    let users = s.get("_sim/users?provider=zim").await;
    let carol = users["apps"][0]["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["id"] == "carol")
        .cloned()
        .unwrap();
    assert_eq!(carol, json!({"id": "carol", "name": "Carol", "avatar": null}));
    let to_carol = with(&|b| b["ToUserId"] = json!("carol"));
    assert_eq!(s.zim("ImportPeerMsg", &to_carol).await.code(), 0);

    let st = s.stats().await;
    // The cases and dave's refused registration.
    assert_eq!(st["zim"]["validation_failures"], cases.len() as u64 + 1);
    assert_eq!(st["zim"]["validation_failures_by_code"]["660000002"], 5);
    assert_eq!(st["zim"]["stored"], 3);
    s.sim.shutdown().await;
}

#[tokio::test]
async fn tencent_validation_and_account_codes() {
    let s = TestSim::start(
        &config_with(
            ZimTarget::default(),
            TencentTarget {
                max_message_bytes: Some(400),
                ..Default::default()
            },
        ),
        SimOptions {
            auto_register: false,
            ..pinned(T0_MS)
        },
    )
    .await;
    let ts = T0_MS / 1000 - 10;
    let ok = tim_text("alice", "bob", Some(1), 1, ts, "fine");
    assert_eq!(s.tim("importmsg", &ok).await.code(), tc::SENDER_NOT_IMPORTED);
    assert_eq!(
        s.tim("account_import", &json!({"UserID": "alice"})).await.code(),
        0
    );
    assert_eq!(s.tim("importmsg", &ok).await.code(), tc::TO_ACCOUNT_NOT_IMPORTED);
    let r = s
        .tim(
            "multiaccount_import",
            &json!({"AccountList": [{"UserID": "bob"}, {"UserID": ""}]}),
        )
        .await;
    assert_eq!(r.code(), 0);
    assert_eq!(r.json["FailAccounts"], json!([""]));
    // Importing again updates the profile (Tencent: 导入多个账号); a Nick
    // over 500 bytes is refused.
    let r = s
        .tim(
            "multiaccount_import",
            &json!({"AccountList": [{"UserID": "bob", "Nick": "Bob", "FaceUrl": "http://f/b.png"},
                                    {"UserID": "eve", "Nick": "x".repeat(501)}]}),
        )
        .await;
    assert_eq!(r.code(), 0);
    assert_eq!(r.json["FailAccounts"], json!(["eve"]));
    let users = s.get("_sim/users?provider=tencent").await;
    assert_eq!(
        users["apps"][0]["users"],
        json!([{"id": "alice", "name": null, "avatar": null},
               {"id": "bob", "name": "Bob", "avatar": "http://f/b.png"}])
    );
    assert_eq!(s.tim("importmsg", &ok).await.code(), 0);

    let with = |f: &dyn Fn(&mut Value)| {
        let mut b = ok.clone();
        f(&mut b);
        b
    };
    let cases: Vec<(i64, Value)> = vec![
        (
            tc::PACKET_TOO_LONG,
            with(&|b| b["MsgBody"][0]["MsgContent"]["Text"] = json!("x".repeat(400))),
        ),
        (
            tc::MSG_RANDOM_INVALID,
            with(&|b| {
                b.as_object_mut().unwrap().remove("MsgRandom");
            }),
        ),
        (
            tc::MSG_TIMESTAMP_INVALID,
            with(&|b| b["MsgTimeStamp"] = json!("soon")),
        ),
        (
            tc::MSG_BODY_NOT_ARRAY,
            with(&|b| b["MsgBody"] = json!({"Text": "x"})),
        ),
        (
            tc::MSG_BODY_INVALID,
            with(&|b| b["MsgBody"] = json!([{"MsgType": "TIMNopeElem", "MsgContent": {}}])),
        ),
        (
            tc::SYNC_MODE_INVALID,
            with(&|b| b["SyncFromOldSystem"] = json!(3)),
        ),
        (tc::FIELD_INVALID, with(&|b| b["MsgSeq"] = json!(-1))),
        (
            tc::FROM_ACCOUNT_INVALID,
            with(&|b| {
                b.as_object_mut().unwrap().remove("From_Account");
            }),
        ),
    ];
    for (code, body) in &cases {
        assert_eq!(s.tim("importmsg", body).await.code(), *code, "{body}");
    }
    // Past the simulator's 1 MiB read limit it is still Tencent's 200 + 93000.
    let huge = with(&|b| b["MsgBody"][0]["MsgContent"]["Text"] = json!("x".repeat(1 << 20)));
    let r = s.tim("importmsg", &huge).await;
    assert_eq!((r.status, r.code()), (200, tc::PACKET_TOO_LONG));
    let r = s.post(&s.tim_url("importmsg"), &json!(null)).await.unwrap();
    assert_eq!(r.code(), tc::JSON_INVALID);
    let r = s
        .post(
            &format!("{}v4/openim/nope?sdkappid={TIM_APP}", s.base),
            &json!({}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let st = s.stats().await;
    assert_eq!(st["tencent"]["validation_failures_by_code"]["90012"], 1);
    assert_eq!(st["tencent"]["validation_failures_by_code"]["93000"], 2);
    assert_eq!(st["tencent"]["stored"], 1);
    s.sim.shutdown().await;
}

#[tokio::test]
async fn control_endpoints_list_reset_and_dump() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump.json");
    let s = TestSim::start(
        &config(),
        SimOptions {
            dump_on_exit: Some(dump.clone()),
            ..opts()
        },
    )
    .await;
    let now = s.sim.clock().now_ms();
    s.zim("ImportPeerMsg", &zim_text("a", "b", "a", now - 1, "x"))
        .await;
    s.zim("ImportPeerMsg", &zim_text("a", "b", "b", now - 1, "x"))
        .await;
    s.tim("importmsg", &tim_text("a", "b", Some(1), 1, now / 1000, "x"))
        .await;

    let all = s.get("_sim/messages?provider=zim").await;
    let views = all["apps"][0]["views"].as_array().unwrap();
    assert_eq!(views.len(), 2);
    assert_eq!(views[0]["count"], 1);
    let all = s
        .get(&format!("_sim/messages?provider=tencent&app={TIM_APP}"))
        .await;
    assert_eq!(all["apps"][0]["conversations"][0]["count"], 1);
    // `app` may be left out with one app per provider.
    assert_eq!(
        s.get("_sim/messages?provider=zim&user=a&peer=b").await["count"],
        1
    );
    assert_eq!(s.sim.stats()["total"]["stored"], 3);

    let bad = s
        .http
        .post(format!("{}_sim/faults", s.base))
        .json(&json!({"zim": {"reset_rate": 3}}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let unknown = s.http.get(format!("{}_sim/nope", s.base)).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    let replaced: Value = s
        .http
        .post(format!("{}_sim/faults?replace=true", s.base))
        .json(&json!({"seed": 4}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(replaced["seed"], 4);
    assert_eq!(s.get("_sim/faults").await["seed"], 4);

    s.sim.shutdown().await;
    let dumped: Value = serde_json::from_str(&std::fs::read_to_string(&dump).unwrap()).unwrap();
    assert_eq!(dumped["stats"]["total"]["stored"], 3);
    assert_eq!(dumped["zim"][0]["views"][0]["messages"][0]["MsgBody"], "x");
    assert_eq!(
        dumped["tencent"][0]["conversations"][0]["messages"][0]["MsgSeq"],
        1
    );
}

#[tokio::test]
async fn reset_forgets_messages_users_and_counters() {
    let s = TestSim::start(
        &config(),
        SimOptions {
            auto_register: false,
            ..Default::default()
        },
    )
    .await;
    let reg = json!({"UserInfo": [{"UserId": "a"}, {"UserId": "b"}]});
    assert_eq!(s.zim("UserRegister", &reg).await.code(), 0);
    let now = s.sim.clock().now_ms();
    assert_eq!(
        s.zim("ImportPeerMsg", &zim_text("a", "b", "a", now - 1, "x"))
            .await
            .code(),
        0
    );
    let r = s.http.post(format!("{}_sim/reset", s.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.stats().await["total"]["calls"], 0);
    assert_eq!(s.zim_view("a", "b").await["count"], 0);
    assert_eq!(
        s.zim("ImportPeerMsg", &zim_text("a", "b", "a", now - 1, "x"))
            .await
            .code(),
        zc::OPERATOR_NOT_REGISTERED
    );
    s.sim.shutdown().await;
}

#[tokio::test]
async fn two_simulators_do_not_share_state() {
    let a = Simulator::start(&config(), opts()).await.unwrap();
    let b = Simulator::start(&config(), opts()).await.unwrap();
    assert_ne!(a.addr(), b.addr());
    a.shutdown().await;
    b.shutdown().await;
}

/// URL-decodes a read-back body the way a form decoder does (independent
/// of chatferry's own parser) and parses it.
fn url_decoded_json(s: &str) -> Value {
    let u = reqwest::Url::parse(&format!("http://x/?b={s}")).unwrap();
    let (_, b) = u.query_pairs().next().unwrap();
    serde_json::from_str(&b).unwrap_or_else(|e| panic!("{b}: {e}"))
}

/// ZEGO's messagebody-introduction.md: media `Message` objects with their
/// required keys, multi-item as `{"MultiMsg": [..]}` (≤ 20 items, a media
/// item's `Msg` a JSON string), `Message` never empty: anything else is
/// 660000002 and stores nothing.
#[tokio::test]
async fn zim_checks_media_and_multi_item_bodies_as_documented() {
    let s = TestSim::start(&config(), pinned(T0_MS)).await;
    let base = zim_text("a", "b", "a", T0_MS - 1, "x");
    let with = |t: i64, message: String| {
        let mut b = base.clone();
        b["MessageType"] = json!(t);
        b["MessageBody"]["Message"] = json!(message);
        b
    };
    let image = json!({"Uid": "1", "Origin": {"Url": "https://c/p.png", "Width": 1, "Height": 2}, "FileName": "p.png"});
    let file = json!({"Uid": "2", "Url": "https://c/f.zip", "FileName": "f.zip"});
    let mut no_name = image.clone();
    no_name.as_object_mut().unwrap().remove("FileName");
    let texts = |n: usize| {
        (0..n)
            .map(|i| json!({"MsgType": 1, "Msg": format!("t{i}")}))
            .collect::<Vec<_>>()
    };
    let refused = [
        with(1, String::new()),
        with(11, no_name.to_string()),
        with(12, json!({"Uid": "2", "FileName": "f.zip"}).to_string()),
        with(10, json!({"MultiMsg": texts(21)}).to_string()),
        with(
            10,
            json!({"MessageInfoList": [{"MessageType": 1, "Message": "t"}]}).to_string(),
        ),
        with(
            10,
            json!({"MultiMsg": [{"MsgType": 11, "Msg": image}]}).to_string(),
        ),
        with(10, json!({"MultiMsg": [{"MsgType": 2, "Msg": "t"}]}).to_string()),
        with(
            10,
            json!({"MultiMsg": [{"MsgType": 200, "Msg": "t"}]}).to_string(),
        ),
        with(
            10,
            json!({"MultiMsg": [{"MsgType": 12, "Msg": no_name.to_string()}]}).to_string(),
        ),
    ];
    for b in &refused {
        assert_eq!(s.zim("ImportPeerMsg", b).await.code(), 660000002, "{b}");
    }
    assert_eq!(s.stats().await["zim"]["stored"], 0);
    let accepted = [
        with(11, image.to_string()),
        with(10, json!({"MultiMsg": texts(20)}).to_string()),
        with(
            10,
            json!({"MultiMsg": [{"MsgType": 1, "Msg": "look"}, {"MsgType": 12, "Msg": file.to_string()},
                                {"MsgType": 200, "Msg": "c", "SubMsgType": 4, "SearchedContent": "s"}]})
            .to_string(),
        ),
    ];
    for b in &accepted {
        assert_eq!(s.zim("ImportPeerMsg", b).await.code(), 0, "{b}");
    }
    s.sim.shutdown().await;
}

/// query-the-message-list-of-one-on-one-chats.md: text as sent, media and
/// multi-item URL-encoded in the read-back schema, `Payload` the
/// ExtendedData, `IsEmpty` a number.
#[tokio::test]
async fn zim_reads_media_and_multi_item_back_in_the_documented_schema() {
    let s = TestSim::start(&config(), pinned(T0_MS)).await;
    let mut text = zim_text("a", "b", "a", T0_MS - 3, "hello world");
    text["MessageBody"]["ExtendedData"] = json!("ext");
    let image = json!({"Uid": "1", "Origin": {"Url": "https://c/a b.png?x=1&y=2", "Width": 100, "Height": 200},
                       "Thumbnail": {"Url": "https://c/t.png", "Width": 10, "Height": 20},
                       "FileName": "a b.png", "Size": 1024});
    let mut img = zim_text("a", "b", "a", T0_MS - 2, "");
    img["MessageType"] = json!(11);
    img["MessageBody"]["Message"] = json!(image.to_string());
    let video = json!({"Uid": "2", "Url": "https://c/v.mp4", "FileName": "v.mp4", "Size": 9, "MediaDuration": 30,
                       "Thumbnail": {"Url": "https://c/v.jpg", "Width": 3, "Height": 4}});
    let mut multi = zim_text("b", "a", "a", T0_MS - 1, "");
    multi["MessageType"] = json!(10);
    multi["MessageBody"]["Message"] = json!(json!({"MultiMsg": [
        {"MsgType": 1, "Msg": "look"},
        {"MsgType": 14, "Msg": video.to_string()},
        {"MsgType": 200, "Msg": "card", "SubMsgType": 4},
    ]})
    .to_string());
    for b in [&text, &img, &multi] {
        assert_eq!(s.zim("ImportPeerMsg", b).await.code(), 0, "{b}");
    }
    let r = s
        .zim(
            "QueryPeerMsg",
            &json!({"FromUserId": "a", "ToUserId": "b", "Limit": 10, "Next": 0}),
        )
        .await;
    let list = r.json["List"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    // Newest first.
    assert_eq!(
        (list[0]["MsgType"].clone(), list[0]["Sender"].clone()),
        (json!(10), json!("b"))
    );
    for m in list {
        assert_eq!(m["IsEmpty"], json!(0));
        assert!(m["MsgId"].is_u64(), "{m}");
    }
    assert_eq!(
        (list[2]["MsgBody"].clone(), list[2]["Payload"].clone()),
        (json!("hello world"), json!("ext"))
    );
    let body = list[1]["MsgBody"].as_str().unwrap();
    assert!(body.starts_with("%7B"), "URL-encoded: {body}");
    let m = url_decoded_json(body);
    assert_eq!(m["download_url"], "https://c/a b.png?x=1&y=2");
    assert_eq!(m["file_name"], "a b.png");
    assert_eq!(m["file_size"], "1024");
    assert_eq!(
        (m["origin_image_width"].clone(), m["origin_image_height"].clone()),
        (json!(100), json!(200))
    );
    assert_eq!(m["thumbnail_download_url"], "https://c/t.png");
    let m = url_decoded_json(list[0]["MsgBody"].as_str().unwrap());
    let items = m["multi_msg"].as_array().unwrap();
    assert_eq!(items[0], json!({"msg_type": 1, "callback_content": "look"}));
    assert_eq!(items[1]["msg_type"], 14);
    assert_eq!(items[1]["callback_content"]["download_url"], "https://c/v.mp4");
    assert_eq!(items[1]["callback_content"]["media_duration"], "30");
    assert_eq!(
        items[1]["callback_content"]["video_first_frame_download_url"],
        "https://c/v.jpg"
    );
    assert_eq!(
        items[2],
        json!({"msg_type": 200, "sub_msg_type": 4, "callback_content": "card"})
    );
    s.sim.shutdown().await;
}
