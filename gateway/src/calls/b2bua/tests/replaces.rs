//! INVITE with Replaces: take-over, pickup, offerless joining.

use super::*;

/// An INVITE with Replaces from `user`'s phone at 198.51.100.4 (PCMA and PCMU offered),
/// as the switch hands it to the call.
fn replacement(user: &str, replaces: &str, call_id: &str) -> Replacement {
    let sdp = "v=0\r\no=- 1 1 IN IP4 198.51.100.4\r\ns=-\r\nc=IN IP4 198.51.100.4\r\nt=0 0\r\n\
        m=audio 7000 RTP/AVP 8 0\r\n";
    replacement_with(user, replaces, call_id, sdp)
}

/// [`replacement`] with the body `sdp` (empty: an offerless INVITE).
fn replacement_with(user: &str, replaces: &str, call_id: &str, sdp: &str) -> Replacement {
    let content_type = if sdp.is_empty() {
        ""
    } else {
        "Content-Type: application/sdp\r\n"
    };
    let req = parse_req(&format!(
        "INVITE sip:bob@csps.local SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.4:5060;branch=z9hG4bK{call_id}\r\n\
         From: <sip:{user}@csps.local>;tag=new\r\nTo: <sip:bob@csps.local>\r\nCall-ID: {call_id}\r\n\
         CSeq: 1 INVITE\r\nContact: <sip:{user}@198.51.100.4>\r\nMax-Forwards: 70\r\n\
         Replaces: {replaces}\r\n{content_type}Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    ));
    Replacement {
        key: key_for(&req, "198.51.100.4:5060"),
        from: remote("198.51.100.4:5060"),
        local: "192.0.2.1:5060".parse().expect("addr"),
        replaces: Replaces::parse(replaces).expect("replaces"),
        req,
        party: format!("<sip:{user}@csps.local>"),
    }
}

/// The statuses of the answers in `out`.
fn statuses(out: &[Output]) -> Vec<u16> {
    responses_to_a(out).iter().map(|r| r.status).collect()
}

/// RFC 3891 §3 on an answered call: the tags are matched as the gateway holds the dialog
/// (the other way round: 481); `early-only` gets 486, another user 403. Bob's other phone
/// is answered 200 in the codec alice uses, the first phone gets a BYE with the reason,
/// alice a re-INVITE with the new phone's media; a second Replaces of the old dialog: 603.
#[test]
fn a_replacing_invite_takes_over_the_answered_device_and_refusals_leave_the_call() {
    let t0 = Instant::now();
    let (mut c, _, inv1) = confirmed(t0);
    drain(&mut c);
    let gw = inv1.from_tag().expect("tag");
    let named = format!("b-call;to-tag={gw};from-tag=d1");
    for (user, value, status) in [
        ("bob", format!("b-call;to-tag=d1;from-tag={gw}"), 481),
        ("bob", format!("{named};early-only"), 486),
        ("carol", named.clone(), 403),
    ] {
        c.handle(
            t0,
            Input::Replace(Box::new(replacement(user, &value, "r1"))),
        );
        let out = drain(&mut c);
        assert_eq!(statuses(&out), [status], "{value}");
        assert!(sent(&out, Method::Bye).is_none(), "{value}");
    }
    let rep = replacement("bob", &named, "r2");
    let key = rep.key;
    c.handle(t0, Input::Replace(Box::new(rep)));
    let out = drain(&mut c);
    let ok = out
        .iter()
        .find_map(|o| match o {
            Output::Respond { key: k, resp } if *k == key => Some(resp.clone()),
            _ => None,
        })
        .expect("200 to the new phone");
    assert_eq!(ok.status, 200);
    assert!(ok.to_tag().is_some());
    let answer = String::from_utf8_lossy(&ok.body).into_owned();
    // Alice's PCMU (what the old phone answered), not the new phone's first codec.
    assert!(answer.contains("m=audio 20002 RTP/AVP 0\r\n"), "{answer}");
    let (_, bye, to) = sent(&out, Method::Bye).expect("BYE to the old phone");
    assert_eq!(to, remote("192.0.2.9:5060"));
    assert_eq!(bye.headers.get("Reason"), Some(REPLACED));
    let (_, reinvite, to) = sent(&out, Method::Invite).expect("re-INVITE to alice");
    assert_eq!(to, remote("203.0.113.5:5060"));
    let offer = String::from_utf8_lossy(&reinvite.body).into_owned();
    assert!(offer.contains("m=audio 20000 RTP/AVP 0"), "{offer}");
    assert!(offer.contains("a=sendrecv"), "{offer}");
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Transferred { a: false, party, teams: false } if party == "sip:bob@csps.local"
    )));
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Media(MediaChange::B(Some(a), _)) if *a == "198.51.100.4:7000".parse().expect("addr")
    )));
    // The old dialog is gone; the new phone is the call's B leg.
    c.handle(
        t0,
        Input::Replace(Box::new(replacement("bob", &named, "r3"))),
    );
    assert_eq!(statuses(&drain(&mut c)), [603]);
    let legs = c.dialogs();
    assert_eq!(legs[1].call_id, "r2");
    assert_eq!(legs[1].device_tag, "new");
    // Its 200 is retransmitted until its ACK.
    let retransmitted = c.poll_timeout().expect("timer");
    c.handle_timeout(retransmitted);
    assert_eq!(statuses(&drain(&mut c)), [200]);
    c.handle(
        t0,
        Input::Ack(replacing_ack("r2", &legs[1].gateway_tag, "")),
    );
    assert!(c.replacement.is_none());
}

