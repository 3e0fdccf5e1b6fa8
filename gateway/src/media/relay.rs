//! The socket side of a call's media: two RTP/RTCP socket pairs (one facing each leg), packets
//! passed from one leg to the other unchanged. The call task owns it and awaits
//! [`Relay::forward`] in its `select!`; nothing here is shared with another task.
//!
//! Each wake-up reads what is queued on the ready socket with one `recvmmsg` (one packet per
//! 20 ms is the common case): a short read means the queue was empty, so the readiness is
//! cleared without the extra `recvfrom` that would only answer `EAGAIN` — that call was a third
//! of the relay's receive syscalls. The receive buffers are one per worker thread, not per call.
//!
//! RTCP passes between the legs like RTP, except where the gateway is the source of what a leg
//! hears: while music on hold plays to it, the gateway also reports on the music's stream, and
//! in a transcoded call it reports to each leg on the stream it sends that leg instead of passing
//! on the other leg's RTCP, whose SSRC, timestamps and counts describe another codec's stream
//! ([`super::rtcp::Reporter`], one compound report per ~5 s, checked when packets pass).

use std::cell::RefCell;
use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use bytes::BytesMut;

use super::dtmf::{Digit, EventReceiver, EventSender, EventSplice};
use super::rtcp::Reporter;
use super::rtp::{self, RtpSender};
use super::srtp::{SrtpKeys, SrtpSession};
use super::transcode::{LegFormat, Transcoder};
use super::{Latch, LegCounters, is_rtp_v2};

/// Datagrams read per `recvmmsg`.
const BATCH: usize = 16;
/// Longest datagram read whole (longer ones arrive truncated, as with a 2 KiB `recvfrom`).
const MAX_DATAGRAM: usize = 2048;

/// One leg's sockets (readiness registered with the runtime; sends go straight out).
struct Sockets {
    rtp: AsyncFd<UdpSocket>,
    rtcp: AsyncFd<UdpSocket>,
}

impl Sockets {
    // `AsyncFd::with_interest` is deprecated because a wrapped type could change the fd it
    // reports; a std `UdpSocket` owns its fd for its whole life, so registering it is sound.
    #[allow(deprecated)]
    fn new(pair: (UdpSocket, UdpSocket)) -> std::io::Result<Sockets> {
        Ok(Sockets {
            rtp: AsyncFd::with_interest(pair.0, Interest::READABLE)?,
            rtcp: AsyncFd::with_interest(pair.1, Interest::READABLE)?,
        })
    }
}

/// One leg's latching, SRTP and counters.
#[derive(Default)]
struct Side {
    latch: Latch,
    rtcp_latch: Latch,
    /// Set while the leg speaks SRTP (SDES keys from the call).
    srtp: Option<SrtpSession>,
    /// What this leg sent us.
    counters: LegCounters,
    /// The gateway plays music on hold to this leg: what the other leg sends is not passed on.
    music: bool,
    /// Set while the legs' codecs differ: turns what this leg sends into the other's codec.
    transcoder: Option<Transcoder>,
    /// DTMF interworking, set while only this leg accepted telephone-event: its events are
    /// read here (not passed on) and the digits the other leg sends by SIP INFO played to it.
    dtmf: Option<DtmfSide>,
    /// The gateway's own RTCP to this leg, while it is the source of what the leg hears (music
    /// on hold, a transcoded call).
    reporter: Option<Reporter>,
}

/// One telephone-event leg of a call whose other leg sends DTMF by SIP INFO.
struct DtmfSide {
    /// The leg's telephone-event payload type and clock.
    payload_type: u8,
    clock: u32,
    /// Reads the leg's events.
    receiver: EventReceiver,
    /// Digits read, for the call to send on as INFO.
    digits: Vec<Digit>,
    /// Plays the other leg's digits to this leg, inside the audio stream it hears (`splice`),
    /// or, before any audio went to it, in a stream of the gateway's own (as music on hold
    /// is), its timestamps following the wall clock from `epoch`.
    sender: EventSender,
    splice: EventSplice,
    stream: RtpSender,
    epoch: Option<(Instant, u32)>,
    /// The start timestamp of the event playing.
    event_ts: u32,
}

impl DtmfSide {
    fn new(payload_type: u8, clock: u32) -> DtmfSide {
        DtmfSide {
            payload_type,
            clock,
            receiver: EventReceiver::new(clock),
            digits: Vec::new(),
            sender: EventSender::new(clock, Duration::from_millis(50)),
            splice: EventSplice::new(clock),
            stream: RtpSender::new(),
            epoch: None,
            event_ts: 0,
        }
    }

