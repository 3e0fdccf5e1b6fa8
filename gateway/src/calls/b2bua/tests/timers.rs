//! The session timer (RFC 4028).

use super::*;
use crate::calls::b2bua::timers::supports_timer;

#[test]
fn session_interval_below_min_se_gets_422() {
    let t0 = Instant::now();
    let mut c = call_with(OFFER, "Session-Expires: 30\r\nSupported: timer\r\n", t0);
    let out = drain(&mut c);
    let r = responses_to_a(&out)[0];
    assert_eq!(r.status, 422);
    assert_eq!(r.headers.get("Min-SE"), Some("90"));
    assert!(sent_invites(&out).is_empty());
    assert!(out.iter().any(|o| matches!(o, Output::Ended)));
}

#[test]
fn session_timer_ends_an_unrefreshed_call_and_a_refresh_extends_it() {
    let t0 = Instant::now();
    // Bob knows nothing of timers: alice refreshes, the gateway times the session.
    let (mut c, a_tag, inv1, ok) = confirmed_with(
        t0,
        "Session-Expires: 120;refresher=uac\r\nSupported: timer\r\n",
    );
    assert_eq!(inv1.headers.get("Session-Expires"), Some("120"));
    assert_eq!(inv1.headers.get("Min-SE"), Some("90"));
    assert!(supports_timer(&inv1.headers));
    assert_eq!(ok.headers.get("Session-Expires"), Some("120;refresher=uac"));
    assert_eq!(ok.headers.get("Require"), Some("timer"));
    drain(&mut c);
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(120)));
    // A refresh at 100 s (an UPDATE without offer) moves the end to 220 s.
    let t100 = t0 + Duration::from_secs(100);
    let out = request_in(
        &mut c,
        t100,
        in_dialog_a("UPDATE", 3, &a_tag, None),
        "203.0.113.5:5060",
    );
    let r = responses_to_a(&out)[0];
    assert_eq!(r.status, 200);
    assert!(
        r.headers
            .get("Session-Expires")
            .is_some_and(|v| v.starts_with("120"))
    );
    c.handle_timeout(t0 + Duration::from_secs(130));
    assert!(drain(&mut c).is_empty(), "refreshed: the call goes on");
    assert!(c.is_answered());
    // A relayed re-INVITE refreshes too.
    let t150 = t0 + Duration::from_secs(150);
    let out = request_in(
        &mut c,
        t150,
        in_dialog_a("INVITE", 4, &a_tag, Some(OFFER)),
        "203.0.113.5:5060",
    );
    let (tag, reinv, _) = sent(&out, Method::Invite).expect("relayed");
    answer_with_sdp(&mut c, t150, tag, &reinv, ANSWER);
    drain(&mut c);
    c.handle(t150, Input::Ack(in_dialog_a("ACK", 4, &a_tag, None)));
    let end = t150 + Duration::from_secs(120);
    assert_eq!(c.poll_timeout(), Some(end));
    // Nobody refreshes again: at the end both phones get a BYE saying why.
    c.handle_timeout(end);
    let out = drain(&mut c);
    let byes: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Send { req, .. } if req.method == Method::Bye => Some(req),
            _ => None,
        })
        .collect();
    assert_eq!(byes.len(), 2, "{out:?}");
    assert!(
        byes.iter()
            .all(|b| b.headers.get("Reason") == Some(SESSION_EXPIRED))
    );
    assert!(!c.is_answered());
}
