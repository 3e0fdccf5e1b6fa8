//! The few SIP pieces the load generator needs: build a REGISTER, read a response, answer a digest;
//! for calls, read any message, build INVITE/ACK/BYE and answers, and a PCMU SDP.

use md5::{Digest, Md5};

/// The parts of a response the generator looks at.
#[derive(Debug)]
pub struct Response<'a> {
    /// The status code.
    pub code: u16,
    /// The Call-ID header value.
    pub call_id: &'a str,
    /// The CSeq number.
    pub cseq: u32,
    /// The WWW-Authenticate (or Proxy-Authenticate) value.
    pub challenge: Option<&'a str>,
}

/// Parses a SIP response; `None` for a request or anything malformed.
pub fn parse_response(msg: &[u8]) -> Option<Response<'_>> {
    let text = std::str::from_utf8(msg).ok()?;
    let head = text.split("\r\n\r\n").next()?;
    let mut lines = head.lines();
    let status = lines.next()?;
    let mut parts = status.splitn(3, ' ');
    if !parts.next()?.starts_with("SIP/2.0") {
        return None;
    }
    let code: u16 = parts.next()?.parse().ok()?;
    let (mut call_id, mut cseq, mut challenge) = (None, None, None);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        let value = value.trim();
        if name.eq_ignore_ascii_case("call-id") || name.eq_ignore_ascii_case("i") {
            call_id = Some(value);
        } else if name.eq_ignore_ascii_case("cseq") {
            cseq = value.split_whitespace().next().and_then(|n| n.parse().ok());
        } else if name.eq_ignore_ascii_case("www-authenticate")
            || name.eq_ignore_ascii_case("proxy-authenticate")
        {
            challenge.get_or_insert(value);
        }
    }
    Some(Response {
        code,
        call_id: call_id?,
        cseq: cseq?,
        challenge,
    })
}

/// A parsed `Digest` challenge.
#[derive(Debug, Default, Clone)]
pub struct Challenge {
    /// `realm`.
    pub realm: String,
    /// `nonce`.
    pub nonce: String,
    /// `opaque`, echoed back when present.
    pub opaque: Option<String>,
    /// True when the server offered `qop=auth`.
    pub qop_auth: bool,
    /// True when the algorithm is MD5 (or absent); anything else is not supported.
    pub md5: bool,
}

/// Parses `Digest realm="…", nonce="…", qop="auth", …`; `None` if not a digest challenge.
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("digest") {
        return None;
    }
    let mut c = Challenge {
        md5: true,
        ..Challenge::default()
    };
    for (k, v) in params(rest) {
        match k.to_ascii_lowercase().as_str() {
            "realm" => c.realm = v.to_string(),
            "nonce" => c.nonce = v.to_string(),
            "opaque" => c.opaque = Some(v.to_string()),
            "qop" => c.qop_auth = v.split(',').any(|q| q.trim().eq_ignore_ascii_case("auth")),
            "algorithm" => c.md5 = v.eq_ignore_ascii_case("md5"),
            _ => {}
        }
    }
    (!c.nonce.is_empty()).then_some(c)
}

/// Splits `a="x, y", b=z` into pairs, honouring quotes.
fn params(s: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq].trim().trim_start_matches(',').trim();
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(r) = rest.strip_prefix('"') {
            let end = r.find('"').unwrap_or(r.len());
            value = &r[..end];
            rest = r.get(end + 1..).unwrap_or("");
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim();
            rest = &rest[end..];
        }
        rest = rest.trim_start().trim_start_matches(',').trim_start();
        out.push((key, value));
    }
    out
}