/// The ACK of bob's replacing phone (Call-ID `call_id`, the gateway's tag `gw`) with the
/// body `sdp` (an answer, or nothing).
fn replacing_ack(call_id: &str, gw: &str, sdp: &str) -> Request {
    let content_type = if sdp.is_empty() {
        ""
    } else {
        "Content-Type: application/sdp\r\n"
    };
    parse_req(&format!(
        "ACK sip:csps@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.4:5060;branch=z9hG4bKack\r\n\
         From: <sip:bob@csps.local>;tag=new\r\nTo: <sip:bob@csps.local>;tag={gw}\r\nCall-ID: {call_id}\r\n\
         CSeq: 1 ACK\r\nMax-Forwards: 70\r\n{content_type}Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    ))
}

/// An offerless INVITE with Replaces of bob's answered device (RFC 3891 with RFC 3264 §4)
/// in a confirmed call; the 200 to the new phone and its gateway tag.
fn offerless_takeover(c: &mut Call, t0: Instant, inv1: &Request) -> (Vec<Output>, Response) {
    let gw = inv1.from_tag().expect("tag");
    let named = format!("b-call;to-tag={gw};from-tag=d1");
    let rep = replacement_with("bob", &named, "r4", "");
    let key = rep.key;
    c.handle(t0, Input::Replace(Box::new(rep)));
    let out = drain(c);
    let ok = out
        .iter()
        .find_map(|o| match o {
            Output::Respond { key: k, resp } if *k == key => Some(resp.clone()),
            _ => None,
        })
        .expect("200 to the new phone");
    (out, ok)
}

/// RFC 3891 without an offer: the new phone's 200 carries the offer a transfer's target
/// gets (alice's media at the relay's side facing bob); nothing else changes until its
/// ACK (a re-INVITE meanwhile gets 491). The ACK's answer makes it bob's device: the old
/// one gets a BYE with the reason, alice a re-INVITE with the new phone's media.
#[test]
fn an_offerless_replacing_invite_gets_an_offer_and_takes_over_with_the_acks_answer() {
    let t0 = Instant::now();
    let (mut c, a_tag, inv1) = confirmed(t0);
    drain(&mut c);
    let (out, ok) = offerless_takeover(&mut c, t0, &inv1);
    assert_eq!(ok.status, 200);
    let offer = String::from_utf8_lossy(&ok.body).into_owned();
    assert!(
        offer.contains("m=audio 20002 RTP/AVP 0 101\r\n"),
        "alice's codecs, none she lacks: {offer}"
    );
    assert!(offer.contains("a=sendrecv"), "{offer}");
    assert!(sent(&out, Method::Bye).is_none(), "{out:?}");
    assert!(sent(&out, Method::Invite).is_none(), "{out:?}");
    assert!(!out.iter().any(|o| matches!(o, Output::Transferred { .. })));
    // Alice's hold meanwhile waits.
    c.handle(
        t0,
        Input::Request {
            key: key_for(
                &in_dialog_a("INVITE", 3, &a_tag, Some(HOLD)),
                "10.0.0.7:5060",
            ),
            from: remote("203.0.113.5:5060"),
            req: in_dialog_a("INVITE", 3, &a_tag, Some(HOLD)),
        },
    );
    assert_eq!(statuses(&drain(&mut c)), [491]);
    let gw = ok.to_tag().expect("To tag");
    let answer = "v=0\r\no=- 1 1 IN IP4 198.51.100.4\r\ns=-\r\nc=IN IP4 198.51.100.4\r\nt=0 0\r\n\
        m=audio 7000 RTP/AVP 0\r\na=sendrecv\r\n";
    c.handle(t0, Input::Ack(replacing_ack("r4", &gw, answer)));
    let out = drain(&mut c);
    let (_, bye, to) = sent(&out, Method::Bye).expect("BYE to the old phone");
    assert_eq!(to, remote("192.0.2.9:5060"));
    assert_eq!(bye.headers.get("Reason"), Some(REPLACED));
    let (_, reinvite, to) = sent(&out, Method::Invite).expect("re-INVITE to alice");
    assert_eq!(to, remote("203.0.113.5:5060"));
    let offer = String::from_utf8_lossy(&reinvite.body).into_owned();
    assert!(offer.contains("m=audio 20000 RTP/AVP 0"), "{offer}");
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Media(MediaChange::B(Some(a), _)) if *a == "198.51.100.4:7000".parse().expect("addr")
    )));
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Transferred { a: false, party, teams: false } if party == "sip:bob@csps.local"
    )));
    assert_eq!(c.dialogs()[1].call_id, "r4");
    assert!(c.joining.is_none() && c.replacement.is_none());
}

