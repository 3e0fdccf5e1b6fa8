//! Transcoding of one direction of a call, sans-IO: RTP packets of one leg's codec in, RTP packets
//! of the other leg's codec out. The relay (`media::relay`) owns one per direction when the legs
//! negotiated different codecs; with the same codec it forwards packets unchanged and this module
//! is not involved.
//!
//! A packet goes through a reorder buffer (the jitter buffer of a decoded leg: packets are
//! released in sequence order at once, and only a gap holds later packets back, for at most
//! [`REORDER_DEPTH`] packets, before the missing one counts as lost and is concealed), the
//! decoder, the resampler when the rates differ, and the encoder one 20 ms frame at a time (a
//! phone that sends 30 ms packets still gets 20 ms frames onwards). The outgoing stream keeps the
//! sender's SSRC (a translator, RFC 3550 §7.1) with the gateway's own sequence numbers and
//! timestamps ([`RtpSender`]): the timestamps advance by what was encoded, and a silence gap
//! on the way in (no packets while the phone's VAD is quiet, RFC 3551 §4.1) moves them on by the
//! same time so the far end's playout keeps its timing. RFC 4733 telephone-events are carried
//! across with the other leg's payload type, their timestamp on the outgoing timeline and their
//! duration in the other leg's clock; a leg that did not accept telephone-event gets none.

use std::collections::BTreeMap;

use csps_sip::sdp::Codec;

use super::codec::{Decoder, Encoder, Resampler, frame_samples, rtp_clock};
use super::rtp::{RtpSender, parse};

/// Packets held back behind a gap before the missing one is given up as lost.
pub const REORDER_DEPTH: usize = 3;

/// The longest run of lost packets that is concealed; a longer gap is a silence gap.
const MAX_CONCEALED: u16 = 5;

/// What one leg sends or receives: its audio codec and payload types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LegFormat {
    /// The audio codec the leg negotiated.
    pub codec: Codec,
    /// Its payload type on that leg.
    pub payload_type: u8,
    /// The telephone-event payload type and clock on that leg, when it accepted RFC 4733.
    pub telephone_event: Option<(u8, u32)>,
    /// The most Opus the leg wants to receive, in bit/s (its `maxaveragebitrate`), if it said.
    pub max_average_bitrate: Option<u32>,
}

/// Counters of one transcoded direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TranscodeCounters {
    /// Frames decoded from received packets.
    pub decoded: u64,
    /// Frames concealed for packets that never came.
    pub concealed: u64,
    /// Packets sent onwards (audio and telephone-event).
    pub sent: u64,
    /// Packets dropped: late, duplicate, undecodable or of a payload type the leg did not
    /// negotiate.
    pub dropped: u64,
}

/// One direction of a transcoded call.
pub struct Transcoder {
    input: LegFormat,
    output: LegFormat,
    decoder: Decoder,
    resampler: Option<Resampler>,
    encoder: Encoder,
    sender: RtpSender,
    /// The SSRC of the stream being received.
    ssrc: Option<u32>,
    /// Received packets waiting behind a gap, by extended sequence number.
    held: BTreeMap<u32, Vec<u8>>,
    /// The extended sequence number expected next (`None` before the first packet).
    expected: Option<u32>,
    /// The timestamp (input clock) the next audio packet is expected to carry.
    next_ts: Option<u32>,
    /// Input samples per input-clock tick ratio: decoded samples × this = input clock ticks.
    clock_per_sample: f64,
    /// Decoded PCM at the decoder's rate waiting to make up a frame.
    decoded: Vec<i16>,
    /// PCM at the encoder's rate waiting to make up a frame.
    pending: Vec<i16>,
    /// The last decoded frame (what G.711 and G.722 concealment repeats).
    last: Vec<i16>,
    /// Samples of one decoded packet (for concealment).
    packet_samples: usize,
    /// The telephone-event in progress: its input timestamp and outgoing timestamp.
    event: Option<(u32, u32)>,
    scratch: Vec<i16>,
    payload: Vec<u8>,
    counters: TranscodeCounters,
}

/// Why a direction cannot be transcoded.
pub use super::codec::CodecError;

