//! The media bridge of a web phone, sans-IO: Opus frames between str0m (the browser's side,
//! frames with their 48 kHz media time) and the call's relay (plain RTP packets). Neither side
//! decodes: the browser and the line both speak Opus, and the relay transcodes when the far end
//! does not. Towards the relay the bridge is one RTP stream of its own (RFC 3550 §5.1); from the
//! relay it follows the stream the gateway sends, and rebases when that stream changes (a new call,
//! a transfer), so the browser sees one media clock that never goes back.

use crate::media::rtp::{self, RtpSender};

/// Opus frames between the browser and the relay.
#[derive(Debug, Default)]
pub struct Bridge {
    to_relay: RtpSender,
    /// The browser's first media time and the RTP timestamp it was given.
    browser_origin: Option<u64>,
    /// The relay's stream: its SSRC, its last timestamp and where that lies on the browser's
    /// extended clock.
    from_relay: Option<(u32, u32, u64)>,
}

/// 20 ms at 48 kHz: how far the browser's clock moves on when the relay's stream changes.
const FRAME: u64 = 960;

impl Bridge {
    /// A bridge with a fresh outgoing stream.
    pub fn new() -> Bridge {
        Bridge::default()
    }

    /// Writes the browser's Opus `frame` at `media_time` (48 kHz) as one RTP packet with payload
    /// type `pt` into `out`; `talk_spurt` marks the first packet after silence.
    pub fn to_relay(
        &mut self,
        pt: u8,
        media_time: u64,
        talk_spurt: bool,
        frame: &[u8],
        out: &mut Vec<u8>,
    ) {
        let origin = *self.browser_origin.get_or_insert(media_time);
        let base = self.to_relay.timestamp();
        if talk_spurt {
            self.to_relay.skip(0);
        }
        // The stream's own timestamp stays at its first value; each packet carries the origin
        // plus the browser's elapsed media time, so gaps (DTX) keep their length.
        let ts = base.wrapping_add(media_time.wrapping_sub(origin) as u32);
        self.to_relay.write_at(pt, frame, ts, out);
    }

    /// The Opus frame of an RTP `packet` from the relay and its media time on the browser's
    /// clock (48 kHz); `None` when it is not RTP carrying payload type `pt`.
    pub fn from_relay<'p>(&mut self, pt: u8, packet: &'p [u8]) -> Option<(u64, &'p [u8])> {
        let p = rtp::parse(packet).ok()?;
        if p.payload_type != pt || p.payload.is_empty() {
            return None;
        }
        let time = match self.from_relay {
            Some((ssrc, last, at)) if ssrc == p.ssrc => {
                // Signed distance: a late packet lies a little behind the last one.
                let delta = i64::from(p.timestamp.wrapping_sub(last) as i32);
                at.checked_add_signed(delta)?
            }
            Some((_, _, at)) => at + FRAME,
            None => FRAME,
        };
        let newest = match self.from_relay {
            Some((ssrc, _, at)) if ssrc == p.ssrc && time < at => None,
            _ => Some(time),
        };
        if let Some(t) = newest {
            self.from_relay = Some((p.ssrc, p.timestamp, t));
        }
        Some((time, p.payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(ssrc: u32, ts: u32, pt: u8) -> Vec<u8> {
        let mut s = RtpSender::new();
        s.set_ssrc(ssrc);
        let mut out = Vec::new();
        s.write_at(pt, &[1, 2, 3], ts, &mut out);
        out
    }

    #[test]
    fn browser_frames_become_one_rtp_stream_whose_timestamps_follow_the_media_time() {
        let mut b = Bridge::new();
        let (mut a, mut c, mut d) = (Vec::new(), Vec::new(), Vec::new());
        b.to_relay(111, 48_000, false, &[9; 40], &mut a);
        b.to_relay(111, 48_960, false, &[9; 40], &mut c);
        // 200 ms of DTX, then a new talk spurt.
        b.to_relay(111, 48_960 + 960 * 11, true, &[9; 40], &mut d);
        let (a, c, d) = (
            rtp::parse(&a).expect("rtp"),
            rtp::parse(&c).expect("rtp"),
            rtp::parse(&d).expect("rtp"),
        );
        assert_eq!((a.ssrc, a.payload_type), (c.ssrc, 111));
        assert_eq!(c.timestamp.wrapping_sub(a.timestamp), 960);
        assert_eq!(d.timestamp.wrapping_sub(c.timestamp), 960 * 11);
        assert_eq!(c.sequence, a.sequence.wrapping_add(1));
        assert_eq!(d.sequence, c.sequence.wrapping_add(1));
        assert!(a.marker && !c.marker && d.marker);
    }

    #[test]
    fn relay_packets_give_a_clock_that_wraps_and_survives_a_new_stream() {
        let mut b = Bridge::new();
        let t0 = u32::MAX - 100;
        let packets = [
            packet(7, t0, 111),
            // Across the 32-bit wrap.
            packet(7, t0.wrapping_add(960), 111),
            // Late: behind the last one.
            packet(7, t0.wrapping_add(480), 111),
            // A new call's stream, whatever its timestamp.
            packet(8, 5, 111),
            // Another payload type is not Opus.
            packet(8, 965, 0),
        ];
        let mut time = |i: usize| b.from_relay(111, &packets[i]).map(|(t, p)| (t, p.to_vec()));
        let (first, _) = time(0).expect("frame");
        let (second, payload) = time(1).expect("frame");
        assert_eq!(second - first, 960);
        assert_eq!(payload, vec![1, 2, 3]);
        let (late, _) = time(2).expect("frame");
        assert_eq!(late, first + 480);
        // The new stream starts one frame after the newest, not after the late one.
        let (third, _) = time(3).expect("frame");
        assert_eq!(third, second + FRAME);
        assert!(time(4).is_none());
        assert!(b.from_relay(111, b"not rtp").is_none());
    }
}
