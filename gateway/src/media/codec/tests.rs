//! Round trips of sine tones through each codec and the resampler: the tone's frequency survives
//! (Goertzel power at the tone dominates neighbouring bins), its energy stays within bounds, and
//! the band limits hold (G.722 carries 6 kHz, G.711 after 16→8 kHz resampling does not).

use super::*;

/// A sine of `freq` Hz at `rate`, amplitude `amp`, `n` samples starting at sample `start`.
pub(crate) fn sine(freq: f64, rate: u32, amp: f64, start: usize, n: usize) -> Vec<i16> {
    (start..start + n)
        .map(|i| {
            (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin()) as i16
        })
        .collect()
}

/// Goertzel power of `freq` in `x` (normalised by length).
pub(crate) fn goertzel(x: &[i16], freq: f64, rate: u32) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / f64::from(rate);
    let c = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &v in x {
        let s0 = f64::from(v) + c * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    (s1 * s1 + s2 * s2 - c * s1 * s2) / (x.len() as f64).powi(2)
}

/// Mean square of `x`.
pub(crate) fn energy(x: &[i16]) -> f64 {
    x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len().max(1) as f64
}

/// True when `freq` dominates `x`: its Goertzel power is ≥ 10× that at ±40 % of it.
pub(crate) fn dominant(x: &[i16], freq: f64, rate: u32) -> bool {
    let p = goertzel(x, freq, rate);
    p > 10.0 * goertzel(x, freq * 0.6, rate) && p > 10.0 * goertzel(x, freq * 1.4, rate)
}

/// Encodes and decodes `frames` 20 ms frames of a tone through `codec`, returning the decoded
/// PCM after the first 5 frames (codec warm-up) and the payload sizes.
fn round_trip(codec: Codec, freq: f64, frames: usize) -> (Vec<i16>, Vec<usize>) {
    let mut enc = Encoder::new(codec).expect("encoder");
    let mut dec = Decoder::new(codec).expect("decoder");
    let rate = enc.rate();
    let n = frame_samples(rate);
    let (mut out, mut sizes) = (Vec::new(), Vec::new());
    for f in 0..frames {
        let pcm = sine(freq, rate, 8000.0, f * n, n);
        let mut payload = Vec::new();
        enc.encode(&pcm, &mut payload).expect("encode");
        sizes.push(payload.len());
        let mut decoded = Vec::new();
        dec.decode(&payload, &mut decoded).expect("decode");
        assert_eq!(decoded.len(), n, "{codec:?} frame {f}");
        if f >= 5 {
            out.extend(decoded);
        }
    }
    (out, sizes)
}

#[test]
fn g711_round_trip_keeps_a_1khz_tone() {
    for codec in [Codec::Pcmu, Codec::Pcma] {
        let (out, sizes) = round_trip(codec, 1000.0, 25);
        assert!(sizes.iter().all(|&s| s == 160), "{codec:?}: {sizes:?}");
        assert!(dominant(&out, 1000.0, 8000), "{codec:?}");
        // Amplitude 8000 sine: mean square 32e6; G.711 keeps it within a few percent.
        let e = energy(&out);
        assert!((0.9 * 32e6..1.1 * 32e6).contains(&e), "{codec:?}: {e}");
    }
}

#[test]
fn g722_round_trip_keeps_wideband_content() {
    // 6 kHz exists only in wide-band audio (above G.711's 4 kHz Nyquist limit).
    for freq in [1000.0, 6000.0] {
        let (out, sizes) = round_trip(Codec::G722, freq, 25);
        assert!(sizes.iter().all(|&s| s == 160), "{sizes:?}");
        assert!(dominant(&out, freq, 16000), "{freq}");
        let e = energy(&out);
        assert!((0.5 * 32e6..1.5 * 32e6).contains(&e), "{freq}: {e}");
    }
}

