//! DTMF, sans-IO: RFC 4733 telephone-events as they travel in RTP, and the SIP INFO bodies
//! (`application/dtmf-relay`, `application/dtmf`) phones without telephone-event send instead.
//! The call interworks the two when one leg negotiated telephone-event and the other did not:
//! [`EventReceiver`] turns a leg's event packets into one [`Digit`] per event (the gateway then
//! sends it as an INFO), and [`EventSender`] turns a digit from an INFO into the packets of one
//! event (start, a continuation per packet time, three end packets: RFC 4733 §2.5).

use std::time::{Duration, Instant};

/// The payload of one telephone-event packet (RFC 4733 §2.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// The event code (0–9, 10 `*`, 11 `#`, 12–15 `A`–`D`, 16 flash).
    pub code: u8,
    /// The E bit: this packet ends the event.
    pub end: bool,
    /// Power level in −dBm0 (0–63).
    pub volume: u8,
    /// Duration so far, in the payload type's RTP clock.
    pub duration: u16,
}

/// Why a payload is not a telephone-event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a telephone-event payload: {0}")]
pub struct BadEvent(&'static str);

impl Event {
    /// Reads the first event of a payload (a redundant payload repeats older ones after it).
    pub fn parse(payload: &[u8]) -> Result<Event, BadEvent> {
        let [code, flags, d0, d1, ..] = *payload else {
            return Err(BadEvent("shorter than 4 bytes"));
        };
        Ok(Event {
            code,
            end: flags & 0x80 != 0,
            volume: flags & 0x3f,
            duration: u16::from_be_bytes([d0, d1]),
        })
    }

    /// The 4-byte payload (the R bit is zero).
    pub fn to_bytes(self) -> [u8; 4] {
        let [d0, d1] = self.duration.to_be_bytes();
        let end = if self.end { 0x80 } else { 0 };
        [self.code, end | (self.volume & 0x3f), d0, d1]
    }
}

/// One key press: its event code and how long it lasted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digit {
    /// The event code (see [`Event::code`]).
    pub code: u8,
    /// How long the key was held.
    pub duration: Duration,
}

/// How long a digit lasts when its sender did not say.
pub const DEFAULT_DURATION: Duration = Duration::from_millis(160);
/// The longest digit the gateway plays (a stuck key must not hold the stream for ever).
const MAX_DURATION: Duration = Duration::from_secs(5);
/// The power level of the events the gateway sends (−10 dBm0, a common phone default).
const VOLUME: u8 = 10;

/// The symbol of an event code in `application/dtmf-relay` and `application/dtmf` bodies.
pub fn symbol(code: u8) -> Option<char> {
    match code {
        0..=9 => Some(char::from(b'0' + code)),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + code - 12)),
        16 => Some('!'),
        _ => None,
    }
}

/// The event code of a symbol (digits, `*`, `#`, `A`–`D` in either case, `!` for flash; the
/// numeric codes 10–16 as some phones write them in `Signal=`).
fn code_of(s: &str) -> Option<u8> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u8>() {
        return (n <= 16).then_some(n);
    }
    let mut chars = s.chars();
    let (Some(c), None) = (chars.next(), chars.next()) else {
        return None;
    };
    match c.to_ascii_uppercase() {
        '*' => Some(10),
        '#' => Some(11),
        c @ 'A'..='D' => Some(c as u8 - b'A' + 12),
        '!' => Some(16),
        _ => None,
    }
}

/// Why an INFO's body is not a DTMF digit; [`InfoError::status`] is the answer to send.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InfoError {
    /// Neither `application/dtmf-relay` nor `application/dtmf`: 415.
    #[error("unsupported content type {0:?} (application/dtmf-relay or application/dtmf)")]
    UnsupportedType(String),
    /// The body names no digit the gateway can send: 400.
    #[error("bad DTMF body: {0}")]
    BadBody(&'static str),
}

impl InfoError {
    /// The SIP status that answers the INFO.
    pub fn status(&self) -> u16 {
        match self {
            InfoError::UnsupportedType(_) => 415,
            InfoError::BadBody(_) => 400,
        }
    }
}

