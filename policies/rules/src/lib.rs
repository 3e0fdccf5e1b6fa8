//! The built-in policy rules of csps as plain Rust, with no dependencies: what the gateway does
//! when no policy module is loaded (or one fails), and what the default WASM modules in
//! `policies/` run inside the sandbox — one implementation, so "the default module behaves like
//! the built-in rule" holds by construction and is checked through the component boundary by the
//! gateway's tests.
//!
//! - [`route`]: local user, else an E.164 number to the Teams trunk, else 484/404;
//! - [`admit`]: cSPS's trusted-IP rule (a REGISTER from a trusted range is bound without a
//!   challenge, every other one is challenged);
//! - [`adjust`]: per device family ([`family`]) header and SDP edits, and [`apply_sdp`] /
//!   [`apply_headers`] to carry them out.
#![forbid(unsafe_code)]
// `no_std` (with `alloc`) so a policy built on these rules links no WASI imports: a component
// without them instantiates in a fraction of the time (see `policies/sdk`).
#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::net::{IpAddr, SocketAddr};

// ---------------------------------------------------------------------------------------------
// Routing

/// The caller of a call: the account and device it comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Caller {
    /// SIP username of the caller's account.
    pub user: String,
    /// SIP domain of the caller's account.
    pub domain: String,
    /// The account's E.164 number.
    pub phone_number: Option<String>,
    /// User-Agent of the calling device.
    pub device: Option<String>,
    /// Anything else known about the caller, as name/value pairs.
    pub attributes: Vec<(String, String)>,
}

/// One routing question.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RouteRequest {
    /// Who calls.
    pub caller: Caller,
    /// What was dialled: the Request-URI's user part, or the whole URI.
    pub dialled: String,
    /// The local account found for the dialled string (by username or number), if any.
    pub local_match: Option<String>,
}

/// Where a call goes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Route {
    /// To a local account (its username).
    LocalUser(String),
    /// Through the Teams trunk to this E.164 number.
    Teams(String),
    /// To a web phone user (their username).
    WebUser(String),
    /// Refused with a SIP status and reason.
    Reject {
        /// 400–699.
        code: u16,
        /// Reason phrase.
        reason: String,
    },
    /// An emergency number: routed by the host's built-in rule, before any policy.
    Emergency(String),
}

/// The dial string of `dialled`: the user part of a `sip:`/`sips:`/`tel:` URI (or the string
/// itself), without URI parameters and visual separators (space, `-`, `.`, `(`, `)`).
pub fn dial_string(dialled: &str) -> String {
    let s = dialled.trim();
    let s = s
        .strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(s);
    let lower = s.get(..5).map(str::to_ascii_lowercase).unwrap_or_default();
    let s = if lower.starts_with("sips:") {
        &s[5..]
    } else if lower.starts_with("sip:") || lower.starts_with("tel:") {
        &s[4..]
    } else {
        s
    };
    let s = s.split_once('@').map_or(s, |(user, _)| user);
    let s = s.split_once(';').map_or(s, |(user, _)| user);
    s.chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect()
}