impl Transcoder {
    /// A transcoder from what `input` sends to what `output` receives.
    pub fn new(input: LegFormat, output: LegFormat) -> Result<Transcoder, CodecError> {
        let decoder = Decoder::new(input.codec)?;
        let encoder = Encoder::for_receiver(output.codec, output.max_average_bitrate)?;
        let resampler = Resampler::new(decoder.rate(), encoder.rate());
        let in_clock = rtp_clock(input.codec).ok_or(CodecError::Unsupported(input.codec))?;
        Ok(Transcoder {
            clock_per_sample: f64::from(in_clock) / f64::from(decoder.rate()),
            packet_samples: frame_samples(decoder.rate()),
            input,
            output,
            decoder,
            resampler,
            encoder,
            sender: RtpSender::new(),
            ssrc: None,
            held: BTreeMap::new(),
            expected: None,
            next_ts: None,
            decoded: Vec::new(),
            pending: Vec::new(),
            last: Vec::new(),
            event: None,
            scratch: Vec::new(),
            payload: Vec::new(),
            counters: TranscodeCounters::default(),
        })
    }

    /// What this direction converts from and to.
    pub fn formats(&self) -> (LegFormat, LegFormat) {
        (self.input, self.output)
    }

    /// Counters so far.
    pub fn counters(&self) -> TranscodeCounters {
        self.counters
    }

    /// Takes one received RTP packet (already decrypted); every packet it releases onwards is
    /// handed to `emit`, ready to protect and send.
    pub fn push(&mut self, packet: &[u8], emit: &mut dyn FnMut(&[u8])) {
        let Ok(rtp) = parse(packet) else {
            self.counters.dropped += 1;
            return;
        };
        if self.ssrc != Some(rtp.ssrc) {
            // A new stream (the phone restarted its media): its numbering starts afresh. The
            // outgoing stream keeps the source's SSRC, as RFC 3550 §7.1 asks of a translator
            // (the far end's RTCP and a load generator's accounting name the same source).
            self.ssrc = Some(rtp.ssrc);
            self.sender.set_ssrc(rtp.ssrc);
            self.expected = None;
            self.next_ts = None;
            self.held.clear();
        }
        let ext = match self.expected {
            // Room below the first packet for one that was overtaken by it.
            None => 0x1_0000 | u32::from(rtp.sequence),
            Some(exp) => extend(exp, rtp.sequence),
        };
        let exp = *self.expected.get_or_insert(ext);
        if ext < exp || self.held.contains_key(&ext) {
            // Late (already concealed or played) or a duplicate.
            self.counters.dropped += 1;
            return;
        }
        self.held.insert(ext, packet.to_vec());
        self.release(emit);
    }

    /// Plays out what is in order; gives a gap up once [`REORDER_DEPTH`] packets wait behind it.
    fn release(&mut self, emit: &mut dyn FnMut(&[u8])) {
        loop {
            let Some(exp) = self.expected else { return };
            let Some((&first, _)) = self.held.first_key_value() else {
                return;
            };
            if first != exp {
                if self.held.len() <= REORDER_DEPTH {
                    return;
                }
                // The packets before `first` are lost: conceal a short run, skip a long one.
                let missing = first - exp;
                if missing <= u32::from(MAX_CONCEALED) {
                    for _ in 0..missing {
                        self.conceal(emit);
                    }
                }
                self.expected = Some(first);
                continue;
            }
            let Some(packet) = self.held.remove(&first) else {
                return;
            };
            self.expected = Some(first.wrapping_add(1));
            self.play(&packet, emit);
        }
    }

    /// Decodes one in-order packet and sends what it completes.
    fn play(&mut self, packet: &[u8], emit: &mut dyn FnMut(&[u8])) {
        let Ok(rtp) = parse(packet) else { return };
        if let Some((pt, _)) = self.input.telephone_event
            && rtp.payload_type == pt
        {
            self.event(rtp.timestamp, rtp.payload, emit);
            return;
        }
        if rtp.payload_type != self.input.payload_type {
            self.counters.dropped += 1;
            return;
        }
        self.event = None;
        // A timestamp ahead of the expected one with no packet missing: the phone was silent.
        if let Some(next) = self.next_ts {
            let gap = rtp.timestamp.wrapping_sub(next);
            if gap > 0 && gap < 0x8000_0000 {
                let out_clock = rtp_clock(self.output.codec).unwrap_or(8_000);
                let in_clock = rtp_clock(self.input.codec).unwrap_or(8_000);
                let skipped = u64::from(gap) * u64::from(out_clock) / u64::from(in_clock);
                self.sender.skip(skipped as u32);
                self.decoded.clear();
                self.pending.clear();
            }
        }
        let start = self.decoded.len();
        if self.decoder.decode(rtp.payload, &mut self.decoded).is_err() {
            self.counters.dropped += 1;
            return;
        }
        let samples = self.decoded.len() - start;
        self.packet_samples = samples.max(1);
        self.counters.decoded += 1;
        let ticks = (samples as f64 * self.clock_per_sample).round() as u32;
        self.next_ts = Some(rtp.timestamp.wrapping_add(ticks));
        self.encode_ready(emit);
    }