/// An offerless replacing phone whose ACK has no answer (or one that answers nothing
/// offered) gets a BYE in its new dialog; the old device and alice keep their call
/// untouched. No ACK at all: the BYE once the 200's retransmissions give up.
#[test]
fn an_offerless_replacing_phone_without_an_answer_is_hung_up_and_the_call_goes_on() {
    let unusable = "v=0\r\no=- 1 1 IN IP4 198.51.100.4\r\ns=-\r\nc=IN IP4 198.51.100.4\r\nt=0 0\r\n\
        m=audio 7000 RTP/AVP 18\r\n";
    for ack_body in ["", unusable, "none"] {
        let t0 = Instant::now();
        let (mut c, _, inv1) = confirmed(t0);
        drain(&mut c);
        let (_, ok) = offerless_takeover(&mut c, t0, &inv1);
        let gw = ok.to_tag().expect("To tag");
        if ack_body == "none" {
            let mut at = t0;
            while c.joining.is_some() {
                at = c.poll_timeout().expect("the 200 is retransmitted");
                c.handle_timeout(at);
            }
            assert!(at >= t0 + LINGER);
        } else {
            c.handle(t0, Input::Ack(replacing_ack("r4", &gw, ack_body)));
        }
        let out = drain(&mut c);
        let byes: Vec<Remote> = out
            .iter()
            .filter_map(|o| match o {
                Output::Send { req, to, .. } if req.method == Method::Bye => Some(*to),
                _ => None,
            })
            .collect();
        assert_eq!(byes, [remote("198.51.100.4:5060")], "{ack_body}");
        assert!(sent(&out, Method::Invite).is_none(), "{ack_body}");
        assert!(c.is_answered(), "{ack_body}");
        assert_eq!(c.end_reason(), None, "{ack_body}");
        assert_eq!(c.dialogs()[1].device_tag, "d1", "{ack_body}");
    }
}

