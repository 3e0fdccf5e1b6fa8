//! SIP and other URIs (RFC 3261 §19.1, RFC 3986 for the rest): scheme, user, host, port,
//! parameters and headers, kept in their received (escaped) form so they round-trip unchanged.
//! Only `sip:`/`sips:` are taken apart; any other scheme (`tel:`, `http:`, RFC 4475 `unkscm`) is
//! kept opaque so a higher layer can answer 416 instead of the parser failing.

use std::borrow::Cow;
use std::fmt;

/// A URI as it appears in a Request-URI, a name-addr or a Contact.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Uri {
    /// Lower-cased scheme: `sip`, `sips`, `tel`, or anything else.
    pub scheme: String,
    /// The user part (with any password, still escaped), for sip/sips.
    pub user: Option<String>,
    /// Host name or address (IPv6 with brackets), for sip/sips.
    pub host: String,
    /// The port, when given.
    pub port: Option<u16>,
    /// URI parameters in order (`;transport=tcp`, `;lr`), names as received.
    pub params: Vec<(String, Option<String>)>,
    /// The `?…` header part without the `?`, still escaped.
    pub headers: Option<String>,
    /// For schemes other than sip/sips: everything after `scheme:`.
    pub opaque: Option<String>,
}

/// A URI that could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid URI: {0}")]
pub struct UriError(pub &'static str);

/// Byte classes of RFC 3261 §25.1, as bit flags in one table so each check is a single lookup.
pub(crate) mod chars {
    /// `token` characters.
    pub const TOKEN: u8 = 1;
    /// `unreserved` plus `%` (escapes are checked separately).
    const UNRESERVED: u8 = 2;
    /// Characters of the user and password parts.
    pub const USER: u8 = 4;
    /// `paramchar` (URI parameter names and values).
    pub const PARAM: u8 = 8;
    /// `hname`/`hvalue` characters plus `=` and `&`.
    pub const HEADER: u8 = 16;
    /// Host name characters (letters, digits, `-`, `.`, and `_` seen in the wild).
    pub const HOST: u8 = 32;

    const fn build() -> [u8; 256] {
        let mut t = [0u8; 256];
        let mut c = 0;
        while c < 256 {
            let b = c as u8;
            let alnum = b.is_ascii_alphanumeric();
            let mut f = 0;
            if alnum
                || matches!(
                    b,
                    b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
                )
            {
                f |= TOKEN;
            }
            let unres = alnum
                || matches!(
                    b,
                    b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')' | b'%'
                );
            if unres {
                f |= UNRESERVED;
            }
            if unres
                || matches!(
                    b,
                    b'&' | b'=' | b'+' | b'$' | b',' | b';' | b'?' | b'/' | b':'
                )
            {
                f |= USER;
            }
            if unres || matches!(b, b'[' | b']' | b'/' | b':' | b'&' | b'+' | b'$') {
                f |= PARAM;
            }
            if unres
                || matches!(
                    b,
                    b'[' | b']' | b'/' | b'?' | b':' | b'+' | b'$' | b'=' | b'&'
                )
            {
                f |= HEADER;
            }
            if alnum || matches!(b, b'-' | b'.' | b'_') {
                f |= HOST;
            }
            t[c] = f;
            c += 1;
        }
        t
    }

    static TABLE: [u8; 256] = build();

    /// True when every byte of `s` is in `class`.
    #[inline]
    pub fn all(s: &[u8], class: u8) -> bool {
        s.iter().all(|&b| TABLE[b as usize] & class != 0)
    }

    /// True for a non-empty RFC 3261 token.
    #[inline]
    pub fn is_token(s: &str) -> bool {
        !s.is_empty() && all(s.as_bytes(), TOKEN)
    }

    /// True when every `%` in `s` starts a `%HEX HEX` escape.
    pub fn escapes_ok(s: &[u8]) -> bool {
        let mut i = 0;
        while i < s.len() {
            if s[i] == b'%' {
                match s.get(i + 1..i + 3) {
                    Some([a, b]) if a.is_ascii_hexdigit() && b.is_ascii_hexdigit() => i += 3,
                    _ => return false,
                }
            } else {
                i += 1;
            }
        }
        true
    }
}

fn checked(s: &str, class: u8, what: &'static str) -> Result<(), UriError> {
    if s.is_empty() || !chars::all(s.as_bytes(), class) || !chars::escapes_ok(s.as_bytes()) {
        return Err(UriError(what));
    }
    Ok(())
}

impl Uri {
    /// Parses a URI in its wire form (no surrounding whitespace or `<>`).
    pub fn parse(s: &str) -> Result<Uri, UriError> {
        let (scheme, rest) = s.split_once(':').ok_or(UriError("no scheme"))?;
        let sb = scheme.as_bytes();
        if sb.is_empty()
            || !sb[0].is_ascii_alphabetic()
            || !sb
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
        {
            return Err(UriError("bad scheme"));
        }
        // Whitespace, controls, non-ASCII and the delimiters of name-addr never belong in a URI;
        // refusing them here is what turns RFC 4475 lwsruri/ltgtruri/badaspec into a 400.
        if rest
            .bytes()
            .any(|b| b <= b' ' || b >= 0x7f || matches!(b, b'<' | b'>' | b'"'))
        {
            return Err(UriError(
                "whitespace, control or delimiter character in URI",
            ));
        }
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "sip" && scheme != "sips" {
            if rest.is_empty() {
                return Err(UriError("empty URI"));
            }
            return Ok(Uri {
                scheme,
                user: None,
                host: String::new(),
                port: None,
                params: Vec::new(),
                headers: None,
                opaque: Some(rest.to_owned()),
            });
        }
        // '@' cannot occur unescaped in host, parameters or headers, so the last one ends the
        // userinfo, which itself may hold ';', '?' and '/' (RFC 4475 semiuri, intmeth).
        let (user, hostpart) = match rest.rfind('@') {
            Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
            None => (None, rest),
        };
        if let Some(u) = user {
            checked(u, chars::USER, "bad user part")?;
        }
        let (hostpart, headers) = match hostpart.split_once('?') {
            Some((a, h)) => {
                checked(h, chars::HEADER, "bad URI headers")?;
                (a, Some(h.to_owned()))
            }
            None => (hostpart, None),
        };
        let mut pieces = hostpart.split(';');
        let hostport = pieces.next().unwrap_or("");
        let (host, port) = split_host_port(hostport)?;
        let mut params = Vec::new();
        for p in pieces {
            let (k, v) = match p.split_once('=') {
                Some((k, v)) => {
                    checked(v, chars::PARAM, "bad URI parameter value")?;
                    (k, Some(v.to_owned()))
                }
                None => (p, None),
            };
            checked(k, chars::PARAM, "bad URI parameter name")?;
            params.push((k.to_owned(), v));
        }
        Ok(Uri {
            scheme,
            user: user.map(str::to_owned),
            host,
            port,
            params,
            headers,
            opaque: None,
        })
    }

    /// True for `sip:` and `sips:` URIs.
    pub fn is_sip(&self) -> bool {
        self.opaque.is_none()
    }

    /// A URI parameter's value (`Some(None)` for a flag such as `lr`); names compare case-insensitively.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }

    /// The address-of-record form `sip:user@host` (no port, parameters or headers), lower-cased
    /// host, and escapes in the user part normalised (RFC 3261 §19.1.4: `%75ser` equals `user`),
    /// so `%00` stays `%00` and never truncates the AOR (RFC 4475 escnull).
    pub fn aor(&self) -> String {
        match (&self.user, self.is_sip()) {
            (Some(u), true) => format!(
                "{}:{}@{}",
                self.scheme,
                normalize_escapes(u),
                self.host.to_ascii_lowercase()
            ),
            (None, true) => format!("{}:{}", self.scheme, self.host.to_ascii_lowercase()),
            _ => self.to_string(),
        }
    }

    /// The user part with `%HEX HEX` escapes decoded, as bytes (it may hold `%00` or non-UTF-8).
    pub fn user_unescaped(&self) -> Option<Vec<u8>> {
        self.user.as_deref().map(percent_decode)
    }
}

/// Decodes `%HEX HEX` escapes; a `%` not followed by two hex digits is kept as is.
pub fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).and_then(|c| hex(*c)),
                b.get(i + 2).and_then(|c| hex(*c)),
            )
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Rewrites escapes to one canonical form: unreserved characters decoded, all other escapes with
/// upper-case hex. Borrowed when `s` holds no `%`.
pub fn normalize_escapes(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).and_then(|c| hex(*c)),
                b.get(i + 2).and_then(|c| hex(*c)),
            )
        {
            let c = h << 4 | l;
            if c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')'
                )
            {
                out.push(c as char);
            } else {
                out.push('%');
                out.push_str(&format!("{c:02X}"));
            }
            i += 3;
            continue;
        }
        // Slicing by char keeps non-ASCII text intact; `i` only ever stops on char boundaries
        // because escapes and ASCII bytes are one byte each.
        let ch_len = s[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&s[i..i + ch_len]);
        i += ch_len;
    }
    Cow::Owned(out)
}

