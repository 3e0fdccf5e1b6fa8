//! RFC 3891 §3 (the Replaces header at a UAS): a phone's INVITE with Replaces naming the gateway's
//! dialog with another phone. A device of the same user takes over an answered call; any user of
//! the domain picks up a ringing one; the refusals (481, 486, 403, 400) leave the call alone.

use std::net::UdpSocket;
use std::time::Duration;

use csps_tests::baresip::registered_tone_phone;
use csps_tests::emulator::{EmulatorOptions, TeamsEmulator};
use csps_tests::{Gateway, Sipp, have_tool, raw, skip, wait_until};
use serde_json::json;

const DOMAIN: &str = "csps.local";
/// The gateway's FQDN on the Teams trunk, and alice's number there.
const FQDN: &str = "sbc1.csps.test";
const ALICE: &str = "+14255550100";

/// A gateway with alice, bob and carol (passwords `<user>-secret-1`); `None` (skipped) without
/// baresip.
fn gateway() -> Option<Gateway> {
    if !have_tool("baresip") {
        skip("baresip not installed (run e2e/setup)");
        return None;
    }
    let gw = csps_tests::gateway_for("sipp")?;
    for u in ["alice", "bob", "carol"] {
        gw.create_user(u, &format!("{u}-secret-1"));
    }
    Some(gw)
}

/// The value of header `name` in the SIP message `text`.
fn header(text: &str, name: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .to_owned()
}

/// The `tag` parameter of a From or To value.
fn tag(value: &str) -> String {
    value
        .split(";tag=")
        .nth(1)
        .map(|t| t.split(';').next().unwrap_or(t).to_owned())
        .unwrap_or_else(|| panic!("no tag in {value}"))
}

/// The running call (waiting up to 15 s for one in `state`): its id.
fn call_in(gw: &Gateway, state: &str) -> u64 {
    let mut calls = serde_json::Value::Null;
    let found = wait_until(Duration::from_secs(15), || {
        calls = gw.api("GET", "/api/calls", None).json();
        calls[0]["state"] == state
    });
    assert!(found, "no {state} call: {calls}\n{}", gw.log_tail(40));
    calls[0]["id"].as_u64().expect("call id")
}

/// The gateway's dialog with the callee's device in call `id` as a Replaces names it (RFC 3891
/// §3: `to-tag` the gateway's, `from-tag` the device's), the device's tag read from its
/// response `status` (180: the early dialog, 200: the confirmed one).
fn callee_dialog(gw: &Gateway, id: u64, status: u16) -> String {
    let mut resp = String::new();
    let seen = wait_until(Duration::from_secs(10), || {
        let messages = gw
            .api("GET", &format!("/api/calls/{id}/messages"), None)
            .json();
        messages.as_array().is_some_and(|m| {
            m.iter()
                .any(|m| m["leg"] == "b" && m["method"] == "INVITE" && m["status"] == status)
        })
    });
    assert!(seen, "no {status} from the callee in call {id}");
    resp.push_str(&gw.call_message(id, "b", ("INVITE", "in", Some(status))));
    let invite = gw.call_message(id, "b", ("INVITE", "out", None));
    assert!(
        header(&invite, "Supported").contains("replaces"),
        "the INVITE to a phone says it supports Replaces: {invite}"
    );
    format!(
        "{};to-tag={};from-tag={}",
        header(&invite, "Call-ID"),
        tag(&header(&invite, "From")),
        tag(&header(&resp, "To"))
    )
}

/// The share of `freq` in what the baresip phone recording into `dir` decoded.
fn heard(dir: &std::path::Path, freq: f32) -> f32 {
    let pcm = csps_tests::audio::heard_in(dir).expect("recording");
    csps_tests::audio::tone_share(&pcm, freq)
}

/// Bob's phone (SIPp `scenario`, registered, sending no media of its own) in a thread, and
/// alice (baresip, 600 Hz, recording into `dir`) calling bob.
fn alice_calls_bob(
    gw: &Gateway,
    scenario: &str,
    dir: &std::path::Path,
) -> (
    std::thread::JoinHandle<csps_tests::SippOutcome>,
    csps_tests::baresip::Baresip,
) {
    let bob = Sipp::callee(scenario, gw.sip_addr(), ("bob", "bob-secret-1"), DOMAIN)
        .unwrap_or_else(|e| panic!("{e}"))
        .silent();
    let bob = std::thread::spawn(move || bob.run());
    let dial = format!("/dial sip:bob@{DOMAIN}");
    let alice = registered_tone_phone(gw, dir, ("alice", DOMAIN), 600, &[&dial]);
    (bob, alice)
}

