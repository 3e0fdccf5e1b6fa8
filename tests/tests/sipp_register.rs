//! RFC 3261 §10 (REGISTER) and §22 (digest) against the real binary, driven by SIPp scenarios.

use std::time::Duration;

use csps_tests::{Gateway, Sipp, wait_until};

const DOMAIN: &str = "csps.local";

/// Starts a gateway with one user, or returns `None` (skipped) when a prerequisite is missing.
fn setup(user: &str, password: &str) -> Option<Gateway> {
    let gw = csps_tests::gateway_for("sipp")?;
    gw.create_user(user, password);
    Some(gw)
}

fn register(gw: &Gateway, scenario: &str, user: &str, password: &str, expires: u32) -> Sipp {
    Sipp::new(scenario, gw.sip_addr())
        .key("user", user)
        .key("domain", DOMAIN)
        .key("expires", expires)
        .auth(user, password)
        .timeout(Duration::from_secs(10))
}

fn assert_ok(out: &csps_tests::SippOutcome) {
    assert!(out.ok(), "SIPp run failed:\n{}", out.output);
}

#[test]
fn register_with_digest_over_udp() {
    let Some(gw) = setup("alice", "secret-a") else {
        return;
    };
    let out = register(&gw, "register.xml", "alice", "secret-a", 3600).run();
    assert_ok(&out);
    let regs = gw.registrations_of("alice");
    assert_eq!(regs.len(), 1, "registrations: {regs:?}");
    let transport = regs[0]["transport"].as_str().unwrap_or_default();
    assert!(transport.eq_ignore_ascii_case("udp"), "transport: {regs:?}");
    let source = regs[0]["source"].as_str().unwrap_or_default();
    assert!(source.contains("127.0.0.1"), "source: {regs:?}");
}

#[test]
fn register_with_digest_over_tcp() {
    let Some(gw) = setup("bob", "secret-b") else {
        return;
    };
    let out = register(&gw, "register.xml", "bob", "secret-b", 3600)
        .tcp()
        .run();
    assert_ok(&out);
    let regs = gw.registrations_of("bob");
    assert_eq!(regs.len(), 1, "registrations: {regs:?}");
    let transport = regs[0]["transport"].as_str().unwrap_or_default();
    assert!(transport.eq_ignore_ascii_case("tcp"), "transport: {regs:?}");
}

#[test]
fn wrong_password_gets_401_then_403_past_the_limit() {
    let Some(gw) = setup("carol", "right-password") else {
        return;
    };
    // Data.SipConfig.AuthFailureLimit defaults to 5: five wrong answers are each challenged again.
    let mut sipp = register(&gw, "register_wrong_password.xml", "carol", "wrong", 3600)
        .calls(5)
        .rate(20);
    let port = sipp.port();
    let out = sipp.run();
    assert_eq!(out.successful, 5, "five 401s expected:\n{}", out.output);
    assert_ok(&out);
    // Past the limit the (address, account) pair is refused, even with the right password.
    let out = register(&gw, "register_blocked.xml", "carol", "right-password", 3600)
        .local_port(port)
        .run();
    assert_ok(&out);
    assert!(gw.registrations_of("carol").is_empty());
}

#[test]
fn trusted_address_registers_without_challenge() {
    let Some(gw) = setup("dave", "secret-d") else {
        return;
    };
    gw.trust("127.0.0.2/32");
    let out = Sipp::new("register_trusted.xml", gw.sip_addr())
        .local_ip("127.0.0.2")
        .key("user", "dave")
        .key("domain", DOMAIN)
        .key("expires", 3600)
        .run();
    assert_ok(&out);
    let regs = gw.registrations_of("dave");
    assert_eq!(regs.len(), 1, "registrations: {regs:?}");
    let source = regs[0]["source"].as_str().unwrap_or_default();
    assert!(source.contains("127.0.0.2"), "source: {regs:?}");
}

#[test]
fn untrusted_address_is_still_challenged() {
    let Some(gw) = setup("erin", "secret-e") else {
        return;
    };
    gw.trust("127.0.0.2/32");
    // From 127.0.0.3 the same scenario must fail: a 401 arrives where it expects a 200.
    let out = Sipp::new("register_trusted.xml", gw.sip_addr())
        .local_ip("127.0.0.3")
        .key("user", "erin")
        .key("domain", DOMAIN)
        .key("expires", 3600)
        .run();
    assert!(
        !out.ok(),
        "an untrusted address registered without a challenge"
    );
    assert!(gw.registrations_of("erin").is_empty());
}

#[test]
fn unregister_removes_the_binding() {
    let Some(gw) = setup("frank", "secret-f") else {
        return;
    };
    let mut sipp = register(&gw, "register.xml", "frank", "secret-f", 3600);
    let port = sipp.port();
    assert_ok(&sipp.run());
    assert_eq!(gw.registrations_of("frank").len(), 1);
    // Same Contact (same local port), Expires: 0.
    let out = register(&gw, "register.xml", "frank", "secret-f", 0)
        .local_port(port)
        .run();
    assert_ok(&out);
    let gone = wait_until(Duration::from_secs(2), || {
        gw.registrations_of("frank").is_empty()
    });
    assert!(gone, "still registered: {:?}", gw.registrations_of("frank"));
}

#[test]
fn expires_below_min_expires_gets_423() {
    let Some(gw) = setup("grace", "secret-g") else {
        return;
    };
    // The scenario checks that the 423 carries a Min-Expires header.
    let out = register(&gw, "register_423.xml", "grace", "secret-g", 30).run();
    assert_ok(&out);
    assert!(gw.registrations_of("grace").is_empty());
}
