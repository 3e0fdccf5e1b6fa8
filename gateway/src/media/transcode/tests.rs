use super::*;
use crate::media::codec::{Decoder, Encoder};
use crate::media::rtp::{Received, RtpSender, parse};

fn fmt(codec: Codec, payload_type: u8, te: Option<(u8, u32)>) -> LegFormat {
    LegFormat {
        codec,
        payload_type,
        telephone_event: te,
        max_average_bitrate: None,
    }
}

/// `frames` packets of a `freq` Hz tone in `codec`, `ms` milliseconds each, as a phone sends.
fn tone_packets(codec: Codec, pt: u8, freq: f32, frames: usize, ms: usize) -> Vec<Vec<u8>> {
    let mut enc = Encoder::new(codec).expect("encoder");
    let rate = enc.rate();
    let per = rate as usize * ms / 1000;
    let clock = rtp_clock(codec).expect("clock") as usize * ms / 1000;
    let mut s = RtpSender::new();
    let mut n = 0usize;
    (0..frames)
        .map(|_| {
            let pcm: Vec<i16> = (0..per)
                .map(|_| {
                    n += 1;
                    let t = n as f32 / rate as f32;
                    ((std::f32::consts::TAU * freq * t).sin() * 8000.0) as i16
                })
                .collect();
            let mut payload = Vec::new();
            // G.711 encodes any length; the 20 ms encoders get 20 ms.
            enc.encode(&pcm, &mut payload).expect("encode");
            let mut wire = Vec::new();
            s.write(pt, &payload, clock as u32, &mut wire);
            wire
        })
        .collect()
}

fn run(t: &mut Transcoder, packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for p in packets {
        t.push(p, &mut |w| out.push(w.to_vec()));
    }
    out
}

/// The share of `freq` in the decoded output (`csps_tests::audio::tone_share`: near 1 for a
/// clean tone), after the codecs' and resampler's start-up.
fn tone_share(codec: Codec, packets: &[Vec<u8>], freq: f32) -> f32 {
    let mut dec = Decoder::new(codec).expect("decoder");
    let mut pcm = Vec::new();
    for p in packets {
        let r = parse(p).expect("rtp");
        dec.decode(r.payload, &mut pcm).expect("decode");
    }
    let pcm = csps_tests::audio::Pcm {
        rate: dec.rate(),
        samples: pcm
            .iter()
            .skip(pcm.len() / 5)
            .map(|&s| f32::from(s) / 32768.0)
            .collect(),
    };
    csps_tests::audio::tone_share(&pcm, freq)
}

fn headers(packets: &[Vec<u8>]) -> Vec<Received<'_>> {
    packets.iter().map(|p| parse(p).expect("rtp")).collect()
}

#[test]
fn pcmu_to_g722_carries_the_tone_in_20_ms_packets_on_the_g722_clock() {
    let input = tone_packets(Codec::Pcmu, 0, 1000.0, 50, 20);
    let mut t =
        Transcoder::new(fmt(Codec::Pcmu, 0, None), fmt(Codec::G722, 9, None)).expect("transcoder");
    let out = run(&mut t, &input);
    assert_eq!(out.len(), 50);
    let h = headers(&out);
    assert!(
        h.iter()
            .all(|r| r.payload_type == 9 && r.payload.len() == 160)
    );
    assert!(h[0].marker && !h[1].marker);
    assert_eq!(
        h[0].ssrc,
        parse(&input[0]).expect("rtp").ssrc,
        "a translator keeps it"
    );
    for w in h.windows(2) {
        assert_eq!(w[1].sequence, w[0].sequence.wrapping_add(1));
        // G722/8000: 160 ticks a 20 ms frame, though it samples at 16 kHz.
        assert_eq!(w[1].timestamp, w[0].timestamp.wrapping_add(160));
    }
    let share = tone_share(Codec::G722, &out, 1000.0);
    assert!(share > 0.8, "1 kHz share {share}");
    assert_eq!(t.counters().decoded, 50);
}

#[test]
fn g722_to_opus_and_back_keeps_the_tone() {
    let input = tone_packets(Codec::G722, 9, 700.0, 50, 20);
    let mut to_opus =
        Transcoder::new(fmt(Codec::G722, 9, None), fmt(Codec::Opus, 111, None)).expect("t");
    let opus = run(&mut to_opus, &input);
    assert_eq!(opus.len(), 50);
    let h = headers(&opus);
    assert_eq!(
        h[1].timestamp,
        h[0].timestamp.wrapping_add(960),
        "48 kHz clock"
    );
    let mut back =
        Transcoder::new(fmt(Codec::Opus, 111, None), fmt(Codec::Pcma, 8, None)).expect("t");
    let pcma = run(&mut back, &opus);
    assert_eq!(pcma.len(), 50);
    let share = tone_share(Codec::Pcma, &pcma, 700.0);
    assert!(share > 0.6, "700 Hz share after two transcodings {share}");
}

