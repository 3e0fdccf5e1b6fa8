//! SIP messages (RFC 3261 §7): requests, responses, their header list and body, parsed from and
//! written to bytes. Header values stay text; typed views (`Via`, `NameAddr`, `CSeq`, …) live in
//! [`crate::headers`] and are parsed on demand, so a message with one odd header still reaches a
//! layer that can answer it.

use bytes::Bytes;
use std::fmt;

use crate::headers::{CSeq, NameAddr, Via};
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
    use std::borrow::Cow;
    const KNOWN: &[(&str, &str)] = &[
        ("v", "Via"),
        ("f", "From"),
        ("t", "To"),
        ("i", "Call-ID"),
        ("m", "Contact"),
        ("l", "Content-Length"),
        ("c", "Content-Type"),
        ("k", "Supported"),
        ("s", "Subject"),
        ("e", "Content-Encoding"),
        ("o", "Event"),
        ("u", "Allow-Events"),
        ("r", "Refer-To"),
        ("b", "Referred-By"),
        ("x", "Session-Expires"),
        ("y", "Identity"),
        ("via", "Via"),
        ("from", "From"),
        ("to", "To"),
        ("call-id", "Call-ID"),
        ("cseq", "CSeq"),
        ("contact", "Contact"),
        ("content-length", "Content-Length"),
        ("content-type", "Content-Type"),
        ("max-forwards", "Max-Forwards"),
        ("expires", "Expires"),
        ("min-expires", "Min-Expires"),
        ("route", "Route"),
        ("record-route", "Record-Route"),
        ("authorization", "Authorization"),
        ("proxy-authorization", "Proxy-Authorization"),
        ("www-authenticate", "WWW-Authenticate"),
        ("proxy-authenticate", "Proxy-Authenticate"),
        ("user-agent", "User-Agent"),
        ("server", "Server"),
        ("allow", "Allow"),
        ("supported", "Supported"),
        ("require", "Require"),
        ("proxy-require", "Proxy-Require"),
        ("unsupported", "Unsupported"),
        ("warning", "Warning"),
        ("retry-after", "Retry-After"),
        ("accept", "Accept"),
        ("date", "Date"),
        ("path", "Path"),
        ("refer-to", "Refer-To"),
        ("referred-by", "Referred-By"),
        ("replaces", "Replaces"),
        ("session-expires", "Session-Expires"),
        ("min-se", "Min-SE"),
        ("rseq", "RSeq"),
        ("rack", "RAck"),
        ("event", "Event"),
        ("subscription-state", "Subscription-State"),
        ("p-asserted-identity", "P-Asserted-Identity"),
        ("p-preferred-identity", "P-Preferred-Identity"),
        ("reason", "Reason"),
        ("subject", "Subject"),
        ("content-encoding", "Content-Encoding"),
        ("content-disposition", "Content-Disposition"),
        ("allow-events", "Allow-Events"),
        ("identity", "Identity"),
        ("history-info", "History-Info"),
        ("diversion", "Diversion"),
    ];
    for (k, v) in KNOWN {
        if name.eq_ignore_ascii_case(k) {
            return Cow::Borrowed(v);
        }
    }
    Cow::Owned(name.to_owned())
}

/// The ordered header list of a message. Lookups are case-insensitive and accept compact forms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<Header>,
}

impl Headers {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// The first value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        let name = canonical_name(name);
        self.entries
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(&name))
            .map(|h| h.value.as_str())
    }

    /// Every header line named `name`, in order (a line may still hold a comma-separated list).
    pub fn get_all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        let name = canonical_name(name).into_owned();
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
        self.get_all(name).count()
    }

    /// Appends a header line.
    pub fn push(&mut self, name: &str, value: impl Into<String>) {
        self.entries.push(Header {
            name: canonical_name(name).into_owned(),
            value: value.into(),
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
        let canon = canonical_name(name);
        match self
            .entries
            .iter()
            .position(|h| h.name.eq_ignore_ascii_case(&canon))
        {
            Some(i) => {
                self.entries[i].value = value.into();
                let mut j = i + 1;
                while j < self.entries.len() {
                    if self.entries[j].name.eq_ignore_ascii_case(&canon) {
                        self.entries.remove(j);
                    } else {
                        j += 1;
                    }
                }
            }
            None => self.push(&canon, value),
        }
    }

    /// Removes every line named `name`.
    pub fn remove(&mut self, name: &str) {
        let canon = canonical_name(name);
        self.entries
            .retain(|h| !h.name.eq_ignore_ascii_case(&canon));
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

/// Splits a header value at top-level commas (not inside quotes, `<…>` or after a backslash).
pub fn split_list(value: &str) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let bytes = value.as_bytes();
    let (mut start, mut in_quotes, mut in_angle, mut i) = (0, false, false, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_quotes => i += 1,
            b'"' => in_quotes = !in_quotes,
            b'<' if !in_quotes => in_angle = true,
            b'>' if !in_quotes => in_angle = false,
            b',' if !in_quotes && !in_angle => {
                parts.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(value[start..].trim());
    parts.into_iter().filter(|p| !p.is_empty())
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
    /// Builds a response to this request as RFC 3261 §8.2.6.2 says: Via, From, To, Call-ID and
    /// CSeq copied, Content-Length 0. The caller adds a To tag where one is needed.
    pub fn response(&self, status: u16, reason: &str) -> Response {
        let mut headers = Headers::new();
        for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
            for v in self.headers.get_all(name) {
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
        out.extend_from_slice(self.uri.to_string().as_bytes());
        out.extend_from_slice(b" SIP/2.0\r\n");
        encode_headers_and_body(&self.headers, &self.body, out);
    }
}

impl Response {
    /// Writes the response to `out` in wire form, with a Content-Length matching the body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"SIP/2.0 ");
        out.extend_from_slice(self.status.to_string().as_bytes());
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
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}
