//! SDP (RFC 4566) parsing and building, and the offer/answer rules of RFC 3264 a relaying B2BUA
//! needs: which codecs two sides share, the direction of each stream, and SDES `a=crypto` lines
//! (RFC 4568, kept for SRTP). Hand-written and tolerant of what phones really send (`\n` line ends,
//! trailing blanks, unknown lines and attributes are kept and written back unchanged); anything it
//! cannot make sense of is an [`SdpError`] naming the line, never a panic.
//!
//! ```
//! use csps_sip::sdp::{Codec, Sdp};
//! let offer = Sdp::parse(b"v=0\r\no=- 1 1 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\n\
//!     t=0 0\r\nm=audio 4000 RTP/AVP 9 0 101\r\na=rtpmap:101 telephone-event/8000\r\n").unwrap();
//! let audio = offer.audio().unwrap();
//! assert_eq!(audio.codecs().map(|c| c.codec).collect::<Vec<_>>(),
//!            [Codec::G722, Codec::Pcmu, Codec::TelephoneEvent]);
//! assert_eq!(offer.rtp_addr(0).unwrap().to_string(), "192.0.2.7:4000");
//! ```

use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};

/// Most m= lines accepted (a phone offers one or two; a bound keeps hostile bodies cheap).
pub const MAX_MEDIA: usize = 16;
/// Most lines accepted in one body.
pub const MAX_LINES: usize = 512;

/// Why a body is not usable SDP.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdpError {
    /// The body is not UTF-8.
    #[error("SDP is not UTF-8")]
    NotUtf8,
    /// A line is not `x=value` or its value cannot be read.
    #[error("SDP line {line}: {why}")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: &'static str,
    },
    /// A required line is missing.
    #[error("SDP has no {0} line")]
    Missing(&'static str),
    /// Too many lines or m= lines.
    #[error("SDP too large")]
    TooLarge,
}

/// The codecs the gateway knows by name (RFC 3551 static payload types included).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Codec {
    /// G.711 µ-law, `PCMU/8000`, static type 0.
    Pcmu,
    /// G.711 A-law, `PCMA/8000`, static type 8.
    Pcma,
    /// G.722, `G722/8000` in SDP though it samples at 16 kHz (RFC 3551 §4.5.2), static type 9.
    G722,
    /// Opus, always `opus/48000/2` in SDP (RFC 7587).
    Opus,
    /// RFC 4733 DTMF events, `telephone-event/8000` (or /48000 beside Opus).
    TelephoneEvent,
    /// Anything else (kept in offers only when the other side may know it).
    Other,
}

impl Codec {
    /// The encoding name as SDP writes it.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::G722 => "G722",
            Codec::Opus => "opus",
            Codec::TelephoneEvent => "telephone-event",
            Codec::Other => "?",
        }
    }

    fn from_name(name: &str) -> Codec {
        [
            Codec::Pcmu,
            Codec::Pcma,
            Codec::G722,
            Codec::Opus,
            Codec::TelephoneEvent,
        ]
        .into_iter()
        .find(|c| c.name().eq_ignore_ascii_case(name))
        .unwrap_or(Codec::Other)
    }

    /// The codec of a static payload type without rtpmap (RFC 3551 table 4).
    fn from_static(pt: u8) -> Codec {
        match pt {
            0 => Codec::Pcmu,
            8 => Codec::Pcma,
            9 => Codec::G722,
            _ => Codec::Other,
        }
    }

    /// True for codecs that carry audio (telephone-event does not).
    pub fn is_audio(self) -> bool {
        !matches!(self, Codec::TelephoneEvent | Codec::Other)
    }
}

/// What the relay supports today: every codec it can pass through unchanged.
pub const SUPPORTED: &[Codec] = &[
    Codec::Opus,
    Codec::G722,
    Codec::Pcmu,
    Codec::Pcma,
    Codec::TelephoneEvent,
];

/// One payload format of an m= line with its rtpmap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Format {
    /// RTP payload type.
    pub pt: u8,
    /// The codec it names.
    pub codec: Codec,
    /// Clock rate from the rtpmap (or the static table).
    pub clock: u32,
    /// The `maxaveragebitrate` of the format's `fmtp` (RFC 7587 §6.1: the most, in bit/s, the
    /// receiver wants to get of Opus), when it names one.
    pub max_average_bitrate: Option<u32>,
}