/// Call pickup without an offer: carol's phone gets 200 with the ringing devices' offer,
/// and nothing else happens until her ACK; its answer (PCMA, which alice lacks) makes her
/// the answering device: alice gets 200 in her PCMU, the relay transcodes, the ringing
/// device gets a CANCEL. A second pickup meanwhile gets 491.
#[test]
fn an_offerless_pickup_answers_the_caller_with_the_acks_answer() {
    let t0 = Instant::now();
    let (mut c, inv2, _) = ringing_at_the_second_device(t0);
    let gw = inv2.from_tag().expect("tag");
    let early = format!("b-call;to-tag={gw};from-tag=ring2");
    c.handle(
        t0,
        Input::Replace(Box::new(replacement_with("carol", &early, "p5", ""))),
    );
    let out = drain(&mut c);
    assert_eq!(statuses(&out), [200], "carol's 200 only");
    let ok = responses_to_a(&out)[0].clone();
    let offer = String::from_utf8_lossy(&ok.body).into_owned();
    assert!(
        offer.contains("m=audio 20002 RTP/AVP 0 101 9 111 8\r\n"),
        "{offer}"
    );
    assert!(!out.iter().any(|o| matches!(o, Output::Send { .. })));
    c.handle(
        t0,
        Input::Replace(Box::new(replacement("carol", &early, "p6"))),
    );
    assert_eq!(statuses(&drain(&mut c)), [491]);
    let to_tag = ok.to_tag().expect("To tag");
    let answer = "v=0\r\no=- 1 1 IN IP4 198.51.100.4\r\ns=-\r\nc=IN IP4 198.51.100.4\r\nt=0 0\r\n\
        m=audio 7000 RTP/AVP 8\r\n";
    let ack = replacing_ack("p5", &to_tag, answer);
    c.handle(t0, Input::Ack(ack));
    let out = drain(&mut c);
    let to_alice = responses_to_a(&out);
    assert_eq!(to_alice.len(), 1);
    assert_eq!(to_alice[0].status, 200);
    let b = String::from_utf8_lossy(&to_alice[0].body).into_owned();
    assert!(b.contains("m=audio 20000 RTP/AVP 0"), "{b}");
    assert!(matches!(transcoding(&out), Some(Some(_))), "{out:?}");
    let (_, _, to) = sent(&out, Method::Cancel).expect("CANCEL to the ringing device");
    assert_eq!(to, remote("192.0.2.10:5060"));
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Transferred { a: false, party, .. } if party == "sip:carol@csps.local"
    )));
    assert!(out.iter().any(|o| matches!(o, Output::Answered)));
}

/// A call with Teams (alice's phone calls out through the trunk, as her number): a Replaces
/// naming the gateway's dialog with the trunk gets 403 (its party is the Teams user, no
/// phone's); one naming alice's own dialog, from her other phone (checked against her AoR,
/// not the number), moves the call there, and Teams gets a
/// `sendrecv` re-INVITE that stays SRTP (RTP/SAVP with a key) while the new phone is plain.
#[test]
fn a_phone_takes_over_a_call_with_teams_and_the_trunks_dialog_is_not_replaceable() {
    let t0 = Instant::now();
    let mut s = setup(OFFER, "", SrtpPolicy::default(), false);
    s.targets.truncate(1);
    s.targets[0].to.transport = Transport::Tls;
    s.targets[0].sbc = Some(Sbc {
        fqdn: "sbc1.csps.test".into(),
        port: 5061,
        user: "+14255550100".into(),
    });
    // As the switch sets a call out through the trunk up: alice is her number there.
    s.caller = "<sip:+14255550100@sbc1.csps.test;user=phone>".into();
    s.caller_party = Some("sip:alice@csps.local".into());
    let mut c = started(s, t0);
    let (a_tag, inv1, ..) = answer_first(&mut c, t0, SRTP_ANSWER);
    drain(&mut c);
    let gw = inv1.from_tag().expect("tag");
    let trunk = format!("b-call;to-tag={gw};from-tag=d1");
    c.handle(
        t0,
        Input::Replace(Box::new(replacement("alice", &trunk, "t1"))),
    );
    let out = drain(&mut c);
    assert_eq!(statuses(&out), [403]);
    assert!(sent(&out, Method::Bye).is_none());
    let own = format!("a-call;to-tag={a_tag};from-tag=at");
    c.handle(
        t0,
        Input::Replace(Box::new(replacement("alice", &own, "t2"))),
    );
    let out = drain(&mut c);
    assert_eq!(statuses(&out), [200]);
    let to_phone = String::from_utf8_lossy(&responses_to_a(&out)[0].body).into_owned();
    assert!(
        to_phone.contains("RTP/AVP") && !to_phone.contains("a=crypto"),
        "{to_phone}"
    );
    let (_, bye, to) = sent(&out, Method::Bye).expect("BYE to the first phone");
    assert_eq!(to, remote("203.0.113.5:5060"));
    assert_eq!(bye.headers.get("Reason"), Some(REPLACED));
    let (_, reinvite, to) = sent(&out, Method::Invite).expect("re-INVITE to Teams");
    assert_eq!(to.addr, "192.0.2.9:5060".parse().expect("addr"));
    let offer = body(&reinvite);
    assert!(offer.contains("m=audio 20002 RTP/SAVP 0"), "{offer}");
    assert!(offer.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"));
    assert!(offer.contains("a=sendrecv"), "{offer}");
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Transferred { a: true, party, teams: false } if party == "sip:alice@csps.local"
    )));
}

