//! SRTP per leg (SDES), transcoding and the codecs each leg is offered.

use super::*;

const A_KEY: &str = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";

const SRTP_OFFER: &str = "v=0\r\no=- 1 1 IN IP4 10.0.0.7\r\ns=-\r\nc=IN IP4 10.0.0.7\r\nt=0 0\r\n\
    m=audio 4000 RTP/SAVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n\
    a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^31|1:1\r\n";

const B_KEY: &str = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVpBQkNE";

fn srtp_keys(out: &[Output], side_a: bool) -> Option<Option<SrtpKeys>> {
    out.iter().find_map(|o| match o {
        Output::Srtp { a, keys } if *a == side_a => Some(keys.clone()),
        _ => None,
    })
}

#[test]
fn srtp_is_negotiated_with_each_leg_and_no_key_crosses_to_the_other() {
    use crate::config::SrtpMode;
    let t0 = Instant::now();
    let policy = SrtpPolicy {
        mode: SrtpMode::Supported,
        plain_keys: true,
    };
    let mut c = call_srtp(SRTP_OFFER, "", t0, policy);
    let invites = sent_invites(&drain(&mut c));
    let (tag1, inv1) = invites[0].clone();
    let offer = body(&inv1);
    // Best effort towards the device: RTP/AVP with a line per suite, the gateway's keys.
    assert!(offer.contains("m=audio 20002 RTP/AVP 0 101"), "{offer}");
    assert!(offer.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"));
    assert!(offer.contains("a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:"));
    assert!(!offer.contains(A_KEY), "the caller's key stays on its leg");
    c.handle(
        t0,
        Input::Response {
            tag: tag1,
            resp: reply(&inv1, 200, "d1", Some(SRTP_ANSWER)),
        },
    );
    let out = drain(&mut c);
    let ok = responses_to_a(&out)[0];
    let answer = String::from_utf8_lossy(&ok.body).into_owned();
    assert!(answer.contains("m=audio 20000 RTP/SAVP 0"), "{answer}");
    assert!(answer.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"));
    assert!(!answer.contains(B_KEY), "the device's key stays on its leg");
    assert!(!answer.contains("a=crypto:2"));
    let a = srtp_keys(&out, true).flatten().expect("A's keys");
    assert_eq!((a.suite, a.remote_mki), (Suite::AesCm128Sha1_80, 1));
    let b = srtp_keys(&out, false).flatten().expect("B's keys");
    assert_eq!(b.suite, Suite::AesCm128Sha1_32);
    assert_ne!(a.local, b.local, "one key per side");
    assert!(c.srtp(true) && c.srtp(false));
}

#[test]
fn required_srtp_refuses_plain_offers_and_keys_over_plain_signalling() {
    use crate::config::SrtpMode;
    let t0 = Instant::now();
    let required = |plain_keys| SrtpPolicy {
        mode: SrtpMode::Required,
        plain_keys,
    };
    for (offer, policy) in [(OFFER, required(true)), (SRTP_OFFER, required(false))] {
        let mut c = call_srtp(offer, "", t0, policy);
        let out = drain(&mut c);
        assert!(sent_invites(&out).is_empty(), "nobody is rung");
        let last = responses_to_a(&out).last().map(|r| r.status);
        assert_eq!(last, Some(488), "{policy:?}");
    }
    // Required, keys allowed: the device is offered RTP/SAVP; a plain answer ends the call.
    let mut c = call_srtp(SRTP_OFFER, "", t0, required(true));
    let invites = sent_invites(&drain(&mut c));
    let (tag1, inv1) = invites[0].clone();
    assert!(body(&inv1).contains("RTP/SAVP 0 101"));
    c.handle(
        t0,
        Input::Response {
            tag: tag1,
            resp: reply(&inv1, 200, "d1", Some(ANSWER)),
        },
    );
    let out = drain(&mut c);
    assert_eq!(responses_to_a(&out).last().map(|r| r.status), Some(488));
}

#[test]
fn the_teams_leg_is_srtp_even_with_srtp_disabled_and_a_plain_answer_ends_the_call() {
    let t0 = Instant::now();
    // A plain phone (Srtp=Disabled) calls out through the trunk.
    let mut s = setup(OFFER, "", SrtpPolicy::default(), false);
    s.targets.truncate(1);
    s.targets[0].to.transport = Transport::Tls;
    s.targets[0].sbc = Some(Sbc {
        fqdn: "sbc1.csps.test".into(),
        port: 5061,
        user: "+14255550100".into(),
    });
    for (answer, srtp) in [(SRTP_ANSWER, true), (ANSWER, false)] {
        let mut c = started(s.clone(), t0);
        let (tag, inv) = sent_invites(&drain(&mut c))[0].clone();
        let offer = body(&inv);
        assert!(offer.contains("m=audio 20002 RTP/SAVP "), "{offer}");
        assert!(offer.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"));
        c.handle(
            t0,
            Input::Response {
                tag,
                resp: reply(&inv, 200, "d1", Some(answer)),
            },
        );
        let out = drain(&mut c);
        let to_a = responses_to_a(&out);
        assert_eq!(c.srtp(false), srtp);
        assert!(!c.srtp(true), "the phone's leg keeps its own rule");
        if srtp {
            assert_eq!(to_a[0].status, 200);
            let a = String::from_utf8_lossy(&to_a[0].body).into_owned();
            assert!(a.contains("RTP/AVP") && !a.contains("a=crypto"), "{a}");
            continue;
        }
        // No usable a=crypto from Teams: BYE to Teams, 488 with a Warning to the phone.
        assert_eq!(to_a[0].status, 488);
        assert!(to_a[0].headers.get("Warning").is_some());
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::Send { req, .. } if req.method == Method::Bye))
        );
    }
}

