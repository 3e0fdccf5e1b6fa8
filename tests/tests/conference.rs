//! RFC 4579 conferencing with the gateway as the focus: real phones (baresip) dial the conference
//! URI and the media core mixes them. Each phone plays a tone of its own; what each one decoded
//! must hold the others' tones and not its own (tone detection at the receiving side).

use std::time::Duration;

use csps_tests::audio::{heard_in, tone_share};
use csps_tests::{Gateway, wait_until};

const DOMAIN: &str = "csps.local";

/// `user`'s leg in `room` (`null` when there is none).
fn leg_of(room: &serde_json::Value, user: &str) -> serde_json::Value {
    room["legs"]
        .as_array()
        .and_then(|l| {
            l.iter()
                .find(|l| l["party"] == format!("sip:{user}@{DOMAIN}"))
        })
        .cloned()
        .unwrap_or_default()
}

/// Runs alice's SIPp scenario (a join and a REFER) while watching for the room to reach `n`
/// participants; the room as it was then, once alice's scenario passed.
fn refer_while_watching(gw: &Gateway, alice: csps_tests::Sipp, n: usize) -> serde_json::Value {
    let alice = std::thread::spawn(move || alice.run());
    let mut room = None;
    wait_until(Duration::from_secs(20), || {
        room = gw.room_with(n);
        room.is_some()
    });
    let alice = alice.join().expect("alice's thread");
    assert!(
        alice.ok(),
        "alice's REFER failed:\n{}\n--- gateway ---\n{}",
        alice.output,
        gw.log_tail(80)
    );
    room.unwrap_or_else(|| panic!("the room never had {n} participants: {}", gw.log_tail(60)))
}

/// Phones `(user, tone Hz, baresip codec)` dial `sip:conference@…`; after a few seconds of talk
/// an administrator ends the room (every participant gets a BYE, which closes its recording).
/// Each phone heard every other tone, each at a fair share of what it heard, and not its own.
/// The room as `GET /api/calls` showed it with everyone in.
fn phones_in_a_room(parties: &[(&str, u32, &str)]) -> Option<serde_json::Value> {
    let gw = csps_tests::gateway_for("baresip")?;
    let parties: Vec<_> = parties.iter().map(|&(u, t, c)| (u, t, c, "")).collect();
    Some(phones_in(&gw, &parties))
}

/// [`phones_in_a_room`] on `gw`, each phone `(user, tone Hz, baresip codec, account
/// parameters)` (`;mediaenc=srtp-mand` for SRTP).
fn phones_in(gw: &Gateway, parties: &[(&str, u32, &str, &str)]) -> serde_json::Value {
    let n = parties.len();
    let dirs: Vec<_> = parties
        .iter()
        .map(|_| tempfile::tempdir().expect("temp dir"))
        .collect();
    let mut phones = Vec::new();
    for ((user, tone, codec, params), dir) in parties.iter().zip(&dirs) {
        let password = format!("{user}-secret-1");
        gw.create_user(user, &password);
        phones.push(csps_tests::baresip::tone_phone_with(
            dir.path(),
            gw.sip_port,
            (user, &password, DOMAIN),
            (*tone, codec),
            params,
            &[&format!("/dial sip:conference@{DOMAIN}")],
        ));
    }
    let mut room = None;
    let joined = wait_until(Duration::from_secs(30), || {
        room = gw.room_with(n);
        room.is_some()
    });
    assert!(
        joined,
        "{n} participants did not join: {}\n--- gateway ---\n{}",
        gw.api("GET", "/api/calls", None).body,
        gw.log_tail(60)
    );
    std::thread::sleep(Duration::from_secs(4));
    let room = gw.room_with(n).or(room).expect("room");
    assert_eq!(room["conference"], "conference", "{room}");
    let id = room["id"].as_u64().expect("room id");
    gw.admin_hang_up(id);
    drop(phones);
    // Each of the others carries about 1/(n-1) of what a phone hears (0.10–0.19 with eight,
    // 0.31–0.58 with three); a tone nobody sends (a control frequency) and a phone's own tone
    // measure ~0. (Before the mixer scaled overflowing frames down, eight full-level tones
    // clipped, and the intermodulation put ~0.008 of a phone's own tone back into its ear.)
    let fair = 1.0 / (n - 1) as f32;
    for (i, ((user, own, ..), dir)) in parties.iter().zip(&dirs).enumerate() {
        let pcm = heard_in(dir.path()).unwrap_or_else(|e| panic!("{user}: {e}"));
        let control = tone_share(&pcm, 2_950.0);
        assert!(
            control < 0.005,
            "{user} hears a tone nobody sends: {control}"
        );
        for (j, (other, tone, ..)) in parties.iter().enumerate() {
            let share = tone_share(&pcm, *tone as f32);
            eprintln!("{user} hears {other}'s {tone} Hz at {share:.2}");
            if i == j {
                assert!(share < 0.005, "{user} hears its own {own} Hz: {share}");
            } else {
                assert!(
                    share > 0.4 * fair,
                    "{user} does not hear {other}'s {tone} Hz: {share}; room: {room}"
                );
            }
        }
    }
    room
}

