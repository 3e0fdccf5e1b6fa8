//! REFER: blind and attended transfers, the move into a conference room.

use super::*;

const CAROL_ANSWER: &str = "v=0\r\no=- 9 9 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\n\
    m=audio 6000 RTP/AVP 0\r\n";

/// Feeds `req` (a REFER to carol, sent from `from`) with the switch's resolution.
fn refer_in(
    c: &mut Call,
    now: Instant,
    mut req: Request,
    from: &str,
    target: Result<TransferTarget, ReferRefusal>,
) -> Vec<Output> {
    req.headers.push("Refer-To", "<sip:carol@csps.local>");
    let key = key_for(&req, from);
    c.handle(
        now,
        Input::Refer {
            key,
            from: remote(from),
            req,
            target: Box::new(target),
        },
    );
    drain(c)
}

/// The NOTIFYs in `out`: destination, Subscription-State and sipfrag body.
fn notifies(out: &[Output]) -> Vec<(String, String, String)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { req, to, .. } if req.method == Method::Notify => {
                assert_eq!(req.headers.get("Event"), Some("refer"));
                assert_eq!(
                    req.headers.get("Content-Type"),
                    Some("message/sipfrag;version=2.0")
                );
                Some((
                    to.addr.to_string(),
                    req.headers
                        .get("Subscription-State")
                        .unwrap_or("")
                        .to_owned(),
                    body(req),
                ))
            }
            _ => None,
        })
        .collect()
}

/// A request from carol in the dialog the transfer INVITE `inv` created (To tag `c1`).
fn from_carol(method: &str, seq: u32, inv: &Request) -> Request {
    let from_tag = inv.from_tag().expect("From tag");
    with_body(
        format!(
            "{method} sip:csps@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.20:5060;branch=z9hG4bKc{method}{seq}\r\n\
             From: <sip:carol@csps.local>;tag=c1\r\nTo: {};tag={from_tag}\r\n\
             Call-ID: t-call\r\nCSeq: {seq} {method}\r\nContact: <sip:carol@192.0.2.20>\r\nMax-Forwards: 70\r\n",
            inv.headers
                .get("From")
                .and_then(|f| f.split(";tag=").next())
                .unwrap_or("")
        ),
        None,
    )
}

/// Attended transfer: the call's legs are published as their devices hold the dialogs, the
/// INVITE to the consultation call's other party replaces its dialog and requires that it
/// can, and only the party whose dialog the Replaces named may refer with it.
#[test]
fn attended_transfer_invites_with_replaces_and_only_for_the_named_party() {
    let t0 = Instant::now();
    let (mut c, _a_tag, inv1) = confirmed(t0);
    drain(&mut c);
    let legs = c.dialogs();
    assert_eq!(legs.len(), 2, "{legs:?}");
    assert_eq!(legs[1].call_id, "b-call");
    assert_eq!(legs[1].party, "<sip:bob@csps.local>");
    assert_eq!(legs[1].gateway_tag, inv1.from_tag().expect("tag"));
    assert_eq!(legs[0].target.to.addr.to_string(), "203.0.113.5:5060");

    let attended = |referrer: &str| {
        let mut t = carol();
        t.replaces = Some(Replaces {
            call_id: "consult".into(),
            to_tag: "carol-tag".into(),
            from_tag: "gw-tag".into(),
            early_only: false,
        });
        t.referrer = Some(referrer.into());
        Ok(t)
    };
    let out = refer_in(
        &mut c,
        t0,
        in_dialog_b("REFER", 1, &inv1, None),
        "192.0.2.9:5060",
        attended("sip:mallory@csps.local"),
    );
    assert_eq!(responses_to_a(&out)[0].status, 403);
    assert!(sent(&out, Method::Invite).is_none());

    let out = refer_in(
        &mut c,
        t0,
        in_dialog_b("REFER", 2, &inv1, None),
        "192.0.2.9:5060",
        attended("sip:bob@csps.local"),
    );
    assert_eq!(responses_to_a(&out)[0].status, 202);
    let (_, inv, to) = sent(&out, Method::Invite).expect("INVITE to carol");
    assert_eq!(to.addr.to_string(), "192.0.2.20:5060");
    assert_eq!(
        inv.headers.get("Replaces"),
        Some("consult;to-tag=carol-tag;from-tag=gw-tag")
    );
    assert_eq!(inv.headers.get("Require"), Some("replaces"));
    assert_eq!(inv.headers.get("Referred-By"), Some("<sip:bob@csps.local>"));
}

