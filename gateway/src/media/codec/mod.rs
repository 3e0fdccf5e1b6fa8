//! Audio codecs of the transcoding media core, sans-IO: each encodes or decodes one 20 ms frame of
//! mono 16-bit PCM at the codec's own sampling rate, and the resampler (`resample`) moves frames
//! between 8, 16 and 48 kHz. What RTP calls the clock of a codec is not always its sampling rate:
//! G.722 is `G722/8000` in SDP yet samples at 16 kHz (RFC 3551 §4.5.2), Opus is always
//! `opus/48000/2` (RFC 7587) whatever it codes inside. The transcoder (`media::transcode`) owns one
//! decoder, one resampler and one encoder per direction of a call.
//!
//! The codec implementations come from crates (see gateway/Cargo.toml for why these): G.711 and
//! G.722 from `audio-codec`, Opus from `opus-rs` (a pure-Rust port of libopus), resampling from
//! `rubato`.

pub mod resample;

use audio_codec::{Decoder as _, Encoder as _};
use csps_sip::sdp::Codec;

pub use resample::Resampler;

/// Milliseconds of audio in one frame (the ptime phones and Teams use).
pub const FRAME_MS: u32 = 20;

/// Opus sampling rate used inside the gateway (wide-band speech: what G.722 carries too).
pub const OPUS_RATE: u32 = 16_000;

/// The `a=fmtp` parameters of an Opus format the gateway offers (RFC 7587 §6.1): it decodes and
/// encodes at [`OPUS_RATE`], so a far end need not spend bits on audio above 8 kHz.
pub fn opus_fmtp() -> String {
    format!("maxplaybackrate={OPUS_RATE};sprop-maxcapturerate={OPUS_RATE}")
}

/// Why a payload could not be decoded or a frame encoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// The codec is not one the transcoder handles (telephone-event, unknown).
    #[error("codec {0:?} is not transcodable")]
    Unsupported(Codec),
    /// The payload is not a valid frame of the codec.
    #[error("invalid {0} payload")]
    Invalid(&'static str),
}

/// The sampling rate a codec codes at inside the gateway (G.722 at 16 kHz, Opus at
/// [`OPUS_RATE`]).
pub fn sample_rate(codec: Codec) -> Option<u32> {
    match codec {
        Codec::Pcmu | Codec::Pcma => Some(8_000),
        Codec::G722 => Some(16_000),
        Codec::Opus => Some(OPUS_RATE),
        _ => None,
    }
}

/// The RTP clock rate of a codec (RFC 3551 / RFC 7587), which RTP timestamps count in.
pub fn rtp_clock(codec: Codec) -> Option<u32> {
    match codec {
        Codec::Pcmu | Codec::Pcma | Codec::G722 => Some(8_000),
        Codec::Opus => Some(48_000),
        _ => None,
    }
}

/// Samples in one 20 ms frame at `rate`.
pub fn frame_samples(rate: u32) -> usize {
    (rate * FRAME_MS / 1000) as usize
}

/// One decoder: payload of one RTP packet in, PCM at [`Decoder::rate`] out.
pub enum Decoder {
    /// G.711 µ-law.
    Pcmu(audio_codec::pcmu::PcmuDecoder),
    /// G.711 A-law.
    Pcma(audio_codec::pcma::PcmaDecoder),
    /// G.722 at 64 kbit/s.
    G722(Box<audio_codec::g722::G722Decoder>),
    /// Opus, mono output at [`OPUS_RATE`].
    Opus(Box<opus_rs::OpusDecoder>),
}

impl Decoder {
    /// A decoder for `codec`.
    pub fn new(codec: Codec) -> Result<Decoder, CodecError> {
        Ok(match codec {
            Codec::Pcmu => Decoder::Pcmu(audio_codec::pcmu::PcmuDecoder::new()),
            Codec::Pcma => Decoder::Pcma(audio_codec::pcma::PcmaDecoder::new()),
            Codec::G722 => Decoder::G722(Box::default()),
            Codec::Opus => Decoder::Opus(Box::new(
                opus_rs::OpusDecoder::new(OPUS_RATE as i32, 1)
                    .map_err(|_| CodecError::Unsupported(codec))?,
            )),
            other => return Err(CodecError::Unsupported(other)),
        })
    }

    /// The sampling rate of the PCM this decoder produces.
    pub fn rate(&self) -> u32 {
        match self {
            Decoder::Pcmu(_) | Decoder::Pcma(_) => 8_000,
            Decoder::G722(_) => 16_000,
            Decoder::Opus(_) => OPUS_RATE,
        }
    }

