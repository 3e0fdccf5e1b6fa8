//! Reading messages from bytes: one datagram, or the next message of a stream framed by
//! Content-Length (RFC 3261 §18.3), with RFC 5626 CRLF keep-alives recognised.
//!
//! One pass over the header section, no per-byte allocation: a header value is one `String`
//! (two when folded). A request that is malformed but whose Via, From, To, Call-ID and CSeq can
//! be read comes back inside the error, so the transport can answer 400/505 with a Warning
//! instead of dropping it (RFC 4475 §3.1.2). Malformed responses are dropped: nothing answers them.

use std::borrow::Cow;

use bytes::Bytes;

use crate::headers::{CSeq, NameAddr, Via};
use crate::message::{
    Headers, MAX_MESSAGE_SIZE, Message, Method, Request, Response, known_name, reason_phrase,
};
use crate::uri::{Uri, chars};
use crate::validate::{WARN_AGENT, warning_value};

/// Why bytes are not a usable message, and how to answer when an answer is possible.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ParseError {
    /// What is wrong, short enough for a Warning header.
    pub reason: String,
    /// The status to answer with when `request` is set (400, 505, …).
    pub status: u16,
    /// The request as far as it could be read, when Via, From, To, Call-ID and CSeq were readable
    /// so that a response can be built from it. Its body holds what arrived (possibly less than
    /// Content-Length); when the Request-URI itself was unreadable, `uri` is an opaque URI with an
    /// empty scheme holding the raw text.
    pub request: Option<Box<Request>>,
}

impl ParseError {
    fn unanswerable(reason: impl Into<String>) -> Self {
        ParseError {
            reason: reason.into(),
            status: 400,
            request: None,
        }
    }

    /// The response to send (status, the copied headers and a `399 csps "reason"` Warning), when
    /// the request was readable enough to answer; `None` means drop the bytes.
    pub fn to_response(&self) -> Option<Response> {
        let req = self.request.as_deref()?;
        let mut resp = req.response(self.status, reason_phrase(self.status));
        resp.headers
            .push("Warning", warning_value(WARN_AGENT, &self.reason));
        Some(resp)
    }
}

/// A message read from the start of a buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// The message.
    pub message: Message,
    /// How many bytes of the buffer it took, leading CRLFs included (trailing bytes of a datagram
    /// are ignored, RFC 4475 dblreq).
    pub consumed: usize,
}

/// A physical line: `[start, end)` without its line break, and where the next line starts.
#[derive(Clone, Copy)]
struct Line {
    start: usize,
    end: usize,
    next: usize,
}

/// The line starting at `pos`, ending at LF (a CR before it is dropped); `None` at end of input.
/// A last line without LF is returned with `next == buf.len()` and `terminated == false`.
fn line_at(buf: &[u8], pos: usize) -> Option<(Line, bool)> {
    if pos >= buf.len() {
        return None;
    }
    match find_byte(&buf[pos..], b'\n') {
        Some(n) => {
            let lf = pos + n;
            let end = if lf > pos && buf[lf - 1] == b'\r' {
                lf - 1
            } else {
                lf
            };
            Some((
                Line {
                    start: pos,
                    end,
                    next: lf + 1,
                },
                true,
            ))
        }
        None => Some((
            Line {
                start: pos,
                end: buf.len(),
                next: buf.len(),
            },
            false,
        )),
    }
}

/// The first `needle` in `hay`, eight bytes at a time (SWAR zero-byte test): line scanning is
/// the parser's inner loop, and a 64 KiB stream buffer is rescanned on every read.
fn find_byte(hay: &[u8], needle: u8) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let pattern = LO.wrapping_mul(u64::from(needle));
    let mut chunks = hay.chunks_exact(8);
    let mut base = 0;
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let x = u64::from_le_bytes(w) ^ pattern;
        if x.wrapping_sub(LO) & !x & HI != 0 {
            // The exact position is found bytewise within the eight.
            return c.iter().position(|&b| b == needle).map(|i| base + i);
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == needle)
        .map(|i| base + i)
}

fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_ws(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if first.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if last.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

/// `Content-Length = 1*DIGIT`; leading zeros allowed, no sign, at most the size limit.
fn content_length(raw: &[u8]) -> Option<usize> {
    let v = trim_ws(raw);
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut n: usize = 0;
    for &d in v {
        n = n.checked_mul(10)?.checked_add(usize::from(d - b'0'))?;
    }
    Some(n)
}

/// Where the bytes are headed: the first problem found wins.
#[derive(Default)]
struct Problem(Option<(u16, Cow<'static, str>)>);

impl Problem {
    fn set(&mut self, status: u16, reason: impl Into<Cow<'static, str>>) {
        if self.0.is_none() {
            self.0 = Some((status, reason.into()));
        }
    }
}

/// The start line, read.
enum Start {
    Request { method: Method, uri: Uri },
    Response { status: u16, reason: String },
}

/// Parses one message from a datagram (or a framed stream slice).
pub fn parse(buf: &[u8]) -> Result<Parsed, ParseError> {
    if buf.len() > MAX_MESSAGE_SIZE {
        return Err(ParseError::unanswerable("message too large"));
    }
    // RFC 3261 §7.5: CRLFs before the start line are ignored.
    let first = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .ok_or_else(|| ParseError::unanswerable("empty message"))?;
    let mut problem = Problem::default();
    let Some((start_line, _)) = line_at(buf, first) else {
        return Err(ParseError::unanswerable("empty message"));
    };
    let start = parse_start_line(&buf[start_line.start..start_line.end], &mut problem)?;

    let mut headers = Headers::new();
    let mut cl: Option<usize> = None;
    let mut cl_count = 0usize;
    // The logical header being collected: its first line's start, last line's end, and whether
    // continuation lines (folding, RFC 3261 §7.3.1) were joined to it.
    let mut pending: Option<(usize, usize, bool)> = None;
    let mut pos = start_line.next;
    let mut body_start = None;
    while let Some((line, terminated)) = line_at(buf, pos) {
        pos = line.next;
        if line.start == line.end && terminated {
            body_start = Some(line.next);
            break;
        }
        if is_ws(buf[line.start]) && line.start < line.end {
            match &mut pending {
                Some(p) => {
                    p.1 = line.end;
                    p.2 = true;
                }
                None => problem.set(400, "folded start line"),
            }
            continue;
        }
        if let Some((s, e, folded)) = pending.take() {
            add_header(
                &buf[s..e],
                folded,
                &mut headers,
                &mut cl,
                &mut cl_count,
                &mut problem,
            );
        }
        pending = Some((line.start, line.end, false));
    }
    if let Some((s, e, folded)) = pending {
        add_header(
            &buf[s..e],
            folded,
            &mut headers,
            &mut cl,
            &mut cl_count,
            &mut problem,
        );
    }
    let body_start = match body_start {
        Some(b) => b,
        None => {
            problem.set(400, "no empty line after the header section");
            buf.len()
        }
    };
    if cl_count > 1 {
        problem.set(400, "more than one Content-Length");
    }
    let rest = &buf[body_start..];
    // Over UDP a missing Content-Length means the body runs to the end of the datagram (RFC 3261
    // §18.3, RFC 4475 inv2543); streams never get here without one (see `frame`).
    let body_len = match cl {
        Some(n) if n > rest.len() => {
            problem.set(400, "body shorter than Content-Length");
            rest.len()
        }
        Some(n) => n,
        None => rest.len(),
    };
    let body = Bytes::copy_from_slice(&rest[..body_len]);
    let consumed = body_start + body_len;

    let message = match start {
        Start::Response { status, reason } => {
            let resp = Response {
                status,
                reason,
                headers,
                body,
            };
            if let Some((_, reason)) = problem.0 {
                return Err(ParseError::unanswerable(reason));
            }
            // A response nobody can match to a transaction (RFC 4475 scalarlg) is dropped here,
            // so every layer above may rely on these five headers.
            response_readable(&resp).map_err(ParseError::unanswerable)?;
            Message::Response(resp)
        }
        Start::Request { method, uri } => {
            let req = Request {
                method,
                uri,
                headers,
                body,
            };
            if let Some((status, reason)) = problem.0 {
                let request = answerable(&req).then(|| Box::new(req));
                return Err(ParseError {
                    reason: reason.into_owned(),
                    status,
                    request,
                });
            }
            Message::Request(req)
        }
    };
    Ok(Parsed { message, consumed })
}

/// Reads one logical header line into `headers`.
fn add_header(
    raw: &[u8],
    folded: bool,
    headers: &mut Headers,
    cl: &mut Option<usize>,
    cl_count: &mut usize,
    problem: &mut Problem,
) {
    let Some(colon) = raw.iter().position(|&b| b == b':') else {
        problem.set(400, "header line without ':'");
        return;
    };
    let mut name = &raw[..colon];
    while let [rest @ .., b' ' | b'\t'] = name {
        name = rest;
    }
    // Token bytes are ASCII, so the name is valid UTF-8 once it passes this check.
    let Some(name) = std::str::from_utf8(name)
        .ok()
        .filter(|n| chars::is_token(n))
    else {
        problem.set(400, "bad header name");
        return;
    };
    let raw_value = &raw[colon + 1..];
    let value: Cow<'_, [u8]> = if folded {
        // Each line break with the whitespace around it becomes one space.
        let mut v = Vec::with_capacity(raw_value.len());
        for (i, part) in raw_value.split(|&b| b == b'\n').enumerate() {
            let part = trim_ws(part);
            if part.is_empty() {
                continue;
            }
            if i > 0 && !v.is_empty() {
                v.push(b' ');
            }
            v.extend_from_slice(part);
        }
        Cow::Owned(v)
    } else {
        Cow::Borrowed(trim_ws(raw_value))
    };
    let canon = known_name(name);
    if canon == Some("Content-Length") {
        *cl_count += 1;
        match content_length(&value) {
            Some(n) => *cl = Some(n),
            None => problem.set(400, "bad Content-Length"),
        }
    }
    // TEXT-UTF8 is the rule, but a Latin-1 display name from an old phone should not cost the
    // call: invalid sequences become U+FFFD (allocation only in that case).
    let value = match value {
        Cow::Borrowed(b) => match std::str::from_utf8(b) {
            Ok(s) => s.to_owned(),
            Err(_) => String::from_utf8_lossy(b).into_owned(),
        },
        Cow::Owned(v) => match String::from_utf8(v) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        },
    };
    match canon {
        Some(c) => headers.push_known(c, value),
        None => headers.push_known(name, value),
    }
}

fn parse_start_line(line: &[u8], problem: &mut Problem) -> Result<Start, ParseError> {
    if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"SIP/") {
        return parse_status_line(line).map_err(ParseError::unanswerable);
    }
    let mut l = line;
    if let [rest @ .., b' ' | b'\t'] = l {
        problem.set(400, "trailing whitespace in the request line");
        l = trim_ws(rest);
    }
    let (Some(sp1), Some(sp2)) = (
        l.iter().position(|&b| b == b' '),
        l.iter().rposition(|&b| b == b' '),
    ) else {
        return Err(ParseError::unanswerable("malformed start line"));
    };
    if sp1 == sp2 {
        return Err(ParseError::unanswerable("malformed start line"));
    }
    let (m, uri_raw, version) = (&l[..sp1], &l[sp1 + 1..sp2], &l[sp2 + 1..]);
    if !is_sip_version(version) {
        return Err(ParseError::unanswerable("malformed start line"));
    }
    if !version.eq_ignore_ascii_case(b"SIP/2.0") {
        problem.set(505, "SIP version not supported");
    }
    let m = String::from_utf8_lossy(m);
    if !chars::is_token(&m) {
        problem.set(400, "bad method token");
    }
    let method = Method::from_token(&m);
    let uri_text = String::from_utf8_lossy(uri_raw);
    let uri = if uri_raw.iter().any(|&b| is_ws(b)) {
        problem.set(400, "whitespace in the Request-URI");
        None
    } else {
        match Uri::parse(&uri_text) {
            Ok(u) => Some(u),
            Err(e) => {
                problem.set(400, format!("invalid Request-URI: {}", e.0));
                None
            }
        }
    };
    let uri = uri.unwrap_or_else(|| Uri {
        scheme: String::new(),
        user: None,
        host: String::new(),
        port: None,
        params: Vec::new(),
        headers: None,
        opaque: Some(uri_text.trim().to_owned()),
    });
    Ok(Start::Request { method, uri })
}