#[test]
fn blind_transfer_by_the_callee_replaces_it_with_the_target() {
    let t0 = Instant::now();
    let (mut c, a_tag, inv1) = confirmed(t0);
    drain(&mut c);
    let out = refer_in(
        &mut c,
        t0,
        in_dialog_b("REFER", 1, &inv1, None),
        "192.0.2.9:5060",
        Ok(carol()),
    );
    assert_eq!(responses_to_a(&out)[0].status, 202);
    let n = notifies(&out);
    assert_eq!(n.len(), 1, "{n:?}");
    assert_eq!(n[0].0, "192.0.2.9:5060");
    assert!(n[0].1.starts_with("active"), "{n:?}");
    assert_eq!(n[0].2, "SIP/2.0 100 Trying\r\n");
    let (tag, inv, to) = sent(&out, Method::Invite).expect("INVITE to carol");
    assert_eq!(to.addr.to_string(), "192.0.2.20:5060");
    assert_eq!(inv.headers.get("Call-ID"), Some("t-call"));
    assert_eq!(inv.headers.get("To"), Some("<sip:carol@csps.local>"));
    assert!(
        inv.headers
            .get("From")
            .is_some_and(|f| f.contains("sip:alice@"))
    );
    assert_eq!(inv.headers.get("Referred-By"), Some("<sip:bob@csps.local>"));
    let b = body(&inv);
    assert!(b.contains("m=audio 20002 RTP/AVP 0"), "{b}");
    assert!(b.contains("a=sendrecv"), "{b}");

    c.handle(
        t0,
        Input::Response {
            tag,
            resp: reply(&inv, 180, "c1", None),
        },
    );
    assert!(drain(&mut c).is_empty(), "ringing is not relayed to anyone");
    c.handle(
        t0,
        Input::Response {
            tag,
            resp: reply(&inv, 200, "c1", Some(CAROL_ANSWER)),
        },
    );
    let out = drain(&mut c);
    assert!(out.iter().any(|o| matches!(o,
        Output::Stateless { req, to } if req.method == Method::Ack
            && to.addr.to_string() == "192.0.2.20:5060")));
    let n = notifies(&out);
    assert_eq!(n.len(), 1);
    assert!(n[0].1.starts_with("terminated"), "{n:?}");
    assert_eq!(n[0].2, "SIP/2.0 200 OK\r\n");
    let (_, bye, to) = sent(&out, Method::Bye).expect("bob is hung up");
    assert_eq!(to.addr.to_string(), "192.0.2.9:5060");
    assert_eq!(bye.headers.get("Call-ID"), Some("b-call"));
    assert!(out.iter().any(|o| matches!(o,
        Output::Media(MediaChange::B(Some(a), ip)) if a.to_string() == "192.0.2.20:6000"
            && ip.to_string() == "192.0.2.20")));
    assert!(out.iter().any(|o| matches!(o,
        Output::Transferred { a: false, party, teams: false } if party == "sip:carol@csps.local")));
    // Alice is re-INVITEd with carol's media at the relay, sendrecv.
    let (rtag, reinv, to) = sent(&out, Method::Invite).expect("re-INVITE to alice");
    assert_eq!(to.addr.to_string(), "203.0.113.5:5060");
    assert_eq!(reinv.headers.get("Call-ID"), Some("a-call"));
    let b = body(&reinv);
    assert!(
        b.contains("m=audio 20000 RTP/AVP 0") && b.contains("a=sendrecv"),
        "{b}"
    );
    answer_with_sdp(&mut c, t0, rtag, &reinv, OFFER);
    let out = drain(&mut c);
    assert!(out.iter().any(|o| matches!(o,
        Output::Stateless { req, .. } if req.method == Method::Ack
            && req.headers.get("Call-ID") == Some("a-call"))));
    assert!(out.iter().any(|o| matches!(o,
        Output::Media(MediaChange::A(Some(a), _)) if a.to_string() == "10.0.0.7:4000")));

    // Bob's own BYE crossing ours still gets its 200 and changes nothing.
    let out = request_in(
        &mut c,
        t0,
        in_dialog_b("BYE", 2, &inv1, None),
        "192.0.2.9:5060",
    );
    assert_eq!(responses_to_a(&out)[0].status, 200);
    assert!(sent(&out, Method::Bye).is_none());
    // Alice and carol talk; alice's hold goes to carol now.
    let out = request_in(
        &mut c,
        t0,
        in_dialog_a("INVITE", 3, &a_tag, Some(HOLD)),
        "203.0.113.5:5060",
    );
    let (_, hold, to) = sent(&out, Method::Invite).expect("hold relayed");
    assert_eq!(to.addr.to_string(), "192.0.2.20:5060");
    assert_eq!(hold.headers.get("Call-ID"), Some("t-call"));
    // Carol hangs up: alice gets the BYE.
    let out = request_in(&mut c, t0, from_carol("BYE", 1, &inv), "192.0.2.20:5060");
    assert_eq!(responses_to_a(&out)[0].status, 200);
    let (_, _, to) = sent(&out, Method::Bye).expect("alice is hung up");
    assert_eq!(to.addr.to_string(), "203.0.113.5:5060");
    assert_eq!(c.end_reason(), Some(EndReason::CalleeHungUp));
}