    /// The next due event packet, written into `out`.
    fn poll(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        let Some(p) = self.sender.poll(now) else {
            return false;
        };
        out.clear();
        if let Some(h) = self.splice.event(now, p.marker) {
            let header = rtp::Header {
                payload_type: self.payload_type,
                // A new event starts a talk spurt (RFC 4733 §2.5.1.1).
                marker: p.marker,
                sequence: h.sequence,
                timestamp: h.timestamp,
                ssrc: h.ssrc,
            };
            return rtp::write(header, &p.event.to_bytes(), out);
        }
        if p.marker {
            let (t0, ts0) = *self.epoch.get_or_insert((now, self.stream.timestamp()));
            let ticks = now.duration_since(t0).as_micros() * u128::from(self.clock) / 1_000_000;
            self.event_ts = ts0.wrapping_add(ticks as u32);
            // A new event starts a talk spurt: the marker bit (RFC 4733 §2.5.1.1).
            self.stream.skip(0);
        }
        self.stream
            .write_at(self.payload_type, &p.event.to_bytes(), self.event_ts, out);
        true
    }
}

/// A packet as it goes on: the bytes received, or what SRTP made of them.
enum Packet<'p> {
    Wire(&'p [u8]),
    Owned(BytesMut),
}

impl std::ops::Deref for Packet<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Packet::Wire(p) => p,
            Packet::Owned(b) => b,
        }
    }
}

impl Side {
    fn expect(&mut self, sdp: Option<SocketAddr>, signalling: IpAddr) {
        self.latch.expect(sdp, signalling);
        let rtcp = sdp.map(|a| SocketAddr::new(a.ip(), a.port().wrapping_add(1)));
        self.rtcp_latch.expect(rtcp, signalling);
    }

    /// Checks and counts one packet from this leg; what goes on to the other leg (decrypted
    /// when this leg speaks SRTP), or `None` when it is dropped. An SRTP packet must
    /// authenticate before it may latch: a forged one cannot steal the leg's media. `arrival`
    /// is when its batch was read (the jitter's clock).
    fn accept<'p>(
        &mut self,
        packet: &'p [u8],
        src: SocketAddr,
        rtcp: bool,
        arrival: Instant,
    ) -> Option<Packet<'p>> {
        if !is_rtp_v2(packet) {
            self.counters.dropped_malformed += 1;
            return None;
        }
        let plain = match self.srtp.as_mut() {
            None => Packet::Wire(packet),
            Some(s) => match s.unprotect(packet, rtcp) {
                Ok(p) => Packet::Owned(p),
                Err(e) => {
                    if self.counters.dropped_srtp == 0 {
                        // The first one only: a stream of forgeries must not flood the log.
                        tracing::info!(%src, rtcp, "SRTP packet dropped: {e}");
                    }
                    self.counters.dropped_srtp += 1;
                    return None;
                }
            },
        };
        let latch = if rtcp {
            &mut self.rtcp_latch
        } else {
            &mut self.latch
        };
        if !latch.accept(src) {
            self.counters.dropped_unexpected += 1;
            return None;
        }
        if rtcp {
            let ours = self.reporter.as_ref().map(Reporter::ssrc);
            if let Some(report) = self.counters.count_rtcp(&plain, ours)
                && let Some(r) = self.reporter.as_mut()
            {
                r.received(arrival, &report);
            }
        } else {
            self.counters.count_rtp(packet.len(), &plain, Some(arrival));
        }
        Some(plain)
    }

    /// Audio on its way to this leg, renumbered around the events the gateway plays to it
    /// (see [`EventSplice`]); `None` while an event plays (withheld on purpose, not lost).
    fn splice<'p>(&mut self, packet: Packet<'p>) -> Option<Packet<'p>> {
        let Some(d) = self.dtmf.as_mut() else {
            return Some(packet);
        };
        let mut owned = match packet {
            Packet::Owned(b) => b,
            Packet::Wire(p) => BytesMut::from(p),
        };
        d.splice
            .audio(Instant::now(), &mut owned[..], d.sender.playing())
            .then_some(Packet::Owned(owned))
    }

    /// `packet` as this leg must receive it (protected when it speaks SRTP).
    fn outgoing<'p>(&mut self, packet: Packet<'p>, rtcp: bool) -> Option<Packet<'p>> {
        match self.srtp.as_mut() {
            None => Some(packet),
            Some(s) => s.protect(&packet, rtcp).ok().map(Packet::Owned),
        }
    }

    /// Starts (`on`) or stops the gateway's own reports to this leg.
    fn report(&mut self, on: bool) {
        match (on, self.reporter.is_some()) {
            (true, false) => {
                let mut r = Reporter::new(rand::random());
                if let Some(clock) = self.counters.audio_clock() {
                    r.set_clock(clock);
                }
                self.reporter = Some(r);
            }
            (false, true) => self.reporter = None,
            _ => {}
        }
    }

    /// Sends this leg the gateway's report when one is due at `now`, from `sock` (the relay's
    /// RTCP socket facing it), SRTCP-protected when the leg speaks SRTP.
    fn send_report(&mut self, sock: &UdpSocket, now: Instant) {
        let Some(r) = self.reporter.as_mut() else {
            return;
        };
        if !r.due(now) {
            return;
        }
        let mut report = Vec::with_capacity(96);
        r.write_report(
            now,
            SystemTime::now(),
            self.counters.receiving(),
            &mut report,
        );
        let Some(dest) = self.rtcp_latch.destination() else {
            return;
        };
        if let Some(p) = self.outgoing(Packet::Wire(&report), true) {
            let _ = sock.send_to(&p, dest);
        }
    }

    fn set_srtp(&mut self, keys: Option<&SrtpKeys>) {
        self.srtp = keys.and_then(|k| match SrtpSession::new(k) {
            Ok(s) => Some(s),
            Err(e) => {
                // Keys were checked when their SDP was read; this is not expected.
                tracing::warn!("SRTP keys refused: {e}");
                None
            }
        });
    }
}