    /// Decodes one payload, appending its samples to `out`.
    pub fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) -> Result<(), CodecError> {
        if payload.is_empty() {
            return Err(CodecError::Invalid("empty"));
        }
        let start = out.len();
        match self {
            Decoder::Pcmu(d) => push_with(out, d.max_decode_samples(payload.len()), |b| {
                d.decode_into(payload, b)
            })
            .map_err(|_| CodecError::Invalid("PCMU")),
            Decoder::Pcma(d) => push_with(out, d.max_decode_samples(payload.len()), |b| {
                d.decode_into(payload, b)
            })
            .map_err(|_| CodecError::Invalid("PCMA")),
            Decoder::G722(d) => push_with(out, d.max_decode_samples(payload.len()), |b| {
                d.decode_into(payload, b)
            })
            .map_err(|_| CodecError::Invalid("G722")),
            Decoder::Opus(d) => {
                // A packet carries at most 120 ms (RFC 6716 §3.2.1); a pure-Rust decoder fed
                // garbage from the network must not take the relay down, so a panic inside it
                // counts as an invalid payload and the decoder starts afresh.
                let mut pcm = [0f32; (OPUS_RATE as usize) * 120 / 1000];
                let max = pcm.len();
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    d.decode(payload, max, &mut pcm)
                }));
                match r {
                    Ok(Ok(n)) => {
                        out.extend(pcm.iter().take(n).map(|&s| f32_to_i16(s)));
                        Ok(())
                    }
                    Ok(Err(_)) => Err(CodecError::Invalid("opus")),
                    Err(_) => {
                        out.truncate(start);
                        *self = Decoder::new(Codec::Opus)?;
                        Err(CodecError::Invalid("opus"))
                    }
                }
            }
        }
    }

    /// Conceals one lost frame of `samples` samples: Opus runs its packet-loss concealment;
    /// the others repeat the last frame faded by half (`last`), silence when there is none.
    pub fn conceal(&mut self, last: &[i16], samples: usize, out: &mut Vec<i16>) {
        if let Decoder::Opus(d) = self {
            let mut pcm = vec![0f32; samples];
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                d.decode(&[], samples, &mut pcm)
            }));
            if let Ok(Ok(n)) = r {
                out.extend(pcm.iter().take(n).map(|&s| f32_to_i16(s)));
                out.resize(out.len() + samples.saturating_sub(n), 0);
                return;
            }
        }
        if last.len() == samples {
            out.extend(last.iter().map(|&s| s / 2));
        } else {
            out.resize(out.len() + samples, 0);
        }
    }
}

/// One encoder: one 20 ms frame of PCM at [`Encoder::rate`] in, one RTP payload out.
pub enum Encoder {
    /// G.711 µ-law.
    Pcmu(audio_codec::pcmu::PcmuEncoder),
    /// G.711 A-law.
    Pcma(audio_codec::pcma::PcmaEncoder),
    /// G.722 at 64 kbit/s.
    G722(Box<audio_codec::g722::G722Encoder>),
    /// Opus, mono at [`OPUS_RATE`], coded as an [`OpusProfile`] says.
    Opus(Box<opus_rs::OpusEncoder>),
}

/// How the gateway's Opus encoder codes speech (RFC 6716 §2: SILK, CELT or both).
///
/// Chosen by wide-band PESQ on espeak-ng speech through G.722 then Opus, the codecs alone
/// (`csps-loadgen codec-chain`, README "Speech quality"), and by the encoder's cost per 20 ms
/// frame (`cargo bench -p csps --bench codec`): CELT alone at 64 kbit/s and complexity 0 scores
/// 3.15 and 3.26 on two voices where SILK at 32 kbit/s and complexity 5 scores 3.12 and 3.21
/// (G.722 alone: 3.21 and 3.33), and costs about 15 µs per frame against SILK's 100 µs, the
/// one figure that bounds how many calls a core transcodes. The price is the bit rate on the
/// Opus leg: 64 kbit/s, what G.722 and G.711 take too (RFC 7587 §3.1.1 puts wide-band speech
/// at 16–32 kbit/s only for SILK). CELT at 48 kbit/s scores 0.09–0.10 less; SILK at complexity
/// 3 or less, which costs at most two thirds, loses 0.25–0.45.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpusProfile {
    /// CELT only (libopus's "restricted low delay" application) at [`CELT_BITRATE`],
    /// complexity 0: what the gateway sends unless the receiver asks for less.
    Celt,
    /// SILK (libopus's VoIP application, wide-band) at this many bit/s, complexity 5: for a
    /// receiver whose `maxaveragebitrate` is below [`CELT_BITRATE`], and what an Opus phone
    /// (libopus VoIP) sends.
    Silk(u32),
}

/// The bit rate of [`OpusProfile::Celt`].
pub const CELT_BITRATE: u32 = 64_000;
/// The highest bit rate [`OpusProfile::Silk`] is given: SILK gains nothing audible above it for
/// wide-band speech (RFC 7587 §3.1.1).
pub const SILK_BITRATE: u32 = 32_000;
/// Opus's lowest bit rate (RFC 7587 §6.1 `maxaveragebitrate` range).
const OPUS_MIN_BITRATE: u32 = 6_000;

impl OpusProfile {
    /// What to send a receiver that asked for at most `max` bit/s (`maxaveragebitrate`,
    /// RFC 7587 §6.1), or that set no cap (`None`).
    pub fn for_receiver(max: Option<u32>) -> OpusProfile {
        match max {
            Some(m) if m < CELT_BITRATE => {
                OpusProfile::Silk(m.clamp(OPUS_MIN_BITRATE, SILK_BITRATE))
            }
            _ => OpusProfile::Celt,
        }
    }
}