#[test]
fn failed_transfer_notifies_the_status_and_both_keep_the_call() {
    let t0 = Instant::now();
    let (mut c, a_tag, inv1) = confirmed(t0);
    drain(&mut c);
    // An unknown target: 202, then the final status.
    let out = refer_in(
        &mut c,
        t0,
        in_dialog_b("REFER", 1, &inv1, None),
        "192.0.2.9:5060",
        Err(ReferRefusal::Failed(404)),
    );
    assert_eq!(responses_to_a(&out)[0].status, 202);
    let n = notifies(&out);
    assert_eq!(n.len(), 2, "{n:?}");
    assert_eq!(n[1].2, "SIP/2.0 404 Not Found\r\n");
    assert!(n[1].1.starts_with("terminated"));
    assert!(sent(&out, Method::Invite).is_none());
    // A busy target: the transferor hears 486 and nothing else changes.
    let out = refer_in(
        &mut c,
        t0,
        in_dialog_b("REFER", 2, &inv1, None),
        "192.0.2.9:5060",
        Ok(carol()),
    );
    let (tag, inv, _) = sent(&out, Method::Invite).expect("INVITE to carol");
    c.handle(
        t0,
        Input::Response {
            tag,
            resp: reply(&inv, 486, "c1", None),
        },
    );
    let out = drain(&mut c);
    let n = notifies(&out);
    assert_eq!(n.len(), 1);
    assert_eq!(n[0].2, "SIP/2.0 486 Busy Here\r\n");
    assert!(sent(&out, Method::Bye).is_none());
    assert!(!out.iter().any(|o| matches!(o, Output::Transferred { .. })));
    let out = request_in(
        &mut c,
        t0,
        in_dialog_a("INVITE", 3, &a_tag, Some(HOLD)),
        "203.0.113.5:5060",
    );
    let (_, hold, _) = sent(&out, Method::Invite).expect("the call with bob goes on");
    assert_eq!(hold.headers.get("Call-ID"), Some("b-call"));
    // Unusable REFERs are refused outright.
    let out = refer_in(
        &mut c,
        t0,
        in_dialog_b("REFER", 3, &inv1, None),
        "192.0.2.9:5060",
        Err(ReferRefusal::Unsupported("attended".into())),
    );
    assert_eq!(responses_to_a(&out)[0].status, 491, "a hold is in progress");
}

