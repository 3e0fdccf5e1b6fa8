//! Calls through the Direct Routing trunk, with real peers: SIPp phones registered to the
//! gateway, the gateway's trunk over mutual TLS to the emulated Teams proxies
//! (e2e/teams-emulator), which answer calls out with a tone and an echo and call in as Teams
//! does. Each test checks what the emulator received (the INVITE's shape: FQDN in Via and
//! Contact, the user's E.164 number asserted by the gateway, nothing of the phone's identity)
//! and that media crossed the gateway both ways (the emulator's own tone packets came back
//! after a SIPp phone echoed them). The Teams leg is SDES-SRTP (RTP/SAVP, Microsoft's
//! `a=crypto` form from the emulator), the SIPp phones plain RTP: the relay decrypts one side
//! and encrypts the other, and a tone that came back authenticated at the emulator proves
//! both sides' keys. Hold and transfer from the Teams side (issue 5) run with real phones that
//! record what they hear: a baresip phone transferred by Teams' REFER and "null REFER" hears
//! the target's tone (the emulator plays another frequency for a call a transfer made), one
//! whose transfer fails keeps Teams' tone; a linphone phone held by Teams hears the tone stop
//! and come back.

use std::time::Duration;

use csps_tests::emulator::{EmulatorOptions, TeamsEmulator};
use csps_tests::linphone::{Linphone, write_tone};
use csps_tests::{Gateway, Sipp, SippOutcome, free_port, wait_until};
use serde_json::{Value, json};

const FQDN: &str = "sbc1.csps.test";
const DOMAIN: &str = "csps.local";
const ALICE: &str = "+14255550100";
const BOB: &str = "+14255550101";
const CALLED: &str = "+12065550123";

/// The emulator and a gateway whose trunk is up on all three proxies, with alice (activated,
/// number ALICE) and bob (number BOB, not activated).
fn peers() -> Option<(TeamsEmulator, Gateway)> {
    let gw = csps_tests::gateway_for("sipp")?;
    let emu = TeamsEmulator::start_or_skip(&EmulatorOptions {
        tenant: "00000000-0000-4000-8000-000000000005".into(),
        sip_fqdn: Some(FQDN.into()),
        ..EmulatorOptions::default()
    })?;
    for (user, number, activated) in [("alice", ALICE, true), ("bob", BOB, false)] {
        gw.create_account(
            json!({"username": user, "password": format!("{user}-secret-1"),
                   "domain": DOMAIN, "phone_number": number}),
            activated,
        );
    }
    emu.attach_trunk(&gw, FQDN, 1);
    wait_proxies(&gw, [true, true, true]);
    Some((emu, gw))
}

/// Waits until each proxy's `up` and `connected` in `GET /api/trunk` is as `want`.
fn wait_proxies(gw: &Gateway, want: [bool; 3]) {
    let mut last = Value::Null;
    let ok = wait_until(Duration::from_secs(15), || {
        last = gw.api("GET", "/api/trunk", None).json();
        let got: Vec<bool> = last["proxies"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| p["up"] == true && p["connected"] == true)
                    .collect()
            })
            .unwrap_or_default();
        got == want
    });
    assert!(ok, "trunk not {want:?}: {last:#}\n{}", gw.log_tail(30));
}

/// `user` calls `callee` with SIPp from a fresh port, echoing the RTP it receives; `scenario`
/// decides what it expects.
fn call(gw: &Gateway, scenario: &str, user: &str, callee: &str) -> SippOutcome {
    caller(gw, scenario, user, callee).run()
}

/// The SIPp run of [`call`], not started yet.
fn caller(gw: &Gateway, scenario: &str, user: &str, callee: &str) -> Sipp {
    Sipp::new(scenario, gw.sip_addr())
        .key("user", user)
        .key("domain", DOMAIN)
        .key("callee", callee)
        .auth(user, &format!("{user}-secret-1"))
        .auth_uri(&format!("{callee}@{DOMAIN}"))
        .arg("-mp")
        .arg(free_port().to_string())
        .arg("-rtp_echo")
        .timeout(Duration::from_secs(30))
}

fn assert_ok(gw: &Gateway, emu: &TeamsEmulator, what: &str, o: &SippOutcome) {
    assert!(
        o.ok(),
        "{what}:\n{}\n--- emulator ---\n{:#?}\n--- gateway ---\n{}",
        o.output,
        emu.sip_messages(),
        gw.log_tail(40)
    );
}

/// The INVITEs the proxies received, in order.
fn invites(emu: &TeamsEmulator) -> Vec<Value> {
    emu.sip_messages()
        .into_iter()
        .filter(|e| e["method"] == "INVITE")
        .collect()
}

/// The header lines named `name` (case-insensitive) of a recorded message.
fn header<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    msg.lines()
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
        .collect()
}

/// The legs of the gateway's one call in `GET /api/calls`, once it is answered (polled while
/// the call runs).
fn answered_legs(gw: &Gateway) -> Vec<Value> {
    let mut last = Value::Null;
    let ok = wait_until(Duration::from_secs(15), || {
        last = gw.api("GET", "/api/calls", None).json();
        last[0]["state"] == "answered"
    });
    assert!(ok, "no answered call: {last:#}\n{}", gw.log_tail(30));
    last[0]["legs"].as_array().cloned().unwrap_or_default()
}

/// The Teams leg is SRTP, the SIPp phone's plain RTP.
fn assert_srtp_on_the_teams_leg_only(legs: &[Value]) {
    let srtp: Vec<_> = legs
        .iter()
        .map(|l| (l["kind"].as_str().unwrap_or_default(), l["srtp"] == true))
        .collect();
    assert_eq!(srtp.len(), 2, "{legs:#?}");
    assert!(srtp.contains(&("teams", true)), "{legs:#?}");
    assert!(srtp.contains(&("phone", false)), "{legs:#?}");
}

/// The SDP of `msg` is RTP/SAVP with an AES_CM_128_HMAC_SHA1_80 key.
fn assert_savp(msg: &str) {
    assert!(
        msg.lines()
            .any(|l| l.starts_with("m=audio ") && l.contains(" RTP/SAVP ")),
        "{msg}"
    );
    assert!(
        msg.lines()
            .any(|l| l.starts_with("a=crypto:") && l.contains(" AES_CM_128_HMAC_SHA1_80 inline:")),
        "{msg}"
    );
}

/// The emulator's record of call `call_id`, once `f` holds for it.
fn wait_call(emu: &TeamsEmulator, call_id: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(Duration::from_secs(15), || {
        last = emu
            .sip_calls()
            .into_iter()
            .find(|c| c["call_id"] == call_id)
            .unwrap_or(Value::Null);
        f(&last)
    });
    assert!(ok, "{what}: {last:#}\n{:#?}", emu.sip_messages());
    last
}