/// Which socket a packet arrived on.
#[derive(Clone, Copy)]
enum Port {
    ARtp,
    ARtcp,
    BRtp,
    BRtcp,
}

/// Receive buffers of one `recvmmsg`, one set per worker thread (a call's `forward` never
/// awaits while it holds them).
struct Scratch {
    bufs: Vec<[u8; MAX_DATAGRAM]>,
    headers: MultiHeaders<SockaddrStorage>,
    /// Length and source of each datagram of the last read.
    got: Vec<(usize, Option<SocketAddr>)>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        bufs: vec![[0; MAX_DATAGRAM]; BATCH],
        headers: MultiHeaders::preallocate(BATCH, None),
        got: Vec::with_capacity(BATCH),
    });
}

/// Reads up to [`BATCH`] datagrams without blocking into `s.bufs`, their lengths and sources
/// into `s.got`; `WouldBlock` when none is queued.
fn recv_batch(sock: &UdpSocket, s: &mut Scratch) -> std::io::Result<usize> {
    let Scratch { bufs, headers, got } = s;
    got.clear();
    let mut iovs: Vec<[IoSliceMut<'_>; 1]> = bufs
        .iter_mut()
        .map(|b| [IoSliceMut::new(&mut b[..])])
        .collect();
    let results = recvmmsg(
        sock.as_raw_fd(),
        headers,
        iovs.iter_mut(),
        MsgFlags::MSG_DONTWAIT,
        None,
    )
    .map_err(std::io::Error::from)?;
    for r in results {
        let src = r.address.and_then(|a: SockaddrStorage| {
            a.as_sockaddr_in()
                .map(|v4| SocketAddr::V4((*v4).into()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into())))
        });
        got.push((r.bytes.min(MAX_DATAGRAM), src));
    }
    Ok(got.len())
}

/// The relay of one call.
pub struct Relay {
    a_socks: Sockets,
    b_socks: Sockets,
    a: Side,
    b: Side,
}

impl Relay {
    /// A relay over two bound socket pairs (from [`super::PortPool::bind_pair`]).
    pub fn new(a: (UdpSocket, UdpSocket), b: (UdpSocket, UdpSocket)) -> std::io::Result<Relay> {
        Ok(Relay {
            a_socks: Sockets::new(a)?,
            b_socks: Sockets::new(b)?,
            a: Side::default(),
            b: Side::default(),
        })
    }

    /// The RTP address leg A is told to send to.
    pub fn addr_a(&self) -> std::io::Result<SocketAddr> {
        self.a_socks.rtp.get_ref().local_addr()
    }

    /// The RTP address leg B is told to send to.
    pub fn addr_b(&self) -> std::io::Result<SocketAddr> {
        self.b_socks.rtp.get_ref().local_addr()
    }

    /// Leg A's SDP address and signalling source.
    pub fn expect_a(&mut self, sdp: Option<SocketAddr>, signalling: IpAddr) {
        self.a.expect(sdp, signalling);
    }

    /// Leg B's SDP address and signalling source.
    pub fn expect_b(&mut self, sdp: Option<SocketAddr>, signalling: IpAddr) {
        self.b.expect(sdp, signalling);
    }

    /// Where leg A's media was latched.
    pub fn latched_a(&self) -> Option<SocketAddr> {
        self.a.latch.latched()
    }

    /// Where leg B's media was latched.
    pub fn latched_b(&self) -> Option<SocketAddr> {
        self.b.latch.latched()
    }

    /// SRTP keys for the side facing leg A (`a`) or B; `None`: plain RTP.
    pub fn set_srtp(&mut self, a: bool, keys: Option<&SrtpKeys>) {
        if a {
            self.a.set_srtp(keys);
        } else {
            self.b.set_srtp(keys);
        }
    }

