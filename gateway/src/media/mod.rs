//! Media: the RTP/RTCP relay of a call (no decoding while both legs use the same codec), the UDP
//! port pool it takes ports from (`Data.System.MinRtpPort..MaxRtpPort`), and latching, the rule
//! that decides which source a leg's media is accepted from. A phone behind NAT writes its private
//! address into SDP, so that address is not trusted: a leg latches on to the first packet from the
//! IP its SDP or its signalling came from, sends back to where it latched (symmetric RTP), and
//! drops and counts packets from anywhere else. `Latch` is sans-IO; `relay` is the socket side the
//! call task drives. `codec` holds the codecs (G.711, G.722, Opus) and the `rubato` resampler
//! that transcoding between legs with different codecs is built on; `rtp` reads the packets the
//! media core decodes and numbers the streams it sends itself; `moh` is the music on hold the
//! gateway plays to a held party; `mixer` mixes a conference; `dtmf` reads and writes RFC 4733
//! events and SIP INFO digits for a call whose legs send DTMF differently.

pub mod codec;
pub mod dtmf;
pub mod mixer;
pub mod moh;
pub mod relay;
pub mod rtcp;
pub mod rtp;
pub mod srtp;
pub mod transcode;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

/// Packet counters of one direction of one leg (what the leg sent to the gateway).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct LegCounters {
    /// RTP packets accepted and forwarded.
    pub rtp_packets: u64,
    /// RTP bytes accepted.
    pub rtp_bytes: u64,
    /// RTP packets lost on the way from the leg: expected from the sequence numbers, less
    /// received ([`rtp::Reception`], RFC 3550 §6.4.1).
    pub rtp_lost: u64,
    /// Interarrival jitter of the leg's audio in milliseconds ([`rtp::Jitter`], RFC 3550
    /// §6.4.1); `null` while the leg's RTP clock is unknown or before its second packet.
    pub jitter_ms: Option<f64>,
    /// The highest `jitter_ms` seen so far in the call (across codec and source changes).
    pub jitter_max_ms: Option<f64>,
    /// RTCP packets accepted (and forwarded, unless the gateway reports to the other leg
    /// itself: a transcoded call).
    pub rtcp_packets: u64,
    /// How much of the RTP it receives the leg said it lost, in per mille: the fraction lost
    /// of its last RTCP report (RFC 3550 §6.4.1); `null` before a report came.
    pub remote_loss_permille: Option<u32>,
    /// The interarrival jitter the leg last reported of the RTP it receives, in milliseconds;
    /// `null` before a report came or while its RTP clock is unknown.
    pub remote_jitter_ms: Option<f64>,
    /// Packets from an unexpected address (before or after latching), dropped.
    pub dropped_unexpected: u64,
    /// Packets that are not RTP/RTCP version 2, dropped.
    pub dropped_malformed: u64,
    /// Packets that could not be sent on (no destination yet, socket error).
    pub dropped_unsent: u64,
    /// SRTP/SRTCP packets that failed authentication or the replay check, dropped.
    pub dropped_srtp: u64,
    /// The sequence accounting behind `rtp_lost`.
    #[serde(skip)]
    reception: rtp::Reception,
    /// The estimator behind `jitter_ms`.
    #[serde(skip)]
    jitter: rtp::Jitter,
}

impl LegCounters {
    /// Counts one accepted RTP packet: `wire_len` bytes as received, `plain` its RTP (after
    /// SRTP), whose sequence number and SSRC feed the loss count, and, with its `arrival`
    /// time, its payload type and timestamp the jitter.
    pub fn count_rtp(&mut self, wire_len: usize, plain: &[u8], arrival: Option<Instant>) {
        self.rtp_packets += 1;
        self.rtp_bytes += wire_len as u64;
        let Some(h) = plain.get(..12) else {
            return;
        };
        let seq = u16::from_be_bytes([h[2], h[3]]);
        let ssrc = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
        if self.reception.on_packet(ssrc, seq) {
            self.jitter.restart();
        }
        self.rtp_lost = self.reception.lost();
        if let Some(at) = arrival {
            let ts = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
            self.jitter.on_packet(at, h[1] & 0x7f, ts);
            self.jitter_ms = self.jitter.ms();
            self.note_jitter_max();
        }
    }