/// True when `content_type` names a DTMF body the gateway reads.
pub fn is_dtmf_type(content_type: &str) -> bool {
    matches!(
        media_type(content_type).as_str(),
        "application/dtmf-relay" | "application/dtmf"
    )
}

/// The media type without parameters, lower case.
fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Reads the digit of an INFO body: `application/dtmf-relay` (`Signal=5` and an optional
/// `Duration=160` in milliseconds, one per line) or `application/dtmf` (the symbol alone).
pub fn parse_info(content_type: &str, body: &[u8]) -> Result<Digit, InfoError> {
    let text = std::str::from_utf8(body).map_err(|_| InfoError::BadBody("not UTF-8"))?;
    match media_type(content_type).as_str() {
        "application/dtmf" => {
            let code = code_of(text).ok_or(InfoError::BadBody("no DTMF symbol"))?;
            Ok(Digit {
                code,
                duration: DEFAULT_DURATION,
            })
        }
        "application/dtmf-relay" => {
            let (mut code, mut duration) = (None, DEFAULT_DURATION);
            for line in text.lines() {
                let Some((name, value)) = line.split_once('=') else {
                    continue;
                };
                match name.trim().to_ascii_lowercase().as_str() {
                    "signal" => {
                        code = Some(code_of(value).ok_or(InfoError::BadBody("bad Signal"))?)
                    }
                    "duration" => {
                        let ms: u64 = value
                            .trim()
                            .parse()
                            .map_err(|_| InfoError::BadBody("bad Duration"))?;
                        duration = Duration::from_millis(ms);
                    }
                    _ => {}
                }
            }
            let code = code.ok_or(InfoError::BadBody("no Signal line"))?;
            Ok(Digit {
                code,
                duration: duration.clamp(Duration::from_millis(40), MAX_DURATION),
            })
        }
        other => Err(InfoError::UnsupportedType(other.to_owned())),
    }
}

/// The `application/dtmf-relay` body of a digit.
pub fn relay_body(d: Digit) -> String {
    format!(
        "Signal={}\r\nDuration={}\r\n",
        symbol(d.code).unwrap_or('0'),
        d.duration.as_millis()
    )
}

/// Turns one leg's telephone-event packets into one [`Digit`] per event. An event is reported
/// at its first end packet (with its whole duration); its repeated end packets carry the same
/// timestamp and are not reported again. An event whose end packets were all lost is reported
/// when the next event starts.
#[derive(Clone, Debug)]
pub struct EventReceiver {
    clock: u32,
    /// The event in progress: its RTP timestamp, the last packet's payload, and whether it was
    /// reported already.
    current: Option<(u32, Event, bool)>,
}

impl EventReceiver {
    /// A receiver for events in an RTP clock of `clock` Hz.
    pub fn new(clock: u32) -> EventReceiver {
        EventReceiver {
            clock: clock.max(1),
            current: None,
        }
    }

    /// Takes one packet's timestamp and payload; the digits it completes.
    pub fn push(&mut self, timestamp: u32, payload: &[u8]) -> Vec<Digit> {
        let Ok(ev) = Event::parse(payload) else {
            return Vec::new();
        };
        let clock = self.clock;
        let mut done = Vec::new();
        match &mut self.current {
            Some((ts, last, reported)) if *ts == timestamp => {
                if !*reported {
                    *last = ev;
                    if ev.end {
                        *reported = true;
                        done.push(digit_of(ev, clock));
                    }
                }
                return done;
            }
            Some((_, last, false)) => done.push(digit_of(*last, clock)),
            _ => {}
        }
        if ev.end {
            done.push(digit_of(ev, clock));
        }
        self.current = Some((timestamp, ev, ev.end));
        done
    }
}

/// The digit an event names, its duration in `clock` converted to time.
fn digit_of(ev: Event, clock: u32) -> Digit {
    let ms = u64::from(ev.duration) * 1000 / u64::from(clock.max(1));
    Digit {
        code: ev.code,
        duration: if ms == 0 {
            DEFAULT_DURATION
        } else {
            Duration::from_millis(ms)
        },
    }
}

/// One telephone-event packet to send: its payload, and whether it starts the event (the
/// marker bit, RFC 4733 §2.5.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventPacket {
    /// The event payload.
    pub event: Event,
    /// The first packet of the event.
    pub marker: bool,
}