    /// While `on`, leg A (`a`) or B hears only what [`Relay::send_music`] sends it: the other
    /// leg's RTP is not passed on (its RTCP is).
    pub fn set_music(&mut self, a: bool, on: bool) {
        if a {
            self.a.music = on;
        } else {
            self.b.music = on;
        }
        self.follow_sources();
    }

    /// Gives each leg the gateway's own RTCP while the gateway is the source of what it hears
    /// (music on hold to it, or a transcoded call), and none otherwise.
    fn follow_sources(&mut self) {
        let transcoded = self.a.transcoder.is_some() || self.b.transcoder.is_some();
        for side in [&mut self.a, &mut self.b] {
            side.report(side.music || transcoded);
        }
    }

    /// Sends one RTP packet the gateway originates (music on hold, telephone-events) to leg A
    /// (`a`) or B from the relay's socket facing it, to where its media is latched (or its SDP
    /// address), SRTP-protected when it speaks SRTP. A send error (the phone gone) drops the
    /// packet: the next one follows in 20 ms. While music plays to the leg, the packets count
    /// in the gateway's RTCP to it, and a due report goes out with them.
    pub fn send_music(&mut self, a: bool, packet: &[u8]) {
        let (side, socks) = if a {
            (&mut self.a, &self.a_socks)
        } else {
            (&mut self.b, &self.b_socks)
        };
        let Some(dest) = side.latch.destination() else {
            return;
        };
        let now = Instant::now();
        if side.music
            && let Some(r) = side.reporter.as_mut()
        {
            r.sent(now, packet);
        }
        if let Some(p) = side.outgoing(Packet::Wire(packet), false) {
            let _ = socks.rtp.get_ref().send_to(&p, dest);
        }
        side.send_report(socks.rtcp.get_ref(), now);
    }

    /// Transcodes between leg A's codec and leg B's (`Some((a, b))`), or relays unchanged
    /// (`None`). A direction whose formats stay as they were keeps its transcoder, so a
    /// re-INVITE (hold, resume) does not restart the stream the other leg hears.
    pub fn set_transcode(&mut self, formats: Option<(LegFormat, LegFormat)>) {
        self.set_transcoders(formats);
        self.follow_sources();
    }

    fn set_transcoders(&mut self, formats: Option<(LegFormat, LegFormat)>) {
        let Some((a, b)) = formats else {
            self.a.transcoder = None;
            self.b.transcoder = None;
            return;
        };
        for (side, from, to) in [(&mut self.a, a, b), (&mut self.b, b, a)] {
            if side
                .transcoder
                .as_ref()
                .is_some_and(|t| t.formats() == (from, to))
            {
                continue;
            }
            side.transcoder = match Transcoder::new(from, to) {
                Ok(t) => Some(t),
                Err(e) => {
                    // The b2bua only chooses transcodable codecs; not expected.
                    tracing::warn!("no transcoder from {from:?} to {to:?}: {e}");
                    None
                }
            };
        }
    }

    /// The telephone-event (payload type, clock) legs A and B negotiated. When exactly one leg
    /// has it, that leg's events are read as digits ([`Relay::take_digits`]) instead of passed
    /// on, and [`Relay::send_dtmf`] plays digits to it; otherwise events pass as they are.
    pub fn set_dtmf(&mut self, a: Option<(u8, u32)>, b: Option<(u8, u32)>) {
        for (side, own, other) in [(&mut self.a, a, b), (&mut self.b, b, a)] {
            let want = own.filter(|_| other.is_none());
            let same = match (&side.dtmf, want) {
                (Some(d), Some((pt, clock))) => d.payload_type == pt && d.clock == clock,
                (None, None) => true,
                _ => false,
            };
            if !same {
                side.dtmf = want.map(|(pt, clock)| DtmfSide::new(pt, clock));
            }
        }
    }

    /// Plays `digit` as RFC 4733 events to leg A (`a`) or B; false when that leg does not
    /// interwork (see [`Relay::set_dtmf`]).
    pub fn send_dtmf(&mut self, a: bool, digit: Digit, now: Instant) -> bool {
        let side = if a { &mut self.a } else { &mut self.b };
        match side.dtmf.as_mut() {
            Some(d) => {
                d.sender.send(now, digit);
                true
            }
            None => false,
        }
    }

    /// When the next event packet to a leg is due.
    pub fn dtmf_due(&self) -> Option<Instant> {
        [&self.a, &self.b]
            .iter()
            .filter_map(|s| s.dtmf.as_ref()?.sender.next_due())
            .min()
    }

    /// Sends the event packets due at `now`, from the socket facing each leg, as music on hold
    /// is sent.
    pub fn play_dtmf(&mut self, now: Instant) {
        for a in [true, false] {
            let side = if a { &mut self.a } else { &mut self.b };
            let Some(d) = side.dtmf.as_mut() else {
                continue;
            };
            let mut due = Vec::new();
            // Bounded: at most the packets of one late tick.
            for _ in 0..8 {
                let mut packet = Vec::with_capacity(32);
                if !d.poll(now, &mut packet) {
                    break;
                }
                due.push(packet);
            }
            for packet in due {
                self.send_music(a, &packet);
            }
        }
    }

