//! How messages are matched to transactions (RFC 3261 §17.1.3, §17.2.3, and the RFC 2543
//! fallback), and the few messages the layer builds itself (ACK for a non-2xx final response,
//! answers to CANCEL, 100 Trying).

use crate::headers::Via;
use crate::message::{Headers, Method, Request, Response, SipHeaders};

/// The RFC 3261 magic cookie that opens every branch of a compliant client (§8.1.1.7).
pub const MAGIC_COOKIE: &str = "z9hG4bK";

const SEP: char = '\u{1}';

/// The topmost Via element of a header list, as text (a Via line may hold a comma-separated list).
fn top_via_text(h: &Headers) -> Option<&str> {
    h.values("Via").next()
}

/// The tag parameter of a From/To header, or "" when absent or unreadable.
fn tag_of(h: &Headers, name: &str) -> String {
    h.get(name)
        .and_then(|v| crate::headers::NameAddr::parse(v).ok())
        .and_then(|n| n.tag().map(str::to_owned))
        .unwrap_or_default()
}

/// The server-side index key of a request, as §17.2.3 matches it; `as_method` overrides the
/// method (ACK matches INVITE; a CANCEL looks for the INVITE it cancels).
///
/// RFC 3261 (branch starting with the magic cookie): branch, sent-by and method.
/// RFC 2543 fallback: Request-URI, From tag, Call-ID, CSeq number, top Via and method, plus the
/// To tag for methods other than INVITE and ACK (an ACK's To tag is the one of the response, so
/// for INVITE the To tag is checked against the stored response instead, see `server.rs`).
pub(super) fn server_key(req: &Request, as_method: &Method) -> Box<str> {
    let via_text = top_via_text(&req.headers).unwrap_or("");
    let via = Via::parse(via_text).ok();
    let method = as_method.as_str();
    if let Some(via) = &via
        && let Some(branch) = via.branch()
        && branch.starts_with(MAGIC_COOKIE)
    {
        let port = via.port.map(|p| p.to_string()).unwrap_or_default();
        return format!(
            "{branch}{SEP}{}:{port}{SEP}{method}",
            via.host.to_ascii_lowercase()
        )
        .into_boxed_str();
    }
    let cseq = req.cseq().map(|c| c.seq).unwrap_or(0);
    let to_tag = if matches!(as_method, Method::Invite | Method::Ack) {
        String::new()
    } else {
        tag_of(&req.headers, "To")
    };
    format!(
        "2543{SEP}{}{SEP}{}{SEP}{to_tag}{SEP}{}{SEP}{cseq}{SEP}{}{SEP}{method}",
        req.uri,
        tag_of(&req.headers, "From"),
        req.call_id().unwrap_or(""),
        via_text.trim(),
    )
    .into_boxed_str()
}

/// True when the request uses RFC 3261 branch matching.
pub(super) fn is_rfc3261(req: &Request) -> bool {
    req.top_via()
        .and_then(|v| v.branch().map(|b| b.starts_with(MAGIC_COOKIE)))
        .unwrap_or(false)
}

/// The client-side index key (§17.1.3): the top Via branch and the CSeq method. `None` when the
/// message has no branch or no CSeq.
pub(super) fn client_key(headers: &Headers) -> Option<Box<str>> {
    let via = Via::parse(top_via_text(headers)?).ok()?;
    let branch = via.branch()?;
    let cseq = headers
        .get("CSeq")
        .and_then(|c| crate::headers::CSeq::parse(c).ok())?;
    Some(format!("{branch}{SEP}{}", cseq.method).into_boxed_str())
}

/// The To tag of a message, if any.
pub(super) fn to_tag(h: &Headers) -> Option<String> {
    let t = tag_of(h, "To");
    (!t.is_empty()).then_some(t)
}

/// A To tag derived from the request (FNV-1a of its top Via and Call-ID), for the few responses
/// the layer builds itself without a dialog (481 to CANCEL). The core has no RNG; this tag only
/// has to be stable across retransmissions and distinct between requests.
pub(super) fn derived_tag(req: &Request) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in top_via_text(&req.headers)
        .unwrap_or("")
        .bytes()
        .chain(req.call_id().unwrap_or("").bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Adds `tag` to the To header of `resp` when it has none.
pub(super) fn set_to_tag(resp: &mut Response, tag: &str) {
    let Some(to) = resp.headers.get("To") else {
        return;
    };
    let Ok(mut na) = crate::headers::NameAddr::parse(to) else {
        return;
    };
    if na.tag().is_none() {
        na.set_param("tag", Some(tag.to_owned()));
        resp.headers.set("To", na.to_string());
    }
}

/// 100 Trying for a request (§8.2.6.1: no To tag, Timestamp copied).
pub(super) fn trying(req: &Request) -> Response {
    let mut r = req.response(100, "Trying");
    if let Some(ts) = req.headers.get("Timestamp") {
        r.headers.push("Timestamp", ts);
    }
    r
}

/// The ACK for a non-2xx final response to `invite` (§17.1.1.3): Request-URI, Call-ID, From and
/// CSeq number of the INVITE, its top Via only, its Route set, and the response's To.
pub fn ack_for(invite: &Request, resp: &Response) -> Request {
    let mut h = Headers::new();
    if let Some(v) = top_via_text(&invite.headers) {
        h.push("Via", v);
    }
    for r in invite.headers.get_all("Route") {
        h.push("Route", r);
    }
    h.push("Max-Forwards", "70");
    if let Some(f) = invite.headers.get("From") {
        h.push("From", f);
    }
    if let Some(t) = resp.headers.get("To").or(invite.headers.get("To")) {
        h.push("To", t);
    }
    if let Some(c) = invite.call_id() {
        h.push("Call-ID", c);
    }
    let seq = invite.cseq().map(|c| c.seq).unwrap_or(0);
    h.push("CSeq", format!("{seq} ACK"));
    Request {
        method: Method::Ack,
        uri: invite.uri.clone(),
        headers: h,
        body: bytes::Bytes::new(),
    }
}

/// The CANCEL for a pending INVITE (RFC 3261 §9.1): same Request-URI, Call-ID, To, From, CSeq
/// number and top Via (so the same branch), the INVITE's Route set.
pub(super) fn cancel_for(invite: &Request) -> Request {
    let mut h = Headers::new();
    if let Some(v) = top_via_text(&invite.headers) {
        h.push("Via", v);
    }
    for r in invite.headers.get_all("Route") {
        h.push("Route", r);
    }
    h.push("Max-Forwards", "70");
    for name in ["From", "To", "Call-ID"] {
        if let Some(v) = invite.headers.get(name) {
            h.push(name, v);
        }
    }
    let seq = invite.cseq().map(|c| c.seq).unwrap_or(0);
    h.push("CSeq", format!("{seq} CANCEL"));
    Request {
        method: Method::Cancel,
        uri: invite.uri.clone(),
        headers: h,
        body: bytes::Bytes::new(),
    }
}
