//! Reliable provisional responses towards a caller that requires them (RFC 3262): each 18x
//! carries `Require: 100rel` and an `RSeq`, is retransmitted until the caller's PRACK, and the
//! next one waits for it (§3); a 2xx waits too while an unacknowledged one carried SDP.
//! Sans-IO: the call feeds it responses, PRACKs and the clock, and sends what it returns.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use csps_sip::{Request, Response};

/// RFC 3261 T1: the first retransmission interval.
const T1: Duration = Duration::from_millis(500);
/// Retransmissions stop after 64·T1 (§3); the caller is then refused.
const GIVE_UP: Duration = Duration::from_secs(32);
/// Provisionals waiting behind an unacknowledged one; older ringing is dropped beyond this.
const MAX_QUEUED: usize = 4;

/// The caller never acknowledged a reliable provisional within 64·T1.
#[derive(Debug, PartialEq, Eq)]
pub struct NoPrack;

struct Unacked {
    resp: Response,
    rseq: u32,
    next: Instant,
    interval: Duration,
    give_up: Instant,
}

/// The reliable provisionals of one INVITE server transaction.
pub struct Rel1xx {
    /// CSeq number of the INVITE (a PRACK's RAck names it).
    cseq: u32,
    next_rseq: u32,
    unacked: Option<Unacked>,
    queued: VecDeque<Response>,
    /// A 2xx held until the provisionals with SDP are acknowledged.
    held_final: Option<Response>,
}

fn has_sdp(r: &Response) -> bool {
    !r.body.is_empty()
}

impl Rel1xx {
    /// For the INVITE with CSeq number `cseq`; `first_rseq` is random (§3: 1..2^31-1).
    pub fn new(cseq: u32, first_rseq: u32) -> Rel1xx {
        Rel1xx {
            cseq,
            next_rseq: first_rseq.clamp(1, 1 << 30),
            unacked: None,
            queued: VecDeque::new(),
            held_final: None,
        }
    }

    /// A provisional (101–199) for the caller: what to send now, if anything (it waits while
    /// another is unacknowledged).
    pub fn provisional(&mut self, now: Instant, resp: Response) -> Option<Response> {
        if self.unacked.is_some() {
            if self.queued.len() >= MAX_QUEUED
                && let Some(i) = self.queued.iter().position(|r| !has_sdp(r))
            {
                self.queued.remove(i);
            }
            self.queued.push_back(resp);
            return None;
        }
        Some(self.make_reliable(now, resp))
    }

    fn make_reliable(&mut self, now: Instant, mut resp: Response) -> Response {
        let rseq = self.next_rseq;
        self.next_rseq = self.next_rseq.wrapping_add(1).max(1);
        resp.headers.push("Require", "100rel");
        resp.headers.push("RSeq", rseq.to_string());
        self.unacked = Some(Unacked {
            resp: resp.clone(),
            rseq,
            next: now + T1,
            interval: T1,
            give_up: now + GIVE_UP,
        });
        resp
    }

    /// The 2xx for the caller: `Some` to send it now, `None` when it waits for a PRACK (§3: an
    /// unacknowledged provisional carried SDP). Provisionals still queued without SDP are
    /// dropped.
    pub fn final_ok(&mut self, resp: Response) -> Option<Response> {
        let sdp_pending = self.unacked.as_ref().is_some_and(|u| has_sdp(&u.resp))
            || self.queued.iter().any(has_sdp);
        self.queued.retain(has_sdp);
        if sdp_pending {
            self.held_final = Some(resp);
            None
        } else {
            self.finished();
            Some(resp)
        }
    }

    /// A final answer went to the caller: nothing more to send or retransmit.
    pub fn finished(&mut self) {
        self.unacked = None;
        self.queued.clear();
        self.held_final = None;
    }

    /// The caller's PRACK: its answer (200, or 481 when its RAck names no provisional of ours)
    /// and what to send next (the next provisional, or the held 2xx).
    pub fn prack(&mut self, now: Instant, req: &Request) -> (Response, Option<Response>) {
        let rack = req.headers.get("RAck").and_then(|v| {
            let mut it = v.split_ascii_whitespace();
            let rseq = it.next()?.parse::<u32>().ok()?;
            let cseq = it.next()?.parse::<u32>().ok()?;
            let method = it.next()?;
            Some((rseq, cseq, method.eq_ignore_ascii_case("INVITE")))
        });
        let matches = match (&self.unacked, rack) {
            (Some(u), Some((rseq, cseq, true))) => u.rseq == rseq && cseq == self.cseq,
            _ => false,
        };
        if !matches {
            return (req.response(481, "Call/Transaction Does Not Exist"), None);
        }
        self.unacked = None;
        let next = match self.queued.pop_front() {
            Some(r) => Some(self.make_reliable(now, r)),
            None => self.held_final.take(),
        };
        (req.response(200, "OK"), next)
    }

