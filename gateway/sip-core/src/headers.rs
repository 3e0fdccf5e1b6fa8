//! Typed views of the headers the core reads: Via, name-addr headers (From, To, Contact, Route),
//! CSeq, Contact lists. Each parses from and prints to the header value text.

use std::fmt;

use crate::message::Method;
use crate::message::{Headers, split_list};
use crate::uri::{Uri, UriError, chars, split_host_port};

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

/// Splits `;`-separated generic parameters (RFC 3261 `generic-param`), outside quoted strings.
/// Empty parameters (`;;`), names that are not tokens and unbalanced quotes are errors.
fn parse_params(s: &str, header: &'static str) -> Result<Params, HeaderError> {
    let mut out = Vec::new();
    for p in split_unquoted(s, b';') {
        let p = p.trim();
        if p.is_empty() {
            return Err(err(header, "empty parameter"));
        }
        let (k, v) = match p.split_once('=') {
            Some((k, v)) => {
                let v = v.trim();
                if !gen_value_ok(v) {
                    return Err(err(header, "bad parameter value"));
                }
                (k.trim_end(), Some(v.to_owned()))
            }
            None => (p, None),
        };
        if !chars::is_token(k) {
            return Err(err(header, "bad parameter name"));
        }
        out.push((k.to_owned(), v));
    }
    Ok(out)
}

/// `gen-value = token / host / quoted-string`.
fn gen_value_ok(v: &str) -> bool {
    if v.starts_with('"') {
        return quoted_end(v.as_bytes(), 0) == Some(v.len());
    }
    !v.is_empty()
        && v.bytes()
            .all(|b| chars::all(&[b], chars::TOKEN) || matches!(b, b'[' | b']' | b':'))
}

/// Given `b[start] == b'"'`, the index just past the closing quote (quoted-pairs honoured).
fn quoted_end(b: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// Splits at `sep` outside quoted strings (a split inside quotes would corrupt a parameter).
fn split_unquoted(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let b = s.as_bytes();
    let (mut i, mut start, mut q, mut done) = (0, 0, false, false);
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        while i < b.len() {
            match b[i] {
                b'\\' if q => i += 1,
                b'"' => q = !q,
                c if c == sep && !q => {
                    let part = &s[start..i];
                    i += 1;
                    start = i;
                    return Some(part);
                }
                _ => {}
            }
            i += 1;
        }
        done = true;
        Some(&s[start.min(s.len())..])
    })
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

/// Skips spaces and tabs (folding is already a single space once a header is read).
fn skip_ws(s: &str) -> &str {
    s.trim_start_matches([' ', '\t'])
}

/// Reads a token at the front of `s`.
fn take_token(s: &str) -> (&str, &str) {
    let n = s
        .bytes()
        .position(|b| !chars::all(&[b], chars::TOKEN))
        .unwrap_or(s.len());
    s.split_at(n)
}

impl Via {
    /// Parses one Via value (not a comma-separated list); `SLASH` may carry whitespace around it
    /// (RFC 4475 wsinv: `SIP  /   2.0 /UDP`).
    pub fn parse(s: &str) -> Result<Via, HeaderError> {
        let bad = || err("Via", "bad sent-protocol");
        let s = skip_ws(s);
        let (name, rest) = take_token(s);
        let rest = skip_ws(rest).strip_prefix('/').ok_or_else(bad)?;
        let (version, rest) = take_token(skip_ws(rest));
        let rest = skip_ws(rest).strip_prefix('/').ok_or_else(bad)?;
        let (transport, rest) = take_token(skip_ws(rest));
        if !name.eq_ignore_ascii_case("SIP") || version != "2.0" || transport.is_empty() {
            return Err(bad());
        }
        if !rest.starts_with([' ', '\t']) {
            return Err(err("Via", "no sent-by"));
        }
        let (sent_by, params) = match rest.split_once(';') {
            Some((a, b)) => (a.trim(), parse_params(b, "Via")?),
            None => (rest.trim(), Vec::new()),
        };
        // COLON may carry whitespace too; dropping it keeps `host : port` readable.
        let sent_by: std::borrow::Cow<'_, str> = if sent_by.contains([' ', '\t']) {
            let (h, p) = sent_by.split_once(':').ok_or(err("Via", "bad sent-by"))?;
            format!("{}:{}", h.trim_end(), p.trim_start()).into()
        } else {
            sent_by.into()
        };
        let (host, port) = split_host_port(&sent_by).map_err(|_| err("Via", "bad sent-by"))?;
        Ok(Via {
            transport: transport.to_ascii_uppercase(),
            host,
            port,
            params,
        })
    }

    /// The branch parameter.
    pub fn branch(&self) -> Option<&str> {
        param(&self.params, "branch").flatten()
    }

    /// The branch when it is an RFC 3261 one: starts with `z9hG4bK` and has more after it
    /// (RFC 4475 badbranch is the bare cookie, which must be matched the RFC 2543 way).
    pub fn rfc3261_branch(&self) -> Option<&str> {
        self.branch()
            .filter(|b| b.len() > 7 && b.starts_with("z9hG4bK"))
    }

    /// A parameter's value (`Some(None)` for a flag such as `rport` without a value).
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        param(&self.params, name)
    }

    /// Sets or adds a parameter.
    pub fn set_param(&mut self, name: &str, value: Option<String>) {
        set_param(&mut self.params, name, value);
    }
}

