//! INFO relay and DTMF interworking.

use super::*;

#[test]
fn info_dtmf_is_relayed_and_its_answer_returned() {
    let t0 = Instant::now();
    let (mut c, a_tag, _) = confirmed(t0);
    drain(&mut c);
    let dtmf = "Signal=5\r\nDuration=160\r\n";
    let out = request_in(
        &mut c,
        t0,
        in_dialog_a_typed("INFO", 3, &a_tag, Some(("application/dtmf-relay", dtmf))),
        "203.0.113.5:5060",
    );
    assert!(responses_to_a(&out).is_empty(), "answered once bob answers");
    let (tag, info, to) = sent(&out, Method::Info).expect("INFO to bob");
    assert_eq!(to.addr.to_string(), "192.0.2.9:5060");
    assert_eq!(
        info.headers.get("Content-Type"),
        Some("application/dtmf-relay")
    );
    assert_eq!(body(&info), dtmf);
    c.handle(
        t0,
        Input::Response {
            tag,
            resp: info.response(200, "OK"),
        },
    );
    let out = drain(&mut c);
    let r = responses_to_a(&out)[0];
    assert_eq!((r.status, r.headers.get("CSeq")), (200, Some("3 INFO")));
    // No answer from bob: alice gets 408 and keeps her call.
    let out = request_in(
        &mut c,
        t0,
        in_dialog_a_typed("INFO", 4, &a_tag, Some(("application/dtmf", "7"))),
        "203.0.113.5:5060",
    );
    let (tag, _, _) = sent(&out, Method::Info).expect("INFO to bob");
    c.handle(t0, Input::Timeout { tag });
    let out = drain(&mut c);
    assert_eq!(responses_to_a(&out)[0].status, 408);
    assert!(c.is_answered());
}

/// DTMF interworking: alice negotiated telephone-event, bob (no telephone-event) sends
/// and receives DTMF by SIP INFO.
#[test]
fn dtmf_interworks_between_rfc_4733_and_sip_info() {
    let t0 = Instant::now();
    let (mut c, _, inv1, ok, out) = answered_with(t0, "", ANSWER);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Media(MediaChange::Dtmf(Some((101, 8000)), None))))
    );
    let sdp = String::from_utf8_lossy(&ok.body).into_owned();
    assert!(sdp.contains("a=rtpmap:101 telephone-event/8000"), "{sdp}");
    drain(&mut c);
    // Bob's INFO is answered here and played to alice as RFC 4733 events.
    let info_b = |seq: u32, ct: &str, b: &str| {
        let mut r = in_dialog_b("INFO", seq, &inv1, None);
        r.headers.push("Content-Type", ct);
        r.body = Bytes::from(b.to_owned());
        r
    };
    let out = request_in(
        &mut c,
        t0,
        info_b(2, "application/dtmf-relay", "Signal=5\r\nDuration=160\r\n"),
        "192.0.2.9:5060",
    );
    assert!(sent(&out, Method::Info).is_none(), "not relayed");
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Respond { resp, .. } if resp.status == 200))
    );
    let digits: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Dtmf { to_a, digit } => Some((*to_a, digit.code)),
            _ => None,
        })
        .collect();
    assert_eq!(digits, [(true, 5)]);
    // A body naming no digit: 400 with the reason, the call goes on.
    let out = request_in(
        &mut c,
        t0,
        info_b(3, "application/dtmf", "Z"),
        "192.0.2.9:5060",
    );
    let r = out
        .iter()
        .find_map(|o| match o {
            Output::Respond { resp, .. } => Some(resp),
            _ => None,
        })
        .expect("answer");
    assert_eq!(r.status, 400);
    assert!(r.headers.get("Warning").is_some_and(|w| w.contains("DTMF")));
    assert!(!out.iter().any(|o| matches!(o, Output::Dtmf { .. })));
    // Alice's RFC 4733 digit goes to bob as INFO; its answer ends there.
    c.handle(
        t0,
        Input::Dtmf {
            from_a: true,
            digit: Digit {
                code: 11,
                duration: Duration::from_millis(200),
            },
        },
    );
    let out = drain(&mut c);
    let (tag, info, to) = sent(&out, Method::Info).expect("INFO to bob");
    assert_eq!(to.addr.to_string(), "192.0.2.9:5060");
    assert_eq!(
        info.headers.get("Content-Type"),
        Some("application/dtmf-relay")
    );
    assert_eq!(body(&info), "Signal=#\r\nDuration=200\r\n");
    c.handle(
        t0,
        Input::Response {
            tag,
            resp: info.response(200, "OK"),
        },
    );
    assert!(drain(&mut c).is_empty());
    // Alice takes events herself: nothing goes to her by INFO.
    c.handle(
        t0,
        Input::Dtmf {
            from_a: false,
            digit: Digit {
                code: 1,
                duration: Duration::from_millis(100),
            },
        },
    );
    assert!(sent(&drain(&mut c), Method::Info).is_none());
    assert!(c.is_answered());
}
