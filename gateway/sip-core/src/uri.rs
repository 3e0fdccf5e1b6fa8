//! SIP and other URIs (RFC 3261 §19.1, RFC 3986 for the rest): scheme, user, host, port,
//! parameters and headers, kept in their received (escaped) form so they round-trip unchanged.

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

impl Uri {
    /// Parses a URI in its wire form.
    pub fn parse(s: &str) -> Result<Uri, UriError> {
        let (scheme, rest) = s.split_once(':').ok_or(UriError("no scheme"))?;
        if scheme.is_empty()
            || !scheme.as_bytes()[0].is_ascii_alphabetic()
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
        {
            return Err(UriError("bad scheme"));
        }
        let scheme = scheme.to_ascii_lowercase();
        if rest.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(UriError("whitespace or control character in URI"));
        }
        if scheme != "sip" && scheme != "sips" {
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
        let (rest, headers) = match rest.split_once('?') {
            Some((a, b)) => (a, Some(b.to_owned())),
            None => (rest, None),
        };
        // The user part may hold ';' (RFC 4475 semiuri) so split at the last '@' first.
        let (user, hostpart) = match rest.rfind('@') {
            Some(i) => (Some(rest[..i].to_owned()), &rest[i + 1..]),
            None => (None, rest),
        };
        if matches!(&user, Some(u) if u.is_empty()) {
            return Err(UriError("empty user part"));
        }
        let mut pieces = hostpart.split(';');
        let hostport = pieces.next().unwrap_or("");
        let (host, port) = split_host_port(hostport)?;
        let params = pieces
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                None => (p.to_owned(), None),
            })
            .collect();
        Ok(Uri {
            scheme,
            user,
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

    /// The address-of-record form `sip:user@host` (no port, parameters or headers), lower-cased host.
    pub fn aor(&self) -> String {
        match (&self.user, self.is_sip()) {
            (Some(u), true) => format!("{}:{}@{}", self.scheme, u, self.host.to_ascii_lowercase()),
            (None, true) => format!("{}:{}", self.scheme, self.host.to_ascii_lowercase()),
            _ => self.to_string(),
        }
    }
}

/// Splits `host[:port]`, with IPv6 references in brackets.
pub fn split_host_port(s: &str) -> Result<(String, Option<u16>), UriError> {
    if s.is_empty() {
        return Err(UriError("empty host"));
    }
    if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']').ok_or(UriError("unclosed IPv6 reference"))?;
        let host = &s[..end + 2];
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().map_err(|_| UriError("bad port"))?),
            None if after.is_empty() => None,
            None => return Err(UriError("junk after IPv6 reference")),
        };
        return Ok((host.to_owned(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) => {
            let port = p.parse().map_err(|_| UriError("bad port"))?;
            check_host(h)?;
            Ok((h.to_owned(), Some(port)))
        }
        None => {
            check_host(s)?;
            Ok((s.to_owned(), None))
        }
    }
}

fn check_host(h: &str) -> Result<(), UriError> {
    if h.is_empty()
        || !h
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    {
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