    /// Counts one accepted RTCP packet (plain, after SRTCP) and keeps what the leg reports in
    /// it about the RTP it receives: the report block on `ours` (the SSRC the gateway sends it
    /// when it is the source), else the first block (a relayed call: on the other leg's
    /// stream). The packet as read, or `None` when it is not valid RTCP (still counted: it
    /// passed the latch and SRTCP).
    pub fn count_rtcp(&mut self, plain: &[u8], ours: Option<u32>) -> Option<rtcp::Compound> {
        self.rtcp_packets += 1;
        let report = rtcp::parse(plain).ok()?;
        let block = match ours {
            Some(ssrc) => report.report_on(ssrc),
            None => report.reports.first(),
        };
        if let Some(b) = block {
            self.remote_loss_permille = Some((u32::from(b.fraction_lost) * 1000).div_ceil(256));
            self.remote_jitter_ms = self
                .jitter
                .clock()
                .and_then(|c| rtcp::jitter_ms(b.jitter, c));
        }
        Some(report)
    }

    /// The RTP clock of the leg's audio, when known.
    pub fn audio_clock(&self) -> Option<u32> {
        self.jitter.clock()
    }

    /// What an RTCP report block on the leg's stream says: its SSRC, highest sequence number,
    /// packets received and lost, and jitter; `None` before its first packet.
    pub fn receiving(&self) -> Option<rtcp::Receiving> {
        let (ssrc, highest_seq) = self.reception.highest()?;
        Some(rtcp::Receiving {
            ssrc,
            highest_seq,
            received: self.reception.received(),
            lost: self.reception.lost(),
            jitter: self.jitter.units().unwrap_or(0),
        })
    }

    /// The leg's audio payload type and RTP clock, which its jitter is measured in (`None`:
    /// unknown, no jitter); a change starts the estimate afresh.
    pub fn set_audio(&mut self, audio: Option<(u8, u32)>) {
        self.jitter.set_audio(audio);
        self.jitter_ms = self.jitter.ms();
    }

    fn note_jitter_max(&mut self) {
        if let Some(j) = self.jitter_ms
            && self.jitter_max_ms.is_none_or(|m| j > m)
        {
            self.jitter_max_ms = Some(j);
        }
    }
}

/// Which source one leg's packets are accepted from.
#[derive(Clone, Debug, Default)]
pub struct Latch {
    /// IPs a first packet may come from: the SDP address and the signalling source.
    expected: Vec<IpAddr>,
    /// Where the SDP asked for media (used until latched).
    sdp: Option<SocketAddr>,
    /// The source latched on to.
    latched: Option<SocketAddr>,
    /// The source of the latch a new SDP address released, and how many of its packets were
    /// refused since (see [`FORMER_GRACE`]).
    former: Option<(SocketAddr, u32)>,
}

/// Packets from the source of a released latch refused before it may latch again (about half
/// a second of 20 ms packets). When a leg changes hands (a transfer, a takeover) between two
/// phones behind one NAT, the old phone's last packets come from an expected IP and would
/// otherwise take the latch, and the new phone's media would be dropped; a phone that only
/// moved its SDP port but still sends from the old source gets its latch back after these.
const FORMER_GRACE: u32 = 25;