/// Plays digits as RFC 4733 events, sans-IO: [`EventSender::poll`] hands out each packet when
/// it is due, [`EventSender::next_due`] says when to call back. Digits queue behind the one
/// playing. Every packet of one event carries the event's start timestamp, which the caller
/// keeps (see [`crate::media::rtp::RtpSender::write_at`]).
#[derive(Clone, Debug)]
pub struct EventSender {
    clock: u32,
    ptime: Duration,
    queue: std::collections::VecDeque<Digit>,
    /// The event playing: its digit, when it started, the packets sent, the end packets sent.
    playing: Option<(Digit, Instant, u32, u8)>,
    next: Option<Instant>,
}

impl EventSender {
    /// A sender for events in an RTP clock of `clock` Hz, one packet per `ptime`.
    pub fn new(clock: u32, ptime: Duration) -> EventSender {
        EventSender {
            clock: clock.max(1),
            ptime: ptime.max(Duration::from_millis(10)),
            queue: Default::default(),
            playing: None,
            next: None,
        }
    }

    /// Queues a digit; it starts at once when nothing plays.
    pub fn send(&mut self, now: Instant, digit: Digit) {
        self.queue.push_back(digit);
        if self.next.is_none() {
            self.next = Some(now);
        }
    }

    /// When the next packet is due (`None`: nothing to send).
    pub fn next_due(&self) -> Option<Instant> {
        self.next
    }

    /// True from an event's first packet to its last end packet.
    pub fn playing(&self) -> bool {
        self.playing.is_some()
    }

    /// The next packet if it is due at `now` (a first packet, [`EventPacket::marker`], tells
    /// the caller to take a new start timestamp).
    pub fn poll(&mut self, now: Instant) -> Option<EventPacket> {
        let due = self.next?;
        if now < due {
            return None;
        }
        let (digit, start, sent, ends) = match self.playing {
            Some(p) => p,
            None => {
                let d = self.queue.pop_front()?;
                (d, now, 0, 0)
            }
        };
        let ticks = |d: Duration| {
            let t = d.as_micros() * u128::from(self.clock) / 1_000_000;
            t.min(0xffff) as u16
        };
        let full = ticks(digit.duration);
        let elapsed = ticks(self.ptime * (sent + 1));
        let end = elapsed >= full;
        let event = Event {
            code: digit.code,
            end,
            volume: VOLUME,
            duration: if end { full } else { elapsed },
        };
        let packet = EventPacket {
            event,
            marker: sent == 0,
        };
        if !end {
            self.playing = Some((digit, start, sent + 1, 0));
            self.next = Some(due + self.ptime);
        } else if ends < 2 {
            // RFC 4733 §2.5.1.4: the end packet is sent three times.
            self.playing = Some((digit, start, sent + 1, ends + 1));
            self.next = Some(due + self.ptime);
        } else {
            self.playing = None;
            // A short pause between digits, so the receiver tells two equal digits apart.
            self.next = (!self.queue.is_empty()).then_some(due + self.ptime * 2);
        }
        Some(packet)
    }
}

/// Puts the events the gateway plays to a leg into the audio stream that leg hears, as RFC 4733
/// §2.1 requires ("the same sequence number and timestamp base as the regular audio channel";
/// a stream of their own is dropped by phones that follow one SSRC). Sans-IO over RTP headers:
/// each event packet takes the next sequence number of the audio passed on, which then moves
/// on by the packets inserted, less the audio packets withheld while an event plays (a
/// receiver mixing the two would hear the holder's audio under the tone). An event starts at
/// the audio's last timestamp advanced by the time since that packet, in the event's clock
/// (the audio's, when the SDP pairs them as phones do).
#[derive(Clone, Debug)]
pub struct EventSplice {
    clock: u32,
    /// Added to the sequence numbers of the audio passed on.
    shift: u16,
    /// The newest audio packet passed on, as it went out.
    last: Option<Passed>,
    /// The start timestamp of the event playing.
    event_ts: u32,
}

