//! Issue 4 (calls, hold) end to end with linphone-cli, a real phone that restarts its media after a
//! hold: linphone and baresip call each other through the gateway; a linphone caller holds and
//! resumes a linphone callee and the other way round (the phone's own music while held), and a
//! baresip callee; a held linphone hears the gateway's music on hold. Audio is checked where it
//! is heard: each phone records what it decodes and the other's tone must be in it (linphone
//! plays WAV tones written here; baresip its `ausine`). baresip 1.0 cannot be the held party
//! here: the hold re-INVITE restarts its player, and its `sndfile` recording stops there for the
//! rest of the call although the RTP keeps arriving.

use std::path::{Path, PathBuf};
use std::time::Duration;

use csps_tests::audio::{read_wav, tone_share};
use csps_tests::linphone::{Linphone, write_tone};
use csps_tests::{Gateway, have_tool, skip, wait_until};

const DOMAIN: &str = "csps.local";

/// How long the phones talk in each part of a call before the next step; the assertions are on
/// what was heard, never on time.
const TALK: Duration = Duration::from_secs(3);

/// A gateway with alice and bob, when linphonec and baresip are there (else skipped).
fn gateway() -> Option<Gateway> {
    if !have_tool("linphonec") {
        skip("linphonec not installed (run e2e/setup)");
        return None;
    }
    let gw = csps_tests::gateway_for("baresip")?;
    gw.create_user("alice", "alice-secret-1");
    gw.create_user("bob", "bob-secret-1");
    Some(gw)
}