fn set_param(params: &mut Params, name: &str, value: Option<String>) {
    match params
        .iter_mut()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
    {
        Some(p) => p.1 = value,
        None => params.push((name.to_owned(), value)),
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
    /// Strict where RFC 4475 says a 400 is reasonable: unbalanced quotes (quotbal), spaces inside
    /// `<>` (badaspec), unquoted non-token display names (baddn), `?` in an addr-spec (regbadct).
    pub fn parse(s: &str) -> Result<NameAddr, HeaderError> {
        let s = s.trim();
        let b = s.as_bytes();
        let (display, lt) = if b.first() == Some(&b'"') {
            let end = quoted_end(b, 0).ok_or(err("name-addr", "unbalanced quotes"))?;
            let after = skip_ws(&s[end..]);
            if !after.starts_with('<') {
                return Err(err("name-addr", "quoted display name without <>"));
            }
            (Some(unquote(&s[1..end - 1])), s.len() - after.len())
        } else if let Some(lt) = s.find('<') {
            let d = s[..lt].trim();
            if d.is_empty() {
                (None, lt)
            } else if d
                .split([' ', '\t'])
                .all(|t| t.is_empty() || chars::is_token(t))
            {
                (Some(d.to_owned()), lt)
            } else {
                return Err(err(
                    "name-addr",
                    "display name is neither tokens nor quoted",
                ));
            }
        } else {
            if s.contains('"') {
                return Err(err("name-addr", "quoted display name without <>"));
            }
            // addr-spec: header params follow the first ';' (RFC 3261 §20: a URI holding ';', ','
            // or '?' must be in <>), so '?' here means a missing <>.
            let (u, p) = match s.split_once(';') {
                Some((u, p)) => (u.trim_end(), parse_params(p, "addr-spec")?),
                None => (s, Vec::new()),
            };
            if u.contains(['?', ',']) {
                return Err(err("addr-spec", "URI with '?' or ',' must be in <>"));
            }
            let uri = Uri::parse(u).map_err(|UriError(r)| err("addr-spec", r))?;
            return Ok(NameAddr {
                display: None,
                uri,
                params: p,
            });
        };
        let rest = &s[lt + 1..];
        let gt = rest.find('>').ok_or(err("name-addr", "no closing >"))?;
        let uri = Uri::parse(&rest[..gt]).map_err(|UriError(r)| err("name-addr", r))?;
        let after = skip_ws(&rest[gt + 1..]);
        let params = match after.strip_prefix(';') {
            Some(p) => parse_params(p, "name-addr")?,
            None if after.is_empty() => Vec::new(),
            None => return Err(err("name-addr", "junk after >")),
        };
        Ok(NameAddr {
            display,
            uri,
            params,
        })
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
        set_param(&mut self.params, name, value);
    }
}

/// Removes quoted-pair backslashes from the inside of a quoted string.
fn unquote(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            if let Some(n) = it.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl fmt::Display for NameAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.display {
            f.write_str("\"")?;
            for c in d.chars() {
                if c == '"' || c == '\\' {
                    f.write_str("\\")?;
                }
                // CR and LF cannot be quoted; dropping them keeps a header on one line.
                if c != '\r' && c != '\n' {
                    write!(f, "{c}")?;
                }
            }
            f.write_str("\" ")?;
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
        if !seq.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("CSeq", "bad number"));
        }
        // Leading zeros are legal (RFC 4475 wsinv: 0009), so range-check the value, not the length.
        let digits = seq.trim_start_matches('0');
        let seq: u32 = if digits.is_empty() {
            0
        } else if digits.len() > 10 {
            return Err(err("CSeq", "number out of range"));
        } else {
            digits
                .parse()
                .map_err(|_| err("CSeq", "number out of range"))?
        };
        if seq >= 1 << 31 {
            return Err(err("CSeq", "number out of range"));
        }
        if !chars::is_token(method) {
            return Err(err("CSeq", "bad method"));
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

impl Contacts {
    /// Parses one Contact value, which may be a comma-separated list or `*`.
    pub fn parse(s: &str) -> Result<Contacts, HeaderError> {
        Self::from_values(split_list(s))
    }

    /// Reads every Contact line of `headers`; `None` when there is none. `*` must stand alone.
    pub fn from_headers(headers: &Headers) -> Option<Result<Contacts, HeaderError>> {
        let mut values = headers.values("Contact").peekable();
        values.peek()?;
        Some(Self::from_values(values))
    }

    fn from_values<'a>(values: impl Iterator<Item = &'a str>) -> Result<Contacts, HeaderError> {
        let mut list = Vec::new();
        let mut star = false;
        for v in values {
            if v == "*" {
                star = true;
            } else {
                list.push(NameAddr::parse(v)?);
            }
        }
        match (star, list.is_empty()) {
            (true, true) => Ok(Contacts::Star),
            (true, false) => Err(err("Contact", "'*' mixed with addresses")),
            (false, true) => Err(err("Contact", "empty")),
            (false, false) => Ok(Contacts::List(list)),
        }
    }
}

impl fmt::Display for Contacts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Contacts::Star => f.write_str("*"),
            Contacts::List(l) => {
                for (i, c) in l.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{c}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_with_whitespace_in_sent_protocol() {
        let v = Via::parse("SIP / 2.0 /UDP 192.0.2.2;branch=390skdjuw").expect("valid");
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.host, "192.0.2.2");
        assert_eq!(v.branch(), Some("390skdjuw"));
        let v =
            Via::parse("SIP  / 2.0  / TCP     spindle.example.com   ; branch  =   z9hG4bK9ikj8")
                .expect("valid");
        assert_eq!(v.branch(), Some("z9hG4bK9ikj8"));
        assert!(Via::parse("SIP/2.0/UDP 192.0.2.15;;").is_err());
        assert!(Via::parse("SIP/7.0/UDP c.example.com").is_err());
        let v = Via::parse("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK").expect("valid");
        assert_eq!(v.rfc3261_branch(), None);
        let v = Via::parse("SIP/2.0/TCP [2001:db8::1]:5061;rport;received=[2001:db8::2]")
            .expect("valid");
        assert_eq!((v.host.as_str(), v.port), ("[2001:db8::1]", Some(5061)));
        assert_eq!(v.param("rport"), Some(None));
    }

    #[test]
    fn name_addr_forms() {
        let n = NameAddr::parse(r#""J Rosenberg \\\""  <sip:jdrosen@example.com> ; tag = 98asjd8"#)
            .expect("valid");
        assert_eq!(n.display.as_deref(), Some(r#"J Rosenberg \""#));
        assert_eq!(n.tag(), Some("98asjd8"));
        let n = NameAddr::parse("caller<sip:caller@example.com>;tag=323").expect("valid");
        assert_eq!(n.display.as_deref(), Some("caller"));
        let n = NameAddr::parse("sip:+1972@gw1.example.net;unknownparam").expect("valid");
        assert!(n.uri.params.is_empty());
        assert_eq!(n.param("unknownparam"), Some(None));
        let n = NameAddr::parse(r#"<sip:a@b>;p="x;y";tag=1"#).expect("valid");
        assert_eq!(n.param("p"), Some(Some(r#""x;y""#)));
        assert_eq!(n.tag(), Some("1"));
        for bad in [
            "\"Mr. J. User <sip:j.user@example.com>",
            "\"Watson, Thomas\" < sip:t.watson@example.org >",
            "Bell, Alexander <sip:a.g.bell@example.com>;tag=43",
            "sip:user@example.com?Route=%3Csip:sip.example.com%3E",
            "\"Joe\" <sip:joe@example.org>;;;;",
            "<sip:a@b> junk",
        ] {
            assert!(NameAddr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn name_addr_display_round_trips() {
        let n = NameAddr::parse(r#""a \"b\" \\c" <sip:x@y>;tag=1"#).expect("valid");
        let again = NameAddr::parse(&n.to_string()).expect("valid");
        assert_eq!(n, again);
    }

    #[test]
    fn cseq_range_and_zeros() {
        assert_eq!(CSeq::parse("0009 INVITE").expect("valid").seq, 9);
        assert!(CSeq::parse("36893488147419103232 REGISTER").is_err());
        assert!(CSeq::parse("2147483648 INVITE").is_err());
        assert!(CSeq::parse("+5 INVITE").is_err());
        assert!(CSeq::parse("5 IN<VITE").is_err());
    }

    #[test]
    fn contacts_star_and_lists() {
        assert_eq!(Contacts::parse("*"), Ok(Contacts::Star));
        let Ok(Contacts::List(l)) = Contacts::parse("<sip:a@b>, \"x, y\" <sip:c@d>;q=0.5") else {
            panic!("list expected");
        };
        assert_eq!(l.len(), 2);
        assert!(Contacts::parse("*, <sip:a@b>").is_err());
    }
}
