//! RTP as the media core reads and writes it when it does more than relay: the header and payload
//! of a received packet it decodes (a transcoded leg, a conference participant), and the stream
//! state RFC 3550 §5.1 asks of a sender it originates itself (music on hold, a conference mix, a
//! transcoded stream): a random SSRC, and a sequence number and timestamp that start at random
//! values and advance per packet. Parsing and writing are `rtp-types`' (CSRCs, extensions and
//! padding handled there); this module owns only the sender's state, and the receiver's
//! statistics every relayed or decoded stream gets ([`Reception`]: packets lost; [`Jitter`]:
//! interarrival jitter).

use std::time::Instant;

/// What the media core needs of a received RTP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received<'p> {
    /// Payload type (RFC 3551 static, or dynamic from SDP).
    pub payload_type: u8,
    /// Sequence number.
    pub sequence: u16,
    /// Timestamp in the codec's RTP clock.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
    /// Marker bit (start of a talk spurt, or of a telephone-event).
    pub marker: bool,
    /// The payload, without CSRCs, extension or padding.
    pub payload: &'p [u8],
}

/// Why a datagram is not an RTP packet the media core can read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not an RTP packet: {0}")]
pub struct NotRtp(String);

/// Reads the header and payload of one RTP packet.
pub fn parse(packet: &[u8]) -> Result<Received<'_>, NotRtp> {
    let p = rtp_types::RtpPacket::parse(packet).map_err(|e| NotRtp(e.to_string()))?;
    // `RtpPacket::payload` borrows the parsed header, not the datagram: slice the datagram.
    let start = p.payload_offset();
    let payload = packet
        .get(start..start + p.payload_len())
        .ok_or_else(|| NotRtp("payload outside the packet".into()))?;
    Ok(Received {
        payload_type: p.payload_type(),
        sequence: p.sequence_number(),
        timestamp: p.timestamp(),
        ssrc: p.ssrc(),
        marker: p.marker_bit(),
        payload,
    })
}

/// The fixed header of a packet the gateway writes (no CSRCs, extension or padding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Payload type (masked to 7 bits when written).
    pub payload_type: u8,
    /// Marker bit.
    pub marker: bool,
    /// Sequence number.
    pub sequence: u16,
    /// Timestamp.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
}

/// Appends one packet of `header` and `payload` to `out`; false when it was not written.
pub fn write(header: Header, payload: &[u8], out: &mut Vec<u8>) -> bool {
    let builder = rtp_types::RtpPacketBuilder::<&[u8], &[u8]>::new()
        .payload_type(header.payload_type & 0x7f)
        .sequence_number(header.sequence)
        .timestamp(header.timestamp)
        .ssrc(header.ssrc)
        .marker_bit(header.marker)
        .payload(payload);
    // The payload type is masked to 7 bits and there are no CSRCs, extension or padding, so
    // writing cannot fail; an error would only drop this one packet.
    match builder.write_into_vec(out) {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!("RTP packet not written: {e}");
            false
        }
    }
}

/// One RTP stream the gateway sends: its SSRC, next sequence number and timestamp.
#[derive(Clone, Debug)]
pub struct RtpSender {
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
    /// Set for the first packet and the first after a gap (RFC 3551 §4.1: start of a talk
    /// spurt), so the receiver resets its jitter buffer.
    marker: bool,
}

impl Default for RtpSender {
    fn default() -> RtpSender {
        RtpSender::new()
    }
}

impl RtpSender {
    /// A stream with random SSRC, first sequence number and first timestamp (RFC 3550 §5.1).
    pub fn new() -> RtpSender {
        RtpSender {
            ssrc: rand::random(),
            sequence: rand::random(),
            timestamp: rand::random(),
            marker: true,
        }
    }

    /// The stream's synchronisation source.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Takes over `ssrc` (a translator keeps its source's, RFC 3550 §7.1); a change starts a
    /// new talk spurt.
    pub fn set_ssrc(&mut self, ssrc: u32) {
        if ssrc != self.ssrc {
            self.ssrc = ssrc;
            self.marker = true;
        }
    }