    /// When a retransmission is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.unacked.as_ref().map(|u| u.next.min(u.give_up))
    }

    /// The retransmission due at `now`, or [`NoPrack`] once 64·T1 passed without a PRACK.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<Option<Response>, NoPrack> {
        let Some(u) = self.unacked.as_mut() else {
            return Ok(None);
        };
        if now >= u.give_up {
            self.finished();
            return Err(NoPrack);
        }
        if now < u.next {
            return Ok(None);
        }
        // §3: the interval doubles each time (no T2 cap for reliable provisionals).
        u.interval *= 2;
        u.next = now + u.interval;
        Ok(Some(u.resp.clone()))
    }
}

/// True when `h` requires option tag `tag`.
pub fn requires(h: &csps_sip::Headers, tag: &str) -> bool {
    h.values("Require")
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(tag))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const INVITE: &str = "INVITE sip:bob@csps.local SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.5;branch=z9hG4bK1\r\n\
        From: <sip:alice@csps.local>;tag=a\r\nTo: <sip:bob@csps.local>\r\nCall-ID: c1\r\n\
        CSeq: 7 INVITE\r\nRequire: 100rel, timer\r\nContent-Length: 0\r\n\r\n";

    fn request(text: &str) -> Request {
        match csps_sip::parse(text.as_bytes()).map(|p| p.message) {
            Ok(csps_sip::Message::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    fn prack(rack: &str) -> Request {
        request(&format!(
            "PRACK sip:csps@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.5;branch=z9hG4bK2\r\n\
             From: <sip:alice@csps.local>;tag=a\r\nTo: <sip:bob@csps.local>;tag=g\r\nCall-ID: c1\r\n\
             CSeq: 8 PRACK\r\nRAck: {rack}\r\nContent-Length: 0\r\n\r\n"
        ))
    }

    #[test]
    fn provisionals_are_sequenced_retransmitted_and_hold_an_sdp_final() {
        let inv = request(INVITE);
        assert!(requires(&inv.headers, "100rel"));
        assert!(!requires(&inv.headers, "replaces"));

        let t0 = Instant::now();
        let mut r = Rel1xx::new(7, 100);
        let ringing = r
            .provisional(t0, inv.response(180, "Ringing"))
            .expect("sent");
        assert_eq!(ringing.headers.get("RSeq"), Some("100"));
        assert_eq!(ringing.headers.get("Require"), Some("100rel"));
        let mut early = inv.response(183, "Session Progress");
        early.body = Bytes::from_static(b"v=0\r\n");
        assert!(r.provisional(t0, early).is_none(), "waits for the PRACK");
        // Retransmitted at T1, then 2·T1 later.
        assert_eq!(r.poll_timeout(), Some(t0 + T1));
        assert!(r.handle_timeout(t0 + T1).expect("due").is_some());
        assert!(r.handle_timeout(t0 + T1 * 2).expect("not yet").is_none());
        assert!(r.handle_timeout(t0 + T1 * 3).expect("due").is_some());
        // A PRACK for another RSeq: 481, nothing moves.
        let (resp, next) = r.prack(t0, &prack("99 7 INVITE"));
        assert_eq!((resp.status, next.is_none()), (481, true));
        let (resp, next) = r.prack(t0, &prack("100 7 INVITE"));
        assert_eq!(resp.status, 200);
        let early = next.expect("the 183 goes out now");
        assert_eq!(early.headers.get("RSeq"), Some("101"));
        // The 2xx waits for the PRACK of the 183 that carried SDP.
        assert!(r.final_ok(inv.response(200, "OK")).is_none());
        let (resp, next) = r.prack(t0, &prack("101 7 INVITE"));
        assert_eq!(resp.status, 200);
        assert_eq!(next.expect("the held 200").status, 200);
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn a_caller_that_never_pracks_is_given_up_on() {
        let inv = request(INVITE);
        let t0 = Instant::now();
        let mut r = Rel1xx::new(7, 1);
        r.provisional(t0, inv.response(180, "Ringing"));
        assert_eq!(r.handle_timeout(t0 + GIVE_UP), Err(NoPrack));
        assert_eq!(r.poll_timeout(), None);
        // Without SDP pending, a 2xx goes at once.
        let mut r = Rel1xx::new(7, 1);
        r.provisional(t0, inv.response(180, "Ringing"));
        assert!(r.final_ok(inv.response(200, "OK")).is_some());
        assert_eq!(r.poll_timeout(), None);
        assert_eq!(r.prack(t0, &prack("x y z")).0.status, 481);
    }
}