/// Lower-case hex MD5 of `s`.
pub fn md5_hex(s: &str) -> String {
    let d = Md5::digest(s.as_bytes());
    let mut out = String::with_capacity(32);
    for b in d {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

/// The `Authorization` header value answering `c` for a REGISTER to `uri` (RFC 2617 §3.2.2).
pub fn authorization(c: &Challenge, user: &str, password: &str, uri: &str, cnonce: &str) -> String {
    let ha1 = md5_hex(&format!("{user}:{}:{password}", c.realm));
    let ha2 = md5_hex(&format!("REGISTER:{uri}"));
    let nc = "00000001";
    let mut h = if c.qop_auth {
        let resp = md5_hex(&format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", c.nonce));
        format!(
            "Digest username=\"{user}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", response=\"{resp}\", algorithm=MD5, cnonce=\"{cnonce}\", qop=auth, nc={nc}",
            c.realm, c.nonce
        )
    } else {
        let resp = md5_hex(&format!("{ha1}:{}:{ha2}", c.nonce));
        format!(
            "Digest username=\"{user}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", response=\"{resp}\", algorithm=MD5",
            c.realm, c.nonce
        )
    };
    if let Some(o) = &c.opaque {
        h.push_str(&format!(", opaque=\"{o}\""));
    }
    h
}

/// What goes into one REGISTER.
pub struct Register<'a> {
    /// The user part of the AoR.
    pub user: &'a str,
    /// The domain (request URI and AoR host).
    pub domain: &'a str,
    /// Our address for Via and Contact.
    pub local: std::net::SocketAddr,
    /// Unique per transaction.
    pub branch: &'a str,
    /// The Call-ID.
    pub call_id: &'a str,
    /// The From tag.
    pub tag: &'a str,
    /// The CSeq number.
    pub cseq: u32,
    /// The Expires value.
    pub expires: u32,
    /// The Authorization header value, if answering a challenge.
    pub authorization: Option<&'a str>,
}

impl Register<'_> {
    /// The wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let Register {
            user,
            domain,
            local,
            branch,
            call_id,
            tag,
            cseq,
            expires,
            authorization,
        } = self;
        let mut m = format!(
            "REGISTER sip:{domain} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{user}@{domain}>;tag={tag}\r\n\
             To: <sip:{user}@{domain}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} REGISTER\r\n\
             Contact: <sip:{user}@{local}>\r\n\
             Expires: {expires}\r\n"
        );
        if let Some(a) = authorization {
            m.push_str("Authorization: ");
            m.push_str(a);
            m.push_str("\r\n");
        }
        m.push_str("User-Agent: csps-loadgen\r\nContent-Length: 0\r\n\r\n");
        m.into_bytes()
    }
}

/// Any SIP message, with the header lines a call's two ends need to answer it or follow up.
#[derive(Debug)]
pub struct Message<'a> {
    /// The method of a request; `None` for a response.
    pub method: Option<&'a str>,
    /// The Request-URI of a request.
    pub uri: &'a str,
    /// The status code of a response (0 for a request).
    pub code: u16,
    /// Every Via line, whole (`Via: …`), in order: a response copies them.
    pub vias: Vec<&'a str>,
    /// The From header value.
    pub from: &'a str,
    /// The To header value.
    pub to: &'a str,
    /// The Call-ID.
    pub call_id: &'a str,
    /// The CSeq number.
    pub cseq: u32,
    /// The CSeq method.
    pub cseq_method: &'a str,
    /// The URI inside the Contact header, if any.
    pub contact: Option<&'a str>,
    /// The body.
    pub body: &'a str,
}

/// Parses a request or a response; `None` when a header a dialog needs is missing or unreadable.
pub fn parse_message(msg: &[u8]) -> Option<Message<'_>> {
    let text = std::str::from_utf8(msg).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let first = lines.next()?;
    let mut parts = first.splitn(3, ' ');
    let (a, b) = (parts.next()?, parts.next()?);
    let (method, uri, code) = if a.starts_with("SIP/2.0") {
        (None, "", b.parse().ok()?)
    } else {
        (Some(a), b, 0)
    };
    let mut m = Message {
        method,
        uri,
        code,
        vias: Vec::new(),
        from: "",
        to: "",
        call_id: "",
        cseq: 0,
        cseq_method: "",
        contact: None,
        body,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "via" | "v" => m.vias.push(line),
            "from" | "f" => m.from = value,
            "to" | "t" => m.to = value,
            "call-id" | "i" => m.call_id = value,
            "cseq" => {
                let mut it = value.split_whitespace();
                m.cseq = it.next()?.parse().ok()?;
                m.cseq_method = it.next()?;
            }
            "contact" | "m" => {
                m.contact = value
                    .split_once('<')
                    .and_then(|(_, r)| r.split_once('>'))
                    .map(|(u, _)| u)
                    .or(Some(value));
            }
            _ => {}
        }
    }
    (!m.call_id.is_empty() && !m.from.is_empty() && !m.to.is_empty() && m.cseq != 0).then_some(m)
}

