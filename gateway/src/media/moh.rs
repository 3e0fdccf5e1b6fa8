//! Music on hold: the audio the gateway plays to a party the other party put on hold
//! (`Data.SipConfig.MusicOnHold`). [`Music`] is the configured audio, read once from a WAV file
//! (any rate, any channel count, 8–32-bit integer or float samples) or the built-in melody,
//! mixed to mono and resampled to the two rates the codecs code at (8 and 16 kHz). A [`Player`]
//! is one held leg's stream, sans-IO: each 20 ms tick of the call task asks it for the next RTP
//! packet, the music looped and encoded in the leg's codec, numbered by an [`RtpSender`] (random
//! SSRC, sequence number and timestamp, marker on the first packet). [`watch`] keeps the music
//! current with the configuration, reading the file off the async threads.

use std::sync::Arc;

use csps_sip::sdp::{Codec, Format};
use tokio::sync::watch;

use super::codec::{CodecError, Encoder, Resampler, frame_samples, rtp_clock, sample_rate};
use super::rtp::RtpSender;
use crate::config::Settings;

/// The value of `Data.SipConfig.MusicOnHold` that selects the built-in melody.
pub const BUILTIN: &str = "builtin";

/// Longest music kept (longer files are cut): ten minutes, ~29 MB of PCM at 8 + 16 kHz.
const MAX_SECS: u32 = 600;

/// Largest file read.
const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// The rates the music is kept at: G.711 codes at 8 kHz, G.722 and Opus (inside the gateway) at
/// 16 kHz.
const RATES: [u32; 2] = [8_000, 16_000];

/// Why the configured music cannot be played.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MusicError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The configured path.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file is larger than the gateway reads.
    #[error("{0} is larger than 256 MiB")]
    TooLarge(String),
    /// The file is not a WAV file the gateway reads.
    #[error("{path} is not a usable WAV file: {why}")]
    BadWav {
        /// The configured path.
        path: String,
        /// What is wrong.
        why: String,
    },
}

/// The music, mono, at 8 and 16 kHz.
#[derive(Debug)]
pub struct Music {
    /// Where it came from (a path or [`BUILTIN`]), for logs.
    source: String,
    /// One PCM copy per rate of [`RATES`].
    pcm: [Vec<i16>; 2],
}

impl Music {
    /// The music `setting` names: `None` when it is empty (music on hold off).
    pub fn open(setting: &str) -> Option<Result<Music, MusicError>> {
        match setting.trim() {
            "" => None,
            BUILTIN => Some(Ok(Music::builtin())),
            path => Some(Music::load(path)),
        }
    }

