//! The web phone (issue 7) against a real phone: Chromium (playwright-core,
//! e2e/console/webphone.mjs) with a fake microphone playing 1000 Hz signs in on `/me` as alice
//! (the test IdP, as in console.rs), starts the web phone (a WebRTC peer connection the gateway
//! terminates, registered as alice's device while it runs), and (a) calls bob, a baresip phone
//! playing 600 Hz that answers by itself; (b) a second baresip bob calls alice and the page
//! answers. In both calls bob's recording holds the browser's tone, and the page's remote audio
//! (an AnalyserNode in the page) peaks at bob's. Screenshots land in `<target>/tmp/console/`.

use std::path::PathBuf;
use std::time::Duration;

use csps_tests::audio::{heard_in, tone_share, wav_bytes};
use csps_tests::baresip::{Baresip, tone_phone};
use csps_tests::console::drive;
use csps_tests::wait_until;

/// What the browser's fake microphone plays.
const BROWSER_HZ: f32 = 1000.0;
/// What bob's phones play.
const PHONE_HZ: u32 = 600;
const DOMAIN: &str = "csps.local";

/// Two seconds of a `hz` sine at 48 kHz mono, half scale: a whole number of periods, so the
/// fake device's loop has no click.
fn tone_wav(hz: f32) -> Vec<u8> {
    let samples: Vec<i16> = (0..96_000)
        .map(|i| {
            let x = (2.0 * std::f32::consts::PI * hz * i as f32 / 48_000.0).sin();
            (x * 16_000.0) as i16
        })
        .collect();
    wav_bytes(48_000, 1, &samples)
}

/// One call of the page (`outgoing`, `incoming`) went through: its state line began with
/// `shown`; the page's remote audio peaked at bob's tone (within two bins, most of the power);
/// bob's phone, which recorded into `dir`, heard the browser's (its share there, returned).
fn assert_call(result: &serde_json::Value, call: &str, shown: &str, dir: &std::path::Path) -> f32 {
    let state = &result[format!("{call}_state")];
    assert!(
        state
            .as_str()
            .is_some_and(|s| s.to_lowercase().starts_with(&shown.to_lowercase())),
        "{call}: the state line said {state}, not {shown}…: {result:#}"
    );
    let measured = &result[call];
    let peak = measured["peak_hz"].as_f64().unwrap_or(0.0);
    let bin = measured["bin_hz"].as_f64().unwrap_or(0.0);
    assert!(
        (peak - f64::from(PHONE_HZ)).abs() <= 2.0 * bin.max(1.0),
        "{call}: the page's remote audio peaks at {peak} Hz, not bob's {PHONE_HZ} Hz: {result:#}"
    );
    assert!(
        measured["share"].as_f64().unwrap_or(0.0) > 0.5,
        "{call}: bob's tone is not most of what the page hears: {result:#}"
    );
    let pcm = heard_in(dir).unwrap_or_else(|e| panic!("{call}: bob's recording: {e}"));
    let heard = tone_share(&pcm, BROWSER_HZ);
    assert!(
        heard > 0.5,
        "{call}: bob's phone hears {BROWSER_HZ} Hz at {heard}: {result:#}"
    );
    heard
}

#[test]
fn web_phone_calls_a_baresip_phone_and_answers_its_call_with_tones_both_ways() {
    let screens = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console");
    let Some(c) = csps_tests::console::start(&["baresip"], screens) else {
        return;
    };
    let gw = &c.gw;
    // alice signs in with Microsoft (the IdP's `alice`); bob has desk phones.
    let r = gw.api(
        "POST",
        "/api/users",
        Some(
            &serde_json::json!({"username": "alice", "password": "alice-secret-1",
            "upn": "alice@contoso.test"}),
        ),
    );
    assert_eq!(r.status, 201, "alice: {}", r.body);
    gw.create_user("bob", "bob-secret-1");
    let tone = c.screens.join("webphone-tone-1000.wav");
    std::fs::write(&tone, tone_wav(BROWSER_HZ)).expect("write the tone file");

    let bob = ("bob", "bob-secret-1", DOMAIN);
    let answering_dir = tempfile::tempdir().expect("temp dir");
    let calling_dir = tempfile::tempdir().expect("temp dir");
    let mut answering = Some(tone_phone(
        answering_dir.path(),
        gw.sip_port,
        bob,
        PHONE_HZ,
        "PCMU",
        &[],
    ));
    assert!(
        wait_until(Duration::from_secs(15), || !gw
            .registrations_of("bob")
            .is_empty()),
        "bob's phone did not register"
    );
    let mut calling: Option<Baresip> = None;
    let mut web_phone_registration = None;
    let result = drive(
        &c,
        "webphone.mjs",
        &[
            "--gateway",
            &format!("http://{}", gw.http),
            "--login",
            "alice",
            "--callee",
            "bob",
            "--tone",
            &tone.display().to_string(),
            "--screens",
            &c.screens.display().to_string(),
        ],
        |line| {
            if line == "await-incoming" {
                // Call (a) is over: that phone goes, and another of bob's calls alice, whose
                // only device is the web phone.
                web_phone_registration = gw.registrations_of("alice").into_iter().next();
                drop(answering.take());
                calling = Some(tone_phone(
                    calling_dir.path(),
                    gw.sip_port,
                    bob,
                    PHONE_HZ,
                    "PCMU",
                    &[&format!("/dial sip:alice@{DOMAIN}")],
                ));
            }
        },
    );
    // Bob's phone writes its recording when the page's BYE arrives; give it a moment.
    std::thread::sleep(Duration::from_millis(500));
    drop(calling);

    // While it ran, the web phone was alice's registered device.
    let registration = web_phone_registration.unwrap_or_default();
    assert_eq!(
        registration["user_agent"], "csps web phone",
        "alice's registration during the calls: {registration}"
    );
    // The page stopped its phone: its registration is gone at once, not at its expiry.
    assert!(
        wait_until(Duration::from_secs(5), || gw
            .registrations_of("alice")
            .is_empty()),
        "the stopped web phone is still registered: {:?}",
        gw.registrations_of("alice")
    );
    // (a) the page called bob; (b) bob called the page.
    let heard_out = assert_call(
        &result,
        "outgoing",
        "In call with bob",
        answering_dir.path(),
    );
    // During call (a) the page held and resumed: the state line said so, and bob's tone came back.
    assert!(
        result["held_state"]
            .as_str()
            .is_some_and(|s| s.starts_with("On hold")),
        "the state line while held: {result:#}"
    );
    let resumed = result["resumed"]["peak_hz"].as_f64().unwrap_or(0.0);
    let bin = result["resumed"]["bin_hz"].as_f64().unwrap_or(0.0);
    assert!(
        (resumed - f64::from(PHONE_HZ)).abs() <= 2.0 * bin.max(1.0)
            && result["resumed"]["share"].as_f64().unwrap_or(0.0) > 0.5,
        "after the resume the page hears bob's {PHONE_HZ} Hz again: {result:#}"
    );
    let heard_back = assert_call(
        &result,
        "incoming",
        "Incoming call from bob",
        calling_dir.path(),
    );
    println!(
        "web phone: bob heard {BROWSER_HZ} Hz at a share of {heard_out:.3} (called) and \
         {heard_back:.3} (calling); the page heard {} and {}; screenshots in {}",
        result["outgoing"],
        result["incoming"],
        c.screens.display()
    );
}
