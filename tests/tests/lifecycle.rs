//! The process around the SIP core: a restart on the same data directory keeps the live
//! registrations and drops the expired ones; SIGTERM drains (503 with Retry-After on SIP and
//! `/healthz`) and exits 0; `/metrics`, `/healthz` and `/api/version` answer from loopback;
//! `--demo` prints its account once.
//!
//! The tests of this file run in parallel; the two that wait for Timer J (32 s, the drain after a
//! REGISTER over UDP) and for a 60 s expiry overlap, so the file takes about a minute.

use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use csps_tests::{
    Gateway, GatewayOptions, Sipp, SippOutcome, have_tool, http, raw, skip, wait_until,
};

const DOMAIN: &str = "csps.local";
/// Bound on a drain: Timer J (32 s) plus slack for the store flush and the HTTP shutdown.
const DRAIN_BOUND: Duration = Duration::from_secs(45);

fn start(opts: GatewayOptions) -> Option<Gateway> {
    if !have_tool("sipp") {
        skip("sipp not installed (run e2e/setup)");
        return None;
    }
    match Gateway::start_with(opts) {
        Ok(gw) => Some(gw),
        Err(why) => {
            skip(&why);
            None
        }
    }
}

fn register(gw: &Gateway, user: &str, password: &str, expires: u32) -> Sipp {
    register_in(gw, user, DOMAIN, password, expires)
}

fn register_in(gw: &Gateway, user: &str, domain: &str, password: &str, expires: u32) -> Sipp {
    Sipp::new("register.xml", gw.sip_addr())
        .key("user", user)
        .key("domain", domain)
        .key("expires", expires)
        .auth(user, password)
        .timeout(Duration::from_secs(10))
}

fn assert_ok(out: &SippOutcome) {
    assert!(out.ok(), "SIPp run failed:\n{}", out.output);
}

fn metric(gw: &Gateway, name: &str) -> f64 {
    gw.metric(name)
        .unwrap_or_else(|| panic!("no sample `{name}` in /metrics:\n{}", gw.metrics_text()))
}

fn log_has(lines: &[String], needle: &str) -> bool {
    lines.iter().any(|l| l.contains(needle))
}

#[test]
fn restart_keeps_live_registrations_and_drops_expired_ones() {
    let Some(mut gw) = start(GatewayOptions::default()) else {
        return;
    };
    gw.create_user("longlived", "secret-long");
    gw.create_user("shortlived", "secret-short");
    // The shortest interval the registrar grants (Data.SipConfig.MinExpires defaults to 60).
    assert_ok(&register(&gw, "shortlived", "secret-short", 60).run());
    // The 200 came after the binding was computed, so it lapses at most 60 s from now.
    let short_lapses_by = Instant::now() + Duration::from_secs(60);
    assert_ok(&register(&gw, "longlived", "secret-long", 3600).run());

    let live_before = gw.registrations_of("longlived");
    assert_eq!(live_before.len(), 1, "before: {live_before:?}");
    assert_eq!(gw.registrations_of("shortlived").len(), 1);
    assert_eq!(metric(&gw, "csps_registrations"), 2.0);

    // SIGTERM: the gateway drains (the REGISTER transactions over UDP linger for Timer J), flushes
    // the store and exits 0.
    let status = gw.stop(DRAIN_BOUND).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
    let first_run = gw.log_lines();
    assert!(
        log_has(&first_run, "draining"),
        "no drain in the log:\n{}",
        gw.log_tail(20)
    );
    assert!(
        first_run.last().is_some_and(|l| l.contains("stopped")),
        "the last line logged is not `stopped`:\n{}",
        gw.log_tail(20)
    );

    // Stay down until the short binding has lapsed, so only the restart can drop it.
    let wake = short_lapses_by + Duration::from_secs(2);
    std::thread::sleep(wake.saturating_duration_since(Instant::now()));
    let mark = gw.log_len();
    gw.start_again().unwrap_or_else(|e| panic!("restart: {e}"));

    let live_after = gw.registrations_of("longlived");
    assert_eq!(live_after.len(), 1, "after the restart: {live_after:?}");
    for field in ["contact", "source", "transport", "expires_at", "user_agent"] {
        assert_eq!(
            live_after[0][field], live_before[0][field],
            "{field} changed across the restart"
        );
    }
    assert!(
        gw.registrations_of("shortlived").is_empty(),
        "an expired registration survived the restart: {:?}",
        gw.registrations(None)
    );
    // The core itself restored exactly the live binding (the API reads the store, which may
    // answer before the SIP core has logged its restore).
    let restored_lines = || -> Vec<String> {
        gw.log_since(mark)
            .into_iter()
            .filter(|l| l.contains("restored registrations"))
            .collect()
    };
    wait_until(Duration::from_secs(10), || !restored_lines().is_empty());
    let restored = restored_lines();
    assert!(
        restored.len() == 1 && restored[0].contains("bindings=1"),
        "restore log: {restored:?}"
    );
    assert_eq!(metric(&gw, "csps_registrations"), 1.0);
}

