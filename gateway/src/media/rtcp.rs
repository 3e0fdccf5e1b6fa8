//! The gateway's own RTCP (RFC 3550 §6) for the streams it originates or rewrites itself — a
//! conference room's mix, music on hold, a transcoded leg — sans-IO: a [`Reporter`] per stream
//! is told each RTP packet the gateway sends ([`Reporter::sent`]) and each RTCP packet the peer
//! sends ([`Reporter::received`]), and when [`Reporter::due`] says so, writes one compound
//! report ([`Reporter::write_report`]: an SR when it sent RTP since the last report, else an RR;
//! then an SDES with its CNAME, §6.1). What the peer's stream looked like on arrival (losses,
//! sequence numbers, jitter) is not counted twice: the caller passes what
//! [`super::LegCounters`] already counts ([`Receiving`]). The clock is the caller's: reports
//! come every 5 s randomised by 0.5–1.5 (§6.2, §6.3 for two parties; the first after half that,
//! §6.2 "initial"), and nothing here sleeps or reads a clock. Relayed calls with the same codec
//! on both legs do not use this: their RTCP passes between the legs unchanged.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Sender report (RFC 3550 §6.4.1).
pub const SR: u8 = 200;
/// Receiver report (§6.4.2).
pub const RR: u8 = 201;
/// Source description (§6.5).
pub const SDES: u8 = 202;

/// The minimum report interval (§6.2).
pub const INTERVAL: Duration = Duration::from_secs(5);

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// One reception report block (§6.4.1): what a receiver saw of one source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReportBlock {
    /// The source reported on.
    pub ssrc: u32,
    /// Fraction of its packets lost since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Packets lost since the start (24-bit signed on the wire).
    pub cumulative_lost: i32,
    /// Extended highest sequence number received.
    pub highest_seq: u32,
    /// Interarrival jitter in timestamp units.
    pub jitter: u32,
    /// The middle 32 bits of the NTP timestamp of the last SR from the source (0: none).
    pub lsr: u32,
    /// Delay since that SR, in 1/65536 s.
    pub dlsr: u32,
}

/// The sender information of an SR (§6.4.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SenderInfo {
    /// Wall time of the report, NTP format (seconds since 1900 in the high 32 bits).
    pub ntp: u64,
    /// The same instant in the stream's RTP clock.
    pub rtp_timestamp: u32,
    /// Packets sent since the stream started.
    pub packets: u32,
    /// Payload octets sent since the stream started.
    pub octets: u32,
}

/// What a compound RTCP packet says, as far as the gateway reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compound {
    /// The SR's sender, if there was one.
    pub sender: Option<(u32, SenderInfo)>,
    /// Every report block of its SRs and RRs.
    pub reports: Vec<ReportBlock>,
    /// The first CNAME of its SDES.
    pub cname: Option<String>,
}

impl Compound {
    /// The report block about `ssrc`.
    pub fn report_on(&self, ssrc: u32) -> Option<&ReportBlock> {
        self.reports.iter().find(|r| r.ssrc == ssrc)
    }
}

/// Why a datagram is not RTCP the gateway can read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RtcpError {
    /// Shorter than an RTCP header, or a packet's length runs past the datagram.
    #[error("RTCP packet truncated")]
    Truncated,
    /// Not version 2.
    #[error("RTCP version {0}")]
    Version(u8),
    /// An SR or RR whose report count does not fit its length.
    #[error("RTCP report count {0} does not fit the packet")]
    Count(u8),
}