    /// Reads a WAV file.
    pub fn load(path: &str) -> Result<Music, MusicError> {
        let read = |source| MusicError::Read {
            path: path.to_owned(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read)?.len();
        if len > MAX_FILE_BYTES {
            return Err(MusicError::TooLarge(path.to_owned()));
        }
        let bytes = std::fs::read(path).map_err(read)?;
        Music::from_wav(path, &bytes)
    }

    /// Reads WAV bytes; `source` names them in logs and errors.
    pub fn from_wav(source: &str, bytes: &[u8]) -> Result<Music, MusicError> {
        let bad = |why: String| MusicError::BadWav {
            path: source.to_owned(),
            why,
        };
        let reader =
            hound::WavReader::new(std::io::Cursor::new(bytes)).map_err(|e| bad(e.to_string()))?;
        let spec = reader.spec();
        let channels = usize::from(spec.channels);
        if channels == 0 || !(4_000..=192_000).contains(&spec.sample_rate) {
            return Err(bad(format!(
                "{} channels at {} Hz",
                spec.channels, spec.sample_rate
            )));
        }
        let max = (spec.sample_rate * MAX_SECS) as usize * channels;
        let interleaved: Vec<f32> = match spec.sample_format {
            hound::SampleFormat::Float => reader
                .into_samples::<f32>()
                .take(max)
                .collect::<Result<_, _>>()
                .map_err(|e| bad(e.to_string()))?,
            hound::SampleFormat::Int => {
                let scale = 2f32.powi(i32::from(spec.bits_per_sample.clamp(1, 32)) - 1);
                reader
                    .into_samples::<i32>()
                    .take(max)
                    .map(|s| s.map(|s| s as f32 / scale))
                    .collect::<Result<_, _>>()
                    .map_err(|e| bad(e.to_string()))?
            }
        };
        let mono: Vec<i16> = interleaved
            .chunks_exact(channels)
            .map(|f| super::codec::f32_to_i16(f.iter().sum::<f32>() / channels as f32))
            .collect();
        if mono.len() < frame_samples(spec.sample_rate) {
            return Err(bad("shorter than one 20 ms frame".into()));
        }
        Ok(Music::from_pcm(source, spec.sample_rate, &mono))
    }

    /// Music from mono PCM at `rate`.
    pub fn from_pcm(source: &str, rate: u32, mono: &[i16]) -> Music {
        Music {
            source: source.to_owned(),
            pcm: RATES.map(|to| resample(mono, rate, to)),
        }
    }

    /// The built-in melody: a calm eight-note phrase of soft sine tones (with a quiet octave
    /// above, so a G.711 handset speaker renders it), ~4.8 s, looped.
    pub fn builtin() -> Music {
        const RATE: u32 = 16_000;
        // C5 E5 G5 E5 F5 A5 G5 E5: Hz, and length in tenths of a second.
        const NOTES: [(f32, u32); 8] = [
            (523.25, 6),
            (659.25, 6),
            (783.99, 6),
            (659.25, 6),
            (698.46, 6),
            (880.00, 6),
            (783.99, 6),
            (659.25, 6),
        ];
        let mut pcm = Vec::new();
        for (hz, tenths) in NOTES {
            let n = (RATE * tenths / 10) as usize;
            for i in 0..n {
                let t = i as f32 / RATE as f32;
                // 20 ms attack, then an exponential decay: a struck, not a beeping, sound.
                let env = (t / 0.02).min(1.0) * (-3.0 * t).exp();
                let w = 2.0 * std::f32::consts::PI * hz * t;
                let s = 0.22 * env * (w.sin() + 0.25 * (2.0 * w).sin());
                pcm.push(super::codec::f32_to_i16(s));
            }
        }
        Music::from_pcm(BUILTIN, RATE, &pcm)
    }

    /// Where the music came from (a path or [`BUILTIN`]).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The music at `rate` (8 or 16 kHz).
    fn at(&self, rate: u32) -> Option<&[i16]> {
        RATES
            .iter()
            .position(|&r| r == rate)
            .map(|i| &self.pcm[i][..])
    }
}

/// `pcm` at `from` Hz resampled to `to` Hz, 20 ms frame by frame.
fn resample(pcm: &[i16], from: u32, to: u32) -> Vec<i16> {
    let Some(mut r) = Resampler::new(from, to) else {
        return pcm.to_vec();
    };
    let chunk = frame_samples(from).max(1);
    let want = (pcm.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    let mut out = Vec::with_capacity(want + 2 * frame_samples(to));
    for frame in pcm.chunks(chunk) {
        r.process(frame, &mut out);
    }
    // The filter's delay: one more (silent) frame brings the tail out.
    r.process(&[], &mut out);
    out.truncate(want);
    out
}

/// One held leg's music: the next RTP packet every 20 ms.
pub struct Player {
    music: Arc<Music>,
    /// The rate of the PCM the encoder takes.
    rate: u32,
    /// Next sample of the music to play.
    pos: usize,
    encoder: Encoder,
    sender: RtpSender,
    payload_type: u8,
    /// RTP timestamp units per packet.
    step: u32,
    frame: Vec<i16>,
    payload: Vec<u8>,
}

impl Player {
    /// A stream of `music` in `format` (the held leg's codec and payload type); refused for a
    /// codec the gateway cannot encode (telephone-event, unknown).
    pub fn new(music: Arc<Music>, format: Format) -> Result<Player, CodecError> {
        let unsupported = || CodecError::Unsupported(format.codec);
        let rate = sample_rate(format.codec).ok_or_else(unsupported)?;
        let clock = rtp_clock(format.codec).ok_or_else(unsupported)?;
        music.at(rate).ok_or_else(unsupported)?;
        Ok(Player {
            music,
            rate,
            pos: 0,
            encoder: Encoder::for_receiver(format.codec, format.max_average_bitrate)?,
            sender: RtpSender::new(),
            payload_type: format.pt,
            step: clock * super::codec::FRAME_MS / 1000,
            frame: Vec::with_capacity(frame_samples(rate)),
            payload: Vec::with_capacity(1500),
        })
    }

    /// The codec's payload type the stream is sent with.
    pub fn payload_type(&self) -> u8 {
        self.payload_type
    }

    /// The stream's SSRC.
    pub fn ssrc(&self) -> u32 {
        self.sender.ssrc()
    }

    /// Appends the next packet (20 ms of the music, looping) to `out`.
    pub fn next_packet(&mut self, out: &mut Vec<u8>) {
        let pcm = self.music.at(self.rate).unwrap_or(&[]);
        let n = frame_samples(self.rate);
        self.frame.clear();
        while self.frame.len() < n && !pcm.is_empty() {
            if self.pos >= pcm.len() {
                self.pos = 0;
            }
            let take = (n - self.frame.len()).min(pcm.len() - self.pos);
            self.frame
                .extend_from_slice(&pcm[self.pos..self.pos + take]);
            self.pos += take;
        }
        self.frame.resize(n, 0);
        self.payload.clear();
        match self.encoder.encode(&self.frame, &mut self.payload) {
            Ok(()) => self
                .sender
                .write(self.payload_type, &self.payload, self.step, out),
            // Not expected for a frame of the right size; the receiver hears a gap.
            Err(_) => self.sender.skip(self.step),
        }
    }
}

/// The codec of a held leg's answer that the music is sent in: its first audio format.
pub fn format_for(codecs: impl IntoIterator<Item = Format>) -> Option<Format> {
    codecs.into_iter().find(|f| f.codec.is_audio())
}

/// Keeps the music current with `Data.SipConfig.MusicOnHold`: read at start and on every change
/// of the setting (off the async threads); an unreadable file is logged and leaves music on
/// hold off until the setting changes.
pub fn watch(mut settings: watch::Receiver<Arc<Settings>>) -> watch::Receiver<Option<Arc<Music>>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let mut current: Option<String> = None;
        loop {
            let setting = settings.borrow_and_update().music_on_hold.clone();
            if current.as_deref() != Some(setting.as_str()) {
                current = Some(setting.clone());
                let s = setting.clone();
                let music = tokio::task::spawn_blocking(move || Music::open(&s))
                    .await
                    .ok()
                    .flatten();
                let music = match music {
                    None => {
                        tracing::info!("music on hold off");
                        None
                    }
                    Some(Ok(m)) => {
                        tracing::info!(source = m.source(), "music on hold loaded");
                        Some(Arc::new(m))
                    }
                    Some(Err(e)) => {
                        tracing::error!("music on hold off: {e} (Data.SipConfig.MusicOnHold)");
                        None
                    }
                };
                if tx.send(music).is_err() {
                    return;
                }
            }
            if settings.changed().await.is_err() {
                return;
            }
        }
    });
    rx
}