impl Message<'_> {
    /// The user part of the Request-URI (`sip:user@host` → `user`).
    pub fn uri_user(&self) -> Option<&str> {
        let rest = self.uri.strip_prefix("sip:")?;
        rest.split_once('@').map(|(u, _)| u)
    }

    /// The master key and salt of the SDP body's first `a=crypto` line in
    /// AES_CM_128_HMAC_SHA1_80 (RFC 4568), if it has one.
    pub fn sdp_crypto(&self) -> Option<[u8; 30]> {
        use base64::Engine;
        self.body
            .lines()
            .filter_map(|l| l.trim().strip_prefix("a=crypto:"))
            .filter_map(csps_sip::sdp::Crypto::parse)
            .find(|c| c.suite == SRTP_SUITE)
            .and_then(|c| {
                base64::engine::general_purpose::STANDARD
                    .decode(c.key)
                    .ok()?
                    .try_into()
                    .ok()
            })
    }

    /// The audio address of the SDP body (`c=` address, `m=audio` port).
    pub fn sdp_audio(&self) -> Option<std::net::SocketAddr> {
        let mut ip = None;
        let mut port = None;
        for l in self.body.lines() {
            if let Some(c) = l
                .strip_prefix("c=IN IP4 ")
                .or_else(|| l.strip_prefix("c=IN IP6 "))
            {
                ip = c.trim().parse::<std::net::IpAddr>().ok();
            } else if let Some(m) = l.strip_prefix("m=audio ") {
                port = m
                    .split_whitespace()
                    .next()
                    .and_then(|p| p.parse::<u16>().ok());
            }
        }
        Some(std::net::SocketAddr::new(ip?, port?))
    }

    /// A response to this request: its Vias, From, To (with `to_tag` added when given),
    /// Call-ID and CSeq, then `extra` header lines (each ending in CRLF) and `body`.
    pub fn respond(&self, status: &str, to_tag: Option<&str>, extra: &str, body: &str) -> Vec<u8> {
        let mut r = format!("SIP/2.0 {status}\r\n");
        for v in &self.vias {
            r.push_str(v);
            r.push_str("\r\n");
        }
        let tag = match to_tag {
            Some(t) if !self.to.contains(";tag=") => format!(";tag={t}"),
            _ => String::new(),
        };
        r.push_str(&format!(
            "From: {}\r\nTo: {}{tag}\r\nCall-ID: {}\r\nCSeq: {} {}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            self.from,
            self.to,
            self.call_id,
            self.cseq,
            self.cseq_method,
            body.len()
        ));
        r.into_bytes()
    }
}

/// A G.711 µ-law SDP offer or answer for one audio stream at `media`, 20 ms packets.
pub fn pcmu_sdp(session: u64, media: std::net::SocketAddr) -> String {
    sdp(session, media, (0, "PCMU/8000"))
}

/// The SRTP suite SRTP calls offer and answer.
pub const SRTP_SUITE: &str = "AES_CM_128_HMAC_SHA1_80";

/// `sdp` made an SRTP offer or answer (RFC 4568): `RTP/SAVP` and one `a=crypto` line with
/// `key` (master key and salt).
pub fn with_crypto(sdp: &str, key: &[u8; 30]) -> String {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.encode(key);
    format!(
        "{}a=crypto:1 {SRTP_SUITE} inline:{key}\r\n",
        sdp.replace(" RTP/AVP ", " RTP/SAVP ")
    )
}