/// Stream direction (RFC 3264 §5.1, RFC 4566 §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Direction {
    /// Both ways (the default when no attribute says otherwise).
    #[default]
    SendRecv,
    /// The writer only sends.
    SendOnly,
    /// The writer only receives.
    RecvOnly,
    /// Neither.
    Inactive,
}

impl Direction {
    /// The attribute name.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    fn from_attr(name: &str) -> Option<Direction> {
        Some(match name {
            "sendrecv" => Direction::SendRecv,
            "sendonly" => Direction::SendOnly,
            "recvonly" => Direction::RecvOnly,
            "inactive" => Direction::Inactive,
            _ => return None,
        })
    }

    /// The direction an answer takes to this offered one (RFC 3264 §6.1).
    pub fn answer(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            d => d,
        }
    }
}

/// An SDES crypto attribute (RFC 4568 §9.1): `a=crypto:<tag> <suite> inline:<key>[|lifetime][|MKI:len] ...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crypto {
    /// The tag.
    pub tag: u32,
    /// The crypto suite, e.g. `AES_CM_128_HMAC_SHA1_80`.
    pub suite: String,
    /// The base64 master key and salt.
    pub key: String,
    /// The lifetime (`2^31` or a number), when given.
    pub lifetime: Option<String>,
    /// MKI value and length, when given.
    pub mki: Option<(u32, u8)>,
    /// Session parameters after the key.
    pub params: Vec<String>,
}

impl Crypto {
    /// Parses the value after `crypto:`.
    pub fn parse(v: &str) -> Option<Crypto> {
        let mut parts = v.split_ascii_whitespace();
        let tag = parts.next()?.parse().ok()?;
        let suite = parts.next()?.to_owned();
        let key_params = parts.next()?;
        // Several key params may follow, ';'-separated; the first is the one used.
        let first = key_params.split(';').next()?;
        let inline = first.strip_prefix("inline:")?;
        let mut fields = inline.split('|');
        let key = fields.next().filter(|k| !k.is_empty())?.to_owned();
        let mut lifetime = None;
        let mut mki = None;
        for f in fields {
            if let Some((v, len)) = f.split_once(':') {
                mki = Some((v.parse().ok()?, len.parse().ok()?));
            } else {
                lifetime = Some(f.to_owned());
            }
        }
        Some(Crypto {
            tag,
            suite,
            key,
            lifetime,
            mki,
            params: parts.map(str::to_owned).collect(),
        })
    }
}

/// `c=IN IP4 <addr>` (multicast TTL suffixes are dropped: phones do not use them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection(pub IpAddr);

impl Connection {
    fn parse(v: &str) -> Option<Connection> {
        let mut it = v.split_ascii_whitespace();
        if it.next()? != "IN" {
            return None;
        }
        let family = it.next()?;
        let addr = it.next()?.split('/').next()?;
        let ip: IpAddr = addr.parse().ok()?;
        match (family, ip) {
            ("IP4", IpAddr::V4(_)) | ("IP6", IpAddr::V6(_)) => Some(Connection(ip)),
            _ => None,
        }
    }
}

impl fmt::Display for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(a) => write!(f, "IN IP4 {a}"),
            IpAddr::V6(a) => write!(f, "IN IP6 {a}"),
        }
    }
}

/// One `a=` line: name and optional value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribute {
    /// The name (before `:`).
    pub name: String,
    /// The value (after `:`), if any.
    pub value: Option<String>,
}

impl Attribute {
    fn parse(v: &str) -> Attribute {
        match v.split_once(':') {
            Some((n, val)) => Attribute {
                name: n.to_owned(),
                value: Some(val.to_owned()),
            },
            None => Attribute {
                name: v.to_owned(),
                value: None,
            },
        }
    }
}

/// One m= section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Media {
    /// `audio`, `video`, …
    pub kind: String,
    /// The port (0: stream rejected or disabled).
    pub port: u16,
    /// The transport, e.g. `RTP/AVP`, `RTP/SAVP`.
    pub proto: String,
    /// Payload formats in order of preference.
    pub formats: Vec<String>,
    /// Media-level `c=`.
    pub connection: Option<Connection>,
    /// `a=` lines in order.
    pub attributes: Vec<Attribute>,
    /// Other lines (`i=`, `b=`, `k=`) kept as written.
    pub other: Vec<(char, String)>,
}

