//! Re-INVITEs and UPDATEs: hold, music on hold, glare, offerless re-INVITEs, bad SDP.

use super::*;

const HELD: &str = "v=0\r\no=- 5 6 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n\
    m=audio 5002 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=recvonly\r\n";

const HELD_INACTIVE: &str = "v=0\r\no=- 5 6 IN IP4 10.0.0.7\r\ns=-\r\nc=IN IP4 10.0.0.7\r\nt=0 0\r\n\
    m=audio 4000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=inactive\r\n";

#[test]
fn hold_from_the_caller_is_relayed_and_answered_through_the_relay() {
    let t0 = Instant::now();
    let (mut c, a_tag, _) = confirmed(t0);
    drain(&mut c);
    let out = request_in(
        &mut c,
        t0,
        in_dialog_a("INVITE", 3, &a_tag, Some(HOLD)),
        "203.0.113.5:5060",
    );
    let (tag, reinv, to) = sent(&out, Method::Invite).expect("re-INVITE to bob");
    assert_eq!(to.addr.to_string(), "192.0.2.9:5060");
    assert_eq!(reinv.headers.get("Call-ID"), Some("b-call"));
    assert_eq!(reinv.headers.get("CSeq"), Some("2 INVITE"));
    let b = body(&reinv);
    assert!(b.contains("a=sendonly"), "{b}");
    assert!(b.contains("m=audio 20002 RTP/AVP 0 101"), "{b}");
    assert!(!b.contains("10.0.0.7"), "{b}");
    assert!(responses_to_a(&out).is_empty(), "no answer before bob's");

    answer_with_sdp(&mut c, t0, tag, &reinv, HELD);
    let out = drain(&mut c);
    let to_a = responses_to_a(&out)[0].clone();
    assert_eq!(to_a.status, 200);
    assert_eq!(to_a.headers.get("CSeq"), Some("3 INVITE"));
    let b = String::from_utf8_lossy(&to_a.body).into_owned();
    assert!(
        b.contains("a=recvonly") && b.contains("m=audio 20000"),
        "{b}"
    );
    assert!(out.iter().any(|o| matches!(o,
        Output::Stateless { req, .. } if req.method == Method::Ack
            && req.headers.get("CSeq") == Some("2 ACK"))));
    assert!(out.iter().any(|o| matches!(o,
        Output::Media(MediaChange::B(Some(a), _)) if a.to_string() == "192.0.2.9:5002")));
    // Over UDP the 200 is repeated until alice's ACK.
    let due = c.poll_timeout().expect("2xx retransmission");
    c.handle_timeout(due);
    assert_eq!(responses_to_a(&drain(&mut c))[0].status, 200);
    c.handle(due, Input::Ack(in_dialog_a("ACK", 3, &a_tag, None)));
    assert_eq!(c.poll_timeout(), None, "ACKed: nothing more to repeat");
    // Resume works the same way afterwards.
    let out = request_in(
        &mut c,
        due,
        in_dialog_a("INVITE", 4, &a_tag, Some(OFFER)),
        "203.0.113.5:5060",
    );
    assert!(sent(&out, Method::Invite).is_some(), "resume relayed");
}

/// The music-on-hold outputs: which leg, and the format to play (`None`: stop).
fn music(out: &[Output]) -> Vec<(bool, Option<sdp::Format>)> {
    out.iter()
        .filter_map(|o| match o {
            Output::MusicOnHold { a, format } => Some((*a, *format)),
            _ => None,
        })
        .collect()
}