    /// Appends one packet carrying `payload` to `out`, then moves the timestamp on by
    /// `duration` (in the payload type's RTP clock: 160 for 20 ms of PCMU, 960 for Opus).
    pub fn write(&mut self, payload_type: u8, payload: &[u8], duration: u32, out: &mut Vec<u8>) {
        let header = Header {
            payload_type,
            marker: self.marker,
            sequence: self.sequence,
            timestamp: self.timestamp,
            ssrc: self.ssrc,
        };
        if !write(header, payload, out) {
            return;
        }
        self.sequence = self.sequence.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(duration);
        self.marker = false;
    }

    /// The timestamp the next packet will carry.
    pub fn timestamp(&self) -> u32 {
        self.timestamp
    }

    /// Appends one packet with its own `timestamp` (an RFC 4733 event keeps the timestamp of
    /// its start in every packet), numbered in this stream; the stream's timestamp stays.
    pub fn write_at(
        &mut self,
        payload_type: u8,
        payload: &[u8],
        timestamp: u32,
        out: &mut Vec<u8>,
    ) {
        let next = self.timestamp;
        self.timestamp = timestamp;
        self.write(payload_type, payload, 0, out);
        self.timestamp = next;
    }

    /// Moves the timestamp on by `duration` without sending (silence not sent, a held stream);
    /// the next packet carries the marker bit.
    pub fn skip(&mut self, duration: u32) {
        self.timestamp = self.timestamp.wrapping_add(duration);
        self.marker = true;
    }
}

/// A sequence number this far ahead of the highest one is still the same stream with packets
/// lost in between (RFC 3550 A.1 `MAX_DROPOUT`).
const MAX_DROPOUT: u16 = 3000;
/// A sequence number at most this far behind the highest one is a late or duplicate packet
/// (RFC 3550 A.1 `MAX_MISORDER`); anything else is a jump.
const MAX_MISORDER: u16 = 100;

/// Packets lost on the way from one sender, counted as RFC 3550 §6.4.1 and A.3 count them: the
/// packets expected from the first and the highest (extended) sequence number less the packets
/// received, late and duplicate ones included. A new SSRC or a jump of the sequence number (a
/// phone restarting its stream after a re-INVITE) starts a new run whose losses add to the
/// earlier runs'; a duplicate can only hide a loss, never add one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reception {
    /// The run's SSRC; `None` before the first packet.
    ssrc: Option<u32>,
    /// The run's first sequence number, and its highest, extended by the wraps seen.
    base: u32,
    highest: u32,
    /// Packets received in the run.
    received: u64,
    /// Packets lost in the earlier runs.
    lost_before: u64,
    /// Packets received in the earlier runs.
    received_before: u64,
}

impl Reception {
    /// Accounts one packet of `ssrc` with sequence number `sequence`; true when it starts a
    /// new run (the first packet, a new SSRC, a jump).
    pub fn on_packet(&mut self, ssrc: u32, sequence: u16) -> bool {
        if self.ssrc != Some(ssrc) {
            self.restart(ssrc, sequence);
            return true;
        }
        let delta = sequence.wrapping_sub(self.highest as u16);
        if delta < MAX_DROPOUT {
            // In order, maybe after a gap; below the old low bits means it wrapped.
            let cycle = if sequence < self.highest as u16 {
                (self.highest & !0xffff).wrapping_add(0x1_0000)
            } else {
                self.highest & !0xffff
            };
            self.highest = cycle | u32::from(sequence);
        } else if delta <= u16::MAX - MAX_MISORDER {
            self.restart(ssrc, sequence);
            return true;
        }
        self.received += 1;
        false
    }

    /// Packets lost so far.
    pub fn lost(&self) -> u64 {
        self.lost_before + self.run_lost()
    }

    /// Packets received so far (late and duplicate ones included, as RFC 3550 A.3 counts).
    pub fn received(&self) -> u64 {
        self.received_before + self.received
    }

    /// The SSRC of the current run and its extended highest sequence number (what an RTCP
    /// report block names), once a packet came.
    pub fn highest(&self) -> Option<(u32, u32)> {
        Some((self.ssrc?, self.highest))
    }

