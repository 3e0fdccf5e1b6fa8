//! SIP messages (RFC 3261 §7): requests, responses, their header list and body, parsed from and
//! written to bytes. Header values stay text; typed views (`Via`, `NameAddr`, `CSeq`, …) live in
//! [`crate::headers`] and are parsed on demand, so a message with one odd header still reaches a
//! layer that can answer it.

use bytes::Bytes;
use std::fmt;
use std::io::Write as _;

use crate::headers::{CSeq, Contacts, HeaderError, NameAddr, Via};
use crate::uri::Uri;

/// Largest message accepted on any transport (DESIGN: 64 KiB).
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024;

/// A SIP method.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Register,
    Options,
    Info,
    Update,
    Prack,
    Subscribe,
    Notify,
    Refer,
    Message,
    Publish,
    /// Any other token; methods are case-sensitive (RFC 3261 §7.1).
    Other(String),
}

impl Method {
    /// The method as it appears on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Register => "REGISTER",
            Method::Options => "OPTIONS",
            Method::Info => "INFO",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Refer => "REFER",
            Method::Message => "MESSAGE",
            Method::Publish => "PUBLISH",
            Method::Other(s) => s,
        }
    }

    /// Reads a method token (case-sensitive, as RFC 3261 requires).
    pub fn from_token(s: &str) -> Method {
        match s {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "REGISTER" => Method::Register,
            "OPTIONS" => Method::Options,
            "INFO" => Method::Info,
            "UPDATE" => Method::Update,
            "PRACK" => Method::Prack,
            "SUBSCRIBE" => Method::Subscribe,
            "NOTIFY" => Method::Notify,
            "REFER" => Method::Refer,
            "MESSAGE" => Method::Message,
            "PUBLISH" => Method::Publish,
            other => Method::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One header line: its name (canonical spelling for known headers and compact forms) and value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Canonical name (`Via`, `Call-ID`, …) for known headers, else as received.
    pub name: String,
    /// The value with surrounding whitespace and line folding removed.
    pub value: String,
}

/// Maps a received header name (any case, compact or long) to its canonical long form.
pub fn canonical_name(name: &str) -> std::borrow::Cow<'static, str> {
    match known_name(name) {
        Some(c) => std::borrow::Cow::Borrowed(c),
        None => std::borrow::Cow::Owned(name.to_owned()),
    }
}

/// The canonical spelling of a known header name or compact form, without allocating: a switch
/// on the length, then a case-insensitive compare against the few names of that length.
pub fn known_name(name: &str) -> Option<&'static str> {
    const KNOWN: &[&str] = &[
        "Via",
        "From",
        "To",
        "Call-ID",
        "Contact",
        "Content-Length",
        "Content-Type",
        "Supported",
        "Subject",
        "Content-Encoding",
        "Event",
        "Allow-Events",
        "Refer-To",
        "Referred-By",
        "Session-Expires",
        "Identity",
        "CSeq",
        "Max-Forwards",
        "Expires",
        "Min-Expires",
        "Route",
        "Record-Route",
        "Authorization",
        "Proxy-Authorization",
        "WWW-Authenticate",
        "Proxy-Authenticate",
        "User-Agent",
        "Server",
        "Allow",
        "Require",
        "Proxy-Require",
        "Unsupported",
        "Warning",
        "Retry-After",
        "Accept",
        "Date",
        "Path",
        "Replaces",
        "Min-SE",
        "RSeq",
        "RAck",
        "Subscription-State",
        "P-Asserted-Identity",
        "P-Preferred-Identity",
        "Reason",
        "Content-Disposition",
        "History-Info",
        "Diversion",
    ];
    if let [c] = name.as_bytes() {
        // RFC 3261 §7.3.3 and later RFCs' compact forms.
        return Some(match c.to_ascii_lowercase() {
            b'v' => "Via",
            b'f' => "From",
            b't' => "To",
            b'i' => "Call-ID",
            b'm' => "Contact",
            b'l' => "Content-Length",
            b'c' => "Content-Type",
            b'k' => "Supported",
            b's' => "Subject",
            b'e' => "Content-Encoding",
            b'o' => "Event",
            b'u' => "Allow-Events",
            b'r' => "Refer-To",
            b'b' => "Referred-By",
            b'x' => "Session-Expires",
            b'y' => "Identity",
            _ => return None,
        });
    }
    // Known names are 2..=20 bytes: one table per length, built once at compile time.
    const MAXLEN: usize = 21;
    const fn by_len() -> [[u8; 8]; MAXLEN] {
        let mut t = [[u8::MAX; 8]; MAXLEN];
        let mut i = 0;
        while i < KNOWN.len() {
            let l = KNOWN[i].len();
            let mut j = 0;
            while t[l][j] != u8::MAX {
                j += 1;
            }
            t[l][j] = i as u8;
            i += 1;
        }
        t
    }
    static BY_LEN: [[u8; 8]; MAXLEN] = by_len();
    let slots = BY_LEN.get(name.len())?;
    for &i in slots {
        let k = KNOWN.get(usize::from(i))?;
        if k.eq_ignore_ascii_case(name) {
            return Some(k);
        }
    }
    None
}