    /// Fills in a lost packet and sends what it completes.
    fn conceal(&mut self, emit: &mut dyn FnMut(&[u8])) {
        let samples = self.packet_samples;
        self.decoder.conceal(&self.last, samples, &mut self.decoded);
        self.counters.concealed += 1;
        if let Some(ts) = self.next_ts.as_mut() {
            *ts = ts.wrapping_add((samples as f64 * self.clock_per_sample).round() as u32);
        }
        self.encode_ready(emit);
    }

    /// Encodes every whole 20 ms frame of decoded audio.
    fn encode_ready(&mut self, emit: &mut dyn FnMut(&[u8])) {
        let in_frame = frame_samples(self.decoder.rate());
        while self.decoded.len() >= in_frame {
            self.last.clear();
            self.last.extend(self.decoded.drain(..in_frame));
            match self.resampler.as_mut() {
                Some(r) => r.process(&self.last, &mut self.pending),
                None => self.pending.extend_from_slice(&self.last),
            }
        }
        let out_frame = frame_samples(self.encoder.rate());
        let duration = rtp_clock(self.output.codec).map_or(0, frame_samples) as u32;
        while self.pending.len() >= out_frame {
            self.scratch.clear();
            self.scratch.extend(self.pending.drain(..out_frame));
            self.payload.clear();
            if self
                .encoder
                .encode(&self.scratch, &mut self.payload)
                .is_err()
            {
                self.sender.skip(duration);
                continue;
            }
            let mut wire = Vec::with_capacity(12 + self.payload.len());
            self.sender
                .write(self.output.payload_type, &self.payload, duration, &mut wire);
            self.counters.sent += 1;
            emit(&wire);
        }
    }

    /// Carries one telephone-event packet across (RFC 4733 §2.5: one event keeps its timestamp;
    /// the duration counts in the event's clock).
    fn event(&mut self, ts: u32, payload: &[u8], emit: &mut dyn FnMut(&[u8])) {
        let (Some((out_pt, out_clock)), Some((_, in_clock))) =
            (self.output.telephone_event, self.input.telephone_event)
        else {
            self.counters.dropped += 1;
            return;
        };
        if payload.len() < 4 {
            self.counters.dropped += 1;
            return;
        }
        let out_ts = match self.event {
            Some((in_ts, out_ts)) if in_ts == ts => out_ts,
            _ => {
                let out_ts = self.sender.timestamp();
                self.event = Some((ts, out_ts));
                out_ts
            }
        };
        let mut body = payload[..4].to_vec();
        let duration = u64::from(u16::from_be_bytes([body[2], body[3]]));
        let scaled = (duration * u64::from(out_clock) / u64::from(in_clock.max(1))).min(0xffff);
        body[2..4].copy_from_slice(&(scaled as u16).to_be_bytes());
        let mut wire = Vec::with_capacity(16);
        self.sender.write_at(out_pt, &body, out_ts, &mut wire);
        self.counters.sent += 1;
        emit(&wire);
    }
}

/// The extended (32-bit, wrapping-aware) form of `seq` closest to `reference`.
fn extend(reference: u32, seq: u16) -> u32 {
    let cycle = reference & !0xffff;
    let candidates = [
        cycle.wrapping_sub(0x1_0000) | u32::from(seq),
        cycle | u32::from(seq),
        cycle.wrapping_add(0x1_0000) | u32::from(seq),
    ];
    candidates
        .into_iter()
        .min_by_key(|&c| (i64::from(c) - i64::from(reference)).unsigned_abs())
        .unwrap_or(u32::from(seq))
}

#[cfg(test)]
mod tests;
