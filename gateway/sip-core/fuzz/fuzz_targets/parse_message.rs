//! Feeds arbitrary bytes to everything that reads untrusted SIP: `frame`, `parse`,
//! `check_request`, and the Display of every parsed part. Only a panic or a hang is a finding.
#![no_main]

use csps_sip::headers::{CSeq, Contacts, NameAddr, Via};
use csps_sip::message::SipHeaders;
use csps_sip::validate::check_request;
use csps_sip::{Message, frame, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = frame(data);
    match parse(data) {
        Ok(p) => {
            assert!(p.consumed <= data.len());
            let headers = match &p.message {
                Message::Request(r) => {
                    let _ = r.uri.to_string();
                    let _ = r.uri.aor();
                    if let Err(rej) = check_request(r, &["path", "outbound"]) {
                        let _ = Message::Response(rej.to_response(r)).to_bytes();
                    }
                    &r.headers
                }
                Message::Response(r) => &r.headers,
            };
            for v in headers.values("Via") {
                if let Ok(via) = Via::parse(v) {
                    let _ = via.to_string();
                }
            }
            for name in ["From", "To", "Route", "Record-Route", "Refer-To"] {
                for v in headers.values(name) {
                    if let Ok(na) = NameAddr::parse(v) {
                        let _ = na.to_string();
                    }
                }
            }
            if let Some(Ok(c)) = Contacts::from_headers(headers) {
                let _ = c.to_string();
            }
            if let Some(Ok(c)) = headers.get("CSeq").map(CSeq::parse) {
                let _ = c.to_string();
            }
            // What we encode must frame as exactly one message.
            let wire = p.message.to_bytes();
            let _ = parse(&wire);
            if let Message::Request(r) = &p.message {
                let _ = r.top_via();
                let _ = r.max_forwards();
            }
        }
        Err(e) => {
            if let Some(resp) = e.to_response() {
                let _ = Message::Response(resp).to_bytes();
            }
        }
    }
});