/// `"SIP" "/" 1*DIGIT "." 1*DIGIT`, the name in any case.
fn is_sip_version(v: &[u8]) -> bool {
    let Some(num) = v.get(4..).filter(|_| v[..4].eq_ignore_ascii_case(b"SIP/")) else {
        return false;
    };
    let mut parts = num.split(|&b| b == b'.');
    let ok =
        |p: Option<&[u8]>| p.is_some_and(|p| !p.is_empty() && p.iter().all(u8::is_ascii_digit));
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

fn parse_status_line(line: &[u8]) -> Result<Start, &'static str> {
    let rest = line
        .get(..8)
        .filter(|v| v.eq_ignore_ascii_case(b"SIP/2.0 "))
        .map(|_| &line[8..])
        .ok_or("response with an unsupported SIP version")?;
    let code = rest.get(..3).ok_or("bad status code")?;
    let after = &rest[3..];
    if !code.iter().all(u8::is_ascii_digit) || !(after.is_empty() || after[0] == b' ') {
        // Also catches RFC 4475 bigcode (4294967301): more than three digits.
        return Err("bad status code");
    }
    let status = code.iter().fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
    if !(100..=699).contains(&status) {
        return Err("status code out of range");
    }
    let reason = after.get(1..).unwrap_or_default();
    Ok(Start::Response {
        status,
        // UTF-8 is expected (RFC 4475 unreason); anything else is shown, not refused.
        reason: String::from_utf8_lossy(reason).into_owned(),
    })
}