/// A lookup key: the canonical name when known, else the name as given (no allocation either way).
fn lookup_key(name: &str) -> &str {
    known_name(name).unwrap_or(name)
}

/// The ordered header list of a message. Lookups are case-insensitive and accept compact forms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<Header>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_names_in_any_case_and_compact_form() {
        assert_eq!(known_name("VIA"), Some("Via"));
        assert_eq!(known_name("v"), Some("Via"));
        assert_eq!(known_name("cseq"), Some("CSeq"));
        assert_eq!(
            known_name("P-PREFERRED-IDENTITY"),
            Some("P-Preferred-Identity")
        );
        assert_eq!(known_name("content-lengthx"), None);
        assert_eq!(known_name(""), None);
        assert_eq!(known_name("q"), None);
        assert_eq!(known_name(&"x".repeat(100)), None);
        let mut h = Headers::new();
        h.push("l", "0");
        h.push("NewHeader", "a");
        assert_eq!(h.get("content-LENGTH"), Some("0"));
        assert_eq!(h.get("newheader"), Some("a"));
    }
}

impl Headers {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// The first value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        let name = lookup_key(name);
        self.entries
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// Every header line named `name`, in order (a line may still hold a comma-separated list).
    pub fn get_all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        let name = canonical_name(name);
        self.entries
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(&name))
            .map(|h| h.value.as_str())
    }

    /// Every element of `name`, with comma-separated lines split (commas inside quotes or `<…>` kept).
    pub fn values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        self.get_all(name).flat_map(split_list)
    }

    /// How many header lines are named `name`.
    pub fn count(&self, name: &str) -> usize {
        let name = lookup_key(name);
        self.entries
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    }

    /// Appends a header line.
    pub fn push(&mut self, name: &str, value: impl Into<String>) {
        self.entries.push(Header {
            name: canonical_name(name).into_owned(),
            value: value.into(),
        });
    }

    /// Appends a header whose name is already canonical (the parser's path: no second lookup).
    pub(crate) fn push_known(&mut self, name: &str, value: String) {
        self.entries.push(Header {
            name: name.to_owned(),
            value,
        });
    }

    /// Inserts a header line before all others (used for Via).
    pub fn push_front(&mut self, name: &str, value: impl Into<String>) {
        self.entries.insert(
            0,
            Header {
                name: canonical_name(name).into_owned(),
                value: value.into(),
            },
        );
    }

    /// Replaces every line named `name` by one line holding `value`, keeping the first one's place.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        let canon = lookup_key(name);
        match self
            .entries
            .iter()
            .position(|h| h.name.eq_ignore_ascii_case(canon))
        {
            Some(i) => {
                self.entries[i].value = value.into();
                let mut j = i + 1;
                while j < self.entries.len() {
                    if self.entries[j].name.eq_ignore_ascii_case(canon) {
                        self.entries.remove(j);
                    } else {
                        j += 1;
                    }
                }
            }
            None => self.push(canon, value),
        }
    }

    /// Removes every line named `name`.
    pub fn remove(&mut self, name: &str) {
        let canon = lookup_key(name);
        self.entries.retain(|h| !h.name.eq_ignore_ascii_case(canon));
    }

    /// All header lines in order.
    pub fn iter(&self) -> impl Iterator<Item = &Header> {
        self.entries.iter()
    }

    /// Number of header lines.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no header lines.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Splits a header value at top-level commas (not inside quotes, `<…>` or after a backslash);
