//! Reading messages from bytes: one datagram, or the next message of a stream framed by
//! Content-Length (RFC 3261 §18.3), with RFC 5626 CRLF keep-alives recognised.

use bytes::Bytes;

use crate::message::{Headers, MAX_MESSAGE_SIZE, Message, Method, Request, Response};
use crate::uri::Uri;

/// Why bytes are not a usable message, and how to answer when an answer is possible.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ParseError {
    /// What is wrong, short enough for a Warning header.
    pub reason: String,
    /// The status to answer with when `request` is set (400, 505, …).
    pub status: u16,
    /// The request as far as it could be read, when Via, From, To, Call-ID and CSeq were readable
    /// so that a response can be built from it.
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
}

/// A message read from the start of a buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// The message.
    pub message: Message,
    /// How many bytes of the buffer it took (trailing bytes of a datagram are ignored).
    pub consumed: usize,
}

/// Parses one message from a datagram (or a framed stream slice).
pub fn parse(buf: &[u8]) -> Result<Parsed, ParseError> {
    if buf.len() > MAX_MESSAGE_SIZE {
        return Err(ParseError::unanswerable("message too large"));
    }
    let head_end = find(buf, b"\r\n\r\n")
        .map(|i| (i, i + 4))
        .or_else(|| find(buf, b"\n\n").map(|i| (i, i + 2)))
        .ok_or_else(|| ParseError::unanswerable("no end of headers"))?;
    let head = std::str::from_utf8(&buf[..head_end.0])
        .map_err(|_| ParseError::unanswerable("header section is not UTF-8"))?;
    let mut lines = unfold(head).into_iter();
    let start = lines
        .next()
        .ok_or_else(|| ParseError::unanswerable("empty message"))?;
    let mut headers = Headers::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| ParseError::unanswerable("header line without ':'"))?;
        let name = name.trim_end();
        if name.is_empty() || name.bytes().any(|b| b <= b' ') {
            return Err(ParseError::unanswerable("bad header name"));
        }
        headers.push(name, value.trim());
    }
    let rest = &buf[head_end.1..];
    let body_len = match headers.get("Content-Length") {
        Some(v) => v
            .trim()
            .parse::<usize>()
            .map_err(|_| ParseError::unanswerable("bad Content-Length"))?,
        None => rest.len(),
    };
    if body_len > rest.len() {
        return Err(ParseError::unanswerable("body shorter than Content-Length"));
    }
    let body = Bytes::copy_from_slice(&rest[..body_len]);
    let consumed = head_end.1 + body_len;
    let message = if let Some(status_line) = start.strip_prefix("SIP/2.0 ") {
        let (code, reason) = status_line.split_once(' ').unwrap_or((status_line, ""));
        let status: u16 = code
            .parse()
            .map_err(|_| ParseError::unanswerable("bad status code"))?;
        if !(100..=699).contains(&status) {
            return Err(ParseError::unanswerable("status code out of range"));
        }
        Message::Response(Response {
            status,
            reason: reason.to_owned(),
            headers,
            body,
        })
    } else {
        let mut parts = start.split(' ');
        let (m, u, v) = (parts.next(), parts.next(), parts.next());
        let (Some(m), Some(u), Some(v), None) = (m, u, v, parts.next()) else {
            return Err(ParseError::unanswerable("malformed request line"));
        };
        let uri = Uri::parse(u).map_err(|e| ParseError::unanswerable(e.to_string()))?;
        let req = Request {
            method: Method::from_token(m),
            uri,
            headers,
            body,
        };
        if v != "SIP/2.0" {
            return Err(ParseError {
                reason: "SIP version not supported".into(),
                status: 505,
                request: Some(Box::new(req)),
            });
        }
        Message::Request(req)
    };
    Ok(Parsed { message, consumed })
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
pub fn frame(buf: &[u8]) -> Frame {
    if buf.starts_with(b"\r\n\r\n") {
        return Frame::KeepAlive(4);
    }
    if buf.starts_with(b"\r\n") {
        return if buf.len() >= 4 || buf == b"\r\n" {
            Frame::KeepAlive(2)
        } else {
            Frame::Incomplete
        };
    }
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() > MAX_MESSAGE_SIZE {
            Frame::Invalid("header section over the size limit")
        } else {
            Frame::Incomplete
        };
    };
    let head = &buf[..end];
    let mut len = None;
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            let name = String::from_utf8_lossy(&line[..colon]);
            let name = name.trim();
            if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l") {
                let v = String::from_utf8_lossy(&line[colon + 1..]);
                match v.trim().parse::<usize>() {
                    Ok(n) => len = Some(n),
                    Err(_) => return Frame::Invalid("bad Content-Length"),
                }
            }
        }
    }
    let Some(len) = len else {
        return Frame::Invalid("no Content-Length on a stream");
    };
    let total = end + 4 + len;
    if total > MAX_MESSAGE_SIZE {
        return Frame::Invalid("message over the size limit");
    }
    if buf.len() < total {
        Frame::Incomplete
    } else {
        Frame::Message(total)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Splits the header section into logical lines, joining folded continuation lines (RFC 3261 §7.3.1).
fn unfold(head: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for raw in head.split('\n') {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
                continue;
            }
        }
        out.push(line.to_owned());
    }
    out
}