/// True when Via, From, To, Call-ID and CSeq can be read well enough to build a response.
fn answerable(req: &Request) -> bool {
    let h = &req.headers;
    h.values("Via").next().is_some()
        && h.get("From").is_some_and(|v| !v.is_empty())
        && h.get("To").is_some_and(|v| !v.is_empty())
        && h.get("Call-ID").is_some_and(|v| !v.is_empty())
        && h.get("CSeq").is_some_and(|v| CSeq::parse(v).is_ok())
}

/// The checks a response must pass to be worth handing to the transaction layer.
fn response_readable(resp: &Response) -> Result<(), &'static str> {
    let h = &resp.headers;
    let via = h.values("Via").next().ok_or("response without Via")?;
    Via::parse(via).map_err(|_| "response with an unreadable Via")?;
    let cseq = h.get("CSeq").ok_or("response without CSeq")?;
    CSeq::parse(cseq).map_err(|_| "response with an unreadable CSeq")?;
    if h.get("Call-ID").is_none_or(str::is_empty) {
        return Err("response without Call-ID");
    }
    for name in ["From", "To"] {
        let v = h.get(name).ok_or("response without From or To")?;
        NameAddr::parse(v).map_err(|_| "response with an unreadable From or To")?;
    }
    Ok(())
}

/// What the front of a stream buffer holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Not enough bytes yet.
    Incomplete,
    /// A CRLF keep-alive (RFC 5626 §4.4.1) of this many bytes: `\r\n\r\n` is a ping, `\r\n` a pong.
    KeepAlive(usize),
    /// A whole message of this many bytes is at the front.
    Message(usize),
    /// The stream cannot be framed (no or bad Content-Length, or over the size limit): close it.
    Invalid(&'static str),
}

