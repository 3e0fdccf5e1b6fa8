//! `csps-loadgen codec-chain`: a WAV file through a chain of the gateway's codecs without the
//! gateway (encode and decode each in turn, resampling between their rates as the transcoder
//! does), for the "codec alone" side of the speech-quality comparison (e2e/pesq).

use std::path::Path;

use csps::media::codec::{Decoder, Encoder, OpusProfile, Resampler, SILK_BITRATE, frame_samples};
use csps_sip::sdp::Codec;

/// The codec of a chain element's name and the encoder the gateway would use for it (`pcmu`,
/// `pcma`, `g722`, `opus`), or `opus-silk`: Opus as a receiver capped at 32 kbit/s gets it
/// (SILK), which is also how Opus phones send.
fn element(name: &str) -> Result<(Codec, Encoder), String> {
    let (codec, encoder) = match name.to_ascii_lowercase().as_str() {
        "pcmu" => (Codec::Pcmu, Encoder::new(Codec::Pcmu)),
        "pcma" => (Codec::Pcma, Encoder::new(Codec::Pcma)),
        "g722" => (Codec::G722, Encoder::new(Codec::G722)),
        "opus" => (Codec::Opus, Encoder::new(Codec::Opus)),
        "opus-silk" => (Codec::Opus, Encoder::opus(OpusProfile::Silk(SILK_BITRATE))),
        other => {
            return Err(format!(
                "unknown codec {other:?} (pcmu, pcma, g722, opus, opus-silk)"
            ));
        }
    };
    Ok((codec, encoder.map_err(|e| e.to_string())?))
}

/// Mono 16-bit PCM at `rate` from a WAV file (16-bit; several channels are averaged).
fn read(path: &Path) -> Result<(u32, Vec<i16>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let pcm = csps_tests::audio::read_wav(&bytes)?;
    let samples = pcm
        .samples
        .iter()
        .map(|&s| (s * 32768.0).clamp(-32768.0, 32767.0) as i16)
        .collect();
    Ok((pcm.rate, samples))
}

/// Writes mono 16-bit PCM as a WAV file.
fn write(path: &Path, rate: u32, samples: &[i16]) -> Result<(), String> {
    std::fs::write(path, csps_tests::audio::wav_bytes(rate, 1, samples))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// 20 ms frames of `samples` from `from` Hz to `to` Hz (unchanged when equal).
fn resample(samples: &[i16], from: u32, to: u32) -> Vec<i16> {
    let Some(mut r) = Resampler::new(from, to) else {
        return samples.to_vec();
    };
    let mut out = Vec::with_capacity(samples.len() * to as usize / from as usize + 1);
    for frame in samples.chunks(frame_samples(from)) {
        r.process(frame, &mut out);
    }
    out
}

/// One codec's encode (by `enc`) and decode of the whole signal, 20 ms a frame.
fn through(codec: Codec, mut enc: Encoder, samples: &[i16]) -> Result<Vec<i16>, String> {
    let mut dec = Decoder::new(codec).map_err(|e| e.to_string())?;
    let n = frame_samples(enc.rate());
    let mut out = Vec::with_capacity(samples.len());
    let mut payload = Vec::new();
    let mut frame = vec![0i16; n];
    for chunk in samples.chunks(n) {
        frame[..chunk.len()].copy_from_slice(chunk);
        frame[chunk.len()..].fill(0);
        payload.clear();
        enc.encode(&frame, &mut payload)
            .map_err(|e| e.to_string())?;
        dec.decode(&payload, &mut out).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// Runs `input` through `codecs` in turn and writes `output` at `out_rate` Hz.
pub fn run(codecs: &str, input: &Path, output: &Path, out_rate: u32) -> Result<(), String> {
    let (mut rate, mut samples) = read(input)?;
    for name in codecs.split(',').filter(|c| !c.is_empty()) {
        let (c, enc) = element(name)?;
        let enc_rate = enc.rate();
        samples = through(c, enc, &resample(&samples, rate, enc_rate))?;
        rate = enc_rate;
    }
    write(output, out_rate, &resample(&samples, rate, out_rate))
}
