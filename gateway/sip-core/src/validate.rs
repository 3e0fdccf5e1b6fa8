//! What a UAS and registrar check on a parsed request before dispatching it (RFC 3261 §8.2,
//! §10.3, RFC 4475 §3.1.2 and §3.3): the mandatory headers are present, single and readable, CSeq
//! agrees with the request line, the Request-URI scheme is one we serve (416), and every Require
//! option is supported (420). Method (405/501), media (415) and hop (483) checks belong to the
//! dispatcher, which knows what it serves.
//!
//! An ACK must never be answered: a caller drops an ACK that fails these checks.

use crate::headers::{CSeq, Contacts, NameAddr, Via};
use crate::message::{Method, Request, Response, parse_max_forwards};

/// The warn-agent (RFC 3261 §20.43 `pseudonym`) this gateway writes in Warning headers.
pub const WARN_AGENT: &str = "csps";

/// Why a request is refused, and everything needed to say so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The status to answer with (400, 416, 420, …).
    pub status: u16,
    /// Its reason phrase.
    pub reason: &'static str,
    /// Free text for a `399` Warning header (see [`warning_value`]).
    pub warning: String,
    /// Extra headers the answer must carry (`Unsupported` for a 420).
    pub headers: Vec<(String, String)>,
}

impl Rejection {
    fn bad(warning: impl Into<String>) -> Self {
        Rejection {
            status: 400,
            reason: "Bad Request",
            warning: warning.into(),
            headers: Vec::new(),
        }
    }

    /// The response to `req`: status, copied Via/From/To/Call-ID/CSeq, a `399 csps "…"` Warning
    /// and the extra headers. The caller adds the To tag.
    pub fn to_response(&self, req: &Request) -> Response {
        self.to_response_from(req, WARN_AGENT)
    }

    /// As [`Rejection::to_response`], naming `agent` (a host or pseudonym) in the Warning.
    pub fn to_response_from(&self, req: &Request, agent: &str) -> Response {
        let mut resp = req.response(self.status, self.reason);
        resp.headers
            .push("Warning", warning_value(agent, &self.warning));
        for (n, v) in &self.headers {
            resp.headers.push(n, v.as_str());
        }
        resp
    }
}