/// Finds the next frame at the front of a stream buffer.
///
/// A buffer holding exactly `\r\n` (or `\r\n\r`) is `Incomplete`: it may be the first half of a
/// ping, and a server must answer a ping. A client waiting for a pong treats an `Incomplete`
/// buffer equal to `\r\n` as the pong. A CRLF followed by anything else is a pong
/// (`KeepAlive(2)`), which also skips the CRLFs RFC 3261 §7.5 allows before a message.
pub fn frame(buf: &[u8]) -> Frame {
    if buf.starts_with(b"\r\n\r\n") {
        return Frame::KeepAlive(4);
    }
    if buf.starts_with(b"\r\n") {
        return if buf == b"\r\n" || buf == b"\r\n\r" {
            Frame::Incomplete
        } else {
            Frame::KeepAlive(2)
        };
    }
    if buf == b"\r" {
        return Frame::Incomplete;
    }
    if buf.starts_with(b"\n") {
        // A bare LF before a message: skipped like a CRLF rather than closing the connection.
        return Frame::KeepAlive(1);
    }
    let mut pos = 0;
    let mut len: Option<usize> = None;
    let mut in_cl = false;
    let mut cl_raw: (usize, usize) = (0, 0);
    let mut body_start = None;
    while let Some((line, terminated)) = line_at(buf, pos) {
        if !terminated {
            break;
        }
        pos = line.next;
        if line.start == line.end {
            body_start = Some(pos);
            break;
        }
        let l = &buf[line.start..line.end];
        if is_ws(l[0]) {
            // A folded Content-Length value continues here.
            if in_cl {
                cl_raw.1 = line.end;
            }
            continue;
        }
        if in_cl {
            if !finish_cl(&buf[cl_raw.0..cl_raw.1], &mut len) {
                return Frame::Invalid("bad or conflicting Content-Length");
            }
            in_cl = false;
        }
        if let Some(colon) = l.iter().position(|&b| b == b':') {
            let name = trim_ws(&l[..colon]);
            if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
                in_cl = true;
                cl_raw = (line.start + colon + 1, line.end);
            }
        }
        if pos > MAX_MESSAGE_SIZE {
            return Frame::Invalid("header section over the size limit");
        }
    }
    let Some(body_start) = body_start else {
        return if buf.len() > MAX_MESSAGE_SIZE {
            Frame::Invalid("header section over the size limit")
        } else {
            Frame::Incomplete
        };
    };
    if in_cl && !finish_cl(&buf[cl_raw.0..cl_raw.1], &mut len) {
        return Frame::Invalid("bad or conflicting Content-Length");
    }
    let Some(len) = len else {
        return Frame::Invalid("no Content-Length on a stream");
    };
    let total = body_start.saturating_add(len);
    if total > MAX_MESSAGE_SIZE {
        return Frame::Invalid("message over the size limit");
    }
    if buf.len() < total {
        Frame::Incomplete
    } else {
        Frame::Message(total)
    }
}