/// Issue 4, SRTP in rooms: with `Data.SipConfig.Srtp=Supported` and SDES keys allowed over UDP
/// (`SrtpOverPlainTransport`), alice offers RTP/SAVP (`mediaenc=srtp-mand`), bob best-effort
/// SRTP (`mediaenc=srtp`: RTP/AVP with `a=crypto`, G.722) and carol plain RTP. Each hears the
/// other two and not itself, so the room decrypted alice's and bob's tones into the mix and
/// encrypted the mix each of them decoded; `GET /api/calls` shows their legs as SRTP (their
/// packets authenticated: baresip's one RTCP keep-alive, no SRTCP packet, may be dropped) and
/// carol's as plain.
#[test]
fn srtp_and_plain_phones_in_one_room_each_hear_the_other_two() {
    let Some(gw) = csps_tests::gateway_for("baresip") else {
        return;
    };
    allow_srtp_over_udp(&gw);
    let room = phones_in(
        &gw,
        &[
            ("alice", 600, "PCMU", ";mediaenc=srtp-mand"),
            ("bob", 1000, "G722/16000/1", ";mediaenc=srtp"),
            ("carol", 1500, "PCMU", ""),
        ],
    );
    for (user, srtp) in [("alice", true), ("bob", true), ("carol", false)] {
        let leg = leg_of(&room, user);
        assert_eq!(leg["srtp"], srtp, "{user}: {room}");
        let c = &leg["counters"];
        eprintln!("{user}: srtp {}, counters {c}", leg["srtp"]);
        assert!(
            c["rtp_packets"].as_u64().unwrap_or(0) > 100,
            "{user}: {room}"
        );
        assert!(
            c["dropped_srtp"].as_u64().unwrap_or(u64::MAX) <= 2,
            "{user}: {room}"
        );
    }
}

/// Three phones with different codecs (PCMU, G.722, PCMU) and tones in one room: each hears
/// the other two and not itself; the room shows bob's leg in G.722.
#[test]
fn three_phones_dialling_the_conference_uri_each_hear_the_other_two() {
    let Some(room) = phones_in_a_room(&[
        ("alice", 600, "PCMU"),
        ("bob", 1000, "G722/16000/1"),
        ("carol", 1500, "PCMU"),
    ]) else {
        return;
    };
    assert_eq!(leg_of(&room, "bob")["codec"], "G722/8000", "{room}");
}

/// Eight phones, G.711 and G.722 alternating, each with its own tone, in one room: each hears
/// the seven others and not itself.
#[test]
fn eight_phones_in_one_room_each_hear_the_seven_others() {
    let users = ["p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8"];
    let tones = [400, 600, 800, 1000, 1200, 1500, 1800, 2100];
    let parties: Vec<_> = users
        .iter()
        .zip(tones)
        .enumerate()
        .map(|(i, (u, t))| (*u, t, if i % 2 == 0 { "PCMU" } else { "G722/16000/1" }))
        .collect();
    phones_in_a_room(&parties);
}

