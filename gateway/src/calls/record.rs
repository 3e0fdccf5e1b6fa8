//! What a call leaves behind: its record (parties, start, answer and end times, final status,
//! why it ended) and the SIP messages of all its legs, for the console's ladder diagram
//! (`GET /api/calls/{id}/messages`). A running call's task owns its [`MessageLog`]; when the call
//! ends the log and the record move into [`History`], a ring of recent calls bounded in count
//! and bytes, so neither a long call nor a busy day can grow memory without limit.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use csps_sip::{Request, Response, SipHeaders};
use serde::Serialize;

use super::b2bua::EndReason;

/// Messages kept per call; later ones are counted, not kept (a call's first messages are the
/// ones that explain it).
pub const MAX_MESSAGES_PER_CALL: usize = 200;
/// Bytes of message text kept per call.
pub const MAX_BYTES_PER_CALL: usize = 256 * 1024;
/// Ended calls kept.
pub const MAX_ENDED_CALLS: usize = 1000;
/// Bytes of message text kept over all ended calls.
pub const MAX_ENDED_BYTES: usize = 32 << 20;

/// Which way a message went, seen from the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Received from the peer.
    In,
    /// Sent to the peer.
    Out,
}

/// One SIP message of a call.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct SipMessage {
    /// When the gateway received or sent it.
    pub at: DateTime<Utc>,
    /// The leg: `a` (the caller's), `b` (the callee's), then `c`, … for legs added later
    /// (a transfer target); one leg per Call-ID.
    #[schema(example = "a")]
    pub leg: String,
    /// Received or sent.
    pub direction: Direction,
    /// The other end's signalling address.
    #[schema(example = "127.0.0.1:5062")]
    pub peer: String,
    /// The request method, or for a response the method of its CSeq.
    #[schema(example = "INVITE")]
    pub method: String,
    /// The status of a response; `null` for a request.
    pub status: Option<u16>,
    /// The first line (`INVITE sip:bob@… SIP/2.0`, `SIP/2.0 180 Ringing`).
    pub first_line: String,
    /// The whole message as on the wire: first line, headers, body.
    pub text: String,
}

/// `text` with the master key of every SDES line (`inline:<key>`) replaced by `…`: the
/// ladder shows that SRTP was offered, never the keys.
fn redact_keys(text: String) -> String {
    if !text.contains("inline:") {
        return text;
    }
    text.split_inclusive('\n')
        .map(|line| {
            let Some(at) = line
                .find("inline:")
                .filter(|_| line.starts_with("a=crypto:"))
            else {
                return line.to_owned();
            };
            let start = at + "inline:".len();
            let end = line[start..]
                .find(|c: char| c == '|' || c.is_ascii_whitespace() || c == ';')
                .map_or(line.len(), |e| start + e);
            format!("{}…{}", &line[..start], &line[end..])
        })
        .collect()
}

/// A call's messages in the order the gateway saw them, bounded by
/// [`MAX_MESSAGES_PER_CALL`] and [`MAX_BYTES_PER_CALL`].
#[derive(Debug, Default)]
pub struct MessageLog {
    /// The Call-ID of each leg, in the order the legs appeared.
    legs: Vec<String>,
    messages: Vec<SipMessage>,
    bytes: usize,
    /// Messages not kept because the log was full.
    dropped: u64,
}

impl MessageLog {
    /// A request received from or sent to `peer`.
    pub fn request(&mut self, direction: Direction, peer: SocketAddr, req: &Request) {
        if self.full() {
            return;
        }
        let mut wire = Vec::with_capacity(512 + req.body.len());
        req.encode(&mut wire);
        self.push(
            direction,
            peer,
            req.call_id(),
            req.method.as_str(),
            None,
            wire,
        );
    }

    /// A response received from or sent to `peer`.
    pub fn response(&mut self, direction: Direction, peer: SocketAddr, resp: &Response) {
        if self.full() {
            return;
        }
        let mut wire = Vec::with_capacity(512 + resp.body.len());
        resp.encode(&mut wire);
        let method = resp
            .headers
            .get("CSeq")
            .and_then(|c| c.split_whitespace().nth(1))
            .unwrap_or("")
            .to_owned();
        let call_id = resp.headers.get("Call-ID").map(str::to_owned);
        self.push(
            direction,
            peer,
            call_id.as_deref(),
            &method,
            Some(resp.status),
            wire,
        );
    }

    fn full(&mut self) -> bool {
        let full = self.messages.len() >= MAX_MESSAGES_PER_CALL || self.bytes >= MAX_BYTES_PER_CALL;
        if full {
            self.dropped += 1;
        }
        full
    }

