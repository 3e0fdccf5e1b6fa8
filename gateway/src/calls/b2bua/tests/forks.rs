//! Ringing: forks, the winning answer, refusals, CANCEL, reliable provisionals, offerless INVITEs.

use super::*;

/// Every device answers `status`.
fn answer_all(c: &mut Call, invites: &[(u32, Request)], now: Instant, status: u16) {
    for (tag, inv) in invites {
        let resp = reply(inv, status, "t", None);
        c.handle(now, Input::Response { tag: *tag, resp });
    }
}

#[test]
fn forks_first_answer_wins_others_cancelled_with_reason() {
    let t0 = Instant::now();
    let mut c = call(OFFER, t0);
    let out = drain(&mut c);
    let invites = sent_invites(&out);
    assert_eq!(invites.len(), 2, "one INVITE per device");
    let (tag1, inv1) = invites[0].clone();
    let (tag2, inv2) = invites[1].clone();
    // The gateway's own identity, never the phone's; only supported codecs offered onwards,
    // the caller's first, then the ones the gateway transcodes to.
    let pai: Vec<_> = inv1.headers.get_all("P-Asserted-Identity").collect();
    assert_eq!(pai, ["\"Alice\" <sip:alice@csps.local>"]);
    let body = String::from_utf8_lossy(&inv1.body).into_owned();
    assert!(
        body.contains("m=audio 20002 RTP/AVP 0 101 9 111 8\r\n"),
        "{body}"
    );
    assert!(body.contains("c=IN IP4 192.0.2.1"), "{body}");

    c.handle(
        t0,
        Input::Response {
            tag: tag2,
            resp: reply(&inv2, 180, "d2", None),
        },
    );
    let out = drain(&mut c);
    assert_eq!(responses_to_a(&out)[0].status, 180);

    c.handle(
        t0,
        Input::Response {
            tag: tag1,
            resp: reply(&inv1, 200, "d1", Some(ANSWER)),
        },
    );
    let out = drain(&mut c);
    let ok = responses_to_a(&out)[0].clone();
    assert_eq!(ok.status, 200);
    let body = String::from_utf8_lossy(&ok.body).into_owned();
    assert!(body.contains("m=audio 20000 RTP/AVP 0"), "{body}");
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Stateless { req, .. } if req.method == Method::Ack))
    );
    assert!(out.iter().any(|o| matches!(o,
        Output::Media(MediaChange::B(Some(a), _)) if a.to_string() == "192.0.2.9:5000")));
    let cancel = out
        .iter()
        .find_map(|o| match o {
            Output::Send { req, to, .. } if req.method == Method::Cancel => Some((req, to)),
            _ => None,
        })
        .expect("the ringing fork is cancelled");
    assert_eq!(cancel.1.addr.to_string(), "192.0.2.10:5060");
    assert_eq!(cancel.0.headers.get("Reason"), Some(COMPLETED_ELSEWHERE));
}

#[test]
fn all_busy_gives_486_and_no_answer_gives_480() {
    let t0 = Instant::now();
    let mut c = call(OFFER, t0);
    let invites = sent_invites(&drain(&mut c));
    answer_all(&mut c, &invites, t0, 486);
    let out = drain(&mut c);
    assert_eq!(responses_to_a(&out)[0].status, 486);
    assert!(out.iter().any(|o| matches!(o, Output::Ended)));

    let mut c = call(OFFER, t0);
    let invites = sent_invites(&drain(&mut c));
    answer_all(&mut c, &invites, t0, 180);
    drain(&mut c);
    let due = c.poll_timeout().expect("ring timer");
    assert_eq!(due, t0 + NO_ANSWER);
    c.handle_timeout(due);
    let out = drain(&mut c);
    assert_eq!(responses_to_a(&out)[0].status, 480);
    let cancels = out
        .iter()
        .filter(|o| matches!(o, Output::Send { req, .. } if req.method == Method::Cancel))
        .count();
    assert_eq!(cancels, 2);
    // Each CANCELled INVITE ends with 487; then the call is over.
    answer_all(&mut c, &invites, due, 487);
    assert!(drain(&mut c).iter().any(|o| matches!(o, Output::Ended)));
}