impl Latch {
    /// Sets where the leg's SDP says it receives and which IPs may send its media. A latch on
    /// an address outside the new set is released (a new answer from another device), and so is
    /// one whose SDP address moved (a re-INVITE or UPDATE naming a new port: the phone's media
    /// now comes from elsewhere, so the relay latches afresh).
    pub fn expect(&mut self, sdp: Option<SocketAddr>, signalling: IpAddr) {
        let sdp = sdp.filter(|a| !a.ip().is_unspecified() && a.port() != 0);
        if self.sdp.is_some() && sdp.is_some() && self.sdp != sdp {
            self.release();
        }
        let mut ips = vec![signalling.to_canonical()];
        if let Some(a) = sdp {
            let ip = a.ip().to_canonical();
            if !ip.is_unspecified() && !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        if let Some(l) = self.latched
            && !ips.contains(&l.ip().to_canonical())
        {
            self.release();
        }
        self.expected = ips;
        // An SDP without a usable address (old-style hold, c=0.0.0.0) leaves the last one.
        if sdp.is_some() {
            self.sdp = sdp;
        }
    }

    fn release(&mut self) {
        if let Some(l) = self.latched.take() {
            self.former = Some((l, 0));
        }
    }

    /// True when a packet from `from` is accepted (latching on to it if nothing is latched yet).
    /// A packet from exactly the SDP address re-latches: when a leg changes hands (a transfer)
    /// on one host, the old phone's last packets may come first from an expected IP. For the
    /// same reason the source of a released latch waits [`FORMER_GRACE`] packets.
    pub fn accept(&mut self, from: SocketAddr) -> bool {
        match self.latched {
            Some(l) if l == from => true,
            Some(_) if self.sdp == Some(from) => {
                self.latched = Some(from);
                true
            }
            Some(_) => false,
            None if self.expected.contains(&from.ip().to_canonical()) => {
                if let Some((f, refused)) = self.former.as_mut()
                    && *f == from
                    && self.sdp != Some(from)
                    && *refused < FORMER_GRACE
                {
                    *refused += 1;
                    return false;
                }
                self.former = None;
                self.latched = Some(from);
                true
            }
            None => false,
        }
    }

    /// Where to send this leg's media: the latched source, else the SDP address.
    pub fn destination(&self) -> Option<SocketAddr> {
        self.latched.or(self.sdp)
    }

    /// The latched source, if any.
    pub fn latched(&self) -> Option<SocketAddr> {
        self.latched
    }
}

/// True for an RTP or RTCP packet (version 2, at least a fixed header).
pub fn is_rtp_v2(p: &[u8]) -> bool {
    p.len() >= 8 && p[0] >> 6 == 2
}

/// The media port range, shared by every call on this server; pairs are even RTP ports with RTCP
/// on the next port (RFC 3550 §11).
#[derive(Debug)]
pub struct PortPool {
    next: AtomicU32,
}

impl Default for PortPool {
    fn default() -> Self {
        Self::new()
    }
}

impl PortPool {
    /// A pool; the range comes with each allocation so a configuration change applies at once.
    pub fn new() -> PortPool {
        PortPool {
            next: AtomicU32::new(0),
        }
    }

    /// Binds an RTP/RTCP socket pair on `ip` within `min..=max`, trying each even port at most
    /// once, starting after the last one handed out (so ports are not reused at once).
    pub fn bind_pair(
        &self,
        ip: IpAddr,
        min: u16,
        max: u16,
    ) -> std::io::Result<(std::net::UdpSocket, std::net::UdpSocket)> {
        let first = u32::from(min.div_ceil(2) * 2);
        let last = u32::from(max);
        if first + 1 > last {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "RTP port range holds no even/odd pair",
            ));
        }
        let pairs = (last - first).div_ceil(2);
        for _ in 0..pairs {
            let n = self.next.fetch_add(1, Ordering::Relaxed) % pairs;
            let port = (first + 2 * n) as u16;
            let Ok(rtp) = std::net::UdpSocket::bind(SocketAddr::new(ip, port)) else {
                continue;
            };
            let Ok(rtcp) = std::net::UdpSocket::bind(SocketAddr::new(ip, port + 1)) else {
                continue;
            };
            rtp.set_nonblocking(true)?;
            rtcp.set_nonblocking(true)?;
            return Ok((rtp, rtcp));
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "no free RTP port pair in Data.System.MinRtpPort..MaxRtpPort",
        ))
    }
}