/// A Warning value `399 <agent> "text"`: quotes and backslashes escaped, control characters
/// (CR/LF above all, which would split the header) replaced by spaces.
pub fn warning_value(agent: &str, text: &str) -> String {
    let mut out = String::with_capacity(agent.len() + text.len() + 8);
    out.push_str("399 ");
    // A warn-agent is one token-like word: anything else would break the header's grammar.
    if agent.is_empty() || agent.bytes().any(|b| b <= b' ' || b == b'"' || b == 0x7f) {
        out.push_str(WARN_AGENT);
    } else {
        out.push_str(agent);
    }
    out.push_str(" \"");
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Headers that may appear once only (RFC 3261 §7.3.1: not comma-list headers).
const SINGLE: &[&str] = &[
    "From",
    "To",
    "Call-ID",
    "CSeq",
    "Max-Forwards",
    "Content-Type",
    "Content-Length",
    "Expires",
];

/// Checks `req` as a UAS/registrar must before dispatching; `supported` lists the option tags
/// this element implements (for Require and Proxy-Require).
pub fn check_request(req: &Request, supported: &[&str]) -> Result<(), Rejection> {
    let h = &req.headers;
    // One pass tallies every header of interest (stored names are canonical for these).
    let mut counts = [0usize; SINGLE.len() + 1];
    for hd in h.iter() {
        if hd.name == "Via" {
            counts[SINGLE.len()] += 1;
        } else if let Some(i) = SINGLE.iter().position(|s| *s == hd.name) {
            counts[i] += 1;
        }
    }
    if counts[SINGLE.len()] == 0 {
        return Err(Rejection::bad("missing Via header"));
    }
    // The first four of SINGLE are the mandatory From, To, Call-ID and CSeq.
    for (name, n) in SINGLE.iter().zip(counts).take(4) {
        if n == 0 {
            return Err(Rejection::bad(format!("missing {name} header")));
        }
    }
    for (name, n) in SINGLE.iter().zip(counts) {
        if n > 1 {
            return Err(Rejection::bad(format!("more than one {name} header")));
        }
    }
    let mut vias = 0;
    for v in h.values("Via") {
        Via::parse(v).map_err(|e| Rejection::bad(e.to_string()))?;
        vias += 1;
    }
    if vias == 0 {
        return Err(Rejection::bad("empty Via header"));
    }
    let mut to = None;
    for name in ["From", "To"] {
        let v = h.get(name).unwrap_or_default();
        let na = NameAddr::parse(v).map_err(|e| Rejection::bad(format!("{name}: {e}")))?;
        if name == "To" {
            to = Some(na);
        }
    }
    let call_id = h.get("Call-ID").unwrap_or_default();
    if call_id.is_empty() || call_id.bytes().any(|b| b.is_ascii_whitespace()) {
        return Err(Rejection::bad("malformed Call-ID header"));
    }
    let cseq = CSeq::parse(h.get("CSeq").unwrap_or_default())
        .map_err(|e| Rejection::bad(e.to_string()))?;
    if cseq.method != req.method {
        return Err(Rejection::bad(
            "CSeq method does not match the request method",
        ));
    }
    if let Some(mf) = h.get("Max-Forwards")
        && parse_max_forwards(mf).is_none()
    {
        return Err(Rejection::bad("Max-Forwards is not a number from 0 to 255"));
    }
    match Contacts::from_headers(h) {
        Some(Err(e)) => return Err(Rejection::bad(e.to_string())),
        Some(Ok(Contacts::Star)) if req.method != Method::Register => {
            return Err(Rejection::bad("Contact '*' outside REGISTER"));
        }
        _ => {}
    }
    if !matches!(req.uri.scheme.as_str(), "sip" | "sips" | "tel") {
        return Err(Rejection {
            status: 416,
            reason: "Unsupported URI Scheme",
            warning: format!("Request-URI scheme '{}' is not served", req.uri.scheme),
            headers: Vec::new(),
        });
    }
    // RFC 3261 §19.1.5: headers are not allowed in a Request-URI (RFC 4475 escruri); turning
    // them into real headers would be worse than refusing.
    if req.uri.headers.is_some() {
        return Err(Rejection::bad("Request-URI carries headers"));
    }
    if req.method == Method::Register && to.as_ref().is_some_and(|t| !t.uri.is_sip()) {
        return Err(Rejection::bad("To is not a SIP or SIPS address-of-record"));
    }
    // RFC 3261 §8.2.2.3: Require does not apply to ACK or CANCEL. Proxy-Require is checked as
    // well because phones address csps as their outbound proxy.
    if req.method != Method::Ack && req.method != Method::Cancel {
        let mut unsupported: Vec<&str> = Vec::new();
        // Option tags are a comma-separated list (`Require: timer, 100rel`).
        let tags = h
            .values("Require")
            .chain(h.values("Proxy-Require"))
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty());
        for tag in tags {
            if !supported.iter().any(|s| s.eq_ignore_ascii_case(tag))
                && !unsupported.iter().any(|u| u.eq_ignore_ascii_case(tag))
            {
                unsupported.push(tag);
            }
        }
        if !unsupported.is_empty() {
            let list = unsupported.join(", ");
            return Err(Rejection {
                status: 420,
                reason: "Bad Extension",
                warning: format!("unsupported extension {list}"),
                headers: vec![("Unsupported".to_owned(), list)],
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warning_escapes_and_strips_controls() {
        assert_eq!(
            warning_value("proxy.example.com", "bad \"x\"\r\nInjected: 1"),
            "399 proxy.example.com \"bad \\\"x\\\"  Injected: 1\""
        );
        assert_eq!(warning_value("a b", "t"), "399 csps \"t\"");
    }

    /// Require lists option tags: each is judged alone, and only the unknown ones are named.
    #[test]
    fn require_is_a_list_of_option_tags() {
        let text = "INVITE sip:bob@csps.local SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.5;branch=z9hG4bK1\r\n\
            Max-Forwards: 70\r\nFrom: <sip:alice@csps.local>;tag=a\r\nTo: <sip:bob@csps.local>\r\n\
            Call-ID: c1\r\nCSeq: 1 INVITE\r\nRequire: timer, 100rel\r\nRequire: x-teleport\r\n\
            Content-Length: 0\r\n\r\n";
        let req = match crate::parse(text.as_bytes()).map(|p| p.message) {
            Ok(crate::Message::Request(r)) => r,
            other => panic!("{other:?}"),
        };
        let rej = check_request(&req, &["timer", "100rel"]).unwrap_err();
        assert_eq!(rej.status, 420);
        assert_eq!(
            rej.headers,
            vec![("Unsupported".to_owned(), "x-teleport".to_owned())]
        );
        assert!(check_request(&req, &["timer", "100rel", "x-teleport"]).is_ok());
    }
}