/// Reads a compound RTCP packet (already SRTCP-unprotected): its SR's sender information, the
/// report blocks of its SRs and RRs, and the first CNAME; other packet types are skipped.
pub fn parse(datagram: &[u8]) -> Result<Compound, RtcpError> {
    let mut out = Compound::default();
    let mut rest = datagram;
    if rest.is_empty() {
        return Err(RtcpError::Truncated);
    }
    while !rest.is_empty() {
        let head = rest.get(..4).ok_or(RtcpError::Truncated)?;
        if head[0] >> 6 != 2 {
            return Err(RtcpError::Version(head[0] >> 6));
        }
        let count = head[0] & 0x1f;
        let len = (usize::from(u16::from_be_bytes([head[2], head[3]])) + 1) * 4;
        let packet = rest.get(..len).ok_or(RtcpError::Truncated)?;
        rest = &rest[len..];
        // Padding (only in the last packet, §6.4.1): its last octet counts what to ignore.
        let body = if head[0] & 0x20 != 0 {
            let pad = usize::from(packet[len - 1]);
            packet
                .get(..len.checked_sub(pad).ok_or(RtcpError::Truncated)?)
                .ok_or(RtcpError::Truncated)?
        } else {
            packet
        };
        match head[1] {
            SR | RR => {
                let sr = head[1] == SR;
                let info_len = if sr { 20 } else { 0 };
                let blocks = body
                    .get(8 + info_len..)
                    .filter(|b| b.len() >= 24 * usize::from(count))
                    .ok_or(RtcpError::Count(count))?;
                if sr {
                    let ssrc = be32(body, 4);
                    let info = SenderInfo {
                        ntp: u64::from(be32(body, 8)) << 32 | u64::from(be32(body, 12)),
                        rtp_timestamp: be32(body, 16),
                        packets: be32(body, 20),
                        octets: be32(body, 24),
                    };
                    out.sender.get_or_insert((ssrc, info));
                }
                for b in blocks.chunks_exact(24).take(usize::from(count)) {
                    // 24 bits two's complement, sign-extended.
                    let lost = (be32(b, 4) << 8) as i32 >> 8;
                    out.reports.push(ReportBlock {
                        ssrc: be32(b, 0),
                        fraction_lost: b[4],
                        cumulative_lost: lost,
                        highest_seq: be32(b, 8),
                        jitter: be32(b, 12),
                        lsr: be32(b, 16),
                        dlsr: be32(b, 20),
                    });
                }
            }
            SDES if out.cname.is_none() => out.cname = first_cname(body.get(4..).unwrap_or(&[])),
            _ => {}
        }
    }
    Ok(out)
}

/// The first CNAME item of the first chunk of an SDES body (after its header).
fn first_cname(chunks: &[u8]) -> Option<String> {
    let mut items = chunks.get(4..)?;
    loop {
        let (&kind, rest) = items.split_first()?;
        if kind == 0 {
            return None;
        }
        let (&len, rest) = rest.split_first()?;
        let text = rest.get(..usize::from(len))?;
        if kind == 1 {
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        items = &rest[usize::from(len)..];
    }
}

/// The big-endian u32 at `at` of a slice whose length was checked.
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// What the gateway saw of the peer's RTP so far, as [`super::LegCounters`] counts it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Receiving {
    /// The peer's SSRC (of its current run).
    pub ssrc: u32,
    /// The extended highest sequence number received.
    pub highest_seq: u32,
    /// Packets received since the start (all runs).
    pub received: u64,
    /// Packets lost since the start (all runs).
    pub lost: u64,
    /// Interarrival jitter in timestamp units (0 when not measured).
    pub jitter: u32,
}

/// The stream the gateway sends: its SSRC and counts since it started, and its last packet.
#[derive(Clone, Copy, Debug)]
struct Sending {
    ssrc: u32,
    packets: u32,
    octets: u32,
    /// The last packet's timestamp, and when it was sent.
    timestamp: u32,
    at: Instant,
}

/// The RTCP of one stream the gateway sends to one peer: see the module documentation.
#[derive(Clone, Debug)]
pub struct Reporter {
    /// The SSRC that reports while nothing was sent yet.
    own_ssrc: u32,
    cname: String,
    /// The RTP clock of what we send (Hz; 0: unknown).
    clock: u32,
    sending: Option<Sending>,
    /// RTP sent since the last report: the next one is an SR.
    sent_since: bool,
    /// What the previous report counted of the peer: (expected, received), for the fraction
    /// lost of the interval.
    prior: (u64, u64),
    /// The peer's last SR: the middle 32 bits of its NTP time, and when it arrived.
    peer_sr: Option<(u32, Instant)>,
    /// When the next report is due (`None` until the first [`Reporter::due`]).
    next: Option<Instant>,
    /// xorshift64 state for the interval's randomisation.
    rng: u64,
}

