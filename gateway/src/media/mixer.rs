//! The conference mixer, sans-IO: N participants, each with its own codec. A received RTP packet
//! is decoded, brought to the mixing rate (16 kHz, wide-band: what G.722 and the gateway's Opus
//! carry) and queued as 20 ms frames; every 20 ms [`Mixer::tick`] takes one frame per participant
//! (concealment when none came), sums them, and gives each participant the sum minus its own
//! frame (scaled down when it would overflow 16 bits), encoded in its codec and numbered by its
//! own [`RtpSender`]: everyone hears all the others and not themselves. The clock and the
//! sockets are the caller's (the conference room task).
//!
//! The jitter queue is deliberately small: it fills to [`PREFILL`] frames before the mix takes
//! from it, and a participant's frames wait at most [`MAX_QUEUED`] ticks, older ones are dropped,
//! so a sender whose clock runs fast or a burst after a network stall costs at most that much
//! delay rather than growing it.

use std::collections::VecDeque;

use csps_sip::sdp::Codec;

use super::codec::{CodecError, Decoder, Encoder, Resampler, frame_samples, rtp_clock};
use super::rtp::{self, RtpSender};

/// The rate the mix is made at.
pub const MIX_RATE: u32 = 16_000;

/// Frames a participant may have waiting before the oldest is dropped.
pub const MAX_QUEUED: usize = 4;

/// Frames a participant's queue fills to before the mix takes from it (at the start and after
/// it ran dry): packets arrive on the phone's clock and the mix runs on the gateway's timer, so
/// one frame of slack keeps a packet landing just after a tick from costing a concealed frame
/// every other tick.
pub const PREFILL: usize = 2;

/// Identifies a participant within one mixer (the room's own numbering).
pub type ParticipantId = u32;

/// One participant's codec state, jitter queue and outgoing stream.
struct Participant {
    id: ParticipantId,
    payload_type: u8,
    /// RTP clock ticks in one frame (160 for G.711 and G.722, 960 for Opus).
    frame_ticks: u32,
    decoder: Decoder,
    encoder: Encoder,
    /// Decoder rate → mix rate (`None` when equal).
    up: Option<Resampler>,
    /// Mix rate → encoder rate.
    down: Option<Resampler>,
    /// Decoded samples at the decoder rate not yet a whole frame (a 30 ms ptime, say).
    pending: Vec<i16>,
    /// Whole frames at the mix rate, oldest first.
    queue: VecDeque<Vec<i16>>,
    /// True once the queue reached [`PREFILL`]; false again when it runs dry.
    primed: bool,
    /// What this participant contributes to the current tick.
    current: Vec<i16>,
    /// Ticks in a row with no frame: the first is concealed by the last frame faded, then
    /// silence.
    missing: u32,
    sender: RtpSender,
}

/// Mixes a conference: see the module documentation.
pub struct Mixer {
    parts: Vec<Participant>,
    sum: Vec<i32>,
    mixed: Vec<i16>,
    resampled: Vec<i16>,
    decoded: Vec<i16>,
    payload: Vec<u8>,
    packet: Vec<u8>,
}

impl Default for Mixer {
    fn default() -> Self {
        Mixer::new()
    }
}

impl Mixer {
    /// An empty mixer.
    pub fn new() -> Mixer {
        let n = frame_samples(MIX_RATE);
        Mixer {
            parts: Vec::new(),
            sum: vec![0; n],
            mixed: Vec::with_capacity(n),
            resampled: Vec::with_capacity(n),
            decoded: Vec::new(),
            payload: Vec::new(),
            packet: Vec::new(),
        }
    }