/// Alice (leg A, gateway tag `a_tag`) REFERs her call to room `team` with CSeq `seq`.
fn alice_refers_to_room(c: &mut Call, now: Instant, a_tag: &str, seq: u32) -> Vec<Output> {
    let alice = "203.0.113.5:5060";
    let req = in_dialog_a("REFER", seq, a_tag, None);
    let key = key_for(&req, alice);
    let room = RoomRef {
        name: "team".into(),
        host: "csps.local".into(),
    };
    c.handle(
        now,
        Input::ReferToRoom {
            key,
            from: remote(alice),
            req,
            room,
        },
    );
    drain(c)
}

/// Issue 5: a phone in a call with Teams REFERs the Teams leg to a room: 202, NOTIFY 100,
/// and the Teams leg's dialog is handed to the room with the trunk's names (the room speaks
/// to it as the trunk does); meanwhile the phone's hold is not sent to Teams (491).
#[test]
fn a_teams_leg_is_moved_into_a_room_with_the_trunks_names() {
    let t0 = Instant::now();
    let mut s = setup(OFFER, "", SrtpPolicy::default(), false);
    let sbc = Sbc {
        fqdn: "sbc1.csps.test".into(),
        port: 5061,
        user: "+14255550100".into(),
    };
    s.targets = vec![Target {
        to: Remote {
            transport: Transport::Tls,
            ..remote("192.0.2.9:5061")
        },
        uri: Uri::parse("sip:+12065550123@sip.pstnhub.microsoft.com;user=phone").expect("uri"),
        local: "192.0.2.1:5061".parse().expect("addr"),
        sbc: Some(sbc.clone()),
    }];
    let mut c = started(s, t0);
    let (a_tag, ..) = answer_first(&mut c, t0, SRTP_ANSWER);
    drain(&mut c);
    let out = alice_refers_to_room(&mut c, t0, &a_tag, 3);
    assert_eq!(responses_to_a(&out)[0].status, 202);
    let n: Vec<_> = notifies(&out).into_iter().map(|n| n.2).collect();
    assert_eq!(n, ["SIP/2.0 100 Trying\r\n"]);
    let handed = out.iter().find_map(|o| match o {
        Output::ToRoom(h) => Some(h),
        _ => None,
    });
    let handed = handed.expect("the Teams leg is handed to the room");
    assert_eq!(handed.sbc.as_ref(), Some(&sbc));
    assert_eq!(handed.to.transport, Transport::Tls);
    let out = request_in(
        &mut c,
        t0,
        in_dialog_a("INVITE", 4, &a_tag, Some(HOLD)),
        "203.0.113.5:5060",
    );
    assert!(
        sent(&out, Method::Invite).is_none(),
        "nothing goes to Teams"
    );
    assert_eq!(responses_to_a(&out)[0].status, 491);
}

