//! Audio checks for call tests: read the 16-bit PCM WAV files a phone recorded (baresip's
//! `sndfile` module) and find a tone in them with the Goertzel algorithm, so a test asserts what a
//! listener would hear, not that packets flowed.

/// Decoded PCM: sample rate and mono samples (channels averaged).
#[derive(Clone, Debug)]
pub struct Pcm {
    /// Samples per second.
    pub rate: u32,
    /// Mono samples in -1.0..1.0.
    pub samples: Vec<f32>,
}

/// Reads a RIFF/WAVE file of 16-bit integer PCM.
pub fn read_wav(bytes: &[u8]) -> Result<Pcm, String> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err("not a RIFF/WAVE file".into());
    }
    let mut pos = 12;
    let mut fmt: Option<(u16, u16, u32, u16)> = None;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let len = u32::from_le_bytes([
            bytes[pos + 4],
            bytes[pos + 5],
            bytes[pos + 6],
            bytes[pos + 7],
        ]) as usize;
        let body_start = pos + 8;
        // A recorder killed mid-write leaves the data length it wrote first (0) or one larger
        // than the file: the samples are what the file holds.
        let end = if id == b"data" && (len == 0 || body_start + len > bytes.len()) {
            bytes.len()
        } else {
            (body_start + len).min(bytes.len())
        };
        let body = &bytes[body_start..end];
        if id == b"fmt " && body.len() >= 16 {
            let format = u16::from_le_bytes([body[0], body[1]]);
            let channels = u16::from_le_bytes([body[2], body[3]]);
            let rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
            let bits = u16::from_le_bytes([body[14], body[15]]);
            fmt = Some((format, channels, rate, bits));
        } else if id == b"data" {
            let (format, channels, rate, bits) = fmt.ok_or("data before fmt")?;
            if format != 1 || bits != 16 || channels == 0 {
                return Err(format!(
                    "unsupported WAV: format {format}, {bits} bits, {channels} channels"
                ));
            }
            let ch = usize::from(channels);
            let samples = body
                .chunks_exact(2 * ch)
                .map(|frame| {
                    let sum: f32 = frame
                        .chunks_exact(2)
                        .map(|s| f32::from(i16::from_le_bytes([s[0], s[1]])) / 32768.0)
                        .sum();
                    sum / ch as f32
                })
                .collect();
            return Ok(Pcm { rate, samples });
        }
        pos = body_start + len + (len & 1);
    }
    Err("no data chunk".into())
}

/// A RIFF/WAVE file of 16-bit PCM: `samples` interleaved over `channels` at `rate` (what a
/// test gives the gateway to play, or reads back).
pub fn wav_bytes(rate: u32, channels: u16, samples: &[i16]) -> Vec<u8> {
    let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let frame = 2 * u32::from(channels);
    let mut w = Vec::with_capacity(44 + data.len());
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes());
    w.extend_from_slice(&channels.to_le_bytes());
    w.extend_from_slice(&rate.to_le_bytes());
    w.extend_from_slice(&(rate * frame).to_le_bytes());
    w.extend_from_slice(&(frame as u16).to_le_bytes());
    w.extend_from_slice(&16u16.to_le_bytes());
    w.extend_from_slice(b"data");
    w.extend_from_slice(&(data.len() as u32).to_le_bytes());
    w.extend_from_slice(&data);
    w
}

/// The power of `freq` in `samples` (Goertzel), normalised so a full-scale sine gives ~0.25.
pub fn goertzel(samples: &[f32], rate: u32, freq: f32) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    let w = 2.0 * std::f32::consts::PI * freq / rate as f32;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f32, 0.0f32);
    for &x in samples {
        let s0 = x + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    power / (samples.len() as f32 * samples.len() as f32)
}

/// The share of the signal's energy that lies at `freq` (0..1): near 1 for a clean tone at that
/// frequency, near 0 for silence, noise or another tone.
pub fn tone_share(pcm: &Pcm, freq: f32) -> f32 {
    let energy: f32 =
        pcm.samples.iter().map(|x| x * x).sum::<f32>() / pcm.samples.len().max(1) as f32;
    if energy < 1e-6 {
        return 0.0;
    }
    // A sine of amplitude A has mean energy A²/2 and Goertzel power A²/4.
    (2.0 * goertzel(&pcm.samples, pcm.rate, freq) / energy).min(1.0)
}

/// The decoded recording a baresip phone left in `dir` (the `*dec*.wav` of `sndfile`), without
/// its first half second (jitter buffer fill, set-up); an error when there is none or it is
/// shorter than a second.
pub fn heard_in(dir: &std::path::Path) -> Result<Pcm, String> {
    let wav = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.contains("dec") && n.ends_with(".wav")
            })
        })
        .ok_or_else(|| format!("no decoded recording in {}", dir.display()))?;
    let mut pcm = read_wav(&std::fs::read(&wav).map_err(|e| e.to_string())?)?;
    let half = (pcm.rate / 2) as usize;
    if pcm.samples.len() <= 2 * half {
        return Err(format!(
            "recording too short: {} samples",
            pcm.samples.len()
        ));
    }
    pcm.samples.drain(..half);
    Ok(pcm)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(rate: u32, freq: f32, secs: f32) -> Vec<f32> {
        (0..(rate as f32 * secs) as usize)
            .map(|i| 0.5 * (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin())
            .collect()
    }

    #[test]
    fn finds_the_tone_and_not_another() {
        let pcm = Pcm {
            rate: 8000,
            samples: sine(8000, 1000.0, 1.0),
        };
        assert!(tone_share(&pcm, 1000.0) > 0.9);
        assert!(tone_share(&pcm, 600.0) < 0.05);
        let silence = Pcm {
            rate: 8000,
            samples: vec![0.0; 8000],
        };
        assert_eq!(tone_share(&silence, 1000.0), 0.0);
    }

    #[test]
    fn reads_a_stereo_wav() {
        let stereo: Vec<i16> = sine(16000, 440.0, 0.5)
            .iter()
            .flat_map(|x| {
                let s = (x * 32767.0) as i16;
                [s, s]
            })
            .collect();
        let w = wav_bytes(16000, 2, &stereo);
        let pcm = read_wav(&w).expect("wav");
        assert_eq!(pcm.rate, 16000);
        assert_eq!(pcm.samples.len(), 8000);
        assert!(tone_share(&pcm, 440.0) > 0.9);
        assert!(read_wav(b"RIFF....WAVE").is_err());
    }
}
