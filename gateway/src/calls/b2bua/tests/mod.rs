//! Unit tests of the call: the helpers that drive one through its inputs, one file per area.

use super::*;
use crate::media::srtp::Suite;
use bytes::Bytes;
use csps_sip::{Message, Transport};
use rand::SeedableRng;

mod forks;
mod info;
mod media;
mod reoffer;
mod replaces;
mod timers;
mod transfer;

fn remote(a: &str) -> Remote {
    Remote {
        transport: Transport::Udp,
        addr: a.parse().expect("addr"),
        flow: None,
    }
}

fn invite(body: &str) -> Request {
    invite_with(body, "")
}

/// The caller's INVITE with `extra` header lines (each ending in CRLF).
fn invite_with(body: &str, extra: &str) -> Request {
    let s = format!(
        "INVITE sip:bob@csps.local SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.7:5060;branch=z9hG4bKa\r\n{extra}\
         From: <sip:alice@csps.local>;tag=at\r\nTo: <sip:bob@csps.local>\r\nCall-ID: a-call\r\n\
         CSeq: 2 INVITE\r\nContact: <sip:alice@10.0.0.7>\r\nMax-Forwards: 70\r\n\
         P-Asserted-Identity: <sip:ceo@csps.local>\r\nContent-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    match csps_sip::parse(s.as_bytes()).expect("parses").message {
        Message::Request(r) => r,
        Message::Response(_) => panic!("request expected"),
    }
}

const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 10.0.0.7\r\ns=-\r\nc=IN IP4 10.0.0.7\r\nt=0 0\r\n\
    m=audio 4000 RTP/AVP 0 18 101\r\na=rtpmap:18 G729/8000\r\na=rtpmap:101 telephone-event/8000\r\n";

const ANSWER: &str = "v=0\r\no=- 5 5 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n\
    m=audio 5000 RTP/AVP 0\r\n";

/// A call from alice to bob's two devices, started at `now`; the server transaction key is
/// borrowed from a real transaction layer.
fn call(body: &str, now: Instant) -> Call {
    call_with(body, "", now)
}

/// A call whose INVITE carries `extra` header lines.
fn call_with(body: &str, extra: &str, now: Instant) -> Call {
    call_srtp(body, extra, now, SrtpPolicy::default())
}

/// A call under the SRTP policy `srtp`.
fn call_srtp(body: &str, extra: &str, now: Instant, srtp: SrtpPolicy) -> Call {
    call_setup(body, extra, now, srtp, false)
}

/// A call under the SRTP policy `srtp` and `Use8KHz` (`narrowband`).
fn call_setup(body: &str, extra: &str, now: Instant, srtp: SrtpPolicy, narrowband: bool) -> Call {
    started(setup(body, extra, srtp, narrowband), now)
}

/// The call `setup` describes, started at `now`.
fn started(setup: Setup, now: Instant) -> Call {
    let mut c = Call::new(setup, Box::new(rand::rngs::StdRng::seed_from_u64(7)));
    c.start(now);
    c
}

/// What a call from alice to bob's two devices starts from.
fn setup(body: &str, extra: &str, srtp: SrtpPolicy, narrowband: bool) -> Setup {
    let key = key_for(&invite_with(body, extra), "10.0.0.7:5060");
    let target = |a: &str| Target {
        to: remote(a),
        uri: Uri::parse(&format!("sip:bob@{a}")).expect("uri"),
        local: "192.0.2.1:5060".parse().expect("addr"),
        sbc: None,
    };
    Setup {
        key,
        from: remote("203.0.113.5:5060"),
        local: "192.0.2.1:5060".parse().expect("addr"),
        invite: invite_with(body, extra),
        caller: "\"Alice\" <sip:alice@csps.local>".into(),
        caller_party: None,
        callee: "<sip:bob@csps.local>".into(),
        targets: vec![target("192.0.2.9:5060"), target("192.0.2.10:5060")],
        b_call_id: "b-call".into(),
        relay_a: "192.0.2.1:20000".parse().expect("addr"),
        relay_b: "192.0.2.1:20002".parse().expect("addr"),
        agent: "test".into(),
        a_sbc: None,
        srtp,
        music_on_hold: false,
        narrowband,
    }
}