impl Media {
    fn attr<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.attributes
            .iter()
            .filter(move |a| a.name.eq_ignore_ascii_case(name))
            .filter_map(|a| a.value.as_deref())
    }

    /// The formats with the codec each names; formats that are not numbers are skipped.
    pub fn codecs(&self) -> impl Iterator<Item = Format> + '_ {
        self.formats.iter().filter_map(move |f| {
            let pt: u8 = f.parse().ok()?;
            let mapped = self.format_attrs("rtpmap", pt).find_map(|enc| {
                let mut it = enc.trim().split('/');
                let name = it.next()?;
                let clock = it.next().and_then(|c| c.parse().ok()).unwrap_or(8000);
                Some((Codec::from_name(name), clock))
            });
            let (codec, clock) = mapped.unwrap_or_else(|| (Codec::from_static(pt), 8000));
            Some(Format {
                pt,
                codec,
                clock,
                max_average_bitrate: self.fmtp_param(pt, "maxaveragebitrate"),
            })
        })
    }

    /// What follows the payload type in each `name` line of format `pt` (`a=rtpmap:111
    /// opus/48000/2` → `opus/48000/2`).
    fn format_attrs<'a>(&'a self, name: &'a str, pt: u8) -> impl Iterator<Item = &'a str> + 'a {
        self.attr(name).filter_map(move |v| {
            let (p, rest) = v.split_once(' ')?;
            (p.trim().parse::<u8>().ok()? == pt).then_some(rest)
        })
    }

    /// The numeric parameter `key` of format `pt`'s `fmtp` line (`a=fmtp:111 a=1;b=2`), if any.
    fn fmtp_param(&self, pt: u8, key: &str) -> Option<u32> {
        self.format_attrs("fmtp", pt).find_map(|params| {
            params.split(';').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                if !k.trim().eq_ignore_ascii_case(key) {
                    return None;
                }
                v.trim().parse().ok()
            })
        })
    }

    /// The direction attribute of this section (or `session`'s when it has none).
    pub fn direction(&self, session: Direction) -> Direction {
        self.attributes
            .iter()
            .find_map(|a| Direction::from_attr(&a.name))
            .unwrap_or(session)
    }

    /// Sets the direction attribute (replacing any).
    pub fn set_direction(&mut self, d: Direction) {
        self.attributes
            .retain(|a| Direction::from_attr(&a.name).is_none());
        self.attributes.push(Attribute {
            name: d.as_str().to_owned(),
            value: None,
        });
    }

    /// The SDES crypto lines that could be read.
    pub fn crypto(&self) -> Vec<Crypto> {
        self.attr("crypto").filter_map(Crypto::parse).collect()
    }

    /// Keeps only the formats `keep` accepts, with their `rtpmap`/`fmtp`/`rtcp-fb` lines.
    pub fn retain_formats(&mut self, mut keep: impl FnMut(&Format) -> bool) {
        let kept: Vec<u8> = self.codecs().filter(|f| keep(f)).map(|f| f.pt).collect();
        self.formats
            .retain(|f| f.parse::<u8>().is_ok_and(|pt| kept.contains(&pt)));
        self.attributes.retain(|a| {
            if !matches!(a.name.as_str(), "rtpmap" | "fmtp" | "rtcp-fb") {
                return true;
            }
            let pt = a
                .value
                .as_deref()
                .and_then(|v| v.split(' ').next())
                .and_then(|p| p.parse::<u8>().ok());
            pt.is_none_or(|pt| kept.contains(&pt))
        });
    }

    /// Appends `codec` as the least preferred format: its static payload type when it has one
    /// and it is free, else a free dynamic type (96–127) with an `rtpmap`. Returns the type, or
    /// `None` when every dynamic type is taken or the codec has no SDP name.
    pub fn add_codec(&mut self, codec: Codec) -> Option<u8> {
        let used: Vec<u8> = self.formats.iter().filter_map(|f| f.parse().ok()).collect();
        let (stat, map) = match codec {
            Codec::Pcmu => (Some(0), "PCMU/8000"),
            Codec::Pcma => (Some(8), "PCMA/8000"),
            Codec::G722 => (Some(9), "G722/8000"),
            Codec::Opus => (None, "opus/48000/2"),
            Codec::TelephoneEvent => (None, "telephone-event/8000"),
            Codec::Other => return None,
        };
        let pt = stat
            .filter(|p| !used.contains(p))
            // 111 is where most phones and browsers put Opus; any free type will do.
            .or_else(|| {
                std::iter::once(111)
                    .chain(96..=127)
                    .find(|p| !used.contains(p))
            })?;
        self.formats.push(pt.to_string());
        self.attributes.push(Attribute {
            name: "rtpmap".to_owned(),
            value: Some(format!("{pt} {map}")),
        });
        Some(pt)
    }

    /// Replaces the formats with `formats` (payload types of `from`, in order), with `from`'s
    /// `rtpmap`, `fmtp` and `rtcp-fb` lines for them: the answer a B2BUA gives in another leg's
    /// codec.
    pub fn set_formats_from(&mut self, from: &Media, formats: &[u8]) {
        let per_format = |a: &Attribute| matches!(a.name.as_str(), "rtpmap" | "fmtp" | "rtcp-fb");
        self.attributes.retain(|a| !per_format(a));
        self.formats = formats.iter().map(u8::to_string).collect();
        self.attributes.extend(
            from.attributes
                .iter()
                .filter(|a| per_format(a))
                .filter(|a| {
                    a.value
                        .as_deref()
                        .and_then(|v| v.split(' ').next())
                        .and_then(|p| p.parse::<u8>().ok())
                        .is_some_and(|p| formats.contains(&p))
                })
                .cloned(),
        );
    }

    /// Drops attributes by name (e.g. `rtcp`, `crypto` when the address or keys change).
    pub fn remove_attr(&mut self, name: &str) {
        self.attributes
            .retain(|a| !a.name.eq_ignore_ascii_case(name));
    }
}

