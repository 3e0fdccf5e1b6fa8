//! RFC 4566 (SDP syntax) and RFC 3264 (offer/answer) as properties: the SDP parser never panics on
//! any bytes or any mix of plausible lines, what it writes parses back to the same description, and
//! restricting an offer to the supported codecs either keeps an audio codec or fails with 488.

use csps_sip::sdp::{self, Codec, Sdp};
use proptest::prelude::*;

/// Lines that look like SDP, many of them broken.
fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("v=0".to_owned()),
        Just("o=- 1 1 IN IP4 10.0.0.1".to_owned()),
        Just("s=-".to_owned()),
        Just("t=0 0".to_owned()),
        "c=IN IP[46] [0-9a-f.:]{0,20}(/[0-9]{1,3})?",
        "m=(audio|video) [0-9]{0,6}(/[0-9])? RTP/S?AVP( [0-9]{1,4}){0,5}",
        "a=rtpmap:[0-9]{1,4} (PCMU|PCMA|G722|opus|telephone-event|x)/[0-9]{0,6}(/[0-9])?",
        "a=crypto:[0-9]{0,3} AES_CM_128_HMAC_SHA1_(80|32) (inline:)?[A-Za-z0-9+/]{0,40}(\\|2\\^[0-9]{1,2})?(\\|[0-9]{0,2}:[0-9]{0,4})?",
        "a=(sendrecv|sendonly|recvonly|inactive|rtcp:[0-9]{0,6}|fmtp:[0-9]{1,3} .{0,10})",
        "[a-z]=.{0,20}",
        ".{0,30}",
    ]
}

proptest! {
    // 256 cases by default; PROPTEST_CASES raises it.
    #[test]
    fn never_panics_on_bytes(body in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Sdp::parse(&body);
    }

    #[test]
    fn never_panics_on_lines(lines in proptest::collection::vec(line(), 0..30), crlf in any::<bool>()) {
        let body = lines.join(if crlf { "\r\n" } else { "\n" });
        if let Ok(mut s) = Sdp::parse(body.as_bytes()) {
            // Written back, it parses to the same description.
            let again = Sdp::parse(&s.to_bytes()).expect("our own output parses");
            prop_assert_eq!(&again, &s);
            for m in &s.media {
                let _ = m.crypto();
                let _ = m.codecs().count();
            }
            match sdp::restrict_offer(&mut s, sdp::SUPPORTED) {
                Ok(i) => {
                    prop_assert!(s.media[i].codecs().any(|f| f.codec.is_audio()));
                    prop_assert!(s.media[i].codecs().all(|f| f.codec != Codec::Other));
                    sdp::rewrite_address(&mut s, i, "192.0.2.1:20000".parse().unwrap());
                    prop_assert_eq!(s.rtp_addr(i).map(|a| a.to_string()), Some("192.0.2.1:20000".to_owned()));
                }
                Err(e) => prop_assert!(e.status() == 488 || e.status() == 400),
            }
        }
    }
}