fn drain(c: &mut Call) -> Vec<Output> {
    std::iter::from_fn(|| c.poll_output()).collect()
}

fn sent_invites(out: &[Output]) -> Vec<(u32, Request)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { tag, req, .. } if req.method == Method::Invite => {
                Some((*tag, req.clone()))
            }
            _ => None,
        })
        .collect()
}

fn reply(req: &Request, status: u16, to_tag: &str, body: Option<&str>) -> Response {
    let mut r = req.response(status, "x");
    let to = req.headers.get("To").expect("To");
    r.headers.set("To", format!("{to};tag={to_tag}"));
    r.headers.push("Contact", "<sip:bob@192.0.2.9>");
    if let Some(b) = body {
        r.headers.push("Content-Type", "application/sdp");
        r.body = Bytes::from(b.to_owned());
    }
    r
}

fn responses_to_a(out: &[Output]) -> Vec<&Response> {
    out.iter()
        .filter_map(|o| match o {
            Output::Respond { resp, .. } => Some(resp),
            _ => None,
        })
        .collect()
}

/// A call answered by the first device and ACKed by the caller; returns the call, the To tag
/// the caller got, and the INVITE the answering device received.
fn confirmed(t0: Instant) -> (Call, String, Request) {
    let (c, a_tag, inv1, _) = confirmed_with(t0, "");
    (c, a_tag, inv1)
}

/// As [`confirmed`], the caller's INVITE with `extra` header lines; also returns the 200
/// the caller got.
fn confirmed_with(t0: Instant, extra: &str) -> (Call, String, Request, Response) {
    let (c, a_tag, inv1, ok, _) = answered_with(t0, extra, ANSWER);
    (c, a_tag, inv1, ok)
}

/// A call from alice (`OFFER`, `extra` header lines) that bob's first device answered with
/// `answer` and alice ACKed; also the 200 she got and what the call did on the answer.
fn answered_with(
    t0: Instant,
    extra: &str,
    answer: &str,
) -> (Call, String, Request, Response, Vec<Output>) {
    let mut c = call_with(OFFER, extra, t0);
    let (a_tag, inv1, ok, out) = answer_first(&mut c, t0, answer);
    (c, a_tag, inv1, ok, out)
}

/// The started call `c`'s first device answers with `answer` and alice ACKs: her dialog's
/// gateway tag, the device's INVITE, the 200 she got and what the call did on the answer.
fn answer_first(
    c: &mut Call,
    t0: Instant,
    answer: &str,
) -> (String, Request, Response, Vec<Output>) {
    let invites = sent_invites(&drain(c));
    let (tag1, inv1) = invites[0].clone();
    c.handle(
        t0,
        Input::Response {
            tag: tag1,
            resp: reply(&inv1, 200, "d1", Some(answer)),
        },
    );
    let out = drain(c);
    let ok = responses_to_a(&out)[0].clone();
    let a_tag = ok.to_tag().expect("To tag");
    c.handle(t0, Input::Ack(in_dialog_a("ACK", 2, &a_tag, None)));
    (a_tag, inv1, ok, out)
}

fn parse_req(s: &str) -> Request {
    match csps_sip::parse(s.as_bytes()).expect("parses").message {
        Message::Request(r) => r,
        Message::Response(_) => panic!("request expected"),
    }
}

fn with_body(head: String, body: Option<(&str, &str)>) -> Request {
    let (ct, b) = body.unwrap_or(("", ""));
    let ct = if ct.is_empty() {
        String::new()
    } else {
        format!("Content-Type: {ct}\r\n")
    };
    parse_req(&format!("{head}{ct}Content-Length: {}\r\n\r\n{b}", b.len()))
}

/// A request from the caller inside its dialog with the gateway.
fn in_dialog_a(method: &str, seq: u32, a_tag: &str, sdp: Option<&str>) -> Request {
    in_dialog_a_typed(method, seq, a_tag, sdp.map(|b| ("application/sdp", b)))
}