/// Issue 4: alice REFERs her call with bob to a conference room (the switch resolved the
/// Refer-To): 202, NOTIFY 100, and bob's dialog is handed to the room; meanwhile nothing is
/// sent in it (alice's hold gets 491). A failed move: the final NOTIFY is the room's status,
/// bob's dialog comes back with the room's CSeq, and the call goes on (a second REFER hands
/// it over again). A joined one: NOTIFY 200, a BYE to alice only, and once it is answered
/// the call ends, moved into the conference.
#[test]
fn a_refer_to_a_room_hands_the_other_party_over_and_ends_once_it_joined() {
    let t0 = Instant::now();
    let (mut c, a_tag, _) = confirmed(t0);
    drain(&mut c);
    let alice = "203.0.113.5:5060";
    let refer_to_room = |c: &mut Call, seq| {
        let out = alice_refers_to_room(c, t0, &a_tag, seq);
        assert_eq!(responses_to_a(&out)[0].status, 202);
        let n = notifies(&out);
        assert_eq!(n.len(), 1, "{n:?}");
        assert_eq!(
            (n[0].0.as_str(), n[0].2.as_str()),
            (alice, "SIP/2.0 100 Trying\r\n")
        );
        out.into_iter()
            .find_map(|o| match o {
                Output::ToRoom(h) => Some(h),
                _ => None,
            })
            .expect("bob handed to the room")
    };
    let h = refer_to_room(&mut c, 3);
    assert_eq!(h.dialog.call_id, "b-call");
    assert_eq!(h.party, "sip:bob@csps.local");
    assert_eq!(h.to.addr.to_string(), "192.0.2.9:5060");
    assert_eq!(h.room.name, "team");
    let out = request_in(
        &mut c,
        t0,
        in_dialog_a("INVITE", 4, &a_tag, Some(HOLD)),
        alice,
    );
    assert_eq!(responses_to_a(&out)[0].status, 491);
    assert!(sent(&out, Method::Invite).is_none(), "nothing goes to bob");

    let seq = h.dialog.local_seq + 1;
    c.handle(
        t0,
        Input::RoomOutcome(RoomOutcome::Failed {
            status: 488,
            local_seq: seq,
            gone: false,
        }),
    );
    let out = drain(&mut c);
    let n = notifies(&out);
    assert_eq!(n.len(), 1, "{n:?}");
    assert_eq!(n[0].2, "SIP/2.0 488 Not Acceptable Here\r\n");
    assert!(n[0].1.starts_with("terminated"));
    assert!(sent(&out, Method::Bye).is_none(), "both keep the call");
    assert!(c.is_answered());

    let h = refer_to_room(&mut c, 5);
    assert_eq!(h.dialog.local_seq, seq, "the room's CSeq is kept");
    c.handle(t0, Input::RoomOutcome(RoomOutcome::Joined));
    let out = drain(&mut c);
    let n = notifies(&out);
    assert_eq!(n.len(), 1, "{n:?}");
    assert_eq!(n[0].2, "SIP/2.0 200 OK\r\n");
    // (bob's second device never answered the ringing: the call lingers for it.)
    ends_moved_after_the_bye_to_alice(&mut c, t0, &a_tag, &out);
}