#[test]
fn sigterm_drains_with_503_and_exits_zero() {
    let Some(mut gw) = start(GatewayOptions::default()) else {
        return;
    };
    gw.create_user("drainer", "secret-drain");
    // A REGISTER over UDP leaves its server transaction in Completed for Timer J (32 s): the
    // drain waits for it, which leaves a window to watch the draining gateway.
    assert_ok(&register(&gw, "drainer", "secret-drain", 3600).run());
    let healthy = http::request(gw.http, "GET", "/healthz", None, None).expect("GET /healthz");
    assert_eq!(healthy.status, 200, "/healthz before the drain");

    gw.signal("TERM");
    let mut last = None;
    let draining = csps_tests::wait_until(Duration::from_secs(5), || {
        last = http::request(gw.http, "GET", "/healthz", None, None).ok();
        last.as_ref().is_some_and(|r| r.status == 503)
    });
    assert!(
        draining,
        "/healthz never answered 503 during the drain (last: {last:?}); log:\n{}",
        gw.log_tail(20)
    );
    let health = last.expect("a 503 answer");
    assert!(
        health.header("retry-after").is_some(),
        "/healthz 503 without Retry-After: {health:?}"
    );
    assert!(
        gw.wait_exit(Duration::ZERO).is_none(),
        "exited before the SIP checks"
    );

    // A new request over UDP is refused with 503 and a Retry-After.
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
    let local = sock.local_addr().expect("local address");
    let resp = raw::udp_request(
        &sock,
        gw.sip_addr(),
        &raw::options("UDP", local, gw.sip_addr()),
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("OPTIONS over UDP during the drain: {e}"));
    assert_eq!(
        resp.status, 503,
        "OPTIONS over UDP during the drain: {resp:?}"
    );
    let retry: u32 = resp
        .headers
        .get("Retry-After")
        .and_then(|v| {
            v.trim()
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("503 without a numeric Retry-After: {resp:?}"));
    assert!(retry > 0, "Retry-After: {retry}");

    // And over a new TCP connection.
    let mut tcp = TcpStream::connect_timeout(&gw.sip_addr(), Duration::from_secs(5))
        .expect("TCP connect during the drain");
    let tcp_local = tcp.local_addr().expect("local address");
    let resp = raw::tcp_request(
        &mut tcp,
        &raw::options("TCP", tcp_local, gw.sip_addr()),
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("OPTIONS over TCP during the drain: {e}"));
    assert_eq!(
        resp.status, 503,
        "OPTIONS over TCP during the drain: {resp:?}"
    );
    assert!(resp.headers.get("Retry-After").is_some(), "{resp:?}");
    drop(tcp);

    let status = gw.wait_exit(DRAIN_BOUND).unwrap_or_else(|| {
        panic!(
            "still running {DRAIN_BOUND:?} after SIGTERM; log:\n{}",
            gw.log_tail(20)
        )
    });
    assert_eq!(status.code(), Some(0), "exit status: {status}");
    let log = gw.log_lines();
    assert!(
        log.last().is_some_and(|l| l.contains("stopped")),
        "the last line logged is not `stopped`:\n{}",
        gw.log_tail(20)
    );
    assert!(
        !log_has(&log, "still open after"),
        "the drain gave up on open transactions:\n{}",
        gw.log_tail(20)
    );
}

#[test]
fn metrics_healthz_and_version() {
    let Some(gw) = start(GatewayOptions::default()) else {
        return;
    };
    gw.create_user("metric-a", "secret-a");
    gw.create_user("metric-b", "secret-b");
    gw.create_user("metric-c", "secret-c");

    let r = http::request(gw.http, "GET", "/metrics", None, None).expect("GET /metrics");
    assert_eq!(r.status, 200, "/metrics from loopback: {}", r.body);
    let ctype = r.header("content-type").unwrap_or_default().to_owned();
    assert!(
        ctype.starts_with("text/plain") || ctype.starts_with("application/openmetrics-text"),
        "content-type: {ctype}"
    );
    assert!(
        r.body.contains("# TYPE csps_registrations gauge"),
        "{}",
        r.body
    );
    assert_eq!(metric(&gw, "csps_registrations"), 0.0);
    let failures_before = metric(&gw, "csps_auth_failures_total");
    let dropped_before = gw.metric("csps_sip_dropped_total").unwrap_or(0.0);

    // Bindings: the gauge follows what the registrar holds.
    assert_ok(&register(&gw, "metric-a", "secret-a", 3600).run());
    assert_ok(&register(&gw, "metric-b", "secret-b", 3600).tcp().run());
    let listed = gw.registrations(None).len();
    assert_eq!(listed, 2, "{:?}", gw.registrations(None));
    assert_eq!(metric(&gw, "csps_registrations"), listed as f64);

    // One wrong password: one failed digest authentication.
    let out = Sipp::new("register_wrong_password.xml", gw.sip_addr())
        .key("user", "metric-c")
        .key("domain", DOMAIN)
        .key("expires", 3600)
        .auth("metric-c", "not-the-password")
        .timeout(Duration::from_secs(10))
        .run();
    assert_ok(&out);
    assert_eq!(
        metric(&gw, "csps_auth_failures_total"),
        failures_before + 1.0,
        "{}",
        gw.metrics_text()
    );

    // One garbage datagram: dropped without an answer, and counted.
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
    sock.send_to(
        b"\x16\x03\x01 this is not SIP at all\r\n\r\n",
        gw.sip_addr(),
    )
    .expect("send garbage");
    let counted = csps_tests::wait_until(Duration::from_secs(3), || {
        gw.metric("csps_sip_dropped_total").unwrap_or(0.0) >= dropped_before + 1.0
    });
    assert!(counted, "garbage not counted:\n{}", gw.metrics_text());
    let text = gw.metrics_text();
    assert_eq!(
        csps_tests::metric_sum(&text, "csps_sip_dropped_total", &[]),
        Some(dropped_before + 1.0),
        "{text}"
    );
    assert!(
        csps_tests::metric_sum(&text, "csps_sip_dropped_total", &[("reason", "unparsable")])
            .is_some_and(|v| v >= 1.0),
        "{text}"
    );
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut buf = [0u8; 2048];
    assert!(
        sock.recv_from(&mut buf).is_err(),
        "garbage was answered: {:?}",
        String::from_utf8_lossy(&buf)
    );

    // Health and version, without a token.
    let h = http::request(gw.http, "GET", "/healthz", None, None).expect("GET /healthz");
    assert_eq!(h.status, 200, "/healthz: {}", h.body);
    let v = http::request(gw.http, "GET", "/api/version", None, None).expect("GET /api/version");
    assert_eq!(v.status, 200, "/api/version: {}", v.body);
    let v = v.json();
    assert_eq!(
        v["version"].as_str(),
        Some(env!("CARGO_PKG_VERSION")),
        "version: {v}"
    );
    let commit = v["git_commit"].as_str().unwrap_or_default();
    assert!(
        (7..=40).contains(&commit.len()) && commit.chars().all(|c| c.is_ascii_hexdigit()),
        "git_commit: {v}"
    );
    let date = v["build_date"].as_str().unwrap_or_default();
    let b = date.as_bytes();
    assert!(
        b.len() >= 20
            && b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && b[13] == b':'
            && date[..4].parse::<u32>().is_ok_and(|y| y >= 2024),
        "build_date is not RFC 3339: {v}"
    );
}

/// The demo credentials as `--demo` prints them.
fn demo_credentials(lines: &[String]) -> Option<(String, String, String)> {
    let value = |label: &str| {
        lines
            .iter()
            .find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_owned()))
    };
    Some((
        value("SIP user:")?,
        value("password:")?,
        value("domain/realm:")?,
    ))
}