impl Reporter {
    /// A reporter whose own SSRC, CNAME and intervals come from `seed` (the caller's randomness).
    pub fn new(seed: u64) -> Reporter {
        let mut r = Reporter {
            own_ssrc: 0,
            cname: String::new(),
            clock: 0,
            sending: None,
            sent_since: false,
            prior: (0, 0),
            peer_sr: None,
            next: None,
            rng: seed | 1,
        };
        r.own_ssrc = r.random() as u32;
        // RFC 7022: a random CNAME per session, the same in every report.
        r.cname = format!("{:016x}@csps", r.random());
        r
    }

    /// The RTP clock (Hz) of what the gateway sends this peer (the SR's timestamp is in it).
    pub fn set_clock(&mut self, clock: u32) {
        self.clock = clock;
    }

    /// The CNAME this reporter sends.
    pub fn cname(&self) -> &str {
        &self.cname
    }

    /// Accounts one RTP packet sent to the peer at `now` (plain, before SRTP). A new SSRC starts
    /// the counts afresh (§6.4.1).
    pub fn sent(&mut self, now: Instant, packet: &[u8]) {
        let Ok(p) = super::rtp::parse(packet) else {
            return;
        };
        let s = match self.sending.as_mut() {
            Some(s) if s.ssrc == p.ssrc => s,
            _ => self.sending.insert(Sending {
                ssrc: p.ssrc,
                packets: 0,
                octets: 0,
                timestamp: p.timestamp,
                at: now,
            }),
        };
        s.packets = s.packets.wrapping_add(1);
        s.octets = s.octets.wrapping_add(p.payload.len() as u32);
        s.timestamp = p.timestamp;
        s.at = now;
        self.sent_since = true;
    }

    /// Takes one compound RTCP packet from the peer that arrived at `now` (as [`parse`] read
    /// it): its SR gives the next report's LSR/DLSR. (What it reports on our stream is kept
    /// by [`super::LegCounters::count_rtcp`].)
    pub fn received(&mut self, now: Instant, c: &Compound) {
        if let Some((_, info)) = c.sender {
            self.peer_sr = Some(((info.ntp >> 16) as u32, now));
        }
    }

    /// The SSRC our reports carry: the stream's we send, else our own.
    pub fn ssrc(&self) -> u32 {
        self.sending.map_or(self.own_ssrc, |s| s.ssrc)
    }

    /// When the next report is due; the first call schedules the first report.
    pub fn poll_timeout(&mut self, now: Instant) -> Instant {
        match self.next {
            Some(at) => at,
            None => {
                let at = now + self.interval(INTERVAL / 2);
                self.next = Some(at);
                at
            }
        }
    }

    /// True when a report is due at `now` (see [`Reporter::poll_timeout`]).
    pub fn due(&mut self, now: Instant) -> bool {
        self.poll_timeout(now) <= now
    }