/// A session description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sdp {
    /// `o=` fields: username, session id, version, then the address part kept as written.
    pub origin: Origin,
    /// `s=`.
    pub name: String,
    /// Session-level `c=`.
    pub connection: Option<Connection>,
    /// Session-level `a=` lines.
    pub attributes: Vec<Attribute>,
    /// Other session lines (`i=`, `u=`, `e=`, `p=`, `b=`, `t=`, `r=`, `z=`, `k=`) as written.
    pub other: Vec<(char, String)>,
    /// The m= sections.
    pub media: Vec<Media>,
}

/// `o=<username> <sess-id> <sess-version> IN IP4 <address>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// Username (`-` when none).
    pub username: String,
    /// Session id.
    pub session_id: String,
    /// Session version, raised by one with each changed offer or answer (RFC 3264 §8).
    pub version: u64,
    /// Network type, address type and address.
    pub address: String,
}

impl Origin {
    fn parse(v: &str) -> Option<Origin> {
        let mut it = v.split_ascii_whitespace();
        let username = it.next()?.to_owned();
        let session_id = it.next()?.to_owned();
        let version = it.next()?.parse().ok()?;
        let address: Vec<&str> = it.collect();
        if address.len() != 3 {
            return None;
        }
        Some(Origin {
            username,
            session_id,
            version,
            address: address.join(" "),
        })
    }
}