/// empty elements are skipped. Lazy, so a lookup of the first Via costs no allocation.
pub fn split_list(value: &str) -> impl Iterator<Item = &str> {
    let bytes = value.as_bytes();
    let (mut start, mut i) = (0, 0);
    std::iter::from_fn(move || {
        let (mut in_quotes, mut in_angle) = (false, false);
        while start <= bytes.len() {
            if i >= bytes.len() {
                let part = value.get(start..).unwrap_or("").trim();
                start = bytes.len() + 1;
                return (!part.is_empty()).then_some(part);
            }
            match bytes[i] {
                b'\\' if in_quotes => i += 1,
                b'"' => in_quotes = !in_quotes,
                b'<' if !in_quotes => in_angle = true,
                b'>' if !in_quotes => in_angle = false,
                b',' if !in_quotes && !in_angle => {
                    let part = value.get(start..i).unwrap_or("").trim();
                    i += 1;
                    start = i;
                    if !part.is_empty() {
                        return Some(part);
                    }
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
        None
    })
}

/// A SIP request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The method of the request line.
    pub method: Method,
    /// The Request-URI.
    pub uri: Uri,
    /// Header lines in order.
    pub headers: Headers,
    /// The body (exactly Content-Length bytes).
    pub body: Bytes,
}

/// A SIP response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Status code, 100..=699.
    pub status: u16,
    /// Reason phrase (may be empty or UTF-8).
    pub reason: String,
    /// Header lines in order.
    pub headers: Headers,
    /// The body (exactly Content-Length bytes).
    pub body: Bytes,
}

/// A SIP request or response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A request.
    Request(Request),
    /// A response.
    Response(Response),
}

/// Accessors shared by requests and responses.
pub trait SipHeaders {
    /// The header list.
    fn headers(&self) -> &Headers;
    /// The header list, mutably.
    fn headers_mut(&mut self) -> &mut Headers;

    /// The topmost Via value, parsed.
    fn top_via(&self) -> Option<Via> {
        self.headers()
            .values("Via")
            .next()
            .and_then(|v| Via::parse(v).ok())
    }
    /// The Call-ID.
    fn call_id(&self) -> Option<&str> {
        self.headers().get("Call-ID")
    }
    /// The CSeq, parsed.
    fn cseq(&self) -> Option<CSeq> {
        self.headers().get("CSeq").and_then(|v| CSeq::parse(v).ok())
    }
    /// The From header, parsed.
    // `from_hdr` names the From header, not a conversion.
    #[allow(clippy::wrong_self_convention)]
    fn from_hdr(&self) -> Option<NameAddr> {
        self.headers()
            .get("From")
            .and_then(|v| NameAddr::parse(v).ok())
    }
    /// The To header, parsed.
    fn to_hdr(&self) -> Option<NameAddr> {
        self.headers()
            .get("To")
            .and_then(|v| NameAddr::parse(v).ok())
    }
    /// The From header's tag, when it has one.
    // `from_tag` names the From header's tag, not a conversion.
    #[allow(clippy::wrong_self_convention)]
    fn from_tag(&self) -> Option<String> {
        self.from_hdr()?.tag().map(str::to_owned)
    }
    /// The To header's tag, when it has one.
    fn to_tag(&self) -> Option<String> {
        self.to_hdr()?.tag().map(str::to_owned)
    }
    /// Max-Forwards, when present and in its legal range 0..=255.
    fn max_forwards(&self) -> Option<u8> {
        self.headers()
            .get("Max-Forwards")
            .and_then(parse_max_forwards)
    }
    /// Every Contact, parsed; `None` when there is no Contact header.
    fn contacts(&self) -> Option<Result<Contacts, HeaderError>> {
        Contacts::from_headers(self.headers())
    }
}

