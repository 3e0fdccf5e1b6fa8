//! Music on hold (issue 4, "Hold and switch"): with `Data.SipConfig.MusicOnHold` naming a WAV
//! file, a party put on hold hears that file from the gateway until the other party resumes; the
//! hold offer reaches it as `sendonly` even when the holder said `inactive`. SIPp plays both
//! phones' signalling (uac_moh.xml holds with a=inactive for 2 s; uas_moh.xml is held); the held
//! phone's media goes to a socket of this test, which decodes what arrives and looks for the
//! file's tone. With the key empty (the default) nothing is played and the hold passes unchanged.

use std::net::UdpSocket;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use csps_tests::audio::{Pcm, tone_share, wav_bytes};
use csps_tests::{Gateway, Sipp, free_port, wait_until};

const DOMAIN: &str = "csps.local";
const TONE_HZ: f32 = 1000.0;

/// A mono 16-bit WAV file of a `hz` sine at `rate` (what an operator would configure).
fn write_tone_wav(path: &Path, rate: u32, hz: f32, secs: f32) {
    let samples: Vec<i16> = (0..(rate as f32 * secs) as usize)
        .map(|i| {
            let s = (2.0 * std::f32::consts::PI * hz * i as f32 / rate as f32).sin();
            (0.5 * s * 32767.0) as i16
        })
        .collect();
    std::fs::write(path, wav_bytes(rate, 1, &samples)).expect("write the music file");
}

/// G.711 µ-law to linear (ITU-T G.711).
fn ulaw(b: u8) -> f32 {
    let b = !b;
    let exp = (b >> 4) & 7;
    let mant = i32::from(b & 0x0f);
    let mag = (((mant << 3) + 0x84) << exp) - 0x84;
    let s = if b & 0x80 != 0 { -mag } else { mag };
    s as f32 / 32768.0
}

/// An RTP packet the held phone received, and whether the resume had reached it by then.
struct Received {
    after_resume: bool,
    payload_type: u8,
    sequence: u16,
    timestamp: u32,
    ssrc: u32,
    payload: Vec<u8>,
}

/// Records what arrives on `sock` until `done` (bounded to 60 s); a packet counts as after the
/// resume once `resumed` exists.
fn record(sock: UdpSocket, resumed: std::path::PathBuf, done: Arc<AtomicBool>) -> Vec<Received> {
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    let start = Instant::now();
    while !done.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(60) {
        let Ok(n) = sock.recv(&mut buf) else {
            continue;
        };
        let p = &buf[..n];
        if n < 12 || p[0] >> 6 != 2 {
            continue;
        }
        let csrcs = usize::from(p[0] & 0x0f);
        let Some(payload) = p.get(12 + 4 * csrcs..) else {
            continue;
        };
        out.push(Received {
            after_resume: resumed.exists(),
            payload_type: p[1] & 0x7f,
            sequence: u16::from_be_bytes([p[2], p[3]]),
            timestamp: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
            ssrc: u32::from_be_bytes([p[8], p[9], p[10], p[11]]),
            payload: payload.to_vec(),
        });
    }
    out
}

/// What one held call showed: the hold direction the held phone was offered, and the RTP it got.
struct Hold {
    offered: String,
    packets: Vec<Received>,
    /// `GET /api/calls` showed bob's leg with `music_on_hold: true` during the call.
    api_showed_music: bool,
}