/// The E.164 form of a dial string: `+` and 2–15 digits, or `00` and digits (international
/// access code) turned into `+`; `None` for anything else.
pub fn e164(dial: &str) -> Option<String> {
    let digits = dial.strip_prefix('+').or_else(|| dial.strip_prefix("00"))?;
    (is_digits(digits) && (2..=15).contains(&digits.len())).then(|| format!("+{digits}"))
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// True when `dialled` is one of the configured emergency numbers (compared as dial strings).
pub fn is_emergency(dialled: &str, numbers: &[String]) -> bool {
    let d = dial_string(dialled);
    !d.is_empty() && numbers.iter().any(|n| dial_string(n) == d)
}

/// The built-in routing rule: a local account when the dialled string names one; else an E.164
/// number (`+…` or `00…`) to the Teams trunk; else 484 Address Incomplete for other digit
/// strings (a national dial plan is a policy's job) and 404 Not Found for anything else.
pub fn route(req: &RouteRequest) -> Route {
    if let Some(user) = &req.local_match {
        return Route::LocalUser(user.clone());
    }
    let dial = dial_string(&req.dialled);
    if let Some(number) = e164(&dial) {
        return Route::Teams(number);
    }
    if is_digits(dial.trim_start_matches('+')) {
        Route::Reject {
            code: 484,
            reason: "Address Incomplete".into(),
        }
    } else {
        Route::Reject {
            code: 404,
            reason: "Not Found".into(),
        }
    }
}

/// Checks an answer from a policy module: what the host can act on. `Err` says why not.
pub fn check_route(route: &Route) -> Result<(), String> {
    match route {
        Route::LocalUser(u) | Route::WebUser(u) => check_token("user", u),
        Route::Teams(n) => match e164(n) {
            Some(e) if &e == n => Ok(()),
            _ => Err(format!("`{n}` is not an E.164 number (+ and 2–15 digits)")),
        },
        Route::Reject { code, reason } => check_rejection(*code, reason),
        Route::Emergency(_) => Err("only the host routes emergency calls".into()),
    }
}

fn check_token(what: &str, v: &str) -> Result<(), String> {
    if v.is_empty() || v.len() > 256 || v.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!("invalid {what} `{}`", v.escape_debug()));
    }
    Ok(())
}

fn check_rejection(code: u16, reason: &str) -> Result<(), String> {
    if !(400..=699).contains(&code) {
        return Err(format!("rejection status {code} is not 400–699"));
    }
    if reason.len() > 128 || reason.chars().any(char::is_control) {
        return Err("rejection reason too long or with control characters".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Admission

/// A CIDR range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpRange {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length (0–32 for IPv4, 0–128 for IPv6).
    pub prefix: u8,
}

impl IpRange {
    /// True when `ip` (IPv4-mapped IPv6 counts as IPv4) is inside the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr.to_canonical(), ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) if self.prefix <= 32 => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) if self.prefix <= 128 => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// SIP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
    /// WebSocket.
    Ws,
    /// Secure WebSocket.
    Wss,
}

/// One REGISTER to judge.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RegisterRequest {
    /// Source address and port of the REGISTER.
    pub source: SocketAddr,
    /// Transport it came over.
    pub transport: Transport,
    /// Its User-Agent.
    pub user_agent: Option<String>,
    /// Address of record.
    pub aor: String,
    /// The server's trusted ranges (`Data.SipConfig.TrustedIps`).
    pub trusted: Vec<IpRange>,
}

/// What to do with a REGISTER.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Bind without a challenge (the account must exist and be enabled).
    Admit,
    /// Challenge for digest credentials.
    Challenge,
    /// Refuse.
    Reject {
        /// 400–699.
        code: u16,
        /// Reason phrase.
        reason: String,
    },
}

/// cSPS's trusted-IP rule: admit from a trusted range, challenge everything else.
pub fn admit(req: &RegisterRequest) -> Verdict {
    if req.trusted.iter().any(|r| r.contains(req.source.ip())) {
        Verdict::Admit
    } else {
        Verdict::Challenge
    }
}

/// Checks a verdict from a policy module.
pub fn check_verdict(v: &Verdict) -> Result<(), String> {
    match v {
        Verdict::Reject { code, reason } => check_rejection(*code, reason),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Device quirks

/// Whether a message goes to the device or comes from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// csps → device.
    ToDevice,
    /// device → csps.
    FromDevice,
}

/// A request's method or a response's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartLine {
    /// A request with this method.
    Request(String),
    /// A response with this status.
    Response(u16),
}

/// A message exchanged with a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Which way it goes.
    pub direction: Direction,
    /// Method or status.
    pub start: StartLine,
    /// The header section: one `Name: value` field per line, in order, each line ending in CRLF
    /// ([`header_fields`] splits it).
    pub headers: String,
    /// SDP body, if any.
    pub sdp: Option<String>,
    /// The device's User-Agent (or Server).
    pub user_agent: Option<String>,
}