/// The codecs a player can be made for.
pub fn playable(codec: Codec) -> bool {
    sample_rate(codec).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::codec::Decoder;
    use crate::media::rtp;

    /// A WAV file of a `hz` sine at `rate` with `channels` channels (16-bit).
    fn wav(rate: u32, channels: u16, hz: f32, secs: f32) -> Vec<u8> {
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut out = std::io::Cursor::new(Vec::new());
        let mut w = hound::WavWriter::new(&mut out, spec).expect("writer");
        for i in 0..(rate as f32 * secs) as usize {
            let s = 0.5 * (2.0 * std::f32::consts::PI * hz * i as f32 / rate as f32).sin();
            for _ in 0..channels {
                w.write_sample((s * 32767.0) as i16).expect("sample");
            }
        }
        w.finalize().expect("finalize");
        out.into_inner()
    }

    /// Share of the energy of `pcm` at `hz` (`csps_tests::audio::tone_share`): near 1 for a
    /// clean tone.
    fn tone_share(pcm: &[i16], rate: u32, hz: f32) -> f32 {
        let pcm = csps_tests::audio::Pcm {
            rate,
            samples: pcm.iter().map(|&s| f32::from(s) / 32768.0).collect(),
        };
        csps_tests::audio::tone_share(&pcm, hz)
    }

    fn format(codec: Codec, pt: u8) -> Format {
        Format {
            pt,
            codec,
            clock: if codec == Codec::Opus { 48_000 } else { 8_000 },
            max_average_bitrate: None,
        }
    }

    /// Plays `n` packets of `music` in `f` and decodes them.
    fn play(music: Arc<Music>, f: Format, n: usize) -> (Vec<Vec<u8>>, Vec<i16>) {
        let mut p = Player::new(music, f).expect("player");
        let mut dec = Decoder::new(f.codec).expect("decoder");
        let mut packets = Vec::new();
        let mut pcm = Vec::new();
        for _ in 0..n {
            let mut out = Vec::new();
            p.next_packet(&mut out);
            let r = rtp::parse(&out).expect("rtp");
            dec.decode(r.payload, &mut pcm).expect("decode");
            packets.push(out);
        }
        (packets, pcm)
    }

    #[test]
    fn a_stereo_44k1_file_plays_as_its_tone_in_every_codec_with_the_right_timestamps() {
        let music =
            Arc::new(Music::from_wav("tone.wav", &wav(44_100, 2, 1000.0, 1.0)).expect("music"));
        assert_eq!(music.at(8_000).map(<[i16]>::len), Some(8_000));
        assert_eq!(music.at(16_000).map(<[i16]>::len), Some(16_000));
        for (codec, pt, payload, step, rate) in [
            (Codec::Pcmu, 0, Some(160), 160, 8_000),
            (Codec::Pcma, 8, Some(160), 160, 8_000),
            (Codec::G722, 9, Some(160), 160, 16_000),
            (Codec::Opus, 111, None, 960, 16_000),
        ] {
            let (packets, pcm) = play(music.clone(), format(codec, pt), 50);
            let parsed: Vec<_> = packets
                .iter()
                .map(|p| rtp::parse(p).expect("rtp"))
                .collect();
            assert!(parsed[0].marker && !parsed[1].marker, "{codec:?}");
            for w in parsed.windows(2) {
                assert_eq!(
                    w[1].timestamp,
                    w[0].timestamp.wrapping_add(step),
                    "{codec:?}"
                );
                assert_eq!(w[1].sequence, w[0].sequence.wrapping_add(1));
                assert_eq!(w[1].ssrc, w[0].ssrc);
            }
            assert!(parsed.iter().all(|r| r.payload_type == pt));
            if let Some(len) = payload {
                assert!(parsed.iter().all(|r| r.payload.len() == len), "{codec:?}");
            }
            // Skip the codecs' and resampler's start-up.
            let share = tone_share(&pcm[rate as usize / 10..], rate, 1000.0);
            assert!(share > 0.8, "{codec:?}: 1 kHz share {share}");
        }
    }

    #[test]
    fn the_music_loops() {
        // 100 ms of music, 1 s of packets: it starts over, no silence at the end.
        let pcm: Vec<i16> = (0..800)
            .map(|i| if i % 2 == 0 { 8000 } else { -8000 })
            .collect();
        let music = Arc::new(Music::from_pcm("t", 8_000, &pcm));
        let (_, out) = play(music, format(Codec::Pcmu, 0), 50);
        assert_eq!(out.len(), 8_000);
        assert!(out.chunks(160).all(|f| f.iter().any(|&s| s.abs() > 4000)));
    }

    #[test]
    fn the_builtin_melody_is_audible_and_telephone_event_gets_no_player() {
        let music = Arc::new(Music::builtin());
        let (_, pcm) = play(music.clone(), format(Codec::G722, 9), 100);
        let energy = pcm.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / pcm.len() as f64;
        assert!(energy.sqrt() > 1000.0, "rms {}", energy.sqrt());
        assert!(Player::new(music, format(Codec::TelephoneEvent, 101)).is_err());
        assert!(!playable(Codec::TelephoneEvent) && playable(Codec::Pcma));
    }

    #[test]
    fn bad_files_are_errors_not_panics() {
        assert!(matches!(
            Music::from_wav("x", b"RIFF....WAVE"),
            Err(MusicError::BadWav { .. })
        ));
        assert!(Music::from_wav("x", &[]).is_err());
        let mut cut = wav(8_000, 1, 440.0, 1.0);
        cut.truncate(60);
        assert!(Music::from_wav("x", &cut).is_err());
        assert!(matches!(
            Music::load("/nonexistent/moh.wav"),
            Err(MusicError::Read { .. })
        ));
        assert!(Music::open("").is_none());
        assert!(matches!(Music::open(BUILTIN), Some(Ok(_))));
        assert_eq!(
            format_for([format(Codec::TelephoneEvent, 101), format(Codec::Pcma, 8)]).map(|f| f.pt),
            Some(8)
        );
    }
}