    /// Appends the compound report for `now` (`wall` the same instant on the wall clock) to
    /// `out`, with a report block on the peer's stream when `receiving` saw packets since the
    /// last report, and schedules the next one.
    pub fn write_report(
        &mut self,
        now: Instant,
        wall: SystemTime,
        receiving: Option<Receiving>,
        out: &mut Vec<u8>,
    ) {
        let ssrc = self.ssrc();
        let block = receiving
            .filter(|r| r.received != self.prior.1)
            .map(|r| self.block(now, r));
        let count = u8::from(block.is_some());
        let start = out.len();
        match self.sending.filter(|_| self.sent_since) {
            Some(s) => {
                let ntp = ntp_time(wall);
                let elapsed = now.saturating_duration_since(s.at);
                let ticks = elapsed.as_micros() * u128::from(self.clock) / 1_000_000;
                out.extend([0x80 | count, SR, 0, 0]);
                out.extend(ssrc.to_be_bytes());
                out.extend(ntp.to_be_bytes());
                out.extend(s.timestamp.wrapping_add(ticks as u32).to_be_bytes());
                out.extend(s.packets.to_be_bytes());
                out.extend(s.octets.to_be_bytes());
            }
            None => {
                out.extend([0x80 | count, RR, 0, 0]);
                out.extend(ssrc.to_be_bytes());
            }
        }
        if let Some(b) = block {
            let lost = b.cumulative_lost.clamp(-0x80_0000, 0x7f_ffff) as u32 & 0x00ff_ffff;
            out.extend(b.ssrc.to_be_bytes());
            out.extend((u32::from(b.fraction_lost) << 24 | lost).to_be_bytes());
            for v in [b.highest_seq, b.jitter, b.lsr, b.dlsr] {
                out.extend(v.to_be_bytes());
            }
        }
        set_length(out, start);
        // SDES: one chunk, CNAME, the null item ending the list, zeros to a 32-bit boundary.
        let sdes = out.len();
        out.extend([0x81, SDES, 0, 0]);
        out.extend(ssrc.to_be_bytes());
        let cname = &self.cname.as_bytes()[..self.cname.len().min(255)];
        out.extend([1, cname.len() as u8]);
        out.extend(cname);
        out.push(0);
        while !(out.len() - sdes).is_multiple_of(4) {
            out.push(0);
        }
        set_length(out, sdes);
        self.sent_since = false;
        self.next = Some(now + self.interval(INTERVAL));
    }

    /// The report block on the peer's stream as of `now`; moves the interval on.
    fn block(&mut self, now: Instant, r: Receiving) -> ReportBlock {
        let expected = r.received + r.lost;
        let (prior_expected, prior_received) = self.prior;
        let expected_interval = expected.saturating_sub(prior_expected);
        let received_interval = r.received.saturating_sub(prior_received);
        let lost_interval = expected_interval.saturating_sub(received_interval);
        let fraction_lost = match expected_interval {
            0 => 0,
            e => ((lost_interval << 8) / e).min(255) as u8,
        };
        self.prior = (expected, r.received);
        let (lsr, dlsr) = match self.peer_sr {
            None => (0, 0),
            Some((lsr, at)) => {
                let d = now.saturating_duration_since(at);
                let dlsr = (d.as_micros() * 65_536 / 1_000_000).min(u128::from(u32::MAX));
                (lsr, dlsr as u32)
            }
        };
        ReportBlock {
            ssrc: r.ssrc,
            fraction_lost,
            cumulative_lost: r.lost.min(0x7f_ffff) as i32,
            highest_seq: r.highest_seq,
            jitter: r.jitter,
            lsr,
            dlsr,
        }
    }

    /// `base` randomised by a factor in 0.5–1.5 (§6.3.1: keeps reporters from synchronising).
    fn interval(&mut self, base: Duration) -> Duration {
        let u = (self.random() >> 11) as f64 / (1u64 << 53) as f64;
        base.mul_f64(0.5 + u)
    }