/// A network conference started the RFC 4579 §5.5 way: bob (baresip, 600 Hz) is in the room;
/// alice (SIPp) calls the conference URI and REFERs the room to carol (baresip, 1000 Hz, G.722,
/// answers by herself) inside the conference dialog. The room calls carol in, NOTIFYs alice
/// 100 then 200, and the room has three participants; alice's BYE removes only her. Then bob
/// hears carol's tone and carol hears bob's.
#[test]
fn a_refer_inside_the_conference_dialog_calls_the_party_in() {
    let Some(gw) = gateway_with_sipp() else {
        return;
    };
    refer_carol_in(&gw, ("", ""));
}

/// Issue 4 on the REFER path: as [`a_refer_inside_the_conference_dialog_calls_the_party_in`]
/// with SRTP supported (keys over UDP allowed): bob joins with RTP/SAVP (`mediaenc=srtp-mand`)
/// and the room's offer to carol carries SDES, which her best-effort phone (`mediaenc=srtp`)
/// takes: both legs show SRTP, and bob and carol hear each other.
#[test]
fn a_party_called_in_by_refer_gets_srtp_from_the_room() {
    let Some(gw) = gateway_with_sipp() else {
        return;
    };
    allow_srtp_over_udp(&gw);
    let three = refer_carol_in(&gw, (";mediaenc=srtp-mand", ";mediaenc=srtp"));
    for user in ["bob", "carol"] {
        assert_eq!(leg_of(&three, user)["srtp"], true, "{user}: {three}");
    }
}

/// A baresip gateway when SIPp is there too.
fn gateway_with_sipp() -> Option<Gateway> {
    let gw = csps_tests::gateway_for("baresip")?;
    if !csps_tests::have_tool("sipp") {
        csps_tests::skip("sipp not installed (run e2e/setup)");
        return None;
    }
    Some(gw)
}

/// `Data.SipConfig.Srtp=Supported` with SDES keys allowed over UDP
/// (`SrtpOverPlainTransport`), where the test phones signal.
fn allow_srtp_over_udp(gw: &Gateway) {
    for (leaf, value) in [
        ("Srtp", serde_json::json!("Supported")),
        ("SrtpOverPlainTransport", serde_json::json!(true)),
    ] {
        gw.set_global(&format!("SipConfig.{leaf}"), value);
    }
}