    fn run_lost(&self) -> u64 {
        match self.ssrc {
            None => 0,
            Some(_) => {
                let expected = u64::from(self.highest.wrapping_sub(self.base)) + 1;
                expected.saturating_sub(self.received)
            }
        }
    }

    fn restart(&mut self, ssrc: u32, sequence: u16) {
        self.lost_before += self.run_lost();
        self.received_before += self.received;
        self.ssrc = Some(ssrc);
        self.base = u32::from(sequence);
        self.highest = self.base;
        self.received = 1;
    }
}

/// The arrival gap from which the jitter estimate takes a pause for a pause, not for jitter.
pub const PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// The interarrival jitter of one sender, RFC 3550 §6.4.1 and A.8: for each packet of its audio
/// payload type, D = (R_i − R_{i−1}) − (S_i − S_{i−1}) with R the arrival time in the stream's
/// RTP clock and S the packet's timestamp, and J += (|D| − J)/16, in timestamp units. Arrival
/// times are the driver's (one `Instant` per received batch): the estimator reads no clock.
/// Packets of another payload type (telephone-event, comfort noise) are skipped; without a known
/// clock there is no estimate; a new run ([`Reception::on_packet`]) or a new payload type or
/// clock starts the estimate afresh (the first packet of a run has no D). A packet that comes
/// [`PAUSE`] or more after the one before only sets the reference: a pause (hold, silence
/// suppression) is not jitter, and phones that do not advance their timestamps across one
/// would otherwise add the whole pause to J.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Jitter {
    /// The sender's audio payload type and its RTP clock rate (Hz), when known.
    audio: Option<(u8, u32)>,
    /// The run's last audio packet: when it arrived and its timestamp.
    last: Option<(Instant, u32)>,
    /// J in timestamp units; `None` before the run's first D.
    j: Option<f64>,
}

impl Jitter {
    /// Sets the sender's audio payload type and RTP clock (`None`: unknown, no estimate); a
    /// change starts afresh.
    pub fn set_audio(&mut self, audio: Option<(u8, u32)>) {
        if self.audio != audio {
            *self = Jitter {
                audio: audio.filter(|&(_, clock)| clock > 0),
                ..Jitter::default()
            };
        }
    }

    /// Starts a new run: the next packet has no D, and J starts from 0 again.
    pub fn restart(&mut self) {
        self.last = None;
        self.j = None;
    }

    /// Accounts one packet that arrived at `arrival` with `payload_type` and `timestamp`.
    pub fn on_packet(&mut self, arrival: Instant, payload_type: u8, timestamp: u32) {
        let Some((pt, clock)) = self.audio else {
            return;
        };
        if payload_type != pt {
            return;
        }
        if let Some((then, ts)) = self.last.replace((arrival, timestamp)) {
            let gap = arrival.saturating_duration_since(then);
            if gap >= PAUSE {
                return;
            }
            let r = gap.as_secs_f64() * f64::from(clock);
            // The wrapping difference read as signed: right across the 32-bit wrap, and a
            // packet with an older timestamp (reordered) counts as the jitter it is.
            let s = f64::from(timestamp.wrapping_sub(ts) as i32);
            let j = self.j.unwrap_or(0.0);
            self.j = Some(j + ((r - s).abs() - j) / 16.0);
        }
    }

    /// J in timestamp units, rounded (what an RTCP report block carries).
    pub fn units(&self) -> Option<u32> {
        self.j.map(|j| j.round() as u32)
    }

    /// The RTP clock of the sender's audio, when known.
    pub fn clock(&self) -> Option<u32> {
        self.audio.map(|(_, clock)| clock)
    }