/// Alice's call ringing at bob's second device (180, its tag `ring2`): the call, that
/// device's INVITE and what the call did on the 180.
fn ringing_at_the_second_device(t0: Instant) -> (Call, Request, Vec<Output>) {
    let mut c = call(OFFER, t0);
    let invites = sent_invites(&drain(&mut c));
    let (tag2, inv2) = invites[1].clone();
    c.handle(
        t0,
        Input::Response {
            tag: tag2,
            resp: reply(&inv2, 180, "ring2", None),
        },
    );
    let out = drain(&mut c);
    (c, inv2, out)
}

/// Call pickup (RFC 3891 §3, an early dialog the gateway initiated): carol's phone names
/// the gateway's early dialog with bob's second device; she gets 200, alice gets 200 with
/// an answer to her offer, the ringing device a CANCEL ("Call completed elsewhere"). The
/// caller's own early dialog (not initiated by the gateway) gets 481. The ringing device's
/// dialog is what [`Call::early_dialog`] shows a busy-lamp field, and a Replaces naming it
/// with the tags the other way round (as the device holds it) is accepted too.
#[test]
fn a_replacing_invite_picks_up_a_ringing_device() {
    let t0 = Instant::now();
    let (mut c, inv2, out) = ringing_at_the_second_device(t0);
    let a_tag = responses_to_a(&out)[0].to_tag().expect("To tag");
    let own = format!("a-call;to-tag={a_tag};from-tag=at");
    c.handle(
        t0,
        Input::Replace(Box::new(replacement("carol", &own, "p0"))),
    );
    assert_eq!(statuses(&drain(&mut c)), [481]);
    let gw = inv2.from_tag().expect("tag");
    assert_eq!(
        c.early_dialog(),
        Some(("b-call".to_owned(), "ring2".to_owned(), gw.clone()))
    );
    let swapped = format!("b-call;to-tag=ring2;from-tag={gw};early-only");
    c.handle(
        t0,
        Input::Replace(Box::new(replacement("carol", &swapped, "p1"))),
    );
    let out = drain(&mut c);
    assert_eq!(statuses(&out), [200, 200], "carol's 200, then alice's");
    let to_alice = responses_to_a(&out)[1];
    let answer = String::from_utf8_lossy(&to_alice.body).into_owned();
    assert!(
        answer.contains("m=audio 20000 RTP/AVP 0 101\r\n"),
        "{answer}"
    );
    let cancel = out.iter().find_map(|o| match o {
        Output::Send { req, to, .. } if req.method == Method::Cancel => Some((req, *to)),
        _ => None,
    });
    let (cancel, to) = cancel.expect("CANCEL to the ringing device");
    assert_eq!(to, remote("192.0.2.10:5060"));
    assert_eq!(cancel.headers.get("Reason"), Some(COMPLETED_ELSEWHERE));
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Transferred { a: false, party, .. } if party == "sip:carol@csps.local"
    )));
    assert!(out.iter().any(|o| matches!(o, Output::Answered)));
    // Carol offered PCMA first, but also alice's PCMU: she is answered PCMU, nothing is
    // transcoded.
    let to_carol = String::from_utf8_lossy(&responses_to_a(&out)[0].body).into_owned();
    assert!(
        to_carol.contains("m=audio 20002 RTP/AVP 0\r\n"),
        "{to_carol}"
    );
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Media(MediaChange::Transcode(None))))
    );
    assert_eq!(c.early_dialog(), None, "nothing rings any more");
    // The picked-up dialog ended with the pickup.
    let early = format!("b-call;to-tag={gw};from-tag=ring2;early-only");
    c.handle(
        t0,
        Input::Replace(Box::new(replacement("carol", &early, "p2"))),
    );
    assert_eq!(statuses(&drain(&mut c)), [603]);
}
