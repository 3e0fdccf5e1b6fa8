//! Typed views of the headers the core reads: Via, name-addr headers (From, To, Contact, Route),
//! CSeq, Contact lists. Each parses from and prints to the header value text.

use std::fmt;

use crate::message::Method;
use crate::uri::{Uri, UriError, split_host_port};

/// A header value that could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {header} header: {reason}")]
pub struct HeaderError {
    /// Which header.
    pub header: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn err(header: &'static str, reason: &'static str) -> HeaderError {
    HeaderError { header, reason }
}

/// Generic `;name=value` parameters, names as received.
pub type Params = Vec<(String, Option<String>)>;

fn param<'a>(params: &'a Params, name: &str) -> Option<Option<&'a str>> {
    params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_deref())
}

fn parse_params(s: &str) -> Params {
    s.split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.trim().to_owned(), Some(v.trim().to_owned())),
            None => (p.to_owned(), None),
        })
        .collect()
}

fn write_params(f: &mut fmt::Formatter<'_>, params: &Params) -> fmt::Result {
    for (k, v) in params {
        match v {
            Some(v) => write!(f, ";{k}={v}")?,
            None => write!(f, ";{k}")?,
        }
    }
    Ok(())
}

/// One Via value (RFC 3261 §20.42).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Via {
    /// Transport token, upper-case (`UDP`, `TCP`, `TLS`, `WS`, …).
    pub transport: String,
    /// sent-by host (IPv6 with brackets).
    pub host: String,
    /// sent-by port.
    pub port: Option<u16>,
    /// Parameters in order (branch, received, rport, …).
    pub params: Params,
}

impl Via {
    /// Parses one Via value (not a comma-separated list).
    pub fn parse(s: &str) -> Result<Via, HeaderError> {
        let s = s.trim();
        let mut it = s.splitn(2, |c: char| c.is_ascii_whitespace());
        let proto = it.next().ok_or(err("Via", "empty"))?;
        let rest = it.next().ok_or(err("Via", "no sent-by"))?.trim_start();
        let mut parts = proto.split('/').map(str::trim);
        let (name, version, transport) = (parts.next(), parts.next(), parts.next());
        if !matches!(name, Some(n) if n.eq_ignore_ascii_case("SIP"))
            || version != Some("2.0")
            || transport.is_none_or(str::is_empty)
        {
            return Err(err("Via", "bad sent-protocol"));
        }
        let (sent_by, params) = match rest.split_once(';') {
            Some((a, b)) => (a.trim(), parse_params(b)),
            None => (rest.trim(), Vec::new()),
        };
        let (host, port) = split_host_port(sent_by).map_err(|_| err("Via", "bad sent-by"))?;
        Ok(Via {
            transport: transport.unwrap_or_default().to_ascii_uppercase(),
            host,
            port,
            params,
        })
    }

    /// The branch parameter.
    pub fn branch(&self) -> Option<&str> {
        param(&self.params, "branch").flatten()
    }

    /// A parameter's value (`Some(None)` for a flag such as `rport` without a value).
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        param(&self.params, name)
    }

    /// Sets or adds a parameter.
    pub fn set_param(&mut self, name: &str, value: Option<String>) {
        match self
            .params
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            Some(p) => p.1 = value,
            None => self.params.push((name.to_owned(), value)),
        }
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIP/2.0/{} {}", self.transport, self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        write_params(f, &self.params)
    }
}

/// A name-addr or addr-spec with header parameters: From, To, Contact, Route, Refer-To…
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameAddr {
    /// Display name, without quotes.
    pub display: Option<String>,
    /// The URI.
    pub uri: Uri,
    /// Header parameters (after `>` or, for a bare addr-spec, after the URI).
    pub params: Params,
}

