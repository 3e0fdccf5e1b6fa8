//! What transcoding will cost per 20 ms frame, before the transcoder exists: one direction of a
//! call is decode → resample (when the rates differ) → encode with `media::codec`, on a
//! speech-like signal (three harmonics with a moving pitch and noise). A transcoded call runs
//! both directions, so calls per core = 20 ms / (cost one way + cost the other way). Prints a
//! table; run with `cargo bench -p csps --bench codec`. No jitter buffer, RTP or sockets:
//! the relay's packet cost comes on top.

use std::time::Instant;

use csps::media::codec::resample::Resampler;
use csps::media::codec::{Decoder, Encoder, frame_samples};
use csps_sip::sdp::Codec;

const FRAMES: usize = 3_000;

/// `FRAMES` 20 ms frames at `rate` of a voiced, noisy signal.
fn speechlike(rate: u32) -> Vec<Vec<i16>> {
    let n = frame_samples(rate);
    let mut seed = 0x2545_f491_u32;
    (0..FRAMES)
        .map(|f| {
            (0..n)
                .map(|i| {
                    let t = (f * n + i) as f32 / rate as f32;
                    let pitch = 120.0 + 40.0 * (t * 0.7).sin();
                    let voiced: f32 = [1.0, 0.5, 0.25]
                        .iter()
                        .enumerate()
                        .map(|(h, a)| {
                            a * (std::f32::consts::TAU * pitch * (h + 1) as f32 * t).sin()
                        })
                        .sum();
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    let noise = (seed as f32 / u32::MAX as f32) - 0.5;
                    ((voiced * 0.25 + noise * 0.05) * f32::from(i16::MAX)) as i16
                })
                .collect()
        })
        .collect()
}

/// Payloads of `codec` for the signal, as a phone would send them.
fn payloads(codec: Codec) -> Vec<Vec<u8>> {
    let mut enc = Encoder::new(codec).expect("encoder");
    speechlike(enc.rate())
        .iter()
        .map(|pcm| {
            let mut p = Vec::new();
            enc.encode(pcm, &mut p).expect("encode");
            p
        })
        .collect()
}

/// Microseconds per frame for `from` → `to` (decode, resample, encode).
fn one_way(from: Codec, to: Codec) -> f64 {
    let input = payloads(from);
    let mut dec = Decoder::new(from).expect("decoder");
    let mut enc = Encoder::new(to).expect("encoder");
    let mut rs = (dec.rate() != enc.rate())
        .then(|| Resampler::new(dec.rate(), enc.rate()).expect("resampler"));
    let (mut pcm, mut resampled, mut out) = (Vec::new(), Vec::new(), Vec::new());
    let t = Instant::now();
    for p in &input {
        pcm.clear();
        dec.decode(p, &mut pcm).expect("decode");
        let frame = match rs.as_mut() {
            Some(r) => {
                resampled.clear();
                r.process(&pcm, &mut resampled);
                &resampled
            }
            None => &pcm,
        };
        out.clear();
        enc.encode(frame, &mut out).expect("encode");
    }
    t.elapsed().as_secs_f64() * 1e6 / FRAMES as f64
}

fn main() {
    println!("| call (A ↔ B) | A→B µs/frame | B→A µs/frame | CPU per call | calls per core |");
    println!("|---|---|---|---|---|");
    for (a, b) in [
        (Codec::Pcmu, Codec::G722),
        (Codec::G722, Codec::Opus),
        (Codec::Pcmu, Codec::Opus),
        (Codec::Pcma, Codec::Pcmu),
    ] {
        let ab = one_way(a, b);
        let ba = one_way(b, a);
        // Both directions each 20 ms: the share of one core a call takes.
        let share = (ab + ba) / 20_000.0;
        println!(
            "| {} ↔ {} | {ab:.1} | {ba:.1} | {:.2} % | {:.0} |",
            a.name(),
            b.name(),
            share * 100.0,
            1.0 / share
        );
    }
}
