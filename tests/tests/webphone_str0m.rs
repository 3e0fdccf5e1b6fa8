//! The web phone's server side against another WebRTC stack: str0m as the browser (its own ICE
//! agent, DTLS client and SRTP, Opus from the gateway's codec), signed in as an end user with a
//! token of the emulated Entra ID. It calls a baresip phone through the gateway and the phone
//! answers; then a baresip phone calls the account and the web phone answers. Each side must hear
//! the other's tone (tone detection on what it decoded), and the API must show the web phone as a
//! registered device of the account while it runs and not after it stops; and a routing policy's
//! `web-<user>` rings the web phone and not the account's desk phone. The Chromium test
//! (tests/tests/webphone.rs) is the browser interop; this one needs no browser build.

use std::net::UdpSocket;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "../../gateway/tests/policy_support/mod.rs"]
mod policy_support;

use csps::media::codec::{Decoder, Encoder};
use csps_sip::sdp::Codec as SdpCodec;
use csps_tests::audio::{Pcm, heard_in, tone_share};
use csps_tests::emulator::{EmulatorOptions, TeamsEmulator};
use csps_tests::{Gateway, baresip, http, skip, wait_until};
use serde_json::{Value, json};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

const TENANT: &str = "5a1e7c1d-0000-4000-8000-00000000ae01";
const USER_CLIENT: &str = "c11e0001-0000-4000-8000-00000000ae05";
const DOMAIN: &str = "csps.local";
/// What the browser's microphone plays.
const BROWSER_HZ: f32 = 600.0;
/// The rate of what the browser's Opus decoder gives (the gateway's codec decodes Opus at 16 kHz).
const EAR_RATE: u32 = 16_000;
/// What bob's phone plays.
const BOB_HZ: u32 = 1000;
/// What carol's phone plays.
const CAROL_HZ: u32 = 1400;

/// The browser: one str0m peer connection with an audio track, on its own thread.
struct Browser {
    heard: Arc<Mutex<Vec<i16>>>,
    connected: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Browser {
    /// Creates the offer (non-trickle: the host candidate is in it).
    fn offer() -> (Rtc, UdpSocket, Mid, String, SdpPendingOffer) {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("browser socket");
        let addr = socket.local_addr().expect("addr");
        let mut rtc = RtcConfig::new()
            .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
            .build(Instant::now());
        rtc.add_local_candidate(Candidate::host(addr, "udp").expect("candidate"));
        let mut change = rtc.sdp_api();
        let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        let (offer, pending) = change.apply().expect("an offer");
        (rtc, socket, mid, offer.to_sdp_string(), pending)
    }

    /// Takes the gateway's answer and runs the peer connection until dropped.
    fn run(
        mut rtc: Rtc,
        socket: UdpSocket,
        mid: Mid,
        answer: &str,
        pending: SdpPendingOffer,
    ) -> Browser {
        let answer = SdpAnswer::from_sdp_string(answer).expect("the gateway's answer parses");
        rtc.sdp_api()
            .accept_answer(pending, answer)
            .expect("the answer is accepted");
        let heard = Arc::new(Mutex::new(Vec::new()));
        let connected = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, c, s) = (heard.clone(), connected.clone(), stop.clone());
        let thread = std::thread::spawn(move || drive(rtc, socket, mid, &h, &c, &s));
        Browser {
            heard,
            connected,
            stop,
            thread: Some(thread),
        }
    }