/// `out` has one BYE, to alice (203.0.113.5:5060), and the call does not end before her 200;
/// after it (and the linger) the call ends, moved into the conference.
fn ends_moved_after_the_bye_to_alice(c: &mut Call, t0: Instant, a_tag: &str, out: &[Output]) {
    let byes: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Send { tag, to, req } if req.method == Method::Bye => {
                Some((*tag, to.addr.to_string(), req.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(byes.len(), 1, "a BYE to alice only: {byes:?}");
    assert_eq!(byes[0].1, "203.0.113.5:5060");
    assert!(!out.iter().any(|o| matches!(o, Output::Ended)));
    c.handle(
        t0,
        Input::Response {
            tag: byes[0].0,
            resp: reply(&byes[0].2, 200, a_tag, None),
        },
    );
    c.handle_timeout(t0 + LINGER + Duration::from_secs(1));
    assert!(drain(c).iter().any(|o| matches!(o, Output::Ended)));
    assert_eq!(c.end_reason(), Some(EndReason::MovedToConference));
}

/// Issue 5, attended transfer to a Teams consultation party: this call is the consultation
/// (alice and bob) and is told to pull bob into the transfer's private room. Bob's dialog is
/// handed over, alice hears no NOTIFY (her REFER was in the other call) and her re-INVITE
/// meanwhile gets 491; once bob joined, alice gets a BYE (as a transfer target ends the
/// consultation dialog, RFC 5589 §7.2) and the call ends, moved into the conference. A
/// failed move leaves both in the call, without NOTIFY.
#[test]
fn a_consultation_call_hands_its_other_party_to_the_transfers_room() {
    let t0 = Instant::now();
    let (mut c, a_tag, _) = confirmed(t0);
    drain(&mut c);
    let alice = "203.0.113.5:5060";
    let room = RoomRef {
        name: "transfer+1".into(),
        host: "csps.local".into(),
    };
    let pull = |c: &mut Call| {
        c.handle(
            t0,
            Input::PullToRoom {
                room: room.clone(),
                keep: a_tag.clone(),
            },
        );
        let out = drain(c);
        assert!(notifies(&out).is_empty(), "no NOTIFY: {out:?}");
        out.into_iter()
            .find_map(|o| match o {
                Output::ToRoom(h) => Some(h),
                _ => None,
            })
            .expect("bob handed to the room")
    };
    let h = pull(&mut c);
    assert_eq!(
        (h.party.as_str(), h.room.name.as_str()),
        ("sip:bob@csps.local", "transfer+1")
    );
    let out = request_in(
        &mut c,
        t0,
        in_dialog_a("INVITE", 3, &a_tag, Some(HOLD)),
        alice,
    );
    assert_eq!(responses_to_a(&out)[0].status, 491);
    c.handle(
        t0,
        Input::RoomOutcome(RoomOutcome::Failed {
            status: 488,
            local_seq: h.dialog.local_seq + 1,
            gone: false,
        }),
    );
    let out = drain(&mut c);
    assert!(
        notifies(&out).is_empty() && sent(&out, Method::Bye).is_none(),
        "{out:?}"
    );
    assert!(c.is_answered(), "both keep the call");

    pull(&mut c);
    c.handle(t0, Input::RoomOutcome(RoomOutcome::Joined));
    let out = drain(&mut c);
    assert!(notifies(&out).is_empty(), "{out:?}");
    ends_moved_after_the_bye_to_alice(&mut c, t0, &a_tag, &out);
}

/// A consultation call told to pull its party into a transfer's room before it is answered
/// (a transfer made while the consultation still rings) hands nothing over: its party stays.
#[test]
fn a_consultation_call_that_is_not_settled_keeps_its_party() {
    let t0 = Instant::now();
    let mut c = started(setup(OFFER, "", SrtpPolicy::default(), false), t0);
    drain(&mut c);
    c.handle(
        t0,
        Input::PullToRoom {
            room: RoomRef {
                name: "transfer+1".into(),
                host: "csps.local".into(),
            },
            keep: "any".into(),
        },
    );
    let out = drain(&mut c);
    assert!(
        !out.iter().any(|o| matches!(o, Output::ToRoom(_))),
        "{out:?}"
    );
}

/// Issue 5: Teams (the callee, through the trunk) transfers with a REFER the switch resolved
/// to the trunk: the new INVITE names the transferee as Teams knew it (the caller's number
/// at the FQDN, in Contact too), carries Teams' own Referred-By and the trunk's session
/// timer, and offers SRTP; the NOTIFYs carry the FQDN Contact; the answer replaces Teams'
/// leg, which gets a BYE.
#[test]
fn a_refer_from_teams_calls_the_target_through_the_trunk_as_the_transferee() {
    let t0 = Instant::now();
    let sbc = |user: &str| Sbc {
        fqdn: "sbc1.csps.test".into(),
        port: 5061,
        user: user.into(),
    };
    let trunk = |uri: &str, user: &str| Target {
        to: Remote {
            transport: Transport::Tls,
            ..remote("192.0.2.9:5061")
        },
        uri: Uri::parse(uri).expect("uri"),
        local: "192.0.2.1:5061".parse().expect("addr"),
        sbc: Some(sbc(user)),
    };
    let mut s = setup(OFFER, "", SrtpPolicy::default(), false);
    s.caller = "<sip:+14255550100@sbc1.csps.test;user=phone>".into();
    s.targets = vec![trunk(
        "sip:+12065550123@sip.pstnhub.microsoft.com;user=phone",
        "+14255550100",
    )];
    let mut c = started(s, t0);
    let (_, inv1, _, _) = answer_first(&mut c, t0, SRTP_ANSWER);
    drain(&mut c);

    // The null REFER's target: the proxy itself, its x-m kept.
    let null = "sip:sip.pstnhub.microsoft.com:5061;transport=tls;x-m=8:orgid:dfcba638";
    let target = TransferTarget {
        targets: vec![trunk(null, "csps")],
        to: format!("<{null}>"),
        party: "sip:sip.pstnhub.microsoft.com".into(),
        call_id: "t-call".into(),
        replaces: None,
        referrer: None,
        asserted: None,
    };
    let by = "<sip:sip.pstnhub.microsoft.com:5061;x-m=8:orgid:fa27;x-tt=aHR0cHM%3D>";
    let mut refer = in_dialog_b("REFER", 1, &inv1, None);
    refer.headers.push("Referred-By", by);
    let out = refer_in(&mut c, t0, refer, "192.0.2.9:5061", Ok(target));
    assert_eq!(responses_to_a(&out)[0].status, 202);
    let (tag, inv, to) = sent(&out, Method::Invite).expect("INVITE through the trunk");
    assert_eq!(to.transport, Transport::Tls);
    assert_eq!(inv.uri.to_string(), null);
    let asserted = "<sip:+14255550100@sbc1.csps.test;user=phone>";
    assert!(
        inv.headers
            .get("From")
            .is_some_and(|f| f.starts_with(asserted)),
        "{inv:?}"
    );
    assert_eq!(inv.headers.get("P-Asserted-Identity"), Some(asserted));
    assert_eq!(
        inv.headers.get("Contact"),
        Some("<sip:+14255550100@sbc1.csps.test:5061;transport=tls>")
    );
    assert_eq!(inv.headers.get("Referred-By"), Some(by));
    assert_eq!(
        inv.headers.get("Session-Expires"),
        Some("1800;refresher=uas")
    );
    assert!(body(&inv).contains("RTP/SAVP"), "{}", body(&inv));
    let notify = out
        .iter()
        .find_map(|o| match o {
            Output::Send { req, .. } if req.method == Method::Notify => Some(req),
            _ => None,
        })
        .expect("NOTIFY 100");
    assert!(
        notify
            .headers
            .get("Contact")
            .is_some_and(|c| c.contains("sbc1.csps.test")),
        "{notify:?}"
    );

    c.handle(
        t0,
        Input::Response {
            tag,
            resp: reply(&inv, 200, "t1", Some(SRTP_ANSWER)),
        },
    );
    let out = drain(&mut c);
    assert_eq!(notifies(&out)[0].2, "SIP/2.0 200 OK\r\n");
    let (_, bye, _) = sent(&out, Method::Bye).expect("Teams' old leg is hung up");
    assert_eq!(bye.headers.get("Call-ID"), Some("b-call"));
    assert!(out.iter().any(|o| matches!(o,
        Output::Transferred { a: false, party, teams: true }
            if party == "sip:sip.pstnhub.microsoft.com")));
    assert!(
        c.srtp(false),
        "the new Teams leg is SRTP with the keys of its answer"
    );
}

#[test]
fn a_caller_that_hangs_up_after_its_refer_leaves_the_transfer_running() {
    let t0 = Instant::now();
    let (mut c, a_tag, inv1) = confirmed(t0);
    drain(&mut c);
    let out = refer_in(
        &mut c,
        t0,
        in_dialog_a("REFER", 3, &a_tag, None),
        "203.0.113.5:5060",
        Ok(carol()),
    );
    assert_eq!(responses_to_a(&out)[0].status, 202);
    assert_eq!(notifies(&out)[0].0, "203.0.113.5:5060");
    let (tag, inv, _) = sent(&out, Method::Invite).expect("INVITE to carol");
    // Carol is offered what bob receives, at the relay's side that faced alice.
    let b = body(&inv);
    assert!(b.contains("m=audio 20000 RTP/AVP 0"), "{b}");
    assert!(
        inv.headers
            .get("From")
            .is_some_and(|f| f.contains("sip:bob@"))
    );
    assert_eq!(
        inv.headers.get("Referred-By"),
        Some("\"Alice\" <sip:alice@csps.local>")
    );
    // Alice leaves at once: bob is not hung up.
    let out = request_in(
        &mut c,
        t0,
        in_dialog_a("BYE", 4, &a_tag, None),
        "203.0.113.5:5060",
    );
    assert_eq!(responses_to_a(&out)[0].status, 200);
    assert!(sent(&out, Method::Bye).is_none(), "{out:?}");
    c.handle(
        t0,
        Input::Response {
            tag,
            resp: reply(&inv, 200, "c1", Some(CAROL_ANSWER)),
        },
    );
    let out = drain(&mut c);
    assert!(notifies(&out).is_empty(), "alice is gone");
    assert!(sent(&out, Method::Bye).is_none());
    assert!(out.iter().any(|o| matches!(o,
        Output::Media(MediaChange::A(Some(a), _)) if a.to_string() == "192.0.2.20:6000")));
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Transferred { a: true, .. }))
    );
    let (_, reinv, to) = sent(&out, Method::Invite).expect("re-INVITE to bob");
    assert_eq!(to.addr.to_string(), "192.0.2.9:5060");
    assert!(body(&reinv).contains("m=audio 20002"), "{}", body(&reinv));
    // Bob hangs up: carol (now leg A) gets the BYE.
    let out = request_in(
        &mut c,
        t0,
        in_dialog_b("BYE", 2, &inv1, None),
        "192.0.2.9:5060",
    );
    let (_, bye, to) = sent(&out, Method::Bye).expect("carol is hung up");
    assert_eq!(to.addr.to_string(), "192.0.2.20:5060");
    assert_eq!(bye.headers.get("Call-ID"), Some("t-call"));
}

