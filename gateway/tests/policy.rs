//! WASM policies with real components built from `policies/` for `wasm32-wasip2`: the default
//! modules decide like the built-in rules; an upload through the API takes over new decisions
//! while a pinned call keeps its module; modules that loop, hoard memory or trap, and files that
//! are not components, are contained — the built-in rule decides, the process goes on, and the
//! API and `/metrics` say what happened.

mod policy_support;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use csps::api::{ApiState, router};
use csps::config::LiveConfig;
use csps::metrics::Metrics;
use csps::policy::rules::{
    self, Caller, Direction, IpRange, Message, RegisterRequest, StartLine, Transport,
};
use csps::policy::{DecidedBy, Failure, Limits, PolicyEngine, PolicyKind, Route, RouteRequest};
use csps::store::Store;
use csps::store::embedded::EmbeddedStore;
use http_body_util::BodyExt;
use policy_support::component;
use serde_json::Value;
use tower::ServiceExt;

const TOKEN: &str = "policy-test-token-0123456789";

struct Harness {
    app: Router,
    engine: Arc<PolicyEngine>,
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> =
        Arc::new(EmbeddedStore::open_async(dir.path()).await.expect("store"));
    let config = LiveConfig::open(store.clone(), "s1").await.expect("config");
    let metrics = Arc::new(Metrics::new());
    let engine = Arc::new(PolicyEngine::new(metrics.clone(), Limits::default()).expect("engine"));
    engine.set_emergency_numbers(config.settings().emergency_numbers.clone());
    let state = ApiState::new(store.clone(), config, TOKEN).with_policies(engine.clone());
    Harness {
        app: router(state),
        engine,
        metrics,
        store,
        _dir: dir,
    }
}

impl Harness {
    async fn call(
        &self,
        method: Method,
        uri: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, "127.0.0.1:8080")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .extension(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
        let body = match body {
            Some((ct, bytes)) => {
                req = req.header(header::CONTENT_TYPE, ct);
                Body::from(bytes)
            }
            None => Body::empty(),
        };
        let resp = self
            .app
            .clone()
            .oneshot(req.body(body).expect("request"))
            .await
            .expect("response");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, v)
    }

    async fn upload(&self, kind: &str, wasm: Vec<u8>) -> (StatusCode, Value) {
        self.call(
            Method::PUT,
            &format!("/api/policies/{kind}"),
            Some(("application/wasm", wasm)),
        )
        .await
    }
}

fn dialled(d: &str) -> RouteRequest {
    RouteRequest {
        caller: Caller {
            user: "alice".into(),
            domain: "csps.local".into(),
            phone_number: Some("+97231234567".into()),
            device: Some("Yealink SIP-T46S".into()),
            attributes: vec![("department".into(), "sales".into())],
        },
        dialled: d.into(),
        local_match: None,
    }
}

/// Dial strings that cover every branch of the built-in routing rule.
const DIALLED: &[&str] = &[
    "+15551230000",
    "+1 (555) 123-0000",
    "00972501234567",
    "sip:+4930123456@csps.local;user=phone",
    "tel:+441234567890",
    "0501234567",
    "1234",
    "bob",
    "sip:carol@example.com",
    "+1",
    "",
];