#[test]
fn thirty_ms_packets_become_20_ms_frames() {
    let input = tone_packets(Codec::Pcmu, 0, 500.0, 40, 30);
    let mut t = Transcoder::new(fmt(Codec::Pcmu, 0, None), fmt(Codec::Pcma, 8, None)).expect("t");
    let out = run(&mut t, &input);
    assert_eq!(out.len(), 60, "1200 ms in 20 ms frames");
    assert!(headers(&out).iter().all(|r| r.payload.len() == 160));
}

#[test]
fn reordered_packets_are_played_in_order_and_a_lost_one_is_concealed() {
    let mut input = tone_packets(Codec::Pcmu, 0, 1000.0, 20, 20);
    input.swap(5, 6);
    input.remove(12);
    let mut t = Transcoder::new(fmt(Codec::Pcmu, 0, None), fmt(Codec::G722, 9, None)).expect("t");
    let out = run(&mut t, &input);
    let c = t.counters();
    assert_eq!((c.decoded, c.concealed), (19, 1));
    // The last REORDER_DEPTH packets after the gap went out once it was given up; all 20
    // frames are there, numbered without a gap.
    assert_eq!(out.len(), 20);
    let h = headers(&out);
    assert!(
        h.windows(2)
            .all(|w| w[1].sequence == w[0].sequence.wrapping_add(1))
    );
    // A duplicate and a packet older than what was played are dropped.
    let again = run(&mut t, &input[3..4]);
    assert!(again.is_empty());
    assert_eq!(t.counters().dropped, 1);
}

#[test]
fn a_silence_gap_moves_the_outgoing_timestamp_on_and_marks_the_next_packet() {
    let input = tone_packets(Codec::Pcmu, 0, 1000.0, 10, 20);
    // The phone stops for 200 ms (VAD) without skipping sequence numbers.
    let mut later = input[5..].to_vec();
    for p in &mut later {
        let ts = u32::from_be_bytes([p[4], p[5], p[6], p[7]]).wrapping_add(1600);
        p[4..8].copy_from_slice(&ts.to_be_bytes());
    }
    let mut t = Transcoder::new(fmt(Codec::Pcmu, 0, None), fmt(Codec::Opus, 111, None)).expect("t");
    let mut out = run(&mut t, &input[..5]);
    out.extend(run(&mut t, &later));
    let h = headers(&out);
    assert_eq!(h.len(), 10);
    assert_eq!(h[5].timestamp, h[4].timestamp.wrapping_add(960 + 9600));
    assert!(h[5].marker);
}

#[test]
fn telephone_events_cross_with_the_other_legs_type_and_clock() {
    let mut s = RtpSender::new();
    let mut packets = Vec::new();
    // Digit 5, three packets of one event (durations 160, 320, 480 at 8 kHz), the last ending it.
    for (i, d) in [160u16, 320, 480].into_iter().enumerate() {
        let end = if i == 2 { 0x80 } else { 0 };
        let body = [5, end | 10, (d >> 8) as u8, d as u8];
        let mut w = Vec::new();
        s.write_at(101, &body, 1000, &mut w);
        packets.push(w);
    }
    let mut t = Transcoder::new(
        fmt(Codec::Pcmu, 0, Some((101, 8000))),
        fmt(Codec::Opus, 111, Some((110, 48000))),
    )
    .expect("t");
    let out = run(&mut t, &packets);
    let h = headers(&out);
    assert_eq!(h.len(), 3);
    assert!(h.iter().all(|r| r.payload_type == 110));
    assert!(h.iter().all(|r| r.timestamp == h[0].timestamp), "one event");
    let durations: Vec<u16> = h
        .iter()
        .map(|r| u16::from_be_bytes([r.payload[2], r.payload[3]]))
        .collect();
    assert_eq!(durations, [960, 1920, 2880]);
    assert_eq!(h[2].payload[1] & 0x80, 0x80, "end bit kept");
    // A leg without telephone-event gets none.
    let mut none = Transcoder::new(
        fmt(Codec::Pcmu, 0, Some((101, 8000))),
        fmt(Codec::G722, 9, None),
    )
    .expect("t");
    assert!(run(&mut none, &packets).is_empty());
}

#[test]
fn garbage_and_foreign_payload_types_are_dropped_not_panicked_on() {
    let mut t = Transcoder::new(fmt(Codec::Opus, 111, None), fmt(Codec::Pcmu, 0, None)).expect("t");
    let mut s = RtpSender::new();
    let mut junk = Vec::new();
    for (i, len) in [0usize, 1, 3, 7, 40, 200, 1200].into_iter().enumerate() {
        let body: Vec<u8> = (0..len).map(|k| (k * 37 + i * 11) as u8).collect();
        let mut w = Vec::new();
        s.write(111, &body, 960, &mut w);
        junk.push(w);
    }
    let mut wrong = Vec::new();
    s.write(96, &[1, 2, 3], 960, &mut wrong);
    junk.push(wrong);
    junk.push(vec![0x80]);
    junk.push(b"not rtp at all".to_vec());
    let out = run(&mut t, &junk);
    // Whatever the decoder made of the noise, what goes out is well-formed PCMU.
    assert!(headers(&out).iter().all(|r| r.payload_type == 0));
    assert!(t.counters().dropped >= 3);
}