/// The local address the kernel would use towards `peer` (no packet is sent): what a gateway
/// listening on 0.0.0.0 writes into Via, Contact and SDP.
pub fn local_ip_towards(peer: IpAddr) -> Option<IpAddr> {
    let bind: SocketAddr = if peer.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = std::net::UdpSocket::bind(bind).ok()?;
    s.connect(SocketAddr::new(peer, 9)).ok()?;
    Some(s.local_addr().ok()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    /// A PCMU packet of `ssrc` with `seq` and `ts`.
    fn pcmu(ssrc: u32, seq: u16, ts: u32) -> Vec<u8> {
        let mut p = vec![0x80, 0];
        p.extend(seq.to_be_bytes());
        p.extend(ts.to_be_bytes());
        p.extend(ssrc.to_be_bytes());
        p.extend([0xff; 160]);
        p
    }

    #[test]
    fn a_new_ssrc_or_a_sequence_jump_restarts_the_jitter_and_no_clock_means_none() {
        let mut c = LegCounters::default();
        let t0 = Instant::now();
        let ms = |n: u64| t0 + std::time::Duration::from_millis(n);
        c.count_rtp(172, &pcmu(1, 10, 0), Some(ms(0)));
        c.count_rtp(172, &pcmu(1, 11, 160), Some(ms(30)));
        assert_eq!(c.jitter_ms, None, "no clock yet");
        c.set_audio(Some((0, 8000)));
        for (i, at) in [0, 10, 40, 50, 80].into_iter().enumerate() {
            c.count_rtp(
                172,
                &pcmu(1, 20 + i as u16, 3200 + 160 * i as u32),
                Some(ms(at)),
            );
        }
        assert!(c.jitter_ms.is_some_and(|j| j > 1.0), "{c:?}");
        // A new SSRC, its timestamps anywhere, 20 ms apart: no D across the change, J from 0.
        c.count_rtp(172, &pcmu(2, 7, 999_999), Some(ms(95)));
        assert_eq!(c.jitter_ms, None);
        c.count_rtp(172, &pcmu(2, 8, 999_999 + 160), Some(ms(115)));
        assert_eq!(c.jitter_ms, Some(0.0));
        // A sequence jump of the same SSRC (a restarted stream) likewise.
        c.count_rtp(172, &pcmu(2, 30_000, 5), Some(ms(500)));
        c.count_rtp(172, &pcmu(2, 30_001, 165), Some(ms(520)));
        assert_eq!(c.jitter_ms, Some(0.0));
        assert_eq!(c.rtp_packets, 11);
        // Without an arrival time (a reader that cannot tell) nothing changes.
        c.count_rtp(172, &pcmu(2, 30_002, 9_000), None);
        assert_eq!(c.jitter_ms, Some(0.0));
        // The highest estimate of the call outlives the restarts.
        let max = c.jitter_max_ms.expect("a maximum");
        assert!(max > 1.0, "{c:?}");
        c.set_audio(Some((8, 8000)));
        assert_eq!((c.jitter_ms, c.jitter_max_ms), (None, Some(max)));
    }

    #[test]
    fn latches_on_signalling_ip_not_private_sdp() {
        let mut l = Latch::default();
        // The phone wrote its private address; its packets come from the NAT's public one.
        l.expect(Some(a("10.0.0.7:4000")), "203.0.113.5".parse().expect("ip"));
        assert_eq!(l.destination(), Some(a("10.0.0.7:4000")));
        assert!(
            !l.accept(a("198.51.100.1:4000")),
            "a stranger is not latched"
        );
        assert!(l.accept(a("203.0.113.5:31000")));
        assert_eq!(
            l.destination(),
            Some(a("203.0.113.5:31000")),
            "symmetric RTP"
        );
        assert!(
            !l.accept(a("203.0.113.5:31002")),
            "after latching only that source"
        );
        assert!(l.accept(a("203.0.113.5:31000")));
        // A new answer from another device releases the latch.
        l.expect(Some(a("192.0.2.9:5000")), "192.0.2.9".parse().expect("ip"));
        assert_eq!(l.latched(), None);
        assert!(l.accept(a("192.0.2.9:5000")));
    }

    #[test]
    fn the_sdp_address_itself_takes_the_latch_back() {
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        let mut l = Latch::default();
        // A transfer on one host: the new phone's SDP, but the old phone's packet came first.
        l.expect(Some(a("127.0.0.1:6000")), ip);
        assert!(l.accept(a("127.0.0.1:4000")));
        assert!(l.accept(a("127.0.0.1:6000")), "the SDP address re-latches");
        assert_eq!(l.destination(), Some(a("127.0.0.1:6000")));
        assert!(
            !l.accept(a("127.0.0.1:4000")),
            "the old phone is dropped now"
        );
    }

    #[test]
    fn two_phones_behind_one_nat_the_old_ones_last_packets_do_not_take_the_latch() {
        let ip: IpAddr = "203.0.113.5".parse().expect("ip");
        let mut l = Latch::default();
        l.expect(Some(a("10.0.0.7:4000")), ip);
        assert!(l.accept(a("203.0.113.5:31000")));
        // A takeover by another phone behind the same NAT: a new private SDP address.
        l.expect(Some(a("10.0.0.8:4000")), ip);
        for _ in 0..3 {
            assert!(
                !l.accept(a("203.0.113.5:31000")),
                "the old phone's last packets"
            );
        }
        assert!(l.accept(a("203.0.113.5:32000")), "the new phone latches");
        assert!(!l.accept(a("203.0.113.5:31000")));
        assert_eq!(l.destination(), Some(a("203.0.113.5:32000")));

        // A phone that moved its SDP port but still sends from its old source: latched again
        // after the grace.
        l.expect(Some(a("10.0.0.8:4100")), ip);
        let refused = (0..100)
            .take_while(|_| !l.accept(a("203.0.113.5:32000")))
            .count();
        assert_eq!(refused, FORMER_GRACE as usize);
        assert_eq!(l.latched(), Some(a("203.0.113.5:32000")));
    }

    #[test]
    fn same_sdp_keeps_the_latch_a_moved_port_releases_it() {
        let ip: IpAddr = "203.0.113.5".parse().expect("ip");
        let mut l = Latch::default();
        l.expect(Some(a("10.0.0.7:4000")), ip);
        assert!(l.accept(a("203.0.113.5:31000")));
        // A hold re-INVITE naming the same address: media keeps flowing to the NAT's port.
        l.expect(Some(a("10.0.0.7:4000")), ip);
        assert_eq!(l.latched(), Some(a("203.0.113.5:31000")));
        // Old-style hold (c=0.0.0.0) says nothing about where media comes from.
        l.expect(Some(a("0.0.0.0:4000")), ip);
        assert_eq!(l.latched(), Some(a("203.0.113.5:31000")));
        // The phone moved its media port: latch afresh.
        l.expect(Some(a("10.0.0.7:4100")), ip);
        assert_eq!(l.latched(), None);
        assert_eq!(l.destination(), Some(a("10.0.0.7:4100")));
        assert!(l.accept(a("203.0.113.5:31100")));
    }

    #[test]
    fn pool_hands_out_even_pairs_in_range() {
        let pool = PortPool::new();
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        let (r1, c1) = pool.bind_pair(ip, 41001, 41010).expect("pair");
        let (r2, _c2) = pool.bind_pair(ip, 41001, 41010).expect("pair");
        let p1 = r1.local_addr().expect("addr").port();
        let p2 = r2.local_addr().expect("addr").port();
        assert!(p1 % 2 == 0 && (41002..=41010).contains(&p1));
        assert_eq!(c1.local_addr().expect("addr").port(), p1 + 1);
        assert_ne!(p1, p2);
        assert!(pool.bind_pair(ip, 41001, 41001).is_err());
    }

    #[test]
    fn rtp_version_check() {
        assert!(is_rtp_v2(&[0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!is_rtp_v2(&[0x40, 0, 0, 1, 0, 0, 0, 0]));
        assert!(!is_rtp_v2(&[0x80]));
    }
}