    /// When the gateway's next RTCP report to a leg is due (it reports to a leg hearing music
    /// or transcoded audio); the first call schedules the first report.
    pub fn rtcp_due(&mut self, now: Instant) -> Option<Instant> {
        [&mut self.a, &mut self.b]
            .into_iter()
            .filter_map(|s| Some(s.reporter.as_mut()?.poll_timeout(now)))
            .min()
    }

    /// Sends the reports due at `now`, so a leg gets them while no packet passes (both parties
    /// silent, or on hold without music); [`Relay::forward`] sends them too as packets pass.
    pub fn send_due_reports(&mut self, now: Instant) {
        self.a.send_report(self.a_socks.rtcp.get_ref(), now);
        self.b.send_report(self.b_socks.rtcp.get_ref(), now);
    }

    /// The digits read from leg A's and B's events since the last call: (from A, digit).
    pub fn take_digits(&mut self) -> Vec<(bool, Digit)> {
        let mut out = Vec::new();
        for (a, side) in [(true, &mut self.a), (false, &mut self.b)] {
            if let Some(d) = side.dtmf.as_mut() {
                out.extend(d.digits.drain(..).map(|digit| (a, digit)));
            }
        }
        out
    }

    /// The audio (payload type, RTP clock) legs A and B send, which their jitter is measured
    /// in; `None`: not known, no jitter reported for that leg.
    pub fn set_audio(&mut self, a: Option<(u8, u32)>, b: Option<(u8, u32)>) {
        for (side, audio) in [(&mut self.a, a), (&mut self.b, b)] {
            side.counters.set_audio(audio);
            // What the gateway sends a leg is in the leg's own codec (music, transcoded audio).
            if let (Some(r), Some((_, clock))) = (side.reporter.as_mut(), audio) {
                r.set_clock(clock);
            }
        }
    }

    /// What legs A and B sent.
    pub fn counters(&self) -> (LegCounters, LegCounters) {
        (self.a.counters, self.b.counters)
    }