    /// Adds participant `id` sending and receiving `codec` under `payload_type` (and, for Opus,
    /// wanting at most `max_bitrate` bit/s, its `maxaveragebitrate`); an `id` already present is
    /// replaced (a re-INVITE that changed the codec).
    pub fn add(
        &mut self,
        id: ParticipantId,
        codec: Codec,
        payload_type: u8,
        max_bitrate: Option<u32>,
    ) -> Result<(), CodecError> {
        let decoder = Decoder::new(codec)?;
        let encoder = Encoder::for_receiver(codec, max_bitrate)?;
        let clock = rtp_clock(codec).ok_or(CodecError::Unsupported(codec))?;
        let p = Participant {
            id,
            payload_type,
            frame_ticks: clock * super::codec::FRAME_MS / 1000,
            up: Resampler::new(decoder.rate(), MIX_RATE),
            down: Resampler::new(MIX_RATE, encoder.rate()),
            decoder,
            encoder,
            pending: Vec::new(),
            queue: VecDeque::with_capacity(MAX_QUEUED + 1),
            primed: false,
            current: vec![0; frame_samples(MIX_RATE)],
            missing: 0,
            sender: RtpSender::new(),
        };
        self.remove(id);
        self.parts.push(p);
        Ok(())
    }

    /// Removes participant `id` (gone, or its codec changes).
    pub fn remove(&mut self, id: ParticipantId) {
        self.parts.retain(|p| p.id != id);
    }

    /// Number of participants.
    pub fn len(&self) -> usize {
        self.parts.len()
    }

    /// True when nobody is in the mix.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// One RTP packet from participant `id`. Packets of another payload type (telephone-event,
    /// comfort noise) and undecodable payloads are dropped; false when the packet was not used.
    pub fn receive(&mut self, id: ParticipantId, packet: &[u8]) -> bool {
        let Some(p) = self.parts.iter_mut().find(|p| p.id == id) else {
            return false;
        };
        let Ok(r) = rtp::parse(packet) else {
            return false;
        };
        if r.payload_type != p.payload_type {
            return false;
        }
        self.decoded.clear();
        if p.decoder.decode(r.payload, &mut self.decoded).is_err() {
            return false;
        }
        p.pending.extend_from_slice(&self.decoded);
        let n = frame_samples(p.decoder.rate());
        while p.pending.len() >= n {
            let mut frame = Vec::with_capacity(frame_samples(MIX_RATE));
            match p.up.as_mut() {
                Some(r) => r.process(&p.pending[..n], &mut frame),
                None => frame.extend_from_slice(&p.pending[..n]),
            }
            p.pending.drain(..n);
            if p.queue.len() >= MAX_QUEUED {
                p.queue.pop_front();
            }
            p.queue.push_back(frame);
        }
        true
    }