#[test]
fn demo_account_is_printed_once_and_registers() {
    let Some(mut gw) = start(GatewayOptions::default().arg("--demo")) else {
        return;
    };
    let first = gw.log_lines();
    let (user, password, domain) = demo_credentials(&first)
        .unwrap_or_else(|| panic!("no demo credentials printed:\n{}", first.join("\n")));
    assert_eq!(user, "demo");
    assert!(password.len() >= 8, "a weak demo password: {password:?}");
    assert_eq!(
        first.iter().filter(|l| l.contains(&password)).count(),
        1,
        "the password is printed once"
    );
    let users = gw.api("GET", "/api/users", None).json();
    let demo: Vec<_> = users
        .as_array()
        .map(|a| a.iter().filter(|u| u["username"] == "demo").collect())
        .unwrap_or_default();
    assert_eq!(demo.len(), 1, "users: {users}");
    let id = demo[0]["id"].clone();

    // Over TCP, so the drain at the restart is not held by Timer J.
    assert_ok(
        &register_in(&gw, &user, &domain, &password, 3600)
            .tcp()
            .run(),
    );
    assert_eq!(gw.registrations_of("demo").len(), 1);

    let mark = gw.log_len();
    let status = gw
        .restart(DRAIN_BOUND)
        .unwrap_or_else(|e| panic!("restart: {e}"));
    assert_eq!(status.code(), Some(0), "exit status: {status}");
    let second = gw.log_since(mark);
    assert!(
        demo_credentials(&second).is_none() && !log_has(&second, &password),
        "the second start printed demo credentials:\n{}",
        second.join("\n")
    );
    let users = gw.api("GET", "/api/users", None).json();
    let demo: Vec<_> = users
        .as_array()
        .map(|a| a.iter().filter(|u| u["username"] == "demo").collect())
        .unwrap_or_default();
    assert_eq!(demo.len(), 1, "users after the restart: {users}");
    assert_eq!(demo[0]["id"], id, "the demo account was recreated");
    // The password printed at the first start still works.
    assert_ok(
        &register_in(&gw, &user, &domain, &password, 3600)
            .tcp()
            .run(),
    );
}