impl Sdp {
    /// Parses a body.
    pub fn parse(body: &[u8]) -> Result<Sdp, SdpError> {
        let text = std::str::from_utf8(body).map_err(|_| SdpError::NotUtf8)?;
        let mut origin = None;
        let mut name = None;
        let mut connection = None;
        let mut attributes = Vec::new();
        let mut other = Vec::new();
        let mut media: Vec<Media> = Vec::new();
        let mut seen_version = false;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            if line > MAX_LINES {
                return Err(SdpError::TooLarge);
            }
            let raw = raw.trim_end();
            if raw.is_empty() {
                continue;
            }
            let bad = |why| SdpError::BadLine { line, why };
            let (kind, value) = raw.split_once('=').ok_or(bad("not type=value"))?;
            let mut k = kind.chars();
            let (Some(kind), None) = (k.next(), k.next()) else {
                return Err(bad("type is not one letter"));
            };
            if !seen_version {
                if kind != 'v' {
                    return Err(bad("does not start with v="));
                }
                if value.trim() != "0" {
                    return Err(bad("version is not 0"));
                }
                seen_version = true;
                continue;
            }
            match (kind, media.last_mut()) {
                ('v', _) => return Err(bad("second v= line")),
                ('m', _) => {
                    if media.len() == MAX_MEDIA {
                        return Err(SdpError::TooLarge);
                    }
                    media.push(parse_media(value).ok_or(bad("bad m= line"))?);
                }
                ('c', m) => {
                    let c = Connection::parse(value).ok_or(bad("bad c= line"))?;
                    match m {
                        Some(m) => m.connection = Some(c),
                        None => connection = Some(c),
                    }
                }
                ('a', Some(m)) => m.attributes.push(Attribute::parse(value)),
                ('a', None) => attributes.push(Attribute::parse(value)),
                ('o', None) => origin = Some(Origin::parse(value).ok_or(bad("bad o= line"))?),
                ('s', None) => name = Some(value.to_owned()),
                (k, Some(m)) if "ibk".contains(k) => m.other.push((k, value.to_owned())),
                (k, None) if "iuepbtrzk".contains(k) => other.push((k, value.to_owned())),
                (k, _) if k.is_ascii_lowercase() => return Err(bad("line type out of place")),
                _ => return Err(bad("unknown line type")),
            }
        }
        if !seen_version {
            return Err(SdpError::Missing("v="));
        }
        // RFC 4566 requires t=; phones that omit it mean a permanent session.
        if !other.iter().any(|(k, _)| *k == 't') {
            other.push(('t', "0 0".to_owned()));
        }
        // Kept in the order we write them (RFC 4566: i u e p before c, the rest after; i first in
        // a media section), so what we write parses back to the same description. The sorts are
        // stable: t= keeps its r= lines.
        other.sort_by_key(|(k, _)| !"iuep".contains(*k));
        for m in &mut media {
            m.other.sort_by_key(|(k, _)| *k != 'i');
        }
        Ok(Sdp {
            origin: origin.ok_or(SdpError::Missing("o="))?,
            // Some phones omit s=; RFC 4566 wants it, and `-` is what we would write.
            name: name.unwrap_or_else(|| "-".to_owned()),
            connection,
            attributes,
            other,
            media,
        })
    }

    /// The first audio section with a non-zero port, if any.
    pub fn audio(&self) -> Option<&Media> {
        self.media.iter().find(|m| m.kind == "audio" && m.port != 0)
    }

    /// Index of the first audio section with a non-zero port.
    pub fn audio_index(&self) -> Option<usize> {
        self.media
            .iter()
            .position(|m| m.kind == "audio" && m.port != 0)
    }

    /// The session-level direction attribute (sendrecv when none).
    pub fn session_direction(&self) -> Direction {
        self.attributes
            .iter()
            .find_map(|a| Direction::from_attr(&a.name))
            .unwrap_or_default()
    }

    /// Where section `i` wants its RTP: its own `c=` or the session's, and its port.
    pub fn rtp_addr(&self, i: usize) -> Option<SocketAddr> {
        let m = self.media.get(i)?;
        let c = m.connection.or(self.connection)?;
        Some(SocketAddr::new(c.0, m.port))
    }

    /// Writes the description in wire form (`\r\n` line ends).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }
}

fn parse_media(v: &str) -> Option<Media> {
    let mut it = v.split_ascii_whitespace();
    let kind = it.next()?.to_owned();
    // `<port>/<count>`: the count is for hierarchical encodings nobody uses with phones.
    let port = it.next()?.split('/').next()?.parse().ok()?;
    let proto = it.next()?.to_owned();
    let formats: Vec<String> = it.map(str::to_owned).collect();
    if formats.is_empty() || formats.len() > 64 {
        return None;
    }
    Some(Media {
        kind,
        port,
        proto,
        formats,
        connection: None,
        attributes: Vec::new(),
        other: Vec::new(),
    })
}

fn write_attrs(f: &mut String, attrs: &[Attribute]) {
    for a in attrs {
        let _ = match &a.value {
            Some(v) => write!(f, "a={}:{v}\r\n", a.name),
            None => write!(f, "a={}\r\n", a.name),
        };
    }
}

