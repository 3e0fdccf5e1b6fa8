//! RFC 3261 §17 / RFC 6026 transaction layer, one test per rule, driven by a simulated clock.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use csps_sip::headers::NameAddr;
use csps_sip::transaction::{Event, Input, Output, Transactions, TxnConfig, TxnError, TxnKey};
use csps_sip::{Message, Method, Remote, Request, Response, SipHeaders, Transport, parse};

const MS: Duration = Duration::from_millis(1);

/// The simulated clock's origin: the only real clock reading in these tests.
#[allow(clippy::disallowed_methods)]
fn t0() -> Instant {
    Instant::now()
}

fn remote(transport: Transport, addr: &str) -> Remote {
    Remote {
        transport,
        addr: addr.parse::<SocketAddr>().expect("test address"),
        flow: None,
    }
}

fn phone() -> Remote {
    remote(Transport::Udp, "192.0.2.10:5060")
}

fn msg(text: &str) -> Message {
    parse(text.as_bytes()).expect("test message parses").message
}

fn request_via(method: &str, via: &str, call_id: &str, to_tag: Option<&str>) -> Request {
    let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
    let text = format!(
        "{method} sip:bob@192.0.2.20 SIP/2.0\r\n\
         Via: {via}\r\n\
         Route: <sip:proxy.example.com;lr>\r\n\
         Max-Forwards: 70\r\n\
         From: \"Alice\" <sip:alice@example.com>;tag=from1\r\n\
         To: <sip:bob@example.com>{to_tag}\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 7 {method}\r\n\
         Timestamp: 54\r\n\r\n"
    );
    match msg(&text) {
        Message::Request(r) => r,
        Message::Response(_) => unreachable!("a request"),
    }
}

fn request(method: &str, branch: &str) -> Request {
    request_via(
        method,
        &format!("SIP/2.0/UDP 192.0.2.10:5060;branch={branch}"),
        "call-1",
        None,
    )
}

fn with_to_tag(mut r: Response, tag: &str) -> Response {
    let mut to = NameAddr::parse(r.headers.get("To").expect("To")).expect("To parses");
    to.set_param("tag", Some(tag.to_owned()));
    r.headers.set("To", to.to_string());
    r
}

/// A response to `req` as it would come back over the wire.
fn answer(req: &Request, status: u16, tag: Option<&str>) -> Response {
    let r = req.response(status, "Reason");
    match tag {
        Some(t) => with_to_tag(r, t),
        None => r,
    }
}

fn drain(t: &mut Transactions) -> Vec<Output> {
    std::iter::from_fn(|| t.poll_output()).collect()
}

fn transmits(out: &[Output]) -> Vec<&Message> {
    out.iter()
        .filter_map(|o| match o {
            Output::Transmit { msg, .. } => Some(msg),
            _ => None,
        })
        .collect()
}

/// Responses sent again from their stored wire form: (status, bytes).
fn resends(out: &[Output]) -> Vec<(u16, Vec<u8>)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Resend { status, bytes, .. } => Some((*status, bytes.to_vec())),
            _ => None,
        })
        .collect()
}

