//! The socket side of a call's media: two RTP/RTCP socket pairs (one facing each leg), packets
//! passed from one leg to the other unchanged. The call task owns it and awaits
//! [`Relay::forward`] in its `select!`; nothing here is shared with another task.

use std::net::{IpAddr, SocketAddr};

use tokio::net::UdpSocket;

use super::{Latch, LegCounters, is_rtp_v2};

/// One leg's side of the relay.
struct Side {
    rtp: UdpSocket,
    rtcp: UdpSocket,
    latch: Latch,
    rtcp_latch: Latch,
    /// What this leg sent us.
    counters: LegCounters,
}

impl Side {
    fn new(pair: (std::net::UdpSocket, std::net::UdpSocket)) -> std::io::Result<Side> {
        Ok(Side {
            rtp: UdpSocket::from_std(pair.0)?,
            rtcp: UdpSocket::from_std(pair.1)?,
            latch: Latch::default(),
            rtcp_latch: Latch::default(),
            counters: LegCounters::default(),
        })
    }

    fn expect(&mut self, sdp: Option<SocketAddr>, signalling: IpAddr) {
        self.latch.expect(sdp, signalling);
        let rtcp = sdp.map(|a| SocketAddr::new(a.ip(), a.port().wrapping_add(1)));
        self.rtcp_latch.expect(rtcp, signalling);
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

/// The relay of one call.
pub struct Relay {
    a: Side,
    b: Side,
    buf: Vec<u8>,
}

impl Relay {
    /// A relay over two bound socket pairs (from [`super::PortPool::bind_pair`]).
    pub fn new(
        a: (std::net::UdpSocket, std::net::UdpSocket),
        b: (std::net::UdpSocket, std::net::UdpSocket),
    ) -> std::io::Result<Relay> {
        Ok(Relay {
            a: Side::new(a)?,
            b: Side::new(b)?,
            buf: vec![0; 2048],
        })
    }

    /// The RTP address leg A is told to send to.
    pub fn addr_a(&self) -> std::io::Result<SocketAddr> {
        self.a.rtp.local_addr()
    }

    /// The RTP address leg B is told to send to.
    pub fn addr_b(&self) -> std::io::Result<SocketAddr> {
        self.b.rtp.local_addr()
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

    /// What legs A and B sent.
    pub fn counters(&self) -> (LegCounters, LegCounters) {
        (self.a.counters, self.b.counters)
    }

    /// Waits until a socket is readable, then forwards everything queued on it.
    pub async fn forward(&mut self) {
        let port = tokio::select! {
            Ok(()) = self.a.rtp.readable() => Port::ARtp,
            Ok(()) = self.a.rtcp.readable() => Port::ARtcp,
            Ok(()) = self.b.rtp.readable() => Port::BRtp,
            Ok(()) = self.b.rtcp.readable() => Port::BRtcp,
        };
        let (from, to, rtcp) = match port {
            Port::ARtp => (&mut self.a, &mut self.b, false),
            Port::ARtcp => (&mut self.a, &mut self.b, true),
            Port::BRtp => (&mut self.b, &mut self.a, false),
            Port::BRtcp => (&mut self.b, &mut self.a, true),
        };
        // Bounded so one flooded socket cannot starve the call's signalling.
        for _ in 0..64 {
            let sock = if rtcp { &from.rtcp } else { &from.rtp };
            let (n, src) = match sock.try_recv_from(&mut self.buf) {
                Ok(x) => x,
                Err(_) => break,
            };
            let packet = &self.buf[..n];
            if !is_rtp_v2(packet) {
                from.counters.dropped_malformed += 1;
                continue;
            }
            let latch = if rtcp {
                &mut from.rtcp_latch
            } else {
                &mut from.latch
            };
            if !latch.accept(src) {
                from.counters.dropped_unexpected += 1;
                continue;
            }
            if rtcp {
                from.counters.rtcp_packets += 1;
            } else {
                from.counters.rtp_packets += 1;
                from.counters.rtp_bytes += n as u64;
            }
            let (out, dest) = if rtcp {
                (&to.rtcp, to.rtcp_latch.destination())
            } else {
                (&to.rtp, to.latch.destination())
            };
            match dest {
                Some(d) if out.try_send_to(packet, d).is_ok() => {}
                _ => from.counters.dropped_unsent += 1,
            }
        }
    }
}