#[test]
fn a_failed_transfer_whose_transferor_left_hangs_up_the_transferee() {
    let t0 = Instant::now();
    let (mut c, a_tag, _) = confirmed(t0);
    drain(&mut c);
    let out = refer_in(
        &mut c,
        t0,
        in_dialog_a("REFER", 3, &a_tag, None),
        "203.0.113.5:5060",
        Ok(carol()),
    );
    let (tag, inv, _) = sent(&out, Method::Invite).expect("INVITE to carol");
    request_in(
        &mut c,
        t0,
        in_dialog_a("BYE", 4, &a_tag, None),
        "203.0.113.5:5060",
    );
    c.handle(
        t0,
        Input::Response {
            tag,
            resp: reply(&inv, 180, "c1", None),
        },
    );
    // Nobody answers in time.
    let due = c.poll_timeout().expect("the target's ring timer");
    assert_eq!(due, t0 + NO_ANSWER);
    c.handle_timeout(due);
    let out = drain(&mut c);
    assert!(
        sent(&out, Method::Cancel).is_some(),
        "carol's ringing is cancelled"
    );
    let (_, _, to) = sent(&out, Method::Bye).expect("bob is hung up");
    assert_eq!(to.addr.to_string(), "192.0.2.9:5060");
    assert_eq!(c.end_reason(), Some(EndReason::TransferFailed));
}