impl NameAddr {
    /// Parses a name-addr (`"Bob" <sip:bob@x>;tag=1`) or a bare addr-spec (`sip:bob@x;tag=1`).
    pub fn parse(s: &str) -> Result<NameAddr, HeaderError> {
        let s = s.trim();
        if let Some(lt) = find_unquoted(s, b'<') {
            let display = s[..lt].trim();
            let display = if display.is_empty() {
                None
            } else if let Some(q) = display.strip_prefix('"') {
                Some(
                    q.strip_suffix('"')
                        .ok_or(err("name-addr", "unbalanced quotes"))?
                        .replace("\\\"", "\"")
                        .replace("\\\\", "\\"),
                )
            } else {
                Some(display.to_owned())
            };
            let rest = &s[lt + 1..];
            let gt = rest.find('>').ok_or(err("name-addr", "no closing >"))?;
            let uri = Uri::parse(rest[..gt].trim()).map_err(|UriError(r)| err("name-addr", r))?;
            let after = rest[gt + 1..].trim();
            let params = match after.strip_prefix(';') {
                Some(p) => parse_params(p),
                None if after.is_empty() => Vec::new(),
                None => return Err(err("name-addr", "junk after >")),
            };
            Ok(NameAddr {
                display,
                uri,
                params,
            })
        } else {
            if s.contains('"') {
                return Err(err("name-addr", "quoted display name without <>"));
            }
            // addr-spec: header params follow the first ';' after the host (RFC 3261 §20).
            let (u, p) = match s.find(';') {
                Some(i) => (&s[..i], parse_params(&s[i + 1..])),
                None => (s, Vec::new()),
            };
            let uri = Uri::parse(u.trim()).map_err(|UriError(r)| err("addr-spec", r))?;
            Ok(NameAddr {
                display: None,
                uri,
                params: p,
            })
        }
    }

    /// The `tag` parameter.
    pub fn tag(&self) -> Option<&str> {
        param(&self.params, "tag").flatten()
    }

    /// A header parameter's value.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        param(&self.params, name)
    }

    /// Sets or adds a header parameter.
    pub fn set_param(&mut self, name: &str, value: Option<String>) {
        match self
            .params
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            Some(p) => p.1 = value,
            None => self.params.push((name.to_owned(), value)),
        }
    }
}

fn find_unquoted(s: &str, needle: u8) -> Option<usize> {
    let b = s.as_bytes();
    let (mut q, mut i) = (false, 0);
    while i < b.len() {
        match b[i] {
            b'\\' if q => i += 1,
            b'"' => q = !q,
            c if c == needle && !q => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

impl fmt::Display for NameAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.display {
            write!(f, "\"{}\" ", d.replace('\\', "\\\\").replace('"', "\\\""))?;
        }
        write!(f, "<{}>", self.uri)?;
        write_params(f, &self.params)
    }
}

/// The CSeq header (RFC 3261 §20.16): a 32-bit sequence number and a method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CSeq {
    /// Sequence number, < 2^31.
    pub seq: u32,
    /// Method, which must match the request line's.
    pub method: Method,
}

impl CSeq {
    /// Parses `4711 INVITE`.
    pub fn parse(s: &str) -> Result<CSeq, HeaderError> {
        let mut it = s.split_ascii_whitespace();
        let seq = it.next().ok_or(err("CSeq", "empty"))?;
        let method = it.next().ok_or(err("CSeq", "no method"))?;
        if it.next().is_some() {
            return Err(err("CSeq", "junk after method"));
        }
        let seq: u32 = seq.parse().map_err(|_| err("CSeq", "bad number"))?;
        if seq >= 1 << 31 {
            return Err(err("CSeq", "number out of range"));
        }
        Ok(CSeq {
            seq,
            method: Method::from_token(method),
        })
    }
}

impl fmt::Display for CSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.seq, self.method)
    }
}

/// The value of a Contact header in a REGISTER: `*` or a list of addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Contacts {
    /// `Contact: *` (remove all bindings, with `Expires: 0`).
    Star,
    /// One or more contact addresses.
    List(Vec<NameAddr>),
}