/// Reads a Max-Forwards value (`1*DIGIT`, 0..=255; leading zeros allowed as in RFC 4475 wsinv).
pub fn parse_max_forwards(v: &str) -> Option<u8> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = v.trim_start_matches('0');
    if digits.len() > 3 {
        return None;
    }
    if digits.is_empty() {
        return Some(0);
    }
    digits.parse().ok()
}

/// The usual reason phrase for a status code (RFC 3261 §21 and later RFCs), `""` when unknown.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        413 => "Request Entity Too Large",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        421 => "Extension Required",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        _ => "",
    }
}

impl SipHeaders for Request {
    fn headers(&self) -> &Headers {
        &self.headers
    }
    fn headers_mut(&mut self) -> &mut Headers {
        &mut self.headers
    }
}

impl SipHeaders for Response {
    fn headers(&self) -> &Headers {
        &self.headers
    }
    fn headers_mut(&mut self) -> &mut Headers {
        &mut self.headers
    }
}

impl Request {
    /// Builds a response to this request as RFC 3261 §8.2.6.2 says: every Via, and the first
    /// From, To, Call-ID and CSeq copied (a request with duplicates, RFC 4475 multi01, still gets
    /// a well-formed answer), Content-Length 0. The caller adds a To tag where one is needed.
    pub fn response(&self, status: u16, reason: &str) -> Response {
        let mut headers = Headers::new();
        for v in self.headers.get_all("Via") {
            headers.push("Via", v);
        }
        for name in ["From", "To", "Call-ID", "CSeq"] {
            if let Some(v) = self.headers.get(name) {
                headers.push(name, v);
            }
        }
        Response {
            status,
            reason: reason.to_owned(),
            headers,
            body: Bytes::new(),
        }
    }

    /// Writes the request to `out` in wire form, with a Content-Length matching the body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.method.as_str().as_bytes());
        out.push(b' ');
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{}", self.uri);
        out.extend_from_slice(b" SIP/2.0\r\n");
        encode_headers_and_body(&self.headers, &self.body, out);
    }
}

impl Response {
    /// Writes the response to `out` in wire form, with a Content-Length matching the body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"SIP/2.0 ");
        let _ = write!(out, "{}", self.status);
        out.push(b' ');
        out.extend_from_slice(self.reason.as_bytes());
        out.extend_from_slice(b"\r\n");
        encode_headers_and_body(&self.headers, &self.body, out);
    }
}

impl Message {
    /// Writes the message in wire form.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Message::Request(r) => r.encode(out),
            Message::Response(r) => r.encode(out),
        }
    }

    /// The request, if this is one.
    pub fn as_request(&self) -> Option<&Request> {
        match self {
            Message::Request(r) => Some(r),
            Message::Response(_) => None,
        }
    }

    /// The response, if this is one.
    pub fn as_response(&self) -> Option<&Response> {
        match self {
            Message::Response(r) => Some(r),
            Message::Request(_) => None,
        }
    }

    /// The message in wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        self.encode(&mut out);
        out
    }
}

fn encode_headers_and_body(headers: &Headers, body: &[u8], out: &mut Vec<u8>) {
    for h in headers.iter() {
        if h.name == "Content-Length" {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Content-Length: ");
    let _ = write!(out, "{}", body.len());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}
