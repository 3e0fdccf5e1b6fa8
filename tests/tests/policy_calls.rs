//! WASM policies on the call path (issue 6), with real components built from `policies/` and
//! SIPp phones through the gateway binary: a routing module uploaded while a call runs applies
//! to new calls only (the running one keeps the built-in rule it was routed with); a routing
//! module that loops forever is contained (the call is routed by the built-in rule, the failure
//! shows in the API); a quirks module edits the offer sent to the device family it is for.

#[path = "../../gateway/tests/policy_support/mod.rs"]
mod policy_support;

use std::net::UdpSocket;
use std::time::Duration;

use csps_tests::{Gateway, Sipp, free_port, raw, wait_until};
use serde_json::{Value, json};

const DOMAIN: &str = "csps.local";

fn user(gw: &Gateway, username: &str, phone: Option<&str>) {
    let mut body = json!({"username": username, "password": format!("{username}-secret-1")});
    if let Some(p) = phone {
        body["phone_number"] = json!(p);
    }
    let r = gw.api("POST", "/api/users", Some(&body));
    assert_eq!(r.status, 201, "POST /api/users {username}: {}", r.body);
}

/// Uploads `wasm` as the `kind` policy; returns the answer.
fn upload(gw: &Gateway, kind: &str, wasm: &[u8]) -> (u16, Value) {
    let r = gw.api_bytes(
        "PUT",
        &format!("/api/policies/{kind}"),
        "application/wasm",
        wasm,
    );
    (r.status, r.json())
}

