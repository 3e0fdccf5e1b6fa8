//! How the gateway names itself in a leg's requests (tags, Via, Contact, Allow) and its new INVITE.

use std::net::SocketAddr;

use bytes::Bytes;
use csps_sip::{Headers, Method, Request, Transport};
use rand::RngCore;

use super::{Sbc, Target};

pub(super) fn hex_token(rng: &mut dyn RngCore) -> String {
    format!("{:016x}", rng.next_u64())
}

pub(super) fn via(t: &Target, rng: &mut dyn RngCore) -> String {
    via_for(t.to.transport, t.local, t.sbc.as_ref(), rng)
}

pub(crate) fn via_for(
    transport: Transport,
    local: SocketAddr,
    sbc: Option<&Sbc>,
    rng: &mut dyn RngCore,
) -> String {
    match sbc {
        Some(s) => format!(
            "SIP/2.0/TLS {}:{};branch=z9hG4bK{}",
            s.fqdn,
            s.port,
            hex_token(rng)
        ),
        None => format!(
            "SIP/2.0/{} {local};branch=z9hG4bK{};rport",
            transport.via_token(),
            hex_token(rng)
        ),
    }
}

pub(crate) fn contact_for(transport: Transport, local: SocketAddr, sbc: Option<&Sbc>) -> String {
    match (sbc, transport) {
        (Some(s), _) => format!("<sip:{}@{}:{};transport=tls>", s.user, s.fqdn, s.port),
        (None, Transport::Udp) => format!("<sip:csps@{local}>"),
        (None, t) => format!("<sip:csps@{local};transport={}>", t.as_str().to_lowercase()),
    }
}

/// The methods a leg is told it may use: the trunk's list (with REFER) towards Teams.
pub(super) fn allow_for(sbc: Option<&Sbc>) -> &'static str {
    if sbc.is_some() {
        crate::trunk::ALLOW
    } else {
        crate::calls::ALLOW_IN_DIALOG
    }
}

/// A dialog-creating INVITE to `target`: the gateway's Via, Contact and Allow for it, `from`
/// (with `from_tag`) asserted as the caller (whatever a phone sent is never copied, RFC 3325),
/// `to`, and the SDP offer `body`.
pub(crate) fn new_invite(
    target: &Target,
    from: &str,
    from_tag: &str,
    to: &str,
    call_id: &str,
    body: Bytes,
    rng: &mut dyn RngCore,
) -> Request {
    let mut h = Headers::new();
    h.push("Via", via(target, rng));
    h.push("Max-Forwards", "70");
    h.push("From", format!("{from};tag={from_tag}"));
    h.push("To", to.to_owned());
    h.push("Call-ID", call_id.to_owned());
    h.push("CSeq", "1 INVITE");
    h.push(
        "Contact",
        contact_for(target.to.transport, target.local, target.sbc.as_ref()),
    );
    h.push("P-Asserted-Identity", from.to_owned());
    h.push("Allow", allow_for(target.sbc.as_ref()));
    if target.sbc.is_none() {
        // A phone may take this call over with an INVITE with Replaces (RFC 3891).
        h.push("Supported", "replaces");
    }
    if !body.is_empty() {
        h.push("Content-Type", "application/sdp");
    }
    Request {
        method: Method::Invite,
        uri: target.uri.clone(),
        headers: h,
        body,
    }
}

pub(super) fn is_sdp(headers: &Headers, body: &Bytes) -> bool {
    !body.is_empty()
        && headers
            .get("Content-Type")
            .is_none_or(|c| c.trim().to_ascii_lowercase().starts_with("application/sdp"))
}