/// The share of `freq` in the recording at `path`, without its first half second (jitter
/// buffer fill, the stream's start).
fn heard(path: &Path, freq: f32) -> f32 {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut pcm = read_wav(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let half = (pcm.rate / 2) as usize;
    assert!(
        pcm.samples.len() > 2 * half,
        "{}: only {} samples recorded",
        path.display(),
        pcm.samples.len()
    );
    pcm.samples.drain(..half);
    tone_share(&pcm, freq)
}

/// A baresip phone for `user` playing `tone_hz` and answering by itself, once registered.
fn baresip(
    gw: &Gateway,
    dir: &Path,
    user: &str,
    tone_hz: u32,
    commands: &[&str],
) -> csps_tests::baresip::Baresip {
    csps_tests::baresip::registered_tone_phone(gw, dir, (user, DOMAIN), tone_hz, commands)
}

/// A linphone phone for `user` that plays a `tone_hz` WAV and records into `talk.wav`.
fn linphone(gw: &Gateway, dir: &Path, user: &str, tone_hz: f32) -> (Linphone, std::path::PathBuf) {
    let password = format!("{user}-secret-1");
    let mut phone = Linphone::register(dir, gw.sip_addr(), (user, &password, DOMAIN));
    let tone = dir.join(format!("tone-{tone_hz}.wav"));
    write_tone(&tone, tone_hz);
    phone.play(&tone);
    let talk = phone.record("talk.wav");
    (phone, talk)
}

/// A call from alice (linphone, 600 Hz) to bob (baresip, 1000 Hz, answering by itself), answered
/// and running for [`TALK`].
struct ToBaresip {
    alice: Linphone,
    /// What alice records from the start of the call.
    alice_talk: PathBuf,
    bob_dir: tempfile::TempDir,
    _bob: csps_tests::baresip::Baresip,
    _alice_dir: tempfile::TempDir,
}

/// Alice (linphone) calls bob (baresip); see [`ToBaresip`].
fn linphone_calls_baresip(gw: &Gateway) -> ToBaresip {
    let (alice_dir, bob_dir) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let bob = baresip(gw, bob_dir.path(), "bob", 1000, &[]);
    let (mut alice, alice_talk) = linphone(gw, alice_dir.path(), "alice", 600.0);
    let mark = alice.call(&format!("sip:bob@{DOMAIN}"));
    alice.expect_media(mark);
    std::thread::sleep(TALK);
    ToBaresip {
        alice,
        alice_talk,
        bob_dir,
        _bob: bob,
        _alice_dir: alice_dir,
    }
}

#[test]
fn linphone_calls_baresip_each_hears_the_other_and_the_record_says_who_hung_up() {
    let Some(gw) = gateway() else {
        return;
    };
    let mut call = linphone_calls_baresip(&gw);
    call.alice.hang_up();
    let record = gw.ended_call();
    assert_eq!(record["end_reason"], "caller_hung_up", "{record}");
    assert_eq!(record["caller"], format!("sip:alice@{DOMAIN}"), "{record}");
    assert_eq!(record["status"], 200, "{record}");
    // baresip completes its recording on the BYE.
    std::thread::sleep(Duration::from_millis(500));
    let bob_hears = csps_tests::audio::heard_in(call.bob_dir.path()).expect("bob's recording");
    let (bob_hears_alice, bob_hears_self) = (
        tone_share(&bob_hears, 600.0),
        tone_share(&bob_hears, 1000.0),
    );
    let (alice_hears_bob, alice_hears_self) = (
        heard(&call.alice_talk, 1000.0),
        heard(&call.alice_talk, 600.0),
    );
    assert!(
        bob_hears_alice > 0.5,
        "bob (baresip) hears 600 Hz at {bob_hears_alice}"
    );
    assert!(
        alice_hears_bob > 0.5,
        "alice (linphone) hears 1000 Hz at {alice_hears_bob}"
    );
    assert!(
        bob_hears_self < 0.1 && alice_hears_self < 0.1,
        "no echo of their own tone"
    );
}

#[test]
fn baresip_calls_linphone_which_answers_and_each_hears_the_other() {
    let Some(gw) = gateway() else {
        return;
    };
    let (alice_dir, bob_dir) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let (mut bob, bob_heard) = linphone(&gw, bob_dir.path(), "bob", 1000.0);
    let _alice = baresip(
        &gw,
        alice_dir.path(),
        "alice",
        600,
        &[&format!("/dial sip:bob@{DOMAIN}")],
    );
    bob.answer();
    std::thread::sleep(TALK);
    bob.hang_up();
    let record = gw.ended_call();
    assert_eq!(record["end_reason"], "callee_hung_up", "{record}");
    std::thread::sleep(Duration::from_millis(500));
    let alice_hears = csps_tests::audio::heard_in(alice_dir.path()).expect("alice's recording");
    let alice_hears_bob = tone_share(&alice_hears, 1000.0);
    let bob_hears_alice = heard(&bob_heard, 600.0);
    assert!(
        alice_hears_bob > 0.5,
        "alice (baresip) hears 1000 Hz at {alice_hears_bob}"
    );
    assert!(
        bob_hears_alice > 0.5,
        "bob (linphone) hears 600 Hz at {bob_hears_alice}"
    );
}

/// What the phones of [`hold_and_resume`] recorded, and the offers the gateway sent the held one.
struct Hold {
    /// The held phone before the hold, on hold, after the resume.
    held: [PathBuf; 3],
    /// The holder before the hold and after the resume (while it holds it receives nothing).
    holder: [PathBuf; 2],
    /// The INVITEs the gateway sent to the held phone, in order (the hold, the resume).
    offers_to_held: Vec<String>,
    /// `GET /api/calls` showed the held phone's leg with `music_on_hold: true` during the hold.
    api_showed_music: bool,
    _dirs: [tempfile::TempDir; 2],
}

/// Alice (linphone, 600 Hz) calls bob (linphone, 1000 Hz); they talk; then alice (with
/// `caller_holds`, else bob) holds the other (`pause`: a re-INVITE with `a=sendonly`) and
/// resumes; each part lasts [`TALK`]. While it holds, the holder's phone sends the file it plays
/// as its music: a `music` Hz tone (else its own tone), and its tone again after the resume.
/// Every recording is complete when this returns.
fn hold_and_resume(gw: &Gateway, caller_holds: bool, music: Option<f32>) -> Hold {
    let (alice_dir, bob_dir) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let (mut alice, alice_talk) = linphone(gw, alice_dir.path(), "alice", 600.0);
    let (mut bob, bob_talk) = linphone(gw, bob_dir.path(), "bob", 1000.0);
    let mark = alice.call(&format!("sip:bob@{DOMAIN}"));
    bob.answer();
    alice.expect_media(mark);
    std::thread::sleep(TALK);

    let (holder, held, holder_dir, holder_tone, held_leg) = if caller_holds {
        (&mut alice, &mut bob, alice_dir.path(), 600.0, "b")
    } else {
        (&mut bob, &mut alice, bob_dir.path(), 1000.0, "a")
    };
    if let Some(hz) = music {
        let music = holder_dir.join("music.wav");
        write_tone(&music, hz);
        holder.play(&music);
    }
    let held_on_hold = held.record("held.wav");
    let mark = held.mark();
    holder.hold();
    held.expect(mark, &["has been paused by"]);
    let mut api_showed_music = false;
    wait_until(TALK, || {
        let calls = gw.api("GET", "/api/calls", None).json();
        let leg = usize::from(held_leg == "b");
        api_showed_music |= calls[0]["legs"][leg]["music_on_hold"] == true;
        false
    });

    holder.play(&holder_dir.join(format!("tone-{holder_tone}.wav")));
    let holder_resumed = holder.record("resumed.wav");
    let held_resumed = held.record("resumed.wav");
    let mark = held.mark();
    holder.resume();
    held.expect_media(mark);
    std::thread::sleep(TALK);
    let mark = held.mark();
    holder.hang_up();
    held.expect_ended(mark);

    let (holder_talk, held_talk) = if caller_holds {
        (alice_talk, bob_talk)
    } else {
        (bob_talk, alice_talk)
    };
    let id = gw.ended_call()["id"].as_u64().expect("call id");
    let messages = gw
        .api("GET", &format!("/api/calls/{id}/messages"), None)
        .json();
    let offers_to_held = messages
        .as_array()
        .expect("the call's messages")
        .iter()
        .filter(|m| {
            m["leg"] == held_leg
                && m["method"] == "INVITE"
                && m["direction"] == "out"
                && m["status"].is_null()
        })
        .filter_map(|m| m["text"].as_str().map(str::to_owned))
        .collect();
    Hold {
        held: [held_talk, held_on_hold, held_resumed],
        holder: [holder_talk, holder_resumed],
        offers_to_held,
        api_showed_music,
        _dirs: [alice_dir, bob_dir],
    }
}

/// The held phone was offered the hold (`a=sendonly`), then the resume (neither `sendonly` nor
/// `inactive`).
fn assert_offered_hold_then_resume(offers: &[String]) {
    let held = offers.iter().position(|t| t.contains("a=sendonly"));
    assert!(
        held.is_some_and(|i| offers[i + 1..]
            .iter()
            .any(|t| !t.contains("a=sendonly") && !t.contains("a=inactive"))),
        "the held phone is offered the hold, then the resume: {offers:?}"
    );
}

/// Checks what each recording holds: `(recording, tone Hz, heard)`; heard means the tone's share
/// is above one half, not heard that it is below a tenth. Panics naming every failed check with
/// the share found.
fn assert_heard(checks: &[(&Path, f32, bool)], context: &str) {
    let failed: Vec<String> = checks
        .iter()
        .filter_map(|&(path, hz, expected)| {
            let share = heard(path, hz);
            let ok = if expected { share > 0.5 } else { share < 0.1 };
            (!ok).then(|| format!("{} {hz} Hz heard={expected}: share {share}", path.display()))
        })
        .collect();
    assert!(failed.is_empty(), "failed: {failed:#?}\n{context}");
}

/// One linphone holds the other (alice with `caller_holds`, else bob) and resumes; the gateway's
/// music on hold is off (the default), so the hold passes unchanged. While held, the held phone
/// hears what the holder's phone plays on hold (its music, here a 1500 Hz tone), not the holder's
/// voice; after the resume each hears the other's tone again. The gateway offered the held phone
/// the hold as `a=sendonly`, then the resume.
fn phone_music_on_hold(caller_holds: bool) {
    let Some(gw) = gateway() else {
        return;
    };
    let hold = hold_and_resume(&gw, caller_holds, Some(1500.0));
    let (holder_hz, held_hz) = if caller_holds {
        (600.0, 1000.0)
    } else {
        (1000.0, 600.0)
    };
    let [held_talk, on_hold, held_resumed] = &hold.held;
    let [holder_talk, holder_resumed] = &hold.holder;
    assert_heard(
        &[
            (held_talk, holder_hz, true),
            (on_hold, 1500.0, true),
            (on_hold, holder_hz, false),
            (held_resumed, holder_hz, true),
            (holder_talk, held_hz, true),
            (holder_resumed, held_hz, true),
        ],
        "",
    );
    assert!(!hold.api_showed_music, "no music on hold from the gateway");
    assert_offered_hold_then_resume(&hold.offers_to_held);
}

/// The caller holds: alice holds bob; see [`phone_music_on_hold`].
#[test]
fn linphone_caller_holds_and_resumes_and_the_audio_follows_both_ways() {
    phone_music_on_hold(true);
}

/// The callee holds: bob holds alice, the gateway carries his re-INVITEs to her; see
/// [`phone_music_on_hold`].
#[test]
fn linphone_callee_holds_and_resumes_and_the_audio_follows_both_ways() {
    phone_music_on_hold(false);
}

/// With `Data.SipConfig.MusicOnHold` naming a WAV file (1500 Hz), bob, held by alice, hears the
/// gateway's music and not what alice's phone sends while it holds (its 600 Hz play file); after
/// the resume he hears alice again.
#[test]
fn with_music_on_hold_a_held_linphone_hears_the_gateways_music_then_the_caller_again() {
    let Some(gw) = gateway() else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let wav = dir.path().join("moh.wav");
    write_tone(&wav, 1500.0);
    let r = gw.api(
        "PUT",
        "/api/config/*/Data.SipConfig.MusicOnHold",
        Some(&serde_json::json!(wav.display().to_string())),
    );
    assert!(r.status < 300, "PUT MusicOnHold: {} {}", r.status, r.body);
    let loaded = wait_until(Duration::from_secs(10), || {
        gw.log_tail(100).contains("music on hold loaded")
    });
    assert!(loaded, "the music was not loaded:\n{}", gw.log_tail(20));
    let hold = hold_and_resume(&gw, true, None);
    let [_, bob_held, bob_resumed] = &hold.held;
    // Bob on hold hears the gateway's music, not alice; after the resume alice again.
    assert_heard(
        &[
            (bob_held, 1500.0, true),
            (bob_held, 600.0, false),
            (bob_resumed, 600.0, true),
        ],
        &gw.log_tail(30),
    );
    assert!(hold.api_showed_music, "GET /api/calls showed the music");
}

/// Alice (linphone) holds bob (baresip) and resumes: after the resume she hears bob's tone again.
/// (bob's own recording ends at the hold re-INVITE, see the top of this file, so what he hears is
/// checked before the hold only.)
#[test]
fn linphone_holds_baresip_and_hears_it_again_after_the_resume() {
    let Some(gw) = gateway() else {
        return;
    };
    let mut call = linphone_calls_baresip(&gw);
    let alice = &mut call.alice;
    alice.hold();
    std::thread::sleep(TALK);
    let alice_resumed = alice.record("resumed.wav");
    alice.resume();
    std::thread::sleep(TALK);
    alice.hang_up();
    std::thread::sleep(Duration::from_millis(500));
    let bob_hears = csps_tests::audio::heard_in(call.bob_dir.path()).expect("bob's recording");
    let bob_hears_alice = tone_share(&bob_hears, 600.0);
    assert!(
        bob_hears_alice > 0.5,
        "bob before the hold hears alice at {bob_hears_alice}"
    );
    // Alice before the hold and after the resume.
    assert_heard(
        &[
            (&call.alice_talk, 1000.0, true),
            (&alice_resumed, 1000.0, true),
        ],
        "",
    );
}
