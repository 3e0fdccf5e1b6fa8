//! `GET /api/events` against the real binary and real peers. The stream is for admins only (no
//! token 401, an Entra ID non-admin 403, both at once; an admin signed in through the emulated
//! Entra ID gets it, and their changes arrive under their UPN), opens with `ready`, and carries
//! as they happen: a phone's registration and unregistration (a raw REGISTER from a trusted
//! address), an admin's configuration change, and a SIPp phone's registration and call (started,
//! answered, ended: the call's record, the same as the call history's). A client that goes away
//! is no longer counted as a listener, and a draining server ends the stream.

use std::net::UdpSocket;
use std::time::Duration;

use csps_tests::emulator::{EmulatorOptions, TeamsEmulator};
use csps_tests::sse::{Event, EventStream};
use csps_tests::{Gateway, Sipp, free_port, wait_until};
use serde_json::json;

const DOMAIN: &str = "csps.local";

/// An open stream for `token`, checked: 200, `text/event-stream`, `ready` naming the server.
fn admin_stream(gw: &Gateway, token: &str) -> EventStream {
    let mut events = EventStream::open(gw.http, Some(token)).expect("open the stream");
    assert_eq!(events.status, 200, "{}", events.head);
    assert!(
        events
            .head
            .to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{}",
        events.head
    );
    let ready = events.next(Duration::from_secs(5)).expect("ready");
    assert_eq!(ready.name, "ready");
    assert_eq!(ready.data["server"], "test");
    events
}

/// The next event named `name` (others skipped), within `secs` seconds.
fn next_named(events: &mut EventStream, name: &str, secs: u64) -> Event {
    events
        .wait_for(Duration::from_secs(secs), |e| e.name == name)
        .unwrap_or_else(|why| panic!("no {name}: {why}"))
}

/// `csps_event_listeners` reaches `n` within 20 s (a dropped client is noticed at the latest
/// when the 15 s keep-alive cannot be written).
fn listeners_become(gw: &Gateway, n: f64) -> bool {
    wait_until(Duration::from_secs(20), || {
        gw.metric("csps_event_listeners") == Some(n)
    })
}