fn events(out: &[Output]) -> Vec<&Event> {
    out.iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn status_of(m: &Message) -> u16 {
    match m {
        Message::Response(r) => r.status,
        Message::Request(_) => 0,
    }
}

fn receive(
    t: &mut Transactions,
    now: Instant,
    from: Remote,
    m: impl Into<Message2>,
) -> Vec<Output> {
    t.handle_input(Input::Receive {
        now,
        from,
        msg: m.into().0,
    });
    drain(t)
}

/// Lets tests pass a request or a response to `receive`.
struct Message2(Message);
impl From<Request> for Message2 {
    fn from(r: Request) -> Self {
        Message2(Message::Request(r))
    }
}
impl From<Response> for Message2 {
    fn from(r: Response) -> Self {
        Message2(Message::Response(r))
    }
}

/// Runs timers until `until`, returning (time since `start`, output) for everything produced.
fn run_until(t: &mut Transactions, start: Instant, until: Instant) -> Vec<(Duration, Output)> {
    let mut log = Vec::new();
    while let Some(at) = t.poll_timeout() {
        if at > until {
            break;
        }
        t.handle_input(Input::Timeout(at));
        for o in drain(t) {
            log.push((at - start, o));
        }
    }
    log
}

fn times_of_transmits(log: &[(Duration, Output)]) -> Vec<u64> {
    log.iter()
        .filter(|(_, o)| matches!(o, Output::Transmit { .. }))
        .map(|(d, _)| d.as_millis() as u64)
        .collect()
}

fn new_request_key(out: &[Output]) -> TxnKey {
    events(out)
        .into_iter()
        .find_map(|e| match e {
            Event::Request { key, .. } => Some(*key),
            _ => None,
        })
        .expect("a new server transaction")
}

#[test]
fn client_non_invite_udp_retransmissions_and_timer_f() {
    // RFC 3261 §17.1.2.2: Timer E starts at T1 and doubles up to T2; Timer F (64*T1) times out.
    let start = t0();
    let mut t = Transactions::new(TxnConfig::default());
    let key = t
        .send_request(start, phone(), request("OPTIONS", "z9hG4bKe1"))
        .expect("valid request");
    let first = drain(&mut t);
    assert_eq!(transmits(&first).len(), 1);
    let log = run_until(&mut t, start, start + Duration::from_secs(60));
    assert_eq!(
        times_of_transmits(&log),
        [
            500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500
        ]
    );
    let evs: Vec<_> = log
        .iter()
        .filter_map(|(d, o)| match o {
            Output::Event(e) => Some((d.as_millis(), e.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        evs,
        [
            (32000, Event::Timeout { key }),
            (32000, Event::Terminated { key })
        ]
    );
    assert!(t.is_empty());
    assert_eq!(t.poll_timeout(), None);
}

#[test]
fn client_non_invite_proceeding_retransmits_at_t2() {
    // RFC 3261 §17.1.2.2: in Proceeding, Timer E fires every T2; a provisional goes up.
    let start = t0();
    let mut t = Transactions::new(TxnConfig::default());
    let req = request("REGISTER", "z9hG4bKp1");
    let key = t.send_request(start, phone(), req.clone()).unwrap();
    drain(&mut t);
    let out = receive(&mut t, start + 100 * MS, phone(), answer(&req, 100, None));
    assert!(
        matches!(events(&out)[..], [Event::Response { key: k, resp }] if *k == key && resp.status == 100)
    );
    let log = run_until(&mut t, start, start + Duration::from_secs(10));
    // 500 ms (Trying's interval, armed before the 1xx), then T2 steps.
    assert_eq!(times_of_transmits(&log), [500, 4500, 8500]);
}

#[test]
fn client_non_invite_timer_k_absorbs_retransmitted_responses() {
    // RFC 3261 §17.1.2.2: a final response goes up once; Completed absorbs repeats until Timer K (T4).
    let start = t0();
    let mut t = Transactions::new(TxnConfig::default());
    let req = request("OPTIONS", "z9hG4bKk1");
    let key = t.send_request(start, phone(), req.clone()).unwrap();
    drain(&mut t);
    let ok = answer(&req, 200, Some("b"));
    let out = receive(&mut t, start + 50 * MS, phone(), ok.clone());
    assert_eq!(events(&out).len(), 1);
    let out = receive(&mut t, start + 60 * MS, phone(), ok.clone());
    assert!(out.is_empty(), "absorbed: {out:?}");
    assert_eq!(
        t.poll_timeout(),
        Some(start + 50 * MS + Duration::from_secs(5))
    );
    let log = run_until(&mut t, start, start + Duration::from_secs(6));
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].1, Output::Event(Event::Terminated { key }));
    let out = receive(&mut t, start + Duration::from_secs(7), phone(), ok);
    assert!(matches!(events(&out)[..], [Event::StrayResponse { .. }]));
}

#[test]
fn client_invite_timer_a_and_b() {
    // RFC 3261 §17.1.1.2: Timer A retransmits at T1 doubling (no cap); Timer B (64*T1) times out.
    let start = t0();
    let mut t = Transactions::new(TxnConfig::default());
    let key = t
        .send_request(start, phone(), request("INVITE", "z9hG4bKa1"))
        .unwrap();
    assert_eq!(transmits(&drain(&mut t)).len(), 1);
    let log = run_until(&mut t, start, start + Duration::from_secs(60));
    assert_eq!(
        times_of_transmits(&log),
        [500, 1500, 3500, 7500, 15500, 31500]
    );
    let evs: Vec<_> = log
        .iter()
        .filter_map(|(d, o)| match o {
            Output::Event(e) => Some((d.as_millis(), e.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        evs,
        [
            (32000, Event::Timeout { key }),
            (32000, Event::Terminated { key })
        ]
    );
    assert!(t.is_empty());
}

#[test]
fn client_invite_provisional_stops_timers_a_and_b() {
    // RFC 3261 §17.1.1.2: a 1xx in Calling moves to Proceeding, where A and B no longer run.
    let start = t0();
    let mut t = Transactions::new(TxnConfig::default());
    let req = request("INVITE", "z9hG4bKa2");
    t.send_request(start, phone(), req.clone()).unwrap();
    drain(&mut t);
    receive(
        &mut t,
        start + 10 * MS,
        phone(),
        answer(&req, 180, Some("b")),
    );
    // Only the answer guard (Timer C's role, restarted by each 1xx) is left.
    let guard = start + 10 * MS + TxnConfig::default().invite_answer_timeout;
    assert_eq!(t.poll_timeout(), Some(guard));
    receive(
        &mut t,
        start + 20 * MS,
        phone(),
        answer(&req, 183, Some("b")),
    );
    let guard = guard + 10 * MS;
    assert_eq!(t.poll_timeout(), Some(guard));
    let log = run_until(&mut t, start, guard);
    assert!(
        times_of_transmits(&log).is_empty(),
        "no retransmission in Proceeding"
    );
    assert_eq!(log.len(), 2, "Timeout and Terminated: {log:?}");
    assert!(t.is_empty());
}

#[test]
fn client_invite_acks_a_486() {
    // RFC 3261 §17.1.1.3: the layer ACKs a 3xx–6xx itself: same Request-URI, Call-ID, From, CSeq
    // number, top Via and Route; the response's To; Timer D absorbs retransmissions.
    let start = t0();
    let mut t = Transactions::new(TxnConfig::default());
    let mut req = request("INVITE", "z9hG4bKack");
    req.headers
        .push("Via", "SIP/2.0/UDP 198.51.100.1;branch=z9hG4bKlower");
    let key = t.send_request(start, phone(), req.clone()).unwrap();
    drain(&mut t);
    let busy = answer(&req, 486, Some("busy1"));
    let out = receive(&mut t, start + 100 * MS, phone(), busy.clone());
    let tx = transmits(&out);
    assert_eq!(tx.len(), 1);
    let Message::Request(ack) = tx[0] else {
        panic!("an ACK")
    };
    assert_eq!(ack.method, Method::Ack);
    assert_eq!(ack.uri, req.uri);
    assert_eq!(ack.headers.count("Via"), 1);
    assert_eq!(ack.top_via().unwrap().branch(), Some("z9hG4bKack"));
    assert_eq!(ack.call_id(), Some("call-1"));
    assert_eq!(ack.headers.get("From"), req.headers.get("From"));
    assert_eq!(ack.to_hdr().unwrap().tag(), Some("busy1"));
    assert_eq!(ack.headers.get("CSeq"), Some("7 ACK"));
    assert_eq!(ack.headers.get("Route"), Some("<sip:proxy.example.com;lr>"));
    assert!(ack.body.is_empty());
    assert_eq!(
        events(&out),
        [&Event::Response {
            key,
            resp: busy.clone()
        }]
    );
    // A retransmitted 486 gets the same ACK again and is not passed up.
    let out = receive(&mut t, start + 600 * MS, phone(), busy);
    assert_eq!(transmits(&out), [&Message::Request(ack.clone())]);
    assert!(events(&out).is_empty());
    // Timer D: 32 s on UDP.
    let log = run_until(&mut t, start, start + Duration::from_secs(40));
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].0, Duration::from_millis(32100));
    assert!(t.is_empty());
}

#[test]
fn client_invite_accepted_timer_m_passes_2xx_retransmissions() {
    // RFC 6026 §8.4: after a 2xx the client INVITE is Accepted; every 2xx (retransmissions and
    // forks) goes up until Timer M (64*T1), and the layer sends no ACK for a 2xx.
    let start = t0();
    let mut t = Transactions::new(TxnConfig::default());
    let req = request("INVITE", "z9hG4bKm1");
    let key = t.send_request(start, phone(), req.clone()).unwrap();
    drain(&mut t);
    let ok = answer(&req, 200, Some("b1"));
    let out = receive(&mut t, start + 100 * MS, phone(), ok.clone());
    assert!(transmits(&out).is_empty(), "no ACK for 2xx from the layer");
    assert_eq!(events(&out).len(), 1);
    let out = receive(&mut t, start + 600 * MS, phone(), ok.clone());
    assert_eq!(
        events(&out),
        [&Event::Response {
            key,
            resp: ok.clone()
        }]
    );
    let fork = answer(&req, 200, Some("b2"));
    let out = receive(&mut t, start + 700 * MS, phone(), fork.clone());
    assert_eq!(events(&out), [&Event::Response { key, resp: fork }]);
    // Non-2xx responses are absorbed in Accepted.
    assert!(
        receive(
            &mut t,
            start + 800 * MS,
            phone(),
            answer(&req, 486, Some("b3"))
        )
        .is_empty()
    );
    let log = run_until(&mut t, start, start + Duration::from_secs(40));
    assert_eq!(
        log,
        [(
            Duration::from_millis(32100),
            Output::Event(Event::Terminated { key })
        )]
    );
    let out = receive(&mut t, start + Duration::from_secs(41), phone(), ok);
    assert!(matches!(events(&out)[..], [Event::StrayResponse { .. }]));
}

#[test]
fn server_non_invite_absorbs_and_repeats_responses_until_timer_j() {
    // RFC 3261 §17.2.2: retransmissions are absorbed in Trying, answered with the last response in
    // Proceeding and Completed; Timer J (64*T1) ends Completed.
    let start = t0();
    let mut t = Transactions::new(TxnConfig::default());
    let req = request("MESSAGE", "z9hG4bKs1");
    let out = receive(&mut t, start, phone(), req.clone());
    let key = new_request_key(&out);
    assert!(transmits(&out).is_empty());
    assert!(receive(&mut t, start + 500 * MS, phone(), req.clone()).is_empty());
    let trying = req.response(100, "Trying");
    t.respond(start + 600 * MS, &key, trying.clone()).unwrap();
    assert_eq!(
        transmits(&drain(&mut t)),
        [&Message::Response(trying.clone())]
    );
    let out = receive(&mut t, start + 1500 * MS, phone(), req.clone());
    assert_eq!(transmits(&out), [&Message::Response(trying)]);
    let ok = with_to_tag(req.response(200, "OK"), "s");
    t.respond(start + 1600 * MS, &key, ok.clone()).unwrap();
    let out = drain(&mut t);
    assert_eq!(transmits(&out), [&Message::Response(ok.clone())]);
    let wire = Message::Response(ok.clone()).to_bytes();
    // The final response is kept in wire form and sent as such, first time and again.
    assert!(matches!(&out[0], Output::Transmit { encoded: Some(b), .. } if b[..] == wire[..]));
    let out = receive(&mut t, start + 3500 * MS, phone(), req.clone());
    assert!(transmits(&out).is_empty());
    assert_eq!(resends(&out), [(200, wire)]);
    assert_eq!(
        t.respond(start + 3600 * MS, &key, ok.clone()),
        Err(TxnError::WrongState)
    );
    let log = run_until(&mut t, start, start + Duration::from_secs(60));
    assert_eq!(
        log,
        [(
            Duration::from_millis(33600),
            Output::Event(Event::Terminated { key })
        )]
    );
    assert_eq!(
        t.respond(start, &key, ok),
        Err(TxnError::UnknownTransaction)
    );
    // After Timer J the same request is new again.
    let out = receive(&mut t, start + Duration::from_secs(61), phone(), req);
    assert!(matches!(events(&out)[..], [Event::Request { .. }]));
}

#[test]
fn server_non_invite_unanswered_is_dropped() {
    // RFC 3261 §17.2.2 has no timer in Trying; the layer drops a request the app never answers
    // after 64*T1 (the client's Timer F) so nothing leaks.
    let start = t0();
    let mut t = Transactions::new(TxnConfig::default());
    let key = new_request_key(&receive(
        &mut t,
        start,
        phone(),
        request("OPTIONS", "z9hG4bKg"),
    ));
    let log = run_until(&mut t, start, start + Duration::from_secs(60));
    let evs: Vec<_> = log.into_iter().map(|(d, o)| (d.as_millis(), o)).collect();
    assert_eq!(
        evs,
        [
            (32000, Output::Event(Event::Timeout { key })),
            (32000, Output::Event(Event::Terminated { key }))
        ]
    );
}

#[test]
fn server_invite_sends_100_trying_after_200_ms() {
    // RFC 3261 §17.2.1: the server transaction sends 100 Trying unless the TU answers within 200 ms.
    let start = t0();
    let mut t = Transactions::new(TxnConfig::default());
    let req = request("INVITE", "z9hG4bKt1");
    receive(&mut t, start, phone(), req.clone());
    assert_eq!(t.poll_timeout(), Some(start + 200 * MS));
    t.handle_input(Input::Timeout(start + 200 * MS));
    let out = drain(&mut t);
    let tx = transmits(&out);
    assert_eq!(tx.len(), 1);
    let Message::Response(trying) = tx[0] else {
        panic!("a response")
    };
    assert_eq!(trying.status, 100);
    assert_eq!(trying.to_hdr().unwrap().tag(), None);
    assert_eq!(trying.headers.get("Timestamp"), Some("54"));
    // A retransmitted INVITE in Proceeding gets the last provisional response.
    let out = receive(&mut t, start + 500 * MS, phone(), req);
    assert_eq!(status_of(transmits(&out)[0]), 100);

    // Answered in time: no 100 from the layer.
    let mut t = Transactions::new(TxnConfig::default());
    let req = request("INVITE", "z9hG4bKt2");
    let key = new_request_key(&receive(&mut t, start, phone(), req.clone()));
    t.respond(
        start + 50 * MS,
        &key,
        with_to_tag(req.response(180, "Ringing"), "x"),
    )
    .unwrap();
    let tx: Vec<u16> = transmits(&drain(&mut t))
        .into_iter()
        .map(status_of)
        .collect();
    assert_eq!(tx, [180]);
    t.handle_input(Input::Timeout(start + 300 * MS));
    assert!(drain(&mut t).is_empty());
}

#[test]
fn server_invite_timer_g_and_h_without_ack() {
    // RFC 3261 §17.2.1: a 3xx–6xx is repeated by Timer G (T1 doubling to T2) and Timer H (64*T1)
    // reports a failure when no ACK comes.
    let start = t0();
    let mut t = Transactions::new(TxnConfig::default());
    let req = request("INVITE", "z9hG4bKg1");
    let key = new_request_key(&receive(&mut t, start, phone(), req.clone()));
    let busy = with_to_tag(req.response(486, "Busy Here"), "s1");
    t.respond(start, &key, busy.clone()).unwrap();
    assert_eq!(
        transmits(&drain(&mut t)),
        [&Message::Response(busy.clone())]
    );
    // A retransmitted INVITE gets the final response.
    let out = receive(&mut t, start + 100 * MS, phone(), req);
    assert_eq!(transmits(&out), [&Message::Response(busy)]);
    let log = run_until(&mut t, start, start + Duration::from_secs(60));
    assert_eq!(
        times_of_transmits(&log),
        [
            500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500
        ]
    );
    let evs: Vec<_> = log
        .iter()
        .filter(|(_, o)| matches!(o, Output::Event(_)))
        .cloned()
        .collect();
    assert_eq!(
        evs,
        [
            (
                Duration::from_secs(32),
                Output::Event(Event::Timeout { key })
            ),
            (
                Duration::from_secs(32),
                Output::Event(Event::Terminated { key })
            )
        ]
    );
}

#[test]
fn server_invite_ack_confirms_and_timer_i_ends() {
    // RFC 3261 §17.2.1: the ACK for a 3xx–6xx moves Completed to Confirmed (absorbed, G and H stop);
    // Confirmed absorbs INVITE and ACK retransmissions until Timer I (T4).
    let start = t0();
    let mut t = Transactions::new(TxnConfig::default());
    let req = request("INVITE", "z9hG4bKi1");
    let key = new_request_key(&receive(&mut t, start, phone(), req.clone()));
    t.respond(start, &key, with_to_tag(req.response(603, "Decline"), "s2"))
        .unwrap();
    drain(&mut t);
    let ack = request_via(
        "ACK",
        "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKi1",
        "call-1",
        Some("s2"),
    );
    assert!(receive(&mut t, start + 100 * MS, phone(), ack.clone()).is_empty());
    assert!(receive(&mut t, start + 200 * MS, phone(), ack).is_empty());
    assert!(receive(&mut t, start + 300 * MS, phone(), req).is_empty());
    let log = run_until(&mut t, start, start + Duration::from_secs(60));
    assert_eq!(
        log,
        [(
            Duration::from_millis(5100),
            Output::Event(Event::Terminated { key })
        )]
    );
}

#[test]
fn server_invite_accepted_timer_l() {
    // RFC 6026 §8.5–§8.7: a 2xx moves the server INVITE to Accepted; INVITE retransmissions are
    // absorbed, ACKs go up, the app's own 2xx retransmissions are sent; Timer L (64*T1) ends it.
    let start = t0();
    let mut t = Transactions::new(TxnConfig::default());
    let req = request("INVITE", "z9hG4bKl1");
    let key = new_request_key(&receive(&mut t, start, phone(), req.clone()));
    let ok = with_to_tag(req.response(200, "OK"), "s3");
    t.respond(start + 10 * MS, &key, ok.clone()).unwrap();
    assert_eq!(transmits(&drain(&mut t)), [&Message::Response(ok.clone())]);
    assert!(receive(&mut t, start + 500 * MS, phone(), req).is_empty());
    t.respond(start + 510 * MS, &key, ok.clone()).unwrap();
    assert_eq!(transmits(&drain(&mut t)), [&Message::Response(ok.clone())]);
    assert_eq!(
        t.respond(start + 520 * MS, &key, with_to_tag(ok.clone(), "s3")),
        Ok(())
    );
    drain(&mut t);
    let mut bad = ok.clone();
    bad.status = 486;
    assert_eq!(t.respond(start, &key, bad), Err(TxnError::WrongState));
    // An ACK that reuses the INVITE's branch still goes up (an ACK to a 2xx normally has its own).
    let ack = request_via(
        "ACK",
        "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKl1",
        "call-1",
        Some("s3"),
    );
    let out = receive(&mut t, start + 600 * MS, phone(), ack.clone());
    assert_eq!(
        events(&out),
        [&Event::Ack {
            from: phone(),
            req: ack
        }]
    );
    let log = run_until(&mut t, start, start + Duration::from_secs(60));
    assert_eq!(
        log,
        [(
            Duration::from_millis(32010),
            Output::Event(Event::Terminated { key })
        )]
    );
}

#[test]
fn ack_to_2xx_with_own_branch_passes_through() {
    // RFC 3261 §17.1.1.3 / §17.2.3: an ACK for a 2xx has a new branch, matches nothing, and goes up.
    let start = t0();
    let mut t = Transactions::new(TxnConfig::default());
    let ack = request("ACK", "z9hG4bKnewbranch");
    let out = receive(&mut t, start, phone(), ack.clone());
    assert_eq!(
        out,
        [Output::Event(Event::Ack {
            from: phone(),
            req: ack
        })]
    );
    assert!(t.is_empty());
}

#[test]
fn cancel_matches_invite_and_unknown_cancel_gets_481() {
    // RFC 3261 §9.2: a CANCEL matching a pending INVITE is answered 200 (with the INVITE response's
    // To tag) and reported; one matching nothing is answered 481. Both absorb retransmissions.
    let start = t0();
    let mut t = Transactions::new(TxnConfig::default());
    let inv = request("INVITE", "z9hG4bKc1");
    let ikey = new_request_key(&receive(&mut t, start, phone(), inv.clone()));
    t.respond(
        start,
        &ikey,
        with_to_tag(inv.response(180, "Ringing"), "ring"),
    )
    .unwrap();
    drain(&mut t);
    let cancel = request("CANCEL", "z9hG4bKc1");
    let out = receive(
        &mut t,
        start + Duration::from_secs(2),
        phone(),
        cancel.clone(),
    );
    let tx = transmits(&out);
    assert_eq!(tx.len(), 1);
    let Message::Response(ok) = tx[0] else {
        panic!("a response")
    };
    assert_eq!(ok.status, 200);
    assert_eq!(ok.cseq().unwrap().method, Method::Cancel);
    assert_eq!(ok.to_hdr().unwrap().tag(), Some("ring"));
    assert_eq!(
        events(&out),
        [&Event::Cancel {
            key: ikey,
            from: phone(),
            req: cancel.clone()
        }]
    );
    // A retransmitted CANCEL: the same 200, no second event.
    let out = receive(&mut t, start + Duration::from_secs(3), phone(), cancel);
    assert!(transmits(&out).is_empty());
    assert_eq!(resends(&out).iter().map(|r| r.0).collect::<Vec<_>>(), [200]);
    assert!(events(&out).is_empty());
    // The app answers the INVITE with 487.
    t.respond(
        start + Duration::from_secs(3),
        &ikey,
        with_to_tag(inv.response(487, "Request Terminated"), "ring"),
    )
    .unwrap();
    assert_eq!(status_of(transmits(&drain(&mut t))[0]), 487);

    // Unknown INVITE: 481 with a To tag, no event.
    let stray = request("CANCEL", "z9hG4bKnone");
    let out = receive(&mut t, start + Duration::from_secs(4), phone(), stray);
    let tx = transmits(&out);
    assert_eq!(status_of(tx[0]), 481);
    let Message::Response(r) = tx[0] else {
        panic!()
    };
    assert!(r.to_hdr().unwrap().tag().is_some());
    assert!(events(&out).is_empty());

    // A CANCEL after the final response: 200, but nothing for the app.
    let out = receive(
        &mut t,
        start + Duration::from_secs(5),
        phone(),
        request("CANCEL", "z9hG4bKc1"),
    );
    // (a retransmission of the first CANCEL: its stored 200 again)
    assert!(transmits(&out).is_empty() && events(&out).is_empty());
    assert_eq!(resends(&out).iter().map(|r| r.0).collect::<Vec<_>>(), [200]);
}

#[test]
fn cancel_differs_by_sent_by() {
    // RFC 3261 §17.2.3: the sent-by must match as well as the branch.
    let start = t0();
    let mut t = Transactions::new(TxnConfig::default());
    receive(&mut t, start, phone(), request("INVITE", "z9hG4bKsb"));
    let cancel = request_via(
        "CANCEL",
        "SIP/2.0/UDP 192.0.2.99:5060;branch=z9hG4bKsb",
        "call-1",
        None,
    );
    let out = receive(&mut t, start, phone(), cancel);
    assert_eq!(status_of(transmits(&out)[0]), 481);
}

#[test]
fn client_cancel_needs_a_provisional_response() {
    // RFC 3261 §9.1: CANCEL only after a provisional response; it copies Request-URI, Call-ID, To,
    // From, CSeq number and the top Via (same branch) of the INVITE, and has its own transaction.
    let start = t0();
    let mut t = Transactions::new(TxnConfig::default());
    let inv = request("INVITE", "z9hG4bKcc");
    let ikey = t.send_request(start, phone(), inv.clone()).unwrap();
    drain(&mut t);
    assert_eq!(t.cancel(start, &ikey), Err(TxnError::NotCancellable));
    receive(
        &mut t,
        start + 10 * MS,
        phone(),
        answer(&inv, 180, Some("b")),
    );
    let ckey = t.cancel(start + 20 * MS, &ikey).unwrap();
    let out = drain(&mut t);
    let Message::Request(c) = transmits(&out)[0] else {
        panic!()
    };
    assert_eq!(c.method, Method::Cancel);
    assert_eq!(c.uri, inv.uri);
    assert_eq!(c.top_via().unwrap().branch(), Some("z9hG4bKcc"));
    assert_eq!(c.headers.get("CSeq"), Some("7 CANCEL"));
    assert_eq!(c.headers.get("To"), inv.headers.get("To"));
    // The 200 to the CANCEL matches the CANCEL's transaction, the 487 the INVITE's.
    let out = receive(&mut t, start + 30 * MS, phone(), answer(c, 200, Some("b")));
    assert!(matches!(events(&out)[..], [Event::Response { key, .. }] if *key == ckey));
    let out = receive(
        &mut t,
        start + 40 * MS,
        phone(),
        answer(&inv, 487, Some("b")),
    );
    assert!(matches!(events(&out)[..], [Event::Response { key, .. }] if *key == ikey));
}

#[test]
fn reliable_transports_have_no_retransmission_timers() {
    // RFC 3261 §17.1.1.2, §17.1.2.2, §17.2.1, §17.2.2: Timers A, E, G are off on reliable
    // transports and D, I, J, K are zero.
    let start = t0();
    let tcp = Remote {
        flow: Some(csps_sip::FlowId(9)),
        ..remote(Transport::Tcp, "192.0.2.10:5060")
    };
    let mut t = Transactions::new(TxnConfig::default());
    // Client non-INVITE: one transmission, then Timer F.
    t.send_request(start, tcp, request("OPTIONS", "z9hG4bKr1"))
        .unwrap();
    // Client INVITE: one transmission, then Timer B.
    t.send_request(start, tcp, request("INVITE", "z9hG4bKr2"))
        .unwrap();
    assert_eq!(transmits(&drain(&mut t)).len(), 2);
    let log = run_until(&mut t, start, start + Duration::from_secs(60));
    assert!(times_of_transmits(&log).is_empty());
    assert!(t.is_empty());

    // Client INVITE with a 486: ACK, and terminated at once (Timer D = 0).
    let inv = request("INVITE", "z9hG4bKr3");
    let key = t.send_request(start, tcp, inv.clone()).unwrap();
    drain(&mut t);
    let out = receive(&mut t, start, tcp, answer(&inv, 486, Some("x")));
    assert_eq!(transmits(&out).len(), 1);
    assert_eq!(events(&out).last(), Some(&&Event::Terminated { key }));

    // Server non-INVITE: Timer J = 0.
    let req = request("OPTIONS", "z9hG4bKr4");
    let key = new_request_key(&receive(&mut t, start, tcp, req.clone()));
    t.respond(start, &key, with_to_tag(req.response(200, "OK"), "t"))
        .unwrap();
    let out = drain(&mut t);
    assert!(matches!(&out[0], Output::Transmit { to, .. } if *to == tcp));
    assert_eq!(out[1], Output::Event(Event::Terminated { key }));

    // Server INVITE 486: no Timer G; the ACK ends it at once (Timer I = 0).
    let inv = request("INVITE", "z9hG4bKr5");
    let key = new_request_key(&receive(&mut t, start, tcp, inv.clone()));
    t.respond(start, &key, with_to_tag(inv.response(486, "Busy"), "t"))
        .unwrap();
    drain(&mut t);
    assert_eq!(
        t.poll_timeout(),
        Some(start + Duration::from_secs(32)),
        "only Timer H"
    );
    let ack = request_via(
        "ACK",
        "SIP/2.0/TCP 192.0.2.10:5060;branch=z9hG4bKr5",
        "call-1",
        Some("t"),
    );
    let ack = {
        // Same sent-by as the INVITE's Via.
        let mut a = ack;
        a.headers
            .set("Via", "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKr5");
        a
    };
    let out = receive(&mut t, start, tcp, ack);
    assert_eq!(out, [Output::Event(Event::Terminated { key })]);
    assert!(t.is_empty());
}

#[test]
fn rfc2543_requests_match_without_magic_cookie() {
    // RFC 3261 §17.2.3: without the z9hG4bK cookie, requests match on Request-URI, To tag, From
    // tag, Call-ID, CSeq and top Via; an ACK's To tag must be the final response's.
    let start = t0();
    let mut t = Transactions::new(TxnConfig::default());
    let via = "SIP/2.0/UDP 192.0.2.10:5060";
    let inv = request_via("INVITE", via, "old-1", None);
    let key = new_request_key(&receive(&mut t, start, phone(), inv.clone()));
    // Retransmission: no new transaction.
    let out = receive(&mut t, start + 500 * MS, phone(), inv.clone());
    assert!(events(&out).is_empty());
    assert_eq!(status_of(transmits(&out)[0]), 100);
    // Another Call-ID is another transaction.
    let other = request_via("INVITE", via, "old-2", None);
    assert!(matches!(
        events(&receive(&mut t, start, phone(), other))[..],
        [Event::Request { .. }]
    ));
    // CANCEL matches the INVITE.
    let cancel = request_via("CANCEL", via, "old-1", None);
    let out = receive(&mut t, start + 600 * MS, phone(), cancel);
    assert!(matches!(events(&out)[..], [Event::Cancel { key: k, .. }] if *k == key));
    t.respond(
        start + 700 * MS,
        &key,
        with_to_tag(inv.response(487, "Terminated"), "srv"),
    )
    .unwrap();
    drain(&mut t);
    // An ACK with another To tag does not match; the right one is absorbed.
    let wrong = request_via("ACK", via, "old-1", Some("other"));
    assert!(matches!(
        events(&receive(&mut t, start + 800 * MS, phone(), wrong))[..],
        [Event::Ack { .. }]
    ));
    let ack = request_via("ACK", via, "old-1", Some("srv"));
    assert!(receive(&mut t, start + 900 * MS, phone(), ack).is_empty());
    // Confirmed: no more Timer G (the only transmission left is old-2's 100 Trying).
    let log = run_until(&mut t, start, start + Duration::from_secs(6));
    let statuses: Vec<u16> = log
        .iter()
        .filter_map(|(_, o)| match o {
            Output::Transmit { msg, .. } => Some(status_of(msg)),
            _ => None,
        })
        .collect();
    assert_eq!(statuses, [100]);
}

#[test]
fn stray_responses_and_command_errors() {
    // RFC 3261 §17.1.3: a response matching no client transaction (branch + CSeq method) is stray.
    let start = t0();
    let mut t = Transactions::new(TxnConfig::default());
    let req = request("OPTIONS", "z9hG4bKst");
    t.send_request(start, phone(), req.clone()).unwrap();
    drain(&mut t);
    // Same branch, other CSeq method: does not match.
    let mut r = answer(&req, 200, Some("x"));
    r.headers.set("CSeq", "7 INVITE");
    assert!(matches!(
        events(&receive(&mut t, start, phone(), r))[..],
        [Event::StrayResponse { .. }]
    ));
    assert_eq!(
        t.send_request(start, phone(), req.clone()),
        Err(TxnError::Duplicate)
    );
    assert_eq!(
        t.send_request(start, phone(), request("ACK", "z9hG4bKx")),
        Err(TxnError::Ack)
    );
    let mut nobranch = req.clone();
    nobranch.headers.set("Via", "SIP/2.0/UDP 192.0.2.10");
    assert_eq!(
        t.send_request(start, phone(), nobranch),
        Err(TxnError::NoBranch)
    );
    let key = t
        .send_request(start, phone(), request("INFO", "z9hG4bKc2"))
        .unwrap();
    assert_eq!(
        t.respond(start, &key, req.response(200, "OK")),
        Err(TxnError::NotServer)
    );
    assert_eq!(
        t.respond(start, &key, req.response(99, "x")),
        Err(TxnError::InvalidStatus(99))
    );
}

#[test]
fn flood_of_requests_then_timeouts_leaves_nothing() {
    // RFC 3261 §17: every transaction ends (Timers B, F, J, L and the answer guard): 100k server
    // and 100k client transactions leave len() == 0 and no armed timer.
    const N: usize = 100_000;
    let start = t0();
    let mut t = Transactions::new(TxnConfig::default());
    let options = request("OPTIONS", "z9hG4bK0");
    let invite = request("INVITE", "z9hG4bK0");
    let tcp = remote(Transport::Tcp, "192.0.2.11:5060");
    for i in 0..N {
        let now = start + Duration::from_micros(i as u64);
        let mut r = if i % 4 == 3 {
            invite.clone()
        } else {
            options.clone()
        };
        r.headers.set(
            "Via",
            format!("SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKs{i}"),
        );
        // Server side: half answered (Timer J, or L for INVITE), half never (the guard).
        t.handle_input(Input::Receive {
            now,
            from: phone(),
            msg: Message::Request(r.clone()),
        });
        while let Some(o) = t.poll_output() {
            if let Output::Event(Event::Request { key, req, .. }) = o
                && i % 2 == 1
            {
                t.respond(now, &key, with_to_tag(req.response(200, "OK"), "t"))
                    .unwrap();
            }
        }
        // Client side, never answered: over TCP (Timers B, F alone) and, for a tenth, over UDP
        // with the full retransmission schedule.
        r.headers.set(
            "Via",
            format!("SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bKc{i}"),
        );
        let to = if i % 10 == 0 { phone() } else { tcp };
        t.send_request(now, to, r).unwrap();
        while t.poll_output().is_some() {}
    }
    assert_eq!(t.len(), 2 * N);
    let mut steps = 0;
    while let Some(at) = t.poll_timeout() {
        t.handle_input(Input::Timeout(at));
        while t.poll_output().is_some() {}
        steps += 1;
        assert!(steps < 10_000_000, "timers must run out");
    }
    assert_eq!(t.len(), 0);
}

mod random {
    //! RFC 3261 §17 robustness: any sequence of messages, answers and clock steps neither panics
    //! nor leaks: after an hour of quiet every transaction has terminated.
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        /// A request from the phone: method index, branch index, RFC 2543 style, To tag.
        Receive(u8, u8, bool, bool),
        /// A response to one of our requests: status, branch index, method index.
        Response(u16, u8, u8),
        /// The app answers its n-th live server transaction with a status.
        Respond(u16, u8),
        /// The app sends a request: method index, branch index, over TCP.
        Send(u8, u8, bool),
        /// The app cancels its n-th client transaction.
        Cancel(u8),
        /// Time passes (ms).
        Wait(u32),
    }

    const METHODS: [&str; 5] = ["INVITE", "ACK", "CANCEL", "OPTIONS", "BYE"];

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..5u8, 0..4u8, any::<bool>(), any::<bool>())
                .prop_map(|(m, b, o, t)| Op::Receive(m, b, o, t)),
            (
                prop_oneof![Just(100u16), Just(180), Just(200), Just(486), 0..1000u16],
                0..4u8,
                0..5u8
            )
                .prop_map(|(s, b, m)| Op::Response(s, b, m)),
            (
                prop_oneof![Just(180u16), Just(200), Just(487), 0..800u16],
                0..8u8
            )
                .prop_map(|(s, n)| Op::Respond(s, n)),
            (0..5u8, 0..4u8, any::<bool>()).prop_map(|(m, b, t)| Op::Send(m, b, t)),
            (0..8u8).prop_map(Op::Cancel),
            (0..40_000u32).prop_map(Op::Wait),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_sequence_terminates(ops in proptest::collection::vec(op(), 1..60)) {
            let start = t0();
            let mut now = start;
            let mut t = Transactions::new(TxnConfig::default());
            let mut servers: Vec<(TxnKey, Request)> = Vec::new();
            let mut clients: Vec<TxnKey> = Vec::new();
            let tcp = remote(Transport::Tcp, "192.0.2.10:5060");
            for op in ops {
                match op {
                    Op::Receive(m, b, old, tag) => {
                        let via = if old {
                            format!("SIP/2.0/UDP 192.0.2.10:{}", 5060 + u16::from(b))
                        } else {
                            format!("SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK{b}")
                        };
                        let r = request_via(METHODS[m as usize], &via, "c", tag.then_some("x"));
                        t.handle_input(Input::Receive { now, from: phone(), msg: Message::Request(r) });
                    }
                    Op::Response(status, b, m) => {
                        let mut r = request(METHODS[m as usize], &format!("z9hG4bKo{b}")).response(status, "X");
                        r.status = status;
                        t.handle_input(Input::Receive { now, from: phone(), msg: Message::Response(r) });
                    }
                    Op::Respond(status, n) => {
                        if let Some((key, req)) = servers.get(n as usize % servers.len().max(1)) {
                            let mut r = req.response(200, "X");
                            r.status = status;
                            let _ = t.respond(now, key, r);
                        }
                    }
                    Op::Send(m, b, reliable) => {
                        let to = if reliable { tcp } else { phone() };
                        if let Ok(k) = t.send_request(now, to, request(METHODS[m as usize], &format!("z9hG4bKo{b}"))) {
                            clients.push(k);
                        }
                    }
                    Op::Cancel(n) => {
                        if let Some(k) = clients.get(n as usize % clients.len().max(1)) {
                            let _ = t.cancel(now, k);
                        }
                    }
                    Op::Wait(ms) => {
                        now += Duration::from_millis(u64::from(ms));
                        t.handle_input(Input::Timeout(now));
                    }
                }
                while let Some(o) = t.poll_output() {
                    match o {
                        Output::Event(Event::Request { key, req, .. }) => servers.push((key, req)),
                        Output::Event(Event::Terminated { key }) => servers.retain(|s| s.0 != key),
                        _ => {}
                    }
                }
            }
            for _ in 0..3600 {
                now += Duration::from_secs(1);
                t.handle_input(Input::Timeout(now));
                while t.poll_output().is_some() {}
            }
            prop_assert_eq!(t.len(), 0);
            prop_assert_eq!(t.poll_timeout(), None);
        }
    }
}