/// `user`'s phone (SIPp, authenticated after a 407, echoing RTP) sending an INVITE with
/// `Replaces: replaces` (`e2e/sipp/uac_replaces.xml`), talking 5 s and hanging up.
fn replacing(gw: &Gateway, user: &str, replaces: &str) -> Sipp {
    replacing_as("uac_replaces.xml", gw, user, replaces)
}

/// [`replacing`] playing `scenario`.
fn replacing_as(scenario: &str, gw: &Gateway, user: &str, replaces: &str) -> Sipp {
    let password = format!("{user}-secret-1");
    Sipp::caller(scenario, gw.sip_addr(), (user, &password), "bob", DOMAIN)
        .key("replaces", replaces)
        .arg("-rtp_echo")
}

/// A phone taking over an answered call: alice (baresip, 600 Hz) calls bob, whose first phone
/// (SIPp) answers and sends no media; bob's second device (SIPp, authenticated by digest after a
/// 407, echoing RTP) sends an INVITE with Replaces naming the gateway's dialog with the first
/// phone. It gets 200 (with `Supported: replaces`), the first phone a BYE with `Reason`, alice a
/// re-INVITE with the new device's media, and alice then hears her own tone echoed by it: the
/// audio runs alice ↔ the new device. The call's record still names alice and bob, and the new
/// device's BYE ends it.
#[test]
fn a_device_of_the_same_user_takes_over_an_answered_call() {
    let Some(gw) = gateway() else {
        return;
    };
    let alice_dir = tempfile::tempdir().expect("temp dir");
    let (bob, alice) = alice_calls_bob(&gw, "uas_answer.xml", alice_dir.path());
    let id = call_in(&gw, "answered");
    std::thread::sleep(Duration::from_secs(2));
    let replaces = callee_dialog(&gw, id, 200);
    let second = replacing(&gw, "bob", &replaces).run();
    assert!(
        second.ok(),
        "bob's second device failed:\n{}\n--- gateway ---\n{}",
        second.output,
        gw.log_tail(60)
    );
    let bob = bob.join().expect("bob thread");
    assert!(bob.ok(), "bob's first phone got no BYE:\n{}", bob.output);
    let record = gw.ended_call();
    assert_eq!(record["caller"], format!("sip:alice@{DOMAIN}"), "{record}");
    assert_eq!(record["callee"], format!("sip:bob@{DOMAIN}"), "{record}");
    let bye = gw.call_message(id, "b", ("BYE", "out", None));
    assert_eq!(
        header(&bye, "Reason"),
        "SIP;cause=200;text=\"Call replaced\"",
        "{bye}"
    );
    alice_hears_the_new_device(&gw, id, alice, alice_dir.path(), "bob's second device");
}

/// Alice (recording into `dir`) was re-INVITEd in call `id` to the media of the device that
/// took bob's place (`who`, echoing RTP), `sendrecv`, and hears her own 600 Hz tone come back.
fn alice_hears_the_new_device(
    gw: &Gateway,
    id: u64,
    alice: csps_tests::baresip::Baresip,
    dir: &std::path::Path,
    who: &str,
) {
    let reinvite = gw.call_message(id, "a", ("INVITE", "out", None));
    assert!(reinvite.contains("a=sendrecv"), "{reinvite}");
    std::thread::sleep(Duration::from_millis(500));
    drop(alice);
    let alice_hears_herself = heard(dir, 600.0);
    eprintln!("tone share: alice hears her tone echoed by {who} {alice_hears_herself:.2}");
    assert!(
        alice_hears_herself > 0.5,
        "alice hears 600 Hz at {alice_hears_herself}"
    );
}