/// Bob (baresip, 600 Hz, PCMU, `bob_params` on his account) dials into the room, alice (SIPp)
/// joins and REFERs the room to carol (baresip, 1000 Hz, G.722, `carol_params`); the room with
/// the three of them once alice's scenario passed. Alice's BYE leaves bob and carol, who then
/// hear each other's tones and not their own.
fn refer_carol_in(gw: &Gateway, (bob_params, carol_params): (&str, &str)) -> serde_json::Value {
    for user in ["alice", "bob", "carol"] {
        gw.create_user(user, &format!("{user}-secret-1"));
    }
    let bob_dir = tempfile::tempdir().expect("temp dir");
    let carol_dir = tempfile::tempdir().expect("temp dir");
    let carol = csps_tests::baresip::tone_phone_with(
        carol_dir.path(),
        gw.sip_port,
        ("carol", "carol-secret-1", DOMAIN),
        (1000, "G722/16000/1"),
        carol_params,
        &[],
    );
    assert!(
        wait_until(Duration::from_secs(15), || !gw
            .registrations_of("carol")
            .is_empty()),
        "carol did not register"
    );
    let bob = csps_tests::baresip::tone_phone_with(
        bob_dir.path(),
        gw.sip_port,
        ("bob", "bob-secret-1", DOMAIN),
        (600, "PCMU"),
        bob_params,
        &[&format!("/dial sip:conference@{DOMAIN}")],
    );
    assert!(
        wait_until(Duration::from_secs(15), || gw.room_with(1).is_some()),
        "bob did not join: {}",
        gw.log_tail(40)
    );
    let alice = csps_tests::Sipp::caller(
        "uac_conference_refer.xml",
        gw.sip_addr(),
        ("alice", "alice-secret-1"),
        "conference",
        DOMAIN,
    )
    .key("target", "carol");
    let three = refer_while_watching(gw, alice, 3);
    let parties: Vec<_> = three["legs"]
        .as_array()
        .expect("legs")
        .iter()
        .map(|l| l["party"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(parties.contains(&format!("sip:carol@{DOMAIN}")), "{three}");
    assert_eq!(leg_of(&three, "carol")["codec"], "G722/8000", "{three}");
    let two = gw.room_with(2).unwrap_or_else(|| {
        panic!(
            "alice's BYE should leave bob and carol: {}",
            gw.api("GET", "/api/calls", None).body
        )
    });
    let id = two["id"].as_u64().expect("room id");
    heard_each_other(gw, id, (bob, carol), (bob_dir.path(), carol_dir.path()));
    three
}

/// Ends room `id` (a BYE to each participant closes its recording) and stops `phones`; bob
/// (600 Hz, recording in `bob_dir`) and carol (1000 Hz, in `carol_dir`) each heard the other's
/// tone, and bob not his own.
fn heard_each_other(
    gw: &Gateway,
    id: u64,
    phones: (csps_tests::baresip::Baresip, csps_tests::baresip::Baresip),
    (bob_dir, carol_dir): (&std::path::Path, &std::path::Path),
) {
    gw.admin_hang_up(id);
    drop(phones);
    let bob_heard = heard_in(bob_dir).expect("bob's recording");
    let carol_heard = heard_in(carol_dir).expect("carol's recording");
    let (bob_hears_carol, carol_hears_bob) = (
        tone_share(&bob_heard, 1000.0),
        tone_share(&carol_heard, 600.0),
    );
    eprintln!("bob hears carol {bob_hears_carol:.2}, carol hears bob {carol_hears_bob:.2}");
    assert!(
        bob_hears_carol > 0.3,
        "bob hears 1000 Hz at {bob_hears_carol}"
    );
    assert!(
        carol_hears_bob > 0.3,
        "carol hears 600 Hz at {carol_hears_bob}"
    );
    assert!(tone_share(&bob_heard, 600.0) < 0.05, "bob hears himself");
}

/// An offer the room cannot mix (only G.729; an m= line whose format is no number) gets 488
/// with a Warning, and no room is left behind.
#[test]
fn an_offer_the_room_cannot_mix_gets_488_and_leaves_no_room() {
    let Some(gw) = csps_tests::gateway_for("sipp") else {
        return;
    };
    gw.create_user("alice", "alice-secret-1");
    for pt in ["18", "x"] {
        let alice = csps_tests::Sipp::caller(
            "uac_conference_refused.xml",
            gw.sip_addr(),
            ("alice", "alice-secret-1"),
            "conference-team",
            DOMAIN,
        )
        .key("pt", pt)
        .run();
        assert!(
            alice.ok(),
            "format {pt}:\n{}\n--- gateway ---\n{}",
            alice.output,
            gw.log_tail(30)
        );
    }
    assert!(
        gw.no_calls_within(Duration::from_secs(5)),
        "a refused join left a room"
    );
    assert!(gw.log_tail(60).contains("conference join refused"));
}

/// The BroadSoft/Yealink network conference (RFC 4579 §5.5 with Replaces): alice (SIPp, from a
/// trusted address) calls carol (SIPp, answering), calls the conference URI on a second dialog
/// and REFERs the room to carol with a Replaces naming her call with carol. The room INVITEs
/// carol with a Replaces of carol's own dialog with the gateway (`Require: replaces`), alice
/// gets NOTIFY 100 and 200, and the room holds alice and carol.
#[test]
fn a_refer_with_replaces_moves_the_referrers_call_into_the_room() {
    let Some(gw) = csps_tests::gateway_for("sipp") else {
        return;
    };
    gw.create_user("alice", "alice-secret-1");
    gw.create_user("carol", "carol-secret-1");
    // Carol answers alice's call and then the room's INVITE that replaces it.
    let carol = csps_tests::Sipp::callee(
        "uas_answer.xml",
        gw.sip_addr(),
        ("carol", "carol-secret-1"),
        DOMAIN,
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .calls(2)
    .timeout(Duration::from_secs(60));
    let carol = std::thread::spawn(move || carol.run());
    // Alice's calls come from loopback without a challenge, so one SIPp run holds both dialogs.
    gw.trust("127.0.0.0/8");
    let alice = csps_tests::Sipp::new("uac_conference_attended.xml", gw.sip_addr())
        .key("user", "alice")
        .key("callee", "conference")
        .key("target", "carol")
        .key("domain", DOMAIN)
        // A Call-ID without '@', which the scenario's Refer-To carries unescaped.
        .arg("-cid_str")
        .arg("%u-%p-conference")
        .arg("-mp")
        .arg(csps_tests::free_port().to_string())
        .timeout(Duration::from_secs(40));
    let both = refer_while_watching(&gw, alice, 2);
    assert!(
        both.to_string().contains(&format!("sip:carol@{DOMAIN}")),
        "{both}"
    );
    let id = both["id"].as_u64().expect("room id");
    let messages = gw
        .api("GET", &format!("/api/calls/{id}/messages"), None)
        .json();
    let to_carol = messages
        .as_array()
        .and_then(|m| {
            m.iter().find(|m| {
                m["method"] == "INVITE" && m["direction"] == "out" && m["status"].is_null()
            })
        })
        .and_then(|m| m["text"].as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(to_carol.contains("Replaces: "), "{to_carol}");
    assert!(to_carol.contains("Require: replaces"), "{to_carol}");
    assert!(
        to_carol.contains(&format!("Referred-By: <sip:alice@{DOMAIN}>")),
        "{to_carol}"
    );
    gw.admin_hang_up(id);
    let carol = carol.join().expect("carol's thread");
    assert!(
        carol.ok(),
        "carol:\n{}\n--- gateway ---\n{}",
        carol.output,
        gw.log_tail(40)
    );
}

/// Issue 4, a REFER through an ordinary call with `Refer-To` the conference URI (what a phone's
/// network conference does to bring a party in, and a user transferring a caller into a meeting
/// room): carol (baresip, 1000 Hz) is in room `team` (she dialled `conference-team`); alice
/// (SIPp) calls bob (baresip, 600 Hz) and REFERs that call with
/// `Refer-To: <sip:conference-team@…>`. Alice gets 202, NOTIFY 100 and 200, then the gateway's
/// BYE; bob's leg is moved into the room by a re-INVITE in his dialog (no new call), the room is
/// then the only call, with bob and carol, and each hears the other's tone.
#[test]
fn a_refer_to_the_conference_uri_moves_the_other_party_into_the_room() {
    let Some((gw, bob_dir, bob)) = alice_and_bob() else {
        return;
    };
    let carol_dir = tempfile::tempdir().expect("temp dir");
    let carol = csps_tests::baresip::alone_in_room(
        &gw,
        carol_dir.path(),
        ("carol", DOMAIN),
        1000,
        "conference-team",
    );
    let alice = alice_refers_bob(&gw, "uac_refer_room.xml", "conference-team");
    let room = refer_while_watching(&gw, alice, 2);
    assert_eq!(room["conference"], "team", "{room}");
    for user in ["bob", "carol"] {
        assert!(
            leg_of(&room, user).is_object(),
            "{user} not in the room: {room}"
        );
    }
    only_the_room_left(&gw);
    std::thread::sleep(Duration::from_secs(3));
    let id = room["id"].as_u64().expect("room id");
    heard_each_other(&gw, id, (bob, carol), (bob_dir.path(), carol_dir.path()));
}

/// Alice's SIPp `scenario`: she calls bob and REFERs that call into `target` (a conference
/// user).
fn alice_refers_bob(gw: &Gateway, scenario: &str, target: &str) -> csps_tests::Sipp {
    csps_tests::Sipp::caller(
        scenario,
        gw.sip_addr(),
        ("alice", "alice-secret-1"),
        "bob",
        DOMAIN,
    )
    .key("target", target)
}

/// A gateway with SIPp and the users alice and bob, and bob's phone (baresip, 600 Hz,
/// answering by itself, recording into the directory returned), registered; `None`: skipped.
fn alice_and_bob() -> Option<(Gateway, tempfile::TempDir, csps_tests::baresip::Baresip)> {
    let gw = gateway_with_sipp()?;
    for user in ["alice", "bob"] {
        gw.create_user(user, &format!("{user}-secret-1"));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let bob =
        csps_tests::baresip::registered_tone_phone(&gw, dir.path(), ("bob", DOMAIN), 600, &[]);
    Some((gw, dir, bob))
}

/// Alice's call ended with her BYE's answer: the room is the one call left (within 10 s).
fn only_the_room_left(gw: &Gateway) {
    let mut calls = serde_json::Value::Null;
    let alone = wait_until(Duration::from_secs(10), || {
        calls = gw.api("GET", "/api/calls", None).json();
        calls.as_array().is_some_and(|c| c.len() == 1)
    });
    assert!(alone, "alice's call is still listed: {calls}");
}

/// As [`a_refer_to_the_conference_uri_moves_the_other_party_into_the_room`], into a room that
/// does not run yet (`conference-new`): the move opens it, as a dial-in would, with bob as its
/// one participant; the room's record names bob as its caller and `conference:new` as callee.
#[test]
fn a_refer_into_a_room_that_does_not_run_opens_it() {
    let Some((gw, _bob_dir, _bob)) = alice_and_bob() else {
        return;
    };
    let alice = alice_refers_bob(&gw, "uac_refer_room.xml", "conference-new");
    let room = refer_while_watching(&gw, alice, 1);
    assert_eq!(room["conference"], "new", "{room}");
    assert!(leg_of(&room, "bob").is_object(), "{room}");
    assert_eq!(room["state"], "answered", "{room}");
    only_the_room_left(&gw);
    gw.admin_hang_up(room["id"].as_u64().expect("room id"));
    let mut history = serde_json::Value::Null;
    let recorded = wait_until(Duration::from_secs(10), || {
        history = gw.api("GET", "/api/calls/history", None).json();
        history
            .as_array()
            .is_some_and(|h| h.iter().any(|c| c["callee"] == "conference:new"))
    });
    assert!(recorded, "no record of the room: {history}");
    let record = history
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["callee"] == "conference:new")
        .cloned()
        .unwrap_or_default();
    assert_eq!(record["caller"], format!("sip:bob@{DOMAIN}"), "{record}");
    assert!(record["answered_at"].is_string(), "{record}");
}

/// The "bad input" rule for the same REFER: alice (SIPp) calls bob (baresip) and REFERs him to a
/// room name rooms do not take (`conference-bad!name`), then, with conferences turned off
/// (`Data.SipConfig.ConferenceUri` empty), to `conference`. Each time the final NOTIFY is the
/// 404 a dial-in to that URI gets, and the call goes on: the gateway answers alice's OPTIONS in
/// it and her BYE with 200, and no room was opened.
#[test]
fn a_refer_to_a_room_that_cannot_be_fails_and_both_keep_the_call() {
    let Some((gw, _bob_dir, _bob)) = alice_and_bob() else {
        return;
    };
    for (i, (target, disable)) in [("conference-bad!name", false), ("conference", true)]
        .into_iter()
        .enumerate()
    {
        if disable {
            gw.set_global("SipConfig.ConferenceUri", serde_json::json!(""));
        }
        let alice = alice_refers_bob(&gw, "uac_refer_room_fails.xml", target).run();
        assert!(
            alice.ok(),
            "{target}: alice's call did not go on after the failed REFER:\n{}\n--- gateway ---\n{}",
            alice.output,
            gw.log_tail(40)
        );
        // The call's record: alice ended it, and its final NOTIFY said 404.
        let mut history = serde_json::Value::Null;
        let recorded = wait_until(Duration::from_secs(10), || {
            history = gw.api("GET", "/api/calls/history", None).json();
            history.as_array().is_some_and(|h| h.len() == i + 1)
        });
        assert!(recorded, "{target}: no record of the call: {history}");
        let call = &history[0];
        assert_eq!(call["end_reason"], "caller_hung_up", "{target}: {call}");
        let id = call["id"].as_u64().expect("call id");
        let messages = gw
            .api("GET", &format!("/api/calls/{id}/messages"), None)
            .json();
        let last_notify = messages
            .as_array()
            .into_iter()
            .flatten()
            .rev()
            .filter(|m| m["method"] == "NOTIFY" && m["direction"] == "out")
            .find_map(|m| m["text"].as_str())
            .unwrap_or_default()
            .to_owned();
        assert!(
            last_notify.contains("SIP/2.0 404") && last_notify.contains("terminated"),
            "{target}: {last_notify}"
        );
    }
    assert!(
        gw.no_calls_within(Duration::from_secs(5)),
        "a call or room was left: {}",
        gw.api("GET", "/api/calls", None).body
    );
}

/// RFC 3550 from the room: a phone alone in a room (SIPp, 12 s) receives the room's own RTCP on
/// its media's RTCP port (RTP port + 1, a socket of the test): compound packets of version 2
/// that open with a sender or receiver report and carry an SDES with a CNAME, the reporter's
/// SSRC the same in every report, at least two of them within 20 s (the interval is 5 s,
/// randomised).
#[test]
fn a_phone_in_a_room_receives_the_rooms_rtcp_reports() {
    let Some(gw) = gateway_with_sipp() else {
        return;
    };
    gw.create_user("alice", "alice-secret-1");
    let media = csps_tests::free_port();
    let rtcp = std::net::UdpSocket::bind(("127.0.0.1", media + 1)).expect("bind the RTCP port");
    rtcp.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("read timeout");
    let alice = csps_tests::Sipp::new("uac_long_call.xml", gw.sip_addr())
        .key("user", "alice")
        .key("domain", DOMAIN)
        .key("callee", "conference")
        .auth("alice", "alice-secret-1")
        .auth_uri(&format!("conference@{DOMAIN}"))
        .arg("-mp")
        .arg(media.to_string())
        .arg("-rtp_echo")
        .timeout(Duration::from_secs(40));
    let alice = std::thread::spawn(move || alice.run());
    let mut reports = Vec::new();
    let until = std::time::Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 1500];
    while reports.len() < 2 && std::time::Instant::now() < until {
        if let Ok(n) = rtcp.recv(&mut buf) {
            reports.push(buf[..n].to_vec());
        }
    }
    let outcome = alice.join().expect("SIPp thread");
    assert!(outcome.ok(), "{}\n{}", outcome.output, gw.log_tail(30));
    assert!(
        reports.len() >= 2,
        "{} RTCP reports: {reports:?}",
        reports.len()
    );
    let mut ssrcs = Vec::new();
    for r in &reports {
        assert!(r.len() >= 8 && r[0] >> 6 == 2, "not RTCP version 2: {r:?}");
        assert!(matches!(r[1], 200 | 201), "not an SR or RR first: {r:?}");
        ssrcs.push(u32::from_be_bytes([r[4], r[5], r[6], r[7]]));
        // The packets of the compound one: an SDES (202) holding a CNAME item (type 1).
        let mut at = 0;
        let mut cname = false;
        while at + 4 <= r.len() {
            let len = (usize::from(u16::from_be_bytes([r[at + 2], r[at + 3]])) + 1) * 4;
            if r[at + 1] == 202 && r.get(at + 8) == Some(&1) {
                cname = true;
            }
            at += len;
        }
        assert!(cname, "no SDES CNAME: {r:?}");
    }
    assert!(ssrcs.windows(2).all(|w| w[0] == w[1]), "{ssrcs:x?}");
}