impl Encoder {
    /// An encoder for `codec` (Opus: [`OpusProfile::Celt`]).
    pub fn new(codec: Codec) -> Result<Encoder, CodecError> {
        Encoder::for_receiver(codec, None)
    }

    /// An encoder for `codec` sent to a receiver whose `fmtp` caps Opus at `max_bitrate`
    /// ([`OpusProfile::for_receiver`]; ignored by the other codecs).
    pub fn for_receiver(codec: Codec, max_bitrate: Option<u32>) -> Result<Encoder, CodecError> {
        Ok(match codec {
            Codec::Pcmu => Encoder::Pcmu(audio_codec::pcmu::PcmuEncoder::new()),
            Codec::Pcma => Encoder::Pcma(audio_codec::pcma::PcmaEncoder::new()),
            Codec::G722 => Encoder::G722(Box::default()),
            Codec::Opus => Encoder::opus(OpusProfile::for_receiver(max_bitrate))?,
            other => return Err(CodecError::Unsupported(other)),
        })
    }

    /// An Opus encoder (mono at [`OPUS_RATE`]) that codes as `profile` says.
    pub fn opus(profile: OpusProfile) -> Result<Encoder, CodecError> {
        let (application, bitrate, complexity) = match profile {
            OpusProfile::Celt => (opus_rs::Application::RestrictedLowDelay, CELT_BITRATE, 0),
            OpusProfile::Silk(bitrate) => (opus_rs::Application::Voip, bitrate, 5),
        };
        let mut e = opus_rs::OpusEncoder::new(OPUS_RATE as i32, 1, application)
            .map_err(|_| CodecError::Unsupported(Codec::Opus))?;
        // opus-rs clamps to what Opus can do.
        e.bitrate_bps = i32::try_from(bitrate).unwrap_or(i32::MAX);
        e.complexity = complexity;
        Ok(Encoder::Opus(Box::new(e)))
    }

    /// The sampling rate of the PCM this encoder takes.
    pub fn rate(&self) -> u32 {
        match self {
            Encoder::Pcmu(_) | Encoder::Pcma(_) => 8_000,
            Encoder::G722(_) => 16_000,
            Encoder::Opus(_) => OPUS_RATE,
        }
    }

    /// Encodes one frame (20 ms at [`Encoder::rate`]), appending the payload to `out`.
    pub fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) -> Result<(), CodecError> {
        match self {
            Encoder::Pcmu(e) => push_with(out, e.max_encode_bytes(pcm.len()), |b| {
                e.encode_into(pcm, b)
            })
            .map_err(|_| CodecError::Invalid("PCMU")),
            Encoder::Pcma(e) => push_with(out, e.max_encode_bytes(pcm.len()), |b| {
                e.encode_into(pcm, b)
            })
            .map_err(|_| CodecError::Invalid("PCMA")),
            Encoder::G722(e) => push_with(out, e.max_encode_bytes(pcm.len()), |b| {
                e.encode_into(pcm, b)
            })
            .map_err(|_| CodecError::Invalid("G722")),
            Encoder::Opus(e) => {
                // 1275 bytes is the largest Opus frame (RFC 6716 §3.2.1).
                push_with(out, 1275, |b| e.encode_i16(pcm, pcm.len(), b))
                    .map_err(|_| CodecError::Invalid("opus"))
            }
        }
    }
}

/// Grows `out` by `max` zeroed items, lets `f` write into them and keeps the `n` it wrote.
fn push_with<T: Copy + Default, E>(
    out: &mut Vec<T>,
    max: usize,
    f: impl FnOnce(&mut [T]) -> Result<usize, E>,
) -> Result<(), E> {
    let start = out.len();
    out.resize(start + max, T::default());
    match f(&mut out[start..]) {
        Ok(n) => {
            out.truncate(start + n.min(max));
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// The encoder a phone sending `codec` uses, as the codec benchmark and the load generator's
/// transcoded calls model it: the gateway's own, except Opus, which phones (libopus's VoIP mode)
/// send as SILK at [`SILK_BITRATE`].
pub fn phone_encoder(codec: Codec) -> Result<Encoder, CodecError> {
    match codec {
        Codec::Opus => Encoder::opus(OpusProfile::Silk(SILK_BITRATE)),
        _ => Encoder::new(codec),
    }
}

/// `frames` 20 ms frames at `rate` of a voiced, noisy signal (three harmonics of a pitch moving
/// between 80 and 160 Hz, and white noise): what the codec benchmark and the load generator's
/// transcoded calls encode, so neither measures a codec on silence.
pub fn speechlike(rate: u32, frames: usize) -> Vec<Vec<i16>> {
    let n = frame_samples(rate);
    let mut seed = 0x2545_f491_u32;
    (0..frames)
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

/// f32 in ±1.0 to 16-bit PCM, clipped.
pub fn f32_to_i16(s: f32) -> i16 {
    (s * 32768.0).clamp(-32768.0, 32767.0) as i16
}

#[cfg(test)]
pub(crate) mod tests;