#[test]
fn a_phone_calls_a_number_through_the_trunk_as_its_user_and_hears_teams() {
    let Some((emu, gw)) = peers() else { return };
    let alice = caller(&gw, "uac_call.xml", "alice", CALLED);
    let alice = std::thread::spawn(move || alice.run());
    let legs = answered_legs(&gw);
    let alice = alice.join().expect("SIPp thread");
    assert_ok(&gw, &emu, "alice's call to Teams", &alice);
    assert_srtp_on_the_teams_leg_only(&legs);

    let inv = invites(&emu);
    assert_eq!(inv.len(), 1, "one INVITE reached Teams: {inv:#?}");
    assert_eq!(inv[0]["proxy"], 1, "the first proxy takes the call");
    assert_eq!(inv[0]["status"], 200, "answered: {:#}", inv[0]);
    let msg = inv[0]["message"].as_str().unwrap_or_default();
    let first = msg.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!("INVITE sip:{CALLED}@127.0.0.1;user=phone SIP/2.0")),
        "{first}"
    );
    let contact = header(msg, "Contact");
    assert_eq!(
        contact,
        [format!("<sip:{ALICE}@{FQDN}:5061;transport=tls>")],
        "{msg}"
    );
    assert!(
        header(msg, "Via")[0].starts_with(&format!("SIP/2.0/TLS {FQDN}:5061;")),
        "{msg}"
    );
    let asserted = format!("<sip:{ALICE}@{FQDN};user=phone>");
    for h in ["From", "P-Asserted-Identity"] {
        let v = header(msg, h);
        assert_eq!(v.len(), 1, "{h}: {msg}");
        assert!(v[0].contains(&asserted), "{h} is alice's number: {msg}");
    }
    assert!(
        !msg.contains("forged") && !msg.contains("P-Preferred-Identity") && !msg.contains("ceo@"),
        "nothing of the phone's own identity: {msg}"
    );
    assert!(header(msg, "Allow")[0].contains("REFER"), "{msg}");
    assert_eq!(
        header(msg, "Session-Expires"),
        ["1800;refresher=uas"],
        "{msg}"
    );
    assert_eq!(header(msg, "Min-SE"), ["90"], "{msg}");
    // SDES-SRTP towards Teams, whatever the phone's leg does.
    assert_savp(msg);

    // The phone's BYE reached Teams in the dialog: to Teams' Contact, along its Record-Route.
    let log = emu.sip_messages();
    let bye = log
        .iter()
        .find(|e| e["method"] == "BYE")
        .unwrap_or_else(|| panic!("no BYE reached Teams: {log:#?}"));
    let bye_msg = bye["message"].as_str().unwrap_or_default();
    assert!(
        bye_msg.starts_with("BYE sip:api-du-a-euwe.pstnhub.microsoft.com:443;x-i="),
        "{bye_msg}"
    );
    let routes = header(bye_msg, "Route");
    assert_eq!(
        routes.len(),
        2,
        "the route set of both Record-Route entries: {bye_msg}"
    );
    assert!(routes.iter().all(|r| r.contains(";lr")), "{bye_msg}");
    assert!(header(bye_msg, "Via")[0].contains(FQDN), "{bye_msg}");

    // Media both ways: the emulator's tone reached the phone, which echoed it back to Teams.
    let call_id = inv[0]["call_id"].as_str().unwrap_or_default();
    let c = wait_call(&emu, call_id, "the call ended by the phone", |c| {
        c["state"] == "ended"
    });
    assert_eq!(c["ended_by"], "sbc");
    assert_eq!(
        (&c["proto"], &c["srtp"]),
        (&json!("RTP/SAVP"), &json!(true)),
        "{c:#}"
    );
    let returned = c["rtp"]["returned"].as_u64().unwrap_or(0);
    assert!(
        returned >= 20,
        "the tone came back (SRTP, authenticated) through the gateway and the phone: {c:#}"
    );
    assert_eq!(c["rtp"]["srtp_failed"], 0, "{c:#}");
}

#[test]
fn the_next_call_fails_over_to_the_second_proxy_when_the_first_stops() {
    let Some((emu, gw)) = peers() else { return };
    emu.set_proxy(1, false);
    wait_proxies(&gw, [false, true, true]);
    let alice = call(&gw, "uac_call.xml", "alice", CALLED);
    assert_ok(&gw, &emu, "alice's call after proxy 1 stopped", &alice);
    let inv = invites(&emu);
    assert_eq!(inv.len(), 1, "{inv:#?}");
    assert_eq!(inv[0]["proxy"], 2, "the second proxy took the call");
    assert_eq!(inv[0]["status"], 200);
}

#[test]
fn a_user_not_activated_gets_403_but_an_emergency_call_goes_out() {
    let Some((emu, gw)) = peers() else { return };
    let bob = call(&gw, "uac_forbidden.xml", "bob", CALLED);
    assert_ok(
        &gw,
        &emu,
        "bob (not activated) refused with the Warning",
        &bob,
    );
    assert!(invites(&emu).is_empty(), "nothing reached Teams");

    // An emergency number goes out for him all the same (from a trusted range: no challenge).
    gw.trust("127.0.0.0/8");
    let sos = Sipp::new("uac_dial.xml", gw.sip_addr())
        .key("user", "bob")
        .key("domain", DOMAIN)
        .key("callee", "112")
        .arg("-d")
        .arg("500")
        .timeout(Duration::from_secs(20))
        .run();
    assert_ok(&gw, &emu, "bob's emergency call", &sos);
    let inv = invites(&emu);
    assert_eq!(inv.len(), 1, "{inv:#?}");
    let msg = inv[0]["message"].as_str().unwrap_or_default();
    assert!(
        msg.starts_with("INVITE sip:112@127.0.0.1;user=phone SIP/2.0"),
        "{msg}"
    );
    assert!(
        header(msg, "P-Asserted-Identity")[0].contains(&format!("<sip:{BOB}@{FQDN};user=phone>")),
        "{msg}"
    );
}

/// Registers `user` with SIPp from a fresh port and starts the callee `scenario` there.
fn device(gw: &Gateway, scenario: &str, user: &str) -> std::thread::JoinHandle<SippOutcome> {
    let password = format!("{user}-secret-1");
    let sipp = Sipp::callee(scenario, gw.sip_addr(), (user, &password), DOMAIN)
        .unwrap_or_else(|e| panic!("{e}"));
    std::thread::spawn(move || sipp.run())
}

