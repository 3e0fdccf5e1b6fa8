//! SIP dialogs (RFC 3261 §12), sans-IO: the state a UA keeps for one dialog (Call-ID, tags, CSeq
//! numbers, remote target, route set) and the requests built inside it (BYE, re-INVITE, ACK for a
//! 2xx, CANCEL of an INVITE). Branches and tags come from the caller, so tests are reproducible.
//!
//! ```
//! use csps_sip::dialog::Dialog;
//! use csps_sip::{Message, parse};
//! let Message::Request(invite) = parse(b"INVITE sip:gw@192.0.2.1 SIP/2.0\r\n\
//!     Via: SIP/2.0/UDP 192.0.2.7;branch=z9hG4bKa\r\nFrom: <sip:alice@x>;tag=a1\r\n\
//!     To: <sip:bob@x>\r\nCall-ID: c1\r\nCSeq: 5 INVITE\r\nContact: <sip:alice@192.0.2.7>\r\n\
//!     Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").unwrap().message else { panic!() };
//! let mut d = Dialog::uas(&invite, "gw1", "<sip:gw@192.0.2.1>").unwrap();
//! let bye = d.request(csps_sip::Method::Bye, "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKb");
//! assert_eq!(bye.uri.to_string(), "sip:alice@192.0.2.7");
//! assert_eq!(bye.headers.get("To"), Some("<sip:alice@x>;tag=a1"));
//! ```

use bytes::Bytes;

use crate::headers::NameAddr;
use crate::message::{Headers, Method, Request, Response, SipHeaders};
use crate::uri::Uri;

/// One dialog as seen from this side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dialog {
    /// Call-ID.
    pub call_id: String,
    /// Our tag.
    pub local_tag: String,
    /// The peer's tag.
    pub remote_tag: String,
    /// Our From/To value without tag.
    pub local_uri: String,
    /// The peer's From/To value without tag.
    pub remote_uri: String,
    /// Our last CSeq number.
    pub local_seq: u32,
    /// The peer's last CSeq number.
    pub remote_seq: u32,
    /// Where in-dialog requests go (the peer's Contact).
    pub remote_target: Uri,
    /// Route set (Record-Route as it applies to our requests).
    pub route_set: Vec<String>,
    /// Our Contact value.
    pub local_contact: String,
}

fn without_tag(value: &str) -> Option<String> {
    let mut na = NameAddr::parse(value).ok()?;
    na.params.retain(|(n, _)| !n.eq_ignore_ascii_case("tag"));
    Some(na.to_string())
}

fn contact_uri(h: &Headers) -> Option<Uri> {
    let c = h.get("Contact")?;
    Some(NameAddr::parse(c).ok()?.uri)
}

impl Dialog {
    /// The dialog a UAS creates by answering `invite` with our tag `local_tag` (§12.1.1).
    pub fn uas(invite: &Request, local_tag: &str, local_contact: &str) -> Option<Dialog> {
        let from = invite.from_hdr()?;
        Some(Dialog {
            call_id: invite.call_id()?.to_owned(),
            local_tag: local_tag.to_owned(),
            remote_tag: from.tag()?.to_owned(),
            local_uri: without_tag(invite.headers.get("To")?)?,
            remote_uri: without_tag(invite.headers.get("From")?)?,
            local_seq: 0,
            remote_seq: invite.cseq()?.seq,
            remote_target: contact_uri(&invite.headers)?,
            route_set: invite
                .headers
                .values("Record-Route")
                .map(str::to_owned)
                .collect(),
            local_contact: local_contact.to_owned(),
        })
    }

    /// The dialog a UAC gets from a 2xx (or tagged 1xx) to its `invite` (§12.1.2).
    pub fn uac(invite: &Request, resp: &Response) -> Option<Dialog> {
        let from = invite.from_hdr()?;
        let to = resp.to_hdr()?;
        let mut route_set: Vec<String> = resp
            .headers
            .values("Record-Route")
            .map(str::to_owned)
            .collect();
        route_set.reverse();
        Some(Dialog {
            call_id: invite.call_id()?.to_owned(),
            local_tag: from.tag()?.to_owned(),
            remote_tag: to.tag()?.to_owned(),
            local_uri: without_tag(invite.headers.get("From")?)?,
            remote_uri: without_tag(invite.headers.get("To")?)?,
            local_seq: invite.cseq()?.seq,
            remote_seq: 0,
            remote_target: contact_uri(&resp.headers).unwrap_or_else(|| invite.uri.clone()),
            route_set,
            local_contact: invite.headers.get("Contact")?.to_owned(),
        })
    }

    /// True when `req` belongs to this dialog (Call-ID and both tags, §12.2.2).
    pub fn matches(&self, req: &Request) -> bool {
        req.call_id() == Some(self.call_id.as_str())
            && req
                .from_hdr()
                .is_some_and(|f| f.tag() == Some(&self.remote_tag))
            && req
                .to_hdr()
                .is_some_and(|t| t.tag() == Some(&self.local_tag))
    }

    /// Takes note of a request from the peer; false when its CSeq is not above the last one
    /// (§12.2.2: answer 500).
    pub fn accept_remote_seq(&mut self, req: &Request) -> bool {
        match req.cseq() {
            Some(c) if c.seq > self.remote_seq || req.method == Method::Ack => {
                if req.method != Method::Ack {
                    self.remote_seq = c.seq;
                }
                true
            }
            _ => false,
        }
    }

