//! RFC 4733 §2.5 and SIP INFO DTMF interworking through the gateway: a SIPp phone that takes DTMF
//! by SIP INFO only (no telephone-event in its SDP) and a caller whose media is a socket of the
//! test, which reads and sends RFC 4733 events itself.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use csps::media::dtmf::Event;
use csps::media::rtp::{RtpSender, parse};
use csps_tests::{Gateway, Sipp, wait_until};

const DOMAIN: &str = "csps.local";

fn gateway() -> Option<Gateway> {
    let gw = csps_tests::gateway_for("sipp")?;
    gw.create_user("alice", "alice-secret-1");
    gw.create_user("bob", "bob-secret-1");
    Some(gw)
}

/// Bob (SIPp `scenario`, no telephone-event) registered and waiting in a thread.
fn bob(gw: &Gateway, scenario: &str) -> std::thread::JoinHandle<csps_tests::SippOutcome> {
    let sipp = Sipp::callee(scenario, gw.sip_addr(), ("bob", "bob-secret-1"), DOMAIN)
        .unwrap_or_else(|e| panic!("{e}"));
    std::thread::spawn(move || sipp.run())
}

/// Alice calling bob with telephone-event, her media on `media`'s port; the relay's port facing
/// her goes to `portfile`; she hangs up `talk` after the answer.
fn alice(
    gw: &Gateway,
    media: &UdpSocket,
    portfile: &Path,
    talk: Duration,
) -> std::thread::JoinHandle<csps_tests::SippOutcome> {
    let port = media.local_addr().expect("media addr").port();
    let sipp = Sipp::caller(
        "uac_dtmf.xml",
        gw.sip_addr(),
        ("alice", "alice-secret-1"),
        "bob",
        DOMAIN,
    )
    .key("rtp", port)
    .key("portfile", portfile.display())
    .arg("-d")
    .arg(talk.as_millis().to_string());
    std::thread::spawn(move || sipp.run())
}

fn assert_ok(gw: &Gateway, who: &str, o: &csps_tests::SippOutcome) {
    assert!(
        o.ok(),
        "{who} failed:\n{}\n--- gateway ---\n{}",
        o.output,
        gw.log_tail(40)
    );
}

/// One telephone-event packet as it arrived: (marker, timestamp, event).
type Received = (bool, u32, Event);

/// One RTP packet as it arrived: payload type, marker, sequence number, timestamp, SSRC.
type Header = (u8, bool, u16, u32, u32);