/// Splits `host[:port]`, with IPv6 references in brackets.
pub fn split_host_port(s: &str) -> Result<(String, Option<u16>), UriError> {
    if s.is_empty() {
        return Err(UriError("empty host"));
    }
    if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']').ok_or(UriError("unclosed IPv6 reference"))?;
        let inner = &rest[..end];
        if inner.is_empty()
            || !inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(UriError("bad IPv6 reference"));
        }
        let host = &s[..end + 2];
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(parse_port(p)?),
            None if after.is_empty() => None,
            None => return Err(UriError("junk after IPv6 reference")),
        };
        return Ok((host.to_owned(), port));
    }
    match s.split_once(':') {
        Some((h, p)) => {
            let port = parse_port(p)?;
            check_host(h)?;
            Ok((h.to_owned(), Some(port)))
        }
        None => {
            check_host(s)?;
            Ok((s.to_owned(), None))
        }
    }
}

fn parse_port(p: &str) -> Result<u16, UriError> {
    // `u16::from_str` would also take a leading '+'.
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UriError("bad port"));
    }
    p.parse().map_err(|_| UriError("bad port"))
}

fn check_host(h: &str) -> Result<(), UriError> {
    if h.is_empty() || !chars::all(h.as_bytes(), chars::HOST) {
        return Err(UriError("bad host"));
    }
    Ok(())
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(op) = &self.opaque {
            return write!(f, "{}:{}", self.scheme, op);
        }
        write!(f, "{}:", self.scheme)?;
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        f.write_str(&self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        for (k, v) in &self.params {
            match v {
                Some(v) => write!(f, ";{k}={v}")?,
                None => write!(f, ";{k}")?,
            }
        }
        if let Some(h) = &self.headers {
            write!(f, "?{h}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_part_may_hold_semicolon_and_question_mark() {
        let u = Uri::parse("sip:user;par=u%40example.net@example.com").expect("valid");
        assert_eq!(u.user.as_deref(), Some("user;par=u%40example.net"));
        assert_eq!(u.host, "example.com");
        let u = Uri::parse("sip:a?b/c@h.example;lr?X=1").expect("valid");
        assert_eq!(u.user.as_deref(), Some("a?b/c"));
        assert_eq!(u.param("lr"), Some(None));
        assert_eq!(u.headers.as_deref(), Some("X=1"));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "sip:user@example.com; lr",
            "<sip:a@b>",
            "sip:a@b:",
            "sip:a@b:+5",
            "sip:a@b:99999",
            "sip:@b",
            "sip:a@b;;",
            "sip:a%G0@b",
            "sip:a@[zz]",
            "1sip:a@b",
            "tel:",
        ] {
            assert!(Uri::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn aor_normalises_escapes_without_truncating() {
        let u = Uri::parse("sip:%75se%72@Example.COM:5060;transport=tcp").expect("valid");
        assert_eq!(u.aor(), "sip:user@example.com");
        let u = Uri::parse("sip:null-%00-null@example.com").expect("valid");
        assert_eq!(u.aor(), "sip:null-%00-null@example.com");
        assert_eq!(u.user_unescaped().expect("user"), b"null-\0-null");
    }

    #[test]
    fn other_schemes_stay_opaque() {
        let u = Uri::parse("soap.beep://192.0.2.103:3002").expect("valid");
        assert!(!u.is_sip());
        assert_eq!(u.to_string(), "soap.beep://192.0.2.103:3002");
    }
}