    /// What it heard from now on for `length`.
    fn listen(&self, length: Duration) -> Pcm {
        let start = self.heard.lock().map(|h| h.len()).unwrap_or(0);
        std::thread::sleep(length);
        let samples = self
            .heard
            .lock()
            .map(|h| {
                h[start.min(h.len())..]
                    .iter()
                    .map(|&x| f32::from(x) / 32768.0)
                    .collect()
            })
            .unwrap_or_default();
        Pcm {
            rate: EAR_RATE,
            samples,
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The browser's loop: str0m's I/O, 20 ms of tone every 20 ms once connected, and what arrives
/// decoded into `heard`. Bounded by `stop` and by two minutes.
fn drive(
    mut rtc: Rtc,
    socket: UdpSocket,
    mid: Mid,
    heard: &Mutex<Vec<i16>>,
    connected: &AtomicBool,
    stop: &AtomicBool,
) {
    let local = socket.local_addr().expect("addr");
    let mut encoder = Encoder::new(SdpCodec::Opus).expect("opus encoder");
    let mut decoder = Decoder::new(SdpCodec::Opus).expect("opus decoder");
    assert_eq!(decoder.rate(), EAR_RATE);
    let started = Instant::now();
    let mut next_frame = Instant::now();
    let mut media_time: u64 = 0;
    let mut phase = 0f32;
    let mut buf = vec![0u8; 2048];
    while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(120) {
        let timeout = loop {
            match rtc.poll_output() {
                Ok(Output::Timeout(t)) => break t,
                Ok(Output::Transmit(t)) => {
                    let _ = socket.send_to(&t.contents, t.destination);
                }
                Ok(Output::Event(Event::Connected)) => connected.store(true, Ordering::Relaxed),
                Ok(Output::Event(Event::MediaData(d))) => {
                    let mut pcm = Vec::new();
                    if decoder.decode(&d.data, &mut pcm).is_ok()
                        && let Ok(mut h) = heard.lock()
                    {
                        h.extend_from_slice(&pcm);
                    }
                }
                Ok(Output::Event(_)) => {}
                Err(e) => panic!("browser str0m: {e}"),
            }
        };
        let now = Instant::now();
        if connected.load(Ordering::Relaxed) && now >= next_frame {
            next_frame += Duration::from_millis(20);
            let rate = encoder.rate();
            let step = 2.0 * std::f32::consts::PI * BROWSER_HZ / rate as f32;
            let frame: Vec<i16> = (0..rate / 50)
                .map(|_| {
                    phase = (phase + step) % (2.0 * std::f32::consts::PI);
                    (phase.sin() * 8000.0) as i16
                })
                .collect();
            let mut payload = Vec::new();
            if encoder.encode(&frame, &mut payload).is_ok()
                && let Some(pt) = rtc.writer(mid).and_then(|w| {
                    w.payload_params()
                        .find(|p| p.spec().codec == Codec::Opus)
                        .map(|p| p.pt())
                })
                && let Some(writer) = rtc.writer(mid)
            {
                let t = MediaTime::new(media_time, Frequency::FORTY_EIGHT_KHZ);
                let _ = writer.write(pt, now, t, payload);
            }
            media_time += 960;
            continue;
        }
        let mut wait = timeout.min(next_frame).saturating_duration_since(now);
        if wait.is_zero() {
            wait = Duration::from_millis(1);
        }
        let _ = socket.set_read_timeout(Some(wait));
        let input = match socket.recv_from(&mut buf) {
            Ok((n, source)) => match buf[..n].try_into() {
                Ok(contents) => Input::Receive(
                    Instant::now(),
                    Receive {
                        proto: Protocol::Udp,
                        source,
                        destination: local,
                        contents,
                    },
                ),
                Err(_) => continue,
            },
            Err(_) => Input::Timeout(Instant::now()),
        };
        if let Err(e) = rtc.handle_input(input) {
            panic!("browser str0m input: {e}");
        }
    }
}

struct Setup {
    gw: Gateway,
    _emu: TeamsEmulator,
    token: String,
}

fn setup() -> Option<Setup> {
    let emu = TeamsEmulator::start_or_skip(&EmulatorOptions {
        tenant: TENANT.into(),
        ..EmulatorOptions::default()
    })?;
    let gw = Gateway::start_or_skip()?;
    let authority = emu.base_url();
    for (leaf, value) in [
        ("SpsAzureApp.Tenant", TENANT),
        ("SpsAzureApp.ClientId", USER_CLIENT),
        ("SpsAzureApp.Authority", authority.as_str()),
    ] {
        gw.set_global(leaf, json!(value));
    }
    for (user, upn) in [
        ("alice", "alice@contoso.test"),
        ("bob", "bob@contoso.test"),
        ("carol", "carol@contoso.test"),
    ] {
        let r = gw.api(
            "POST",
            "/api/users",
            Some(&json!({"username": user, "password": format!("{user}-secret-1"), "upn": upn})),
        );
        assert_eq!(r.status, 201, "{user}: {}", r.body);
    }
    let token = emu.mint(
        json!({"aud": USER_CLIENT, "oid": "0b1d0000-0000-4000-8000-00000000ae09",
            "sub": "alice-sub", "upn": "alice@contoso.test", "name": "Alice"}),
        false,
    );
    Some(Setup {
        gw,
        _emu: emu,
        token,
    })
}

fn me(s: &Setup, method: &str, path: &str, body: Option<&Value>) -> http::Response {
    let body = body.map(Value::to_string);
    http::request(s.gw.http, method, path, Some(&s.token), body.as_deref())
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn wait_state(s: &Setup, id: &str, want: &str) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(Duration::from_secs(20), || {
        last = me(s, "GET", &format!("/api/me/webphone/{id}"), None).json();
        last["state"] == want
    });
    assert!(
        ok,
        "web phone never became {want}: {last}\n{}",
        s.gw.log_tail(40)
    );
    last
}

fn phone(s: &Setup, dir: &Path, user: &str, hz: u32, commands: &[&str]) -> baresip::Baresip {
    baresip::tone_phone(
        dir,
        s.gw.sip_addr().port(),
        (user, &format!("{user}-secret-1"), DOMAIN),
        hz,
        "PCMU",
        commands,
    )
}

/// Starts a web phone for alice with the browser's `offered` peer connection (201): its id, the
/// state the start answered, and the browser running on the gateway's answer.
fn start_alices_phone(
    s: &Setup,
    (rtc, socket, mid, offer, pending): (Rtc, UdpSocket, Mid, String, SdpPendingOffer),
) -> (String, Value, Browser) {
    let r = me(
        s,
        "POST",
        "/api/me/webphone",
        Some(&json!({"aor": "sip:alice@csps.local", "sdp": offer})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let started = r.json();
    let id = started["id"].as_str().expect("id").to_owned();
    let browser = Browser::run(
        rtc,
        socket,
        mid,
        started["sdp"].as_str().expect("sdp"),
        pending,
    );
    (id, started["state"].clone(), browser)
}

fn registered(s: &Setup, user: &str) -> Vec<Value> {
    s.gw.registrations(Some(&format!("sip:{user}@{DOMAIN}")))
}

#[test]
fn a_str0m_browser_calls_baresip_and_answers_a_call_hearing_and_heard_both_ways() {
    if !csps_tests::have_tool("baresip") {
        return skip("baresip not installed (run e2e/setup)");
    }
    let Some(s) = setup() else { return };

    // A bad offer is a clear 400, and nobody else's account can be used.
    let r = me(
        &s,
        "POST",
        "/api/me/webphone",
        Some(&json!({"aor": "sip:alice@csps.local", "sdp": "v=0 nonsense"})),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let (rtc, socket, mid, offer, pending) = Browser::offer();
    let r = me(
        &s,
        "POST",
        "/api/me/webphone",
        Some(&json!({"aor": "sip:bob@csps.local", "sdp": offer})),
    );
    assert_eq!(r.status, 404, "{}", r.body);

    let (id, started, browser) = start_alices_phone(&s, (rtc, socket, mid, offer, pending));
    assert_eq!(started, "connecting");
    wait_state(&s, &id, "idle");
    assert!(browser.connected.load(Ordering::Relaxed));
    let devices = registered(&s, "alice");
    assert!(
        devices.iter().any(|d| d["user_agent"] == "csps web phone"),
        "the web phone is a registered device of alice: {devices:?}"
    );

    // (a) The browser calls bob, whose phone answers by itself.
    let bob_dir = tempfile::tempdir().expect("temp dir");
    let bob = phone(&s, bob_dir.path(), "bob", BOB_HZ, &[]);
    assert!(wait_until(Duration::from_secs(15), || !registered(
        &s, "bob"
    )
    .is_empty()));
    let r = me(
        &s,
        "POST",
        &format!("/api/me/webphone/{id}/call"),
        Some(&json!({"to": "bob"})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let state = wait_state(&s, &id, "in-call");
    assert!(
        state["peer"].as_str().unwrap_or("").contains("bob"),
        "{state}"
    );
    let pcm = browser.listen(Duration::from_secs(3));
    let calls = s.gw.api("GET", "/api/calls", None).json();
    let share = tone_share(&pcm, BOB_HZ as f32);
    assert!(
        share > 0.5,
        "the browser hears bob's {BOB_HZ} Hz: share {share} of {} samples; calls {calls}",
        pcm.samples.len()
    );
    // Hold: bob's leg is offered sendonly and stops sending; resume brings his tone back.
    let r = me(&s, "POST", &format!("/api/me/webphone/{id}/hold"), None);
    assert_eq!(r.status, 202, "{}", r.body);
    wait_state(&s, &id, "held");
    let r = me(&s, "POST", &format!("/api/me/webphone/{id}/hold"), None);
    assert_eq!(r.status, 409, "holding twice: {}", r.body);
    std::thread::sleep(Duration::from_millis(500));
    let held = browser.listen(Duration::from_secs(1));
    let energy = held.samples.iter().map(|x| x * x).sum::<f32>() / held.samples.len().max(1) as f32;
    assert!(
        energy < 1e-4,
        "the held call is silent at the browser: mean power {energy}"
    );
    let r = me(&s, "POST", &format!("/api/me/webphone/{id}/resume"), None);
    assert_eq!(r.status, 202, "{}", r.body);
    wait_state(&s, &id, "in-call");
    std::thread::sleep(Duration::from_millis(500));
    let pcm = browser.listen(Duration::from_secs(2));
    let share = tone_share(&pcm, BOB_HZ as f32);
    assert!(
        share > 0.5,
        "after the resume the browser hears bob again: share {share}"
    );
    let r = me(&s, "POST", &format!("/api/me/webphone/{id}/hangup"), None);
    assert_eq!(r.status, 202, "{}", r.body);
    wait_state(&s, &id, "idle");
    std::thread::sleep(Duration::from_millis(500));
    drop(bob);
    let bob_heard = heard_in(bob_dir.path()).expect("bob's recording");
    let share = tone_share(&bob_heard, BROWSER_HZ);
    assert!(
        share > 0.5,
        "bob hears the browser's {BROWSER_HZ} Hz: share {share}; calls {calls}"
    );

    // (b) carol calls alice: the web phone rings (with the desk phones, had alice any) and answers.
    let carol_dir = tempfile::tempdir().expect("temp dir");
    let carol = phone(
        &s,
        carol_dir.path(),
        "carol",
        CAROL_HZ,
        &[&format!("/dial sip:alice@{DOMAIN}")],
    );
    let state = wait_state(&s, &id, "incoming");
    assert!(
        state["peer"].as_str().unwrap_or("").contains("carol"),
        "{state}"
    );
    let r = me(&s, "POST", &format!("/api/me/webphone/{id}/answer"), None);
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.json()["state"], "in-call");
    let pcm = browser.listen(Duration::from_secs(3));
    let share = tone_share(&pcm, CAROL_HZ as f32);
    assert!(
        share > 0.5,
        "the browser hears carol's {CAROL_HZ} Hz: share {share}"
    );
    let r = me(&s, "POST", &format!("/api/me/webphone/{id}/hangup"), None);
    assert_eq!(r.status, 202, "{}", r.body);
    let state = wait_state(&s, &id, "idle");
    assert_eq!(state["ended"], "Call ended");
    std::thread::sleep(Duration::from_millis(500));
    drop(carol);
    let carol_heard = heard_in(carol_dir.path()).expect("carol's recording");
    let share = tone_share(&carol_heard, BROWSER_HZ);
    assert!(
        share > 0.5,
        "carol hears the browser's {BROWSER_HZ} Hz: share {share}"
    );

    // (c) A routing policy's `web-<user>` (the example dial plan) rings only the web phones:
    // alice's desk phone, which answers at once, is not rung, so the web phone rings on.
    let Some(dialplan) = policy_support::component("routing_dialplan") else {
        return;
    };
    let r = s.gw.api_bytes(
        "PUT",
        "/api/policies/routing",
        "application/wasm",
        &dialplan,
    );
    assert!(
        r.status < 300,
        "upload the dial plan: {} {}",
        r.status,
        r.body
    );
    let desk_dir = tempfile::tempdir().expect("temp dir");
    let desk = phone(&s, desk_dir.path(), "alice", 1700, &[]);
    assert!(wait_until(Duration::from_secs(15), || registered(
        &s, "alice"
    )
    .len()
        == 2));
    let web_dir = tempfile::tempdir().expect("temp dir");
    let carol = phone(
        &s,
        web_dir.path(),
        "carol",
        CAROL_HZ,
        &[&format!("/dial sip:web-alice@{DOMAIN}")],
    );
    wait_state(&s, &id, "incoming");
    std::thread::sleep(Duration::from_secs(1));
    let state = me(&s, "GET", &format!("/api/me/webphone/{id}"), None).json();
    assert_eq!(
        state["state"], "incoming",
        "the desk phone took the web-only call: {state}"
    );
    let r = me(&s, "POST", &format!("/api/me/webphone/{id}/answer"), None);
    assert_eq!(r.status, 202, "{}", r.body);
    let pcm = browser.listen(Duration::from_secs(2));
    let share = tone_share(&pcm, CAROL_HZ as f32);
    assert!(
        share > 0.5,
        "the browser hears carol's {CAROL_HZ} Hz on the web-only call: share {share}"
    );
    let r = me(&s, "POST", &format!("/api/me/webphone/{id}/hangup"), None);
    assert_eq!(r.status, 202, "{}", r.body);
    wait_state(&s, &id, "idle");
    drop(carol);
    drop(desk);

    // Stopping the phone unregisters it.
    let r = me(&s, "DELETE", &format!("/api/me/webphone/{id}"), None);
    assert_eq!(r.status, 204, "{}", r.body);
    // (alice's desk phone was killed, not unregistered: its binding stays until it expires.)
    let web_phones = || {
        registered(&s, "alice")
            .into_iter()
            .filter(|d| d["user_agent"] == "csps web phone")
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(10), || web_phones() == 0),
        "the stopped web phone is no longer registered: {:?}\n{}",
        registered(&s, "alice"),
        s.gw.log_tail(30)
    );
    let r = me(&s, "GET", &format!("/api/me/webphone/{id}"), None);
    assert_eq!(r.status, 404, "{}", r.body);
    drop(browser);
}

/// Issue 4 and 7, a web phone moved into a conference room: alice's web phone (the str0m
/// browser) answers a call from bob (SIPp), who REFERs it into the room `team`, where carol
/// (baresip, 1400 Hz) waits. The room re-INVITEs the web phone's line in its dialog with the
/// room's media; the room is then the one call, with alice's and carol's legs, and each hears
/// the other: the browser carol's tone, carol the browser's.
#[test]
fn a_web_phone_moved_into_a_conference_room_hears_and_is_heard() {
    if !csps_tests::have_tool("baresip") || !csps_tests::have_tool("sipp") {
        return skip("baresip or SIPp not installed (run e2e/setup)");
    }
    let Some(s) = setup() else { return };
    let (id, _, browser) = start_alices_phone(&s, Browser::offer());
    wait_state(&s, &id, "idle");
    let carol_dir = tempfile::tempdir().expect("temp dir");
    let carol = phone(
        &s,
        carol_dir.path(),
        "carol",
        CAROL_HZ,
        &[&format!("/dial sip:conference-team@{DOMAIN}")],
    );
    assert!(
        wait_until(Duration::from_secs(15), || s.gw.room_with(1).is_some()),
        "carol did not join: {}",
        s.gw.log_tail(40)
    );
    let bob = csps_tests::Sipp::caller(
        "uac_refer_room.xml",
        s.gw.sip_addr(),
        ("bob", "bob-secret-1"),
        "alice",
        DOMAIN,
    )
    .key("target", "conference-team");
    let bob = std::thread::spawn(move || bob.run());
    wait_state(&s, &id, "incoming");
    let r = me(&s, "POST", &format!("/api/me/webphone/{id}/answer"), None);
    assert_eq!(r.status, 202, "{}", r.body);
    let bob = bob.join().expect("bob's thread");
    assert!(
        bob.ok(),
        "bob's REFER into the room:\n{}\n{}",
        bob.output,
        s.gw.log_tail(60)
    );
    let mut room = None;
    let joined = wait_until(Duration::from_secs(15), || {
        room = s.gw.room_with(2);
        room.is_some()
    });
    assert!(joined, "the web phone did not join: {}", s.gw.log_tail(60));
    let room = room.unwrap_or_default();
    let parties: Vec<_> = room["legs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["party"].as_str())
        .collect();
    assert!(parties.contains(&"sip:alice@csps.local"), "{room:#}");
    std::thread::sleep(Duration::from_millis(500));
    let pcm = browser.listen(Duration::from_secs(3));
    let share = tone_share(&pcm, CAROL_HZ as f32);
    assert!(
        share > 0.5,
        "the browser hears carol's {CAROL_HZ} Hz in the room: share {share}; room {room:#}"
    );
    s.gw.admin_hang_up(room["id"].as_u64().expect("room id"));
    drop(carol);
    let carol_heard = heard_in(carol_dir.path()).expect("carol's recording");
    let share = tone_share(&carol_heard, BROWSER_HZ);
    assert!(
        share > 0.3,
        "carol hears the browser's {BROWSER_HZ} Hz: share {share}"
    );
    drop(browser);
}