/// Sends 20 ms PCMU packets from `media` to `relay` until `stop` is set (at most `max`).
fn play_audio(
    media: &UdpSocket,
    relay: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    max: usize,
) -> std::thread::JoinHandle<()> {
    let media = media.try_clone().expect("clone media socket");
    std::thread::spawn(move || {
        let mut stream = RtpSender::new();
        let mut packet = Vec::new();
        for _ in 0..max {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            packet.clear();
            stream.write(0, &[0xff; 160], 160, &mut packet);
            let _ = media.send_to(&packet, relay);
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

/// RFC 4733 §2.1: the events of each digit in `packets` (as alice received them) sit inside
/// the audio stream she hears: its SSRC, the next sequence numbers, a start timestamp just
/// after the audio before it, no audio while the event plays, and the audio after it numbered
/// on without a gap.
fn assert_events_spliced_into_the_audio(packets: &[Header]) {
    let is_event = |h: &Header| h.0 == 101;
    let mut checked = 0;
    for (i, h) in packets.iter().enumerate() {
        if !(is_event(h) && h.1) {
            continue;
        }
        let before = i
            .checked_sub(1)
            .map(|j| packets[j])
            .filter(|b| !is_event(b));
        let Some(before) = before else {
            panic!("no audio right before the event at {i}: {packets:?}");
        };
        let end = packets[i..]
            .iter()
            .position(|p| !is_event(p) || p.3 != h.3)
            .map_or(packets.len(), |n| i + n);
        let event = &packets[i..end];
        assert!(
            event.iter().all(|e| e.4 == before.4),
            "the event keeps the audio's SSRC {:#x}: {event:?}",
            before.4
        );
        for (k, e) in event.iter().enumerate() {
            assert_eq!(
                e.2,
                before.2.wrapping_add(k as u16 + 1),
                "event packet {k} numbered after the audio {before:?}: {event:?}"
            );
        }
        let ticks = h.3.wrapping_sub(before.3);
        assert!(
            (1..=800).contains(&ticks),
            "the event starts just after the audio's timestamp {}: {}",
            before.3,
            h.3
        );
        if let Some(after) = packets.get(end).filter(|a| !is_event(a)) {
            assert_eq!(
                (after.4, after.2),
                (before.4, event[event.len() - 1].2.wrapping_add(1)),
                "the audio after the event follows on: {after:?}"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 2, "two digits: {packets:?}");
}

#[test]
fn sip_info_digits_reach_a_telephone_event_phone_as_rfc_4733_events() {
    let Some(gw) = gateway() else { return };
    let bob = bob(&gw, "uas_dtmf_info.xml");
    let media = UdpSocket::bind("127.0.0.1:0").expect("bind media");
    media
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let dir = tempfile::tempdir().expect("temp dir");
    let portfile = dir.path().join("port");
    let alice = alice(&gw, &media, &portfile, Duration::from_secs(6));
    // Alice talks (bob's SIPp echoes it), so the digits have an audio stream to join.
    let relay = relay_port(&gw, &portfile, "alice got no answer with the relay's port");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let talking = play_audio(&media, relay, stop.clone(), 500);
    // Read until both digits ended and some audio followed (bounded), while the call runs.
    let mut events: Vec<Received> = Vec::new();
    let mut packets: Vec<Header> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 2048];
    let ended = |events: &[Received], code: u8| events.iter().any(|e| e.2.code == code && e.2.end);
    let mut after = 0;
    while Instant::now() < deadline && after < 10 {
        let Ok(n) = media.recv(&mut buf) else {
            continue;
        };
        let Ok(p) = parse(&buf[..n]) else { continue };
        packets.push((p.payload_type, p.marker, p.sequence, p.timestamp, p.ssrc));
        if ended(&events, 5) && ended(&events, 9) {
            after += 1;
        }
        if p.payload_type != 101 {
            continue;
        }
        if let Ok(ev) = Event::parse(p.payload) {
            events.push((p.marker, p.timestamp, ev));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    talking.join().expect("audio thread");
    let alice = alice.join().expect("alice thread");
    let bob = bob.join().expect("bob thread");
    assert_ok(&gw, "alice", &alice);
    assert_ok(&gw, "bob (each INFO answered 200)", &bob);
    for code in [5, 9] {
        let digit: Vec<&Received> = events.iter().filter(|e| e.2.code == code).collect();
        assert!(
            digit.iter().any(|e| e.2.end),
            "digit {code} ended: {events:?}"
        );
        assert!(
            digit[0].0,
            "the first packet of {code} has the marker: {events:?}"
        );
        assert!(
            digit.iter().all(|e| e.1 == digit[0].1),
            "one event keeps its timestamp: {events:?}"
        );
        assert!(
            digit.iter().any(|e| e.2.end && e.2.duration == 1280),
            "160 ms at 8 kHz: {events:?}"
        );
    }
    // The digits come in the order bob sent them.
    let first_nine = events.iter().position(|e| e.2.code == 9);
    let last_five = events.iter().rposition(|e| e.2.code == 5);
    assert!(last_five < first_nine, "{events:?}");
    assert_events_spliced_into_the_audio(&packets);
}

#[test]
fn rfc_4733_digits_reach_a_sip_info_phone_as_info_dtmf_relay() {
    let Some(gw) = gateway() else { return };
    let bob = bob(&gw, "uas_dtmf_receive.xml");
    let media = UdpSocket::bind("127.0.0.1:0").expect("bind media");
    let dir = tempfile::tempdir().expect("temp dir");
    let portfile = dir.path().join("port");
    let alice = alice(&gw, &media, &portfile, Duration::from_secs(6));
    let relay = relay_port(&gw, &portfile, "no 200 with the relay's port");
    send_digit_five(&media, relay, 101);
    let alice = alice.join().expect("alice thread");
    let bob = bob.join().expect("bob thread");
    assert_ok(&gw, "alice", &alice);
    // Bob's scenario fails without an INFO application/dtmf-relay naming Signal=5, and on a
    // second INFO (the repeated end packets are one digit).
    assert_ok(&gw, "bob (the INFO Signal=5)", &bob);
}

/// The relay's address whose port a SIPp scenario wrote to `portfile` (bounded wait).
fn relay_port(gw: &Gateway, portfile: &Path, missing: &str) -> SocketAddr {
    let mut port = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            port = std::fs::read_to_string(portfile)
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok());
            port.is_some()
        }),
        "{missing}\n{}",
        gw.log_tail(40)
    );
    ([127, 0, 0, 1], port.unwrap_or_default()).into()
}

/// Sends the digit 5 from `media` to `relay` as telephone-event of type `pt`.
fn send_digit_five(media: &UdpSocket, relay: SocketAddr, pt: u8) {
    // The digit 5, 100 ms: start, continuations, three end packets (RFC 4733 §2.5), one
    // timestamp; then an audio packet.
    let mut stream = RtpSender::new();
    let start = stream.timestamp();
    let mut packet = Vec::new();
    for (end, duration) in [
        (false, 160),
        (false, 320),
        (false, 480),
        (true, 800),
        (true, 800),
        (true, 800),
    ] {
        packet.clear();
        let ev = Event {
            code: 5,
            end,
            volume: 10,
            duration,
        };
        stream.write_at(pt, &ev.to_bytes(), start, &mut packet);
        media.send_to(&packet, relay).expect("send event");
        std::thread::sleep(Duration::from_millis(20));
    }
    stream.skip(800);
    packet.clear();
    stream.write(0, &[0xff; 160], 160, &mut packet);
    media.send_to(&packet, relay).expect("send audio");
}

#[test]
fn rfc_4733_digits_of_a_callee_reach_a_caller_without_telephone_event_as_info() {
    // Alice offers PCMU alone; the gateway offers bob telephone-event anyway, reads the
    // events bob sends and sends alice an INFO (her answer keeps PCMU alone).
    let Some(gw) = gateway() else { return };
    let media = UdpSocket::bind("127.0.0.1:0").expect("bind media");
    let dir = tempfile::tempdir().expect("temp dir");
    let portfile = dir.path().join("port");
    let sipp = Sipp::callee(
        "uas_dtmf.xml",
        gw.sip_addr(),
        ("bob", "bob-secret-1"),
        DOMAIN,
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .key("rtp", media.local_addr().expect("media addr").port())
    .key("portfile", portfile.display());
    let bob = std::thread::spawn(move || sipp.run());
    let sipp = Sipp::caller(
        "uac_info_receive.xml",
        gw.sip_addr(),
        ("alice", "alice-secret-1"),
        "bob",
        DOMAIN,
    )
    .arg("-d")
    .arg("3000");
    let alice = std::thread::spawn(move || sipp.run());
    let relay = relay_port(&gw, &portfile, "bob got no INVITE offering telephone-event");
    // The scenario wrote the port and the telephone-event type the gateway offered.
    let pt = std::fs::read_to_string(&portfile)
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u8>().ok())
        .expect("the offered telephone-event type");
    send_digit_five(&media, relay, pt);
    let alice = alice.join().expect("alice thread");
    let bob = bob.join().expect("bob thread");
    // Alice's scenario fails on an answer with more than PCMU and without the INFO Signal=5.
    assert_ok(&gw, "alice (PCMU alone, then the INFO Signal=5)", &alice);
    assert_ok(&gw, "bob (offered telephone-event)", &bob);
}