    fn push(
        &mut self,
        direction: Direction,
        peer: SocketAddr,
        call_id: Option<&str>,
        method: &str,
        status: Option<u16>,
        wire: Vec<u8>,
    ) {
        let text = redact_keys(String::from_utf8_lossy(&wire).into_owned());
        let first_line = text.lines().next().unwrap_or("").to_owned();
        let call_id = call_id.unwrap_or("");
        let leg = match self.legs.iter().position(|c| c == call_id) {
            Some(i) => i,
            None => {
                self.legs.push(call_id.to_owned());
                self.legs.len() - 1
            }
        };
        self.bytes += text.len();
        self.messages.push(SipMessage {
            at: Utc::now(),
            leg: leg_name(leg),
            direction,
            peer: peer.to_string(),
            method: method.to_owned(),
            status,
            first_line,
            text,
        });
    }

    /// The messages kept so far.
    pub fn messages(&self) -> &[SipMessage] {
        &self.messages
    }

    /// How many messages were not kept because the log was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Bytes of text kept.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes the messages out (at the end of the call).
    pub fn into_messages(self) -> Vec<SipMessage> {
        self.messages
    }
}

/// `a`, `b`, …, `z`, then `leg27`, … (no call has that many).
fn leg_name(i: usize) -> String {
    match u8::try_from(i) {
        Ok(n) if n < 26 => char::from(b'a' + n).to_string(),
        _ => format!("leg{}", i + 1),
    }
}

/// A call's record, for `GET /api/calls/history` and the console's events.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct CallRecord {
    /// The call's number on this server (as in `GET /api/calls`).
    pub id: u64,
    /// The caller's Call-ID.
    pub call_id: String,
    /// The caller (`sip:user@domain`; `anonymous` for an unchallenged emergency call).
    pub caller: String,
    /// The callee (`sip:user@domain`).
    pub callee: String,
    /// When the INVITE arrived.
    pub started_at: DateTime<Utc>,
    /// When the callee answered.
    pub answered_at: Option<DateTime<Utc>>,
    /// When the call ended; `null` while it runs.
    pub ended_at: Option<DateTime<Utc>>,
    /// Seconds from the answer to the end (0 for an unanswered call).
    pub talk_secs: u64,
    /// The final status the caller got (200 for an answered call, 486, 487, …); `null` before.
    pub status: Option<u16>,
    /// Why it ended; `null` while it runs.
    pub end_reason: Option<EndReason>,
    /// Whether the dialled number is an emergency number.
    pub emergency: bool,
    /// SIP messages kept for the call (`GET /api/calls/{id}/messages`).
    pub messages: usize,
    /// SIP messages not kept because the call's log was full.
    pub messages_dropped: u64,
    /// What each leg sent to the gateway, caller's leg first; filled when the call ends
    /// (empty for a conference room).
    pub media: Vec<crate::store::LegMedia>,
}

struct Ended {
    record: CallRecord,
    messages: Vec<SipMessage>,
    bytes: usize,
}

/// The recent ended calls, newest last, bounded by [`MAX_ENDED_CALLS`] and [`MAX_ENDED_BYTES`].
#[derive(Default)]
pub struct History {
    ended: Mutex<(VecDeque<Ended>, usize)>,
}

impl History {
    /// Keeps an ended call, dropping the oldest ones beyond the bounds.
    pub fn push(&self, record: CallRecord, log: MessageLog) {
        let bytes = log.bytes();
        let Ok(mut g) = self.ended.lock() else {
            return;
        };
        let (ring, total) = &mut *g;
        ring.push_back(Ended {
            record,
            messages: log.into_messages(),
            bytes,
        });
        *total += bytes;
        while ring.len() > MAX_ENDED_CALLS || (*total > MAX_ENDED_BYTES && ring.len() > 1) {
            if let Some(old) = ring.pop_front() {
                *total -= old.bytes;
            }
        }
    }

    /// The messages of ended call `id`, when it is still kept.
    pub fn messages(&self, id: u64) -> Option<Vec<SipMessage>> {
        let g = self.ended.lock().ok()?;
        g.0.iter()
            .rev()
            .find(|e| e.record.id == id)
            .map(|e| e.messages.clone())
    }

