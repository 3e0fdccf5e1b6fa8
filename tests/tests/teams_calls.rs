//! Calls through the Direct Routing trunk, with real peers: SIPp phones registered to the
//! gateway, the gateway's trunk over mutual TLS to the emulated Teams proxies
//! (e2e/teams-emulator), which answer calls out with a tone and an echo and call in as Teams
//! does. Each test checks what the emulator received (the INVITE's shape: FQDN in Via and
//! Contact, the user's E.164 number asserted by the gateway, nothing of the phone's identity)
//! and that media crossed the gateway both ways (the emulator's own tone packets came back
//! after a SIPp phone echoed them). The Teams leg is SDES-SRTP (RTP/SAVP, Microsoft's
//! `a=crypto` form from the emulator), the SIPp phones plain RTP: the relay decrypts one side
//! and encrypts the other, and a tone that came back authenticated at the emulator proves
//! both sides' keys.

use std::time::Duration;

use csps_tests::emulator::{EmulatorOptions, TeamsEmulator};
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
        let r = gw.api(
            "POST",
            "/api/users",
            Some(
                &json!({"username": user, "password": format!("{user}-secret-1"),
                         "domain": DOMAIN, "phone_number": number}),
            ),
        );
        assert_eq!(r.status, 201, "POST /api/users: {}", r.body);
        let id = r.json()["id"].as_str().unwrap_or_default().to_owned();
        let r = gw.api(
            "PATCH",
            &format!("/api/users/{id}"),
            Some(&json!({"activated": activated})),
        );
        assert_eq!(r.status, 200, "PATCH activated: {}", r.body);
        assert_eq!(r.json()["activated"], activated);
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