/// Reads one Content-Length value into `len`; false when bad or different from an earlier one.
fn finish_cl(raw: &[u8], len: &mut Option<usize>) -> bool {
    match (content_length(raw), *len) {
        (None, _) => false,
        (Some(n), Some(prev)) if n != prev => false,
        (Some(n), _) => {
            *len = Some(n);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::SipHeaders;

    const REG: &[u8] = b"REGISTER sip:example.com SIP/2.0\r\n\
        Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK1\r\n\
        From: <sip:a@example.com>;tag=1\r\n\
        To: <sip:a@example.com>\r\n\
        Call-ID: c1\r\n\
        CSeq: 1 REGISTER\r\n\
        l: 5\r\n\
        \r\n\
        hello";

    #[test]
    fn find_byte_matches_position() {
        let hay: Vec<u8> = (0..40u8).map(|i| b'a' + i % 26).collect();
        for n in 0..hay.len() {
            for needle in [b'a', b'k', b'z', b'\n', 0xff] {
                let want = hay[n..].iter().position(|&b| b == needle);
                assert_eq!(find_byte(&hay[n..], needle), want);
            }
        }
        assert_eq!(find_byte(b"\x80\x81\n", b'\n'), Some(2));
    }

    #[test]
    fn frames_keepalives() {
        assert_eq!(frame(b""), Frame::Incomplete);
        assert_eq!(frame(b"\r"), Frame::Incomplete);
        assert_eq!(frame(b"\r\n"), Frame::Incomplete);
        assert_eq!(frame(b"\r\n\r"), Frame::Incomplete);
        assert_eq!(frame(b"\r\n\r\n"), Frame::KeepAlive(4));
        assert_eq!(frame(b"\r\n\r\nREG"), Frame::KeepAlive(4));
        assert_eq!(frame(b"\r\nREGISTER"), Frame::KeepAlive(2));
    }

    #[test]
    fn frames_compact_content_length_and_split_reads() {
        for cut in 0..REG.len() {
            assert_eq!(frame(&REG[..cut]), Frame::Incomplete, "cut at {cut}");
        }
        assert_eq!(frame(REG), Frame::Message(REG.len()));
        let mut two = REG.to_vec();
        two.extend_from_slice(REG);
        assert_eq!(frame(&two), Frame::Message(REG.len()));
    }

    #[test]
    fn frames_folded_content_length() {
        let m = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length:\r\n 2\r\n\r\nhi";
        assert_eq!(frame(m), Frame::Message(m.len()));
    }

    #[test]
    fn frame_refuses_unframeable_streams() {
        let no_cl = b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n\r\n";
        assert!(matches!(frame(no_cl), Frame::Invalid(_)));
        let neg = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: -999\r\n\r\n";
        assert!(matches!(frame(neg), Frame::Invalid(_)));
        let two = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 13\r\nl: 5\r\n\r\n";
        assert!(matches!(frame(two), Frame::Invalid(_)));
        let big = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 70000\r\n\r\n";
        assert!(matches!(frame(big), Frame::Invalid(_)));
        let mut endless = b"OPTIONS sip:a@b SIP/2.0\r\nX: ".to_vec();
        endless.resize(MAX_MESSAGE_SIZE + 10, b'a');
        assert!(matches!(frame(&endless), Frame::Invalid(_)));
        let mut long_head = b"OPTIONS sip:a@b SIP/2.0\r\n".to_vec();
        while long_head.len() <= MAX_MESSAGE_SIZE {
            long_head.extend_from_slice(b"X: yyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\r\n");
        }
        assert!(matches!(frame(&long_head), Frame::Invalid(_)));
    }

    #[test]
    fn parses_register_and_reports_consumed() {
        let mut buf = b"\r\n".to_vec();
        buf.extend_from_slice(REG);
        buf.extend_from_slice(b"trailing junk");
        let p = parse(&buf).expect("valid");
        assert_eq!(p.consumed, REG.len() + 2);
        let Message::Request(r) = p.message else {
            panic!("request expected")
        };
        assert_eq!(r.method, Method::Register);
        assert_eq!(&r.body[..], b"hello");
        assert_eq!(r.call_id(), Some("c1"));
        assert_eq!(r.top_via().and_then(|v| v.port), Some(5060));
    }

    #[test]
    fn answerable_errors_carry_the_request() {
        let bad = b"INVITE sip:a@b SIP/3.0\r\nVia: SIP/2.0/UDP h\r\nFrom: <sip:x@y>;tag=1\r\n\
            To: <sip:a@b>\r\nCall-ID: 1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let e = parse(bad).expect_err("505");
        assert_eq!(e.status, 505);
        let resp = e.to_response().expect("answerable");
        assert_eq!(resp.status, 505);
        assert!(
            resp.headers
                .get("Warning")
                .is_some_and(|w| w.starts_with("399 csps \""))
        );
        let no_callid = b"INVITE sip:a@b SIP/3.0\r\nVia: SIP/2.0/UDP h\r\nCSeq: 1 INVITE\r\n\r\n";
        assert!(parse(no_callid).expect_err("505").request.is_none());
    }

    #[test]
    fn responses_need_readable_core_headers() {
        let ok =
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:x@y>;tag=1\r\n\
            To: <sip:a@b>\r\nCall-ID: 1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        assert!(parse(ok).is_ok());
        let bad =
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:x@y>;tag=1\r\n\
            To: <sip:a@b>\r\nCall-ID: 1\r\nCSeq: 99999999999 INVITE\r\nContent-Length: 0\r\n\r\n";
        assert!(parse(bad).is_err());
        assert!(parse(b"SIP/2.0 2000 OK\r\n\r\n").is_err());
        assert!(parse(b"SIP/2.0 099 OK\r\n\r\n").is_err());
    }

    #[test]
    fn lf_only_line_ends_are_read() {
        let m =
            b"OPTIONS sip:a@b SIP/2.0\nVia: SIP/2.0/UDP h\nFrom: <sip:x@y>;tag=1\nTo: <sip:a@b>\n\
            Call-ID: 1\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n";
        let p = parse(m).expect("valid");
        assert_eq!(p.consumed, m.len());
        assert_eq!(frame(m), Frame::Message(m.len()));
    }

    #[test]
    fn never_panics_on_short_garbage() {
        for b in [
            &b""[..],
            b"\r\n",
            b"SIP/",
            b"SIP/2.0 ",
            b"SIP/2.0 1",
            b"A B",
            b"A B C",
            b" \r\n\r\n",
            b"INVITE sip:a@b SIP/2.0\r\n :x\r\n\r\n",
            b"INVITE sip:a@b SIP/2.0\r\n\xff\xfe: \xff\r\n\r\n",
            b"\n",
        ] {
            let _ = parse(b);
            let _ = frame(b);
        }
    }
}