#[test]
fn registrations_and_config_changes_reach_the_event_stream() {
    let Some(gw) = Gateway::start_or_skip() else {
        return;
    };
    gw.create_user("ev-alice", "secret-ev");
    gw.trust("127.0.0.0/8");

    // Admins only: no token is 401 (the stream is not a config API, so localhost is not enough).
    let anonymous = EventStream::open(gw.http, None).expect("open without a token");
    assert_eq!(anonymous.status, 401, "{}", anonymous.head);
    drop(anonymous);

    let mut events = admin_stream(&gw, &gw.token);
    assert!(listeners_become(&gw, 1.0), "{}", gw.metrics_text());

    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let local = sock.local_addr().expect("local addr");
    let call_id = csps_tests::raw::token("ev");
    let req = csps_tests::raw::register(local, "ev-alice", &call_id, 1, 300);
    let resp = csps_tests::raw::udp_request(&sock, gw.sip_addr(), &req, Duration::from_secs(5))
        .expect("REGISTER");
    assert_eq!(resp.status, 200, "REGISTER: {resp:?}");
    let added = next_named(&mut events, "registration.added", 5);
    assert_eq!(
        added.data["aor"], "sip:ev-alice@csps.local",
        "{}",
        added.data
    );
    assert_eq!(added.data["server"], "test");
    assert_eq!(added.data["transport"], "udp");
    assert_eq!(added.data["source"], local.to_string());
    assert_eq!(added.data["user_agent"], "events-test");
    assert!(
        added.data["contact"]
            .as_str()
            .is_some_and(|c| c.contains(&local.to_string())),
        "{}",
        added.data
    );
    // The same registration the API lists.
    let listed = gw.registrations_of("ev-alice");
    assert_eq!(listed.len(), 1, "{listed:?}");
    for field in [
        "aor",
        "contact",
        "source",
        "transport",
        "user_agent",
        "instance_id",
    ] {
        assert_eq!(listed[0][field], added.data[field], "{field}");
    }

    let req = csps_tests::raw::register(local, "ev-alice", &call_id, 2, 0);
    let resp = csps_tests::raw::udp_request(&sock, gw.sip_addr(), &req, Duration::from_secs(5))
        .expect("unREGISTER");
    assert_eq!(resp.status, 200, "unREGISTER: {resp:?}");
    let removed = next_named(&mut events, "registration.removed", 5);
    assert_eq!(removed.data["aor"], "sip:ev-alice@csps.local");
    assert_eq!(removed.data["server"], "test");
    assert!(
        removed.data["binding"]
            .as_str()
            .is_some_and(|b| b.contains(&local.to_string())),
        "{}",
        removed.data
    );
    assert!(gw.registrations_of("ev-alice").is_empty());

    let r = gw.api(
        "PUT",
        "/api/config/test/Data.SipConfig.MaxExpires",
        Some(&json!(1800)),
    );
    assert_eq!(r.status, 200, "PUT leaf: {}", r.body);
    let changed = next_named(&mut events, "config.changed", 5);
    assert_eq!(changed.data["actor"], "admin-token");
    assert!(
        changed.data["target"]
            .as_str()
            .is_some_and(|t| t.contains("MaxExpires")),
        "{}",
        changed.data
    );

    // A second client comes and goes: it stops being a listener once it is gone.
    let second = admin_stream(&gw, &gw.token);
    assert!(listeners_become(&gw, 2.0), "{}", gw.metrics_text());
    drop(second);
    assert!(listeners_become(&gw, 1.0), "{}", gw.metrics_text());

    // Draining ends the stream at once (the drain itself then waits for the SIP transactions).
    gw.signal("TERM");
    let end = events
        .wait_for(Duration::from_secs(10), |_| false)
        .expect_err("no event is wanted");
    // Closed by the server: an orderly end, or a reset when it closed with data in flight.
    assert!(
        end.contains("the stream ended") || end.contains("read: "),
        "{end}"
    );
}

#[test]
fn a_sipp_phones_registration_and_call_reach_the_event_stream() {
    let Some(gw) = csps_tests::gateway_for("sipp") else {
        return;
    };
    gw.create_user("alice", "alice-secret-1");
    gw.create_user("bob", "bob-secret-1");
    let mut events = admin_stream(&gw, &gw.token);

    // Bob's SIPp phone registers (digest) and waits for a call on the same port.
    let port = free_port();
    let reg = Sipp::new("register.xml", gw.sip_addr())
        .local_port(port)
        .key("user", "bob")
        .key("domain", DOMAIN)
        .key("expires", 300)
        .auth("bob", "bob-secret-1")
        .timeout(Duration::from_secs(10))
        .run();
    assert!(reg.ok(), "bob did not register:\n{}", reg.output);
    let added = next_named(&mut events, "registration.added", 5);
    assert_eq!(
        added.data["aor"],
        format!("sip:bob@{DOMAIN}"),
        "{}",
        added.data
    );
    assert_eq!(added.data["user_agent"], "SIPp csps-e2e", "{}", added.data);
    assert_eq!(
        added.data["source"],
        format!("127.0.0.1:{port}"),
        "{}",
        added.data
    );

    let bob = Sipp::new("uas_answer.xml", gw.sip_addr())
        .local_port(port)
        .key("user", "bob")
        .arg("-mp")
        .arg(free_port().to_string())
        .arg("-rtp_echo")
        .timeout(Duration::from_secs(30));
    let bob = std::thread::spawn(move || bob.run());
    // Alice's SIPp phone calls bob (after the 407 challenge); she hangs up.
    let alice = Sipp::caller(
        "uac_call.xml",
        gw.sip_addr(),
        ("alice", "alice-secret-1"),
        "bob",
        DOMAIN,
    )
    .run();
    let bob = bob.join().expect("callee thread");
    assert!(alice.ok(), "caller failed:\n{}", alice.output);
    assert!(bob.ok(), "callee failed:\n{}", bob.output);

    // started, answered, ended, in this order, for the same call.
    let started = next_named(&mut events, "call.started", 10).data;
    assert_eq!(
        started["caller"],
        format!("sip:alice@{DOMAIN}"),
        "{started}"
    );
    assert_eq!(started["callee"], format!("sip:bob@{DOMAIN}"), "{started}");
    assert!(started["answered_at"].is_null() && started["ended_at"].is_null());
    let id = started["id"].as_u64().expect("call id");
    let answered = next_named(&mut events, "call.answered", 10).data;
    assert_eq!(answered["id"], id, "{answered}");
    assert!(answered["answered_at"].is_string(), "{answered}");
    assert!(answered["ended_at"].is_null(), "{answered}");
    let ended = next_named(&mut events, "call.ended", 10).data;
    assert_eq!(ended["id"], id, "{ended}");
    assert_eq!(ended["status"], 200, "{ended}");
    assert_eq!(ended["end_reason"], "caller_hung_up", "{ended}");
    assert!(ended["ended_at"].is_string(), "{ended}");
    // The record the feed sent is the one the call history keeps, stored before the event was
    // sent: a console reloading the history on `call.ended` finds it at once.
    let history = gw.api("GET", "/api/calls/history", None).json();
    assert_eq!(history.as_array().map(Vec::len), Some(1), "{history}");
    assert_eq!(history[0], ended);
}