/// An edit of the header section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderEdit {
    /// Replace every field of this name by one with this value.
    Set(String, String),
    /// Append a field.
    Add(String, String),
    /// Remove every field of this name.
    Remove(String),
}

/// An edit of the SDP body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SdpEdit {
    /// Remove a codec by encoding name.
    DropCodec(String),
    /// Set `a=ptime` on every audio stream.
    ForcePtime(u32),
    /// Remove every `a=` line with this attribute name.
    StripAttribute(String),
}

/// Edits for one message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Edits {
    /// Header edits, in order.
    pub headers: Vec<HeaderEdit>,
    /// SDP edits, in order.
    pub sdp: Vec<SdpEdit>,
}

/// Device families with default quirks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Family {
    /// DECT base stations (Gigaset N-series, Yealink W-series, Snom M-series, RTX, Panasonic).
    DectBase,
    /// Yealink desk phones.
    Yealink,
    /// Polycom / Poly phones.
    Polycom,
    /// Grandstream phones and ATAs.
    Grandstream,
    /// Cisco phones and ATAs (SPA, CP).
    Cisco,
}

/// User-Agent substrings (lower-case) of DECT bases, recognised before their vendor.
const DECT_MODELS: [&str; 11] = [
    "gigaset", "snom m", "rtx", "kx-tgp", "w52", "w56", "w60", "w70", "w73", "w80", "w90",
];

/// User-Agent substrings (lower-case) of the other families.
const VENDORS: [(&str, Family); 5] = [
    ("yealink", Family::Yealink),
    ("polycom", Family::Polycom),
    ("poly ", Family::Polycom),
    ("grandstream", Family::Grandstream),
    ("cisco", Family::Cisco),
];

/// The family of a device from its User-Agent; DECT bases are recognised before their vendor.
pub fn family(user_agent: &str) -> Option<Family> {
    if DECT_MODELS
        .iter()
        .any(|m| contains_ignore_case(user_agent, m))
    {
        return Some(Family::DectBase);
    }
    VENDORS
        .into_iter()
        .find(|(name, _)| contains_ignore_case(user_agent, name))
        .map(|(_, f)| f)
}

/// True when `haystack` contains `needle` (ASCII lower-case), ignoring ASCII case; no allocation,
/// as it runs on every message of a call.
pub fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    n.is_empty()
        || h.windows(n.len())
            .any(|w| w.iter().zip(n).all(|(a, b)| a.to_ascii_lowercase() == *b))
}

/// One kind of message a quirks policy wants to see; a message that matches none of a policy's
/// kinds is passed on unedited without asking it (`adjuster.interests` in `wit/policy.wit`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interest {
    /// Lower-case User-Agent substrings, any of which selects the device; empty: every device.
    pub user_agents: Vec<String>,
    /// The direction wanted; `None`: both.
    pub direction: Option<Direction>,
    /// Upper-case request methods wanted; `None`: every request.
    pub methods: Option<Vec<String>>,
    /// Whether responses are wanted.
    pub responses: bool,
    /// Only messages with an SDP body.
    pub sdp_only: bool,
}

impl Interest {
    /// Whether a message with these traits is wanted: a request's `method` (`None`: a
    /// response), the device's `user_agent`, whether it carries SDP.
    pub fn matches(
        &self,
        direction: Direction,
        method: Option<&str>,
        user_agent: Option<&str>,
        has_sdp: bool,
    ) -> bool {
        self.direction.is_none_or(|d| d == direction)
            && (has_sdp || !self.sdp_only)
            && match method {
                None => self.responses,
                Some(m) => self
                    .methods
                    .as_ref()
                    .is_none_or(|ms| ms.iter().any(|w| w.eq_ignore_ascii_case(m))),
            }
            && (self.user_agents.is_empty()
                || user_agent
                    .is_some_and(|ua| self.user_agents.iter().any(|p| contains_ignore_case(ua, p))))
    }

