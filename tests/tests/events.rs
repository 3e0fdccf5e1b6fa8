//! `GET /api/events` against the real binary: the stream is for admins only, opens with `ready`,
//! and carries a phone's registration and unregistration (a raw REGISTER from a trusted address)
//! and an admin's configuration change as they happen.

use std::net::UdpSocket;
use std::time::Duration;

use csps_tests::sse::EventStream;
use csps_tests::{Gateway, skip};

#[test]
fn registrations_and_config_changes_reach_the_event_stream() {
    let gw = match Gateway::start() {
        Ok(g) => g,
        Err(e) => return skip(&e),
    };
    gw.create_user("ev-alice", "secret-ev");
    gw.trust("127.0.0.0/8");

    // Admins only: no token is 401 (the stream is not a config API, so localhost is not enough).
    let anonymous = EventStream::open(gw.http, None).expect("open without a token");
    assert_eq!(anonymous.status, 401, "{}", anonymous.head);

    let mut events = EventStream::open(gw.http, Some(&gw.token)).expect("open the stream");
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

    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let local = sock.local_addr().expect("local addr");
    let call_id = csps_tests::raw::token("ev");
    let req = csps_tests::raw::register(local, "ev-alice", &call_id, 1, 300);
    let resp = csps_tests::raw::udp_request(&sock, gw.sip_addr(), &req, Duration::from_secs(5))
        .expect("REGISTER");
    assert_eq!(resp.status, 200, "REGISTER: {resp:?}");
    let added = events
        .wait_for(Duration::from_secs(5), |e| e.name == "registration.added")
        .expect("registration.added");
    assert_eq!(
        added.data["aor"], "sip:ev-alice@csps.local",
        "{:?}",
        added.data
    );
    assert_eq!(added.data["server"], "test");
    assert_eq!(added.data["source"], local.to_string());
    assert_eq!(added.data["user_agent"], "events-test");
    assert!(
        added.data["contact"]
            .as_str()
            .is_some_and(|c| c.contains(&local.to_string())),
        "{:?}",
        added.data
    );

    let req = csps_tests::raw::register(local, "ev-alice", &call_id, 2, 0);
    let resp = csps_tests::raw::udp_request(&sock, gw.sip_addr(), &req, Duration::from_secs(5))
        .expect("unREGISTER");
    assert_eq!(resp.status, 200, "unREGISTER: {resp:?}");
    let removed = events
        .wait_for(Duration::from_secs(5), |e| e.name == "registration.removed")
        .expect("registration.removed");
    assert_eq!(removed.data["aor"], "sip:ev-alice@csps.local");
    assert!(gw.registrations_of("ev-alice").is_empty());

    let r = gw.api(
        "PUT",
        "/api/config/test/Data.SipConfig.MaxExpires",
        Some(&serde_json::json!(1800)),
    );
    assert_eq!(r.status, 200, "PUT leaf: {}", r.body);
    let changed = events
        .wait_for(Duration::from_secs(5), |e| e.name == "config.changed")
        .expect("config.changed");
    assert_eq!(changed.data["actor"], "admin-token");
    assert!(
        changed.data["target"]
            .as_str()
            .is_some_and(|t| t.contains("MaxExpires")),
        "{:?}",
        changed.data
    );
}
