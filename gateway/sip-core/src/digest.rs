//! HTTP digest hashing for SIP (RFC 2617 with `qop=auth`, RFC 8760 for SHA-256): the HA1 values
//! the store keeps and the response a phone computes from them.

use md5::Md5;
use sha2::{Digest, Sha256};

/// Digest algorithms csps accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// `MD5`.
    Md5,
    /// `SHA-256` (RFC 8760).
    Sha256,
}

impl Algorithm {
    /// The token used in challenges and credentials.
    pub fn token(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    /// Reads an `algorithm=` token, any case; absent means MD5.
    pub fn from_token(s: &str) -> Option<Algorithm> {
        if s.eq_ignore_ascii_case("MD5") {
            Some(Algorithm::Md5)
        } else if s.eq_ignore_ascii_case("SHA-256") {
            Some(Algorithm::Sha256)
        } else {
            None
        }
    }

    /// Lower-case hex of the hash of `parts` joined by ':'.
    pub fn hash_hex(self, parts: &[&[u8]]) -> String {
        fn run<D: Digest>(parts: &[&[u8]]) -> String {
            let mut d = D::new();
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    d.update(b":");
                }
                d.update(p);
            }
            hex_lower(&d.finalize())
        }
        match self {
            Algorithm::Md5 => run::<Md5>(parts),
            Algorithm::Sha256 => run::<Sha256>(parts),
        }
    }
}

/// HA1 = H(username:realm:password), lower-case hex.
pub fn ha1(alg: Algorithm, username: &str, realm: &str, password: &str) -> String {
    alg.hash_hex(&[username.as_bytes(), realm.as_bytes(), password.as_bytes()])
}

/// The `response=` a client computes for `qop=auth` (RFC 2617 §3.2.2.1, RFC 8760):
/// `H(HA1:nonce:nc:cnonce:qop:H(method:uri))`, lower-case hex. `nc` is the 8-hex-digit count.
#[allow(clippy::too_many_arguments)]
pub fn digest_response(
    alg: Algorithm,
    ha1_hex: &str,
    nonce: &str,
    nc: &str,
    cnonce: &str,
    qop: &str,
    method: &str,
    uri: &str,
) -> String {
    let ha2 = alg.hash_hex(&[method.as_bytes(), uri.as_bytes()]);
    alg.hash_hex(&[
        ha1_hex.as_bytes(),
        nonce.as_bytes(),
        nc.as_bytes(),
        cnonce.as_bytes(),
        qop.as_bytes(),
        ha2.as_bytes(),
    ])
}

/// The value of an `Authorization` header a client sends for `qop=auth` (MD5 or SHA-256), with
/// `nc` formatted as 8 hex digits; `response` is computed from `ha1_hex`.
#[allow(clippy::too_many_arguments)]
pub fn authorization(
    alg: Algorithm,
    username: &str,
    realm: &str,
    ha1_hex: &str,
    nonce: &str,
    nc: u32,
    cnonce: &str,
    method: &str,
    uri: &str,
) -> String {
    let nc = format!("{nc:08x}");
    let response = digest_response(alg, ha1_hex, nonce, &nc, cnonce, "auth", method, uri);
    format!(
        "Digest username=\"{username}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{response}\", algorithm={}, cnonce=\"{cnonce}\", qop=auth, nc={nc}",
        alg.token()
    )
}