#[test]
fn a_call_from_teams_rings_every_device_and_the_first_answer_wins() {
    let Some((emu, gw)) = peers() else { return };
    let answering = device(&gw, "uas_teams.xml", "alice");
    let ringing = device(&gw, "uas_cancel.xml", "alice");
    assert!(
        wait_until(Duration::from_secs(5), || gw
            .registrations_of("alice")
            .len()
            == 2),
        "two devices registered"
    );
    // SIPp needs a moment to listen after its REGISTER run.
    std::thread::sleep(Duration::from_millis(300));
    let call_id = emu.call_in(1, ALICE, 1500);
    let legs = answered_legs(&gw);
    let answering = answering.join().expect("device thread");
    let ringing = ringing.join().expect("device thread");
    assert_ok(&gw, &emu, "the answering device", &answering);
    assert_ok(&gw, &emu, "the other device, cancelled", &ringing);
    let c = wait_call(&emu, &call_id, "answered, then hung up by Teams", |c| {
        c["state"] == "ended"
    });
    assert_eq!(c["status"], 200, "{c:#}");
    assert_eq!(c["ended_by"], "teams");
    assert_srtp_on_the_teams_leg_only(&legs);
    assert_eq!(
        (&c["proto"], &c["srtp"]),
        (&json!("RTP/SAVP"), &json!(true)),
        "{c:#}"
    );
    assert!(
        c["rtp"]["returned"].as_u64().unwrap_or(0) >= 20,
        "Teams' tone came back (SRTP, authenticated) from the answering phone: {c:#}"
    );
    assert_eq!(c["rtp"]["srtp_failed"], 0, "{c:#}");
    // The gateway's answer named its FQDN in Contact, and it answered Teams' BYE.
    let log = emu.sip_messages();
    let ok = log
        .iter()
        .find(|e| e["call_id"] == call_id.as_str() && e["status"] == 200 && e["cseq"] == "1 INVITE")
        .unwrap_or_else(|| panic!("no 200 to the INVITE: {log:#?}"));
    assert!(
        ok["contact"].as_str().unwrap_or_default().contains(FQDN),
        "{ok:#}"
    );
    // The gateway answered Teams' RTP/SAVP offer with its own key.
    assert_savp(ok["message"].as_str().unwrap_or_default());
    assert!(
        wait_until(Duration::from_secs(5), || emu.sip_messages().iter().any(
            |e| {
                e["call_id"] == call_id.as_str()
                    && e["status"] == 200
                    && e["cseq"].as_str().is_some_and(|c| c.ends_with("BYE"))
            }
        )),
        "Teams' BYE answered"
    );
}

#[test]
fn a_call_from_teams_to_an_unknown_or_inactive_number_is_refused() {
    let Some((emu, gw)) = peers() else { return };
    let unknown = emu.call_in(2, "+19995550000", 1000);
    let c = wait_call(&emu, &unknown, "refused", |c| c["state"] == "refused");
    assert_eq!(c["status"], 404, "{c:#}");
    let inactive = emu.call_in(2, BOB, 1000);
    let c = wait_call(&emu, &inactive, "refused", |c| c["state"] == "refused");
    assert_eq!(c["status"], 403, "{c:#}");
    let log = emu.sip_messages();
    let refusal = log
        .iter()
        .find(|e| e["call_id"] == inactive.as_str() && e["status"] == 403)
        .unwrap_or_else(|| panic!("no 403: {log:#?}"));
    let msg = refusal["message"].as_str().unwrap_or_default();
    assert!(
        header(msg, "Warning")
            .iter()
            .any(|w| w.starts_with("399 ") && w.contains("\"account not activated for Teams\"")),
        "{msg}\n{}",
        gw.log_tail(20)
    );
}

/// How long a phone talks in each part of a call before the next step; the assertions are on
/// what was heard, never on time.
const TALK: Duration = Duration::from_secs(3);

/// Makes Teams act on its call `call_id` (`POST /test/sip/calls/{call_id}/{action}`: `hold`,
/// `resume`, `bye`, `refer` with `body`); the HTTP status.
fn teams_does(emu: &TeamsEmulator, call_id: &str, action: &str, body: Option<Value>) -> u16 {
    let path = format!("/test/sip/calls/{call_id}/{action}");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    csps_tests::http::request(emu.addr, "POST", &path, None, Some(&body))
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
        .status
}

/// Teams hangs up its call `call_id` and the gateway has no call left; then half a second
/// for the phone to close its recording on the BYE.
fn teams_hangs_up(emu: &TeamsEmulator, gw: &Gateway, call_id: &str) {
    assert_eq!(teams_does(emu, call_id, "bye", None), 204);
    assert!(
        wait_until(Duration::from_secs(10), || gw
            .api("GET", "/api/calls", None)
            .json()
            .as_array()
            .is_some_and(Vec::is_empty)),
        "the call ended: {}",
        gw.log_tail(30)
    );
    std::thread::sleep(Duration::from_millis(500));
}

/// The emulator's record of its answered call out to a number (or URI) `to` accepts, once
/// there is one.
fn answered_call_to(emu: &TeamsEmulator, to: &dyn Fn(&str) -> bool, what: &str) -> Value {
    let mut last = Vec::new();
    let found = |c: &Value| {
        c["direction"] == "out"
            && c["state"] == "answered"
            && to(c["number"].as_str().unwrap_or(""))
    };
    let ok = wait_until(Duration::from_secs(15), || {
        last = emu.sip_calls();
        last.iter().any(found)
    });
    assert!(ok, "{what}: {last:#?}\n{:#?}", emu.sip_messages());
    last.into_iter().find(found).unwrap_or_default()
}

/// The share of `freq` in the last `secs` seconds of `pcm` (0 when it is shorter than that).
fn share_at_end(pcm: &csps_tests::audio::Pcm, secs: f32, freq: f32) -> f32 {
    let n = (pcm.rate as f32 * secs) as usize;
    let Some(start) = pcm.samples.len().checked_sub(n) else {
        return 0.0;
    };
    let tail = csps_tests::audio::Pcm {
        rate: pcm.rate,
        samples: pcm.samples[start..].to_vec(),
    };
    csps_tests::audio::tone_share(&tail, freq)
}

/// What a transfer by Teams left behind: the emulator's record of the transferred call and of
/// the call the gateway made for it (`None` when none was answered), and what the phone heard.
struct Transferred {
    original: Value,
    target: Option<Value>,
    /// `GET /api/calls` while the phone talked to the target.
    calls: Value,
    heard: csps_tests::audio::Pcm,
    emu: TeamsEmulator,
    gw: csps_tests::Gateway,
}