#[test]
fn opus_round_trip_keeps_a_tone_at_its_bit_rate() {
    for freq in [440.0, 3000.0] {
        let (out, sizes) = round_trip(Codec::Opus, freq, 50);
        // CELT at 64 kbit/s: about 160 bytes a frame.
        assert!(sizes.iter().all(|&s| (140..=180).contains(&s)), "{sizes:?}");
        assert!(dominant(&out, freq, OPUS_RATE), "{freq}");
        let e = energy(&out);
        assert!((0.3 * 32e6..2.0 * 32e6).contains(&e), "{freq}: {e}");
    }
}

#[test]
fn resampler_keeps_frequency_and_frame_size() {
    for (from, to, freq) in [
        (8000, 16000, 1000.0),
        (16000, 8000, 1000.0),
        (16000, 48000, 2000.0),
        (48000, 16000, 2000.0),
        (8000, 48000, 700.0),
    ] {
        let mut r = Resampler::new(from, to).expect("resampler");
        let (n_in, n_out) = (frame_samples(from), frame_samples(to));
        let mut out = Vec::new();
        for f in 0..30 {
            let mut frame = Vec::new();
            r.process(&sine(freq, from, 8000.0, f * n_in, n_in), &mut frame);
            assert_eq!(frame.len(), n_out, "{from}->{to}");
            if f >= 5 {
                out.extend(frame);
            }
        }
        assert!(dominant(&out, freq, to), "{from}->{to}");
        let e = energy(&out);
        assert!((0.8 * 32e6..1.2 * 32e6).contains(&e), "{from}->{to}: {e}");
    }
    assert!(Resampler::new(8000, 8000).is_none());
}

#[test]
fn downsampling_to_g711_cuts_above_4khz() {
    // A 6 kHz tone at 16 kHz, resampled to 8 kHz for a G.711 leg, must not alias back in
    // (it would reappear at 2 kHz): the anti-aliasing filter removes it.
    let mut r = Resampler::new(16000, 8000).expect("resampler");
    let mut enc = Encoder::new(Codec::Pcmu).expect("enc");
    let mut dec = Decoder::new(Codec::Pcmu).expect("dec");
    let mut out = Vec::new();
    for f in 0..30 {
        let mut frame = Vec::new();
        r.process(&sine(6000.0, 16000, 8000.0, f * 320, 320), &mut frame);
        let mut payload = Vec::new();
        enc.encode(&frame, &mut payload).expect("encode");
        if f >= 5 {
            dec.decode(&payload, &mut out).expect("decode");
        }
    }
    let e = energy(&out);
    assert!(e < 0.01 * 32e6, "6 kHz leaked through as {e}");
    // The same path keeps a 1 kHz tone (the filter is not just muting everything).
    let mut r = Resampler::new(16000, 8000).expect("resampler");
    let mut out = Vec::new();
    for f in 0..30 {
        r.process(&sine(1000.0, 16000, 8000.0, f * 320, 320), &mut out);
    }
    assert!(energy(&out[1600..]) > 0.8 * 32e6);
}

#[test]
fn garbage_and_empty_payloads_are_errors_not_panics() {
    let mut rng = 0x1234_5678u32;
    for codec in [Codec::Pcmu, Codec::Pcma, Codec::G722, Codec::Opus] {
        let mut dec = Decoder::new(codec).expect("decoder");
        assert_eq!(
            dec.decode(&[], &mut Vec::new()),
            Err(CodecError::Invalid("empty"))
        );
        for len in [1usize, 2, 3, 7, 60, 161, 400, 1500] {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 17;
                    rng ^= rng << 5;
                    rng as u8
                })
                .collect();
            // Any result is fine as long as it returns; whatever it decoded is bounded.
            let mut out = Vec::new();
            let _ = dec.decode(&junk, &mut out);
            assert!(out.len() <= 2 * 1500 + 5760, "{codec:?}");
        }
    }
    assert!(Decoder::new(Codec::TelephoneEvent).is_err());
    assert!(Encoder::new(Codec::Other).is_err());
}