/// Checks a received `response=` against the expected one for `qop=auth` without allocating,
/// comparing in constant time (hex case-insensitive). `ha1_hex` may be upper- or lower-case.
#[allow(clippy::too_many_arguments)]
pub fn response_matches(
    alg: Algorithm,
    ha1_hex: &str,
    nonce: &str,
    nc: &str,
    cnonce: &str,
    qop: &str,
    method: &str,
    uri: &str,
    response: &str,
) -> bool {
    let mut ha1_buf = [0u8; 64];
    let ha1 = ha1_hex.as_bytes();
    if ha1.len() > ha1_buf.len() {
        return false;
    }
    for (d, s) in ha1_buf.iter_mut().zip(ha1) {
        *d = s.to_ascii_lowercase();
    }
    let ha1 = &ha1_buf[..ha1.len()];
    let ha2 = raw_hash(alg, &[method.as_bytes(), uri.as_bytes()]);
    let mut ha2_hex = [0u8; 64];
    let ha2_hex = hex_into(ha2.bytes(), &mut ha2_hex);
    let expected = raw_hash(
        alg,
        &[
            ha1,
            nonce.as_bytes(),
            nc.as_bytes(),
            cnonce.as_bytes(),
            qop.as_bytes(),
            ha2_hex,
        ],
    );
    let mut exp_hex = [0u8; 64];
    let exp_hex = hex_into(expected.bytes(), &mut exp_hex);
    let got = response.as_bytes();
    if got.len() != exp_hex.len() {
        return false;
    }
    let mut diff = 0u8;
    for (a, b) in exp_hex.iter().zip(got) {
        diff |= a ^ b.to_ascii_lowercase();
    }
    diff == 0
}

/// A digest held on the stack (up to SHA-256's 32 bytes).
struct Raw {
    buf: [u8; 32],
    len: usize,
}

impl Raw {
    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

fn raw_hash(alg: Algorithm, parts: &[&[u8]]) -> Raw {
    fn run<D: Digest>(parts: &[&[u8]]) -> Raw {
        let mut d = D::new();
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                d.update(b":");
            }
            d.update(p);
        }
        let out = d.finalize();
        let mut raw = Raw {
            buf: [0; 32],
            len: out.len().min(32),
        };
        raw.buf[..raw.len].copy_from_slice(&out[..raw.len]);
        raw
    }
    match alg {
        Algorithm::Md5 => run::<Md5>(parts),
        Algorithm::Sha256 => run::<Sha256>(parts),
    }
}

fn hex_into<'a>(bytes: &[u8], out: &'a mut [u8; 64]) -> &'a [u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().take(32).enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 15) as usize];
    }
    &out[..bytes.len().min(32) * 2]
}

/// The parameters of a `Digest` challenge or credentials header (`WWW-Authenticate`,
/// `Authorization`), borrowed from the header value. Quoted values come without their quotes;
/// backslash escapes inside them are kept as sent (digest values never need them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DigestParams<'a> {
    /// `username`.
    pub username: Option<&'a str>,
    /// `realm`.
    pub realm: Option<&'a str>,
    /// `nonce`.
    pub nonce: Option<&'a str>,
    /// `uri`.
    pub uri: Option<&'a str>,
    /// `response`.
    pub response: Option<&'a str>,
    /// `algorithm` token as sent.
    pub algorithm: Option<&'a str>,
    /// `cnonce`.
    pub cnonce: Option<&'a str>,
    /// `qop` (a list in challenges, one token in credentials).
    pub qop: Option<&'a str>,
    /// `nc`, 8 hex digits.
    pub nc: Option<&'a str>,
    /// `opaque`.
    pub opaque: Option<&'a str>,
    /// `stale`.
    pub stale: Option<&'a str>,
}

