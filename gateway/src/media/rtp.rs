//! RTP as the media core reads and writes it when it does more than relay: the header and payload
//! of a received packet it decodes (a transcoded leg, a conference participant), and the stream
//! state RFC 3550 §5.1 asks of a sender it originates itself (music on hold, a conference mix, a
//! transcoded stream): a random SSRC, and a sequence number and timestamp that start at random
//! values and advance per packet. Parsing and writing are `rtp-types`' (CSRCs, extensions and
//! padding handled there); this module owns only the sender's state.

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

#[cfg(test)]
mod tests {
    use super::*;

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