    fn base(&self, method: Method, seq: u32, via: &str) -> Request {
        let mut h = Headers::new();
        h.push("Via", via);
        h.push("Max-Forwards", "70");
        h.push("From", format!("{};tag={}", self.local_uri, self.local_tag));
        h.push("To", format!("{};tag={}", self.remote_uri, self.remote_tag));
        h.push("Call-ID", self.call_id.clone());
        h.push("CSeq", format!("{seq} {method}"));
        for r in &self.route_set {
            h.push("Route", r.clone());
        }
        Request {
            method,
            uri: self.remote_target.clone(),
            headers: h,
            body: Bytes::new(),
        }
    }

    /// A new in-dialog request (BYE, re-INVITE, INFO, …) with the next CSeq and top Via `via`.
    pub fn request(&mut self, method: Method, via: &str) -> Request {
        self.local_seq = self.local_seq.wrapping_add(1);
        let mut r = self.base(method, self.local_seq, via);
        // Target-refresh requests and NOTIFY (RFC 6665 §4.1.2.1) carry the Contact.
        if matches!(r.method, Method::Invite | Method::Update | Method::Notify) {
            r.headers.push("Contact", self.local_contact.clone());
        }
        r
    }

    /// The ACK for a 2xx to the INVITE with CSeq `invite_seq` (§13.2.2.4: its own branch).
    pub fn ack(&self, invite_seq: u32, via: &str) -> Request {
        self.base(Method::Ack, invite_seq, via)
    }
}

/// The CANCEL for a client INVITE (§9.1): same Request-URI, Call-ID, From, To, CSeq number, top
/// Via and Route, plus `reason` (RFC 3326) when given.
pub fn cancel(invite: &Request, reason: Option<&str>) -> Request {
    let mut h = Headers::new();
    if let Some(v) = invite.headers.values("Via").next() {
        h.push("Via", v);
    }
    h.push("Max-Forwards", "70");
    for name in ["From", "To", "Call-ID"] {
        if let Some(v) = invite.headers.get(name) {
            h.push(name, v);
        }
    }
    if let Some(c) = invite.cseq() {
        h.push("CSeq", format!("{} CANCEL", c.seq));
    }
    for r in invite.headers.values("Route") {
        h.push("Route", r);
    }
    if let Some(r) = reason {
        h.push("Reason", r);
    }
    Request {
        method: Method::Cancel,
        uri: invite.uri.clone(),
        headers: h,
        body: Bytes::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    fn req(s: &str) -> Request {
        match crate::parse(s.as_bytes()).expect("parses").message {
            Message::Request(r) => r,
            Message::Response(_) => panic!("request expected"),
        }
    }

    const INVITE: &str = "INVITE sip:bob@192.0.2.9 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx\r\n\
        From: \"GW\" <sip:alice@x>;tag=l1\r\nTo: <sip:bob@x>\r\nCall-ID: c9\r\nCSeq: 1 INVITE\r\n\
        Contact: <sip:gw@192.0.2.1>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn uac_dialog_from_2xx_builds_ack_bye_and_matches() {
        let invite = req(INVITE);
        let mut ok = invite.response(200, "OK");
        ok.headers.set("To", "<sip:bob@x>;tag=r1");
        ok.headers.push("Contact", "<sip:bob@192.0.2.9:5070>");
        ok.headers.push("Record-Route", "<sip:p1;lr>");
        ok.headers.push("Record-Route", "<sip:p2;lr>");
        let mut d = Dialog::uac(&invite, &ok).expect("dialog");
        let ack = d.ack(1, "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa");
        assert_eq!(ack.uri.to_string(), "sip:bob@192.0.2.9:5070");
        assert_eq!(ack.headers.get("CSeq"), Some("1 ACK"));
        let routes: Vec<_> = ack.headers.values("Route").collect();
        assert_eq!(routes, ["<sip:p2;lr>", "<sip:p1;lr>"]);
        let bye = d.request(Method::Bye, "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKb");
        assert_eq!(bye.headers.get("CSeq"), Some("2 BYE"));
        assert_eq!(bye.headers.get("From"), Some("\"GW\" <sip:alice@x>;tag=l1"));
        assert_eq!(bye.headers.get("To"), Some("<sip:bob@x>;tag=r1"));
        // The peer's BYE (tags swapped) matches.
        let theirs = req(
            "BYE sip:gw@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKc\r\n\
            From: <sip:bob@x>;tag=r1\r\nTo: <sip:alice@x>;tag=l1\r\nCall-ID: c9\r\nCSeq: 7 BYE\r\n\
            Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        );
        assert!(d.matches(&theirs));
        assert!(d.accept_remote_seq(&theirs));
        assert!(!d.accept_remote_seq(&theirs), "a repeated CSeq is refused");
    }

    #[test]
    fn cancel_copies_the_invite() {
        let invite = req(INVITE);
        let c = cancel(
            &invite,
            Some("SIP;cause=200;text=\"Call completed elsewhere\""),
        );
        assert_eq!(c.headers.get("Via"), invite.headers.get("Via"));
        assert_eq!(c.headers.get("CSeq"), Some("1 CANCEL"));
        assert_eq!(c.uri, invite.uri);
        assert!(
            c.headers
                .get("Reason")
                .is_some_and(|r| r.contains("cause=200"))
        );
    }
}
