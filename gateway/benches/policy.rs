//! Policy decision latency: one decision at a time, each in a fresh instance taken from the
//! pooling allocator (instantiation, the call, fuel and deadline set-up, the answer's check and
//! the metrics included), for each default module and the built-in rule. Prints a table; run
//! with `cargo bench -p csps --bench policy`.

#[path = "../tests/policy_support/mod.rs"]
mod policy_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use csps::metrics::Metrics;
use csps::policy::rules::{
    Caller, Direction, IpRange, Message, RegisterRequest, StartLine, Transport,
};
use csps::policy::{Limits, PolicyEngine, PolicyKind, RouteRequest};
use csps::store::PolicyMeta;

const WARMUP: usize = 2_000;
const SAMPLES: usize = 50_000;

fn main() {
    let Some(routing) = policy_support::component("routing_default") else {
        return;
    };
    let (Some(dialplan), Some(admission), Some(quirks)) = (
        policy_support::component("routing_dialplan"),
        policy_support::component("admission_default"),
        policy_support::component("quirks_default"),
    ) else {
        return;
    };
    let route = RouteRequest {
        caller: Caller {
            user: "alice".into(),
            domain: "csps.local".into(),
            phone_number: Some("+97231234567".into()),
            device: Some("Yealink SIP-T46S 66.86.0.15".into()),
            attributes: vec![],
        },
        dialled: "050-123-4567".into(),
        local_match: None,
    };
    let register = RegisterRequest {
        source: "192.0.2.10:5060".parse().expect("address"),
        transport: Transport::Udp,
        user_agent: Some("Yealink SIP-T46S".into()),
        aor: "sip:alice@csps.local".into(),
        trusted: vec![IpRange {
            addr: "10.0.0.0".parse().expect("address"),
            prefix: 8,
        }],
    };
    let message = Message {
        direction: Direction::ToDevice,
        start: StartLine::Request("INVITE".into()),
        headers: vec![("Session-Expires".into(), "1800".into())],
        sdp: Some(
            "v=0\r\nm=audio 4000 RTP/AVP 111 9 0\r\na=rtpmap:111 opus/48000/2\r\na=ptime:30\r\n"
                .into(),
        ),
        user_agent: Some("Gigaset N870 IP PRO".into()),
    };

    println!("| decision | module | p50 µs | p99 µs | p99.9 µs | mean µs |");
    println!("|---|---|---|---|---|---|");
    let builtin = engine();
    row("route", "built-in", || drop(builtin.route(&route)));
    let e = with(PolicyKind::Routing, &routing);
    row("route", "routing_default", || drop(e.route(&route)));
    let e = with(PolicyKind::Routing, &dialplan);
    row("route", "routing_dialplan", || drop(e.route(&route)));
    let e = with(PolicyKind::Admission, &admission);
    row("admit", "admission_default", || drop(e.admit(&register)));
    let e = with(PolicyKind::Quirks, &quirks);
    row("quirks", "quirks_default", || drop(e.quirks(&message)));
}

fn engine() -> PolicyEngine {
    PolicyEngine::new(Arc::new(Metrics::new()), Limits::default()).expect("engine")
}

fn with(kind: PolicyKind, wasm: &[u8]) -> PolicyEngine {
    let e = engine();
    let prepared = e.prepare(kind, wasm).expect("a valid component");
    let meta = PolicyMeta {
        kind: kind.as_str().into(),
        version: 1,
        hash: csps::policy::hash(wasm),
        size: wasm.len() as u64,
        uploaded_at: chrono::Utc::now(),
        uploaded_by: "bench".into(),
        disabled: None,
    };
    e.install(meta, prepared).expect("install");
    e
}

fn row(decision: &str, module: &str, mut f: impl FnMut()) {
    for _ in 0..WARMUP {
        f();
    }
    let mut samples: Vec<Duration> = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let t0 = Instant::now();
        f();
        samples.push(t0.elapsed());
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mean = samples.iter().sum::<Duration>() / SAMPLES as u32;
    println!(
        "| {decision} | {module} | {:.2} | {:.2} | {:.2} | {:.2} |",
        us(at(0.50)),
        us(at(0.99)),
        us(at(0.999)),
        us(mean)
    );
}