    /// Checks and normalises an interest from a policy module: patterns non-empty, at most 256
    /// bytes, lower-cased; methods tokens, upper-cased.
    pub fn normalised(mut self) -> Result<Interest, String> {
        if self.user_agents.len() > 256 || self.methods.as_ref().is_some_and(|m| m.len() > 64) {
            return Err("too many user-agents or methods in one interest".into());
        }
        for p in &mut self.user_agents {
            if p.is_empty() || p.len() > 256 {
                return Err(format!("invalid user-agent pattern `{}`", p.escape_debug()));
            }
            p.make_ascii_lowercase();
        }
        for m in self.methods.iter_mut().flatten() {
            if m.is_empty() || m.len() > 32 || !m.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(format!("invalid method `{}`", m.escape_debug()));
            }
            m.make_ascii_uppercase();
        }
        Ok(self)
    }
}

/// Whether any of `interests` matches the message (see [`Interest::matches`]).
pub fn wanted(
    interests: &[Interest],
    direction: Direction,
    method: Option<&str>,
    user_agent: Option<&str>,
    has_sdp: bool,
) -> bool {
    interests
        .iter()
        .any(|i| i.matches(direction, method, user_agent, has_sdp))
}

/// The messages the built-in quirks ([`adjust`]) edit: requests and responses to a device of a
/// known family, only with SDP except for Cisco (whose `Session-Expires` goes from any message).
pub fn interest() -> Vec<Interest> {
    let patterns = |f: Option<Family>| -> Vec<String> {
        DECT_MODELS
            .iter()
            .copied()
            .filter(|_| f.is_none())
            .chain(
                VENDORS
                    .iter()
                    .filter(|(_, v)| f.is_none_or(|f| f == *v))
                    .map(|(n, _)| *n),
            )
            .map(str::to_owned)
            .collect()
    };
    let to_device = |user_agents, sdp_only| Interest {
        user_agents,
        direction: Some(Direction::ToDevice),
        methods: None,
        responses: true,
        sdp_only,
    };
    // Any family with SDP (DECT before vendor, as `family` does: a Yealink DECT base is a DECT
    // base); Cisco's header edit on every message.
    alloc::vec![
        to_device(patterns(None), true),
        to_device(patterns(Some(Family::Cisco)), false),
    ]
}

/// The fields of a header section ([`Message::headers`]): `(name, value)` per line, value
/// trimmed; lines without a colon are skipped.
pub fn header_fields(block: &str) -> impl Iterator<Item = (&str, &str)> {
    block
        .split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim(), v.trim()))
}

/// The built-in quirks, for SDP sent to a device (defaults; a quirks policy replaces them):
/// - DECT bases: 20 ms packets, no Opus (the radio link carries G.722/G.711), no `rtcp-fb`;
/// - Yealink: no `rtcp-fb` (older firmware rejects the offer);
/// - Polycom: 20 ms packets;
/// - Grandstream: no `ssrc` lines (WebRTC-style SSRC lines confuse the ATAs);
/// - Cisco: no `rtcp-mux`, and no `Session-Expires` header (SPA firmware refreshes wrongly).
pub fn adjust(msg: &Message) -> Edits {
    let Some(fam) = msg.user_agent.as_deref().and_then(family) else {
        return Edits::default();
    };
    if msg.direction != Direction::ToDevice {
        return Edits::default();
    }
    let mut e = Edits::default();
    let has_sdp = msg.sdp.is_some();
    match fam {
        Family::DectBase if has_sdp => {
            e.sdp.push(SdpEdit::ForcePtime(20));
            e.sdp.push(SdpEdit::DropCodec("opus".into()));
            e.sdp.push(SdpEdit::StripAttribute("rtcp-fb".into()));
        }
        Family::Yealink if has_sdp => e.sdp.push(SdpEdit::StripAttribute("rtcp-fb".into())),
        Family::Polycom if has_sdp => e.sdp.push(SdpEdit::ForcePtime(20)),
        Family::Grandstream if has_sdp => e.sdp.push(SdpEdit::StripAttribute("ssrc".into())),
        Family::Cisco => {
            e.headers.push(HeaderEdit::Remove("Session-Expires".into()));
            if has_sdp {
                e.sdp.push(SdpEdit::StripAttribute("rtcp-mux".into()));
            }
        }
        _ => {}
    }
    e
}