    /// Waits until a socket is readable, then forwards everything queued on it.
    pub async fn forward(&mut self) {
        let (port, mut guard) = tokio::select! {
            Ok(g) = self.a_socks.rtp.readable() => (Port::ARtp, g),
            Ok(g) = self.a_socks.rtcp.readable() => (Port::ARtcp, g),
            Ok(g) = self.b_socks.rtp.readable() => (Port::BRtp, g),
            Ok(g) = self.b_socks.rtcp.readable() => (Port::BRtcp, g),
            // Only when the runtime is going away; the call task's other branches end the call.
            else => std::future::pending().await,
        };
        let (from, to, out, rtcp) = match port {
            Port::ARtp => (&mut self.a, &mut self.b, &self.b_socks.rtp, false),
            Port::ARtcp => (&mut self.a, &mut self.b, &self.b_socks.rtcp, true),
            Port::BRtp => (&mut self.b, &mut self.a, &self.a_socks.rtp, false),
            Port::BRtcp => (&mut self.b, &mut self.a, &self.a_socks.rtcp, true),
        };
        let (from_rtcp, to_rtcp) = match port {
            Port::ARtp | Port::ARtcp => (&self.a_socks.rtcp, &self.b_socks.rtcp),
            Port::BRtp | Port::BRtcp => (&self.b_socks.rtcp, &self.a_socks.rtcp),
        };
        let dest = if rtcp {
            to.rtcp_latch.destination()
        } else {
            to.latch.destination()
        };
        // Bounded so one flooded socket cannot starve the call's signalling.
        for _ in 0..4 {
            let read = SCRATCH.with_borrow_mut(|scratch| {
                let n = match guard.try_io(|fd| recv_batch(fd.get_ref(), scratch)) {
                    Ok(Ok(n)) => n,
                    // WouldBlock (readiness already cleared) or an error queued on the socket
                    // (an ICMP report): the next wake-up reads on.
                    _ => return None,
                };
                // One clock reading per batch: the arrival time the jitter is measured by
                // (packets read together arrived within a wake-up of each other).
                let arrival = Instant::now();
                for (buf, &(len, src)) in scratch.bufs.iter().zip(&scratch.got) {
                    let packet = &buf[..len];
                    let Some(src) = src else { continue };
                    let Some(plain) = from.accept(packet, src, rtcp, arrival) else {
                        continue;
                    };
                    if !rtcp
                        && let Some(d) = from.dtmf.as_mut()
                        && let Ok(p) = super::rtp::parse(&plain)
                        && p.payload_type == d.payload_type
                    {
                        // The other leg takes DTMF by SIP INFO: the call sends it this way. A
                        // transcoder still sees the packet (it drops it) to keep its numbering.
                        let digits = d.receiver.push(p.timestamp, p.payload);
                        d.digits.extend(digits);
                        if from.transcoder.is_none() {
                            continue;
                        }
                    }
                    if to.music && !rtcp {
                        // The held leg hears the gateway's music, not the holder.
                        continue;
                    }
                    if rtcp && from.transcoder.is_some() {
                        // The gateway reports to the other leg on the stream it makes for it.
                        continue;
                    }
                    if let (Some(t), false) = (from.transcoder.as_mut(), rtcp) {
                        let unsent = &mut from.counters.dropped_unsent;
                        t.push(&plain, &mut |p| {
                            let Some(p) = to.splice(Packet::Wire(p)) else {
                                return;
                            };
                            if let Some(r) = to.reporter.as_mut() {
                                r.sent(arrival, &p);
                            }
                            match (dest, to.outgoing(p, false)) {
                                (Some(d), Some(p)) if out.get_ref().send_to(&p, d).is_ok() => {}
                                _ => *unsent += 1,
                            }
                        });
                        continue;
                    }
                    let plain = match rtcp {
                        true => plain,
                        false => match to.splice(plain) {
                            Some(p) => p,
                            None => continue,
                        },
                    };
                    match (dest, to.outgoing(plain, rtcp)) {
                        (Some(d), Some(p)) if out.get_ref().send_to(&p, d).is_ok() => {}
                        _ => from.counters.dropped_unsent += 1,
                    }
                }
                Some(n)
            });
            match read {
                Some(BATCH) => {}
                Some(_) => {
                    // A short read emptied the queue: no need for a recvmmsg that only says
                    // EAGAIN. A packet that arrived since is a new readiness event, not lost.
                    guard.clear_ready();
                    break;
                }
                None => break,
            }
        }
        if from.reporter.is_some() || to.reporter.is_some() {
            let now = Instant::now();
            from.send_report(from_rtcp.get_ref(), now);
            to.send_report(to_rtcp.get_ref(), now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pair(pool: &super::super::PortPool) -> (UdpSocket, UdpSocket) {
        pool.bind_pair("127.0.0.1".parse().expect("ip"), 42000, 42999)
            .expect("pair")
    }

    fn rtp(seq: u8) -> [u8; 20] {
        let mut p = [0u8; 20];
        p[0] = 0x80;
        p[3] = seq;
        p
    }

    /// A relay between two loopback phones: the relay, its addresses facing A and B, phone A's
    /// socket and phone B's, each leg expecting its phone.
    fn phones() -> (Relay, [SocketAddr; 2], UdpSocket, UdpSocket) {
        let pool = super::super::PortPool::new();
        let mut relay = Relay::new(pair(&pool), pair(&pool)).expect("relay");
        let addrs = [relay.addr_a().expect("a"), relay.addr_b().expect("b")];
        let phone_a = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let phone_b = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let lo: IpAddr = "127.0.0.1".parse().expect("ip");
        relay.expect_a(Some(phone_a.local_addr().expect("addr")), lo);
        relay.expect_b(Some(phone_b.local_addr().expect("addr")), lo);
        (relay, addrs, phone_a, phone_b)
    }

    /// Reads what arrives on `sock` within `wait`.
    fn drain(sock: &UdpSocket, wait: Duration) -> Vec<Vec<u8>> {
        sock.set_read_timeout(Some(wait)).expect("timeout");
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok((n, _)) = sock.recv_from(&mut buf) {
            out.push(buf[..n].to_vec());
        }
        out
    }

    /// Leg A negotiated telephone-event, leg B did not: A's events become digits (once per
    /// event, not passed on), its audio passes, and digits for A are played as RFC 4733 events.
    #[tokio::test]
    async fn dtmf_events_of_the_telephone_event_leg_become_digits_and_digits_events() {
        use crate::media::dtmf::Event;
        let (mut relay, [addr_a, _], phone_a, phone_b) = phones();
        relay.set_dtmf(Some((101, 8000)), None);
        let mut sender = RtpSender::new();
        let mut packet = Vec::new();
        for (end, duration) in [
            (false, 160),
            (false, 320),
            (true, 400),
            (true, 400),
            (true, 400),
        ] {
            let ev = Event {
                code: 5,
                end,
                volume: 10,
                duration,
            };
            packet.clear();
            sender.write_at(101, &ev.to_bytes(), 8000, &mut packet);
            phone_a.send_to(&packet, addr_a).expect("send");
        }
        packet.clear();
        sender.write(0, &[0xff; 160], 160, &mut packet);
        phone_a.send_to(&packet, addr_a).expect("send");
        let mut digits = Vec::new();
        for _ in 0..20 {
            let _ = tokio::time::timeout(Duration::from_millis(20), relay.forward()).await;
            digits.extend(relay.take_digits());
            if !digits.is_empty() {
                break;
            }
        }
        let codes: Vec<_> = digits
            .iter()
            .map(|(a, d)| (*a, d.code, d.duration))
            .collect();
        assert_eq!(codes, [(true, 5, Duration::from_millis(50))]);
        let got = drain(&phone_b, Duration::from_millis(200));
        assert_eq!(got.len(), 1, "only the audio reaches B");
        assert_eq!(
            crate::media::rtp::parse(&got[0]).map(|p| p.payload_type),
            Ok(0)
        );
        // A digit from B's INFO is played to A.
        assert!(
            !relay.send_dtmf(false, digits[0].1, Instant::now()),
            "B takes no events"
        );
        let digit = Digit {
            code: 5,
            duration: Duration::from_millis(160),
        };
        assert!(relay.send_dtmf(true, digit, Instant::now()));
        for _ in 0..50 {
            let Some(due) = relay.dtmf_due() else { break };
            tokio::time::sleep_until(due.into()).await;
            relay.play_dtmf(Instant::now());
        }
        let got = drain(&phone_a, Duration::from_millis(200));
        let events: Vec<_> = got
            .iter()
            .map(|p| {
                let p = crate::media::rtp::parse(p).expect("rtp");
                let ev = Event::parse(p.payload).expect("event");
                (p.payload_type, p.marker, p.timestamp, ev.code, ev.end)
            })
            .collect();
        assert!(events.len() >= 4, "{events:?}");
        assert!(
            events
                .iter()
                .all(|e| e.0 == 101 && e.3 == 5 && e.2 == events[0].2)
        );
        assert!(
            events[0].1 && !events[1].1,
            "the marker on the first packet"
        );
        let ends = events.iter().filter(|e| e.4).count();
        assert_eq!(ends, 3, "three end packets: {events:?}");
        assert!(events.last().is_some_and(|e| e.4));
        // 160 ms at 8 kHz, one packet per 50 ms: 400, 800, 1200, then the end (1280) three times.
        let durations: Vec<u16> = got
            .iter()
            .filter_map(|p| Event::parse(crate::media::rtp::parse(p).ok()?.payload).ok())
            .map(|e| e.duration)
            .collect();
        assert_eq!(durations, [400, 800, 1200, 1280, 1280, 1280]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_plain_leg_and_an_srtp_leg_hear_each_other_and_forgeries_are_dropped() {
        use crate::media::srtp::{MASTER_LEN, SrtpKeys, Suite};
        let (mut relay, [addr_a, addr_b], phone_a, phone_b) = phones();
        let gw_keys = SrtpKeys {
            suite: Suite::AesCm128Sha1_80,
            local: [3; MASTER_LEN],
            remote: [4; MASTER_LEN],
            remote_mki: 0,
        };
        relay.set_srtp(false, Some(&gw_keys));
        // Phone B's own SRTP state: the keys crosswise.
        let mut b = SrtpSession::new(&SrtpKeys {
            local: gw_keys.remote,
            remote: gw_keys.local,
            ..gw_keys.clone()
        })
        .expect("b");
        let task = tokio::spawn(async move {
            loop {
                relay.forward().await;
            }
        });
        // A forgery from B's address comes first: it must neither pass nor latch.
        let forger = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut forged = rtp(99).to_vec();
        forged.extend_from_slice(&[0; 10]);
        forger.send_to(&forged, addr_b).expect("send");
        tokio::time::sleep(Duration::from_millis(50)).await;
        // A (plain) → B (SRTP).
        let plain = rtp(1);
        phone_a.send_to(&plain, addr_a).expect("send");
        let got = tokio::task::spawn_blocking({
            let s = phone_b.try_clone().expect("clone");
            move || drain(&s, Duration::from_millis(300))
        })
        .await
        .expect("join");
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].len(),
            plain.len() + 10,
            "protected, with an 80-bit tag"
        );
        assert_eq!(
            &b.unprotect(&got[0], false).expect("B decrypts")[..],
            &plain[..]
        );
        // B (SRTP) → A (plain): A gets what B protected, decrypted.
        let mut payload = rtp(2);
        payload[12..].copy_from_slice(b"tone-b!!");
        let wire = b.protect(&payload, false).expect("protect");
        phone_b.send_to(&wire, addr_b).expect("send");
        // A replay of it is dropped.
        phone_b.send_to(&wire, addr_b).expect("send");
        let got = tokio::task::spawn_blocking({
            let s = phone_a.try_clone().expect("clone");
            move || drain(&s, Duration::from_millis(300))
        })
        .await
        .expect("join");
        assert_eq!(
            got,
            vec![payload.to_vec()],
            "decrypted once, the replay dropped"
        );
        task.abort();
    }

    /// The gateway reports to a leg that hears music even while no packet passes, when due and
    /// not before, from the RTCP port facing it; the other leg (hearing its peer) gets none.
    #[tokio::test]
    async fn a_silent_leg_still_gets_the_gateways_reports_when_due() {
        let pool = super::super::PortPool::new();
        let mut relay = Relay::new(pair(&pool), pair(&pool)).expect("relay");
        let gw_b_rtcp = relay.b_socks.rtcp.get_ref().local_addr().expect("addr");
        let (a_rtp, a_rtcp) = pair(&pool);
        let (b_rtp, b_rtcp) = pair(&pool);
        let lo: IpAddr = "127.0.0.1".parse().expect("ip");
        relay.expect_a(Some(a_rtp.local_addr().expect("addr")), lo);
        relay.expect_b(Some(b_rtp.local_addr().expect("addr")), lo);
        assert_eq!(
            relay.rtcp_due(Instant::now()),
            None,
            "a plain relay forwards"
        );
        relay.set_music(false, true);
        let now = Instant::now();
        let due = relay.rtcp_due(now).expect("B is reported to");
        assert!(due > now);
        relay.send_due_reports(now);
        relay.send_due_reports(due);
        let wait = Duration::from_millis(200);
        b_rtcp.set_read_timeout(Some(wait)).expect("timeout");
        let mut buf = [0u8; 512];
        let (n, from) = b_rtcp.recv_from(&mut buf).expect("a report to B");
        assert_eq!(from, gw_b_rtcp);
        let report = super::super::rtcp::parse(&buf[..n]).expect("RTCP");
        assert!(report.cname.is_some(), "{report:?}");
        assert!(b_rtcp.recv_from(&mut buf).is_err(), "one report, when due");
        a_rtcp.set_read_timeout(Some(wait)).expect("timeout");
        assert!(a_rtcp.recv_from(&mut buf).is_err(), "none to A");
        assert!(relay.rtcp_due(due).is_some_and(|next| next > due));
    }

    /// Music on hold: the held leg gets the gateway's packets from the relay port facing it, and
    /// not the holder's, until the music stops.
    #[tokio::test]
    async fn a_leg_on_hold_hears_the_music_and_not_the_other_leg() {
        let (mut relay, [addr_a, addr_b], phone_a, phone_b) = phones();
        let wait = Duration::from_millis(300);
        relay.set_music(false, true);
        phone_a.send_to(&rtp(1), addr_a).expect("send");
        let _ = tokio::time::timeout(wait, relay.forward()).await;
        relay.send_music(false, &rtp(7));
        relay.set_music(false, false);
        phone_a.send_to(&rtp(2), addr_a).expect("send");
        let _ = tokio::time::timeout(wait, relay.forward()).await;
        let mut buf = [0u8; 64];
        phone_b.set_read_timeout(Some(wait)).expect("timeout");
        let mut got = Vec::new();
        while let Ok((n, from)) = phone_b.recv_from(&mut buf) {
            assert_eq!(from, addr_b, "from the relay port facing B");
            got.push(buf[..n][3]);
        }
        assert_eq!(got, vec![7, 2], "the music, then A again");
        assert_eq!(relay.counters().0.rtp_packets, 2, "A's packets still count");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn relays_bursts_and_single_packets_latches_and_drops_strangers() {
        let (mut relay, [addr_a, addr_b], phone_a, phone_b) = phones();
        let stranger = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let task = tokio::spawn(async move {
            // Runs until aborted, like the call task's select! branch.
            loop {
                relay.forward().await;
            }
        });
        // A burst longer than one recvmmsg batch, queued before the relay reads.
        for seq in 0..40 {
            phone_a.send_to(&rtp(seq), addr_a).expect("send");
        }
        let got = tokio::task::spawn_blocking({
            let b = phone_b.try_clone().expect("clone");
            move || drain(&b, Duration::from_millis(500))
        })
        .await
        .expect("join");
        assert_eq!(got.len(), 40, "every packet of the burst");
        assert!(
            got.iter().enumerate().all(|(i, p)| p[3] == i as u8),
            "in order"
        );
        // Single packets after the queue went empty: readiness cleared by a short read must
        // come back with the next packet.
        for seq in 0..3 {
            phone_b.send_to(&rtp(seq), addr_b).expect("send");
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        // A stranger (same IP, another port) after latching, and a non-RTP packet: dropped.
        stranger.send_to(&rtp(9), addr_b).expect("send");
        phone_b.send_to(b"hello", addr_b).expect("send");
        let got = tokio::task::spawn_blocking({
            let a = phone_a.try_clone().expect("clone");
            move || drain(&a, Duration::from_millis(500))
        })
        .await
        .expect("join");
        assert_eq!(
            got.len(),
            3,
            "B's three packets reach A, nothing else: {got:?}"
        );
        task.abort();
    }
}