const TENANT: &str = "5a1e7c1d-0000-4000-8000-00000000e701";
const CLIENT_ID: &str = "c11e0001-0000-4000-8000-00000000e702";
const ADMIN_GROUP: &str = "9a0f0000-0000-4000-8000-00000000e703";

#[test]
fn only_admins_of_the_admin_app_get_the_stream() {
    let Some(emu) = TeamsEmulator::start_or_skip(&EmulatorOptions {
        tenant: TENANT.into(),
        ..EmulatorOptions::default()
    }) else {
        return;
    };
    let Some(gw) = Gateway::start_or_skip() else {
        return;
    };
    for (leaf, value) in [
        ("Tenant", TENANT),
        ("ClientId", CLIENT_ID),
        ("AdminGroupId", ADMIN_GROUP),
        ("Authority", &emu.base_url()),
    ] {
        gw.set_global(&format!("AdminAzureApp.{leaf}"), json!(value));
    }
    let user = |oid: &str, upn: &str, groups: &[&str]| {
        json!({"aud": CLIENT_ID, "oid": oid, "upn": upn, "sub": format!("sub-{oid}"),
            "groups": groups})
    };
    let non_admin = emu.mint(
        user(
            "0b1d0000-0000-4000-8000-0000000000e2",
            "user@contoso.test",
            &[],
        ),
        false,
    );
    let admin_claims = user(
        "0b1d0000-0000-4000-8000-0000000000e1",
        "admin@contoso.test",
        &[ADMIN_GROUP],
    );
    let forged = emu.mint(admin_claims.clone(), true);
    let admin = emu.mint(admin_claims, false);

    for (who, token, status) in [
        ("no token", None, 401),
        ("forged", Some(forged.as_str()), 401),
        ("non-admin", Some(non_admin.as_str()), 403),
    ] {
        let refused = EventStream::open(gw.http, token).expect("open");
        assert_eq!(refused.status, status, "{who}: {}", refused.head);
        assert!(
            refused.head.contains("application/problem+json"),
            "{who}: {}",
            refused.head
        );
    }
    assert_eq!(gw.metric("csps_event_listeners"), Some(0.0));

    let mut events = admin_stream(&gw, &admin);
    let body = json!({"username": "ev-carol", "password": "carol-secret-1"}).to_string();
    let r = csps_tests::http::request(gw.http, "POST", "/api/users", Some(&admin), Some(&body))
        .expect("POST /api/users");
    assert_eq!(r.status, 201, "{}", r.body);
    let changed = next_named(&mut events, "user.changed", 5);
    assert_eq!(
        changed.data["actor"], "admin@contoso.test",
        "{}",
        changed.data
    );
}