#[test]
fn bad_or_unusable_offers_are_refused() {
    let t0 = Instant::now();
    let mut c = call("v=0\r\nthis is not sdp\r\n", t0);
    let out = drain(&mut c);
    assert_eq!(responses_to_a(&out)[0].status, 400);
    assert!(sent_invites(&out).is_empty());

    let g729 = "v=0\r\no=- 1 1 IN IP4 10.0.0.7\r\ns=-\r\nc=IN IP4 10.0.0.7\r\nt=0 0\r\n\
        m=audio 4000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n";
    let mut c = call(g729, t0);
    let out = drain(&mut c);
    let r = responses_to_a(&out)[0];
    assert_eq!(r.status, 488);
    let w = r.headers.get("Warning").expect("Warning");
    assert!(w.contains("PCMU/8000") && w.contains("opus/48000/2"), "{w}");
}

#[test]
fn caller_cancel_gives_487_and_cancels_forks() {
    let t0 = Instant::now();
    let mut c = call(OFFER, t0);
    let invites = sent_invites(&drain(&mut c));
    c.handle(
        t0,
        Input::Response {
            tag: invites[0].0,
            resp: reply(&invites[0].1, 180, "r", None),
        },
    );
    drain(&mut c);
    let mut cancel = invite(OFFER);
    cancel.method = Method::Cancel;
    c.handle(t0, Input::Cancel(cancel));
    let out = drain(&mut c);
    assert_eq!(responses_to_a(&out)[0].status, 487);
    let n = out
        .iter()
        .filter(|o| matches!(o, Output::Send { req, .. } if req.method == Method::Cancel))
        .count();
    assert_eq!(n, 1, "only the fork that rang can be cancelled now");
    // The silent fork is cancelled as soon as it rings (§9.1).
    c.handle(
        t0,
        Input::Response {
            tag: invites[1].0,
            resp: reply(&invites[1].1, 180, "s", None),
        },
    );
    let out = drain(&mut c);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Send { req, .. } if req.method == Method::Cancel))
    );
}

/// RFC 3262 towards a caller that requires 100rel: the device's 180 goes out reliably, its
/// 183 with early media waits for the 180's PRACK, the device's 200 waits for the 183's,
/// and a PRACK naming nothing gets 481.
#[test]
fn reliable_provisionals_for_a_caller_that_requires_them() {
    let t0 = Instant::now();
    let mut c = call_with(OFFER, "Require: 100rel\r\nSupported: 100rel\r\n", t0);
    let invites = sent_invites(&drain(&mut c));
    let (tag1, inv1) = invites[0].clone();
    let owned =
        |out: Vec<Output>| -> Vec<Response> { responses_to_a(&out).into_iter().cloned().collect() };
    let to_a = |c: &mut Call, tag: u32, resp: Response| {
        c.handle(t0, Input::Response { tag, resp });
        owned(drain(c))
    };
    let ringing = to_a(&mut c, tag1, reply(&inv1, 180, "d1", None));
    assert_eq!(ringing.len(), 1, "{ringing:?}");
    assert_eq!(ringing[0].headers.get("Require"), Some("100rel"));
    let rseq: u32 = ringing[0]
        .headers
        .get("RSeq")
        .and_then(|v| v.parse().ok())
        .expect("RSeq");
    let a_tag = ringing[0].to_tag().expect("To tag");
    assert!(to_a(&mut c, tag1, reply(&inv1, 183, "d1", Some(ANSWER))).is_empty());
    // Unacknowledged: retransmitted at T1.
    assert!(c.poll_timeout().is_some_and(|t| t <= t0 + T1));
    c.handle_timeout(t0 + T1);
    assert_eq!(responses_to_a(&drain(&mut c))[0].status, 180);

    let prack = |c: &mut Call, seq: u32, rack: String| {
        let mut req = in_dialog_a("PRACK", seq, &a_tag, None);
        req.headers.push("RAck", rack);
        owned(request_in(c, t0, req, "10.0.0.7:5060"))
    };
    let wrong = prack(&mut c, 3, format!("{} 2 INVITE", rseq + 7));
    assert_eq!(wrong[0].status, 481);
    let out = prack(&mut c, 4, format!("{rseq} 2 INVITE"));
    assert_eq!(out.iter().map(|r| r.status).collect::<Vec<_>>(), [200, 183]);
    assert_eq!(
        out[1].headers.get("RSeq"),
        Some((rseq + 1).to_string().as_str())
    );
    assert!(String::from_utf8_lossy(&out[1].body).contains("m=audio"));
    // The device answers: the 200 waits for the PRACK of the 183 that carried SDP.
    assert!(to_a(&mut c, tag1, reply(&inv1, 200, "d1", Some(ANSWER))).is_empty());
    let out = prack(&mut c, 5, format!("{} 2 INVITE", rseq + 1));
    assert_eq!(out.iter().map(|r| r.status).collect::<Vec<_>>(), [200, 200]);
    assert_eq!(out[1].headers.get("CSeq"), Some("2 INVITE"));
}

