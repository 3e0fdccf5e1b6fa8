//! Policies, measured two ways; run with `cargo bench -p csps --bench policy`.
//!
//! 1. Decision latency: one decision at a time, each in a fresh instance taken from the pooling
//!    allocator (instantiation, the call, fuel and deadline set-up, the answer's check and the
//!    metrics included), for each default module and the built-in rule, with the answer cache
//!    off; the same routing and admission questions answered from the module's kept answers;
//!    and a quirks decision in a call's instance (a call's second and later messages).
//! 2. Call setup rate through the gateway binary with policies off (built-in rules) and on (the
//!    default admission, routing and quirks modules uploaded): SIPp calls from a trusted caller to
//!    a SIPp callee (INVITE, 200, ACK, BYE at once), a fixed number of calls with a bounded
//!    number in flight, rounds alternating off/on. Needs SIPp (`e2e/setup`) and the release
//!    binary; skipped without them. `POLICY_BENCH_CALLS` (default 1000) and
//!    `POLICY_BENCH_ROUNDS` (default 3) size it; `POLICY_BENCH_MODULES` (e.g. `routing,quirks`)
//!    uploads only those modules. `POLICY_BENCH_DISTINCT=1` makes every call come from a caller
//!    account no earlier call used (SIPp reads the From user from a CSV), so admission and
//!    routing never answer from their kept answers: each call pays two fresh instances, the
//!    worst case of a site whose phones each call once.

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
        headers: "Session-Expires: 1800\r\n".into(),
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
    // The same questions again with the module's kept answers (the default engine's): what a
    // phone's next call pays.
    let e = install(engine_keeping(4096), PolicyKind::Routing, &routing);
    row("route, kept answer", "routing_default", || {
        drop(e.route(&route))
    });
    let e = install(engine_keeping(4096), PolicyKind::Admission, &admission);
    row("admit, kept answer", "admission_default", || {
        drop(e.admit(&register))
    });
    let e = with(PolicyKind::Quirks, &quirks);
    row("quirks", "quirks_default", || drop(e.quirks(&message)));
    // What a call pays per message after its first: the call's instance is reused.
    let pinned = e.pin(PolicyKind::Quirks);
    let mut instance = None;
    row("quirks, call's instance", "quirks_default", || {
        drop(e.quirks_in(&pinned, &mut instance, &message))
    });
    // The same with a whole INVITE as a phone sends it: every header crosses into the guest.
    let invite = Message {
        headers: [
            (
                "Via",
                "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-524287-1---c5a1;rport",
            ),
            ("Max-Forwards", "70"),
            ("From", "\"Alice\" <sip:alice@csps.local>;tag=8f2e51a7"),
            ("To", "<sip:bob@csps.local>"),
            ("Call-ID", "NjQ4ZGM2ZDI1YzJlN2E2ZjYxNTk1N2FiNjk5ZGYyNjM"),
            ("CSeq", "1 INVITE"),
            ("Contact", "<sip:alice@192.0.2.10:5060;transport=udp>"),
            (
                "Allow",
                "INVITE, ACK, CANCEL, BYE, NOTIFY, REFER, OPTIONS, INFO, UPDATE",
            ),
            ("Supported", "replaces, timer"),
            ("Session-Expires", "1800"),
            ("User-Agent", "Gigaset N870 IP PRO/83.V2.39.0"),
            ("Content-Type", "application/sdp"),
        ]
        .into_iter()
        .map(|(n, v)| format!("{n}: {v}\r\n"))
        .collect(),
        ..message.clone()
    };
    row(
        "quirks, call's instance, 12-header INVITE",
        "quirks_default",
        || drop(e.quirks_in(&pinned, &mut instance, &invite)),
    );

    // `POLICY_BENCH_MODULES=routing,quirks` turns on only those, to attribute the difference.
    let chosen = std::env::var("POLICY_BENCH_MODULES").ok();
    let modules: Vec<(&str, &[u8])> = [
        ("admission", &admission[..]),
        ("routing", &routing[..]),
        ("quirks", &quirks[..]),
    ]
    .into_iter()
    .filter(|(kind, _)| {
        chosen
            .as_deref()
            .is_none_or(|c| c.split(',').any(|k| k == *kind))
    })
    .collect();
    call_setup_rate(&modules);
}