#[test]
fn no_demo_account_without_the_flag() {
    let Some(gw) = start(GatewayOptions::default()) else {
        return;
    };
    let log = gw.log_lines();
    assert!(demo_credentials(&log).is_none(), "{}", log.join("\n"));
    let users = gw.api("GET", "/api/users", None).json();
    assert_eq!(users, serde_json::json!([]), "users: {users}");
}

/// `CSPS_SECRET_KEY` gives the secret key instead of the local file (so servers of a cluster
/// can share it without copying files): the gateway starts with it, says so, digest works
/// (the nonces are keyed by it), and nothing is written to `csps.toml`; a value that is not 32
/// bytes of base64url stops the start with an error naming the variable.
#[test]
fn secret_key_from_the_environment_is_used_and_never_written() {
    const KEY: &str = "B2QfJfGnVb0z7hO1l9vQm1cU3aXk5fPpQwErTyUiOpA";
    let mut opts = GatewayOptions::default();
    opts.env.push(("CSPS_SECRET_KEY".into(), KEY.into()));
    let Some(gw) = start(opts) else {
        return;
    };
    assert!(
        log_has(&gw.log_lines(), "secret_key from CSPS_SECRET_KEY"),
        "{}",
        gw.log_tail(20)
    );
    gw.create_user("alice", "alice-secret-1");
    assert_ok(&register(&gw, "alice", "alice-secret-1", 60).tcp().run());
    let file = std::fs::read_to_string(gw.data_dir.path().join("csps.toml")).unwrap_or_default();
    assert!(
        !file.contains("secret_key") && !file.contains(KEY),
        "csps.toml: {file}"
    );

    let mut bad = GatewayOptions::default();
    bad.env.push(("CSPS_SECRET_KEY".into(), "c2hvcnQ".into()));
    bad.ready_timeout = Duration::from_secs(10);
    match Gateway::start_with(bad) {
        Ok(_) => panic!("a 5-byte CSPS_SECRET_KEY was accepted"),
        Err(why) => assert!(
            why.contains("$CSPS_SECRET_KEY: secret_key must be 32 bytes"),
            "{why}"
        ),
    }
}