    fn random(&mut self) -> u64 {
        // xorshift64: the randomisation needs spread, not secrecy.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

/// Writes the length field (32-bit words less one) of the RTCP packet at `start` of `out`.
fn set_length(out: &mut [u8], start: usize) {
    let words = ((out.len() - start) / 4 - 1) as u16;
    out[start + 2..start + 4].copy_from_slice(&words.to_be_bytes());
}

/// `wall` as a 64-bit NTP timestamp.
pub fn ntp_time(wall: SystemTime) -> u64 {
    let d = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() + NTP_UNIX_OFFSET;
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// Jitter of `units` timestamp units in milliseconds at `clock` Hz (to the microsecond).
pub fn jitter_ms(units: u32, clock: u32) -> Option<f64> {
    (clock > 0).then(|| (f64::from(units) * 1_000_000.0 / f64::from(clock)).round() / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PCMU packet of SSRC 0x11223344 with `seq`, `ts` and 160 octets of payload.
    fn pcmu(seq: u16, ts: u32) -> Vec<u8> {
        let mut p = vec![0x80, 0];
        p.extend(seq.to_be_bytes());
        p.extend(ts.to_be_bytes());
        p.extend(0x1122_3344u32.to_be_bytes());
        p.extend([0xff; 160]);
        p
    }

    /// A wall time half a second past a whole second.
    fn wall() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_795_824_000_500)
    }

    #[test]
    fn ntp_time_counts_from_1900_with_a_binary_fraction() {
        let ntp = ntp_time(wall());
        assert_eq!(ntp >> 32, 1_795_824_000 + 2_208_988_800);
        assert_eq!(ntp & 0xffff_ffff, 0x8000_0000, "half a second");
    }

    #[test]
    fn a_sender_reports_an_sr_with_a_block_on_the_peer_and_its_cname() {
        let mut r = Reporter::new(42);
        r.set_clock(8000);
        let t0 = Instant::now();
        for i in 0..50u32 {
            let at = t0 + Duration::from_millis(u64::from(i) * 20);
            r.sent(at, &pcmu(i as u16, 1000 + 160 * i));
        }
        // The peer's SR arrived 250 ms before our report, NTP 0x0001_2345_6789_0000.
        let mut peer = vec![0x80, SR, 0, 6, 0, 0, 0, 9];
        peer.extend(0x0001_2345_6789_0000u64.to_be_bytes());
        peer.extend([0; 12]);
        let last = t0 + Duration::from_millis(49 * 20);
        let now = last + Duration::from_millis(10);
        let peer = parse(&peer).expect("the peer's SR");
        r.received(now - Duration::from_millis(250), &peer);
        let receiving = Receiving {
            ssrc: 9,
            highest_seq: 0x0001_0005,
            received: 90,
            lost: 10,
            jitter: 37,
        };
        let mut out = Vec::new();
        r.write_report(now, wall(), Some(receiving), &mut out);
        let ssrc = 0x1122_3344u32.to_be_bytes();
        let ntp = ntp_time(wall()).to_be_bytes();
        // 1000 + 49 × 160 = 8840, plus 10 ms (80 units) since that packet.
        let mut sr = vec![0x81, 200, 0, 12];
        sr.extend(ssrc);
        sr.extend(ntp);
        sr.extend(8920u32.to_be_bytes());
        sr.extend(50u32.to_be_bytes());
        sr.extend((50u32 * 160).to_be_bytes());
        // 10 of 100 expected lost: 25/256; LSR the middle 32 bits; DLSR 0.25 × 65536.
        sr.extend(9u32.to_be_bytes());
        sr.extend([25, 0, 0, 10]);
        sr.extend([0, 1, 0, 5]);
        sr.extend(37u32.to_be_bytes());
        sr.extend(0x2345_6789u32.to_be_bytes());
        sr.extend(16_384u32.to_be_bytes());
        assert_eq!(sr.len(), 52);
        assert_eq!(&out[..52], &sr[..]);
        // SDES: header, SSRC, CNAME (type 1, 21 octets), the null item: 32 octets, no padding.
        let cname = r.cname().as_bytes().to_vec();
        assert_eq!(cname.len(), 21, "16 hex digits and @csps");
        let mut sdes = vec![0x81, 202, 0, 7];
        sdes.extend(ssrc);
        sdes.extend([1, 21]);
        sdes.extend(&cname);
        sdes.push(0);
        assert_eq!(&out[52..], &sdes[..]);
        // And it reads back.
        let c = parse(&out).expect("our own report");
        assert_eq!(
            c.sender.map(|(s, i)| (s, i.packets)),
            Some((0x1122_3344, 50))
        );
        assert_eq!(c.reports.len(), 1);
        assert_eq!(c.cname.as_deref(), Some(r.cname()));
    }

    #[test]
    fn without_rtp_sent_since_the_last_report_it_is_an_rr_and_the_fraction_is_per_interval() {
        let mut r = Reporter::new(7);
        let t0 = Instant::now();
        let own = r.ssrc();
        let mut out = Vec::new();
        let seen = |received, lost| Receiving {
            ssrc: 5,
            highest_seq: 0,
            received,
            lost,
            jitter: 0,
        };
        r.write_report(t0, wall(), Some(seen(100, 0)), &mut out);
        let mut rr = vec![0x81, 201, 0, 7];
        rr.extend(own.to_be_bytes());
        rr.extend(5u32.to_be_bytes());
        rr.extend([0; 20]);
        assert_eq!(&out[..32], &rr[..]);
        assert_eq!(out[33], SDES);
        // The next interval: 50 more expected, 40 received: 10/50 = 51/256; cumulative 10.
        out.clear();
        r.write_report(t0, wall(), Some(seen(140, 10)), &mut out);
        assert_eq!(&out[8..16], &[0, 0, 0, 5, 51, 0, 0, 10]);
        // Nothing received since: no block (RC 0), an 8-octet RR.
        out.clear();
        r.write_report(t0, wall(), Some(seen(140, 10)), &mut out);
        assert_eq!(&out[..4], &[0x80, 201, 0, 1]);
        // After sending, an SR; after a report with nothing sent since, an RR with the same SSRC.
        r.sent(t0, &pcmu(1, 1));
        out.clear();
        r.write_report(t0, wall(), None, &mut out);
        assert_eq!(&out[..2], &[0x80, SR]);
        out.clear();
        r.write_report(t0, wall(), None, &mut out);
        assert_eq!(&out[..8], &[0x80, RR, 0, 1, 0x11, 0x22, 0x33, 0x44]);
    }

    #[test]
    fn reports_come_every_5_s_randomised_the_first_after_half() {
        let mut r = Reporter::new(99);
        let t0 = Instant::now();
        let first = r.poll_timeout(t0) - t0;
        assert!((1250..=3750).contains(&first.as_millis()), "{first:?}");
        assert!(!r.due(t0));
        assert!(r.due(t0 + first));
        let mut gaps = Vec::new();
        let mut now = t0 + first;
        for _ in 0..200 {
            r.write_report(now, wall(), None, &mut Vec::new());
            let next = r.poll_timeout(now);
            gaps.push((next - now).as_millis());
            now = next;
        }
        assert!(gaps.iter().all(|g| (2500..=7500).contains(g)), "{gaps:?}");
        let mean = gaps.iter().sum::<u128>() / gaps.len() as u128;
        assert!((4500..5500).contains(&mean), "{mean}");
        assert!(gaps.iter().any(|&g| g < 4000) && gaps.iter().any(|&g| g > 6000));
    }

    #[test]
    fn the_peers_report_on_our_stream_gives_its_loss_and_jitter() {
        let mut r = Reporter::new(3);
        r.sent(Instant::now(), &pcmu(1, 1));
        // An RR from SSRC 9 with two blocks: one on someone else, one on us; cumulative lost
        // -1 (duplicates) sign-extends.
        let mut rr = vec![0x82, RR, 0, 13, 0, 0, 0, 9];
        rr.extend([0, 0, 0, 1, 200, 0, 0, 3]);
        rr.extend([0; 16]);
        rr.extend(0x1122_3344u32.to_be_bytes());
        rr.extend([64, 0xff, 0xff, 0xff]);
        rr.extend([0, 0, 1, 0]);
        rr.extend(160u32.to_be_bytes());
        rr.extend([0; 8]);
        let mut leg = super::super::LegCounters::default();
        leg.set_audio(Some((0, 8000)));
        let c = leg.count_rtcp(&rr, Some(r.ssrc())).expect("an RR");
        assert_eq!(c.reports.len(), 2);
        assert_eq!(c.reports[0].cumulative_lost, 3);
        let ours = c.report_on(0x1122_3344).expect("ours");
        assert_eq!((ours.cumulative_lost, ours.highest_seq), (-1, 256));
        // 64/256 lost is 250 per mille; 160 units at 8 kHz are 20 ms.
        assert_eq!(leg.rtcp_packets, 1);
        assert_eq!(leg.remote_loss_permille, Some(250));
        assert_eq!(leg.remote_jitter_ms, Some(20.0));
        // A relayed call (no SSRC of ours): the first block counts.
        leg.count_rtcp(&rr, None);
        assert_eq!(leg.remote_loss_permille, Some(782), "200/256");
        // Not RTCP: counted, nothing read.
        assert!(leg.count_rtcp(&[0x80, 0], None).is_none());
        assert_eq!(leg.rtcp_packets, 3);
    }

    #[test]
    fn the_block_on_the_peer_is_what_its_leg_counters_counted() {
        let mut leg = super::super::LegCounters::default();
        assert_eq!(leg.receiving(), None, "nothing received yet");
        leg.set_audio(Some((0, 8000)));
        let t0 = Instant::now();
        // 65534, 65535, then (wrapped) 1 and 2: 0 is lost; 20 ms of timestamps arriving 10, 30
        // and 10 ms apart.
        for (i, seq) in [65534u16, 65535, 1, 2].into_iter().enumerate() {
            let at = t0 + Duration::from_millis([0, 10, 40, 50][i]);
            leg.count_rtp(172, &pcmu(seq, 160 * i as u32), Some(at));
        }
        let r = leg.receiving().expect("receiving");
        assert_eq!((r.ssrc, r.highest_seq), (0x1122_3344, 0x1_0002));
        assert_eq!((r.received, r.lost), (4, 1));
        // |D| = 80 units each time: J = 5, 9.69, 14.08.
        assert_eq!(r.jitter, 14);
    }

    #[test]
    fn malformed_rtcp_is_an_error_not_a_panic() {
        assert_eq!(parse(&[]), Err(RtcpError::Truncated));
        assert_eq!(parse(&[0x80, RR, 0]), Err(RtcpError::Truncated));
        assert_eq!(
            parse(&[0x40, RR, 0, 1, 0, 0, 0, 0]),
            Err(RtcpError::Version(1))
        );
        // A length past the datagram.
        assert_eq!(
            parse(&[0x80, RR, 0, 9, 0, 0, 0, 0]),
            Err(RtcpError::Truncated)
        );
        // Three report blocks announced, none there.
        assert_eq!(
            parse(&[0x83, RR, 0, 1, 0, 0, 0, 0]),
            Err(RtcpError::Count(3))
        );
        // An SR too short for its sender information.
        assert_eq!(
            parse(&[0x80, SR, 0, 1, 0, 0, 0, 0]),
            Err(RtcpError::Count(0))
        );
        // Padding longer than the packet.
        assert_eq!(
            parse(&[0xa0, RR, 0, 1, 0, 0, 0, 99]),
            Err(RtcpError::Truncated)
        );
        // An SDES whose item runs past its packet, and one without a CNAME: read, no CNAME.
        let c = parse(&[0x81, SDES, 0, 2, 0, 0, 0, 1, 1, 200, 0, 0]).expect("sdes");
        assert_eq!(c.cname, None);
        // Every prefix and every byte flipped of a valid report: never a panic.
        let mut r = Reporter::new(1);
        r.sent(Instant::now(), &pcmu(1, 1));
        let mut good = Vec::new();
        let seen = Receiving {
            received: 3,
            ..Receiving::default()
        };
        r.write_report(Instant::now(), wall(), Some(seen), &mut good);
        for n in 0..good.len() {
            let _ = parse(&good[..n]);
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[n] ^= 1 << bit;
                let _ = parse(&bad);
            }
        }
        // An unknown type (BYE, APP) is skipped.
        let mut with_bye = good.clone();
        with_bye.extend([0x81, 203, 0, 1, 0, 0, 0, 1]);
        assert_eq!(parse(&with_bye).map(|c| c.reports.len()), Ok(1));
    }
}