#[tokio::test]
async fn default_modules_decide_like_the_builtin_rules() {
    let (Some(routing), Some(admission), Some(quirks)) = (
        component("routing_default"),
        component("admission_default"),
        component("quirks_default"),
    ) else {
        return;
    };
    let h = harness().await;
    for (kind, wasm) in [
        ("routing", routing),
        ("admission", admission),
        ("quirks", quirks),
    ] {
        let (status, body) = h.upload(kind, wasm).await;
        assert_eq!(status, StatusCode::OK, "{kind}: {body}");
        assert_eq!(body["version"], 1);
    }

    for d in DIALLED {
        let mut req = dialled(d);
        let got = h.engine.route(&req);
        assert_eq!(got.value, rules::route(&req), "dialled {d:?}");
        assert_eq!(got.by.version(), Some(1), "the module decided {d:?}");
        req.local_match = Some("bob".into());
        assert_eq!(h.engine.route(&req).value, Route::LocalUser("bob".into()));
    }

    let ranges = vec![
        IpRange {
            addr: "10.0.0.0".parse().unwrap(),
            prefix: 8,
        },
        IpRange {
            addr: "2001:db8::".parse().unwrap(),
            prefix: 32,
        },
    ];
    for (source, trusted) in [
        ("10.1.2.3:5060", true),
        ("[::ffff:10.9.9.9]:5062", true),
        ("192.0.2.1:5060", false),
        ("[2001:db8::7]:5060", true),
        ("[2001:db9::7]:5060", false),
    ] {
        let req = RegisterRequest {
            source: source.parse().unwrap(),
            transport: Transport::Udp,
            user_agent: Some("baresip".into()),
            aor: "sip:alice@csps.local".into(),
            trusted: ranges.clone(),
        };
        let got = h.engine.admit(&req);
        assert_eq!(got.value, rules::admit(&req), "{source}");
        assert_eq!(got.value == rules::Verdict::Admit, trusted, "{source}");
        assert_eq!(got.by.version(), Some(1));
    }

    let sdp = "v=0\r\nm=audio 4000 RTP/AVP 111 9 0\r\na=rtpmap:111 opus/48000/2\r\na=rtcp-fb:111 nack\r\na=ptime:30\r\n";
    for ua in [
        "Gigaset N870 IP PRO",
        "Yealink W60B",
        "Yealink SIP-T46S",
        "Polycom VVX 450",
        "Grandstream HT802",
        "Cisco SPA112",
        "baresip",
        "",
    ] {
        for direction in [Direction::ToDevice, Direction::FromDevice] {
            let msg = Message {
                direction,
                start: StartLine::Request("INVITE".into()),
                headers: "Session-Expires: 1800\r\n".into(),
                sdp: Some(sdp.into()),
                user_agent: (!ua.is_empty()).then(|| ua.to_owned()),
            };
            let got = h.engine.quirks(&msg);
            let builtin = rules::adjust(&msg);
            assert_eq!(got.value, builtin, "{ua} {direction:?}");
            // The module declared the built-in rule's interests: what the rule edits enters
            // the module, the rest (other devices, from the device) does not.
            let known = rules::family(ua).is_some() && direction == Direction::ToDevice;
            assert_eq!(got.by.version().is_some(), known, "{ua} {direction:?}");
            if !known {
                assert_eq!(got.by, DecidedBy::OutsideInterest { version: 1 });
                assert_eq!(builtin, rules::Edits::default());
            }
        }
    }
    // The DECT default really edits: Opus gone, 20 ms, no rtcp-fb.
    let dect = Message {
        direction: Direction::ToDevice,
        start: StartLine::Request("INVITE".into()),
        headers: String::new(),
        sdp: Some(sdp.into()),
        user_agent: Some("Gigaset N870 IP PRO".into()),
    };
    let edits = h.engine.quirks(&dect).value;
    assert_eq!(
        rules::apply_sdp(sdp, &edits.sdp),
        "v=0\r\nm=audio 4000 RTP/AVP 9 0\r\na=ptime:20\r\n"
    );
}