    /// One 20 ms tick: mixes and hands each participant's packet to `send(id, packet)`.
    pub fn tick(&mut self, mut send: impl FnMut(ParticipantId, &[u8])) {
        let n = self.sum.len();
        self.sum.iter_mut().for_each(|s| *s = 0);
        for p in &mut self.parts {
            p.primed |= p.queue.len() >= PREFILL;
            let next = if p.primed { p.queue.pop_front() } else { None };
            p.primed &= next.is_some();
            match next {
                Some(f) => {
                    p.current.clear();
                    p.current.extend_from_slice(&f);
                    p.current.resize(n, 0);
                    p.missing = 0;
                }
                None => {
                    p.missing += 1;
                    // Fade the last frame once (a lost packet), then silence (not talking,
                    // on hold, gone quiet).
                    if p.missing == 1 {
                        p.current.iter_mut().for_each(|s| *s /= 2);
                    } else {
                        p.current.fill(0);
                    }
                }
            }
            for (s, &x) in self.sum.iter_mut().zip(&p.current) {
                *s += i32::from(x);
            }
        }
        for p in &mut self.parts {
            // Several loud talkers overflow 16 bits: scale that frame down to fit rather than
            // clip it, since clipping adds tones nobody sent (intermodulation), the talker's
            // own voice among them.
            let peak = self
                .sum
                .iter()
                .zip(&p.current)
                .map(|(&s, &own)| (s - i32::from(own)).unsigned_abs())
                .max()
                .unwrap_or(0);
            let (num, den) = if peak > 32_767 {
                (32_767_i64, i64::from(peak))
            } else {
                (1, 1)
            };
            self.mixed.clear();
            self.mixed
                .extend(self.sum.iter().zip(&p.current).map(|(&s, &own)| {
                    (i64::from(s - i32::from(own)) * num / den).clamp(-32_768, 32_767) as i16
                }));
            let frame = match p.down.as_mut() {
                Some(r) => {
                    self.resampled.clear();
                    r.process(&self.mixed, &mut self.resampled);
                    &self.resampled
                }
                None => &self.mixed,
            };
            self.payload.clear();
            if p.encoder.encode(frame, &mut self.payload).is_err() {
                p.sender.skip(p.frame_ticks);
                continue;
            }
            self.packet.clear();
            p.sender.write(
                p.payload_type,
                &self.payload,
                p.frame_ticks,
                &mut self.packet,
            );
            send(p.id, &self.packet);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 20 ms frames of a sine at `freq` and `rate` (amplitude `level` of full scale),
    /// continuing phase from frame `k`.
    fn tone(freq: f32, rate: u32, k: usize, level: f32) -> Vec<i16> {
        let n = frame_samples(rate);
        (0..n)
            .map(|i| {
                let t = (k * n + i) as f32 / rate as f32;
                (level * 32767.0 * (std::f32::consts::TAU * freq * t).sin()) as i16
            })
            .collect()
    }

    /// The share of `samples`' energy at `freq` (≈1 for a pure tone there).
    fn share(samples: &[f32], rate: u32, freq: f32) -> f32 {
        let pcm = csps_tests::audio::Pcm {
            rate,
            samples: samples.to_vec(),
        };
        csps_tests::audio::tone_share(&pcm, freq)
    }

    /// Runs `codecs.len()` participants, participant `i` sending a tone at `freqs[i]` in its
    /// codec, and returns what each one decodes of what it gets back.
    fn conference(codecs: &[Codec], freqs: &[f32], level: f32) -> Vec<(u32, Vec<f32>)> {
        let mut mixer = Mixer::new();
        let mut enc: Vec<_> = codecs.iter().map(|&c| Encoder::new(c).unwrap()).collect();
        let mut dec: Vec<_> = codecs.iter().map(|&c| Decoder::new(c).unwrap()).collect();
        let mut senders: Vec<_> = codecs.iter().map(|_| RtpSender::new()).collect();
        for (i, &c) in codecs.iter().enumerate() {
            mixer.add(i as u32, c, pt(c), None).unwrap();
        }
        let mut heard: Vec<Vec<i16>> = vec![Vec::new(); codecs.len()];
        for k in 0..50 {
            for (i, &c) in codecs.iter().enumerate() {
                let mut payload = Vec::new();
                let pcm = tone(freqs[i], enc[i].rate(), k, level);
                enc[i].encode(&pcm, &mut payload).unwrap();
                let mut packet = Vec::new();
                senders[i].write(pt(c), &payload, 160, &mut packet);
                assert!(mixer.receive(i as u32, &packet));
            }
            mixer.tick(|id, packet| {
                let r = rtp::parse(packet).unwrap();
                let i = id as usize;
                assert_eq!(r.payload_type, pt(codecs[i]));
                dec[i].decode(r.payload, &mut heard[i]).unwrap();
            });
        }
        heard
            .into_iter()
            .zip(&dec)
            // The first 100 ms hold the resamplers' and codecs' start-up.
            .map(|(h, d)| {
                let skip = frame_samples(d.rate()) * 5;
                (
                    d.rate(),
                    h[skip..].iter().map(|&s| f32::from(s) / 32768.0).collect(),
                )
            })
            .collect()
    }

    fn pt(c: Codec) -> u8 {
        match c {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
            Codec::G722 => 9,
            _ => 111,
        }
    }

    fn check(codecs: &[Codec], freqs: &[f32], level: f32) {
        let heard = conference(codecs, freqs, level);
        let others = (freqs.len() - 1) as f32;
        for (i, (rate, h)) in heard.iter().enumerate() {
            for (j, &f) in freqs.iter().enumerate() {
                let s = share(h, *rate, f);
                if i == j {
                    assert!(s < 0.005, "participant {i} hears itself: {s}");
                } else {
                    // Each of the others carries about 1/others of the energy.
                    assert!(
                        s > 0.4 / others,
                        "participant {i} does not hear {j} ({f} Hz): {s}"
                    );
                }
            }
        }
    }

    #[test]
    fn three_parties_each_hear_the_other_two_and_not_themselves() {
        check(
            &[Codec::Pcmu, Codec::G722, Codec::Pcma],
            &[440.0, 1000.0, 1800.0],
            0.15,
        );
    }

    #[test]
    fn eight_parties_each_hear_the_seven_others() {
        let codecs = [
            Codec::Pcmu,
            Codec::G722,
            Codec::Pcma,
            Codec::G722,
            Codec::Pcmu,
            Codec::G722,
            Codec::Pcma,
            Codec::Pcmu,
        ];
        let freqs = [350.0, 600.0, 850.0, 1100.0, 1450.0, 1750.0, 2150.0, 2600.0];
        check(&codecs, &freqs, 0.15);
        // Seven loud talkers overflow 16 bits: scaled down, not clipped, so nobody hears the
        // intermodulation (their own tone among it).
        check(&codecs, &freqs, 0.6);
    }

    #[test]
    fn a_silent_or_missing_participant_adds_nothing_and_junk_is_dropped() {
        let mut m = Mixer::new();
        m.add(1, Codec::Pcmu, 0, None).unwrap();
        m.add(2, Codec::Pcmu, 0, None).unwrap();
        assert!(!m.receive(1, b"not rtp"));
        assert!(!m.receive(3, &[0x80, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0xff]));
        let mut dtmf = Vec::new();
        RtpSender::new().write(101, &[1, 0, 0, 160], 160, &mut dtmf);
        assert!(!m.receive(1, &dtmf), "telephone-event is not mixed");
        let mut sent = Vec::new();
        m.tick(|id, p| sent.push((id, p.len())));
        assert_eq!(sent, vec![(1, 12 + 160), (2, 12 + 160)]);
        m.remove(1);
        assert_eq!(m.len(), 1);
        assert!(Mixer::new().is_empty());
    }

    #[test]
    fn an_opus_participant_capped_below_64_kbit_gets_silk_and_the_others_celt() {
        let mut m = Mixer::new();
        m.add(1, Codec::Opus, 111, Some(24_000)).unwrap();
        m.add(2, Codec::Opus, 111, None).unwrap();
        m.add(3, Codec::Pcmu, 0, None).unwrap();
        let mut configs = Vec::new();
        for k in 0..5 {
            let mut payload = Vec::new();
            Encoder::new(Codec::Pcmu)
                .unwrap()
                .encode(&tone(440.0, 8000, k, 0.3), &mut payload)
                .unwrap();
            let mut packet = Vec::new();
            RtpSender::new().write(0, &payload, 160, &mut packet);
            m.receive(3, &packet);
            m.tick(|id, p| {
                let r = rtp::parse(p).unwrap();
                if id != 3 && !r.payload.is_empty() {
                    // RFC 6716 §3.1: the TOC's configuration, 0–11 SILK, 16–31 CELT.
                    configs.push((id, r.payload[0] >> 3));
                }
            });
        }
        assert!(configs.iter().any(|&(id, _)| id == 1), "{configs:?}");
        for (id, config) in configs {
            match id {
                1 => assert!(config < 12, "capped: SILK, got {config}"),
                _ => assert!(config >= 16, "uncapped: CELT, got {config}"),
            }
        }
    }
}