/// An audio packet as it went out to the leg.
#[derive(Clone, Copy, Debug)]
struct Passed {
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
    at: Instant,
}

/// Where an event packet goes in the audio stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplicedHeader {
    /// The audio's synchronisation source.
    pub ssrc: u32,
    /// The next sequence number of the audio stream.
    pub sequence: u16,
    /// The event's start, in the audio's timestamp base.
    pub timestamp: u32,
}

impl EventSplice {
    /// A splice for events in an RTP clock of `clock` Hz.
    pub fn new(clock: u32) -> EventSplice {
        EventSplice {
            clock: clock.max(1),
            shift: 0,
            last: None,
            event_ts: 0,
        }
    }

    /// One audio packet on its way to the leg (an RTP packet, header first): renumbered in
    /// place; false when it must be withheld because an event plays (`event_playing`).
    pub fn audio(&mut self, now: Instant, packet: &mut [u8], event_playing: bool) -> bool {
        let Some(header) = packet.get_mut(..12) else {
            return true;
        };
        let ssrc = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
        if self.last.is_some_and(|l| l.ssrc != ssrc) {
            // A new source (a transfer, music on hold) numbers its own packets.
            self.shift = 0;
            self.last = None;
        }
        if event_playing {
            self.shift = self.shift.wrapping_sub(1);
            return false;
        }
        let sequence = u16::from_be_bytes([header[2], header[3]]).wrapping_add(self.shift);
        header[2..4].copy_from_slice(&sequence.to_be_bytes());
        let timestamp = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        // A late packet does not move the stream's position back.
        let newer = self
            .last
            .is_none_or(|l| (sequence.wrapping_sub(l.sequence) as i16) > 0);
        if newer {
            self.last = Some(Passed {
                ssrc,
                sequence,
                timestamp,
                at: now,
            });
        }
        true
    }