impl fmt::Display for Sdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(512);
        let o = &self.origin;
        let _ = write!(
            s,
            "v=0\r\no={} {} {} {}\r\ns={}\r\n",
            o.username, o.session_id, o.version, o.address, self.name
        );
        // RFC 4566 order: i u e p c b t r z k a, then media.
        for (k, v) in self.other.iter().filter(|(k, _)| "iuep".contains(*k)) {
            let _ = write!(s, "{k}={v}\r\n");
        }
        if let Some(c) = self.connection {
            let _ = write!(s, "c={c}\r\n");
        }
        for (k, v) in self.other.iter().filter(|(k, _)| "btrzk".contains(*k)) {
            let _ = write!(s, "{k}={v}\r\n");
        }
        write_attrs(&mut s, &self.attributes);
        for m in &self.media {
            let _ = write!(
                s,
                "m={} {} {} {}\r\n",
                m.kind,
                m.port,
                m.proto,
                m.formats.join(" ")
            );
            for (k, v) in m.other.iter().filter(|(k, _)| *k == 'i') {
                let _ = write!(s, "{k}={v}\r\n");
            }
            if let Some(c) = m.connection {
                let _ = write!(s, "c={c}\r\n");
            }
            for (k, v) in m.other.iter().filter(|(k, _)| *k != 'i') {
                let _ = write!(s, "{k}={v}\r\n");
            }
            write_attrs(&mut s, &m.attributes);
        }
        f.write_str(&s)
    }
}

/// Why an offer cannot be accepted (488).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OfferError {
    /// No audio section with a non-zero port.
    #[error("no audio stream offered")]
    NoAudio,
    /// No audio codec in common with `supported`.
    #[error("no common codec; supported: {0}")]
    NoCommonCodec(String),
    /// The audio section has no connection address.
    #[error("audio stream without c= address")]
    NoAddress,
    /// The SRTP the offer or answer asks for (or lacks) is not what this leg allows.
    #[error("{0}")]
    Srtp(&'static str),
}

impl OfferError {
    /// The SIP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            OfferError::NoAddress => 400,
            _ => 488,
        }
    }
}