const OPUS_ANSWER: &str = "v=0\r\no=- 5 5 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n\
    m=audio 5000 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 useinbandfec=1\r\n";

const OPUS_HELD: &str = "v=0\r\no=- 5 6 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n\
    m=audio 5000 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\na=recvonly\r\n";

#[test]
fn an_answer_in_a_codec_the_caller_lacks_is_transcoded_and_stays_so_across_a_hold() {
    let t0 = Instant::now();
    let (mut c, a_tag, _, ok, out) = answered_with(t0, "", OPUS_ANSWER);
    let b = String::from_utf8_lossy(&ok.body).into_owned();
    // Alice offered PCMU and telephone-event; bob has no telephone-event, but she keeps
    // hers: the gateway interworks her events with SIP INFO.
    assert!(b.contains("m=audio 20000 RTP/AVP 0 101\r\n"), "{b}");
    assert!(!b.contains("opus") && !b.contains("fmtp"), "{b}");
    let pcmu = LegFormat {
        codec: sdp::Codec::Pcmu,
        payload_type: 0,
        telephone_event: Some((101, 8000)),
        max_average_bitrate: None,
    };
    let opus = LegFormat {
        codec: sdp::Codec::Opus,
        payload_type: 111,
        telephone_event: None,
        max_average_bitrate: None,
    };
    assert_eq!(transcoding(&out), Some(Some((pcmu, opus))));
    drain(&mut c);
    // Alice holds: bob is offered her codecs and the added ones again, keeps Opus, and
    // alice's answer stays PCMU, recvonly.
    let out = request_in(
        &mut c,
        t0,
        in_dialog_a("INVITE", 3, &a_tag, Some(HOLD)),
        "203.0.113.5:5060",
    );
    let (tag, reinv, _) = sent(&out, Method::Invite).expect("re-INVITE to bob");
    assert!(body(&reinv).contains("opus/48000/2"), "{}", body(&reinv));
    answer_with_sdp(&mut c, t0, tag, &reinv, OPUS_HELD);
    let out = drain(&mut c);
    let to_a = String::from_utf8_lossy(&responses_to_a(&out)[0].body).into_owned();
    assert!(
        to_a.contains("m=audio 20000 RTP/AVP 0 101\r\n") && to_a.contains("a=recvonly"),
        "{to_a}"
    );
    assert_eq!(transcoding(&out), Some(Some((pcmu, opus))));
}

#[test]
fn an_answer_in_the_callers_codec_is_relayed_without_transcoding() {
    let (_, _, _, ok, out) = answered_with(Instant::now(), "", ANSWER);
    // Bob has no telephone-event; alice keeps hers (DTMF interworking).
    assert!(String::from_utf8_lossy(&ok.body).contains("RTP/AVP 0 101\r\n"));
    assert_eq!(transcoding(&out), Some(None));
}

const G722_OFFER: &str = "v=0\r\no=- 1 1 IN IP4 10.0.0.7\r\ns=-\r\nc=IN IP4 10.0.0.7\r\nt=0 0\r\n\
    m=audio 4000 RTP/AVP 9 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";

#[test]
fn use_8khz_keeps_both_phone_legs_on_g711() {
    let t0 = Instant::now();
    let mut c = call_setup(G722_OFFER, "", t0, SrtpPolicy::default(), true);
    let invites = sent_invites(&drain(&mut c));
    let b = body(&invites[0].1);
    assert!(
        b.contains("m=audio 20002 RTP/AVP 0 101 8\r\n"),
        "bob is offered G.711 only: {b}"
    );
    // A caller with no G.711 at all is refused, listing what it may use.
    let only_g722 = "v=0\r\no=- 1 1 IN IP4 10.0.0.7\r\ns=-\r\nc=IN IP4 10.0.0.7\r\nt=0 0\r\n\
        m=audio 4000 RTP/AVP 9\r\n";
    let mut c = call_setup(only_g722, "", t0, SrtpPolicy::default(), true);
    let out = drain(&mut c);
    let r = &responses_to_a(&out)[0];
    assert_eq!(r.status, 488);
    assert!(
        r.headers.get("Warning").is_some_and(|w| w.contains("PCMU")),
        "{r:?}"
    );
}