/// Music on hold: a caller's `inactive` hold reaches the callee as `sendonly` (the gateway
/// will send it music), the callee's `recvonly` goes back as `inactive`, and the music starts
/// in the callee's first codec; it stops as soon as the caller's resume comes in. Without
/// music on hold the hold passes unchanged and nothing is played.
#[test]
fn music_on_hold_turns_an_inactive_hold_into_sendonly_and_plays_until_the_resume() {
    let t0 = Instant::now();
    let inactive = HOLD.replace("a=sendonly", "a=inactive");
    // Alice holds bob with `inactive`, music on hold on or off.
    let hold = |on: bool| {
        let (mut c, a_tag, _) = confirmed(t0);
        c.setup.music_on_hold = on;
        drain(&mut c);
        let out = request_in(
            &mut c,
            t0,
            in_dialog_a("INVITE", 3, &a_tag, Some(&inactive)),
            "203.0.113.5:5060",
        );
        (c, a_tag, out)
    };
    let (_, _, out) = hold(false);
    let (_, reinv, _) = sent(&out, Method::Invite).expect("hold relayed");
    assert!(body(&reinv).contains("a=inactive"), "off: unchanged");
    assert!(music(&out).is_empty());

    let (mut c, a_tag, out) = hold(true);
    let (tag, reinv, _) = sent(&out, Method::Invite).expect("hold relayed");
    let b = body(&reinv);
    assert!(b.contains("a=sendonly") && !b.contains("a=inactive"), "{b}");
    assert!(
        music(&out).is_empty(),
        "nothing before bob accepts the hold"
    );
    answer_with_sdp(&mut c, t0, tag, &reinv, HELD);
    let out = drain(&mut c);
    let to_a = String::from_utf8_lossy(&responses_to_a(&out)[0].body).into_owned();
    assert!(
        to_a.contains("a=inactive") && !to_a.contains("a=recvonly"),
        "{to_a}"
    );
    let started = music(&out);
    assert!(
        matches!(started[..], [(false, Some(f))] if f.pt == 0 && f.codec == sdp::Codec::Pcmu),
        "{started:?}"
    );
    c.handle(t0, Input::Ack(in_dialog_a("ACK", 3, &a_tag, None)));
    let out = request_in(
        &mut c,
        t0,
        in_dialog_a("INVITE", 4, &a_tag, Some(OFFER)),
        "203.0.113.5:5060",
    );
    assert!(sent(&out, Method::Invite).is_some(), "resume relayed");
    assert_eq!(music(&out), vec![(false, None)]);
}

/// The callee holds the caller: the music goes to leg A, in the caller's answer's codec,
/// until the callee's resume; a held leg that answers `inactive` gets none.
#[test]
fn music_on_hold_for_a_caller_held_by_the_callee_and_none_for_a_leg_that_will_not_receive() {
    let t0 = Instant::now();
    let hold_by_bob = HOLD.replace("10.0.0.7", "192.0.2.9");
    for (alice_answers, expected) in [(HELD, Some(0)), (HELD_INACTIVE, None)] {
        let (mut c, _, inv1) = confirmed(t0);
        c.setup.music_on_hold = true;
        drain(&mut c);
        let out = request_in(
            &mut c,
            t0,
            in_dialog_b("INVITE", 1, &inv1, Some(&hold_by_bob)),
            "192.0.2.9:5060",
        );
        let (tag, reinv, _) = sent(&out, Method::Invite).expect("hold relayed to alice");
        assert!(body(&reinv).contains("a=sendonly"));
        answer_with_sdp(&mut c, t0, tag, &reinv, alice_answers);
        assert_eq!(
            music(&drain(&mut c))
                .iter()
                .map(|(a, f)| (*a, f.map(|f| f.pt)))
                .collect::<Vec<_>>(),
            vec![(true, expected)]
        );
        c.handle(t0, Input::Ack(in_dialog_b("ACK", 1, &inv1, None)));
        let out = request_in(
            &mut c,
            t0,
            in_dialog_b("INVITE", 2, &inv1, Some(OFFER)),
            "192.0.2.9:5060",
        );
        assert_eq!(music(&out), vec![(true, None)], "bob resumes");
    }
}

#[test]
fn glare_gets_491_and_a_second_request_from_the_same_side_500() {
    let t0 = Instant::now();
    let (mut c, a_tag, inv1) = confirmed(t0);
    drain(&mut c);
    let out = request_in(
        &mut c,
        t0,
        in_dialog_a("INVITE", 3, &a_tag, Some(HOLD)),
        "203.0.113.5:5060",
    );
    let (tag, reinv, _) = sent(&out, Method::Invite).expect("relayed");
    let out = request_in(
        &mut c,
        t0,
        in_dialog_b("INVITE", 1, &inv1, Some(ANSWER)),
        "192.0.2.9:5060",
    );
    assert_eq!(responses_to_a(&out)[0].status, 491, "glare on bob's leg");
    let out = request_in(
        &mut c,
        t0,
        in_dialog_a("UPDATE", 4, &a_tag, Some(HOLD)),
        "203.0.113.5:5060",
    );
    let r = responses_to_a(&out)[0];
    assert_eq!(r.status, 500);
    assert!(r.headers.get("Retry-After").is_some());
    // Bob saw glare too and says 491: alice gets it and the call stays as it was.
    c.handle(
        t0,
        Input::Response {
            tag,
            resp: reinv.response(491, "Request Pending"),
        },
    );
    let out = drain(&mut c);
    assert_eq!(responses_to_a(&out)[0].status, 491);
    assert!(!out.iter().any(|o| matches!(o, Output::Ended)));
    let out = request_in(
        &mut c,
        t0,
        in_dialog_b("INVITE", 2, &inv1, Some(ANSWER)),
        "192.0.2.9:5060",
    );
    assert!(
        sent(&out, Method::Invite).is_some(),
        "bob's retry goes through"
    );
}