    /// J in milliseconds (to the microsecond), once the run had two audio packets.
    pub fn ms(&self) -> Option<f64> {
        let (_, clock) = self.audio?;
        Some((self.j? * 1_000_000.0 / f64::from(clock)).round() / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The losses of `sequences` received in this order from SSRC 7.
    fn lost(sequences: impl IntoIterator<Item = u16>) -> u64 {
        let mut r = Reception::default();
        for s in sequences {
            r.on_packet(7, s);
        }
        r.lost()
    }

    /// A PCMU sender's jitter after a first packet with timestamp `ts` and then one each
    /// `gaps_ms` later, their timestamps 160 units (20 ms) apart.
    fn jitter_of(ts: u32, gaps_ms: impl IntoIterator<Item = u64>) -> Jitter {
        let mut j = Jitter::default();
        j.set_audio(Some((0, 8000)));
        let mut at = Instant::now();
        let mut ts = ts;
        j.on_packet(at, 0, ts);
        for gap in gaps_ms {
            at += std::time::Duration::from_millis(gap);
            ts = ts.wrapping_add(160);
            j.on_packet(at, 0, ts);
        }
        j
    }

    fn near(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 0.002)
    }

    #[test]
    fn jitter_is_zero_for_a_steady_stream_even_across_the_timestamp_wrap() {
        assert_eq!(jitter_of(0, []).ms(), None, "one packet has no D");
        assert!(near(jitter_of(1000, [20; 200]).ms(), 0.0));
        // 160-unit steps from u32::MAX − 800: the wrap is five packets in.
        assert!(near(jitter_of(u32::MAX - 800, [20; 20]).ms(), 0.0));
        // Opus: 960 units per 20 ms at 48 kHz.
        let mut j = Jitter::default();
        j.set_audio(Some((111, 48_000)));
        let t0 = Instant::now();
        for i in 0..50u32 {
            let at = t0 + std::time::Duration::from_millis(u64::from(i) * 20);
            j.on_packet(at, 111, (u32::MAX - 4800).wrapping_add(i * 960));
        }
        assert!(near(j.ms(), 0.0), "{j:?}");
    }

    #[test]
    fn jitter_of_alternating_10_and_30_ms_converges_to_10_ms() {
        // Each D is ±80 units (10 or 30 ms of arrival against 20 ms of timestamp), so after n
        // packets J = 80 (1 − (15/16)^n) units, /8 per ms at 8 kHz: 0.625 ms after the first D,
        // 10 ms in the limit.
        let gaps = |n: usize| [10, 30].into_iter().cycle().take(n);
        assert!(near(jitter_of(0, gaps(1)).ms(), 0.625));
        assert!(near(
            jitter_of(0, gaps(2)).ms(),
            10.0 * (1.0 - (15.0f64 / 16.0).powi(2))
        ));
        let expected = 10.0 * (1.0 - (15.0f64 / 16.0).powi(100));
        assert!(near(jitter_of(0, gaps(100)).ms(), expected), "{expected}");
        assert!(expected > 9.98);
        // The same pattern across the timestamp wrap.
        assert!(near(jitter_of(u32::MAX - 3000, gaps(100)).ms(), expected));
        // A steady stream that arrives 40 ms later from its fourth packet on: one D of 320
        // units makes J 20, which then shrinks by 15/16 per steady packet.
        let j = jitter_of(0, [20, 20, 60, 20, 20]).ms();
        assert!(near(j, 20.0 * (15.0f64 / 16.0).powi(2) / 8.0), "{j:?}");
    }

    #[test]
    fn a_pause_is_not_jitter() {
        // A phone on hold for 5 s whose timestamps do not advance across it: the packet after
        // the pause only sets the reference, the steady stream around it stays at 0.
        let mut j = Jitter::default();
        j.set_audio(Some((0, 8000)));
        let t0 = Instant::now();
        let ms = std::time::Duration::from_millis;
        for i in 0..10u32 {
            j.on_packet(t0 + ms(u64::from(i) * 20), 0, i * 160);
        }
        for i in 10..20u32 {
            j.on_packet(t0 + ms(5_000 + u64::from(i) * 20), 0, i * 160);
        }
        assert!(near(j.ms(), 0.0), "{j:?}");
        // Just under the pause, the gap is jitter: D = 999 − 20 ms.
        let j = jitter_of(0, [20, 999]);
        assert!(near(j.ms(), 979.0 / 16.0), "{j:?}");
    }

    #[test]
    fn jitter_skips_other_payload_types_and_needs_a_clock() {
        // Telephone-events (payload type 101) between audio packets do not count.
        let mut j = Jitter::default();
        j.set_audio(Some((0, 8000)));
        let t0 = Instant::now();
        for i in 0..20u32 {
            let at = t0 + std::time::Duration::from_millis(u64::from(i) * 20);
            j.on_packet(at, 0, i * 160);
            j.on_packet(at + std::time::Duration::from_millis(7), 101, 99);
        }
        assert!(near(j.ms(), 0.0), "{j:?}");
        // The same clock again keeps the estimate; another one, or none, starts afresh.
        j.set_audio(Some((0, 8000)));
        assert!(j.ms().is_some());
        j.set_audio(Some((8, 8000)));
        assert_eq!(j.ms(), None);
        j.set_audio(None);
        j.on_packet(t0, 0, 0);
        j.on_packet(t0 + std::time::Duration::from_millis(30), 0, 160);
        assert_eq!(j.ms(), None, "no clock, no jitter");
        // A restart: the next packet has no D and J starts from 0.
        let mut j = jitter_of(0, [10, 30, 10, 30]);
        assert!(j.ms().is_some_and(|ms| ms > 1.0));
        j.restart();
        assert_eq!(j.ms(), None);
        j.on_packet(t0, 0, 123_456);
        j.on_packet(t0 + std::time::Duration::from_millis(20), 0, 123_616);
        assert!(near(j.ms(), 0.0), "{j:?}");
    }

    #[test]
    fn reception_counts_gaps_as_lost_but_not_late_duplicate_or_wrapped_packets() {
        assert_eq!(Reception::default().lost(), 0);
        assert_eq!(lost(100..200), 0);
        // Ten gaps of one (105, 115, …, 195), and one of three (170–172).
        let gaps = (100..200).filter(|s| s % 10 != 5 && !(170..173).contains(s));
        assert_eq!(lost(gaps), 13);
        // Two packets swapped, one duplicated: nothing lost.
        assert_eq!(lost([10, 11, 13, 12, 14, 14, 15]), 0);
        // One that comes late after its gap was counted is no longer lost.
        assert_eq!(lost([10, 12, 13]), 1);
        assert_eq!(lost([10, 12, 13, 11]), 0);
        // Across the wrap of the 16-bit sequence number, with one lost on either side.
        assert_eq!(lost([65533, 65535, 0, 2, 3]), 2);
        // A new SSRC, or a jump, starts a new run; the old run's losses stay.
        let mut r = Reception::default();
        for s in [1, 2, 4] {
            r.on_packet(7, s);
        }
        for s in [900, 901, 903] {
            r.on_packet(8, s);
        }
        assert_eq!(r.lost(), 2);
        for s in [40_000, 40_001, 40_004] {
            r.on_packet(8, s);
        }
        assert_eq!(r.lost(), 4);
    }

    #[test]
    fn a_stream_numbers_its_packets_and_marks_the_first_and_the_first_after_a_gap() {
        let mut s = RtpSender::new();
        let mut a = Vec::new();
        s.write(0, &[0xff; 160], 160, &mut a);
        let mut b = Vec::new();
        s.write(0, &[0xff; 160], 160, &mut b);
        s.skip(320);
        let mut c = Vec::new();
        s.write(9, &[1; 160], 160, &mut c);
        let (a, b, c) = (parse(&a).unwrap(), parse(&b).unwrap(), parse(&c).unwrap());
        assert!(a.marker && !b.marker && c.marker);
        assert_eq!(b.sequence, a.sequence.wrapping_add(1));
        assert_eq!(c.sequence, a.sequence.wrapping_add(2));
        assert_eq!(b.timestamp, a.timestamp.wrapping_add(160));
        assert_eq!(c.timestamp, a.timestamp.wrapping_add(640));
        assert_eq!((a.ssrc, c.ssrc), (s.ssrc(), s.ssrc()));
        assert_eq!((c.payload_type, c.payload), (9, &[1u8; 160][..]));
    }

    #[test]
    fn what_is_not_rtp_is_refused_not_panicked_on() {
        assert!(parse(&[]).is_err());
        assert!(parse(&[0x80, 0, 0]).is_err());
        // Version 1.
        assert!(parse(&[0x40; 12]).is_err());
        // Padding longer than the packet.
        let mut p = vec![0xa0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0xff];
        assert!(parse(&p).is_err());
        p[12] = 1;
        assert_eq!(parse(&p).map(|r| r.payload.len()), Ok(0));
    }
}