#[test]
fn offerless_invite_takes_the_offer_from_the_answer_and_the_answer_from_the_ack() {
    let t0 = Instant::now();
    let mut c = call("", t0);
    let out = drain(&mut c);
    assert_eq!(responses_to_a(&out)[0].status, 100);
    let invites = sent_invites(&out);
    assert_eq!(invites.len(), 2);
    let (tag1, inv1) = invites[0].clone();
    assert!(inv1.body.is_empty() && inv1.headers.get("Content-Type").is_none());
    // Bob's device offers in its 200 (G.729 is not relayed and is dropped).
    let bob_offer = "v=0\r\no=- 5 5 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n\
        m=audio 5000 RTP/AVP 18 0 101\r\na=rtpmap:18 G729/8000\r\na=rtpmap:101 telephone-event/8000\r\n";
    c.handle(
        t0,
        Input::Response {
            tag: tag1,
            resp: reply(&inv1, 200, "d1", Some(bob_offer)),
        },
    );
    let out = drain(&mut c);
    let ok = responses_to_a(&out)[0].clone();
    assert_eq!(ok.status, 200);
    let b = String::from_utf8_lossy(&ok.body).into_owned();
    assert!(b.contains("m=audio 20000 RTP/AVP 0 101"), "{b}");
    assert!(!b.contains("192.0.2.9"), "{b}");
    assert!(
        !out.iter().any(|o| matches!(o, Output::Stateless { .. })),
        "no ACK to bob before alice answers: {out:?}"
    );
    assert!(out.iter().any(|o| matches!(o,
        Output::Media(MediaChange::B(Some(a), _)) if a.to_string() == "192.0.2.9:5000")));
    // A retransmitted 200 from bob is not ACKed without the answer either.
    c.handle(
        t0,
        Input::Response {
            tag: tag1,
            resp: reply(&inv1, 200, "d1", Some(bob_offer)),
        },
    );
    assert!(
        !drain(&mut c)
            .iter()
            .any(|o| matches!(o, Output::Stateless { .. }))
    );
    let a_tag = ok.to_tag().expect("To tag");
    let answer = "v=0\r\no=- 1 1 IN IP4 10.0.0.7\r\ns=-\r\nc=IN IP4 10.0.0.7\r\nt=0 0\r\n\
        m=audio 4000 RTP/AVP 0\r\n";
    c.handle(t0, Input::Ack(in_dialog_a("ACK", 2, &a_tag, Some(answer))));
    let out = drain(&mut c);
    let ack = out
        .iter()
        .find_map(|o| match o {
            Output::Stateless { req, to } if req.method == Method::Ack => Some((req, to)),
            _ => None,
        })
        .expect("bob's ACK");
    assert_eq!(ack.1.addr.to_string(), "192.0.2.9:5060");
    let b = body(ack.0);
    assert!(b.contains("m=audio 20002 RTP/AVP 0"), "{b}");
    assert!(out.iter().any(|o| matches!(o,
        Output::Media(MediaChange::A(Some(a), _)) if a.to_string() == "10.0.0.7:4000")));
    assert!(c.is_answered());
}

#[test]
fn offerless_caller_whose_ack_has_no_answer_is_hung_up() {
    let t0 = Instant::now();
    let mut c = call("", t0);
    let invites = sent_invites(&drain(&mut c));
    let (tag1, inv1) = invites[0].clone();
    c.handle(
        t0,
        Input::Response {
            tag: tag1,
            resp: reply(&inv1, 200, "d1", Some(ANSWER)),
        },
    );
    let ok = responses_to_a(&drain(&mut c))[0].clone();
    let a_tag = ok.to_tag().expect("To tag");
    c.handle(t0, Input::Ack(in_dialog_a("ACK", 2, &a_tag, None)));
    let out = drain(&mut c);
    assert!(out.iter().any(|o| matches!(o,
        Output::Stateless { req, .. } if req.method == Method::Ack && req.body.is_empty())));
    let byes: Vec<String> = out
        .iter()
        .filter_map(|o| match o {
            Output::Send { req, to, .. } if req.method == Method::Bye => Some(to.addr.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(byes, ["203.0.113.5:5060", "192.0.2.9:5060"]);
    assert_eq!(c.end_reason(), Some(EndReason::Rejected));
}