/// Alice calls bob, holds him with a=inactive for 2 s and resumes; bob answers the hold with
/// `answer` and his media goes to this test.
fn alice_holds_bob(gw: &Gateway, answer: &str) -> Hold {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let sock = UdpSocket::bind(("127.0.0.1", port)).expect("bind the held phone's RTP port");
    let done = Arc::new(AtomicBool::new(false));
    let recorder = std::thread::spawn({
        let (resumed, done) = (dir.path().join("resumed"), done.clone());
        move || record(sock, resumed, done)
    });
    let bob = Sipp::callee(
        "uas_moh.xml",
        gw.sip_addr(),
        ("bob", "bob-secret-1"),
        DOMAIN,
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .key("rtp", port)
    .key("dir", dir.path().display())
    .key("answer", answer);
    let bob = std::thread::spawn(move || bob.run());
    let alice = Sipp::caller(
        "uac_moh.xml",
        gw.sip_addr(),
        ("alice", "alice-secret-1"),
        "bob",
        DOMAIN,
    );
    let alice = std::thread::spawn(move || alice.run());
    // While the call runs (at most its SIPp timeout), watch the call list for the held leg.
    let mut api_showed_music = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !alice.is_finished() && Instant::now() < deadline {
        let calls = gw.api("GET", "/api/calls", None).json();
        api_showed_music |= calls[0]["legs"][1]["music_on_hold"] == true;
        std::thread::sleep(Duration::from_millis(100));
    }
    let alice = alice.join().expect("caller thread");
    let bob = bob.join().expect("callee thread");
    done.store(true, Ordering::Relaxed);
    let packets = recorder.join().expect("recorder thread");
    for (who, o) in [("caller", &alice), ("callee", &bob)] {
        assert!(
            o.ok(),
            "{who} failed:\n{}\n--- gateway ---\n{}",
            o.output,
            gw.log_tail(40)
        );
    }
    let offered = std::fs::read_to_string(dir.path().join("hold"))
        .unwrap_or_default()
        .trim()
        .to_owned();
    Hold {
        offered,
        packets,
        api_showed_music,
    }
}

fn gateway() -> Option<Gateway> {
    let gw = csps_tests::gateway_for("sipp")?;
    gw.create_user("alice", "alice-secret-1");
    gw.create_user("bob", "bob-secret-1");
    Some(gw)
}

/// Sets `Data.SipConfig.MusicOnHold` on this gateway's entry.
fn set_music(gw: &Gateway, value: &str) {
    let server = gw.server_name.as_deref().unwrap_or("*");
    let r = gw.api(
        "PUT",
        &format!("/api/config/{server}/Data.SipConfig.MusicOnHold"),
        Some(&serde_json::json!(value)),
    );
    assert!(r.status < 300, "PUT MusicOnHold: {} {}", r.status, r.body);
}

#[test]
fn a_held_party_hears_the_configured_music_until_the_resume() {
    let Some(gw) = gateway() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let wav = dir.path().join("moh.wav");
    write_tone_wav(&wav, 16_000, TONE_HZ, 1.5);
    set_music(&gw, &wav.display().to_string());
    assert!(
        wait_until(Duration::from_secs(10), || gw
            .log_lines()
            .iter()
            .any(|l| l.contains("music on hold loaded"))),
        "the music was not loaded:\n{}",
        gw.log_tail(20)
    );
    let hold = alice_holds_bob(&gw, "recvonly");
    assert!(
        hold.api_showed_music,
        "GET /api/calls never showed bob's leg with music_on_hold"
    );
    assert_eq!(
        hold.offered, "a=sendonly",
        "the held phone must be told it will receive"
    );
    let music: Vec<&Received> = hold.packets.iter().filter(|p| !p.after_resume).collect();
    // 2 s of hold is ~100 packets; a loaded machine may lose some, not most.
    assert!(
        music.len() >= 40,
        "{} packets of music:\n{}",
        music.len(),
        gw.log_tail(30)
    );
    assert!(
        music
            .iter()
            .all(|p| p.payload_type == 0 && p.payload.len() == 160)
    );
    assert!(music.iter().all(|p| p.ssrc == music[0].ssrc), "one stream");
    for w in music.windows(2) {
        let steps = w[1].sequence.wrapping_sub(w[0].sequence);
        assert!(
            (1..10).contains(&steps),
            "sequence {} → {}",
            w[0].sequence,
            w[1].sequence
        );
        assert_eq!(
            w[1].timestamp.wrapping_sub(w[0].timestamp),
            160 * u32::from(steps),
            "20 ms of PCMU per packet"
        );
    }
    let pcm = Pcm {
        rate: 8000,
        samples: music
            .iter()
            .flat_map(|p| p.payload.iter().map(|&b| ulaw(b)))
            .collect(),
    };
    let share = tone_share(&pcm, TONE_HZ);
    assert!(
        share > 0.8,
        "the held phone heard {share:.2} of the music's tone"
    );
    // The music stops the moment alice resumes: the gateway stops it before it relays her
    // re-INVITE, so at most what was already queued arrives after bob saw it.
    let after = hold.packets.len() - music.len();
    eprintln!(
        "music on hold: {} packets, 1 kHz share {share:.3}, {after} after the resume",
        music.len()
    );
    assert!(after <= 3, "{after} packets of music after the resume");
    assert!(
        gw.log_lines()
            .iter()
            .any(|l| l.contains("music on hold started")),
        "{}",
        gw.log_tail(30)
    );
}

#[test]
fn without_music_on_hold_the_hold_passes_unchanged_and_nothing_is_played() {
    let Some(gw) = gateway() else { return };
    let hold = alice_holds_bob(&gw, "inactive");
    assert_eq!(hold.offered, "a=inactive");
    assert_eq!(hold.packets.len(), 0, "nothing is played");
    assert!(!hold.api_showed_music);
}

#[test]
fn a_bad_music_setting_is_refused_and_a_missing_file_is_logged_not_fatal() {
    let Some(gw) = gateway() else { return };
    let server = gw.server_name.as_deref().unwrap_or("*");
    let r = gw.api(
        "PUT",
        &format!("/api/config/{server}/Data.SipConfig.MusicOnHold"),
        Some(&serde_json::json!("relative/moh.mp3")),
    );
    assert_eq!(r.status, 422, "{}", r.body);
    set_music(&gw, "/nonexistent/csps-moh.wav");
    assert!(
        wait_until(Duration::from_secs(10), || gw.log_lines().iter().any(|l| l
            .contains("music on hold off")
            && l.contains("/nonexistent/csps-moh.wav"))),
        "{}",
        gw.log_tail(20)
    );
    // Calls still hold, in silence.
    let hold = alice_holds_bob(&gw, "inactive");
    assert_eq!(hold.offered, "a=inactive");
    assert!(hold.packets.is_empty());
}