/// The module's decisions so far, as the API counts them.
async fn decisions(h: &Harness, kind: &str) -> u64 {
    let (status, shown) = h
        .call(Method::GET, &format!("/api/policies/{kind}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    shown["decisions"].as_u64().expect("decisions")
}

#[tokio::test]
async fn a_quirks_module_sees_only_the_messages_it_declared() {
    let Some(dect) = component("quirks_dect") else {
        return;
    };
    let h = harness().await;
    let (status, body) = h.upload("quirks", dect).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(decisions(&h, "quirks").await, 0);
    let sdp = "v=0\r\nm=audio 4000 RTP/AVP 111 0\r\na=rtpmap:111 opus/48000/2\r\n";
    let msg = |direction, method: Option<&str>, ua: &str, with_sdp: bool| Message {
        direction,
        start: method.map_or(StartLine::Response(200), |m| StartLine::Request(m.into())),
        headers: "Session-Expires: 1800\r\nAllow: INVITE, INFO\r\n".into(),
        sdp: with_sdp.then(|| sdp.into()),
        user_agent: Some(ua.into()),
    };
    // Outside what the module declared (the ACME base to the device, the built-in families
    // to the device with SDP, Cisco to the device): it is never asked, nothing is edited,
    // nothing is counted.
    for outside in [
        msg(
            Direction::FromDevice,
            Some("INVITE"),
            "ACME DECT-200 1.2",
            true,
        ),
        msg(Direction::FromDevice, None, "ACME DECT-200 1.2", false),
        msg(Direction::ToDevice, Some("INVITE"), "baresip 3.10", true),
        msg(
            Direction::ToDevice,
            Some("BYE"),
            "Gigaset N870 IP PRO",
            false,
        ),
        msg(Direction::ToDevice, None, "Yealink SIP-T46S", false),
    ] {
        let got = h.engine.quirks(&outside);
        assert_eq!(
            got.by,
            DecidedBy::OutsideInterest { version: 1 },
            "{outside:?}"
        );
        assert_eq!(got.value, rules::Edits::default(), "{outside:?}");
    }
    assert_eq!(
        decisions(&h, "quirks").await,
        0,
        "no message entered the module"
    );
    // Inside: every message to the base (an OPTIONS without SDP too), and a Gigaset's offer.
    let options = h.engine.quirks(&msg(
        Direction::ToDevice,
        Some("OPTIONS"),
        "ACME DECT-200 1.2",
        false,
    ));
    assert_eq!(options.by.version(), Some(1));
    assert!(
        options
            .value
            .headers
            .contains(&rules::HeaderEdit::Remove("Session-Expires".into())),
        "{options:?}"
    );
    let gigaset = h.engine.quirks(&msg(
        Direction::ToDevice,
        Some("INVITE"),
        "Gigaset N870 IP PRO",
        true,
    ));
    assert_eq!(gigaset.by.version(), Some(1));
    assert!(
        gigaset
            .value
            .sdp
            .contains(&rules::SdpEdit::DropCodec("opus".into()))
    );
    assert_eq!(decisions(&h, "quirks").await, 2);
}

#[tokio::test]
async fn an_upload_takes_over_new_decisions_while_a_pinned_call_keeps_its_module() {
    let (Some(default), Some(dialplan)) =
        (component("routing_default"), component("routing_dialplan"))
    else {
        return;
    };
    let h = harness().await;
    let national = dialled("050-123-4567");

    // Nothing loaded: the built-in rule (484 for a national number).
    let d = h.engine.route(&national);
    assert_eq!(d.by, DecidedBy::Builtin);
    assert!(matches!(d.value, Route::Reject { code: 484, .. }));

    let (status, v1) = h.upload("routing", default).await;
    assert_eq!(status, StatusCode::OK, "{v1}");
    let call_in_progress = h.engine.pin(PolicyKind::Routing);
    assert_eq!(call_in_progress.version(), Some(1));

    let (status, v2) = h.upload("routing", dialplan.clone()).await;
    assert_eq!(status, StatusCode::OK, "{v2}");
    assert_eq!(v2["version"], 2);
    assert_eq!(v2["hash"], csps::policy::hash(&dialplan));
    assert_eq!(v2["source"], "module");

    // The call that began before the upload still decides with version 1 …
    let old = h.engine.route_with(&call_in_progress, &national);
    assert_eq!(old.by.version(), Some(1));
    assert!(matches!(old.value, Route::Reject { code: 484, .. }));
    // … a new call gets the dial plan.
    let new = h.engine.route(&national);
    assert_eq!(new.by.version(), Some(2));
    assert_eq!(new.value, Route::Teams("+972501234567".into()));
    assert_eq!(
        h.engine.route(&dialled("00442071234567")).value,
        Route::Teams("+442071234567".into())
    );

    // Emergency numbers never reach a policy.
    let e = h.engine.route(&dialled("112"));
    assert_eq!(e.by, DecidedBy::Emergency);
    assert_eq!(e.value, Route::Emergency("112".into()));

    // Another server sharing the store loads version 2 at its start.
    let other =
        Arc::new(PolicyEngine::new(Arc::new(Metrics::new()), Limits::default()).expect("engine"));
    other.sync_with_store(h.store.as_ref()).await;
    assert_eq!(other.pin(PolicyKind::Routing).version(), Some(2));
    assert_eq!(
        other.route(&national).value,
        Route::Teams("+972501234567".into())
    );

    let (status, shown) = h.call(Method::GET, "/api/policies/routing", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["version"], 2);
    assert!(shown["loaded_at"].is_string() && shown["uploaded_at"].is_string());
    assert!(shown["decisions"].as_u64().unwrap_or(0) >= 2, "{shown}");
    let (_, all) = h.call(Method::GET, "/api/policies", None).await;
    let kinds: Vec<&str> = all
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|p| p["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["routing", "admission", "quirks"]);
    assert_eq!(all[1]["source"], "builtin");

    // DELETE: back to the built-in rule for new calls; the pinned call still has its module.
    let (status, _) = h.call(Method::DELETE, "/api/policies/routing", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(h.engine.route(&national).by, DecidedBy::Builtin);
    assert_eq!(
        h.engine
            .route_with(&call_in_progress, &national)
            .by
            .version(),
        Some(1)
    );
    assert!(
        h.store
            .get_policy("routing")
            .await
            .expect("store")
            .is_none()
    );
    other.sync_with_store(h.store.as_ref()).await;
    assert_eq!(other.pin(PolicyKind::Routing).version(), None);
    let metrics = h.metrics.encode();
    assert!(
        metrics.contains("csps_policy_decisions_total{kind=\"routing\",module=\"emergency\"} 1"),
        "{metrics}"
    );
}

/// Uploads `name` as the routing module and checks that each decision falls back to the built-in
/// rule with one of `failures`, until the module is switched off; returns the module's API view.
async fn contained(name: &str, failures: &[Failure]) -> Option<Value> {
    let wasm = component(name)?;
    let h = harness().await;
    let (status, body) = h.upload("routing", wasm).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{name} is a valid component: {body}"
    );
    let limit = h.engine.limits().failure_limit;
    let req = dialled("+15551230000");
    for i in 0..limit {
        let d = h.engine.route(&req);
        assert_eq!(
            d.value,
            Route::Teams("+15551230000".into()),
            "{name}: the built-in rule routed"
        );
        match d.by {
            DecidedBy::Fallback {
                version: 1,
                failure: f,
                ..
            } => {
                assert!(failures.contains(&f), "{name} #{i}: {f:?}")
            }
            other => panic!("{name} #{i}: expected a fallback, got {other:?}"),
        }
    }
    // Switched off: decided by the built-in rule without running the module.
    let d = h.engine.route(&req);
    assert_eq!(
        d.by,
        DecidedBy::Builtin,
        "{name} is off after {limit} failures"
    );
    let (_, shown) = h.call(Method::GET, "/api/policies/routing", None).await;
    let reason = shown["disabled_reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        reason.contains(&format!("switched off after {limit} failures")),
        "{shown}"
    );
    let counted: u64 = failures
        .iter()
        .map(|f| shown["failures"][f.as_str()].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(counted, limit as u64, "{shown}");
    assert!(shown["last_error"].is_string());
    let metrics = h.metrics.encode();
    let hash12 = &shown["hash"].as_str().expect("hash")[..12];
    let prefix =
        format!("csps_policy_failures_total{{kind=\"routing\",module=\"v1-{hash12}\",reason=");
    let in_metrics: u64 = metrics
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(in_metrics, limit as u64, "{prefix}… in\n{metrics}");
    // The process is fine: the default module still loads and decides.
    let (status, _) = h.upload("routing", component("routing_default")?).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h.engine.route(&req).by.version(), Some(2));
    Some(shown)
}

#[tokio::test]
async fn a_module_that_loops_forever_runs_out_of_fuel() {
    // Fuel ends it (5,000,000 instructions take a few ms); on a machine so loaded that the 20 ms
    // deadline passes first, the deadline does (the next test isolates it).
    contained("test_loop", &[Failure::Fuel, Failure::Timeout]).await;
}

/// An engine whose routing module loops forever with practically endless fuel and a 5 ms
/// deadline (`None` when the test components cannot be built and the e2e is optional).
fn looping_router() -> Option<PolicyEngine> {
    let wasm = component("test_loop")?;
    let limits = Limits {
        fuel: 1 << 60,
        deadline: std::time::Duration::from_millis(5),
        ..Limits::default()
    };
    let engine = PolicyEngine::new(Arc::new(Metrics::new()), limits).expect("engine");
    let prepared = engine
        .prepare(PolicyKind::Routing, &wasm)
        .expect("a valid component");
    engine
        .install(meta("routing", &wasm), prepared)
        .expect("install");
    Some(engine)
}

/// Asks the looping router: the deadline ends it and the built-in rule decides.
fn route_past_the_deadline(engine: &PolicyEngine) {
    let d = engine.route(&dialled("+15551230000"));
    assert!(
        matches!(
            d.by,
            DecidedBy::Fallback {
                failure: Failure::Timeout,
                ..
            }
        ),
        "{:?}",
        d.by
    );
    assert_eq!(d.value, Route::Teams("+15551230000".into()));
}

#[tokio::test]
async fn a_loop_with_plenty_of_fuel_is_stopped_by_the_deadline() {
    let Some(engine) = looping_router() else {
        return;
    };
    let t0 = std::time::Instant::now();
    route_past_the_deadline(&engine);
    // Bounded: the deadline, not the (practically endless) fuel, ended it.
    assert!(t0.elapsed() < std::time::Duration::from_secs(5));
}

#[tokio::test]
async fn the_epoch_ticker_sleeps_while_idle_and_a_decision_wakes_it_for_its_deadline() {
    let Some(engine) = looping_router() else {
        return;
    };
    // No decision for a second: the ticker sleeps (bounded wait).
    let t0 = std::time::Instant::now();
    while !engine.ticker_asleep() && t0.elapsed() < std::time::Duration::from_secs(10) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(engine.ticker_asleep(), "the ticker never went to sleep");
    // The looping module's deadline still ends it: entering woke the ticker.
    for _ in 0..3 {
        route_past_the_deadline(&engine);
    }
    assert!(!engine.ticker_asleep(), "awake after decisions");
}

#[tokio::test]
async fn a_module_that_allocates_without_bound_hits_the_memory_cap() {
    contained("test_alloc", &[Failure::Memory]).await;
}

#[tokio::test]
async fn a_module_that_traps_falls_back() {
    contained("test_trap", &[Failure::Trap]).await;
}

fn meta(kind: &str, wasm: &[u8]) -> csps::store::PolicyMeta {
    csps::store::PolicyMeta {
        kind: kind.into(),
        version: 1,
        hash: csps::policy::hash(wasm),
        size: wasm.len() as u64,
        uploaded_at: chrono::Utc::now(),
        uploaded_by: "test".into(),
        disabled: None,
    }
}

#[tokio::test]
async fn files_that_are_not_a_policy_component_are_refused() {
    let Some(admission) = component("admission_default") else {
        return;
    };
    let h = harness().await;
    // A core module (what wasm32-unknown-unknown or wasm32-wasip1 builds): the smallest valid one.
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    let (status, body) = h.upload("routing", core_module).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("core WebAssembly module"),
        "{body}"
    );
    // Not WebAssembly at all.
    let (status, body) = h.upload("routing", b"#!/bin/sh\necho hi\n".to_vec()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    // A component header with garbage behind it.
    let mut broken = b"\0asm\x0d\0\x01\0".to_vec();
    broken.extend_from_slice(&[0xff; 64]);
    let (status, body) = h.upload("routing", broken).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not a valid WebAssembly component"),
        "{body}"
    );
    // A real component of another world.
    let (status, body) = h.upload("routing", admission.clone()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("does not implement the `routing` world"),
        "{body}"
    );
    // Wrong media type, unknown kind, too large.
    let (status, _) = h
        .call(
            Method::PUT,
            "/api/policies/admission",
            Some(("text/plain", admission.clone())),
        )
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (status, _) = h.upload("billing", admission.clone()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = h.upload("routing", vec![0u8; 9 << 20]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    // Nothing was stored or loaded; decisions are built-in.
    assert!(h.store.list_policies().await.expect("list").is_empty());
    assert_eq!(
        h.engine.route(&dialled("+15551230000")).by,
        DecidedBy::Builtin
    );
}

#[tokio::test]
async fn a_module_switched_off_through_the_api_stays_off_on_every_server() {
    let Some(dialplan) = component("routing_dialplan") else {
        return;
    };
    let h = harness().await;
    let (status, _) = h
        .call(Method::POST, "/api/policies/routing/disable", None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "nothing to switch off");
    h.upload("routing", dialplan).await;
    let (status, shown) = h
        .call(Method::POST, "/api/policies/routing/disable", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert!(
        shown["disabled_reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("switched off by admin-token")
    );
    let national = dialled("0501234567");
    assert_eq!(h.engine.route(&national).by, DecidedBy::Builtin);
    let other =
        Arc::new(PolicyEngine::new(Arc::new(Metrics::new()), Limits::default()).expect("engine"));
    other.sync_with_store(h.store.as_ref()).await;
    assert_eq!(
        other.route(&national).by,
        DecidedBy::Builtin,
        "the switch-off is stored"
    );
    assert!(other.status(PolicyKind::Routing).disabled_reason.is_some());
}

#[tokio::test]
async fn a_repeated_question_is_answered_without_entering_the_sandbox() {
    let (Some(dialplan), Some(quirks), Some(looping)) = (
        component("routing_dialplan"),
        component("quirks_default"),
        component("test_loop"),
    ) else {
        return;
    };
    // One instance slot: while a call's quirks instance holds it, nothing else can instantiate.
    let limits = Limits {
        instances: 1,
        ..Limits::default()
    };
    let engine = PolicyEngine::new(Arc::new(Metrics::new()), limits).expect("engine");
    for (kind, wasm) in [
        (PolicyKind::Routing, &dialplan),
        (PolicyKind::Quirks, &quirks),
    ] {
        let prepared = engine.prepare(kind, wasm).expect("prepare");
        engine
            .install(meta(kind.as_str(), wasm), prepared)
            .expect("install");
    }
    let national = dialled("0501234567");
    let first = engine.route(&national);
    assert_eq!(first.value, Route::Teams("+972501234567".into()));
    assert_eq!(first.by.version(), Some(1));

    let offer = Message {
        direction: Direction::ToDevice,
        start: StartLine::Request("INVITE".into()),
        headers: String::new(),
        sdp: Some("v=0\r\nm=audio 4000 RTP/AVP 0\r\na=rtcp-fb:0 nack\r\n".into()),
        user_agent: Some("Gigaset N870 IP PRO".into()),
    };
    let mut call = None;
    let pinned = engine.pin(PolicyKind::Quirks);
    assert_eq!(
        engine.quirks_in(&pinned, &mut call, &offer).by.version(),
        Some(1)
    );
    assert!(call.is_some(), "the call's instance holds the only slot");

    // Asked again: the module's own answer, with no instance to spare.
    assert_eq!(engine.route(&national), first);
    // A question not asked before needs an instance, and there is none.
    let other = engine.route(&dialled("0521234567"));
    assert!(
        matches!(
            other.by,
            DecidedBy::Fallback {
                failure: Failure::Unavailable,
                ..
            }
        ),
        "{other:?}"
    );
    drop(call);
    assert_eq!(
        engine.route(&dialled("0521234567")).value,
        Route::Teams("+972521234567".into())
    );
    let status = engine.status(PolicyKind::Routing);
    assert_eq!(
        status.decisions, 4,
        "a kept answer counts as the module's decision"
    );

    // Switched off, the module's kept answers are not used either.
    assert!(engine.disable(PolicyKind::Routing, "test"));
    assert_eq!(engine.route(&national).by, DecidedBy::Builtin);

    // Failures are never kept: a looping module fails every time it is asked.
    let prepared = engine
        .prepare(PolicyKind::Routing, &looping)
        .expect("prepare");
    engine
        .install(meta("routing", &looping), prepared)
        .expect("install");
    for _ in 0..2 {
        assert!(matches!(
            engine.route(&national).by,
            DecidedBy::Fallback { .. }
        ));
    }
    let failures: u64 = engine.status(PolicyKind::Routing).failures.values().sum();
    assert_eq!(failures, 2);
}