    /// The records of the ended calls kept, newest first.
    pub fn records(&self) -> Vec<CallRecord> {
        match self.ended.lock() {
            Ok(g) => g.0.iter().rev().map(|e| e.record.clone()).collect(),
            Err(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdes_keys_never_reach_the_ladder() {
        let t = "m=audio 4000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^31|1:1\r\na=x-note:inline:keep\r\n";
        let r = redact_keys(t.to_owned());
        assert!(!r.contains("WVNf"), "{r}");
        assert!(r.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:…|2^31|1:1\r\n"));
        assert!(r.contains("a=x-note:inline:keep"), "other lines untouched");
    }
    use csps_sip::Message;

    fn parse(s: &str) -> Message {
        csps_sip::parse(s.as_bytes()).expect("parses").message
    }

    fn invite(call_id: &str, pad: usize) -> Request {
        let body = "x".repeat(pad);
        match parse(&format!(
            "INVITE sip:bob@csps.local SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.7;branch=z9hG4bKa\r\n\
             From: <sip:alice@csps.local>;tag=a\r\nTo: <sip:bob@csps.local>\r\nCall-ID: {call_id}\r\n\
             CSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Type: text/plain\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )) {
            Message::Request(r) => r,
            Message::Response(_) => panic!("request expected"),
        }
    }

    fn record(id: u64) -> CallRecord {
        CallRecord {
            id,
            call_id: format!("c{id}"),
            caller: "sip:alice@csps.local".into(),
            callee: "sip:bob@csps.local".into(),
            started_at: Utc::now(),
            answered_at: None,
            ended_at: Some(Utc::now()),
            talk_secs: 0,
            status: Some(487),
            end_reason: Some(EndReason::Cancelled),
            emergency: false,
            messages: 0,
            messages_dropped: 0,
            media: Vec::new(),
        }
    }

    #[test]
    fn legs_are_named_by_call_id_and_responses_by_their_cseq_method() {
        let peer: SocketAddr = "127.0.0.1:5062".parse().expect("addr");
        let mut log = MessageLog::default();
        let a = invite("a-call", 0);
        log.request(Direction::In, peer, &a);
        let b = invite("b-call", 0);
        log.request(Direction::Out, peer, &b);
        log.response(Direction::In, peer, &b.response(180, "Ringing"));
        log.response(Direction::Out, peer, &a.response(180, "Ringing"));
        let m = log.messages();
        let legs: Vec<_> = m.iter().map(|m| m.leg.as_str()).collect();
        assert_eq!(legs, ["a", "b", "b", "a"]);
        assert_eq!(m[2].method, "INVITE");
        assert_eq!(m[2].status, Some(180));
        assert_eq!(m[2].first_line, "SIP/2.0 180 Ringing");
        assert_eq!(m[0].first_line, "INVITE sip:bob@csps.local SIP/2.0");
        assert!(m[0].text.contains("Call-ID: a-call\r\n"), "{}", m[0].text);
    }

    #[test]
    fn a_call_log_stops_at_its_cap_and_counts_the_rest() {
        let peer: SocketAddr = "127.0.0.1:5062".parse().expect("addr");
        let mut log = MessageLog::default();
        let req = invite("a", 0);
        for _ in 0..MAX_MESSAGES_PER_CALL + 5 {
            log.request(Direction::In, peer, &req);
        }
        assert_eq!(log.messages().len(), MAX_MESSAGES_PER_CALL);
        assert_eq!(log.dropped(), 5);
        let mut big = MessageLog::default();
        let req = invite("a", 60 * 1024);
        for _ in 0..10 {
            big.request(Direction::In, peer, &req);
        }
        assert!(big.messages().len() < 10 && big.bytes() < MAX_BYTES_PER_CALL + 70 * 1024);
        assert!(big.dropped() > 0);
    }

    #[test]
    fn history_keeps_the_newest_calls_within_its_bounds() {
        let h = History::default();
        for id in 0..(MAX_ENDED_CALLS as u64 + 10) {
            h.push(record(id), MessageLog::default());
        }
        let r = h.records();
        assert_eq!(r.len(), MAX_ENDED_CALLS);
        assert_eq!(r[0].id, MAX_ENDED_CALLS as u64 + 9, "newest first");
        assert!(h.messages(3).is_none(), "the oldest are gone");
        // Bytes bound: calls with big logs push out older ones.
        let peer: SocketAddr = "127.0.0.1:5062".parse().expect("addr");
        let req = invite("a", 60 * 1024);
        for id in 5000..5000 + 1000 {
            let mut log = MessageLog::default();
            for _ in 0..4 {
                log.request(Direction::In, peer, &req);
            }
            h.push(record(id), log);
        }
        let g = h.ended.lock().expect("lock");
        assert!(g.1 <= MAX_ENDED_BYTES, "{} bytes kept", g.1);
        assert_eq!(g.0.iter().map(|e| e.bytes).sum::<usize>(), g.1);
        assert!(g.0.len() < 200);
    }
}