/// alice's baresip phone (activated, playing 440 Hz) calls CALLED through the trunk (with
/// `teams_calls`: Teams calls alice's number and the phone answers) and hears Teams' 1000 Hz
/// tone; Teams then REFERs the call with `refer` (`{"to"}` or `{"null":true}`);
/// when `target` accepts the number (or URI) of the emulator's call the gateway is to make for
/// it, that call is awaited and the phone listens to it. Teams hangs up the call that is left
/// (baresip completes its recording on the BYE).
fn transfer_by_teams(
    refer: Value,
    target: Option<&dyn Fn(&str) -> bool>,
    teams_calls: bool,
) -> Option<Transferred> {
    let (emu, gw) = peers()?;
    if !csps_tests::have_tool("baresip") {
        csps_tests::skip("baresip not installed (run e2e/setup)");
        return None;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let dial = format!("/dial sip:{CALLED}@{DOMAIN}");
    let commands: &[&str] = if teams_calls { &[] } else { &[&dial] };
    let phone = csps_tests::baresip::registered_tone_phone(
        &gw,
        dir.path(),
        ("alice", DOMAIN),
        440,
        commands,
    );
    let call_id = if teams_calls {
        // baresip needs a moment to listen after it registered.
        std::thread::sleep(Duration::from_millis(300));
        let id = emu.call_in(1, ALICE, 120_000);
        wait_call(&emu, &id, "alice answered Teams' call", |c| {
            c["state"] == "answered"
        });
        id
    } else {
        let original = answered_call_to(&emu, &|n| n == CALLED, "alice's call reached Teams");
        original["call_id"].as_str().unwrap_or_default().to_owned()
    };
    std::thread::sleep(TALK);
    assert_eq!(teams_does(&emu, &call_id, "refer", Some(refer)), 200);
    let target = target.map(|to| {
        let t = answered_call_to(&emu, to, "the transfer's INVITE answered");
        std::thread::sleep(TALK);
        t
    });
    let calls = gw.api("GET", "/api/calls", None).json();
    let original = wait_call(&emu, &call_id, "the REFER's final NOTIFY", |c| {
        c["refers"][0]["notifies"]
            .as_array()
            .is_some_and(|n| n.len() >= 2)
    });
    if target.is_none() {
        std::thread::sleep(TALK);
    }
    // Teams hangs up whichever call the phone is in now; the phone gets the BYE.
    let now_in = target.as_ref().unwrap_or(&original);
    let now_id = now_in["call_id"].as_str().unwrap_or_default();
    teams_hangs_up(&emu, &gw, now_id);
    drop(phone);
    let heard = csps_tests::audio::heard_in(dir.path()).expect("alice's recording");
    let original = wait_call(&emu, &call_id, "the original call", |_| true);
    let target = target.map(|t| {
        let id = t["call_id"].as_str().unwrap_or_default().to_owned();
        wait_call(&emu, &id, "the transfer's call", |_| true)
    });
    Some(Transferred {
        original,
        target,
        calls,
        heard,
        emu,
        gw,
    })
}

/// The gateway's INVITE for the transfer, as the emulator received it.
fn transfer_invite(t: &Transferred) -> String {
    let target = t.target.as_ref().expect("the transfer's call");
    let log = t.emu.sip_messages();
    log.iter()
        .find(|e| e["method"] == "INVITE" && e["call_id"] == target["call_id"])
        .and_then(|e| e["message"].as_str())
        .unwrap_or_else(|| panic!("no INVITE for the transfer: {log:#?}"))
        .to_owned()
}

/// The transfer went through: Teams got 202, NOTIFYs 100 then 200, and the gateway's BYE on
/// the transferred call; the gateway's INVITE for it was shaped as every trunk INVITE (FQDN in
/// Via and Contact, alice's number asserted, SRTP, session timer) and carried Teams'
/// Referred-By; the phone heard Teams' tone before and the target's after.
fn assert_transferred(t: &Transferred, target_hz: u32) {
    let o = &t.original;
    let refer = &o["refers"][0];
    assert_eq!(refer["status"], 202, "{o:#}");
    assert_eq!(
        refer["notifies"],
        json!(["SIP/2.0 100 Trying", "SIP/2.0 200 OK"]),
        "{o:#}"
    );
    assert_eq!(
        (&o["state"], &o["ended_by"]),
        (&json!("ended"), &json!("sbc")),
        "the transferred call ended with the gateway's BYE: {o:#}"
    );
    let target = t.target.as_ref().expect("the transfer's call");
    assert_eq!(target["tone_hz"], target_hz, "{target:#}");
    // The gateway's call goes on with the new party on its Teams leg, SRTP.
    let legs = t.calls[0]["legs"].as_array().cloned().unwrap_or_default();
    assert_srtp_on_the_teams_leg_only(&legs);
    assert!(
        legs.iter()
            .any(|l| l["kind"] == "phone" && l["party"] == format!("sip:alice@{DOMAIN}")),
        "{:#}",
        t.calls
    );
    assert!(
        target["referred_by"]
            .as_str()
            .is_some_and(|r| r.contains("x-tt=") && r.contains("x-m=8:orgid:")),
        "Teams' own Referred-By is carried: {target:#}"
    );
    assert_eq!(target["srtp"], true, "{target:#}");
    assert!(
        target["rtp"]["received"].as_u64().unwrap_or(0) >= 20,
        "the phone's audio reaches the target: {target:#}"
    );
    let msg = transfer_invite(t);
    assert_eq!(
        header(&msg, "Contact"),
        [format!("<sip:{ALICE}@{FQDN}:5061;transport=tls>")],
        "{msg}"
    );
    assert!(
        header(&msg, "Via")[0].starts_with(&format!("SIP/2.0/TLS {FQDN}:5061;")),
        "{msg}"
    );
    let asserted = format!("<sip:{ALICE}@{FQDN};user=phone>");
    for h in ["From", "P-Asserted-Identity"] {
        assert!(
            header(&msg, h)
                .first()
                .is_some_and(|v| v.contains(&asserted)),
            "{h} is alice's number: {msg}"
        );
    }
    assert!(header(&msg, "Allow")[0].contains("REFER"), "{msg}");
    assert_eq!(
        header(&msg, "Session-Expires"),
        ["1800;refresher=uas"],
        "{msg}"
    );
    assert_savp(&msg);
    // What alice heard: Teams (1000 Hz), then the target alone.
    let before = csps_tests::audio::Pcm {
        rate: t.heard.rate,
        samples: t.heard.samples[..(t.heard.rate as usize).min(t.heard.samples.len())].to_vec(),
    };
    let first = csps_tests::audio::tone_share(&before, 1000.0);
    let last = share_at_end(&t.heard, 1.5, target_hz as f32);
    let last_old = share_at_end(&t.heard, 1.5, 1000.0);
    eprintln!("tone share: Teams {first:.2}, then the target {last:.2} (Teams {last_old:.2})");
    assert!(
        first > 0.5 && last > 0.5 && last_old < 0.1,
        "alice hears Teams ({first}), then the target at {target_hz} Hz ({last}; Teams' tone: \
         {last_old})\n{}",
        t.gw.log_tail(30)
    );
}

/// Issue 5: Teams transfers alice's call to another number with a REFER (as a Teams user does
/// with "Transfer"); the gateway calls the number through the trunk and alice's phone talks to
/// it.
#[test]
fn teams_transfers_a_call_by_refer_and_the_phone_hears_the_target() {
    const TARGET: &str = "+12065550177";
    let Some(t) = transfer_by_teams(json!({"to": TARGET}), Some(&|n| n == TARGET), false) else {
        return;
    };
    // The target is called at the Refer-To URI, on the trunk.
    let msg = transfer_invite(&t);
    assert!(
        msg.starts_with(&format!(
            "INVITE sip:{TARGET}@sip.pstnhub.microsoft.com;user=phone SIP/2.0"
        )),
        "{msg}"
    );
    assert_eq!(
        t.calls[0]["legs"][1]["party"],
        format!("sip:{TARGET}@sip.pstnhub.microsoft.com"),
        "the API names the target: {:#}",
        t.calls
    );
    assert_transferred(&t, 650);
}

/// Issue 5: Teams called alice's number (the phone answered) and transfers that call to
/// another number: the Teams leg that is replaced is the caller's this time.
#[test]
fn teams_transfers_a_call_it_made_and_the_phone_hears_the_target() {
    const TARGET: &str = "+12065550172";
    let Some(t) = transfer_by_teams(json!({"to": TARGET}), Some(&|n| n == TARGET), true) else {
        return;
    };
    assert_eq!(t.original["direction"], "in");
    assert_transferred(&t, 400);
}

/// Issue 5: the "null REFER" (Refer-To the Teams proxy itself with `x-m`, as in
/// tests/data/teams-dr/fsissue2406-01-REFER.sip): the gateway INVITEs that URI, parameters
/// kept, and the phone's call goes on with what answers it (the emulator's 1500 Hz).
#[test]
fn a_null_refer_from_teams_moves_the_call_to_the_proxy_uri_it_names() {
    const PROXY: &str = "sip:sip.pstnhub.microsoft.com:5061;transport=tls;x-m=8:orgid:";
    let Some(t) = transfer_by_teams(
        json!({"null": true}),
        Some(&|n| n.starts_with(PROXY)),
        false,
    ) else {
        return;
    };
    let msg = transfer_invite(&t);
    assert!(
        msg.starts_with(&format!("INVITE {PROXY}")),
        "the INVITE goes to the Refer-To URI, x-m kept: {msg}"
    );
    let refer_to = t.original["refers"][0]["refer_to"]
        .as_str()
        .unwrap_or_default();
    assert!(
        header(&msg, "To")[0] == refer_to,
        "To is the Refer-To ({refer_to}): {msg}"
    );
    assert_transferred(&t, 1500);
}

/// Issue 5, bad input: Teams transfers to a number that is busy (the emulator answers 486):
/// the gateway notifies Teams of the 486 and both parties keep their call, with its audio.
#[test]
fn a_refer_from_teams_to_a_busy_number_is_notified_and_the_call_goes_on() {
    let Some(t) = transfer_by_teams(json!({"to": "+12065550486"}), None, false) else {
        return;
    };
    let o = &t.original;
    assert_eq!(o["refers"][0]["status"], 202, "{o:#}");
    assert_eq!(
        o["refers"][0]["notifies"],
        json!(["SIP/2.0 100 Trying", "SIP/2.0 486 Busy Here"]),
        "{o:#}"
    );
    assert_eq!(
        o["ended_by"], "teams",
        "the call went on until Teams hung up: {o:#}"
    );
    let busy = t
        .emu
        .sip_messages()
        .into_iter()
        .filter(|e| e["method"] == "INVITE" && e["status"] == 486)
        .count();
    assert_eq!(busy, 1, "the gateway called the number once");
    let end = share_at_end(&t.heard, 1.5, 1000.0);
    eprintln!("tone share: Teams after the failed transfer {end:.2}");
    assert!(
        end > 0.5,
        "alice still hears Teams after the failed transfer ({end})\n{}",
        t.gw.log_tail(30)
    );
}

/// Sets `user`'s `activated` flag through the API.
fn set_activated(gw: &Gateway, user: &str, activated: bool) {
    let users = gw.api("GET", "/api/users", None).json();
    let id = users
        .as_array()
        .and_then(|a| a.iter().find(|u| u["username"] == user))
        .and_then(|u| u["id"].as_str())
        .unwrap_or_else(|| panic!("no user {user}: {users}"))
        .to_owned();
    let r = gw.api(
        "PATCH",
        &format!("/api/users/{id}"),
        Some(&json!({"activated": activated})),
    );
    assert_eq!(r.status, 200, "PATCH activated: {}", r.body);
}

/// Issue 5: a phone transfers its call to a number through the trunk. alice's baresip phone
/// (440 Hz) calls bob (SIPp, activated), who REFERs her to TARGET; for Teams that is bob's
/// call (the only identity Direct Routing accepts from the gateway is an activated user's
/// number): bob's number in From, P-Asserted-Identity and Referred-By, the INVITE shaped as
/// every trunk INVITE (FQDN in Via and Contact, SRTP, session timer). Bob gets 202, NOTIFY 100
/// and 200 and the gateway's BYE (his scenario checks them); alice, on plain RTP, hears the
/// target's tone, and the target hears her.
#[test]
fn a_phone_transfers_its_call_to_a_number_through_the_trunk() {
    const TARGET: &str = "+12065550177";
    let Some((emu, gw)) = peers() else {
        return;
    };
    if !csps_tests::have_tool("baresip") {
        csps_tests::skip("baresip not installed (run e2e/setup)");
        return;
    }
    set_activated(&gw, "bob", true);
    let bob = Sipp::callee(
        "uas_transfer.xml",
        gw.sip_addr(),
        ("bob", "bob-secret-1"),
        DOMAIN,
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .key("target", TARGET)
    .key("domain", DOMAIN);
    let bob = std::thread::spawn(move || bob.run());
    let dir = tempfile::tempdir().expect("temp dir");
    let phone = csps_tests::baresip::registered_tone_phone(
        &gw,
        dir.path(),
        ("alice", DOMAIN),
        440,
        &[&format!("/dial sip:bob@{DOMAIN}")],
    );
    let bob = bob.join().expect("bob's thread");
    assert_ok(&gw, &emu, "bob's transfer", &bob);
    let target = answered_call_to(&emu, &|n| n == TARGET, "the transfer's call answered");
    std::thread::sleep(TALK);
    let calls = gw.api("GET", "/api/calls", None).json();
    let call_id = target["call_id"].as_str().unwrap_or_default().to_owned();
    teams_hangs_up(&emu, &gw, &call_id);
    drop(phone);
    let target = wait_call(&emu, &call_id, "the transfer's call", |_| true);
    let legs = calls[0]["legs"].as_array().cloned().unwrap_or_default();
    assert_srtp_on_the_teams_leg_only(&legs);
    let parties: Vec<&str> = legs.iter().filter_map(|l| l["party"].as_str()).collect();
    assert!(
        parties.len() == 2
            && parties[0] == format!("sip:alice@{DOMAIN}")
            && parties[1].starts_with(&format!("sip:{TARGET}@")),
        "alice talks to the target: {calls:#}"
    );
    assert_eq!(target["tone_hz"], 650, "{target:#}");
    assert_eq!(target["srtp"], true, "{target:#}");
    assert!(
        target["rtp"]["received"].as_u64().unwrap_or(0) >= 20,
        "alice's audio reaches the target: {target:#}"
    );
    let log = emu.sip_messages();
    let msg = log
        .iter()
        .find(|e| e["method"] == "INVITE" && e["call_id"] == target["call_id"])
        .and_then(|e| e["message"].as_str())
        .unwrap_or_else(|| panic!("no INVITE for the transfer: {log:#?}"));
    let asserted = format!("<sip:{BOB}@{FQDN};user=phone>");
    for h in ["From", "P-Asserted-Identity", "Referred-By"] {
        assert!(
            header(msg, h)
                .first()
                .is_some_and(|v| v.contains(&asserted)),
            "{h} is bob's number: {msg}"
        );
    }
    assert_eq!(
        header(msg, "Contact"),
        [format!("<sip:{BOB}@{FQDN}:5061;transport=tls>")],
        "{msg}"
    );
    assert!(
        header(msg, "Via")[0].starts_with(&format!("SIP/2.0/TLS {FQDN}:5061;")),
        "{msg}"
    );
    assert!(
        !msg.contains("ceo@"),
        "a phone's Referred-By passed on: {msg}"
    );
    assert_eq!(
        header(msg, "Session-Expires"),
        ["1800;refresher=uas"],
        "{msg}"
    );
    assert_savp(msg);
    let heard = csps_tests::audio::heard_in(dir.path()).expect("alice's recording");
    let last = share_at_end(&heard, 1.5, 650.0);
    eprintln!("tone share: alice hears the target {last:.2}");
    assert!(
        last > 0.5,
        "alice hears the target at 650 Hz ({last})\n{}",
        gw.log_tail(30)
    );
}

/// Alice (SIPp) in a call to CALLED through the trunk transfers Teams' party blind to another
/// number through the trunk: the gateway makes the new call as alice's account (her number in
/// From and Referred-By), alice gets 202, NOTIFY 100 and 200 and the gateway's BYE, and the two
/// Teams parties are connected by the gateway (both legs SRTP, the target hears CALLED's
/// audio).
#[test]
fn a_phone_in_a_call_to_teams_transfers_it_to_another_number() {
    const TARGET: &str = "+12065550177";
    let Some((emu, gw)) = peers() else { return };
    let alice = caller(&gw, "uac_refer_room.xml", "alice", CALLED).key("target", TARGET);
    let alice = alice.run();
    assert_ok(&gw, &emu, "alice's transfer", &alice);
    let target = answered_call_to(&emu, &|n| n == TARGET, "the transfer's call answered");
    let call_id = target["call_id"].as_str().unwrap_or_default().to_owned();
    let legs = answered_legs(&gw);
    let kinds: Vec<_> = legs
        .iter()
        .map(|l| (l["kind"].as_str().unwrap_or_default(), l["srtp"] == true))
        .collect();
    assert_eq!(kinds, [("teams", true), ("teams", true)], "{legs:#?}");
    let log = emu.sip_messages();
    let msg = log
        .iter()
        .find(|e| e["method"] == "INVITE" && e["call_id"] == call_id.as_str())
        .and_then(|e| e["message"].as_str())
        .unwrap_or_else(|| panic!("no INVITE for the transfer: {log:#?}"));
    let asserted = format!("<sip:{ALICE}@{FQDN};user=phone>");
    for h in ["From", "P-Asserted-Identity", "Referred-By"] {
        assert!(
            header(msg, h)
                .first()
                .is_some_and(|v| v.contains(&asserted)),
            "{h} is alice's number: {msg}"
        );
    }
    assert_savp(msg);
    std::thread::sleep(TALK);
    teams_hangs_up(&emu, &gw, &call_id);
    let target = wait_call(&emu, &call_id, "the transfer's call ended", |c| {
        c["state"] == "ended"
    });
    // CALLED's tone crossed the gateway into the target's leg (the emulator's calls each
    // send their own tone and count what arrives authenticated).
    assert!(
        target["rtp"]["received"].as_u64().unwrap_or(0) >= 20,
        "the transferee's audio reaches the target: {target:#}"
    );
    assert_eq!(target["rtp"]["srtp_failed"], 0, "{target:#}");
}

/// Alice (linphone-cli, playing a 600 Hz tone) in an answered call to `CALLED` through the
/// trunk, recording from the start into `talk`; the temporary directory lives as long as it.
struct LinphoneCall {
    emu: TeamsEmulator,
    gw: Gateway,
    _dir: tempfile::TempDir,
    alice: Linphone,
    talk: std::path::PathBuf,
    call_id: String,
}

/// Sets up [`LinphoneCall`] and lets it talk for [`TALK`]; `None` (skipped) without linphonec
/// or the peers.
fn linphone_calls_teams() -> Option<LinphoneCall> {
    if !csps_tests::have_tool("linphonec") {
        csps_tests::skip("linphonec not installed (run e2e/setup)");
        return None;
    }
    let (emu, gw) = peers()?;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut alice = Linphone::register(
        dir.path(),
        gw.sip_addr(),
        ("alice", "alice-secret-1", DOMAIN),
    );
    let tone = dir.path().join("tone-600.wav");
    write_tone(&tone, 600.0);
    alice.play(&tone);
    let talk = alice.record("talk.wav");
    let mark = alice.call(&format!("sip:{CALLED}@{DOMAIN}"));
    alice.expect_media(mark);
    let call = answered_call_to(&emu, &|n| n == CALLED, "alice's call reached Teams");
    let call_id = call["call_id"].as_str().unwrap_or_default().to_owned();
    std::thread::sleep(TALK);
    Some(LinphoneCall {
        emu,
        gw,
        _dir: dir,
        alice,
        talk,
        call_id,
    })
}

/// The share of Teams' 1000 Hz tone in a recording of alice's, without its first half second
/// (the jitter buffer fills, the stream starts); 0 for a missing or too short one.
fn teams_tone_share(path: &std::path::Path) -> f32 {
    let Ok(bytes) = std::fs::read(path) else {
        return 0.0;
    };
    let Ok(mut pcm) = csps_tests::audio::read_wav(&bytes) else {
        return 0.0;
    };
    let half = (pcm.rate / 2) as usize;
    if pcm.samples.len() <= 2 * half {
        return 0.0;
    }
    pcm.samples.drain(..half);
    csps_tests::audio::tone_share(&pcm, 1000.0)
}

/// Issue 5: Teams holds alice's call (re-INVITE `a=sendonly`, its tone stops) and resumes it
/// (`a=sendrecv` with a new SRTP key, the tone again); alice's phone is linphone-cli, which restarts its media after
/// a hold (baresip 1.0 does not). The call is not dropped: Teams hangs up at the end.
#[test]
fn teams_holds_and_resumes_a_call_and_the_phone_hears_it_stop_and_come_back() {
    let Some(LinphoneCall {
        emu,
        gw,
        _dir,
        mut alice,
        talk,
        call_id,
    }) = linphone_calls_teams()
    else {
        return;
    };

    let held = alice.record("held.wav");
    let mark = alice.mark();
    assert_eq!(teams_does(&emu, &call_id, "hold", None), 204);
    alice.expect(mark, &["has been paused by"]);
    std::thread::sleep(TALK);
    let resumed = alice.record("resumed.wav");
    let mark = alice.mark();
    assert_eq!(teams_does(&emu, &call_id, "resume", None), 204);
    alice.expect_media(mark);
    std::thread::sleep(TALK);
    let mark = alice.mark();
    assert_eq!(teams_does(&emu, &call_id, "bye", None), 204);
    alice.expect_ended(mark);

    let c = wait_call(&emu, &call_id, "hold and resume answered", |c| {
        c["reinvites"]
            .as_array()
            .is_some_and(|r| r.len() == 2 && r.iter().all(|r| !r["status"].is_null()))
    });
    assert_eq!(
        c["reinvites"],
        json!([{"what": "hold", "status": 200}, {"what": "resume", "status": 200}]),
        "{c:#}"
    );
    assert_eq!(
        c["ended_by"], "teams",
        "not dropped before Teams hung up: {c:#}"
    );
    assert_eq!(c["rtp"]["srtp_failed"], 0, "{c:#}");
    // The hold kept Teams' key, the resume brought a new one (SDES re-keying), and the tone
    // after it still reached alice: the gateway decrypts with the new key.
    let log = emu.sip_messages();
    let keys: Vec<&str> = log
        .iter()
        .filter(|e| e["sent"] == "INVITE" && e["call_id"] == call_id.as_str())
        .filter_map(|e| {
            e["message"]
                .as_str()?
                .lines()
                .find(|l| l.starts_with("a=crypto:"))
        })
        .collect();
    assert!(
        keys.len() == 2 && keys[0] != keys[1],
        "hold and resume offers: {keys:?}"
    );
    let (before, during, after) = (
        teams_tone_share(&talk),
        teams_tone_share(&held),
        teams_tone_share(&resumed),
    );
    eprintln!("tone share: before {before:.2}, held {during:.2}, resumed {after:.2}");
    assert!(
        before > 0.5 && during < 0.1 && after > 0.5,
        "alice hears Teams ({before}), nothing while held ({during}), Teams again after the \
         resume ({after})\n{}\n{}",
        alice.tail(30),
        gw.log_tail(30)
    );
}

/// Issue 5: alice's phone (linphone-cli, which restarts its media after its own hold; baresip
/// 1.0 does not) holds her call to a number through the trunk and resumes it: Teams gets the
/// re-offers `sendonly` then `sendrecv` (the emulator answers each with its mirror), the call
/// is not dropped, and after the resume alice hears Teams' tone again.
#[test]
fn a_phone_holds_and_resumes_a_call_through_the_trunk_and_hears_teams_again() {
    let Some(LinphoneCall {
        emu,
        gw,
        _dir,
        mut alice,
        talk,
        call_id,
    }) = linphone_calls_teams()
    else {
        return;
    };

    alice.hold();
    wait_call(&emu, &call_id, "alice's hold reached Teams", |c| {
        c["sbc_offers"] == json!(["sendonly"])
    });
    std::thread::sleep(Duration::from_secs(1));
    let resumed = alice.record("resumed.wav");
    alice.resume();
    std::thread::sleep(TALK);
    let c = wait_call(&emu, &call_id, "alice's resume reached Teams", |c| {
        c["sbc_offers"] == json!(["sendonly", "sendrecv"])
    });
    assert_eq!(c["state"], "answered", "not dropped by the hold: {c:#}");
    assert_eq!(c["rtp"]["srtp_failed"], 0, "{c:#}");
    let mark = alice.mark();
    alice.hang_up();
    alice.expect_ended(mark);

    let (before, after) = (teams_tone_share(&talk), teams_tone_share(&resumed));
    eprintln!("tone share: before {before:.2}, after the resume {after:.2}");
    assert!(
        before > 0.5 && after > 0.5,
        "alice hears Teams ({before}) and again after her resume ({after})\n{}\n{}",
        alice.tail(30),
        gw.log_tail(30)
    );
}

/// Runs `phone` (a SIPp scenario that moves its call's party into a room) while watching for
/// a room with two legs; the room as it was then, once `phone` passed.
fn room_filled_by(gw: &Gateway, emu: &TeamsEmulator, what: &str, phone: Sipp) -> Value {
    let phone = std::thread::spawn(move || phone.run());
    let mut room = None;
    wait_until(Duration::from_secs(30), || {
        room = gw.room_with(2);
        room.is_some()
    });
    let outcome = phone.join().expect("the phone's thread");
    assert_ok(gw, emu, what, &outcome);
    room.unwrap_or_else(|| panic!("{what}: no room with two legs: {}", gw.log_tail(60)))
}

/// Each leg of `room` as (kind, speaks SRTP).
fn leg_kinds(room: &Value) -> Vec<(&str, bool)> {
    room["legs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| (l["kind"].as_str().unwrap_or_default(), l["srtp"] == true))
        .collect()
}

/// The emulator's record of its answered call to `number`, once an SBC re-offer moved its
/// media (into a room).
fn moved_call(emu: &TeamsEmulator, number: &str) -> (String, Value) {
    let c = answered_call_to(emu, &|n| n == number, "a call reached Teams");
    let id = c["call_id"].as_str().unwrap_or_default().to_owned();
    let c = wait_call(emu, &id, "the media moved to the room", |c| {
        c["media_moves"] == 1
    });
    (id, c)
}

/// Two seconds after the moves, each moved call received at least 50 more packets (the room's
/// mix), all of them authenticating under the room's key.
fn assert_room_mix_reaches(emu: &TeamsEmulator, moved: &[(String, Value)]) {
    std::thread::sleep(Duration::from_secs(2));
    let count = |c: &Value, what: &str| c["rtp"][what].as_u64().unwrap_or_default();
    for (id, before) in moved {
        let later = wait_call(emu, id, "the room's mix", |_| true);
        assert!(
            count(&later, "received") >= count(before, "received") + 50,
            "the room's mix did not reach {id}: {before:#} then {later:#}"
        );
        assert_eq!(
            count(&later, "srtp_failed"),
            count(before, "srtp_failed"),
            "{later:#}"
        );
    }
}

/// Issue 5 ("conference uses the same call task as local calls"): alice (SIPp, activated) calls
/// CALLED through the trunk and after 2 s REFERs that call to the conference URI
/// `conference-team`, where carol's baresip (600 Hz) waits. The Teams party is moved into the
/// room by a re-INVITE in its dialog shaped as the trunk's requests are (FQDN in Via and
/// Contact, an SRTP offer, the session timer), and the emulator follows it (its media moves
/// once, to the room's port, under the room's key). The room is then the only call, with carol
/// and an SRTP Teams leg; the emulator receives the room's mix, every packet authenticating, and
/// carol hears Teams' 1000 Hz tone. Teams then transfers its leg by REFER: the room calls the
/// target in through the trunk as alice's number (Teams gets NOTIFY 100 and 200) and carol hears
/// the target too.
#[test]
fn a_phone_moves_its_teams_call_into_a_conference_room() {
    let Some((emu, gw)) = peers() else { return };
    if !csps_tests::have_tool("baresip") {
        csps_tests::skip("baresip not installed (run e2e/setup)");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let carol = csps_tests::baresip::alone_in_room(
        &gw,
        dir.path(),
        ("carol", DOMAIN),
        600,
        "conference-team",
    );
    let alice = caller(&gw, "uac_refer_room.xml", "alice", CALLED).key("target", "conference-team");
    let room = room_filled_by(&gw, &emu, "alice's REFER into the room", alice);
    assert_eq!(room["conference"], "team", "{room:#}");
    let legs = leg_kinds(&room);
    assert!(legs.contains(&("teams", true)), "{room:#}");
    assert!(legs.contains(&("phone", false)), "{room:#}");
    let calls = gw.api("GET", "/api/calls", None).json();
    assert_eq!(calls.as_array().map(Vec::len), Some(1), "{calls:#}");

    let (call_id, moved) = moved_call(&emu, CALLED);
    let reinvite = invites(&emu)
        .into_iter()
        .filter(|e| e["call_id"] == call_id.as_str())
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .nth(1)
        .unwrap_or_else(|| panic!("no re-INVITE from the room: {:#?}", emu.sip_messages()));
    assert!(
        header(&reinvite, "Via")[0].starts_with(&format!("SIP/2.0/TLS {FQDN}:")),
        "{reinvite}"
    );
    assert!(
        header(&reinvite, "Contact")[0].contains(&format!("@{FQDN}:")),
        "{reinvite}"
    );
    assert!(
        !header(&reinvite, "Session-Expires").is_empty(),
        "{reinvite}"
    );
    assert_savp(&reinvite);
    assert_room_mix_reaches(&emu, &[(call_id.clone(), moved)]);

    // The Teams user transfers their leg (REFER): the room calls the target in through the
    // trunk as alice's number, with Teams' Referred-By (the emulator plays it 650 Hz).
    const TARGET: &str = "+12065550177";
    let refer = json!({ "to": TARGET });
    assert_eq!(teams_does(&emu, &call_id, "refer", Some(refer)), 200);
    let target = answered_call_to(&emu, &|n| n == TARGET, "the room called the target");
    assert!(target["referred_by"].is_string(), "{target:#}");
    let invite = invites(&emu)
        .into_iter()
        .find(|e| e["call_id"] == target["call_id"])
        .and_then(|e| e["message"].as_str().map(str::to_owned))
        .unwrap_or_default();
    assert!(header(&invite, "From")[0].contains(ALICE), "{invite}");
    assert!(
        wait_until(Duration::from_secs(10), || gw.room_with(3).is_some()),
        "the target did not join: {}",
        gw.log_tail(30)
    );
    wait_call(&emu, &call_id, "the REFER's final NOTIFY", |c| {
        c["refers"][0]["notifies"]
            .as_array()
            .is_some_and(|n| n.len() >= 2)
    });
    std::thread::sleep(Duration::from_millis(1500));
    gw.admin_hang_up(room["id"].as_u64().expect("room id"));
    drop(carol);
    let heard = csps_tests::audio::heard_in(dir.path()).expect("carol's recording");
    // Over the whole call Teams' tone; in its last second the target's too.
    let (teams, target) = (
        csps_tests::audio::tone_share(&heard, 1000.0),
        share_at_end(&heard, 1.0, 650.0),
    );
    eprintln!(
        "carol hears Teams' 1000 Hz at {teams:.2}, the target's 650 Hz at the end at {target:.2}"
    );
    assert!(teams > 0.3, "carol does not hear Teams: {teams}");
    assert!(target > 0.2, "carol does not hear the target: {target}");
    assert!(
        csps_tests::audio::tone_share(&heard, 600.0) < 0.05,
        "carol hears herself"
    );
}

/// Issue 5, attended transfer with Teams on both sides (a receptionist's transfer): alice
/// (SIPp, activated, from a trusted address) calls CALLED through the trunk, consults
/// CONSULTED on a second call and REFERs her first call with a Replaces naming the
/// consultation dialog. No INVITE with Replaces reaches a Teams party, so the gateway bridges
/// the two in a private room: alice gets 202, NOTIFY 100 and 200 and a BYE on each call
/// (e2e/sipp/uac_attended_bridge.xml); the room (`transfer+<n>`, no name a phone can dial) is
/// the one call left, with two SRTP Teams legs, each re-INVITEd once to the room's media; the
/// emulator then receives authenticated packets on both calls, each the other's tone.
#[test]
fn an_attended_transfer_between_two_teams_parties_bridges_them_in_a_room() {
    const CONSULTED: &str = "+12065550124";
    let Some((emu, gw)) = peers() else { return };
    gw.trust("127.0.0.0/8");
    let alice = Sipp::new("uac_attended_bridge.xml", gw.sip_addr())
        .key("user", "alice")
        .key("callee", CALLED)
        .key("target", CONSULTED)
        .key("domain", DOMAIN)
        // A Call-ID without '@', which the scenario's Refer-To carries unescaped.
        .arg("-cid_str")
        .arg("%u-%p-attended")
        .arg("-mp")
        .arg(free_port().to_string())
        .timeout(Duration::from_secs(40));
    let room = room_filled_by(&gw, &emu, "alice's attended transfer", alice);
    let name = room["conference"].as_str().unwrap_or_default();
    assert!(name.starts_with("transfer+"), "{room:#}");
    assert_eq!(
        leg_kinds(&room),
        [("teams", true), ("teams", true)],
        "{room:#}"
    );
    let mut calls = Value::Null;
    let alone = wait_until(Duration::from_secs(10), || {
        calls = gw.api("GET", "/api/calls", None).json();
        calls.as_array().is_some_and(|c| c.len() == 1)
    });
    assert!(alone, "alice's calls are still listed: {calls:#}");
    let moved = [moved_call(&emu, CALLED), moved_call(&emu, CONSULTED)];
    assert_room_mix_reaches(&emu, &moved);
    gw.admin_hang_up(room["id"].as_u64().expect("room id"));
}