/// RFC 3891 with RFC 3264 §4, an INVITE with Replaces without an offer (as some desk phones
/// send it): alice (baresip, 600 Hz) calls bob's first phone (SIPp, silent). Bob's second device
/// first sends one and ACKs the gateway's offer without an answer: it gets the BYE (`Reason`
/// cause 488) and the call goes on untouched with the first phone. Then it sends one again and
/// answers the offer (PCMU) in its ACK, echoing RTP: the first phone gets the BYE "Call
/// replaced", alice a `sendrecv` re-INVITE, and she hears her own tone echoed by the new device.
#[test]
fn a_device_of_the_same_user_takes_over_an_answered_call_without_an_offer() {
    let Some(gw) = gateway() else {
        return;
    };
    let alice_dir = tempfile::tempdir().expect("temp dir");
    let (bob, alice) = alice_calls_bob(&gw, "uas_answer.xml", alice_dir.path());
    let id = call_in(&gw, "answered");
    std::thread::sleep(Duration::from_secs(2));
    let replaces = callee_dialog(&gw, id, 200);
    let unanswered = replacing_as("uac_replaces_no_answer.xml", &gw, "bob", &replaces).run();
    assert!(
        unanswered.ok(),
        "an ACK without an answer:\n{}\n--- gateway ---\n{}",
        unanswered.output,
        gw.log_tail(60)
    );
    let calls = gw.api("GET", "/api/calls", None).json();
    assert_eq!(calls[0]["id"], id, "{calls}");
    assert_eq!(calls[0]["state"], "answered", "{calls}");
    let second = replacing_as("uac_replaces_offerless.xml", &gw, "bob", &replaces).run();
    assert!(
        second.ok(),
        "bob's second device failed:\n{}\n--- gateway ---\n{}",
        second.output,
        gw.log_tail(60)
    );
    let bob = bob.join().expect("bob thread");
    assert!(bob.ok(), "bob's first phone got no BYE:\n{}", bob.output);
    let record = gw.ended_call();
    assert_eq!(record["callee"], format!("sip:bob@{DOMAIN}"), "{record}");
    let messages = gw
        .api("GET", &format!("/api/calls/{id}/messages"), None)
        .json();
    let byes: Vec<&str> = messages
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["method"] == "BYE" && m["direction"] == "out" && m["status"].is_null())
        .filter_map(|m| m["text"].as_str())
        .collect();
    assert!(
        byes.iter()
            .any(|b| b.contains("Reason: SIP;cause=200;text=\"Call replaced\"")),
        "the first phone's BYE: {byes:?}"
    );
    alice_hears_the_new_device(&gw, id, alice, alice_dir.path(), "bob's offerless device");
}

/// A gateway with alice (activated for Teams, number [`ALICE`]) and the Teams emulator whose
/// first proxy is up on its trunk; `None` (skipped) without SIPp or the emulator.
fn gateway_with_teams() -> Option<(Gateway, TeamsEmulator)> {
    let gw = csps_tests::gateway_for("sipp")?;
    let emu = TeamsEmulator::start_or_skip(&EmulatorOptions {
        tenant: "00000000-0000-4000-8000-000000000005".into(),
        sip_fqdn: Some(FQDN.into()),
        ..EmulatorOptions::default()
    })?;
    gw.create_account(
        json!({"username": "alice", "password": "alice-secret-1", "domain": DOMAIN,
               "phone_number": ALICE}),
        true,
    );
    emu.attach_trunk(&gw, FQDN, 1);
    let mut trunk = serde_json::Value::Null;
    let up = wait_until(Duration::from_secs(15), || {
        trunk = gw.api("GET", "/api/trunk", None).json();
        trunk["proxies"][0]["up"] == true && trunk["proxies"][0]["connected"] == true
    });
    assert!(up, "trunk not up: {trunk:#}\n{}", gw.log_tail(30));
    Some((gw, emu))
}