#[test]
fn concealment_fills_a_frame() {
    let mut dec = Decoder::new(Codec::Pcmu).expect("dec");
    let last = vec![1000i16; 160];
    let mut out = Vec::new();
    dec.conceal(&last, 160, &mut out);
    assert_eq!(out, vec![500i16; 160]);
    let mut out = Vec::new();
    dec.conceal(&[], 160, &mut out);
    assert_eq!(out, vec![0i16; 160]);
    // Opus PLC continues a tone it has heard.
    let (mut enc, mut dec) = (
        Encoder::new(Codec::Opus).expect("enc"),
        Decoder::new(Codec::Opus).expect("dec"),
    );
    for f in 0..20 {
        let mut payload = Vec::new();
        enc.encode(&sine(440.0, OPUS_RATE, 8000.0, f * 320, 320), &mut payload)
            .expect("encode");
        dec.decode(&payload, &mut Vec::new()).expect("decode");
    }
    let mut out = Vec::new();
    dec.conceal(&[], 320, &mut out);
    assert_eq!(out.len(), 320);
    assert!(energy(&out) > 0.01 * 32e6, "PLC output silent");
}

/// The configuration a packet's TOC byte names (RFC 6716 §3.1: 0–11 SILK, 12–15 hybrid, 16–31
/// CELT, each with its bandwidth and frame size).
fn toc_config(payload: &[u8]) -> u8 {
    payload[0] >> 3
}

/// Bit/s of `frames` 20 ms frames of speech-like signal through `enc`, and every TOC config seen.
fn opus_rate_and_configs(enc: &mut Encoder, frames: usize) -> (f64, Vec<u8>) {
    let (mut bytes, mut configs) = (0usize, Vec::new());
    for pcm in speechlike(OPUS_RATE, frames) {
        let mut payload = Vec::new();
        enc.encode(&pcm, &mut payload).expect("encode");
        bytes += payload.len();
        let c = toc_config(&payload);
        if !configs.contains(&c) {
            configs.push(c);
        }
    }
    (bytes as f64 * 8.0 / (frames as f64 * 0.02), configs)
}

#[test]
fn opus_goes_out_as_wideband_celt_at_64_kbit_unless_the_receiver_caps_it_then_as_silk() {
    assert_eq!(OpusProfile::for_receiver(None), OpusProfile::Celt);
    assert_eq!(OpusProfile::for_receiver(Some(64_000)), OpusProfile::Celt);
    assert_eq!(OpusProfile::for_receiver(Some(510_000)), OpusProfile::Celt);
    assert_eq!(
        OpusProfile::for_receiver(Some(63_999)),
        OpusProfile::Silk(32_000)
    );
    assert_eq!(
        OpusProfile::for_receiver(Some(20_000)),
        OpusProfile::Silk(20_000)
    );
    // Below Opus's floor the floor is what can be done.
    assert_eq!(
        OpusProfile::for_receiver(Some(100)),
        OpusProfile::Silk(6_000)
    );

    // CELT-only, wide-band, 20 ms: configuration 23 (RFC 6716 Table 2), near 64 kbit/s.
    let (rate, configs) = opus_rate_and_configs(&mut Encoder::new(Codec::Opus).expect("enc"), 250);
    assert_eq!(configs, [23], "CELT WB 20 ms only");
    assert!((56_000.0..=68_000.0).contains(&rate), "{rate} bit/s");

    // A receiver capped at 20 kbit/s gets SILK wide-band 20 ms (configuration 9), under the cap.
    let mut enc = Encoder::for_receiver(Codec::Opus, Some(20_000)).expect("enc");
    let (rate, configs) = opus_rate_and_configs(&mut enc, 250);
    assert_eq!(configs, [9], "SILK WB 20 ms only");
    assert!(rate <= 21_000.0, "{rate} bit/s");
}