#[test]
fn offerless_reinvite_takes_the_offer_from_the_200_and_the_answer_from_the_ack() {
    let t0 = Instant::now();
    let (mut c, a_tag, inv1) = confirmed(t0);
    drain(&mut c);
    let out = request_in(
        &mut c,
        t0,
        in_dialog_b("INVITE", 1, &inv1, None),
        "192.0.2.9:5060",
    );
    let (tag, reinv, to) = sent(&out, Method::Invite).expect("offerless re-INVITE to alice");
    assert_eq!(to.addr.to_string(), "203.0.113.5:5060");
    assert!(reinv.body.is_empty());
    assert_eq!(
        reinv.headers.get("To"),
        Some("<sip:alice@csps.local>;tag=at")
    );
    assert!(
        reinv
            .headers
            .get("From")
            .is_some_and(|f| f.contains(&a_tag))
    );
    // Alice offers in her 200.
    answer_with_sdp(&mut c, t0, tag, &reinv, OFFER);
    let out = drain(&mut c);
    let to_b = responses_to_a(&out)[0].clone();
    assert_eq!(to_b.status, 200);
    let b = String::from_utf8_lossy(&to_b.body).into_owned();
    assert!(
        b.contains("m=audio 20002 RTP/AVP 0 101"),
        "offer via the relay: {b}"
    );
    assert!(
        !out.iter().any(|o| matches!(o, Output::Stateless { .. })),
        "alice's ACK waits for bob's answer"
    );
    // Bob answers in his ACK; it goes on to alice in hers.
    let ack = in_dialog_b("ACK", 1, &inv1, Some(ANSWER));
    c.handle(t0, Input::Ack(ack));
    let out = drain(&mut c);
    let ack = out
        .iter()
        .find_map(|o| match o {
            Output::Stateless { req, .. } if req.method == Method::Ack => Some(req.clone()),
            _ => None,
        })
        .expect("ACK to alice");
    assert_eq!(ack.headers.get("CSeq"), Some("1 ACK"));
    assert!(
        body(&ack).contains("m=audio 20000 RTP/AVP 0"),
        "{}",
        body(&ack)
    );
    assert!(out.iter().any(|o| matches!(o,
        Output::Media(MediaChange::B(Some(a), _)) if a.to_string() == "192.0.2.9:5000")));
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn bad_sdp_in_an_update_gets_400_and_the_call_goes_on() {
    let t0 = Instant::now();
    let (mut c, a_tag, _) = confirmed(t0);
    drain(&mut c);
    let out = request_in(
        &mut c,
        t0,
        in_dialog_a("UPDATE", 3, &a_tag, Some("v=0\r\nm=audio banana\r\n")),
        "203.0.113.5:5060",
    );
    let r = responses_to_a(&out)[0];
    assert_eq!(r.status, 400);
    assert!(r.headers.get("Warning").is_some_and(|w| w.contains("SDP")));
    assert!(sent(&out, Method::Update).is_none());
    let g729 = "v=0\r\no=- 1 3 IN IP4 10.0.0.7\r\ns=-\r\nc=IN IP4 10.0.0.7\r\nt=0 0\r\n\
        m=audio 4000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n";
    let out = request_in(
        &mut c,
        t0,
        in_dialog_a("UPDATE", 4, &a_tag, Some(g729)),
        "203.0.113.5:5060",
    );
    assert_eq!(responses_to_a(&out)[0].status, 488);
    // A good UPDATE still goes through, and its answer comes back.
    let out = request_in(
        &mut c,
        t0,
        in_dialog_a("UPDATE", 5, &a_tag, Some(HOLD)),
        "203.0.113.5:5060",
    );
    let (tag, upd, _) = sent(&out, Method::Update).expect("relayed");
    answer_with_sdp(&mut c, t0, tag, &upd, HELD);
    let out = drain(&mut c);
    let r = responses_to_a(&out)[0];
    assert_eq!((r.status, r.headers.get("CSeq")), (200, Some("5 UPDATE")));
    assert!(String::from_utf8_lossy(&r.body).contains("a=recvonly"));
    assert!(
        !out.iter().any(|o| matches!(o, Output::Stateless { .. })),
        "no ACK for UPDATE"
    );
    assert_eq!(c.poll_timeout(), None);
}