/// An SDP offer or answer for one audio stream at `media` in one codec (payload type and
/// rtpmap), 20 ms packets.
pub fn sdp(session: u64, media: std::net::SocketAddr, (pt, map): (u8, &str)) -> String {
    let (ip, fam) = match media.ip() {
        std::net::IpAddr::V4(ip) => (ip.to_string(), "IP4"),
        std::net::IpAddr::V6(ip) => (ip.to_string(), "IP6"),
    };
    format!(
        "v=0\r\no=- {session} 1 IN {fam} {ip}\r\ns=-\r\nc=IN {fam} {ip}\r\nt=0 0\r\n\
         m=audio {} RTP/AVP {pt}\r\na=rtpmap:{pt} {map}\r\na=ptime:20\r\n",
        media.port()
    )
}

/// What goes into a request a caller sends inside (or to start) its dialog.
pub struct Request<'a> {
    /// INVITE, ACK or BYE.
    pub method: &'a str,
    /// The Request-URI.
    pub uri: &'a str,
    /// Our address for Via and Contact.
    pub local: std::net::SocketAddr,
    /// Unique per transaction (an ACK for a 2xx gets its own).
    pub branch: &'a str,
    /// The From header value (with our tag).
    pub from: &'a str,
    /// The To header value (with the peer's tag inside the dialog).
    pub to: &'a str,
    /// The Call-ID.
    pub call_id: &'a str,
    /// The CSeq number.
    pub cseq: u32,
    /// The user part for our Contact.
    pub user: &'a str,
    /// The SDP body, if any.
    pub sdp: Option<&'a str>,
}

impl Request<'_> {
    /// The wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let Request {
            method,
            uri,
            local,
            branch,
            from,
            to,
            call_id,
            cseq,
            user,
            sdp,
        } = self;
        let mut m = format!(
            "{method} {uri} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: {from}\r\n\
             To: {to}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} {method}\r\n\
             Contact: <sip:{user}@{local}>\r\n\
             User-Agent: csps-loadgen\r\n"
        );
        match sdp {
            Some(b) => m.push_str(&format!(
                "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            )),
            None => m.push_str("Content-Length: 0\r\n\r\n"),
        }
        m.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2617_example_response() {
        // RFC 2617 §3.5 (HTTP, but the digest arithmetic is the same).
        let c = Challenge {
            realm: "testrealm@host.com".into(),
            nonce: "dcd98b7102dd2f0e8b11d0f600bfb0c093".into(),
            opaque: None,
            qop_auth: true,
            md5: true,
        };
        let ha1 = md5_hex("Mufasa:testrealm@host.com:Circle Of Life");
        let ha2 = md5_hex("GET:/dir/index.html");
        let resp = md5_hex(&format!("{ha1}:{}:00000001:0a4f113b:auth:{ha2}", c.nonce));
        assert_eq!(resp, "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn parses_challenge_and_response() {
        let msg = b"SIP/2.0 401 Unauthorized\r\nVia: x\r\nCall-ID: 1-2-3@lg\r\nCSeq: 1 REGISTER\r\nWWW-Authenticate: Digest realm=\"csps.local\", nonce=\"ab,c\", qop=\"auth,auth-int\", opaque=\"o\"\r\nContent-Length: 0\r\n\r\n";
        let r = parse_response(msg).expect("a response");
        assert_eq!((r.code, r.call_id, r.cseq), (401, "1-2-3@lg", 1));
        let c = parse_challenge(r.challenge.expect("challenge")).expect("digest");
        assert_eq!((c.realm.as_str(), c.nonce.as_str()), ("csps.local", "ab,c"));
        assert!(c.qop_auth && c.md5);
        assert_eq!(c.opaque.as_deref(), Some("o"));
        assert!(parse_response(b"REGISTER sip:x SIP/2.0\r\n\r\n").is_none());
        assert!(parse_response(b"SIP/2.0 abc\r\n\r\n").is_none());
        assert!(parse_response(&[0xff, 0xfe]).is_none());
    }
}
