//! What a conference room costs per 20 ms tick: every participant's packet decoded and brought
//! to 16 kHz, the mix, and one encoded packet per participant (sum minus its own), with
//! `media::mixer` as the room runs it. A room's tick must fit in 20 ms on one core with room to
//! spare; rooms per core ≈ 20 ms / (µs per tick). Each participant sends a tone of its own.
//! Prints a table; run with `cargo bench -p csps --bench mixer`. Sockets are not counted.

use std::time::Instant;

use csps::media::codec::{Encoder, frame_samples};
use csps::media::mixer::Mixer;
use csps::media::rtp::RtpSender;
use csps_sip::sdp::Codec;

const TICKS: usize = 1_000;

/// `TICKS` RTP packets of a tone at `freq` in `codec`.
fn packets(codec: Codec, pt: u8, freq: f32) -> Vec<Vec<u8>> {
    let mut enc = Encoder::new(codec).expect("encoder");
    let rate = enc.rate();
    let n = frame_samples(rate);
    let mut sender = RtpSender::new();
    (0..TICKS)
        .map(|k| {
            let pcm: Vec<i16> = (0..n)
                .map(|i| {
                    let t = (k * n + i) as f32 / rate as f32;
                    (0.2 * 32767.0 * (std::f32::consts::TAU * freq * t).sin()) as i16
                })
                .collect();
            let mut payload = Vec::new();
            enc.encode(&pcm, &mut payload).expect("encode");
            let mut packet = Vec::new();
            sender.write(pt, &payload, 160, &mut packet);
            packet
        })
        .collect()
}

/// Microseconds per tick for a room of `n` participants all using `codec`.
fn per_tick(codec: Codec, pt: u8, n: usize) -> f64 {
    let mut mixer = Mixer::new();
    let input: Vec<_> = (0..n)
        .map(|i| {
            mixer.add(i as u32, codec, pt, None).expect("participant");
            packets(codec, pt, 300.0 + 150.0 * i as f32)
        })
        .collect();
    let mut bytes = 0usize;
    let t = Instant::now();
    for k in 0..TICKS {
        for (i, p) in input.iter().enumerate() {
            mixer.receive(i as u32, &p[k]);
        }
        mixer.tick(|_, packet| bytes += packet.len());
    }
    let us = t.elapsed().as_secs_f64() * 1e6 / TICKS as f64;
    assert!(bytes > 0);
    us
}

fn main() {
    println!("| participants | codec | µs per tick | µs per participant | share of one core |");
    println!("|---|---|---|---|---|");
    for (codec, pt) in [(Codec::Pcmu, 0), (Codec::G722, 9), (Codec::Opus, 111)] {
        for n in [3, 8, 16] {
            let us = per_tick(codec, pt, n);
            println!(
                "| {n} | {} | {us:.0} | {:.1} | {:.2} % |",
                codec.name(),
                us / n as f64,
                us / 20_000.0 * 100.0
            );
        }
    }
}