impl<'a> DigestParams<'a> {
    /// Parses `Digest k=v, k="v", …`; `None` when the scheme is not Digest or the list is malformed.
    pub fn parse(value: &'a str) -> Option<DigestParams<'a>> {
        let value = value.trim_start();
        let scheme_end = value
            .find(|c: char| c.is_ascii_whitespace())
            .unwrap_or(value.len());
        if !value[..scheme_end].eq_ignore_ascii_case("Digest") {
            return None;
        }
        let mut out = DigestParams::default();
        let mut rest = value[scheme_end..].trim_start();
        while !rest.is_empty() {
            let eq = rest.find('=')?;
            let name = rest[..eq].trim();
            if name.is_empty() || name.contains([',', '"', ' ']) {
                return None;
            }
            let after = rest[eq + 1..].trim_start();
            let (val, tail) = if let Some(q) = after.strip_prefix('"') {
                let b = q.as_bytes();
                let mut i = 0;
                loop {
                    match b.get(i)? {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
                (&q[..i], &q[i + 1..])
            } else {
                let end = after.find(',').unwrap_or(after.len());
                (after[..end].trim_end(), &after[end..])
            };
            const NAMES: [&str; 11] = [
                "username",
                "realm",
                "nonce",
                "uri",
                "response",
                "algorithm",
                "cnonce",
                "qop",
                "nc",
                "opaque",
                "stale",
            ];
            if let Some(i) = NAMES.iter().position(|n| n.eq_ignore_ascii_case(name)) {
                let slot = match i {
                    0 => &mut out.username,
                    1 => &mut out.realm,
                    2 => &mut out.nonce,
                    3 => &mut out.uri,
                    4 => &mut out.response,
                    5 => &mut out.algorithm,
                    6 => &mut out.cnonce,
                    7 => &mut out.qop,
                    8 => &mut out.nc,
                    9 => &mut out.opaque,
                    _ => &mut out.stale,
                };
                *slot = Some(val);
            }
            let tail = tail.trim_start();
            rest = match tail.strip_prefix(',') {
                Some(t) => t.trim_start(),
                None if tail.is_empty() => tail,
                None => return None,
            };
        }
        Some(out)
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2617_style_ha1() {
        // H("Mufasa:testrealm@host.com:Circle Of Life") from RFC 2617 §3.5.
        assert_eq!(
            ha1(
                Algorithm::Md5,
                "Mufasa",
                "testrealm@host.com",
                "Circle Of Life"
            ),
            "939e7578ed9e3c518a452acee763bce9"
        );
    }

    #[test]
    fn rfc2617_response_and_check() {
        // RFC 2617 §3.5 example (qop=auth, method GET).
        let ha1 = ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        let r = digest_response(
            Algorithm::Md5,
            &ha1,
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            "00000001",
            "0a4f113b",
            "auth",
            "GET",
            "/dir/index.html",
        );
        assert_eq!(r, "6629fae49393a05397450978507c4ef1");
        assert!(response_matches(
            Algorithm::Md5,
            &ha1.to_ascii_uppercase(),
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            "00000001",
            "0a4f113b",
            "auth",
            "GET",
            "/dir/index.html",
            "6629FAE49393A05397450978507C4EF1",
        ));
        assert!(!response_matches(
            Algorithm::Md5,
            &ha1,
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            "00000002",
            "0a4f113b",
            "auth",
            "GET",
            "/dir/index.html",
            &r,
        ));
    }

    #[test]
    fn sha256_response_round_trips() {
        let h = ha1(Algorithm::Sha256, "bob", "example.com", "pw");
        let r = digest_response(
            Algorithm::Sha256,
            &h,
            "n",
            "00000001",
            "c",
            "auth",
            "REGISTER",
            "sip:example.com",
        );
        assert_eq!(r.len(), 64);
        assert!(response_matches(
            Algorithm::Sha256,
            &h,
            "n",
            "00000001",
            "c",
            "auth",
            "REGISTER",
            "sip:example.com",
            &r
        ));
    }

    #[test]
    fn params_parse() {
        let v = r#"Digest username="bob", realm="a, b", nonce="xyz",uri="sip:a",response="00",algorithm=SHA-256, qop=auth, nc=00000001, cnonce="q\"x", opaque="""#;
        let p = DigestParams::parse(v).expect("parses");
        assert_eq!(p.username, Some("bob"));
        assert_eq!(p.realm, Some("a, b"));
        assert_eq!(p.algorithm, Some("SHA-256"));
        assert_eq!(p.nc, Some("00000001"));
        assert_eq!(p.cnonce, Some(r#"q\"x"#));
        assert_eq!(p.opaque, Some(""));
        assert!(DigestParams::parse("Basic abc").is_none());
        assert!(DigestParams::parse(r#"Digest realm="unterminated"#).is_none());
        let a = authorization(
            Algorithm::Md5,
            "u",
            "r",
            "h",
            "n",
            3,
            "c",
            "REGISTER",
            "sip:r",
        );
        let p = DigestParams::parse(&a).expect("own output parses");
        assert_eq!(
            (p.nc, p.qop, p.algorithm),
            (Some("00000003"), Some("auth"), Some("MD5"))
        );
    }
}
