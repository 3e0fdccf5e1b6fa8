//! What a transcoded call costs: one direction is `media::transcode::Transcoder::push` per
//! received RTP packet (RTP parse, reorder buffer, decode, resample when the rates differ,
//! encode, the outgoing RTP header), on a speech-like signal (three harmonics with a moving pitch
//! and noise) encoded as a phone would send it. A transcoded call runs both directions, so calls
//! per core = 20 ms / (cost one way + cost the other way). Prints a table; run with
//! `cargo bench -p csps --bench codec`. The relay's socket and SRTP work comes on top (see the
//! calls benchmark for relayed calls).

use std::time::Instant;

use csps::media::codec::{SILK_BITRATE, frame_samples, phone_encoder, rtp_clock, speechlike};
use csps::media::rtp::RtpSender;
use csps::media::transcode::{LegFormat, Transcoder};
use csps_sip::sdp::Codec;

const FRAMES: usize = 3_000;

/// RTP packets of `codec` (payload type `pt`) for the signal, as a phone would send them (Opus:
/// SILK, as libopus's VoIP mode does).
fn packets(codec: Codec, pt: u8) -> Vec<Vec<u8>> {
    let mut enc = phone_encoder(codec).expect("encoder");
    let duration = rtp_clock(codec).map_or(160, frame_samples) as u32;
    let mut rtp = RtpSender::new();
    speechlike(enc.rate(), FRAMES)
        .iter()
        .map(|pcm| {
            let mut p = Vec::new();
            enc.encode(pcm, &mut p).expect("encode");
            let mut wire = Vec::new();
            rtp.write(pt, &p, duration, &mut wire);
            wire
        })
        .collect()
}

/// The payload type a leg uses for `codec` (static where RFC 3551 has one).
fn pt(codec: Codec) -> u8 {
    match codec {
        Codec::Pcmu => 0,
        Codec::Pcma => 8,
        Codec::G722 => 9,
        _ => 111,
    }
}

/// Microseconds per packet for `from` → `to` through the transcoder, `to` capping Opus at
/// `cap` bit/s (`maxaveragebitrate`) or not.
fn one_way(from: Codec, to: Codec, cap: Option<u32>) -> f64 {
    let format = |c| LegFormat {
        codec: c,
        payload_type: pt(c),
        telephone_event: None,
        max_average_bitrate: cap,
    };
    let input = packets(from, pt(from));
    let mut t = Transcoder::new(format(from), format(to)).expect("transcoder");
    let mut sent = 0usize;
    let start = Instant::now();
    for p in &input {
        t.push(p, &mut |w| sent += w.len());
    }
    let elapsed = start.elapsed();
    assert_eq!(t.counters().sent as usize, FRAMES, "every frame went out");
    std::hint::black_box(sent);
    elapsed.as_secs_f64() * 1e6 / FRAMES as f64
}

fn main() {
    println!("| call (A ↔ B) | A→B µs/packet | B→A µs/packet | CPU per call | calls per core |");
    println!("|---|---|---|---|---|");
    // The Opus leg as the gateway codes it by default (CELT 64 kbit/s), and capped by its
    // receiver at 32 kbit/s (SILK): see `media::codec::OpusProfile`.
    for (a, b, cap) in [
        (Codec::Pcmu, Codec::G722, None),
        (Codec::G722, Codec::Opus, None),
        (Codec::G722, Codec::Opus, Some(SILK_BITRATE)),
        (Codec::Pcmu, Codec::Opus, None),
        (Codec::Pcma, Codec::Pcmu, None),
    ] {
        let ab = one_way(a, b, cap);
        let ba = one_way(b, a, None);
        // Both directions each 20 ms: the share of one core a call takes.
        let share = (ab + ba) / 20_000.0;
        println!(
            "| {} ↔ {}{} | {ab:.1} | {ba:.1} | {:.2} % | {:.0} |",
            a.name(),
            b.name(),
            match cap {
                Some(c) => format!(" (B caps Opus at {} kbit/s: SILK)", c / 1000),
                None => String::new(),
            },
            share * 100.0,
            1.0 / share
        );
    }
}