/// Registers `user` from `port` with `user_agent` (the source is trusted: no challenge).
fn register(gw: &Gateway, user: &str, port: u16, user_agent: &str) {
    raw::register_trusted(gw.sip_addr(), user, DOMAIN, port, user_agent)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// A SIPp callee on `port` (registered there beforehand) answering one call with `scenario`.
fn answer(
    gw: &Gateway,
    scenario: &str,
    user: &str,
    port: u16,
) -> std::thread::JoinHandle<csps_tests::SippOutcome> {
    let sipp = Sipp::new(scenario, gw.sip_addr())
        .local_port(port)
        .key("user", user)
        .arg("-mp")
        .arg(free_port().to_string())
        .timeout(Duration::from_secs(40));
    std::thread::spawn(move || sipp.run())
}

/// alice dials `dialled` with SIPp and stays in the call for `hold_ms`.
fn dial(
    gw: &Gateway,
    dialled: &str,
    hold_ms: u64,
) -> std::thread::JoinHandle<csps_tests::SippOutcome> {
    let sipp = Sipp::new("uac_dial.xml", gw.sip_addr())
        .key("user", "alice")
        .key("domain", DOMAIN)
        .key("callee", dialled)
        .arg("-d")
        .arg(hold_ms.to_string())
        .arg("-mp")
        .arg(free_port().to_string())
        .timeout(Duration::from_secs(40));
    std::thread::spawn(move || sipp.run())
}

/// The final answer to an INVITE from alice for `dialled`, sent by hand (then ACKed).
fn invite_status(gw: &Gateway, dialled: &str) -> (u16, String) {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let local = sock.local_addr().expect("local address");
    let (branch, tag, call_id) = (raw::token("i"), raw::token("t"), raw::token("c"));
    let head = |method: &str, to_tag: &str| {
        format!(
            "{method} sip:{dialled}@{DOMAIN} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bK{branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:alice@{DOMAIN}>;tag={tag}\r\n\
             To: <sip:{dialled}@{DOMAIN}>{to_tag}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: 1 {method}\r\n"
        )
    };
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
               m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
    let invite = format!(
        "{}Contact: <sip:alice@{local}>\r\nContent-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{sdp}",
        head("INVITE", ""),
        sdp.len()
    );
    let resp = raw::udp_request(&sock, gw.sip_addr(), &invite, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("INVITE {dialled}: {e}"));
    let to_tag = resp
        .headers
        .get("To")
        .and_then(|t| t.split_once(";tag="))
        .map(|(_, t)| format!(";tag={t}"))
        .unwrap_or_default();
    let ack = format!("{}Content-Length: 0\r\n\r\n", head("ACK", &to_tag));
    let _ = sock.send_to(ack.as_bytes(), gw.sip_addr());
    (resp.status, resp.reason.clone())
}

fn calls(gw: &Gateway) -> Vec<Value> {
    gw.api("GET", "/api/calls", None)
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn assert_ok(gw: &Gateway, who: &str, outcome: &csps_tests::SippOutcome) {
    assert!(
        outcome.ok(),
        "{who} failed:\n{}\n--- gateway ---\n{}",
        outcome.output,
        gw.log_tail(60)
    );
}

/// A gateway with alice (caller), bob and carol (+972501234567), and 127.0.0.0/8 trusted.
fn setup() -> Option<Gateway> {
    let gw = csps_tests::gateway_for("sipp")?;
    user(&gw, "alice", None);
    user(&gw, "bob", None);
    user(&gw, "carol", Some("+972501234567"));
    gw.trust("127.0.0.0/8");
    // The trusted range reaches the SIP core through the live configuration: wait for it.
    let probe = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let trusted = wait_until(Duration::from_secs(5), || {
        let msg = raw::options("UDP", probe.local_addr().expect("addr"), gw.sip_addr());
        raw::udp_request(&probe, gw.sip_addr(), &msg, Duration::from_secs(1)).is_ok()
            && invite_status(&gw, "nobody-here").0 != 407
    });
    assert!(trusted, "127.0.0.0/8 not trusted in time");
    Some(gw)
}

#[test]
fn a_routing_module_uploaded_during_a_call_applies_to_new_calls_only() {
    let Some(dialplan) = policy_support::component("routing_dialplan") else {
        return;
    };
    let looping = policy_support::component("test_loop").expect("built with the others");
    let Some(gw) = setup() else { return };
    let (bob_port, carol_port) = (free_port(), free_port());
    register(&gw, "bob", bob_port, "SIPp bob");
    register(&gw, "carol", carol_port, "SIPp carol");

    // Without a module, the built-in rule has no national dial plan: 484.
    assert_eq!(invite_status(&gw, "0501234567").0, 484);

    // A call routed by the built-in rule, running while the module is uploaded.
    let bob = answer(&gw, "uas_answer.xml", "bob", bob_port);
    let first = dial(&gw, "bob", 8000);
    assert!(
        wait_until(Duration::from_secs(10), || calls(&gw)
            .iter()
            .any(|c| c["state"] == "answered")),
        "the first call was not answered:\n{}",
        gw.log_tail(40)
    );
    let (status, body) = upload(&gw, "routing", &dialplan);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 1, "{body}");

    // A new call for 0501234567 follows the module: +972501234567 is carol's number.
    let carol = answer(&gw, "uas_answer.xml", "carol", carol_port);
    let second = dial(&gw, "0501234567", 3000);
    assert!(
        wait_until(Duration::from_secs(10), || calls(&gw).len() == 2
            && calls(&gw).iter().all(|c| c["state"] == "answered")),
        "the second call was not answered next to the first:\n{:?}\n{}",
        calls(&gw),
        gw.log_tail(40)
    );
    // The running call keeps the built-in rule it began with; the new one names the module.
    let listed = calls(&gw);
    let version_of = |party: &str| {
        listed
            .iter()
            .find(|c| c["legs"][1]["party"] == format!("sip:{party}@{DOMAIN}"))
            .map(|c| c["routing_policy"].clone())
            .unwrap_or_else(|| panic!("no call to {party}: {listed:?}"))
    };
    assert_eq!(version_of("bob"), Value::Null, "{listed:?}");
    assert_eq!(version_of("carol"), json!(1), "{listed:?}");
    for (who, h) in [("first caller", first), ("second caller", second)] {
        assert_ok(&gw, who, &h.join().expect("caller thread"));
    }
    for (who, h) in [("bob", bob), ("carol", carol)] {
        assert_ok(&gw, who, &h.join().expect("callee thread"));
    }
    let status = gw.api("GET", "/api/policies/routing", None).json();
    assert!(status["decisions"].as_u64().unwrap_or(0) >= 1, "{status}");

    // A module that loops forever: the call is routed by the built-in rule all the same, the
    // gateway goes on, and the API says what happened.
    let (status, body) = upload(&gw, "routing", &looping);
    assert_eq!(status, 200, "{body}");
    let bob = answer(&gw, "uas_answer.xml", "bob", bob_port);
    let third = dial(&gw, "bob", 500);
    assert_ok(
        &gw,
        "caller under the looping module",
        &third.join().expect("thread"),
    );
    assert_ok(&gw, "bob", &bob.join().expect("thread"));
    let status = gw.api("GET", "/api/policies/routing", None).json();
    let failures = &status["failures"];
    let stopped =
        failures["fuel"].as_u64().unwrap_or(0) + failures["timeout"].as_u64().unwrap_or(0);
    assert!(stopped >= 1, "{status}");
    assert!(status["last_error"].is_string(), "{status}");
    assert_eq!(gw.api("GET", "/healthz", None).status, 200);
}

#[test]
fn a_quirks_module_edits_what_is_sent_to_its_device_family() {
    let Some(dect) = policy_support::component("quirks_dect") else {
        return;
    };
    let Some(gw) = setup() else { return };
    let base_port = free_port();
    register(&gw, "bob", base_port, "ACME DECT-200 fw 1.0");
    let (status, body) = upload(&gw, "quirks", &dect);
    assert_eq!(status, 200, "{body}");
    // The base fails its scenario unless the offer lost Opus and rtcp-fb, got 20 ms packets, and
    // Allow lost INFO.
    let base = answer(&gw, "uas_dect.xml", "bob", base_port);
    let caller = dial(&gw, "bob", 1500);
    assert!(
        wait_until(Duration::from_secs(10), || calls(&gw)
            .iter()
            .any(|c| c["state"] == "answered" && c["quirks_policy"] == 1)),
        "no answered call pinned to quirks v1: {:?}\n{}",
        calls(&gw),
        gw.log_tail(40)
    );
    assert_ok(&gw, "caller", &caller.join().expect("thread"));
    assert_ok(&gw, "DECT base", &base.join().expect("thread"));
    let status = gw.api("GET", "/api/policies/quirks", None).json();
    assert!(status["decisions"].as_u64().unwrap_or(0) >= 2, "{status}");
    assert!(
        status["failures"].as_object().is_some_and(|f| f.is_empty()),
        "{status}"
    );
}