/// Checks edits from a policy module: header names are tokens, values one line, SDP edits sane.
pub fn check_edits(e: &Edits) -> Result<(), String> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.len() <= 64
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
    };
    for h in &e.headers {
        let (name, value) = match h {
            HeaderEdit::Set(n, v) | HeaderEdit::Add(n, v) => (n, Some(v)),
            HeaderEdit::Remove(n) => (n, None),
        };
        if !name_ok(name) {
            return Err(format!("invalid header name `{}`", name.escape_debug()));
        }
        if value.is_some_and(|v| v.len() > 1024 || v.chars().any(|c| c == '\r' || c == '\n')) {
            return Err(format!("invalid value for header `{name}`"));
        }
    }
    for s in &e.sdp {
        match s {
            SdpEdit::ForcePtime(p) if !(10..=120).contains(p) => {
                return Err(format!("ptime {p} ms is outside 10–120"));
            }
            SdpEdit::DropCodec(n) | SdpEdit::StripAttribute(n) if !name_ok(n) => {
                return Err(format!("invalid SDP name `{}`", n.escape_debug()));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Applies header edits to a header list.
pub fn apply_headers(headers: &mut Vec<(String, String)>, edits: &[HeaderEdit]) {
    for edit in edits {
        match edit {
            HeaderEdit::Set(n, v) => {
                let at = headers.iter().position(|(h, _)| h.eq_ignore_ascii_case(n));
                headers.retain(|(h, _)| !h.eq_ignore_ascii_case(n));
                let at = at.unwrap_or(headers.len()).min(headers.len());
                headers.insert(at, (n.clone(), v.clone()));
            }
            HeaderEdit::Add(n, v) => headers.push((n.clone(), v.clone())),
            HeaderEdit::Remove(n) => headers.retain(|(h, _)| !h.eq_ignore_ascii_case(n)),
        }
    }
}

/// Applies SDP edits to an SDP body (CRLF line ends on output).
pub fn apply_sdp(sdp: &str, edits: &[SdpEdit]) -> String {
    let mut lines: Vec<String> = sdp.lines().map(str::to_owned).collect();
    for edit in edits {
        match edit {
            SdpEdit::StripAttribute(name) => lines.retain(|l| attribute_name(l) != Some(name)),
            SdpEdit::DropCodec(codec) => drop_codec(&mut lines, codec),
            SdpEdit::ForcePtime(ms) => force_ptime(&mut lines, *ms),
        }
    }
    let mut out = lines.join("\r\n");
    out.push_str("\r\n");
    out
}

/// `rtpmap` for `a=rtpmap:0 PCMU/8000`; `None` for non-attribute lines.
fn attribute_name(line: &str) -> Option<&str> {
    let a = line.strip_prefix("a=")?;
    Some(a.split([':', ' ']).next().unwrap_or(a))
}

/// Removes the payload types whose `rtpmap` names `codec` from every `m=` line, with their
/// `rtpmap`/`fmtp`/`rtcp-fb` lines.
fn drop_codec(lines: &mut Vec<String>, codec: &str) {
    let mut dropped: Vec<String> = Vec::new();
    for l in lines.iter() {
        if let Some(rest) = l.strip_prefix("a=rtpmap:")
            && let Some((pt, enc)) = rest.split_once(' ')
            && enc
                .split('/')
                .next()
                .is_some_and(|n| n.eq_ignore_ascii_case(codec))
        {
            dropped.push(pt.to_owned());
        }
    }
    if dropped.is_empty() {
        return;
    }
    let refers = |l: &str| {
        ["a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"].iter().any(|p| {
            l.strip_prefix(p)
                .and_then(|r| r.split(' ').next())
                .is_some_and(|pt| dropped.iter().any(|d| d == pt))
        })
    };
    lines.retain(|l| !refers(l));
    for l in lines.iter_mut() {
        if l.starts_with("m=") {
            let parts: Vec<&str> = l.split(' ').collect();
            if parts.len() > 3 {
                let mut kept: Vec<&str> = parts[..3].to_vec();
                kept.extend(
                    parts[3..]
                        .iter()
                        .filter(|pt| !dropped.iter().any(|d| d == *pt)),
                );
                *l = kept.join(" ");
            }
        }
    }
}

/// Sets `a=ptime:<ms>` in every audio media section (replacing any there).
fn force_ptime(lines: &mut Vec<String>, ms: u32) {
    let mut out = Vec::with_capacity(lines.len() + 2);
    let mut in_audio = false;
    let mut placed = false;
    for l in lines.drain(..) {
        if l.starts_with("m=") {
            if in_audio && !placed {
                out.push(format!("a=ptime:{ms}"));
            }
            in_audio = l.starts_with("m=audio");
            placed = false;
        }
        if in_audio && l.starts_with("a=ptime:") {
            if !placed {
                out.push(format!("a=ptime:{ms}"));
                placed = true;
            }
            continue;
        }
        out.push(l);
    }
    if in_audio && !placed {
        out.push(format!("a=ptime:{ms}"));
    }
    *lines = out;
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn req(dialled: &str) -> RouteRequest {
        RouteRequest {
            dialled: dialled.into(),
            ..Default::default()
        }
    }

    #[test]
    fn routes_like_the_builtin_dial_plan() {
        assert_eq!(
            route(&req("+1 (555) 123-0000")),
            Route::Teams("+15551230000".into())
        );
        assert_eq!(
            route(&req("sip:0049301234@csps.local;user=phone")),
            Route::Teams("+49301234".into())
        );
        assert!(matches!(
            route(&req("0501234567")),
            Route::Reject { code: 484, .. }
        ));
        assert!(matches!(
            route(&req("bob")),
            Route::Reject { code: 404, .. }
        ));
        let mut local = req("alice");
        local.local_match = Some("alice".into());
        assert_eq!(route(&local), Route::LocalUser("alice".into()));
        assert!(is_emergency("sip:112@x", &["112".into()]));
        assert!(!is_emergency("1120", &["112".into()]));
        assert!(check_route(&Route::Teams("+1".into())).is_err());
        assert!(
            check_route(&Route::Reject {
                code: 200,
                reason: "OK".into()
            })
            .is_err()
        );
    }

    #[test]
    fn trusted_ranges() {
        let r = IpRange {
            addr: "10.0.0.0".parse().unwrap(),
            prefix: 8,
        };
        assert!(r.contains("10.1.2.3".parse().unwrap()));
        assert!(r.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!r.contains("11.0.0.1".parse().unwrap()));
        let all6 = IpRange {
            addr: "::".parse().unwrap(),
            prefix: 0,
        };
        assert!(all6.contains("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn sdp_edits() {
        let sdp = "v=0\r\nm=audio 4000 RTP/AVP 111 9 0\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 useinbandfec=1\r\na=rtpmap:9 G722/8000\r\na=rtcp-fb:111 nack\r\na=ptime:30\r\n";
        let out = apply_sdp(
            sdp,
            &[
                SdpEdit::DropCodec("OPUS".into()),
                SdpEdit::ForcePtime(20),
                SdpEdit::StripAttribute("rtcp-fb".into()),
            ],
        );
        assert_eq!(
            out,
            "v=0\r\nm=audio 4000 RTP/AVP 9 0\r\na=rtpmap:9 G722/8000\r\na=ptime:20\r\n"
        );
        let mut h = vec![
            ("Session-Expires".to_owned(), "90".to_owned()),
            ("To".into(), "x".into()),
        ];
        apply_headers(
            &mut h,
            &[
                HeaderEdit::Remove("session-expires".into()),
                HeaderEdit::Set("To".into(), "y".into()),
            ],
        );
        assert_eq!(h, vec![("To".to_owned(), "y".to_owned())]);
        assert_eq!(family("Yealink W60B 77.85.0.25"), Some(Family::DectBase));
        assert_eq!(family("Yealink SIP-T46S 66.86"), Some(Family::Yealink));
    }

    #[test]
    fn the_builtin_interest_covers_every_message_the_builtin_quirks_edit() {
        let sdp = "v=0\r\nm=audio 4000 RTP/AVP 0\r\na=rtcp-fb:0 nack\r\n";
        let wants = interest();
        let mut edited = 0;
        for ua in [
            "Gigaset N870 IP PRO",
            "Yealink W60B",
            "Yealink SIP-T46S",
            "Poly Edge E350",
            "Grandstream HT802",
            "Cisco/SPA112-1.4.1",
            "baresip 3.10",
        ] {
            for direction in [Direction::ToDevice, Direction::FromDevice] {
                for method in [Some("INVITE"), Some("BYE"), None] {
                    for with_sdp in [true, false] {
                        let msg = Message {
                            direction,
                            start: method
                                .map_or(StartLine::Response(200), |m| StartLine::Request(m.into())),
                            headers: "Session-Expires: 90\r\n".into(),
                            sdp: with_sdp.then(|| sdp.into()),
                            user_agent: Some(ua.into()),
                        };
                        let wanted = wanted(&wants, direction, method, Some(ua), with_sdp);
                        if adjust(&msg) != Edits::default() {
                            edited += 1;
                            assert!(wanted, "{msg:?}");
                        }
                        // Nothing from a device, nothing for an unknown one, no SDP-less
                        // message but to Cisco.
                        let expected = direction == Direction::ToDevice
                            && family(ua).is_some()
                            && (with_sdp || family(ua) == Some(Family::Cisco));
                        assert_eq!(wanted, expected, "{msg:?}");
                    }
                }
            }
        }
        assert!(edited > 10);
        assert!(!wanted(&wants, Direction::ToDevice, None, None, true));
    }

    #[test]
    fn an_interest_selects_by_device_direction_method_and_body() {
        let i = Interest {
            user_agents: vec!["ACME DECT".into()],
            direction: Some(Direction::ToDevice),
            methods: Some(vec!["invite".into(), "Update".into()]),
            responses: false,
            sdp_only: false,
        }
        .normalised()
        .expect("valid");
        assert_eq!(i.user_agents, vec!["acme dect".to_owned()]);
        let ua = Some("Acme DECT-200 fw1");
        assert!(i.matches(Direction::ToDevice, Some("INVITE"), ua, false));
        assert!(i.matches(Direction::ToDevice, Some("update"), ua, true));
        assert!(!i.matches(Direction::ToDevice, Some("BYE"), ua, false));
        assert!(!i.matches(Direction::ToDevice, None, ua, true));
        assert!(!i.matches(Direction::FromDevice, Some("INVITE"), ua, false));
        assert!(!i.matches(Direction::ToDevice, Some("INVITE"), Some("Yealink"), false));
        assert!(!i.matches(Direction::ToDevice, Some("INVITE"), None, false));
        let everything = Interest {
            user_agents: vec![],
            direction: None,
            methods: None,
            responses: true,
            sdp_only: false,
        };
        assert!(everything.matches(Direction::FromDevice, None, None, false));
        let bad = |user_agents: Vec<String>, methods| {
            Interest {
                user_agents,
                methods,
                ..everything.clone()
            }
            .normalised()
            .is_err()
        };
        assert!(bad(vec![String::new()], None));
        assert!(bad(vec![], Some(vec!["IN VITE".into()])));
        assert!(!bad(vec!["x".into()], Some(vec![])));
    }

    #[test]
    fn header_fields_split_the_block() {
        let f: Vec<_> = header_fields("Via: SIP/2.0/UDP a\r\nAllow:INVITE, BYE\r\n").collect();
        assert_eq!(f, vec![("Via", "SIP/2.0/UDP a"), ("Allow", "INVITE, BYE")]);
        assert!(contains_ignore_case("Gigaset N870", "gigaset"));
        assert!(!contains_ignore_case("Giga", "gigaset"));
    }
}