/// The `supported` codecs as a Warning text lists them, e.g. `opus/48000 G722/8000 …`.
pub fn codec_list(supported: &[Codec]) -> String {
    supported
        .iter()
        .map(|c| match c {
            Codec::Opus => "opus/48000/2",
            Codec::G722 => "G722/8000",
            Codec::Pcmu => "PCMU/8000",
            Codec::Pcma => "PCMA/8000",
            Codec::TelephoneEvent => "telephone-event/8000",
            Codec::Other => "?",
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Prepares `offer` for relaying without transcoding (RFC 3264 §5 for the offer sent onwards):
/// the first audio stream keeps only the formats in `supported` (at least one of them audio),
/// every other stream is disabled (port 0), since only audio is relayed. Returns the index of the
/// audio section.
pub fn restrict_offer(offer: &mut Sdp, supported: &[Codec]) -> Result<usize, OfferError> {
    let idx = offer.audio_index().ok_or(OfferError::NoAudio)?;
    if offer.rtp_addr(idx).is_none() {
        return Err(OfferError::NoAddress);
    }
    let m = &mut offer.media[idx];
    m.retain_formats(|f| supported.contains(&f.codec));
    if !m.codecs().any(|f| f.codec.is_audio()) {
        return Err(OfferError::NoCommonCodec(codec_list(supported)));
    }
    for (i, m) in offer.media.iter_mut().enumerate() {
        if i != idx {
            m.port = 0;
        }
    }
    Ok(idx)
}

/// Checks an answer against the offer it answers (RFC 3264 §6): as many sections, and the audio
/// section's formats all offered; returns the audio section's index when audio was accepted.
pub fn check_answer(offer: &Sdp, answer: &Sdp) -> Result<usize, OfferError> {
    if answer.media.len() != offer.media.len() {
        return Err(OfferError::NoAudio);
    }
    let idx = answer.audio_index().ok_or(OfferError::NoAudio)?;
    if answer.rtp_addr(idx).is_none() {
        return Err(OfferError::NoAddress);
    }
    let offered: Vec<u8> = offer.media[idx].codecs().map(|f| f.pt).collect();
    let ok = answer.media[idx]
        .codecs()
        .filter(|f| f.codec.is_audio())
        .any(|f| offered.contains(&f.pt));
    if !ok {
        return Err(OfferError::NoCommonCodec(
            offer.media[idx]
                .codecs()
                .map(|f| f.codec.name())
                .collect::<Vec<_>>()
                .join(" "),
        ));
    }
    Ok(idx)
}

/// Points section `idx` (and the session) at `addr` (the relay's port), as a B2BUA does before
/// passing a description on; the origin's address follows and its version is raised, and
/// `a=rtcp` (which named the old address) is dropped: RTCP goes to port + 1.
pub fn rewrite_address(sdp: &mut Sdp, idx: usize, addr: SocketAddr) {
    let c = Connection(addr.ip());
    sdp.connection = Some(c);
    for m in &mut sdp.media {
        if m.connection.is_some() {
            m.connection = Some(c);
        }
    }
    if let Some(m) = sdp.media.get_mut(idx) {
        m.port = addr.port();
        m.remove_attr("rtcp");
        // ICE candidates name the phone's addresses, which the relay hides.
        for a in [
            "candidate",
            "ice-ufrag",
            "ice-pwd",
            "ice-options",
            "end-of-candidates",
        ] {
            m.remove_attr(a);
        }
    }
    sdp.origin.address = c.to_string();
    sdp.origin.version = sdp.origin.version.wrapping_add(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=alice 2890844526 2890844526 IN IP4 10.0.0.7\r\ns=-\r\n\
        c=IN IP4 10.0.0.7\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0 8 9 97 101 3\r\n\
        a=rtpmap:97 opus/48000/2\r\na=fmtp:97 useinbandfec=1\r\na=rtpmap:101 telephone-event/8000\r\n\
        a=fmtp:101 0-16\r\na=rtcp:49171\r\na=sendrecv\r\nm=video 51372 RTP/AVP 31\r\n";

    #[test]
    fn parses_codecs_direction_and_addresses() {
        let s = Sdp::parse(OFFER.as_bytes()).unwrap();
        let a = s.audio().unwrap();
        let codecs: Vec<_> = a.codecs().map(|f| (f.pt, f.codec, f.clock)).collect();
        assert_eq!(
            codecs,
            [
                (0, Codec::Pcmu, 8000),
                (8, Codec::Pcma, 8000),
                (9, Codec::G722, 8000),
                (97, Codec::Opus, 48000),
                (101, Codec::TelephoneEvent, 8000),
                (3, Codec::Other, 8000),
            ]
        );
        assert_eq!(a.direction(s.session_direction()), Direction::SendRecv);
        assert_eq!(s.rtp_addr(1).unwrap().to_string(), "10.0.0.7:51372");
        assert!(a.codecs().all(|f| f.max_average_bitrate.is_none()));
    }

    #[test]
    fn lines_out_of_rfc_order_are_written_in_it_and_parse_back_the_same() {
        // Found by the sdp_props property: e= after t= (and i= after b= in a section).
        let body = "v=0\no=- 1 1 IN IP4 10.0.0.1\nt=0 0\nr=7d 1h 0\ne=\nt=1 2\n\
            m=audio 4000 RTP/AVP 0\nb=AS:64\ni=voice\n";
        let s = Sdp::parse(body.as_bytes()).unwrap();
        let keys: String = s.other.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, "etrt");
        assert_eq!(s.media[0].other[0], ('i', "voice".to_owned()));
        assert_eq!(Sdp::parse(&s.to_bytes()).unwrap(), s);
    }

    #[test]
    fn reads_the_opus_receive_cap_of_its_own_format_only() {
        let sdp = OFFER.replace(
            "a=fmtp:97 useinbandfec=1",
            "a=fmtp:97 useinbandfec=1; MaxAverageBitrate=24000\r\na=fmtp:0 maxaveragebitrate=9",
        );
        let s = Sdp::parse(sdp.as_bytes()).unwrap();
        let caps: Vec<_> = s
            .audio()
            .unwrap()
            .codecs()
            .map(|f| (f.pt, f.max_average_bitrate))
            .collect();
        assert_eq!(caps[3], (97, Some(24_000)));
        assert_eq!(caps[0], (0, Some(9)));
        assert!(caps[1..3].iter().chain(&caps[4..]).all(|c| c.1.is_none()));
        // A value that is not a number is no cap.
        let s = Sdp::parse(
            OFFER
                .replace("useinbandfec=1", "maxaveragebitrate=lots")
                .as_bytes(),
        );
        assert!(
            s.unwrap()
                .audio()
                .unwrap()
                .codecs()
                .all(|f| f.max_average_bitrate.is_none())
        );
    }

    #[test]
    fn restrict_and_rewrite() {
        let mut s = Sdp::parse(OFFER.as_bytes()).unwrap();
        let idx = restrict_offer(&mut s, SUPPORTED).unwrap();
        assert_eq!(idx, 0);
        assert_eq!(s.media[0].formats, ["0", "8", "9", "97", "101"]);
        assert_eq!(s.media[1].port, 0);
        rewrite_address(&mut s, 0, "192.0.2.1:20000".parse().unwrap());
        let text = s.to_string();
        assert!(text.contains("c=IN IP4 192.0.2.1\r\n"), "{text}");
        assert!(text.contains("m=audio 20000 RTP/AVP 0 8 9 97 101\r\n"));
        assert!(!text.contains("a=rtcp:"));
        assert!(text.contains("o=alice 2890844526 2890844527 IN IP4 192.0.2.1\r\n"));
        // What we write parses back to the same thing.
        assert_eq!(Sdp::parse(text.as_bytes()).unwrap(), s);
    }

    #[test]
    fn no_common_codec_lists_supported() {
        let mut s = Sdp::parse(
            b"v=0\no=- 1 1 IN IP4 10.0.0.1\ns=-\nc=IN IP4 10.0.0.1\nt=0 0\nm=audio 4000 RTP/AVP 18 101\na=rtpmap:18 G729/8000\na=rtpmap:101 telephone-event/8000\n",
        )
        .unwrap();
        let e = restrict_offer(&mut s, SUPPORTED).unwrap_err();
        assert_eq!(e.status(), 488);
        assert!(e.to_string().contains("PCMU/8000"), "{e}");
    }

    #[test]
    fn answer_must_pick_an_offered_format() {
        let offer = Sdp::parse(OFFER.as_bytes()).unwrap();
        let good = Sdp::parse(b"v=0\r\no=- 1 1 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\nm=audio 5000 RTP/AVP 9 101\r\nm=video 0 RTP/AVP 31\r\n").unwrap();
        assert_eq!(check_answer(&offer, &good), Ok(0));
        let bad = Sdp::parse(b"v=0\r\no=- 1 1 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\nm=audio 5000 RTP/AVP 18\r\nm=video 0 RTP/AVP 31\r\n").unwrap();
        assert!(check_answer(&offer, &bad).is_err());
    }

    #[test]
    fn crypto_lines_as_microsoft_sends_them() {
        let c = Crypto::parse(
            "2 AES_CM_128_HMAC_SHA1_80 inline:WnD7c1ksDGs+dIefCEo8omPg4uO8DYIinNGL5yxQ|2^31|1:1 UNENCRYPTED_SRTCP",
        )
        .unwrap();
        assert_eq!(c.tag, 2);
        assert_eq!(c.suite, "AES_CM_128_HMAC_SHA1_80");
        assert_eq!(c.key, "WnD7c1ksDGs+dIefCEo8omPg4uO8DYIinNGL5yxQ");
        assert_eq!(c.lifetime.as_deref(), Some("2^31"));
        assert_eq!(c.mki, Some((1, 1)));
        assert_eq!(c.params, ["UNENCRYPTED_SRTCP"]);
        assert!(Crypto::parse("1 AES_CM_128_HMAC_SHA1_32 key:abc").is_none());
        assert!(Crypto::parse("x AES inline:abc").is_none());
    }

    #[test]
    fn malformed_bodies_are_errors() {
        for body in [
            &b""[..],
            b"o=- 1 1 IN IP4 1.2.3.4\r\n",
            b"v=1\r\n",
            b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio x RTP/AVP 0\r\n",
            b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 999.1.1.1\r\n",
            b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP\r\n",
            b"v=0\r\nxx=1\r\n",
            b"v=0\r\n\xff\r\n",
            b"v=0\r\ns=-\r\n",
        ] {
            assert!(
                Sdp::parse(body).is_err(),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