/// Section 2: calls per second with policies off and on.
fn call_setup_rate(modules: &[(&str, &[u8])]) {
    use csps_tests::{Sipp, free_port, have_tool, raw};
    let env = |name: &str, default: u32| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (calls, rounds) = (
        env("POLICY_BENCH_CALLS", 1000),
        env("POLICY_BENCH_ROUNDS", 3),
    );
    if !have_tool("sipp") {
        println!("\ncall setup rate: SKIPPED (SIPp not installed; run e2e/setup)");
        return;
    }
    let gw = match csps_tests::Gateway::start() {
        Ok(gw) => gw,
        Err(why) => {
            println!("\ncall setup rate: SKIPPED ({why})");
            return;
        }
    };
    for u in ["alice", "bob"] {
        gw.create_user(u, &format!("{u}-secret-1"));
    }
    let distinct = std::env::var("POLICY_BENCH_DISTINCT").is_ok_and(|v| v == "1");
    let Ok(dir) = tempfile::tempdir() else {
        println!("\ncall setup rate: FAILED to make a temporary directory");
        return;
    };
    // Distinct callers: a fresh caller account for every call of every round, and the caller
    // scenario with its From user taken from SIPp's injection file.
    let scenario = if distinct {
        let made = Instant::now();
        for i in 0..calls * rounds * 2 {
            gw.create_user(&format!("caller{i}"), "caller-secret-1");
        }
        println!(
            "\ndistinct callers: {} accounts created in {:.1} s",
            calls * rounds * 2,
            made.elapsed().as_secs_f64()
        );
        let Ok(text) = std::fs::read_to_string(csps_tests::scenario("uac_dial.xml")) else {
            println!("\ncall setup rate: FAILED to read uac_dial.xml");
            return;
        };
        let path = dir.path().join("uac_dial_distinct.xml");
        let text = text.replace("From: <sip:[user]@", "From: <sip:[field0]@");
        if std::fs::write(&path, text).is_err() {
            println!("\ncall setup rate: FAILED to write {}", path.display());
            return;
        }
        path
    } else {
        csps_tests::scenario("uac_dial.xml")
    };
    let mut next_caller = 0;
    gw.trust("127.0.0.0/8");
    std::thread::sleep(Duration::from_millis(500));
    let port = free_port();
    if let Err(e) = raw::register_trusted(gw.sip_addr(), "bob", "csps.local", port, "bench") {
        println!("\ncall setup rate: FAILED to register the callee: {e}");
        return;
    }
    println!(
        "\ncallers: {}",
        if distinct {
            "a new account each call (no kept answers)"
        } else {
            "alice for every call (admission and routing answer from kept answers after the first)"
        }
    );
    println!(
        "\n| round | policies | calls ok | failed | seconds | calls/s | gateway CPU µs/call | page faults/call |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut cpu: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 1..=rounds {
        for on in [false, true] {
            for (kind, wasm) in modules {
                let path = format!("/api/policies/{kind}");
                let r = if on {
                    gw.api_bytes("PUT", &path, "application/wasm", wasm)
                } else {
                    gw.api("DELETE", &path, None)
                };
                assert!(r.status < 300, "{kind} policy: {} {}", r.status, r.body);
            }
            let callee = Sipp::new("uas_bench.xml", gw.sip_addr())
                .local_port(port)
                .key("user", "bob")
                .calls(calls)
                .timeout(Duration::from_secs(120));
            let callee = std::thread::spawn(move || callee.run());
            std::thread::sleep(Duration::from_millis(300));
            let before = usage(gw.pid());
            let started = Instant::now();
            let mut caller = Sipp::new(&scenario, gw.sip_addr());
            if distinct {
                let csv = dir.path().join("callers.csv");
                let names: String = (next_caller..next_caller + calls)
                    .map(|i| format!("caller{i}\n"))
                    .collect();
                next_caller += calls;
                if std::fs::write(&csv, format!("SEQUENTIAL\n{names}")).is_err() {
                    println!("call setup rate: FAILED to write {}", csv.display());
                    return;
                }
                caller = caller.arg("-inf").arg(csv.display().to_string());
            }
            let caller = caller
                .key("user", "alice")
                .key("domain", "csps.local")
                .key("callee", "bob")
                .calls(calls)
                .rate(5000)
                .arg("-l")
                .arg("50")
                .arg("-d")
                .arg("0")
                .arg("-mp")
                .arg(free_port().to_string())
                .timeout(Duration::from_secs(120))
                .run();
            let secs = started.elapsed().as_secs_f64();
            let _ = callee.join();
            let after = usage(gw.pid());
            let rate = caller.successful as f64 / secs;
            let ok = caller.successful.max(1) as f64;
            let per_call = (after.cpu - before.cpu) * 1e6 / ok;
            let faults = (after.faults - before.faults) as f64 / ok;
            rates[usize::from(on)].push(rate);
            cpu[usize::from(on)].push(per_call);
            println!(
                "| {round} | {} | {} | {} | {secs:.2} | {rate:.0} | {per_call:.0} | {faults:.1} |",
                if on { "on" } else { "off" },
                caller.successful,
                caller.failed
            );
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (off, on) = (mean(&rates[0]), mean(&rates[1]));
    println!(
        "\ncall setup rate, mean of {rounds} rounds: off {off:.0}/s, on {on:.0}/s ({:+.1} %)",
        (on - off) / off * 100.0
    );
    // The rate above shares two cores with both SIPp processes, so it moves with their
    // scheduling; the gateway's own CPU time per call is its capacity, free of that.
    let (cpu_off, cpu_on) = (mean(&cpu[0]), mean(&cpu[1]));
    println!(
        "gateway CPU per call, mean of {rounds} rounds: off {cpu_off:.0} µs, on {cpu_on:.0} µs \
         ({:+.1} %; capacity per core {:.0} → {:.0} calls/s)",
        (cpu_on - cpu_off) / cpu_off * 100.0,
        1e6 / cpu_off,
        1e6 / cpu_on
    );
}

/// What the process has used so far, all its threads (from `/proc`; zeros where there is none).
#[derive(Clone, Copy, Default)]
struct Usage {
    /// User plus system CPU seconds.
    cpu: f64,
    /// Minor page faults.
    faults: u64,
}

fn usage(pid: u32) -> Usage {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Usage::default();
    };
    // Fields after the command name, which is in parentheses and may hold spaces; what follows
    // it starts at field 3 of the line: minflt is field 10, utime and stime fields 14 and 15.
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).copied().unwrap_or(0);
    Usage {
        // USER_HZ is 100 on every Linux this runs on.
        cpu: (field(14) + field(15)) as f64 / 100.0,
        faults: field(10),
    }
}

/// An engine that keeps no answers, so every decision runs in a fresh instance.
fn engine() -> PolicyEngine {
    engine_keeping(0)
}

fn engine_keeping(answers: usize) -> PolicyEngine {
    let limits = Limits {
        answer_cache: answers,
        ..Limits::default()
    };
    PolicyEngine::new(Arc::new(Metrics::new()), limits).expect("engine")
}

fn with(kind: PolicyKind, wasm: &[u8]) -> PolicyEngine {
    install(engine(), kind, wasm)
}

fn install(e: PolicyEngine, kind: PolicyKind, wasm: &[u8]) -> PolicyEngine {
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