fn in_dialog_a_typed(method: &str, seq: u32, a_tag: &str, body: Option<(&str, &str)>) -> Request {
    with_body(
        format!(
            "{method} sip:csps@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.7:5060;branch=z9hG4bK{method}{seq}\r\n\
             From: <sip:alice@csps.local>;tag=at\r\nTo: <sip:bob@csps.local>;tag={a_tag}\r\n\
             Call-ID: a-call\r\nCSeq: {seq} {method}\r\nContact: <sip:alice@10.0.0.7>\r\nMax-Forwards: 70\r\n"
        ),
        body,
    )
}

/// A request from the answering device inside its dialog with the gateway.
fn in_dialog_b(method: &str, seq: u32, inv1: &Request, sdp: Option<&str>) -> Request {
    let from_tag = inv1.from_tag().expect("From tag");
    with_body(
        format!(
            "{method} sip:csps@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKb{method}{seq}\r\n\
             From: <sip:bob@csps.local>;tag=d1\r\nTo: \"Alice\" <sip:alice@csps.local>;tag={from_tag}\r\n\
             Call-ID: b-call\r\nCSeq: {seq} {method}\r\nContact: <sip:bob@192.0.2.9>\r\nMax-Forwards: 70\r\n"
        ),
        sdp.map(|b| ("application/sdp", b)),
    )
}

/// A server transaction key for a request (a real transaction layer's).
pub(in crate::calls) fn key_for(req: &Request, from: &str) -> TxnKey {
    let mut txns = csps_sip::transaction::Transactions::new(Default::default());
    txns.handle_input(csps_sip::transaction::Input::Receive {
        now: Instant::now(),
        from: remote(from),
        msg: Message::Request(req.clone()),
    });
    loop {
        match txns.poll_output() {
            Some(csps_sip::transaction::Output::Event(csps_sip::transaction::Event::Request {
                key,
                ..
            })) => break key,
            Some(_) => {}
            None => panic!("no request event"),
        }
    }
}

fn request_in(c: &mut Call, now: Instant, req: Request, from: &str) -> Vec<Output> {
    let key = key_for(&req, from);
    c.handle(
        now,
        Input::Request {
            key,
            from: remote(from),
            req,
        },
    );
    drain(c)
}

fn sent(out: &[Output], method: Method) -> Option<(u32, Request, Remote)> {
    out.iter().find_map(|o| match o {
        Output::Send { tag, req, to } if req.method == method => Some((*tag, req.clone(), *to)),
        _ => None,
    })
}

/// The other phone answers our relayed request `req` (sent with `tag`) 200 with `sdp`.
fn answer_with_sdp(c: &mut Call, now: Instant, tag: u32, req: &Request, sdp: &'static str) {
    let mut ok = req.response(200, "OK");
    ok.headers.push("Content-Type", "application/sdp");
    ok.body = Bytes::from_static(sdp.as_bytes());
    c.handle(now, Input::Response { tag, resp: ok });
}

fn body(m: &Request) -> String {
    String::from_utf8_lossy(&m.body).into_owned()
}

const SRTP_ANSWER: &str = "v=0\r\no=- 5 5 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n\
    m=audio 5000 RTP/AVP 0\r\na=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVpBQkNE\r\n";

const HOLD: &str = "v=0\r\no=- 1 2 IN IP4 10.0.0.7\r\ns=-\r\nc=IN IP4 10.0.0.7\r\nt=0 0\r\n\
    m=audio 4000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendonly\r\n";

/// Carol's one device, the target of the transfers below.
fn carol() -> TransferTarget {
    TransferTarget {
        targets: vec![Target {
            to: remote("192.0.2.20:5060"),
            uri: Uri::parse("sip:carol@192.0.2.20:5060").expect("uri"),
            local: "192.0.2.1:5060".parse().expect("addr"),
            sbc: None,
        }],
        to: "<sip:carol@csps.local>".into(),
        party: "sip:carol@csps.local".into(),
        call_id: "t-call".into(),
        replaces: None,
        referrer: None,
        asserted: None,
    }
}

/// What the relay was told about codecs, the last time in `out`.
fn transcoding(out: &[Output]) -> Option<Option<(LegFormat, LegFormat)>> {
    out.iter().rev().find_map(|o| match o {
        Output::Media(MediaChange::Transcode(t)) => Some(*t),
        _ => None,
    })
}