/// RFC 3891 in a call with Teams: Teams calls alice's number, her first phone (SIPp, silent)
/// answers; her second device (SIPp, echoing RTP) replaces the phone's dialog with the gateway
/// and joins the call with the Teams party. The first phone gets the BYE, Teams one `sendrecv`
/// re-INVITE that stays SRTP (RTP/SAVP with a key; the trunk leg always is), and the
/// emulator's tone comes back authenticated from the new device (media both ways through the
/// relay, SRTP towards Teams and plain RTP to the phone).
#[test]
fn a_device_of_the_same_user_takes_over_a_call_with_teams() {
    let Some((gw, emu)) = gateway_with_teams() else {
        return;
    };
    let first = Sipp::callee(
        "uas_teams.xml",
        gw.sip_addr(),
        ("alice", "alice-secret-1"),
        DOMAIN,
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .silent();
    let first = std::thread::spawn(move || first.run());
    assert!(
        wait_until(Duration::from_secs(5), || gw
            .registrations_of("alice")
            .len()
            == 1),
        "alice's phone registered"
    );
    // SIPp needs a moment to listen after its REGISTER run.
    std::thread::sleep(Duration::from_millis(300));
    let teams_call = emu.call_in(1, ALICE, 30_000);
    let id = call_in(&gw, "answered");
    let replaces = callee_dialog(&gw, id, 200);
    let second = replacing(&gw, "alice", &replaces).run();
    assert!(
        second.ok(),
        "alice's second device failed:\n{}\n--- gateway ---\n{}",
        second.output,
        gw.log_tail(60)
    );
    let first = first.join().expect("first phone thread");
    assert!(
        first.ok(),
        "alice's first phone got no BYE:\n{}",
        first.output
    );
    let mut record = serde_json::Value::Null;
    let ended = wait_until(Duration::from_secs(10), || {
        record = emu
            .sip_calls()
            .into_iter()
            .find(|c| c["call_id"] == teams_call.as_str())
            .unwrap_or_default();
        record["state"] == "ended"
    });
    assert!(ended, "Teams' call ended: {record:#}");
    assert_eq!(record["ended_by"], "sbc", "{record:#}");
    assert_eq!(record["sbc_offers"], json!(["sendrecv"]), "{record:#}");
    let returned = record["rtp"]["returned"].as_u64().unwrap_or(0);
    eprintln!("Teams' tone packets back from the new device: {returned}");
    assert!(returned >= 20, "{record:#}\n{}", gw.log_tail(40));
    assert_eq!(record["rtp"]["srtp_failed"], 0, "{record:#}");
    let reinvite = gw.call_message(id, "a", ("INVITE", "out", None));
    assert!(
        reinvite.contains(" RTP/SAVP ") && reinvite.contains("a=crypto:"),
        "{reinvite}"
    );
}

/// Attended transfer of a call with Teams to a local phone (RFC 5589 §7): alice (SIPp, trusted)
/// calls a number through the trunk (Teams answers with its tone), consults bob (SIPp, echoing
/// RTP) and REFERs the call with Teams with a Replaces naming her consultation dialog. Bob's
/// device gets an INVITE with Replaces of its consultation dialog and takes alice's place:
/// Teams gets one `sendrecv` re-INVITE (SRTP) and its tone comes back from bob.
#[test]
fn a_call_with_teams_is_transferred_attended_to_a_local_phone() {
    let Some((gw, emu)) = gateway_with_teams() else {
        return;
    };
    gw.create_user("bob", "bob-secret-1");
    let bob = Sipp::callee(
        "uas_answer.xml",
        gw.sip_addr(),
        ("bob", "bob-secret-1"),
        DOMAIN,
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .calls(2)
    .timeout(Duration::from_secs(60));
    let bob = std::thread::spawn(move || bob.run());
    // Alice's calls come from loopback without a challenge, so one SIPp run holds both
    // dialogs (trusted only now: bob registered with his digest).
    trust_loopback(&gw);
    let alice = Sipp::new("uac_attended.xml", gw.sip_addr())
        .key("user", "alice")
        .key("callee", "+12065550123")
        .key("target", "bob")
        .key("domain", DOMAIN)
        // A Call-ID without '@', which the scenario's Refer-To carries unescaped.
        .arg("-cid_str")
        .arg("%u-%p-attended")
        .arg("-mp")
        .arg(csps_tests::free_port().to_string())
        .timeout(Duration::from_secs(40))
        .run();
    assert!(
        alice.ok(),
        "alice's attended transfer failed:\n{}\n--- gateway ---\n{}",
        alice.output,
        gw.log_tail(80)
    );
    let mut record = serde_json::Value::Null;
    let talking = wait_until(Duration::from_secs(10), || {
        record = emu
            .sip_calls()
            .into_iter()
            .find(|c| c["direction"] == "out")
            .unwrap_or_default();
        record["rtp"]["returned"].as_u64().unwrap_or(0) >= 20
    });
    eprintln!(
        "Teams' tone packets back from bob: {}",
        record["rtp"]["returned"]
    );
    assert!(talking, "{record:#}\n{}", gw.log_tail(40));
    assert_eq!(record["sbc_offers"], json!(["sendrecv"]), "{record:#}");
    assert_eq!(record["rtp"]["srtp_failed"], 0, "{record:#}");
    let calls = gw.api("GET", "/api/calls", None).json();
    assert_eq!(
        calls[0]["legs"][0]["party"],
        format!("sip:bob@{DOMAIN}"),
        "{calls}"
    );
    assert_eq!(calls[0]["legs"][1]["kind"], "teams", "{calls}");
    gw.admin_hang_up(calls[0]["id"].as_u64().expect("call id"));
    let bob = bob.join().expect("bob thread");
    assert!(bob.ok(), "bob's phone:\n{}", bob.output);
}

/// Call pickup: alice (baresip, 600 Hz) calls bob, whose phone (SIPp) rings; carol (SIPp,
/// authenticated, echoing RTP) sends an INVITE with Replaces naming the gateway's early dialog
/// with bob's phone. Carol gets 200, bob's phone a CANCEL ("Call completed elsewhere"), alice
/// the 200 with carol's media: `GET /api/calls` names carol as the callee, alice hears her tone
/// echoed by carol, and the record says alice called carol.
#[test]
fn another_user_of_the_domain_picks_up_a_ringing_call() {
    carol_picks_up("uac_replaces.xml");
}

/// [`another_user_of_the_domain_picks_up_a_ringing_call`] with carol's INVITE without an offer
/// (RFC 3264 §4): her 200 carries the offer bob's phone got, her ACK the answer, and only then
/// is alice answered.
#[test]
fn another_user_of_the_domain_picks_up_a_ringing_call_without_an_offer() {
    carol_picks_up("uac_replaces_offerless.xml");
}

/// The pickup of a ringing call by carol's phone playing `scenario`.
fn carol_picks_up(scenario: &str) {
    let Some(gw) = gateway() else {
        return;
    };
    let alice_dir = tempfile::tempdir().expect("temp dir");
    let (bob, alice) = alice_calls_bob(&gw, "uas_cancel.xml", alice_dir.path());
    let id = call_in(&gw, "ringing");
    let replaces = callee_dialog(&gw, id, 180);
    let carol = replacing_as(scenario, &gw, "carol", &replaces);
    let carol = std::thread::spawn(move || carol.run());
    let picked = gw.answered_by(&format!("sip:carol@{DOMAIN}"));
    assert!(
        picked.is_ok(),
        "carol did not pick up: {picked:?}\n{}",
        gw.log_tail(60)
    );
    let bob = bob.join().expect("bob thread");
    assert!(bob.ok(), "bob's phone was not cancelled:\n{}", bob.output);
    let cancel = gw.call_message(id, "b", ("CANCEL", "out", None));
    assert_eq!(
        header(&cancel, "Reason"),
        "SIP;cause=200;text=\"Call completed elsewhere\"",
        "{cancel}"
    );
    let carol = carol.join().expect("carol thread");
    assert!(
        carol.ok(),
        "carol failed:\n{}\n--- gateway ---\n{}",
        carol.output,
        gw.log_tail(60)
    );
    let record = gw.ended_call();
    assert_eq!(record["status"], 200, "{record}");
    assert_eq!(record["callee"], format!("sip:carol@{DOMAIN}"), "{record}");
    std::thread::sleep(Duration::from_millis(500));
    drop(alice);
    let alice_hears_herself = heard(alice_dir.path(), 600.0);
    eprintln!("tone share: alice hears her tone echoed by carol {alice_hears_herself:.2}");
    assert!(
        alice_hears_herself > 0.5,
        "alice hears 600 Hz at {alice_hears_herself}; call: {record}"
    );
}

/// An INVITE with `replaces` sent as `user` from a trusted loopback socket of its own (the
/// refusal's retransmissions, never ACKed, stay there); the final answer.
fn replace(gw: &Gateway, user: &str, replaces: &str) -> csps_sip::Response {
    replace_in(gw, user, replaces, &raw::token("c"))
}

/// [`replace`] with the INVITE's own Call-ID `call_id`.
fn replace_in(gw: &Gateway, user: &str, replaces: &str, call_id: &str) -> csps_sip::Response {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let local = sock.local_addr().expect("local address");
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n",
        local.port() + 2
    );
    let msg = format!(
        "INVITE sip:bob@{DOMAIN} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK{branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@{DOMAIN}>;tag={tag}\r\n\
         To: <sip:bob@{DOMAIN}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:{user}@{local}>\r\n\
         Replaces: {replaces}\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{sdp}",
        sdp.len(),
        branch = raw::token("b"),
        tag = raw::token("t"),
    );
    raw::udp_request(&sock, gw.sip_addr(), &msg, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}\n{}", gw.log_tail(40)))
}

/// Trusts 127.0.0.0/8 and waits until the gateway applies it (a probe before that gets 407).
fn trust_loopback(gw: &Gateway) {
    gw.trust("127.0.0.0/8");
    let applied = wait_until(Duration::from_secs(5), || {
        replace(gw, "bob", "nothing-here@x;to-tag=a;from-tag=b").status != 407
    });
    assert!(applied, "the trusted range applies");
}

/// The refusals of RFC 3891 §3, each with a Warning, and the call they name goes on: 481 for a
/// dialog the gateway does not have (also the right one with its tags the other way round: the
/// `to-tag` is the gateway's), 486 for `early-only` on a confirmed dialog, 403 for another user
/// taking over an answered call, 400 for a Replaces that names no dialog and for two of them.
/// A refused INVITE leaves its own Call-ID free: a new one with it is judged afresh (not 482).
#[test]
fn replaces_that_cannot_be_honoured_are_refused_and_the_call_goes_on() {
    let Some(gw) = gateway() else {
        return;
    };
    let alice_dir = tempfile::tempdir().expect("temp dir");
    let (bob, _alice) = alice_calls_bob(&gw, "uas_answer.xml", alice_dir.path());
    let id = call_in(&gw, "answered");
    let named = callee_dialog(&gw, id, 200);
    // The phones registered with their digest; the probes come unchallenged from loopback.
    trust_loopback(&gw);
    let mut parts = named.split(';');
    let (call_id, to_tag, from_tag) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default().replace("to-tag=", ""),
        parts.next().unwrap_or_default().replace("from-tag=", ""),
    );
    let swapped = format!("{call_id};to-tag={from_tag};from-tag={to_tag}");
    for (user, value, status) in [
        ("bob", "nothing-here@x;to-tag=a;from-tag=b", 481),
        ("bob", swapped.as_str(), 481),
        ("bob", &format!("{named};early-only"), 486),
        ("carol", named.as_str(), 403),
        ("bob", ";to-tag=a;from-tag=b", 400),
        ("bob", &format!("{call_id};to-tag={to_tag}"), 400),
        // Two Replaces headers (§3: 400).
        ("bob", &format!("{named}\r\nReplaces: {named}"), 400),
    ] {
        let resp = replace(&gw, user, value);
        assert_eq!(
            resp.status, status,
            "{user} with Replaces: {value}: {resp:?}"
        );
        assert!(
            resp.headers.get("Warning").is_some(),
            "a refusal says why: {resp:?}"
        );
    }
    let again = raw::token("c");
    assert_eq!(replace_in(&gw, "carol", &named, &again).status, 403);
    let early_only = format!("{named};early-only");
    let resp = replace_in(&gw, "bob", &early_only, &again);
    assert_eq!(resp.status, 486, "the same Call-ID again: {resp:?}");
    let calls = gw.api("GET", "/api/calls", None).json();
    assert_eq!(calls[0]["id"], id, "{calls}");
    assert_eq!(calls[0]["state"], "answered", "{calls}");
    assert_eq!(calls[0]["legs"][1]["party"], format!("sip:bob@{DOMAIN}"));
    gw.admin_hang_up(id);
    let bob = bob.join().expect("bob thread");
    assert!(bob.ok(), "bob's phone:\n{}", bob.output);
}