    /// The header of the next event packet (`start`: the event's first), or `None` while no
    /// audio has gone to the leg (the caller then sends the event in a stream of its own).
    pub fn event(&mut self, now: Instant, start: bool) -> Option<SplicedHeader> {
        let last = self.last.as_mut()?;
        if start {
            let ticks = now.saturating_duration_since(last.at).as_micros() * u128::from(self.clock)
                / 1_000_000;
            self.event_ts = last.timestamp.wrapping_add(ticks as u32);
        }
        last.sequence = last.sequence.wrapping_add(1);
        self.shift = self.shift.wrapping_add(1);
        Some(SplicedHeader {
            ssrc: last.ssrc,
            sequence: last.sequence,
            timestamp: self.event_ts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_payload_round_trips_with_its_end_bit_volume_and_duration() {
        let e = Event {
            code: 11,
            end: true,
            volume: 10,
            duration: 1280,
        };
        let b = e.to_bytes();
        assert_eq!(b, [11, 0x8a, 0x05, 0x00]);
        assert_eq!(Event::parse(&b), Ok(e));
        // The R bit is ignored; the volume is six bits.
        assert_eq!(
            Event::parse(&[5, 0x7f, 0, 160]).map(|e| (e.end, e.volume)),
            Ok((false, 63))
        );
        assert!(Event::parse(&[5, 0x80, 0]).is_err());
        assert!(Event::parse(&[]).is_err());
    }

    #[test]
    fn info_bodies_of_both_types_are_read_and_bad_ones_refused_with_a_status() {
        let d = parse_info("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n");
        assert_eq!(
            d,
            Ok(Digit {
                code: 5,
                duration: Duration::from_millis(160)
            })
        );
        let d = parse_info(
            "Application/DTMF-Relay; charset=x",
            b"signal= #\nduration = 250\n",
        );
        assert_eq!(d.map(|d| (d.code, d.duration.as_millis())), Ok((11, 250)));
        assert_eq!(
            parse_info("application/dtmf-relay", b"Signal=11").map(|d| d.code),
            Ok(11)
        );
        assert_eq!(
            parse_info("application/dtmf", b"7\r\n").map(|d| d.code),
            Ok(7)
        );
        assert_eq!(parse_info("application/dtmf", b"*").map(|d| d.code), Ok(10));
        assert_eq!(parse_info("application/dtmf", b"d").map(|d| d.code), Ok(15));
        for (ct, body) in [
            ("application/dtmf-relay", &b"Duration=160"[..]),
            ("application/dtmf-relay", b"Signal=X"),
            ("application/dtmf-relay", b"Signal=5\nDuration=soon"),
            ("application/dtmf-relay", b"Signal=99"),
            ("application/dtmf", b""),
            ("application/dtmf", b"55"),
            ("application/dtmf", b"\xff"),
        ] {
            let e = parse_info(ct, body).expect_err("bad body");
            assert_eq!(e.status(), 400, "{ct} {body:?}: {e}");
        }
        let e = parse_info("text/plain", b"5").expect_err("type");
        assert_eq!(e.status(), 415);
        assert!(e.to_string().contains("text/plain"), "{e}");
        assert!(is_dtmf_type("application/DTMF") && !is_dtmf_type("application/sdp"));
        let body = relay_body(Digit {
            code: 10,
            duration: Duration::from_millis(160),
        });
        assert_eq!(body, "Signal=*\r\nDuration=160\r\n");
    }

    #[test]
    fn a_receiver_reports_each_event_once_at_its_end() {
        let mut r = EventReceiver::new(8000);
        let p = |code, end, duration| {
            Event {
                code,
                end,
                volume: 10,
                duration,
            }
            .to_bytes()
        };
        assert!(r.push(1000, &p(5, false, 160)).is_empty());
        assert!(r.push(1000, &p(5, false, 320)).is_empty());
        let d = r.push(1000, &p(5, true, 800));
        assert_eq!(
            d,
            [Digit {
                code: 5,
                duration: Duration::from_millis(100)
            }]
        );
        // The repeated end packets are the same event.
        assert!(r.push(1000, &p(5, true, 800)).is_empty());
        assert!(r.push(1000, &p(5, true, 800)).is_empty());
        // The same digit again is a new event (new timestamp); its end packets were lost, so
        // it is reported when the next one starts.
        assert!(r.push(3000, &p(5, false, 160)).is_empty());
        let d = r.push(5000, &p(7, false, 160));
        assert_eq!(d.iter().map(|d| d.code).collect::<Vec<_>>(), [5]);
        assert!(r.push(5000, b"xx").is_empty(), "a bad payload is ignored");
    }

    #[test]
    fn a_sender_plays_start_continuations_and_three_end_packets() {
        let t0 = Instant::now();
        let ptime = Duration::from_millis(20);
        let mut s = EventSender::new(8000, ptime);
        assert_eq!(s.next_due(), None);
        s.send(
            t0,
            Digit {
                code: 5,
                duration: Duration::from_millis(100),
            },
        );
        s.send(
            t0,
            Digit {
                code: 7,
                duration: Duration::from_millis(40),
            },
        );
        let mut packets = Vec::new();
        for _ in 0..100 {
            let Some(due) = s.next_due() else { break };
            assert!(
                s.poll(due - Duration::from_millis(1)).is_none(),
                "not before it is due"
            );
            if let Some(p) = s.poll(due) {
                packets.push((due - t0, p));
            }
        }
        let first: Vec<_> = packets.iter().take(7).map(|(_, p)| p).collect();
        assert!(first[0].marker && !first[1].marker);
        assert_eq!(
            first
                .iter()
                .map(|p| (p.event.duration, p.event.end))
                .collect::<Vec<_>>(),
            [
                (160, false),
                (320, false),
                (480, false),
                (640, false),
                (800, true),
                (800, true),
                (800, true)
            ]
        );
        assert!(
            first
                .iter()
                .all(|p| p.event.code == 5 && p.event.volume == VOLUME)
        );
        let second: Vec<_> = packets.iter().skip(7).collect();
        assert!(second[0].1.marker && second[0].1.event.code == 7);
        assert!(second[0].0 > packets[6].0 + ptime, "a pause between digits");
        assert_eq!(
            second.iter().map(|(_, p)| p.event.end).collect::<Vec<_>>(),
            [false, true, true, true]
        );
        assert_eq!(s.next_due(), None);
    }

    /// A 12-byte RTP header of `ssrc` with `sequence` and `timestamp`.
    fn audio(ssrc: u32, sequence: u16, timestamp: u32) -> [u8; 12] {
        let mut h = [0u8; 12];
        h[0] = 0x80;
        h[2..4].copy_from_slice(&sequence.to_be_bytes());
        h[4..8].copy_from_slice(&timestamp.to_be_bytes());
        h[8..12].copy_from_slice(&ssrc.to_be_bytes());
        h
    }

    fn sequence(h: &[u8; 12]) -> u16 {
        u16::from_be_bytes([h[2], h[3]])
    }

    #[test]
    fn events_take_the_audio_streams_numbers_and_the_audio_after_them_follows_on() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut splice = EventSplice::new(8000);
        assert_eq!(splice.event(t0, true), None, "no audio yet: own stream");
        // Audio up to 65535 (the numbers wrap), the last at 40 ms with timestamp 1320.
        for (i, seq) in [65534u16, 65535].into_iter().enumerate() {
            let mut p = audio(7, seq, 1000 + 160 * i as u32);
            assert!(splice.audio(ms(20 * i as u64), &mut p, false));
            assert_eq!(sequence(&p), seq, "untouched before any event");
        }
        // An event 30 ms after that packet starts at its timestamp + 240 ticks, numbered on.
        let first = splice.event(ms(50), true);
        assert_eq!(
            first,
            Some(SplicedHeader {
                ssrc: 7,
                sequence: 0,
                timestamp: 1160 + 240,
            })
        );
        // Audio while the event plays is withheld; later event packets keep the start.
        let mut held = audio(7, 0, 1480);
        assert!(!splice.audio(ms(60), &mut held, true));
        let next = splice
            .event(ms(100), false)
            .map(|h| (h.sequence, h.timestamp));
        assert_eq!(next, Some((1, 1400)));
        assert!(!splice.audio(ms(80), &mut audio(7, 1, 1640), true));
        // The audio after the event continues the numbering without a gap.
        let mut after = audio(7, 2, 1800);
        assert!(splice.audio(ms(120), &mut after, false));
        assert_eq!(sequence(&after), 2);
        let mut later = audio(7, 3, 1960);
        assert!(splice.audio(ms(140), &mut later, false));
        assert_eq!(sequence(&later), 3);
        // A second event lands after it.
        let h = splice.event(ms(150), true).expect("spliced");
        assert_eq!((h.sequence, h.timestamp), (4, 1960 + 80));
        let mut resumed = audio(7, 4, 2120);
        assert!(splice.audio(ms(160), &mut resumed, false));
        assert_eq!(sequence(&resumed), 5);
        // A late packet is renumbered the same way and does not move the position back.
        let mut late = audio(7, 2, 1800);
        assert!(splice.audio(ms(161), &mut late, false));
        assert_eq!(sequence(&late), 3);
        assert_eq!(splice.event(ms(170), true).map(|h| h.sequence), Some(6));
    }

    #[test]
    fn a_new_source_keeps_its_own_numbers() {
        let t0 = Instant::now();
        let mut splice = EventSplice::new(8000);
        assert!(splice.audio(t0, &mut audio(7, 100, 0), false));
        assert!(splice.event(t0, true).is_some());
        let mut other = audio(9, 500, 8000);
        assert!(splice.audio(t0, &mut other, false));
        assert_eq!(sequence(&other), 500);
        let h = splice.event(t0, true).expect("spliced");
        assert_eq!((h.ssrc, h.sequence, h.timestamp), (9, 501, 8000));
        // A packet too short to be RTP passes untouched.
        let mut short = [0x80u8, 0, 1];
        assert!(splice.audio(t0, &mut short, true));
        assert_eq!(short, [0x80, 0, 1]);
    }
}
